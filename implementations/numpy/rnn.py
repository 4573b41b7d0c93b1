"""NumPy reference: forward, BPTT (and truncated BPTT) and per-step hidden-state gradients.

Written the way a performance engineer writes NumPy:
- the input projection of all T steps is one ``(T·B, I) x (I, G·H)`` GEMM, hoisted out of the loop;
- each step does one fused ``(B, H) x (H, G·H)`` GEMM for all gates, then in-place ufuncs on
  preallocated buffers (``out=``), no Python loops over batch or hidden units;
- the backward pass accumulates the weight gradients as two large GEMMs over all steps
  (``dW_ih = dA^T X``, ``dW_hh = dA^T H_prev``) instead of T small ones.

LSTM gates are permuted internally from PyTorch's (i, f, g, o) to (i, f, o, g) so that one
sigmoid covers a contiguous 3H block; parameters and gradients stay canonical at the interface.

Shapes: x ``(T, B, I)``, y ``(T, B, H)``, states ``(L, B, H)``. Only float32/float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from harness.core.params import Grads, LayerParams, Params
from harness.core.spec import CellSpec, State, zero_state
from implementations.numpy.batch_parallel import batch_parallel

# LSTM: canonical gate order i,f,g,o -> internal i,f,o,g (and back).
_LSTM_PERM = (0, 1, 3, 2)


def _gate_perm(a: Optional[np.ndarray], H: int, perm) -> Optional[np.ndarray]:
    if a is None:
        return None
    return np.concatenate([a[k * H:(k + 1) * H] for k in perm], axis=0)


def sigmoid_(a: np.ndarray) -> np.ndarray:
    """In-place logistic: σ(a) = (1 + tanh(a/2)) / 2 — no overflow for large |a|, one transcendental."""
    np.multiply(a, 0.5, out=a)
    np.tanh(a, out=a)
    np.multiply(a, 0.5, out=a)
    np.add(a, 0.5, out=a)
    return a


@dataclass
class _LayerCache:
    """What one layer's forward keeps for its backward pass."""

    x: np.ndarray                  # (T, B, I_l) layer input
    h: np.ndarray                  # (T+1, B, H), h[0] = initial state
    acts: np.ndarray               # (T, B, G*H) activated gates (RNN: unused, h itself suffices)
    c: Optional[np.ndarray] = None       # LSTM (T+1, B, H)
    tanh_c: Optional[np.ndarray] = None  # LSTM (T, B, H)
    hn: Optional[np.ndarray] = None      # GRU (T, B, H): W_hn h + b_hn, needed for dr


def _internal_weights(spec: CellSpec, lp: LayerParams):
    """Weights in the internal gate order (only LSTM differs)."""
    if spec.cell != "lstm":
        return lp.w_ih, lp.w_hh, lp.b_ih, lp.b_hh
    H = spec.hidden_size
    return tuple(_gate_perm(a, H, _LSTM_PERM) for a in (lp.w_ih, lp.w_hh, lp.b_ih, lp.b_hh))


def _forward_steps(spec: CellSpec, w_hh_t: np.ndarray, b_hh: Optional[np.ndarray], acts: np.ndarray,
                   h: np.ndarray, c: Optional[np.ndarray], tanh_c: Optional[np.ndarray],
                   hn: Optional[np.ndarray]) -> None:
    """The recurrence over all T steps for one slice of the batch (all arrays are views of that slice).

    ``acts`` holds the hoisted input projections on entry and the activated gates on exit.
    """
    T, B, GH = acts.shape
    H = spec.hidden_size
    dt = acts.dtype
    hw = np.empty((B, GH), dtype=dt)
    tmp = np.empty((B, H), dtype=dt)
    cell = spec.cell
    for t in range(T):
        np.matmul(h[t], w_hh_t, out=hw)
        g = acts[t]
        if cell == "rnn_tanh":
            g += hw
            np.tanh(g, out=h[t + 1])
        elif cell == "rnn_relu":
            g += hw
            np.maximum(g, 0, out=h[t + 1])
        elif cell == "lstm":
            g += hw
            sigmoid_(g[:, :3 * H])                   # i, f, o
            np.tanh(g[:, 3 * H:], out=g[:, 3 * H:])  # g
            i, f, o, gg = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
            ct = c[t + 1]
            np.multiply(f, c[t], out=ct)
            np.multiply(i, gg, out=tmp)
            ct += tmp
            np.tanh(ct, out=tanh_c[t])
            np.multiply(o, tanh_c[t], out=h[t + 1])
        else:
            # GRU (PyTorch form): n = tanh(x_n + b_in + r * (W_hn h + b_hn)); h' = n + z (h - n)
            if b_hh is not None:
                hw += b_hh
            rz = g[:, :2 * H]
            rz += hw[:, :2 * H]
            sigmoid_(rz)
            r, z, n = g[:, :H], g[:, H:2 * H], g[:, 2 * H:]
            hn[t] = hw[:, 2 * H:]
            np.multiply(r, hn[t], out=tmp)
            n += tmp
            np.tanh(n, out=n)
            np.subtract(h[t], n, out=tmp)
            tmp *= z
            np.add(n, tmp, out=h[t + 1])


def _layer_forward(spec: CellSpec, lp: LayerParams, x: np.ndarray, h0: np.ndarray,
                   c0: Optional[np.ndarray], keep: bool) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[_LayerCache]]:
    """One layer over the whole sequence. Returns (y (T,B,H), h_T, c_T, cache)."""
    T, B, I = x.shape
    H, G = spec.hidden_size, spec.gates
    dt = x.dtype
    w_ih, w_hh, b_ih, b_hh = _internal_weights(spec, lp)
    # Hoisted input projection: one GEMM for all steps (multi-threaded BLAS). Biases folded in here
    # (GRU keeps b_hh apart: r multiplies (W_hn h + b_hn), so b_hn must stay on the recurrent side).
    xw = (x.reshape(T * B, I) @ w_ih.T).reshape(T, B, G * H)
    if b_ih is not None:
        xw += b_ih
        if spec.cell != "gru":
            xw += b_hh
    w_hh_t = w_hh.T  # a transposed view; BLAS handles it without a copy
    h = np.empty((T + 1, B, H), dtype=dt)
    h[0] = h0
    acts = xw  # activations overwrite the projections in place (the projections are not needed again)
    c = tanh_c = hn = None
    if spec.cell == "lstm":
        c = np.empty((T + 1, B, H), dtype=dt)
        c[0] = c0
        tanh_c = np.empty((T, B, H), dtype=dt)
    elif spec.cell == "gru":
        hn = np.empty((T, B, H), dtype=dt)

    def run(b0: int, b1: int) -> None:
        sl = slice(b0, b1)
        _forward_steps(spec, w_hh_t, b_hh, acts[:, sl], h[:, sl], None if c is None else c[:, sl],
                       None if tanh_c is None else tanh_c[:, sl], None if hn is None else hn[:, sl])

    batch_parallel(run, B)
    cache = _LayerCache(x=x, h=h, acts=acts, c=c, tanh_c=tanh_c, hn=hn) if keep else None
    return h[1:], h[T], (None if c is None else c[T]), cache


def forward(spec: CellSpec, params: Params, x: np.ndarray, state: Optional[State] = None,
            keep: bool = False) -> Tuple[np.ndarray, State, Optional[List[_LayerCache]]]:
    """Run all layers. Returns ``(y (T,B,H), final_state, caches or None)``. Inputs must be validated."""
    T, B, _ = x.shape
    dt = x.dtype
    if state is None:
        state = zero_state(spec, B, dt)
    hs, cs = (state if spec.is_lstm else (state, None))
    h_out = np.empty(spec.state_shape(B), dtype=dt)
    c_out = np.empty(spec.state_shape(B), dtype=dt) if spec.is_lstm else None
    caches = [] if keep else None
    inp = x
    for l, lp in enumerate(params.layers):
        y, hT, cT, cache = _layer_forward(spec, lp, inp, hs[l], None if cs is None else cs[l], keep)
        h_out[l] = hT
        if c_out is not None:
            c_out[l] = cT
        if keep:
            caches.append(cache)
        inp = y
    final = (h_out, c_out) if spec.is_lstm else h_out
    return inp, final, caches


def _backward_steps(spec: CellSpec, w_hh: np.ndarray, h: np.ndarray, acts: np.ndarray,
                    c: Optional[np.ndarray], tanh_c: Optional[np.ndarray], hn: Optional[np.ndarray],
                    dy: Optional[np.ndarray], dh: np.ndarray, dc: Optional[np.ndarray], dA: np.ndarray,
                    dR: np.ndarray, dh_all: Optional[np.ndarray], dc_all: Optional[np.ndarray]) -> None:
    """Reverse recurrence over all steps for one slice of the batch (all arrays are views of it).

    ``dh``/``dc`` hold the final-state cotangents on entry and dL/d(initial state) on exit; ``dA``/``dR``
    receive the pre-activation gradients on the input/recurrent side (the same array except for GRU).
    """
    T, B, GH = acts.shape
    H = spec.hidden_size
    dt = acts.dtype
    cell = spec.cell
    tmp = np.empty((B, H), dtype=dt)
    tmp3 = np.empty((B, 3 * H), dtype=dt) if cell == "lstm" else None
    direct = np.empty((B, H), dtype=dt) if cell == "gru" else None
    for t in range(T - 1, -1, -1):
        if dy is not None:
            dh += dy[t]
        if dh_all is not None:
            dh_all[t] = dh
        da = dA[t]
        if cell == "rnn_tanh":
            np.multiply(h[t + 1], h[t + 1], out=da)
            np.subtract(1, da, out=da)
            da *= dh
        elif cell == "rnn_relu":
            np.multiply(dh, h[t + 1] > 0, out=da)
        elif cell == "lstm":
            g = acts[t]
            i, f, o, gg = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
            tc = tanh_c[t]
            d_i, d_f, d_o, d_g = da[:, :H], da[:, H:2 * H], da[:, 2 * H:3 * H], da[:, 3 * H:]
            # dc += dh * o * (1 - tanh(c)^2)
            np.multiply(tc, tc, out=tmp)
            np.subtract(1, tmp, out=tmp)
            tmp *= o
            tmp *= dh
            dc += tmp
            if dc_all is not None:
                dc_all[t] = dc
            np.multiply(dh, tc, out=d_o)
            np.multiply(dc, gg, out=d_i)
            np.multiply(dc, i, out=d_g)
            np.multiply(dc, c[t], out=d_f)
            # sigmoid' = s(1-s) on the i,f,o block; tanh' = 1-g^2 on g
            sig = g[:, :3 * H]
            np.subtract(1, sig, out=tmp3)
            tmp3 *= sig
            da[:, :3 * H] *= tmp3
            np.multiply(gg, gg, out=tmp)
            np.subtract(1, tmp, out=tmp)
            d_g *= tmp
            dc *= f  # carry to c_{t-1}
        else:  # gru
            g = acts[t]
            r, z, n = g[:, :H], g[:, H:2 * H], g[:, 2 * H:]
            d_r, d_z, d_n = da[:, :H], da[:, H:2 * H], da[:, 2 * H:]
            # dn_pre = dh * (1 - z) * (1 - n^2)
            np.multiply(n, n, out=tmp)
            np.subtract(1, tmp, out=tmp)
            np.subtract(1, z, out=d_n)
            d_n *= tmp
            d_n *= dh
            # dz_pre = dh * (h - n) * z (1 - z)
            np.subtract(h[t], n, out=d_z)
            d_z *= dh
            np.subtract(1, z, out=tmp)
            tmp *= z
            d_z *= tmp
            # dr_pre = dn_pre * hn * r (1 - r)
            np.multiply(d_n, hn[t], out=d_r)
            np.subtract(1, r, out=tmp)
            tmp *= r
            d_r *= tmp
            dr_ = dR[t]
            dr_[:, :2 * H] = da[:, :2 * H]
            np.multiply(d_n, r, out=dr_[:, 2 * H:])
            np.multiply(dh, z, out=direct)
        # dh_{t-1} = dR_t W_hh (+ z dh for GRU)
        np.matmul(dR[t], w_hh, out=dh)
        if direct is not None:
            dh += direct


def _layer_backward(spec: CellSpec, lp: LayerParams, cache: _LayerCache, dy: Optional[np.ndarray],
                    dh_T: np.ndarray, dc_T: Optional[np.ndarray], record: bool = False):
    """BPTT through one layer.

    Args:
        dy: cotangent of this layer's outputs h_1..h_T ``(T, B, H)``, or None for zero.
        dh_T, dc_T: cotangents of the final state.
        record: also return the total adjoint of every h_t (and c_t) — for :func:`hidden_grads`.

    Returns ``(dx (T,B,I), LayerParams grads (canonical order), dh0, dc0, dh_all, dc_all)``.
    """
    x, h, acts = cache.x, cache.h, cache.acts
    T, B, I = x.shape
    H, G = spec.hidden_size, spec.gates
    dt = x.dtype
    w_ih, w_hh, b_ih, b_hh = _internal_weights(spec, lp)
    # dA: gradient of the pre-activations on the input side; dR: on the recurrent side (differs for GRU).
    dA = np.empty((T, B, G * H), dtype=dt)
    dR = dA if spec.cell != "gru" else np.empty((T, B, G * H), dtype=dt)
    dh = np.array(dh_T, dtype=dt, copy=True)
    dc = np.array(dc_T, dtype=dt, copy=True) if spec.is_lstm else None
    dh_all = np.empty((T, B, H), dtype=dt) if record else None
    dc_all = np.empty((T, B, H), dtype=dt) if (record and spec.is_lstm) else None

    def run(b0: int, b1: int) -> None:
        sl = slice(b0, b1)
        opt = lambda a: None if a is None else a[:, sl]  # noqa: E731 - slice an optional (T, B, .) array
        _backward_steps(spec, w_hh, h[:, sl], acts[:, sl], opt(cache.c), opt(cache.tanh_c), opt(cache.hn),
                        opt(dy), dh[sl], None if dc is None else dc[sl], dA[:, sl], dR[:, sl],
                        opt(dh_all), opt(dc_all))

    batch_parallel(run, B)
    # Weight gradients: two big GEMMs over all steps (multi-threaded BLAS).
    dA2 = dA.reshape(T * B, G * H)
    dR2 = dR.reshape(T * B, G * H)
    grads = {"w_ih": dA2.T @ x.reshape(T * B, I), "w_hh": dR2.T @ h[:-1].reshape(T * B, H)}
    dx = (dA2 @ w_ih).reshape(T, B, I)
    if b_ih is not None:
        grads["b_ih"] = dA2.sum(axis=0)
        grads["b_hh"] = dR2.sum(axis=0)
    if spec.cell == "lstm":
        grads = {k: _gate_perm(v, H, _LSTM_PERM) for k, v in grads.items()}  # the permutation is an involution
    return dx, LayerParams(**grads), dh, dc, dh_all, dc_all


def _backward(spec: CellSpec, params: Params, caches: List[_LayerCache], dy: Optional[np.ndarray],
              d_final_state: State) -> Tuple[List[LayerParams], np.ndarray, State]:
    """BPTT through all layers from their caches: (per-layer grads, dx, dL/d(initial state))."""
    B = caches[0].x.shape[1]
    dt = caches[0].x.dtype
    dhs, dcs = (d_final_state if spec.is_lstm else (d_final_state, None))
    dh0 = np.empty(spec.state_shape(B), dtype=dt)
    dc0 = np.empty(spec.state_shape(B), dtype=dt) if spec.is_lstm else None
    layer_grads: List[LayerParams] = [None] * spec.num_layers
    d_out = dy
    for l in range(spec.num_layers - 1, -1, -1):
        dx, lg, dh_l, dc_l, _, _ = _layer_backward(spec, params.layers[l], caches[l], d_out, dhs[l],
                                                  None if dcs is None else dcs[l])
        layer_grads[l] = lg
        dh0[l] = dh_l
        if dc0 is not None:
            dc0[l] = dc_l
        d_out = dx
    return layer_grads, d_out, ((dh0, dc0) if spec.is_lstm else dh0)


def vjp(spec: CellSpec, params: Params, x: np.ndarray, state: Optional[State], dy: Optional[np.ndarray],
        d_final_state: Optional[State], truncation: Optional[int] = None) -> Grads:
    """BPTT (or truncated BPTT with ``truncation=k``) vector-Jacobian product. Inputs must be validated.

    L = Σ_t <dy_t, y_t> + <dh_T, h_T> (+ <dc_T, c_T>); returns dL/dθ, dL/dx and dL/d(initial state).

    Truncated BPTT(k) runs the sequence in chunks ``[0, k), [k, 2k), ...``: each chunk's forward keeps its
    activations, its backward starts from a zero adjoint (``d_final_state`` at the last chunk), and the
    state is carried forward detached — the adjoint is cut when entering h_t with t % k == 0, t > 0.
    Only one chunk's activations are stored at a time (memory ∝ B·k·H, plus dx).
    """
    T, B, _ = x.shape
    dt = x.dtype
    if d_final_state is None:
        d_final_state = zero_state(spec, B, dt)
    k = T if truncation is None else min(int(truncation), T)
    if k >= T:
        _, _, caches = forward(spec, params, x, state, keep=True)
        grads, dx, dstate = _backward(spec, params, caches, dy, d_final_state)
        return Grads(params=Params(grads), dx=dx, dstate=dstate)
    dx = np.empty_like(x)
    total: Optional[List[LayerParams]] = None
    dstate = None
    zero_fin = zero_state(spec, B, dt)
    for s in range(0, T, k):
        e = min(T, s + k)
        _, final, caches = forward(spec, params, x[s:e], state, keep=True)
        grads, dx[s:e], dst = _backward(spec, params, caches, None if dy is None else dy[s:e],
                                        d_final_state if e == T else zero_fin)
        del caches
        if s == 0:
            dstate = dst
        total = add_layer_grads(total, grads)
        state = final
    return Grads(params=Params(total), dx=dx, dstate=dstate, extra={"algorithm": "tbptt", "truncation": k})


def add_layer_grads(total: Optional[List[LayerParams]], grads: List[LayerParams]) -> List[LayerParams]:
    """``total += grads`` layer by layer, in place (``total`` None: ``grads`` itself)."""
    if total is None:
        return grads
    for acc, g in zip(total, grads):
        for n, a in g.items():
            getattr(acc, n)[...] += a
    return total


def hidden_grads(spec: CellSpec, params: Params, x: np.ndarray, dh_T: np.ndarray,
                 return_cell: bool = False):
    """Total derivative ∂L/∂h_t of the last layer's hidden state for every step, L = <dh_T, h_T>.

    Index ``t`` of the result (``(T, B, H)``) is the state after step t+1, so ``[-1]`` equals ``dh_T``.
    With ``return_cell`` (LSTM only) also returns ∂L/∂c_t as a second array.
    """
    T, B, _ = x.shape
    _, _, caches = forward(spec, params, x, None, keep=True)
    last = spec.num_layers - 1
    dc_T = np.zeros_like(dh_T) if spec.is_lstm else None
    _, _, _, _, dh_all, dc_all = _layer_backward(spec, params.layers[last], caches[last], None, dh_T, dc_T,
                                                 record=True)
    if return_cell:
        if not spec.is_lstm:
            raise ValueError(f"return_cell: only an LSTM has a cell state; got cell={spec.cell!r}")
        return dh_all, dc_all
    return dh_all
