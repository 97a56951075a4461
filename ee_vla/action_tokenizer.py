"""Continuous actions <-> discrete action tokens (the OpenVLA convention).

An action is a vector of `action_dim` floats. Each dimension is normalised to [-1, 1] with dataset
quantiles, `a_n = clip(2 (a - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)` (dims whose mask is False, e.g.
the gripper, are only clipped; dims with q01 == q99 become 0), then discretised into `n_bins` uniform
bins over [-1, 1] exactly as OpenVLA does (`np.digitize` against `n_bins` edges, giving `n_bins - 1`
bin centres). Bins map onto a contiguous block of token ids: `token = first_id + b` (forward layout)
or `token = last_id - b` (OpenVLA's reverse layout on the last ids of the vocabulary).

Token distance equals bin distance equals physical distance in either layout, which the relaxed
early exit uses (see `ee_vla.decoding.core.token_distance`). This module is the only place that
does the binning arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

_EPS = 1e-8


@dataclass
class ActionStats:
    """Per-dimension statistics of a dataset's actions, saved with a model.

    Attributes:
        q01: 1st percentile per dim (the value that maps to -1).
        q99: 99th percentile per dim (the value that maps to +1).
        mask: True where the dim is normalised; False dims (e.g. a gripper already in [-1, 1]) are
            only clipped to [-1, 1].
        mean, std, min, max: kept for reference and plots; not used for tokenisation.
    """

    q01: list[float]
    q99: list[float]
    mask: list[bool]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.q01)
        if n == 0:
            raise ValueError("ActionStats.q01 is empty: an action needs at least one dimension")
        for name in ("q99", "mask"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"ActionStats.{name} has {len(getattr(self, name))} dims, q01 has {n}")
        lo, hi = np.asarray(self.q01, float), np.asarray(self.q99, float)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError("ActionStats.q01/q99 contain NaN or inf")
        if (hi < lo).any():
            raise ValueError(f"ActionStats.q99 < q01 in dims {np.nonzero(hi < lo)[0].tolist()}")

    @property
    def action_dim(self) -> int:
        return len(self.q01)

    @classmethod
    def from_actions(cls, actions: np.ndarray, mask: np.ndarray | list[bool] | None = None) -> ActionStats:
        """Statistics of an (N, action_dim) array of actions; `mask=None` normalises every dim."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] == 0:
            raise ValueError(f"actions must be a non-empty (N, action_dim) array, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("actions contain NaN or inf: cannot compute statistics")
        m = [True] * a.shape[1] if mask is None else [bool(x) for x in mask]
        return cls(
            q01=np.quantile(a, 0.01, axis=0).tolist(),
            q99=np.quantile(a, 0.99, axis=0).tolist(),
            mask=m,
            mean=a.mean(0).tolist(),
            std=a.std(0).tolist(),
            min=a.min(0).tolist(),
            max=a.max(0).tolist(),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ActionStats:
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ActionStats:
        return cls.from_dict(json.loads(Path(path).read_text()))


class ActionTokenizer:
    """Maps (..., action_dim) float actions to (..., action_dim) token ids and back.

    Args:
        stats: normalisation statistics (their length fixes `action_dim`).
        first_token_id: id of the first token of the contiguous block of `n_bins` action tokens.
        n_bins: number of bin edges over [-1, 1] (OpenVLA: 256, i.e. 255 centres).
        reverse: OpenVLA's layout: bin 0 is the LAST id of the block (`token = last_id - b`).
    """

    def __init__(self, stats: ActionStats, first_token_id: int, n_bins: int = 256, reverse: bool = False):
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        if first_token_id < 0:
            raise ValueError(f"first_token_id must be >= 0, got {first_token_id}")
        self.stats = stats
        self.n_bins = n_bins
        self.first_token_id = first_token_id
        self.last_token_id = first_token_id + n_bins - 1
        self.reverse = reverse
        self.bins = np.linspace(-1.0, 1.0, n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0
        self._q01 = np.asarray(stats.q01, dtype=np.float64)
        self._q99 = np.asarray(stats.q99, dtype=np.float64)
        self._mask = np.asarray(stats.mask, dtype=bool)

    @classmethod
    def openvla(cls, stats: ActionStats, vocab_size: int, n_bins: int = 256) -> ActionTokenizer:
        """OpenVLA's layout: the last `n_bins` ids of a vocabulary of `vocab_size`, reversed."""
        return cls(stats, first_token_id=vocab_size - n_bins, n_bins=n_bins, reverse=True)

    @property
    def action_dim(self) -> int:
        return self.stats.action_dim

    @property
    def bin_width(self) -> float:
        """Width of one bin in normalised units (2 / (n_bins - 1))."""
        return 2.0 / (self.n_bins - 1)

    # ---- continuous <-> normalised -------------------------------------------------------------
    def _check(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim == 0 or a.shape[-1] != self.action_dim:
            raise ValueError(f"actions must have last dimension {self.action_dim}, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("actions contain NaN or inf")
        return a

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        a = self._check(actions)
        span = self._q99 - self._q01
        n = 2.0 * (a - self._q01) / (span + _EPS) - 1.0
        n = np.where(self._mask, n, a)
        n = np.where(self._mask & (span == 0), 0.0, n)
        return np.clip(n, -1.0, 1.0)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        n = np.asarray(normalized, dtype=np.float64)
        a = 0.5 * (n + 1.0) * (self._q99 - self._q01 + _EPS) + self._q01
        return np.where(self._mask, a, n)

    # ---- bins <-> tokens ---------------------------------------------------------------------
    def bins_to_tokens(self, b: np.ndarray) -> np.ndarray:
        b = np.asarray(b, dtype=np.int64)
        return self.last_token_id - b if self.reverse else self.first_token_id + b

    def tokens_to_bins(self, tokens: np.ndarray) -> np.ndarray:
        """Bin index of each token, clipped to the valid centres; non-action ids clip to the ends."""
        t = np.asarray(tokens, dtype=np.int64)
        b = self.last_token_id - t if self.reverse else t - self.first_token_id
        return np.clip(b, 0, self.n_bins - 2)

    def is_action_token(self, tokens: np.ndarray) -> np.ndarray:
        t = np.asarray(tokens)
        return (t >= self.first_token_id) & (t <= self.last_token_id)

    # ---- public API ------------------------------------------------------------------------
    def encode(self, actions: np.ndarray) -> np.ndarray:
        """(..., action_dim) floats -> (..., action_dim) int64 token ids."""
        n = self.normalize(actions)
        b = np.digitize(n, self.bins) - 1  # 0 .. n_bins - 1 (n_bins - 1 only at exactly +1.0)
        return self.bins_to_tokens(b)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """(..., action_dim) token ids -> (..., action_dim) float actions."""
        t = np.asarray(tokens)
        if t.ndim == 0 or t.shape[-1] != self.action_dim:
            raise ValueError(f"tokens must have last dimension {self.action_dim}, got shape {t.shape}")
        return self.unnormalize(self.bin_centers[self.tokens_to_bins(t)])

    def encode_chunk(self, actions: np.ndarray) -> np.ndarray:
        """(..., k, action_dim) -> (..., k * action_dim): the token order the model emits."""
        tok = self.encode(actions)
        return tok.reshape(*tok.shape[:-2], -1)

    def decode_chunk(self, tokens: np.ndarray) -> np.ndarray:
        """(..., k * action_dim) -> (..., k, action_dim)."""
        t = np.asarray(tokens)
        if t.shape[-1] % self.action_dim:
            raise ValueError(f"a chunk of {t.shape[-1]} tokens is not a multiple of action_dim={self.action_dim}")
        return self.decode(t.reshape(*t.shape[:-1], -1, self.action_dim))

    def to_dict(self) -> dict:
        return {
            "stats": self.stats.to_dict(),
            "first_token_id": self.first_token_id,
            "n_bins": self.n_bins,
            "reverse": self.reverse,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ActionTokenizer:
        return cls(ActionStats.from_dict(d["stats"]), d["first_token_id"], d["n_bins"], d["reverse"])
