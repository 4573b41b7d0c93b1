"""The NumPy reference backend: wires :mod:`numpy_rnn` (forward, BPTT, tBPTT) to the common interface.

RTRL and CTC hooks come from their own modules (``numpy_rtrl``, ``numpy_ctc``) and are imported
when first used.
"""
from __future__ import annotations

import numpy as np

from implementations import numpy_rnn
from implementations.base import BackendBase


class NumpyBackend(BackendBase):
    """Hand-written NumPy RNN/LSTM/GRU: the reference every other backend is checked against."""

    family = "numpy"
    variant = "numpy"
    algorithms = ("bptt", "rtrl", "tbptt")
    devices = ("cpu",)

    def versions(self) -> dict:
        v = {"numpy": np.__version__}
        try:
            from threadpoolctl import threadpool_info
            blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
            if blas:
                v["blas"] = f"{blas[0].get('internal_api')} {blas[0].get('version')}"
        except ImportError:
            pass
        return v

    def set_threads(self, n: int) -> None:
        """``n`` threads for BLAS (via threadpoolctl) and for the batch-parallel recurrences."""
        from implementations import batch_parallel
        batch_parallel.set_num_threads(int(n))
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - a dependency
            return
        # BLAS pools can only be limited at run time through threadpoolctl; keep the limiter alive.
        self._limits = threadpool_limits(limits=int(n), user_api="blas")

    def _forward(self, spec, params, x, state):
        y, final, _ = numpy_rnn.forward(spec, params, x, state)
        return y, final

    def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
        if algorithm == "rtrl":
            from implementations import numpy_rtrl
            return numpy_rtrl.vjp(spec, params, x, state, dy, d_final_state)
        return numpy_rnn.vjp(spec, params, x, state, dy, d_final_state, truncation=truncation)

    def _hidden_grads(self, spec, params, x, dh_T, return_cell):
        return numpy_rnn.hidden_grads(spec, params, x, dh_T, return_cell=return_cell)

    def _ctc(self, logits, targets, input_lengths, target_lengths, blank, zero_infinity):
        from implementations import numpy_ctc
        return numpy_ctc.ctc_loss_and_grad(logits, targets, input_lengths, target_lengths, blank=blank,
                                           zero_infinity=zero_infinity)
