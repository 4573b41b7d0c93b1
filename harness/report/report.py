"""A run directory -> ``report.md``, ``report.html`` and ``figures/*.png``. Never re-runs anything.

The report holds the machine and versions (from ``meta.json``), a run summary (rows per status, the
errors and skips with their reasons), then one section per suite present in the data. A suite's section
comes from ``harness.report_<suite>.section(df, fig_dir, **opts) -> str`` (Markdown) when that module
exists; a suite without one gets a plain table of medians. ``opts`` are ``baseline`` (the backend that
speed-ups are relative to), ``run_dir`` and ``meta``; a section must accept further keywords.

The HTML is converted from the same Markdown by a small converter for the subset used here (headings,
paragraphs, lists, pipe tables, images, code), so that no dependency is needed; figures are referenced
by relative path (``figures/...``) from both files.

Bad input (a missing, empty or corrupted directory, no rows) raises :class:`harness.cli.main.UsageError`
with one line; the CLI turns it into exit code 2.
"""
from __future__ import annotations

import datetime as _dt
import html
import importlib
import importlib.util
import io
import os
import re
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence

from harness.core.errors import UsageError
from harness.measure.format import md_table, si  # noqa: F401 - used by sections of old
from harness.measure.records import portable_path

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIG_DIR = "figures"
#: At most this many non-ok rows are listed one by one (the rest are counted).
MAX_PROBLEM_ROWS = 40
#: A rows.jsonl whose unparseable lines exceed this fraction is corrupted, not merely torn.
MAX_BAD_FRACTION = 0.5


# -- Markdown -> HTML ----------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.88em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2} td:first-child,th:first-child{text-align:left}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px} pre{background:#f4f4f4;padding:0.8em;overflow:auto}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0} h1,h2,h3{border-bottom:1px solid #eee}
"""


def _inline(text: str) -> str:
    """Inline Markdown (code, images, links, bold, italics) to HTML, everything else escaped."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for p in parts:
        if len(p) >= 2 and p.startswith("`") and p.endswith("`"):
            out.append(f"<code>{html.escape(p[1:-1])}</code>")
            continue
        s = html.escape(p, quote=False)
        s = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", lambda m: f'<img src="{m.group(2)}" alt="{m.group(1)}">', s)
        s = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', s)
        s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![\w*])_([^_]+)_(?![\w*])", r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def _split_row(line: str) -> List[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = re.split(r"(?<!\\)\|", line)
    return [c.strip().replace("\\|", "|") for c in cells]


def _table_html(lines: List[str]) -> str:
    head = _split_row(lines[0])
    body = [_split_row(l) for l in lines[2:]] if len(lines) > 1 and re.match(r"^\s*\|?[\s:|-]+\|?\s*$", lines[1]) \
        else [_split_row(l) for l in lines[1:]]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead>", "<tbody>"]
    for r in body:
        out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def markdown_to_html(md: str, title: str = "rnnbench report") -> str:
    """Convert the Markdown subset the report uses to a self-contained HTML page."""
    lines = md.splitlines()
    out: List[str] = []
    i, para = 0, []

    def flush_para():
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if s.startswith("```"):
            flush_para()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", s)
        if m:
            flush_para()
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
        elif s.startswith("|"):
            flush_para()
            j = i
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            out.append(_table_html(lines[i:j]))
            i = j
            continue
        elif re.match(r"^[-*]\s+", s):
            flush_para()
            items = []
            while i < len(lines) and re.match(r"^\s*[-*]\s+", lines[i]):
                items.append("<li>" + _inline(re.sub(r"^\s*[-*]\s+", "", lines[i])) + "</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif not s:
            flush_para()
        else:
            para.append(s)
        i += 1
    flush_para()
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(out) + "\n</body></html>\n")


# -- loading -------------------------------------------------------------------------------------------

def load_run(run_dir: str):
    """``harness.measure.records.load`` with every kind of bad input turned into a one-line :class:`UsageError`."""
    from harness.measure import records

    if not isinstance(run_dir, str) or not run_dir:
        raise UsageError(f"run directory: got {run_dir!r}; expected a path")
    if not os.path.exists(run_dir):
        raise UsageError(f"run directory {run_dir!r} does not exist")
    if not os.path.isdir(run_dir):
        raise UsageError(f"run directory {run_dir!r} is not a directory")
    rows_path = os.path.join(run_dir, records.ROWS_FILE)
    if not os.path.exists(rows_path):
        what = "is empty" if not os.listdir(run_dir) else f"has no {records.ROWS_FILE}"
        raise UsageError(f"run directory {run_dir!r} {what}: not a run directory (run `rnnbench run --out DIR` first)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torn lines are reported in the report itself
            df = records.load(run_dir)
    except records.RunDirError as e:
        raise UsageError(str(e)) from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{rows_path}: corrupted (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{rows_path}: unreadable ({type(e).__name__}: {e})") from None
    bad = list(df.attrs.get("bad_lines") or [])
    total = sum(1 for _ in records.iter_lines(run_dir))
    if len(df) == 0:
        if bad:
            raise UsageError(f"{rows_path}: corrupted: none of its {total} line(s) is a readable row")
        raise UsageError(f"{rows_path}: no rows recorded (the run measured nothing)")
    if bad and len(bad) > MAX_BAD_FRACTION * total:
        raise UsageError(f"{rows_path}: corrupted: {len(bad)} of {total} lines are unreadable "
                         f"(first at line {bad[0]})")
    missing = [c for c in ("suite", "metric", "status") if c not in df.columns or df[c].isna().all()]
    if missing:
        raise UsageError(f"{rows_path}: corrupted: rows lack the column(s) {', '.join(missing)} of the row schema")
    return df


# -- sections ------------------------------------------------------------------------------------------

def _fmt_bytes(n: Any) -> str:
    try:
        return f"{float(n) / 2**30:.1f} GiB"
    except (TypeError, ValueError):
        return "-"


def machine_section(meta: Dict[str, Any]) -> str:
    """Machine, versions and run settings from meta.json."""
    m = meta.get("machine") or {}
    v = meta.get("versions") or {}
    lines = ["## Machine and versions", ""]
    items = [("CPU", m.get("cpu")), ("cores", m.get("cores")), ("memory", _fmt_bytes(m.get("memory_bytes"))
                                                                  if m.get("memory_bytes") else None),
             ("GPU", m.get("gpu_name")), ("GPU driver", m.get("gpu_driver")), ("CUDA", m.get("cuda")),
             ("cuDNN", m.get("cudnn")), ("OS", m.get("os")), ("Python", m.get("python")),
             ("host", m.get("hostname"))]
    lines += [f"- **{k}**: {val}" for k, val in items if val not in (None, "")]
    vers = [f"{k} {val}" for k, val in v.items() if val]
    if vers:
        lines.append(f"- **packages**: {', '.join(vers)}")
    bv = meta.get("backend_versions") or {}
    if isinstance(bv, dict) and bv:
        # what each backend said of itself (plug-ins included): versions() at the start of the run
        per = [f"{k.split('@')[0]}: {', '.join(f'{n} {x}' for n, x in (d or {}).items())}"
               for k, d in bv.items() if isinstance(d, dict)]
        lines.append(f"- **backend versions**: {'; '.join(per)}")
    run_items = [("preset", meta.get("preset")), ("suites", meta.get("suites")), ("backends", meta.get("backends")),
                 ("device", meta.get("device")), ("threads", meta.get("threads")), ("seed", meta.get("seed")),
                 ("git commit", meta.get("git_commit")), ("started", meta.get("start_time")),
                 ("ended", meta.get("end_time"))]
    run_items = [(k, ", ".join(map(str, val)) if isinstance(val, (list, tuple)) else val) for k, val in run_items]
    lines += [f"- **{k}**: `{val}`" if k == "git commit" else f"- **{k}**: {val}"
              for k, val in run_items if val not in (None, "", [])]
    argv = meta.get("argv")
    if argv:
        lines.append(f"- **command**: `{' '.join(map(str, argv)) if isinstance(argv, list) else argv}`")
    if len(lines) == 2:
        lines.append("_meta.json is missing: machine and versions unknown._")
    return "\n".join(lines)


def summary_section(df) -> str:
    """Rows per suite and status, and every error/skip/timeout/oom with its reason."""
    import pandas as pd

    lines = ["## Run summary", ""]
    n_cases = df["case_key"].nunique() if "case_key" in df.columns and df["case_key"].notna().any() else None
    lines.append(f"{len(df)} rows" + (f" from {n_cases} cases" if n_cases else "") + ".")
    bad = df.attrs.get("bad_lines") or []
    if bad:
        lines.append(f"\n{len(bad)} unreadable line(s) in rows.jsonl were skipped (lines {bad[:10]}): "
                     "torn writes from an interrupted run.")
    if "complete" in df.columns and (~df["complete"].astype(bool)).any():
        inc = df.loc[~df["complete"].astype(bool), "case_key"].nunique()
        lines.append(f"\n{inc} case(s) did not finish (interrupted); their rows so far are included. "
                     "`rnnbench run --resume --out DIR` completes them.")
    counts = pd.crosstab(df["suite"].fillna("?"), df["status"].fillna("?"))
    lines += ["", md_table(counts.reset_index().rename(columns={"suite": "suite \\ status"}), floatfmt="g")]
    prob = df[df["status"].fillna("ok") != "ok"]
    if len(prob):
        cols = [c for c in ("suite", "case", "backend", "metric", "status", "reason") if c in prob.columns]
        shown = prob[cols].copy()
        shown["reason"] = shown["reason"].fillna("").astype(str).str.replace("\n", " ").str.slice(0, 240)
        lines += ["", "### Errors and skips", ""]
        lines.append(md_table(shown.head(MAX_PROBLEM_ROWS)))
        if len(prob) > MAX_PROBLEM_ROWS:
            lines.append(f"\n… and {len(prob) - MAX_PROBLEM_ROWS} more (see rows.jsonl).")
    return "\n".join(lines)


def generic_section(suite: str, df) -> str:
    """Medians per metric and backend, for a suite without its own report module."""
    ok = df[(df["status"] == "ok") & df["value"].notna()]
    lines = [f"## {suite}", ""]
    if len(ok) == 0:
        return "\n".join(lines + ["_No successful measurements._"])
    t = ok.pivot_table(index=["metric", "unit"], columns="backend", values="value", aggfunc="median")
    lines.append("Median over cases of each metric, per backend.")
    lines += ["", md_table(t, index=True)]
    return "\n".join(lines)


def _suite_order(present: Iterable[str]) -> List[str]:
    present = [p for p in present if isinstance(p, str)]
    from suites.base import SUITE_MODULES
    return [s for s in SUITE_MODULES if s in present] + sorted(p for p in present if p not in SUITE_MODULES)


def _suite_object(suite: str, plugins: Dict[str, Any]):
    """The Suite whose rows these are: a plug-in suite named on the command line, else a built-in one."""
    if suite in plugins:
        return plugins[suite]
    from suites.base import SUITE_MODULES, get_suite
    if suite in SUITE_MODULES:
        try:
            return get_suite(suite)
        except ImportError:
            return None
    return None  # a plug-in suite's rows whose code was not named: never imported on a run directory's word


def suite_section(suite: str, df, fig_dir: str, plugins: Optional[Dict[str, Any]] = None, **opts: Any) -> str:
    """The Markdown of one suite: the Suite's own ``report_section``, else :func:`generic_section`."""
    obj = _suite_object(suite, plugins or {})
    if obj is None or not callable(getattr(obj, "report_section", None)):
        return generic_section(suite, df)
    try:
        text = obj.report_section(df, fig_dir, **opts)
        return generic_section(suite, df) if text is None else str(text)
    except Exception as e:  # noqa: BLE001 - one broken section must not cost the rest of the report
        return (f"## {suite}\n\n_The {suite} section failed: {type(e).__name__}: {e}_\n\n"
                + generic_section(suite, df).split("\n", 2)[-1])


def write_report(run_dir: str, baseline: str = "torch", suites: Sequence[Any] = ()) -> str:
    """Write ``run_dir/report.md``, ``run_dir/report.html`` and ``run_dir/figures/*.png``; return report.md's path.

    Args:
        run_dir: a run directory (``rows.jsonl`` and ``meta.json``).
        baseline: the backend that speed-ups are relative to (a section falls back to another if absent).
        suites: plug-in Suite objects whose rows are in the run: their ``report_section`` writes their part
            (a run directory never names code to import; built-in suites are found by name).
    Raises:
        UsageError: the directory is missing, empty, corrupted or holds no rows.
    """
    import matplotlib
    matplotlib.use("Agg")

    df = load_run(run_dir)
    meta = df.attrs.get("meta") or {}
    plugins = {getattr(s, "name", None): s for s in suites}
    fig_dir = os.path.join(run_dir, FIG_DIR)
    os.makedirs(fig_dir, exist_ok=True)
    run_id = meta.get("run_id") or (df["run_id"].dropna().iloc[0] if "run_id" in df and df["run_id"].notna().any()
                                    else os.path.basename(os.path.abspath(run_dir)))
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    parts = [f"# rnnbench report: {run_id}", "",
             f"Generated {now} from `{portable_path(run_dir)}` (rows.jsonl + meta.json). Figures are in "
             f"`{FIG_DIR}/`. Times are medians over repeated runs with their interquartile range [q25–q75].",
             "", machine_section(meta), "", summary_section(df)]
    for suite in _suite_order(df["suite"].dropna().unique()):
        sub = df[df["suite"] == suite].copy()
        sub.attrs = dict(df.attrs)
        parts += ["", suite_section(suite, sub, fig_dir, plugins=plugins, baseline=baseline, run_dir=run_dir,
                                    meta=meta)]
    md = "\n".join(parts).rstrip() + "\n"
    md_path = os.path.join(run_dir, REPORT_MD)
    _write_atomic(md_path, md)
    _write_atomic(os.path.join(run_dir, REPORT_HTML), markdown_to_html(md, title=f"rnnbench report: {run_id}"))
    return md_path


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with io.open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def cli_report(args) -> int:
    """``rnnbench report DIR [--baseline BACKEND] [--suite MODULE:ATTR ...]``: write the report, print its path."""
    from harness.run.runner import resolve_suite
    plugins = []
    for ref in args.suite or []:
        if ":" not in ref:
            raise UsageError(f"--suite: got {ref!r}; expected MODULE:ATTR naming a plug-in suite "
                             "(built-in suites are found without it)")
        plugins.append(resolve_suite(ref)[2])
    path = write_report(args.run_dir, baseline=args.baseline or "torch", suites=plugins)
    print(path)
    print(os.path.join(os.path.dirname(path), REPORT_HTML))
    return 0
