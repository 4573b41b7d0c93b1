"""What a recurrent network is: :class:`CellSpec`, and the validation of arrays against it.

No heavy imports here: only NumPy. Every backend validates its inputs through
:func:`check_sequence`, :func:`check_state` and friends so that bad input gives the same
clear ``ValueError``/``TypeError`` everywhere, before any computation.

Layout is time-major: ``x`` is ``(T, B, I)``, outputs ``(T, B, H)``, states ``(L, B, H)``
(an LSTM state is a tuple ``(h, c)`` of two such arrays).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np

from harness.core import cells as _cells
from harness.core.errors import InputError, InputTypeError

#: The built-in cells (every cell, plug-ins included: :func:`harness.core.cells.names`).
CELLS = _cells.BUILTIN_CELLS
#: Built-in cell name -> number of gates G (rows of ``w_ih`` are ``G*H``); the definitions are in cells.py.
GATES = {c: _cells.get(c).gates for c in CELLS}
#: Gate names in PyTorch order, for reports and slicing.
GATE_NAMES = {c: _cells.get(c).gate_names for c in CELLS}
DTYPES = ("float32", "float64")

State = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class CellSpec:
    """The architecture of a (stacked, unidirectional) recurrent network.

    Args:
        cell: a registered cell: ``rnn_tanh``, ``rnn_relu``, ``lstm``, ``gru`` or a plug-in's
            (:mod:`harness.core.cells`).
        input_size: I, features per time step of the input.
        hidden_size: H, units per layer (the cell state of an LSTM has size H too).
        num_layers: L, stacked layers; layer ``l > 0`` takes the hidden state of layer ``l-1``.
        bias: whether the layers have the two bias vectors ``b_ih`` and ``b_hh``.
    """

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True

    def __post_init__(self) -> None:
        _cells.get(self.cell)  # InputError naming the known cells
        for name in ("input_size", "hidden_size", "num_layers"):
            check_positive_int(name, getattr(self, name))
        if not isinstance(self.bias, (bool, np.bool_)):
            raise InputTypeError(f"bias: got {self.bias!r}; allowed: True or False")

    @property
    def definition(self) -> "_cells.CellDef":
        """The cell's :class:`~harness.core.cells.CellDef`."""
        return _cells.get(self.cell)

    @property
    def gates(self) -> int:
        """G, the number of gate blocks stacked in the weight matrices."""
        return self.definition.gates

    @property
    def is_lstm(self) -> bool:
        """True when the state is a tuple ``(h, c)`` (the LSTM's structure; any cell with a cell state)."""
        return self.definition.has_cell_state

    def layer_input_size(self, layer: int) -> int:
        """Input features of layer ``layer`` (I for the first, H for the rest)."""
        return self.input_size if layer == 0 else self.hidden_size

    def layer_shapes(self, layer: int) -> dict:
        """Shapes of one layer's canonical parameters (PyTorch layout)."""
        return self.definition.param_shapes(self.layer_input_size(layer), self.hidden_size, self.bias)

    @property
    def num_params(self) -> int:
        """P, the total number of scalar parameters."""
        return sum(int(np.prod(s)) for l in range(self.num_layers) for s in self.layer_shapes(l).values())

    def state_shape(self, batch: int) -> Tuple[int, int, int]:
        return (self.num_layers, batch, self.hidden_size)

    def forward_flops(self, batch: int, seq_len: int) -> float:
        """GEMM FLOPs of one forward pass: ``2·B·(I_l + H)·G·H`` per layer and step."""
        d = self.definition
        return float(sum(d.step_flops(batch, self.layer_input_size(l), self.hidden_size) * seq_len
                         for l in range(self.num_layers)))

    def rtrl_step_flops(self, batch: int) -> float:
        """GEMM FLOPs of one exact-RTRL step: ``2·B·Gm·H·H·Qcum_l`` per layer (the influence update ``J·M``) plus
        ``2·B·Gm·H·I_l·off_l`` for the inter-layer term of layers above the first. ``Qcum_l`` counts the
        parameters and initial-state entries of layers <= l, ``off_l`` those below l, Gm = 2 with a cell state."""
        H = self.hidden_size
        S = 2 if self.is_lstm else 1
        f, cum = 0.0, 0
        for l in range(self.num_layers):
            off = cum
            cum += sum(int(np.prod(s)) for s in self.layer_shapes(l).values()) + S * H
            f += 2.0 * batch * S * H * H * cum + 2.0 * batch * S * H * self.layer_input_size(l) * off
        return f

    def deepbench_flops(self, batch: int, seq_len: int) -> float:
        """DeepBench's convention: the recurrent GEMM only, ``2·G·H²·B·T`` per layer."""
        return float(self.definition.recurrent_step_flops(batch, self.hidden_size) * seq_len * self.num_layers)


ALGORITHMS = ("bptt", "rtrl", "tbptt")


def check_positive_int(name: str, v, what: str = "") -> int:
    """``v`` as an int when it is an integer >= 1 (not a bool); else InputError naming ``name`` (and ``what``)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name}: got {v!r}; allowed: an integer >= 1" + (f" ({what})" if what else ""))
    return int(v)


def check_algorithm_args(algorithm: str, truncation) -> Optional[int]:
    """Validate a gradient algorithm and its truncation: ``tbptt`` needs an integer k >= 1, the others none.
    Returns the truncation as an int (or None)."""
    if algorithm not in ALGORITHMS:
        raise InputError(f"algorithm: got {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
    if algorithm == "tbptt":
        if truncation is None or isinstance(truncation, bool) or not isinstance(truncation, (int, np.integer)) \
                or truncation < 1:
            raise InputError(f"truncation: got {truncation!r}; algorithm='tbptt' needs an integer k >= 1")
        return int(truncation)
    if truncation is not None:
        raise InputError(f"truncation: got {truncation!r}; only meaningful with algorithm='tbptt'")
    return None


def check_dtype(dtype) -> np.dtype:
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise ``TypeError``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise InputTypeError(f"dtype: got {dtype!r}; allowed: {', '.join(DTYPES)}")
    return dt


def _as_float_array(name: str, a, ndim: int) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except Exception as e:  # pragma: no cover - exotic objects
            raise InputTypeError(f"{name}: could not convert {type(a).__name__} to an array ({e})") from None
    if a.dtype.name not in DTYPES:
        raise InputTypeError(f"{name}: got dtype {a.dtype}; allowed: {', '.join(DTYPES)}")
    if a.ndim != ndim:
        raise InputError(f"{name}: got shape {a.shape} (rank {a.ndim}); expected rank {ndim}")
    return a


def check_finite(name: str, a: np.ndarray) -> None:
    """Raise ``ValueError`` naming the first non-finite entry of ``a``."""
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise InputError(f"{name}: non-finite value {a[tuple(bad)]} at index {tuple(int(i) for i in bad)}; "
                         "all entries must be finite")


def check_sequence(spec: CellSpec, x, name: str = "x") -> np.ndarray:
    """Validate an input sequence: float array ``(T, B, I)`` with T, B >= 1, finite."""
    x = _as_float_array(name, x, 3)
    T, B, I = x.shape
    if T < 1 or B < 1:
        raise InputError(f"{name}: got shape {x.shape}; T and B must be >= 1")
    if I != spec.input_size:
        raise InputError(f"{name}: got shape {x.shape}; expected (T, B, {spec.input_size}) for input_size={spec.input_size}")
    check_finite(name, x)
    return x


def check_output_cotangent(spec: CellSpec, dy, T: int, B: int, name: str = "dy") -> np.ndarray:
    """Validate the cotangent of the outputs, ``(T, B, H)``."""
    dy = _as_float_array(name, dy, 3)
    if dy.shape != (T, B, spec.hidden_size):
        raise InputError(f"{name}: got shape {dy.shape}; expected {(T, B, spec.hidden_size)}")
    check_finite(name, dy)
    return dy


def check_state(spec: CellSpec, state, B: int, name: str = "state") -> Optional[State]:
    """Validate a state (``None``, an ``(L, B, H)`` array, or for LSTM a tuple ``(h, c)``)."""
    if state is None:
        return None
    shape = spec.state_shape(B)
    if spec.is_lstm:
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise InputTypeError(f"{name}: an LSTM state must be a tuple (h, c) of two arrays of shape {shape}; "
                            f"got {type(state).__name__}")
        out = []
        for part, a in zip("hc", state):
            a = _as_float_array(f"{name}[{part}]", a, 3)
            if a.shape != shape:
                raise InputError(f"{name}[{part}]: got shape {a.shape}; expected {shape} (num_layers, batch, hidden_size)")
            check_finite(f"{name}[{part}]", a)
            out.append(a)
        return tuple(out)
    if isinstance(state, (tuple, list)):
        raise InputTypeError(f"{name}: a {spec.cell} state is one array of shape {shape}; got a {type(state).__name__}")
    a = _as_float_array(name, state, 3)
    if a.shape != shape:
        raise InputError(f"{name}: got shape {a.shape}; expected {shape} (num_layers, batch, hidden_size)")
    check_finite(name, a)
    return a


def check_hidden_cotangent(spec: CellSpec, dh, B: int, name: str = "dh_T") -> np.ndarray:
    """Validate the cotangent on the last layer's final hidden state, ``(B, H)``."""
    dh = _as_float_array(name, dh, 2)
    if dh.shape != (B, spec.hidden_size):
        raise InputError(f"{name}: got shape {dh.shape}; expected {(B, spec.hidden_size)}")
    check_finite(name, dh)
    return dh


def zero_state(spec: CellSpec, B: int, dtype) -> State:
    z = np.zeros(spec.state_shape(B), dtype=dtype)
    return (z, z.copy()) if spec.is_lstm else z


def cast_state(state: Optional[State], dtype) -> Optional[State]:
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(np.asarray(s, dtype=dtype) for s in state)
    return np.asarray(state, dtype=dtype)
