"""Seed ensembles: a variant's forecast as the mean of its seeds' quantiles (docs/experiments.md §16).

After the trials of `nqexp run`, each variant (in each fold) with two or more seeds gets one more row,
`<variant>-ensemble` (`<variant>-ensemble-f<k>` with folds): its quantiles are the members' quantiles
averaged level by level, on the very samples the members scored. Each member's quantiles are ordered
(the model's structure, docs/model.md), and a mean of ordered vectors is ordered, so an ensemble never
crosses. It is scored like a trial (val and test against the same baselines, the gates, the backtest
when the origins' closes are at hand) and saved like one (predictions.parquet, metrics_table.parquet,
plots); its bundle is only the list of its members (bundle.write_ensemble). It trains nothing, so it has
no steps of its own: its budget is its members' (the report's training-budget table says so).

This module works on files, without Ray or the run store: tune.py records the rows and the W&B runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nqexp.errors import DataError
from nqexp.evaluation import evaluate
from nqexp.evaluation import plots as figures
from nqexp.experiment.bundle import write_ensemble
from nqexp.experiment.pipeline import _backtest_test
from nqexp.experiment.spec import ENSEMBLE_SUFFIX

SUFFIX = ENSEMBLE_SUFFIX  # `<variant>-ensemble`: the ensemble's variant; trial names add the fold suffix
MIN_MEMBERS = 2
SPLITS = ("val", "test")


@dataclass(frozen=True)
class EnsembleSpec:
    """One ensemble to build: its trial name and variant, the fold, and its member trials (seed order)."""

    name: str                  # `<variant>-ensemble`, `-f<k>` with several folds
    variant: str               # `<variant>-ensemble`: the row the report shows
    member_variant: str
    fold: int
    members: tuple             # spec.TrialSpec of each member


def ensembles(trials) -> list[EnsembleSpec]:
    """The ensembles of a run's trials (spec.trials()): one per variant and fold with >= 2 seeds, in
    variant order. Trial names come from the members' own (`full-s0-f1` -> `full-ensemble-f1`), so the
    fold suffix is the one spec.trials() writes."""
    groups: dict[tuple[str, int], list] = {}
    for t in trials:
        groups.setdefault((t.variant, t.fold), []).append(t)
    out = []
    for (variant, fold), members in groups.items():
        if len(members) < MIN_MEMBERS:
            continue
        first = members[0]
        fold_suffix = first.trial_name.removeprefix(f"{variant}-s{first.seed}")    # "" or "-f<k>"
        out.append(EnsembleSpec(f"{variant}{SUFFIX}{fold_suffix}", f"{variant}{SUFFIX}", variant, fold,
                                tuple(members)))
    return out


def mean_quantiles(qs: Sequence[np.ndarray]) -> np.ndarray:
    """(M, ..., Q) -> (..., Q): the members' quantiles averaged level by level. Ordered inputs give an
    ordered output: q_k <= q_k+1 in every member sums to the same in the mean."""
    qs = [np.asarray(q) for q in qs]
    assert len(qs) >= 1 and all(q.shape == qs[0].shape for q in qs), \
        f"members' quantiles differ in shape: {[q.shape for q in qs]}"
    return np.mean(np.stack(qs), axis=0).astype(qs[0].dtype)


def average_predictions(paths: Sequence[Path]) -> evaluate.PredictionSet:
    """The members' saved predictions (trial_dir/predictions.parquet) -> one PredictionSet whose model
    quantiles are their mean. DataError when they do not share levels, horizons, splits and samples
    (origins and targets): averaging then would mix forecasts of different things."""
    sets = [evaluate.load_predictions(p) for p in paths]
    first = sets[0]
    out = {}
    for path, s in zip(paths[1:], sets[1:]):
        if s.taus != first.taus or s.horizon_minutes != first.horizon_minutes or list(s.splits) != list(first.splits):
            raise DataError(f"{path}: levels, horizons or splits differ from {paths[0]}'s; an ensemble averages "
                            f"forecasts of the same samples")
    for split, sp in first.splits.items():
        for path, s in zip(paths[1:], sets[1:]):
            other = s.splits[split]
            same = (other.ts.shape == sp.ts.shape and np.array_equal(other.ts, sp.ts)
                    and np.array_equal(other.y, sp.y, equal_nan=True))
            if not same:
                raise DataError(f"{path}: the {split} samples (origins or targets) differ from {paths[0]}'s; "
                                f"an ensemble averages forecasts of the same samples")
        out[split] = evaluate.SplitPredictions(ts=sp.ts, y=sp.y, q=mean_quantiles([s.splits[split].q for s in sets]),
                                               baselines=sp.baselines)
    return evaluate.PredictionSet(taus=first.taus, horizon_minutes=first.horizon_minutes, splits=out)


def score_ensemble(member_dirs: Sequence[Path], out_dir: Path, eval_cfg, data=None, plots: bool = False):
    """Average the members' predictions, score val and test as score_trial scores a trial (the members'
    baselines, the gates; the test backtest when `data`, the fold's PreparedData, holds the origins'
    closes), and write predictions.parquet, metrics_table.parquet, the plots and the ensemble's bundle
    into `out_dir`. Returns (flat metrics, gate flags, {plot name: path})."""
    import pandas as pd

    out_dir = Path(out_dir)
    member_dirs = [Path(d) for d in member_dirs]
    preds = average_predictions([d / "predictions.parquet" for d in member_dirs])
    taus, hm = preds.taus, preds.horizon_minutes
    tables = [evaluate.evaluate_split_table(split, preds.splits[split].y, preds.splits[split].q, taus, hm,
                                            preds.splits[split].ts, preds.splits[split].baselines)
              for split in SPLITS if split in preds.splits]
    table = pd.concat(tables, ignore_index=True)
    flags = evaluate.check_gates(table, thresholds=eval_cfg.gates, strict=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluate.save_predictions(out_dir / "predictions.parquet", preds.splits, taus, hm)
    table.to_parquet(out_dir / "metrics_table.parquet")
    flat = {}
    for split in SPLITS:
        part = table[table["split"] == split]
        if len(part):
            flat.update({f"{split}/{k}": v for k, v in evaluate.flatten_metrics(part).items()})
    test = preds.splits.get("test")
    if eval_cfg.backtest and test is not None and data is not None:
        flat.update(_backtest_test(test, data, taus, out_dir))
    plot_paths = {}
    if plots and test is not None:
        plot_paths = figures.plot_all(out_dir / "plots", "test", test.ts, test.y, test.q, taus, hm, table)
    write_ensemble(out_dir, [d.name for d in member_dirs])
    return flat, flags, {k: str(v) for k, v in plot_paths.items()}
