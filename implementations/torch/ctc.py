"""CTC through PyTorch: ``F.log_softmax`` inside the graph, then ``F.ctc_loss(reduction="none")``.

:func:`ctc` returns the harness definition (DESIGN.md): loss per sequence ``(B,)`` and the gradient with
respect to the **logits** ``(T, B, C)`` (autograd through the log-softmax), impossible alignments normalised
to ``inf`` (0 with ``zero_infinity``) with a zero gradient. :func:`ctc_native` returns what PyTorch itself
gives, before any normalisation, plus which kernel ran — the raw material of the suite's "semantic
differences" table.

Kernel choice on CUDA: PyTorch runs cuDNN's CTC only when all of its conditions hold (blank 0, float32,
1-D int32 concatenated targets on the CPU, every input length equal to T, every target length < 256 and
<= its input length, cuDNN enabled); :func:`cudnn_conditions` checks the data-dependent ones and
:func:`plan` decides which form of the targets to pass. Which kernel actually ran is read from the
``grad_fn`` of the loss.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from implementations.ctc_checks import check_ctc_inputs, feasible

PATHS = ("cudnn", "native-cuda", "native-cpu")


def cudnn_conditions(dtype: str, blank: int, T: int, input_lengths: np.ndarray,
                     target_lengths: np.ndarray) -> Tuple[bool, str]:
    """Whether the data allow PyTorch's cuDNN CTC kernel, and if not, the first reason why."""
    il = np.asarray(input_lengths)
    tl = np.asarray(target_lengths)
    if blank != 0:
        return False, f"blank={blank} (cuDNN needs blank 0)"
    if dtype != "float32":
        return False, f"dtype {dtype} (cuDNN CTC is float32 only)"
    if il.size and (il != T).any():
        b = int(np.flatnonzero(il != T)[0])
        return False, f"input length {int(il[b])} of batch item {b} != T={T} (cuDNN needs all equal to T)"
    if tl.size and (tl >= 256).any():
        b = int(np.flatnonzero(tl >= 256)[0])
        return False, f"target length {int(tl[b])} of batch item {b} >= 256"
    if tl.size and (tl > il).any():
        b = int(np.flatnonzero(tl > il)[0])
        return False, f"target length {int(tl[b])} > input length {int(il[b])} at batch item {b}"
    return True, ""


def plan(device: str, dtype: str, blank: int, T: int, input_lengths, target_lengths,
         use_cudnn: Optional[bool] = None, cudnn_available: Optional[bool] = None) -> Tuple[str, str]:
    """Which kernel to ask for: ``(path, reason)``, path in :data:`PATHS`.

    ``use_cudnn``: None = cuDNN whenever its conditions hold; True = require it (``ValueError`` saying why
    it cannot run); False = the native CUDA kernel. ``cudnn_available`` defaults to what torch reports.
    """
    if device == "cpu":
        if use_cudnn:
            raise ValueError("use_cudnn: got True, but device='cpu' (cuDNN is CUDA only)")
        return "native-cpu", "device is cpu"
    if device != "cuda":
        raise ValueError(f"device: got {device!r}; allowed: cpu, cuda")
    if use_cudnn is False:
        return "native-cuda", "use_cudnn=False"
    if cudnn_available is None:
        import torch
        cudnn_available = bool(torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled)
    ok, why = cudnn_conditions(dtype, blank, T, input_lengths, target_lengths)
    if not cudnn_available:
        ok, why = False, "cuDNN is not available or disabled"
    if use_cudnn and not ok:
        raise ValueError(f"use_cudnn: got True, but cuDNN's CTC cannot run here: {why}")
    return ("cudnn", "conditions hold") if ok else ("native-cuda", why)


def _graph_path(loss, device: str) -> str:
    """The kernel that produced ``loss``, read from its autograd graph (``CudnnCtcLossBackward0`` or not)."""
    seen = set()
    stack = [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        name = type(fn).__name__
        if "Ctc" in name:
            return "cudnn" if "Cudnn" in name else f"native-{device}"
        stack.extend(f for f, _ in fn.next_functions)
    return f"unknown-{device}"


def _run(logits, targets, input_lengths, target_lengths, blank: int, zero_infinity: bool, device: str,
         use_cudnn: Optional[bool], leaf: str = "logits"):
    """One forward+backward. ``leaf="logits"``: log-softmax in the graph; ``"log_probs"``: PyTorch's own input."""
    import torch
    import torch.nn.functional as F

    x, tg, il, tl = logits, targets, input_lengths, target_lengths
    T = x.shape[0]
    path, why = plan(device, str(x.dtype), blank, T, il, tl, use_cudnn)
    dev = torch.device(device)
    if path == "cudnn":
        # cuDNN's form: 1-D int32 concatenated targets on the CPU, lengths as Python ints.
        flat = np.concatenate([tg[b, :tl[b]] for b in range(tg.shape[0])]) if tg.shape[0] else np.zeros(0)
        t_targets = torch.as_tensor(flat.astype(np.int32))
        t_il, t_tl = [int(v) for v in il], [int(v) for v in tl]
    else:
        t_targets = torch.as_tensor(tg, device=dev)   # padded int64 (never cuDNN-eligible: 2-D)
        t_il = torch.as_tensor(il, device=dev)
        t_tl = torch.as_tensor(tl, device=dev)
    src = torch.tensor(x, device=dev)
    if leaf == "logits":
        src.requires_grad_(True)
        lp = F.log_softmax(src, dim=-1)
    else:
        lp = F.log_softmax(src, dim=-1).detach().requires_grad_(True)
    with torch.backends.cudnn.flags(enabled=(path == "cudnn")):
        loss = F.ctc_loss(lp, t_targets, t_il, t_tl, blank=blank, reduction="none", zero_infinity=zero_infinity)
        ran = _graph_path(loss, device)
        loss.sum().backward()
    grad = (src if leaf == "logits" else lp).grad
    if device == "cuda":
        torch.cuda.synchronize()
    return loss.detach().cpu().numpy(), grad.detach().cpu().numpy(), {"path": ran, "planned": path, "reason": why}


def ctc(logits, targets, input_lengths, target_lengths, blank: int = 0, zero_infinity: bool = False,
        device: str = "cpu", use_cudnn: Optional[bool] = None, check: bool = True
        ) -> Tuple[np.ndarray, np.ndarray]:
    """Loss ``(B,)`` and gradient w.r.t. the logits ``(T, B, C)`` in the harness definition (NumPy arrays)."""
    if check:
        logits, targets, input_lengths, target_lengths = check_ctc_inputs(
            logits, targets, input_lengths, target_lengths, blank)
    loss, grad, _ = _run(logits, targets, input_lengths, target_lengths, blank, zero_infinity, device, use_cudnn)
    return normalise(loss, grad, targets, input_lengths, target_lengths, zero_infinity)


def normalise(loss: np.ndarray, grad: np.ndarray, targets, input_lengths, target_lengths,
              zero_infinity: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Impossible alignments (decided from lengths and repeats) -> ``inf`` / 0 and a zero gradient."""
    ok = feasible(targets, input_lengths, target_lengths)
    loss = np.where(ok, loss, 0.0 if zero_infinity else np.inf).astype(loss.dtype)
    grad = np.where(ok[None, :, None], grad, 0.0)      # where, not *: NaN * 0 is NaN
    return loss, grad.astype(loss.dtype, copy=False)


def ctc_native(logits, targets, input_lengths, target_lengths, blank: int = 0, zero_infinity: bool = False,
               device: str = "cpu", use_cudnn: Optional[bool] = None) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """PyTorch's own results, not normalised: ``(loss, dlogits, info)``.

    ``info``: ``path`` (``cudnn``/``native-cuda``/``native-cpu``, from ``grad_fn``), ``planned`` and
    ``reason``; ``nan_in_grad`` (sequences whose gradient holds NaN), ``nonfinite_loss``;
    ``grad_log_probs`` — the gradient PyTorch returns when ``log_probs`` itself is the leaf. PyTorch's
    backward assumes its input came from a log-softmax and returns ``y - γ`` there, not the true
    ``∂loss/∂log_probs = -γ``; ``grad_log_probs_row_sum`` shows it (0 on valid frames, where -γ sums to -1).
    """
    x, tg, il, tl = check_ctc_inputs(logits, targets, input_lengths, target_lengths, blank)
    loss, grad, info = _run(x, tg, il, tl, blank, zero_infinity, device, use_cudnn)
    _, g_lp, _ = _run(x, tg, il, tl, blank, zero_infinity, device, use_cudnn, leaf="log_probs")
    info = dict(info)
    info["nan_in_grad"] = [int(b) for b in np.flatnonzero(np.isnan(grad).any(axis=(0, 2)))]
    info["nonfinite_loss"] = [int(b) for b in np.flatnonzero(~np.isfinite(loss))]
    info["grad_log_probs"] = g_lp
    info["grad_log_probs_row_sum"] = g_lp.sum(axis=2)
    return loss, grad, info


def prepare(logits, targets, input_lengths, target_lengths, blank: int = 0, zero_infinity: bool = False,
            device: str = "cpu", use_cudnn: Optional[bool] = None):
    """A zero-argument callable running one forward+backward on pre-converted tensors (device-synchronised).

    For timing: conversion and kernel planning happen here, outside the timed region. Returns
    ``(fn, path)`` with the planned path.
    """
    import torch
    import torch.nn.functional as F

    x, tg, il, tl = check_ctc_inputs(logits, targets, input_lengths, target_lengths, blank)
    path, _ = plan(device, str(x.dtype), blank, x.shape[0], il, tl, use_cudnn)
    dev = torch.device(device)
    if path == "cudnn":
        flat = np.concatenate([tg[b, :tl[b]] for b in range(tg.shape[0])])
        t_targets = torch.as_tensor(flat.astype(np.int32))
        t_il, t_tl = [int(v) for v in il], [int(v) for v in tl]
    else:
        t_targets = torch.as_tensor(tg, device=dev)
        t_il, t_tl = torch.as_tensor(il, device=dev), torch.as_tensor(tl, device=dev)
    src = torch.tensor(x, device=dev, requires_grad=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def fn():
        src.grad = None
        with torch.backends.cudnn.flags(enabled=(path == "cudnn")):
            loss = F.ctc_loss(F.log_softmax(src, dim=-1), t_targets, t_il, t_tl, blank=blank, reduction="none",
                              zero_infinity=zero_infinity)
            loss.sum().backward()
        sync()
        return src.grad

    return fn, path
