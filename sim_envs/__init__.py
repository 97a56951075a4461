"""Simulated environments for ee_vla: the ee_vla tabletop suite and a Meta-World adapter.

Importing this package registers the Gymnasium ids below (nothing else happens at import: MuJoCo
models are built by `gymnasium.make`, Meta-World is imported only when one of its envs is made).

| id                               | task                                        | max_episode_steps |
|----------------------------------|---------------------------------------------|-------------------|
| `ee_vla/Reach-v0`                | reach the named object                      | 50                |
| `ee_vla/PickCube-v0`             | pick up the named object                    | 80                |
| `ee_vla/Push-v0`                 | push the named object onto the white circle | 100               |
| `ee_vla/Place-v0`                | put the named object on the named plate     | 120               |
| `ee_vla/MetaWorld-<task>-v0`     | a Meta-World MT10 task, e.g. `MetaWorld-pick-place-v0` | 500    |
| `ee_vla/MetaWorld-v0`            | any Meta-World v3 task via `task_name="..."` | 500              |

Rendering: without a display and with `MUJOCO_GL` unset, importing this package sets it to a
headless backend, egl or else osmesa (`sim_envs.gl`); a value you set is kept.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence

import gymnasium

from sim_envs.gl import choose_mujoco_gl

choose_mujoco_gl()  # before any sim_envs module imports MuJoCo

from sim_envs.common import ACTION_DIM, ACTION_NAMES, GRIPPER_CONVENTION  # noqa: E402

# Mesa's software rasteriser (llvmpipe, behind EGL/OSMesa on a CPU) starts one thread per core in
# every process that renders. Frames here are small, so the renderer's own thread suffices (0 = no
# extra threads), and N env worker processes do not start N x cores threads that compete with the
# policy. Read by Mesa when the first GL context is made; a value the user set is kept.
os.environ.setdefault("LP_NUM_THREADS", "0")

SUITE_ENV_IDS = ("ee_vla/Reach-v0", "ee_vla/PickCube-v0", "ee_vla/Push-v0", "ee_vla/Place-v0")
MT10_TASKS = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
"""Meta-World's MT10 task set (metaworld.env_dict.MT10_V3), kept here so that registering the ids
does not import metaworld."""


def metaworld_env_id(task_name: str) -> str:
    """`"pick-place-v3"` -> `"ee_vla/MetaWorld-pick-place-v0"`."""
    return f"ee_vla/MetaWorld-{task_name.removesuffix('-v3')}-v0"


METAWORLD_ENV_IDS = tuple(metaworld_env_id(t) for t in MT10_TASKS)


def _register(env_id: str, entry_point: str, max_episode_steps: int, **kwargs: object) -> None:
    if env_id not in gymnasium.registry:
        gymnasium.register(id=env_id, entry_point=entry_point, max_episode_steps=max_episode_steps, kwargs=kwargs)


_register("ee_vla/Reach-v0", "sim_envs.reach:ReachEnv", 50)
_register("ee_vla/PickCube-v0", "sim_envs.pick_cube:PickCubeEnv", 80)
_register("ee_vla/Push-v0", "sim_envs.push:PushEnv", 100)
_register("ee_vla/Place-v0", "sim_envs.place:PlaceEnv", 120)
# Meta-World's own 500-step limit is off (max_path_length=None): gymnasium.make's TimeLimit, 500 or
# the max_episode_steps given to make (e.g. `ee-vla eval --max-episode-steps`), is the only one.
_register("ee_vla/MetaWorld-v0", "sim_envs.metaworld_adapter:MetaWorldEnv", 500, max_path_length=None)
for _task in MT10_TASKS:
    _register(
        metaworld_env_id(_task), "sim_envs.metaworld_adapter:MetaWorldEnv", 500, task_name=_task, max_path_length=None
    )


def registered_env_ids() -> list[str]:
    """Every `ee_vla/...` id in the Gymnasium registry."""
    return sorted(k for k in gymnasium.registry if k.startswith("ee_vla/"))


def _creator(env_id: str):
    """The class or function registered as `env_id` (its module imported)."""
    if env_id not in gymnasium.registry:
        raise ValueError(f"unknown env id {env_id!r}; registered ee_vla ids: {registered_env_ids()}")
    entry = gymnasium.registry[env_id].entry_point
    return gymnasium.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry


def control_hz(env_id: str) -> float | None:
    """The control rate of a registered env id, in Hz: one `step` per 1 / control_hz seconds of
    simulated time, declared as the env class's `metadata["render_fps"]` (Gymnasium's convention:
    one frame per step). None when the env declares none. Imports the env's module, not its
    dependencies' heavy parts (Meta-World loads only when an env is made)."""
    fps = getattr(_creator(env_id), "metadata", {}).get("render_fps")
    return None if fps is None else float(fps)


def _parameters(env_id: str) -> Mapping[str, inspect.Parameter] | None:
    """The constructor parameters of the env registered as `env_id` (ValueError for an id that is
    not registered), or None where its signature cannot be read."""
    creator = _creator(env_id)
    try:
        return inspect.signature(creator).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin, a C extension)
        return None


def takes_argument(env_id: str, name: str) -> bool:
    """Whether the env registered as `env_id` (any Gymnasium id) has a constructor argument `name`,
    e.g. `image_size`."""
    params = _parameters(env_id)
    return params is not None and name in params


def unknown_arguments(env_id: str, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(those of `names` that the constructor of `env_id` does not take, the arguments it does
    take); no names are unknown where its signature cannot be read or ends in **kwargs."""
    params = _parameters(env_id)
    if params is None:
        return [], []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return [], list(params)
    return [n for n in names if n not in params], list(params)


def check_cameras(env_ids: Sequence[str], cameras: Sequence[str]) -> None:
    """`camera_kwargs` of every env id: ValueError naming the first env that cannot render a camera
    of `cameras` and what it renders (e.g. `ee-vla collect --wrist-camera` on an env without a
    gripper camera)."""
    for env_id in env_ids:
        camera_kwargs(env_id, cameras)


def bool_arguments(env_id: str) -> frozenset[str]:
    """The constructor arguments of the env registered as `env_id` whose default is a bool (e.g.
    `wrist_camera`): those a value given as text ("false") must be read as a bool for."""
    params = _parameters(env_id)
    return frozenset(p.name for p in (params or {}).values() if isinstance(p.default, bool))


FLAG_ARGUMENTS = ("image_size", "wrist_camera", "instructions")
"""Env constructor arguments that `ee-vla collect` and `ee-vla dagger` set with flags of their own
(`--image-size`, `--wrist-camera`, `--instructions`), never through `--env-kwargs`."""


def check_extra_env_kwargs(env_kwargs: dict, where: str) -> None:
    """ValueError naming `where` (e.g. "CollectConfig.env_kwargs") and the flag to use when
    `env_kwargs` sets one of `FLAG_ARGUMENTS`."""
    for name in env_kwargs:
        if name in FLAG_ARGUMENTS:
            raise ValueError(f"{where}: {name!r} is a field of its own (--{name.replace('_', '-')})")


def typed_env_kwargs(env_id: str, env_kwargs: dict) -> dict:
    """`env_kwargs` with each value of a bool constructor argument of `env_id` (`bool_arguments`)
    read as a bool: a command line leaves `--env-kwargs wrist_camera false` as the string "false",
    which an env would take as true. ValueError naming the argument when such a value is not a
    true/false word (`sim_envs.common.parse_bool`), or when the env takes no such argument
    (`unknown_arguments`)."""
    from sim_envs.common import parse_bool

    unknown, known = unknown_arguments(env_id, list(env_kwargs))
    if unknown:
        raise ValueError(f"{unknown[0]}: not an argument of this env (it takes {', '.join(known)})")
    kwargs = dict(env_kwargs)
    for name in sorted(bool_arguments(env_id) & kwargs.keys()):
        try:
            kwargs[name] = parse_bool(kwargs[name])
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return kwargs


CAMERA_ARGUMENTS = {"wrist_pixels": "wrist_camera"}
"""Observation keys of the cameras an env renders only when asked, and the constructor argument
that asks for each (`pixels`, the main camera, is always observed)."""


def camera_kwargs(env_id: str, cameras: Sequence[str]) -> dict[str, bool]:
    """The constructor arguments that make `env_id` observe every camera of `cameras` (a policy's
    observation keys, `ee_vla.models.contract.ModelContract.cameras`); ValueError naming a camera
    the env cannot render."""
    kwargs = {}
    for camera in cameras:
        if camera == "pixels":
            continue
        arg = CAMERA_ARGUMENTS.get(camera)
        if arg is None or not takes_argument(env_id, arg):
            known = ", ".join(["pixels"] + [c for c, a in CAMERA_ARGUMENTS.items() if takes_argument(env_id, a)])
            raise ValueError(f"{env_id} has no camera {camera!r} (asked for {list(cameras)}; {env_id} renders {known})")
        kwargs[arg] = True
    return kwargs


def make(env_id: str, **kwargs: object) -> gymnasium.Env:
    """`gymnasium.make` with a `ValueError` that lists the known ids when `env_id` is unknown."""
    if env_id not in gymnasium.registry:
        raise ValueError(f"unknown env id {env_id!r}; registered ee_vla ids: {registered_env_ids()}")
    return gymnasium.make(env_id, **kwargs)


__all__ = [
    "ACTION_DIM",
    "ACTION_NAMES",
    "GRIPPER_CONVENTION",
    "METAWORLD_ENV_IDS",
    "MT10_TASKS",
    "SUITE_ENV_IDS",
    "bool_arguments",
    "check_extra_env_kwargs",
    "typed_env_kwargs",
    "unknown_arguments",
    "camera_kwargs",
    "check_cameras",
    "control_hz",
    "make",
    "metaworld_env_id",
    "registered_env_ids",
    "takes_argument",
]
