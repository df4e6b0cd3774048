"""recalibrate.py: conformal offsets restore coverage, the median shrinks when it is noise and stays
when it is signal, nothing crosses, and the val metrics are cross-fitted (out of sample)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from nqexp.errors import DataError
from nqexp.evaluation.recalibrate import Recalibration, cross_fit, fit
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
