import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ee_vla.action_tokenizer import ActionStats, ActionTokenizer

STATS = ActionStats(
    q01=[-0.5, -1.0, 0.0, -2.0, -0.1, -3.0, -1.0], q99=[0.5, 2.0, 0.3, 2.0, 0.1, 3.0, 1.0], mask=[True] * 6 + [False]
)


def _in_range_actions(n: int) -> st.SearchStrategy:
    lo, hi = np.array(STATS.q01), np.array(STATS.q99)
    unit = arrays(np.float64, (n, 7), elements=st.floats(0.0, 1.0))
    return unit.map(lambda u: lo + u * (hi - lo))


@pytest.mark.parametrize("reverse", [False, True])
@settings(max_examples=60, deadline=None)
@given(actions=_in_range_actions(5))
def test_round_trip_error_is_at_most_half_a_bin(actions, reverse):
    tok = ActionTokenizer(STATS, first_token_id=1000, reverse=reverse)
    tokens = tok.encode(actions)
    assert tokens.min() >= 1000 and tokens.max() <= 1255
    back = tok.decode(tokens)
    span = np.where(STATS.mask, np.array(STATS.q99) - np.array(STATS.q01), 2.0)
    half_bin_physical = tok.bin_width / 2 * span / 2
    assert np.all(np.abs(back - actions) <= half_bin_physical + 1e-6)


def test_openvla_layout_matches_reference_formula():
    """token = vocab_size - digitize(a_n, bins); decode idx = clip(vocab_size - token - 1, 0, 254)."""
    vocab = 32000
    stats = ActionStats(q01=[-1.0] * 7, q99=[1.0] * 7, mask=[True] * 7)
    tok = ActionTokenizer.openvla(stats, vocab_size=vocab)
    a = np.linspace(-1, 1, 7 * 40).reshape(40, 7)
    bins = np.linspace(-1, 1, 256)
    a_n = np.clip(2 * (a + 1) / (2 + 1e-8) - 1, -1, 1)
    ref_tokens = vocab - np.digitize(a_n, bins)
    np.testing.assert_array_equal(tok.encode(a), ref_tokens)
    centers = (bins[:-1] + bins[1:]) / 2
    ref_norm = centers[np.clip(vocab - ref_tokens - 1, 0, 254)]
    ref = 0.5 * (ref_norm + 1) * (2 + 1e-8) - 1
    np.testing.assert_allclose(tok.decode(ref_tokens), ref)
    assert tok.first_token_id == vocab - 256 and tok.last_token_id == vocab - 1


def test_unnormalised_dims_are_clipped_and_constant_dims_map_to_zero():
    stats = ActionStats(q01=[0.0, 3.0], q99=[1.0, 3.0], mask=[False, True])
    tok = ActionTokenizer(stats, first_token_id=0)
    np.testing.assert_allclose(tok.normalize(np.array([[5.0, 3.0], [-5.0, 3.0]])), [[1.0, 0.0], [-1.0, 0.0]])


def test_chunk_order_is_step_major():
    tok = ActionTokenizer(STATS, first_token_id=0)
    chunk = np.stack([np.array(STATS.q01), np.array(STATS.q99), np.zeros(7)])  # (3, 7)
    flat = tok.encode_chunk(chunk[None])
    assert flat.shape == (1, 21)
    np.testing.assert_array_equal(flat[0, 7:14], tok.encode(chunk[1]))
    assert tok.decode_chunk(flat).shape == (1, 3, 7)


def test_stats_from_actions_and_save_load(tmp_path):
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(1000, 7))
    stats = ActionStats.from_actions(acts, mask=[True] * 6 + [False])
    assert np.allclose(stats.q01, np.quantile(acts, 0.01, axis=0))
    stats.save(tmp_path / "s.json")
    assert ActionStats.load(tmp_path / "s.json") == stats


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((2, 7), np.nan), "NaN"),
        (np.array([[np.inf] * 7]), "NaN or inf"),
        (np.zeros((2, 6)), "last dimension 7"),
    ],
)
def test_rejects_bad_actions(bad, match):
    with pytest.raises(ValueError, match=match):
        ActionTokenizer(STATS, first_token_id=0).encode(bad)


def test_rejects_bad_stats_and_token_shapes():
    with pytest.raises(ValueError, match="q99"):
        ActionStats(q01=[0.0, 0.0], q99=[1.0], mask=[True, True])
    with pytest.raises(ValueError, match="q99 < q01"):
        ActionStats(q01=[1.0], q99=[0.0], mask=[True])
    with pytest.raises(ValueError, match="NaN"):
        ActionStats.from_actions(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="multiple of action_dim"):
        ActionTokenizer(STATS, first_token_id=0).decode_chunk(np.zeros(10, dtype=int))
