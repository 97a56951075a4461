"""The split-K product for few rows (`ee_vla.benchmarks.splitk`, a candidate of `linear_bench`)
against `torch.nn.functional.linear`: on a GPU in bfloat16, or on the CPU in float32 through
Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET there)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from ee_vla.benchmarks import splitk  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


@settings(max_examples=12, deadline=None)
@given(
    rows=st.integers(1, splitk.MAX_ROWS),
    k=st.sampled_from([64, 96, 200, 256]),
    n=st.sampled_from([32, 64, 100, 192]),
    split=st.sampled_from([1, 2, 3, 4]),
    block_k=st.sampled_from([32, 64]),
)
def test_the_kernel_computes_the_product(rows, k, n, split, block_k):
    """Any rows up to MAX_ROWS, inner sizes that the slices do or do not divide, column counts that
    the tiles do or do not divide: F.linear's result up to rounding, the same bits on a second
    call (a fixed order of the slices' sum), and the counters back at zero."""
    g = torch.Generator().manual_seed(rows * 1000 + k + n)
    x = torch.randn(rows, k, generator=g).to(DEVICE, DTYPE)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(DEVICE, DTYPE)
    product = splitk.SplitK(rows, n, k, DEVICE, splitk.Plan(block_n=32, block_k=block_k, split_k=split, stages=2))
    got, again = product(x, w).clone(), product(x, w)
    ref = F.linear(x.float(), w.float())
    tol = 2e-2 if DTYPE == torch.bfloat16 else 1e-4
    assert got.shape == ref.shape and got.dtype == DTYPE
    assert (got.float() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item())
    assert torch.equal(got, again)
    assert int(product.counters.abs().sum()) == 0


def test_wrong_inputs_are_named():
    product = splitk.SplitK(4, 64, 128, DEVICE)
    x, w = torch.randn(4, 128).to(DEVICE, DTYPE), torch.randn(64, 128).to(DEVICE, DTYPE)
    with pytest.raises(ValueError, match=r"built for x \(4, 128\)"):
        product(x[:3], w)
    with pytest.raises(ValueError, match="one dtype"):
        product(x.double(), w)
    with pytest.raises(ValueError, match="1 .. 64 rows"):
        splitk.SplitK(splitk.MAX_ROWS + 1, 64, 128, DEVICE)


def test_plans():
    """A measured shape gets its table entry; another gets the fewest slices that make about
    TARGET_PROGRAMS programs, never more slices than loop steps; the sweep's plans are distinct."""
    assert splitk.plan(4096, 11008) == splitk.PLANS[(4096, 11008)]
    p = splitk.plan(2048, 8192)
    tiles = 2048 // p.block_n
    assert tiles * p.split_k >= splitk.TARGET_PROGRAMS > tiles * p.split_k // 2
    assert splitk.plan(64, 64).split_k == 1  # one loop step: no split
    assert len(splitk.SWEEP) == len(set(splitk.SWEEP)) >= 16
