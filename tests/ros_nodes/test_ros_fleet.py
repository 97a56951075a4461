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


def wait_until(cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


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
    wait_until(lambda: len(fleet._pending) == len(robots))
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


def test_padded_sizes():
    assert padded_sizes(1) == [1]
    assert padded_sizes(16) == [1, 2, 4, 8, 16]
    assert padded_sizes(24) == [1, 2, 4, 8, 16, 24]


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
        real = policy._decode_states

        def spy(obs, deadline=None):
            w = policy.warm_start_tokens
            seen.append(None if w is None else w.clone())
            return real(obs, deadline)

        policy._decode_states = spy
        batched_round(fleet, [a, b], obs)
    finally:
        fleet.close()
    (w,) = seen
    assert (w[0] == -1).all() and w.shape == (2, a.warm_start_tokens.shape[1])
    assert not (w[1] == -1).any()


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

    def _decode_states(self, obs, action_deadline=None):
        if "poison" in obs["instruction"]:
            rows = [i for i, s in enumerate(obs["instruction"]) if s == "poison"]
            raise NonFiniteLogitsError("the prefill", rows, [0])
        return super()._decode_states(obs, action_deadline)


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

    def validate(self, obs):
        return np.asarray(obs["pixels"])[None], [obs["instruction"]], None

    def _decode_states(self, obs, unit_deadline=None):
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
        wait_until(lambda: len(got["a"]) == 3 and len(got["b"]) == k)
        received_by_snapshot.append((len(got["a"]), len(got["b"])))

    policy = ScriptedPolicy([[6, 2], [6, 4], [6, 6]], after_snapshot)
    fleet = FleetPolicy(policy, FleetConfig(gather_s=1.0, max_batch=2), start=False)
    a, b = fleet.robot("a"), fleet.robot("b")

    def call(robot, deadline):
        for sa in robot.stream_action_chunk({"pixels": np.zeros((8, 8, 3), np.uint8), "instruction": "x"}, deadline):
            got[robot.name].append((sa.index, sa.tokens.tolist()))

    threads = [
        threading.Thread(target=call, args=(a, lambda j: 10.0 + j)),
        threading.Thread(target=call, args=(b, lambda j: 5.0 + j)),
    ]
    for t in threads:
        t.start()
    wait_until(lambda: len(fleet._pending) == 2)
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
    assert policy.deadlines[0] == [5.0, 6.0, 7.0]
    assert policy.deadlines[1] == [None, 6.0, 7.0]
    assert policy.deadlines[2] == [None, None, 7.0]
    assert a.warm_start_tokens[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert b.warm_start_tokens[0].tolist() == [6, 7, 8, 9, 10, 11]


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
    wait_until(lambda: len(fleet._pending) == 1)
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
    params = PolicyParams(
        model_path=str(tiny_vla_dir),
        policy_process=False,
        instruction="pick up the cube",
        command_type="array",
        image_timeout_s=1000.0,
        decode_deadline_s=1000.0,
        decode_nice=0,
    )
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
        wait_until(lambda: runners["r1"].bad_inputs() >= 1, 120)
    finally:
        for r in runners.values():
            r.shutdown()
        fleet.close()
    assert runners["r1"].chunks_done == 0 and runners["r1"].model_errors == 0
    assert "tokens long" in runners["r1"].last_bad_input
    assert runners["r0"].bad_inputs() == 0 and runners["r2"].bad_inputs() == 0
    assert runners["r0"].model_errors == 0 and runners["r2"].model_errors == 0
    assert fleet.robots == []  # cleanup detached every robot
