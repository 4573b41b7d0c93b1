"""harness/memory.py (probes in fresh processes, theory), suites/memory.py (cases, derived rows), report section."""
import os

import numpy as np
import pytest

from harness.measure import memory
from harness.core.spec import CellSpec
from implementations.numpy import rtrl as numpy_rtrl



def _flat(rows):
    """Rows as report tables see them: ``extra`` merged into each row (the row's own keys win)."""
    out = []
    for r in rows:
        f = {k: v for k, v in r.items() if k != "extra"}
        for k, v in r["extra"].items():
            f.setdefault(k, v)
        out.append(f)
    return out

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


def test_vmhwm_probe_reports_the_median_of_its_runs(monkeypatch):
    """The generic probe measures a run 3 times in its process and reports the median; a long run only once."""
    import numpy as np
    from harness.core import peaks
    calls = []

    def run():
        calls.append(1)
        return np.ones(2_000_000 * len(calls))  # 16, 32, 48 MB: the second run's peak is the median

    r = peaks.vmhwm_peak(lambda: None, run, "test")
    assert len(calls) == 3 and len(r["peak_runs"]) == 3 and r["peak_bytes"] == sorted(r["peak_runs"])[1]
    if r["method"] == "vmhwm":  # resident pages of the array itself, within the allocator's slack
        assert [round(p / 16e6) for p in r["peak_runs"]] == [1, 2, 3], r
    calls.clear()
    monkeypatch.setattr(peaks, "VMHWM_REPEAT_MAX_S", 0.0)
    r = peaks.vmhwm_peak(lambda: None, run, "test")
    assert len(calls) == 1 and len(r["peak_runs"]) == 1


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
    md = section(pd.DataFrame(_flat(rows)), str(tmp_path / "figures"))
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


# -- the gated linear cells (issue 16, memory) ---------------------------------------------------------------

GATED = ("mingru", "minlstm", "rglru")


def _pts(cases, **match):
    return [c for c in cases if c.settings.get("kind") is None and all(
        (getattr(c, k) if hasattr(c, k) else c.settings.get(k)) == v for k, v in match.items())]


def test_gated_points_exist_in_every_preset():
    from suites.memory.suite import FIXED_I, SUITE
    smoke, quick, full = (SUITE.cases(p, ["numpy"], "cpu") for p in ("smoke", "quick", "full"))
    for preset, cs, cells, ratio_cells, Ts in (("smoke", smoke, GATED, ("mingru",), [40, 80, 160]),
                                               ("quick", quick, ("mingru",), ("mingru",), [200, 400, 800, 1600]),
                                               ("full", full, GATED, GATED, [200, 400, 800, 1600, 3200])):
        for cell in cells:
            for alg in ("bptt", "rtrl", "tbptt"):
                got = _pts(cs, cell=cell, sweep="T", algorithm=alg)
                assert sorted(c.seq_len for c in got) == Ts, (preset, cell, alg)
                assert all(c.input_size == c.hidden_size and "fixed_input" not in c.settings for c in got)
            # the gated tBPTT is the backend's own, chunked: measured and timed as impl="chunked"
            assert {c.settings["impl"] for c in _pts(cs, cell=cell, sweep="T", algorithm="tbptt")} == {"chunked"}
        ratio = [c for c in cs if c.settings.get("kind") == "time_ratio"]
        assert sorted(c.cell for c in ratio) == sorted(ratio_cells)
        assert cs[-1].settings.get("kind") == "summary" and len({c.key for c in cs}) == len(cs)
    assert not _pts(quick, cell="minlstm") and not _pts(quick, cell="rglru")
    # quick: the fixed-I H sweep of minGRU (RTRL at one length, BPTT at two) and the LSTM's RTRL beside it
    fx = _pts(quick, cell="mingru", sweep="H")
    assert {(c.hidden_size, c.input_size, c.batch) for c in fx} == {(H, FIXED_I, 1) for H in (32, 64, 128, 256, 512)}
    assert all(c.settings["fixed_input"] == FIXED_I and f"-I{FIXED_I}-" in c.name for c in fx)
    assert sorted({c.seq_len for c in fx if c.settings["algorithm"] == "bptt"}) == [40, 160]
    lstm = _pts(quick, cell="lstm", fixed_input=FIXED_I)
    assert sorted((c.hidden_size, c.settings["algorithm"]) for c in lstm) == [(32, "rtrl"), (64, "rtrl"), (128, "rtrl")]
    assert not [c for c in lstm if c.settings.get("pair_hidden")]
    (r,) = [c for c in quick if c.settings.get("kind") == "time_ratio"]
    assert (r.cell, r.hidden_size, r.input_size, r.batch, r.seq_len) == ("mingru", 256, 256, 1, 200)
    assert {c.cell for c in _pts(full, sweep="H") if c.settings.get("fixed_input")} == set(GATED) | {"lstm"}
    # smoke: the fixed-I sweep at H >= 32 (what the summary fits)
    assert sorted({c.hidden_size for c in _pts(smoke, cell="mingru", sweep="H")}) == [32, 64, 128]
    # the other backends measure no gated point, no fixed-I point and no time ratio
    for preset in ("smoke", "quick", "full"):
        for c in SUITE.cases(preset, ["torch", "torch-cell", "jax"], "cpu"):
            assert c.cell not in GATED and not c.settings.get("fixed_input"), (preset, c.name)
            assert c.settings.get("kind") != "time_ratio"


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "64"])
def test_point_refuses_a_bad_input_size(bad):
    from harness.core.errors import InputError
    from suites.memory.suite import Point
    with pytest.raises(InputError, match=r"Point\.input: got"):
        Point("H", "mingru", 1, 40, 64, "rtrl", input=bad)
    assert Point("H", "mingru", 1, 40, 64, "rtrl", input=8).input_size == 8
    assert Point("H", "mingru", 1, 40, 64, "rtrl").input_size == 64


def test_gated_theory_refuses_what_it_does_not_count():
    from harness.core.errors import InputError
    from suites.memory import theory
    with pytest.raises(InputError, match="num_layers"):
        theory.gated_rtrl_elements(CellSpec("mingru", 8, 8, 2), 10, 1)
    with pytest.raises(InputError, match="gated linear counts"):
        theory.gated_bptt_elements(CellSpec("lstm", 8, 8), 10, 1)
    with pytest.raises(InputError, match="block"):
        theory.gated_step_costs(CellSpec("mingru", 8, 8), 1, 8, 0)
    with pytest.raises(InputError, match="batch"):
        theory.gated_step_costs(CellSpec("mingru", 8, 8), 0, 8, 32)
    with pytest.raises(InputError, match="seq_len"):
        theory.gated_bptt_elements(CellSpec("rglru", 8, 8), 0, 1)


@pytest.mark.parametrize("cell", GATED)
def test_gated_theory_matches_the_traced_peak(cell):
    """tracemalloc's exact peak of the reference against the counted theory, every algorithm; RTRL flat in T
    (one block's buffers alive at a time); tBPTT growing with T by dx alone (the chunks' gradients summed)."""
    from harness.core.params import init_params
    from implementations import registry
    from suites.memory.theory import theory_bytes
    be = registry.get("numpy", "cpu")
    I, H, B = 32, 64, 4
    spec = CellSpec(cell, I, H)
    params = init_params(spec, seed=0, dtype="float64")
    peaks = {}
    for T in (80, 320):
        rng = np.random.default_rng(1)
        x, dy = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))
        for alg, k in (("bptt", None), ("rtrl", None), ("tbptt", 20)):
            got = be.peak_memory(spec, params, x, dy, np.zeros((1, B, H)), algorithm=alg, truncation=k)["peak_bytes"]
            th = theory_bytes(spec, T, B, "float64", alg, k)
            assert 1.0 <= got / th < 1.06, (alg, T, got, th)
            peaks[(alg, T)] = got
    assert peaks[("rtrl", 320)] == pytest.approx(peaks[("rtrl", 80)], rel=0.01)
    assert peaks[("tbptt", 320)] - peaks[("tbptt", 80)] == pytest.approx(240 * B * I * 8, rel=0.05)
    assert peaks[("bptt", 320)] > 3.5 * peaks[("bptt", 80)] * 0.95
    # the classic cells' count (harness.core.cells) is not the gated reference's: theory counts its own
    assert theory_bytes(spec, 80, B, "float64", "bptt") > 2 * spec.definition.bptt_stored_elements(
        B, 80, [I], H, spec.num_params) * 8


def _gated_synthetic_rows():
    from suites.base import Case
    rows = []

    def add(cell, alg, T, H, I, mem, fixed):
        settings = {"sweep": "H", "algorithm": alg, "truncation": None, "impl": "backend"}
        if fixed:
            settings["fixed_input"] = I
        c = Case("memory", f"x-{cell}-{alg}-{T}-{H}-{I}", "numpy", "cpu", cell, 1, 1, T, I, H, "float64",
                 settings=settings)
        rows.append(c.row("peak_bytes", mem, "B", theory_bytes=mem))
        rows.append(c.row("time_per_step_us", float(H), "us"))
    for H in (32, 64, 128):
        add("mingru", "rtrl", 40, H, 64, 1000.0 * H, True)        # ∝ H at fixed I
        add("mingru", "bptt", 40, H, 64, 100.0 * H * 40, True)
        add("mingru", "bptt", 160, H, 64, 100.0 * H * 160, True)
        add("mingru", "rtrl", 40, H, H, 10.0 * H * H, False)      # ∝ H² at I = H: another group
        add("lstm", "rtrl", 10, H, 64, float(H) ** 2.5, True)
        add("lstm", "rtrl", 10, H, H, float(H) ** 3, False)
    return rows


def test_fixed_input_sweeps_group_apart_with_their_own_targets():
    from suites.memory.suite import SUITE, derive
    rows = _gated_synthetic_rows()
    out = list(derive(rows, SUITE.cases("smoke", ["numpy"], "cpu")[-1]))
    ex = {(r["cell"], r["extra"]["algorithm"], r["extra"].get("fixed_input")): r for r in out
          if r["metric"] == "exponent_mem_H"}
    assert set(ex) == {("mingru", "rtrl", 64), ("mingru", "bptt", 64), ("mingru", "rtrl", None),
                       ("lstm", "rtrl", 64), ("lstm", "rtrl", None)}
    g = ex[("mingru", "rtrl", 64)]
    assert g["value"] == pytest.approx(1.0) and (g["extra"]["target_lo"], g["extra"]["target_hi"]) == (0.9, 1.1)
    assert g["input_size"] == 64 and g["extra"]["theory_exponent"] == pytest.approx(1.0)
    assert ex[("mingru", "rtrl", None)]["value"] == pytest.approx(2.0)
    assert ex[("lstm", "rtrl", 64)]["value"] == pytest.approx(2.5)
    assert ex[("lstm", "rtrl", 64)]["extra"]["target_lo"] is None  # the classic targets are for I = H
    assert (ex[("lstm", "rtrl", None)]["extra"]["target_lo"], ex[("lstm", "rtrl", None)]["extra"]["target_hi"]) \
        == (2.7, 3.3)
    t = {(r["cell"], r["extra"].get("fixed_input")): r for r in out
         if r["metric"] == "exponent_time_H" and r["extra"]["algorithm"] == "rtrl"}
    assert t[("mingru", 64)]["extra"]["target_lo"] is None and t[("lstm", None)]["extra"]["target_lo"] == 3.5
    # T* from the fixed-I sweep's own BPTT line and RTRL level: 1000·H / (100·H) = 10 steps at every H
    cr = [r for r in out if r["metric"] == "crossover_T"]
    assert [r["extra"]["fixed_input"] for r in cr] == [64, 64, 64]
    assert all(r["value"] == pytest.approx(10.0) for r in cr)


def test_smoke_runs_the_gated_points_end_to_end(tmp_path):
    """The smoke preset's gated cases through SUITE.run (fresh-process peaks, timings), rows written and read back
    by the summary: measured/theory near 1, RTRL flat in T, the fixed-I exponent within its target, the time-ratio
    rows of both forms."""
    from harness.measure.records import RowWriter
    from suites.base import RunContext
    from suites.memory.suite import SUITE
    cs = [c for c in SUITE.cases("smoke", ["numpy"], "cpu")
          if c.cell in GATED or c.settings.get("kind") in ("summary", "time_ratio")]
    ctx = RunContext(seed=0, threads=1, preset="smoke", run_dir=str(tmp_path))
    rows = []
    with RowWriter(str(tmp_path), "r1") as w:
        for c in cs:
            for r in SUITE.run(c, ctx):
                w.write(r)
                rows.append(r)
    assert all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows if r["status"] != "ok"][:3]
    peaks = [r for r in rows if r["metric"] == "peak_bytes"]
    assert len(peaks) == len([c for c in cs if c.settings.get("kind") is None])
    assert all(1.0 <= r["extra"]["ratio"] < 1.3 for r in peaks), sorted(r["extra"]["ratio"] for r in peaks)[-3:]
    times = [r for r in rows if r["metric"] == "time_per_step_us" and r["extra"]["algorithm"] == "rtrl"]
    assert times and all(r["extra"]["chunk"] == 32 and r["extra"]["timed_steps"] % 32 == 0 for r in times)
    ex = {(r["metric"], r["cell"], r["extra"]["algorithm"], r["extra"].get("fixed_input")): r["value"]
          for r in rows if r["metric"].startswith("exponent_mem")}
    assert 0.9 < ex[("exponent_mem_H", "mingru", "rtrl", 16)] < 1.1
    for cell in GATED:
        assert abs(ex[("exponent_mem_T", cell, "rtrl", None)]) < 0.1
        assert 0.9 < ex[("exponent_mem_T", cell, "bptt", None)] < 1.1
    ratio = {r["extra"]["form"]: r for r in rows if r["metric"] == "rtrl_bptt_time_ratio"}
    assert set(ratio) == {"step", "block"} and ratio["step"]["extra"]["chunk"] == 1
    for form, r in ratio.items():
        e = r["extra"]
        assert r["value"] > 0 and len(r["samples"]) == e["rounds"] >= 5
        assert r["value"] == pytest.approx(float(np.median(r["samples"])))
        assert e["grad_rel_diff"] < 1e-12  # the forms compute BPTT's gradient
        assert e["rtrl_us_per_step_range"][0] <= e["rtrl_us_per_step"] <= e["rtrl_us_per_step_range"][1]
        assert e["model_bytes_per_step"] > 0 and e["model_bytes_ratio"] == pytest.approx(
            e["model_bytes_per_step"] / e["bptt_model_bytes_per_step"])
    # per-step RTRL passes over the influence every step, the block form once per block
    assert ratio["step"]["extra"]["model_bytes_per_step"] > 4 * ratio["block"]["extra"]["model_bytes_per_step"]


def test_time_ratio_case_refuses_what_it_does_not_time():
    from suites.base import Case, RunContext
    from suites.memory.suite import SUITE
    c = Case("memory", "ratio-x", "numpy", "cpu", "lstm", 1, 1, 10, 8, 8, "float64",
             settings={"kind": "time_ratio", "algorithm": "rtrl", "chunk": 32})
    out = list(SUITE.run(c, RunContext(seed=0)))
    assert [r["extra"]["form"] for r in out] == ["step", "block"]
    assert all(r["status"] == "skipped" and "gated linear cells" in r["reason"] for r in out)
    c2 = Case("memory", "ratio-y", "numpy", "cpu", "mingru", 2, 1, 10, 8, 8, "float64",
              settings={"kind": "time_ratio", "algorithm": "rtrl", "chunk": 32})
    out = list(SUITE.run(c2, RunContext(seed=0)))
    assert all(r["status"] == "skipped" and "num_layers=2" in r["reason"] for r in out)


def test_gated_step_costs_count_the_passes():
    """The bytes model: per-step RTRL 11 passes of the influence per step, the block form 11 per block."""
    from suites.memory.theory import gated_step_costs
    spec = CellSpec("mingru", 256, 256)
    c = gated_step_costs(spec, 1, 8, 32)
    m, W = 2 * 256 * 257, 2 * 256 * 256  # the influence; the weights (the step form's one-step GEMM reads them)
    assert c["step"]["influence_bytes"] == m * 8
    assert c["step"]["bytes"] - c["block"]["bytes"] == pytest.approx((11 * m + W) * 8 * (1 - 1 / 32), rel=0.02)
    assert c["block"]["flops"] == pytest.approx(c["bptt"]["flops"], rel=0.05)  # about BPTT's FLOPs
    assert c["bptt"]["bytes"] < c["block"]["bytes"] / 4


def test_report_has_the_gated_section(tmp_path):
    pytest.importorskip("matplotlib")
    import pandas as pd
    from suites.base import Case
    from suites.memory.report import H_GATED, findings, section
    from suites.memory.suite import SUITE, derive
    rows = _gated_synthetic_rows()
    for form, chunk, v in (("step", 1, 13.0), ("block", 32, 1.2)):
        c = Case("memory", "ratio-mingru", "numpy", "cpu", "mingru", 1, 1, 200, 256, 256, "float64",
                 settings={"kind": "time_ratio", "algorithm": "rtrl", "chunk": 32})
        rows.append(c.row("rtrl_bptt_time_ratio", v, "ratio", samples=[v * 0.9, v, v * 1.1], form=form, chunk=chunk,
                          rtrl_us_per_step=v * 30, rtrl_us_per_step_range=[v * 27, v * 33], bptt_us_per_step=30.0,
                          bptt_us_per_step_range=[29.0, 31.0], model_bytes_per_step=1e6, bptt_model_bytes_per_step=1e5,
                          model_bytes_ratio=10.0, rtrl_model_gbps=20.0, bptt_model_gbps=2.0, rounds=3))
    rows += list(derive(rows, SUITE.cases("smoke", ["numpy"], "cpu")[-1]))
    df = pd.DataFrame(_flat(rows))
    md = section(df, str(tmp_path / "figures"))
    part = md.split(f"### {H_GATED}")[1]
    assert "step (chunk 1) | **13.00×** [11.70–14.30]" in part and "block (chunk 32) | **1.20×**" in part
    assert "1.00 (I=64, B=1, H 32–128, theory 1.00)" in part      # minGRU at fixed I
    assert "2.50 (I=64, B=1, H 32–128, theory 2.50)" in part      # the LSTM beside it
    assert "3.00 (B=1, H 32–128, theory 3.00)" in part            # the LSTM at I = H
    bullets = [b for b in findings(df) if "Gated linear cells" in b]
    assert len(bullets) == 1 and "step 13.00×" in bullets[0] and "H^1.00 at I=64" in bullets[0]
