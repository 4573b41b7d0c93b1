"""The attack battery: run directories and inputs built to hurt, and the safe outcome each must get.

A run directory may come from anyone (committed results, a CI artifact, a colleague), so reading, reporting on,
comparing or resuming one must never run code it names, write outside it or lose what it holds; every bad
input is a clear error with exit 2 before anything runs. Each test names the item of the hardening issue it
covers (``#1`` .. ``#14``).
"""
from __future__ import annotations

import errno
import html.parser
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("pandas")

from harness.cli.main import main  # noqa: E402
from harness.measure import records  # noqa: E402
from harness.measure.records import RowWriter, make_row, write_meta  # noqa: E402
from tests import fake_backends as fb  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _fields(case="c", suite="hx", backend="numpy"):
    return {"suite": suite, "case": case, "backend": backend, "variant": backend, "device": "cpu",
            "dtype": "float32", "cell": "lstm"}


def make_rundir(path, rows=None, meta=None, reason="") -> str:
    """A small run directory of a suite no report section knows (the generic table)."""
    path = str(path)
    rows = rows if rows is not None else [
        make_row(_fields("c1"), "a_ms", 1.0, "ms", samples=[0.9, 1.0, 1.1]),
        make_row(_fields("c2"), "a_ms", 2.0, "ms", status="skipped", reason=reason or "not here"),
    ]
    with RowWriter(path, "hx-run") as w:
        for i, r in enumerate(rows):
            w.write(dict(r, case_key=f"hx/{i}", attempt=1))
            w.mark_done(f"hx/{i}", 1)
    write_meta(path, meta if meta is not None else {"run_id": "hx-run", "preset": "smoke", "seed": 0,
                                                    "machine": {"cpu": "Test CPU", "cores": 2, "hostname": "h"}})
    return path


def _files_under(d):
    return sorted(os.path.relpath(os.path.join(a, f), d) for a, _, fs in os.walk(d) for f in fs)


# -- #1 report.html cannot be injected ------------------------------------------------------------------

PAYLOADS = [
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](\x01javascript:alert(1))",
    "[click]( javascript:alert(1))",
    "[c](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[c](vbscript:msgbox(1))",
    "![x](x\"onerror=\"alert(1))",
    "![x](javascript:alert(1))",
    "![x](//evil.example/x.png)",
    "![x](/etc/passwd)",
    "![x](../../secret.png)",
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "[a](#x\"onmouseover=\"alert(1))",
    "**[b](javascript:alert(1))**",
    "`</code><script>alert(1)</script>`",
]


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _assert_safe_html(text):
    p = _Tags()
    p.feed(text)
    for tag, attrs in p.tags:
        assert tag != "script", attrs
        for k, v in attrs.items():
            assert not k.startswith("on"), (tag, attrs)
            if k in ("href", "src") and v is not None:
                low = "".join(ch for ch in v if ch.isprintable() and not ch.isspace()).lower()
                assert not low.startswith(("javascript:", "data:", "vbscript:")), (tag, attrs)
                if k == "src":
                    assert not v.startswith(("/", "..")) and ":" not in v, (tag, attrs)


@pytest.mark.parametrize("where", ["case", "reason", "run_id", "hostname"])
def test_1_report_html_is_not_injectable(tmp_path, where):
    payload = " | ".join(PAYLOADS)
    rows = [make_row(_fields(payload if where == "case" else "c1"), "a_ms", 1.0, "ms", samples=[1.0, 1.1]),
            make_row(_fields("c2"), "a_ms", None, "ms", status="error",
                     reason=payload if where == "reason" else "boom")]
    meta = {"run_id": payload if where == "run_id" else "r", "preset": "smoke",
            "machine": {"cpu": "x", "cores": 2, "hostname": payload if where == "hostname" else "h"}}
    d = make_rundir(tmp_path / "run", rows, meta)
    assert main(["report", d]) == 0
    _assert_safe_html(open(os.path.join(d, "report.html"), encoding="utf-8").read())


@pytest.mark.parametrize("payload", PAYLOADS)
def test_1_markdown_converter_filters_every_payload(payload):
    from harness.report.report import markdown_to_html
    _assert_safe_html(markdown_to_html(f"# t\n\n{payload}\n\n| a |\n|---|\n| {payload} |\n"))


# -- #2 links in a run directory are never followed ------------------------------------------------------

@pytest.mark.parametrize("name", ["report.md", "report.html"])
def test_2_report_refuses_a_planted_link_for_its_outputs(tmp_path, name, capsys):
    d = make_rundir(tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, os.path.join(d, name))
    assert main(["report", d]) == 2
    assert victim.read_text() == "precious"
    assert "symbolic link" in capsys.readouterr().err


def test_2_report_refuses_a_figures_link(tmp_path, capsys):
    d = make_rundir(tmp_path / "run")
    victim = tmp_path / "victim_dir"
    victim.mkdir()
    os.symlink(victim, os.path.join(d, "figures"))
    assert main(["report", d]) == 2
    assert os.listdir(victim) == []
    assert "symbolic link" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["report.md.tmp", "report.html.tmp", "meta.json.tmp"])
def test_2_planted_tmp_links_are_not_written_through(tmp_path, name):
    d = make_rundir(tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, os.path.join(d, name))
    assert main(["report", d]) == 0
    write_meta(d, {"run_id": "again"})
    assert victim.read_text() == "precious"


@pytest.fixture
def fake_suite(monkeypatch):
    from suites import base
    monkeypatch.setitem(base.SUITE_MODULES, "fake", "tests.fake_backends")
    return "fake"


def _fake_run(tmp_path, name="run"):
    from harness.run.runner import run_suites
    out = str(tmp_path / name)
    run_suites(["fake"], preset="full", backends=[fb.FAKE], out=out, threads=1, progress=False)
    return out


def test_2_resume_refuses_a_rows_link(tmp_path, fake_suite, capsys):
    d = _fake_run(tmp_path)
    victim = tmp_path / "victim.jsonl"
    shutil.copy(os.path.join(d, "rows.jsonl"), victim)
    before = victim.read_bytes()
    os.unlink(os.path.join(d, "rows.jsonl"))
    os.symlink(victim, os.path.join(d, "rows.jsonl"))
    assert main(["run", "fake", "--preset", "full", "--backend", fb.FAKE, "--out", d, "--resume"]) == 2
    assert victim.read_bytes() == before
    assert "symbolic link" in capsys.readouterr().err


def test_2_a_rows_fifo_is_refused_without_blocking(tmp_path, capsys):
    d = make_rundir(tmp_path / "run")
    os.unlink(os.path.join(d, "rows.jsonl"))
    os.mkfifo(os.path.join(d, "rows.jsonl"))
    t0 = time.monotonic()
    assert main(["report", d]) == 2
    assert main(["compare", d, d]) == 2
    assert time.monotonic() - t0 < 30
    assert "FIFO" in capsys.readouterr().err


# -- #3 a run directory never chooses code to import ------------------------------------------------------

EVIL = """
import os
open(os.environ["HX_MARKER"], "w").write("imported")
SUITE = None
class Cls: pass
"""


@pytest.mark.parametrize("field,value", [("suites", ["hx_evil_mod:SUITE"]), ("backends", ["hx_evil_mod:Cls"])])
def test_3_resume_never_imports_modules_named_by_meta(tmp_path, field, value):
    d = make_rundir(tmp_path / "run")
    meta = json.load(open(os.path.join(d, "meta.json")))
    meta.update({field: value, "preset": "smoke"})
    if field == "backends":
        meta["suites"] = ["ctc"]
    write_meta(d, meta)
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "hx_evil_mod.py").write_text(EVIL)
    marker = tmp_path / "marker"
    env = _env()
    env["PYTHONPATH"] = str(mod_dir) + os.pathsep + env["PYTHONPATH"]
    env["HX_MARKER"] = str(marker)
    r = subprocess.run([sys.executable, "-m", "harness", "run", "--out", d, "--resume"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert not marker.exists()
    assert "cannot choose code to import" in r.stderr and "hx_evil_mod" in r.stderr


# -- #4 the lock is a kernel lock -----------------------------------------------------------------------------

HOLD = ("import sys, time; sys.path.insert(0, {root!r}); from harness.run.runner import acquire_lock; "
        "l = acquire_lock({d!r}); print('held', flush=True); time.sleep({s})")


def test_4_a_held_lock_refuses_and_names_the_pid(tmp_path):
    from harness.core.errors import UsageError
    from harness.run.runner import acquire_lock, release_lock
    p = subprocess.Popen([sys.executable, "-c", HOLD.format(root=ROOT, d=str(tmp_path), s=30)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"in use by pid {p.pid}"):
            acquire_lock(str(tmp_path))
    finally:
        p.kill()
        p.wait()
    lock = acquire_lock(str(tmp_path), log=lambda m: None)  # the kernel dropped the killed holder's lock
    release_lock(lock)
    assert not os.path.exists(os.path.join(tmp_path, records.LOCK_FILE))


def test_4_an_empty_or_garbage_lock_file_is_not_a_lock(tmp_path):
    from harness.run.runner import acquire_lock, release_lock
    for text in ("", "garbage", "999999999"):
        (tmp_path / records.LOCK_FILE).write_text(text)
        release_lock(acquire_lock(str(tmp_path), log=lambda m: None))


def test_4_concurrent_lockers_exactly_one_wins(tmp_path):
    code = ("import sys, time; sys.path.insert(0, {root!r}); from harness.run.runner import acquire_lock\n"
            "t = float(sys.argv[1])\nwhile time.time() < t: pass\n"
            "try:\n    l = acquire_lock({d!r}, log=lambda m: None); print('won', flush=True); time.sleep(2)\n"
            "except Exception as e:\n    print('lost', flush=True)\n").format(root=ROOT, d=str(tmp_path))
    for _ in range(3):
        start = time.time() + 1.5
        ps = [subprocess.Popen([sys.executable, "-c", code, str(start)], stdout=subprocess.PIPE, text=True)
              for _ in range(6)]
        outs = [p.communicate(timeout=60)[0].strip() for p in ps]
        assert outs.count("won") == 1, outs


# -- #5, #6 the directory deleted mid-run; a full disk ---------------------------------------------------------

def test_5_run_directory_moved_mid_run_stops_with_exit_2(tmp_path):
    d = str(tmp_path / "run")
    p = subprocess.Popen([sys.executable, "-m", "harness", "run", fb.SUITE_REF, "--preset", "quick", "--backend",
                          fb.FAKE, "--out", d, "--no-progress", "--threads", "1"], cwd=ROOT, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rows = os.path.join(d, "rows.jsonl")
    t0 = time.monotonic()
    while not (os.path.exists(rows) and os.path.getsize(rows) > 0):
        assert time.monotonic() - t0 < 60 and p.poll() is None
        time.sleep(0.05)
    shutil.move(d, str(tmp_path / "moved"))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2, (out, err)
    assert "deleted or moved" in err and "Traceback" not in err
    assert not os.path.exists(d)  # not re-created
    assert os.path.getsize(str(tmp_path / "moved" / "rows.jsonl")) > 0


def test_6_a_full_disk_stops_with_exit_2_and_marks_the_run_interrupted(tmp_path, fake_suite, monkeypatch, capsys):
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):  # rows.jsonl's 4th write finds the disk full (meta.json, small, still fits)
        if os.readlink(f"/proc/self/fd/{fd}").endswith("rows.jsonl"):
            calls["n"] += 1
            if calls["n"] > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(records.os, "fsync", fsync)
    d = str(tmp_path / "run")
    assert main(["run", "fake", "--preset", "full", "--backend", fb.FAKE, "--out", d, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no space left" in err and "--resume" in err and "Traceback" not in err
    monkeypatch.setattr(records.os, "fsync", real)
    assert records.read_meta(d)["status"] == "interrupted"
    assert main(["run", "fake", "--preset", "full", "--backend", fb.FAKE, "--out", d, "--resume",
                 "--no-progress"]) == 0


# -- #7 resume without meta.json ------------------------------------------------------------------------------

def test_7_resume_without_meta_refuses_unless_preset_and_suites_are_named(tmp_path, fake_suite, capsys):
    d = _fake_run(tmp_path)
    os.unlink(os.path.join(d, "meta.json"))
    assert main(["run", "--out", d, "--resume"]) == 2
    assert "no meta.json" in capsys.readouterr().err
    assert main(["run", "fake", "--out", d, "--resume"]) == 2  # the preset still unknown
    assert main(["run", "fake", "--preset", "full", "--backend", fb.FAKE, "--out", d, "--resume",
                 "--no-progress"]) == 0


# -- #8, #9 numbers and paths on the command line ----------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--threads", "100000"], "--threads"),
    (["--threads", "1e20"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2 ** 40)], "--seed"),
    (["--budget", "inf"], "--budget"),
    (["--budget", "nan"], "--budget"),
    (["--timeout", "inf"], "--timeout"),
    (["--timeout", "-3"], "--timeout"),
    (["--out", ""], "--out"),
    (["--out", "", "--resume"], "--out"),
    (["--processes", "0"], "--processes"),
])
def test_8_9_bad_numbers_and_paths_exit_2_before_anything_runs(tmp_path, fake_suite, args, needle, capsys,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default --out would land here
    try:
        code = main(["run", "fake", "--preset", "full", "--backend", fb.FAKE, *args])
    except SystemExit as e:  # argparse: not a number at all
        code = e.code
    assert code == 2
    assert needle in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # nothing ran, nothing was written


# -- #10 gate and compare: wrong names and outputs, before measuring -----------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--preset", "bogus"], "--preset"),
    (["--case", "zzz-no-such-case"], "--case"),
    (["--markdown", "/nonexistent-dir/x.md"], "--markdown"),
])
def test_10_gate_bad_selection_or_output_exits_2_at_once(args, needle, capsys):
    t0 = time.monotonic()
    assert main(["gate", "--repo", ROOT, "--force", *args]) == 2
    assert time.monotonic() - t0 < 30  # nothing was measured
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("opt", ["--markdown", "--figure"])
def test_10_compare_checks_its_outputs_first(tmp_path, opt, capsys):
    d = make_rundir(tmp_path / "run")
    assert main(["compare", d, d, opt, "/nonexistent-dir/out.x"]) == 2
    assert main(["compare", d, d, opt, str(tmp_path)]) == 2  # a directory
    assert "is a directory" in capsys.readouterr().err


# -- #11 malformed but valid JSON, odd files ------------------------------------------------------------------

BAD_META = [[], "a string", 1, None, {"machine": "x"}, {"machine": [1]}, {"versions": 3}, {"run_id": 5},
            {"suites": "throughput"}, {"argv": 7}, {"backend_versions": {"numpy@cpu": 3}}, {"counts": [1]},
            {"seed": "0"}, {"threads": 2.5}, {"start_time": {}}, {"machine": {"cpu": {"nested": 1}}}]


@pytest.mark.parametrize("meta", BAD_META, ids=[f"meta{i}" for i in range(len(BAD_META))])
def test_11_report_and_compare_on_malformed_meta_never_traceback(tmp_path, meta, capsys):
    d = make_rundir(tmp_path / "run")
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f)
    for argv in (["report", d], ["compare", d, d]):
        assert main(argv) in (0, 1, 2)
    assert "Traceback" not in capsys.readouterr().err


BAD_LINES = ['{"extra": [1], "metric": "a_ms", "value": 1}', '{"case_key": [1], "metric": "a_ms"}',
             '{"samples": "abc", "metric": "a_ms", "value": 1}', '{"value": "x", "metric": "a_ms"}',
             '{"status": "weird", "metric": "a_ms", "value": 1}', '{"_case_done": [1]}', '{"attempt": "2"}',
             '[1, 2]', '"just a string"', '{"metric": 5}', '\xff\xfe garbage', '{"metric": "a_ms", "extra": {"process": "x"}}', '{"extra": {}}',
             '{' * 5000 + '}' * 5000]


@pytest.mark.parametrize("line", BAD_LINES, ids=[f"line{i}" for i in range(len(BAD_LINES))])
def test_11_bad_lines_are_reported_by_number_never_half_read(tmp_path, line, capsys):
    d = make_rundir(tmp_path / "run")
    with open(os.path.join(d, "rows.jsonl"), "ab") as f:
        f.write(line.encode("utf-8", "surrogateescape") if "\xff" not in line else b"\xff\xfe garbage")
        f.write(b"\n")
    rows, _, _, bad = records.scan(d)
    assert len(bad) == 1 and len(rows) == 2
    for argv in (["report", d], ["compare", d, d]):
        assert main(argv) in (0, 1)
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("what", ["rows_dir", "figures_file", "report_md_dir", "asv_list", "asv_bad_rows"])
def test_11_odd_files_give_one_line_and_exit_2(tmp_path, what, capsys):
    d = make_rundir(tmp_path / "run")
    argv = ["report", d]
    if what == "rows_dir":
        os.unlink(os.path.join(d, "rows.jsonl"))
        os.mkdir(os.path.join(d, "rows.jsonl"))
    elif what == "figures_file":
        open(os.path.join(d, "figures"), "w").close()
    elif what == "report_md_dir":
        os.mkdir(os.path.join(d, "report.md"))
    else:
        p = tmp_path / "r.json"
        p.write_text("[1, 2]" if what == "asv_list" else
                     json.dumps({"results": {"b.time_x": 5}, "result_columns": ["result"]}))
        argv = ["compare", str(p), str(p)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]


@pytest.mark.skipif(IS_ROOT, reason="root writes anywhere: an unwritable directory cannot be made")
def test_11_an_unwritable_run_directory_is_one_line(tmp_path, capsys):
    d = make_rundir(tmp_path / "run")
    os.chmod(d, 0o555)
    try:
        assert main(["report", d]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        os.chmod(d, 0o755)


def test_11_a_non_utf8_path_works(tmp_path, capsys):
    d = os.path.join(str(tmp_path), "run-\udcff")
    make_rundir(d)
    assert main(["report", d]) in (0, 2)
    assert "Traceback" not in capsys.readouterr().err


def test_11_duplicated_lines_count_once(tmp_path):
    d = make_rundir(tmp_path / "run")
    rows_path = os.path.join(d, "rows.jsonl")
    data = open(rows_path, "rb").read()
    before = records.load(d)
    with open(rows_path, "wb") as f:
        f.write(data + data)
    after = records.load(d)
    assert len(after) == len(before) == 2


def test_11_compare_says_what_is_off_about_its_runs(tmp_path):
    from harness.compare import compare
    a = make_rundir(tmp_path / "a", meta={"run_id": "a", "seed": 0, "machine": {"cpu": "x", "cores": 2}})
    rows = [make_row(_fields("c1"), "a_ms", 1.0, "ms", samples=[0.9, 1.0, 1.1])]
    b = str(tmp_path / "b")
    with RowWriter(b, "b") as w:
        w.write(dict(rows[0], case_key="hx/0", attempt=1))  # no done-marker: unfinished
    with open(os.path.join(b, "rows.jsonl"), "a") as f:
        f.write('{"torn": \n')
    write_meta(b, {"run_id": "b", "seed": 3, "machine": {"cpu": "x", "cores": 2}})
    notes = " ".join(compare.compare_sets(compare.load_run(a), compare.load_run(b)).notes)
    assert "different seeds" in notes and "unreadable line" in notes and "never finished" in notes


# -- #12 the Python API at its edges -----------------------------------------------------------------------------

def _ctc_backends():
    from implementations import registry
    return [n for n in ("numpy", "torch", "jax") if registry.describe(n, "cpu").available]


@pytest.mark.parametrize("shape", [(0, 2, 4), (5, 0, 4)])
def test_12_ctc_on_an_empty_batch_or_no_frames_is_an_input_error(shape):
    from harness.core.errors import InputError
    from implementations import registry
    for name in _ctc_backends():
        b = registry.get(name, "cpu")
        T, B, C = shape
        with pytest.raises(InputError, match="T >= 1 frames and B >= 1"):
            b.ctc(np.zeros(shape, np.float32), np.ones((B, 1), np.int64), np.full(B, T, np.int64),
                  np.ones(B, np.int64))


@pytest.mark.parametrize("value", [1e300, -1e300, 1e5])
def test_12_ctc_logits_past_the_limit_are_an_input_error_in_every_backend(value):
    from harness.core.errors import InputError
    from implementations import registry
    x = np.zeros((4, 1, 3), np.float64)
    x[1, 0, 2] = value
    for name in _ctc_backends():
        with pytest.raises(InputError, match=r"\|value\| <="):
            registry.get(name, "cpu").ctc(x, np.array([[1]]), np.array([4]), np.array([1]))


def test_12_ctc_at_the_logit_limit_agrees_across_backends():
    from implementations import registry
    from implementations.ctc_checks import LOGIT_LIMIT
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 4)) * LOGIT_LIMIT / 4
    x[2, 0, 1], x[3, 1, 3] = LOGIT_LIMIT, -LOGIT_LIMIT
    tg, il, tl = np.array([[1, 2], [3, 3]]), np.array([6, 6]), np.array([2, 2])
    got = {n: registry.get(n, "cpu").ctc(x, tg, il, tl) for n in _ctc_backends()}
    ref_loss, ref_grad = got["numpy"]
    for n, (loss, grad) in got.items():
        assert np.isfinite(loss).all() and np.isfinite(grad).all(), n
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, err_msg=n)
        np.testing.assert_allclose(grad, ref_grad, atol=1e-6, err_msg=n)


def test_12_rtrl_has_one_cost_guard_for_every_backend():
    from harness.core.errors import InputError
    from harness.core.params import init_params
    from harness.core.spec import CellSpec
    from implementations import registry
    spec = CellSpec("lstm", 512, 512, 1)
    p = init_params(spec, seed=0, dtype="float64")
    x = np.zeros((50, 2, 512))
    for name in [n for n in ("numpy", "torch", "jax") if registry.describe(n, "cpu").available]:
        b = registry.get(name, "cpu")
        if "rtrl" not in b.algorithms:
            continue
        t0 = time.monotonic()
        with pytest.raises(InputError, match="RTRL_MAX_FLOPS"):
            b.vjp(spec, p, x, algorithm="rtrl")
        assert time.monotonic() - t0 < 10, name


# -- #13 a killed gate's worktree is pruned -------------------------------------------------------------------------

def test_13_a_killed_gates_worktree_is_pruned_by_the_next(tmp_path):
    from harness.gate import gate
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, check=True)  # noqa
    git("init", "-q")
    (repo / "f.py").write_text("x = 1\n")
    git("add", "f.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import tempfile
    stale = tempfile.mkdtemp(prefix="rnnbench-gate-")
    with open(os.path.join(stale, gate.OWNER_FILE), "w") as f:
        f.write(f"{dead.pid}\n")
    git("worktree", "add", "--detach", os.path.join(stale, "base"), "HEAD")
    live = tempfile.mkdtemp(prefix="rnnbench-gate-")
    with open(os.path.join(live, gate.OWNER_FILE), "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        removed = gate.prune_stale_worktrees(str(repo))
        assert stale in removed and not os.path.exists(stale)
        assert os.path.exists(live)  # a live gate's is left alone
        assert "base" not in git("worktree", "list").stdout.replace(str(repo), "")
    finally:
        shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)


# -- #14 warnings and hints --------------------------------------------------------------------------------------

def test_14_two_jax_backends_in_one_worker_do_not_warn():
    pytest.importorskip("jax")
    code = textwrap.dedent(f"""
        import sys, warnings; sys.path.insert(0, {ROOT!r})
        from harness.measure import threads as th
        th.set_process_env(2)
        warnings.simplefilter("error", RuntimeWarning)
        from implementations import registry
        import numpy as np
        for n in ("jax", "jax-unroll8"):
            b = registry.instance(n, "cpu", 2)
            b.set_threads(2)
            import jax.numpy as jnp; jnp.zeros(1).block_until_ready()
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert r.stdout.strip() == "ok", r.stderr
    assert "not applied" not in r.stderr


def test_14_hints_quote_paths_with_spaces(tmp_path, fake_suite, capsys):
    d = str(tmp_path / "my run")
    assert main(["run", "fake", "--preset", "full", "--backend", fb.FAKE, "--out", d, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"next: rnnbench report '{d}'" in out
