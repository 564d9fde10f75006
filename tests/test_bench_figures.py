"""What the benchmarks compare: bench/e2e_tier.py pads the HF baseline as users do
(``padding=True``: to the batch's longest row) and its FLOPs ratios are those of that batch."""
import sys
from pathlib import Path

import pytest
import torch

from cascade_rt import flops
from conftest import load_bench

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def e2e_tier():
    sys.path.insert(0, str(BENCH))
    try:
        yield load_bench("e2e_tier")
    finally:
        sys.path.remove(str(BENCH))


def test_baseline_batch_is_padded_to_its_longest_row(e2e_tier):
    for batch, frac in [(1, 0.3), (8, 0.6), (48, 0.3)]:
        ids, mask, lens = e2e_tier.make_case(batch, frac, 128, vocab=30522, device="cpu")
        assert ids.shape == mask.shape == (batch, max(lens))
        assert mask.sum(1).tolist() == lens
        assert torch.equal(mask, (torch.arange(max(lens))[None, :] < torch.tensor(lens)[:, None]).long())


def test_case_record_ratios(e2e_tier):
    from cascade_rt import TierConfig, Tier

    cfg = TierConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, num_labels=2)
    tier = Tier(cfg)
    lens = [3, 10, 1]

    def timing(hf, ours, ratios):
        t = {"hf_sdpa_padded": {"median": hf}, "cascade_rt": {"median": ours}}
        return {"t": t, "ratio": {"median": sorted(ratios)[len(ratios) // 2], "all": ratios}}

    one = e2e_tier.case_record(tier, 3, 0.5, 128, lens, 0.0, [timing(2.0, 1.0, [1.5, 2.0, 2.5])], peak=1e12)
    # HF's padded work (every layer on every slot) over the tier's (last layer for [CLS] only)
    assert one["analytic_speedup"] == flops.tier_flops(cfg, [10, 10, 10], False) / flops.tier_flops(cfg, lens)
    assert one["analytic_speedup_max_len"] == flops.tier_flops(cfg, [128] * 3, False) / flops.tier_flops(cfg, lens)
    assert one["speedup"] == 2.0 and (one["speedup_min"], one["speedup_max"]) == (1.5, 2.5)
    assert one["speedup_spread_over"] == "passes"
    assert one["measured_over_bound"] == pytest.approx(2.0 / one["analytic_speedup"])
    rep = e2e_tier.case_record(tier, 3, 0.5, 128, lens, 0.0,
                               [timing(2.0, 1.0, [1.9, 2.0, 2.1]), timing(2.0, 1.0, [1.0, 1.2, 1.4]),
                                timing(2.0, 1.0, [2.9, 3.0, 3.1])], peak=1e12)
    assert rep["speedup"] == 2.0 and (rep["speedup_min"], rep["speedup_max"]) == (1.2, 3.0)
    assert rep["speedup_spread_over"] == "repeats" and rep["speedup_repeats"] == [2.0, 1.2, 3.0]
