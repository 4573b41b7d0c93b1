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


#: Runs of one vmhwm probe: the median is reported. One run's high-water mark scattered by about 10 % between
#: runs of the same torch gradient (pages the allocator happened to reuse), enough to bend a fitted exponent
#: over a factor 4 in T by 0.1; the median of three stays within a few %.
VMHWM_RUNS = 3
#: A run longer than this (seconds) is not repeated: the probe's time belongs to the computation, not to spread.
VMHWM_REPEAT_MAX_S = 5.0


def vmhwm_peak(warmup: Callable[[], Any], run: Callable[[], Any], scope: str,
               runs: int = VMHWM_RUNS) -> Dict[str, Any]:
    """Peak resident memory of ``run()``, for any allocator: after ``warmup()`` (lazy initialisation is not the
    computation's), ``VmHWM`` is reset to the current RSS through ``/proc/self/clear_refs`` and read after the
    run, minus ``VmRSS`` before it. An upper bound of the arrays' peak (thread stacks and other RSS growth count
    too). ``run()`` is measured ``runs`` times (once if one run takes longer than :data:`VMHWM_REPEAT_MAX_S`)
    and the median is ``peak_bytes``; every run's peak is in ``peak_runs`` (bytes). Where clear_refs is not
    writable, the ``getrusage`` maximum's growth, once (``ru_maxrss``: meaningful only when the run raises the
    process maximum, which ``reason`` says)."""
    import resource
    import statistics
    warmup()
    peaks, secs = [], []
    method = "vmhwm"
    for i in range(max(1, int(runs))):
        gc.collect()
        malloc_trim()
        rss0 = process_status_bytes("VmRSS") or 0
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            method = "ru_maxrss"
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0 = time.perf_counter()
        out = run()
        secs.append(time.perf_counter() - t0)
        if method == "vmhwm":
            peaks.append(max((process_status_bytes("VmHWM") or 0) - rss0, 0))
        else:
            peaks.append(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, 0))
        del out
        if method != "vmhwm" or secs[0] > VMHWM_REPEAT_MAX_S:
            break  # a process maximum grows once; a long run is not repeated
    res: Dict[str, Any] = {"method": method, "scope": scope, "seconds": float(statistics.median(secs)),
                           "peak_runs": [int(p) for p in peaks]}
    if method != "vmhwm":
        res["reason"] = "ru_maxrss delta: counts only growth beyond the process's earlier maximum"
    res["peak_bytes"] = int(statistics.median(peaks))
    return res
