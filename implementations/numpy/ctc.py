"""CTC (Graves et al. 2006) in NumPy: the reference loss and gradient, a brute-force check, and decoders.

Conventions (DESIGN.md): logits are unnormalised ``(T, B, C)``; log-softmax is applied here; the loss is the
per-sequence negative log-likelihood ``-log p(l|x)`` (``reduction="none"``); the gradient is with respect to
the **logits**, ``y_t(k) - γ_t(k)`` with ``γ_t(k)`` the posterior probability that frame ``t`` emits class
``k`` (label occupancy). Frames ``t >= input_lengths[b]`` get exactly zero gradient. A sequence without any
alignment (``T_b < L_b + repeats_b``) gets loss ``inf`` (0 with ``zero_infinity=True``) and zero gradient.

Algorithm: the forward-backward recursion over the extended label sequence ``l'`` (blanks around every label,
``S' = 2 L + 1`` positions) in log space, vectorised over batch and positions; the only Python loop runs
over time. Every step uses a 3-way log-sum-exp whose maximum is floored at a finite value, so all ``-inf``
inputs give ``-inf`` without NaN. Each frame's α (and β) row is shifted by its maximum and the shifts are
accumulated in float64: the stored values stay small, so float32 keeps its relative precision for long
sequences (``α_t`` itself grows like ``t·log C``), and the cancellation in ``α·β/p`` happens in float64.

β is defined *without* the emission at ``t`` (``β_t(s)`` = probability of the rest of the path after frame
``t``), so ``α_t(s) β_t(s)`` counts each path through ``(t, s)`` once and ``Σ_s α_t(s) β_t(s) = p`` for
every ``t < T_b``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from implementations.ctc_checks import check_ctc_inputs, feasible

_FLOOR = -1e30  # finite floor for the running max: exp(-inf - floor) = 0 instead of NaN


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Log-softmax along ``axis`` in the input's dtype (max-shifted, so no overflow)."""
    z = logits - logits.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def extended_labels(targets: np.ndarray, blank: int) -> np.ndarray:
    """``l'``: blanks interleaved around the labels, ``(B, 2 S + 1)`` (padding positions hold the blank)."""
    B, S = targets.shape
    ext = np.full((B, 2 * S + 1), blank, dtype=np.int64)
    ext[:, 1::2] = targets
    return ext


@dataclass
class CtcLattice:
    """The forward-backward lattice of a batch, kept in shifted log space.

    ``log α_t(s) = alpha_hat[t, b, s] + alpha_off[t, b]`` (likewise β); offsets are float64.
    ``log_likelihood`` is ``log p(l|x)`` ``(B,)`` float64 (``-inf`` when no alignment exists).
    """

    log_probs: np.ndarray        # (T, B, C) log-softmax of the logits, input dtype
    ext: np.ndarray              # (B, S') extended labels
    input_lengths: np.ndarray    # (B,)
    target_lengths: np.ndarray   # (B,)
    alpha_hat: np.ndarray        # (T, B, S')
    alpha_off: np.ndarray        # (T, B) float64
    beta_hat: np.ndarray         # (T, B, S')
    beta_off: np.ndarray         # (T, B) float64
    log_likelihood: np.ndarray   # (B,) float64
    feasible: np.ndarray         # (B,) bool
    blank: int

    @property
    def valid_frames(self) -> np.ndarray:
        """``(T, B)`` bool: frame ``t`` lies within sequence ``b`` (``t < input_lengths[b]``)."""
        T = self.log_probs.shape[0]
        return np.arange(T)[:, None] < self.input_lengths[None, :]

    @property
    def log_alpha(self) -> np.ndarray:
        """``log α_t(s)`` ``(T, B, S')`` in float64 (meaningful for ``t < T_b``, ``s < 2 L_b + 1``)."""
        return self.alpha_hat.astype(np.float64) + self.alpha_off[:, :, None]

    @property
    def log_beta(self) -> np.ndarray:
        """``log β_t(s)`` ``(T, B, S')`` in float64, β excluding the emission at ``t``."""
        return self.beta_hat.astype(np.float64) + self.beta_off[:, :, None]

    def _occupancy_offset(self) -> np.ndarray:
        """Per-frame shift ``alpha_off + beta_off - log p`` ``(T, B)`` float64; ``-inf`` where γ must be 0."""
        ok = self.valid_frames & (self.feasible & np.isfinite(self.log_likelihood))[None, :]
        with np.errstate(invalid="ignore"):
            off = self.alpha_off + self.beta_off - self.log_likelihood[None, :]
        return np.where(ok, off, -np.inf)

    def occupancy(self, per_frame: bool = True) -> np.ndarray:
        """Posterior of position ``s`` at frame ``t``, ``α_t(s) β_t(s) / p`` ``(T, B, S')``; 0 off valid frames.

        ``per_frame=True`` divides by each frame's own ``Σ_s α_t(s) β_t(s)`` (equal to ``p`` in exact
        arithmetic): the rounding drift that α and β accumulate over time is common to a frame's row and
        cancels, which makes float32 gradients of long sequences ~10x more accurate. ``False`` divides by
        the ``p`` of the last frame, the textbook form (kept to measure the difference).
        """
        if per_frame:
            z = self.alpha_hat + self.beta_hat
            m = z.max(axis=2, keepdims=True)
            ok = (self.valid_frames & self.feasible[None, :])[:, :, None] & np.isfinite(m)
            z -= np.where(ok, m, np.inf).astype(z.dtype)     # rows that must be 0 become exp(-inf)
            np.exp(z, out=z)
            tot = z.sum(axis=2, keepdims=True)
            tot[tot == 0] = 1.0
            z /= tot
            return z
        off = self._occupancy_offset().astype(self.alpha_hat.dtype)
        z = self.alpha_hat + self.beta_hat
        z += off[:, :, None]
        return np.exp(z, out=z)

    def class_occupancy(self, per_frame: bool = True) -> np.ndarray:
        """``γ_t(k)``: posterior that frame ``t`` emits class ``k``, ``(T, B, C)``; rows sum to 1 on valid frames."""
        return _class_occupancy(self.occupancy(per_frame), self.ext, self.log_probs.shape[2], self.blank)

    def frame_log_likelihood(self) -> np.ndarray:
        """``log Σ_s α_t(s) β_t(s)`` for every frame ``(T, B)`` float64 (NaN off valid frames).

        Equal to ``log p`` at every ``t < T_b``: a check of the recursions.
        """
        z = self.log_alpha + self.log_beta
        m = np.maximum(z.max(axis=2), _FLOOR)
        with np.errstate(divide="ignore"):
            out = m + np.log(np.exp(z - m[:, :, None]).sum(axis=2))
        return np.where(self.valid_frames, out, np.nan)


def _class_occupancy(occ: np.ndarray, ext: np.ndarray, C: int, blank: int) -> np.ndarray:
    """Sum the position occupancies ``(T, B, S')`` into classes ``(T, B, C)``."""
    T, B, _ = occ.shape
    S = (ext.shape[1] - 1) // 2
    # Labels: a batched product with the one-hot of the targets (exact: each sum adds the same nonzero terms).
    onehot = np.zeros((B, S, C), dtype=occ.dtype)
    if S:
        np.put_along_axis(onehot, ext[:, 1::2, None], 1.0, axis=2)
        gamma = np.matmul(occ[:, :, 1::2].transpose(1, 0, 2), onehot).transpose(1, 0, 2)
    else:
        gamma = np.zeros((T, B, C), dtype=occ.dtype)
    gamma = np.ascontiguousarray(gamma)
    gamma[:, :, blank] += occ[:, :, 0::2].sum(axis=2)
    return gamma


def _lse3_into(out: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, m: np.ndarray,
               tmp: np.ndarray) -> None:
    """``out = log(e^a + e^b + e^c)`` elementwise with preallocated buffers; all ``-inf`` gives ``-inf``."""
    np.maximum(a, b, out=m)
    np.maximum(m, c, out=m)
    np.maximum(m, _FLOOR, out=m)
    np.subtract(a, m, out=out)
    np.exp(out, out=out)
    np.subtract(b, m, out=tmp)
    np.exp(tmp, out=tmp)
    out += tmp
    np.subtract(c, m, out=tmp)
    np.exp(tmp, out=tmp)
    out += tmp
    np.log(out, out=out)
    out += m


def _row_shift(row: np.ndarray) -> np.ndarray:
    """Per-batch maximum of a ``(B, S')`` row (0 where the row is all ``-inf``) — the shift to subtract."""
    r = row.max(axis=1)
    r[~np.isfinite(r)] = 0.0
    return r


_G = 2  # guard columns on each side of a lattice row


def _guarded(E: np.ndarray, skip: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad the lattice rows with ``-inf`` guard columns (two in front, two at the end).

    With guards, one batch row's neighbours ``s-1, s-2`` (or ``s+1, s+2``) at its edges are ``-inf``
    cells, so a whole time step is one contiguous 1-D ufunc call per operation (no per-row loops,
    no shifted copies): cells computed over a guard come out ``-inf`` again (their emission or skip is
    ``-inf``). Returns ``(E_g (T, B, W), skip_in (B, W), skip_out (B, W))``: additive ``0/-inf`` masks of
    the skip into ``s`` (α) and out of ``s`` (β).
    """
    T, B, Sx = E.shape
    W = Sx + 2 * _G
    Eg = np.empty((T, B, W), dtype=E.dtype)
    Eg[:, :, :_G] = -np.inf
    Eg[:, :, _G + Sx:] = -np.inf
    Eg[:, :, _G:_G + Sx] = E
    skip_in = np.full((B, W), -np.inf, dtype=E.dtype)
    skip_in[:, _G:_G + Sx] = np.where(skip, 0.0, -np.inf)
    skip_out = np.full((B, W), -np.inf, dtype=E.dtype)
    skip_out[:, _G:_G + Sx - 2] = skip_in[:, _G + 2:_G + Sx]      # s -> s+2 allowed iff the skip into s+2 is
    return Eg, skip_in, skip_out


def _alpha_pass(Eg: np.ndarray, skip_in: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Shifted log α ``(T, B, W)`` (guarded rows) and its float64 offsets ``(T, B)``."""
    T, B, W = Eg.shape
    dt = Eg.dtype
    A = np.empty((T, B, W), dtype=dt)      # every cell but row 0's front guards is written below
    A.reshape(T, -1)[:, :_G] = -np.inf
    aoff = np.zeros((T, B))
    F = B * W
    m, tmp, tc, new = (np.empty(F - _G, dtype=dt) for _ in range(4))
    skip_f = skip_in.reshape(-1)[_G:]
    if T == 0:
        return A, aoff
    A[0] = -np.inf
    A[0, :, _G:_G + 2] = Eg[0, :, _G:_G + 2]              # a path starts with the first blank or the first label
    r = _row_shift(A[0])
    A[0] -= r[:, None]
    aoff[0] = r
    for t in range(1, T):
        prev = A[t - 1].reshape(-1)
        cur = A[t].reshape(-1)
        np.add(prev[:-2], skip_f, out=tc)
        _lse3_into(new, prev[2:], prev[1:-1], tc, m, tmp)
        np.add(new, Eg[t].reshape(-1)[_G:], out=cur[_G:])
        r = _row_shift(A[t])
        A[t] -= r[:, None]
        aoff[t] = aoff[t - 1] + r
    return A, aoff


def _beta_pass(Eg: np.ndarray, skip_out: np.ndarray, input_lengths: np.ndarray, target_lengths: np.ndarray
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Shifted log β ``(T, B, W)`` (β excluding the emission at t; guarded rows) and float64 offsets ``(T, B)``.

    Each sequence starts at its own last frame ``T_b - 1``; its rows at later frames stay ``-inf``.
    """
    T, B, W = Eg.shape
    dt = Eg.dtype
    Bt = np.empty((T, B, W), dtype=dt)     # every cell but the last row's end guards is written below
    Bt.reshape(T, -1)[:, -_G:] = -np.inf
    if T > 0:
        Bt[T - 1] = -np.inf
    boff = np.zeros((T, B))
    F = B * W
    m, tmp, tc = (np.empty(F - _G, dtype=dt) for _ in range(3))
    q = np.empty(F, dtype=dt)
    skip_f = skip_out.reshape(-1)[:-_G]
    last = input_lengths - 1
    end = _G + 2 * target_lengths                         # column of the final blank
    has_label = target_lengths > 0

    def inject(t: int) -> None:
        rows = np.flatnonzero(last == t)
        if rows.size:
            Bt[t, rows, :] = -np.inf
            Bt[t, rows, end[rows]] = 0.0                  # end in the final blank ...
            lab = rows[has_label[rows]]
            Bt[t, lab, end[lab] - 1] = 0.0                # ... or in the last label
            boff[t, rows] = 0.0

    if T > 0:
        inject(T - 1)
    for t in range(T - 2, -1, -1):
        np.add(Bt[t + 1].reshape(-1), Eg[t + 1].reshape(-1), out=q)
        np.add(q[2:], skip_f, out=tc)
        cur = Bt[t].reshape(-1)
        _lse3_into(cur[:-_G], q[:-2], q[1:-1], tc, m, tmp)
        r = _row_shift(Bt[t])
        Bt[t] -= r[:, None]
        boff[t] = boff[t + 1] + r
        inject(t)
    return Bt, boff


def forward_backward(logits, targets, input_lengths, target_lengths, blank: int = 0,
                     check: bool = True) -> CtcLattice:
    """Run the α and β recursions for a batch and return the :class:`CtcLattice`.

    Args as :func:`ctc_loss_and_grad`. ``check=False`` skips validation (inputs already canonical).
    """
    if check:
        logits, targets, input_lengths, target_lengths = check_ctc_inputs(
            logits, targets, input_lengths, target_lengths, blank)
    dt = logits.dtype
    T, B, C = logits.shape
    lp = log_softmax(logits)
    ext = extended_labels(targets, blank)
    Sx = ext.shape[1]
    ext_len = 2 * target_lengths + 1
    in_ext = np.arange(Sx)[None, :] < ext_len[:, None]                        # (B, S')
    # Emissions log y_t(l'_s) (T, B, S'); -inf beyond each sequence's l' so those positions stay dead.
    E = lp[:, np.arange(B)[:, None], ext]
    E[:, ~in_ext] = -np.inf
    # Skip s-2 -> s allowed iff l'_s is a label different from l'_{s-2}: additive mask 0 / -inf.
    skip = np.zeros((B, Sx), dtype=bool)
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    Eg, skip_in, skip_out = _guarded(E, skip)

    with np.errstate(divide="ignore"):   # log(0) = -inf is the intended result for dead positions
        A, aoff = _alpha_pass(Eg, skip_in)
        Bt, boff = _beta_pass(Eg, skip_out, input_lengths, target_lengths)
    A = A[:, :, _G:_G + Sx]
    Bt = Bt[:, :, _G:_G + Sx]

    # log p from α at each sequence's last frame.
    ll = np.full(B, -np.inf)
    for b in np.flatnonzero(input_lengths > 0):
        tb = input_lengths[b] - 1
        s_end = ext_len[b] - 1
        vals = A[tb, b, s_end - (1 if target_lengths[b] > 0 else 0): s_end + 1].astype(np.float64)
        mx = vals.max()
        if np.isfinite(mx):
            ll[b] = mx + np.log(np.exp(vals - mx).sum()) + aoff[tb, b]
    ll[(input_lengths == 0) & (target_lengths == 0)] = 0.0   # no frames, no labels: the empty path, p = 1
    ok = feasible(targets, input_lengths, target_lengths) & np.isfinite(ll)
    return CtcLattice(lp, ext, input_lengths, target_lengths, A, aoff, Bt, boff, ll, ok,
                      int(blank))


def ctc_loss_and_grad(logits, targets, input_lengths, target_lengths, blank: int = 0,
                      zero_infinity: bool = False, check: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """CTC loss per sequence and its gradient with respect to the logits.

    Args:
        logits: ``(T, B, C)`` unnormalised scores, float32 or float64.
        targets: padded ``(B, S)`` integer labels (or 1-D concatenated; see ``check_ctc_inputs``).
        input_lengths: ``(B,)`` valid frames per sequence.
        target_lengths: ``(B,)`` labels per sequence.
        blank: the blank class index.
        zero_infinity: report 0 instead of ``inf`` for sequences without an alignment.
        check: validate the inputs (skip only for inputs already returned by ``check_ctc_inputs``).

    Returns:
        ``(loss (B,), dlogits (T, B, C))`` in the logits' dtype; ``loss[b] = -log p(l_b | x_b)`` (nats).
    """
    if check:
        logits, targets, input_lengths, target_lengths = check_ctc_inputs(
            logits, targets, input_lengths, target_lengths, blank)
    lat = forward_backward(logits, targets, input_lengths, target_lengths, blank, check=False)
    gamma = lat.class_occupancy()
    grad = np.exp(lat.log_probs)
    grad -= gamma
    keep = lat.valid_frames & lat.feasible[None, :]          # zero on padded frames and impossible sequences
    grad *= keep[:, :, None]
    loss = np.where(lat.feasible, -lat.log_likelihood, 0.0 if zero_infinity else np.inf)
    return loss.astype(logits.dtype), grad


# -- references for tiny cases ---------------------------------------------------------------------------------

def _all_paths(T: int, C: int) -> np.ndarray:
    """Every path ``(C**T, T)`` of a T-frame, C-class problem (row-major order)."""
    if T == 0:
        return np.zeros((1, 0), dtype=np.int64)
    return np.stack(np.unravel_index(np.arange(C ** T), (C,) * T), axis=1).astype(np.int64)


def collapse(path: Sequence[int], blank: int = 0) -> Tuple[int, ...]:
    """The CTC collapse B(π): merge repeated classes, then drop blanks."""
    out = []
    prev = None
    for k in path:
        k = int(k)
        if k != prev and k != blank:
            out.append(k)
        prev = k
    return tuple(out)


def _path_log_probs(log_probs: np.ndarray, paths: np.ndarray) -> np.ndarray:
    T = log_probs.shape[0]
    return log_probs[np.arange(T)[None, :], paths].sum(axis=1) if T else np.zeros(len(paths))


def _logsumexp(v: np.ndarray) -> float:
    if v.size == 0:
        return -np.inf
    m = v.max()
    if not np.isfinite(m):
        return float(m)
    return float(m + np.log(np.exp(v - m).sum()))


def brute_force_ctc(logits_single, target: Sequence[int], blank: int = 0, return_grad: bool = False):
    """``-log p(l|x)`` by enumerating all ``C**T`` paths of one sequence (float64; tiny cases only).

    Args:
        logits_single: ``(T, C)`` unnormalised scores of one sequence.
        target: the label sequence (no blanks).
        blank: the blank class.
        return_grad: also return the gradient w.r.t. the logits ``y - γ`` ``(T, C)`` from the enumeration.

    Returns ``loss`` (``inf`` if no path collapses to ``target``), or ``(loss, grad)``.
    """
    x = np.asarray(logits_single, dtype=np.float64)
    T, C = x.shape
    if C ** T > 5_000_000:
        raise ValueError(f"logits_single: C**T = {C}**{T} paths is too many for brute force (max 5e6)")
    lp = log_softmax(x)
    paths = _all_paths(T, C)
    tgt = np.asarray(target, dtype=np.int64).reshape(-1)
    L = tgt.size
    # Vectorised collapse test: keep π_t if not blank and different from π_{t-1}; kept labels must spell target.
    keep = paths != blank
    if T > 1:
        keep[:, 1:] &= paths[:, 1:] != paths[:, :-1]
    rank = np.cumsum(keep, axis=1) - 1
    match = keep.sum(axis=1) == L
    if L:
        want = tgt[np.clip(rank, 0, L - 1)]
        match &= np.all(~keep | (want == paths), axis=1)
    plp = _path_log_probs(lp, paths[match])
    logp = _logsumexp(plp)
    loss = -logp
    if not return_grad:
        return loss
    grad = np.exp(lp)
    if np.isfinite(logp):
        w = np.exp(plp - logp)
        for t in range(T):
            grad[t] -= np.bincount(paths[match][:, t], weights=w, minlength=C)
    else:
        grad[:] = 0.0
    return loss, grad


def label_sequence_log_probs(log_probs, blank: int = 0) -> Dict[Tuple[int, ...], float]:
    """``log p(l|x)`` for every label sequence ``l`` reachable in ``(T, C)`` log-probs, by enumeration."""
    lp = np.asarray(log_probs, dtype=np.float64)
    T, C = lp.shape
    if C ** T > 2_000_000:
        raise ValueError(f"log_probs: C**T = {C}**{T} paths is too many to enumerate (max 2e6)")
    paths = _all_paths(T, C)
    plp = _path_log_probs(lp, paths)
    groups: Dict[Tuple[int, ...], List[float]] = {}
    for path, v in zip(paths, plp):
        groups.setdefault(collapse(path, blank), []).append(v)
    return {k: _logsumexp(np.asarray(v)) for k, v in groups.items()}


def exhaustive_decode(log_probs, blank: int = 0) -> Tuple[Tuple[int, ...], float]:
    """The most probable label sequence and its ``log p(l|x)``, by enumerating all paths (tiny cases)."""
    probs = label_sequence_log_probs(log_probs, blank)
    best = max(probs, key=probs.get)
    return best, probs[best]


# -- decoding -------------------------------------------------------------------------------------------------

def greedy_decode(logits, input_lengths: Optional[Sequence[int]] = None, blank: int = 0):
    """Best-path decoding: argmax class per frame, then collapse (merge repeats, drop blanks).

    ``logits``: ``(T, B, C)`` (scores or log-probs; argmax is the same) -> a list of B label lists, using
    the first ``input_lengths[b]`` frames; or ``(T, C)`` -> one label list.
    """
    x = np.asarray(logits)
    if x.ndim == 2:
        return list(collapse(x.argmax(axis=1), blank))
    if x.ndim != 3:
        raise ValueError(f"logits: got shape {x.shape}; expected (T, B, C) or (T, C)")
    T, B, _ = x.shape
    lens = np.full(B, T) if input_lengths is None else np.asarray(input_lengths)
    best = x.argmax(axis=2)
    return [list(collapse(best[:lens[b], b], blank)) for b in range(B)]


def prefix_beam_search(log_probs, beam: int, blank: int = 0) -> List[Tuple[Tuple[int, ...], float]]:
    """Prefix beam search (Hannun et al. 2014, without a language model) over one sequence.

    Each prefix carries two probabilities: of the paths so far that spell it and end in a blank (``p_b``),
    or in its last label (``p_nb``); a repeated label extends the prefix only after a blank. After every
    frame the ``beam`` prefixes with the highest ``p_b + p_nb`` are kept.

    Args:
        log_probs: ``(T, C)`` log-probabilities (a log-softmax) of one sequence.
        beam: number of prefixes kept per frame (>= 1).
        blank: the blank class.

    Returns:
        ``[(labels, log p), ...]`` best first; with a beam that never prunes (``beam >= C**T``),
        ``log p`` of each prefix is exactly ``log p(l|x)`` = ``-CTC loss``.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2:
        raise ValueError(f"log_probs: got shape {lp.shape}; expected (T, C) for one sequence")
    if isinstance(beam, bool) or not isinstance(beam, (int, np.integer)) or beam < 1:
        raise ValueError(f"beam: got {beam!r}; allowed: an integer >= 1")
    T, C = lp.shape
    if not 0 <= blank < C:
        raise ValueError(f"blank: got {blank!r}; allowed: an integer in [0, {C})")
    ninf = -np.inf
    beams: Dict[Tuple[int, ...], Tuple[float, float]] = {(): (0.0, ninf)}   # prefix -> (log p_b, log p_nb)
    labels = [k for k in range(C) if k != blank]
    for t in range(T):
        nxt: Dict[Tuple[int, ...], List[float]] = {}

        def add(prefix, which: int, v: float) -> None:
            if v == ninf:          # an impossible extension (e.g. a repeat with no blank yet): not a prefix
                return
            cur = nxt.setdefault(prefix, [ninf, ninf])
            cur[which] = np.logaddexp(cur[which], v)

        for prefix, (pb, pnb) in beams.items():
            total = np.logaddexp(pb, pnb)
            add(prefix, 0, total + lp[t, blank])                 # a blank keeps the prefix, now ending in blank
            last = prefix[-1] if prefix else None
            for k in labels:
                if k == last:
                    add(prefix, 1, pnb + lp[t, k])              # repeat merges into the same label
                    add(prefix + (k,), 1, pb + lp[t, k])        # a new copy needs the blank in between
                else:
                    add(prefix + (k,), 1, total + lp[t, k])
        scored = sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))
        beams = {k: (v[0], v[1]) for k, v in scored[:beam]}
    out = [(k, float(np.logaddexp(*v))) for k, v in beams.items()]
    out.sort(key=lambda kv: -kv[1])
    return out
