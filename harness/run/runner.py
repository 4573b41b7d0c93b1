"""Run suites' cases with isolation, timeouts, progress and resume: the engine of ``rnnbench run``.

- Cases come from ``suite.cases(preset, backends, device)``; those of a backend that cannot run here become
  one ``skipped`` row each (with the probe's reason) and nothing is run for them.
- Isolation: the cases of one backend family run in one worker process (``multiprocessing`` *spawn*: CUDA
  and JAX are not fork-safe). The worker runs ``suite.run(case, ctx)`` and sends each row as soon as it is
  yielded; the parent writes it (flushed, fsynced) and only then lets the worker go on. A case that exceeds
  its time limit gets the worker killed and a ``timeout`` row; a worker that dies (segfault, ``os._exit``)
  gives an ``error`` row with the exit code or signal; a ``MemoryError`` (or a device out-of-memory error)
  an ``oom`` row; any other exception an ``error`` row ``Type: message`` with the traceback's last lines in
  ``extra``. Then the run goes on, with a fresh worker where the old one was lost.
- Resume: finished cases (those with a done-marker in ``rows.jsonl``) are skipped; the others are re-run with
  ``attempt + 1``, and :func:`harness.measure.records.load` keeps only the latest attempt of each case.
- One run per directory: ``DIR/.lock`` is held with ``fcntl.flock`` for the whole run and holds the owner's pid;
  a second run refuses and names it; the kernel drops a killed run's lock, so none is ever stale.
- Ctrl-C (or SIGTERM) kills the worker, keeps everything written, prints how to resume; exit code 130.

Processes: a suite that times things declares ``processes`` (a number, or a dict preset -> number); each of
its cases then runs in that many independent worker processes, one per *round*: round 0 runs every case once,
round 1 runs them all again in fresh workers, and so on (asv's ``--interleave-processes``), so that the
variation between processes, and slow drifts of the machine, show up as a spread ``compare`` can judge. Round
``k`` starts at the k-th case of each family (a rotation), so the first case of a fresh worker is a different one
in every round.
``--processes N`` overrides every suite. Round ``k > 0`` of a case has its own done-marker
(``case_key#pK``) and rows with ``process`` and ``processes`` in ``extra``; :func:`harness.measure.records.load`
merges the processes of a measurement back into one row.

Per-case time limit (seconds): ``--timeout`` if given, else ``case.settings["timeout_s"]``, else the suite's
``timeout_s`` attribute (a number, or a dict preset -> number), else :data:`DEFAULT_TIMEOUT_S` by preset.
"""
from __future__ import annotations

import collections
import datetime as _dt
import importlib
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from harness.core.errors import UsageError
from harness.measure import safe_files
from harness.run.worker import (TRACEBACK_LINES, WORKER_START_TIMEOUT_S, _Worker, _WorkerLost,  # noqa: F401
                                 _looks_like_oom, _worker_main)
from harness.measure.records import (LOCK_FILE, ROWS_FILE, RowWriter, RunStopped, collect_meta, merge_processes,
                                    portable_argv, read_meta, scan, write_meta)

#: Per-case time limit (seconds) by preset when neither --timeout, the case nor the suite says otherwise.
DEFAULT_TIMEOUT_S = {"smoke": 300.0, "quick": 900.0, "full": 3600.0}
FALLBACK_TIMEOUT_S = 1800.0
DEFAULT_PRESET = "quick"
#: More processes than this per case is a typo, not a plan.
MAX_PROCESSES = 50
DEFAULT_SEED = 0


# -- names ---------------------------------------------------------------------------------------------

def resolve_suite(name: str) -> Tuple[str, str, Any]:
    """(module, attribute, suite object) for a suite name, or for ``module:ATTR`` naming a plug-in suite."""
    from suites import base

    if ":" in name:
        module, attr = name.split(":", 1)
        if not module or not attr or module.startswith(".") or not all(p.isidentifier() for p in module.split(".")):
            raise UsageError(f"suite: got {name!r}; a plug-in suite is module:ATTR with an absolute module path")
    elif name in base.SUITE_MODULES:
        module, attr = base.SUITE_MODULES[name], "SUITE"
    else:
        present = base.existing_suites()
        raise UsageError(f"suite: got {name!r}; allowed: {', '.join(present) or '(none present)'} "
                         "or module:ATTR")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if ":" not in name and e.name == module:
            raise UsageError(f"suite {name!r} is not present in this tree (present: "
                             f"{', '.join(base.existing_suites()) or 'none'})") from None
        raise UsageError(f"suite {name!r}: cannot import {module!r}: {e}") from None
    suite = getattr(mod, attr, None)
    if suite is None or not (hasattr(suite, "cases") and hasattr(suite, "run")):
        raise UsageError(f"suite {name!r}: {module}:{attr} is not a suite (needs cases() and run())")
    return module, attr, suite


def check_backends(names: Sequence[str]) -> List[str]:
    """The backend names, validated: registry names (built-ins, entry points) or ``module:Class`` plug-ins.

    A ``module:Class`` whose module or class does not exist is a usage error (a typo must not become a run of
    skipped rows that exits 0); a plug-in that exists but cannot run here is recorded ``skipped`` with why."""
    from implementations import registry as reg

    allowed = reg.names()
    out = []
    for b in names:
        if not isinstance(b, str) or not b or (b not in allowed and ":" not in b):
            raise UsageError(f"--backend: got {b!r}; allowed: {', '.join(allowed)} or module:Class")
        if ":" in b and b not in allowed:
            problem = reg.resolution_problem(b)
            if problem:
                raise UsageError(f"--backend {b!r}: {problem}")
        if b not in out:
            out.append(b)
    return out


def case_processes(suite, preset: str, override: Optional[int]) -> int:
    """How many independent processes time each case of ``suite`` (``--processes``, else the suite's, else 1)."""
    if override is not None:
        return int(override)
    p = getattr(suite, "processes", None)
    if isinstance(p, dict):
        p = p.get(preset)
    return int(p) if isinstance(p, int) and not isinstance(p, bool) and p >= 1 else 1


def process_key(case_key: str, process: int) -> str:
    """The done-marker key of round ``process`` of a case (round 0 keeps the case's own key)."""
    return case_key if process == 0 else f"{case_key}#p{process}"


def case_timeout(case, suite, preset: str, override: Optional[float]) -> float:
    """The per-case time limit in seconds (see the module docstring for the order)."""
    if override is not None:
        return float(override)
    t = (case.settings or {}).get("timeout_s")
    if t is None:
        t = getattr(suite, "timeout_s", None)
        if isinstance(t, dict):
            t = t.get(preset)
    if t is None:
        t = DEFAULT_TIMEOUT_S.get(preset, FALLBACK_TIMEOUT_S)
    return float(t)


# -- the run directory and its lock --------------------------------------------------------------------

def _utc_stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def default_out(preset: str) -> str:
    return os.path.join("results", "runs", f"{_utc_stamp()}-{preset}")


def prepare_out(out: str) -> str:
    """Create ``out`` if needed; UsageError if it is a file or cannot be written."""
    return safe_files.ensure_out_dir(out, "--out")


class RunLock:
    """``DIR/.lock`` held with a kernel lock (``fcntl.flock``) for the whole run: two runs can never both hold it,
    and a killed run's lock goes with its process (the kernel drops it), so nothing is ever stale. The file
    holds the owner's pid, for the message a second run gets."""

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd

    def __fspath__(self) -> str:  # callers that want the path (tests, messages)
        return self.path

    def __str__(self) -> str:
        return self.path


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def acquire_lock(run_dir: str, log=print) -> RunLock:
    """Take ``run_dir/.lock`` (see :class:`RunLock`); UsageError naming the owner's pid when a run holds it."""
    import fcntl

    path = os.path.join(run_dir, LOCK_FILE)
    for _ in range(10):
        safe_files.check_target(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise UsageError(f"cannot open the lock {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _read_pid(fd)
            os.close(fd)
            raise UsageError(f"run directory in use by {'pid ' + str(pid) if pid else 'another run'} ({path}); "
                             "wait for it or choose another --out") from None
        # The lock holds the inode we opened; a run that just released it may have unlinked that inode (and a
        # third may hold a new one): only a lock on the file that is at the path now counts.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if not same:
            os.close(fd)
            continue
        old = _read_pid(fd)
        if old and old != os.getpid():
            log(f"taking over the stale lock of pid {old} (no longer running): {path}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return RunLock(path, fd)
    raise UsageError(f"could not lock {path}: other runs keep taking it")


def release_lock(lock: RunLock) -> None:
    """Remove the lock file and drop the kernel lock (unlink first: a run waiting for it then sees a new file)."""
    import fcntl

    try:
        os.unlink(lock.path)
    except OSError:
        pass
    try:
        fcntl.flock(lock.fd, fcntl.LOCK_UN)
        os.close(lock.fd)
    except OSError:
        pass


# -- progress ------------------------------------------------------------------------------------------

class _Progress:
    """A tqdm bar on stderr (case name, ETA), or one plain line per finished case."""

    def __init__(self, total: int, bar: bool) -> None:
        self.total, self.i, self.t0 = total, 0, time.monotonic()
        self.bar = None
        if bar and total:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, file=sys.stderr, unit="case", dynamic_ncols=True, leave=True)
            except ImportError:
                self.bar = None

    def start(self, case, label: str = "") -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"{case.suite}/{case.backend} {case.name}{label}"[:60])

    def finish(self, case, status: str, nrows: int, secs: float, reason: str = "", label: str = "") -> None:
        self.i += 1
        if self.bar is not None:
            self.bar.update(1)
            if status not in ("ok", "skipped", "limit"):
                self.bar.write(f"{case.key}{label}: {status}: {reason}"[:300], file=sys.stderr)
            return
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.i * (self.total - self.i)
        tail = f": {reason}" if reason and status not in ("ok", "limit") else ""
        print(f"[{self.i}/{self.total}] {case.key}{label}: {status} ({nrows} rows, {secs:.1f} s; ETA {eta:.0f} s)"
              f"{tail}"[:400], flush=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- the run -------------------------------------------------------------------------------------------

def _case_status(statuses: List[str]) -> str:
    for s in ("timeout", "oom", "error"):
        if s in statuses:
            return s
    if statuses and all(s == "skipped" for s in statuses):
        return "skipped"
    return "ok"


def _counts(run_dir: str) -> Dict[str, int]:
    """Rows by status, the processes of one measurement counted once (as :func:`records.load` merges them)."""
    rows, _, _, _ = scan(run_dir)
    return dict(collections.Counter(r.get("status") or "ok" for r in merge_processes(rows)))


def _resolve_settings(resume: bool, meta: Dict[str, Any], **given: Any) -> Dict[str, Any]:
    """On resume, options not given come from meta.json; given ones that change the numbers must match."""
    out = dict(given)
    if not (resume and meta):
        return out
    kinds = {"suites": "list", "backends": "list", "preset": "str", "device": "str", "threads": "int", "seed": "int",
             "processes": "int"}
    for k, kind in kinds.items():
        v = meta.get(k)
        ok = (v is None or (kind == "list" and isinstance(v, list) and all(isinstance(x, str) for x in v))
              or (kind == "str" and isinstance(v, str)) or (kind == "int" and isinstance(v, int) and not isinstance(v, bool)))
        if not ok:
            raise UsageError(f"--resume: meta.json's {k!r} is {v!r}; expected {'a list of names' if kind == 'list' else 'a ' + kind}"
                             " (a damaged or hand-edited run directory: name the option on the command line, or start "
                             "a new run)")
    for k, kind in kinds.items():
        if out.get(k) is None:
            out[k] = meta.get(k)
        elif k in ("preset", "device", "threads", "seed", "processes") and meta.get(k) is not None and out[k] != meta[k]:
            raise UsageError(f"--{k}: got {out[k]!r} but the run being resumed used {meta[k]!r}; "
                             "a resumed run keeps its settings (leave the option out)")
        elif kind == "list" and meta.get(k) is not None and set(out[k]) != set(meta[k]):
            # Naming them again is how plug-ins are trusted on resume; naming others would mix two runs in one
            # directory while meta.json still describes the first.
            opt = "suites" if k == "suites" else "--backend"
            raise UsageError(f"{opt}: got {', '.join(map(str, out[k]))} but the run being resumed ran "
                             f"{', '.join(map(str, meta[k])) or 'none'}; a resumed run keeps its {k} (leave them out, "
                             f"or name the same ones); for other {k} start a new run (--out NEW_DIR)")
    return out


def _refuse_plugins_from_meta(meta: Dict[str, Any], suite_names, backends) -> None:
    """A run directory never chooses code to import: plug-in suites (``module:ATTR``) and backends
    (``module:Class``) that meta.json names are used on resume only when the command line names them again."""
    for key, given, what in (("suites", suite_names, "suite"), ("backends", backends, "backend")):
        listed = meta.get(key)
        if given or not isinstance(listed, list):
            continue
        plugins = [str(x) for x in listed if not isinstance(x, str) or ":" in x]
        if plugins:
            raise UsageError(f"--resume: the run directory names plug-in {what}(s) {', '.join(map(repr, plugins))}; "
                             f"a run directory cannot choose code to import: name the {what}s on the command line "
                             f"again if you trust them (rnnbench run {'SUITE ...' if what == 'suite' else '--backend B'} "
                             "--out DIR --resume)")


def run_suites(suite_names: Optional[Sequence[str]] = None, preset: Optional[str] = None,
               backends: Optional[Sequence[str]] = None, device: Optional[str] = None, out: Optional[str] = None,
               resume: bool = False, threads: Optional[int] = None, seed: Optional[int] = None,
               timeout: Optional[float] = None, budget: Optional[float] = None, progress: Optional[bool] = None,
               argv: Optional[Sequence[str]] = None, next_hint: bool = True,
               processes: Optional[int] = None, cluster: Optional[str] = None) -> str:
    """Run the cases of ``suite_names`` and record them in ``out``; return the run directory.

    Args:
        suite_names: suites (``throughput``, ...; or ``module:ATTR``); default: every suite present.
        preset: ``smoke``, ``quick`` (default) or ``full`` (or a suite's own).
        backends: backend names (``numpy``, ``torch``, ..., family names, ``module:Class``); default: all known.
        device: ``cpu`` (default) or ``cuda``.
        out: run directory; default ``results/runs/<UTC timestamp>-<preset>``.
        resume: finish the run in ``out``: skip finished cases, re-run the others (options default to the run's).
        threads: intra-op threads for every backend (default: all cores this process may use).
        seed: seed of every weight and input (default 0).
        timeout: per-case limit in seconds (default: see the module docstring).
        budget: seconds of timed repeats per measurement, passed to the suites (None: theirs).
        progress: True: tqdm bar; False: plain lines; None: a bar if stderr is a terminal.
        argv: the command line, for meta.json.
        next_hint: end the summary with the ``rnnbench report`` command to run next.
        processes: independent worker processes per case for every suite (default: each suite's own; 1 for
            suites that time nothing). See the module docstring.
        cluster: a Dask scheduler address: run the cases as tasks on that cluster's workers
            (:mod:`harness.run.cluster`) instead of in local worker processes.

    Raises:
        UsageError: bad names, a bad ``out``, a directory in use. KeyboardInterrupt after a clean stop.
    """
    from implementations import registry as reg
    from harness.measure import threads as th
    from implementations.base import DEVICES
    from suites import base as suite_base

    if out is not None and (not isinstance(out, str) or not out.strip()):
        raise UsageError(f"--out: got {out!r}; expected a directory path")
    if out is not None and resume:
        if os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"--out: {out!r} exists and is not a directory")
    if resume and out is None:
        raise UsageError("--resume needs --out DIR (the run to finish)")
    meta_old = read_meta(out) if (resume and os.path.isdir(out)) else {}
    if resume and not meta_old and os.path.isfile(os.path.join(out, ROWS_FILE)) and (not suite_names or not preset):
        raise UsageError(f"--resume: {out} has rows but no meta.json, so which preset and suites it ran is unknown; "
                         "name them (rnnbench run SUITE ... --preset NAME --out DIR --resume) to resume it")
    if resume and meta_old:
        _refuse_plugins_from_meta(meta_old, suite_names, backends)
    s = _resolve_settings(resume, meta_old, suites=list(suite_names) if suite_names else None,
                          backends=list(backends) if backends else None, preset=preset, device=device,
                          threads=threads, seed=seed, processes=processes)
    processes = s["processes"]
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int)
                                  or not 1 <= processes <= MAX_PROCESSES):
        raise UsageError(f"--processes: got {processes!r}; expected an integer from 1 to {MAX_PROCESSES}")
    preset = s["preset"] or DEFAULT_PRESET
    device = s["device"] or "cpu"
    seed = DEFAULT_SEED if s["seed"] is None else s["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise UsageError(f"--seed: got {seed!r}; expected an integer from 0 to 2**32 - 1")
    try:
        threads = th.check_threads(s["threads"])
    except ValueError as e:
        raise UsageError(str(e)) from None
    if device not in DEVICES:
        raise UsageError(f"--device: got {device!r}; allowed: {', '.join(DEVICES)}")
    for name, v in (("--timeout", timeout), ("--budget", budget)):
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  and v > 0):
            raise UsageError(f"{name}: got {v!r}; expected a finite number of seconds > 0")

    from harness.core import cells
    try:
        cells.load_plugins()  # a plug-in cell module that cannot be imported stops the run here, not in a worker
    except ValueError as e:
        raise UsageError(str(e)) from None
    names = s["suites"] or suite_base.existing_suites()
    if not names:
        raise UsageError("no suite is present in this tree (expected modules under suites/)")
    resolved = [(n,) + resolve_suite(n) for n in dict.fromkeys(names)]
    allowed_presets = list(dict.fromkeys(p for _, _, _, su in resolved for p in getattr(su, "presets", ())))
    if preset not in allowed_presets:
        raise UsageError(f"--preset: got {preset!r}; allowed: {', '.join(allowed_presets)}")
    for n, _, _, su in resolved:
        if preset not in su.presets:
            raise UsageError(f"--preset: suite {n!r} has no preset {preset!r}; it has: {', '.join(su.presets)}")
    unavailable: Dict[str, str] = {}
    if s["backends"]:
        backend_names = check_backends(s["backends"])
    else:
        # Nothing named: every backend that runs here. The others are listed once (meta.json and a message),
        # not as a skipped row per case; a backend named explicitly but unavailable gets those rows.
        backend_names = []
        for n in reg.names():
            info = reg.describe(n, device)
            if info.available:
                backend_names.append(n)
            else:
                unavailable[n] = info.reason

    # Cases (cheap and deterministic; no framework import).
    cases: List[Tuple[Any, str, str, Any]] = []
    seen = set()
    for n, module, attr, su in resolved:
        try:
            suite_cases = su.cases(preset, list(backend_names), device)
        except ValueError as e:
            raise UsageError(f"suite {n!r}: {e}") from None
        for c in suite_cases:
            if c.key not in seen:
                seen.add(c.key)
                cases.append((c, module, attr, su))
        if s["backends"]:
            _say_why_no_cases(n, suite_cases, backend_names, device)

    out = out or default_out(preset)
    prepare_out(out)
    has_rows = os.path.exists(os.path.join(out, ROWS_FILE)) and os.path.getsize(os.path.join(out, ROWS_FILE)) > 0
    if has_rows and not resume:
        raise UsageError(f"--out: {out!r} already holds a run; add --resume to finish it, or choose a new directory")
    client = None
    if cluster is not None:  # before the lock and meta.json: an unreachable scheduler leaves nothing behind
        from harness.run import cluster as cl
        client = cl.connect(cluster)
    try:
        lock = acquire_lock(out)
        try:
            return _run_locked(out, lock, cases, meta_old, preset=preset, device=device, seed=seed, threads=threads,
                               timeout=timeout, budget=budget, progress=progress, argv=argv, resume=resume,
                               suites=[n for n, *_ in resolved], backends=backend_names, next_hint=next_hint,
                               unavailable=unavailable, processes=processes, client=client)
        finally:
            release_lock(lock)
    finally:
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a scheduler that is already gone
                pass


def _say_why_no_cases(suite: str, suite_cases, backends: Sequence[str], device: str) -> None:
    """A backend named with --backend that a suite gives no case (a parallel scan in the memory suite, say) is
    told, with what it declares, so that an empty run is never a silent pass."""
    from suites.base import declared
    have = {c.backend for c in suite_cases}
    for b in backends:
        if b in have:
            continue
        caps = declared(b, device)
        other = (caps.get("measured_as") or {}).get(suite, b) if caps else b
        if other != b:
            print(f"note: suite {suite!r} measures backend {b!r} as {other!r} (the same code for this suite): "
                  + (f"its rows are {other!r}'s" if other in have else "no case of either here"),
                  file=sys.stderr, flush=True)
            continue
        what = (f" (it declares cells {', '.join(caps.get('cells') or ()) or 'none'}, sweep {caps.get('sweep')!r})"
                if caps else "")
        print(f"note: suite {suite!r} has no case for backend {b!r} on {device}{what}: nothing of it to run there",
              file=sys.stderr, flush=True)


def _run_locked(out: str, lock: str, cases, meta_old, *, preset, device, seed, threads, timeout, budget,
                progress, argv, resume, suites, backends, next_hint=True, unavailable=None,
                processes=None, client=None) -> str:
    from implementations import registry as reg
    from harness.measure import threads as th
    from suites.base import RunContext

    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if meta_old:
        from harness.measure.records import clean_meta
        meta = clean_meta(meta_old)[0]  # a field of the wrong type is dropped, not crashed on
        meta.setdefault("resumed", []).append({"time": now, "argv": portable_argv(argv or sys.argv)})
        meta.pop("end_time", None)
        meta.setdefault("run_id", f"{_utc_stamp()}-{preset}")
        meta["status"] = "running"
    else:
        meta = collect_meta(run_id=f"{_utc_stamp()}-{preset}", seed=seed, preset=preset, suites=suites,
                            backends=backends, device=device, threads=threads, argv=list(argv or sys.argv),
                            timeout_s=timeout, budget_s=budget, thread_settings=th.describe(threads),
                            processes=processes, status="running", unavailable_backends=dict(unavailable or {}))
    write_meta(out, meta)

    if resume and os.path.exists(os.path.join(out, ROWS_FILE)):
        _, latest, done, bad = scan(out)
    else:
        latest, done, bad = {}, set(), []
    # One item per case and process: (case, module, attr, suite, process index, process count).
    todo = []
    for c, module, attr, su in cases:
        n_proc = case_processes(su, preset, processes)
        todo += [(c, module, attr, su, k, n_proc) for k in range(n_proc) if process_key(c.key, k) not in done]
    finished_cases = len({c.key for c, *_ in cases} - {t[0].key for t in todo})
    bar = sys.stderr.isatty() if progress is None else bool(progress)
    prog = _Progress(len(todo), bar)
    if resume:
        prog.message(f"resuming {out}: {finished_cases} case(s) already finished, {len(todo)} case-process(es) "
                     "to run" + (f" ({len(bad)} torn line(s) ignored)" if bad else ""))

    if unavailable:
        prog.message("not available here (left out): " + "; ".join(f"{n}: {r}" for n, r in unavailable.items()))
    probes: Dict[Tuple[str, str], Any] = {}
    for c, *_ in todo:
        if (c.backend, c.device) not in probes:
            probes[(c.backend, c.device)] = reg.describe(c.backend, c.device)
    meta["backend_versions"] = {f"{b}@{d}": i.versions for (b, d), i in probes.items() if i.available}
    meta["backend_capabilities"] = {f"{b}@{d}": i.capabilities for (b, d), i in probes.items() if i.available}
    write_meta(out, meta)

    writer = RowWriter(out, meta["run_id"])
    old_env = th.set_process_env(threads)  # inherited by the spawned workers before they import anything
    mp = multiprocessing.get_context("spawn")
    worker: Optional[_Worker] = None
    interrupted = stopped = False
    prev_term = None
    if threading.current_thread() is threading.main_thread():
        prev_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        # Unavailable backends first: one skipped row per case, nothing run.
        runnable = []
        for t in todo:
            c, k = t[0], t[4]
            info = probes[(c.backend, c.device)]
            if info.available or client is not None:  # on a cluster, each host says what it can run
                runnable.append(t)
                continue
            if k > 0:  # an unavailable backend gets one skipped row, not one per process
                prog.finish(c, "skipped", 0, 0.0, info.reason, label=f" (process {k + 1}/{t[5]})")
                continue
            attempt = latest.get(c.key, 0) + 1
            writer.write(_stamp(c.row("status", None, "", status="skipped", reason=info.reason), c, attempt, threads))
            writer.mark_done(c.key, attempt)
            prog.finish(c, "skipped", 1, 0.0, info.reason)
        if client is not None:
            _run_on_cluster(client, runnable, meta, out, writer, prog, latest, threads, seed, budget, preset,
                            timeout)
            runnable = []
        # Rounds of processes (round 0 of every case, then round 1, ...); within a round, one fresh worker per
        # family (declared by the backend's class), families in order of first appearance.
        groups: Dict[Tuple[int, int, str], list] = collections.OrderedDict()
        for t in sorted(runnable, key=lambda t: t[4]):
            info = probes[(t[0].backend, t[0].device)]
            groups.setdefault((t[4], t[5], info.family or t[0].backend), []).append(t)
        for (k, n_proc, family), items in groups.items():
            # Round k starts at the k-th case of the family: whatever a fresh worker does to its first case
            # (threads spinning up, caches, a GEMM ceiling just measured) lands on a different case in each
            # round, so the median over a case's processes leaves it out.
            if k and items:
                r = k % len(items)
                items = items[r:] + items[:r]
            ctx = RunContext(seed=seed, threads=threads, budget_s=budget, preset=preset,
                             run_dir=os.path.abspath(out), process=k, processes=n_proc)
            for c, module, attr, su, _, _ in items:
                pkey = process_key(c.key, k)
                label = f" (process {k + 1}/{n_proc})" if n_proc > 1 else ""
                attempt = latest.get(pkey, 0) + 1
                prog.start(c, label)
                t0 = time.monotonic()
                statuses: List[str] = []
                reasons: Dict[str, str] = {}  # the first reason given for each status

                def on_row(row, c=c, attempt=attempt, statuses=statuses, reasons=reasons, k=k, n_proc=n_proc):
                    writer.write(_stamp(row, c, attempt, threads, k, n_proc))
                    st = row.get("status") or "ok"
                    statuses.append(st)
                    if row.get("reason"):
                        reasons.setdefault(st, str(row["reason"]))

                if worker is None:
                    try:
                        worker = _Worker(mp, ctx, threads)
                    except _WorkerLost as e:
                        outcome, reason, tail = "died", str(e), []
                        worker = None
                    else:
                        outcome = None
                else:
                    outcome = None
                if worker is not None and outcome is None:
                    outcome, reason, tail = worker.run_case(module, attr, c, case_timeout(c, su, preset, timeout),
                                                            on_row)
                    if outcome in ("timeout", "died"):
                        worker = None
                if outcome != "done":
                    status = {"timeout": "timeout", "fail-oom": "oom"}.get(outcome, "error")
                    extra = {"traceback": tail} if tail else {}
                    on_row(c.row("status", None, "", status=status, reason=reason, **extra))
                writer.mark_done(pkey, attempt)
                status = _case_status(statuses)
                prog.finish(c, status, len(statuses), time.monotonic() - t0, reason or reasons.get(status, ""),
                            label=label)
            if worker is not None:
                worker.stop()
                worker = None
    except KeyboardInterrupt:
        interrupted = True
        raise
    except RunStopped:  # the directory vanished or the disk is full: stop, keep what is written
        interrupted = stopped = True
        raise
    except UsageError:  # the cluster's scheduler went away: what is written stays valid, --resume finishes it
        interrupted = True
        raise
    finally:
        if worker is not None:
            worker.kill()
        for p in mp.active_children():  # a worker caught mid-start by Ctrl-C: ours, by its handle
            p.kill()
            p.join(5)
        prog.close()
        writer.close()
        th.restore_env(old_env)
        if prev_term is not None:
            signal.signal(signal.SIGTERM, prev_term)
        gone = not os.path.isfile(os.path.join(out, ROWS_FILE))
        counts = {} if gone else _counts(out)
        meta["end_time"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        meta["counts"] = counts
        meta["requested_unavailable"] = {**(meta.get("requested_unavailable") or {}), **{b: probes[(b, device)].reason for b in backends
                                         if (b, device) in probes and not probes[(b, device)].available
                                         and client is None}}  # on a cluster, the hosts say (skipped rows)
        meta["cases"] = len(cases)
        meta["status"] = "interrupted" if interrupted else "complete"
        if not gone:  # never re-create a directory that was deleted under the run
            try:
                write_meta(out, meta)
            except (RunStopped, OSError):
                if not stopped:
                    raise
        if interrupted and not gone:
            addr = (meta.get("cluster") or {}).get("address") if isinstance(meta.get("cluster"), dict) else None
            print(f"\ninterrupted: everything finished so far is kept in {out}\n"
                  f"resume with: {resume_command(out, addr)}", file=sys.stderr, flush=True)
    _print_summary(out, len(cases), finished_cases, counts, next_hint)
    return out


def _run_on_cluster(client, runnable, meta, out, writer, prog, latest, threads, seed, budget, preset,
                    timeout) -> None:
    """The case-processes of ``runnable`` as Dask tasks (:func:`harness.run.cluster.run_tasks`): rows written as
    they arrive, stamped with where they ran; every host in meta.json."""
    from harness.run import cluster as cl
    from suites.base import RunContext

    tasks = []
    for c, module, attr, su, k, n_proc in runnable:
        ctx = RunContext(seed=seed, threads=threads, budget_s=budget, preset=preset, run_dir=os.path.abspath(out),
                         process=k, processes=n_proc)
        tasks.append(cl.Task(c, module, attr, k, n_proc, ctx, case_timeout(c, su, preset, timeout),
                             bool(su.exclusive(c)), latest.get(process_key(c.key, k), 0) + 1))
    tasks.sort(key=lambda t: t.process)  # round-major, as locally: the pooled workers of a round are reused
    statuses: Dict[int, List[str]] = {}
    reasons: Dict[int, Dict[str, str]] = {}
    started: Dict[int, float] = {}

    def on_row(task, attempt, row, where):
        row = dict(row)
        row["extra"] = {**(row.get("extra") or {}), **{k: v for k, v in where.items() if v is not None}}
        writer.write(_stamp(row, task.case, attempt, threads, task.process, task.processes))
        st = row.get("status") or "ok"
        statuses.setdefault(id(task), []).append(st)
        if row.get("reason"):
            reasons.setdefault(id(task), {}).setdefault(st, str(row["reason"]))

    def on_done(task, attempt, outcome, reason, tail, where):
        if outcome != "done":
            status = {"timeout": "timeout", "fail-oom": "oom"}.get(outcome, "error")
            extra = {"traceback": tail} if tail else {}
            on_row(task, attempt, task.case.row("status", None, "", status=status, reason=reason, **extra), where)
        writer.mark_done(process_key(task.case.key, task.process), attempt)
        label = f" (process {task.process + 1}/{task.processes})" if task.processes > 1 else ""
        st = statuses.get(id(task), [])
        status = _case_status(st)
        prog.finish(task.case, status, len(st), time.monotonic() - started.get(id(task), time.monotonic()),
                    reason or reasons.get(id(task), {}).get(status, ""), label=label + (f" on {where['host']}"
                                                                                          if where.get("host") else ""))

    def on_start(task):
        started[id(task)] = time.monotonic()

    info = client.scheduler_info()
    meta["cluster"] = {"address": str(info.get("address") or ""), "workers": len(info.get("workers", {}))}
    hosts = cl.run_tasks(client, tasks, threads, on_row, on_done, on_start)
    meta["hosts"] = {**(meta.get("hosts") or {}), **hosts}
    write_meta(out, meta)


def resume_command(out: str, cluster: Optional[str] = None) -> str:
    """The command that resumes the run in ``out`` (the path quoted for a shell), on ``cluster`` if given."""
    import shlex
    return f"rnnbench run --out {shlex.quote(out)} --resume" + (f" --cluster {shlex.quote(cluster)}" if cluster else "")


def _raise_interrupt(signum, frame):  # SIGTERM (CI cancel) stops as cleanly as Ctrl-C
    raise KeyboardInterrupt


def _stamp(row: Dict[str, Any], case, attempt: int, threads: int, process: int = 0,
           processes: int = 1) -> Dict[str, Any]:
    """What the runner adds to every row: the case key (of this process), the attempt and the thread count;
    with several processes per case, the process index and count."""
    row = dict(row)
    row["case_key"] = process_key(case.key, process)
    row["attempt"] = attempt
    extra = dict(row.get("extra") or {})
    extra.setdefault("threads", threads)
    if processes > 1:
        extra["process"], extra["processes"] = process, processes
    try:  # the machine's load when the row was written: timings under foreign load are suspect
        extra.setdefault("load1", round(os.getloadavg()[0], 2))
    except OSError:  # pragma: no cover - no load average on this platform
        pass
    row["extra"] = extra
    return row


def run_problems(run_dir: str) -> List[str]:
    """What makes a finished run a failure for CI (``rnnbench run`` exits 1): failed rows (a correctness
    check, a crash, a timeout, out of memory) and backends that were asked for but could not run."""
    from harness.measure.records import clean_meta
    meta, _ = clean_meta(read_meta(run_dir))
    counts = meta.get("counts") or _counts(run_dir)
    out = [f"{counts[s]} row(s) {s}" for s in ("error", "oom", "timeout") if counts.get(s)]
    for b, why in (meta.get("requested_unavailable") or {}).items():
        out.append(f"backend {b!r} was asked for but cannot run here: {why}")
    return out


def _print_summary(out: str, ncases: int, nresumed: int, counts: Dict[str, int], next_hint: bool = True) -> None:
    order = ["ok", "limit", "skipped", "error", "oom", "timeout"]
    parts = [f"{k} {counts[k]}" for k in order if counts.get(k)] + \
            [f"{k} {v}" for k, v in counts.items() if k not in order]
    print(f"run finished: {ncases} case(s)" + (f" ({nresumed} from before the resume)" if nresumed else "")
          + f"; rows: {', '.join(parts) or 'none'}")
    print(f"run directory: {out}")
    if next_hint:
        import shlex
        print(f"next: rnnbench report {shlex.quote(out)}")
