"""The throughput section of the report: tables of tokens/s, speed-ups, efficiency, ceilings; figures.

``section(df, fig_dir, baseline="torch", **opts) -> str`` takes the throughput rows of a run (as loaded by
:func:`harness.measure.records.load`, ``extra`` flattened into columns such as ``mode``, ``kind``, ``tags``) and
returns Markdown. Figures go to ``fig_dir`` and are referenced as ``figures/<name>.png``:

- ``throughput_vs_hidden.png``, ``throughput_vs_batch.png``, ``throughput_vs_seq_len.png``: tokens/s
  against one factor with the others at the centre point (log axes, one line per backend, q25–q75 band;
  rows: inference forward / training; columns: cells with a sweep on that factor);
- ``efficiency.png``: achieved FLOP/s as a fraction of the measured square-GEMM and recurrent ceilings,
  for the anchor cases (bars per backend, forward and training).

Sweeps are found in the data, not in the preset: for each factor and cell the largest group of cases that
differ only in that factor is plotted, so any preset (or a merged run) works.

``findings(df, baseline="torch", **opts) -> list[str]``: the headline bullets for the top of the report
(fastest backend of the anchor and centre shapes per mode with its margin over the runner-up, wins over all
shapes, efficiency, ceiling defects), each linking to the table it comes from.

An efficiency row (``eff_gemm``, ``eff_recurrent``) may carry ``ceiling_defect``: a non-empty string when the
efficiency beat its ceiling by more than the stated margin (a measurement defect). Such a value is never shown
as a plain number (``1.21 ⚠ defect``), is left out of medians and ranges, and is listed in its own table.
Without the column (older runs) no value is a defect.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from harness.measure import safe_files
from harness.measure.format import md_table, si
from suites.report_util import link, readable_log_axes

MODES = (("fwd", "inference forward"), ("train", "training (forward + backward)"))
CELL_TITLES = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN (tanh)", "rnn_relu": "RNN (ReLU)", "mingru": "minGRU",
               "minlstm": "minLSTM", "rglru": "RG-LRU"}
CELL_ORDER = ("lstm", "gru", "rnn_tanh", "rnn_relu", "mingru", "minlstm", "rglru")
BACKEND_ORDER = ("numpy", "torch", "torch-native", "torch-cell", "torch-compile", "jax", "jax-unroll8", "torch-pscan",
                 "jax-pscan")
#: The factor each sweep figure varies, the columns held fixed, axis label and file name.
SWEEPS = (("hidden_size", ("batch", "seq_len"), "hidden size H (= input size I)", "throughput_vs_hidden"),
          ("batch", ("hidden_size", "input_size", "seq_len"), "batch size B", "throughput_vs_batch"),
          ("seq_len", ("hidden_size", "input_size", "batch"), "sequence length T (steps)", "throughput_vs_seq_len"))
ANCHOR_TAGS = ("reference", "fastrnns")
CENTRE_TAGS = ("centre",)
EFF_METRICS = ("eff_gemm", "eff_recurrent")
DEFECT_COL = "ceiling_defect"
DEFECT_MARK = "⚠ defect"
#: Headings of the section (the findings link to them).
H_SECTION = "Throughput"
H_ANCHORS = "Anchor cases"
H_EFFICIENCY = "Efficiency against measured GEMM ceilings"
H_DEFECTS = "Efficiency defects (ceiling beaten)"
H_TOKENS = "Tokens per second"


def _h_speedup(base: str) -> str:
    return "Speed-up relative to " + base


def _defect_of(r: Any) -> str:
    """The ``ceiling_defect`` text of a row (a dict, Series or namedtuple), "" when none."""
    v = r.get(DEFECT_COL) if hasattr(r, "get") else getattr(r, DEFECT_COL, None)
    return v.strip() if isinstance(v, str) and v.strip() else ""


def _defects(rows):
    """A boolean Series: which of ``rows`` carry a ceiling defect (all False without the column)."""
    if DEFECT_COL not in rows.columns:
        return rows["metric"].map(lambda _: False).astype(bool)
    return rows[DEFECT_COL].map(lambda v: isinstance(v, str) and bool(v.strip())).astype(bool)


def _eff_text(value: float, defect: str, spec: str = ".2f") -> str:
    """An efficiency for a table: the number, or the number marked as a defect (never a plain number then)."""
    return f"{format(value, spec)} {DEFECT_MARK}" if defect else format(value, spec)


def _backends(df) -> List[str]:
    present = [b for b in df["backend"].dropna().unique()]
    return [b for b in BACKEND_ORDER if b in present] + sorted(b for b in present if b not in BACKEND_ORDER)


def _colors(backends: List[str]) -> Dict[str, Any]:
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap("tab10")
    fixed = {b: cmap(i) for i, b in enumerate(BACKEND_ORDER)}
    extra = [b for b in backends if b not in fixed]
    fixed.update({b: cmap((len(BACKEND_ORDER) + i) % 10) for i, b in enumerate(extra)})
    return fixed


def _case_order(df) -> List[str]:
    """Case names sorted by cell, then H, B, T."""
    cases = df.drop_duplicates("case")[["case", "cell", "hidden_size", "batch", "seq_len"]].copy()
    cases["_c"] = cases["cell"].map({c: i for i, c in enumerate(CELL_ORDER)}).fillna(99)
    cases = cases.sort_values(["_c", "hidden_size", "batch", "seq_len", "case"])
    return list(cases["case"])


def _metric(df, metric: str, mode: Optional[str] = None):
    ok = df[(df["metric"] == metric) & (df["status"] == "ok") & df["value"].notna()]
    if mode is not None and "mode" in ok.columns:
        ok = ok[ok["mode"] == mode]
    return ok


def _ms(v: float) -> str:
    """Milliseconds without an exponent: 3 significant digits, whole numbers from 100 up."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _spread_cell(v: float, lo: Any, hi: Any) -> str:
    if lo is None or hi is None or lo != lo or hi != hi:
        return si(v)
    return f"{si(v)} [{si(lo)}–{si(hi)}]"


def _pivot_text(rows, order: List[str], backends: List[str], fmt) -> Any:
    import pandas as pd
    data = {b: {} for b in backends}
    for r in rows.itertuples(index=False):
        data[r.backend][r.case] = fmt(r)
    t = pd.DataFrame(data, index=[c for c in order if any(c in data[b] for b in backends)]).fillna("-")
    t.index.name = "case"
    return t


def _baseline(df, wanted: str) -> Tuple[Optional[str], str]:
    present = _backends(_metric(df, "tokens_per_s"))
    if wanted in present:
        return wanted, ""
    for b in ("torch", "numpy", "jax"):
        if b in present:
            return b, f" (the requested baseline {wanted!r} has no results; using {b!r})"
    return (present[0], f" (using {present[0]!r})") if present else (None, "")


def _tokens_tables(df, order, backends) -> List[str]:
    out = [f"### {H_TOKENS}", "",
           "Tokens/s = B·T / time per call (higher is better); each cell is the median with the q25–q75 range "
           "of the repeats in brackets."]
    for mode, label in MODES:
        rows = _metric(df, "tokens_per_s", mode)
        if len(rows) == 0:
            continue
        t = _pivot_text(rows, order, backends, lambda r: _spread_cell(r.value, r.q25, r.q75))
        out += ["", f"**{label}** (tokens/s)", "", md_table(t, index=True)]
    return out


def _speedup_tables(df, order, backends, base: str, note: str) -> List[str]:
    out = ["### " + _h_speedup(base), "",
           f"Ratio of median times, {base} time / backend time: above 1 the backend is faster than {base}{note}. "
           "In brackets the conservative range from the quartiles (baseline q25 / backend q75 … "
           "baseline q75 / backend q25)."]
    for mode, label in MODES:
        rows = _metric(df, f"{mode}_ms", mode)
        if len(rows) == 0:
            continue
        b = rows[rows["backend"] == base].set_index("case")
        if len(b) == 0:
            continue

        def fmt(r, b=b):
            if r.case not in b.index:
                return "-"
            br = b.loc[r.case]
            ratio = br.value / r.value
            if r.q25 and r.q75 and br.q25 and br.q75:
                return f"{ratio:.2f} [{br.q25 / r.q75:.2f}–{br.q75 / r.q25:.2f}]"
            return f"{ratio:.2f}"
        t = _pivot_text(rows, order, backends, fmt)
        out += ["", f"**{label}**", "", md_table(t, index=True)]
    return out


def _anchor_cases(df) -> List[str]:
    if "tags" not in df.columns:
        return []
    tags = df.drop_duplicates("case").set_index("case")["tags"].fillna("").astype(str)
    return [c for c in _case_order(df) if any(t in tags.get(c, "").split(",") for t in ANCHOR_TAGS)]


def _anchor_tables(df, backends, base: str) -> List[str]:
    import pandas as pd
    anchors = _anchor_cases(df)
    out: List[str] = []
    for case in anchors:
        sub = df[df["case"] == case]
        rows = []
        for b in backends:
            rb = sub[sub["backend"] == b]
            if len(rb) == 0:
                continue
            rec: Dict[str, Any] = {"backend": b}
            err = rb[rb["status"] != "ok"]
            for mode in ("fwd", "train"):
                t = _metric(rb, f"{mode}_ms", mode)
                rec[f"{mode}_ms [q25–q75]"] = (f"{_ms(t.value.iloc[0])} [{_ms(t.q25.iloc[0])}–{_ms(t.q75.iloc[0])}]"
                                               if len(t) else "-")
                bt = _metric(sub[sub["backend"] == base], f"{mode}_ms", mode)
                rec[f"{mode}: time / {base}"] = (f"{t.value.iloc[0] / bt.value.iloc[0]:.2f}"
                                                 if len(t) and len(bt) else "-")
                for eff in EFF_METRICS:
                    e = _metric(rb, eff, mode)
                    rec[f"{mode} {eff}"] = _eff_text(float(e.value.iloc[0]), _defect_of(e.iloc[0])) if len(e) else "-"
            eq = _metric(rb, "equiv_error")
            rec["equiv. error"] = f"{eq.value.iloc[0]:.1e}" if len(eq) else "-"
            if len(err):
                rec["note"] = f"{err.status.iloc[0]}: {str(err.reason.iloc[0])[:80]}"
            rows.append(rec)
        if not rows:
            continue
        r0 = sub.iloc[0]
        tags = str(r0.get("tags", "") or "")
        out += ["", f"**{case}** ({tags}: {CELL_TITLES.get(r0['cell'], r0['cell'])}, B={r0['batch']}, "
                    f"T={r0['seq_len']}, I={r0['input_size']}, H={r0['hidden_size']}, {r0['dtype']})", "",
                md_table(pd.DataFrame(rows).fillna(""))]
    if out:
        out = [f"### {H_ANCHORS}", "",
               f"Median time per call in ms with [q25–q75]; `time / {base}` above 1 means slower than {base}; "
               "eff_* are fractions of the measured ceilings (see below)."] + out
    return out


def _efficiency_tables(df, backends) -> List[str]:
    import pandas as pd
    out = [f"### {H_EFFICIENCY}", "",
           "`eff_gemm` = achieved model GFLOP/s (forward GEMM FLOPs 2·B·(I+H)·G·H·T·L, training 3×) divided by "
           "the GFLOP/s of the best square GEMM in the same framework, dtype and run (every strategy and size "
           "tried; the winner is named below); `eff_recurrent` = the same divided by the larger of that and the "
           "best way to run one layer's recurrent GEMM work (hoisted input GEMM + T step GEMMs, fused steps, the "
           "framework's compiled loop), timed as one call: the best a step loop can do if elementwise work were "
           "free. Median [min–max] over cases; "
           f"an efficiency that beat its ceiling (`{DEFECT_COL}`) is a measurement defect: counted as "
           f"`{DEFECT_MARK}`, left out of the median and range, listed below."]
    rows = []
    for b in backends:
        for mode, label in MODES:
            rec: Dict[str, Any] = {"backend": b, "mode": mode}
            any_ = False
            for eff in EFF_METRICS + ("gflops",):
                e = _metric(df[df["backend"] == b], eff, mode)
                col = eff if eff != "gflops" else "GFLOP/s"
                if len(e):
                    any_ = True
                    bad = _defects(e) if eff in EFF_METRICS else e["metric"].map(lambda _: False).astype(bool)
                    v = e.loc[~bad, "value"].astype(float)
                    text = f"{v.median():.3g} [{v.min():.3g}–{v.max():.3g}]" if len(v) else ""
                    if bad.any():
                        text = (text + " + " if text else "") + f"{int(bad.sum())} {DEFECT_MARK}"
                    rec[col] = text
                else:
                    rec[col] = "-"
            if any_:
                rows.append(rec)
    if not rows:
        return []
    out += ["", md_table(pd.DataFrame(rows))]
    out += _defect_table(df)
    ceil = _metric(df, "ceiling_gflops")
    if len(ceil) and "kind" in ceil.columns:
        fw = "framework" if "framework" in ceil.columns else "backend"
        shape = "gemm_shape" if "gemm_shape" in ceil.columns else "case"
        c = ceil.drop_duplicates([fw, "kind", shape, "dtype"]).copy()
        c["GFLOP/s [q25–q75]"] = [_spread_cell(v, lo, hi) for v, lo, hi in zip(c["value"], c["q25"], c["q75"])]
        cols = [fw, "device", "dtype", shape] + (["strategy"] if "strategy" in c.columns else []) + \
            ["GFLOP/s [q25–q75]"]
        sq = c[c["kind"] == "gemm_square"][cols]
        out += ["", "**Ceilings measured in this run** (the best square GEMM; GFLOP/s; `strategy`: which way won):",
                "", md_table(sq)]
        rec = c[c["kind"] != "gemm_square"]
        if len(rec):
            t = rec.pivot_table(index=["kind", shape], columns=fw, values="value", aggfunc="median")
            t = t.reset_index().rename(columns={shape: "shape"})
            for col in t.columns[2:]:
                t[col] = [si(v) if v == v else "-" for v in t[col]]
            t.columns.name = None
            out += ["", "Input-GEMM shapes are (T·B, I, G·H); recurrent shapes are (T, B, I, H, G·H) "
                        "(the fastest strategy for one layer's recurrent GEMMs, one call). GFLOP/s per framework:",
                    "", md_table(t)]
    return out


def _defect_rows(df):
    eff = df[df["metric"].isin(EFF_METRICS) & df["value"].notna()]
    return eff[_defects(eff)] if len(eff) else eff


def _defect_table(df) -> List[str]:
    import pandas as pd
    d = _defect_rows(df)
    if not len(d):
        return []
    rows = [{"backend": r["backend"], "case": r["case"], "mode": r.get("mode", "-"), "metric": r["metric"],
             "efficiency": _eff_text(float(r["value"]), _defect_of(r)),
             "defect": " ".join(_defect_of(r).split())[:200].replace("|", "\\|")} for _, r in d.iterrows()]
    return ["", f"#### {H_DEFECTS}", "",
            f"{len(rows)} efficiency value(s) exceed their ceiling by more than the stated margin: the ceiling or the "
            "timing is wrong there (a measurement defect), so these are not efficiencies.", "",
            md_table(pd.DataFrame(rows))]


def _compile_table(df, backends) -> List[str]:
    import pandas as pd
    rows = []
    for b in backends:
        sub = df[df["backend"] == b]
        rec: Dict[str, Any] = {"backend": b}
        for mode in ("fwd", "train"):
            c = _metric(sub, "compile_s", mode)
            rec[f"{mode} first call s (median [max])"] = (f"{c.value.median():.3g} [{c.value.max():.3g}]"
                                                         if len(c) else "-")
        eq = _metric(sub, "equiv_error")
        if len(eq) and "check_fwd_s" in eq.columns:
            rec["check fwd+vjp first calls s (median)"] = f"{(eq.check_fwd_s + eq.check_vjp_s).median():.3g}"
        rec["max equiv. error"] = f"{eq.value.max():.1e}" if len(eq) else "-"
        rows.append(rec)
    if not rows:
        return []
    return ["### First-call (compile) times and equivalence", "",
            "The first call of each timed callable (JIT compilation, autotuning, allocator warm-up). A JIT "
            "backend may already have compiled during the equivalence check, whose first forward and vjp "
            "calls are shown too. `max equiv. error` is the largest relative L2 error against the float64 "
            "NumPy reference over all outputs and gradients (checked before timing).", "",
            md_table(pd.DataFrame(rows).fillna("-"))]


# -- figures -------------------------------------------------------------------------------------------

def _sweep_groups(df, var: str, fixed: Tuple[str, ...]) -> Dict[str, Tuple[dict, Any]]:
    """For each cell: (the fixed values, rows) of the largest group of cases differing only in ``var``."""
    tps = _metric(df, "tokens_per_s")
    out = {}
    for cell in [c for c in CELL_ORDER if c in set(tps["cell"])] + \
            sorted(c for c in set(tps["cell"]) if c not in CELL_ORDER):
        sub = tps[tps["cell"] == cell]
        keys = list(fixed) + ["layers", "dtype"]
        if var == "hidden_size":
            sub = sub[sub["input_size"] == sub["hidden_size"]]  # the H sweep keeps I = H
        best, best_n = None, 1
        for vals, g in sub.groupby(keys, dropna=False):
            n = g[var].nunique()
            if n > best_n:
                best, best_n = (dict(zip(keys, vals)), g), n
        if best is not None:
            out[cell] = best
    return out


def _fixed_label(fixed: dict) -> str:
    names = {"batch": "B", "seq_len": "T", "hidden_size": "H", "input_size": "I"}
    parts = [f"{names[k]}={int(v)}" for k, v in fixed.items() if k in names]
    if "input_size" in fixed and "hidden_size" in fixed and fixed["input_size"] == fixed["hidden_size"]:
        parts = [p for p in parts if not p.startswith("I=")]
        parts = [p.replace("H=", "I=H=") for p in parts]
    return ", ".join(parts)


def _sweep_figure(df, var, fixed_cols, xlabel, name, fig_dir, colors) -> Optional[str]:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    groups = _sweep_groups(df, var, fixed_cols)
    if not groups:
        return None
    cells = list(groups)
    modes = [m for m in MODES if any(len(g[g["mode"] == m[0]]) for _, g in groups.values())]
    fig, axes = plt.subplots(len(modes), len(cells), figsize=(4.2 * len(cells) + 1.5, 3.6 * len(modes) + 0.8),
                             squeeze=False)
    handles = {}
    for i, (mode, mlabel) in enumerate(modes):
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            fixed, g = groups[cell]
            g = g[g["mode"] == mode]
            for b in _backends(g):
                gb = g[g["backend"] == b].sort_values(var)
                x = gb[var].astype(float).to_numpy()
                y = gb["value"].astype(float).to_numpy()
                lo = gb["q25"].astype(float).to_numpy()
                hi = gb["q75"].astype(float).to_numpy()
                (line,) = ax.plot(x, y, marker="o", ms=4, lw=1.6, color=colors[b], label=b)
                ax.fill_between(x, lo, hi, color=colors[b], alpha=0.2, lw=0)
                handles[b] = line
            ax.set_xscale("log")
            ax.set_yscale("log")
            xs = sorted(g[var].dropna().astype(float).unique())
            ax.xaxis.set_major_locator(FixedLocator(xs))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{int(v)}" for v in xs])
            readable_log_axes(ax, "y")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{CELL_TITLES.get(cell, cell)}, {mlabel}\n({_fixed_label(fixed)})", fontsize=10)
            if i == len(modes) - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel("tokens/s (B·T per second)")
    order = [b for b in BACKEND_ORDER if b in handles] + sorted(b for b in handles if b not in BACKEND_ORDER)
    fig.legend([handles[b] for b in order], order, loc="center right", title="backend", frameon=True)
    what = {"hidden_size": "hidden size", "batch": "batch size", "seq_len": "sequence length"}[var]
    dtypes = ", ".join(sorted(map(str, df["dtype"].dropna().unique())))
    fig.suptitle(f"Throughput vs {what} (median; band: q25–q75 of the repeats; {dtypes})", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / fig.get_figwidth(), 0.96))
    path = safe_files.save_figure(fig, fig_dir, name + ".png", dpi=110)
    plt.close(fig)
    return path


def _efficiency_figure(df, fig_dir, colors) -> Optional[str]:
    import matplotlib.pyplot as plt

    cases = _anchor_cases(df)
    if not cases:  # no anchors: the case measured by the most backends
        eff = _metric(df, "eff_gemm")
        if len(eff) == 0:
            return None
        cases = [eff.groupby("case")["backend"].nunique().sort_values(ascending=False).index[0]]
    cases = cases[:2]
    panels = [(c, m) for c in cases for m in MODES]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels) + 1.5, 4.4), squeeze=False)
    handles = {}
    for ax, (case, (mode, mlabel)) in zip(axes[0], panels):
        sub = df[df["case"] == case]
        bks = _backends(_metric(sub, "eff_gemm", mode))
        width = 0.8 / max(len(bks), 1)
        for k, b in enumerate(bks):
            vals, los, his, bad = [], [], [], []
            for eff in EFF_METRICS:
                e = _metric(sub[sub["backend"] == b], eff, mode)
                v = float(e.value.iloc[0]) if len(e) else np.nan
                vals.append(v)
                bad.append(bool(len(e)) and bool(_defect_of(e.iloc[0])))
                los.append(v - float(e.q25.iloc[0]) if len(e) and e.q25.iloc[0] == e.q25.iloc[0] else 0)
                his.append(float(e.q75.iloc[0]) - v if len(e) and e.q75.iloc[0] == e.q75.iloc[0] else 0)
            xs = np.arange(2) + (k - (len(bks) - 1) / 2) * width
            bars = ax.bar(xs, vals, width * 0.95, color=colors[b], label=b,
                          yerr=[np.maximum(los, 0), np.maximum(his, 0)], capsize=2, error_kw={"lw": 0.8})
            for bar, x, v, is_bad in zip(bars, xs, vals, bad):
                if is_bad:  # beat its ceiling: a measurement defect, drawn hatched and marked, not as a value
                    bar.set_hatch("///")
                    bar.set_alpha(0.45)
                    ax.text(x, v, "defect", ha="center", va="bottom", fontsize=7, color="darkred", rotation=90)
            handles[b] = bars
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["vs best square GEMM\n(eff_gemm)", "vs best of recurrent\nGEMMs, square\n(eff_recurrent)"])
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_ylabel("fraction of measured ceiling (GFLOP/s ratio)")
        ax.set_title(f"{case}\n{mlabel}", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    order = [b for b in BACKEND_ORDER if b in handles] + sorted(b for b in handles if b not in BACKEND_ORDER)
    fig.legend([handles[b] for b in order], order, loc="center right", title="backend")
    fig.suptitle("Efficiency: achieved model GFLOP/s / ceiling GFLOP/s (same framework, dtype, run)\n"
                 "error bars: q25–q75; hatched: ceiling beaten, a defect", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / fig.get_figwidth(), 0.88))
    path = safe_files.save_figure(fig, fig_dir, "efficiency.png", dpi=110)
    plt.close(fig)
    return path


# -- the section ---------------------------------------------------------------------------------------

def section(df, fig_dir: str, baseline: str = "torch", **opts: Any) -> str:
    """Markdown for the throughput rows in ``df``; figures written to ``fig_dir``."""
    import matplotlib
    matplotlib.use("Agg")

    out = [f"## {H_SECTION}", ""]
    ok = df[df["status"] == "ok"]
    if len(_metric(df, "tokens_per_s")) == 0:
        return "\n".join(out + ["_No successful throughput measurements in this run._"])
    backends = _backends(ok)
    order = _case_order(df)
    devices = ", ".join(sorted(map(str, df["device"].dropna().unique())))
    dtypes = ", ".join(sorted(map(str, df["dtype"].dropna().unique())))
    threads = sorted({int(t) for t in ok["threads"].dropna().unique()}) if "threads" in ok.columns else []
    base, note = _baseline(df, baseline)
    out.append(f"{len(order)} shapes × {len(backends)} backends ({', '.join(backends)}) on {devices}, {dtypes}"
               + (f", {', '.join(map(str, threads))} thread(s)" if threads else "") + ". Every variant was checked "
               "against the float64 NumPy reference (one forward and one vjp) before it was timed. Inference "
               "forward runs without gradient; training is forward + backward to all gradients.")
    if base is None:
        return "\n".join(out)
    out += [""] + _anchor_tables(df, backends, base)
    out += [""] + _tokens_tables(df, order, backends)
    out += [""] + _speedup_tables(df, order, backends, base, note)
    out += [""] + _efficiency_tables(df, backends)
    out += [""] + _compile_table(df, backends)
    from suites.throughput import scan_report
    scan = scan_report.section(df, fig_dir, _colors(backends))
    if scan:
        out += [""] + scan

    safe_files.safe_dir(fig_dir)
    colors = _colors(backends)
    figs = []
    for var, fixed, xlabel, name in SWEEPS:
        p = _sweep_figure(df, var, fixed, xlabel, name, fig_dir, colors)
        if p:
            figs.append((p, f"Throughput vs {xlabel}"))
    p = _efficiency_figure(df, fig_dir, colors)
    if p:
        figs.append((p, "Efficiency against the measured ceilings"))
    if figs:
        out += ["", "### Figures", ""]
        for p, alt in figs:
            out += [f"![{alt}]({os.path.basename(os.path.dirname(p))}/{os.path.basename(p)})", ""]
    return "\n".join(out).rstrip()


# -- findings ------------------------------------------------------------------------------------------

def _shape_label(df, case: str, dtypes: int) -> str:
    """``LSTM B64 T100 H256`` (``I`` when it differs from H, ``L`` above one layer, dtype when several)."""
    r = df[df["case"] == case].iloc[0]

    def num(v):
        try:
            return int(v)
        except (TypeError, ValueError):
            return v
    parts = [CELL_TITLES.get(r["cell"], str(r["cell"]))]
    if num(r.get("layers")) not in (None, 1) and r.get("layers") == r.get("layers"):
        parts.append(f"L{num(r['layers'])}")
    parts += [f"B{num(r['batch'])}", f"T{num(r['seq_len'])}"]
    if r.get("input_size") != r.get("hidden_size"):
        parts.append(f"I{num(r['input_size'])}")
    parts.append(f"H{num(r['hidden_size'])}")
    if dtypes > 1:
        parts.append(str(r["dtype"]))
    return " ".join(parts)


def _ranking(df, case: str, mode: str) -> List[Tuple[str, float]]:
    """(backend, median ms) of ``case`` in ``mode``, fastest first."""
    t = _metric(df[df["case"] == case], f"{mode}_ms", mode)
    best = t.groupby("backend")["value"].min().astype(float).sort_values()
    return [(b, float(v)) for b, v in best.items() if v == v and v > 0]


def _margin(rank: List[Tuple[str, float]]) -> str:
    (b1, v1), (b2, v2) = rank[0], rank[1]
    r = v2 / v1
    return f"{r:.2f}× ahead of {b2}" if r < 10 else f"{r:.3g}× ahead of {b2}"


def _headline_cases(df) -> List[Tuple[str, str]]:
    """(case, kind) of the shapes the findings name: anchors, then centre points (else the most-measured case)."""
    tags = (df.drop_duplicates("case").set_index("case")["tags"].fillna("").astype(str)
            if "tags" in df.columns else None)
    out: List[Tuple[str, str]] = [(c, "anchor") for c in _anchor_cases(df)]
    if tags is not None:
        out += [(c, "centre") for c in _case_order(df)
                if any(t in tags.get(c, "").split(",") for t in CENTRE_TAGS) and c not in dict(out)]
    if not out:
        t = _metric(df, "tokens_per_s")
        if len(t):
            out = [(t.groupby("case")["backend"].nunique().sort_values(ascending=False).index[0], "most measured")]
    return out


def findings(df, baseline: str = "torch", **opts: Any) -> List[str]:
    """Headline bullets of the throughput rows (see the module docstring); [] without successful timings."""
    if "suite" in df.columns:
        df = df[df["suite"] == "throughput"]
    if len(_metric(df, "tokens_per_s")) == 0:
        return []
    base, _ = _baseline(df, baseline)
    dtypes = df["dtype"].dropna().nunique()
    out: List[str] = []
    for case, kind in _headline_cases(df)[:6]:
        parts = []
        for mode, _label in MODES:
            rank = _ranking(df, case, mode)
            if len(rank) >= 2:
                parts.append(f"{mode} **{rank[0][0]}** {_ms(rank[0][1])} ms, {_margin(rank)}")
            elif rank:
                parts.append(f"{mode} {rank[0][0]} {_ms(rank[0][1])} ms (the only backend)")
        if not parts:
            continue
        target = H_ANCHORS if kind == "anchor" else (_h_speedup(base) if base else H_TOKENS)
        tags = df[df["case"] == case]["tags"].dropna().astype(str) if "tags" in df.columns else []
        tag = f" ({tags.iloc[0]})" if len(tags) and kind == "anchor" else (" (centre)" if kind == "centre" else "")
        out.append(f"- {link(_shape_label(df, case, dtypes), target)}{tag}: " + "; ".join(parts) + ".")
    wins = []
    for mode, _label in MODES:
        ranks = [_ranking(df, c, mode) for c in _case_order(df)]
        ranks = [r for r in ranks if len(r) >= 2]
        if not ranks:
            continue
        count: Dict[str, int] = {}
        for r in ranks:
            count[r[0][0]] = count.get(r[0][0], 0) + 1
        order = sorted(count.items(), key=lambda kv: -kv[1])
        wins.append(f"{mode}: " + ", ".join(f"**{b}** {k}" for b, k in order[:1]) +
                    "".join(f", {b} {k}" for b, k in order[1:]) + f" of {len(ranks)} shapes")
    if wins:
        out.append(f"- Fastest backend over all {link('shapes', H_TOKENS)} (with two or more backends): "
                   + "; ".join(wins) + ".")
    out += _efficiency_findings(df)
    from suites.throughput import scan_report
    out += scan_report.findings(df)
    return out


def _efficiency_findings(df) -> List[str]:
    eff = df[df["metric"].isin(EFF_METRICS) & (df["status"] == "ok") & df["value"].notna()]
    if not len(eff):
        return []
    bad = _defects(eff)
    good = eff[~bad]
    out = []
    if len(good):
        dtypes = df["dtype"].dropna().nunique()
        meds = [f"{m} {good[good['metric'] == m]['value'].astype(float).median():.2f}" for m in EFF_METRICS
                if (good["metric"] == m).any()]
        g = good[good["metric"] == "eff_gemm"] if (good["metric"] == "eff_gemm").any() else good
        top = g.loc[g["value"].astype(float).idxmax()]
        line = (f"- {link('Efficiency', H_EFFICIENCY)} (fraction of the measured GEMM ceilings): median "
                + ", ".join(meds) + f"; best {top['metric']} {float(top['value']):.2f} ({top['backend']}, "
                f"{_shape_label(df, top['case'], dtypes)}, {top.get('mode', '')})")
        above = int((good["value"].astype(float) > 1).sum())
        if above:
            line += (f"; {above} value(s) above 1 carry no defect flag"
                     + ("" if DEFECT_COL in df.columns else f" (this run records no `{DEFECT_COL}`)"))
        out.append(line + ".")
    if bad.any():
        d = eff[bad]
        dtypes = df["dtype"].dropna().nunique()
        shown = [f"{r['backend']} {_shape_label(df, r['case'], dtypes)} {r.get('mode', '')} {r['metric']} "
                 f"{_eff_text(float(r['value']), _defect_of(r))}" for _, r in d.head(4).iterrows()]
        more = f", and {len(d) - 4} more" if len(d) > 4 else ""
        out.append(f"- ⚠ **{len(d)} efficiency defect(s)**: the measured ceiling was beaten (a measurement defect, "
                   f"not an efficiency; see {link('the list', H_DEFECTS)}): " + "; ".join(shown) + more + ".")
    return out
