"""The test suites' DDS domain ids: two processes never hold the same one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from domains import claim_domain_id, held_domain_ids, release_domain_ids

HERE = Path(__file__).resolve().parent


def test_another_process_never_gets_a_held_domain_id():
    mine = {claim_domain_id() for _ in range(5)}
    assert len(mine) == 5 and mine <= held_domain_ids()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from domains import claim_domain_id\n"
        "got = []\n"
        "while True:\n"
        "    try:\n"
        "        got.append(claim_domain_id())\n"
        "    except RuntimeError:\n"
        "        break\n"
        "print(' '.join(map(str, got)))\n"
    )
    theirs = subprocess.run([sys.executable, "-c", code, str(HERE)], capture_output=True, text=True, check=True)
    got = {int(d) for d in theirs.stdout.split()}  # every id it could take, until none was left
    assert got and not mine & got


def test_release_keeps_what_it_is_told_to_keep():
    before = held_domain_ids()
    kept, dropped = claim_domain_id(), claim_domain_id()
    release_domain_ids(keep=before | {kept})
    assert kept in held_domain_ids() and dropped not in held_domain_ids()
