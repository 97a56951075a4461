"""How far an on-policy file's expert labels are from what the policy did (`ee-vla dagger` output).

    python scripts/dagger_report.py data/dagger            # per task and outcome
    python scripts/dagger_report.py data/dagger --replay   # + re-simulate every episode and check
                                                           #   each stored image and label
    python scripts/dagger_report.py data/dagger --relabel data/dagger_new   # a copy labelled by
                                                           #   today's experts

Per task and episode outcome: episodes, samples, the mean |label - executed| per action dim, and
the fraction of steps where the gripper label and the executed gripper command differ in sign.
On episodes the policy succeeded in, a large gripper disagreement means the expert would label
the policy's own successful path differently from how it acts: labels that contradict
demonstrations (docs/training.md, "On-policy data"). `--replay` resets each episode's env with its
seed, executes the stored `executed_actions` and compares every image and a fresh expert's label
(and plan, where the file has `expert_chunks`) with the file (it must be 0 mismatched).
`--relabel OUT` writes a copy of the file (and of the files beside it) to the directory OUT with
every label and plan from the experts as they are now, replayed the same way: on-policy data stays
usable after an expert changes, without running the policy again. Each replayed image is checked
against the file's; a mismatch (the simulator changed) is an error naming the episode.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def disagreement(ds) -> list[dict]:
    groups: dict[tuple[str, bool], list[np.ndarray]] = collections.defaultdict(list)
    for ep in ds:
        if ep.executed_actions is None:
            raise SystemExit(
                f"{ds.path}: episode of seed {ep.seed} has no executed_actions (not an ee-vla dagger file)"
            )
        groups[(ep.env_id, ep.success)].append(ep.actions - ep.executed_actions)
    rows = []
    for (env_id, success), diffs in sorted(groups.items()):
        d = np.concatenate(diffs)
        labels_vs_exec = np.abs(d)
        rows.append(
            {
                "env_id": env_id,
                "success": success,
                "episodes": len(diffs),
                "samples": len(d),
                "mean_abs_diff": labels_vs_exec.mean(0).round(3).tolist(),
                "gripper_disagree": float((labels_vs_exec[:, 6] > 1.0).mean()),
            }
        )
    return rows


def _plans(ep):
    """The episode's stored plans when they are longer than one action (ExpertLabels gives a plan
    only then), else None."""
    return ep.expert_chunks if ep.expert_chunks is not None and ep.expert_chunks.shape[1] > 1 else None


def _replayed(ep):
    """Re-simulate an on-policy episode along its `executed_actions`: yields (t, the step's image
    is the stored one, ExpertLabels' info with today's experts' label and plan) for every step."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the ids)
    from sim_envs.experts import ExpertLabels

    horizon = 1 if ep.expert_chunks is None else ep.expert_chunks.shape[1]
    env = ExpertLabels(gym.make(ep.env_id, image_size=ep.pixels.shape[1]), horizon)
    try:
        obs, info = env.reset(seed=ep.seed)
        for t in range(len(ep)):
            yield t, np.array_equal(obs["pixels"], ep.pixels[t]), info
            obs, _, _, _, info = env.step(ep.executed_actions[t])
    finally:
        env.close()


def replay(ds) -> tuple[int, int]:
    total = bad = 0
    for ep in ds:
        plans = _plans(ep)
        for t, same_image, info in _replayed(ep):
            ok = same_image and np.allclose(info["expert_action"], ep.actions[t], atol=1e-5)
            if plans is not None:
                ok = ok and np.allclose(info["expert_plan"], plans[t], atol=1e-5)
            total += 1
            bad += not ok
    return total, bad


def relabel(src: Path, out: Path) -> tuple[int, int]:
    """Copy the dagger file `src` (a demos.hdf5 or its directory) and the files beside it into the
    directory `out`, with each episode's `actions` and `expert_chunks` replaced by today's experts'
    labels and plans along its `executed_actions`; returns (labels changed, labels)."""
    import shutil

    import h5py

    from sim_envs.demo_file import DATA_FILE, load_dataset

    src = Path(src)
    src_dir = src if src.is_dir() else src.parent
    src_file = src_dir / DATA_FILE if src.is_dir() else src
    out = Path(out)
    if out.resolve() == src_dir.resolve():
        raise SystemExit(f"--relabel {out}: give another directory than the file's own")
    if (out / DATA_FILE).exists():
        raise SystemExit(f"--relabel {out}: {out / DATA_FILE} exists")
    out.mkdir(parents=True, exist_ok=True)
    for f in src_dir.iterdir():
        if f.is_file() and f != src_file:
            shutil.copy2(f, out / f.name)
    shutil.copy2(src_file, out / DATA_FILE)
    changed = total = 0
    with h5py.File(out / DATA_FILE, "r+") as h5:
        for ep in load_dataset(src_file):
            if ep.executed_actions is None:
                raise SystemExit(f"{src_file}: episode {ep.key} has no executed_actions (not an ee-vla dagger file)")
            labels = np.empty_like(ep.actions)
            plans = None if _plans(ep) is None else np.empty_like(ep.expert_chunks)
            for t, same_image, info in _replayed(ep):
                if not same_image:
                    raise SystemExit(
                        f"{src_file}: episode {ep.key} (seed {ep.seed}) replays to another "
                        f"image at step {t}: the simulator changed, collect it again"
                    )
                labels[t] = info["expert_action"]
                if plans is not None:
                    plans[t] = info["expert_plan"]
            changed += int((np.abs(labels - ep.actions).max(axis=1) > 1e-6).sum())
            total += len(labels)
            g = h5["data"][ep.key]
            g["actions"][...] = labels
            if plans is not None:
                g["expert_chunks"][...] = plans
    return changed, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="an ee-vla dagger output directory or its demos.hdf5")
    parser.add_argument("--replay", action="store_true", help="re-simulate every episode and check images and labels")
    parser.add_argument("--relabel", metavar="OUT", help="write a copy labelled by today's experts into directory OUT")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    from sim_envs.demo_file import load_dataset

    try:
        ds = load_dataset(args.data)
    except (FileNotFoundError, ValueError, OSError) as e:  # no file, or not a demonstration file
        parser.error(f"{args.data}: {e}")
    print(
        f"{'env id':<22} {'outcome':<8} {'eps':>5} {'samples':>8}  mean |label - executed| (7 dims)"
        "       gripper disagree"
    )
    for r in disagreement(ds):
        dims = " ".join(f"{x:5.3f}" for x in r["mean_abs_diff"])
        outcome = "success" if r["success"] else "failed"
        print(
            f"{r['env_id']:<22} {outcome:<8} {r['episodes']:>5} {r['samples']:>8}  {dims}  {r['gripper_disagree']:6.1%}"
        )
    if args.replay:
        total, bad = replay(ds)
        print(f"replay: {bad} of {total} samples mismatched (image or label)")
        if bad:
            return 1
    if args.relabel:
        changed, total = relabel(Path(args.data), Path(args.relabel))
        print(f"relabel: {changed} of {total} labels changed; wrote {Path(args.relabel)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
