"""Tidy rows on disk: the schema, run metadata, a crash-safe append-only writer, and the loader.

A run directory holds ``rows.jsonl`` (one JSON object per line, one measurement per row) and
``meta.json`` (seed, preset, git commit, command line, times, machine and versions).

Crash safety: every row is written, flushed and fsynced before the next measurement starts.
Rows carry ``case_key`` and ``attempt``; when a case has finished, a marker line
``{"_case_done": key, "attempt": n}`` follows its rows. ``--resume`` skips finished cases and re-runs
the others with ``attempt + 1``; :func:`load` keeps, for each case, only its latest attempt, so a case
interrupted and then re-run is neither lost nor duplicated. A torn last line (a kill mid-write) is
reported and skipped.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import warnings
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
from harness.core.errors import InputError, RunDirError, UsageError
from harness.measure import safe_files

ROWS_FILE = "rows.jsonl"
META_FILE = "meta.json"
LOCK_FILE = ".lock"

#: The row schema (DESIGN.md), in column order. ``case_key``/``attempt`` serve resume and dedup.
COLUMNS = ("run_id", "suite", "case", "backend", "variant", "device", "dtype", "cell", "layers", "batch",
           "seq_len", "input_size", "hidden_size", "metric", "value", "unit", "n", "q25", "q75", "samples",
           "status", "reason", "extra", "case_key", "attempt")
STATUSES = ("ok", "skipped", "error", "oom", "timeout", "limit")
#: ``limit``: an expected result at the edge of the number format (a gradient curve that under/overflows
#: float64 is recorded where it ends), not a failure: counted apart from ``error`` everywhere.
#: Statuses that mean something went wrong (``rnnbench run`` exits 1 when any row has one).
FAILED_STATUSES = ("error", "oom", "timeout")
#: Extra columns that distinguish two rows of one case and metric (the identity of a measurement).
IDENTITY_EXTRAS = ("mode", "step", "algorithm", "truncation", "rho", "forget_bias", "gate_bias", "input_scale",
                   "init", "kind", "seed", "T_eval", "phase", "probe")
#: A timing ``M`` measured next to the control workload has a twin row ``M + PER_CONTROL`` (unit ``ratio``):
#: the same samples in units of the control's time (``harness.measure.control``); ``extra.control`` names it.
PER_CONTROL = "_per_control"
#: Which status a merged measurement takes when its processes disagree (first found wins).
_MERGE_ORDER = ("error", "timeout", "oom", "limit", "ok", "skipped")
#: Case fields copied into every row of the case.
CASE_FIELDS = ("suite", "case", "backend", "variant", "device", "dtype", "cell", "layers", "batch", "seq_len",
               "input_size", "hidden_size")


class RunStopped(UsageError):
    """Writing a row failed in a way the run cannot continue from (the directory deleted or moved, a full disk):
    the runner stops, keeps what was written and says how to go on. Exit code 2."""


def _jsonable(v: Any) -> Any:
    """NumPy scalars/arrays to plain Python; non-finite floats kept (JSON 'NaN'/'Infinity' tokens)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def make_row(fields: Dict[str, Any], metric: str, value: Optional[float], unit: str, *,
             samples: Optional[Iterable[float]] = None, q25: Optional[float] = None, q75: Optional[float] = None,
             n: Optional[int] = None, status: str = "ok", reason: str = "", **extra: Any) -> Dict[str, Any]:
    """One measurement. ``fields`` are the case's columns (see :data:`CASE_FIELDS`); extra keys go in ``extra``.

    If ``samples`` are given and q25/q75/n are not, they are computed from them.
    """
    if status not in STATUSES:
        raise InputError(f"status: got {status!r}; allowed: {', '.join(STATUSES)}")
    row: Dict[str, Any] = {k: fields.get(k) for k in CASE_FIELDS}
    s = None if samples is None else [float(x) for x in samples]
    if s:
        arr = np.asarray(s)
        q25 = float(np.percentile(arr, 25)) if q25 is None else q25
        q75 = float(np.percentile(arr, 75)) if q75 is None else q75
        n = len(s) if n is None else n
    row.update(metric=metric, value=None if value is None else float(value), unit=unit, n=n, q25=q25, q75=q75,
               samples=s, status=status, reason=str(reason), extra=_jsonable(extra))
    return row


class RowWriter:
    """Append-only, crash-safe writer of ``rows.jsonl``: each line is flushed and fsynced at once.

    The file is opened without following links (:func:`harness.measure.safe_files.open_append`). Before each
    line the writer checks that ``rows.jsonl`` is still the file it opened: a run directory deleted or moved
    mid-run stops the run with :class:`RunStopped` at the next row instead of writing into a file nobody sees.
    A full disk stops it the same way.
    """

    def __init__(self, run_dir: str, run_id: str) -> None:
        safe_files.ensure_run_dir(run_dir)
        self.path = os.path.join(run_dir, ROWS_FILE)
        self.run_id = run_id
        self._f = safe_files.open_append(self.path)
        self._repair_torn_tail()
        st = os.fstat(self._f.fileno())
        self._id = (st.st_dev, st.st_ino)

    def _repair_torn_tail(self) -> None:
        """If the file ends mid-line (a kill mid-write), end that line so the next row starts clean."""
        fd = self._f.fileno()
        size = os.fstat(fd).st_size
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            self._f.write("\n")
            self._f.flush()

    def _still_there(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._id:
            raise RunStopped(f"{self.path} was deleted or moved while the run was going; the run stopped "
                             "(rows written before that are in the moved file, if it still exists)")

    def _write_line(self, obj: Dict[str, Any]) -> None:
        self._still_there()
        try:
            self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            import errno
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RunStopped(f"no space left on the device while writing {self.path}; the run stopped and "
                                 "everything written before is kept: free some space, then resume with "
                                 "--resume") from None
            raise RunStopped(f"cannot write {self.path}: {e.strerror or e}; the run stopped") from None

    def write(self, row: Dict[str, Any]) -> None:
        out = {"run_id": self.run_id}
        out.update(_jsonable(row))
        self._write_line(out)

    def mark_done(self, case_key: str, attempt: int) -> None:
        self._write_line({"_case_done": case_key, "attempt": int(attempt)})

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:  # the last flush on a full disk: what could be written is written
            pass

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_lines(run_dir: str) -> Iterator[Tuple[int, Optional[dict]]]:
    """(line number, parsed object or None if unusable) for every non-empty line of rows.jsonl.

    Unusable: not UTF-8, not JSON, or JSON that is not a row object (see :func:`_valid_line`)."""
    path = os.path.join(run_dir, ROWS_FILE)
    safe_files.check_readable_file(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise RunDirError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                yield i, None
                continue
            if not line:
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                yield i, None
                continue
            yield i, obj if _valid_line(obj) else None


def _valid_line(obj: Any) -> bool:
    """A done-marker ``{"_case_done": str, "attempt": int}`` or a row whose typed fields have their types:
    ``case_key`` str or absent, ``attempt`` int, ``extra`` an object, ``samples`` a list of numbers, ``value``
    a number, the text fields text. Anything else is a bad line (reported by number, never half-read)."""
    if not isinstance(obj, dict):
        return False
    att = obj.get("attempt", 0)
    if att is not None and (isinstance(att, bool) or not isinstance(att, int)):
        return False
    if "_case_done" in obj:
        return isinstance(obj["_case_done"], str)
    if obj.get("case_key") is not None and not isinstance(obj["case_key"], str):
        return False
    if not isinstance(obj.get("metric"), str):  # every row measures something
        return False
    extra = obj.get("extra")
    if extra is not None and not isinstance(extra, dict):
        return False
    for k in ("process", "processes"):  # the runner's process index and count: merging relies on them
        if extra and k in extra and (isinstance(extra[k], bool) or not isinstance(extra[k], int)):
            return False
    v = obj.get("value")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        return False
    smp = obj.get("samples")
    if smp is not None and not (isinstance(smp, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                             for x in smp)):
        return False
    for k in ("metric", "unit", "status", "reason", "suite", "case", "backend", "variant", "device", "dtype", "cell"):
        if obj.get(k) is not None and not isinstance(obj[k], str):
            return False
    for k in ("n", "layers", "batch", "seq_len", "input_size", "hidden_size"):
        if obj.get(k) is not None and (isinstance(obj[k], bool) or not isinstance(obj[k], (int, float))):
            return False
    for k in ("q25", "q75"):
        if obj.get(k) is not None and (isinstance(obj[k], bool) or not isinstance(obj[k], (int, float))):
            return False
    if obj.get("status") is not None and obj["status"] not in STATUSES:
        return False
    return True


def scan(run_dir: str) -> Tuple[List[dict], Dict[str, int], Set[str], List[int]]:
    """Read a run: (rows, latest attempt per case, finished case keys, bad line numbers).

    A line repeated word for word (a copied or concatenated file) counts once."""
    rows: List[dict] = []
    latest: Dict[str, int] = {}
    done: Set[str] = set()
    bad: List[int] = []
    seen: Set[str] = set()
    for i, obj in iter_lines(run_dir):
        if obj is None:
            bad.append(i)
            continue
        if "_case_done" in obj:
            done.add(obj["_case_done"])
            continue
        ident = json.dumps(obj, sort_keys=True)
        if ident in seen:
            continue
        seen.add(ident)
        key, att = obj.get("case_key"), int(obj.get("attempt") or 0)
        if key is not None:
            latest[key] = max(latest.get(key, 0), att)
        rows.append(obj)
    rows = [r for r in rows if r.get("case_key") is None or int(r.get("attempt") or 0) == latest[r["case_key"]]]
    return rows, latest, done, bad


def base_case_key(case_key: Optional[str]) -> Optional[str]:
    """The case key without the runner's ``#pK`` process suffix."""
    if case_key is None:
        return None
    head, sep, tail = case_key.rpartition("#p")
    return head if sep and tail.isdigit() else case_key


def _is_error_metric(metric: str) -> bool:
    return metric.endswith(("error", "_err")) or "_error_" in metric


def merge_processes(rows: List[dict]) -> List[dict]:
    """Rows of the same measurement from several processes (``extra.process``) merged into one row.

    The merged row keeps the first process's fields, with ``case_key`` without its ``#pK`` suffix and:

    - timed rows (samples in every process): ``value`` the median of the per-process values (for an odd
      count, the middle process), ``q25``/``q75`` the quartiles of the same per-process values (so the value
      always lies inside its bracket, and the bracket is the spread between independent processes, the
      noise a comparison across runs has to beat; the quartiles of the pooled samples could exclude the
      median of the process values when one process took many more samples than the others), ``samples``
      and ``n`` all the samples, and in ``extra`` ``process_values`` and ``process_samples`` (a list per
      process, in process order);
    - rows without samples: the median value, or the largest magnitude for errors (the worst process);
    - ``extra.processes``: how many processes the row merges;
    - the status: a failure in any process wins (its reason prefixed with the process), then ``limit``,
      ``ok`` and ``skipped``.

    Rows without ``extra.process`` are returned unchanged, in their order.
    """
    groups: Dict[Tuple, List[dict]] = {}
    order: List[Any] = []
    seen: Dict[Tuple, int] = {}
    for r in rows:
        extra = r.get("extra") or {}
        if not isinstance(extra.get("process"), int) or isinstance(extra.get("process"), bool):
            order.append(r)
            continue
        ident = (base_case_key(r.get("case_key")), r.get("metric"), *(r.get(k) for k in CASE_FIELDS),
                 tuple(str(extra.get(k)) for k in IDENTITY_EXTRAS))
        occ_key = ident + (extra.get("process"),)
        occ = seen.get(occ_key, 0)
        seen[occ_key] = occ + 1
        key = ident + (occ,)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(r)
    return [x if isinstance(x, dict) else _merge_group(groups[x]) for x in order]


def _merge_group(parts: List[dict]) -> dict:
    parts = sorted(parts, key=lambda r: int((r.get("extra") or {}).get("process", 0)))
    out = dict(parts[0])
    extra = dict(out.get("extra") or {})
    for p in parts[1:]:  # a key only a later process has (a defect flag, a note) is kept, the first's values win
        for k, v in (p.get("extra") or {}).items():
            extra.setdefault(k, v)
    extra.pop("process", None)
    extra["processes"] = len(parts)
    out["case_key"] = base_case_key(out.get("case_key"))
    statuses = [p.get("status") or "ok" for p in parts]
    status = next(s for s in _MERGE_ORDER + tuple(statuses) if s in statuses)
    out["status"] = status
    if status not in ("ok", "skipped"):
        bad = next(p for p in parts if (p.get("status") or "ok") == status)
        k = (bad.get("extra") or {}).get("process", 0)
        out["reason"] = f"process {int(k) + 1} of {len(parts)}: {bad.get('reason') or ''}"
    ok = [p for p in parts if (p.get("status") or "ok") in ("ok", "limit") and p.get("value") is not None]
    vals = [float(p["value"]) for p in ok]
    if vals:
        if all(p.get("samples") for p in ok):
            pooled = [x for p in ok for x in p["samples"]]
            out["samples"] = pooled
            out["value"] = float(np.median(vals))
            spread = vals if len(vals) > 1 else pooled  # one process: its own samples' quartiles
            out["q25"] = float(np.percentile(spread, 25))
            out["q75"] = float(np.percentile(spread, 75))
            out["n"] = len(pooled)
            extra["process_values"] = vals
            extra["process_samples"] = [list(p["samples"]) for p in ok]
        elif _is_error_metric(str(out.get("metric"))):
            out["value"] = max(vals, key=abs)
        else:
            out["value"] = float(np.median(vals))
    out["extra"] = extra
    return out


def load(run_dir: str, merge: bool = True):
    """A run directory as a pandas DataFrame, one row per measurement, ``extra`` flattened into columns.

    Unparseable lines (a torn last line after a kill) are skipped with a warning; their line numbers
    are in ``df.attrs["bad_lines"]``. ``df.attrs["meta"]`` holds meta.json (or {}). With ``merge`` (the
    default) the processes of one measurement become one row (:func:`merge_processes`); ``merge=False``
    keeps a row per process (columns ``process``, ``processes``).
    """
    import pandas as pd

    if not os.path.isdir(run_dir):
        raise RunDirError(f"run directory {run_dir!r} does not exist")
    if not os.path.exists(os.path.join(run_dir, ROWS_FILE)):
        raise RunDirError(f"run directory {run_dir!r} has no {ROWS_FILE}: not a run (or nothing was recorded)")
    rows, _, done, bad = scan(run_dir)
    if bad:
        warnings.warn(f"{run_dir}/{ROWS_FILE}: skipped {len(bad)} unparseable line(s) {bad[:5]} "
                      "(a torn write from an interrupted run?)", stacklevel=2)
    # A merged row is complete when every one of its processes finished.
    complete = {r.get("case_key"): r.get("case_key") in done for r in rows if r.get("case_key") is not None}
    by_case: Dict[str, bool] = {}
    for k, v in complete.items():
        b = base_case_key(k)
        by_case[b] = by_case.get(b, True) and v
    flat = []
    for r in (merge_processes(rows) if merge else rows):
        d = {k: r.get(k) for k in COLUMNS}
        for k, v in (r.get("extra") or {}).items():
            d[k if k not in d else f"extra.{k}"] = v
        key = r.get("case_key")
        d["complete"] = True if key is None else (by_case.get(base_case_key(key), False) if merge
                                                    else complete.get(key, False))
        flat.append(d)
    df = pd.DataFrame(flat, columns=None if flat else list(COLUMNS) + ["complete"])
    df.attrs["bad_lines"] = bad
    df.attrs["meta"], df.attrs["meta_dropped"] = clean_meta(read_meta(run_dir))
    df.attrs["run_dir"] = run_dir
    return df


# -- metadata --------------------------------------------------------------------------------------------

def git_commit(repo: Optional[str] = None) -> Optional[str]:
    """HEAD of the repository holding this package (or ``repo``), with ``-dirty`` if it has changes."""
    repo = repo or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> Dict[str, Optional[str]]:
    """Installed versions of the packages that matter, read from metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version
    out: Dict[str, Optional[str]] = {}
    for p in ("numpy", "scipy", "pandas", "torch", "jax", "jaxlib", "optax", "flax", "asv", "threadpoolctl"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    from harness.core.system import blas_description
    blas = blas_description()
    if blas:
        out["numpy_blas"] = blas
    return out


def gpu_info() -> Dict[str, Any]:
    """GPU name/driver/cuDNN where visible (nvidia-smi; torch only if already imported). {} on a CPU machine."""
    info: Dict[str, Any] = {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            name, driver, mem = [s.strip() for s in out.stdout.strip().splitlines()[0].split(",")]
            info.update(gpu_name=name, gpu_driver=driver, gpu_memory=mem)
    except (OSError, subprocess.SubprocessError):
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                info.setdefault("gpu_name", torch.cuda.get_device_name(0))
                info["cudnn"] = torch.backends.cudnn.version()
                info["cuda"] = torch.version.cuda
        except Exception:
            pass
    return info


def machine_info() -> Dict[str, Any]:
    """The machine a run ran on: CPU model, cores, memory, OS, Python, GPU."""
    from harness.core import system
    return {"hostname": platform.node(), "cpu": system.cpu_model(), "cores": system.cpu_count(),
            "memory_bytes": system.mem_total_bytes(),
            "os": platform.platform(), "python": platform.python_version(), **gpu_info()}


def machine_key(meta: Dict[str, Any]) -> str:
    """A short key that says whether two runs come from comparable machines."""
    m = meta.get("machine") if isinstance(meta, dict) else None
    m = m if isinstance(m, dict) else {}
    return f"{m.get('cpu')}|{m.get('cores')}|{m.get('gpu_name', '-')}"


def portable_path(path: str) -> str:
    """``path`` relative to the current directory when it lies below it (no machine paths in results)."""
    if os.path.isabs(path):
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            return rel
    return path


def portable_argv(argv: Sequence[str]) -> List[str]:
    """A command line fit for committed results: the program by its name, paths below cwd made relative."""
    argv = [str(a) for a in argv]
    if not argv:
        return argv
    return [os.path.basename(argv[0])] + [portable_path(a) for a in argv[1:]]


def collect_meta(**fields: Any) -> Dict[str, Any]:
    """meta.json contents: the given fields (seed, preset, argv, ...) plus git commit, machine and versions."""
    meta = dict(fields)
    meta.setdefault("start_time", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta["argv"] = portable_argv(meta.get("argv") or sys.argv)
    meta["git_commit"] = git_commit()
    meta["machine"] = machine_info()
    meta["versions"] = package_versions()
    return _jsonable(meta)


def write_meta(run_dir: str, meta: Dict[str, Any]) -> None:
    """Store meta.json atomically (an exclusive temporary file + rename; never through a link)."""
    safe_files.ensure_run_dir(run_dir)
    text = json.dumps(_jsonable(meta), indent=2, sort_keys=True)
    try:
        safe_files.write_atomic(os.path.join(run_dir, META_FILE), text)
    except OSError as e:
        raise RunStopped(f"cannot write {os.path.join(run_dir, META_FILE)}: {e.strerror or e}") from None


def read_meta(run_dir: str) -> Dict[str, Any]:
    """meta.json as a dict ({} when there is none); :class:`RunDirError` when it is not a JSON object."""
    path = os.path.join(run_dir, META_FILE)
    if not os.path.lexists(path):
        return {}
    safe_files.check_readable_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as e:
        raise RunDirError(f"{path}: unreadable meta.json ({e})") from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{path}: meta.json holds a JSON {type(meta).__name__}; expected an object")
    return meta


#: meta.json fields and the JSON types they must have for the readers (report, compare) to use them.
META_TYPES: Dict[str, Tuple[type, ...]] = {
    **{k: (dict,) for k in ("machine", "versions", "backend_versions", "backend_capabilities", "counts",
                            "unavailable_backends", "requested_unavailable", "thread_settings")},
    **{k: (str,) for k in ("run_id", "preset", "device", "git_commit", "start_time", "end_time", "status")},
    **{k: (list,) for k in ("suites", "backends", "argv", "resumed")},
    **{k: (int,) for k in ("threads", "seed", "processes", "cases")},
    **{k: (int, float) for k in ("timeout_s", "budget_s")},
}


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def clean_meta(meta: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """(meta with every field of the wrong type left out, the names left out): what readers of a run directory
    that may come from anyone use, so that no field of a crafted or damaged meta.json can make them fail."""
    out: Dict[str, Any] = {}
    dropped: List[str] = []
    for k, v in meta.items():
        want = META_TYPES.get(k)
        if want is not None and (not isinstance(v, want) or isinstance(v, bool)):
            dropped.append(k)
            continue
        if k in ("machine", "versions", "counts", "unavailable_backends", "requested_unavailable"):
            v = {str(a): b for a, b in v.items() if _scalar(b)}
        elif k in ("backend_versions", "backend_capabilities"):
            v = {str(a): b for a, b in v.items() if isinstance(b, dict)}
        elif k in ("suites", "backends", "argv"):
            v = [str(x) for x in v if _scalar(x)]
        out[k] = v
    return out, dropped


def finite_or_none(x: Optional[float]) -> Optional[float]:
    """``x`` if it is a finite number, else None (for statistics that must skip inf/NaN)."""
    return x if (x is not None and math.isfinite(x)) else None
