"""Every question about the machine this process runs on, answered once: cores and affinity, memory, BLAS,
the thread environment variables. Standard library only (threadpoolctl when installed, imported lazily).
"""
from __future__ import annotations

import os
import platform
from typing import Dict, List, Optional

#: Environment variables that size the thread pools of the libraries rnnbench drives. They are read once,
#: when a library loads its pool, so they must be set before a worker process imports anything.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                   "NUMEXPR_NUM_THREADS")
#: The XLA flag that makes the CPU client single-threaded (XLA has no other thread-count knob).
XLA_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false"


def allowed_cpus() -> List[int]:
    """The CPUs this process may run on (its affinity mask), sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return list(range(os.cpu_count() or 1))


def cpu_count() -> int:
    """Cores this process may use (respects affinity masks)."""
    return len(allowed_cpus())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _kib_field(path: str, key: str) -> Optional[int]:
    """``key:  N kB`` from a /proc file, in bytes, or None where unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def meminfo(key: str) -> Optional[int]:
    """A field of ``/proc/meminfo`` in bytes (``MemTotal``, ``MemAvailable``, ...), or None where unreadable."""
    return _kib_field("/proc/meminfo", key)


def mem_total_bytes() -> Optional[int]:
    return meminfo("MemTotal")


def mem_available_bytes() -> Optional[int]:
    return meminfo("MemAvailable")


def process_status_bytes(key: str) -> Optional[int]:
    """A memory field of ``/proc/self/status`` in bytes (``VmRSS``, ``VmHWM``), or None."""
    return _kib_field("/proc/self/status", key)


def blas_info() -> List[Dict[str, object]]:
    """threadpoolctl's description of every BLAS loaded in this process ([] when unknown)."""
    try:
        from threadpoolctl import threadpool_info
        return [i for i in threadpool_info() if i.get("user_api") == "blas"]
    except Exception:  # noqa: BLE001 - threadpoolctl missing or confused
        return []


def blas_threads() -> int:
    """Threads the BLAS currently uses (1 if unknown)."""
    n = [int(i.get("num_threads") or 1) for i in blas_info()]
    return max(n) if n else 1


def blas_description() -> Optional[str]:
    """``"openblas 0.3.31 (Haswell, 2 threads)"`` for the first BLAS, or None."""
    b = blas_info()
    if not b:
        return None
    return f"{b[0].get('internal_api')} {b[0].get('version')} ({b[0].get('architecture')}, " \
           f"{b[0].get('num_threads')} threads)"


def thread_env(n: int, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment that gives every library ``n`` threads: a copy of ``base`` (default ``os.environ``)
    with :data:`THREAD_ENV_VARS` set to ``n`` and, for ``n == 1``, XLA's single-thread flag."""
    env = dict(os.environ if base is None else base)
    for var in THREAD_ENV_VARS:
        env[var] = str(int(n))
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_cpu_multi_thread_eigen")
             and not f.startswith("intra_op_parallelism_threads")]
    if n == 1:
        flags.append(XLA_SINGLE_THREAD)
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    return env
