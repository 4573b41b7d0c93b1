"""Vanishing and exploding gradients: the measurements and the theory they are checked against.

Pure NumPy (no framework import). :mod:`suites.gradients.suite` feeds it the arrays a backend returns;
everything here is a function of NumPy arrays and canonical :class:`~harness.core.params.Params`.

Conventions used throughout:

- ``g`` is the array ``Backend.hidden_grads`` returns, ``(T, B, H)``: ``g[j] = ∂L/∂h_{j+1}`` with
  L = <dh_T, h_T>. Curves are indexed by the number of steps back, **k = T − 1 − j**, so ``norms[0]``
  is ‖dh_T‖ (1 with a unit cotangent) and ``norms[k] = ‖∂L/∂h_{T−k}‖``. A norm is the Frobenius norm
  over the whole ``(B, H)`` slice, computed in float64 with scaling (no spurious under/overflow in the
  squares).
- The **rate** is the per-step multiplicative factor r in ‖g_k‖ ≈ C·r^k, fitted as exp(slope) of an
  ordinary least-squares line through log‖g_k‖ against k over a stated window. r < 1: vanishing;
  r > 1: exploding; a larger r (towards 1) means longer memory.
- The theory for a vanilla RNN h_{t+1} = f(a_t), a_t = W_ih x_t + b + W_hh h_t: going one step back
  multiplies the adjoint by W_hhᵀ diag(f'(a_t)). For a random direction the norm changes by about
  σ_rms(W_hh) · RMS(f'(a_t)), where σ_rms = ‖W_hh‖_F / √H is the RMS singular value (= ρ exactly for
  W_hh = ρ·Q) and the RMS runs over batch and units. The predicted curve is the running product of these
  per-step factors; the predicted rate is the same least-squares fit applied to that curve over the same
  window, so fitted and predicted are estimated identically.
- LSTM/GRU: the direct path ∂c_t/∂c_{t−1} = diag(f_t) (LSTM) or the z-term of ∂h_t/∂h_{t−1} (GRU)
  gives the per-step factor RMS(gate) — a *direct-path* approximation that ignores the recurrent
  path through the gates; the forgetting time is 1 / (1 − mean gate).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from harness.core.params import Params
from harness.core.spec import CellSpec, check_dtype

#: Pascanu et al. (2013): γ bounds |f'|. tanh' ≤ 1; relu' ∈ {0, 1}; identity' = 1.
GAMMA = {"rnn_tanh": 1.0, "rnn_relu": 1.0, "linear": 1.0}
#: Steps skipped at k = 0 before fitting: the adjoint starts in an arbitrary direction and needs a few
#: steps to align with the dominant directions of the Jacobian product.
FIT_SKIP = 10
#: Fewer points than this in the fit window is an error.
MIN_FIT_POINTS = 3
#: Global-norm clipping epsilon, as ``torch.nn.utils.clip_grad_norm_`` (coef = max_norm / (norm + eps)).
CLIP_EPS = 1e-6


# -- inputs ---------------------------------------------------------------------------------------------

def unit_cotangent(batch: int, hidden: int, seed: int, dtype="float64") -> np.ndarray:
    """A fixed random cotangent ``(B, H)`` of unit Frobenius norm (drawn in float64, then cast)."""
    dt = check_dtype(dtype)
    for name, v in (("batch", batch), ("hidden", hidden)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed: an integer >= 1")
    d = np.random.default_rng([int(seed), 2]).standard_normal((batch, hidden))
    return (d / np.linalg.norm(d)).astype(dt)


def drive_scaled_inputs(w_ih: np.ndarray, T: int, B: int, scale: float, seed: int, dtype="float64") -> np.ndarray:
    """Gaussian inputs ``(T, B, I)`` scaled so that the input drive ``W_ih x_t`` has RMS ``scale`` per unit.

    Scaling the *drive* rather than ``x`` makes "input scale 1" mean pre-activations of order 1 whatever
    I and the initialisation of ``W_ih``: that is what saturates tanh.
    """
    dt = check_dtype(dtype)
    if not (isinstance(scale, (int, float, np.floating)) and np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: got {scale!r}; allowed: a finite number > 0")
    for name, v in (("T", T), ("B", B)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed: an integer >= 1")
    w = np.asarray(w_ih, dtype=np.float64)
    z = np.random.default_rng([int(seed), 1]).standard_normal((T, B, w.shape[1]))
    drive = math.sqrt(float(np.mean((z.reshape(T * B, -1) @ w.T) ** 2)))
    if drive == 0.0:
        raise ValueError("w_ih: all zeros, so no input scale can be set")
    return (z * (scale / drive)).astype(dt)


# -- curves ---------------------------------------------------------------------------------------------

def _check_grads(g, name: str = "g") -> np.ndarray:
    if not isinstance(g, np.ndarray):
        raise TypeError(f"{name}: got {type(g).__name__}; expected a NumPy array (T, B, H)")
    if g.ndim != 3 or g.shape[0] < 1:
        raise ValueError(f"{name}: got shape {g.shape}; expected (T, B, H) with T >= 1")
    if g.dtype.kind != "f":
        raise TypeError(f"{name}: got dtype {g.dtype}; expected a float array")
    return g


def _scaled_norms(a: np.ndarray) -> np.ndarray:
    """Frobenius norm of each ``a[i]`` in float64, scaled by the max entry (no under/overflow in squares).

    Non-finite entries give a non-finite norm (inf if only ±inf, else NaN).
    """
    a = np.asarray(a, dtype=np.float64).reshape(a.shape[0], -1)
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(np.abs(a), axis=1)
        safe = np.where((m > 0) & np.isfinite(m), m, 1.0)
        n = m * np.sqrt(np.sum((a / safe[:, None]) ** 2, axis=1))
    n = np.where(m == 0, 0.0, n)
    return np.where(np.isfinite(m), n, np.where(np.isnan(a).any(axis=1), np.nan, np.inf))


def step_norms(g: np.ndarray) -> np.ndarray:
    """‖∂L/∂h_{T−k}‖ for k = 0..T−1 (float64, ``(T,)``): the curve, indexed by steps back."""
    g = _check_grads(g)
    return _scaled_norms(g[::-1])


@dataclass(frozen=True)
class CurveHealth:
    """Where a gradient curve stops being a valid measurement.

    ``overflow_step``: first k with a non-finite entry (overflow, or NaN from an exploding forward pass);
    ``underflow_step``: first k where *every* entry is below the smallest normal number of the dtype
    (subnormal or zero: the value is no longer represented, it is not a true zero), reached gradually;
    ``zero_step``: first k where the adjoint is exactly zero *without* having been near the underflow
    threshold the step before (every unit inactive, or a backend that returned zeros) — not an
    underflow, and not drawable on a log scale either;
    ``valid_k``: the last k before any of them (T − 1 if none). ``None`` means "did not happen".
    """

    dtype: str
    T: int
    overflow_step: Optional[int]
    underflow_step: Optional[int]
    zero_step: Optional[int] = None

    @property
    def valid_k(self) -> int:
        bad = [s for s in (self.overflow_step, self.underflow_step, self.zero_step) if s is not None]
        return (min(bad) - 1) if bad else self.T - 1

    @property
    def ok(self) -> bool:
        return self.overflow_step is None and self.underflow_step is None and self.zero_step is None

    def reason(self) -> str:
        """One sentence saying what went wrong and where (empty when the curve is whole)."""
        parts = []
        if self.overflow_step is not None:
            parts.append(f"{self.dtype} non-finite gradient (overflow/NaN) from k={self.overflow_step}")
        if self.underflow_step is not None:
            parts.append(f"{self.dtype} underflow from k={self.underflow_step} (every entry subnormal or zero)")
        if self.zero_step is not None:
            parts.append(f"gradient exactly zero from k={self.zero_step} without approaching the underflow "
                         f"threshold first (not an underflow: every unit inactive, or zeros returned)")
        if not parts:
            return ""
        return "; ".join(parts) + f"; norms beyond k={self.valid_k} are recorded as NaN, not zeros"


def forward_nonfinite_step(y: np.ndarray) -> Optional[int]:
    """The first step t (1-based: h_t) whose forward state has a non-finite entry, or None."""
    y = np.asarray(y)
    bad = ~np.isfinite(y.reshape(y.shape[0], -1)).all(axis=1)
    return int(np.argmax(bad)) + 1 if bad.any() else None


def curve_health(g: np.ndarray, y: Optional[np.ndarray] = None) -> CurveHealth:
    """Overflow and underflow steps of a ``hidden_grads`` array (k counted back from h_T).

    With the forward outputs ``y`` ``(T, B, H)`` of the same pass, a forward pass that overflowed
    also invalidates the adjoint: g_k goes through the Jacobians of steps T−k+1..T, so it is invalid
    from the first k whose range holds a non-finite state (an exploding ReLU network gives NaN states
    and then exact zeros in the adjoint, which must not pass for an underflow or a vanishing gradient).
    """
    g = _check_grads(g)
    T = g.shape[0]
    rev = g[::-1].reshape(T, -1)
    tiny = np.finfo(g.dtype).tiny
    nonfinite = ~np.isfinite(rev).all(axis=1)
    with np.errstate(invalid="ignore"):
        under = np.max(np.abs(np.where(np.isfinite(rev), rev, np.inf)), axis=1) < tiny
    ov = int(np.argmax(nonfinite)) if nonfinite.any() else None
    if y is not None:
        y = np.asarray(y)
        if y.shape[0] != T:
            raise ValueError(f"y: got {y.shape[0]} steps; the gradients have {T}")
        bad = ~np.isfinite(y.reshape(T, -1)).all(axis=1)
        if bad.any():
            k_fwd = T - int(np.flatnonzero(bad)[-1])  # first k whose Jacobians include a bad state
            ov = k_fwd if ov is None else min(ov, k_fwd)
    un = int(np.argmax(under)) if under.any() else None
    if un is not None and ov is not None and un >= ov:
        un = None
    zero = None
    if un is not None:
        # Gradual underflow passes through tiny values; a jump from well inside the normal range to
        # all-subnormal/zero in one step is something else (2^30: far more than any per-step factor here).
        prev = float(np.max(np.abs(rev[un - 1]))) if un > 0 else math.inf
        if prev >= tiny * 2.0 ** 30:
            zero, un = un, None
    return CurveHealth(g.dtype.name, T, ov, un, zero)


def masked_norms(norms: np.ndarray, health: CurveHealth) -> np.ndarray:
    """The curve with every point after ``health.valid_k`` set to NaN (never plotted as a zero)."""
    out = np.array(norms, dtype=np.float64, copy=True)
    out[health.valid_k + 1:] = np.nan
    out[~np.isfinite(out)] = np.nan  # a norm past float64's range (entries still finite) is no measurement
    return out


def subsample(values: np.ndarray, max_points: int = 1000) -> Tuple[np.ndarray, int]:
    """Every ``stride``-th point so that at most ``max_points`` remain (stride 1 up to ``max_points``)."""
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 2:
        raise ValueError(f"max_points: got {max_points!r}; allowed: an integer >= 2")
    v = np.asarray(values)
    stride = max(1, math.ceil(len(v) / max_points))
    return v[::stride], stride


# -- the fit --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RateFit:
    """A least-squares fit log‖g_k‖ ≈ c + k·slope over k in [k_lo, k_hi] (inclusive).

    ``rate = exp(slope)`` is the per-step factor; ``rate_err = rate · slope_err`` (delta method) with
    ``slope_err`` the OLS standard error — residuals along a curve are correlated, so read it as a
    lower bound on the uncertainty. ``r2`` is the coefficient of determination of the line.
    """

    rate: float
    rate_err: float
    slope: float
    slope_err: float
    k_lo: int
    k_hi: int
    n_points: int
    r2: float

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


def fit_window(norms: np.ndarray, window: Optional[Tuple[int, int]] = None, skip: int = FIT_SKIP) -> Tuple[int, int]:
    """The fit window ``(k_lo, k_hi)`` (inclusive) for a curve.

    With ``window`` given it is validated and used as is. Otherwise ``k_lo = skip`` (the alignment
    transient) and ``k_hi`` is the last k before the first point that is not a finite positive number
    (overflow, NaN, or an underflow already masked to NaN/0). Raises ``ValueError`` with a message when
    fewer than :data:`MIN_FIT_POINTS` usable points remain: an empty window is an error, never a rate.
    """
    n = np.asarray(norms, dtype=np.float64)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"norms: got shape {n.shape}; expected a non-empty 1-D curve")
    K = n.size
    if window is not None:
        if (not isinstance(window, (tuple, list)) or len(window) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in window)):
            raise TypeError(f"window: got {window!r}; allowed: a pair of integers (k_lo, k_hi)")
        lo, hi = int(window[0]), int(window[1])
        if not 0 <= lo < hi <= K - 1:
            raise ValueError(f"window: got ({lo}, {hi}); allowed: 0 <= k_lo < k_hi <= {K - 1} for a curve of "
                             f"{K} points")
    else:
        if isinstance(skip, bool) or not isinstance(skip, (int, np.integer)) or skip < 0:
            raise ValueError(f"skip: got {skip!r}; allowed: an integer >= 0")
        bad = ~(np.isfinite(n) & (n > 0))
        first_bad = int(np.argmax(bad)) if bad.any() else K
        lo, hi = int(skip), first_bad - 1
    usable = np.isfinite(n[lo:hi + 1]) & (n[lo:hi + 1] > 0) if hi >= lo else np.zeros(0, bool)
    if usable.sum() < MIN_FIT_POINTS or not usable.all():
        why = (f"the curve has {K} points" if window is None and hi < lo and K <= skip + MIN_FIT_POINTS else
               "the curve is non-finite or zero inside it" if window is not None else
               f"the curve stops being finite and positive at k={hi + 1}")
        raise ValueError(f"empty fit window: k in [{lo}, {hi}] holds {int(usable.sum())} usable point(s); "
                         f"at least {MIN_FIT_POINTS} finite positive norms are needed ({why})")
    return lo, hi


def _ols_rate(k: np.ndarray, y: np.ndarray, lo: int, hi: int) -> RateFit:
    """Least-squares line through (k, y = log‖g_k‖)."""
    kc = k - k.mean()
    sxx = float(kc @ kc)
    slope = float(kc @ (y - y.mean())) / sxx
    resid = y - (y.mean() + slope * kc)
    n = k.size
    ssr = float(resid @ resid)
    slope_err = math.sqrt(ssr / (n - 2) / sxx) if n > 2 else float("nan")
    sst = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ssr / sst if sst > 0 else 1.0
    rate = math.exp(slope)
    return RateFit(rate=rate, rate_err=rate * slope_err, slope=slope, slope_err=slope_err, k_lo=lo, k_hi=hi,
                   n_points=n, r2=r2)


def fit_rate(norms: np.ndarray, window: Optional[Tuple[int, int]] = None, skip: int = FIT_SKIP) -> RateFit:
    """Fit the per-step rate of a curve (see :func:`fit_window` for the window and its errors)."""
    lo, hi = fit_window(norms, window, skip)
    k = np.arange(lo, hi + 1, dtype=np.float64)
    return _ols_rate(k, np.log(np.asarray(norms, dtype=np.float64)[lo:hi + 1]), lo, hi)


def memory_time(rate: float) -> float:
    """Steps for the gradient to shrink by e at a per-step factor ``rate``: −1/ln(rate) (inf if rate ≥ 1)."""
    if not (rate > 0):
        raise ValueError(f"rate: got {rate!r}; allowed: a number > 0")
    return -1.0 / math.log(rate) if rate < 1 else float("inf")


def forgetting_time(mean_gate: float) -> float:
    """1 / (1 − f̄): the forgetting time of a gate with mean f̄ (steps; inf at f̄ = 1)."""
    if not (0.0 <= mean_gate <= 1.0):
        raise ValueError(f"mean_gate: got {mean_gate!r}; allowed: a number in [0, 1]")
    return 1.0 / (1.0 - mean_gate) if mean_gate < 1 else float("inf")


# -- theory: vanilla RNN --------------------------------------------------------------------------------

def sigma_max(w: np.ndarray) -> float:
    """Largest singular value of ``w`` (float64)."""
    return float(np.linalg.norm(np.asarray(w, dtype=np.float64), 2))


def sigma_rms(w: np.ndarray) -> float:
    """RMS singular value ‖w‖_F / √n of a square ``(n, n)`` matrix (= ρ for ρ·orthogonal)."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"w: got shape {w.shape}; expected a square matrix")
    return float(np.linalg.norm(w) / math.sqrt(w.shape[0]))


def fprime_from_outputs(cell: str, y: np.ndarray) -> np.ndarray:
    """f'(a_t) ``(T, B, H)`` from the outputs h_{t+1} = f(a_t) of the same forward pass.

    tanh: 1 − h²; relu: 1 where h > 0 (a > 0) else 0; linear: 1.
    """
    if cell not in GAMMA:
        raise ValueError(f"cell: got {cell!r}; allowed: {', '.join(GAMMA)} (vanilla recurrences only)")
    y = np.asarray(y, dtype=np.float64)
    if cell == "rnn_tanh":
        return 1.0 - y * y
    if cell == "rnn_relu":
        return (y > 0).astype(np.float64)
    return np.ones_like(y)


def rms_over_units(a: np.ndarray) -> np.ndarray:
    """RMS over batch and units of each step of ``a`` ``(T, B, H)`` -> ``(T,)``."""
    a = np.asarray(a, dtype=np.float64)
    return np.sqrt(np.mean(a.reshape(a.shape[0], -1) ** 2, axis=1))


def step_factors(per_step_gain: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Per-step predicted factors indexed by k: ``scale · gain[T−1−k]`` for k = 0..T−2.

    The step from ∂L/∂h_{T−k} back to ∂L/∂h_{T−k−1} goes through the Jacobian of step j = T−1−k,
    i.e. the gain evaluated at output index j (the pre-activation that produced h_{j+1}).
    """
    g = np.asarray(per_step_gain, dtype=np.float64)
    return scale * g[::-1][:-1]


def theory_log_curve(factors: np.ndarray) -> np.ndarray:
    """Natural log of the predicted curve ``(T,)`` for ‖g_0‖ = 1: Σ_{m<k} log factors[m] (−inf after a zero)."""
    f = np.asarray(factors, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.concatenate([[0.0], np.cumsum(np.log(f))])


def theory_curve(factors: np.ndarray, norm0: float = 1.0) -> np.ndarray:
    """The predicted curve ``(T,)``: ``norm0 · Π_{m<k} factors[m]`` (inf past float64's range, 0 after a zero)."""
    with np.errstate(over="ignore"):
        return norm0 * np.exp(theory_log_curve(factors))


def predicted_rate(factors: np.ndarray, fit: RateFit) -> float:
    """The predicted rate: the same least-squares fit as ``fit`` (same window), on the theory curve.

    Fitted in log space, so a prediction beyond float64's range is still a number. Raises
    ``ValueError`` if a factor inside the window is zero (the theory curve has no logarithm there).
    """
    logs = theory_log_curve(factors)
    lo, hi = fit.k_lo, fit.k_hi
    if hi >= logs.size:
        raise ValueError(f"fit: window ends at k={hi}, but the theory curve has {logs.size} points")
    y = logs[lo:hi + 1]
    if not np.isfinite(y).all():
        raise ValueError(f"theory: a per-step factor is zero inside the fit window k in [{lo}, {hi}] "
                         f"(f' vanished on every unit at once), so no predicted rate")
    return _ols_rate(np.arange(lo, hi + 1, dtype=np.float64), y, lo, hi).rate


def pascanu_conditions(sig_max: float, gamma: float) -> Dict[str, object]:
    """Pascanu, Mikolov & Bengio (2013) on W_hh with |f'| ≤ γ.

    ``sufficient_vanish``: σ_max < 1/γ guarantees vanishing (‖g_k‖ ≤ (γσ_max)^k);
    ``necessary_explode``: σ_max > 1/γ is necessary (not sufficient) for exploding.
    """
    if not (gamma > 0):
        raise ValueError(f"gamma: got {gamma!r}; allowed: a number > 0")
    suff = bool(sig_max < 1.0 / gamma)
    nec = bool(sig_max > 1.0 / gamma)
    verdict = ("vanishing guaranteed (sigma_max < 1/gamma)" if suff else
               "exploding possible, not guaranteed (sigma_max > 1/gamma)" if nec else "borderline (sigma_max = 1/gamma)")
    return {"sufficient_vanish": suff, "necessary_explode": nec, "bound": 1.0 / gamma, "verdict": verdict}


def pascanu_bound_check(norms: np.ndarray, sig_max: float, gamma: float, rtol: float = 1e-9) -> Tuple[bool, float]:
    """Check the rigorous bound ‖g_k‖ ≤ (γ σ_max)^k ‖g_0‖ at every finite k.

    Returns ``(holds, worst)`` where ``worst`` is the largest log10(‖g_k‖ / bound_k) (≤ 0 when it holds).
    """
    n = np.asarray(norms, dtype=np.float64)
    k = np.arange(n.size)
    ok = np.isfinite(n) & (n > 0)
    if not ok[0]:
        raise ValueError("norms: the first point (k=0) must be finite and positive")
    log_bound = np.log(n[0]) + k * math.log(gamma * sig_max) if gamma * sig_max > 0 else np.full(n.size, -np.inf)
    excess = np.full(n.size, -np.inf)
    excess[ok] = (np.log(n[ok]) - log_bound[ok]) / math.log(10)
    worst = float(np.max(excess))
    return bool(worst <= math.log10(1 + rtol)), worst


# -- theory: gates --------------------------------------------------------------------------------------

def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # no overflow for large |a|


def gate_sequence(spec: CellSpec, params: Params, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The LSTM forget gate f_t or the GRU update gate z_t ``(T, B, H)`` of the last layer, in float64.

    Recomputed from canonical parameters, the layer input and the outputs of the same forward pass
    (zero initial state): both gates are block 1 (rows H:2H) and σ(W_i· x_t + b_i· + W_h· h_t + b_h·).
    Single-layer networks only (the layer input is ``x``).
    """
    block = spec.definition.bias_gate_block()
    if block is None:
        raise ValueError(f"spec.cell: got {spec.cell!r}, which has no bias gate (a forget/update gate)")
    if spec.num_layers != 1:
        raise ValueError(f"spec.num_layers: got {spec.num_layers}; the gate analysis is for one layer")
    H = spec.hidden_size
    lp = params.layers[0]
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    T, B, _ = x.shape
    h_prev = np.concatenate([np.zeros((1, B, H)), y[:-1]], axis=0)
    rows = slice(block * H, (block + 1) * H)
    w_i = lp.w_ih[rows].astype(np.float64)
    w_h = lp.w_hh[rows].astype(np.float64)
    a = x @ w_i.T + h_prev @ w_h.T
    if lp.b_ih is not None:
        a = a + lp.b_ih[rows] + lp.b_hh[rows]
    return _sigmoid(a)


# -- linear recurrence (identity activation) -----------------------------------------------------------

def linear_forward(w_hh: np.ndarray, w_ih: np.ndarray, x: np.ndarray, h0: Optional[np.ndarray] = None) -> np.ndarray:
    """The linear RNN h_{t+1} = W_hh h_t + W_ih x_t: all states ``(T, B, H)`` (h0 zero unless given)."""
    T, B, _ = x.shape
    H = w_hh.shape[0]
    h = np.zeros((B, H), dtype=x.dtype) if h0 is None else np.array(h0, dtype=x.dtype)
    out = np.empty((T, B, H), dtype=x.dtype)
    xw = x @ w_ih.T
    for t in range(T):
        h = h @ w_hh.T + xw[t]
        out[t] = h
    return out


def linear_hidden_grads(w_hh: np.ndarray, dh_T: np.ndarray, T: int) -> np.ndarray:
    """BPTT of the linear RNN: ∂L/∂h_t ``(T, B, H)`` for L = <dh_T, h_T>; ``[-1]`` is ``dh_T``.

    ∂L/∂h_{t} = W_hhᵀ ∂L/∂h_{t+1} (row-vector form: g @ W_hh). With W_hh = ρ·Q the norm is exactly
    ρ^k ‖dh_T‖: the reference against which the exact check is made. Inputs do not enter.
    """
    w = np.asarray(w_hh)
    dh = np.asarray(dh_T)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"w_hh: got shape {w.shape}; expected a square (H, H) matrix")
    if dh.ndim != 2 or dh.shape[1] != w.shape[0]:
        raise ValueError(f"dh_T: got shape {dh.shape}; expected (B, {w.shape[0]})")
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T: got {T!r}; allowed: an integer >= 1")
    g = np.empty((T,) + dh.shape, dtype=np.result_type(w, dh))
    g[-1] = dh
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        for j in range(T - 1, 0, -1):
            np.matmul(g[j], w, out=g[j - 1])
    return g


def linear_exact_error(norms: np.ndarray, rho: float, norm0: float = 1.0) -> Tuple[float, int]:
    """Largest relative deviation of ‖g_k‖ from ρ^k·norm0 over the k where both are normal finite numbers.

    Returns ``(max_rel_err, n_compared)``.
    """
    n = np.asarray(norms, dtype=np.float64)
    k = np.arange(n.size)
    with np.errstate(over="ignore", under="ignore", divide="ignore"):
        expect = norm0 * np.power(float(rho), k)
    tiny = np.finfo(np.float64).tiny
    ok = np.isfinite(n) & np.isfinite(expect) & (expect > tiny * 1e3) & (n > tiny * 1e3)
    if not ok.any():
        raise ValueError("norms: no point where both the curve and rho^k are normal finite numbers")
    return float(np.max(np.abs(n[ok] / expect[ok] - 1.0))), int(ok.sum())


# -- finite differences --------------------------------------------------------------------------------

#: The roundoff floor of a central difference of L = <dh_T, h_T> is FD_ROUNDOFF_ULPS · u · sum|dh_T ⊙ h_T| / eps
#: (u = 2^-53, float64): one evaluation of L may be off by about u times the sum of its terms' sizes (it
#: rounds far less on average: over the full preset's linear settings the observed error was at most a tenth
#: of that), and the difference of two evaluations by twice that.
FD_ROUNDOFF_ULPS = 2.0


def fd_roundoff_floor(loss_scale: float, eps: float) -> float:
    """The absolute error a central difference of step ``eps`` may have from rounding alone, for a loss whose
    terms sum to ``loss_scale`` in absolute value (float64)."""
    return FD_ROUNDOFF_ULPS * (np.finfo(np.float64).eps / 2) * float(loss_scale) / eps


def fd_directional_errors(loss: Callable[[int, np.ndarray, Optional[np.ndarray]], float], g: np.ndarray,
                          gc: Optional[np.ndarray] = None, eps: float = 1e-6, seed: int = 0,
                          loss_scale: float = 0.0) -> float:
    """Largest relative error of the adjoints ``g`` (and ``gc``) against central differences.

    ``loss(j, dh, dc)`` must return L with ``dh`` added to h_{j+1} (and ``dc`` to c_{j+1}, or None).
    At every step j, two directions are tried: a random unit direction v and the normalised adjoint
    itself; the error is (|FD − <g_j, v>| − r) / ‖g_j‖ (at least 0), where r is the difference's roundoff
    floor for a loss of terms summing to ``loss_scale`` (:func:`fd_roundoff_floor`). Without r, a step
    whose adjoint is small next to L (a vanishing gradient at B·H = 4096) fails on rounding alone.
    """
    floor = fd_roundoff_floor(loss_scale, eps)
    rng = np.random.default_rng([int(seed), 3])
    T = g.shape[0]
    worst = 0.0
    parts = [(g, "h")] + ([(gc, "c")] if gc is not None else [])
    for arr, which in parts:
        for j in range(T):
            gj = np.asarray(arr[j], dtype=np.float64)
            gn = float(np.linalg.norm(gj))
            if gn == 0.0:
                continue
            r = rng.standard_normal(gj.shape)
            for v in (r / np.linalg.norm(r), gj / gn):
                def L(sign):
                    d = sign * eps * v
                    return loss(j, d, None) if which == "h" else loss(j, np.zeros_like(d), d)
                fd = (L(+1) - L(-1)) / (2 * eps)
                worst = max(worst, max(0.0, abs(fd - float((gj * v).sum())) - floor) / gn)
    return worst


def fd_check_hidden_grads(forward: Callable, spec: CellSpec, params: Params, x: np.ndarray, dh_T: np.ndarray,
                          g: np.ndarray, gc: Optional[np.ndarray] = None, eps: float = 1e-6, seed: int = 0) -> float:
    """Central-difference check of ``hidden_grads`` output on a (short) sequence, in float64.

    The perturbation is added to the last layer's state *between two forward calls*: the sequence is
    run up to step j+1, δ is added to h_{j+1} (or to c_{j+1}, with h_{j+1} = o ⊙ tanh(c_{j+1} + δ)
    re-formed, since ∂L/∂c_t includes the path through h_t), and the rest runs from that state;
    L = <dh_T, h_T>. ``forward(spec, params, x, state) -> (y, final_state)`` is a backend's forward
    (the suite passes the NumPy reference). Returns the largest relative error (see
    :func:`fd_directional_errors`).
    """
    if params.dtype != np.float64 or x.dtype != np.float64:
        raise TypeError(f"params/x: got {params.dtype}/{x.dtype}; the finite-difference check runs in float64")
    T = x.shape[0]
    dh_T = np.asarray(dh_T, dtype=np.float64)
    prefix = []
    for j in range(T):  # state after step j+1, computed once per j
        _, st = forward(spec, params, x[:j + 1])
        prefix.append(st)

    if gc is not None and spec.num_layers != 1:
        raise ValueError(f"spec.num_layers: got {spec.num_layers}; the cell-state check is for one layer")
    H = spec.hidden_size

    def loss(j: int, dh: np.ndarray, dc: Optional[np.ndarray]) -> float:
        st = prefix[j]
        if spec.is_lstm:
            h, c = st[0].copy(), st[1].copy()
            h[-1] += dh
            if dc is not None:
                # ∂L/∂c_t counts the path through h_t = o_t ⊙ tanh(c_t) (numpy_rnn's convention), so
                # perturb c_t *before* h_t is formed: recompute h_t with the output gate of step t.
                lp = params.layers[0]
                h_prev = prefix[j - 1][0][0] if j > 0 else np.zeros_like(h[0])
                a_o = x[j] @ lp.w_ih[3 * H:].T + h_prev @ lp.w_hh[3 * H:].T
                if lp.b_ih is not None:
                    a_o = a_o + lp.b_ih[3 * H:] + lp.b_hh[3 * H:]
                c[-1] += dc
                h[-1] = _sigmoid(a_o) * np.tanh(c[-1]) + dh
            st2 = (h, c)
        else:
            st2 = st.copy()
            st2[-1] += dh
        if j + 1 < T:
            _, fin = forward(spec, params, x[j + 1:], st2)
        else:
            fin = st2
        hT = fin[0][-1] if spec.is_lstm else fin[-1]
        return float((dh_T * hT).sum())

    last = prefix[-1]
    hT = last[0][-1] if spec.is_lstm else last[-1]
    return fd_directional_errors(loss, g, gc, eps=eps, seed=seed, loss_scale=float(np.abs(dh_T * hT).sum()))


def fd_check_linear(w_hh: np.ndarray, w_ih: np.ndarray, x: np.ndarray, dh_T: np.ndarray, g: np.ndarray,
                    eps: float = 1e-6, seed: int = 0) -> float:
    """The finite-difference check of :func:`linear_hidden_grads` (same protocol as the RNN check)."""
    hs = linear_forward(w_hh, w_ih, x)
    T = x.shape[0]

    def loss(j: int, dh: np.ndarray, dc) -> float:
        h0 = hs[j] + dh
        hT = linear_forward(w_hh, w_ih, x[j + 1:], h0)[-1] if j + 1 < T else h0
        return float((dh_T * hT).sum())

    return fd_directional_errors(loss, g, None, eps=eps, seed=seed, loss_scale=float(np.abs(dh_T * hs[-1]).sum()))


# -- parameter gradients and clipping -------------------------------------------------------------------

def global_norm(grads: Params) -> float:
    """‖∂L/∂θ‖: the Euclidean norm over every parameter gradient (float64, scaled)."""
    if not isinstance(grads, Params):
        raise TypeError(f"grads: got {type(grads).__name__}; expected harness.core.params.Params")
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for _, a in grads.items()])
    return float(_scaled_norms(flat[None, :])[0])


def clip_global_norm(grads: Params, max_norm: float) -> Tuple[Params, float, float]:
    """Global-norm clipping as ``torch.nn.utils.clip_grad_norm_``: scale by min(1, max_norm / (‖g‖ + 1e-6)).

    Returns ``(clipped grads, norm before, coefficient applied)``. A non-finite norm gives a NaN
    coefficient and NaN gradients (as PyTorch does without ``error_if_nonfinite``).
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.floating)) \
            or not np.isfinite(max_norm) or max_norm <= 0:
        raise ValueError(f"max_norm: got {max_norm!r}; allowed: a finite number > 0")
    total = global_norm(grads)
    coef = float(max_norm) / (total + CLIP_EPS) if np.isfinite(total) else float("nan")
    coef = min(coef, 1.0) if np.isfinite(coef) else coef
    return grads.map(lambda a: a * coef), total, coef


# -- cross-backend agreement ----------------------------------------------------------------------------

def full_precision_floor(dtype) -> float:
    """The smallest norm at which an adjoint of ``dtype`` still carries its format's full relative precision:
    tiny / eps (about 1e-292 in float64, 1e-31 in float32). Below it, elements pass through the subnormal
    range, where NumPy keeps gradual underflow and XLA's CPU code flushes to zero, so two correct backends
    part there (one gives exact zeros where the other still has digits)."""
    fi = np.finfo(np.dtype(dtype))
    return float(fi.tiny / fi.eps)


def curve_disagreement(g: np.ndarray, g_ref: np.ndarray, last_k: Optional[int] = None) -> Tuple[float, int]:
    """max_k ‖g_k − g_ref,k‖ / ‖g_ref,k‖ over k = 0..last_k where the reference is finite and at least
    :func:`full_precision_floor` of its dtype (so also positive).

    Compares the whole adjoint vectors (stricter than comparing norms). Returns ``(max_rel, k_at_max)``.
    """
    g = _check_grads(g, "g")
    g_ref = _check_grads(g_ref, "g_ref")
    if g.shape != g_ref.shape:
        raise ValueError(f"g: got shape {g.shape}; expected the reference's {g_ref.shape}")
    ref = np.asarray(g_ref[::-1], dtype=np.float64)
    diff = np.asarray(g[::-1], dtype=np.float64) - ref
    nref = _scaled_norms(ref)
    with np.errstate(invalid="ignore"):
        ndiff = _scaled_norms(np.where(np.isfinite(diff), diff, np.inf))
    K = g.shape[0] if last_k is None else min(g.shape[0], last_k + 1)
    floor = full_precision_floor(np.asarray(g_ref).dtype)
    ok = np.isfinite(nref[:K]) & (nref[:K] >= floor)
    if not ok.any():
        raise ValueError(f"g_ref: no step with a finite norm of at least {floor:.3g} to compare against")
    rel = np.full(K, -1.0)
    rel[ok] = ndiff[:K][ok] / nref[:K][ok]
    rel = np.where(np.isnan(rel), np.inf, rel)
    k = int(np.argmax(rel))
    return float(rel[k]), k


def monotonic_increasing(values: Sequence[float]) -> bool:
    """Strictly increasing (and all finite)."""
    v = np.asarray(values, dtype=np.float64)
    return bool(np.isfinite(v).all() and (np.diff(v) > 0).all())
