"""The per-case worker process: the parent side (:class:`_Worker`) and the child's loop (:func:`_worker_main`).

A worker receives cases over a pipe, runs each through its suite, and streams every row back, each one
acknowledged before the next is measured, so that a row is on disk before the case goes on. A case that raises
becomes a ``fail`` message (``error``, or ``oom`` for an out-of-memory error); a worker that dies or overruns the
per-case time limit is reported by the parent as ``died`` or ``timeout``. The local runner keeps one worker per
backend family and round; a cluster task (:mod:`harness.run.cluster`) takes one from its Dask worker's pool
(:mod:`harness.run.worker_pool`).
"""
from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import traceback
from typing import Any, Dict, Tuple

from harness.core.errors import InputTypeError

#: Seconds a fresh worker may take to start (interpreter + imports) before it counts as failed.
WORKER_START_TIMEOUT_S = 120.0
#: Lines of traceback kept in an error row's extra.
TRACEBACK_LINES = 12


def _looks_like_oom(e: BaseException) -> bool:
    """MemoryError, torch.cuda.OutOfMemoryError, XLA RESOURCE_EXHAUSTED and the like."""
    if isinstance(e, MemoryError):
        return True
    text = f"{type(e).__name__} {e}".lower()
    return "outofmemory" in text or "out of memory" in text or "resource_exhausted" in text


def _watch_parent(parent_pid: int) -> None:
    """Worker side: exit at once if the parent disappears (SIGKILL of the run) instead of running on."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(70)


def _worker_main(conn, ctx, threads: int, parent_pid: int) -> None:
    """Entry point of a worker process: receive cases, run them, stream rows back (each acknowledged)."""
    # Ctrl-C goes to the whole process group; the parent decides what happens, the worker must not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from harness.measure import threads as th
    th.apply_in_worker(threads)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    conn.send(("ready", os.getpid()))
    suites: Dict[Tuple[str, str], Any] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "case":
            return
        _, module, attr, case, *rest = msg
        cctx = rest[0] if rest and rest[0] is not None else ctx  # a pooled cluster worker gets each case's own
        try:
            suite = suites.get((module, attr))
            if suite is None:
                suite = suites[(module, attr)] = getattr(importlib.import_module(module), attr)
            # The registry's one instance per backend and process, threads set once: the settings are
            # process-wide (torch.set_num_threads, threadpoolctl) and the suites use the same instance.
            from implementations import registry
            registry.instance(case.backend, case.device, threads)
            for row in suite.run(case, cctx):
                if not isinstance(row, dict):
                    raise InputTypeError(f"suite {suite.name!r} yielded {type(row).__name__}; expected a row dict")
                conn.send(("row", row))
                if conn.recv() != "ack":
                    return
            conn.send(("done",))
        except BaseException as e:  # noqa: BLE001 - every failure of a case becomes a row
            status = "oom" if _looks_like_oom(e) else "error"
            tb = traceback.format_exception(type(e), e, e.__traceback__)
            tail = "".join(tb).rstrip().splitlines()[-TRACEBACK_LINES:]
            message = f"{type(e).__name__}: {e}"
            del e, tb
            try:
                conn.send(("fail", status, message, tail))
            except Exception:
                os._exit(71)


class _WorkerLost(Exception):
    """The worker process ended (or never started) unexpectedly."""


class _Worker:
    """Parent side of one worker process."""

    def __init__(self, mp, ctx, threads: int) -> None:
        self._parent, child = mp.Pipe()
        self.proc = mp.Process(target=_worker_main, args=(child, ctx, threads, os.getpid()),
                               name="rnnbench-worker")
        self.proc.start()
        child.close()  # so that the worker's death reads as EOF here
        if not self._parent.poll(WORKER_START_TIMEOUT_S):
            self.kill()
            raise _WorkerLost(f"worker did not start within {WORKER_START_TIMEOUT_S:g} s")
        try:
            msg = self._parent.recv()
        except (EOFError, OSError):
            raise _WorkerLost(f"worker failed to start ({self.exit_desc()})") from None
        if msg[0] != "ready":
            self.kill()
            raise _WorkerLost(f"worker sent {msg[0]!r} instead of 'ready'")

    def exit_desc(self) -> str:
        self.proc.join(5)
        code = self.proc.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (possibly the kernel's out-of-memory killer)" if -code == signal.SIGKILL else ""
            return f"signal {name}, exit code {code}{hint}"
        return f"exit code {code}"

    def run_case(self, module: str, attr: str, case, timeout_s: float, on_row, ctx=None) -> Tuple[str, str, list]:
        """Run one case (with ``ctx``, default the worker's own). ``on_row(row)`` is called (and returns) before
        the worker may go on.

        Returns ``(outcome, reason, traceback_tail)`` with outcome ``done``, ``fail-error``, ``fail-oom``,
        ``timeout`` or ``died``; after ``timeout`` and ``died`` the worker is gone.
        """
        conn = self._parent
        try:
            conn.send(("case", module, attr, case, ctx))
        except (BrokenPipeError, OSError):
            return "died", f"worker process died before the case ({self.exit_desc()})", []
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                return "timeout", f"exceeded the per-case time limit of {timeout_s:g} s (worker killed)", []
            if not conn.poll(0):
                multiprocessing.connection.wait([conn, self.proc.sentinel], timeout=min(remaining, 1.0))
                if not conn.poll(0):
                    if not self.proc.is_alive():
                        return "died", f"worker process died while running the case ({self.exit_desc()})", []
                    continue
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return "died", f"worker process died while running the case ({self.exit_desc()})", []
            if msg[0] == "row":
                on_row(msg[1])
                try:
                    conn.send("ack")
                except (BrokenPipeError, OSError):
                    return "died", f"worker process died while running the case ({self.exit_desc()})", []
            elif msg[0] == "done":
                return "done", "", []
            elif msg[0] == "fail":
                _, status, message, tail = msg
                return f"fail-{status}", message, tail

    def stop(self) -> None:
        try:
            self._parent.send(("stop",))
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.kill()
        self._parent.close()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
