"""Measure ``rnnbench compare`` on separately made runs: false alarms (A/A) and detections (an injected slowdown).

``python -m harness.compare.trials [--pairs 20] [--factor 1.25] [--out FILE] [--markdown FILE]``

1. Makes throwaway checkouts of the repository's committed HEAD (:func:`harness.measure.inject.make_trees`):
   ``base``, and ``slow-F`` whose NumPy LSTM recurrence takes F× as long (the ``time`` patch: the extra time is
   spun on the CPU right after the real recurrence, so F holds in a 2-thread run too).
2. Makes runs one after the other, alternating ``A0, S0, A1, S1, …, A<pairs>``: every ``A`` run is
   ``rnnbench run throughput --preset smoke`` with the defaults in the ``base`` checkout, every ``S`` run the
   same in the slowed checkout. Each run is a fresh ``rnnbench run`` command, so the pairs are as separate as
   two runs a user makes at different times.
3. Judges pairs with :func:`harness.compare.compare.compare_sets` at the defaults, and records every timed
   comparison's ratio and p so that the rates can be re-read for other thresholds and alphas:
   A/A pairs ``(A_i, A_{i+1})``: compare must exit 0; injected pairs ``(A_i, S_i)``: the NumPy LSTM's
   ``fwd_ms`` must be flagged ``slower``, and nothing outside the NumPy LSTM flagged.

The JSON (``--out``) is rewritten after every run, so an interrupted trial keeps what it measured.
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

from harness.compare import compare as cmp
from harness.measure.inject import make_trees

THRESHOLDS = (1.05, 1.10, 1.15, 1.20)
ALPHAS = (0.001, 0.01, 0.05)
#: The comparison the injected slowdown must be caught on (backend, cell, metric).
TARGET = ("numpy", "lstm", "fwd_ms")


def make_run(tree: str, out: str, extra: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """One ``rnnbench run throughput --preset smoke`` in checkout ``tree`` (its own code first on the path)."""
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "harness", "run", "throughput", "--preset", "smoke", "--out", out,
           "--no-progress", *extra]
    r = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    return {"dir": out, "rc": r.returncode, "wall_s": time.monotonic() - t0, "load1": load,
            "tail": (r.stdout + r.stderr).strip().splitlines()[-3:]}


def _is_target(c: cmp.Comparison) -> bool:
    b, cell, metric = TARGET
    return (c.label.get("backend") == b and str(c.label.get("case", "")).startswith(cell + "-")
            and c.label.get("metric") == metric)


def _in_target_case(c: cmp.Comparison) -> bool:
    b, cell, _ = TARGET
    return c.label.get("backend") == b and str(c.label.get("case", "")).startswith(cell + "-")


def judge(base_dir: str, new_dir: str) -> Dict[str, Any]:
    """compare at the defaults, plus every timed comparison's (name, ratio, p, procs, in-target flags)."""
    rep = cmp.compare_sets(cmp.load_run(base_dir), cmp.load_run(new_dir))
    timed = [{"name": f"{c.label.get('backend')} {c.name()} {c.label.get('metric')}", "ratio": c.ratio, "p": c.p,
              "ratio_rel": c.ratio_rel, "p_rel": c.p_rel,
              "procs": list(c.procs), "target": _is_target(c), "target_case": _in_target_case(c),
              "verdict": c.verdict} for c in rep.rows if c.kind == "timed"]
    failed = [r for r in rep.rows if r.failed]
    return {"exit": 1 if failed else 0, "summary": cmp.summary_line(rep),
            "flagged": [f"{c.label.get('backend')} {c.name()} {c.label.get('metric')} ({c.why})" for c in failed],
            "timed": timed}


def _judged(t: Dict[str, Any]) -> Tuple[float, float]:
    """(ratio, p) that compare's verdict rests on: per control when the comparison has it, else the raw times."""
    rel = t.get("ratio_rel")
    if rel is not None and rel == rel:
        return rel, t["p_rel"]
    return t["ratio"], t["p"]


def _flags(p: Dict[str, Any], threshold: float, alpha: float) -> List[Dict[str, Any]]:
    """The comparisons that compare's rule flags slower at this threshold and alpha."""
    def slower(t):
        if min(t["procs"]) < cmp.MIN_PROCESSES:
            return False
        r, pv = _judged(t)
        return r > threshold and pv < alpha
    return [t for t in p["timed"] if slower(t)]


def summarise(aa: List[Dict[str, Any]], inj: List[Dict[str, Any]], runs: List[Dict[str, Any]],
              factor: float) -> str:
    walls = [r["wall_s"] for r in runs if r["wall_s"] == r["wall_s"]] or [float("nan")]
    loads = [r["load1"] for r in runs if r["load1"] == r["load1"]] or [float("nan")]
    lines = [f"compare trials: {len(runs)} separately made `rnnbench run throughput --preset smoke` runs "
             f"(default settings), A/A pairs {len(aa)}, injected {factor:g}x NumPy LSTM pairs {len(inj)}",
             f"run wall time {min(walls):.0f}..{max(walls):.0f} s (mean {sum(walls) / len(walls):.0f} s); load average "
             f"{min(loads):.2f}..{max(loads):.2f}" if runs else "no runs"]
    if aa:
        ok = sum(p["exit"] == 0 for p in aa)
        lines.append(f"A/A: compare exit 0 in {ok}/{len(aa)} pairs at the defaults (threshold "
                     f"{cmp.DEFAULT_THRESHOLD:g}, alpha {cmp.DEFAULT_ALPHA:g}, >= {cmp.MIN_PROCESSES} processes)")
        for i, p in enumerate(aa):
            if p["exit"]:
                lines.append(f"  pair {i}: {'; '.join(p['flagged'][:3])}")
    if inj:
        caught = sum(any(t["target"] and t["verdict"] == "slower" for t in p["timed"]) for p in inj)
        other = sum(any(not t["target_case"] and t["verdict"] == "slower" for t in p["timed"]) for p in inj)
        rs = sorted(_judged(t)[0] for p in inj for t in p["timed"] if t["target"])
        raw = sorted(t["ratio"] for p in inj for t in p["timed"] if t["target"])
        lines.append(f"injected {factor:g}x: {' '.join(TARGET)} flagged slower in {caught}/{len(inj)} pairs; pairs "
                     f"with anything outside the NumPy LSTM flagged: {other}/{len(inj)}; target ratio as judged, median "
                     f"{rs[len(rs) // 2]:.3f} [{rs[0]:.3f}..{rs[-1]:.3f}] (raw times {raw[len(raw) // 2]:.3f} "
                     f"[{raw[0]:.3f}..{raw[-1]:.3f}])" if rs else "injected: no target comparison")
    lines += ["", "re-read for other settings (A/A: pairs with any flag; injected: target caught / other flagged):",
              "threshold  alpha   " + f"{'A/A false alarms':>18}  {'injected caught':>16}  {'injected other':>15}"]
    for th in THRESHOLDS:
        for a in ALPHAS:
            fa = sum(bool(_flags(p, th, a)) for p in aa)
            ca = sum(any(t["target"] for t in _flags(p, th, a)) for p in inj)
            ot = sum(any(not t["target_case"] for t in _flags(p, th, a)) for p in inj)
            mark = "  <- default" if (th, a) == (cmp.DEFAULT_THRESHOLD, cmp.DEFAULT_ALPHA) else ""
            lines.append(f"{th:>9.2f}  {a:<6g}  {fa:>8}/{len(aa):<9}  {ca:>7}/{len(inj):<8}  {ot:>6}/{len(inj):<8}{mark}")
    for what, get in (("as judged", lambda t: _judged(t)[0]), ("raw times", lambda t: t["ratio"])):
        spread = sorted(get(t) for p in aa for t in p["timed"])
        if spread:
            q = lambda f: spread[min(len(spread) - 1, int(f * len(spread)))]  # noqa: E731
            lines += [f"A/A timed ratios {what} over all pairs and comparisons ({len(spread)}): median {q(0.5):.3f}, "
                      f"1 % {q(0.01):.3f}, 99 % {q(0.99):.3f}, max {spread[-1]:.3f}"]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.compare.trials", description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=".", help="repository whose committed HEAD is measured (default: .)")
    p.add_argument("--pairs", type=int, default=20, help="A/A pairs and injected pairs each (default 20)")
    p.add_argument("--factor", type=float, default=1.25, help="injected slowdown of the NumPy LSTM (default 1.25)")
    p.add_argument("--runs-dir", help="keep the run directories here (default: a temporary directory, removed)")
    p.add_argument("--max-minutes", type=float, default=90.0, help="stop starting runs after this long")
    p.add_argument("--out", default="results/compare_trials.json", help="JSON of every pair (default: %(default)s)")
    p.add_argument("--markdown", help="also write the summary here")
    p.add_argument("--processes", type=int, default=None,
                   help="pass --processes N to every run (default: the runs' own default; for measuring a change "
                        "of that default before making it)")
    p.add_argument("--rejudge", metavar="RUNS_DIR",
                   help="make no runs: judge the runs kept by an earlier --runs-dir again with the current compare "
                        "(A00, S00, A01, ...: the same pairs)")
    a = p.parse_args(argv)
    if a.rejudge:
        return _rejudge(a)
    if a.pairs < 1 or not a.factor > 1.0:
        p.error("--pairs must be >= 1 and --factor > 1")
    repo = os.path.abspath(a.repo)
    tmp = tempfile.mkdtemp(prefix="rnnbench-compare-trials-")
    runs_dir = os.path.abspath(a.runs_dir) if a.runs_dir else os.path.join(tmp, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    runs: List[Dict[str, Any]] = []
    aa: List[Dict[str, Any]] = []
    inj: List[Dict[str, Any]] = []
    t_start = time.monotonic()

    def save() -> str:
        text = summarise(aa, inj, runs, a.factor)
        if a.out:
            os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
            with open(a.out, "w", encoding="utf-8") as f:
                json.dump({"factor": a.factor, "threshold": cmp.DEFAULT_THRESHOLD, "alpha": cmp.DEFAULT_ALPHA,
                           "runs": runs, "aa": aa, "injected": inj, "summary": text}, f)
        return text

    try:
        key = f"slow-{a.factor:g}"
        trees = make_trees(repo, tmp, [a.factor], mode="time")
        prev_a: Optional[str] = None
        for i in range(a.pairs + 1):
            if time.monotonic() - t_start > 60 * a.max_minutes:
                print(f"compare trials: --max-minutes {a.max_minutes:g} reached; stopping", flush=True)
                break
            extra = ("--processes", str(a.processes)) if a.processes else ()
            ra = make_run(trees["base"], os.path.join(runs_dir, f"A{i:02d}"), extra)
            runs.append(ra)
            if prev_a is not None and ra["rc"] in (0, 1):
                aa.append(judge(prev_a, ra["dir"]))
                print(f"A/A pair {len(aa):2d}: exit {aa[-1]['exit']}  {aa[-1]['summary'][:150]}", flush=True)
            prev_a = ra["dir"] if ra["rc"] in (0, 1) else None
            if i < a.pairs and prev_a is not None:
                rs = make_run(trees[key], os.path.join(runs_dir, f"S{i:02d}"), extra)
                runs.append(rs)
                if rs["rc"] in (0, 1):
                    inj.append(judge(ra["dir"], rs["dir"]))
                    t = [x for x in inj[-1]["timed"] if x["target"]]
                    print(f"injected pair {len(inj):2d}: target ratio {_judged(t[0])[0] if t else float('nan'):.3f} "
                          f"{t[0]['verdict'] if t else '-'}; exit {inj[-1]['exit']}  {inj[-1]['summary'][:110]}",
                          flush=True)
            save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the checkouts (and the runs, unless --runs-dir keeps them)
    text = save()
    print(text)
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write("```\n" + text + "\n```\n")
    return 0 if runs else 2


def _rejudge(a) -> int:
    """The pairs of a kept runs directory, judged again (the runs are the measurement; the verdict is code)."""
    d = os.path.abspath(a.rejudge)
    names = sorted(n for n in os.listdir(d) if n[:1] in "AS" and n[1:].isdigit())
    runs = []
    for n in names:
        meta_path = os.path.join(d, n, "meta.json")
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        t0, t1 = meta.get("start_time"), meta.get("end_time")
        wall = float("nan")
        if t0 and t1:
            from datetime import datetime
            wall = (datetime.fromisoformat(t1) - datetime.fromisoformat(t0)).total_seconds()
        runs.append({"dir": os.path.join(d, n), "rc": 0, "wall_s": wall, "load1": float("nan")})
    have = {os.path.basename(r["dir"]) for r in runs}
    aa = [judge(os.path.join(d, f"A{i:02d}"), os.path.join(d, f"A{i + 1:02d}"))
          for i in range(100) if f"A{i:02d}" in have and f"A{i + 1:02d}" in have]
    inj = [judge(os.path.join(d, f"A{i:02d}"), os.path.join(d, f"S{i:02d}"))
           for i in range(100) if f"A{i:02d}" in have and f"S{i:02d}" in have]
    text = summarise(aa, inj, runs, a.factor)
    print(text)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump({"factor": a.factor, "rejudged": d, "aa": aa, "injected": inj, "summary": text}, f)
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write("```\n" + text + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
