"""`ee-vla`: one command, one subcommand per job.

Each subcommand is a typed config dataclass (its fields and docstrings are the options and their
help, rendered by tyro) and a function that runs it. Only the chosen subcommand's module is
imported, so `ee-vla --help` is instant and a missing optional dependency (mujoco, cyclonedds)
only affects the subcommands that need it.

A user error (a bad option value, a missing or occupied path, a dataset or model that does not fit:
`is_user_error`) prints one line, `ee-vla SUBCOMMAND: error: <message>`, and exits with 2 as tyro's
option errors do; `--debug` (anywhere on the command line) shows its traceback instead. Any other
exception is a bug: its traceback is printed with a request to report it, exit code 1.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import logging
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

# name -> (module, config class, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "eval": (
        "ee_vla.evaluation",
        "EvalConfig",
        "evaluate",
        "evaluate a policy in simulation (success, latency; --compare decoders)",
    ),
    "bench": (
        "ee_vla.benchmarks.decode_bench",
        "DecodeBenchConfig",
        "run_bench",
        "decode latency of AR vs Jacobi vs CEED on one machine",
    ),
    "collect": ("sim_envs.collect", "CollectConfig", "collect", "record scripted-expert demonstrations to HDF5"),
    "dagger": (
        "ee_vla.training.dagger",
        "DaggerConfig",
        "collect_on_policy",
        "run a policy in the sim and record the expert's labels of the states it visits (DAgger)",
    ),
    "train": ("ee_vla.training", "TrainConfig", "train", "behaviour-cloning training of a VLA on demonstrations"),
    "distill": ("ee_vla.training", "DistillConfig", "distill", "CEED consistency distillation of a trained VLA"),
    "serve": (
        "ros_nodes.serve",
        "ServeConfig",
        "serve",
        "run the policy node over Cyclone DDS (no ROS install needed)",
    ),
    "init-model": ("ee_vla.cli", "InitModelConfig", "init_model", "write a randomly initialised VLA of a preset"),
}


@dataclass
class InitModelConfig:
    """Write a randomly initialised VLA of a preset size (a model directory to try the tools on)."""

    out: Path
    """Directory to write the model to."""
    preset: str = "tiny"
    """Network size: tiny | small."""
    chunk_size: int = 3
    """Actions per chunk."""
    seed: int = 0
    """Initialisation seed."""
    cameras: tuple[str, ...] = ("pixels",)
    """Observation keys of the images the model reads, in the prompt's order (e.g. `--cameras
    pixels wrist_pixels`)."""
    overwrite: bool = False
    """Replace what `out` holds (a directory that is not empty is refused without it)."""


def init_model(cfg: InitModelConfig) -> Path:
    from ee_vla.models import create_random_vla_dir
    from ee_vla.models.contract import check_cameras

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"InitModelConfig.out: {out} is a file, not a directory")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not cfg.overwrite:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise FileExistsError(
            f"InitModelConfig.out: {out} is not empty (it holds {shown}); pass --overwrite to replace it "
            "with a random model"
        )
    cameras = check_cameras(cfg.cameras, "InitModelConfig.cameras")
    path = create_random_vla_dir(cfg.out, cfg.preset, cfg.chunk_size, cfg.seed, cameras=cameras)
    logging.getLogger("ee_vla").info("wrote a random %s VLA to %s", cfg.preset, path)
    return path


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {spec[3]}" for name, spec in SUBCOMMANDS.items())
    return (
        "usage: ee-vla SUBCOMMAND [OPTIONS]\n\nFast VLA policies: CEED decoding, streaming, sim evaluation, ROS 2.\n\n"
        f"subcommands:\n{rows}\n\n`ee-vla SUBCOMMAND --help` lists that subcommand's options. An error in the input\n"
        f"prints one line; `{DEBUG_FLAG}` (anywhere on the command line) shows its traceback."
    )


USAGE_ERROR = 2
"""Exit code of a user error (tyro's, and argparse's, for a bad option)."""
BUG = 1
"""Exit code of an unexpected exception."""
DEBUG_FLAG = "--debug"

_PACKAGES = ("ee_vla", "sim_envs", "ros_nodes")
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _ours(filename: str) -> bool:
    """Whether a source file belongs to one of this project's (imported) packages."""
    path = Path(filename).resolve()
    for pkg in _PACKAGES:
        mod = sys.modules.get(pkg)
        if (
            mod is not None
            and getattr(mod, "__file__", None)
            and path.is_relative_to(Path(mod.__file__).parent.resolve())
        ):
            return True
    return False


def is_user_error(e: BaseException) -> bool:
    """Whether `e` reports a problem with the user's input rather than a bug.

    User errors: the project's ValueError subclasses (DatasetError, EvalConfigError,
    DaggerConfigError, TrajectoryError, ObservationError, ResumeConfigError, ...), a ValueError
    raised by a `raise` statement of this project (option validation, `__post_init__`),
    `ModelLoadError` (a model directory that cannot be loaded), path errors (FileNotFoundError,
    FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError), a full or read-only
    disk, gymnasium's errors (an unknown env id), a GL backend MuJoCo cannot load (`GLBackendError`:
    its message names MUJOCO_GL and the library to install), a training loss that became NaN
    (FloatingPointError, whose message names the options to change) and torch's out-of-memory
    error (a batch too large for the device). A ValueError raised inside a library or by an
    unpacking in our code, a TypeError, KeyError, RuntimeError, ... is a bug.
    """
    if isinstance(e, _PATH_ERRORS + (FloatingPointError,)):
        return True
    if isinstance(e, OSError) and e.errno in _FULL_DISK:
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    models = sys.modules.get("ee_vla.models")
    if models is not None and isinstance(e, models.ModelLoadError):
        return True
    gym_error = sys.modules.get("gymnasium.error")
    if gym_error is not None and isinstance(e, gym_error.Error):
        return True
    gl = sys.modules.get("sim_envs.gl")
    if gl is not None and isinstance(e, gl.GLBackendError):
        return True
    if not isinstance(e, ValueError):
        return False
    if type(e).__module__.split(".")[0] in _PACKAGES:
        return True
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    return _ours(last.filename) and (last.line or "").lstrip().startswith("raise ")


def _report(prog: str, e: BaseException) -> int:
    """Print `e` for the user: one line for a user error, the traceback for a bug; the exit code."""
    if is_user_error(e):
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return USAGE_ERROR
    traceback.print_exception(e, file=sys.stderr)
    print(
        f"{prog}: internal error ({type(e).__name__}): this is a bug in ee-vla; please report it with the "
        "traceback above and the command line",
        file=sys.stderr,
    )
    return BUG


class OptionValueError(ValueError):
    """A config rejected the values it was given (its `__post_init__`): reported as one line."""


def _env_flags(cls: type, args: list[str]) -> list[str]:
    """Every `--env` value on the command line (comma-separated ones split), in the form `cls`
    parses: `--env A --env B` for a repeatable flag (eval, dagger), `--env A B` for one that takes
    several values (collect). Every form is accepted by every command; without this, argparse keeps
    only the last of repeated several-value flags and refuses several values after a repeatable one."""
    import typing

    if not dataclasses.is_dataclass(cls) or not any(a == "--env" or a.startswith("--env=") for a in args):
        return args
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except (NameError, TypeError):  # an annotation only a type checker resolves: leave the flags as given
        return args
    if "env" not in hints:
        return args
    import tyro

    repeatable = tyro.conf.UseAppendAction in getattr(hints["env"], "__metadata__", ())
    values: list[str] = []
    out: list[str] = []
    first = None
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--env="):
            values.append(a.split("=", 1)[1])
            i += 1
        elif a == "--env":
            j = i + 1
            while j < len(args) and not args[j].startswith("-"):
                values.append(args[j])
                j += 1
            if j == i + 1:  # no value: tyro reports it
                return args
            i = j
        else:
            out.append(a)
            i += 1
            continue
        if first is None:
            first = len(out)
    values = [e.strip() for v in values for e in v.split(",") if e.strip()]
    flags = [x for v in values for x in ("--env", v)] if repeatable else ["--env", *values]
    return out[:first] + flags + out[first:]


def _flag(argument) -> str:
    """The flag of a tyro argument (`--decoder`), for a one-line error."""
    flags = getattr(getattr(argument, "lowered", None), "name_or_flags", None) or ()
    return str(flags[0]) if flags else str(getattr(argument, "display_name", "") or "an option")


def _parse(cls: type, args: list[str], prog: str):
    """`tyro.cli(cls)`, its errors in one line (`OptionValueError`): a ValueError from building the
    config (a value its checks refuse: a missing path, an unknown env id), a value of the wrong type,
    a choice not on the list, an unknown flag, a required option missing. A tyro without its
    parse-error hooks renders its own boxed message."""
    import tyro

    args = _env_flags(cls, args)
    try:
        from tyro._errors import (
            BadValue,
            InstantiationFailure,
            InvalidChoice,
            MissingArgs,
            UnrecognizedArgs,
            on_parse_error,
        )
    except ImportError:  # a tyro without parse-error hooks: its own rendering
        return tyro.cli(cls, args=args, prog=prog)

    def one_line(event) -> None:
        if isinstance(event, InstantiationFailure):
            where = "" if event.argument is None else f"{_flag(event.argument)}: "
            message = str(event.message)
            for python_says, kind in (
                ("invalid literal for int() with base 10: ", "an integer"),
                ("could not convert string to float: ", "a number"),
            ):
                if message.startswith(python_says):
                    message = f"expected {kind}, got {message[len(python_says) :]}"
            optional = re.match(r"no type matching \{None\}\|(INT|FLOAT) could be instantiated from \[(.*?)\]", message)
            if optional:
                kind = "an integer" if optional[1] == "INT" else "a number"
                message = f"expected {kind} or None, got {optional[2]}"
            raise OptionValueError(f"{where}{message}")
        if isinstance(event, InvalidChoice):
            choices = ", ".join(map(str, event.choices))
            raise OptionValueError(f"{_flag(event.argument)}: invalid choice {event.value!r}; choose one of {choices}")
        if isinstance(event, BadValue):
            got = "" if event.offending_value is None else f" (got {event.offending_value!r})"
            reason = {"too_few_values": "expected a value"}.get(str(event.reason), str(event.reason))
            raise OptionValueError(f"{_flag(event.argument)}: {reason}{got}")
        if isinstance(event, UnrecognizedArgs):
            raise OptionValueError(
                f"unrecognized arguments: {' '.join(map(str, event.tokens))} (`{prog} --help` lists the options)"
            )
        if isinstance(event, MissingArgs):
            missing = ", ".join(_flag(m.arg) for m in event.missing_arguments)
            unknown = " ".join(map(str, getattr(event, "unrecognized_tokens", None) or ()))
            also = f"; unrecognized arguments: {unknown} (`{prog} --help` lists the options)" if unknown else ""
            raise OptionValueError(f"missing required option(s): {missing}{also}")

    with on_parse_error(one_line):
        return tyro.cli(cls, args=args, prog=prog)


def main(argv: list[str] | None = None) -> int:
    """Run `ee-vla ARGV`; returns the exit code. With `--debug` an exception propagates."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else USAGE_ERROR
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"ee-vla: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return USAGE_ERROR
    module, cls, fn, _ = SUBCOMMANDS[name]
    prog = f"ee-vla {name}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        if debug:
            raise
        print(
            f"{prog}: a dependency is missing ({e}); install the matching extra, e.g. "
            "`pip install -e .[sim]` or `.[dds]`",
            file=sys.stderr,
        )
        return 1
    except Exception as e:  # e.g. a GL backend MuJoCo cannot load, met while importing
        if debug:
            raise
        return _report(prog, e)
    try:
        config = _parse(getattr(mod, cls), rest, prog)
        if hasattr(config, "check_inputs"):  # paths and ids, before the job imports torch
            config.check_inputs()
        getattr(mod, fn)(config)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        return _report(prog, e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
