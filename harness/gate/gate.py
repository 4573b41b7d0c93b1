"""The CI performance gate: this tree against another revision, on one machine, in one environment.

``rnnbench gate [--base REV]`` (default REV: the merge-base with ``main``, else ``HEAD~1``):

1. ``git worktree add --detach`` REV into a temporary directory (removed afterwards, also on errors).
2. Runs the gate cases — by default the ``throughput`` suite's ``smoke`` cases of the ``numpy`` backend,
   forward and training — from both trees **in the same process**: each of ``rounds`` fresh processes
   imports one tree, prepares its callables, swaps that tree's modules out of ``sys.modules``, imports
   the other tree, and then times the two sides in adjacent pairs (A B B A A B …; the tree a sample
   belongs to is swapped back in before it, outside the timed region). The load order alternates
   between processes. Each process runs one thread (``OMP_NUM_THREADS=1`` …, ``Backend.set_threads(1)``)
   pinned to one core; data come from the suite's own ``make_data`` in each tree; a sample is
   ``number`` back-to-back calls of the backend's prepared callable (``prepare_forward``/``prepare_train``)
   lasting about ``sample_s``. The first process also runs each tree's equivalence check.
3. Decides: per process, the median log-ratio head/base of its pairs; a (case, mode) is *flagged* when
   exp(median over processes) exceeds the threshold **and** a one-sided Wilcoxon signed-rank test over
   the processes says head is slower (p < alpha). Flagged cases are re-run (fresh processes); the gate
   fails (exit 1) only if the re-run flags them again. A deterministic check fails at once: the head's
   equivalence error past its tolerance.

Why pairs inside one process: on a shared 2-core VM whole processes land on slow spells (1.5x in every
sample), and the memory layout of a process (environment size, path lengths) shifted identical code by
1.5-1.9x between processes in A/A runs. Comparing processes of A against processes of B has to beat that
noise; a pair inside one process does not see it at all.

The defaults (threshold, alpha, rounds, samples) were chosen from measured A/A and injected-slowdown
trials on a 2-core machine: see :mod:`harness.gate.trials` and the README.

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

#: Defaults, from the trials (``python -m harness.gate.trials``) on the 2-core machine, 16 processes x 10 pairs:
#: A/A 0/20 false alarms (first-pass ratios 0.990-1.010), an injected NumPy-LSTM slowdown of 1.05x caught 20/20
#: (measured 1.066 [1.064..1.075] on lstm/fwd), mean trial 20 s; every threshold 1.02-1.05 at alpha 0.001-0.05 gave
#: the same, 1.10 caught none. 1.03 sits halfway between the worst A/A ratio and the smallest 1.05x one.
DEFAULT_THRESHOLD = 1.03
DEFAULT_ALPHA = 0.01
DEFAULT_ROUNDS = 16         # processes, each timing both trees; the unit of the signed-rank test
DEFAULT_SAMPLES = 10        # timed pairs per case and mode in each process (their median log-ratio is used)
DEFAULT_SAMPLE_S = 0.004    # seconds of back-to-back calls in one timed sample
DEFAULT_WARMUP = 2
DEFAULT_SUITE = "throughput"
DEFAULT_PRESET = "smoke"
DEFAULT_BACKENDS = ("numpy",)
WORKER_TIMEOUT_S = 180.0
TOTAL_TIMEOUT_S = 600.0
_MARK = "@@RNNBENCH_GATE@@"
_WORKER_RUN_NAME = "__rnnbench_gate_worker__"
# No import of the project at module level: the worker runs this file by path and must import each tree's
# modules only once that tree is on sys.path.


def _usage(msg: str):
    from harness.core.errors import UsageError
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


#: A gate's temporary directory holds the pid of the gate that made it: a killed gate's is pruned by the next one.
OWNER_FILE = "owner.pid"
_TMP_PREFIX = "rnnbench-gate-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_stale_worktrees(repo: str) -> List[str]:
    """Remove the worktrees and temporary directories of gates that were killed (SIGKILL leaves them behind):
    only directories named ``rnnbench-gate-*`` in the temporary directory whose ``owner.pid`` names a process
    that no longer exists. Returns the directories removed."""
    removed = []
    tmp = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(tmp) if n.startswith(_TMP_PREFIX)]
    except OSError:
        return removed
    for n in names:
        d = os.path.join(tmp, n)
        try:
            with open(os.path.join(d, OWNER_FILE)) as f:
                text = f.read().strip()
        except OSError:
            continue  # not one of ours, or one being set up this instant
        if not text.isdigit() or _alive(int(text)) or os.path.islink(d):
            continue
        _git(repo, "worktree", "remove", "--force", os.path.join(d, "base"))
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    if removed:
        _git(repo, "worktree", "prune")
    return removed


class Worktree:
    """``git worktree add --detach`` of a commit in a temporary directory; removed on exit."""

    def __init__(self, repo: str, commit: str) -> None:
        self.repo, self.commit = repo, commit
        self.tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX)
        self.path = os.path.join(self.tmp, "base")

    def __enter__(self) -> str:
        prune_stale_worktrees(self.repo)
        with open(os.path.join(self.tmp, OWNER_FILE), "w") as f:
            f.write(f"{os.getpid()}\n")
        r = _git(self.repo, "worktree", "add", "--detach", "--force", self.path, self.commit)
        if r.returncode != 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise _usage(f"--base: cannot check out {self.commit[:12]} into a worktree: {r.stderr.strip()}")
        return self.path

    def __exit__(self, *exc) -> None:
        _git(self.repo, "worktree", "remove", "--force", self.path)
        shutil.rmtree(self.tmp, ignore_errors=True)
        _git(self.repo, "worktree", "prune")


# -- the worker (a fresh interpreter that loads both trees, one after the other) ---------------------------

def _under(path: Optional[str], tree: str) -> bool:
    return bool(path) and os.path.realpath(path).startswith(tree + os.sep)


def _tree_modules(tree: str) -> Dict[str, Any]:
    """The loaded modules whose source lies in ``tree`` (what must be swapped out before the other tree loads).

    Installed packages are never the tree's, even when the environment lives inside it (a ``.venv`` in the
    checkout): they are shared by both sides, and extension modules such as NumPy's cannot load twice.
    """
    envs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}

    def own(path: Optional[str]) -> bool:
        if not _under(path, tree) or any(_under(path, e) for e in envs):
            return False
        parts = os.path.realpath(path).split(os.sep)
        return "site-packages" not in parts and "dist-packages" not in parts

    return {n: m for n, m in list(sys.modules.items()) if own(getattr(m, "__file__", None))}


def _activate(tree: str, mods: Dict[str, Any], other: Optional[Tuple[str, Dict[str, Any]]]) -> None:
    """Make ``tree`` the one imports resolve to: its path first, its modules in ``sys.modules``.

    Done before every timed sample too, outside the timed region: code that imports lazily at call time
    must get its own tree's module, never the other tree's.
    """
    import importlib
    if other is not None:
        for n in other[1]:
            sys.modules.pop(n, None)
        while other[0] in sys.path:
            sys.path.remove(other[0])
    if not sys.path or sys.path[0] != tree:
        sys.path.insert(0, tree)
    sys.modules.update(mods)
    importlib.invalidate_caches()


def _load_side(payload: Dict[str, Any]) -> Dict[str, Any]:
    """Import the active tree's suite and backend, build its data, prepare its callables; the side's report."""
    side: Dict[str, Any] = {"fns": {}, "checks": [], "errors": [], "modules": {}, "skipped": []}
    try:
        from suites.base import get_suite
        suite = get_suite(payload["suite"])
        tp = sys.modules[type(suite).__module__]
        make_data = getattr(tp, "make_data")
        from harness import backends as registry  # the public name: every tree, old or new, has it
        backend = registry.get(payload["backend"], "cpu")
    except Exception as e:  # noqa: BLE001 - reported to the parent, which decides the exit code
        side["import_error"] = f"{type(e).__name__}: {e}"
        return side
    name = payload["backend"]
    backend.set_threads(int(payload["threads"]))
    mods = ["suites.base", type(suite).__module__, type(backend).__module__, "harness.backends"]
    side["modules"] = {m: getattr(sys.modules.get(m), "__file__", None) for m in mods}
    cases = [c for c in suite.cases(payload["preset"], [name], "cpu") if c.backend == name]
    pats = payload.get("patterns") or []
    if pats:
        cases = [c for c in cases if any(p in c.name for p in pats)]
    want = payload.get("only")  # [[case, mode], ...] for confirmation re-runs
    for case in cases:
        modes = [m for m in (case.settings.get("modes") or "fwd,train").split(",") if m]
        if want is not None:
            modes = [m for m in modes if [case.name, m] in want]
            if not modes:
                continue
        spec, dtype = case.spec(), case.dtype or "float32"
        supports = getattr(backend, "supports", None)  # a tree from before capabilities has none
        why_not = supports(spec, dtype) if callable(supports) else None
        if why_not:
            side["skipped"].append({"case": case.name, "reason": why_not})
            continue
        try:
            data = make_data(spec, case.batch, case.seq_len, int(payload["seed"]))
            if payload.get("checks") and hasattr(tp, "equivalence_error"):
                t_check = min(case.seq_len, getattr(tp, "CHECK_MAX_T", case.seq_len))
                got = tp.equivalence_error(backend, spec, data, dtype, t_check)
                err, where = (got[0], got[1]) if isinstance(got, tuple) else (got, "")
                tol = getattr(tp, "REL_TOL", {}).get(dtype)
                parts = got[2].get("parts") if isinstance(got, tuple) and len(got) > 2 and isinstance(got[2], dict) else None
                entry = {"case": case.name, "metric": "equiv_error", "value": err, "tol": tol, "where": where}
                if parts and hasattr(tp, "disagreement") and tol is not None and not err <= tol:
                    entry["reason"] = tp.disagreement(parts, tol, dtype, "not timed")
                side["checks"].append(entry)
                if tol is not None and not err <= tol:
                    continue  # a backend that computes something else is not timed: the check fails the gate
            low = data.cast(dtype)
            for mode in modes:
                if mode == "fwd":
                    fn = backend.prepare_forward(spec, low.params, low.x, low.state)
                else:
                    fn = backend.prepare_train(spec, low.params, low.x, low.state, low.dy, low.d_state)
                side["fns"][(case.name, mode)] = fn
        except Exception as e:  # noqa: BLE001
            side["errors"].append({"case": case.name, "mode": "*", "error": f"{type(e).__name__}: {e}"})
    return side


def _call_time(fn, number: int) -> float:
    """Seconds per call over ``number`` back-to-back calls, the garbage collector off (as ``timeit`` does)."""
    import gc
    on = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t0) / number
    finally:
        if on:
            gc.enable()


def _worker(payload: Dict[str, Any]) -> Dict[str, Any]:
    """Load both trees into this process and time their gate cases in adjacent pairs.

    The trees load one after the other (order from the payload, alternated by the parent): the first
    tree's modules are taken out of ``sys.modules`` before the second imports, and swapped back before
    each of its samples. Both sides then share everything that a process adds to a timing — its memory
    layout, its CPU, the spell of load it runs in — and each sample of one side sits next to a sample
    of the other (A B B A ...), so the ratio of a pair is nearly free of the machine's drift.
    """
    if payload.get("pin") is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(payload["pin"])})
    trees = {k: os.path.realpath(v) for k, v in payload["trees"].items()}
    out: Dict[str, Any] = {"results": [], "checks": [], "modules": {}, "errors": {}, "load_order": payload["order"]}
    sides: Dict[str, Dict[str, Any]] = {}
    mods: Dict[str, Dict[str, Any]] = {}
    prev: Optional[str] = None
    for k in payload["order"]:
        _activate(trees[k], {}, None if prev is None else (trees[prev], mods[prev]))
        sides[k] = _load_side(payload)
        mods[k] = _tree_modules(trees[k])
        out["modules"][k] = sides[k]["modules"]
        out["checks"] += [{**c, "side": k} for c in sides[k]["checks"]]
        out["errors"][k] = sides[k]["errors"]
        out.setdefault("skipped", {})[k] = sides[k].get("skipped", [])
        if sides[k].get("import_error"):
            out["import_error"] = {"side": k, "error": sides[k]["import_error"]}
            return out
        prev = k
    keys = [key for key in sides["A"]["fns"] if key in sides["B"]["fns"]]
    active = [prev]

    def use(k: str) -> None:
        if active[0] != k:
            _activate(trees[k], mods[k], (trees[active[0]], mods[active[0]]))
            active[0] = k

    n, warm, target = int(payload["samples"]), int(payload["warmup"]), float(payload["sample_s"])
    for key in keys:
        per = {}
        for k in ("A", "B"):  # warm-up, and a rough per-call time to size the samples
            use(k)
            fn = sides[k]["fns"][key]
            for _ in range(max(1, warm)):
                fn()
            per[k] = _call_time(fn, 1)
        number = max(1, int(math.ceil(target / max(1e-7, min(per.values())))))
        got: Dict[str, List[float]] = {"A": [], "B": []}
        for i, k in enumerate(_order(n)):  # A B B A A B ...: every pair i holds one sample of each side
            use(k)
            got[k].append(_call_time(sides[k]["fns"][key], number))
        out["results"].append({"case": key[0], "mode": key[1], "A": got["A"], "B": got["B"], "number": number})
    return out


def _worker_entry() -> None:
    payload = json.loads(sys.stdin.read())
    try:
        res = _worker(payload)
    except Exception as e:  # noqa: BLE001
        res = {"import_error": {"side": "?", "error": f"{type(e).__name__}: {e}"}, "results": [], "checks": []}
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
    sample_s: float = DEFAULT_SAMPLE_S
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
            raise _usage(f"--rounds x --samples = {self.rounds * self.samples}: the signed-rank test needs >= 6 pairs")
        if not (self.sample_s > 0 and math.isfinite(self.sample_s)):
            raise _usage(f"sample_s: got {self.sample_s!r}; seconds > 0 per timed sample")


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
    n: Tuple[int, int] = (0, 0)  # (processes, pairs)

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
    #: cases the backend does not support: ``{"backend", "case", "reason"}`` (not measured, not a failure)
    skipped: List[Dict[str, str]] = field(default_factory=list)
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
    from harness.core.system import allowed_cpus
    cores = allowed_cpus()
    return cores[-1] if cfg.pin == -1 else int(cfg.pin)


def _env(threads: int) -> Dict[str, str]:
    from harness.core.system import thread_env
    env = thread_env(threads)
    env["PYTHONHASHSEED"] = "0"
    env.pop("PYTHONSTARTUP", None)
    return env


def run_worker(trees: Dict[str, str], backend: str, cfg: GateConfig, order: Sequence[str] = ("A", "B"),
               only: Optional[List[List[str]]] = None, checks: bool = False,
               timeout: float = WORKER_TIMEOUT_S) -> Dict[str, Any]:
    """One fresh process that loads both trees (in ``order``) and times their gate cases in pairs.

    Its parsed report; an ``error`` key (and ``error_side``) when a side could not run.
    """
    payload = {"trees": {k: os.path.abspath(v) for k, v in trees.items()}, "order": list(order),
               "backend": backend, "suite": cfg.suite, "preset": cfg.preset, "patterns": list(cfg.patterns),
               "samples": cfg.samples, "warmup": cfg.warmup, "sample_s": cfg.sample_s, "seed": cfg.seed,
               "threads": cfg.threads, "pin": _pin_core(cfg), "only": only, "checks": checks}
    boot = ("import runpy, sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
            f"runpy.run_path({os.path.abspath(__file__)!r}, run_name={_WORKER_RUN_NAME!r})")
    env = _env(cfg.threads)
    # The size of the environment moves the stack, and with it the layout of everything after: a pad of
    # random length per process makes any such layout effect noise across processes, never a bias.
    env["RNNBENCH_GATE_LAYOUT_PAD"] = "x" * random.randrange(0, 4096)
    try:
        r = subprocess.run([sys.executable, "-c", boot], input=json.dumps(payload), capture_output=True, text=True,
                           env=env, cwd=tempfile.gettempdir(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:.0f} s", "error_side": "B"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith(_MARK):
            res = json.loads(line[len(_MARK):])
            if res.get("import_error"):
                res["error"], res["error_side"] = res["import_error"]["error"], res["import_error"]["side"]
                return res
            for k in ("A", "B"):
                prob = _origin_problem(trees[k], res.get("modules", {}).get(k, {}))
                if prob:
                    res["error"], res["error_side"] = prob, k
                    return res
            return res
    tail = (r.stderr.strip().splitlines() or ["(no output)"])[-3:]
    return {"error": f"worker exited with code {r.returncode}: " + " | ".join(tail), "error_side": "?"}


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


def add_process(entry: Dict[str, List[float]], a_ms: Sequence[float], b_ms: Sequence[float]) -> None:
    """Fold one process's paired samples (ms, pair i = ``a_ms[i]``, ``b_ms[i]``) into a comparison's entry.

    Keeps the raw samples (``A``, ``B``), the log-ratio of every pair (``pairs``) and, per process, the
    median of its pairs' log-ratios (``proc``): the process is the unit of replication the test uses.
    """
    for k in ("A", "B", "pairs", "proc"):
        entry.setdefault(k, [])
    entry["A"].extend(float(v) for v in a_ms)
    entry["B"].extend(float(v) for v in b_ms)
    logs = [math.log(b / a) for a, b in zip(a_ms, b_ms) if a > 0 and b > 0]
    entry["pairs"].extend(logs)
    if logs:
        srt = sorted(logs)
        m = len(srt) // 2
        entry["proc"].append(srt[m] if len(srt) % 2 else 0.5 * (srt[m - 1] + srt[m]))


def measure(trees: Dict[str, str], backend: str, cfg: GateConfig, only: Optional[List[List[str]]] = None,
            checks: bool = True, log=None, deadline: Optional[float] = None,
            record: Optional[List[Dict[str, Any]]] = None, skipped: Optional[List[Dict[str, str]]] = None
            ) -> Tuple[Dict[Tuple[str, str], Dict[str, List[float]]], List[Dict[str, Any]], List[str]]:
    """``cfg.rounds`` fresh processes, each timing both trees in pairs: (entries by (case, mode), checks, errors).

    The trees load in alternating order (A first in even processes, B first in odd ones), so whatever the
    load order does to a timing cancels across processes. Samples are in ms. ``record`` (a list) receives
    each process's raw results in order, for the trials. Raises :class:`BaseTreeError` when the base tree
    (A) cannot run. ``skipped`` (a list) receives the cases the head's backend does not support, with its
    reason (an older base tree's failure on such a case is not held against it).
    """
    samples: Dict[Tuple[str, str], Dict[str, List[float]]] = {}
    chk: List[Dict[str, Any]] = []
    errors: List[str] = []
    for i in range(cfg.rounds):
        if deadline is not None and time.monotonic() > deadline:
            errors.append(f"time limit reached: stopped after {i} of {cfg.rounds} processes")
            break
        order = ("A", "B") if i % 2 == 0 else ("B", "A")
        # Every process checks (cheap, smoke shapes) so that none times a case that disagrees; one reports.
        res = run_worker(trees, backend, cfg, order=order, only=only, checks=checks)
        if res.get("error"):
            if res.get("error_side") == "A":
                raise BaseTreeError(f"the base tree {trees['A']} cannot run the gate cases: {res['error']}")
            who = "the head tree cannot run the gate cases" if res.get("error_side") == "B" else \
                "the gate's worker failed before either tree could be blamed"
            errors.append(f"{who}: {res['error']}")
            break
        head_skips = {r["case"]: r["reason"] for r in (res.get("skipped") or {}).get("B", [])}
        if skipped is not None and i == 0:
            skipped += [{"backend": backend, **r} for r in (res.get("skipped") or {}).get("B", [])]
        for side in ("A", "B"):
            for r in (res.get("errors") or {}).get(side, []):
                if r["case"] in head_skips:
                    continue
                if side == "A":
                    raise BaseTreeError(f"the base tree fails on {r['case']}: {r['error']}")
                errors.append(f"{r['case']}: {r['error']}")
        if i == 0:
            chk += [{**c, "backend": backend} for c in res.get("checks", [])]
        if record is not None:
            record.append({"order": list(order), "results": [{k: r.get(k) for k in ("case", "mode", "A", "B", "number")}
                                                              for r in res.get("results", [])]})
        for r in res.get("results", []):
            entry = samples.setdefault((r["case"], r["mode"]), {})
            add_process(entry, [1e3 * v for v in r["A"]], [1e3 * v for v in r["B"]])
        if log:
            log(i)
        if errors:
            break
    return samples, chk, errors


#: fewest processes for the per-process test (the signed-rank test on 3 can reach p = 0.125 only)
MIN_PROCESSES = 6


def gate_stats(s: Dict[str, List[float]]) -> Dict[str, float]:
    """Ratio head/base, its 95 % CI and the one-sided p that head is slower, for one (case, mode).

    The unit is the process: inside one, the pairs share a memory layout and a spell of machine load, so
    they are not independent replicates of the comparison; each process gives one paired log-ratio (the
    median of its pairs) and the Wilcoxon signed-rank test asks whether those sit above 0. The ratio is
    exp(median over processes). With fewer than :data:`MIN_PROCESSES` processes, falls back to the pairs.
    """
    from harness.measure.stats import bootstrap_median_ci, signed_rank_p
    logs = s.get("proc") or []
    if len(logs) < MIN_PROCESSES:
        logs = s.get("pairs") or []
    if not logs:
        return {"ratio": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "p": math.nan, "n": 0}
    srt = sorted(logs)
    m = len(srt) // 2
    med = srt[m] if len(srt) % 2 else 0.5 * (srt[m - 1] + srt[m])
    lo, hi = bootstrap_median_ci(logs)
    return {"ratio": math.exp(med), "ci_lo": math.exp(lo), "ci_hi": math.exp(hi),
            "p": signed_rank_p(logs, "greater"), "n": len(logs)}


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
                           st["ci_lo"], st["ci_hi"], st["p"], flagged, n=(len(s.get("proc") or []), len(s["A"]))))
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
        samples, chk, errors = measure(trees, backend, cfg, log=None, deadline=deadline, skipped=res.skipped)
        res.processes += cfg.rounds
        res.errors += errors
        res.checks += judge_checks(chk)
        verdicts = judge(samples, backend, cfg.threshold, cfg.alpha)
        if not verdicts and not errors and not any(c["failed"] for c in res.checks):
            res.errors.append(f"backend {backend}: no gate case ran in both trees (suite {cfg.suite!r}, preset "
                              f"{cfg.preset!r}, patterns {list(cfg.patterns) or 'all'})")
        flagged = [v for v in verdicts if v.flagged]
        if flagged and cfg.confirm:
            log(f"gate: {len(flagged)} flagged ({', '.join(f'{v.case}/{v.mode} x{v.ratio:.3f}' for v in flagged)}); "
                "confirming with a fresh interleaved re-run")
            s2, _, e2 = measure(trees, backend, cfg, only=[[v.case, v.mode] for v in flagged], checks=False,
                                deadline=deadline + 120)
            res.processes += cfg.rounds
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
             f"gate: {cfg.suite}/{cfg.preset} cases of {', '.join(cfg.backends)}; {cfg.rounds} processes each "
             f"timing both trees in {cfg.samples} adjacent pairs, {cfg.threads} thread(s)"
             + (f", pinned to core {_pin_core(cfg)}" if _pin_core(cfg) is not None else "")
             + f"; fail if ratio > {cfg.threshold:g} with one-sided signed-rank p < {cfg.alpha:g} over processes, confirmed by a re-run"]
    head = f"{'backend':<8} {'case':<36} {'mode':<5} {'base ms':>9} {'head ms':>9} {'ratio':>7} {'95% CI':>17} {'p':>8}  verdict"
    lines += [head, "-" * len(head)]
    for v in sorted(res.verdicts, key=lambda v: -v.ratio):
        lines.append(f"{v.backend:<8} {v.case:<36} {v.mode:<5} {v.base_ms:>9.4f} {v.head_ms:>9.4f} {v.ratio:>7.3f} "
                     f"{f'[{v.ci_lo:.3f}, {v.ci_hi:.3f}]':>17} {v.p:>8.2g}  {_status(v)}")
    for c in res.checks:
        bv = c.get("base_value")
        lines.append(f"check {c['backend']} {c['case']} {c['metric']}: head {c['value']:.3g} (base "
                     f"{'-' if bv is None else f'{bv:.3g}'}), tolerance {c.get('tol')}: "
                     f"{'FAILED' if c['failed'] else 'ok'}" + (f" — {c['reason']}" if c.get("reason") else ""))
    lines += [f"skipped {s['backend']} {s['case']}: {s['reason']}" for s in res.skipped]
    lines += [f"note: {n}" for n in res.notes] + [f"error: {e}" for e in res.errors]
    lines.append(f"gate: {res.processes} processes, {res.wall_s:.1f} s")
    lines.append(conclusion(res))
    return "\n".join(lines)


def conclusion(res: GateResult) -> str:
    cfg = res.config
    if res.failed_checks:  # first: a case that computes something else is the reason, and it was not timed
        c = res.failed_checks[0]
        return (f"gate: FAIL: deterministic check {c['metric']} of {c['case']} is {c['value']:.3g}, past its "
                f"tolerance {c.get('tol')}" + (f" ({c['reason']})" if c.get("reason") else ""))
    if res.errors:
        return f"gate: FAIL: {res.errors[0]}"
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
           f"{', '.join(cfg.backends)}, {cfg.rounds} processes each timing both trees in {cfg.samples} adjacent pairs, "
           f"threshold {cfg.threshold:g}, one-sided signed-rank alpha {cfg.alpha:g} over processes, confirmation re-run; "
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
    out += [""] + [f"- skipped {s['backend']} {s['case']}: {s['reason']}" for s in res.skipped]
    out += [f"- note: {n}" for n in res.notes] + [f"- error: {e}" for e in res.errors]
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
    for attr in ("threshold", "alpha", "rounds", "samples", "preset"):
        v = getattr(args, attr)
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


def check_selection(cfg: GateConfig) -> None:
    """The preset exists and every ``--case`` pattern selects a case of the head tree (UsageError otherwise): a
    typo must be an error (exit 2), not a gate that measured nothing and says FAIL."""
    from suites.base import get_suite
    try:
        suite = get_suite(cfg.suite)
    except Exception as e:  # noqa: BLE001 - the head tree's own suite: a broken one is the user's to fix
        raise _usage(f"the gate's suite {cfg.suite!r} cannot be loaded from this tree: {type(e).__name__}: {e}") from None
    presets = tuple(getattr(suite, "presets", ()))
    if cfg.preset not in presets:
        raise _usage(f"--preset: got {cfg.preset!r}; allowed for the gate's suite {cfg.suite!r}: {', '.join(presets)}")
    if cfg.patterns:  # case names do not depend on the backend: list them with the reference's
        names = sorted({c.name for c in suite.cases(cfg.preset, ["numpy"], "cpu")})
        missing = [p for p in cfg.patterns if not any(p in n for n in names)]
        if missing:
            raise _usage(f"--case: {', '.join(map(repr, missing))} selects no case of preset {cfg.preset!r}; its "
                         f"cases: {', '.join(names)}")


def cli_gate(args) -> int:
    """``rnnbench gate [--base REV] [--backend B] [--threshold R] [--markdown F] [--repo DIR]``."""
    from harness.measure.safe_files import check_output_path
    cfg = config_from_args(args)
    top = repo_root(getattr(args, "repo", None) or ".")
    md = getattr(args, "markdown", None)
    if md is not None:
        check_output_path(md, "--markdown")  # before minutes of measuring, not after
    check_selection(cfg)
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
