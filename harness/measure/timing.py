"""One Timer for every backend: warm-up, adaptive repeats, device sync, median/IQR, raw samples kept.

Usage::

    m = Timer(fn, sync=None, warmup=1, min_runs=5, max_runs=10_000, budget_s=1.0, target_rel_iqr=0.05).run()
    m.median, m.q25, m.q75    # seconds per call
    m.samples                 # every raw sample (seconds per call), in the order taken
    m.compile_s               # seconds of the first call (includes JIT compilation)

How a measurement is taken (in the spirit of ``torch.utils.benchmark.Timer.adaptive_autorange``):

1. Warm-up: the first call is timed on its own and reported as ``compile_s`` (JIT compilation, cuDNN
   autotuning, allocator growth happen here); further warm-up calls are untimed.
2. Calibration: a fast ``fn`` is called ``number`` times per sample, with ``number`` chosen (from the
   fastest of up to three single calls) so that one sample lasts at least ``min_sample_s`` (default 1 ms);
   a sample is the batch time divided by ``number``. This keeps clock resolution and loop overhead out of
   the figure, and matches how ``torch.utils.benchmark`` forms its blocks.
3. Repeats: samples are taken until the relative IQR ``(q75 - q25) / median`` is at most ``target_rel_iqr``
   (checked once ``min_runs`` samples exist), or ``budget_s`` seconds of repeats are spent (always at least
   one sample), or ``max_runs`` samples exist.

The garbage collector runs once before the repeats and is disabled during them (re-enabled afterwards) so
that a collection never lands inside a sample. ``sync`` (e.g. ``torch.cuda.synchronize`` or a
``block_until_ready``) is called inside the timed region, after the batch of calls, so asynchronous device
work is counted.
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from harness.core.errors import InputError, InputTypeError

#: A sample should last at least this long (seconds); faster functions are batched.
MIN_SAMPLE_S = 1e-3
#: Batching never goes beyond this many calls per sample.
MAX_NUMBER = 1_000_000


@dataclass
class Measurement:
    """The result of :meth:`Timer.run`. All times are seconds per call of ``fn``."""

    samples: List[float]
    compile_s: Optional[float]
    number: int = 1                     # calls of fn per sample (batching of fast functions)
    stop_reason: str = ""               # "converged", "budget" or "max_runs"
    total_s: float = 0.0                # seconds spent in repeats (excluding warm-up and calibration)
    warmup: int = 1
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.samples:
            raise InputError("samples: a Measurement needs at least one sample")
        arr = np.asarray(self.samples, dtype=float)
        self.median = float(np.median(arr))
        self.q25 = float(np.percentile(arr, 25))
        self.q75 = float(np.percentile(arr, 75))
        self.mean = float(arr.mean())
        self.min = float(arr.min())
        self.max = float(arr.max())

    @property
    def n(self) -> int:
        """Number of samples (each the mean of ``number`` calls)."""
        return len(self.samples)

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25

    @property
    def rel_iqr(self) -> float:
        """(q75 - q25) / median; ``inf`` if the median is 0."""
        return self.iqr / self.median if self.median > 0 else math.inf

    def to_row_kwargs(self, scale: float = 1.0) -> Dict[str, Any]:
        """Keyword arguments for ``Case.row(metric, value, unit, **kw)``: samples and quartiles times ``scale``.

        ``scale`` converts seconds to the row's unit (1e3 for ms). The row's ``value`` is ``median * scale``.
        """
        return dict(samples=[s * scale for s in self.samples], q25=self.q25 * scale, q75=self.q75 * scale,
                    n=self.n)

    def to_dict(self) -> Dict[str, Any]:
        """Summary figures (seconds) for ``extra`` or logs."""
        return dict(median=self.median, q25=self.q25, q75=self.q75, n=self.n, number=self.number,
                    compile_s=self.compile_s, rel_iqr=self.rel_iqr, stop_reason=self.stop_reason,
                    total_s=self.total_s)

    def __repr__(self) -> str:
        comp = "-" if self.compile_s is None else f"{self.compile_s * 1e3:.3g} ms"
        return (f"<Measurement median {self.median * 1e3:.4g} ms, IQR {self.q25 * 1e3:.4g}-{self.q75 * 1e3:.4g} ms,"
                f" n={self.n} x{self.number}, compile {comp}, {self.stop_reason}>")


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise InputError(f"{name}: got {v!r}; expected an integer >= {lo}")
    return int(v)


def _check_pos(name: str, v: Any, allow_zero: bool = False) -> float:
    ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v) \
        and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise InputError(f"{name}: got {v!r}; expected a finite number {'>= 0' if allow_zero else '> 0'}")
    return float(v)


class Timer:
    """Time a zero-argument callable; see the module docstring for the procedure.

    Args:
        fn: zero-argument callable, the work to time (its result is ignored).
        sync: optional zero-argument callable run inside the timed region after the calls (device sync).
        warmup: calls before the repeats; the first is timed as ``compile_s`` (0: no warm-up, compile_s None).
        min_runs: samples taken before convergence is checked.
        max_runs: most samples taken.
        budget_s: seconds of repeats; the loop stops once this is spent (after at least one sample).
        target_rel_iqr: stop as soon as (q75 - q25) / median is at most this (0 disables).
        min_sample_s: a fast fn is batched so that one sample lasts at least this (seconds).
        clock: the clock, seconds as float (default ``time.perf_counter``; tests pass a fake one).
    """

    def __init__(self, fn: Callable[[], Any], sync: Optional[Callable[[], Any]] = None, warmup: int = 1,
                 min_runs: int = 5, max_runs: int = 10_000, budget_s: float = 1.0, target_rel_iqr: float = 0.05,
                 min_sample_s: float = MIN_SAMPLE_S, clock: Callable[[], float] = time.perf_counter) -> None:
        if not callable(fn):
            raise InputTypeError(f"fn: got {type(fn).__name__}; expected a zero-argument callable")
        if sync is not None and not callable(sync):
            raise InputTypeError(f"sync: got {type(sync).__name__}; expected None or a zero-argument callable")
        self.fn = fn
        self.sync = sync
        self.warmup = _check_int("warmup", warmup, 0)
        self.min_runs = _check_int("min_runs", min_runs, 1)
        self.max_runs = _check_int("max_runs", max_runs, 1)
        if self.max_runs < self.min_runs:
            raise InputError(f"max_runs: got {max_runs}; must be >= min_runs ({min_runs})")
        self.budget_s = _check_pos("budget_s", budget_s)
        self.target_rel_iqr = _check_pos("target_rel_iqr", target_rel_iqr, allow_zero=True)
        self.min_sample_s = _check_pos("min_sample_s", min_sample_s, allow_zero=True)
        self.clock = clock

    # -- one timed region ----------------------------------------------------------------------------
    def _time_batch(self, number: int) -> float:
        """Seconds for ``number`` calls plus one sync (the timed region)."""
        fn, sync, clock = self.fn, self.sync, self.clock
        t0 = clock()
        for _ in range(number):
            fn()
        if sync is not None:
            sync()
        return clock() - t0

    def _calibrate(self) -> Tuple[int, List[float]]:
        """Calls per sample so that a sample lasts >= min_sample_s, and the samples that came for free.

        The per-call time is the minimum of up to three single calls, so that one preempted call does not
        make a fast function look slow (and go unbatched). A function that is clearly slow (one call
        >= 10 min_sample_s) is not called again just to calibrate, and single calls of a function slow
        enough for one call per sample are kept as samples (a 2 s training step should not cost 2 s more).
        """
        if self.min_sample_s <= 0:
            return 1, []
        singles: List[float] = []
        for _ in range(3):
            singles.append(self._time_batch(1))
            if singles[-1] >= 10 * self.min_sample_s:
                break
        per_call = max(min(singles), 1e-9)
        if per_call >= self.min_sample_s:
            return 1, singles
        number = 1
        while number < MAX_NUMBER:
            # Aim 20 % over the target from the per-call estimate; grow at least 2x, at most 100x per step.
            want = int(math.ceil(1.2 * self.min_sample_s / per_call))
            number = min(MAX_NUMBER, max(2 * number, min(100 * number, want)))
            dt = self._time_batch(number)
            if dt >= self.min_sample_s:
                break
            per_call = max(dt / number, 1e-9)
        return number, []

    @staticmethod
    def _rel_iqr(samples: List[float]) -> float:
        q25, med, q75 = np.percentile(samples, [25, 50, 75])
        return (q75 - q25) / med if med > 0 else math.inf

    def run(self) -> Measurement:
        """Warm up, calibrate, repeat; return the :class:`Measurement`."""
        gc_was_enabled = gc.isenabled()
        compile_s: Optional[float] = None
        try:
            gc.collect()
            gc.disable()
            if self.warmup >= 1:
                compile_s = self._time_batch(1)
                for _ in range(self.warmup - 1):
                    self._time_batch(1)
            # A collection now, not inside a sample (warm-up may have left garbage behind).
            gc.collect()
            # The budget counts calibration too: it is the wall time spent after warm-up.
            start = self.clock()
            number, free = self._calibrate()
            samples: List[float] = free[:self.max_runs]
            next_check = self.min_runs
            reason = "max_runs"
            while True:
                if not samples:
                    samples.append(self._time_batch(number) / number)
                n = len(samples)
                if self.clock() - start >= self.budget_s:
                    reason = "budget"
                    break
                if n >= next_check and self.target_rel_iqr > 0:
                    if self._rel_iqr(samples) <= self.target_rel_iqr:
                        reason = "converged"
                        break
                    # Checking every sample would cost O(n^2 log n) on long runs; check ~10 % apart.
                    next_check = max(n + 1, int(n * 1.1))
                if n >= self.max_runs:
                    break
                samples.append(self._time_batch(number) / number)
            total = self.clock() - start
        finally:
            if gc_was_enabled:
                gc.enable()
        return Measurement(samples=samples, compile_s=compile_s, number=number, stop_reason=reason, total_s=total,
                           warmup=self.warmup)


def time_fn(fn: Callable[[], Any], **kw: Any) -> Measurement:
    """Shorthand for ``Timer(fn, **kw).run()``."""
    return Timer(fn, **kw).run()


@dataclass
class PairedMeasurement:
    """The result of :meth:`PairedTimer.run`: ``fn`` and ``control`` timed in adjacent pairs (seconds per call).

    ``ratios[i]`` = ``fn.samples[i] / control.samples[i]``: the time of ``fn`` in units of the control's time
    taken next to it, which a slow spell of the machine moves much less than either time.
    """

    fn: Measurement
    control: Measurement
    ratios: List[float]

    def __post_init__(self) -> None:
        if len(self.ratios) != self.fn.n or self.fn.n != self.control.n:
            raise InputError("ratios: a PairedMeasurement needs one ratio per pair of samples")
        self.ratio = float(np.median(self.ratios))


class PairedTimer:
    """Time ``fn`` in alternation with a fixed ``control`` workload: pair i holds one sample of each, taken one
    right after the other, in the order fn, control, control, fn, fn, ... so that a drift cancels to first order.

    Both are warmed up and calibrated (batched to ``min_sample_s``) like :class:`Timer`; the first call of
    ``fn`` is its ``compile_s``. Pairs are taken until ``budget_s`` is spent and at least ``min_pairs`` exist
    (no early stop on convergence: the pairs are meant to spread over the whole budget, so that a short slow
    spell hits a few of them, not all), or ``max_pairs``. If the budget runs out before ``min_pairs``
    (a slow ``fn``), more pairs are taken only while the estimate of what they cost stays within
    ``max_extra_s``; ``min_pairs`` is then not guaranteed (at least one pair always is).
    """

    def __init__(self, fn: Callable[[], Any], control: Callable[[], Any], sync: Optional[Callable[[], Any]] = None,
                 warmup: int = 1, min_pairs: int = 5, max_pairs: int = 10_000, budget_s: float = 1.0,
                 max_extra_s: float = 3.0, min_sample_s: float = MIN_SAMPLE_S,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if not callable(control):
            raise InputTypeError(f"control: got {type(control).__name__}; expected a zero-argument callable")
        self._fn = Timer(fn, sync=sync, warmup=warmup, min_runs=1, budget_s=budget_s, target_rel_iqr=0,
                         min_sample_s=min_sample_s, clock=clock)
        self._control = Timer(control, warmup=1, min_runs=1, budget_s=budget_s, target_rel_iqr=0,
                              min_sample_s=min_sample_s, clock=clock)
        self.min_pairs = _check_int("min_pairs", min_pairs, 1)
        self.max_pairs = _check_int("max_pairs", max_pairs, 1)
        if self.max_pairs < self.min_pairs:
            raise InputError(f"max_pairs: got {max_pairs}; must be >= min_pairs ({min_pairs})")
        self.budget_s = _check_pos("budget_s", budget_s)
        self.max_extra_s = _check_pos("max_extra_s", max_extra_s, allow_zero=True)
        self.clock = clock

    def run(self) -> PairedMeasurement:
        """Warm up and calibrate both, take the pairs; return the :class:`PairedMeasurement`."""
        f, c, clock = self._fn, self._control, self.clock
        gc_was_enabled = gc.isenabled()
        compile_s: Optional[float] = None
        try:
            gc.collect()
            gc.disable()
            if f.warmup >= 1:
                compile_s = f._time_batch(1)
                for _ in range(f.warmup - 1):
                    f._time_batch(1)
            c._time_batch(1)
            gc.collect()
            start = clock()
            nf, _ = f._calibrate()  # calibration singles are not kept: they have no control beside them
            nc, _ = c._calibrate()
            fs: List[float] = []
            cs: List[float] = []
            reason = "max_pairs"
            while len(fs) < self.max_pairs:
                t0 = clock()
                if len(fs) % 2 == 0:
                    a = f._time_batch(nf) / nf
                    b = c._time_batch(nc) / nc
                else:
                    b = c._time_batch(nc) / nc
                    a = f._time_batch(nf) / nf
                fs.append(a)
                cs.append(b)
                now = clock()
                if now - start >= self.budget_s:
                    missing = self.min_pairs - len(fs)
                    if missing <= 0 or missing * (now - t0) > self.max_extra_s:
                        reason = "budget"
                        break
            total = clock() - start
        finally:
            if gc_was_enabled:
                gc.enable()
        fm = Measurement(samples=fs, compile_s=compile_s, number=nf, stop_reason=reason, total_s=total,
                         warmup=f.warmup)
        cm = Measurement(samples=cs, compile_s=None, number=nc, stop_reason=reason, total_s=total, warmup=1)
        ratios = [a / b if b > 0 else math.nan for a, b in zip(fs, cs)]
        return PairedMeasurement(fm, cm, ratios)
