"""The gradients section of the report: curves, rates against theory, checks, and what they show.

``section(df, fig_dir, **opts) -> str`` takes the ``gradients`` rows of a run (as loaded by
:func:`harness.measure.records.load`, ``extra`` flattened: ``kind``, ``init``, ``rho``, ``gate_bias``,
``input_scale``, ``seed``, ``norms``, ``theory``, ...) and returns Markdown. Figures go to ``fig_dir``
(referenced as ``figures/<name>.png``):

- ``gradients_curves.png``: semilog ‖∂L/∂h_{T−k}‖ against k, one panel per cell and input scale, one
  line per setting, the theory dashed in the same colour;
- ``gradients_float32.png``: the linear recurrence against ρ^k, and float32 beside float64 with the
  step where float32 under/overflows marked;
- ``gradients_rate_vs_rho.png``: fitted rate against ρ with the theory σ_rms·RMS(f') (= ρ·RMS(f'));
- ``gradients_heatmap.png``: log10‖g_k‖ over (ρ, k) for the tanh RNN;
- ``gradients_rate_vs_bias.png``: LSTM/GRU rate against the forget/update-gate bias;
- ``gradients_param_norm.png``: ‖∂L/∂θ‖ against T, clipped and unclipped.

Curves with an under/overflow carry NaN past that step and are drawn up to it, with a marker: they are
never drawn as zeros (such rows have status ``limit``; runs from before it existed recorded ``error``).
Several seeds: the tables average over seeds; the figures show the first seed.

Log axes spanning hundreds of decades: the y-limits are computed in log10 space from the finite data and set
*before* anything is drawn (matplotlib's autoscale pads the data limits in log space and overflows ``exp``
near 1e±308 otherwise); ticks only inside the view (:func:`suites.report_util.readable_log_axes`).

:func:`findings`: the headline bullets (rates against theory, the linear recurrence, the checks, backend
agreement, float32 underflow), each linking to its table.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional

import numpy as np

from harness.measure import safe_files
from harness.measure.format import md_table
from suites.report_util import link, readable_log_axes, sci, short

CELL_TITLES = {"rnn_tanh": "RNN (tanh)", "rnn_relu": "RNN (ReLU)", "lstm": "LSTM", "gru": "GRU",
               "linear": "linear RNN", "mingru": "minGRU", "minlstm": "minLSTM", "rglru": "RG-LRU"}
CELL_ORDER = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATE = {"lstm": "forget", "gru": "update"}
#: Headings of the section (the findings link to them).
H_SECTION = "Gradients through time"
H_RATES = "Fitted vs predicted rates (vanilla and linear RNNs, float64)"
H_GATES = "LSTM / GRU: gate statistics and rates (float64)"
H_HEALTH = "Where curves stop (under/overflow)"
H_AGREE = "Backend agreement (adjoint vectors against NumPy)"
H_EXACT = "Gated linear cells: the adjoint against the exact product of the a_t"
H_CHECKS = "Checks"
#: Statuses of a curve that stopped at a float limit (``error`` in runs from before ``limit``).
STOPPED = ("limit", "error")


# -- data helpers --------------------------------------------------------------------------------------

def _col(df, name: str, default=None):
    return df[name] if name in df.columns else [default] * len(df)


def _num(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _setting_key(r) -> tuple:
    """Sort key: default init last, then ρ / bias."""
    rho = _num(r.get("rho"))
    return (rho is None, rho if rho is not None else 0.0, _num(r.get("gate_bias")) or 0.0)


def _label(r) -> str:
    if r.get("cell") in GATE:
        return f"b={_num(r.get('gate_bias')) or 0:g}"
    rho = _num(r.get("rho"))
    return "default init" if rho is None else f"ρ={rho:g}"


def _curves(df, metric: str = "grad_norm_h", kind: str = "sweep", dtype: str = "float64",
            backend: str = "numpy") -> List[Dict[str, Any]]:
    """Curve rows (as dicts with the arrays decoded) of the first seed."""
    sel = df[(df["metric"] == metric) & (_col(df, "kind") == kind) & (df["dtype"] == dtype) &
             (df["backend"] == backend)]
    if "seed" in sel.columns and len(sel):
        sel = sel[sel["seed"] == sel["seed"].min()]
    out = []
    for _, r in sel.iterrows():
        d = r.to_dict()
        norms = d.get("norms")
        if not isinstance(norms, list) or not norms:
            continue
        stride = int(_num(d.get("k_stride")) or 1)
        d["k"] = np.arange(len(norms)) * stride
        d["norms"] = np.array([np.nan if v is None else v for v in norms], dtype=float)
        th = d.get("theory")
        d["theory"] = (np.array([np.nan if v is None else v for v in th], dtype=float)
                       if isinstance(th, list) and th else None)
        out.append(d)
    return sorted(out, key=_setting_key)


def _scalar(df, metric: str, kind: str = "sweep", dtype: str = "float64", backend: str = "numpy"):
    """Mean over seeds of an ok scalar metric, one row per (cell, setting)."""
    sel = df[(df["metric"] == metric) & (df["status"] == "ok") & (_col(df, "kind") == kind) &
             (df["dtype"] == dtype) & (df["backend"] == backend)].copy()
    if not len(sel):
        return sel
    sel["value"] = sel["value"].astype(float)
    keys = [c for c in ("cell", "setting", "init", "rho", "gate_bias", "input_scale") if c in sel.columns]
    sel[keys] = sel[keys].astype(object).where(sel[keys].notna(), None)
    g = sel.groupby(keys, dropna=False)["value"].agg(["mean", "count"]).reset_index()
    return g


def _lookup(table, **match) -> Optional[float]:
    if table is None or not len(table):
        return None
    m = np.ones(len(table), bool)
    for k, v in match.items():
        col = table[k].tolist()
        m &= np.array([(_num(a) == _num(v)) if isinstance(v, (int, float)) or v is None else a == v for a in col])
    vals = table.loc[m, "mean"].tolist()
    return float(vals[0]) if vals else None


def _fmt(v: Optional[float], spec: str = ".4g") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


# -- figures -------------------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, fig_dir: str, name: str) -> str:
    safe_files.save_figure(fig, fig_dir, name, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return name


def _draw_curve(ax, c: Dict[str, Any], color, label: Optional[str], theory: bool = True, **kw) -> None:
    k, n = c["k"], c["norms"]
    # Points within a few decades of float64's limits break matplotlib's log axis: not drawn.
    ok = np.isfinite(n) & (n > 1e-300) & (n < 1e300)
    kw.setdefault("lw", 1.4)
    ax.semilogy(k[ok], n[ok], color=color, label=label, **kw)
    stop = [s for s in (_num(c.get("underflow_step")), _num(c.get("overflow_step"))) if s is not None]
    if stop and ok.any():
        last = np.flatnonzero(ok)[-1]
        ax.plot([k[last]], [n[last]], marker="x", color=color, ms=8, mew=2)
    if theory and c.get("theory") is not None:
        t = c["theory"]
        tok = np.isfinite(t) & (t > 1e-300) & (t < 1e300)
        ax.semilogy(c["k"][:len(t)][tok], t[tok], color=color, ls="--", lw=1.0, alpha=0.8)


def _log_ylim(ax, arrays) -> bool:
    """Put ``ax``'s y axis on a log scale with limits from the finite positive data, **before** anything is
    drawn; returns False (nothing set) without such data.

    Computed in log10 space: matplotlib's autoscale gives up (falls back to [1, 10]) when a panel spans ~600
    decades, as exploding and vanishing float64 curves together do, and pads its data limits in log space,
    so that their inverse transform ``exp`` overflows near 1e±308. With the limits set first, autoscaling of
    y is off and drawing never computes them.
    """
    vals = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays]) if arrays else np.zeros(0)
    vals = vals[np.isfinite(vals) & (vals > 1e-300) & (vals < 1e300)]
    ax.set_yscale("log")
    if not vals.size:
        return False
    lo, hi = np.log10(vals.min()), np.log10(vals.max())
    pad = max(0.05 * (hi - lo), 0.5)
    top = min(hi + pad, 280.0)
    # Keep at most 400 decades in view, and away from float64's limits (the renderer's transforms overflow).
    bottom = max(lo - pad, -300.0, top - 400.0)
    ax.set_ylim(10 ** bottom, 10 ** top)
    ax.set_autoscaley_on(False)
    if bottom > lo:
        ax.text(0.99, 0.01, f"clipped below 1e{bottom:.0f}", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=7, color="gray")
    return True


def _fig_curves(df, fig_dir: str) -> Optional[str]:
    curves = _curves(df)
    if not curves:
        return None
    plt = _plt()
    scales = sorted({_num(c.get("input_scale")) for c in curves if _num(c.get("input_scale")) is not None})
    cells = [c for c in CELL_ORDER if any(x.get("cell") == c for x in curves)]
    fig, axes = plt.subplots(len(scales), len(cells), figsize=(4.2 * len(cells), 3.4 * len(scales)),
                             squeeze=False, sharex=True)
    cmap = plt.get_cmap("viridis")
    for i, s in enumerate(scales):
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            sel = [c for c in curves if c.get("cell") == cell and _num(c.get("input_scale")) == s]
            _log_ylim(ax, [c["norms"] for c in sel])
            for n, c in enumerate(sel):
                color = "black" if _num(c.get("rho")) is None and cell not in GATE else cmap(n / max(1, len(sel) - 1) * 0.9)
                _draw_curve(ax, c, color, _label(c))
            ax.set_title(f"{CELL_TITLES[cell]}, input scale {s:g}")
            readable_log_axes(ax, "y")
            ax.grid(True, which="major", alpha=0.3)
            if i == len(scales) - 1:
                ax.set_xlabel("steps back k")
            if j == 0:
                ax.set_ylabel("‖∂L/∂h_{T−k}‖ (‖∂L/∂h_T‖ = 1)")
            if sel:
                ax.legend(fontsize=7, loc="best", title="solid: measured\ndashed: theory", title_fontsize=7)
    fig.suptitle("Gradient norm against steps back (float64, NumPy); × = under/overflow, curve stops there")
    fig.tight_layout()
    return _save(fig, fig_dir, "gradients_curves.png")


def _fig_gated(df, fig_dir: str) -> Optional[str]:
    """The gated linear cells' measured curves (solid) with the exact product of the a_t (dashed), beside the LSTM
    and GRU curves at input scale 1 and gate bias 0 (their default-init settings), float64 NumPy."""
    gated = _curves(df, kind="gated")
    if not gated:
        return None
    classic = [c for c in _curves(df) if c.get("cell") in GATE and _num(c.get("input_scale")) == 1.0
               and _num(c.get("gate_bias")) in (0.0, None)]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    cmap = plt.get_cmap("tab10")
    for n, c in enumerate(gated):
        _draw_curve(ax, c, cmap(n), f"{CELL_TITLES.get(c.get('cell'), c.get('cell'))} (exact Π a_t dashed, on it)")
    for n, c in enumerate(classic):
        _draw_curve(ax, c, cmap(5 + n), f"{CELL_TITLES.get(c.get('cell'), c.get('cell'))}, gate bias 0",
                    theory=False, ls=":")
    _log_ylim(ax, [c["norms"] for c in gated + classic])
    readable_log_axes(ax, "y")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlabel("steps back k")
    ax.set_ylabel("‖∂L/∂h_{T−k}‖ (‖∂L/∂h_T‖ = 1)")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Gated linear cells beside LSTM and GRU (float64, NumPy, default init, input scale 1)")
    fig.tight_layout()
    return _save(fig, fig_dir, "gradients_gated.png")


def _fig_float32(df, fig_dir: str) -> Optional[str]:
    lin = _curves(df, kind="linear")
    f64 = [c for c in _curves(df) if c.get("cell") == "rnn_tanh"]
    f32 = [c for c in _curves(df, dtype="float32") if c.get("cell") == "rnn_tanh"]
    if not lin and not f32:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), squeeze=False)
    ax = axes[0][0]
    cmap = plt.get_cmap("plasma")
    _log_ylim(ax, [c["norms"] for c in lin])
    for n, c in enumerate(lin):
        _draw_curve(ax, c, cmap(n / max(1, len(lin) - 1) * 0.85), _label(c))
    readable_log_axes(ax, "y")
    ax.set_title("Linear recurrence, W_hh = ρ·Q: measured (solid) vs ρ^k (dashed)")
    ax.set_xlabel("steps back k")
    ax.set_ylabel("‖∂L/∂h_{T−k}‖")
    ax.grid(True, alpha=0.3)
    if lin:
        ax.legend(fontsize=7)
    ax = axes[0][1]
    scales = sorted({_num(c.get("input_scale")) for c in f32 if _num(c.get("input_scale")) is not None})
    s = max(scales) if scales else None
    sel32 = [c for c in f32 if _num(c.get("input_scale")) == s]
    sel64 = {c.get("setting"): c for c in f64 if _num(c.get("input_scale")) == s}
    cmap = plt.get_cmap("viridis")
    tiny = float(np.finfo(np.float32).tiny)
    _log_ylim(ax, [c["norms"] for c in sel32] + [sel64[c.get("setting")]["norms"] for c in sel32
                                                 if c.get("setting") in sel64] + [np.array([tiny])])
    for n, c in enumerate(sel32):
        color = "black" if _num(c.get("rho")) is None else cmap(n / max(1, len(sel32) - 1) * 0.9)
        if c.get("setting") in sel64:
            _draw_curve(ax, sel64[c.get("setting")], color, None, theory=False, alpha=0.35, lw=3)
        _draw_curve(ax, c, color, _label(c), theory=False)
    readable_log_axes(ax, "y")
    ax.axhline(tiny, color="red", lw=0.8, ls=":")
    ax.text(0, tiny * 3, "float32 smallest normal", color="red", fontsize=7)
    ax.set_title(f"tanh RNN, input scale {s:g}: float32 (thin) over float64 (wide, faint)")
    ax.set_xlabel("steps back k")
    ax.set_ylabel("‖∂L/∂h_{T−k}‖")
    ax.grid(True, alpha=0.3)
    if sel32:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, fig_dir, "gradients_float32.png")


def _fig_rate_vs_rho(df, fig_dir: str) -> Optional[str]:
    fit = _scalar(df, "decay_rate")
    pred = _scalar(df, "predicted_rate")
    srms = _scalar(df, "sigma_rms")
    if not len(fit):
        return None
    cells = [c for c in ("rnn_tanh", "rnn_relu") if (fit["cell"] == c).any()]
    if not cells:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(cells), figsize=(6 * len(cells), 4.4), squeeze=False)
    markers = ["o", "s", "^", "D"]
    colors = plt.get_cmap("tab10")
    for j, cell in enumerate(cells):
        ax = axes[0][j]
        sub = fit[fit["cell"] == cell]
        scales = sorted({_num(v) for v in sub["input_scale"] if _num(v) is not None})
        rmax = 0.0
        for i, s in enumerate(scales):
            rows = sub[[_num(v) == s for v in sub["input_scale"]]]
            xs, ys, ps = [], [], []
            for _, r in rows.iterrows():
                rho = _num(r["rho"])
                x = rho if rho is not None else _lookup(srms, cell=cell, setting=r["setting"])
                if x is None:
                    continue
                xs.append(x)
                ys.append(r["mean"])
                ps.append(_lookup(pred, cell=cell, setting=r["setting"]))
            order = np.argsort(xs)
            xs, ys, ps = np.array(xs)[order], np.array(ys)[order], np.array([np.nan if p is None else p for p in ps])[order]
            ax.plot(xs, ys, marker=markers[i % 4], ls="none", color=colors(i), ms=7,
                    label=f"fitted, input scale {s:g}")
            ax.plot(xs, ps, ls="--", color=colors(i), lw=1.2, marker=".",
                    label=f"theory σ_rms·RMS(f'), input scale {s:g}")
            rmax = max(rmax, float(np.nanmax(xs)) if len(xs) else 0.0)
        grid = np.linspace(0, max(rmax, 1.0) * 1.05, 50)
        ax.plot(grid, grid, ls=":", color="gray", lw=1, label="linear RNN: rate = ρ")
        ax.axhline(1.0, color="red", lw=0.8, alpha=0.6)
        ax.set_xlabel("ρ = RMS singular value of W_hh (default init: ‖W‖_F/√H)")
        ax.set_ylabel("per-step rate r (‖g_k‖ ∝ r^k)")
        ax.set_title(f"{CELL_TITLES[cell]}: fitted rate vs theory (r > 1 explodes)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, fig_dir, "gradients_rate_vs_rho.png")


def _fig_heatmap(df, fig_dir: str) -> Optional[str]:
    curves = [c for c in _curves(df) if c.get("cell") == "rnn_tanh" and _num(c.get("rho")) is not None]
    if not curves:
        return None
    plt = _plt()
    scales = sorted({_num(c.get("input_scale")) for c in curves if _num(c.get("input_scale")) is not None})
    fig, axes = plt.subplots(1, len(scales), figsize=(6.5 * len(scales), 3.8), squeeze=False)
    vals_all = np.concatenate([np.log10(np.where(c["norms"] > 0, c["norms"], np.nan)) for c in curves])
    lim = float(np.nanmax(np.abs(vals_all))) if np.isfinite(vals_all).any() else 1.0
    im = None
    for j, s in enumerate(scales):
        ax = axes[0][j]
        sel = sorted([c for c in curves if _num(c.get("input_scale")) == s], key=lambda c: _num(c["rho"]))
        K = max(len(c["norms"]) for c in sel)
        grid = np.full((len(sel), K), np.nan)
        for i, c in enumerate(sel):
            n = c["norms"]
            grid[i, :len(n)] = np.log10(np.where(n > 0, n, np.nan))
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="lightgray")
        kmax = float(sel[0]["k"][-1]) if len(sel[0]["k"]) else K
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=-lim, vmax=lim,
                       extent=[0, kmax, len(sel) - 0.5, -0.5], interpolation="nearest")
        ax.set_yticks(range(len(sel)))
        ax.set_yticklabels([f"{_num(c['rho']):g}" for c in sel])
        ax.set_xlabel("steps back k")
        ax.set_ylabel("ρ (W_hh = ρ·Q)")
        ax.set_title(f"tanh RNN, input scale {s:g}\nlog10‖∂L/∂h_(T−k)‖ (gray: under/overflow, not drawn)")
    fig.colorbar(im, ax=axes[0].tolist(), label="log10 ‖∂L/∂h_{T−k}‖")
    return _save(fig, fig_dir, "gradients_heatmap.png")


def _fig_rate_vs_bias(df, fig_dir: str) -> Optional[str]:
    fit_h = _scalar(df, "decay_rate")
    fit_c = _scalar(df, "decay_rate_c")
    pred = _scalar(df, "predicted_rate")
    cells = [c for c in ("lstm", "gru") if len(fit_h) and (fit_h["cell"] == c).any()]
    if not cells:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(cells), figsize=(6 * len(cells), 4.2), squeeze=False)
    colors = plt.get_cmap("tab10")
    for j, cell in enumerate(cells):
        ax = axes[0][j]
        sub = fit_h[fit_h["cell"] == cell]
        scales = sorted({_num(v) for v in sub["input_scale"] if _num(v) is not None})
        for i, s in enumerate(scales):
            def series(table):
                if table is None or not len(table):
                    return [], []
                t = table[(table["cell"] == cell).to_numpy() & np.array([_num(v) == s for v in table["input_scale"]])]
                t = t.assign(_b=[_num(b) or 0.0 for b in t["gate_bias"]]).sort_values("_b")
                return t["_b"].tolist(), t["mean"].tolist()
            b, r = series(sub)
            ax.plot(b, r, marker="o", color=colors(i), label=f"fitted ‖∂L/∂h‖ rate, input scale {s:g}")
            if cell == "lstm":
                bc, rc = series(fit_c)
                ax.plot(bc, rc, marker="s", ls="none", mfc="none", color=colors(i), ms=9,
                        label=f"fitted ‖∂L/∂c‖ rate, input scale {s:g}")
            bp, rp = series(pred)
            ax.plot(bp, rp, ls="--", color=colors(i), lw=1,
                    label=f"direct path RMS({'f' if cell == 'lstm' else 'z'}), input scale {s:g}")
        ax.set_xlabel(f"{GATE[cell]}-gate bias offset b (added to b_ih)")
        ax.set_ylabel("per-step rate r (1 = no decay)")
        ax.set_title(f"{CELL_TITLES[cell]}: rate vs {GATE[cell]}-gate bias")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, fig_dir, "gradients_rate_vs_bias.png")


def _fig_param_norm(df, fig_dir: str) -> Optional[str]:
    sel = df[(df["metric"].isin(["param_grad_norm", "clipped_norm"])) & (df["status"] == "ok") &
             (df["backend"] == "numpy")]
    if not len(sel) or "T_eval" not in sel.columns:
        return None
    if "seed" in sel.columns:
        sel = sel[sel["seed"] == sel["seed"].min()]
    cells = [c for c in CELL_ORDER if (sel["cell"] == c).any()]
    plt = _plt()
    fig, axes = plt.subplots(1, len(cells), figsize=(4.3 * len(cells), 3.8), squeeze=False)
    cmap = plt.get_cmap("viridis")
    clip = None
    for j, cell in enumerate(cells):
        ax = axes[0][j]
        sub = sel[sel["cell"] == cell]
        settings = sorted({(r["setting"], _num(r.get("input_scale"))) for _, r in sub.iterrows()},
                          key=lambda t: (t[1] or 0, t[0]))
        # Keep the figure readable: the largest input scale only.
        top = max((s for _, s in settings if s is not None), default=None)
        settings = [t for t in settings if t[1] == top]
        for n, (st, s) in enumerate(settings):
            color = cmap(n / max(1, len(settings) - 1) * 0.9)
            for metric, ls, lab in (("param_grad_norm", "-", ""), ("clipped_norm", ":", " clipped")):
                t = sub[(sub["setting"] == st) & (sub["metric"] == metric)].sort_values("T_eval")
                if len(t):
                    ax.loglog(t["T_eval"].astype(float), t["value"].astype(float), ls=ls, marker="o" if not lab else None,
                              color=color, label=(st.split("-s")[0] if not lab else None), ms=4)
            if "clip_threshold" in sub.columns:
                clip = _num(sub["clip_threshold"].dropna().iloc[0]) if sub["clip_threshold"].notna().any() else clip
        if clip is not None:
            ax.axhline(clip, color="red", lw=0.8, ls="--", label=f"clip threshold {clip:g}")
        ax.set_xlabel("sequence length T (loss on the last step)")
        ax.set_ylabel("‖∂L/∂θ‖ (dotted: after clipping)")
        ax.set_title(f"{CELL_TITLES[cell]}, input scale {top:g}" if top is not None else CELL_TITLES[cell])
        readable_log_axes(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, fig_dir, "gradients_param_norm.png")


# -- tables --------------------------------------------------------------------------------------------

def _rnn_table(df):
    import pandas as pd

    fit = df[(df["metric"] == "decay_rate") & (df["status"] == "ok") & (_col(df, "kind") != "agree") &
             (df["dtype"] == "float64") & (df["cell"].isin(["rnn_tanh", "rnn_relu", "linear"]))]
    if not len(fit):
        return None
    rows = []
    keys = ["cell", "setting"]
    for (cell, setting), grp in fit.groupby(keys, sort=False):
        def pick(metric, col="value"):
            m = df[(df["metric"] == metric) & (df["cell"] == cell) & (df["setting"] == setting) &
                   (df["dtype"] == "float64") & (_col(df, "kind") != "agree") & (df["status"] == "ok")]
            v = [_num(x) for x in m[col]] if col in m.columns else []
            v = [x for x in v if x is not None]
            return float(np.mean(v)) if v else None
        r0 = grp.iloc[0]
        verdict = df[(df["metric"] == "pascanu_sufficient_vanish") & (df["cell"] == cell) & (df["setting"] == setting)]
        rate = float(grp["value"].astype(float).mean())
        rows.append({
            "cell": CELL_TITLES.get(cell, cell),
            "init": "default" if _num(r0.get("rho")) is None else f"ρ·Q, ρ={_num(r0.get('rho')):g}",
            "input scale": _num(r0.get("input_scale")),
            "σ_max": pick("sigma_max"),
            "fitted rate": rate,
            "± (fit s.e.)": float(grp["rate_err"].astype(float).mean()) if "rate_err" in grp else None,
            "predicted": pick("predicted_rate"),
            "rel. error": pick("rate_rel_error"),
            "window k": "–".join(str(int(v)) for v in r0["window"]) if isinstance(r0.get("window"), list) else "",
            "Pascanu: σ_max<1/γ (vanish guaranteed)": ("yes" if pick("pascanu_sufficient_vanish") else "no")
            if len(verdict) else "-",
            "σ_max>1/γ (explode possible)": ("yes" if pick("pascanu_necessary_explode") else "no") if len(verdict) else "-",
            "observed": "explodes" if rate > 1 + 1e-9 else "vanishes" if rate < 1 - 1e-9 else "neither (r = 1)",
        })
    t = pd.DataFrame(rows)
    t["_o"] = t["cell"].map({CELL_TITLES[c]: i for i, c in enumerate(("rnn_tanh", "rnn_relu", "linear"))})
    return t.sort_values(["_o", "input scale"], kind="stable").drop(columns="_o")


def _gate_table(df):
    import pandas as pd

    fit = df[(df["metric"] == "decay_rate") & (df["status"] == "ok") & (_col(df, "kind") == "sweep") &
             (df["dtype"] == "float64") & (df["cell"].isin(["lstm", "gru"]))]
    if not len(fit):
        return None
    rows = []
    for (cell, setting), grp in fit.groupby(["cell", "setting"], sort=False):
        def pick(metric):
            m = df[(df["metric"] == metric) & (df["cell"] == cell) & (df["setting"] == setting) &
                   (df["dtype"] == "float64") & (_col(df, "kind") == "sweep") & (df["status"] == "ok")]
            v = [x for x in (_num(a) for a in m["value"]) if x is not None]
            return float(np.mean(v)) if v else None
        g = GATE[cell]
        r0 = grp.iloc[0]
        rows.append({"cell": CELL_TITLES[cell], f"gate bias": _num(r0.get("gate_bias")),
                     "input scale": _num(r0.get("input_scale")),
                     "mean gate (f̄ or z̄)": pick(f"mean_{g}_gate"), "1/(1−gate) steps": pick(f"{g}_time"),
                     "fitted rate ‖∂L/∂h‖": float(grp["value"].astype(float).mean()),
                     "fitted rate ‖∂L/∂c‖": pick("decay_rate_c"),
                     "memory time −1/ln r (steps)": pick("memory_time"),
                     "direct-path RMS(gate)": pick("predicted_rate")})
    t = pd.DataFrame(rows)
    return t.sort_values(["cell", "input scale", "gate bias"], kind="stable")


def _health_table(df):
    import pandas as pd

    c = df[df["metric"].isin(["grad_norm_h", "grad_norm_c"])]
    if not len(c):
        return None
    rows = []
    for _, r in c.iterrows():
        u, o, z = _num(r.get("underflow_step")), _num(r.get("overflow_step")), _num(r.get("zero_step"))
        if u is None and o is None and z is None:
            continue
        rows.append({"backend": r["backend"], "cell": CELL_TITLES.get(r["cell"], r["cell"]), "state": r["metric"][-1],
                     "setting": r.get("setting"),
                     "dtype": r["dtype"], "underflow at k": "-" if u is None else int(u),
                     "non-finite at k": "-" if o is None else int(o),
                     "exactly zero at k": "-" if z is None else int(z),
                     "forward overflow at t": "-" if _num(r.get("forward_nonfinite_step")) is None
                     else int(r.get("forward_nonfinite_step"))})
    if not rows:
        return None
    return pd.DataFrame(rows).drop_duplicates()


def _agree_table(df):
    import pandas as pd

    a = df[df["metric"] == "backend_max_rel_diff"]
    if not len(a):
        return None
    rows = [{"backend": r["backend"], "cell": CELL_TITLES.get(r["cell"], r["cell"]), "dtype": r["dtype"],
             "setting": r.get("setting"), "max rel. diff vs numpy": _num(r["value"]),
             "at": f"{r.get('at_state')}, k={int(_num(r.get('at_k')) or 0)}", "allowed": _num(r.get("threshold")),
             "pass": "yes" if (_num(r["value"]) is not None and _num(r["value"]) <= (_num(r.get("threshold")) or 0))
             else "NO"} for _, r in a.iterrows()]
    return pd.DataFrame(rows)


def _exact_table(df):
    """Per gated linear case: the largest relative difference from dh_T ⊙ Π a_t and the forgetting times."""
    import pandas as pd

    g = df[_col(df, "kind") == "gated"]
    err = g[g["metric"] == "exact_product_rel_err"]
    if not len(err):
        return None

    def pick(r, metric):
        m = g[(g["metric"] == metric) & (g["backend"] == r["backend"]) & (g["cell"] == r["cell"]) &
              (g["dtype"] == r["dtype"])]
        return _num(m["value"].iloc[0]) if len(m) else None

    rows = [{"backend": r["backend"], "cell": CELL_TITLES.get(r["cell"], r["cell"]), "dtype": r["dtype"],
             "T": int(r["seq_len"]), "max rel. diff": _num(r["value"]), "allowed": _num(r.get("threshold")),
             "forgets in (steps)": pick(r, "forget_steps"),
             "-1/mean log a": pick(r, "forget_steps_gate_mean"),
             "slowest unit": pick(r, "forget_steps_slowest_unit")} for _, r in err.iterrows()]
    return pd.DataFrame(rows)


def _checks_table(df):
    import pandas as pd

    c = df[df["metric"].astype(str).str.startswith("check_")]
    if not len(c):
        return None, c
    t = c.groupby("metric").agg(passed=("status", lambda s: int((s == "ok").sum())),
                                failed=("status", lambda s: int((s != "ok").sum()))).reset_index()
    return t, c[c["status"] != "ok"]


# -- the paragraph -------------------------------------------------------------------------------------

def _paragraph(df) -> str:
    s: List[str] = []
    rt = _rnn_table(df)
    if rt is not None:
        tanh_small = rt[(rt["cell"] == CELL_TITLES["rnn_tanh"]) & (rt["init"] != "default") &
                        (rt["input scale"] <= 0.1)]
        if len(tanh_small) and tanh_small["rel. error"].notna().any():
            worst = tanh_small.loc[tanh_small["rel. error"].abs().idxmax()]
            s.append(f"For the tanh RNN with W_hh = ρ·Q and small inputs (input drive RMS ≤ 0.1), the fitted per-step "
                     f"rate follows the theory ρ·RMS(tanh'(a_t)) computed from the same forward pass within "
                     f"{100 * tanh_small['rel. error'].abs().max():.2g} % over ρ = "
                     f"{', '.join(i.split('=')[1] for i in tanh_small['init'])} (worst: {worst['init']}, fitted "
                     f"{worst['fitted rate']:.4f} vs {worst['predicted']:.4f}).")
        tanh = rt[rt["cell"] == CELL_TITLES["rnn_tanh"]]
        r15 = tanh[tanh["init"] == "ρ·Q, ρ=1.5"]
        if len(r15) >= 2:
            lo, hi = r15.iloc[0], r15.iloc[-1]
            s.append(f"Saturation: with ρ = 1.5 the gradient {'grows' if lo['fitted rate'] > 1 else 'decays'} by "
                     f"{lo['fitted rate']:.3f} per step at input scale {lo['input scale']:g} but "
                     f"{'decays' if hi['fitted rate'] < 1 else 'grows'} by {hi['fitted rate']:.3f} at input scale "
                     f"{hi['input scale']:g}, because large inputs push tanh into saturation and shrink RMS(tanh').")
        if "Pascanu: σ_max<1/γ (vanish guaranteed)" in rt.columns:
            rnn = rt[rt["cell"].isin([CELL_TITLES["rnn_tanh"], CELL_TITLES["rnn_relu"]])]
            suff = rnn[rnn["Pascanu: σ_max<1/γ (vanish guaranteed)"] == "yes"]
            nec = rnn[rnn["σ_max>1/γ (explode possible)"] == "yes"]
            if len(rnn):
                s.append(f"Pascanu et al.'s sufficient condition for vanishing (σ_max < 1/γ, γ = 1 for tanh and ReLU) "
                         f"held in {len(suff)} of {len(rnn)} RNN settings, and all of them vanished "
                         f"({int((suff['observed'] == 'vanishes').sum())}/{len(suff)}); the necessary condition for "
                         f"exploding held in {len(nec)}, of which only {int((nec['observed'] == 'explodes').sum())} "
                         f"exploded — the condition is loose (PyTorch's default init has σ_max > 1 yet vanishes).")
    gt = _gate_table(df)
    if gt is not None:
        for cell in ("LSTM", "GRU"):
            sub = gt[gt["cell"] == cell]
            if not len(sub):
                continue
            top = sub[sub["input scale"] == sub["input scale"].max()].sort_values("gate bias")
            if len(top) >= 2:
                a, b = top.iloc[0], top.iloc[-1]
                gate = "forget" if cell == "LSTM" else "update"
                s.append(f"{cell}: raising the {gate}-gate bias from {a['gate bias']:g} to {b['gate bias']:g} moves the "
                         f"per-step rate from {a['fitted rate ‖∂L/∂h‖']:.3f} to {b['fitted rate ‖∂L/∂h‖']:.3f} "
                         f"(memory time {_fmt(a['memory time −1/ln r (steps)'], '.3g')} → "
                         f"{_fmt(b['memory time −1/ln r (steps)'], '.3g')} steps; 1/(1 − mean gate) "
                         f"{_fmt(a['1/(1−gate) steps'], '.3g')} → {_fmt(b['1/(1−gate) steps'], '.3g')}).")
    ht = _health_table(df)
    if ht is not None:
        f32 = ht[(ht["dtype"] == "float32") & (ht["underflow at k"] != "-") & (ht["backend"] == "numpy")]
        if len(f32):
            ks = [int(v) for v in f32["underflow at k"]]
            s.append(f"In float32 the gradient underflows (every entry subnormal or zero) after {min(ks)}–{max(ks)} "
                     f"steps back in {len(f32)} decaying settings; those curves are marked and end there (they are "
                     f"recorded with status `{_stop_status(df)}` and NaN beyond, never as zeros). float64 reaches "
                     f"its own floor only at the fastest decays.")
    at = _agree_table(df)
    if at is not None and at["max rel. diff vs numpy"].notna().any():
        good, bad = at[at["pass"] == "yes"], at[at["pass"] != "yes"]
        if len(good):
            w = good.loc[good["max rel. diff vs numpy"].idxmax()]
            s.append(f"Across the {len(good)} backend curves that agree with the NumPy reference, the largest relative "
                     f"difference of the adjoint vectors is {w['max rel. diff vs numpy']:.2g} ({w['backend']}, "
                     f"{w['cell']}, {w['dtype']}).")
        if len(bad):
            s.append(f"{len(bad)} backend curve(s) disagree beyond the tolerance: "
                     + "; ".join(f"{r['backend']} {r['cell']} {r['dtype']} ({r['max rel. diff vs numpy']:.2g} at "
                                 f"{r['at']})" for _, r in bad.iterrows()) + " — see the failed checks below.")
    pg = df[(df["metric"] == "param_grad_norm") & (df["status"] == "ok")]
    if len(pg) and "T_eval" in pg.columns:
        grow = []
        for (cell, setting), g in pg.groupby(["cell", "setting"]):
            g = g.sort_values("T_eval")
            if len(g) >= 2:
                grow.append(float(g["value"].iloc[-1]) / float(g["value"].iloc[0]))
        if grow:
            s.append(f"‖∂L/∂θ‖ from the shortest to the longest T changes by a factor between {min(grow):.3g} and "
                     f"{max(grow):.3g} across settings: it converges where state gradients vanish and grows "
                     f"where they explode; clipping caps it at the threshold.")
    return " ".join(s)


# -- the section ---------------------------------------------------------------------------------------

def section(df, fig_dir: str, **opts: Any) -> str:
    """The Markdown of the gradients section (figures written to ``fig_dir``)."""
    lines = [f"## {H_SECTION}", ""]
    if df is None or not len(df):
        return "\n".join(lines + ["_No gradient rows._"])
    df = df.copy()
    for c in ("kind", "setting", "cell", "dtype", "backend"):
        if c not in df.columns:
            df[c] = None
    lines.append("L = <dh_T, h_T> with a fixed random unit cotangent; ‖∂L/∂h_{T−k}‖ is the Frobenius norm over "
                 "(batch, hidden) k steps back. The rate r is the per-step factor of a least-squares line through "
                 "log‖g_k‖ (‖g_k‖ ∝ r^k; r < 1 vanishes, r > 1 explodes), fitted after a 10-step transient up to "
                 "the last finite point. Theory for tanh/ReLU: σ_rms(W_hh)·RMS(f'(a_t)) per step, from the same "
                 "forward pass (σ_rms = ρ for W_hh = ρ·Q). Input scale s: the input drive W_ih x_t has RMS s.")
    para = _paragraph(df)
    if para:
        lines += ["", para]
    rel = opts.get("run_dir")
    figs = []
    for fn, caption in ((_fig_curves, "Gradient norm against steps back"),
                        (_fig_rate_vs_rho, "Fitted rate against ρ with the theory"),
                        (_fig_heatmap, "log10 gradient norm over (ρ, k)"),
                        (_fig_rate_vs_bias, "LSTM/GRU rate against the gate bias"),
                        (_fig_param_norm, "Parameter-gradient norm against T"),
                        (_fig_gated, "Gated linear cells beside LSTM and GRU"),
                        (_fig_float32, "Linear recurrence and float32 underflow")):
        try:
            name = fn(df, fig_dir)
        except Exception as e:  # noqa: BLE001 - one failed figure must not cost the section
            lines += ["", f"_{caption}: figure failed ({type(e).__name__}: {e})_"]
            continue
        if name:
            path = os.path.join(fig_dir, name)
            ref = os.path.relpath(path, rel) if rel else os.path.join(os.path.basename(fig_dir.rstrip(os.sep)), name)
            figs.append(f"![{caption}]({ref})")
    if figs:
        lines += ["", "### Figures", ""] + [f + "\n" for f in figs]
    for title, table, note in (
            (H_RATES, _rnn_table(df),
             "Pascanu et al. (2013): σ_max < 1/γ guarantees vanishing; σ_max > 1/γ is necessary for exploding."),
            (H_GATES, _gate_table(df),
             "Direct-path RMS(gate) ignores the recurrent path through the gates: a rough guide, not a check."),
            (H_HEALTH, _health_table(df), ""),
            (H_AGREE, _agree_table(df), ""),
            (H_EXACT, _exact_table(df),
             "For h_t = a_t ⊙ h_{t−1} + u_t the Jacobian ∂h_t/∂h_{t−1} is diag(a_t): ‖∂L/∂h_{T−k}‖ is known exactly "
             "from the gates, so the check is agreement, not a fit. 'forgets in': first k with ‖g_k‖ < ‖g_0‖/e "
             "(empty: not within T); beside it −1/⟨log a⟩ over all units and for the slowest unit.")):
        if table is not None and len(table):
            lines += ["", f"### {title}", ""]
            if note:
                lines += [note, ""]
            lines.append(md_table(table, floatfmt=".4g"))
    ct, failed = _checks_table(df)
    if ct is not None:
        lines += ["", f"### {H_CHECKS}", "", md_table(ct)]
        if len(failed):
            lines += ["", "Failed checks:", ""]
            for _, r in failed.head(30).iterrows():
                lines.append(f"- `{r['metric']}` {r['cell']} {r.get('setting') or ''} ({r['backend']}, {r['dtype']}): "
                             f"{r['reason']}")
        else:
            lines += ["", "All checks passed."]
    return "\n".join(lines)


# -- findings ------------------------------------------------------------------------------------------

def _stop_status(df) -> str:
    """The status this run gives a curve that stopped at a float limit: ``limit``, or ``error`` in old runs."""
    c = df[df["metric"].isin(["grad_norm_h", "grad_norm_c"])]
    return "limit" if (c["status"] == "limit").any() or not (c["status"] == "error").any() else "error"


def _pct(v: float) -> str:
    return f"{100 * v:.2g} %"


def _check_counts(df, metric: str):
    c = df[df["metric"] == metric]
    return int((c["status"] == "ok").sum()), len(c)


def findings(df, **opts: Any) -> List[str]:
    """Headline bullets of the gradients rows (see the module docstring); [] without gradient rows."""
    if df is None or not len(df):
        return []
    df = df.copy()
    for c in ("kind", "setting", "cell", "dtype", "backend"):
        if c not in df.columns:
            df[c] = None
    if "suite" in df.columns:
        df = df[df["suite"] == "gradients"]
    out: List[str] = []
    rt = _rnn_table(df)
    if rt is not None and len(rt) and rt["rel. error"].notna().any():
        tanh_small = rt[(rt["cell"] == CELL_TITLES["rnn_tanh"]) & (rt["init"] != "default") &
                        (rt["input scale"] <= 0.1) & rt["rel. error"].notna()]
        n_ok, n = _check_counts(df, "check_tanh_rate_theory")
        thr = df[df["metric"] == "check_tanh_rate_theory"]["threshold"] if "threshold" in df.columns else []
        thr = [float(t) for t in thr if t == t and t is not None]
        parts = []
        if len(tanh_small):
            rhos = [i.split("=")[1] for i in tanh_small["init"]]
            parts.append(f"tanh RNN (W_hh = ρ·Q, ρ = {rhos[0]}–{rhos[-1]}, small inputs) within "
                         f"{_pct(float(tanh_small['rel. error'].abs().max()))} of ρ·RMS(tanh')"
                         + (f" — {'**all ' if n_ok == n else '**'}{n_ok} of {n}** within ±{_pct(max(thr))}"
                            if n and thr else ""))
        judged = rt[rt["rel. error"].notna() & (rt["cell"] != "linear")]
        if len(judged):
            w = judged.loc[judged["rel. error"].abs().idxmax()]
            parts.append(f"over all {len(judged)} vanilla-RNN settings median |error| "
                         f"{_pct(float(judged['rel. error'].abs().median()))}, worst {_pct(abs(float(w['rel. error'])))} "
                         f"({w['cell']}, {w['init']}, input scale {w['input scale']:g})")
        if parts:
            out.append(f"- {link('Rates against theory', H_RATES)}: fitted per-step rate of ‖∂L/∂h_(T−k)‖ vs "
                       "σ_rms·RMS(f') from the same forward pass: " + "; ".join(parts) + ".")
    lin = df[df["metric"] == "check_linear_exact"]
    if len(lin):
        n_ok, n = _check_counts(df, "check_linear_exact")
        err = [x for x in (_num(v) for v in _col(lin, "max_rel_err")) if x is not None]
        thr = [x for x in (_num(v) for v in _col(lin, "threshold")) if x is not None]
        out.append(f"- {link('Linear recurrence', H_RATES)} ‖g_k‖ vs ρ^k: "
                   + (f"max relative error {short(max(err))}" if err else "")
                   + (f" (allowed {sci(max(thr))})" if thr else "")
                   + f" — {'**all ' if n_ok == n else '**'}{n_ok} of {n}** settings exact.")
    at = _agree_table(df)
    if at is not None and at["max rel. diff vs numpy"].notna().any():
        good, bad = at[at["pass"] == "yes"], at[at["pass"] != "yes"]
        bks = ", ".join(sorted(set(at["backend"])))
        line = (f"- {link('Backends agree', H_AGREE)} with NumPy ({bks}): {len(good)} of {len(at)} curves within "
                f"tolerance, max relative difference "
                f"{short(at['max rel. diff vs numpy'].max())}")
        if len(bad):
            line += " — **disagree**: " + "; ".join(
                f"{r['backend']} {r['cell']} {r['dtype']} ({r['max rel. diff vs numpy']:.2g} at {r['at']})"
                for _, r in bad.head(4).iterrows())
        out.append(line + ".")
    ct, failed = _checks_table(df)
    if ct is not None and len(ct):
        total = int(ct["passed"].sum() + ct["failed"].sum())
        if len(failed):
            names = ", ".join(f"{m} ({int(k)})" for m, k in failed.groupby("metric").size().items())
            out.append(f"- {link('Checks', H_CHECKS)}: **{len(failed)} of {total} fail**: {names}.")
        else:
            top = ct.sort_values("passed", ascending=False, kind="stable")
            kinds = [f"{m.replace('check_', '').replace('_', ' ')} {int(p)}" for m, p in
                     zip(top["metric"][:3], top["passed"][:3])]
            more = f", and {len(ct) - 3} more kinds" if len(ct) > 3 else ""
            out.append(f"- {link('Checks', H_CHECKS)}: **all {total} pass** (" + ", ".join(kinds) + more + ").")
    ht = _health_table(df)
    if ht is not None:
        bits = []
        for dtype in ("float32", "float64"):
            u = ht[(ht["dtype"] == dtype) & (ht["underflow at k"] != "-")]
            o = ht[(ht["dtype"] == dtype) & (ht["non-finite at k"] != "-")]
            got = []
            if len(u):
                ks = [int(v) for v in u["underflow at k"]]
                got.append(f"{len(u)} curve(s) underflow after {min(ks)}–{max(ks)} steps back")
            if len(o):
                ks = [int(v) for v in o["non-finite at k"]]
                got.append(f"{len(o)} overflow after {min(ks)}–{max(ks)}")
            if got:
                bits.append(f"{dtype}: " + ", ".join(got))
        if bits:
            out.append(f"- {link('Float limits', H_HEALTH)}: " + "; ".join(bits)
                       + " — vanishing and exploding gradients leaving the dtype's range, recorded as such "
                       "(not failures).")
    return out
