"""A run directory -> ``report.md``, ``report.html`` and ``figures/*.png``. Never re-runs anything.

The report leads with what the run found: a title, one line of run identity (machine, commit, preset), then
**Findings** (about one screen: the run's health, equivalence against the reference, and each suite's
headline numbers and verdicts, every one linking to the section it comes from). Then the machine and versions
(from ``meta.json``), a run summary (rows per status), one section per suite present in the data, and at the
end the rows that reached float limits (status ``limit``: expected, not failures) and the errors and skips
with their reasons.

A suite's section comes from its Suite's ``report_section(df, fig_dir, **opts) -> str`` (Markdown; by default
``section`` of its ``report_module``); its findings from ``report_findings(df, **opts) -> list[str]`` (Markdown
bullet lines; by default ``findings`` of the same module, none where it has no such function). A suite without
a section gets a plain table of medians. ``opts`` are ``baseline`` (the backend that speed-ups are relative
to), ``run_dir`` and ``meta``; sections and findings must accept further keywords.

Runs written before the status ``limit`` existed recorded a gradient curve's float under/overflow as
``error``: such rows are read as ``limit`` (:func:`apply_limits`).

The HTML is converted from the same Markdown by a small converter for the subset used here (headings with
ids, paragraphs, lists, pipe tables, images, links, code), with a table of contents of every section, so that
no dependency is needed. Everything from the rows is escaped; links go only to anchors, relative paths or
http(s), images only to relative paths. Figures are referenced by relative path (``figures/...``) from both
files.

Bad input (a missing, empty or corrupted directory, no rows) raises :class:`harness.cli.main.UsageError`
with one line; the CLI turns it into exit code 2.
"""
from __future__ import annotations

import datetime as _dt
import html
import importlib
import importlib.util
import os
import re
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence

from harness.core.errors import UsageError
from harness.measure.format import md_table, si  # noqa: F401 - used by sections of old
from harness.measure import safe_files
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
nav#toc{font-size:0.85em;background:#fafafa;border:1px solid #ddd;padding:0.4em 1em;margin:1em 0}
nav#toc ul{margin:0.2em 0;padding-left:1.2em} nav#toc summary{font-weight:bold;cursor:pointer}
@media (min-width:1760px){nav#toc{position:fixed;top:0;left:0;width:260px;height:100vh;overflow:auto;margin:0;
box-sizing:border-box;border-width:0 1px 0 0}}
"""

#: Link targets allowed in the HTML (a whitelist: anything else, e.g. ``javascript:`` behind a control character
#: that a browser strips, is shown as text): anchors, http(s) URLs, and relative paths of plain characters.
#: Images: relative paths of plain characters below the report (figures/...), nothing else.
_HREF = re.compile(r"^(#[\w.-]*|https?://[\w.~:/?#@!$&;=%+,-]+|[\w][\w./#-]*)$")
_SRC = re.compile(r"^[\w][\w./-]*\.(png|svg|jpe?g|gif)$")


def _attr(text: str) -> str:
    """Text already escaped with ``quote=False``, made safe inside a double-quoted attribute."""
    return text.replace('"', "&quot;").replace("'", "&#x27;")


def _safe_href(url: str) -> Optional[str]:
    return _attr(url) if _HREF.match(url) else None


def _safe_src(url: str) -> Optional[str]:
    return _attr(url) if _SRC.match(url) and ".." not in url.split("/") else None


def _img(m) -> str:
    src = _safe_src(m.group(2))
    return f'<img src="{src}" alt="{_attr(m.group(1))}">' if src is not None else m.group(0)


def _a(m) -> str:
    href = _safe_href(m.group(2))
    return f'<a href="{href}">{m.group(1)}</a>' if href is not None else m.group(1)


def _inline(text: str) -> str:
    """Inline Markdown (code, images, links, bold, italics) to HTML, everything else escaped."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for p in parts:
        if len(p) >= 2 and p.startswith("`") and p.endswith("`"):
            out.append(f"<code>{html.escape(p[1:-1])}</code>")
            continue
        s = html.escape(p, quote=False)
        s = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", _img, s)
        s = re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", _a, s)
        s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![\w*])_([^_]+)_(?![\w*])", r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def _heading_text(md: str) -> str:
    """A heading's plain text (its Markdown marks dropped), for its anchor and the table of contents."""
    t = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", md)
    return re.sub(r"\*\*|`", "", t).strip()


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


def _toc_html(heads: List[Any]) -> str:
    """``<nav id="toc">``: every level-2 heading, its level-3 headings nested under it."""
    items: List[str] = []
    open_sub = False
    for level, hid, text in heads:
        if level == 2:
            if open_sub:
                items.append("</ul></li>")
                open_sub = False
            elif items:
                items.append("</li>")
            items.append(f'<li><a href="#{hid}">{_inline(text)}</a>')
        elif level == 3 and items:
            if not open_sub:
                items.append("<ul>")
                open_sub = True
            items.append(f'<li><a href="#{hid}">{_inline(text)}</a></li>')
    if items:
        items.append("</ul></li>" if open_sub else "</li>")
    return ('<nav id="toc" aria-label="Contents"><details open><summary>Contents</summary><ul>'
            + "".join(items) + "</ul></details></nav>")


def markdown_to_html(md: str, title: str = "rnnbench report", toc: bool = True) -> str:
    """Convert the Markdown subset the report uses to a self-contained HTML page.

    Headings get ids (:func:`suites.report_util.anchor`, ``-1``, ``-2`` ... on repeats, as GitHub does), so that
    ``[text](#anchor)`` links work in both files. ``toc``: a table of contents of the level-2 and level-3
    headings, after the Findings section (or before the first level-2 heading).
    """
    from suites.report_util import anchor

    lines = md.splitlines()
    out: List[str] = []
    heads: List[Any] = []  # (level, id, text, index in out)
    seen: Dict[str, int] = {}
    i, para = 0, []

    def flush_para():
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()

    def heading_id(text: str) -> str:
        base = anchor(_heading_text(text)) or "section"
        n = seen.get(base, 0)
        seen[base] = n + 1
        return base if n == 0 else f"{base}-{n}"

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
            hid = heading_id(m.group(2))
            heads.append((n, hid, _heading_text(m.group(2)), len(out)))
            out.append(f'<h{n} id="{_attr(html.escape(hid, quote=False))}">{_inline(m.group(2))}</h{n}>')
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
    if toc and any(h[0] == 2 for h in heads):
        h2 = [h for h in heads if h[0] == 2]
        after = [k for k, h in enumerate(h2) if h[1] == "findings"]
        at = h2[after[0] + 1][3] if after and after[0] + 1 < len(h2) else (len(out) if after else h2[0][3])
        out.insert(at, _toc_html([h[:3] for h in heads if h[0] in (2, 3)]))
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


#: The status of a recorded float under/overflow (an expected physical result, not a failure).
LIMIT = "limit"
#: Runs from before the status ``limit`` recorded it as ``error``: per suite, the metrics and the reasons
#: that say so (a gradient curve that under/overflowed, and the fits and norms that it left without a value).
LEGACY_LIMITS = {"gradients": (("grad_norm_h", "grad_norm_c", "decay_rate", "decay_rate_c", "param_grad_norm",
                                "clipped_norm", "memory_time", "predicted_rate"),
                               re.compile(r"underflow|overflow|non-finite|stops being finite", re.IGNORECASE))}
_NOT_OK = ("error", "timeout", "oom")


def apply_limits(df):
    """``df`` with the float-limit rows of older runs (status ``error``, see :data:`LEGACY_LIMITS`) read as
    ``limit``; ``df.attrs["legacy_limits"]`` counts them. A run that has a ``limit`` row already knows the
    status: its errors stay errors."""
    if "status" not in df.columns or "suite" not in df.columns:
        return df
    if (df["status"] == LIMIT).any():
        df.attrs = {**df.attrs, "legacy_limits": 0}
        return df
    reason = df["reason"].fillna("").astype(str) if "reason" in df.columns else None
    mask = None
    for suite, (metrics, pattern) in LEGACY_LIMITS.items():
        if reason is None:
            break
        m = ((df["suite"] == suite) & (df["status"] == "error") & df["metric"].isin(metrics)
             & reason.str.contains(pattern))
        mask = m if mask is None else (mask | m)
    attrs = dict(df.attrs)
    if mask is not None and mask.any():
        df = df.copy()
        df.loc[mask, "status"] = LIMIT
    df.attrs = {**attrs, "legacy_limits": int(mask.sum()) if mask is not None else 0}
    return df


def _cell(v: Any, width: int = 240) -> str:
    """A string from a row for a Markdown table cell: one line, pipes escaped, at most ``width`` characters."""
    s = "" if v is None or (isinstance(v, float) and v != v) else str(v)
    s = " ".join(s.split())
    if len(s) > width:
        s = s[:width - 1] + "…"
    return s.replace("|", "\\|")


def _n(k: int, what: str) -> str:
    return f"{k} {what}" + ("" if k == 1 or what.endswith("s") else "s")


def identity_lines(meta: Dict[str, Any], run_dir: str) -> List[str]:
    """One line of run identity (machine, commit, preset, when) and one of provenance."""
    m = meta.get("machine") or {}
    mach = ", ".join(str(x) for x in (m.get("cpu"), f"{m['cores']} cores" if m.get("cores") else None,
                                         _fmt_bytes(m["memory_bytes"]) if m.get("memory_bytes") else None,
                                         m.get("gpu_name")) if x)
    commit = meta.get("git_commit")
    bits = [f"**machine** {mach}" if mach else None,
            f"**commit** `{str(commit)[:12]}`" if commit else None,
            f"**preset** {meta['preset']}" if meta.get("preset") else None,
            f"**device** {meta['device']}" if meta.get("device") else None,
            f"**started** {meta['start_time']}" if meta.get("start_time") else None]
    bits = [b for b in bits if b]
    first = " · ".join(bits) if bits else "_meta.json is missing: machine, commit and preset unknown._"
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    second = (f"Generated {now} from `{portable_path(run_dir)}` (rows.jsonl + meta.json). Figures are in "
              f"`{FIG_DIR}/`. Times are medians over repeated runs with their interquartile range [q25–q75].")
    return [first, "", second]


def summary_section(df) -> str:
    """Rows per suite and status; torn lines and unfinished cases. (The rows themselves are listed at the end:
    :func:`limits_section`, :func:`problems_section`.)"""
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
    st = df["status"].fillna("ok")
    notes = []
    if (st == LIMIT).any():
        notes.append(f"`{LIMIT}`: a float under/overflow recorded as such (expected; listed under "
                     "[Limits](#limits))")
    if (~st.isin(["ok", LIMIT])).any():
        notes.append("the other non-ok rows are listed under [Errors and skips](#errors-and-skips)")
    if notes:
        lines += ["", "; ".join(notes).capitalize() + "."]
    return "\n".join(lines)


def _problem_table(rows, cols: Sequence[str] = ("suite", "case", "backend", "dtype", "metric", "status", "reason"),
                   reason_width: int = 240) -> List[str]:
    import pandas as pd

    cols = [c for c in cols if c in rows.columns]
    shown = pd.DataFrame({c: [_cell(v, reason_width if c == "reason" else 80) for v in rows[c]] for c in cols})
    out = [md_table(shown.head(MAX_PROBLEM_ROWS))]
    if len(rows) > MAX_PROBLEM_ROWS:
        out.append(f"\n… and {len(rows) - MAX_PROBLEM_ROWS} more (see rows.jsonl).")
    return out


def limits_section(df) -> str:
    """The rows that reached float limits (status ``limit``), or "" when there are none."""
    rows = df[df["status"] == LIMIT]
    if not len(rows):
        return ""
    lines = ["## Limits", "",
             f"{_n(len(rows), 'row')} recorded a float under- or overflow: a gradient curve that left the range of "
             "its dtype (vanishing below the smallest normal number, or exploding past the largest), or a value "
             "that it left undefined. That is the physics being measured, not a failure; the values beyond that "
             "step are NaN, never zeros."]
    legacy = int(df.attrs.get("legacy_limits") or 0)
    if legacy:
        who = "All of them were" if legacy == len(rows) else f"{_n(legacy, 'row')} of them {'was' if legacy == 1 else 'were'}"
        lines.append(f"{who} recorded with status `error` by this run (written before the status `{LIMIT}` "
                     "existed) and are read as limits.")
    cols = (["suite"] if rows["suite"].nunique() > 1 else []) + ["case", "backend", "dtype", "setting", "metric",
                                                                  "reason"]
    lines += [""] + _problem_table(rows, cols, reason_width=120)
    return "\n".join(lines)


def problems_section(df) -> str:
    """Every error, skip, timeout and oom with its reason, or "" when there are none."""
    prob = df[~df["status"].fillna("ok").isin(["ok", LIMIT])]
    if not len(prob):
        return ""
    return "\n".join(["## Errors and skips", ""] + _problem_table(prob))


# -- findings ------------------------------------------------------------------------------------------

SUITE_TITLES = {"throughput": "Throughput", "memory": "Memory", "gradients": "Gradients", "ctc": "CTC"}
SUITE_NOUNS = {"gradients": "gradient", "ctc": "CTC"}


def _fmt_err(v: Any) -> str:
    from suites.report_util import short
    return short(v)


def run_findings(df) -> List[str]:
    """The run's health: rows per status, float limits apart from errors, torn lines, unfinished cases."""
    st = df["status"].fillna("ok")
    n_cases = df["case_key"].nunique() if "case_key" in df.columns and df["case_key"].notna().any() else None
    parts = [f"{(st == 'ok').sum()} ok"]
    lim = df[st == LIMIT]
    if len(lim):
        per = lim.groupby(lim["suite"].fillna("?")).size()
        what = ", ".join(f"{k} {SUITE_NOUNS.get(s, s)}" for s, k in per.items())
        parts.append(f"{what} points reached float limits (expected; see [Limits](#limits))")
    skipped = int((st == "skipped").sum())
    see = " (see [Errors and skips](#errors-and-skips))"
    if skipped:
        parts.append(f"{skipped} skipped" + see)
    failed = df[st.isin(_NOT_OK)]
    if len(failed):
        per = failed.groupby(failed["status"]).size()
        parts.append("**" + ", ".join(_n(int(k), s) for s, k in per.items()) + "**" + ("" if skipped else see))
    else:
        parts.append("no errors")
    other = int((~st.isin(("ok", LIMIT, "skipped") + _NOT_OK)).sum())
    if other:
        parts.append(f"{other} with another status")
    out = [f"- {len(df)} rows" + (f" from {n_cases} cases" if n_cases else "") + ": " + ", ".join(parts) + "."]
    bad = df.attrs.get("bad_lines") or []
    if bad:
        out.append(f"- **{len(bad)} unreadable line(s)** in rows.jsonl skipped (torn writes; see "
                   "[Run summary](#run-summary)).")
    if "complete" in df.columns and (~df["complete"].astype(bool)).any():
        inc = df.loc[~df["complete"].astype(bool), "case_key"].nunique()
        out.append(f"- **{inc} case(s) did not finish** (interrupted): `rnnbench run --resume` completes them.")
    return out


def equivalence_findings(df) -> List[str]:
    """Every suite's check against the NumPy reference (metric ``equiv_error``): all pass, or which failed."""
    from suites.report_util import anchor, sci

    eq = df[df["metric"] == "equiv_error"]
    if not len(eq):
        return []
    ok = eq[eq["status"] == "ok"]
    bad = eq[eq["status"].isin(_NOT_OK)]
    per = ", ".join(f"{s} {k}" for s, k in eq.groupby(eq["suite"].fillna("?")).size().items())
    target = ("#" + anchor("First-call (compile) times and equivalence")) if (eq["suite"] == "throughput").any() \
        else "#errors-and-skips"
    if not len(bad):
        line = f"- [Equivalence](" + target + f") with the float64 NumPy reference: **all {len(eq)} checks pass** ({per})"
        if len(ok) and ok["value"].notna().any():
            v = ok["value"].astype(float)
            tol = ok["tol"].astype(float) if "tol" in ok.columns else None
            score = v / tol if tol is not None and tol.notna().all() and (tol > 0).all() else v
            w = ok.loc[score.idxmax()]
            line += (f"; worst {_fmt_err(w['value'])} relative ({_cell(w['backend'], 40)}, {_cell(w['suite'], 40)}"
                     + (f", allowed {sci(w['tol'])}" if tol is not None and w.get("tol") == w.get("tol") else "")
                     + ")")
        return [line + "."]
    shown = []
    for _, r in bad.head(5).iterrows():
        val = f": {_fmt_err(r['value'])}" if r.get("value") == r.get("value") and r.get("value") is not None else ""
        shown.append(f"{_cell(r['backend'], 40)} on {_cell(r['case'], 60)} ({_cell(r['suite'], 40)}){val}"
                     + (f" — {_cell(r.get('reason'), 100)}" if r.get("reason") else ""))
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    return [f"- Equivalence with the float64 NumPy reference: **{len(bad)} of {len(eq)} checks fail** "
            f"(not timed; see [Errors and skips](#errors-and-skips)): " + "; ".join(shown) + more + "."]


def suite_findings(suite: str, df, plugins: Optional[Dict[str, Any]] = None, **opts: Any) -> List[str]:
    """One suite's findings: its Suite's ``report_findings`` (Markdown bullet lines), [] where it has none."""
    obj = _suite_object(suite, plugins or {})
    fn = getattr(obj, "report_findings", None) if obj is not None else None
    if not callable(fn):
        return []
    try:
        got = fn(df, **opts)
        got = [] if got is None else ([got] if isinstance(got, str) else [str(x) for x in got])
    except Exception as e:  # noqa: BLE001 - one broken suite must not cost the rest of the report
        return [f"- _The {suite} findings failed: {type(e).__name__}: {_cell(e, 200)}_"]
    out = []
    for line in got:
        for part in str(line).splitlines():
            if part.strip():
                out.append(part if re.match(r"^\s*[-*]\s+", part) else f"- {part.strip()}")
    return out


def findings_section(df, suites: Sequence[str], plugins: Dict[str, Any], **opts: Any) -> str:
    """``## Findings``: the run's health, equivalence, then each suite's findings under its name."""
    lines = ["## Findings", ""] + run_findings(df) + equivalence_findings(df)
    for suite in suites:
        sub = df[df["suite"] == suite].copy()
        sub.attrs = dict(df.attrs)
        got = suite_findings(suite, sub, plugins=plugins, **opts)
        if got:
            lines += ["", f"**{SUITE_TITLES.get(suite, _cell(suite, 80))}**", ""] + got
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


def write_report(run_dir: str, baseline: str = "torch", suites: Sequence[Any] = (), out: Optional[str] = None) -> str:
    """Write ``run_dir/report.md``, ``run_dir/report.html`` and ``run_dir/figures/*.png``; return report.md's path.

    Args:
        run_dir: a run directory (``rows.jsonl`` and ``meta.json``).
        out: write the report there instead (created if missing): for a run directory that is not yours to
            write into.
        baseline: the backend that speed-ups are relative to (a section falls back to another if absent).
        suites: plug-in Suite objects whose rows are in the run: their ``report_section`` and
            ``report_findings`` write their part (a run directory never names code to import; built-in suites
            are found by name).
    Raises:
        UsageError: the directory is missing, empty, corrupted or holds no rows.
    """
    import matplotlib
    matplotlib.use("Agg")

    df = apply_limits(load_run(run_dir))
    meta = df.attrs.get("meta") or {}
    plugins = {getattr(s, "name", None): s for s in suites}
    dest = _out_dir(out) if out is not None else run_dir
    fig_dir = os.path.join(dest, FIG_DIR)
    # Before anything is drawn: the outputs must be writable, and nothing planted there may be followed.
    if not os.access(dest, os.W_OK | os.X_OK):
        raise UsageError(f"{dest} is not writable: the report is written into the run directory (pass --out DIR "
                         "to write it elsewhere)")
    for name in (REPORT_MD, REPORT_HTML):
        safe_files.check_target(os.path.join(dest, name))
    safe_files.safe_dir(fig_dir)
    run_id = meta.get("run_id") if isinstance(meta.get("run_id"), str) else None
    run_id = run_id or (df["run_id"].dropna().iloc[0] if "run_id" in df and df["run_id"].notna().any()
                                    else os.path.basename(os.path.abspath(run_dir)))
    order = _suite_order(df["suite"].dropna().unique())
    opts = dict(baseline=baseline, run_dir=run_dir, meta=meta)
    sections = []
    for suite in order:
        sub = df[df["suite"] == suite].copy()
        sub.attrs = dict(df.attrs)
        sections += ["", suite_section(suite, sub, fig_dir, plugins=plugins, **opts)]
    parts = [f"# rnnbench report: {run_id}", ""] + identity_lines(meta, run_dir)
    parts += ["", findings_section(df, order, plugins, **opts), "", machine_section(meta), "", summary_section(df)]
    parts += sections
    for tail in (limits_section(df), problems_section(df)):
        if tail:
            parts += ["", tail]
    md = "\n".join(parts).rstrip() + "\n"
    md_path = os.path.join(dest, REPORT_MD)
    safe_files.write_atomic(md_path, md)
    safe_files.write_atomic(os.path.join(dest, REPORT_HTML), markdown_to_html(md, title=f"rnnbench report: {run_id}"))
    return md_path


def _out_dir(out: str) -> str:
    """``--out``: a directory, created if missing (links inside it are never followed by the writers)."""
    return safe_files.ensure_out_dir(out, "--out")


def write_machines_report(run_dirs: Sequence[str], out: str) -> str:
    """Several runs (one machine each, or a cluster run's hosts) -> ``out/report.md`` and ``out/report.html`` with
    a machine dimension (:mod:`harness.report.machines`); return report.md's path. The runs are only read."""
    from harness.report import machines as mx

    if not run_dirs:
        raise UsageError("report: name at least one run directory")
    frames, runs = [], []
    for d in run_dirs:
        df = apply_limits(load_run(d))
        meta = df.attrs.get("meta") or {}
        run_id = meta.get("run_id") if isinstance(meta.get("run_id"), str) else os.path.basename(os.path.abspath(d))
        frames.append(df)
        runs.append((run_id, meta))
    dest = _out_dir(out)
    for name in (REPORT_MD, REPORT_HTML):
        safe_files.check_target(os.path.join(dest, name))
    machines = mx.machines_of(runs)
    df = mx.tag_all(frames, machines)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    src = ", ".join(f"`{portable_path(d)}`" for d in run_dirs)
    title = f"rnnbench report: {len(run_dirs)} run(s) on {len(set(df['machine']))} machine(s)"
    parts = [f"# {title}", "", f"Generated {now} from {src}. Every run is only read; its own report: "
             "`rnnbench report RUN`.", "", "## Findings", ""] + mx.findings(df)
    parts += ["", mx.machines_table(machines, df), "", mx.timings_section(df), "", mx.correctness_section(df)]
    md = "\n".join(parts).rstrip() + "\n"
    md_path = os.path.join(dest, REPORT_MD)
    safe_files.write_atomic(md_path, md)
    safe_files.write_atomic(os.path.join(dest, REPORT_HTML), markdown_to_html(md, title=title))
    return md_path


def cli_report(args) -> int:
    """``rnnbench report DIR [DIR ...] [--out DIR] [--baseline BACKEND] [--suite MODULE:ATTR ...]``: write the report
    (one run: its full report; several: one report across their machines), print its paths."""
    from harness.run.runner import resolve_suite
    plugins = []
    for ref in args.suite or []:
        if ":" not in ref:
            raise UsageError(f"--suite: got {ref!r}; expected MODULE:ATTR naming a plug-in suite "
                             "(built-in suites are found without it)")
        plugins.append(resolve_suite(ref)[2])
    dirs = list(args.run_dir) if isinstance(args.run_dir, (list, tuple)) else [args.run_dir]
    out = getattr(args, "out", None)
    if len(dirs) > 1:
        if out is None:
            raise UsageError(f"report: {len(dirs)} run directories make one report across machines, written to a "
                             "new directory: pass --out DIR")
        path = write_machines_report(dirs, out)
    else:
        path = write_report(dirs[0], baseline=args.baseline or "torch", suites=plugins, out=out)
    print(path)
    print(os.path.join(os.path.dirname(path), REPORT_HTML))
    return 0
