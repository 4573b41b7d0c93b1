"""Two result sets -> per-case ratios with significance -> verdicts (``rnnbench compare BASE NEW``).

Inputs are two run directories (``rows.jsonl`` + ``meta.json``) or two asv result files
(``results/asv/results/<machine>/<commit>-<env>.json``). Rows are matched on
``(suite, case, backend, device, dtype, metric)`` plus the identifying extras (``mode``, ``step``,
``algorithm``, ...). Each match is one of three kinds:

``timed``
    raw samples on both sides (a time or a rate), grouped by the independent process that took them
    (``rnnbench run`` times each case in several processes, in interleaved rounds). The process is the
    unit: samples of one process share its state (clock, caches, memory layout, JIT), so their spread says
    nothing about how a second run will differ. Ratio = median of the per-process medians, new/base,
    normalised so that > 1 means *worse* (slower, or a lower rate); a hierarchical bootstrap 95 % CI
    (processes, then samples); a two-sided t-test (pooled variance) on the logs of the per-process medians. Verdict
    ``slower`` when ratio > threshold and p < alpha, ``faster`` when ratio < 1/threshold and p < alpha.
    On the CPU every timing ``M`` has a twin ``M_per_control``: the same samples, each divided by the time of a
    fixed harness workload taken right next to it (``harness.measure.control``). A slow spell of the machine,
    or a whole run on a slower machine state, moves a time and its control alike, so when both runs have the
    twin (with the same control) **the verdict is taken on it**: ``rel`` = its ratio, with its own CI and
    t-test p over the processes; ``ratio`` (raw times) is then shown, not judged, and a note says how much
    faster or slower the machine itself ran (the control's own ratio).
    ``inconclusive`` when the ratio is past the threshold but either side has fewer than
    :data:`~harness.measure.stats.MIN_PROCESSES` processes (an old run, or ``--processes 1``) or the
    processes disagree (p >= alpha), else ``same``. (asv files keep no samples unless run with
    ``--record-samples``; there asv's own rule applies: non-overlapping 99 % CIs.)
``exact``
    deterministic numbers (``*_error``, ``*_bytes``, ``check_*``, counts): compared against tolerances,
    not statistically (see :data:`EXACT_RULES`). An error that grows past its tolerance is ``worse``.
``untested``
    single values without samples (``compile_s``), numbers recomputed from the timed samples
    (``gflops``, ``tokens_per_s``, ``eff_*``, ...: :data:`DERIVED`) and measurements of the machine rather than
    the code (the GEMM ceilings: :data:`CONTEXT`). Counted, not judged.

Exit codes of :func:`cli_compare`: 0 no regression (``inconclusive`` comparisons are listed, and do not fail),
1 a significant slowdown or a deterministic metric past its tolerance, 2 bad input (missing directory, nothing
comparable, no raw samples).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from harness.core.errors import InputError
from harness.measure.records import IDENTITY_EXTRAS, PER_CONTROL
from harness.measure.stats import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MIN_PROCESSES,  # noqa: F401
                                  bootstrap_median_ci, bootstrap_ratio_ci, log_diff_stats, mann_whitney_p,
                                  process_ratio_stats, process_variance_floor, ratio_stats, signed_rank_p,
                                  t_logs_p_from)

DEFAULT_THRESHOLD = 1.10
DEFAULT_ALPHA = 0.01
#: A framework family needs this many timed cases in a comparison to estimate its own typical process scatter.
SCATTER_MIN_CASES = 4
#: Which quantile of the family's per-case process variances is the least variance a case's test may assume.
#: The upper quartile rather than the median: a torch or JAX process's time has a heavy tail, and a floor at
#: the median let three processes that happened to agree fake a slowdown in about 1 A/A pair in 20.
SCATTER_QUANTILE = 0.75
#: Load average beyond a run's own threads above which compare says the run shared the machine.
FOREIGN_LOAD_NOTE = 0.75

#: Metrics that are recomputed from the timed samples of the same case (no information of their own).
DERIVED = frozenset({"tokens_per_s", "us_per_step", "gflops", "gflops_deepbench", "eff_gemm", "eff_recurrent"})
#: Measurements of the machine, not of the code under test (a GEMM ceiling): counted, not judged.
CONTEXT = frozenset({"ceiling_gflops"})
#: Extra columns that distinguish two rows of one case and metric.
KEY_EXTRAS = IDENTITY_EXTRAS
KEY_COLUMNS = ("suite", "case", "backend", "device", "dtype", "metric")


@dataclass(frozen=True)
class ExactRule:
    """How a deterministic metric is judged. ``direction``: +1 larger is worse, 0 any change matters."""

    pattern: str
    direction: int
    rtol: float
    atol: float
    growth: float = 1.0  # errors: the new value may reach growth × base before it counts


BYTES_RULE = ExactRule(r"_bytes$|^bytes|peakmem|_memory$", +1, 0.02, 4096.0)
#: First match wins. Errors may grow 10× (one decimal digit) above a dtype-sized floor before they fail;
#: a row's own ``tol`` (absolute tolerance, e.g. the throughput suite's equivalence check) also fails it.
EXACT_RULES: Tuple[ExactRule, ...] = (
    ExactRule(r"(^|_)(error|err)$|_error_|_diff$|_dev$|_vs_brute|_max$", +1, 0.0, 0.0, growth=10.0),
    ExactRule(r"mismatch", +1, 0.0, 0.0),
    BYTES_RULE,
    ExactRule(r"^check_|_ok$|_pass(ed)?$|_agree$", -1, 0.0, 0.0),
    ExactRule(r"_count$|^n_|flops_count|^flops$", 0, 0.0, 0.0),
    ExactRule(r"decay|_rate$|_slope$|^pascanu_", 0, 1e-3, 1e-9),
)
ERROR_FLOOR = {"float16": 1e-2, "bfloat16": 1e-2, "float32": 1e-5, "float64": 1e-12}
TIME_UNITS = ("ms", "s", "us", "ns", "seconds")


def exact_rule(metric: str, unit: Optional[str] = None) -> Optional[ExactRule]:
    """The rule for a deterministic metric, or None when ``metric`` is not one."""
    for r in EXACT_RULES:
        if re.search(r.pattern, metric):
            return r
    if unit in ("bytes", "B"):
        return BYTES_RULE
    return None


def higher_is_better(metric: str, unit: Optional[str]) -> bool:
    """Rates (``/s``) and efficiencies are better when larger; times, bytes and errors when smaller."""
    u = (unit or "").strip()
    return u.endswith("/s") or metric.startswith(("eff", "speedup", "throughput")) or metric.endswith("_per_s")


# -- loading -------------------------------------------------------------------------------------------

@dataclass
class Entry:
    """One measurement of one side, in the form the comparison needs."""

    key: Tuple
    label: Dict[str, Any]
    value: Optional[float]
    unit: str = ""
    samples: Optional[np.ndarray] = None
    ci99: Optional[Tuple[float, float]] = None
    tol: Optional[float] = None
    status: str = "ok"
    reason: str = ""
    process_samples: Optional[List[np.ndarray]] = None  # one array per independent process
    control: Optional[str] = None  # the control workload a ``*_per_control`` row is in units of

    def groups(self) -> List[np.ndarray]:
        """The samples by process (all in one group when the run kept no process structure)."""
        if self.process_samples:
            return self.process_samples
        return [self.samples] if self.samples is not None else []


@dataclass
class ResultSet:
    source: str
    kind: str  # "run" or "asv"
    entries: Dict[Tuple, Entry]
    machine: str
    preset: Optional[str]
    label: str
    foreign_load: Optional[float] = None  # the most load beyond the run's own threads while it ran
    bad_lines: int = 0  # unreadable lines of rows.jsonl (torn, garbage), left out
    unfinished: int = 0  # measurements of cases that never finished (an interrupted run)
    seed: Optional[int] = None
    families: Dict[str, str] = field(default_factory=dict)  # "backend@device" -> its framework family
    threads: Optional[int] = None  # the run's intra-op threads (meta.json)

    def family(self, backend: Any, device: Any) -> str:
        """The framework family a backend declared (its worker's runtime: torch, jax, ...), else its name."""
        return self.families.get(f"{backend}@{device}") or str(backend)


def _usage(msg: str):
    from harness.core.errors import UsageError
    return UsageError(msg)


def _clean(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def load_run(path: str) -> ResultSet:
    """A run directory as entries (status-ok rows and failed ones, the latter marked)."""
    from harness.measure import records
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = records.load(path)
    except records.RunDirError as e:
        raise _usage(str(e)) from None
    meta = df.attrs.get("meta", {}) or {}
    entries: Dict[Tuple, Entry] = {}
    extras = [c for c in KEY_EXTRAS if c in df.columns]
    for rec in df.to_dict("records"):
        label = {c: _clean(rec.get(c)) for c in KEY_COLUMNS}
        for c in extras:
            v = _clean(rec.get(c))
            if isinstance(v, float) and v.is_integer() and c in ("seed", "step", "truncation", "T_eval"):
                v = int(v)  # a column with gaps comes back from pandas as float
            if v is not None:
                label[c] = v
        key = tuple(sorted((k, str(v)) for k, v in label.items()))
        if key in entries:  # a repeated row of one case (same identity): number it
            i = 2
            while key + (("#", str(i)),) in entries:
                i += 1
            key = key + (("#", str(i)),)
        s = rec.get("samples")
        samples = np.asarray(s, dtype=float) if isinstance(s, (list, tuple, np.ndarray)) and len(s) else None
        tol = _clean(rec.get("tol")) if "tol" in df.columns else None
        ps = rec.get("process_samples") if "process_samples" in df.columns else None
        groups = None
        if isinstance(ps, (list, tuple)) and ps and all(isinstance(g, (list, tuple)) and g for g in ps):
            groups = [np.asarray(g, dtype=float) for g in ps]
        entries[key] = Entry(key, label, _clean(rec.get("value")), str(rec.get("unit") or ""), samples,
                             tol=tol if isinstance(tol, (int, float)) else None,
                             status=str(rec.get("status") or "ok"), reason=str(_clean(rec.get("reason")) or ""),
                             process_samples=groups,
                             control=str(rec["control"]) if isinstance(rec.get("control"), str) else None)
    from harness.measure.records import machine_key
    foreign = None
    if "load1" in df.columns and "threads" in df.columns:
        extra_load = (df["load1"].astype(float) - df["threads"].astype(float)).dropna()
        foreign = float(extra_load.max()) if len(extra_load) else None
    unfinished = int((~df["complete"].astype(bool)).sum()) if "complete" in df.columns and len(df) else 0
    return ResultSet(path, "run", entries, machine_key(meta) if meta else "unknown", meta.get("preset"),
                     str(meta.get("run_id") or os.path.basename(os.path.normpath(path))), foreign,
                     bad_lines=len(df.attrs.get("bad_lines") or []), unfinished=unfinished, seed=meta.get("seed"),
                     families=_families(meta),
                     threads=meta.get("threads") if isinstance(meta.get("threads"), int) else None)


def _families(meta: Dict[str, Any]) -> Dict[str, str]:
    """``backend@device`` -> family, from the capabilities a run recorded (anything malformed left out)."""
    caps = meta.get("backend_capabilities")
    if not isinstance(caps, dict):
        return {}
    return {k: v["family"] for k, v in caps.items()
            if isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("family"), str) and v["family"]}


def _asv_units(path: str) -> Dict[str, str]:
    """benchmark name -> unit, from the benchmarks.json asv keeps two levels up (if present)."""
    for d in (os.path.dirname(os.path.dirname(os.path.abspath(path))), os.path.dirname(os.path.abspath(path))):
        f = os.path.join(d, "benchmarks.json")
        if os.path.exists(f):
            try:
                with open(f, encoding="utf-8") as fh:
                    data = json.load(fh)
                return {k: v.get("unit", "") for k, v in data.items() if isinstance(v, dict)}
            except (OSError, json.JSONDecodeError):
                return {}
    return {}


def load_asv(path: str) -> ResultSet:
    """An asv result file (format of asv 0.6: ``result_columns`` + ``results``) as entries."""
    import itertools
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or not UTF-8
        raise _usage(f"{path}: not a readable asv result file ({e})") from None
    cols = data.get("result_columns") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or not isinstance(cols, list) or not cols:
        raise _usage(f"{path}: not an asv result file (no 'results'/'result_columns'); "
                     "give a run directory or results/asv/results/<machine>/<commit>-<env>.json")
    units = _asv_units(path)
    entries: Dict[Tuple, Entry] = {}
    bad: List[str] = []
    for name, row in data["results"].items():
        try:
            r = dict(zip(cols, row))
            params = r.get("params") or []
            combos = list(itertools.product(*params)) if params else [()]
            vals = r.get("result")
            vals = vals if isinstance(vals, list) else [vals]
            col = lambda k, i: (r.get(k) or [None] * len(combos))[i] if isinstance(r.get(k), list) else None  # noqa
            parts = name.split(".")
            bench = parts[-1]
            suite = ".".join(parts[:-1]) or "asv"
            unit = units.get(name) or ("seconds" if bench.startswith("time_") else
                                       "bytes" if bench.startswith(("peakmem_", "mem_")) else "")
            for i, combo in enumerate(combos):
                v = vals[i] if i < len(vals) else None
                case = "(" + ", ".join(str(c) for c in combo) + ")" if combo else ""
                label = {"suite": suite, "case": case, "metric": bench}
                key = tuple(sorted(label.items()))
                lo, hi = col("stats_ci_99_a", i), col("stats_ci_99_b", i)
                smp = col("samples", i)
                entries[key] = Entry(key, label, None if v is None or (isinstance(v, float) and math.isnan(v)) else v,
                                     unit, np.asarray(smp, dtype=float) if smp else None,
                                     ci99=(lo, hi) if lo is not None and hi is not None else None,
                                     status="ok" if v is not None else "skipped")
        except (TypeError, ValueError, IndexError, KeyError, AttributeError):
            bad.append(str(name))  # a benchmark whose fields have the wrong shapes: left out, counted
    if bad and not entries:
        raise _usage(f"{path}: none of its {len(bad)} benchmark(s) has the asv result layout")
    params = data.get("params")
    machine = str(params.get("machine", "unknown")) if isinstance(params, dict) else "unknown"
    return ResultSet(path, "asv", entries, machine, None,
                     f"{str(data.get('commit_hash', '?'))[:8]} ({data.get('env_name', '?')})")


def load_any(path: str) -> ResultSet:
    """A run directory or an asv result file; :class:`~harness.cli.main.UsageError` when it is neither."""
    if os.path.isdir(path):
        return load_run(path)
    if os.path.isfile(path) and path.endswith(".json"):
        return load_asv(path)
    if not os.path.exists(path):
        raise _usage(f"{path!r} does not exist (expected a run directory or an asv result .json)")
    raise _usage(f"{path!r} is neither a run directory nor an asv result .json file")


# -- comparison ----------------------------------------------------------------------------------------

@dataclass
class Comparison:
    """One matched measurement: the numbers of both sides and the verdict."""

    label: Dict[str, Any]
    kind: str  # timed / exact / untested
    unit: str
    base: Optional[float]
    new: Optional[float]
    ratio: float = math.nan  # normalised: > 1 is worse
    ci_lo: float = math.nan
    ci_hi: float = math.nan
    p: float = math.nan
    verdict: str = "same"
    why: str = ""
    procs: Tuple[int, int] = (0, 0)  # independent processes (base, new) of a timed comparison
    ratio_rel: float = math.nan  # the ratio of the times in units of the control workload (what is judged)
    p_rel: float = math.nan
    scatter: float = math.nan  # the backend's typical process scatter (a factor, exp(sd)): the test's variance floor
    _t: Optional[Tuple[float, float, int, float, float]] = field(default=None, repr=False)  # see log_diff_stats

    @property
    def failed(self) -> bool:
        return self.verdict in ("slower", "worse")

    def name(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.label.items() if k not in KEY_COLUMNS)
        return f"{self.label.get('case', '')}" + (f" [{extra}]" if extra else "")


@dataclass
class Report:
    base: ResultSet
    new: ResultSet
    threshold: float
    alpha: float
    rows: List[Comparison] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    untested: int = 0

    @property
    def failed(self) -> List[Comparison]:
        return [r for r in self.rows if r.failed]

    def geomeans(self) -> Dict[str, Tuple[float, int]]:
        """suite -> (geometric mean of the timed ratios, count)."""
        out: Dict[str, List[float]] = {}
        for r in self.rows:
            if r.kind == "timed" and r.ratio > 0 and math.isfinite(r.ratio):
                out.setdefault(str(r.label.get("suite")), []).append(math.log(r.ratio))
        return {s: (math.exp(sum(v) / len(v)), len(v)) for s, v in out.items()}


def judge_exact(metric: str, unit: str, base: float, new: float, dtype: Optional[str],
                tol: Optional[float] = None) -> Tuple[str, str]:
    """(verdict, why) for a deterministic metric: ``same``/``worse``/``better``/``changed``."""
    rule = exact_rule(metric, unit) or ExactRule("", 0, 0.0, 0.0)
    if base is None or new is None or not (math.isfinite(base) or math.isfinite(new)):
        return ("same", "both non-finite") if base == new else ("worse", f"{base} -> {new}")
    if not math.isfinite(new):
        return "worse", f"became non-finite ({new})"
    if tol is not None and abs(new) > tol and rule.direction > 0:
        return "worse", f"{new:.3g} exceeds its tolerance {tol:.3g}"
    if rule.direction > 0 and rule.growth > 1.0:  # errors (signed ones judged by magnitude)
        floor = ERROR_FLOOR.get(str(dtype), ERROR_FLOOR["float64"])
        limit = max(rule.growth * abs(base), floor)
        if abs(new) > limit:
            return "worse", f"{base:.3g} -> {new:.3g}, past max({rule.growth:g}x base, {floor:g})"
        better = abs(new) < abs(base) / rule.growth and abs(base) > floor
        return ("better" if better else "same"), f"within max({rule.growth:g}x, {floor:g})"
    band = rule.rtol * abs(base) + rule.atol
    d = new - base
    if abs(d) <= band:
        return "same", f"|change| {abs(d):.3g} <= {band:.3g}"
    if rule.direction == 0:
        return "changed", f"{base:.6g} -> {new:.6g} (tolerance {band:.3g})"
    worse = d > 0 if rule.direction > 0 else d < 0
    return ("worse" if worse else "better"), f"{base:.6g} -> {new:.6g} (tolerance {band:.3g})"


def _timed_entry(e: Entry) -> bool:
    m = str(e.label.get("metric"))
    return (e.status == "ok" and e.samples is not None and m not in DERIVED and m not in CONTEXT
            and (e.unit in TIME_UNITS or m.startswith("time_")) and exact_rule(m, e.unit) is None)


def _twin_key(key: Tuple) -> Tuple:
    """The key of the ``*_per_control`` twin of a timing's key."""
    return tuple(sorted((k, v + PER_CONTROL if k == "metric" else v) for k, v in key))


def _twin(base: ResultSet, new: ResultSet, k: Tuple) -> Optional[Tuple[Entry, Entry]]:
    """Both sides' per-control twins of timing ``k`` when they can be judged against each other, else None."""
    tk = _twin_key(k)
    tb, tn = base.entries.get(tk), new.entries.get(tk)
    if tb is None or tn is None or tb.status != "ok" or tn.status != "ok" or tb.samples is None or tn.samples is None:
        return None
    if tb.control is None or tb.control != tn.control:
        return None
    return tb, tn


def _verdict(c: Comparison, judged: float, significant: bool, basis: str, procs_ok: bool, same_machine: bool,
             threshold: float, alpha: float) -> None:
    """Set ``c.verdict`` and ``c.why`` from the judged ratio and whether it is significant."""
    past = judged > threshold or judged < 1.0 / threshold
    if not same_machine:  # only with across_machines (compare_sets refuses otherwise): a number, not a verdict
        c.verdict = "descriptive"
        c.why = (f"different machines: {'per control ' + format(c.ratio_rel, '.3f') + ', ' if math.isfinite(c.ratio_rel) else ''}"
                 f"time ratio {c.ratio:.3f}, not judged")
    elif significant and past:
        c.verdict = "slower" if judged > threshold else "faster"
        c.why = ("" if math.isfinite(c.ratio_rel) else f"ratio {c.ratio:.3f}, ") + f"{basis} (threshold {threshold:g})"
    elif past:
        c.verdict = "inconclusive"
        c.why = (f"ratio {judged:.3f} past {threshold:g}, but " +
                 (basis if not procs_ok else f"the processes disagree ({basis}, alpha {alpha:g})"))
    else:
        c.verdict = "same"
        c.why = basis if not significant else f"significant but within {threshold:g} ({basis})"


def _judge_timed(rep: "Report", same_machine: bool, threshold: float, alpha: float) -> None:
    """Verdicts of the timed comparisons of two run directories.

    Each is judged on its per-control ratio when it has one (else the raw one): a t-test over the processes whose
    variance is at least the *typical process variance of its framework family* in this comparison (the upper
    quartile over the family's cases, :data:`SCATTER_QUANTILE`). A few processes that agree by chance are not
    believed more than the family's processes usually agree: on a shared machine a torch or JAX case's processes
    scatter by 10-40 % with a heavy tail, and the processes of one side landing close together, a mode apart from
    the other side's, is common enough to fake a slowdown. The family (the runtime a backend's worker shares:
    torch, torch-cell and torch-compile are one) rather than the backend, because the scatter comes from the
    runtime (its thread pool, allocator, JIT) and a variant with only a case or two cannot estimate its own. The
    NumPy reference's processes agree to about 1-3 %, so its floor is low and a small change still shows. A family
    with fewer than :data:`SCATTER_MIN_CASES` cases in the comparison takes the quantile over all cases.
    """
    groups: Dict[Tuple, List[Comparison]] = {}
    for c in rep.rows:
        if c.kind == "timed" and c._t is not None and not c.verdict.startswith("not"):
            b, dev = c.label.get("backend"), c.label.get("device")
            fam = rep.base.family(b, dev) if f"{b}@{dev}" in rep.base.families else rep.new.family(b, dev)
            groups.setdefault((c.label.get("suite"), fam, dev), []).append(c)
    everything = [c for items in groups.values() for c in items]
    for items in groups.values():
        pool = items if len(items) >= SCATTER_MIN_CASES else everything
        floor = process_variance_floor([c._t[1] for c in pool], SCATTER_QUANTILE)
        for c in items:
            d, var, df, nb, nn = c._t
            v = max(var, floor) if math.isfinite(var) else var
            p = t_logs_p_from(d, v, df, nb, nn)
            c.scatter = math.exp(math.sqrt(floor))
            rel = math.isfinite(c.ratio_rel)
            if rel:
                c.p_rel = p
            else:
                c.p = p
            judged = c.ratio_rel if rel else c.ratio
            spread = f"; the family's processes typically scatter x{c.scatter:.3f}" if floor > 0 else ""
            basis = (f"per control {c.ratio_rel:.3f}, p={p:.2g} over {c.procs[0]}+{c.procs[1]} processes{spread}; "
                     f"raw time ratio {c.ratio:.3f}" if rel else
                     f"p={p:.2g} over {c.procs[0]}+{c.procs[1]} processes{spread}")
            _verdict(c, judged, math.isfinite(p) and p < alpha, basis, True, same_machine, threshold, alpha)
    for c in rep.rows:  # timed comparisons that could not be judged (too few processes)
        if c.kind == "timed" and c.verdict == "same" and c._t is None and not c.why and min(c.procs or (0,)) < MIN_PROCESSES:
            basis = (f"{c.procs[0]}+{c.procs[1]} process(es): need >= {MIN_PROCESSES} per side to judge "
                     f"(rnnbench run --processes {MIN_PROCESSES})")
            _verdict(c, c.ratio_rel if math.isfinite(c.ratio_rel) else c.ratio, False, basis, False, same_machine,
                     threshold, alpha)


def compare_sets(base: ResultSet, new: ResultSet, threshold: float = DEFAULT_THRESHOLD,
                 alpha: float = DEFAULT_ALPHA, across_machines: bool = False) -> Report:
    """Match two result sets and judge every match. Raises UsageError when nothing can be compared.

    Two runs from different machines (:func:`harness.measure.records.machine_key`: CPU model, cores, GPU) are
    refused unless ``across_machines``: then deterministic metrics are judged as usual and every timing gets the
    verdict ``descriptive`` (its ratio shown, never failing): a speed difference between two machines is what one
    compares them for, not a regression."""
    if not (threshold > 1.0):
        raise InputError(f"threshold: got {threshold!r}; a ratio > 1 (e.g. 1.10 = 10 % slower)")
    rep = Report(base, new, threshold, alpha)
    same_machine = base.machine == new.machine
    if not same_machine and not across_machines:
        raise _usage(f"BASE ran on {_machine_words(base.machine)}, NEW on {_machine_words(new.machine)}: timings of "
                     "different machines are not judged. Pass --across-machines to check the deterministic metrics "
                     "and see the time ratios as descriptive numbers")
    if not same_machine:
        rep.notes.append(f"different machines: BASE {_machine_words(base.machine)} vs NEW "
                         f"{_machine_words(new.machine)}; deterministic metrics are judged, time ratios are "
                         "descriptive (not verdicts)")
    if base.preset and new.preset and base.preset != new.preset:
        rep.notes.append(f"different presets: BASE {base.preset!r} vs NEW {new.preset!r}; comparing the cases "
                         "present in both")
    if base.threads is not None and new.threads is not None and base.threads != new.threads:
        rep.notes.append(f"different thread counts: BASE {base.threads} vs NEW {new.threads}; the timings measure "
                         "that setting as well as the code")
    if base.seed is not None and new.seed is not None and base.seed != new.seed:
        rep.notes.append(f"different seeds: BASE {base.seed} vs NEW {new.seed}; the inputs and weights differ, so "
                         "deterministic metrics (errors) may differ for that reason alone")
    for name, side in (("BASE", base), ("NEW", new)):
        if side.bad_lines:
            rep.notes.append(f"{name} has {side.bad_lines} unreadable line(s) in rows.jsonl (torn or garbage), "
                             "left out")
        if side.unfinished:
            rep.notes.append(f"{name} has {side.unfinished} measurement(s) of cases that never finished (an "
                             "interrupted run?): resume it to complete them")
        if side.foreign_load is not None and side.foreign_load > FOREIGN_LOAD_NOTE:
            rep.notes.append(f"{name} ran while other work loaded the machine (load average up to "
                             f"{side.foreign_load:.1f} beyond its own threads): its timings may be slow")
    common = [k for k in base.entries if k in new.entries]
    only_b, only_n = len(base.entries) - len(common), len(new.entries) - len(common)
    if only_b or only_n:
        rep.notes.append(f"{only_b} measurement(s) only in BASE and {only_n} only in NEW are left out")
    if not common:
        raise _usage("nothing to compare: no case/metric appears in both runs"
                     + ("; " + "; ".join(rep.notes) if rep.notes else ""))
    for side in (base, new):
        timed = [e for e in side.entries.values() if e.label["metric"] not in DERIVED and
                 (e.unit in TIME_UNITS or e.label["metric"].startswith("time_"))]
        if timed and not any(e.samples is not None or e.ci99 is not None for e in timed):
            raise _usage(f"{side.source}: no raw samples in any of its {len(timed)} timing row(s); cannot test "
                         "for significance (was it written by an old version, or are all rows failures?)")
    ctl_b = {e.control for e in base.entries.values() if e.control}
    ctl_n = {e.control for e in new.entries.values() if e.control}
    if ctl_b and ctl_n and not ctl_b & ctl_n:
        rep.notes.append(f"the runs timed against different control workloads (BASE {', '.join(sorted(ctl_b))}; "
                         f"NEW {', '.join(sorted(ctl_n))}): timings are judged on raw times only")
    machine: List[float] = []  # log(raw ratio / per-control ratio): how much slower the machine itself ran
    for k in common:
        b, n = base.entries[k], new.entries[k]
        metric = str(b.label["metric"])
        if metric.endswith(PER_CONTROL):  # judged as part of its timing's comparison
            rep.untested += 1
            continue
        unit = n.unit or b.unit
        c = Comparison(b.label, "untested", unit, b.value, n.value)
        if b.status != "ok" or n.status != "ok":
            c.verdict = "not comparable"
            c.why = f"status {b.status} -> {n.status}" + (f": {n.reason or b.reason}"[:120] if (n.reason or b.reason) else "")
            c.kind = "timed" if (b.samples is not None or n.samples is not None) else "exact"
            if exact_rule(metric, unit) is None and not (b.samples is not None or n.samples is not None):
                rep.untested += 1
                continue
            if n.status != "ok" and b.status == "ok" and n.status in ("error", "timeout", "oom"):
                c.verdict, c.why = "worse", f"was ok, now {n.status}: {n.reason}"[:160]
            rep.rows.append(c)
            continue
        if metric in DERIVED or metric in CONTEXT:
            rep.untested += 1
            continue
        rule = exact_rule(metric, unit)
        if rule is not None and b.samples is None and n.samples is None:
            c.kind = "exact"
            c.verdict, c.why = judge_exact(metric, unit, b.value, n.value, b.label.get("dtype"), n.tol)
            if b.value and n.value is not None and b.value != 0:
                c.ratio = n.value / b.value
            rep.rows.append(c)
            continue
        hb = higher_is_better(metric, unit)
        procs_ok = True
        if b.samples is not None and n.samples is not None and len(b.samples) and len(n.samples):
            c.kind = "timed"
            st = process_ratio_stats(b.groups(), n.groups(), higher_better=hb)
            c.ratio, c.ci_lo, c.ci_hi, c.p = st["ratio"], st["ci_lo"], st["ci_hi"], st["p"]
            c.procs = (st["procs_base"], st["procs_new"])
            procs_ok = min(c.procs) >= MIN_PROCESSES
            twin = _twin(base, new, k) if not hb else None
            judged_groups = (b.groups(), n.groups(), hb)
            if twin is not None:
                rt = process_ratio_stats(twin[0].groups(), twin[1].groups())
                if min(rt["procs_base"], rt["procs_new"]) >= MIN_PROCESSES:
                    c.ratio_rel, c.p_rel, c.ci_lo, c.ci_hi = rt["ratio"], rt["p"], rt["ci_lo"], rt["ci_hi"]
                    judged_groups = (twin[0].groups(), twin[1].groups(), False)
                    if c.ratio > 0 and c.ratio_rel > 0:
                        machine.append(math.log(c.ratio / c.ratio_rel))
            if procs_ok:
                c._t = log_diff_stats(*judged_groups)
            rep.rows.append(c)
            continue
        elif b.ci99 is not None and n.ci99 is not None and b.value and n.value:
            c.kind = "timed"
            c.ratio = (b.value / n.value) if hb else (n.value / b.value)
            significant = n.ci99[0] > b.ci99[1] or n.ci99[1] < b.ci99[0]
            _verdict(c, c.ratio, significant, "99% CIs " + ("apart" if significant else "overlap"), True,
                     same_machine, threshold, alpha)
            rep.rows.append(c)
            continue
        rep.untested += 1
    _judge_timed(rep, same_machine, threshold, alpha)
    if machine and same_machine:
        speed = math.exp(float(np.median(machine)))
        if not 1 / 1.05 <= speed <= 1.05:
            rep.notes.append(f"the machine itself ran {speed:.2f}x as long in NEW as in BASE (the control workload's "
                             "time): raw time ratios include that; verdicts are taken per control and do not")
    if not rep.rows or all(r.verdict == "not comparable" for r in rep.rows):
        raise _usage("nothing comparable: every common measurement lacks samples or a deterministic value"
                     + ("; " + "; ".join(rep.notes) if rep.notes else ""))
    return rep


def _machine_words(key: str) -> str:
    """A machine key (``cpu|cores|gpu``) as words for a message."""
    cpu, _, rest = str(key).partition("|")
    cores, _, gpu = rest.partition("|")
    return f"'{cpu}' ({cores} cores" + (f", GPU {gpu}" if gpu and gpu not in ("-", "None") else "") + ")"


# -- output --------------------------------------------------------------------------------------------

def _fmt(v: Optional[float]) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and (abs(v) >= 1e5 or (abs(v) < 1e-3 and v != 0)):
        return f"{v:.3g}"
    return f"{v:.4g}"


def _table(rep: Report) -> Tuple[List[str], List[List[str]]]:
    head = ["suite", "case", "backend", "metric", "base", "new", "ratio", "per control", "95% CI", "p", "procs",
            "verdict"]
    body = []
    for r in sorted(rep.rows, key=lambda r: (not r.failed, str(r.label.get("suite")), r.name(),
                                              str(r.label.get("metric")))):
        ci = f"[{r.ci_lo:.3f}, {r.ci_hi:.3f}]" if math.isfinite(r.ci_lo) else "-"
        body.append([str(r.label.get("suite") or ""), r.name(), str(r.label.get("backend") or ""),
                     str(r.label.get("metric")), _fmt(r.base), _fmt(r.new),
                     f"{r.ratio:.3f}" if math.isfinite(r.ratio) else "-",
                     f"{r.ratio_rel:.3f}" if math.isfinite(r.ratio_rel) else "-", ci,
                     f"{(r.p_rel if math.isfinite(r.ratio_rel) else r.p):.2g}"
                     if math.isfinite(r.p_rel if math.isfinite(r.ratio_rel) else r.p) else "-",
                     f"{r.procs[0]}/{r.procs[1]}" if r.kind == "timed" and any(r.procs) else "-", r.verdict])
    return head, body


def format_text(rep: Report) -> str:
    head, body = _table(rep)
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    lines = [f"BASE {rep.base.label}  vs  NEW {rep.new.label}   (threshold {rep.threshold:g}, alpha {rep.alpha:g};"
             " ratio = new/base normalised so > 1 is worse)"]
    lines += [f"note: {n}" for n in rep.notes]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    lines.append("")
    for s, (g, k) in sorted(rep.geomeans().items()):
        lines.append(f"geometric-mean ratio {s}: {g:.3f} over {k} timed measurement(s)")
    lines.append(summary_line(rep))
    return "\n".join(lines)


def summary_line(rep: Report) -> str:
    counts: Dict[str, int] = {}
    for r in rep.rows:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    tail = f"; {rep.untested} derived/single-value row(s) not judged" if rep.untested else ""
    # 'same' on too few processes means the ratio stayed within the threshold, not that a test found no change
    thin = sum(1 for r in rep.rows if r.kind == "timed" and r.verdict == "same" and r.procs != (0, 0)
               and min(r.procs) < MIN_PROCESSES)
    if thin:
        tail += (f"; {thin} 'same' within the threshold but untested (fewer than {MIN_PROCESSES} processes on a "
                 f"side: rnnbench run --processes {MIN_PROCESSES})")
    if rep.failed:
        worst = ", ".join(f"{r.label.get('case')}/{r.label.get('metric')} ({r.why})" for r in rep.failed[:5])
        return f"REGRESSION: {len(rep.failed)} of {len(rep.rows)} ({parts}{tail}): {worst}"
    inc = [r for r in rep.rows if r.verdict == "inconclusive"]
    if inc:
        few = sum(1 for r in inc if min(r.procs) < MIN_PROCESSES)
        why = (f"{few} with fewer than {MIN_PROCESSES} processes on a side" if few else "") + \
              (", " if few and few < len(inc) else "") + \
              (f"{len(inc) - few} whose processes disagree" if few < len(inc) else "")
        return (f"OK: no regression shown in {len(rep.rows)} comparison(s) ({parts}{tail}); INCONCLUSIVE: "
                f"{len(inc)} past the threshold but not judged ({why})")
    return f"OK: no regression in {len(rep.rows)} comparison(s) ({parts}{tail})"


def format_markdown(rep: Report) -> str:
    head, body = _table(rep)
    status = "❌ regression" if rep.failed else "✅ no regression"
    out = [f"### rnnbench compare: {status}", "",
           f"BASE `{rep.base.label}` vs NEW `{rep.new.label}`; threshold {rep.threshold:g}, alpha {rep.alpha:g}; "
           "ratio = new/base, normalised so that > 1 is worse.", ""]
    out += [f"> note: {n}" for n in rep.notes]
    if rep.notes:
        out.append("")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join("---" for _ in head) + "|")
    for row in body:
        row = row[:-1] + [f"**{row[-1]}**" if row[-1] in ("slower", "worse") else row[-1]]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    out.append("")
    for s, (g, k) in sorted(rep.geomeans().items()):
        out.append(f"- geometric-mean ratio **{s}**: {g:.3f} ({k} timed)")
    out.append(f"- {summary_line(rep)}")
    return "\n".join(out) + "\n"


def write_figure(rep: Report, path: str) -> None:
    """Ratios (normalised, > 1 worse) with their 95 % CIs, one line per timed comparison, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rep.rows if r.kind == "timed" and math.isfinite(r.ratio)]
    if not rows:
        raise _usage("--figure: no timed comparisons to plot")
    rows.sort(key=lambda r: r.ratio)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * len(rows) + 1.2)))
    y = np.arange(len(rows))
    colors = {"slower": "tab:red", "faster": "tab:green"}
    for i, r in enumerate(rows):
        lo = r.ci_lo if math.isfinite(r.ci_lo) else r.ratio
        hi = r.ci_hi if math.isfinite(r.ci_hi) else r.ratio
        ax.errorbar(r.ratio, i, xerr=[[max(r.ratio - lo, 0)], [max(hi - r.ratio, 0)]], fmt="o", ms=4,
                    color=colors.get(r.verdict, "tab:gray"), capsize=2)
    ax.axvline(1.0, color="k", lw=0.8)
    for t in (rep.threshold, 1 / rep.threshold):
        ax.axvline(t, color="tab:red", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r.label.get('backend') or ''} {r.name()} {r.label.get('metric')}"[:70] for r in rows],
                       fontsize=7)
    ax.set_xlabel("new / base (ratio of medians, > 1 slower; 95 % bootstrap CI)")
    ax.set_title(f"{rep.new.label} vs {rep.base.label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cli_compare(args) -> int:
    """``rnnbench compare BASE NEW [--threshold R] [--markdown F] [--figure F]``; returns the exit code."""
    threshold = DEFAULT_THRESHOLD if args.threshold is None else float(args.threshold)
    if not (threshold > 1.0 and math.isfinite(threshold)):
        raise _usage(f"--threshold: got {threshold!r}; a ratio > 1 such as 1.10 (10 % slower fails)")
    alpha = DEFAULT_ALPHA if args.alpha is None else float(args.alpha)
    if not 0 < alpha < 1:
        raise _usage(f"--alpha: got {alpha!r}; a probability in (0, 1) such as 0.01")
    from harness.measure.safe_files import check_output_path
    for opt in ("markdown", "figure"):
        if getattr(args, opt, None) is not None:
            check_output_path(getattr(args, opt), f"--{opt}")
    base, new = load_any(args.base), load_any(args.new)
    if base.kind != new.kind:
        raise _usage(f"cannot compare a {base.kind} ({args.base}) with a {new.kind} ({args.new}); give two run "
                     "directories or two asv result files")
    rep = compare_sets(base, new, threshold, alpha, across_machines=bool(getattr(args, "across_machines", False)))
    for n in rep.notes:
        print(f"rnnbench compare: warning: {n}", file=sys.stderr)
    print(format_text(rep))
    if getattr(args, "markdown", None):
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(format_markdown(rep))
        print(f"markdown: {args.markdown}")
    if getattr(args, "figure", None):
        write_figure(rep, args.figure)
        print(f"figure: {args.figure}")
    return 1 if rep.failed else 0
