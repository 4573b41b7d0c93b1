"""The NumPy reference of the gated linear cells (minGRU, minLSTM, RG-LRU): BPTT against central differences,
RTRL against BPTT, the parallel scan against the sequential one, hidden-state gradients against the product
of the a_t."""
from __future__ import annotations

import numpy as np
import pytest

from harness.core import cells
from harness.core.errors import InputError
from harness.core.params import LayerParams, Params, init_params
from harness.core.spec import CellSpec
from implementations.numpy import gated_linear as gl

CELLS = list(cells.GATED_LINEAR_CELLS)


def _setting(cell, T=6, B=2, I=3, H=4, L=2, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed + 10)
    spec = CellSpec(cell, I, H, L)
    p = init_params(spec, seed=seed, dtype=dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L, B, H)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dhT = rng.standard_normal((L, B, H)).astype(dtype)
    return spec, p, x, h0, dy, dhT


def _loss(spec, p, x, h0, dy, dhT):
    y, hT = gl.forward(spec, p, x, h0)
    return float((dy * y).sum() + (dhT * hT).sum())


@pytest.mark.parametrize("cell", CELLS)
def test_bptt_matches_central_differences(cell):
    spec, p, x, h0, dy, dhT = _setting(cell)
    g = gl.vjp(spec, p, x, h0, dy, dhT)
    rng = np.random.default_rng(5)
    eps = 1e-6

    def check(arr, grad, name):
        v = rng.standard_normal(grad.shape)
        base = arr.copy()
        arr[...] = base + eps * v
        lp = _loss(spec, p, x, h0, dy, dhT)
        arr[...] = base - eps * v
        lm = _loss(spec, p, x, h0, dy, dhT)
        arr[...] = base
        fd = (lp - lm) / (2 * eps)
        an = float((grad * v).sum())
        assert abs(fd - an) <= 1e-7 * max(1.0, abs(an)), (name, fd, an)

    for (name, arr), (gname, grad) in zip(p.items(), g.params.items()):
        assert name == gname  # exactly the cell's own parameters, in the same structure
        check(arr, grad, name)
    assert [n for n, _ in g.params.items()] == [n for n, _ in p.items()]
    check(x, g.dx, "x")
    check(h0, g.dstate, "h0")


@pytest.mark.parametrize("cell", CELLS)
def test_a_wrong_gradient_would_be_caught(cell):
    """The check above can fail: a gradient off by 1 % in one parameter disagrees with the differences."""
    spec, p, x, h0, dy, dhT = _setting(cell, L=1)
    g = gl.vjp(spec, p, x, h0, dy, dhT)
    n = "lam" if cell == "rglru" else "b_ih"
    arr, grad = getattr(p.layers[0], n), getattr(g.params.layers[0], n)
    eps = 1e-6
    arr[0] += eps
    lp = _loss(spec, p, x, h0, dy, dhT)
    arr[0] -= 2 * eps
    lm = _loss(spec, p, x, h0, dy, dhT)
    fd = (lp - lm) / (2 * eps)
    assert abs(fd - grad[0]) <= 1e-7 * max(1, abs(fd))
    assert abs(fd - 1.01 * grad[0]) > 1e-7 * max(1, abs(fd))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [1, 5, 12, 40])
def test_rtrl_equals_bptt(cell, bias, chunk):
    """Per step (chunk 1) and in blocks: one that divides T unevenly (5), one of exactly T, one past T."""
    spec, p, x, h0, dy, dhT = _setting(cell, T=12, B=3, I=5, H=6, L=1, seed=3)
    if not bias:
        spec = CellSpec(cell, 5, 6, 1, bias=False)
        p = init_params(spec, seed=3)
    g = gl.vjp(spec, p, x, h0, dy, dhT)
    pr, dh0 = gl.rtrl(spec, p, x, h0, dy, dhT, chunk=chunk)
    for (n, a), (_, b) in zip(pr.items(), g.params.items()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=n)
    assert [n for n, _ in pr.items()] == [n for n, _ in p.items()]
    np.testing.assert_allclose(dh0, g.dstate, rtol=1e-10, atol=1e-12)


def test_rtrl_blocks_keep_the_gradient_of_every_prefix():
    """A block boundary is a point where the online gradient is exact: RTRL over the first t steps equals
    BPTT over those t steps for every t that ends a block, with cotangents at every step (dy) and none."""
    spec, p, x, h0, dy, _ = _setting("minlstm", T=10, B=2, L=1, seed=4)
    for t in (4, 8, 10):
        for d in (dy[:t], None):
            want = gl.vjp(spec, p, x[:t], h0, d, None if d is not None else np.ones((1, 2, 4)))
            got, _ = gl.rtrl(spec, p, x[:t], h0, d, None if d is not None else np.ones((1, 2, 4)), chunk=4)
            np.testing.assert_allclose(got.flat(), want.params.flat(), rtol=1e-10, atol=1e-12)


def test_rtrl_block_size_is_checked():
    spec, p, x, h0, dy, dhT = _setting("mingru", L=1)
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(InputError, match="chunk: got"):
            gl.rtrl(spec, p, x, h0, dy, dhT, chunk=bad)


@pytest.mark.parametrize("cell", CELLS)
def test_truncated_bptt_cuts_where_torch_and_jax_cut(cell):
    """NumPy tBPTT(k) against an independent implementation (torch's detach, JAX's stop_gradient), and it
    differs from full BPTT (a cut that cut nothing would pass the first check with k ≥ T)."""
    from implementations import registry
    spec, p, x, h0, dy, dhT = _setting(cell, T=11, L=2, seed=6)
    ref = registry.instance("numpy", "cpu").vjp(spec, p, x, h0, dy, dhT, algorithm="tbptt", truncation=4)
    assert ref.dx.shape == x.shape and ref.dstate.shape == h0.shape
    full = gl.vjp(spec, p, x, h0, dy, dhT)
    assert np.abs(full.params.flat() - ref.params.flat()).max() > 1e-3
    for name in ("torch-cell", "jax"):
        if not registry.describe(name, "cpu").available:
            continue
        g = registry.instance(name, "cpu").vjp(spec, p, x, h0, dy, dhT, algorithm="tbptt", truncation=4)
        np.testing.assert_allclose(g.params.flat(), ref.params.flat(), rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(g.dx, ref.dx, rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(g.dstate, ref.dstate, rtol=1e-10, atol=1e-12, err_msg=name)


def test_rtrl_of_stacked_layers_says_it_is_not_there():
    spec, p, x, h0, dy, dhT = _setting("mingru", L=2)
    with pytest.raises(NotImplementedError, match="one layer only"):
        gl.rtrl(spec, p, x, h0, dy, dhT)


def test_the_cells_are_defined_once_with_exactly_their_parameters():
    assert cells.names(gated_linear=True) == cells.GATED_LINEAR_CELLS
    spec = CellSpec("rglru", 8, 4)
    assert spec.layer_shapes(0) == {"w_ih": (12, 8), "b_ih": (12,), "lam": (4,)}
    assert spec.num_params == 12 * 8 + 12 + 4
    p = init_params(spec, seed=1)
    assert [n for n, _ in p.items()] == ["l0.w_ih", "l0.b_ih", "l0.lam"] and p.layers[0].w_hh is None
    assert Params.from_flat(spec, p.flat()).flat().tolist() == p.flat().tolist()
    # RTRL's influence is B·P, not B·H·P; no recurrent GEMM
    d = cells.get("mingru")
    assert d.rtrl_influence_elements(1, 256, CellSpec("mingru", 256, 256).num_params) == 2 * 256 * 257
    assert d.step_flops(1, 256, 256) == 2 * 256 * 2 * 256 and d.recurrent_step_flops(1, 256) == 0
    # a w_hh where the cell has none is refused by name
    bad = Params([LayerParams(w_ih=p.layers[0].w_ih, w_hh=np.zeros((12, 4)), b_ih=p.layers[0].b_ih,
                              lam=p.layers[0].lam)])
    with pytest.raises(InputError, match="a rglru layer has only w_ih, b_ih, lam"):
        bad.validate(spec)
    with pytest.raises(InputError, match="no recurrent matrix w_hh"):
        init_params(spec, init="orthogonal", rho=0.9)
    # no backend claims them by default: a plug-in must name them
    from implementations.base import BackendBase
    assert not set(BackendBase().supported_cells()) & set(cells.GATED_LINEAR_CELLS)


@pytest.mark.parametrize("cell", CELLS)
def test_the_parallel_scan_equals_the_sequential_one(cell):
    spec, p, x, h0, _, _ = _setting(cell, T=37, B=2, I=3, H=5, L=2)
    ys, hs = gl.forward(spec, p, x, h0)
    yp, hp = gl.forward(spec, p, x, h0, scan="parallel")
    np.testing.assert_allclose(yp, ys, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hp, hs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_parallel_scan_stays_right_at_T_4096(cell):
    """Products of the a_t underflow over thousands of steps; the scan must still give the states."""
    spec, p, x, h0, _, _ = _setting(cell, T=4096, B=2, I=3, H=8, L=1, dtype="float32")
    ref, _ = gl.forward(spec, p.astype("float64"), x.astype(np.float64), h0.astype(np.float64))
    y32, _ = gl.forward(spec, p, x, h0, scan="parallel")
    err = np.max(np.abs(y32 - ref)) / np.max(np.abs(ref))
    assert np.isfinite(y32).all() and err < 1e-4, err


@pytest.mark.parametrize("cell", CELLS)
def test_hidden_gradients_are_the_product_of_the_a_t(cell):
    spec, p, x, _, _, _ = _setting(cell, T=50, L=2)
    dh = np.random.default_rng(1).standard_normal((x.shape[1], 4))
    g = gl.hidden_grads(spec, p, x, dh)
    xin = x
    for lp in p.layers:
        a, u, _ = gl.coefficients(cell, xin @ lp.w_ih.T + lp.b_ih, lp.lam)
        xin = gl.linear_scan(a, u, np.zeros_like(dh))
    prod = dh * np.cumprod(a[::-1][:-1], axis=0)[::-1]
    np.testing.assert_allclose(g[:-1], prod, rtol=1e-12)
    # and the full BPTT with only the last layer's final-state cotangent gives a_1 ⊙ g_1 for h_0
    dhT = np.zeros((2, x.shape[1], 4))
    dhT[-1] = dh
    np.testing.assert_allclose(gl.vjp(spec, p, x, None, None, dhT).dstate[-1], a[0] * g[0], rtol=1e-12)


def test_rglru_init_draws_the_papers_range():
    lam = init_params(CellSpec("rglru", 4, 1000), seed=2).layers[0].lam
    a = (1.0 / (1.0 + np.exp(-lam))) ** cells.RGLRU_C
    assert a.min() >= 0.9 - 1e-12 and a.max() <= 0.999 + 1e-12
    assert abs(a.mean() - 0.9495) < 0.01  # uniform in [0.9, 0.999]


def test_bad_input_is_named():
    spec, p, x, h0, _, _ = _setting("mingru", L=1)
    with pytest.raises(InputError, match="allowed: sequential, parallel"):
        gl.forward(spec, p, x, h0, scan="blelloch")
    with pytest.raises(InputError, match="this reference runs mingru, minlstm, rglru"):
        gl.forward(CellSpec("gru", 3, 4), init_params(CellSpec("gru", 3, 4)), x)
    with pytest.raises(InputError, match="expected \\(T, B, 3\\)"):
        gl.forward(spec, p, x[:, :, :2], None)
    with pytest.raises(InputError, match="state: got shape"):
        gl.forward(spec, p, x, h0[:, :1])


def test_the_numpy_backend_runs_them_through_the_common_interface():
    from implementations import registry
    be = registry.instance("numpy", "cpu")
    spec, p, x, h0, dy, dhT = _setting("rglru", T=9, L=1)
    assert set(cells.GATED_LINEAR_CELLS) <= set(be.supported_cells())
    y, hT = be.forward(spec, p, x, h0)
    np.testing.assert_array_equal(y, gl.forward(spec, p, x, h0)[0])
    gb = be.vjp(spec, p, x, h0, dy, dhT)
    gr = be.vjp(spec, p, x, h0, dy, dhT, algorithm="rtrl")
    assert gr.extra["algorithm"] == "rtrl"
    np.testing.assert_allclose(gr.params.flat(), gb.params.flat(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gr.dstate, gb.dstate, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(gr.dx, gb.dx)
    assert "one layer" in be.supports(CellSpec("rglru", 3, 4, 2), algorithm="rtrl")
    assert be.supports(spec, algorithm="tbptt") is None
    # torch and JAX do not claim them (yet): the suites ask, and skip with the reason
    from implementations.base import BackendBase
    assert "does not support cell 'mingru'" in BackendBase().supports(CellSpec("mingru", 3, 4))


def test_rtrl_memory_is_flat_in_T_and_bptt_memory_is_not():
    from implementations import registry
    be = registry.instance("numpy", "cpu")
    peaks = {}
    for T in (2 * gl.RTRL_BLOCK, 400):  # from two full blocks on: the same buffers at any T
        spec, p, x, _, dy, _ = _setting("mingru", T=T, B=2, I=16, H=32, L=1)
        for alg in ("bptt", "rtrl"):
            peaks[alg, T] = be.peak_memory(spec, p, x, dy, None, algorithm=alg)["peak_bytes"]
    assert peaks["rtrl", 400] < 1.05 * peaks["rtrl", 2 * gl.RTRL_BLOCK]  # independent of T
    assert peaks["bptt", 400] > 4 * peaks["bptt", 2 * gl.RTRL_BLOCK]  # grows with T


def _assert_agrees_with_reference(be, spec, p, x, h0, dy, dhT):
    """Forward, final state, every gradient, dx, dstate and hidden-state gradients equal the NumPy reference's to
    1e-10 (float64); returns the reference's gradients."""
    y, hT = be.forward(spec, p, x, h0)
    yr, hr = gl.forward(spec, p, x, h0)
    np.testing.assert_allclose(y, yr, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hT, hr, rtol=1e-10, atol=1e-12)
    g, gr = be.vjp(spec, p, x, h0, dy, dhT), gl.vjp(spec, p, x, h0, dy, dhT)
    assert [n for n, _ in g.params.items()] == [n for n, _ in gr.params.items()]
    for (n, a), (_, b) in zip(g.params.items(), gr.params.items()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=n)
    np.testing.assert_allclose(g.dx, gr.dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.dstate, gr.dstate, rtol=1e-10, atol=1e-12)
    dh = dhT[-1]
    np.testing.assert_allclose(be.hidden_grads(spec, p, x, dh), gl.hidden_grads(spec, p, x, dh), rtol=1e-10,
                               atol=1e-14)
    return gr


@pytest.mark.parametrize("scan", ["sequential", "parallel"])
@pytest.mark.parametrize("cell", CELLS)
def test_jax_agrees_with_the_reference_to_1e_10_in_float64(cell, scan):
    pytest.importorskip("jax")
    from implementations.jax.backend import JaxBackend
    be = JaxBackend(scan=scan)
    assert be.variant == ("jax-pscan" if scan == "parallel" else "jax")
    spec, p, x, h0, dy, dhT = _setting(cell, T=17, B=2, I=3, H=5, L=2, seed=4)
    gr = _assert_agrees_with_reference(be, spec, p, x, h0, dy, dhT)
    # forward-mode RTRL (jax.jvp through the scan) gives the same parameter gradient
    g_rtrl = be.vjp(spec, p, x, h0, dy, dhT, algorithm="rtrl")
    np.testing.assert_allclose(g_rtrl.params.flat(), gr.params.flat(), rtol=1e-10, atol=1e-12)


def _assert_float32_scan_right_at_T_4096(be):
    """Products of the a_t underflow over 4096 steps; the backend's float32 scan must stay within 1e-4 of float64."""
    for cell in CELLS:
        spec, p, x, h0, _, _ = _setting(cell, T=4096, B=2, I=3, H=8, L=1, dtype="float32")
        ref, _ = gl.forward(spec, p.astype("float64"), x.astype(np.float64), h0.astype(np.float64))
        y, _ = be.forward(spec, p, x, h0)
        err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
        assert np.isfinite(y).all() and err < 1e-4, (cell, err)


def test_jax_parallel_scan_in_float32_at_T_4096():
    pytest.importorskip("jax")
    from implementations.jax.backend import JaxBackend
    be = JaxBackend(scan="parallel")
    _assert_float32_scan_right_at_T_4096(be)
    assert "does not support cell 'lstm'" in be.supports(CellSpec("lstm", 3, 4))
    assert "tbptt" in (be.supports(CellSpec("mingru", 3, 4), algorithm="tbptt") or "")


@pytest.mark.parametrize("variant", ["torch", "torch-cell", "torch-pscan"])
@pytest.mark.parametrize("cell", CELLS)
def test_torch_agrees_with_the_reference_to_1e_10_in_float64(cell, variant):
    pytest.importorskip("torch")
    from implementations.torch import backend as tb
    be = {"torch": tb.TorchBackend, "torch-cell": tb.TorchCellBackend, "torch-pscan": tb.TorchPscanBackend}[variant]()
    spec, p, x, h0, dy, dhT = _setting(cell, T=17, B=2, I=3, H=5, L=2, seed=6)
    _assert_agrees_with_reference(be, spec, p, x, h0, dy, dhT)
    # the prepared (timed) calls run the same computation
    be.prepare_forward(spec, p, x, h0)()
    be.prepare_train(spec, p, x, h0, dy, dhT)()


def test_torch_parallel_scan_in_float32_at_T_4096_and_what_it_refuses():
    pytest.importorskip("torch")
    from implementations.torch import backend as tb
    be = tb.TorchPscanBackend()
    _assert_float32_scan_right_at_T_4096(be)
    assert "does not support cell 'gru'" in be.supports(CellSpec("gru", 3, 4))
    assert be.supports(CellSpec("mingru", 3, 4), algorithm="tbptt")
    assert "does not support cell 'mingru'" in tb.TorchCompileBackend().supports(CellSpec("mingru", 3, 4))


from implementations.numpy.backend import NumpyBackend  # noqa: E402


class WrongGated(NumpyBackend):
    """A plug-in whose hidden-state gradients are off by 0.1 % beyond the last step: the suite must say so."""

    family = "wrong-gated"
    variant = "wrong-gated"
    reference = False

    def _hidden_grads(self, spec, params, x, dh_T, return_cell):
        g = np.array(super()._hidden_grads(spec, params, x, dh_T, return_cell))
        g[:-1] *= 1.001
        return g


def _gated_rows(backend, cell="mingru", dtype="float64"):
    from suites.base import RunContext
    from suites.gradients.suite import SUITE
    case = next(c for c in SUITE.cases("smoke", [backend]) if c.settings["kind"] == "gated" and c.cell == cell
                and c.dtype == dtype)
    return {r["metric"]: r for r in SUITE.run(case, RunContext(preset="smoke"))}


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_the_gradients_suite_checks_every_backend_against_the_exact_product(backend):
    pytest.importorskip({"numpy": "numpy", "torch": "torch", "jax": "jax"}[backend])
    rows = _gated_rows(backend)
    assert rows["check_exact_product"]["status"] == "ok", rows["check_exact_product"]["reason"]
    assert rows["exact_product_rel_err"]["value"] <= 1e-10
    assert rows["grad_norm_h"]["extra"]["theory_kind"] == "exact_product_of_a"


def test_a_backend_off_by_a_tenth_of_a_percent_fails_the_exact_product_check():
    rows = _gated_rows(f"{__name__}:WrongGated")
    assert rows["check_exact_product"]["status"] == "error"
    assert rows["exact_product_rel_err"]["value"] == pytest.approx(1e-3, rel=1e-3)
    assert "FAILED" in rows["check_exact_product"]["reason"]


def test_the_scans_declare_what_they_are():
    """What the suites ask (never the name): the scan form, the gated-only sweep, the path written in the rows."""
    from implementations import registry
    from suites.base import declared, wants_cell
    for name, form, path in (("torch-pscan", "hillis-steele", "hillis-steele-scan"),
                             ("jax-pscan", "odd-even", "lax.associative_scan")):
        if not registry.describe(name, "cpu").available:
            continue
        caps = declared(name, "cpu")
        assert caps["scan_form"] == form and caps["sweep"] == "gated-linear"
        assert registry.instance(name, "cpu").path() == path
        assert wants_cell(caps, "mingru") and not wants_cell(caps, "lstm")
    # torch runs torch-cell's loop for these cells; jax runs them itself
    assert declared("torch", "cpu")["measured_as"]["gated"] == "torch-cell"
    assert declared("jax", "cpu")["measured_as"]["gated"] == "jax"
    assert not wants_cell(declared("torch-compile", "cpu"), "rglru") and wants_cell(declared("torch-compile", "cpu"),
                                                                                      "gru")


def test_the_gradients_suite_gives_each_backend_its_own_cells():
    from suites.gradients.suite import SUITE
    cases = SUITE.cases("smoke", ["numpy", "torch-pscan", "torch-compile"])
    assert {c.cell for c in cases if c.backend == "torch-pscan"} == set(CELLS)
    assert not {c.cell for c in cases if c.backend == "torch-compile"} & set(CELLS)
