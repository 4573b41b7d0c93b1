"""The PyTorch backends against the NumPy reference, their timing hooks, and the CUDA selection logic.

Equivalence is measured as ‖a − b‖ / ‖b‖ in the canonical layout: float64 torch vs float64 NumPy must
agree to 1e-10 (both are exact up to rounding), float32 torch vs float64 NumPy to 1e-5.
CUDA selection is tested on the CPU by monkeypatching ``torch.cuda.is_available``; nothing here touches
a real GPU except the tests at the end, which are skipped without one.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from implementations import registry as backends  # noqa: E402
from harness.core.params import init_params  # noqa: E402
from harness.core.spec import CELLS, CellSpec  # noqa: E402
from implementations.torch import backend as tb  # noqa: E402

CONFIGS = [  # (num_layers, bias, T, B, I, H)
    (1, True, 6, 3, 4, 5),
    (2, False, 7, 2, 3, 4),
]
EXACT = 1e-10


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (nb if nb > 0 else 1.0))


def make_case(cell: str, cfg, seed: int = 0, dtype: str = "float64"):
    """spec, params, x, state, dy, d_final_state, dh_T — all drawn from one seed."""
    L, bias, T, B, I, H = cfg
    spec = CellSpec(cell, I, H, num_layers=L, bias=bias)
    params = init_params(spec, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)

    def state():
        s = rng.standard_normal((L, B, H)).astype(dtype) * 0.5
        return (s, rng.standard_normal((L, B, H)).astype(dtype) * 0.5) if spec.is_lstm else s

    x = rng.standard_normal((T, B, I)).astype(dtype)
    st, dst = state(), state()
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dh_T = rng.standard_normal((B, H)).astype(dtype)
    return spec, params, x, st, dy, dst, dh_T


def state_parts(s):
    return list(s) if isinstance(s, tuple) else [s]


def assert_grads_close(g, g_ref, tol):
    for (name, a), (name_ref, b) in zip(g.params.items(), g_ref.params.items()):
        assert name == name_ref
        assert rel(a, b) <= tol, f"{name}: rel err {rel(a, b):.2e}"
    assert len(list(g.params.items())) == len(list(g_ref.params.items()))
    assert rel(g.dx, g_ref.dx) <= tol, f"dx: {rel(g.dx, g_ref.dx):.2e}"
    parts, parts_ref = state_parts(g.dstate), state_parts(g_ref.dstate)
    assert len(parts) == len(parts_ref)
    for a, b in zip(parts, parts_ref):
        assert rel(a, b) <= tol, f"dstate: {rel(a, b):.2e}"


@pytest.fixture(scope="module")
def ref():
    return backends.get("numpy")


# ------------------------------------------------------------------------------------------------
# float64 equivalence with NumPy: forward, vjp, hidden_grads
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["torch", "torch-cell"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["L1-bias", "L2-nobias"])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_numpy_float64(variant, cell, cfg, ref):
    be = backends.get(variant)
    spec, params, x, st, dy, dst, dh_T = make_case(cell, cfg, seed=3)

    y, final = be.forward(spec, params, x, st)
    y_ref, final_ref = ref.forward(spec, params, x, st)
    assert y.dtype == np.float64 and rel(y, y_ref) <= EXACT
    for a, b in zip(state_parts(final), state_parts(final_ref)):
        assert isinstance(a, np.ndarray) and rel(a, b) <= EXACT

    assert_grads_close(be.vjp(spec, params, x, st, dy, dst), ref.vjp(spec, params, x, st, dy, dst), EXACT)
    # state=None and d_final_state=None: zeros, and dstate is still (dh0, dc0) for an LSTM
    g = be.vjp(spec, params, x, None, dy, None)
    assert_grads_close(g, ref.vjp(spec, params, x, None, dy, None), EXACT)
    assert isinstance(g.dstate, tuple) == spec.is_lstm

    hg = be.hidden_grads(spec, params, x, dh_T)
    assert hg.shape == x.shape[:2] + (spec.hidden_size,)
    assert rel(hg, ref.hidden_grads(spec, params, x, dh_T)) <= EXACT
    np.testing.assert_allclose(hg[-1], dh_T, rtol=0, atol=0)
    if spec.is_lstm:
        dh, dc = be.hidden_grads(spec, params, x, dh_T, return_cell=True)
        dh_ref, dc_ref = ref.hidden_grads(spec, params, x, dh_T, return_cell=True)
        assert rel(dh, dh_ref) <= EXACT and rel(dc, dc_ref) <= EXACT


@pytest.mark.parametrize("cell", CELLS)
def test_float32_torch_close_to_float64_numpy(cell, ref):
    be = backends.get("torch")
    cfg = CONFIGS[1]
    spec, p64, x, st, dy, dst, dh_T = make_case(cell, cfg, seed=5)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    st32 = tuple(map(f32, st)) if isinstance(st, tuple) else f32(st)
    dst32 = tuple(map(f32, dst)) if isinstance(dst, tuple) else f32(dst)
    p32 = p64.astype("float32")
    y, _ = be.forward(spec, p32, f32(x), st32)
    assert y.dtype == np.float32
    assert rel(y, ref.forward(spec, p64, x, st)[0]) <= 1e-5
    g = be.vjp(spec, p32, f32(x), st32, f32(dy), dst32)
    assert g.dx.dtype == np.float32
    # the reference uses the float32-rounded inputs in float64, so only torch's float32 arithmetic differs
    up = lambda a: np.asarray(a, np.float64)  # noqa: E731
    g_ref = ref.vjp(spec, p32.astype("float64"), up(f32(x)),
                    tuple(map(up, st32)) if isinstance(st32, tuple) else up(st32), up(f32(dy)),
                    tuple(map(up, dst32)) if isinstance(dst32, tuple) else up(dst32))
    assert_grads_close(g, g_ref, 1e-5)
    hg = be.hidden_grads(spec, p32, f32(x), f32(dh_T))
    assert rel(hg, ref.hidden_grads(spec, p32.astype("float64"), up(f32(x)), up(f32(dh_T)))) <= 1e-5


# ------------------------------------------------------------------------------------------------
# truncated BPTT
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["torch-cell", "torch"])
@pytest.mark.parametrize("cell", CELLS)
def test_tbptt_matches_numpy(variant, cell, ref):
    be = backends.get(variant)
    spec, params, x, st, dy, dst, _ = make_case(cell, CONFIGS[1], seed=7)  # T = 7
    full = be.vjp(spec, params, x, st, dy, dst)
    for k in (1, 2, 3):
        g = be.vjp(spec, params, x, st, dy, dst, algorithm="tbptt", truncation=k)
        assert_grads_close(g, ref.vjp(spec, params, x, st, dy, dst, algorithm="tbptt", truncation=k), EXACT)
        # truncation really changes the answer for k < T (the test would pass vacuously otherwise)
        assert rel(g.params.layers[0].w_hh, full.params.layers[0].w_hh) > 1e-6
    for k in (7, 50):  # k >= T: nothing is cut
        assert_grads_close(be.vjp(spec, params, x, st, dy, dst, algorithm="tbptt", truncation=k), full, EXACT)


def test_algorithm_errors():
    be = backends.get("torch-cell")
    spec, params, x, st, dy, dst, _ = make_case("gru", CONFIGS[0])
    with pytest.raises(NotImplementedError, match="rtrl"):
        be.vjp(spec, params, x, st, dy, dst, algorithm="rtrl")
    with pytest.raises(ValueError, match="truncation"):
        be.vjp(spec, params, x, st, dy, dst, algorithm="tbptt")
    with pytest.raises(TypeError, match="dtype"):
        be.forward(spec, params, x.astype(np.float32), None)


# ------------------------------------------------------------------------------------------------
# timing hooks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["torch", "torch-cell"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_prepared_callables_match(variant, cell):
    be = backends.get(variant)
    spec, params, x, st, dy, dst, _ = make_case(cell, CONFIGS[1], seed=11)
    g = be.vjp(spec, params, x, st, dy, dst)
    train = be.prepare_train(spec, params, x, st, dy, dst)
    for _ in range(2):  # the callable is reusable: no gradient accumulates between calls
        out = train()
        expected = [a for _, a in g.params.items()] + [g.dx]
        assert len(out) == len(expected)
        for a, b in zip(out, expected):
            assert rel(a.detach().numpy(), b) <= EXACT

    fwd = be.prepare_forward(spec, params, x, st)
    y, h, c = fwd()
    y_ref, final_ref = be.forward(spec, params, x, st)
    assert not y.requires_grad  # inference mode: no graph was built
    assert rel(y.numpy(), y_ref) <= EXACT
    assert rel(h.numpy(), state_parts(final_ref)[0]) <= EXACT
    assert (c is None) == (not spec.is_lstm)


def test_prepare_train_defaults_to_zero_cotangents():
    be = backends.get("torch")
    spec, params, x, st, dy, dst, _ = make_case("lstm", CONFIGS[0], seed=2)
    out = be.prepare_train(spec, params, x)()
    assert all(float(t.abs().max()) == 0.0 for t in out)


# ------------------------------------------------------------------------------------------------
# torch.compile: one real compilation (inductor); its numbers must equal the reference too
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compile_matches_numpy(ref):
    ok, reason = tb.TorchCompileBackend.probe("cpu")
    if not ok:
        pytest.skip(reason)
    be = backends.get("torch-compile")
    assert be.path() == "compile"
    spec, params, x, st, dy, dst, dh_T = make_case("lstm", (1, True, 5, 2, 3, 4), seed=13)
    # One specialisation only (a cold inductor compile of forward+backward costs ~15-30 s on 2 cores):
    # the vjp exercises the compiled forward and backward kernels.
    assert_grads_close(be.vjp(spec, params, x, st, dy, dst), ref.vjp(spec, params, x, st, dy, dst), EXACT)
    assert list(be._compiled) == ["lstm"]
    # cell-state gradients take the eager step (a fused compiled step hides the same-step h_t path)
    for got, want in zip(be.hidden_grads(spec, params, x, dh_T, return_cell=True),
                         ref.hidden_grads(spec, params, x, dh_T, return_cell=True)):
        assert np.abs(got - want).max() <= 1e-12 * max(1.0, np.abs(want).max())


def test_compile_failure_is_a_clear_error():
    """A backend that cannot compile gives a CompileError naming torch.compile, not a deep inductor trace."""
    be = tb.TorchCompileBackend(compile_backend="no-such-backend-xyz")
    spec, params, x, *_ = make_case("rnn_tanh", CONFIGS[0])
    with pytest.raises(tb.CompileError, match="torch.compile failed.*no-such-backend-xyz"):
        be.forward(spec, params, x)


def test_compile_probe_without_compiler(monkeypatch):
    monkeypatch.setattr(tb.shutil, "which", lambda name: None)
    ok, reason = tb.TorchCompileBackend.probe("cpu")
    assert not ok and "compiler" in reason


# ------------------------------------------------------------------------------------------------
# identity, environment, CUDA selection logic (monkeypatched; no real CUDA calls)
# ------------------------------------------------------------------------------------------------
def test_identity_and_paths():
    expected = {"torch": "cpu-native", "torch-cell": "cell-loop", "torch-compile": "compile"}
    for name, path in expected.items():
        be = backends.get(name)
        assert be.family == "torch" and be.variant == name and be.path() == path
        v = be.versions()
        assert v["torch"] == torch.__version__ and v["mkldnn"] in ("True", "False")
        assert "cuda" not in v  # a CPU backend does not report CUDA versions


def test_set_threads():
    be = backends.get("torch-cell")
    before = torch.get_num_threads()
    try:
        be.set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="n:"):
        be.set_threads(0)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend a CUDA device exists (for selection logic only) and restore the global TF32 flags after."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.parametrize("name", ["torch", "torch-native", "torch-cell", "torch-compile"])
def test_cuda_probe_without_cuda(no_cuda, name):
    klass = getattr(tb, backends.BUILTIN[name][1])
    ok, reason = klass.probe("cuda")
    assert not ok and reason == "torch.cuda.is_available() is False: no CUDA device"
    info = backends.probe(name, "cuda")
    assert not info.available and "no CUDA device" in info.reason
    with pytest.raises(backends.BackendError, match="no CUDA device"):
        backends.get(name, "cuda")


def test_native_refuses_cpu():
    ok, reason = tb.TorchNativeBackend.probe("cpu")
    assert not ok and "needs CUDA" in reason
    with pytest.raises(ValueError, match="needs CUDA"):
        tb.TorchNativeBackend(device="cpu")
    with pytest.raises(backends.BackendError, match="needs CUDA"):
        backends.get("torch-native", "cpu")
    info = backends.probe("torch-native", "cpu")
    assert not info.available and "needs CUDA" in info.reason


def test_cuda_selection_with_fake_cuda(fake_cuda, monkeypatch):
    assert tb.TorchBackend.probe("cuda") == (True, "")
    assert tb.TorchNativeBackend.probe("cuda") == (True, "")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    be = tb.TorchBackend(device="cuda")
    assert be.path() == "cudnn"
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    tb.TorchBackend(device="cuda", allow_tf32=True)
    assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
    native = tb.TorchNativeBackend(device="cuda")
    assert native.path() == "native" and not native.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert tb.TorchCellBackend(device="cuda").path() == "cell-loop"
    # the timing hooks synchronise the device before returning
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.append(1))
    be._sync()
    assert calls == [1]
    tb.TorchBackend(device="cpu")._sync()
    assert calls == [1]


def test_native_disables_cudnn_inside_calls():
    """torch-native's context switches cuDNN off (and keeps the TF32 policy); torch's leaves it on."""
    native = object.__new__(tb.TorchNativeBackend)
    native.allow_tf32 = False
    with native._ctx():
        assert torch.backends.cudnn.enabled is False
        assert torch.backends.cudnn.allow_tf32 is False
    plain = tb.TorchBackend(device="cpu")
    with plain._ctx():
        assert torch.backends.cudnn.enabled is True


# ------------------------------------------------------------------------------------------------
# real CUDA (skipped without a GPU)
# ------------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("variant", ["torch", "torch-native", "torch-cell"])
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_matches_numpy(variant, cell, ref):
    be = backends.get(variant, "cuda")
    spec, params, x, st, dy, dst, dh_T = make_case(cell, CONFIGS[1], seed=17)
    assert rel(be.forward(spec, params, x, st)[0], ref.forward(spec, params, x, st)[0]) <= 1e-9
    assert_grads_close(be.vjp(spec, params, x, st, dy, dst), ref.vjp(spec, params, x, st, dy, dst), 1e-9)
    assert rel(be.hidden_grads(spec, params, x, dh_T), ref.hidden_grads(spec, params, x, dh_T)) <= 1e-9
    out = be.prepare_train(spec, params, x, st, dy, dst)()
    assert all(t.device.type == "cuda" for t in out)
