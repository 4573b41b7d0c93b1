"""The memory suite's report section: figures and tables from its rows (never re-runs anything).

:func:`section` draws

- ``memory_vs_T.png``: peak bytes vs sequence length per algorithm (log-log), theory dashed;
- ``memory_vs_H.png``: peak bytes vs hidden size, with the fitted slopes in the legend;
- ``time_vs_H.png``: time per step vs hidden size (log-log), with fitted slopes;
- ``crossover_T.png``: the length T* where BPTT's peak passes RTRL's, vs H (measured and theory);

and tables: fitted exponents against the issue's targets, measured/theory ratios, RTRL's GEMM efficiency,
truncated BPTT's gradient bias, and for the gated linear cells (minGRU, minLSTM, RG-LRU) their RTRL/BPTT time
per step (per-step and block RTRL, with the bytes and FLOPs each moves per step) and their memory exponents
beside the classic cells' (RTRL vs T; vs H at a fixed input size I, and at I = H).

:func:`findings`: the headline bullets (where RTRL's memory passes BPTT's, measured against theory; fitted
exponents against their targets; measured/theoretical peaks), each linking to its table.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional

import numpy as np

from harness.measure import safe_files
from suites.report_util import link, readable_log_axes

#: Headings of the section (the findings link to them).
H_SECTION = "Memory: BPTT vs RTRL vs truncated BPTT"
H_EXPONENTS = "Fitted exponents (log-log slopes) against the targets"
H_CROSSOVER = "Crossover length T* (BPTT's peak passes RTRL's)"
H_RATIO = "Measured / theoretical peak memory"
H_GATED = "Gated linear cells: RTRL against BPTT"
CELL_TITLES = {"rnn_tanh": "tanh RNN", "rnn_relu": "ReLU RNN", "lstm": "LSTM", "gru": "GRU", "mingru": "minGRU",
               "minlstm": "minLSTM", "rglru": "RG-LRU"}
GATED_CELLS = ("mingru", "minlstm", "rglru")
EXPONENT_WHAT = {"exponent_mem_T": ("memory", "T"), "exponent_mem_H": ("memory", "H"),
                 "exponent_time_H": ("time", "H")}
ALG_COLORS = {"bptt": "tab:blue", "rtrl": "tab:red", "tbptt": "tab:green", "tbptt-chunked": "tab:olive"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, fig_dir: str, name: str) -> str:
    safe_files.save_figure(fig, fig_dir, name, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return f"figures/{name}"


def _col(df, name: str):
    return df[name] if name in df.columns else None


def _alg_label(r) -> str:
    alg = r.get("algorithm")
    if alg == "tbptt":
        k = r.get("truncation")
        k = int(k) if k is not None and k == k else k
        if r.get("impl") == "chunked":
            return f"tbptt(k={k}) chunked"
        return f"tbptt(k={k})" + (" (numpy_rnn: stores all T)" if r.get("backend") == "numpy" else "")
    return str(alg)


def _alg_color(r) -> str:
    alg = r.get("algorithm")
    if alg == "tbptt" and r.get("impl") == "chunked":
        return ALG_COLORS["tbptt-chunked"]
    return ALG_COLORS.get(alg, "tab:gray")


def _ok(df, metric: str):
    d = df[(df["metric"] == metric) & (df["status"] == "ok") & df["value"].notna()]
    return d


def _fixed(r) -> Optional[int]:
    """The fixed input size of a fixed-I sweep's row (``fixed_input``), None for I = H."""
    v = r.get("fixed_input")
    try:
        return None if v is None or v != v else int(v)
    except (TypeError, ValueError):
        return None


def _with_fixed(d):
    """``d`` with a column ``_I``: the fixed input size, 0 for the I = H sweeps (a key pandas can group by)."""
    col = d["fixed_input"] if "fixed_input" in d.columns else None
    return d.assign(_I=0 if col is None else col.fillna(0).astype(int))


def _fmt(v, spec=".3g") -> str:
    try:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "–"
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def _panels(d, by=("cell", "batch")):
    keys = sorted({tuple(r[k] for k in by) for _, r in d.iterrows()}, key=str)
    return keys


def _fig_vs(df, fig_dir: str, sweep: str, x: str, metric: str, name: str, ylab: str, title: str,
            theory: bool) -> Optional[str]:
    d = _ok(df, metric)
    if "sweep" not in d.columns:
        return None
    d = _with_fixed(d[d["sweep"] == sweep])
    if sweep == "H" and metric == "peak_bytes" and len(d):
        # one length per algorithm: the shortest (RTRL is measured there; BPTT's second length feeds T*)
        d = d[d["seq_len"] == d.groupby(["backend", "cell", "batch", "algorithm", "_I"])["seq_len"].transform("min")]
    if d.empty:
        return None
    plt = _plt()
    panels = _panels(d, by=("cell", "batch", "_I"))  # a fixed-I sweep is a panel of its own
    n = len(panels)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax, (cell, batch, fixed) in zip(axes.flat, panels):
        sub = d[(d["cell"] == cell) & (d["batch"] == batch) & (d["_I"] == fixed)]
        for (backend, alg, k, impl), g in sub.groupby(["backend", "algorithm", sub["truncation"].fillna(-1),
                                                       sub["impl"].fillna("backend")]):
            g = g.sort_values(x)
            r0 = g.iloc[0]
            ls = "-" if backend == "numpy" else ":"
            xs, ys = g[x].to_numpy(float), g["value"].to_numpy(float)
            slope = ""
            if len(g) >= 2:
                sel = xs >= 32 if sweep == "H" else np.ones_like(xs, bool)
                if sel.sum() >= 2:
                    slope = f", slope {np.polyfit(np.log(xs[sel]), np.log(ys[sel]), 1)[0]:.2f}"
            label = f"{backend} {_alg_label(r0)}{slope}"
            ax.plot(xs, ys, ls, marker="o", ms=3, color=_alg_color(r0), label=label)
            if theory and "theory_bytes" in g.columns and backend == "numpy":
                th = g["theory_bytes"].to_numpy(float)
                if np.isfinite(th).any():
                    ax.plot(xs, th, "--", color=_alg_color(r0), alpha=0.6, lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (steps)" if x == "seq_len" else "hidden size H (units)")
        ax.set_ylabel(ylab)
        held = f"H={int(sub['hidden_size'].iloc[0])}" if x == "seq_len" else f"T={int(sub['seq_len'].min())}"
        held += f", I={fixed}" if fixed else ""
        ax.set_title(f"{cell}, batch {batch}, {held}", fontsize=10)
        readable_log_axes(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title + ("  (dashed: theory, NumPy)" if theory else ""), fontsize=11)
    fig.tight_layout()
    return _save(fig, fig_dir, name)


def _fig_crossover(df, fig_dir: str) -> Optional[str]:
    d = _ok(df, "crossover_T")
    if d.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for (backend, cell, batch), g in d.groupby(["backend", "cell", "batch"]):
        g = g.sort_values("hidden_size")
        line, = ax.plot(g["hidden_size"], g["value"], "o-", ms=4, label=f"{backend} {cell} B={batch} measured")
        if "theory_T" in g.columns:
            ax.plot(g["hidden_size"], g["theory_T"].astype(float), "--", color=line.get_color(), alpha=0.6,
                    label=f"{backend} {cell} B={batch} theory")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hidden size H (units)")
    ax.set_ylabel("crossover length T* (steps)")
    ax.set_title("Length beyond which BPTT stores more than RTRL")
    readable_log_axes(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, fig_dir, "memory_crossover_T.png")


def _exponent_table(df) -> List[str]:
    d = df[df["metric"].isin(["exponent_mem_T", "exponent_mem_H", "exponent_time_H"])]
    if d.empty:
        return []
    lines = ["| backend | cell | batch | I | algorithm | exponent | value | theory | fit range | target | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in d.sort_values(["metric", "backend", "cell", "batch"]).iterrows():
        lo, hi = r.get("target_lo"), r.get("target_hi")
        lo = None if lo is None or lo != lo else lo
        hi = None if hi is None or hi != hi else hi
        v = r["value"]
        if lo is None and hi is None:
            target, verdict = "–", ""
        else:
            target = f"[{_fmt(lo, '.2g') if lo is not None else '−∞'}, {_fmt(hi, '.2g') if hi is not None else '∞'}]"
            ok = v is not None and v == v and (lo is None or v >= lo) and (hi is None or v <= hi)
            verdict = "meets" if ok else "**misses**"
        fr = r.get("fit_range")
        fr = f"{fr[0]}–{fr[1]}" if isinstance(fr, (list, tuple)) and len(fr) == 2 else "–"
        fixed = _fixed(r)
        lines.append(f"| {r['backend']} | {r['cell']} | {r['batch']} | {'= H' if fixed is None else fixed} | "
                     f"{_alg_label(r)} | {r['metric']} | {_fmt(v, '.2f')} | {_fmt(r.get('theory_exponent'), '.2f')} | "
                     f"{fr} | {target} | {verdict} |")
    return lines


def _ratio_table(df) -> List[str]:
    d = _ok(df, "peak_bytes")
    if d.empty or "ratio" not in d.columns:
        return []
    lines = ["| backend | cell | algorithm | batch | H | T | measured | theory | ratio | method |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    d = d.sort_values(["backend", "cell", "algorithm", "batch", "hidden_size", "seq_len"])
    for _, r in d.iterrows():
        method = str(r.get("method")) + (" (estimate)" if r.get("estimate") is True else "")
        lines.append(f"| {r['backend']} | {r['cell']} | {_alg_label(r)} | {r['batch']} | {r['hidden_size']} | "
                     f"{r['seq_len']} | {_fmt(r['value'] / 2**20, '.3g')} MiB | "
                     f"{_fmt((r.get('theory_bytes') or float('nan')) / 2**20, '.3g')} MiB | "
                     f"{_fmt(r.get('ratio'), '.2f')} | {method} |")
    return lines


def _n(v) -> str:
    """An integer-valued column as an integer (pandas makes a column with gaps float)."""
    try:
        f = float(v)
        return str(int(f)) if f == f and f == int(f) else _fmt(f)
    except (TypeError, ValueError, OverflowError):
        return str(v)


def _range(v) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return f"{_fmt(v[0])}–{_fmt(v[1])}"
    return "–"


def _gated_ratio_table(df) -> List[str]:
    """The gated cells' RTRL/BPTT time-ratio rows: one line per RTRL form."""
    d = _ok(df, "rtrl_bptt_time_ratio")
    if d.empty:
        return []
    lines = ["| backend | cell | B | H | I | T | RTRL form | RTRL / BPTT time per step, median [range] | "
             "RTRL µs/step [range] | BPTT µs/step [range] | model bytes/step RTRL / BPTT (ratio) | "
             "implied GB/s RTRL / BPTT | implied GFLOP/s RTRL / BPTT | rounds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"step": 0, "block": 1}
    d = d.assign(_o=d["form"].map(lambda f: order.get(f, 2)) if "form" in d.columns else 0)
    for _, r in d.sort_values(["backend", "cell", "batch", "hidden_size", "_o"]).iterrows():
        smp = r.get("samples")
        rng = f"[{_fmt(min(smp), '.2f')}–{_fmt(max(smp), '.2f')}]" if isinstance(smp, (list, tuple)) and smp else ""
        form = f"{r.get('form')} (chunk {_n(r.get('chunk'))})"
        lines.append(
            f"| {r['backend']} | {CELL_TITLES.get(r['cell'], r['cell'])} | {_n(r['batch'])} | {_n(r['hidden_size'])} | "
            f"{_n(r['input_size'])} | {_n(r['seq_len'])} | {form} | **{_fmt(r['value'], '.2f')}×** {rng} | "
            f"{_fmt(r.get('rtrl_us_per_step'))} [{_range(r.get('rtrl_us_per_step_range'))}] | "
            f"{_fmt(r.get('bptt_us_per_step'))} [{_range(r.get('bptt_us_per_step_range'))}] | "
            f"{_fmt(r.get('model_bytes_per_step'))} / {_fmt(r.get('bptt_model_bytes_per_step'))} "
            f"({_fmt(r.get('model_bytes_ratio'))}×) | {_fmt(r.get('rtrl_model_gbps'))} / "
            f"{_fmt(r.get('bptt_model_gbps'))} | {_fmt(r.get('rtrl_model_gflops'))} / "
            f"{_fmt(r.get('bptt_model_gflops'))} | {_fmt(r.get('rounds'), '.0f')} |")
    return lines


def _exp_cell(g, with_fixed: bool) -> str:
    """'value (B=…, H=… | I=…, H a–b)' for the exponent rows ``g`` of one cell, '; '-joined."""
    parts = []
    for _, r in g.sort_values(["batch"]).iterrows():
        fr = r.get("fit_range")
        span = f"{fr[0]}–{fr[1]}" if isinstance(fr, (list, tuple)) and len(fr) == 2 else "–"
        if r["metric"] == "exponent_mem_T":
            where = f"B={_n(r['batch'])}, H={_n(r['hidden_size'])}, T {span}"
        else:
            where = (f"I={_fixed(r)}, " if with_fixed else "") + f"B={_n(r['batch'])}, H {span}"
        th = r.get("theory_exponent")
        th = f", theory {_fmt(th, '.2f')}" if th is not None and th == th else ""
        parts.append(f"{_fmt(r['value'], '.2f')} ({where}{th})")
    return "; ".join(parts) if parts else "–"


def _gated_exponent_table(df) -> List[str]:
    """RTRL's memory exponents of every cell that has them, the gated cells first: vs T, vs H at a fixed I, vs H at
    I = H (and BPTT's vs T) — the gated cells' O(B·P) beside the classic cells' O(B·H·P)."""
    d = df[df["metric"].isin(["exponent_mem_T", "exponent_mem_H"]) & df["value"].notna()]
    if d.empty or not d["cell"].isin(GATED_CELLS).any():
        return []
    d = _with_fixed(d)
    lines = ["| backend | cell | RTRL peak ∝ T^ | BPTT peak ∝ T^ | RTRL peak ∝ H^ at fixed I | "
             "RTRL peak ∝ H^ at I = H |", "|---|---|---|---|---|---|"]
    cells = sorted(set(d["cell"]), key=lambda c: (c not in GATED_CELLS, c))
    for backend in sorted(set(d["backend"])):
        for cell in cells:
            g = d[(d["backend"] == backend) & (d["cell"] == cell)]
            if g.empty:
                continue
            rt, bp = g[g["algorithm"] == "rtrl"], g[g["algorithm"] == "bptt"]
            lines.append(
                f"| {backend} | {CELL_TITLES.get(cell, cell)} | "
                f"{_exp_cell(rt[rt['metric'] == 'exponent_mem_T'], False)} | "
                f"{_exp_cell(bp[bp['metric'] == 'exponent_mem_T'], False)} | "
                f"{_exp_cell(rt[(rt['metric'] == 'exponent_mem_H') & (rt['_I'] > 0)], True)} | "
                f"{_exp_cell(rt[(rt['metric'] == 'exponent_mem_H') & (rt['_I'] == 0)], False)} |")
    return lines


def _gated_section(df) -> List[str]:
    ratio = _gated_ratio_table(df)
    ex = _gated_exponent_table(df)
    if not ratio and not ex:
        return []
    out = [f"### {H_GATED}", "",
           "The gated linear cells' influence is per unit: RTRL holds B·P numbers (P = G·H·(I+1), the RG-LRU's Λ "
           "besides) and touches each a fixed number of times per step, where a classic cell's holds B·H·P. "
           "Per-step RTRL (chunk 1) makes 11 passes over the influence every step, so it is bound by memory "
           "bandwidth; block RTRL (chunk = RTRL_BLOCK) makes them once per block and runs the block's outer products "
           "as GEMMs, about BPTT's FLOPs; BPTT moves O(B·G·H) bytes per step and is bound by its three GEMMs over all "
           "T (dx included; RTRL computes the parameter gradient only). The model's bytes and FLOPs per step and the "
           "rates they imply at the measured times stand beside each ratio (the suite's module docstring gives the "
           "model).", ""]
    if ratio:
        out += ratio + [""]
    if ex:
        out += ["RTRL's memory exponents of the gated cells beside the classic cells' (fitted over the sweep's "
                "points; theory: the same fit over the theoretical bytes):", ""] + ex + [""]
    return out


def section(df, fig_dir: str, **opts: Any) -> str:
    """Markdown for the memory suite (figures written to ``fig_dir``)."""
    if "suite" in df.columns:
        df = df[df["suite"] == "memory"]
    out = [f"## {H_SECTION}", ""]
    if df.empty:
        return "\n".join(out + ["_No memory rows._"])
    out.append("Peak memory of one gradient computation, each measured in a fresh process (NumPy: tracemalloc; "
               "torch CPU: the process high-water mark; JAX CPU: XLA's compiled memory analysis, an estimate), "
               "beside the theoretical bytes (BPTT: stored activations ∝ B·T·H; RTRL: influence matrices "
               "B·H·P, ×2 for the LSTM; tBPTT chunked ∝ B·k·H). NumPy RTRL is measured without dx (which "
               "would be one BPTT pass). NumPy's `tbptt` through the backend (numpy_rnn) stores the whole "
               "sequence — it only cuts the adjoint — so it is measured as it is, beside the chunked one.")
    out.append("")
    figs = [
        _fig_vs(df, fig_dir, "T", "seq_len", "peak_bytes", "memory_vs_T.png", "peak memory (bytes)",
                "Peak memory vs sequence length", True),
        _fig_vs(df, fig_dir, "H", "hidden_size", "peak_bytes", "memory_vs_H.png", "peak memory (bytes)",
                "Peak memory vs hidden size (slopes fitted at H ≥ 32)", True),
        _fig_vs(df, fig_dir, "H", "hidden_size", "time_per_step_us", "time_vs_H.png", "time per step (µs)",
                "Gradient time per step vs hidden size (slopes at H ≥ 32)", False),
        _fig_crossover(df, fig_dir),
    ]
    for f in figs:
        if f:
            out += [f"![{os.path.basename(f)}]({f})", ""]
    ex = _exponent_table(df)
    if ex:
        out += [f"### {H_EXPONENTS}", ""] + ex + [""]
    eff = _ok(df, "rtrl_gemm_efficiency")
    if not eff.empty:
        out += ["### NumPy RTRL: GEMM efficiency", "",
                "| cell | batch | H | achieved GFLOP/s | ceiling GFLOP/s | efficiency |", "|---|---|---|---|---|---|"]
        for _, r in eff.sort_values(["cell", "batch", "hidden_size"]).iterrows():
            out.append(f"| {r['cell']} | {r['batch']} | {r['hidden_size']} | {_fmt(r.get('achieved_gflops'))} | "
                       f"{_fmt(r.get('ceiling_gflops'))} | {_fmt(100 * r['value'], '.0f')} % |")
        out.append("")
    cr = _ok(df, "crossover_T")
    if not cr.empty:
        out += [f"### {H_CROSSOVER}", "",
                "| backend | cell | batch | I | H | T* measured | T* theory | extrapolated |",
                "|---|---|---|---|---|---|---|---|"]
        for _, r in cr.sort_values(["backend", "cell", "batch", "hidden_size"]).iterrows():
            fixed = _fixed(r)
            out.append(f"| {r['backend']} | {r['cell']} | {r['batch']} | {'= H' if fixed is None else fixed} | "
                       f"{_n(r['hidden_size'])} | {_fmt(r['value'], '.0f')} | "
                       f"{_fmt(r.get('theory_T'), '.0f')} | {r.get('extrapolated')} |")
        out.append("")
    tb = _ok(df, "tbptt_grad_rel_diff")
    if not tb.empty:
        out += ["### Truncated BPTT: distance of the gradient from BPTT's", "",
                "| cell | batch | T | k | ‖g_tbptt − g_bptt‖ / ‖g_bptt‖ |", "|---|---|---|---|---|"]
        for _, r in tb.sort_values(["cell", "batch", "seq_len"]).iterrows():
            out.append(f"| {r['cell']} | {r['batch']} | {r['seq_len']} | {r.get('truncation')} | {_fmt(r['value'])} |")
        out.append("")
    out += _gated_section(df)
    rt = _ratio_table(df)
    if rt:
        out += [f"### {H_RATIO}", ""] + rt + [""]
    return "\n".join(out)


# -- findings ------------------------------------------------------------------------------------------

def _target(r):
    lo, hi = r.get("target_lo"), r.get("target_hi")
    lo = None if lo is None or lo != lo else float(lo)
    hi = None if hi is None or hi != hi else float(hi)
    return lo, hi


def _target_text(lo, hi) -> str:
    return f"[{_fmt(lo, '.2g') if lo is not None else '−∞'}, {_fmt(hi, '.2g') if hi is not None else '∞'}]"


def _int(v) -> str:
    try:
        return f"{float(v):,.0f}".replace(",", " ")
    except (TypeError, ValueError):
        return str(v)


def findings(df, **opts: Any) -> List[str]:
    """Headline bullets of the memory rows (see the module docstring); [] without memory rows."""
    if "suite" in df.columns:
        df = df[df["suite"] == "memory"]
    if df.empty:
        return []
    out: List[str] = []
    cr = _ok(df, "crossover_T")
    if len(cr) and "hidden_size" in cr.columns:
        groups = []
        ratios = []
        for (backend, cell, batch, fixed), g in _with_fixed(cr).groupby(["backend", "cell", "batch", "_I"], sort=False):
            g = g.sort_values("hidden_size")
            a, b = g.iloc[0], g.iloc[-1]
            span = (f"{_int(a['value'])} (H={int(a['hidden_size'])})" if len(g) == 1 else
                    f"{_int(a['value'])} (H={int(a['hidden_size'])}) → {_int(b['value'])} (H={int(b['hidden_size'])})")
            held = f" I={fixed}" if fixed else ""
            groups.append(f"{backend} {CELL_TITLES.get(cell, cell)} B={batch}{held}: {span}")
            if "theory_T" in g.columns:
                th = g["theory_T"].astype(float)
                ratios += [float(v) / float(t) for v, t in zip(g["value"], th) if t == t and t > 0]
        extra = ""
        if ratios:
            extra = f"; measured T* / theory {min(ratios):.2f}–{max(ratios):.2f}"
        if "extrapolated" in cr.columns and cr["extrapolated"].astype(str).eq("True").all():
            extra += " (extrapolated from the measured lengths)"
        out.append(f"- {link('Crossover', H_CROSSOVER)}: RTRL stores more than BPTT up to T* steps, BPTT more "
                   "beyond — " + "; ".join(groups) + extra + ".")
    ex = df[df["metric"].isin(list(EXPONENT_WHAT)) & df["value"].notna()]
    if len(ex):
        judged = []
        for _, r in ex.iterrows():
            lo, hi = _target(r)
            if lo is None and hi is None:
                continue
            v = float(r["value"])
            judged.append((r, v, lo, hi, (lo is None or v >= lo) and (hi is None or v <= hi)))
        if judged:
            kinds: dict = {}
            for r, v, lo, hi, ok in judged:
                key = (str(r.get("algorithm")), r["metric"], lo, hi)
                kinds.setdefault(key, []).append(v)
            desc = []
            for (alg, metric, lo, hi), vs in kinds.items():
                what, x = EXPONENT_WHAT[metric]
                lo_v, hi_v = (0.0 if abs(v) < 0.005 else v for v in (min(vs), max(vs)))
                rng = f"{lo_v:.2f}" if abs(hi_v - lo_v) < 0.005 else f"{lo_v:.2f}–{hi_v:.2f}"
                desc.append(f"{alg.upper()} {what} ∝ {x}^{rng} (target {_target_text(lo, hi)})")
            miss = [(r, v, lo, hi) for r, v, lo, hi, ok in judged if not ok]
            n_ok = len(judged) - len(miss)
            head = (f"**all {len(judged)} fitted exponents with a target meet it**" if not miss else
                    f"**{len(miss)} of {len(judged)} fitted exponents miss their target**")
            line = f"- {link('Exponents', H_EXPONENTS)} against theory: {head}: " + "; ".join(desc)
            if miss:
                line += " — misses: " + "; ".join(
                    f"{r['backend']} {CELL_TITLES.get(r['cell'], r['cell'])} B={r['batch']} {_alg_label(r)} "
                    f"{r['metric']} {v:.2f} not in {_target_text(lo, hi)}" for r, v, lo, hi in miss[:4])
                if len(miss) > 4:
                    line += f", and {len(miss) - 4} more"
            out.append(line + ".")
    gl = _gated_finding(df)
    if gl:
        out.append(gl)
    pk = _ok(df, "peak_bytes")
    if len(pk) and "ratio" in pk.columns:
        pk = pk.assign(_r=pk["ratio"].astype(float))
        pk = pk[np.isfinite(pk["_r"]) & (pk["_r"] > 0)]
        meth = pk["method"].fillna("?") if "method" in pk.columns else pk["backend"].map(lambda _: "?")
        groups = []
        for (backend, method), g in pk.groupby([pk["backend"], meth], sort=False):
            r = g["_r"]
            est = ", estimate" if "estimate" in g.columns and (g["estimate"] == True).all() else ""  # noqa: E712
            groups.append((len(g), f"{backend} ({method}{est}) {r.median():.2f} [{r.min():.2f}–{r.max():.2f}]"))
        if groups:
            groups.sort(key=lambda t: -t[0])
            out.append(f"- {link('Peak memory', H_RATIO)} measured / theory, median [min–max]: "
                       + "; ".join(t for _, t in groups[:5]) + ".")
    return out


def _gated_finding(df) -> Optional[str]:
    """One bullet: the gated cells' RTRL/BPTT time ratios and RTRL memory exponents (fixed I; the LSTM's beside)."""
    rt = _ok(df, "rtrl_bptt_time_ratio")
    ex = df[df["metric"].isin(["exponent_mem_H", "exponent_mem_T"]) & df["value"].notna()]
    ex = _with_fixed(ex[ex["algorithm"] == "rtrl"]) if len(ex) and "algorithm" in ex.columns else ex.iloc[0:0]
    parts = []
    for (backend, cell, batch, H), g in rt.groupby(["backend", "cell", "batch", "hidden_size"], sort=False):
        forms = []
        for _, r in g.iterrows():
            smp = r.get("samples")
            rng = (f" [{_fmt(min(smp), '.2f')}–{_fmt(max(smp), '.2f')}]"
                   if isinstance(smp, (list, tuple)) and smp else "")
            forms.append(f"{r.get('form')} {_fmt(r['value'], '.2f')}×{rng}")
        parts.append(f"{CELL_TITLES.get(cell, cell)} H={_n(H)}, B={_n(batch)}: RTRL/BPTT time per step "
                     + ", ".join(forms))
    if len(ex):
        for (cell, fixed), g in ex[ex["metric"] == "exponent_mem_H"].groupby(["cell", "_I"], sort=False):
            if fixed:
                parts.append(f"{CELL_TITLES.get(cell, cell)} RTRL peak ∝ H^{_fmt(g['value'].iloc[0], '.2f')} "
                             f"at I={fixed}")
        gated_t = ex[(ex["metric"] == "exponent_mem_T") & ex["cell"].isin(GATED_CELLS)]
        for cell, g in gated_t.groupby("cell", sort=False):
            parts.append(f"{CELL_TITLES.get(cell, cell)} RTRL peak ∝ T^{_fmt(g['value'].iloc[0], '.2f')}")
    if not parts:
        return None
    return f"- {link('Gated linear cells', H_GATED)}: " + "; ".join(parts) + "."
