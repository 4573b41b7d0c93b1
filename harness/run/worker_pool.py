"""Per Dask worker process: idle per-case worker processes kept for the next case of the same run and kind.

Locally a run keeps one per-case worker per backend family and round (see :mod:`harness.run.runner`); a fresh
process for every case would re-import its framework each time (seconds for torch or JAX, more than most
correctness cases take). A cluster task does the same through this pool: it takes an idle worker of its key
(run, family, threads, slot) or starts one, and gives it back when the case ends well. The slot keeps what
must stay apart apart: process ``k`` of a timing case never runs in the process that ran process ``j != k``
of it, so the spread between processes stays a spread between processes.

A worker that timed out or died is not given back. Idle workers are stopped after :data:`IDLE_S` seconds,
when more than :data:`MAX_IDLE` are idle, and when their run ends (:func:`release_run`, which the client asks
every Dask worker to do).
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Deque, Dict, Hashable, List, Optional, Tuple

#: Seconds an idle worker waits for its next case before it is stopped.
IDLE_S = 60.0
#: Idle workers one Dask worker process keeps at most (the longest idle beyond this are stopped).
MAX_IDLE = 4

_lock = threading.Lock()
_idle: Dict[Hashable, Deque[Tuple[Any, float]]] = {}
_reaper: Optional[threading.Thread] = None


def _stop_later(workers: List[Any]) -> None:
    """Stop workers off the caller's thread (a Dask worker's event loop must not wait for them)."""
    if workers:
        threading.Thread(target=lambda: [w.stop() for w in workers], daemon=True,
                         name="rnnbench-pool-stop").start()


def _expired_locked(now: float) -> List[Any]:
    out = []
    for key in list(_idle):
        q = _idle[key]
        while q and now - q[0][1] > IDLE_S:
            out.append(q.popleft()[0])
        if not q:
            del _idle[key]
    flat = sorted(((t, key) for key, q in _idle.items() for _, t in q), key=lambda x: x[0])
    for _, key in flat[:max(0, len(flat) - MAX_IDLE)]:
        out.append(_idle[key].popleft()[0])
        if not _idle[key]:
            del _idle[key]
    return out


def _reap_forever() -> None:
    while True:
        time.sleep(min(5.0, IDLE_S / 2))
        with _lock:
            gone = _expired_locked(time.monotonic())
        _stop_later(gone)


def take(key: Hashable) -> Optional[Any]:
    """An idle worker of ``key`` whose process is alive, or None (start one)."""
    with _lock:
        q = _idle.get(key)
        while q:
            w, _ = q.pop()  # the most recently used: its caches are warmest
            if w.proc.is_alive():
                if not q:
                    _idle.pop(key, None)
                return w
        _idle.pop(key, None)
    return None


def give(key: Hashable, worker: Any) -> None:
    """Keep ``worker`` (alive, between cases) for the next case of ``key``."""
    global _reaper
    with _lock:
        _idle.setdefault(key, collections.deque()).append((worker, time.monotonic()))
        gone = _expired_locked(time.monotonic())
        if _reaper is None:
            _reaper = threading.Thread(target=_reap_forever, daemon=True, name="rnnbench-pool-reaper")
            _reaper.start()
    _stop_later(gone)


def release_run(run: str) -> int:
    """Stop every idle worker of run ``run`` (the first element of its keys); returns how many."""
    with _lock:
        keys = [k for k in _idle if isinstance(k, tuple) and k and k[0] == run]
        gone = [w for k in keys for w, _ in _idle.pop(k)]
    _stop_later(gone)
    return len(gone)


def idle_count() -> int:
    """Idle workers held now (for tests and diagnostics)."""
    with _lock:
        return sum(len(q) for q in _idle.values())
