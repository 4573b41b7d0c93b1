"""The GPU reference: ``scripts/gpu-reference`` sets up a CUDA ``.venv`` and runs ``python -m harness.cli.gpu_reference``.

On a machine with a CUDA GPU, in at most 8 minutes from the start of the script (setup included), it runs

1. ``throughput-torch`` — throughput of ``torch`` (cuDNN), ``torch-native`` (cuDNN off), ``torch-cell`` (the cell
   loop) and ``torch-compile``, each with TF32 off and on (the TF32 twins of :mod:`harness.cli.gpu_plugins`), at
   PyTorch fastrnns' shape and Baidu DeepBench's CUDA shapes; every row has the achieved GFLOP/s and its fraction of
   the GEMM ceiling measured in the same process (``eff_gemm``: square 8192³ GEMM; ``eff_recurrent``);
2. ``throughput-jax`` — the same for ``jax`` and ``jax-unroll8`` (``lax.scan``; TF32 = matmul precision default);
3. ``scan`` — minGRU's sequential forms (torch's cell loop, ``lax.scan``) against the parallel scans
   (``torch-pscan``, ``jax-pscan``) across T at a fixed B·T: where the scan wins on the GPU;
4. ``memory`` — device memory of BPTT against RTRL (JAX: both at the same points; torch: BPTT), float64;

each through ``rnnbench run`` into its own run directory (rows crash-safe, as always), then ``rnnbench report`` of
each run directory, and ``summary.md`` (achieved TFLOP/s against the measured ceilings, per backend and shape;
BPTT vs RTRL peaks) — all in ``results/reference/<gpu-name>/`` (e.g. ``nvidia-h200``).

Time: every part gets a share of the time left when it starts (:data:`PARTS` weights; what a part leaves unused
passes on). A part still running at its deadline is stopped (SIGTERM: the runner keeps every finished row and marks
the run ``interrupted``); its cases run in priority order, so what is lost is the tail. No part starts after
:data:`END_PARTS_S` − :data:`MIN_PART_S`; the last :data:`TOTAL_S` − :data:`END_PARTS_S` seconds are kept for the
reports and the summary.

Without a CUDA GPU it runs nothing and exits :data:`EXIT_NO_GPU` (2) saying why. ``--dry-run`` prints the plan
(anywhere, no GPU needed). Everything that decides the plan is a pure function (tested on the CPU in
``tests/test_gpu_reference.py``).

Exit codes: 0 done (parts stopped at their deadline included: the summary says what is missing); 1 a part failed
(``rnnbench run`` exited with an error) or nothing was measured; 2 no CUDA GPU, or bad usage; 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

EXIT_OK, EXIT_FAIL, EXIT_NO_GPU, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_USAGE = 2  # as rnnbench's (and argparse's)

#: Seconds in all, counted from the start of scripts/gpu-reference (setup included).
TOTAL_S = 480.0
#: Every part is stopped by then (7.5 min); the rest is for the reports and summary.md.
END_PARTS_S = 450.0
#: A part that would get less than this is not started (a run's start-up alone costs ~10-20 s).
MIN_PART_S = 30.0
#: Seconds a stopped run gets to write its last rows and meta.json before it is killed.
GRACE_S = 10.0
OUT_ROOT = os.path.join("results", "reference")
SMOKE_ROOT = os.path.join("results", "runs", "gpu-reference-smoke")
#: Set by scripts/gpu-reference: the epoch second it started (the 8 minutes count from there).
T0_ENV = "RNNBENCH_GPU_REFERENCE_T0"
#: Environment of every run: JAX must not grab 75 % of the GPU up front (the runner's parent process, its worker
#: and the memory probes each start JAX on the same GPU); steady-state timings are unaffected.
RUN_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
SUMMARY = "summary.md"
PLAN_JSON = "gpu-reference.json"
PLUGINS = "harness.cli.gpu_plugins"
#: The parts, in the order they run (see :func:`parts`); known without importing anything.
PART_NAMES = ("throughput-torch", "throughput-jax", "scan", "memory")


# -- the parts -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One ``rnnbench run`` of the reference."""

    name: str
    suite: str                  # module:ATTR of the plug-in suite
    backends: Tuple[str, ...]
    weight: float               # share of the time left when it starts (relative to the parts still to run)
    budget_s: float             # --budget: seconds of timed repeats per measurement
    case_timeout_s: float       # --timeout: per-case limit (capped by the part's own time)
    what: str


def _tf32(b: str) -> str:
    from harness.cli.gpu_plugins import TF32_TWINS
    return TF32_TWINS[b]


def parts(smoke: bool = False) -> List[Part]:
    """The parts in the order they run. ``smoke``: the CPU pipeline check (no torch.compile, no unrolled scan:
    their CPU compile times are not what it checks; the TF32 twins are named and recorded skipped)."""
    torch_b = ("torch", "torch-native", "torch-cell") + (() if smoke else ("torch-compile",))
    jax_b = ("jax",) + (() if smoke else ("jax-unroll8",))
    pair = lambda bs: tuple(x for b in bs for x in (b, _tf32(b)))  # noqa: E731 - each variant beside its twin
    return [
        Part("throughput-torch", f"{PLUGINS}:THROUGHPUT", pair(torch_b), 0.40, 0.1, 90.0,
             "throughput: cuDNN, native (cuDNN off), cell loop, torch.compile; TF32 off and on"),
        Part("throughput-jax", f"{PLUGINS}:THROUGHPUT", pair(jax_b), 0.30, 0.1, 90.0,
             "throughput: JAX lax.scan, unroll 8; TF32 off (precision highest) and on (default)"),
        Part("scan", f"{PLUGINS}:SCAN", ("torch-cell", "torch-pscan", "jax", "jax-pscan"), 0.15, 0.1, 60.0,
             "gated linear cells (minGRU): sequential (cell loop, lax.scan) against parallel scan across T"),
        Part("memory", f"{PLUGINS}:MEMORY", ("jax", "torch"), 0.15, 0.05, 60.0,
             "device memory of BPTT vs RTRL (float64): JAX both at the same points, torch BPTT"),
    ]


def part_cases(part: Part, device: str, preset: str) -> List[Any]:
    """The cases ``rnnbench run`` will be given for a part (the plug-in suites' pure case lists)."""
    from harness.cli import gpu_plugins as gp
    if part.suite.endswith(":MEMORY"):
        return gp.memory_cases(preset, part.backends, device)
    if part.suite.endswith(":SCAN"):
        return gp.scan_cases(preset, part.backends, device)
    return gp.throughput_cases(preset, part.backends, device)


# -- the GPU and its directory ----------------------------------------------------------------------------------
def gpu_dir_name(name: Optional[str]) -> str:
    """``NVIDIA H200`` -> ``nvidia-h200``: lowercase, runs of anything but [a-z0-9] -> one ``-``, trimmed."""
    s = re.sub(r"[^a-z0-9]+", "-", (name or "").strip().lower()).strip("-")
    return s or "unknown-gpu"


@dataclass
class GpuStatus:
    ok: bool
    name: Optional[str]
    reason: str = ""
    torch: Optional[Dict[str, Any]] = None
    nvidia_smi: Optional[List[str]] = None


def gpu_status(torch_info: Optional[Dict[str, Any]], smi_names: Optional[List[str]]) -> GpuStatus:
    """Whether the reference can run, from what torch says (``None``: torch not importable) and what nvidia-smi
    lists (``None``: no nvidia-smi). torch decides: the backends are torch and JAX on CUDA, and torch's view
    of the device is what the runs will have."""
    if torch_info and torch_info.get("available"):
        name = torch_info.get("name") or (smi_names[0] if smi_names else None)
        return GpuStatus(True, name, "", torch_info, smi_names)
    if torch_info is None:
        why_torch = "torch is not importable"
    elif torch_info.get("error"):
        why_torch = f"the torch probe failed: {torch_info['error']}"
    else:
        build = f"CUDA {torch_info['cuda']}" if torch_info.get("cuda") else "a CPU build"
        why_torch = f"torch.cuda.is_available() is False (torch {torch_info.get('torch', '?')}, {build})"
    if smi_names:
        reason = (f"nvidia-smi lists {', '.join(smi_names)} but {why_torch}: .venv needs a CUDA build of torch "
                  "(bash scripts/gpu-reference installs one before it runs this); nothing run")
    else:
        why_smi = "nvidia-smi absent" if smi_names is None else "nvidia-smi lists no GPU"
        reason = f"no CUDA GPU visible: {why_torch}; {why_smi}; nothing run"
    return GpuStatus(False, None, reason, torch_info, smi_names)


_TORCH_PROBE = """\
import json
try:
    import torch
except Exception:
    print("null"); raise SystemExit
d = {"torch": torch.__version__, "cuda": torch.version.cuda, "available": bool(torch.cuda.is_available())}
if d["available"]:
    d.update(name=torch.cuda.get_device_name(0), count=torch.cuda.device_count(),
             capability=list(torch.cuda.get_device_capability(0)))
print(json.dumps(d))
"""


def probe_torch(python: str = sys.executable, timeout_s: float = 120.0) -> Optional[Dict[str, Any]]:
    """torch's view of CUDA, asked in a fresh process (this one keeps no CUDA context). None: no torch."""
    try:
        r = subprocess.run([python, "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as e:
        return {"available": False, "error": f"{type(e).__name__}: {e}"}
    lines = r.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else {"available": False, "error": (r.stderr.strip().splitlines()
                                                                                   or ["no output"])[-1]}
    except ValueError:
        return {"available": False, "error": lines[-1][:200]}


def probe_nvidia_smi(timeout_s: float = 20.0) -> Optional[List[str]]:
    """GPU names nvidia-smi lists ([] if none or it fails), or None when there is no nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                           timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()] if r.returncode == 0 else []


def detect_gpu(python: str = sys.executable) -> GpuStatus:
    return gpu_status(probe_torch(python), probe_nvidia_smi())


# -- time --------------------------------------------------------------------------------------------------------
def allot(elapsed_s: float, weights_left: Sequence[float], end_parts_s: float = END_PARTS_S,
          min_part_s: float = MIN_PART_S) -> Optional[float]:
    """Seconds the next part may run, ``elapsed_s`` after the start: its weight's share of the time left until
    ``end_parts_s`` among the parts still to run (itself first), at least ``min_part_s``; None when less than
    ``min_part_s`` is left (it is not started)."""
    left = end_parts_s - elapsed_s
    if left < min_part_s or not weights_left:
        return None
    total = sum(weights_left)
    share = left * (weights_left[0] / total if total > 0 else 1.0 / len(weights_left))
    return min(left, max(share, min_part_s))


def nominal_windows(plan_parts: Sequence[Part], start_s: float = 0.0, end_parts_s: float = END_PARTS_S,
                    min_part_s: float = MIN_PART_S) -> List[Optional[Tuple[float, float]]]:
    """(start, end) of each part if every part used all of its time (each ends earlier when it finishes)."""
    out: List[Optional[Tuple[float, float]]] = []
    t = start_s
    for i in range(len(plan_parts)):
        a = allot(t, [p.weight for p in plan_parts[i:]], end_parts_s, min_part_s)
        if a is None:
            out.append(None)
            continue
        out.append((t, t + a))
        t += a
    return out


def elapsed_since_start(env: Optional[Dict[str, str]] = None, now_epoch: Optional[float] = None) -> float:
    """Seconds since scripts/gpu-reference started (``$RNNBENCH_GPU_REFERENCE_T0``), 0 when unset or bad."""
    env = os.environ if env is None else env
    now_epoch = time.time() if now_epoch is None else now_epoch
    try:
        return max(0.0, now_epoch - float(env[T0_ENV]))
    except (KeyError, ValueError):
        return 0.0


# -- the plan ----------------------------------------------------------------------------------------------------
def run_command(part: Part, out_dir: str, device: str, preset: str, case_timeout_s: float,
                python: str = sys.executable) -> List[str]:
    cmd = [python, "-m", "harness", "run", part.suite, "--preset", preset, "--device", device]
    for b in part.backends:
        cmd += ["--backend", b]
    # --processes 1: the throughput suite's default (3 independent processes per case, for `compare`) would triple
    # every case's fixed cost (worker start, reference, compilation, ceilings); 8 minutes buy one.
    cmd += ["--out", out_dir, "--budget", f"{part.budget_s:g}", "--timeout", f"{case_timeout_s:g}",
            "--processes", "1", "--no-progress"]
    return cmd


def build_plan(gpu_name: Optional[str], out_root: str = OUT_ROOT, smoke: bool = False,
               only: Optional[Sequence[str]] = None, elapsed_s: float = 0.0, python: str = sys.executable) -> Dict:
    """Everything a run will do, as plain data (``--dry-run`` prints it; a run writes it to gpu-reference.json)."""
    device, preset = ("cpu", "smoke") if smoke else ("cuda", "full")
    out = os.path.join(out_root, gpu_dir_name(gpu_name))
    ps = [p for p in parts(smoke) if not only or p.name in only]
    windows = nominal_windows(ps, elapsed_s)
    plan_parts = []
    for p, w in zip(ps, windows):
        cases = part_cases(p, device, preset)
        allotted = None if w is None else w[1] - w[0]
        plan_parts.append({
            **asdict(p), "backends": list(p.backends), "out": os.path.join(out, p.name),
            "cases": [c.key for c in cases], "window_s": None if w is None else [round(w[0]), round(w[1])],
            "command": run_command(p, os.path.join(out, p.name), device, preset,
                                   min(p.case_timeout_s, allotted or p.case_timeout_s), python)})
    return {"gpu": gpu_name, "dir": out, "device": device, "preset": preset, "smoke": smoke,
            "time": {"total_s": TOTAL_S, "end_parts_s": END_PARTS_S, "min_part_s": MIN_PART_S, "grace_s": GRACE_S,
                     "elapsed_at_plan_s": round(elapsed_s, 1)},
            "env": dict(RUN_ENV), "parts": plan_parts}


def backend_label(name: str) -> str:
    """A short label: ``torch`` -> ``torch (cuDNN)``; a TF32 twin -> its variant's label + ``+TF32``."""
    from harness.cli.gpu_plugins import base_backend, is_tf32
    base = base_backend(name)
    label = {"torch": "torch (cuDNN)", "torch-native": "torch-native (cuDNN off)", "torch-cell": "torch-cell (loop)",
             "jax": "jax (lax.scan)"}.get(base, base)
    return label + (" +TF32" if is_tf32(name) else "")


def format_plan(plan: Dict) -> str:
    from harness.cli import gpu_plugins as gp
    t = plan["time"]
    lines = [f"GPU reference plan{' (CPU pipeline check: tiny shapes, not a reference)' if plan['smoke'] else ''}",
             f"  GPU: {plan['gpu'] or '(none visible here)'} -> {plan['dir']}/",
             f"  device {plan['device']}, preset {plan['preset']}, env {' '.join(f'{k}={v}' for k, v in plan['env'].items())}",
             f"  time: {t['total_s']:g} s in all from the start of scripts/gpu-reference (setup included; "
             f"{t['elapsed_at_plan_s']:g} s gone at planning); every part stopped by {t['end_parts_s']:g} s "
             f"(SIGTERM, finished rows kept, {t['grace_s']:g} s grace); none started with < {t['min_part_s']:g} s left; "
             f"then rnnbench report of each run dir (in parallel) and {SUMMARY}",
             "", "parts (each gets its weight's share of the time left when it starts; unused time passes on):"]
    for i, p in enumerate(plan["parts"], 1):
        w = p["window_s"]
        when = f"at most {w[1] - w[0]} s (nominal {w[0]}-{w[1]} s)" if w else "not started (no time left)"
        lines += [f"  {i}. {p['name']}: {p['what']}",
                  f"     weight {p['weight']:g}, {when}; --budget {p['budget_s']:g} s, --timeout "
                  f"{min(p['case_timeout_s'], (w[1] - w[0]) if w else p['case_timeout_s']):g} s per case; "
                  f"{len(p['cases'])} cases",
                  "     backends: " + ", ".join(f"{backend_label(b)}" + (f" = {b}" if ":" in b else "")
                                               for b in p["backends"]),
                  "     $ " + " ".join(_short(a) for a in p["command"])]
    preset = plan["preset"]
    shapes = gp.throughput_shapes(preset)
    lines += ["", "throughput shapes, float32, in priority order (* = anchor: every variant; the others: the fused "
              "variants torch, torch-native, jax and their TF32 twins):"]
    for s in shapes:
        lines.append(f"  {'*' if s.all_variants else ' '} {s.name:<40} {','.join(s.tags):<20} {','.join(s.modes)}")
    lines += ["", "memory points, float64 (B = batch, T = length, H = hidden):"]
    for b in dict.fromkeys(b for p in plan["parts"] if p["suite"].endswith(":MEMORY") for b in p["backends"]):
        pts = gp.memory_points(b, preset)
        lines.append(f"  {b}: " + "; ".join(f"{pt.algorithm} {pt.cell} B{pt.batch} T{pt.seq_len} H{pt.hidden}"
                                            for pt in pts) + f"; then summary-{b} (exponents, crossover T*)")
    lines += ["", f"writes: {plan['dir']}/<part>/ (run dirs: rows.jsonl, meta.json, report.md/.html, figures/), "
              f"{plan['dir']}/logs/<part>.log, {plan['dir']}/{PLAN_JSON}, {plan['dir']}/{SUMMARY}"]
    return "\n".join(lines)


def _short(arg: str) -> str:
    return os.path.relpath(arg) if os.path.isabs(arg) and arg.startswith(os.getcwd()) else arg


# -- running -----------------------------------------------------------------------------------------------------
def launch(cmd: Sequence[str], timeout_s: float, log_path: str, env: Optional[Dict[str, str]] = None,
           grace_s: float = GRACE_S, prefix: str = "", echo: bool = True) -> Dict[str, Any]:
    """Run ``cmd`` (its output to ``log_path`` and, prefixed, to stdout); stop it at ``timeout_s``: SIGTERM (the
    runner then keeps every finished row and marks the run interrupted), SIGKILL to its process group after
    ``grace_s``. Returns ``{"status": "complete" | "cut" | "failed", "rc", "wall_s"}``."""
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        p = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                             env=env, start_new_session=True)

        def pump():
            for line in p.stdout:
                log.write(line)
                log.flush()
                if echo:
                    sys.stdout.write(prefix + line)
                    sys.stdout.flush()
        th = threading.Thread(target=pump, daemon=True)
        th.start()
        cut = False
        try:
            rc = p.wait(timeout=max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            cut = True
            p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _kill_group(p)
                rc = p.wait()
        except KeyboardInterrupt:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _kill_group(p)
            raise
        finally:
            th.join(timeout=5)
    status = "cut" if cut else ("complete" if rc == 0 else "failed")
    return {"status": status, "rc": rc, "wall_s": round(time.monotonic() - t0, 1)}


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)  # the run and its workers: a session of their own (start_new_session)
    except (ProcessLookupError, PermissionError):
        p.kill()


def classify(rc: Optional[int], cut: bool, meta: Dict[str, Any]) -> Tuple[str, List[str]]:
    """A part's status from ``rnnbench run``'s exit code and its run directory's meta.json: ``cut`` (stopped at its
    deadline), ``complete`` (the run finished; ``rnnbench run`` exits 1 on error/timeout rows or on a requested
    backend that cannot run here — those are returned as problems, the rows are there), or ``failed``."""
    counts = meta.get("counts") or {}
    problems = [f"{counts[s]} row(s) {s}" for s in ("error", "oom", "timeout") if counts.get(s)]
    problems += [f"{b} cannot run here: {why}" for b, why in sorted((meta.get("requested_unavailable") or {}).items())]
    if cut:
        return "cut", problems
    if rc == 0 or (rc == 1 and meta.get("status") == "complete"):
        return "complete", problems
    return "failed", problems


def run_parts(plan: Dict, start: float, clock: Callable[[], float] = time.monotonic,
              launcher: Optional[Callable[..., Dict[str, Any]]] = None, env: Optional[Dict[str, str]] = None,
              python: str = sys.executable, results: Optional[List[Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """Run the plan's parts in order under the time guard; ``start`` is the clock reading at the script's start;
    ``launcher`` (default :func:`launch`) runs one command with a time limit."""
    launcher = launcher or launch
    results = [] if results is None else results  # appended as each part ends (kept when interrupted)
    ps = plan["parts"]
    for i, p in enumerate(ps):
        elapsed = clock() - start
        a = allot(elapsed, [q["weight"] for q in ps[i:]])
        if a is None:
            results.append({"name": p["name"], "status": "not started", "allotted_s": 0, "wall_s": 0, "rc": None,
                            "reason": f"out of time: {elapsed:.0f} s gone, under {MIN_PART_S:g} s left before "
                                      f"{END_PARTS_S:g} s"})
            print(f"gpu-reference: {p['name']}: not started ({results[-1]['reason']})", flush=True)
            continue
        part = Part(**{k: (tuple(v) if k == "backends" else v) for k, v in p.items() if k in Part.__annotations__})
        cmd = run_command(part, p["out"], plan["device"], plan["preset"], min(part.case_timeout_s, a), python)
        print(f"gpu-reference: {p['name']}: {len(p['cases'])} cases, at most {a:.0f} s "
              f"({elapsed:.0f} s gone)\n  $ {' '.join(_short(c) for c in cmd)}", flush=True)
        r = launcher(cmd, a, os.path.join(plan["dir"], "logs", f"{p['name']}.log"), env=env, prefix=f"[{p['name']}] ")
        r["status"], r["problems"] = classify(r.get("rc"), r["status"] == "cut", read_meta(p["out"]))
        r.update(name=p["name"], allotted_s=round(a, 1))
        if r["status"] == "cut":
            r["reason"] = f"stopped at its deadline ({a:.0f} s); the cases not finished by then are missing"
        elif r["status"] == "failed":
            r["reason"] = f"rnnbench run exited with {r['rc']} (see logs/{p['name']}.log)"
        results.append(r)
        print(f"gpu-reference: {p['name']}: {r['status']} in {r['wall_s']:.0f} s", flush=True)
    return results


def write_reports(run_dirs: Sequence[str], timeout_s: float, python: str = sys.executable,
                  env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``rnnbench report`` of each run directory that holds rows, in parallel; {dir: "ok" | why not}."""
    todo = [d for d in run_dirs if os.path.exists(os.path.join(d, "rows.jsonl"))
            and os.path.getsize(os.path.join(d, "rows.jsonl")) > 0]

    def one(d: str) -> str:
        try:
            r = subprocess.run([python, "-m", "harness", "report", d], capture_output=True, text=True,
                               timeout=max(5.0, timeout_s), env=env)
        except subprocess.TimeoutExpired:
            return f"not finished within {timeout_s:.0f} s"
        return "ok" if r.returncode == 0 else f"exit {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1]}"
    out = {d: "no rows" for d in run_dirs if d not in todo}
    if todo:
        with ThreadPoolExecutor(max_workers=len(todo)) as ex:
            out.update(zip(todo, ex.map(one, todo)))
    return out


# -- the summary ----------------------------------------------------------------------------------------------------
def read_rows(run_dir: str) -> List[Dict[str, Any]]:
    """The rows of a run directory (latest attempt of each case), [] when there are none."""
    if not os.path.exists(os.path.join(run_dir, "rows.jsonl")):
        return []
    from harness.measure.records import merge_processes, scan
    return merge_processes(scan(run_dir)[0])


def read_meta(run_dir: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(run_dir, "meta.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _fmt(x: Optional[float], digits: int = 3) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _spread(vals: Sequence[float], digits: int = 3) -> str:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "–"
    med = statistics.median(vals)
    return _fmt(med, digits) if len(vals) == 1 else f"{_fmt(med, digits)} [{_fmt(min(vals), digits)}–{_fmt(max(vals), digits)}]"


def throughput_table(rows: Sequence[Dict[str, Any]], mode: str) -> List[str]:
    """Per backend: achieved TFLOP/s (median [min–max] over shapes), the square-GEMM ceiling it is measured
    against, eff_gemm and eff_recurrent."""
    ok = [r for r in rows if r.get("suite") == "throughput" and (r.get("status") or "ok") == "ok"
          and r.get("value") is not None and (r.get("extra") or {}).get("mode") == mode]
    by: Dict[str, Dict[str, list]] = {}
    for r in ok:
        d = by.setdefault(r["backend"], {"gflops": [], "eff_gemm": [], "eff_recurrent": [], "ceiling": [], "path": [],
                                          "cases": set()})
        m = r["metric"]
        if m in ("gflops", "eff_gemm", "eff_recurrent"):
            d[m].append(r["value"])
        if m == "gflops":
            d["cases"].add(r["case"])
            d["path"].append((r.get("extra") or {}).get("path"))
        if m == "eff_gemm":
            d["ceiling"].append((r.get("extra") or {}).get("ceiling_gflops"))
    if not by:
        return [f"(no {mode} rows)"]
    out = ["| backend | path | shapes | TFLOP/s median [min–max] | GEMM ceiling TFLOP/s | eff_gemm | eff_recurrent |",
           "|---|---|---|---|---|---|---|"]
    for b in sorted(by, key=_backend_order):
        d = by[b]
        out.append(f"| {backend_label(b)} | {','.join(sorted({p for p in d['path'] if p}))} | {len(d['cases'])} | "
                   f"{_spread([g / 1e3 for g in d['gflops']])} | {_spread([c / 1e3 for c in d['ceiling'] if c])} | "
                   f"{_spread(d['eff_gemm'], 2)} | {_spread(d['eff_recurrent'], 2)} |")
    return out


def shape_table(rows: Sequence[Dict[str, Any]], mode: str) -> List[str]:
    """Per shape (rows) and backend (columns): TFLOP/s (eff_gemm)."""
    ok = [r for r in rows if r.get("suite") == "throughput" and (r.get("status") or "ok") == "ok"
          and r.get("value") is not None and (r.get("extra") or {}).get("mode") == mode
          and r["metric"] in ("gflops", "eff_gemm")]
    cell: Dict[Tuple[str, str], Dict[str, float]] = {}
    for r in ok:
        cell.setdefault((r["case"], r["backend"]), {})[r["metric"]] = r["value"]
    if not cell:
        return [f"(no {mode} rows)"]
    cases = list(dict.fromkeys(r["case"] for r in ok))
    backends = sorted({b for _, b in cell}, key=_backend_order)
    out = ["| shape | " + " | ".join(backend_label(b) for b in backends) + " |",
           "|---|" + "---|" * len(backends)]
    for c in cases:
        vals = []
        for b in backends:
            v = cell.get((c, b))
            vals.append("" if not v or "gflops" not in v else
                        f"{_fmt(v['gflops'] / 1e3)}" + (f" ({_fmt(v['eff_gemm'], 2)})" if "eff_gemm" in v else ""))
        out.append(f"| {c} | " + " | ".join(vals) + " |")
    return out


def ceiling_table(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The square-GEMM ceilings measured (first per framework; a TF32 twin measures its own)."""
    seen: Dict[str, Dict[str, Any]] = {}
    for r in rows:
        e = r.get("extra") or {}
        if r.get("metric") == "ceiling_gflops" and e.get("kind") == "gemm_square" and r.get("value") is not None:
            seen.setdefault(str(e.get("framework")), r)
    if not seen:
        return ["(no ceiling rows)"]
    out = ["| GEMMs of | arithmetic | shape | TFLOP/s | measured with |", "|---|---|---|---|---|"]
    for fw, r in sorted(seen.items()):
        own = fw.startswith("own:")
        name = fw[4:] if own else fw
        out.append(f"| {backend_label(name) if own else fw} | {'TF32' if own else 'float32'} | "
                   f"{(r.get('extra') or {}).get('gemm_shape')} | {_fmt(r['value'] / 1e3)} | {backend_label(r['backend'])} |")
    return out


def memory_table(rows: Sequence[Dict[str, Any]]) -> List[str]:
    mem = [r for r in rows if r.get("suite") == "memory" and r.get("metric") == "peak_bytes"]
    if not mem:
        return ["(no memory rows)"]
    out = ["| backend | sweep | cell | B | H | T | algorithm | peak MiB | theory MiB | measured/theory | status |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in mem:
        e = r.get("extra") or {}
        mib = lambda v: _fmt(v / 2 ** 20) if v else "–"  # noqa: E731
        out.append(f"| {r['backend']} | {e.get('sweep')} | {r.get('cell')} | {r.get('batch')} | {r.get('hidden_size')} | "
                   f"{r.get('seq_len')} | {e.get('algorithm')} | {mib(r.get('value'))} | {mib(e.get('theory_bytes'))} | "
                   f"{_fmt(e.get('ratio'))} | {r.get('status')} |")
    derived = [r for r in rows if r.get("suite") == "memory" and r.get("metric") in
               ("exponent_mem_T", "exponent_mem_H", "crossover_T") and r.get("value") is not None]
    if derived:
        out += ["", "| backend | metric | algorithm | B | H / T | value | theory / target |", "|---|---|---|---|---|---|---|"]
        for r in derived:
            e = r.get("extra") or {}
            target = e.get("theory_T") if r["metric"] == "crossover_T" else (e.get("target_lo"), e.get("target_hi"))
            at = " ".join(f"{k}{v}" for k, v in (("H", r.get("hidden_size")), ("T", r.get("seq_len"))) if v is not None)
            out.append(f"| {r['backend']} | {r['metric']} | {e.get('algorithm')} | {r.get('batch')} | "
                       f"{at or '–'} | {_fmt(r['value'])} | "
                       f"{_fmt(target) if not isinstance(target, tuple) else target} |")
    return out


def _base_key(key: Optional[str]) -> Optional[str]:
    """A case key without the runner's ``#pK`` process suffix."""
    if key is None:
        return None
    head, sep, tail = key.rpartition("#p")
    return head if sep and tail.isdigit() else key


def _backend_order(name: str) -> Tuple[int, int]:
    from harness.cli.gpu_plugins import base_backend, is_tf32
    order = ("torch", "torch-native", "torch-cell", "torch-compile", "jax", "jax-unroll8")
    b = base_backend(name)
    return (order.index(b) if b in order else len(order), int(is_tf32(name)))


def status_lines(plan: Dict, results: Sequence[Dict[str, Any]], rows_by_part: Dict[str, List[Dict]],
                 reports: Dict[str, str]) -> List[str]:
    out = ["| part | status | time s (allotted) | cases planned | finished ok | skipped | error/timeout | report |",
           "|---|---|---|---|---|---|---|---|"]
    missing_all, reasons = [], {}
    for p, r in zip(plan["parts"], results):
        rows = rows_by_part.get(p["name"], [])
        st: Dict[str, set] = {}
        for row in rows:
            st.setdefault(row.get("status") or "ok", set()).add(_base_key(row.get("case_key")))
            if row.get("status") in ("skipped", "error", "timeout", "oom") and row.get("reason"):
                reasons.setdefault((row["backend"], row.get("status")), row["reason"])
        seen = {_base_key(row.get("case_key")) for row in rows}
        bad = st.get("error", set()) | st.get("timeout", set()) | st.get("oom", set())
        ok = st.get("ok", set()) - bad - st.get("skipped", set())
        missing = [k for k in p["cases"] if k not in seen]
        missing_all += missing
        out.append(f"| {p['name']} | {r['status']} | {r.get('wall_s', 0):.0f} ({r.get('allotted_s', 0):.0f}) | "
                   f"{len(p['cases'])} | {len(ok)} | {len(st.get('skipped', set()) - bad)} | {len(bad)} | "
                   f"{reports.get(p['out'], '–')} |")
    notes = [f"- {r['name']}: {r['reason']}" for r in results if r.get("reason")]
    problems = [pr for r in results for pr in r.get("problems") or []]
    notes += [f"- {r['name']}: {pr}" for r in results for pr in r.get("problems") or []]
    # why rows were skipped or failed, once per backend and status (not again for a backend said above not to run)
    notes += [f"- {backend_label(b)} {s}: {why[:300]}" for (b, s), why in sorted(reasons.items())
              if not (s == "skipped" and any(pr.startswith(f"{b} cannot run here") for pr in problems))]
    if missing_all:
        notes.append(f"- not measured ({len(missing_all)} cases, the tail of the priority order): " +
                     ", ".join(missing_all[:40]) + (" ..." if len(missing_all) > 40 else ""))
    return out + ([""] + notes if notes else [])


def scan_table(thr: Sequence[Dict[str, Any]]) -> List[str]:
    """The scan sweep's crossovers (:func:`suites.throughput.scan_report.crossovers`) as Markdown lines."""
    import pandas as pd
    from suites.throughput import scan_report
    rows = [{**{k: v for k, v in r.items() if k != "extra"}, **(r.get("extra") or {})} for r in thr
            if "scan-T" in str((r.get("extra") or {}).get("tags", "")).split(",")]
    if not rows:
        return ["(no scan-sweep rows)"]
    cs = scan_report.crossovers(pd.DataFrame(rows))
    if not cs:
        return ["(no parallel scan with a sequential form beside it at the same T)"]
    out = ["| scan | mode | against | crossover | sequential time / scan time by T |", "|---|---|---|---|---|"]
    for c in cs:
        out.append(f"| {c['backend']} (minGRU H={c['hidden_size']}) | {c['mode']} | {c['against']} | "
                   f"{scan_report.crossover_text(c)} | "
                   + ", ".join(f"{T}: {v:.2f}" for T, v in sorted(c["ratios"].items())) + " |")
    return out


def summary_markdown(plan: Dict, results: Sequence[Dict[str, Any]], rows_by_part: Dict[str, List[Dict]],
                     metas: Dict[str, Dict], reports: Dict[str, str], setup_s: Optional[float] = None,
                     wall_s: Optional[float] = None) -> str:
    """summary.md: what ran, the ceilings, achieved TFLOP/s against them (per backend; per shape), BPTT vs RTRL."""
    thr = [r for n, rows in rows_by_part.items() for r in rows if r.get("suite") == "throughput"]
    mem = [r for rows in rows_by_part.values() for r in rows if r.get("suite") == "memory"]
    meta = next((m for m in metas.values() if m), {})
    vers = {k: v for m in metas.values() for k, v in (m.get("backend_versions") or {}).items()}
    tv = next((v for k, v in vers.items() if k.startswith("torch@")), {})
    jv = next((v for k, v in vers.items() if k.startswith("jax@")), {})
    machine = meta.get("machine") or {}
    gpu = machine.get("gpu") or {}
    head = [f"# GPU reference: {plan['gpu'] or 'unknown GPU'}", "",
            f"Written by `scripts/gpu-reference` (`python -m harness.cli.gpu_reference`) at commit "
            f"{(meta.get('git_commit') or '?')[:10]}, {meta.get('start_time', '?')}; "
            + (f"setup {setup_s:.0f} s, " if setup_s is not None else "") + (f"{wall_s:.0f} s in all. " if wall_s else "")
            + f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"
            + (f"; GPU {gpu.get('gpu_name')}, driver {gpu.get('gpu_driver')}, {gpu.get('gpu_memory')}" if gpu else "") + ".",
            f"torch {tv.get('torch', '?')} (CUDA {tv.get('cuda', '?')}, cuDNN {tv.get('cudnn', '?')}); "
            f"jax {jv.get('jax', '?')} / jaxlib {jv.get('jaxlib', '?')} ({jv.get('device_kind', '?')}).", "",
            "Throughput is float32; every case was checked against the float64 NumPy reference before it was timed. "
            "`+TF32`: the same code timed with TF32 on (torch: cuBLAS and cuDNN flags; JAX: matmul precision "
            "`default`), checked with TF32 off, and measured against TF32 GEMM ceilings. TFLOP/s count the model's "
            "GEMM FLOPs (`2·B·(I+H)·G·H·T`, training 3×); `eff_gemm` = achieved / the square-GEMM ceiling of the "
            "same framework and arithmetic measured in the same process (table below); `eff_recurrent` = achieved / "
            "the GEMMs of one ideal layer (hoisted input GEMM + T step GEMMs; see harness/measure/ceilings.py). "
            "Each part's run directory has the full report (`report.md`).", ""]
    body = ["## What ran", ""] + status_lines(plan, results, rows_by_part, reports)
    body += ["", "## GEMM ceilings", ""] + ceiling_table(thr)
    for mode, title in (("train", "training (forward + backward)"), ("fwd", "inference forward")):
        body += ["", f"## Achieved TFLOP/s against the GEMM ceiling, {title}", ""] + throughput_table(thr, mode)
    for mode, title in (("train", "training"), ("fwd", "inference forward")):
        body += ["", f"## Per shape, {title}: TFLOP/s (eff_gemm)", ""] + shape_table(thr, mode)
    body += ["", "## Gated linear cells: where the parallel scan wins", ""] + scan_table(thr)
    body += ["", "## Device memory: BPTT vs RTRL (float64)", ""] + memory_table(mem)
    return "\n".join(head + body) + "\n"


# -- main ----------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/gpu-reference",
        description="The GPU reference: throughput of cuDNN, native, cell loop, torch.compile and JAX at the "
                    "fastrnns and DeepBench shapes, TF32 off and on, achieved TFLOP/s against the GEMM ceiling "
                    "measured in the same process; minGRU sequential against parallel scan across T; device memory "
                    "of BPTT versus RTRL. At most "
                    f"{TOTAL_S / 60:g} minutes from the start of scripts/gpu-reference (its setup included), "
                    f"into {OUT_ROOT}/<gpu-name>/ (a run directory per part, their reports, {SUMMARY}).",
        epilog="Exit codes: 0 done (parts stopped at their deadline included; summary.md lists what is missing); "
               "1 a part failed or nothing was measured; 2 no CUDA GPU visible (nothing run) or bad usage; "
               "130 interrupted. scripts/gpu-reference sets up .venv first (CUDA builds of torch and JAX) unless "
               "--help or --dry-run is given or no GPU is visible.")
    p.add_argument("--dry-run", "--plan", action="store_true", dest="dry_run",
                   help="print the plan (parts, backends, shapes, memory points, time split, commands); run nothing; "
                        "needs no GPU")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    p.add_argument("--gpu-name", metavar="NAME", help="name the output directory after NAME instead of the detected "
                                                      "GPU (e.g. for --dry-run on a machine without one)")
    p.add_argument("--out-root", metavar="DIR", default=None,
                   help=f"where <gpu-name>/ goes (default: {OUT_ROOT}; {SMOKE_ROOT} with --cpu-smoke)")
    p.add_argument("--part", action="append", metavar="NAME", choices=PART_NAMES,
                   help="run only this part (repeatable): " + ", ".join(PART_NAMES))
    p.add_argument("--force", action="store_true", help="replace an existing <gpu-name>/ directory")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="check the pipeline on the CPU: tiny shapes, CPU backends (the TF32 twins are recorded "
                        f"skipped), into {SMOKE_ROOT}/<name>/; seconds to a minute; not a reference")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    elapsed0 = elapsed_since_start()
    start = time.monotonic() - elapsed0  # the clock reading when scripts/gpu-reference started
    out_root = args.out_root or (SMOKE_ROOT if args.cpu_smoke else OUT_ROOT)
    if args.dry_run:
        name = args.gpu_name or (None if args.cpu_smoke else _cheap_gpu_name())
        if args.cpu_smoke:
            name = name or "cpu"
        plan = build_plan(name, out_root, smoke=args.cpu_smoke, only=args.part, elapsed_s=elapsed0)
        print(json.dumps(plan, indent=1) if args.json else format_plan(plan))
        return EXIT_OK
    if args.cpu_smoke:
        status = GpuStatus(True, args.gpu_name or "cpu")
    else:
        status = detect_gpu()
        if not status.ok:
            print(f"gpu-reference: {status.reason}", file=sys.stderr)
            return EXIT_NO_GPU
    name = args.gpu_name or status.name
    plan = build_plan(name, out_root, smoke=args.cpu_smoke, only=args.part, elapsed_s=time.monotonic() - start)
    out = plan["dir"]
    if os.path.isdir(out) and os.listdir(out):
        if not args.force:
            print(f"gpu-reference: {out} exists; --force replaces it (or move it away)", file=sys.stderr)
            return EXIT_USAGE
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    print(format_plan(plan), flush=True)
    _write_json(os.path.join(out, PLAN_JSON), {"plan": plan, "gpu": asdict(status)})
    env = {**os.environ, **RUN_ENV}
    interrupted = False
    results: List[Dict[str, Any]] = []
    # SIGTERM (a session or CI stopping us) as Ctrl-C: the running part is stopped too (it has a session of its own)
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        run_parts(plan, start, env=env, results=results)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, old_term)
    results += [{"name": p["name"], "status": "interrupted", "reason": "interrupted (rows written so far are kept)",
                 "wall_s": 0, "allotted_s": 0} for p in plan["parts"][len(results):]]
    left = TOTAL_S - (time.monotonic() - start) - 3.0
    dirs = [p["out"] for p in plan["parts"]]
    reports = write_reports(dirs, left, env=env) if not interrupted else {}
    rows_by_part = {p["name"]: read_rows(p["out"]) for p in plan["parts"]}
    metas = {p["name"]: read_meta(p["out"]) for p in plan["parts"]}
    wall = time.monotonic() - start
    md = summary_markdown(plan, results, rows_by_part, metas, reports, setup_s=elapsed0 or None, wall_s=wall)
    with open(os.path.join(out, SUMMARY), "w") as f:
        f.write(md)
    _write_json(os.path.join(out, PLAN_JSON), {"plan": plan, "gpu": asdict(status), "results": results,
                                               "reports": reports, "setup_s": round(elapsed0, 1),
                                               "wall_s": round(wall, 1)})
    print(f"gpu-reference: {os.path.join(out, SUMMARY)} ({wall:.0f} s in all)", flush=True)
    if interrupted:
        return EXIT_INTERRUPTED
    measured = any((r.get("status") or "ok") == "ok" for rows in rows_by_part.values() for r in rows)
    return EXIT_FAIL if (any(r["status"] == "failed" for r in results) or not measured) else EXIT_OK


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _cheap_gpu_name() -> Optional[str]:
    """For --dry-run: nvidia-smi's first GPU, without importing torch."""
    names = probe_nvidia_smi()
    return names[0] if names else None


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
