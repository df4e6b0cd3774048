"""Forecasts for new bars from a trained trial's model bundle: `nqexp predict`.

The bundle (`<trial_dir>/bundle/`: weights, model config, the state fitted on train, the facts and a
manifest, all data and no pickle) is written and checked by bundle.py (docs/experiments.md §13);
this module reads the bars a forecast needs and issues the model's and the baselines' quantiles.

**Only the tail of the bars is read.** Features at bar t use bars <= t only, so a forecast needs the
bars of its window plus a warm-up. Window functions are exact after the set's declared look-back;
the recursive filters (EMA, Wilder) are seeded at the first tail bar, and the seed's weight decays
like (1 - alpha)^k, so the feature warm-up is the declared look-back, plus twice the bars after
which the slowest filter's seed weight is below FEATURE_TOL (twice: Wilder-of-Wilder chains),
plus two days of bars (session resets such as the RTH VWAP). The window bars then match the
full-history build to ~1e-12 relative. sigma-hat needs only closes and calendar fields, so it
reads a longer (cheap) range: SIGMA_HALFLIVES half-lives of each of its recursions (MC-GARCH
daily level, intraday GARCH, EWMA), after which the start's weight is below 1e-9.

As in training, sigma-hat at bar t sums the diurnal profile over the slots of the next h bars; bars
after t that exist give those slots (calendar only: their prices are not read), and past the last
bar each missing bar counts as the mean slot.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nqexp import features
from nqexp.data import bars, db, ingest, readers
from nqexp.errors import DataError, NqexpWarning
from nqexp.evaluation import baselines, evaluate
from nqexp.experiment.bundle import Bundle, check_feature_set, load_bundle
from nqexp.metrics import horizon_label
from nqexp.model import windows
from nqexp.model.train import predict

FEATURE_TOL = 1e-12          # filter seed weight left at the first window bar
SIGMA_HALFLIVES = 30         # 2^-30 ~ 1e-9 of sigma-hat's start state left at the forecast bar
PREDICT_SPLIT = "predict"    # the split name of range-mode predictions
PREDICT_DIR = "predict"      # range mode's default output folder inside the trial folder


# ------------------------------------------------------------------------------------------
# Warm-up lengths


def feature_warmup_bars(fs) -> int:
    """Bars before a window's first bar that make the tail's features equal the full build's."""
    alphas = [d.alpha for d in fs.filters]
    filt = 2 * math.ceil(math.log(1.0 / FEATURE_TOL) / min(alphas)) if alphas else 0
    return int(max(fs.warmup_bars, filt) + 2 * 1440 // int(fs.freq_minutes))


def sigma_warmup_bars(bundle: Bundle) -> int:
    """Bars before the forecast bar whose closes make sigma-hat (and its baselines) settle."""
    s = bundle.scalers
    per_day = 1440 // int(s.freq_minutes)
    need = [SIGMA_HALFLIVES * s.halflife_bars]                      # tod x EWMA
    garches = [s.garch, (bundle.baselines.get("mcgarch") or {}).get("garch")]
    for g in (g for g in garches if g is not None):
        need.append((SIGMA_HALFLIVES * g.halflife + 2) * per_day)     # daily level: half-life in sessions
        rho = g.alpha + g.beta
        if 0 < rho < 1:
            need.append(SIGMA_HALFLIVES * math.log(0.5) / math.log(rho))  # intraday GARCH q
    return int(math.ceil(max(need)))


# ------------------------------------------------------------------------------------------
# Reading the tail of the bars


@dataclass
class _Calendar:
    """Closes and calendar fields of a bar range: all sigma-hat reads (FeatureArrays' attributes)."""

    ts: np.ndarray
    close: np.ndarray
    session_date: np.ndarray
    minute_of_day_et: np.ndarray
    horizons: tuple[int, ...]
    freq_minutes: int


@dataclass
class Tail:
    arrays: Any            # features.FeatureArrays of the feature tail
    calendar: _Calendar    # the longer range sigma-hat reads
    offset: int            # calendar index of arrays' first bar
    seconds: float = 0.0


def read_tail(con, bundle: Bundle, fs, symbol: str, first_origin, last_origin) -> Tail:
    """Features for the bars the windows of origins first..last need (plus warm-up), and the longer
    close/calendar range for sigma-hat, both ending max horizon bars after last_origin."""
    import time

    t0 = time.perf_counter()
    table = fs.bars_table
    after = bars.ts_after(con, table, symbol, last_origin, max(bundle.horizons))
    end = after if after is not None else bars.ts_span(con, table, symbol)[1]
    need = bundle.window_cfg.t_max + feature_warmup_bars(fs)

    def start_back(n_back):   # the bar n_back bars before first_origin, or the series' first bar
        got = bars.ts_before(con, table, symbol, first_origin, n_back)
        return got if got is not None else bars.ts_span(con, table, symbol)[0]

    feat_start = start_back(need)
    cal = bars.calendar_columns(con, table, symbol, start_back(max(sigma_warmup_bars(bundle), need)), end)
    calendar = _Calendar(ts=np.asarray(cal["ts"]).astype("datetime64[us]"),
                         close=np.asarray(cal["close"], dtype=np.float64),
                         session_date=np.asarray(cal["session_date"]).astype("datetime64[D]"),
                         minute_of_day_et=np.asarray(cal["minute_of_day_et"]).astype(np.int16),
                         horizons=bundle.horizons, freq_minutes=int(fs.freq_minutes))
    # The set's own SQL over a temporary copy of the tail: the same code as the full build.
    with bars.range_copy(con, table, symbol, feat_start, end) as tmp:
        res = features.compute(con, dataclasses.replace(fs, bars_table=tmp), symbol)
    arrays = features.FeatureArrays(
        ts=res.ts, X=np.ascontiguousarray(res.X, dtype=np.float32), names=list(res.names), close=res.close,
        horizons=fs.horizons, freq_minutes=fs.freq_minutes, targets=np.ascontiguousarray(res.targets),
        target_flags=np.ascontiguousarray(res.target_flags), session_date=res.session_date,
        minute_of_day_et=res.minute_of_day_et, groups=list(fs.groups) if fs.groups else None,
        warmup_bars=0, set_name=fs.name, symbol=symbol)
    offset = int(np.searchsorted(calendar.ts, arrays.ts[0]))
    assert np.array_equal(calendar.ts[offset:offset + len(arrays.ts)], arrays.ts), "tail and calendar disagree"
    return Tail(arrays=arrays, calendar=calendar, offset=offset, seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------
# Forecasts


@dataclass
class Forecast:
    symbol: str
    ts: np.ndarray                     # (n,) forecast origins (bar start, UTC)
    close: np.ndarray                  # (n,) last close at each origin
    y: np.ndarray                      # (n, H) realized log-return where the bars exist, else NaN
    q: np.ndarray                      # (n, H, Q) model quantiles of the log-return
    baselines: dict[str, np.ndarray]   # name -> (n, H, Q)
    taus: tuple[float, ...]
    horizon_minutes: tuple[int, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    in_sample: np.ndarray | None = None  # (n,) bool: the origin's session lies in the bundle's train..val

    def in_sample_note(self, fitted) -> str | None:
        """One warning line when any origin is in-sample, else None."""
        if self.in_sample is None or not self.in_sample.any():
            return None
        return (f"{int(self.in_sample.sum())} of {len(self.in_sample)} forecast origins fall in the "
                f"trial's train/val period ({fitted[0]}..{fitted[1]}): they are in-sample, not a test of the "
                f"model (marked in_sample)")


def usable_origins(bundle: Bundle, arrays, idx) -> np.ndarray:
    """(n,) bool: each origin's window holds >= min_valid_bars bars, all with finite features."""

    idx = np.asarray(idx, dtype=np.int64)
    start = windows.window_starts(arrays.ts, bundle.window_cfg, idx)
    bad = np.concatenate([[0], np.cumsum(~np.isfinite(arrays.X).all(axis=1))])
    return ((idx - start + 1) >= bundle.window_cfg.min_valid_bars) & (bad[idx + 1] - bad[start] == 0)


def forecast(bundle: Bundle, tail: Tail, idx, model=None, device: str = "cpu") -> Forecast:
    """Model and baseline quantiles at the tail's bars idx (all must be usable_origins)."""
    import time

    t0 = time.perf_counter()
    idx = np.asarray(idx, dtype=np.int64)
    arrays, cal = tail.arrays, tail.calendar
    cidx = idx + tail.offset
    s = bundle.scalers
    scale = s.target_scale(cal, cidx)                       # (n, H) the model's sigma-hat
    # dataset_arrays wants finite targets; the forecast bars may have none yet (y is set after).
    shim = dataclasses.replace(arrays, targets=np.zeros_like(arrays.targets))
    ds = windows.dataset_arrays(shim, idx, s, bundle.window_cfg)
    # sigma-hat and the vol inputs read the calendar ahead (the next h bars' slots), as in training.
    vol = s.vol_inputs(cal, cidx, scale) if s.vol_center is not None else None  # (n, K)
    ds = dataclasses.replace(ds, y=arrays.targets[idx].astype(np.float32), scale=scale, vol=vol)
    if model is None:
        model = bundle.model.to(device)
    t1 = time.perf_counter()
    q = predict(model, ds, 512, device).q                   # (n, H, Q) or (n, H, 1)
    t2 = time.perf_counter()
    if q.shape[-1] == 1:                                    # a point head, scored as in score_trial
        q = np.repeat(q, len(bundle.taus), axis=-1)
    elif bundle.recalibration is not None:                  # fitted on val, as the trial's test metrics were
        q = bundle.recalibration.apply(q, scale, arrays.ts[idx]).astype(np.float32)
    base: dict[str, np.ndarray] = {}
    st = bundle.baselines
    if "climatology" in st:
        base["climatology"] = st["climatology"].quantiles(idx.size)
    if "volscaled" in st:
        base["volscaled"] = st["volscaled"].quantiles(s.ewma_scale(cal, cidx))
    if "mcgarch" in st:
        base["mcgarch"] = st["mcgarch"]["quantiles"].quantiles(st["mcgarch"]["garch"].sigma(cal, cidx))
    if "lgbm" in st:
        base["lgbm"] = st["lgbm"].quantiles(baselines.lgbm_inputs(arrays, idx, scale)[0], scale)
    base = {k: v.astype(np.float32) for k, v in base.items()}
    fitted = bundle.fitted_sessions
    sess = arrays.session_date[idx].astype("datetime64[D]")
    in_sample = np.zeros(idx.size, bool) if fitted is None else (sess >= fitted[0]) & (sess <= fitted[1])
    return Forecast(symbol=arrays.symbol, ts=arrays.ts[idx], close=arrays.close[idx],
                    y=arrays.targets[idx].astype(np.float32), q=q, baselines=base, taus=bundle.taus,
                    horizon_minutes=bundle.horizon_minutes,
                    seconds={"inputs": t1 - t0, "model": t2 - t1, "baselines": time.perf_counter() - t2},
                    in_sample=in_sample)


def mean_forecast(forecasts) -> Forecast:
    """A seed ensemble's forecast: the mean of its members' quantiles, level by level (docs/experiments.md
    §16). Each member's quantiles are ordered, so their mean is too. The members share the data, origins
    and the baselines' state (one variant, one fold), so the baselines, targets and closes are the first's."""
    first = forecasts[0]
    for fc in forecasts[1:]:
        if not np.array_equal(fc.ts, first.ts) or fc.q.shape != first.q.shape or fc.taus != first.taus:
            raise DataError(f"the ensemble's members forecast different origins or levels ({len(fc.ts)} vs "
                            f"{len(first.ts)} origins); their bundles disagree on the windows")
    q = np.mean(np.stack([fc.q for fc in forecasts]), axis=0).astype(first.q.dtype)     # (n, H, Q)
    seconds = {k: float(sum(fc.seconds.get(k, 0.0) for fc in forecasts)) for k in first.seconds}
    in_sample = None if first.in_sample is None else np.any([fc.in_sample for fc in forecasts], axis=0)
    return dataclasses.replace(first, q=q, seconds=seconds, in_sample=in_sample)


def _to_ts(value) -> np.datetime64:
    """A --at / --start value (date or ISO time, naive = UTC) -> datetime64[us]."""
    import pandas as pd

    try:
        t = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(f"{value!r} is not a date or time like 2025-12-03 or 2025-12-03T15:30") from None
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return np.datetime64(t.to_datetime64(), "us")


def _open(db_path, symbol: str, table: str, freq_minutes: int):
    """A read-only connection (the set's bars are built first when raw bars are ahead of them)."""

    con = db.connect(db_path, read_only=True)
    if not bars.bar_count(con, table, symbol):
        con.close()
        raise DataError(f"no {table} bars for {symbol!r} in {db.resolve_db_path(db_path)}; "
                        f"import them (nqexp data import) and build bars (nqexp data bars --symbol {symbol})")
    if bars.stale_freqs(con, symbol, [freq_minutes]):
        con.close()
        con = db.connect(db_path)
        bars.ensure_bars(con, symbol, [freq_minutes])   # newly imported raw bars: build them once
        con.close()
        con = db.connect(db_path, read_only=True)
    return con


def predict_at(db_path, trial_dir, *, symbol: str | None = None, at=None, device: str = "cpu",
               bundle: Bundle | None = None) -> Forecast:
    """Forecast at the last bar (or the last bar at or before `at`) of the database's bars."""
    bundle = bundle or load_bundle(trial_dir)
    fs = check_feature_set(bundle)
    symbol = symbol or bundle.meta["symbol"]
    con = _open(db_path, symbol, fs.bars_table, fs.freq_minutes)
    try:
        return forecast_at(con, bundle, fs, symbol, at=at, device=device)
    finally:
        con.close()


def forecast_at(con, bundle: Bundle, fs, symbol: str, *, at=None, device: str = "cpu") -> Forecast:
    """Forecast at the last bar (or the last bar at or before `at`) of the bars in `con`."""
    table = fs.bars_table
    last = bars.ts_span(con, table, symbol)[1]
    if at is None:
        origin = last
    else:
        at_ts = _to_ts(at)
        if np.datetime64(last, "us") < at_ts:
            raise DataError(f"the {table} bars of {symbol} end at {last}, before --at {at}; "
                            f"import newer bars or pick an earlier time")
        origin = bars.ts_before(con, table, symbol, at_ts.item())
        if origin is None:
            raise DataError(f"no {table} bars of {symbol} at or before --at {at}")
    tail = read_tail(con, bundle, fs, symbol, origin, origin)
    i = int(np.searchsorted(tail.arrays.ts, np.datetime64(origin, "us")))
    if not usable_origins(bundle, tail.arrays, [i])[0]:
        raise DataError(f"too few bars for a window at {origin}: the window needs "
                        f"{bundle.window_cfg.min_valid_bars} bars with finite features "
                        f"(after a {feature_warmup_bars(fs)}-bar warm-up)")
    out = forecast(bundle, tail, [i], device=device)
    out.seconds["read"] = tail.seconds
    return out


def predict_range(db_path, trial_dir, start, end, *, symbol: str | None = None, device: str = "cpu",
                  stride: int | None = None, bundle: Bundle | None = None) -> Forecast:
    """Forecasts at every usable bar whose Globex session date is in start..end (or every
    `stride`-th of them); the targets are the realized returns where the bars exist."""
    bundle = bundle or load_bundle(trial_dir)
    fs = check_feature_set(bundle)
    symbol = symbol or bundle.meta["symbol"]
    _to_ts(start), _to_ts(end)                   # a bad date is refused before the database is opened
    con = _open(db_path, symbol, fs.bars_table, fs.freq_minutes)
    try:
        return forecast_range(con, bundle, fs, symbol, start, end, device=device, stride=stride)
    finally:
        con.close()


def forecast_range(con, bundle: Bundle, fs, symbol: str, start, end, *, device: str = "cpu",
                   stride: int | None = None) -> Forecast:
    """predict_range over the bars in `con`."""
    d0, d1 = _to_ts(start).astype("datetime64[D]"), _to_ts(end).astype("datetime64[D]")
    span = bars.ts_span(con, fs.bars_table, symbol, (d0.item(), d1.item()))
    if span[0] is None:
        raise DataError(f"no {fs.bars_table} bars of {symbol} with session dates {d0}..{d1}")
    tail = read_tail(con, bundle, fs, symbol, span[0], span[1])
    a = tail.arrays
    sess = a.session_date.astype("datetime64[D]")
    idx = np.flatnonzero((sess >= d0) & (sess <= d1))
    idx = idx[usable_origins(bundle, a, idx)]
    if stride and stride > 1:
        idx = idx[::stride]
    if idx.size == 0:
        raise DataError(f"too few bars for a window in {d0}..{d1}: no bar has a full window of finite features")
    out = forecast(bundle, tail, idx, device=device)
    out.seconds["read"] = tail.seconds
    return out


# ------------------------------------------------------------------------------------------
# Bars given as a DataFrame or a file: an in-memory database, built by the import and bar code


class ForecastWarning(NqexpWarning):
    """A forecast was made, but something about it needs saying (a gated trial, rejected or too few bars)."""


_PACKAGE = str(Path(__file__).resolve().parents[1]) + os.sep     # nqexp/


def warn(message: str) -> None:
    """A ForecastWarning, attributed to the first caller outside nqexp (the notebook cell or script line)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(ForecastWarning(message), stacklevel=level)


def bars_database(source, symbol: str, freq_minutes: int, *, tz: str | None = None):
    """An in-memory database holding the bars of `source` (a DataFrame of 1-minute bars, or the path of a
    CSV or Parquet file) as raw_bars of `symbol`, and their built `freq_minutes` bars: the same import
    (validation, rejects), rolls, back-adjustment and sessions as a database built by `nqexp data import`
    and `nqexp data bars`. Naive timestamps are in `tz`: for a DataFrame UTC unless given, for a file
    refused without it (as `nqexp data import`). Rejected rows and roll warnings are ForecastWarnings."""
    import pandas as pd

    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser().absolute()
        fmt = readers.detect_format(path) if path.is_file() else None
        if fmt not in (None, "csv", "parquet"):
            raise DataError(f"{path}: bars for a forecast must be CSV or Parquet, not {fmt}; "
                            f"import it into a database (nqexp data import) and forecast from there")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", readers.DataWarning)
            df, _ = readers.read_bars(path, tz=tz, symbol=symbol)
        label = str(path)
        readers.refuse_unusable(df, path)
    elif isinstance(source, pd.DataFrame):
        label = "bars DataFrame"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", readers.DataWarning)
            df = readers.read_frame(source, symbol=symbol, tz=tz or "UTC", source=label)
    else:
        raise DataError(f"bars must be a DataFrame of 1-minute bars or the path of a CSV or Parquet file, "
                        f"not {type(source).__name__}")
    for w in caught:
        warn(str(w.message))
    con = db.connect(":memory:")
    try:
        report = ingest.import_frame(con, df, source=label)
        if report.rejected:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(report.reasons.items(), key=lambda kv: -kv[1]))
            if report.new == 0:
                raise DataError(f"{label}: every one of its {report.rows_read:,} rows was rejected ({reasons})")
            warn(f"{label}: {report.rejected:,} of {report.rows_read:,} rows rejected ({reasons}); "
                 f"forecasting from the rest")
        built = bars.build_bars(con, symbol, [int(freq_minutes)])
        for message in built.warnings:
            warn(f"{label}: {message}")
    except Exception:
        con.close()
        raise
    return con


def short_history(con, bundle: Bundle, fs, symbol: str, origin) -> str | None:
    """Why a forecast at `origin` may differ from one made with a longer history of bars (None: it
    will not): fewer bars before it than the feature warm-up and window, or than sigma-hat's warm-up."""
    have = bars.bar_count(con, fs.bars_table, symbol)
    feat = bundle.window_cfg.t_max + feature_warmup_bars(fs)
    sigma = sigma_warmup_bars(bundle)
    if bars.ts_before(con, fs.bars_table, symbol, origin, feat) is None:
        return (f"only {have:,} {fs.freq_minutes}-minute bars, fewer than the {feat:,} the features' warm-up and "
                f"window read before a forecast: features may differ from a longer history's; give more bars")
    if bars.ts_before(con, fs.bars_table, symbol, origin, sigma) is None:
        days = math.ceil(sigma * fs.freq_minutes / 1380)
        return (f"only {have:,} {fs.freq_minutes}-minute bars, fewer than the {sigma:,} (about {days} trading "
                f"days) sigma-hat reads to settle: the forecast's scale may differ from a longer history's; "
                f"give more bars")
    return None


def check_output_path(path, option: str, *, trial_dir, store_root=None) -> Path:
    """Where `nqexp predict` may write `path` (its --out or --plot), checked before any work: DataError
    (one line) when it lies inside the trial's folder or any trial folder of the run store, whose
    files are the run's own (predictions.parquet, checkpoints, the bundle; the trial's predict/
    folder, range mode's default, is the exception), when it names a folder, or when a folder on
    its way is a file or not writable. Returns the path, resolved."""
    full = Path(path).expanduser().resolve()
    protected = [Path(trial_dir).resolve()]
    if store_root is not None:
        root = Path(store_root).expanduser().resolve()
        parts = full.relative_to(root).parts if full.is_relative_to(root) else ()
        if len(parts) >= 3 and parts[1] == "trials":
            protected.append(root.joinpath(*parts[:3]))
    for folder in protected:
        own = folder / PREDICT_DIR
        if full.is_relative_to(folder) and not (full.is_relative_to(own) and full != own):
            raise DataError(f"{option} {path} is inside the trial folder {folder}, whose files are the run's own "
                            f"(predictions.parquet, checkpoints, bundle); write elsewhere, or under {own}/")
    existing = next(p for p in (full, *full.parents) if p.exists())
    if existing == full and full.is_dir():
        raise DataError(f"{option} {path} is a folder; give a file name")
    folder = existing if existing != full else full.parent
    if not folder.is_dir():
        raise DataError(f"{option} {path}: {folder} is a file, not a folder; give a path in a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"{option} {path}: the folder {folder} is not writable")
    return full


def save_and_score(fc: Forecast, path) -> tuple[Path, Any]:
    """Write range predictions in the trial's predictions schema; score the samples with targets."""

    preds = {PREDICT_SPLIT: evaluate.SplitPredictions(ts=fc.ts, y=fc.y, q=fc.q, baselines=fc.baselines)}
    path = evaluate.save_predictions(path, preds, fc.taus, fc.horizon_minutes)
    ok = np.isfinite(fc.y).all(axis=1)
    table = None
    if ok.sum() >= 2:
        table = evaluate.evaluate_split_table(PREDICT_SPLIT, fc.y[ok], fc.q[ok], fc.taus, fc.horizon_minutes,
                                              fc.ts[ok], {k: v[ok] for k, v in fc.baselines.items()})
    return path, table


def long_rows(fc: Forecast, row: int = -1) -> list[dict[str, Any]]:
    """One origin's quantiles as rows: source, horizon, tau, log-return and price level."""

    close = float(fc.close[row])
    ts = str(np.datetime_as_string(fc.ts[row], unit="s")) + "Z"
    out = []
    for source, cube in [("model", fc.q), *fc.baselines.items()]:
        for j, m in enumerate(fc.horizon_minutes):
            for k, tau in enumerate(fc.taus):
                r = float(cube[row, j, k])
                out.append({"symbol": fc.symbol, "ts": ts, "last_close": close, "horizon": horizon_label(m),
                            "horizon_minutes": int(m), "source": source, "tau": float(tau),
                            "log_return": r, "price": close * math.exp(r),
                            "in_sample": bool(fc.in_sample[row]) if fc.in_sample is not None else False})
    return out


def range_rows(fc: Forecast) -> list[dict[str, Any]]:
    """Every origin's long_rows, each with `target`: the realized log-return at its horizon (None until
    the bars exist). Range mode's `--format json|csv`."""
    out = []
    for i in range(len(fc.ts)):
        for r in long_rows(fc, i):
            y = float(fc.y[i, fc.horizon_minutes.index(r["horizon_minutes"])])
            out.append({**r, "target": y if math.isfinite(y) else None})
    return out
