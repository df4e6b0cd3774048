"""Check a feature set: statistics, collinearity, and the leakage (point-in-time) check."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nqexp.features.catalog import FeatureSet, as_set
from nqexp.features.engine import Computed, compute
from nqexp.features.store import build

log = logging.getLogger(__name__)


# Check: statistics, collinearity, leakage
# ---------------------------------------------------------------------------------------------

@dataclass
class FeatureStats:
    name: str
    group: str | None
    n: int            # rows after warm-up
    n_nan: int
    n_inf: int
    min: float
    max: float
    mean: float
    std: float


@dataclass
class LeakageResult:
    cut_index: int       # last bar kept
    cut_ts: np.datetime64
    rows_compared: int
    max_abs_diff: float  # over all features at bars <= cut (NaN vs NaN counts as equal)
    n_mismatch: int      # values not equal to within 1e-12 relative (or NaN on one side only)
    worst_feature: str | None
    ok: bool


@dataclass
class CheckReport:
    set_name: str
    symbol: str
    table: str
    rows: int
    warmup_bars: int
    stats: list[FeatureStats]
    correlated: list[tuple[str, str, float]]   # |corr| > threshold, strongest first
    leakage: list[LeakageResult]
    corr_threshold: float = 0.95

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.leakage)


def _compare(a: np.ndarray, b: np.ndarray, rtol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Per-element mismatch mask and abs diff; NaN==NaN and equal infinities count as equal."""
    both_nan = np.isnan(a) & np.isnan(b)
    same = (a == b) | both_nan
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - b))
        tol = rtol * np.maximum(np.abs(b), 1.0)
        mismatch = ~same & ~(diff <= tol)
    return mismatch, np.where(np.isnan(diff), np.inf, diff)


def leakage_check(con, fs: FeatureSet | str, symbol: str, cuts, full: Computed | None = None,
                  path: str | Path | None = None) -> list[LeakageResult]:
    """Recompute on bars truncated after each cut index; features at bars <= cut must not change."""
    fs = as_set(fs, path)
    full = full or compute(con, fs, symbol)
    results = []
    for cut in cuts:
        cut = int(cut)
        part = compute(con, fs, symbol, until=full.ts[cut])
        a, b = part.X, full.X[: cut + 1]                                            # (cut+1, V)
        if a.shape != b.shape or not np.array_equal(part.ts, full.ts[: cut + 1]):
            results.append(LeakageResult(cut, full.ts[cut], a.shape[0], np.inf, a.size, None, False))
            continue
        mismatch, diff = _compare(a, b)
        per_feature = mismatch.sum(axis=0)
        worst = int(np.argmax(diff.max(axis=0))) if diff.size else 0
        results.append(LeakageResult(
            cut_index=cut, cut_ts=full.ts[cut], rows_compared=a.shape[0],
            max_abs_diff=float(diff.max()) if diff.size else 0.0, n_mismatch=int(per_feature.sum()),
            worst_feature=fs.columns[worst] if diff.size and diff.max() > 0 else None,
            ok=bool(per_feature.sum() == 0),
        ))
    return results


def check(con, set_name: FeatureSet | str, symbol: str, n_cuts: int = 5, seed: int = 0,
          corr_threshold: float = 0.95, path: str | Path | None = None) -> CheckReport:
    """Stats after warm-up per feature, pairs with |corr| > threshold, and the truncation leakage check.

    `path` is the user folder of feature sets (features.path), if any.
    """
    fs = as_set(set_name, path)
    report = build(con, fs, symbol)
    # Recomputed in float64: the table stores the features as REAL, and the truncation
    # check compares to 1e-12.
    full = compute(con, fs, symbol)
    w = min(fs.warmup_bars, len(full.ts))
    X = full.X[w:]                                                                   # (N - warmup, V)
    stats = []
    for j, name in enumerate(fs.columns):
        col = X[:, j]
        finite = col[np.isfinite(col)]
        stats.append(FeatureStats(
            name=name, group=fs.groups[j] if fs.groups else None, n=len(col),
            n_nan=int(np.isnan(col).sum()), n_inf=int(np.isinf(col).sum()),
            min=float(finite.min()) if finite.size else np.nan, max=float(finite.max()) if finite.size else np.nan,
            mean=float(finite.mean()) if finite.size else np.nan, std=float(finite.std()) if finite.size else np.nan,
        ))
    rows = np.isfinite(X).all(axis=1)
    pairs: list[tuple[str, str, float]] = []
    if rows.sum() > 2:
        Z = X[rows]
        sd = Z.std(axis=0)
        live = np.flatnonzero(sd > 0)
        corr = np.corrcoef(Z[:, live], rowvar=False)                                 # (V', V')
        for a in range(len(live)):
            for b in range(a + 1, len(live)):
                if abs(corr[a, b]) > corr_threshold:
                    pairs.append((fs.columns[live[a]], fs.columns[live[b]], float(corr[a, b])))
        pairs.sort(key=lambda p: -abs(p[2]))
    n = len(full.ts)
    rng = np.random.default_rng(seed)
    lo = min(w, n - 1)
    cuts = np.sort(rng.choice(np.arange(lo, n - 1), size=min(n_cuts, max(n - 1 - lo, 0)), replace=False)) \
        if n - 1 > lo else np.array([], dtype=int)
    leakage = leakage_check(con, fs, symbol, cuts, full=full)
    return CheckReport(fs.name, symbol, report.table, n, fs.warmup_bars, stats, pairs, leakage, corr_threshold)
