"""The report: a synthetic run directory -> report.md, report.html, figures; bad run directories -> exit 2."""
from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from harness.measure import records
from harness.report import report  # noqa: E402
from harness.cli.main import UsageError, main  # noqa: E402
from suites.base import Case  # noqa: E402

SHAPES = [  # (cell, H, B, T, tags): an H, B and T sweep of LSTM around (128, 32, 50), a GRU H sweep, the reference
    ("lstm", 64, 32, 50, "sweep-H"), ("lstm", 128, 32, 50, "centre"), ("lstm", 256, 32, 50, "sweep-H"),
    ("lstm", 128, 8, 50, "sweep-B"), ("lstm", 128, 64, 50, "sweep-B"),
    ("lstm", 128, 32, 25, "sweep-T"), ("lstm", 128, 32, 100, "sweep-T"),
    ("gru", 64, 32, 50, "sweep-H"), ("gru", 128, 32, 50, "centre"),
    ("lstm", 256, 64, 100, "reference"),
]
SPEED = {"numpy": 1.1, "torch": 1.0, "jax": 1.4}  # time factor relative to a made-up cost model


def synthetic_run(run_dir: str, torn_tail: bool = False) -> str:
    """Rows a throughput run would write (made-up times), plus an error, a skip and another suite's rows."""
    import numpy as np
    rng = np.random.default_rng(0)
    os.makedirs(run_dir, exist_ok=True)
    records.write_meta(run_dir, {"run_id": "synthetic", "preset": "quick", "seed": 0, "threads": 2,
                                 "machine": {"cpu": "Test CPU", "cores": 2}, "versions": {"numpy": "2.0"}})
    with records.RowWriter(run_dir, "synthetic") as w:
        for cell, H, B, T, tags in SHAPES:
            name = f"{cell}-L1-B{B}-T{T}-I{H}-H{H}-float32"
            for b, f in SPEED.items():
                c = Case("throughput", name, b, "cpu", cell, 1, B, T, H, H, "float32",
                         settings={"tags": tags, "modes": "fwd,train"})
                spec = c.spec()
                common = {"path": b, "threads": 2, "equiv_error": 1e-7}
                w.write({**c.row("equiv_error", 1e-7, "rel", **common), "case_key": c.key, "attempt": 1})
                w.write({**c.row("ceiling_gflops", 200.0, "GFLOP/s", samples=[190, 200, 210], kind="gemm_square",
                                 framework=b, gemm_shape="1024x1024x1024", **common),
                         "case_key": c.key, "attempt": 1})
                for mode, k in (("fwd", 1), ("train", 3)):
                    flops = spec.forward_flops(B, T) * k
                    s = flops / 100e9 * f * (1 + 0.05 * rng.random(7))
                    med = float(np.median(s))
                    rows = [c.row(f"{mode}_ms", med * 1e3, "ms", samples=s * 1e3, mode=mode, **common),
                            c.row("tokens_per_s", B * T / med, "tokens/s", samples=B * T / s, mode=mode, **common),
                            c.row("compile_s", 0.01, "s", mode=mode, **common),
                            c.row("gflops", flops / med / 1e9, "GFLOP/s", samples=flops / s / 1e9, mode=mode,
                                  **common),
                            c.row("eff_gemm", flops / med / 200e9, "ratio", samples=flops / s / 200e9, mode=mode,
                                  **common),
                            c.row("eff_recurrent", flops / med / 120e9, "ratio", samples=flops / s / 120e9,
                                  mode=mode, **common)]
                    for r in rows:
                        w.write({**r, "case_key": c.key, "attempt": 1})
                w.mark_done(c.key, 1)
        bad = Case("throughput", "lstm-L1-B8-T20-I32-H32-float32", "torch-compile", "cpu", "lstm", 1, 8, 20, 32, 32,
                   "float32")
        w.write({**bad.row("fwd_ms", None, "ms", status="skipped", reason="torch.compile failed here: no compiler"),
                 "case_key": bad.key, "attempt": 1})
        wrong = Case("throughput", "lstm-L1-B8-T20-I32-H32-float32", "acme", "cpu", "lstm", 1, 8, 20, 32, 32, "float32")
        w.write({**wrong.row("equiv_error", 0.3, "rel", status="error", reason="disagrees with the NumPy reference"),
                 "case_key": wrong.key, "attempt": 1})
        other = Case("zzz-suite", "thing", "numpy", "cpu")
        w.write({**other.row("peak_bytes", 1234.0, "B"), "case_key": other.key, "attempt": 1})
    if torn_tail:
        with open(os.path.join(run_dir, records.ROWS_FILE), "a") as f:
            f.write('{"suite": "throughput", "metr')
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = synthetic_run(str(tmp_path_factory.mktemp("run") / "r"))
    report.write_report(d)
    return d


def test_report_files(run_dir):
    md = open(os.path.join(run_dir, "report.md")).read()
    for text in ("## Machine and versions", "Test CPU", "## Run summary", "## Throughput", "### Tokens per second",
                 "### Speed-up relative to torch", "### Efficiency against measured GEMM ceilings",
                 "### Anchor cases", "lstm-L1-B64-T100-I256-H256-float32", "torch.compile failed here",
                 "disagrees with the NumPy reference", "## zzz-suite", "peak_bytes"):
        assert text in md, text
    figs = sorted(os.listdir(os.path.join(run_dir, "figures")))
    assert figs == ["efficiency.png", "throughput_vs_batch.png", "throughput_vs_hidden.png",
                    "throughput_vs_seq_len.png"]
    for f in figs:
        with open(os.path.join(run_dir, "figures", f), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"](figures/{f})" in md
    page = open(os.path.join(run_dir, "report.html")).read()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and '<img src="figures/efficiency.png"' in page
    assert "<h2>Throughput</h2>" in page and "```" not in page


def test_speedups_are_right(run_dir):
    md = open(os.path.join(run_dir, "report.md")).read()
    sec = md.split("### Speed-up relative to torch", 1)[1].split("###", 1)[0]
    line = next(l for l in sec.splitlines() if l.startswith("| lstm-L1-B64-T100-I256-H256-float32"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # columns: case, numpy, torch, jax; synthetic numpy is 1.1x torch's time, jax 1.4x (up to 5 % noise)
    assert cells[2].startswith("1.00")
    assert 1 / 1.1 * 0.94 < float(cells[1].split()[0]) < 1 / 1.1 * 1.06
    assert 1 / 1.4 * 0.94 < float(cells[3].split()[0]) < 1 / 1.4 * 1.06


def test_baseline_option_and_fallback(tmp_path):
    d = synthetic_run(str(tmp_path / "r"))
    assert main(["report", d, "--baseline", "numpy"]) == 0
    assert "### Speed-up relative to numpy" in open(os.path.join(d, "report.md")).read()
    report.write_report(d, baseline="nosuch")
    md = open(os.path.join(d, "report.md")).read()
    assert "requested baseline 'nosuch' has no results; using 'torch'" in md


def test_torn_last_line_is_tolerated(tmp_path):
    d = synthetic_run(str(tmp_path / "r"), torn_tail=True)
    assert main(["report", d]) == 0
    assert "1 unreadable line(s)" in open(os.path.join(d, "report.md")).read()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in _error_line(capsys)


def test_empty_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is empty" in _error_line(capsys)


def test_no_rows(tmp_path, capsys):
    open(tmp_path / records.ROWS_FILE, "w").close()
    assert main(["report", str(tmp_path)]) == 2
    assert "no rows" in _error_line(capsys)


@pytest.mark.parametrize("content", [b"garbage\nmore garbage\n", b"\xff\xfe\x00binary", b'[1, 2]\n{"a": 1}\n'])
def test_corrupted_rows(tmp_path, capsys, content):
    with open(tmp_path / records.ROWS_FILE, "wb") as f:
        f.write(content)
    assert main(["report", str(tmp_path)]) == 2
    assert "corrupted" in _error_line(capsys)


def test_corrupted_meta(tmp_path, capsys):
    d = synthetic_run(str(tmp_path / "r"))
    with open(os.path.join(d, records.META_FILE), "w") as f:
        f.write("{not json")
    assert main(["report", d]) == 2
    assert "meta.json" in _error_line(capsys)


def test_write_report_raises_usage_error(tmp_path):
    with pytest.raises(UsageError):
        report.write_report(str(tmp_path / "missing"))


def test_markdown_to_html():
    md = ("# Title\n\nSome `code` and **bold** text\nwrapped.\n\n- one\n- two\n\n| a | b |\n|:--|--:|\n| 1 | x\\|y |\n\n"
          "![fig](figures/x.png)\n\n```\n<raw>\n```\n")
    page = report.markdown_to_html(md, "T")
    assert "<h1>Title</h1>" in page and "<code>code</code>" in page and "<strong>bold</strong>" in page
    assert "<p>Some <code>code</code> and <strong>bold</strong> text wrapped.</p>" in page
    assert "<ul><li>one</li><li>two</li></ul>" in page
    assert "<th>a</th><th>b</th>" in page and "<td>1</td><td>x|y</td>" in page
    assert '<img src="figures/x.png" alt="fig">' in page and "&lt;raw&gt;" in page


def test_md_table_and_si():
    import pandas as pd
    t = report.md_table(pd.DataFrame({"x": [1.23456], "y": ["a"]}))
    assert "1.23" in t and t.count("\n") == 2
    assert report.md_table(pd.DataFrame()) == "_(no data)_"
    assert report.si(12345) == "12.3k" and report.si(None) == "-" and report.si(float("nan")) == "-"
    assert report.si(2.5e9) == "2.5G" and report.si(0.5) == "0.5"


def test_real_rows_roundtrip(tmp_path):
    """Rows produced by the suite itself (numpy smoke, tiny budget) load and report without error."""
    from suites.base import RunContext
    from suites.throughput.suite import SUITE
    d = str(tmp_path / "real")
    records.write_meta(d, {"run_id": "real"})
    case = [c for c in SUITE.cases("smoke", ["numpy"]) if c.cell == "gru"][0]
    with records.RowWriter(d, "real") as w:
        for r in SUITE.run(case, RunContext(threads=1, budget_s=0.01, preset="smoke")):
            w.write({**r, "case_key": case.key, "attempt": 1})
        w.mark_done(case.key, 1)
    path = report.write_report(d)
    md = open(path).read()
    assert "gru-L1-B8-T20-I32-H32-float32" in md and "efficiency.png" in md
    df = records.load(d)
    assert json.loads(df.to_json())  # flattened extras are plain values
