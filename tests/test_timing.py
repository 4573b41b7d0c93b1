"""The Timer, driven by a fake clock: sample counts, budget, batching, sync inside the region, compile time apart.

No assertion here depends on how fast this machine is.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest

from harness.measure.timing import Measurement, Timer, time_fn


class FakeClock:
    """A clock that only moves when the work under test says so."""

    def __init__(self) -> None:
        self.t = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def work(clock: FakeClock, *durations: float, then: float = None):
    """A fn whose k-th call takes durations[k] seconds (then ``then`` forever); counts its calls."""
    calls = []

    def fn():
        k = len(calls)
        calls.append(k)
        clock.advance(durations[k] if k < len(durations) else (then if then is not None else durations[-1]))
    fn.calls = calls
    return fn


def test_constant_fn_converges_at_min_runs_and_compile_is_apart():
    clock = FakeClock()
    fn = work(clock, 0.5, then=0.01)  # first call: 0.5 s of "compilation", then 10 ms each
    m = Timer(fn, min_runs=5, budget_s=10.0, clock=clock).run()
    assert m.compile_s == pytest.approx(0.5)
    assert m.median == pytest.approx(0.01) and m.q25 == pytest.approx(0.01) and m.q75 == pytest.approx(0.01)
    assert m.n == 5 and m.number == 1 and m.stop_reason == "converged"
    assert m.rel_iqr == 0.0
    assert len(fn.calls) == 1 + 5  # warm-up + samples (the calibration call is the first sample)
    assert all(s == pytest.approx(0.01) for s in m.samples)


def test_budget_is_respected():
    clock = FakeClock()
    fn = work(clock, 0.125)
    m = Timer(fn, min_runs=5, budget_s=1.0, target_rel_iqr=0.0, clock=clock).run()
    assert m.stop_reason == "budget"
    assert m.n == 8  # 8 x 0.125 s = the 1 s budget (warm-up not counted)
    assert m.total_s == pytest.approx(1.0)
    assert len(fn.calls) == 9


def test_budget_smaller_than_one_call_still_gives_one_sample():
    clock = FakeClock()
    m = Timer(work(clock, 3.0), budget_s=1.0, clock=clock).run()
    assert m.n == 1 and m.median == pytest.approx(3.0) and m.stop_reason == "budget"


def test_noisy_fn_runs_to_max_runs_and_keeps_every_sample():
    clock = FakeClock()
    pattern = [0.001, 0.002, 0.004]
    calls = []

    def fn():
        clock.advance(pattern[len(calls) % 3])
        calls.append(1)
    m = Timer(fn, warmup=1, min_runs=5, max_runs=50, budget_s=100.0, target_rel_iqr=0.05, clock=clock).run()
    assert m.stop_reason == "max_runs" and m.n == 50 and len(m.samples) == 50
    expected = [pattern[k % 3] for k in range(1, 51)]  # call 0 was the warm-up
    assert m.samples == pytest.approx(expected)
    assert m.median == pytest.approx(np.median(expected))
    assert m.q25 == pytest.approx(np.percentile(expected, 25)) and m.q75 == pytest.approx(np.percentile(expected, 75))


def test_fast_fn_is_batched_and_divided():
    clock = FakeClock()
    fn = work(clock, 1e-5)  # 10 us: 100+ calls per 1 ms sample
    m = Timer(fn, min_runs=5, budget_s=10.0, min_sample_s=1e-3, clock=clock).run()
    assert m.number >= 100
    assert m.number * 1e-5 >= 1e-3
    assert m.median == pytest.approx(1e-5)
    assert m.n == 5 and m.stop_reason == "converged"
    # the timed calls are the warm-up, calibration batches and n * number
    assert len(fn.calls) >= 1 + m.n * m.number


def test_one_slow_call_during_calibration_does_not_stop_batching():
    clock = FakeClock()
    fn = work(clock, 0.5, 0.005, then=1e-5)  # warm-up, one preempted 5 ms call, then 10 us calls
    m = Timer(fn, min_runs=5, budget_s=10.0, min_sample_s=1e-3, clock=clock).run()
    assert m.number >= 100 and m.median == pytest.approx(1e-5)


def test_slow_calls_during_calibration_are_kept_as_samples():
    clock = FakeClock()
    fn = work(clock, 0.1, 0.002, 0.003, 0.004, then=0.002)  # 2-4 ms: one call per sample, none wasted
    m = Timer(fn, min_runs=5, max_runs=5, budget_s=10.0, target_rel_iqr=0.0, clock=clock).run()
    assert m.number == 1 and m.samples[:3] == pytest.approx([0.002, 0.003, 0.004])
    assert m.n == 5 and len(fn.calls) == 1 + 5


def test_sync_is_called_inside_the_timed_region_once_per_sample():
    clock = FakeClock()
    fn = work(clock, 0.002)
    syncs = []

    def sync():  # pending device work finishing: 3 ms that only a sync inside the region can see
        syncs.append(1)
        clock.advance(0.003)
    m = Timer(fn, sync=sync, min_runs=5, budget_s=10.0, clock=clock).run()
    assert m.median == pytest.approx(0.005)
    assert m.compile_s == pytest.approx(0.005)
    assert len(syncs) == 1 + m.n  # warm-up + one per sample (number == 1 here)


def test_gc_is_off_inside_and_restored_after():
    seen = []
    m = Timer(lambda: seen.append(gc.isenabled()), budget_s=0.01, min_runs=1, max_runs=3).run()
    assert m.n >= 1 and not any(seen)
    assert gc.isenabled()
    gc.disable()
    try:
        Timer(lambda: None, budget_s=0.01, max_runs=5).run()
        assert not gc.isenabled()  # a caller's choice is left alone
    finally:
        gc.enable()


def test_gc_is_restored_when_fn_raises():
    def boom():
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        Timer(boom).run()
    assert gc.isenabled()


def test_no_warmup_means_no_compile_time():
    clock = FakeClock()
    fn = work(clock, 0.01)
    m = Timer(fn, warmup=0, min_runs=3, clock=clock).run()
    assert m.compile_s is None and m.n == 3
    assert len(fn.calls) == 3


def test_more_warmup_calls_are_untimed():
    clock = FakeClock()
    fn = work(clock, 0.5, 0.2, 0.2, then=0.01)
    m = Timer(fn, warmup=3, min_runs=5, clock=clock).run()
    assert m.compile_s == pytest.approx(0.5) and m.median == pytest.approx(0.01)
    assert max(m.samples) == pytest.approx(0.01)


def test_to_row_kwargs_scales_for_case_row():
    m = Measurement(samples=[0.001, 0.002, 0.003, 0.004], compile_s=0.1)
    kw = m.to_row_kwargs(1e3)
    assert kw["samples"] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert kw["q25"] == pytest.approx(1.75) and kw["q75"] == pytest.approx(3.25) and kw["n"] == 4
    assert m.median == pytest.approx(0.0025) and m.rel_iqr == pytest.approx(0.0015 / 0.0025)
    from suites.base import Case
    row = Case("throughput", "c", "numpy").row("fwd_ms", m.median * 1e3, "ms", **kw)
    assert row["samples"] == kw["samples"] and row["n"] == 4 and row["q25"] == pytest.approx(1.75)
    assert set(m.to_dict()) >= {"median", "q25", "q75", "n", "number", "compile_s", "rel_iqr"}


def test_real_clock_smoke():
    m = time_fn(lambda: sum(range(50)), budget_s=0.05)
    assert m.n >= 1 and m.number >= 1 and m.median > 0 and m.compile_s is not None
    assert len(m.samples) == m.n and m.q25 <= m.median <= m.q75


@pytest.mark.parametrize("kw, needle", [
    (dict(min_runs=0), "min_runs"),
    (dict(max_runs=2, min_runs=5), "max_runs"),
    (dict(budget_s=0), "budget_s"),
    (dict(budget_s=float("nan")), "budget_s"),
    (dict(warmup=-1), "warmup"),
    (dict(target_rel_iqr=-0.1), "target_rel_iqr"),
    (dict(min_runs=2.5), "min_runs"),
])
def test_bad_arguments_are_named(kw, needle):
    with pytest.raises(ValueError, match=needle):
        Timer(lambda: None, **kw)


def test_bad_callables_are_named():
    with pytest.raises(TypeError, match="fn"):
        Timer(5)
    with pytest.raises(TypeError, match="sync"):
        Timer(lambda: None, sync=3)
    with pytest.raises(ValueError, match="samples"):
        Measurement(samples=[], compile_s=None)


# -- PairedTimer: fn and the control workload in adjacent pairs ---------------------------------------------

def test_paired_timer_pairs_every_sample_with_a_control_and_spreads_over_the_budget():
    from harness.measure.timing import PairedTimer
    clock = FakeClock()
    order = []

    def fn():
        order.append("f")
        clock.advance(0.004)

    def ctl():
        order.append("c")
        clock.advance(0.002)

    pm = PairedTimer(fn, ctl, min_pairs=5, budget_s=0.5, clock=clock).run()
    # no early stop on convergence: pairs until the budget is spent (each pair 6 ms)
    assert 70 <= pm.fn.n == pm.control.n == len(pm.ratios) <= 90
    assert pm.ratio == pytest.approx(2.0) and all(r == pytest.approx(2.0) for r in pm.ratios)
    assert pm.fn.median == pytest.approx(0.004) and pm.control.median == pytest.approx(0.002)
    assert "".join(order).endswith("fccf" * 10) or "".join(order).endswith("fccf" * 10 + "fc")  # f,c then c,f


def test_paired_timer_ratios_cancel_a_slow_spell():
    """A spell that makes everything 1.5x slower for a third of the pairs moves the raw samples, not the ratios."""
    from harness.measure.timing import PairedTimer
    clock = FakeClock()
    state = {"n": 0}

    def speed():
        state["n"] += 1
        return 1.5 if 100 <= state["n"] < 200 else 1.0

    pm = PairedTimer(lambda: clock.advance(0.003 * speed()), lambda: clock.advance(0.001 * speed()),
                     min_pairs=5, budget_s=1.2, clock=clock).run()
    assert max(pm.fn.samples) / min(pm.fn.samples) == pytest.approx(1.5, rel=0.01)
    assert sum(abs(r - 3.0) > 1e-6 for r in pm.ratios) <= 2  # only a pair that straddles an edge of the spell
    assert pm.ratio == pytest.approx(3.0)


def test_paired_timer_a_slow_fn_gets_min_pairs_only_within_max_extra():
    from harness.measure.timing import PairedTimer
    clock = FakeClock()
    pm = PairedTimer(lambda: clock.advance(1.0), lambda: clock.advance(0.002), min_pairs=5, budget_s=0.1,
                     max_extra_s=10.0, clock=clock).run()
    assert pm.fn.n == 5  # topped up to min_pairs: 4 more seconds is within max_extra_s
    clock2 = FakeClock()
    pm2 = PairedTimer(lambda: clock2.advance(1.0), lambda: clock2.advance(0.002), min_pairs=5, budget_s=0.1,
                      max_extra_s=2.0, clock=clock2).run()
    assert pm2.fn.n == 1 and pm2.fn.stop_reason == "budget"


def test_paired_timer_rejects_bad_arguments():
    from harness.core.errors import InputError, InputTypeError
    from harness.measure.timing import PairedTimer
    with pytest.raises(InputTypeError, match="control"):
        PairedTimer(lambda: None, "not callable")
    with pytest.raises(InputError, match="max_pairs"):
        PairedTimer(lambda: None, lambda: None, min_pairs=5, max_pairs=2)
    with pytest.raises(InputError, match="max_extra_s"):
        PairedTimer(lambda: None, lambda: None, max_extra_s=-1)
