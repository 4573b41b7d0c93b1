"""The memory suite's theory: what one gradient computation must hold, in bytes, by algorithm.

- ``bptt``: what the reference (``implementations.numpy.rnn``) stores, counted from the cell's definition
  (:meth:`harness.core.cells.CellDef.bptt_stored_elements`): per layer the state parts ``(T+1)·B·H`` each,
  the activated gates ``T·B·G·H`` and the cell's extra per-step vectors (LSTM tanh(c), GRU W_hn h + b_hn);
  during the backward of layer l its gate-sized buffers, the cotangent from the layer above ``T·B·H`` and the
  input gradient ``T·B·I_l``; and the parameter gradients ``P``.
- ``rtrl``: for the built-in cells, :func:`implementations.numpy.rtrl.rtrl_memory` ``["theory"]`` — the influence
  matrices ``B·H·Qcum`` per layer (×2 with a cell state), the per-step Jacobian buffers, the gradient ``P``;
  for any other cell the influence matrices alone, ``|state parts|·B·H·P`` (:meth:`CellDef.rtrl_influence_elements`).
- ``tbptt``: truncated BPTT(k) runs the sequence in chunks of k steps and stores one chunk at a time: BPTT's
  storage at ``T = k`` plus the full ``dx`` ``T·B·I`` and a second gradient buffer ``P``.

For the other backends the same theory stands beside the measured figure: their stored activations differ
from the reference's, and the ratio shows by how much.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from harness.core.errors import InputError
from harness.core.spec import CellSpec

ALGORITHMS = ("bptt", "rtrl", "tbptt")


def bptt_stored_bytes(spec: CellSpec, T: int, B: int, itemsize: int) -> int:
    """Peak bytes of the reference BPTT beyond its inputs (see the module docstring for what is counted)."""
    sizes = [spec.layer_input_size(l) for l in range(spec.num_layers)]
    return int(spec.definition.bptt_stored_elements(B, T, sizes, spec.hidden_size, spec.num_params) * itemsize)


def rtrl_bytes(spec: CellSpec, B: int, dtype: str) -> int:
    """RTRL's bytes: the reference's exact layout for the built-in cells, else the influence matrices."""
    from implementations.numpy.backend import FUSED_CELLS
    if spec.cell in FUSED_CELLS:
        from implementations.numpy.rtrl import rtrl_memory  # NumPy only
        return int(rtrl_memory(spec, B, dtype)["theory"])
    item = np.dtype(dtype).itemsize
    return int((spec.definition.rtrl_influence_elements(B, spec.hidden_size, spec.num_params) + spec.num_params) * item)


def theory_bytes(spec: CellSpec, T: int, B: int, dtype: str, algorithm: str, truncation: Optional[int] = None) -> int:
    """Theoretical peak bytes of one gradient computation (see the module docstring)."""
    item = np.dtype(dtype).itemsize
    if algorithm == "bptt":
        return bptt_stored_bytes(spec, T, B, item)
    if algorithm == "rtrl":
        return rtrl_bytes(spec, B, dtype)
    if algorithm == "tbptt":
        k = min(int(truncation), T)
        return bptt_stored_bytes(spec, k, B, item) + (T - k) * B * spec.input_size * item \
            + spec.num_params * item
    raise InputError(f"algorithm: got {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
