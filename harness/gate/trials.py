"""Measure the gate: false-alarm rate on unchanged code (A/A) and detection rate on injected slowdowns.

``python -m harness.gate.trials [--aa 20] [--slow 20] [--slow-110 0] [--slow-105 20] [--out FILE]``

1. Clones the repository's committed HEAD into a temporary directory (``git clone --shared``; nothing is
   ever committed to the original repository), and makes worktrees of it:
   ``base`` (HEAD), ``aa`` (HEAD again, a second directory: the A/A head), and for every slowdown factor f a
   throwaway commit on a detached worktree whose NumPy LSTM recurrence does f× the work: before the real
   recurrence, ``_forward_steps`` runs again on the first (f − 1)·T steps of copies of its inputs and the
   result is thrown away (identical arithmetic, so the numbers the gate checks do not change).
2. Runs trials of each kind in round-robin order (A/A, 1.25×, 1.10×, A/A, …) so that changes of the
   machine's load hit every kind alike. One trial = one gate measurement with the given settings
   (:func:`harness.gate.gate.measure`), and a confirmation pass of every comparison flagged under the loosest
   setting of the analysis grid — exactly what the gate does, recorded so that the decision can be
   evaluated for every threshold/alpha in the grid from the same trials.
3. Prints and writes (``--out``, JSON with every raw sample, and ``--markdown``) the false-alarm rate of
   the A/A trials and the detection rate of each slowdown, per (threshold, alpha), plus the load average.

A trial "fails" (the gate would exit 1) when some (case, mode) is flagged in the first pass
(ratio > threshold and one-sided signed-rank p < alpha over processes) and flagged again in its confirmation pass.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from harness.gate import gate
from harness.measure.inject import make_trees

THRESHOLDS = (1.02, 1.025, 1.03, 1.035, 1.04, 1.05, 1.10)
ALPHAS = (0.001, 0.01, 0.05)

def _flag(st: Dict[str, float], threshold: float, alpha: float) -> bool:
    return st["ratio"] > threshold and st["p"] < alpha


def one_trial(trees: Dict[str, str], head_key: str, cfg: gate.GateConfig, loose: Tuple[float, float]
              ) -> Dict[str, Any]:
    """One gate measurement (+ confirmation of what the loosest setting flags), every statistic kept."""
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    pair = {"A": trees["base"], "B": trees[head_key]}
    rec1: List[Dict[str, Any]] = []
    s1, _, err = gate.measure(pair, cfg.backends[0], cfg, checks=False, record=rec1)
    stats1 = {f"{c}/{m}": gate.gate_stats(s) for (c, m), s in s1.items()}
    flagged = [k for k, st in stats1.items() if _flag(st, *loose)]
    rec2: List[Dict[str, Any]] = []
    stats2: Dict[str, Any] = {}
    if flagged:
        only = [k.rsplit("/", 1) for k in flagged]
        s2, _, err2 = gate.measure(pair, cfg.backends[0], cfg, only=only, checks=False, record=rec2)
        err += err2
        stats2 = {f"{c}/{m}": gate.gate_stats(s) for (c, m), s in s2.items()}
    return {"kind": head_key, "load1": load, "wall_s": time.monotonic() - t0, "errors": err,
            "pass1": stats1, "pass2": stats2, "raw1": rec1, "raw2": rec2}


def gate_fails(trial: Dict[str, Any], threshold: float, alpha: float, only: Optional[str] = None) -> bool:
    """Would the gate have exited 1 with these settings? (flagged, and flagged again on re-run)

    ``only``: count only comparisons whose key contains this text (``"lstm"``: a detection for the right reason).
    """
    for k, st in trial["pass1"].items():
        if only is not None and only not in k:
            continue
        if _flag(st, threshold, alpha):
            st2 = trial["pass2"].get(k)
            if st2 is not None and _flag(st2, threshold, alpha):
                return True
    return False


def summarise(trials: List[Dict[str, Any]], cfg: gate.GateConfig) -> str:
    kinds = list(dict.fromkeys(t["kind"] for t in trials))
    lines = [f"gate trials: {cfg.rounds} processes x {cfg.samples} pairs (both trees in each process), "
             f"{cfg.suite}/{cfg.preset} cases of {', '.join(cfg.backends)}, {cfg.threads} thread(s), "
             f"pin={'core ' + str(gate._pin_core(cfg)) if gate._pin_core(cfg) is not None else 'no'}"]
    counts = {k: sum(t["kind"] == k for t in trials) for k in kinds}
    lines.append("trials: " + ", ".join(f"{k} {n}" for k, n in counts.items()) +
                 f"; load average during trials {min(t['load1'] for t in trials):.2f}..{max(t['load1'] for t in trials):.2f}"
                 f" (mean {sum(t['load1'] for t in trials) / len(trials):.2f}); mean trial {sum(t['wall_s'] for t in trials) / len(trials):.1f} s")
    cols = [(k, None) for k in kinds] + [(k, "lstm") for k in kinds if k.startswith("slow")]
    head = "threshold  alpha   " + "  ".join(f"{(k + (' (on lstm)' if o else '')):>22}" for k, o in cols)
    lines += ["", "rate of gate failures (A/A = false alarms, slow-* = detections; 'on lstm' = failed on an LSTM "
              "comparison, the slowed cell):", head]
    for th in THRESHOLDS:
        for a in ALPHAS:
            cells = []
            for k, o in cols:
                ts = [t for t in trials if t["kind"] == k]
                f = sum(gate_fails(t, th, a, o) for t in ts)
                cells.append(f"{f}/{len(ts)} {100 * f / len(ts):5.1f}%")
            mark = "  <- default" if (th, a) == (cfg.threshold, cfg.alpha) else ""
            lines.append(f"{th:>9.3f}  {a:<6g}  " + "  ".join(f"{c:>22}" for c in cells) + mark)
    lines += ["", "median ratio of each (case, mode) in the first pass, per kind:"]
    keys = sorted({k for t in trials for k in t["pass1"]})
    for key in keys:
        parts = []
        for k in kinds:
            rs = sorted(t["pass1"][key]["ratio"] for t in trials if t["kind"] == k and key in t["pass1"])
            if rs:
                parts.append(f"{k} {rs[len(rs) // 2]:.3f} [{rs[0]:.3f}..{rs[-1]:.3f}]")
        lines.append(f"  {key:<44} " + "; ".join(parts))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.gate.trials", description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=".", help="repository whose committed HEAD is measured (default: .)")
    p.add_argument("--aa", type=int, default=20, help="A/A trials (default 20)")
    p.add_argument("--slow", type=int, default=20, help="trials with the 1.25x slowdown (default 20)")
    p.add_argument("--slow-110", type=int, default=0, help="trials with the 1.10x slowdown (default 0)")
    p.add_argument("--slow-105", type=int, default=20, help="trials with the 1.05x slowdown (default 20)")
    p.add_argument("--rounds", type=int, default=gate.DEFAULT_ROUNDS)
    p.add_argument("--samples", type=int, default=gate.DEFAULT_SAMPLES)
    p.add_argument("--threshold", type=float, default=gate.DEFAULT_THRESHOLD)
    p.add_argument("--alpha", type=float, default=gate.DEFAULT_ALPHA)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--case", action="append", help="only cases whose name contains TEXT")
    p.add_argument("--max-minutes", type=float, default=60.0, help="stop starting trials after this long")
    p.add_argument("--out", default="results/gate_trials.json", help="JSON with every trial (default: %(default)s)")
    p.add_argument("--markdown", help="also write the summary here")
    a = p.parse_args(argv)
    cfg = gate.GateConfig(rounds=a.rounds, samples=a.samples, threshold=a.threshold, alpha=a.alpha,
                          pin=None if a.no_pin else -1, patterns=tuple(a.case or ()))
    cfg.validate()
    loose = (min(THRESHOLDS), max(ALPHAS))
    plan = [(k, n) for k, n in (("aa", a.aa), ("slow-1.25", a.slow), ("slow-1.1", a.slow_110),
                                ("slow-1.05", a.slow_105)) if n > 0]
    repo = gate.repo_root(a.repo)
    tmp = tempfile.mkdtemp(prefix="rnnbench-gate-trials-")
    trials: List[Dict[str, Any]] = []
    t_start = time.monotonic()
    try:
        trees = make_trees(repo, tmp, [float(k.split("-", 1)[1]) for k, _ in plan if k != "aa"])
        left = {k: n for k, n in plan}
        while any(left.values()):
            for k, _ in plan:
                if left[k] <= 0:
                    continue
                if time.monotonic() - t_start > 60 * a.max_minutes:
                    print(f"gate trials: --max-minutes {a.max_minutes:g} reached; stopping", flush=True)
                    left = {k: 0 for k in left}
                    break
                t = one_trial(trees, k, cfg, loose)
                trials.append(t)
                left[k] -= 1
                fails = gate_fails(t, cfg.threshold, cfg.alpha)
                worst = max(t["pass1"].items(), key=lambda kv: kv[1]["ratio"], default=("-", {"ratio": float("nan")}))
                print(f"trial {len(trials):3d} {k:<10} load {t['load1']:.2f}  {t['wall_s']:5.1f} s  worst "
                      f"{worst[0]} x{worst[1]['ratio']:.3f}  -> {'FAIL' if fails else 'pass'}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not trials:
        print("gate trials: no trial ran", file=sys.stderr)
        return 2
    text = summarise(trials, cfg)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump({"config": {k: getattr(cfg, k) for k in ("backends", "suite", "preset", "patterns", "rounds",
                                                                "samples", "warmup", "threshold", "alpha", "threads",
                                                                "pin")},
                       "loose": loose, "trials": trials, "summary": text}, f)
        print(f"written: {a.out}")
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write("```\n" + text + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def resummarise(path: str) -> str:
    """The summary of a saved trials file (``python -c 'from harness.gate.trials import resummarise; ...'``)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    cfg = gate.GateConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data["config"].items()})
    return summarise(data["trials"], cfg)
