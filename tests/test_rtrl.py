"""RTRL (implementations/numpy_rtrl.py) against BPTT, truncated BPTT, and bad input."""
import numpy as np
import pytest

from implementations import registry as backends
from harness.core.spec import CELLS, CellSpec
from implementations.numpy import rnn as numpy_rnn
from implementations.numpy import rtrl as numpy_rtrl
from tests.helpers import problem, rel_err

NP = backends.get("numpy")


def _grads(spec, pr, **kw):
    return NP.vjp(spec, pr["params"], pr["x"], pr["state"], pr["dy"], pr["d_final_state"], **kw)


def _max_err(a, b):
    return max(rel_err(a.params.flat(), b.params.flat()), rel_err(a.dstate, b.dstate), rel_err(a.dx, b.dx))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("T", [1, 10, 50, 200])
def test_rtrl_equals_bptt_float64(cell, layers, T):
    spec = CellSpec(cell, 3, 4, layers)
    pr = problem(spec, T=T, B=2, seed=T + layers)
    g_b = _grads(spec, pr)
    g_r = _grads(spec, pr, algorithm="rtrl")
    # The parameter gradient and dstate come from RTRL itself; check them separately from dx.
    assert rel_err(g_r.params.flat(), g_b.params.flat()) <= 1e-10
    assert rel_err(g_r.dstate, g_b.dstate) <= 1e-10
    assert rel_err(g_r.dx, g_b.dx) <= 1e-10
    assert g_r.extra["algorithm"] == "rtrl" and g_r.extra["dx_method"] == "bptt"


@pytest.mark.parametrize("cell", CELLS)
def test_rtrl_equals_bptt_float32_and_small_chunks(cell):
    spec = CellSpec(cell, 5, 6, 2)
    pr = problem(spec, T=50, B=3, seed=7, dtype="float32")
    g_b = _grads(spec, pr)
    g_r = _grads(spec, pr, algorithm="rtrl")
    assert g_r.params.dtype == np.float32
    assert _max_err(g_r, g_b) <= 1e-4
    # Column chunks narrower than a parameter block (many chunks, chunks split blocks) change nothing.
    pr64 = problem(spec, T=7, B=3, seed=7)
    ref = _grads(spec, pr64)
    for chunk in (1, 5, 64):
        pg, ds = numpy_rtrl.rtrl_grads(spec, pr64["params"], pr64["x"], pr64["state"], pr64["dy"],
                                       pr64["d_final_state"], chunk=chunk)
        assert rel_err(pg.flat(), ref.params.flat()) <= 1e-10
        assert rel_err(ds, ref.dstate) <= 1e-10


@pytest.mark.parametrize("cell", CELLS)
def test_rtrl_no_bias_no_state_no_cotangents(cell):
    spec = CellSpec(cell, 3, 5, 2, bias=False)
    pr = problem(spec, T=8, B=2, seed=1)
    p, x = pr["params"], pr["x"]
    a = NP.vjp(spec, p, x, None, pr["dy"], None, algorithm="rtrl")
    b = NP.vjp(spec, p, x, None, pr["dy"], None)
    assert _max_err(a, b) <= 1e-10
    with pytest.warns(RuntimeWarning, match="neither dy nor d_final_state"):
        z = NP.vjp(spec, p, x, None, None, None, algorithm="rtrl")  # L = 0: every gradient is exactly zero
    assert not z.params.flat().any() and not z.dx.any()
    # without dx: the RTRL pass only
    g = numpy_rtrl.vjp(spec, p, x, None, pr["dy"], None, with_dx=False)
    assert g.dx is None and rel_err(g.params.flat(), b.params.flat()) <= 1e-10


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_tbptt(cell, layers):
    spec = CellSpec(cell, 3, 4, layers)
    T = 12
    pr = problem(spec, T=T, B=2, seed=5)
    full = _grads(spec, pr)
    args = (spec, pr["params"], pr["x"], pr["state"], pr["dy"], pr["d_final_state"])
    for k in (T, T + 5):  # k >= T never cuts: exactly BPTT
        assert _max_err(_grads(spec, pr, algorithm="tbptt", truncation=k), full) == 0.0
        assert _max_err(numpy_rtrl.tbptt_chunked_vjp(*args, truncation=k), full) <= 1e-14
    for k in (1, 3, 5):
        cut = _grads(spec, pr, algorithm="tbptt", truncation=k)
        diff = rel_err(cut.params.flat(), full.params.flat())
        assert diff > 1e-4, (k, diff)  # a biased gradient, visibly different
        chunked = numpy_rtrl.tbptt_chunked_vjp(*args, truncation=k)
        assert _max_err(chunked, cut) <= 1e-12  # chunking changes memory, not numbers


@pytest.mark.parametrize("kw", [dict(algorithm="tbptt", truncation=0), dict(algorithm="tbptt", truncation=2.5),
                                dict(algorithm="tbptt", truncation=True), dict(algorithm="tbptt"),
                                dict(algorithm="bptt", truncation=3), dict(algorithm="rtrl", truncation=3),
                                dict(algorithm="forward-mode")])
def test_bad_algorithm_arguments(kw):
    spec = CellSpec("gru", 3, 4)
    pr = problem(spec, T=4, B=2)
    with pytest.raises(ValueError) as e:
        _grads(spec, pr, **kw)
    assert ("truncation" in str(e.value)) or ("algorithm" in str(e.value))
    with pytest.raises(ValueError, match="truncation"):
        numpy_rtrl.tbptt_chunked_vjp(spec, pr["params"], pr["x"], None, None, None, truncation=0)


def test_rtrl_refuses_more_than_free_memory(monkeypatch):
    spec = CellSpec("lstm", 3, 4, 2)
    pr = problem(spec, T=4, B=2)
    need = numpy_rtrl.rtrl_memory(spec, 2, "float64")["planned"]
    monkeypatch.setattr(numpy_rtrl, "mem_available_bytes", lambda: need - 1)

    def boom(*a, **k):  # refusal must come before any allocation or compute
        raise AssertionError("computed before refusing")
    monkeypatch.setattr(numpy_rtrl, "_LayerRTRL", boom)
    with pytest.raises(ValueError) as e:
        _grads(spec, pr, algorithm="rtrl")
    msg = str(e.value)
    assert str(need) in msg and str(need - 1) in msg and "MemAvailable" in msg
    monkeypatch.setattr(numpy_rtrl, "mem_available_bytes", lambda: None)  # unknown: no refusal
    with pytest.raises(AssertionError):
        _grads(spec, pr, algorithm="rtrl")


def test_rtrl_memory_scaling():
    """Theory: influence ∝ B·H·P, independent of T; LSTM carries two influence matrices."""
    m = lambda cell, H, B=1: numpy_rtrl.rtrl_memory(CellSpec(cell, H, H), B, "float64")  # noqa: E731
    a, b = m("rnn_tanh", 64), m("rnn_tanh", 128)
    assert 7.5 < b["influence"] / a["influence"] < 8.5  # H·P ∝ H³ with I = H
    assert m("rnn_tanh", 64, 8)["influence"] == 8 * a["influence"]
    spec = CellSpec("lstm", 8, 8)
    lay = numpy_rtrl._Layout(spec)
    assert m("lstm", 8)["influence"] == 2 * 8 * (spec.num_params + 2 * 8) * 8
    assert lay.Q == spec.num_params + 2 * 8
    assert numpy_rtrl.mem_available_bytes() is None or numpy_rtrl.mem_available_bytes() > 0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rtrl_chunk_workers(cell):
    """Chunks dealt to several worker threads (threads=3) give the same numbers."""
    spec = CellSpec(cell, 4, 5, 2)
    pr = problem(spec, T=6, B=2, seed=11)
    ref = _grads(spec, pr)
    pg, ds = numpy_rtrl.rtrl_grads(spec, pr["params"], pr["x"], pr["state"], pr["dy"], pr["d_final_state"],
                                   chunk=7, threads=3)
    assert rel_err(pg.flat(), ref.params.flat()) <= 1e-10
    assert rel_err(ds, ref.dstate) <= 1e-10


def test_rtrl_default_workers_follow_the_blas_threads(monkeypatch):
    """By default RTRL runs as many chunk workers as the BLAS had threads (capped by the usable cores), and
    limits the BLAS itself to one thread meanwhile; with a 1-thread BLAS it stays serial."""
    import os
    spec = CellSpec("rnn_tanh", 4, 5, 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    monkeypatch.setattr(numpy_rtrl, "_blas_threads", lambda: 1)
    assert numpy_rtrl._workers(spec, 2, 128, None) == (1, None)
    assert numpy_rtrl._workers(spec, 2, 128, 3)[0] == min(3, cores)  # explicit threads win
    if numpy_rtrl._tpc is None:
        pytest.skip("threadpoolctl is not installed: no BLAS limiter to check")
    monkeypatch.setattr(numpy_rtrl, "_blas_threads", lambda: 64)
    n, limiter = numpy_rtrl._workers(spec, 2, 128, None)
    try:
        assert n == cores and limiter is not None
    finally:
        if limiter is not None:
            limiter.unregister()
