"""Canonical parameters (PyTorch layout and gate order), seeded initialisation, and gradients.

One :class:`LayerParams` per layer: ``w_ih (G*H, I_l)``, ``w_hh (G*H, H)``, ``b_ih (G*H,)``,
``b_hh (G*H,)`` (the biases are ``None`` when ``spec.bias`` is False). Gate blocks are stacked in
PyTorch's order: LSTM ``i, f, g, o``; GRU ``r, z, n``. Every backend converts from/to this layout.
A gated linear cell (minGRU, minLSTM, RG-LRU) has no ``w_hh``/``b_hh`` (``None``) and may have per-unit
vectors such as the RG-LRU's ``lam (H,)``: a layer holds exactly its cell's parameters
(:meth:`harness.core.cells.CellDef.param_shapes`).

Every random draw comes from ``numpy.random.default_rng(seed)``: the same seed gives the same
weights in every backend.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from harness.core.errors import InputError, InputTypeError
from harness.core.spec import CellSpec, State, check_dtype, check_finite

PARAM_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh", "lam")
INITS = ("default", "orthogonal", "spectral")


@dataclass
class LayerParams:
    """One layer's weights (NumPy arrays). Biases are ``None`` for ``bias=False``; ``w_hh`` and ``b_hh`` for a gated
    linear cell; ``lam`` for every cell but the RG-LRU."""

    w_ih: np.ndarray
    w_hh: Optional[np.ndarray] = None
    b_ih: Optional[np.ndarray] = None
    b_hh: Optional[np.ndarray] = None
    lam: Optional[np.ndarray] = None

    def items(self) -> Iterator[Tuple[str, np.ndarray]]:
        """(name, array) for each present parameter, in canonical order."""
        for n in PARAM_NAMES:
            a = getattr(self, n)
            if a is not None:
                yield n, a


@dataclass
class Params:
    """All layers' parameters in canonical layout."""

    layers: List[LayerParams]

    @property
    def dtype(self) -> np.dtype:
        return self.layers[0].w_ih.dtype

    def items(self) -> Iterator[Tuple[str, np.ndarray]]:
        """``("l0.w_ih", array)``, ... for every present parameter."""
        for l, lp in enumerate(self.layers):
            for n, a in lp.items():
                yield f"l{l}.{n}", a

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> "Params":
        """A new Params with ``fn`` applied to every present array."""
        return Params([LayerParams(**{n: (None if getattr(lp, n) is None else fn(getattr(lp, n)))
                                      for n in PARAM_NAMES}) for lp in self.layers])

    def astype(self, dtype) -> "Params":
        dt = check_dtype(dtype)
        return self.map(lambda a: np.ascontiguousarray(a, dtype=dt))

    def copy(self) -> "Params":
        return self.map(np.array)

    def flat(self) -> np.ndarray:
        """All parameters concatenated into one vector (canonical order), length ``spec.num_params``."""
        return np.concatenate([a.ravel() for _, a in self.items()])

    @classmethod
    def from_flat(cls, spec: CellSpec, vec: np.ndarray) -> "Params":
        """Inverse of :meth:`flat`."""
        vec = np.asarray(vec)
        if vec.shape != (spec.num_params,):
            raise InputError(f"vec: got shape {vec.shape}; expected ({spec.num_params},)")
        layers, off = [], 0
        for l in range(spec.num_layers):
            kw = {}
            for n, shape in spec.layer_shapes(l).items():
                size = int(np.prod(shape))
                kw[n] = vec[off:off + size].reshape(shape).copy()
                off += size
            layers.append(LayerParams(**kw))
        return cls(layers)

    def validate(self, spec: CellSpec, name: str = "params") -> "Params":
        """Raise ``ValueError``/``TypeError`` unless these parameters match ``spec``; returns self."""
        if not isinstance(self.layers, (list, tuple)) or len(self.layers) != spec.num_layers:
            n = len(self.layers) if isinstance(self.layers, (list, tuple)) else type(self.layers).__name__
            raise InputError(f"{name}: has {n} layers; spec has num_layers={spec.num_layers}")
        dtype = None
        for l, lp in enumerate(self.layers):
            shapes = spec.layer_shapes(l)
            for n in PARAM_NAMES:
                a = getattr(lp, n)
                where = f"{name}.layers[{l}].{n}"
                if n not in shapes:
                    if a is not None:
                        why = ("spec has bias=False" if n in ("b_ih", "b_hh") and spec.bias is False
                               and n in spec.definition.param_shapes(1, 1, True) else
                               f"a {spec.cell} layer has only {', '.join(shapes)}")
                        raise InputError(f"{where}: {why}, so it must be None; got an array")
                    continue
                if a is None:
                    raise InputError(f"{where}: missing; a {spec.cell} layer of {spec} expects shape {shapes[n]}")
                if not isinstance(a, np.ndarray):
                    raise InputTypeError(f"{where}: got {type(a).__name__}; expected a NumPy array")
                check_dtype(a.dtype)
                if dtype is None:
                    dtype = a.dtype
                elif a.dtype != dtype:
                    raise InputTypeError(f"{where}: dtype {a.dtype} differs from the other parameters' {dtype}")
                if a.shape != shapes[n]:
                    raise InputError(f"{where}: got shape {a.shape}; expected {shapes[n]} for {spec}")
                check_finite(where, a)
        return self


@dataclass
class Grads:
    """The result of a vector-Jacobian product.

    ``params``: dL/dθ in canonical layout; ``dx``: dL/dx ``(T, B, I)``; ``dstate``: dL/d(initial state),
    same structure as a state. ``extra`` carries algorithm-specific diagnostics.
    """

    params: Params
    dx: np.ndarray
    dstate: State
    extra: dict = field(default_factory=dict)


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A Haar-random orthogonal ``(n, n)`` matrix (QR of a Gaussian with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _spectral(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    """A Gaussian ``(n, n)`` matrix rescaled so that its spectral radius is exactly ``rho``."""
    w = rng.standard_normal((n, n))
    radius = np.max(np.abs(np.linalg.eigvals(w)))
    return w * (rho / radius)


def init_params(spec: CellSpec, seed: int = 0, dtype="float64", init: str = "default",
                rho: Optional[float] = None, gate_bias: float = 0.0) -> Params:
    """Seeded parameters for ``spec``.

    Args:
        init: ``default`` — PyTorch's U(-1/√H, 1/√H) for every tensor;
            ``orthogonal`` — as default, but each ``(H, H)`` gate block of ``w_hh`` is ρ·Q with Q Haar-orthogonal;
            ``spectral`` — as default, but each gate block of ``w_hh`` is Gaussian scaled to spectral radius ρ.
        rho: the scale ρ for ``orthogonal``/``spectral`` (default 1.0); must be None for ``default``.
        gate_bias: added once to ``b_ih`` of the cell's bias gate (:attr:`CellDef.bias_gate`: the LSTM's forget
            gate, the GRU's update gate) in every layer. PyTorch sums ``b_ih + b_hh``, so this is the
            effective offset. Not allowed for cells without such a gate (vanilla RNNs).
    """
    if not isinstance(spec, CellSpec):
        raise InputTypeError(f"spec: got {type(spec).__name__}; expected a CellSpec")
    dt = check_dtype(dtype)
    if init not in INITS:
        raise InputError(f"init: got {init!r}; allowed: {', '.join(INITS)}")
    if init == "default" and rho is not None:
        raise InputError("rho: only meaningful with init='orthogonal' or 'spectral'; got init='default'")
    if rho is None:
        rho = 1.0
    if not np.isfinite(rho) or rho < 0:
        raise InputError(f"rho: got {rho!r}; allowed: a finite number >= 0")
    if not np.isfinite(gate_bias):
        raise InputError(f"gate_bias: got {gate_bias!r}; allowed: a finite number")
    block = spec.definition.bias_gate_block()
    if gate_bias != 0.0 and block is None:
        from harness.core import cells
        gated = [c for c in cells.names() if cells.get(c).bias_gate is not None]
        raise InputError(f"gate_bias: a {spec.cell} has no forget/update gate; allowed only for {', '.join(gated)}")
    if gate_bias != 0.0 and not spec.bias:
        raise InputError("gate_bias: the spec has bias=False, so there is no bias to offset")
    if init != "default" and spec.definition.gated_linear:
        raise InputError(f"init: got {init!r}; a {spec.cell} has no recurrent matrix w_hh to make orthogonal or "
                         "spectral; allowed: default")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise InputTypeError(f"seed: got {seed!r}; allowed: an integer")

    rng = np.random.default_rng(seed)
    H, G = spec.hidden_size, spec.gates
    k = 1.0 / np.sqrt(H)
    layers = []
    for l in range(spec.num_layers):
        shapes = spec.layer_shapes(l)
        # Draw every tensor in canonical order so that the stream is stable across init choices.
        unit = spec.definition.unit_params
        arrays = {n: rng.uniform(-k, k, size=s) for n, s in shapes.items() if n not in unit}
        if unit:
            arrays.update(spec.definition.unit_param_init(rng, H))
        if init != "default":
            blocks = [(_orthogonal(rng, H) * rho) if init == "orthogonal" else _spectral(rng, H, rho)
                      for _ in range(G)]
            arrays["w_hh"] = np.concatenate(blocks, axis=0)
        if gate_bias != 0.0:
            arrays["b_ih"][block * H:(block + 1) * H] += gate_bias  # LSTM: f is block 1; GRU: z is block 1
        layers.append(LayerParams(**{n: np.ascontiguousarray(a, dtype=dt) for n, a in arrays.items()}))
    return Params(layers)
