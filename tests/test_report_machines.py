"""``rnnbench report RUN [RUN ...] --out DIR``: one report across machines, from synthetic run directories."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("pandas")

from harness.cli.main import main  # noqa: E402
from harness.measure.records import RowWriter, make_row, write_meta  # noqa: E402
from harness.report import machines as mx  # noqa: E402


def _fields(case: str, backend: str) -> dict:
    return {"suite": "throughput", "case": case, "backend": backend, "variant": backend, "device": "cpu",
            "dtype": "float32", "cell": "lstm"}


def _run(path, speed: float, cpu="Test CPU", threads=2, gpu=None, device="cpu", fail=False, extra_rows=(),
         run_id=None) -> str:
    """A run with two timed cases of two backends at ``1/speed`` ms (and their compile_s), an equivalence check
    each (one failing when ``fail``), and the meta of a machine."""
    rng = np.random.default_rng(int(speed * 100))
    path = str(path)
    with RowWriter(path, "r") as w:
        for case in ("lstm-a", "lstm-b"):
            for b in ("numpy", "torch"):
                s = (1.0 / speed) * (1 + 0.01 * rng.standard_normal(20))
                w.write(make_row(_fields(case, b), "fwd_ms", float(np.median(s)), "ms", samples=s, n=20, mode="fwd"))
                w.write(make_row(_fields(case, b), "compile_s", 0.5, "s", mode="fwd"))
                bad = fail and case == "lstm-b" and b == "torch"
                w.write(make_row(_fields(case, b), "equiv_error", 0.5 if bad else 1e-7, "rel",
                                 status="error" if bad else "ok", reason="disagrees" if bad else ""))
        for r in extra_rows:
            w.write(r)
    machine = {"cpu": cpu, "cores": 2, "memory_bytes": 2**34, "hostname": "h"}
    if gpu:
        machine["gpu_name"] = gpu
    write_meta(path, {"run_id": run_id or os.path.basename(path), "machine": machine, "threads": threads,
                      "device": device, "preset": "smoke", "git_commit": "abc123"})
    return path


def test_two_machines_side_by_side(tmp_path, capsys):
    a = _run(tmp_path / "cpu", 1.0)
    b = _run(tmp_path / "gpu", 4.0, gpu="Big GPU", device="cuda", fail=True)
    out = tmp_path / "both"
    assert main(["report", a, b, "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert (out / "report.html").exists()
    assert "Test CPU · cpu · 2 threads" in md and "Big GPU · cuda · 2 threads" in md
    # the speed-up: 4x over the 4 timings both measured (compile_s, a single value, is not one of them)
    assert "ran 4.00× faster than *Test CPU · cpu · 2 threads* (geometric mean over the 4 timings" in md
    assert "× Big GPU · cuda · 2 threads" in md
    last = [float(line.strip("| ").split("|")[-1]) for line in md.splitlines() if line.startswith("| lstm-a")]
    assert len(last) == 2 and all(abs(x - 4) < 0.05 for x in last)  # numpy and torch rows: 4x as fast
    assert "**1 failed**" in md  # the GPU run's failed check, per machine
    # the runs were only read
    assert sorted(os.listdir(a)) == ["meta.json", "rows.jsonl"] and sorted(os.listdir(b)) == ["meta.json", "rows.jsonl"]
    assert str(out / "report.md") in capsys.readouterr().out


def test_same_machine_other_threads_are_two_columns_and_same_labels_get_the_run_id(tmp_path):
    a, b = _run(tmp_path / "t1", 1.0, threads=1), _run(tmp_path / "t2", 1.6, threads=2)
    assert main(["report", a, b, "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "*Test CPU · cpu · 2 threads* ran 1.60× faster than *Test CPU · cpu · 1 thread*" in md
    c, d = _run(tmp_path / "x", 1.0, run_id="run-x"), _run(tmp_path / "y", 1.0, run_id="run-y")
    labels = [m.label for m in mx.machines_of([("run-x", {"machine": {"cpu": "C"}}), ("run-y", {"machine": {"cpu": "C"}})])]
    assert labels == ["C · cpu (run-x)", "C · cpu (run-y)"]
    assert main(["report", c, d, "--out", str(tmp_path / "o2")]) == 0
    assert "(run-x)" in (tmp_path / "o2" / "report.md").read_text()


def test_rows_with_a_host_are_their_hosts(tmp_path):
    """A cluster run's rows say which host they ran on: each host is a machine of its own."""
    import pandas as pd
    rows = [{**_fields("lstm-c", "numpy"), "host": h, "host_cpu": "C", "host_gpu": g, "metric": "fwd_ms",
             "value": v, "unit": "ms", "n": 5, "status": "ok", "mode": "fwd"}
            for h, g, v in (("alpha", None, 2.0), ("beta", "G1", 1.0), (None, None, 4.0))]
    tagged = mx.tag_rows(pd.DataFrame(rows), mx.Machine("M", "r", {}))
    assert list(tagged["machine"]) == ["alpha (C)", "beta (G1)", "M"]
    assert mx.machine_order(tagged) == ["alpha (C)", "beta (G1)", "M"]
    wide = mx.timing_table(tagged, mx.machine_order(tagged))
    assert mx.speedups(wide, "alpha (C)", "beta (G1)").tolist() == [2.0]
    assert "ran 2.00× faster than *alpha (C)*" in " ".join(mx.findings(tagged))


@pytest.mark.parametrize("argv, words", [
    (["report", "A", "B"], "pass --out DIR"),
    (["report", "A", "MISSING", "--out", "O"], "does not exist"),
    (["report", "A", "B", "--out", "FILE"], "is not a directory"),
    (["report", "A", "B", "--out", ""], "--out"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, words):
    a, b = _run(tmp_path / "a", 1.0), _run(tmp_path / "b", 2.0)
    (tmp_path / "FILE").write_text("x")
    sub = {"A": a, "B": b, "MISSING": str(tmp_path / "missing"), "O": str(tmp_path / "o"), "FILE": str(tmp_path / "FILE")}
    assert main([sub.get(x, x) for x in argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_one_run_with_out_leaves_the_run_untouched(tmp_path):
    a = _run(tmp_path / "a", 1.0)
    os.chmod(a, 0o555)  # someone else's run: not ours to write into
    try:
        assert main(["report", a, "--out", str(tmp_path / "mine")]) == 0
    finally:
        os.chmod(a, 0o755)
    assert (tmp_path / "mine" / "report.md").exists() and sorted(os.listdir(a)) == ["meta.json", "rows.jsonl"]


def test_a_planted_link_in_out_is_not_followed(tmp_path):
    a, b = _run(tmp_path / "a", 1.0), _run(tmp_path / "b", 2.0)
    out = tmp_path / "o"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, out / "report.md")
    assert main(["report", a, b, "--out", str(out)]) == 2
    assert victim.read_text() == "keep"
