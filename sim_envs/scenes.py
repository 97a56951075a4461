"""Fresh scenes with ground truth: the first frame of a random episode of an ee_vla suite task and
where its objects are, for grounding pre-training on as many scenes as training steps ask for.

Scene `seed` is the start of `env_ids[seed % len(env_ids)]` reset with `seed`, the gripper placed
at a random point above the table (drawn from the seed too) so that it sometimes hides or frames
the objects, as it does during an episode. The same seed always gives the same scene; demonstration
collection and evaluation use seeds below `SCENE_SEED_BASE`, so a scene seed from there on is a
layout no demonstration or evaluation starts from.

    >>> renderer = SceneRenderer(["ee_vla/Reach-v0", "ee_vla/Push-v0"])
    >>> batch = renderer.render(range(SCENE_SEED_BASE, SCENE_SEED_BASE + 8))
    >>> batch["pixels"].shape, batch["task_points"].shape
    ((8, 128, 128, 3), (8, 6))

A renderer holds one env per task id; create one per process (GL contexts do not survive a fork).
Envs made with more cameras (`env_kwargs={"wrist_camera": True}`, `sim_envs.camera_kwargs`) give
each camera's images under its observation key too (``wrist_pixels``), from the same reset.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

SCENE_SEED_BASE = 10_000_000
"""First seed of grounding scenes (collection starts at 0, the documented evaluation at 100000)."""
GRIPPER_LOW = np.array([-0.2, -0.2, 0.08])
GRIPPER_HIGH = np.array([0.2, 0.15, 0.25])
"""Box the random gripper start is drawn from (above the objects, which are 4 cm tall)."""


class SceneRenderer:
    """Renders scenes of ee_vla tabletop tasks by seed (see the module docstring).

    Args:
        env_ids: ee_vla suite ids (`ee_vla/Reach-v0`...); Meta-World envs have no task points.
        env_kwargs: passed to every `sim_envs.make` (image_size, camera, wrist_camera...).
        random_gripper: draw the gripper's start position (else the task's usual start).
    """

    def __init__(self, env_ids: Sequence[str], env_kwargs: dict | None = None, random_gripper: bool = True):
        import sim_envs
        from sim_envs.tabletop import TabletopEnv

        if not env_ids:
            raise ValueError("SceneRenderer needs at least one env id")
        self.env_ids = list(env_ids)
        self.random_gripper = random_gripper
        self.envs = []
        try:
            for env_id in self.env_ids:
                env = sim_envs.make(env_id, **(env_kwargs or {}))
                if not isinstance(env.unwrapped, TabletopEnv):
                    env.close()
                    raise ValueError(f"{env_id} is not an ee_vla tabletop task: it has no task points to ask about")
                self.envs.append(env)
        except BaseException:
            self.close()
            raise

    def _reset(self, seed: int):
        """Scene `seed`: (its env, first observation, reset info)."""
        k = seed % len(self.envs)
        options = None
        if self.random_gripper:
            options = {"gripper_pos": np.random.default_rng([seed, 1]).uniform(GRIPPER_LOW, GRIPPER_HIGH)}
        obs, info = self.envs[k].reset(seed=seed, options=options)
        return k, obs, info

    def render(self, seeds: Iterable[int]) -> dict:
        """Scenes `seeds`: ``pixels`` (B, H, W, 3) uint8, ``agent_pos`` (B, 7) float32, ``instruction``
        and ``env_id`` lists, ``task_points`` (B, 6) float32 (target xyz, goal xyz; `task_points`),
        and (B, H, W, 3) uint8 images of every other camera the envs observe (``wrist_pixels``)."""
        rows = []
        for seed in map(int, seeds):
            k, obs, info = self._reset(seed)
            rows.append((obs, info["task_description"], self.envs[k].unwrapped.task_points(), self.env_ids[k]))
        return _stack(rows)

    def render_questions(self, seeds: Iterable[int], n_items: int) -> dict:
        """`n_items` grounding questions, every question of each scene in turn (`questions()`:
        each object named, Place also each plate; 3-4 per scene) from one render of it, taking
        scenes from `seeds` in order until `n_items` are made. Same keys as `render`; an image
        appears once per question about it."""
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        rows: list = []
        for seed in map(int, seeds):
            k, obs, _ = self._reset(seed)
            for instruction, points in self.envs[k].unwrapped.questions():
                rows.append((obs, instruction, points, self.env_ids[k]))
            if len(rows) >= n_items:
                return _stack(rows[:n_items])
        raise ValueError(f"the seeds gave {len(rows)} questions, fewer than the {n_items} asked for")

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


def _stack(rows: list) -> dict:
    """`render`'s batch from rows of (observation, instruction, task points, env id)."""
    out = {
        "pixels": np.stack([r[0]["pixels"] for r in rows]),
        "agent_pos": np.stack([r[0]["agent_pos"] for r in rows]),
        "task_points": np.stack([r[2] for r in rows]).astype(np.float32),
        "instruction": [r[1] for r in rows],
        "env_id": [r[3] for r in rows],
    }
    cameras = [k for k, v in rows[0][0].items() if k not in out and np.ndim(v) == 3 and np.asarray(v).dtype == np.uint8]
    for camera in cameras:  # every row's env observes them: one renderer makes its envs alike
        out[camera] = np.stack([r[0][camera] for r in rows])
    return out


class SceneRendererProcess:
    """A `SceneRenderer` in a helper process of its own (``python -m sim_envs.scenes``, started with
    fork + exec): rendering then works in any process, including a daemonic DataLoader worker
    forked from a process that already holds a GL context (a forked EGL context hangs). Same
    `render` / `render_questions` / `close` API; requests and scenes travel as pickles over the helper's stdin/stdout
    (about 25 MB for 512 scenes at 128 px)."""

    def __init__(self, env_ids: Sequence[str], env_kwargs: dict | None = None, random_gripper: bool = True):
        import json
        import subprocess
        import sys

        args = json.dumps({"env_ids": list(env_ids), "env_kwargs": env_kwargs, "random_gripper": random_gripper})
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sim_envs.scenes", args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._check(self._receive())  # the envs are built (or the error why not)

    def _receive(self):
        import pickle

        try:
            return pickle.load(self._proc.stdout)
        except EOFError:
            code = self._proc.wait()
            raise RuntimeError(f"the scene renderer process exited (code {code}); its stderr says why") from None

    @staticmethod
    def _check(reply):
        status, value = reply
        if status != "ok":
            raise RuntimeError(f"the scene renderer process failed:\n{value}")
        return value

    def _call(self, request: tuple):
        import pickle

        pickle.dump(request, self._proc.stdin)
        self._proc.stdin.flush()
        return self._check(self._receive())

    def render(self, seeds: Iterable[int]) -> dict:
        return self._call(("render", [int(s) for s in seeds]))

    def render_questions(self, seeds: Iterable[int], n_items: int) -> dict:
        return self._call(("render_questions", [int(s) for s in seeds], int(n_items)))

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except Exception:
                self._proc.kill()
        self._proc.stdout.close()


def _serve(args_json: str) -> None:
    """The helper process of `SceneRendererProcess`: build the renderer, then answer each pickled
    request (method name, arguments...) on stdin with ("ok", scenes) or ("error", traceback) on
    stdout until stdin ends."""
    import json
    import os
    import pickle
    import sys
    import traceback

    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # stray prints must not corrupt the pickle stream
    os.dup2(sys.stderr.fileno(), 1)

    def reply(status, value) -> None:
        pickle.dump((status, value), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()

    try:
        args = json.loads(args_json)
        renderer = SceneRenderer(args["env_ids"], args["env_kwargs"], args["random_gripper"])
    except Exception:
        reply("error", traceback.format_exc())
        return
    reply("ok", None)
    try:
        while True:
            try:
                method, *call_args = pickle.load(sys.stdin.buffer)
            except EOFError:
                return
            try:
                if method not in ("render", "render_questions"):
                    raise ValueError(f"unknown request {method!r}")
                reply("ok", getattr(renderer, method)(*call_args))
            except Exception:
                reply("error", traceback.format_exc())
    finally:
        renderer.close()


if __name__ == "__main__":
    import sys

    _serve(sys.argv[1])
