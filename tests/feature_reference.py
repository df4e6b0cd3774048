"""Independent pandas/numpy reference for the migt24 and grok24 feature sets and their targets.

Written from docs/features.md §2-§3 alone (not from the SQL), so tests/test_features.py can check every SQL
feature against it. Conventions both sides must share are stated once, here:
  * windows need n non-NaN inputs (pandas rolling(min_periods=n));
  * EMA / Wilder averages are pandas ewm(span=n | alpha=1/n, adjust=False, ignore_na=True);
  * Bollinger sd is the population sd (ddof=0); realized_vol uses the sample sd (ddof=1);
  * the grok24 VWAP resets at the first RTH bar of each session_date and accumulates from the
    first bar before the first reset;
  * point in time (§13): a price in points is the raw contract close (`raw_close`), and a comparison
    of two prices (DM up- vs down-move, a typical price's rise or fall, sd or MAD = 0) treats a
    difference within TIE = 1e-9 of the close (of the window mean for sd and MAD) as a tie.

Also holds `build_test_bars`, a crude stand-in for nqexp.data.bars.build_bars (used only while that
module does not exist): it fills bars_1m / bars_5m from raw_bars with the contract schema.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FLAG_SESSION, FLAG_WEEKEND, FLAG_ROLL = 1, 2, 4
ANNUALIZE_1M = np.sqrt(252 * 390)
TIE = 1e-9            # relative: price differences this small are ties (docs/features.md §13)


# ---------------------------------------------------------------------------------------------
# Bars (test-only stand-in for nqexp.data.bars)
# ---------------------------------------------------------------------------------------------

_BARS_1M = """
insert into bars_1m by name
with raw as (
    select
        symbol, ts, open, high, low, close, volume, instrument_id, contract,
        timezone('America/New_York', ts::timestamptz) as ts_et,
        lag(instrument_id) over (order by ts) as prev_instrument_id,
        lag(close) over (order by ts) as prev_raw_close,
        lag(ts) over (order by ts) as prev_ts,
    from raw_bars
    where symbol = $symbol
),
rolled as (
    select
        *,
        coalesce(instrument_id <> prev_instrument_id, false) as roll_flag,
        case when coalesce(instrument_id <> prev_instrument_id, false) then open / prev_raw_close else 1.0 end as ratio,
        case when hour(ts_et) >= 18 then ts_et::date + 1 else ts_et::date end as session_date,
    from raw
),
adjusted as (
    select
        *,
        exp(coalesce(sum(ln(ratio)) over (order by ts desc rows between unbounded preceding and 1 preceding), 0.0)) as adj_factor,
        lag(session_date) over (order by ts) as prev_session_date,
    from rolled
)
select
    symbol, ts,
    open * adj_factor as open, high * adj_factor as high, low * adj_factor as low, close * adj_factor as close,
    volume, close as raw_close, adj_factor, contract, instrument_id, session_date,
    (hour(ts_et) * 60 + minute(ts_et))::smallint as minute_of_day_et,
    (hour(ts_et) * 60 + minute(ts_et)) between 570 and 959 as is_rth,
    epoch(ts - prev_ts) / 60.0 as minutes_since_prev,
    coalesce(session_date <> prev_session_date, true) as is_session_start,
    coalesce(epoch(ts - prev_ts) / 60.0 > 15 and session_date = prev_session_date, false) as gap_flag,
    roll_flag,
    false as outlier_flag,
from adjusted
order by ts
"""

_BARS_5M = """
insert into bars_5m by name
with buckets as (
    select
        symbol,
        time_bucket(interval 5 minutes, ts) as ts,
        arg_min(open, ts) as open, max(high) as high, min(low) as low, arg_max(close, ts) as close,
        sum(volume)::bigint as volume, arg_max(raw_close, ts) as raw_close, arg_max(adj_factor, ts) as adj_factor,
        arg_max(contract, ts) as contract, arg_max(instrument_id, ts) as instrument_id,
        min(session_date) as session_date, bool_or(roll_flag) as roll_flag, bool_or(outlier_flag) as outlier_flag,
        count(*)::int as n_bars,
    from bars_1m
    where symbol = $symbol
    group by all
),
timed as (
    select
        *,
        timezone('America/New_York', ts::timestamptz) as ts_et,
        epoch(ts - lag(ts) over (order by ts)) / 60.0 as minutes_since_prev,
        lag(session_date) over (order by ts) as prev_session_date,
    from buckets
)
select
    symbol, ts, open, high, low, close, volume, raw_close, adj_factor, contract, instrument_id, session_date,
    (hour(ts_et) * 60 + minute(ts_et))::smallint as minute_of_day_et,
    (hour(ts_et) * 60 + minute(ts_et)) between 570 and 959 as is_rth,
    minutes_since_prev,
    coalesce(session_date <> prev_session_date, true) as is_session_start,
    coalesce(minutes_since_prev > 15 and session_date = prev_session_date, false) as gap_flag,
    roll_flag, outlier_flag, n_bars,
from timed
order by ts
"""


def build_test_bars(con, symbol: str) -> None:
    """Fill bars_1m and bars_5m for `symbol` from raw_bars (crudely: roll ratio = open/prev close)."""
    for table, sql in (("bars_1m", _BARS_1M), ("bars_5m", _BARS_5M)):
        con.execute(f"delete from {table} where symbol = ?", [symbol])
        con.execute(sql, {"symbol": symbol})


def build_bars(con, symbol: str, *, stand_in: bool = False) -> None:
    """nqexp.data.bars.build_bars when it exists (and `stand_in` is False), else the stand-in above."""
    try:
        from nqexp.data.bars import build_bars as real
    except ImportError:
        real = None
    if real is None or stand_in:
        build_test_bars(con, symbol)
    else:
        real(con, symbol)


def load_bars(con, table: str, symbol: str, until=None) -> pd.DataFrame:
    df = con.execute(
        f"select * from {table} where symbol = ? and (? is null or ts <= ?) order by ts",
        [symbol, until, until],
    ).df()
    return df.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------

def ema(x: pd.Series, span: int) -> pd.Series:
    return x.ewm(span=span, adjust=False, ignore_na=True).mean()


def wilder(x: pd.Series, n: int) -> pd.Series:
    return x.ewm(alpha=1.0 / n, adjust=False, ignore_na=True).mean()


def true_range(df: pd.DataFrame) -> pd.Series:
    pc = df["close"].shift(1)
    tr = np.maximum(df["high"] - df["low"], np.maximum((df["high"] - pc).abs(), (df["low"] - pc).abs()))
    return tr.where(pc.notna())


def rsi(close: pd.Series, n: int = 14) -> pd.Series:
    d = close.diff()
    g, l = wilder(d.clip(lower=0), n), wilder((-d).clip(lower=0), n)
    return 100 - 100 / (1 + g / l)


# ---------------------------------------------------------------------------------------------
# migt24
# ---------------------------------------------------------------------------------------------

def migt24(df: pd.DataFrame) -> pd.DataFrame:
    o, h, l, c = df["open"], df["high"], df["low"], df["close"]
    v = df["volume"].astype(float)
    r = np.log(c).diff()
    pc = c.shift(1)
    e = {n: ema(c, n) for n in (9, 12, 21, 26, 50)}
    out = {
        "migt_bar_open": np.log(o / pc), "migt_bar_high": np.log(h / pc), "migt_bar_low": np.log(l / pc),
        "migt_bar_close": np.log(c / c.rolling(144, min_periods=144).mean()),
        "migt_bar_log_volume": np.log(v + 1),
        "migt_bar_log_return": r,
        "migt_vol_gk_volatility": 0.5 * (np.log(h) - np.log(l)) ** 2 - (2 * np.log(2) - 1) * (np.log(c) - np.log(o)) ** 2,
        "migt_vol_rv_12": np.sqrt((r**2).rolling(12, min_periods=12).sum()),
        "migt_vol_rv_36": np.sqrt((r**2).rolling(36, min_periods=36).sum()),
        "migt_vol_rv_72": np.sqrt((r**2).rolling(72, min_periods=72).sum()),
        "migt_liq_amihud_illiq": r.abs() / (df["raw_close"] * v),
        "migt_mom_rsi_14": rsi(c),
        "migt_trend_macd": (e[12] - e[26]) / c,
        "migt_mom_roc_5": c.pct_change(5, fill_method=None),
        "migt_mom_roc_10": c.pct_change(10, fill_method=None),
        "migt_mom_roc_20": c.pct_change(20, fill_method=None),
        "migt_trend_ema_slope_9": e[9].diff() / c,
        "migt_trend_ema_slope_21": e[21].diff() / c,
        "migt_trend_ema_slope_50": e[50].diff() / c,
        "migt_trend_ema_dev_9": c / e[9] - 1,
        "migt_trend_ema_dev_21": c / e[21] - 1,
        "migt_trend_ema_dev_50": c / e[50] - 1,
        "migt_vol_atr_14": true_range(df).rolling(14, min_periods=14).mean() / c,
        "migt_liq_volume_ma_ratio": v / v.rolling(20, min_periods=20).mean(),
    }
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------
# grok24
# ---------------------------------------------------------------------------------------------

def _mean_abs_dev(x: np.ndarray, n: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    if len(x) >= n:
        w = np.lib.stride_tricks.sliding_window_view(x, n)                # (N-n+1, n)
        out[n - 1:] = np.abs(w - w.mean(axis=1, keepdims=True)).mean(axis=1)
    return out


def _rolling_std(x: np.ndarray, n: int, ddof: int) -> np.ndarray:
    """Two-pass std of each full n-window (pandas' online rolling std loses ~1e-9 at price levels)."""
    out = np.full(len(x), np.nan)
    if len(x) >= n:
        w = np.lib.stride_tricks.sliding_window_view(x, n)                # (N-n+1, n)
        out[n - 1:] = np.sqrt(((w - w.mean(axis=1, keepdims=True)) ** 2).sum(axis=1) / (n - ddof))
    return out


def grok24(df: pd.DataFrame) -> pd.DataFrame:
    o, h, l, c = df["open"], df["high"], df["low"], df["close"]
    v = df["volume"].astype(float)
    r = np.log(c / c.shift(1))
    tp = (h + l + c) / 3

    # VWAP anchored at the first RTH bar of each session_date.
    prev_rth = df["is_rth"].shift(1, fill_value=False).astype(bool)
    same_day = df["session_date"].eq(df["session_date"].shift(1))
    rth_open = df["is_rth"].astype(bool) & ~(prev_rth & same_day)
    anchor = rth_open.cumsum()
    vwap = (tp * v).groupby(anchor).cumsum() / v.groupby(anchor).cumsum()

    macd = ema(c, 12) - ema(c, 26)
    sma = {n: c.rolling(n, min_periods=n).mean() for n in (20, 50, 200)}

    # DMI / ADX (Wilder, 14); moves within TIE x close of each other (or of 0) are ties.
    up, down = h.diff(), -l.diff()
    tie = TIE * c
    plus_dm = pd.Series(np.where((up - down > tie) & (up > tie), up, 0.0), index=df.index).where(up.notna())
    minus_dm = pd.Series(np.where((down - up > tie) & (down > tie), down, 0.0), index=df.index).where(down.notna())
    atr = wilder(true_range(df), 14)
    plus_di = 100 * wilder(plus_dm, 14) / atr
    minus_di = 100 * wilder(minus_dm, 14) / atr
    dx = 100 * (plus_di - minus_di).abs() / (plus_di + minus_di)
    adx = wilder(dx, 14)

    tp_sma = tp.rolling(20, min_periods=20).mean()
    mad = pd.Series(_mean_abs_dev(tp.to_numpy(), 20), index=df.index)
    cci = ((tp - tp_sma) / (0.015 * mad)).where(mad > TIE * tp_sma)

    mid = c.rolling(20, min_periods=20).mean()
    sd = pd.Series(_rolling_std(c.to_numpy(float), 20, ddof=0), index=df.index)
    upper, lower = mid + 2 * sd, mid - 2 * sd
    pct_b = ((c - lower) / (upper - lower)).where(sd > TIE * mid)

    flow = tp * v
    d_tp = tp.diff()
    pos = flow.where(d_tp > tie, 0.0).where(d_tp.notna())
    neg = flow.where(d_tp < -tie, 0.0).where(d_tp.notna())
    pos14, neg14 = pos.rolling(14, min_periods=14).sum(), neg.rolling(14, min_periods=14).sum()
    mfi = 100 * pos14 / (pos14 + neg14)

    dt = df["minutes_since_prev"].astype(float)
    out = {
        "grok_price_log_return": r,
        "grok_price_hl_range": (h - l) / c,
        "grok_price_close_location": pd.Series(np.where(h > l, (c - l) / (h - l).where(h > l), 0.5), index=df.index),
        "grok_price_open_return": np.log(c / o),
        "grok_volume_log_volume": np.log1p(v),
        "grok_volume_log_volume_diff": np.log1p(v).diff(),
        "grok_volume_dollar_volume": np.log1p(df["raw_close"] * v),
        "grok_trend_vwap_deviation": (c - vwap) / c,
        "grok_trend_macd_histogram": (macd - ema(macd, 9)) / c,
        "grok_trend_sma_20_dev": np.log(c / sma[20]),
        "grok_trend_sma_50_dev": np.log(c / sma[50]),
        "grok_trend_sma_200_dev": np.log(c / sma[200]),
        "grok_momentum_rsi_norm": (rsi(c) - 50) / 50,
        "grok_momentum_cci": cci / 100,
        "grok_momentum_plus_di": plus_di / 100,
        "grok_momentum_minus_di": minus_di / 100,
        "grok_momentum_adx": adx / 100,
        "grok_momentum_roc_norm": c / c.shift(10) - 1,
        "grok_volatility_atr_norm": atr / c,
        "grok_volatility_bb_pct_b": pct_b,
        "grok_volatility_bb_bandwidth": (upper - lower) / mid,
        "grok_volatility_realized_vol": pd.Series(_rolling_std(r.to_numpy(float), 20, ddof=1), index=df.index) * ANNUALIZE_1M,
        "grok_flow_mfi_norm": (mfi - 50) / 50,
        "grok_flow_time_gap": np.log1p(np.maximum(dt - 1, 0)).where(dt.notna()),
    }
    return pd.DataFrame(out)


REFERENCES = {"migt24": migt24, "grok24": grok24}


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------

def targets(df: pd.DataFrame, horizons, long_break_minutes: float = 240.0) -> tuple[np.ndarray, np.ndarray]:
    """Forward log-returns (N, H) and flags (N, H), marking the targets each event bar falls inside."""
    close = df["close"].to_numpy(float)
    sess_start = df["is_session_start"].to_numpy(bool)
    long_gap = (df["minutes_since_prev"].fillna(0).to_numpy(float) > long_break_minutes)
    roll = df["roll_flag"].to_numpy(bool)
    n, H = len(df), len(horizons)
    y = np.full((n, H), np.nan)
    f = np.zeros((n, H), dtype=np.uint8)
    for k, h in enumerate(horizons):
        y[: n - h, k] = np.log(close[h:] / close[: n - h]) if h < n else np.nan
        # A target from t covers the bars entered after t up to t+h: an event at bar e is
        # crossed by the targets starting at t = e-h .. e-1 (and only those whose end exists).
        for bit, events in ((FLAG_SESSION, sess_start), (FLAG_WEEKEND, long_gap), (FLAG_ROLL, roll)):
            for e in np.flatnonzero(events):
                if e > 0:
                    f[max(e - h, 0): min(e, n - h), k] |= bit
    return y, f


def pandas_pipeline(df: pd.DataFrame, set_name: str, horizons) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized pandas features + targets (the benchmark's reference): X (N, V), y (N, H), flags (N, H)."""
    X = REFERENCES[set_name](df).to_numpy(np.float64)
    lc = np.log(df["close"].to_numpy(float))
    counters = [np.cumsum(df["is_session_start"].to_numpy(bool)),
                np.cumsum(df["minutes_since_prev"].fillna(0).to_numpy(float) > 240.0),
                np.cumsum(df["roll_flag"].to_numpy(bool))]
    n = len(df)
    y = np.full((n, len(horizons)), np.nan)
    fl = np.zeros((n, len(horizons)), dtype=np.uint8)
    for k, h in enumerate(horizons):
        y[: n - h, k] = lc[h:] - lc[: n - h]
        for bit, cnt in zip((1, 2, 4), counters):
            fl[: n - h, k] |= (cnt[h:] != cnt[: n - h]).astype(np.uint8) * bit
    return X, y, fl
