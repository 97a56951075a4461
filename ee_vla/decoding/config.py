"""Decoder configuration: which decoder, and when it may stop early."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ee_vla.flags import parse_bool

Method = Literal["ar", "jacobi", "ceed"]
InitGuess = Literal["repeat", "prompt", "warm"]


@dataclass
class DecodeConfig:
    """How a chunk of action tokens is decoded (greedy).

    * ``ar``: one token per forward pass with a KV cache (the baseline).
    * ``jacobi``: guess the whole chunk, refine all positions in parallel until the window stops
      changing; returns exactly the AR tokens (PD-VLA, training-free).
    * ``ceed``: Jacobi with early exits, for a consistency-distilled model that converges in few
      iterations: CEED's iteration cap (`max_iterations`), ee_vla's relaxed convergence (`tau`) and
      a wall-clock deadline. Named combinations are in `PRESETS`.
    """

    method: Method = "ceed"
    """Decoder: ar | jacobi | ceed."""
    max_iterations: int | None = None
    """ceed: stop after this many parallel iterations (after the prefill) and output the window
    (CEED's early exit). Bounds the forward passes of a call (cap + 1), not the distance from AR."""
    tau: int = 0
    """ceed: stop when no token moved by more than tau bins between the last two iterations (0 =
    exact convergence). Bounds the movement of one iteration, not the distance from AR's tokens."""
    deadline_s: float | None = None
    """Wall-clock budget of one call (prefill included): stop before an iteration that would overrun."""
    init: InitGuess = "warm"
    """Initial guess of the window: repeat (the first token everywhere), prompt (tokens drawn from the
    prompt, as CLLM/CEED), warm (the previous control step's chunk shifted; repeat when none)."""
    window: int | None = None
    """Tokens refined per forward pass; None = the whole rest of the chunk (ar always uses 1)."""
    keep_final_kv: bool = True
    """Keep the KV entries of tokens already final and slide the window past them; False cuts the
    cache back to the prompt before every iteration (CLLM's scheme; needs window=None)."""
    guess_in_prefill: bool = False
    """jacobi/ceed: run the initial guess's first tokens after the prompt in the prefill, so that
    the prefill is also the first Jacobi iteration (token 0 of the window is then a guess too). It
    saves a forward pass whenever the guess starts right (a warm start), and costs the prefill that
    many more tokens; a call without a guess (the first of an episode, init=repeat) is unchanged."""
    seed: int = 0
    """Seed for the `prompt` initial guess."""

    def __post_init__(self) -> None:
        if self.method not in ("ar", "jacobi", "ceed"):
            raise ValueError(f"DecodeConfig.method must be ar|jacobi|ceed, got {self.method!r}")
        if self.init not in ("repeat", "prompt", "warm"):
            raise ValueError(f"DecodeConfig.init must be repeat|prompt|warm, got {self.init!r}")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ValueError(f"DecodeConfig.max_iterations must be >= 1 or None, got {self.max_iterations}")
        if self.tau < 0:
            raise ValueError(f"DecodeConfig.tau must be >= 0, got {self.tau}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"DecodeConfig.deadline_s must be > 0 or None, got {self.deadline_s}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"DecodeConfig.window must be >= 1 or None, got {self.window}")
        if not self.keep_final_kv and self.window is not None:
            raise ValueError("DecodeConfig.keep_final_kv=False needs window=None (the window restarts at the prompt)")
        if self.method == "ar" and self.guess_in_prefill:
            raise ValueError("DecodeConfig.guess_in_prefill is a jacobi/ceed option: ar runs no guess")
        if self.method != "ceed" and (self.tau != 0 or self.max_iterations is not None):
            raise ValueError(
                f"DecodeConfig.tau/max_iterations are CEED early-exit options; method={self.method!r} "
                "always decodes exactly (use method='ceed')"
            )

    @property
    def effective_window(self) -> int | None:
        return 1 if self.method == "ar" else self.window

    def with_(self, **changes) -> DecodeConfig:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)

    @classmethod
    def from_spec(cls, spec: str) -> DecodeConfig:
        """A preset or a variant of one, `PRESET:field=value:...` (`parse_decoder_spec`)."""
        name, options = parse_decoder_spec(spec)
        try:
            return cls.preset(name).with_(**options)
        except ValueError as e:
            raise ValueError(f"decoder {spec!r}: {e}") from None

    @classmethod
    def preset(cls, name: str) -> DecodeConfig:
        """A named decoder (`PRESETS`): ``ar``, ``jacobi``, ``ceed`` (relaxed convergence, tau=1,
        no cap), ``ceed_cap`` (the CEED paper's fixed cap of 2 iterations, tau=0) or ``ceed_2pass``
        (the warm guess run in the prefill, then one iteration: two forward passes)."""
        if name not in PRESETS:
            raise ValueError(f"unknown decoder {name!r}: choose one of {sorted(PRESETS)}")
        return cls(**PRESETS[name])


PRESETS: dict[str, dict] = {
    "ar": dict(method="ar"),
    "jacobi": dict(method="jacobi", init="repeat"),
    "ceed": dict(method="ceed", tau=1, init="warm"),
    "ceed_cap": dict(method="ceed", max_iterations=2, init="warm"),
    "ceed_2pass": dict(method="ceed", max_iterations=1, init="warm", guess_in_prefill=True),
}
"""Named decoders (`DecodeConfig.preset`, `--decoder` / `--compare` names).

* ``ar``: one token per forward pass; the reference every other decoder is measured against.
* ``jacobi``: Jacobi to exact convergence from a repeated-token guess; AR's tokens, fewer passes.
* ``ceed``: Jacobi from a warm start with *relaxed convergence*, an ee_vla extension of CEED's
  exit: stop when no token moved by more than ``tau = 1`` bin between the last two iterations, no
  iteration cap. ``tau`` bounds the movement between two iterations, not the distance from AR: a
  window that still drifts slowly can stop several bins away from AR's tokens (docs/decoding.md
  has the measured distances). The worst case is AR's ``n - 1`` iterations.
* ``ceed_cap``: the CEED paper's early exit: a fixed cap of 2 parallel iterations after the
  prefill (whatever has not converged is output as it stands), exact convergence otherwise
  (tau = 0). Bounds the forward passes of a call (3), not the distance from AR.
* ``ceed_2pass``: two forward passes per call: the prefill also runs the warm guess (so it is the
  first Jacobi iteration, ``guess_in_prefill``), then one iteration, and the window is output
  (``ceed_cap:max_iterations=1:guess_in_prefill=true``). The fewest passes of any preset (10.5x
  fewer than AR for a 21-token chunk); its tokens are AR's only where both passes agree with it.
"""


SPEC_OPTIONS = {
    "max_iterations": int,
    "tau": int,
    "deadline_s": float,
    "init": str,
    "window": int,
    "keep_final_kv": parse_bool,
    "guess_in_prefill": parse_bool,
}
"""The `DecodeConfig` fields a decoder spec may set, with their parsers."""


def parse_decoder_spec(spec: str) -> tuple[str, dict]:
    """``PRESET`` or ``PRESET:field=value:field=value`` (e.g.
    ``ceed_cap:max_iterations=1:guess_in_prefill=true``) -> (preset name, {field: value});
    ValueError naming what is wrong. Lets one run compare variants of a preset side by side."""
    name, *items = spec.split(":")
    if name not in PRESETS:
        where = f" in {spec!r}" if items else ""
        raise ValueError(f"unknown decoder {name!r}{where}: choose one of {sorted(PRESETS)}")
    options: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in SPEC_OPTIONS:
            raise ValueError(
                f"decoder {spec!r}: expected field=value with a field from {sorted(SPEC_OPTIONS)}, got {item!r}"
            )
        try:
            options[key] = SPEC_OPTIONS[key](value.strip())
        except ValueError as e:
            raise ValueError(f"decoder {spec!r}: {key}: {e}") from None
    return name, options
