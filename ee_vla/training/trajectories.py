"""Jacobi trajectories of a teacher VLA: the training data of consistency distillation.

For every training sample and every requested initial guess, the teacher decodes the chunk with
greedy Jacobi (`DecodeConfig(method="jacobi")`, the project's one decode loop) and every window
state is recorded: Y0 (token 0 from the prefill + the guess), Y1, ..., Y* (the fixed point, which
equals the teacher's AR output). Collection is batched; the `warm` guess needs the teacher's chunk
of the previous control step, so samples are processed in waves of `warm_shift` time steps.

File format (safetensors, no pickle), one file per process (`part-<rank>-of-<world>.safetensors`):

    states      (M, n, n) int32  Y0..Y* per trajectory, padded after Y* with Y*
    n_states    (M,) int64       states up to and including the first one equal to Y*
    sample      (M,) int64       index of the sample in the DemoDataset it was collected on
    init        (M,) int64       index into meta["inits"]
    iterations  (M,) int64       decoder iterations until it declared convergence
    metadata "meta": JSON with teacher, n_tokens, chunk_size, inits, warm_shift, dataset fingerprint
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ee_vla.decoding import DecodeConfig, iter_decode
from ee_vla.decoding.core import greedy
from ee_vla.decoding.guess import prompt_guess, warm_guess
from ee_vla.decoding.hf import HFStep
from ee_vla.training.data import DemoDataset, collate

log = logging.getLogger(__name__)

FORMAT = "ee_vla.trajectories/1"


class TrajectoryError(ValueError):
    """Trajectories missing, corrupt, or collected on other data or another teacher."""


@dataclass
class Trajectories:
    """Jacobi trajectories (see module docstring for the fields)."""

    states: torch.Tensor
    n_states: torch.Tensor
    sample: torch.Tensor
    init: torch.Tensor
    iterations: torch.Tensor
    meta: dict

    def __len__(self) -> int:
        return len(self.sample)

    @property
    def fixed_points(self) -> torch.Tensor:
        """(M, n) Y* of every trajectory."""
        return self.states[torch.arange(len(self)), self.n_states - 1]

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        from ee_vla.models.vla import new_file_mode

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k).contiguous() for k in ("states", "n_states", "sample", "init", "iterations")}
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"meta": json.dumps(self.meta)})
        tmp.chmod(new_file_mode())  # safetensors writes 0600; give the mode of any new file
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trajectories:
        """A .safetensors file, or a directory of `part-*-of-*.safetensors` (concatenated)."""
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob("part-*-of-*.safetensors"))
            if not files:
                raise TrajectoryError(f"{path} holds no part-*-of-*.safetensors trajectory files")
            expected = int(files[0].stem.rsplit("-of-", 1)[1])
            if len(files) != expected:
                raise TrajectoryError(f"{path} holds {len(files)} trajectory parts, their names say {expected}")
        elif path.is_file():
            files = [path]
        else:
            raise TrajectoryError(f"trajectory file {path} does not exist")
        parts = []
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as h:
                    meta = json.loads(h.metadata()["meta"])
                    tensors = {k: h.get_tensor(k) for k in h.keys()}
                parts.append(cls(meta=meta, **tensors))
            except Exception as e:
                raise TrajectoryError(f"{f} is not a valid trajectory file ({e})") from e
            if meta.get("format") != FORMAT:
                raise TrajectoryError(f"{f} has format {meta.get('format')!r}, expected {FORMAT!r}")
        cat = {
            k: torch.cat([getattr(p, k) for p in parts]) for k in ("states", "n_states", "sample", "init", "iterations")
        }
        return cls(meta=parts[0].meta, **cat)

    def check_matches(self, dataset: DemoDataset, n_tokens: int) -> None:
        """Fail when these trajectories were collected on other data or with another chunk length."""
        fp = dataset_fingerprint(dataset)
        if self.meta.get("dataset") != fp:
            raise TrajectoryError(
                f"trajectories were collected on another dataset (fingerprint {self.meta.get('dataset')} != {fp}); "
                "collect them again for this data"
            )
        if self.meta.get("n_tokens") != n_tokens:
            raise TrajectoryError(
                f"trajectories have {self.meta.get('n_tokens')} tokens per chunk, the teacher decodes {n_tokens}"
            )
        if len(self) == 0:
            raise TrajectoryError("the trajectory set is empty")

    def summary(self) -> dict:
        it = self.iterations.float()
        return {
            "trajectories": len(self),
            "mean_iterations": round(it.mean().item(), 3),
            "max_iterations": int(it.max().item()),
            "mean_states_before_fixed_point": round((self.n_states - 1).float().mean().item(), 3),
        }


def dataset_fingerprint(dataset: DemoDataset) -> str:
    """Hash of the episode sources, their lengths and the chunk targets (tokenizer and k included)."""
    h = hashlib.sha1()
    for e, tg in zip(dataset.episodes, dataset.targets, strict=True):
        h.update(f"{e.source}:{len(e)};".encode())
        h.update(np.ascontiguousarray(tg).tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def jacobi_states(
    vla, inputs: dict, guess: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy Jacobi decoding of a batch recording every window state.

    Args:
        guess: the (B, n) initial window, a function of the prefill's (B, V) logits returning it,
            or None (token 0 repeated).

    Returns:
        states (S, B, n) (S - 1 iterations after the prefill) and the decoder's per-sample
        iteration count at convergence (B,).
    """
    step, first_logits, _ = HFStep.prefill(vla.model, **inputs)
    if callable(guess):
        guess = guess(first_logits)
    snaps, state = [], None
    cfg = DecodeConfig(method="jacobi", init="repeat")
    for state in iter_decode(
        step, first_logits, vla.n_action_tokens, cfg, guess=guess, action_range=vla.action_range, unit=vla.action_dim
    ):
        snaps.append(state.tokens.clone())  # the loop updates one window tensor in place
    iters = torch.tensor([max(row) for row in state.stats.unit_final_iteration], dtype=torch.long)
    return torch.stack(snaps), iters


def _order(dataset: DemoDataset, episodes: list[int], init: str, shift: int) -> list[list[int]]:
    """Waves of sample indices: with `warm`, wave w holds steps [w*shift, (w+1)*shift), whose previous
    control step (t - shift) lies in an earlier wave; otherwise one wave of all samples."""
    if init != "warm":
        return [[int(dataset.offsets[e]) + t for e in episodes for t in range(len(dataset.episodes[e]))]]
    T = max((len(dataset.episodes[e]) for e in episodes), default=0)
    waves = []
    for w in range(0, T, shift):
        waves.append(
            [int(dataset.offsets[e]) + t for e in episodes for t in range(w, min(w + shift, len(dataset.episodes[e])))]
        )
    return waves


def collect_trajectories(
    vla,
    dataset: DemoDataset,
    inits: tuple[str, ...],
    batch_size: int,
    warm_shift: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    teacher: str = "",
    progress: bool = True,
) -> Trajectories:
    """Decode every sample of this process's shard (episodes rank, rank + world_size, ...) once per
    initial guess in `inits`, recording the Jacobi trajectories; `autocast` makes the forward's
    autocast context (as in training)."""
    n, A = vla.n_action_tokens, vla.action_dim
    shift = warm_shift or vla.chunk_size
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    episodes = list(range(rank, len(dataset.episodes), world_size))
    plan = [(init, wave) for init in inits for wave in _order(dataset, episodes, init, shift)]
    n_batches = sum(-(-len(w) // batch_size) for _, w in plan)
    out = {k: [] for k in ("states", "n_states", "sample", "init", "iterations")}
    fixed: dict[int, torch.Tensor] = {}  # sample index -> Y* of the warm pass (its previous-step guesses)
    vla.model.eval()
    bar = tqdm(total=n_batches, desc="collect trajectories", disable=not progress, dynamic_ncols=True)
    for init, wave in plan:
        for b0 in range(0, len(wave), batch_size):
            idx = wave[b0 : b0 + batch_size]
            batch = collate([dataset[i] for i in idx])
            inputs = vla.build_inputs(vla.camera_images(batch), batch["instruction"], batch["proprio"])
            guess = None
            if init == "prompt":
                guess = prompt_guess(
                    inputs["input_ids"].cpu(), inputs["attention_mask"].cpu(), n, gen, exclude=vla.non_text_ids
                )
            elif init == "warm":
                guess = _warm_guess_fn(vla, dataset, idx, fixed, shift, n, A)
            with autocast():
                states, iters = jacobi_states(vla, inputs, guess)
            states = states.cpu()
            S = states.shape[0]
            states = torch.cat([states, states[-1:].expand(n - S, -1, -1)]) if S < n else states
            final = states[-1]
            equal = (states == final[None]).all(-1)  # (n, B)
            n_states = equal.float().argmax(0) + 1
            out["states"].append(states.permute(1, 0, 2).to(torch.int32))
            out["n_states"].append(n_states.long())
            out["sample"].append(torch.tensor(idx, dtype=torch.long))
            out["init"].append(torch.full((len(idx),), inits.index(init), dtype=torch.long))
            out["iterations"].append(iters)
            if init == "warm":
                fixed.update(zip(idx, final.unbind(0), strict=True))
            bar.update(1)
    bar.close()
    meta = {
        "format": FORMAT,
        "teacher": str(teacher),
        "n_tokens": n,
        "chunk_size": vla.chunk_size,
        "action_dim": A,
        "inits": list(inits),
        "warm_shift": shift,
        "n_samples": len(dataset),
        "dataset": dataset_fingerprint(dataset),
        "rank": rank,
        "world_size": world_size,
    }
    cat = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in out.items()}
    if not out["states"]:
        cat["states"] = torch.zeros(0, n, n, dtype=torch.int32)
    return Trajectories(meta=meta, **cat)


def _warm_guess_fn(vla, dataset: DemoDataset, idx: list[int], fixed: dict, shift: int, n: int, A: int):
    """The warm guess per row as a function of the prefill logits: the teacher's Y* at t - shift
    shifted by `shift` actions (as `VLAPolicy` does); rows at the start of an episode get token 0
    repeated (the policy's guess when it has no previous chunk)."""

    def fn(first_logits: torch.Tensor) -> torch.Tensor:
        guess = greedy(first_logits, vla.action_range)[:, None].repeat(1, n)
        for r, i in enumerate(idx):
            t = int(dataset.index[i][1])
            prev = fixed.get(i - shift) if t >= shift else None
            if prev is not None:
                guess[r] = warm_guess(prev[None], shift * A, A)[0].to(guess.device)
        return guess

    return fn
