"""Predictions -> metrics table per split and horizon, with baselines and sanity gates (docs/metrics.md).

The pieces, in the order a run uses them:

1. Baselines (evaluation/baselines.py), fitted on the train split only and scored on exactly the
   samples the model is scored on.
2. `evaluate_split_table(...)` -> long DataFrame (split, horizon, metric, value, source), and
   `flatten_metrics(table)` -> flat dict of keys like `crps_15m`, `crpss_climatology_15m`,
   `picp80_60m`; the caller prefixes `split/`. Rows with horizon "all" (and keys without a
   horizon suffix) are plain means over horizons.
3. `check_gates(table)` -> list[GateFlag]; `strict=True` raises GateError instead.
4. `save_predictions` / `load_predictions`: one Parquet file per run, enough to recompute every
   metric without the model.

Missing targets: a sample whose y is NaN at horizon h is left out of horizon h only (targets can
be dropped upstream, e.g. across a roll). Non-finite model or baseline quantiles are counted in
`nonfinite_rate` (which trips a gate) and those samples are left out of the other metrics, so
the model and every baseline are always scored on the same samples.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from nqexp import metrics as M
from nqexp.errors import DataError, NqexpError, SpecError
from nqexp.evaluation.baselines import BASELINES
from nqexp.evaluation.recalibrate import MAX_TOD_BUCKETS

log = logging.getLogger(__name__)

DEFAULT_TAUS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
# Central intervals reported as PICP (and the 80% one as MPIW80): name -> (lower tau, upper tau).
INTERVALS = {"picp50": (0.25, 0.75), "picp80": (0.1, 0.9), "picp90": (0.05, 0.95)}
# Baseline metrics that also appear in the flat dict, as `{metric}_{baseline}_{label}`.
BASELINE_FLAT_METRICS = ("crps", "picp50", "picp80", "picp90", "mpiw80", "calib_err")
RAW_SOURCE = "model_raw"  # the model before recalibration, in tables next to the recalibrated "model"
# Metrics whose horizon average is not meaningful (counts are summed instead; CI bounds dropped).
_NOT_AVERAGED = ("n", "ic_lo", "ic_hi")
PREDICTIONS_FORMAT_VERSION = 1


# What each metric name in the table means. Patterns: {b} a baseline name, {q} a quantile label
# ("q05"), {lo}_{hi} PIT bin edges in percent ("00_05"). Every name the table emits is listed.
METRIC_DESCRIPTIONS = {
    "n": "samples scored (finite target and finite quantiles of every source); summed in 'all'",
    "crps": "quantile CRPS (2/Q) Σ_τ pinball_τ, mean over samples (log-return units)",
    "crpss_{b}": "CRPS skill vs baseline b: 1 − crps / crps_b (> 0 beats it)",
    "crpss_best": "CRPS skill vs the best baseline of this split and horizon (lowest CRPS): the model's claim",
    "calib_err": "mean_τ |coverage_τ − τ|",
    "cov_{q}": "coverage_τ = share of y ≤ q_τ",
    "picp50": "share of y in [q.25, q.75]",
    "picp80": "share of y in [q.10, q.90]",
    "picp90": "share of y in [q.05, q.95]",
    "mpiw80": "mean width q.90 − q.10 (log-return units)",
    "pit_{lo}_{hi}": "PIT density on the bin [lo%, hi%) (1 = calibrated)",
    "crossing_rate": "share of samples with any crossed quantile pair (must be 0)",
    "nonfinite_rate": "share of samples with a finite target but NaN/Inf model quantiles (must be 0)",
    "y_std": "std of the scored targets (scale reference for the width gate)",
    "dir_acc": "share of sign(median) == sign(y) over y != 0; a 0 median counts as wrong",
    "tail_acc": "dir_acc on samples with y in its bottom or top 10%",
    "rmse": "RMSE of the median",
    "mae": "MAE of the median",
    "ic": "pooled Spearman IC of median vs y",
    "ic_lo": "2.5% bound of the pooled IC, moving-block bootstrap with blocks of one session day",
    "ic_hi": "97.5% bound of the same bootstrap",
    "ic_daily": "mean of the daily (Globex session) Spearman IC",
    "icir": "mean / std of the daily IC (not annualized)",
}


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------


def _tau_index(taus: np.ndarray, tau: float) -> int | None:
    hit = np.nonzero(np.isclose(taus, tau, atol=1e-9))[0]
    return int(hit[0]) if len(hit) else None


def _pct(x: float) -> str:
    """0.05 -> "05", 1.0 -> "100", 0.025 -> "02p5" (for PIT bin names)."""
    return M.quantile_label(x)[1:]


def _utc_naive(ts) -> np.ndarray:
    """Timestamps as naive datetime64[ns] in UTC (tz-aware input is converted)."""
    idx = pd.DatetimeIndex(np.asarray(ts) if not isinstance(ts, pd.Series) else ts)
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return idx.values.astype("datetime64[ns]")


def _ic_block(ts: np.ndarray, n: int) -> int:
    """Bootstrap block length: the median number of samples per Globex session day, so serial
    dependence from overlapping targets and intraday clustering stays inside a block; capped
    at n // 5 so that small sets still have at least five blocks."""
    per_day = pd.Series(M.session_dates(ts)).value_counts()
    return int(np.clip(per_day.median() if len(per_day) else 1, 1, max(n // 5, 1)))


def _score_source(y, q, taus, ts, *, with_ic_ci: bool, n_boot: int, seed: int) -> dict[str, float]:
    """All per-horizon metrics of one source on valid samples.  y (N,), q (N, Q), ts (N,)."""
    out: dict[str, float] = {"n": float(len(y))}
    if len(y) == 0:
        return out
    out["crps"] = float(M.crps_quantile(y, q, taus).mean())
    cov = M.coverage(y, q)  # (Q,)
    out["calib_err"] = float(np.abs(cov - taus).mean())
    for tau, c in zip(taus, cov):
        out[f"cov_{M.quantile_label(tau)}"] = float(c)
    for name, (lo_t, hi_t) in INTERVALS.items():
        lo, hi = _tau_index(taus, lo_t), _tau_index(taus, hi_t)
        if lo is not None and hi is not None:
            out[name] = M.picp(y, q[:, lo], q[:, hi])
            if name == "picp80":
                out["mpiw80"] = M.mpiw(q[:, lo], q[:, hi])
    out["crossing_rate"] = M.crossing_rate(q)
    # PIT histogram data: densities on bins whose edges are the quantile levels (exact for a
    # calibrated forecast; see metrics.pit_histogram), named by their edges in percent.
    edges, dens = M.pit_histogram(M.pit_values(y, q, taus, seed=seed), bins=np.r_[0.0, taus, 1.0])
    for lo_e, hi_e, d in zip(edges[:-1], edges[1:], dens):
        out[f"pit_{_pct(lo_e)}_{_pct(hi_e)}"] = float(d)
    med_i = _tau_index(taus, 0.5)
    if med_i is not None:
        med = q[:, med_i]  # (N,)
        out["dir_acc"] = M.directional_accuracy(med, y)
        out["tail_acc"] = M.tail_accuracy(med, y)
        out["rmse"] = M.rmse(med, y)
        out["mae"] = M.mae(med, y)
        out["ic"] = M.spearman_ic(med, y)
        daily = M.daily_ic(ts, med, y)
        out["ic_daily"] = float(daily.mean()) if len(daily) else float("nan")
        out["icir"] = M.icir(daily)
        if with_ic_ci:
            if np.isfinite(out["ic"]):
                from scipy.stats import rankdata

                # Rank once, then bootstrap the Pearson correlation of the ranks: no sort per
                # replicate. It differs from re-ranking each replicate only through duplicated rows.
                lo, hi = M.block_bootstrap_corr_ci(rankdata(med), rankdata(y), block=_ic_block(ts, len(y)),
                                                   n_boot=n_boot, seed=seed)
            else:
                lo = hi = float("nan")
            out["ic_lo"], out["ic_hi"] = lo, hi
    return out


def evaluate_split_table(
    split_name: str,
    y,
    q,
    taus,
    horizon_minutes: Sequence[int],  # the feature set's horizons in minutes (no default: they are its fact)
    ts=None,
    baselines: Mapping[str, np.ndarray] | None = None,
    *,
    raw: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Every metric of one split in long format: columns split, horizon, metric, value, source.

    y: (N, H) realized log-returns (NaN = missing target); q: (N, H, Q) model quantiles in the
    original scale; ts: (N,) UTC bar-close times of the forecast origins, in time order (used for
    the daily IC and the bootstrap blocks); baselines: name -> (N, H, Q) scored on the same
    samples. `horizon` is the label ("15m", "2h") or "all" for the mean over horizons.
    Model rows also carry `crpss_<baseline>` = 1 − crps / crps_baseline per horizon. `raw` (N, H, Q):
    the model's forecast before recalibration, scored as source "model_raw" (not a baseline: no skill
    is computed against it).
    """
    taus = np.asarray(taus, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    baselines = {k: np.asarray(v, dtype=np.float64) for k, v in (baselines or {}).items()}
    n, n_h = y.shape
    if q.shape != (n, n_h, len(taus)):
        raise DataError(f"{split_name}: q has shape {q.shape}, expected (N, H, Q) = {(n, n_h, len(taus))}")
    others = {**baselines, **({RAW_SOURCE: np.asarray(raw, dtype=np.float64)} if raw is not None else {})}
    for name, bq in others.items():
        if bq.shape != q.shape:
            raise DataError(f"{split_name}: baseline {name!r} has shape {bq.shape}, expected {q.shape}")
    if len(horizon_minutes) != n_h:
        raise DataError(f"{split_name}: {len(horizon_minutes)} horizon_minutes for H = {n_h} target columns")
    if ts is None:
        raise DataError(f"{split_name}: ts (N,) is required for the daily IC")
    ts = _utc_naive(ts)
    if ts.shape != (n,):
        raise DataError(f"{split_name}: ts has shape {ts.shape}, expected ({n},)")
    if n > 1 and (np.diff(ts) < np.timedelta64(0, "ns")).any():
        # Only the bootstrap blocks depend on order; put samples in time order so blocks are
        # contiguous in time (every other metric is order-free).
        order = np.argsort(ts, kind="stable")
        ts, y, q = ts[order], y[order], q[order]
        baselines = {k: v[order] for k, v in baselines.items()}
        others = {k: v[order] for k, v in others.items()}

    rows = []
    for h, minutes in enumerate(horizon_minutes):
        label = M.horizon_label(minutes)
        has_y = np.isfinite(y[:, h])  # (N,)
        finite_q = np.isfinite(q[:, h, :]).all(axis=1)  # (N,)
        valid = has_y & finite_q
        for bq in others.values():
            valid &= np.isfinite(bq[:, h, :]).all(axis=1)
        n_y = int(has_y.sum())
        scores = {"model": _score_source(y[valid, h], q[valid, h, :], taus, ts[valid],
                                         with_ic_ci=True, n_boot=n_boot, seed=seed)}
        scores["model"]["nonfinite_rate"] = float((has_y & ~finite_q).sum() / n_y) if n_y else float("nan")
        scores["model"]["y_std"] = float(np.std(y[valid, h])) if valid.any() else float("nan")
        for name, bq in baselines.items():
            scores[name] = _score_source(y[valid, h], bq[valid, h, :], taus, ts[valid],
                                         with_ic_ci=False, n_boot=n_boot, seed=seed)
            scores["model"][f"crpss_{name}"] = M.crps_skill(
                scores["model"].get("crps", np.nan), scores[name].get("crps", np.nan))
        if RAW_SOURCE in others:
            scores[RAW_SOURCE] = _score_source(y[valid, h], others[RAW_SOURCE][valid, h, :], taus, ts[valid],
                                               with_ic_ci=False, n_boot=n_boot, seed=seed)
        if baselines:
            # The claim is made against the strongest baseline on these very samples.
            best = np.nanmin([scores[name].get("crps", np.nan) for name in baselines] + [np.inf])
            scores["model"]["crpss_best"] = M.crps_skill(scores["model"].get("crps", np.nan),
                                                         best if np.isfinite(best) else np.nan)
        if n_y and not valid.any():
            log.warning("%s %s: no sample has finite quantiles; metrics are NaN", split_name, label)
        for source, d in scores.items():
            rows += [(split_name, label, metric, float(v), source) for metric, v in d.items()]

    table = pd.DataFrame(rows, columns=["split", "horizon", "metric", "value", "source"])
    # Means over horizons (counts summed), as rows with horizon "all".
    per_h = table[~table["metric"].isin(_NOT_AVERAGED)]
    avg = (per_h.groupby(["source", "metric"], sort=False)["value"]
           .agg(lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"))
           .reset_index())
    counts = table[table["metric"] == "n"].groupby(["source", "metric"], sort=False)["value"].sum().reset_index()
    avg = pd.concat([avg, counts], ignore_index=True)
    avg["split"], avg["horizon"] = split_name, "all"
    return pd.concat([table, avg[table.columns]], ignore_index=True)


def flatten_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Long table of one split -> flat keys (no split prefix).

    Model rows: `{metric}_{label}` (e.g. `crps_15m`), or `{metric}` for the horizon mean.
    Baseline rows, for BASELINE_FLAT_METRICS only: `{metric}_{baseline}_{label}`
    (e.g. `crps_climatology_15m`, `picp80_volscaled_2h`) or `{metric}_{baseline}`.
    """
    if table["split"].nunique() > 1:
        raise ValueError("flatten_metrics takes one split; filter the table first")
    out: dict[str, float] = {}
    for split, label, metric, value, source in table.itertuples(index=False, name=None):
        suffix = "" if label == "all" else f"_{label}"
        if source == "model":
            out[f"{metric}{suffix}"] = value
        elif metric in BASELINE_FLAT_METRICS:
            out[f"{metric}_{source}{suffix}"] = value
    return out


# --------------------------------------------------------------------------------------------
# Sanity gates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateThresholds:
    """Limits of the sanity gates (docs/metrics.md). A trial breaking any of them is flagged. Rates, coverages
    and |IC| lie in [0, 1], a CRPS skill is at most 1: the declared ranges say so."""

    min_picp80: Annotated[float, Field(ge=0, le=1)] = 0.4  # collapse: the 80% interval covers less than 40%
    # Collapse by width: MPIW80 below this fraction of the climatology 80% width on the same
    # samples ("MPIW ≈ 0" made scale-free). Without a climatology baseline the reference is the
    # 80% width of a normal with the targets' std, 2·1.2816·std(y).
    min_width_ratio: Annotated[float, Field(ge=0)] = 1e-3
    min_crpss_climatology: Annotated[float, Field(le=1)] = 0.0  # the model must not lose to climatology at any horizon
    max_abs_ic: Annotated[float, Field(ge=0, le=1)] = 0.1  # a larger rank IC on returns is far more likely leakage than skill
    max_crossing_rate: Annotated[float, Field(ge=0, le=1)] = 0.0  # crossings must be 0
    max_nonfinite_rate: Annotated[float, Field(ge=0, le=1)] = 0.0  # NaN/Inf quantiles must be 0


@dataclass(frozen=True)
class EvalConfig:
    """The spec's `eval:` section: sanity gates (docs/metrics.md) and the backtest (on by default)."""

    strict: bool = False  # broken gates fail the trial (otherwise they are flagged)
    gates: GateThresholds = field(default_factory=GateThresholds)  # gate thresholds
    backtest: bool = True  # backtest the test quantiles (docs/metrics.md §10): test/backtest_* metrics
    # Baselines fitted on train and scored on the model's samples (docs/metrics.md §7); climatology
    # is required: the worse-than-climatology gate reads it.
    baselines: tuple[str, ...] = ("climatology", "volscaled", "mcgarch", "lgbm")
    # Recalibration fitted on each trial's val split and applied to test and predict (docs/metrics.md §13);
    # the raw forecast stays in the tables as source "model_raw".
    recalibrate: Literal["none", "conformal"] = "none"  # conformal: per-level offsets fitted on val, in sigma-hat units
    median_shrink: bool = False  # shrink the median towards 0 by a per-horizon share chosen on val
    # conformal offsets per time-of-day bucket: this many equal slices of the New York day; 1 = one set
    recalibrate_tod_buckets: Annotated[int, Field(ge=1, le=MAX_TOD_BUCKETS)] = 1

    def __post_init__(self):
        if not 1 <= self.recalibrate_tod_buckets <= MAX_TOD_BUCKETS:
            raise SpecError(f"eval.recalibrate_tod_buckets ({self.recalibrate_tod_buckets}) must be in "
                            f"1..{MAX_TOD_BUCKETS}")
        if self.recalibrate_tod_buckets > 1 and self.recalibrate != "conformal":
            raise SpecError(f"eval.recalibrate_tod_buckets ({self.recalibrate_tod_buckets}) buckets the conformal "
                            f"offsets: set eval.recalibrate: conformal, or leave it at 1")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown or "climatology" not in self.baselines or len(set(self.baselines)) != len(self.baselines):
            raise SpecError(f"eval.baselines ({list(self.baselines)}) must be distinct names from "
                            f"{list(BASELINES)} and include 'climatology' (the gates' reference)")


@dataclass(frozen=True)
class GateFlag:
    """One broken gate on one split and horizon, with a sentence a researcher can act on."""

    gate: str  # collapse_coverage | collapse_width | worse_than_climatology | leakage_ic | nonfinite | crossing
    split: str
    horizon: str
    metric: str
    value: float
    threshold: float
    reason: str


class GateError(NqexpError):
    """A trial failed its sanity gates under --strict. `flags` holds every broken gate."""

    def __init__(self, flags: Sequence[GateFlag]):
        self.flags = list(flags)
        lines = "\n".join(f"  - {f.reason}" for f in self.flags)
        super().__init__(f"{len(self.flags)} sanity gate(s) failed:\n{lines}\n"
                         "Inspect the predictions and plots of this trial, or rerun without --strict to keep it flagged.")


def check_gates(
    table: pd.DataFrame,
    thresholds: GateThresholds = GateThresholds(),
    *,
    strict: bool = False,
) -> list[GateFlag]:
    """Sanity gates over a long metrics table (one or more splits; model rows per horizon).

    Each (split, horizon) of the model is checked for: non-finite outputs (or no scorable
    sample), crossings, PICP80 < min_picp80, MPIW80 ≈ 0 relative to climatology, CRPS skill vs
    climatology below min_crpss_climatology, and |IC| > max_abs_ic with a block-bootstrap CI that
    lies wholly beyond the threshold (a noisy large IC on few effective samples is not leakage). The climatology gate needs
    the climatology baseline in the table; without it that gate is skipped (and logged).
    Returns the flags (empty when the trial is sane); with strict=True raises GateError instead.
    """
    t = thresholds
    flags: list[GateFlag] = []
    per_h = table[table["horizon"] != "all"]
    wide = per_h.pivot_table(index=["split", "horizon"], columns=["source", "metric"],
                             values="value", aggfunc="first", sort=False, dropna=False)

    def get(row, source, metric):
        return float(row.get((source, metric), np.nan))

    if "climatology" not in set(per_h["source"]):
        log.warning("sanity gates: no climatology baseline in the metrics table; "
                    "the worse-than-climatology gate is skipped")
    for (split, label), row in wide.iterrows():
        def flag(gate, metric, value, threshold, why):
            flags.append(GateFlag(gate, split, label, metric, value, threshold,
                                  f"[{gate}] {split} {label}: {metric} = {value:.4g} {why} {threshold:.4g}"))

        nonfinite = get(row, "model", "nonfinite_rate")
        crps = get(row, "model", "crps")
        if nonfinite > t.max_nonfinite_rate:
            flag("nonfinite", "nonfinite_rate", nonfinite, t.max_nonfinite_rate,
                 "(share of samples with NaN/Inf quantiles) exceeds")
        elif not np.isfinite(crps):
            flag("nonfinite", "crps", crps, 0.0, "is not finite (no valid samples?); expected a number >")
        crossing = get(row, "model", "crossing_rate")
        if crossing > t.max_crossing_rate:
            flag("crossing", "crossing_rate", crossing, t.max_crossing_rate, "(share of samples with crossed quantiles) exceeds")
        picp80 = get(row, "model", "picp80")
        if picp80 < t.min_picp80:
            flag("collapse_coverage", "picp80", picp80, t.min_picp80, "(80% interval coverage) is below")
        mpiw = get(row, "model", "mpiw80")
        ref = get(row, "climatology", "mpiw80")
        ref_name = "climatology MPIW80"
        if not np.isfinite(ref):
            ref, ref_name = 2 * 1.2815515655446004 * get(row, "model", "y_std"), "normal 80% width of y"
        if np.isfinite(mpiw) and np.isfinite(ref) and mpiw < t.min_width_ratio * ref:
            flag("collapse_width", "mpiw80", mpiw, t.min_width_ratio * ref,
                 f"(80% interval width) is ~0: below {t.min_width_ratio:g} x {ref_name} =")
        skill = get(row, "model", "crpss_climatology")
        if skill < t.min_crpss_climatology:
            flag("worse_than_climatology", "crpss_climatology", skill, t.min_crpss_climatology,
                 f"(CRPS {crps:.4g} vs climatology {get(row, 'climatology', 'crps'):.4g}) is below")
        ic = get(row, "model", "ic")
        lo, hi = get(row, "model", "ic_lo"), get(row, "model", "ic_hi")
        # A large IC is leakage only if it is surely large: with overlapping targets a few hundred
        # effective samples give |IC| > 0.1 around a real IC of 0.05 by chance, so the whole
        # block-bootstrap CI must lie beyond the threshold.
        beyond = (not (np.isfinite(lo) and np.isfinite(hi)) or lo > t.max_abs_ic or hi < -t.max_abs_ic)
        if abs(ic) > t.max_abs_ic and beyond:
            flag("leakage_ic", "ic", ic, t.max_abs_ic,
                 f"(95% CI {lo:.3g}..{hi:.3g}) has |IC| above (probable look-ahead leakage):")

    for f in flags:
        log.warning("sanity gate: %s", f.reason)
    if strict and flags:
        raise GateError(flags)
    return flags


# --------------------------------------------------------------------------------------------
# Predictions on disk
# --------------------------------------------------------------------------------------------


@dataclass
class SplitPredictions:
    """Everything needed to rescore one split: ts (N,), y (N, H), q (N, H, Q), baselines name -> (N, H, Q)."""

    ts: np.ndarray
    y: np.ndarray
    q: np.ndarray
    baselines: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class PredictionSet:
    """A loaded predictions file: quantile levels, horizons and the splits in file order."""

    taus: tuple[float, ...]
    horizon_minutes: tuple[int, ...]
    splits: dict[str, SplitPredictions]


def save_predictions(
    path: str | os.PathLike,
    splits: Mapping[str, SplitPredictions],
    taus,
    horizon_minutes: Sequence[int],  # the feature set's horizons in minutes (no default: they are its fact)
) -> Path:
    """Write a run's predictions as one Parquet file, one row per (split, sample, horizon).

    Columns: split, sample (row index within the split, in the order given), ts (UTC),
    horizon ("15m"), horizon_minutes, target, the model quantiles (q05, ..., q95) and each
    baseline's quantiles (climatology_q05, ...). Values keep their input dtype, so rescoring the
    file reproduces in-memory metrics exactly. taus and horizons also go into the schema metadata.
    The write is atomic (temporary file, then rename).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not splits:
        raise DataError("save_predictions got no splits; pass e.g. {'val': SplitPredictions(...)}")
    taus = tuple(float(t) for t in taus)
    qlabels = [M.quantile_label(t) for t in taus]
    hlabels = [M.horizon_label(m) for m in horizon_minutes]
    n_h = len(hlabels)
    names = None
    frames = []
    for split, p in splits.items():
        y, q = np.asarray(p.y), np.asarray(p.q)
        n = y.shape[0]
        if y.shape != (n, n_h) or q.shape != (n, n_h, len(taus)):
            raise DataError(f"{split}: y {y.shape} / q {q.shape} do not match H={n_h}, Q={len(taus)}")
        if names is None:
            names = sorted(p.baselines)
        elif sorted(p.baselines) != names:
            raise DataError(f"{split}: baselines {sorted(p.baselines)} differ from other splits' {names}")
        cols = {
            "split": np.full(n * n_h, split, dtype=object),
            "sample": np.repeat(np.arange(n, dtype=np.int64), n_h),  # (N*H,)
            "ts": np.repeat(_utc_naive(p.ts), n_h),
            "horizon": np.tile(np.asarray(hlabels, dtype=object), n),
            "horizon_minutes": np.tile(np.asarray(horizon_minutes, dtype=np.int32), n),
            "target": y.reshape(-1),  # (N*H,) sample-major, horizon-minor
        }
        for j, ql in enumerate(qlabels):
            cols[ql] = q[:, :, j].reshape(-1)
        for name in names:
            bq = np.asarray(p.baselines[name])
            for j, ql in enumerate(qlabels):
                cols[f"{name}_{ql}"] = bq[:, :, j].reshape(-1)
        frames.append(pd.DataFrame(cols))
    df = pd.concat(frames, ignore_index=True)
    df["ts"] = pd.to_datetime(df["ts"]).dt.tz_localize("UTC")
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {"version": PREDICTIONS_FORMAT_VERSION, "taus": list(taus),
            "horizon_minutes": [int(m) for m in horizon_minutes], "baselines": names or [],
            "splits": list(splits)}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"nqexp": json.dumps(meta).encode()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def load_predictions(path: str | os.PathLike) -> PredictionSet:
    """Read a file written by `save_predictions` back into (N, H) / (N, H, Q) arrays per split."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise DataError(f"predictions file {path} does not exist; was the run evaluated?")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(b"nqexp")
    if raw is None:
        raise DataError(f"{path} has no nqexp metadata; it was not written by save_predictions")
    meta = json.loads(raw)
    taus, hm, names = tuple(meta["taus"]), tuple(meta["horizon_minutes"]), meta["baselines"]
    qlabels = [M.quantile_label(t) for t in taus]
    n_h = len(hm)
    df = table.to_pandas()
    out: dict[str, SplitPredictions] = {}
    for split in meta["splits"]:
        part = df[df["split"] == split].sort_values(["sample", "horizon_minutes"], kind="stable")
        n = len(part) // n_h

        def cube(prefix):
            cols = [f"{prefix}{ql}" for ql in qlabels]
            return part[cols].to_numpy().reshape(n, n_h, len(qlabels))  # (N, H, Q)

        ts = part["ts"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()[::n_h]  # (N,)
        out[split] = SplitPredictions(
            ts=ts.astype("datetime64[ns]"),
            y=part["target"].to_numpy().reshape(n, n_h),  # (N, H)
            q=cube(""),
            baselines={name: cube(f"{name}_") for name in names},
        )
    return PredictionSet(taus=taus, horizon_minutes=hm, splits=out)
