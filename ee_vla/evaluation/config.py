"""`EvalConfig`: what an evaluation runs, and the checks of it that need no env instance.

Every input error an evaluation can detect before loading the model is raised here, as
`EvalConfigError`: bad fields, decoder options a decoder does not take (`ee_vla.runtime`), env ids
that are not registered or have no episode limit, a video format without its encoder.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ee_vla.decoding.config import DecodeConfig, parse_decoder_spec
from ee_vla.runtime import RuntimeConfig

log = logging.getLogger(__name__)

DEFAULT_ENV = "ee_vla/PickCube-v0"


class EvalConfigError(ValueError):
    """An evaluation that cannot run as configured (bad field, unknown env id, incompatible env)."""


@dataclass
class EvalConfig:
    """Evaluate a policy on Gymnasium envs with one decoder, or compare several on the same seeds."""

    policy: Path
    """Model directory written by `VLA.save_pretrained` (config.json, model.safetensors, ee_vla.json, tokenizer)."""
    env: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    """Gymnasium env id to evaluate on; several after one flag, the flag repeated, or commas; each
    gets `episodes` episodes. Empty = ee_vla/PickCube-v0."""
    runtime: tyro.conf.OmitArgPrefixes[RuntimeConfig] = field(default_factory=RuntimeConfig)
    """How the policy runs (`ee_vla.runtime.RuntimeConfig`): `--decoder` (used when `compare` is
    empty), its options `--max-iterations`, `--tau`, `--deadline-s`, `--init`, `--window`, and
    `--n-action-steps`, `--device` (auto = cuda when available), `--dtype`, `--engine`,
    `--compile-mode`, `--threads`."""
    compare: list[str] = field(default_factory=list)
    """Decoders to compare on the same seeds, e.g. `ar,jacobi,ceed` (empty = evaluate `decoder` only).
    The decoder options apply to each decoder they are valid for. A variant of a preset is
    `PRESET:field=value:...` (e.g. `ceed:guess_in_prefill=true`), its own options over those."""
    episodes: int = 10
    """Episodes per env id, with seeds seed, seed+1, ..., seed+episodes-1."""
    num_envs: int = 1
    """Env copies stepped together; their observations are decoded in one batched policy call."""
    vector: Literal["sync", "async"] = "sync"
    """Gymnasium vector env: sync (one process) or async (one subprocess per copy)."""
    seed: int = 0
    """Seed of episode 0 (episode i uses seed + i); also seeds the `prompt` initial guess."""
    max_episode_steps: int | None = None
    """Override of the env spec's max_episode_steps (truncation)."""
    inference_delay: int = 0
    """Control steps that pass while the policy decodes, as on a robot whose decode takes that many
    control periods: each chunk after an episode's first is decoded when this many actions of the
    previous one are left, from that step's observation, and arrives once they ran (`chunk_start`:
    which of its actions runs first). 0 = every chunk acts on the observation it was decoded from.
    Must be below the actions executed per chunk (`--n-action-steps`, default the chunk size)."""
    chunk_start: Literal["arrival", "observation"] = "observation"
    """With an `inference_delay` of d, where a chunk that arrives d steps after its observation
    starts (the policy node's `chunk_start`): observation = at its action d, the one planned for the
    step at which it arrives (its first d were planned for the steps its decode took), running to
    action `n_action_steps` - 1, its warm guess shifted by the `n_action_steps` - d actions run
    between two decodes; arrival = at its action 0, each action d steps later than planned. An
    episode's first chunk runs whole; without a delay both are the same."""
    output_dir: Path | None = None
    """Where eval_info.json (and compare.json/png, videos) go; None = a new outputs/eval/<date>_<time>.
    A directory that already holds an evaluation's results is refused unless `overwrite`."""
    overwrite: bool = False
    """Replace the results of an earlier evaluation in `output_dir`."""
    videos: int = 0
    """Save videos of the first N episodes of each env id: what the policy saw, its cameras side by
    side (`pixels` alone for a one-camera policy)."""
    failure_videos: int = 0
    """Also save videos of the first N failed episodes of each env id to end (failed episodes among
    the first `videos` count); each saved episode's `video` in eval_info.json names its file, beside
    its `outcome`."""
    video_format: Literal["gif", "mp4"] = "gif"
    """gif (Pillow, always available) or mp4 (needs imageio-ffmpeg or PyAV)."""
    warmup: int = 1
    """Untimed decode calls on the first observations of each env id before timing starts. With a
    static engine (static, graph, compiled) the warm-up also decodes once at every smaller batch
    size, so that each batch size's engine, and its prompt bucket for this env's instructions, is
    built (captured, compiled) before timing starts: one-time setup is never timed as decoding."""
    clip_actions: bool = True
    """Clip actions to the env's action-space bounds before stepping."""
    env_modules: list[str] = field(default_factory=lambda: ["sim_envs"])
    """Modules imported before the envs are made (they register env ids with Gymnasium)."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keyword arguments of gymnasium.make, as name value pairs: `--env-kwargs image_size 64`.
    The arguments that make an env render the cameras the policy reads (`wrist_camera` for
    `wrist_pixels`) are set by the evaluation; turning one of those off is an error."""
    mujoco_gl: Literal["egl", "osmesa", "glfw"] | None = None
    """MuJoCo rendering backend, set as MUJOCO_GL before the envs import MuJoCo. None = keep the
    variable when set, else egl (the GPU's EGL, or Mesa's software EGL on a CPU-only machine)."""
    progress: bool = True
    """Show a tqdm progress bar (stderr)."""
    print_summary: bool = True
    """Print the one-screen summary table to stdout at the end."""
    save_calibration: Path | None = None
    """Also record the largest input each linear layer receives over the evaluation's episodes and
    write it to this file: a calibration for `--quantize fp8_tensor --calibration FILE`, whose
    activation scales it then fixes. Needs the unquantised model (`--quantize none`) on the eager or
    static engine (hooks do not run inside CUDA graphs); the model runs with its projections fused,
    as quantisation runs it. Record it on other seeds than those you evaluate on."""

    def __post_init__(self) -> None:
        self.policy = Path(self.policy)
        if isinstance(self.env, str):
            self.env = [self.env]
        self.env = [e.strip() for item in self.env for e in str(item).split(",") if e.strip()] or [DEFAULT_ENV]
        if len(set(self.env)) != len(self.env):
            raise EvalConfigError(f"EvalConfig.env lists an env id twice: {self.env}")
        if isinstance(self.compare, str):
            self.compare = [self.compare]
        self.compare = [d.strip() for item in self.compare for d in str(item).split(",") if d.strip()]
        for name in self.compare:
            try:
                parse_decoder_spec(name)
            except ValueError as e:
                raise EvalConfigError(f"EvalConfig.compare: {e}") from None
        if len(set(self.compare)) != len(self.compare):
            raise EvalConfigError(f"EvalConfig.compare lists a decoder twice: {self.compare}")
        for name in ("episodes", "num_envs"):
            if getattr(self, name) < 1:
                raise EvalConfigError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("videos", "failure_videos", "warmup", "inference_delay"):
            if getattr(self, name) < 0:
                raise EvalConfigError(f"EvalConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.chunk_start not in ("arrival", "observation"):
            raise EvalConfigError(f"EvalConfig.chunk_start must be arrival|observation, got {self.chunk_start!r}")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise EvalConfigError(f"EvalConfig.max_episode_steps must be >= 1 or None, got {self.max_episode_steps}")
        if self.vector not in ("sync", "async"):
            raise EvalConfigError(f"EvalConfig.vector must be sync|async, got {self.vector!r}")
        if self.video_format not in ("gif", "mp4"):
            raise EvalConfigError(f"EvalConfig.video_format must be gif|mp4, got {self.video_format!r}")
        if self.mujoco_gl not in (None, "egl", "osmesa", "glfw"):
            raise EvalConfigError(f"EvalConfig.mujoco_gl must be egl|osmesa|glfw or None, got {self.mujoco_gl!r}")
        if self.save_calibration is not None:
            self.save_calibration = Path(self.save_calibration)
            if self.runtime.quantize != "none":
                raise EvalConfigError(
                    f"EvalConfig.save_calibration records the unquantised model: it needs quantize none, "
                    f"got {self.runtime.quantize!r}"
                )
            if self.runtime.engine not in ("auto", "eager", "static"):
                raise EvalConfigError(
                    "EvalConfig.save_calibration records through forward hooks, which CUDA graphs skip: "
                    f"use engine eager or static, got {self.runtime.engine!r}"
                )
        self.decode_configs()  # validates the decoder options against every decoder

    def prepare(self) -> None:
        """`check_inputs`, then the runtime resolved: device auto -> cuda|cpu, an engine that runs
        there (imports torch). `evaluate` and `ee-vla dagger` call it before loading the policy."""
        self.check_inputs()
        self.runtime = self.runtime.resolved()
        if self.save_calibration is not None and self.runtime.engine == "auto" and self.runtime.device != "cpu":
            raise EvalConfigError(
                f"EvalConfig.save_calibration: engine auto is CUDA graphs on {self.runtime.device}, and they "
                "skip the recording hooks: pass --engine eager or static"
            )

    def check_inputs(self) -> None:
        """The policy directory has a saved policy's files, every env id is registered, and
        `output_dir` holds no model and no earlier results (unless `overwrite`). Imports no torch or MuJoCo: the
        CLI runs it first, so that such a mistake is reported at once."""
        from ee_vla.models import check_model_dir

        import_env_modules(self.env_modules)
        check_env_ids(self)
        check_model_dir(self.policy, "EvalConfig.policy:")
        if self.runtime.calibration is not None and not Path(self.runtime.calibration).is_file():
            raise EvalConfigError(f"EvalConfig.calibration: calibration file not found: {self.runtime.calibration}")
        if self.output_dir is not None and (Path(self.output_dir) / "model.safetensors").exists():
            raise EvalConfigError(
                f"EvalConfig.output_dir: {self.output_dir} holds a model (model.safetensors); "
                "write the results to another --output-dir"
            )
        if self.output_dir is not None and not self.overwrite:
            from ee_vla.evaluation.report import COMPARE_FILE, EVAL_INFO_FILE

            out = Path(self.output_dir)
            earlier = [str(p.relative_to(out)) for p in (out / COMPARE_FILE, out / EVAL_INFO_FILE) if p.exists()]
            earlier += [str(p.relative_to(out)) for p in sorted(out.glob(f"*/{EVAL_INFO_FILE}"))]
            if earlier:
                raise EvalConfigError(
                    f"EvalConfig.output_dir: {self.output_dir} already holds an evaluation ({', '.join(earlier)}); "
                    "choose another --output-dir or pass --overwrite"
                )

    @property
    def decoders(self) -> list[str]:
        """The decoders this evaluation runs, in order."""
        return list(self.compare) if self.compare else [self.runtime.decoder]

    def decode_config(self, name: str) -> DecodeConfig:
        """The preset `name` with the runtime's decoder options (`RuntimeConfig.decode_config`),
        seeded with `seed`: all of them for the one decoder evaluated (an option it does not take is
        an error), each where it is valid in a comparison."""
        single = not self.compare and name == self.runtime.decoder
        return self.runtime.decode_config(None if single else name, seed=self.seed)

    def decode_configs(self) -> dict[str, DecodeConfig]:
        return {name: self.decode_config(name) for name in self.decoders}


def import_env_modules(modules: Sequence[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                raise EvalConfigError(f"EvalConfig.env_modules: cannot import {name!r} ({e})") from e
            raise


def setup_mujoco_gl(cfg: EvalConfig) -> None:
    """Choose MuJoCo's GL backend before any env imports MuJoCo (it reads MUJOCO_GL at import).
    Default: egl, which renders on a GPU and, through Mesa, on a CPU-only machine."""
    wanted = cfg.mujoco_gl or os.environ.get("MUJOCO_GL") or "egl"
    if os.environ.get("MUJOCO_GL") == wanted:
        return
    if "mujoco" in sys.modules:  # switching backends after import crashes the renderer: keep it
        log.warning("MuJoCo was already imported with MUJOCO_GL=%s; ignoring %s", os.environ.get("MUJOCO_GL"), wanted)
        return
    os.environ["MUJOCO_GL"] = wanted


def check_env_ids(cfg: EvalConfig) -> None:
    """Fail before any model is loaded if an env id is not registered or has no episode limit."""
    import gymnasium

    registry = gymnasium.registry
    for env_id in cfg.env:
        if env_id not in registry:
            close = difflib.get_close_matches(env_id, list(registry), n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise EvalConfigError(
                f"EvalConfig.env: {env_id!r} is not a registered Gymnasium env id "
                f"(env_modules imported: {cfg.env_modules}){hint}"
            )
        if cfg.max_episode_steps is None and registry[env_id].max_episode_steps is None:
            raise EvalConfigError(
                f"EvalConfig.env: {env_id!r} has no max_episode_steps in its spec; set EvalConfig.max_episode_steps"
            )


def check_video_backend(cfg: EvalConfig) -> None:
    if (cfg.videos or cfg.failure_videos) and cfg.video_format == "mp4":
        if importlib.util.find_spec("imageio_ffmpeg") is None and importlib.util.find_spec("av") is None:
            raise EvalConfigError(
                "EvalConfig.video_format=mp4 needs imageio-ffmpeg or PyAV (pip install imageio[ffmpeg]); use gif"
            )
