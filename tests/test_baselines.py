"""Strong baselines (nqexp/evaluation/baselines.py): known parameters recovered, no look-ahead, no crossing."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from nqexp.evaluation import baselines

TAUS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
BARS_PER_SESSION = 276
ALPHA, BETA, NU = 0.08, 0.88, 6.0


@dataclasses.dataclass
class Arrays:
    """The FeatureArrays attributes the baselines read."""

    close: np.ndarray
    minute_of_day_et: np.ndarray
    session_date: np.ndarray
    X: np.ndarray
    names: list
    freq_minutes: int = 5
    horizons: tuple = (3, 6, 12, 24, 48)


def true_profile(slot: np.ndarray) -> np.ndarray:
    """A U-shaped diurnal variance profile over 5-minute ET slots (mean ~1 over a session)."""
    m = slot * 5.0
    rth = (m >= 570) & (m < 960)
    p = np.where(rth, 1.2 + 4.0 * np.exp(-(m - 570) / 30) + 2.0 * np.exp(-(960 - m) / 20), 0.4)
    return p / p.mean()


def simulate(n_sessions: int = 700, seed: int = 0):
    """5-minute bars from the MC-GARCH itself: daily AR(1) level x diurnal profile x GARCH(1,1)-t."""
    rng = np.random.default_rng(seed)
    n = n_sessions * BARS_PER_SESSION
    k = np.arange(n) % BARS_PER_SESSION
    minute = (18 * 60 + 5 * k) % 1440
    slot = minute // 5
    s = true_profile(np.arange(288))[slot]
    sess = np.arange(n) // BARS_PER_SESSION
    logh = np.zeros(n_sessions)
    for d in range(1, n_sessions):
        logh[d] = 0.97 * logh[d - 1] + 0.2 * rng.standard_normal()
    h = 1e-6 * np.exp(logh)[sess]
    e = rng.standard_t(NU, n) / np.sqrt(NU / (NU - 2))
    omega = 1 - ALPHA - BETA
    q = np.empty(n)
    z = np.empty(n)
    q[0] = 1.0
    for t in range(n):
        if t:
            q[t] = omega + ALPHA * z[t - 1] ** 2 + BETA * q[t - 1]
        z[t] = np.sqrt(q[t]) * e[t]
    r = np.sqrt(h * s) * z
    close = 15000 * np.exp(np.cumsum(r))
    dates = np.datetime64("2020-01-01") + sess.astype("timedelta64[D]")
    X = np.column_stack([close, r, np.abs(r)]).astype(np.float32)
    return Arrays(close=close, minute_of_day_et=minute.astype(np.int16), session_date=dates, X=X,
                  names=["close", "log_return", "abs_return"]), s


def targets(arrays, idx) -> np.ndarray:
    logc = np.log(arrays.close)
    return np.stack([logc[idx + h] - logc[idx] for h in arrays.horizons], axis=1)  # (n, H)


@pytest.fixture(scope="module")
def sim():
    return simulate()


def test_mcgarch_recovers_the_garch_parameters_and_the_diurnal_profile(sim):
    arrays, s = sim
    n = len(arrays.close)
    hi = int(0.7 * n)
    g = baselines.MCGarch().fit(arrays, 0, hi)
    assert abs(g.alpha - ALPHA) < 0.03 and abs(g.beta - BETA) < 0.05, (g.alpha, g.beta)
    assert abs(g.omega / (1 - g.alpha - g.beta) - 1) < 0.25, "q should have unit mean"
    assert 4 < g.nu < 10, g.nu
    slot = (arrays.minute_of_day_et // 5).astype(int)
    assert np.corrcoef(g.profile[slot[:hi]], s[:hi])[0, 1] > 0.95
    # The horizon sd forecast is calibrated out of sample: y / sigma has sd ~1 at every horizon.
    idx = np.arange(hi + 100, n - 60, 3)
    ratio = np.std(targets(arrays, idx) / g.sigma(arrays, idx), axis=0)
    assert np.all((ratio > 0.9) & (ratio < 1.1)), ratio


def test_mcgarch_beats_a_constant_scale_where_volatility_clusters(sim):
    """QLIKE of the 15-minute variance forecast: the GARCH beats the same model without q."""
    arrays, _ = sim
    n = len(arrays.close)
    hi = int(0.7 * n)
    g = baselines.MCGarch().fit(arrays, 0, hi)
    idx = np.arange(hi + 100, n - 60, 3)
    y2 = targets(arrays, idx)[:, 0] ** 2
    v = g.sigma(arrays, idx)[:, 0] ** 2
    flat = copy.copy(g)
    flat.alpha, flat.beta, flat.omega = 0.0, 0.0, 1.0
    v0 = flat.sigma(arrays, idx)[:, 0] ** 2
    qlike = lambda var: float(np.mean(y2 / var + np.log(var)))  # noqa: E731
    assert qlike(v) < qlike(v0) - 0.02, (qlike(v), qlike(v0))


def test_baselines_never_read_the_test_bars_and_never_cross(sim):
    """Changing every bar after the val split leaves both fits, and every train/val forecast, bit-identical."""
    arrays, _ = sim
    n = len(arrays.close)
    split = {"train": np.arange(300, 60_000, 12), "val": np.arange(60_300, 80_000, 12),
             "test": np.arange(80_300, n - 60, 12)}
    y = {k: targets(arrays, v) for k, v in split.items()}
    scales = {k: np.full((len(v), 5), 1e-3) * np.sqrt(np.array(arrays.horizons) / 3.0) for k, v in split.items()}
    kwargs = dict(split_idx=split, model_scale=scales, ewma_scale=scales, targets=y, taus=TAUS,
                  lgbm={"max_rounds": 60, "learning_rate": 0.2})
    a = baselines.fit_and_predict(arrays, **kwargs)
    changed = dataclasses.replace(arrays, close=arrays.close.copy(), X=arrays.X.copy())
    rng = np.random.default_rng(9)
    changed.close[80_100:] *= np.exp(np.cumsum(rng.standard_normal(n - 80_100) * 3e-3))
    changed.X[80_100:] = rng.standard_normal(changed.X[80_100:].shape)
    y2 = dict(y, test=targets(changed, split["test"]))
    b = baselines.fit_and_predict(changed, **dict(kwargs, targets=y2))
    for name in baselines.BASELINES:
        for s in ("train", "val"):
            np.testing.assert_array_equal(a[s][name], b[s][name], err_msg=f"{name} {s}")
        for s in split:
            q = a[s][name]
            assert q.shape == (len(split[s]), 5, len(TAUS))
            assert np.isfinite(q).all() and (np.diff(q, axis=2) >= 0).all(), f"{name} {s} crosses"


def test_lgbm_learns_a_known_conditional_quantile_structure():
    """z = 0.5 x1 + (1 + |x2|) e: the median tracks 0.5 x1 and the 80% interval covers ~80% out of sample."""
    rng = np.random.default_rng(0)
    n = 30_000
    X = rng.standard_normal((n, 3))
    z = 0.5 * X[:, 0] + (1 + np.abs(X[:, 1])) * rng.standard_normal(n)
    Z = z[:, None]  # one "horizon"
    m = baselines.LGBMQuantiles(TAUS, max_rounds=150, learning_rate=0.1).fit(X[:20_000], Z[:20_000], X[20_000:25_000],
                                                                           Z[20_000:25_000])
    q = m.quantiles(X[25_000:], np.ones((5_000, 1)))  # (n, H, Q)
    med = q[:, 0, 3]
    assert np.corrcoef(med, 0.5 * X[25_000:, 0])[0, 1] > 0.9
    cover = np.mean((z[25_000:] >= q[:, 0, 1]) & (z[25_000:] <= q[:, 0, 5]))
    assert 0.76 < cover < 0.84, cover
    width = q[:, 0, 5] - q[:, 0, 1]
    assert np.corrcoef(width, np.abs(X[25_000:, 1]))[0, 1] > 0.7
    assert (np.diff(q, axis=2) >= 0).all()


def test_lgbm_on_too_few_samples_shrinks_its_leaves_and_says_so():
    """186 train samples cannot split at min_data_in_leaf 200: the booster would be a constant (the
    MC-GARCH baseline again). It is fitted with smaller leaves instead, learns, and leaves a note."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 2))
    z = (2.0 * X[:, 0] + 0.3 * rng.standard_normal(400))[:, None]
    m = baselines.LGBMQuantiles(TAUS).fit(X[:186], z[:186], X[186:250], z[186:250])
    assert m.note == "lgbm: 186 train samples < 800 (4 x min_data_in_leaf 200), fitted with min_data_in_leaf=18"
    med = m.quantiles(X[250:], np.ones((150, 1)))[:, 0, 3]
    assert np.corrcoef(med, X[250:, 0])[0, 1] > 0.8                     # it split: not a constant
    Xb = rng.standard_normal((1000, 2))
    big = baselines.LGBMQuantiles(TAUS, max_rounds=5).fit(Xb, Xb[:, :1], Xb[:50], Xb[:50, :1])
    assert big.note == ""                                                 # 1000 rows: fitted as specified
