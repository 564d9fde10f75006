"""bench/e2e_vs_ort.py runs end to end: export, ONNX Runtime's BERT fusion, logits agreement."""
import json
import sys
from pathlib import Path

import pytest
from conftest import load_bench

pytest.importorskip("onnxruntime")
BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_e2e_vs_ort_quick(tmp_path):
    sys.path.insert(0, str(BENCH))
    mod = load_bench("e2e_vs_ort")
    assert mod.main(["--quick", "--no-plot", "--out-dir", str(tmp_path), "--threads", "1"]) == 0
    rec = json.loads((tmp_path / "e2e_vs_ort_cpu.json").read_text())
    # the optimizer fused the graph: otherwise the peer is not ONNX Runtime's BERT path
    assert {"Attention", "SkipLayerNormalization"} <= set(rec["config"]["ort_fused_ops"])
    kinds = [r["kind"] for r in rec["results"]]
    assert kinds == ["latency", "ort_padded", "ort_bucketed"]
    for r in rec["results"]:
        assert r["max_abs_logit_diff"] < 1e-3
        assert r["ort_ms"] > 0 and r["cascade_rt_ms"] > 0
