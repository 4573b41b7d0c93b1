"""The JAX backend against the NumPy reference: forward, BPTT, forward-mode RTRL, truncated BPTT, hidden-state
gradients, the timing hooks, the compile cache, and the GPU selection logic (monkeypatched, no GPU needed).

Equivalence is ‖a − b‖ / ‖b‖ in the canonical layout: float64 JAX vs float64 NumPy ≤ 1e-10; float32 JAX vs
float64 NumPy on the same (float32-representable) numbers ≤ 1e-5. JAX compiles are slow on a small shared CPU,
so one backend instance is shared (its executables are cached) and the shapes are tiny.
"""
from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from implementations import registry as backends  # noqa: E402
from harness.core.spec import CELLS, CellSpec  # noqa: E402
from implementations.jax import backend as jb_mod  # noqa: E402
from implementations.jax.backend import JaxBackend  # noqa: E402
from tests.helpers import problem, rel_err  # noqa: E402

EXACT = 1e-10
F32 = 1e-5
CONFIGS = {  # name: (num_layers, bias, T, B, I, H)
    "L1-bias": (1, True, 6, 2, 3, 4),
    "L2-nobias": (2, False, 5, 3, 2, 3),
}


@pytest.fixture(scope="module")
def jb() -> JaxBackend:
    return backends.get("jax")


@pytest.fixture(scope="module")
def nb():
    return backends.get("numpy")


def case(cell: str, cfg, seed: int = 0, dtype: str = "float64"):
    L, bias, T, B, I, H = cfg
    spec = CellSpec(cell, I, H, num_layers=L, bias=bias)
    return spec, problem(spec, T, B, seed=seed, dtype=dtype)


def parts(s):
    return list(s) if isinstance(s, tuple) else [s]


def assert_grads(g, ref, tol):
    names = [n for n, _ in ref.params.items()]
    assert [n for n, _ in g.params.items()] == names
    ref_p = dict(ref.params.items())
    for n, a in g.params.items():
        assert rel_err(a, ref_p[n]) <= tol, f"{n}: rel err {rel_err(a, ref_p[n]):.2e}"
    assert rel_err(g.dx, ref.dx) <= tol, f"dx: {rel_err(g.dx, ref.dx):.2e}"
    assert len(parts(g.dstate)) == len(parts(ref.dstate))
    for a, b in zip(parts(g.dstate), parts(ref.dstate)):
        assert rel_err(a, b) <= tol, f"dstate: {rel_err(a, b):.2e}"


def check_all(jb, nb, spec, pr, tol, ref_pr=None):
    """Forward, vjp (every grad) and hidden grads of ``jb`` on ``pr`` vs ``nb`` on ``ref_pr`` (default ``pr``)."""
    ref_pr = ref_pr or pr
    args = (pr["params"], pr["x"], pr["state"])
    ref_args = (ref_pr["params"], ref_pr["x"], ref_pr["state"])
    y, fin = jb.forward(spec, *args)
    y0, fin0 = nb.forward(spec, *ref_args)
    assert y.dtype == pr["x"].dtype and y.shape == y0.shape
    assert rel_err(y, y0) <= tol
    for a, b in zip(parts(fin), parts(fin0)):
        assert a.shape == b.shape and rel_err(a, b) <= tol

    g = jb.vjp(spec, *args, pr["dy"], pr["d_final_state"])
    g0 = nb.vjp(spec, *ref_args, ref_pr["dy"], ref_pr["d_final_state"])
    assert g.dx.dtype == pr["x"].dtype
    assert_grads(g, g0, tol)

    if spec.is_lstm:
        dh, dc = jb.hidden_grads(spec, pr["params"], pr["x"], pr["dh_T"], return_cell=True)
        dh0, dc0 = nb.hidden_grads(spec, ref_pr["params"], ref_pr["x"], ref_pr["dh_T"], return_cell=True)
        assert rel_err(dc, dc0) <= tol
    else:
        dh = jb.hidden_grads(spec, pr["params"], pr["x"], pr["dh_T"])
        dh0 = nb.hidden_grads(spec, ref_pr["params"], ref_pr["x"], ref_pr["dh_T"])
    assert dh.shape == (pr["x"].shape[0],) + pr["dh_T"].shape
    assert rel_err(dh, dh0) <= tol
    np.testing.assert_array_equal(dh[-1], pr["dh_T"])  # the last step is dh_T itself


# -- identity and options ------------------------------------------------------------------------------------------
def test_registry_names_variants_and_options():
    a, b = backends.get("jax"), backends.get("jax-unroll8")
    assert isinstance(a, JaxBackend) and isinstance(b, JaxBackend)
    assert (a.variant, a.unroll, a.family) == ("jax", 1, "jax")
    assert (b.variant, b.unroll, b.name) == ("jax-unroll8", 8, "jax-unroll8")
    assert JaxBackend.variant == "jax"  # the class attribute is untouched by an instance's unroll
    assert set(a.algorithms) == {"bptt", "rtrl", "tbptt"} and set(a.devices) == {"cpu", "cuda"}
    assert "unroll=8" in b.path()
    with pytest.raises(ValueError, match="unroll"):
        JaxBackend(unroll=0)
    with pytest.raises(ValueError, match="precision"):
        JaxBackend(precision="tf32")
    with pytest.raises(ValueError, match="rtrl_chunk"):
        JaxBackend(rtrl_chunk=0)
    with pytest.raises(ValueError, match="device"):
        JaxBackend(device="tpu")
    with pytest.raises(TypeError, match="hoist"):
        JaxBackend(hoist="yes")
    # automatic input projection: per step for the CPU inference forward (measured faster), hoisted otherwise
    assert (a.hoist_forward, a.hoist_grads) == (False, True)
    assert (JaxBackend(hoist=True).hoist_forward, JaxBackend(hoist=False).hoist_grads) == (True, False)


def test_x64_is_on_and_versions(jb):
    assert jax.config.jax_enable_x64
    v = jb.versions()
    assert v["jax"] == jax.__version__ and "jaxlib" in v and v["device_kind"]
    assert v["matmul_precision"] == "highest"


# -- equivalence with the NumPy reference ------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", list(CONFIGS), ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_float64_matches_numpy(jb, nb, cell, cfg):
    spec, pr = case(cell, CONFIGS[cfg])
    check_all(jb, nb, spec, pr, EXACT)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_matches_numpy_float64(jb, nb, cell):
    spec, pr32 = case(cell, (2, True, 6, 2, 3, 4), seed=3, dtype="float32")
    # The reference computes in float64 on exactly the float32 numbers, so only rounding differs.
    pr64 = {k: (tuple(a.astype("float64") for a in v) if isinstance(v, tuple) else v.astype("float64"))
            for k, v in pr32.items()}
    check_all(jb, nb, spec, pr32, F32, ref_pr=pr64)


def test_unroll8_equals_unroll1(jb):
    # T = 10: one unrolled iteration of 8 steps plus a remainder of 2. An unrolled scan compiles slowly (8 copies
    # of the step, twice for the gradient), hence one small case of the cheapest cell: unrolling is the
    # scan's business, the cell body is the same code as in the unroll=1 tests.
    u8 = backends.get("jax-unroll8")
    spec, pr = case("rnn_tanh", (1, True, 10, 2, 3, 4), seed=5)
    args = (spec, pr["params"], pr["x"], pr["state"])
    y1, f1 = jb.forward(*args)
    y8, f8 = u8.forward(*args)
    assert rel_err(y8, y1) <= 1e-13
    for a, b in zip(parts(f8), parts(f1)):
        assert rel_err(a, b) <= 1e-13
    assert_grads(u8.vjp(*args, pr["dy"], pr["d_final_state"]), jb.vjp(*args, pr["dy"], pr["d_final_state"]), 1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_other_input_projection_matches_numpy(nb, cell):
    """hoist=True runs the forward that the GPU uses by default; hoist=False a per-step projection in the vjp."""
    spec, pr = case(cell, (2, True, 6, 2, 3, 4), seed=9)
    args = (spec, pr["params"], pr["x"], pr["state"])
    y, fin = JaxBackend(hoist=True).forward(*args)
    y0, fin0 = nb.forward(*args)
    assert rel_err(y, y0) <= EXACT and all(rel_err(a, b) <= EXACT for a, b in zip(parts(fin), parts(fin0)))
    if cell == "gru":
        assert_grads(JaxBackend(hoist=False).vjp(*args, pr["dy"], pr["d_final_state"]),
                     nb.vjp(*args, pr["dy"], pr["d_final_state"]), EXACT)


# -- RTRL (forward mode) -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 10, 50])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_rtrl_forward_mode_equals_numpy_bptt(jb, nb, cell, layers, T):
    spec = CellSpec(cell, 2, 3, num_layers=layers, bias=True)
    pr = problem(spec, T, 2, seed=11)
    args = (spec, pr["params"], pr["x"], pr["state"], pr["dy"], pr["d_final_state"])
    g = jb.vjp(*args, algorithm="rtrl")
    assert g.extra["algorithm"] == "rtrl" and g.extra["mode"].startswith("forward")
    assert_grads(g, nb.vjp(*args), EXACT)


def test_rtrl_chunking_gives_the_same_gradient(nb):
    """Parameter directions pushed forward in chunks (with a padded last chunk) give the same numbers."""
    spec = CellSpec("gru", 2, 3, num_layers=1, bias=True)  # P = 9*2 + 9*3 + 18 = 63 = 6 chunks of 11, padded
    pr = problem(spec, 4, 2, seed=2)
    be = JaxBackend(rtrl_chunk=11)
    args = (spec, pr["params"], pr["x"], pr["state"], pr["dy"], pr["d_final_state"])
    assert_grads(be.vjp(*args, algorithm="rtrl"), nb.vjp(*args), EXACT)


# -- truncated BPTT --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_tbptt_matches_numpy(jb, nb, cell):
    spec, pr = case(cell, CONFIGS["L2-nobias"], seed=7)  # T = 5
    args = (spec, pr["params"], pr["x"], pr["state"], pr["dy"], pr["d_final_state"])
    full = nb.vjp(*args)
    for k in (1, 2, 3):  # k < T: one executable serves every k (k is a runtime argument)
        g = jb.vjp(*args, algorithm="tbptt", truncation=k)
        assert_grads(g, nb.vjp(*args, algorithm="tbptt", truncation=k), EXACT)
        assert rel_err(g.params.flat(), full.params.flat()) > 1e-6  # the cut really changed something
        assert g.extra["truncation"] == k
    jb.vjp(*args)  # compile plain BPTT for these shapes (if not done yet) ...
    n = jb.compile_count
    for k in (5, 9):  # ... which is what k >= T is: no cut ever happens
        assert_grads(jb.vjp(*args, algorithm="tbptt", truncation=k), full, EXACT)
    assert jb.compile_count == n


def test_bad_algorithm_arguments_are_rejected_before_compute(jb):
    spec, pr = case("rnn_tanh", CONFIGS["L1-bias"])
    n = jb.compile_count
    with pytest.raises(ValueError, match="truncation"):
        jb.vjp(spec, pr["params"], pr["x"], algorithm="tbptt")
    with pytest.raises(ValueError, match="algorithm"):
        jb.vjp(spec, pr["params"], pr["x"], algorithm="uoro")
    with pytest.raises(TypeError, match="dtype"):
        jb.forward(spec, pr["params"], pr["x"].astype("float32"))
    assert jb.compile_count == n


# -- timing hooks and the compile cache ----------------------------------------------------------------------------
def test_prepared_callables_match_and_never_compile(jb, nb):
    spec, pr = case("lstm", CONFIGS["L1-bias"])
    p, x = pr["params"], pr["x"]
    fwd = jb.prepare_forward(spec, p, x, pr["state"])
    train = jb.prepare_train(spec, p, x, pr["state"], pr["dy"], pr["d_final_state"])
    n = jb.compile_count
    for _ in range(3):
        y, fin = fwd()
        dp, dx, ds = train()
    assert jb.compile_count == n  # compiled by prepare_*, never inside the callables
    assert isinstance(y, jax.Array) and y.is_fully_addressable
    y0, _ = jb.forward(spec, p, x, pr["state"])
    np.testing.assert_array_equal(np.asarray(y), y0)
    g = jb.vjp(spec, p, x, pr["state"], pr["dy"], pr["d_final_state"])
    assert_grads(types.SimpleNamespace(params=jb._to_params(dp), dx=np.asarray(dx), dstate=jb._to_state(ds)),
                 g, 0.0)
    # prepare_train with default cotangents (zeros for the final state) differentiates Σ<dy, y> only
    dp2, _, _ = jb.prepare_train(spec, p, x, None, pr["dy"])()
    ref = nb.vjp(spec, p, x, None, pr["dy"])
    assert rel_err(jb._to_params(dp2).flat(), ref.params.flat()) <= EXACT
    assert jb.compile_count == n  # same shapes: cached executable reused (None state -> zeros of the same shape)


def test_compile_cache_is_keyed_by_shape_and_dtype(jb):
    spec, pr = case("rnn_tanh", CONFIGS["L1-bias"])
    jb.forward(spec, pr["params"], pr["x"])
    n = jb.compile_count
    jb.forward(spec, pr["params"], pr["x"] * 2)  # same shapes and dtype: no compile
    assert jb.compile_count == n
    jb.forward(spec, pr["params"], pr["x"][:3])  # another T: a new executable
    assert jb.compile_count == n + 1


# -- devices ----------------------------------------------------------------------------------------------------------
class _FakeGpu:
    platform = "gpu"
    device_kind = "Fake H100"


def test_probe_cuda_without_gpu_says_why(monkeypatch):
    def no_gpu(kind=None):
        if kind == "gpu":
            raise RuntimeError("Unknown backend: 'gpu' requested, but no platforms that are instances of gpu")
        return [object()]
    monkeypatch.setattr(jb_mod.jax, "devices", no_gpu)
    monkeypatch.setattr(jb_mod, "_cuda_plugin_installed", lambda: False)
    ok, why = JaxBackend.probe("cuda")
    assert not ok and "no GPU visible to JAX: jaxlib is the CPU build" in why
    monkeypatch.setattr(jb_mod, "_cuda_plugin_installed", lambda: True)
    ok, why = JaxBackend.probe("cuda")
    assert not ok and "no GPU visible to JAX" in why and "Unknown backend" in why
    assert JaxBackend.probe("cpu") == (True, "")
    info = backends.probe("jax", "cuda")
    assert not info.available and "GPU" in info.reason
    with pytest.raises(RuntimeError, match="no GPU visible"):
        _ = JaxBackend(device="cuda").jax_device  # constructing is lazy; using the device says why


def test_cuda_selects_the_first_gpu(monkeypatch):
    gpus = [_FakeGpu(), _FakeGpu()]
    calls = []

    def devices(kind=None):
        calls.append(kind)
        return gpus if kind == "gpu" else ["cpu0"]
    monkeypatch.setattr(jb_mod.jax, "devices", devices)
    assert JaxBackend.probe("cuda") == (True, "")
    be = backends.get("jax", device="cuda")
    assert be.device == "cuda" and be.jax_device is gpus[0]
    assert be.hoist_forward and be.hoist_grads  # on a GPU one big input GEMM beats T small ones
    assert be.versions()["device_kind"] == "Fake H100"
    assert JaxBackend(device="cpu").jax_device == "cpu0"
    assert "gpu" in calls and "cpu" in calls


@pytest.mark.skipif(not JaxBackend.probe("cuda")[0], reason="needs a CUDA GPU visible to JAX (jaxlib CUDA build)")
def test_cuda_matches_numpy(nb):  # pragma: no cover - runs only where a GPU exists
    spec, pr = case("lstm", CONFIGS["L1-bias"])
    check_all(backends.get("jax", device="cuda"), nb, spec, pr, EXACT)


# -- threads and CTC delegation -------------------------------------------------------------------------------------
def test_set_threads_before_and_after_jax_starts(monkeypatch):
    from jax._src import xla_bridge
    be = JaxBackend()
    with pytest.raises(ValueError, match="n:"):
        be.set_threads(0)
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    monkeypatch.delenv("PJRT_NPROC", raising=False)
    with pytest.warns(RuntimeWarning, match="not applied"):
        be.set_threads(2)
    assert "not applied" in be.threads_note and "PJRT_NPROC" not in os.environ
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=true")
    be.set_threads(1)
    assert os.environ["PJRT_NPROC"] == "1"
    assert os.environ["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", "--xla_cpu_multi_thread_eigen=false"]
    be.set_threads(3)
    assert os.environ["PJRT_NPROC"] == "3" and "eigen" not in os.environ["XLA_FLAGS"]
    assert be.versions()["threads"].startswith("PJRT_NPROC=3")


def test_ctc_delegates_to_jax_ctc(monkeypatch, jb):
    seen = {}

    def fake_ctc(*args, **kw):
        seen.update(args=args, kw=kw)
        return "loss", "grad"
    monkeypatch.setitem(sys.modules, "implementations.jax.ctc", types.SimpleNamespace(ctc=fake_ctc))
    monkeypatch.setattr(sys.modules["implementations.jax"], "ctc", sys.modules["implementations.jax.ctc"],
                        raising=False)
    assert jb._ctc("L", "T", "IL", "TL", 0, True) == ("loss", "grad")
    assert seen["args"] == ("L", "T", "IL", "TL")
    assert seen["kw"]["blank"] == 0 and seen["kw"]["zero_infinity"] is True and seen["kw"]["device"] == "cpu"
