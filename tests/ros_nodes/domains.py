"""DDS domain ids for tests, never shared by two tests running at the same time on this machine.

Two test suites run side by side (say `make test` and `make test-ros`) would otherwise pick the same
domain now and then, and one suite's server would answer the other's robot. `claim_domain_id()`
takes an id that no other process holds, through an exclusive lock on a file per id in the
machine's temporary directory. The autouse fixture in `conftest.py` gives back what a test claimed
when it ends; an id claimed by a module-scoped fixture (set up before that fixture starts) stays
held until the process exits. Closing the file releases the lock, also when a process dies.
"""

from __future__ import annotations

import fcntl
import os
import random
import tempfile
from pathlib import Path

DOMAIN_IDS = range(20, 161)
"""Ids handed out: inside Cyclone DDS's range (port 7400 + 250 x id) and ROS 2's usual one."""

_DIR = Path(tempfile.gettempdir()) / "ee_vla_test_dds_domains"
_held: dict[int, int] = {}  # domain id -> file descriptor holding its lock


def claim_domain_id() -> int:
    """A domain id no other test on this machine holds; held until `release_domain_ids()`."""
    _DIR.mkdir(exist_ok=True)
    ids = [d for d in DOMAIN_IDS if d not in _held]
    random.SystemRandom().shuffle(ids)  # a just-released id is rarely reused at once
    for d in ids:
        fd = os.open(_DIR / f"{d}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held[d] = fd
        return d
    raise RuntimeError(f"every DDS domain id in {DOMAIN_IDS} is held by other test processes")


def held_domain_ids() -> frozenset[int]:
    """The ids this process holds now."""
    return frozenset(_held)


def release_domain_ids(keep: frozenset[int] = frozenset()) -> None:
    """Give back every id this process claimed, except `keep`."""
    for d in [d for d in _held if d not in keep]:
        os.close(_held.pop(d))
