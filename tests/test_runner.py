"""The runner: isolation of faults (crash, hang, MemoryError, exception), resume after SIGKILL, Ctrl-C, the lock,
threads, and bad names (exit 2, one line).

Uses the fake suite and plug-in backend of ``tests/fake_backends.py``. Spawned workers cost ~1 s each, so the
number of runs here is kept small.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from harness.measure import records
from harness.cli.main import UsageError, main
from harness.run.runner import acquire_lock, release_lock, run_suites
from tests import fake_backends as fb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fake_suite(monkeypatch):
    """Register the fake suite under the name ``fake`` (as a suite module of this tree would be)."""
    from suites import base
    monkeypatch.setitem(base.SUITE_MODULES, "fake", "tests.fake_backends")
    return "fake"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "harness", "run", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _by_case(rows):
    out = {}
    for r in rows:
        out.setdefault(r["case"], []).append(r)
    return out


def test_faults_become_rows_and_the_run_goes_on(tmp_path, fake_suite, capsys):
    out = str(tmp_path / "run")
    env_before = os.environ.get("OMP_NUM_THREADS")
    run_dir = run_suites([fake_suite], preset="smoke", backends=[fb.FAKE, fb.UNAVAILABLE], out=out, threads=1,
                         seed=7, progress=False)
    assert os.environ.get("OMP_NUM_THREADS") == env_before  # the parent's environment is restored
    assert run_dir == out
    printed = capsys.readouterr().out
    assert "rnnbench report" in printed and "run finished: 12 case(s)" in printed

    rows, latest, done, bad = records.scan(out)
    assert bad == []
    assert len(done) == 12 and set(latest.values()) == {1}
    fake = _by_case([r for r in rows if r["backend"] == fb.FAKE])
    statuses = {case: [(r["metric"], r["status"]) for r in rs] for case, rs in fake.items()}
    assert statuses["0-ok"] == [("a_ms", "ok"), ("b_ms", "ok")]
    # crash: the row yielded before os._exit is kept, then an error row with the exit code
    assert statuses["1-crash"] == [("a_ms", "ok"), ("status", "error")]
    assert "exit code 3" in fake["1-crash"][1]["reason"]
    # hang: killed at its own 1.5 s limit (case setting), a timeout row
    assert statuses["2-hang"] == [("a_ms", "ok"), ("status", "timeout")]
    assert "1.5 s" in fake["2-hang"][1]["reason"]
    assert statuses["3-oom"] == [("status", "oom")]
    assert fake["3-oom"][0]["reason"] == "MemoryError: fake: cannot allocate 1 TiB"
    assert statuses["4-raise"] == [("status", "error")]
    assert fake["4-raise"][0]["reason"] == "RuntimeError: boom"
    assert any("RuntimeError: boom" in line for line in fake["4-raise"][0]["extra"]["traceback"])
    # the last case ran after all of that, in a fresh worker (the crash and the hang each cost one)
    assert statuses["5-ok"] == [("a_ms", "ok"), ("b_ms", "ok")]
    assert fake["5-ok"][1]["extra"]["worker_pid"] != fake["0-ok"][1]["extra"]["worker_pid"]

    # unavailable backend: one skipped row per case, with the probe's reason
    skipped = [r for r in rows if r["backend"] == fb.UNAVAILABLE]
    assert len(skipped) == 6 and {r["status"] for r in skipped} == {"skipped"}
    assert all("not installed here" in r["reason"] for r in skipped)

    # threads: env before import, Backend.set_threads in the worker, pinned to 1 CPU, recorded everywhere
    b = fake["0-ok"][1]["extra"]
    assert b["env_omp"] == "1" and b["set_threads"] == [1] and b["ctx_threads"] == 1 and b["seed"] == 7
    if len(os.sched_getaffinity(0)) > 1:
        assert b["cpus"] == 1
    assert all(r["extra"]["threads"] == 1 for r in rows)
    assert all(r["case_key"] and r["attempt"] == 1 for r in rows)

    meta = records.read_meta(out)
    assert meta["threads"] == 1 and meta["seed"] == 7 and meta["preset"] == "smoke"
    assert meta["status"] == "complete" and meta["cases"] == 12
    assert meta["counts"] == {"ok": 6, "skipped": 6, "error": 2, "oom": 1, "timeout": 1}
    assert meta["thread_settings"]["env"]["OMP_NUM_THREADS"] == "1"
    assert not os.path.exists(os.path.join(out, records.LOCK_FILE))

    df = records.load(out)
    assert len(df) == len(rows) and df["complete"].all()


def _wait_for_lines(proc, n, timeout=60):
    """Read stdout lines of ``proc`` until ``n`` progress lines ('[i/N] ...') have been seen."""
    seen, lines, t0 = 0, [], time.monotonic()
    while seen < n:
        assert time.monotonic() - t0 < timeout, f"no progress: {lines}"
        line = proc.stdout.readline()
        assert line, f"run ended early: {lines} / {proc.stderr.read()}"
        lines.append(line)
        seen += line.startswith("[")
    return lines


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path):
    out = str(tmp_path / "run")
    args = [sys.executable, "-m", "harness", "run", fb.SUITE_REF, "--preset", "quick", "--backend", fb.FAKE,
            "--out", out, "--no-progress", "--threads", "1"]
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lines(proc, 2)
        # Kill once the third case has written its first row (it then sleeps 0.3 s before its second).
        t0 = time.monotonic()
        while not [k for k in records.scan(out)[1] if k not in records.scan(out)[2]]:
            assert time.monotonic() - t0 < 30 and proc.poll() is None, "the third case never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    rows, latest, done, _ = records.scan(out)
    assert 2 <= len(done) < 6, "the kill should land mid-run"
    partial = [k for k in latest if k not in done]
    assert partial, "one case should have rows but no done-marker"
    assert open(os.path.join(out, records.LOCK_FILE)).read().strip() == str(proc.pid)

    # The run directory names plug-ins: a resume without them on the command line refuses to import them ...
    r = subprocess.run([sys.executable, "-m", "harness", "run", "--out", out, "--resume", "--no-progress"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot choose code to import" in r.stderr, r.stderr
    # ... and resumes when they are named again
    r = subprocess.run([sys.executable, "-m", "harness", "run", fb.SUITE_REF, "--backend", fb.FAKE, "--out", out,
                        "--resume", "--no-progress"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "stale lock" in r.stdout
    assert f"{len(done)} case(s) already finished" in r.stdout

    rows, latest, done2, bad = records.scan(out)
    assert len(done2) == 6 and bad == []
    for key in partial:
        assert latest[key] == 2  # re-run as a second attempt
    df = records.load(out)
    pairs = Counter(zip(df["case_key"], df["metric"]))
    assert len(pairs) == 12 and set(pairs.values()) == {1}, pairs
    assert (df["status"] == "ok").all() and df["complete"].all()
    # the raw file holds the interrupted attempt's row too: load() dropped it
    raw = [json.loads(line) for line in open(os.path.join(out, records.ROWS_FILE)) if line.strip()]
    assert sum(1 for o in raw if o.get("case_key") == partial[0] and o.get("metric") == "a_ms") == 2
    meta = records.read_meta(out)
    assert meta["status"] == "complete" and meta["preset"] == "quick" and len(meta["resumed"]) == 1
    assert meta["threads"] == 1  # taken from the run being resumed


def test_ctrl_c_stops_cleanly_keeps_rows_and_says_how_to_resume(tmp_path):
    out = str(tmp_path / "run")
    args = [sys.executable, "-m", "harness", "run", fb.SUITE_REF, "--preset", "quick", "--backend", fb.FAKE,
            "--out", out, "--no-progress"]
    # A shell's background job (CI scripts, `cmd &`) inherits SIGINT *ignored*, and Python then keeps ignoring
    # it: the child gets the default disposition back, as a terminal's Ctrl-C would find it.
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for_lines(proc, 1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert f"rnnbench run --out {out} --resume" in err
    _, _, done, _ = records.scan(out)
    assert 1 <= len(done) < 6
    assert records.read_meta(out)["status"] == "interrupted"
    assert not os.path.exists(os.path.join(out, records.LOCK_FILE))


def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path, fake_suite, capsys):
    out = tmp_path / "run"
    out.mkdir()
    hold = (f"import sys, time; sys.path.insert(0, {ROOT!r}); from harness.run.runner import acquire_lock; "
            f"l = acquire_lock({str(out)!r}); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"run directory in use by pid {holder.pid}"):
            run_suites([fake_suite], preset="full", backends=[fb.FAKE], out=str(out), progress=False)
        # through the CLI: exit code 2, one line
        assert main(["run", "fake", "--preset", "full", "--backend", fb.FAKE, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by pid {holder.pid}" in err[0]
        assert not (out / records.ROWS_FILE).exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and is taken over
    run_suites([fake_suite], preset="full", backends=[fb.FAKE], out=str(out), progress=False)
    assert "taking over the stale lock" in capsys.readouterr().out
    _, _, done, _ = records.scan(str(out))
    assert len(done) == 2
    assert not (out / records.LOCK_FILE).exists()


def test_lock_helpers(tmp_path):
    path = acquire_lock(str(tmp_path))
    assert open(path).read().strip() == str(os.getpid())
    release_lock(path)
    assert not os.path.exists(path)


def test_existing_run_needs_resume_and_resume_keeps_settings(tmp_path, fake_suite):
    out = str(tmp_path / "run")
    os.makedirs(out)
    with open(os.path.join(out, records.ROWS_FILE), "w") as f:
        f.write('{"_case_done": "x", "attempt": 1}\n')
    records.write_meta(out, {"run_id": "r", "preset": "full", "seed": 3, "threads": 1, "device": "cpu",
                             "suites": [fake_suite], "backends": [fb.FAKE]})
    with pytest.raises(UsageError, match="already holds a run; add --resume"):
        run_suites([fake_suite], preset="full", backends=[fb.FAKE], out=out, progress=False)
    with pytest.raises(UsageError, match="--seed: got 4 but the run being resumed used 3"):
        run_suites(None, backends=[fb.FAKE], out=out, resume=True, seed=4, progress=False)
    with pytest.raises(UsageError, match="--resume needs --out"):
        run_suites([fake_suite], resume=True)
    # other backends or suites would mix a second run into this directory while meta.json describes the first
    with pytest.raises(UsageError, match=r"--backend: got jax but the run being resumed ran .*start a new run"):
        run_suites(None, backends=["jax"], out=out, resume=True, progress=False)
    with pytest.raises(UsageError, match=r"suites: got throughput but the run being resumed ran"):
        run_suites(["throughput"], backends=[fb.FAKE], out=out, resume=True, progress=False)


@pytest.mark.parametrize("args, needle", [
    (["--preset", "nope"], "--preset: got 'nope'; allowed: smoke, quick, full"),
    ([fb.SUITE_REF, "--preset", "nope"], "--preset: got 'nope'; allowed: smoke, quick, full"),
    (["nosuch"], "suite: got 'nosuch'; allowed:"),
    ([fb.SUITE_REF, "--backend", "nope"], "--backend: got 'nope'; allowed: numpy, torch"),
    ([fb.SUITE_REF, "--device", "tpu"], "--device: got 'tpu'; allowed: cpu, cuda"),
    ([fb.SUITE_REF, "--threads", "0"], "--threads: got 0"),
])
def test_bad_names_exit_2_with_one_line(args, needle):
    r = _cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("rnnbench run: ") and needle in lines[0], lines[0]


def test_bad_out_exits_2(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    for out, needle in ((f, "exists and is not a directory"), (f / "sub", "cannot create")):
        r = _cli(fb.SUITE_REF, "--preset", "full", "--backend", fb.FAKE, "--out", str(out))
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], lines


def test_report_flag_writes_the_report_and_does_not_say_next(tmp_path, fake_suite, monkeypatch, capsys):
    import types

    from harness.cli.main import build_parser, cmd_run

    calls = []
    fake_report = types.ModuleType("harness.report.report")
    fake_report.write_report = lambda run_dir: calls.append(run_dir) or os.path.join(run_dir, "report.md")
    monkeypatch.setitem(sys.modules, "harness.report.report", fake_report)
    out = str(tmp_path / "run")
    args = build_parser().parse_args(["run", "fake", "--preset", "full", "--backend", fb.FAKE, "--out", out,
                                      "--no-progress", "--report"])
    assert cmd_run(args) == 0
    assert calls == [out]
    text = capsys.readouterr().out
    assert f"report: {os.path.join(out, 'report.md')}" in text
    assert "next: rnnbench report" not in text  # the report is already written

    args = build_parser().parse_args(["run", "fake", "--preset", "full", "--backend", fb.FAKE, "--out",
                                      str(tmp_path / "run2"), "--no-progress"])
    assert cmd_run(args) == 0
    assert "next: rnnbench report" in capsys.readouterr().out


def test_processes_run_in_rounds_merge_on_load_and_resume_per_process(tmp_path, fake_suite, capsys):
    """--processes 3: every case runs in 3 fresh workers (round 0 of all cases, then round 1, ...); load merges
    them into one row per measurement, with the samples by process; a resume re-runs only missing processes."""
    out = str(tmp_path / "run")
    run_suites([fake_suite], preset="full", backends=[fb.FAKE], out=out, threads=1, progress=False, processes=3)
    raw, _, done, _ = records.scan(out)
    assert len(done) == 2 * 3 and all(r["extra"]["processes"] == 3 for r in raw)
    # rounds: the pid of round k is the same for both cases of round k and differs between rounds
    pids = {(r["case"], r["extra"]["process"]): r["extra"]["worker_pid"] for r in raw if r["metric"] == "b_ms"}
    assert pids[("0-ok", 0)] == pids[("1-ok", 0)] and len({pids[("0-ok", k)] for k in range(3)}) == 3
    # rotation: round 0 starts with case 0, round 1 with case 1 (a fresh worker's first case moves each round)
    first = {}
    for r in raw:
        first.setdefault(r["extra"]["process"], r["case"])
    assert first[0] == "0-ok" and first[1] == "1-ok" and first[2] == "0-ok"
    df = records.load(out)
    a = df[df.metric == "a_ms"]
    assert len(a) == 2 and set(a.processes) == {3} and all(len(g) == 3 for g in a.process_samples)
    assert list(a.n) == [9, 9] and bool(a.complete.all())
    assert len(records.load(out, merge=False)) == len(raw)
    assert "(process 3/3)" in capsys.readouterr().out
    # Lose the last process of one case (its marker): the resume runs exactly that one again.
    with open(os.path.join(out, records.ROWS_FILE)) as f:
        lines = f.readlines()
    key = "fake/" + fb.FAKE + "/cpu/1-ok#p2"
    with open(os.path.join(out, records.ROWS_FILE), "w") as f:
        f.writelines(line for line in lines if key not in line)
    run_suites(None, backends=[fb.FAKE], out=out, resume=True, progress=False)
    printed = capsys.readouterr().out
    assert "1 case-process(es) to run" in printed
    assert len(records.load(out)[lambda d: d.metric == "a_ms"]) == 2


def test_run_exit_code_says_whether_anything_failed(tmp_path, fake_suite, monkeypatch):
    """rnnbench run: 1 when a row failed (the run still finishes), 0 when all is well, 1 for an unavailable
    backend that was asked for by name."""
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    bad = main(["run", fake_suite, "--preset", "smoke", "--backend", fb.FAKE, "--out", str(tmp_path / "a"),
                "--no-progress", "--threads", "1"])
    good = main(["run", fake_suite, "--preset", "full", "--backend", fb.FAKE, "--out", str(tmp_path / "b"),
                 "--no-progress", "--threads", "1"])
    missing = main(["run", fake_suite, "--preset", "full", "--backend", fb.UNAVAILABLE, "--out", str(tmp_path / "c"),
                    "--no-progress", "--threads", "1"])
    assert (bad, good, missing) == (1, 0, 1)
    assert records.read_meta(str(tmp_path / "c"))["requested_unavailable"]


def test_processes_option_is_validated(tmp_path, fake_suite):
    for bad in (0, -1, 51, True, 2.5):
        with pytest.raises(UsageError, match="--processes"):
            run_suites([fake_suite], preset="full", backends=[fb.FAKE], out=str(tmp_path / f"r{bad}"),
                       progress=False, processes=bad)


def test_a_named_backend_a_suite_gives_no_case_is_told_why(tmp_path, capsys):
    """The memory suite has nothing for a parallel scan (the reference measures the gated cells), and the CTC suite
    measures torch-compile as torch: a run naming them says so instead of passing silently with no rows."""
    assert main(["run", "memory", "--preset", "smoke", "--backend", "torch-pscan", "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "suite 'memory' has no case for backend 'torch-pscan' on cpu (it declares cells mingru, minlstm, rglru, " \
           "sweep 'gated-linear')" in err
    assert main(["run", "ctc", "--preset", "smoke", "--backend", "torch-compile", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    assert "suite 'ctc' measures backend 'torch-compile' as 'torch' (the same code for this suite): its rows are " \
           "'torch''s" in capsys.readouterr().err
    assert main(["run", "ctc", "--preset", "smoke", "--backend", "numpy", "--out", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    assert "has no case" not in capsys.readouterr().err  # a backend with cases: nothing to say
