"""The report: a synthetic run directory -> report.md, report.html, figures; bad run directories -> exit 2."""
from __future__ import annotations

import json
import os
import re
import warnings

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


def synthetic_run(run_dir: str, torn_tail: bool = False, defect: bool = False) -> str:
    """Rows a throughput run would write (made-up times), plus an error, a skip and another suite's rows.

    ``defect``: torch's forward eff_recurrent of the reference case is 9.87 with a ``ceiling_defect``."""
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
                    if defect and tags == "reference" and b == "torch" and mode == "fwd":
                        rows[-1] = c.row("eff_recurrent", 9.87, "ratio", samples=[9.8, 9.87, 9.9], mode=mode,
                                         ceiling_defect="efficiency 9.87 > 1 + 0.1 (noise margin): a defect",
                                         **common)
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
    assert '<h2 id="throughput">Throughput</h2>' in page and "```" not in page


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
    assert '<h1 id="title">Title</h1>' in page and "<code>code</code>" in page and "<strong>bold</strong>" in page
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


# -- findings first, errors last, limits apart, defects marked, a table of contents ------------------------

def _part(md: str, heading: str) -> str:
    """The text of the level-2 section ``heading`` (up to the next level-2 heading)."""
    return md.split(heading + "\n", 1)[1].split("\n## ", 1)[0]


def test_report_leads_with_findings_and_ends_with_errors(run_dir):
    md = open(os.path.join(run_dir, "report.md")).read()
    heads = [l for l in md.splitlines() if l.startswith("## ")]
    assert heads[0] == "## Findings" and heads[-1] == "## Errors and skips", heads
    assert heads.index("## Machine and versions") < heads.index("## Throughput")
    top = md.split("## Findings", 1)[0]
    assert "Test CPU" in top and "**preset** quick" in top  # one line of run identity before the findings
    findings = _part(md, "## Findings")
    assert len(findings.splitlines()) < 40  # about one screen
    ref = next(l for l in findings.splitlines() if "LSTM B64 T100 H256" in l)
    # synthetic times: torch 1.0, numpy 1.1, jax 1.4 (up to 5 % noise): torch first, 1.1x ahead of numpy
    m = re.search(r"fwd \*\*torch\*\* [\d.]+ ms, ([\d.]+)× ahead of numpy", ref)
    assert m and 1.0 < float(m.group(1)) < 1.25, ref
    assert "train **torch**" in ref and "(centre)" in findings and "GRU B32 T50 H128" in findings
    assert "1 of" in findings and "checks fail" in findings and "acme" in findings  # the failed equivalence
    assert "**1 error**" in findings and "1 skipped" in findings
    assert "Zzz" not in findings and "zzz-suite" not in findings  # a suite without findings adds nothing
    page = open(os.path.join(run_dir, "report.html")).read()
    ids = set(re.findall(r'\bid="([^"]+)"', page))
    targets = re.findall(r"\]\(#([^)]+)\)", findings)
    assert len(targets) >= 5 and not [t for t in targets if t not in ids], (targets, ids)
    errors = _part(md, "## Errors and skips")
    assert "torch.compile failed here" in errors and "disagrees with the NumPy reference" in errors


def test_html_table_of_contents(run_dir):
    page = open(os.path.join(run_dir, "report.html")).read()
    assert page.count('<nav id="toc"') == 1
    nav = page.split('<nav id="toc"', 1)[1].split("</nav>", 1)[0]
    for hid in ("findings", "machine-and-versions", "throughput", "anchor-cases", "zzz-suite", "errors-and-skips"):
        assert f'href="#{hid}"' in nav and f'id="{hid}"' in page, hid
    # after the findings, before the next section
    assert page.index('<h2 id="findings">') < page.index('<nav id="toc"') < page.index('id="machine-and-versions"')


def test_ceiling_defects_are_never_plain_numbers(tmp_path):
    d = synthetic_run(str(tmp_path / "r"), defect=True)
    report.write_report(d)
    md = open(os.path.join(d, "report.md")).read()
    for m in re.finditer(r"9\.87", md):
        after, before = md[m.end():m.end() + 9], md[max(0, m.start() - 11):m.start()]
        assert after == " ⚠ defect" or before == "efficiency ", md[m.start() - 80:m.end() + 40]
    findings = _part(md, "## Findings")
    assert "1 efficiency defect(s)" in findings and "eff_recurrent 9.87 ⚠ defect" in findings
    assert "#### Efficiency defects (ceiling beaten)" in md
    eff = md.split("### Efficiency against measured GEMM ceilings", 1)[1].split("###", 1)[0]
    torch_fwd = next(l for l in eff.splitlines() if l.startswith("| torch ") and "| fwd " in l)
    assert "1 ⚠ defect" in torch_fwd  # counted, and left out of the median and range
    # without the column (older runs) nothing is a defect
    d2 = synthetic_run(str(tmp_path / "old"))
    report.write_report(d2)
    assert not re.search(r"\d ⚠ defect", open(os.path.join(d2, "report.md")).read())


def _gradient_row(c, metric, status, reason, **extra):
    return {**c.row(metric, None, "1", status=status, reason=reason, kind="sweep", setting="rho3-s1", **extra),
            "case_key": c.key, "attempt": 1}


def test_limits_are_counted_apart_from_errors(tmp_path):
    """A float under/overflow is a limit, listed in its own section, not under the errors."""
    d = str(tmp_path / "r")
    records.write_meta(d, {"run_id": "lim", "preset": "smoke"})
    c = Case("gradients", "rnn_tanh-sweep-T1000-H8-B2-I4-float32-seed0", "numpy", "cpu", "rnn_tanh", 1, 2, 1000, 4,
             8, "float32")
    with records.RowWriter(d, "lim") as w:
        w.write(_gradient_row(c, "grad_norm_h", "limit", "float32 underflow from k=78 (every entry subnormal)"))
        w.write(_gradient_row(c, "decay_rate", "limit", "empty fit window (the curve float32 underflow from k=1)"))
        # a run that knows the status: an error is an error, whatever its reason says
        w.write(_gradient_row(c, "predicted_rate", "error", "non-finite factors"))
        w.mark_done(c.key, 1)
    report.write_report(d)
    md = open(os.path.join(d, "report.md")).read()
    assert "2 gradient points reached float limits" in _part(md, "## Findings")
    assert "**1 error**" in _part(md, "## Findings")
    assert "non-finite factors" in _part(md, "## Errors and skips") and "k=78" in _part(md, "## Limits")
    assert "recorded with status `error`" not in md


def test_limits_of_an_old_run(tmp_path):
    """Runs from before the status ``limit`` recorded a float under/overflow as ``error``: read as limits."""
    d = str(tmp_path / "r")
    records.write_meta(d, {"run_id": "lim", "preset": "smoke"})
    c = Case("gradients", "rnn_tanh-sweep-T1000-H8-B2-I4-float32-seed0", "numpy", "cpu", "rnn_tanh", 1, 2, 1000, 4,
             8, "float32")
    hostile = "<script>alert(1)</script> [click](javascript:alert(1)) ![x](a\" onerror=\"alert(1))"
    with records.RowWriter(d, "lim") as w:
        w.write(_gradient_row(c, "grad_norm_h", "error", "float32 underflow from k=78 (every entry subnormal)"))
        w.write(_gradient_row(c, "grad_norm_c", "error", "float32 underflow from k=80 (every entry subnormal)"))
        w.write(_gradient_row(c, "param_grad_norm", "error", "non-finite parameter gradient at T=1000"))
        w.write(_gradient_row(c, "check_finite_difference", "error", "finite differences disagree " + hostile))
        w.mark_done(c.key, 1)
    report.write_report(d)
    md = open(os.path.join(d, "report.md")).read()
    findings = _part(md, "## Findings")
    assert "3 gradient points reached float limits (expected; see [Limits](#limits))" in findings
    assert "**1 error**" in findings
    limits, errors = _part(md, "## Limits"), _part(md, "## Errors and skips")
    assert "underflow from k=78" in limits and "underflow from k=80" in limits and "T=1000" in limits
    assert "All of them were recorded with status `error`" in limits
    assert "finite differences disagree" in errors and "underflow" not in errors
    assert md.index("## Limits") > md.index("## Gradients through time") and "section failed" not in md
    tags = _tags(open(os.path.join(d, "report.html")).read())
    assert "script" not in [t for t, _ in tags]
    assert not [(t, a) for t, a in tags if any(k.startswith("on") or "javascript" in (v or "") for k, v in a)]
    assert "&lt;script&gt;" in open(os.path.join(d, "report.html")).read()


def _tags(page: str):
    """(tag, attributes) of every element of an HTML page."""
    from html.parser import HTMLParser
    out = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            out.append((tag, attrs))
    P().feed(page)
    return out


def test_markdown_links_and_images_are_safe():
    page = report.markdown_to_html("[ok](#x) [a](https://e.org/p) [bad](javascript:alert(1)) "
                                   "![i](figures/a.png) ![j](data:image/png;base64,xx) ![k](a\"onerror=\"x)\n")
    body = page.split("</style>", 1)[1]
    assert '<a href="#x">ok</a>' in body and '<a href="https://e.org/p">a</a>' in body
    assert '<img src="figures/a.png" alt="i">' in body
    assert "onerror" not in "".join(v or "" for t, a in _tags(page) if t == "img" for k, v in a)  # not an image
    tags = _tags(page)
    assert not [a for t, a in tags if any(k.startswith("on") for k, _ in a)]
    assert not [a for t, a in tags if any(k in ("href", "src") and v.split(":")[0] in ("javascript", "data")
                                          for k, v in a)]


def test_heading_ids_follow_the_anchor_rule():
    from suites.report_util import anchor, link
    page = report.markdown_to_html("## Findings\n\n## Crossover length T* (BPTT's peak)\n\n### Figures\n\n"
                                   "### Figures\n")
    assert '<h2 id="crossover-length-t-bptts-peak">' in page
    assert '<h3 id="figures">' in page and '<h3 id="figures-1">' in page
    assert anchor("Memory: BPTT vs RTRL") == "memory-bptt-vs-rtrl"
    assert link("x", "Speed-up relative to torch") == "[x](#speed-up-relative-to-torch)"


def _extreme_gradient_rows():
    """Curves from 1e-299 to 1e299 (float64) and float32 curves that underflow: what overflowed matplotlib."""
    import numpy as np
    rows = []
    k = np.arange(1000)
    for cell in ("rnn_tanh", "rnn_relu"):
        for rho, rate in ((0.5, 10 ** -0.299), (1.0, 1.0), (3.0, 10 ** 0.299)):
            for dtype, floor in (("float64", 1e-300), ("float32", 1e-38)):
                n = rate ** k
                n = [float(v) if floor < v < 1e300 else None for v in n]
                c = Case("gradients", f"{cell}-sweep-T1000-H8-B2-I4-{dtype}-seed0", "numpy", "cpu", cell, 1, 2, 1000,
                         4, 8, dtype)
                st = "ok" if None not in n else "limit"
                rows.append({**c.row("grad_norm_h", n[-1], "1", status=st, reason="" if st == "ok" else "underflow",
                                     kind="sweep", setting=f"rho{rho:g}-s1", rho=rho, input_scale=1.0, seed=0,
                                     norms=n, theory=n, k_stride=1, init="orthogonal", gate_bias=0.0),
                             "case_key": c.key, "attempt": 1})
    c = Case("gradients", "linear-T1000-H8-B2-I4-float64-seed0", "numpy", "cpu", "linear", 1, 2, 1000, 4, 8, "float64")
    for rho in (0.5, 3.0):
        with np.errstate(over="ignore", under="ignore"):
            p = rho ** k.astype(float)
        n = [float(v) if 1e-300 < v < 1e300 else None for v in p]
        rows.append({**c.row("grad_norm_h", None, "1", kind="linear", setting=f"rho{rho:g}", rho=rho, input_scale=1.0,
                             seed=0, norms=n, theory=n, k_stride=1), "case_key": c.key, "attempt": 1})
    return rows


def test_writing_the_report_emits_no_runtime_warning(tmp_path):
    """The gradient figures of curves spanning ~600 decades draw without matplotlib's `overflow in exp`."""
    d = str(tmp_path / "r")
    records.write_meta(d, {"run_id": "extreme", "preset": "quick"})
    with records.RowWriter(d, "extreme") as w:
        for r in _extreme_gradient_rows():
            w.write(r)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report.write_report(d)
    runtime = [f"{x.filename}:{x.lineno}: {x.message}" for x in caught if issubclass(x.category, RuntimeWarning)]
    assert not runtime, runtime
    md = open(os.path.join(d, "report.md")).read()
    assert "figures/gradients_curves.png" in md and "figures/gradients_float32.png" in md
    assert "figure failed" not in md


def test_log_ticks_are_readable():
    from suites.report_util import log_tick_label, log_tick_values
    assert [log_tick_label(t) for t in log_tick_values(16, 256)] == ["20", "50", "100", "200"]
    assert [log_tick_label(t) for t in log_tick_values(20, 40)] == ["20", "30", "40"]
    many = log_tick_values(1e-300, 1e280)
    assert 3 <= len(many) <= 8 and all(1e-300 <= t <= 1e280 for t in many)
    assert log_tick_label(1e6) == "$10^{6}$" and log_tick_label(3e5) == "$3\\times10^{5}$"
    assert log_tick_values(-1, 10) == [] and log_tick_values(float("nan"), 1) == []


class _PluginSuite:
    name = "zzz-suite"

    def __init__(self, findings):
        self._findings = findings

    def report_section(self, df, fig_dir, **opts):
        return "## zzz-suite\n\nThe plug-in's own section."

    def report_findings(self, df, **opts):
        if isinstance(self._findings, Exception):
            raise self._findings
        return self._findings


def test_plugin_findings_and_a_failing_one(tmp_path):
    d = synthetic_run(str(tmp_path / "r"))
    report.write_report(d, suites=[_PluginSuite([f"[zzz](#zzz-suite): {3 * 14} things", "- second"])])
    findings = _part(open(os.path.join(d, "report.md")).read(), "## Findings")
    assert "**zzz-suite**\n\n- [zzz](#zzz-suite): 42 things\n- second" in findings
    report.write_report(d, suites=[_PluginSuite(ValueError("broken <b>"))])
    md = open(os.path.join(d, "report.md")).read()
    assert "_The zzz-suite findings failed: ValueError: broken <b>_" in _part(md, "## Findings")
    assert "## Throughput" in md and "The plug-in's own section." in md  # the rest of the report is there


REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "reference",
                         "cpu-2core")


@pytest.mark.skipif(not os.path.exists(os.path.join(REFERENCE, "rows.jsonl")), reason="no committed reference run")
def test_findings_of_every_suite_from_the_reference_run():
    """Each suite's findings from real rows (no figures drawn): derived numbers and verdicts, with links."""
    from suites.base import get_suite
    df = report.apply_limits(report.load_run(REFERENCE))
    limits = int((df["status"] == "limit").sum())
    assert limits > 0 and not (df["status"] == "error").any()  # float limits are recorded as such, never errors
    got = {}
    for suite in ("throughput", "memory", "gradients", "ctc"):
        sub = df[df["suite"] == suite]
        got[suite] = "\n".join(get_suite(suite).report_findings(sub, baseline="torch"))
        lines = got[suite].splitlines()
        assert lines and all(l.startswith("- ") and "](#" in l for l in lines), (suite, lines)
    ref = df[(df["suite"] == "throughput") & (df["metric"] == "fwd_ms") & (df["tags"] == "reference")]
    fastest = ref.loc[ref["value"].astype(float).idxmin()]
    assert f"fwd **{fastest['backend']}** " in got["throughput"]
    assert "fitted exponents" in got["memory"] and "Crossover" in got["memory"] and "T* / theory" in got["memory"]
    assert "Checks" in got["gradients"] and "ρ·RMS(tanh')" in got["gradients"]
    assert "brute force" in got["ctc"] and "float32" in got["ctc"] and "JAX (optax.ctc_loss)" in got["ctc"]
    run = "\n".join(report.run_findings(df))
    assert f"{limits} gradient points reached float limits" in run and "no errors" in run
