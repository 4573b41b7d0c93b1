"""The NumPy reference of the gated linear cells (minGRU, minLSTM, RG-LRU): BPTT against central differences,
RTRL against BPTT, the parallel scan against the sequential one, hidden-state gradients against the product
of the a_t."""
from __future__ import annotations

import numpy as np
import pytest

from harness.core.errors import InputError
from implementations.numpy import gated_linear as gl

CELLS = list(gl.GATES)


def _setting(cell, T=6, B=2, I=3, H=4, L=2, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed + 10)
    layers = gl.init_layers(cell, I, H, L, seed=seed, dtype=dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L, B, H)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dhT = rng.standard_normal((L, B, H)).astype(dtype)
    return layers, x, h0, dy, dhT


def _loss(cell, layers, x, h0, dy, dhT):
    y, hT = gl.forward(cell, layers, x, h0)
    return float((dy * y).sum() + (dhT * hT).sum())


@pytest.mark.parametrize("cell", CELLS)
def test_bptt_matches_central_differences(cell):
    layers, x, h0, dy, dhT = _setting(cell)
    grads, dx, dh0 = gl.vjp(cell, layers, x, h0, dy, dhT)
    rng = np.random.default_rng(5)
    eps = 1e-6

    def check(get, grad, name):
        v = rng.standard_normal(grad.shape)
        base = get().copy()
        get()[...] = base + eps * v
        lp = _loss(cell, layers, x, h0, dy, dhT)
        get()[...] = base - eps * v
        lm = _loss(cell, layers, x, h0, dy, dhT)
        get()[...] = base
        fd = (lp - lm) / (2 * eps)
        an = float((grad * v).sum())
        assert abs(fd - an) <= 1e-7 * max(1.0, abs(an)), (name, fd, an)

    for l, lay in enumerate(layers):
        assert set(grads[l]) == set(lay)  # exactly the cell's own parameters
        for n in lay:
            check(lambda l=l, n=n: layers[l][n], grads[l][n], f"l{l}.{n}")
    check(lambda: x, dx, "x")
    check(lambda: h0, dh0, "h0")


@pytest.mark.parametrize("cell", CELLS)
def test_a_wrong_gradient_would_be_caught(cell):
    """The check above can fail: a gradient off by 1 % in one parameter disagrees with the differences."""
    layers, x, h0, dy, dhT = _setting(cell, L=1)
    grads, _, _ = gl.vjp(cell, layers, x, h0, dy, dhT)
    n = "lam" if cell == "rglru" else "b_ih"
    v = np.zeros_like(grads[0][n])
    v[0] = 1.0
    eps = 1e-6
    layers[0][n][0] += eps
    lp = _loss(cell, layers, x, h0, dy, dhT)
    layers[0][n][0] -= 2 * eps
    lm = _loss(cell, layers, x, h0, dy, dhT)
    fd = (lp - lm) / (2 * eps)
    assert abs(fd - grads[0][n][0]) <= 1e-7 * max(1, abs(fd))
    assert abs(fd - 1.01 * grads[0][n][0]) > 1e-7 * max(1, abs(fd))


@pytest.mark.parametrize("cell", CELLS)
def test_rtrl_equals_bptt(cell):
    layers, x, h0, dy, dhT = _setting(cell, T=12, B=3, I=5, H=6, L=1, seed=3)
    g_b, _, dh0_b = gl.vjp(cell, layers, x, h0, dy, dhT)
    g_r, dh0_r = gl.rtrl(cell, layers, x, h0, dy, dhT)
    for n in g_b[0]:
        np.testing.assert_allclose(g_r[0][n], g_b[0][n], rtol=1e-10, atol=1e-12, err_msg=n)
    np.testing.assert_allclose(dh0_r, dh0_b, rtol=1e-10, atol=1e-12)


def test_rtrl_of_stacked_layers_says_it_is_not_there():
    layers, x, h0, dy, dhT = _setting("mingru", L=2)
    with pytest.raises(NotImplementedError, match="one layer only"):
        gl.rtrl("mingru", layers, x, h0, dy, dhT)


def test_rtrl_influence_is_per_unit():
    assert gl.rtrl_memory_elements("mingru", 1, 256, 256) == 2 * 256 * 257  # B·P, not B·H·P
    assert gl.rtrl_memory_elements("rglru", 2, 8, 4) == 2 * (3 * 4 * 9 + 4)


@pytest.mark.parametrize("cell", CELLS)
def test_the_parallel_scan_equals_the_sequential_one(cell):
    layers, x, h0, _, _ = _setting(cell, T=37, B=2, I=3, H=5, L=2)
    ys, hs = gl.forward(cell, layers, x, h0)
    yp, hp = gl.forward(cell, layers, x, h0, scan="parallel")
    np.testing.assert_allclose(yp, ys, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hp, hs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_parallel_scan_stays_right_at_T_4096(cell):
    """Products of the a_t underflow over thousands of steps; the scan must still give the states."""
    layers, x, h0, _, _ = _setting(cell, T=4096, B=2, I=3, H=8, L=1, dtype="float32")
    ref, _ = gl.forward(cell, [{k: v.astype(np.float64) for k, v in layers[0].items()}], x.astype(np.float64),
                        h0.astype(np.float64))
    y32, _ = gl.forward(cell, layers, x, h0, scan="parallel")
    err = np.max(np.abs(y32 - ref)) / np.max(np.abs(ref))
    assert np.isfinite(y32).all() and err < 1e-4, err


@pytest.mark.parametrize("cell", CELLS)
def test_hidden_gradients_are_the_product_of_the_a_t(cell):
    layers, x, _, _, _ = _setting(cell, T=50, L=2)
    dh = np.random.default_rng(1).standard_normal((x.shape[1], 4))
    g = gl.hidden_grads(cell, layers, x, dh)
    # the same from the full BPTT with only the final state's cotangent on the last layer
    dhT = np.zeros((2, x.shape[1], 4))
    dhT[-1] = dh
    xin = x
    for lay in layers:
        a, u, _ = gl.coefficients(cell, xin @ lay["w_ih"].T + lay["b_ih"], lay.get("lam"))
        xin = gl.linear_scan(a, u, np.zeros_like(dh))
    prod = dh * np.cumprod(a[::-1][:-1], axis=0)[::-1]
    np.testing.assert_allclose(g[:-1], prod, rtol=1e-12)
    _, _, dh0 = gl.vjp(cell, layers, x, None, None, dhT)
    np.testing.assert_allclose(dh0[-1], a[0] * g[0], rtol=1e-12)


def test_rglru_init_draws_the_papers_range():
    lam = gl.init_layers("rglru", 4, 1000, seed=2)[0]["lam"]
    a = (1.0 / (1.0 + np.exp(-lam))) ** gl.RGLRU_C
    assert a.min() >= 0.9 - 1e-12 and a.max() <= 0.999 + 1e-12
    assert abs(a.mean() - 0.9495) < 0.01  # uniform in [0.9, 0.999]


@pytest.mark.parametrize("bad, words", [
    (dict(cell="gru"), "allowed: mingru, minlstm, rglru"),
    (dict(scan="blelloch"), "allowed: sequential, parallel"),
    (dict(extra="w_hh"), "expected exactly"),
])
def test_bad_input_is_named(bad, words):
    layers, x, h0, _, _ = _setting("mingru", L=1)
    if "extra" in bad:
        layers[0]["w_hh"] = np.zeros((8, 4))
    with pytest.raises(InputError, match=words):
        gl.forward(bad.get("cell", "mingru"), layers, x, h0, scan=bad.get("scan", "sequential"))
