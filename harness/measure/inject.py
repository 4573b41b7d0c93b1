"""Throwaway checkouts with an injected slowdown: what the gate's and compare's trials measure against.

:func:`make_trees` clones a repository's committed HEAD (``git clone --shared``; nothing is ever committed to
the original repository) and makes worktrees of it: ``base`` (HEAD), ``aa`` (HEAD again, a second directory)
and, for every slowdown factor f, a throwaway commit whose NumPy LSTM recurrence does f× the work: before the
real recurrence, ``_forward_steps`` runs again on the first (f − 1)·T steps of copies of its inputs and the
result is thrown away (identical arithmetic, so no correctness check changes).
"""
from __future__ import annotations

import os
import subprocess
from typing import Dict, List

PATCH = '''

# --- injected by harness.gate.trials (throwaway commit): the LSTM recurrence does {factor}x the work ---
_gate_trials_forward_steps = _forward_steps


def _forward_steps(spec, w_hh_t, b_hh, acts, h, c, tanh_c, hn):
    if spec.cell == "lstm":
        n = int(round(({factor} - 1.0) * acts.shape[0]))
        if n > 0:  # the same step arithmetic on copies of the first n steps; the result is discarded
            _gate_trials_forward_steps(spec, w_hh_t, b_hh, acts[:n].copy(), h[:n + 1].copy(), c[:n + 1].copy(),
                                       tanh_c[:n].copy(), None)
    return _gate_trials_forward_steps(spec, w_hh_t, b_hh, acts, h, c, tanh_c, hn)
'''
#: ``time`` mode: the LSTM recurrence takes exactly ``factor`` times as long. The extra time is spent spinning on
#: the CPU right after the real recurrence (as work would be), so the factor holds whatever the recurrence's own
#: cost structure is. The ``work`` mode's extra steps cost more than their share when BLAS runs 2 threads (they
#: add thread hand-offs): on the 2-vCPU VM the 1.25x ``work`` patch measured 1.24x in the gate (1 thread) but
#: 1.3-1.9x in a default 2-thread run.
PATCH_TIME = '''

# --- injected (throwaway commit): the LSTM recurrence takes {factor}x as long (extra time spun on the CPU) ---
import time as _inject_time
_inject_forward_steps = _forward_steps


def _forward_steps(spec, w_hh_t, b_hh, acts, h, c, tanh_c, hn):
    if spec.cell != "lstm":
        return _inject_forward_steps(spec, w_hh_t, b_hh, acts, h, c, tanh_c, hn)
    t0 = _inject_time.perf_counter()
    out = _inject_forward_steps(spec, w_hh_t, b_hh, acts, h, c, tanh_c, hn)
    until = t0 + {factor} * (_inject_time.perf_counter() - t0)
    while _inject_time.perf_counter() < until:
        pass
    return out
'''
PATCHES = {"work": PATCH, "time": PATCH_TIME}
TARGET = os.path.join("implementations", "numpy", "rnn.py")


def _git(repo: str, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "gate-trials", "GIT_AUTHOR_EMAIL": "gate-trials@localhost",
           "GIT_COMMITTER_NAME": "gate-trials", "GIT_COMMITTER_EMAIL": "gate-trials@localhost"}
    r = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {repo}: {r.stderr.strip()}")
    return r.stdout.strip()


def make_trees(repo: str, tmp: str, factors: List[float], mode: str = "work") -> Dict[str, str]:
    """{"base": dir, "aa": dir, "slow-<f>": dir ...}: a clone of HEAD, a second checkout, throwaway commits
    (``mode``: ``work``, the recurrence repeats (f − 1)·T of its steps; ``time``, it takes f× as long)."""
    patch = PATCHES[mode]
    clone = os.path.join(tmp, "base")
    _git(repo, "clone", "--quiet", "--shared", "--no-checkout", repo, clone)
    head = _git(repo, "rev-parse", "HEAD")
    _git(clone, "checkout", "--quiet", "--detach", head)
    if not os.path.exists(os.path.join(clone, TARGET)):
        raise RuntimeError(f"HEAD of {repo} has no {TARGET}: nothing to inject a slowdown into")
    trees = {"base": clone}
    aa = os.path.join(tmp, "aa")
    _git(clone, "worktree", "add", "--detach", aa, head)
    trees["aa"] = aa
    for f in factors:
        d = os.path.join(tmp, f"slow-{f:g}")
        _git(clone, "worktree", "add", "--detach", d, head)
        src = os.path.join(d, TARGET)
        with open(src, "a", encoding="utf-8") as fh:
            fh.write(patch.format(factor=repr(float(f))))
        _git(d, "commit", "--quiet", "-am", f"trials: LSTM recurrence {f:g}x ({mode}; throwaway)")
        trees[f"slow-{f:g}"] = d
    return trees
