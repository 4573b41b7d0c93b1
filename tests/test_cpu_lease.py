"""Host-wide CPU leases (flock per CPU) and the per-Dask-worker pool of per-case workers."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from harness.core.errors import InputError
from harness.run import cpu_lease, worker_pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def private_locks(tmp_path, monkeypatch):
    d = tmp_path / "locks"
    monkeypatch.setenv(cpu_lease.LOCK_DIR_ENV, str(d))
    return d


def test_leases_of_one_cpu_take_different_cpus_and_come_back():
    a = cpu_lease.acquire(1, 1.0, cpus=[0, 1])
    b = cpu_lease.acquire(1, 1.0, cpus=[0, 1])
    assert sorted(a.cpus + b.cpus) == [0, 1]
    with pytest.raises(cpu_lease.LeaseTimeout, match="stayed busy"):
        cpu_lease.acquire(1, 0.2, cpus=[0, 1])
    a.release()
    with cpu_lease.acquire(1, 1.0, cpus=[0, 1]) as c:
        assert c.cpus == a.cpus and c.text() == str(a.cpus[0])
    b.release()


def test_a_lease_of_every_cpu_waits_for_the_others_and_is_capped_at_what_there_is():
    one = cpu_lease.acquire(1, 1.0, cpus=[0, 1])
    got = []
    t = threading.Thread(target=lambda: got.append(cpu_lease.acquire(8, 10.0, cpus=[0, 1])))
    t.start()
    time.sleep(0.3)
    assert not got  # still waiting for the CPU the first lease holds
    one.release()
    t.join(10)
    assert got and got[0].cpus == [0, 1]  # 8 asked, the 2 there are given
    got[0].release()


def test_a_dead_holder_leaves_no_stale_lease(private_locks):
    code = ("import os, time\nfrom harness.run import cpu_lease\nl = cpu_lease.acquire(2, 5, cpus=[0, 1])\n"
            "print('held', flush=True)\ntime.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT, cpu_lease.LOCK_DIR_ENV: str(private_locks)})
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(cpu_lease.LeaseTimeout):
            cpu_lease.acquire(1, 0.2, cpus=[0, 1])
        p.kill()
        p.wait(10)
        with cpu_lease.acquire(2, 2.0, cpus=[0, 1]) as lease:  # the kernel dropped the killed holder's locks
            assert lease.cpus == [0, 1]
    finally:
        if p.poll() is None:
            p.kill()
        p.stdout.close()


def test_a_planted_link_as_the_lock_directory_is_refused(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    monkeypatch.setenv(cpu_lease.LOCK_DIR_ENV, str(link))
    with pytest.raises(InputError, match="not a directory owned by this user"):
        cpu_lease.acquire(1, 0.1)
    assert list(target.iterdir()) == []  # nothing written through the link


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_a_bad_cpu_count_is_refused(n):
    with pytest.raises(InputError, match="expected an integer >= 1"):
        cpu_lease.acquire(n, 0.1)


def test_pin_process_moves_every_thread(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    code = ("import os, threading, time\n"
            "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "print('up', flush=True)\ninput()\n"
            "print(sorted({c for t in os.listdir('/proc/self/task') for c in os.sched_getaffinity(int(t))}), flush=True)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "up"
        cpu = sorted(os.sched_getaffinity(0))[-1]
        cpu_lease.pin_process(p.pid, [cpu])
        assert len(os.listdir(f"/proc/{p.pid}/task")) >= 2
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == str([cpu])  # both threads, not only the main one
    finally:
        p.kill()
        p.wait(10)
        p.stdin.close()
        p.stdout.close()


class _FakeProc:
    def __init__(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive


class _FakeWorker:
    def __init__(self) -> None:
        self.proc = _FakeProc()
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.proc.alive = False
        self.stopped.set()


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(worker_pool, "_idle", {})
    return worker_pool


def test_the_pool_gives_back_only_its_keys_live_workers(pool):
    a, b = _FakeWorker(), _FakeWorker()
    pool.give(("run1", "numpy", 1, 0), a)
    pool.give(("run1", "numpy", 1, 1), b)
    assert pool.take(("run1", "numpy", 1, 2)) is None  # another process slot: never the same process
    assert pool.take(("run1", "numpy", 1, 0)) is a
    assert pool.take(("run1", "numpy", 1, 0)) is None
    b.proc.alive = False  # died while idle
    assert pool.take(("run1", "numpy", 1, 1)) is None and pool.idle_count() == 0


def test_the_pool_stops_the_longest_idle_beyond_its_size_and_a_finished_runs(pool, monkeypatch):
    monkeypatch.setattr(pool, "MAX_IDLE", 2)
    ws = [_FakeWorker() for _ in range(3)]
    for i, w in enumerate(ws):
        pool.give(("run1", f"fam{i}", 1, 0), w)
        time.sleep(0.01)
    assert ws[0].stopped.wait(5) and pool.idle_count() == 2
    other = _FakeWorker()
    pool.give(("run2", "fam", 1, 0), other)
    assert pool.release_run("run1") >= 1
    assert ws[2].stopped.wait(5) and not other.stopped.is_set()
    assert pool.take(("run2", "fam", 1, 0)) is other


def test_idle_workers_expire(pool, monkeypatch):
    monkeypatch.setattr(pool, "IDLE_S", 0.05)
    w = _FakeWorker()
    pool.give(("run", "fam", 1, 0), w)
    time.sleep(0.1)
    pool.give(("run", "fam2", 1, 0), _FakeWorker())  # any use of the pool reaps what expired
    assert w.stopped.wait(5)
