import numpy as np
import pytest
import torch

from ee_vla.decoding import DecodeConfig, NonFiniteLogitsError
from ee_vla.policy import ObservationError, PolicyConfig, TemporalEnsemble, VLAPolicy


def obs(batch: int | None = None, size: int = 64):
    rng = np.random.default_rng(0)
    if batch is None:
        return {"pixels": rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "instruction": "pick up the red cube"}
    return {
        "pixels": rng.integers(0, 255, (batch, size, size, 3), dtype=np.uint8),
        "instruction": [f"pick up object {i}" for i in range(batch)],
    }


@pytest.fixture()
def policy(tiny_vla_dir):
    return VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ar")


def test_decoders_agree_and_report_stats(policy):
    ar = policy.predict_action_chunk(obs())
    ar_iters = policy.last_stats.iterations
    policy.decoder = "jacobi"
    assert np.array_equal(policy.predict_action_chunk(obs()), ar)
    assert ar.shape == (3, 7) and ar_iters == 20
    assert policy.last_stats.iterations <= 20 and policy.last_stats.exact
    assert np.all(np.abs(ar[:, :6]) <= 1.0 + 1e-6)


def test_the_python_api_takes_the_decoder_names_the_cli_takes(tiny_vla_dir, policy):
    """`decoder=` takes what `--decoder` / `--compare` take, variants of a preset included; anything
    else is a ValueError naming what it got."""
    variant = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ceed_cap:max_iterations=1:guess_in_prefill=true")
    assert variant.decoder == DecodeConfig.preset("ceed_2pass")
    policy.decoder = "ceed:tau=2"
    assert policy.decoder.tau == 2 and policy.decoder.method == "ceed"
    assert PolicyConfig(decoder="jacobi:window=4").decoder.window == 4
    for bad, said in ((None, "got None"), (3, "got 3"), ("beam", "unknown decoder 'beam'"), ("ar:tau=1", "'ar:tau=1'")):
        with pytest.raises(ValueError, match=said):
            VLAPolicy.from_pretrained(tiny_vla_dir, decoder=bad)


def test_batched_decoding_matches_one_by_one(policy):
    policy.decoder = "jacobi"
    batch = obs(batch=3)
    chunks = policy.predict_action_chunk(batch)
    assert chunks.shape == (3, 3, 7)
    for i in range(3):
        single = {"pixels": batch["pixels"][i], "instruction": batch["instruction"][i]}
        np.testing.assert_allclose(policy.predict_action_chunk(single), chunks[i], atol=1e-12)


def test_stream_emits_every_action_in_order_and_equals_the_chunk(policy):
    chunk = policy.predict_action_chunk(obs())
    policy.decoder = DecodeConfig(method="jacobi")
    streamed = list(policy.stream_action_chunk(obs()))
    assert [a.index for a in streamed] == [0, 1, 2]
    assert all(a.exact for a in streamed) and streamed[0].t <= streamed[-1].t
    np.testing.assert_array_equal(np.stack([a.action for a in streamed]), chunk)


def test_select_action_is_a_queue_over_chunks(tiny_vla_dir):
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ar", n_action_steps=2)
    chunk = policy.predict_action_chunk(obs())
    policy.reset()
    first, second = policy.select_action(obs()), policy.select_action(obs())
    np.testing.assert_array_equal(np.stack([first, second]), chunk[:2])
    assert len(policy._queue) == 0  # the third call decodes a new chunk


def test_temporal_ensemble_weighs_each_chunks_plan_for_the_step_by_its_age():
    """Step t's action: the plans of the chunks decoded at t-2..t (chunks of 3) for step t, weight
    exp(-m i) for the i-th oldest; older chunks drop out, and `reset` forgets them all."""
    ens = TemporalEnsemble(m=0.5, chunk_size=3)
    chunks = [np.arange(3)[:, None] + 10.0 * k + np.zeros((3, 2)) for k in range(4)]  # chunk k, action i: 10k + i
    np.testing.assert_allclose(ens.add(chunks[0]), [0.0, 0.0])
    w = np.exp(-0.5 * np.arange(3))
    ens.add(chunks[1])
    np.testing.assert_allclose(ens.add(chunks[2]), [w @ np.array([2.0, 11.0, 20.0]) / w.sum()] * 2)
    np.testing.assert_allclose(ens.add(chunks[3]), [w @ np.array([12.0, 21.0, 30.0]) / w.sum()] * 2)  # chunk 0 gone
    ens.reset()
    np.testing.assert_allclose(ens.add(chunks[3]), [30.0, 30.0])
    newest = TemporalEnsemble(m=-1000.0, chunk_size=3)  # weights exp(1000 i): all on the newest chunk, finite
    for k in range(3):
        got = newest.add(chunks[k])
    np.testing.assert_allclose(got, [20.0, 20.0])
    with pytest.raises(ValueError, match=r"takes a \(3, action_dim\) chunk"):
        ens.add(np.zeros((2, 2)))


def test_select_action_with_temporal_ensembling_decodes_every_step(tiny_vla_dir, monkeypatch):
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ar", temporal_ensemble=0.0)
    assert policy.n_action_steps == 1
    chunks = iter([np.full((3, 7), 0.1), np.full((3, 7), 0.4), np.full((3, 7), 0.7)])
    monkeypatch.setattr(policy, "predict_action_chunk", lambda o: next(chunks))
    got = [policy.select_action(obs()) for _ in range(2)]
    np.testing.assert_allclose(got, [np.full(7, 0.1), np.full(7, 0.25)])
    policy.reset()
    np.testing.assert_allclose(policy.select_action(obs()), np.full(7, 0.7))
    with pytest.raises(ValueError, match="PolicyConfig.temporal_ensemble decodes a chunk at every step"):
        PolicyConfig(temporal_ensemble=0.01, n_action_steps=3)


def test_warm_start_changes_the_guess_not_the_exact_result(tiny_vla_dir):
    cold = VLAPolicy.from_pretrained(tiny_vla_dir, decoder=DecodeConfig(method="jacobi", init="repeat"))
    warm = VLAPolicy.from_pretrained(tiny_vla_dir, decoder=DecodeConfig(method="jacobi", init="warm"))
    for _ in range(2):
        a, b = cold.predict_action_chunk(obs()), warm.predict_action_chunk(obs())
        np.testing.assert_array_equal(a, b)


def test_warm_start_shift_sets_the_warm_guess_shift(tiny_vla_dir, monkeypatch):
    """None shifts the last chunk by n_action_steps; an integer by that many actions; bad values
    are refused. Exact Jacobi returns the same actions from any guess."""
    import ee_vla.policy as policy_module

    shifts = []
    real = policy_module.warm_guess
    monkeypatch.setattr(
        policy_module, "warm_guess", lambda prev, shift, unit: shifts.append(shift // unit) or real(prev, shift, unit)
    )
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder=DecodeConfig(method="jacobi", init="warm"))
    first = policy.predict_action_chunk(obs())  # no previous chunk: no warm guess
    policy.predict_action_chunk(obs())
    policy.warm_start_shift = 1
    again = policy.predict_action_chunk(obs())
    policy.warm_start_shift = 0
    policy.predict_action_chunk(obs())
    assert shifts == [policy.n_action_steps, 1, 0]
    np.testing.assert_array_equal(first, again)
    # one shift per row of a batch, None for the policy's own
    policy.warm_start_tokens = torch.stack([policy.warm_start_tokens[0]] * 2)
    policy.warm_start_shift = [2, None]
    shifts.clear()
    policy.predict_action_chunk(obs(2))
    assert shifts == [2, policy.n_action_steps]
    assert policy.warm_start_shift is None  # per-row values were that call's: the next call shifts by the default
    policy.predict_action_chunk(obs(2))
    assert shifts == [2, policy.n_action_steps, policy.n_action_steps]
    policy.warm_start_shift = [1, 1, 1]
    with pytest.raises(ValueError, match="warm_start_shift has 3 rows for a batch of 2"):
        policy.predict_action_chunk(obs(2))
    for bad in (-1, 1.5, True, "2", [1, -1]):
        with pytest.raises(ValueError, match="warm_start_shift must be None or an integer >= 0"):
            policy.warm_start_shift = bad


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"instruction": "x"}, "no 'pixels'"),
        ({"pixels": np.zeros((64, 64), np.uint8), "instruction": "x"}, "must be \\(H, W, 3\\)"),
        ({"pixels": np.zeros((64, 64, 3), np.float32), "instruction": "x"}, "uint8"),
        ({"pixels": np.zeros((64, 64, 3), np.uint8), "instruction": "   "}, "non-empty"),
        ({"pixels": np.zeros((64, 64, 3), np.uint8)}, "no 'instruction' \\(one string per image\\)"),
        ({"pixels": np.zeros((64, 64, 3), np.uint8), "instruction": None}, "no 'instruction'"),
        ({"pixels": np.zeros((64, 64, 3), np.uint8), "instruction": b"push"}, "a string, .* got bytes"),
        ({"pixels": np.zeros((64, 64, 3), np.uint8), "instruction": 5}, "a string, .* got int"),
        ({"pixels": np.zeros((64, 64, 3), np.uint8), "instruction": [5]}, "non-empty string, got 5"),
        ({"pixels": np.zeros((0, 64, 64, 3), np.uint8), "instruction": []}, "'pixels' is an empty batch"),
        ({"pixels": np.zeros((2, 64, 64, 3), np.uint8), "instruction": ["a"]}, "2 images, 1 instructions"),
        ({"pixels": np.zeros((64, 64, 3), np.uint8), "instruction": "x", "agent_pos": [np.nan]}, "NaN"),
        (
            {"pixels": np.zeros((64, 64, 3), np.uint8), "instruction": "x", "agent_pos": "abc"},
            "'agent_pos' must be numbers",
        ),
        ({"pixels": np.zeros((64, 64, 3), np.uint8), "instruction": "x", "agent_pos": [[1, 2], [3]]}, "'agent_pos'"),
        ("not a dict", "must be a dict"),
    ],
)
def test_bad_observations_get_clear_errors(policy, bad, match):
    with pytest.raises(ObservationError, match=match):
        policy.predict_action_chunk(bad)


def test_warm_start_tokens_must_be_action_token_ids_or_a_row_of_minus_one(policy):
    obs = {"pixels": np.zeros((64, 64, 3), np.uint8), "instruction": "pick up the cube"}
    chunk = policy.predict_action_chunk(obs)
    tokens = policy.warm_start_tokens
    n = tokens.shape[1]
    first = policy.vla.action_tokenizer.first_token_id
    for bad, match in [
        (torch.zeros(n, dtype=torch.long), r"must be \(B, \d+\), got \(\d+,\)"),
        (tokens.float(), "integer token ids, got torch.float32"),
        (torch.full((1, n), 10**9), "action token ids"),
        (torch.full((1, n), first - 1), "action token ids"),
        (torch.cat([tokens[:, :1] * 0 - 1, tokens[:, 1:]], dim=1), "or all -1"),  # -1 in part of a row
    ]:
        with pytest.raises(ValueError, match=match):
            policy.warm_start_tokens = bad
    policy.warm_start_tokens = tokens.tolist()  # a nested list is taken as a tensor
    assert torch.equal(policy.warm_start_tokens, tokens.cpu())
    policy.warm_start_tokens = torch.full((1, n), -1)  # no previous chunk: the default guess
    np.testing.assert_array_equal(policy.predict_action_chunk(obs), chunk)


@pytest.mark.parametrize(
    "instruction", [("pick up the cube",), np.array(["pick up the cube"]), np.str_("pick up the cube")]
)
def test_an_instruction_may_be_a_tuple_an_array_or_a_numpy_string(policy, instruction):
    obs = {"pixels": np.zeros((64, 64, 3), np.uint8), "instruction": instruction}
    expected = policy.predict_action_chunk({**obs, "instruction": "pick up the cube"})
    np.testing.assert_array_equal(policy.predict_action_chunk(obs), expected)


@pytest.mark.parametrize("decoder", ["ar", "jacobi", "ceed"])
def test_static_engine_policy_equals_eager(tiny_vla_dir, decoder):
    rng = np.random.default_rng(0)
    batch = {
        "pixels": rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8),
        "instruction": ["pick up the cube", "open"],
    }
    eager = VLAPolicy.from_pretrained(tiny_vla_dir, decoder=decoder, dtype="float64", engine="eager")
    static = VLAPolicy.from_pretrained(tiny_vla_dir, decoder=decoder, dtype="float64", engine="static")
    for _ in range(2):  # the second call starts from the warm guess
        assert np.array_equal(eager.predict_action_chunk(batch), static.predict_action_chunk(batch))


def test_compile_mode_reaches_the_engine(tiny_vla_dir):
    """`compile_mode` picks the compiled engine's torch.compile mode (aot_eager: traced, no code
    generation, cheap on a CPU); an unknown one is refused before the model loads."""
    rng = np.random.default_rng(0)
    batch = {"pixels": rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8), "instruction": ["go", "stop"]}
    eager = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="jacobi", dtype="float64")
    traced = VLAPolicy.from_pretrained(
        tiny_vla_dir, decoder="jacobi", dtype="float64", engine="compiled", compile_mode="aot_eager"
    )
    assert np.array_equal(eager.predict_action_chunk(batch), traced.predict_action_chunk(batch))
    assert traced.engine_pool.compile == "aot_eager" and traced.engine_pool.engines[2].compile == "aot_eager"
    assert eager.engine_pool is None
    with pytest.raises(ValueError, match="compile_mode"):
        VLAPolicy.from_pretrained(tiny_vla_dir, engine="compiled", compile_mode="fastest")


def test_long_instructions_are_refused_naming_length_and_limit(tiny_vla_dir):
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ar")
    huge = {**obs(), "instruction": "pick up the red cube " * 5000}  # 105 KB
    with pytest.raises(ObservationError, match=r"105000 characters long; at most 256 tokens \(8192 characters\)"):
        policy.predict_action_chunk(huge)
    long = {**obs(), "instruction": "zq" * 2000}  # 4000 characters: under the character bound
    with pytest.raises(ObservationError, match=r"'instruction' is \d+ tokens long, over the limit of 256"):
        policy.predict_action_chunk(long)
    tight = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ar", max_instruction_tokens=4)
    with pytest.raises(ObservationError, match=r"is 6 tokens long, over the limit of 4"):
        tight.predict_action_chunk({**obs(), "instruction": "Pick up the red cube."})
    assert VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ar", max_instruction_tokens=6).predict_action_chunk(
        {**obs(), "instruction": "Pick up the red cube."}
    ).shape == (3, 7)
    with pytest.raises(ValueError, match="max_instruction_tokens must be an int >= 1"):
        PolicyConfig(max_instruction_tokens=0)


def _broken(tiny_vla_dir, how: str) -> VLAPolicy:
    policy = VLAPolicy.from_pretrained(tiny_vla_dir, decoder="ceed")
    if how == "nan_weights":
        with torch.no_grad():
            policy.vla.model.lm_head.weight[5, 0] = float("nan")  # any weight: NaN spreads everywhere
            next(policy.vla.model.model.vision_tower.parameters()).fill_(float("nan"))
    else:  # a zero image std (loading refuses it; here it is set on a loaded model)
        policy.vla.image_std = (0.0, 0.0, 0.0)
    return policy


@pytest.mark.parametrize("how", ["nan_weights", "zero_image_std"])
def test_a_non_finite_network_raises_instead_of_acting(tiny_vla_dir, how):
    """argmax over NaN logits picks the first action token (a full-scale action): the policy must
    raise, from every entry point, and not publish anything."""
    policy = _broken(tiny_vla_dir, how)
    with pytest.raises(NonFiniteLogitsError, match="prefill: batch rows \\[0\\]"):
        policy.predict_action_chunk(obs())
    streamed = []
    with pytest.raises(NonFiniteLogitsError):
        for a in policy.stream_action_chunk(obs()):
            streamed.append(a)
    assert streamed == [] and policy.warm_start_tokens is None
    with pytest.raises(NonFiniteLogitsError, match="batch rows \\[0, 1\\]"):
        policy.predict_action_chunk(obs(batch=2))


def test_default_policy_path_is_the_shipped_model_from_any_directory(tmp_path, monkeypatch):
    import ee_vla
    from ee_vla.models import check_model_dir

    monkeypatch.chdir(tmp_path)
    assert ee_vla.DEFAULT_POLICY.is_absolute()
    assert check_model_dir(ee_vla.DEFAULT_POLICY) == ee_vla.DEFAULT_POLICY
