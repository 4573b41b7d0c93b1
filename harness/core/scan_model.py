"""What each form of a gated linear recurrence ``h_t = a_t ⊙ h_{t−1} + u_t`` costs: FLOPs, bytes and depth.

Counted per layer for ``E = B·H`` independent recurrences of length T, beside the gates' input GEMM (the same
for every form: :meth:`harness.core.spec.CellSpec.forward_flops`). One *combine* of two elements
``(a₁, u₁) ∘ (a₂, u₂) = (a₂a₁, a₂u₁ + u₂)`` is 3 FLOPs; one sequential step ``a ⊙ h + u`` is 2.

- ``sequential``: T dependent steps, 2·T·E FLOPs; reads ``a_t, u_t`` and writes ``h_t``: 3·T·E elements. Depth T.
- ``hillis-steele`` (the inclusive scan of torch-pscan and of the NumPy reference's ``parallel_scan``): rounds
  ``d = 1, 2, 4, … < T``; round d combines T − d pairs (3 FLOPs each) and, written out of place as torch does,
  reads ``A[d:], U[:-d], U[d:], A[:-d]`` (4·(T − d)) plus the d untouched elements of each, and writes both
  arrays whole (2·T). FLOPs ``3·E·Σ_d (T − d)`` ≈ 3·T·log₂T·E; depth ⌈log₂ T⌉.
- ``odd-even`` (``jax.lax.associative_scan``): combine neighbouring pairs (T/2 combines), recurse on the T/2
  results, then combine the recursion's outputs into the even elements (T/2 − 1 combines): about 2·T combines in
  all, so 6·T·E FLOPs, each combine reading 4 and writing 2 elements; depth about 2·⌈log₂ T⌉.

These are models of the arithmetic and the traffic to memory (no caches, no fusion): they say how much more
work the parallel forms do, not how fast they run; the throughput suite measures that.
"""
from __future__ import annotations

import math
from typing import Dict

from harness.core.errors import InputError

FORMS = ("sequential", "hillis-steele", "odd-even")


def _odd_even_combines(T: int) -> int:
    """Combines of the odd/even recursion over T elements: ⌊T/2⌋ neighbouring pairs, the recursion on those,
    then ⌈T/2⌉ − 1 even elements (exact for ``lax.associative_scan``'s recursion)."""
    total = 0
    while T >= 2:
        total += T // 2 + (T + 1) // 2 - 1
        T //= 2
    return total


def scan_cost(form: str, seq_len: int, elements: int, itemsize: int) -> Dict[str, float]:
    """``{"flops", "bytes", "depth"}`` of one layer's recurrence over ``seq_len`` steps of ``elements`` (B·H)
    recurrences of ``itemsize``-byte numbers, in ``form`` (one of :data:`FORMS`)."""
    if form not in FORMS:
        raise InputError(f"scan form: got {form!r}; allowed: {', '.join(FORMS)}")
    T, E = int(seq_len), int(elements)
    if T < 1 or E < 1 or itemsize < 1:
        raise InputError(f"scan cost: seq_len, elements and itemsize must be >= 1; got {T}, {E}, {itemsize}")
    if form == "sequential":
        return {"flops": 2.0 * T * E, "bytes": 3.0 * T * E * itemsize, "depth": float(T)}
    if form == "hillis-steele":
        flops = moved = 0.0
        d, rounds = 1, 0
        while d < T:
            flops += 3.0 * (T - d)
            moved += 4.0 * (T - d) + 2.0 * d + 2.0 * T
            d *= 2
            rounds += 1
        return {"flops": flops * E, "bytes": moved * E * itemsize, "depth": float(rounds)}
    c = _odd_even_combines(T)
    return {"flops": 3.0 * c * E, "bytes": 6.0 * c * E * itemsize, "depth": 2.0 * math.ceil(math.log2(T)) if T > 1
            else 0.0}
