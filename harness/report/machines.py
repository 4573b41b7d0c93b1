"""The machine dimension of a report: several runs (or one run whose rows came from several hosts) -> one
report that puts the machines side by side.

``rnnbench report RUN [RUN ...] --out DIR`` writes ``DIR/report.md`` and ``DIR/report.html`` with:

- **Findings**: per machine its rows and failures; per suite and pair of machines the geometric-mean speed-up
  over the timings both measured, with its range;
- **Machines**: one row per machine (CPU, cores, GPU, memory, device, threads, preset, commit, run);
- **Timings across machines**: per suite, a row per timing (case, backend, mode, metric) with the median on each
  machine and the speed-up of each machine against the first;
- **Correctness across machines**: per suite and machine the checks that passed and those that did not.

A machine is what a row says it ran on (``host`` in a row, as a cluster run records it), else its run's machine
from ``meta.json`` (CPU or GPU model, device, threads: two runs on one machine with different thread counts
are two columns). Labels are made unique with the run id where two runs would read alike. Nothing here judges:
a speed difference between two machines is what one compares them for (``rnnbench compare --across-machines``
says the same of two runs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from harness.measure.format import md_table
from harness.measure.records import IDENTITY_EXTRAS, PER_CONTROL, machine_key

#: Units of the rows compared as timings (lower is better).
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
#: Timing metrics that are single first-call values, not medians of repeats: left out.
SINGLE_VALUE = frozenset({"compile_s"})
#: Statuses that are failures (not skips or float limits).
FAILED = ("error", "timeout", "oom")
#: At most this many timing rows per suite are tabled (the rest are counted).
MAX_ROWS_PER_SUITE = 60


@dataclass(frozen=True)
class Machine:
    """One column of the report: where a run's rows were measured."""

    label: str
    run_id: str
    meta: Dict[str, Any]

    @property
    def key(self) -> str:
        return machine_key(self.meta)


def _plain(v: Any) -> str:
    return " ".join(str(v).split())[:80]


def machine_label(meta: Dict[str, Any]) -> str:
    """A short name for the machine a run used: the GPU model on a GPU run, else the CPU model; the device and
    the thread count."""
    m = meta.get("machine") if isinstance(meta.get("machine"), dict) else {}
    device = str(meta.get("device") or "cpu")
    what = m.get("gpu_name") if device != "cpu" and m.get("gpu_name") else m.get("cpu")
    threads = meta.get("threads")
    parts = [_plain(what or "unknown machine"), device]
    if isinstance(threads, int) and not isinstance(threads, bool):
        parts.append(f"{threads} thread" + ("s" if threads != 1 else ""))
    return " · ".join(parts)


def machines_of(runs: Sequence[Tuple[str, Dict[str, Any]]]) -> List[Machine]:
    """One :class:`Machine` per run (``(run_id, meta)`` in order); a label two runs share gets the run id."""
    labels = [machine_label(meta) for _, meta in runs]
    out = []
    for (run_id, meta), label in zip(runs, labels):
        if labels.count(label) > 1:
            label = f"{label} ({_plain(run_id)})"
        out.append(Machine(label, str(run_id), meta))
    return out


def host_label(host: Any, model: Any) -> str:
    """The label of a cluster host: its name and its GPU or CPU model."""
    return f"{_plain(host)} ({_plain(model)})" if model not in (None, "") and model == model else _plain(host)


def tag_rows(df, machine: Machine):
    """``df`` with a ``machine`` column: a row's own host where it has one (a cluster run: ``host`` and its
    ``host_gpu`` or ``host_cpu``), else the run's machine."""
    df = df.copy()
    if "host" not in df.columns:
        df["machine"] = machine.label
        return df
    labels = []
    for rec in df.to_dict("records"):
        h = rec.get("host")
        if h is None or h != h or str(h) == "":
            labels.append(machine.label)
            continue
        gpu, cpu = rec.get("host_gpu"), rec.get("host_cpu")
        labels.append(host_label(h, gpu if isinstance(gpu, str) and gpu else cpu))
    df["machine"] = labels
    return df


def machine_order(df) -> List[str]:
    """The machines of ``df`` in the order they first appear (the first is the one speed-ups are against)."""
    return list(dict.fromkeys(str(m) for m in df["machine"]))


def _identity(df) -> List[str]:
    return ["suite", "case", "backend", "dtype", "metric"] + [c for c in IDENTITY_EXTRAS if c in df.columns]


def timing_table(df, order: Sequence[str]):
    """Median of every repeated timing per identity (rows) and machine (columns, in ``order``), in seconds."""
    import pandas as pd

    ok = df[(df["status"].fillna("ok") == "ok") & df["unit"].isin(list(TIME_UNITS))
            & ~df["metric"].astype(str).str.endswith(PER_CONTROL) & ~df["metric"].isin(list(SINGLE_VALUE))]
    if "n" in ok.columns:  # a timing is a median of repeats; a row without samples is a single value
        ok = ok[pd.to_numeric(ok["n"], errors="coerce").fillna(0) > 1]
    if not len(ok):
        return pd.DataFrame()
    ok = ok.copy()
    ok["seconds"] = ok["value"].astype(float) * ok["unit"].map(TIME_UNITS).astype(float)
    ident = [c for c in _identity(ok)]
    for c in ident:
        ok[c] = ok[c].astype(object).where(ok[c].notna(), "")
    wide = ok.pivot_table(index=ident, columns="machine", values="seconds", aggfunc="median")
    cols = [m for m in order if m in wide.columns]
    return wide[cols]


def speedups(wide, first: str, other: str) -> np.ndarray:
    """Per timing measured on both: time on ``first`` / time on ``other`` (> 1: ``other`` is faster)."""
    both = wide[[first, other]].dropna()
    both = both[(both[first] > 0) & (both[other] > 0)]
    return (both[first] / both[other]).to_numpy(dtype=float)


def _fmt_time(s: float) -> str:
    if not (isinstance(s, float) and math.isfinite(s)):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale or unit == "µs":
            return f"{s / scale:.3g} {unit}"
    return f"{s:.3g} s"


def _geo(x: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(x)))) if len(x) else math.nan


def findings(df) -> List[str]:
    """Bullet lines: what each machine ran, and per suite how much faster each machine ran than the first."""
    out = []
    present = machine_order(df)
    for lab in present:
        st = df.loc[df["machine"] == lab, "status"].fillna("ok")
        bad = int(st.isin(FAILED).sum())
        out.append(f"- *{lab}*: {len(st)} rows, {int((st == 'ok').sum())} ok, "
                   + (f"**{bad} failed**" if bad else "no failures")
                   + (f", {int((st == 'skipped').sum())} skipped" if (st == "skipped").any() else "") + ".")
    if len(present) < 2:
        return out
    for suite in sorted(df["suite"].dropna().unique()):
        wide = timing_table(df[df["suite"] == suite], present)
        if wide.empty or present[0] not in wide.columns:
            continue
        for other in present[1:]:
            if other not in wide.columns:
                continue
            r = speedups(wide, present[0], other)
            if not len(r):
                continue
            g = _geo(r)
            word = "faster" if g >= 1 else "slower"
            out.append(f"- [{suite}](#timings-across-machines): *{other}* ran {max(g, 1 / g):.2f}× {word} than "
                       f"*{present[0]}* (geometric mean over the {len(r)} timings both measured; per timing "
                       f"{r.min():.2f}–{r.max():.2f}× as fast).")
    return out


def machines_table(machines: Sequence[Machine], df) -> str:
    """``## Machines``: one row per machine of ``df`` (a run's machine, or a cluster run's host)."""
    import pandas as pd

    by_label = {m.label: (m, (m.meta.get("machine") if isinstance(m.meta.get("machine"), dict) else {}))
                for m in machines}
    hosts = {}
    for m in machines:  # a cluster run's hosts, by the label their rows carry
        for name, info in (m.meta.get("hosts") or {}).items() if isinstance(m.meta.get("hosts"), dict) else ():
            mm = (info or {}).get("machine") if isinstance(info, dict) else None
            if isinstance(mm, dict):
                hosts[host_label(name, mm.get("gpu_name") or mm.get("cpu"))] = (m, mm)
    rows = []
    for lab in machine_order(df):
        m, mm = by_label.get(lab) or hosts.get(lab) or (None, {})
        meta = m.meta if m is not None else {}
        mem = mm.get("memory_bytes")
        rows.append({"machine": lab, "host": _plain(mm.get("hostname") or "-"), "CPU": _plain(mm.get("cpu") or "-"),
                     "cores": mm.get("cores", "-"), "GPU": _plain(mm.get("gpu_name") or "-"),
                     "memory": f"{float(mem) / 2**30:.0f} GiB" if isinstance(mem, (int, float)) else "-",
                     "device": _plain(meta.get("device") or "-"), "threads": meta.get("threads", "-"),
                     "preset": _plain(meta.get("preset") or "-"),
                     "commit": _plain(str(meta.get("git_commit") or "-")[:12]),
                     "run": _plain(m.run_id) if m is not None else "-"})
    return "\n".join(["## Machines", "", md_table(pd.DataFrame(rows), floatfmt="g")])


def timings_section(df) -> str:
    """``## Timings across machines``: per suite the median per machine and each machine's speed-up."""
    labels = machine_order(df)
    lines = ["## Timings across machines", "",
             f"Medians of repeated timings; `×` columns: time on *{labels[0]}* / time on that machine (> 1: that "
             "machine is faster). A blank: that machine did not measure it."]
    for suite in sorted(df["suite"].dropna().unique()):
        wide = timing_table(df[df["suite"] == suite], labels)
        if wide.empty or len(wide.columns) < 1:
            continue
        tab = wide.reset_index()
        keep = [c for c in tab.columns if c not in labels and c not in ("suite",) and tab[c].astype(str).ne("").any()]
        show = tab[keep].copy()
        for lab in labels:
            if lab in tab.columns:
                show[lab] = [_fmt_time(float(v)) if v == v else "" for v in tab[lab]]
        first = labels[0] if labels[0] in tab.columns else None
        for lab in labels[1:]:
            if first and lab in tab.columns:
                r = tab[first] / tab[lab]
                show[f"× {lab}"] = [f"{v:.2f}" if v == v and math.isfinite(v) else "" for v in r]
        more = len(show) - MAX_ROWS_PER_SUITE
        lines += ["", f"### {suite}", "", md_table(show.head(MAX_ROWS_PER_SUITE), floatfmt="g")]
        if more > 0:
            lines.append(f"\n_{more} more timing(s) of {suite} not shown._")
    if len(lines) == 3:
        lines.append("\n_No timing was measured on more than one machine._")
    return "\n".join(lines)


def correctness_section(df) -> str:
    """``## Correctness across machines``: per suite and machine, rows ok / failed / skipped / at float limits."""
    import pandas as pd

    st = df["status"].fillna("ok")
    kind = st.where(~st.isin(FAILED), "failed")
    tab = pd.crosstab([df["suite"].fillna("?"), df["machine"]], kind).reset_index()
    order = {lab: i for i, lab in enumerate(machine_order(df))}
    tab["_o"] = tab["machine"].map(lambda x: order.get(x, len(order)))
    tab = tab.sort_values(["suite", "_o"]).drop(columns="_o")
    lines = ["## Correctness across machines", "",
             "Rows per status on each machine (`failed`: error, timeout or out of memory; `limit`: a float "
             "under/overflow recorded as such). Each run's own report (`rnnbench report RUN`) lists the rows.", "",
             md_table(tab, floatfmt="g")]
    return "\n".join(lines)


def tag_all(frames: Sequence[Any], machines: Sequence[Machine]):
    """One frame of every run's rows, each tagged with its machine (:func:`tag_rows`)."""
    import pandas as pd
    return pd.concat([tag_rows(f, m) for f, m in zip(frames, machines)], ignore_index=True, sort=False)

