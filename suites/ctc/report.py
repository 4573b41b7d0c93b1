"""The CTC section of the report: errors per backend and case class against the tolerances, checks of the
reference, the native semantics each framework shows before normalisation, and the loss+gradient timings.

``section(df, fig_dir, **opts) -> str`` takes the rows of a run (``extra`` flattened: ``case_class``,
``within_tol``, ``note``, ``path`` ...) and returns Markdown; the timing figure is saved as
``fig_dir/ctc_timing.png`` and referenced as ``figures/ctc_timing.png``.

``findings(df, **opts) -> list[str]``: the headline bullets (the NumPy forward-backward against brute force,
then each backend and dtype against the float64 reference: max errors against the tolerances the rows carry),
each linking to its table.
"""
from __future__ import annotations

import os
from typing import Any, List

import numpy as np

from harness.measure import safe_files
from harness.measure.format import md_table
from suites.report_util import link, readable_log_axes, sci, short

BACKEND_ORDER = ("numpy", "torch", "torch-native", "jax")
CLASS_ORDER = ("random", "repeats", "empty", "tight", "impossible", "blank_last", "peaked", "long", "timing", "tiny")
GREEN, RED = "🟢", "🔴"
#: Headings of the section (the findings link to them).
H_SECTION = "CTC"
H_LOSS = "Loss: max relative error"
H_GRAD_ABS = "Gradient: max absolute error"
H_GRAD_REL = "Gradient: max relative error (to the largest |reference gradient|)"
H_CHECKS = "Checks of the reference"
#: What each backend is, in the findings.
BACKEND_TITLES = {"numpy": "NumPy", "torch": "torch (F.ctc_loss)", "torch-native": "torch native",
                  "jax": "JAX (optax.ctc_loss)"}


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
    def i(v):
        try:
            return int(v) if float(v) == int(float(v)) else v
        except (TypeError, ValueError):
            return v
    sub = sub.assign(shape=[f"T{i(t)} B{i(b)} C{i(c)} L{i(l)} {dt}" for t, b, c, l, dt in
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
        readable_log_axes(ax, "y")
        ax.set_ylabel("loss + gradient, ms (median, IQR)")
        ax.set_title("CTC loss + gradient")
        ax.legend(fontsize=8)
        fig.tight_layout()
        safe_files.save_figure(fig, fig_dir, "ctc_timing.png", dpi=110)
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
    out = [f"## {H_SECTION}", "",
           "Loss per sequence and gradient w.r.t. the unnormalised logits against the float64 NumPy reference "
           f"(log-space forward-backward). {GREEN} within the tolerance (float64: relative 1e-10 on "
           f"losses and gradients; float32: relative 1e-5 on losses, absolute 1e-5 on gradients), {RED} outside. "
           "Impossible alignments are compared after each backend's normalisation (inf loss, zero gradient).", "",
           f"### {H_LOSS}", "", _error_table(d, "loss_rel_err", backends), "",
           f"### {H_GRAD_ABS}", "", _error_table(d, "grad_abs_err", backends), "",
           f"### {H_GRAD_REL}", "",
           _error_table(d, "grad_rel_err", backends), "",
           f"### {H_CHECKS}", "",
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


# -- findings ------------------------------------------------------------------------------------------

def _tol(g, col: str):
    """The tolerance the rows ``g`` carry in ``col`` (one value), else None."""
    if col not in g.columns:
        return None
    v = [float(x) for x in g[col] if x is not None and x == x]
    return max(v) if v else None


def _judge(g, metric: str, tol_col: str):
    """(max error, tolerance, number of case classes, case classes beyond the tolerance) of ``metric``."""
    m = g[(g["metric"] == metric) & (g["status"] == "ok") & g["value"].notna()]
    if not len(m):
        return None
    tol = _tol(m, tol_col)
    worst = m.groupby("case_class")["value"].max().astype(float)
    bad = [str(c) for c, v in worst.items() if tol is not None and v > tol]
    return float(worst.max()), tol, len(worst), bad


def findings(df, **opts: Any) -> List[str]:
    """Headline bullets of the CTC rows (see the module docstring); [] without CTC rows."""
    d = df[df["suite"] == "ctc"] if "suite" in df.columns else df
    if not len(d):
        return []
    d = d.copy()
    for c in ("case_class", "within_tol", "tol"):
        if c not in d.columns:
            d[c] = None
    out: List[str] = []
    ref = d[(d["backend"] == "numpy") & d["metric"].isin(["ref_vs_brute_rel", "ref_grad_vs_brute"])
            & (d["status"] == "ok") & d["value"].notna()]
    if len(ref):
        parts = []
        for metric, what in (("ref_vs_brute_rel", "loss"), ("ref_grad_vs_brute", "gradient")):
            g = ref[ref["metric"] == metric]
            if len(g):
                parts.append(f"{what} {short(g['value'].max())}")
        tol = _tol(ref, "tol")
        ok = bool(ref["within_tol"].astype(bool).all()) if ref["within_tol"].notna().all() else None
        verdict = "within" if ok else ("**beyond**" if ok is False else "against")
        out.append(f"- {link('NumPy forward-backward vs brute force', H_CHECKS)} (every path of "
                   f"{ref['case'].nunique()} tiny case(s)): max error " + ", ".join(parts)
                   + (f", {verdict} the tolerance {sci(tol)}" if tol is not None else "") + ".")
    errs = d[d["metric"].isin(["loss_rel_err", "grad_abs_err", "grad_rel_err"])]
    for b in _backends(errs):
        gb = errs[errs["backend"] == b]
        if len(gb) and (gb["status"] == "skipped").all():
            out.append(f"- {BACKEND_TITLES.get(b, b)}: skipped ({str(gb['reason'].iloc[0])[:100]}).")
            continue
        parts = []
        for dtype in sorted(gb["dtype"].dropna().unique(), reverse=True):  # float64 first
            g = gb[gb["dtype"] == dtype]
            loss = _judge(g, "loss_rel_err", "loss_rel")
            grad = (_judge(g, "grad_rel_err", "grad_rel") if "grad_rel" in g.columns and g["grad_rel"].notna().any()
                    else _judge(g, "grad_abs_err", "grad_abs"))
            gkind = "rel" if "grad_rel" in g.columns and g["grad_rel"].notna().any() else "abs"
            if loss is None and grad is None:
                continue
            bits, bad = [], set()
            for name, j in (("loss rel", loss), (f"gradient {gkind}", grad)):
                if j is None:
                    continue
                v, tol, n, over = j
                bad |= set(over)
                bits.append(f"{name} {short(v)}" + (f" {'>' if over else '≤'} {sci(tol)}" if tol is not None else ""))
            ok = g[g["metric"] == "loss_rel_err"]["within_tol"]
            n_cls = g["case_class"].nunique()
            if bad:
                verdict = f"— **{len(bad)} of {n_cls} case classes beyond** ({', '.join(sorted(bad))})"
            elif len(ok) and ok.notna().all() and not ok.astype(bool).all():
                verdict = "— **outside the tolerance in some cases**"
            else:
                verdict = f"— all {n_cls} case classes within"
            parts.append(f"{dtype}: " + ", ".join(bits) + f" {verdict}")
        if parts:
            target = H_LOSS if b == "numpy" else H_GRAD_ABS
            who = f"{BACKEND_TITLES.get(b, b)} vs the float64 reference" if b != "numpy" else \
                "NumPy in each dtype vs the float64 reference"
            out.append(f"- {link(who, target)}: " + "; ".join(parts) + ".")
    return out
