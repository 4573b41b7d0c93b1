"""The NumPy reference backend: wires :mod:`implementations.numpy.rnn` (forward, BPTT, tBPTT of the built-in
cells, fused), :mod:`implementations.numpy.gated_linear` (minGRU, minLSTM, RG-LRU) and
:mod:`implementations.numpy.steps` (any other cell with a registered step) to the common interface.

RTRL and CTC hooks come from their own modules (``numpy.rtrl``, ``numpy.ctc``) and are imported when first used.
"""
from __future__ import annotations

import numpy as np

from harness.core.cells import GATED_LINEAR_CELLS
from implementations.base import BackendBase
from implementations.numpy import gated_linear
from implementations.numpy import rnn as numpy_rnn
from implementations.numpy import steps

#: Cells with fused, hand-written forward/BPTT (numpy.rnn) and exact RTRL (numpy.rtrl).
FUSED_CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


class NumpyBackend(BackendBase):
    """Hand-written NumPy RNN/LSTM/GRU: the reference every other backend is checked against."""

    family = "numpy"
    variant = "numpy"
    algorithms = ("bptt", "rtrl", "tbptt")
    devices = ("cpu",)
    framework = "numpy"
    reference = True

    def supported_cells(self):
        """The fused built-ins, the gated linear cells and every cell whose NumPy step is registered."""
        own = FUSED_CELLS + GATED_LINEAR_CELLS
        return own + tuple(c for c in steps.names() if c not in own)

    def supports(self, spec, dtype=None, algorithm: str = "bptt"):
        reason = super().supports(spec, dtype, algorithm)
        if reason is None and spec.cell in GATED_LINEAR_CELLS:
            if algorithm == "rtrl" and spec.num_layers != 1:
                reason = (f"backend {self.name!r} has exact per-unit RTRL for one layer of {spec.cell!r}; got "
                          f"num_layers={spec.num_layers}")
        elif reason is None and algorithm == "rtrl" and spec.cell not in FUSED_CELLS:
            reason = (f"backend {self.name!r} has exact RTRL for {', '.join(FUSED_CELLS + GATED_LINEAR_CELLS)} only; "
                      f"cell {spec.cell!r} runs through its registered step (BPTT and tBPTT)")
        return reason

    def versions(self) -> dict:
        from harness.core.system import blas_info
        v = {"numpy": np.__version__}
        blas = blas_info()
        if blas:
            v["blas"] = f"{blas[0].get('internal_api')} {blas[0].get('version')}"
        return v

    def set_threads(self, n: int) -> None:
        """``n`` threads for BLAS (via threadpoolctl) and for the batch-parallel recurrences."""
        from implementations.numpy import batch_parallel
        batch_parallel.set_num_threads(int(n))
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - a dependency
            return
        # BLAS pools can only be limited at run time through threadpoolctl; keep the limiter alive.
        self._limits = threadpool_limits(limits=int(n), user_api="blas")

    def _forward(self, spec, params, x, state):
        if spec.cell in GATED_LINEAR_CELLS:
            return gated_linear.forward(spec, params, x, state)
        if spec.cell not in FUSED_CELLS:
            return steps.forward(spec, params, x, state)
        y, final, _ = numpy_rnn.forward(spec, params, x, state)
        return y, final

    def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
        if spec.cell in GATED_LINEAR_CELLS:
            g = gated_linear.vjp(spec, params, x, state, dy, d_final_state,
                                 truncation=truncation if algorithm == "tbptt" else None)
            if algorithm == "rtrl":  # dx needs the future: it comes from the BPTT pass, as for the other cells
                pg, dstate = gated_linear.rtrl(spec, params, x, state, dy, d_final_state,
                                               chunk=gated_linear.RTRL_BLOCK)
                g = type(g)(params=pg, dx=g.dx, dstate=dstate, extra={"algorithm": "rtrl", "dx_method": "bptt"})
            return g
        if algorithm == "rtrl":
            from implementations.numpy import rtrl as numpy_rtrl
            return numpy_rtrl.vjp(spec, params, x, state, dy, d_final_state)
        if spec.cell not in FUSED_CELLS:
            return steps.vjp(spec, params, x, state, dy, d_final_state, truncation=truncation)
        return numpy_rnn.vjp(spec, params, x, state, dy, d_final_state, truncation=truncation)

    def _hidden_grads(self, spec, params, x, dh_T, return_cell):
        if spec.cell in GATED_LINEAR_CELLS:
            return gated_linear.hidden_grads(spec, params, x, dh_T)
        if spec.cell not in FUSED_CELLS:
            return steps.hidden_grads(spec, params, x, dh_T, return_cell=return_cell)
        return numpy_rnn.hidden_grads(spec, params, x, dh_T, return_cell=return_cell)

    # NumPy arrays are this backend's own: nothing to convert, the timed calls are the computation itself.
    def _prepare_forward(self, spec, params, x, state):
        return lambda: self._forward(spec, params, x, state)

    def _prepare_train(self, spec, params, x, state, dy, d_final_state):
        return lambda: self._vjp(spec, params, x, state, dy, d_final_state, "bptt", None)

    def peak_memory(self, spec, params, x, dy, d_final_state, algorithm="bptt", truncation=None, impl="backend",
                    **options) -> dict:
        """tracemalloc sees every NumPy buffer: the exact peak. RTRL is measured without ``dx`` (dx would be one
        BPTT pass, ∝ T); ``impl="chunked"`` measures tBPTT through ``numpy.rtrl.tbptt_chunked_vjp`` (the gated
        linear cells' own tBPTT, ``gated_linear.vjp(truncation=k)``, is chunked already: measured as it is)."""
        from harness.core.errors import Unsupported
        from harness.core.peaks import tracemalloc_peak
        self._check(spec, params, x, None)  # validate before the measured region
        self.check_supported(spec, x.dtype, algorithm)
        if impl not in ("backend", "chunked"):
            raise Unsupported(f"backend {self.name!r}: impl={impl!r} is not one of backend, chunked")
        if algorithm == "rtrl" and spec.cell in GATED_LINEAR_CELLS:
            return tracemalloc_peak(lambda: gated_linear.rtrl(spec, params, x, None, dy, d_final_state,
                                                              chunk=gated_linear.RTRL_BLOCK),
                                    "params+dstate (dx not computed)")
        if algorithm == "rtrl":
            from implementations.numpy import rtrl as numpy_rtrl
            return tracemalloc_peak(lambda: numpy_rtrl.vjp(spec, params, x, None, dy, d_final_state, with_dx=False),
                                    "params+dstate (dx not computed)")
        if algorithm == "tbptt" and impl == "chunked" and spec.cell in FUSED_CELLS:
            from implementations.numpy import rtrl as numpy_rtrl
            return tracemalloc_peak(lambda: numpy_rtrl.tbptt_chunked_vjp(spec, params, x, None, dy, d_final_state,
                                                                          truncation), "params+dx+dstate")
        return tracemalloc_peak(lambda: self.vjp(spec, params, x, None, dy, d_final_state, algorithm=algorithm,
                                                 truncation=truncation), "params+dx+dstate")

    def _prepare_ctc(self, logits, targets, input_lengths, target_lengths, blank):
        from implementations.numpy import ctc as numpy_ctc
        return lambda: numpy_ctc.ctc_loss_and_grad(logits, targets, input_lengths, target_lengths, blank=blank,
                                                   check=False)

    def _ctc(self, logits, targets, input_lengths, target_lengths, blank, zero_infinity):
        from implementations.numpy import ctc as numpy_ctc
        return numpy_ctc.ctc_loss_and_grad(logits, targets, input_lengths, target_lengths, blank=blank,
                                           zero_infinity=zero_infinity)
