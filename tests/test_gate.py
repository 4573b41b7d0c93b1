"""``rnnbench gate``: bad input, the decision rule, and end to end on a user's repository with a plug-in.

The end-to-end tests build a throwaway git repository holding only a plug-in backend (a subclass of the
NumPy backend), as a team gating its own kernels would; rnnbench itself comes from the environment.
The injected slowdown is large (a sleep several times the call) so the verdict does not depend on noise.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import textwrap

import numpy as np
import pytest

pytest.importorskip("scipy")

from harness.gate import gate  # noqa: E402
from harness.cli.main import main  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

PLUGIN_OK = """
from implementations.numpy.backend import NumpyBackend

class MyBackend(NumpyBackend):
    variant = "mybackend"
"""
PLUGIN_SLOW = PLUGIN_OK + """
    def _prepare_forward(self, spec, params, x, state):
        import time
        inner = super()._prepare_forward(spec, params, x, state)
        def fn():
            time.sleep(0.05)  # an obvious slowdown: far beyond the noise of a loaded machine
            return inner()
        return fn
"""
PLUGIN_WRONG = PLUGIN_OK + """
    def _forward(self, spec, params, x, state):
        y, final = super()._forward(spec, params, x, state)
        return y * 1.01, final  # a numerical bug: 1 % off the reference
"""


def _git(repo, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def _repo(tmp_path, *versions):
    """A git repo whose successive commits hold the given mybackend.py sources."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    for i, src in enumerate(versions):
        (repo / "mybackend.py").write_text(textwrap.dedent(src))
        _git(repo, "add", "mybackend.py")
        _git(repo, "commit", "-q", "--allow-empty", "-m", f"v{i}")
    return repo


FAST = ["--backend", "mybackend:MyBackend", "--case", "lstm", "--rounds", "2", "--samples", "4"]


def test_bad_rev_exits_2_with_a_clear_line(tmp_path, capsys):
    repo = _repo(tmp_path, PLUGIN_OK)
    assert main(["gate", "--repo", str(repo), "--base", "no-such-rev"]) == 2
    err = capsys.readouterr().err
    assert "revision 'no-such-rev' does not exist" in err and err.count("\n") == 1


def test_not_a_repository_and_bad_options_exit_2(tmp_path, capsys):
    assert main(["gate", "--repo", str(tmp_path)]) == 2
    assert "not inside a git repository" in capsys.readouterr().err
    assert main(["gate", "--repo", str(tmp_path / "missing")]) == 2
    repo = _repo(tmp_path, PLUGIN_OK, PLUGIN_OK)
    assert main(["gate", "--repo", str(repo), "--threshold", "0.9"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert main(["gate", "--repo", str(repo), "--rounds", "1", "--samples", "2"]) == 2


def test_no_previous_commit_is_skipped_with_a_reason(tmp_path, capsys):
    repo = _repo(tmp_path, PLUGIN_OK)
    md = tmp_path / "gate.md"
    assert main(["gate", "--repo", str(repo), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "first commit" in out
    assert "skipped" in md.read_text()


def test_default_base_prefers_merge_base_then_previous_commit(tmp_path):
    repo = _repo(tmp_path, PLUGIN_OK, PLUGIN_OK)
    c, how = gate.default_base(str(repo))
    assert how == "HEAD~1" and c == gate.resolve_rev(str(repo), "HEAD~1")
    _git(repo, "checkout", "-q", "-b", "feature")
    (repo / "x.txt").write_text("x")
    _git(repo, "add", "x.txt")
    _git(repo, "commit", "-q", "-m", "feature work")
    c, how = gate.default_base(str(repo))
    assert "merge-base" in how and c == gate.resolve_rev(str(repo), "main")


def test_base_tree_that_does_not_import_exits_2(tmp_path, capsys):
    repo = _repo(tmp_path, "raise ImportError('broken on purpose')\n", PLUGIN_OK)
    assert main(["gate", "--repo", str(repo), "--base", "HEAD~1", *FAST]) == 2
    err = capsys.readouterr().err
    assert "base tree" in err and "broken on purpose" in err
    # the temporary worktree is gone
    listing = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout
    assert listing.count("\n") == 1


def test_plugin_slowdown_fails_after_confirmation(tmp_path, capsys):
    repo = _repo(tmp_path, PLUGIN_OK, PLUGIN_SLOW)
    md = tmp_path / "gate.md"
    assert main(["gate", "--repo", str(repo), *FAST, "--markdown", str(md)]) == 1
    out = capsys.readouterr().out
    assert "confirmed slowdown" in out and "/fwd" in out
    text = md.read_text()
    assert "❌ fail" in text and "SLOWER (confirmed)" in text


def test_plugin_numerical_error_fails_at_once_and_same_code_passes(tmp_path, capsys):
    repo = _repo(tmp_path, PLUGIN_OK, PLUGIN_WRONG, PLUGIN_OK)
    assert main(["gate", "--repo", str(repo), "--base", "HEAD~2", "--force", *FAST]) == 0  # same code: A/A
    assert "gate: PASS" in capsys.readouterr().out
    # without --force, identical code passes at once and says why
    assert main(["gate", "--repo", str(repo), "--base", "HEAD~2", *FAST]) == 0
    assert "passed without measuring: no Python file" in capsys.readouterr().out
    _git(repo, "checkout", "-q", "HEAD~1")  # the buggy version as head
    assert main(["gate", "--repo", str(repo), "--base", "HEAD~1", *FAST]) == 1
    out = capsys.readouterr().out
    assert "deterministic check equiv_error" in out and "FAILED" in out


def test_interleaving_order():
    assert gate._order(3) == ["A", "B", "B", "A", "A", "B"]
    o = gate._order(6)
    assert o.count("A") == o.count("B") == 6
    # each side goes first in half of the rounds
    assert sum(o[2 * i] == "A" for i in range(6)) == 3


def _entry(rng, ratio, processes=10, pairs=8, process_noise=0.3, pair_noise=0.02):
    """Paired samples as the workers report them: each process has its own speed (up to 1.5x apart, as on a
    shared VM), which both sides of a pair share; the pairs' own noise is small."""
    e = {}
    for _ in range(processes):
        speed = 1.0 + process_noise * rng.random()
        a = speed * (1.0 + pair_noise * rng.standard_normal(pairs))
        b = ratio * speed * (1.0 + pair_noise * rng.standard_normal(pairs))
        gate.add_process(e, list(a), list(b))
    return e


def test_judge_flags_only_significant_slowdowns_beyond_threshold():
    rng = np.random.default_rng(0)
    samples = {("c", "fwd"): _entry(rng, 1.25), ("c", "train"): _entry(rng, 1.0), ("d", "fwd"): _entry(rng, 1.05)}
    v = {(x.case, x.mode): x for x in gate.judge(samples, "numpy", threshold=1.10, alpha=0.01)}
    assert v[("c", "fwd")].flagged and 1.2 < v[("c", "fwd")].ratio < 1.3
    assert v[("c", "fwd")].ci_lo < v[("c", "fwd")].ratio < v[("c", "fwd")].ci_hi
    assert v[("c", "fwd")].n == (10, 80)
    assert not v[("c", "train")].flagged
    assert v[("d", "fwd")].p < 0.01 and not v[("d", "fwd")].flagged  # significant, but within the threshold
    assert not v[("c", "fwd")].failed  # not failed until a re-run confirms it


def test_per_process_statistic_ignores_process_speed_but_not_a_consistent_slowdown():
    rng = np.random.default_rng(1)
    # processes 1.5x apart in speed: the pooled samples of the two sides overlap, the pairs do not
    st = gate.gate_stats(_entry(rng, 1.10, process_noise=0.5))
    assert st["p"] < 0.005 and 1.08 < st["ratio"] < 1.12 and st["n"] == 10
    # a slowdown in one process only (a spell of load on one side's samples) is not significant
    e = _entry(rng, 1.0)
    e["proc"][3] = math.log(1.5)
    assert gate.gate_stats(e)["p"] > 0.05
    # too few processes: the test falls back to the pairs
    e = _entry(rng, 1.3, processes=2)
    st = gate.gate_stats(e)
    assert st["n"] == 16 and st["p"] < 0.001


def test_judge_checks_fail_when_head_passes_tolerance():
    chk = [{"side": "A", "backend": "b", "case": "c", "metric": "equiv_error", "value": 1e-7, "tol": 1e-4},
           {"side": "B", "backend": "b", "case": "c", "metric": "equiv_error", "value": 3e-3, "tol": 1e-4}]
    out = gate.judge_checks(chk)
    assert len(out) == 1 and out[0]["failed"] and out[0]["base_value"] == 1e-7
    chk[1]["value"] = 2e-7
    assert not gate.judge_checks(chk)[0]["failed"]


def test_trials_count_a_failure_only_when_the_rerun_confirms():
    from harness.gate.trials import gate_fails
    from harness.measure.inject import PATCH, PATCH_TIME
    st = lambda r, p: {"ratio": r, "p": p}  # noqa: E731
    t = {"pass1": {"lstm/fwd": st(1.3, 1e-4), "gru/fwd": st(1.2, 1e-3)},
         "pass2": {"lstm/fwd": st(1.28, 1e-4), "gru/fwd": st(1.01, 0.4)}}
    assert gate_fails(t, 1.10, 0.01) and gate_fails(t, 1.10, 0.01, only="lstm")
    assert not gate_fails(t, 1.10, 0.01, only="gru")  # flagged once, not confirmed
    assert not gate_fails(t, 1.35, 0.01)              # below the threshold
    assert not gate_fails(t, 1.10, 1e-5)              # not significant enough
    assert "{factor}" in PATCH and "_forward_steps" in PATCH
    assert "{factor}" in PATCH_TIME and "_forward_steps" in PATCH_TIME


def test_the_time_patch_makes_the_recurrence_take_f_times_as_long(tmp_path):
    """The injected 'time' slowdown: same result, f x the time of the recurrence (checked by counting, not timing:
    the patched function spins until f x its own measured duration has passed)."""
    import numpy as np
    from harness.measure.inject import PATCH_TIME
    calls = []
    ns = {"_forward_steps": lambda *a: calls.append(1) or "out"}
    exec(PATCH_TIME.format(factor=1.25), ns)
    clock = iter([0.0, 4.0] + [4.5, 4.9, 5.0, 5.1])
    ns["_inject_time"] = type("T", (), {"perf_counter": staticmethod(lambda: next(clock))})
    spec = type("S", (), {"cell": "lstm"})()
    assert ns["_forward_steps"](spec, *([None] * 7)) == "out" and calls == [1]
    assert next(clock) == 5.1  # spun until t0 + 1.25 * 4.0 = 5.0: clock read at 4.5, 4.9, 5.0, then stopped


def test_tree_modules_leave_out_an_environment_inside_the_tree(tmp_path, monkeypatch):
    """A checkout with its .venv inside: the installed packages must stay loaded when the trees swap."""
    import sys
    import types
    tree = tmp_path / "tree"
    (tree / ".venv" / "lib" / "site-packages").mkdir(parents=True)
    own = types.ModuleType("gate_test_own")
    own.__file__ = str(tree / "gate_test_own.py")
    inst = types.ModuleType("gate_test_installed")
    inst.__file__ = str(tree / ".venv" / "lib" / "site-packages" / "gate_test_installed.py")
    other = types.ModuleType("gate_test_other")
    other.__file__ = str(tmp_path / "elsewhere.py")
    for m in (own, inst, other):
        monkeypatch.setitem(sys.modules, m.__name__, m)
    got = gate._tree_modules(os.path.realpath(str(tree)))
    assert "gate_test_own" in got and "gate_test_installed" not in got and "gate_test_other" not in got
    assert not [n for n in got if n.startswith("numpy")]


def test_activate_swaps_trees_so_lazy_imports_resolve_to_their_own(tmp_path, monkeypatch):
    """Two trees provide the same module name; after loading both, activating one makes a lazy import
    (as code inside a timed call might do) return that tree's module, not the other's."""
    import importlib
    import sys
    name = "gate_test_lazy_mod"
    trees = {}
    for k, v in (("A", 1), ("B", 2)):
        d = tmp_path / k
        d.mkdir()
        (d / f"{name}.py").write_text(f"VALUE = {v}\n")
        trees[k] = os.path.realpath(str(d))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, name, None)  # recorded as absent: removed again when the test ends
    del sys.modules[name]
    mods = {}
    gate._activate(trees["A"], {}, None)
    assert importlib.import_module(name).VALUE == 1
    mods["A"] = gate._tree_modules(trees["A"])
    gate._activate(trees["B"], {}, (trees["A"], mods["A"]))
    assert importlib.import_module(name).VALUE == 2
    mods["B"] = gate._tree_modules(trees["B"])
    assert set(mods["A"]) == set(mods["B"]) == {name}
    gate._activate(trees["A"], mods["A"], (trees["B"], mods["B"]))
    assert importlib.import_module(name).VALUE == 1 and trees["B"] not in sys.path
    gate._activate(trees["B"], mods["B"], (trees["A"], mods["A"]))
    assert importlib.import_module(name).VALUE == 2 and sys.path[0] == trees["B"]


def test_signed_rank_and_median_ci():
    from harness.measure.stats import bootstrap_median_ci, signed_rank_p
    assert signed_rank_p([0.1] * 8) < 0.01          # all eight above 0: p = 1/256
    assert signed_rank_p([-0.1] * 8) > 0.99
    assert signed_rank_p([0.1, -0.1] * 5) > 0.3
    assert math.isnan(signed_rank_p([0.0, 0.0, 0.1]))  # zeros carry no evidence; one value is too few
    lo, hi = bootstrap_median_ci(np.linspace(0.0, 1.0, 41))
    assert lo < 0.5 < hi and hi - lo < 0.5
    assert bootstrap_median_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)
