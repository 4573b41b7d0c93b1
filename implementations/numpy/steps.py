"""The NumPy backend's generic engine: any cell given as a step and its vector-Jacobian product.

The built-in cells run fused, hand-optimised code (:mod:`implementations.numpy.rnn`). A cell defined elsewhere
(:func:`harness.core.cells.register`) runs here once its step is registered with :func:`register`: one
function for the step, one for its backward, on one layer's canonical parameters. The engine does the rest —
stacked layers, BPTT, truncated BPTT, ∂L/∂h_t for every t — with the same conventions as the fused code
(time-major, states ``(L, B, H)`` or ``(h, c)``, L = Σ_t <dy_t, y_t> + <d final state, final state>).

A step::

    forward(lp, x_t, state) -> (new_state, cache)
    backward(lp, x_t, state, cache, d_new_state) -> (d_lp, dx_t, d_state)

``lp`` is the layer's :class:`~harness.core.params.LayerParams`; ``x_t`` ``(B, I_l)``; ``state`` a tuple of
``(B, H)`` arrays in the cell's ``state_parts`` order (``new_state[0]`` is the layer's output h_t); ``d_lp``
a dict of gradients by parameter name (missing names count as zero).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from harness.core.errors import InputError, InputTypeError
from harness.core.params import Grads, LayerParams, Params
from harness.core.spec import CellSpec, State, zero_state
from implementations.numpy.rnn import add_layer_grads


@dataclass(frozen=True)
class NumpyStep:
    """One cell's step for the generic engine (see the module docstring for the signatures)."""

    forward: Callable[..., Tuple[Tuple[np.ndarray, ...], Any]]
    backward: Callable[..., Tuple[Dict[str, np.ndarray], np.ndarray, Tuple[np.ndarray, ...]]]


_STEPS: Dict[str, NumpyStep] = {}


def register(cell: str, step: NumpyStep, replace: bool = False) -> None:
    """Give the NumPy backend a kernel for ``cell`` (which must be defined in :mod:`harness.core.cells`)."""
    from harness.core import cells
    cells.get(cell)  # InputError for an undefined cell
    if cell in cells.BUILTIN_CELLS:
        raise InputError(f"cell {cell!r} is built in: the NumPy backend runs its fused code, a step would never be "
                         "used; register your step under a cell of your own")
    if not isinstance(step, NumpyStep):
        raise InputTypeError(f"step: got {type(step).__name__}; expected implementations.numpy.steps.NumpyStep")
    if not (callable(step.forward) and callable(step.backward)):
        raise InputTypeError(f"step for {cell!r}: forward and backward must be callables")
    if cell in _STEPS and not replace and _STEPS[cell] is not step:
        raise InputError(f"cell {cell!r} already has a NumPy step; pass replace=True to redefine it")
    _STEPS[cell] = step


def unregister(cell: str) -> None:
    _STEPS.pop(cell, None)


def names() -> Tuple[str, ...]:
    """Cells with a registered step that are still defined (plug-in modules are loaded first)."""
    from harness.core import cells
    defined = cells.names()
    return tuple(c for c in _STEPS if c in defined)


def get(cell: str) -> NumpyStep:
    if cell not in names():
        raise InputError(f"cell {cell!r} has no NumPy step (registered: {', '.join(_STEPS) or 'none'})")
    return _STEPS[cell]


# -- the engine -------------------------------------------------------------------------------------------

def _split_state(spec: CellSpec, state: Optional[State], B: int, dt) -> List[Tuple[np.ndarray, ...]]:
    """Per layer, the tuple of state parts."""
    if state is None:
        state = zero_state(spec, B, dt)
    parts = state if isinstance(state, tuple) else (state,)
    return [tuple(np.array(p[l], dtype=dt) for p in parts) for l in range(spec.num_layers)]


def _join_state(spec: CellSpec, per_layer: List[Tuple[np.ndarray, ...]]) -> State:
    stacked = tuple(np.stack([s[i] for s in per_layer]) for i in range(len(per_layer[0])))
    return stacked if spec.is_lstm else stacked[0]


def _check_parts(spec: CellSpec, what: str, parts, shapes: List[Tuple[int, ...]], dtype) -> Tuple[np.ndarray, ...]:
    """A step's state-like result: a tuple of one array per state part, each of its shape and dtype."""
    if not isinstance(parts, tuple) or len(parts) != len(shapes):
        raise InputError(f"the NumPy step of {spec.cell!r}: {what} must be a tuple of {len(shapes)} array(s) "
                         f"(state parts {', '.join(spec.definition.state_parts)}); got {type(parts).__name__}"
                         + (f" of {len(parts)}" if isinstance(parts, tuple) else ""))
    for i, (a, shape) in enumerate(zip(parts, shapes)):
        if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype:
            got = f"{a.shape} {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
            raise InputError(f"the NumPy step of {spec.cell!r}: {what}[{i}] must be an array {shape} of {dtype}; "
                             f"got {got}")
    return parts


def _forward(spec: CellSpec, params: Params, x: np.ndarray, state: Optional[State], keep: bool):
    step = get(spec.cell)
    T, B, _ = x.shape
    states = _split_state(spec, state, B, x.dtype)
    inp = x
    caches = []  # per layer: (inputs, states[0..T], step caches)
    finals = []
    for l, lp in enumerate(params.layers):
        s = states[l]
        hs = np.empty((T, B, spec.hidden_size), dtype=x.dtype)
        seq = [s] if keep else None
        cs = [] if keep else None
        shapes = [(B, spec.hidden_size)] * len(s)
        for t in range(T):
            out = step.forward(lp, inp[t], s)
            if not isinstance(out, tuple) or len(out) != 2:
                raise InputError(f"the NumPy step of {spec.cell!r}: forward must return (new_state, cache)")
            s = _check_parts(spec, "forward's new_state", out[0], shapes, x.dtype)
            cache = out[1]
            hs[t] = s[0]
            if keep:
                seq.append(s)
                cs.append(cache)
        finals.append(s)
        if keep:
            caches.append((inp, seq, cs))
        inp = hs
    return inp, _join_state(spec, finals), caches


def forward(spec: CellSpec, params: Params, x: np.ndarray, state: Optional[State] = None) -> Tuple[np.ndarray, State]:
    """``(y (T, B, H), final state)``; inputs must be validated."""
    y, final, _ = _forward(spec, params, x, state, keep=False)
    return y, final


def _zeros_like_layer(lp: LayerParams) -> Dict[str, np.ndarray]:
    return {n: np.zeros_like(a) for n, a in lp.items()}


def _backward(spec: CellSpec, params: Params, caches, dy: Optional[np.ndarray], d_final: List[Tuple[np.ndarray, ...]],
              record: bool = False):
    """Backward through the layers from the top. Returns (per-layer grads, dx, d initial state, recorded)."""
    step = get(spec.cell)
    L = spec.num_layers
    grads: List[Optional[Dict[str, np.ndarray]]] = [None] * L
    d_init: List[Optional[Tuple[np.ndarray, ...]]] = [None] * L
    d_out = dy
    recorded = None
    for l in range(L - 1, -1, -1):
        lp = params.layers[l]
        inp, seq, cs = caches[l]
        T = inp.shape[0]
        acc = _zeros_like_layer(lp)
        dx = np.zeros_like(inp)
        ds = tuple(np.array(a, copy=True) for a in d_final[l])
        rec = [None] * T if (record and l == L - 1) else None
        shapes = [a.shape for a in ds]
        for t in range(T - 1, -1, -1):
            if d_out is not None:
                ds = (ds[0] + d_out[t],) + ds[1:]
            if rec is not None:
                rec[t] = ds
            out = step.backward(lp, inp[t], seq[t], cs[t], ds)
            if not isinstance(out, tuple) or len(out) != 3 or not isinstance(out[0], dict):
                raise InputError(f"the NumPy step of {spec.cell!r}: backward must return (d_params dict, dx_t, d_state)")
            d_lp, dx_t, ds = out
            for n, g in d_lp.items():
                if n not in acc:
                    raise InputError(f"the NumPy step of {spec.cell!r} returned a gradient for {n!r}, which the "
                                     f"layer does not have (it has: {', '.join(acc)})")
                if not isinstance(g, np.ndarray) or g.shape != acc[n].shape:
                    got = g.shape if isinstance(g, np.ndarray) else type(g).__name__
                    raise InputError(f"the NumPy step of {spec.cell!r}: the gradient of {n} must have shape "
                                     f"{acc[n].shape}; got {got}")
                acc[n] += g
            if not isinstance(dx_t, np.ndarray) or dx_t.shape != dx[t].shape:
                got = dx_t.shape if isinstance(dx_t, np.ndarray) else type(dx_t).__name__
                raise InputError(f"the NumPy step of {spec.cell!r}: dx_t must have shape {dx[t].shape}; got {got}")
            dx[t] = dx_t
            ds = _check_parts(spec, "backward's d_state", ds, shapes, inp.dtype)
        grads[l], d_init[l] = acc, ds
        d_out = dx
        if rec is not None:
            recorded = rec
    layer_grads = [LayerParams(**g) for g in grads]
    return layer_grads, d_out, _join_state(spec, d_init), recorded


def vjp(spec: CellSpec, params: Params, x: np.ndarray, state: Optional[State], dy: Optional[np.ndarray],
        d_final_state: Optional[State], truncation: Optional[int] = None) -> Grads:
    """BPTT, or truncated BPTT(k) with the fused code's semantics: chunks ``[0, k), [k, 2k), ...``, each
    backward from a zero adjoint (``d_final_state`` at the last), the state carried forward detached."""
    T, B, _ = x.shape
    dt = x.dtype
    zero_fin = _split_state(spec, None, B, dt)
    d_fin = _split_state(spec, d_final_state, B, dt)
    k = T if truncation is None else min(int(truncation), T)
    dx = np.empty_like(x)
    total: Optional[List[LayerParams]] = None
    dstate = None
    for s in range(0, T, k):
        e = min(T, s + k)
        _, final, caches = _forward(spec, params, x[s:e], state, keep=True)
        grads, dx[s:e], dst, _ = _backward(spec, params, caches, None if dy is None else dy[s:e],
                                           d_fin if e == T else zero_fin)
        if s == 0:
            dstate = dst
        total = add_layer_grads(total, grads)
        state = final
    extra = {"algorithm": "tbptt", "truncation": k} if k < T else {}
    return Grads(params=Params(total), dx=dx, dstate=dstate, extra=extra)


def hidden_grads(spec: CellSpec, params: Params, x: np.ndarray, dh_T: np.ndarray, return_cell: bool = False):
    """∂L/∂h_t of the last layer for every t, L = <dh_T, h_T>, zero initial state (index T−1 is dh_T).

    With ``return_cell``, also the adjoint of the state part c as the step sees it (h and c are separate
    outputs of a step here; the fused LSTM's ``dc`` is the total derivative, through ``h_t = o·tanh(c_t)`` too).
    """
    T, B, _ = x.shape
    _, _, caches = _forward(spec, params, x, None, keep=True)
    d_fin = _split_state(spec, None, B, x.dtype)
    d_fin[-1] = (np.array(dh_T, copy=True),) + d_fin[-1][1:]
    # Only the last layer's adjoints are asked for: its backward alone gives them.
    L = spec.num_layers
    sub = CellSpec(spec.cell, spec.layer_input_size(L - 1), spec.hidden_size, 1, spec.bias)
    _, _, _, rec = _backward(sub, Params([params.layers[L - 1]]), [caches[L - 1]], None, [d_fin[-1]], record=True)
    dh = np.stack([r[0] for r in rec])
    if return_cell:
        return dh, np.stack([r[1] for r in rec])
    return dh
