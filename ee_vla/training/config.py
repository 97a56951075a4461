"""Configuration of behaviour cloning (`TrainConfig`) and CEED consistency distillation (`DistillConfig`).

Plain dataclasses with typed fields and attribute docstrings, so `tyro` renders them as a CLI
(`--chunk-size 3`, `--no-augment`, `--data a.hdf5 b.hdf5`) with help text, and validated in
`__post_init__` with errors that name the field. This module imports nothing heavy: `ee-vla train
--help` must not load torch.

Every choice the CEED-VLA paper (arXiv 2506.13725) leaves open is a field of `DistillConfig`;
docs/training.md lists the defaults and why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Preset = Literal["tiny", "small"]
TrainDtype = Literal["auto", "float32", "bfloat16"]
SaveDtype = Literal["float32", "bfloat16", "float16"]
Init = Literal["warm", "prompt", "repeat"]
StateSampling = Literal["uniform", "all"]
Consistency = Literal["global", "local"]
Reduction = Literal["mean", "sum"]


def _check(cond: bool, cls: str, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{cls}.{name} {msg}")


@dataclass(kw_only=True)
class RunConfig:
    """Fields shared by behaviour cloning and distillation: data, optimisation, logging, hardware."""

    data: tuple[str, ...]
    """Demonstration HDF5 files (robomimic layout, see docs/training.md) or directories of them;
    several files (one per task) are concatenated into one multi-task training set."""
    out_dir: str
    """Run directory: checkpoints/, model/ (the result), metrics.jsonl, loss.png, config.json."""
    steps: int = 2000
    """Optimizer steps in total (a resumed run continues up to this number)."""
    batch_size: int = 64
    """Samples per optimizer step and per process (the global batch is batch_size x world size)."""
    lr: float = 3e-4
    """Peak learning rate of AdamW (cosine decay to 0 after the warmup)."""
    warmup_steps: int = 100
    """Linear learning-rate warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay (applied to matrices only, not to biases and norms)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = no clipping)."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the weights (torch's `AveragedModel`): after each step
    from the end of the warmup on, the average moves 1 - ema_decay of the way to the trained weights
    (0.999 averages over about the last 1000 steps). out_dir/model is then the average and
    out_dir/model_raw the last step's own weights; checkpoints carry the average. 0 = off."""
    label_smoothing: float = 0.0
    """Label smoothing of the next-token cross-entropy."""
    action_vocab_only: bool = True
    """Softmax over the action-token block only (losses and accuracy). The decoders restrict their
    argmax to that block (`action_range`), so probability mass elsewhere never matters at run time;
    False = softmax over the whole vocabulary (OpenVLA)."""
    augment: bool = True
    """Image augmentation on each batch (random shift + colour jitter); False switches all of it off."""
    aug_shift: float = 0.06
    """Random shift: pad by this fraction of the image side (edge replicated) and crop back at a
    random offset (DrQ-style); 0 = off."""
    aug_brightness: float = 0.2
    """Colour jitter: brightness factor drawn from [1 - x, 1 + x] per image; 0 = off."""
    aug_contrast: float = 0.2
    """Colour jitter: contrast factor drawn from [1 - x, 1 + x] per image; 0 = off."""
    aug_saturation: float = 0.2
    """Colour jitter: saturation factor drawn from [1 - x, 1 + x] per image; 0 = off."""
    success_only: bool = True
    """Skip demonstrations whose `success` attribute is False (a failed demo teaches failure)."""
    seed: int = 0
    """Seed of the model initialisation, data order, augmentation and trajectory sampling."""
    device: str = "auto"
    """torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1... Under torchrun each
    process uses cuda:LOCAL_RANK."""
    dtype: TrainDtype = "auto"
    """Compute dtype: bfloat16 runs the forward under bf16 autocast with fp32 master weights;
    auto = bfloat16 on CUDA, float32 on CPU."""
    save_dtype: SaveDtype = "float32"
    """dtype of the final model in out_dir/model (checkpoints are always float32). bfloat16/float16
    halve the file for shipping."""
    log_every: int = 10
    """Write a metrics.jsonl row (means over the interval) every this many steps."""
    save_every: int = 500
    """Save a checkpoint (and redraw loss.png) every this many steps; the last step always saves."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept on disk (older ones are deleted)."""
    eval_every: int = 250
    """Every this many steps, greedy-Jacobi-decode a fixed batch of training samples and log
    iterations to converge and accuracy against the demonstrations (0 = never)."""
    eval_samples: int = 32
    """Samples in that fixed evaluation batch."""
    num_workers: int = 0
    """DataLoader worker processes (the data is held in memory; 0 is usually enough)."""
    threads: int = 0
    """CPU threads of torch (intra-op) per training process; 0 = the cores available less the
    DataLoader workers, shared among the processes torchrun starts on this machine (ee_vla.threads)."""
    resume: bool = False
    """Continue from the latest checkpoint in out_dir (model, optimizer, scheduler, step, RNG). The
    config must match the checkpoint's except for steps, stop_after, max_minutes, device, dtype,
    num_workers, threads, save_dtype and the log/save/eval intervals (see allow_config_change)."""
    allow_config_change: bool = False
    """With resume: continue although data, lr, batch_size, seed or another field that defines the
    run differs from the checkpoint's; the new values apply from the resumed step on and are logged
    as a warning. Fields of the model (preset, chunk_size, init_from, teacher, ...) cannot change."""
    stop_after: int | None = None
    """End this run after this many steps, with a checkpoint and out_dir/model, although the
    learning-rate schedule is `steps` long (reproduces a run cut short by a time limit; `--resume`
    with a larger or no stop_after continues it). None = run all `steps`."""
    max_minutes: float | None = None
    """End this run, like stop_after, at the first logged step after this many minutes of training
    (counted from the start of the training loop, setup excluded): a time budget for a machine
    held for a fixed time. `--resume` continues it. None = no limit."""

    def __post_init__(self) -> None:
        c = type(self).__name__
        if isinstance(self.data, str):
            self.data = (self.data,)
        self.data = tuple(str(p) for p in self.data)
        _check(len(self.data) > 0, c, "data", "is empty: give at least one HDF5 file or directory")
        _check(bool(str(self.out_dir)), c, "out_dir", "is empty")
        for name in ("steps", "batch_size", "log_every", "save_every", "keep_checkpoints", "eval_samples"):
            _check(getattr(self, name) >= 1, c, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "num_workers", "threads"):
            _check(getattr(self, name) >= 0, c, name, f"must be >= 0, got {getattr(self, name)}")
        _check(math.isfinite(self.lr) and self.lr > 0, c, "lr", f"must be > 0, got {self.lr}")
        _check(
            self.stop_after is None or 1 <= self.stop_after <= self.steps,
            c,
            "stop_after",
            f"must be in [1, steps={self.steps}] or None, got {self.stop_after}",
        )
        _check(
            self.max_minutes is None or (math.isfinite(self.max_minutes) and self.max_minutes > 0),
            c,
            "max_minutes",
            f"must be > 0 or None, got {self.max_minutes}",
        )
        _check(self.weight_decay >= 0, c, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.grad_clip >= 0, c, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        _check(0 <= self.ema_decay < 1, c, "ema_decay", f"must be in [0, 1) (0 = off), got {self.ema_decay}")
        _check(0 <= self.label_smoothing < 1, c, "label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        _check(0 <= self.aug_shift < 0.5, c, "aug_shift", f"must be in [0, 0.5), got {self.aug_shift}")
        for name in ("aug_brightness", "aug_contrast", "aug_saturation"):
            _check(0 <= getattr(self, name) < 1, c, name, f"must be in [0, 1), got {getattr(self, name)}")
        _check(
            self.dtype in ("auto", "float32", "bfloat16"),
            c,
            "dtype",
            f"must be auto|float32|bfloat16, got {self.dtype!r}",
        )
        _check(
            self.save_dtype in ("float32", "bfloat16", "float16"),
            c,
            "save_dtype",
            f"must be float32|bfloat16|float16, got {self.save_dtype!r}",
        )
        _check(bool(self.device), c, "device", "is empty")

    def check_inputs(self) -> None:
        """The mistakes found without loading torch: a data path that does not exist, an out_dir that
        holds something a run would overwrite or a run to resume (`resume` not set), a model to start
        from that is not a saved policy. `ee-vla train/distill` run it before anything heavy loads."""
        from ee_vla.training.run_dir import check_run_dir

        for p in self.data:
            if not Path(p).exists():
                raise FileNotFoundError(f"{type(self).__name__}.data: {p} does not exist")
        check_run_dir(self)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    """Behaviour cloning: teacher-forced next-token cross-entropy on the action tokens of
    demonstration chunks (the prompt is context only, never a target)."""

    preset: Preset = "small"
    """Network size of a new model: tiny (tests, CPU) | small (~10M parameters, the shipped policy)."""
    chunk_size: int | None = None
    """k: actions per chunk. The target at step t is actions t..t+k-1 (the last action repeated
    past the episode end). None: 3 for a new model, the model's own with init_from. A value with
    init_from fine-tunes that model to chunks of k actions (the network is unchanged: it emits
    k x action_dim tokens after the prompt); a resumed run keeps its model's."""
    use_proprio: bool = False
    """Append the discretised proprio (`obs/agent_pos`) to the prompt as action-block tokens."""
    cameras: tuple[str, ...] | None = None
    """Observation keys of the images the model reads, in the prompt's order: pixels (the env's
    main camera), wrist_pixels (the gripper camera of the suite and Meta-World: record it with
    `ee-vla collect --wrist-camera`), e.g. `--cameras pixels wrist_pixels`. Saved as `cameras` in the model's
    ee_vla.json; every demonstration must hold each camera's images (obs/<key>). None = pixels for a
    new model, the model's own with init_from; with init_from, another list fine-tunes the model to
    read those cameras (its weights serve any number of cameras); a resumed run keeps its model's."""
    init_from: str | None = None
    """Start from this ee_vla model directory (fine-tuning) instead of a random `preset` model; its
    action/proprio statistics are kept, and its chunk size unless chunk_size is set."""
    action_stats: str | None = None
    """ActionStats JSON to normalise actions with; None = computed from all training files together
    (one tokenizer must cover every task)."""
    unnormalized_dims: tuple[int, ...] = (-1,)
    """Action dims left unnormalised when statistics are computed (only clipped to [-1, 1]); the
    default -1 is the gripper, as OpenVLA's mask."""
    patch_size: int | None = None
    """Vision patch side in pixels of a new model (None = the preset's: 16 for small). Smaller
    patches give more image tokens (finer localisation, longer prompt)."""
    vision_pos_init: Literal["sincos", "random"] = "sincos"
    """How a new model's vision position table starts: sincos = fixed 2D sine-cosine values (MAE),
    random = SigLIP's small random init. sincos breaks the localisation plateau of a from-scratch
    tower sooner (docs/training.md)."""
    vision_stem: Literal["patch", "conv"] = "patch"
    """A new model's vision stem: patch = SigLIP's patch embedding (one linear map per patch),
    conv = a few stride-2 3x3 convolutions to the same patch grid (`ee_vla.models.network.ConvStem`:
    a locality prior for a from-scratch tower; needs a power-of-two patch size)."""
    grounding_fraction: float = 0.0
    """Grounding co-training: this fraction of the training items asks the model "where are the
    objects to <instruction>?" and teaches it the answer, the target's and goal's xyz
    (`privileged/task_points`, discretised like actions), from the same image. It trains the vision
    tower to find the named objects; the policy's action prompt is unchanged. 0 = off. Needs data
    collected by sim_envs (ee_vla suite). With grounding_source=scenes, 1 = grounding only (a
    pre-training stage: then `ee-vla train --init-from` its model)."""
    grounding_source: Literal["demos", "scenes"] = "demos"
    """Where grounding questions come from: demos = frames of the training demonstrations (a
    fixed set the network can memorise); scenes = a fresh scene for every question, rendered by
    sim_envs for the demonstrations' tasks and camera (seeds from 10,000,000 on, never a
    demonstration's or an evaluation's), so answers cannot be memorised. Rendering runs in the
    DataLoader workers: give --num-workers."""
    grounding_questions: Literal["target", "all"] = "target"
    """Which questions a fresh scene (grounding_source=scenes) is asked: target = one, its
    episode's own instruction; all = every object of the scene named in turn (Place: each plate
    too), 3-4 questions from one render. `all` shows the network the same image with different
    answers that only the instruction tells apart (the binding the policy needs) and renders 3-4x
    fewer scenes per item."""
    input_noise: float = 0.0
    """Teacher forcing with noisy inputs: each action token the model is fed (not the ones it is
    asked for) is replaced by a random action token with this probability. Plain teacher forcing
    lets a small model predict a whole chunk from its first token (which names a memorised
    training scene) and never learn to read the image; noise takes that shortcut away. 0 = off."""
    val_fraction: float = 0.0
    """Hold out this fraction of the episodes (every round(1/x)-th, in file order) from
    training; the periodic greedy evaluation (`eval/*` metrics) then decodes held-out samples
    instead of training ones. 0 = train on everything."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.chunk_size is None or self.chunk_size >= 1,
            "TrainConfig",
            "chunk_size",
            f"must be >= 1 or None, got {self.chunk_size}",
        )
        _check(self.preset in ("tiny", "small"), "TrainConfig", "preset", f"must be tiny|small, got {self.preset!r}")
        _check(
            self.patch_size is None or self.patch_size >= 1,
            "TrainConfig",
            "patch_size",
            f"must be >= 1 or None, got {self.patch_size}",
        )
        _check(
            0 <= self.val_fraction <= 0.5,
            "TrainConfig",
            "val_fraction",
            f"must be in [0, 0.5], got {self.val_fraction}",
        )
        _check(
            self.grounding_source in ("demos", "scenes"),
            "TrainConfig",
            "grounding_source",
            f"must be demos|scenes, got {self.grounding_source!r}",
        )
        _check(
            self.grounding_questions in ("target", "all"),
            "TrainConfig",
            "grounding_questions",
            f"must be target|all, got {self.grounding_questions!r}",
        )
        _check(
            self.grounding_questions == "target" or self.grounding_source == "scenes",
            "TrainConfig",
            "grounding_questions",
            "all needs grounding_source=scenes (a demonstration records its own target's position only)",
        )
        g_max = 1.0 if self.grounding_source == "scenes" else 0.5
        _check(
            0 <= self.grounding_fraction <= g_max,
            "TrainConfig",
            "grounding_fraction",
            f"must be in [0, {g_max}] with grounding_source={self.grounding_source}, got {self.grounding_fraction}",
        )
        _check(0 <= self.input_noise < 1, "TrainConfig", "input_noise", f"must be in [0, 1), got {self.input_noise}")
        self.unnormalized_dims = tuple(int(d) for d in self.unnormalized_dims)
        if self.cameras is not None:
            from ee_vla.models.contract import check_cameras

            self.cameras = check_cameras(self.cameras, "TrainConfig.cameras")

    def model_cameras(self, model_dir: str | Path | None) -> tuple[str, ...]:
        """The cameras the trained model reads: `cameras`, else those of the model in `model_dir`
        (init_from, or the checkpoint a run resumes; its ee_vla.json, read without torch), else
        pixels alone."""
        if self.cameras is not None:
            return self.cameras
        if model_dir is None:
            from ee_vla.models.contract import CAMERAS

            return CAMERAS
        from ee_vla.models.contract import read_contract

        return read_contract(model_dir).cameras

    def check_inputs(self) -> None:
        super().check_inputs()
        if self.init_from:
            from ee_vla.models import check_model_dir

            check_model_dir(self.init_from, "TrainConfig.init_from:")


@dataclass(kw_only=True)
class DistillConfig(RunConfig):
    """CEED consistency distillation of an AR-trained VLA (CEED-VLA, arXiv 2506.13725).

    The student starts from the teacher. Loss = consistency_weight * KL(Q_sg(.|Y*) || Q(.|Y)) over
    the window positions for a Jacobi state Y of the teacher's trajectory, + ar_weight * the
    teacher-forced cross-entropy of the (mixed) labels.
    """

    teacher: str
    """The AR-trained teacher: an ee_vla model directory (e.g. the out_dir/model of `ee-vla train`)
    or an OpenVLA checkpoint (the student is then written in OpenVLA's layout)."""
    unnorm_key: str | None = None
    """OpenVLA teachers: the dataset whose action statistics tokenise the demonstrations' actions
    (None: the only one)."""
    chunk_size: int | None = None
    """OpenVLA teachers: actions per call the student learns to emit (None: the teacher's, 1 for
    OpenVLA; a longer chunk gives Jacobi a longer window). An ee_vla teacher's is fixed."""
    lora_rank: int = 0
    """0: every weight of the student trains. r > 0: LoRA adapters of rank r (peft) on the language
    model's attention and MLP projections train and everything else is frozen (a 7B student on
    one GPU); they are folded into the weights whenever the model is saved. Such a run cannot resume."""
    trajectories: str | None = None
    """Jacobi trajectories collected earlier (a .safetensors file or a directory of parts) to reuse,
    e.g. across a threshold ablation; None = collect them into out_dir/trajectories/."""
    collect_only: bool = False
    """Collect the trajectories and stop (no training): run once before an ablation sweep."""
    collect_batch_size: int = 128
    """Samples decoded together while collecting trajectories."""
    inits: tuple[Init, ...] = ("warm", "prompt")
    """Initial Jacobi guesses to collect one trajectory each from: warm (the teacher's chunk of the
    previous control step shifted, what the shipped CEED decoder starts from; repeat at episode
    start), prompt (tokens drawn from the prompt, CLLM/CEED), repeat (the first token repeated)."""
    warm_shift: int | None = None
    """warm: actions executed between two control steps (the policy's n_action_steps); None = the
    chunk size (the policy default)."""
    mixed_labels: bool = True
    """Mixed-label supervision: AR labels are the teacher's fixed point Y* except on action steps
    where Y* deviates from the demonstration by more than `mixed_label_threshold` (ablation switch)."""
    mixed_label_threshold: float = 0.1
    """Deviation above which an action step of Y* is replaced by the demonstration: mean absolute
    difference over the action dims, in normalised units ([-1, 1] per dim; one bin = 2/255)."""
    consistency: Consistency = "global"
    """What the consistency loss maps a Jacobi state Y_j to (CLLM's two losses): global = the fixed
    point, KL(Q_sg(. | Y*) || Q(. | Y_j)) (CEED); local = the next state of its trajectory,
    KL(Q_sg(. | Y_{j+1}) || Q(. | Y_j)), one Jacobi iteration at a time."""
    consistency_weight: float = 1.0
    """Weight of the consistency loss (CEED: 1:1; its Table 6 finds 1:10 worse)."""
    ar_weight: float = 1.0
    """Weight of the AR (cross-entropy) loss."""
    state_sampling: StateSampling = "uniform"
    """Which trajectory states Y are trained on: uniform = one state per sample and step, drawn
    uniformly among the states before the fixed point; all = every such state is a training item."""
    mask_converged_prefix: bool = True
    """Consistency loss only on positions after the first input token of Y that differs from its
    target (Y*, or the next state with `consistency` local) (CLLM). Earlier positions see identical
    inputs and have zero KL; masking them only changes the averaging of the `mean` reduction."""
    reduction: Reduction = "mean"
    """How both losses combine token positions: mean (CLLM's code; the 1:1 weighting does not depend
    on the chunk length) or sum (the paper's formula)."""
    label_smoothing: float = 0.1
    """Label smoothing of the AR loss (CLLM uses 0.1)."""
    augment: bool = False
    """Image augmentation; off by default because trajectories and fixed points belong to the clean
    image."""
    freeze_vision: bool = False
    """Train the language model only: the vision tower and projector keep the teacher's weights (no
    gradient). Consistency training concerns decoding; on a few thousand frames a student can
    otherwise lose what the tower learnt from millions of scenes."""
    steps: int = 1000
    """Optimizer steps in total (a resumed run continues up to this number)."""
    lr: float = 1e-4
    """Peak learning rate (lower than BC: the student starts from a trained teacher)."""
    warmup_steps: int = 50
    """Linear learning-rate warmup steps."""

    def __post_init__(self) -> None:
        super().__post_init__()
        c = "DistillConfig"
        _check(bool(self.teacher), c, "teacher", "is empty: give the AR teacher's model directory")
        _check(self.collect_batch_size >= 1, c, "collect_batch_size", f"must be >= 1, got {self.collect_batch_size}")
        _check(0 <= self.lora_rank <= 1024, c, "lora_rank", f"must be in [0, 1024], got {self.lora_rank}")
        _check(
            self.chunk_size is None or 1 <= self.chunk_size <= 64,
            c,
            "chunk_size",
            f"must be in [1, 64] or None, got {self.chunk_size}",
        )
        if isinstance(self.inits, str):
            self.inits = (self.inits,)
        self.inits = tuple(self.inits)
        _check(len(self.inits) > 0, c, "inits", "is empty: give at least one of warm|prompt|repeat")
        for i in self.inits:
            _check(i in ("warm", "prompt", "repeat"), c, "inits", f"entries must be warm|prompt|repeat, got {i!r}")
        _check(len(set(self.inits)) == len(self.inits), c, "inits", f"has duplicates: {self.inits}")
        _check(
            self.warm_shift is None or self.warm_shift >= 1,
            c,
            "warm_shift",
            f"must be >= 1 or None, got {self.warm_shift}",
        )
        _check(
            math.isfinite(self.mixed_label_threshold) and self.mixed_label_threshold >= 0,
            c,
            "mixed_label_threshold",
            f"must be >= 0, got {self.mixed_label_threshold}",
        )
        for name in ("consistency_weight", "ar_weight"):
            _check(getattr(self, name) >= 0, c, name, f"must be >= 0, got {getattr(self, name)}")
        _check(self.consistency_weight + self.ar_weight > 0, c, "consistency_weight", "and ar_weight are both 0")
        _check(
            self.state_sampling in ("uniform", "all"),
            c,
            "state_sampling",
            f"must be uniform|all, got {self.state_sampling!r}",
        )
        _check(self.reduction in ("mean", "sum"), c, "reduction", f"must be mean|sum, got {self.reduction!r}")
        _check(
            self.consistency in ("global", "local"), c, "consistency", f"must be global|local, got {self.consistency!r}"
        )

    def check_inputs(self) -> None:
        super().check_inputs()
        from ee_vla.models import check_model_dir

        check_model_dir(self.teacher, "DistillConfig.teacher:")
