"""Canonical parameters to and from other libraries' layouts (plain NumPy dicts, one per layer).

rnnbench's layout (:mod:`harness.core.params`): per layer ``w_ih (G·H, I_l)``, ``w_hh (G·H, H)``,
``b_ih, b_hh (G·H,)``, PyTorch gate order — LSTM ``i, f, g, o``; GRU ``r, z, n`` with
``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``, ``h' = (1 − z) ⊙ n + z ⊙ h``.

=======================  =====================================================================  ===============
layout                   one layer's dict (their gate order)                                    folded biases
=======================  =====================================================================  ===============
flax.LSTMCell            ``{"ii","if","ig","io": {"kernel" (I,H)}, "hi","hf","hg","ho":``        i, f, g, o
flax.OptimizedLSTMCell   ``{"kernel" (H,H), "bias" (H,)}}`` (the same tree for both cells)       (in ``h*.bias``)
flax.GRUCell             ``{"ir","iz","in": {"kernel" (I,H), "bias"}, "hr","hz": {"kernel"},``   r, z
                         ``"hn": {"kernel", "bias"}}``                                          (in ``i*.bias``)
keras.LSTM               ``kernel (I,4H), recurrent_kernel (H,4H), bias (4H,)``; i, f, c, o       i, f, g, o
keras.GRU                reset_after=True: ``kernel (I,3H), recurrent_kernel (H,3H),``          none
                         ``bias (2,3H)`` = [input, recurrent]; z, r, h
onnx.LSTM                ``W (1,4H,I), R (1,4H,H), B (1,8H)`` = [Wb, Rb]; i, o, f, c; attributes   none
onnx.GRU                 ``W (1,3H,I), R (1,3H,H), B (1,6H)``; z, r, h; linear_before_reset=1     none
equinox.LSTMCell         ``weight_ih (4H,I), weight_hh (4H,H), bias (4H,)``; i, f, g, o           i, f, g, o
equinox.GRUCell          ``weight_ih (3H,I), weight_hh (3H,H), bias (3H,)``, ``bias_n (H,)`` = b_hn  r, z
=======================  =====================================================================  ===============

Where a library keeps one bias for the sum ``b_ih + b_hh`` ("folded"): :func:`to_layout` writes the sum,
:func:`from_layout` puts it into ``b_ih`` and zeros into ``b_hh`` (the same function; the split is not
recoverable), and :func:`grad_from_layout` gives the folded bias's gradient to *both* ``b_ih`` and ``b_hh``
(∂b/∂b_ih = ∂b/∂b_hh = 1). Every GRU here keeps ``b_in`` and ``b_hn`` apart, as the n gate needs.

Refused (:class:`~harness.core.errors.InputError`, they are different functions, not re-layouts): Keras
``GRU(reset_after=False)`` and ONNX ``GRU`` with ``linear_before_reset=0`` (ONNX's default) apply the reset
gate *before* the recurrent matmul, ``tanh(W_h x + (r ⊙ h) R_h + b)``; ONNX bidirectional/reverse
directions, non-zero peepholes ``P``, ``input_forget``, ``clip`` and non-default activations. flax's and
equinox's GRUs are the canonical GRU exactly (r, z biases folded), so they convert. The libraries' default
activations (sigmoid gates, tanh) are assumed: the parameters do not say which ones a model uses.

Multi-layer networks are lists of per-layer dicts (layer 0 first); a flax ``{"params": {...}}`` wrapper is
accepted on input. States: :func:`state_to_layout` / :func:`state_from_layout` (flax's LSTM carry is ``(c, h)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from harness.core.errors import InputError, InputTypeError
from harness.core.params import LayerParams, Params
from harness.core.spec import DTYPES, CellSpec, State, check_dtype, check_state

_REASON_GRU_RESET_BEFORE = (
    "it applies the reset gate before the recurrent matmul, n = tanh(W_n x + b_n + (r * h) W_hn^T + b_hn), "
    "while rnnbench's GRU (PyTorch/cuDNN) computes n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): a different "
    "function, not a re-layout of the same weights")


@dataclass(frozen=True)
class Layout:
    """One foreign layout: its cell, gate order (canonical names), folded gates, carry, and converters."""

    name: str
    cell: str
    gate_order: Tuple[str, ...]
    folded: Tuple[str, ...]
    carry: str  # "c,h" | "h,c" | "h" | "onnx"
    note: str
    options: Tuple[str, ...] = ()
    _to: Callable = field(default=None, repr=False, compare=False)
    _from: Callable = field(default=None, repr=False, compare=False)


# -- small helpers -------------------------------------------------------------------------------------------

class _View:
    """Per-gate blocks of one canonical layer; absent biases read as zeros."""

    def __init__(self, spec: CellSpec, lp: LayerParams):
        self.gates, self.H, self.lp, self.bias = spec.definition.gate_names, spec.hidden_size, lp, spec.bias

    def _blk(self, a: Optional[np.ndarray], g: str) -> np.ndarray:
        k = self.gates.index(g)
        if a is None:
            return np.zeros(self.H, dtype=self.lp.w_ih.dtype)
        return a[k * self.H:(k + 1) * self.H]

    def wi(self, g: str) -> np.ndarray:  # (H, I_l)
        return self._blk(self.lp.w_ih, g)

    def wh(self, g: str) -> np.ndarray:  # (H, H)
        return self._blk(self.lp.w_hh, g)

    def bi(self, g: str) -> np.ndarray:  # (H,)
        return self._blk(self.lp.b_ih, g)

    def bh(self, g: str) -> np.ndarray:
        return self._blk(self.lp.b_hh, g)

    def b(self, g: str) -> np.ndarray:
        """The folded bias ``b_ih + b_hh`` of gate ``g``."""
        return self.bi(g) + self.bh(g)

    def cat(self, fn: Callable[[str], np.ndarray], order: Sequence[str]) -> np.ndarray:
        return np.concatenate([fn(g) for g in order], axis=0)


def _split(a: np.ndarray, order: Sequence[str], H: int) -> Dict[str, np.ndarray]:
    """Rows of ``a`` in gate blocks of H, keyed by (canonical) gate name."""
    return {g: a[k * H:(k + 1) * H] for k, g in enumerate(order)}


def _check_keys(d: Any, required: Sequence[str], optional: Sequence[str], where: str) -> Mapping:
    if not isinstance(d, Mapping):
        raise InputTypeError(f"{where}: got {type(d).__name__}; expected a dict with keys {', '.join(required)}")
    missing = [k for k in required if k not in d]
    extra = [k for k in d if k not in required and k not in optional]
    if missing or extra:
        raise InputError(f"{where}: missing {missing} / unexpected {extra}; allowed keys: "
                         f"{', '.join(list(required) + list(optional))}")
    return d


def _arr(d: Mapping, key: str, shape: Tuple[int, ...], where: str, optional: bool = False) -> Optional[np.ndarray]:
    """``d[key]`` as a NumPy float array of ``shape`` (None when ``optional`` and absent or None)."""
    a = d.get(key)
    if a is None:
        if optional:
            return None
        raise InputError(f"{where}.{key}: missing; expected an array of shape {tuple(shape)}")
    a = np.asarray(a)
    if a.dtype.kind != "f":
        raise InputTypeError(f"{where}.{key}: got dtype {a.dtype}; expected a floating-point array")
    if a.shape != tuple(shape):
        raise InputError(f"{where}.{key}: got shape {a.shape}; expected {tuple(shape)}")
    return a


def _parts() -> Dict[str, Dict[str, np.ndarray]]:
    """What a ``_from`` converter returns: canonical per-gate blocks; ``b`` holds folded biases."""
    return {"wi": {}, "wh": {}, "bi": {}, "bh": {}, "b": {}}


# -- flax.linen ------------------------------------------------------------------------------------------------

def _flax_lstm_to(v: _View, H: int, I: int, opts: dict) -> dict:
    d = {f"i{g}": {"kernel": v.wi(g).T.copy()} for g in "ifgo"}
    d.update({f"h{g}": {"kernel": v.wh(g).T.copy(), "bias": v.b(g)} for g in "ifgo"})
    return d


def _flax_lstm_from(d: Mapping, H: int, I: int, opts: dict, where: str, grad: bool) -> dict:
    _check_keys(d, [f"{s}{g}" for s in "ih" for g in "ifgo"], [], where)
    p = _parts()
    for g in "ifgo":
        _check_keys(d[f"i{g}"], ["kernel"], [], f"{where}.i{g}")
        _check_keys(d[f"h{g}"], ["kernel"], ["bias"], f"{where}.h{g}")
        p["wi"][g] = _arr(d[f"i{g}"], "kernel", (I, H), f"{where}.i{g}").T
        p["wh"][g] = _arr(d[f"h{g}"], "kernel", (H, H), f"{where}.h{g}").T
        p["b"][g] = _arr(d[f"h{g}"], "bias", (H,), f"{where}.h{g}", optional=True)
    return p


def _flax_gru_to(v: _View, H: int, I: int, opts: dict) -> dict:
    return {"ir": {"kernel": v.wi("r").T.copy(), "bias": v.b("r")},
            "iz": {"kernel": v.wi("z").T.copy(), "bias": v.b("z")},
            "in": {"kernel": v.wi("n").T.copy(), "bias": v.bi("n").copy()},
            "hr": {"kernel": v.wh("r").T.copy()},
            "hz": {"kernel": v.wh("z").T.copy()},
            "hn": {"kernel": v.wh("n").T.copy(), "bias": v.bh("n").copy()}}


def _flax_gru_from(d: Mapping, H: int, I: int, opts: dict, where: str, grad: bool) -> dict:
    _check_keys(d, ["ir", "iz", "in", "hr", "hz", "hn"], [], where)
    p = _parts()
    for g in "rzn":
        _check_keys(d[f"i{g}"], ["kernel"], ["bias"], f"{where}.i{g}")
        _check_keys(d[f"h{g}"], ["kernel"], ["bias"] if g == "n" else [], f"{where}.h{g}")
        p["wi"][g] = _arr(d[f"i{g}"], "kernel", (I, H), f"{where}.i{g}").T
        p["wh"][g] = _arr(d[f"h{g}"], "kernel", (H, H), f"{where}.h{g}").T
    p["b"]["r"] = _arr(d["ir"], "bias", (H,), f"{where}.ir", optional=True)
    p["b"]["z"] = _arr(d["iz"], "bias", (H,), f"{where}.iz", optional=True)
    p["bi"]["n"] = _arr(d["in"], "bias", (H,), f"{where}.in", optional=True)
    p["bh"]["n"] = _arr(d["hn"], "bias", (H,), f"{where}.hn", optional=True)
    return p


# -- Keras 3 ---------------------------------------------------------------------------------------------------

def _keras_to(order: Tuple[str, ...], folded: bool):
    def to(v: _View, H: int, I: int, opts: dict) -> dict:
        if opts.get("reset_after") is False:
            raise InputError(f"keras.GRU: reset_after=False is refused: {_REASON_GRU_RESET_BEFORE}; "
                             "allowed: reset_after=True (Keras 3's default)")
        d = {"kernel": v.cat(v.wi, order).T.copy(), "recurrent_kernel": v.cat(v.wh, order).T.copy()}
        if v.bias:
            d["bias"] = v.cat(v.b, order) if folded else np.stack([v.cat(v.bi, order), v.cat(v.bh, order)])
        return d
    return to


def _keras_from(order: Tuple[str, ...], folded: bool):
    G = len(order)

    def frm(d: Mapping, H: int, I: int, opts: dict, where: str, grad: bool) -> dict:
        if opts.get("reset_after") is False:
            raise InputError(f"keras.GRU: reset_after=False is refused: {_REASON_GRU_RESET_BEFORE}; "
                             "allowed: reset_after=True (Keras 3's default)")
        _check_keys(d, ["kernel", "recurrent_kernel"], ["bias"], where)
        p = _parts()
        p["wi"] = _split(_arr(d, "kernel", (I, G * H), where).T, order, H)
        p["wh"] = _split(_arr(d, "recurrent_kernel", (H, G * H), where).T, order, H)
        if folded:
            b = _arr(d, "bias", (G * H,), where, optional=True)
            p["b"] = {} if b is None else _split(b, order, H)
        else:
            if d.get("bias") is not None and np.shape(d["bias"]) == (G * H,):
                raise InputError(f"{where}.bias: got shape {(G * H,)}, the layout of reset_after=False, which is "
                                 f"refused: {_REASON_GRU_RESET_BEFORE}; allowed: bias (2, {G * H}) of reset_after=True")
            b = _arr(d, "bias", (2, G * H), where, optional=True)
            if b is not None:
                p["bi"], p["bh"] = _split(b[0], order, H), _split(b[1], order, H)
        return p
    return frm


# -- ONNX ------------------------------------------------------------------------------------------------------

_ONNX_ACTS = {"lstm": ("sigmoid", "tanh", "tanh"), "gru": ("sigmoid", "tanh")}


def _onnx_lbr(cell: str, opts: dict, attrs: Mapping, direction: str) -> None:
    """Refuse ONNX GRU with linear_before_reset=0 (option, else attribute, else ONNX's default 0)."""
    if cell != "gru":
        return
    lbr = opts.get("linear_before_reset")
    if lbr is None:
        lbr = attrs.get("linear_before_reset", 1 if direction == "to" else 0)
    if lbr != 1:
        absent = " (ONNX's default when the attribute is absent)" if "linear_before_reset" not in attrs \
            and opts.get("linear_before_reset") is None else ""
        raise InputError(f"onnx.GRU: linear_before_reset={lbr}{absent} is refused: {_REASON_GRU_RESET_BEFORE}; "
                         "allowed: linear_before_reset=1 (pass linear_before_reset=1 if the node sets it)")


def _onnx_attrs(cell: str, attrs: Any, H: int, where: str) -> Mapping:
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise InputTypeError(f"{where}: got {type(attrs).__name__}; expected a dict of ONNX attributes")
    allowed = {"hidden_size", "direction", "layout", "activations", "clip", "input_forget", "linear_before_reset"}
    if cell == "gru":
        allowed.discard("input_forget")
    else:
        allowed.discard("linear_before_reset")
    extra = sorted(set(attrs) - allowed)
    if extra:
        raise InputError(f"{where}: unsupported attributes {extra}; allowed: {', '.join(sorted(allowed))}")
    checks = [("hidden_size", lambda v: v == H, f"{H} (the spec's hidden_size)"),
              ("direction", lambda v: v == "forward", "'forward' (rnnbench's networks are unidirectional)"),
              ("layout", lambda v: v in (0, 1), "0 or 1"),
              ("activations", lambda v: tuple(str(a).lower() for a in v) == _ONNX_ACTS[cell],
               f"the defaults {_ONNX_ACTS[cell]}"),
              ("clip", lambda v: v is None, "absent (no cell clipping in rnnbench's cells)"),
              ("input_forget", lambda v: v == 0, "0 (coupled input/forget gates are another cell)")]
    for k, ok, allowed_v in checks:
        if k in attrs and not ok(attrs[k]):
            raise InputError(f"{where}.{k}: got {attrs[k]!r}; allowed: {allowed_v}")
    return attrs


def _onnx_to(cell: str, order: Tuple[str, ...]):
    def to(v: _View, H: int, I: int, opts: dict) -> dict:
        _onnx_lbr(cell, opts, {}, "to")
        d = {"W": v.cat(v.wi, order)[None].copy(), "R": v.cat(v.wh, order)[None].copy()}
        if v.bias:
            d["B"] = np.concatenate([v.cat(v.bi, order), v.cat(v.bh, order)])[None]
        d["attributes"] = {"hidden_size": H, **({"linear_before_reset": 1} if cell == "gru" else {})}
        return d
    return to


def _onnx_from(cell: str, order: Tuple[str, ...]):
    G = len(order)

    def frm(d: Mapping, H: int, I: int, opts: dict, where: str, grad: bool) -> dict:
        _check_keys(d, ["W", "R"], ["B", "attributes"] + (["P"] if cell == "lstm" else []), where)
        attrs = _onnx_attrs(cell, d.get("attributes"), H, f"{where}.attributes")
        _onnx_lbr(cell, opts, attrs, "from")
        if np.ndim(d["W"]) == 3 and np.shape(d["W"])[0] != 1:
            raise InputError(f"{where}.W: num_directions={np.shape(d['W'])[0]}; allowed: 1 (forward): rnnbench's "
                             "networks are unidirectional, a bidirectional layer is two networks")
        p = _parts()
        p["wi"] = _split(_arr(d, "W", (1, G * H, I), where)[0], order, H)
        p["wh"] = _split(_arr(d, "R", (1, G * H, H), where)[0], order, H)
        b = _arr(d, "B", (1, 2 * G * H), where, optional=True)
        if b is not None:
            p["bi"], p["bh"] = _split(b[0, :G * H], order, H), _split(b[0, G * H:], order, H)
        peep = _arr(d, "P", (1, 3 * H), where, optional=True)
        if peep is not None and not grad and np.any(peep != 0):
            raise InputError(f"{where}.P: non-zero peephole weights; rnnbench's LSTM has no peepholes "
                             "(a different function); allowed: P absent or all zeros")
        return p
    return frm


# -- equinox ---------------------------------------------------------------------------------------------------

def _eqx_lstm_to(v: _View, H: int, I: int, opts: dict) -> dict:
    return {"weight_ih": v.lp.w_ih.copy(), "weight_hh": v.lp.w_hh.copy(),
            "bias": v.cat(v.b, "ifgo") if v.bias else None}


def _eqx_lstm_from(d: Mapping, H: int, I: int, opts: dict, where: str, grad: bool) -> dict:
    _check_keys(d, ["weight_ih", "weight_hh"], ["bias"], where)
    p = _parts()
    p["wi"] = _split(_arr(d, "weight_ih", (4 * H, I), where), "ifgo", H)
    p["wh"] = _split(_arr(d, "weight_hh", (4 * H, H), where), "ifgo", H)
    b = _arr(d, "bias", (4 * H,), where, optional=True)
    p["b"] = {} if b is None else _split(b, "ifgo", H)
    return p


def _eqx_gru_to(v: _View, H: int, I: int, opts: dict) -> dict:
    if not v.bias:
        return {"weight_ih": v.lp.w_ih.copy(), "weight_hh": v.lp.w_hh.copy(), "bias": None, "bias_n": None}
    return {"weight_ih": v.lp.w_ih.copy(), "weight_hh": v.lp.w_hh.copy(),
            "bias": np.concatenate([v.b("r"), v.b("z"), v.bi("n")]), "bias_n": v.bh("n").copy()}


def _eqx_gru_from(d: Mapping, H: int, I: int, opts: dict, where: str, grad: bool) -> dict:
    _check_keys(d, ["weight_ih", "weight_hh"], ["bias", "bias_n"], where)
    p = _parts()
    p["wi"] = _split(_arr(d, "weight_ih", (3 * H, I), where), "rzn", H)
    p["wh"] = _split(_arr(d, "weight_hh", (3 * H, H), where), "rzn", H)
    b, bn = _arr(d, "bias", (3 * H,), where, optional=True), _arr(d, "bias_n", (H,), where, optional=True)
    if b is not None:
        blk = _split(b, "rzn", H)
        p["b"] = {"r": blk["r"], "z": blk["z"]}
        p["bi"]["n"] = blk["n"]
    if bn is not None:
        p["bh"]["n"] = bn
    return p


# -- the registry ----------------------------------------------------------------------------------------------

_L4, _G3 = ("i", "f", "g", "o"), ("r", "z", "n")
LAYOUTS: Dict[str, Layout] = {lay.name: lay for lay in [
    Layout("flax.LSTMCell", "lstm", _L4, _L4, "c,h", "flax.linen.LSTMCell params; carry (c, h)",
           _to=_flax_lstm_to, _from=_flax_lstm_from),
    Layout("flax.OptimizedLSTMCell", "lstm", _L4, _L4, "c,h",
           "flax.linen.OptimizedLSTMCell params (the same tree as LSTMCell); carry (c, h)",
           _to=_flax_lstm_to, _from=_flax_lstm_from),
    Layout("flax.GRUCell", "gru", _G3, ("r", "z"), "h", "flax.linen.GRUCell params (b_in in 'in', b_hn in 'hn')",
           _to=_flax_gru_to, _from=_flax_gru_from),
    Layout("keras.LSTM", "lstm", _L4, _L4, "h,c", "Keras 3 LSTM weights; gate order i, f, c, o; state [h, c]",
           _to=_keras_to(_L4, True), _from=_keras_from(_L4, True)),
    Layout("keras.GRU", "gru", ("z", "r", "n"), (), "h",
           "Keras 3 GRU(reset_after=True) weights; gate order z, r, h; bias (2, 3H)", options=("reset_after",),
           _to=_keras_to(("z", "r", "n"), False), _from=_keras_from(("z", "r", "n"), False)),
    Layout("onnx.LSTM", "lstm", ("i", "o", "f", "g"), (), "onnx",
           "ONNX LSTM inputs W, R, B (+ attributes); gate order i, o, f, c",
           _to=_onnx_to("lstm", ("i", "o", "f", "g")), _from=_onnx_from("lstm", ("i", "o", "f", "g"))),
    Layout("onnx.GRU", "gru", ("z", "r", "n"), (), "onnx",
           "ONNX GRU inputs W, R, B (+ attributes), linear_before_reset=1; gate order z, r, h",
           options=("linear_before_reset",),
           _to=_onnx_to("gru", ("z", "r", "n")), _from=_onnx_from("gru", ("z", "r", "n"))),
    Layout("equinox.LSTMCell", "lstm", _L4, _L4, "h,c", "equinox.nn.LSTMCell fields; state (h, c)",
           _to=_eqx_lstm_to, _from=_eqx_lstm_from),
    Layout("equinox.GRUCell", "gru", _G3, ("r", "z"), "h", "equinox.nn.GRUCell fields (bias_n = b_hn)",
           _to=_eqx_gru_to, _from=_eqx_gru_from),
]}


def _layout(name: str, spec: CellSpec, options: Mapping) -> Layout:
    if not isinstance(spec, CellSpec):
        raise InputTypeError(f"spec: got {type(spec).__name__}; expected a CellSpec")
    lay = LAYOUTS.get(name) if isinstance(name, str) else None
    if lay is None:
        raise InputError(f"layout: got {name!r}; allowed: {', '.join(LAYOUTS)}")
    if spec.cell != lay.cell:
        raise InputError(f"layout {name!r} is for cell {lay.cell!r}; the spec has cell {spec.cell!r}")
    bad = [k for k in options if k not in lay.options]
    if bad:
        raise InputError(f"{name}: unknown options {bad}; allowed: {', '.join(lay.options) or 'none'}")
    return lay


def _layers(name: str, spec: CellSpec, theirs: Any, what: str) -> List[Mapping]:
    if not isinstance(theirs, (list, tuple)) or len(theirs) != spec.num_layers:
        got = f"{len(theirs)} layers" if isinstance(theirs, (list, tuple)) else type(theirs).__name__
        raise InputError(f"{what}: got {got}; expected a list of {spec.num_layers} per-layer {name} dicts")
    return [d["params"] if isinstance(d, Mapping) and set(d) == {"params"} else d for d in theirs]


# -- the API ---------------------------------------------------------------------------------------------------

def to_layout(name: str, spec: CellSpec, params: Params, **options) -> List[dict]:
    """Canonical ``params`` in layout ``name``: one dict of NumPy arrays per layer (shapes: module docstring).

    Folded biases get ``b_ih + b_hh``; a spec with ``bias=False`` gives zero biases where the library always
    has them (flax) and none elsewhere. ``options``: ``reset_after`` (keras.GRU, True only),
    ``linear_before_reset`` (onnx.GRU, 1 only). Raises InputError for a refused variant or a wrong cell."""
    lay = _layout(name, spec, options)
    params.validate(spec)
    H = spec.hidden_size
    return [lay._to(_View(spec, lp), H, spec.layer_input_size(l), dict(options))
            for l, lp in enumerate(params.layers)]


def _convert(name: str, spec: CellSpec, theirs: Any, dtype, grad: bool, options: Mapping) -> Params:
    lay = _layout(name, spec, options)
    what = "their_grads" if grad else "theirs"
    H, gates = spec.hidden_size, spec.definition.gate_names
    parts = []
    for l, d in enumerate(_layers(name, spec, theirs, what)):
        where = f"{what}[{l}]"
        parts.append(lay._from(d, H, spec.layer_input_size(l), dict(options), where, grad))
    arrays = [a for p in parts for blocks in p.values() for a in blocks.values() if a is not None]
    if dtype is None:
        dt = np.result_type(*arrays)
        if dt.name not in DTYPES:
            raise InputTypeError(f"{what}: arrays of dtype {dt}; pass dtype= one of {', '.join(DTYPES)}")
    else:
        dt = check_dtype(dtype)
    layers = []
    for l, p in enumerate(parts):
        zero = np.zeros(H, dtype=dt)
        bi, bh = [], []
        for g in gates:
            if g in lay.folded:
                f = p["b"].get(g)
                bi.append(f)
                bh.append(f if grad else None)
            else:
                bi.append(p["bi"].get(g))
                bh.append(p["bh"].get(g))
        bi = [zero if a is None else a for a in bi]
        bh = [zero if a is None else a for a in bh]
        b_ih = np.concatenate(bi).astype(dt)
        b_hh = np.concatenate(bh).astype(dt)
        if not spec.bias:
            if not grad and (np.any(b_ih != 0) or np.any(b_hh != 0)):
                big = max(np.abs(b_ih).max(), np.abs(b_hh).max())
                raise InputError(f"{what}[{l}]: non-zero biases (max |b| = {big:.3g}) but the spec has bias=False; "
                                 "allowed: zero biases, or a CellSpec with bias=True")
            b_ih = b_hh = None
        layers.append(LayerParams(
            w_ih=np.ascontiguousarray(np.concatenate([p["wi"][g] for g in gates]), dtype=dt),
            w_hh=np.ascontiguousarray(np.concatenate([p["wh"][g] for g in gates]), dtype=dt),
            b_ih=b_ih, b_hh=b_hh))
    return Params(layers).validate(spec, what)


def from_layout(name: str, spec: CellSpec, theirs: Sequence[Mapping], dtype=None, **options) -> Params:
    """Parameters in layout ``name`` (a list of per-layer dicts; arrays may be JAX arrays) as canonical Params.

    A folded bias goes into ``b_ih``, zeros into ``b_hh`` (the same function). Absent biases read as zeros; with
    ``spec.bias=False`` their biases must be zero. ``dtype``: float32/float64, default their arrays' dtype.
    ``options``: as :func:`to_layout`; ONNX's ``linear_before_reset`` is read from ``theirs[l]["attributes"]``
    when not given, and is 0 (ONNX's default, refused) when neither says."""
    return _convert(name, spec, theirs, dtype, False, options)


def grad_from_layout(name: str, spec: CellSpec, their_grads: Sequence[Mapping], dtype=None, **options) -> Params:
    """Their parameter gradients (same structure as :func:`to_layout`'s output) as canonical gradients.

    The adjoint of :func:`to_layout`: a folded bias's gradient goes to both ``b_ih`` and ``b_hh``; the rest is
    the same re-layout as :func:`from_layout`. Bias gradients are dropped for ``spec.bias=False``."""
    return _convert(name, spec, their_grads, dtype, True, options)


# -- states ----------------------------------------------------------------------------------------------------

def state_to_layout(name: str, spec: CellSpec, state: State) -> List[Any]:
    """A canonical state (``(L, B, H)``, LSTM ``(h, c)``) as the library's per-layer carries.

    flax LSTM ``(c, h)``; Keras LSTM ``[h, c]``; equinox LSTM ``(h, c)`` (each ``(B, H)``; equinox cells are
    unbatched: ``jax.vmap`` over B); GRUs ``h (B, H)``; ONNX ``{"initial_h" (1, B, H)[, "initial_c"]}``."""
    lay = _layout(name, spec, {})
    if state is None or np.ndim(state[0] if isinstance(state, (tuple, list)) else state) != 3:
        raise InputError("state: expected a canonical state, (L, B, H) arrays (LSTM: the tuple (h, c))")
    B = np.shape(state[0] if isinstance(state, (tuple, list)) else state)[1]
    st = check_state(spec, state, B)
    out = []
    for l in range(spec.num_layers):
        h, c = (st[0][l], st[1][l]) if spec.is_lstm else (st[l], None)
        if lay.carry == "onnx":
            out.append({"initial_h": h[None].copy(), **({"initial_c": c[None].copy()} if c is not None else {})})
        elif lay.carry == "c,h":
            out.append((c.copy(), h.copy()))
        elif lay.carry == "h,c":
            out.append([h.copy(), c.copy()] if name.startswith("keras") else (h.copy(), c.copy()))
        else:
            out.append(h.copy())
    return out


def state_from_layout(name: str, spec: CellSpec, carries: Sequence[Any]) -> State:
    """The library's per-layer carries (:func:`state_to_layout`'s form; ONNX also ``Y_h``/``Y_c``) as a canonical
    state. A linear re-arrangement, so it converts a state's gradient as well."""
    lay = _layout(name, spec, {})
    if not isinstance(carries, (list, tuple)) or len(carries) != spec.num_layers:
        raise InputError(f"carries: expected a list of {spec.num_layers} per-layer {name} carries")
    hs, cs = [], []
    for l, cr in enumerate(carries):
        if lay.carry == "onnx":
            hk, ck = ("Y_h", "Y_c") if isinstance(cr, Mapping) and "Y_h" in cr else ("initial_h", "initial_c")
            _check_keys(cr, [hk] + ([ck] if spec.is_lstm else []), [], f"carries[{l}]")
            h, c = np.asarray(cr[hk])[0], (np.asarray(cr[ck])[0] if spec.is_lstm else None)
        elif spec.is_lstm:
            if not isinstance(cr, (list, tuple)) or len(cr) != 2:
                raise InputError(f"carries[{l}]: expected a pair {'(c, h)' if lay.carry == 'c,h' else '(h, c)'}")
            c, h = (cr[0], cr[1]) if lay.carry == "c,h" else (cr[1], cr[0])
        else:
            h, c = cr, None
        hs.append(np.asarray(h))
        cs.append(None if c is None else np.asarray(c))
    try:
        h = np.stack(hs)
        st = (h, np.stack(cs)) if spec.is_lstm else h
    except ValueError as e:
        raise InputError(f"carries: layers' states differ in shape ({e})") from None
    return check_state(spec, st, h.shape[1] if h.ndim == 3 else -1)
