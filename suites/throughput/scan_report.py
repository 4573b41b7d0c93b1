"""The gated linear cells' part of the throughput section: sequential forms against parallel scans across T.

The scan sweep's cases carry the tag ``scan-T`` and, in their rows, ``scan_form`` (``sequential``,
``hillis-steele``, ``odd-even``), ``scan_framework`` (whose code: numpy, torch, jax) and the cost model of one
forward's recurrence (``scan_flops``, ``scan_bytes``, ``scan_depth``; :mod:`harness.core.scan_model`) beside
the gates' ``gates_gemm_flops``.

:func:`crossovers` finds, per (cell, H, mode) and parallel backend, the sequence length T from which the scan is
faster (by median time) than the fastest sequential backend of its framework and than the fastest sequential
backend of any framework, at every longer T of the sweep too; or none, with the ratio at the longest T.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional

from harness.measure import safe_files
from harness.measure.format import md_table, si
from suites.report_util import link, readable_log_axes

SCAN_TAG = "scan-T"
H_SCAN = "Gated linear cells: sequential against parallel scan"
H_CROSSOVER = "Where the parallel scan wins"
MODES = (("fwd", "inference forward"), ("train", "training (forward + backward)"))
CELL_TITLES = {"mingru": "minGRU", "minlstm": "minLSTM", "rglru": "RG-LRU"}


def _scan_rows(df, metric: str = "fwd_ms"):
    """Successful rows of ``metric`` from the scan sweep's cases (empty without any)."""
    if "tags" not in df.columns or "scan_form" not in df.columns:
        return df.iloc[0:0]
    ok = df[(df["metric"] == metric) & (df["status"] == "ok") & df["value"].notna()]
    return ok[ok["tags"].fillna("").astype(str).map(lambda t: SCAN_TAG in t.split(","))]


def _times(df, mode: str):
    """One row per (cell, H, T, backend): the median time of ``mode`` and its quartiles, with form and framework."""
    rows = _scan_rows(df, f"{mode}_ms")
    if "mode" in rows.columns:
        rows = rows[rows["mode"] == mode]
    if len(rows) == 0:
        return rows
    keep = ["cell", "hidden_size", "seq_len", "batch", "backend", "value", "q25", "q75", "scan_form",
            "scan_framework"]
    rows = rows[[c for c in keep if c in rows.columns]].copy()
    # Several processes of one case: their medians' median (what compare reads too).
    return rows.groupby(["cell", "hidden_size", "seq_len", "batch", "backend", "scan_form", "scan_framework"],
                        as_index=False, dropna=False).median(numeric_only=True)


def crossovers(df) -> List[dict]:
    """Per (cell, H, mode, parallel backend): ``{"cell", "hidden_size", "mode", "backend", "against",
    "crossover_T", "ratio_at_max", "max_T", "ratios"}``, once against the fastest sequential backend of the same
    framework (``against`` = that set's name, ``"own framework"``) and once against any sequential backend
    (``"any"``). ``ratios`` maps T to sequential time / scan time (above 1: the scan is faster);
    ``crossover_T`` is the least T from which every ratio is above 1, None when the scan never stays ahead."""
    out: List[dict] = []
    for mode, _ in MODES:
        t = _times(df, mode)
        if len(t) == 0:
            continue
        for (cell, H), g in t.groupby(["cell", "hidden_size"]):
            seq = g[g["scan_form"] == "sequential"]
            for b, p in g[g["scan_form"] != "sequential"].groupby("backend"):
                fw = p["scan_framework"].iloc[0]
                for against, pool in (("own framework", seq[seq["scan_framework"] == fw]), ("any", seq)):
                    ratios, who = {}, {}
                    for r in p.itertuples(index=False):
                        at = pool[pool["seq_len"] == r.seq_len]
                        if len(at) == 0:
                            continue
                        best = at.loc[at["value"].idxmin()]
                        ratios[int(r.seq_len)] = float(best["value"] / r.value)
                        who[int(r.seq_len)] = str(best["backend"])
                    if not ratios:
                        continue
                    Ts = sorted(ratios)
                    cross = None
                    for i, T in enumerate(Ts):
                        if all(ratios[u] > 1.0 for u in Ts[i:]):
                            cross = T
                            break
                    out.append({"cell": cell, "hidden_size": int(H), "mode": mode, "backend": b, "against": against,
                                "crossover_T": cross, "max_T": Ts[-1], "ratio_at_max": ratios[Ts[-1]],
                                "ratios": ratios, "fastest_sequential": who})
    return out


def crossover_text(c: dict) -> str:
    """One :func:`crossovers` entry in words: the crossover T (or none) and the ratio at the longest T."""
    if c["crossover_T"] is None:
        return f"no crossover up to T = {c['max_T']} (×{c['ratio_at_max']:.2f} there)"
    if c["crossover_T"] == min(c["ratios"]):
        return f"faster at every T measured (from T = {c['crossover_T']}; ×{c['ratio_at_max']:.2f} at {c['max_T']})"
    return f"T = {c['crossover_T']} (×{c['ratio_at_max']:.2f} at {c['max_T']})"


def section(df, fig_dir: str, colors: Optional[dict] = None) -> List[str]:
    """Markdown lines of the scan sweep (tables, crossovers, a figure); [] without scan-sweep rows."""
    import pandas as pd
    if len(_scan_rows(df)) == 0 and len(_scan_rows(df, "train_ms")) == 0:
        return []
    out = [f"### {H_SCAN}", "",
           "minGRU, minLSTM and RG-LRU are h_t = a_t ⊙ h_{t−1} + u_t with the gates from x_t alone: one GEMM for all "
           "steps, then a linear recurrence that runs either step by step (`sequential`) or as an associative scan "
           "(`hillis-steele`: ⌈log₂ T⌉ rounds over the whole sequence, about 3·T·log₂T FLOPs per unit; `odd-even`: "
           "`lax.associative_scan`'s recursion, about 2·T combines = 6·T FLOPs, depth about 2·log₂T). The sweep "
           "keeps B·T fixed, so every T does the same GEMM work; only the recurrence's shape changes. Model "
           "columns: FLOPs and bytes of one forward's recurrence relative to the sequential form's."]
    for mode, label in MODES:
        t = _times(df, mode)
        if len(t) == 0:
            continue
        for (cell, H), g in t.groupby(["cell", "hidden_size"]):
            data = {}
            for r in g.itertuples(index=False):
                key = f"T {int(r.seq_len)} (B {int(r.batch)})"
                data.setdefault(r.backend, {})[key] = f"{si(r.batch * r.seq_len / (r.value / 1e3))}"
            model = _model_columns(df, cell, H)
            table = pd.DataFrame(data)
            table = table.loc[sorted(table.index, key=lambda k: int(k.split()[1]))]
            for col, vals in model.items():
                table[col] = [vals.get(int(k.split()[1]), "-") for k in table.index]
            table.index.name = "T (B)"
            out += ["", f"**{CELL_TITLES.get(cell, cell)} H={int(H)}, {label}** (tokens/s, median over processes)", "",
                    md_table(table.fillna("-"), index=True)]
    cs = crossovers(df)
    if cs:
        out += ["", f"#### {H_CROSSOVER}", "",
                "Ratio = the fastest sequential backend's median time / the scan's (above 1: the scan is faster). "
                "Crossover: the least T of the sweep from which the scan stays faster at every longer T."]
        rows = [{"cell": CELL_TITLES.get(c["cell"], c["cell"]), "H": c["hidden_size"], "mode": c["mode"],
                 "scan": c["backend"], "against": c["against"], "crossover": crossover_text(c),
                 "ratio by T": ", ".join(f"{T}: {v:.2f}" for T, v in sorted(c["ratios"].items()))}
                for c in cs]
        out += ["", md_table(pd.DataFrame(rows), index=False)]
    fig = _figure(df, fig_dir, colors)
    if fig:
        out += ["", f"![Tokens/s against T at fixed B·T]({os.path.basename(os.path.dirname(fig))}/"
                    f"{os.path.basename(fig)})"]
    return out


def _model_columns(df, cell: str, H) -> dict:
    """``{"model FLOPs <form>/seq": {T: text}, "model bytes <form>/seq": ...}`` from the rows' cost model."""
    rows = _scan_rows(df)
    rows = rows[(rows["cell"] == cell) & (rows["hidden_size"] == H)]
    if len(rows) == 0 or "scan_flops" not in rows.columns:
        return {}
    by = rows.drop_duplicates(["seq_len", "scan_form"]).set_index(["seq_len", "scan_form"])
    out: dict = {}
    forms = sorted(f for f in rows["scan_form"].dropna().unique() if f != "sequential")
    for f in forms:
        for what in ("flops", "bytes"):
            col = f"model {what} {f}/seq"
            out[col] = {}
            for T in rows["seq_len"].unique():
                if (T, f) in by.index and (T, "sequential") in by.index:
                    out[col][int(T)] = f"{by.loc[(T, f), 'scan_' + what] / by.loc[(T, 'sequential'), 'scan_' + what]:.1f}×"
    return out


def _figure(df, fig_dir: str, colors: Optional[dict]) -> Optional[str]:
    """tokens/s against T (log-log), one panel per mode, one line per (backend, cell, H)."""
    import matplotlib.pyplot as plt
    panels = [(m, label, _times(df, m)) for m, label in MODES]
    panels = [p for p in panels if len(p[2])]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (mode, label, t) in zip(axes[0], panels):
        for (b, cell, H), g in t.groupby(["backend", "cell", "hidden_size"]):
            g = g.sort_values("seq_len")
            style = "-" if (g["scan_form"].iloc[0] == "sequential") else "--"
            ax.plot(g["seq_len"], g["batch"] * g["seq_len"] / (g["value"] / 1e3), style, marker="o",
                    color=(colors or {}).get(b), label=f"{b} {CELL_TITLES.get(cell, cell)} H{int(H)}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        readable_log_axes(ax)
        ax.set_xlabel("sequence length T (B·T fixed)")
        ax.set_ylabel("tokens/s")
        ax.set_title(label + " (dashed: parallel scan)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = safe_files.save_figure(fig, fig_dir, "scan_vs_seq_len.png")
    plt.close(fig)
    return path


def findings(df) -> List[str]:
    """One bullet per (cell, H, mode) and scan, against any sequential backend; [] without the sweep."""
    out = []
    for c in crossovers(df):
        if c["against"] != "any":
            continue
        who = c["fastest_sequential"].get(c["max_T"], "")
        out.append(f"- {link('Parallel scan', H_CROSSOVER)} {c['backend']}, {CELL_TITLES.get(c['cell'], c['cell'])} "
                   f"H={c['hidden_size']} {c['mode']}: {crossover_text(c)} against the fastest sequential "
                   f"backend ({who} at T = {c['max_T']}).")
    return out
