"""The memory suite: what BPTT, RTRL and truncated BPTT cost in memory and time, measured against theory.

Every case is one point ``(backend, cell, algorithm, B, T, H)`` (and I: = H, except in the fixed-I sweeps, whose
settings carry ``fixed_input``); its ``run`` yields

=====================  =======  ==============================================================================
metric                 unit     meaning
=====================  =======  ==============================================================================
peak_bytes             B        peak bytes of one gradient computation, measured in a fresh process
                                (:mod:`harness.measure.memory`); extra: ``theory_bytes``, ``ratio`` (measured/theory),
                                ``method``, ``estimate``, ``algorithm``, ``truncation``, ``impl``, ``scope``
time_per_step_us       us       median time of one gradient computation / steps (:class:`harness.measure.timing.Timer`;
                                RTRL is timed over ``timed_steps`` steps, its per-step cost does not depend on T)
rtrl_gemm_efficiency   ratio    NumPy RTRL only: GEMM FLOP/s achieved (``rtrl_flops_per_step`` / time per step)
                                over the NumPy 1024³ GEMM ceiling (same dtype, BLAS threads), the two timed in
                                alternation round by round; median of the per-round ratios
time_exponent_pair     exponent NumPy RTRL at the largest H of an H sweep: log(t_H / t_h) / log(H / h) per round,
                                with the next smaller H = h timed in alternation in the same process; median
tbptt_grad_rel_diff    rel      tbptt(k) only: relative L2 distance of its parameter gradient from BPTT's
                                (the bias of truncation, reported, not hidden)
rtrl_bptt_time_ratio   ratio    gated linear cells, NumPy, a case of its own (``kind="time_ratio"``): RTRL time
                                per step / BPTT time per step, one row per RTRL form (extra ``form`` ``step``,
                                ``chunk`` 1; ``block``, ``chunk`` RTRL_BLOCK); median of the per-round ratios
                                (``samples``), the three timed in alternation in one process; extra: each one's
                                µs per step (median, range), the bytes/FLOPs model below, the rates it implies
=====================  =======  ==============================================================================

The gated linear cells (``mingru``, ``minlstm``, ``rglru``) get their own points on the NumPy reference: a T sweep
(BPTT, RTRL in blocks — what the backend runs — and tBPTT(k), which :func:`implementations.numpy.gated_linear.vjp`
runs chunk by chunk, so ``impl="chunked"`` measures the backend's own), an H sweep at a fixed input size
(:data:`FIXED_I`; their RTRL memory is O(B·P) with P = G·H·(I+1), so ∝ H there; the LSTM's RTRL beside it, ∝
H²·(H + I + 1)), and the time-ratio case. Their theory is :mod:`suites.memory.theory`'s counts of the reference's
arrays. The other backends (torch, torch-cell, jax) are left out of these points: they measure the reference's RTRL.

Bytes model of the time ratio (per step; :func:`suites.memory.theory.gated_step_costs`, counted from the code,
each pass one read or one write of every element; m = B·G·H·(I+1) the influence, p = G·H·(I+1), W = G·H·I,
s the item size): per-step RTRL makes 11 passes over m every step (scale M; per sequence: outer product into a
buffer, add into M, multiply by the cotangent into the buffer, add into the accumulator) and its one-step GEMM
reads all of W; block RTRL makes the same 11 passes of m, plus 4 of p, once per block of K steps (÷ K per step)
and runs its outer products as GEMMs (``2·B·W + 4·B·p`` FLOPs per step); both write and read their
``(k, B, H)`` block buffers. BPTT writes and reads its stored ``(T, B, H)`` arrays, O(B·G·H) per step, reads x
twice and writes dx, and runs three GEMMs over all T (forward, weight gradient, dx: ``6·B·W`` FLOPs per step).
Per-step RTRL is therefore bound by the bandwidth of its passes over M (``11·m·s`` bytes per step) where BPTT is
bound by its GEMMs; the block form divides the passes by K and keeps BPTT's FLOPs.

and, last for every backend, a ``summary`` case derives from the rows already written to this run
(read back with :func:`harness.measure.records.scan` from ``ctx.run_dir``; nothing is re-measured, and without a
run directory the summary is skipped):

- ``exponent_mem_T`` — slope of log(peak) vs log(T) over the T sweep (BPTT ≈ 1, RTRL ≈ 0);
- ``exponent_mem_H`` — slope of log(peak) vs log(H) over the H sweep at H ≥ 32 (RTRL ≈ 3, BPTT ≈ 1);
- ``exponent_time_H`` — slope of log(time per step) vs log(H) between the two largest H (RTRL → 4, BPTT → 2);
  for NumPy RTRL it is the side-by-side ``time_exponent_pair`` of the largest-H case (``method`` says which;
  ``exponent_separate`` keeps the slope between the two separate cases); ``exponent_all`` in extra is the fit
  over every H ≥ 32;
- ``crossover_T`` — per H: the length T* where BPTT's peak passes RTRL's, from BPTT's peaks at two lengths
  (a line ``a + b·T``) and RTRL's peak: ``T* = (R − a)/b``; ``theory_T`` beside it, ``extrapolated`` when T*
  lies outside the measured lengths.

Every derived row carries ``fit_range``, ``n_points`` and the ``target`` interval from the issue.

Presets (float64 throughout: RTRL is the exact-gradient reference):
``smoke`` seconds — rnn_tanh, H ≤ 16, three lengths. ``quick`` a few minutes on 2 cores — rnn_tanh full
sweeps (T 200..1600 at H=16, B=8; H 16..256 at B=1 and B=8), LSTM and GRU T sweeps (H=16, B=8) and
H sweeps 16..256 at B=1; torch and JAX: a BPTT T sweep 200..1600 at H=64, B=8 (and RTRL at one point).
``full`` — T to 3200 and H to 256 at B=1 (to 128 or 64 at B=8), every backend, and the GPU
(``--device cuda``: torch and JAX only; NumPy is CPU-only).
Gated linear cells (NumPy): ``smoke`` every cell's T sweep at H=8, B=2, minGRU's fixed-I sweep H 32..128 at
I=16, a time ratio at H=I=16; ``quick`` minGRU's T sweep 200..1600 at H=64, B=8, its fixed-I sweep H 32..512 at
I=64, B=1, the LSTM's RTRL at H 32..128, I=64, B=1, and minGRU's time ratio at H=I=256, B=1, T=200; ``full``
all three cells (T to 3200), the LSTM to H=256, and every cell's time ratio.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from harness.core.errors import Unsupported
from harness.core.spec import check_positive_int
from suites.base import Case, RunContext, Suite, wants_cell

DEFAULT_BACKENDS = ("numpy", "torch", "torch-cell", "jax")
BUDGET_S = {"smoke": 0.05, "quick": 0.15, "full": 1.0}
TARGETS = {("exponent_mem_T", "bptt"): (0.9, 1.1), ("exponent_mem_T", "rtrl"): (-0.1, 0.1),
           ("exponent_mem_H", "rtrl"): (2.7, 3.3), ("exponent_time_H", "rtrl"): (3.5, None),
           ("exponent_mem_T", "tbptt"): (None, None)}
#: The gated linear cells' own targets where they differ (see :func:`target`): their RTRL memory is O(B·P), ∝ H
#: at fixed I; its time per step is ∝ H too, but the per-block NumPy calls bend the slope at small H: no target.
GATED_TARGETS = {("exponent_mem_H", "rtrl"): (0.9, 1.1), ("exponent_time_H", "rtrl"): (None, None)}
FRAMEWORK_T = (200, 400, 800, 1600)  # quick preset: the T sweep of torch/JAX (rnn_tanh, H=64, B=8)
RTRL_SAMPLES = 5       # fewest timed rounds of every NumPy RTRL point (see MemorySuite._rtrl_timing)
RTRL_MAX_SAMPLES = 25  # most rounds: cheap points take more while within RTRL_BUDGET_S
RTRL_BUDGET_S = 3.0
EFFICIENCY_H = 128  # the H at which the issue asks for RTRL's GEMM efficiency
RATIO_ROUNDS = 5       # fewest alternating rounds of a gated RTRL/BPTT time-ratio case (MemorySuite._time_ratio)
RATIO_MAX_ROUNDS = 15  # most rounds, while within RATIO_BUDGET_S
RATIO_BUDGET_S = {"smoke": 0.2, "quick": 4.0, "full": 10.0}
FIXED_I = 64           # the input size of the fixed-I H sweeps (gated cells, and the LSTM beside them)


def target(metric: str, algorithm: Optional[str], cell: Optional[str], fixed_input: Optional[int] = None
           ) -> Tuple[Optional[float], Optional[float]]:
    """The issue's target interval of a derived exponent: by metric and algorithm, and for the gated linear cells
    (:data:`harness.core.cells.GATED_LINEAR_CELLS`) their own where :data:`GATED_TARGETS` has one. A classic
    cell's H exponents at a fixed input size have none: its RTRL memory ∝ H²·(H + I + 1) has the local slope
    2 + H/(H + I + 1), between 2 and 3 (the row's ``theory_exponent`` says which); the targets are for I = H."""
    from harness.core.cells import GATED_LINEAR_CELLS
    if cell in GATED_LINEAR_CELLS:
        if (metric, algorithm) in GATED_TARGETS:
            return GATED_TARGETS[(metric, algorithm)]
    elif fixed_input is not None and metric in ("exponent_mem_H", "exponent_time_H"):
        return (None, None)
    return TARGETS.get((metric, algorithm), (None, None))


@dataclass(frozen=True)
class Point:
    """One measurement point of a preset."""

    sweep: str        # "T" or "H"
    cell: str
    batch: int
    seq_len: int
    hidden: int
    algorithm: str
    truncation: Optional[int] = None
    impl: str = "backend"
    layers: int = 1
    pair_hidden: Optional[int] = None  # RTRL at the largest H: also time this H, alternating (side-by-side slope)
    input: Optional[int] = None  # a fixed input size I (features); None: I = H, as the classic sweeps have it

    def __post_init__(self) -> None:
        if self.input is not None:
            check_positive_int("Point.input", self.input, "features; None: I = H")

    @property
    def input_size(self) -> int:
        """I of the case: the fixed input size, else H."""
        return self.hidden if self.input is None else self.input

    @property
    def name(self) -> str:
        alg = self.algorithm + (f"{self.truncation}" if self.truncation else "") + \
            ("-chunked" if self.impl == "chunked" else "")
        fixed = "" if self.input is None else f"-I{self.input}"
        return (f"{self.sweep}sweep-{self.cell}-L{self.layers}-B{self.batch}-T{self.seq_len}-H{self.hidden}{fixed}"
                f"-{alg}")


@dataclass(frozen=True)
class RatioPoint:
    """A gated cell's RTRL/BPTT time-ratio case: BPTT, per-step RTRL and block RTRL timed in alternation."""

    cell: str
    batch: int
    seq_len: int
    hidden: int
    input: int

    @property
    def name(self) -> str:
        return f"ratio-{self.cell}-B{self.batch}-T{self.seq_len}-H{self.hidden}-I{self.input}-rtrl-vs-bptt"


def _points(preset: str) -> List[Point]:
    """Every NumPy point of a preset (other backends take the subset they offer, see :func:`_for_backend`)."""
    P: List[Point] = []

    def t_sweep(cell, H, B, Ts, k, rtrl_max_T=None):
        for T in Ts:
            P.append(Point("T", cell, B, T, H, "bptt"))
            if rtrl_max_T is None or T <= rtrl_max_T:  # RTRL's peak is flat in T; its run time is not
                P.append(Point("T", cell, B, T, H, "rtrl"))
            P.append(Point("T", cell, B, T, H, "tbptt", k, "chunked"))

    def h_sweep(cell, Hs, B, T_pair):
        for H in Hs:
            for T in T_pair:  # BPTT at two lengths: the line a + b·T behind the crossover T*
                P.append(Point("H", cell, B, T, H, "bptt"))
            P.append(Point("H", cell, B, T_pair[0], H, "rtrl",
                           pair_hidden=Hs[-2] if (H == Hs[-1] and len(Hs) > 1) else None))

    def gated_t_sweep(cell, H, B, Ts, k):
        # tBPTT through the backend: gated_linear.vjp(truncation=k) is itself chunked (k steps stored at a time)
        for T in Ts:
            P.append(Point("T", cell, B, T, H, "bptt"))
            P.append(Point("T", cell, B, T, H, "rtrl"))
            P.append(Point("T", cell, B, T, H, "tbptt", k, "chunked"))

    def fixed_i_sweep(cell, Hs, B, T_pair, I, bptt=True):
        # H at a fixed input size: RTRL's peak is then ∝ H for a gated cell (O(B·P), P = G·H·(I+1)), against
        # H²·(H + I) for a classic one; BPTT at two lengths gives the crossover T*, as in h_sweep
        for H in Hs:
            if bptt:
                for T in T_pair:
                    P.append(Point("H", cell, B, T, H, "bptt", input=I))
            P.append(Point("H", cell, B, T_pair[0], H, "rtrl", input=I))

    if preset == "smoke":
        t_sweep("rnn_tanh", 8, 1, (10, 20, 40), 5)
        h_sweep("rnn_tanh", (8, 16), 1, (10, 20))
        _smoke_other_cells(P, ("rnn_tanh",))
        # the gated linear cells: a T sweep each, and minGRU's fixed-I H sweep at the two smallest H the
        # summary fits (H >= 32); gated RTRL is O(B·P) per step, milliseconds here
        # (lengths from 40: RTRL's block buffers grow with T up to one block of RTRL_BLOCK = 32 steps, then stay)
        for cell in _gated():
            gated_t_sweep(cell, 8, 2, (40, 80, 160), 20)
        fixed_i_sweep("mingru", (32, 64, 128), 1, (40, 80), 16)
    elif preset == "quick":
        # B = 8 on the T sweeps: the per-step storage then dominates the fixed part (parameter gradient,
        # buffers) already at T = 200, so the fitted slope measures the T-dependence, not the intercept.
        t_sweep("rnn_tanh", 16, 8, (200, 400, 800, 1600), 50, rtrl_max_T=800)
        for cell in ("lstm", "gru"):
            t_sweep(cell, 16, 8, (200, 800, 1600), 50, rtrl_max_T=800)
        # H up to 256: RTRL's time per step only approaches its H^4 law once the J·M GEMMs (inner dimension H)
        # run near the BLAS's full rate. Reference run, 2 cores, fraction of the GEMM ceiling at H = 64 / 128 /
        # 256: 0.25-0.53 / 0.59-0.71 / 0.70-0.82, so the slope from 64 to 128 (3.0-3.4) is not yet H^4's;
        # from 128 to 256 it is 3.6-3.9.
        h_sweep("rnn_tanh", (16, 32, 64, 128, 256), 1, (10, 40))
        h_sweep("rnn_tanh", (16, 32, 64, 128, 256), 8, (10, 40))
        for cell in ("lstm", "gru"):
            h_sweep(cell, (16, 32, 64, 128, 256), 1, (10, 40))
        # minGRU: T sweep at H=64, B=8 (per-step storage well above the fixed part, as for the classic cells);
        # H sweep at I = 64, B = 1, RTRL at T = 40 (one full block of RTRL_BLOCK = 32 steps and a short one),
        # BPTT at 40 and 160 (the crossover lies between); the LSTM's RTRL at the same fixed I beside it
        gated_t_sweep("mingru", 64, 8, (200, 400, 800, 1600), 50)
        fixed_i_sweep("mingru", (32, 64, 128, 256, 512), 1, (40, 160), FIXED_I)
        fixed_i_sweep("lstm", (32, 64, 128), 1, (10,), FIXED_I, bptt=False)
    else:
        for B in (1, 8):
            t_sweep("rnn_tanh", 16, B, (200, 400, 800, 1600, 3200), 50)
            h_sweep("rnn_tanh", (16, 32, 64, 128) + ((256,) if B == 1 else ()), B, (10, 100))
            for cell in ("lstm", "gru"):
                t_sweep(cell, 16, B, (200, 400, 800, 1600, 3200), 50)
                h_sweep(cell, (16, 32, 64) + ((128, 256) if B == 1 else ()), B, (10, 100))
            P.append(Point("T", "lstm", B, 200, 32, "rtrl", layers=2))
            P.append(Point("T", "lstm", B, 400, 32, "rtrl", layers=2))
            P.append(Point("T", "lstm", B, 200, 32, "bptt", layers=2))
            P.append(Point("T", "lstm", B, 400, 32, "bptt", layers=2))
        for cell in _gated():
            gated_t_sweep(cell, 64, 8, (200, 400, 800, 1600, 3200), 50)
            fixed_i_sweep(cell, (32, 64, 128, 256, 512), 1, (40, 160), FIXED_I)
        fixed_i_sweep("lstm", (32, 64, 128, 256), 1, (10,), FIXED_I, bptt=False)
    return P


def _ratio_points(preset: str) -> List[RatioPoint]:
    """The gated cells' RTRL/BPTT time-ratio cases of a preset (NumPy reference only)."""
    if preset == "smoke":
        return [RatioPoint("mingru", 1, 40, 16, 16)]
    if preset == "quick":
        return [RatioPoint("mingru", 1, 200, 256, 256)]
    return [RatioPoint(c, 1, 200, 256, 256) for c in _gated()]


def _gated() -> Tuple[str, ...]:
    from harness.core.cells import GATED_LINEAR_CELLS
    return GATED_LINEAR_CELLS


def _smoke_other_cells(P: List[Point], done: Sequence[str]) -> None:
    """Smoke: every registered cell not swept above gets a short T sweep (BPTT, RTRL, chunked tBPTT)."""
    from harness.core import cells
    for cell in cells.names(gated_linear=False):
        if cell in done:
            continue
        for T in (10, 20):
            P.append(Point("T", cell, 1, T, 8, "bptt"))
            P.append(Point("T", cell, 1, T, 8, "rtrl"))
            P.append(Point("T", cell, 1, T, 8, "tbptt", 5, "chunked"))


def _for_backend(backend: str, preset: str, device: str) -> List[Point]:
    """The points of ``backend``, from what it declares: the reference gets the whole grid; any other backend
    a BPTT T sweep of its own (and RTRL where it offers it); a backend whose memory is another's
    (``measured_as("memory")``) gets none when that one runs too (decided in :meth:`MemorySuite.cases`)."""
    from harness.core import cells
    from implementations import registry
    info = registry.describe(backend, device)
    if not info.available:
        # The runner records one skipped row per case with the reason: give it the smoke points to say it on.
        return _points("smoke")[:2] if preset == "smoke" else _points(preset)[:2]
    caps = info.capabilities
    if caps.get("reference"):
        return _points(preset)
    offered = tuple(caps.get("algorithms") or ("bptt",))
    supported = [c for c in cells.names(gated_linear=False) if c in (caps.get("cells") or ())]
    cell0 = "rnn_tanh" if "rnn_tanh" in supported else (supported[0] if supported else "rnn_tanh")
    if not wants_cell(caps, cell0):
        return []  # a variant of the gated linear cells alone (a parallel scan): the reference measures those
    if preset == "smoke":
        # A fresh framework process costs seconds per point: two short BPTT points of one supported cell, one of
        # every other cell (an unsupported one is skipped at once, with its reason, nothing spawned).
        # H=64, B=8: peaks of hundreds of kB, well above the allocator's page granularity (at H=16, B=4 they were
        # a few 4 KiB pages and the fitted slope meant nothing).
        out = [Point("T", cell0, 8, T, 64, "bptt") for T in (20, 40)]
        out += [Point("T", c, 8, 20, 64, "bptt") for c in cells.names(gated_linear=False) if c != cell0]
        return out
    if preset == "quick":
        # quick: other frameworks get a BPTT T sweep of their own at H=64, B=8 — on NumPy's H=16 points their
        # peaks are 2-5 MB, where the allocator's granularity bends the slope (torch's high-water mark gave
        # 1.19 from T=200 to 400 there; 1.04 at H=64) — and RTRL, where offered, at one short point (JAX's
        # forward mode costs one tangent per parameter: minutes beyond H=16, T=200)
        out = [Point("T", cell0, 8, T, 64, "bptt") for T in FRAMEWORK_T]
        if "rtrl" in offered:
            out.append(Point("T", cell0, 8, 200, 16, "rtrl"))
        return out
    # full: the reference's grid where offered, without the gated cells' points and the fixed-I sweeps (those
    # measure the reference's own RTRL; JAX's forward-mode RTRL of a gated cell costs a tangent per parameter)
    return [p for p in _points(preset) if p.algorithm in offered and p.impl != "chunked"
            and p.cell not in _gated() and p.input is None]


class MemorySuite(Suite):
    """BPTT vs RTRL vs truncated BPTT: peak memory and time against theory; fitted exponents, T*."""

    name = "memory"
    timeout_s = {"smoke": 120.0, "quick": 300.0, "full": 3600.0}

    report_module = "suites.memory.report"

    def exclusive(self, case: Case) -> bool:
        """On a cluster: whether this case needs its host to itself (see :meth:`suites.base.Suite.exclusive`)."""
        return True  # every case is timed (time per step) beside its memory

    def cases(self, preset: str, backends: Optional[List[str]] = None, device: str = "cpu") -> List[Case]:
        """One case per point and backend; then one ``summary`` case per backend, last."""
        from implementations import registry
        self.check_args(preset, device)
        names = list(dict.fromkeys(backends or DEFAULT_BACKENDS))
        out: List[Case] = []
        summaries: List[str] = []
        for b in names:
            info = registry.describe(b, device)
            same = (info.capabilities.get("measured_as") or {}).get("memory", b)
            if same != b and same in names:
                continue  # its memory behaviour is that backend's, measured there
            pts = _for_backend(b, preset, device)
            for p in pts:
                settings = {"sweep": p.sweep, "algorithm": p.algorithm, "truncation": p.truncation, "impl": p.impl}
                if p.pair_hidden and info.capabilities.get("reference"):
                    settings["pair_hidden"] = p.pair_hidden
                if p.input is not None:
                    settings["fixed_input"] = p.input  # groups the sweep apart from an I = H sweep (see _key)
                out.append(Case(suite=self.name, name=p.name, backend=b, device=device, cell=p.cell,
                                layers=p.layers, batch=p.batch, seq_len=p.seq_len, input_size=p.input_size,
                                hidden_size=p.hidden, dtype="float64", settings=settings))
            if info.available and info.capabilities.get("reference"):
                for q in _ratio_points(preset):
                    out.append(Case(suite=self.name, name=q.name, backend=b, device=device, cell=q.cell, layers=1,
                                    batch=q.batch, seq_len=q.seq_len, input_size=q.input, hidden_size=q.hidden,
                                    dtype="float64", settings={"kind": "time_ratio", "algorithm": "rtrl",
                                                               "chunk": _rtrl_block()}))
            if pts:
                summaries.append(b)
        for b in summaries:
            out.append(Case(suite=self.name, name=f"summary-{b}", backend=b, device=device,
                            settings={"kind": "summary", "family": b}))
        return out

    # -- running --------------------------------------------------------------------------------------
    def run(self, case: Case, ctx: RunContext) -> Iterator[Dict[str, Any]]:
        if case.settings.get("kind") == "summary":
            yield from self._summary(case, ctx)
            return
        if case.settings.get("kind") == "time_ratio":
            yield from self._time_ratio(case, ctx)
            return
        from harness.measure.memory import make_request, measure_peak
        from implementations import registry
        from suites.equivalence import REL_TOL, disagreement, equivalence_error, make_data
        from suites.memory.theory import theory_bytes
        s = case.settings
        alg, k, impl = s["algorithm"], s.get("truncation"), s.get("impl", "backend")
        common = {"algorithm": alg, "truncation": k, "impl": impl, "sweep": s.get("sweep")}
        spec = case.spec()
        be = registry.instance(case.backend, case.device, ctx.threads)
        why_not = be.supports(spec, case.dtype, alg)
        if why_not:
            yield case.row("peak_bytes", None, "B", status="skipped", reason=why_not, **common)
            return
        if not be.reference:
            # Checked before it is measured: the same outputs and gradients as the reference (float64).
            t_check = min(case.seq_len, 20)
            data = make_data(spec, case.batch, t_check, ctx.seed)
            err, where, info = equivalence_error(be, spec, data, case.dtype, t_check, algorithm=alg,
                                                 truncation=None if k is None else min(k, t_check))
            tol = REL_TOL[case.dtype]
            if not err <= tol:
                yield case.row("equiv_error", err, "rel", status="error", tol=tol, worst=where, parts=info["parts"],
                               reason=disagreement(info["parts"], tol, case.dtype, "not measured"), **common)
                return
            yield case.row("equiv_error", err, "rel", tol=tol, worst=where, check_seq_len=t_check, **common)
        req = make_request(case.backend, case.device, case.cell, case.layers, case.batch, case.seq_len,
                           case.input_size, case.hidden_size, case.dtype, alg, k, impl, seed=ctx.seed)
        res = measure_peak(req, timeout_s=240.0, threads=ctx.threads)
        theory = theory_bytes(spec, case.seq_len, case.batch, case.dtype, alg, k)
        peak = res.get("peak_bytes")
        extra = {key: res.get(key) for key in ("method", "estimate", "scope")}
        if isinstance(res.get("peak_runs"), list):  # a probe of several runs (vmhwm): each run's peak, bytes
            extra["peak_runs"] = res["peak_runs"]
        extra.update({key: v for key, v in res.items() if key.endswith("_bytes") and key not in ("peak_bytes",)})
        extra.update(theory_bytes=theory, ratio=(peak / theory if (peak is not None and theory) else None))
        yield case.row("peak_bytes", peak, "B", status=res.get("status", "error"),
                       reason=res.get("reason", ""), **common, **extra)
        yield from self._timing(case, ctx, common)

    def _timing(self, case: Case, ctx: RunContext, common: dict) -> Iterator[Dict[str, Any]]:
        from harness.measure.timing import Timer
        spec = case.spec()
        alg, k, impl = common["algorithm"], common["truncation"], common["impl"]
        B = case.batch
        from harness.core.params import init_params
        params = init_params(spec, seed=ctx.seed, dtype=case.dtype)
        steps = _timed_steps(spec, alg, case.seq_len)
        x, dy = _inputs(spec, B, steps, case.dtype, ctx.seed)
        from implementations import registry
        be = registry.instance(case.backend, case.device, ctx.threads)
        if be.reference and alg == "rtrl" and spec.cell in _gated():
            yield from self._gated_rtrl_timing(case, ctx, common, spec, params, x, dy)
            return
        if be.reference and alg == "rtrl":
            yield from self._rtrl_timing(case, ctx, common, spec, params, x, dy)
            return
        try:
            if be.reference and impl == "chunked" and spec.cell in _fused():
                from implementations.numpy import rtrl as numpy_rtrl
                fn = lambda: numpy_rtrl.tbptt_chunked_vjp(spec, params, x, None, dy, None, k)  # noqa: E731
            elif alg == "bptt":
                fn = be.prepare_train(spec, params, x, None, dy, None)
            else:
                be.vjp(spec, params, x, None, dy, None, algorithm=alg, truncation=k)  # compile outside the timer
                fn = lambda: be.vjp(spec, params, x, None, dy, None, algorithm=alg, truncation=k)  # noqa: E731
            budget = ctx.budget_s if ctx.budget_s is not None else BUDGET_S.get(ctx.preset, 0.3)
            m = Timer(fn, warmup=1, min_runs=3, budget_s=budget).run()
        except Unsupported as e:
            yield case.row("time_per_step_us", None, "us", status="skipped", reason=str(e), **common)
            return
        per = [v / steps * 1e6 for v in m.samples]
        yield case.row("time_per_step_us", m.median / steps * 1e6, "us", samples=per, timed_steps=steps,
                       compile_s=m.compile_s, **common)
        if alg == "tbptt" and impl == "chunked":
            yield from self._tbptt_bias(case, be, spec, params, ctx, common)

    def _rtrl_timing(self, case: Case, ctx: RunContext, common: dict, spec, params, x, dy
                     ) -> Iterator[Dict[str, Any]]:
        """NumPy RTRL: time per step, GEMM efficiency and (largest H) the side-by-side H slope.

        Everything a ratio is taken of is timed in alternation in this one process — the RTRL call, the
        1024³ GEMM ceiling and, with ``pair_hidden``, the RTRL call at the next smaller H — round by round
        (order rotating), and each ratio is formed inside its round. A shared machine's speed drifts by
        20 % and more between cases; ratios of samples taken seconds apart do not see that drift.
        """
        from implementations.numpy import rtrl as numpy_rtrl
        B, steps = case.batch, x.shape[0]
        rng = np.random.default_rng(0)
        a = rng.standard_normal((1024, 1024)).astype(case.dtype)
        out = np.empty_like(a)
        fns = {"rtrl": lambda: numpy_rtrl.rtrl_grads(spec, params, x, None, dy, None),
               "gemm": lambda: np.matmul(a, a, out=out)}
        small = case.settings.get("pair_hidden")
        if small:
            import dataclasses
            from harness.core.params import init_params
            fixed = case.settings.get("fixed_input")  # I = H, as the sweep, unless the sweep holds I fixed
            s_spec = dataclasses.replace(spec, input_size=int(fixed or small), hidden_size=int(small))
            s_params = init_params(s_spec, seed=ctx.seed, dtype=case.dtype)
            s_steps = _timed_steps(s_spec, "rtrl", case.seq_len)
            sx, sdy = _inputs(s_spec, B, s_steps, case.dtype, ctx.seed)
            fns["small"] = lambda: numpy_rtrl.rtrl_grads(s_spec, s_params, sx, None, sdy, None)
        t = _alternating(fns, RTRL_SAMPLES, max_rounds=RTRL_MAX_SAMPLES, budget_s=RTRL_BUDGET_S)
        compile_s = t.pop("_first")["rtrl"]
        per = [v / steps * 1e6 for v in t["rtrl"]]
        yield case.row("time_per_step_us", float(np.median(per)), "us", samples=per, timed_steps=steps,
                       compile_s=compile_s, **common)
        flops = numpy_rtrl.rtrl_flops_per_step(spec, B)
        ach = [flops / (v / steps) / 1e9 for v in t["rtrl"]]
        ceil = [2 * 1024 ** 3 / v / 1e9 for v in t["gemm"]]
        eff = [u / c for u, c in zip(ach, ceil)]
        yield case.row("rtrl_gemm_efficiency", float(np.median(eff)), "ratio", samples=eff,
                       achieved_gflops=float(np.median(ach)), ceiling_gflops=float(np.median(ceil)),
                       ceiling="numpy square GEMM 1024x1024x1024, same dtype and BLAS threads, timed in "
                               "alternation with the RTRL samples (efficiency per round, median)", **common)
        if small:
            H, h = spec.hidden_size, int(small)
            ex = [math.log((vb / steps) / (vs / s_steps)) / math.log(H / h) for vb, vs in zip(t["rtrl"], t["small"])]
            yield case.row("time_exponent_pair", float(np.median(ex)), "exponent", samples=ex, fit_range=[h, H],
                           pair_hidden=h, method="side by side: both H timed in alternation in one process",
                           **common)

    def _gated_rtrl_timing(self, case: Case, ctx: RunContext, common: dict, spec, params, x, dy
                           ) -> Iterator[Dict[str, Any]]:
        """NumPy RTRL of a gated linear cell: the parameter gradient and dstate alone, in blocks of
        :data:`~implementations.numpy.gated_linear.RTRL_BLOCK` steps (what the backend's ``algorithm="rtrl"``
        runs besides its BPTT pass for dx, and what ``peak_memory`` measures); no GEMM-efficiency row (its GEMMs
        have inner size RTRL_BLOCK·B, the influence's passes are memory-bound)."""
        from harness.measure.timing import Timer
        from implementations.numpy import gated_linear as gl
        steps = x.shape[0]
        fn = lambda: gl.rtrl(spec, params, x, None, dy, None, chunk=gl.RTRL_BLOCK)  # noqa: E731
        budget = ctx.budget_s if ctx.budget_s is not None else BUDGET_S.get(ctx.preset, 0.3)
        m = Timer(fn, warmup=1, min_runs=3, budget_s=budget).run()
        per = [v / steps * 1e6 for v in m.samples]
        yield case.row("time_per_step_us", m.median / steps * 1e6, "us", samples=per, timed_steps=steps,
                       compile_s=m.compile_s, chunk=gl.RTRL_BLOCK, **common)

    def _time_ratio(self, case: Case, ctx: RunContext) -> Iterator[Dict[str, Any]]:
        """RTRL/BPTT time per step of a gated linear cell (NumPy reference): BPTT (``gated_linear.vjp``, dx
        included), per-step RTRL (``chunk=1``) and block RTRL (``chunk=RTRL_BLOCK``) timed in alternation in this
        one process, round by round, each ratio formed inside its round; beside it the bytes and FLOPs per step
        of :func:`suites.memory.theory.gated_step_costs` (the module docstring)."""
        from harness.core.params import init_params
        from implementations import registry
        from implementations.numpy import gated_linear as gl
        from suites.memory.theory import gated_step_costs
        K = gl.RTRL_BLOCK
        forms = (("step", 1), ("block", K))
        base = {"algorithm": "rtrl", "truncation": None, "impl": "backend", "sweep": None}
        spec = case.spec()
        be = registry.instance(case.backend, case.device, ctx.threads)
        why_not = None
        if not be.reference:
            why_not = f"backend {case.backend!r}: the RTRL/BPTT time ratio is timed on the NumPy reference only"
        elif spec.cell not in _gated():
            why_not = f"cell {spec.cell!r}: the time-ratio case is for the gated linear cells ({', '.join(_gated())})"
        else:
            why_not = be.supports(spec, case.dtype, "rtrl")
        if why_not:
            for form, chunk in forms:
                yield case.row("rtrl_bptt_time_ratio", None, "ratio", status="skipped", reason=why_not, form=form,
                               chunk=chunk, **base)
            return
        B, T = case.batch, case.seq_len
        params = init_params(spec, seed=ctx.seed, dtype=case.dtype)
        x, dy = _inputs(spec, B, T, case.dtype, ctx.seed)
        fns = {"bptt": lambda: gl.vjp(spec, params, x, None, dy, None)}
        for form, chunk in forms:
            fns[form] = (lambda c: lambda: gl.rtrl(spec, params, x, None, dy, None, chunk=c))(chunk)
        # the forms must compute the same gradient (exact in float64), or the ratio compares different work
        ref = fns["bptt"]().params.flat()
        diffs = {form: float(np.linalg.norm(fns[form]()[0].flat() - ref) / max(np.linalg.norm(ref), 1e-300))
                 for form, _ in forms}
        budget = RATIO_BUDGET_S.get(ctx.preset, RATIO_BUDGET_S["quick"])
        t = _alternating(fns, RATIO_ROUNDS, max_rounds=RATIO_MAX_ROUNDS, budget_s=budget)
        t.pop("_first")
        us = {n: [v / T * 1e6 for v in t[n]] for n in fns}
        costs = gated_step_costs(spec, B, np.dtype(case.dtype).itemsize, K)
        bptt_med = float(np.median(us["bptt"]))
        for form, chunk in forms:
            ratios = [r / b for r, b in zip(us[form], us["bptt"])]
            med = float(np.median(us[form]))
            c, cb = costs[form], costs["bptt"]
            yield case.row(
                "rtrl_bptt_time_ratio", float(np.median(ratios)), "ratio", samples=ratios, form=form, chunk=chunk,
                rounds=len(ratios), rtrl_us_per_step=med, rtrl_us_per_step_range=[min(us[form]), max(us[form])],
                bptt_us_per_step=bptt_med, bptt_us_per_step_range=[min(us["bptt"]), max(us["bptt"])],
                model_bytes_per_step=c["bytes"], bptt_model_bytes_per_step=cb["bytes"],
                model_bytes_ratio=c["bytes"] / cb["bytes"], model_flops_per_step=c["flops"],
                bptt_model_flops_per_step=cb["flops"], influence_bytes=c["influence_bytes"],
                rtrl_model_gbps=c["bytes"] / (med * 1e-6) / 1e9, bptt_model_gbps=cb["bytes"] / (bptt_med * 1e-6) / 1e9,
                rtrl_model_gflops=c["flops"] / (med * 1e-6) / 1e9,
                bptt_model_gflops=cb["flops"] / (bptt_med * 1e-6) / 1e9, grad_rel_diff=diffs[form],
                method="BPTT, per-step and block RTRL timed in alternation in one process, ratio per round; "
                       "BPTT includes dx, RTRL the parameter gradient and dstate only", **base)

    def _tbptt_bias(self, case, be, spec, params, ctx, common) -> Iterator[Dict[str, Any]]:
        """How far tbptt(k)'s parameter gradient is from BPTT's (one full-length computation, float64)."""
        rng = np.random.default_rng(ctx.seed + 2)
        T, B = case.seq_len, case.batch
        x = rng.standard_normal((T, B, spec.input_size))
        dy = rng.standard_normal((T, B, spec.hidden_size))
        full = be.vjp(spec, params, x, None, dy, None).params.flat()
        cut = be.vjp(spec, params, x, None, dy, None, algorithm="tbptt", truncation=common["truncation"]).params.flat()
        d = float(np.linalg.norm(cut - full) / max(np.linalg.norm(full), 1e-300))
        yield case.row("tbptt_grad_rel_diff", d, "rel", **common)

    # -- derived rows -----------------------------------------------------------------------------------
    def _summary(self, case: Case, ctx: RunContext) -> Iterator[Dict[str, Any]]:
        backend = case.backend
        if not ctx.run_dir:
            yield case.row("summary", None, "", status="skipped", reason="no run directory to read the rows from")
            return
        from harness.measure.records import scan
        rows, _, _, _ = scan(ctx.run_dir)
        rows = [r for r in rows if r.get("suite") == self.name and r.get("status") == "ok"
                and r.get("backend") == backend and r.get("value") is not None]
        yield from derive(rows, case)


def _fit(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Least-squares slope of log(y) on log(x); None with fewer than two distinct x."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ok = (xs > 0) & (ys > 0)
    xs, ys = xs[ok], ys[ok]
    if len(np.unique(xs)) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _key(r: dict) -> Tuple:
    e = r.get("extra") or {}
    return (r["backend"], r["cell"], r.get("layers"), r["batch"], e.get("algorithm"), e.get("truncation"),
            e.get("impl"))


def _fixed_input(r: dict) -> Optional[int]:
    """The fixed input size of a fixed-I sweep's row, None for the I = H sweeps (appended last to the group key,
    so the groups of the I = H sweeps are what they were)."""
    return (r.get("extra") or {}).get("fixed_input")


def derive(rows: List[dict], case: Case) -> Iterator[Dict[str, Any]]:
    """Exponents and crossovers from measured rows (see the module docstring)."""
    from harness.measure.records import make_row
    groups: Dict[Tuple, Dict[str, List[dict]]] = {}
    for r in rows:
        sweep = (r.get("extra") or {}).get("sweep")
        if r["metric"] in ("peak_bytes", "time_per_step_us", "time_exponent_pair") and sweep in ("T", "H"):
            groups.setdefault(_key(r) + (sweep, _fixed_input(r)), {}).setdefault(r["metric"], []).append(r)

    def out(key, metric, value, unit, hidden_size=None, seq_len=None, **extra):
        backend, cell, layers, batch, alg, k, impl = key[:7]
        fixed = key[8] if len(key) > 8 else None
        fields = {"suite": case.suite, "case": case.name, "backend": backend, "variant": backend,
                  "device": case.device, "dtype": "float64", "cell": cell, "layers": layers, "batch": batch,
                  "hidden_size": hidden_size, "seq_len": seq_len, "input_size": fixed}
        lo, hi = target(metric, alg, cell, fixed)
        if fixed is not None:
            extra["fixed_input"] = fixed
        return make_row(fields, metric, value, unit, algorithm=alg, truncation=k, impl=impl,
                        target_lo=lo, target_hi=hi, **extra)

    def theory_slope(rs, x):
        """The same fit over the rows' theory bytes: the exponent theory predicts over these very points."""
        pts = [(r[x], (r.get("extra") or {}).get("theory_bytes")) for r in rs]
        pts = [p for p in pts if p[1]]
        return _fit([p[0] for p in pts], [p[1] for p in pts]) if len(pts) == len(rs) else None

    for key, by in sorted(groups.items(), key=lambda kv: str(kv[0])):
        sweep = key[7]
        mem = by.get("peak_bytes", [])
        tim = by.get("time_per_step_us", [])
        if sweep == "T":
            pts = sorted((r["seq_len"], r["value"]) for r in mem)
            e = _fit([p[0] for p in pts], [p[1] for p in pts])
            if e is not None:
                yield out(key, "exponent_mem_T", e, "exponent", fit_range=[pts[0][0], pts[-1][0]], n_points=len(pts),
                          hidden_size=mem[0]["hidden_size"], theory_exponent=theory_slope(mem, "seq_len"))
        else:
            # Memory vs H: at one T per algorithm (RTRL's T; BPTT's shorter T), H >= 32.
            T0 = min(r["seq_len"] for r in mem) if mem else None
            sel = [r for r in mem if r["seq_len"] == T0 and r["hidden_size"] >= 32]
            pts = sorted((r["hidden_size"], r["value"]) for r in sel)
            e = _fit([p[0] for p in pts], [p[1] for p in pts])
            if e is not None:
                yield out(key, "exponent_mem_H", e, "exponent", fit_range=[pts[0][0], pts[-1][0]], n_points=len(pts),
                          seq_len=T0, theory_exponent=theory_slope(sel, "hidden_size"))
            T0t = min(r["seq_len"] for r in tim) if tim else None
            pts = sorted((r["hidden_size"], r["value"]) for r in tim if r["seq_len"] == T0t and r["hidden_size"] >= 32)
            pair = max(by.get("time_exponent_pair", []), key=lambda r: r["hidden_size"], default=None)
            if len(pts) >= 2:
                e_last = _fit([p[0] for p in pts[-2:]], [p[1] for p in pts[-2:]])
                common = dict(exponent_all=_fit([p[0] for p in pts], [p[1] for p in pts]),
                              all_range=[pts[0][0], pts[-1][0]])
                if pair is not None and pair.get("value") is not None and pair["hidden_size"] == pts[-1][0]:
                    # the side-by-side slope (both H timed in alternation) is the one the drift of a shared
                    # machine cannot bend; the slope between the two separate cases is kept beside it
                    yield out(key, "exponent_time_H", pair["value"], "exponent",
                              fit_range=pair["extra"].get("fit_range"), n_points=2, method="side by side",
                              exponent_separate=e_last, **common)
                else:
                    yield out(key, "exponent_time_H", e_last, "exponent", fit_range=[pts[-2][0], pts[-1][0]],
                              n_points=2, method="separate cases", **common)
    # Crossover T* per (backend, cell, batch, H): BPTT line vs RTRL level (the summary's rows are one backend's).
    bptt: Dict[Tuple, List[Tuple[int, float, float]]] = {}
    rtrl: Dict[Tuple, dict] = {}
    for r in rows:
        e = r.get("extra") or {}
        if r["metric"] != "peak_bytes" or e.get("sweep") != "H":
            continue
        k = (r["cell"], r.get("layers"), r["batch"], r["hidden_size"], e.get("fixed_input"))
        if e.get("algorithm") == "bptt":
            bptt.setdefault(k + (r["backend"],), []).append((r["seq_len"], r["value"], e.get("theory_bytes")))
        elif e.get("algorithm") == "rtrl":
            rtrl[k] = r
    for k6, pts in sorted(bptt.items(), key=lambda kv: str(kv[0])):
        k = k6[:5]
        if k not in rtrl or len({p[0] for p in pts}) < 2:
            continue
        pts.sort()
        (t1, m1, th1), (t2, m2, th2) = pts[0], pts[-1]
        b = (m2 - m1) / (t2 - t1)
        a = m1 - b * t1
        R = rtrl[k]["value"]
        Rth = (rtrl[k].get("extra") or {}).get("theory_bytes")
        t_star = (R - a) / b if b > 0 else None
        t_th = None
        if th1 and th2 and Rth:
            bt = (th2 - th1) / (t2 - t1)
            t_th = (Rth - (th1 - bt * t1)) / bt if bt > 0 else None
        key = (k6[5], k[0], k[1], k[2], "bptt_vs_rtrl", None, "backend", "H", k[4])
        yield out(key, "crossover_T", t_star, "steps", hidden_size=k[3], theory_T=t_th,
                  extrapolated=bool(t_star is None or not (t1 <= t_star <= t2)), bptt_bytes_per_step=b,
                  bptt_intercept_bytes=a, rtrl_peak_bytes=R, rtrl_backend=rtrl[k]["backend"],
                  fit_range=[t1, t2])


def _fused():
    from implementations.numpy.backend import FUSED_CELLS
    return FUSED_CELLS


def _rtrl_block() -> int:
    from implementations.numpy.gated_linear import RTRL_BLOCK
    return RTRL_BLOCK


def _timed_steps(spec, alg: str, seq_len: int) -> int:
    """Steps one timed call runs: the whole sequence, except RTRL, whose per-step cost does not depend on T
    (a fixed number of steps, enough that the set-up — allocating and zeroing M — is a small part)."""
    if alg != "rtrl":
        return seq_len
    if spec.cell in _gated():
        # gated RTRL costs O(B·P) per step: the whole sequence, rounded up to whole blocks (a short last block
        # moves the influence as often as a full one) and at least four
        K = _rtrl_block()
        return max(4 * K, -(-seq_len // K) * K)
    H = spec.hidden_size
    return 16 if H <= 32 else (8 if H <= 64 else (4 if H <= 128 else 2))


def _inputs(spec, batch: int, steps: int, dtype: str, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """x ``(steps, B, I)`` and dy ``(steps, B, H)`` of a timing, seeded."""
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((steps, batch, spec.input_size)).astype(dtype)
    dy = rng.standard_normal((steps, batch, spec.hidden_size)).astype(dtype)
    return x, dy


def _alternating(fns: Dict[str, Any], rounds: int, max_rounds: Optional[int] = None,
                 budget_s: float = 0.0, rewarm_below_s: float = 2.0) -> Dict[str, Any]:
    """Seconds per call of each callable, timed round by round in rotating order (one warm-up call each).

    At least ``rounds`` rounds; more, up to ``max_rounds``, while the rounds so far took less than
    ``budget_s`` (cheap points get more rounds: a shared machine's speed swings by 2x within seconds).
    A callable whose warm-up took under ``rewarm_below_s`` gets an untimed call right before each timed
    one: a switch costs something — after a 2-thread OpenBLAS GEMM its threads spin on for a while, and
    RTRL timed right after it measured 1.5x slower (157 vs 104 ms, rnn_tanh H=128) than after itself.
    Returns ``{name: [seconds per round]}`` plus ``"_first"``: the warm-up call's time per name.
    """
    import time
    names = list(fns)
    out: Dict[str, Any] = {n: [] for n in names}
    first = {}
    for n in names:
        t0 = time.perf_counter()
        fns[n]()
        first[n] = time.perf_counter() - t0
    start = time.perf_counter()
    r = 0
    while r < rounds or (r < (max_rounds or rounds) and time.perf_counter() - start < budget_s):
        k = r % len(names)
        r += 1
        for n in names[k:] + names[:k]:
            if first[n] < rewarm_below_s:
                fns[n]()
            t0 = time.perf_counter()
            fns[n]()
            out[n].append(time.perf_counter() - t0)
    out["_first"] = first
    return out


SUITE = MemorySuite()
