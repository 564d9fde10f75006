"""cascade_rt.dense: the exact-shape dense layer (oneDNN on the CPU) against its reference.

The bound is the classical one for a dot product of length K summed in fp32 in any order:
``|fl(y) - y| <= gamma_K * (|x| @ |W|^T + |b|)`` with ``gamma_K = K u / (1 - K u)`` and u the
unit roundoff, plus one rounding of the result; the exact value is computed in fp64. It holds
for every correct fp32 kernel and fails for one that rounds operands or partial sums to a
lower precision.
"""
import pytest
import torch
import torch.nn.functional as F

from cascade_rt import dense as dense_mod
from cascade_rt.dense import dense, dense_impl, dense_ref, set_onednn
from cascade_rt.reference import LINEAR_ACTIVATIONS

SHAPES = [(0, 7, 5), (1, 1, 1), (1, 384, 1152), (3, 5, 2), (7, 33, 17), (33, 96, 200), (130, 200, 96)]


def _bound(x, w, b, dtype):
    u = torch.finfo(dtype).eps / 2
    K = x.shape[1]
    gamma = K * u / (1 - K * u)
    mag = x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs())
    return gamma * mag + u * mag + 1e-30


@pytest.fixture(params=[True, False], ids=["onednn", "aten"])
def path(request):
    set_onednn(request.param)
    yield request.param
    set_onednn(True)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", LINEAR_ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_dense_fp32_within_accumulation_bound(path, shape, activation, with_bias):
    M, K, N = shape
    g = torch.Generator().manual_seed(M * 1000 + K + N)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) / K ** 0.5
    b = torch.randn(N, generator=g) if with_bias else None
    want_impl = "onednn" if path and torch.backends.mkldnn.is_available() else "aten"
    assert dense_impl("cpu", torch.float32) == want_impl
    got = dense(x, w, b, activation)
    assert got.shape == (M, N) and got.dtype == torch.float32
    pre = F.linear(x.double(), w.double(), None if b is None else b.double())
    exact = dense_mod._linear_activation(pre, activation)
    # the activations are 1-Lipschitz up to gelu's 1.13: the pre-activation bound carries over
    bound = 1.13 * _bound(x, w, b, torch.float32)
    err = (got.double() - exact).abs()
    assert bool((err <= bound).all()), f"max excess {(err - bound).max().item():.3e}"


def test_dense_strided_input_and_reference(path):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 2 * 65, generator=g)[:, ::2]
    w = torch.randn(31, 65, generator=g) / 8
    b = torch.randn(31, generator=g)
    got = dense(x, w, b, "gelu_tanh")
    ref = dense_ref(x, w, b, "gelu_tanh")
    bound = 1.13 * _bound(x, w, b, torch.float32)
    exact = F.gelu(F.linear(x.double(), w.double(), b.double()), approximate="tanh")
    assert bool(((got.double() - exact).abs() <= bound).all())
    assert bool(((ref.double() - exact).abs() <= bound).all())


@pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                    reason="CPU without native bf16 dot products: bf16 dense stays on ATen")
def test_dense_bf16_matches_fp32_accumulation():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(37, 384, generator=g).bfloat16()
    w = (torch.randn(200, 384, generator=g) / 20).bfloat16()
    b = torch.randn(200, generator=g).bfloat16()
    assert dense_impl("cpu", torch.bfloat16) == "onednn"
    got = dense(x, w, b, "gelu")
    exact = F.gelu(F.linear(x.double(), w.double(), b.double()))
    # fp32 accumulation of exact bf16 products, then one bf16 rounding of the result
    bound = 1.13 * _bound(x, w, b, torch.float32) + exact.abs() * torch.finfo(torch.bfloat16).eps / 2
    assert bool(((got.double() - exact).abs() <= bound * 1.01 + 1e-6).all())


def test_dense_choice_is_cached_and_switchable():
    set_onednn(False)
    try:
        assert dense_impl("cpu", torch.float32) == "aten"
    finally:
        set_onednn(True)
    assert dense_impl("cuda", torch.float16) == "aten"
    assert dense_impl("cpu", torch.float16) == "aten"
