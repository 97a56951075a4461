"""Does a policy read the image? Its first action and grounding answer on episode starts, per task.

At an episode's first frame the gripper is far from every object, so neither the proprio nor an
earlier action token gives the answer away: a policy that localises the named object beats the
"always answer the mean" baseline printed beside each error; one that memorised its training
scenes does not. Use demonstrations the models never saw (a collect seed past the training ones).

    ee-vla collect --env ee_vla/Reach-v0 ee_vla/PickCube-v0 ee_vla/Push-v0 ee_vla/Place-v0 \\
        --episodes 50 --out data/heldout --seed 100000 --image-size 128
    python scripts/start_frame_report.py data/heldout model_dir [model_dir ...]
"""

from __future__ import annotations

import argparse
import contextlib

from ee_vla.action_tokenizer import ActionStats, ActionTokenizer
from ee_vla.models.vla import VLA
from ee_vla.training.bc import start_frame_eval_hook
from ee_vla.training.data import DemoDataset, load_pixels, scan_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="demonstration file or directory (held-out episodes)")
    ap.add_argument("models", nargs="+", help="ee_vla model directories")
    ap.add_argument("--episodes", type=int, default=50, help="episode starts per task")
    args = ap.parse_args()

    episodes = scan_dataset([args.data])
    load_pixels(episodes)
    tasks = sorted({str(e.attrs.get("env_id", "?")) for e in episodes})
    for path in args.models:
        vla = VLA.from_pretrained(path)
        points = None
        if "grounding" in vla.meta:
            stats = ActionStats.from_dict(vla.meta["grounding"]["stats"])
            points = ActionTokenizer.openvla(stats, vocab_size=len(vla.tokenizer))
        for task in tasks:
            mine = [e for e in episodes if str(e.attrs.get("env_id", "?")) == task]
            demo = DemoDataset(mine, vla.action_tokenizer, vla.chunk_size, vla.proprio_tokenizer is not None)
            row = start_frame_eval_hook(demo, args.episodes, points)(vla, contextlib.nullcontext)
            print(path, task, "  ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
