"""The exchange calendar in one place: the ET time zone, Globex session dates, holidays, quarterly expiries.

A Globex session opens at 18:00 ET and closes at 17:00 ET the next day; its **session date** is the ET
date of (ts + 6 h), so a session that opens Sunday 18:00 ET belongs to Monday. sql/bars/_sessions.sql
applies the same rule inside DuckDB (docs/data.md). Equity-index futures expire on the third Friday
of March, June, September and December; the quarterly roll windows (data/bars.py) and the demo's
contracts (data/demo.py) both come from `third_friday`.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

ET = "America/New_York"
SESSION_SHIFT = pd.Timedelta(hours=6)  # session date = ET date of ts + 6 h
MONTH_CODES = {3: "H", 6: "M", 9: "U", 12: "Z"}  # the quarterly contract months and their letters
# A hole in the data longer than this is not a weekend or a holiday (at most 4 days, e.g. Christmas on
# a Monday): the series is split into segments there. No roll is measured across it, and no model
# window or target spans it (docs/rolls_and_sessions.md §8).
SEGMENT_GAP = pd.Timedelta(days=7)


def segment_ids(ts) -> np.ndarray:
    """(N,) int segment number of each timestamp (sorted): it grows by one after every gap > SEGMENT_GAP."""
    t = np.asarray(ts, dtype="datetime64[ns]")
    if len(t) == 0:
        return np.zeros(0, dtype=np.int64)
    gaps = np.diff(t) > SEGMENT_GAP.to_timedelta64()
    return np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64)


def et_index(ts) -> pd.DatetimeIndex:
    """(N,) timestamps as an ET DatetimeIndex (the exchange clock). Naive values are UTC."""
    idx = pd.DatetimeIndex(np.asarray(ts))
    return (idx.tz_localize("UTC") if idx.tz is None else idx).tz_convert(ET)


def session_dates(ts) -> np.ndarray:
    """(N,) Globex session date of each UTC timestamp, as datetime64[ns] at midnight. Naive values are UTC."""
    local = et_index(ts) + SESSION_SHIFT
    return local.tz_localize(None).normalize().values  # (N,) datetime64[ns] at midnight


def session_date(ts) -> dt.date:
    """The Globex session date of one UTC timestamp (naive values are UTC): `session_dates`' rule."""
    return pd.Timestamp(session_dates(pd.DatetimeIndex([pd.Timestamp(ts)]))[0]).date()


def third_friday(year: int, month: int) -> dt.date:
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14)


def observed(day: dt.date) -> dt.date:
    """A holiday on Saturday is observed on Friday, on Sunday on Monday."""
    if day.weekday() == 5:
        return day - dt.timedelta(days=1)
    if day.weekday() == 6:
        return day + dt.timedelta(days=1)
    return day


def holidays(years: range) -> set[dt.date]:
    out = set()
    for y in years:
        for m, d in ((1, 1), (7, 4), (12, 25)):
            out.add(observed(dt.date(y, m, d)))
    return out


def thanksgiving(year: int) -> dt.date:
    first = dt.date(year, 11, 1)
    return first + dt.timedelta(days=(3 - first.weekday()) % 7 + 21)


def session_table(start: dt.date, end: dt.date) -> pd.DataFrame:
    """One row per Globex session with trading date in [start, end]: date, open/close in UTC, minutes."""
    years = range(start.year - 1, end.year + 2)
    closed = holidays(years)
    early = {}
    for y in years:
        tg = thanksgiving(y)
        early[tg] = dt.time(13, 0)
        early[tg + dt.timedelta(days=1)] = dt.time(13, 15)
    dates = [d.date() for d in pd.bdate_range(start, end)]
    dates = [d for d in dates if d not in closed]
    opens = pd.DatetimeIndex([pd.Timestamp(d - dt.timedelta(days=1)) + pd.Timedelta(hours=18) for d in dates])
    closes = pd.DatetimeIndex(
        [pd.Timestamp.combine(d, early.get(d, dt.time(17, 0))) for d in dates]
    )
    opens = opens.tz_localize(ET).tz_convert("UTC").tz_localize(None)
    closes = closes.tz_localize(ET).tz_convert("UTC").tz_localize(None)
    minutes = ((closes - opens) / pd.Timedelta(minutes=1)).astype(np.int64)
    return pd.DataFrame({"date": dates, "open_utc": opens, "close_utc": closes, "minutes": minutes})
