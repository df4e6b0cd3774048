"""Validation of parsed bars: one reason for each row that cannot be a real minute bar.

Validation (docs/data.md §3): a row is rejected, with the first reason that applies, for a field
its reader could not place (a Lean millisecond count outside the day), a nonexistent local time, a
date before 1990 or more than FUTURE_TOLERANCE after now, a timestamp not on a whole minute, a
missing or NaN field, a non-positive price, a price outside [1e-6, 1e9], high < low, open or close
outside [low, high], negative or fractional volume, a volume above 1e12, a price more than 5x from
the median close of the bars around it, repeating a (symbol, ts) already seen earlier in the same
file (the first is kept), or following a step back of the file's clock (docs/data.md §9). Rejected
rows go to `rejected_bars` with the file, the 1-based row number and the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from nqexp.errors import DataError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Validation


# Plausibility bounds (docs/data.md §3). Bars before 1990 are misparsed dates (an epoch-seconds value
# in a milliseconds file lands in 1970). A bar starts at its ts, so one starting later than now has not
# traded yet: beyond FUTURE_TOLERANCE (clocks that disagree) it is a wrong zone or unit. Prices outside
# [MIN_PRICE, MAX_PRICE] are wrong scaling or garbage; a volume above MAX_VOLUME cannot be a minute of any market and
# would not survive the int64 column. Otherwise a price is judged against the file's own level:
# the rolling median close of the PRICE_WINDOW bars around it, within a factor of PRICE_FACTOR.
EARLIEST_TS = pd.Timestamp("1990-01-01")
FUTURE_TOLERANCE = pd.Timedelta(minutes=15)
REASON_EARLY = "timestamp before 1990"
REASON_FUTURE = (f"timestamp in the future (starts more than {FUTURE_TOLERANCE.seconds // 60} minutes "
                 "after the import)")
# A reader's own reason for a row (a Lean millisecond count outside the day): the first check of all.
READER_REASON = "_reason"
# Rows whose local time fell in a repeated fall-back hour the file's order could not resolve (readers
# mark them): the zone explains their step back, so it is not a clock step (docs/data.md §9).
ZONE_REPEAT = "_zone_repeat"
MIN_PRICE, MAX_PRICE = 1e-6, 1e9
MAX_VOLUME = 1e12
MIN_SPACING_STEPS = 20  # fewer consecutive steps than this: too few to tell a file's bar spacing
# A minute without a trade is absent from a traded series (Databento, FirstRate); a zero-volume row is a
# vendor's fill, with a price nobody traded at, and volume-based features (Amihud's |r| / (price x V))
# are undefined on it. Such rows are rejected with this reason (docs/data.md §3).
REASON_ZERO_VOLUME = "zero volume (no trade in the minute: a filled bar, not a traded one)"
PRICE_FACTOR = 5.0
PRICE_WINDOW = 101
REASON_PRICE_LEVEL = f"price more than {PRICE_FACTOR:g}x from the median close of nearby bars"


def _off_minute(ts: pd.Series) -> np.ndarray:
    """Timestamps with seconds or fractions of a second (NaT is not off-minute)."""
    us = ts.to_numpy().astype("datetime64[us]")
    return ~np.isnat(us) & (us.astype(np.int64) % 60_000_000 != 0)


def _steps_seconds(df: pd.DataFrame) -> np.ndarray:
    """(K,) seconds between consecutive bars of each series (the file's order does not matter; NaT left out)."""
    ts = df["ts"].to_numpy(dtype="datetime64[ns]")
    ok = ~np.isnat(ts)
    codes = pd.factorize(df["symbol"])[0][ok]
    t = ts[ok].astype(np.int64)
    order = np.lexsort((t, codes))  # by series, then time
    t, codes = t[order], codes[order]
    same = codes[1:] == codes[:-1]
    return np.diff(t)[same] / 1e9


def bar_spacing_minutes(steps_s: np.ndarray) -> int | None:
    """The file's bar spacing from its steps (`_steps_seconds`): the most common whole-minute step under an
    hour (session breaks left out), or None with too few steps to tell."""
    minutes = steps_s / 60.0
    minutes = minutes[(minutes > 0) & (minutes < 60) & (minutes == np.floor(minutes))]
    if len(minutes) < MIN_SPACING_STEPS:
        return None
    values, counts = np.unique(minutes, return_counts=True)
    return int(values[np.argmax(counts)])  # the smallest of equally common steps, as pandas' mode


def refuse_unusable(df: pd.DataFrame, path: Path) -> None:
    """Whole-file refusals that only the parsed rows can show: bars seconds apart, or coarser than a minute."""
    ts = df["ts"]
    steps = _steps_seconds(df)  # one sort serves both checks
    spacing_min = bar_spacing_minutes(steps)
    if spacing_min is not None and spacing_min > 1:
        # A 5-minute file would otherwise land as 1-minute bars with a gap flag on nearly every bar.
        raise DataError(
            f"{path}: these are {spacing_min}-minute bars (the most common step between consecutive bars is "
            f"{spacing_min} minutes); nqexp imports 1-minute bars and builds 5-minute bars from them "
            f"(nqexp data bars), so import the 1-minute file instead (nothing was imported)")
    sub = _off_minute(ts)
    if not sub.any():
        return
    mostly_close = len(steps) > 0 and (steps < 60).mean() > 0.5
    if mostly_close or sub.mean() > 0.5:
        i = int(np.flatnonzero(sub)[0])
        raise DataError(
            f"{path}: these are not 1-minute bars: {int(sub.sum())} of {len(df)} timestamps are not on a whole "
            f"minute (first: data row {i + 1}, {ts.iloc[i]}); nqexp imports 1-minute bars (nothing was imported)")


def validate(df: pd.DataFrame, now: pd.Timestamp | None = None) -> pd.Series:
    """The first reason each row is rejected, or None for good rows (vectorised). `now`: naive UTC
    (default: the clock), for the future check."""
    o, h, lo, c, v = (df[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    ts = df["ts"]
    now = pd.Timestamp.now(tz="UTC").tz_localize(None) if now is None else now
    latest = now + FUTURE_TOLERANCE
    reader = df[READER_REASON].notna().to_numpy() if READER_REASON in df else np.zeros(len(df), dtype=bool)
    checks = [
        (reader, None),                                       # the reader's own text, per row
        (ts.isna().to_numpy() & ~reader, "nonexistent local time (DST gap)"),
        ((ts < EARLIEST_TS).to_numpy(), REASON_EARLY),
        ((ts > latest).to_numpy(), REASON_FUTURE),
        (_off_minute(ts), "timestamp not on a whole minute"),
    ]
    for name in ("open", "high", "low", "close", "volume"):
        checks.append((~np.isfinite(df[name].to_numpy()), f"missing or NaN {name}"))
    with np.errstate(invalid="ignore"):
        checks += [
            ((o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0), "non-positive price"),
            ((o < MIN_PRICE) | (o > MAX_PRICE) | (h < MIN_PRICE) | (h > MAX_PRICE)
             | (lo < MIN_PRICE) | (lo > MAX_PRICE) | (c < MIN_PRICE) | (c > MAX_PRICE),
             f"price outside {MIN_PRICE:g}..{MAX_PRICE:g}"),
            (h < lo, "high < low"),
            ((o < lo) | (o > h), "open outside [low, high]"),
            ((c < lo) | (c > h), "close outside [low, high]"),
            (v < 0, "negative volume"),
            (v == 0, REASON_ZERO_VOLUME),
            (v != np.floor(v), "fractional volume"),
            (v > MAX_VOLUME, f"volume above {MAX_VOLUME:g}"),
        ]
    # One small code per row (0 = good) instead of an object array: 5M rows are compared often below.
    code = np.zeros(len(df), dtype=np.int8)
    for k, (bad, _) in reversed(list(enumerate(checks, 1))):  # reversed, so the first matching check wins
        code[bad] = k
    texts = [None, *(text for _, text in checks), REASON_PRICE_LEVEL]
    symbols, _ = pd.factorize(df["symbol"])
    far = _far_from_level(df, code == 0, symbols)
    code[far] = len(texts) - 1
    reason = np.array(texts, dtype=object)[code]
    if reader.any():
        reason[reader] = df[READER_REASON].to_numpy()[reader]
    dup, first_row, first_at = _duplicates(symbols, ts, df["row_number"].to_numpy())
    dup &= code == 0
    if dup.any():
        reason[dup] = [f"duplicate timestamp (row {r} kept)" for r in first_row[dup]]
    stepped = _clock_steps(df, code == 0, dup, first_at)
    if stepped is not None:
        hit = stepped.notna().to_numpy()
        reason[hit] = stepped.to_numpy()[hit]
    return pd.Series(reason, index=df.index)


def _clock_steps(df: pd.DataFrame, ok: np.ndarray, dup: np.ndarray, first_at: np.ndarray) -> pd.Series | None:
    """Rows after a step back of the file's clock (docs/data.md §9), with the step's reason; None when there is none.

    Per file (source) and series, in file order, among rows that passed every other check: a row
    earlier than a bar already read starts a run of rows behind the file's latest time. A run whose
    rows fill gaps (rows out of order) or repeat earlier rows verbatim (an overlapping concatenation)
    is fine: the rows place themselves, the repeats are duplicates. So is a run inside a fall-back hour
    the file's zone explains. A run that replays times already read with other prices means the
    clock stepped back: the later rows cannot be placed (the rows past the overlap would land an hour
    early, say), so that row and every later row of the series in the file are rejected, and the rows
    before it kept. A series whose times only fall (a newest-first file) has no step.
    """
    t = df["ts"].to_numpy().astype("datetime64[us]").astype(np.int64)
    pos = np.flatnonzero(ok)
    if len(pos) < 2:
        return None
    sym, _ = pd.factorize(df["symbol"])
    src, _ = pd.factorize(df["source"])
    key = src.astype(np.int64) * (int(sym.max()) + 1) + sym
    tk, kk = t[pos], key[pos]
    if np.all(kk[1:] == kk[:-1]) and np.all(tk[1:] >= tk[:-1]):
        return None                          # the usual file: one series, never going back
    by_key = pos[np.argsort(kk, kind="stable")]  # file order within each series
    out = None
    zone = df[ZONE_REPEAT].to_numpy(dtype=bool) if ZONE_REPEAT in df else np.zeros(len(df), dtype=bool)
    for rows in np.split(by_key, np.flatnonzero(np.diff(key[by_key])) + 1):
        tr = t[rows]
        if len(rows) < 2 or np.all(tr[1:] >= tr[:-1]) or np.all(tr[1:] <= tr[:-1]):
            continue
        latest = np.maximum.accumulate(tr)
        behind = np.concatenate([[False], tr[1:] < latest[:-1]])
        starts = np.flatnonzero(behind & ~np.concatenate([[False], behind[:-1]]))
        ends = np.flatnonzero(behind & ~np.concatenate([behind[1:], [False]])) + 1
        for a, b in zip(starts, ends):
            run = rows[a:b]
            same = np.ones(len(run), dtype=bool)
            for name in ("open", "high", "low", "close", "volume"):
                col = df[name].to_numpy()
                same &= col[run] == col[first_at[run]]
            # A clash: a time already read (from a row that passed), with other prices.
            if not (dup[run] & ~same & ok[first_at[run]]).any() or zone[run].all():
                continue
            i, prev = rows[a], rows[a - 1]
            back = pd.Timedelta(int(latest[a - 1] - tr[a]), unit="us")
            n_row, n_prev = int(df["row_number"].iat[i]), int(df["row_number"].iat[prev])
            text = (f"timestamps go backwards: data row {n_row} ({df['ts'].iat[i]}) is {_duration(back)} earlier "
                    f"than row {n_prev} and replays times already read with other prices; it and the series' "
                    "later rows are rejected (a wrong --tz? a clock that stepped back?)")
            if out is None:
                out = pd.Series(None, index=df.index, dtype=object)
            out.iloc[rows[a:]] = text
            break
    return out


def _duration(delta: pd.Timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes >= 60 and minutes % 60 == 0:
        return f"{minutes // 60} hour{'s' * (minutes != 60)}"
    return f"{minutes} minute{'s' * (minutes != 1)}" if minutes >= 1 else f"{delta.total_seconds():g} seconds"


def _duplicates(symbols: np.ndarray, ts: pd.Series, row_number: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows repeating an earlier row's (symbol, ts), that first row's number and its position (NaT equals NaT)."""
    t = ts.to_numpy().astype("datetime64[us]").astype(np.int64)            # NaT: one value, as pandas treats it
    dup = np.zeros(len(t), dtype=bool)
    first = np.zeros(len(t), dtype=np.int64)
    first_at = np.arange(len(t))
    if len(t) < 2 or (np.all(symbols[1:] == symbols[:-1]) and np.all(t[1:] > t[:-1])):
        return dup, first, first_at          # the usual file: one series, strictly increasing
    order = np.lexsort((t, symbols))         # stable: equal keys keep file order, the first stays first
    same = (t[order][1:] == t[order][:-1]) & (symbols[order][1:] == symbols[order][:-1])
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    group_first = order[starts][np.cumsum(np.concatenate([[True], ~same])) - 1]   # (n,) in sorted order
    dup[order[1:][same]] = True
    first[order] = row_number[group_first]
    first_at[order] = group_first
    return dup, first, first_at


def _far_from_level(df: pd.DataFrame, ok: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """Rows (among `ok`) with a price more than PRICE_FACTOR x from the rolling median close around them.

    The median of the PRICE_WINDOW bars around each one, in time order per series, so a 15-year file
    whose level grew tenfold is judged against its own era, and one wild row cannot move its own reference.
    """
    far = np.zeros(len(df), dtype=bool)
    pos = np.flatnonzero(ok)
    if not len(pos):
        return far
    # Rows that passed the checks have low <= open, close <= high: their extremes are low and high.
    every = len(pos) == len(df)
    lo, hi, close = (df[k].to_numpy() if every else df[k].to_numpy()[pos] for k in ("low", "high", "close"))
    # Every rolling median lies within [min close, max close], so a file whose whole range fits
    # inside the factor needs no window (the usual case, and the fast one).
    if hi.max() <= PRICE_FACTOR * close.min() and lo.min() * PRICE_FACTOR >= close.max():
        return far
    codes = symbols[pos]
    ts = df["ts"].to_numpy()[pos].astype("datetime64[us]").astype(np.int64)
    by_symbol = np.argsort(codes, kind="stable")
    half = PRICE_WINDOW // 2
    for rows in np.split(by_symbol, np.flatnonzero(np.diff(codes[by_symbol])) + 1):
        if not np.all(np.diff(ts[rows]) >= 0):
            rows = rows[np.argsort(ts[rows], kind="stable")]
        cl = close[rows]
        # The same bound per window: only a row beyond the factor from the min or max close around it can
        # be beyond it from the median. Blocks of `half` rows: the window of row i lies inside its block
        # and the two blocks either side, so their min/max bound its median (and cost one pass).
        nb = -(-len(cl) // half)
        padded = np.concatenate([cl, np.full(nb * half - len(cl), np.nan)]).reshape(nb, half)
        bmin, bmax = np.nanmin(padded, axis=1), np.nanmax(padded, axis=1)
        wmin = np.minimum.reduce([np.r_[bmin[:1], bmin[:-1]], bmin, np.r_[bmin[1:], bmin[-1:]]])
        wmax = np.maximum.reduce([np.r_[bmax[:1], bmax[:-1]], bmax, np.r_[bmax[1:], bmax[-1:]]])
        block = np.arange(len(cl)) // half
        cand = np.flatnonzero((hi[rows] > wmin[block] * PRICE_FACTOR) | (lo[rows] < wmax[block] / PRICE_FACTOR))
        if len(cand) > 10_000:
            level = pd.Series(cl).rolling(PRICE_WINDOW, center=True, min_periods=1).median().to_numpy()[cand]
        else:
            level = np.array([np.median(cl[max(i - half, 0): i + half + 1]) for i in cand])
        out = (hi[rows][cand] > level * PRICE_FACTOR) | (lo[rows][cand] < level / PRICE_FACTOR)
        far[pos[rows[cand[out]]]] = True
    return far
