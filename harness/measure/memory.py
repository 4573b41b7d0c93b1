"""Peak-memory probes of one gradient computation, each in a fresh process.

:func:`measure_peak` starts ``python -m harness.measure.memory '<json request>'`` (a fresh interpreter, so that
allocator caches, JIT buffers and high-water marks of earlier work cannot leak into the figure), builds the
problem there (parameters, inputs and cotangents exist *before* the measured region), and asks the backend:
``Backend.peak_memory(...)`` runs the gradient once and says how it measured (``method``):

``tracemalloc``        NumPy: NumPy's data allocations are traced; peak minus the traced bytes at the start.
``vmhwm``              the default for any CPU backend (torch's too: tracemalloc does not see its allocator):
                       the process high-water mark ``VmHWM`` is reset by writing ``5`` to ``/proc/self/clear_refs``
                       and read after the run, minus ``VmRSS`` before it (an upper bound of the arrays' peak);
                       the median of 3 runs (``peak_runs``: each run's), as one run's mark scatters by ~10 %.
``ru_maxrss``          the same from ``getrusage`` where clear_refs is not writable.
``cuda_max_allocated`` torch CUDA: ``reset_peak_memory_stats`` -> run -> ``max_memory_allocated`` − baseline.
``jax_peak_bytes``     JAX GPU: ``memory_stats()["peak_bytes_in_use"]`` − bytes in use before, with
                       ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` in the fresh process.
``xla_memory_analysis`` JAX CPU: the compiled executable's ``memory_analysis()``, an estimate (``estimate=True``).

The probe measures; the theory it is compared with belongs to the memory suite (:mod:`suites.memory.theory`).
A request the backend cannot serve (an unsupported cell or algorithm, RTRL larger than free memory) comes
back ``skipped`` with the backend's reason.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, Optional

import numpy as np

from harness.core.errors import InputError, InputTypeError, RnnbenchError
from harness.core.spec import ALGORITHMS, CellSpec, check_algorithm_args  # noqa: F401 - ALGORITHMS public

IMPLS = ("backend", "chunked")  # chunked: the reference's chunked tBPTT (its backend's peak_memory knows it)
_MARK = "@@RNNBENCH_PEAK@@"  # prefixes the one line of the child's result


# -- the request ------------------------------------------------------------------------------------------

def make_request(backend: str, device: str, cell: str, layers: int, batch: int, seq_len: int, input_size: int,
                 hidden_size: int, dtype: str, algorithm: str, truncation: Optional[int] = None,
                 impl: str = "backend", seed: int = 0) -> Dict[str, Any]:
    """A validated measurement request (a plain dict, passed to the child as JSON)."""
    spec = CellSpec(cell, input_size, hidden_size, layers)  # validates the shape fields
    check_algorithm_args(algorithm, truncation)
    if impl not in IMPLS:
        raise InputError(f"impl: got {impl!r}; allowed: {', '.join(IMPLS)}")
    for name, v in (("batch", batch), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{name}: got {v!r}; allowed: an integer >= 1")
    if np.dtype(dtype).name not in ("float32", "float64"):
        raise InputTypeError(f"dtype: got {dtype!r}; allowed: float32, float64")
    if impl == "chunked" and algorithm != "tbptt":
        raise InputError("impl: 'chunked' is a tBPTT implementation; got algorithm=" + repr(algorithm))
    del spec
    return {"backend": backend, "device": device, "cell": cell, "layers": int(layers), "batch": int(batch),
            "seq_len": int(seq_len), "input_size": int(input_size), "hidden_size": int(hidden_size),
            "dtype": np.dtype(dtype).name, "algorithm": algorithm,
            "truncation": None if truncation is None else int(truncation), "impl": impl, "seed": int(seed)}


def measure_peak(request: Dict[str, Any], timeout_s: float = 300.0, threads: Optional[int] = None) -> Dict[str, Any]:
    """Run one measurement in a fresh process; returns a dict with ``status`` (ok/error/oom/timeout/skipped),
    ``peak_bytes``, ``method``, ``estimate``, ``scope``, ``reason`` (and what else the backend reported).
    """
    env = dict(os.environ)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # JAX must not grab most of the GPU up front
    # glibc: serve every allocation >= 64 KiB by mmap and unmap it on free (no dynamic threshold), so that
    # the process RSS follows torch's CPU tensors (the vmhwm method) instead of a reused heap.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    if threads:
        from harness.core.system import thread_env
        env = thread_env(int(threads), env)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "harness.measure.memory", json.dumps(request)]
    base = {"peak_bytes": None, "method": None, "estimate": False}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "reason": f"memory probe exceeded {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        # Only the probe's own marked line, and only from a probe that exited normally: whatever a backend
        # prints cannot pass for a result.
        if proc.returncode == 0 and line.startswith(_MARK):
            try:
                return {**base, **json.loads(line[len(_MARK):])}
            except json.JSONDecodeError:
                break
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    status = "oom" if proc.returncode in (-9, 137) else "error"
    return {**base, "status": status, "reason": f"probe exited {proc.returncode}: {' | '.join(tail)}"}


# -- the child --------------------------------------------------------------------------------------------



def _problem(req: Dict[str, Any]):
    from harness.core.params import init_params
    from harness.core.spec import zero_state
    spec = CellSpec(req["cell"], req["input_size"], req["hidden_size"], req["layers"])
    T, B, dt = req["seq_len"], req["batch"], req["dtype"]
    rng = np.random.default_rng(req["seed"] + 1)
    params = init_params(spec, seed=req["seed"], dtype=dt)
    x = rng.standard_normal((T, B, spec.input_size)).astype(dt)
    dy = rng.standard_normal((T, B, spec.hidden_size)).astype(dt)
    dfin = zero_state(spec, B, dt)
    return spec, params, x, dy, dfin


def _child(req: Dict[str, Any]) -> Dict[str, Any]:
    from implementations import registry
    spec, params, x, dy, dfin = _problem(req)
    be = registry.get(req["backend"], req["device"])
    options = {} if req["impl"] == "backend" else {"impl": req["impl"]}
    got = be.peak_memory(spec, params, x, dy, dfin, algorithm=req["algorithm"], truncation=req["truncation"],
                         **options)
    if not isinstance(got, dict):
        raise TypeError(f"backend {req['backend']!r}: peak_memory() must return a dict with 'peak_bytes'; "
                        f"got {type(got).__name__}")
    peak = got.get("peak_bytes")
    if isinstance(peak, (bool, np.bool_)) or not isinstance(peak, (int, float, np.integer, np.floating)) \
            or not np.isfinite(peak) or peak < 0:
        raise TypeError(f"backend {req['backend']!r}: peak_memory()['peak_bytes'] must be a finite number of "
                        f"bytes >= 0; got {peak!r}"[:300])
    out = {k: v for k, v in got.items() if k not in ("status", "peak_bytes")}  # the probe says the status
    return {"reason": "", "estimate": False, **out, "status": "ok", "peak_bytes": int(peak)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    req = json.loads(argv[0])
    try:
        res = _child(req)
    except MemoryError as e:
        res = {"status": "oom", "reason": f"MemoryError: {e}"}
    except RnnbenchError as e:  # the backend cannot: an unsupported request, RTRL larger than free memory
        res = {"status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - reported as a row, never a crash of the runner
        res = {"status": "error", "reason": f"{type(e).__name__}: {e}"}
    try:
        text = json.dumps(res)
    except (TypeError, ValueError) as e:  # a backend's extra fields that JSON cannot hold
        text = json.dumps({"status": "error", "reason": f"peak_memory() returned values JSON cannot hold: {e}"})
    print("\n" + _MARK + text, flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
