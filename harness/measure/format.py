"""How measured values are written in tables: Markdown pipe tables, numbers with SI suffixes.

Shared by the generic report and by every suite's own report section (which lives below the report layer).
"""
from __future__ import annotations

from typing import Any, Optional


def md_table(df, floatfmt: str = ".3g", index: bool = False) -> str:
    """A pandas DataFrame as a Markdown pipe table (``tabulate`` if installed, else a plain fallback)."""
    if df is None or len(df) == 0:
        return "_(no data)_"
    try:
        return df.to_markdown(index=index, floatfmt=floatfmt)
    except ImportError:
        pass
    frame = df.reset_index() if index else df
    cols = [str(c) for c in frame.columns]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return format(v, floatfmt)
        return "" if v is None else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def si(x: Optional[float], digits: int = 3) -> str:
    """A number with an SI suffix and ``digits`` significant digits: 12345 -> ``12.3k``; None/NaN -> ``-``."""
    if x is None or x != x:
        return "-"
    ax = abs(x)
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if ax >= div:
            return f"{x / div:.{digits}g}{suf}"
    return f"{x:.{digits}g}"




def text_table(headers, rows) -> str:
    """Rows of strings as an aligned plain-text table (``tabulate`` when installed)."""
    try:
        from tabulate import tabulate
        return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
    except ImportError:
        widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
        line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
        out = [line, "  ".join("-" * w for w in widths)]
        out += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
        return "\n".join(out)
