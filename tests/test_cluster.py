"""``rnnbench run --cluster`` on a real Dask cluster on 127.0.0.1: a scheduler and two ``rnnbench worker``
processes (free ports, bounded time, all stopped at the end)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Optional

import pytest

pytest.importorskip("distributed")
pytest.importorskip("pandas")

from harness.measure import records  # noqa: E402
from harness.run import cluster as cl  # noqa: E402
from harness.run import loopback  # noqa: E402
from harness.run.runner import run_suites  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT_S = loopback.START_TIMEOUT_S


def _env():
    return loopback._env()


def LocalCluster(tmp, n: int = 2, nthreads: int = 1, env: Optional[dict] = None) -> loopback.LoopbackCluster:
    """A scheduler and ``n`` rnnbench workers as separate processes (what a user starts by hand)."""
    return loopback.LoopbackCluster(str(tmp), n=n, nthreads=nthreads, env=env)


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path)
    yield c
    c.close()


def _rows(run_dir):
    return {(r["case_key"], r["metric"], tuple(sorted((k, str(v)) for k, v in (r.get("extra") or {}).items()
                                                       if k in records.IDENTITY_EXTRAS))): r
            for r in records.load(run_dir).to_dict("records")}


def _keys(df, key):
    """One tuple of text per row (NaN as 'nan': pandas 3 keeps NaN through astype(str))."""
    return [tuple(str(v) for v in row) for row in df[key].itertuples(index=False)]


def test_a_cluster_run_equals_a_local_run(cluster, tmp_path):
    t0 = time.monotonic()
    # NumPy only: the point is the harness around the cases (every backend's own cases are the local tests')
    on = run_suites(["ctc", "gradients"], preset="smoke", out=str(tmp_path / "on"), progress=False,
                    cluster=cluster.sched_file, threads=1, backends=["numpy"])
    t_cluster = time.monotonic() - t0
    local = run_suites(["ctc", "gradients"], preset="smoke", out=str(tmp_path / "local"), progress=False, threads=1,
                       backends=["numpy"])
    a, b = records.load(on), records.load(local)
    key = ["case_key", "metric"] + [c for c in records.IDENTITY_EXTRAS if c in a.columns and c in b.columns]
    ka, kb = sorted(_keys(a, key)), sorted(_keys(b, key))
    assert ka == kb  # the same cases and metrics, each as often
    # deterministic values (errors, gradient norms, rates, checks) identical; times are not compared
    sa = a.assign(_k=_keys(a, key)).sort_values("_k", kind="stable")
    sb = b.assign(_k=_keys(b, key)).sort_values("_k", kind="stable")
    assert list(sa["status"]) == list(sb["status"])
    det = [(k, x, y) for k, x, y, u, st in zip(sa["_k"], sa["value"], sb["value"], sa["unit"], sa["status"])
           if u not in ("ms", "s", "us") and st == "ok" and not str(k[1]).endswith("_s")]
    assert len(det) > 100
    differ = [d for d in det if not (d[1] == d[2] or (d[1] != d[1] and d[2] != d[2]))]
    assert not differ, differ[:5]
    # every row says where it ran; meta.json lists the host
    assert a["host"].notna().all() and a["cluster_worker"].notna().all() and a["host_versions"].notna().all()
    meta = json.load(open(os.path.join(on, "meta.json")))
    assert list(meta["hosts"]) and meta["cluster"]["workers"] == 2
    # correctness cases share a worker and say so; the CTC timing case had one to itself
    timing = a["case"].astype(str).str.startswith("timing-")
    assert timing.any() and not a.loc[timing, "shared"].astype(bool).any() and a.loc[~timing, "shared"].astype(bool).all()
    print(f"cluster run {t_cluster:.1f} s")


def test_a_worker_killed_mid_sweep_costs_nothing(cluster, tmp_path):
    import threading

    out = str(tmp_path / "run")

    def kill_one_when_rows_flow():
        rows = os.path.join(out, records.ROWS_FILE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.exists(rows) and sum(1 for _ in open(rows)) > 30:
                os.killpg(cluster.workers[0].pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_when_rows_flow, daemon=True)
    killer.start()
    run_suites(["gradients"], preset="smoke", out=out, progress=False, cluster=cluster.sched_file, threads=1,
               backends=["numpy"])
    killer.join(5)
    assert cluster.workers[0].poll() is not None  # it was killed
    df = records.load(out)
    key = ["case_key", "metric"] + [c for c in records.IDENTITY_EXTRAS if c in df.columns]
    local = records.load(run_suites(["gradients"], preset="smoke", out=str(tmp_path / "local"), progress=False,
                                    threads=1, backends=["numpy"]))
    keyl = ["case_key", "metric"] + [c for c in records.IDENTITY_EXTRAS if c in local.columns]
    assert sorted(_keys(df, key)) == sorted(_keys(local, keyl))
    assert json.load(open(os.path.join(out, "meta.json")))["status"] == "complete"


def test_an_unreachable_scheduler_is_one_line_and_exit_2(tmp_path, capsys):
    from harness.cli.main import main
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    old = cl.CONNECT_TIMEOUT_S
    cl.CONNECT_TIMEOUT_S = 3.0
    try:
        rc = main(["run", "ctc", "--preset", "smoke", "--out", str(tmp_path / "r"), "--cluster",
                   f"tcp://127.0.0.1:{port}", "--no-progress"])
    finally:
        cl.CONNECT_TIMEOUT_S = old
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the Dask scheduler" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "r" / "rows.jsonl")


def test_worker_command_declares_what_benchmarks_need(tmp_path):
    from harness.run.cluster_worker import worker_command, worker_env
    cmd = worker_command("tcp://1.2.3.4:8786", 3, gpu=1, name="g1")
    assert "tcp://1.2.3.4:8786" in cmd and "--nthreads" in cmd and cmd[cmd.index("--nthreads") + 1] == "3"
    assert cmd[cmd.index("--resources") + 1] == f"{cl.HOST_RESOURCE}=1,GPU=1"
    env = worker_env(gpu=1, base={})
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["DASK_DISTRIBUTED__WORKER__DAEMON"] == "False"
    f = tmp_path / "s.json"
    f.write_text("{}")
    assert worker_command(str(f), 1)[3:5] == ["--scheduler-file", str(f)]


@pytest.mark.parametrize("argv, words", [
    (["run", "ctc", "--preset", "smoke", "--cluster", " "], "--cluster: got"),
    (["worker", "tcp://127.0.0.1:1", "--nthreads", "0"], "--nthreads: got 0"),
    (["worker", "tcp://127.0.0.1:1", "--gpu", "-1"], "--gpu: got -1"),
])
def test_bad_cluster_options_are_one_line_exit_2(tmp_path, capsys, argv, words):
    from harness.cli.main import main
    if argv[0] == "run":
        argv = argv + ["--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_a_cluster_without_rnnbench_workers_says_how_to_start_one(tmp_path):
    """A scheduler whose only worker is a plain `dask worker` (no rnnbench-host resource): a clear error naming
    `rnnbench worker`, not a hang."""
    from distributed import Client
    c = LocalCluster(tmp_path, n=0)
    try:
        c.spawn([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", c.sched_file,
                  "--nworkers", "1", "--nthreads", "1", "--no-dashboard"], "plain")
        with Client(scheduler_file=c.sched_file, timeout="10s") as client:
            client.wait_for_workers(1, timeout=START_TIMEOUT_S)
        with pytest.raises(cl.ClusterError, match="rnnbench worker"):
            cl.connect(c.sched_file, timeout_s=10, workers_timeout_s=1)
    finally:
        c.close()


def test_a_host_without_a_backend_records_its_cases_skipped_with_its_reason(tmp_path):
    """The client has the backend; the only worker's host lacks it: every case of it skipped, saying why, and
    the run does not fail for it."""
    c = LocalCluster(tmp_path, n=1, env={"RNNBENCH_TEST_LACKS_HOSTDEP": "1"})
    try:
        out = run_suites(["throughput"], preset="smoke", backends=["tests.plugins.host_dependent:HostDependent"],
                         out=str(tmp_path / "run"), progress=False, cluster=c.sched_file, threads=1, processes=1)
    finally:
        c.close()
    df = records.load(out)
    assert len(df) and (df["status"] == "skipped").all()
    assert df["reason"].str.contains("on host .*: hostdep's library is not installed on this host").all()
    from harness.run.runner import run_problems
    assert run_problems(out) == []


def _done(out) -> int:
    """Cases with a done-marker so far (0 before the run has written its first line)."""
    if not os.path.exists(os.path.join(out, records.ROWS_FILE)):
        return 0
    return len(records.scan(out)[2])


def _fake_rows(out):
    """Every raw row of metric b_ms (each process its own; load() would merge them), extras as columns."""
    import pandas as pd
    raw = [{**r, **(r.get("extra") or {})} for r in records.scan(out)[0] if r.get("metric") == "b_ms"]
    df = pd.DataFrame(raw)
    df["ctx_process"] = df["ctx_process"].astype(int)
    return df


def test_workers_are_reused_within_a_round_and_never_across_processes_of_a_case(tmp_path):
    """One Dask worker: the cases of one family reuse one per-case worker process (as locally), but process k
    and process j of one timing case never share one; each case ran on the CPUs it leased, with its threads."""
    from tests import fake_backends as fb
    c = LocalCluster(tmp_path, n=1, nthreads=2)
    try:
        out = run_suites([fb.TIMING_SUITE_REF], preset="full", backends=[fb.FAKE], out=str(tmp_path / "t"),
                         progress=False, cluster=c.sched_file, threads=2, processes=3)
        shared = run_suites([fb.SUITE_REF], preset="full", backends=[fb.FAKE], out=str(tmp_path / "s"),
                            progress=False, cluster=c.sched_file, threads=2)
    finally:
        c.close()
    df = _fake_rows(out)
    assert len(df) == 2 * 3 and set(df["ctx_process"]) == {0, 1, 2}
    pids = df.groupby("case")["worker_pid"].apply(lambda s: len(set(s)))
    assert (pids == 3).all()  # a case's three processes ran in three different processes
    by_round = df.groupby("ctx_process")["worker_pid"].nunique()
    assert (by_round == 1).all()  # both cases of a round ran in one reused worker
    assert (df["env_omp"] == "2").all() and (df["affinity"] == df["host_cpus"]).all()
    assert (~df["shared"].astype(bool)).all()
    s = _fake_rows(shared)
    # correctness cases take one CPU each, so that several share a host
    assert len(s) == 2 and s["shared"].astype(bool).all() and (s["host_cpus"].str.count(",") == 0).all()
    assert (s["affinity"] == s["host_cpus"]).all()


def test_a_scheduler_gone_mid_run_is_exit_2_and_keeps_the_rows(tmp_path, capsys, monkeypatch):
    import threading

    from harness.cli.main import main
    from tests import fake_backends as fb
    monkeypatch.setattr(cl, "LOST_TIMEOUT_S", 3.0)
    c = LocalCluster(tmp_path, n=1)
    out = str(tmp_path / "run")

    def kill_scheduler_after_two_cases():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _done(out) >= 2:
                os.killpg(c.sched.pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_scheduler_after_two_cases, daemon=True)
    killer.start()
    try:
        rc = main(["run", fb.SUITE_REF, "--preset", "quick", "--backend", fb.FAKE, "--out", out, "--cluster",
                   c.sched_file, "--threads", "1", "--no-progress"])
    finally:
        killer.join(5)
        c.close()
    err = capsys.readouterr().err
    assert c.sched.poll() is not None, "the scheduler should have been killed mid-run"
    assert rc == 2 and "scheduler went away" in err and "Traceback" not in err, err
    assert "--resume --cluster" in err  # how to finish it
    rows, latest, done, bad = records.scan(out)
    assert bad == [] and 2 <= len(done) < 6
    assert json.load(open(os.path.join(out, "meta.json")))["status"] == "interrupted"
    assert len(records.load(out)) >= 4  # what was written loads


def test_a_killed_client_resumes_on_the_cluster_with_only_what_is_missing(tmp_path):
    from tests import fake_backends as fb
    c = LocalCluster(tmp_path, n=2)
    out = str(tmp_path / "run")
    args = [sys.executable, "-m", "harness", "run", fb.SUITE_REF, "--preset", "quick", "--backend", fb.FAKE,
            "--out", out, "--no-progress", "--threads", "1", "--cluster", c.sched_file]
    try:
        proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while _done(out) < 2:
                assert time.monotonic() < deadline and proc.poll() is None, "no case finished on the cluster"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _, _, done_before, _ = records.scan(out)
        assert 2 <= len(done_before) < 6, "the kill should land mid-run"
        run_suites([fb.SUITE_REF], backends=[fb.FAKE], out=out, resume=True, progress=False, threads=1,
                   cluster=c.sched_file)
    finally:
        c.close()
    rows, latest, done, bad = records.scan(out)
    assert len(done) == 6 and bad == []
    for key in done_before:  # finished before the kill: not run again
        assert {r["attempt"] for r in rows if r.get("case_key") == key} == {1}
    df = records.load(out)
    assert sorted(df.groupby("case_key").size()) == [2] * 6  # every (case, metric) exactly once
    assert json.load(open(os.path.join(out, "meta.json")))["status"] == "complete"
