"""The common backend interface: validation in one place, compute in the subclasses.

A backend subclasses :class:`BackendBase` and implements the ``_forward``/``_vjp``/``_hidden_grads``
(and optionally ``_ctc``) hooks on validated NumPy inputs. The public methods check every argument
first, so every backend rejects bad input with the same message before computing anything.

What a backend can do is *declared* (class attributes) and *asked* (:meth:`BackendBase.supports` and the
optional hooks), never inferred from its name: ``cells``, ``dtypes``, ``algorithms``, ``devices``,
``max_layers``; ``framework`` (whose GEMM ceilings apply); ``reference`` (the one others are checked
against); ``sweep`` (``anchors``: a variant timed on a preset's anchor shapes only); :meth:`measured_as`
(measurements that do not depend on this variant are taken under another backend); the hooks
:meth:`peak_memory` (a fresh-process memory probe, with a generic default for any CPU backend),
:meth:`gemm` (own GEMM ceilings), ``_ctc``, :meth:`prepare_ctc` and :meth:`ctc_native_report`.
An unsupported cell, dtype, algorithm or layer count raises :class:`~harness.core.errors.Unsupported`
with the reason of :meth:`supports`, which every suite records as ``skipped``.

For timing, ``prepare_forward``/``prepare_train`` return zero-argument callables that run one
forward (no gradient) or one forward+backward on data already converted to the backend's own
arrays and device, and return only after the device has finished (synchronised). The Timer calls
those; conversion from NumPy stays outside the timed region.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Optional, Tuple

import numpy as np

from harness.core.errors import InputError, InputTypeError, Unsupported
from harness.core.params import Grads, Params
from harness.core.system import cpu_count  # noqa: F401 - public name of old
from harness.core.spec import (ALGORITHMS, check_algorithm_args,  # noqa: F401 - ALGORITHMS public
                              CellSpec, State, check_hidden_cotangent, check_output_cotangent, check_sequence,
                          check_state)

DEVICES = ("cpu", "cuda")


def check_algorithm(algorithm: str, truncation, offered: Tuple[str, ...], backend: str) -> Optional[int]:
    """Validate ``algorithm``/``truncation``; raise :class:`Unsupported` if ``backend`` lacks it."""
    truncation = check_algorithm_args(algorithm, truncation)
    if algorithm not in offered:
        raise Unsupported(f"backend {backend!r} does not offer algorithm={algorithm!r} "
                          f"(it offers: {', '.join(offered)})")
    return truncation


def _state_dtypes(state) -> list:
    if state is None:
        return []
    if isinstance(state, tuple):
        return [s.dtype for s in state]
    return [state.dtype]


class BackendBase:
    """Base of every backend. Subclasses set ``family``, ``variant``, what they support, and the hooks."""

    #: Backends of one family share a framework and a worker process (e.g. ``torch``, ``torch-cell``).
    family: str = "base"
    variant: str = "base"
    algorithms: Tuple[str, ...] = ("bptt",)
    devices: Tuple[str, ...] = ("cpu",)
    dtypes: Tuple[str, ...] = ("float32", "float64")
    #: Cells this backend has a kernel for; None: every registered cell but the gated linear ones (see
    #: :meth:`supported_cells`).
    cells: Optional[Tuple[str, ...]] = None
    #: Most stacked layers it runs (None: any).
    max_layers: Optional[int] = None
    #: Whose GEMM ceilings measure this backend's efficiency (``numpy``, ``torch``, ``jax``) unless :meth:`gemm`
    #: provides its own; a plug-in computing with NumPy keeps the default.
    framework: Optional[str] = "numpy"
    #: The reference implementation (the NumPy backend): suites run their full analysis grids on it and
    #: check every other backend against it.
    reference: bool = False
    #: ``full``: every shape of a preset; ``anchors``: only the shapes a preset marks for all variants
    #: (a variant whose compile time would dominate a full sweep); ``gated-linear``: only the gated linear cells'
    #: shapes (a variant that runs nothing else, such as a parallel scan).
    sweep: str = "full"
    #: How it runs a gated linear recurrence ``h_t = a_t ⊙ h_{t−1} + u_t`` (cost model:
    #: :mod:`harness.core.scan_model`): ``sequential`` (T dependent steps), ``hillis-steele`` (⌈log₂ T⌉ rounds over
    #: the whole sequence) or ``odd-even`` (the work-efficient recursion of ``lax.associative_scan``).
    scan_form: str = "sequential"

    def __init__(self, device: str = "cpu", **options) -> None:
        if device not in DEVICES:
            raise InputError(f"device: got {device!r}; allowed: {', '.join(DEVICES)}")
        if device not in self.devices:
            raise InputError(f"device: backend {self.variant!r} runs on {', '.join(self.devices)}; got {device!r}")
        self.device = device
        self.options = options

    # -- identity -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The name it was asked for in the registry (e.g. an entry point's), else its ``variant``."""
        return getattr(self, "_registry_name", None) or self.variant

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.variant} on {self.device}>"

    @classmethod
    def probe(cls, device: str) -> Tuple[bool, str]:
        """Whether this backend can run on ``device`` here, and if not, why. Never raises."""
        return (device == "cpu", "" if device == "cpu" else f"{cls.variant} runs on the CPU only")

    def versions(self) -> dict:
        """Package versions that matter for this backend's numbers."""
        return {"numpy": np.__version__}

    def set_threads(self, n: int) -> None:
        """Set the number of intra-op threads this backend uses (default: leave as is)."""

    def path(self) -> str:
        """Which code path runs (e.g. ``cudnn``, ``native``, ``scan``), for the records."""
        return self.variant

    # -- capabilities -------------------------------------------------------------------------------
    def supported_cells(self) -> Tuple[str, ...]:
        """The cells this backend runs: its declared ``cells``, or every registered one but the gated linear cells
        (their layers have no ``w_hh`` and per-unit parameters: a backend runs them only where it says so)."""
        from harness.core import cells as _cells
        if self.cells is not None:
            return tuple(self.cells)
        return _cells.names(gated_linear=False)

    def supports(self, spec: CellSpec, dtype=None, algorithm: str = "bptt") -> Optional[str]:
        """None if this backend runs ``spec`` in ``dtype`` with ``algorithm``; else the reason it does not.

        The same sentence is what every suite and the gate record as the ``skipped`` reason.
        """
        if spec.cell not in self.supported_cells():
            return (f"backend {self.name!r} does not support cell {spec.cell!r} "
                    f"(it supports: {', '.join(self.supported_cells())})")
        if dtype is not None:
            name = np.dtype(dtype).name
            if name not in self.dtypes:
                return f"backend {self.name!r} does not support dtype {name} (it supports: {', '.join(self.dtypes)})"
        if self.max_layers is not None and spec.num_layers > self.max_layers:
            return (f"backend {self.name!r} runs at most {self.max_layers} layer(s); "
                    f"got num_layers={spec.num_layers}")
        if algorithm not in self.algorithms:
            return f"backend {self.name!r} does not offer algorithm={algorithm!r} (it offers: {', '.join(self.algorithms)})"
        return None

    def check_supported(self, spec: CellSpec, dtype=None, algorithm: str = "bptt") -> None:
        """Raise :class:`~harness.core.errors.Unsupported` with :meth:`supports`' reason, if there is one."""
        reason = self.supports(spec, dtype, algorithm)
        if reason:
            raise Unsupported(reason)

    def measured_as(self, what: str) -> str:
        """The backend under whose name measurement ``what`` (``ctc``, ``memory``) of this one is taken.

        A variant whose CTC or memory behaviour is another backend's returns that backend's name; suites then
        measure it once, there. ``gated``: whose code runs its gated linear cells (the throughput suite times
        them once, there). Default: its own name.
        """
        return self.name

    @property
    def prepares_natively(self) -> bool:
        """Whether the timed callables run on data converted once (its own ``_prepare_*`` hooks, or the
        ``convert`` + ``_forward_native``/``_train_native`` pair), not the default that calls ``_forward``/``_vjp``
        on NumPy arrays — converting them inside every timed call."""
        cls = type(self)
        own_prepare = (cls._prepare_forward is not BackendBase._prepare_forward
                       and cls._prepare_train is not BackendBase._prepare_train)
        own_native = (cls._forward_native is not BackendBase._forward_native
                      and cls._train_native is not BackendBase._train_native)
        return own_prepare or own_native

    # -- converting once, for timing ----------------------------------------------------------------
    def convert(self, spec: CellSpec, params: Params, x: np.ndarray, state=None, dy=None, d_final_state=None):
        """The inputs of one call in this backend's own arrays and device (default: as they are). Called once per
        prepared callable, outside the timed region; what it returns is what ``_forward_native`` and
        ``_train_native`` receive."""
        return {"params": params, "x": x, "state": state, "dy": dy, "d_final_state": d_final_state}

    def _forward_native(self, spec: CellSpec, native):
        """One inference forward on ``convert``'s result, returning after the device finished (optional)."""
        raise Unsupported(f"backend {self.name!r} has no _forward_native")

    def _train_native(self, spec: CellSpec, native):
        """One forward + backward (all gradients) on ``convert``'s result, after the device finished (optional)."""
        raise Unsupported(f"backend {self.name!r} has no _train_native")

    @property
    def has_ctc(self) -> bool:
        """Whether this backend implements the ``_ctc`` hook."""
        return type(self)._ctc is not BackendBase._ctc

    def gemm(self, kind: str, shape: Tuple[int, ...], dtype: str):
        """Own GEMM ceilings: ``(fn, sync)`` running ``kind`` (``gemm_square``/``input_gemm`` with shape
        ``(M, K, N)``, ``recurrent`` with ``(T, B, I, H, G·H)``) once, or None to use ``framework``'s."""
        return None

    def peak_memory(self, spec: CellSpec, params: Params, x: np.ndarray, dy: np.ndarray, d_final_state,
                    algorithm: str = "bptt", truncation: Optional[int] = None, **options) -> dict:
        """Peak bytes of one gradient computation, measured in this (fresh) process; called by the memory probe.

        Returns ``{"peak_bytes", "method", "scope"}`` (and optionally ``estimate``, ``reason``, ``seconds``, more
        ``*_bytes``). The default works for any CPU backend: after a one-step warm-up, the process high-water mark
        ``VmHWM`` is reset (``/proc/self/clear_refs``) and read after the run, minus ``VmRSS`` before it — every
        allocator counts, so it is an upper bound of the arrays' peak (``getrusage`` where clear_refs is not
        writable). ``options`` are suite-specific (e.g. ``impl``) and ignored here.
        """
        from harness.core.peaks import vmhwm_peak
        if self.device != "cpu":
            raise Unsupported(f"backend {self.name!r} has no peak-memory probe for device {self.device!r}")
        self.check_supported(spec, x.dtype, algorithm)

        def run(n):
            return self.vjp(spec, params, x[:n], None, dy[:n], d_final_state, algorithm=algorithm,
                            truncation=truncation if (truncation is None or truncation <= n) else n)
        return vmhwm_peak(lambda: run(1), lambda: run(x.shape[0]), scope=f"{self.name}.vjp")

    # -- validation ---------------------------------------------------------------------------------
    def _check(self, spec: CellSpec, params: Params, x, state) -> Tuple[np.ndarray, Optional[State]]:
        if not isinstance(spec, CellSpec):
            raise InputTypeError(f"spec: got {type(spec).__name__}; expected harness.core.spec.CellSpec")
        if not isinstance(params, Params):
            raise InputTypeError(f"params: got {type(params).__name__}; expected harness.core.params.Params")
        params.validate(spec)
        x = check_sequence(spec, x)
        state = check_state(spec, state, x.shape[1])
        for what, dt in [("x", x.dtype)] + [("state", d) for d in _state_dtypes(state)]:
            if dt != params.dtype:
                raise InputTypeError(f"{what}: dtype {dt} differs from the parameters' {params.dtype}; "
                                "convert one of them (all arrays of a call share one dtype)")
        return x, state

    def _check_cotangents(self, spec: CellSpec, x: np.ndarray, dy, d_final_state):
        T, B, _ = x.shape
        if dy is not None:
            dy = check_output_cotangent(spec, dy, T, B)
        d_final_state = check_state(spec, d_final_state, B, name="d_final_state")
        for what, dt in ([("dy", dy.dtype)] if dy is not None else []) + \
                [("d_final_state", d) for d in _state_dtypes(d_final_state)]:
            if dt != x.dtype:
                raise InputTypeError(f"{what}: dtype {dt} differs from x's {x.dtype}")
        return dy, d_final_state

    # -- public interface ---------------------------------------------------------------------------
    def forward(self, spec: CellSpec, params: Params, x, state=None) -> Tuple[np.ndarray, State]:
        """Run the network. Returns ``(y (T, B, H), final_state)`` as NumPy arrays."""
        x, state = self._check(spec, params, x, state)
        self.check_supported(spec, x.dtype)
        return self._forward(spec, params, x, state)

    def vjp(self, spec: CellSpec, params: Params, x, state=None, dy=None, d_final_state=None,
            algorithm: str = "bptt", truncation: Optional[int] = None) -> Grads:
        """Vector-Jacobian product of L = Σ_t <dy_t, y_t> + <dh_T, h_T> (+ <dc_T, c_T>).

        ``dy`` ``(T, B, H)`` and ``d_final_state`` (a state) default to zeros; with neither given L = 0 and
        every gradient is zero, which is almost always a forgotten argument: a ``RuntimeWarning`` says so.
        ``algorithm``: ``bptt``, ``rtrl`` (exact forward-mode) or ``tbptt`` with ``truncation=k``.
        """
        truncation = check_algorithm(algorithm, truncation, self.algorithms, self.variant)
        x, state = self._check(spec, params, x, state)
        self.check_supported(spec, x.dtype, algorithm)
        if dy is None and d_final_state is None:  # after validation: bad input gets its own error first
            warnings.warn("vjp: neither dy nor d_final_state was given, so L = 0 and every gradient is zero; pass "
                          "dy (T, B, H), e.g. np.ones_like(y), and/or d_final_state", RuntimeWarning, stacklevel=2)
        dy, d_final_state = self._check_cotangents(spec, x, dy, d_final_state)
        if algorithm == "rtrl":
            check_rtrl_cost(spec, x.shape[1], x.shape[0])
        return self._vjp(spec, params, x, state, dy, d_final_state, algorithm, truncation)

    def hidden_grads(self, spec: CellSpec, params: Params, x, dh_T, return_cell: bool = False):
        """∂L/∂h_t of the last layer for every t, with L = <dh_T, h_T> and a zero initial state.

        Returns ``(T, B, H)``; index ``T-1`` is h_T itself (equal to ``dh_T``). With ``return_cell``
        (LSTM only), returns ``(dh, dc)``.
        """
        x, _ = self._check(spec, params, x, None)
        self.check_supported(spec, x.dtype)
        dh_T = check_hidden_cotangent(spec, dh_T, x.shape[1])
        if dh_T.dtype != x.dtype:
            raise InputTypeError(f"dh_T: dtype {dh_T.dtype} differs from x's {x.dtype}")
        if return_cell and not spec.is_lstm:
            raise InputError(f"return_cell: only an LSTM has a cell state; got cell={spec.cell!r}")
        return self._hidden_grads(spec, params, x, dh_T, return_cell)

    def ctc(self, logits, targets, input_lengths, target_lengths, blank: int = 0, zero_infinity: bool = False):
        """CTC loss per sequence ``(B,)`` and its gradient w.r.t. the unnormalised logits ``(T, B, C)``."""
        from implementations.ctc_checks import check_ctc_inputs  # light: NumPy only
        if not self.has_ctc:
            raise Unsupported(f"backend {self.name!r} has no CTC (it does not implement _ctc)")
        args = check_ctc_inputs(logits, targets, input_lengths, target_lengths, blank)
        return self._ctc(*args, blank=blank, zero_infinity=zero_infinity)

    def prepare_ctc(self, logits, targets, input_lengths, target_lengths, blank: int = 0) -> Callable[[], object]:
        """A callable computing CTC loss and gradient once on pre-converted data (for timing)."""
        from implementations.ctc_checks import check_ctc_inputs
        if not self.has_ctc:
            raise Unsupported(f"backend {self.name!r} has no CTC (it does not implement _ctc)")
        args = check_ctc_inputs(logits, targets, input_lengths, target_lengths, blank)
        return self._prepare_ctc(*args, blank=blank)

    def ctc_path(self) -> str:
        """Which CTC kernel runs (for the records)."""
        return self.path()

    def ctc_native_report(self, logits, targets, input_lengths, target_lengths, blank: int = 0) -> list:
        """How the framework's own CTC behaves before this backend normalises it (impossible alignments, NaN
        gradients, padded frames): a list of ``(metric, value, unit, extra)``. Default: nothing to report."""
        return []

    # -- timing hooks -------------------------------------------------------------------------------
    def prepare_forward(self, spec: CellSpec, params: Params, x, state=None) -> Callable[[], object]:
        """A callable running one inference forward on pre-converted data (device-synchronised)."""
        x, state = self._check(spec, params, x, state)
        self.check_supported(spec, x.dtype)
        return self._prepare_forward(spec, params, x, state)

    def prepare_train(self, spec: CellSpec, params: Params, x, state=None, dy=None,
                      d_final_state=None) -> Callable[[], object]:
        """A callable running one forward+backward (all gradients) on pre-converted data."""
        x, state = self._check(spec, params, x, state)
        self.check_supported(spec, x.dtype)
        dy, d_final_state = self._check_cotangents(spec, x, dy, d_final_state)
        if dy is None:
            dy = np.zeros((x.shape[0], x.shape[1], spec.hidden_size), dtype=x.dtype)
        return self._prepare_train(spec, params, x, state, dy, d_final_state)

    # -- hooks for subclasses -----------------------------------------------------------------------
    def _forward(self, spec, params, x, state):
        raise Unsupported(f"backend {self.variant!r} has no forward")

    def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
        raise Unsupported(f"backend {self.variant!r} has no vjp")

    def _hidden_grads(self, spec, params, x, dh_T, return_cell):
        """Default for any backend with ``_forward`` and ``_vjp``: for each t, the forward to step t, then a vjp
        of the remaining steps from that state with the cotangent ``dh_T`` at the end — its ``dstate`` is
        ∂L/∂(state after step t). O(T²) work and T+1 calls of each hook: fine for the smoke and quick presets'
        lengths; a backend that can carry probes through its recurrence (as the built-ins do) should override.
        ``return_cell`` is not offered: the total ∂L/∂c_t includes the path through h_t = o_t·tanh(c_t), which only
        the cell's own code can follow."""
        if type(self)._vjp is BackendBase._vjp or type(self)._forward is BackendBase._forward:
            raise Unsupported(f"backend {self.name!r} has no hidden_grads (and no _forward/_vjp to derive it from)")
        if return_cell:
            raise Unsupported(f"backend {self.name!r}: the default hidden_grads gives ∂L/∂h_t only; implement "
                              "_hidden_grads for ∂L/∂c_t")
        T, B, _ = x.shape
        L, H = spec.num_layers, spec.hidden_size
        dfin = np.zeros((L, B, H), x.dtype)
        dfin[-1] = dh_T
        d_final = (dfin, np.zeros_like(dfin)) if spec.is_lstm else dfin
        dh = np.empty((T, B, H), x.dtype)
        dh[T - 1] = dh_T
        for t in range(T - 1):  # the state after step t+1 (index t), then steps t+1 .. T-1 from it
            _, s = self._forward(spec, params, x[:t + 1], None)
            g = self._vjp(spec, params, x[t + 1:], s, None, d_final, "bptt", None)
            dh[t] = np.asarray(g.dstate[0] if spec.is_lstm else g.dstate)[-1]
        return dh

    def _ctc(self, logits, targets, input_lengths, target_lengths, blank, zero_infinity):
        raise Unsupported(f"backend {self.variant!r} has no ctc")

    def _prepare_ctc(self, logits, targets, input_lengths, target_lengths, blank):
        return lambda: self._ctc(logits, targets, input_lengths, target_lengths, blank=blank, zero_infinity=False)

    def _prepare_forward(self, spec, params, x, state):
        if type(self)._forward_native is not BackendBase._forward_native:
            native = self.convert(spec, params, x, state)
            return lambda: self._forward_native(spec, native)
        return lambda: self._forward(spec, params, x, state)  # converts inside every call (said in the rows)

    def _prepare_train(self, spec, params, x, state, dy, d_final_state):
        if type(self)._train_native is not BackendBase._train_native:
            native = self.convert(spec, params, x, state, dy, d_final_state)
            return lambda: self._train_native(spec, native)
        return lambda: self._vjp(spec, params, x, state, dy, d_final_state, "bptt", None)


#: Exact RTRL costs O(H^4) work per step: a request above this many GEMM FLOPs (about half an hour at 50 GFLOP/s)
#: is refused by every backend before it starts, instead of running for hours. Raise it here to run one anyway.
RTRL_MAX_FLOPS = 1e14


def check_rtrl_cost(spec: CellSpec, batch: int, seq_len: int) -> None:
    """InputError when exact RTRL of ``spec`` over ``seq_len`` steps needs more than :data:`RTRL_MAX_FLOPS`
    (the influence-matrix update's GEMM FLOPs, :meth:`~harness.core.spec.CellSpec.rtrl_step_flops` × T)."""
    flops = spec.rtrl_step_flops(batch) * seq_len
    if flops > RTRL_MAX_FLOPS:
        raise InputError(f"RTRL for {spec} with batch={batch}, T={seq_len} needs about {flops:.2g} FLOPs "
                         f"(O(H^4) per step), more than the limit of {RTRL_MAX_FLOPS:.0e} (hours on a CPU); use "
                         "a smaller hidden_size, batch or T, or algorithm='bptt' (the same gradient); the limit is "
                         "implementations.base.RTRL_MAX_FLOPS")
