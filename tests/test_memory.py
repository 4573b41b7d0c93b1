"""harness/memory.py (probes in fresh processes, theory), suites/memory.py (cases, derived rows), report section."""
import os

import numpy as np
import pytest

from harness.measure import memory
from harness.core.spec import CellSpec
from implementations.numpy import rtrl as numpy_rtrl


def test_theory_scaling():
    spec = CellSpec("lstm", 16, 16)
    from suites.memory.theory import theory_bytes
    b = [theory_bytes(spec, T, 4, "float64", "bptt") for T in (100, 200, 300)]
    assert b[1] - b[0] == b[2] - b[1] > 0  # exactly linear in T
    r = [theory_bytes(spec, T, 4, "float64", "rtrl") for T in (10, 1000)]
    assert r[0] == r[1]  # RTRL does not depend on T
    k = [theory_bytes(spec, T, 4, "float64", "tbptt", 10) for T in (100, 1000)]
    assert (k[1] - k[0]) == 900 * 4 * 16 * 8  # only dx (T·B·I) grows with T
    assert theory_bytes(spec, 100, 4, "float32", "bptt") * 2 == b[0]


@pytest.mark.parametrize("kw,match", [(dict(algorithm="bogus"), "algorithm"),
                                      (dict(algorithm="tbptt", truncation=0), "truncation"),
                                      (dict(algorithm="tbptt", truncation=1.5), "truncation"),
                                      (dict(algorithm="bptt", truncation=4), "truncation"),
                                      (dict(algorithm="bptt", impl="chunked"), "impl"),
                                      (dict(algorithm="bptt", batch=0), "batch")])
def test_make_request_rejects_bad_input(kw, match):
    args = dict(backend="numpy", device="cpu", cell="rnn_tanh", layers=1, batch=2, seq_len=5, input_size=3,
                hidden_size=4, dtype="float64")
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        memory.make_request(**args)


def _req(**kw):
    a = dict(backend="numpy", device="cpu", cell="lstm", layers=1, batch=4, seq_len=100, input_size=32,
             hidden_size=32, dtype="float64", algorithm="bptt")
    a.update(kw)
    return memory.make_request(**a)


def test_numpy_probe_plausible():
    """tracemalloc peak >= the bytes BPTT must store; RTRL near its influence matrices; chunked tBPTT smaller."""
    from suites.memory.theory import theory_bytes
    spec = CellSpec("lstm", 32, 32)
    bp = memory.measure_peak(_req())
    assert bp["status"] == "ok" and bp["method"] == "tracemalloc" and bp["estimate"] is False
    theory = theory_bytes(spec, 100, 4, "float64", "bptt")
    assert theory <= bp["peak_bytes"] < 2.0 * theory
    rt = memory.measure_peak(_req(algorithm="rtrl", seq_len=5))
    infl = numpy_rtrl.rtrl_memory(spec, 4, "float64")["influence"]
    assert rt["status"] == "ok" and infl <= rt["peak_bytes"] <= 2.0 * theory_bytes(spec, 5, 4, "float64", "rtrl")
    ch = memory.measure_peak(_req(algorithm="tbptt", truncation=10, impl="chunked"))
    assert ch["status"] == "ok"
    assert ch["peak_bytes"] < 0.6 * bp["peak_bytes"]  # k = 10 of T = 100 steps stored at a time


def test_probe_reports_refusal_and_errors():
    # A request far beyond any machine's memory: RTRL refuses up front, the probe says so (no crash).
    r = memory.measure_peak(_req(algorithm="rtrl", hidden_size=4096, input_size=4096, batch=64, seq_len=1))
    assert r["status"] == "skipped" and "bytes" in r["reason"] and r["peak_bytes"] is None
    r = memory.measure_peak(_req(backend="nonexistent"))
    assert r["status"] in ("skipped", "error") and r["reason"]


def test_torch_probe():
    pytest.importorskip("torch")
    r = memory.measure_peak(_req(backend="torch", seq_len=200))
    assert r["status"] == "ok", r
    assert r["method"] in ("vmhwm", "ru_maxrss") and r["peak_bytes"] > 0


def test_suite_cases_and_derive(tmp_path):
    from harness.measure.records import RowWriter
    from suites.base import RunContext
    from suites.memory.suite import SUITE, derive

    for preset in ("smoke", "quick", "full"):
        cs = SUITE.cases(preset, ["numpy", "torch", "jax"], "cpu")
        assert cs[-1].settings.get("kind") == "summary"
        assert len({c.key for c in cs}) == len(cs)
    smoke = SUITE.cases("smoke", None, "cpu")
    # smoke: the reference's sweeps; every other backend two short BPTT points (a fresh process costs seconds)
    for b in {c.backend for c in smoke} - {"numpy"}:
        pts = [c for c in smoke if c.backend == b and c.settings.get("kind") != "summary"]
        supported = [c for c in pts if c.cell == "rnn_tanh"]  # the T sweep; every other cell once, at T=20
        assert sorted(c.cell for c in pts if c.cell != "rnn_tanh") == ["gru", "lstm", "rnn_relu"]
        assert [c.seq_len for c in supported] == [20, 40] and all(c.settings["algorithm"] == "bptt" for c in pts)
        assert {(c.hidden_size, c.batch) for c in pts} == {(64, 8)}
    # NumPy runs on the CPU only: named on CUDA, it keeps two points for the runner to record skipped with why
    assert len([c for c in SUITE.cases("quick", ["numpy"], "cuda") if c.settings.get("kind") != "summary"]) <= 2
    with pytest.raises(ValueError, match="preset"):
        SUITE.cases("huge", None, "cpu")
    # Synthetic rows with known exponents: BPTT mem ∝ T, RTRL flat; RTRL mem ∝ H³, time ∝ H⁴.
    case = SUITE.cases("smoke", ["numpy"], "cpu")[-1]
    rows = []
    from suites.base import Case

    def add(sweep, alg, T, H, mem, tim):
        c = Case("memory", f"x-{sweep}-{alg}-{T}-{H}", "numpy", "cpu", "rnn_tanh", 1, 1, T, H, H, "float64",
                 settings={"sweep": sweep, "algorithm": alg, "truncation": None, "impl": "backend"})
        rows.append(c.row("peak_bytes", mem, "B", theory_bytes=mem))
        rows.append(c.row("time_per_step_us", tim, "us"))
    for T in (100, 200, 400):
        add("T", "bptt", T, 16, 1000.0 * T, 1.0)
        add("T", "rtrl", T, 16, 5e5, 1.0)
    for H in (16, 32, 64, 128):
        add("H", "rtrl", 10, H, float(H) ** 3, float(H) ** 4)
        add("H", "bptt", 10, H, 100.0 * H * 10, float(H) ** 2)
        add("H", "bptt", 40, H, 100.0 * H * 40, float(H) ** 2)
    d = {(r["metric"], r["extra"]["algorithm"], r["hidden_size"]): r for r in derive(rows, case)}
    assert d[("exponent_mem_T", "bptt", 16)]["value"] == pytest.approx(1.0)
    assert d[("exponent_mem_T", "rtrl", 16)]["value"] == pytest.approx(0.0, abs=1e-12)
    assert d[("exponent_mem_H", "rtrl", None)]["value"] == pytest.approx(3.0)
    assert d[("exponent_time_H", "rtrl", None)]["value"] == pytest.approx(4.0)
    assert d[("exponent_time_H", "bptt", None)]["value"] == pytest.approx(2.0)
    assert d[("exponent_time_H", "rtrl", None)]["extra"]["method"] == "separate cases"
    # A side-by-side slope measured in the largest-H case replaces the slope between the separate cases.
    pc = Case("memory", "x-H-rtrl-10-128", "numpy", "cpu", "rnn_tanh", 1, 1, 10, 128, 128, "float64",
              settings={"sweep": "H", "algorithm": "rtrl", "truncation": None, "impl": "backend"})
    d2 = {(r["metric"], r["extra"]["algorithm"]): r for r in derive(
        rows + [pc.row("time_exponent_pair", 3.7, "exponent", fit_range=[64, 128])], case)}
    e = d2[("exponent_time_H", "rtrl")]
    assert e["value"] == 3.7 and e["extra"]["method"] == "side by side"
    assert e["extra"]["exponent_separate"] == pytest.approx(4.0) and e["extra"]["fit_range"] == [64, 128]
    x = d[("crossover_T", "bptt_vs_rtrl", 64)]
    assert x["value"] == pytest.approx(64.0 ** 3 / (100 * 64))  # R / (bytes per step)
    # The summary case reads the rows back from the run directory.
    with RowWriter(str(tmp_path), "r1") as w:
        for r in rows:
            w.write(r)
    out = list(SUITE.run(case, RunContext(run_dir=str(tmp_path), preset="smoke")))
    assert {r["metric"] for r in out} >= {"exponent_mem_T", "exponent_mem_H", "crossover_T"}
    assert list(SUITE.run(case, RunContext(run_dir=None)))[0]["status"] == "skipped"


def test_report_section(tmp_path):
    pytest.importorskip("matplotlib")
    import pandas as pd
    from suites.memory.report import section
    from suites.base import Case
    from suites.memory.suite import SUITE, derive

    rows = []
    for alg, impl, k in (("bptt", "backend", None), ("rtrl", "backend", None), ("tbptt", "chunked", 10)):
        hs = [("H", T, H) for H in (16, 32, 64) for T in ((10, 40) if alg == "bptt" else (10,))]
        for sweep, T, H in [("T", T, 16) for T in (100, 200, 400)] + hs:
            c = Case("memory", f"{sweep}-{alg}-{T}-{H}", "numpy", "cpu", "gru", 1, 2, T, H, H, "float64",
                     settings={"sweep": sweep, "algorithm": alg, "truncation": k, "impl": impl})
            mem = {"bptt": 50.0 * T * H, "rtrl": float(H) ** 3 * 9, "tbptt": 500.0 * H + T}[alg]
            rows.append(c.row("peak_bytes", mem, "B", theory_bytes=0.9 * mem, ratio=1 / 0.9, method="tracemalloc",
                              estimate=False))
            rows.append(c.row("time_per_step_us", float(H) ** (4 if alg == "rtrl" else 2), "us"))
            if alg == "rtrl":
                rows.append(c.row("rtrl_gemm_efficiency", 0.6, "ratio", achieved_gflops=6.0, ceiling_gflops=10.0))
    rows += list(derive(rows, SUITE.cases("smoke", ["numpy"], "cpu")[-1]))
    flat = []
    for r in rows:
        f = {k: v for k, v in r.items() if k != "extra"}
        for k, v in r["extra"].items():
            f.setdefault(k, v)
        flat.append(f)
    md = section(pd.DataFrame(flat), str(tmp_path / "figures"))
    assert "## Memory" in md and "figures/memory_vs_T.png" in md and "exponent_mem_H" in md
    for name in ("memory_vs_T.png", "memory_vs_H.png", "time_vs_H.png", "memory_crossover_T.png"):
        assert os.path.getsize(tmp_path / "figures" / name) > 1000, name
    assert "meets" in md  # RTRL's synthetic H³ memory meets its target


def test_rtrl_timing_pairs_the_largest_h_and_the_ceiling_in_one_process():
    """The largest-H RTRL case of an H sweep times the next smaller H beside it; every RTRL case times the
    GEMM ceiling in alternation. Real (tiny) measurements: the rows exist, are finite and consistent."""
    from suites.memory import suite as mem
    from suites.base import RunContext
    SUITE = mem.SUITE
    big = [c for c in SUITE.cases("smoke", ["numpy"], "cpu") if c.settings.get("pair_hidden")]
    assert [(c.hidden_size, c.settings["pair_hidden"]) for c in big] == [(16, 8)]
    quick = {c.cell: c.settings["pair_hidden"] for c in SUITE.cases("quick", ["numpy"], "cpu")
             if c.settings.get("pair_hidden") and c.batch == 1}
    assert quick == {"rnn_tanh": 128, "lstm": 128, "gru": 128}
    out = {r["metric"]: r for r in SUITE._timing(big[0], RunContext(seed=0), {
        "algorithm": "rtrl", "truncation": None, "impl": "backend", "sweep": "H"})}
    assert set(out) == {"time_per_step_us", "rtrl_gemm_efficiency", "time_exponent_pair"}
    pair = out["time_exponent_pair"]
    assert mem.RTRL_SAMPLES <= len(pair["samples"]) <= mem.RTRL_MAX_SAMPLES and np.isfinite(pair["value"])
    assert pair["extra"]["fit_range"] == [8, 16]
    eff = out["rtrl_gemm_efficiency"]
    assert 0 < eff["value"] < 5 and eff["extra"]["ceiling_gflops"] > 0
    assert mem._timed_steps(CellSpec(cell="lstm", input_size=4, hidden_size=256), "rtrl", 10) == 2
    assert mem._timed_steps(CellSpec(cell="lstm", input_size=4, hidden_size=256), "bptt", 10) == 10


def test_alternating_rotates_rewarms_and_stops_on_its_budget():
    from suites.memory.suite import _alternating
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    t = _alternating(fns, 3, max_rounds=3, budget_s=0.0)
    assert set(t) == {"a", "b", "_first"} and len(t["a"]) == len(t["b"]) == 3
    # warm-up a b; then each timed call follows an untimed one of itself, the round's order rotating
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"] + ["a", "a", "b", "b"]
    calls.clear()
    _alternating(fns, 2, max_rounds=2, rewarm_below_s=0.0)  # expensive callables: no re-warm call
    assert calls == ["a", "b", "a", "b", "b", "a"]
    # more rounds while within the budget, never more than max_rounds
    assert len(_alternating(fns, 2, max_rounds=7, budget_s=60.0)["a"]) == 7


def test_quick_preset_gives_frameworks_their_own_t_sweep():
    from suites.memory.suite import FRAMEWORK_T, SUITE
    for b in ("torch", "torch-cell", "jax"):
        cs = [c for c in SUITE.cases("quick", [b], "cpu") if c.settings.get("algorithm") == "bptt"]
        assert sorted(c.seq_len for c in cs) == list(FRAMEWORK_T)
        assert {(c.cell, c.hidden_size, c.batch) for c in cs} == {("rnn_tanh", 64, 8)}
    rt = [c for c in SUITE.cases("quick", ["jax"], "cpu") if c.settings.get("algorithm") == "rtrl"]
    assert [(c.seq_len, c.hidden_size) for c in rt] == [(200, 16)]
    assert not [c for c in SUITE.cases("quick", ["torch"], "cpu") if c.settings.get("pair_hidden")]
