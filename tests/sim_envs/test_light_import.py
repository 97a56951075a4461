"""`import sim_envs` registers the env ids without loading MuJoCo or torch: a command can check an env
id (and report a misspelt one) before any heavy module loads."""

from __future__ import annotations

import json
import subprocess
import sys


def test_registering_the_envs_loads_neither_mujoco_nor_torch():
    code = (
        "import sys, json, gymnasium, sim_envs\n"
        "spec = gymnasium.spec('ee_vla/PickCube-v0')\n"
        "print(json.dumps({'id': spec.id, 'heavy': sorted(m for m in ('mujoco', 'torch', 'transformers')"
        " if m in sys.modules)}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"id": "ee_vla/PickCube-v0", "heavy": []}
