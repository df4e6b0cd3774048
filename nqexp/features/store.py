"""Build a feature set into a versioned DuckDB table, and load it back as arrays.

`build` writes the result of `engine.compute` chunk by chunk (the features as REAL: load_arrays hands
out float32 anyway) to `features_<set>_<symbol slug>_<symbol hash>_<sql hash>` and records it in
`feature_builds` (003_features.sql); it is rebuilt only when the SQL hash or the bars fingerprint
changes. The slug alone would give `NQ.demo` and `nq-demo` one table, so the name carries a hash of
the exact symbol, and the table's comment records the symbol: a cached table is used only for its
own series. This module owns the feature tables: nothing else writes SQL against them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from nqexp.data import bars, db
from nqexp.data.db import table_exists
from nqexp.errors import DataError, SqlError
from nqexp.features.catalog import FeatureSet, as_set
from nqexp.features.engine import Computed, as_float64, compute_chunks, fetch_columns

log = logging.getLogger(__name__)


# Build (materialize, versioned) and load
# ---------------------------------------------------------------------------------------------

@dataclass
class BuildReport:
    set_name: str
    symbol: str
    table: str
    rows: int
    seconds: float
    rebuilt: bool        # False: the table was up to date (cached)
    reason: str          # why it was (re)built, or 'up to date'
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        what = "built" if self.rebuilt else "cached"
        return f"{self.set_name} on {self.symbol}: {what} {self.table} ({self.rows:,} rows, {self.seconds:.2f}s; {self.reason})"


def _current_build(con, set_name: str, symbol: str):
    if not table_exists(con, "feature_builds"):
        raise SqlError("table feature_builds is missing; open the database with nqexp.data.db.connect() (migration 003)")
    rows = con.execute(
        "select table_name, sql_hash, bars_fingerprint, n_rows from feature_builds where set_name = ? and symbol = ?",
        [set_name, symbol],
    ).fetchall()
    return rows[0] if rows else None


def _table_owner(con, table: str) -> str | None:
    """The symbol a feature table was built for (its comment), or None when it has none."""
    rows = con.execute("select comment from duckdb_tables() where table_name = ? and schema_name = current_schema()",
                       [table]).fetchall()
    try:
        return json.loads(rows[0][0])["symbol"] if rows and rows[0][0] else None
    except (ValueError, KeyError, TypeError):
        return None


def _output_table(fs: FeatureSet, res: Computed):
    """One chunk of the stored table: features as REAL (what load_arrays hands out anyway), the rest exact."""
    import pyarrow as pa

    arrays = {
        "ts": pa.array(res.ts),
        "session_date": pa.array(res.session_date),
        "minute_of_day_et": pa.array(res.minute_of_day_et),
        "close": pa.array(res.close),
    }
    for j, c in enumerate(res.names):
        arrays[c] = pa.array(res.X[:, j].astype(np.float32))
    for k, h in enumerate(fs.horizons):
        arrays[f"fwd_ret_{h}"] = pa.array(np.ascontiguousarray(res.targets[:, k]))
    for k, h in enumerate(fs.horizons):
        arrays[f"fwd_flag_{h}"] = pa.array(np.ascontiguousarray(res.target_flags[:, k]))
    return pa.table(arrays)


def build(con, set_name: FeatureSet | str, symbol: str, force: bool = False,
          path: str | Path | None = None) -> BuildReport:
    """Materialize the set's features and targets for `symbol` unless the table is up to date.

    `path` is the user folder of feature sets (features.path), if any. A cached table counts
    only if its comment names `symbol` exactly, so a table written for another series is
    never served as this one's.
    """
    t0 = time.perf_counter()
    fs = as_set(set_name, path)
    if not table_exists(con, fs.bars_table):
        raise DataError(f"table {fs.bars_table} does not exist; build bars first (nqexp.data.bars.build_bars)")
    fingerprint = bars.bars_fingerprint(con, fs.bars_table, symbol)
    if fingerprint.startswith("0|"):
        raise DataError(f"no bars for symbol {symbol!r} in {fs.bars_table}; build them first (nqexp.data.bars.build_bars)")
    table = fs.table_name(symbol)
    current = _current_build(con, fs.name, symbol)
    exists = table_exists(con, table)
    owner = _table_owner(con, table) if exists else None
    if current and not force and current[0] == table and current[1] == fs.sql_hash \
            and current[2] == fingerprint and exists and owner == symbol:
        return BuildReport(fs.name, symbol, table, int(current[3]), time.perf_counter() - t0, False, "up to date")
    if force:
        reason = "forced"
    elif not current:
        reason = "first build"
    elif current[1] != fs.sql_hash:
        reason = "SQL changed"
    elif current[2] != fingerprint:
        reason = "bars changed"
    elif not exists:
        reason = "table missing"
    else:
        reason = f"table {table} was not built for {symbol!r}"

    stale = [current[0]] if current and current[0] != table else []
    n_rows, timings = 0, {"write": 0.0}
    # Chunk by chunk (compute_chunks), each committed into a staging table: one transaction
    # over all chunks would hold every uncommitted row in memory. The staging table becomes
    # the build only in the last, short transaction, so a failed build changes nothing.
    staging = f"{table}__building"
    con.execute(f'drop table if exists "{staging}"')
    try:
        for res in compute_chunks(con, fs, symbol):
            for k, v in res.seconds.items():
                timings[k] = timings.get(k, 0.0) + v
            t_write = time.perf_counter()
            out = _output_table(fs, res)
            n_rows += out.num_rows
            del res
            con.register("_features_out", out)
            try:
                if n_rows == out.num_rows:
                    con.execute(f'create table "{staging}" as select * from _features_out')
                else:
                    con.execute(f'insert into "{staging}" select * from _features_out')
            finally:
                con.unregister("_features_out")
            del out
            timings["write"] += time.perf_counter() - t_write
    except BaseException as exc:
        with contextlib.suppress(duckdb.Error):       # after a fatal write error there may be nothing to drop
            con.execute(f'drop table if exists "{staging}"')
        db.raise_if_disk_full(exc, f"building features {fs.name} for {symbol}", con)
        raise
    t_commit = time.perf_counter()
    con.execute("begin transaction")
    try:
        for old in (*stale, table):
            con.execute(f'drop table if exists "{old}"')
        con.execute(f'alter table "{staging}" rename to "{table}"')
        # The table records its own series (COMMENT takes no parameter: quote by doubling).
        owner_json = json.dumps({"set": fs.name, "symbol": symbol}).replace("'", "''")
        con.execute(f"comment on table \"{table}\" is '{owner_json}'")
        con.execute("delete from feature_builds where set_name = ? and symbol = ?", [fs.name, symbol])
        con.execute(
            "insert into feature_builds (set_name, symbol, table_name, sql_hash, bars_fingerprint, bars_table,"
            " n_rows, n_features, warmup_bars, seconds) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [fs.name, symbol, table, fs.sql_hash, fingerprint, fs.bars_table, n_rows, len(fs.columns),
             fs.warmup_bars, time.perf_counter() - t0],
        )
        con.execute("commit")
    except BaseException as exc:
        with contextlib.suppress(duckdb.Error):       # a failed commit has already ended the transaction
            con.execute("rollback")
        with contextlib.suppress(duckdb.Error):
            con.execute(f'drop table if exists "{staging}"')
        db.raise_if_disk_full(exc, f"building features {fs.name} for {symbol}", con)
        raise
    timings["write"] += time.perf_counter() - t_commit
    report = BuildReport(fs.name, symbol, table, n_rows, time.perf_counter() - t0, True, reason, timings)
    log.info("%s", report.summary())
    return report


@dataclass
class FeatureArrays:
    """A feature table as contiguous arrays (the contract windows.py builds on)."""

    ts: np.ndarray                 # (N,) datetime64[us], sorted
    X: np.ndarray                  # (N, V) float32, C-contiguous, NaN in warm-up
    names: list[str]
    close: np.ndarray              # (N,) float64, adjusted
    horizons: tuple[int, ...]      # bars
    freq_minutes: int
    targets: np.ndarray            # (N, H) float64 forward log-returns, NaN where the series ends
    target_flags: np.ndarray       # (N, H) uint8: 1 session end, 2 weekend/holiday, 4 roll
    session_date: np.ndarray       # (N,) datetime64[D]
    minute_of_day_et: np.ndarray   # (N,) int16
    groups: list[str] | None = None  # group per variable (grok24)
    warmup_bars: int = 0           # leading bars whose features are still warming up
    set_name: str = ""
    symbol: str = ""


def load_arrays(con, set_name: FeatureSet | str, symbol: str, path: str | Path | None = None) -> FeatureArrays:
    """Load (building first if needed) the set's feature table for `symbol` as arrays.

    `path` is the user folder of feature sets (features.path), if any.
    """
    fs = as_set(set_name, path)
    report = build(con, fs, symbol)
    cols = fetch_columns(con, f'select * from "{report.table}"', None, f"loading {report.table}")
    ts = cols["ts"].astype("datetime64[us]")
    if len(ts) > 1 and not (np.diff(ts) > np.timedelta64(0, "us")).all():
        order = np.argsort(ts, kind="stable")   # insertion order is normally kept; never trust it blindly
        cols = {k: v[order] for k, v in cols.items()}
        ts = ts[order]
    X = np.empty((len(ts), len(fs.columns)), dtype=np.float32)                      # (N, V)
    for j, c in enumerate(fs.columns):
        X[:, j] = cols[c]
    return FeatureArrays(
        ts=ts,
        X=X,
        names=list(fs.columns),
        close=as_float64(cols["close"]),
        horizons=fs.horizons,
        freq_minutes=fs.freq_minutes,
        targets=np.column_stack([as_float64(cols[c]) for c in fs.target_names]),     # (N, H)
        target_flags=np.column_stack([cols[c].astype(np.uint8) for c in fs.flag_names]),  # (N, H)
        session_date=cols["session_date"].astype("datetime64[D]"),
        minute_of_day_et=cols["minute_of_day_et"].astype(np.int16),
        groups=list(fs.groups) if fs.groups else None,
        warmup_bars=fs.warmup_bars,
        set_name=fs.name,
        symbol=symbol,
    )


# ---------------------------------------------------------------------------------------------
