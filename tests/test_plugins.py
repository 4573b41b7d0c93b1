"""Plug-ins are first-class: a cell defined outside harness/ and suites/ runs through every suite, and a backend
under a foreign name gets what the built-ins get — decided by what it declares, never by its name.

- ``tests/plugins/linear_cell.py`` defines the cell ``linear_rnn`` and its NumPy step (the only file it takes);
- ``tests/plugins/acme_backend.py`` is a backend registered as ``acme-rnn`` through an entry point, supporting
  lstm and rnn_tanh only, with its own ``_ctc``.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from harness.core import cells
from harness.core.errors import Unsupported
from harness.core.params import init_params
from harness.core.spec import CellSpec
from implementations import registry
from implementations.numpy import steps
from tests.plugins import acme_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in (extra.pop("PYTHONPATH", ""),
                                                               env.get("PYTHONPATH", "")) if p])
    env.update(extra)
    return env


def _rnnbench(args, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _rows(run_dir):
    with open(os.path.join(run_dir, "rows.jsonl")) as f:
        return [r for r in map(json.loads, f) if "metric" in r]


@pytest.fixture(autouse=True)
def linear_cell():
    """The plug-in cell registered for one test, and gone afterwards (other test files must not see it)."""
    import importlib
    import tests.plugins.linear_cell as mod
    if "linear_rnn" not in cells.names():
        importlib.reload(mod)
    yield mod
    steps.unregister("linear_rnn")
    cells.unregister("linear_rnn")


# -- the generic engine -----------------------------------------------------------------------------------

@pytest.fixture
def generic_cells(linear_cell):
    """tanh and LSTM re-registered as step-defined cells, to compare the engine with the fused reference."""
    cells.register(cells.CellDef("tanh_generic", ("h",), activation="tanh"), replace=True)
    cells.register(cells.CellDef("lstm_generic", ("i", "f", "g", "o"), state_parts=("h", "c"), bias_gate="f",
                                 bias_gate_role="forget", bptt_extra_per_step=1), replace=True)
    steps.register("tanh_generic", linear_cell.tanh_step(), replace=True)
    steps.register("lstm_generic", linear_cell.lstm_step(), replace=True)
    yield
    for c in ("tanh_generic", "lstm_generic"):
        steps.unregister(c)
        cells.unregister(c)


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.mark.parametrize("fused,generic", [("rnn_tanh", "tanh_generic"), ("lstm", "lstm_generic")])
@pytest.mark.parametrize("truncation", [None, 4])
def test_generic_engine_equals_the_fused_reference(generic_cells, fused, generic, truncation):
    be = registry.get("numpy")
    sf, sg = CellSpec(fused, 5, 6, num_layers=2), CellSpec(generic, 5, 6, num_layers=2)
    p = init_params(sf, seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((11, 3, 5))
    dy = rng.standard_normal((11, 3, 6))
    shape = sf.state_shape(3)
    s0 = (rng.standard_normal(shape), rng.standard_normal(shape)) if sf.is_lstm else rng.standard_normal(shape)
    d_fin = (rng.standard_normal(shape), rng.standard_normal(shape)) if sf.is_lstm else rng.standard_normal(shape)
    yf, ff = be.forward(sf, p, x, s0)
    yg, fg = be.forward(sg, p, x, s0)
    assert _rel(yg, yf) < 1e-12
    alg = "bptt" if truncation is None else "tbptt"
    gf = be.vjp(sf, p, x, s0, dy, d_fin, algorithm=alg, truncation=truncation)
    gg = be.vjp(sg, p, x, s0, dy, d_fin, algorithm=alg, truncation=truncation)
    assert _rel(gg.params.flat(), gf.params.flat()) < 1e-12
    assert _rel(gg.dx, gf.dx) < 1e-12
    for a, b in zip(gg.dstate if sf.is_lstm else (gg.dstate,), gf.dstate if sf.is_lstm else (gf.dstate,)):
        assert _rel(a, b) < 1e-12
    dh = rng.standard_normal((3, 6))
    # ∂L/∂h_t agrees; the c adjoint of a step-defined cell is the step's (h and c as separate outputs), while
    # the fused LSTM reports the total derivative through h_t = o·tanh(c_t) as well: compared through h only.
    assert _rel(be.hidden_grads(sg, p, x, dh), be.hidden_grads(sf, p, x, dh)) < 1e-12


def test_linear_cell_gradients_match_finite_differences():
    be = registry.get("numpy")
    spec = CellSpec("linear_rnn", 3, 4, num_layers=2)
    p = init_params(spec, seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 2, 3))
    dy = rng.standard_normal((6, 2, 4))
    g = be.vjp(spec, p, x, None, dy, None).params.flat()
    theta = p.flat()
    eps = 1e-6
    for j in rng.choice(len(theta), 12, replace=False):
        e = np.zeros_like(theta)
        e[j] = eps

        def L(v):
            from harness.core.params import Params
            y, _ = be.forward(spec, Params.from_flat(spec, v), x)
            return float(np.sum(y * dy))
        fd = (L(theta + e) - L(theta - e)) / (2 * eps)
        assert abs(fd - g[j]) <= 1e-7 * max(1.0, abs(fd)), (j, fd, g[j])


def test_a_cell_without_a_kernel_is_unsupported_with_its_reason():
    spec = CellSpec("linear_rnn", 3, 4)
    for name in ("torch", "jax"):
        info = registry.probe(name)
        if not info.available:
            continue
        be = registry.get(name)
        reason = be.supports(spec, "float64")
        assert reason == (f"backend {name!r} does not support cell 'linear_rnn' (it supports: rnn_tanh, rnn_relu, "
                          "lstm, gru, mingru, minlstm, rglru)")
        with pytest.raises(Unsupported, match="does not support cell 'linear_rnn'"):
            be.forward(spec, init_params(spec), np.zeros((2, 1, 3)))
    numpy = registry.get("numpy")
    assert numpy.supports(spec, "float64") is None
    assert "exact RTRL" in numpy.supports(spec, "float64", "rtrl")


def test_cell_definitions_give_the_counts_the_suites_use():
    lstm = cells.get("lstm")
    assert lstm.gates == 4 and lstm.has_cell_state and lstm.bias_gate_block() == 1
    assert cells.get("gru").bias_gate_block() == 1 and cells.get("rnn_tanh").bias_gate is None
    spec = CellSpec("lstm", 7, 5, num_layers=2)
    assert spec.forward_flops(3, 10) == 2 * 3 * (7 + 5) * 4 * 5 * 10 + 2 * 3 * (5 + 5) * 4 * 5 * 10
    # the BPTT count of the reference (h, c at T+1 steps; 4 gates + tanh(c) per step; backward buffers)
    T, B, H = 10, 3, 5
    cache = 2 * (2 * (T + 1) * B * H + T * B * 5 * H)
    during = max(T * B * 4 * H + T * B * 7 + T * B * H, T * B * 4 * H + T * B * 5)
    assert lstm.bptt_stored_elements(B, T, [7, 5], H, spec.num_params) == cache + during + spec.num_params
    with pytest.raises(ValueError, match="allowed: rnn_tanh, rnn_relu, lstm, gru"):
        CellSpec("no_such_cell", 1, 1)
    with pytest.raises(ValueError, match="has no forget/update gate; allowed only for lstm, gru"):
        init_params(CellSpec("linear_rnn", 2, 2), gate_bias=1.0)


# -- through every suite ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_test_cell_runs_through_every_suite_smoke_on_numpy(tmp_path):
    out = str(tmp_path / "run")
    r = _rnnbench(["run", "--preset", "smoke", "--backend", "numpy", "--out", out, "--no-progress",
                   "--processes", "1"], _env(RNNBENCH_PLUGINS="tests.plugins.linear_cell"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = _rows(out)
    mine = [x for x in rows if x.get("cell") == "linear_rnn"]
    by_suite = {s: [x for x in mine if x["suite"] == s] for s in ("throughput", "memory", "gradients")}
    for s, rs in by_suite.items():
        assert rs, f"no {s} rows for the plug-in cell"
    tp = by_suite["throughput"]
    assert {x["metric"] for x in tp} >= {"equiv_error", "fwd_ms", "train_ms", "gflops", "eff_gemm"}
    assert all(x["status"] == "ok" for x in tp), [x for x in tp if x["status"] != "ok"]
    mem = by_suite["memory"]
    peaks = {(x["extra"]["algorithm"], x["seq_len"]): x for x in mem if x["metric"] == "peak_bytes"}
    assert peaks[("bptt", 20)]["status"] == "ok" and peaks[("bptt", 20)]["value"] > 0
    assert peaks[("tbptt", 20)]["status"] == "ok"
    assert peaks[("rtrl", 20)]["status"] == "skipped" and "exact RTRL" in peaks[("rtrl", 20)]["reason"]
    # bptt's measured peak stands beside the theory from the cell's definition (at B=1, H=8 the generic
    # engine's per-step Python objects weigh as much as the arrays: a loose bound)
    assert 0.5 < peaks[("bptt", 20)]["extra"]["ratio"] < 5.0
    gr = by_suite["gradients"]
    checks = {x["metric"]: x for x in gr if x["metric"].startswith("check_")}
    assert checks["check_finite_difference"]["value"] == 1.0
    assert any(x["metric"] == "decay_rate" and x["status"] == "ok" for x in gr)
    assert any(x["metric"] == "predicted_rate" and x["status"] == "ok" for x in gr)
    assert any(x["suite"] == "ctc" and x["status"] == "ok" for x in rows)  # CTC has no cell: it runs as ever


@pytest.mark.slow
def test_a_foreign_backend_gets_what_the_builtins_get(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    name = acme_backend.install_entry_point(str(site))
    assert "-" in name and name.split("-")[0] not in ("numpy", "torch", "jax")
    env = _env(PYTHONPATH=str(site))
    r = subprocess.run([sys.executable, "-m", "harness", "list"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and any(line.startswith(name) and " yes " in line for line in r.stdout.splitlines()), r.stdout
    out = str(tmp_path / "run")
    r = _rnnbench(["run", "--preset", "smoke", "--backend", name, "--out", out, "--no-progress", "--processes", "1"],
                  env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [x for x in _rows(out) if x["backend"] == name]
    ok = [x for x in rows if x["status"] == "ok"]
    metrics = {(x["suite"], x["metric"]) for x in ok}
    for need in [("throughput", "equiv_error"), ("throughput", "train_ms"), ("throughput", "ceiling_gflops"),
                 ("throughput", "eff_gemm"), ("throughput", "eff_recurrent"), ("memory", "peak_bytes"),
                 ("memory", "equiv_error"), ("gradients", "check_backend_agreement"),
                 ("ctc", "loss_rel_err"), ("ctc", "loss_grad_ms")]:
        assert need in metrics, need
    peak = [x for x in ok if x["metric"] == "peak_bytes"]
    assert all(x["extra"]["method"] in ("vmhwm", "ru_maxrss") for x in peak)  # the generic CPU probe
    # a cell it does not support: skipped, with one and the same reason in every suite
    reason = f"backend {name!r} does not support cell 'gru' (it supports: lstm, rnn_tanh)"
    for suite in ("throughput", "memory", "gradients"):
        skips = [x for x in rows if x["suite"] == suite and x.get("cell") == "gru"]
        assert skips and all(x["status"] == "skipped" and x["reason"] == reason for x in skips), (suite, skips)
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    assert meta["backend_versions"][f"{name}@cpu"]["acme"] == "0.0.1-test"
    assert meta["backend_capabilities"][f"{name}@cpu"]["cells"] == ["lstm", "rnn_tanh"]
    r = _rnnbench(["report", out], env)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(os.path.join(out, "report.md")) as f:
        assert f"{name}: acme 0.0.1-test" in f.read()  # the plug-in's versions() in the machine section

    # the gate: the same skip, and the supported cases measured (HEAD against this tree, forced)
    r = _rnnbench(["gate", "--base", "HEAD", "--force", "--backend", name, "--rounds", "6", "--samples", "3",
                   "--no-confirm"], env, timeout=600)
    assert r.returncode in (0, 1), r.stdout[-3000:] + r.stderr[-3000:]
    assert f"skipped {name} gru-" in r.stdout and reason in r.stdout, r.stdout[-3000:]
    assert "lstm-L1" in r.stdout


def test_a_wrong_plugin_is_caught_before_anything_is_measured():
    """Swapped LSTM gates: every suite that runs the RNN records the disagreement and measures nothing of it."""
    from suites.base import RunContext
    from suites.gradients.suite import SUITE as grad
    from suites.memory.suite import SUITE as mem
    from suites.throughput.suite import SUITE as tp
    name = "tests.plugins.acme_backend:SwappedGates"
    ctx = RunContext(seed=0, threads=1, budget_s=0.01, preset="smoke")
    for suite in (tp, mem, grad):
        case = next(c for c in suite.cases("smoke", [name], "cpu") if c.cell == "lstm")
        rows = list(suite.run(case, ctx))
        assert rows[0]["metric"] == "equiv_error" and rows[0]["status"] == "error", (suite.name, rows[:2])
        assert "disagrees with the NumPy reference" in rows[0]["reason"]
        assert len(rows) == 1, (suite.name, [r["metric"] for r in rows])


def test_a_mistyped_plugin_is_a_usage_error(tmp_path):
    for bad, says in (("tests.plugins.acme_backend:NoSuchClass", "has no class 'NoSuchClass'"),
                      ("no_such_module_xyz:Thing", "no module named 'no_such_module_xyz'"),
                      ("tests.plugins.acme_backend:", "both parts")):
        r = _rnnbench(["run", "throughput", "--preset", "smoke", "--backend", bad, "--out", str(tmp_path / "r"),
                       "--no-progress"], _env())
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr[-800:])
        assert not (tmp_path / "r" / "rows.jsonl").exists()


def test_a_broken_plugin_cell_module_stops_the_run_with_one_line(tmp_path):
    for env, says in ((dict(RNNBENCH_PLUGINS="no_such_cells_xyz"), "cannot import plug-in module 'no_such_cells_xyz'"),
                      (dict(RNNBENCH_PLUGINS="tests.plugins.raises_on_import"), "RuntimeError: broken on purpose")):
        for args in (["run", "gradients", "--preset", "smoke", "--backend", "numpy", "--out", str(tmp_path / "g")],
                     ["list"]):
            r = _rnnbench(args, _env(**env))
            assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-800:])


def test_list_says_what_each_backend_declares():
    r = _rnnbench(["list", "--device", "cpu", "--capabilities"], _env())
    assert r.returncode == 0
    assert "cells rnn_tanh, rnn_relu, lstm, gru, mingru, minlstm, rglru; algorithms bptt, rtrl, tbptt" in r.stdout
    assert "cells rnn_tanh, rnn_relu, lstm, gru; algorithms bptt, tbptt" in r.stdout  # torch-compile: classic only


@pytest.mark.slow
def test_the_gate_fails_a_wrong_plugin_before_timing_it_and_names_the_parts():
    r = _rnnbench(["gate", "--base", "HEAD", "--force", "--backend", "tests.plugins.acme_backend:SwappedGates",
                   "--rounds", "6", "--samples", "2", "--no-confirm"], _env(), timeout=600)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("check ") and "lstm" in x)
    assert "FAILED" in line and "y " in line and "final_state[0]" in line, line
    # not timed: no verdict line for the LSTM (the tanh RNN, unaffected, is timed and judged)
    assert not [x for x in r.stdout.splitlines() if "lstm-L1" in x and x.split()[0] in ("tests.plugins.acme_backend:SwappedGates",)]
    assert "rnn_tanh-L1" in r.stdout


def test_default_hidden_grads_and_native_timing_hooks():
    """A plug-in with only _forward and _vjp gets ∂L/∂h_t (O(T²) default) equal to the reference's; one that
    converts once (convert + *_native) is timed on converted data, and the rows say which kind each is."""
    from harness.core.errors import Unsupported
    from implementations.base import BackendBase
    from tests.plugins.acme_backend import AcmeRNN

    class OnlyForwardVjp(AcmeRNN):
        _hidden_grads = BackendBase._hidden_grads  # the default, as for a plug-in that writes none

    be, ref = OnlyForwardVjp(), registry.get("numpy")
    for cell in ("rnn_tanh", "lstm"):
        spec = CellSpec(cell, 3, 5, num_layers=2)
        p = init_params(spec, seed=2)
        x = np.random.default_rng(0).standard_normal((6, 2, 3))
        dh = np.random.default_rng(1).standard_normal((2, 5))
        got, want = be.hidden_grads(spec, p, x, dh), ref.hidden_grads(spec, p, x, dh)
        assert np.max(np.abs(got - want)) <= 1e-12 * np.max(np.abs(want))
    with pytest.raises(Unsupported, match="∂L/∂h_t only"):
        be.hidden_grads(CellSpec("lstm", 3, 5), init_params(CellSpec("lstm", 3, 5)), x, dh, return_cell=True)

    converted = []

    class ConvertsOnce(AcmeRNN):
        def convert(self, spec, params, x, state=None, dy=None, d_final_state=None):
            converted.append(1)
            return super().convert(spec, params, x, state, dy, d_final_state)

        def _forward_native(self, spec, native):
            return self._forward(spec, native["params"], native["x"], native["state"])

        def _train_native(self, spec, native):
            n = native
            return self._vjp(spec, n["params"], n["x"], n["state"], n["dy"], n["d_final_state"], "bptt", None)

    c = ConvertsOnce()
    assert c.prepares_natively and not OnlyForwardVjp().prepares_natively
    spec = CellSpec("lstm", 3, 5)
    fn = c.prepare_train(spec, init_params(spec), x, None, np.zeros((6, 2, 5)))
    fn()
    fn()
    assert len(converted) == 1  # once, outside the timed calls


def test_a_plugin_backend_that_cannot_be_imported_is_a_usage_error_and_list_shows_plugins(tmp_path):
    r = _rnnbench(["run", "throughput", "--preset", "smoke", "--backend", "tests.plugins.broken_import:X",
                   "--out", str(tmp_path / "r"), "--no-progress"], _env())
    assert r.returncode == 2 and "importing 'tests.plugins.broken_import' failed: RuntimeError: the plug-in's own" \
        in r.stderr and "Traceback" not in r.stderr, r.stderr[-1000:]
    r = _rnnbench(["list", "--backend", "tests.plugins.acme_backend:AcmeRNN", "--capabilities"], _env())
    assert r.returncode == 0 and "tests.plugins.acme_backend:AcmeRNN  cpu   yes  acme 0.0.1-test" in r.stdout, r.stdout
    assert "cells lstm, rnn_tanh" in r.stdout
    r = _rnnbench(["list", "--backend", "tests.plugins.acme_backend:Nope"], _env())
    assert r.returncode == 2 and "has no class 'Nope'" in r.stderr
