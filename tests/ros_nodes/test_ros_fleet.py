"""One policy serving many robots (`ros_nodes.fleet`), its DDS server (`serve --namespaces`) and its
benchmark (`ros_nodes.bench_fleet`), on the CPU with the tiny random model.

Batches are formed deterministically where their composition matters: the robots' calls are
submitted first, and the fleet's decode thread is started once they are all pending. Nothing is
asserted about time.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from domains import claim_domain_id
from ros_fakes import wait_until

from ee_vla.decoding.core import NonFiniteLogitsError
from ee_vla.policy import ObservationError, VLAPolicy
from ros_nodes.fleet import FleetClosed, FleetConfig, FleetPolicy, padded_sizes

INSTRUCTIONS = ["pick up the red cube", "open the drawer", "push the button to the left", "stack the blocks"]


def observations(n: int, seed: int = 0, size: int = 64) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"pixels": rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "instruction": INSTRUCTIONS[i % 4]}
        for i in range(n)
    ]


def tokens_of(stream) -> np.ndarray:
    return np.concatenate([np.asarray(sa.tokens) for sa in stream])


def alone(tiny_vla_dir, decoder: str, episodes: list[list[dict]], **kw) -> list[list[np.ndarray]]:
    """Each robot's episode decoded by a policy of its own (reset, then its calls in order)."""
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder=decoder, device="cpu", **kw)
    out = []
    for calls in episodes:
        policy.reset()
        out.append([tokens_of(policy.stream_action_chunk(o)) for o in calls])
    return out


def robot_values(model_dir, **kw) -> dict:
    """A robot's policy parameters for the runner and node tests: the tiny model, array commands, an
    instruction, and timeouts long enough that a slow CI machine never trips them."""
    return dict(
        model_path=str(model_dir),
        instruction="pick up the cube",
        command_type="array",
        image_timeout_s=1000.0,
        decode_deadline_s=1000.0,
        decode_nice=0,
        **kw,
    )


def batched_round(fleet: FleetPolicy, robots, obs: list[dict]) -> list:
    """One call per robot, all pending before the decode thread takes them (one batch when they fit)."""
    results: list = [None] * len(robots)

    def call(i: int) -> None:
        try:
            results[i] = tokens_of(robots[i].stream_action_chunk(obs[i]))
        except Exception as e:  # noqa: BLE001 - returned to the test
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(robots))]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(fleet._pending) == len(robots))
    fleet.start()
    for t in threads:
        t.join(120)
    fleet._stop.set()  # the next round starts the thread again, once its calls are pending
    if fleet._thread is not None:
        fleet._thread.join(10)
    fleet._thread = None
    fleet._stop.clear()
    return results


@pytest.mark.parametrize("decoder", ["ar", "jacobi", "ceed"])
def test_batched_rows_equal_each_robot_decoded_alone(tiny_vla_dir, decoder):
    """Different instructions and images per robot, two calls each (the second warm-started from
    the robot's own first chunk): every robot gets exactly the tokens its own policy decodes."""
    n = 4
    first, second = observations(n, 1), observations(n, 2)
    ref = alone(tiny_vla_dir, decoder, [[first[i], second[i]] for i in range(n)])
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder=decoder, device="cpu")
    fleet = FleetPolicy(policy, FleetConfig(gather_s=1.0, max_batch=8), start=False)
    robots = [fleet.robot(f"robot{i}") for i in range(n)]
    try:
        got1 = batched_round(fleet, robots, first)
        got2 = batched_round(fleet, robots, second)
    finally:
        fleet.close()
    for i in range(n):
        assert np.array_equal(got1[i], ref[i][0]), f"robot{i}, first call"
        assert np.array_equal(got2[i], ref[i][1]), f"robot{i}, second call"
    assert fleet.batch_sizes == {n: 2}
    assert fleet.padded_rows == 0  # the eager engine takes any batch size


def test_two_camera_observations_batch_as_each_robot_decoded_alone(two_camera_vla_dir):
    """A policy that reads two cameras: each robot's call carries both images, the batch stacks
    each camera's, and every robot gets the tokens its own policy decodes; calls whose wrist images
    differ in size go into separate batches."""
    rng = np.random.default_rng(5)
    obs = [dict(o, wrist_pixels=rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for o in observations(3, 4)]
    obs[2]["wrist_pixels"] = obs[2]["wrist_pixels"][:32]
    ref = alone(two_camera_vla_dir, "ar", [[o] for o in obs])
    policy = VLAPolicy.from_pretrained(two_camera_vla_dir, decoder="ar", device="cpu")
    fleet = FleetPolicy(policy, FleetConfig(gather_s=1.0, max_batch=4), start=False)
    assert fleet.cameras == ("pixels", "wrist_pixels")
    fleet.warm_up()  # a blank image of each camera
    robots = [fleet.robot(f"r{i}") for i in range(3)]
    try:
        got = batched_round(fleet, robots, obs)
    finally:
        fleet.close()
    for i in range(3):
        assert np.array_equal(got[i], ref[i][0]), f"r{i}"
    assert fleet.batch_sizes == {2: 1, 1: 1}


def test_static_engine_pads_batches_to_fixed_sizes(tiny_vla_dir):
    """3 robots on the static engine: one batch padded to 4 rows, the tokens those of each alone."""
    obs = observations(3, 3)
    ref = alone(tiny_vla_dir, "jacobi", [[o] for o in obs])
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="jacobi", device="cpu", engine="static")
    fleet = FleetPolicy(policy, FleetConfig(gather_s=1.0, max_batch=4), start=False)
    assert fleet.padding == "pow2" and fleet.sizes == [1, 2, 4]
    robots = [fleet.robot(f"r{i}") for i in range(3)]
    try:
        got = batched_round(fleet, robots, obs)
    finally:
        fleet.close()
    for i in range(3):
        assert np.array_equal(got[i], ref[i][0])
    assert fleet.batch_sizes == {3: 1} and fleet.padded_rows == 1
    assert set(policy.engine_pool.engines) == {4}


def test_step4_padding_keeps_an_engine_per_size():
    """step4 pads 9 rows to 12, and the engine pool keeps every padded size's engine."""
    policy = SimpleNamespace(engine_pool=SimpleNamespace(max_engines=4))
    fleet = FleetPolicy(policy, FleetConfig(max_batch=16, padding="step4"), start=False)
    assert fleet.sizes == [1, 2, 4, 8, 12, 16]
    assert policy.engine_pool.max_engines == 6
    assert [fleet.padded_size(b) for b in (1, 3, 5, 9, 13, 16)] == [1, 4, 8, 12, 16, 16]


def test_padded_sizes():
    assert padded_sizes(1) == [1]
    assert padded_sizes(16) == [1, 2, 4, 8, 16]
    assert padded_sizes(24) == [1, 2, 4, 8, 16, 24]
    assert padded_sizes(16, "step4") == [1, 2, 4, 8, 12, 16]
    assert padded_sizes(3, "step4") == [1, 2, 3]
    assert padded_sizes(10, "step4") == [1, 2, 4, 8, 10]
    with pytest.raises(ValueError, match="pow2|step4"):
        padded_sizes(8, "none")


def test_warm_start_state_is_per_robot(tiny_vla_dir):
    """Each robot keeps its own previous chunk; reset() forgets only its own."""
    obs = observations(2, 4)
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ceed", device="cpu")
    fleet = FleetPolicy(policy, FleetConfig(gather_s=1.0, max_batch=2), start=False)
    a, b = fleet.robot("a"), fleet.robot("b")
    try:
        got = batched_round(fleet, [a, b], obs)
        assert np.array_equal(a.warm_start_tokens[0].numpy(), got[0])
        assert np.array_equal(b.warm_start_tokens[0].numpy(), got[1])
        a.reset()
        assert a.warm_start_tokens is None
        assert np.array_equal(b.warm_start_tokens[0].numpy(), got[1])
        # the guess of the next batch: no guess (-1) for a, b's previous chunk for b
        seen = []
        real = policy.decode_states

        def spy(obs, deadline=None):
            w = policy.warm_start_tokens
            seen.append(None if w is None else w.clone())
            return real(obs, deadline)

        policy.decode_states = spy
        batched_round(fleet, [a, b], obs)
    finally:
        fleet.close()
    (w,) = seen
    assert (w[0] == -1).all() and w.shape == (2, a.warm_start_tokens.shape[1])
    assert not (w[1] == -1).any()


def test_each_robot_warm_start_is_shifted_by_its_own_shift(tiny_vla_dir):
    """Each row's warm guess is its robot's previous chunk shifted by that robot's warm_start_shift
    (None: the policy's n_action_steps)."""
    from ee_vla.decoding.guess import warm_guess

    obs = observations(2, 7)
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ceed", device="cpu")
    fleet = FleetPolicy(policy, FleetConfig(gather_s=1.0, max_batch=2), start=False)
    a, b = fleet.robot("a"), fleet.robot("b")
    seen = []
    real = policy._guess

    def spy(cfg, inputs, n, shift=None):
        guess = real(cfg, inputs, n, shift)
        seen.append((None if guess is None else guess.clone(), shift))
        return guess

    try:
        batched_round(fleet, [a, b], obs)
        prev_a, prev_b = a.warm_start_tokens.clone(), b.warm_start_tokens.clone()
        a.warm_start_shift, b.warm_start_shift = 1, None
        policy._guess = spy
        batched_round(fleet, [a, b], obs)
    finally:
        fleet.close()
    ((w, shift),), D = seen, policy.action_dim
    assert shift == (1, None)
    assert policy.warm_start_shift is None  # used by that batch only
    assert fleet.warm_up(sizes=[1]) and policy.warm_start_shift is None  # a later batch of another size decodes
    assert torch.equal(w[0], warm_guess(prev_a, 1 * D, D)[0])
    assert torch.equal(w[1], warm_guess(prev_b, policy.n_action_steps * D, D)[0])


def test_a_bad_observation_fails_only_its_robot(tiny_vla_dir):
    obs = observations(3, 5)
    ref = alone(tiny_vla_dir, "jacobi", [[obs[0]], [obs[2]]])
    bad = dict(obs[1], instruction="   ")
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="jacobi", device="cpu")
    fleet = FleetPolicy(policy, FleetConfig(gather_s=1.0, max_batch=4), start=False)
    robots = [fleet.robot(f"r{i}") for i in range(3)]
    try:
        got = batched_round(fleet, robots, [obs[0], bad, obs[2]])
    finally:
        fleet.close()
    assert isinstance(got[1], ObservationError) and "instruction" in str(got[1])
    assert np.array_equal(got[0], ref[0][0]) and np.array_equal(got[2], ref[1][0])
    assert fleet.batch_sizes == {2: 1} and fleet.split_batches == 0


class PoisonedPolicy(VLAPolicy):
    """Raises NonFiniteLogitsError for any batch holding the instruction "poison"."""

    def decode_states(self, obs, action_deadline=None):
        if "poison" in obs["instruction"]:
            rows = [i for i, s in enumerate(obs["instruction"]) if s == "poison"]
            raise NonFiniteLogitsError("the prefill", rows, [0])
        return super().decode_states(obs, action_deadline)


def test_a_row_that_fails_the_batch_fails_only_its_robot(tiny_vla_dir):
    """A batch that raises is decoded again row by row: only the failing row's robot gets the error."""
    obs = observations(3, 6)
    ref = alone(tiny_vla_dir, "jacobi", [[obs[0]], [obs[2]]])
    base = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="jacobi", device="cpu")
    policy = PoisonedPolicy(base.vla, base.config)
    fleet = FleetPolicy(policy, FleetConfig(gather_s=1.0, max_batch=4), start=False)
    robots = [fleet.robot(f"r{i}") for i in range(3)]
    try:
        got = batched_round(fleet, robots, [obs[0], dict(obs[1], instruction="poison"), obs[2]])
    finally:
        fleet.close()
    assert isinstance(got[1], NonFiniteLogitsError)
    assert np.array_equal(got[0], ref[0][0]) and np.array_equal(got[2], ref[1][0])
    assert fleet.split_batches == 1


class ScriptedPolicy:
    """A stand-in for VLAPolicy's decode loop: yields the given per-row final counts, and records
    the batch's action deadlines at each snapshot."""

    chunk_size, action_dim = 3, 2

    def __init__(self, finals: list[list[int]], after_snapshot=None):
        self.finals = finals
        self.after_snapshot = after_snapshot
        self.vla = SimpleNamespace(proprio_dim=0, action_tokenizer=SimpleNamespace(decode=lambda t: t * 1.0))
        self.warm_start_tokens = None
        self.engine_pool = None
        self.deadlines: list[list[float | None]] = []

    def validate(self, obs):  # VLAPolicy.validate's: one (B, H, W, 3) array per camera
        return [np.asarray(obs["pixels"])[None]], [obs["instruction"]], None

    def decode_states(self, obs, unit_deadline=None):
        B = len(obs["instruction"])
        tokens = torch.arange(B * 6).reshape(B, 6)
        for f in self.finals:
            self.deadlines.append([unit_deadline(j) if unit_deadline else None for j in range(3)])
            stats = SimpleNamespace(unit_exact=[[True] * 3] * B, unit_final_iteration=[[0] * 3] * B)
            yield SimpleNamespace(tokens=tokens, n_final=torch.tensor(f[:B]), stats=stats)
            if self.after_snapshot is not None:
                self.after_snapshot(len(self.deadlines))
        self.warm_start_tokens = tokens


def test_each_row_streams_as_its_own_tokens_become_final_and_the_earliest_deadline_leads():
    """Row 0 has all 3 actions final after the first snapshot, row 1 one action: each robot gets
    what its row has, when its row has it. The batch's deadline of action j is the earliest among
    the rows still waiting for it."""
    got: dict[str, list] = {"a": [], "b": []}
    received_by_snapshot = []

    def after_snapshot(k: int) -> None:  # on the decode thread: the robots got their rows' actions
        assert wait_until(lambda: len(got["a"]) == 3 and len(got["b"]) == k)
        received_by_snapshot.append((len(got["a"]), len(got["b"])))

    T = time.perf_counter() + 1e6  # deadlines in the future
    policy = ScriptedPolicy([[6, 2], [6, 4], [6, 6]], after_snapshot)
    fleet = FleetPolicy(policy, FleetConfig(gather_s=1.0, max_batch=2), start=False)
    a, b = fleet.robot("a"), fleet.robot("b")

    def call(robot, deadline):
        for sa in robot.stream_action_chunk({"pixels": np.zeros((8, 8, 3), np.uint8), "instruction": "x"}, deadline):
            got[robot.name].append((sa.index, sa.tokens.tolist()))

    threads = [
        threading.Thread(target=call, args=(a, lambda j: T + 10.0 + j)),
        threading.Thread(target=call, args=(b, lambda j: T + 5.0 + j)),
    ]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(fleet._pending) == 2)
    fleet.start()
    for t in threads:
        t.join(30)
    fleet.close()
    assert got["a"] == [(0, [0, 1]), (1, [2, 3]), (2, [4, 5])]
    assert got["b"] == [(0, [6, 7]), (1, [8, 9]), (2, [10, 11])]
    # a had its three actions after the first snapshot, b one more per snapshot
    assert received_by_snapshot == [(3, 1), (3, 2), (3, 3)]
    # before any snapshot both rows wait for every action: b's deadlines (earlier) lead;
    # after it, a has all its actions and b's lead still; neither is ever later than b's own
    assert policy.deadlines[0] == [T + 5.0, T + 6.0, T + 7.0]
    assert policy.deadlines[1] == [None, T + 6.0, T + 7.0]
    assert policy.deadlines[2] == [None, None, T + 7.0]
    assert a.warm_start_tokens[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert b.warm_start_tokens[0].tolist() == [6, 7, 8, 9, 10, 11]


def test_a_row_already_late_at_the_batch_start_sets_no_deadline():
    """A robot whose first action's deadline passed while its call waited cannot be on time: it
    does not force the other rows' actions out early (they keep their own deadlines)."""
    policy = ScriptedPolicy([[6, 6]])
    fleet = FleetPolicy(policy, FleetConfig(gather_s=1.0, max_batch=2), start=False)
    late, on_time = fleet.robot("late"), fleet.robot("on_time")
    past = time.perf_counter() - 100.0
    obs = {"pixels": np.zeros((8, 8, 3), np.uint8), "instruction": "x"}
    threads = [
        threading.Thread(target=lambda: list(late.stream_action_chunk(obs, lambda j: past + j))),
        threading.Thread(target=lambda: list(on_time.stream_action_chunk(obs, lambda j: 1e12 + j))),
    ]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(fleet._pending) == 2)
    fleet.start()
    for t in threads:
        t.join(30)
    fleet.close()
    assert policy.deadlines == [[1e12, 1e12 + 1, 1e12 + 2]]


def test_a_closed_fleet_fails_waiting_and_new_calls():
    policy = ScriptedPolicy([[6]])
    fleet = FleetPolicy(policy, FleetConfig(gather_s=0.0, max_batch=2), start=False)
    r = fleet.robot("r")
    errors = []

    def call():
        try:
            list(r.stream_action_chunk({"pixels": np.zeros((8, 8, 3), np.uint8), "instruction": "x"}))
        except FleetClosed as e:
            errors.append(e)

    t = threading.Thread(target=call)
    t.start()
    assert wait_until(lambda: len(fleet._pending) == 1)
    fleet.close()
    t.join(30)
    assert len(errors) == 1
    with pytest.raises(FleetClosed):
        list(r.stream_action_chunk({"pixels": np.zeros((8, 8, 3), np.uint8), "instruction": "x"}))
    with pytest.raises(ValueError, match="already attached"):
        fleet.robot("r")


@pytest.mark.parametrize(
    "kw, match",
    [(dict(gather_s=-1), "gather_s"), (dict(max_batch=0), "max_batch"), (dict(padding="pad"), "padding")],
)
def test_fleet_config_is_validated(kw, match):
    with pytest.raises(ValueError, match=match):
        FleetConfig(**kw)


def test_runners_share_one_fleet_and_count_their_own_bad_inputs(tiny_vla_dir):
    """PolicyRunners of three robots over one fleet (threaded, as served): each decodes its own
    images into chunks; one robot's rejected observation is a bad input of its runner only."""
    from ros_nodes.params import PolicyParams
    from ros_nodes.runner import PolicyRunner

    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ceed", device="cpu")
    fleet = FleetPolicy(policy, FleetConfig(gather_s=0.01, max_batch=4))
    params = PolicyParams(**robot_values(tiny_vla_dir, policy_process=False))
    runners = {ns: PolicyRunner(params, lambda _p, ns=ns: fleet.robot(ns)) for ns in ("r0", "r1", "r2")}
    try:
        for r in runners.values():
            r.configure()
            r.activate()
        obs = observations(3, 7)
        assert runners["r1"].on_instruction("pick " * 300)  # accepted by the runner, over the policy's token cap
        for i, r in enumerate(runners.values()):
            r.on_image(obs[i]["pixels"])
        assert runners["r0"].wait_for_chunks(1, 120) and runners["r2"].wait_for_chunks(1, 120)
        assert wait_until(lambda: runners["r1"].bad_inputs() >= 1, 120)
    finally:
        for r in runners.values():
            r.shutdown()
        fleet.close()
    assert runners["r1"].chunks_done == 0 and runners["r1"].model_errors == 0
    assert "tokens long" in runners["r1"].last_bad_input
    assert runners["r0"].bad_inputs() == 0 and runners["r2"].bad_inputs() == 0
    assert runners["r0"].model_errors == 0 and runners["r2"].model_errors == 0
    assert fleet.robots == []  # cleanup detached every robot


def test_namespaces_resolve_like_ros2_and_are_validated():
    from ros_nodes.serve import ServeConfig, namespaced

    assert namespaced("camera/image_raw", "robot1") == "/robot1/camera/image_raw"
    assert namespaced("/diagnostics", "robot1") == "/diagnostics"
    cfg = ServeConfig(model_path="m", namespaces=("/robot1/", "fleet/arm_2"), command_type="array")
    assert cfg.namespaces == ("robot1", "fleet/arm_2")
    p = cfg.robot_params("fleet/arm_2")
    assert p.image_topic == "/fleet/arm_2/camera/image_raw"
    assert p.wrist_image_topic == "/fleet/arm_2/wrist_camera/image_raw"
    assert p.instruction_topic == "/fleet/arm_2/instruction"
    assert p.resolved_command_topic == "/fleet/arm_2/forward_command_controller/commands"
    assert p.diagnostics_topic == "/diagnostics"
    assert cfg.fleet_config().max_batch == 2
    for bad in (("robot1", "robot1"), ("1robot",), ("",), ("robot 1",)):
        with pytest.raises(ValueError, match="namespace"):
            ServeConfig(model_path="m", namespaces=bad)
    with pytest.raises(ValueError, match="max_batch"):
        ServeConfig(model_path="m", namespaces=("a",), max_batch=-1)
    with pytest.raises(ValueError, match="gather_s"):
        ServeConfig(model_path="m", namespaces=("a",), batch_gather_s=5.0)


@pytest.mark.timeout(240)
def test_serve_namespaces_over_dds_loopback(tiny_vla_dir, tmp_path):
    """`python -m ros_nodes.serve --namespaces robot1 robot2` on loopback: each robot's images and
    instruction on its own topics give commands on its own command topic, each has its status on
    /diagnostics, and SIGINT ends with the statistics of both and of the fleet."""
    pytest.importorskip("cyclonedds")
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from ros_nodes.dds import msgs
    from ros_nodes.dds.transport import DdsGraph, loopback_config
    from ros_nodes.messages import build_image

    repo = Path(__file__).resolve().parents[2]
    domain = claim_domain_id()
    stats = tmp_path / "stats.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    server = subprocess.Popen(
        [
            sys.executable, "-m", "ros_nodes.serve", "--namespaces", "robot1", "robot2",
            "--model-path", str(tiny_vla_dir), "--loopback-only", "--domain-id", str(domain),
            "--command-type", "array", "--no-dry-run", "--control-hz", "20", "--threads", "1",
            "--decode-deadline-s", "30", "--image-timeout-s", "5", "--diagnostics-hz", "5",
            "--stats-path", str(stats),
        ],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    g = DdsGraph(domain, loopback_config(domain))
    commands: dict[str, list] = {"robot1": [], "robot2": [], "root": []}
    statuses: set[str] = set()
    try:
        for ns in ("robot1", "robot2"):
            g.reader(f"/{ns}/forward_command_controller/commands", msgs.Float64MultiArray, callback=commands[ns].append)
        g.reader("forward_command_controller/commands", msgs.Float64MultiArray, callback=commands["root"].append)
        g.reader("/diagnostics", msgs.DiagnosticArray, callback=lambda a: statuses.update(s.name for s in a.status))
        writers = {
            ns: (
                g.writer(f"/{ns}/camera/image_raw", msgs.Image, "sensor_data"),
                g.writer(f"{ns}/instruction", msgs.String),
            )
            for ns in ("robot1", "robot2")
        }
        images = {ns: build_image(msgs, o["pixels"], (0, 0)) for ns, o in zip(writers, observations(2, 8), strict=True)}
        said = {"robot1": "pick up the red cube", "robot2": "open the drawer"}
        wanted = {"/robot1/ee_vla: policy node", "/robot2/ee_vla: policy node", "ee_vla: fleet"}
        end = time.monotonic() + 180
        next_pub = 0.0
        while time.monotonic() < end and server.poll() is None:
            if time.monotonic() >= next_pub:
                for ns, (img, instr) in writers.items():
                    instr.write(msgs.String(data=said[ns]))
                    img.write(images[ns])
                next_pub = time.monotonic() + 0.05
            g.spin_once(0.01)
            if len(commands["robot1"]) >= 10 and len(commands["robot2"]) >= 10 and wanted <= statuses:
                break
        assert server.poll() is None, server.communicate(timeout=10)[1][-3000:]
        assert len(commands["robot1"]) >= 10 and len(commands["robot2"]) >= 10, commands
        assert wanted <= statuses, statuses
        server.send_signal(signal.SIGINT)
        _out, err = server.communicate(timeout=60)
        assert server.returncode == 0, err[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate(timeout=10)
        g.close()
    assert commands["root"] == []  # nothing at the root namespace
    assert all(len(c.data) == 7 for c in commands["robot1"] + commands["robot2"])
    result = json.loads(stats.read_text())
    for ns in ("robot1", "robot2"):
        assert int(result[ns]["chunks_done"]) >= 1
        assert result[ns]["model_errors"] == "0" and result[ns]["bad_inputs"] == "0"
        assert result[ns]["command_topic"] == f"/{ns}/forward_command_controller/commands"
    assert result["fleet"]["batches"] >= 1 and result["fleet"]["robots"] == 0  # detached at cleanup


@pytest.mark.timeout(300)
def test_bench_fleet_smoke(tmp_path):
    """The fleet benchmark on the CPU with the tiny model, a few robots for about 1 s per run: every
    field is reported (nothing asserted about speed), without mujoco, gymnasium or tyro."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "fleet.json"
    code = (
        "import sys\n"
        "from ros_nodes.bench_fleet import main\n"
        f"main(['--model', 'tiny', '--robots', '1', '3', '--duration-s', '1', '--settle-s', '0.3', '--threads', '1',"
        " '--keep-going', '--modes', 'batched', 'sequential', 'processes', '--process-max', '2',"
        f" '--out', {str(out)!r}])\n"
        "print('IMPORTED', [m for m in ('mujoco', 'gymnasium', 'tyro', 'sim_envs') if m in sys.modules])\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=280)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "IMPORTED []" in p.stdout
    assert "robots before the first miss" in p.stdout
    result = json.loads(out.read_text())
    runs = {(r["mode"], r["robots"]) for r in result["results"]}
    # processes: one robot per process, up to --process-max robots
    assert runs == {("batched", 1), ("batched", 3), ("sequential", 1), ("sequential", 3), ("processes", 1)}
    for r in result["results"]:
        assert r["model_errors"] == 0
        assert len(r["per_robot"]) == r["robots"]
        for key in ("deadline_misses", "chunks_dropped", "late_ticks", "first_action_ms", "commands_per_s_per_robot"):
            assert key in r
        assert r["chunks_done"] > 0 and r["batch_sizes"]
        if r["mode"] != "batched":
            assert set(r["batch_sizes"]) == {"1"}
    assert set(result["robots_before_first_miss"]) == {"batched", "sequential", "processes"}
    pytest.importorskip("matplotlib")
    assert out.with_suffix(".png").exists()


def test_bench_fleet_decoder_flags_reach_the_policy():
    """--decoder, --max-iterations and --guess-in-prefill set the benchmarked policy's decoder."""
    from ros_nodes.bench_fleet import load_policy, parse_args

    cfg = parse_args(["--model", "tiny", "--decoder", "ceed_cap", "--max-iterations", "1", "--guess-in-prefill"])
    dec = load_policy(cfg).decoder
    assert (dec.method, dec.max_iterations, dec.guess_in_prefill) == ("ceed", 1, True)
    assert load_policy(parse_args(["--model", "tiny"])).decoder.guess_in_prefill is False
    assert parse_args(["--batch-padding", "step4"]).batch_padding == "step4"  # serve's flag name


def real_rclpy_loaded() -> bool:
    import sys

    return "rclpy" in sys.modules and not hasattr(sys.modules["rclpy"], "graph")


@pytest.fixture()
def fake_ros():
    """The fake rclpy of ros_fakes (as in test_ros_node_fakes.py); None where ROS 2's own rclpy is
    loaded in this process (`make test-ros`): the test then runs itself in a process of its own."""
    import sys

    pytest.importorskip("cyclonedds")  # the fake rclpy's message classes are ros_nodes.dds.msgs'
    from ros_fakes import install_fake_ros, uninstall_fake_ros

    if real_rclpy_loaded():
        yield None
        return
    saved = {k: sys.modules[k] for k in ("rclpy",) if k in sys.modules}
    rclpy = install_fake_ros()
    rclpy.init()
    yield rclpy
    uninstall_fake_ros()
    sys.modules.update(saved)


def in_own_process(request) -> None:
    """Run this test alone in a fresh pytest process (where no real rclpy is imported)."""
    import subprocess
    import sys
    from pathlib import Path

    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:launch_testing", "-p", "no:launch_ros",
         "-p", "no:cacheprovider", f"{request.node.path}::{request.node.name}"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "1 passed" in p.stdout, p.stdout[-2000:]


@pytest.mark.timeout(300)
def test_rclpy_nodes_in_namespaces_share_one_fleet(fake_ros, tiny_vla_dir, tmp_path, request):
    """Two lifecycle nodes in /robot1 and /robot2 (what `policy_node --namespaces robot1 robot2`
    runs), on the fake rclpy: the first configure loads the one policy, both decode through it,
    each publishes its own commands and a status named with its namespace; a node asking for
    another model fails its configure; the last cleanup frees the policy."""
    if fake_ros is None:
        in_own_process(request)
        return
    from rclpy.parameter import Parameter

    from ros_nodes.fleet import SharedFleet
    from ros_nodes.policy_node import PolicyNode, fleet_nodes

    loads = []

    def load(params):
        loads.append(params.model_path)
        return VLAPolicy.from_pretrained(params.model_path, decoder=params.decoder, device="cpu")

    shared = SharedFleet(FleetConfig(gather_s=0.01, max_batch=2), load=load)
    values = robot_values(tiny_vla_dir, dry_run=False, max_hold_s=0.0)

    def node(ns: str, **kw):
        params = [Parameter(k, value=v) for k, v in {**values, **kw}.items()]
        return PolicyNode(policy_factory=shared.factory(ns), namespace=f"/{ns}", parameter_overrides=params)

    nodes = [node("robot1"), node("robot2")]
    try:
        for n in nodes:
            n.trigger_configure()
            n.trigger_activate()
        assert loads == [str(tiny_vla_dir)] and sorted(shared.fleet.robots) == ["robot1", "robot2"]
        other = node("robot3", model_path=str(tmp_path))  # another model: refused, the node stays up
        nodes.append(other)
        other.trigger_configure()
        assert other.runner is None and loads == [str(tiny_vla_dir)]
        obs = observations(2, 9)
        for n, o in zip(nodes[:2], obs, strict=True):
            n.runner.on_image(o["pixels"])
        for n in nodes[:2]:
            assert n.runner.wait_for_chunks(1, 120)
            tick, diag = [t.callback for t in n.timers if not t.destroyed]
            tick()
            diag()
        for n, name in zip(nodes[:2], ("/robot1/policy_node: policy", "/robot2/policy_node: policy"), strict=True):
            cmd, diag_pub = n.publishers[0], n.publishers[1]
            assert len(cmd.messages) == 1 and len(cmd.messages[0].data) == 7
            assert diag_pub.messages[-1].status[0].name == name
        for n in nodes[:2]:
            n.trigger_deactivate()
            n.trigger_cleanup()
        assert shared.fleet is None  # the last cleanup closed the fleet
    finally:
        for n in nodes:
            n.on_exit()
    made = fleet_nodes(["a", "b/c"], shared)
    assert [(n.get_namespace(), n.get_name()) for n in made] == [("/a", "policy_node"), ("/b/c", "policy_node")]
    assert made[0].status_name() == "/a/policy_node: policy"


@pytest.mark.timeout(240)
def test_rclpy_policy_node_namespaces_on_a_real_graph(tiny_vla_dir, tmp_path):
    """`python -m ros_nodes.policy_node --namespaces robot1 robot2` with ROS 2 (skipped without it):
    both lifecycle nodes autostart, each robot's images (sent over plain DDS) give commands on its
    own topic, each status carries its namespace, and SIGINT ends with both stop commands."""
    import importlib.util
    import shutil
    import signal

    if importlib.util.find_spec("rclpy") is None or shutil.which("ros2") is None:
        pytest.skip("needs ROS 2 (rclpy and the ros2 CLI): source a ROS 2 setup.bash or run `make test-ros`")
    pytest.importorskip("cyclonedds")
    from ros2_graph import Proc, new_domain_id, policy_node_argv, process_env

    from ros_nodes.dds import msgs
    from ros_nodes.dds.transport import DdsGraph, loopback_config
    from ros_nodes.messages import build_image

    domain = new_domain_id()
    argv = policy_node_argv(
        "policy_node",
        model_path=str(tiny_vla_dir),
        autostart=True,
        dry_run=False,
        command_type="array",
        instruction="pick up the cube",
        control_hz=20.0,
        decode_deadline_s=30.0,
        image_timeout_s=5.0,
        threads=1,
    )
    argv[3:3] = ["--namespaces", "robot1", "robot2"]  # before --ros-args
    node = Proc(argv, process_env(domain), tmp_path / "node.log")
    g = DdsGraph(domain, loopback_config(domain))
    commands: dict[str, list] = {"robot1": [], "robot2": []}
    names: set[str] = set()
    try:
        for ns in commands:
            g.reader(f"/{ns}/forward_command_controller/commands", msgs.Float64MultiArray, callback=commands[ns].append)
        g.reader("/diagnostics", msgs.DiagnosticArray, callback=lambda a: names.update(s.name for s in a.status))
        cams = {ns: g.writer(f"/{ns}/camera/image_raw", msgs.Image, "sensor_data") for ns in commands}
        images = {ns: build_image(msgs, o["pixels"], (0, 0)) for ns, o in zip(cams, observations(2, 10), strict=True)}
        wanted = {"/robot1/policy_node: policy", "/robot2/policy_node: policy"}
        end = time.monotonic() + 180
        while time.monotonic() < end and node.running():
            for ns, w in cams.items():
                w.write(images[ns])
            g.spin_once(0.05)
            if all(len(c) >= 10 for c in commands.values()) and wanted <= names:
                break
        assert all(len(c) >= 10 for c in commands.values()), (commands, node.log()[-3000:])
        assert wanted <= names, names
        n = {ns: len(c) for ns, c in commands.items()}
        node.signal(signal.SIGINT)
        assert node.wait(60) == 0, node.log()[-3000:]
        end = time.monotonic() + 10
        while time.monotonic() < end and not all(len(c) > n[ns] and not any(c[-1].data) for ns, c in commands.items()):
            g.spin_once(0.05)
    finally:
        node.close()
        g.close()
    for c in commands.values():
        assert not any(c[-1].data), "the last command of each robot is its stop command (zeros)"
