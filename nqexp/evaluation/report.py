"""Reports: ablation and sweep summaries built from the local run store alone (fully offline).

An ablation report holds:
- per-variant test metrics per horizon, mean ± std over seeds (CRPS, skill vs the best baseline
  and each baseline, PICP80, calibration error, MPIW80, IC) and which baseline is the best;
- paired CRPS differences of every variant against every baseline, with block-bootstrap CIs;
- **paired** differences against the reference variant (the spec's first variant) on identical
  test samples: for every seed both variants scored, the per-sample CRPS difference
  d = CRPS_variant − CRPS_reference is averaged over seeds, and a moving-block bootstrap gives a
  95% CI of mean(d) (blocks of one trading day keep intraday dependence inside a block) and a
  bootstrap p-value;
- every verdict (better / worse / no clear difference) follows the p-value adjusted over all the
  report's comparisons together (Benjamini–Hochberg by default, or Holm: `comparisons(method=)`),
  and the report says which method and how many comparisons;
- the backtest of the test split (docs/metrics.md §10): Sharpe, drawdown, profit factor and
  trades per variant and horizon (mean ± std over seeds) and the equity curves (first seed);
- learning curves: train loss and val CRPS per epoch, a line per variant (mean over seeds), from
  the run store's per-epoch history;
- the calibration figures of each variant (reliability, PIT, coverage by time of day);
- every sanity-gate flag.

Seed ensembles (`<variant>-ensemble` rows, docs/experiments.md §16) are variants like any other here:
in the summary, against every baseline and against the reference, and in the number of comparisons.
Having no seed of their own (seed -1), they are paired with each of the other side's seeds in the
fold; in the training budget they count their members' steps.

`build_report` writes `<store>/<experiment>/report.md` (or .html) with figures beside it, or to `out`
(a read-only or moved store reports elsewhere; trial figures outside the report's folder are copied
next to it, so the links never point into another tree).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nqexp.errors import CredentialsError, DataError
from nqexp.evaluation import plots
from nqexp.evaluation.evaluate import load_predictions
from nqexp.metrics import ADJUSTMENTS, block_bootstrap_replicates, bootstrap_p_value, crps_quantile, horizon_label
from nqexp.model.train import TRUNCATED

log = logging.getLogger(__name__)

# Backtest statistics shown in the report, as `test/backtest_<stat>_<horizon>` keys (backtest.py).
# excess_sharpe = sharpe - benchmark_sharpe, the always-long book on the same samples and costs.
BACKTEST_METRICS = ("sharpe", "benchmark_sharpe", "excess_sharpe", "long_share", "sharpe_daily", "max_dd",
                    "profit_factor", "trades", "net_pnl", "hit_rate")
SUMMARY_METRICS = ("crps", "crpss_best", "crpss_climatology", "crpss_volscaled", "crpss_mcgarch", "crpss_lgbm",
                   "picp80", "calib_err", "mpiw80", "ic",
                   # the forecast before recalibration (eval.recalibrate / median_shrink), when it differs
                   "crps_model_raw", "picp80_model_raw", "calib_err_model_raw")


@dataclass
class ReportData:
    experiment: str
    trials: pd.DataFrame        # experiment, trial, variant, seed, status, gated, dir, ...
    metrics: pd.DataFrame       # trial, key, value
    flags: pd.DataFrame         # trial, gate, reason
    reference: str              # the variant others are compared with
    epochs: pd.DataFrame = None  # trial, epoch, key, value: the per-epoch training history
    baseline_notes: list = None  # baselines not fitted as specified (e.g. lgbm on too few samples)

    def __post_init__(self):
        if self.epochs is None:
            self.epochs = pd.DataFrame(columns=["trial", "epoch", "key", "value"])
        self.baseline_notes = list(self.baseline_notes or [])


def load(store, experiment: str) -> ReportData:
    trials = store.trials_frame(experiment)
    if trials.empty:
        known = store.experiment_names()
        raise DataError(f"no experiment {experiment!r} in {store.path}; known: {known or 'none'}")
    metrics = store.metrics_frame(experiment)
    flags = store.flags_frame(experiment)
    row = store.experiment(experiment)
    import yaml

    variants = list((yaml.safe_load(row["spec_yaml"]) or {}).get("variants") or {})
    order = [v for v in variants if v in set(trials["variant"])] or sorted(trials["variant"].unique())
    notes = list((row.get("provenance") or {}).get("baseline_notes") or [])
    return ReportData(experiment, trials, metrics, flags, reference=order[0], epochs=store.epochs_frame(experiment),
                      baseline_notes=notes)


def variant_order(data: ReportData) -> list[str]:
    """The reference first, then the other variants; each seed ensemble right after its variant."""
    seen = list(dict.fromkeys(data.trials["variant"]))
    of = ensemble_variants(data)                      # ensemble variant -> its members' variant
    after: dict[str, list[str]] = {}
    for ens, base in of.items():
        after.setdefault(base, []).append(ens)
    out = []
    for v in [data.reference] + [v for v in seen if v not in of]:
        for w in (v, *after.get(v, [])):
            if w not in out:
                out.append(w)
    return out + [v for v in seen if v not in out]     # an ensemble whose members' rows were removed


def ensemble_variants(data: ReportData) -> dict[str, str]:
    """The variants whose rows are seed ensembles (rows that list their `members`, seed -1;
    docs/experiments.md §16) -> the variant of their members. Empty for stores before ensembles."""
    t = data.trials
    if "members" not in t:
        return {}
    variant_of = dict(zip(t["trial"], t["variant"]))
    out = {}
    for r in t[t["members"].notna()].itertuples():
        members = _members(r)
        out[r.variant] = variant_of.get(members[0], r.variant) if members else r.variant
    return out


def _members(row) -> list[str]:
    """A trials row's ensemble members ([] for a trained trial)."""
    import json

    raw = getattr(row, "members", None)
    return json.loads(raw) if isinstance(raw, str) and raw else []


def _summary_groups(data: ReportData, split: str):
    """(variant, horizon label, best baseline, {"seeds": n, "folds": n}, name -> finite values over the variant's trials) in
    variant order, 'all' first, where name is the metric without its horizon suffix; the one place both
    summary tables (numbers and text) read the store's metrics."""
    trials = data.trials.assign(fold=[_fold_of(r) for r in data.trials.itertuples()])
    m = data.metrics.merge(trials[["trial", "variant", "seed", "fold"]], on="trial")
    m = m[m["key"].str.startswith(f"{split}/")]
    m["name"] = m["key"].str[len(split) + 1:]
    for variant in variant_order(data):
        mv = m[m["variant"] == variant]
        labels = horizon_labels(mv["name"])
        suffix = re.compile(rf"(.+)_({'|'.join(map(re.escape, labels))})") if labels else None
        per_label: dict[str, dict[str, list[float]]] = {label: {} for label in ["all", *labels]}
        for name, value in zip(mv["name"], mv["value"].to_numpy(dtype=float)):
            hit = suffix.fullmatch(name) if suffix else None
            metric, label = (hit.group(1), hit.group(2)) if hit else (name, "all")
            per_label[label].setdefault(metric, []).append(value)
        scored = mv[mv["name"] == "crps"]
        seeds = {"seeds": int(scored["seed"].nunique()), "folds": int(scored["fold"].nunique())}
        for label, values in per_label.items():
            finite = {k: np.asarray(v, dtype=float) for k, v in values.items()}
            yield variant, label, _best_baseline(mv, label), seeds, {k: v[np.isfinite(v)] for k, v in finite.items()}


def summary_stats(data: ReportData, split: str = "test", metrics=None) -> pd.DataFrame:
    """The variants' metrics as numbers, tidy: one row per variant, horizon ('all' = the horizon mean,
    then '15m', ...) and metric (`metrics`, default every metric of the split: SUMMARY_METRICS first,
    then the rest by name), with n (finite values: seeds x folds), mean, std (ddof 1), ci_low and
    ci_high (the 95% Student-t interval of the mean over those values; NaN below two values) and the
    variant's best baseline at that horizon (docs/api.md §2)."""
    rows = []
    for variant, label, best, _, values in _summary_groups(data, split):
        names = list(metrics) if metrics is not None else \
            [*(k for k in SUMMARY_METRICS if k in values), *sorted(k for k in values if k not in SUMMARY_METRICS)]
        for metric in names:
            vals = values.get(metric, np.empty(0))
            n = len(vals)
            mean = float(vals.mean()) if n else float("nan")
            std = float(vals.std(ddof=1)) if n > 1 else float("nan")
            half = _t975(n) * std / np.sqrt(n) if n > 1 else float("nan")
            rows.append({"variant": variant, "horizon": label, "metric": metric, "n": n, "mean": mean, "std": std,
                         "ci_low": mean - half, "ci_high": mean + half, "best_baseline": best})
    cols = ["variant", "horizon", "metric", "n", "mean", "std", "ci_low", "ci_high", "best_baseline"]
    return pd.DataFrame(rows, columns=cols)


def _t975(n: int) -> float:
    """The 97.5% quantile of Student's t with n - 1 degrees of freedom (n >= 2)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def summary_table(data: ReportData, split: str = "test") -> pd.DataFrame:
    """Rows: variant x horizon; columns: metric -> 'mean ± std' over seeds (and n seeds): the text view of
    summary_stats for tables and the report."""
    rows = []
    for variant, label, best, seeds, values in _summary_groups(data, split):
        row = {"variant": variant, "horizon": label}
        for metric in SUMMARY_METRICS:
            row[metric] = _mean_std(values.get(metric, np.empty(0)))
        row["best_baseline"] = best
        row.update(seeds)  # distinct seeds and folds (a fold of a seed is one trial)
        rows.append(row)
    out = pd.DataFrame(rows)
    if "folds" in out and (out["folds"] <= 1).all():
        out = out.drop(columns="folds")
    # Columns of baselines an experiment did not run (eval.baselines) are dropped, not shown as n/a.
    return out[[c for c in out.columns if not (out[c] == "n/a").all()]]


def fold_table(data: ReportData, split: str = "test", metric: str = "crps") -> pd.DataFrame:
    """Rows: variant; columns: `metric` (horizon mean) in each rolling-origin fold, averaged over seeds,
    then the mean over folds. Empty with a single fold."""
    trials = data.trials.assign(fold=[_fold_of(r) for r in data.trials.itertuples()])
    if trials["fold"].nunique() < 2:
        return pd.DataFrame()
    m = data.metrics[data.metrics["key"] == f"{split}/{metric}"].merge(trials[["trial", "variant", "fold"]], on="trial")
    wide = m.groupby(["variant", "fold"])["value"].mean().unstack("fold")
    wide.columns = [f"fold {int(f)}" for f in wide.columns]
    wide["mean over folds"] = wide.mean(axis=1)
    order = [v for v in variant_order(data) if v in wide.index]
    return wide.loc[order].reset_index()


def budget_table(data: ReportData) -> pd.DataFrame:
    """One row per trial: optimizer steps, epochs, why it stopped, best step, and `truncated` (the
    wall-clock guard stopped it before its step budget). Stores older than the step budget lack
    steps and best_step (NaN). A seed ensemble trains nothing: its row (`stopped` = ensemble) shows
    `members`, how many trials it averages, and as steps and epochs the sum of theirs, the budget its
    forecast cost; it has no best step."""
    cols = ["trial", "variant", "seed", "fold", "steps", "epochs", "stopped", "best_step", "best_epoch"]
    trials = data.trials.reindex(columns=cols + ["members"])
    by_name = trials.set_index("trial")
    members = [_members(r) for r in trials.itertuples()]
    for col in ("steps", "epochs"):
        spent = [by_name[col].reindex(m).sum(min_count=len(m)) if m else v for m, v in zip(members, trials[col])]
        trials[col] = pd.to_numeric(pd.Series(spent, index=trials.index, dtype=object), errors="coerce")
    trials = trials[cols].assign(members=[len(m) if m else 1 for m in members])
    out = trials.assign(truncated=trials["stopped"] == TRUNCATED)
    order = {v: i for i, v in enumerate(variant_order(data))}
    return out.sort_values(["variant", "seed"], key=lambda s: s.map(order) if s.name == "variant" else s,
                           ignore_index=True)


def budget_note(budget: pd.DataFrame) -> str:
    """What a reader must know before comparing: did every finished trial train for the same number of
    steps, and was any truncated by the wall-clock guard?"""
    ensembles = budget["stopped"] == "ensemble"
    steps = budget.loc[~ensembles, "steps"].dropna()
    truncated = budget.loc[budget["truncated"], "trial"].tolist()
    parts = []
    if steps.empty:
        parts.append("The store does not record steps for these trials (trained before step budgets).")
    elif steps.nunique() == 1:
        parts.append(f"Every trial trained for the same {int(steps.iloc[0])} optimizer steps.")
    else:
        parts.append(f"The trials trained for different numbers of steps ({int(steps.min())} to "
                     f"{int(steps.max())}): comparisons between them mix model and budget "
                     "(early stopping, or truncation).")
    if ensembles.any():
        sizes = sorted(set(budget.loc[ensembles, "members"].astype(int)))
        parts.append("The seed-ensemble rows (`stopped` ensemble) train nothing: each averages the forecasts of its "
                     f"{' or '.join(map(str, sizes))} member seeds, so its steps are the sum of theirs, "
                     f"{' or '.join(map(str, sizes))} times a single trial's budget: against the reference "
                     "(one seed) it is a comparison at a larger budget.")
    if truncated:
        parts.append(f"Truncated by train.time_budget_s (not comparable): {', '.join(truncated)}.")
    return " ".join(parts)


def backtest_table(data: ReportData, split: str = "test") -> pd.DataFrame:
    """Rows: variant x horizon; columns: backtest statistic -> 'mean ± std' over seeds (and n seeds).
    Empty when no trial was backtested (eval.backtest: false)."""
    m = data.metrics.merge(data.trials[["trial", "variant"]], on="trial")
    prefix = f"{split}/backtest_"
    m = m[m["key"].str.startswith(prefix)]
    m = m.assign(name=m["key"].str[len(prefix):])
    labels = sorted({k.removeprefix("trades_") for k in m["name"] if re.fullmatch(r"trades_\d+[mh]", k)},
                    key=_label_minutes)
    rows = []
    for variant in variant_order(data):
        mv = m[m["variant"] == variant]
        for label in labels:
            if not (mv["name"] == f"trades_{label}").any():
                continue
            row = {"variant": variant, "horizon": label}
            for stat in BACKTEST_METRICS:
                row[stat] = _mean_std(mv.loc[mv["name"] == f"{stat}_{label}", "value"].to_numpy(dtype=float))
            row["seeds"] = int(mv.loc[mv["name"] == f"trades_{label}", "trial"].nunique())
            rows.append(row)
    return pd.DataFrame(rows)


def _best_baseline(mv: pd.DataFrame, label: str) -> str:
    """The baseline with the lowest mean CRPS at this horizon ('all': the horizon mean)."""
    suffix = "" if label == "all" else f"_{label}"
    pat = re.compile(rf"crps_([a-z]+){re.escape(suffix)}")
    means = {m.group(1): v for k, v in mv.groupby("name")["value"].mean().items() if (m := pat.fullmatch(k))}
    return min(means, key=means.get) if means else "n/a"


def baseline_differences(data: ReportData, split: str = "test", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per variant, horizon and baseline: the paired CRPS difference model − baseline on identical
    samples (averaged over seeds, pooled over folds), with a block-bootstrap 95% CI (one-day blocks
    that never cross a fold), its p-value, and in how many folds the difference has the pooled sign."""
    rows = []
    for variant in variant_order(data):
        by_fold = {}
        for fold, paths in _fold_paths(data, variant).items():
            preds = [p for p in (load_predictions(x) for x in paths) if split in p.splits]
            if preds and all(p.splits[split].ts.shape == preds[0].splits[split].ts.shape for p in preds):
                by_fold[fold] = preds
        if not by_fold:
            continue
        ref = next(iter(by_fold.values()))[0]
        for name in sorted(ref.splits[split].baselines):
            for h, minutes in enumerate(ref.horizon_minutes):
                parts = []
                for fold, preds in by_fold.items():
                    d, b = [], []
                    for p in preds:
                        sp = p.splits[split]
                        ok = np.isfinite(sp.y[:, h])
                        cm = np.full(sp.y.shape[0], np.nan)
                        cb = np.full(sp.y.shape[0], np.nan)
                        cm[ok] = _crps_any(sp.y[ok, h], sp.q[ok, h], p.taus, crps_quantile)
                        cb[ok] = crps_quantile(sp.y[ok, h], sp.baselines[name][ok, h], p.taus)
                        d.append(cm - cb)
                        b.append(cb)
                    parts.append((fold, np.nanmean(np.stack(d), axis=0), np.nanmean(np.stack(b), axis=0),
                                  preds[0].splits[split].ts))                  # (N_f,) averaged over seeds
                d, b, seg, ts = _pool(parts)
                lo, hi, p = _mean_ci_p(d, _day_block(ts), n_boot, seed, seg)
                mean = float(d.mean())
                rows.append({"variant": variant, "baseline": name, "horizon": horizon_label(minutes),
                             "seeds": len(next(iter(by_fold.values()))), "folds": len(by_fold),
                             "rel_pct": 100 * mean / float(b.mean()),
                             "ci_lo_pct": 100 * lo / float(b.mean()), "ci_hi_pct": 100 * hi / float(b.mean()),
                             "same_sign_folds": _same_sign(d, seg, mean),
                             "p": p, "p_adj": p, "verdict": _verdict(mean, p, ("model better", "model worse"))})
    return pd.DataFrame(rows)


def _fold_paths(data: ReportData, variant: str) -> dict[int, list[Path]]:
    """fold -> the predictions files of the variant's finished trials in that fold (one per seed)."""
    trials = data.trials[(data.trials["status"] == "finished") & (data.trials["variant"] == variant)]
    out: dict[int, list[Path]] = {}
    for r in trials.itertuples():
        path = Path(r.dir) / "predictions.parquet"
        if path.exists():
            out.setdefault(_fold_of(r), []).append(path)
    return dict(sorted(out.items()))


def _fold_of(row) -> int:
    fold = getattr(row, "fold", 0)
    return 0 if fold is None or fold != fold else int(fold)       # stores before folds: one fold


def _pool(parts) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """[(fold, d (N_f,), ref (N_f,), ts (N_f,))] -> the finite samples of every fold, concatenated in fold
    order, and their fold labels (the bootstrap's segments)."""
    d, r, seg, ts = [], [], [], []
    for fold, df, rf, tf in parts:
        ok = np.isfinite(df)
        d.append(df[ok])
        r.append(rf[ok])
        ts.append(np.asarray(tf)[ok])
        seg.append(np.full(int(ok.sum()), fold))
    return np.concatenate(d), np.concatenate(r), np.concatenate(seg), np.concatenate(ts)


def _same_sign(d: np.ndarray, seg: np.ndarray, pooled_mean: float) -> str:
    """'k/K': in how many of the K folds the mean difference has the sign of the pooled one."""
    folds = np.unique(seg)
    same = sum(np.sign(d[seg == f].mean()) == np.sign(pooled_mean) for f in folds)
    return f"{int(same)}/{len(folds)}"


def horizon_labels(keys) -> list[str]:
    """Horizon labels ('15m', '2h') present as crps_<label> keys, shortest first."""
    labels = {k.split("_", 1)[1] for k in keys if re.fullmatch(r"crps_\d+[mh]", k)}
    return sorted(labels, key=_label_minutes)


def _label_minutes(label: str) -> int:
    return int(label[:-1]) * (60 if label.endswith("h") else 1)


def _mean_std(vals: np.ndarray) -> str:
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return "n/a"
    if len(vals) == 1:
        return _fmt(vals[0])
    return f"{_fmt(vals.mean())} ± {_fmt(vals.std(ddof=1))}"


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e-2 and x != 0 else f"{x:.4f}"


def paired_differences(data: ReportData, split: str = "test", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per variant and horizon: the mean paired CRPS difference vs the reference on identical samples
    (same seed and fold; averaged over seeds, pooled over folds), its block-bootstrap CI (blocks never
    cross a fold), p-value, relative %, and in how many folds it has the pooled sign."""

    trials = data.trials[data.trials["status"] == "finished"]
    by_key = {(r.variant, int(r.seed), _fold_of(r)): Path(r.dir) / "predictions.parquet" for r in trials.itertuples()}
    rows = []
    for variant in variant_order(data)[1:]:
        per_fold: dict[int, tuple[list, list, np.ndarray]] = {}
        horizons = None
        for s, f, path, ref_path in _pairs(by_key, variant, data.reference):
            if not path.exists() or not ref_path.exists():
                continue
            a, b = load_predictions(path), load_predictions(ref_path)
            pa, pb = a.splits.get(split), b.splits.get(split)
            if pa is None or pb is None or pa.y.shape != pb.y.shape or not np.array_equal(pa.ts, pb.ts):
                log.warning("%s seed %d fold %d: test samples differ from the reference's; not paired", variant, s, f)
                continue
            d = np.full(pa.y.shape, np.nan)
            r = np.full(pa.y.shape, np.nan)
            for h in range(pa.y.shape[1]):
                ok = np.isfinite(pa.y[:, h]) & np.isfinite(pa.q[:, h]).all(1) & np.isfinite(pb.q[:, h]).all(1)
                # A point-head variant has one "quantile": score it as a degenerate forecast (CRPS = |y - m|).
                ca = _crps_any(pa.y[ok, h], pa.q[ok, h], a.taus, crps_quantile)
                cb = _crps_any(pb.y[ok, h], pb.q[ok, h], b.taus, crps_quantile)
                d[ok, h], r[ok, h] = ca - cb, cb
            diffs, refs, _ = per_fold.setdefault(f, ([], [], pa.ts))
            diffs.append(d)
            refs.append(r)
            horizons = a.horizon_minutes
        if not per_fold:
            continue
        seeds = max(len(v[0]) for v in per_fold.values())
        for h, minutes in enumerate(horizons):
            parts = [(f, np.nanmean(np.stack(dl), axis=0)[:, h], np.nanmean(np.stack(rl), axis=0)[:, h], ts)
                     for f, (dl, rl, ts) in per_fold.items()]                   # (N_f,) averaged over seeds
            d, r, seg, ts = _pool(parts)
            lo, hi, p = _mean_ci_p(d, _day_block(ts), n_boot, seed, seg)
            mean = float(d.mean())
            rows.append({"variant": variant, "horizon": horizon_label(minutes), "seeds": seeds,
                         "folds": len(per_fold), "n": int(len(d)), "mean_diff": mean, "ci_lo": lo, "ci_hi": hi,
                         "rel_pct": 100 * mean / float(r.mean()), "same_sign_folds": _same_sign(d, seg, mean),
                         "p": p, "p_adj": p, "verdict": _verdict(mean, p, ("better", "worse"))})
    return pd.DataFrame(rows)


def _pairs(by_key: dict, variant: str, reference: str) -> list[tuple[int, int, Path, Path]]:
    """(seed, fold, variant's predictions, reference's predictions) of every paired comparison: the same
    seed and fold; a seed ensemble (seed -1) has no seed to match, so it is paired with each of the other
    side's seeds in its fold, and the differences averaged over those seeds give CRPS(ensemble) minus the
    mean CRPS of the other side's seeds."""
    out = []
    for (v, s, f), path in sorted(by_key.items()):
        if v != variant:
            continue
        if (reference, s, f) in by_key:
            out.append((s, f, path, by_key[(reference, s, f)]))
        elif s < 0 or (reference, -1, f) in by_key:
            out += [(rs, f, path, rp) for (rv, rs, rf), rp in sorted(by_key.items()) if rv == reference and rf == f]
    return out


ALPHA = 0.05            # the level of every verdict, after adjustment
ADJUST_METHOD = "bh"    # Benjamini–Hochberg: the usual choice for exploratory ablations (docs/metrics.md §12)
ADJUST_NAMES = {"bh": "Benjamini–Hochberg (false discovery rate)", "holm": "Holm (family-wise error)"}


def _mean_ci_p(d: np.ndarray, block: int, n_boot: int, seed: int, segments=None) -> tuple[float, float, float]:
    """95% block-bootstrap percentile CI of mean(d) and the bootstrap p-value of mean(d) = 0; blocks
    stay inside their segment (fold)."""
    reps = block_bootstrap_replicates(d, np.mean, block=block, n_boot=n_boot, seed=seed, segments=segments)
    if len(reps) == 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi = np.quantile(reps, [ALPHA / 2, 1 - ALPHA / 2])
    return float(lo), float(hi), bootstrap_p_value(reps)


def _verdict(mean: float, p_adj: float, words: tuple[str, str]) -> str:
    """(lower CRPS word, higher CRPS word) when the adjusted p is below ALPHA, else no clear difference."""
    if not np.isfinite(p_adj) or p_adj >= ALPHA:
        return "no clear difference"
    return words[0] if mean < 0 else words[1]


def comparisons(data: ReportData, split: str = "test", n_boot: int = 1000, seed: int = 0,
                method: str = ADJUST_METHOD) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every comparison the report makes, as one family: (paired vs the reference, vs every baseline).

    Each row's bootstrap p-value is adjusted over ALL rows of both tables (`method`: "bh" or "holm"),
    and its verdict follows the adjusted p, so a verdict survives the number of tests made. The raw
    95% CIs are kept for the size of each effect; `attrs["adjustment"]` names the method and the count."""
    paired = paired_differences(data, split, n_boot, seed)
    vs_baselines = baseline_differences(data, split, n_boot, seed)
    p = np.concatenate([paired["p"].to_numpy(float) if len(paired) else np.empty(0),
                        vs_baselines["p"].to_numpy(float) if len(vs_baselines) else np.empty(0)])
    adj = ADJUSTMENTS[method](p)
    k = len(paired)
    for frame, part, words in ((paired, adj[:k], ("better", "worse")),
                               (vs_baselines, adj[k:], ("model better", "model worse"))):
        if len(frame):
            frame["p_adj"] = part
            mean = frame["mean_diff"] if "mean_diff" in frame else frame["rel_pct"]
            frame["verdict"] = [_verdict(m, q, words) for m, q in zip(mean, part)]
        frame.attrs["adjustment"] = {"method": method, "name": ADJUST_NAMES[method],
                                     "comparisons": int(np.isfinite(p).sum()), "alpha": ALPHA}
    return paired, vs_baselines


def _crps_any(y, q, taus, crps_quantile):
    if q.shape[-1] == 1:
        return np.abs(y - q[:, 0])
    return crps_quantile(y, q, taus)


def _day_block(ts) -> int:
    ts = pd.DatetimeIndex(ts)
    if len(ts) < 2:
        return 1
    per_day = pd.Series(1, index=ts).groupby(ts.floor("D")).size().median()
    return max(1, int(per_day))


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return _fmt(v)
    return str(v)


def build_report(store, experiment: str, fmt: str = "md", n_boot: int = 1000, out: str | os.PathLike | None = None
                 ) -> Path:
    """Write the experiment's report and return its path: `out`, or `<store>/<experiment>/report.<fmt>`.
    Figures go to `<its folder>/<its stem>_figures/` (`report_figures/` beside report.md)."""
    if fmt not in ("md", "html"):
        raise DataError(f"--format must be md or html, not {fmt!r}")
    data = load(store, experiment)
    if out is None:
        # Into the store: refuse a read-only one before drawing anything, and say how to report elsewhere.
        store.ensure_writable(hint=f"; write the report elsewhere: nqexp report {experiment} --out DIR/report.{fmt}")
        path = store.experiment_dir(experiment) / f"report.{fmt}"
    else:
        path = Path(out).expanduser().absolute()
        if path.is_dir():
            raise DataError(f"--out {path} is a folder; give the report's file name, e.g. {path / f'report.{fmt}'}")
    try:
        return _write_report(data, path, fmt, n_boot)
    except OSError as exc:
        raise DataError(f"cannot write the report {path}: {exc.strerror or exc} ({exc.filename or path}); "
                        "point --out at a writable folder") from None


def _write_report(data: ReportData, path: Path, fmt: str, n_boot: int) -> Path:
    out_dir = path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    experiment = data.experiment
    summary = summary_table(data)
    paired, vs_baselines = comparisons(data, n_boot=n_boot)
    adjustment = vs_baselines.attrs["adjustment"]
    adjust_note = (f"Verdicts (better / worse / no clear difference) follow p-values adjusted for the "
                   f"{adjustment['comparisons']} comparisons of this report together (both tables) with "
                   f"{adjustment['name']}, at {adjustment['alpha']:g}; `p` is the block-bootstrap p-value, "
                   f"`p_adj` the adjusted one.\n")
    backtests = backtest_table(data)
    budget = budget_table(data)
    folds = fold_table(data)
    figures = _figures(data, out_dir / f"{path.stem}_figures")
    counts = data.trials["status"].value_counts().to_dict()
    ensembles = [v for v in variant_order(data) if v in ensemble_variants(data)]
    ensemble_note = (
        f"Rows {', '.join(f'`{v}`' for v in ensembles)} are seed ensembles: the mean of "
        "the variant's seeds' quantiles, level by level (ordered members give ordered means), scored on the same "
        "samples against the same baselines. An ensemble is one forecast per fold, so it has no spread over seeds; "
        f"in the paired table it is compared with each of the reference's seeds and the differences averaged "
        f"(CRPS(ensemble) minus the mean CRPS of `{data.reference}`'s seeds), and its rows count among the "
        "comparisons adjusted together. It costs its members' training budget (above).\n") if ensembles else ""
    parts = [
        f"# Experiment `{experiment}`\n",
        f"Trials: {len(data.trials)} ({', '.join(f'{v} {k}' for k, v in counts.items())}). "
        f"Reference variant for paired comparisons: `{data.reference}`.\n",
        "## Training budget\n",
        budget_note(budget) + " Budgets are optimizer steps (`train.max_steps`), the same for every variant "
        "and seed; `train.time_budget_s` is only a guard.\n",
        _md_table(budget),
        "## Test metrics per variant (mean ± std over seeds and folds)\n",
        "CRPS is in log-return units; `crpss_*` is the CRPS skill 1 − CRPS/CRPS_baseline against baselines "
        "fitted on train only (positive = better than the baseline)."
        + (" The model is recalibrated on val (`eval.recalibrate`, `eval.median_shrink`; docs/metrics.md §13); "
           "the `*_model_raw` columns score its forecast before that, on the same samples."
           if "crps_model_raw" in summary.columns else "") + "\n",
        *([ensemble_note] if ensemble_note else []),
        _md_table(summary),
        *(["## Test CRPS per rolling-origin fold (mean over seeds)\n",
           "Each fold has its own train, purge, val and test; its scalers and baselines are fitted on its own "
           "train. The difference tables below pool every fold's test samples (bootstrap blocks never cross a "
           "fold) and say in how many folds each difference has the pooled sign (`same_sign_folds`): an "
           "effect that flips between folds is not a finding.\n",
           _md_table(folds)] if len(folds) else []),
        "## Every variant against every baseline (identical test samples)\n",
        *([("**Baselines not fitted as specified:** " + "; ".join(data.baseline_notes) + ".\n")]
          if data.baseline_notes else []),
        "rel_pct = mean over samples of CRPS(model) − CRPS(baseline), as % of the baseline's CRPS, averaged "
        "over seeds; CI = 95% moving-block bootstrap (one-day blocks). The model's claim is made against "
        "the best baseline (`best_baseline` above).\n",
        adjust_note,
        _md_table(vs_baselines),
        f"## Paired CRPS differences vs `{data.reference}` (identical test samples)\n",
        "mean_diff = mean over samples of CRPS(variant) − CRPS(reference), averaged over seeds; "
        "CI = 95% moving-block bootstrap (one-day blocks). Positive = the variant is worse."
        + (" A seed ensemble is paired with each of the reference's seeds (see above)." if ensembles else "")
        + "\n",
        adjust_note,
        _md_table(paired),
        "## Backtest of the test split (secondary)\n",
        "Long/short on the sign of the median, sized by the inverse 80% interval width, non-overlapping "
        "trades, net of costs (docs/metrics.md §10). Sharpe is annualized at the strategy's trade "
        "frequency, sharpe_daily on session-day P&L; max_dd and net_pnl in $ per average contract. "
        "benchmark_sharpe is the always-long book on the same samples and costs, excess_sharpe = sharpe - "
        "benchmark_sharpe: a signal that is mostly long (long_share near 1) earns the drift, not skill.\n",
        _md_table(backtests),
        "## Sanity gates\n",
        _md_table(data.flags.merge(data.trials[["trial", "variant"]], on="trial")[["variant", "trial", "gate", "reason"]]
                  if not data.flags.empty else data.flags),
        "## Figures\n",
    ]
    for title, fig in figures:
        parts.append(f"### {title}\n\n![{title}]({Path(os.path.relpath(fig, out_dir)).as_posix()})\n")
    text = "\n".join(parts)
    tmp = path.with_name(f".{path.name}.tmp")       # a full disk leaves the last report whole, not a torn one
    try:
        tmp.write_text(text if fmt == "md" else _to_html(text, out_dir))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _figures(data: ReportData, out: Path) -> list[tuple[str, Path]]:
    """Learning curves and backtest equity curves across variants (drawn here), then the
    reliability and CRPS-by-horizon figures per variant, from the first seed's saved plots."""
    figs = []
    curves = learning_curve_figure(data, out / "learning_curves.png")
    if curves is not None:
        figs.append(("learning curves: train loss and val CRPS per epoch (mean over seeds)", curves))
    equity = equity_figure(data, out / "backtest_equity.png")
    if equity is not None:
        figs.append(("backtest equity curves, test split (first seed)", equity))
    trials = data.trials[data.trials["status"] == "finished"]
    for variant in variant_order(data):
        rows = trials[trials["variant"] == variant].sort_values("seed")
        if rows.empty:
            continue
        plot_dir = Path(rows.iloc[0]["dir"]) / "plots"
        for name in ("test_reliability", "test_pit", "test_coverage_by_hour", "test_crps_by_horizon"):
            p = plot_dir / f"{name}.png"
            if p.exists():
                if not p.is_relative_to(out.parent):     # a report outside the store: a copy beside it
                    out.mkdir(parents=True, exist_ok=True)
                    p = Path(shutil.copyfile(p, out / f"{variant}_{name}.png"))
                seed = int(rows.iloc[0]["seed"])
                figs.append((f"{variant}: {name.removeprefix('test_').replace('_', ' ')} "
                             f"({f'seed {seed}' if seed >= 0 else 'seed ensemble'})", p))
    return figs


def _first_seed_dirs(data: ReportData) -> dict[str, tuple[int, Path]]:
    """variant -> (seed, trial dir) of its first finished seed, in variant order."""
    trials = data.trials[data.trials["status"] == "finished"]
    out = {}
    for variant in variant_order(data):
        rows = trials[trials["variant"] == variant].sort_values("seed")
        if not rows.empty:
            out[variant] = (int(rows.iloc[0]["seed"]), Path(rows.iloc[0]["dir"]))
    return out


def equity_figure(data: ReportData, path: Path) -> Path | None:
    """Cumulative net P&L of the test backtest against trade exit time, a panel per horizon and a
    line per variant (its first seed's backtest_equity.parquet), with the buy-and-hold benchmark
    dashed; None when no trial has one."""

    curves = {}
    for variant, (seed, d) in _first_seed_dirs(data).items():
        p = d / "backtest_equity.parquet"
        if p.exists():
            curves[variant] = pd.read_parquet(p)
    labels = sorted({h for eq in curves.values() for h in eq["horizon"]}, key=_label_minutes)
    if not labels:
        return None
    fig, axes = plots._figure(len(labels), 1, figsize=(8.0, 2.6 * len(labels)))
    for ax, label in zip(axes[:, 0], labels):
        bench = None
        for variant, eq in curves.items():
            book = eq["book"] if "book" in eq else "signal"   # stores written before the benchmark existed
            part = eq[(eq["horizon"] == label) & (book == "signal")]
            if len(part):
                ax.plot(part["exit_ts"], part["equity"], label=variant, lw=1.0)
            if bench is None and "book" in eq:
                bench = eq[(eq["horizon"] == label) & (eq["book"] == "buy_and_hold")]
        if bench is not None and len(bench):   # the same test samples for every variant: draw it once
            ax.plot(bench["exit_ts"], bench["equity"], color="black", ls="--", lw=1.0, label="buy and hold")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(f"{label} horizon", fontsize=10)
        ax.set_ylabel("cumulative net P&L ($)")
    axes[0, 0].legend(fontsize=8)
    return plots._save(fig, path)


def learning_curve_figure(data: ReportData, path: Path) -> Path | None:
    """Train loss and val CRPS per epoch, a line per variant (mean over its seeds), point-head variants
    in a row of their own (plots.learning_curve_axes); None without epoch history in the store."""
    import yaml

    e = data.epochs
    if e.empty or not e["key"].isin(plots.LEARNING_KEYS).any():
        return None
    e = e[e["key"].isin(plots.LEARNING_KEYS)].merge(data.trials[["trial", "variant"]], on="trial")
    mean = e.groupby(["variant", "key", "epoch"])["value"].mean().reset_index()
    order = {v: i for i, v in enumerate(variant_order(data))}
    mean = mean.sort_values("variant", key=lambda v: v.map(order), kind="stable")
    heads = {variant: ((yaml.safe_load(spec) or {}).get("model") or {}).get("head", "quantile")
             for variant, spec in zip(data.trials["variant"], data.trials["spec_yaml"])}
    return plots.learning_curves(path, mean, heads)


def _to_html(markdown_text: str, base: Path) -> str:
    """Markdown -> self-contained HTML: CommonMark plus tables (markdown-it-py, which rich already
    depends on), figures inlined as base64 so the file can be mailed or archived on its own."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable("table")

    def inline_image(match: re.Match) -> str:
        alt, src = match.group(1), match.group(2)
        data = base64.b64encode((base / src).read_bytes()).decode()
        return f"![{alt}](data:image/png;base64,{data})"

    body = md.render(re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", inline_image, markdown_text))
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}" \
            "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:900px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{body}</body></html>"


def wandb_report(data: ReportData, *, project: str, entity: str | None, summary: pd.DataFrame | None = None,
                 paired: pd.DataFrame | None = None):
    """The experiment's W&B Report object (built offline; `publish_wandb_report` saves it online).

    Blocks: the summary and paired tables as Markdown, then panels over this experiment's runs
    (grouped by variant): val CRPS curves, test CRPS and PICP80 per variant, gate flags.
    """
    import wandb_workspaces.reports.v2 as wr

    summary = summary_table(data) if summary is None else summary
    paired = comparisons(data)[0] if paired is None else paired
    runset = wr.Runset(project=project, entity=entity or "", name=data.experiment,
                       filters=f"Group = '{data.experiment}'", groupby=["job_type"])
    flags = data.flags if not data.flags.empty else pd.DataFrame(columns=["trial", "gate", "reason"])
    return wr.Report(
        project=project, entity=entity or "", title=f"nqexp: {data.experiment}",
        description=f"Ablation report for {data.experiment}; reference variant {data.reference}.",
        blocks=[
            wr.H1(text=f"Experiment {data.experiment}"),
            wr.MarkdownBlock(text="## Test metrics per variant (mean ± std over seeds)\n\n" + _md_table(summary)),
            wr.MarkdownBlock(text=f"## Paired CRPS differences vs {data.reference}\n\n" + _md_table(paired)),
            wr.PanelGrid(runsets=[runset], panels=[
                wr.LinePlot(title="val CRPS", x="Step", y=["val/crps"]),
                wr.BarPlot(title="test CRPS", metrics=["test/crps"]),
                wr.BarPlot(title="test PICP80", metrics=["test/picp80"]),
                wr.BarPlot(title="test CRPS skill vs climatology", metrics=["test/crpss_climatology"]),
            ]),
            wr.MarkdownBlock(text="## Sanity gates\n\n" + _md_table(flags)),
        ],
    )


def publish_wandb_report(store, experiment: str, *, project: str, entity: str | None) -> str:
    """Save the W&B Report online and return its URL. Needs WANDB_API_KEY (the Reports API is online-only)."""
    import os

    if not os.environ.get("WANDB_API_KEY"):
        raise CredentialsError("publishing a W&B Report needs WANDB_API_KEY in the environment "
                               "(the local report does not); the key is never stored in specs")
    report = wandb_report(load(store, experiment), project=project, entity=entity)
    report.save()
    return report.url
