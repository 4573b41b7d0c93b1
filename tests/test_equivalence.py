"""Property test: every available backend agrees with the NumPy reference on random problems.

The per-backend test files check fixed shapes exhaustively; this one lets hypothesis pick cells,
shapes, layers and seeds, in float64 (relative error ≤ 1e-10) and float32 (≤ 1e-5 against float64).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from implementations import registry as backends
from harness.core.spec import CELLS, CellSpec
from tests.helpers import params_rel_err, problem, rel_err

NP = backends.get("numpy")
CANDIDATES = ["torch", "torch-cell", "jax"]
AVAILABLE = [n for n in CANDIDATES if backends.probe(n).available]


def _cast(s, dt):
    if s is None:
        return None
    return tuple(a.astype(dt) for a in s) if isinstance(s, tuple) else s.astype(dt)


@pytest.mark.skipif(not AVAILABLE, reason="neither torch nor jax is installed")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cell=st.sampled_from(CELLS), layers=st.integers(1, 2), T=st.integers(1, 6), B=st.integers(1, 3),
       I=st.integers(1, 5), H=st.integers(1, 6), seed=st.integers(0, 2**16), bias=st.booleans(),
       dtype=st.sampled_from(["float64", "float32"]), which=st.sampled_from(AVAILABLE or ["none"]))
def test_backends_agree_with_numpy(cell, layers, T, B, I, H, seed, bias, dtype, which):
    spec = CellSpec(cell, I, H, layers, bias=bias)
    pr = problem(spec, T, B, seed=seed)
    ref_y, ref_fin = NP.forward(spec, pr["params"], pr["x"], pr["state"])
    ref_g = NP.vjp(spec, pr["params"], pr["x"], pr["state"], pr["dy"], pr["d_final_state"])
    ref_h = NP.hidden_grads(spec, pr["params"], pr["x"], pr["dh_T"])
    be = backends.get(which)
    tol = 1e-10 if dtype == "float64" else 1e-5
    dt = np.dtype(dtype)
    p = pr["params"].astype(dtype)
    x, state, dy, dfin = pr["x"].astype(dt), _cast(pr["state"], dt), pr["dy"].astype(dt), _cast(pr["d_final_state"], dt)
    y, fin = be.forward(spec, p, x, state)
    assert y.dtype == dt
    assert rel_err(y, ref_y) <= tol
    assert rel_err(fin, ref_fin) <= tol
    g = be.vjp(spec, p, x, state, dy, dfin)
    errs = params_rel_err(g.params, ref_g.params)
    assert max(errs.values()) <= tol, errs
    assert rel_err(g.dx, ref_g.dx) <= tol
    assert rel_err(g.dstate, ref_g.dstate) <= tol
    assert rel_err(be.hidden_grads(spec, p, x, pr["dh_T"].astype(dt)), ref_h) <= tol
