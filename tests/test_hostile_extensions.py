"""Hostile and careless use of rnnbench's extension points: cells, NumPy steps, plug-in modules, plug-in
backends (peak-memory probe, GEMM hook), plug-in suites in reports, and the CLI's exit codes.

Every test asserts the behaviour a user is promised (an rnnbench error naming what was wrong, an error/skipped
row with a reason, exit 2 with one line, exit 3 with a traceback for a bug).

The backends below are plug-ins given as ``tests.test_hostile_extensions:ClassName``: worker and probe processes
import this module, so it must stay free of side effects at import time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from harness.core import cells
from harness.core.errors import (BackendError, InputError, InputTypeError, RnnbenchError, RunDirError,
                                 Unsupported, UsageError)
from harness.core.params import init_params
from harness.core.spec import CellSpec
from tests.plugins.acme_backend import NumpyDelegate
from tests.plugins.linear_steps import linear_backward as _lin_backward
from tests.plugins.linear_steps import linear_forward as _lin_forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOD = "tests.test_hostile_extensions"


def _env(**extra):
    env = dict(os.environ)
    env.pop("RNNBENCH_PLUGINS", None)
    pp = extra.pop("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, pp, os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _python(code, env=None, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def _rnnbench(args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def _rows(run_dir):
    with open(os.path.join(run_dir, "rows.jsonl")) as f:
        return [r for r in map(json.loads, f) if "metric" in r]


def _one_clear_line(stderr: str, command: str):
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"rnnbench {command}: "), stderr
    return lines[0]


# =====================================================================================================
# Plug-in backends (imported by name from worker / probe processes)
# =====================================================================================================

class _Hostile(NumpyDelegate):
    """A well-behaved NumPy-computing plug-in; the subclasses below each break one thing."""

    family = "hostile"
    variant = "hostile"


class SupportsRaises(_Hostile):
    def supports(self, spec, dtype=None, algorithm="bptt"):
        raise RuntimeError("supports exploded")


class ForwardRaises(_Hostile):
    def _forward(self, spec, params, x, state):
        raise RuntimeError("forward exploded")


class PeakNotDict(_Hostile):
    def peak_memory(self, *a, **k):
        return 12345


class PeakNoPeakBytes(_Hostile):
    def peak_memory(self, *a, **k):
        return {"method": "guess", "scope": "vjp"}


class PeakString(_Hostile):
    def peak_memory(self, *a, **k):
        return {"peak_bytes": "a lot", "method": "guess", "scope": "vjp"}


class PeakRaises(_Hostile):
    def peak_memory(self, *a, **k):
        raise RuntimeError("peak exploded")


class PeakUnserialisable(_Hostile):
    def peak_memory(self, *a, **k):
        return {"peak_bytes": 1, "method": object(), "scope": "vjp"}


class PeakBool(_Hostile):
    def peak_memory(self, *a, **k):
        return {"peak_bytes": True, "method": "guess", "scope": "vjp"}


class PeakNaN(_Hostile):
    def peak_memory(self, *a, **k):
        return {"peak_bytes": float("nan"), "method": "guess", "scope": "vjp"}


class PeakNegative(_Hostile):
    def peak_memory(self, *a, **k):
        return {"peak_bytes": -5, "method": "guess", "scope": "vjp"}


class PeakNumpyInt(_Hostile):
    def peak_memory(self, *a, **k):
        return {"peak_bytes": np.int64(4096), "method": "guess", "scope": "vjp"}


class PeakStatusOverride(_Hostile):
    def peak_memory(self, *a, **k):
        return {"peak_bytes": 1, "method": "guess", "scope": "vjp", "status": "banana"}


class PeakSpoofThenExit(_Hostile):
    def peak_memory(self, *a, **k):
        print(json.dumps({"status": "ok", "peak_bytes": 1, "method": "spoof"}), flush=True)
        raise SystemExit(1)


class GemmRaises(_Hostile):
    def gemm(self, kind, shape, dtype):
        raise RuntimeError("gemm exploded")


class GemmNone(_Hostile):
    def gemm(self, kind, shape, dtype):
        return None


class GemmOnlyForTheProbe(_Hostile):
    """Answers the (8, 8, 8) capability probe, then gives nothing for the real shapes."""

    def gemm(self, kind, shape, dtype):
        return (lambda: None) if tuple(shape) == (8, 8, 8) else None


# =====================================================================================================
# Cell definitions and the cell registry
# =====================================================================================================

@pytest.mark.parametrize("kwargs,field", [
    (dict(name="1cell", gate_names=("h",)), "name"),
    (dict(name="my-cell", gate_names=("h",)), "name"),
    (dict(name="", gate_names=("h",)), "name"),
    (dict(name=None, gate_names=("h",)), "name"),
    (dict(name=3, gate_names=("h",)), "name"),
    (dict(name="hx_c", gate_names=()), "gate_names"),
    (dict(name="hx_c", gate_names=None), "gate_names"),
    (dict(name="hx_c", gate_names=("h",), state_parts=()), "state_parts"),
    (dict(name="hx_c", gate_names=("h",), state_parts=("c",)), "state_parts"),
    (dict(name="hx_c", gate_names=("h",), state_parts=("c", "h")), "state_parts"),
    (dict(name="hx_c", gate_names=("h",), state_parts=("h", "c", "m")), "state_parts"),
    (dict(name="hx_c", gate_names=("h",), activation="sigmoid"), "activation"),
    (dict(name="hx_c", gate_names=("h",), activation="Tanh"), "activation"),
    (dict(name="hx_c", gate_names=("i", "f"), bias_gate="z"), "bias_gate"),
    (dict(name="hx_c", gate_names=("i", "f"), bias_gate="F"), "bias_gate"),
])
def test_bad_celldef_is_an_input_error_naming_the_field(kwargs, field):
    with pytest.raises(InputError, match=field) as ei:
        cells.CellDef(**kwargs)
    assert isinstance(ei.value, RnnbenchError) and isinstance(ei.value, ValueError)


@pytest.mark.parametrize("gate_names", [
    pytest.param("ifgo"),
    pytest.param((1, 2)),
    pytest.param(("a", "a")),
    pytest.param(("i", "")),
])
def test_gate_names_must_be_a_tuple_of_distinct_names(gate_names):
    with pytest.raises(InputError, match="gate_names"):
        cells.CellDef("hx_gates", gate_names)


def test_a_cell_cannot_be_both_vanilla_and_gated():
    with pytest.raises(InputError):
        cells.CellDef("hx_both", ("a", "b"), activation="tanh", bias_gate="a")


def test_negative_memory_theory_counts_are_rejected():
    with pytest.raises(InputError, match="bptt_extra_per_step"):
        cells.CellDef("hx_neg", ("h",), bptt_extra_per_step=-3)


@pytest.fixture
def hx_cell():
    """A plug-in cell, registered for one test and removed afterwards (with any NumPy step given to it)."""
    from implementations.numpy import steps
    name = "hx_linear"
    cells.register(cells.CellDef(name, ("h",), activation="identity"), replace=True)
    yield name
    steps.unregister(name)
    cells.unregister(name)


def test_registering_a_name_differently_needs_replace(hx_cell):
    before = cells.get(hx_cell)
    with pytest.raises(InputError, match="replace=True"):
        cells.register(cells.CellDef(hx_cell, ("a", "b")))
    assert cells.get(hx_cell) is before  # unchanged
    assert cells.register(cells.CellDef(hx_cell, ("h",), activation="identity")) == before  # same: idempotent
    with pytest.raises(InputError, match="built in and cannot be redefined"):
        cells.register(cells.CellDef("lstm", ("h",)))
    assert cells.get("lstm").gates == 4


@pytest.mark.parametrize("thing", ["lstm", ("lstm", ("h",)), None, {"name": "x"}])
def test_registering_a_non_celldef_is_an_input_error(thing):
    with pytest.raises(InputError, match="CellDef"):
        cells.register(thing)


def test_a_builtin_cell_cannot_be_redefined_even_with_replace():
    from harness.core import spec as spec_mod
    orig = cells._CELLS["lstm"]
    try:
        with pytest.raises(InputError, match="built in"):
            cells.register(cells.CellDef("lstm", ("h",)), replace=True)
    finally:
        cells._CELLS["lstm"] = orig  # restore whatever happened
    assert cells.get("lstm").gates == spec_mod.GATES["lstm"] == 4


@pytest.mark.parametrize("name", cells.BUILTIN_CELLS)
def test_unregistering_a_builtin_is_refused(name):
    with pytest.raises(InputError, match="built in"):
        cells.unregister(name)
    assert name in cells.names()


def test_unregistering_an_unknown_cell_is_harmless():
    cells.unregister("hx_never_defined")
    assert "hx_never_defined" not in cells.names()


@pytest.mark.parametrize("bad", ["no_such_cell", "LSTM", "", None, 3, ["lstm"]])
def test_cellspec_with_an_unknown_cell_lists_the_known_cells(hx_cell, bad):
    with pytest.raises(InputError) as ei:
        CellSpec(bad, 2, 3)
    msg = str(ei.value)
    assert repr(bad) in msg
    for known in cells.BUILTIN_CELLS + (hx_cell,):
        assert known in msg, msg


# =====================================================================================================
# The NumPy generic step engine with bad steps
# =====================================================================================================



def _use_step(cell, forward=_lin_forward, backward=_lin_backward):
    from implementations.numpy import steps
    steps.register(cell, steps.NumpyStep(forward, backward), replace=True)


def _problem(cell, T=5, B=2, I=3, H=4):
    spec = CellSpec(cell, I, H)
    rng = np.random.default_rng(0)
    return spec, init_params(spec, seed=1), rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))


def _numpy():
    from implementations import registry
    return registry.get("numpy")


def test_a_good_step_runs(hx_cell):
    _use_step(hx_cell)
    spec, p, x, dy = _problem(hx_cell)
    y, h = _numpy().forward(spec, p, x)
    assert y.shape == (5, 2, 4) and h.shape == (1, 2, 4)
    g = _numpy().vjp(spec, p, x, None, dy)
    assert g.dx.shape == x.shape and g.dstate.shape == (1, 2, 4)


def test_step_forward_returning_a_wrong_shaped_state_is_named(hx_cell):
    _use_step(hx_cell, forward=lambda lp, x, s: ((_lin_forward(lp, x, s)[0][0][:, :-1],), None))
    spec, p, x, _ = _problem(hx_cell)
    with pytest.raises(RnnbenchError, match=hx_cell):
        _numpy().forward(spec, p, x)


@pytest.mark.parametrize("cut", ["row", "vector"])
def test_step_forward_returning_a_broadcastable_state_is_not_accepted(hx_cell, cut):
    def fwd(lp, x, s):
        (a,), c = _lin_forward(lp, x, s)
        return ((a[:1] if cut == "row" else a[0]),), c
    _use_step(hx_cell, forward=fwd)
    spec, p, x, _ = _problem(hx_cell)
    try:
        _, final = _numpy().forward(spec, p, x)
    except RnnbenchError as e:
        assert hx_cell in str(e)
        return
    assert final.shape == spec.state_shape(2), f"silently returned a final state of shape {final.shape}"


def test_step_forward_returning_too_many_state_parts_is_named(hx_cell):
    _use_step(hx_cell, forward=lambda lp, x, s: (_lin_forward(lp, x, s)[0] + (np.zeros((2, 4)),), None))
    spec, p, x, _ = _problem(hx_cell)
    with pytest.raises(RnnbenchError, match=hx_cell):
        _numpy().forward(spec, p, x)


def test_step_backward_gradient_for_an_unknown_parameter_is_named(hx_cell):
    def bwd(*a):
        d, dx, ds = _lin_backward(*a)
        return {**d, "w_xx": np.zeros(3)}, dx, ds
    _use_step(hx_cell, backward=bwd)
    spec, p, x, dy = _problem(hx_cell)
    with pytest.raises(InputError, match=r"'hx_linear'.*'w_xx'.*it has: w_ih, w_hh, b_ih, b_hh"):
        _numpy().vjp(spec, p, x, None, dy)


@pytest.mark.parametrize("parts", ["two", "none", "bare-array"])
def test_step_backward_returning_the_wrong_number_of_state_parts_is_named(hx_cell, parts):
    def bwd(*a):
        d, dx, ds = _lin_backward(*a)
        got = {"two": ds + (np.zeros_like(ds[0]),), "none": (), "bare-array": ds[0]}[parts]
        return d, dx, got
    _use_step(hx_cell, backward=bwd)
    spec, p, x, dy = _problem(hx_cell)
    with pytest.raises(RnnbenchError, match=hx_cell):
        _numpy().vjp(spec, p, x, None, dy)


def test_step_backward_wrong_shaped_parameter_gradient_is_named(hx_cell):
    def bwd(*a):
        d, dx, ds = _lin_backward(*a)
        return {**d, "b_ih": np.float64(1.0)}, dx, ds
    _use_step(hx_cell, backward=bwd)
    spec, p, x, dy = _problem(hx_cell)
    with pytest.raises(RnnbenchError, match="b_ih"):
        _numpy().vjp(spec, p, x, None, dy)


def test_step_backward_transposed_gradient_is_named(hx_cell):
    def bwd(*a):
        d, dx, ds = _lin_backward(*a)
        return {**d, "w_ih": d["w_ih"].T}, dx, ds
    _use_step(hx_cell, backward=bwd)
    spec, p, x, dy = _problem(hx_cell)
    with pytest.raises(RnnbenchError, match="w_ih"):
        _numpy().vjp(spec, p, x, None, dy)


def test_steps_register_for_an_undefined_cell_lists_the_cells():
    from implementations.numpy import steps
    with pytest.raises(InputError, match=r"'hx_undefined'.*allowed: rnn_tanh, rnn_relu, lstm, gru"):
        steps.register("hx_undefined", steps.NumpyStep(_lin_forward, _lin_backward))
    assert "hx_undefined" not in steps._STEPS


@pytest.mark.parametrize("step", [(_lin_forward, _lin_backward), _lin_forward, None, "step"])
def test_steps_register_with_a_non_numpystep_is_a_type_error(hx_cell, step):
    from implementations.numpy import steps
    with pytest.raises(InputTypeError, match="NumpyStep"):
        steps.register(hx_cell, step)
    assert hx_cell not in steps._STEPS


def test_steps_register_twice_needs_replace(hx_cell):
    from implementations.numpy import steps
    steps.register(hx_cell, steps.NumpyStep(_lin_forward, _lin_backward))
    with pytest.raises(InputError, match="replace=True"):
        steps.register(hx_cell, steps.NumpyStep(_lin_forward, _lin_backward))


def test_steps_register_with_non_callables_is_refused(hx_cell):
    from implementations.numpy import steps
    with pytest.raises(InputTypeError):
        steps.register(hx_cell, steps.NumpyStep(1, 2))


def test_steps_register_for_a_fused_builtin_is_refused():
    from implementations.numpy import steps
    try:
        with pytest.raises(InputError, match="lstm"):
            steps.register("lstm", steps.NumpyStep(_lin_forward, _lin_backward))
    finally:
        steps.unregister("lstm")


def test_an_unregistered_cell_is_no_longer_declared_by_numpy():
    from implementations.numpy import steps
    cells.register(cells.CellDef("hx_gone", ("h",), activation="identity"), replace=True)
    steps.register("hx_gone", steps.NumpyStep(_lin_forward, _lin_backward), replace=True)
    cells.unregister("hx_gone")
    try:
        assert "hx_gone" not in _numpy().supported_cells()
    finally:
        steps.unregister("hx_gone")


# =====================================================================================================
# RNNBENCH_PLUGINS (fresh processes: the plugin-loaded flag is per process)
# =====================================================================================================

_LOAD = """
import json
from harness.core import cells
from harness.core.errors import RnnbenchError
out = []
for attempt in range(2):
    try:
        out.append({"ok": list(cells.names())})
    except Exception as e:
        out.append({"type": type(e).__name__, "rnnbench": isinstance(e, RnnbenchError), "msg": str(e)})
print(json.dumps(out))
"""


def _load_plugins_in_a_fresh_process(value):
    r = _python(_LOAD, env=_env(RNNBENCH_PLUGINS=value))
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", [
    "no_such_hx_plugin",
    "no_such_hx_pkg.sub.module",
    "tests.plugins.linear_cell:CELL",  # an entry-point-style value by mistake
    ".relative_hx_plugin",  # was importlib's plain TypeError (fixed in cells.load_plugins during this work)
])
def test_plugins_env_naming_a_missing_module_is_an_rnnbench_error(module):
    first = _load_plugins_in_a_fresh_process(module)[0]
    assert first.get("rnnbench") is True, first
    assert "RNNBENCH_PLUGINS" in first["msg"] and repr(module) in first["msg"], first


def test_plugins_env_good_module_then_missing_one_still_fails():
    first = _load_plugins_in_a_fresh_process("tests.plugins.linear_cell, no_such_hx_plugin")[0]
    assert first.get("rnnbench") is True and "'no_such_hx_plugin'" in first["msg"], first


def test_a_failed_plugin_load_is_not_forgotten():
    # Was a bug: the loaded flag was set before importing, so every later lookup ran without the plug-in.
    second = _load_plugins_in_a_fresh_process("no_such_hx_plugin")[1]
    assert second.get("rnnbench") is True, f"second lookup silently succeeded: {second}"


def test_cli_run_with_a_missing_plugin_module_exits_2_with_one_line(tmp_path):
    # Was a bug: exit 0, one error row, the rest of the run silently without the plug-in.
    out = str(tmp_path / "run")
    r = _rnnbench(["run", "--preset", "smoke", "--backend", "numpy", "--out", out, "--no-progress"],
                  env=_env(RNNBENCH_PLUGINS="no_such_hx_plugin"))
    assert r.returncode == 2, (r.returncode, r.stdout[-1500:], r.stderr[-1500:])
    line = _one_clear_line(r.stderr, "run")
    assert "no_such_hx_plugin" in line and "RNNBENCH_PLUGINS" in line
    assert not os.path.exists(os.path.join(out, "rows.jsonl")) or not _rows(out)  # nothing was run


# =====================================================================================================
# Plug-in backends: the fresh-process peak-memory probe
# =====================================================================================================

def _peak(cls_name, monkeypatch, batch=2, seq_len=4, hidden=4):
    from harness.measure import memory
    # This tree on the child's path, as a user running from the project root has it (see the test below for
    # the probe's own PYTHONPATH).
    monkeypatch.setenv("PYTHONPATH", ROOT)
    req = memory.make_request(f"{MOD}:{cls_name}", "cpu", "rnn_tanh", 1, batch, seq_len, 3, hidden, "float64", "bptt")
    got = memory.measure_peak(req, timeout_s=60)  # must never raise
    assert isinstance(got, dict)
    return got


@pytest.mark.parametrize("cls_name,needle", [
    ("SupportsRaises", "supports exploded"),
    ("PeakRaises", "peak exploded"),
    ("PeakNotDict", "peak_bytes"),
    ("PeakNoPeakBytes", "peak_bytes"),
    ("PeakString", "peak_bytes"),
    ("PeakUnserialisable", "JSON serializable"),
])
def test_peak_memory_of_a_broken_backend_is_an_error_or_skip_with_a_reason(cls_name, needle, monkeypatch):
    got = _peak(cls_name, monkeypatch)
    assert got["status"] in ("error", "skipped"), got
    assert got["peak_bytes"] is None, got
    assert needle in (got.get("reason") or ""), got


@pytest.mark.parametrize("cls_name", [
    pytest.param("PeakBool"),
    pytest.param("PeakNaN"),
    pytest.param("PeakNegative"),
])
def test_peak_memory_garbage_numbers_are_not_ok(cls_name, monkeypatch):
    got = _peak(cls_name, monkeypatch)
    assert got["status"] in ("error", "skipped") and "peak_bytes" in (got.get("reason") or ""), got


def test_peak_memory_of_a_good_plugin_backend_is_ok(monkeypatch):
    # megabytes of activations, so that the median of the probe's runs is well above the page granularity (a
    # few pages of a tiny problem can be reused from the previous run: a peak of 0 is then a fair reading)
    got = _peak("_Hostile", monkeypatch, batch=8, seq_len=400, hidden=64)
    assert got["status"] == "ok" and got["peak_bytes"] > 0 and got["method"] in ("vmhwm", "ru_maxrss"), got


def test_peak_memory_child_can_import_a_plugin_from_the_project_root(monkeypatch):
    from harness.measure import memory
    monkeypatch.delenv("PYTHONPATH", raising=False)
    req = memory.make_request(f"{MOD}:_Hostile", "cpu", "rnn_tanh", 1, 2, 4, 3, 4, "float64", "bptt")
    got = memory.measure_peak(req, timeout_s=60)
    assert got["status"] == "ok", got


def test_peak_memory_numpy_integer_is_a_valid_peak(monkeypatch):
    got = _peak("PeakNumpyInt", monkeypatch)
    assert got["status"] == "ok" and got["peak_bytes"] == 4096, got


def test_peak_memory_cannot_set_its_own_status(monkeypatch):
    got = _peak("PeakStatusOverride", monkeypatch)
    assert got["status"] in ("ok", "error", "oom", "timeout", "skipped"), got


def test_peak_memory_a_child_that_exits_nonzero_is_an_error(monkeypatch):
    got = _peak("PeakSpoofThenExit", monkeypatch)
    assert got["status"] == "error", got


# =====================================================================================================
# Plug-in backends: the GEMM hook, through the throughput suite (in this process)
# =====================================================================================================

def _throughput_rows(cls_name):
    from suites.base import RunContext
    from suites.throughput.suite import SUITE
    case = SUITE.cases("smoke", [f"{MOD}:{cls_name}"])[0]
    return list(SUITE.run(case, RunContext(preset="smoke", budget_s=0.01, threads=1)))


def test_gemm_hook_returning_none_uses_the_declared_framework():
    from harness.measure import ceilings
    from implementations import registry
    assert ceilings.framework_of(registry.get(f"{MOD}:GemmNone")) == "numpy"
    rows = _throughput_rows("GemmNone")
    ok = {r["metric"] for r in rows if r["status"] == "ok"}
    assert {"ceiling_gflops", "fwd_ms", "eff_gemm"} <= ok, rows


def test_gemm_hook_giving_nothing_for_real_shapes_costs_only_the_ceiling():
    rows = _throughput_rows("GemmOnlyForTheProbe")
    errs = [r for r in rows if r["metric"] == "ceiling_gflops"]
    assert errs and all(r["status"] == "error" and "gemm()" in r["reason"] for r in errs), errs
    assert any(r["metric"] == "fwd_ms" and r["status"] == "ok" for r in rows), rows


def test_gemm_hook_that_raises_costs_only_the_ceiling():
    try:
        rows = _throughput_rows("GemmRaises")
    except RuntimeError as e:
        pytest.fail(f"the case was lost: {e}")
    err = [r for r in rows if r["metric"] == "ceiling_gflops" and r["status"] == "error"]
    assert err and "gemm exploded" in err[0]["reason"], rows
    assert any(r["metric"] == "fwd_ms" and r["status"] == "ok" for r in rows), rows


# =====================================================================================================
# The CLI: internal errors of a plug-in backend, handlers, exit codes
# =====================================================================================================

def test_cli_plugin_backend_raising_plain_errors_gives_error_rows_exit_1(tmp_path):
    """Every case still runs and is recorded; the exit code (1) tells CI that rows failed."""
    out = str(tmp_path / "run")
    r = _rnnbench(["run", "throughput", "--preset", "smoke", "--backend", f"{MOD}:ForwardRaises",
                   "--backend", f"{MOD}:SupportsRaises", "--out", out, "--no-progress", "--processes", "1"])
    assert r.returncode == 1 and "run FAILED" in r.stderr and "row(s) error" in r.stderr, \
        (r.stdout[-2000:], r.stderr[-2000:])
    rows = _rows(out)
    for cls, msg in (("ForwardRaises", "RuntimeError: forward exploded"),
                     ("SupportsRaises", "RuntimeError: supports exploded")):
        mine = [x for x in rows if x["backend"] == f"{MOD}:{cls}"]
        assert mine and all(x["status"] == "error" and msg in x["reason"] for x in mine), (cls, mine[:2])


@pytest.mark.parametrize("backend", [":Foo", "no_such_hx_mod:Foo", f"{MOD}:NoSuchClass", "tests.helpers:rel_err",
                                     ".relative_hx:Foo", "numpy:"])
def test_cli_run_with_a_bad_module_class_backend_exits_2_with_one_line(tmp_path, backend):
    out = str(tmp_path / "run")
    r = _rnnbench(["run", "throughput", "--preset", "smoke", "--backend", backend, "--out", out, "--no-progress"])
    assert r.returncode == 2, (r.returncode, r.stdout[-1500:], r.stderr[-1500:])
    assert backend in _one_clear_line(r.stderr, "run")


def _handler_raising(exc):
    def handler(args):
        raise exc
    return handler


@pytest.fixture
def patched_handler(monkeypatch):
    import importlib
    import types
    cli = importlib.import_module("harness.cli.main")  # the module (harness.cli.main is also a function name)
    fake = types.ModuleType("hx_fake_handlers")
    monkeypatch.setitem(sys.modules, "hx_fake_handlers", fake)

    def install(exc):
        fake.handler = _handler_raising(exc)
        monkeypatch.setitem(cli.HANDLERS, "report", ("hx_fake_handlers", "handler"))
        return cli.main
    return install


def test_cli_internal_bug_exits_3_with_a_traceback(patched_handler, capsys, tmp_path):
    main = patched_handler(RuntimeError("plain bug in a handler"))
    assert main(["report", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: plain bug in a handler" in err, err
    assert "internal error" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("exc", [InputError("x: got 1; allowed: 2"), InputTypeError("dtype: got int8"),
                                 BackendError("backend: got 'nope'"), Unsupported("no ctc"),
                                 UsageError("bad usage"), RunDirError("dir in use")])
def test_cli_rnnbench_errors_exit_2_with_one_line(patched_handler, capsys, tmp_path, exc):
    main = patched_handler(exc)
    assert main(["report", str(tmp_path)]) == 2
    line = _one_clear_line(capsys.readouterr().err, "report")
    assert str(exc) in line


# =====================================================================================================
# rnnbench report --suite, and suites named by a run directory
# =====================================================================================================

def _tiny_run(run_dir, suite_name):
    from harness.measure import records
    from suites.base import Case
    os.makedirs(run_dir, exist_ok=True)
    records.write_meta(run_dir, {"run_id": "hostile", "preset": "smoke", "seed": 0})
    with records.RowWriter(run_dir, "hostile") as w:
        c = Case(suite_name, "thing", "numpy", "cpu")
        w.write({**c.row("a_ms", 1.5, "ms"), "case_key": c.key, "attempt": 1})
        w.mark_done(c.key, 1)
    return run_dir


@pytest.mark.parametrize("ref", [
    "notamodule", "no.such.module:X", "harness.cli.main:HANDLERS", "tests.fake_backends:", "os:path",
    ":SUITE", ".relative:SUITE",
])
def test_cli_report_with_a_bad_suite_exits_2_with_one_line(tmp_path, capsys, ref):
    from harness.cli.main import main
    d = _tiny_run(str(tmp_path / "r"), "throughput")
    assert main(["report", d, "--suite", ref]) == 2
    line = _one_clear_line(capsys.readouterr().err, "report")
    assert ref.split(":")[0] in line
    assert not os.path.exists(os.path.join(d, "report.md"))


def test_cli_report_never_imports_a_suite_named_by_the_run_directory(tmp_path):
    site = tmp_path / "site"
    (site / "evil").mkdir(parents=True)
    marker = tmp_path / "imported"
    (site / "evil" / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('evil\\n')\n")
    (site / "evil" / "module.py").write_text(
        f"open({str(marker)!r}, 'a').write('evil.module\\n')\n"
        "class _S:\n    name = 'evil.module:SUITE'\n    def cases(self, *a): return []\n"
        "    def run(self, *a): return iter(())\n"
        "    def report_section(self, df, fig_dir, **o): return '## pwned'\n"
        "SUITE = _S()\n")
    d = _tiny_run(str(tmp_path / "r"), "evil.module:SUITE")
    r = _rnnbench(["report", d], env=_env(PYTHONPATH=str(site)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert not marker.exists(), marker.read_text()
    md = open(os.path.join(d, "report.md")).read()
    assert "## evil.module:SUITE" in md and "pwned" not in md
    assert "Median over cases of each metric" in md and "a_ms" in md  # the generic section


def test_report_suite_section_does_not_import_unknown_suites(tmp_path, monkeypatch):
    import importlib
    import pandas as pd
    from harness.report import report
    seen = []
    real = importlib.import_module

    def spy(name, *a, **k):
        seen.append(name)
        return real(name, *a, **k)
    monkeypatch.setattr(importlib, "import_module", spy)
    df = pd.DataFrame([{"suite": "evil.module:SUITE", "metric": "a_ms", "unit": "ms", "backend": "numpy",
                        "value": 1.0, "status": "ok"}])
    text = report.suite_section("evil.module:SUITE", df, str(tmp_path))
    assert text.startswith("## evil.module:SUITE") and "a_ms" in text
    assert not any(n.startswith("evil") for n in seen), seen
    assert "evil" not in sys.modules and "evil.module" not in sys.modules
