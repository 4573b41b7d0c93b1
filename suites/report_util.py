"""What every suite's report section shares: section anchors for the findings' links, readable log axes.

No framework, pandas or matplotlib import at module level (importing a suite's report module stays cheap).

- :func:`anchor` is the id a heading gets in ``report.html`` and (GitHub's rule) on a rendered ``report.md``;
  :func:`link` is a Markdown link to it. ``harness.report`` gives headings the same ids.
- :func:`readable_log_axes`: tick marks and labels on log axes that stay readable whatever the range:
  1-2-5 (or finer) plain-number labels within a decade or two, decades (every 1, 2, 5, ... decades) beyond,
  never labelled minor ticks (matplotlib's default labels minor ticks on short log axes, overlapping
  "3×10¹ 4×10¹"), and no tick computed outside the view (matplotlib's locator overflows near 1e±308).
"""
from __future__ import annotations

import math
import re
from typing import Any, List

_NOT_SLUG = re.compile(r"[^\w\- ]", re.UNICODE)


def anchor(title: str) -> str:
    """The anchor of a heading ``title``: lower case, punctuation dropped, spaces to hyphens (GitHub's rule,
    without the ``-1`` suffix of a repeated heading)."""
    return _NOT_SLUG.sub("", str(title).strip().lower()).replace(" ", "-")


def link(text: str, title: str) -> str:
    """A Markdown link with ``text`` (plain text: no code spans, no brackets) to the heading ``title``."""
    return f"[{text}](#{anchor(title)})"


# -- log axes ------------------------------------------------------------------------------------------

#: Mantissas of the ticks within a decade, sparsest first: tried on short log axes.
_MANTISSAS = ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0),
              (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))
#: Decade steps on long log axes.
_DECADE_STEPS = (1, 2, 5, 10, 20, 25, 50, 100, 200)


def log_tick_values(vmin: float, vmax: float, max_ticks: int = 8) -> List[float]:
    """Major tick positions inside [vmin, vmax] on a log axis (see the module docstring)."""
    if not (math.isfinite(vmin) and math.isfinite(vmax)) or vmin <= 0 or vmax <= 0:
        return []
    vmin, vmax = min(vmin, vmax), max(vmin, vmax)
    lo, hi = math.log10(vmin), math.log10(vmax)
    span = hi - lo
    eps = 1e-9
    if span > 3:
        step = next((s for s in _DECADE_STEPS if span / s <= max_ticks), _DECADE_STEPS[-1])
        first = math.ceil(lo / step - eps) * step
        return [10.0 ** e for e in range(int(first), int(math.floor(hi + eps)) + 1, step)]
    best: List[float] = []
    for mant in _MANTISSAS:
        ticks = [m * 10.0 ** e for e in range(int(math.floor(lo)) - 1, int(math.ceil(hi)) + 1) for m in mant]
        ticks = sorted(t for t in ticks if vmin * (1 - eps) <= t <= vmax * (1 + eps))
        if len(ticks) > max_ticks:
            break
        best = ticks
        if len(ticks) >= 4:
            break
    if len(best) >= 2:
        return best
    # Less than a factor of ~1.5 in view: evenly spaced round numbers.
    step = 10.0 ** math.floor(math.log10((vmax - vmin) / 3)) if vmax > vmin else 0.0
    if step <= 0:
        return [vmin]
    for f in (1, 2, 5, 10):
        if (vmax - vmin) / (step * f) <= max_ticks - 1:
            step *= f
            break
    return [k * step for k in range(int(math.ceil(vmin / step)), int(math.floor(vmax / step)) + 1) if k > 0]


def _plain(x: float) -> bool:
    return 1e-3 <= x < 1e5


def log_tick_label(x: float, plain: Any = None) -> str:
    """A tick label: a plain number (``plain``; None: when x is within 0.001–99 999), else m×10^e (mathtext).

    An axis labels all its ticks one way: plain when every tick is within that range."""
    if not math.isfinite(x) or x <= 0:
        return ""
    if _plain(x) if plain is None else plain:
        return f"{float(f'{x:.4g}'):.6g}"
    e = math.floor(math.log10(x) + 1e-9)
    m = round(x / 10.0 ** e, 2)
    if m >= 10:
        m, e = m / 10, e + 1
    return f"$10^{{{e}}}$" if abs(m - 1) < 1e-9 else f"${m:g}\\times10^{{{e}}}$"


def _minor_values(vmin: float, vmax: float, majors: List[float]) -> List[float]:
    if not (math.isfinite(vmin) and math.isfinite(vmax)) or vmin <= 0 or vmax <= 0:
        return []
    vmin, vmax = min(vmin, vmax), max(vmin, vmax)
    lo, hi = math.floor(math.log10(vmin)), math.ceil(math.log10(vmax))
    if hi - lo > 6:
        return []  # long axes: gridlines at the labelled decades are enough
    major = set(round(math.log10(t), 9) for t in majors if t > 0)
    out = [m * 10.0 ** e for e in range(lo, hi + 1) for m in range(1, 10)]
    return [t for t in out if vmin <= t <= vmax and round(math.log10(t), 9) not in major]


def readable_log_axes(ax: Any, which: str = "both", max_ticks: int = 8) -> None:
    """Give every log-scaled axis of ``ax`` (``which``: "x", "y" or "both") readable ticks and labels.

    Call it after the axis' scale and limits are final (``set_xscale`` resets locators).
    """
    from matplotlib.ticker import Formatter, Locator, NullFormatter

    class _Major(Locator):
        def __call__(self):
            return self.tick_values(*self.axis.get_view_interval())

        def tick_values(self, vmin, vmax):
            return log_tick_values(float(vmin), float(vmax), max_ticks)

    class _Minor(Locator):
        def __call__(self):
            vmin, vmax = (float(v) for v in self.axis.get_view_interval())
            return _minor_values(vmin, vmax, log_tick_values(vmin, vmax, max_ticks))

        def tick_values(self, vmin, vmax):
            return _minor_values(float(vmin), float(vmax), log_tick_values(float(vmin), float(vmax), max_ticks))

    class _Label(Formatter):
        def format_ticks(self, values):
            pos = [float(v) for v in values if v > 0]
            plain = all(_plain(v) for v in pos) if pos else None
            return [log_tick_label(float(v), plain) for v in values]

        def __call__(self, x, pos=None):
            return log_tick_label(float(x))

    axes = {"x": [ax.xaxis], "y": [ax.yaxis], "both": [ax.xaxis, ax.yaxis]}[which]
    for axis in axes:
        if axis.get_scale() != "log":
            continue
        axis.set_major_locator(_Major())
        axis.set_major_formatter(_Label())
        axis.set_minor_locator(_Minor())
        axis.set_minor_formatter(NullFormatter())


def _compact(v: float, fmt: str) -> str:
    """``v`` formatted with ``fmt``, exponents without a plus sign or leading zeros (``e-05`` -> ``e-5``)."""
    try:
        t = format(float(v), fmt)
    except (TypeError, ValueError):
        return "-"
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), t)


def sci(v: float) -> str:
    """A tolerance or error in short scientific notation: 1e-05 -> ``1e-5``."""
    return _compact(v, ".0e")


def short(v: float) -> str:
    """An error in two significant digits, exponents without leading zeros: 6.3e-08 -> ``6.3e-8``."""
    return _compact(v, ".2g")
