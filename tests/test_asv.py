"""The asv benchmark package: imports with the standard library only, well-formed for asv, skips by
NotImplementedError, and measures through the suites' own code (no second implementation)."""
from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "suites", "asv_bench")

from suites.asv_bench import benchmarks as B  # noqa: E402

BENCH_CLASSES = [obj for name, obj in vars(B).items()
                 if inspect.isclass(obj) and not name.startswith("_") and obj.__module__ == B.__name__
                 and any(re.match(r"(time|track|peakmem|mem)_", m) for m in dir(obj))]


def _load_conf():
    text = open(os.path.join(ROOT, "asv.conf.json"), encoding="utf-8").read()
    return json.loads("\n".join(line for line in text.splitlines() if not line.strip().startswith("//")))


def test_config_points_at_the_package_and_results_dir():
    conf = _load_conf()
    assert os.path.normpath(os.path.join(ROOT, conf["benchmark_dir"])) == BENCH_DIR
    assert conf["results_dir"].startswith("results/asv") and conf["html_dir"] == "results/asv/html"
    assert conf["launch_method"] == "spawn" and conf["environment_type"] == "virtualenv"
    assert conf["default_benchmark_timeout"] >= 300
    # requirements pinned as in constraints.txt
    pins = dict(line.split("==") for line in open(os.path.join(ROOT, "constraints.txt"))
                if "==" in line and not line.startswith("#"))
    for pkg, ver in conf["matrix"]["req"].items():
        if ver:
            assert pins[pkg].strip() == ver, pkg


def test_module_imports_with_the_standard_library_only():
    code = ("import sys; sys.path.insert(0, %r); import asv_bench.benchmarks as b; "
            "heavy = [m for m in ('numpy', 'torch', 'jax', 'scipy', 'pandas') if m in sys.modules]; "
            "print(len(b.__dict__), heavy)") % os.path.join(ROOT, "suites")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]"), out


def test_classes_are_well_formed_for_asv():
    assert {c.__name__ for c in BENCH_CLASSES} >= {"TimeForward", "TimeTrain", "PeakMemTrain", "TrackThroughput",
                                                    "TrackGradients", "TrackCTC", "TrackMemory"}
    for cls in BENCH_CLASSES:
        assert len(cls.params) == len(cls.param_names), cls
        assert all(isinstance(p, list) and p for p in cls.params), cls
        for name in dir(cls):
            if name.startswith("track_"):
                assert getattr(getattr(cls, name), "unit", None), f"{cls.__name__}.{name} has no unit"
    # the same parameters everywhere: nothing machine-dependent in the lists
    assert B.TimeForward.params == (B.BACKENDS, B.CELLS, B.SIZES, B.DEVICES)


def test_unavailable_backend_and_device_skip_in_setup(monkeypatch):
    from implementations import registry as backends
    with pytest.raises(NotImplementedError):
        B.TimeForward().setup("numpy", "lstm", "small", "cuda")  # numpy runs on the CPU only
    real = backends.probe

    def fake(name, device="cpu"):
        info = real(name, device)
        if name == "torch":
            info.available, info.reason = False, "not installed here (test)"
        return info
    monkeypatch.setattr(backends, "probe", fake)
    with pytest.raises(NotImplementedError, match="not installed here"):
        B.TimeTrain().setup("torch", "gru", "small", "cpu")
    with pytest.raises(NotImplementedError, match="no small"):
        B.throughput_case("numpy", "not_a_cell", "small", "cpu")  # a case the suite does not have


def test_missing_suite_skips(monkeypatch):
    import suites.base
    monkeypatch.setitem(suites.base.SUITE_MODULES, "throughput", "suites.no_such_module")
    with pytest.raises(NotImplementedError, match="not available in this checkout"):
        B.TimeForward().setup("numpy", "lstm", "small", "cpu")


def test_time_benchmarks_time_the_suites_prepared_callable(monkeypatch):
    """setup builds the suite's case with the suite's make_data and keeps the backend's prepared callable."""
    from implementations.base import BackendBase
    import suites.throughput.suite as tp
    calls = {}
    sentinel_calls = []

    def prep_fwd(self, spec, params, x, state=None):
        calls["fwd"] = (spec, x.shape, x.dtype)

        def fn():
            sentinel_calls.append(1)
        return fn
    monkeypatch.setattr(BackendBase, "prepare_forward", prep_fwd)
    made = []
    real_make = tp.make_data
    monkeypatch.setattr(tp, "make_data", lambda *a, **k: made.append(a) or real_make(*a, **k))
    bench = B.TimeForward()
    bench.setup("numpy", "lstm", "small", "cpu")
    case = next(c for c in tp.SUITE.cases("smoke", ["numpy"], "cpu") if c.cell == "lstm")
    assert calls["fwd"][0] == case.spec() and calls["fwd"][1] == (case.seq_len, case.batch, case.input_size)
    assert str(calls["fwd"][2]) == case.dtype and made, "data must come from the suite's make_data"
    n = len(sentinel_calls)  # 1: the warm-up call in setup
    bench.time_forward("numpy", "lstm", "small", "cpu")
    assert n == 1 and len(sentinel_calls) == 2


def test_gated_cells_and_the_scan_sweep_are_benchmarked():
    bench = B.TimeTrain()
    bench.setup("numpy", "mingru", "small", "cpu")
    bench.time_train("numpy", "mingru", "small", "cpu")
    scan = B.TimeScan()
    scan.setup("numpy", "fwd", 64)
    scan.time_scan("numpy", "fwd", 64)
    with pytest.raises(NotImplementedError, match="no scan-sweep case at T=7"):
        B.TimeScan().setup("numpy", "fwd", 7)
    # the scans claim no classic cell: asv skips them there, by the suite's own case list
    with pytest.raises(NotImplementedError, match="no small"):
        B.throughput_case("torch-pscan", "lstm", "small", "cpu")


def test_gated_gradient_tracks_pick_the_suites_rows(monkeypatch):
    import suites.gradients.suite as gr

    def fake_run(case, ctx):
        assert case.settings.get("kind") == "gated"
        yield case.row("exact_product_rel_err", 1e-15, "1")
        if case.cell == "rglru":  # as the real suite does when the curve stays above 1/e for all T steps
            yield case.row("forget_steps", None, "steps", status="limit", reason="stays above 1/e for all 64 steps")
        else:
            yield case.row("forget_steps", 12.0, "steps")
    monkeypatch.setattr(gr.SUITE, "run", fake_run)
    err, forget = B.TrackGatedProductError(), B.TrackGatedForgetting()
    ce = err.setup_cache()
    cf = ce  # asv gives both classes the one cache of their shared setup_cache
    for cell in B.GATED_CELLS:
        err.setup(ce, cell)
        assert err.track_exact_product_rel_err(ce, cell) == 1e-15
    forget.setup(cf, "mingru")
    assert forget.track_forget_steps(cf, "mingru") == 12.0
    # a missing value skips in setup (asv counts an exception in the track itself as a failure), with the reason
    with pytest.raises(NotImplementedError, match="status limit: stays above 1/e"):
        forget.setup(cf, "rglru")


def test_real_gated_gradient_tracks_skip_only_in_setup():
    """The real smoke cases: each track either has its value after setup, or setup skips."""
    cache = B.TrackGatedProductError().setup_cache()
    for cls in (B.TrackGatedProductError, B.TrackGatedForgetting):
        t = cls()
        track = next(getattr(t, n) for n in dir(t) if n.startswith("track_"))
        for cell in B.GATED_CELLS:
            try:
                t.setup(cache, cell)
            except NotImplementedError:
                continue
            assert isinstance(track(cache, cell), float)
    assert cache[("rglru", "exact_product_rel_err")] != cache[("rglru", "forget_steps")]


def test_real_numpy_benchmark_runs():
    bench = B.TimeTrain()
    bench.setup("numpy", "gru", "small", "cpu")
    bench.time_train("numpy", "gru", "small", "cpu")
    pm = B.PeakMemTrain()
    pm.setup("numpy", "rnn_tanh", "small")
    pm.peakmem_train("numpy", "rnn_tanh", "small")


def test_track_benchmarks_report_the_suites_rows(monkeypatch):
    """track_ values are picked from SUITE.run's rows, not measured again."""
    import suites.throughput.suite as tp
    from suites.base import Case

    def fake_run(case: Case, ctx):
        assert ctx.preset == "smoke"
        for mode, g in (("fwd", 1.5), ("train", 0.5)):
            yield case.row("gflops", g, "GFLOP/s", mode=mode)
            yield case.row("eff_gemm", g / 10, "ratio", mode=mode)
    monkeypatch.setattr(tp.SUITE, "run", fake_run)
    monkeypatch.setattr(B, "DEVICES", ["cpu"])
    monkeypatch.setattr(B, "BACKENDS", ["numpy"])
    t = B.TrackThroughput()
    cache = t.setup_cache()
    t.setup(cache, "numpy", "fwd", "cpu")
    assert t.track_gflops(cache, "numpy", "fwd", "cpu") == 1.5
    assert t.track_eff_gemm(cache, "numpy", "train", "cpu") == 0.05
    with pytest.raises(NotImplementedError):  # a metric the suite did not report: skipped, not invented
        t.track_eff_recurrent(cache, "numpy", "fwd", "cpu")


def test_gradient_tracks_pick_decay_rates(monkeypatch):
    pytest.importorskip("suites.gradients.suite")
    import suites.gradients.suite as gr

    def fake_run(case, ctx):
        for label, (cell, rho, bias, scale) in B.GRADIENT_SETTINGS.items():
            if cell == case.cell:
                yield case.row("decay_rate", 0.25, "1/step", rho=rho, gate_bias=bias, input_scale=scale)
        yield case.row("check_fd", 0.0, "bool", status="error")
    monkeypatch.setattr(gr.SUITE, "run", fake_run)
    t = B.TrackGradients()
    cache = t.setup_cache()
    t.setup(cache, "lstm/b3-s0.1")
    assert t.track_decay_rate(cache, "lstm/b3-s0.1") == 0.25
    assert t.track_failed_checks(cache, "lstm/b3-s0.1") == len({s[0] for s in B.GRADIENT_SETTINGS.values()})


@pytest.mark.skipif(shutil.which("git") is None, reason="asv needs git")
def test_asv_check_finds_no_problem():
    asv = os.path.join(os.path.dirname(sys.executable), "asv")
    if not os.path.exists(asv):
        pytest.skip("asv is not installed in this environment (pip install 'rnnbench[asv]')")
    r = subprocess.run([asv, "check", "--python=same"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "No problems found" in r.stdout, r.stdout + r.stderr


def test_ctc_tracks_take_the_worst_error_the_suite_reports(monkeypatch):
    pytest.importorskip("suites.ctc.suite")
    import suites.ctc.suite as ctc

    def fake_run(case, ctx):
        v = 1e-12 if case.dtype == "float64" else 1e-6
        yield case.row("loss_rel_err", v * (2 if "impossible" in case.name else 1), "rel")
        yield case.row("grad_rel_err", 3 * v, "rel")
        yield case.row("grad_abs_err", 5 * v, "abs")
    monkeypatch.setattr(ctc.SUITE, "run", fake_run)
    monkeypatch.setattr(B, "DEVICES", ["cpu"])
    monkeypatch.setattr(B, "BACKENDS", ["numpy"])
    t = B.TrackCTC()
    cache = t.setup_cache()
    t.setup(cache, "numpy", "float64", "cpu")
    assert t.track_loss_max_rel_error(cache, "numpy", "float64", "cpu") == pytest.approx(2e-12)
    assert t.track_grad_max_error(cache, "numpy", "float64", "cpu") == pytest.approx(3e-12)
    assert t.track_grad_max_error(cache, "numpy", "float32", "cpu") == pytest.approx(5e-6)


def test_memory_tracks_report_the_suites_peak_bytes(monkeypatch):
    pytest.importorskip("suites.memory.suite")
    import suites.memory.suite as mem
    seen = []

    def fake_run(case, ctx):
        seen.append((case.name, ctx.preset))
        yield case.row("peak_bytes", 1000.0 if case.settings["algorithm"] == "bptt" else 5000.0, "B")
    monkeypatch.setattr(mem.SUITE, "run", fake_run)
    monkeypatch.setattr(B, "BACKENDS", ["numpy"])
    t = B.TrackMemory()
    cache = t.setup_cache()
    t.setup(cache, "numpy", "rtrl")
    assert t.track_peak_bytes(cache, "numpy", "bptt") == 1000.0
    assert t.track_peak_bytes(cache, "numpy", "rtrl") == 5000.0
    assert seen and all(name.startswith("Tsweep") for name, _ in seen)
