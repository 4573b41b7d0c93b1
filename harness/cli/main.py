"""The ``rnnbench`` command line.

Subcommands are thin: each parses its arguments and calls one function of the layer below
(``runner``, ``report``, ``compare``, ``gate``), imported only when that subcommand runs, so that
``rnnbench --help`` needs nothing but NumPy.

Exit codes: 0 ok, 1 regression or failed check, 2 bad usage or bad input, 3 an internal error (a bug).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from harness.core.errors import RnnbenchError, UsageError  # noqa: F401 - UsageError re-exported

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3

SUITES = ("throughput", "memory", "gradients", "ctc")
PRESETS = ("smoke", "quick", "full")

DESCRIPTION = """\
rnnbench: benchmark and analyse recurrent networks (vanilla RNN, LSTM, GRU) across NumPy,
PyTorch (CPU/cuDNN) and JAX, through one interface.

Typical use:
  rnnbench list                              what can run here, and why not the rest
  rnnbench run --preset quick                all suites, quick preset -> results/runs/<id>/
  rnnbench report results/runs/<id>          report.md + report.html + figures/
  rnnbench compare BASE_DIR NEW_DIR          ratios with significance; exit 1 on a regression
  rnnbench gate --base HEAD~1                CI performance gate against another revision
  rnnbench check my.module:MyRNN             conformance battery for your own backend
  rnnbench worker tcp://HOST:8786            join this host to a Dask cluster (then: run --cluster ADDRESS)
"""




def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run suites and record every measurement",
                       description="Run benchmark suites. Each finished measurement is appended to DIR/rows.jsonl "
                                   "(flushed and fsynced) before the next starts; DIR/meta.json records the "
                                   "machine, versions, seed and command.\n\nExit status: 0 when every case ran "
                                   "and passed its checks; 1 when any row is error/oom/timeout (a failed "
                                   "correctness check, a crash) or a backend named with --backend cannot run here "
                                   "(the run still finishes every case); 2 bad usage; 130 interrupted. Rows with "
                                   "status 'limit' (a gradient curve that reached the edge of its float format) "
                                   "are expected results, not failures.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suites", nargs="*", metavar="SUITE",
                   help=f"suites to run (default: all present): {', '.join(SUITES)}, or module:ATTR for a "
                        "plug-in suite")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help=f"size of the sweep: {', '.join(PRESETS)} (default: quick, or the resumed run's; "
                        "smoke takes seconds)")
    p.add_argument("--backend", action="append", metavar="B",
                   help="backend to include (repeatable; default: every available one). See `rnnbench list`.")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="cpu or cuda (default: cpu, or the resumed run's)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: results/runs/<timestamp>)")
    p.add_argument("--resume", action="store_true",
                   help="finish the run in --out: skip finished cases, re-run the others (a case cut off "
                        "mid-way is recorded again as a new attempt; the old one is dropped when loading). It keeps the run's "
                        "suites, backends and settings: leave them out, or name the same ones")
    p.add_argument("--threads", type=int, metavar="N",
                   help="intra-op threads for every backend alike (default: all cores)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of every weight and input (default: 0, or the resumed run's)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="per-case time limit in seconds (default: the suite's, else 300/900/3600 s for "
                        "smoke/quick/full); a case over it is killed and recorded as 'timeout'")
    p.add_argument("--budget", type=float, metavar="S",
                   help="seconds of timed repeats per measurement (default: set by the preset)")
    p.add_argument("--processes", type=int, metavar="N", default=None,
                   help="independent worker processes that time each case, in interleaved rounds (default: the "
                        "suite's: 5 for throughput, 1 for suites that time nothing); compare needs >= 3 per side "
                        "to judge a timing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (plain lines instead)")
    p.add_argument("--report", action="store_true", help="write the report when the run ends")
    p.add_argument("--cluster", metavar="ADDRESS", default=None,
                   help="run the cases as tasks on a Dask distributed cluster (a scheduler address such as "
                        "tcp://10.0.0.5:8786, or a scheduler file) whose workers were started with `rnnbench "
                        "worker ADDRESS`; rows come back to DIR as they are measured, each saying which host it "
                        "ran on. Timing cases get a worker to themselves; correctness cases share one")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write report.md/.html and figures from a run directory (or several)",
                       description="Turn a run directory into DIR/report.md, DIR/report.html and DIR/figures/*.png. "
                                   "Several run directories (runs on different machines, e.g. a CPU and a GPU "
                                   "run of one preset) make one report across machines in --out: a machines "
                                   "table, per timing a column per machine with speed-ups, and the checks per "
                                   "machine. Never re-runs anything; the runs are only read.")
    p.add_argument("run_dir", metavar="DIR", nargs="+")
    p.add_argument("--out", metavar="OUT",
                   help="write the report into OUT (created if missing) instead of the run directory; required "
                        "with several run directories")
    p.add_argument("--baseline", metavar="BACKEND", default="torch",
                   help="backend that speed-ups are relative to (default: torch)")
    p.add_argument("--suite", action="append", metavar="MODULE:ATTR", default=[],
                   help="a plug-in suite whose rows are in the run: its report_section writes its part "
                        "(repeatable). A run directory never names code to import; built-in suites need nothing")


def _add_compare(sub) -> None:
    from harness.compare import compare as c  # NumPy only: the defaults are written once, there
    p = sub.add_parser("compare", help="compare two runs: ratios, confidence intervals, verdicts",
                       description="Compare two run directories (or two asv result files) case by case. A timing is "
                                   "judged over its independent processes (in units of the harness's control "
                                   "workload on the CPU): ratio of the medians of per-process values, "
                                   "hierarchical-bootstrap 95%% CI, t-test on their logs, verdict. Deterministic "
                                   "metrics are checked against tolerances. Exit 1 when a case is significantly "
                                   "slower than the threshold allows or a deterministic metric got worse, 2 on "
                                   "bad input (including two different machines without --across-machines).")
    p.add_argument("base", metavar="BASE")
    p.add_argument("new", metavar="NEW")
    p.add_argument("--threshold", type=float, default=None, metavar="R",
                   help=f"a slowdown must exceed this ratio to count (default: {c.DEFAULT_THRESHOLD:g})")
    p.add_argument("--alpha", type=float, default=None, metavar="P",
                   help=f"significance level of the test over processes (default: {c.DEFAULT_ALPHA:g})")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--figure", metavar="FILE", help="also write a figure of the ratios")
    p.add_argument("--across-machines", action="store_true",
                   help="BASE and NEW ran on different machines (CPU model, cores or GPU differ; refused without "
                        "this): judge the deterministic metrics (errors, bytes, checks) and show the time ratios as "
                        "descriptive numbers, never as verdicts")


def _add_gate(sub) -> None:
    from harness.gate import gate as g  # standard library only: cheap, and the defaults are written once
    p = sub.add_parser("gate", help="CI performance gate: this tree against another revision",
                       description="Check out REV in a git worktree; each of --rounds fresh processes loads "
                                   "both trees and times their gate cases in adjacent pairs (A B B A ...); fail "
                                   "(exit 1) only on a significant slowdown beyond --threshold that a re-run "
                                   "confirms, or on an equivalence error past its tolerance.")
    p.add_argument("--base", metavar="REV", help="revision to compare against (default: merge-base with main, "
                                                 "else HEAD~1)")
    p.add_argument("--backend", action="append", metavar="B", help="backend(s) to gate (default: numpy); "
                                                                    "module:Class for a plug-in")
    p.add_argument("--threshold", type=float, default=None, metavar="R",
                   help=f"head/base time ratio beyond which a significant slowdown fails (default: {g.DEFAULT_THRESHOLD:g})")
    p.add_argument("--markdown", metavar="FILE", help="write the summary as Markdown")
    p.add_argument("--repo", metavar="DIR", default=".", help="repository to gate (default: .)")
    p.add_argument("--alpha", type=float, default=None, metavar="P",
                   help=f"significance level of the one-sided Wilcoxon signed-rank test over processes (default: {g.DEFAULT_ALPHA:g})")
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help="worker processes, each loading both trees and timing them in adjacent pairs "
                        f"(default: {g.DEFAULT_ROUNDS}, set from the measured trials)")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="timed pairs (one sample of each tree) per case and mode in each process "
                        f"(default: {g.DEFAULT_SAMPLES}, set from the trials)")
    p.add_argument("--case", action="append", metavar="TEXT",
                   help="only gate cases whose name contains TEXT (repeatable; default: every smoke case)")
    p.add_argument("--preset", default=None, metavar="NAME", help="preset the gate cases come from (default: smoke)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the worker processes to one core")
    p.add_argument("--no-confirm", action="store_true", help="fail on the first flag, without the confirmation re-run")
    p.add_argument("--force", action="store_true",
                   help="measure even when no Python file, pyproject.toml or constraints.txt changed since REV "
                        "(default: such a change-free gate passes at once, saying so)")


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="conformance battery for a backend: every part against the reference",
                       description="Check BACKEND (a registry name or module:Class) against the float64 NumPy "
                                   "reference: for every cell it supports x layers 1, 2 x every dtype it claims, on "
                                   "shapes with T=1, B=1 and odd sizes, the output, final state, every parameter "
                                   "gradient, dx, dstate and hidden-state gradients, each with its own error; "
                                   "float64 finite differences; the bad-input contract; the timing hooks; "
                                   "versions(). Exit 0 when every check passes, 1 when any fails, 2 on bad usage.")
    p.add_argument("backend", metavar="BACKEND")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu or cuda (default: cpu)")
    p.add_argument("--cell", action="append", metavar="CELL", help="only this cell (repeatable; default: all it supports)")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown (a CI summary)")
    p.add_argument("--verbose", action="store_true", help="list every check with its measured error, not only failures")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnbench", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from harness import __version__
    parser.add_argument("--version", action="version", version=f"rnnbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("list", help="backends, devices and versions; why the unavailable ones are",
                       description="List every backend and device, whether it runs here, its versions, "
                                   "and for the unavailable ones the reason.")
    p.add_argument("--device", action="append", metavar="DEV", help="only this device (cpu/cuda)")
    p.add_argument("--backend", action="append", metavar="B",
                   help="only these backends (repeatable); module:Class shows a plug-in that is not registered")
    p.add_argument("--capabilities", action="store_true",
                   help="also what each available backend declares: cells, algorithms, dtypes, CTC, ceilings")
    _add_run(sub)
    _add_report(sub)
    _add_compare(sub)
    _add_gate(sub)
    _add_check(sub)
    _add_worker(sub)
    return parser


def _add_worker(sub) -> None:
    p = sub.add_parser("worker", help="join this host to a Dask cluster that `rnnbench run --cluster` uses",
                       description="Start a Dask worker on this host, set up the way benchmarks need it: it "
                                   "declares the resource rnnbench-host=1, so a timing case (which requests all "
                                   "of it) has the worker to itself while correctness cases (1/64 each) share it "
                                   "up to --nthreads at a time; worker processes are not daemonic, so each case "
                                   "can run in its own per-case process as a local run does. Stops on Ctrl-C. "
                                   "The plain equivalent: DASK_DISTRIBUTED__WORKER__DAEMON=False dask worker "
                                   "ADDRESS --nworkers 1 --nthreads N --resources rnnbench-host=1")
    p.add_argument("address", metavar="ADDRESS", help="the Dask scheduler, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--gpu", type=int, metavar="N", default=None,
                   help="give this worker GPU N only (CUDA_VISIBLE_DEVICES=N): one worker per GPU, each GPU's "
                        "timing cases alone on it")
    p.add_argument("--nthreads", type=int, metavar="N", default=None,
                   help="correctness cases this worker runs at once (default: the cores this process may use)")
    p.add_argument("--name", metavar="NAME", default=None, help="the worker's name in the cluster (default: Dask's)")


def cmd_list(args) -> int:
    from implementations import registry as backends
    devices = tuple(args.device) if args.device else backends.DEVICES
    for d in devices:
        if d not in backends.DEVICES:
            raise UsageError(f"--device: got {d!r}; allowed: {', '.join(backends.DEVICES)}")
    from harness.core import cells
    cells.load_plugins()  # a broken plug-in cell module: one line, exit 2
    for b in args.backend or []:
        problem = backends.resolution_problem(b) if ":" in b else (
            None if b in backends.names() else f"unknown; allowed: {', '.join(backends.names())} or module:Class")
        if problem:
            raise UsageError(f"--backend {b!r}: {problem}")
    infos = backends.available(devices, backends=list(args.backend) if args.backend else None)
    width = max(len(i.name) for i in infos)
    for i in infos:
        mark = "yes" if i.available else "no "
        detail = ", ".join(f"{k} {v}" for k, v in i.versions.items()) if i.available else i.reason
        print(f"{i.name:<{width}}  {i.device:<4}  {mark}  {detail}")
        if i.available and args.capabilities:
            c = i.capabilities
            print(f"{'':<{width}}        cells {', '.join(c['cells'])}; algorithms {', '.join(c['algorithms'])}; "
                  f"dtypes {', '.join(c['dtypes'])}; ctc {'yes' if c['has_ctc'] else 'no'}; "
                  f"ceilings {c['framework'] or 'none'}")
    return EXIT_OK


def cmd_run(args) -> int:
    """``rnnbench run``: the runner, then (``--report``) the report."""
    from harness.run.runner import run_suites
    try:
        out = run_suites(args.suites or None, preset=args.preset, backends=args.backend, device=args.device,
                         out=args.out, resume=args.resume, threads=args.threads, seed=args.seed,
                         timeout=args.timeout, budget=args.budget,
                         progress=False if args.no_progress else None, argv=sys.argv, next_hint=not args.report,
                         processes=args.processes, cluster=args.cluster)
    except KeyboardInterrupt:
        return 130
    if args.report:
        from harness.report.report import write_report
        print(f"report: {write_report(out)}")
    from harness.run.runner import run_problems
    problems = run_problems(out)
    if problems:  # every case ran and is recorded; the exit code tells CI that something failed
        print("run FAILED: " + "; ".join(problems), file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


#: subcommand -> (module, function); each function takes the parsed args and returns an exit code
HANDLERS = {
    "run": ("harness.cli.main", "cmd_run"),
    "report": ("harness.report.report", "cli_report"),
    "compare": ("harness.compare.compare", "cli_compare"),
    "gate": ("harness.gate.gate", "cli_gate"),
    "check": ("harness.check.battery", "cli_check"),
    "worker": ("harness.run.cluster_worker", "cli_worker"),
}


def main(argv: Optional[List[str]] = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a path that is not UTF-8 is printed escaped, not crashed on
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # pragma: no cover - a replaced or closed stream
            pass
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "list":
            return cmd_list(args)
        mod, fn = HANDLERS[args.command]
        return int(getattr(importlib.import_module(mod), fn)(args) or 0)
    except RnnbenchError as e:
        # Raised on purpose: the message names what was wrong and what is allowed. One line, exit 2.
        print(f"rnnbench {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"rnnbench {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - not raised on purpose: a bug, shown as one
        import traceback
        traceback.print_exc()
        print(f"rnnbench {args.command}: internal error (a bug in rnnbench or in a plug-in; the traceback "
              "above says where)", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
