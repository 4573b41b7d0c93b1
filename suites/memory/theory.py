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

The gated linear cells (``mingru``, ``minlstm``, ``rglru``; reference :mod:`implementations.numpy.gated_linear`)
store other arrays than the classic cells, so their counts are here (:func:`gated_bptt_elements`,
:func:`gated_rtrl_elements`), from that module's code: in units of one ``(T, B, H)`` array (``(k, B, H)`` for an
RTRL block of k steps), with G gates and I inputs,

- ``F`` arrays the forward's coefficients leave alive (:data:`GATED_FORWARD`): the pre-activations ``A`` (G of
  them) and the cell's parts with ``a`` and ``u`` — minGRU ``A, z, a, u``; minLSTM ``A, f, i, f+i, a, u``;
  RG-LRU ``A, r, i, a, sqrt(1−a²), i⊙A_u, u``;
- ``V`` arrays alive while the coefficients' vjp concatenates ``dA`` (:data:`GATED_VJP`), the result (G) included:
  minGRU ``dz, dA_z, dA_h`` + 2; minLSTM ``s², w, df, di, dA_f, dA_i, dA_h`` + 3; RG-LRU ``dla, dr, dv, dA_a,
  dA_x, dA_u`` + 3.

BPTT (one layer) peaks either there — ``F`` and the states ``h`` (1), the cotangent ``dy`` (1), ``∂L/∂h_t``
(1), ``h_{t−1}`` (1), ``∂L/∂a`` (1) and ``V``: ``(F + 5 + V)·T·B·H`` — or at the input gradient's GEMM:
``(F + 4 + G)·T·B·H + T·B·I + P``. Truncated BPTT(k) sums the chunks' gradients as they come and writes dx into
one array: BPTT's peak at ``T = k`` plus ``dx`` (``T·B·I``) and the running sum (``P``). Exact RTRL in blocks of
``k = min(T, RTRL_BLOCK)`` steps holds the influence ``M`` (``B·G·H·(I+1)``), the accumulator and the GEMM's
output buffer (``G·H·(I+1)`` each), a few ``(B, H)`` vectors, and one block's buffers at their largest: either
in the block's vjp (``F``, ``h_{t−1}``, the cotangent of ones, ``V``) or in the influence update (``F``,
``h_{t−1}``, ``dA`` (G), the weights ``g, w, e`` (3), the RG-LRU's ``∂h/∂Λ`` (1), the GEMM operand and its
reshaped copy (2G), and ``[x_t, 1]`` (``k·B·(I+1)``)).

For the other backends the same theory stands beside the measured figure: their stored activations differ
from the reference's, and the ratio shows by how much.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from harness.core.errors import InputError
from harness.core.spec import CellSpec, check_positive_int

ALGORITHMS = ("bptt", "rtrl", "tbptt")

#: F: (T, B, H)-sized arrays the gated cells' forward coefficients leave alive (A counts G), see the docstring.
GATED_FORWARD: Dict[str, int] = {"mingru": 5, "minlstm": 8, "rglru": 9}
#: V: (T, B, H)-sized arrays alive at the concatenation of dA in the coefficients' vjp (the result included).
GATED_VJP: Dict[str, int] = {"mingru": 5, "minlstm": 10, "rglru": 9}
#: (B, H) vectors of the RTRL loop: h, ∂h/∂h_0, its accumulator, the RG-LRU's ∂h/∂Λ, the block's two weights.
GATED_RTRL_VECTORS = 6


def _gated(spec: CellSpec) -> str:
    if spec.cell not in GATED_FORWARD:
        raise InputError(f"cell: got {spec.cell!r}; the gated linear counts are for {', '.join(GATED_FORWARD)}")
    return spec.cell


def gated_bptt_elements(spec: CellSpec, T: int, B: int) -> int:
    """Peak elements of the reference BPTT of a gated linear cell beyond its inputs (the module docstring).

    With L layers every layer's forward arrays stay (``u`` only the last's); below the top layer its backward
    also holds the layer above's ``dA`` (G) and gradients."""
    cell = _gated(spec)
    T, B = check_positive_int("seq_len", T), check_positive_int("batch", B)
    H, G, L, P = spec.hidden_size, spec.gates, spec.num_layers, spec.num_params
    F, V = GATED_FORWARD[cell], GATED_VJP[cell]
    # every layer's forward arrays and states stay until the end, except u (in no cache): only the last layer's
    kept = L * (F + 1) - (L - 1)
    p0 = sum(int(np.prod(s)) for s in spec.layer_shapes(0).values())
    upper = (G * T * B * H + P - p0) if L > 1 else 0  # below the top: the layer above's dA and gradients
    at_concat = (kept + 4 + V) * T * B * H + upper
    at_dx = (kept + 3 + G) * T * B * H + T * B * spec.input_size + P
    return int(max(at_concat, at_dx))


def gated_rtrl_elements(spec: CellSpec, T: int, B: int) -> int:
    """Peak elements of :func:`implementations.numpy.gated_linear.rtrl` with ``chunk=RTRL_BLOCK`` (one layer):
    influence, accumulator, GEMM buffer, the loop's vectors and one block of ``min(T, RTRL_BLOCK)`` steps."""
    from implementations.numpy.gated_linear import RTRL_BLOCK
    cell = _gated(spec)
    T, B = check_positive_int("seq_len", T), check_positive_int("batch", B)
    if spec.num_layers != 1:
        raise InputError(f"num_layers: got {spec.num_layers}; exact per-unit RTRL of {cell} is for one layer")
    H, G, I = spec.hidden_size, spec.gates, spec.input_size
    k = min(T, RTRL_BLOCK)
    F, V = GATED_FORWARD[cell], GATED_VJP[cell]
    lam = 1 if cell == "rglru" else 0
    fixed = B * G * H * (I + 1) + 2 * G * H * (I + 1) + GATED_RTRL_VECTORS * B * H
    in_vjp = (F + 2 + V) * k * B * H
    in_update = (F + 1 + G + 3 + lam + 2 * G) * k * B * H + k * B * (I + 1)
    return int(fixed + max(in_vjp, in_update))


def bptt_stored_bytes(spec: CellSpec, T: int, B: int, itemsize: int) -> int:
    """Peak bytes of the reference BPTT beyond its inputs (see the module docstring for what is counted)."""
    if spec.cell in GATED_FORWARD:
        return gated_bptt_elements(spec, T, B) * int(itemsize)
    sizes = [spec.layer_input_size(l) for l in range(spec.num_layers)]
    return int(spec.definition.bptt_stored_elements(B, T, sizes, spec.hidden_size, spec.num_params) * itemsize)


def rtrl_bytes(spec: CellSpec, B: int, dtype: str, T: Optional[int] = None) -> int:
    """RTRL's bytes: the reference's exact layout for the built-in and the gated linear cells (these depend on
    T up to one RTRL block: ``T=None`` counts a full block), else the influence matrices."""
    from implementations.numpy.backend import FUSED_CELLS
    from implementations.numpy.gated_linear import RTRL_BLOCK
    item = np.dtype(dtype).itemsize
    if spec.cell in FUSED_CELLS:
        from implementations.numpy.rtrl import rtrl_memory  # NumPy only
        return int(rtrl_memory(spec, B, dtype)["theory"])
    if spec.cell in GATED_FORWARD:
        return gated_rtrl_elements(spec, RTRL_BLOCK if T is None else T, B) * item
    return int((spec.definition.rtrl_influence_elements(B, spec.hidden_size, spec.num_params) + spec.num_params) * item)


def theory_bytes(spec: CellSpec, T: int, B: int, dtype: str, algorithm: str, truncation: Optional[int] = None) -> int:
    """Theoretical peak bytes of one gradient computation (see the module docstring)."""
    item = np.dtype(dtype).itemsize
    if algorithm == "bptt":
        return bptt_stored_bytes(spec, T, B, item)
    if algorithm == "rtrl":
        return rtrl_bytes(spec, B, dtype, T)
    if algorithm == "tbptt":
        k = min(int(truncation), T)
        if spec.cell in GATED_FORWARD:
            if k == T:
                return bptt_stored_bytes(spec, T, B, item)  # k ≥ T: gated_linear.vjp runs plain BPTT
            # from the second chunk on: one chunk's BPTT, the whole dx it writes into and the running sum
            return bptt_stored_bytes(spec, k, B, item) + (T * B * spec.input_size + spec.num_params) * item
        return bptt_stored_bytes(spec, k, B, item) + (T - k) * B * spec.input_size * item \
            + spec.num_params * item
    raise InputError(f"algorithm: got {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")


def gated_step_costs(spec: CellSpec, B: int, itemsize: int, block: int) -> Dict[str, Dict[str, float]]:
    """Bytes moved and FLOPs done per step (per step of T, per sequence of the batch together) by the gated
    cell's BPTT (``gated_linear.vjp``, dx included), per-step RTRL (``rtrl(chunk=1)``) and block RTRL
    (``rtrl(chunk=block)``): ``{"bptt" | "step" | "block": {"bytes", "flops", "influence_bytes"}}``.

    A model counted from the code, each array pass a read or a write of every element (the memory suite's
    module docstring gives it in words). With ``m = B·G·H·(I+1)`` (the influence M), ``p = G·H·(I+1)``
    (accumulator, GEMM buffer), ``W = G·H·I`` (the weights) and ``s`` the item size:

    - per-step RTRL, per step: M scaled (read + write: 2 m); per sequence of the batch, the outer product into
      the buffer (1), added into M (3), M times the cotangent into the buffer (2), added into the accumulator
      (3): 11 passes of m; the forward GEMM of one step reads all of W; elementwise FLOPs 5 m (scaling, outer
      product, two adds, one multiply) plus the one-step GEMM ``2·B·W``.
    - block RTRL, per block of K steps: per sequence the influence's weight into the buffer (2) and into the
      accumulator (3), M scaled (2), the block's GEMM into the buffer (1) and added into M (3): 11 passes of m,
      plus the accumulator's GEMM term (4 passes of p); W read once: all ÷ K per step. FLOPs per step: the
      forward GEMM ``2·B·W``, the two block GEMMs ``4·B·p`` and the elementwise ``(4 m + p) / K``.
    - both RTRL forms: every block buffer written once and read once,
      ``2·(F + V + 5 + [rglru] + 4G)·B·H`` elements per step (F, V as in :func:`gated_rtrl_elements`; 5: the
      previous states, the ones, g, w, e; 4G: the two GEMM operands and their reshaped copies).
    - BPTT, per step: its stored arrays written once and read once, ``2·(F + 5 + V)·B·H``; x read twice and dx
      written (``3·B·I``); W read three times over all T (negligible); FLOPs the three GEMMs (forward, weight
      gradient, dx) ``6·B·W``.
    """
    cell = _gated(spec)
    B, K = check_positive_int("batch", B), check_positive_int("block", block)
    G, H, I = spec.gates, spec.hidden_size, spec.input_size
    F, V = GATED_FORWARD[cell], GATED_VJP[cell]
    lam = 1 if cell == "rglru" else 0
    m, p, W, s = B * G * H * (I + 1), G * H * (I + 1), G * H * I, int(itemsize)
    buffers = 2 * (F + V + 5 + lam + 4 * G) * B * H
    step = {"bytes": float((11 * m + W + buffers) * s), "flops": float(5 * m + 2 * B * W),
            "influence_bytes": float(m * s)}
    blk = {"bytes": float(((11 * m + 4 * p + W) / K + buffers + B * (I + 1)) * s),
           "flops": float(2 * B * W + 4 * B * p + (4 * m + p) / K), "influence_bytes": float(m * s)}
    bptt = {"bytes": float((2 * (F + 5 + V) * B * H + 3 * B * I) * s), "flops": float(6 * B * W),
            "influence_bytes": 0.0}
    return {"bptt": bptt, "step": step, "block": blk}
