"""`VLAPolicy`: the lerobot-style policy contract over a VLA and a decoder.

    policy = VLAPolicy.from_pretrained("path/to/model", decoder="ceed")
    policy.reset()
    chunk = policy.predict_action_chunk(obs)      # (chunk_size, action_dim)
    action = policy.select_action(obs)            # (action_dim,), a queue over chunks
    for a in policy.stream_action_chunk(obs):     # each action as soon as its tokens are final
        ...

`obs` is a dict: ``pixels`` (H, W, 3) uint8 RGB, ``instruction`` (non-empty str) and, for models
trained with proprio, ``agent_pos`` (1-D float). A model that reads several cameras takes an image
under each of its `cameras` keys (e.g. ``pixels`` and ``wrist_pixels``). A leading batch dimension
(``pixels`` (B, H, W, 3), ``instruction`` a list of B strings) decodes B observations in one
batch. Bad observations raise `ObservationError` naming the key and what is wrong; an instruction
longer than `PolicyConfig.max_instruction_tokens` text tokens is one too (it would make the
prefill arbitrarily slow). A model that outputs NaN/inf logits raises `ee_vla.decoding.NonFiniteLogitsError` instead of
returning actions.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ee_vla.decoding import DecodeConfig, DecodeStats, iter_decode
from ee_vla.decoding.config import PRESETS
from ee_vla.decoding.core import DecodeState, last
from ee_vla.decoding.guess import prompt_guess, warm_guess
from ee_vla.engine import make_prefill
from ee_vla.engine.static import check_compile_mode
from ee_vla.models.quantize import check_quantize_mode, engine_note, load_calibration, quantize_weights
from ee_vla.runtime import DTYPES, ENGINES, EngineKind, check_temporal_ensemble, resolve_device
from ee_vla.streaming import StreamedAction

log = logging.getLogger(__name__)


class ObservationError(ValueError):
    """An observation the policy cannot use (wrong shape, dtype, NaN, empty or too long instruction...)."""


MAX_INSTRUCTION_TOKENS = 256
"""Default `PolicyConfig.max_instruction_tokens`: far above a robot instruction (the shipped
policy's tokenizer encodes "pick up the red cube" in 6 tokens) and small next to the language
model's positions (1024 in ee_vla's presets)."""
CHARS_PER_TOKEN_BOUND = 32
"""An instruction longer than `max_instruction_tokens * CHARS_PER_TOKEN_BOUND` characters is
refused before it is tokenized (tokenizing megabytes takes seconds): no BPE token of a robot
instruction vocabulary covers 32 characters."""


@dataclass
class PolicyConfig:
    """What a `VLAPolicy` runs with: the resolved form of an `ee_vla.runtime.RuntimeConfig`
    (`RuntimeConfig.policy_config()`), whose fields carry the same names."""

    decoder: DecodeConfig | str = field(default_factory=lambda: DecodeConfig.preset("ceed"))
    """Decoder and its early-exit rules, or a preset name (ar | jacobi | ceed | ceed_cap | ceed_2pass)."""
    n_action_steps: int | None = None
    """Actions executed from each chunk before re-planning (`select_action`; the warm start shifts
    the previous chunk by this many actions). None = the whole chunk (1 with `temporal_ensemble`)."""
    temporal_ensemble: float | None = None
    """ACT's temporal ensembling (`TemporalEnsemble`): a chunk is decoded at every step and the
    action executed is the weighted mean of what the last `chunk_size` chunks planned for this step,
    weight exp(-m i) for the i-th oldest; m is this value (ACT's default 0.01: nearly equal weights;
    larger favours older chunks, negative newer ones). None = off. Needs `n_action_steps` None or 1."""
    device: str = "auto"
    """torch device of the model (auto = cuda when available, else cpu)."""
    dtype: str = "float32"
    """Model dtype: float32 | bfloat16 | float16 | float64."""
    engine: EngineKind = "auto"
    """Decode engine: eager (transformers DynamicCache), graph (static KV cache + CUDA graphs; CUDA
    only), static (graph's static-shape forwards without graphs), compiled (graph's forwards compiled
    by torch.compile/Inductor, then captured; compiles each shape at its first call), auto = graph
    on CUDA, else eager."""
    compile_mode: str = "inductor"
    """torch.compile mode of the compiled engine (`ee_vla.engine.static.COMPILE_MODES`): inductor,
    frozen (weights folded in: faster on a 7B, a copy of the concatenated projections per shape),
    max-autotune; ignored by the other engines."""
    max_instruction_tokens: int = MAX_INSTRUCTION_TOKENS
    """Longest instruction accepted, in text tokens of the model's tokenizer (after the prompt's
    normalisation); a longer one is an `ObservationError`. Bounds the prompt, so the prefill's time
    and memory, whatever arrives on the instruction topic."""
    unnorm_key: str | None = None
    """OpenVLA checkpoints: the dataset whose action statistics un-normalise the actions."""
    chunk_size: int | None = None
    """Actions per call (None = the model's; see `ee_vla.runtime.RuntimeConfig.chunk_size`)."""
    quantize: str = "none"
    """Weight quantisation of the model's linear layers at load (`ee_vla.models.quantize`): none |
    int8 (int8 weights) | fp8 (float8 weights and activations, scaled per row; CUDA, compute
    capability >= 8.9) | fp8_tensor (the same, scaled per tensor)."""
    calibration: str | None = None
    """fp8_tensor: a calibration file (`ee-vla eval --save-calibration`) that fixes each layer's
    activation scale once instead of per call (`ee_vla.models.quantize`); None = per call."""

    def __post_init__(self) -> None:
        self.decoder = as_decode_config(self.decoder)
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ValueError(f"PolicyConfig.n_action_steps must be >= 1 or None, got {self.n_action_steps}")
        check_temporal_ensemble(self.temporal_ensemble, self.n_action_steps, "PolicyConfig")
        if self.dtype not in DTYPES:
            raise ValueError(f"PolicyConfig.dtype must be {'|'.join(DTYPES)}, got {self.dtype!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"PolicyConfig.engine must be {'|'.join(ENGINES)}, got {self.engine!r}")
        check_compile_mode(self.compile_mode, "PolicyConfig.compile_mode")
        check_quantize_mode(self.quantize, "PolicyConfig.quantize")
        if self.calibration is not None and self.quantize != "fp8_tensor":
            raise ValueError(f"PolicyConfig.calibration needs quantize='fp8_tensor', got quantize={self.quantize!r}")
        if isinstance(self.max_instruction_tokens, bool) or not (
            isinstance(self.max_instruction_tokens, int) and self.max_instruction_tokens >= 1
        ):
            raise ValueError(
                f"PolicyConfig.max_instruction_tokens must be an int >= 1, got {self.max_instruction_tokens!r}"
            )


class TemporalEnsemble:
    """ACT's temporal ensembling of action chunks (Zhao et al., "Learning Fine-Grained Bimanual
    Manipulation with Low-Cost Hardware", 2023) for one episode: a chunk decoded at every step, and
    the action of step t the weighted mean of the actions that the chunks decoded at steps
    t - k + 1 .. t (k = the chunk size) planned for step t, weight exp(-m i) for the i-th oldest."""

    def __init__(self, m: float, chunk_size: int):
        self.m, self.chunk_size = float(m), int(chunk_size)
        self._chunks: deque[np.ndarray] = deque(maxlen=self.chunk_size)

    def reset(self) -> None:
        """Forget the chunks (an episode's start)."""
        self._chunks.clear()

    def add(self, chunk: np.ndarray) -> np.ndarray:
        """Take the chunk decoded at this step, (chunk_size, action_dim); returns this step's action."""
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or chunk.shape[0] != self.chunk_size:
            raise ValueError(f"TemporalEnsemble.add takes a ({self.chunk_size}, action_dim) chunk, got {chunk.shape}")
        self._chunks.append(chunk)
        n = len(self._chunks)
        planned = np.stack([c[n - 1 - i] for i, c in enumerate(self._chunks)])  # oldest first
        logw = -self.m * np.arange(n)
        weights = np.exp(logw - logw.max())  # any finite m: no overflow
        return (weights @ planned / weights.sum()).astype(chunk.dtype)


def _agent_pos(value: object) -> np.ndarray:
    """`obs["agent_pos"]` as a float64 array; `ObservationError` for what is not numbers."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ObservationError(
            f"'agent_pos' must be numbers (a float array), got {type(value).__name__} {shown}"
        ) from None


def as_decode_config(decoder: str | DecodeConfig) -> DecodeConfig:
    """A `DecodeConfig` from a preset name, a variant of one (`PRESET:field=value:...`, as
    `--compare` takes it) or a `DecodeConfig`; ValueError for anything else."""
    if isinstance(decoder, str):
        return DecodeConfig.from_spec(decoder)
    if not isinstance(decoder, DecodeConfig):
        raise ValueError(
            f"decoder must be a preset name ({', '.join(sorted(PRESETS))}), a variant of one "
            f"('ceed_cap:max_iterations=1') or a DecodeConfig, got {decoder!r}"
        )
    return decoder


class VLAPolicy:
    """Observations in, action chunks out, with AR / Jacobi / CEED decoding and streaming."""

    def __init__(self, vla, config: PolicyConfig | None = None):
        self.vla = vla
        self.config = config or PolicyConfig()
        k = vla.chunk_size
        if self.config.n_action_steps is not None and self.config.n_action_steps > k:
            raise ValueError(f"PolicyConfig.n_action_steps={self.config.n_action_steps} exceeds chunk_size={k}")
        self._queue: deque[np.ndarray] = deque()
        self._ensemble = self.new_ensemble()
        self._previous: torch.Tensor | None = None
        self._warm_start_shift: int | None = None
        self._generator = torch.Generator().manual_seed(self.config.decoder.seed)
        self._accepted_instructions: set[str] = set()  # within max_instruction_tokens (a few dozen)
        calibration = load_calibration(self.config.calibration) if self.config.calibration else None
        quantize_weights(vla.model, self.config.quantize, calibration)  # before the engine captures the forwards
        if (note := engine_note(self.config.quantize, self.config.engine)) is not None:
            log.warning(note)
        # the decode step's prefill: HFStep.prefill (eager) or a static-cache / CUDA-graph engine
        self._prefill = make_prefill(
            self.config.engine, vla.model, vla.n_action_tokens, compile_mode=self.config.compile_mode
        )
        self.last_stats: DecodeStats | None = None

    @property
    def engine_pool(self):
        """The `ee_vla.engine.EnginePool` decoding for this policy (one static engine per batch
        size), or None with the eager engine."""
        from ee_vla.engine import EnginePool

        return self._prefill if isinstance(self._prefill, EnginePool) else None

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        decoder: str | DecodeConfig = "ceed",
        device: str = "auto",
        dtype: str = "float32",
        n_action_steps: int | None = None,
        engine: str = "auto",
        compile_mode: str = "inductor",
        max_instruction_tokens: int = MAX_INSTRUCTION_TOKENS,
        unnorm_key: str | None = None,
        chunk_size: int | None = None,
        quantize: str = "none",
        calibration: str | None = None,
        temporal_ensemble: float | None = None,
    ) -> VLAPolicy:
        """Load a saved policy (`VLA.save_pretrained`'s directory, or an OpenVLA checkpoint) with
        these runtime options (`RuntimeConfig.load_policy` loads one from a `RuntimeConfig`)."""
        cfg = PolicyConfig(
            decoder=as_decode_config(decoder),
            n_action_steps=n_action_steps,
            temporal_ensemble=temporal_ensemble,
            device=device,
            dtype=dtype,
            engine=engine,
            compile_mode=compile_mode,
            max_instruction_tokens=max_instruction_tokens,
            unnorm_key=unnorm_key,
            chunk_size=chunk_size,
            quantize=quantize,
            calibration=calibration,
        )
        return cls.from_config(path, cfg)

    @classmethod
    def from_config(cls, path: str | Path, config: PolicyConfig) -> VLAPolicy:
        """Load a saved policy onto `config.device` (auto = cuda when available) with `config`."""
        from ee_vla.models import load_vla

        config = replace(config, device=resolve_device(config.device))
        vla = load_vla(
            path,
            device=config.device,
            dtype=getattr(torch, config.dtype),
            unnorm_key=config.unnorm_key,
            chunk_size=config.chunk_size,
        )
        return cls(vla, config)

    # ---- properties --------------------------------------------------------------------
    @property
    def chunk_size(self) -> int:
        return self.vla.chunk_size

    @property
    def action_dim(self) -> int:
        return self.vla.action_dim

    @property
    def decoder(self) -> DecodeConfig:
        return self.config.decoder

    @decoder.setter
    def decoder(self, value: str | DecodeConfig) -> None:
        self.config.decoder = as_decode_config(value)

    def new_ensemble(self) -> TemporalEnsemble | None:
        """A fresh `TemporalEnsemble` for one episode (of `select_action`, or of one env copy in an
        evaluation), or None without `temporal_ensemble`."""
        m = self.config.temporal_ensemble
        return None if m is None else TemporalEnsemble(m, self.chunk_size)

    @property
    def n_action_steps(self) -> int:
        if self.config.temporal_ensemble is not None:
            return 1
        return self.config.n_action_steps or self.chunk_size

    @property
    def warm_start_tokens(self) -> torch.Tensor | None:
        """(B, n) tokens of the last decoded chunk, the `warm` guess of the next call (None after
        `reset`). Settable, so a caller that batches different episodes together (vectorised
        evaluation) can give each row its own episode's previous chunk, and a row of -1 to an
        episode that has none yet (that row starts from the default guess)."""
        return self._previous

    @warm_start_tokens.setter
    def warm_start_tokens(self, tokens: torch.Tensor | None) -> None:
        if tokens is not None:
            if not isinstance(tokens, torch.Tensor):
                tokens = torch.as_tensor(np.asarray(tokens))
            n = self.vla.n_action_tokens
            if tokens.ndim != 2 or tokens.shape[1] != n:
                raise ValueError(f"warm_start_tokens must be (B, {n}), got {tuple(tokens.shape)}")
            if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
                raise ValueError(f"warm_start_tokens must be integer token ids, got {tokens.dtype}")
            at = self.vla.action_tokenizer
            actions = ((tokens >= at.first_token_id) & (tokens <= at.last_token_id)).all(dim=1)
            if not bool((actions | (tokens == -1).all(dim=1)).all()):
                raise ValueError(
                    f"warm_start_tokens rows must be action token ids ({at.first_token_id}..{at.last_token_id})"
                    " or all -1 (no previous chunk)"
                )
        self._previous = tokens

    @property
    def warm_start_shift(self) -> int | tuple[int | None, ...] | None:
        """Actions between the observation of the last chunk and the next call's: the `warm` guess
        is the last chunk shifted left by this many actions (None: `n_action_steps`, the actions a
        caller executes from each chunk before it observes again), or one such value per row of
        the next call's batch, used by that call only (its rows are that batch's). Set it when calls
        are not `n_action_steps` apart, as the ROS runner does (the control periods between two
        images) and a fleet does per robot."""
        return self._warm_start_shift

    @warm_start_shift.setter
    def warm_start_shift(self, actions: int | Sequence[int | None] | None) -> None:
        per_row = isinstance(actions, (list, tuple))
        if any(
            a is not None and (isinstance(a, bool) or not isinstance(a, int) or a < 0)
            for a in (actions if per_row else [actions])
        ):
            raise ValueError(
                f"warm_start_shift must be None or an integer >= 0 (or a list of those, one per row), got {actions!r}"
            )
        self._warm_start_shift = tuple(actions) if per_row else actions

    # ---- contract ------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget queued actions, the warm-start chunk and the ensembled chunks (call at every episode start)."""
        self._queue.clear()
        self._previous = None
        if self._ensemble is not None:
            self._ensemble.reset()

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        """(chunk_size, action_dim) actions, or (B, chunk_size, action_dim) for a batched obs."""
        batched = isinstance(obs, dict) and np.ndim(obs.get(self.vla.cameras[0])) == 4
        final = last(self._decode_states(obs))
        actions = self.vla.tokens_to_actions(final.tokens.cpu().numpy())
        return actions if batched else actions[0]

    def select_action(self, obs: dict) -> np.ndarray:
        """The next action: decodes a new chunk when the queue of `n_action_steps` is empty (with
        `temporal_ensemble`, at every step: the ensemble's action)."""
        if not self._queue:
            chunk = self.predict_action_chunk(obs)
            if chunk.ndim != 2:
                raise ObservationError("select_action takes one observation; use predict_action_chunk for batches")
            if self._ensemble is not None:
                return self._ensemble.add(chunk)
            self._queue.extend(chunk[: self.n_action_steps])
        return self._queue.popleft()

    def stream_action_chunk(
        self, obs: dict, action_deadline: Callable[[int], float | None] | None = None
    ) -> Iterator[StreamedAction]:
        """Yield each action of the chunk as soon as its tokens are final (in order).

        `action_deadline(i)` gives the `time.perf_counter()` time by which action i is due (e.g.
        from `ChunkSchedule.deadline`); an action not final by then is released as it stands and
        the rest is decoded conditioned on it.
        """
        D = self.action_dim
        for state in self._decode_states(obs, action_deadline):
            toks = state.tokens.cpu().numpy()
            now = time.perf_counter()
            for j in state.newly_final_units:
                t = toks[:, j * D : (j + 1) * D]
                act = self.vla.action_tokenizer.decode(t)
                exact = all(row[j] for row in state.stats.unit_exact)
                it = max(row[j] for row in state.stats.unit_final_iteration)
                single = act.shape[0] == 1
                yield StreamedAction(j, act[0] if single else act, t[0] if single else t, now, exact, it)

    def decode_states(
        self, obs: dict, action_deadline: Callable[[int], float | None] | None = None
    ) -> Iterator[DecodeState]:
        """The decode loop's snapshots of `obs`'s chunk, after the prefill and after every iteration:
        the window (`tokens`) and each row's count of final tokens (`n_final`), for a caller that
        streams every row of a batch on its own (`ros_nodes.fleet`). Run to its end, it leaves the
        chunk as `warm_start_tokens` and its statistics as `last_stats`, as `stream_action_chunk`
        does. `action_deadline` as there, one deadline per action for the whole batch."""
        return self._decode_states(obs, action_deadline)

    # ---- internals -----------------------------------------------------------------------
    def validate(self, obs: dict) -> tuple[list[np.ndarray], list[str], np.ndarray | None]:
        """Check an observation; returns batched (images, one (B, H, W, 3) array per camera of the
        model's `cameras`; instructions; proprio)."""
        if not isinstance(obs, dict):
            raise ObservationError(f"observation must be a dict, got {type(obs).__name__}")
        images = [self._camera_image(obs, key) for key in self.vla.cameras]
        B = images[0].shape[0]
        if any(im.shape[0] != B for im in images):
            shapes = ", ".join(f"'{k}' {im.shape[0]}" for k, im in zip(self.vla.cameras, images, strict=True))
            raise ObservationError(f"the cameras' images have different batch sizes: {shapes}")
        if B == 0:
            raise ObservationError(f"'{self.vla.cameras[0]}' is an empty batch (shape {images[0].shape})")
        if obs.get("instruction") is None:
            raise ObservationError("observation has no 'instruction' (one string per image)")
        instrs = self._instructions(obs["instruction"])
        if len(instrs) != B:
            raise ObservationError(
                f"'instruction' must be one string per image: {B} images, {len(instrs)} instructions"
            )
        for s in instrs:
            if not isinstance(s, str) or not s.strip():
                raise ObservationError(f"'instruction' must be a non-empty string, got {s!r}")
            self._check_instruction_length(s)
        proprio = None
        P = self.vla.proprio_dim
        if P:
            if obs.get("agent_pos") is None:
                raise ObservationError(f"this policy needs 'agent_pos' (proprio of {P} dims)")
            proprio = _agent_pos(obs["agent_pos"])
            if proprio.size % B:
                raise ObservationError(f"'agent_pos' has {proprio.size} values, not a multiple of the batch of {B}")
            proprio = proprio.reshape(B, -1)
            if proprio.shape[1] != P:
                raise ObservationError(f"'agent_pos' must have {P} dims, got {proprio.shape[1]}")
            if not np.isfinite(proprio).all():
                raise ObservationError("'agent_pos' contains NaN or inf")
        elif obs.get("agent_pos") is not None:
            ap = _agent_pos(obs["agent_pos"])
            if not np.isfinite(ap).all():
                raise ObservationError("'agent_pos' contains NaN or inf")
        return images, instrs, proprio

    @staticmethod
    def _instructions(instr: object) -> list:
        """`obs["instruction"]` as a list (one string, or a list, tuple or array of them);
        ObservationError for anything else."""
        if isinstance(instr, str):
            return [instr]
        if isinstance(instr, np.ndarray):
            return list(instr.reshape(-1))
        if isinstance(instr, (list, tuple)):
            return list(instr)
        raise ObservationError(
            f"'instruction' must be a string, or a list of strings for a batch, got {type(instr).__name__}"
        )

    def _camera_image(self, obs: dict, key: str) -> np.ndarray:
        """The (B, H, W, 3) uint8 image of camera `key` in `obs`; ObservationError naming the key."""
        if key not in obs:
            cams = self.vla.cameras
            which = "" if len(cams) == 1 else f" (this policy reads cameras {', '.join(cams)})"
            raise ObservationError(f"observation has no '{key}' (H, W, 3) uint8 RGB image{which}")
        px = np.asarray(obs[key])
        if px.ndim == 3:
            px = px[None]
        if px.ndim != 4 or px.shape[-1] != 3:
            raise ObservationError(f"'{key}' must be (H, W, 3) or (B, H, W, 3) RGB, got shape {np.shape(obs[key])}")
        if px.dtype != np.uint8:
            raise ObservationError(f"'{key}' must be uint8 (0..255), got dtype {px.dtype}")
        if min(px.shape[1:3]) < 8:
            raise ObservationError(f"'{key}' image {px.shape[1]}x{px.shape[2]} is too small")
        return px

    def _check_instruction_length(self, instruction: str) -> None:
        """ObservationError when the instruction has more than `max_instruction_tokens` tokens."""
        limit = self.config.max_instruction_tokens
        if instruction in self._accepted_instructions:
            return
        if len(instruction) > limit * CHARS_PER_TOKEN_BOUND:
            raise ObservationError(
                f"'instruction' is {len(instruction)} characters long; at most {limit} tokens "
                f"({limit * CHARS_PER_TOKEN_BOUND} characters) are accepted (PolicyConfig.max_instruction_tokens)"
            )
        from ee_vla.models.vla import prompt_text

        text = prompt_text(instruction, "{instruction}")
        n = len(self.vla.tokenizer(text, add_special_tokens=False).input_ids)
        if n > limit:
            raise ObservationError(
                f"'instruction' is {n} tokens long, over the limit of {limit} (PolicyConfig.max_instruction_tokens)"
            )
        if len(self._accepted_instructions) > 4096:
            self._accepted_instructions.clear()
        self._accepted_instructions.add(instruction)

    def _decode_states(self, obs: dict, action_deadline=None):
        cfg = self.config.decoder
        images, instrs, proprio = self.validate(obs)
        t_start = time.perf_counter()
        with torch.inference_mode():
            inputs = self.vla.build_inputs(images, instrs, proprio)
            n = self.vla.n_action_tokens
            shift = self._warm_start_shift
            if isinstance(shift, tuple):  # per-row values belong to this call's batch only
                self._warm_start_shift = None
            guess = self._guess(cfg, inputs, n, shift)
            if cfg.guess_in_prefill and guess is not None and n > 1:
                # rows without a guess run the first action token in its place (any id will do)
                guess = torch.where(guess < 0, self.vla.action_range[0], guess)
                inputs = {**inputs, "window": guess[:, : min(n - 1, cfg.window or n)]}
            inputs_s = time.perf_counter() - t_start
            step, first_logits, prefill_s = self._prefill(self.vla.model, **inputs)
            state = None
            for state in iter_decode(
                step,
                first_logits,
                n,
                cfg,
                guess=guess,
                action_range=self.vla.action_range,
                unit=self.action_dim,
                unit_deadline=action_deadline,
                t_start=t_start,
                prefill_s=prefill_s,
            ):
                state.stats.inputs_s = inputs_s
                yield state
        self._previous = state.tokens.clone()
        self.last_stats = state.stats

    def _guess(
        self, cfg: DecodeConfig, inputs: dict, n: int, shift: int | tuple[int | None, ...] | None = None
    ) -> torch.Tensor | None:
        B = inputs["input_ids"].shape[0]
        if cfg.init == "prompt":
            return prompt_guess(
                inputs["input_ids"], inputs["attention_mask"], n, self._generator, exclude=self.vla.non_text_ids
            )
        if cfg.init == "warm" and self._previous is not None and self._previous.shape == (B, n):
            rows = shift if isinstance(shift, tuple) else (shift,) * B
            if len(rows) != B:
                raise ValueError(f"warm_start_shift has {len(rows)} rows for a batch of {B}")
            D = self.action_dim
            steps = [self.n_action_steps if r is None else r for r in rows]
            if len(set(steps)) == 1:
                return warm_guess(self._previous, steps[0] * D, D)
            return torch.cat([warm_guess(self._previous[i : i + 1], k * D, D) for i, k in enumerate(steps)])
        return None
