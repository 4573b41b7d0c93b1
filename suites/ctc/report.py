"""The CTC section of the report: errors per backend and case class against the tolerances, checks of the
reference, the native semantics each framework shows before normalisation, and the loss+gradient timings.

``section(df, fig_dir, **opts) -> str`` takes the rows of a run (``extra`` flattened: ``case_class``,
``within_tol``, ``note``, ``path`` ...) and returns Markdown; the timing figure is saved as
``fig_dir/ctc_timing.png`` and referenced as ``figures/ctc_timing.png``.
"""
from __future__ import annotations

import os
from typing import Any, List

import numpy as np

from harness.measure.format import md_table

BACKEND_ORDER = ("numpy", "torch", "torch-native", "jax")
CLASS_ORDER = ("random", "repeats", "empty", "tight", "impossible", "blank_last", "peaked", "long", "timing", "tiny")
GREEN, RED = "🟢", "🔴"


def _backends(df) -> List[str]:
    present = list(df["backend"].dropna().unique())
    return [b for b in BACKEND_ORDER if b in present] + sorted(b for b in present if b not in BACKEND_ORDER)


def _col(df, name: str, default: Any = None):
    return df[name] if name in df.columns else [default] * len(df)


def _mark(ok: Any) -> str:
    return GREEN if ok is True or ok == 1.0 else (RED if ok is False or ok == 0.0 else "")


def _error_table(d, metric: str, backends: List[str]) -> str:
    import pandas as pd
    rows = []
    sub = d[d["metric"] == metric]
    for (cls, dtype), g in sorted(sub.groupby(["case_class", "dtype"]),
                                  key=lambda kv: (CLASS_ORDER.index(kv[0][0]) if kv[0][0] in CLASS_ORDER else 99,
                                                  kv[0][1])):
        row = {"case class": cls, "dtype": dtype}
        for b in backends:
            gb = g[g["backend"] == b]
            if len(gb) == 0:
                row[b] = "-"
                continue
            if "status" in gb.columns and (gb["status"] == "skipped").all():
                row[b] = "skipped"  # not a failure: the backend has no CTC, or not in this dtype
                continue
            v = float(gb["value"].max())
            ok = bool(gb["within_tol"].astype(bool).all()) if "within_tol" in gb.columns else None
            row[b] = f"{v:.2g} {_mark(ok)}"
        rows.append(row)
    return md_table(pd.DataFrame(rows))


def _checks_table(d) -> str:
    import pandas as pd
    names = ("ref_vs_brute_rel", "ref_grad_vs_brute", "greedy_agree", "beam_agree", "beam_score_rel",
             "gamma_sum_dev", "grad_row_sum", "lik_over_t_dev")
    sub = d[(d["backend"] == "numpy") & d["metric"].isin(names)]
    rows = []
    for m in names:
        g = sub[sub["metric"] == m]
        if len(g) == 0:
            continue
        agree = m.endswith("agree")
        v = float(g["value"].min() if agree else g["value"].max())
        ok = bool(g["within_tol"].astype(bool).all()) if "within_tol" in g.columns else None
        rows.append({"check": m, "worst": f"{v:.3g}", "cases": len(g), "": _mark(ok)})
    return md_table(pd.DataFrame(rows))


def _semantics_table(d) -> str:
    import pandas as pd
    sub = d[d["metric"].astype(str).str.startswith("native_")]
    rows = []
    for (b, m), g in sub.groupby(["backend", "metric"]):
        for dtype, gd in g.groupby("dtype"):
            r = gd.iloc[0]
            rows.append({"backend": b, "dtype": dtype, "path": r.get("path", ""), "what": r.get("note", m),
                         "native": f"{float(r['value']):.4g}"})
    return md_table(pd.DataFrame(rows))


def _timing(d, fig_dir: str, backends: List[str]) -> List[str]:
    import pandas as pd
    sub = d[(d["metric"] == "loss_grad_ms") & (d["status"] == "ok")]
    if len(sub) == 0:
        return ["_(no timing rows)_"]
    sub = sub.assign(shape=[f"T{t} B{b} C{c} L{l} {dt}" for t, b, c, l, dt in
                            zip(sub["seq_len"], sub["batch"], sub["classes"], sub["label_len"], sub["dtype"])])
    rows = []
    for shape, g in sub.groupby("shape", sort=False):
        row = {"case": shape}
        base = g[g["backend"] == "numpy"]["value"]
        for b in backends:
            gb = g[g["backend"] == b]
            if len(gb):
                v = float(gb["value"].iloc[0])
                ratio = f" ({v / float(base.iloc[0]):.2g}× numpy)" if len(base) and b != "numpy" else ""
                row[b] = f"{v:.3g} ms{ratio}"
            else:
                row[b] = "-"
        rows.append(row)
    out = ["Median time of one loss + gradient (w.r.t. the logits), through the common Timer:", "",
           md_table(pd.DataFrame(rows))]
    try:
        import matplotlib.pyplot as plt
        shapes = list(dict.fromkeys(sub["shape"]))
        fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(shapes), 3.6))
        w = 0.8 / max(len(backends), 1)
        for i, b in enumerate(backends):
            vals, lo, hi = [], [], []
            for s in shapes:
                g = sub[(sub["shape"] == s) & (sub["backend"] == b)]
                v = float(g["value"].iloc[0]) if len(g) else np.nan
                q25 = float(g["q25"].iloc[0]) if len(g) and g["q25"].iloc[0] is not None else v
                q75 = float(g["q75"].iloc[0]) if len(g) and g["q75"].iloc[0] is not None else v
                vals.append(v)
                lo.append(max(v - q25, 0) if v == v else 0)
                hi.append(max(q75 - v, 0) if v == v else 0)
            ax.bar(np.arange(len(shapes)) + i * w, vals, w, yerr=[lo, hi], label=b, capsize=2)
        ax.set_xticks(np.arange(len(shapes)) + w * (len(backends) - 1) / 2)
        ax.set_xticklabels(shapes, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("loss + gradient, ms (median, IQR)")
        ax.set_title("CTC loss + gradient")
        ax.legend(fontsize=8)
        fig.tight_layout()
        os.makedirs(fig_dir, exist_ok=True)
        fig.savefig(os.path.join(fig_dir, "ctc_timing.png"), dpi=110)
        plt.close(fig)
        out += ["", "![CTC timing](figures/ctc_timing.png)"]
    except Exception as e:  # noqa: BLE001 - a figure failure must not cost the tables
        out += ["", f"_(timing figure failed: {type(e).__name__}: {e})_"]
    return out


def section(df, fig_dir: str, **opts: Any) -> str:
    """Markdown of the CTC rows of ``df`` (see the module docstring)."""
    d = df[df["suite"] == "ctc"] if "suite" in df.columns else df
    if len(d) == 0:
        return "## CTC\n\n_(no CTC rows)_\n"
    d = d.copy()
    for c in ("case_class", "within_tol", "classes", "label_len", "note", "path"):
        if c not in d.columns:
            d[c] = None
    backends = _backends(d)
    out = ["## CTC", "",
           "Loss per sequence and gradient w.r.t. the unnormalised logits against the float64 NumPy reference "
           f"(log-space forward-backward). {GREEN} within the tolerance (float64: relative 1e-10 on "
           f"losses and gradients; float32: relative 1e-5 on losses, absolute 1e-5 on gradients), {RED} outside. "
           "Impossible alignments are compared after each backend's normalisation (inf loss, zero gradient).", "",
           "### Loss: max relative error", "", _error_table(d, "loss_rel_err", backends), "",
           "### Gradient: max absolute error", "", _error_table(d, "grad_abs_err", backends), "",
           "### Gradient: max relative error (to the largest |reference gradient|)", "",
           _error_table(d, "grad_rel_err", backends), "",
           "### Checks of the reference", "",
           "Brute force enumerates all C^T paths of tiny cases; the decoders are compared with exhaustive search; "
           "the invariants hold on every valid frame (Σ_k γ_t(k) = 1, gradient rows sum to 0, "
           "log Σ_s α_t(s)β_t(s) = log p at every t).", "",
           _checks_table(d), "",
           "### Semantic differences (native behaviour before normalisation)", "",
           _semantics_table(d), "",
           "### Speed", ""]
    out += _timing(d, fig_dir, backends)
    errs = d[d["status"].isin(["error", "timeout", "oom"])] if "status" in d.columns else d.iloc[:0]
    if len(errs):
        out += ["", f"_{len(errs)} CTC row(s) failed:_ " + "; ".join(
            f"{r.backend}/{r.case}: {r.reason}" for r in errs.itertuples())]
    return "\n".join(out) + "\n"
