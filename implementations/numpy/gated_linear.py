"""Gated linear recurrences in NumPy, the reference: minGRU, minLSTM (Feng et al. 2024) and the RG-LRU (De et al.
2024), with forward (sequential and as a parallel scan), BPTT, hidden-state gradients and exact per-unit RTRL.

The gates of these cells depend on the input only, so each layer is ``h_t = a_t ⊙ h_{t-1} + u_t`` with
``(a_t, u_t)`` computed from ``A_t = W x_t + b`` (all T steps in one GEMM) and, for the RG-LRU, the per-unit
``Λ``. Time-major; ``⊙`` elementwise; ``σ`` the logistic sigmoid; layer l > 0 takes layer l−1's ``h`` as input;
the output ``y_t`` is the last layer's ``h_t``; states ``(L, B, H)``.

- ``mingru``:  ``W (2H, I)`` rows ``[z; h̃]``: ``z = σ(A_z)``, ``a = 1 − z``, ``u = z ⊙ A_h``.
- ``minlstm``: ``W (3H, I)`` rows ``[f; i; h̃]``: ``f = σ(A_f)``, ``i = σ(A_i)``, ``a = f / (f + i)``,
  ``u = i / (f + i) ⊙ A_h``.
- ``rglru``:   ``W (3H, I)`` rows ``[a; x; u]`` and ``lam (H,)``: ``r = σ(A_a)``, ``i = σ(A_x)``,
  ``log a = −c · r ⊙ softplus(−Λ)`` (so ``a = σ(Λ)^(c·r)``, c = :data:`RGLRU_C`), ``u = sqrt(1 − a²) ⊙ i ⊙ A_u``.

The cells are defined in :mod:`harness.core.cells` (``mingru``, ``minlstm``, ``rglru``); their layers hold exactly
their own parameters (``w_ih``, ``b_ih``, and ``lam`` for the RG-LRU; :class:`~harness.core.params.LayerParams`),
and gradients come back in the same structure. L = Σ_t <dy_t, y_t> + <dh_T, h_T>, as for the other cells.

Why RTRL is cheap here: ∂h_t[j]/∂θ is non-zero only for unit j's own parameters (its rows of W and b, its Λ_j),
because h_t[j] depends on h_{t-1}[j] alone. The influence is ``(B, H, p)`` with p the parameters per unit
(``G·(I+1)`` plus 1 for Λ), i.e. O(B·P) memory and O(B·P) time per step: the cost of one BPTT step's parameter
gradient, where a dense RNN's RTRL costs O(B·H·P) memory and O(B·H²·P) time.

This is the reference the NumPy backend, the torch and JAX variants and the suites are checked against.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from harness.core import cells as _cells
from harness.core.errors import InputError
from harness.core.params import PARAM_NAMES, Grads, LayerParams, Params
from harness.core.spec import CellSpec, check_algorithm_args, check_positive_int, check_sequence

RGLRU_C = _cells.RGLRU_C
#: Steps per block of the NumPy backend's RTRL (:func:`rtrl` ``chunk``): the influence is read and written once per
#: block, and the block's outer products run as GEMMs of inner size ``RTRL_BLOCK·B``; the gradient is exact at every
#: block boundary (``chunk=1`` is the classic per-step form, exact after every step).
RTRL_BLOCK = 32


def _gates(spec: CellSpec) -> int:
    d = spec.definition
    if not d.gated_linear or spec.cell not in _cells.GATED_LINEAR_CELLS:
        raise InputError(f"cell: got {spec.cell!r}; this reference runs {', '.join(_cells.GATED_LINEAR_CELLS)}")
    return d.gates


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def coefficients(cell: str, A: np.ndarray, lam: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, tuple]:
    """``(a, u, parts)`` of ``h = a ⊙ h_prev + u`` from the pre-activations ``A = x Wᵀ + b`` ``(..., G·H)``: the
    cell's own definition (:attr:`harness.core.cells.CellDef.coefficients`) on NumPy arrays."""
    return _cells.get(cell).coefficients(A, {"lam": lam}, np)


def coefficients_vjp(cell: str, cache: tuple, da: np.ndarray, du: np.ndarray,
                     lam: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(dA, dlam)`` from the cotangents of ``a`` and ``u`` (``dlam`` summed over every leading axis)."""
    if cell == "mingru":
        z, ht = cache
        dz = -da + ht * du
        return np.concatenate([dz * z * (1.0 - z), z * du], axis=-1), None
    if cell == "minlstm":
        f, i, s, ht = cache
        s2 = s * s
        w = da - du * ht  # d(a)/df = i/s², d(i/s)/df = −i/s²: both through (da − du·ht)
        df = w * i / s2
        di = -w * f / s2
        return np.concatenate([df * f * (1.0 - f), di * i * (1.0 - i), du * i / s], axis=-1), None
    r, i, uu, sp, a, q, v = cache
    # a = exp(la), la = −c·r·sp; u = q·v with q = sqrt(1 − a²): dq/da = −a/q
    dla = a * da - du * v * a * a / q
    dr = -RGLRU_C * sp * dla
    dv = du * q
    dsp = (-RGLRU_C * r * dla).reshape(-1, r.shape[-1]).sum(axis=0)
    dlam = -dsp * _sigmoid(-lam)  # d softplus(−Λ)/dΛ = −σ(−Λ)
    return np.concatenate([dr * r * (1.0 - r), dv * uu * i * (1.0 - i), dv * i], axis=-1), dlam


def _check(spec: CellSpec, params: Params, x: np.ndarray, h0: Optional[np.ndarray]) -> Tuple[int, int, int]:
    _gates(spec)
    if not isinstance(params, Params):
        raise InputError(f"params: got {type(params).__name__}; expected harness.core.params.Params")
    params.validate(spec)
    check_sequence(spec, x)
    if x.dtype != params.dtype:
        raise InputError(f"x: dtype {x.dtype} differs from the parameters' {params.dtype}")
    T, B, _ = x.shape
    H = spec.hidden_size
    if h0 is not None and np.shape(h0) != (spec.num_layers, B, H):
        raise InputError(f"state: got shape {np.shape(h0)}; expected {(spec.num_layers, B, H)}")
    return T, B, H


def _layer_coeffs(cell: str, lp: LayerParams, xin: np.ndarray):
    A = xin @ lp.w_ih.T
    if lp.b_ih is not None:
        A = A + lp.b_ih
    return coefficients(cell, A, lp.lam)


def linear_scan(a: np.ndarray, u: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """All ``h_t = a_t ⊙ h_{t-1} + u_t`` ``(T, ...)``, step by step."""
    out = np.empty_like(u)
    h = h0
    for t in range(a.shape[0]):
        h = a[t] * h + u[t]
        out[t] = h
    return out


def parallel_scan(a: np.ndarray, u: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """The same states by a Hillis–Steele inclusive scan over the associative pairs ``(a, u)`` with
    ``(a₁, u₁) ∘ (a₂, u₂) = (a₂a₁, a₂u₁ + u₂)``: ⌈log₂ T⌉ rounds of whole-array operations (more arithmetic,
    T·log T, but no step depends on the previous one). The reference of the parallel form."""
    A = a.copy()
    U = u.copy()
    U[0] = a[0] * h0 + u[0]
    A[0] = 0.0  # h_0 is folded in: the first element is a constant
    T = a.shape[0]
    d = 1
    while d < T:
        U[d:] = A[d:] * U[:-d] + U[d:]
        A[d:] = A[d:] * A[:-d]
        d *= 2
    return U


def forward(spec: CellSpec, params: Params, x: np.ndarray, state: Optional[np.ndarray] = None,
            scan: str = "sequential") -> Tuple[np.ndarray, np.ndarray]:
    """``(y (T, B, H), h_T (L, B, H))``; ``scan`` is ``sequential`` or ``parallel`` (:func:`parallel_scan`)."""
    T, B, H = _check(spec, params, x, state)
    if scan not in ("sequential", "parallel"):
        raise InputError(f"scan: got {scan!r}; allowed: sequential, parallel")
    run = linear_scan if scan == "sequential" else parallel_scan
    xin, finals = x, []
    for l, lp in enumerate(params.layers):
        a, u, _ = _layer_coeffs(spec.cell, lp, xin)
        hs = run(a, u, np.zeros((B, H), x.dtype) if state is None else state[l])
        finals.append(hs[-1])
        xin = hs
    return xin, np.stack(finals)


def vjp(spec: CellSpec, params: Params, x: np.ndarray, state: Optional[np.ndarray], dy: Optional[np.ndarray],
        d_final_state: Optional[np.ndarray], truncation: Optional[int] = None) -> Grads:
    """BPTT of L = Σ_t <dy_t, y_t> + <dh_T, h_T>: parameter gradients (the cell's own parameters only),
    ``dx (T, B, I)`` and ``dstate (L, B, H)``.

    ``truncation = k``: truncated BPTT(k), the gradient cut wherever ``t % k == 0`` (every layer's state entering
    such a step is treated as a constant, as ``detach``/``stop_gradient`` do in torch and JAX). It runs chunk by
    chunk, so it stores k steps at a time; ``dstate`` comes from the first chunk."""
    T, B, H = _check(spec, params, x, state)
    k = None if truncation is None else check_algorithm_args("tbptt", truncation)
    if k is None or k >= T:
        return _vjp_full(spec, params, x, state, dy, d_final_state)[0]
    h = np.zeros((spec.num_layers, B, H), x.dtype) if state is None else state
    # The chunks' parameter gradients are summed as they come and dx is written into one (T, B, I) array: what
    # stays alive between chunks is one gradient and dx, not one gradient per chunk and a second dx.
    total: Optional[Params] = None
    dx = np.empty_like(x)
    dstate = None
    for t0 in range(0, T, k):
        t1 = min(T, t0 + k)
        g, h = _vjp_full(spec, params, x[t0:t1], h, None if dy is None else dy[t0:t1],
                         d_final_state if t1 == T else None)
        dx[t0:t1] = g.dx
        dstate = g.dstate if dstate is None else dstate
        if total is None:
            total = g.params  # fresh arrays of this call: summed into in place
        else:
            _add_into(total, g.params)
        del g  # this chunk's gradient must not stay alive through the next chunk
    return Grads(params=total, dx=dx, dstate=dstate, extra={"algorithm": "tbptt", "truncation": k})


def _add_into(total: Params, part: Params) -> None:
    """``total += part``, parameter by parameter, in place."""
    for acc_l, lp in zip(total.layers, part.layers):
        for n in PARAM_NAMES:
            if getattr(acc_l, n) is not None:
                getattr(acc_l, n)[...] += getattr(lp, n)


def _vjp_full(spec: CellSpec, params: Params, x: np.ndarray, state: Optional[np.ndarray], dy: Optional[np.ndarray],
              d_final_state: Optional[np.ndarray]) -> Tuple[Grads, np.ndarray]:
    """Untruncated BPTT: ``(Grads, final states (L, B, H))``."""
    T, B, H = x.shape[0], x.shape[1], spec.hidden_size
    L = spec.num_layers
    h0 = np.zeros((L, B, H), x.dtype) if state is None else state
    ins, caches = [], []
    xin = x
    for l, lp in enumerate(params.layers):
        a, u, cache = _layer_coeffs(spec.cell, lp, xin)
        hs = linear_scan(a, u, h0[l])
        ins.append(xin)
        caches.append((a, hs, cache))
        xin = hs
    dout = np.zeros((T, B, H), x.dtype) if dy is None else np.array(dy, dtype=x.dtype)
    grads: List[LayerParams] = [None] * L  # type: ignore[list-item]
    dh0 = np.zeros((L, B, H), x.dtype)
    for l in range(L - 1, -1, -1):
        a, hs, cache = caches[l]
        lp = params.layers[l]
        delta = np.empty_like(dout)  # ∂L/∂h_t, total
        carry = np.zeros((B, H), x.dtype) if d_final_state is None else np.array(d_final_state[l], dtype=x.dtype)
        for t in range(T - 1, -1, -1):
            carry = dout[t] + carry
            delta[t] = carry
            carry = a[t] * carry
        dh0[l] = carry
        h_prev = np.concatenate([h0[l][None], hs[:-1]], axis=0)
        dA, dlam = coefficients_vjp(spec.cell, cache, delta * h_prev, delta, lp.lam)
        grads[l] = LayerParams(w_ih=dA.reshape(T * B, -1).T @ ins[l].reshape(T * B, -1),  # one GEMM
                               b_ih=None if lp.b_ih is None else dA.sum(axis=(0, 1)), lam=dlam)
        dout = dA @ lp.w_ih  # the cotangent of the layer's input: dx, or the layer below's dy
    finals = np.stack([c[1][-1] for c in caches])
    return Grads(params=Params(grads), dx=dout, dstate=dh0, extra={"algorithm": "bptt"}), finals


def hidden_grads(spec: CellSpec, params: Params, x: np.ndarray, dh_T: np.ndarray) -> np.ndarray:
    """∂L/∂h_t of the last layer for L = <dh_T, h_T> ``(T, B, H)`` (``[-1]`` is ``dh_T``): exactly
    ``dh_T ⊙ Π_{s>t} a_s``, since ∂h_t/∂h_{t−1} = diag(a_t)."""
    T, B, H = _check(spec, params, x, None)
    xin = x
    for lp in params.layers:
        a, u, _ = _layer_coeffs(spec.cell, lp, xin)
        xin = linear_scan(a, u, np.zeros((B, H), x.dtype))
    g = np.empty((T, B, H), x.dtype)
    g[-1] = dh_T
    for t in range(T - 1, 0, -1):
        g[t - 1] = a[t] * g[t]
    return g


def _block_update(M: np.ndarray, acc: np.ndarray, tmp: np.ndarray, a: np.ndarray, c: np.ndarray, w: np.ndarray,
                  e: np.ndarray, xt: np.ndarray, G: int) -> None:
    """One RTRL block of k steps, in place: ``acc += Σ_i g_i ⊙ M_i`` and ``M ← M_k``, with
    ``M_i = (Π_{r≤i} a_r) ⊙ M_0 + Σ_{s≤i} (Π_{s<r≤i} a_r) ⊙ c_s ⊗ x̃_s``. ``a, w, e (k, B, H)``,
    ``c (k, B, H, G)``, ``xt (k·B, I+1)``; ``M (B, H·G, I+1)``; ``acc, tmp (H·G, I+1)``."""
    k, B, H = a.shape
    alpha_rows = np.repeat(a[0] * w[0], G, axis=1)   # the block's weight on the influence it starts with
    for b in range(B):
        np.multiply(M[b], alpha_rows[b][:, None], out=tmp)
        acc += tmp
    np.matmul((w[..., None] * c).reshape(k * B, H * G).T, xt, out=tmp)   # Σ_s w_s ⊙ c_s ⊗ x̃_s as one GEMM
    acc += tmp
    M *= np.repeat(a[0] * e[0], G, axis=1)[:, :, None]
    ec = (e[..., None] * c).reshape(k, B, H * G)
    xtb = xt.reshape(k, B, -1)
    for b in range(B):
        np.matmul(ec[:, b].T, xtb[:, b], out=tmp)
        M[b] += tmp


def rtrl(spec: CellSpec, params: Params, x: np.ndarray, state: Optional[np.ndarray], dy: Optional[np.ndarray],
         d_final_state: Optional[np.ndarray], chunk: int = 1) -> Tuple[Params, np.ndarray]:
    """Exact RTRL, forward in time, one layer: ``(parameter gradients, dstate)``, equal to :func:`vjp`'s.

    The influence of unit j holds only unit j's parameters: ``M[b, j·G + g, k] = ∂h_t[b, j]/∂W[g·H + j, k]``
    (with the bias as column k = I) and ``m_lam[b, j] = ∂h_t[b, j]/∂Λ_j``; ``d[b, j] = ∂h_t[b, j]/∂h_0[b, j]``.
    A step is ``M ← a_t ⊙ M + c_t ⊗ [x_t, 1]`` (row scaling plus one outer product) and the gradient gathers
    ``Σ_t cot_t ⊙ M_t``: O(B·P) time and memory (:meth:`harness.core.cells.CellDef.rtrl_influence_elements`).

    ``chunk = 1`` is the classic per-step form: the gradient so far is exact after every step. ``chunk = K``
    carries the influence across blocks of K steps and, inside a block, gathers the K outer products as two
    GEMMs of inner size K·B, with the weights of each outer product from a K-step reverse recurrence over the
    (B, H) state only (the block hybrid of Williams & Zipser 1995 and Schmidhuber 1992, exact here because the
    per-unit influence makes the block's Jacobian diagonal). The gradient is exact at every block boundary; the
    influence is read and written once per block instead of once per step. Memory: ``B·P + 2P`` plus the
    block's ``K·B·(G·H + I)``, independent of T either way."""
    T, B, H = _check(spec, params, x, state)
    if spec.num_layers != 1:
        raise NotImplementedError(f"rtrl for {spec.cell}: one layer only (got {spec.num_layers}); above the first "
                                  "layer a unit's state depends on every unit below, so the influence is no longer "
                                  "per unit")
    chunk = check_positive_int("chunk", chunk, "steps per RTRL block")
    lp = params.layers[0]
    G, I = spec.gates, x.shape[2]
    dt = x.dtype
    has_lam = lp.lam is not None
    h = np.zeros((B, H), dt) if state is None else np.array(state[0], dtype=dt)
    M = np.zeros((B, H * G, I + 1), dt)   # rows j·G + g, so a per-unit factor repeats G times down the rows
    acc = np.zeros((H * G, I + 1), dt)
    tmp = np.empty((H * G, I + 1), dt)
    m_lam = np.zeros((B, H), dt)
    acc_lam = np.zeros(H, dt)
    dstate = np.ones((B, H), dt)          # ∂h_t/∂h_0, per unit
    acc_h0 = np.zeros((B, H), dt)
    dla_dlam = None if not has_lam else RGLRU_C * _sigmoid(-lp.lam)  # ∂ log a/∂Λ, divided by r
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        k = t1 - t0
        xs = x[t0:t1]
        a, u, cache = _layer_coeffs(spec.cell, lp, xs)              # (k, B, H) each: one GEMM for the block
        hp = np.empty((k, B, H), dt)                                 # h_{t-1} of each step
        for i in range(k):
            hp[i] = h
            h = a[i] * h + u[i]
        # Immediate part of every step: ∂(a ⊙ h_prev + u)/∂A by the local vjp with cotangents (h_prev, 1).
        dA_unit, _ = coefficients_vjp(spec.cell, cache, hp, np.ones_like(hp), lp.lam)   # (k, B, G·H)
        c = dA_unit.reshape(k, B, G, H).transpose(0, 1, 3, 2)      # (k, B, H, G)
        e_lam = None
        if has_lam:
            r, q, v = cache[0], cache[5], cache[6]
            e_lam = (hp * a - v * a * a / q) * r * dla_dlam          # immediate ∂h_t/∂Λ
        g = np.zeros((k, B, H), dt) if dy is None else np.array(dy[t0:t1], dtype=dt)
        if t1 == T and d_final_state is not None:
            g[-1] += d_final_state[0]
        # Reverse recurrences over the block: w[s] = Σ_{i≥s} g_i Π_{s<r≤i} a_r (what step s's outer product is
        # worth to the gradient), e[s] = Π_{s<r<k} a_r (what it is worth to the influence at the block's end).
        w = np.empty((k, B, H), dt)
        e = np.empty((k, B, H), dt)
        w[-1], e[-1] = g[-1], 1.0
        for s in range(k - 2, -1, -1):
            w[s] = g[s] + a[s + 1] * w[s + 1]
            e[s] = e[s + 1] * a[s + 1]
        alpha = a[0] * w[0]                  # Σ_i g_i Π_{r≤i} a_r: the block's weight on the influence it starts with
        decay = a[0] * e[0]                  # Π_r a_r over the block
        xt = np.concatenate([xs, np.ones((k, B, 1), dt)], axis=2).reshape(k * B, I + 1)
        if k == 1:  # the classic step, in place: M ← a ⊙ M + c ⊗ x̃, then acc += g ⊙ M (no rank-1 GEMM)
            M *= np.repeat(a[0], G, axis=1)[:, :, None]
            c_rows, g_rows = c[0].reshape(B, H * G), np.repeat(g[0], G, axis=1)
            for b in range(B):
                np.multiply(c_rows[b][:, None], xt[b][None, :], out=tmp)
                M[b] += tmp
                np.multiply(M[b], g_rows[b][:, None], out=tmp)
                acc += tmp
        else:
            _block_update(M, acc, tmp, a, c, w, e, xt, G)
        if has_lam:
            acc_lam += (alpha * m_lam + (w * e_lam).sum(axis=0)).sum(axis=0)
            m_lam = decay * m_lam + (e * e_lam).sum(axis=0)
        acc_h0 += alpha * dstate
        dstate *= decay
        # Free this block's buffers before the next block allocates its own: otherwise both blocks' sets are
        # alive at once (Python keeps a name's old array until the name is rebound) and the peak holds two.
        del a, u, cache, hp, dA_unit, c, e_lam, g, w, e, alpha, decay, xt
    del M, tmp  # the gradient is formed from acc alone: the influence and the GEMM buffer are not needed any more
    acc = acc.reshape(H, G, I + 1)
    wg = acc[:, :, :I].transpose(1, 0, 2).reshape(G * H, I)
    bg = acc[:, :, I].T.reshape(G * H) if lp.b_ih is not None else None
    return Params([LayerParams(w_ih=wg, b_ih=bg, lam=acc_lam if has_lam else None)]), acc_h0[None]
