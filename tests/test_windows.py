"""Tests for nqexp/model/windows.py: splits with a purge gap, train-only scalers, left-aligned masked windows."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from nqexp.errors import SpecError
from nqexp.model.windows import (
    SplitConfig,
    WindowConfig,
    WindowDataset,
    WindowLoader,
    dataset_arrays,
    fit_scalers,
    make_splits,
    min_purge_bars,
    target_scale,
    temporal_features,
    window_starts,
)
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
HORIZONS_5M = (3, 6, 12, 24, 48)


@dataclasses.dataclass
class Arrays:
    """FeatureArrays-shaped test input (docs/features.md §11); nqexp.model.windows only reads these attributes."""

    ts: np.ndarray
    X: np.ndarray
    names: list
    close: np.ndarray
    horizons: tuple
    freq_minutes: int
    targets: np.ndarray
    target_flags: np.ndarray
    session_date: np.ndarray
    minute_of_day_et: np.ndarray
    groups: list | None = None


def globex_timeline(first: str, last: str, freq: int = 5) -> pd.DatetimeIndex:
    """ET bar starts of Globex sessions first..last: each weekday session D runs 18:00 ET on D-1 to 17:00 ET on D."""
    opens = pd.bdate_range(first, last) - pd.Timedelta(hours=6)  # 18:00 on the previous calendar day
    steps = pd.to_timedelta(np.arange(0, 23 * 60, freq), unit="min")
    naive = (opens.to_numpy()[:, None] + steps.to_numpy()[None, :]).ravel()
    # DST switches at 02:00 on Sundays while the market is closed, so every bar exists exactly once.
    return pd.DatetimeIndex(naive).tz_localize("America/New_York")


def arrays_from_et(ts_et: pd.DatetimeIndex, *, horizons=HORIZONS_5M, freq=5, V=6, seed=0,
                   close: np.ndarray | None = None) -> Arrays:
    """Synthetic features and forward-return targets on an ET timeline (tz-aware or naive ET)."""
    ts_et = ts_et.tz_localize("America/New_York") if ts_et.tz is None else ts_et.tz_convert("America/New_York")
    n = len(ts_et)
    rng = np.random.default_rng(seed)
    minute = (ts_et.hour * 60 + ts_et.minute).to_numpy().astype(np.int16)
    if close is None:
        tod = 1.0 + 2.0 * ((minute >= 570) & (minute < 960))  # RTH three times as volatile
        close = 15000.0 * np.exp(np.cumsum(1e-3 * tod * rng.standard_normal(n)))
    X = np.empty((n, V), dtype=np.float32)
    X[:, 0] = close
    X[:, 1] = np.concatenate([[np.nan], np.diff(np.log(close))])  # warm-up NaN on the first bar
    X[:, 2:] = rng.standard_normal((n, V - 2)) * np.arange(1, V - 1) + 100.0
    log_c = np.log(close)
    targets = np.full((n, len(horizons)), np.nan)
    for j, h in enumerate(horizons):
        targets[:-h, j] = log_c[h:] - log_c[:-h]
    session = (ts_et + pd.Timedelta(hours=6)).tz_localize(None).normalize()  # 18:00 ET opens the next date
    return Arrays(ts=ts_et.tz_convert("UTC").tz_localize(None).to_numpy().astype("datetime64[us]"),
                  X=np.ascontiguousarray(X), names=[f"v{i}" for i in range(V)], close=close,
                  horizons=tuple(horizons), freq_minutes=freq, targets=targets,
                  target_flags=np.zeros((n, len(horizons)), np.uint8),
                  session_date=session.to_numpy().astype("datetime64[D]"), minute_of_day_et=minute)


@pytest.fixture(scope="module")
def arrays() -> Arrays:
    return arrays_from_et(globex_timeline("2023-01-02", "2023-05-31"))


SPLIT = SplitConfig(train_start="2023-01-01", train_end="2023-03-31", val_start="2023-04-01",
                    val_end="2023-04-30", test_start="2023-05-01", test_end="2023-05-31")
WCFG = WindowConfig()


@pytest.fixture(scope="module")
def splits(arrays):
    return make_splits(arrays, SPLIT, WCFG)


@pytest.fixture(scope="module")
def scalers(arrays, splits):
    return fit_scalers(arrays, splits["train"], WCFG)


def first_mismatch(a: np.ndarray, b: np.ndarray) -> str:
    bad = np.argwhere(~((a == b) | (np.isnan(a) & np.isnan(b))))
    if not bad.size:
        return "equal"
    i = tuple(bad[0])
    return f"{bad.shape[0]} mismatches, first at {i}: {a[i]!r} vs {b[i]!r}; max abs diff {np.nanmax(np.abs(a - b))}"


# --------------------------------------------------------------------------------------------- splits


def test_no_sample_target_overlaps_the_next_split(arrays, splits):
    H = max(arrays.horizons)
    for a, b in [("train", "val"), ("val", "test")]:
        assert splits[a].size and splits[b].size, {k: v.size for k, v in splits.items()}
        target_bars = set((splits[a][:, None] + np.arange(1, H + 1)).ravel().tolist())
        starts = window_starts(arrays.ts, WCFG, splits[b])
        input_bars = set(np.concatenate([np.arange(s, e + 1) for s, e in zip(starts, splits[b])]).tolist())
        later_targets = set((splits[b][:, None] + np.arange(1, H + 1)).ravel().tolist())
        assert not target_bars & input_bars, f"{a} targets reach {b} inputs at bars {sorted(target_bars & input_bars)[:5]}"
        assert not target_bars & later_targets
        # The purge is exactly the documented minimum: max horizon + look-back in bars.
        assert splits[b][0] - splits[a][-1] >= min_purge_bars(arrays.horizons, WCFG, SPLIT) == 48 + 288


def test_samples_fall_inside_their_split_dates(arrays, splits):
    for name, (lo, hi) in SPLIT.ranges().items():
        d = arrays.session_date[splits[name]]
        assert d.min() >= np.datetime64(lo) and d.max() <= np.datetime64(hi), (name, d.min(), d.max())
        assert np.all(np.diff(splits[name]) > 0)


def test_purge_below_minimum_raises_spec_error_naming_both_values(arrays):
    cfg = dataclasses.replace(SPLIT, purge_bars=100)
    with pytest.raises(SpecError) as err:
        make_splits(arrays, cfg, WCFG)
    assert "100" in str(err.value) and "336" in str(err.value), str(err.value)
    # A larger purge than the minimum is honoured.
    wide = make_splits(arrays, dataclasses.replace(SPLIT, purge_bars=1000), WCFG)
    assert wide["val"][0] - wide["train"][-1] >= 1000


def test_split_dates_out_of_order_raise_spec_error():
    with pytest.raises(SpecError, match="val_start"):
        SplitConfig(train_start="2020-01-01", train_end="2021-01-01", val_start="2020-06-01",
                    val_end="2022-01-01", test_start="2023-01-01", test_end="2024-01-01")


def test_samples_with_nan_targets_flags_or_short_windows_are_dropped(arrays):
    flagged = dataclasses.replace(arrays, target_flags=arrays.target_flags.copy())
    flagged.target_flags[5000:5100, 4] = 2  # weekend crossing on the 4h horizon
    keep = make_splits(flagged, SPLIT, WCFG)["train"]
    drop = make_splits(flagged, SPLIT, dataclasses.replace(WCFG, drop_target_flags=2))["train"]
    assert np.isin(np.arange(5000, 5100), keep).all()
    assert not np.isin(np.arange(5000, 5100), drop).any()
    everything = np.concatenate(list(make_splits(arrays, SPLIT, WCFG).values()))
    assert np.isfinite(arrays.targets[everything]).all()
    L = everything - window_starts(arrays.ts, WCFG, everything) + 1
    assert L.min() >= WCFG.min_valid_bars
    assert 0 not in everything  # bar 0's log-return feature is NaN (warm-up)


def test_subsample_fraction_is_reproducible_by_seed(arrays):
    cfg = dataclasses.replace(WCFG, subsample_fraction=0.1, seed=3)
    a, b = make_splits(arrays, SPLIT, cfg), make_splits(arrays, SPLIT, cfg)
    c = make_splits(arrays, SPLIT, dataclasses.replace(cfg, seed=4))
    full = make_splits(arrays, SPLIT, WCFG)
    for s in ("train", "val", "test"):
        assert np.array_equal(a[s], b[s])
        assert not np.array_equal(a[s], c[s])
        assert abs(a[s].size - 0.1 * full[s].size) <= 1 and np.isin(a[s], full[s]).all()


def test_stride_keeps_every_stride_th_bar_for_train_and_eval_stride_for_val(arrays):
    cfg = dataclasses.replace(WCFG, stride=12, eval_stride=6)
    out = make_splits(arrays, SPLIT, cfg)
    assert (out["train"] % 12 == 0).all() and (out["val"] % 6 == 0).all() and (out["test"] % 6 == 0).all()


def test_rolling_origin_folds_tile_the_end_without_overlap():
    last = SplitConfig(train_start="2020-01-01", train_end="2020-09-30", val_start="2020-10-01",
                       val_end="2020-10-31", test_start="2020-11-01", test_end="2020-12-31", folds=3)
    folds = last.fold_splits()
    assert [f.test_end for f in folds] == [dt.date(2020, 8, 31), dt.date(2020, 10, 31), dt.date(2020, 12, 31)]
    assert folds[-1] == dataclasses.replace(last, folds=1)           # the configured dates are the last fold
    for f, g in zip(folds, folds[1:]):
        assert g.test_start == f.test_end + dt.timedelta(days=1)      # contiguous, no overlap
    for f in folds:
        assert f.folds == 1 and f.train_start == dt.date(2020, 1, 1)  # expanding
        assert f.train_end < f.val_start <= f.val_end < f.test_start
    sliding = dataclasses.replace(last, fold_scheme="sliding").fold_splits()
    assert [f.train_start for f in sliding] == [dt.date(2019, 9, 1), dt.date(2019, 11, 1), dt.date(2020, 1, 1)]
    assert len({(f.train_end - f.train_start).days for f in sliding}) == 1   # the same train length
    with pytest.raises(SpecError, match="fold 0 has no train days left"):
        dataclasses.replace(last, folds=6)
    with pytest.raises(SpecError, match="fold_scheme"):
        dataclasses.replace(last, fold_scheme="rolling")


# --------------------------------------------------------------------------------------------- scalers


def test_scalers_fit_on_train_only_test_changes_move_test_outputs_not_train(arrays, splits, scalers):
    changed = dataclasses.replace(arrays, X=arrays.X.copy(), close=arrays.close.copy())
    t0 = splits["test"][0] - 288  # first bar any test window reads (after val's last target)
    changed.X[t0:] = changed.X[t0:] * 3 + 7
    changed.close[t0:] = changed.close[t0:] * np.exp(np.cumsum(np.r_[0, 0.01 * np.ones(len(arrays.close) - t0 - 1)]))
    refit = fit_scalers(changed, splits["train"], WCFG)
    for f in ("center", "spread", "tod_profile", "scale_floor", "vol_center", "vol_spread"):
        assert np.array_equal(getattr(scalers, f), getattr(refit, f)), f
    assert scalers.var_per_bar == refit.var_per_bar
    train_a = dataset_arrays(arrays, splits["train"], scalers, WCFG).batch(np.arange(300))
    train_b = dataset_arrays(changed, splits["train"], refit, WCFG).batch(np.arange(300))
    for k in train_a:
        assert np.array_equal(train_a[k], train_b[k]), (k, first_mismatch(train_a[k], train_b[k]))
    test_a = dataset_arrays(arrays, splits["test"], scalers, WCFG).batch(np.arange(300))
    test_b = dataset_arrays(changed, splits["test"], refit, WCFG).batch(np.arange(300))
    assert not np.array_equal(test_a["x"], test_b["x"])
    assert not np.array_equal(test_a["scale"], test_b["scale"])


def test_feature_scaling_is_robust_standardization_clipped_without_nan(arrays, splits, scalers):
    ds = dataset_arrays(arrays, splits["train"], scalers, WCFG)
    assert ds.bars.dtype == np.float32 and ds.bars.flags.c_contiguous
    assert np.isfinite(ds.bars).all() and np.abs(ds.bars).max() <= WCFG.clip
    assert not ds.bars[-ds.t_max:].any()  # the zero tail the block copies may run into
    med = np.median(ds.bars[:-ds.t_max], axis=0)
    assert np.abs(med).max() < 0.05, med  # train median ~ 0 after centering on it
    iqr = np.subtract(*np.percentile(ds.bars[:-ds.t_max, 2:], [75, 25], axis=0))
    np.testing.assert_allclose(iqr, 1.349, rtol=0.05)


def test_target_scale_is_strictly_positive_even_on_flat_prices_and_follows_time_of_day(arrays, splits, scalers):
    flat = dataclasses.replace(arrays, close=arrays.close.copy())
    flat.close[splits["val"][0]:] = flat.close[splits["val"][0]]  # a frozen market: zero returns
    s = target_scale(flat, splits["test"], scalers)
    assert s.dtype == np.float32 and s.shape == (splits["test"].size, 5)
    assert (s > 0).all() and np.isfinite(s).all(), s.min()
    np.testing.assert_allclose(s.min(axis=0), scalers.scale_floor.astype(np.float32), rtol=1e-6)
    # RTH bars were simulated 3x as volatile: the fitted profile says so (ratio of variances ~ 9).
    slot = np.arange(288) * 5
    rth = (slot >= 570) & (slot < 960)
    ratio = scalers.tod_profile[rth].mean() / scalers.tod_profile[(slot < 17 * 60) | (slot >= 18 * 60)][~rth[
        (slot < 17 * 60) | (slot >= 18 * 60)]].mean()
    assert 6 < ratio < 12, ratio
    # The 15-minute scale before the RTH open (next 3 bars quiet) is smaller than just after it.
    real = target_scale(arrays, splits["train"], scalers)
    m = arrays.minute_of_day_et[splits["train"]]
    assert np.median(real[m == 9 * 60 + 35, 0]) > 2 * np.median(real[m == 9 * 60 + 5, 0])


def test_target_scale_is_causal(arrays, splits, scalers):
    idx = splits["train"][::50]
    before = target_scale(arrays, idx, scalers)
    for t in idx[:5]:
        future = dataclasses.replace(arrays, close=arrays.close.copy())
        future.close[t + 1:] *= np.exp(np.random.default_rng(int(t)).normal(0, 0.05, len(arrays.close) - t - 1))
        after = target_scale(future, idx[idx <= t], scalers)
        assert np.array_equal(before[idx <= t], after), first_mismatch(before[idx <= t], after)


# --------------------------------------------------------------------------------------------- windows


def test_window_t_holds_exactly_the_bars_up_to_t(arrays, splits, scalers):
    ds = dataset_arrays(arrays, splits["val"], scalers, WCFG)
    rows = np.linspace(0, len(ds) - 1, 64).astype(int)
    b = ds.batch(rows)
    scaled = scalers.transform_features(arrays.X)
    ts = arrays.ts
    for i, r in enumerate(rows):
        t = int(ds.idx[r])
        in_24h = int(((ts > ts[t] - np.timedelta64(24, "h")) & (ts <= ts[t])).sum())  # independent count
        L = int(b["mask"][i].sum())
        assert L == in_24h, (t, L, in_24h)
        assert np.array_equal(b["x"][i, :L], scaled[t - L + 1:t + 1]), (t, first_mismatch(b["x"][i, :L], scaled[t - L + 1:t + 1]))
        assert np.array_equal(b["x"][i, L - 1], scaled[t])  # the last valid step is bar t itself
        assert b["y"][i].tolist() == arrays.targets[t].astype(np.float32).tolist()
    # Perturbing every bar after t leaves the window ending at t (and its scale) unchanged.
    t = int(ds.idx[rows[10]])
    later = dataclasses.replace(arrays, X=arrays.X.copy(), close=arrays.close.copy())
    later.X[t + 1:] = 1e6
    later.close[t + 1:] *= 1.5
    again = dataset_arrays(later, ds.idx[rows[10]:rows[10] + 1], scalers, WCFG).batch([0])
    for k in ("x", "mask", "temporal", "scale", "vol"):
        assert np.array_equal(again[k][0], b[k][10]), (k, first_mismatch(again[k][0], b[k][10]))


def test_padding_is_exactly_zero_and_mask_false_left_aligned(arrays, splits, scalers):
    ds = dataset_arrays(arrays, splits["train"], scalers, WCFG)
    short = np.flatnonzero(ds.length < WCFG.t_max)
    assert short.size > 100, "fixture should hold padded windows (Monday mornings, post-break bars)"
    b = ds.batch(short[:256])
    steps = np.arange(WCFG.t_max)
    assert np.array_equal(b["mask"], steps[None, :] < ds.length[short[:256], None])  # valid steps first
    pad = ~b["mask"]
    assert pad.any() and (b["x"][pad] == 0).all() and (b["temporal"][pad] == 0).all()
    assert not np.signbit(b["x"][pad]).any()  # +0.0, not -0.0
    assert (b["temporal"][b["mask"]][:, 2] >= 1).all()  # valid steps have day_of_month >= 1, never the pad


def test_batch_equals_a_per_window_slice_reference_on_every_sample(arrays, splits, scalers):
    """The vectorized gather (block copies, padding zeroed through a table of masks) gives exactly
    what slicing each window on its own gives, for every train sample in a shuffled order."""
    ds = dataset_arrays(arrays, splits["train"], scalers, WCFG)
    T, V = WCFG.t_max, ds.bars.shape[1]
    rows = np.random.default_rng(3).permutation(len(ds))
    for chunk in np.array_split(rows, max(1, len(rows) // 128)):
        b = ds.batch(chunk)
        for i, r in enumerate(chunk):
            s, L = int(ds.start[r]), int(ds.length[r])
            x, temporal = np.zeros((T, V), np.float32), np.zeros((T, 4), np.float32)
            x[:L], temporal[:L] = ds.bars[s:s + L], ds.temporal[s:s + L]
            assert np.array_equal(b["x"][i], x) and np.array_equal(b["temporal"][i], temporal), (r, L)
            assert np.array_equal(b["mask"][i], np.arange(T) < L)
        assert np.array_equal(b["y"], ds.y[chunk]) and np.array_equal(b["scale"], ds.scale[chunk])
        assert np.array_equal(b["idx"], ds.idx[chunk])


def test_temporal_inputs_match_known_new_york_times_across_dst():
    ts = np.array(["2023-03-10T14:30", "2023-03-13T13:30", "2023-11-03T13:30", "2023-11-06T14:30",
                   "2024-12-31T23:00", "2023-11-24T18:10"], dtype="datetime64[us]")
    got = temporal_features(ts)
    want = [[570, 4, 10, 69],    # Fri 09:30 EST (UTC-5)
            [570, 0, 13, 72],    # Mon 09:30 EDT (UTC-4), the day after DST started
            [570, 4, 3, 307],    # Fri 09:30 EDT
            [570, 0, 6, 310],    # Mon 09:30 EST, the day after DST ended
            [1080, 1, 31, 366],  # Tue 18:00 EST on the last day of a leap year
            [790, 4, 24, 328]]   # Fri 13:10 EST, the Thanksgiving-Friday last bar
    assert got.dtype == np.float32 and got.tolist() == want


def test_loader_yields_contract_tensors_and_shuffles_reproducibly(arrays, splits, scalers):
    import torch

    loader = WindowLoader(arrays, splits["val"], scalers, WCFG, batch_size=128, shuffle=True, seed=5)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-splits["val"].size // 128)
    b = batches[0]
    B, T, V, H = 128, 288, arrays.X.shape[1], 5
    assert b["x"].shape == (B, T, V) and b["x"].dtype == torch.float32 and b["x"].is_contiguous()
    assert b["mask"].shape == (B, T) and b["mask"].dtype == torch.bool
    assert b["temporal"].shape == (B, T, 4) and b["temporal"].dtype == torch.float32
    assert b["y"].shape == (B, H) and b["scale"].shape == (B, H) and b["y"].dtype == b["scale"].dtype == torch.float32
    assert b["idx"].shape == (B,)
    seen = torch.cat([x["idx"] for x in batches]).numpy()
    assert np.array_equal(np.sort(seen), splits["val"])  # every sample once per epoch
    again = WindowLoader(arrays, splits["val"], scalers, WCFG, batch_size=128, shuffle=True, seed=5)
    assert torch.equal(next(iter(again))["idx"], b["idx"])
    assert not torch.equal(next(iter(loader))["idx"], b["idx"])  # epoch 1 draws a new permutation
    assert len(WindowLoader.from_dataset(loader.dataset, batch_size=128, drop_last=True)) == splits["val"].size // 128


def test_loader_with_reused_buffers_yields_the_same_batches(arrays, splits, scalers):
    """reuse_buffers (what train.py uses) writes each batch into the same tensors: equal values to
    the fresh batches, the short last batch included, also from read-only (Ray object store) arrays."""
    import torch

    ds = dataset_arrays(arrays, splits["train"], scalers, WCFG)
    for arr in (ds.bars, ds.temporal, ds.y, ds.scale, ds.idx, ds.start, ds.length):
        arr.flags.writeable = False
    fresh = WindowLoader.from_dataset(ds, batch_size=100, shuffle=True, seed=2)
    reused = WindowLoader.from_dataset(ds, batch_size=100, shuffle=True, seed=2, reuse_buffers=True)
    assert len(ds) % 100, "the last batch should be short"
    n, pointers = 0, set()
    for a, b in zip(fresh, reused, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and b[k].is_contiguous(), k
            assert torch.equal(a[k], b[k]), k
        pointers.add(b["x"].data_ptr())
        n += len(b["idx"])
    assert n == len(ds) and len(pointers) == 1  # one buffer for the whole epoch


def test_dataset_numpy_round_trip_gives_identical_batches(arrays, splits, scalers):
    import pickle

    ds = dataset_arrays(arrays, splits["test"], scalers, WCFG)
    back = WindowDataset.from_numpy(pickle.loads(pickle.dumps(ds.to_numpy())))
    for arr in (back.bars, back.temporal):
        arr.flags.writeable = False  # Ray's object store hands out read-only arrays
    rows = np.arange(0, len(ds), 7)
    a, b = ds.batch(rows), back.batch(rows)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert ds.nbytes < 2 * ds.bars.nbytes + 10_000_000  # O(bars + samples), no materialized windows


def test_trading_week_windows_of_1_minute_bars_count_bars_across_the_weekend():
    a = arrays_from_et(globex_timeline("2023-06-05", "2023-06-30", freq=1), horizons=(5, 15, 30, 60, 120, 240), freq=1)
    cfg = WindowConfig.grok24()
    assert cfg.t_max == 6900 and cfg.lookback_minutes is None and cfg.stride == 60
    split = SplitConfig(train_start="2023-06-01", train_end="2023-06-21", val_start="2023-06-22",
                        val_end="2023-06-27", test_start="2023-06-28", test_end="2023-06-30")
    idx = make_splits(a, split, cfg)
    assert (idx["train"] % 60 == 0).all() and idx["train"].size
    sc = fit_scalers(a, idx["train"], cfg)
    b = dataset_arrays(a, idx["train"], sc, cfg).batch(np.arange(len(idx["train"])))
    L = b["mask"].sum(1)
    assert (L == np.minimum(idx["train"] + 1, 6900)).all()  # the last 6900 bars, whatever their times
    monday = np.flatnonzero(a.session_date[idx["train"]] == np.datetime64("2023-06-12"))[0]
    days = np.unique(b["temporal"][monday][b["mask"][monday]][:, 1])
    assert set(days.tolist()) >= {0, 1, 2, 3, 4, 6}, days  # a full trading week back, Sunday evening included


def test_window_config_rejects_bad_values_with_field_names():
    with pytest.raises(SpecError, match="subsample_fraction"):
        WindowConfig(subsample_fraction=0)
    with pytest.raises(SpecError, match="min_valid_bars"):
        WindowConfig(min_valid_bars=300)


# --------------------------------------------------------------------------------------------- real data


def firstrate_5m_arrays() -> Arrays:
    from nqexp.data.ingest import read_bars

    raw, _ = read_bars(DATA / "firstrate-nq-2023" / "NQ_1min_sample.csv", tz="America/New_York")
    ts = pd.DatetimeIndex(raw["ts"]).tz_localize("UTC")
    bars = pd.Series(raw["close"].to_numpy(), index=ts).resample("5min", label="left", closed="left").last().dropna()
    return arrays_from_et(bars.index.tz_convert("America/New_York"), close=bars.to_numpy())


@pytest.mark.realdata
def test_thanksgiving_early_close_window_is_short_and_padded():
    if not DATA.exists():
        pytest.skip("../shared/data is absent")
    a = firstrate_5m_arrays()
    vendor = pd.read_csv(DATA / "firstrate-nq-2023" / "NQ_5min_sample.csv")
    vendor_ts = pd.DatetimeIndex(vendor["timestamp"]).tz_localize("America/New_York").tz_convert("UTC").tz_localize(None)
    assert np.array_equal(a.ts, vendor_ts.to_numpy().astype("datetime64[us]"))  # the vendor's own 5-minute timeline
    split = SplitConfig(train_start="2023-11-20", train_end="2023-11-22", val_start="2023-11-23",
                        val_end="2023-11-27", test_start="2023-11-30", test_end="2023-12-04")
    idx = make_splits(a, split, WCFG)
    sc = fit_scalers(a, idx["train"], WCFG)
    et = pd.DatetimeIndex(a.ts).tz_localize("UTC").tz_convert("America/New_York").tz_localize(None)
    t = int(np.flatnonzero(et == pd.Timestamp("2023-11-24 13:10"))[0])  # Friday's last bar (13:15 close)
    assert t in idx["val"] and t + 1 < len(a.ts) and et[t + 1] >= pd.Timestamp("2023-11-26 18:00")
    ds = dataset_arrays(a, np.array([t]), sc, WCFG)
    b = ds.batch([0])
    # Independent count on the ET clock: Thursday halted at 13:00, so the 24 h back from Fri 13:10
    # hold only Thursday 18:00 .. Friday 13:10.
    expect = int(((et > pd.Timestamp("2023-11-23 13:10")) & (et <= pd.Timestamp("2023-11-24 13:10"))).sum())
    L = int(b["mask"][0].sum())
    assert L == expect and L <= 231 and L < 273, (L, expect)
    assert b["mask"][0, :L].all() and not b["mask"][0, L:].any()
    assert (b["x"][0, L:] == 0).all() and (b["temporal"][0, L:] == 0).all()
    first = b["temporal"][0, 0]
    assert first.tolist() == [18 * 60, 3, 23, 327]  # Thursday 18:00 ET, Nov 23 (day 327)
    assert b["temporal"][0, L - 1].tolist() == [790, 4, 24, 328]
    # A normal Tuesday window is full-length in the vendor data (275-276 bars).
    tue = int(np.flatnonzero(et == pd.Timestamp("2023-11-28 13:10"))[0])
    full = tue - int(window_starts(a.ts, WCFG, [tue])[0]) + 1
    assert 273 <= full <= 276, full


def test_no_window_or_target_crosses_a_hole_in_the_data():
    """Three missing weeks split the series into two segments (calendar.SEGMENT_GAP): no sample's
    window starts before the hole and ends after it, no target reaches across it, and the indicators
    warm up again after it."""
    from nqexp.calendar import segment_ids
    from nqexp.model.windows import _valid_samples

    before = globex_timeline("2023-01-02", "2023-02-28")
    after = globex_timeline("2023-03-27", "2023-05-31")
    a = arrays_from_et(before.append(after))
    cfg = dataclasses.replace(WCFG, lookback_minutes=None, t_max=96, min_valid_bars=96)  # bar-count windows
    valid, counts = _valid_samples(a, cfg)
    seg = segment_ids(a.ts)
    assert set(seg) == {0, 1}
    first_after = int(np.flatnonzero(seg == 1)[0])
    idx = np.flatnonzero(valid)
    starts = window_starts(a.ts, cfg, idx)
    assert (seg[starts] == seg[idx]).all()                           # windows stay in their segment
    h_max = max(a.horizons)
    assert not np.isin(np.arange(first_after - h_max, first_after), idx).any()   # targets would cross
    assert counts["segment_boundary"] >= h_max
    assert not np.isin(np.arange(first_after, first_after + 95), idx).any()      # a window needs 96 bars after it
    assert np.isin(first_after + 200, idx)                                       # and later bars are samples again
