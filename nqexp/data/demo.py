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
* **Volatility (two components and a leverage effect).** sigma_t = base * tod(m) * exp(h_slow + h_fast),
  where tod(m) is a U-shaped time-of-day profile (quiet overnight, a bump at the 08:30 ET data
  releases, a high open at 09:30 decaying to a midday low, a rise into the 16:00 close) normalised to
  mean 1, and
    - h_slow is the slow "daily" log-volatility: an exogenous AR(1) with a half-life of 3 trading
      sessions and sd SLOW_SD (0.35). Past days' realized variance reveals it;
    - h_fast is the fast intraday log-volatility, an EGARCH(1,1) driven by the bars' own shocks:
          h_fast[t+1] = FAST_PHI h_fast[t] + FAST_A (|e_t| - E|e|) + FAST_G e_t
      with a half-life of FAST_HALFLIFE (45) minutes. FAST_G < 0 is the leverage effect: a down-move
      raises future volatility more than an up-move of the same size. Unlike h_slow it is a known
      function of past returns, so a sequence model can learn it from the bars, while an EWMA of
      squared returns (or a one-component GARCH) only approximates it.
  The latent sigma_t is the true conditional volatility, stored in `demo_truth` with the latent state.
* **Returns (weak short-horizon mean reversion).** r_t = MU + sigma_t (e_t - MR_KAPPA m_{t-1}) with
  e_t Student-t(4) scaled to unit variance (fat tails) and m_t = MR_PHI m_{t-1} + e_t an exponentially
  weighted sum of past shocks (half-life MR_HALFLIFE = 15 minutes). After a run of up-moves the
  expected return turns negative. Sizing: the best forecast of the h-minute return has mean
  -MR_KAPPA m_0 sum_j sigma_j MR_PHI^(j-1); with MR_KAPPA = 0.005 its Spearman correlation with the
  outcome (the optimal median's IC) measured 0.061-0.068 at 15m, 0.064-0.073 at 30m, 0.065 at 60m,
  0.046-0.056 at 2h and 0.029-0.043 at 4h (400 days, seeds 2 and 3): a learnable but weak signal,
  inside 0.03-0.08 at 15-60m and under the leakage gate's 0.1. (The first demo's drift, a slow AR(1)
  factor unrelated to past returns, could only be guessed, never learned from the bars.)
  `oracle_paths` simulates the dynamics from the stored state, so the oracle measures all of it.
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

Ground truth written next to the bars: `demo_truth` (sigma, drift, the unrounded close and the
latent state of every bar: h_slow, h_fast, the shock e and the mean-reversion state m, plus the
bar's minute index in the generated grid) and `demo_rolls` (each roll's time and exact price ratio
F_new / F_old). `oracle_paths` simulates the true dynamics forward from that state: the Bayes-optimal
(causal Monte Carlo) forecast that `benchmarks/bench_quality.py` scores every forecast against.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nqexp.calendar import MONTH_CODES, session_dates, session_table, third_friday

log = logging.getLogger(__name__)

DEMO_SYMBOL = "NQ.demo"
TICK = 0.25
DEFAULT_END = dt.date(2025, 12, 3)
DEMO_VERSION = 2             # bumped when the dynamics change; stored in the bars' source tag
SLOW_HALFLIFE_SESSIONS = 3.0 # h_slow: AR(1) half-life in trading sessions
SLOW_SD = 0.35               # h_slow: marginal sd of the slow log-volatility
FAST_HALFLIFE = 45.0         # h_fast: EGARCH half-life in minutes
FAST_A = 0.06                # h_fast: response to the size of a shock, |e| - E|e|
FAST_G = -0.035              # h_fast: response to its sign; < 0 is the leverage effect
SHOCK_CLIP = 8.0             # |e| beyond this moves h_fast no further (one t(4) draw can't own the day)
MR_KAPPA = 0.005             # mean reversion: expected return = -MR_KAPPA * sigma * m (optimal IC ~0.06-0.07 at 15-60m)
MR_HALFLIFE = 15.0           # mean reversion: half-life in minutes of the shock sum m
T_DF = 4.0                   # Student-t degrees of freedom of the shocks (unit variance)
ANNUAL_VOL = 0.22            # target unconditional annualised volatility of the underlying
ANNUAL_DRIFT = 0.16          # log-drift per year, roughly NQ's 1800 -> 21000 over 2010-2025
SESSION_MINUTES = 23 * 60    # 18:00 ET to 17:00 ET next day
MINUTES_PER_YEAR = 252 * SESSION_MINUTES


@dataclass
class DemoData:
    bars: pd.DataFrame       # raw_bars columns: symbol, ts, open, high, low, close, volume, instrument_id, contract
    truth: pd.DataFrame      # demo_truth columns: symbol, ts, contract, sigma, drift, close_exact,
                             #   k, h_slow, h_fast, eps, mr (the latent state after the bar)
    rolls: pd.DataFrame      # demo_rolls columns: symbol, ts, from_contract, to_contract, ratio
    seconds: float


def contract_code(year: int, month: int) -> str:
    return f"NQ{MONTH_CODES[month]}{year % 10}"


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


# Derived constants of the dynamics (module docstring). They depend on nothing but the constants
# above, so `oracle_paths` reproduces sigma_t exactly from a stored state.
FAST_PHI = 0.5 ** (1.0 / FAST_HALFLIFE)
MR_PHI = 0.5 ** (1.0 / MR_HALFLIFE)
SLOW_PHI = 0.5 ** (1.0 / (SLOW_HALFLIFE_SESSIONS * SESSION_MINUTES))
MU = ANNUAL_DRIFT / MINUTES_PER_YEAR
# E|e| of a unit-variance t(T_DF): sqrt((nu-2)/nu) * 2 sqrt(nu) Gamma((nu+1)/2) / (sqrt(pi) (nu-1) Gamma(nu/2)).
ABS_E = float(np.sqrt((T_DF - 2) / T_DF) * 2 * np.sqrt(T_DF / np.pi) / (T_DF - 1)
              * math.exp(math.lgamma((T_DF + 1) / 2) - math.lgamma(T_DF / 2)))
_FAST_VAR = (FAST_A**2 * (1 - ABS_E**2) + FAST_G**2) / (1 - FAST_PHI**2)   # stationary var of h_fast
# Per-minute vol scale: E[exp(h_slow + h_fast)] ~ exp(var / 2), so the unconditional annual vol is ~ANNUAL_VOL.
BASE_SIGMA = ANNUAL_VOL / np.sqrt(MINUTES_PER_YEAR) / np.exp(0.5 * (SLOW_SD**2 + _FAST_VAR))


def tod_vol(minute_et: np.ndarray) -> np.ndarray:
    """Volatility multiplier of ET minute-of-day, normalised to mean 1 over the 23-hour Globex day."""
    return tod_profiles(np.asarray(minute_et))[0] / _TOD_MEAN


def shocks(rng: np.random.Generator, size) -> np.ndarray:
    """Unit-variance Student-t(T_DF) shocks."""
    return rng.standard_t(T_DF, size=size) / np.sqrt(T_DF / (T_DF - 2))


def fast_impulse(e: np.ndarray) -> np.ndarray:
    """The EGARCH impulse of a shock: h_fast[t+1] - FAST_PHI h_fast[t]."""
    return FAST_A * (np.minimum(np.abs(e), SHOCK_CLIP) - ABS_E) + FAST_G * np.clip(e, -SHOCK_CLIP, SHOCK_CLIP)


_TOD_MEAN = float(tod_profiles((18 * 60 + np.arange(SESSION_MINUTES)) % 1440)[0].mean())


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


def minute_grid(sessions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every generated minute of the sessions: start ts (naive UTC, datetime64[m]), ET minute of day, session row."""
    lengths = sessions["minutes"].to_numpy()
    n = int(lengths.sum())
    sess_idx = np.repeat(np.arange(len(sessions)), lengths)                 # (n,)
    k = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)     # minute within session
    ts = sessions["open_utc"].to_numpy().astype("datetime64[m]")[sess_idx] + k.astype("timedelta64[m]")
    return ts, (18 * 60 + k) % 1440, sess_idx


def generate(days: int = 30, seed: int = 0, end: dt.date = DEFAULT_END, start: dt.date | None = None) -> DemoData:
    """Generate `days` calendar days of demo NQ 1-minute bars ending at `end` (inclusive)."""
    t0 = time.perf_counter()
    start = start or end - dt.timedelta(days=days - 1)
    rng = np.random.default_rng(seed)
    sessions = session_table(start, end)
    if sessions.empty:
        raise ValueError(f"no Globex session between {start} and {end}")
    n_sess = len(sessions)
    ts, minute_et, sess_idx = minute_grid(sessions)
    n = len(ts)

    from scipy.signal import lfilter

    _, volu_tod = tod_profiles(minute_et)
    h_slow = _ar1(rng, n, half_life=SLOW_HALFLIFE_SESSIONS * SESSION_MINUTES, sd=SLOW_SD)  # (n,)
    eps = shocks(rng, n)                                                      # (n,) e_t
    # h_fast[t] = sum_{i<t} FAST_PHI^(t-1-i) impulse(e_i): lfilter runs the EGARCH recursion in C.
    h_fast = np.concatenate([[0.0], lfilter([1.0], [1.0, -FAST_PHI], fast_impulse(eps))[:-1]])  # (n,)
    sigma = BASE_SIGMA * tod_vol(minute_et) * np.exp(h_slow + h_fast)          # true conditional sd, (n,)
    mr = lfilter([1.0], [1.0, -MR_PHI], eps)                                  # (n,) m_t, includes e_t
    mr_prev = np.concatenate([[0.0], mr[:-1]])                                # (n,) m_{t-1}: known before bar t
    drift = MU - MR_KAPPA * sigma * mr_prev                                   # true conditional mean, (n,)
    ret = drift + sigma * eps                                                 # underlying log-return per minute

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
        "k": np.flatnonzero(keep).astype(np.int64), "h_slow": h_slow[keep], "h_fast": h_fast[keep],
        "eps": eps[keep], "mr": mr[keep],
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


# ---------------------------------------------------------------------------------------------
# Causal Monte Carlo oracle: the Bayes-optimal forecast from the true latent state
# ---------------------------------------------------------------------------------------------


def truth_minute_et(truth: pd.DataFrame) -> np.ndarray:
    """ET minute of day of every generated minute (kept or not) of the series in `truth`, by index k.

    The grid is rebuilt from the Globex calendar between the first and the last bar's session
    date (a session's date is the ET date of ts + 6 h), and checked against the stored ts.
    """
    ts = pd.DatetimeIndex(truth["ts"].to_numpy())
    dates = pd.DatetimeIndex(session_dates(ts)).date
    grid_ts, minute_et, _ = minute_grid(session_table(dates[0], dates[-1]))
    k = truth["k"].to_numpy()
    if k.max() >= len(grid_ts) or not np.array_equal(grid_ts[k].astype("datetime64[us]"),
                                                     ts.to_numpy().astype("datetime64[us]")):
        raise ValueError("demo_truth does not match the generator's minute grid (was it made by an older nqexp?)")
    return minute_et


def oracle_paths(truth: pd.DataFrame, origin_row: np.ndarray, end_row: np.ndarray, n_paths: int = 1000,
                 seed: int = 0, chunk: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """Simulated h-bar log-returns from the true state at each origin: the causal oracle.

    Returns paths (n, H, M) and the conditional mean (n, H). The mean is the paths' average of the
    summed drifts only: the shock terms sum to a martingale with mean exactly 0, so leaving them
    out removes most of the Monte Carlo noise from E[y | state] (this is what an IC needs).

    truth: the series' demo_truth rows in time order (with the state columns k, h_slow, h_fast,
    eps, mr); origin_row: (n,) row of each origin's last 1-minute bar; end_row: (n, H) row of the
    last 1-minute bar of each horizon's end bar. A target spans generated minutes
    (k[origin], k[end]]: minutes without trades (absent from the bars) still move the price. The
    paths follow exactly the generator's dynamics from the state after the origin bar, with fresh
    shocks, so their quantiles are Bayes-optimal for CRPS up to Monte Carlo error.
    """
    minute_et = truth_minute_et(truth)
    tod_all = tod_vol(minute_et)  # (K,)
    k = truth["k"].to_numpy()
    cols = {c: truth[c].to_numpy(dtype=np.float64) for c in ("h_slow", "h_fast", "eps", "mr")}
    origin_row = np.asarray(origin_row, dtype=np.int64)
    end_row = np.asarray(end_row, dtype=np.int64)
    n, H = end_row.shape
    out = np.empty((n, H, n_paths))
    mean = np.empty((n, H))
    rng = np.random.default_rng(seed)
    slow_sd = np.sqrt(1 - SLOW_PHI**2) * SLOW_SD
    for lo in range(0, n, chunk):
        rows = slice(lo, min(lo + chunk, n))
        o = origin_row[rows]
        k0 = k[o]  # (c,)
        steps = k[end_row[rows]] - k0[:, None]  # (c, H) generated minutes in each target
        c = o.shape[0]
        hs = np.repeat(cols["h_slow"][o][:, None], n_paths, axis=1)  # (c, M)
        # State after the origin bar: its shock has already moved h_fast and m.
        hf = np.repeat((FAST_PHI * cols["h_fast"][o] + fast_impulse(cols["eps"][o]))[:, None], n_paths, axis=1)
        m = np.repeat(cols["mr"][o][:, None], n_paths, axis=1)  # (c, M)
        cum = np.zeros((c, n_paths))
        cum_drift = np.zeros((c, n_paths))
        for s in range(1, int(steps.max()) + 1):
            tod = tod_all[np.minimum(k0 + s, len(tod_all) - 1)][:, None]  # (c, 1)
            hs = SLOW_PHI * hs + slow_sd * rng.standard_normal((c, n_paths))
            sigma = BASE_SIGMA * tod * np.exp(hs + hf)
            e = shocks(rng, (c, n_paths))
            drift = MU - MR_KAPPA * sigma * m
            cum += drift + sigma * e
            cum_drift += drift
            m = MR_PHI * m + e
            hf = FAST_PHI * hf + fast_impulse(e)
            i, j = np.nonzero(steps == s)
            if i.size:
                out[lo + i, j] = cum[i]
                mean[lo + i, j] = cum_drift[i].mean(axis=1)
    return out, mean
