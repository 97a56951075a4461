"""`ee-vla eval` of a policy that reads several cameras: the envs render every camera it reads, the
policy gets each camera's image, videos show them side by side, and an env that cannot render one
(or `--env-kwargs` that turn one off) is an error before any episode."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import tyro

import sim_envs
from ee_vla.evaluation import EvalConfig, EvalConfigError, evaluate
from ee_vla.evaluation.rollout import camera_env_kwargs, check_env_compatible, typed_env_kwargs, video_frame
from ee_vla.policy import VLAPolicy
from ee_vla.runtime import RuntimeConfig

REACH = "ee_vla/Reach-v0"
CAMERAS = ("pixels", "wrist_pixels")


def reach_cfg(policy, out: Path, **kw) -> EvalConfig:
    """A few 3-step episodes of the suite's Reach env (rendered by MuJoCo), AR, no warm-up call."""
    base = dict(
        policy=policy,
        env=[REACH],
        runtime=RuntimeConfig(decoder=kw.pop("decoder", "ar")),
        episodes=2,
        num_envs=2,
        seed=3,
        max_episode_steps=3,
        output_dir=out,
        env_modules=["sim_envs"],
        progress=False,
        print_summary=False,
        warmup=0,
    )
    return EvalConfig(**{**base, **kw})


@pytest.fixture
def policy_calls(monkeypatch) -> list[dict]:
    """Every observation batch `VLAPolicy.predict_action_chunk` is called with, copied."""
    calls: list[dict] = []
    real = VLAPolicy.predict_action_chunk

    def spy(self, obs):
        calls.append({k: np.array(v, copy=True) for k, v in obs.items()})
        return real(self, obs)

    monkeypatch.setattr(VLAPolicy, "predict_action_chunk", spy)
    return calls


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_a_two_camera_policy_gets_the_image_of_each_camera(
    two_camera_policy_dir, tmp_path, sim_env_id, policy_calls, vector
):
    """The envs are made with the gripper camera on and every policy call gets both cameras' images
    of every copy: the first call's are those the env renders at the episodes' seeds."""
    cfg = reach_cfg(two_camera_policy_dir, tmp_path, vector=vector)
    info = evaluate(cfg)
    assert [e["steps"] for e in info["per_episode"]] == [3, 3]
    assert info["policy"]["cameras"] == list(CAMERAS)
    assert json.loads((tmp_path / "eval_info.json").read_text())["policy"]["cameras"] == list(CAMERAS)
    assert policy_calls and all(set(CAMERAS) <= obs.keys() for obs in policy_calls)
    for obs in policy_calls:
        assert obs["wrist_pixels"].shape == obs["pixels"].shape == (len(obs["instruction"]), 64, 64, 3)
        assert not np.array_equal(obs["wrist_pixels"], obs["pixels"])  # another camera, not a copy
    env = gymnasium.make(REACH, image_size=64, wrist_camera=True)
    try:
        for row, seed in enumerate((cfg.seed, cfg.seed + 1)):
            obs, _ = env.reset(seed=seed)
            for camera in CAMERAS:
                assert np.array_equal(policy_calls[0][camera][row], obs[camera]), (camera, seed)
    finally:
        env.close()


def test_a_comparison_of_a_two_camera_policy_records_its_cameras(two_camera_policy_dir, tmp_path, sim_env_id):
    """Greedy Jacobi == AR with two cameras end to end, and compare.json names the cameras."""
    result = evaluate(reach_cfg(two_camera_policy_dir, tmp_path, compare=["ar", "jacobi"], num_envs=1))
    assert result["decoders"]["jacobi"]["episodes_identical_to_baseline"] == 2
    on_disk = json.loads((tmp_path / "compare.json").read_text())
    assert on_disk["policy"]["cameras"] == list(CAMERAS)
    assert json.loads((tmp_path / "jacobi" / "eval_info.json").read_text())["policy"]["cameras"] == list(CAMERAS)


def test_videos_show_the_cameras_side_by_side(tiny_policy_dir, two_camera_policy_dir, tmp_path, sim_env_id):
    import imageio.v3 as iio

    one = evaluate(reach_cfg(tiny_policy_dir, tmp_path / "one", videos=1, episodes=1, num_envs=1))
    two = evaluate(reach_cfg(two_camera_policy_dir, tmp_path / "two", videos=1, episodes=1, num_envs=1))
    assert one["policy"]["cameras"] == ["pixels"]
    frames_one, frames_two = iio.imread(one["video_paths"][0]), iio.imread(two["video_paths"][0])
    assert frames_one.shape[:3] == (4, 64, 64)  # the reset's observation and one per step
    assert frames_two.shape[:3] == (4, 64, 128)


def test_video_frames_put_cameras_of_other_sizes_at_one_height():
    rng = np.random.default_rng(0)
    front = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    wrist = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    alone = video_frame([front])
    assert np.array_equal(alone, front) and alone is not front
    frame = video_frame([front, wrist])
    assert frame.shape == (64, 64 + 96, 3)
    assert np.array_equal(frame[:, :64], front)
    assert np.array_equal(frame[::2, 64::2], wrist)  # doubled: each pixel a 2x2 block
    assert np.array_equal(frame[1::2, 65::2], wrist)


def test_an_env_without_a_camera_the_policy_reads_fails_before_the_model_loads(
    two_camera_policy_dir, tmp_path, monkeypatch
):
    """An env with no gripper camera: the error names the env and the camera, and comes from the
    registered env's signature (no env is made, no weights are read)."""
    import sim_envs  # noqa: F401  (registers the ids)

    def no_load(*args, **kwargs):
        raise AssertionError("the policy was loaded")

    monkeypatch.setattr(RuntimeConfig, "load_policy", no_load)
    cfg = reach_cfg(two_camera_policy_dir, tmp_path, env=[REACH, "test_ee_vla/OneCamera-v0"])
    with pytest.raises(EvalConfigError, match="'test_ee_vla/OneCamera-v0' cannot render.*no camera 'wrist_pixels'"):
        evaluate(cfg)
    assert not (tmp_path / "eval_info.json").exists()


@pytest.mark.parametrize("value", ["false", "False", False, 0, "off"])
def test_env_kwargs_that_turn_off_a_camera_the_policy_reads_are_an_error(
    two_camera_policy_dir, tmp_path, sim_env_id, value
):
    cfg = reach_cfg(two_camera_policy_dir, tmp_path, env_kwargs={"wrist_camera": value})
    with pytest.raises(EvalConfigError, match=f"Reach-v0.*wrist_camera {value} turns off the camera 'wrist_pixels'"):
        evaluate(cfg)


def test_camera_arguments_given_as_words_reach_the_env_as_bools(tmp_path, sim_env_id):
    cfg = reach_cfg(tmp_path / "m", tmp_path, env_kwargs={"wrist_camera": "true", "image_size": 32})
    assert camera_env_kwargs(REACH, cfg, CAMERAS) == {"wrist_camera": True, "image_size": 32}
    assert camera_env_kwargs(REACH, cfg, ("pixels",)) == {"wrist_camera": True, "image_size": 32}
    cfg.env_kwargs = {"wrist_camera": "false"}  # a one-camera policy may turn it off: False, not "false"
    assert camera_env_kwargs(REACH, cfg, ("pixels",)) == {"wrist_camera": False}
    cfg.env_kwargs = {}
    assert camera_env_kwargs(REACH, cfg, CAMERAS) == {"wrist_camera": True}
    assert camera_env_kwargs(REACH, cfg, ("pixels",)) == {}
    cfg.env_kwargs = {"wrist_camera": "sometimes"}
    with pytest.raises(EvalConfigError, match="Reach-v0.*--env-kwargs wrist_camera: expected true or .*'sometimes'"):
        camera_env_kwargs(REACH, cfg, CAMERAS)


def test_every_bool_env_argument_given_as_a_word_reaches_the_env_as_a_bool(tmp_path, sim_env_id):
    """tyro leaves `--env-kwargs NAME false` as the string "false" (truthy): each argument whose
    default is a bool is read as one; other arguments keep their value, a word included."""
    assert sim_envs.bool_arguments(REACH) == {"wrist_camera"}
    given = {"wrist_camera": " OFF", "camera": "top", "instructions": "held_out", "image_size": 32}
    assert typed_env_kwargs(REACH, given) == {**given, "wrist_camera": False}
    assert typed_env_kwargs(REACH, {"wrist_camera": 1}) == {"wrist_camera": True}
    with pytest.raises(EvalConfigError, match="Reach-v0.*wrist_camera: expected true or false.*got 2"):
        typed_env_kwargs(REACH, {"wrist_camera": 2})
    # parsed as tyro parses `ee-vla eval --env-kwargs wrist_camera false`: the env gets False
    args = ["--policy", str(tmp_path), "--env", REACH, "--env-kwargs", "wrist_camera", "false"]
    cfg = tyro.cli(EvalConfig, args=args)
    assert cfg.env_kwargs == {"wrist_camera": "false"}
    kwargs = camera_env_kwargs(REACH, cfg, ("pixels",))
    assert kwargs == {"wrist_camera": False}
    env = gymnasium.make(REACH, image_size=32, **kwargs)
    try:
        assert "wrist_pixels" not in env.reset(seed=0)[0]
    finally:
        env.close()


def test_the_env_argument_readers_name_an_unknown_env_id_alike():
    """`takes_argument`, `bool_arguments` and `unknown_arguments` read one constructor signature:
    an id that is not registered is the same error from each."""
    for read in (
        lambda e: sim_envs.takes_argument(e, "image_size"),
        sim_envs.bool_arguments,
        lambda e: sim_envs.unknown_arguments(e, ["image_size"]),
    ):
        with pytest.raises(ValueError, match="unknown env id 'ee_vla/Nope-v0'"):
            read("ee_vla/Nope-v0")
    assert sim_envs.takes_argument(REACH, "image_size") and not sim_envs.takes_argument(REACH, "size")
    assert sim_envs.unknown_arguments(REACH, ["image_size", "size"])[0] == ["size"]


class _NoWristEnv(gymnasium.Env):
    """Takes `wrist_camera` but observes only `pixels`: an env that does not keep its word."""

    metadata = {"render_modes": [], "render_fps": 10}

    def __init__(self, image_size: int = 64, wrist_camera: bool = False):
        self.observation_space = gymnasium.spaces.Dict(
            {"pixels": gymnasium.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)}
        )
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (7,), np.float32)


def test_the_observation_space_is_checked_for_every_camera(two_camera_policy_dir, tmp_path):
    env_id = "test_ee_vla/NoWrist-v0"
    if env_id not in gymnasium.registry:
        gymnasium.register(env_id, entry_point=_NoWristEnv, max_episode_steps=5)
    policy = VLAPolicy.from_pretrained(two_camera_policy_dir, decoder="ar")
    cfg = reach_cfg(two_camera_policy_dir, tmp_path, env=[env_id], env_modules=[])
    with pytest.raises(EvalConfigError, match="NoWrist-v0.*Dict with 'wrist_pixels' \\(the policy reads cameras"):
        check_env_compatible(env_id, policy, cfg)


def test_an_argument_the_env_does_not_take_is_named_before_any_env_is_made(monkeypatch):
    """`--env-kwargs observe_goal true` on an env without that argument: an EvalConfigError naming
    the env, the argument and the arguments it takes (it was a TypeError from inside gymnasium.make,
    reported as a bug). An env whose constructor takes **kwargs is given anything."""
    with pytest.raises(
        EvalConfigError, match=r"Reach-v0.*observe_goal: not an argument of this env \(it takes .*image_size"
    ):
        typed_env_kwargs(REACH, {"observe_goal": True, "image_size": 32})

    def open_env(render_mode=None, **kwargs):
        raise AssertionError("never made")

    monkeypatch.setitem(
        gymnasium.registry,
        "test/OpenKwargs-v0",
        gymnasium.envs.registration.EnvSpec("test/OpenKwargs-v0", entry_point=open_env),
    )
    assert typed_env_kwargs("test/OpenKwargs-v0", {"observe_goal": "x"}) == {"observe_goal": "x"}
