"""Baselines, the per-split metric table, sanity gates and the predictions file."""


import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from nqexp import metrics as M
from nqexp.errors import DataError, NqexpError
from nqexp.evaluation import baselines as B
from nqexp.evaluation import evaluate as E
from tests.conftest import SHARED_DATA, two_baselines

TAUS = np.array(E.DEFAULT_TAUS)
HM = (15, 30, 60, 120, 240)
H_BARS = np.array([3, 6, 12, 24, 48])


def _world(n=6000, seed=0, signal=0.0):
    """Synthetic 5-minute origins with clustered vol; the model knows the true conditional law.

    Returns ts (N,), y (N, H), q (N, H, Q) of the true conditional quantiles, scale (N, H).
    """
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-02 00:00", periods=n, freq="5min").values  # naive UTC
    log_vol = np.zeros(n)
    for t in range(1, n):
        log_vol[t] = 0.97 * log_vol[t - 1] + 0.25 * rng.normal()
    sigma = 1e-3 * np.exp(log_vol)[:, None] * np.sqrt(H_BARS / 3)[None, :]  # (N, H)
    mu = signal * sigma * rng.normal(size=(n, 1))  # (N, H) a weak predictable drift
    y = mu + sigma * rng.normal(size=(n, len(HM)))  # (N, H)
    q = mu[:, :, None] + sigma[:, :, None] * norm.ppf(TAUS)[None, None, :]  # (N, H, Q)
    return ts, y, q, sigma


def _split(n=6000, seed=0, signal=0.0):
    """Fit baselines on the first half, evaluate on the second: (ts, y, q, baselines) of the test half."""
    ts, y, q, scale = _world(n, seed, signal)
    k = n // 2
    return ts[k:], y[k:], q[k:], two_baselines(y[:k], scale[:k], scale[k:], TAUS)


def _flat(split, y, q, taus, hm, ts, bq, **kw):
    """The flat metric dict of one split, as the pipeline logs it."""
    return E.flatten_metrics(E.evaluate_split_table(split, y, q, taus, hm, ts, bq, **kw))


def _table(y, q, ts, baselines, split="test", **kw):
    return E.evaluate_split_table(split, y, q, TAUS, HM, ts, baselines, n_boot=kw.pop("n_boot", 100), **kw)


# ------------------------------------------------------------------------------ baselines


def test_climatology_is_train_quantiles_per_horizon():
    ts, y, q, scale = _world(2000)
    b = B.ClimatologyBaseline(TAUS).fit(y)
    out = b.quantiles(scale[:10])  # (10, H, Q)
    assert out.shape == (10, len(HM), len(TAUS))
    np.testing.assert_allclose(out[3], np.quantile(y, TAUS, axis=0).T, rtol=0, atol=0)


def test_volscaled_is_train_quantiles_of_y_over_scale_times_eval_scale():
    ts, y, q, scale = _world(2000)
    b = B.VolScaledBaseline(TAUS).fit(y[:1000], scale[:1000])
    z = np.quantile(y[:1000] / scale[:1000], TAUS, axis=0).T  # (H, Q)
    out = b.quantiles(scale[1000:])
    np.testing.assert_allclose(out, scale[1000:, :, None] * z[None], rtol=1e-15)
    assert M.crossing_rate(out.reshape(-1, len(TAUS))) == 0


def test_baselines_ignore_nan_targets_when_fitting():
    ts, y, q, scale = _world(2000)
    y_nan = y.copy()
    y_nan[::7, 2] = np.nan
    b = B.ClimatologyBaseline(TAUS).fit(y_nan)
    np.testing.assert_allclose(b.q_[2], np.quantile(y[np.arange(2000) % 7 != 0, 2], TAUS))


def test_changing_test_data_never_changes_the_fitted_baselines():
    ts, y, q, scale = _world(3000)
    train_y, train_s = y[:1500].copy(), scale[:1500].copy()
    fitted = {"climatology": B.ClimatologyBaseline(TAUS).fit(train_y),
              "volscaled": B.VolScaledBaseline(TAUS).fit(train_y, train_s)}
    params = {k: (b.q_ if hasattr(b, "q_") and b.q_ is not None else b.z_).copy() for k, b in fitted.items()}
    before = {k: b.quantiles(scale[1500:]) for k, b in fitted.items()}
    # Scoring on wildly different test data (targets and vol) ...
    rng = np.random.default_rng(99)
    other_scale = scale[1500:] * rng.uniform(0.1, 10, size=scale[1500:].shape)
    _table(y[1500:] * 50, q[1500:], ts[1500:], {k: b.quantiles(other_scale) for k, b in fitted.items()})
    # ... leaves the fitted parameters and the forecasts for the original test scale unchanged,
    for k, b in fitted.items():
        np.testing.assert_array_equal(b.q_ if k == "climatology" else b.z_, params[k])
    after = {k: b.quantiles(scale[1500:]) for k, b in fitted.items()}
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    # and refitting on the same train arrays gives the same parameters.
    refit = B.VolScaledBaseline(TAUS).fit(train_y, train_s)
    np.testing.assert_array_equal(refit.z_, params["volscaled"])


def test_volscaled_rejects_non_positive_scale():
    ts, y, q, scale = _world(500)
    scale[10, 1] = 0.0
    with pytest.raises(DataError, match=r"sample 10, horizon index 1"):
        B.VolScaledBaseline(TAUS).fit(y, scale)


def test_volscaled_beats_climatology_when_vol_clusters():
    ts, y, q, bq = _split()
    table = _table(y, q, ts, bq)
    d = E.flatten_metrics(table)
    for label in ("15m", "4h"):
        assert d[f"crps_volscaled_{label}"] < d[f"crps_climatology_{label}"], label


# ------------------------------------------------------------------------------ metrics table


def test_flat_keys_follow_the_contract():
    ts, y, q, bq = _split(3000)
    d = _flat("test", y, q, TAUS, HM, ts, bq, n_boot=50)
    for label in ("15m", "30m", "60m", "2h", "4h"):
        for name in ("crps", "crpss_climatology", "crpss_volscaled", "picp50", "picp80", "picp90",
                     "mpiw80", "calib_err", "ic", "ic_lo", "ic_hi", "icir", "ic_daily", "dir_acc",
                     "rmse", "mae", "tail_acc", "crossing_rate", "nonfinite_rate", "n",
                     "cov_q05", "cov_q50", "cov_q95", "crps_climatology", "crps_volscaled",
                     "picp80_climatology", "mpiw80_volscaled"):
            assert f"{name}_{label}" in d, f"missing {name}_{label}"
    for name in ("crps", "crpss_climatology", "picp80", "mpiw80", "ic", "crps_climatology"):
        assert name in d, f"missing horizon mean {name}"
    assert all(isinstance(v, float) for v in d.values())


def test_table_values_match_metric_functions_on_the_same_samples():
    ts, y, q, bq = _split(3000)
    table = _table(y, q, ts, bq)
    d = E.flatten_metrics(table)
    h = 2  # 60m
    crps = M.crps_quantile(y[:, h], q[:, h], TAUS).mean()
    crps_c = M.crps_quantile(y[:, h], bq["climatology"][:, h], TAUS).mean()
    assert d["crps_60m"] == pytest.approx(crps, rel=1e-12)
    assert d["crpss_climatology_60m"] == pytest.approx(1 - crps / crps_c, rel=1e-12)
    assert d["picp80_60m"] == pytest.approx(M.picp(y[:, h], q[:, h, 1], q[:, h, 5]))
    assert d["mpiw80_60m"] == pytest.approx(np.mean(q[:, h, 5] - q[:, h, 1]))
    assert d["cov_q25_60m"] == pytest.approx(np.mean(y[:, h] <= q[:, h, 2]))
    assert d["crps"] == pytest.approx(np.mean([d[f"crps_{M.horizon_label(m)}"] for m in HM]))
    # Model rows, baseline rows and horizon means all live in the long table.
    assert set(table["source"]) == {"model", "climatology", "volscaled"}
    assert set(table["horizon"]) == {"15m", "30m", "60m", "2h", "4h", "all"}
    assert list(table.columns) == ["split", "horizon", "metric", "value", "source"]


def test_pit_histogram_data_is_in_the_table_on_tau_aligned_bins():
    ts, y, q, bq = _split(8000)
    d = _flat("test", y, q, TAUS, HM, ts, bq, n_boot=10)
    names = ["pit_00_05", "pit_05_10", "pit_10_25", "pit_25_50", "pit_50_75", "pit_75_90",
             "pit_90_95", "pit_95_100"]
    dens = np.array([d[f"{k}_60m"] for k in names])
    widths = np.diff(np.r_[0, TAUS, 1])
    assert (dens * widths).sum() == pytest.approx(1.0)  # a density over [0, 1]
    assert np.abs(dens - 1).max() < 0.15, dens  # the true law gives a flat PIT
    # A collapsed forecast puts everything in the two outer bins.
    collapsed = np.repeat(q[:, :, 3:4], len(TAUS), axis=2)
    dc = _flat("test", y, collapsed, TAUS, HM, ts, bq, n_boot=10)
    assert dc["pit_00_05_60m"] * 0.05 + dc["pit_95_100_60m"] * 0.05 == pytest.approx(1.0)


def test_every_metric_in_the_table_is_described():
    import re

    ts, y, q, bq = _split(2000)
    table = _table(y, q, ts, bq, n_boot=10)
    patterns = [re.compile("^" + re.sub(r"\\{\w+\\}", r"[a-z0-9p]+(?:_[a-z0-9p]+)?", re.escape(k)) + "$")
                for k in E.METRIC_DESCRIPTIONS]
    undocumented = sorted(m for m in set(table["metric"]) if not any(p.match(m) for p in patterns))
    assert not undocumented, f"add to METRIC_DESCRIPTIONS: {undocumented}"


def test_nan_targets_are_dropped_per_horizon_only():
    ts, y, q, bq = _split(3000)
    y_nan = y.copy()
    y_nan[:500, 0] = np.nan  # only the 15m horizon loses samples
    d = _flat("test", y_nan, q, TAUS, HM, ts, bq, n_boot=20)
    assert d["n_15m"] == len(y) - 500 and d["n_30m"] == len(y)
    ref = M.crps_quantile(y[500:, 0], q[500:, 0], TAUS).mean()
    assert d["crps_15m"] == pytest.approx(ref, rel=1e-12)
    assert np.isfinite(d["crpss_climatology_15m"])


def test_true_conditional_quantiles_are_calibrated_and_beat_climatology():
    ts, y, q, bq = _split(8000)
    d = _flat("test", y, q, TAUS, HM, ts, bq, n_boot=50)
    for label in ("15m", "60m", "4h"):
        assert abs(d[f"picp80_{label}"] - 0.8) < 0.04, (label, d[f"picp80_{label}"])
        assert d[f"calib_err_{label}"] < 0.03
        assert d[f"crpss_climatology_{label}"] > 0.02
        assert d[f"crossing_rate_{label}"] == 0


def test_ic_ci_brackets_pooled_ic_for_a_signal():
    ts, y, q, bq = _split(8000, signal=0.3)
    d = _flat("test", y, q, TAUS, HM, ts, bq, n_boot=200)
    for label in ("15m", "4h"):
        assert d[f"ic_lo_{label}"] < d[f"ic_{label}"] < d[f"ic_hi_{label}"], label
        assert d[f"ic_lo_{label}"] > 0, f"signal IC not significant at {label}: {d[f'ic_lo_{label}']}"
    assert d["ic_15m"] == pytest.approx(M.spearman_ic(q[:, 0, 3], y[:, 0]))


def test_evaluation_is_deterministic():
    ts, y, q, bq = _split(2000, signal=0.2)
    a = _flat("val", y, q, TAUS, HM, ts, bq, n_boot=50, seed=3)
    b = _flat("val", y, q, TAUS, HM, ts, bq, n_boot=50, seed=3)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]) or (np.isnan(a[k]) and np.isnan(b[k])) for k in a)


def test_sample_order_does_not_change_any_metric():
    ts, y, q, bq = _split(2000, signal=0.2)
    perm = np.random.default_rng(0).permutation(len(y))
    a = _flat("val", y, q, TAUS, HM, ts, bq, n_boot=50)
    b = _flat("val", y[perm], q[perm], TAUS, HM, ts[perm], {k: v[perm] for k, v in bq.items()}, n_boot=50)
    bad = {k: (a[k], b[k]) for k in a if not (np.isclose(a[k], b[k], rtol=1e-12, atol=0) or np.isnan(a[k]) and np.isnan(b[k]))}
    assert not bad, list(bad.items())[:5]


def test_shape_mismatch_is_a_data_error_naming_the_split():
    ts, y, q, bq = _split(1000)
    with pytest.raises(DataError, match=r"^val: q has shape"):
        _flat("val", y, q[:, :, :3], TAUS, HM, ts, bq)


# ------------------------------------------------------------------------------ gates


def _gates_for(q_broken, y, ts, bq, **kw):
    return E.check_gates(_table(y, q_broken, ts, bq, n_boot=20), **kw)


def test_sane_predictions_pass_every_gate():
    ts, y, q, bq = _split(4000)
    assert _gates_for(q, y, ts, bq) == []


def test_gate_flags_collapsed_point_forecast_with_readable_reason():
    # The failure mode of the earlier public project: every quantile equals the median.
    ts, y, q, bq = _split(4000)
    collapsed = np.repeat(q[:, :, 3:4], len(TAUS), axis=2)  # (N, H, Q)
    flags = _gates_for(collapsed, y, ts, bq)
    gates = {f.gate for f in flags}
    assert {"collapse_coverage", "collapse_width", "worse_than_climatology"} <= gates
    f = next(f for f in flags if f.gate == "collapse_coverage" and f.horizon == "60m")
    assert f.split == "test" and f.metric == "picp80" and f.value == 0.0 and f.threshold == 0.4
    assert f.reason == "[collapse_coverage] test 60m: picp80 = 0 (80% interval coverage) is below 0.4"


def test_gate_flags_near_zero_width_relative_to_climatology():
    ts, y, q, bq = _split(4000)
    med = q[:, :, 3:4]
    narrow = med + (q - med) * 1e-4  # (N, H, Q) shape kept, width shrunk 10^4 times
    flags = [f for f in _gates_for(narrow, y, ts, bq) if f.gate == "collapse_width"]
    assert {f.horizon for f in flags} == {"15m", "30m", "60m", "2h", "4h"}
    d = E.flatten_metrics(_table(y, narrow, ts, bq, n_boot=10))
    f = next(f for f in flags if f.horizon == "2h")
    assert f.threshold == pytest.approx(1e-3 * d["mpiw80_climatology_2h"])
    assert "climatology MPIW80" in f.reason


def test_gate_flags_model_worse_than_climatology():
    ts, y, q, bq = _split(4000)
    # Well calibrated on average, but anti-informative: the widths are assigned in reverse vol order.
    bad = q[::-1].copy()
    flags = [f for f in _gates_for(bad, y, ts, bq) if f.gate == "worse_than_climatology"]
    assert flags and all(f.value < 0 and f.metric == "crpss_climatology" for f in flags)


def test_gate_flags_implausibly_high_ic_as_leakage():
    ts, y, q, bq = _split(4000)
    leaky = q.copy()
    leaky[:, :, :] += 0.5 * y[:, :, None]  # the median now contains the future return
    flags = [f for f in _gates_for(leaky, y, ts, bq) if f.gate == "leakage_ic"]
    assert {f.horizon for f in flags} == {"15m", "30m", "60m", "2h", "4h"}
    assert all(f.value > 0.1 for f in flags)


def test_gate_flags_nan_outputs():
    ts, y, q, bq = _split(4000)
    broken = q.copy()
    broken[7, 1, 2] = np.nan
    broken[8, 1, 0] = np.inf
    flags = [f for f in _gates_for(broken, y, ts, bq) if f.gate == "nonfinite"]
    assert [(f.horizon, f.metric) for f in flags] == [("30m", "nonfinite_rate")]
    assert flags[0].value == pytest.approx(2 / len(y))


def test_gate_flags_all_nan_outputs_even_though_rates_are_undefined():
    ts, y, q, bq = _split(2000)
    flags = _gates_for(np.full_like(q, np.nan), y, ts, bq)
    assert {f.horizon for f in flags if f.gate == "nonfinite"} == {"15m", "30m", "60m", "2h", "4h"}


def test_gate_flags_crossings():
    ts, y, q, bq = _split(4000)
    crossed = q.copy()
    crossed[:100, 4, [1, 2]] = crossed[:100, 4, [2, 1]]  # swap q10 and q25 on 100 samples at 4h
    flags = [f for f in _gates_for(crossed, y, ts, bq) if f.gate == "crossing"]
    assert [(f.horizon, f.value) for f in flags] == [("4h", pytest.approx(100 / len(y)))]


def test_strict_gates_raise_a_typed_error_listing_every_reason():
    ts, y, q, bq = _split(3000)
    collapsed = np.repeat(q[:, :, 3:4], len(TAUS), axis=2)
    with pytest.raises(E.GateError) as err:
        _gates_for(collapsed, y, ts, bq, strict=True)
    assert isinstance(err.value, NqexpError)
    assert len(err.value.flags) >= 10
    assert "[collapse_coverage] test 15m: picp80 = 0" in str(err.value)


# ------------------------------------------------------------------------------ predictions file


def test_metrics_recomputed_from_saved_predictions_equal_in_memory(tmp_path):
    ts, y, q, scale = _world(4000, seed=5, signal=0.2)
    y32, q32 = y.astype(np.float32), q.astype(np.float32)  # what the model emits
    y32[10:20, 3] = np.nan  # a dropped target survives the round trip
    splits = {
        "val": E.SplitPredictions(ts[2000:3000], y32[2000:3000], q32[2000:3000],
                                  two_baselines(y[:2000], scale[:2000], scale[2000:3000], TAUS)),
        "test": E.SplitPredictions(ts[3000:], y32[3000:], q32[3000:],
                                   two_baselines(y[:2000], scale[:2000], scale[3000:], TAUS)),
    }
    path = E.save_predictions(tmp_path / "run" / "predictions.parquet", splits, TAUS, HM)
    loaded = E.load_predictions(path)
    assert loaded.taus == tuple(TAUS) and loaded.horizon_minutes == HM
    assert list(loaded.splits) == ["val", "test"]
    for name, p in splits.items():
        lp = loaded.splits[name]
        np.testing.assert_array_equal(lp.ts, p.ts)
        np.testing.assert_array_equal(lp.y, p.y)
        np.testing.assert_array_equal(lp.q, p.q)
        mem = _flat(name, p.y, p.q, TAUS, HM, p.ts, p.baselines, n_boot=50)
        disk = _flat(name, lp.y, lp.q, loaded.taus, loaded.horizon_minutes, lp.ts,
                                lp.baselines, n_boot=50)
        assert mem.keys() == disk.keys()
        diff = {k: (mem[k], disk[k]) for k in mem
                if not (mem[k] == disk[k] or (np.isnan(mem[k]) and np.isnan(disk[k])))}
        assert not diff, f"{name}: metrics differ after the round trip: {list(diff.items())[:5]}"
    # The file is plain long-format Parquet a researcher can query directly.
    df = pd.read_parquet(path)
    assert {"ts", "split", "horizon", "target", "q05", "q95", "climatology_q50", "volscaled_q90"} <= set(df.columns)
    assert len(df) == 2000 * len(HM)
    assert str(df["ts"].dt.tz) == "UTC"


def test_load_predictions_of_a_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        E.load_predictions(tmp_path / "nope.parquet")


# ------------------------------------------------------------------------------ real data

DATA = SHARED_DATA / "firstrate-nq-2023" / "NQ_5min_sample.csv"


@pytest.mark.realdata
@pytest.mark.skipif(not DATA.exists(), reason="real-data fixtures (../shared/data) are absent")
def test_real_nq_volscaled_forecast_beats_climatology_and_passes_the_gates():
    # Two weeks of real NQ 5-minute bars. Scale: a causal rolling RMS of the last 24 one-bar
    # returns times sqrt(h). Fit on week 1, score on week 2. A sane, simple forecast must beat
    # climatology and trip no gate: the gates must not cry wolf on real data.
    df = pd.read_csv(DATA, header=0, names=["t", "o", "h", "l", "c", "v"])
    start = pd.to_datetime(df["t"], format="%Y-%m-%d %H:%M:%S").dt.tz_localize("America/New_York")
    ts = (start + pd.Timedelta(minutes=5)).dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()  # bar close
    lc = np.log(df["c"].to_numpy(float))
    bars = np.array([3, 6, 12])
    y = np.full((len(lc), 3), np.nan)
    for j, h in enumerate(bars):
        y[:-h, j] = lc[h:] - lc[:-h]  # (N, H) forward log-returns; the last h are unknown
    r2 = pd.Series(np.r_[np.nan, np.diff(lc)] ** 2).rolling(24, min_periods=12).mean().to_numpy()
    scale = np.sqrt(r2)[:, None] * np.sqrt(bars)[None, :]  # (N, H)
    ok = np.isfinite(scale).all(axis=1) & (scale > 0).all(axis=1)
    ts, y, scale = ts[ok], y[ok], scale[ok]
    k = len(y) // 2
    bq = two_baselines(y[:k], scale[:k], scale[k:], TAUS)
    table = E.evaluate_split_table("test", y[k:], bq["volscaled"], TAUS, (15, 30, 60), ts[k:], bq, n_boot=100)
    d = E.flatten_metrics(table)
    assert d["n_15m"] > 1000 and d["n_60m"] == d["n_15m"] - 9  # the last targets are NaN, dropped
    for label in ("15m", "30m", "60m"):
        assert d[f"crpss_climatology_{label}"] > 0.02, (label, d[f"crpss_climatology_{label}"])
        assert 0.7 < d[f"picp80_{label}"] < 0.9
    assert E.check_gates(table) == []


def _gate_table(ic, lo, hi):
    rows = [("test", "15m", m, v, "model") for m, v in {
        "nonfinite_rate": 0.0, "crps": 1.0, "crossing_rate": 0.0, "picp80": 0.8, "mpiw80": 1.0,
        "crpss_climatology": 0.1, "ic": ic, "ic_lo": lo, "ic_hi": hi, "y_std": 1.0}.items()]
    rows += [("test", "15m", "mpiw80", 1.0, "climatology"), ("test", "15m", "crps", 1.1, "climatology")]
    return pd.DataFrame(rows, columns=["split", "horizon", "metric", "value", "source"])


def test_leakage_gate_needs_an_ic_whose_whole_ci_is_beyond_the_threshold():
    noisy = E.check_gates(_gate_table(0.2, -0.05, 0.4))
    weak_real_signal = E.check_gates(_gate_table(0.11, 0.03, 0.18))  # seen on demo v2's val split at 2h
    real = E.check_gates(_gate_table(0.2, 0.15, 0.25))
    assert [f.gate for f in noisy] == [] and [f.gate for f in weak_real_signal] == []
    assert [f.gate for f in real] == ["leakage_ic"]
    assert "0.15..0.25" in real[0].reason
