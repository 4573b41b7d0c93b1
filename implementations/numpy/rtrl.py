"""Real-time recurrent learning (RTRL, exact forward-mode gradients) and chunked truncated BPTT, in NumPy.

RTRL (Williams & Zipser 1989) carries, for every sequence b of the batch, the influence matrix
``M_t = ∂h_t/∂θ`` (and ``∂c_t/∂θ`` for the LSTM) forward in time::

    M_t = J_t M_{t-1} + ∂h_t/∂θ|_immediate          g += Σ_b u_t[b] · M_t[b]

with ``u_t`` the cotangent of ``h_t`` (``dy_t``, plus the final-state cotangent at t = T). Memory is
``O(B·H·P)`` independent of T; time is ``O(B·H²·P)`` per step (``P ∝ H²``, so ``H⁴``).

How this implementation keeps it fast and lean:

- **Columns.** Each layer ``l`` owns a column block ``[w_ih | w_hh | b_ih | b_hh | h0 (| c0)]`` (canonical
  parameter order, then its initial state). Layer ``l``'s influence matrix covers the blocks of layers
  ``≤ l`` only (nothing above can influence it): ``Mh[l]`` is ``(B, H, Qcum_l)``.
- **The homogeneous update** ``J_t · M_{t-1}`` is one batched GEMM ``(B, Gm·H, H) x (B, H, w)`` per column
  chunk of width ``w`` (``Gm`` = 2 for the LSTM, whose Jacobian rows are stacked ``[∂c/∂h; ∂o-part/∂h]``).
  Columns are independent, so the update is done **in place** chunk by chunk through a small temporary
  (about :data:`CHUNK_BYTES`): memory stays at one copy of ``M`` instead of two, and each chunk is still in
  cache when it is copied back and when the gradient GEMV reads it. Columns of lower layers also get the
  inter-layer term ``J^x_t · M^{l-1}_t`` (the layer input is the hidden state of the layer below).
- **The immediate Jacobian** is never materialised: ``∂a_{q,j}/∂W[qH+j', k] = δ_{jj'} in_k`` puts, in row
  ``j`` of ``M``, a band of ``K`` columns starting at ``(qH+j)·K``. A strided view of shape ``(B, G, H, K)``
  (row stride + K along j) addresses exactly those entries, and one broadcast multiply-add fills them.
  Its contribution to the gradient is added the same way (no extra pass over ``M``).
- The per-step Jacobians ``J^h_t`` ``(B, Gm·H, H)`` (and ``J^x_t`` for layers above the first) are built
  as sums of row-scaled weight blocks into preallocated buffers.

``dstate`` is exact forward-mode too: the initial states are extra columns of the influence matrices
(identity at t = 0, updated by the homogeneous part only), accumulated per sequence. ``dx`` cannot be had
forward without ``O(T)`` influence matrices, so it comes from **one BPTT pass** (:func:`numpy_rnn.vjp`,
whose parameter gradient is discarded) run after the RTRL pass has freed its buffers; ``with_dx=False``
skips it (then ``Grads.dx`` is None) — that is what memory measurements of RTRL use.

Also here: :func:`tbptt_chunked_vjp`, truncated BPTT(k) that runs :mod:`numpy_rnn`'s forward/backward
per chunk of k steps with the state carried, so that it stores ``O(B·k·H)`` rather than the whole
sequence (``numpy_rnn.vjp(truncation=k)`` gives the same numbers but keeps all T steps).

Shapes: x ``(T, B, I)``, dy ``(T, B, H)``, states ``(L, B, H)`` (LSTM: a tuple ``(h, c)``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

try:  # imported here, not in the measured region (threadpoolctl is pure Python and light)
    import threadpoolctl as _tpc
except ImportError:  # pragma: no cover - optional: without it the BLAS keeps its own threading
    _tpc = None

from harness.core.params import Grads, LayerParams, Params
from harness.core.spec import CellSpec, State, zero_state
from harness.core import system
from harness.core.errors import InputError
from harness.core.spec import check_algorithm_args
from implementations.numpy import rnn as numpy_rnn
from implementations.numpy.rnn import sigmoid_

#: Target size in bytes of the per-chunk temporary of the homogeneous update (fits in L2 with its M chunk).
CHUNK_BYTES = 1 << 18
#: Narrowest column chunk (narrower GEMMs lose BLAS efficiency).
MIN_CHUNK_COLS = 128


mem_available_bytes = system.mem_available_bytes  # module attribute: tests replace it


# -- column layout ------------------------------------------------------------------------------------------

class _Layout:
    """Column offsets of every layer's block ``[w_ih | w_hh | b_ih | b_hh | h0 (| c0)]``."""

    def __init__(self, spec: CellSpec) -> None:
        H, G, L = spec.hidden_size, spec.gates, spec.num_layers
        self.S = 2 if spec.is_lstm else 1          # state parts per layer (h, c)
        self.Gm = 2 if spec.is_lstm else 1         # stacked Jacobian row blocks
        self.off, self.own, self.cum = [], [], []  # block start, own params P_l, end of block
        self.w_ih, self.w_hh, self.b_ih, self.b_hh, self.h0, self.c0 = [], [], [], [], [], []
        o = 0
        for l in range(L):
            I_l = spec.layer_input_size(l)
            P_l = sum(int(np.prod(s)) for s in spec.layer_shapes(l).values())
            self.off.append(o)
            self.own.append(P_l)
            self.w_ih.append(o)
            self.w_hh.append(o + G * H * I_l)
            self.b_ih.append(o + G * H * (I_l + H) if spec.bias else None)
            self.b_hh.append(o + G * H * (I_l + H + 1) if spec.bias else None)
            self.h0.append(o + P_l)
            self.c0.append(o + P_l + H if spec.is_lstm else None)
            o += P_l + self.S * H
            self.cum.append(o)
        self.Q = o  # columns of the top layer (all parameters and all initial states)


def chunk_cols(spec: CellSpec, batch: int, dtype) -> int:
    """Width (columns) of one chunk of the in-place influence update."""
    item = np.dtype(dtype).itemsize
    Gm = 2 if spec.is_lstm else 1
    w = CHUNK_BYTES // max(1, batch * Gm * spec.hidden_size * item)
    q = _Layout(spec).Q
    w = min(w, -(-q // 32))  # >= ~32 chunks: per-worker temporaries stay a few % of M (and workers share work)
    return int(max(MIN_CHUNK_COLS, w))


def rtrl_memory(spec: CellSpec, batch: int, dtype="float64") -> Dict[str, int]:
    """Bytes RTRL needs for ``spec`` at this batch size.

    Returns a dict with
      ``influence``: the influence matrices, ``Σ_l B·H·Qcum_l`` (×2 for the LSTM's ∂c/∂θ), where ``Qcum_l``
      counts the parameters and initial-state entries of layers ≤ l;
      ``jacobian``: the per-step Jacobian buffers ``B·Gm·H·(H + I_l)`` per layer;
      ``grad``: the parameter-gradient vector ``P``;
      ``theory``: influence + jacobian + grad — the irreducible figure the measured peak is compared to;
      ``temporaries``: what this implementation allocates besides (chunk temporaries, the per-sequence
      accumulator ``B·Q``, immediate-term scratch, per-step activations);
      ``planned``: theory + temporaries, what is checked against free memory.
    """
    item = np.dtype(dtype).itemsize
    lay = _Layout(spec)
    H, G, B = spec.hidden_size, spec.gates, batch
    influence = sum(B * H * c for c in lay.cum) * lay.S
    jacobian = sum(B * lay.Gm * H * (H + (spec.layer_input_size(l) if l > 0 else 0)) for l in range(spec.num_layers))
    grad = spec.num_params
    w = min(chunk_cols(spec, B, dtype), lay.Q)
    chunk = B * lay.Gm * H * w * (2 if spec.num_layers > 1 else 1) + B * w
    scratch = B * G * H * max(spec.input_size, H) * 2 + B * lay.Q + spec.num_layers * B * (6 * G * H + 8 * H)
    out = {"influence": influence * item, "jacobian": jacobian * item, "grad": grad * item}
    out["theory"] = out["influence"] + out["jacobian"] + out["grad"]
    out["temporaries"] = (chunk + scratch) * item
    out["planned"] = out["theory"] + out["temporaries"]
    return out


def rtrl_flops_per_step(spec: CellSpec, batch: int) -> float:
    """GEMM FLOPs of one RTRL step (see :meth:`harness.core.spec.CellSpec.rtrl_step_flops`)."""
    return spec.rtrl_step_flops(batch)


def check_memory(spec: CellSpec, batch: int, dtype) -> None:
    """Raise ``ValueError`` if RTRL's planned memory exceeds ``MemAvailable`` (skipped if unknown)."""
    need = rtrl_memory(spec, batch, dtype)["planned"]
    avail = mem_available_bytes()
    if avail is not None and need > avail:
        raise InputError(f"RTRL for {spec} with batch={batch} ({np.dtype(dtype).name}) needs {need} bytes "
                         f"({need / 2**30:.2f} GiB) of influence matrices and buffers; only {avail} bytes "
                         f"({avail / 2**30:.2f} GiB) are available (MemAvailable in /proc/meminfo). "
                         "Use a smaller hidden_size/batch, or algorithm='bptt'.")


def _band(M: np.ndarray, off: int, G: int, H: int, K: int) -> np.ndarray:
    """A writable ``(B, G, H, K)`` view of ``M (B, H, Q)``: element ``[b, q, j, k]`` is ``M[b, j, off+(qH+j)K+k]``.

    These are the entries that the immediate Jacobian of a ``(G·H, K)`` weight block touches.
    """
    B, Hm, Q = M.shape
    assert M.flags.c_contiguous and Hm == H and off + G * H * K <= Q
    it = M.itemsize
    base = M.reshape(-1)[off:]
    return np.lib.stride_tricks.as_strided(base, shape=(B, G, H, K),
                                           strides=(H * Q * it, H * K * it, (Q + K) * it, it), writeable=True)


# -- one layer's per-step work --------------------------------------------------------------------------------

class _LayerRTRL:
    """One layer: its step, its Jacobians, its influence matrices and their update."""

    def __init__(self, spec: CellSpec, lp: LayerParams, l: int, lay: _Layout, B: int, dt: np.dtype,
                 below: Optional["_LayerRTRL"], width: int, workers: int = 1) -> None:
        H, G = spec.hidden_size, spec.gates
        self.spec, self.l, self.H, self.G, self.B = spec, l, H, G, B
        self.I = I = spec.layer_input_size(l)
        self.cell = spec.cell
        self.lstm = spec.is_lstm
        self.lay = lay
        self.w_ih, self.w_hh = lp.w_ih, lp.w_hh
        self.w_ih_t, self.w_hh_t = lp.w_ih.T, lp.w_hh.T
        self.w_hh_blocks = lp.w_hh.reshape(G, H, H)
        self.w_ih_blocks = lp.w_ih.reshape(G, H, I)
        self.bias = lp.b_ih is not None
        if self.bias:
            self.b_x = lp.b_ih + lp.b_hh if spec.cell != "gru" else lp.b_ih.copy()
            self.b_hh = lp.b_hh
        Qc = lay.cum[l]
        self.Qc = Qc
        Gm = lay.Gm
        # Influence matrices: rows = this layer's h (and c) units, columns = blocks of layers <= l.
        self.Mh = np.zeros((B, H, Qc), dtype=dt)
        self.Mc = np.zeros((B, H, Qc), dtype=dt) if self.lstm else None
        idx = np.arange(H)
        self.Mh[:, idx, lay.h0[l] + idx] = 1.0
        if self.lstm:
            self.Mc[:, idx, lay.c0[l] + idx] = 1.0
        # Jacobians: Jh (B, Gm·H, H) w.r.t. h_{t-1}; Jx (B, Gm·H, I) w.r.t. the layer input (l > 0 only).
        self.Jh = np.empty((B, Gm * H, H), dtype=dt)
        self.Jx = np.empty((B, Gm * H, I), dtype=dt) if l > 0 else None
        self.Jtmp = np.empty((B, H, max(H, I)), dtype=dt)
        # Immediate-term coefficients per gate: E (input side), R (recurrent side); LSTM: also for c.
        self.E = np.empty((B, G, H), dtype=dt)
        self.R = self.E if spec.cell != "gru" else np.empty((B, G, H), dtype=dt)
        self.Ec = np.empty((B, G, H), dtype=dt) if self.lstm else None
        self.Eg = np.empty((B, G, H), dtype=dt)   # cotangent-weighted coefficients for the gradient
        self.Rg = self.Eg if spec.cell != "gru" else np.empty((B, G, H), dtype=dt)
        self.imm = np.empty((B, G, H, max(H, I)), dtype=dt)
        # State and activations.
        self.h = np.empty((B, H), dtype=dt)
        self.h_prev = np.empty((B, H), dtype=dt)
        self.c = np.empty((B, H), dtype=dt) if self.lstm else None
        self.c_prev = np.empty((B, H), dtype=dt) if self.lstm else None
        self.a = np.empty((B, G * H), dtype=dt)
        self.hw = np.empty((B, G * H), dtype=dt)
        self.tmp = np.empty((B, H), dtype=dt)
        self.tmp2 = np.empty((B, H), dtype=dt)
        self.k = np.empty((B, H), dtype=dt) if self.lstm else None
        self.f_col = None
        self.diag = np.arange(H)
        # Bands of the immediate Jacobian in M (and in the accumulator, set by the driver).
        o = lay
        self.bands_h = self._bands(self.Mh)
        self.bands_c = self._bands(self.Mc) if self.lstm else None
        # Column chunks (never straddling the boundary between lower-layer and own columns).
        self.below = below
        bounds = []
        for lo, hi in ((0, lay.off[l]), (lay.off[l], Qc)):
            s = lo
            while s < hi:
                e = min(hi, s + width)
                bounds.append((s, e))
                s = e
        self.chunks = bounds
        self.width = max((e - s for s, e in bounds), default=1)
        # One set of temporaries per worker thread; chunks are dealt round-robin to the workers.
        self.nworkers = nw = max(1, min(int(workers), len(bounds)))
        self.views = [[] for _ in range(nw)]
        for i, (s, e) in enumerate(bounds):
            w = e - s
            wk = i % nw
            if len(self.views[wk]) == 0:
                t1b = np.empty(B * Gm * H * self.width, dtype=dt)
                t2b = np.empty(B * Gm * H * self.width, dtype=dt) if l > 0 else None
                tgb = np.empty(B * self.width, dtype=dt)
                self.views[wk].append({"buffers": (t1b, t2b, tgb)})
            t1b, t2b, tgb = self.views[wk][0]["buffers"]
            v = {"Mh": self.Mh[:, :, s:e], "t1": t1b[:B * Gm * H * w].reshape(B, Gm * H, w),
                 "tg": tgb[:B * w].reshape(B, 1, w), "s": s, "e": e}
            if self.lstm:
                v["Mc"] = self.Mc[:, :, s:e]
            if s < lay.off[l]:  # lower-layer columns: add J^x · M^{l-1}
                v["Mb"] = below.Mh[:, :, s:e]
                v["t2"] = t2b[:B * Gm * H * w].reshape(B, Gm * H, w)
            self.views[wk].append(v)
        self.views = [vs[1:] for vs in self.views]

    def _bands(self, M: np.ndarray) -> dict:
        lay, l, G, H = self.lay, self.l, self.G, self.H
        b = {"w_ih": _band(M, lay.w_ih[l], G, H, self.I), "w_hh": _band(M, lay.w_hh[l], G, H, H)}
        if self.bias:
            b["b_ih"] = _band(M, lay.b_ih[l], G, H, 1)[..., 0]
            b["b_hh"] = _band(M, lay.b_hh[l], G, H, 1)[..., 0]
        return b

    def set_state(self, h0: np.ndarray, c0: Optional[np.ndarray]) -> None:
        self.h[...] = h0
        if self.lstm:
            self.c[...] = c0

    # -- the cell step: new state, Jacobians, immediate coefficients --------------------------------------
    def step(self, xin: np.ndarray) -> None:
        """Advance one step with layer input ``xin (B, I)``; fills Jh/Jx, E/R (and Ec, k, f for LSTM)."""
        self.h, self.h_prev = self.h_prev, self.h
        if self.lstm:
            self.c, self.c_prev = self.c_prev, self.c
        H, G = self.H, self.G
        a, hw = self.a, self.hw
        np.matmul(xin, self.w_ih_t, out=a)
        if self.bias:
            a += self.b_x
        np.matmul(self.h_prev, self.w_hh_t, out=hw)
        E, R = self.E, self.R
        if self.cell in ("rnn_tanh", "rnn_relu"):
            a += hw
            D = E[:, 0]
            if self.cell == "rnn_tanh":
                np.tanh(a, out=self.h)
                np.multiply(self.h, self.h, out=D)
                np.subtract(1, D, out=D)
            else:
                np.maximum(a, 0, out=self.h)
                np.greater(a, 0, out=D)  # relu'(a), 0 at a = 0 as numpy_rnn does
            np.multiply(self.w_hh[None], D[:, :, None], out=self.Jh)
            if self.Jx is not None:
                np.multiply(self.w_ih[None], D[:, :, None], out=self.Jx)
            return
        if self.lstm:
            a += hw
            sigmoid_(a[:, :2 * H])
            sigmoid_(a[:, 3 * H:])
            np.tanh(a[:, 2 * H:3 * H], out=a[:, 2 * H:3 * H])
            i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            c, cp, tmp = self.c, self.c_prev, self.tmp
            np.multiply(f, cp, out=c)
            np.multiply(i, g, out=tmp)
            c += tmp
            tc = self.tmp2
            np.tanh(c, out=tc)
            np.multiply(o, tc, out=self.h)
            Ec = self.Ec
            # ∂c/∂a: i: g σ'(i); f: c_{t-1} σ'(f); g: i (1 - g²); o: 0
            np.subtract(1, i, out=Ec[:, 0]); Ec[:, 0] *= i; Ec[:, 0] *= g
            np.subtract(1, f, out=Ec[:, 1]); Ec[:, 1] *= f; Ec[:, 1] *= cp
            np.multiply(g, g, out=Ec[:, 2]); np.subtract(1, Ec[:, 2], out=Ec[:, 2]); Ec[:, 2] *= i
            Ec[:, 3] = 0
            k = self.k  # ∂h/∂c = o (1 - tanh² c)
            np.multiply(tc, tc, out=k); np.subtract(1, k, out=k); k *= o
            # ∂h/∂a: k ∂c/∂a for i, f, g; o: tanh(c) σ'(o)
            np.multiply(Ec[:, :3], k[:, None, :], out=E[:, :3])
            np.subtract(1, o, out=E[:, 3]); E[:, 3] *= o; E[:, 3] *= tc
            self.f_col = f[:, :, None]
            self.k_col = k[:, :, None]
            self._stacked_jac(self.Jh, self.w_hh_blocks)
            if self.Jx is not None:
                self._stacked_jac(self.Jx, self.w_ih_blocks)
            return
        # GRU: r = σ(ax_r + hw_r), z = σ(ax_z + hw_z), n = tanh(ax_n + r (W_hn h + b_hn)), h' = n + z (h - n)
        if self.bias:
            hw += self.b_hh
        a[:, :2 * H] += hw[:, :2 * H]
        sigmoid_(a[:, :2 * H])
        r, z, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
        hn = hw[:, 2 * H:]
        tmp, tmp2 = self.tmp, self.tmp2
        np.multiply(r, hn, out=tmp)
        n += tmp
        np.tanh(n, out=n)
        np.subtract(self.h_prev, n, out=tmp)
        np.multiply(tmp, z, out=self.h)
        self.h += n
        # v_n = (1 - z)(1 - n²): ∂h'/∂(n pre-activation)
        vn = E[:, 2]
        np.multiply(n, n, out=vn); np.subtract(1, vn, out=vn)
        np.subtract(1, z, out=tmp2); vn *= tmp2
        # u_z = (h - n) σ'(z)
        np.subtract(1, z, out=E[:, 1]); E[:, 1] *= z; E[:, 1] *= tmp
        # u_r = v_n hn σ'(r)
        np.subtract(1, r, out=E[:, 0]); E[:, 0] *= r; E[:, 0] *= hn; E[:, 0] *= vn
        R[:, :2] = E[:, :2]
        np.multiply(vn, r, out=R[:, 2])  # recurrent side of n is gated by r
        self._sum_jac(self.Jh, self.w_hh_blocks, R)
        self.Jh[:, self.diag, self.diag] += z  # + diag(z): the direct path h' = ... + z h
        if self.Jx is not None:
            self._sum_jac(self.Jx, self.w_ih_blocks, E)

    def _sum_jac(self, J: np.ndarray, W: np.ndarray, C: np.ndarray) -> None:
        """J = Σ_q diag(C[:, q]) W[q]  (row-scaled weight blocks), J ``(B, H, K)``."""
        K = W.shape[2]
        tmp = self.Jtmp[:, :, :K]
        np.multiply(W[0][None], C[:, 0, :, None], out=J)
        for q in range(1, W.shape[0]):
            np.multiply(W[q][None], C[:, q, :, None], out=tmp)
            J += tmp
        return None

    def _stacked_jac(self, J: np.ndarray, W: np.ndarray) -> None:
        """LSTM: J[:, :H] = Σ_{i,f,g} diag(Ec) W_q (∂c/∂in); J[:, H:] = diag(E_o) W_o (the o-gate path)."""
        H = self.H
        self._sum_jac(J[:, :H], W[:3], self.Ec)
        np.multiply(W[3][None], self.E[:, 3, :, None], out=J[:, H:])

    def update(self, xin: np.ndarray, uh: Optional[np.ndarray], uc: Optional[np.ndarray],
               acc: Optional[np.ndarray], acc_bands: Optional[dict], pool=None) -> None:
        """M_t = J_t M_{t-1} (+ J^x M^{l-1}_t on lower columns) + immediate; acc += u_h·Mh (+ u_c·Mc)."""
        H = self.H
        Jh, Jx = self.Jh, self.Jx
        lstm = self.lstm
        uh3 = None if uh is None else uh[:, None, :]
        uc3 = None if uc is None else uc[:, None, :]

        def work(views) -> None:
            for v in views:
                Mh, t1 = v["Mh"], v["t1"]
                np.matmul(Jh, Mh, out=t1)
                if "Mb" in v:
                    t2 = v["t2"]
                    np.matmul(Jx, v["Mb"], out=t2)
                    t1 += t2
                if lstm:
                    Mc = v["Mc"]
                    Mc *= self.f_col
                    Mc += t1[:, :H]
                    tc = t1[:, :H]
                    np.multiply(Mc, self.k_col, out=tc)
                    np.add(t1[:, H:], tc, out=Mh)
                else:
                    np.copyto(Mh, t1)
                if uh3 is not None or uc3 is not None:
                    s, e, tg = v["s"], v["e"], v["tg"]
                    if uh3 is not None:
                        np.matmul(uh3, Mh, out=tg)
                        acc[:, s:e] += tg[:, 0]  # disjoint columns per chunk: no race between workers
                    if uc3 is not None:
                        np.matmul(uc3, v["Mc"], out=tg)
                        acc[:, s:e] += tg[:, 0]

        if pool is None or self.nworkers == 1:
            for vs in self.views:
                work(vs)
        else:
            list(pool.map(work, self.views))
        # Immediate Jacobian through its Kronecker structure: band[b, q, j, :] += coef[b, q, j] * input[b, :]
        self._add_imm(self.bands_h, self.E, self.R, xin)
        if lstm:
            self._add_imm(self.bands_c, self.Ec, self.Ec, xin)
        if acc is not None and (uh is not None or uc is not None):
            Eg, Rg = self.Eg, self.Rg
            if uh is not None:
                np.multiply(self.E, uh[:, None, :], out=Eg)
                if Rg is not Eg:
                    np.multiply(self.R, uh[:, None, :], out=Rg)
            else:
                Eg.fill(0)
                if Rg is not Eg:
                    Rg.fill(0)
            if uc is not None:
                np.multiply(self.Ec, uc[:, None, :], out=self.imm[:, :, :, 0])
                Eg += self.imm[:, :, :, 0]
            self._add_imm(acc_bands, Eg, Rg, xin)

    def _add_imm(self, bands: dict, E: np.ndarray, R: np.ndarray, xin: np.ndarray) -> None:
        I, H = self.I, self.H
        t = self.imm[:, :, :, :I]
        np.multiply(E[:, :, :, None], xin[:, None, None, :], out=t)
        bands["w_ih"] += t
        t = self.imm[:, :, :, :H]
        np.multiply(R[:, :, :, None], self.h_prev[:, None, None, :], out=t)
        bands["w_hh"] += t
        if self.bias:
            bands["b_ih"] += E
            bands["b_hh"] += R


def _acc_bands(acc: np.ndarray, spec: CellSpec, lay: _Layout, l: int) -> dict:
    """Views of the per-sequence accumulator ``acc (B, Q)`` shaped like one layer's immediate bands."""
    B = acc.shape[0]
    G, H, I = spec.gates, spec.hidden_size, spec.layer_input_size(l)
    b = {"w_ih": acc[:, lay.w_ih[l]:lay.w_ih[l] + G * H * I].reshape(B, G, H, I),
         "w_hh": acc[:, lay.w_hh[l]:lay.w_hh[l] + G * H * H].reshape(B, G, H, H)}
    if spec.bias:
        b["b_ih"] = acc[:, lay.b_ih[l]:lay.b_ih[l] + G * H].reshape(B, G, H)
        b["b_hh"] = acc[:, lay.b_hh[l]:lay.b_hh[l] + G * H].reshape(B, G, H)
    return b


_blas_threads = system.blas_threads  # module attribute: tests replace it


def _workers(spec: CellSpec, B: int, width: int, threads: Optional[int]):
    """How many chunk workers to use, and a BLAS limiter (to 1 thread each) to release when done.

    The J·M update is many small GEMMs ``(Gm·H, H) x (H, width)``; splitting each of them over BLAS threads
    costs far more in synchronisation than it gains (measured on 2 cores: 4.2 GFLOP/s with 2 BLAS threads
    against 19 GFLOP/s with 1, H=128, float64). So the BLAS is limited to one thread while RTRL runs, and
    the parallelism moves up a level: ``n`` Python workers take interleaved column chunks (NumPy releases the
    GIL inside matmul and the large ufunc loops). By default ``n`` is the number of threads the BLAS was set
    to use, so RTRL uses the same cores as the GEMM ceiling it is compared with. Measured on the quiet
    2-core machine, H=128 float64 (GFLOP/s of the J·M update, 1 worker -> 2 workers): rnn_tanh 29.5 -> 47.1,
    LSTM 22.9 -> 35.9, GRU 24.8 -> 49.6 (B=8); on a machine whose other core is busy, 2 workers lose to
    1 (GIL hand-offs wait for the busy core): pass ``threads=1`` (or limit the BLAS to 1 thread) there.
    """
    blas = _blas_threads()
    n = blas if threads is None else max(1, int(threads))
    n = max(1, min(n, system.cpu_count()))
    if blas <= 1:
        return n, None
    try:
        limiter = _tpc.ThreadpoolController().limit(limits=1, user_api="blas")
    except Exception:  # noqa: BLE001 - cannot limit the BLAS: keep its threads, no workers of our own
        return 1, None
    return n, limiter


def rtrl_grads(spec: CellSpec, params: Params, x: np.ndarray, state: Optional[State], dy: Optional[np.ndarray],
               d_final_state: Optional[State], chunk: Optional[int] = None,
               threads: Optional[int] = None) -> Tuple[Params, State]:
    """Parameter gradient and initial-state gradient by RTRL (inputs must be validated).

    Returns ``(param grads in canonical layout, dstate)``. Raises ``ValueError`` up front if the
    influence matrices would not fit in free memory. ``chunk`` overrides the column-chunk width;
    ``threads`` the number of chunk workers (default: as many as the BLAS had threads; the BLAS itself runs
    single-threaded meanwhile; see :func:`_workers`).
    """
    T, B, _ = x.shape
    dt = x.dtype
    H, L = spec.hidden_size, spec.num_layers
    check_memory(spec, B, dt)
    lay = _Layout(spec)
    width = int(chunk) if chunk else chunk_cols(spec, B, dt)
    nw, limiter = _workers(spec, B, width, threads)
    if state is None:
        state = zero_state(spec, B, dt)
    hs, cs = (state if spec.is_lstm else (state, None))
    dhs, dcs = (None, None)
    if d_final_state is not None:
        dhs, dcs = (d_final_state if spec.is_lstm else (d_final_state, None))
    layers: List[_LayerRTRL] = []
    for l in range(L):
        lr = _LayerRTRL(spec, params.layers[l], l, lay, B, dt, layers[-1] if layers else None, width, nw)
        lr.set_state(hs[l], None if cs is None else cs[l])
        layers.append(lr)
    acc = np.zeros((B, lay.Q), dtype=dt)   # per-sequence gradient (the state columns must not be summed)
    acc_bands = [_acc_bands(acc, spec, lay, l) for l in range(L)]
    pool = None
    try:
        if nw > 1:
            from concurrent.futures import ThreadPoolExecutor
            pool = ThreadPoolExecutor(max_workers=nw, thread_name_prefix="rtrl")
        for t in range(T):
            xin = x[t]
            last = t == T - 1
            for l, lr in enumerate(layers):
                lr.step(xin)
                uh = dy[t] if (dy is not None and l == L - 1) else None
                uc = None
                if last and dhs is not None:
                    uh = dhs[l] if uh is None else uh + dhs[l]
                    if dcs is not None:
                        uc = dcs[l]
                lr.update(xin, uh, uc, acc, acc_bands[l], pool)
                xin = lr.h
    finally:
        if pool is not None:
            pool.shutdown()
        if limiter is not None:
            limiter.unregister()
    # Unpack: parameters summed over the batch, initial states per sequence.
    grads = []
    for l in range(L):
        kw, o = {}, lay.off[l]
        for n, shape in spec.layer_shapes(l).items():
            size = int(np.prod(shape))
            kw[n] = acc[:, o:o + size].sum(axis=0).reshape(shape)
            o += size
        grads.append(LayerParams(**kw))
    dh0 = np.stack([acc[:, lay.h0[l]:lay.h0[l] + H] for l in range(L)])
    if spec.is_lstm:
        dc0 = np.stack([acc[:, lay.c0[l]:lay.c0[l] + H] for l in range(L)])
        return Params(grads), (dh0, dc0)
    return Params(grads), dh0


def vjp(spec: CellSpec, params: Params, x: np.ndarray, state: Optional[State], dy: Optional[np.ndarray],
        d_final_state: Optional[State], with_dx: bool = True, chunk: Optional[int] = None) -> Grads:
    """Vector-Jacobian product by RTRL (inputs must be validated, as by ``Backend.vjp``).

    L = Σ_t <dy_t, y_t> + <dh_T, h_T> (+ <dc_T, c_T>). ``Grads.params`` and ``Grads.dstate`` come from
    RTRL (forward-mode, online); ``Grads.dx`` from one BPTT pass run afterwards (None if ``with_dx=False``).
    ``Grads.extra``: ``algorithm``, ``dx_method``, ``memory`` (see :func:`rtrl_memory`).
    """
    pg, dstate = rtrl_grads(spec, params, x, state, dy, d_final_state, chunk=chunk)
    dx = None
    if with_dx:
        dx = numpy_rnn.vjp(spec, params, x, state, dy, d_final_state).dx
    return Grads(params=pg, dx=dx, dstate=dstate,
                 extra={"algorithm": "rtrl", "dx_method": "bptt" if with_dx else "none",
                        "memory": rtrl_memory(spec, x.shape[1], x.dtype)})


# -- truncated BPTT, chunked ---------------------------------------------------------------------------------

def tbptt_chunked_vjp(spec: CellSpec, params: Params, x: np.ndarray, state: Optional[State],
                      dy: Optional[np.ndarray], d_final_state: Optional[State], truncation: int) -> Grads:
    """Truncated BPTT(k) storing only ``k`` steps at a time: :func:`numpy_rnn.vjp` with ``truncation=k``
    (which is chunked); kept here under this name for the memory suite's callers."""
    k = check_algorithm_args("tbptt", truncation)
    return numpy_rnn.vjp(spec, params, x, state, dy, d_final_state, truncation=k)
