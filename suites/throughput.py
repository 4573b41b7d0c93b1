"""The throughput suite: inference forward and training forward+backward, timed per backend variant.

Presets (``cases`` is pure and cheap; nothing heavy is imported until ``run``):

``smoke``
    tiny shapes (H=32, B=8, T=20) for CI: every cell with the main backends, LSTM with every variant.
``quick``
    the default main job, sized for a 2-core CPU: one-factor-at-a-time sweeps of H, B and T around a
    centre point (B=32, T=50, I=H=128); LSTM gets all three sweeps, GRU and tanh-RNN the H and T sweeps,
    relu-RNN the centre only; plus the issue's reference case LSTM B=64 T=100 I=H=256 (the performance
    target). Secondary variants (torch-cell, torch-compile, jax-unroll8) run the LSTM centre point and
    the reference case only: their compile times (torch.compile, an 8× unrolled scan) would otherwise
    dominate the few minutes this preset may take.
``full``
    the anchors: PyTorch fastrnns' default (LSTM T=100 B=64 I=H=512), Baidu DeepBench's RNN shapes —
    on CUDA a selection of its training and inference sets (LSTM/GRU/vanilla), on the CPU its small
    shapes (LSTM H=256 T=150, the inference-device set) — plus everything in ``quick``.

Each case is checked against the NumPy reference (float64) before it is timed; see :func:`equivalence_error`.
Then ``prepare_forward``/``prepare_train`` are timed with :class:`harness.timing.Timer` and the rows below
are yielded as each measurement finishes (``mode`` in ``extra`` is ``fwd`` or ``train``):

==================  ==========  ====================================================================
metric              unit        meaning
==================  ==========  ====================================================================
equiv_error         rel         relative L2 error against the reference (worst output/gradient)
ceiling_gflops      GFLOP/s     a GEMM ceiling of this framework (``kind`` in extra), once per process
compile_s           s           first call of the mode (includes JIT compilation)
fwd_ms / train_ms   ms          median time per call; samples in ms
tokens_per_s        tokens/s    B·T / time
us_per_step         us          time / T
gflops              GFLOP/s     model GEMM FLOPs ``2·B·(I+H)·G·H·T·L`` (training: 3×) / time
gflops_deepbench    GFLOP/s     DeepBench's recurrent-GEMM-only count ``2·G·H²·B·T·L`` (training: 3×)
eff_gemm            ratio       gflops / large square GEMM GFLOP/s (same framework, dtype, run)
eff_recurrent       ratio       gflops / GFLOP/s of (hoisted input GEMM + T step GEMMs)
==================  ==========  ====================================================================
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from suites.base import Case, RunContext, Suite

#: Relative L2 tolerance of the equivalence check per dtype (float32 variant vs float64 reference).
REL_TOL = {"float32": 1e-4, "float64": 1e-9}
#: The equivalence check runs at most this many steps of a long case (the weights and batch stay the case's).
CHECK_MAX_T = 100
#: Seconds of timed repeats per measurement, per preset (``--budget`` overrides).
BUDGET_S = {"smoke": 0.2, "quick": 0.3, "full": 1.0}
#: Backends when none are named: every built-in variant (the runner drops those not installed).
DEFAULT_BACKENDS = ("numpy", "torch", "torch-cell", "torch-compile", "jax", "jax-unroll8")
#: Variants that only run on shapes tagged for all variants (the rest get the whole sweep).
SECONDARY = ("torch-cell", "torch-compile", "jax-unroll8")
MODES = ("fwd", "train")
#: Training is counted as 3× the forward FLOPs (forward + two GEMMs per forward GEMM in backward).
TRAIN_FLOP_FACTOR = 3.0


@dataclass(frozen=True)
class Shape:
    """One problem size of a preset. ``tags`` say which sweeps/anchors it belongs to."""

    cell: str
    hidden: int
    batch: int
    seq_len: int
    input: Optional[int] = None  # None: I = H
    layers: int = 1
    dtype: str = "float32"
    tags: Tuple[str, ...] = ()
    modes: Tuple[str, ...] = MODES
    all_variants: bool = False  # also run the secondary variants

    @property
    def input_size(self) -> int:
        return self.hidden if self.input is None else self.input

    @property
    def name(self) -> str:
        return (f"{self.cell}-L{self.layers}-B{self.batch}-T{self.seq_len}-I{self.input_size}-H{self.hidden}-"
                f"{self.dtype}")


def _sweep(cell: str, centre: Tuple[int, int, int], hs=(), bs=(), ts=(), all_variants_centre=False) -> List[Shape]:
    """Centre point (H, B, T) plus one-factor-at-a-time variations; I = H throughout."""
    H0, B0, T0 = centre
    out = [Shape(cell, H0, B0, T0, tags=("centre",), all_variants=all_variants_centre)]
    out += [Shape(cell, h, B0, T0, tags=("sweep-H",)) for h in hs if h != H0]
    out += [Shape(cell, H0, b, T0, tags=("sweep-B",)) for b in bs if b != B0]
    out += [Shape(cell, H0, B0, t, tags=("sweep-T",)) for t in ts if t != T0]
    return out


#: The issue's performance target: LSTM B=64 T=100 I=H=256 float32.
REFERENCE = Shape("lstm", 256, 64, 100, tags=("reference",), all_variants=True)
#: PyTorch benchmarks/fastrnns default: LSTM T=100 B=64 I=H=512.
FASTRNNS = Shape("lstm", 512, 64, 100, tags=("fastrnns",), all_variants=True)

# DeepBench (baidu-research/DeepBench code/kernels/rnn_problems.h): (H, B, T, cell), I = H, one layer.
DEEPBENCH_TRAIN_CUDA = [(1760, 16, 50, "rnn_tanh"), (1760, 128, 50, "rnn_tanh"), (2560, 64, 50, "rnn_tanh"),
                        (512, 64, 25, "lstm"), (1024, 128, 25, "lstm"), (2048, 64, 25, "lstm"),
                        (4096, 128, 25, "lstm"), (1536, 32, 50, "lstm"), (256, 16, 150, "lstm"),
                        (256, 64, 150, "lstm"), (512, 32, 1, "gru"), (2816, 32, 187, "gru"),
                        (1536, 32, 375, "gru"), (1024, 32, 1500, "gru")]
DEEPBENCH_INFER_CUDA = [(1024, 4, 25, "lstm"), (1536, 4, 50, "lstm"), (256, 1, 150, "lstm"),
                        (2816, 4, 187, "gru"), (2048, 1, 375, "gru")]
DEEPBENCH_TRAIN_CPU = [(256, 16, 150, "lstm"), (256, 32, 150, "lstm"), (256, 64, 150, "lstm")]
DEEPBENCH_INFER_CPU = [(256, 1, 150, "lstm"), (32, 1, 672, "rnn_tanh"), (64, 1, 96, "rnn_tanh")]


def _deepbench(rows, tag: str, modes: Tuple[str, ...], all_variants_max_t: int) -> List[Shape]:
    return [Shape(cell, h, b, t, tags=(tag,), modes=modes, all_variants=t <= all_variants_max_t)
            for h, b, t, cell in rows]


def preset_shapes(preset: str, device: str = "cpu") -> List[Shape]:
    """The shapes of a preset on a device (duplicates merged, tags united), in a stable order."""
    if preset == "smoke":
        shapes = [Shape(c, 32, 8, 20, tags=("smoke",), all_variants=(c == "lstm"))
                  for c in ("lstm", "gru", "rnn_tanh", "rnn_relu")]
    elif preset in ("quick", "full"):
        shapes = (_sweep("lstm", (128, 32, 50), hs=(64, 128, 256), bs=(8, 32, 64), ts=(25, 50, 100),
                         all_variants_centre=True)
                  + [REFERENCE]
                  + _sweep("gru", (128, 32, 50), hs=(64, 128, 256), ts=(25, 100))
                  + _sweep("rnn_tanh", (128, 32, 50), hs=(64, 128, 256), ts=(25, 100))
                  + _sweep("rnn_relu", (128, 32, 50)))
        if preset == "full":
            shapes.append(FASTRNNS)
            if device == "cuda":
                shapes += _deepbench(DEEPBENCH_TRAIN_CUDA, "deepbench-train", MODES, 375)
                shapes += _deepbench(DEEPBENCH_INFER_CUDA, "deepbench-inference", ("fwd",), 375)
            else:
                shapes += _deepbench(DEEPBENCH_TRAIN_CPU, "deepbench-train", MODES, 150)
                shapes += _deepbench(DEEPBENCH_INFER_CPU, "deepbench-inference", ("fwd",), 150)
    else:
        raise ValueError(f"preset: got {preset!r}; allowed for suite 'throughput': smoke, quick, full")
    merged: Dict[str, Shape] = {}
    for s in shapes:
        if s.name in merged:
            m = merged[s.name]
            merged[s.name] = Shape(m.cell, m.hidden, m.batch, m.seq_len, m.input, m.layers, m.dtype,
                                   tuple(dict.fromkeys(m.tags + s.tags)),
                                   tuple(x for x in MODES if x in m.modes or x in s.modes),
                                   m.all_variants or s.all_variants)
        else:
            merged[s.name] = s
    return list(merged.values())


def _backend_list(backends: Optional[Sequence[str]], device: str) -> List[str]:
    names = list(dict.fromkeys(backends or DEFAULT_BACKENDS))
    if device == "cuda":
        # cuDNN's nn.LSTM and ATen's native kernels are both "torch"; compare them side by side.
        if "torch" in names and "torch-native" not in names:
            names.insert(names.index("torch") + 1, "torch-native")
    else:
        names = [n for n in names if n != "torch-native"]  # native-vs-cuDNN only means something on CUDA
    return names


# -- equivalence check -------------------------------------------------------------------------------

@dataclass
class CaseData:
    """Seeded weights and inputs of one case, in float64 (the reference's precision)."""

    params: Any            # harness.params.Params, float64
    x: np.ndarray          # (T, B, I)
    state: Any             # (L, B, H) array, or (h, c) for LSTM
    dy: np.ndarray         # (T, B, H)
    d_state: Any           # like state

    def cast(self, dtype: str, seq_len: Optional[int] = None) -> "CaseData":
        """The same data in ``dtype`` (optionally only the first ``seq_len`` steps)."""
        def c(a):
            if a is None:
                return None
            if isinstance(a, tuple):
                return tuple(np.ascontiguousarray(p, dtype=dtype) for p in a)
            return np.ascontiguousarray(a, dtype=dtype)
        T = seq_len or self.x.shape[0]
        return CaseData(self.params.astype(dtype), c(self.x[:T]), c(self.state), c(self.dy[:T]), c(self.d_state))


def make_data(spec, batch: int, seq_len: int, seed: int) -> CaseData:
    """Weights from ``init_params(spec, seed)``; x, initial state and cotangents ~ N(0, 1) (state × 0.5)."""
    from harness.params import init_params

    params = init_params(spec, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed)
    shape = spec.state_shape(batch)
    x = rng.standard_normal((seq_len, batch, spec.input_size))

    def state():
        if spec.is_lstm:
            return (0.5 * rng.standard_normal(shape), 0.5 * rng.standard_normal(shape))
        return 0.5 * rng.standard_normal(shape)
    s0 = state()
    dy = rng.standard_normal((seq_len, batch, spec.hidden_size))
    return CaseData(params, x, s0, dy, state())


def _parts(y, final, grads=None) -> List[Tuple[str, np.ndarray]]:
    out = [("y", y)]
    out += [(f"final_state[{i}]", s) for i, s in enumerate(final)] if isinstance(final, tuple) \
        else [("final_state", final)]
    if grads is not None:
        out += [(f"d{n}", a) for n, a in grads.params.items()]
        out.append(("dx", grads.dx))
        ds = grads.dstate
        out += [(f"dstate[{i}]", s) for i, s in enumerate(ds)] if isinstance(ds, tuple) else [("dstate", ds)]
    return out


_REF_CACHE: Dict[tuple, tuple] = {}


def _reference(spec, data: CaseData, key: tuple):
    """Forward and vjp of the float64 NumPy reference (cached per worker process)."""
    if key not in _REF_CACHE:
        from implementations.numpy_backend import NumpyBackend
        ref = NumpyBackend()
        y, final = ref.forward(spec, data.params, data.x, data.state)
        g = ref.vjp(spec, data.params, data.x, data.state, data.dy, data.d_state)
        _REF_CACHE.clear()  # one shape at a time: cases of a shape run back to back, memory stays small
        _REF_CACHE[key] = (y, final, g)
    return _REF_CACHE[key]


def equivalence_error(backend, spec, data: CaseData, dtype: str, seq_len: int,
                      ref_key: Optional[tuple] = None) -> Tuple[float, str, Dict[str, float]]:
    """Worst relative L2 error of ``backend`` against the float64 reference, where it is, and first-call times.

    One forward and one vjp of ``backend`` in ``dtype`` on the first ``seq_len`` steps; the reference
    runs in float64 on the very same (already rounded) values, so only the arithmetic differs.
    Every output, final state and gradient is compared: ``‖a − r‖₂ / ‖r‖₂`` (absolute when ‖r‖ = 0).
    The third item holds the seconds of the variant's first ``forward`` and ``vjp`` calls
    (``check_fwd_s``, ``check_vjp_s``): for a JIT backend these include compiling the functions
    that the timed callables may reuse, so the timed ``compile_s`` alone can understate compilation.
    """
    low = data.cast(dtype, seq_len)
    ref_in = low.cast("float64")
    ry, rf, rg = _reference(spec, ref_in, ref_key or (spec, id(data), seq_len, dtype))
    t0 = time.perf_counter()
    y, final = backend.forward(spec, low.params, low.x, low.state)
    t1 = time.perf_counter()
    g = backend.vjp(spec, low.params, low.x, low.state, low.dy, low.d_state)
    times = {"check_fwd_s": t1 - t0, "check_vjp_s": time.perf_counter() - t1}
    worst, where = 0.0, ""
    for (name, a), (_, r) in zip(_parts(y, final, g), _parts(ry, rf, rg)):
        a = np.asarray(a, dtype=np.float64)
        if a.shape != r.shape:
            return math.inf, f"{name}: shape {a.shape}, reference {r.shape}", times
        denom = float(np.linalg.norm(r))
        err = float(np.linalg.norm(a - r)) / (denom if denom > 0 else 1.0)
        if not math.isfinite(err):
            return math.inf, f"{name}: non-finite values", times
        if err > worst:
            worst, where = err, name
    return worst, where, times


# -- the suite ----------------------------------------------------------------------------------------

#: A slow case whose budget allowed fewer samples than this is topped up (within TOP_UP_MAX_S seconds).
MIN_SAMPLES = 5
TOP_UP_MAX_S = 3.0


def _measure(fn, budget_s: float):
    """Timer with the budget; if that gave fewer than MIN_SAMPLES samples (a slow call), take more
    samples with no further warm-up, when that costs at most TOP_UP_MAX_S, so that quartiles mean something."""
    from harness.timing import Measurement, Timer

    m = Timer(fn, budget_s=budget_s, min_runs=MIN_SAMPLES).run()
    need = MIN_SAMPLES - m.n
    if need > 0 and m.number == 1 and need * m.median <= TOP_UP_MAX_S:
        more = Timer(fn, warmup=0, min_runs=need, max_runs=need, budget_s=need * m.median * 1.5 + 1e-3).run()
        m = Measurement(samples=list(m.samples) + list(more.samples), compile_s=m.compile_s, number=1,
                        stop_reason=f"{m.stop_reason}+top-up", total_s=m.total_s + more.total_s, warmup=m.warmup)
    return m


_BACKENDS: Dict[tuple, Any] = {}


def _backend(name: str, device: str, threads: int):
    """One instance per (backend, device, threads) and worker process, kept alive: its JIT caches and its
    thread setting (a threadpoolctl limiter for NumPy) live as long as the process."""
    from harness import backends as registry

    key = (name, device, threads)
    if key not in _BACKENDS:
        b = registry.get(name, device)
        with warnings.catch_warnings():
            # The runner has already set threads for this process (a JAX backend then warns that it
            # cannot change them again); a real mismatch is the runner's to report, once.
            warnings.simplefilter("ignore", RuntimeWarning)
            b.set_threads(threads)
        _BACKENDS[key] = b
    return _BACKENDS[key]


_COMPILE_FAILED: Dict[str, str] = {}  # backend name -> reason (once torch.compile fails, skip the rest fast)


class ThroughputSuite(Suite):
    """Forward and training throughput of every backend variant on RNN/LSTM/GRU shapes."""

    name = "throughput"

    def cases(self, preset: str, backends: Optional[List[str]] = None, device: str = "cpu") -> List[Case]:
        """Cases of ``preset`` for each backend name (see the module docstring for what each preset holds)."""
        self.check_preset(preset)
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device: got {device!r}; allowed: cpu, cuda")
        out: List[Case] = []
        for shape in preset_shapes(preset, device):
            for b in _backend_list(backends, device):
                if b in SECONDARY and not shape.all_variants:
                    continue
                out.append(Case(suite=self.name, name=shape.name, backend=b, device=device, cell=shape.cell,
                                layers=shape.layers, batch=shape.batch, seq_len=shape.seq_len,
                                input_size=shape.input_size, hidden_size=shape.hidden, dtype=shape.dtype,
                                settings={"tags": ",".join(shape.tags), "modes": ",".join(shape.modes)}))
        return out

    def run(self, case: Case, ctx: RunContext) -> Iterator[Dict[str, Any]]:
        """Check the variant against the reference, then time each mode; yields rows as they are measured."""
        from harness import backends as registry
        from implementations.base import cpu_count

        spec = case.spec()
        dtype = case.dtype or "float32"
        modes = [m for m in (case.settings.get("modes") or "fwd,train").split(",") if m]
        budget = ctx.budget_s if ctx.budget_s is not None else BUDGET_S.get(ctx.preset, 0.3)
        soft = case.backend == "torch-compile"  # a compile failure is a property of the platform: skip

        if soft and case.backend in _COMPILE_FAILED:
            yield case.row("train_ms" if "train" in modes else "fwd_ms", None, "ms", status="skipped",
                           reason=_COMPILE_FAILED[case.backend])
            return
        threads = int(ctx.threads or cpu_count())
        try:
            backend = _backend(case.backend, case.device, threads)
        except registry.BackendError as e:
            yield case.row("fwd_ms", None, "ms", status="skipped", reason=str(e))
            return
        common = {"path": backend.path(), "threads": threads}

        # 1. equivalence with the reference, before any timing
        data = make_data(spec, case.batch, case.seq_len, ctx.seed)
        t_check = min(case.seq_len, CHECK_MAX_T)
        tol = REL_TOL[dtype]
        try:
            err, where, first = equivalence_error(backend, spec, data, dtype, t_check,
                                           ref_key=(spec, case.batch, t_check, ctx.seed, dtype))
        except Exception as e:  # noqa: BLE001 - only torch-compile is softened; others propagate
            if not soft:
                raise
            reason = f"torch.compile failed here: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            _COMPILE_FAILED[case.backend] = reason
            yield case.row("fwd_ms", None, "ms", status="skipped", reason=reason, **common)
            return
        common["equiv_error"] = err
        check = {"tol": tol, "worst": where, "check_seq_len": t_check, **first}
        if not err <= tol:  # also catches NaN
            yield case.row("equiv_error", err, "rel", status="error",
                           reason=f"disagrees with the NumPy reference: relative error {err:.3g} in {where} "
                                  f"> tolerance {tol:g} ({dtype}); not timed", **common, **check)
            return
        yield case.row("equiv_error", err, "rel", **common, **check)

        # 2. GEMM ceilings of this framework (measured once per process and shape)
        ceil = yield from self._ceilings(case, backend, dtype, budget, common)

        # 3. timing, one mode at a time
        low = data.cast(dtype)
        for mode in modes:
            try:
                if mode == "fwd":
                    fn = backend.prepare_forward(spec, low.params, low.x, low.state)
                else:
                    fn = backend.prepare_train(spec, low.params, low.x, low.state, low.dy, low.d_state)
                m = _measure(fn, budget)
            except Exception as e:  # noqa: BLE001
                if not soft:
                    raise
                reason = f"torch.compile failed here ({mode}): {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                _COMPILE_FAILED[case.backend] = reason
                yield case.row(f"{mode}_ms", None, "ms", status="skipped", reason=reason, mode=mode, **common)
                return
            yield from self._timing_rows(case, spec, mode, m, ceil, common)

    # -- helpers ------------------------------------------------------------------------------------
    def _ceilings(self, case: Case, backend, dtype: str, budget: float, common: dict):
        """Measure (or reuse) the three ceilings; yield rows for fresh ones; return {kind: Ceiling} or {}."""
        from harness import ceilings

        fw = ceilings.framework_of(getattr(backend, "family", ""))
        if fw is None:
            return {}
        try:
            got = ceilings.ceilings_for_case(fw, case.spec(), case.batch, case.seq_len, case.device, dtype,
                                             budget_s=min(budget, 0.5))
        except Exception as e:  # noqa: BLE001 - a ceiling failure must not cost the case its timings
            yield case.row("ceiling_gflops", None, "GFLOP/s", status="error",
                           reason=f"GEMM ceiling failed: {type(e).__name__}: {e}", framework=fw, **common)
            return {}
        out = {}
        for c, fresh in got:
            out[c.kind] = c
            if fresh:
                yield case.row("ceiling_gflops", c.gflops, "GFLOP/s",
                               samples=[c.flops / s / 1e9 for s in c.samples_s],
                               kind=c.kind, framework=fw, gemm_shape=c.shape_str, gemm_flops=c.flops,
                               median_s=c.median_s, **common)
        return out

    def _timing_rows(self, case: Case, spec, mode: str, m, ceil: dict, common: dict) -> Iterator[dict]:
        B, T = case.batch, case.seq_len
        factor = 1.0 if mode == "fwd" else TRAIN_FLOP_FACTOR
        flops = spec.forward_flops(B, T) * factor
        db_flops = spec.deepbench_flops(B, T) * factor
        s = np.asarray(m.samples, dtype=float)
        kw = dict(mode=mode, **common)
        yield case.row("compile_s", m.compile_s, "s", **kw)
        yield case.row(f"{mode}_ms", m.median * 1e3, "ms", samples=s * 1e3, q25=m.q25 * 1e3, q75=m.q75 * 1e3,
                       n=m.n, **kw)
        # Rates: the q25 of a rate is the rate at the q75 time.
        def rate(num, scale=1.0):
            return dict(samples=num / s * scale, q25=num / m.q75 * scale, q75=num / m.q25 * scale, n=m.n)
        yield case.row("tokens_per_s", B * T / m.median, "tokens/s", **rate(B * T), **kw)
        yield case.row("us_per_step", m.median / T * 1e6, "us", samples=s / T * 1e6, q25=m.q25 / T * 1e6,
                       q75=m.q75 / T * 1e6, n=m.n, **kw)
        gflops = flops / m.median / 1e9
        yield case.row("gflops", gflops, "GFLOP/s", **rate(flops, 1e-9), flops=flops, **kw)
        yield case.row("gflops_deepbench", db_flops / m.median / 1e9, "GFLOP/s", **rate(db_flops, 1e-9),
                       flops=db_flops, **kw)
        if "gemm_square" in ceil:
            sq = ceil["gemm_square"].gflops
            yield case.row("eff_gemm", gflops / sq, "ratio", **rate(flops, 1e-9 / sq), ceiling_gflops=sq, **kw)
            # Same rate assumed for stacked layers (exact when I = H): the ceiling's FLOPs are layer 0's.
            rc = ceil["recurrent"].gflops
            yield case.row("eff_recurrent", gflops / rc, "ratio", **rate(flops, 1e-9 / rc), ceiling_gflops=rc, **kw)


SUITE = ThroughputSuite()
