"""PyTorch backends: fused nn.RNN/LSTM/GRU (cuDNN or native kernels), a hand-written cell loop, torch.compile.

Four variants share one conversion layer (canonical NumPy :class:`~harness.core.params.Params` <-> torch
tensors; PyTorch's layout and gate order *are* the canonical ones, so conversion is a copy):

- ``torch``         — ``nn.RNN``/``nn.LSTM``/``nn.GRU``; cuDNN on CUDA, torch's own CPU kernels on the CPU
  (float32 goes through oneDNN/mkldnn when torch has it);
- ``torch-native``  — the same modules on CUDA with cuDNN switched off (ATen's native CUDA kernels);
- ``torch-cell``    — a Python loop over hand-written cells: the input GEMM of all steps is hoisted, each step
  does one fused ``(B, H) x (H, G·H)`` GEMM for all gates;
- ``torch-compile`` — the cell loop with each step's cell function compiled by ``torch.compile`` (inductor).

Every public result is NumPy in the canonical layout (time-major ``(T, B, ·)``, states ``(L, B, H)``).
The per-step hidden gradients (``hidden_grads``) always come from the cell loop: a fused module hides h_t.

torch itself is imported by this module, so import it only when a torch backend is asked for (the
registry does that lazily).
"""
from __future__ import annotations

import inspect
import shutil
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from harness.core import cells as _cells
from harness.core.params import PARAM_NAMES, Grads, LayerParams, Params
from harness.core.spec import CellSpec
from harness.core.errors import InputError, Unsupported
from implementations.base import BackendBase

_NO_CUDA = "torch.cuda.is_available() is False: no CUDA device"
_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---------------------------------------------------------------------------------------------------
# conversion helpers
# ---------------------------------------------------------------------------------------------------
def _tensor(a: np.ndarray, device: str, requires_grad: bool = False) -> torch.Tensor:
    """A fresh tensor on ``device`` holding a copy of ``a`` (a copy: NumPy inputs may be read-only)."""
    t = torch.tensor(np.ascontiguousarray(a), device=device)
    return t.requires_grad_(requires_grad)


def _np(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().cpu().numpy()


def _state_tensors(spec: CellSpec, state, B: int, dtype: torch.dtype, device: str,
                   requires_grad: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(h0, c0) tensors ``(L, B, H)``; zeros for a ``None`` state; ``c0`` is None unless LSTM."""
    shape = spec.state_shape(B)
    if state is None:
        h0 = torch.zeros(shape, dtype=dtype, device=device, requires_grad=requires_grad)
        c0 = torch.zeros(shape, dtype=dtype, device=device, requires_grad=requires_grad) if spec.is_lstm else None
        return h0, c0
    if spec.is_lstm:
        return _tensor(state[0], device, requires_grad), _tensor(state[1], device, requires_grad)
    return _tensor(state, device, requires_grad), None


def _cotangent_tensors(spec: CellSpec, d_final_state, B: int, dtype: torch.dtype,
                       device: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Cotangents of the final state as tensors (zeros for ``None``)."""
    return _state_tensors(spec, d_final_state, B, dtype, device, requires_grad=False)


def _pack_state(spec: CellSpec, h: torch.Tensor, c: Optional[torch.Tensor]):
    """NumPy state in the canonical structure: an array, or ``(h, c)`` for an LSTM."""
    return (_np(h), _np(c)) if spec.is_lstm else _np(h)


def _grads_to_params(spec: CellSpec, flat: Sequence[Optional[torch.Tensor]], like: List[torch.Tensor]) -> Params:
    """Per-parameter gradient tensors (canonical order, as :func:`_param_list`) -> canonical Params."""
    names = [n for n in PARAM_NAMES if n in spec.layer_shapes(0)]
    layers, k = [], 0
    for _ in range(spec.num_layers):
        kw = {}
        for n in names:
            g = flat[k]
            kw[n] = _np(g) if g is not None else np.zeros(tuple(like[k].shape), dtype=_np(like[k]).dtype)
            k += 1
        layers.append(LayerParams(**kw))
    return Params(layers)


# ---------------------------------------------------------------------------------------------------
# the hand-written cells (one step each; b_hh is folded into the hoisted input projection except for GRU)
# ---------------------------------------------------------------------------------------------------
def _rnn_tanh_step(xw_t, h, c, w_hh_t, b_hh):
    return torch.tanh(torch.addmm(xw_t, h, w_hh_t)), None


def _rnn_relu_step(xw_t, h, c, w_hh_t, b_hh):
    return torch.relu(torch.addmm(xw_t, h, w_hh_t)), None


def _lstm_step(xw_t, h, c, w_hh_t, b_hh):
    gates = torch.addmm(xw_t, h, w_hh_t)  # one fused GEMM for i, f, g, o
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_step(xw_t, h, c, w_hh_t, b_hh):
    # b_hn must stay on the recurrent side: r multiplies (W_hn h + b_hn).
    hw = torch.mm(h, w_hh_t) if b_hh is None else torch.addmm(b_hh, h, w_hh_t)
    x_r, x_z, x_n = xw_t.chunk(3, dim=1)
    h_r, h_z, h_n = hw.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return n + z * (h - n), None


_STEPS: Dict[str, Callable] = {"rnn_tanh": _rnn_tanh_step, "rnn_relu": _rnn_relu_step, "lstm": _lstm_step,
                               "gru": _gru_step}


def _gated_layer(cell: str, x: torch.Tensor, h0: torch.Tensor, w: Dict[str, Optional[torch.Tensor]],
                 scan: str = "sequential", truncation: Optional[int] = None,
                 probe: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """A gated linear layer (:attr:`harness.core.cells.CellDef.coefficients` on torch tensors): every gate from one
    input GEMM, then ``h_t = a_t ⊙ h_{t−1} + u_t`` step by step or by a Hillis–Steele scan (⌈log₂ T⌉ rounds of
    whole-tensor ops, out of place so that autograd sees every round). ``probe`` ``(T, B, H)`` enters ``u_t``
    (the total derivative of h_t). Returns ``(y (T, B, H), h_T)``."""
    T, B, I = x.shape
    if w["b_ih"] is None:
        A = torch.mm(x.reshape(T * B, I), w["w_ih"].t())
    else:
        A = torch.addmm(w["b_ih"], x.reshape(T * B, I), w["w_ih"].t())
    a, u, _ = _cells.get(cell).coefficients(A.reshape(T, B, -1), {"lam": w.get("lam")}, torch)
    if probe is not None:
        u = u + probe
    if scan == "parallel":
        if truncation is not None:
            raise InputError("truncation: the parallel scan has no steps to cut between")
        U = torch.cat([(a[0] * h0 + u[0]).unsqueeze(0), u[1:]])  # h0 folded into the first element
        Acc = torch.cat([torch.zeros_like(a[:1]), a[1:]])
        d = 1
        while d < T:
            U = torch.cat([U[:d], Acc[d:] * U[:-d] + U[d:]])
            Acc = torch.cat([Acc[:d], Acc[d:] * Acc[:-d]])
            d *= 2
        return U, U[-1]
    h, hs = h0, []
    # unbind, not a[t]: the backward of T separate a[t] selections writes T full-size (T, B, H) gradients (O(T²));
    # unbind's backward stacks the T step gradients once.
    for t, (a_t, u_t) in enumerate(zip(a.unbind(0), u.unbind(0))):
        if truncation is not None and t > 0 and t % truncation == 0:
            h = h.detach()
        h = a_t * h + u_t
        hs.append(h)
    return torch.stack(hs), h


def _layer_loop(step: Callable, cell: str, x: torch.Tensor, h: torch.Tensor, c: Optional[torch.Tensor],
                w: Dict[str, Optional[torch.Tensor]], truncation: Optional[int] = None,
                keep_cells: bool = False):
    """One layer over a whole sequence with the cell loop.

    Args:
        step: the per-step cell function (eager or compiled).
        x: ``(T, B, I_l)``; h, c: ``(B, H)`` initial state (c only for LSTM).
        w: this layer's ``w_ih, w_hh, b_ih, b_hh`` tensors (biases may be None).
        truncation: k for truncated BPTT: the state entering step t is detached when ``t % k == 0 and t > 0``
            (the same cut points as the NumPy reference).
        keep_cells: also return the list of every c_t (LSTM), for hidden-state gradients.

    Returns ``(hs, h_T, c_T, cs)``: ``hs`` is the list of the T outputs h_1..h_T (graph nodes, not detached).
    """
    T, B, I = x.shape
    # Hoisted input projection: one (T·B, I) x (I, G·H) GEMM for all steps.
    if w["b_ih"] is None:
        xw = torch.mm(x.reshape(T * B, I), w["w_ih"].t())
    else:
        bias = w["b_ih"] if cell == "gru" else w["b_ih"] + w["b_hh"]
        xw = torch.addmm(bias, x.reshape(T * B, I), w["w_ih"].t())
    xw = xw.reshape(T, B, -1)
    w_hh_t = w["w_hh"].t()
    b_hh = w["b_hh"] if cell == "gru" else None
    hs, cs = [], []
    for t, xw_t in enumerate(xw.unbind(0)):  # unbind: one backward for all steps (see _gated_layer)
        if truncation is not None and t > 0 and t % truncation == 0:
            h = h.detach()
            c = None if c is None else c.detach()
        h, c = step(xw_t, h, c, w_hh_t, b_hh)
        hs.append(h)
        if keep_cells:
            cs.append(c)
    return hs, h, c, cs


def _cell_forward(step: Callable, spec: CellSpec, weights: List[Dict[str, Optional[torch.Tensor]]],
                  x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor],
                  truncation: Optional[int] = None, scan: str = "sequential"):
    """All layers with the cell loop (a gated linear cell: :func:`_gated_layer` with ``scan``). Returns
    ``(y (T,B,H), h_T (L,B,H), c_T (L,B,H) or None)``."""
    inp, hT, cT = x, [], []
    if spec.definition.gated_linear:
        for l in range(spec.num_layers):
            inp, h = _gated_layer(spec.cell, inp, h0[l], weights[l], scan, truncation)
            hT.append(h)
        return inp, torch.stack(hT), None
    for l in range(spec.num_layers):
        hs, h, c, _ = _layer_loop(step, spec.cell, inp, h0[l], None if c0 is None else c0[l], weights[l],
                                  truncation)
        inp = torch.stack(hs)
        hT.append(h)
        cT.append(c)
    return inp, torch.stack(hT), (torch.stack(cT) if spec.is_lstm else None)


def _cell_weights(spec: CellSpec, params: Params, device: str,
                  requires_grad: bool) -> List[Dict[str, Optional[torch.Tensor]]]:
    """Canonical Params -> one dict of tensors per layer (same layout: a copy)."""
    return [{n: (None if getattr(lp, n) is None else _tensor(getattr(lp, n), device, requires_grad))
             for n in PARAM_NAMES} for lp in params.layers]


def _cell_param_list(weights: List[Dict[str, Optional[torch.Tensor]]]) -> List[torch.Tensor]:
    """Every present parameter tensor in canonical order (layer by layer, w_ih, w_hh, b_ih, b_hh, lam)."""
    return [w[n] for w in weights for n in PARAM_NAMES if w[n] is not None]


# ---------------------------------------------------------------------------------------------------
# the fused modules
# ---------------------------------------------------------------------------------------------------
def _build_module(spec: CellSpec, params: Params, device: str) -> torch.nn.Module:
    """An nn.RNN/LSTM/GRU on ``device`` holding a copy of ``params`` (same layout and gate order)."""
    dtype = _TORCH_DTYPES[params.dtype.name]
    kw = dict(input_size=spec.input_size, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
              bias=spec.bias, batch_first=False, dtype=dtype, device=device)
    if spec.cell in ("rnn_tanh", "rnn_relu"):
        mod = torch.nn.RNN(nonlinearity=spec.cell[4:], **kw)
    elif spec.cell == "lstm":
        mod = torch.nn.LSTM(**kw)
    else:
        mod = torch.nn.GRU(**kw)
    with torch.no_grad():
        for l, lp in enumerate(params.layers):
            for ours, theirs in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                                 ("b_hh", "bias_hh")):
                a = getattr(lp, ours)
                if a is not None:
                    # copy_ into the existing tensor keeps cuDNN's flat weight buffer intact
                    getattr(mod, f"{theirs}_l{l}").copy_(torch.from_numpy(np.ascontiguousarray(a)))
    return mod


def _module_param_list(spec: CellSpec, mod: torch.nn.Module) -> List[torch.Tensor]:
    """The module's parameters in canonical order (layer by layer, w_ih, w_hh, b_ih, b_hh)."""
    names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if spec.bias else ())
    return [getattr(mod, f"{n}_l{l}") for l in range(spec.num_layers) for n in names]


# ---------------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------------
class _TorchBase(BackendBase):
    """What every torch variant shares: devices, TF32 policy, threads, versions, conversion, hidden_grads."""

    family = "torch"
    framework = "torch"
    devices = ("cpu", "cuda")
    algorithms = ("bptt", "tbptt")
    cells = ("rnn_tanh", "rnn_relu", "lstm", "gru")  # nn.RNN/LSTM/GRU and the hand-written cells below
    #: How a gated linear recurrence is evaluated: ``sequential`` (a step loop) or ``parallel`` (a scan).
    scan = "sequential"

    def peak_memory(self, spec, params, x, dy, d_final_state, algorithm="bptt", truncation=None, **options) -> dict:
        """CUDA: the caching allocator's ``max_memory_allocated`` around one ``vjp``; CPU: the generic VmHWM
        probe (tracemalloc does not see torch's allocator)."""
        if self.device != "cuda":
            out = super().peak_memory(spec, params, x, dy, d_final_state, algorithm, truncation, **options)
            out["scope"] = "Backend.vjp incl. NumPy<->torch conversion"
            return out
        self.check_supported(spec, x.dtype, algorithm)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        g = self.vjp(spec, params, x, None, dy, d_final_state, algorithm=algorithm, truncation=truncation)
        torch.cuda.synchronize()
        del g
        return {"peak_bytes": int(torch.cuda.max_memory_allocated() - base), "method": "cuda_max_allocated",
                "scope": "Backend.vjp incl. NumPy<->torch conversion"}

    def measured_as(self, what: str) -> str:
        # Every variant calls the same torch CTC (implementations.torch.ctc); torch-native's differs on CUDA.
        # nn.* has no gated linear cell: torch and torch-native run torch-cell's step loop for them.
        if what == "gated" and isinstance(self, TorchBackend):
            return "torch-cell"
        return "torch" if what == "ctc" else self.name

    def _prepare_ctc(self, logits, targets, input_lengths, target_lengths, blank):
        from implementations.torch import ctc as torch_ctc
        fn, self._ctc_kernel = torch_ctc.prepare(logits, targets, input_lengths, target_lengths, blank,
                                                 device=self.device, use_cudnn=self._ctc_cudnn)
        return fn

    _ctc_cudnn: Optional[bool] = None  # None: let torch choose cuDNN's CTC where it applies
    _ctc_kernel: str = ""

    def ctc_path(self) -> str:
        return self._ctc_kernel or "torch"

    def ctc_native_report(self, logits, targets, input_lengths, target_lengths, blank=0) -> list:
        """torch's own ``ctc_loss`` before normalisation: the loss of an impossible alignment, NaN gradients
        without ``zero_infinity``, and whether its gradient w.r.t. log-probabilities is really y − γ."""
        from implementations.ctc_checks import check_ctc_inputs, feasible
        from implementations.torch import ctc as torch_ctc
        x, tg, il, tl = check_ctc_inputs(logits, targets, input_lengths, target_lengths, blank)
        ok = feasible(tg, il, tl)
        bad = np.flatnonzero(~ok)
        loss, grad, info = torch_ctc.ctc_native(x, tg, il, tl, blank, device=self.device, use_cudnn=self._ctc_cudnn)
        _, grad_z, _ = torch_ctc.ctc_native(x, tg, il, tl, blank, zero_infinity=True, device=self.device,
                                            use_cudnn=self._ctc_cudnn)
        common = {"path": info["path"]}
        valid = (np.arange(x.shape[0])[:, None] < il[None, :]) & ok[None, :]
        return [
            ("native_impossible_loss", float(loss[bad[0]]) if bad.size else float("nan"), "nats",
             {**common, "note": "loss of an impossible alignment (harness: inf)"}),
            ("native_nan_grad_items", float(len(info["nan_in_grad"])), "count",
             {**common, "impossible_items": int(bad.size),
              "note": "sequences whose gradient holds NaN without zero_infinity (harness: zero gradient)"}),
            ("native_zero_inf_grad_max", float(np.abs(grad_z[:, bad]).max(initial=0.0)), "abs",
             {**common, "note": "max |grad| of impossible items with zero_infinity=True (harness: 0)"}),
            ("native_logprob_grad_row_sum", float(np.abs(info["grad_log_probs_row_sum"][valid]).max()), "abs",
             {**common, "note": "row sum of torch's gradient w.r.t. log_probs: 0 means it returns y - γ "
                                "(a gradient w.r.t. logits), not the true -γ (row sum -1)"}),
        ]

    def __init__(self, device: str = "cpu", allow_tf32: bool = False, **options) -> None:
        """Args:
            device: ``cpu`` or ``cuda``.
            allow_tf32: on CUDA, let float32 GEMMs/cuDNN use TF32 (off by default so that results compare
                with float32 elsewhere; PyTorch's own default for cuDNN is on). Sets torch's global flags.
        """
        super().__init__(device, allow_tf32=allow_tf32, **options)
        self.allow_tf32 = bool(allow_tf32)
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32
            torch.backends.cudnn.allow_tf32 = self.allow_tf32

    # -- identity / environment ---------------------------------------------------------------------
    @classmethod
    def probe(cls, device: str) -> Tuple[bool, str]:
        if device == "cpu":
            return True, ""
        if device == "cuda":
            if not torch.cuda.is_available():
                return False, _NO_CUDA
            return True, ""
        return False, f"unknown device {device!r}; allowed: cpu, cuda"

    def versions(self) -> dict:
        v = {"torch": torch.__version__, "numpy": np.__version__,
             "mkldnn": str(bool(torch.backends.mkldnn.is_available()))}
        if self.device == "cuda":
            v["cuda"] = str(torch.version.cuda)
            v["cudnn"] = str(torch.backends.cudnn.version())
            try:
                v["gpu"] = torch.cuda.get_device_name()
            except Exception:  # pragma: no cover - no device to name
                pass
        return v

    def set_threads(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"n: got {n!r}; allowed: an integer >= 1")
        torch.set_num_threads(int(n))

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    @staticmethod
    def _dtype(x: np.ndarray) -> torch.dtype:
        return _TORCH_DTYPES[x.dtype.name]

    # -- the cell-loop step (overridden by torch-compile) -------------------------------------------
    def _step(self, spec: CellSpec) -> Optional[Callable]:
        return _STEPS.get(spec.cell)  # None for a gated linear cell: it has no step function

    def _gated_hidden_grads(self, spec, weights, x, dh_T):
        """∂L/∂h_t of the last layer by zero probes added to u_t (works for the scan, where no h_t feeds the next)."""
        dev, dt, (T, B, _) = self.device, self._dtype(x), x.shape
        H = spec.hidden_size
        inp = _tensor(x, dev)
        with torch.no_grad():
            for l in range(spec.num_layers - 1):
                inp, _ = _gated_layer(spec.cell, inp, torch.zeros((B, H), dtype=dt, device=dev), weights[l], self.scan)
        probe = torch.zeros((T, B, H), dtype=dt, device=dev, requires_grad=True)
        _, h_T = _gated_layer(spec.cell, inp, torch.zeros((B, H), dtype=dt, device=dev), weights[-1], self.scan,
                              probe=probe)
        (g,) = torch.autograd.grad([h_T], [probe], grad_outputs=[_tensor(dh_T, dev)])
        return _np(g)

    # -- hidden-state gradients: always through the cell loop ---------------------------------------
    def _hidden_grads(self, spec, params, x, dh_T, return_cell):
        dev, dt = self.device, self._dtype(x)
        B = x.shape[1]
        weights = _cell_weights(spec, params, dev, requires_grad=False)
        if spec.definition.gated_linear:
            return self._gated_hidden_grads(spec, weights, x, dh_T)
        # A compiled step fuses c_t and h_t = o*tanh(c_t) into one graph whose c_t *output* tensor feeds only
        # the next step, so autograd w.r.t. that tensor misses the same-step path through h_t (torch-compile
        # returned zeros for dc). Cell-state gradients therefore always use the eager step.
        step = _STEPS[spec.cell] if return_cell else self._step(spec)
        inp = _tensor(x, dev)
        last = spec.num_layers - 1
        H = spec.hidden_size
        with torch.no_grad():  # the lower layers only supply the last layer's input
            for l in range(last):
                c0 = torch.zeros((B, H), dtype=dt, device=dev) if spec.is_lstm else None
                hs, _, _, _ = _layer_loop(step, spec.cell, inp, torch.zeros((B, H), dtype=dt, device=dev), c0,
                                          weights[l])
                inp = torch.stack(hs)
        # The zero initial state requires grad only so that every h_t is a node of the graph.
        h0 = torch.zeros((B, H), dtype=dt, device=dev, requires_grad=True)
        c0 = torch.zeros((B, H), dtype=dt, device=dev, requires_grad=True) if spec.is_lstm else None
        hs, h_T, _, cs = _layer_loop(step, spec.cell, inp, h0, c0, weights[last], keep_cells=True)
        targets = list(hs) + (list(cs) if return_cell else [])
        grads = torch.autograd.grad([h_T], targets, grad_outputs=[_tensor(dh_T, dev)], allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, targets)]
        T = x.shape[0]
        dh = _np(torch.stack(grads[:T]))
        if return_cell:
            return dh, _np(torch.stack(grads[T:]))
        return dh

    def _ctc(self, logits, targets, input_lengths, target_lengths, blank, zero_infinity):
        from implementations.torch import ctc as torch_ctc  # written separately; imported only when CTC is asked for
        kw = dict(blank=blank, zero_infinity=zero_infinity)
        try:
            if "device" in inspect.signature(torch_ctc.ctc).parameters:
                kw["device"] = self.device
        except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
            pass
        if self._ctc_cudnn is not None:
            kw["use_cudnn"] = self._ctc_cudnn
        return torch_ctc.ctc(logits, targets, input_lengths, target_lengths, **kw)


class TorchBackend(_TorchBase):
    """``nn.RNN``/``nn.LSTM``/``nn.GRU``: cuDNN on CUDA, torch's native (oneDNN for float32) kernels on the CPU.

    tBPTT(k) runs the module on chunks of k steps with the state detached between chunks, which cuts the
    recurrent adjoint at the same steps as the NumPy reference.
    """

    variant = "torch"
    _use_cudnn = True
    # nn.* has no gated linear recurrence: those run as the cell loop's step loop (the sequential form)
    cells = _TorchBase.cells + _cells.GATED_LINEAR_CELLS

    def path(self) -> str:
        if self.device == "cpu":
            return "cpu-native"
        return "cudnn" if (self._use_cudnn and torch.backends.cudnn.is_available()) else "native"

    def _ctx(self):
        """The context every module call runs in (cuDNN on or off, TF32 policy kept)."""
        return torch.backends.cudnn.flags(enabled=self._use_cudnn, benchmark=False, deterministic=False,
                                          allow_tf32=self.allow_tf32)

    def _run(self, spec: CellSpec, mod, x_t, h0, c0, truncation: Optional[int] = None):
        """Module forward (optionally chunked for tBPTT). Returns (y, h_T, c_T or None)."""
        T = x_t.shape[0]
        k = T if truncation is None else truncation
        hx = (h0, c0) if spec.is_lstm else h0
        outs = []
        with self._ctx():
            for s in range(0, T, k):
                if s > 0:  # detach between chunks: the adjoint is cut entering the state after step s
                    hx = tuple(a.detach() for a in hx) if spec.is_lstm else hx.detach()
                y, hx = mod(x_t[s:s + k], hx)
                outs.append(y)
        y = outs[0] if len(outs) == 1 else torch.cat(outs)
        return (y, hx[0], hx[1]) if spec.is_lstm else (y, hx, None)

    def _forward(self, spec, params, x, state):
        if spec.definition.gated_linear:
            return TorchCellBackend._forward(self, spec, params, x, state)
        mod = _build_module(spec, params, self.device).eval()
        dt = self._dtype(x)
        with torch.inference_mode():
            h0, c0 = _state_tensors(spec, state, x.shape[1], dt, self.device, False)
            y, h, c = self._run(spec, mod, _tensor(x, self.device), h0, c0)
        return _np(y), _pack_state(spec, h, c)

    def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
        if spec.definition.gated_linear:
            return TorchCellBackend._vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation)
        dev, dt, B = self.device, self._dtype(x), x.shape[1]
        mod = _build_module(spec, params, dev).train()  # cuDNN's backward needs training mode
        plist = _module_param_list(spec, mod)
        x_t = _tensor(x, dev, requires_grad=True)
        h0, c0 = _state_tensors(spec, state, B, dt, dev, requires_grad=True)
        y, h, c = self._run(spec, mod, x_t, h0, c0, truncation if algorithm == "tbptt" else None)
        dh, dc = _cotangent_tensors(spec, d_final_state, B, dt, dev)
        dy_t = torch.zeros_like(y) if dy is None else _tensor(dy, dev)
        outputs, cots = [y, h] + ([c] if c is not None else []), [dy_t, dh] + ([dc] if c is not None else [])
        inputs = plist + [x_t, h0] + ([c0] if c0 is not None else [])
        with self._ctx():
            g = torch.autograd.grad(outputs, inputs, cots, allow_unused=True)
        n = len(plist)
        dx = _np(g[n]) if g[n] is not None else np.zeros_like(x)
        dh0 = _np(g[n + 1]) if g[n + 1] is not None else np.zeros(spec.state_shape(B), x.dtype)
        dstate = dh0
        if spec.is_lstm:
            dc0 = _np(g[n + 2]) if g[n + 2] is not None else np.zeros(spec.state_shape(B), x.dtype)
            dstate = (dh0, dc0)
        return Grads(params=_grads_to_params(spec, g[:n], plist), dx=dx, dstate=dstate)

    def _prepare_forward(self, spec, params, x, state):
        if spec.definition.gated_linear:
            return TorchCellBackend._prepare_forward(self, spec, params, x, state)
        dev, dt = self.device, self._dtype(x)
        mod = _build_module(spec, params, dev).eval()
        x_t = _tensor(x, dev)
        h0, c0 = _state_tensors(spec, state, x.shape[1], dt, dev, False)

        def run():
            with torch.inference_mode():
                out = self._run(spec, mod, x_t, h0, c0)
            self._sync()
            return out
        return run

    def _prepare_train(self, spec, params, x, state, dy, d_final_state):
        """A callable doing forward + ``torch.autograd.grad``; returns ``(*param grads (canonical order), dx)``."""
        if spec.definition.gated_linear:
            return TorchCellBackend._prepare_train(self, spec, params, x, state, dy, d_final_state)
        dev, dt, B = self.device, self._dtype(x), x.shape[1]
        mod = _build_module(spec, params, dev).train()
        plist = _module_param_list(spec, mod)
        x_t = _tensor(x, dev, requires_grad=True)
        h0, c0 = _state_tensors(spec, state, B, dt, dev, False)
        dh, dc = _cotangent_tensors(spec, d_final_state, B, dt, dev)
        dy_t = _tensor(dy, dev)
        inputs = plist + [x_t]

        def run():
            y, h, c = self._run(spec, mod, x_t, h0, c0)
            outputs, cots = [y, h] + ([c] if c is not None else []), [dy_t, dh] + ([dc] if c is not None else [])
            with self._ctx():
                g = torch.autograd.grad(outputs, inputs, cots)
            self._sync()
            return g
        return run


class TorchNativeBackend(TorchBackend):
    """``nn.*`` on CUDA with cuDNN disabled (ATen's native CUDA kernels), for comparison with cuDNN."""

    variant = "torch-native"
    _use_cudnn = False
    _ctc_cudnn = False  # its CTC is torch's native kernel too, never cuDNN's

    def measured_as(self, what: str) -> str:
        # Its memory behaviour is nn.*'s (torch); its CTC (cuDNN off) is its own; its gated cells torch-cell's.
        return {"memory": "torch", "gated": "torch-cell"}.get(what, self.name)

    def __init__(self, device: str = "cuda", allow_tf32: bool = False, **options) -> None:
        ok, reason = self.probe(device)
        if not ok:
            raise InputError(f"device: {self.variant!r} cannot run on {device!r}: {reason}")
        super().__init__(device, allow_tf32=allow_tf32, **options)

    @classmethod
    def probe(cls, device: str) -> Tuple[bool, str]:
        if device == "cpu":
            return False, ("needs CUDA: torch-native is nn.* with cuDNN disabled, a CUDA path "
                           "(on the CPU, 'torch' already runs torch's native kernels)")
        return super().probe(device)

    def path(self) -> str:
        return "native"


class TorchCellBackend(_TorchBase):
    """A Python loop over hand-written cells (torch ops): hoisted input GEMM, one fused gate GEMM per step."""

    variant = "torch-cell"
    sweep = "anchors"  # a Python loop: timed on the anchor shapes, not the whole sweep
    cells = _TorchBase.cells + _cells.GATED_LINEAR_CELLS

    def path(self) -> str:
        return "cell-loop"

    def _forward(self, spec, params, x, state):
        dev, dt = self.device, self._dtype(x)
        with torch.inference_mode():
            weights = _cell_weights(spec, params, dev, requires_grad=False)
            h0, c0 = _state_tensors(spec, state, x.shape[1], dt, dev, False)
            y, h, c = _cell_forward(self._step(spec), spec, weights, _tensor(x, dev), h0, c0, scan=self.scan)
        return _np(y), _pack_state(spec, h, c)

    def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
        dev, dt, B = self.device, self._dtype(x), x.shape[1]
        weights = _cell_weights(spec, params, dev, requires_grad=True)
        plist = _cell_param_list(weights)
        x_t = _tensor(x, dev, requires_grad=True)
        h0, c0 = _state_tensors(spec, state, B, dt, dev, requires_grad=True)
        y, h, c = _cell_forward(self._step(spec), spec, weights, x_t, h0, c0,
                                truncation if algorithm == "tbptt" else None, scan=self.scan)
        dh, dc = _cotangent_tensors(spec, d_final_state, B, dt, dev)
        dy_t = torch.zeros_like(y) if dy is None else _tensor(dy, dev)
        outputs, cots = [y, h] + ([c] if c is not None else []), [dy_t, dh] + ([dc] if c is not None else [])
        inputs = plist + [x_t, h0] + ([c0] if c0 is not None else [])
        g = torch.autograd.grad(outputs, inputs, cots, allow_unused=True)
        n = len(plist)
        zeros_state = np.zeros(spec.state_shape(B), x.dtype)
        dx = _np(g[n]) if g[n] is not None else np.zeros_like(x)
        dh0 = _np(g[n + 1]) if g[n + 1] is not None else zeros_state
        dstate = dh0
        if spec.is_lstm:
            dstate = (dh0, _np(g[n + 2]) if g[n + 2] is not None else zeros_state.copy())
        return Grads(params=_grads_to_params(spec, g[:n], plist), dx=dx, dstate=dstate)

    def _prepare_forward(self, spec, params, x, state):
        dev, dt = self.device, self._dtype(x)
        weights = _cell_weights(spec, params, dev, requires_grad=False)
        x_t = _tensor(x, dev)
        h0, c0 = _state_tensors(spec, state, x.shape[1], dt, dev, False)
        step = self._step(spec)

        def run():
            with torch.inference_mode():
                out = _cell_forward(step, spec, weights, x_t, h0, c0, scan=self.scan)
            self._sync()
            return out
        return run

    def _prepare_train(self, spec, params, x, state, dy, d_final_state):
        """A callable doing forward + ``torch.autograd.grad``; returns ``(*param grads (canonical order), dx)``."""
        dev, dt, B = self.device, self._dtype(x), x.shape[1]
        weights = _cell_weights(spec, params, dev, requires_grad=True)
        plist = _cell_param_list(weights)
        x_t = _tensor(x, dev, requires_grad=True)
        h0, c0 = _state_tensors(spec, state, B, dt, dev, False)
        dh, dc = _cotangent_tensors(spec, d_final_state, B, dt, dev)
        dy_t = _tensor(dy, dev)
        inputs = plist + [x_t]
        step = self._step(spec)

        def run():
            y, h, c = _cell_forward(step, spec, weights, x_t, h0, c0, scan=self.scan)
            outputs, cots = [y, h] + ([c] if c is not None else []), [dy_t, dh] + ([dc] if c is not None else [])
            g = torch.autograd.grad(outputs, inputs, cots)
            self._sync()
            return g
        return run


class TorchPscanBackend(TorchCellBackend):
    """The gated linear cells as a parallel (Hillis–Steele) scan of whole-tensor ops: ⌈log₂ T⌉ rounds instead
    of T dependent steps, T·log₂T multiply-adds instead of T. torch has no stable associative scan of its own
    (``torch._higher_order_ops.associative_scan`` is private), so the scan is written with ``torch.cat``."""

    variant = "torch-pscan"
    scan = "parallel"
    scan_form = "hillis-steele"
    sweep = "gated-linear"
    cells = _cells.GATED_LINEAR_CELLS
    algorithms = ("bptt",)

    def path(self) -> str:
        return "hillis-steele-scan"


class CompileError(Unsupported):
    """torch.compile could not compile the cell here (no C compiler, no triton, an inductor failure).

    A property of the platform, not of one case: ``whole_backend`` tells suites to skip the rest at once."""

    whole_backend = True


class TorchCompileBackend(TorchCellBackend):
    """The cell loop with each step's cell function compiled by ``torch.compile`` (static shapes).

    Compiling the one-step cell (not the unrolled T-step loop) keeps compile time independent of T;
    inductor fuses the gate nonlinearities and the cell update into one kernel per step (and one for the
    backward). The first call of each shape/dtype compiles (seconds); time it apart (the Timer's warm-up).

    Options: ``mode`` (torch.compile's mode, default None), ``compile_backend`` (default ``"inductor"``).
    """

    variant = "torch-compile"
    cells = _TorchBase.cells  # it compiles a cell's step; a gated linear cell has none

    def measured_as(self, what: str) -> str:
        # The compiled cell stores what torch-cell's loop stores; CTC is torch's.
        return {"ctc": "torch", "memory": "torch-cell"}.get(what, self.name)

    def __init__(self, device: str = "cpu", allow_tf32: bool = False, mode: Optional[str] = None,
                 compile_backend: str = "inductor", **options) -> None:
        super().__init__(device, allow_tf32=allow_tf32, mode=mode, compile_backend=compile_backend, **options)
        self.mode = mode
        self.compile_backend = compile_backend
        self._compiled: Dict[str, Callable] = {}
        # Every (shape, dtype, grad-mode) combination is one specialisation; the default limit (8) would
        # silently fall back to eager in a sweep, and an eager fallback must never be timed as "compile".
        import torch._dynamo.config as dynamo_config
        dynamo_config.recompile_limit = max(int(getattr(dynamo_config, "recompile_limit", 8)), 256)

    def path(self) -> str:
        return "compile"

    @classmethod
    def probe(cls, device: str) -> Tuple[bool, str]:
        ok, reason = super().probe(device)
        if not ok:
            return ok, reason
        if not hasattr(torch, "compile"):
            return False, f"torch {torch.__version__} has no torch.compile"
        if device == "cpu":
            # inductor's CPU code generation compiles C++; without a compiler every call would fail.
            if not any(shutil.which(c) for c in ("g++", "c++", "clang++", "cc", "gcc")):
                return False, "torch.compile (inductor) needs a C/C++ compiler on the CPU; none found on PATH"
        else:
            try:
                import triton  # noqa: F401
            except ImportError:
                return False, "torch.compile (inductor) on CUDA needs triton, which is not installed"
        return True, ""

    def _step(self, spec: CellSpec) -> Callable:
        fn = self._compiled.get(spec.cell)
        if fn is not None:
            return fn

        def failed(e: Exception) -> CompileError:
            first = str(e).splitlines()[0] if str(e) else ""
            return CompileError(f"torch.compile failed for cell {spec.cell!r} on {self.device} "
                                f"(backend={self.compile_backend!r}, mode={self.mode!r}): {type(e).__name__}: {first}")
        try:
            compiled = torch.compile(_STEPS[spec.cell], dynamic=False, mode=self.mode,
                                     backend=self.compile_backend, fullgraph=True)
        except Exception as e:  # e.g. an unknown backend or mode
            raise failed(e) from e

        def fn(*args):
            try:
                return compiled(*args)
            except Exception as e:  # compilation happens on the first call of each specialisation
                if type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    raise failed(e) from e
                raise
        self._compiled[spec.cell] = fn
        return fn
