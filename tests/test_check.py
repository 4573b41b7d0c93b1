"""``rnnbench check``: every part against the reference, and each deliberate bug caught with its part named."""
import os
import subprocess
import sys

import pytest

from harness.check.battery import TOL, run_check
from tests.plugins import broken_backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_reference_passes_every_check():
    res = run_check("numpy")
    assert res.passed, [(c.name, c.part, c.error, c.detail) for c in res.failed][:5]
    names = {c.name for c in res.checks}
    assert names == {"versions", "agreement", "finite_differences", "bad_input", "timing_hooks", "algorithm"}
    # every declared algorithm besides BPTT is checked, for every cell that has it
    algs = {(c.cell, c.part.split()[0]) for c in res.checks if c.name == "algorithm"}
    assert {("lstm", "rtrl"), ("lstm", "tbptt"), ("mingru", "rtrl"), ("mingru", "tbptt")} <= algs
    parts = {c.part for c in res.checks if c.name == "agreement" and c.cell == "lstm"}
    assert {"y", "h_T", "c_T", "dl0.w_ih", "dl1.b_hh", "dx", "dh0", "dc0", "hidden_grads[h]", "hidden_grads[c]"} <= parts
    shapes = {c.shape for c in res.checks if c.name == "agreement"}
    assert any(s.startswith("T1 B1") for s in shapes)  # a single step of a single sequence
    assert {c.layers for c in res.checks if c.name == "agreement"} == {1, 2}
    assert all(c.error <= TOL[c.dtype] for c in res.checks if c.name == "agreement" and c.error is not None)


@pytest.mark.parametrize("name", sorted(broken_backends.EXPECTED))
def test_each_broken_variant_is_rejected_with_the_wrong_part_named(name):
    res = run_check(f"tests.plugins.broken_backends:{name}")
    assert not res.passed
    failed = {c.part for c in res.failed if c.name == "agreement"}
    assert broken_backends.EXPECTED[name] <= failed, (name, sorted(failed))
    if name in ("OneBiasGradient", "ShiftedHiddenGrads"):  # backward-only bugs: the forward parts agree
        assert not failed & {"y", "h_T", "c_T"}, sorted(failed)


def test_bad_input_contract_is_checked():
    """A plug-in that overrides the public forward (skipping validation) fails the bad-input checks."""
    res = run_check("tests.test_check:Unvalidated", cells=["rnn_tanh"])
    bad = [c for c in res.failed if c.name == "bad_input"]
    assert bad and any("accepted" in c.detail or "not an rnnbench error" in c.detail for c in bad)


class Unvalidated(broken_backends.AcmeRNN):
    def forward(self, spec, params, x, state=None):  # bypasses BackendBase's checks
        import numpy as np
        x = np.asarray(x)
        T, B = x.shape[0], x.shape[1] if x.ndim > 1 else 1
        return np.zeros((T, B, spec.hidden_size), x.dtype), None


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "harness", "check", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_exit_codes_and_markdown(tmp_path):
    md = tmp_path / "check.md"
    r = _cli("numpy", "--markdown", str(md))
    assert r.returncode == 0 and "PASS" in r.stdout, r.stderr
    assert md.read_text().startswith("### rnnbench check numpy on cpu: PASS") and "| agreement |" in md.read_text()
    r = _cli("tests.plugins.broken_backends:OneBiasGradient")
    assert r.returncode == 1 and "dl0.b_hh" in r.stdout and "FAIL" in r.stdout
    for bad in ("no_such_backend", "tests.plugins.broken_backends:Nope", "torch-native"):
        r = _cli(bad)
        assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, (bad, r.stderr)


class WrongRtrl:
    """Built on first use (below): the NumPy backend with an RTRL gradient 1 % off."""


def _wrong_rtrl_class():
    from implementations.numpy.backend import NumpyBackend

    class _Wrong(NumpyBackend):
        variant = "wrong-rtrl"
        reference = False

        def _vjp(self, spec, params, x, state, dy, d_final_state, algorithm, truncation):
            g = super()._vjp(spec, params, x, state, dy, d_final_state, algorithm, truncation)
            if algorithm == "rtrl":
                g.params.layers[0].w_ih *= 1.01
            return g
    return _Wrong


def test_a_wrong_declared_algorithm_fails_its_check():
    global WrongRtrl
    WrongRtrl = _wrong_rtrl_class()
    res = run_check("tests.test_check:WrongRtrl", cells=["mingru"], layers=(1,))
    bad = [c for c in res.failed]
    assert bad and all(c.name == "algorithm" and c.part == "rtrl params" for c in bad), [(c.name, c.part) for c in bad]


def test_check_cli_refuses_cells_it_cannot_check(capsys):
    from harness.cli.main import main
    assert main(["check", "numpy", "--cell", "mingur"]) == 2
    assert "--cell: got 'mingur'; allowed:" in capsys.readouterr().err
    assert main(["check", "torch-pscan", "--cell", "lstm"]) == 2
    assert "backend 'torch-pscan' does not support it (it supports: mingru, minlstm, rglru)" in capsys.readouterr().err
