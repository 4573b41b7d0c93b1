"""scripts/gpu-reference (harness.cli.gpu_reference, harness.cli.gpu_plugins), tested on the CPU: the GPU name ->
directory, the no-GPU exit, which backends / shapes / TF32 variants / memory points it plans, the time split and
its guard, the stop of a run at its deadline, the summary — with faked GPUs, clocks and launchers. Nothing here
needs a GPU; the reference itself has not run on one from these tests."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from harness.cli import gpu_plugins as gp
from harness.cli import gpu_reference as gr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu-reference")


# -- the GPU and its directory -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, want", [
    ("NVIDIA H200", "nvidia-h200"),
    ("NVIDIA A100-SXM4-80GB", "nvidia-a100-sxm4-80gb"),
    ("  Tesla V100 (16GB) ", "tesla-v100-16gb"),
    ("NVIDIA GeForce RTX™ 4090", "nvidia-geforce-rtx-4090"),
    ("NVIDIA_H100__PCIe", "nvidia-h100-pcie"),
    ("", "unknown-gpu"), (None, "unknown-gpu"), ("™", "unknown-gpu"),
])
def test_gpu_dir_name(name, want):
    got = gr.gpu_dir_name(name)
    assert got == want
    assert all(c.isdigit() or "a" <= c <= "z" or c == "-" for c in got)


def test_gpu_status_torch_decides():
    ok = gr.gpu_status({"available": True, "name": "NVIDIA H200", "torch": "2.13.0", "cuda": "12.8"}, None)
    assert ok.ok and ok.name == "NVIDIA H200" and ok.reason == ""
    # torch sees a device without naming it: nvidia-smi's name
    assert gr.gpu_status({"available": True, "name": None}, ["NVIDIA H200"]).name == "NVIDIA H200"
    # nothing anywhere
    s = gr.gpu_status({"available": False, "torch": "2.13.0+cpu", "cuda": None}, None)
    assert not s.ok and s.name is None
    assert s.reason.startswith("no CUDA GPU visible: torch.cuda.is_available() is False")
    assert "a CPU build" in s.reason and "nvidia-smi absent" in s.reason and s.reason.endswith("nothing run")
    assert "torch is not importable" in gr.gpu_status(None, []).reason
    assert "nvidia-smi lists no GPU" in gr.gpu_status(None, []).reason
    # the driver sees a GPU, the venv's torch does not: say which build is wrong
    s = gr.gpu_status({"available": False, "torch": "2.13.0+cpu", "cuda": None}, ["NVIDIA H200"])
    assert not s.ok and "nvidia-smi lists NVIDIA H200 but torch.cuda.is_available() is False" in s.reason
    assert "CUDA build of torch" in s.reason
    assert "the torch probe failed: boom" in gr.gpu_status({"available": False, "error": "boom"}, None).reason


def test_probe_nvidia_smi_absent(monkeypatch):
    monkeypatch.setattr(gr.shutil, "which", lambda name: None)
    assert gr.probe_nvidia_smi() is None


def test_probe_torch_here_reports_no_cuda():
    """The real probe (a fresh process) on this machine: torch is there, CUDA is not (skipped where it is)."""
    info = gr.probe_torch()
    if info and info.get("available"):
        pytest.skip("this machine has a CUDA GPU")
    assert info is None or info["available"] is False


def _no_gpu(monkeypatch):
    monkeypatch.setattr(gr, "probe_torch", lambda python=None: {"available": False, "torch": "2.13.0+cpu", "cuda": None})
    monkeypatch.setattr(gr, "probe_nvidia_smi", lambda: None)


def test_main_without_gpu_exits_2_and_runs_nothing(monkeypatch, tmp_path, capsys):
    _no_gpu(monkeypatch)
    launched = []
    monkeypatch.setattr(gr, "launch", lambda *a, **k: launched.append(a))
    rc = gr.main(["--out-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == gr.EXIT_NO_GPU == 2
    assert err.startswith("gpu-reference: no CUDA GPU visible: torch.cuda.is_available() is False")
    assert "nvidia-smi absent; nothing run" in err
    assert launched == [] and os.listdir(tmp_path) == []


def test_no_gpu_path_needs_only_the_standard_library(tmp_path):
    """A fresh machine without .venv: the module says why and exits 2 with NumPy (and every framework) absent."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('numpy', 'torch', 'jax', 'suites', 'implementations'):\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from harness.cli import gpu_reference as gr\n"
            "gr.probe_torch = lambda python=None: None\n"
            "gr.probe_nvidia_smi = lambda: None\n"
            f"sys.exit(gr.main(['--out-root', {str(tmp_path)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "no CUDA GPU visible: torch is not importable; nvidia-smi absent; nothing run" in r.stderr


def test_script_without_gpu_exits_2_without_setup(tmp_path):
    """bash scripts/gpu-reference on this machine: no nvidia-smi, CPU torch -> no setup, the message, exit 2."""
    if shutil.which("nvidia-smi"):
        pytest.skip("nvidia-smi is here: the script would set up and run the reference")
    info = gr.probe_torch()
    if info and info.get("available"):
        pytest.skip("this machine has a CUDA GPU")
    r = subprocess.run(["bash", SCRIPT, "--out-root", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no CUDA GPU visible" in r.stderr and "nothing run" in r.stderr
    assert "setup:" not in r.stdout  # scripts/setup was not called
    assert os.listdir(tmp_path) == []


def test_script_dry_run_prints_the_plan():
    r = subprocess.run(["bash", SCRIPT, "--dry-run", "--gpu-name", "NVIDIA H200"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "results/reference/nvidia-h200/" in r.stdout and "setup:" not in r.stdout
    for needle in ("throughput-torch", "throughput-jax", "memory", "harness.cli.gpu_plugins:TorchTF32",
                   "lstm-L1-B64-T100-I512-H512-float32", "--processes 1", "rtrl"):
        assert needle in r.stdout, needle


# -- what it plans -------------------------------------------------------------------------------------------------
def test_parts_backends_and_tf32_twins():
    ps = gr.parts()
    assert [p.name for p in ps] == ["throughput-torch", "throughput-jax", "scan", "memory"] == list(gr.PART_NAMES)
    assert abs(sum(p.weight for p in ps) - 1.0) < 1e-9
    torch_b, jax_b, scan_b, mem_b = (p.backends for p in ps)
    assert scan_b == ("torch-cell", "torch-pscan", "jax", "jax-pscan")
    # cuDNN, native, cell loop, compile; each right before its TF32 twin
    assert torch_b[::2] == ("torch", "torch-native", "torch-cell", "torch-compile")
    assert torch_b[1::2] == tuple(gp.TF32_TWINS[b] for b in torch_b[::2])
    assert jax_b == ("jax", gp.TF32_TWINS["jax"], "jax-unroll8", gp.TF32_TWINS["jax-unroll8"])
    assert set(mem_b) == {"jax", "torch"}
    assert all(p.suite.startswith("harness.cli.gpu_plugins:") for p in ps)
    # the CPU pipeline check leaves out torch.compile and the unrolled scan, keeps the twins (recorded skipped)
    smoke = gr.parts(smoke=True)
    assert "torch-compile" not in smoke[0].backends and gp.TF32_TWINS["torch"] in smoke[0].backends
    for name in gp.TF32_TWINS.values():
        assert gp.is_tf32(name) and gp.base_backend(name) in gp.TF32_TWINS
    assert gp.base_backend("torch") == "torch" and not gp.is_tf32("torch")


def test_throughput_shapes_are_fastrnns_and_deepbench():
    from suites.throughput.suite import DEEPBENCH_INFER_CUDA, DEEPBENCH_TRAIN_CUDA
    shapes = gp.throughput_shapes("full")
    first = shapes[0]
    assert (first.cell, first.hidden, first.batch, first.seq_len, first.input_size) == ("lstm", 512, 64, 100, 512)
    assert "fastrnns" in first.tags and first.all_variants
    got = {(s.cell, s.hidden, s.batch, s.seq_len, s.tags[0]) for s in shapes[1:]}
    want = {(c, h, b, t, "deepbench-train") for h, b, t, c in DEEPBENCH_TRAIN_CUDA}
    want |= {(c, h, b, t, "deepbench-inference") for h, b, t, c in DEEPBENCH_INFER_CUDA}
    assert got == want and len(shapes) == 1 + len(want)
    assert len({s.name for s in shapes}) == len(shapes)
    for s in shapes:
        assert s.dtype == "float32" and s.input_size == s.hidden
        assert s.modes == (("fwd",) if "deepbench-inference" in s.tags else ("fwd", "train"))
    anchors = [s for s in shapes if s.all_variants]
    assert shapes[:len(anchors)] == anchors  # the anchors come first
    assert {s.cell for s in anchors} == {"lstm", "gru", "rnn_tanh"}
    assert any(s.modes == ("fwd",) for s in anchors)  # an inference shape too
    small = gp.throughput_shapes("smoke")
    assert small and all(s.hidden <= 16 and s.all_variants for s in small)
    with pytest.raises(ValueError):
        gp.throughput_shapes("huge")


def test_throughput_order_priorities():
    shapes = gp.throughput_shapes("full")
    backends = gr.parts()[0].backends
    order = gp.throughput_order(shapes, backends)
    assert len(order) == len(set((s.name, b) for s, b in order))
    # 1. fastrnns with every backend, in the order given
    assert [b for s, b in order[:len(backends)]] == list(backends)
    assert all(s is shapes[0] for s, _ in order[:len(backends)])
    # anchor-only variants (cell loop, compile and their twins) only on anchors; fused ones everywhere
    for s, b in order:
        if gp.sweep_of(b) == "anchors":
            assert s.all_variants, (s.name, b)
    fused = [b for b in backends if gp.sweep_of(b) == "full"]
    assert {(s.name, b) for s, b in order if b in fused} == {(s.name, b) for s in shapes for b in fused}
    rest = order[len(backends):]
    kinds = [gp.sweep_of(b) for _, b in rest]
    assert kinds == sorted(kinds, key=lambda k: k == "anchors")  # 2. every fused case before 3. the loop variants
    groups = [gp.base_backend(b) for _, b in rest if gp.sweep_of(b) == "anchors"]
    assert groups == sorted(groups, key=gp.ANCHOR_ONLY.index)  # cell loop, then torch.compile (dearest last)
    # a twin follows its variant within the same shape (one reference computation per shape)
    for (s1, b1), (s2, b2) in zip(order, order[1:]):
        if gp.is_tf32(b2):
            assert gp.base_backend(b2) == b1 and s1 is s2


def test_throughput_cases_counts_and_settings():
    torch_part, jax_part, _, _ = gr.parts()
    cases = gp.throughput_cases("full", torch_part.backends, "cuda")
    n_shapes, n_anchors = len(gp.throughput_shapes("full")), sum(s.all_variants for s in gp.throughput_shapes("full"))
    assert len(cases) == 4 * n_shapes + 4 * n_anchors
    assert len({c.key for c in cases}) == len(cases)
    assert all(c.suite == "throughput" and c.device == "cuda" and c.dtype == "float32" for c in cases)
    inf = [c for c in cases if "deepbench-inference" in c.settings["tags"]]
    assert inf and all(c.settings["modes"] == "fwd" for c in inf)
    assert len(gp.throughput_cases("full", jax_part.backends, "cuda")) == 2 * n_shapes + 2 * n_anchors
    # the plug-in suite gives the same list, and the runner resolves it by name
    from harness.run.runner import resolve_suite
    _, _, suite = resolve_suite(torch_part.suite)
    assert suite.name == "throughput" and suite.processes == 1
    assert [c.key for c in suite.cases("full", list(torch_part.backends), "cuda")] == [c.key for c in cases]
    with pytest.raises(ValueError):
        suite.cases("nope", None, "cuda")


def test_memory_points_bptt_vs_rtrl():
    jax_pts = gp.memory_points("jax")
    rtrl = {(p.sweep, p.cell, p.batch, p.seq_len, p.hidden) for p in jax_pts if p.algorithm == "rtrl"}
    bptt = {(p.sweep, p.cell, p.batch, p.seq_len, p.hidden) for p in jax_pts if p.algorithm == "bptt"}
    assert rtrl and rtrl <= bptt  # every RTRL point has BPTT at the same point
    h_sweep = [p for p in jax_pts if p.sweep == "H"]
    assert len({p.hidden for p in h_sweep}) >= 3 and all(p.hidden >= 32 for p in h_sweep)  # the H fit uses H >= 32
    assert all(len({p.seq_len for p in h_sweep if p.hidden == h and p.algorithm == "bptt"}) == 2
               for h in {p.hidden for p in h_sweep})  # two lengths per H: the crossover T*
    assert {p.algorithm for p in gp.memory_points("torch")} == {"bptt"}
    assert all(p.hidden <= 16 for p in gp.memory_points("jax", "smoke"))
    cases = gp.memory_cases("full", ["jax", "torch"], "cuda")
    names = [c.name for c in cases]
    assert names.index("summary-jax") == len(jax_pts) and names[-1] == "summary-torch"
    assert all(c.dtype == "float64" for c in cases if c.settings.get("kind") != "summary")
    assert len({c.key for c in cases}) == len(cases)
    from harness.run.runner import resolve_suite
    assert resolve_suite(gr.parts()[3].suite)[2].name == "memory"
    assert resolve_suite(gr.parts()[2].suite)[2].name == "throughput"


# -- the TF32 twins --------------------------------------------------------------------------------------------------
def test_twins_resolve_and_run_on_cuda_only():
    from implementations import registry
    from implementations.torch.backend import TorchBackend, TorchCellBackend, TorchCompileBackend, TorchNativeBackend
    bases = {"torch": TorchBackend, "torch-native": TorchNativeBackend, "torch-cell": TorchCellBackend,
             "torch-compile": TorchCompileBackend}
    for base, name in gp.TF32_TWINS.items():
        assert registry.resolution_problem(name) is None, name
        klass, _ = registry._resolve(name)
        if base in bases:  # (JAX sets its sweep per instance, from unroll)
            assert issubclass(klass, bases[base]) and klass.family == "torch" and klass.sweep == gp.sweep_of(name)
        assert klass.devices == ("cuda",)
        info = registry.probe(name, "cpu")
        assert not info.available and "cuda only" in info.reason
    assert gp.TorchTF32.__module__ == gp.MODULE and gp.TorchTF32.__name__ == "TorchTF32"
    with pytest.raises(AttributeError):
        gp.NoSuchTwin  # noqa: B018


def test_torch_twin_tf32_only_inside_timed_calls():
    import torch
    be = object.__new__(gp.TorchTF32)  # no CUDA here: the flag handling alone
    be.allow_tf32 = False
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    seen = []
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        run = be._timed(lambda: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                                             be.allow_tf32)))
        run()
        assert seen == [(True, True, True)]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, be.allow_tf32) == \
            (False, False, False)

        def boom():
            raise RuntimeError("x")
        with pytest.raises(RuntimeError):
            be._timed(boom)()
        assert not torch.backends.cuda.matmul.allow_tf32  # restored after a failure too
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_jax_twins_check_at_highest_precision():
    from implementations.jax.backend import JaxBackend
    assert issubclass(gp.JaxTF32, JaxBackend) and issubclass(gp.JaxUnroll8TF32, JaxBackend)
    be = object.__new__(gp.JaxTF32)
    calls = []

    class Checker:
        def _forward(self, *a):
            calls.append(("forward", a))
            return "y"
    be._checker = Checker()
    assert be._forward(1, 2, 3, 4) == "y" and calls == [("forward", (1, 2, 3, 4))]


def _cpu_twin(twin):
    """A twin allowed on the CPU (TF32 means nothing there): how it goes through the suite, without a GPU."""
    class CpuTwin(twin):
        devices = ("cpu", "cuda")

        @classmethod
        def probe(cls, device):
            return True, ""
    return CpuTwin


CpuTorchTF32 = CpuJaxTF32 = None  # built on first use by the test below (resolvable as tests.test_gpu_reference:...)


@pytest.mark.parametrize("twin", ["TorchTF32", "JaxTF32"])
def test_twin_through_the_throughput_suite_on_the_cpu(twin):
    """Checked against the reference, timed, measured against its own (``own:``) GEMM ceilings: the rows a GPU
    run will have, from the same suite code."""
    global CpuTorchTF32, CpuJaxTF32
    CpuTorchTF32, CpuJaxTF32 = _cpu_twin(gp.TorchTF32), _cpu_twin(gp.JaxTF32)
    from harness.measure import ceilings
    from suites.base import RunContext
    name = f"tests.test_gpu_reference:Cpu{twin}"
    case = gp.throughput_cases("smoke", [name], "cpu")[0]
    rows = list(gp.THROUGHPUT.run(case, RunContext(preset="smoke", budget_s=0.02, threads=1)))
    by = {r["metric"]: r for r in rows}
    assert all((r.get("status") or "ok") == "ok" for r in rows), [(r["metric"], r.get("reason")) for r in rows]
    assert by["equiv_error"]["value"] <= 1e-4
    ceil = [r for r in rows if r["metric"] == "ceiling_gflops"]
    assert ceil and all(r["extra"]["framework"] == f"own:{name}" for r in ceil)
    assert {r["extra"]["mode"] for r in rows if r["metric"] == "eff_gemm"} == {"fwd", "train"}
    ceilings.clear_cache()


# -- time --------------------------------------------------------------------------------------------------------------
def test_allot_shares_and_guard():
    w = [p.weight for p in gr.parts()]
    assert gr.allot(0.0, w) == pytest.approx(gr.END_PARTS_S * w[0])
    assert gr.allot(100.0, w[1:]) == pytest.approx((gr.END_PARTS_S - 100.0) * w[1] / sum(w[1:]))
    assert gr.allot(350.0, w[2:]) == pytest.approx(100.0 * w[2] / sum(w[2:]))
    assert gr.allot(gr.END_PARTS_S - gr.MIN_PART_S + 1, w[2:]) is None  # the guard: nothing starts this late
    assert gr.allot(gr.END_PARTS_S + 5, w) is None
    assert gr.allot(0.0, []) is None
    # a small share is raised to the minimum when that much is left, never past what is left
    assert gr.allot(gr.END_PARTS_S - 40, [0.01, 1.0]) == pytest.approx(gr.MIN_PART_S)
    assert gr.TOTAL_S <= 480 and gr.END_PARTS_S <= 7.5 * 60


def test_nominal_windows_fit_the_8_minutes():
    ps = gr.parts()
    win = gr.nominal_windows(ps)
    assert all(win) and win[0][0] == 0
    for (a0, a1), (b0, _) in zip(win, win[1:]):
        assert a1 == pytest.approx(b0) and a1 > a0
    assert win[-1][1] <= gr.END_PARTS_S + 1e-9
    late = gr.nominal_windows(ps, start_s=gr.END_PARTS_S - 35)  # a long setup: the later parts do not start
    assert late[0] is not None and late[-1] is None


def test_elapsed_since_start():
    assert gr.elapsed_since_start({}, 1000.0) == 0.0
    assert gr.elapsed_since_start({gr.T0_ENV: "900"}, 1000.0) == 100.0
    assert gr.elapsed_since_start({gr.T0_ENV: "junk"}, 1000.0) == 0.0
    assert gr.elapsed_since_start({gr.T0_ENV: "2000"}, 1000.0) == 0.0


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _plan(tmp_path, smoke=False):
    return gr.build_plan("NVIDIA H200", str(tmp_path), smoke=smoke)


def test_run_parts_passes_unused_time_on_and_stops_launching(tmp_path):
    plan = _plan(tmp_path)
    clock = FakeClock()
    given = []

    def launcher(cmd, timeout_s, log, env=None, prefix=""):
        given.append((cmd, timeout_s))
        used = {0: 10.0, 1: timeout_s}.get(len(given) - 1, timeout_s)  # part 1 finishes early, part 2 runs out
        clock.t += used + 5.0  # + the time of stopping it
        return {"status": "complete" if len(given) == 1 else "cut", "rc": 0 if len(given) == 1 else 130,
                "wall_s": used}
    results = gr.run_parts(plan, start=0.0, clock=clock, launcher=launcher)
    w = [p["weight"] for p in plan["parts"]]
    assert given[0][1] == pytest.approx(gr.END_PARTS_S * w[0])
    # what part 1 left unused goes to the parts after it
    assert given[1][1] == pytest.approx((gr.END_PARTS_S - 15.0) * w[1] / sum(w[1:]))
    assert given[1][1] > gr.END_PARTS_S * w[1]
    assert [r["status"] for r in results][:2] == ["complete", "cut"]
    assert "stopped at its deadline" in results[1]["reason"]
    # the per-case --timeout never exceeds the part's own time; one process per case
    for cmd, t in given:
        assert float(cmd[cmd.index("--timeout") + 1]) <= t + 1e-6
        assert cmd[cmd.index("--processes") + 1] == "1" and cmd[cmd.index("--device") + 1] == "cuda"

    # a long setup: only what fits starts
    clock2, given2 = FakeClock(), []

    def slow(cmd, timeout_s, log, env=None, prefix=""):
        given2.append(timeout_s)
        clock2.t += timeout_s
        return {"status": "cut", "rc": 130, "wall_s": timeout_s}
    results2 = gr.run_parts(plan, start=-(gr.END_PARTS_S - 50.0), clock=clock2, launcher=slow)
    assert len(given2) == 1 and given2[0] == pytest.approx(gr.MIN_PART_S)
    assert [r["status"] for r in results2] == ["cut"] + ["not started"] * (len(plan["parts"]) - 1)
    assert "out of time" in results2[-1]["reason"]


def test_classify():
    assert gr.classify(0, False, {}) == ("complete", [])
    st, probs = gr.classify(1, False, {"status": "complete", "counts": {"ok": 3, "error": 2},
                                       "requested_unavailable": {"torch-compile": "needs triton"}})
    assert st == "complete" and probs == ["2 row(s) error", "torch-compile cannot run here: needs triton"]
    assert gr.classify(130, True, {"status": "interrupted"})[0] == "cut"
    assert gr.classify(1, False, {"status": "running"})[0] == "failed"
    assert gr.classify(3, False, {"status": "complete"})[0] == "failed"


def test_launch_stops_at_the_deadline(tmp_path):
    log = str(tmp_path / "logs" / "x.log")
    t = time.monotonic()
    r = gr.launch([sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(60)"], 1.0, log,
                  echo=False)
    assert r["status"] == "cut" and time.monotonic() - t < 20
    assert "hi" in open(log).read()
    # one that ignores SIGTERM is killed after the grace period
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('x', flush=True); time.sleep(60)"
    r = gr.launch([sys.executable, "-c", code], 1.0, log, grace_s=0.5, echo=False)
    assert r["status"] == "cut" and r["rc"] != 0
    r = gr.launch([sys.executable, "-c", "print('done')"], 30.0, log, echo=False)
    assert r == {"status": "complete", "rc": 0, "wall_s": r["wall_s"]}
    assert gr.launch([sys.executable, "-c", "raise SystemExit(3)"], 30.0, log, echo=False)["status"] == "failed"


# -- the plan and the summary ----------------------------------------------------------------------------------------
def test_build_plan_and_dry_run(tmp_path, capsys, monkeypatch):
    plan = _plan(tmp_path)
    assert plan["dir"] == os.path.join(str(tmp_path), "nvidia-h200") and plan["device"] == "cuda"
    assert plan["preset"] == "full" and plan["env"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert [p["out"] for p in plan["parts"]] == [os.path.join(plan["dir"], n)
                                                 for n in ("throughput-torch", "throughput-jax", "scan", "memory")]
    json.dumps(plan)  # plain data
    assert gr.build_plan("x", str(tmp_path), only=["memory"])["parts"][0]["name"] == "memory"
    # --dry-run: needs no GPU, writes nothing
    monkeypatch.setattr(gr, "probe_nvidia_smi", lambda: None)
    assert gr.main(["--dry-run", "--gpu-name", "NVIDIA H200", "--out-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "nvidia-h200/" in out and "+TF32" in out and "deepbench-inference" in out
    assert os.listdir(tmp_path) == []
    assert gr.main(["--dry-run", "--json", "--out-root", str(tmp_path)]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["dir"].endswith("unknown-gpu") and len(j["parts"]) == 4


def test_main_refuses_an_existing_directory(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gr, "detect_gpu", lambda python=None: gr.GpuStatus(True, "NVIDIA H200"))
    (tmp_path / "nvidia-h200").mkdir()
    (tmp_path / "nvidia-h200" / "summary.md").write_text("old")
    assert gr.main(["--out-root", str(tmp_path)]) == gr.EXIT_USAGE
    assert "--force" in capsys.readouterr().err


def test_main_with_a_faked_gpu_runs_the_parts_and_writes_the_summary(monkeypatch, tmp_path):
    """The whole flow with a fake GPU and a fake `rnnbench run` that writes a few rows: summary.md, the JSON."""
    monkeypatch.setattr(gr, "detect_gpu", lambda python=None: gr.GpuStatus(True, "NVIDIA H200"))
    monkeypatch.setattr(gr, "write_reports", lambda dirs, timeout_s, **k: {d: "ok" for d in dirs})

    def fake_launch(cmd, timeout_s, log, env=None, prefix=""):
        out = cmd[cmd.index("--out") + 1]
        os.makedirs(out, exist_ok=True)
        assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
        with open(os.path.join(out, "rows.jsonl"), "w") as f:
            for r in _rows(cmd):
                f.write(json.dumps(r) + "\n")
        with open(os.path.join(out, "meta.json"), "w") as f:
            json.dump({"status": "complete", "counts": {"ok": 1}, "git_commit": "abc",
                       "backend_versions": {"torch@cuda": {"torch": "2.13.0", "cuda": "12.8", "cudnn": "91000"}}}, f)
        return {"status": "complete", "rc": 0, "wall_s": 1.0}
    monkeypatch.setattr(gr, "launch", fake_launch)
    assert gr.main(["--out-root", str(tmp_path)]) == 0
    d = tmp_path / "nvidia-h200"
    md = (d / "summary.md").read_text()
    assert md.startswith("# GPU reference: NVIDIA H200")
    assert "| torch (cuDNN) | cudnn | 1 | 25 | 50 | 0.5 |" in md
    assert "| torch (cuDNN) +TF32 | cudnn | 1 | 100 | 400 | 0.25 |" in md
    assert "| torch (cuDNN) +TF32 | TF32 | 8192x8192x8192 | 400 |" in md  # its own (TF32) ceiling
    assert "BPTT vs RTRL" in md and "| jax | H | rnn_tanh | 8 | 32 | 10 | rtrl | 1 |" in md
    assert "not measured" in md  # the fake wrote one case per backend
    j = json.loads((d / gr.PLAN_JSON).read_text())
    assert [r["status"] for r in j["results"]] == ["complete"] * 4
    assert "where the parallel scan wins" in md


def _row(case, backend, metric, value, suite="throughput", **extra):
    key = f"{suite}/{backend}/cuda/{case}"
    return {"suite": suite, "case": case, "backend": backend, "metric": metric, "value": value, "status": "ok",
            "cell": "rnn_tanh", "batch": 8, "hidden_size": 32, "seq_len": 10, "extra": extra, "case_key": key,
            "attempt": 1}


def _rows(cmd):
    case = "lstm-L1-B64-T100-I512-H512-float32"
    if "harness.cli.gpu_plugins:MEMORY" in cmd:
        return [_row("Hsweep-rnn_tanh-L1-B8-T10-H32-rtrl", "jax", "peak_bytes", 2.0 ** 20, "memory", sweep="H",
                     algorithm="rtrl", theory_bytes=2.0 ** 20, ratio=1.0)]
    out = []
    for b in cmd[cmd.index("--backend") + 1::2][:2]:
        sq = 400e3 if gp.is_tf32(b) else 50e3
        out += [_row(case, b, "ceiling_gflops", sq, kind="gemm_square", framework=("own:" + b) if gp.is_tf32(b)
                     else b.split("-")[0], gemm_shape="8192x8192x8192"),
                _row(case, b, "gflops", 100e3 if gp.is_tf32(b) else 25e3, mode="train", path="cudnn"),
                _row(case, b, "eff_gemm", 0.25 if gp.is_tf32(b) else 0.5, mode="train", ceiling_gflops=sq),
                _row(case, b, "eff_recurrent", 0.6, mode="train")]
    return out


def test_summary_tables_from_rows():
    case = "lstm-L1-B64-T100-I512-H512-float32"
    rows = [_row(case, "torch", "gflops", 25e3, mode="train", path="cudnn"),
            _row(case, "torch", "eff_gemm", 0.5, mode="train", ceiling_gflops=50e3),
            _row(case, gp.TF32_TWINS["torch"], "gflops", 100e3, mode="train", path="cudnn"),
            _row(case, gp.TF32_TWINS["torch"], "eff_gemm", 0.25, mode="train", ceiling_gflops=400e3),
            _row(case, "torch", "gflops", 9e3, mode="fwd", path="cudnn")]
    t = gr.throughput_table(rows, "train")
    assert t[2].startswith("| torch (cuDNN) | cudnn | 1 | 25 | 50 | 0.5 |")
    assert t[3].startswith("| torch (cuDNN) +TF32 | cudnn | 1 | 100 | 400 | 0.25 |")
    s = gr.shape_table(rows, "train")
    assert s[2] == f"| {case} | 25 (0.5) | 100 (0.25) |"
    assert gr.throughput_table([], "train") == ["(no train rows)"]
    assert gr.backend_label(gp.TF32_TWINS["torch-compile"]) == "torch-compile +TF32"


FAKE_PYTHON = r"""#!/usr/bin/env bash
# A stand-in for .venv/bin/python: logs every call; torch is a CPU build until "pip" installed it.
here="$(cd "$(dirname "$0")/../.." && pwd)"
echo "python $*" >> "$here/calls.log"
case "$*" in
  *"-m pip install"*torch*) touch "$here/cuda-torch"; exit 0 ;;
  *"-m pip install"*) exit 0 ;;
  *"torch.version.cuda and"*) [ -f "$here/cuda-torch" ] ;;
  *"print((torch.version.cuda"*) echo 13 ;;
  *'jax.devices("gpu")'*) exit 1 ;;
  *"-m harness.cli.gpu_reference"*) echo "module ran"; exit 0 ;;
  *) exit 0 ;;
esac
"""


def test_script_setup_flow_with_a_fake_gpu(tmp_path):
    """The wrapper's control flow with a fake nvidia-smi and a fake .venv python (nothing is installed): setup,
    a CUDA torch when the venv's is a CPU build, jax[cudaNN] after torch's CUDA major, then the module."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "scripts" / "gpu-reference")
    (repo / "scripts" / "setup").write_text('#!/usr/bin/env bash\necho "setup ran" >> "$(dirname "$0")/../calls.log"\n')
    (repo / ".venv" / "bin").mkdir(parents=True)
    py = repo / ".venv" / "bin" / "python"
    py.write_text(FAKE_PYTHON)
    py.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text('#!/usr/bin/env bash\necho "GPU 0: NVIDIA H200 (UUID: GPU-x)"\n')
    smi.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    env.pop("JAX_CUDA", None)
    r = subprocess.run(["bash", str(repo / "scripts" / "gpu-reference"), "--part", "memory"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = (repo / "calls.log").read_text().splitlines()
    assert calls[0] == "setup ran"  # nvidia-smi saw the GPU: scripts/setup first
    pip = [c for c in calls if "-m pip install" in c]
    assert "--force-reinstall" in pip[0] and "--index-url https://pypi.org/simple torch==2.13.0" in pip[0]
    assert pip[1].endswith("-c constraints.txt jax[cuda13]")
    assert calls[-1] == "python -m harness.cli.gpu_reference --part memory" and "module ran" in r.stdout
    # --dry-run sets nothing up
    (repo / "calls.log").unlink()
    r = subprocess.run(["bash", str(repo / "scripts" / "gpu-reference"), "--dry-run"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and (repo / "calls.log").read_text().splitlines() == [
        "python -m harness.cli.gpu_reference --dry-run"]
