"""Host-wide reservation of CPUs for the per-case workers of a cluster run (``fcntl.flock``, one lock per CPU).

Locally one run owns the machine and pins each worker to the first N CPUs. On a cluster several Dask worker
processes may share one host (two ``rnnbench worker`` on one machine, or correctness cases side by side in
one worker), and pinning each of them to "the first N" would stack them all on CPU 0. So before a case runs,
its worker takes a *lease* on N CPUs of the host: an exclusive ``flock`` on one file per CPU in a private
directory (:func:`lock_dir`). The kernel drops a lock when its holder dies, so a killed worker never leaves a
stale one. A case that asks for every CPU waits until the host's other cases have finished: a timing case
gets the host to itself even when other rnnbench workers run there.

Deadlock-free by ordering: a lease of one CPU takes any free one and never waits while holding; a lease of
more takes them in ascending order, holding what it has while it waits for the next.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
import time
from typing import List, Optional, Sequence

from harness.core.errors import InputError
from harness.core.system import allowed_cpus

#: Environment variable that moves the lock directory (tests; hosts whose /tmp is not local).
LOCK_DIR_ENV = "RNNBENCH_CPU_LOCK_DIR"
#: Seconds between tries while the CPUs a lease needs are held by other cases.
POLL_S = 0.05


class LeaseTimeout(TimeoutError):
    """The CPUs stayed busy for longer than the caller would wait."""


def lock_dir() -> str:
    """The directory of the per-CPU lock files: ``$RNNBENCH_CPU_LOCK_DIR``, else ``<tmp>/rnnbench-cpus-<uid>``,
    created private (0700) and refused if it is not a directory of this user's (a planted link, say)."""
    path = os.environ.get(LOCK_DIR_ENV) or os.path.join(tempfile.gettempdir(), f"rnnbench-cpus-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise InputError(f"CPU lock directory {path!r} is not a directory owned by this user; set "
                         f"{LOCK_DIR_ENV} to a private directory")
    return path


class CpuLease:
    """CPUs held for one case; :meth:`release` (or the holder's death) gives them back."""

    def __init__(self, cpus: Sequence[int], fds: Sequence[int]) -> None:
        self.cpus: List[int] = sorted(cpus)
        self._fds = list(fds)

    def release(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)  # closing the only descriptor drops its flock
            except OSError:
                pass
        self._fds = []

    def text(self) -> str:
        """``"0,1"``: the CPUs, for a row's extra."""
        return ",".join(str(c) for c in self.cpus)

    def __enter__(self) -> "CpuLease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(directory: str, cpu: int) -> Optional[int]:
    fd = os.open(os.path.join(directory, f"cpu{cpu}.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def acquire(n: int, timeout_s: float, cpus: Optional[Sequence[int]] = None) -> CpuLease:
    """A lease on ``n`` of ``cpus`` (default: those this process may use; ``n`` above their number is capped to
    all of them), waiting up to ``timeout_s`` seconds for them; :class:`LeaseTimeout` after that."""
    pool = sorted(allowed_cpus() if cpus is None else cpus)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"CPU lease: got n={n!r}; expected an integer >= 1")
    n = min(n, len(pool))
    directory = lock_dir()
    deadline = time.monotonic() + timeout_s
    held: List[tuple] = []
    try:
        while True:
            if n == 1:
                for c in pool:
                    fd = _try_lock(directory, c)
                    if fd is not None:
                        return CpuLease([c], [fd])
            else:
                for c in pool[len(held):]:  # ascending; keep what is held while waiting for the next
                    fd = _try_lock(directory, c)
                    if fd is None:
                        break
                    held.append((c, fd))
                if len(held) == n:
                    lease = CpuLease([c for c, _ in held], [fd for _, fd in held])
                    held = []
                    return lease
            if time.monotonic() > deadline:
                raise LeaseTimeout(f"{n} CPU(s) of this host stayed busy for {timeout_s:g} s (other rnnbench cases "
                                   f"on this host hold them; lock files in {directory})")
            time.sleep(POLL_S)
    finally:
        for _, fd in held:
            os.close(fd)


def pin_process(pid: int, cpus: Sequence[int]) -> None:
    """Move every thread of process ``pid`` onto ``cpus`` (a process's thread pools keep the mask they were
    created with, so the process alone is not enough). Threads that end meanwhile are skipped."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:  # pragma: no cover - non-Linux, or the process is gone
        tids = [str(pid)]
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), list(cpus))
        except (OSError, ValueError):
            pass
