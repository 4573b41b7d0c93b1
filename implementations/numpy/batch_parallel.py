"""Data parallelism over the batch for the NumPy recurrences.

Batch rows of an RNN are independent, so the sequential part (T small GEMMs + elementwise gates)
can run on several threads at once, each owning a slice of the batch for the whole sequence, with
no synchronisation per step. NumPy ufuncs and BLAS release the GIL, so Python threads suffice.
While the slices run, BLAS is limited to one thread per caller (otherwise 2 threads × 2 BLAS threads
oversubscribe the cores); the big GEMMs outside (hoisted input projection, weight gradients) keep
the full BLAS thread count.

This is what makes the NumPy reference use the machine's cores the way torch does for its
elementwise kernels; without it, NumPy's single-threaded transcendental functions dominate.
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from harness.core.system import cpu_count
from harness.core.errors import InputError

#: below this many batch rows per thread the split costs more than it gains
MIN_ROWS_PER_THREAD = 8

_threads: Optional[int] = None
_pool: Optional[ThreadPoolExecutor] = None
_controller = None
_lock = threading.Lock()


def set_num_threads(n: Optional[int]) -> None:
    """Threads for the batch-parallel recurrences (None: all cores this process may use)."""
    global _threads
    if n is not None and (not isinstance(n, int) or n < 1):
        raise InputError(f"threads: got {n!r}; allowed: an integer >= 1 or None")
    _threads = n


def get_num_threads() -> int:
    return _threads or cpu_count()


def _get_pool(n: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < n:
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="rnnbench-batch")
        return _pool


def _blas_single_thread():
    """A context limiting BLAS to one thread (no-op without threadpoolctl)."""
    global _controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency, but degrade gracefully
        return contextlib.nullcontext()
    if _controller is None:
        _controller = ThreadpoolController()  # scanning the loaded libraries is slow: do it once
    return _controller.limit(limits=1, user_api="blas")


def batch_parallel(fn: Callable[[int, int], None], batch: int) -> None:
    """Call ``fn(b0, b1)`` on disjoint slices covering ``range(batch)``, in parallel when worth it."""
    n = min(get_num_threads(), batch // MIN_ROWS_PER_THREAD)
    if n <= 1:
        fn(0, batch)
        return
    bounds = [batch * k // n for k in range(n + 1)]
    pool = _get_pool(n - 1)
    with _blas_single_thread():
        futures = [pool.submit(fn, bounds[k], bounds[k + 1]) for k in range(1, n)]
        fn(bounds[0], bounds[1])  # the calling thread takes the first slice
        for f in futures:
            f.result()  # re-raises a worker's exception here
