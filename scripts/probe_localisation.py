"""How precisely a policy's internal state locates the named object: a probe on demonstrations.

    python scripts/probe_localisation.py --policy ee_vla/checkpoints/default --data data/push_demos
    python scripts/probe_localisation.py --policy P --data data/pick data/push --json probe.json

For every frame of the demonstrations (files from `ee-vla collect`, which record each frame's
simulator ground truth as `privileged/task_points`), the policy reads the frame as it does when it
acts (its cameras, the instruction, the proprio) and the residual stream at the prompt's last
token, the position the first action token is predicted from, is taken at three depths (a third,
two thirds and the end of the language model). A small MLP is fitted on these features to predict
the target's position in the table plane and the gripper's offset from it; every fifth episode is
held out. Per env id the script prints the held-out root-mean-square error in cm beside the
quantity's standard deviation (what predicting its mean would give), over all held-out frames and
over those with the gripper within 5 cm of the target, where pushing and grasping need the offset.

A probe gives a lower bound on what the features hold (a better probe may find more), and its
numbers compare policies and tasks measured the same way: docs/training.md, "Where Push fails".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

QUANTITIES = ("target x", "target y", "gripper - target x", "gripper - target y")
NEAR_CM = 5.0


def probe_targets(ep) -> np.ndarray:
    """(T, 4) in cm: the target's x, y and the gripper's x, y offset from it, from the episode's
    task_points and proprio (agent_pos starts with the TCP's xyz)."""
    if ep.task_points is None or ep.agent_pos is None:
        raise ValueError(
            f"{ep.source}: the probe needs privileged/task_points and obs/agent_pos (files written by ee-vla collect)"
        )
    target, tcp = ep.task_points[:, :2], ep.agent_pos[:, :2]
    return 100.0 * np.concatenate([target, tcp - target], 1)


def features(vla, ep, layers: list[int]) -> np.ndarray:
    """(T, len(layers) * hidden) residual stream at the prompt's last token of every frame."""
    import torch

    images = vla.camera_images({c: ep.image(c) for c in ep.cameras if ep.image(c) is not None})
    proprio = ep.agent_pos if vla.proprio_tokenizer is not None else None
    inputs = vla.build_inputs(images, [ep.instruction] * len(ep), proprio)
    with torch.no_grad():
        hidden = vla.model(**inputs, output_hidden_states=True).hidden_states
    return torch.cat([hidden[i][:, -1] for i in layers], 1).float().cpu().numpy()


def fit_probe(x: np.ndarray, y: np.ndarray, test: np.ndarray, steps: int = 2000, seed: int = 0) -> np.ndarray:
    """Fit an MLP (one hidden layer of 256) from x to y on the rows not in `test`; return its
    predictions for the `test` rows. Features are standardised with the training rows' statistics."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.float32)
    test = torch.as_tensor(test)
    xtr, ytr = x[~test], y[~test]
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    y_mu, y_sd = ytr.mean(0), ytr.std(0) + 1e-6
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(), torch.nn.Dropout(0.2), torch.nn.Linear(256, y.shape[1])
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    xtr, ytr = (xtr - mu) / sd, (ytr - y_mu) / y_sd
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (min(256, len(xtr)),), generator=gen)
        loss = ((net(xtr[idx]) - ytr[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return (net((x[test] - mu) / sd) * y_sd + y_mu).numpy()


def _named(values: np.ndarray) -> dict[str, float]:
    return {q: round(float(v), 2) for q, v in zip(QUANTITIES, values, strict=True)}


def rmse(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Root-mean-square error of each of `QUANTITIES` over the rows."""
    return _named(np.sqrt(((pred - true) ** 2).mean(0)))


def probe(policy: Path, data: list[Path], max_episodes: int | None = None, progress: bool = True) -> dict:
    """Per env id of `data`: the held-out errors (cm) and standard deviations of `QUANTITIES`."""
    from tqdm import tqdm

    from ee_vla.models.vla import VLA
    from sim_envs.demo_file import load_dataset

    vla = VLA.from_pretrained(policy)
    vla.model.eval()
    n_layers = vla.model.config.text_config.num_hidden_layers
    layers = sorted({max(1, n_layers // 3), max(1, 2 * n_layers // 3), n_layers})
    by_env: dict[str, list] = {}
    for path in data:
        for ep in load_dataset(path):
            by_env.setdefault(ep.env_id or str(path), []).append(ep)
    out = {}
    for env_id, episodes in by_env.items():
        episodes = episodes[:max_episodes] if max_episodes else episodes
        if len(episodes) < 5:
            raise ValueError(f"{env_id}: {len(episodes)} episodes; the probe holds out every fifth, so it needs >= 5")
        x, y, held_out = [], [], []
        for i, ep in enumerate(tqdm(episodes, desc=env_id, unit="episode", disable=not progress)):
            x.append(features(vla, ep, layers))
            y.append(probe_targets(ep))
            held_out += [i % 5 == 0] * len(ep)
        x, y, test = np.concatenate(x), np.concatenate(y), np.array(held_out)
        pred, true = fit_probe(x, y, test), y[test]
        near = np.hypot(true[:, 2], true[:, 3]) < NEAR_CM
        out[env_id] = {
            "episodes": len(episodes),
            "held_out_frames": int(test.sum()),
            "rmse_cm": rmse(pred, true),
            "std_cm": _named(true.std(0)),
            "near_frames": int(near.sum()),
            "near_rmse_cm": rmse(pred[near], true[near]) if near.any() else None,
        }
    return {"policy": str(policy), "layers": layers, "envs": out}


def table(result: dict) -> str:
    lines = [
        f"probe of {result['policy']} (language-model layers {result['layers']}, last prompt token); "
        "held-out RMSE in cm (standard deviation)",
        f"{'env':26s} {'frames':>7s} " + " ".join(f"{q:>22s}" for q in QUANTITIES),
    ]
    for env_id, r in result["envs"].items():
        cells = [f"{r['rmse_cm'][q]:6.2f} ({r['std_cm'][q]:5.2f})" for q in QUANTITIES]
        lines.append(f"{env_id:26s} {r['held_out_frames']:7d} " + " ".join(f"{c:>22s}" for c in cells))
        if r["near_rmse_cm"]:
            near = [f"{r['near_rmse_cm'][q]:6.2f}" for q in QUANTITIES]
            label = f"  gripper < {NEAR_CM:.0f} cm"
            lines.append(f"{label:26s} {r['near_frames']:7d} " + " ".join(f"{c:>22s}" for c in near))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", type=Path, required=True, help="model directory (VLA.save_pretrained)")
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="demonstration files or directories")
    ap.add_argument("--max-episodes", type=int, default=None, help="episodes per env id (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        from ee_vla.threads import configure_threads

        configure_threads(args.threads)
    from ee_vla.models.files import ModelLoadError

    try:
        result = probe(args.policy, args.data, args.max_episodes, progress=not args.no_progress)
    except (ModelLoadError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
