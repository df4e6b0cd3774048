"""Forecast metrics as pure functions on numpy arrays (docs/metrics.md).

Every function works on one horizon at a time: `y` is (N,) realized log-returns in the
original scale and `q` is (N, Q) predicted quantiles at levels `taus` (Q,), sorted
ascending. evaluate.py loops over horizons and drops samples whose target is NaN before
calling these, so the functions here assume finite `y` (NaN in `q` propagates to NaN, which
the sanity gates then flag).

Conventions pinned by tests/test_metrics.py:
- pinball ρ_τ(y, q) = max(τ(y−q), (τ−1)(y−q)).
- crps = (2/Q) Σ_τ ρ_τ(y, q_τ), identical to `scoringrules.crps_quantile(obs, fct, alpha)`.
- coverage_τ = mean(y ≤ q_τ); PICP counts y in the closed interval [lo, hi].
- crossing: a sample crosses when any q_τ > q_τ' for τ < τ' (ties are not crossings).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from nqexp.calendar import session_dates


def horizon_label(minutes: int) -> str:
    """Metric-key suffix for a horizon: <= 60 minutes -> "15m", longer -> whole hours "2h".

    >>> horizon_label(15), horizon_label(60), horizon_label(240)
    ('15m', '60m', '4h')
    """
    m = int(minutes)
    if m <= 0:
        raise ValueError(f"horizon minutes must be positive, got {minutes}")
    if m <= 60:
        return f"{m}m"
    if m % 60:
        raise ValueError(f"horizons above 60 minutes must be whole hours, got {m} minutes")
    return f"{m // 60}h"


def quantile_label(tau: float) -> str:
    """Column/key label for a quantile level: 0.05 -> "q05", 0.5 -> "q50", 0.025 -> "q02p5"."""
    pct = round(float(tau) * 100, 6)
    if pct == int(pct):
        return f"q{int(pct):02d}"
    whole, frac = f"{pct:.6f}".rstrip("0").split(".")
    return f"q{int(whole):02d}p{frac}"


def _as_1d(y) -> np.ndarray:
    return np.asarray(y, dtype=np.float64).reshape(-1)


def pinball(y, q, taus) -> np.ndarray:
    """Per-quantile pinball loss ρ_τ(y, q_τ) = max(τ(y−q), (τ−1)(y−q)).

    y: (...,) realized values; q: (..., Q) quantiles; taus: (Q,). Returns (..., Q), not averaged.
    """
    y = np.asarray(y, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    taus = np.asarray(taus, dtype=np.float64)
    diff = y[..., None] - q  # (..., Q)
    return np.maximum(taus * diff, (taus - 1.0) * diff)  # (..., Q)


def crps_quantile(y, q, taus) -> np.ndarray:
    """Quantile-CRPS per sample: (2/Q) Σ_τ ρ_τ(y, q_τ).  y (...,), q (..., Q) -> (...,).

    Equals `scoringrules.crps_quantile(y, q, taus)`. It does not sort `q`: a crossing forecast is
    scored as given. On few, uneven levels it understates the continuous CRPS, which is why
    evaluate.py always reports skill against baselines scored the same way.
    """
    return 2.0 * pinball(y, q, taus).mean(axis=-1)  # (...,)


def crps_skill(model: float, ref: float) -> float:
    """CRPS skill score 1 − crps_model / crps_ref (> 0: the model beats the reference)."""
    if not np.isfinite(ref) or ref <= 0:
        return float("nan")
    return float(1.0 - model / ref)


def coverage(y, q) -> np.ndarray:
    """Empirical coverage per level: mean(y ≤ q_τ) over samples.  y (N,), q (N, Q) -> (Q,)."""
    y = _as_1d(y)
    q = np.asarray(q, dtype=np.float64)
    return (y[:, None] <= q).mean(axis=0)  # (Q,)


def calibration_error(y, q, taus) -> float:
    """Mean absolute calibration error: mean_τ |coverage_τ − τ|."""
    return float(np.abs(coverage(y, q) - np.asarray(taus, dtype=np.float64)).mean())


def picp(y, lo, hi) -> float:
    """Prediction-interval coverage probability: share of y in the closed interval [lo, hi]."""
    y, lo, hi = _as_1d(y), _as_1d(lo), _as_1d(hi)
    return float(((y >= lo) & (y <= hi)).mean())


def mpiw(lo, hi) -> float:
    """Mean prediction-interval width: mean(hi − lo)."""
    return float((_as_1d(hi) - _as_1d(lo)).mean())


def pit_values(y, q, taus, seed: int = 0) -> np.ndarray:
    """Probability integral transform F(y) of a quantile forecast.  y (N,), q (N, Q) -> (N,).

    The predictive CDF is the piecewise-linear interpolation through the points (q_τ, τ), so a y
    between q_τi and q_τi+1 gets τi + (τi+1 − τi)·(y − q_τi)/(q_τi+1 − q_τi). Beyond the outer
    quantiles the forecast says only that F(y) < τ_1 (or > τ_Q), so those samples get a seeded
    uniform draw on [0, τ_1) or (τ_Q, 1] (a randomized PIT). With that rule a calibrated forecast
    gives an exactly uniform PIT in distribution, whatever the interpolation does inside. Each row
    of q is sorted first, so a crossing forecast still gets a valid CDF.
    """
    y = _as_1d(y)
    q = np.sort(np.asarray(q, dtype=np.float64), axis=-1)  # (N, Q)
    taus = np.asarray(taus, dtype=np.float64)
    n, n_q = q.shape
    k = (q <= y[:, None]).sum(axis=1)  # (N,) number of quantiles at or below y
    inner = (k > 0) & (k < n_q)
    pit = np.empty(n, dtype=np.float64)
    rows = np.nonzero(inner)[0]
    lo_i = k[rows] - 1
    q_lo, q_hi = q[rows, lo_i], q[rows, lo_i + 1]  # q_lo <= y < q_hi, so q_hi - q_lo > 0
    frac = (y[rows] - q_lo) / (q_hi - q_lo)
    pit[rows] = taus[lo_i] + frac * (taus[lo_i + 1] - taus[lo_i])
    rng = np.random.default_rng(seed)
    u = rng.random(n)  # drawn for every row so the result does not depend on which rows are tails
    below, above = k == 0, k == n_q
    pit[below] = u[below] * taus[0]
    pit[above] = taus[-1] + u[above] * (1.0 - taus[-1])
    bad = ~np.isfinite(y) | ~np.isfinite(q).all(axis=1)
    pit[bad] = np.nan
    return pit


def pit_histogram(pit, bins=10) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of PIT values on [0, 1] as densities (a calibrated forecast gives all ones).

    bins: a number of equal bins, or explicit edges. Use edges at the quantile levels,
    `np.r_[0, taus, 1]`, for an exact check: the interpolation inside a segment (see
    `pit_values`) only preserves the mass between quantile levels, so equal-width bins that
    split a segment are slightly non-uniform even for a perfect forecast.
    Returns (edges (K+1,), density (K,)). NaN PIT values are ignored.
    """
    pit = _as_1d(pit)
    pit = pit[np.isfinite(pit)]
    edges = np.linspace(0.0, 1.0, int(bins) + 1) if np.ndim(bins) == 0 else np.asarray(bins, float)
    counts, _ = np.histogram(pit, bins=edges)
    density = counts / max(len(pit), 1) / np.diff(edges)
    return edges, density


def crossing_rate(q) -> float:
    """Share of samples whose quantiles cross (any q_τ > q_τ' with τ < τ').  q (N, Q) -> float.

    Checking adjacent levels is enough: any crossed pair implies an adjacent decrease.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape[0] == 0:
        return float("nan")
    return float((np.diff(q, axis=-1) < 0).any(axis=-1).mean())


def spearman_ic(pred, y) -> float:
    """Spearman rank correlation (average ranks for ties). NaN when fewer than 3 samples or
    either side is constant (e.g. a collapsed median), rather than a misleading 0."""
    from scipy.stats import rankdata  # scipy.stats costs ~0.3 s to import; keep it off CLI startup

    pred, y = _as_1d(pred), _as_1d(y)
    if len(pred) < 3:
        return float("nan")
    return pearson(rankdata(pred), rankdata(y))


def pearson(a, b) -> float:
    """Pearson correlation; NaN if either input is constant."""
    a, b = _as_1d(a), _as_1d(b)
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if denom == 0 or not np.isfinite(denom):
        return float("nan")
    return float((a * b).sum() / denom)


def daily_ic(ts, pred, y, min_obs: int = 10) -> pd.Series:
    """Spearman IC per Globex session day (see `session_dates`), indexed by session date.

    Days with fewer than `min_obs` samples, or with a constant side, are left out.
    """
    pred, y = _as_1d(pred), _as_1d(y)
    frame = pd.DataFrame({"day": session_dates(ts), "pred": pred, "y": y})
    g = frame.groupby("day", sort=True)
    # Spearman per day = Pearson of within-day average ranks, computed with grouped sums
    # (one pass instead of a Python loop over days).
    frame["a"] = g["pred"].rank(method="average")
    frame["b"] = g["y"].rank(method="average")
    frame["a"] -= frame.groupby("day")["a"].transform("mean")
    frame["b"] -= frame.groupby("day")["b"].transform("mean")
    frame["ab"], frame["aa"], frame["bb"] = frame["a"] * frame["b"], frame["a"] ** 2, frame["b"] ** 2
    sums = frame.groupby("day", sort=True)[["ab", "aa", "bb"]].sum()
    count = g.size()
    denom = np.sqrt(sums["aa"] * sums["bb"])
    ic = (sums["ab"] / denom.where(denom > 0)).where(count >= min_obs).dropna()
    return ic.astype(np.float64).rename("ic").rename_axis("session_date")


def icir(daily: pd.Series) -> float:
    """Information ratio of a daily IC series: mean / std (ddof=1), not annualized."""
    x = np.asarray(daily, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    sd = x.std(ddof=1)
    return float(x.mean() / sd) if sd > 0 else float("nan")


def block_bootstrap_replicates(
    x,
    stat: Callable[[np.ndarray], float],
    block: int,
    n_boot: int = 1000,
    seed: int = 0,
    segments=None,
) -> np.ndarray:
    """(n_boot,) moving-block bootstrap replicates of `stat(x)`; NaN replicates are dropped.

    x: (N, ...) in time order; each replicate concatenates blocks of `block` consecutive rows with
    uniform random starts, cut to N rows, so serial dependence shorter than a block (overlapping
    targets, intraday clustering) survives resampling. `segments` (N,) labels contiguous runs
    (rolling-origin folds): each segment is resampled on its own, to its own length, so no block
    ever crosses a segment boundary.
    """
    x = np.asarray(x)
    n = x.shape[0]
    if n < 2 or n_boot < 1:
        return np.empty(0)
    if segments is None:
        bounds = [(0, n)]
    else:
        seg = np.asarray(segments)
        cut = np.flatnonzero(seg[1:] != seg[:-1]) + 1
        edges = np.concatenate([[0], cut, [n]])
        bounds = list(zip(edges[:-1], edges[1:]))
    rng = np.random.default_rng(seed)
    plans = []
    for lo, hi in bounds:
        m = int(hi - lo)
        blk = int(min(max(block, 1), m))
        plans.append((int(lo), m, blk, -(-m // blk), np.arange(blk)))
    stats = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        parts = []
        for lo, m, blk, n_blocks, offsets in plans:
            starts = rng.integers(0, m - blk + 1, size=n_blocks)
            parts.append(lo + (starts[:, None] + offsets[None, :]).reshape(-1)[:m])  # (m,)
        idx = parts[0] if len(parts) == 1 else np.concatenate(parts)  # (N,)
        stats[b] = stat(x[idx])
    return stats[np.isfinite(stats)]


def block_bootstrap_ci(
    x,
    stat: Callable[[np.ndarray], float],
    block: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    segments=None,
) -> tuple[float, float]:
    """Moving-block bootstrap percentile CI of `stat(x)`: the ((1−level)/2, (1+level)/2)
    percentiles of `block_bootstrap_replicates` (see there for `block` and `segments`)."""
    stats = block_bootstrap_replicates(x, stat, block, n_boot, seed, segments)
    if len(stats) == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_p_value(replicates) -> float:
    """Two-sided p-value of "the statistic is 0" from its bootstrap replicates: twice the smaller tail
    share on either side of 0, with the +1 correction so it is never 0. The percentile CI at level
    1 − a excludes 0 exactly when p <= a (up to that correction)."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) == 0:
        return float("nan")
    tail = min((r <= 0).sum(), (r >= 0).sum())
    return float(min(1.0, 2.0 * (tail + 1) / (len(r) + 1)))


def holm(p) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values: family-wise error control. NaN stays NaN."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
        out[order] = np.minimum(adj, 1.0)
    return out


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini–Hochberg (1995) adjusted p-values (q-values): false-discovery-rate control. NaN stays NaN."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        adj = p[order] * m / np.arange(1, m + 1)
        adj = np.minimum.accumulate(adj[::-1])[::-1]
        out[order] = np.minimum(adj, 1.0)
    return out


ADJUSTMENTS = {"holm": holm, "bh": benjamini_hochberg}


def block_bootstrap_corr_ci(
    a,
    b,
    block: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """`block_bootstrap_ci` of the Pearson correlation of (a, b), with the same resamples for the
    same seed, in O(N / block) per replicate instead of O(N).

    A replicate is a union of blocks, so each of its sums (Σa, Σb, Σa², Σb², Σab) is a sum of
    differences of prefix sums. Pass ranks to bootstrap a rank IC.
    """
    a, b = _as_1d(a), _as_1d(b)
    n = len(a)
    if n < 2 or n_boot < 1:
        return float("nan"), float("nan")
    block = int(min(max(block, 1), n))
    n_blocks = -(-n // block)
    tail = n - (n_blocks - 1) * block  # rows taken from the last block of each replicate
    a = a - a.mean()  # centring keeps the prefix sums of squares well conditioned
    b = b - b.mean()
    cols = np.stack([a, b, a * a, b * b, a * b])  # (5, N)
    prefix = np.concatenate([np.zeros((5, 1)), np.cumsum(cols, axis=1)], axis=1)  # (5, N+1)
    rng = np.random.default_rng(seed)
    starts = np.stack([rng.integers(0, n - block + 1, size=n_blocks) for _ in range(n_boot)])  # (n_boot, n_blocks)
    ends = starts + block
    ends[:, -1] = starts[:, -1] + tail  # the last block is cut so a replicate has N rows
    sums = (prefix[:, ends] - prefix[:, starts]).sum(axis=-1)  # (5, n_boot)
    sa, sb, saa, sbb, sab = sums
    cov = sab - sa * sb / n
    var_a, var_b = saa - sa * sa / n, sbb - sb * sb / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(var_a * var_b)  # (n_boot,)
    r = r[np.isfinite(r) & (var_a > 0) & (var_b > 0)]
    if len(r) == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(r, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def directional_accuracy(pred, y) -> float:
    """Share of samples where sign(pred) == sign(y), over samples with y != 0 (a flat outcome
    has no direction). A prediction of exactly 0 counts as wrong: it makes no call."""
    pred, y = _as_1d(pred), _as_1d(y)
    keep = y != 0
    if not keep.any():
        return float("nan")
    return float((np.sign(pred[keep]) == np.sign(y[keep])).mean())


def tail_accuracy(pred, y, frac: float = 0.1) -> float:
    """Directional accuracy on the tails of the realized distribution: the samples with y at or
    below its `frac` quantile or at or above its 1 − `frac` quantile (the largest moves each way)."""
    pred, y = _as_1d(pred), _as_1d(y)
    if len(y) == 0:
        return float("nan")
    lo, hi = np.quantile(y, [frac, 1.0 - frac])
    tail = (y <= lo) | (y >= hi)
    return directional_accuracy(pred[tail], y[tail])


def rmse(pred, y) -> float:
    """Root mean squared error of a point forecast."""
    d = _as_1d(pred) - _as_1d(y)
    return float(np.sqrt((d * d).mean()))


def mae(pred, y) -> float:
    """Mean absolute error of a point forecast."""
    return float(np.abs(_as_1d(pred) - _as_1d(y)).mean())
