"""A Dask cluster on 127.0.0.1 as separate processes: a ``dask scheduler`` and ``n`` ``rnnbench worker``s.

What a user starts by hand, started for the cluster tests and for measuring the cluster's overhead
(``python -m harness.run.loopback --help``). Free ports (the scheduler writes its address to a scheduler file),
bounded start-up time, and every process (and its children) stopped by :meth:`LoopbackCluster.close`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

#: Seconds the scheduler and the workers may take to come up.
START_TIMEOUT_S = 60.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return {**env, **(extra or {})}


class LoopbackCluster:
    """A scheduler and ``n`` rnnbench workers of ``nthreads`` each on 127.0.0.1; logs in ``logs``."""

    def __init__(self, logs: str, n: int = 2, nthreads: int = 1, env: Optional[Dict[str, str]] = None) -> None:
        self.logs = str(logs)
        self.sched_file = os.path.join(self.logs, "scheduler.json")
        self.procs: List[subprocess.Popen] = []
        self.sched = self.spawn([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                 "--port", "0", "--no-dashboard", "--scheduler-file", self.sched_file], "scheduler")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(self.sched_file):
            if time.monotonic() > deadline or self.sched.poll() is not None:
                self.close()
                raise RuntimeError("the Dask scheduler did not start:\n" + self.log_tail("scheduler"))
            time.sleep(0.2)
        self.workers = [self.add_worker(nthreads, f"w{i}", env) for i in range(n)]
        while self.ready_workers() < n:
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the rnnbench workers did not join:\n" + self.log_tail("w0"))
            time.sleep(0.3)

    def log_tail(self, name: str, chars: int = 2000) -> str:
        try:
            with open(os.path.join(self.logs, f"{name}.log")) as f:
                return f.read()[-chars:]
        except OSError:
            return ""

    def ready_workers(self) -> int:
        """Workers that declare rnnbench's host resource."""
        from distributed import Client

        from harness.run import cluster as cl
        with Client(scheduler_file=self.sched_file, timeout="10s") as c:
            info = c.scheduler_info()["workers"].values()
            return sum(cl.HOST_RESOURCE in (w.get("resources") or {}) for w in info)

    def spawn(self, cmd: List[str], name: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        """Start ``cmd`` in its own session (so that close() stops its children too), output to ``name.log``."""
        with open(os.path.join(self.logs, f"{name}.log"), "w") as log:
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(env), cwd=ROOT,
                                 start_new_session=True)
        self.procs.append(p)
        return p

    def add_worker(self, nthreads: int, name: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        return self.spawn([sys.executable, "-m", "harness", "worker", self.sched_file, "--nthreads", str(nthreads),
                           "--name", name], name, env)

    def close(self) -> None:
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)

    def __enter__(self) -> "LoopbackCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def task_overhead(sched_file: str, tasks: int = 10) -> Dict[str, float]:
    """Seconds from submitting a task to its first row, for the smallest CTC case (NumPy, a few milliseconds of
    work): ``cold`` (each task alone in its own run: a fresh per-case worker that imports NumPy and the suite),
    and ``warm`` (``tasks`` tasks in one run, so each reuses the pooled worker: wall time per task)."""
    import statistics

    from harness.run import cluster as cl
    from suites.base import RunContext
    from suites.ctc import suite as ctc

    case = min(ctc.SUITE.cases("smoke", ["numpy"]), key=lambda c: (c.seq_len or 0) * (c.batch or 0))
    client = cl.connect(sched_file)
    try:
        def task() -> cl.Task:
            return cl.Task(case, ctc.__name__, "SUITE", 0, 1, RunContext(preset="smoke"), 60.0, False, 1)

        cold = []
        for _ in range(tasks):
            first: List[float] = []
            t0 = time.monotonic()
            cl.run_tasks(client, [task()], 1, lambda *a: first.append(time.monotonic()), lambda *a: None)
            cold.append(first[0] - t0)
        t0 = time.monotonic()
        cl.run_tasks(client, [task() for _ in range(tasks)], 1, lambda *a: None, lambda *a: None)
        warm = (time.monotonic() - t0) / tasks
    finally:
        client.close()
    return {"case": case.key, "cold_median_s": statistics.median(cold), "cold_min_s": min(cold),
            "cold_max_s": max(cold), "warm_per_task_s": warm, "tasks": tasks}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.run.loopback",
                                 description="Start a loopback Dask cluster (a scheduler and rnnbench workers on "
                                             "127.0.0.1) and measure one task's overhead on it: seconds from "
                                             "submitting a case to its first row. Prints JSON.")
    ap.add_argument("--workers", type=int, default=1, help="rnnbench workers, one thread each (default 1)")
    ap.add_argument("--tasks", type=int, default=10, help="tasks measured each way (default 10)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rnnbench-loopback-") as tmp:
        with LoopbackCluster(tmp, n=args.workers) as c:
            print(json.dumps(task_overhead(c.sched_file, args.tasks), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
