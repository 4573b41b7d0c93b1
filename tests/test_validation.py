"""Bad input through the common interface: a clear error naming the argument, before any compute."""
import numpy as np
import pytest

from implementations import registry as backends
from harness.core.params import init_params
from harness.core.spec import CellSpec
from implementations.numpy import rnn as numpy_rnn

NP = backends.get("numpy")
SPEC = CellSpec("lstm", 3, 4, 2)
P = init_params(SPEC)
X = np.zeros((5, 2, 3))
H = np.zeros((2, 2, 4))


@pytest.fixture(autouse=True)
def no_compute(monkeypatch):
    """Any call reaching the compute layer fails the test: validation must come first."""
    def boom(*a, **k):
        raise AssertionError("computation started before validation")
    for fn in ("forward", "vjp", "hidden_grads"):
        monkeypatch.setattr(numpy_rnn, fn, boom)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: NP.forward(SPEC, P, np.zeros((5, 3))), ValueError, r"x: got shape \(5, 3\) \(rank 2\); expected rank 3"),
    (lambda: NP.forward(SPEC, P, np.zeros((5, 2, 4))), ValueError, r"x: got shape \(5, 2, 4\); expected \(T, B, 3\)"),
    (lambda: NP.forward(SPEC, P, np.zeros((0, 2, 3))), ValueError, "T and B must be >= 1"),
    (lambda: NP.forward(SPEC, P, np.zeros((5, 2, 3), dtype=np.int64)), TypeError, "x: got dtype int64"),
    (lambda: NP.forward(SPEC, P, np.zeros((5, 2, 3), dtype=np.float16)), TypeError, "x: got dtype float16"),
    (lambda: NP.forward(SPEC, P, np.full((5, 2, 3), np.nan)), ValueError, r"x: non-finite value nan at index \(0, 0, 0\)"),
    (lambda: NP.forward(SPEC, P, X.astype(np.float32)), TypeError, "x: dtype float32 differs from the parameters' float64"),
    (lambda: NP.forward(SPEC, P, X, H), TypeError, r"an LSTM state must be a tuple \(h, c\)"),
    (lambda: NP.forward(SPEC, P, X, (H, np.zeros((2, 3, 4)))), ValueError, r"state\[c\]: got shape \(2, 3, 4\); expected \(2, 2, 4\)"),
    (lambda: NP.forward(CellSpec("gru", 3, 4, 2), init_params(CellSpec("gru", 3, 4, 2)), X, (H, H)), TypeError,
     "a gru state is one array"),
    (lambda: NP.forward(CellSpec("gru", 3, 4), init_params(CellSpec("gru", 3, 4, 2)), X), ValueError,
     "params: has 2 layers; spec has num_layers=1"),
    (lambda: NP.forward("lstm", P, X), TypeError, "spec: got str; expected harness.core.spec.CellSpec"),
    (lambda: NP.forward(SPEC, {"w": 1}, X), TypeError, "params: got dict"),
    (lambda: NP.vjp(SPEC, P, X, None, np.zeros((5, 2, 5))), ValueError, r"dy: got shape \(5, 2, 5\); expected \(5, 2, 4\)"),
    (lambda: NP.vjp(SPEC, P, X, None, None, (H, H[:1])), ValueError, r"d_final_state\[c\]: got shape"),
    (lambda: NP.vjp(SPEC, P, X, algorithm="magic"), ValueError, "algorithm: got 'magic'; allowed: bptt, rtrl, tbptt"),
    (lambda: NP.vjp(SPEC, P, X, algorithm="tbptt"), ValueError, "truncation: got None; algorithm='tbptt' needs an integer k >= 1"),
    (lambda: NP.vjp(SPEC, P, X, algorithm="tbptt", truncation=0), ValueError, "truncation: got 0"),
    (lambda: NP.vjp(SPEC, P, X, algorithm="tbptt", truncation=2.5), ValueError, "truncation: got 2.5"),
    (lambda: NP.vjp(SPEC, P, X, truncation=3), ValueError, "only meaningful with algorithm='tbptt'"),
    (lambda: NP.hidden_grads(SPEC, P, X, np.zeros((2, 5))), ValueError, r"dh_T: got shape \(2, 5\); expected \(2, 4\)"),
    (lambda: NP.hidden_grads(SPEC, P, X, np.zeros((2, 4), dtype=np.float32)), TypeError, "dh_T: dtype float32"),
])
def test_bad_input_is_refused_before_compute(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_registry_errors():
    with pytest.raises(ValueError, match="backend: got 'nope'; allowed: numpy, torch"):
        backends.get("nope")
    with pytest.raises(ValueError, match="device: got 'tpu'; allowed: cpu, cuda"):
        backends.get("numpy", "tpu")
    with pytest.raises(ValueError, match="runs on cpu only"):
        backends.get("numpy", "cuda")
    with pytest.raises(ValueError, match="unavailable"):
        backends.get("no_such_module_xyz:Thing")
    with pytest.raises(ValueError, match="has no class"):
        backends.get("implementations.numpy.backend:Missing")
    with pytest.raises(ValueError, match="not a subclass"):
        backends.get("harness.core.spec:CellSpec")


def test_plugin_by_module_class_and_probe_reasons():
    b = backends.get("implementations.numpy.backend:NumpyBackend")
    assert b.variant == "numpy"
    info = backends.probe("no_such_module_xyz:Thing")
    assert not info.available and "not installed" in info.reason
    info = backends.probe("numpy", "cuda")
    assert not info.available and "cpu only" in info.reason
    assert backends.probe("numpy").available


def test_plugin_by_entry_point(monkeypatch):
    monkeypatch.setattr(backends, "_plugin_entry_points",
                        lambda: {"mine": "implementations.numpy.backend:NumpyBackend"})
    assert "mine" in backends.names()
    assert backends.get("mine").family == "numpy"
