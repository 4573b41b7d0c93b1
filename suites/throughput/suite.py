"""The throughput suite: inference forward and training forward+backward, timed per backend variant.

Presets (``cases`` is pure and cheap; nothing heavy is imported until ``run``):

``smoke``
    tiny shapes (H=32, B=8, T=20) for CI: every registered cell with the main backends, LSTM with every
    variant.
``quick``
    the default main job, sized for a 2-core CPU: one-factor-at-a-time sweeps of H, B and T around a
    centre point (B=32, T=50, I=H=128); LSTM gets all three sweeps, GRU and tanh-RNN the H and T sweeps,
    relu-RNN (and any plug-in cell) the centre only; plus the issue's reference case LSTM B=64 T=100
    I=H=256 (the performance target). Variants that declare ``sweep = "anchors"`` (torch-cell,
    torch-compile, jax-unroll8) run the LSTM centre point and the reference case only: their compile
    times (torch.compile, an 8× unrolled scan) would otherwise dominate the few minutes this preset may take.
``full``
    the anchors: PyTorch fastrnns' default (LSTM T=100 B=64 I=H=512), Baidu DeepBench's RNN shapes —
    on CUDA a selection of its training and inference sets (LSTM/GRU/vanilla), on the CPU its small
    shapes (LSTM H=256 T=150, the inference-device set) — plus everything in ``quick``.

Each case is checked against the NumPy reference (float64) before it is timed; see :func:`equivalence_error`.
Then ``prepare_forward``/``prepare_train`` are timed with :class:`harness.measure.timing.Timer` and the rows below
are yielded as each measurement finishes (``mode`` in ``extra`` is ``fwd`` or ``train``):

==================  ==========  ====================================================================
metric              unit        meaning
==================  ==========  ====================================================================
equiv_error         rel         relative L2 error against the reference (worst output/gradient)
ceiling_gflops      GFLOP/s     a GEMM ceiling of this framework (``kind`` in extra), once per process
compile_s           s           first call of the mode (includes JIT compilation)
fwd_ms / train_ms   ms          median time per call; samples in ms
fwd_ms_per_control  ratio       (CPU) median over adjacent pairs of (time / the control workload's time): the
(train_ms_...)                  timing in units of a fixed harness workload timed next to it, which a slow
                                spell of the machine moves far less than either time (``harness.measure.control``)
tokens_per_s        tokens/s    B·T / time
us_per_step         us          time / T
gflops              GFLOP/s     model GEMM FLOPs ``2·B·(I+H)·G·H·T·L`` (training: 3×) / time
gflops_deepbench    GFLOP/s     DeepBench's recurrent-GEMM-only count ``2·G·H²·B·T·L`` (training: 3×)
eff_gemm            ratio       gflops / the best square GEMM GFLOP/s (same framework, dtype, run)
eff_recurrent       ratio       gflops / the best of (the recurrent GEMM work's strategies, the square GEMM)
==================  ==========  ====================================================================
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from harness.core.errors import InputError, Unsupported
from suites.base import Case, RunContext, Suite, declared, wants_cell
from suites.equivalence import (CHECK_MAX_T, REL_TOL, CaseData, disagreement,  # noqa: F401 - the gate reads
                                equivalence_error, make_data)  # these from the throughput suite's module

#: Seconds of timed repeats per measurement, per preset (``--budget`` overrides).
BUDGET_S = {"smoke": 0.2, "quick": 0.3, "full": 1.0}
#: Backends when none are named: every built-in variant (the runner drops those not installed).
DEFAULT_BACKENDS = ("numpy", "torch", "torch-cell", "torch-compile", "jax", "jax-unroll8", "torch-pscan", "jax-pscan")
#: The scan sweep of the gated linear cells: T from 64 to 16384 at B·T = SCAN_TOKENS (quick: minGRU at H = 128;
#: full: every gated cell, and minGRU at H = 256 too).
SCAN_TOKENS = 16384
SCAN_T = {"quick": (64, 256, 1024, 4096, 16384), "full": (64, 256, 1024, 4096, 16384)}
MODES = ("fwd", "train")
#: An efficiency past 1 + this is flagged as a defect (``ceiling_defect``): the medians of two timings taken
#: side by side in one process on a shared 2-core machine differ by up to about this much.
EFF_MARGIN = 0.10
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
    from harness.core import cells
    order = ("lstm", "gru", "rnn_tanh", "rnn_relu")
    # The gated linear cells get their own sweep (sequential against parallel scan), not these shapes.
    known = cells.names(gated_linear=False)
    every = [c for c in order if c in known] + [c for c in known if c not in order]
    if preset == "smoke":
        shapes = [Shape(c, 32, 8, 20, tags=("smoke",), all_variants=(c == "lstm")) for c in every]
        # the gated cells at the same shape, and the scan sweep's two ends (B·T fixed)
        shapes += [Shape(c, 32, 8, 20, tags=("smoke", GATED_TAG)) for c in cells.names(gated_linear=True)]
        shapes += [Shape("mingru", 32, 256 // t, t, tags=("scan-T", GATED_TAG)) for t in (8, 128)]
    elif preset in ("quick", "full"):
        shapes = (_sweep("lstm", (128, 32, 50), hs=(64, 128, 256), bs=(8, 32, 64), ts=(25, 50, 100),
                         all_variants_centre=True)
                  + _gated_shapes(preset)
                  + [REFERENCE]
                  + _sweep("gru", (128, 32, 50), hs=(64, 128, 256), ts=(25, 100))
                  + _sweep("rnn_tanh", (128, 32, 50), hs=(64, 128, 256), ts=(25, 100))
                  + [s for c in every[3:] for s in _sweep(c, (128, 32, 50))])
        if preset == "full":
            shapes.append(FASTRNNS)
            if device == "cuda":
                shapes += _deepbench(DEEPBENCH_TRAIN_CUDA, "deepbench-train", MODES, 375)
                shapes += _deepbench(DEEPBENCH_INFER_CUDA, "deepbench-inference", ("fwd",), 375)
            else:
                shapes += _deepbench(DEEPBENCH_TRAIN_CPU, "deepbench-train", MODES, 150)
                shapes += _deepbench(DEEPBENCH_INFER_CPU, "deepbench-inference", ("fwd",), 150)
    else:
        raise InputError(f"preset: got {preset!r}; allowed for suite 'throughput': smoke, quick, full")
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


#: Every shape of a gated linear cell carries this tag: the shapes a ``sweep = "gated-linear"`` variant runs.
GATED_TAG = "gated"


def _gated_shapes(preset: str) -> List[Shape]:
    """The gated linear cells at the centre point (beside LSTM and GRU at the same H, B, T) and the scan sweep:
    T from 64 to 16384 at a fixed B·T (:data:`SCAN_TOKENS`), where the parallel scans meet the sequential forms."""
    from harness.core import cells
    gated = cells.names(gated_linear=True)
    out = [Shape(c, 128, 32, 50, tags=("centre", GATED_TAG)) for c in gated]
    sweep_cells = gated if preset == "full" else ("mingru",)
    for c in sweep_cells:
        out += [Shape(c, 128, SCAN_TOKENS // t, t, tags=("scan-T", GATED_TAG)) for t in SCAN_T[preset]]
    if preset == "full":
        out += [Shape("mingru", 256, SCAN_TOKENS // t, t, tags=("scan-T", GATED_TAG)) for t in SCAN_T[preset]]
    return out


def _anchors_only(name: str, device: str) -> bool:
    """Whether the backend declares itself a variant timed on the anchor shapes only (``sweep = "anchors"``)."""
    from implementations import registry
    info = registry.describe(name, device)
    return bool(info.available and info.capabilities.get("sweep") == "anchors")


# -- the suite ----------------------------------------------------------------------------------------

#: Processes per case (see ``ThroughputSuite.processes``) and the least timing budget one process gets.
PROCESSES = 5
MIN_PROCESS_BUDGET_S = 0.05
#: A slow case whose budget allowed fewer samples than this is topped up (within TOP_UP_MAX_S seconds).
MIN_SAMPLES = 5
TOP_UP_MAX_S = 3.0


def _measure(fn, budget_s: float):
    """Timer with the budget; if that gave fewer than MIN_SAMPLES samples (a slow call), take more
    samples with no further warm-up, when that costs at most TOP_UP_MAX_S, so that quartiles mean something."""
    from harness.measure.timing import Measurement, Timer

    m = Timer(fn, budget_s=budget_s, min_runs=MIN_SAMPLES).run()
    need = MIN_SAMPLES - m.n
    if need > 0 and m.number == 1 and need * m.median <= TOP_UP_MAX_S:
        more = Timer(fn, warmup=0, min_runs=need, max_runs=need, budget_s=need * m.median * 1.5 + 1e-3).run()
        m = Measurement(samples=list(m.samples) + list(more.samples), compile_s=m.compile_s, number=1,
                        stop_reason=f"{m.stop_reason}+top-up", total_s=m.total_s + more.total_s, warmup=m.warmup)
    return m


def _measure_paired(fn, budget_s: float):
    """On the CPU: ``fn`` timed in adjacent pairs with the harness's control workload over the whole budget
    (:class:`harness.measure.timing.PairedTimer`); returns the :class:`PairedMeasurement`."""
    from harness.measure.control import make_control
    from harness.measure.timing import PairedTimer

    return PairedTimer(fn, make_control(), budget_s=budget_s, min_pairs=MIN_SAMPLES, max_extra_s=TOP_UP_MAX_S).run()


def _backend(name: str, device: str, threads: int):
    """The registry's instance (one per process, kept alive: JIT caches and thread settings live with it)."""
    from implementations import registry
    return registry.instance(name, device, threads)


#: backend name -> reason: an Unsupported that says ``whole_backend`` (torch.compile failing on this platform)
#: skips the backend's remaining cases in this process at once.
_WHOLE_BACKEND_SKIP: Dict[str, str] = {}


def _skip_reason(case: Case, e: Exception, mode: Optional[str] = None) -> str:
    first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    reason = f"{first}" + (f" ({mode})" if mode else "")
    if getattr(e, "whole_backend", False):
        _WHOLE_BACKEND_SKIP[case.backend] = reason
    return reason


class ThroughputSuite(Suite):
    """Forward and training throughput of every backend variant on RNN/LSTM/GRU shapes."""

    name = "throughput"
    #: Independent processes per case (the runner's rounds): what lets ``compare`` judge two runs.
    processes = {"smoke": PROCESSES, "quick": PROCESSES, "full": PROCESSES}

    report_module = "suites.throughput.report"

    def exclusive(self, case: Case) -> bool:
        """On a cluster: whether this case needs its host to itself (see :meth:`suites.base.Suite.exclusive`)."""
        return True  # every case is timed

    def cases(self, preset: str, backends: Optional[List[str]] = None, device: str = "cpu") -> List[Case]:
        """Cases of ``preset`` for each backend name (see the module docstring for what each preset holds)."""
        self.check_args(preset, device)
        out: List[Case] = []
        from harness.core import cells
        names = list(dict.fromkeys(backends or DEFAULT_BACKENDS))
        anchors = {b: _anchors_only(b, device) for b in names}
        caps = {b: declared(b, device) for b in names}
        for shape in preset_shapes(preset, device):
            gated = shape.cell in cells.names() and cells.get(shape.cell).gated_linear
            for b in names:
                if not wants_cell(caps[b], shape.cell):
                    continue
                if gated:
                    # Once per code: torch's gated cells are torch-cell's step loop. The anchors rule does not apply:
                    # the sequential forms (torch-cell's loop, an unrolled scan) are what the scans are measured against.
                    same = (caps[b].get("measured_as") or {}).get("gated", b)
                    if same != b and same in names:
                        continue
                elif anchors[b] and not shape.all_variants:
                    continue
                out.append(Case(suite=self.name, name=shape.name, backend=b, device=device, cell=shape.cell,
                                layers=shape.layers, batch=shape.batch, seq_len=shape.seq_len,
                                input_size=shape.input_size, hidden_size=shape.hidden, dtype=shape.dtype,
                                settings={"tags": ",".join(shape.tags), "modes": ",".join(shape.modes)}))
        return out

    def run(self, case: Case, ctx: RunContext) -> Iterator[Dict[str, Any]]:
        """Check the variant against the reference, then time each mode; yields rows as they are measured."""
        from implementations import registry
        from harness.core.system import cpu_count

        spec = case.spec()
        dtype = case.dtype or "float32"
        modes = [m for m in (case.settings.get("modes") or "fwd,train").split(",") if m]
        budget = ctx.budget_s if ctx.budget_s is not None else BUDGET_S.get(ctx.preset, 0.3)
        # The budget is per measurement over all processes; each process takes its share (with a floor).
        budget = max(budget / max(int(ctx.processes or 1), 1), MIN_PROCESS_BUDGET_S)

        if case.backend in _WHOLE_BACKEND_SKIP:
            yield case.row("train_ms" if "train" in modes else "fwd_ms", None, "ms", status="skipped",
                           reason=_WHOLE_BACKEND_SKIP[case.backend])
            return
        threads = int(ctx.threads or cpu_count())
        try:
            backend = _backend(case.backend, case.device, threads)
        except registry.BackendError as e:
            yield case.row("fwd_ms", None, "ms", status="skipped", reason=str(e))
            return
        common = {"path": backend.path(), "threads": threads,
                  "prepare": "native" if getattr(backend, "prepares_natively", True)
                  else "default: _forward/_vjp on NumPy arrays (any conversion is timed)"}
        why_not = backend.supports(spec, dtype)
        if why_not:
            yield case.row("fwd_ms", None, "ms", status="skipped", reason=why_not, **common)
            return
        if spec.definition.gated_linear:
            common.update(_scan_extra(backend.scan_form, backend.framework, spec, case.batch, case.seq_len, dtype))

        # 1. equivalence with the reference, before any timing
        data = make_data(spec, case.batch, case.seq_len, ctx.seed)
        t_check = min(case.seq_len, CHECK_MAX_T)
        tol = REL_TOL[dtype]
        try:
            err, where, first = equivalence_error(backend, spec, data, dtype, t_check,
                                                  ref_key=(spec, case.batch, t_check, ctx.seed, dtype))
        except Unsupported as e:  # the backend says it cannot (e.g. torch.compile fails on this platform)
            reason = _skip_reason(case, e)
            yield case.row("fwd_ms", None, "ms", status="skipped", reason=reason, **common)
            return
        common["equiv_error"] = err
        check = {"tol": tol, "worst": where, "check_seq_len": t_check, **first}
        parts = check.pop("parts", {})
        if not err <= tol:  # also catches NaN
            yield case.row("equiv_error", err, "rel", status="error", parts=parts,
                           reason=disagreement(parts, tol, dtype), **common, **check)
            return
        yield case.row("equiv_error", err, "rel", **common, **check)

        # 2. timing, one mode at a time (before the ceilings: their large multi-threaded GEMMs would leave a
        #    fresh worker's threads in another state than the case itself does)
        low = data.cast(dtype)
        timed = []
        for mode in modes:
            try:
                if mode == "fwd":
                    fn = backend.prepare_forward(spec, low.params, low.x, low.state)
                else:
                    fn = backend.prepare_train(spec, low.params, low.x, low.state, low.dy, low.d_state)
                # On the CPU every sample sits next to one of the control workload (see harness.measure.control):
                # what compare judges two runs on. A GPU's time is not the CPU's, so there it is timed alone.
                pm = _measure_paired(fn, budget) if case.device == "cpu" else None
                m = pm.fn if pm is not None else _measure(fn, budget)
            except Unsupported as e:
                reason = _skip_reason(case, e, mode)
                yield case.row(f"{mode}_ms", None, "ms", status="skipped", reason=reason, mode=mode, **common)
                return
            yield from self._timing_rows(case, spec, mode, m, common)
            if pm is not None:
                from harness.measure.control import CONTROL_ID
                from harness.measure.records import PER_CONTROL
                yield case.row(f"{mode}_ms{PER_CONTROL}", pm.ratio, "ratio", samples=pm.ratios,
                               q25=float(np.percentile(pm.ratios, 25)), q75=float(np.percentile(pm.ratios, 75)),
                               n=len(pm.ratios), control=CONTROL_ID, control_ms=pm.control.median * 1e3,
                               control_number=pm.control.number, mode=mode, **common)
            timed.append((mode, m))

        # 3. GEMM ceilings of this framework (measured once per process and shape), then the efficiencies.
        #    Only in a case's first process: a ceiling describes the machine, not the code, compare does not judge
        #    it, and measuring it again in every process cost about half of a smoke run's time (time that buys
        #    more processes, which is what compare's power comes from). The efficiencies come from that process's
        #    own timing, so a timing and its ceiling still share a process.
        if ctx.process:
            return
        ceil = yield from self._ceilings(case, backend, dtype, budget, common)
        for mode, m in timed:
            yield from self._eff_rows(case, spec, mode, m, ceil, common)

    # -- helpers ------------------------------------------------------------------------------------
    def _ceilings(self, case: Case, backend, dtype: str, budget: float, common: dict):
        """Measure (or reuse) the three ceilings; yield rows for fresh ones; return {kind: Ceiling} or {}."""
        from harness.measure import ceilings

        try:
            fw = ceilings.framework_of(backend)
        except ceilings.CeilingError as e:
            yield case.row("ceiling_gflops", None, "GFLOP/s", status="error", reason=str(e), **common)
            return {}
        if fw is None:
            return {}
        try:
            got = ceilings.ceilings_for_case(fw, case.spec(), case.batch, case.seq_len, case.device, dtype,
                                             budget_s=min(budget, 0.5), backend=backend)
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
                               median_s=c.median_s, strategy=c.strategy,
                               candidates={k: v for k, v in c.candidates}, **common)
        return out

    def _timing_rows(self, case: Case, spec, mode: str, m, common: dict) -> Iterator[dict]:
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
        if db_flops > 0:  # a gated linear cell has no recurrent GEMM: nothing of DeepBench's count to report
            yield case.row("gflops_deepbench", db_flops / m.median / 1e9, "GFLOP/s", **rate(db_flops, 1e-9),
                           flops=db_flops, **kw)

    def _eff_rows(self, case: Case, spec, mode: str, m, ceil: dict, common: dict) -> Iterator[dict]:
        """eff_gemm and eff_recurrent of one timed mode against this process's ceilings (none: no rows)."""
        flops = spec.forward_flops(case.batch, case.seq_len) * (1.0 if mode == "fwd" else TRAIN_FLOP_FACTOR)
        s = np.asarray(m.samples, dtype=float)
        kw = dict(mode=mode, **common)
        gflops = flops / m.median / 1e9

        def rate(num, scale=1.0):
            return dict(samples=num / s * scale, q25=num / m.q75 * scale, q75=num / m.q25 * scale, n=m.n)
        if "gemm_square" in ceil:
            sq = ceil["gemm_square"]
            yield case.row("eff_gemm", gflops / sq.gflops, "ratio", **rate(flops, 1e-9 / sq.gflops),
                           ceiling_gflops=sq.gflops, ceiling_strategy=f"gemm_square {sq.strategy}@{sq.shape_str}",
                           **_defect(gflops / sq.gflops), **kw)
            # The same FLOPs cannot run faster than the framework's best GEMM rate: the recurrent ceiling is the
            # larger of the two. Same rate assumed for stacked layers (exact when I = H): layer 0's FLOPs.
            rc = max(ceil["recurrent"], sq, key=lambda c: c.gflops)
            yield case.row("eff_recurrent", gflops / rc.gflops, "ratio", **rate(flops, 1e-9 / rc.gflops),
                           ceiling_gflops=rc.gflops, ceiling_strategy=f"{rc.kind} {rc.strategy}@{rc.shape_str}",
                           **_defect(gflops / rc.gflops), **kw)


def _scan_extra(form: str, framework: Optional[str], spec, batch: int, seq_len: int, dtype: str) -> Dict[str, Any]:
    """The recurrence's cost model of one forward (every layer; :mod:`harness.core.scan_model`) beside the
    gates' GEMM FLOPs, for a gated linear cell's rows: what the form does, against which its speed is read."""
    from harness.core.scan_model import scan_cost
    c = scan_cost(form, seq_len, batch * spec.hidden_size, np.dtype(dtype).itemsize)
    L = spec.num_layers
    return {"scan_form": form, "scan_framework": framework, "scan_flops": c["flops"] * L, "scan_bytes": c["bytes"] * L, "scan_depth": c["depth"] * L,
            "gates_gemm_flops": spec.forward_flops(batch, seq_len)}


def _defect(eff: float) -> Dict[str, str]:
    """``{"ceiling_defect": why}`` when an efficiency is past 1 + :data:`EFF_MARGIN` (else {}): the ceiling was
    beaten, so it was not the fastest way to run that GEMM work, and the figure is a measurement defect."""
    if eff > 1.0 + EFF_MARGIN:
        return {"ceiling_defect": f"efficiency {eff:.2f} > 1 + {EFF_MARGIN:g} (noise margin): the implementation "
                                  "beat its ceiling, so the ceiling is not one; this figure is a measurement defect"}
    return {}


SUITE = ThroughputSuite()
