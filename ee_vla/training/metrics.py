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

DECODING_KEYS = ("eval/forward_speedup", "eval/jacobi_iterations")
"""Evaluation metrics that count forward passes, plotted on their own axes (not in [0, 1])."""


def _is_score(key: str) -> bool:
    """Accuracies and cosines: in [0, 1] (a cosine may dip below 0)."""
    return key.endswith(("_acc", "_cos"))


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

    def _series(self, key: str) -> tuple[list, list]:
        pts = [(r["step"], r[key]) for r in self.rows if key in r]
        return [s for s, _ in pts], [v for _, v in pts]

    def figure(self, title: str):
        """The plot as a matplotlib figure: the training losses; then, once evaluations ran, the
        evaluation's accuracies and cosines (0-1), its errors, and the decoding cost (forward-pass
        speedup over AR decoding and Jacobi iterations, each on its own y axis)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        losses = sorted({k for r in self.rows for k in r if k.endswith("loss")})
        evals = sorted({k for r in self.rows for k in r if k.startswith("eval/")})
        scores = [k for k in evals if _is_score(k)]
        decoding = [k for k in DECODING_KEYS if k in evals]
        errors = [k for k in evals if k not in scores and k not in decoding]
        panels = [
            (draw, keys)
            for draw, keys in ((self._scores, scores), (self._errors, errors), (self._decoding, decoding))
            if keys
        ]
        cols = 1 if not panels else 2
        rows = (len(panels) + 2) // 2
        fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
        axes = axes.ravel()
        for ax in axes[1 + len(panels) :]:
            ax.set_axis_off()
        ax = axes[0]
        for k in losses:
            ax.plot(*self._series(k), label=k)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if losses and all(r[k] > 0 for r in self.rows for k in losses if k in r):
            ax.set_yscale("log")
        ax.legend()
        ax.set_title(title)
        for ax, (draw, keys) in zip(axes[1 : 1 + len(panels)], panels, strict=True):
            ax.set_xlabel("step")
            draw(ax, keys)
        fig.tight_layout()
        return fig

    def _scores(self, ax, keys: list[str]) -> None:
        """Accuracies and cosines on a 0-1 axis (extended below 0 for a negative cosine)."""
        for k in keys:
            ax.plot(*self._series(k), marker="o", label=k)
        ax.set_ylim(min(0.0, *(v for k in keys for v in self._series(k)[1])), 1.0)
        ax.set_ylabel("accuracy / cosine (0-1)")
        ax.set_title("fixed batch: agreement with the demonstrations")
        ax.legend()

    def _errors(self, ax, keys: list[str]) -> None:
        for k in keys:
            ax.plot(*self._series(k), marker="o", label=k)
        ax.set_ylabel("error (actions: L1, normalised units; points: m)")
        ax.set_title("fixed batch: errors")
        ax.legend()

    def _decoding(self, ax, keys: list[str]) -> None:
        """Forward-pass speedup (x) on `ax` and Jacobi iterations on a twin axis on the right."""
        speedup, iters = "eval/forward_speedup", "eval/jacobi_iterations"
        lines = []
        if speedup in keys:
            lines += ax.plot(*self._series(speedup), marker="o", color="C0", label=speedup)
            ax.set_ylabel("forward-pass speedup over AR (x)")
        if iters in keys:
            twin = ax.twinx() if lines else ax
            lines += twin.plot(*self._series(iters), marker="s", color="C1", label=iters)
            twin.set_ylabel("Jacobi iterations (count)")
        ax.legend(lines, [line.get_label() for line in lines])
        ax.set_title("fixed batch: greedy Jacobi decoding")

    def plot(self, title: str) -> None:
        import matplotlib.pyplot as plt

        fig = self.figure(title)
        fig.savefig(self.plot_path, dpi=100)
        plt.close(fig)


@torch.no_grad()
def evaluate_decoding(vla, batch: dict, autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, float]:
    """Greedy Jacobi (first token repeated as the guess) on a batch: iterations to converge, the
    forward passes saved against AR (n / (1 + iterations)), and the fixed point's (= the AR
    output's) agreement with the demonstration chunk."""
    from ee_vla.training.trajectories import jacobi_states

    with eval_mode(vla.model):
        inputs = vla.build_inputs(vla.camera_images(batch), batch["instruction"], batch["proprio"])
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
