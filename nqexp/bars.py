"""Bars: raw 1-minute bars -> rolls, ratio back-adjusted continuous 1m and 5m bars with sessions.

Everything heavy runs as SQL files in `sql/bars/` (one statement each):

    et_years            ET offsets per year (a join instead of 5M ICU calls)
    source_continuous   the raw series of one continuous symbol          -> _src_1m
    source_per_contract per-contract series spliced by volume crossover  -> _src_1m
    rolls_instrument    rolls where instrument_id/contract changes      -> _rolls_new
                        (rolls_instrument_windowed if a contract reappears)
    rolls_volume        rolls of the spliced series, R from common bars -> _rolls_new
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

import logging
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd

from nqexp import db
from nqexp.errors import DataError, SqlError
from nqexp.sqlcheck import check_no_lookahead, parse_header, require_keys, strip_comments

log = logging.getLogger(__name__)

SUPPORTED_FREQS = (1, 5)
REQUIRED_HEADER = ("purpose", "grain", "inputs", "params", "lookahead")
SESSIONS_FILE = "_sessions"
ROLL_COLUMNS = ("ts", "from_contract", "to_contract", "from_instrument_id", "to_instrument_id", "ratio", "method")


@dataclass
class BarsReport:
    """What one build_bars call produced."""

    symbol: str
    mode: str                       # 'continuous' or 'per_contract'
    source_rows: int                # 1-minute bars in the spliced raw series
    rolls: pd.DataFrame             # the rolls used (ROLL_COLUMNS)
    rows: dict[int, int] = field(default_factory=dict)      # freq_minutes -> rows written
    flagged: dict[int, dict[str, int]] = field(default_factory=dict)  # freq -> {gap, outlier, roll, session_start}
    seconds: float = 0.0

    def summary(self) -> str:
        parts = [f"{freq}m: {n:,} bars" for freq, n in sorted(self.rows.items())]
        return (f"{self.symbol} ({self.mode}): {self.source_rows:,} source 1m bars, {len(self.rolls)} rolls; "
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
        "where table_name in ('_bars_priced', '_src_1m', '_segments', '_et_years', '_series', '_rolls_new')"
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


def detect_rolls(con, symbol: str) -> pd.DataFrame:
    """Detect the rolls of a series without writing anything; returns ROLL_COLUMNS sorted by ts."""
    mode = detect_mode(con, symbol)
    _prepare_source(con, symbol, mode)
    try:
        return _detect_on_source(con, mode)
    finally:
        _drop_temps(con)


def _detect_on_source(con, mode: str) -> pd.DataFrame:
    db.run_sql(con, "bars/rolls_instrument" if mode == "continuous" else "bars/rolls_volume")
    if con.execute("select count(*) filter (where runs_overlap) from _rolls_new").fetchall()[0][0]:
        # A contract came back after a roll (a roll back): per-contract runs overlap, so walk bar by bar.
        db.run_sql(con, "bars/rolls_instrument_windowed")
    rolls = con.execute(f"select {', '.join(ROLL_COLUMNS)} from _rolls_new order by ts").df()
    con.execute("drop table if exists _rolls_new")
    return rolls


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


def _store_rolls(con, symbol: str, rolls: pd.DataFrame) -> None:
    stage = rolls.assign(symbol=symbol)
    stage["from_instrument_id"] = pd.array(stage["from_instrument_id"], dtype="Int64")
    stage["to_instrument_id"] = pd.array(stage["to_instrument_id"], dtype="Int64")
    stage["ratio"] = stage["ratio"].astype(float)
    con.register("_rolls_stage", stage)
    try:
        con.execute("delete from rolls where symbol = ?", [symbol])
        con.execute(
            "insert into rolls (symbol, ts, from_contract, to_contract, from_instrument_id, to_instrument_id, ratio, method) "
            "select symbol, ts, from_contract, to_contract, from_instrument_id, to_instrument_id, ratio, method "
            "from _rolls_stage order by ts"
        )
    finally:
        con.unregister("_rolls_stage")


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


def build_bars(con, symbol: str, freq_minutes=(1, 5), *, ratios=None) -> BarsReport:
    """Build (or rebuild) rolls and the back-adjusted bars_1m / bars_5m of one continuous series.

    `symbol` is a continuous series in raw_bars ('NQ.v.0', 'NQ.demo', 'NQ') or, for
    per-contract data, the root ('ES' uses every series named like ESZ13 / ESH4). Rolls are
    always detected from the data; `ratios` ({roll ts: R} or a Series) replaces the measured
    ratio of those rolls (e.g. with the demo generator's exact ones; method gets
    '+given_ratio'). Everything for `symbol` is replaced in one transaction, so a failed build
    leaves the old bars intact.
    """
    t0 = time.perf_counter()
    freqs = tuple(sorted({int(f) for f in freq_minutes}))
    unknown = [f for f in freqs if f not in SUPPORTED_FREQS]
    if not freqs or unknown:
        raise DataError(f"bar frequency {unknown or list(freq_minutes)} minutes is not supported; use 1 and/or 5")
    mode = detect_mode(con, symbol)
    n_src = _prepare_source(con, symbol, mode)
    used = _detect_on_source(con, mode)
    if ratios is not None:
        used = _apply_ratios(used, ratios)
    report = BarsReport(symbol=symbol, mode=mode, source_rows=n_src, rolls=used)
    con.execute("begin transaction")
    try:
        _store_rolls(con, symbol, used)
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
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    finally:
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
    return report


def ensure_bars(con, symbol: str):
    """Build bars_1m/bars_5m for `symbol` when missing or behind raw_bars; returns the BarsReport or None."""
    raw = con.execute("select count(*), max(ts) from raw_bars where symbol = ?", [symbol]).fetchall()[0]
    built = con.execute("select count(*), max(ts) from bars_1m where symbol = ?", [symbol]).fetchall()[0]
    if built[0] and (raw[0] == 0 or tuple(raw) == tuple(built)):   # per-contract roots have no raw rows of their own
        return None
    return build_bars(con, symbol)


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
        f"select symbol, ts, from_contract, to_contract, ratio, method from rolls {where} order by symbol, ts", params
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
