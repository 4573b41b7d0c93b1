"""Measuring one computation's memory peak inside the current process: the primitives of every backend's
``peak_memory`` hook. The memory probe runs each in a fresh interpreter, so nothing earlier leaks in.
"""
from __future__ import annotations

import gc
import time
from typing import Any, Callable, Dict

from harness.core.system import process_status_bytes


def malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so that RSS before a run is a clean baseline."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def tracemalloc_peak(run: Callable[[], Any], scope: str) -> Dict[str, Any]:
    """Peak of the allocations Python's ``tracemalloc`` sees (NumPy's data buffers included) during ``run()``,
    minus what was traced at its start. Exact for NumPy; blind to allocators tracemalloc does not hook."""
    import tracemalloc
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del out
    return {"peak_bytes": int(peak - start), "method": "tracemalloc", "scope": scope, "seconds": seconds}


def vmhwm_peak(warmup: Callable[[], Any], run: Callable[[], Any], scope: str) -> Dict[str, Any]:
    """Peak resident memory of ``run()``, for any allocator: after ``warmup()`` (lazy initialisation is not the
    computation's), ``VmHWM`` is reset to the current RSS through ``/proc/self/clear_refs`` and read after the
    run, minus ``VmRSS`` before it. An upper bound of the arrays' peak (thread stacks and other RSS growth count
    too). Where clear_refs is not writable, the ``getrusage`` maximum's growth (``ru_maxrss``: meaningful only
    when the run raises the process maximum, which ``reason`` says)."""
    import resource
    warmup()
    gc.collect()
    malloc_trim()
    rss0 = process_status_bytes("VmRSS") or 0
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        method = "vmhwm"
    except OSError:
        method = "ru_maxrss"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    res: Dict[str, Any] = {"method": method, "scope": scope, "seconds": seconds}
    if method == "vmhwm":
        peak = (process_status_bytes("VmHWM") or 0) - rss0
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        res["reason"] = "ru_maxrss delta: counts only growth beyond the process's earlier maximum"
    del out
    res["peak_bytes"] = int(max(peak, 0))
    return res
