"""What a first GPU run needs of the CUDA/Triton paths, checked here where it can be.

Device guards around every Triton launch, forced backends refused up front when they cannot
run a forward, dead slots skipped on the sync-free path, the unpack bounds guard, the linear's
tile choice, and ``bench/gpu_check.sh`` refusing clearly without CUDA. GPU-only checks are
marked ``gpu``.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cascade_rt import CascadeBert, backends, native_backend
from cascade_rt import reference as ref

from test_sync_free import LENGTHS, _padded, _thresholds_for, _tier

ROOT = Path(__file__).resolve().parent.parent


# -- item 2: every Triton op launches under its tensors' device ------------------------------
def test_every_triton_op_enters_the_device_guard(monkeypatch):
    from cascade_rt import triton_backend as tb

    from test_triton_ops import _op_samples

    entered = []

    @contextlib.contextmanager
    def record(t):
        entered.append(t.device)
        yield

    monkeypatch.setattr(tb, "_on_device", record)
    samples = _op_samples()
    # the exit head is another change's business (its op gains an argument there)
    for op in sorted(set(tb.OPS) - {"exit_head"}):
        entered.clear()
        tb.OPS[op](*samples[op])
        assert entered, f"triton {op} launched without entering the device guard"


@pytest.mark.gpu
def test_model_on_second_gpu_while_first_is_current():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    dev = torch.device("cuda:1")
    m = CascadeBert([_tier(1, 64, 2, 1).to(dev, torch.float16), _tier(2, 96, 3, 2).to(dev, torch.float16)], [0.5])
    ids, mask, types = _padded(LENGTHS, seed=3)
    m.set_thresholds(_thresholds_for(m, ids.to(dev), mask.to(dev), types.to(dev), "half_exit"))
    cpu = CascadeBert([_tier(1, 64, 2, 1), _tier(2, 96, 3, 2)], m.thresholds)
    want = cpu(ids, mask, types)
    with torch.cuda.device(0):
        for sync_free in (False, True):
            m.sync_free = sync_free
            got = m(ids.to(dev), mask.to(dev), types.to(dev))
            torch.testing.assert_close(got.logits.cpu(), want.logits, rtol=0, atol=3e-2)
        g = m.capture(max_batch=16, max_seqlen=40)
        got = g(ids.to(dev), mask.to(dev), types.to(dev))
    torch.testing.assert_close(got.logits.cpu(), want.logits, rtol=0, atol=3e-2)


# -- item 3: a forced backend that cannot run a forward is refused before any work ------------
def test_forced_native_on_cuda_names_the_missing_ops():
    if not backends.available("native"):
        pytest.skip("native backend not built")
    with backends.use_backend("native"):
        with pytest.raises(NotImplementedError) as e:
            backends.check_model_backend(torch.device("cuda"), False)
        msg = str(e.value)
        assert "CASCADE_RT_BACKEND=native" in msg and "varlen_attention" in msg and "linear" in msg
        if native_backend._WITH_CUDA:  # built with its CUDA kernels: only these two lack one
            assert "add_layer_norm" not in msg and "compact" not in msg
        else:
            assert "add_layer_norm" in msg and "compact" in msg
        backends.check_model_backend(torch.device("cpu"), True)  # CPU: every op is there
    with backends.use_backend("triton"):
        backends.check_model_backend(torch.device("cuda"), True)
    backends.check_model_backend(torch.device("cuda"), True)  # automatic choice: nothing to refuse


def test_forced_reference_refused_in_sync_free_mode_on_cuda():
    with backends.use_backend("reference"):
        backends.check_model_backend(torch.device("cuda"), False)
        backends.check_model_backend(torch.device("cpu"), True)  # host reads are no sync on CPU
        with pytest.raises(NotImplementedError, match="sync-free.*varlen_attention.*host"):
            backends.check_model_backend(torch.device("cuda"), True)


def test_model_forward_checks_the_forced_backend_first(monkeypatch):
    """The check runs at the start of each tier's forward (wired, not only defined)."""
    if not backends.available("native"):
        pytest.skip("native backend not built")
    m = CascadeBert([_tier(1, 16, 2, 1)], [])
    ids, mask, types = _padded([3, 5], seed=1)
    monkeypatch.setattr(native_backend, "missing_ops", lambda device: ("linear", "varlen_attention"))
    calls = []
    monkeypatch.setattr(m.tiers[0], "embed", lambda *a: calls.append(a))
    with backends.use_backend("native"):
        with pytest.raises(NotImplementedError, match="has no cpu linear, varlen_attention"):
            m(ids, mask, types)
    assert calls == []  # refused before the first op
