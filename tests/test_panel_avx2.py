"""The panel kernel's AVX2 tiles (``CASCADE_RT_PANEL_ISA=avx2``), in a subprocess: the ISA is
chosen once per process, and by default an AVX-512 CPU runs the AVX-512 tiles while a CPU with
AVX2 only is not offered panels at all (``panel_width``), so only this test runs them there."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("CASCADE_RT_NO_NATIVE") == "1":
    pytest.skip("built with CASCADE_RT_NO_NATIVE=1", allow_module_level=True)

_AVX2_CHECK = r"""
import torch, cascade_rt
from cascade_rt import dense as D
assert D.panel_width() == 16, D.panel_width()
g = torch.Generator().manual_seed(0)
for M, N, K in [(1, 1, 1), (5, 17, 7), (6, 16, 40), (7, 33, 129), (13, 72, 40), (130, 40, 300)]:
    x = torch.randn(M, K, generator=g); w = torch.randn(N, K, generator=g) * K ** -0.5
    b = torch.randn(N, generator=g)
    p = D.panel_pack(w)
    assert torch.equal(D.panel_unpack(p, N), w)
    for act in ["none", "relu", "gelu", "gelu_tanh", "tanh"]:
        got = torch.ops.cascade_rt.panel_linear(x, p, b, N, act).double()
        y = torch.nn.functional.linear(x.double(), w.double(), b.double())
        want = y.tanh() if act == "tanh" else cascade_rt.reference._linear_activation(y, act)
        err = float((got - want).abs().max())
        assert err < 2e-5, (M, N, K, act, err)
        row = torch.ops.cascade_rt.panel_linear(x[M - 1:], p, b, N, act).double()
        assert torch.equal(row[0], got[M - 1])
print("avx2 ok")
"""


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="no AVX2 on this CPU")
def test_avx2_kernels_in_a_subprocess():
    import cascade_rt

    env = dict(os.environ, CASCADE_RT_PANEL_ISA="avx2")
    root = str(Path(cascade_rt.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _AVX2_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "avx2 ok" in out.stdout, out.stderr[-3000:]


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"), reason="no AVX2 on this CPU")
def test_panel_layout_bench_held_to_avx2(tmp_path):
    """``bench/panel_layout.py --isa avx2`` (what decides the AVX2 default) runs itself again
    held to AVX2, checks that the caps took, that a tier's logits agree on both layouts, and
    writes its record."""
    import json

    bench = Path(__file__).resolve().parents[1] / "bench" / "panel_layout.py"
    out = subprocess.run([sys.executable, str(bench), "--isa", "avx2", "--models", "minilm", "--rounds", "1",
                          "--block-s", "0", "--threads", "1", "--out-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    rec = json.loads((tmp_path / "panel_layout_avx2_cpu.json").read_text())
    assert rec["config"]["isa_env"]["CASCADE_RT_PANEL_ISA"] == "avx2"
    assert [(r["rows"], r["tokens"] if r["rows"] == 1 else None) for r in rec["results"]] == \
        [(1, 10), (1, 32), (1, 128), (48, None)]
    assert all(r["max_abs_logit_diff"] <= 1e-4 and r["onednn_ms"] > 0 and r["panel_ms"] > 0
               for r in rec["results"])
