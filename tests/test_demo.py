"""demo.py: the built-in synthetic NQ bars look like Globex data and record their ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nqexp.data import demo


@pytest.fixture(scope="module")
def year(demo_year):
    """About a year of demo bars: four rolls, a Thanksgiving and both DST changes (conftest's, shared)."""
    return demo_year


def eastern(ts) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(ts).tz_localize("UTC").tz_convert("America/New_York")


def test_bars_follow_the_globex_calendar(year):
    et = eastern(year.bars["ts"])
    assert not (et.day_of_week == 5).any(), "no bars on Saturday"
    assert not ((et.day_of_week == 6) & (et.hour < 18)).any(), "Sunday trading starts at 18:00 ET"
    assert not ((et.day_of_week == 4) & (et.hour >= 17)).any(), "Friday closes at 17:00 ET"
    assert not (et.hour == 17).any(), "nothing trades in the 17:00-18:00 ET maintenance break"


def test_christmas_is_closed_and_thanksgiving_friday_closes_early(year):
    et = eastern(year.bars["ts"])
    session_date = (et + pd.Timedelta(hours=6)).date  # the 18:00 ET open belongs to the next day
    assert pd.Timestamp("2024-12-25").date() not in set(session_date)
    friday = et[(et.month == 11) & (et.day == 29) & (et.year == 2024) & (et.hour < 17)]
    assert len(friday) > 0 and friday.max().time() < pd.Timestamp("13:15").time()


def test_prices_lie_on_the_quarter_tick_and_bars_are_consistent(year):
    px = year.bars[["open", "high", "low", "close"]].to_numpy()
    assert np.abs(4 * px - np.round(4 * px)).max() < 1e-6
    b = year.bars
    assert (b.high >= b[["open", "close"]].max(axis=1)).all() and (b.low <= b[["open", "close"]].min(axis=1)).all()
    assert (b.volume > 0).all() and b.ts.is_monotonic_increasing and not b.ts.duplicated().any()
    assert 1_000 < b.close.median() < 100_000  # NQ is in the thousands


def test_no_trade_minutes_are_missing_mostly_overnight(year):
    et = eastern(year.bars["ts"])
    gaps = np.diff(year.bars["ts"].to_numpy()).astype("timedelta64[m]").astype(int)
    missing = np.clip(gaps - 1, 0, None) * (gaps < 60)  # minutes skipped inside a session
    minute = np.asarray(et.hour * 60 + et.minute)[:-1]
    rth = (minute >= 570) & (minute < 960)
    assert missing.sum() > 100, "some minutes have no trades and no bar"
    share_rth = missing[rth].sum() / rth.sum()
    share_night = missing[~rth].sum() / (~rth).sum()
    assert share_night > 5 * share_rth, (share_night, share_rth)


def test_intraday_volatility_and_volume_are_u_shaped(year):
    et = eastern(year.bars["ts"])
    m = et.hour * 60 + et.minute
    sigma = pd.Series(year.truth["sigma"].to_numpy()).groupby(np.asarray(m)).mean()
    vol = pd.Series(year.bars["volume"].to_numpy()).groupby(np.asarray(m)).mean()
    open_, midday, close, night = 570, 12 * 60 + 30, 955, 3 * 60 - 30
    assert sigma[open_] > 1.5 * sigma[midday] and sigma[close] > sigma[midday] > sigma[night]
    assert vol[open_] > 2 * vol[midday] and vol[close] > vol[midday] > vol[night]


def test_volatility_clusters_and_returns_have_fat_tails(year):
    r = np.diff(np.log(year.truth["close_exact"].to_numpy()))
    same = year.truth["contract"].to_numpy()[1:] == year.truth["contract"].to_numpy()[:-1]
    r = r[same]
    z = r / year.truth["sigma"].to_numpy()[1:][same]
    excess_kurtosis = pd.Series(r).kurt()
    assert excess_kurtosis > 3, f"fat tails expected, got excess kurtosis {excess_kurtosis:.2f}"
    a = np.abs(r)
    lag1 = np.corrcoef(a[:-1], a[1:])[0, 1]
    assert lag1 > 0.1, f"|r| should be autocorrelated (clustering), got {lag1:.3f}"
    assert 0.9 < z.std() < 1.2, "sigma is the conditional sd of the 1-minute return"


def test_quarterly_contracts_are_spliced_unadjusted_at_each_roll(year):
    bars, rolls = year.bars, year.rolls
    assert len(rolls) == 4
    assert set(bars["contract"].str[2]) <= set("HMUZ")
    for _, roll in rolls.iterrows():
        i = int(np.flatnonzero(bars["ts"].to_numpy() == np.datetime64(roll.ts))[0])
        before, after = bars.iloc[i - 1], bars.iloc[i]
        assert (before.contract, after.contract) == (roll.from_contract, roll.to_contract)
        assert before.instrument_id != after.instrument_id
        # The splice jump is the calendar spread: the raw close-to-open change carries the ratio.
        spread = np.log(after.open / before.close)
        assert abs(spread - np.log(roll.ratio)) < 0.004, (spread, np.log(roll.ratio))
        assert roll.ratio != 1.0
        # Rolls happen 8 days before the third Friday of the expiring contract's month.
        assert pd.Timestamp(roll.ts).month in (3, 6, 9, 12)


def test_generation_is_deterministic_by_seed():
    a, b, c = demo.generate(days=5, seed=7), demo.generate(days=5, seed=7), demo.generate(days=5, seed=8)
    pd.testing.assert_frame_equal(a.bars, b.bars)
    assert not a.bars["close"].equals(c.bars["close"])


def test_demo_truth_is_stored_beside_the_bars(demo_con):
    n_bars, n_truth = demo_con.execute(
        "select (select count(*) from raw_bars where symbol='NQ.demo'), (select count(*) from demo_truth)"
    ).fetchall()[0]
    assert n_bars == n_truth > 20_000
    joined = demo_con.execute(
        "select count(*) from raw_bars r join demo_truth t using (symbol, ts) "
        "where abs(r.close - t.close_exact) <= 0.125 + 1e-9 and t.sigma > 0"
    ).fetchall()[0][0]
    assert joined == n_bars  # rounding moves a close by at most half a tick


def test_the_mean_reversion_is_learnable_but_weak(year):
    """The optimal forecast's IC (its mean from the true state at the origin) sits in 0.03-0.09 at
    15-60 minutes: room for a sequence model to learn, and never the |IC| > 0.1 the leakage gate flags."""
    from scipy.stats import spearmanr

    from nqexp.data import demo

    t = year.truth
    r = np.log(t["close_exact"].to_numpy())
    sigma, m = t["sigma"].to_numpy(), t["mr"].to_numpy()
    same = t["contract"].to_numpy()
    for h in (15, 30, 60, 240):                   # minutes (bars are 1-minute; gaps only shorten sums)
        idx = np.arange(0, len(r) - h - 1, 5)
        ok = same[idx] == same[idx + h]
        fwd = (r[idx + h] - r[idx])[ok]
        # E[y | state at t] = -kappa m_t sum_j sigma_{t+j} phi^(j-1); the sigma path stands in for its forecast.
        w = demo.MR_PHI ** np.arange(h)
        path = np.lib.stride_tricks.sliding_window_view(sigma[1:], h)[idx]  # (n, h) sigma_{t+1..t+h}
        expected = (-demo.MR_KAPPA * m[idx] * (path @ w))[ok]
        ic = spearmanr(expected, fwd).statistic
        assert ic < 0.1, f"oracle IC at {h}m is {ic:.3f}: strong enough to look like leakage"
        if h <= 60:
            assert 0.03 <= ic <= 0.09, f"oracle IC at {h}m is {ic:.3f}, outside the 0.03-0.09 the demo promises"


def test_volatility_has_a_leverage_effect_visible_in_the_bars(year):
    """Down-moves raise the next hour's realized volatility more than up-moves of the same size."""
    t = year.truth
    r = np.diff(np.log(t["close_exact"].to_numpy()))
    z = r / t["sigma"].to_numpy()[1:]
    nxt = np.sqrt(np.convolve(r**2, np.ones(60), "valid")[1:])  # realized vol of the next 60 minutes
    z = z[: nxt.size]
    big = np.abs(z) > 2
    down, up = nxt[big & (z < 0)].mean(), nxt[big & (z > 0)].mean()
    assert down > 1.03 * up, f"after |z| > 2 moves: next-hour vol {down:.3g} (down) vs {up:.3g} (up)"


def test_the_state_reproduces_sigma_and_the_oracle_is_calibrated(year):
    """sigma = BASE * tod * exp(h_slow + h_fast) exactly; the Monte Carlo oracle's paths from the
    stored state have the spread of the realized targets (z-scores with sd ~1, coverage ~80%)."""
    from nqexp.data import demo

    t = year.truth
    minute_et = demo.truth_minute_et(t)[t["k"].to_numpy()]
    rebuilt = demo.BASE_SIGMA * demo.tod_vol(minute_et) * np.exp(t["h_slow"] + t["h_fast"])
    np.testing.assert_allclose(rebuilt, t["sigma"], rtol=1e-9)
    rng = np.random.default_rng(0)
    origin = np.sort(rng.choice(np.arange(100, len(t) - 200), 300, replace=False))
    end = origin[:, None] + np.array([15, 60])[None, :]
    paths, mean = demo.oracle_paths(t, origin, end, n_paths=400, seed=1)  # (n, 2, M), (n, 2)
    r = np.log(t["close_exact"].to_numpy())
    y = r[end] - r[origin][:, None]
    same = t["contract"].to_numpy()[end] == t["contract"].to_numpy()[origin][:, None]
    np.testing.assert_allclose(mean, paths.mean(2), atol=3 * float(paths.std(2).max()) / np.sqrt(400))
    z = ((y - mean) / paths.std(2))[same]
    lo, hi = np.quantile(paths, 0.1, axis=2), np.quantile(paths, 0.9, axis=2)
    cover = ((y >= lo) & (y <= hi))[same].mean()
    assert 0.9 < z.std() < 1.12 and 0.74 < cover < 0.86, (z.std(), cover)
