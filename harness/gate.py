"""The CI performance gate: this tree against another revision, on one machine, in one environment.

``rnnbench gate [--base REV]`` (default REV: the merge-base with ``main``, else ``HEAD~1``):

1. ``git worktree add --detach`` REV into a temporary directory (removed afterwards, also on errors).
2. Runs the gate cases — by default the ``throughput`` suite's ``smoke`` cases of the ``numpy`` backend,
   forward and training — from both trees, in fresh processes interleaved A B B A A B B A … (A = base,
   B = head), so slow drifts of the machine (other jobs, turbo, thermal) hit both sides alike.
   Each process puts the tree first on ``PYTHONPATH`` (the import origin is checked), runs one thread
   (``OMP_NUM_THREADS=1`` …, ``Backend.set_threads(1)``), pinned to one core, and for every case builds
   the suite's own data (``suites.throughput.make_data``) and times the backend's prepared callable
   (``prepare_forward``/``prepare_train``) with ``harness.timing.Timer`` for a fixed number of samples.
   The first process of each side also runs the suite's equivalence check (``equivalence_error``).
3. Decides: a (case, mode) is *flagged* when the ratio of median times head/base exceeds the threshold
   **and** a one-sided Mann–Whitney U test says head is slower (p < alpha). Flagged cases are re-run
   (fresh interleaved processes); the gate fails (exit 1) only if the re-run flags them again
   (false-alarm probability about p²). A deterministic check fails at once: the head's equivalence error
   past its tolerance.

The defaults (threshold, alpha, rounds, samples) were chosen from measured A/A and injected-slowdown
trials on a 2-core machine: see :mod:`harness.gate_trials` and the README.

Exit codes: 0 pass (or skipped with a stated reason: no previous commit), 1 a confirmed slowdown or a
failed deterministic check, 2 bad input (unknown REV, not a git repository, base tree that does not import).
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: Defaults, from the trials (harness/gate_trials.py) on the 2-core machine, load ~1, 12+12 processes x 5 samples,
#: per-process medians, random layout pad: threshold 1.05 / alpha 0.01 gave 0/20 A/A false alarms and caught the
#: 1.25x LSTM slowdown in 10/20 trials (1.10x: 2/10); alpha 0.05 gives 1/20 and 16/20. (The earlier pooled-sample
#: test, 6+6 x 10, caught more but failed A/A runs between trees whose paths differ in length: memory layout.)
DEFAULT_THRESHOLD = 1.05
DEFAULT_ALPHA = 0.01
DEFAULT_ROUNDS = 12         # processes per side (interleaved A B B A ...); the unit of the rank test
DEFAULT_SAMPLES = 5         # timed samples per case and mode in each process (their median is used)
DEFAULT_WARMUP = 2
DEFAULT_SUITE = "throughput"
DEFAULT_PRESET = "smoke"
DEFAULT_BACKENDS = ("numpy",)
WORKER_TIMEOUT_S = 180.0
TOTAL_TIMEOUT_S = 600.0
_MARK = "@@RNNBENCH_GATE@@"
_WORKER_RUN_NAME = "__rnnbench_gate_worker__"


def _usage(msg: str):
    from harness.cli import UsageError
    return UsageError(msg)


# -- git -------------------------------------------------------------------------------------------------

def _git(repo: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, timeout=60, check=check)


def repo_root(path: str) -> str:
    """The top of the git working tree holding ``path``; UsageError when there is none."""
    if not os.path.isdir(path):
        raise _usage(f"--repo: {path!r} is not a directory")
    r = _git(path, "rev-parse", "--show-toplevel")
    if r.returncode != 0:
        raise _usage(f"--repo: {path!r} is not inside a git repository ({r.stderr.strip() or 'git failed'})")
    return r.stdout.strip()


def resolve_rev(repo: str, rev: str) -> str:
    """The full commit id of ``rev``; UsageError naming it when it does not exist."""
    if not rev or rev.startswith("-"):
        raise _usage(f"--base: got {rev!r}; expected a revision (commit, branch, tag, HEAD~1)")
    r = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if r.returncode != 0 or not r.stdout.strip():
        raise _usage(f"--base: revision {rev!r} does not exist in {repo} (try `git log --oneline` for one that does)")
    return r.stdout.strip()


def default_base(repo: str) -> Tuple[Optional[str], str]:
    """(commit, how it was chosen), or (None, why there is none): merge-base with main, else HEAD~1."""
    head = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}").stdout.strip()
    if not head:
        return None, "the repository has no commit yet"
    for ref in ("main", "origin/main", "master", "origin/master"):
        if _git(repo, "rev-parse", "--verify", "--quiet", ref).returncode != 0:
            continue
        mb = _git(repo, "merge-base", "HEAD", ref).stdout.strip()
        if mb and mb != head:
            return mb, f"merge-base of HEAD and {ref}"
        break
    prev = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD~1^{commit}").stdout.strip()
    if prev:
        return prev, "HEAD~1"
    if _git(repo, "rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        return None, ("this is a shallow clone without HEAD's parent (fetch it with `git fetch --deepen=1`, "
                      "or check out with fetch-depth 2)")
    return None, "HEAD is the first commit (no previous commit to compare against)"


#: what can change the gated numbers; a change elsewhere (docs, results) cannot
CODE_PATHSPECS = ("*.py", "pyproject.toml", "constraints.txt")


def code_changed(repo: str, commit: str) -> bool:
    """Whether any code file differs between ``commit`` and the working tree (untracked .py files count)."""
    diff = _git(repo, "diff", "--quiet", commit, "--", *CODE_PATHSPECS)
    if diff.returncode != 0:
        return True
    untracked = _git(repo, "ls-files", "--others", "--exclude-standard", "--", *CODE_PATHSPECS).stdout.strip()
    return bool(untracked)


class Worktree:
    """``git worktree add --detach`` of a commit in a temporary directory; removed on exit."""

    def __init__(self, repo: str, commit: str) -> None:
        self.repo, self.commit = repo, commit
        self.tmp = tempfile.mkdtemp(prefix="rnnbench-gate-")
        self.path = os.path.join(self.tmp, "base")

    def __enter__(self) -> str:
        r = _git(self.repo, "worktree", "add", "--detach", "--force", self.path, self.commit)
        if r.returncode != 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise _usage(f"--base: cannot check out {self.commit[:12]} into a worktree: {r.stderr.strip()}")
        return self.path

    def __exit__(self, *exc) -> None:
        _git(self.repo, "worktree", "remove", "--force", self.path)
        shutil.rmtree(self.tmp, ignore_errors=True)
        _git(self.repo, "worktree", "prune")


# -- the worker (runs in a fresh interpreter with the tree first on sys.path) ------------------------------

def _worker(payload: Dict[str, Any]) -> Dict[str, Any]:
    """Time the gate cases of one tree. Imports only what the tree provides (plus the environment)."""
    tree = payload["tree"]
    if payload.get("pin") is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(payload["pin"])})
    sys.path.insert(0, tree)
    out: Dict[str, Any] = {"results": [], "checks": [], "modules": {}}
    try:
        from suites.base import get_suite
        suite = get_suite(payload["suite"])
        tp = sys.modules[type(suite).__module__]
        make_data = getattr(tp, "make_data")
        from harness import backends as registry
        from harness.timing import Timer
    except Exception as e:  # noqa: BLE001 - reported to the parent, which decides the exit code
        out["import_error"] = f"{type(e).__name__}: {e}"
        return out
    name = payload["backend"]
    cases = [c for c in suite.cases(payload["preset"], [name], "cpu") if c.backend == name]
    want = payload.get("only")  # [[case, mode], ...] for confirmation re-runs
    pats = payload.get("patterns") or []
    if pats:
        cases = [c for c in cases if any(p in c.name for p in pats)]
    try:
        backend = registry.get(name, "cpu")
    except Exception as e:  # noqa: BLE001
        out["import_error"] = f"backend {name!r}: {type(e).__name__}: {e}"
        return out
    backend.set_threads(int(payload["threads"]))
    mods = ["suites.base", type(suite).__module__, type(backend).__module__, "harness.timing"]
    out["modules"] = {m: getattr(sys.modules.get(m), "__file__", None) for m in mods}
    n = int(payload["samples"])
    for case in cases:
        modes = [m for m in (case.settings.get("modes") or "fwd,train").split(",") if m]
        if want is not None:
            modes = [m for m in modes if [case.name, m] in want]
            if not modes:
                continue
        spec, dtype = case.spec(), case.dtype or "float32"
        try:
            data = make_data(spec, case.batch, case.seq_len, int(payload["seed"]))
            if payload.get("checks") and hasattr(tp, "equivalence_error"):
                t_check = min(case.seq_len, getattr(tp, "CHECK_MAX_T", case.seq_len))
                got = tp.equivalence_error(backend, spec, data, dtype, t_check)
                err, where = (got[0], got[1]) if isinstance(got, tuple) else (got, "")
                tol = getattr(tp, "REL_TOL", {}).get(dtype)
                out["checks"].append({"case": case.name, "metric": "equiv_error", "value": err, "tol": tol,
                                      "where": where})
            low = data.cast(dtype)
            for mode in modes:
                if mode == "fwd":
                    fn = backend.prepare_forward(spec, low.params, low.x, low.state)
                else:
                    fn = backend.prepare_train(spec, low.params, low.x, low.state, low.dy, low.d_state)
                m = Timer(fn, warmup=int(payload["warmup"]), min_runs=n, max_runs=n, budget_s=1e9,
                          target_rel_iqr=0.0).run()
                out["results"].append({"case": case.name, "mode": mode, "samples": [float(s) for s in m.samples],
                                       "number": int(getattr(m, "number", 1))})
        except Exception as e:  # noqa: BLE001
            out["results"].append({"case": case.name, "mode": "*", "error": f"{type(e).__name__}: {e}"})
    return out


def _worker_entry() -> None:
    payload = json.loads(sys.stdin.read())
    try:
        res = _worker(payload)
    except Exception as e:  # noqa: BLE001
        res = {"import_error": f"{type(e).__name__}: {e}", "results": [], "checks": []}
    sys.stdout.write("\n" + _MARK + json.dumps(res) + "\n")
    sys.stdout.flush()


# -- the parent ------------------------------------------------------------------------------------------

@dataclass
class GateConfig:
    """Everything that decides what the gate measures and how it judges."""

    backends: Tuple[str, ...] = DEFAULT_BACKENDS
    suite: str = DEFAULT_SUITE
    preset: str = DEFAULT_PRESET
    patterns: Tuple[str, ...] = ()
    rounds: int = DEFAULT_ROUNDS
    samples: int = DEFAULT_SAMPLES
    warmup: int = DEFAULT_WARMUP
    threshold: float = DEFAULT_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    threads: int = 1
    pin: Optional[int] = -1  # -1: the last core this process may use; None: no pinning
    seed: int = 0
    confirm: bool = True

    def validate(self) -> None:
        if not (self.threshold > 1.0 and math.isfinite(self.threshold)):
            raise _usage(f"--threshold: got {self.threshold!r}; a ratio > 1 (e.g. 1.10 = 10 % slower fails)")
        if not (0 < self.alpha < 1):
            raise _usage(f"--alpha: got {self.alpha!r}; a probability in (0, 1)")
        for k in ("rounds", "samples"):
            if int(getattr(self, k)) < 1:
                raise _usage(f"--{k}: got {getattr(self, k)!r}; an integer >= 1")
        if self.rounds * self.samples < 6:
            raise _usage(f"--rounds x --samples = {self.rounds * self.samples}: the rank test needs >= 6 samples a side")


@dataclass
class Verdict:
    backend: str
    case: str
    mode: str
    base_ms: float
    head_ms: float
    ratio: float
    ci_lo: float
    ci_hi: float
    p: float
    flagged: bool
    confirm: Optional["Verdict"] = None
    n: Tuple[int, int] = (0, 0)

    @property
    def failed(self) -> bool:
        return self.flagged and (self.confirm is not None and self.confirm.flagged)


@dataclass
class GateResult:
    head: str
    base: str
    base_desc: str
    config: GateConfig
    verdicts: List[Verdict] = field(default_factory=list)
    checks: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    wall_s: float = 0.0
    processes: int = 0

    @property
    def failed_checks(self) -> List[Dict[str, Any]]:
        return [c for c in self.checks if c.get("failed")]

    @property
    def passed(self) -> bool:
        return not (any(v.failed for v in self.verdicts) or self.failed_checks or self.errors)


class BaseTreeError(Exception):
    """The base tree cannot run its gate cases (a usage problem: exit 2)."""


def _pin_core(cfg: GateConfig) -> Optional[int]:
    if cfg.pin is None or not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    return cores[-1] if cfg.pin == -1 else int(cfg.pin)


def _env(tree: str, threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = tree + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONHASHSEED"] = "0"
    env.pop("PYTHONSTARTUP", None)
    return env


def run_worker(tree: str, backend: str, cfg: GateConfig, only: Optional[List[List[str]]] = None,
               checks: bool = False, timeout: float = WORKER_TIMEOUT_S) -> Dict[str, Any]:
    """One fresh process timing the gate cases of ``tree``; its parsed report (``error`` key on failure)."""
    payload = {"tree": os.path.abspath(tree), "backend": backend, "suite": cfg.suite, "preset": cfg.preset,
               "patterns": list(cfg.patterns), "samples": cfg.samples, "warmup": cfg.warmup, "seed": cfg.seed,
               "threads": cfg.threads, "pin": _pin_core(cfg), "only": only, "checks": checks}
    boot = ("import runpy, sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
            f"runpy.run_path({os.path.abspath(__file__)!r}, run_name={_WORKER_RUN_NAME!r})")
    env = _env(os.path.abspath(tree), cfg.threads)
    # Memory layout (stack and heap offsets) shifts with the size of the environment, and the two trees'
    # paths differ in length: a fixed layout difference alone made identical code measure 1.5x apart in
    # A/A runs. A random pad per process turns that bias into noise, which the per-process test absorbs.
    env["RNNBENCH_GATE_LAYOUT_PAD"] = "x" * random.randrange(0, 4096)
    try:
        r = subprocess.run([sys.executable, "-c", boot], input=json.dumps(payload), capture_output=True, text=True,
                           env=env, cwd=tempfile.gettempdir(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:.0f} s"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith(_MARK):
            res = json.loads(line[len(_MARK):])
            if res.get("import_error"):
                res["error"] = res["import_error"]
            res["error"] = res.get("error") or _origin_problem(tree, res.get("modules", {}))
            return res
    tail = (r.stderr.strip().splitlines() or ["(no output)"])[-3:]
    return {"error": f"worker exited with code {r.returncode}: " + " | ".join(tail)}


def _origin_problem(tree: str, modules: Dict[str, Optional[str]]) -> Optional[str]:
    """A module that the tree provides but that was imported from elsewhere (an install shadowing it)."""
    tree = os.path.realpath(tree)
    for mod, path in modules.items():
        if not path:
            continue
        rel = mod.replace(".", os.sep)
        provides = os.path.exists(os.path.join(tree, rel + ".py")) or \
            os.path.exists(os.path.join(tree, rel, "__init__.py"))
        if provides and not os.path.realpath(path).startswith(tree + os.sep):
            return f"{mod} was imported from {path}, not from the tree {tree} (an installed copy shadows it)"
    return None


def _order(rounds: int) -> List[str]:
    """A B B A A B B A ...: each side goes first equally often, drifts cancel to first order."""
    out: List[str] = []
    for i in range(rounds):
        out += ["A", "B"] if i % 2 == 0 else ["B", "A"]
    return out


def measure(trees: Dict[str, str], backend: str, cfg: GateConfig, only: Optional[List[List[str]]] = None,
            checks: bool = True, log=None, deadline: Optional[float] = None,
            record: Optional[List[Dict[str, Any]]] = None
            ) -> Tuple[Dict[Tuple[str, str], Dict[str, List[float]]], List[Dict[str, Any]], List[str]]:
    """Interleaved runs of both trees: ({(case, mode): {"A": samples, "B": samples}}, checks, head errors).

    Samples are in ms. ``record`` (a list) receives each process's raw results in order, for the trials.
    Raises :class:`BaseTreeError` when the base tree (A) cannot run.
    """
    samples: Dict[Tuple[str, str], Dict[str, List[float]]] = {}
    chk: List[Dict[str, Any]] = []
    errors: List[str] = []
    first = {"A": True, "B": True}
    for side in _order(cfg.rounds):
        if deadline is not None and time.monotonic() > deadline:
            errors.append(f"time limit reached: stopped after {sum(len(v['A']) for v in samples.values())} samples")
            break
        res = run_worker(trees[side], backend, cfg, only=only, checks=checks and first[side])
        if res.get("error"):
            if side == "A":
                raise BaseTreeError(f"the base tree {trees['A']} cannot run the gate cases: {res['error']}")
            errors.append(f"the head tree cannot run the gate cases: {res['error']}")
            break
        if first[side]:
            for c in res.get("checks", []):
                chk.append({**c, "side": side, "backend": backend})
        first[side] = False
        if record is not None:
            record.append({"side": side, "results": [{k: r.get(k) for k in ("case", "mode", "samples")}
                                                     for r in res.get("results", []) if not r.get("error")]})
        for r in res.get("results", []):
            if r.get("error"):
                (errors if side == "B" else []).append(f"{r['case']}: {r['error']}")
                if side == "A":
                    raise BaseTreeError(f"the base tree fails on {r['case']}: {r['error']}")
                continue
            # seconds per call -> ms; each process's median is kept apart: the process is the unit of
            # replication (a process that lands on a slow spell is slow in all its samples)
            ms = [1e3 * s for s in r["samples"]]
            entry = samples.setdefault((r["case"], r["mode"]), {"A": [], "B": [], "A_proc": [], "B_proc": []})
            entry[side].extend(ms)
            if ms:
                entry[side + "_proc"].append(float(sorted(ms)[len(ms) // 2]) if len(ms) % 2 else
                                             0.5 * (sorted(ms)[len(ms) // 2 - 1] + sorted(ms)[len(ms) // 2]))
        if log:
            log(side)
    return samples, chk, errors


#: fewest processes per side for the per-process test (Mann-Whitney on 3+3 can reach p = 0.05 only)
MIN_PROCESSES = 3


def gate_stats(s: Dict[str, List[float]]) -> Dict[str, float]:
    """Ratio head/base, CI and one-sided p for one (case, mode), on per-process medians.

    Samples inside one process are not independent: on a shared VM a whole process can land on a slow
    spell (CPU steal, a noisy neighbour) and be 1.5x slower in every sample. Testing the pooled samples
    treats 10 correlated samples as 10 independent ones and false-alarms (an A/A gate on identical code
    failed that way); the per-process medians are the honest unit. Falls back to pooled samples when a
    side has fewer than :data:`MIN_PROCESSES` processes.
    """
    from harness.compare import ratio_stats
    a, b = s.get("A_proc") or [], s.get("B_proc") or []
    if len(a) >= MIN_PROCESSES and len(b) >= MIN_PROCESSES:
        return ratio_stats(a, b, alternative="greater")
    return ratio_stats(s["A"], s["B"], alternative="greater")


def judge(samples: Dict[Tuple[str, str], Dict[str, List[float]]], backend: str, threshold: float,
          alpha: float) -> List[Verdict]:
    """One verdict per (case, mode) present in both trees."""
    import numpy as np

    out = []
    for (case, mode), s in samples.items():
        if not s["A"] or not s["B"]:
            continue
        st = gate_stats(s)
        flagged = bool(st["ratio"] > threshold and st["p"] < alpha)
        out.append(Verdict(backend, case, mode, float(np.median(s["A"])), float(np.median(s["B"])), st["ratio"],
                           st["ci_lo"], st["ci_hi"], st["p"], flagged, n=(len(s["A"]), len(s["B"]))))
    return out


def judge_checks(chk: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Head's deterministic checks against their tolerance (base values shown alongside); fails at once."""
    base = {(c["backend"], c["case"], c["metric"]): c for c in chk if c["side"] == "A"}
    out = []
    for c in chk:
        if c["side"] != "B":
            continue
        b = base.get((c["backend"], c["case"], c["metric"]))
        v, tol = c.get("value"), c.get("tol")
        failed = v is None or not math.isfinite(v) or (tol is not None and v > tol)
        out.append({**c, "base_value": None if b is None else b.get("value"), "failed": bool(failed)})
    return out


def run_gate(head: str, base: str, cfg: GateConfig, base_desc: str = "", log=print,
             time_limit_s: float = TOTAL_TIMEOUT_S) -> GateResult:
    """Measure both trees, confirm flagged cases, judge. ``head``/``base`` are directories (trees)."""
    cfg.validate()
    t0 = time.monotonic()
    deadline = t0 + time_limit_s
    res = GateResult(head, base, base_desc or base, cfg)
    trees = {"A": base, "B": head}
    for backend in cfg.backends:
        samples, chk, errors = measure(trees, backend, cfg, log=None, deadline=deadline)
        res.processes += 2 * cfg.rounds
        res.errors += errors
        res.checks += judge_checks(chk)
        verdicts = judge(samples, backend, cfg.threshold, cfg.alpha)
        if not verdicts and not errors:
            res.errors.append(f"backend {backend}: no gate case ran in both trees (suite {cfg.suite!r}, preset "
                              f"{cfg.preset!r}, patterns {list(cfg.patterns) or 'all'})")
        flagged = [v for v in verdicts if v.flagged]
        if flagged and cfg.confirm:
            log(f"gate: {len(flagged)} flagged ({', '.join(f'{v.case}/{v.mode} x{v.ratio:.3f}' for v in flagged)}); "
                "confirming with a fresh interleaved re-run")
            s2, _, e2 = measure(trees, backend, cfg, only=[[v.case, v.mode] for v in flagged], checks=False,
                                deadline=deadline + 120)
            res.processes += 2 * cfg.rounds
            res.errors += e2
            again = {(v.case, v.mode): v for v in judge(s2, backend, cfg.threshold, cfg.alpha)}
            for v in flagged:
                v.confirm = again.get((v.case, v.mode))
        res.verdicts += verdicts
    res.wall_s = time.monotonic() - t0
    return res


# -- output ----------------------------------------------------------------------------------------------

def _status(v: Verdict) -> str:
    if v.failed:
        return "SLOWER (confirmed)"
    if v.flagged and v.confirm is None:
        return "flagged (not confirmed: no re-run)"
    if v.flagged:
        return f"flagged, not confirmed (re-run x{v.confirm.ratio:.3f}, p={v.confirm.p:.2g})"
    return "ok"


def format_text(res: GateResult) -> str:
    cfg = res.config
    lines = [f"gate: head {res.head} vs base {res.base_desc}",
             f"gate: {cfg.suite}/{cfg.preset} cases of {', '.join(cfg.backends)}; {cfg.rounds}+{cfg.rounds} "
             f"processes interleaved A B B A, {cfg.samples} samples each, {cfg.threads} thread(s)"
             + (f", pinned to core {_pin_core(cfg)}" if _pin_core(cfg) is not None else "")
             + f"; fail if ratio > {cfg.threshold:g} with one-sided Mann-Whitney p < {cfg.alpha:g}, confirmed by a re-run"]
    head = f"{'backend':<8} {'case':<36} {'mode':<5} {'base ms':>9} {'head ms':>9} {'ratio':>7} {'95% CI':>17} {'p':>8}  verdict"
    lines += [head, "-" * len(head)]
    for v in sorted(res.verdicts, key=lambda v: -v.ratio):
        lines.append(f"{v.backend:<8} {v.case:<36} {v.mode:<5} {v.base_ms:>9.4f} {v.head_ms:>9.4f} {v.ratio:>7.3f} "
                     f"{f'[{v.ci_lo:.3f}, {v.ci_hi:.3f}]':>17} {v.p:>8.2g}  {_status(v)}")
    for c in res.checks:
        bv = c.get("base_value")
        lines.append(f"check {c['backend']} {c['case']} {c['metric']}: head {c['value']:.3g} (base "
                     f"{'-' if bv is None else f'{bv:.3g}'}), tolerance {c.get('tol')}: "
                     f"{'FAILED' if c['failed'] else 'ok'}")
    lines += [f"note: {n}" for n in res.notes] + [f"error: {e}" for e in res.errors]
    lines.append(f"gate: {res.processes} processes, {res.wall_s:.1f} s")
    lines.append(conclusion(res))
    return "\n".join(lines)


def conclusion(res: GateResult) -> str:
    cfg = res.config
    if res.errors:
        return f"gate: FAIL: {res.errors[0]}"
    if res.failed_checks:
        c = res.failed_checks[0]
        return (f"gate: FAIL: deterministic check {c['metric']} of {c['case']} is {c['value']:.3g}, past its "
                f"tolerance {c.get('tol')}")
    bad = [v for v in res.verdicts if v.failed]
    if bad:
        return ("gate: FAIL: confirmed slowdown " + ", ".join(
            f"{v.case}/{v.mode} x{v.ratio:.3f} (re-run x{v.confirm.ratio:.3f}, p {v.p:.2g} then {v.confirm.p:.2g})"
            for v in bad))
    worst = max(res.verdicts, key=lambda v: v.ratio, default=None)
    w = f"; worst ratio {worst.ratio:.3f} ({worst.case}/{worst.mode})" if worst else ""
    return f"gate: PASS: no confirmed slowdown beyond {cfg.threshold:g} in {len(res.verdicts)} comparisons{w}"


def format_markdown(res: GateResult) -> str:
    cfg = res.config
    ok = res.passed
    out = [f"### rnnbench gate: {'✅ pass' if ok else '❌ fail'}", "",
           f"Head `{res.head}` vs base `{res.base_desc}`: {cfg.suite}/{cfg.preset} cases of "
           f"{', '.join(cfg.backends)}, {cfg.rounds}+{cfg.rounds} interleaved processes x {cfg.samples} samples, "
           f"threshold {cfg.threshold:g}, one-sided Mann-Whitney alpha {cfg.alpha:g}, confirmation re-run; "
           f"{res.wall_s:.0f} s.", "",
           "| backend | case | mode | base ms | head ms | ratio | 95% CI | p | verdict |",
           "|---|---|---|---|---|---|---|---|---|"]
    for v in sorted(res.verdicts, key=lambda v: -v.ratio):
        st = _status(v)
        out.append(f"| {v.backend} | {v.case} | {v.mode} | {v.base_ms:.4f} | {v.head_ms:.4f} | {v.ratio:.3f} | "
                   f"[{v.ci_lo:.3f}, {v.ci_hi:.3f}] | {v.p:.2g} | {'**' + st + '**' if v.failed else st} |")
    if res.checks:
        out += ["", "| check | case | head | base | tolerance | result |", "|---|---|---|---|---|---|"]
        for c in res.checks:
            out.append(f"| {c['metric']} | {c['case']} | {c['value']:.3g} | {c.get('base_value')} | {c.get('tol')} | "
                       f"{'**FAILED**' if c['failed'] else 'ok'} |")
    out += [""] + [f"- note: {n}" for n in res.notes] + [f"- error: {e}" for e in res.errors]
    out.append(f"- {conclusion(res)}")
    return "\n".join(out) + "\n"


def _write_markdown(path: Optional[str], text: str) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def config_from_args(args) -> GateConfig:
    cfg = GateConfig()
    if getattr(args, "backend", None):
        cfg.backends = tuple(args.backend)
    for attr in ("threshold", "alpha", "rounds", "samples", "preset", "suite"):
        v = getattr(args, attr, None)
        if v is not None:
            setattr(cfg, attr, v)
    if getattr(args, "case", None):
        cfg.patterns = tuple(args.case)
    if getattr(args, "no_pin", False):
        cfg.pin = None
    if getattr(args, "no_confirm", False):
        cfg.confirm = False
    cfg.validate()
    return cfg


def cli_gate(args) -> int:
    """``rnnbench gate [--base REV] [--backend B] [--threshold R] [--markdown F] [--repo DIR]``."""
    cfg = config_from_args(args)
    top = repo_root(getattr(args, "repo", None) or ".")
    md = getattr(args, "markdown", None)
    if getattr(args, "base", None):
        commit = resolve_rev(top, args.base)
        desc = f"{args.base} ({commit[:10]})"
    else:
        commit, how = default_base(top)
        if commit is None:
            msg = f"gate: skipped: {how}"
            print(msg)
            _write_markdown(md, f"### rnnbench gate: skipped\n\n{msg}\n")
            return 0
        desc = f"{how} ({commit[:10]})"
    if not getattr(args, "force", False) and not code_changed(top, commit):
        msg = (f"gate: passed without measuring: no Python file, pyproject.toml or constraints.txt differs between "
               f"{desc} and the working tree (use --force to measure anyway)")
        print(msg)
        _write_markdown(md, f"### rnnbench gate: nothing to gate\n\n{msg}\n")
        return 0
    print(f"gate: checking out {desc} into a temporary worktree", flush=True)
    with Worktree(top, commit) as base_tree:
        try:
            res = run_gate(top, base_tree, cfg, base_desc=desc)
        except BaseTreeError as e:
            raise _usage(str(e)) from None
    text = format_text(res)
    print(text)
    _write_markdown(md, format_markdown(res))
    if md:
        print(f"markdown: {md}")
    return 0 if res.passed else 1


if __name__ == _WORKER_RUN_NAME:
    _worker_entry()
