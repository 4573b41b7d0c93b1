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
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from harness.measure.format import md_table, si

MODES = (("fwd", "inference forward"), ("train", "training (forward + backward)"))
CELL_TITLES = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN (tanh)", "rnn_relu": "RNN (ReLU)"}
CELL_ORDER = ("lstm", "gru", "rnn_tanh", "rnn_relu")
BACKEND_ORDER = ("numpy", "torch", "torch-native", "torch-cell", "torch-compile", "jax", "jax-unroll8")
#: The factor each sweep figure varies, the columns held fixed, axis label and file name.
SWEEPS = (("hidden_size", ("batch", "seq_len"), "hidden size H (= input size I)", "throughput_vs_hidden"),
          ("batch", ("hidden_size", "input_size", "seq_len"), "batch size B", "throughput_vs_batch"),
          ("seq_len", ("hidden_size", "input_size", "batch"), "sequence length T (steps)", "throughput_vs_seq_len"))
ANCHOR_TAGS = ("reference", "fastrnns")


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
    out = ["### Tokens per second", "",
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
    out = ["### Speed-up relative to " + base, "",
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
                for eff in ("eff_gemm", "eff_recurrent"):
                    e = _metric(rb, eff, mode)
                    rec[f"{mode} {eff}"] = f"{e.value.iloc[0]:.2f}" if len(e) else "-"
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
        out = ["### Anchor cases", "",
               f"Median time per call in ms with [q25–q75]; `time / {base}` above 1 means slower than {base}; "
               "eff_* are fractions of the measured ceilings (see below)."] + out
    return out


def _efficiency_tables(df, backends) -> List[str]:
    import pandas as pd
    out = ["### Efficiency against measured GEMM ceilings", "",
           "`eff_gemm` = achieved model GFLOP/s (forward GEMM FLOPs 2·B·(I+H)·G·H·T·L, training 3×) divided by "
           "the GFLOP/s of a large square GEMM in the same framework, dtype and run; `eff_recurrent` = the same "
           "divided by the GFLOP/s of the hoisted input GEMM plus T per-step (B,H)x(H,G·H) GEMMs, timed as one "
           "call (the best a step loop can do if elementwise work were free). Median [min–max] over cases."]
    rows = []
    for b in backends:
        for mode, label in MODES:
            rec: Dict[str, Any] = {"backend": b, "mode": mode}
            any_ = False
            for eff in ("eff_gemm", "eff_recurrent", "gflops"):
                e = _metric(df[df["backend"] == b], eff, mode)
                if len(e):
                    any_ = True
                    v = e["value"].astype(float)
                    rec[eff if eff != "gflops" else "GFLOP/s"] = (f"{v.median():.3g} [{v.min():.3g}–{v.max():.3g}]")
                else:
                    rec[eff] = "-"
            if any_:
                rows.append(rec)
    if not rows:
        return []
    out += ["", md_table(pd.DataFrame(rows))]
    ceil = _metric(df, "ceiling_gflops")
    if len(ceil) and "kind" in ceil.columns:
        fw = "framework" if "framework" in ceil.columns else "backend"
        shape = "gemm_shape" if "gemm_shape" in ceil.columns else "case"
        c = ceil.drop_duplicates([fw, "kind", shape, "dtype"]).copy()
        c["GFLOP/s [q25–q75]"] = [_spread_cell(v, lo, hi) for v, lo, hi in zip(c["value"], c["q25"], c["q75"])]
        sq = c[c["kind"] == "gemm_square"][[fw, "device", "dtype", shape, "GFLOP/s [q25–q75]"]]
        out += ["", "**Ceilings measured in this run** (square GEMM; GFLOP/s):", "", md_table(sq)]
        rec = c[c["kind"] != "gemm_square"]
        if len(rec):
            t = rec.pivot_table(index=["kind", shape], columns=fw, values="value", aggfunc="median")
            t = t.reset_index().rename(columns={shape: "shape"})
            for col in t.columns[2:]:
                t[col] = [si(v) if v == v else "-" for v in t[col]]
            t.columns.name = None
            out += ["", "Input-GEMM shapes are (T·B, I, G·H); recurrent shapes are (T, B, I, H, G·H) "
                        "(input GEMM + T step GEMMs, one call). GFLOP/s per framework:", "", md_table(t)]
    return out


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
    path = os.path.join(fig_dir, name + ".png")
    fig.savefig(path, dpi=110)
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
            vals, los, his = [], [], []
            for eff in ("eff_gemm", "eff_recurrent"):
                e = _metric(sub[sub["backend"] == b], eff, mode)
                v = float(e.value.iloc[0]) if len(e) else np.nan
                vals.append(v)
                los.append(v - float(e.q25.iloc[0]) if len(e) and e.q25.iloc[0] == e.q25.iloc[0] else 0)
                his.append(float(e.q75.iloc[0]) - v if len(e) and e.q75.iloc[0] == e.q75.iloc[0] else 0)
            xs = np.arange(2) + (k - (len(bks) - 1) / 2) * width
            bars = ax.bar(xs, vals, width * 0.95, color=colors[b], label=b,
                          yerr=[np.maximum(los, 0), np.maximum(his, 0)], capsize=2, error_kw={"lw": 0.8})
            handles[b] = bars
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["vs square GEMM\n(eff_gemm)", "vs input + T step GEMMs\n(eff_recurrent)"])
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_ylabel("fraction of measured ceiling (GFLOP/s ratio)")
        ax.set_title(f"{case}\n{mlabel}", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    order = [b for b in BACKEND_ORDER if b in handles] + sorted(b for b in handles if b not in BACKEND_ORDER)
    fig.legend([handles[b] for b in order], order, loc="center right", title="backend")
    fig.suptitle("Efficiency: achieved model GFLOP/s / ceiling GFLOP/s (same framework, dtype, run; "
                 "error bars: q25–q75)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / fig.get_figwidth(), 0.93))
    path = os.path.join(fig_dir, "efficiency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the section ---------------------------------------------------------------------------------------

def section(df, fig_dir: str, baseline: str = "torch", **opts: Any) -> str:
    """Markdown for the throughput rows in ``df``; figures written to ``fig_dir``."""
    import matplotlib
    matplotlib.use("Agg")

    out = ["## Throughput", ""]
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

    os.makedirs(fig_dir, exist_ok=True)
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
