"""asv benchmark classes over the suites' own case code (no second implementation of any measurement).

- ``time_``: the throughput suite's shapes, timed by asv through the very callables the suite times
  (``Backend.prepare_forward`` / ``prepare_train``, which return only after the device has finished);
  data from ``suites.throughput.make_data``; prepared, JIT-compiled and warmed up in ``setup``.
- ``peakmem_``: host RSS of a training step (CPU only: on a GPU the host RSS is not the memory that matters).
- ``track_``: numbers that the suites compute (``SUITE.run(case, ctx)`` on a fixed small case, one row
  picked): achieved GFLOP/s and efficiency, RTRL/BPTT measured bytes, gradient decay rates, CTC max errors.
  Computed once per environment in ``setup_cache``.

Parameters are the same on every machine; a backend, device or suite that is not available here (or not
in the checked-out commit, when asv walks history) is skipped by ``NotImplementedError`` in ``setup``.
Importing this module needs nothing but the standard library; frameworks load in ``setup``.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

BACKENDS = ["numpy", "torch", "jax"]
#: The classic cells and the gated linear ones (minGRU, minLSTM, RG-LRU), at the same shapes.
CELLS = ["rnn_tanh", "lstm", "gru", "mingru", "minlstm", "rglru"]
GATED_CELLS = ["mingru", "minlstm", "rglru"]
#: The throughput suite's scan sweep (quick preset: minGRU H=128 at B·T = 16384): sequential forms and scans.
SCAN_BACKENDS = ["numpy", "torch-cell", "torch-pscan", "jax", "jax-pscan"]
SCAN_T = [64, 1024, 16384]
#: small = the throughput suite's smoke shape (H=32, B=8, T=20); medium = its quick preset's centre point
#: (H=128, B=32, T=50). Looked up in the suite, so asv times exactly what `rnnbench run` times.
SIZES = ["small", "medium"]
DEVICES = ["cpu", "cuda"]
_SIZE_SOURCE = {"small": ("smoke", "smoke"), "medium": ("quick", "centre")}
SEED = 0
#: Timed-repeat budget of the suites' own timings inside ``track_`` (seconds per measurement).
TRACK_BUDGET_S = 0.2


# -- access to the suites (all failures become a skip) -------------------------------------------------

def _skip(msg: str) -> NotImplementedError:
    return NotImplementedError(msg)


def get_suite(name: str):
    """The suite object, or NotImplementedError when this checkout lacks it (asv over old commits)."""
    try:
        from suites.base import get_suite as _get
        return _get(name)
    except Exception as e:  # noqa: BLE001 - missing module, missing names, import errors of old commits
        raise _skip(f"suite {name!r} is not available in this checkout: {type(e).__name__}: {e}") from None


def _no_cuda_driver() -> bool:
    """True on a Linux machine without the NVIDIA driver: CUDA cases skip without importing a framework."""
    import glob
    import os
    if not sys.platform.startswith("linux"):
        return False  # elsewhere the framework's own probe decides
    return not (os.path.exists("/proc/driver/nvidia") or glob.glob("/dev/nvidia[0-9]*"))


def get_backend(name: str, device: str):
    """A ready backend, or NotImplementedError saying why it cannot run here."""
    if device == "cuda" and _no_cuda_driver():
        raise _skip(f"backend {name} on cuda: no NVIDIA driver on this machine")
    try:
        from harness import backends
        info = backends.probe(name, device)
        if not info.available:
            raise _skip(f"backend {name} on {device} is unavailable here: {info.reason}")
        return backends.get(name, device)
    except NotImplementedError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _skip(f"backend {name} on {device} is unavailable here: {type(e).__name__}: {e}") from None


def run_context(preset: str = "smoke", budget_s: Optional[float] = TRACK_BUDGET_S):
    from suites.base import RunContext
    return RunContext(seed=SEED, threads=None, budget_s=budget_s, preset=preset)


def throughput_case(backend: str, cell: str, size: str, device: str):
    """(suite, Case) of the throughput suite for these parameters; NotImplementedError if it has none."""
    suite = get_suite("throughput")
    preset, tag = _SIZE_SOURCE[size]
    for c in suite.cases(preset, [backend], device):
        if c.backend == backend and c.cell == cell and tag in str(c.settings.get("tags", "")).split(","):
            return suite, c
    raise _skip(f"the throughput suite has no {size} ({preset}/{tag}) {cell} case for {backend} on {device}")


def prepare_throughput(backend: str, cell: str, size: str, device: str, mode: str) -> Callable[[], Any]:
    """The callable the throughput suite times for this case and mode, compiled and warmed up."""
    if device == "cuda" and _no_cuda_driver():
        raise _skip(f"backend {backend} on cuda: no NVIDIA driver on this machine")
    suite, case = throughput_case(backend, cell, size, device)
    return _prepared(suite, case, backend, device, mode)


def _prepared(suite, case, backend: str, device: str, mode: str) -> Callable[[], Any]:
    """The suite's timed callable for ``case`` (its make_data, the backend's prepare_*), called once."""
    tp = sys.modules[type(suite).__module__]
    if not hasattr(tp, "make_data"):
        raise _skip("this checkout's throughput suite has no make_data()")
    b = get_backend(backend, device)
    spec = case.spec()
    low = tp.make_data(spec, case.batch, case.seq_len, SEED).cast(case.dtype or "float32")
    if mode == "fwd":
        fn = b.prepare_forward(spec, low.params, low.x, low.state)
    else:
        fn = b.prepare_train(spec, low.params, low.x, low.state, low.dy, low.d_state)
    fn()  # JIT compilation / autotuning / allocator growth happen here, not in the timed method
    return fn


def suite_rows(suite_name: str, case, preset: str = "smoke") -> List[Dict[str, Any]]:
    """Every row ``SUITE.run(case, ctx)`` yields for one case (the suite's own measurement)."""
    suite = get_suite(suite_name)
    return list(suite.run(case, run_context(preset)))


def pick(rows: List[Dict[str, Any]], metric: str, **match: Any) -> Optional[float]:
    """The value of the first ok row with ``metric`` whose extra matches ``match`` (None if none)."""
    for r in rows:
        if r.get("metric") != metric or r.get("status") != "ok" or r.get("value") is None:
            continue
        extra = r.get("extra") or {}
        if all(_same(extra.get(k, r.get(k)), v) for k, v in match.items()):
            return float(r["value"])
    return None


def why_missing(rows: List[Dict[str, Any]], metric: str) -> str:
    """Why ``pick(rows, metric)`` found nothing: the first such row's status and reason, or that none exists."""
    for r in rows:
        if r.get("metric") == metric:
            return f"{metric}: status {r.get('status')}: {r.get('reason') or 'no value'}"
    return f"the suite reported no {metric} row"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _cached(cache: Dict[Any, Any], key: Any) -> float:
    v = cache.get(key)
    if isinstance(v, str):
        raise _skip(v)
    if v is None:
        raise _skip(f"no value for {key!r} in this checkout/environment")
    return v


# -- throughput: time_ ---------------------------------------------------------------------------------

class _ThroughputTime:
    params = (BACKENDS, CELLS, SIZES, DEVICES)
    param_names = ("backend", "cell", "size", "device")
    timeout = 600  # first calls include JIT compilation (torch.compile, XLA) in setup
    mode = "fwd"

    def setup(self, backend: str, cell: str, size: str, device: str) -> None:
        self.fn = prepare_throughput(backend, cell, size, device, self.mode)


class TimeForward(_ThroughputTime):
    """One inference forward (seconds per call), device-synchronised inside the call."""

    mode = "fwd"

    def time_forward(self, backend, cell, size, device):
        self.fn()


class TimeTrain(_ThroughputTime):
    """One forward + backward with every gradient (seconds per call), device-synchronised."""

    mode = "train"

    def time_train(self, backend, cell, size, device):
        self.fn()


class TimeScan:
    """One call of the scan sweep's minGRU case at sequence length T (B·T fixed): the sequential forms against the
    parallel scans, as the throughput suite times them (seconds per call)."""

    params = (SCAN_BACKENDS, ["fwd", "train"], SCAN_T)
    param_names = ("backend", "mode", "seq_len")
    timeout = 600

    def setup(self, backend: str, mode: str, seq_len: int) -> None:
        suite = get_suite("throughput")
        case = next((c for c in suite.cases("quick", [backend], "cpu")
                     if c.backend == backend and c.seq_len == int(seq_len)
                     and "scan-T" in str(c.settings.get("tags", "")).split(",")), None)
        if case is None:
            raise _skip(f"the throughput suite has no scan-sweep case at T={seq_len} for {backend}")
        self.fn = _prepared(suite, case, backend, "cpu", mode)

    def time_scan(self, backend, mode, seq_len):
        self.fn()


class PeakMemTrain:
    """Peak host RSS of a process that prepares and runs a training step (CPU: host memory is the memory)."""

    params = (BACKENDS, CELLS, SIZES)
    param_names = ("backend", "cell", "size")
    timeout = 600

    def setup(self, backend, cell, size):
        self.fn = prepare_throughput(backend, cell, size, "cpu", "train")

    def peakmem_train(self, backend, cell, size):
        self.fn()


# -- throughput: track_ (the suite's own GFLOP/s and efficiencies) --------------------------------------

class TrackThroughput:
    """Achieved GFLOP/s and efficiency of the small LSTM case, as the throughput suite reports them."""

    params = (BACKENDS, ["fwd", "train"], DEVICES)
    param_names = ("backend", "mode", "device")
    timeout = 900
    METRICS = ("gflops", "eff_gemm", "eff_recurrent")

    def setup_cache(self):
        out: Dict[Any, Any] = {}
        for device in DEVICES:
            for backend in BACKENDS:
                try:
                    get_backend(backend, device)
                    _, case = throughput_case(backend, "lstm", "small", device)
                    rows = suite_rows("throughput", case)
                except NotImplementedError as e:
                    for m in self.METRICS:
                        for mode in ("fwd", "train"):
                            out[(backend, device, mode, m)] = str(e)
                    continue
                for m in self.METRICS:
                    for mode in ("fwd", "train"):
                        out[(backend, device, mode, m)] = pick(rows, m, mode=mode)
        return out

    def setup(self, cache, backend, mode, device):
        _cached(cache, (backend, device, mode, "gflops"))

    def track_gflops(self, cache, backend, mode, device):
        return _cached(cache, (backend, device, mode, "gflops"))
    track_gflops.unit = "GFLOP/s"

    def track_eff_gemm(self, cache, backend, mode, device):
        return _cached(cache, (backend, device, mode, "eff_gemm"))
    track_eff_gemm.unit = "fraction of GEMM GFLOP/s"

    def track_eff_recurrent(self, cache, backend, mode, device):
        return _cached(cache, (backend, device, mode, "eff_recurrent"))
    track_eff_recurrent.unit = "fraction of recurrent-GEMM GFLOP/s"


# -- gradients: decay rates (deterministic) ---------------------------------------------------------------

#: (cell, rho or None, gate bias, input scale) of the smoke sweep; label "cell/setting".
GRADIENT_SETTINGS = {
    "rnn_tanh/rho0.5-s0.1": ("rnn_tanh", 0.5, 0.0, 0.1),
    "rnn_tanh/rho1-s0.1": ("rnn_tanh", 1.0, 0.0, 0.1),
    "rnn_relu/rho0.5-s0.1": ("rnn_relu", 0.5, 0.0, 0.1),
    "lstm/b0-s0.1": ("lstm", None, 0.0, 0.1),
    "lstm/b3-s0.1": ("lstm", None, 3.0, 0.1),
    "gru/b0-s0.1": ("gru", None, 0.0, 0.1),
    "gru/b3-s0.1": ("gru", None, 3.0, 0.1),
}


def _gradient_cases(kind: str):
    """The gradients suite's float64 NumPy smoke cases of ``kind`` (``sweep``, ``gated``), or why there are none."""
    try:
        suite = get_suite("gradients")
        return [c for c in suite.cases("smoke", ["numpy"], "cpu")
                if c.settings.get("kind") == kind and c.dtype == "float64"]
    except Exception as e:  # noqa: BLE001
        return f"gradients suite unavailable: {e}"


class TrackGradients:
    """Fitted per-step decay rate of ‖∂L/∂h_{T−k}‖ (float64 NumPy, smoke preset), and failed checks."""

    params = (list(GRADIENT_SETTINGS),)
    param_names = ("setting",)
    timeout = 900

    def setup_cache(self):
        out: Dict[Any, Any] = {}
        cases = _gradient_cases("sweep")
        if isinstance(cases, str):
            return {"_skip": cases}
        failed = 0
        for cell in sorted({s[0] for s in GRADIENT_SETTINGS.values()}):
            case = next((c for c in cases if c.cell == cell), None)
            if case is None:
                continue
            rows = suite_rows("gradients", case)
            failed += sum(1 for r in rows if str(r.get("metric", "")).startswith("check_") and r.get("value") == 0.0)
            for label, (c, rho, bias, scale) in GRADIENT_SETTINGS.items():
                if c == cell:
                    out[label] = pick(rows, "decay_rate", rho=rho, gate_bias=bias, input_scale=scale)
        out["_failed_checks"] = failed
        return out

    def setup(self, cache, setting):
        if "_skip" in cache:
            raise _skip(cache["_skip"])
        _cached(cache, setting)

    def track_decay_rate(self, cache, setting):
        return _cached(cache, setting)
    track_decay_rate.unit = "per step"

    def track_failed_checks(self, cache, setting):
        return cache["_failed_checks"]
    track_failed_checks.unit = "checks"


class _GatedGradientTrack:
    """Gated linear cells (float64 NumPy, smoke preset), read from the gradients suite's rows. One track per
    class: asv skips only in ``setup``, so a class whose value can be missing for one cell (a curve that never
    forgets within T) must not share its setup with a value that is always there. asv shares one
    ``setup_cache`` (it keys the cache by where the function is defined) between the subclasses, so the cache
    holds every metric of ``METRICS``."""

    params = (GATED_CELLS,)
    param_names = ("cell",)
    timeout = 900
    METRICS = ("exact_product_rel_err", "forget_steps")
    metric = ""

    def setup_cache(self):
        out: Dict[Any, Any] = {}
        cases = _gradient_cases("gated")
        if isinstance(cases, str):
            return {"_skip": cases}
        for cell in GATED_CELLS:
            case = next((c for c in cases if c.cell == cell), None)
            rows = suite_rows("gradients", case) if case is not None else []
            for m in self.METRICS:
                v = pick(rows, m)
                out[(cell, m)] = v if v is not None else (
                    why_missing(rows, m) if case is not None else f"no gated-cell gradient case for {cell}")
        return out

    def setup(self, cache, cell):
        if "_skip" in cache:
            raise _skip(cache["_skip"])
        _cached(cache, (cell, self.metric))


class TrackGatedProductError(_GatedGradientTrack):
    """The worst relative distance of ‖∂L/∂h_{T−k}‖ from the exact product dh_T ⊙ Π a_t (rounding-level when
    right)."""

    metric = "exact_product_rel_err"

    def track_exact_product_rel_err(self, cache, cell):
        return _cached(cache, (cell, self.metric))
    track_exact_product_rel_err.unit = "relative"


class TrackGatedForgetting(_GatedGradientTrack):
    """The measured forgetting time: the first k at which ‖∂L/∂h_{T−k}‖ falls below ‖dh_T‖/e (skipped, with the
    suite's reason, for a cell whose curve stays above it for all T steps)."""

    metric = "forget_steps"

    def track_forget_steps(self, cache, cell):
        return _cached(cache, (cell, self.metric))
    track_forget_steps.unit = "steps"


# -- CTC: max errors against the float64 reference (deterministic) -----------------------------------------

class TrackCTC:
    """Worst CTC loss/gradient error of a backend against the float64 NumPy reference (smoke cases)."""

    params = (BACKENDS, ["float64", "float32"], DEVICES)
    param_names = ("backend", "dtype", "device")
    timeout = 900
    #: the gradient is judged relative in float64 and absolute in float32 (the suite's tolerances)
    GRAD_METRIC = {"float64": "grad_rel_err", "float32": "grad_abs_err"}

    def setup_cache(self):
        out: Dict[Any, Any] = {}
        for device in DEVICES:
            for backend in BACKENDS:
                try:
                    get_backend(backend, device)
                    suite = get_suite("ctc")
                    cases = [c for c in suite.cases("smoke", [backend], device)
                             if c.backend == backend and c.settings.get("case_class") not in ("tiny", "timing")]
                except NotImplementedError as e:
                    for dt in ("float64", "float32"):
                        out[(backend, device, dt, "loss")] = out[(backend, device, dt, "grad")] = str(e)
                    continue
                for dt in ("float64", "float32"):
                    rows = [r for c in cases if c.dtype == dt for r in suite_rows("ctc", c)]
                    for what, metric in (("loss", "loss_rel_err"), ("grad", self.GRAD_METRIC[dt])):
                        vals = [float(r["value"]) for r in rows if r.get("metric") == metric
                                and r.get("status") == "ok" and r.get("value") is not None]
                        out[(backend, device, dt, what)] = max(vals) if vals else \
                            f"the ctc suite reported no {metric} for {backend}/{dt} on {device}"
        return out

    def setup(self, cache, backend, dtype, device):
        _cached(cache, (backend, device, dtype, "loss"))

    def track_loss_max_rel_error(self, cache, backend, dtype, device):
        return _cached(cache, (backend, device, dtype, "loss"))
    track_loss_max_rel_error.unit = "relative"

    def track_grad_max_error(self, cache, backend, dtype, device):
        return _cached(cache, (backend, device, dtype, "grad"))
    track_grad_max_error.unit = "relative (float64) / absolute (float32)"


# -- memory: measured peak bytes of BPTT / RTRL / truncated BPTT --------------------------------------------

class TrackMemory:
    """Peak bytes of one gradient computation, measured by the memory suite in a fresh process.

    The case: the suite's T-sweep point with the smallest T for this backend and algorithm (smoke preset,
    else quick), ``impl`` = the backend's own.
    """

    params = (BACKENDS, ["bptt", "rtrl", "tbptt"])
    param_names = ("backend", "algorithm")
    timeout = 900

    @staticmethod
    def case_for(backend: str, algorithm: str):
        suite = get_suite("memory")
        for preset in ("smoke", "quick"):
            cs = [c for c in suite.cases(preset, [backend], "cpu")
                  if c.backend == backend and c.settings.get("algorithm") == algorithm
                  and c.settings.get("impl", "backend") == "backend" and c.settings.get("sweep") == "T"]
            if cs:
                return min(cs, key=lambda c: (c.seq_len, c.hidden_size)), preset
        raise _skip(f"the memory suite has no {algorithm} case for {backend}")

    def setup_cache(self):
        out: Dict[Any, Any] = {}
        for backend in BACKENDS:
            for alg in self.params[1]:
                try:
                    get_backend(backend, "cpu")
                    case, preset = self.case_for(backend, alg)
                    v = pick(suite_rows("memory", case, preset), "peak_bytes")
                    out[(backend, alg)] = v if v is not None else f"no peak_bytes measured for {case.name}"
                except NotImplementedError as e:
                    out[(backend, alg)] = str(e)
        return out

    def setup(self, cache, backend, algorithm):
        _cached(cache, (backend, algorithm))

    def track_peak_bytes(self, cache, backend, algorithm):
        return _cached(cache, (backend, algorithm))
    track_peak_bytes.unit = "bytes"
