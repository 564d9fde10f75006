"""cascade_rt.timing and the timed comparisons of evaluate/demo: warm-up, alternating order,
per-round ratios. A fake clock makes every duration exact."""
import pytest
import torch

from cascade_rt import timing
from cascade_rt.evaluate import timed_speedup, timed_speedups


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self):
        return self.now

    def fn(self, name, durations):
        it = iter(durations)

        def run():
            self.calls.append(name)
            self.now += next(it)

        return run


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", c)
    return c


def test_interleaved_warms_up_and_alternates(clock):
    a = clock.fn("a", [9.0, 1.0, 2.0, 3.0, 4.0])
    b = clock.fn("b", [9.0, 10.0, 30.0, 20.0, 40.0])
    t = timing.interleaved({"a": a, "b": b}, warmup=1, runs=4)
    assert clock.calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    # warm-up passes are not timed; rounds keep their order
    assert t["a"]["all"] == [1.0, 2.0, 3.0, 4.0] and t["b"]["all"] == [10.0, 30.0, 20.0, 40.0]
    assert t["a"]["median"] == 2.5 and t["a"]["min"] == 1.0 and t["a"]["max"] == 4.0
    r = timing.paired_ratio(t, "b", "a")
    assert r["all"] == [10.0, 15.0, 6.6667, 10.0] and r["median"] == 10.0
    assert r["min"] == 20.0 / 3 and r["max"] == 15.0


def test_interleaved_three_names_rotate(clock):
    fns = {k: clock.fn(k, [1.0] * 4) for k in "abc"}
    timing.interleaved(fns, warmup=0, runs=3)
    assert clock.calls == list("abc" "bca" "cab")
    clock.calls.clear()
    fns = {k: clock.fn(k, [1.0] * 4) for k in "ab"}
    timing.interleaved(fns, warmup=0, runs=2, alternate=False)
    assert clock.calls == list("abab")


def test_paired_ratio_needs_rounds():
    with pytest.raises(ValueError, match="same number"):
        timing.paired_ratio({"a": {"all": [1.0]}, "b": {"all": []}}, "a", "b")


class _Model:
    """A model whose every call costs a fixed fake time (and returns a CascadeOutput)."""

    def __init__(self, clock, name, seconds):
        self.clock, self.name, self.seconds = clock, name, seconds

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        from cascade_rt.cascade import CascadeOutput

        self.clock.calls.append(self.name)
        self.clock.now += self.seconds.pop(0)
        out = CascadeOutput.empty(input_ids.shape[0], 2, 1, "cpu")
        out.exit_tier.zero_()
        return out


def test_timed_speedup_is_the_median_ratio_with_spread(clock):
    enc = {"input_ids": torch.ones(4, 3, dtype=torch.long), "attention_mask": torch.ones(4, 3, dtype=torch.long)}
    # one batch per pass; warm-up (not timed) then 3 rounds
    model = _Model(clock, "model", [50.0, 1.0, 2.0, 1.0])
    base = _Model(clock, "base", [50.0, 3.0, 3.0, 4.0])
    r = timed_speedup(model, base, enc, batch=4, runs=3)
    assert clock.calls == ["base", "model", "base", "model", "model", "base", "base", "model"]
    assert r["speedup_all"] == [3.0, 1.5, 4.0] and r["speedup"] == 3.0
    assert (r["speedup_min"], r["speedup_max"]) == (1.5, 4.0)
    assert r["seconds"] == 1.0 and r["seconds_baseline"] == 3.0 and r["warmup"] == 1 and r["runs"] == 3
    assert r["out"]["exit_tier"].shape == (4,)


def test_timed_speedups_run_the_baseline_once_per_round(clock):
    """Several cases timed together: the baseline runs once per round, the order turns each
    round, each case's setup runs before each of its passes, and each ratio pairs a case's pass
    with the same round's baseline pass."""
    enc = {"input_ids": torch.ones(4, 3, dtype=torch.long), "attention_mask": torch.ones(4, 3, dtype=torch.long)}
    base = _Model(clock, "base", [50.0, 6.0, 8.0])
    shared = _Model(clock, "shared", [50.0, 50.0, 2.0, 3.0, 4.0, 1.0])
    other = _Model(clock, "other", [50.0, 3.0, 2.0])
    setups = []
    cases = {"t1": (shared, lambda: setups.append("t1")), "t2": (shared, lambda: setups.append("t2")),
             "other": other}
    r = timed_speedups(cases, base, enc, batch=4, runs=2)
    # warm-up round, then timed rounds turning by one: (base t1 t2 other), (t1 t2 other base)
    assert clock.calls == ["base", "shared", "shared", "other",
                           "base", "shared", "shared", "other",
                           "shared", "shared", "other", "base"]
    assert setups == ["t1", "t2"] * 3
    assert r["t1"]["speedup_all"] == [3.0, 2.0] and r["t2"]["speedup_all"] == [2.0, 8.0]
    assert r["other"]["speedup_all"] == [2.0, 4.0] and r["other"]["speedup"] == 3.0
    assert all(x["seconds_baseline"] == 7.0 for x in r.values())
    assert clock.calls.count("base") == 3  # warm-up + 2 rounds, not once per case
    with pytest.raises(ValueError, match="at least one case"):
        timed_speedups({}, base, enc, batch=4)


def test_warmup_rows_warm_up_on_a_slice(clock):
    """``warmup_rows``: the warm-up round runs each case and the baseline on the first rows only
    (one batch here, against two in a timed pass); the kept outputs are a timed pass's, of
    every row."""
    enc = {"input_ids": torch.ones(4, 3, dtype=torch.long), "attention_mask": torch.ones(4, 3, dtype=torch.long)}
    rows = []

    class Counting(_Model):
        def __call__(self, input_ids, attention_mask, token_type_ids=None):
            rows.append((self.name, input_ids.shape[0]))
            return super().__call__(input_ids, attention_mask, token_type_ids)

    base = Counting(clock, "base", [9.0, 2.0, 2.0, 3.0, 3.0])
    model = Counting(clock, "model", [9.0, 1.0, 1.0, 1.0, 2.0])
    r = timed_speedups({"m": model}, base, enc, batch=2, runs=2, warmup_rows=2)
    assert rows[:2] == [("base", 2), ("model", 2)]  # warm-up: one batch of 2 rows each
    assert len(rows) == 2 + 2 * 2 * 2
    assert r["m"]["speedup_all"] == [2.0, 2.0] and r["m"]["warmup_rows"] == 2
    assert r["m"]["out"]["exit_tier"].shape == (4,)
    with pytest.raises(ValueError, match="warmup_rows"):
        timed_speedups({"m": model}, base, enc, batch=2, warmup_rows=0)
    with pytest.raises(ValueError, match="same names"):
        timing.interleaved({"a": lambda: None}, warmup_fns={"b": lambda: None})
