"""CellSpec, init_params and Params: shapes, seeded initialisation options, validation."""
import numpy as np
import pytest

from harness.core.params import Params, init_params
from harness.core.spec import CELLS, CellSpec


@pytest.mark.parametrize("cell,G", [("rnn_tanh", 1), ("rnn_relu", 1), ("lstm", 4), ("gru", 3)])
def test_shapes_and_counts(cell, G):
    spec = CellSpec(cell, 5, 7, 2)
    p = init_params(spec, seed=1)
    assert p.layers[0].w_ih.shape == (G * 7, 5)
    assert p.layers[1].w_ih.shape == (G * 7, 7)
    assert p.layers[1].w_hh.shape == (G * 7, 7)
    assert p.layers[0].b_ih.shape == p.layers[0].b_hh.shape == (G * 7,)
    assert p.flat().size == spec.num_params == G * 7 * (5 + 7 + 2) + G * 7 * (7 + 7 + 2)
    np.testing.assert_array_equal(Params.from_flat(spec, p.flat()).flat(), p.flat())


def test_default_init_is_pytorch_uniform_and_seeded():
    spec = CellSpec("lstm", 8, 100)
    a = init_params(spec, seed=3)
    b = init_params(spec, seed=3)
    c = init_params(spec, seed=4)
    np.testing.assert_array_equal(a.flat(), b.flat())
    assert not np.array_equal(a.flat(), c.flat())
    k = 1 / np.sqrt(100)
    w = a.flat()
    assert w.min() >= -k and w.max() <= k
    assert w.min() < -0.9 * k and w.max() > 0.9 * k  # spans the interval
    assert abs(w.std() - k / np.sqrt(3)) < 0.02 * k  # U(-k, k) has std k/√3


@pytest.mark.parametrize("cell", CELLS)
def test_orthogonal_init_scales_each_gate_block(cell):
    spec = CellSpec(cell, 4, 16)
    p = init_params(spec, seed=0, init="orthogonal", rho=0.7)
    w = p.layers[0].w_hh
    for g in range(spec.gates):
        blk = w[g * 16:(g + 1) * 16]
        np.testing.assert_allclose(blk @ blk.T, 0.49 * np.eye(16), atol=1e-12)


def test_spectral_init_has_requested_radius():
    spec = CellSpec("rnn_tanh", 4, 32)
    p = init_params(spec, seed=0, init="spectral", rho=1.3)
    assert np.max(np.abs(np.linalg.eigvals(p.layers[0].w_hh))) == pytest.approx(1.3, rel=1e-10)


def test_gate_bias_offsets_forget_and_update_gates_once():
    for cell in ("lstm", "gru"):
        spec = CellSpec(cell, 3, 5)
        base = init_params(spec, seed=2)
        off = init_params(spec, seed=2, gate_bias=2.0)
        d_ih = off.layers[0].b_ih - base.layers[0].b_ih
        np.testing.assert_allclose(d_ih[5:10], 2.0)
        assert np.all(d_ih[:5] == 0) and np.all(d_ih[10:] == 0)
        np.testing.assert_array_equal(off.layers[0].b_hh, base.layers[0].b_hh)


def test_dtype_and_astype():
    spec = CellSpec("gru", 3, 4)
    p = init_params(spec, dtype="float32")
    assert p.dtype == np.float32
    assert p.astype("float64").dtype == np.float64


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(cell="lstmx", input_size=2, hidden_size=2), ValueError, "cell: got 'lstmx'; allowed: rnn_tanh"),
    (dict(cell="lstm", input_size=0, hidden_size=2), ValueError, "input_size: got 0"),
    (dict(cell="lstm", input_size=2, hidden_size=2.5), ValueError, "hidden_size: got 2.5"),
    (dict(cell="lstm", input_size=2, hidden_size=2, num_layers=True), ValueError, "num_layers"),
    (dict(cell="gru", input_size=2, hidden_size=2, bias="yes"), TypeError, "bias"),
])
def test_spec_rejects_bad_values(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CellSpec(**kwargs)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(dtype="float16"), TypeError, "dtype: got 'float16'; allowed: float32, float64"),
    (dict(init="xavier"), ValueError, "init: got 'xavier'"),
    (dict(rho=0.5), ValueError, "rho: only meaningful"),
    (dict(init="orthogonal", rho=-1.0), ValueError, "rho: got -1.0"),
    (dict(gate_bias=float("nan")), ValueError, "gate_bias"),
    (dict(seed=1.5), TypeError, "seed"),
])
def test_init_rejects_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        init_params(CellSpec("lstm", 2, 3), **kwargs)


def test_gate_bias_refused_for_vanilla_rnn():
    with pytest.raises(ValueError, match="no forget/update gate"):
        init_params(CellSpec("rnn_tanh", 2, 3), gate_bias=1.0)


def test_params_validate_names_the_bad_array():
    spec = CellSpec("lstm", 3, 4, 2)
    p = init_params(spec)
    p.layers[1].w_hh = np.zeros((16, 5))
    with pytest.raises(ValueError, match=r"params.layers\[1\].w_hh: got shape \(16, 5\); expected \(16, 4\)"):
        p.validate(spec)
    p = init_params(spec)
    p.layers[0].b_ih = None
    with pytest.raises(ValueError, match=r"layers\[0\].b_ih: missing"):
        p.validate(spec)
    with pytest.raises(ValueError, match="has 2 layers; spec has num_layers=1"):
        init_params(spec).validate(CellSpec("lstm", 3, 4, 1))
    p = init_params(spec)
    p.layers[0].w_ih[0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        p.validate(spec)
    p = init_params(spec)
    p.layers[0].w_ih = p.layers[0].w_ih.astype(np.float32)
    with pytest.raises(TypeError, match="differs from the other parameters"):
        p.validate(spec)


def test_flops_formulas():
    spec = CellSpec("lstm", 256, 256)
    assert spec.forward_flops(64, 100) == 2 * 64 * 512 * 4 * 256 * 100
    assert spec.deepbench_flops(64, 100) == 2 * 4 * 256 * 256 * 64 * 100
