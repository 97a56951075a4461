"""DistributedDataParallel under torchrun: 2 CPU processes (gloo) train, rank 0 writes the results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ee_vla.training.run_dir import list_checkpoints, load_trainer_state

SCRIPT = """
import sys
from ee_vla.training import DistillConfig, TrainConfig, distill, train
data, out = sys.argv[1], sys.argv[2]
teacher = train(TrainConfig(data=(data,), out_dir=out + "/bc", preset="tiny", chunk_size=1, steps=4, batch_size=4,
                            log_every=2, save_every=2, eval_every=4, eval_samples=4, device="cpu"))
distill(DistillConfig(data=(data,), out_dir=out + "/ceed", teacher=str(teacher), steps=2, batch_size=4,
                      log_every=1, save_every=2, eval_every=0, collect_batch_size=8, inits=("warm",), device="cpu"))
"""


@pytest.mark.timeout(240)
def test_torchrun_two_processes(tmp_path, write_demo):
    data = write_demo(tmp_path / "demos.hdf5", n_episodes=3, steps=6)
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    res = subprocess.run([*cmd, str(script), str(data), str(tmp_path)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    state = load_trainer_state(list_checkpoints(tmp_path / "bc")[-1])
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    rows = [json.loads(x) for x in (tmp_path / "bc" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and rows[-1]["samples_per_s"] > 0
    parts = sorted(p.name for p in (tmp_path / "ceed" / "trajectories").iterdir())
    assert parts == ["part-000-of-002.safetensors", "part-001-of-002.safetensors"]
    assert (tmp_path / "ceed" / "model" / "model.safetensors").is_file()
