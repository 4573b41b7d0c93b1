"""Statistics shared by ``compare`` and the gate: bootstrap intervals, rank tests, ratios of medians.

scipy.stats does the tests; the bootstraps are seeded so that the same inputs always give the same interval.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 12345


def bootstrap_ratio_ci(base: np.ndarray, new: np.ndarray, confidence: float = 0.95,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Tuple[float, float]:
    """Percentile bootstrap CI of median(new)/median(base), resampling each side independently.

    Seeded, so the same inputs always give the same interval. Resamples are drawn in chunks to bound
    memory when a side holds thousands of samples.
    """
    rng = np.random.default_rng(seed)
    base = np.asarray(base, dtype=float)
    new = np.asarray(new, dtype=float)
    out = np.empty(resamples)
    chunk = max(1, int(4_000_000 // max(len(base), len(new), 1)))
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        mb = np.median(base[rng.integers(0, len(base), (k, len(base)))], axis=1)
        mn = np.median(new[rng.integers(0, len(new), (k, len(new)))], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[start:start + k] = mn / mb
    a = (1 - confidence) / 2
    lo, hi = np.nanpercentile(out, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def mann_whitney_p(base: np.ndarray, new: np.ndarray, alternative: str = "two-sided") -> float:
    """Mann–Whitney U p-value (``alternative='greater'``: new tends to be larger than base)."""
    from scipy.stats import mannwhitneyu
    if len(base) < 2 or len(new) < 2:
        return math.nan
    if np.ptp(np.concatenate([base, new])) == 0:
        return 1.0  # all equal: no evidence of any difference
    return float(mannwhitneyu(new, base, alternative=alternative).pvalue)


def ratio_stats(base: Sequence[float], new: Sequence[float], higher_better: bool = False,
                alternative: str = "two-sided") -> Dict[str, float]:
    """Ratio of medians, its 95 % bootstrap CI and the Mann–Whitney p, normalised so > 1 means worse.

    ``alternative='greater'`` tests only for "new is worse" (what a gate needs).
    """
    b = np.asarray(base, dtype=float)
    n = np.asarray(new, dtype=float)
    b, n = b[np.isfinite(b)], n[np.isfinite(n)]
    if higher_better:  # compare the reciprocals: time per unit of work
        b, n = 1.0 / b, 1.0 / n
    mb, mn = float(np.median(b)), float(np.median(n))
    ratio = mn / mb if mb > 0 else math.nan
    lo, hi = bootstrap_ratio_ci(b, n)
    p = mann_whitney_p(b, n, alternative)
    return {"ratio": ratio, "ci_lo": lo, "ci_hi": hi, "p": p, "n_base": len(b), "n_new": len(n)}


def signed_rank_p(logs: Sequence[float], alternative: str = "greater") -> float:
    """Wilcoxon signed-rank p-value that the values are centred above 0 (``alternative='greater'``).

    For paired comparisons: ``logs`` are log(new/base) ratios of matched pairs (or of whole processes).
    Exact for small samples (scipy's default); zeros carry no evidence and are dropped (Wilcoxon's rule).
    """
    from scipy.stats import wilcoxon
    d = np.asarray(logs, dtype=float)
    d = d[np.isfinite(d) & (d != 0)]
    if len(d) < 2:
        return math.nan
    return float(wilcoxon(d, alternative=alternative).pvalue)


def bootstrap_median_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> Tuple[float, float]:
    """Percentile bootstrap CI of the median of one sample (seeded: same inputs, same interval)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    med = np.median(v[rng.integers(0, len(v), (resamples, len(v)))], axis=1)
    a = (1 - confidence) / 2
    lo, hi = np.percentile(med, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)




#: Fewer independent processes than this on either side: a timing difference cannot be judged.
MIN_PROCESSES = 3


def _usable(g: Sequence[float], higher_better: bool) -> np.ndarray:
    """A process's finite, positive samples (reciprocals for rates: time per unit of work)."""
    a = np.asarray(g, dtype=float)
    a = a[np.isfinite(a) & (a > 0)]
    return 1.0 / a if higher_better else a


def _process_medians(groups: Sequence[Sequence[float]], higher_better: bool) -> List[np.ndarray]:
    return [a for a in (_usable(g, higher_better) for g in groups) if len(a)]


def t_logs_p(base_logs: np.ndarray, new_logs: np.ndarray) -> float:
    """Two-sided two-sample t-test p (pooled variance) of two sets of log values (0 or 1 when neither side varies;
    NaN below 2 each).

    Pooled, not Welch: both sides are per-process values of one measuring procedure on one machine, so their
    spread is the same quantity, and with 3 processes a side Welch's test is left with about 2 degrees of freedom
    where the pooled one has 4 (a 25 % slowdown whose processes agree to 3 % gives p ~ 0.004 with Welch, ~ 1e-4
    pooled)."""
    from scipy.stats import ttest_ind
    if len(base_logs) < 2 or len(new_logs) < 2:
        return math.nan
    if np.ptp(base_logs) == 0 and np.ptp(new_logs) == 0:
        return 1.0 if base_logs.mean() == new_logs.mean() else 0.0
    return float(ttest_ind(new_logs, base_logs, equal_var=True).pvalue)


def process_ratio_stats(base_groups: Sequence[Sequence[float]], new_groups: Sequence[Sequence[float]],
                        higher_better: bool = False, confidence: float = 0.95,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Dict[str, float]:
    """Compare two runs whose samples come in independent processes (one list of samples per process).

    - ``ratio``: median over processes of the per-process medians, new / base (> 1 worse; rates are
      compared through their reciprocals);
    - ``p``: two-sided t-test (pooled variance, :func:`t_logs_p`) on the logs of the per-process medians: the process, not the sample,
      is the unit (samples of one process share its state: clock, caches, memory layout, JIT), so a
      difference must stand out against the spread *between processes* to count;
    - ``ci_lo``/``ci_hi``: hierarchical percentile bootstrap of the ratio (processes resampled, then the
      samples inside each), seeded;
    - ``spread``: pooled standard deviation of the log per-process medians (the noise the test sees);
    - ``procs_base``/``procs_new``: processes on each side. With fewer than 2 on a side ``p`` is NaN.
    """
    b = _process_medians(base_groups, higher_better)
    n = _process_medians(new_groups, higher_better)
    out = {"ratio": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "p": math.nan, "spread": math.nan,
           "procs_base": len(b), "procs_new": len(n)}
    if not b or not n:
        return out
    mb = np.array([np.median(g) for g in b])
    mn = np.array([np.median(g) for g in n])
    out["ratio"] = float(np.median(mn) / np.median(mb))
    lb, ln = np.log(mb), np.log(mn)
    if len(b) >= 2 and len(n) >= 2:
        ss = ((lb - lb.mean()) ** 2).sum() + ((ln - ln.mean()) ** 2).sum()
        out["spread"] = float(math.sqrt(ss / (len(b) + len(n) - 2)))
    out["p"] = t_logs_p(lb, ln)
    rng = np.random.default_rng(seed)

    def boot(groups):  # (resamples,) medians of per-process medians, both levels resampled
        per = np.stack([np.median(g[rng.integers(0, len(g), (resamples, len(g)))], axis=1) for g in groups])
        pick = rng.integers(0, len(groups), (resamples, len(groups)))
        return np.median(np.take_along_axis(per.T, pick, axis=1), axis=1)

    with np.errstate(divide="ignore", invalid="ignore"):
        r = boot(n) / boot(b)
    a = (1 - confidence) / 2
    out["ci_lo"], out["ci_hi"] = (float(x) for x in np.nanpercentile(r, [100 * a, 100 * (1 - a)]))
    return out


def log_diff_stats(base_groups: Sequence[Sequence[float]], new_groups: Sequence[Sequence[float]],
                   higher_better: bool = False) -> Tuple[float, float, int, float, float]:
    """``(d, var, df, nb, nn)`` of the per-process log medians: d = mean(new) − mean(base), var the pooled
    variance of one process's log value, df = nb + nn − 2 (what :func:`t_logs_p` tests), nb/nn the processes.
    NaNs when a side has fewer than 2 processes."""
    b = np.log([np.median(g) for g in _process_medians(base_groups, higher_better)])
    n = np.log([np.median(g) for g in _process_medians(new_groups, higher_better)])
    if len(b) < 2 or len(n) < 2:
        return math.nan, math.nan, 0, float(len(b)), float(len(n))
    df = len(b) + len(n) - 2
    ss = ((b - b.mean()) ** 2).sum() + ((n - n.mean()) ** 2).sum()
    return float(n.mean() - b.mean()), float(ss / df), df, float(len(b)), float(len(n))


def process_variance_floor(variances: Sequence[float], quantile: float = 0.5) -> float:
    """The typical variance of one process's log value among related cases: the ``quantile`` of their pooled
    variances (0 when there are none; 0.5: the median). Used as the least variance any one case's test may
    assume."""
    v = np.asarray([x for x in variances if math.isfinite(x)], dtype=float)
    return float(np.quantile(v, quantile)) if len(v) else 0.0


def t_logs_p_from(d: float, var: float, df: int, nb: float, nn: float) -> float:
    """Two-sided p of a difference ``d`` of mean log values of ``nb`` and ``nn`` processes whose per-process
    variance is ``var`` (t distribution, ``df`` degrees of freedom). NaN when it cannot be computed."""
    from scipy.stats import t as t_dist
    if not (math.isfinite(d) and math.isfinite(var)) or df < 1 or nb < 1 or nn < 1:
        return math.nan
    se = math.sqrt(var * (1 / nb + 1 / nn))
    if se == 0:
        return 1.0 if d == 0 else 0.0
    return float(2 * t_dist.sf(abs(d) / se, df))
