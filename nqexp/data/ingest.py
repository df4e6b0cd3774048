"""Ingest: vendor files -> raw_bars, validated, with every rejected row kept and explained.

Reading is readers.py, row checks are validate.py; this module writes, and owns raw_bars,
rejected_bars and imports. `export_bars` writes a raw series back out as a file it imports unchanged.

A file that cannot be read as bars at all (missing, not a regular file, empty, only a header,
binary garbage, a truncated DBN, wrong columns, an extra field beyond the header, unparseable
timestamps, naive timestamps without `tz`, bars seconds apart) raises DataError and writes
nothing. Everything else is written in one transaction: the upsert into raw_bars, the rejects and
the `imports` record. Re-importing the same file changes nothing and reports `0 new, N unchanged`;
rows whose values changed at the vendor are updated and counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from nqexp.data import db
from nqexp.data.demo import DEMO_SYMBOL, DEMO_VERSION
from nqexp.data.readers import DataWarning, parse_columns, read_bars
from nqexp.data.validate import refuse_unusable, validate
from nqexp.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """What one import read and what it changed."""

    source: str
    format: str
    symbols: list[str]
    rows_read: int
    new: int = 0
    unchanged: int = 0
    changed: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.new} new, {self.unchanged} unchanged, {self.changed} changed, "
            f"{self.rejected} rejected ({self.duplicates} duplicates) of {self.rows_read} rows"
        )



# ---------------------------------------------------------------------------------------
# Writing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _raw_json(value) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return json.dumps(value, default=str)


def _factorized(values) -> tuple[np.ndarray, pd.DataFrame]:
    """Codes per row (-1 for None) and the (code, value) lookup: DuckDB scans ints fast, Python strings slowly."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes, uniques = values.cat.codes.to_numpy(), values.cat.categories
    else:
        codes, uniques = pd.factorize(values)
    lookup = pd.DataFrame({"code": np.arange(len(uniques), dtype=np.int32),
                           "value": pd.Series(np.asarray(uniques, dtype=object), dtype=object).astype(str)})
    return codes.astype(np.int32), lookup


def _sql_list(lookup: pd.DataFrame) -> str:
    """A lookup's values as a DuckDB VARCHAR[] literal (a view cannot take parameters)."""
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in lookup["value"]) + "]::varchar[]"


def write_bars(con, df: pd.DataFrame, *, fmt: str, source: str, sha256: str | None, t0: float,
               replace: bool = False) -> ImportReport:
    """Validate and upsert a parsed frame in one transaction; rejects and the import record included.

    Rows already stored with other values are updated only with `replace`; otherwise the import is
    refused (DataError, nothing written) saying how many it would change (docs/data.md §4)."""
    reason = validate(df)
    is_bad = reason.notna().to_numpy()
    good = np.flatnonzero(~is_bad)
    bad = np.flatnonzero(is_bad)
    sym, sym_lookup = _factorized(df["symbol"])
    src, src_lookup = _factorized(df["source"])
    report = ImportReport(source=source, format=fmt, symbols=sorted(sym_lookup["value"].tolist()),
                          rows_read=len(df), rejected=len(bad))
    report.reasons = reason.iloc[bad].map(lambda r: "duplicate timestamp" if r.startswith("duplicate") else r)\
        .value_counts().to_dict()
    report.duplicates = int(report.reasons.get("duplicate timestamp", 0))
    con_codes, con_lookup = _factorized(df["contract"])
    col = df["instrument_id"]
    iid = col.array if isinstance(col.dtype, pd.Int64Dtype) else pd.array(col.to_numpy(), dtype="Int64")
    iid_null = np.asarray(iid.isna())
    iid_val = np.asarray(iid.fillna(0).to_numpy(), dtype=np.int64)
    ts = df["ts"].to_numpy().astype("datetime64[us]")

    def take(a):                            # a view when every row is good (the usual large file)
        return a if not len(bad) else a[good]

    import pyarrow as pa

    # Arrow, not a DataFrame: DuckDB scans its numpy buffers without a copy.
    stage = pa.table({
        "sym": take(sym), "ts": take(ts),
        "open": take(df["open"].to_numpy()), "high": take(df["high"].to_numpy()),
        "low": take(df["low"].to_numpy()), "close": take(df["close"].to_numpy()),
        "volume": take(df["volume"].to_numpy()).astype(np.int64),
        "iid": take(iid_val), "iid_null": take(iid_null), "con": take(con_codes), "src": take(src),
    })
    if "_raw" in df:
        raw = [_raw_json(r) for r in df["_raw"].to_numpy()[bad]]
    elif len(bad) and "raw_rows" in df.attrs:
        raw = df.attrs["raw_rows"](bad)
    else:
        raw = None
    rejects = pd.DataFrame({
        "source": src_lookup["value"].to_numpy()[src[bad]] if len(bad) else np.array([], dtype=object),
        "row_number": df["row_number"].to_numpy()[bad].astype(np.int64),
        "reason": reason.to_numpy()[bad].astype(str),
        "raw": raw,
    })
    con.register("_stage", stage)
    try:
        # The good rows, typed, in file order (a projection keeps it), for every statement below;
        # the strings come from the small lookups by code.
        con.execute(
            f"""
            create or replace temp view _s as
            select list_extract({_sql_list(sym_lookup)}, st.sym + 1) as symbol, st.ts, st.open, st.high, st.low,
                st.close, st.volume, case when st.iid_null then null else st.iid end as instrument_id,
                case when st.con < 0 then null else list_extract({_sql_list(con_lookup)}, st.con + 1) end as contract,
                list_extract({_sql_list(src_lookup)}, st.src + 1) as source
            from _stage st
            """
        )
    except Exception:
        con.unregister("_stage")
        raise
    # The rows of raw_bars this file can meet: its series and time span (zone maps skip the rest).
    lo_ts, hi_ts = (take(ts).min(), take(ts).max()) if len(good) else (None, None)
    span = "r.ts between ? and ?"
    params = [] if lo_ts is None else [lo_ts.astype(object), hi_ts.astype(object)]
    con.register("_rejects", rejects)
    try:
        with db.transaction(con, f"importing {source}"):
            same = ("r.open = s.open and r.high = s.high and r.low = s.low and r.close = s.close "
                    "and r.volume = s.volume and r.instrument_id is not distinct from s.instrument_id "
                    "and r.contract is not distinct from s.contract")
            if len(good):
                counts = con.execute(
                    f"""
                    select
                        count(*) filter (where r.ts is null),
                        count(*) filter (where r.ts is not null and {same}),
                        count(*) filter (where r.ts is not null and not ({same}))
                    from _s s left join (select * from raw_bars r where {span}) r on r.symbol = s.symbol and r.ts = s.ts
                    """, params
                ).fetchall()[0]
                report.new, report.unchanged, report.changed = (int(x) for x in counts)
            if report.changed and not replace:
                raise DataError(_would_change(con, df, good, report, source, same, span, params))
            if report.changed:
                con.execute(
                    f"""
                    update raw_bars r set open = s.open, high = s.high, low = s.low, close = s.close,
                        volume = s.volume, instrument_id = s.instrument_id, contract = s.contract,
                        source = s.source, ingested_at = now()
                    from _s s where r.symbol = s.symbol and r.ts = s.ts and not ({same}) and {span}
                    """, params
                )
            if report.new == len(good) and len(good):
                # Nothing of this file is stored yet (counted above, in this transaction): a plain append.
                con.execute("insert into raw_bars (symbol, ts, open, high, low, close, volume, instrument_id, contract, "
                            "source) select * from _s")
            elif report.new:
                con.execute(
                    f"""
                    insert into raw_bars (symbol, ts, open, high, low, close, volume, instrument_id, contract, source)
                    select s.symbol, s.ts, s.open, s.high, s.low, s.close, s.volume, s.instrument_id, s.contract, s.source
                    from _s s anti join (select symbol, ts from raw_bars r where {span}) r
                        on r.symbol = s.symbol and r.ts = s.ts
                    """, params
                )
            # Re-importing a source replaces its rejects, so a second import adds no duplicates there.
            con.execute("delete from rejected_bars where list_contains(?::varchar[], source)", [src_lookup["value"].tolist()])
            con.execute("insert into rejected_bars (source, row_number, reason, raw) select source, row_number, reason, raw from _rejects")
            report.seconds = time.perf_counter() - t0
            con.execute(
                "insert into imports (source, sha256, format, symbol, rows_read, new_rows, unchanged, changed,"
                " duplicates, rejected, seconds) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [source, sha256, fmt, ",".join(report.symbols), report.rows_read, report.new, report.unchanged,
                 report.changed, report.duplicates, report.rejected, report.seconds],
            )
    finally:
        # After a fatal write error DuckDB may refuse even these; the error that got us here matters more.
        with contextlib.suppress(duckdb.Error):
            con.unregister("_rejects")
            con.execute("drop view if exists _s")
            con.unregister("_stage")
    log.info("imported %s: %s", source, report.summary())
    return report


def _would_change(con, df: pd.DataFrame, good: np.ndarray, report: ImportReport, source: str, same: str,
                  span: str, params: list) -> str:
    """The refusal of an import that would overwrite stored bars: how many, one example, and a hint
    when the file's bars are coarser than the 1-minute bars raw_bars holds."""
    ts, r_close, r_vol, s_close, s_vol = con.execute(
        f"""
        select s.ts, r.close, r.volume, s.close, s.volume from _s s join (select * from raw_bars r where {span}) r
            on r.symbol = s.symbol and r.ts = s.ts
        where not ({same}) order by s.ts limit 1
        """, params).fetchall()[0]
    t = np.unique(df["ts"].to_numpy()[good].astype("datetime64[m]").astype(np.int64))
    step = int(np.median(np.diff(t))) if len(t) > 1 else 1
    coarse = (f"; this file's bars are {step} minutes apart, coarser than the stored 1-minute bars"
              if step > 1 else "")
    return (f"{source}: this import would change {report.changed:,} stored bar(s) of "
            f"{', '.join(report.symbols)} (first: {pd.Timestamp(ts)} UTC, stored close {r_close:g} volume {r_vol}, "
            f"this file's close {s_close:g} volume {s_vol}){coarse}; nothing was written. Import it with --replace to replace them, "
            "or under another --symbol")


def import_file(con, path, *, fmt: str | None = None, tz: str | None = None, ts_is: str = "start",
                symbol: str | None = None, columns=None, replace: bool = False) -> ImportReport:
    """Read, validate and upsert one bar file into raw_bars. Idempotent: a second import changes nothing.
    Bars already stored with other values are replaced only with `replace` (else DataError, nothing written)."""
    t0 = time.perf_counter()
    path = Path(path).expanduser().absolute()
    _check_path(path)
    if isinstance(columns, str):
        columns = parse_columns(columns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        df, fmt = read_bars(path, fmt=fmt, tz=tz, ts_is=ts_is, symbol=symbol, columns=columns)
    notes = []
    for w in caught:
        if issubclass(w.category, DataWarning):
            notes.append(str(w.message))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    refuse_unusable(df, path)
    sha = _sha256(path)
    report = write_bars(con, df, fmt=fmt, source=str(path), sha256=sha, t0=t0, replace=replace)
    report.warnings = notes
    for text in notes:
        log.info("%s: %s", path, text)     # the CLI shows report.warnings; logging them too would repeat them
    return report


def import_frame(con, df: pd.DataFrame, *, source: str) -> ImportReport:
    """Validate and upsert a DataFrame of bars read by `readers.read_frame` as one import (format 'frame').

    The DataFrame path of `nqexp predict --bars` and the Python API: the same validation, rejects and
    upsert as a file import, into any connection (an in-memory database for a forecast).
    """
    return write_bars(con, df, fmt="frame", source=source, sha256=None, t0=time.perf_counter())


def import_frames(con, frames: list[pd.DataFrame], *, source: str) -> ImportReport:
    """Validate and upsert several files' frames (from `read_dbn_chunk`) as one import, in one transaction.

    A download stages its chunks this way: one upsert per batch instead of one per chunk, each with
    its own transaction and scan of raw_bars. Rejects keep their own file and row number.
    """
    t0 = time.perf_counter()
    df = pd.concat([f for f in frames if len(f)], ignore_index=True)
    for col in ("symbol", "source"):        # concat turns differing categoricals into objects
        df[col] = df[col].astype("category")
    # A download replaces what it bought before: a changed bar is the vendor's correction (docs/data.md §5).
    return write_bars(con, df, fmt="dbn", source=source, sha256=None, t0=t0, replace=True)


def _check_path(path: Path) -> None:
    """A bar file must be a readable regular file: /dev/zero or a FIFO would be read forever."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a directory; give a file")
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a device, pipe or socket); give a bar file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read it (permission denied)")


def write_demo(con, data) -> int:
    """Replace the demo series (bars and ground truth) with freshly generated data, atomically."""

    tag = f"demo:v{DEMO_VERSION}"
    bars = data.bars.assign(source=f"{tag}:seed={data.seed}" if hasattr(data, "seed") else tag)
    con.register("_demo_bars", bars)
    con.register("_demo_truth", data.truth)
    con.register("_demo_rolls", data.rolls)
    try:
        with db.transaction(con, "writing the demo series"):
            for table in ("raw_bars", "demo_truth", "demo_rolls"):
                con.execute(f"delete from {table} where symbol = ?", [DEMO_SYMBOL])
            con.execute(
                "insert into raw_bars (symbol, ts, open, high, low, close, volume, instrument_id, contract, source) "
                "select symbol, ts, open, high, low, close, volume, instrument_id, contract, source from _demo_bars"
            )
            con.execute("insert into demo_truth (symbol, ts, contract, sigma, drift, close_exact, k, h_slow, h_fast, "
                        "eps, mr) select symbol, ts, contract, sigma, drift, close_exact, k, h_slow, h_fast, eps, mr "
                        "from _demo_truth")
            con.execute("insert into demo_rolls select symbol, ts, from_contract, to_contract, ratio from _demo_rolls")
    finally:
        for name in ("_demo_bars", "_demo_truth", "_demo_rolls"):
            con.unregister(name)
    return len(bars)


# ------------------------------------------------------------------------------------------
# Export: one raw series back out as a file `import_file` reads


EXPORT_FORMATS = {".csv": "csv", ".gz": "csv", ".parquet": "parquet"}


def export_bars(con, symbol: str, path, *, overwrite: bool = False) -> int:
    """Write the raw bars of `symbol` to `path` (.csv, .csv.gz or .parquet, by its suffix); the row count.

    The file is what `nqexp data import` reads back unchanged: ts is the bar start in UTC with its
    offset (`2025-11-03T23:00:00Z`, so no --tz is needed), then open, high, low, close, volume, and
    instrument_id and contract when the series has them (so its rolls survive the round trip). It is
    written next to `path` and moved into place, so a failed export leaves no partial file.
    """
    path = Path(path)
    fmt = EXPORT_FORMATS.get(path.suffix.lower())
    if fmt is None or (path.suffix.lower() == ".gz" and not path.name.lower().endswith(".csv.gz")):
        raise DataError(f"{path}: export writes .csv, .csv.gz or .parquet files")
    if path.exists() and not overwrite:
        raise DataError(f"{path} exists; choose another name or overwrite it with --force")
    rows, ids, contracts = con.execute("select count(*), count(instrument_id), count(contract) from raw_bars "
                                       "where symbol = ?", [symbol]).fetchall()[0]
    if not rows:
        raise DataError(f"no raw bars of {symbol!r} in the database")
    ts = "timezone('UTC', ts) as ts" if fmt == "parquet" else "strftime(ts, '%Y-%m-%dT%H:%M:%SZ') as ts"
    cols = [ts, "open", "high", "low", "close", "volume"] + ["instrument_id"] * bool(ids) + ["contract"] * bool(contracts)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    options = "format parquet" if fmt == "parquet" else \
        f"format csv, header true{', compression gzip' if path.suffix.lower() == '.gz' else ''}"
    try:
        # COPY takes no parameter for its target: the path is quoted as an SQL literal.
        con.execute(f"copy (select {', '.join(cols)} from raw_bars where symbol = $symbol order by ts) "
                    f"to '{str(tmp).replace(chr(39), chr(39) * 2)}' ({options})", {"symbol": symbol})
        os.replace(tmp, path)
    except (duckdb.IOException, OSError) as exc:   # a missing folder, no permission, a full disk
        reason = str(exc).splitlines()[0].replace(str(tmp), str(path))
        raise DataError(f"{path}: cannot write the export: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return int(rows)


# ------------------------------------------------------------------------------------------
# Reads of the tables written here (raw_bars, rejected_bars, imports, demo_*), for the CLI.


def series_summary(con) -> list[dict]:
    """Per raw series: rows, first/last bar (UTC), contracts, gaps > 1 minute, gaps > 15 minutes
    inside a session, and session opens (a > 15 minute gap ending at 18:00 New York)."""
    cur = con.execute(
        """
        with b as (
            select symbol, ts, contract, instrument_id,
                date_diff('minute', lag(ts) over (partition by symbol order by ts), ts) as gap_min,
                strftime(timezone('America/New_York', ts::timestamptz), '%H:%M') as et_hm
            from raw_bars
        )
        select symbol, count(*) as rows, strftime(min(ts), '%Y-%m-%d %H:%M') as first,
            strftime(max(ts), '%Y-%m-%d %H:%M') as last,
            count(distinct coalesce(contract, instrument_id::varchar)) as contracts,
            count(*) filter (where gap_min > 1) as gaps_1m,
            count(*) filter (where gap_min > 15 and et_hm <> '18:00') as gaps_15m_in_session,
            count(*) filter (where et_hm = '18:00' and gap_min > 15) as session_opens
        from b group by symbol order by symbol
        """
    )
    return _dicts(cur)


def series_span(con, symbol: str) -> tuple[int, object, object]:
    """(rows, first ts, last ts) of one raw series; (0, None, None) when it has no bars."""
    return tuple(con.execute("select count(*), min(ts), max(ts) from raw_bars where symbol = ?", [symbol]).fetchall()[0])


def demo_is_current(con) -> bool:
    """Whether the stored demo series comes from this nqexp's generator (its source tag names the version)."""

    row = con.execute("select bool_and(source like ?) from raw_bars where symbol = ?",
                      [f"demo:v{DEMO_VERSION}%", DEMO_SYMBOL]).fetchall()[0][0]
    return bool(row)


def reject_reasons(con) -> list[tuple[str, int]]:
    """(reason, rows) over every rejected row, most frequent first."""
    return con.execute("select reason, count(*) from rejected_bars group by 1 order by 2 desc, 1").fetchall()


def rejected_rows(con, limit: int = 20) -> list[dict]:
    """The latest rejected rows: source, row_number, reason, raw (the row as read, JSON)."""
    cur = con.execute(
        "select source, row_number, reason, raw from rejected_bars "
        "order by rejected_at desc, source, row_number limit ?", [limit])
    return _dicts(cur)


def latest_imports(con, limit: int = 5) -> list[dict]:
    """The latest import calls, newest first, with what each read and changed."""
    cur = con.execute(
        "select imported_at, format, source, rows_read, new_rows, unchanged, changed, rejected from imports "
        "order by imported_at desc limit ?", [limit])
    return _dicts(cur)


def demo_roll_count(con) -> int:
    """Rolls in the demo ground truth (0 when no demo data was ever generated)."""

    if not db.table_exists(con, "demo_rolls"):
        return 0
    return int(con.execute("select count(*) from demo_rolls").fetchall()[0][0])


def _dicts(cur) -> list[dict]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def demo_truth_minutes(con, symbol: str) -> dict:
    """The demo's true sigma and drift per 1-minute bar, joined to the bars: columns ts, sigma, drift,
    minute_of_day_et and span (1 + minutes missing just before the bar in its session), in time order."""
    return con.execute(
        """
        select t.ts, t.sigma, t.drift, b.minute_of_day_et,
               case when b.is_session_start or b.minutes_since_prev is null then 1.0
                    else greatest(b.minutes_since_prev, 1.0) end as span
        from demo_truth t join bars_1m b on b.symbol = t.symbol and b.ts = t.ts
        where t.symbol = ? order by t.ts
        """,
        [symbol],
    ).fetchnumpy()


def demo_truth_state(con, symbol: str):
    """The generator's latent state after every minute (demo_truth: ts, k, h_slow, h_fast, eps, mr), in time order."""
    return con.execute("select ts, k, h_slow, h_fast, eps, mr from demo_truth where symbol = ? order by ts",
                       [symbol]).df()
