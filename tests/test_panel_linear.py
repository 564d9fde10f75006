"""The few-row fp32 dense kernel on panel-packed weights (``panel_linear``, ``dense.panel_pack``).

Against an fp64 reference on odd shapes (N and K off the panel width, row counts on both sides
of the register tile's 12 and 6 rows and of a row chunk), outputs poisoned (NaN where not
written), every activation of the epilogue; the tolerance is tied to ATen's own fp32 error on
the same product. A row's result must not depend on the batch it came in (bit for bit,
property-tested). The AVX2 kernels run in a subprocess (``CASCADE_RT_PANEL_ISA=avx2``) on a
CPU that has AVX-512, so both ISAs are checked wherever the tests run.
"""
from __future__ import annotations

import os
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_rt import dense as D
from cascade_rt import reference as R

if os.environ.get("CASCADE_RT_NO_NATIVE") == "1":
    pytest.skip("built with CASCADE_RT_NO_NATIVE=1", allow_module_level=True)

from test_native_ops import poisoned  # noqa: E402

# the kernels this process selected (AVX-512 by default; on a CPU without AVX-512 they are not
# offered unless CASCADE_RT_PANEL_ISA=avx2); test_panel_avx2.py runs the AVX2 ones anywhere
pytestmark = pytest.mark.skipif(D.panel_width() == 0, reason="panel kernels not offered on this CPU")

ACTS = ["none", "relu", "gelu", "gelu_tanh", "tanh"]
SHAPES = [(1, 1), (17, 7), (31, 40), (32, 40), (33, 129), (72, 40), (100, 72), (40, 1537)]
ROWS = [0, 1, 2, 5, 6, 7, 11, 12, 13, 25, 37, 130]


def _f64_act(y: torch.Tensor, act: str) -> torch.Tensor:
    if act == "tanh":
        return y.tanh()
    return R._linear_activation(y, act)


def _case(M, N, K, seed, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) * K ** -0.5
    b = torch.randn(N, generator=g) if bias else None
    return x, w, b


def _tolerance(x, w, b, act):
    """4x the fp32 error (against fp64) of the larger of ATen's product and an fp32 sum in the
    kernel's order (bias first, then k = 0, 1, ...), plus 2e-6 for the epilogue."""
    exact = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    if not exact.numel():
        return exact, 2e-6
    aten = torch.nn.functional.linear(x, w, b).double()
    seq = torch.zeros(x.shape[0], w.shape[0]) if b is None else b.expand(x.shape[0], -1).clone()
    for k in range(x.shape[1]):
        seq += x[:, k:k + 1] * w[:, k]
    err = max(float((aten - exact).abs().max()), float((seq.double() - exact).abs().max()))
    return exact, 4 * err + 2e-6


@pytest.mark.parametrize("M", ROWS)
@pytest.mark.parametrize("N,K", SHAPES, ids=str)
def test_panel_linear_matches_fp64(M, N, K):
    act = ACTS[(M + N) % len(ACTS)]
    x, w, b = _case(M, N, K, seed=M * 1000 + N + K, bias=(M + K) % 3 != 0)
    p = D.panel_pack(w)
    width = D.panel_width()
    assert tuple(p.shape) == ((N + width - 1) // width, K, width)
    assert torch.equal(D.panel_unpack(p, N), w)
    assert (p.permute(0, 2, 1).reshape(-1, K)[N:] == 0).all()  # zero past N
    with poisoned():
        got = torch.ops.cascade_rt.panel_linear(x, p, b, N, act)
    exact, atol = _tolerance(x, w, b, act)
    assert got.shape == (M, N) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _f64_act(exact, act), atol=atol, rtol=0)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "tanh"])
def test_epilogue_activations_within_fp32_error(act):
    """The epilogue's exp-based GELU/tanh on a dense grid: within 1e-6 absolute of fp64 (ATen's
    own fp32 GELU (erf) is off by up to 1.2e-6 on the same grid)."""
    x = torch.linspace(-12, 12, 60001).reshape(-1, 1)
    one = D.panel_pack(torch.ones(1, 1))
    got = torch.ops.cascade_rt.panel_linear(x, one, torch.zeros(1), 1, act)
    want = _f64_act(x.double(), act)
    assert float((got.double() - want).abs().max()) <= 1e-6
    assert torch.isfinite(torch.ops.cascade_rt.panel_linear(torch.tensor([[-1e30], [1e30], [-80.0], [80.0]]), one,
                                                            torch.zeros(1), 1, act)).all()


@settings(max_examples=25, deadline=None)
@given(M=st.integers(1, 40), N=st.integers(1, 70), K=st.integers(1, 50), row=st.integers(0, 39),
       act=st.sampled_from(ACTS), seed=st.integers(0, 2 ** 16))
def test_a_row_does_not_depend_on_its_batch(M, N, K, row, act, seed):
    row = row % M
    x, w, b = _case(M, N, K, seed)
    p = D.panel_pack(w)
    full = torch.ops.cascade_rt.panel_linear(x, p, b, N, act)
    alone = torch.ops.cascade_rt.panel_linear(x[row:row + 1], p, b, N, act)
    assert torch.equal(full[row], alone[0])
    rest = torch.ops.cascade_rt.panel_linear(x[row:], p, b, N, act)  # another tile position
    assert torch.equal(full[row:], rest)


def test_dense_takes_panel_weights():
    x, w, b = _case(9, 45, 33, seed=3)
    p = D.panel_pack(w)
    for act in ["none", "relu", "gelu", "gelu_tanh"]:
        want = D.dense_ref(x, w, b, act)
        torch.testing.assert_close(D.dense(x, p, b, act), want, atol=2e-5, rtol=0)
        torch.testing.assert_close(D.dense_ref(x, p, b, act), want, atol=0, rtol=0)
    with pytest.raises(ValueError, match="needs its bias"):
        D.dense(x, p, None)


def test_packing_by_dtype():
    assert D.packing("cpu", torch.float32) == "panel"
    assert D.packing("cpu", torch.bfloat16) != "panel"
    assert D.packing("cuda", torch.float32) == "plain"
    D.set_panel(False)
    try:
        assert D.packing("cpu", torch.float32) != "panel"
    finally:
        D.set_panel(True)
    with pytest.raises(ValueError, match="layout 'blocked'"):
        D.pack(torch.ones(2, 2), "blocked")


def test_bad_inputs_get_one_clear_error():
    x, w, b = _case(3, 20, 8, seed=5)
    p = D.panel_pack(w)
    op = torch.ops.cascade_rt.panel_linear
    with pytest.raises(ValueError, match="float32 CPU weight"):
        D.panel_pack(w.double())
    with pytest.raises(RuntimeError, match=r"x must be \(M, 8\) float32"):
        op(x[:, :7], p, b, 20)
    with pytest.raises(RuntimeError, match=r"x must be \(M, 8\) float32"):
        op(x.double(), p, b, 20)
    with pytest.raises(RuntimeError, match="out_features 40 does not match"):
        op(x, p, b, 40)
    with pytest.raises(RuntimeError, match=r"bias must be \(20,\)"):
        op(x, p, b[:5], 20)
    with pytest.raises(RuntimeError, match="activation 'swish'"):
        op(x, p, b, 20, "swish")
    with pytest.raises(RuntimeError, match="must come from panel_pack"):
        op(x, w, b, 20)


def test_exit_head_with_panel_weights_matches_reference():
    g = torch.Generator().manual_seed(8)
    H, C = 40, 3
    cls = torch.randn(13, H, generator=g)
    pw, pb = torch.randn(H, H, generator=g) / 6, torch.randn(H, generator=g)
    cw, cb = torch.randn(C, H, generator=g) / 6, torch.randn(C, generator=g)
    for act in ["tanh", "relu", "gelu", "gelu_tanh"]:
        with poisoned():
            got = torch.ops.cascade_rt.exit_head(cls, D.panel_pack(pw), pb, D.panel_pack(cw), cb, 0.6, act)
        want = R.exit_head_ref(cls, pw, pb, cw, cb, 0.6, act)
        for a, b_ in zip(got[:2], want[:2]):
            torch.testing.assert_close(a, b_, atol=2e-5, rtol=0)
        agree = got[2] == want[2]
        assert agree.all() or (want[1][~agree] - 0.6).abs().max() < 1e-5  # only ties at the threshold
    with pytest.raises(RuntimeError, match="must both be panels"):
        torch.ops.cascade_rt.exit_head(cls, D.panel_pack(pw), pb, cw, cb, 0.6, "tanh")


def test_fake_shapes_match_the_kernel():
    """The meta (fake) implementations give the shapes the kernels return (torch.compile and
    export trace through them)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, w, b = _case(5, 45, 33, seed=9)
    p = D.panel_pack(w)
    y = torch.ops.cascade_rt.panel_linear(x, p, b, 45, "gelu")
    with FakeTensorMode() as mode:
        fw, fx, fb = mode.from_tensor(w), mode.from_tensor(x), mode.from_tensor(b)
        fp = torch.ops.cascade_rt.panel_pack(fw)
        fy = torch.ops.cascade_rt.panel_linear(fx, fp, fb, 45, "gelu")
    assert tuple(fp.shape) == tuple(p.shape) and tuple(fy.shape) == tuple(y.shape)
