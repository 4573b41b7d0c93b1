"""One thread count for every backend alike: environment for worker processes, and the in-process settings.

Three layers, because each framework listens to a different one:

- environment variables, read once when a library loads its thread pool, so they must be set before the
  worker process imports anything: ``OMP_NUM_THREADS`` (torch, OpenMP BLAS), ``MKL_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS``, ``VECLIB_MAXIMUM_THREADS``, ``NUMEXPR_NUM_THREADS``, and for N = 1 the
  XLA flag ``--xla_cpu_multi_thread_eigen=false`` (XLA's CPU client has no other thread-count knob);
- the CPU affinity of the worker (:func:`apply_in_worker`): XLA sizes its pools from the cores the process
  may use, so for N below the available cores the worker is pinned to N of them — the only way to make JAX
  use N threads; the pinning applies to every backend alike;
- ``Backend.set_threads(n)`` in the worker (``torch.set_num_threads``, ``threadpoolctl`` for NumPy's BLAS).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

from harness.core.errors import InputError
from harness.core.system import THREAD_ENV_VARS, XLA_SINGLE_THREAD, allowed_cpus, cpu_count, thread_env  # noqa: F401



def check_threads(n: Optional[int]) -> int:
    """``n`` validated (None: all cores this process may use). ValueError names the argument otherwise."""
    if n is None:
        return cpu_count()
    cores = cpu_count()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= cores:
        raise InputError(f"--threads: got {n!r}; expected an integer from 1 to {cores} (the cores this process may "
                         "use: more threads than cores only make the timings contend with each other)")
    return n


def set_process_env(n: int) -> Dict[str, Optional[str]]:
    """Set :func:`thread_env` in ``os.environ`` (children inherit it); return the previous values."""
    new = thread_env(n)
    keys = list(THREAD_ENV_VARS) + ["XLA_FLAGS"]
    old = {k: os.environ.get(k) for k in keys}
    for k in keys:
        if k in new:
            os.environ[k] = new[k]
        else:
            os.environ.pop(k, None)
    return old


def restore_env(old: Dict[str, Optional[str]]) -> None:
    """Undo :func:`set_process_env`."""
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def pinned_cpus(n: int) -> Optional[List[int]]:
    """The CPUs a worker with ``n`` threads is pinned to (the first ``n`` allowed ones), or None for all."""
    if not hasattr(os, "sched_setaffinity"):  # pragma: no cover - non-Linux: no pinning
        return None
    allowed = allowed_cpus()
    return allowed[:n] if n < len(allowed) else None


def apply_in_worker(n: int) -> Optional[List[int]]:
    """In a fresh worker, before frameworks load: pin to ``n`` CPUs if fewer than available. Returns the CPUs."""
    cpus = pinned_cpus(n)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    return cpus


def describe(n: int) -> Dict[str, object]:
    """What was set, for meta.json."""
    env = thread_env(n, {})
    return {"threads": n, "env": {k: env[k] for k in sorted(env)}, "pinned_cpus": pinned_cpus(n),
            "set_threads": "Backend.set_threads(n) in each worker"}
