"""Peak-memory probes of one gradient computation, each in a fresh process, with the theory beside them.

:func:`measure_peak` starts ``python -m harness.memory '<json request>'`` (a fresh interpreter, so that
allocator caches, JIT buffers and high-water marks of earlier work cannot leak into the figure), builds the
problem there (parameters, inputs and cotangents exist *before* the measured region), runs the gradient
once and prints one JSON line. How the peak is taken depends on the backend and device (``method``):

``tracemalloc``        NumPy: NumPy's data allocations are traced; peak minus the traced bytes at the start.
``vmhwm``              torch CPU: tracemalloc does not see torch's allocator, so the process high-water mark
                       (``VmHWM`` in ``/proc/self/status``) is reset by writing ``5`` to ``/proc/self/clear_refs``
                       and read after the run, minus ``VmRSS`` before it (includes any RSS growth, e.g. thread
                       stacks: an upper bound of the tensors' peak).
``ru_maxrss``          the same from ``getrusage`` where clear_refs is not writable (only meaningful when the
                       run raises the process maximum; said in ``reason``).
``cuda_max_allocated`` torch CUDA: ``reset_peak_memory_stats`` -> run -> ``max_memory_allocated`` − baseline.
``jax_peak_bytes``     JAX GPU: ``memory_stats()["peak_bytes_in_use"]`` − bytes in use before, with
                       ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` in the fresh process.
``xla_memory_analysis`` JAX CPU: the compiled executable's ``memory_analysis()`` (temp + output + argument
                       sizes), an estimate (``estimate=True``), nothing is measured.

Theory (bytes, :func:`theory_bytes`):

- ``bptt``: what :mod:`implementations.numpy_rnn` stores, counted exactly: per layer ``h`` ``(T+1)·B·H``,
  the activated gates ``T·B·G·H``, for the LSTM ``c`` ``(T+1)·B·H`` and ``tanh(c)`` ``T·B·H``, for the GRU
  ``W_hn h + b_hn`` ``T·B·H``; during the backward of layer l also ``dA`` ``T·B·G·H`` (GRU: and ``dR``), the
  cotangent arriving from the layer above ``T·B·H``, the input gradient ``T·B·I_l`` being produced; and
  the parameter gradients ``P``. The peak is the largest over layers of that sum.
- ``rtrl``: :func:`implementations.numpy_rtrl.rtrl_memory` ``["theory"]``: the influence matrices
  ``B·H·Qcum`` per layer (×2 for the LSTM), the per-step Jacobian buffers, the gradient ``P``.
  NumPy RTRL is measured without ``dx`` (``with_dx=False``: dx would be one BPTT pass, ∝ T).
- ``tbptt``: ``numpy_rnn.vjp(truncation=k)`` — what ``Backend.vjp(algorithm="tbptt")`` runs in NumPy — runs
  the sequence in chunks of k steps and stores one chunk at a time: BPTT's storage at ``T = k`` plus the full
  ``dx`` ``T·B·I`` and a second gradient buffer ``P``. (``impl="chunked"`` names the same computation through
  :func:`implementations.numpy_rtrl.tbptt_chunked_vjp`; it is kept for old run directories.)

For torch and JAX the same theory is printed beside the measured figure: their stored activations differ
from NumPy's, and the ratio shows by how much.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, Optional

import numpy as np

from harness.spec import CellSpec

ALGORITHMS = ("bptt", "rtrl", "tbptt")
IMPLS = ("backend", "chunked")


# -- theory -----------------------------------------------------------------------------------------------

def bptt_stored_bytes(spec: CellSpec, T: int, B: int, itemsize: int) -> int:
    """Peak bytes of numpy_rnn's BPTT beyond its inputs (see the module docstring for what is counted)."""
    H, G, L = spec.hidden_size, spec.gates, spec.num_layers
    cache = 0
    for _ in range(L):
        cache += (T + 1) * B * H + T * B * G * H
        if spec.cell == "lstm":
            cache += (T + 1) * B * H + T * B * H
        elif spec.cell == "gru":
            cache += T * B * H
    during = 0
    for l in range(L):
        d = T * B * G * H * (2 if spec.cell == "gru" else 1)     # dA (and dR)
        d += T * B * spec.layer_input_size(l)                    # dx of this layer
        d += T * B * H if l < L - 1 else 0                       # cotangent from the layer above
        during = max(during, d)
    return int((cache + during + spec.num_params) * itemsize)


def theory_bytes(spec: CellSpec, T: int, B: int, dtype: str, algorithm: str, truncation: Optional[int] = None,
                 impl: str = "backend") -> int:
    """Theoretical peak bytes of one gradient computation (see the module docstring)."""
    item = np.dtype(dtype).itemsize
    if algorithm == "bptt":
        return bptt_stored_bytes(spec, T, B, item)
    if algorithm == "rtrl":
        from implementations.numpy_rtrl import rtrl_memory  # NumPy only
        return int(rtrl_memory(spec, B, dtype)["theory"])
    if algorithm == "tbptt":
        k = min(int(truncation), T)
        return bptt_stored_bytes(spec, k, B, item) + (T - k) * B * spec.input_size * item \
            + spec.num_params * item
    raise ValueError(f"algorithm: got {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")


# -- the request ------------------------------------------------------------------------------------------

def make_request(backend: str, device: str, cell: str, layers: int, batch: int, seq_len: int, input_size: int,
                 hidden_size: int, dtype: str, algorithm: str, truncation: Optional[int] = None,
                 impl: str = "backend", seed: int = 0) -> Dict[str, Any]:
    """A validated measurement request (a plain dict, passed to the child as JSON)."""
    spec = CellSpec(cell, input_size, hidden_size, layers)  # validates the shape fields
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: got {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
    if impl not in IMPLS:
        raise ValueError(f"impl: got {impl!r}; allowed: {', '.join(IMPLS)}")
    if algorithm == "tbptt":
        if isinstance(truncation, bool) or not isinstance(truncation, (int, np.integer)) or truncation < 1:
            raise ValueError(f"truncation: got {truncation!r}; algorithm='tbptt' needs an integer k >= 1")
    elif truncation is not None:
        raise ValueError(f"truncation: got {truncation!r}; only meaningful with algorithm='tbptt'")
    for name, v in (("batch", batch), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed: an integer >= 1")
    if np.dtype(dtype).name not in ("float32", "float64"):
        raise TypeError(f"dtype: got {dtype!r}; allowed: float32, float64")
    if impl == "chunked" and not (backend == "numpy" and algorithm == "tbptt"):
        raise ValueError("impl: 'chunked' exists for backend='numpy', algorithm='tbptt' only")
    del spec
    return {"backend": backend, "device": device, "cell": cell, "layers": int(layers), "batch": int(batch),
            "seq_len": int(seq_len), "input_size": int(input_size), "hidden_size": int(hidden_size),
            "dtype": np.dtype(dtype).name, "algorithm": algorithm,
            "truncation": None if truncation is None else int(truncation), "impl": impl, "seed": int(seed)}


def measure_peak(request: Dict[str, Any], timeout_s: float = 300.0, threads: Optional[int] = None) -> Dict[str, Any]:
    """Run one measurement in a fresh process; returns a dict with ``status`` (ok/error/oom/timeout/skipped),
    ``peak_bytes``, ``method``, ``estimate``, ``theory_bytes``, ``ratio`` (measured/theory), ``reason``.
    """
    env = dict(os.environ)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # JAX must not grab most of the GPU up front
    # glibc: serve every allocation >= 64 KiB by mmap and unmap it on free (no dynamic threshold), so that
    # the process RSS follows torch's CPU tensors (the vmhwm method) instead of a reused heap.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    if threads:
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(int(threads))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "harness.memory", json.dumps(request)]
    base = {"peak_bytes": None, "method": None, "estimate": False, "theory_bytes": None, "ratio": None}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "reason": f"memory probe exceeded {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return {**base, **json.loads(line)}
            except json.JSONDecodeError:
                break
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    status = "oom" if proc.returncode in (-9, 137) else "error"
    return {**base, "status": status, "reason": f"probe exited {proc.returncode}: {' | '.join(tail)}"}


# -- the child --------------------------------------------------------------------------------------------

def _status_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so that RSS before the run is a clean baseline."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _problem(req: Dict[str, Any]):
    from harness.params import init_params
    from harness.spec import zero_state
    spec = CellSpec(req["cell"], req["input_size"], req["hidden_size"], req["layers"])
    T, B, dt = req["seq_len"], req["batch"], req["dtype"]
    rng = np.random.default_rng(req["seed"] + 1)
    params = init_params(spec, seed=req["seed"], dtype=dt)
    x = rng.standard_normal((T, B, spec.input_size)).astype(dt)
    dy = rng.standard_normal((T, B, spec.hidden_size)).astype(dt)
    dfin = zero_state(spec, B, dt)
    return spec, params, x, dy, dfin


def _child(req: Dict[str, Any]) -> Dict[str, Any]:
    spec, params, x, dy, dfin = _problem(req)
    alg, k, impl = req["algorithm"], req["truncation"], req["impl"]
    out: Dict[str, Any] = {"status": "ok", "reason": "", "estimate": False}
    out["theory_bytes"] = theory_bytes(spec, req["seq_len"], req["batch"], req["dtype"], alg, k, impl)
    family = req["backend"].split("-")[0]
    if family == "numpy":
        import tracemalloc
        from harness.backends import get
        from implementations import numpy_rtrl
        be = get(req["backend"], req["device"])
        be._check(spec, params, x, None)  # validate before the measured region
        if alg == "rtrl":
            fn = lambda: numpy_rtrl.vjp(spec, params, x, None, dy, dfin, with_dx=False)  # noqa: E731
            out["scope"] = "params+dstate (dx not computed)"
        elif alg == "tbptt" and impl == "chunked":
            fn = lambda: numpy_rtrl.tbptt_chunked_vjp(spec, params, x, None, dy, dfin, k)  # noqa: E731
            out["scope"] = "params+dx+dstate"
        else:
            fn = lambda: be.vjp(spec, params, x, None, dy, dfin, algorithm=alg, truncation=k)  # noqa: E731
            out["scope"] = "params+dx+dstate"
        gc.collect()
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        g = fn()
        out["seconds"] = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del g
        out.update(peak_bytes=int(peak - start), method="tracemalloc")
    elif family == "torch":
        from harness.backends import get
        be = get(req["backend"], req["device"])
        out["scope"] = "Backend.vjp incl. NumPy<->torch conversion"
        run = lambda: be.vjp(spec, params, x, None, dy, dfin, algorithm=alg, truncation=k)  # noqa: E731
        if req["device"] == "cuda":
            import torch
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            g = run()
            torch.cuda.synchronize()
            out.update(peak_bytes=int(torch.cuda.max_memory_allocated() - base), method="cuda_max_allocated")
        else:
            import resource
            # Warm-up on one step: torch's lazy initialisation (thread pool, kernels) is not the gradient's.
            be.vjp(spec, params, x[:1], None, dy[:1], dfin, algorithm=alg, truncation=k)
            gc.collect()
            _malloc_trim()
            rss0 = _status_bytes("VmRSS")
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
                method = "vmhwm"
            except OSError:
                method = "ru_maxrss"
            if method == "ru_maxrss":
                before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            g = run()
            if method == "vmhwm":
                peak = _status_bytes("VmHWM") - rss0
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
                out["reason"] = "ru_maxrss delta: counts only growth beyond the process's earlier maximum"
            out.update(peak_bytes=int(max(peak, 0)), method=method)
        del g
    elif family == "jax":
        import jax
        from harness.backends import get
        be = get(req["backend"], req["device"])
        kind = "rtrl" if alg == "rtrl" else ("tbptt" if alg == "tbptt" and k < req["seq_len"] else "vjp")
        args = be._vjp_args(spec, params, x, None, dy, dfin)
        if kind == "tbptt":
            args = args + (jax.device_put(np.int32(k), be.jax_device),)
        exe = be._compiled(kind, spec, args)
        out["scope"] = f"compiled {kind} (params+dx+dstate)"
        if req["device"] == "cuda":
            dev = be.jax_device
            jax.block_until_ready(args)
            base = dev.memory_stats().get("bytes_in_use", 0)
            jax.block_until_ready(exe(*args))
            peak = dev.memory_stats()["peak_bytes_in_use"] - base
            out.update(peak_bytes=int(peak), method="jax_peak_bytes")
        else:
            ma = exe.memory_analysis()
            if ma is None:
                return {**out, "status": "skipped", "reason": "memory_analysis() is not available for this executable"}
            parts = {n: int(getattr(ma, f"{n}_size_in_bytes", 0) or 0) for n in ("temp", "output", "argument")}
            out.update(peak_bytes=sum(parts.values()), method="xla_memory_analysis", estimate=True,
                       **{f"{n}_bytes": v for n, v in parts.items()})
    else:
        return {**out, "status": "skipped", "reason": f"no memory probe for backend family {family!r}"}
    out["ratio"] = out["peak_bytes"] / out["theory_bytes"] if out["theory_bytes"] else None
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    req = json.loads(argv[0])
    try:
        res = _child(req)
    except MemoryError as e:
        res = {"status": "oom", "reason": f"MemoryError: {e}"}
    except ValueError as e:  # e.g. RTRL refusing a request larger than free memory
        res = {"status": "skipped", "reason": str(e)}
    except NotImplementedError as e:
        res = {"status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - reported as a row, never a crash of the runner
        res = {"status": "error", "reason": f"{type(e).__name__}: {e}"}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
