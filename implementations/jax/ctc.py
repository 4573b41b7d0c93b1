"""CTC through JAX: ``optax.ctc_loss`` with the gradient from ``jax.grad``, float64 under x64.

:func:`ctc` returns the harness definition (DESIGN.md): loss per sequence ``(B,)`` and the gradient with
respect to the logits ``(T, B, C)`` (time-major, like every backend), impossible alignments normalised to
``inf`` (0 with ``zero_infinity``) with a zero gradient. :func:`ctc_native` returns optax's own values.

How the harness inputs map onto optax: logits become batch-major ``(B, T, C)``; ``logit_paddings[b, t]`` is
1.0 for ``t >= input_lengths[b]`` and ``label_paddings[b, n]`` 1.0 for ``n >= target_lengths[b]``. Padded
labels hold the blank index: optax marks "repeat" by comparing each label with the next *including the
padding*, so a pad value equal to the last label would change that label's transitions. The blank is moved
to class 0 (columns permuted, targets relabelled, gradient permuted back) so one compiled function serves
every blank index. Optax replaces
log(0) by ``log_epsilon = -1e5``, so an impossible alignment gives a large *finite* loss; impossibility is
decided here from the lengths and repeats (``T_b < L_b + repeats_b``), never from the magnitude.

x64 is switched on (``jax_enable_x64``) before the first array is made, so float64 stays float64.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

from implementations.ctc_checks import check_ctc_inputs, feasible

LOG_EPSILON = -1e5  # optax's default stand-in for log(0)

_GRAD_FN: Dict[str, Callable] = {}


def enable_x64() -> None:
    """Turn on 64-bit types in JAX (global; harmless if already on)."""
    import jax
    jax.config.update("jax_enable_x64", True)


def _loss_and_grad_fn() -> Callable:
    """``jit(value_and_grad)`` of the summed per-sequence loss, blank at class 0 (compiled once per shape)."""
    if "fn" not in _GRAD_FN:
        import jax
        import optax

        def total(logits_btc, logit_pad, labels, label_pad):
            per_seq = optax.ctc_loss(logits_btc, logit_pad, labels, label_pad, blank_id=0, log_epsilon=LOG_EPSILON)
            # Each loss depends on its own row only, so the gradient of the sum is every row's gradient.
            return per_seq.sum(), per_seq

        _GRAD_FN["fn"] = jax.jit(jax.value_and_grad(total, has_aux=True))
    return _GRAD_FN["fn"]


def class_order(C: int, blank: int) -> np.ndarray:
    """Class permutation putting the blank first: ``order[j]`` is the original class at new index ``j``.

    optax's ``blank_id`` is a static slice, so every blank index would compile anew; moving the blank's
    column to 0 (and relabelling the targets) gives the same loss with one compiled function per shape.
    """
    return np.array([blank] + [k for k in range(C) if k != blank])


def optax_inputs(logits: np.ndarray, targets: np.ndarray, input_lengths: np.ndarray, target_lengths: np.ndarray,
                 blank: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated harness arrays -> optax's ``(logits (B,T,C), logit_paddings, labels, label_paddings)``.

    Classes are permuted by :func:`class_order` so that the blank is class 0.
    """
    T, B, C = logits.shape
    dt = logits.dtype
    order = class_order(C, blank)
    new_index = np.argsort(order)                         # original class -> index after the permutation
    x = np.ascontiguousarray(logits.transpose(1, 0, 2)[:, :, order])
    logit_pad = (np.arange(T)[None, :] >= input_lengths[:, None]).astype(dt)
    S = max(targets.shape[1], 1)                          # optax needs at least one label column
    valid = np.arange(S)[None, :] < target_lengths[:, None]
    labels = np.zeros((B, S), dtype=np.int32)             # pad with the blank (0): never equal to a real label
    labels[:, :targets.shape[1]] = np.where(valid[:, :targets.shape[1]], new_index[targets], 0)
    label_pad = (~valid).astype(dt)
    return x, logit_pad, labels, label_pad


def _device(device: str):
    import jax
    if device == "cpu":
        return jax.devices("cpu")[0]
    if device == "cuda":
        return jax.devices("gpu")[0]
    raise ValueError(f"device: got {device!r}; allowed: cpu, cuda")


def _run(x, tg, il, tl, blank: int, device: str) -> Tuple[np.ndarray, np.ndarray]:
    """optax loss ``(B,)`` and gradient w.r.t. the time-major logits ``(T, B, C)``, as NumPy arrays."""
    enable_x64()
    import jax
    dev = _device(device)
    args = [jax.device_put(a, dev) for a in optax_inputs(x, tg, il, tl, blank)]
    (_, loss), grad = _loss_and_grad_fn()(*args)
    loss = np.asarray(jax.device_get(loss))
    grad_perm = np.asarray(jax.device_get(grad)).transpose(1, 0, 2)
    grad = np.empty_like(grad_perm)
    grad[:, :, class_order(x.shape[2], blank)] = grad_perm      # undo the class permutation
    return loss, grad


def ctc(logits, targets, input_lengths, target_lengths, blank: int = 0, zero_infinity: bool = False,
        device: str = "cpu", check: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Loss ``(B,)`` and gradient w.r.t. the logits ``(T, B, C)`` in the harness definition (NumPy arrays)."""
    if check:
        logits, targets, input_lengths, target_lengths = check_ctc_inputs(
            logits, targets, input_lengths, target_lengths, blank)
    loss, grad = _run(logits, targets, input_lengths, target_lengths, blank, device)
    ok = feasible(targets, input_lengths, target_lengths)
    loss = np.where(ok, loss, 0.0 if zero_infinity else np.inf).astype(logits.dtype)
    grad = np.where(ok[None, :, None], grad, 0.0).astype(logits.dtype)
    return loss, np.ascontiguousarray(grad)


def ctc_native(logits, targets, input_lengths, target_lengths, blank: int = 0, zero_infinity: bool = False,
               device: str = "cpu") -> Tuple[np.ndarray, np.ndarray, Dict]:
    """optax's own results, not normalised: ``(loss, dlogits (T, B, C), info)``.

    ``zero_infinity`` has no optax counterpart (accepted and ignored). ``info``: ``path`` ("optax"),
    ``log_epsilon``, ``impossible`` (batch items without an alignment) with ``impossible_loss`` (optax's
    finite stand-ins), ``padded_grad_max`` (largest |gradient| on padded frames; the harness wants 0).
    """
    x, tg, il, tl = check_ctc_inputs(logits, targets, input_lengths, target_lengths, blank)
    loss, grad = _run(x, tg, il, tl, blank, device)
    ok = feasible(tg, il, tl)
    padded = np.arange(x.shape[0])[:, None] >= il[None, :]
    info = {"path": f"optax-{device}", "log_epsilon": LOG_EPSILON,
            "impossible": [int(b) for b in np.flatnonzero(~ok)],
            "impossible_loss": [float(v) for v in loss[~ok]],
            "padded_grad_max": float(np.abs(grad[padded]).max()) if padded.any() else 0.0,
            "zero_infinity_ignored": bool(zero_infinity)}
    return loss, grad, info


def prepare(logits, targets, input_lengths, target_lengths, blank: int = 0, device: str = "cpu"):
    """A zero-argument callable running one (already compiled) loss+gradient, blocking until done.

    Conversion to device arrays and the JIT compile happen here, outside the timed region.
    """
    enable_x64()
    import jax
    x, tg, il, tl = check_ctc_inputs(logits, targets, input_lengths, target_lengths, blank)
    dev = _device(device)
    args = [jax.device_put(a, dev) for a in optax_inputs(x, tg, il, tl, blank)]
    f = _loss_and_grad_fn()

    def fn():
        (_, loss), grad = f(*args)
        return jax.block_until_ready(grad)

    fn()   # compile now
    return fn
