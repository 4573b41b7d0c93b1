"""``rnnbench run ... --cluster ADDRESS``: the cases of a run as Dask tasks on a Dask distributed cluster.

The client (``rnnbench run``) builds the cases as for a local run and submits each case-process as one task.
A task runs on some Dask worker's host, in a per-case worker process of the local runner
(:class:`harness.run.worker._Worker`: the same per-case timeout and the same crash and out-of-memory recording),
reused across the run's cases of one family as locally (:mod:`harness.run.worker_pool`), on CPUs leased for it
on that host (:mod:`harness.run.cpu_lease`: cases side by side on one host never stack on the same CPUs), and
sends each row to the client the moment it is measured (a Dask event on the run's topic); its result
repeats every row, so a row an event lost still arrives. The client appends the rows to the one run directory
through the same crash-safe writer, stamps each with where it ran (``host``, ``host_cpu``, ``host_gpu``,
``host_versions``, ``cluster_worker``, ``shared``) and lists every host in ``meta.json`` (``hosts``).

Which cases may share a host: a suite says per case (:meth:`suites.base.Suite.exclusive`). Every worker that
``rnnbench worker`` starts declares the resource :data:`HOST_RESOURCE` = 1. An exclusive case (one that times)
requests all of it, so nothing else runs on that worker meanwhile; a correctness case requests
:data:`SHARE` of it, so several run side by side (as many as the worker has threads) and say so (``shared``).

Faults:

- a worker killed mid-case: Dask gives the task to another worker; its rows are a new *attempt* of the case
  (the loader keeps the last attempt of each case), so nothing is duplicated and nothing lost. A case that
  keeps killing its workers ends as an ``error`` row;
- the client killed: the rows written so far stay; ``rnnbench run --resume --cluster ADDRESS`` submits only the
  case-processes without a done-marker;
- the scheduler unreachable at the start, or gone during the run: :class:`ClusterError` (exit 2), the rows
  written so far valid;
- a host that lacks a backend: that case is ``skipped`` with that host's reason.
"""
from __future__ import annotations

import functools
import json
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from harness.core.errors import UsageError

#: The worker resource that stands for a whole host (or one GPU): ``rnnbench worker`` declares 1 of it.
HOST_RESOURCE = "rnnbench-host"
#: What a case that may share its host requests of :data:`HOST_RESOURCE` (a power of two: sums stay exact, so a
#: worker whose shared cases have all finished has exactly 1 free again for an exclusive one).
SHARE = 1.0 / 64
#: Seconds to reach the scheduler, and to wait for the first worker that can run rnnbench's cases.
CONNECT_TIMEOUT_S = 20.0
WORKERS_TIMEOUT_S = 60.0
#: Seconds between the client's checks for new rows and finished tasks.
POLL_S = 0.2
#: Seconds the client may be without its scheduler (reconnecting) before the run stops.
LOST_TIMEOUT_S = 30.0


class ClusterError(UsageError):
    """The cluster cannot be used (scheduler unreachable or gone, no suitable worker): exit 2, one line."""


@dataclass
class Task:
    """One case-process to run on the cluster, and what the client needs to record it."""

    case: Any
    module: str
    attr: str
    process: int
    processes: int
    ctx: Any
    timeout_s: float
    exclusive: bool
    first_attempt: int  # the attempt number of this task's first execution


def _require_distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError("--cluster needs Dask distributed (pip install 'rnnbench[cluster]', or "
                           "pip install distributed)") from None
    return distributed


@functools.lru_cache(maxsize=1)
def host_info() -> Dict[str, Any]:
    """Where a task runs: the host's machine (CPU, cores, GPU, ...) and package versions. Once per Dask worker
    process (it asks nvidia-smi and reads package metadata; neither changes while the worker lives)."""
    from harness.measure.records import machine_info, package_versions
    return {"machine": machine_info(), "versions": package_versions()}


def _versions_text(versions: Dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((versions or {}).items()) if v and k != "numpy_blas")


#: Spawning a worker reads this process's environment (the thread settings): one spawn at a time.
_SPAWN_LOCK = threading.Lock()


def _spawn_worker(ctx, threads: int):
    """A fresh per-case worker with ``threads``' environment (set only while it starts: tasks run in threads)."""
    import multiprocessing

    from harness.measure import threads as th
    from harness.run.worker import _Worker
    with _SPAWN_LOCK:
        old = th.set_process_env(threads)
        try:
            return _Worker(multiprocessing.get_context("spawn"), ctx, threads)
        finally:
            th.restore_env(old)


def run_task(module: str, attr: str, case, ctx, threads: int, timeout_s: float, topic: str, token: str,
             exclusive: bool = True) -> Dict[str, Any]:
    """Runs **on a Dask worker**: one case-process in a per-case worker process (an idle one of the same run,
    family, threads and slot from :mod:`harness.run.worker_pool`, else a fresh one), on CPUs leased for it on
    this host (:mod:`harness.run.cpu_lease`, CPU cases only). Each row is sent to the client on ``topic`` as it
    is measured, tagged with the task's ``token`` and this execution's id. Returns the execution's id, its
    host, outcome and every row (JSON)."""
    from distributed import get_worker

    from harness.measure.records import _jsonable
    from harness.run import cpu_lease, worker_pool
    from harness.run.worker import _WorkerLost

    dask_worker = get_worker()
    exec_id = uuid.uuid4().hex
    host = host_info()
    rows: List[str] = []
    extra: Dict[str, Any] = {}

    def send(kind: str, **payload: Any) -> None:
        try:
            dask_worker.log_event(topic, {"kind": kind, "task": token, "exec": exec_id, **payload})
        except Exception:  # noqa: BLE001 - the result carries every row anyway
            pass

    send("start", host=host, worker=dask_worker.address)

    def on_row(row: Dict[str, Any]) -> None:
        if extra:
            row = {**row, "extra": {**(row.get("extra") or {}), **extra}}
        text = json.dumps(_jsonable(row), allow_nan=True)
        rows.append(text)
        send("row", seq=len(rows) - 1, row=text)

    def result(outcome: str, reason: str = "", tail=()) -> Dict[str, Any]:
        return {"exec": exec_id, "host": host, "worker": dask_worker.address, "outcome": outcome,
                "reason": reason, "tail": list(tail), "rows": rows}

    from implementations import registry
    info = registry.describe(case.backend, case.device)
    if not info.available:
        on_row(case.row("status", None, "", status="skipped",
                        reason=f"on host {host['machine'].get('hostname')}: {info.reason}"))
        return result("done")
    lease = None
    if case.device == "cpu":  # a GPU case's time is the GPU's: it does not take the host's CPUs
        try:  # a timing case takes its threads' worth of CPUs, a correctness case one: several share the host
            lease = cpu_lease.acquire(threads if exclusive else 1, timeout_s)
        except cpu_lease.LeaseTimeout as e:
            return result("fail-error", str(e))
        extra["host_cpus"] = lease.text()
    key = (topic, info.family or case.backend, threads, ctx.process if exclusive else "shared")
    worker = worker_pool.take(key)
    try:
        if worker is None:
            try:
                worker = _spawn_worker(ctx, threads)
            except _WorkerLost as e:
                return result("died", str(e))
        if lease is not None:
            cpu_lease.pin_process(worker.proc.pid, lease.cpus)
        outcome, reason, tail = worker.run_case(module, attr, case, timeout_s, on_row, ctx=ctx)
        if outcome not in ("timeout", "died") and worker.proc.is_alive():
            worker_pool.give(key, worker)
        elif worker.proc.is_alive():
            worker.kill()
        worker = None
        return result(outcome, reason, tail)
    finally:
        if worker is not None:  # an exception on the way: never leave the process behind
            worker.kill()
        if lease is not None:
            lease.release()


def release_run(topic: str) -> int:
    """On every Dask worker at the end of a run: stop the run's idle per-case workers."""
    from harness.run import worker_pool
    return worker_pool.release_run(topic)


def check_address(address: str) -> str:
    """``--cluster``: a Dask scheduler address (``tcp://host:port``, ``host:port``, or a scheduler file)."""
    if not isinstance(address, str) or not address.strip():
        raise ClusterError(f"--cluster: got {address!r}; expected a Dask scheduler address such as "
                           "tcp://10.0.0.5:8786")
    return address.strip()


def connect(address: str, timeout_s: Optional[float] = None, workers_timeout_s: Optional[float] = None):
    """A :class:`distributed.Client` of the scheduler at ``address``, with at least one worker that declares
    :data:`HOST_RESOURCE`; :class:`ClusterError` otherwise (defaults: :data:`CONNECT_TIMEOUT_S`,
    :data:`WORKERS_TIMEOUT_S`)."""
    distributed = _require_distributed()
    address = check_address(address)
    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    workers_timeout_s = WORKERS_TIMEOUT_S if workers_timeout_s is None else workers_timeout_s
    kw = {"scheduler_file": address} if os.path.isfile(address) else {"address": address}
    try:
        client = distributed.Client(timeout=f"{timeout_s:g}s", set_as_default=False, **kw)
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"--cluster {address}: cannot reach the Dask scheduler within {timeout_s:g} s "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    deadline = time.monotonic() + workers_timeout_s
    while True:
        workers = client.scheduler_info().get("workers", {})
        fit = [w for w in workers.values() if HOST_RESOURCE in (w.get("resources") or {})]
        if fit:
            return client
        if time.monotonic() > deadline:
            n = len(workers)
            client.close()
            raise ClusterError(f"--cluster {address}: " + (f"none of its {n} worker(s) declares the resource "
                               f"{HOST_RESOURCE!r}: start them with `rnnbench worker {address}` (or `dask worker "
                               f"{address} --resources {HOST_RESOURCE}=1`)" if n else
                               f"no worker joined within {workers_timeout_s:g} s: start one with "
                               f"`rnnbench worker {address}`"))
        time.sleep(0.5)


class _Exec:
    """The client's view of one execution of a task (a task killed with its worker runs again: a new one)."""

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.written: set = set()
        self.host: Optional[Dict[str, Any]] = None
        self.worker: Optional[str] = None


def run_tasks(client, tasks: Sequence[Task], threads: int,
              on_row: Callable[[Task, int, Dict[str, Any], Dict[str, Any]], None],
              on_done: Callable[[Task, int, str, str, list, Dict[str, Any]], None],
              on_start: Optional[Callable[[Task], None]] = None) -> Dict[str, Dict[str, Any]]:
    """Submit every task, write rows as they stream in, and call ``on_done`` once per task as it finishes
    (``on_start(task)`` when an execution of it starts on a worker).

    ``on_row(task, attempt, row, where)`` and ``on_done(task, attempt, outcome, reason, tail, where)`` run in this
    thread, in the order things arrived; ``where`` holds ``host`` (hostname), ``host_cpu``, ``host_gpu``,
    ``host_versions``, ``cluster_worker`` and ``shared``. Returns ``{hostname: host_info}`` of every host seen.
    Raises :class:`ClusterError` when the scheduler goes away (what was written stays valid)."""
    _require_distributed()
    topic = f"rnnbench-{uuid.uuid4().hex}"
    inbox: "queue.Queue[Dict[str, Any]]" = queue.Queue()
    client.subscribe_topic(topic, lambda event: inbox.put(event[1] if isinstance(event, tuple) else event))
    futures: Dict[Any, Task] = {}
    tokens: Dict[str, Task] = {}
    for t in tasks:
        token = uuid.uuid4().hex
        tokens[token] = t
        res = {HOST_RESOURCE: 1.0 if t.exclusive else SHARE}
        f = client.submit(run_task, t.module, t.attr, t.case, t.ctx, threads, t.timeout_s, topic, token,
                          t.exclusive, resources=res, pure=False, key=f"rnnbench-{t.case.key}#p{t.process}-{token[:8]}")
        futures[f] = t
    execs: Dict[str, _Exec] = {}
    seen_of: Dict[int, int] = {}  # id(task) -> executions seen so far
    hosts: Dict[str, Dict[str, Any]] = {}
    finished: set = set()  # executions whose result has been taken: their late events are ignored

    def ex_of(exec_id: str, task: Task) -> _Exec:
        if exec_id not in execs:
            n = seen_of.get(id(task), 0)
            seen_of[id(task)] = n + 1
            execs[exec_id] = _Exec(task.first_attempt + n)
        return execs[exec_id]

    def where(e: _Exec, task: Task) -> Dict[str, Any]:
        m = (e.host or {}).get("machine") or {}
        return {"host": m.get("hostname"), "host_cpu": m.get("cpu"), "host_gpu": m.get("gpu_name"),
                "host_versions": _versions_text((e.host or {}).get("versions") or {}),
                "cluster_worker": e.worker, "shared": not task.exclusive}

    def note_host(e: _Exec, host: Optional[Dict[str, Any]], worker: Optional[str]) -> None:
        if isinstance(host, dict) and e.host is None:
            e.host, e.worker = host, worker
            hosts.setdefault(str((host.get("machine") or {}).get("hostname")), host)

    def drain() -> None:
        while True:
            try:
                msg = inbox.get_nowait()
            except queue.Empty:
                return
            if not isinstance(msg, dict) or msg.get("exec") in finished or msg.get("task") not in tokens:
                continue
            task = tokens[msg["task"]]
            e = ex_of(str(msg.get("exec")), task)
            if msg.get("kind") == "start":
                note_host(e, msg.get("host"), msg.get("worker"))
                if on_start is not None:
                    on_start(task)
            elif msg.get("kind") == "row" and msg.get("seq") not in e.written:
                e.written.add(msg.get("seq"))
                on_row(task, e.attempt, json.loads(msg["row"]), where(e, task))

    try:
        pending = list(futures)
        lost_since: Optional[float] = None
        while pending:
            drain()
            batch = [f for f in pending if f.done()]
            pending = [f for f in pending if f not in set(batch)]
            if not batch:
                if client.status == "running":
                    lost_since = None
                elif lost_since is None:
                    lost_since = time.monotonic()
                elif time.monotonic() - lost_since > LOST_TIMEOUT_S or client.status in ("closing", "closed"):
                    raise ClusterError(f"the Dask scheduler went away during the run (client {client.status} for "
                                       f"{time.monotonic() - lost_since:.0f} s)")
                time.sleep(POLL_S)
                continue
            for f in batch:
                task = futures[f]
                try:
                    res = f.result()
                except Exception as exc:  # noqa: BLE001 - a task that failed on the cluster (KilledWorker, ...)
                    if client.status != "running":
                        raise ClusterError("the Dask scheduler went away during the run") from None
                    drain()
                    e = _Exec(task.first_attempt + seen_of.get(id(task), 0))
                    on_done(task, e.attempt, "died", f"the cluster gave up on the case: {type(exc).__name__}: "
                                                     f"{exc}"[:400], [], where(e, task))
                    continue
                drain()  # rows still queued for this execution come first
                e = ex_of(str(res["exec"]), task)
                note_host(e, res.get("host"), res.get("worker"))
                for i, text in enumerate(res.get("rows") or []):
                    if i not in e.written:
                        e.written.add(i)
                        on_row(task, e.attempt, json.loads(text), where(e, task))
                finished.add(res["exec"])
                on_done(task, e.attempt, res["outcome"], res.get("reason", ""), res.get("tail") or [], where(e, task))
    finally:
        try:
            client.unsubscribe_topic(topic)
            client.run(release_run, topic, wait=False)
        except Exception:  # noqa: BLE001 - a gone scheduler: nothing to unsubscribe from (idle workers expire)
            pass
    return hosts
