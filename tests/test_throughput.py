"""The throughput suite: presets -> well-formed cases; run() checks equivalence first, then yields sane rows;
GEMM ceilings. No wall-clock assertions: only that figures are positive, finite and consistent."""
from __future__ import annotations

import importlib.util

import math
import subprocess
import sys

import numpy as np
import pytest

from harness.core.errors import Unsupported

from harness.measure import ceilings
from implementations.numpy.backend import NumpyBackend
from suites.throughput import suite as tp
from suites.base import Case, RunContext

TIMING_METRICS = {"compile_s", "tokens_per_s", "us_per_step", "gflops", "gflops_deepbench", "eff_gemm",
                  "eff_recurrent"}
BUDGET = 0.02  # seconds per measurement: these tests check plumbing, not speed


class PerturbedNumpy(NumpyBackend):
    """A plug-in backend that is wrong: its forward output is off by 1e-3 relative."""

    variant = "perturbed"

    def _forward(self, spec, params, x, state):
        y, final = super()._forward(spec, params, x, state)
        return y * (1 + 1e-3), final


class _PlatformCannot(Unsupported):
    whole_backend = True  # as torch-compile's CompileError: the platform cannot, skip the backend's other cases


class BrokenCompile(NumpyBackend):
    """Stands in for a torch.compile that cannot compile on this platform."""

    variant = "broken-compile"

    def _forward(self, spec, params, x, state):
        raise _PlatformCannot("torch.compile failed here: inductor: no working C++ compiler\nsecond line")


class BrokenKernel(NumpyBackend):
    variant = "broken-kernel"

    def _forward(self, spec, params, x, state):
        raise RuntimeError("inductor: a real bug")


GATED = ("mingru", "minlstm", "rglru")


def ctx(**kw) -> RunContext:
    return RunContext(seed=0, threads=1, budget_s=BUDGET, preset="smoke", **kw)


def run_rows(case: Case, **kw):
    return list(tp.SUITE.run(case, ctx(**kw)))


def one_case(backend: str, cell: str = "lstm") -> Case:
    return next(c for c in tp.SUITE.cases("smoke", [backend]) if c.cell == cell)


# -- presets and cases --------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["smoke", "quick", "full"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_cases_well_formed_and_unique(preset, device):
    cases = tp.SUITE.cases(preset, None, device)
    keys = [c.key for c in cases]
    assert len(keys) == len(set(keys)), "duplicate case keys"
    assert {c.cell for c in cases} == {"lstm", "gru", "rnn_tanh", "rnn_relu", "mingru", "minlstm", "rglru"}
    for c in cases:
        assert c.suite == "throughput" and c.device == device and c.dtype == "float32"
        assert min(c.batch, c.seq_len, c.hidden_size, c.input_size, c.layers) >= 1
        spec = c.spec()
        assert spec.forward_flops(c.batch, c.seq_len) > 0
        assert set(c.settings["modes"].split(",")) <= {"fwd", "train"}
        assert c.name == f"{c.cell}-L{c.layers}-B{c.batch}-T{c.seq_len}-I{c.input_size}-H{c.hidden_size}-float32"
    backends = {c.backend for c in cases}
    assert {"numpy", "torch", "jax", "torch-cell", "torch-compile", "jax-unroll8", "torch-pscan", "jax-pscan"} <= backends
    # the parallel scans run nothing but the gated linear cells; torch-compile does not claim those
    for c in cases:
        if c.backend in ("torch-pscan", "jax-pscan"):
            assert c.cell in GATED and tp.GATED_TAG in c.settings["tags"].split(",")
        if c.backend == "torch-compile":
            assert c.cell not in GATED


def test_quick_holds_reference_and_sweeps():
    cases = tp.SUITE.cases("quick", ["numpy", "torch", "jax", "torch-cell"])
    ref = [c for c in cases if c.name == "lstm-L1-B64-T100-I256-H256-float32"]
    assert {c.backend for c in ref} == {"numpy", "torch", "jax", "torch-cell"}
    lstm = [c for c in cases if c.cell == "lstm" and c.backend == "numpy"]
    centre = [c for c in lstm if c.batch == 32 and c.seq_len == 50]
    assert sorted(c.hidden_size for c in centre) == [64, 128, 256]
    assert sorted(c.batch for c in lstm if c.hidden_size == 128 and c.seq_len == 50) == [8, 32, 64]
    assert sorted(c.seq_len for c in lstm if c.hidden_size == 128 and c.batch == 32) == [25, 50, 100]
    # secondary variants run only the LSTM centre point and the reference case
    cell_cases = {c.name for c in cases if c.backend == "torch-cell" and c.cell not in GATED}
    assert cell_cases == {"lstm-L1-B32-T50-I128-H128-float32", "lstm-L1-B64-T100-I256-H256-float32"}


def test_the_scan_sweep_keeps_tokens_fixed_and_runs_each_code_once():
    cases = tp.SUITE.cases("quick", None)
    sweep = [c for c in cases if "scan-T" in c.settings["tags"].split(",")]
    by_backend = {}
    for c in sweep:
        assert c.cell == "mingru" and c.hidden_size == 128 and c.batch * c.seq_len == tp.SCAN_TOKENS
        by_backend.setdefault(c.backend, set()).add(c.seq_len)
    assert set(by_backend) == {"numpy", "torch-cell", "torch-pscan", "jax", "jax-unroll8", "jax-pscan"}
    assert all(ts == {64, 256, 1024, 4096, 16384} for ts in by_backend.values())
    # torch runs its gated cells with torch-cell's step loop: timed once, under torch-cell ...
    assert not [c for c in cases if c.backend == "torch" and c.cell in GATED]
    # ... unless torch-cell is not in the run
    alone = tp.SUITE.cases("quick", ["torch"])
    assert {c.seq_len for c in alone if c.cell == "mingru" and "scan-T" in c.settings["tags"]} == \
        {64, 256, 1024, 4096, 16384}
    # beside LSTM and GRU at the centre point
    centre = {c.cell for c in cases if c.backend == "numpy" and c.batch == 32 and c.seq_len == 50
              and c.hidden_size == 128}
    assert {"lstm", "gru", "mingru", "minlstm", "rglru"} <= centre
    full = [c for c in tp.SUITE.cases("full", ["jax-pscan"]) if "scan-T" in c.settings["tags"]]
    assert {(c.cell, c.hidden_size) for c in full} == {("mingru", 128), ("minlstm", 128), ("rglru", 128),
                                                       ("mingru", 256)}


def test_scan_rows_carry_the_cost_model_and_the_crossover_is_found():
    import pandas as pd
    from harness.core.scan_model import scan_cost
    from suites.throughput import scan_report
    c = next(c for c in tp.SUITE.cases("smoke", ["torch-pscan"]) if "scan-T" in c.settings["tags"])
    rows = run_rows(c)
    ok = [r for r in rows if r["metric"] == "fwd_ms" and r["status"] == "ok"]
    assert ok, rows
    e = ok[0]["extra"]
    assert e["scan_form"] == "hillis-steele" and e["scan_framework"] == "torch"
    assert e["scan_flops"] == scan_cost("hillis-steele", c.seq_len, c.batch * c.hidden_size, 4)["flops"]
    # crossovers from a table of medians: the scan loses at short T, wins from T = 1024 on, and a win that does
    # not last (T = 256) is not a crossover
    recs = []
    for T, seq, par in ((64, 1.0, 3.0), (256, 2.0, 1.5), (1024, 4.0, 3.0), (4096, 8.0, 2.0)):
        for b, ms, form in (("torch-cell", seq, "sequential"), ("torch-pscan", par, "hillis-steele"),
                            ("numpy", seq / 4, "sequential")):
            recs.append(dict(metric="fwd_ms", status="ok", value=ms, q25=ms, q75=ms, mode="fwd", cell="mingru",
                             hidden_size=128, seq_len=T, batch=16384 // T, backend=b, scan_form=form,
                             scan_framework=b.split("-")[0], tags="scan-T,gated", suite="throughput"))
    recs[4]["value"] = 2.5  # torch-pscan at T=256: slower than torch-cell (2.0)
    got = {(x["backend"], x["against"]): x for x in scan_report.crossovers(pd.DataFrame(recs))}
    own = got["torch-pscan", "own framework"]
    assert own["crossover_T"] == 1024 and own["ratios"][4096] == pytest.approx(4.0)
    anyb = got["torch-pscan", "any"]  # numpy is 4x faster than torch-cell: the scan never stays ahead of it
    assert anyb["crossover_T"] is None and anyb["ratio_at_max"] == pytest.approx(1.0)
    assert anyb["fastest_sequential"][4096] == "numpy"
    assert "no crossover up to T = 4096" in scan_report.crossover_text(anyb)


def test_full_holds_anchors():
    cpu = {c.name: c for c in tp.SUITE.cases("full", ["torch"], "cpu")}
    assert "lstm-L1-B64-T100-I512-H512-float32" in cpu  # fastrnns default
    assert "lstm-L1-B16-T150-I256-H256-float32" in cpu  # DeepBench small
    cuda = {c.name: c for c in tp.SUITE.cases("full", ["torch"], "cuda")}
    assert "lstm-L1-B128-T25-I4096-H4096-float32" in cuda
    assert "lstm-L1-B128-T25-I1024-H1024-float32" in cuda
    inf = [c for c in cuda.values() if "deepbench-inference" in c.settings["tags"]]
    assert inf and all(c.settings["modes"] == "fwd" for c in inf)
    assert {c.backend for c in tp.SUITE.cases("full", ["torch", "torch-native"], "cuda")} == {"torch", "torch-native"}


def test_cases_bad_input():
    with pytest.raises(ValueError, match="preset"):
        tp.SUITE.cases("huge", ["numpy"])
    with pytest.raises(ValueError, match="device"):
        tp.SUITE.cases("smoke", ["numpy"], "tpu")


def test_import_needs_numpy_only():
    code = ("import sys, suites.throughput.suite, harness.measure.ceilings, harness.report.report, suites.throughput.report; "
            "bad = [m for m in ('torch', 'jax', 'matplotlib', 'pandas') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tp.__file__.rsplit("/suites/", 1)[0])


# -- run ----------------------------------------------------------------------------------------------

def check_timing_rows(rows, case: Case):
    assert all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows if r["status"] != "ok"]
    by = {}
    for r in rows:
        by.setdefault(r["metric"], []).append(r)
    eq = by["equiv_error"][0]
    assert 0 <= eq["value"] <= tp.REL_TOL["float32"]
    for mode in ("fwd", "train"):
        t = [r for r in by[f"{mode}_ms"] if r["extra"]["mode"] == mode]
        assert len(t) == 1
        t = t[0]
        assert t["value"] > 0 and math.isfinite(t["value"]) and t["n"] >= 1 and len(t["samples"]) == t["n"]
        assert t["q25"] <= t["value"] <= t["q75"]
        assert t["extra"]["equiv_error"] == eq["value"] and t["extra"]["threads"] == 1 and t["extra"]["path"]
        got = {r["metric"]: r for r in rows if r["extra"].get("mode") == mode}
        want = TIMING_METRICS - ({"gflops_deepbench"} if case.spec().definition.gated_linear else set())
        assert want <= set(got), want - set(got)
        for m in want:
            assert got[m]["value"] > 0 and math.isfinite(got[m]["value"]), (m, got[m]["value"])
        sec = t["value"] / 1e3
        tokens = case.batch * case.seq_len
        assert got["tokens_per_s"]["value"] == pytest.approx(tokens / sec, rel=1e-9)
        assert got["us_per_step"]["value"] == pytest.approx(sec / case.seq_len * 1e6, rel=1e-9)
        factor = 1 if mode == "fwd" else 3
        flops = case.spec().forward_flops(case.batch, case.seq_len) * factor
        assert got["gflops"]["value"] == pytest.approx(flops / sec / 1e9, rel=1e-9)
        assert got["tokens_per_s"]["q25"] <= got["tokens_per_s"]["value"] <= got["tokens_per_s"]["q75"]


def test_smoke_numpy_runs_every_cell():
    ceilings.clear_cache()
    cases = [c for c in tp.SUITE.cases("smoke", ["numpy"]) if c.cell not in GATED]
    assert len(cases) == 4
    seen_ceilings = 0
    for c in cases:
        rows = run_rows(c)
        check_timing_rows(rows, c)
        seen_ceilings += sum(r["metric"] == "ceiling_gflops" for r in rows)
        for r in rows:
            assert r["backend"] == "numpy" and r["case"] == c.name and r["suite"] == "throughput"
    # square GEMM once per process; input/recurrent once per distinct shape (G differs per cell: lstm, gru, rnn)
    assert seen_ceilings == 1 + 2 * 3


def test_smoke_numpy_runs_the_gated_cells_with_their_cost_model():
    cases = [c for c in tp.SUITE.cases("smoke", ["numpy"]) if c.cell in GATED]
    assert {c.cell for c in cases} == set(GATED) and len(cases) == 5  # 3 at the smoke shape, the scan sweep's 2
    for c in cases[:3]:
        rows = run_rows(c)
        check_timing_rows(rows, c)
        t = [r for r in rows if r["metric"] == "fwd_ms"]
        assert t and all(r["extra"]["scan_form"] == "sequential" and r["extra"]["scan_flops"] > 0 for r in t)


def test_later_processes_time_but_measure_no_ceilings():
    """The GEMM ceilings (and so the efficiencies) come from a case's first process only; every process times."""
    ceilings.clear_cache()
    case = one_case("numpy")
    later = run_rows(case, process=2, processes=5)
    metrics = {r["metric"] for r in later}
    assert {"fwd_ms", "train_ms", "fwd_ms_per_control", "equiv_error"} <= metrics
    assert not metrics & {"ceiling_gflops", "eff_gemm", "eff_recurrent"}, metrics
    first = {r["metric"] for r in run_rows(case, process=0, processes=5)}
    assert {"ceiling_gflops", "eff_gemm", "eff_recurrent"} <= first


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_smoke_other_frameworks(backend):
    pytest.importorskip(backend)
    case = one_case(backend)
    rows = run_rows(case)
    check_timing_rows(rows, case)
    kinds = {r["extra"]["kind"] for r in rows if r["metric"] == "ceiling_gflops"}
    assert kinds <= set(ceilings.KINDS)
    assert all(r["extra"]["framework"] == backend for r in rows if r["metric"] == "ceiling_gflops")


def test_wrong_backend_gives_error_row_and_no_timing():
    case = one_case("numpy")
    bad = Case(**{**case.__dict__, "backend": "tests.test_throughput:PerturbedNumpy"})
    rows = run_rows(bad)
    assert len(rows) == 1
    r = rows[0]
    assert r["status"] == "error" and r["metric"] == "equiv_error"
    assert r["value"] > tp.REL_TOL["float32"] and "y" == r["extra"]["worst"]
    assert "disagrees" in r["reason"] and "not timed" in r["reason"]


def test_compile_failure_is_a_skip(monkeypatch):
    monkeypatch.setattr(tp, "_WHOLE_BACKEND_SKIP", {})
    broken = BrokenCompile()
    calls = []
    monkeypatch.setattr(tp, "_backend", lambda name, device, threads: calls.append(name) or broken)
    case = Case(**{**one_case("numpy").__dict__, "backend": "torch-compile"})
    for _ in range(2):  # the second one is skipped at once, with the same reason
        rows = run_rows(case)
        assert [r["status"] for r in rows] == ["skipped"]
        assert "torch.compile failed here" in rows[0]["reason"] and "C++" in rows[0]["reason"]
        assert "\n" not in rows[0]["reason"]
    assert len(calls) == 1  # whole_backend: the backend's remaining cases do not even try
    # an exception that is not the backend's "I cannot" propagates (the runner records it as an error)
    monkeypatch.setattr(tp, "_backend", lambda name, device, threads: BrokenKernel())
    other = Case(**{**one_case("numpy").__dict__, "backend": "torch-cell"})
    with pytest.raises(RuntimeError, match="inductor"):
        run_rows(other)


def test_unavailable_backend_is_a_skip(monkeypatch):
    from implementations import registry

    def unavailable(name, device, threads):
        raise registry.BackendError(f"backend {name!r} is unavailable: not installed")
    monkeypatch.setattr(tp, "_backend", unavailable)
    rows = run_rows(one_case("jax"))
    assert [r["status"] for r in rows] == ["skipped"] and "not installed" in rows[0]["reason"]


def test_equivalence_error_and_data():
    from harness.core.spec import CellSpec
    spec = CellSpec("gru", 5, 7)
    data = tp.make_data(spec, 3, 9, seed=1)
    again = tp.make_data(spec, 3, 9, seed=1)
    np.testing.assert_array_equal(data.x, again.x)
    assert data.x.shape == (9, 3, 5) and data.dy.shape == (9, 3, 7) and data.state.shape == (1, 3, 7)
    err, where, first = tp.equivalence_error(NumpyBackend(), spec, data, "float32", 9)
    assert 0 < err < 1e-5 and where and set(first) == {"check_fwd_s", "check_vjp_s", "parts"}
    assert list(first["parts"])[0] == "y" and max(first["parts"].values()) == err
    err64, _, _ = tp.equivalence_error(NumpyBackend(), spec, data, "float64", 4)
    assert err64 < 1e-12
    err_bad, where_bad, _ = tp.equivalence_error(PerturbedNumpy(), spec, data, "float32", 9)
    assert err_bad == pytest.approx(1e-3, rel=1e-2) and where_bad == "y"


# -- ceilings -------------------------------------------------------------------------------------------

def test_ceilings_numpy_cached_and_consistent():
    from harness.core.spec import CellSpec
    ceilings.clear_cache()
    spec = CellSpec("lstm", 16, 8)
    shapes = ceilings.case_shapes(spec, batch=4, seq_len=5)
    assert shapes["input_gemm"] == (20, 16, 32) and shapes["recurrent"] == (5, 4, 16, 8, 32)
    c, fresh = ceilings.measure("numpy", "recurrent", shapes["recurrent"], budget_s=0.01)
    assert fresh and c.gflops > 0 and c.flops == spec.forward_flops(4, 5)
    c2, fresh2 = ceilings.measure("numpy", "recurrent", shapes["recurrent"], budget_s=0.01)
    assert not fresh2 and c2 is c
    sq, _ = ceilings.measure("numpy", "gemm_square", (64, 64, 64), budget_s=0.01)
    assert sq.flops == 2 * 64 ** 3 and sq.median_s > 0 and len(sq.samples_s) >= 1


def test_a_ceiling_is_the_best_of_its_strategies_and_sizes():
    """Every strategy (and square size) is timed; the fastest is the ceiling; each candidate is recorded."""
    from harness.core.spec import CellSpec
    ceilings.clear_cache()
    spec = CellSpec("gru", 16, 8)
    got = dict((c.kind, c) for c, _ in ceilings.ceilings_for_case("numpy", spec, 4, 5, budget_s=0.01))
    rec = got["recurrent"]
    names = [k.split("@")[0] for k, _ in rec.candidates]
    assert names == list(ceilings.STRATEGIES["numpy"]["recurrent"])
    assert rec.gflops == pytest.approx(max(v for _, v in rec.candidates)) and rec.strategy in names
    sq = got["gemm_square"]
    assert {k.split("@")[1] for k, _ in sq.candidates} == {f"{n}x{n}x{n}" for n in ceilings.SQUARE_NS["cpu"]}
    assert sq.gflops == pytest.approx(max(v for _, v in sq.candidates))


def test_ceiling_strategies_of_torch_and_jax_run():
    """The framework-specific strategies build and run (oneDNN linear where torch has it; scans in JAX)."""
    ran = 0
    for fw, mod in (("torch", "torch"), ("jax", "jax")):
        if importlib.util.find_spec(mod) is None:
            continue
        if fw == "jax":
            import implementations.jax.backend  # noqa: F401 - sets x64 as the backend does
        ceilings.clear_cache()
        c, _ = ceilings.measure(fw, "recurrent", (3, 2, 4, 4, 16), budget_s=0.005)
        assert len(c.candidates) >= 2 and c.gflops > 0
        ran += 1
    if not ran:
        pytest.skip("neither torch nor jax is installed")


def test_an_efficiency_past_its_margin_is_flagged_a_defect():
    from suites.throughput.suite import EFF_MARGIN, _defect
    assert _defect(0.9) == {} and _defect(1.0 + EFF_MARGIN * 0.5) == {}
    why = _defect(1.0 + EFF_MARGIN + 0.05)["ceiling_defect"]
    assert "beat its ceiling" in why and "defect" in why


def test_ceilings_bad_input():
    with pytest.raises(ValueError, match="framework"):
        ceilings.measure("tensorflow", "gemm_square", (8, 8, 8))
    with pytest.raises(ValueError, match="kind"):
        ceilings.measure("numpy", "conv", (8, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        ceilings.measure("numpy", "recurrent", (8, 8, 8))
    with pytest.raises(TypeError, match="dtype"):
        ceilings.measure("numpy", "gemm_square", (8, 8, 8), dtype="int8")
    from types import SimpleNamespace
    assert ceilings.framework_of(SimpleNamespace(framework="numpy", name="x")) == "numpy"
    assert ceilings.framework_of(SimpleNamespace(framework="acme", name="x")) is None  # no ceilings, no efficiency
    own = SimpleNamespace(framework=None, name="mine", gemm=lambda kind, shape, dtype: (lambda: None))
    assert ceilings.framework_of(own) == "own:mine"
