"""harness.core.layouts: canonical parameters <-> flax / Keras / ONNX / equinox layouts.

Round trips are exact; grad_from_layout is checked as the adjoint of to_layout; Keras and ONNX are checked
against their documented step equations written here in NumPy (in their own layouts); flax and equinox
against the installed libraries in float64 (outputs, final states and gradients to 1e-12 relative).
"""
from __future__ import annotations

import numpy as np
import pytest

from harness.backends import get
from harness.core import layouts
from harness.core.errors import InputError
from harness.core.layouts import (LAYOUTS, from_layout, grad_from_layout, state_from_layout, state_to_layout,
                                  to_layout)
from harness.core.params import Params, init_params
from harness.core.spec import CellSpec

T, B, I, H = 5, 3, 4, 6
TOL = 1e-12


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def params_rel(a: Params, b: Params) -> float:
    da, db = dict(a.items()), dict(b.items())
    assert da.keys() == db.keys()
    return max(rel(da[k], db[k]) for k in db)


def state_rel(a, b) -> float:
    return max(rel(x, y) for x, y in zip(a, b)) if isinstance(b, tuple) else rel(a, b)


def setup(name, L=2, bias=True, seed=0, dtype="float64"):
    spec = CellSpec(LAYOUTS[name].cell, I, H, num_layers=L, bias=bias)
    rng = np.random.default_rng(seed + 100)
    p = init_params(spec, seed=seed, dtype=dtype)
    p = p.map(lambda a: (a + rng.uniform(-0.3, 0.3, a.shape)).astype(dtype))  # distinct b_ih / b_hh everywhere
    x = rng.standard_normal((T, B, I))
    s = [rng.standard_normal(spec.state_shape(B)) * 0.5 for _ in spec.definition.state_parts]
    state = tuple(s) if spec.is_lstm else s[0]
    return spec, p, x, state, rng.standard_normal((T, B, H))


def blocks(a, k):
    return a[k * H:(k + 1) * H]


def tree_map(fn, t):
    if isinstance(t, dict):
        return {k: (v if k == "attributes" else tree_map(fn, v)) for k, v in t.items()}
    if isinstance(t, (list, tuple)):
        return type(t)(tree_map(fn, v) for v in t)
    return None if t is None else fn(np.asarray(t))


def tree_dot(a, b) -> float:
    if isinstance(a, dict):
        return sum(tree_dot(a[k], b[k]) for k in a if k != "attributes")
    if isinstance(a, (list, tuple)):
        return sum(tree_dot(x, y) for x, y in zip(a, b))
    return 0.0 if a is None else float(np.sum(np.asarray(a) * np.asarray(b)))


def tree_equal(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            tree_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            tree_equal(x, y)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    else:
        assert a == b


# -- round trips, folding, adjoint -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_round_trip_exact(name, L, bias, dtype):
    spec, p, *_ = setup(name, L, bias, dtype=dtype)
    lay = LAYOUTS[name]
    theirs = to_layout(name, spec, p)
    assert isinstance(theirs, list) and len(theirs) == L
    back = from_layout(name, spec, theirs)
    assert back.dtype == np.dtype(dtype)
    for lp, bp in zip(p.layers, back.layers):
        np.testing.assert_array_equal(bp.w_ih, lp.w_ih)
        np.testing.assert_array_equal(bp.w_hh, lp.w_hh)
        if not bias:
            assert bp.b_ih is None and bp.b_hh is None
            continue
        for k, g in enumerate(spec.definition.gate_names):
            if g in lay.folded:  # the sum comes back in b_ih, zeros in b_hh: the same effective bias
                np.testing.assert_array_equal(blocks(bp.b_ih, k), blocks(lp.b_ih, k) + blocks(lp.b_hh, k))
                np.testing.assert_array_equal(blocks(bp.b_hh, k), 0)
            else:
                np.testing.assert_array_equal(blocks(bp.b_ih, k), blocks(lp.b_ih, k))
                np.testing.assert_array_equal(blocks(bp.b_hh, k), blocks(lp.b_hh, k))
    tree_equal(to_layout(name, spec, back), theirs)  # their side is a fixpoint


@pytest.mark.parametrize("name", [n for n, lay in LAYOUTS.items() if lay.folded])
def test_folded_bias_gradient_goes_to_both(name):
    spec, p, *_ = setup(name, L=2)
    lay = LAYOUTS[name]
    their_grads = to_layout(name, spec, p)  # any arrays of their structure; the folded ones are b_ih + b_hh
    g = grad_from_layout(name, spec, their_grads)
    q = from_layout(name, spec, their_grads)
    for lp, gp, qp in zip(p.layers, g.layers, q.layers):
        np.testing.assert_array_equal(gp.w_ih, qp.w_ih)
        for k, gate in enumerate(spec.definition.gate_names):
            if gate in lay.folded:
                fold = blocks(lp.b_ih, k) + blocks(lp.b_hh, k)
                np.testing.assert_array_equal(blocks(gp.b_ih, k), fold)
                np.testing.assert_array_equal(blocks(gp.b_hh, k), fold)
                np.testing.assert_array_equal(blocks(qp.b_hh, k), 0)
            else:
                np.testing.assert_array_equal(blocks(gp.b_hh, k), blocks(lp.b_hh, k))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_grad_from_layout_is_the_adjoint_of_to_layout(name, bias):
    """<grad_from_layout(G), dp> == <G, to_layout(dp)> for random G and dp (to_layout is linear)."""
    spec, p, *_ = setup(name, L=2, bias=bias)
    rng = np.random.default_rng(7)
    dp = p.map(lambda a: rng.standard_normal(a.shape))
    G = tree_map(lambda a: rng.standard_normal(a.shape), to_layout(name, spec, p))
    lhs = float(np.dot(grad_from_layout(name, spec, G).flat(), dp.flat()))
    rhs = tree_dot(G, to_layout(name, spec, dp))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(rhs))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_state_helpers_round_trip(name):
    spec, _, _, state, _ = setup(name, L=2)
    carries = state_to_layout(name, spec, state)
    assert len(carries) == 2
    if name.startswith("flax") and spec.is_lstm:
        np.testing.assert_array_equal(carries[1][0], state[1][1])  # flax's carry is (c, h)
    back = state_from_layout(name, spec, carries)
    assert state_rel(back, state) == 0.0


# -- Keras and ONNX: their documented equations, in their own layouts --------------------------------------------

def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def keras_lstm(d, x, s):
    h, c = s
    z = x @ d["kernel"] + h @ d["recurrent_kernel"] + d["bias"]
    i, f, cc, o = np.split(z, 4, axis=-1)
    c = sig(f) * c + sig(i) * np.tanh(cc)
    h = sig(o) * np.tanh(c)
    return [h, c], h


def keras_gru(d, x, h):  # reset_after=True
    bi, br = d["bias"]
    xz, xr, xh = np.split(x @ d["kernel"] + bi, 3, axis=-1)
    hz, hr, hh = np.split(h @ d["recurrent_kernel"] + br, 3, axis=-1)
    z, r = sig(xz + hz), sig(xr + hr)
    h = z * h + (1 - z) * np.tanh(xh + r * hh)
    return h, h


def onnx_lstm(d, x, s):
    h, c = s["initial_h"][0], s["initial_c"][0]
    Wb, Rb = np.split(d["B"][0], 2)
    i, o, f, cc = np.split(x @ d["W"][0].T + h @ d["R"][0].T + Wb + Rb, 4, axis=-1)
    c = sig(f) * c + sig(i) * np.tanh(cc)
    h = sig(o) * np.tanh(c)
    return {"initial_h": h[None], "initial_c": c[None]}, h


def onnx_gru(d, x, s, linear_before_reset=1):
    h = s["initial_h"][0]
    (Wz, Wr, Wh), (Rz, Rr, Rh) = np.split(d["W"][0], 3), np.split(d["R"][0], 3)
    Wbz, Wbr, Wbh, Rbz, Rbr, Rbh = np.split(d["B"][0], 6)
    z = sig(x @ Wz.T + h @ Rz.T + Wbz + Rbz)
    r = sig(x @ Wr.T + h @ Rr.T + Wbr + Rbr)
    if linear_before_reset:
        hh = np.tanh(x @ Wh.T + r * (h @ Rh.T + Rbh) + Wbh)
    else:
        hh = np.tanh(x @ Wh.T + (r * h) @ Rh.T + Rbh + Wbh)
    h = (1 - z) * hh + z * h
    return {"initial_h": h[None]}, h


STEPS = {"keras.LSTM": keras_lstm, "keras.GRU": keras_gru, "onnx.LSTM": onnx_lstm, "onnx.GRU": onnx_gru}


def run_steps(step, dicts, x, carries):
    carries, ys = list(carries), []
    for t in range(x.shape[0]):
        inp = x[t]
        for l, d in enumerate(dicts):
            carries[l], inp = step(d, inp, carries[l])
        ys.append(inp)
    return np.stack(ys), carries


@pytest.mark.parametrize("name", list(STEPS))
def test_keras_onnx_equations_match_the_reference(name):
    spec, p, x, state, _ = setup(name, L=2)
    y_ref, s_ref = get("numpy").forward(spec, p, x, state)
    y, carries = run_steps(STEPS[name], to_layout(name, spec, p), x, state_to_layout(name, spec, state))
    assert rel(y, y_ref) < TOL
    assert state_rel(state_from_layout(name, spec, carries), s_ref) < TOL


def test_onnx_linear_before_reset_0_is_another_function():
    """Why the refusal: the same W, R, B under linear_before_reset=0 give different outputs."""
    spec, p, x, state, _ = setup("onnx.GRU", L=1)
    d = to_layout("onnx.GRU", spec, p)
    c0 = state_to_layout("onnx.GRU", spec, state)
    y1, _ = run_steps(onnx_gru, d, x, c0)
    y0, _ = run_steps(lambda d, x, s: onnx_gru(d, x, s, 0), d, x, c0)
    assert rel(y0, y1) > 1e-3


# -- refusals and bad input ------------------------------------------------------------------------------------

def test_keras_gru_reset_after_false_is_refused():
    spec, p, *_ = setup("keras.GRU", L=1)
    with pytest.raises(InputError, match=r"reset_after=False.*before the recurrent matmul.*different function"):
        to_layout("keras.GRU", spec, p, reset_after=False)
    d = to_layout("keras.GRU", spec, p)
    with pytest.raises(InputError, match="reset_after=False"):
        from_layout("keras.GRU", spec, d, reset_after=False)
    d[0]["bias"] = d[0]["bias"][0]  # (3H,): reset_after=False's bias
    with pytest.raises(InputError, match=r"reset_after=False.*different function"):
        from_layout("keras.GRU", spec, d)


def test_onnx_gru_linear_before_reset_0_is_refused():
    spec, p, *_ = setup("onnx.GRU", L=1)
    with pytest.raises(InputError, match=r"linear_before_reset=0.*different function"):
        to_layout("onnx.GRU", spec, p, linear_before_reset=0)
    d = to_layout("onnx.GRU", spec, p)
    d[0]["attributes"]["linear_before_reset"] = 0
    with pytest.raises(InputError, match=r"linear_before_reset=0.*different function"):
        from_layout("onnx.GRU", spec, d)
    del d[0]["attributes"]
    with pytest.raises(InputError, match=r"linear_before_reset=0 \(ONNX's default"):
        grad_from_layout("onnx.GRU", spec, d)
    assert params_rel(grad_from_layout("onnx.GRU", spec, d, linear_before_reset=1), p) == 0.0


def test_onnx_unsupported_variants_are_refused():
    spec, p, *_ = setup("onnx.LSTM", L=1)
    d = to_layout("onnx.LSTM", spec, p)[0]
    with pytest.raises(InputError, match="unidirectional"):
        from_layout("onnx.LSTM", spec, [dict(d, W=np.concatenate([d["W"], d["W"]]))])
    with pytest.raises(InputError, match="direction"):
        from_layout("onnx.LSTM", spec, [dict(d, attributes={"direction": "bidirectional"})])
    with pytest.raises(InputError, match="peephole"):
        from_layout("onnx.LSTM", spec, [dict(d, P=np.ones((1, 3 * H)))])
    with pytest.raises(InputError, match="input_forget"):
        from_layout("onnx.LSTM", spec, [dict(d, attributes={"input_forget": 1})])
    assert params_rel(from_layout("onnx.LSTM", spec, [dict(d, P=np.zeros((1, 3 * H)))]), p) == 0.0


def test_bad_input_names_what_is_wrong():
    spec, p, *_ = setup("flax.LSTMCell", L=2)
    with pytest.raises(InputError, match="allowed: flax.LSTMCell"):
        to_layout("flax.LSTM", spec, p)
    with pytest.raises(InputError, match="for cell 'gru'"):
        to_layout("flax.GRUCell", spec, p)
    with pytest.raises(InputError, match="unknown options"):
        to_layout("flax.LSTMCell", spec, p, reset_after=True)
    d = to_layout("flax.LSTMCell", spec, p)
    with pytest.raises(InputError, match="list of 2"):
        from_layout("flax.LSTMCell", spec, d[:1])
    d[1]["hf"]["kernel"] = d[1]["hf"]["kernel"][:, :-1]
    with pytest.raises(InputError, match=r"theirs\[1\]\.hf\.kernel: got shape \(6, 5\); expected \(6, 6\)"):
        from_layout("flax.LSTMCell", spec, d)
    nob = CellSpec("lstm", I, H, num_layers=2, bias=False)
    with pytest.raises(InputError, match="bias=False"):
        from_layout("flax.LSTMCell", nob, to_layout("flax.LSTMCell", spec, p))
    assert from_layout("flax.LSTMCell", spec, [{"params": x} for x in to_layout("flax.LSTMCell", spec, p)])


# -- the real libraries, float64 -------------------------------------------------------------------------------

def _jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax, jax.numpy


def _check_library(name, run):
    """``run(dicts, x, carries) -> (y, carries)`` in JAX; compare forward, final state, grads to the reference."""
    jax, jnp = _jax()
    spec, p, x, state, dy = setup(name, L=2)
    nb = get("numpy")
    y_ref, s_ref = nb.forward(spec, p, x, state)
    ref = nb.vjp(spec, p, x, state, dy)
    theirs = jax.tree_util.tree_map(jnp.asarray, to_layout(name, spec, p))
    carries = jax.tree_util.tree_map(jnp.asarray, state_to_layout(name, spec, state))
    y, final = run(theirs, jnp.asarray(x), carries)
    assert y.dtype == jnp.float64
    errs = {"y": rel(y, y_ref),
            "state": state_rel(state_from_layout(name, spec, jax.tree_util.tree_map(np.asarray, final)), s_ref)}
    loss = lambda th, cr: jnp.sum(run(th, jnp.asarray(x), cr)[0] * dy)  # noqa: E731
    g_th, g_cr = jax.grad(loss, argnums=(0, 1))(theirs, carries)
    errs["grads"] = params_rel(grad_from_layout(name, spec, g_th), ref.params)
    errs["dstate"] = state_rel(state_from_layout(name, spec, jax.tree_util.tree_map(np.asarray, g_cr)), ref.dstate)
    print(name, {k: f"{v:.2e}" for k, v in errs.items()})
    assert max(errs.values()) < TOL, errs


FLAX = ["flax.LSTMCell", "flax.OptimizedLSTMCell", "flax.GRUCell"]
EQX = ["equinox.LSTMCell", "equinox.GRUCell"]


@pytest.mark.parametrize("name", FLAX)
def test_flax_cells_match_the_reference(name):
    _jax()
    nn = pytest.importorskip("flax.linen")
    import jax.numpy as jnp
    cls = getattr(nn, name.split(".")[1])
    cell = cls(features=H, dtype=jnp.float64, param_dtype=jnp.float64)

    def run(dicts, x, carries):
        carries, ys = list(carries), []
        for t in range(x.shape[0]):
            inp = x[t]
            for l, d in enumerate(dicts):
                carries[l], inp = cell.apply({"params": d}, carries[l], inp)
            ys.append(inp)
        return jnp.stack(ys), carries

    _check_library(name, run)


@pytest.mark.parametrize("name", EQX)
def test_equinox_cells_match_the_reference(name):
    jax, jnp = _jax()
    eqx = pytest.importorskip("equinox")
    cls = getattr(eqx.nn, name.split(".")[1])
    protos = [cls(I if l == 0 else H, H, key=jax.random.PRNGKey(l), dtype=jnp.float64) for l in range(2)]
    fields = ("weight_ih", "weight_hh", "bias") + (("bias_n",) if name == "equinox.GRUCell" else ())

    def run(dicts, x, carries):
        cells = [eqx.tree_at(lambda c: tuple(getattr(c, f) for f in fields), pr, tuple(d[f] for f in fields))
                 for pr, d in zip(protos, dicts)]
        carries, ys = list(carries), []
        for t in range(x.shape[0]):
            inp = x[t]
            for l, cell in enumerate(cells):
                carries[l] = jax.vmap(cell)(inp, carries[l])
                inp = carries[l][0] if isinstance(carries[l], tuple) else carries[l]
            ys.append(inp)
        return jnp.stack(ys), carries

    _check_library(name, run)


def test_core_module_imports_no_framework():
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(layouts))
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= {"__future__", "dataclasses", "typing", "numpy", "harness"}, mods
