"""Pipeline: the stage wiring one trial needs, without Ray.

- `prepare_data`: DuckDB -> (demo data if the spec asks for it) -> bars -> features -> purged
  splits -> train-only scalers -> windowed numpy datasets (`PreparedData`, picklable);
- `score_trial`: a trained checkpoint -> val/test quantiles -> metrics against baselines fitted on
  train only, sanity gates, predictions Parquet and plots;
- `provenance`: what a run was made with (code version, package versions, the bars it read).

tune.py runs these inside Ray Tune trials; tests, benchmarks and notebooks call them directly,
so importing this module must never import ray (tests/test_pipeline.py checks it).
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import nqexp
from nqexp import features
from nqexp.data import bars, db, demo, ingest
from nqexp.errors import DataError, SpecError
from nqexp import metrics as M
from nqexp.evaluation import backtest, baselines, evaluate, recalibrate
from nqexp.evaluation import plots as figures
from nqexp.model import windows
from nqexp.model.train import load_checkpoint_model, predict

# Packages whose versions go into a run's provenance (None when not installed).
PROVENANCE_PACKAGES = ("torch", "ray", "wandb", "duckdb", "numpy", "pandas", "pyarrow", "databento",
                       "optuna", "lightgbm", "arch")
DATA_SECTIONS = ("data", "features", "windows", "splits")


# ------------------------------------------------------------------------------------------
# Data preparation (DuckDB is read here, once per data configuration)


@dataclass
class PreparedData:
    """The windowed datasets of one data configuration, plain numpy (picklable, Ray-friendly)."""

    key: str                                   # data_key() of the trial specs that share it
    datasets: dict[str, Any]                   # split -> windows.WindowDataset
    horizon_minutes: tuple[int, ...]
    names: list[str]
    notes: list[str] = field(default_factory=list)
    baseline_notes: list[str] = field(default_factory=list)  # baselines not fitted as specified (also in notes)
    baselines: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # split -> name -> (n, H, Q), val/test
    close: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (n,) adjusted origin close (backtest P0)
    # Fitted on train, saved in each trial's bundle so `nqexp predict` can forecast new bars:
    scalers: Any = None                                # windows.Scalers (with the MC-GARCH when windows.sigma is mcgarch)
    baseline_state: dict[str, Any] = field(default_factory=dict)  # name -> fitted state (baselines.fit_and_predict)

    @property
    def nbytes(self) -> int:
        return sum(ds.nbytes for ds in self.datasets.values())


def data_key(trial_spec) -> str:
    """Trials share prepared data when their data/features/windows/splits sections agree (variants
    usually change only the model). Takes a spec or its resolved dict (`to_dict()`)."""
    spec_dict = trial_spec if isinstance(trial_spec, Mapping) else trial_spec.to_dict()
    part = {k: spec_dict.get(k) for k in DATA_SECTIONS}
    # The baselines are fitted with the data, at the model's quantile levels.
    part["baselines"] = (spec_dict.get("eval") or {}).get("baselines")
    part["quantiles"] = (spec_dict.get("model") or {}).get("quantiles")
    return hashlib.sha1(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prepare_data(trial_spec, db_path, notes: list[str] | None = None) -> PreparedData:
    """DuckDB -> (demo data if needed) -> bars -> features -> splits -> scalers -> datasets."""
    import dataclasses
    import datetime as dt

    notes = notes if notes is not None else []
    data_cfg = trial_spec.data
    con = db.connect(db_path)
    try:
        n_raw, first, last = ingest.series_span(con, data_cfg.symbol)
        is_demo = data_cfg.symbol == demo.DEMO_SYMBOL and bool(data_cfg.demo_days)
        # A demo series made earlier (e.g. `nqexp data demo --days 30`) may not span the split dates,
        # or may come from an older generator (other dynamics, no latent state for the oracle).
        old = is_demo and n_raw and not ingest.demo_is_current(con)
        stale = is_demo and n_raw and (old or first.date() > trial_spec.splits.train_start
                                       or last.date() + dt.timedelta(days=3) < trial_spec.splits.test_end)
        if n_raw == 0 or stale:
            if not is_demo:
                raise DataError(
                    f"no bars for data.symbol {data_cfg.symbol!r} in {db.resolve_db_path(db_path)}; "
                    "import them first (nqexp data import / nqexp data download)"
                )
            t0 = time.perf_counter()
            generated = demo.generate(days=data_cfg.demo_days, seed=data_cfg.demo_seed)
            generated.seed = data_cfg.demo_seed
            ingest.write_demo(con, generated)
            why = (f"its {demo.DEMO_SYMBOL} bars came from an older demo generator" if old else
                   f"its {demo.DEMO_SYMBOL} bars ({first:%Y-%m-%d}..{last:%Y-%m-%d}) did not span the split dates"
                   if stale else f"the database had no {demo.DEMO_SYMBOL} bars")
            notes.append(f"Generated {len(generated.bars):,} demo bars ({data_cfg.demo_days} days, seed "
                         f"{data_cfg.demo_seed}) in {time.perf_counter() - t0:.1f}s because {why}.")
        fs = features.feature_set(trial_spec.features.set, path=trial_spec.features.path)
        built = bars.ensure_bars(con, data_cfg.symbol, [fs.freq_minutes])   # only the bars the set reads
        if built is not None:
            notes.append(f"Built bars: {built.summary()}.")
        arrays = features.load_arrays(con, fs, data_cfg.symbol)   # the set resolved above
    finally:
        con.close()
    # The purge must also cover the longest feature look-back (docs/features.md).
    split_cfg = trial_spec.splits
    if split_cfg.feature_lookback_bars < arrays.warmup_bars:
        split_cfg = dataclasses.replace(split_cfg, feature_lookback_bars=int(arrays.warmup_bars))
    split_idx = windows.make_splits(arrays, split_cfg, trial_spec.windows)
    for split, idx in split_idx.items():
        if len(idx) == 0:
            raise SpecError(f"splits: the {split} split has no samples for {data_cfg.symbol} "
                            f"({arrays.ts[0]} .. {arrays.ts[-1]}); check the split dates against the data")
    scalers = windows.fit_scalers(arrays, split_idx["train"], trial_spec.windows)
    datasets = {s: windows.dataset_arrays(arrays, idx, scalers, trial_spec.windows) for s, idx in split_idx.items()}
    horizon_minutes = tuple(int(h) * int(arrays.freq_minutes) for h in arrays.horizons)
    t0 = time.perf_counter()
    state: dict[str, Any] = {}
    baseline_notes: list[str] = []
    fitted = fit_baselines(arrays, datasets, scalers, trial_spec, fitted=state, notes=baseline_notes)
    notes += baseline_notes
    names = ", ".join(trial_spec.eval.baselines)
    notes.append(f"Baselines {names}: fitted on train in {time.perf_counter() - t0:.1f}s.")
    return PreparedData(key=data_key(trial_spec), datasets=datasets, horizon_minutes=horizon_minutes,
                        names=list(arrays.names), notes=notes, baseline_notes=baseline_notes,
                        baselines={s: fitted[s] for s in ("val", "test")}, scalers=scalers,
                        baseline_state=state,
                        close={s: np.asarray(arrays.close[datasets[s].idx], np.float64) for s in ("val", "test")})


def fit_baselines(arrays, datasets, scalers, trial_spec, fitted: dict | None = None,
                  notes: list[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """eval.baselines fitted on the train samples (val only early-stops the tree baseline), forecast
    on every split's samples: split -> name -> (n, H, Q) float32 (docs/metrics.md §7-§8). A baseline
    that could not be fitted as specified adds a line to `notes`."""

    idx = {s: ds.idx for s, ds in datasets.items()}
    out = baselines.fit_and_predict(
        arrays, idx, {s: ds.y for s, ds in datasets.items()}, tuple(trial_spec.model.quantiles),
        model_scale={s: ds.scale for s, ds in datasets.items()},
        # The datasets' scale is already the EWMA one unless the MC-GARCH normalises the model.
        ewma_scale={s: ds.scale if scalers.garch is None else scalers.ewma_scale(arrays, ds.idx)
                    for s, ds in datasets.items()},
        names=tuple(trial_spec.eval.baselines), garch=scalers.garch, lo=scalers.fit_bars[0],
        lgbm={"num_threads": max(1, int(trial_spec.resources.cpus_per_trial))}, fitted=fitted, notes=notes)
    return {s: {k: v.astype(np.float32) for k, v in d.items()} for s, d in out.items()}


# ------------------------------------------------------------------------------------------
# Scoring a trained checkpoint


def score_trial(model_cfg, checkpoint, data: PreparedData, trial_dir: Path, eval_cfg, device: str = "cpu",
                plots: bool = True):
    """Best checkpoint -> val/test quantiles -> recalibration -> metrics vs baselines, gates, predictions, plots.

    Returns (flat metrics {"val/crps_15m": ...}, gate flags, {plot name: path}; empty without
    `plots`: the five figures cost more than the rest of the scoring, docs/experiments.md; the
    recalibration.Recalibration fitted on val, which the bundle keeps). With eval.recalibrate or
    eval.median_shrink, test is recalibrated by the fit on all of val, val by the fit on its other
    half (recalibrate.cross_fit, so its metrics stay out of sample), and the raw forecast is scored
    next to it as source "model_raw" (docs/metrics.md §13). With eval.backtest (the default) the
    test split is also backtested (docs/metrics.md §10): its `test/backtest_<stat>_<horizon>` keys
    join the metrics and the equity curves are saved as backtest_equity.parquet in the trial dir.
    """
    import pandas as pd

    model, _ = load_checkpoint_model(checkpoint, device=device)
    taus = tuple(model_cfg.quantiles)
    ds = data.datasets
    raw = {}
    for split in ("val", "test"):
        scored = predict(model, ds[split], 512, device)
        q = scored.q  # (n, H, Q), or (n, H, 1) for a point head
        if q.shape[-1] == 1:
            # Point head: a point mass scored on the same levels. With symmetric taus this gives
            # exactly CRPS = |y - m|, and zero interval width, which the collapse gate flags.
            q = np.repeat(q, len(taus), axis=-1)  # (n, H, Q)
        raw[split] = (scored, q)
    method, shrink = eval_cfg.recalibrate, eval_cfg.median_shrink
    recalibrating = (method != "none" or shrink) and model_cfg.head == "quantile"
    val_scored, val_q = raw["val"]
    buckets = eval_cfg.recalibrate_tod_buckets
    recal = (recalibrate.fit(val_q, val_scored.y, ds["val"].scale, taus, method=method, median_shrink=shrink,
                             ts=val_scored.ts, n_buckets=buckets)
             if recalibrating else recalibrate.Recalibration.none(val_q.shape[1], len(taus)))
    tables, splits = [], {}
    for split in ("val", "test"):
        scored, q_raw = raw[split]
        q = q_raw
        if recalibrating:
            q = (recalibrate.cross_fit(q_raw, scored.y, ds[split].scale, scored.ts, taus, method=method,
                                       median_shrink=shrink, n_buckets=buckets) if split == "val"
                 else recal.apply(q_raw, ds[split].scale, scored.ts)).astype(np.float32)
        base = data.baselines[split]  # fitted on train in prepare_data, on these samples
        tables.append(evaluate.evaluate_split_table(split, scored.y, q, taus, data.horizon_minutes, scored.ts, base,
                                                    raw=q_raw if recalibrating else None))
        splits[split] = evaluate.SplitPredictions(ts=scored.ts, y=scored.y, q=q, baselines=base)
    table = pd.concat(tables, ignore_index=True)
    # Gates look at val and test: a sweep picks on val, so a collapse there must disqualify too.
    flags = evaluate.check_gates(table, thresholds=eval_cfg.gates, strict=False)
    trial_dir.mkdir(parents=True, exist_ok=True)
    evaluate.save_predictions(trial_dir / "predictions.parquet", splits, taus, data.horizon_minutes)
    table.to_parquet(trial_dir / "metrics_table.parquet")
    test = splits["test"]
    plot_paths = {}
    if plots:
        plot_paths = figures.plot_all(trial_dir / "plots", "test", test.ts, test.y, test.q, taus,
                                      data.horizon_minutes, table)
    flat = {}
    for split in ("val", "test"):
        part = evaluate.flatten_metrics(table[table["split"] == split])
        flat.update({f"{split}/{k}": v for k, v in part.items()})
    if recalibrating:
        flat.update({f"val/recal_shrink_{M.horizon_label(m)}": float(a)   # the median's share kept, fitted on val
                     for m, a in zip(data.horizon_minutes, recal.shrink)})
    if eval_cfg.backtest:
        flat.update(_backtest_test(test, data, taus, trial_dir))
    return flat, flags, {k: str(v) for k, v in plot_paths.items()}, recal


def _backtest_test(test, data: PreparedData, taus, trial_dir: Path) -> dict[str, float]:
    """The secondary trading backtest of the test quantiles: `test/backtest_*` metrics, and the
    equity curves (trade times, cumulative net P&L per horizon) in backtest_equity.parquet."""
    import logging

    log = logging.getLogger(__name__)
    close = data.close.get("test")
    if close is None or len(close) != len(test.ts):
        log.warning("no origin close prices for the test samples; backtest skipped")
        return {}
    if not {0.1, 0.5, 0.9} <= {round(float(t), 6) for t in taus}:
        log.warning("quantiles %s lack 0.1/0.5/0.9; backtest skipped", list(taus))
        return {}
    results = backtest.backtest(test.ts, close, test.y, test.q, taus, data.horizon_minutes)
    backtest.equity_frame(results).to_parquet(trial_dir / "backtest_equity.parquet", index=False)
    return {f"test/{k}": v for k, v in backtest.backtest_metrics(results).items()}


# ------------------------------------------------------------------------------------------
# Provenance: what a run was made with


def provenance(spec, con_or_db=None) -> dict[str, Any]:
    """Code, package and data versions of a run, JSON-safe (saved as provenance.json and in W&B).

    `con_or_db` is an open DuckDB connection or a database path (None: the default database).
    Metadata never takes a run down: what cannot be found is None. No environment variables are
    read, so no secret can end up here.
    """

    commit, dirty = _git_state(Path(nqexp.__file__).resolve().parent.parent)
    return {
        "nqexp_version": _package_version("nqexp") or nqexp.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _package_version(name) for name in PROVENANCE_PACKAGES},
        "bars": bars.bars_provenance(con_or_db, spec.data.symbol, _freq_minutes(spec)),
    }


def _freq_minutes(spec) -> int:
    """The bar size of the spec's feature set (the set owns it)."""

    return int(features.resolve_set(spec.features.set, spec.features.path).freq_minutes)


def _package_version(name: str) -> str | None:
    """Installed distribution version, read from metadata: nothing is imported (ray stays out)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_state(root: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout nqexp runs from; (None, None) when it is not a git checkout
    of its own (an installed wheel, no git binary, a repo git refuses to read)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        # The package must be the checkout's own: a site-packages inside some other repo is not.
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None, None
        commit = git("rev-parse", "HEAD")
    except Exception:
        return None, None
    try:
        # Like `git describe --dirty`: changes to tracked files (untracked ones, e.g. data, do not count).
        dirty: bool | None = bool(git("status", "--porcelain", "--untracked-files=no"))
    except Exception:
        dirty = None
    return commit, dirty
