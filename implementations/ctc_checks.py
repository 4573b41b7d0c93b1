"""Validation of CTC inputs, shared by every backend (NumPy only, no framework import).

:func:`check_ctc_inputs` rejects bad input with a ``ValueError``/``TypeError`` that names the argument, the
offending batch item and value, and what is allowed — before any computation — and returns the inputs in one
canonical form: logits ``(T, B, C)`` float32/float64, padded targets ``(B, S)`` int64 and lengths ``(B,)`` int64.
It also hosts the small structural helpers every backend needs to agree on impossible alignments.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from harness.core.errors import InputError, InputTypeError

FLOAT_DTYPES = (np.float32, np.float64)
#: Largest |logit| CTC accepts. A loss is invariant to shifting a frame's logits; beyond this a float32
#: log-softmax has lost its precision and the backends' losses and gradients no longer agree.
LOGIT_LIMIT = 1e4


def _int_vector(name: str, v, B: int) -> np.ndarray:
    """A length-``B`` vector of non-negative integers (ints, or integer-valued floats are refused)."""
    a = np.asarray(v)
    if a.ndim == 0:
        raise InputError(f"{name}: got a scalar {a.item()!r}; expected one length per batch item, shape ({B},)")
    if a.ndim != 1:
        raise InputError(f"{name}: got shape {a.shape}; expected ({B},)")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise InputTypeError(f"{name}: got dtype {a.dtype}; expected an integer array")
    if a.shape[0] != B:
        raise InputError(f"{name}: has {a.shape[0]} entries but logits have batch size B={B} "
                         "(mismatched batch sizes)")
    neg = np.flatnonzero(a < 0)
    if neg.size:
        b = int(neg[0])
        raise InputError(f"{name}: batch item {b} has negative length {int(a[b])}; lengths must be >= 0")
    return a.astype(np.int64)


def check_ctc_inputs(logits, targets, input_lengths, target_lengths, blank: int = 0
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate CTC inputs and return ``(logits, targets (B, S) int64, input_lengths, target_lengths)``.

    Args:
        logits: ``(T, B, C)`` unnormalised scores, float32 or float64, all finite.
        targets: padded ``(B, S)`` integer labels (only the first ``target_lengths[b]`` of row ``b`` are read),
            or the 1-D concatenation of all targets (length ``sum(target_lengths)``), converted to padded.
        input_lengths: ``(B,)`` frames per sequence, ``0 <= input_lengths[b] <= T``.
        target_lengths: ``(B,)`` labels per sequence, ``0 <= target_lengths[b] <= S``.
        blank: the blank class, ``0 <= blank < C``; no target may contain it.

    Padding entries of the returned targets are 0 (never read by a correct implementation).
    """
    x = np.asarray(logits)
    if x.ndim != 3:
        raise InputError(f"logits: got shape {x.shape}; expected (T, B, C) = (time, batch, classes)")
    if x.dtype not in FLOAT_DTYPES:
        raise InputTypeError(f"logits: got dtype {x.dtype}; allowed: float32, float64")
    T, B, C = x.shape
    if C < 1:
        raise InputError(f"logits: got C={C} classes; need at least 1 (the blank)")
    if T < 1 or B < 1:
        raise InputError(f"logits: got shape {x.shape}; CTC needs T >= 1 frames and B >= 1 sequences (an empty "
                         "batch has no loss to compute)")
    if isinstance(blank, bool) or not isinstance(blank, (int, np.integer)) or not 0 <= blank < C:
        raise InputError(f"blank: got {blank!r}; allowed: an integer in [0, {C}) (C={C} classes)")
    il = _int_vector("input_lengths", input_lengths, B)
    tl = _int_vector("target_lengths", target_lengths, B)
    over = np.flatnonzero(il > T)
    if over.size:
        b = int(over[0])
        raise InputError(f"input_lengths: batch item {b} has length {int(il[b])} > T={T} (logits' time axis)")

    tg = np.asarray(targets)
    if tg.dtype == np.bool_ or not (np.issubdtype(tg.dtype, np.integer) or tg.size == 0):
        raise InputTypeError(f"targets: got dtype {tg.dtype}; expected an integer array")
    if tg.ndim == 1:
        # Concatenated form: split by target_lengths into a padded (B, S) array.
        total = int(tl.sum())
        if tg.shape[0] != total:
            raise InputError(f"targets: 1-D (concatenated) with {tg.shape[0]} labels, but sum(target_lengths)="
                             f"{total}; they must match")
        S = int(tl.max()) if B else 0
        padded = np.zeros((B, S), dtype=np.int64)
        mask = np.arange(S)[None, :] < tl[:, None]
        padded[mask] = tg.astype(np.int64)
        tg = padded
    elif tg.ndim == 2:
        if tg.shape[0] != B:
            raise InputError(f"targets: has batch size {tg.shape[0]} but logits have B={B} (mismatched batch sizes)")
        tg = tg.astype(np.int64)
    else:
        raise InputError(f"targets: got shape {tg.shape}; expected padded (B, S) or concatenated 1-D")
    S = tg.shape[1]
    wide = np.flatnonzero(tl > S)
    if wide.size:
        b = int(wide[0])
        raise InputError(f"target_lengths: batch item {b} has length {int(tl[b])} > target array width S={S}")

    valid = np.arange(S)[None, :] < tl[:, None]
    for bad, what in (((tg == blank) & valid, f"the blank index {blank}; targets must not contain the blank"),
                      (((tg < 0) | (tg >= C)) & valid, f"a label outside [0, {C}) (C={C} classes)")):
        if bad.any():
            b, s = (int(i) for i in np.argwhere(bad)[0])
            raise InputError(f"targets: batch item {b}, position {s} holds {int(tg[b, s])}, {what}")

    if not np.isfinite(x).all():
        t, b, k = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise InputError(f"logits: batch item {b} has a non-finite value {float(x[t, b, k])} at time {t}, class {k}; "
                         "logits must be finite")
    big = np.abs(x) > LOGIT_LIMIT
    if big.any():
        t, b, k = (int(i) for i in np.argwhere(big)[0])
        raise InputError(f"logits: batch item {b} has {float(x[t, b, k]):.3g} at time {t}, class {k}; CTC takes "
                         f"logits with |value| <= {LOGIT_LIMIT:g} (a log-softmax that far out has no precision left, "
                         "and backends disagree about it: un-normalised activations by mistake?)")
    tg = np.where(valid, tg, 0)
    return x, tg, il, tl


def repeats(targets: np.ndarray, target_lengths: np.ndarray) -> np.ndarray:
    """Number of adjacent equal labels within each target ``(B,)``: each needs a blank frame between."""
    tg = np.asarray(targets)
    if tg.shape[1] < 2:
        return np.zeros(tg.shape[0], dtype=np.int64)
    same = tg[:, 1:] == tg[:, :-1]
    inside = np.arange(1, tg.shape[1])[None, :] < np.asarray(target_lengths)[:, None]
    return (same & inside).sum(axis=1).astype(np.int64)


def feasible(targets: np.ndarray, input_lengths: np.ndarray, target_lengths: np.ndarray) -> np.ndarray:
    """Whether an alignment exists for each sequence: ``T_b >= L_b + repeats_b`` ``(B,)`` bool."""
    return np.asarray(input_lengths) >= np.asarray(target_lengths) + repeats(targets, target_lengths)
