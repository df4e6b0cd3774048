"""recalibrate.py: conformal offsets restore coverage, the median shrinks when it is noise and stays
when it is signal, nothing crosses, and the val metrics are cross-fitted (out of sample)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from nqexp.errors import DataError
from nqexp.evaluation.recalibrate import Recalibration, cross_fit, fit, tod_buckets
from nqexp.metrics import crps_quantile

TAUS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
Z = norm.ppf(TAUS)


def sample(n, seed, *, width=1.0, signal=0.0, noise_median=0.0, H=2):
    """y = sigma * (signal * s + e); the forecast's median is signal * s + noise_median * u, width `width`."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(-7, 0.3, (n, H)))  # (n, H) sigma-hat, about 1e-3
    s, u, e = (rng.standard_normal((n, H)) for _ in range(3))
    y = scale * (signal * s + e)
    med = signal * s + noise_median * u  # (n, H) in sigma units
    q = scale[..., None] * (med[..., None] + width * Z)  # (n, H, Q)
    return q, y, scale, np.arange(n).astype("datetime64[m]")


def picp80(q, y):
    return float(((y >= q[..., 1]) & (y <= q[..., 5])).mean())


def test_conformal_offsets_restore_the_coverage_of_a_too_wide_forecast_out_of_sample():
    q, y, scale, _ = sample(20_000, 0, width=1.5)
    recal = fit(q, y, scale, TAUS, method="conformal", median_shrink=False)
    q2, y2, scale2, _ = sample(20_000, 1, width=1.5)
    out = recal.apply(q2, scale2)
    assert picp80(q2, y2) > 0.9  # the raw forecast over-covers
    assert 0.78 <= picp80(out, y2) <= 0.82
    assert (np.diff(out, axis=-1) >= 0).all()  # never crosses
    before = crps_quantile(y2[:, 0], q2[:, 0], TAUS).mean()
    after = crps_quantile(y2[:, 0], out[:, 0], TAUS).mean()
    assert after < before


def test_a_median_that_is_noise_is_shrunk_and_one_that_is_signal_is_kept():
    noisy = fit(*sample(20_000, 2, noise_median=0.3)[:3], TAUS, method="none", median_shrink=True)
    assert (noisy.shrink <= 0.15).all(), noisy.shrink
    q, y, scale, _ = sample(20_000, 3, noise_median=0.3)
    assert crps_quantile(y[:, 1], noisy.apply(q, scale)[:, 1], TAUS).mean() < crps_quantile(y[:, 1], q[:, 1], TAUS).mean()
    honest = fit(*sample(20_000, 4, signal=0.3)[:3], TAUS, method="none", median_shrink=True)
    assert (honest.shrink >= 0.85).all(), honest.shrink


def test_none_is_the_identity_and_the_state_round_trips():
    q, y, scale, _ = sample(500, 5)
    none = fit(q, y, scale, TAUS, method="none", median_shrink=False)
    assert none.identity and np.array_equal(none.apply(q, scale), q)
    both = fit(q, y, scale, TAUS, method="conformal", median_shrink=True)
    again = Recalibration.from_state(both.to_state())
    assert np.array_equal(again.apply(q, scale), both.apply(q, scale))
    with pytest.raises(DataError, match="not one nqexp wrote"):
        Recalibration.from_state({**both.to_state(), "shrink": [2.0, 0.5]})
    with pytest.raises(DataError, match="symmetric"):
        fit(q[..., :6], y, scale, TAUS[:6], method="conformal", median_shrink=False)


def test_cross_fit_scores_each_half_of_val_with_the_other_halfs_fit():
    q, y, scale, ts = sample(4_000, 6, width=1.4)
    out = cross_fit(q, y, scale, ts, TAUS, method="conformal", median_shrink=True)
    changed = y.copy()
    changed[2000:] *= 3  # the second half's outcomes enter only the first half's recalibration
    again = cross_fit(q, changed, scale, ts, TAUS, method="conformal", median_shrink=True)
    assert np.array_equal(out[2000:], again[2000:])
    assert not np.array_equal(out[:2000], again[:2000])


def by_time_of_day(n, seed):
    """Origins every 5 minutes; the forecast is too narrow in the New York morning (06:00-12:00), too wide
    the rest of the day, so pooled offsets over-cover one and under-cover the other."""
    q, y, scale, _ = sample(n, seed)
    ts = np.datetime64("2025-03-03T00:00") + 5 * np.arange(n).astype("timedelta64[m]")  # naive UTC
    morning = tod_buckets(ts, 4) == 1  # (n,) 06:00-12:00 New York time
    y = y * np.where(morning, 1.6, 0.8)[:, None]
    return q, y, scale, ts, morning


def test_time_of_day_buckets_restore_the_coverage_of_each_part_of_the_day():
    q, y, scale, ts, _ = by_time_of_day(40_000, 7)
    pooled = fit(q, y, scale, TAUS, method="conformal", median_shrink=False)
    bucketed = fit(q, y, scale, TAUS, method="conformal", median_shrink=False, ts=ts, n_buckets=4)
    q2, y2, scale2, ts2, morning = by_time_of_day(40_000, 8)
    flat, tod = pooled.apply(q2, scale2), bucketed.apply(q2, scale2, ts2)
    assert picp80(flat[morning], y2[morning]) < 0.7 and picp80(flat[~morning], y2[~morning]) > 0.85
    for part in (morning, ~morning):
        assert 0.78 <= picp80(tod[part], y2[part]) <= 0.82
    assert (np.diff(tod, axis=-1) >= 0).all()
    # The state keeps the buckets, applying them needs the times, and a (H, Q) state of before is one bucket.
    again = Recalibration.from_state(bucketed.to_state())
    assert np.array_equal(again.apply(q2, scale2, ts2), tod)
    with pytest.raises(ValueError, match="needs the origin times"):
        bucketed.apply(q2, scale2)
    old = {**pooled.to_state(), "offset": pooled.offset[0].tolist()}
    assert np.array_equal(Recalibration.from_state(old).apply(q2, scale2), flat)
    # A damaged state (too many buckets, an offset of the wrong rank) is refused, not applied.
    for offset in (np.zeros((25, 2, 7)).tolist(), np.zeros((1, 1, 2, 7)).tolist()):
        with pytest.raises(DataError, match="not one nqexp wrote"):
            Recalibration.from_state({**bucketed.to_state(), "offset": offset})


def test_tod_buckets_follow_the_new_york_clock_across_daylight_saving():
    utc = np.array(["2025-01-15T11:00", "2025-07-15T11:00", "2025-07-15T03:59"], dtype="datetime64[m]")
    # 06:00 EST, 07:00 EDT, 23:59 EDT: with 4 buckets of 6 hours, 1, 1 and 3.
    assert tod_buckets(utc, 4).tolist() == [1, 1, 3]
    assert tod_buckets(utc, 24).tolist() == [6, 7, 23]


def test_buckets_without_conformal_offsets_are_a_spec_error():
    from nqexp.errors import SpecError
    from nqexp.evaluation.evaluate import EvalConfig

    with pytest.raises(SpecError, match="set eval.recalibrate: conformal"):
        EvalConfig(recalibrate_tod_buckets=4)
    with pytest.raises(SpecError, match=r"recalibrate_tod_buckets \(25\) must be in 1..24"):
        EvalConfig(recalibrate="conformal", recalibrate_tod_buckets=25)
    assert EvalConfig(recalibrate="conformal", recalibrate_tod_buckets=4).recalibrate_tod_buckets == 4
