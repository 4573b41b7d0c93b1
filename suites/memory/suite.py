"""The memory suite: what BPTT, RTRL and truncated BPTT cost in memory and time, measured against theory.

Every case is one point ``(backend, cell, algorithm, B, T, H)``; its ``run`` yields

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
=====================  =======  ==============================================================================

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
H sweeps 16..256 at B=1; torch and JAX: a BPTT T sweep 200..800 at H=64, B=8 (and RTRL at one point).
``full`` — T to 3200 and H to 256 at B=1 (to 128 or 64 at B=8), every backend, and the GPU
(``--device cuda``: torch and JAX only; NumPy is CPU-only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from harness.core.errors import Unsupported
from suites.base import Case, RunContext, Suite

DEFAULT_BACKENDS = ("numpy", "torch", "torch-cell", "jax")
BUDGET_S = {"smoke": 0.05, "quick": 0.15, "full": 1.0}
TARGETS = {("exponent_mem_T", "bptt"): (0.9, 1.1), ("exponent_mem_T", "rtrl"): (-0.1, 0.1),
           ("exponent_mem_H", "rtrl"): (2.7, 3.3), ("exponent_time_H", "rtrl"): (3.5, None),
           ("exponent_mem_T", "tbptt"): (None, None)}
FRAMEWORK_T = (200, 400, 800)  # quick preset: the T sweep of torch/JAX (rnn_tanh, H=64, B=8)
RTRL_SAMPLES = 5       # fewest timed rounds of every NumPy RTRL point (see MemorySuite._rtrl_timing)
RTRL_MAX_SAMPLES = 25  # most rounds: cheap points take more while within RTRL_BUDGET_S
RTRL_BUDGET_S = 3.0
EFFICIENCY_H = 128  # the H at which the issue asks for RTRL's GEMM efficiency


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

    @property
    def name(self) -> str:
        alg = self.algorithm + (f"{self.truncation}" if self.truncation else "") + \
            ("-chunked" if self.impl == "chunked" else "")
        return f"{self.sweep}sweep-{self.cell}-L{self.layers}-B{self.batch}-T{self.seq_len}-H{self.hidden}-{alg}"


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

    if preset == "smoke":
        t_sweep("rnn_tanh", 8, 1, (10, 20, 40), 5)
        h_sweep("rnn_tanh", (8, 16), 1, (10, 20))
        _smoke_other_cells(P, ("rnn_tanh",))
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
    return P


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
    return [p for p in _points(preset) if p.algorithm in offered and p.impl != "chunked"]


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
                out.append(Case(suite=self.name, name=p.name, backend=b, device=device, cell=p.cell,
                                layers=p.layers, batch=p.batch, seq_len=p.seq_len, input_size=p.hidden,
                                hidden_size=p.hidden, dtype="float64", settings=settings))
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
            s_spec = dataclasses.replace(spec, input_size=int(small), hidden_size=int(small))  # I = H, as the sweep
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


def derive(rows: List[dict], case: Case) -> Iterator[Dict[str, Any]]:
    """Exponents and crossovers from measured rows (see the module docstring)."""
    from harness.measure.records import make_row
    groups: Dict[Tuple, Dict[str, List[dict]]] = {}
    for r in rows:
        sweep = (r.get("extra") or {}).get("sweep")
        if r["metric"] in ("peak_bytes", "time_per_step_us", "time_exponent_pair") and sweep in ("T", "H"):
            groups.setdefault(_key(r) + (sweep,), {}).setdefault(r["metric"], []).append(r)

    def out(key, metric, value, unit, hidden_size=None, seq_len=None, **extra):
        backend, cell, layers, batch, alg, k, impl = key[:7]
        fields = {"suite": case.suite, "case": case.name, "backend": backend, "variant": backend,
                  "device": case.device, "dtype": "float64", "cell": cell, "layers": layers, "batch": batch,
                  "hidden_size": hidden_size, "seq_len": seq_len}
        lo, hi = TARGETS.get((metric, alg), (None, None))
        return make_row(fields, metric, value, unit, algorithm=alg, truncation=k, impl=impl,
                        target_lo=lo, target_hi=hi, **extra)

    for key, by in sorted(groups.items(), key=lambda kv: str(kv[0])):
        sweep = key[7]
        mem = by.get("peak_bytes", [])
        tim = by.get("time_per_step_us", [])
        if sweep == "T":
            pts = sorted((r["seq_len"], r["value"]) for r in mem)
            e = _fit([p[0] for p in pts], [p[1] for p in pts])
            if e is not None:
                yield out(key, "exponent_mem_T", e, "exponent", fit_range=[pts[0][0], pts[-1][0]], n_points=len(pts),
                          hidden_size=mem[0]["hidden_size"])
        else:
            # Memory vs H: at one T per algorithm (RTRL's T; BPTT's shorter T), H >= 32.
            T0 = min(r["seq_len"] for r in mem) if mem else None
            pts = sorted((r["hidden_size"], r["value"]) for r in mem if r["seq_len"] == T0 and r["hidden_size"] >= 32)
            e = _fit([p[0] for p in pts], [p[1] for p in pts])
            if e is not None:
                yield out(key, "exponent_mem_H", e, "exponent", fit_range=[pts[0][0], pts[-1][0]], n_points=len(pts),
                          seq_len=T0)
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
        k = (r["cell"], r.get("layers"), r["batch"], r["hidden_size"])
        if e.get("algorithm") == "bptt":
            bptt.setdefault(k + (r["backend"],), []).append((r["seq_len"], r["value"], e.get("theory_bytes")))
        elif e.get("algorithm") == "rtrl":
            rtrl[k] = r
    for k5, pts in sorted(bptt.items(), key=lambda kv: str(kv[0])):
        k = k5[:4]
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
        key = (k5[4], k[0], k[1], k[2], "bptt_vs_rtrl", None, "backend")
        yield out(key, "crossover_T", t_star, "steps", hidden_size=k[3], theory_T=t_th,
                  extrapolated=bool(t_star is None or not (t1 <= t_star <= t2)), bptt_bytes_per_step=b,
                  bptt_intercept_bytes=a, rtrl_peak_bytes=R, rtrl_backend=rtrl[k]["backend"],
                  fit_range=[t1, t2])


def _fused():
    from implementations.numpy.backend import FUSED_CELLS
    return FUSED_CELLS


def _timed_steps(spec, alg: str, seq_len: int) -> int:
    """Steps one timed call runs: the whole sequence, except RTRL, whose per-step cost does not depend on T
    (a fixed number of steps, enough that the set-up — allocating and zeroing M — is a small part)."""
    if alg != "rtrl":
        return seq_len
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
