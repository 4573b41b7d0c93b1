"""Suite ``gradients``: how ∂L/∂h_t behaves as it travels back T steps, measured against theory.

For a loss on the last step, L = <dh_T, h_T> with a fixed random unit cotangent ``dh_T``, the suite
records ‖∂L/∂h_{T−k}‖ for every k (and ‖∂L/∂c_{T−k}‖ for an LSTM) from ``Backend.hidden_grads``, the
fitted per-step rate beside the theory of :mod:`suites.gradients.theory`, Pascanu et al.'s conditions,
gate statistics, ‖∂L/∂θ‖ against T with global-norm clipping, a float64 finite-difference check of
every setting's gradients, and the agreement between backends.

Cases (``cases`` imports no framework):

- ``sweep`` (NumPy, CPU): one case per (cell, dtype, seed) running the whole grid of that cell —
  ρ × input scale for ``rnn_tanh``/``rnn_relu`` (W_hh = ρ·Q, plus PyTorch's default init), forget/update
  bias × input scale for ``lstm``/``gru`` — so that checks spanning settings (saturation at ρ = 1.5,
  monotonicity in the gate bias) are computed and recorded in the same case. float64 is the analysis;
  float32 runs alongside to show where the gradient underflows or overflows.
- ``linear`` (NumPy): the identity-activation recurrence h_{t+1} = W_hh h_t + W_ih x_t, BPTT written in
  :func:`suites.gradients.theory.linear_hidden_grads` — ‖g_k‖ must be exactly ρ^k.
- ``agree`` (every other backend, on the run's device): a few settings whose curves decay, computed by
  the backend and by the NumPy reference in the same process; the largest relative difference of the
  adjoint vectors is recorded (float64: must be ≤ 1e-10). Settings whose gradients *grow* are left out
  on purpose: there the forward pass is chaotic and rounding differences between any two
  implementations grow as fast as the gradient does, so no tolerance would be meaningful.

"Input scale" s means the input drive W_ih x_t has RMS s per unit (see
:func:`~suites.gradients.theory.drive_scaled_inputs`).

Rows (``extra`` carries ``kind``, ``init``, ``rho``, ``gate_bias``, ``input_scale``, ``seed``):
curves ``grad_norm_h`` / ``grad_norm_c`` (``norms`` and ``theory`` lists indexed by k, NaN past an
under/overflow, ``underflow_step``, ``overflow_step``; status ``limit`` with the step in ``reason``
when the curve does not survive to k = T−1: an expected result at the edge of the float format, not a fault); scalars ``decay_rate`` (± ``rate_err``, window),
``predicted_rate``, ``rate_rel_error``, ``sigma_max``, ``sigma_rms``, ``rms_fprime``,
``pascanu_sufficient_vanish``, ``pascanu_necessary_explode``, ``mean_forget_gate``/``forget_time``,
``mean_update_gate``/``update_time``, ``memory_time``, ``param_grad_norm`` and ``clipped_norm`` (per
``T_eval``), ``backend_max_rel_diff``; and ``check_*`` rows (value 1/0, status ok/error).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from suites.gradients import theory as th
from harness.core.errors import InputError, InputTypeError, Unsupported
from suites.base import Case, RunContext, Suite, declared, wants_cell

def _cell(name: str):
    """The cell's definition: whether it is gated (bias sweep, direct-path theory) or vanilla (ρ sweep, σ·f')."""
    from harness.core import cells
    return cells.get(name)


def _all_cells() -> Tuple[str, ...]:
    """The cells of the sweeps and agreement cases (vanilla and gated); the gated linear cells have cases of
    their own (kind ``gated``: the exact product of the a_t)."""
    from harness.core import cells
    return cells.names(gated_linear=False)


#: Thresholds of the checks (stated in the rows' ``threshold``).
TANH_RATE_RTOL = 0.03
LINEAR_RTOL = 1e-10
FD_RTOL = 1e-6
AGREE_RTOL = {"float64": 1e-10, "float32": 1e-3}
#: ‖∂L/∂θ‖ at a length T is skipped once ‖∂L/∂h_{T−k}‖ falls below this before k = T.
PARAM_FLOOR = 1e-200
#: "Small inputs" for the tanh rate check: input scales at or below this.
SMALL_INPUT = 0.1


@dataclass(frozen=True)
class PresetConfig:
    """Sizes and grids of one preset."""

    T: int
    hidden: int
    batch: int
    input_size: int
    rhos: Tuple[float, ...]
    default_init: bool
    scales: Tuple[float, ...]
    biases: Tuple[float, ...]
    dtypes: Tuple[str, ...]
    seeds: int
    param_T: Tuple[int, ...]
    clip: float
    fd_T: int
    skip: int
    #: settings of the ``agree`` cases per cell: (rho or None, gate_bias, input scale)
    agree: Dict[str, Tuple[Tuple[Optional[float], float, float], ...]]
    agree_dtypes: Tuple[str, ...]
    #: input scales at which float32 sweeps run, and at which ‖∂L/∂θ‖ vs T is measured (None: all)
    f32_scales: Optional[Tuple[float, ...]] = None
    param_scales: Optional[Tuple[float, ...]] = None
    #: sequence length of the ``agree`` cases (None: T). Compilation and the NumPy reference run again in
    #: every such case, and a decaying curve has left float64's useful range long before T = 1000 anyway.
    agree_T: Optional[int] = None


_AGREE_SMALL = {"rnn_tanh": ((1.0, 0.0, 1.0),), "rnn_relu": ((0.9, 0.0, 1.0),),
                "lstm": ((None, 1.0, 1.0),), "gru": ((None, 1.0, 1.0),)}
_AGREE_FULL = {"rnn_tanh": ((0.5, 0.0, 1.0), (1.0, 0.0, 1.0), (None, 0.0, 1.0)),
               "rnn_relu": ((0.5, 0.0, 1.0), (0.9, 0.0, 1.0)),
               "lstm": ((None, 0.0, 1.0), (None, 3.0, 1.0)), "gru": ((None, 0.0, 1.0), (None, 3.0, 1.0))}

PRESET_CONFIG: Dict[str, PresetConfig] = {
    # H=128 with B=8: the mean-field theory is tighter at larger H, and at these sizes a step's cost is
    # dominated by per-call overhead, not by H; B=8 keeps the NumPy recurrence on one thread.
    "smoke": PresetConfig(T=50, hidden=64, batch=8, input_size=16, rhos=(0.5, 1.0, 1.5), default_init=True,
                          scales=(0.1, 1.0), biases=(0.0, 3.0), dtypes=("float64", "float32"), seeds=1,
                          param_T=(10, 50), clip=1.0, fd_T=6, skip=5, agree=_AGREE_SMALL,
                          agree_dtypes=("float64",), f32_scales=(1.0,), param_scales=(1.0,)),
    "quick": PresetConfig(T=1000, hidden=128, batch=8, input_size=32, rhos=(0.5, 0.9, 1.0, 1.1, 1.5, 3.0),
                          default_init=True, scales=(0.1, 1.0), biases=(0.0, 1.0, 2.0, 3.0),
                          dtypes=("float64", "float32"), seeds=1, param_T=(10, 100, 1000), clip=1.0,
                          fd_T=8, skip=10, agree=_AGREE_SMALL, agree_dtypes=("float64",), f32_scales=(1.0,),
                          param_scales=(1.0,), agree_T=300),
    "full": PresetConfig(T=1000, hidden=128, batch=32, input_size=32, rhos=(0.5, 0.9, 1.0, 1.1, 1.5, 3.0),
                         default_init=True, scales=(0.1, 1.0), biases=(0.0, 1.0, 2.0, 3.0),
                         dtypes=("float64", "float32"), seeds=3, param_T=(10, 30, 100, 300, 1000), clip=1.0,
                         fd_T=10, skip=10, agree=_AGREE_FULL, agree_dtypes=("float64", "float32")),
}


@contextlib.contextmanager
def _quiet():
    """Over/underflow is what this suite measures: silence NumPy's warnings, also those raised in the
    NumPy backend's batch-parallel worker threads (``np.errstate`` is per thread)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _hidden(backend, spec, p, x, dh):
    """(∂L/∂h_t, ∂L/∂c_t or None, note): a backend without ∂L/∂c_t (the default hidden_grads of a plug-in) gives
    the h curve only, and the note says so."""
    try:
        out = backend.hidden_grads(spec, p, x, dh, return_cell=spec.is_lstm)
        return (out[0], out[1], "") if spec.is_lstm else (out, None, "")
    except Unsupported as e:
        if not spec.is_lstm:
            raise
        return backend.hidden_grads(spec, p, x, dh), None, f"not offered: {e}"


def _one_blas_thread():
    """BLAS on one thread while a case runs: nothing here is timed, the matrices are small (H ≤ 128), and
    multi-threaded BLAS on tiny GEMMs only spins (it doubled the run time on a loaded 2-core machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _setting_label(cell: str, rho: Optional[float], bias: float, scale: float) -> str:
    if _cell(cell).is_gated:
        return f"b{bias:g}-s{scale:g}"
    return (f"rho{rho:g}" if rho is not None else "default") + f"-s{scale:g}"


class GradientsSuite(Suite):
    """Gradient norms across sequence length, with theory, checks and backend agreement."""

    name = "gradients"

    report_module = "suites.gradients.report"

    # -- cases --------------------------------------------------------------------------------------
    def cases(self, preset: str, backends: List[str], device: str = "cpu") -> List[Case]:
        """The cases of ``preset``: sweeps on the reference backend (NumPy, CPU) and ``agree`` cases for the
        others, over every registered cell."""
        from implementations import registry
        self.check_preset(preset)
        if isinstance(backends, str) or not isinstance(backends, (list, tuple)) \
                or not all(isinstance(b, str) and b for b in backends):
            raise InputTypeError(f"backends: got {backends!r}; allowed: a list of backend names")
        self.check_args(preset, device)
        cfg = PRESET_CONFIG[preset]
        common = dict(suite=self.name, layers=1, batch=cfg.batch, seq_len=cfg.T, input_size=cfg.input_size,
                      hidden_size=cfg.hidden)
        size = f"T{cfg.T}-H{cfg.hidden}-B{cfg.batch}-I{cfg.input_size}"
        out: List[Case] = []
        # The reference declares itself (``reference = True``); its sweeps are a CPU analysis.
        reference = [b for b in backends if registry.describe(b, "cpu").capabilities.get("reference")]
        for ref_name in (reference[:1] if device == "cpu" else []):
            for seed in range(cfg.seeds):
                for dtype in cfg.dtypes:
                    for cell in _all_cells():
                        grid = self._grid(cell, cfg)
                        if dtype != "float64" and cfg.f32_scales is not None:
                            grid = [g for g in grid if g[2] in cfg.f32_scales]
                        out.append(Case(name=f"{cell}-sweep-{size}-{dtype}-seed{seed}", backend=ref_name,
                                        device=device, cell=cell, dtype=dtype, **common,
                                        settings={"kind": "sweep", "seed": seed, "grid": grid}))
                out.append(Case(name=f"linear-{size}-float64-seed{seed}", backend=ref_name, device=device,
                                cell="linear", dtype="float64", **common,
                                settings={"kind": "linear", "seed": seed,
                                          "grid": [[r, 0.0, 1.0] for r in cfg.rhos]}))
        T_agree = cfg.agree_T or cfg.T
        common_agree = dict(common, seq_len=T_agree)
        size_agree = f"T{T_agree}-H{cfg.hidden}-B{cfg.batch}-I{cfg.input_size}"
        for b in backends:
            if b in reference:
                continue
            for dtype in cfg.agree_dtypes:
                for cell in (c for c in _all_cells() if wants_cell(declared(b, device), c)):
                    out.append(Case(name=f"{cell}-agree-{size_agree}-{dtype}", backend=b, device=device, cell=cell,
                                    dtype=dtype, **common_agree,
                                    settings={"kind": "agree", "seed": 0,
                                              "grid": [list(s) for s in self._agree_grid(cell, cfg)]}))
        # Gated linear cells: ∂L/∂h_{T−k} is exactly dh_T ⊙ Π a_t, so every backend is checked against that product
        # (the reference at the sweep's T in each dtype, the others at the agreement T).
        from harness.core import cells
        for b in backends:
            ref = b in reference
            if ref and device != "cpu":
                continue
            for dtype in (cfg.dtypes if ref else cfg.agree_dtypes):
                for cell in (c for c in cells.names(gated_linear=True) if wants_cell(declared(b, device), c)):
                    c = common if ref else common_agree
                    out.append(Case(name=f"{cell}-exact-{size if ref else size_agree}-{dtype}", backend=b,
                                    device=device, cell=cell, dtype=dtype, **c, settings={"kind": "gated", "seed": 0}))
        return out

    @staticmethod
    def _agree_grid(cell: str, cfg: PresetConfig):
        """The preset's settings for ``cell``; a plug-in cell gets those of its kind (gated or vanilla)."""
        if cell in cfg.agree:
            return cfg.agree[cell]
        return cfg.agree["lstm" if _cell(cell).is_gated else "rnn_tanh"]

    @staticmethod
    def _grid(cell: str, cfg: PresetConfig) -> List[List[Any]]:
        """[rho or None, gate_bias, input scale] for every setting of a sweep."""
        if _cell(cell).is_gated:
            return [[None, b, s] for s in cfg.scales for b in cfg.biases]
        rhos: List[Optional[float]] = list(cfg.rhos) + ([None] if cfg.default_init else [])
        return [[r, 0.0, s] for s in cfg.scales for r in rhos]

    # -- run ----------------------------------------------------------------------------------------
    def run(self, case: Case, ctx: RunContext) -> Iterator[Dict[str, Any]]:
        """Measure one case; yields each row as soon as it is computed."""
        with _one_blas_thread():
            yield from self._run(case, ctx)

    def _run(self, case: Case, ctx: RunContext) -> Iterator[Dict[str, Any]]:
        if case.suite != self.name:
            raise InputError(f"case: belongs to suite {case.suite!r}, not {self.name!r}")
        preset = ctx.preset if ctx.preset in PRESET_CONFIG else "quick"
        cfg = PRESET_CONFIG[preset]
        kind = case.settings.get("kind")
        seed = int(ctx.seed) * 1000 + int(case.settings.get("seed", 0))
        if kind == "linear":
            yield from self._run_linear(case, cfg, seed)
            return
        if kind == "gated":
            yield from self._run_gated(case, seed)
            return
        if kind not in ("sweep", "agree"):
            raise InputError(f"case.settings['kind']: got {kind!r}; allowed: sweep, agree, linear, gated")
        _cell(case.cell)  # InputError naming the known cells
        from implementations import registry
        backend = registry.instance(case.backend, case.device)
        why_not = backend.supports(case.spec(), case.dtype)
        if why_not:
            yield case.row("grad_norm_h", None, "1", status="skipped", reason=why_not, kind=kind)
            return
        ref = backend if backend.reference else registry.reference()
        if not backend.reference:
            # Checked before anything of it is recorded: the same outputs and gradients as the reference.
            from suites.equivalence import REL_TOL, disagreement, equivalence_error, make_data
            spec, t_check = case.spec(), min(case.seq_len, 20)
            with _quiet():
                err, where, info = equivalence_error(backend, spec, make_data(spec, case.batch, t_check, seed),
                                                     case.dtype, t_check)
            tol = REL_TOL[case.dtype]
            if not err <= tol:
                yield case.row("equiv_error", err, "rel", status="error", tol=tol, worst=where, kind=kind,
                               parts=info["parts"],
                               reason=disagreement(info["parts"], tol, case.dtype, "gradients not measured"))
                return
            yield case.row("equiv_error", err, "rel", tol=tol, worst=where, check_seq_len=t_check, kind=kind)
        rates: Dict[Tuple[str, float, Optional[float], float], float] = {}
        for rho, bias, scale in case.settings["grid"]:
            rho = None if rho is None else float(rho)
            try:
                rows = list(self._run_setting(case, cfg, seed, backend, ref, rho, float(bias), float(scale),
                                              rates))
            except Unsupported as e:
                yield case.row("grad_norm_h", None, "1", status="skipped", reason=str(e), kind=kind)
                return
            yield from rows
        if kind == "sweep" and case.dtype == "float64":
            yield from self._sweep_checks(case, rates)

    # -- one setting --------------------------------------------------------------------------------
    def _problem(self, case: Case, seed: int, rho: Optional[float], bias: float, scale: float):
        from harness.core.params import init_params
        spec = case.spec()
        init = "default" if rho is None else "orthogonal"
        params64 = init_params(spec, seed=seed, dtype="float64", init=init, rho=rho, gate_bias=bias)
        x64 = th.drive_scaled_inputs(params64.layers[0].w_ih, case.seq_len, case.batch, scale, seed)
        dh64 = th.unit_cotangent(case.batch, case.hidden_size, seed)
        return spec, params64, x64, dh64

    def _run_setting(self, case: Case, cfg: PresetConfig, seed: int, backend, ref, rho: Optional[float],
                     bias: float, scale: float, rates: dict) -> Iterator[Dict[str, Any]]:
        cell, dtype, kind = case.cell, case.dtype, case.settings["kind"]
        spec, p64, x64, dh64 = self._problem(case, seed, rho, bias, scale)
        p, x, dh = p64.astype(dtype), x64.astype(dtype), dh64.astype(dtype)
        tags = dict(kind=kind, init="default" if rho is None else "orthogonal", rho=rho, gate_bias=bias,
                    input_scale=scale, seed=seed, setting=_setting_label(cell, rho, bias, scale))
        cdef = _cell(cell)
        gated = cdef.is_gated
        t0 = time.perf_counter()
        with _quiet():
            g, gc, note = _hidden(backend, spec, p, x, dh)
            if note:
                tags["cell_grads"] = note
            y, _ = backend.forward(spec, p, x) if kind == "sweep" else ref.forward(spec, p, x)
        elapsed = time.perf_counter() - t0
        y = np.asarray(y, dtype=np.float64)

        # Theory factors from the same forward pass.
        if gated:
            gates = th.gate_sequence(spec, p.astype("float64"), x.astype(np.float64), y)
            gain = th.rms_over_units(gates)
            factors = th.step_factors(gain)
        else:
            w = p64.layers[0].w_hh
            s_rms = th.sigma_rms(w)
            gain = th.rms_over_units(cdef.fprime_from_output(y))
            factors = th.step_factors(gain, s_rms)
        theory = th.theory_curve(factors)
        theory = np.where(np.isfinite(theory), theory, np.nan)  # past float64's range: not drawn
        theory_kind = "direct_path_rms_gate" if gated else "sigma_rms_times_rms_fprime"

        curves = [("h", g)] + ([("c", gc)] if gc is not None else [])
        fits: Dict[str, Optional[th.RateFit]] = {}
        fwd_bad = th.forward_nonfinite_step(y)
        if fwd_bad is not None:
            tags["forward_nonfinite_step"] = fwd_bad
        for which, arr in curves:
            health = th.curve_health(arr, y)
            norms = th.masked_norms(th.step_norms(arr), health)
            try:
                fit, fit_error = th.fit_rate(norms, skip=cfg.skip), ""
            except ValueError as e:
                fit, fit_error = None, str(e)
            fits[which] = fit
            shown, stride = th.subsample(norms)
            extra = dict(norms=shown, k_stride=stride, underflow_step=health.underflow_step,
                         overflow_step=health.overflow_step, zero_step=health.zero_step, valid_k=health.valid_k,
                         seconds=elapsed, **tags)
            if which == "h" or gated:
                drawn = theory
                if gated and fit is not None and np.isfinite(theory[fit.k_lo]) and theory[fit.k_lo] > 0:
                    # The direct-path theory predicts a slope, not the level (the first steps of an LSTM's
                    # h-adjoint drop fast through the output gate): anchor it at the fit window's start.
                    drawn = theory * (norms[fit.k_lo] / theory[fit.k_lo])
                extra["theory"] = th.subsample(drawn)[0]
                extra["theory_kind"] = theory_kind
            status = "ok" if health.ok else "limit"  # the curve reached the edge of its float format
            reason = health.reason()
            if fwd_bad is not None:
                reason = f"{dtype} forward pass non-finite from step t={fwd_bad} (h overflowed); " + reason
            last = norms[-1]
            yield case.row(f"grad_norm_{which}", None if not np.isfinite(last) else float(last), "1",
                           status=status, reason=reason, **extra)
            rate_metric = "decay_rate" if which == "h" else "decay_rate_c"
            if fit is None:  # no fit window left because the curve hit a float limit: a limit too
                yield case.row(rate_metric, None, "1/step", status="error" if health.ok else "limit",
                               reason=fit_error if health.ok else f"{fit_error} (the curve {reason})", **tags)
                continue
            yield case.row(rate_metric, fit.rate, "1/step", window=[fit.k_lo, fit.k_hi],
                           **{k: v for k, v in fit.as_dict().items() if k != "rate"}, **tags)
            if which == "h":
                yield case.row("memory_time", th.memory_time(fit.rate), "steps", **tags)
            rates[(which, bias, rho, scale)] = fit.rate

        fit = fits.get("c" if spec.is_lstm else "h")
        pred = None
        if fit is not None:
            try:
                pred = th.predicted_rate(factors, fit)
            except ValueError as e:
                yield case.row("predicted_rate", None, "1/step", status="error", reason=str(e), **tags)
        if pred is not None:
            yield case.row("predicted_rate", pred, "1/step", theory_kind=theory_kind,
                           window=[fit.k_lo, fit.k_hi], fitted_on="c" if spec.is_lstm else "h", **tags)
            rel = fit.rate / pred - 1.0 if pred > 0 else float("inf")
            yield case.row("rate_rel_error", rel, "1", fitted=fit.rate, predicted=pred, **tags)
            if cdef.activation == "tanh" and rho is not None and scale <= SMALL_INPUT and dtype == "float64":
                ok = abs(rel) <= TANH_RATE_RTOL
                yield self._check(case, "check_tanh_rate_theory", ok,
                                  f"fitted {fit.rate:.4f} vs predicted rho*RMS(tanh') {pred:.4f}: "
                                  f"{rel:+.2%} (allowed ±{TANH_RATE_RTOL:.0%})",
                                  threshold=TANH_RATE_RTOL, fitted=fit.rate, predicted=pred, **tags)

        if gated:
            mean_gate = float(np.mean(gates))
            name = cdef.bias_gate_role or cdef.bias_gate
            yield case.row(f"mean_{name}_gate", mean_gate, "1", **tags)
            yield case.row(f"{name}_time", th.forgetting_time(mean_gate), "steps", **tags)
        else:
            win = fits.get("h")
            lo, hi = (win.k_lo, win.k_hi) if win is not None else (0, len(factors))
            rms_fp = float(np.exp(np.mean(np.log(np.maximum(th.step_factors(gain)[lo:hi], 1e-300)))))
            smax = th.sigma_max(p64.layers[0].w_hh)
            pc = th.pascanu_conditions(smax, cdef.fprime_bound)
            yield case.row("sigma_max", smax, "1", **tags)
            yield case.row("sigma_rms", s_rms, "1", **tags)
            yield case.row("rms_fprime", rms_fp, "1", window=[lo, hi], **tags)
            observed = None if win is None else ("exploding" if win.rate > 1 else "vanishing")
            yield case.row("pascanu_sufficient_vanish", float(pc["sufficient_vanish"]), "bool", gamma=cdef.fprime_bound,
                           verdict=pc["verdict"], observed=observed, **tags)
            yield case.row("pascanu_necessary_explode", float(pc["necessary_explode"]), "bool",
                           gamma=cdef.fprime_bound, verdict=pc["verdict"], observed=observed, **tags)
            if dtype == "float64":
                h_norms = th.masked_norms(th.step_norms(g), th.curve_health(g, y))
                holds, worst = th.pascanu_bound_check(h_norms, smax, cdef.fprime_bound)
                consistent = observed is None or ((not pc["sufficient_vanish"] or observed == "vanishing") and
                                                  (observed != "exploding" or pc["necessary_explode"]))
                yield self._check(case, "check_pascanu", holds and consistent,
                                  f"|g_k| <= (gamma*sigma_max)^k at every k: {holds} (worst log10 excess "
                                  f"{worst:.3g}); observed {observed} is consistent with the conditions: "
                                  f"{consistent}", worst_log10_excess=worst, **tags)

        if kind == "agree":
            with _quiet():
                r = ref.hidden_grads(spec, p, x, dh, return_cell=spec.is_lstm)
            pairs = [("h", g, r[0] if spec.is_lstm else r)] + ([("c", gc, r[1])] if gc is not None else [])
            worst, where = 0.0, None
            for which, a, b in pairs:
                last = th.curve_health(b).valid_k
                d, k = th.curve_disagreement(np.asarray(a), np.asarray(b), last_k=last)
                if d >= worst:
                    worst, where = d, (which, k)
            tol = AGREE_RTOL[dtype]
            yield case.row("backend_max_rel_diff", worst, "1", reference=ref.name, at_state=where[0], at_k=where[1],
                           threshold=tol, **tags)
            yield self._check(case, "check_backend_agreement", worst <= tol,
                              f"max_k |g_k - g_k(numpy)| / |g_k(numpy)| = {worst:.3g} at {where[0]}, k={where[1]} "
                              f"(allowed {tol:g} in {dtype})", threshold=tol, value_rel=worst, **tags)

        # Finite differences on a short prefix, in float64, for the gradients of this backend.
        yield self._fd_row(case, cfg, backend, ref, spec, p64, x64, dh64, tags)

        # Parameter gradients against T, with clipping (float64 analysis only).
        if dtype == "float64" and kind == "sweep" and (cfg.param_scales is None or scale in cfg.param_scales):
            d_state_shape = spec.state_shape(case.batch)
            h_norms = th.step_norms(g)
            for T_eval in cfg.param_T:
                if T_eval > case.seq_len:
                    continue
                tail = h_norms[:T_eval]
                if np.isfinite(tail).all() and tail.min() < PARAM_FLOOR:
                    # The state gradient is below 1e-200 before step T_eval: the sum over steps that makes
                    # ∂L/∂θ has converged, and the subnormal tail would only cost time (slow arithmetic).
                    yield case.row("param_grad_norm", None, "1", status="skipped", T_eval=T_eval,
                                   reason=f"state gradient below {PARAM_FLOOR:g} from k={int(np.argmax(tail < PARAM_FLOOR))}"
                                          f" < T={T_eval}: the norm has converged (see shorter T)", **tags)
                    continue
                dfin = np.zeros(d_state_shape)
                dfin[-1] = dh64
                if spec.is_lstm:
                    dfin = (dfin, np.zeros(d_state_shape))
                with _quiet():
                    grads = backend.vjp(spec, p64, x64[:T_eval], None, None, dfin).params
                clipped, total, coef = th.clip_global_norm(grads, cfg.clip)
                ok = bool(np.isfinite(total))
                st = "ok" if ok else "limit"  # an exploding setting overflows float64: a result, not a fault
                why = "" if ok else f"non-finite parameter gradient at T={T_eval} (float64 overflow)"
                yield case.row("param_grad_norm", total if ok else None, "1", status=st, reason=why, T_eval=T_eval,
                               **tags)
                cn = th.global_norm(clipped) if ok else None
                yield case.row("clipped_norm", cn, "1", status=st, reason=why, T_eval=T_eval, clip_threshold=cfg.clip,
                               clip_coef=coef if ok else None, **tags)

    def _fd_row(self, case, cfg, backend, ref, spec, p64, x64, dh64, tags) -> Dict[str, Any]:
        xs = x64[:cfg.fd_T]
        with _quiet():
            g, gc, _ = _hidden(backend, spec, p64, xs, dh64)
        err = th.fd_check_hidden_grads(ref.forward, spec, p64, xs, dh64, np.asarray(g),
                                       None if gc is None else np.asarray(gc), seed=tags["seed"])
        return self._check(case, "check_finite_difference", err <= FD_RTOL,
                           f"central differences (eps 1e-6, float64, T={cfg.fd_T}, perturbation added to the "
                           f"state between two NumPy forward calls): max relative error beyond the roundoff floor {err:.2e} "
                           f"(allowed {FD_RTOL:g})", max_rel_err=err, fd_T=cfg.fd_T, threshold=FD_RTOL, **tags)

    @staticmethod
    def _check(case: Case, metric: str, ok: bool, reason: str, **extra) -> Dict[str, Any]:
        return case.row(metric, 1.0 if ok else 0.0, "bool", status="ok" if ok else "error",
                        reason=("" if ok else "FAILED: ") + reason, **extra)

    # -- checks across settings ---------------------------------------------------------------------
    def _sweep_checks(self, case: Case, rates: dict) -> Iterator[Dict[str, Any]]:
        tags = dict(kind="sweep")
        cdef = _cell(case.cell)
        if cdef.activation == "tanh":
            grow = rates.get(("h", 0.0, 1.5, 0.1))
            decay = rates.get(("h", 0.0, 1.5, 1.0))
            if grow is not None and decay is not None:
                ok = grow > 1.0 > decay
                yield self._check(case, "check_tanh_saturation", ok,
                                  f"rho=1.5: rate {grow:.4f} at input scale 0.1 (must exceed 1: grows), "
                                  f"{decay:.4f} at input scale 1.0 (must be below 1: saturation makes it decay)",
                                  rho=1.5, rate_small_input=grow, rate_large_input=decay, **tags)
        if cdef.is_gated:
            name = cdef.bias_gate_role or cdef.bias_gate
            states = cdef.state_parts
            scales = sorted({k[3] for k in rates})
            for which in states:
                for s in scales:
                    pts = sorted((k[1], v) for k, v in rates.items() if k[0] == which and k[3] == s)
                    if len(pts) < 2:
                        continue
                    biases, vals = [b for b, _ in pts], [v for _, v in pts]
                    ok = th.monotonic_increasing(vals)
                    listing = ", ".join(f"b={b:g}: {v:.4f}" for b, v in pts)
                    yield self._check(case, f"check_{name}_bias_monotonic", ok,
                                      f"rate of |dL/d{which}| must increase with the {name}-gate bias at input "
                                      f"scale {s:g}: {listing}", state=which, input_scale=s, biases=biases,
                                      rates=vals, **tags)

    # -- linear recurrence --------------------------------------------------------------------------
    def _run_gated(self, case: Case, seed: int) -> Iterator[Dict[str, Any]]:
        """A gated linear cell: the backend's ∂L/∂h_{T−k} against the exact dh_T ⊙ Π_{s>T−k} a_s, with the a_s
        computed from the cell's definition in float64 (not by any backend's autodiff); the forgetting time
        of the curve beside the one the gates predict."""
        from harness.core.params import init_params
        from implementations import registry
        spec, dtype = case.spec(), case.dtype
        cdef = _cell(case.cell)
        backend = registry.instance(case.backend, case.device)
        why_not = backend.supports(spec, dtype)
        tags = dict(kind="gated", init="default", input_scale=1.0, seed=seed, setting="default-s1")
        if why_not:
            yield case.row("grad_norm_h", None, "1", status="skipped", reason=why_not, **tags)
            return
        p = init_params(spec, seed=seed, dtype=dtype)
        x = th.drive_scaled_inputs(p.layers[0].w_ih.astype(np.float64), case.seq_len, case.batch, 1.0, seed,
                                   dtype=dtype)
        dh = th.unit_cotangent(case.batch, case.hidden_size, seed, dtype=dtype)
        t0 = time.perf_counter()
        with _quiet():
            g = np.asarray(backend.hidden_grads(spec, p, x, dh))
        elapsed = time.perf_counter() - t0
        lp = p.astype("float64").layers[0]
        A = x.astype(np.float64) @ lp.w_ih.T + (0.0 if lp.b_ih is None else lp.b_ih)
        a, _, _ = cdef.coefficients(A, {"lam": lp.lam}, np)
        exact = np.empty_like(a)
        exact[-1] = dh.astype(np.float64)
        for t in range(case.seq_len - 1, 0, -1):
            exact[t - 1] = a[t] * exact[t]
        tol = AGREE_RTOL[dtype]
        worst, at_k = th.curve_disagreement(g, exact.astype(dtype))
        norms = th.step_norms(g.astype(np.float64))
        theory = th.step_norms(exact)
        shown, stride = th.subsample(norms)
        yield case.row("grad_norm_h", float(norms[-1]), "1", norms=shown, theory=th.subsample(theory)[0],
                       k_stride=stride, theory_kind="exact_product_of_a", seconds=elapsed, **tags)
        yield case.row("exact_product_rel_err", worst, "1", at_k=at_k, threshold=tol, **tags)
        yield self._check(case, "check_exact_product", worst <= tol,
                          f"max_k ‖g_k − dh_T ⊙ Π a‖ / ‖dh_T ⊙ Π a‖ = {worst:.3g} at k={at_k} over the steps where "
                          f"the product keeps {dtype}'s full precision (allowed {tol:g})", threshold=tol, **tags)
        # Forgetting: the first k at which the curve falls below 1/e of ‖dh_T‖, against −1/⟨log a⟩ (all units)
        # and the slowest unit's −1/⟨log a_j⟩: a norm over units forgets at the pace of its slowest ones.
        below = np.flatnonzero(norms < norms[0] / math.e)
        measured = float(below[0]) if below.size else None
        with np.errstate(divide="ignore"):
            la = np.log(a[1:])
        mean_all = float(np.mean(la))
        slowest = float(np.max(np.mean(la, axis=(0, 1))))
        yield case.row("forget_steps", measured, "steps", status="ok" if measured is not None else "limit",
                       reason="" if measured is not None else f"the curve stays above 1/e for all {case.seq_len} steps",
                       **tags)
        yield case.row("forget_steps_gate_mean", -1.0 / mean_all if mean_all < 0 else None, "steps",
                       theory_kind="-1/mean(log a)", **tags)
        yield case.row("forget_steps_slowest_unit", -1.0 / slowest if slowest < 0 else None, "steps",
                       theory_kind="-1/max_j mean(log a_j)", **tags)

    def _run_linear(self, case: Case, cfg: PresetConfig, seed: int) -> Iterator[Dict[str, Any]]:
        from harness.core.params import init_params
        from harness.core.spec import CellSpec

        H, B, T = case.hidden_size, case.batch, case.seq_len
        # Q and W_ih drawn exactly as for the tanh sweep (orthogonal init with rho = 1).
        base = init_params(CellSpec("rnn_tanh", case.input_size, H), seed=seed, init="orthogonal", rho=1.0)
        q, w_ih = base.layers[0].w_hh, base.layers[0].w_ih
        dh = th.unit_cotangent(B, H, seed)
        for rho, _, scale in case.settings["grid"]:
            rho = float(rho)
            tags = dict(kind="linear", init="orthogonal", rho=rho, gate_bias=0.0, input_scale=float(scale),
                        seed=seed, setting=f"rho{rho:g}")
            w = rho * q
            g = th.linear_hidden_grads(w, dh, T)
            health = th.curve_health(g)
            norms = th.masked_norms(th.step_norms(g), health)
            with np.errstate(over="ignore", under="ignore"):
                theory = rho ** np.arange(T, dtype=np.float64)
            theory = np.where(np.isfinite(theory), theory, np.nan)
            yield case.row("grad_norm_h", None if not np.isfinite(norms[-1]) else float(norms[-1]), "1",
                           status="ok" if health.ok else "limit", reason=health.reason(),
                           norms=th.subsample(norms)[0], theory=th.subsample(theory)[0], k_stride=1,
                           theory_kind="rho_power_k", underflow_step=health.underflow_step,
                           overflow_step=health.overflow_step, valid_k=health.valid_k, **tags)
            try:
                fit = th.fit_rate(norms, skip=cfg.skip)
                yield case.row("decay_rate", fit.rate, "1/step", window=[fit.k_lo, fit.k_hi],
                               **{k: v for k, v in fit.as_dict().items() if k != "rate"}, **tags)
                yield case.row("predicted_rate", rho, "1/step", theory_kind="rho_power_k", **tags)
                yield case.row("rate_rel_error", fit.rate / rho - 1, "1", fitted=fit.rate, predicted=rho, **tags)
            except ValueError as e:
                yield case.row("decay_rate", None, "1/step", status="error" if health.ok else "limit",
                               reason=str(e), **tags)
            err, n = th.linear_exact_error(norms, rho)
            yield self._check(case, "check_linear_exact", err <= LINEAR_RTOL,
                              f"max_k |‖g_k‖ / rho^k − 1| = {err:.2e} over {n} steps where both are normal "
                              f"finite numbers (allowed {LINEAR_RTOL:g})", max_rel_err=err, n_compared=n,
                              threshold=LINEAR_RTOL, **tags)
            xs = th.drive_scaled_inputs(w_ih, cfg.fd_T, B, float(scale), seed)
            gs = th.linear_hidden_grads(w, dh, cfg.fd_T)
            fd = th.fd_check_linear(w, w_ih, xs, dh, gs, seed=seed)
            yield self._check(case, "check_finite_difference", fd <= FD_RTOL,
                              f"central differences on the linear recurrence (T={cfg.fd_T}): max relative error beyond the roundoff floor "
                              f"{fd:.2e} (allowed {FD_RTOL:g})", max_rel_err=fd, fd_T=cfg.fd_T, threshold=FD_RTOL,
                              **tags)


SUITE = GradientsSuite()
