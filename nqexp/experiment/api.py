"""The Python API: a run store's experiments and trials as objects and DataFrames (docs/api.md).

    import nqexp
    exp = nqexp.load_experiment("quickstart")              # the run store ./runs
    exp.table()                                             # metrics as numbers: mean, std, 95% CI
    exp.compare()                                           # paired CRPS differences vs the first variant
    trial = nqexp.load_trial("quickstart/full-s0")
    trial.predict(bars)                                     # a DataFrame of 1-minute bars, no database

Everything here reads the run store through RunStore and forecasts through predict.py; the CLI
(`nqexp runs ...`, `nqexp predict`) calls the same functions, so a number printed by the CLI and one
read here come from one path. Results are plain pandas DataFrames with numeric columns.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nqexp.errors import DataError
from nqexp.evaluation import report
from nqexp.experiment import artifact, query
from nqexp.experiment import predict as P
from nqexp.experiment.bundle import load_bundles
from nqexp.experiment.track import RunStore
from nqexp.metrics import horizon_label, quantile_label

DEFAULT_STORE = "runs"      # as the spec's track.store and the CLI's --store default
TRIAL_COLUMNS = ["trial", "variant", "seed", "fold", "status", "gated", "gates", "steps", "epochs", "best_epoch",
                 "best_step", "stopped", "train_seconds", "val_crps", "test_crps", "error", "dir"]


def open_store(store=DEFAULT_STORE) -> RunStore:
    """The run store at `store` (a folder, or a RunStore); DataError when it holds none (nothing is created)."""
    if isinstance(store, RunStore):
        return store
    root = Path(store if store is not None else DEFAULT_STORE).expanduser().absolute()
    if not (root / "store.duckdb").exists():
        raise DataError(f"no run store at {root / 'store.duckdb'}; run an experiment first (nqexp run SPEC)")
    return RunStore(root)


# ------------------------------------------------------------------------------------------
# Experiments


def load_experiment(name: str, store=DEFAULT_STORE) -> Experiment:
    """The experiment `name` of the run store `store` (a folder, default ./runs)."""
    st = open_store(store)
    if st.experiment(name) is None:
        known = st.experiment_names()
        raise DataError(f"no experiment {name!r} in {st.path}; known: {known or 'none'}")
    return Experiment(name, st)


@dataclasses.dataclass
class Experiment:
    """An experiment of a run store: its variants' metrics, trials and paired comparisons."""

    name: str
    store: RunStore

    @functools.cached_property
    def data(self) -> report.ReportData:
        """What the reports read (trials, metrics, gate flags, epochs; the reference variant)."""
        return report.load(self.store, self.name)

    @property
    def reference(self) -> str:
        """The variant paired comparisons use by default: the spec's first variant."""
        return self.data.reference

    @property
    def variants(self) -> list[str]:
        return report.variant_order(self.data)

    @property
    def spec(self) -> dict[str, Any]:
        """The resolved spec of the experiment, as a dict."""
        import yaml

        return yaml.safe_load(self.store.experiment(self.name)["spec_yaml"]) or {}

    @property
    def provenance(self) -> dict[str, Any] | None:
        """Git commit and dirty flag, package versions and the bars' fingerprint of the run."""
        return self.store.experiment(self.name)["provenance"]

    def table(self, split: str = "test", metrics=None) -> pd.DataFrame:
        """Every metric of `split` as numbers, one row per variant, horizon and metric: n, mean, std,
        ci_low, ci_high (95% Student-t interval of the mean over seeds and folds) and best_baseline."""
        _check_split(split)
        return report.summary_stats(self.data, split, metrics)

    def trials(self) -> pd.DataFrame:
        """The trials: variant, seed, fold, status, gated and its gates, steps, epochs, why it stopped,
        training seconds, val and test CRPS, error and folder; in variant order, then seed and fold."""
        return _trials_frame(self.data)

    def trial(self, name: str) -> Trial:
        return load_trial(f"{self.name}/{name}", self.store)

    def compare(self, baseline: str | None = None, split: str = "test", n_boot: int = 1000, seed: int = 0,
                method: str = report.ADJUST_METHOD) -> pd.DataFrame:
        """Paired CRPS differences on identical samples against `baseline`: a variant (default the reference,
        the spec's first variant) or a fitted baseline model (climatology, volscaled, mcgarch, lgbm).

        Against a variant: one row per other variant and horizon with mean_diff (CRPS variant - reference,
        log-return units), ci_lo, ci_hi (95% block bootstrap), rel_pct, p, p_adj and verdict. Against a
        baseline model: one row per variant and horizon with rel_pct, ci_lo_pct, ci_hi_pct, p, p_adj and
        verdict. p_adj is adjusted over every comparison of both kinds together (`method`: bh or holm),
        as in the report."""
        _check_split(split)
        data = self.data
        variants = report.variant_order(data)
        models = _baseline_names(data, split)
        baseline = baseline or data.reference
        if baseline in variants:
            paired, _ = report.comparisons(dataclasses.replace(data, reference=baseline), split, n_boot, seed, method)
            if paired.empty:
                return paired
            paired.insert(1, "reference", baseline)
            return paired
        if baseline in models:
            _, vs = report.comparisons(data, split, n_boot, seed, method)
            return vs[vs["baseline"] == baseline].reset_index(drop=True)
        raise DataError(f"{self.name}: no variant or baseline {baseline!r} to compare with; "
                        f"variants {', '.join(variants)}; baselines {', '.join(models) or 'none'}")


def _check_split(split: str) -> None:
    if split not in ("val", "test"):
        raise DataError(f"split must be 'val' or 'test', not {split!r}")


def _baseline_names(data: report.ReportData, split: str) -> list[str]:
    keys = data.metrics["key"].unique() if len(data.metrics) else []
    return sorted({m.group(1) for k in keys if (m := re.fullmatch(rf"{split}/crps_([a-z]+)", str(k)))})


def _trials_frame(data: report.ReportData) -> pd.DataFrame:
    t = data.trials.copy()
    if "fold" not in t:
        t["fold"] = 0
    t["fold"] = t["fold"].fillna(0).astype(int)
    m = data.metrics
    for split in ("val", "test"):
        vals = m[m["key"] == f"{split}/crps"].set_index("trial")["value"]
        t[f"{split}_crps"] = t["trial"].map(vals).astype(float)
    flags = data.flags.groupby("trial")["gate"].agg(lambda g: ", ".join(dict.fromkeys(g))) if len(data.flags) \
        else pd.Series(dtype=object)
    t["gates"] = t["trial"].map(flags).fillna("")
    t["gated"] = t["gated"].fillna(False).astype(bool)
    order = {v: i for i, v in enumerate(report.variant_order(data))}
    t = t.sort_values(["variant", "seed", "fold"], key=lambda s: s.map(order) if s.name == "variant" else s)
    return t.reindex(columns=TRIAL_COLUMNS).reset_index(drop=True)


def compare_experiments(names, store=DEFAULT_STORE, split: str = "test", metrics=None) -> pd.DataFrame:
    """Experiments side by side: their `table()`s, one after another, with an `experiment` column first."""
    st = open_store(store)
    parts = [load_experiment(name, st).table(split, metrics).assign(experiment=name) for name in names]
    out = pd.concat(parts, ignore_index=True)
    return out[["experiment", *[c for c in out.columns if c != "experiment"]]]


def find_trials(where: str | None = None, sort: str | None = None, descending: bool = False,
                experiment: str | None = None, store=DEFAULT_STORE, metrics=("crps",)) -> pd.DataFrame:
    """Trials of every experiment (or of `experiment`) that pass the filter `where` (docs/api.md §3), sorted
    by the metric `sort` (trials without it last): experiment, trial, variant, seed, fold, status, gated,
    then one column per metric named in `metrics`, `where` and `sort`, as written ('crps_15m' is
    test/crps_15m)."""
    st = open_store(store)
    q = query.parse(where) if where is not None else None
    names = list(dict.fromkeys([*metrics, *(q.metrics if q else []), *([sort] if sort else [])]))
    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)?", name):
            raise DataError(f"{name!r} is not a metric name like crps_15m or val/crps")
    keys = {name: query.metric_key(name) for name in names}
    known = set(st.metric_keys())
    for name, key in keys.items():
        if key not in known and known:
            raise DataError(f"no trial has the metric {name!r} ({key}){_did_you_mean(key, known)}")
    trials = st.trials_frame(experiment)
    if experiment is not None and trials.empty and st.experiment(experiment) is None:
        raise DataError(f"no experiment {experiment!r} in {st.path}; known: {st.experiment_names() or 'none'}")
    if "fold" not in trials:
        trials["fold"] = 0
    out = trials[["experiment", "trial", "variant", "seed", "fold", "status", "gated"]].copy()
    out["fold"] = out["fold"].fillna(0).astype(int)
    out["gated"] = out["gated"].fillna(False).astype(bool)
    values = st.metric_values(sorted(set(keys.values())), experiment)
    wide = values.pivot_table(index=["experiment", "trial"], columns="key", values="value", aggfunc="first",
                              dropna=False) if len(values) else pd.DataFrame()
    for name, key in keys.items():
        col = wide[key] if key in wide else pd.Series(dtype=float)
        out[name] = [float(col.get((e, t), np.nan)) for e, t in zip(out["experiment"], out["trial"])]
    if q is not None:
        keep = [q.matches({n: row[n] for n in q.metrics}) for _, row in out.iterrows()]
        out = out[np.asarray(keep, dtype=bool)] if len(out) else out
    if sort:
        out = out.sort_values(sort, ascending=not descending, na_position="last", kind="stable")
    return out.reset_index(drop=True)


def _did_you_mean(key: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    short = [k.removeprefix(f"{query.DEFAULT_SPLIT}/") for k in close]
    return f"; did you mean {' or '.join(short)}?" if short else "; see `nqexp runs show EXP/TRIAL --json` for the names"


# ------------------------------------------------------------------------------------------
# Trials


def load_trial(name, store=DEFAULT_STORE) -> Trial:
    """A trial, as "EXPERIMENT/TRIAL" of the run store `store` (default ./runs), its folder, or its
    bundle's W&B artifact "wandb:ENTITY/PROJECT/NAME:VERSION" (docs/experiments.md §17).

    Its gate flags, metrics and history come from the store (a folder outside any store has none;
    an artifact carries its gate flags); forecasts need only its bundle."""
    if artifact.is_ref(name):
        root = store.root if isinstance(store, RunStore) else Path(store or DEFAULT_STORE).expanduser().absolute()
        path, meta = artifact.fetch_bundle(name, root)
        trial = Trial(None, str(meta.get("trial") or artifact.parse_ref(name).name), path, None, source=str(name))
        trial.flags = [tuple(f) for f in meta.get("gate_flags") or []]
        return trial
    if Path(name).is_dir():                                  # a trial folder given directly
        path = Path(name).absolute()
        root = path.parent.parent.parent
        if path.parent.name == "trials" and (root / "store.duckdb").exists():
            return Trial(path.parent.parent.name, path.name, path, RunStore(root))
        return Trial(None, path.name, path, None)
    if "/" not in str(name):
        raise DataError(f"TRIAL must be EXPERIMENT/TRIAL, e.g. quickstart/full-s0, not {name!r}")
    experiment, trial = str(name).split("/", 1)
    root = Path(store.root if isinstance(store, RunStore) else (store or DEFAULT_STORE)).expanduser().absolute()
    st = store if isinstance(store, RunStore) else (RunStore(root) if (root / "store.duckdb").exists() else None)
    path = root / experiment / "trials" / trial
    if not path.is_dir():
        raise DataError(f"no trial {name} in the run store ({root}); see `nqexp runs ls`")
    return Trial(experiment, trial, path, st)


@dataclasses.dataclass
class Trial:
    """One trained trial: its bundle (forecasts), saved predictions, history, metrics and gate flags."""

    experiment: str | None
    name: str
    dir: Path
    store: RunStore | None = None
    source: str | None = None         # the W&B artifact reference the bundle came from

    @property
    def label(self) -> str:
        return self.source or (f"{self.experiment}/{self.name}" if self.experiment else str(self.dir))

    def __repr__(self) -> str:
        return f"Trial({self.label!r})"

    @functools.cached_property
    def info(self) -> dict[str, Any] | None:
        """The store's row of the trial (variant, seed, fold, status, steps, stopped, ...); None outside a store."""
        if self.store is None or self.experiment is None:
            return None
        return self.store.trial(self.experiment, self.name)

    @functools.cached_property
    def flags(self) -> list[tuple[str, str]]:
        """(gate, reason) of every sanity gate the trial tripped; [] when none or outside a store."""
        if self.info is None:
            return []
        return [tuple(f) for f in self.store.trial_flags(self.experiment, self.name)]

    @property
    def gated(self) -> bool:
        return bool(self.flags)

    @property
    def metrics(self) -> dict[str, float]:
        """'split/metric[_horizon]' -> value, as `nqexp runs show` prints them."""
        return self.store.trial_metrics(self.experiment, self.name) if self.info is not None else {}

    @property
    def spec(self) -> dict[str, Any]:
        """The trial's resolved spec (its spec.yaml, else the bundle's copy), as a dict."""
        import yaml

        path = self.dir / "spec.yaml"
        if path.exists():
            return yaml.safe_load(path.read_text()) or {}
        return dict(self.bundle.meta.get("spec") or {})

    @property
    def provenance(self) -> dict[str, Any] | None:
        """Git commit and dirty flag, package versions and the bars' fingerprint of the trial's run."""
        if self.store is not None and self.experiment is not None:
            row = self.store.experiment(self.experiment)
            if row is not None and row.get("provenance"):
                return row["provenance"]
        path = self.dir.parent.parent / "provenance.json"
        return json.loads(path.read_text()) if path.exists() else None

    @functools.cached_property
    def bundle(self):
        """The model bundle (bundle.py), loaded and checked once; a seed ensemble has none (see `bundles`)."""
        return P.load_bundle(self.dir)

    @functools.cached_property
    def bundles(self) -> list:
        """The bundles its forecasts come from: [its bundle], or a seed ensemble's members' bundles, whose
        quantiles a forecast averages (docs/experiments.md §16)."""
        return load_bundles(self.dir)

    def predictions(self) -> pd.DataFrame:
        """The trial's saved val/test predictions (predictions.parquet): one row per split, sample and
        horizon with ts (UTC), target, the model's quantiles q05..q95 and each baseline's (climatology_q05, ...)."""
        path = self.dir / "predictions.parquet"
        if not path.exists():
            raise DataError(f"trial {self.label} has no {path.name}; it did not finish (nqexp runs show {self.label})")
        return pd.read_parquet(path)

    def history(self) -> pd.DataFrame:
        """The per-epoch training history: one row per epoch, a column per key (train/loss_epoch, val/crps,
        val/crps_15m, train/lr, ...); empty outside a store."""
        if self.info is None:
            return pd.DataFrame(columns=["epoch"])
        e = self.store.epochs_frame(self.experiment)
        e = e[e["trial"] == self.name]
        if e.empty:
            return pd.DataFrame(columns=["epoch"])
        wide = e.pivot_table(index="epoch", columns="key", values="value", aggfunc="first").reset_index()
        wide.columns.name = None
        return wide

    def forecast(self, bars=None, *, at=None, start=None, end=None, db=None, symbol: str | None = None,
                 tz: str | None = None, device: str = "cpu", stride: int | None = None) -> P.Forecast:
        """The forecast as arrays (predict.Forecast); `predict` has the same arguments and returns a DataFrame."""
        if bars is not None and db is not None:
            raise DataError("give bars (a DataFrame or file) or db (a database), not both")
        if start is None and end is not None:
            raise DataError("end needs start (a range of session dates)")
        if start is not None and at is not None:
            raise DataError("at and start/end are two modes; give one")
        device = _device(device)
        bundles = self.bundles                       # one, or a seed ensemble's members
        bundle = bundles[0]
        checked = [P.check_feature_set(b) for b in bundles]    # each member's, for an ensemble
        fs = checked[0]
        symbol = symbol or bundle.meta["symbol"]
        if bars is None:
            if start is not None:
                fcs = [P.predict_range(db, self.dir, start, end or start, symbol=symbol, device=device,
                                       stride=stride, bundle=b) for b in bundles]
            else:
                fcs = [P.predict_at(db, self.dir, symbol=symbol, at=at, device=device, bundle=b) for b in bundles]
        else:
            con = P.bars_database(bars, symbol, fs.freq_minutes, tz=tz)
            try:
                if start is not None:
                    fcs = [P.forecast_range(con, b, fs, symbol, start, end or start, device=device, stride=stride)
                           for b in bundles]
                else:
                    fcs = [P.forecast_at(con, b, fs, symbol, at=at, device=device) for b in bundles]
                note = P.short_history(con, bundle, fs, symbol, fcs[0].ts[0].item())
            finally:
                con.close()
            if note:
                P.warn(note)
        fc = fcs[0] if len(fcs) == 1 else P.mean_forecast(fcs)
        in_sample = fc.in_sample_note(bundle.fitted_sessions)
        if in_sample:
            P.warn(in_sample)
        if self.flags:
            gates = ", ".join(dict.fromkeys(g for g, _ in self.flags))
            P.warn(f"trial {self.label} is flagged by the sanity gate{'s' if ',' in gates else ''} {gates} "
                   f"({self.flags[0][1]}); do not trust its forecasts without reading why: "
                   + (f"nqexp runs show {self.label}" if self.source is None else "the artifact's gate_flags metadata"))
        return fc

    def predict(self, bars=None, *, at=None, start=None, end=None, db=None, symbol: str | None = None,
                tz: str | None = None, device: str = "cpu", stride: int | None = None,
                baselines: bool = False) -> pd.DataFrame:
        """Forecast from `bars` (a DataFrame of 1-minute bars: ts, open, high, low, close, volume; or the
        path of a CSV or Parquet file of them), or from the database `db` when `bars` is None.

        At the last bar, the last bar at or before `at`, or (range) every bar of the session dates
        start..end (every `stride`-th). One row per origin and horizon: symbol, ts (the origin bar's
        start, UTC), horizon, horizon_minutes, close (the origin's close), target (the realized
        log-return where the bars exist, else NaN), q05..q95 (log-return quantiles) and price_q05..price_q95
        (close x exp(q)); with `baselines`, each baseline's log-return quantiles (climatology_q05, ...).
        Warns (predict.ForecastWarning) for a gated trial, rejected rows and too short a history."""
        fc = self.forecast(bars, at=at, start=start, end=end, db=db, symbol=symbol, tz=tz, device=device,
                           stride=stride)
        return forecast_frame(fc, baselines=baselines)


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def forecast_frame(fc: P.Forecast, baselines: bool = False) -> pd.DataFrame:
    """A Forecast as one row per (origin, horizon): see Trial.predict."""
    n, n_h, _ = fc.q.shape
    labels = [quantile_label(t) for t in fc.taus]
    close = np.repeat(np.asarray(fc.close, dtype=np.float64), n_h)
    out = pd.DataFrame({
        "symbol": fc.symbol,
        "ts": pd.DatetimeIndex(np.repeat(np.asarray(fc.ts).astype("datetime64[us]"), n_h)).tz_localize("UTC"),
        "horizon": [horizon_label(m) for m in fc.horizon_minutes] * n,
        "horizon_minutes": np.tile(np.asarray(fc.horizon_minutes, dtype=np.int64), n),
        "close": close,
        "target": np.asarray(fc.y, dtype=np.float64).reshape(-1),
    })
    q = np.asarray(fc.q, dtype=np.float64).reshape(n * n_h, -1)
    for k, label in enumerate(labels):
        out[label] = q[:, k]
    for k, label in enumerate(labels):
        out[f"price_{label}"] = close * np.exp(q[:, k])
    if baselines:
        for name, cube in fc.baselines.items():
            b = np.asarray(cube, dtype=np.float64).reshape(n * n_h, -1)
            for k, label in enumerate(labels):
                out[f"{name}_{label}"] = b[:, k]
    return out
