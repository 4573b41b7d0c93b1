"""The NumPy reference: finite differences, the worked example of DOMAIN.md §1, tBPTT, hidden_grads."""
import numpy as np
import pytest

from implementations import registry as backends
from harness.core.params import LayerParams, Params, init_params
from harness.core.spec import CELLS, CellSpec
from implementations.numpy import rnn as numpy_rnn
from tests.helpers import problem, rel_err

NP = backends.get("numpy")


def _loss(spec, p, x, state, dy, dfin):
    """L = Σ <dy_t, y_t> + <dh_T, h_T> (+ <dc_T, c_T>) by a plain forward."""
    y, fin = NP.forward(spec, p, x, state)
    val = float((dy * y).sum())
    if spec.is_lstm:
        return val + float((dfin[0] * fin[0]).sum() + (dfin[1] * fin[1]).sum())
    return val + float((dfin * fin).sum())


def _fd(f, a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() w.r.t. every entry of a (perturbed in place)."""
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + eps
        fp = f()
        a[idx] = old - eps
        fm = f()
        a[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_vjp_matches_finite_differences(cell, layers):
    spec = CellSpec(cell, 3, 4, layers)
    pr = problem(spec, T=5, B=2, seed=3)
    p, x, st, dy, dfin = pr["params"], pr["x"], pr["state"], pr["dy"], pr["d_final_state"]
    g = NP.vjp(spec, p, x, st, dy, dfin)
    f = lambda: _loss(spec, p, x, st, dy, dfin)  # noqa: E731 - closures over arrays perturbed in place
    for name, arr in p.items():
        l, n = name.split(".")
        num = _fd(f, arr)
        assert rel_err(getattr(g.params.layers[int(l[1:])], n), num) <= 1e-6, name
    assert rel_err(g.dx, _fd(f, x)) <= 1e-6
    parts = st if spec.is_lstm else (st,)
    dparts = g.dstate if spec.is_lstm else (g.dstate,)
    for s, ds in zip(parts, dparts):
        assert rel_err(ds, _fd(f, s)) <= 1e-6


def test_bias_false_has_no_bias_grads_and_matches_fd():
    spec = CellSpec("gru", 2, 3, 1, bias=False)
    pr = problem(spec, T=4, B=2)
    p = pr["params"]
    assert p.layers[0].b_ih is None
    g = NP.vjp(spec, p, pr["x"], pr["state"], pr["dy"], pr["d_final_state"])
    assert g.params.layers[0].b_ih is None and g.params.layers[0].b_hh is None
    f = lambda: _loss(spec, p, pr["x"], pr["state"], pr["dy"], pr["d_final_state"])  # noqa: E731
    assert rel_err(g.params.layers[0].w_hh, _fd(f, p.layers[0].w_hh)) <= 1e-6


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_worked_forget_gate_example():
    """DOMAIN.md §1: W_f·[h, x] = [91, 175, 133], + b_f = [92, 177, 136], σ ≈ [1, 1, 1]; input gate pre-activation."""
    W_f = np.array([[1, 2, 3, 4, 5, 6], [5, 6, 7, 8, 9, 10], [3, 4, 5, 6, 7, 8]], dtype=float)
    hx = np.array([1, 2, 3, 4, 5, 6], dtype=float)
    b_f = np.array([1, 2, 3], dtype=float)
    assert (W_f @ hx).tolist() == [91, 175, 133]
    assert (W_f @ hx + b_f).tolist() == [92, 177, 136]
    np.testing.assert_allclose(_sigmoid(W_f @ hx + b_f), [1, 1, 1], atol=1e-30)
    W_i = np.array([[1] * 6, [2] * 6, [3] * 6], dtype=float)
    # DOMAIN.md quotes [22, 42, 62] for the input gate; the arithmetic gives 21·k + 1 = [22, 43, 64]
    # (the quoted figures drop the bias on rows 2 and 3). We test the arithmetic.
    assert (W_i @ hx + 1).tolist() == [22, 43, 64]
    assert (np.array([1, 2, 3]) * np.array([3, 2, 1])).tolist() == [3, 4, 3]

    # The same numbers through our LSTM: H=3, input 3, [h, x] split into w_hh (first 3 cols) and w_ih.
    H = 3
    spec = CellSpec("lstm", 3, H)
    w_ih = np.zeros((4 * H, 3))
    w_hh = np.zeros((4 * H, H))
    b = np.zeros(4 * H)
    w_hh[0:H], w_ih[0:H], b[0:H] = W_i[:, :3], W_i[:, 3:], 1.0       # input gate i
    w_hh[H:2 * H], w_ih[H:2 * H], b[H:2 * H] = W_f[:, :3], W_f[:, 3:], b_f  # forget gate f
    p = Params([LayerParams(w_ih, w_hh, b, np.zeros(4 * H))])
    h0 = np.array([1.0, 2, 3]).reshape(1, 1, H)
    c0 = np.array([3.0, 2, 1]).reshape(1, 1, H)
    x = np.array([4.0, 5, 6]).reshape(1, 1, 3)
    _, (h1, c1) = NP.forward(spec, p, x, (h0, c0))
    # g = tanh(0) = 0 and o = σ(0) = 1/2: c1 = f ⊙ c0 + i ⊙ 0 = σ([92, 177, 136]) ⊙ c0 ≈ c0
    np.testing.assert_allclose(c1.ravel(), _sigmoid(np.array([92.0, 177, 136])) * c0.ravel(), rtol=1e-15)
    np.testing.assert_allclose(h1.ravel(), 0.5 * np.tanh(c1.ravel()), rtol=1e-15)


def test_pytorch_two_biases_are_summed():
    """A forget bias of 1 written into both b_ih and b_hh is an effective 2 (DOMAIN.md §1)."""
    spec = CellSpec("lstm", 1, 1)
    z = np.zeros((4, 1))
    b = np.array([0.0, 1.0, 0.0, 0.0])
    p = Params([LayerParams(z.copy(), z.copy(), b.copy(), b.copy())])
    x = np.zeros((1, 1, 1))
    c0 = np.ones((1, 1, 1))
    _, (_, c1) = NP.forward(spec, p, x, (np.zeros((1, 1, 1)), c0))
    assert c1.item() == pytest.approx(_sigmoid(2.0))


@pytest.mark.parametrize("cell", CELLS)
def test_tbptt_k_at_least_T_equals_bptt_and_k_below_T_differs(cell):
    spec = CellSpec(cell, 3, 5, 2)
    pr = problem(spec, T=9, B=3, seed=5)
    args = (spec, pr["params"], pr["x"], pr["state"], pr["dy"], pr["d_final_state"])
    full = NP.vjp(*args)
    same = NP.vjp(*args, algorithm="tbptt", truncation=9)
    for (n, a), (_, b) in zip(same.params.items(), full.params.items()):
        np.testing.assert_array_equal(a, b, err_msg=n)
    np.testing.assert_array_equal(same.dx, full.dx)
    cut = NP.vjp(*args, algorithm="tbptt", truncation=3)
    assert rel_err(cut.params.layers[0].w_hh, full.params.layers[0].w_hh) > 1e-3


def test_tbptt_matches_chunked_reference():
    """tBPTT(k) equals the sum of per-chunk BPTT with the state carried forward but detached."""
    spec = CellSpec("rnn_tanh", 2, 3)
    pr = problem(spec, T=6, B=2, seed=9)
    p, x, st, dy = pr["params"], pr["x"], pr["state"], pr["dy"]
    dfin = pr["d_final_state"]
    k = 2
    cut = NP.vjp(spec, p, x, st, dy, dfin, algorithm="tbptt", truncation=k)
    # reference: run chunks separately; only the final chunk sees d_final_state
    total = None
    h = st
    for c in range(0, 6, k):
        xc, dyc = x[c:c + k], dy[c:c + k]
        g = NP.vjp(spec, p, xc, h, dyc, dfin if c + k == 6 else None)
        total = g.params if total is None else Params(
            [LayerParams(*(a + b for a, b in zip((t.w_ih, t.w_hh, t.b_ih, t.b_hh), (u.w_ih, u.w_hh, u.b_ih, u.b_hh))))
             for t, u in zip(total.layers, g.params.layers)])
        _, h = NP.forward(spec, p, xc, h)
    assert rel_err(cut.params.flat(), total.flat()) <= 1e-12


@pytest.mark.parametrize("cell", CELLS)
def test_hidden_grads_equal_finite_differences_of_probe(cell):
    """∂L/∂h_t by perturbing h_t inside the recurrence (a probe added after step t) vs hidden_grads."""
    spec = CellSpec(cell, 2, 3, 2)
    pr = problem(spec, T=6, B=2, seed=11, with_state=False)
    p, x, dh_T = pr["params"], pr["x"], pr["dh_T"]
    got = NP.hidden_grads(spec, p, x, dh_T)
    np.testing.assert_array_equal(got[-1], dh_T)
    # Probe: run layer by layer; in the last layer, add δ to h_t and continue the recurrence from there.
    T = x.shape[0]
    y_low, _ = NP.forward(CellSpec(cell, 2, 3, 1), Params(p.layers[:1]), x)
    top = CellSpec(cell, 3, 3, 1)
    ptop = Params(p.layers[1:])
    eps = 1e-6
    for t in (0, 2, T - 2):
        num = np.zeros((2, 3))
        for idx in np.ndindex(num.shape):
            vals = []
            for s in (eps, -eps):
                _, st = NP.forward(top, ptop, y_low[:t + 1])
                if spec.is_lstm:
                    h, c = st
                    h = h.copy()
                    h[(0,) + idx] += s
                    st = (h, c)
                else:
                    st = st.copy()
                    st[(0,) + idx] += s
                _, fin = NP.forward(top, ptop, y_low[t + 1:], st) if t + 1 < T else (None, st)
                hT = fin[0] if spec.is_lstm else fin
                vals.append(float((hT[0] * dh_T).sum()))
            num[idx] = (vals[0] - vals[1]) / (2 * eps)
        assert rel_err(got[t], num) <= 1e-6, t


def test_hidden_grads_return_cell_only_for_lstm():
    spec = CellSpec("lstm", 2, 3)
    pr = problem(spec, T=4, B=1, with_state=False)
    dh, dc = NP.hidden_grads(spec, pr["params"], pr["x"], pr["dh_T"], return_cell=True)
    assert dh.shape == dc.shape == (4, 1, 3)
    with pytest.raises(ValueError, match="return_cell"):
        NP.hidden_grads(CellSpec("gru", 2, 3), init_params(CellSpec("gru", 2, 3)), pr["x"], pr["dh_T"],
                        return_cell=True)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_close_to_float64(cell):
    spec = CellSpec(cell, 16, 32, 2)
    pr = problem(spec, T=20, B=4, seed=2)
    p32 = pr["params"].astype("float32")
    cast = lambda s: tuple(a.astype(np.float32) for a in s) if isinstance(s, tuple) else s.astype(np.float32)  # noqa
    y64, _ = NP.forward(spec, pr["params"], pr["x"], pr["state"])
    y32, _ = NP.forward(spec, p32, pr["x"].astype(np.float32), cast(pr["state"]))
    assert y32.dtype == np.float32
    assert rel_err(y32, y64) <= 1e-5
    g64 = NP.vjp(spec, pr["params"], pr["x"], pr["state"], pr["dy"], pr["d_final_state"])
    g32 = NP.vjp(spec, p32, pr["x"].astype(np.float32), cast(pr["state"]), pr["dy"].astype(np.float32),
                 cast(pr["d_final_state"]))
    assert rel_err(g32.params.flat(), g64.params.flat()) <= 1e-5
    assert rel_err(g32.dx, g64.dx) <= 1e-5


def test_forward_does_not_modify_inputs():
    spec = CellSpec("lstm", 3, 4, 2)
    pr = problem(spec, T=5, B=2)
    before = [a.copy() for _, a in pr["params"].items()] + [pr["x"].copy(), pr["state"][0].copy()]
    NP.vjp(spec, pr["params"], pr["x"], pr["state"], pr["dy"], pr["d_final_state"])
    after = [a for _, a in pr["params"].items()] + [pr["x"], pr["state"][0]]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_internal_lstm_permutation_is_an_involution():
    a = np.arange(8.0)
    perm = numpy_rnn._gate_perm(a, 2, numpy_rnn._LSTM_PERM)
    assert perm.tolist() == [0, 1, 2, 3, 6, 7, 4, 5]
    np.testing.assert_array_equal(numpy_rnn._gate_perm(perm, 2, numpy_rnn._LSTM_PERM), a)


@pytest.mark.parametrize("cell", CELLS)
def test_batch_parallel_equals_serial(cell):
    """Splitting the batch over threads gives the same numbers as one thread (up to GEMM rounding)."""
    from implementations.numpy import batch_parallel
    spec = CellSpec(cell, 6, 8, 2)
    pr = problem(spec, T=7, B=33, seed=4)
    args = (spec, pr["params"], pr["x"], pr["state"], pr["dy"], pr["d_final_state"])
    try:
        batch_parallel.set_num_threads(1)
        g1 = NP.vjp(*args)
        h1 = NP.hidden_grads(spec, pr["params"], pr["x"], pr["dh_T"][:33])
        batch_parallel.set_num_threads(3)
        g3 = NP.vjp(*args)
        h3 = NP.hidden_grads(spec, pr["params"], pr["x"], pr["dh_T"][:33])
    finally:
        batch_parallel.set_num_threads(None)
    assert rel_err(g3.params.flat(), g1.params.flat()) <= 1e-13
    assert rel_err(g3.dx, g1.dx) <= 1e-13
    assert rel_err(g3.dstate, g1.dstate) <= 1e-13
    assert rel_err(h3, h1) <= 1e-13


def test_batch_parallel_propagates_worker_errors():
    from implementations.numpy.batch_parallel import batch_parallel, set_num_threads
    seen = []

    def fn(b0, b1):
        seen.append((b0, b1))
        if b0 > 0:
            raise RuntimeError("boom in a worker")
    set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="boom in a worker"):
            batch_parallel(fn, 32)
    finally:
        set_num_threads(None)
    assert sorted(seen) == [(0, 16), (16, 32)]
    with pytest.raises(ValueError, match="threads: got 0"):
        set_num_threads(0)
