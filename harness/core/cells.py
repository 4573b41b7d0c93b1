"""Every recurrent cell defined once: its gates, parameters, state, FLOP count, memory theory and the facts the
gradient theory needs. Backends provide the compute (a step or a fused kernel per cell) and say which cells
they support; suites enumerate :func:`names` and ask the definition, never a table of their own.

Adding a cell: :func:`register` a :class:`CellDef` (here for a built-in, or from a plug-in module), and give
each backend that should run it a kernel (for the NumPy backend: ``implementations.numpy.steps.register``).
Plug-in cells are found in modules named by the entry-point group ``rnnbench.cells`` or by the environment
variable ``RNNBENCH_PLUGINS`` (comma-separated module names; it reaches every worker process, since they
inherit the environment). Both are imported the first time a cell name is looked up.

Canonical parameters of a layer ``l`` follow PyTorch's layout: ``w_ih (G·H, I_l)``, ``w_hh (G·H, H)``,
``b_ih (G·H,)``, ``b_hh (G·H,)``, gate blocks stacked in :attr:`CellDef.gate_names` order.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from harness.core.errors import InputError

ENTRY_POINT_GROUP = "rnnbench.cells"
PLUGINS_ENV = "RNNBENCH_PLUGINS"
ACTIVATIONS = ("tanh", "relu", "identity")


@dataclass(frozen=True)
class CellDef:
    """What a cell is, independent of any implementation.

    Attributes:
        name: the ``CellSpec.cell`` string.
        gate_names: the gate blocks of the weight matrices, in canonical order (G = their number).
        state_parts: ``("h",)``, or ``("h", "c")`` for a cell with a separate cell state (a state is then the
            tuple ``(h, c)``, each ``(L, B, H)``).
        activation: vanilla recurrences ``h' = f(W_ih x + b_ih + W_hh h + b_hh)``: f, one of
            :data:`ACTIVATIONS`; the gradient theory takes f'(a) from h and the bound γ = sup|f'| from it.
        bias_gate: gated cells: the gate whose bias ``init_params(gate_bias=...)`` offsets; it must be a
            sigmoid of ``W_i x + b_i + W_h h + b_h`` (block ``gate_names.index(bias_gate)``) and carry the direct
            path of the gradient (``∂c_t/∂c_{t−1} = f`` for the LSTM, the ``z ⊙ h`` term of the GRU).
        bias_gate_role: what the reports call that gate (``forget``, ``update``).
        bptt_extra_per_step: H-vectors per step and layer that the reference BPTT stores besides the state
            parts and the G activated gates (LSTM: tanh(c); GRU: W_hn h + b_hn).
        bptt_backward_gate_buffers: gate-sized ``(T, B, G·H)`` buffers the reference backward allocates.
        description: one line for ``rnnbench list`` and the docs.
        gated_linear: a gated linear recurrence ``h_t = a_t ⊙ h_{t−1} + u_t`` whose ``(a_t, u_t)`` depend on the
            input only (minGRU, minLSTM, RG-LRU): no ``w_hh``/``b_hh``, ∂h_t/∂h_{t−1} = diag(a_t) exactly, the
            recurrence is an associative scan, and exact RTRL is per unit (O(B·P)).
        unit_params: per-unit parameter vectors ``(H,)`` of each layer beyond the weights and biases, in order
            (the RG-LRU's ``lam``).
        unit_param_init: ``f(rng, H) -> {name: (H,) array}`` drawing :attr:`unit_params` for the default init
            (after the weights, from the same generator).
        coefficients: gated linear cells: ``f(A, unit, xp) -> (a, u, parts)``, the ``a_t`` and ``u_t`` of
            ``h_t = a_t ⊙ h_{t−1} + u_t`` from the pre-activations ``A = x W_ihᵀ + b_ih`` ``(..., G·H)`` and the
            unit parameters (a dict), for any NumPy-like array module ``xp`` (``numpy``, ``jax.numpy``,
            ``torch`` through its NumPy-named functions); ``parts`` are the intermediates a hand-written
            backward reuses. The one definition of the cell's maths: every backend calls it.
    """

    name: str
    gate_names: Tuple[str, ...]
    state_parts: Tuple[str, ...] = ("h",)
    activation: Optional[str] = None
    bias_gate: Optional[str] = None
    bias_gate_role: Optional[str] = None
    bptt_extra_per_step: int = 0
    bptt_backward_gate_buffers: int = 1
    description: str = ""
    gated_linear: bool = False
    unit_params: Tuple[str, ...] = ()
    unit_param_init: Optional[Callable] = field(default=None, compare=False, repr=False)
    coefficients: Optional[Callable] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise InputError(f"CellDef.name: got {self.name!r}; allowed: an identifier such as 'my_cell'")
        g = self.gate_names
        if not isinstance(g, tuple) or not g or not all(isinstance(n, str) and n.isidentifier() for n in g) \
                or len(set(g)) != len(g):
            raise InputError(f"CellDef {self.name!r}: gate_names: got {g!r}; allowed: a tuple of distinct "
                             "identifiers, one per gate block, e.g. ('i', 'f', 'g', 'o')")
        if self.activation is not None and self.bias_gate is not None:
            raise InputError(f"CellDef {self.name!r}: a cell is vanilla (activation) or gated (bias_gate), not both")
        for f in ("bptt_extra_per_step", "bptt_backward_gate_buffers"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"CellDef {self.name!r}: {f}: got {v!r}; allowed: an integer >= 0")
        if self.state_parts not in (("h",), ("h", "c")):
            raise InputError(f"CellDef {self.name!r}: state_parts: got {self.state_parts!r}; allowed: ('h',), ('h', 'c')")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise InputError(f"CellDef {self.name!r}: activation: got {self.activation!r}; "
                             f"allowed: {', '.join(ACTIVATIONS)} or None")
        if self.bias_gate is not None and self.bias_gate not in self.gate_names:
            raise InputError(f"CellDef {self.name!r}: bias_gate {self.bias_gate!r} is not one of its gates "
                             f"{self.gate_names}")
        u = self.unit_params
        if not isinstance(u, tuple) or not all(isinstance(n, str) and n.isidentifier() for n in u) \
                or len(set(u)) != len(u) or set(u) & {"w_ih", "w_hh", "b_ih", "b_hh"}:
            raise InputError(f"CellDef {self.name!r}: unit_params: got {u!r}; allowed: a tuple of distinct "
                             "identifiers other than w_ih, w_hh, b_ih, b_hh, e.g. ('lam',)")
        if u and (self.unit_param_init is None or not callable(self.unit_param_init)):
            raise InputError(f"CellDef {self.name!r}: unit_params {u} need a unit_param_init(rng, H) -> dict")
        if self.gated_linear and (self.coefficients is None or not callable(self.coefficients)):
            raise InputError(f"CellDef {self.name!r}: a gated linear cell needs coefficients(A, unit, xp) -> "
                             "(a, u, parts)")
        if self.gated_linear and (self.activation is not None or self.bias_gate is not None
                                  or self.has_cell_state):
            raise InputError(f"CellDef {self.name!r}: a gated linear cell has one state part and neither an "
                             "activation nor a bias gate")

    # -- structure -------------------------------------------------------------------------------------
    @property
    def gates(self) -> int:
        """G, the number of gate blocks stacked in the weight matrices."""
        return len(self.gate_names)

    @property
    def has_cell_state(self) -> bool:
        return len(self.state_parts) == 2

    @property
    def is_gated(self) -> bool:
        """Whether the gradient theory follows a gate's direct path (else the vanilla σ·f' theory)."""
        return self.bias_gate is not None

    def bias_gate_block(self) -> Optional[int]:
        """Index of :attr:`bias_gate` among the gate blocks (rows ``index·H:(index+1)·H``), or None."""
        return None if self.bias_gate is None else self.gate_names.index(self.bias_gate)

    def param_shapes(self, input_size: int, hidden_size: int, bias: bool = True) -> Dict[str, Tuple[int, ...]]:
        """Shapes of one layer's canonical parameters (input ``input_size``, ``hidden_size`` units), in canonical
        order: ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` (a gated linear cell has no ``w_hh``/``b_hh``), then the
        :attr:`unit_params`."""
        G, H = self.gates, hidden_size
        shapes: Dict[str, Tuple[int, ...]] = {"w_ih": (G * H, input_size)}
        if not self.gated_linear:
            shapes["w_hh"] = (G * H, H)
        if bias:
            shapes["b_ih"] = (G * H,)
            if not self.gated_linear:
                shapes["b_hh"] = (G * H,)
        for n in self.unit_params:
            shapes[n] = (H,)
        return shapes

    # -- counts ----------------------------------------------------------------------------------------
    def step_flops(self, batch: int, input_size: int, hidden_size: int) -> float:
        """GEMM FLOPs of one layer step: ``2·B·(I_l + H)·G·H``; ``2·B·I_l·G·H`` for a gated linear cell (no
        recurrent GEMM). Elementwise work is not counted."""
        rec = 0 if self.gated_linear else hidden_size
        return float(2 * batch * (input_size + rec) * self.gates * hidden_size)

    def recurrent_step_flops(self, batch: int, hidden_size: int) -> float:
        """DeepBench's convention: the recurrent GEMM of one step only, ``2·G·H²·B`` (0 without one)."""
        if self.gated_linear:
            return 0.0
        return float(2 * self.gates * hidden_size * hidden_size * batch)

    def fprime_from_output(self, h: np.ndarray) -> np.ndarray:
        """f'(a_t) from the step's output ``h_t = f(a_t)`` (vanilla cells): tanh 1 − h², relu [h > 0], identity 1."""
        if self.activation is None:
            raise InputError(f"cell {self.name!r} is not a vanilla recurrence (no activation f)")
        h = np.asarray(h, dtype=np.float64)
        if self.activation == "tanh":
            return 1.0 - h * h
        if self.activation == "relu":
            return (h > 0).astype(np.float64)
        return np.ones_like(h)

    @property
    def fprime_bound(self) -> Optional[float]:
        """γ = sup |f'| of the activation (Pascanu et al.'s conditions), None for gated cells."""
        return None if self.activation is None else 1.0

    def bptt_stored_elements(self, batch: int, seq_len: int, input_sizes: List[int], hidden_size: int,
                             num_params: int) -> int:
        """Peak elements the reference BPTT holds beyond its inputs, counted from what it stores.

        Per layer: the state parts at every step ``(T+1)·B·H`` each, the G activated gates ``T·B·G·H`` and
        :attr:`bptt_extra_per_step` more ``T·B·H``; during the backward of layer l also the gate-sized buffers,
        the input gradient ``T·B·I_l`` being produced and the cotangent from the layer above ``T·B·H``; and
        the parameter gradients ``P``. The peak is the cache plus the largest backward working set.
        """
        T, B, H, G, L = seq_len, batch, hidden_size, self.gates, len(input_sizes)
        per_layer = len(self.state_parts) * (T + 1) * B * H + T * B * (G + self.bptt_extra_per_step) * H
        during = 0
        for l, I_l in enumerate(input_sizes):
            d = T * B * G * H * self.bptt_backward_gate_buffers + T * B * I_l + (T * B * H if l < L - 1 else 0)
            during = max(during, d)
        return int(L * per_layer + during + num_params)

    def rtrl_influence_elements(self, batch: int, hidden_size: int, num_params: int) -> int:
        """Elements of RTRL's influence matrices ``∂(state)/∂θ``: ``|state parts|·B·H·P`` (the O(H³) term); for a
        gated linear cell (one layer) ``B·P``, since unit j's state depends on unit j's parameters only."""
        if self.gated_linear:
            return int(batch * num_params)
        return int(len(self.state_parts) * batch * hidden_size * num_params)


# -- the registry -------------------------------------------------------------------------------------------

_CELLS: Dict[str, CellDef] = {}
#: The classic cells every built-in backend runs (defined at the end of this module).
BUILTIN_CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
#: The gated linear cells, also built in (defined at the end of this module); backends declare them one by one.
GATED_LINEAR_CELLS = ("mingru", "minlstm", "rglru")
_PROTECTED = BUILTIN_CELLS + GATED_LINEAR_CELLS
_plugins_loaded = False
_plugins_error: Optional[InputError] = None  # a failed plug-in import: raised again on every look-up


def register(cell: CellDef, replace: bool = False) -> CellDef:
    """Add ``cell`` to the registry (``replace=True`` to redefine a name); returns it."""
    if not isinstance(cell, CellDef):
        raise InputError(f"cell: got {type(cell).__name__}; expected a harness.core.cells.CellDef")
    old = _CELLS.get(cell.name)
    if old is not None and old != cell and cell.name in _PROTECTED:
        raise InputError(f"cell {cell.name!r} is built in and cannot be redefined; register yours under another name")
    if old is not None and old != cell and not replace:
        raise InputError(f"cell {cell.name!r} is already defined differently; pass replace=True to redefine it")
    _CELLS[cell.name] = cell
    return cell


def unregister(name: str) -> None:
    """Remove a plug-in cell (tests); the built-in cells stay."""
    if name in _PROTECTED:
        raise InputError(f"cell {name!r} is built in and cannot be removed")
    _CELLS.pop(name, None)


def load_plugins() -> List[str]:
    """Import the plug-in modules that define cells (entry points, ``$RNNBENCH_PLUGINS``), once; their names.

    A module that cannot be imported raises :class:`InputError` naming it — now and on every later call, so
    that no caller goes on with a partial registry."""
    global _plugins_loaded, _plugins_error
    if _plugins_error is not None:
        raise _plugins_error
    if _plugins_loaded:
        return []
    _plugins_loaded = True
    mods: List[str] = []
    try:
        from importlib.metadata import entry_points
        mods += [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    except Exception:  # noqa: BLE001 - broken metadata must not break the registry
        pass
    mods += [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    for m in mods:
        try:
            importlib.import_module(m)
        except Exception as e:  # noqa: BLE001 - a plug-in's own failure, said in one line with where it happened
            import traceback
            where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
            at = f" (at {os.path.basename(where.filename)}:{where.lineno})" if where else ""
            _plugins_error = InputError(f"{PLUGINS_ENV}/{ENTRY_POINT_GROUP}: cannot import plug-in module {m!r}: "
                                        f"{type(e).__name__}: {e}{at}")
            raise _plugins_error from None
    return mods


def names(gated_linear: Optional[bool] = None) -> Tuple[str, ...]:
    """Every known cell: the built-ins first, then plug-ins in the order they registered; with ``gated_linear``
    True or False only the cells that are (or are not) gated linear recurrences."""
    load_plugins()
    return tuple(n for n, c in _CELLS.items() if gated_linear is None or c.gated_linear == gated_linear)


def get(name: str) -> CellDef:
    """The definition of cell ``name``; ``InputError`` listing the known cells otherwise."""
    cell = _CELLS.get(name) if isinstance(name, str) else None
    if cell is None and isinstance(name, str):
        load_plugins()
        cell = _CELLS.get(name)
    if cell is None:
        raise InputError(f"cell: got {name!r}; allowed: {', '.join(names())}")
    return cell


register(CellDef("rnn_tanh", ("h",), activation="tanh",
                 description="vanilla RNN, h' = tanh(W_ih x + b_ih + W_hh h + b_hh)"))
register(CellDef("rnn_relu", ("h",), activation="relu",
                 description="vanilla RNN with relu"))
register(CellDef("lstm", ("i", "f", "g", "o"), state_parts=("h", "c"), bias_gate="f", bias_gate_role="forget",
                 bptt_extra_per_step=1,
                 description="LSTM (PyTorch gate order i, f, g, o; c' = f c + i g, h' = o tanh(c'))"))
register(CellDef("gru", ("r", "z", "n"), bias_gate="z", bias_gate_role="update", bptt_extra_per_step=1,
                 bptt_backward_gate_buffers=2,
                 description="GRU (PyTorch/cuDNN form: reset applied after the recurrent matmul)"))


#: The RG-LRU's exponent c (a_t = σ(Λ)^(c·r_t)) and the range its default init draws σ(Λ)^c from (the paper's).
RGLRU_C = 8.0
RGLRU_A_RANGE = (0.9, 0.999)


def _rglru_lam(rng, hidden_size: int) -> Dict[str, np.ndarray]:
    """Λ with σ(Λ)^c uniform in :data:`RGLRU_A_RANGE`."""
    s = rng.uniform(*RGLRU_A_RANGE, size=hidden_size) ** (1.0 / RGLRU_C)  # σ(Λ)
    return {"lam": np.log(s) - np.log1p(-s)}


def _sigmoid(a, xp):
    return 0.5 * (1.0 + xp.tanh(0.5 * a))  # no overflow for large |a|, in every array module


def _blocks(A, G: int):
    H = A.shape[-1] // G
    return [A[..., g * H:(g + 1) * H] for g in range(G)]


def _mingru(A, unit, xp):
    """z = σ(A_z), a = 1 − z, u = z ⊙ A_h."""
    az, ah = _blocks(A, 2)
    z = _sigmoid(az, xp)
    return 1.0 - z, z * ah, (z, ah)


def _minlstm(A, unit, xp):
    """f = σ(A_f), i = σ(A_i), a = f / (f + i), u = i / (f + i) ⊙ A_h."""
    af, ai, ah = _blocks(A, 3)
    f, i = _sigmoid(af, xp), _sigmoid(ai, xp)
    s = f + i
    return f / s, (i / s) * ah, (f, i, s, ah)


def _rglru(A, unit, xp):
    """r = σ(A_a), i = σ(A_x), a = exp(−c · r ⊙ softplus(−Λ)), u = sqrt(1 − a²) ⊙ i ⊙ A_u."""
    aa, ax, au = _blocks(A, 3)
    lam = unit["lam"]
    r, i = _sigmoid(aa, xp), _sigmoid(ax, xp)
    sp = xp.logaddexp(0.0 * lam, -lam)  # softplus(−Λ), stable
    a = xp.exp(-RGLRU_C * r * sp)
    q = xp.sqrt(1.0 - a * a)
    v = i * au
    return a, q * v, (r, i, au, sp, a, q, v)


register(CellDef("mingru", ("z", "h"), gated_linear=True, coefficients=_mingru,
                 description="minGRU (Feng et al. 2024): z = σ(W_z x + b_z), h' = (1 − z) h + z (W_h x + b_h)"))
register(CellDef("minlstm", ("f", "i", "h"), gated_linear=True, coefficients=_minlstm,
                 description="minLSTM (Feng et al. 2024): h' = f/(f+i) h + i/(f+i) (W_h x + b_h), f, i sigmoids of x"))
register(CellDef("rglru", ("a", "x", "u"), gated_linear=True, unit_params=("lam",), unit_param_init=_rglru_lam,
                 coefficients=_rglru,
                 description="RG-LRU (De et al. 2024): a = σ(Λ)^(8 r), h' = a h + sqrt(1 − a²) (i ⊙ (W_u x + b_u))"))
