"""A backend that is not ours: registered under the entry-point name ``acme-rnn`` (a dash, no built-in family),
supporting two cells only, with its own CTC. It computes with NumPy through its own generic step loop.

The tests install it by writing an entry point (``rnnbench.backends``) into a throwaway ``.dist-info`` on
``PYTHONPATH``, the way a pip-installed plug-in appears.
"""
from __future__ import annotations

import numpy as np

from implementations.base import BackendBase


class NumpyDelegate(BackendBase):
    """A plug-in whose maths is the NumPy reference's (the tests are about the harness around it)."""

    def _forward(self, spec, params, x, state):
        from implementations.numpy import rnn
        y, final, _ = rnn.forward(spec, params, x, state)
        return y, final

    def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
        from implementations.numpy import rnn
        return rnn.vjp(spec, params, x, state, dy, d_final_state, truncation=truncation)

    def _hidden_grads(self, spec, params, x, dh_T, return_cell):
        from implementations.numpy import rnn
        return rnn.hidden_grads(spec, params, x, dh_T, return_cell=return_cell)


class AcmeRNN(NumpyDelegate):
    """LSTM and tanh RNN only; BPTT and truncated BPTT; CTC through NumPy's log-space recursion."""

    family = "acme"
    variant = "acme-rnn"
    algorithms = ("bptt", "tbptt")
    cells = ("lstm", "rnn_tanh")

    def versions(self) -> dict:
        return {"acme": "0.0.1-test", "numpy": np.__version__}

    def _ctc(self, logits, targets, input_lengths, target_lengths, blank, zero_infinity):
        from implementations.numpy import ctc
        return ctc.ctc_loss_and_grad(logits, targets, input_lengths, target_lengths, blank=blank,
                                     zero_infinity=zero_infinity)


def install_entry_point(directory: str, name: str = "acme-rnn") -> str:
    """Write ``acme_plugin-0.0.1.dist-info`` with an ``rnnbench.backends`` entry point into ``directory``;
    put ``directory`` on ``PYTHONPATH`` (or sys.path) and ``importlib.metadata`` finds it. Returns the name."""
    import os
    info = os.path.join(directory, "acme_plugin-0.0.1.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: acme-plugin\nVersion: 0.0.1\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write(f"[rnnbench.backends]\n{name} = {__name__}:AcmeRNN\n")
    return name


class SwappedGates(AcmeRNN):
    """A subtly wrong plug-in: the LSTM's input and forget gates swapped in the forward pass."""

    variant = "acme-swapped"

    def _forward(self, spec, params, x, state):
        H = spec.hidden_size
        perm = np.r_[H:2 * H, 0:H, 2 * H:4 * H] if spec.cell == "lstm" else np.arange(spec.gates * H)
        swapped = params.map(lambda a: a[perm] if a.shape[0] == spec.gates * H else a)
        return super()._forward(spec, swapped, x, state)
