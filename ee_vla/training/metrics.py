"""What a training run reports: metrics.jsonl, the loss.png plot and the periodic greedy-Jacobi
evaluation on a fixed batch."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ee_vla.training.run_dir import METRICS_FILE, PLOT_FILE


class MetricsLog:
    """metrics.jsonl rows and the loss.png plot (rank 0 only)."""

    def __init__(self, out_dir: Path, start_step: int):
        self.path = out_dir / METRICS_FILE
        self.plot_path = out_dir / PLOT_FILE
        self.rows: list[dict] = []
        if self.path.is_file():  # a resumed run: keep the rows up to the checkpoint
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r.get("step", 0) <= start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, row: dict) -> None:
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self, title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = sorted({k for r in self.rows for k in r if k.endswith("loss")})
        evals = sorted({k for r in self.rows for k in r if k.startswith("eval/")})
        fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 4), squeeze=False)
        ax = axes[0, 0]
        for k in keys:
            pts = [(r["step"], r[k]) for r in self.rows if k in r]
            ax.plot(*zip(*pts, strict=True), label=k)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if keys and all(r[k] > 0 for r in self.rows for k in keys if k in r):
            ax.set_yscale("log")
        ax.legend()
        ax.set_title(title)
        if evals:
            ax2 = axes[0, 1]
            for k in evals:
                pts = [(r["step"], r[k]) for r in self.rows if k in r]
                ax2.plot(*zip(*pts, strict=True), marker="o", label=k)
            ax2.set_xlabel("step")
            ax2.legend()
            ax2.set_title("fixed training batch, greedy Jacobi")
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=100)
        plt.close(fig)


@torch.no_grad()
def evaluate_decoding(vla, batch: dict, autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, float]:
    """Greedy Jacobi (first token repeated as the guess) on a batch: iterations to converge, the
    forward passes saved against AR (n / (1 + iterations)), and the fixed point's (= the AR
    output's) agreement with the demonstration chunk."""
    from ee_vla.training.trajectories import jacobi_states

    with eval_mode(vla.model):
        inputs = vla.build_inputs(batch["pixels"], batch["instruction"], batch["proprio"])
        with autocast():
            states, iters = jacobi_states(vla, inputs, None)
    tok = vla.action_tokenizer
    y, tgt = states[-1].cpu().numpy(), np.asarray(batch["target"])
    n, d = y.shape[1], tok.action_dim
    l1 = np.abs(tok.bin_centers[tok.tokens_to_bins(y)] - tok.bin_centers[tok.tokens_to_bins(tgt)])
    return {
        "eval/jacobi_iterations": float(iters.float().mean()),
        "eval/forward_speedup": float((n / (1.0 + iters.float())).mean()),
        "eval/token_acc": float((y == tgt).mean()),
        "eval/action_l1": float(l1.mean()),
        # the action executed first, and its first token: predicted from the observation alone
        # (no earlier action token to lean on), the part a policy that memorises scenes gets wrong
        "eval/first_action_l1": float(l1[:, :d].mean()),
        "eval/first_token_acc": float((y[:, 0] == tgt[:, 0]).mean()),
    }


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """The model in eval mode inside the block, back in its earlier mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
