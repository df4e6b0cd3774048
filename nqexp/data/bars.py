"""Bars: raw 1-minute bars -> rolls, ratio back-adjusted continuous 1m and 5m bars with sessions.

Everything heavy runs as SQL files in `sql/bars/` (one statement each):

    et_years            ET offsets per year (a join instead of 5M ICU calls)
    source_continuous   the raw series of one continuous symbol          -> _src_1m
    source_per_contract per-contract series spliced by volume crossover  -> _src_1m
    rolls_instrument    rolls where instrument_id/contract changes      -> _rolls_new
                        (rolls_instrument_windowed if a contract reappears)
    rolls_volume        rolls of the spliced series, R from common bars -> _rolls_new
    rolls_price_jump    splice candidates of a series without ids       -> _jump_candidates
                        (bars.py accepts one per roll window, or warns)
    segments            contract runs between rolls and their factor    -> _segments
    bars_1m, bars_5m    adjusted prices of each bar, stamped in ET      -> _bars_priced
    _sessions           session fields and flags over _bars_priced      -> bars_1m, bars_5m

Both frequencies share `_sessions.sql` the way feature families share `sql/features/_input.sql`:
the frequency's file defines the relation `_bars_priced`, and bars.py inserts the shared select
over it into the frequency's table. Every file's header (purpose, grain, inputs, params,
lookahead) is checked before a build (`check_sql`); a file whose lookahead is none must not use
`following`, lead() or a negative lag().

Conventions (also in sql/schema/002_bars.sql):

* Stamps: `ts` is the bar START in UTC. A 5-minute bar stamped 14:30 aggregates the 1-minute
  bars with ts in [14:30, 14:35): open = first, high = max, low = min, close = last,
  volume = sum (ordered aggregates on ts).
* Rolls: `rolls.ts` is the first bar of the new contract; R = P_new / P_old at the roll.
  Continuous input (NQ.v.0, NQ.demo) shows one contract at a time, so R is measured across the
  splice: open of the first new bar / close of the last old bar (error: tick rounding of the
  two prints plus any real move between them; on the demo data the error is measured against
  the generator's exact ratio in tests/test_bars.py). Per-contract input (Lean ESZ13, ESH14)
  shows both, so R = close_new / close_old at the last minute before the roll in which both
  traded; the roll happens at the first session after the one where the new contract's daily
  volume first exceeded the old one's (uses finished sessions only, never rolls back).
  Continuous input without instrument_id or contract codes (most vendor CSVs): in each roll
  window (sessions from ROLL_WINDOW_DAYS before a quarterly expiry to the expiry) the splice is
  the bar whose jump open / previous close has the largest robust z against the local,
  time-of-day-adjusted 1-minute sigma; it is a roll (method 'price_jump', with its z) when the z
  and the size are plausible for a calendar spread and no other bar comes close, else the window
  gets a warning and no roll. Rolls given with `given_rolls` (e.g. `--rolls FILE`) replace
  detected ones.
* Ratio back-adjustment: every price before a roll is multiplied by its R and by the R of every
  later roll; `adj_factor` = 1.0 after the last roll. Log-returns within a contract are
  unchanged (all bars between two rolls share one factor); the splice jump disappears. Raw
  prices stay in raw_bars; bars_* are rebuilt from raw_bars + rolls, so a roll appended later
  re-adjusts all history on the next build.
* Sessions: the Globex session date is the ET date of (ts_et + 6 h), so the 18:00 ET open
  belongs to the next trading day. Gaps of 15 minutes or less inside a session are tolerated;
  longer ones set `gap_flag`; the maintenance break, weekends and holidays start a new
  session (`is_session_start`). Windows and targets should break (or mask) at either flag.
  (docs/rolls_and_sessions.md)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from nqexp.calendar import SEGMENT_GAP, session_date, third_friday
from nqexp.data import db
from nqexp.data.sqlcheck import check_no_lookahead, parse_header, require_keys, strip_comments
from nqexp.errors import DataError, SqlError

log = logging.getLogger(__name__)

SUPPORTED_FREQS = (1, 5)
REQUIRED_HEADER = ("purpose", "grain", "inputs", "params", "lookahead")
SESSIONS_FILE = "_sessions"
ROLL_COLUMNS = ("ts", "from_contract", "to_contract", "from_instrument_id", "to_instrument_id", "ratio", "method",
                "z", "expiry")

# Price-jump roll detection (docs/rolls_and_sessions.md §6). Equity-index futures (NQ, ES, YM, RTY)
# expire on the third Friday of March, June, September and December; vendors splice their
# continuous files anywhere from about two weeks before expiry to the expiry itself.
ROLL_MONTHS = (3, 6, 9, 12)
ROLL_WINDOW_DAYS = 15          # a window is the sessions dated [expiry - 15 days, expiry]
ROLL_SCAN_MARGIN_DAYS = 5      # scanned on each side too, so sigma has two sessions around every bar
PRICE_JUMP_Z_MIN = 10.0        # |z| a splice needs; noise stays below ~7 on the demo (untraded minutes), ~2 on FirstRate NQ
PRICE_JUMP_MARGIN = 2.0        # and it must beat every other plausible candidate of its window by this factor
# ln R = ln(F_new / F_old) ~ (r - q) x 0.25 years: +0.5% to +1.3% in normal rate years, about -0.3% to
# +0.1% when rates were near zero. Wider than that, a jump is a market move, not a calendar spread.
PRICE_JUMP_LOG_RATIO = (-0.01, 0.02)
PRICE_JUMP_CANDIDATES = 8      # candidates kept per window by sql/bars/rolls_price_jump.sql
QUARTER_DAYS = 92              # a continuous series longer than this without a roll gets a warning


@dataclass
class BarsReport:
    """What one build_bars call produced."""

    symbol: str
    mode: str                       # 'continuous' or 'per_contract'
    source_rows: int                # 1-minute bars in the spliced raw series
    rolls: pd.DataFrame             # the rolls used (ROLL_COLUMNS)
    rows: dict[int, int] = field(default_factory=dict)      # freq_minutes -> rows written
    flagged: dict[int, dict[str, int]] = field(default_factory=dict)  # freq -> {gap, outlier, roll, session_start}
    warnings: list[str] = field(default_factory=list)       # what the roll detection could not decide
    seconds: float = 0.0

    def summary(self) -> str:
        parts = [f"{freq}m: {n:,} bars" for freq, n in sorted(self.rows.items())]
        methods = self.rolls["method"].value_counts() if len(self.rolls) else {}
        how = f" ({', '.join(f'{n} {m}' for m, n in sorted(methods.items()))})" if len(methods) else ""
        return (f"{self.symbol} ({self.mode}): {self.source_rows:,} source 1m bars, {len(self.rolls)} rolls{how}; "
                + ", ".join(parts) + f" in {self.seconds:.2f}s")


def _bars_dir() -> Path:
    return db.sql_root() / "bars"


def check_sql() -> list[str]:
    """Check the header of every sql/bars/*.sql file (SqlError if one breaks it); returns their names.

    Required: purpose, grain, inputs, params, lookahead. A file whose lookahead starts with
    'none' must not read later rows (no `following`, lead() or negative lag()).
    """
    directory = _bars_dir()
    stamp = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in directory.glob("*.sql")))
    return _check_sql(directory, stamp)


@lru_cache(maxsize=8)
def _check_sql(directory: Path, stamp: tuple) -> list[str]:
    names = []
    for name, _ in stamp:
        path = directory / name
        where = f"sql/bars/{name}"
        text = path.read_text()
        header = parse_header(text)
        require_keys(header, REQUIRED_HEADER, where, "every bars file")
        if header.keys["lookahead"].lower().startswith("none"):
            check_no_lookahead(strip_comments(text), where, "a bar")
        names.append(path.stem)
    if SESSIONS_FILE not in names:
        raise SqlError(f"sql/bars/{SESSIONS_FILE}.sql is missing; bars_1m and bars_5m insert through it")
    return names


def per_contract_pattern(root: str) -> str:
    """Regex matching the per-contract series of a root ('ES' -> ESZ13, ESH4): groups month, year."""
    return "^" + re.escape(root) + "([FGHJKMNQUVXZ])([0-9]{1,2})$"


def detect_mode(con, symbol: str) -> str:
    """'continuous' when raw_bars holds the series itself, 'per_contract' when it holds contracts of that root."""
    n = con.execute("select count(*) from raw_bars where symbol = ?", [symbol]).fetchall()[0][0]
    if n:
        return "continuous"
    contracts = con.execute(
        "select count(distinct symbol) from raw_bars where regexp_full_match(symbol, ?)",
        [per_contract_pattern(symbol)],
    ).fetchall()[0][0]
    if contracts:
        return "per_contract"
    known = [r[0] for r in con.execute("select distinct symbol from raw_bars order by 1 limit 20").fetchall()]
    raise DataError(
        f"no bars for series {symbol!r} and no per-contract series of root {symbol!r} in raw_bars; "
        f"series present: {known or 'none'} (import some with `nqexp data import` or `nqexp data demo`)"
    )


def _drop_temps(con) -> None:
    for name, kind in con.execute(
        "select table_name, table_type from information_schema.tables "
        "where table_name in ('_bars_priced', '_src_1m', '_segments', '_et_years', '_series', '_rolls_new', "
        "'_roll_windows', '_jump_candidates')"
    ).fetchall():
        con.execute(f"drop {'view' if kind == 'VIEW' else 'table'} if exists {name}")


def _prepare_source(con, symbol: str, mode: str) -> int:
    check_sql()
    _drop_temps(con)
    if mode == "continuous":
        years = con.execute("select year(min(ts)), year(max(ts)) from raw_bars where symbol = ?", [symbol]).fetchall()[0]
    else:
        years = con.execute(
            "select year(min(ts)), year(max(ts)) from raw_bars where regexp_full_match(symbol, ?)",
            [per_contract_pattern(symbol)],
        ).fetchall()[0]
    db.run_sql(con, "bars/et_years", first_year=int(years[0]), last_year=int(years[1]))
    if mode == "continuous":
        con.execute("create or replace temp table _series (symbol varchar)")
        con.execute("insert into _series values (?)", [symbol])
        db.run_sql(con, "bars/source_continuous")
    else:
        db.run_sql(con, "bars/source_per_contract", pattern=per_contract_pattern(symbol))
    return con.execute("select count(*) from _src_1m").fetchall()[0][0]


@dataclass
class RollWarning:
    """One thing the roll detection could not decide; `expiry` is None for the whole series."""

    expiry: object
    message: str


def preview_rolls(con, symbol: str, *, detect: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """The rolls a build of `symbol` would use (ROLL_COLUMNS) and its roll warnings; writes nothing."""
    mode = detect_mode(con, symbol)
    _prepare_source(con, symbol, mode)
    try:
        rolls, warnings = _detect_on_source(con, symbol, mode, detect=detect)
        by_id = mode != "continuous" or _has_contract_ids(con)
        warnings += _no_roll_warning(con, symbol, rolls, detect or by_id)
        return rolls, [w.message for w in warnings]
    finally:
        _drop_temps(con)


def _empty_rolls() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="datetime64[us]" if c == "ts" else object) for c in ROLL_COLUMNS})


def _detect_on_source(con, symbol: str, mode: str, *, detect: bool = True) -> tuple[pd.DataFrame, list[RollWarning]]:
    """The rolls of the prepared _src_1m and the warnings about them.

    Contract identity decides the method: per-contract input rolls by volume crossover,
    continuous input with instrument_id or contract codes where they change; only a continuous
    series with neither is searched for price jumps (when `detect`).
    """
    if mode == "continuous" and not _has_contract_ids(con):
        if not detect:
            return _empty_rolls(), []
        return _detect_price_jumps(con, symbol)
    db.run_sql(con, "bars/rolls_instrument" if mode == "continuous" else "bars/rolls_volume")
    if con.execute("select count(*) filter (where runs_overlap) from _rolls_new").fetchall()[0][0]:
        # A contract came back after a roll (a roll back): per-contract runs overlap, so walk bar by bar.
        db.run_sql(con, "bars/rolls_instrument_windowed")
    rolls = con.execute(
        f"select {', '.join(ROLL_COLUMNS[:-2])}, null::double as z, null::date as expiry from _rolls_new order by ts"
    ).df()
    con.execute("drop table if exists _rolls_new")
    return rolls, []


def _has_contract_ids(con) -> bool:
    return bool(con.execute(
        "select count(*) from (select 1 from _src_1m where instrument_id is not null or contract is not null limit 1)"
    ).fetchall()[0][0])


def roll_windows(first_ts, last_ts) -> pd.DataFrame:
    """The quarterly roll windows that overlap a series spanning [first_ts, last_ts] (UTC bar starts).

    One row per expiry: first_session / last_session (the window's session dates, from
    ROLL_WINDOW_DAYS before the expiry to the expiry), scan_start / scan_end (the UTC span read
    for it, ROLL_SCAN_MARGIN_DAYS wider on each side) and `partial` (the data starts or ends
    inside the window).
    """
    first, last = session_date(first_ts), session_date(last_ts)
    rows = []
    for year in range(first.year, last.year + 2):
        for month in ROLL_MONTHS:
            expiry = third_friday(year, month)
            start = expiry - dt.timedelta(days=ROLL_WINDOW_DAYS)
            if expiry < first or start > last:
                continue
            rows.append({
                "expiry": expiry, "first_session": start, "last_session": expiry,
                "scan_start": pd.Timestamp(start - dt.timedelta(days=ROLL_SCAN_MARGIN_DAYS)),
                "scan_end": pd.Timestamp(expiry + dt.timedelta(days=ROLL_SCAN_MARGIN_DAYS + 1)),
                "partial": first > start or last < expiry,
            })
    columns = ["expiry", "first_session", "last_session", "scan_start", "scan_end", "partial"]
    return pd.DataFrame(rows, columns=columns)


def _pct(log_ratio: float) -> str:
    return f"{100 * log_ratio:+.3f}%"


def _detect_price_jumps(con, symbol: str) -> tuple[pd.DataFrame, list[RollWarning]]:
    """One 'price_jump' roll per roll window with a clear splice, a RollWarning per window without one."""
    first_ts, last_ts = con.execute("select min(ts), max(ts) from _src_1m").fetchall()[0]
    windows = roll_windows(first_ts, last_ts)
    if windows.empty:
        return _empty_rolls(), []
    stage = windows.drop(columns="partial").astype({"scan_start": "datetime64[us]", "scan_end": "datetime64[us]"})
    con.register("_windows_stage", stage)
    try:
        con.execute("create or replace temp table _roll_windows as select * from _windows_stage")
    finally:
        con.unregister("_windows_stage")
    db.run_sql(con, "bars/rolls_price_jump", top_k=PRICE_JUMP_CANDIDATES)
    cands = con.execute("select expiry, rank, ts, z, ratio from _jump_candidates order by expiry, rank").df()
    con.execute("drop table if exists _jump_candidates")
    cands["expiry"] = pd.to_datetime(cands["expiry"]).dt.date
    lo, hi = PRICE_JUMP_LOG_RATIO
    rolls, warnings, empty = [], [], []
    for w in windows.itertuples():
        c = cands[cands["expiry"] == w.expiry]
        where = f"the roll window before the {w.expiry} expiry (sessions {w.first_session}..{w.last_session})"
        if w.partial:
            where += f"; the data covers only {max(session_date(first_ts), w.first_session)}.." \
                     f"{min(session_date(last_ts), w.last_session)} of it"
        if c.empty:
            empty.append(w.expiry)
            continue
        log_r = np.log(c["ratio"].to_numpy(float))
        plausible = c[(log_r >= lo) & (log_r <= hi)]
        best = plausible.iloc[0] if len(plausible) else c.iloc[0]
        best_desc = f"{best['ts']:%Y-%m-%d %H:%M} UTC (z {best['z']:.1f}, jump {_pct(np.log(best['ratio']))})"
        if not len(plausible) or abs(best["z"]) < PRICE_JUMP_Z_MIN:
            warnings.append(RollWarning(w.expiry, (
                f"{symbol}: no clear roll splice in {where}: the best candidate is {best_desc}; a splice needs "
                f"|z| >= {PRICE_JUMP_Z_MIN:g} and a jump in [{_pct(lo)}, {_pct(hi)}]. Left unadjusted there; if the "
                "series rolled in this window, give the roll with --rolls FILE")))
            continue
        rivals = plausible.iloc[1:]
        rivals = rivals[rivals["z"].abs() * PRICE_JUMP_MARGIN > abs(best["z"])]
        if len(rivals):
            r = rivals.iloc[0]
            warnings.append(RollWarning(w.expiry, (
                f"{symbol}: two candidate roll splices in {where}: {best_desc} and "
                f"{r['ts']:%Y-%m-%d %H:%M} UTC (z {r['z']:.1f}, jump {_pct(np.log(r['ratio']))}); neither is "
                "taken. Give the roll with --rolls FILE")))
            continue
        rolls.append({"ts": best["ts"], "from_contract": None, "to_contract": None, "from_instrument_id": None,
                      "to_instrument_id": None, "ratio": float(best["ratio"]), "method": "price_jump",
                      "z": float(best["z"]), "expiry": w.expiry})
    if empty:   # a hole in the data, one line for all of them
        span = f"the {empty[0]} expiry" if len(empty) == 1 else f"the {len(empty)} expiries {empty[0]} to {empty[-1]}"
        warnings.append(RollWarning(None, f"{symbol}: no bars in the roll window(s) before {span}; "
                                          "no roll can be detected there"))
    out = pd.DataFrame(rolls, columns=list(ROLL_COLUMNS)) if rolls else _empty_rolls()
    return out, warnings


def read_rolls_file(path) -> pd.DataFrame:
    """A CSV of rolls -> DataFrame(ts, ratio), sorted by ts.

    Columns (header required, case-insensitive): `ts` (or timestamp/datetime/time/date: the first
    bar of the new contract, UTC unless it carries an offset) and either `ratio` (R = P_new /
    P_old) or `old` and `new` (or old_price/new_price: the two contracts' prices at the roll).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such rolls file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the rolls file as CSV ({str(exc).splitlines()[0]})") from None
    cols = {str(c).strip().lower(): c for c in df.columns}

    def pick(*names):
        return next((cols[n] for n in names if n in cols), None)

    ts_col = pick("ts", "timestamp", "datetime", "time", "date")
    ratio_col = pick("ratio")
    old_col, new_col = pick("old", "old_price"), pick("new", "new_price")
    if ts_col is None or (ratio_col is None and (old_col is None or new_col is None)):
        raise DataError(f"{path}: a rolls file needs a header with ts and ratio, or ts, old and new; "
                        f"it has {list(map(str, df.columns))}")
    if df.empty:
        raise DataError(f"{path}: the rolls file has no rows")
    ts = pd.to_datetime(df[ts_col].str.strip(), format="ISO8601", errors="coerce", utc=True)
    if ratio_col is not None:
        ratio = pd.to_numeric(df[ratio_col], errors="coerce")
    else:
        ratio = pd.to_numeric(df[new_col], errors="coerce") / pd.to_numeric(df[old_col], errors="coerce")
    bad = ts.isna() | ~np.isfinite(ratio.to_numpy(float)) | ~(ratio > 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: row {i + 1}: need a timestamp and a positive ratio (or prices), got "
                        f"{df.iloc[i].to_dict()}")
    out = pd.DataFrame({"ts": ts.dt.tz_localize(None).astype("datetime64[us]"), "ratio": ratio.astype(float)})
    if out["ts"].duplicated().any():
        raise DataError(f"{path}: two rolls at {out.loc[out['ts'].duplicated(), 'ts'].iloc[0]}")
    return out.sort_values("ts", ignore_index=True)


def _apply_ratios(rolls: pd.DataFrame, ratios) -> pd.DataFrame:
    """Replace detected ratios with given ones (e.g. the demo generator's exact ratios)."""
    given = pd.Series(ratios, dtype=float) if not isinstance(ratios, pd.Series) else ratios.astype(float)
    given.index = pd.to_datetime(given.index).astype("datetime64[us]")
    detected = pd.DatetimeIndex(rolls["ts"]).astype("datetime64[us]")
    unknown = given.index.difference(detected)
    if len(unknown):
        raise DataError(
            f"ratio given for {unknown[0]}, which is not a detected roll; detected rolls: "
            f"{[str(t) for t in detected[:5]]}{' ...' if len(detected) > 5 else ''}"
        )
    if not (given > 0).all():
        raise DataError(f"roll ratios must be > 0; got {given[~(given > 0)].iloc[0]!r}")
    out = rolls.copy()
    hit = detected.isin(given.index)
    out.loc[hit, "ratio"] = given.reindex(detected[hit]).to_numpy()
    out.loc[hit, "method"] = out.loc[hit, "method"] + "+given_ratio"
    return out


def _merge_given(con, rolls: pd.DataFrame, warnings: list[RollWarning], given: pd.DataFrame,
                 by_id: bool) -> tuple[pd.DataFrame, list[RollWarning]]:
    """Apply given rolls (ts, ratio). Where contract ids say where the rolls are, a given roll must be
    one of them and only sets its ratio; otherwise it replaces the detected roll of its window
    (and that window's warning), or is added."""
    if by_id:
        return _apply_ratios(rolls, given.set_index("ts")["ratio"]), warnings
    first_ts, last_ts = con.execute("select min(ts), max(ts) from _src_1m").fetchall()[0]
    outside = given[(given["ts"] <= first_ts) | (given["ts"] > last_ts)]
    if len(outside):
        raise DataError(f"given roll at {outside['ts'].iloc[0]} is outside the series' bars "
                        f"({first_ts} to {last_ts} UTC); a roll is the first bar of the new contract")
    windows = roll_windows(first_ts, last_ts)
    rows, expiries = [], set()
    for g in given.itertuples():
        day = session_date(g.ts)
        hit = windows[(windows["first_session"] <= day) & (windows["last_session"] >= day)]
        expiry = hit["expiry"].iloc[0] if len(hit) else None
        expiries.add(expiry)
        rows.append({"ts": g.ts, "from_contract": None, "to_contract": None, "from_instrument_id": None,
                     "to_instrument_id": None, "ratio": float(g.ratio), "method": "given", "z": None,
                     "expiry": expiry})
    near = pd.Series(False, index=rolls.index)
    for ts in given["ts"]:
        near |= (pd.to_datetime(rolls["ts"]) - ts).abs() <= pd.Timedelta(days=ROLL_WINDOW_DAYS)
    keep = rolls[~(rolls["expiry"].isin(expiries - {None}) | near)]
    merged = pd.concat([keep, pd.DataFrame(rows, columns=list(ROLL_COLUMNS))], ignore_index=True)
    merged = merged.sort_values("ts", ignore_index=True)
    return merged, [w for w in warnings if w.expiry is None or w.expiry not in expiries]


def _store_rolls(con, symbol: str, rolls: pd.DataFrame, warnings: list[RollWarning]) -> None:
    stage = rolls.assign(symbol=symbol)
    stage["ts"] = pd.to_datetime(stage["ts"]).astype("datetime64[us]")
    stage["from_instrument_id"] = pd.array(stage["from_instrument_id"], dtype="Int64")
    stage["to_instrument_id"] = pd.array(stage["to_instrument_id"], dtype="Int64")
    stage["from_contract"] = stage["from_contract"].astype(object)
    stage["to_contract"] = stage["to_contract"].astype(object)
    stage["ratio"] = stage["ratio"].astype(float)
    stage["z"] = pd.to_numeric(stage["z"]).astype(float)
    stage["expiry"] = pd.to_datetime(stage["expiry"]).astype("datetime64[us]")
    notes = pd.DataFrame({"symbol": symbol, "expiry": pd.to_datetime([w.expiry for w in warnings]).astype("datetime64[us]"),
                          "message": [w.message for w in warnings]})
    con.register("_rolls_stage", stage)
    con.register("_warnings_stage", notes)
    try:
        con.execute("delete from rolls where symbol = ?", [symbol])
        con.execute(
            "insert into rolls (symbol, ts, from_contract, to_contract, from_instrument_id, to_instrument_id, "
            "ratio, method, z, expiry) "
            "select symbol, ts, from_contract::varchar, to_contract::varchar, from_instrument_id, to_instrument_id, "
            "ratio, method, z, expiry::date from _rolls_stage order by ts"
        )
        con.execute("delete from roll_warnings where symbol = ?", [symbol])
        con.execute("insert into roll_warnings (symbol, expiry, message) "
                    "select symbol, expiry::date, message from _warnings_stage")
    finally:
        con.unregister("_rolls_stage")
        con.unregister("_warnings_stage")


def _insert_bars(con, table: str, symbol: str) -> None:
    """bars/<table> defines _bars_priced; the shared bars/_sessions select over it fills `table`."""
    import duckdb

    db.run_sql(con, f"bars/{table}")
    # The target's own columns, by name: bars_1m has no n_bars, which _sessions also returns.
    cols = ", ".join(r[0] for r in con.execute(
        "select column_name from information_schema.columns where table_name = ? and table_schema = current_schema() "
        "order by ordinal_position", [table]).fetchall())
    select = db.read_sql(f"bars/{SESSIONS_FILE}")
    try:
        con.execute(f"insert into {table} ({cols}) select {cols} from (\n{select}\n) order by ts", {"symbol": symbol})
    except duckdb.Error as exc:
        raise SqlError(f"sql/bars/{SESSIONS_FILE}.sql into {table} failed: {str(exc).splitlines()[0]}") from None
    finally:
        con.execute("drop view if exists _bars_priced")


def build_bars(con, symbol: str, freq_minutes=(1, 5), *, ratios=None, given_rolls=None,
               detect: bool = True) -> BarsReport:
    """Build (or rebuild) rolls and the back-adjusted bars_1m / bars_5m of one continuous series.

    `symbol` is a continuous series in raw_bars ('NQ.v.0', 'NQ.demo', 'NQ') or, for
    per-contract data, the root ('ES' uses every series named like ESZ13 / ESH4). Rolls come
    from the data: contract ids, the volume crossover, or (a continuous series without ids, when
    `detect`) price jumps in the roll windows. `ratios` ({roll ts: R} or a Series) replaces the
    measured ratio of those rolls (e.g. with the demo generator's exact ones; method gets
    '+given_ratio'). `given_rolls` (DataFrame ts, ratio; see read_rolls_file) supplies rolls: for a
    series with contract ids they must be detected rolls and set their ratio, like `ratios`;
    without ids each replaces the detected roll of its window or adds one (method 'given').
    Everything for `symbol` is replaced in one transaction, so a failed build leaves the old
    bars intact. What the detection could not decide is in the report's `warnings` and in
    roll_warnings.
    """
    t0 = time.perf_counter()
    freqs = tuple(sorted({int(f) for f in freq_minutes}))
    unknown = [f for f in freqs if f not in SUPPORTED_FREQS]
    if not freqs or unknown:
        raise DataError(f"bar frequency {unknown or list(freq_minutes)} minutes is not supported; use 1 and/or 5")
    mode = detect_mode(con, symbol)
    n_src = _prepare_source(con, symbol, mode)
    try:
        used, warnings = _detect_on_source(con, symbol, mode, detect=detect)
        by_id = mode != "continuous" or _has_contract_ids(con)
        if given_rolls is not None and len(given_rolls):
            used, warnings = _merge_given(con, used, warnings, given_rolls, by_id)
        if ratios is not None:
            used = _apply_ratios(used, ratios)
        used, gap_warnings = _break_rolls_across_gaps(con, used)
        warnings += gap_warnings + _no_roll_warning(con, symbol, used, detect or by_id)
    except Exception:
        _drop_temps(con)
        raise
    report = BarsReport(symbol=symbol, mode=mode, source_rows=n_src, rolls=used,
                        warnings=[w.message for w in warnings])
    try:
        with db.transaction(con, f"building bars for {symbol}"):
            _store_rolls(con, symbol, used, warnings)
            db.run_sql(con, "bars/segments", symbol=symbol)
            for freq in freqs:
                table = f"bars_{freq}m"
                con.execute(f"delete from {table} where symbol = ?", [symbol])
                _insert_bars(con, table, symbol)
                covered = con.execute(
                    f"select coalesce(sum({'n_bars' if freq > 1 else '1'}), 0) from {table} where symbol = ?", [symbol]
                ).fetchall()[0][0]
                if covered != n_src:
                    # A bar whose contract matches no segment would otherwise vanish silently.
                    raise DataError(
                        f"{table} for {symbol} covers {covered:,} of {n_src:,} source bars: some bars' contract "
                        "matches no roll segment (instrument_id/contract missing on some rows?)"
                    )
    finally:
        with contextlib.suppress(duckdb.Error):     # a fatal write error may leave nothing to drop
            _drop_temps(con)
    for freq in freqs:
        row = con.execute(
            f"select count(*), count(*) filter (where gap_flag), count(*) filter (where outlier_flag), "
            f"count(*) filter (where roll_flag), count(*) filter (where is_session_start) "
            f"from bars_{freq}m where symbol = ?", [symbol],
        ).fetchall()[0]
        report.rows[freq] = int(row[0])
        report.flagged[freq] = {"gap": int(row[1]), "outlier": int(row[2]), "roll": int(row[3]),
                                "session_start": int(row[4])}
    report.seconds = time.perf_counter() - t0
    log.info("built bars %s", report.summary())
    for message in report.warnings:   # the report carries them to the caller, who shows them
        log.info("roll warning: %s", message)
    return report


def _break_rolls_across_gaps(con, rolls: pd.DataFrame) -> tuple[pd.DataFrame, list[RollWarning]]:
    """A roll whose previous source bar is more than calendar.SEGMENT_GAP earlier is not measured:
    its two closes are years of price moves apart, not one contract's spread (Lean ES has ESH14 ->
    ESH20 across six missing years, which a volume crossover would turn into a +58% "ratio"). Its
    ratio becomes 1 (method `+gap_break`) and a warning names the gap; the series is two segments there."""
    if rolls.empty:
        return rolls, []
    out, warnings = rolls.copy(), []
    for i, row in enumerate(out.itertuples(index=False)):
        prev = con.execute("select max(ts) from _src_1m where ts < ?", [row.ts]).fetchall()[0][0]
        if prev is None or pd.Timestamp(row.ts) - pd.Timestamp(prev) <= SEGMENT_GAP:
            continue
        days = (pd.Timestamp(row.ts) - pd.Timestamp(prev)) / pd.Timedelta(days=1)
        out.iloc[i, out.columns.get_loc("ratio")] = 1.0
        out.iloc[i, out.columns.get_loc("method")] = f"{row.method}+gap_break"
        warnings.append(RollWarning(row.expiry, (
            f"roll {row.from_contract or row.from_instrument_id} -> {row.to_contract or row.to_instrument_id} at "
            f"{row.ts} is not applied: the data has a gap of {days:.0f} days before it ({prev} .. {row.ts}); "
            f"the series is split into two segments there, and no window or target crosses the gap")))
    return out, warnings


def _no_roll_warning(con, symbol: str, rolls: pd.DataFrame, detected: bool) -> list[RollWarning]:
    """A series longer than a quarter holds at least one roll; none means its splices stay in the returns."""
    if len(rolls):
        return []
    first_ts, last_ts = con.execute("select min(ts), max(ts) from _src_1m").fetchall()[0]
    days = (last_ts - first_ts) / pd.Timedelta(days=1)
    if days <= QUARTER_DAYS:
        return []
    why = "" if detected else " (roll detection is off)"
    return [RollWarning(None, (
        f"{symbol} spans {days:.0f} days ({first_ts:%Y-%m-%d} to {last_ts:%Y-%m-%d}), more than a quarter, but has "
        f"no roll{why}: it stays unadjusted, so every roll's splice jump stays in its returns. Give the rolls "
        "with --rolls FILE, or import a file with instrument_id or contract columns"))]


def stored_rolls(con, symbol: str) -> tuple[pd.DataFrame, list[str]]:
    """The rolls the last bars build of `symbol` used (ROLL_COLUMNS) and its roll warnings."""
    rolls = con.execute(f"select {', '.join(ROLL_COLUMNS)} from rolls where symbol = ? order by ts", [symbol]).df()
    rolls["expiry"] = pd.to_datetime(rolls["expiry"]).dt.date
    rolls = rolls.astype(object).where(rolls.notna(), None)   # missing ids/z as None, not pd.NA
    notes = [r[0] for r in con.execute(
        "select message from roll_warnings where symbol = ? order by expiry nulls last", [symbol]).fetchall()]
    return rolls, notes


def is_built(con, symbol: str) -> bool:
    """Whether bars_1m holds a build of `symbol`."""
    return bool(con.execute("select count(*) from (select 1 from bars_1m where symbol = ? limit 1)",
                            [symbol]).fetchall()[0][0])


def series_names(con) -> list[str]:
    """The series `build_bars` can take: continuous symbols in raw_bars, and the root of per-contract ones (ESZ13 -> ES)."""
    names = [r[0] for r in con.execute("select distinct symbol from raw_bars order by 1").fetchall()]
    out = set()
    for name in names:
        m = re.fullmatch(r"([A-Z0-9]{1,4}?)[FGHJKMNQUVXZ][0-9]{1,2}", name)
        out.add(m.group(1) if m and m.group(1) not in names else name)
    return sorted(out)


def default_symbol(con) -> str:
    """The only series in the store; DataError (one line, listing them) when there are none or several."""
    names = series_names(con)
    if len(names) == 1:
        return names[0]
    if not names:
        raise DataError("no bars in the database; import some with `nqexp data import` or `nqexp data demo`")
    raise DataError(f"the database holds {len(names)} series ({', '.join(names)}); say which with --symbol")


def stale_freqs(con, symbol: str, freq_minutes=SUPPORTED_FREQS) -> list[int]:
    """The frequencies among `freq_minutes` whose bars of `symbol` are missing or behind raw_bars (read-only)."""
    raw = con.execute("select count(*), max(ts) from raw_bars where symbol = ?", [symbol]).fetchall()[0]
    stale = []
    for freq in sorted({int(f) for f in freq_minutes}):
        # A 5m bar covers n_bars source bars and is stamped at its bucket start.
        built = con.execute(
            f"select coalesce(sum({'n_bars' if freq > 1 else '1'}), 0), max(ts), "
            f"time_bucket(interval {freq} minutes, ?::timestamp) from bars_{freq}m where symbol = ?",
            [raw[1], symbol]).fetchall()[0]
        if built[0] and (raw[0] == 0 or (raw[0] == built[0] and built[1] == built[2])):
            continue                      # per-contract roots have no raw rows of their own
        stale.append(freq)
    return stale


def ensure_bars(con, symbol: str, freq_minutes=SUPPORTED_FREQS):
    """Build the bars of `symbol` at `freq_minutes` that are missing or behind raw_bars; the BarsReport or None.

    Only the stale frequencies are built: a feature set on 5-minute bars never waits for
    bars_1m (`nqexp features build` right after `nqexp data bars --freq 5m` builds nothing).
    """
    stale = stale_freqs(con, symbol, freq_minutes)
    if not stale:
        return None
    report = build_bars(con, symbol, stale)
    for message in report.warnings:   # an implicit build (features, runs): nobody else shows them
        log.warning("%s", message)
    return report


def bars_summary(con, symbol: str | None = None) -> dict:
    """For `nqexp data info`: per series and frequency, rows, range, sessions and flagged bars; rolls.

    Returns {'bars': DataFrame, 'rolls': DataFrame, 'flagged': DataFrame}; empty frames when
    nothing was built yet.
    """
    where = "where symbol = $symbol" if symbol else ""
    params = {"symbol": symbol} if symbol else {}
    parts = []
    for freq in SUPPORTED_FREQS:
        parts.append(
            f"""
            select symbol, {freq} as freq_minutes, count(*) as bars, min(ts) as first_ts, max(ts) as last_ts,
                count(distinct session_date) as sessions,
                count(*) filter (where is_rth) as rth_bars,
                count(*) filter (where gap_flag) as gap_bars,
                count(*) filter (where outlier_flag) as outlier_bars,
                count(*) filter (where roll_flag) as roll_bars,
                count(distinct contract) as contracts
            from bars_{freq}m {where} group by symbol
            """
        )
    bars = con.execute(" union all ".join(parts) + " order by symbol, freq_minutes", params).df()
    rolls = con.execute(
        f"select symbol, ts, from_contract, to_contract, ratio, method, z from rolls {where} order by symbol, ts", params
    ).df()
    flagged = con.execute(
        f"""
        select symbol, 5 as freq_minutes, ts, session_date, close, minutes_since_prev,
            gap_flag, outlier_flag, roll_flag
        from bars_5m {where} {'and' if where else 'where'} (gap_flag or outlier_flag or roll_flag)
        order by symbol, ts desc limit 50
        """,
        params,
    ).df()
    return {"bars": bars, "rolls": rolls, "flagged": flagged}


def bars_fingerprint(con, bars_table: str, symbol: str) -> str:
    """Row count, first/last ts and an order-free hash of every bar field the features read.

    `raw_close` (read by the shipped sets since docs/features.md §13) is left out so existing
    fingerprints stay valid: close = raw_close x adj_factor, so it cannot change without close.
    """
    row = con.execute(
        """
        select
            count(*),
            min(ts)::varchar,
            max(ts)::varchar,
            bit_xor(hash(ts, open, high, low, close, volume, session_date, minute_of_day_et, is_rth,
                         minutes_since_prev, is_session_start, roll_flag)),
        from query_table($bars_table::varchar)
        where symbol = $symbol::varchar
        """,
        {"bars_table": bars_table, "symbol": symbol},
    ).fetchall()[0]
    return f"{row[0]}|{row[1]}|{row[2]}|{row[3]}"


def bars_provenance(con_or_db, symbol: str, freq_minutes: int) -> dict[str, Any] | None:
    """Fingerprint of the bars a run reads: row count, first/last ts, the exact sum of closes and
    the order-free hash of every field that bars_fingerprint (feature builds) records."""

    table = f"bars_{int(freq_minutes)}m"
    own = not hasattr(con_or_db, "execute")
    try:
        con = db.connect(con_or_db, read_only=True) if own else con_or_db
    except Exception:
        return None
    try:
        out = {"symbol": symbol, "table": table, "rows": 0, "first_ts": None, "last_ts": None,
               "close_sum": None, "fingerprint": None}
        if not db.table_exists(con, table):
            return out
        # decimal: an exact sum, the same whatever order DuckDB's threads add the rows in.
        rows, first, last, close_sum = con.execute(
            f"select count(*), min(ts)::varchar, max(ts)::varchar, sum(close::decimal(18, 6))::varchar "
            f"from {table} where symbol = ?", [symbol]).fetchall()[0]
        out.update(rows=int(rows), first_ts=first, last_ts=last, close_sum=close_sum)
        if rows:
            # The value feature_builds.bars_fingerprint holds: a run can be matched to its feature build.
            out["fingerprint"] = bars_fingerprint(con, table, symbol)
        return out
    except Exception:
        return None
    finally:
        if own:
            con.close()


# ------------------------------------------------------------------------------------------
# Reads of the built bars (for `nqexp predict`, which forecasts from the tail of a series)


def bar_count(con, table: str, symbol: str) -> int:
    """Bars of `symbol` in `table` (0 when the table does not exist)."""
    if not db.table_exists(con, table):
        return 0
    return int(con.execute(f"select count(*) from {table} where symbol = ?", [symbol]).fetchall()[0][0])


def ts_span(con, table: str, symbol: str, session_dates=None) -> tuple:
    """(first ts, last ts) of the symbol's bars, or of those whose session date is in the given
    inclusive (first, last) range; (None, None) when there are none."""
    if session_dates is None:
        return tuple(con.execute(f"select min(ts), max(ts) from {table} where symbol = ?", [symbol]).fetchall()[0])
    d0, d1 = session_dates
    return tuple(con.execute(f"select min(ts), max(ts) from {table} where symbol = ? and session_date between ? and ?",
                             [symbol, d0, d1]).fetchall()[0])


def ts_before(con, table: str, symbol: str, ts, back: int = 0):
    """ts of the bar `back` bars before the last bar at or before `ts` (0: that bar); None if none."""
    rows = con.execute(f"select ts from {table} where symbol = ? and ts <= ? order by ts desc limit 1 offset ?",
                       [symbol, ts, int(back)]).fetchall()
    return rows[0][0] if rows else None


def ts_after(con, table: str, symbol: str, ts, ahead: int):
    """ts of the `ahead`-th bar after `ts` (1: the next bar); None when the series ends sooner."""
    rows = con.execute(f"select ts from {table} where symbol = ? and ts > ? order by ts limit 1 offset ?",
                       [symbol, ts, int(ahead) - 1]).fetchall()
    return rows[0][0] if rows else None


def calendar_columns(con, table: str, symbol: str, start, end) -> dict:
    """ts, close, session_date and minute_of_day_et of the bars in [start, end], in time order (numpy)."""
    return con.execute(f"select ts, close, session_date, minute_of_day_et from {table} "
                       f"where symbol = ? and ts between ? and ? order by ts", [symbol, start, end]).fetchnumpy()


@contextlib.contextmanager
def range_copy(con, table: str, symbol: str, start, end, name: str = "_nqexp_bars_range"):
    """A temporary table holding the symbol's bars in [start, end] (dropped on exit): a feature set's own
    SQL can run over it exactly as over the full table."""
    con.execute(f"create or replace temp table {name} as select * from {table} "
                f"where symbol = ? and ts between ? and ?", [symbol, start, end])
    try:
        yield name
    finally:
        con.execute(f"drop table if exists {name}")

