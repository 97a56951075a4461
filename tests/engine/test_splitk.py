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


def _ss(h: torch.Tensor, tile: int) -> torch.Tensor:
    """Per-tile sums of squares of h's rows, as an ``ss_out`` epilogue stores them: (tiles, rows)."""
    return torch.stack([h[:, i : i + tile].float().pow(2).sum(1) for i in range(0, h.shape[1], tile)]).contiguous()


@pytest.mark.parametrize("split", [1, 3])
def test_epilogues_compute_a_decoder_layers_mlp(split):
    """The layer's second half by two products (RMS norm folded into an interleaved gate/up
    product, SiLU x up, the down product with the residual and the next norm's sums of squares)
    gives transformers' Llama MLP block; written in place over the residual, the same. Rows and
    columns the tiles do not divide, the sum split or not."""
    rows, hidden, inter, eps = 5, 96, 80, 1e-6
    g = torch.Generator().manual_seed(split)
    x, norm_w = torch.randn(rows, hidden, generator=g), 1 + 0.1 * torch.randn(hidden, generator=g)
    gate, up = (torch.randn(inter, hidden, generator=g) / hidden**0.5 for _ in range(2))
    down = torch.randn(hidden, inter, generator=g) / inter**0.5
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm_w
    act_ref = F.silu(h @ gate.T) * (h @ up.T)
    out_ref = x + act_ref @ down.T
    to = lambda t: t.to(DEVICE, DTYPE)  # noqa: E731
    plan = splitk.Plan(block_n=32, block_k=32, split_k=split, stages=2)
    gu = splitk.SplitK(rows, 2 * inter, hidden, DEVICE, plan, splitk.Epilogue(norm=True, swiglu=True, eps=eps))
    w_gu = splitk.interleave_gate_up(splitk.fold_norm(gate, norm_w), splitk.fold_norm(up, norm_w))
    act = gu(to(x), to(w_gu), ss_in=to(_ss(x, 40)).float())
    d = splitk.SplitK(rows, hidden, inter, DEVICE, plan, splitk.Epilogue(residual=True, ss_out=True))
    ss = torch.full((d.tiles, rows), float("nan"), device=DEVICE)
    out = d(act, to(down), residual=to(x), ss_out=ss)
    tol = 3e-2 if DTYPE == torch.bfloat16 else 1e-4
    assert act.shape == (rows, inter) and out.shape == (rows, hidden)
    assert (act.float().cpu() - act_ref).abs().max() <= tol * act_ref.abs().max()
    assert (out.float().cpu() - out_ref).abs().max() <= tol * out_ref.abs().max()
    assert torch.allclose(ss.cpu(), _ss(out.float().cpu(), 32), rtol=1e-4)  # the sums of the stored values
    inplace = to(x)
    d(act, to(down), inplace, residual=inplace, ss_out=ss)
    assert torch.equal(inplace, out)
    assert int(gu.counters.abs().sum()) == int(d.counters.abs().sum()) == 0


def test_a_norm_epilogue_scales_each_row_by_its_inputs_rms():
    """``norm`` alone (the q/k/v product): (x * rsqrt(mean x^2 + eps)) @ fold_norm(W, w).T, with
    the sums of squares given as one tile or several."""
    rows, k, n = 3, 64, 48
    g = torch.Generator().manual_seed(7)
    x, w, norm_w = torch.randn(rows, k, generator=g) * 3, torch.randn(n, k, generator=g) / 8, torch.rand(k, generator=g)
    ref = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm_w) @ w.T
    product = splitk.SplitK(rows, n, k, DEVICE, splitk.Plan(32, 32, 2, 2), splitk.Epilogue(norm=True, eps=1e-5))
    for tile in (k, 16):
        got = product(x.to(DEVICE, DTYPE), splitk.fold_norm(w, norm_w).to(DEVICE, DTYPE), ss_in=_ss(x, tile).to(DEVICE))
        tol = 3e-2 if DTYPE == torch.bfloat16 else 1e-4
        assert (got.float().cpu() - ref).abs().max() <= tol * ref.abs().max()


def test_wrong_epilogue_arguments_are_named():
    x, w = torch.randn(4, 64).to(DEVICE, DTYPE), torch.randn(32, 64).to(DEVICE, DTYPE)
    norm = splitk.SplitK(4, 32, 64, DEVICE, epilogue=splitk.Epilogue(norm=True))
    with pytest.raises(ValueError, match="ss_in is needed"):
        norm(x, w)
    with pytest.raises(ValueError, match="residual is not taken"):
        norm(x, w, ss_in=torch.ones(1, 4, device=DEVICE), residual=x[:, :32])
    with pytest.raises(ValueError, match=r"ss_in must be contiguous \(tiles, 4\)"):
        norm(x, w, ss_in=torch.ones(1, 3, device=DEVICE))
    with pytest.raises(ValueError, match="float32, got .* torch.float16"):
        norm(x, w, ss_in=torch.ones(1, 4, device=DEVICE, dtype=torch.float16))
    res = splitk.SplitK(4, 32, 64, DEVICE, epilogue=splitk.Epilogue(residual=True, ss_out=True))
    with pytest.raises(ValueError, match=r"ss_out must be \(1, 4\)"):
        res(x, w, residual=x[:, :32].contiguous(), ss_out=torch.ones(2, 4, device=DEVICE))
    with pytest.raises(ValueError, match="residual must be rows of out's shape"):
        res(x, w, residual=x[:, :32].double(), ss_out=torch.ones(1, 4, device=DEVICE))
    with pytest.raises(ValueError, match="SwiGLU epilogue takes an even"):
        splitk.SplitK(4, 33, 64, DEVICE, epilogue=splitk.Epilogue(swiglu=True))
    with pytest.raises(ValueError, match="needs pdl"):
        splitk.SplitK(4, 32, 64, DEVICE, prefetch=256)
    with pytest.raises(ValueError, match="gate and up weights differ"):
        splitk.interleave_gate_up(torch.ones(4, 8), torch.ones(3, 8))
    rows = splitk.interleave_gate_up(torch.zeros(2, 3), torch.ones(2, 3))[:, 0]
    assert torch.equal(rows, torch.tensor([0.0, 1, 0, 1]))


def test_the_plans_fit_hoppers_registers():
    """Each of `PLANS` compiled for sm_90 without a GPU (Triton's compiler, ptxas, cuobjdump) at 22
    rows, with the epilogue `layer_bench` gives its product and with programmatic dependent launch
    and a prefetch, spills at most a few values to local memory, as does the widest plan of
    `layer_bench.SWEEP_PLANS`: not the hundreds of bytes per thread of 256-element loop steps."""
    epilogues = {
        (12288, 4096): splitk.Epilogue(norm=True),
        (4096, 4096): splitk.Epilogue(residual=True, ss_out=True),
        (22016, 4096): splitk.Epilogue(norm=True, swiglu=True),
        (4096, 11008): splitk.Epilogue(residual=True, ss_out=True),
    }
    assert set(epilogues) == set(splitk.PLANS)
    from ee_vla.benchmarks import cubin

    calls = [f"resources({n}, {k}, 22, None, {e if pdl else None!r}, {pdl}, {512 if pdl else 0})"
             for (n, k), e in epilogues.items() for pdl in (False, True)]  # fmt: skip
    calls.append("resources(22016, 4096, 22, Plan(128, 128, 4, 5, 8), Epilogue(norm=True, swiglu=True), True)")
    calls.append("resources(4096, 4096, 22, Plan(block_k=256, split_k=2))")
    try:  # one child process without the interpreter compiles them all
        *found, spilling = cubin.in_child("ee_vla.benchmarks.splitk", f"[{', '.join(calls)}]", "the split-K plans")
    except (FileNotFoundError, NotImplementedError) as e:  # no NVIDIA tools, or an unknown compiler API
        pytest.skip(str(e))
    for call, r in zip(calls[:-1], found, strict=True):
        assert r["registers"] <= 255 and r["stack_bytes"] <= 64, (call, r)
    assert spilling["stack_bytes"] > 256
