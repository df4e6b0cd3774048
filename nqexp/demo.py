"""Built-in demo data: realistic synthetic NQ 1-minute bars with a known answer.

There is no network at run time, so nqexp ships this generator as its default data source.
It is deterministic given (seed, start, end) and records its ground truth, so later stages
can prove they learned something real.

The model of the world, in order:

* **Calendar.** CME Globex: each trading date D (Mon-Fri) is a session from 18:00 ET on the
  previous calendar day to 17:00 ET on D, i.e. Sunday 18:00 to Friday 17:00 with a daily
  17:00-18:00 ET maintenance break. Sessions whose date is New Year's Day, Independence Day
  or Christmas (moved to the nearest weekday when on a weekend) are closed. Thanksgiving
  Thursday halts at 13:00 ET and the Friday after closes early at 13:15 ET. DST changes
  happen at 02:00 on Sundays while the market is closed, so within a session minute k is
  always 18:00 ET + k minutes.
* **Volatility.** sigma_t = base * tod(m) * exp(h_slow + h_fast), where tod(m) is a U-shaped
  time-of-day profile (quiet overnight, a bump at the 08:30 ET data releases, a high open at
  09:30 decaying to a midday low, a rise into the 16:00 close) normalised to mean 1, and
  h_slow (half-life ~3 trading days, sd 0.35) and h_fast (half-life ~40 min, sd 0.25) are
  AR(1) log-volatility factors. Stochastic volatility gives the clustering GARCH gives, and
  its latent sigma_t is exactly the true conditional volatility stored in `demo_truth`.
* **Returns.** r_t = drift_t + sigma_t * e_t with e_t Student-t(4) scaled to unit variance
  (fat tails). The weak predictable component is drift_t = KAPPA * sigma_t * f_t where f_t
  is a unit-variance AR(1) factor with a 30-minute half-life (phi = 0.5**(1/30)): a slow drift
  that past returns reveal only faintly. Summed over a long horizon its variance grows like
  KAPPA^2 (1 + phi) / (1 - phi) ~ 87.6 KAPPA^2 of the noise's, so KAPPA = 0.005 caps what even an
  oracle that knew f could explain at 0.2% of the variance (IC <= 0.05 at any horizon); a model
  inferring f from past returns finds less, never the |IC| > 0.1 that signals leakage.
  (KAPPA was 0.05 at first, which made the 4-hour oracle IC about 0.42: far from weak.)
* **Contracts.** Quarterly H/M/U/Z contracts expire on the third Friday of their month.
  Contract price F = S * exp(c * tau), with S the underlying, tau the years to expiry and c
  a carry rate set per expiry year (slightly negative before 2016, near zero in 2020-2021, ~5% in 2023-2024),
  so the next contract trades at a premium: the calendar spread. The series rolls to the
  next contract at the session of the Thursday eight days before expiry (as volume does)
  and is **spliced unadjusted**: each roll leaves a jump of about the calendar spread.
  Every bar carries its contract code (CME style 'NQZ3') and a stable instrument_id.
* **Bars.** Prices lie on the 0.25 tick: open/close are the exact path at the minute's
  boundaries rounded to the tick, high/low extend them by half-normal excursions. Volume is
  a negative-binomial draw whose mean follows its own U-shape and the current volatility;
  a minute with zero volume has no trades and is **absent**, as in vendor data.

Ground truth written next to the bars: `demo_truth` (sigma, drift and the unrounded close of
every bar) and `demo_rolls` (each roll's time and exact price ratio F_new / F_old).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DEMO_SYMBOL = "NQ.demo"
TICK = 0.25
DEFAULT_END = dt.date(2025, 12, 3)
MONTH_CODES = {3: "H", 6: "M", 9: "U", 12: "Z"}
KAPPA = 0.005                # weight of the predictable factor in 1-minute returns (oracle IC <= 0.05)
ANNUAL_VOL = 0.22            # target unconditional annualised volatility of the underlying
ANNUAL_DRIFT = 0.16          # log-drift per year, roughly NQ's 1800 -> 21000 over 2010-2025
SESSION_MINUTES = 23 * 60    # 18:00 ET to 17:00 ET next day
MINUTES_PER_YEAR = 252 * SESSION_MINUTES


@dataclass
class DemoData:
    bars: pd.DataFrame       # raw_bars columns: symbol, ts, open, high, low, close, volume, instrument_id, contract
    truth: pd.DataFrame      # demo_truth columns: symbol, ts, contract, sigma, drift, close_exact
    rolls: pd.DataFrame      # demo_rolls columns: symbol, ts, from_contract, to_contract, ratio
    seconds: float


def third_friday(year: int, month: int) -> dt.date:
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14)


def contract_code(year: int, month: int) -> str:
    return f"NQ{MONTH_CODES[month]}{year % 10}"


def _observed(day: dt.date) -> dt.date:
    """A holiday on Saturday is observed on Friday, on Sunday on Monday."""
    if day.weekday() == 5:
        return day - dt.timedelta(days=1)
    if day.weekday() == 6:
        return day + dt.timedelta(days=1)
    return day


def _holidays(years: range) -> set[dt.date]:
    out = set()
    for y in years:
        for m, d in ((1, 1), (7, 4), (12, 25)):
            out.add(_observed(dt.date(y, m, d)))
    return out


def _thanksgiving(year: int) -> dt.date:
    first = dt.date(year, 11, 1)
    return first + dt.timedelta(days=(3 - first.weekday()) % 7 + 21)


def session_table(start: dt.date, end: dt.date) -> pd.DataFrame:
    """One row per Globex session with trading date in [start, end]: date, open/close in UTC, minutes."""
    years = range(start.year - 1, end.year + 2)
    closed = _holidays(years)
    early = {}
    for y in years:
        tg = _thanksgiving(y)
        early[tg] = dt.time(13, 0)
        early[tg + dt.timedelta(days=1)] = dt.time(13, 15)
    dates = [d.date() for d in pd.bdate_range(start, end)]
    dates = [d for d in dates if d not in closed]
    opens = pd.DatetimeIndex([pd.Timestamp(d - dt.timedelta(days=1)) + pd.Timedelta(hours=18) for d in dates])
    closes = pd.DatetimeIndex(
        [pd.Timestamp.combine(d, early.get(d, dt.time(17, 0))) for d in dates]
    )
    opens = opens.tz_localize("America/New_York").tz_convert("UTC").tz_localize(None)
    closes = closes.tz_localize("America/New_York").tz_convert("UTC").tz_localize(None)
    minutes = ((closes - opens) / pd.Timedelta(minutes=1)).astype(np.int64)
    return pd.DataFrame({"date": dates, "open_utc": opens, "close_utc": closes, "minutes": minutes})


def tod_profiles(minute_et: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U-shaped intraday volatility and volume multipliers for ET minute-of-day (0..1439)."""
    m = minute_et.astype(np.float64)
    rth = (m >= 570) & (m < 960)                       # 09:30-16:00 ET
    since_open = np.clip(m - 570, 0, None)
    to_close = np.clip(960 - m, 0, None)
    vol = np.full_like(m, 0.45)                        # overnight
    vol = np.where((m >= 180) & (m < 570), 0.6, vol)   # European hours
    vol = np.where(rth, 0.85 + 1.6 * np.exp(-since_open / 25.0) + 0.7 * np.exp(-to_close / 20.0), vol)
    vol = np.where((m >= 510) & (m < 525), vol + 0.9 * np.exp(-(m - 510) / 4.0), vol)  # 08:30 releases
    vol = np.where((m >= 960) & (m < 1020), 0.55, vol)  # after the cash close
    volume = np.where(rth, 1.0 + 3.0 * np.exp(-since_open / 30.0) + 2.5 * np.exp(-to_close / 15.0), 0.12)
    volume = np.where((m >= 180) & (m < 570), 0.25, volume)
    return vol, volume


def _ar1(rng: np.random.Generator, n: int, half_life: float, sd: float) -> np.ndarray:
    """Stationary AR(1) with the given half-life (in steps) and marginal sd, via lfilter (vectorised)."""
    from scipy.signal import lfilter

    phi = 0.5 ** (1.0 / half_life)
    shocks = rng.standard_normal(n) * sd * np.sqrt(1 - phi**2)
    shocks[0] = rng.standard_normal() * sd
    return lfilter([1.0], [1.0, -phi], shocks)


def _carry(expiry_year: int) -> float:
    """Annual carry (financing minus dividends) by expiry year: sets the calendar spread."""
    table = {2016: 0.005, 2017: 0.012, 2018: 0.022, 2019: 0.02, 2020: 0.005, 2021: 0.0,
             2022: 0.02, 2023: 0.045, 2024: 0.05, 2025: 0.042}
    # Before 2016 near-zero rates sat below the index's ~1% dividend yield: a small discount.
    return table.get(expiry_year, -0.006 if expiry_year < 2016 else 0.04)


def _contract_schedule(sessions: pd.DataFrame) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Index of the front contract for each session, and the (year, month) of each contract used."""
    dates = sessions["date"].to_numpy()
    first, last = dates[0], dates[-1]
    expiries = []
    for y in range(first.year, last.year + 2):
        for mth in (3, 6, 9, 12):
            expiries.append((y, mth, third_friday(y, mth)))
    # The series rolls to the next contract from the session dated 8 days before expiry.
    roll_dates = np.array([e[2] - dt.timedelta(days=8) for e in expiries], dtype="datetime64[D]")
    d64 = np.asarray(dates, dtype="datetime64[D]")
    front = np.searchsorted(roll_dates, d64, side="right")  # contracts whose roll date has passed
    used = sorted(set(front.tolist()))
    remap = {k: i for i, k in enumerate(used)}
    return np.array([remap[k] for k in front], dtype=np.int64), [expiries[k][:2] for k in used]


def generate(days: int = 30, seed: int = 0, end: dt.date = DEFAULT_END, start: dt.date | None = None) -> DemoData:
    """Generate `days` calendar days of demo NQ 1-minute bars ending at `end` (inclusive)."""
    t0 = time.perf_counter()
    start = start or end - dt.timedelta(days=days - 1)
    rng = np.random.default_rng(seed)
    sessions = session_table(start, end)
    if sessions.empty:
        raise ValueError(f"no Globex session between {start} and {end}")
    n_sess = len(sessions)
    lengths = sessions["minutes"].to_numpy()
    n = int(lengths.sum())
    sess_idx = np.repeat(np.arange(n_sess), lengths)                       # (n,)
    k = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)     # minute within session
    ts = sessions["open_utc"].to_numpy().astype("datetime64[m]")[sess_idx] + k.astype("timedelta64[m]")
    minute_et = (18 * 60 + k) % 1440

    vol_tod, volu_tod = tod_profiles(minute_et)
    vol_tod /= vol_tod.mean()
    h = _ar1(rng, n, half_life=3 * SESSION_MINUTES, sd=0.35) + _ar1(rng, n, half_life=40, sd=0.25)
    base = ANNUAL_VOL / np.sqrt(MINUTES_PER_YEAR) / np.exp(0.5 * (0.35**2 + 0.25**2))  # E[exp(h)] = exp(var/2)
    sigma = base * vol_tod * np.exp(h)                                      # true conditional sd, (n,)
    factor = _ar1(rng, n, half_life=30, sd=1.0)
    drift = KAPPA * sigma * factor + ANNUAL_DRIFT / MINUTES_PER_YEAR
    eps = rng.standard_t(4, size=n) / np.sqrt(2.0)                           # unit-variance t(4)
    ret = drift + sigma * eps                                                # underlying log-return per minute

    # Underlying log-price at each minute's end; the level starts where NQ was at `start`.
    years_in = (start - dt.date(2010, 6, 6)).days / 365.25
    log_s0 = np.log(1800.0) + ANNUAL_DRIFT * max(years_in, 0.0)
    log_s_end = log_s0 + np.cumsum(ret)
    log_s_start = log_s_end - ret

    front, contracts = _contract_schedule(sessions)
    front_bar = front[sess_idx]                                               # (n,)
    expiry = np.array([np.datetime64(third_friday(y, m)) for y, m in contracts], dtype="datetime64[m]")
    carry = np.array([_carry(y) for y, _ in contracts])
    minute_years = 1.0 / (365.25 * 1440)

    def contract_log_price(log_s: np.ndarray, which: np.ndarray, at: np.ndarray) -> np.ndarray:
        tau = (expiry[which] - at).astype(np.float64) * minute_years        # years to expiry
        return log_s + carry[which] * tau

    one = np.timedelta64(1, "m")
    log_open = contract_log_price(log_s_start, front_bar, ts)
    log_close = contract_log_price(log_s_end, front_bar, ts + one)
    open_x, close_x = np.exp(log_open), np.exp(log_close)
    # Half-normal excursions beyond the open/close span: a rough Brownian-bridge range.
    hi_x = np.maximum(open_x, close_x) * np.exp(np.abs(rng.standard_normal(n)) * sigma * 0.6)
    lo_x = np.minimum(open_x, close_x) * np.exp(-np.abs(rng.standard_normal(n)) * sigma * 0.6)
    o = np.round(open_x / TICK) * TICK
    c = np.round(close_x / TICK) * TICK
    hi = np.maximum(np.ceil(hi_x / TICK - 1e-9) * TICK, np.maximum(o, c))
    lo = np.minimum(np.floor(lo_x / TICK + 1e-9) * TICK, np.minimum(o, c))

    # Volume: negative binomial (gamma-Poisson, shape 1.5) around a U-shaped, vol-linked mean.
    year_frac = (ts - np.datetime64("2010-01-01", "m")).astype(np.float64) / (525960.0 * 15)
    mean_vol = 220.0 * (0.6 + 0.8 * np.clip(year_frac, 0, 1)) * volu_tod * (sigma / np.median(sigma)) ** 0.7
    volume = rng.poisson(rng.gamma(1.5, mean_vol / 1.5))
    keep = volume > 0                                                         # no trades -> no bar

    codes = np.array([contract_code(y, m) for y, m in contracts])
    ids = np.array([100000 + y * 100 + m for y, m in contracts], dtype=np.int64)  # stable per contract
    ts_kept = ts[keep].astype("datetime64[us]")
    bars = pd.DataFrame({
        "symbol": DEMO_SYMBOL,
        "ts": ts_kept,
        "open": o[keep], "high": hi[keep], "low": lo[keep], "close": c[keep],
        "volume": volume[keep].astype(np.int64),
        "instrument_id": ids[front_bar[keep]],
        "contract": codes[front_bar[keep]],
    })
    truth = pd.DataFrame({
        "symbol": DEMO_SYMBOL, "ts": ts_kept, "contract": codes[front_bar[keep]],
        "sigma": sigma[keep], "drift": drift[keep], "close_exact": close_x[keep],
    })
    # Rolls: the first kept bar of each new contract; ratio of exact prices at the previous bar's close.
    fk = front_bar[keep]
    change = np.flatnonzero(np.diff(fk) != 0) + 1
    prev_close_time = ts[keep][change - 1] + one
    log_s_prev = log_s_end[keep][change - 1]
    ratio = np.exp(contract_log_price(log_s_prev, fk[change], prev_close_time)
                   - contract_log_price(log_s_prev, fk[change - 1], prev_close_time))
    rolls = pd.DataFrame({
        "symbol": DEMO_SYMBOL, "ts": ts_kept[change],
        "from_contract": codes[fk[change - 1]], "to_contract": codes[fk[change]], "ratio": ratio,
    })
    seconds = time.perf_counter() - t0
    log.info("generated %d demo bars (%d sessions, %d rolls) in %.2fs", len(bars), n_sess, len(rolls), seconds)
    return DemoData(bars=bars, truth=truth, rolls=rolls, seconds=seconds)
