"""Property-based attacks (hypothesis): random JSON for meta.json fields and random bytes for rows.jsonl lines,
fed to report, compare and resume. Whatever they hold, the outcome is an exit code (0, 1 or 2) and at most a
one-line message: never a traceback, never a write outside the run directory."""
from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("pandas")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from harness.cli.main import main  # noqa: E402
from harness.measure.records import RowWriter, make_row, write_meta  # noqa: E402

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                        max_size=4),
                    max_leaves=12)
META_FIELDS = ["run_id", "preset", "suites", "backends", "device", "threads", "seed", "processes", "machine",
               "versions", "backend_versions", "backend_capabilities", "argv", "start_time", "end_time", "status",
               "counts", "git_commit", "timeout_s", "budget_s", "resumed", "unavailable_backends"]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])


def _rundir(path) -> str:
    path = str(path)
    os.makedirs(path, exist_ok=True)
    for f in ("rows.jsonl", "meta.json", "report.md", "report.html"):
        try:
            os.unlink(os.path.join(path, f))
        except FileNotFoundError:
            pass
    f = {"suite": "hx", "case": "c", "backend": "numpy", "variant": "numpy", "device": "cpu", "dtype": "float32"}
    with RowWriter(path, "r") as w:
        w.write(dict(make_row(f, "a_ms", 1.0, "ms", samples=[1.0, 1.1]), case_key="hx/c", attempt=1))
        w.mark_done("hx/c", 1)
    write_meta(path, {"run_id": "r", "preset": "smoke", "seed": 0, "machine": {"cpu": "x", "cores": 2}})
    return path


def _no_traceback(capsys) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err


@SETTINGS
@given(fields=st.dictionaries(st.sampled_from(META_FIELDS), JSON, min_size=1, max_size=5))
def test_random_meta_fields_never_give_a_traceback(tmp_path, capsys, fields, monkeypatch):
    d = _rundir(tmp_path / "run")
    meta = json.load(open(os.path.join(d, "meta.json")))
    meta.update(fields)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f)
    for argv in (["report", d], ["compare", d, d]):
        assert main(argv) in (0, 1, 2)
    _no_traceback(capsys)
    # resume: everything up to running cases (the cases themselves are not the attack surface here)
    from harness.run import runner
    monkeypatch.setattr(runner, "_run_locked", lambda out, *a, **k: out)
    assert main(["run", "--out", d, "--resume"]) in (0, 1, 2)
    _no_traceback(capsys)


@SETTINGS
@given(lines=st.lists(st.binary(max_size=200), min_size=1, max_size=6))
def test_random_bytes_in_rows_never_give_a_traceback(tmp_path, capsys, lines):
    d = _rundir(tmp_path / "run")
    with open(os.path.join(d, "rows.jsonl"), "ab") as f:
        for b in lines:
            f.write(b.replace(b"\n", b" ") + b"\n")
    for argv in (["report", d], ["compare", d, d]):
        assert main(argv) in (0, 1, 2)
    _no_traceback(capsys)
    outside = sorted(os.listdir(tmp_path))
    assert outside == ["run"]
