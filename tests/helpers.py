"""Shared test utilities: random problems and error measures (no framework imports)."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from harness.core.params import Params, init_params
from harness.core.spec import CellSpec


def rel_err(a, b) -> float:
    """‖a − b‖ / ‖b‖ (or ‖a‖ when b is zero); works on arrays and (h, c) tuples."""
    if isinstance(b, tuple):
        return max(rel_err(x, y) for x, y in zip(a, b))
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (nb if nb > 0 else 1.0))


def params_rel_err(a: Params, b: Params) -> Dict[str, float]:
    """Relative error per canonical parameter name."""
    db = dict(b.items())
    return {k: rel_err(v, db[k]) for k, v in a.items()}


def problem(spec: CellSpec, T: int, B: int, seed: int = 0, dtype: str = "float64",
            with_state: bool = True) -> Dict[str, Any]:
    """A random problem: params, x, an initial state and cotangents, all from one seed."""
    rng = np.random.default_rng(seed + 1000)
    p = init_params(spec, seed=seed, dtype=dtype)
    x = rng.standard_normal((T, B, spec.input_size)).astype(dtype)
    shape = spec.state_shape(B)

    def st():
        h = (0.5 * rng.standard_normal(shape)).astype(dtype)
        return (h, (0.5 * rng.standard_normal(shape)).astype(dtype)) if spec.is_lstm else h

    state = st() if with_state else None
    dy = rng.standard_normal((T, B, spec.hidden_size)).astype(dtype)
    dfin = st()
    dh_T = rng.standard_normal((B, spec.hidden_size)).astype(dtype)
    return dict(params=p, x=x, state=state, dy=dy, d_final_state=dfin, dh_T=dh_T)
