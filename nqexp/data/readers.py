"""Readers: vendor files -> one frame of parsed bar columns, plus what a reject needs to be explained.

* CSV (optionally .gz) with or without a header. Headerless files are read with the column
  order `ts,open,high,low,close,volume` unless `columns=` says otherwise; files with a header
  have their columns matched by name (timestamp/datetime/date/ts_event, open, high, low,
  close, volume/vol), or by an explicit mapping `ts=Datetime,volume=Vol`. Optional columns
  `instrument_id` and a per-row contract code (`contract`, `raw_symbol` or `symbol`, e.g. NQM6;
  a continuous symbol like NQ.v.0 is not a contract) are kept, so a continuous file that has
  them rolls exactly as a DBN does; `--columns` maps them too (`contract=Sym`). Empty trailing
  fields (a trailing comma on every line, common in vendor files) are dropped; a non-empty
  field beyond the header (or beyond `columns=`) refuses the file.
  A plain large CSV (ASCII, no quotes or blank lines, ISO timestamps of one width without offsets,
  no id columns) is parsed by DuckDB's read_csv with explicit types; any other file, or one DuckDB
  will not parse exactly as pandas would, takes the pandas path. Both give the same rows, reasons
  and row numbers (tests/test_ingest.py compares them); the rejected rows' raw fields are rebuilt
  from the file.
* Parquet, with the same column rules.
* Databento DBN / DBN.zst (schema ohlcv-1m), read with `databento.DBNStore.from_bytes` (which,
  unlike from_file, leaves no open file behind). `to_df()` already returns float prices, so
  nothing is rescaled here. `instrument_id` is kept; for continuous symbols (NQ.v.0) it is
  the actual contract and changes at each roll.
* Lean per-contract minute zips (`YYYYMMDD_trade.zip` holding `..._YYYYMM.csv` files whose
  rows are `ms_since_midnight,open,high,low,close,volume` on a UTC day): each contract becomes
  its own series, e.g. 'ESZ13'.

Timestamps: raw_bars.ts is the bar START in UTC. Naive timestamps need `tz` (the zone they
were written in, e.g. America/New_York); ambiguous fall-back hours are resolved from the
file's order (a warning says when the order cannot tell), and local times that do not exist
(the spring-forward hour) are rejected rows. Timestamps with UTC offsets are instants, also when
the offsets change across a DST switch; a `tz` that disagrees with them is ignored with a warning.
`ts_is='end'` says the file stamps bars at their end; one minute is subtracted.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from nqexp.data import db
from nqexp.data.validate import READER_REASON, ZONE_REPEAT, refuse_unusable
from nqexp.errors import DataError, NqexpWarning

log = logging.getLogger(__name__)

PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_COLUMNS = ("ts", *PRICE_COLUMNS, "volume")
DEFAULT_ORDER = BAR_COLUMNS
# Names accepted for each field in files with a header (case-insensitive).
ALIASES = {
    "ts": ("ts", "timestamp", "datetime", "date_time", "time", "date", "ts_event", "bar_start"),
    "open": ("open", "o", "open_price"),
    "high": ("high", "h", "high_price"),
    "low": ("low", "l", "low_price"),
    "close": ("close", "c", "close_price", "last"),
    "volume": ("volume", "vol", "v", "qty"),
}
# Optional columns: the contract behind each row, so a continuous file rolls where it changes
# (docs/rolls_and_sessions.md §1). `symbol` in a vendor export is the row's contract (NQM6).
ID_ALIASES = {
    "instrument_id": ("instrument_id",),
    "contract": ("contract", "raw_symbol", "symbol"),
}
OPTIONAL_COLUMNS = tuple(ID_ALIASES)
# A continuous symbol (Databento NQ.v.0 / NQ.c.0 / NQ.n.0) names the series, not a contract.
_CONTINUOUS_SYMBOL = re.compile(r".+\.[cnv]\.[0-9]+")
LEAN_MONTHS = "FGHJKMNQUVXZ"
LEAN_DAY_MS = 86_400_000



# ---------------------------------------------------------------------------------------
# Reading: every reader returns a frame with the parsed bar columns plus
# symbol, instrument_id, contract, source, row_number and a `_raw` dict column for rejects.


def detect_format(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(8)
    name = path.name.lower()
    if head[:3] == b"DBN" or name.endswith((".dbn", ".dbn.zst")) or (
        head[:4] == b"\x28\xb5\x2f\xfd" and ".dbn" in name
    ):
        return "dbn"
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:2] == b"PK":
        return "lean"
    if name.endswith((".csv", ".csv.gz", ".txt")) or head[:2] == b"\x1f\x8b":
        return "csv"
    raise DataError(
        f"{path}: unknown file format (expected CSV, Parquet, Databento .dbn/.dbn.zst or a Lean minute .zip)"
    )


def parse_columns(text: str | None) -> list[str] | dict[str, str] | None:
    """'ts,open,high,low,close,volume' (headerless order) or 'ts=Datetime,volume=Vol' (mapping)."""
    if not text:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if all("=" in p for p in parts):
        mapping = dict(p.split("=", 1) for p in parts)
        unknown = sorted(set(mapping) - set(BAR_COLUMNS) - set(OPTIONAL_COLUMNS))
        if unknown:
            raise DataError(f"--columns names unknown fields {unknown}; the fields are "
                            f"{list(BAR_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}")
        return {k.strip(): v.strip() for k, v in mapping.items()}
    if any("=" in p for p in parts):
        raise DataError("--columns mixes 'a,b,c' order and 'field=column' mapping; use one form")
    missing = sorted(set(BAR_COLUMNS) - set(parts))
    if missing:
        raise DataError(f"--columns lacks {missing}; give all of {list(BAR_COLUMNS)} in file order")
    return parts


def _looks_like_header(first_field: str) -> bool:
    field_ = first_field.strip().strip('"')
    if not field_ or len(field_) > 64:    # no timestamp is that long (and parsing a huge one is slow)
        return True
    if re.fullmatch(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?", field_):
        return False
    try:
        pd.Timestamp(field_)
        return False
    except (ValueError, TypeError):
        return True


def _read_text_table(path: Path, columns) -> pd.DataFrame:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip file ({_first_line(exc)})") from None
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    if b"\x00" in raw[:4096]:
        raise DataError(f"{path}: binary data, not a CSV file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; is this really a CSV file?") from None
    text = text.lstrip("\r\n")
    first_line = text.split("\n", 1)[0].rstrip("\r")
    has_header = _looks_like_header(first_line.split(",", 1)[0])
    # Data rows are read without the header and without an index column: a row with one field more
    # than the header (a trailing comma) would otherwise make pandas take the first column as the
    # index and shift every column by one.
    try:
        df = pd.read_csv(io.StringIO(text), header=None, skiprows=1 if has_header else 0, dtype=str,
                         keep_default_na=False, skipinitialspace=True, index_col=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file has a header but no data rows") from None
    except pd.errors.ParserError as exc:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if m:
            want, line, saw = m.groups()
            raise DataError(f"{path}: line {line} has {saw} fields where the lines before it have {want}; "
                            "every row needs the same columns (nothing was imported)") from None
        raise DataError(f"{path}: cannot parse as CSV ({_first_line(exc)})") from None
    except ValueError as exc:
        raise DataError(f"{path}: cannot parse as CSV ({_first_line(exc)})") from None
    if df.empty:
        raise DataError(f"{path}: the file has a header but no data rows")
    if has_header:
        names = [str(c) for c in pd.read_csv(io.StringIO(first_line), header=0, nrows=0, dtype=str).columns]
        # A trailing comma on the header line names an empty column; drop it when no row fills it.
        while names and names[-1].startswith("Unnamed: ") and (
                len(names) > df.shape[1] or not df.iloc[:, len(names) - 1].ne("").any()):
            names.pop()
        width = len(names)
    else:
        width = len(columns) if isinstance(columns, list) else df.shape[1] if columns else len(DEFAULT_ORDER)
        width = min(width, df.shape[1])     # too few columns: _map_columns says so
    if df.shape[1] > width:
        extra = df.iloc[:, width:].ne("").to_numpy()
        if extra.any():
            i, j = (int(x[0]) for x in np.nonzero(extra))
            value = df.iat[i, width + j]
            if has_header:
                where, hint = f"the {width} columns the header names", "fix the file"
            else:
                where = f"the {width} expected ({','.join(columns or DEFAULT_ORDER)})"
                hint = "name every column with --columns, e.g. --columns ts,open,high,low,close,volume,extra"
            raise DataError(f"{path}: data row {i + 1} has an extra field {_short(value)} beyond {where}; "
                            f"{hint} (nothing was imported)")
        df = df.iloc[:, :width]             # only empty trailing fields (trailing commas): dropped
    if has_header:
        for j in range(df.shape[1], width):  # rows shorter than the header: those fields are missing
            df[j] = ""
        df.columns = names
    return _map_columns(df, has_header, columns, path)


# The fast path for the common large file: plain ASCII, comma-separated, no quotes, no blank lines,
# no spaces around fields, ISO timestamps of one fixed width without an offset. DuckDB parses it
# (about 30x faster than pandas here); anything else, or anything DuckDB will not parse exactly as
# the careful pandas path would, returns None and the pandas path reads the file (with its messages).
_FAST_TS_FORMATS = (
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"), "%Y-%m-%d %H:%M:%S"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"), "%Y-%m-%dT%H:%M:%S"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d"), "%Y-%m-%d %H:%M"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d"), "%Y-%m-%dT%H:%M"),
)
# Bytes a data row of the fast path may hold: digits, separators, signs, exponents, the ISO 'T'.
_FAST_DELETE = b"0123456789,.:- \n+eET"


def _read_csv_fast(path: Path, columns, tz: str | None) -> pd.DataFrame | None:
    """The bar columns of a plain CSV read by DuckDB (ts already naive UTC), or None for the pandas path."""
    import duckdb

    with path.open("rb") as f:
        raw = f.read()
    if not raw or raw[:2] == b"\x1f\x8b" or raw[:1] in (b"\r", b"\n", b" ") or not raw.isascii():
        return None
    end = raw.find(b"\n")
    first = raw[: end if end >= 0 else len(raw)].decode()
    has_header = _looks_like_header(first.split(",", 1)[0])
    body_at = end + 1 if has_header else 0
    if has_header and (end < 0 or body_at >= len(raw)):
        return None
    # Whatever is left after deleting the allowed bytes must all be the header's (no copy of the body).
    if raw.translate(None, _FAST_DELETE) != raw[:body_at].translate(None, _FAST_DELETE) or '"' in first:
        return None                         # quotes, tabs, CR, letters (NaN, offsets, names): the pandas path
    lines = raw.count(b"\n", body_at) + (not raw.endswith(b"\n"))
    line_end = raw.find(b"\n", body_at)
    first_row = raw[body_at: line_end if line_end >= 0 else len(raw)].decode().split(",")
    if has_header:
        names = first.split(",")
        if len(set(names)) != len(names) or "" in names:
            return None
    else:
        width = len(columns) if isinstance(columns, list) else len(first_row) if columns else len(DEFAULT_ORDER)
        names = list(range(width))
    if len(first_row) != len(names):
        return None                         # trailing commas, short rows: the pandas path knows them
    try:
        mapping = _column_mapping(names, has_header, columns, path)
    except DataError:
        return None                         # the pandas path raises the same message
    if set(mapping) - set(BAR_COLUMNS):
        return None                         # instrument_id / contract columns: the pandas path
    at = {fld: names.index(col) for fld, col in mapping.items()}
    ts_text = first_row[at["ts"]]
    fmt = next((f for pattern, f in _FAST_TS_FORMATS if pattern.fullmatch(ts_text)), None)
    if fmt is None:
        return None
    cols = {f"c{i}": "VARCHAR" for i in range(len(names))}
    for fld in ("open", "high", "low", "close", "volume"):
        cols[f"c{at[fld]}"] = "DOUBLE"

    con = duckdb.connect(config={"threads": db.THREADS, "memory_limit": db.MEMORY_LIMIT})
    try:
        con.execute(
            f"""create temp table t as select try_strptime(c{at['ts']}, '{fmt}') as ts,
                length(c{at['ts']}) as n, {", ".join(f"c{at[k]} as {k}" for k in ("open", "high", "low", "close", "volume"))}
            from read_csv(?, header = {'true' if has_header else 'false'}, auto_detect = false, delim = ',',
                          quote = '', escape = '', new_line = '\\n', strict_mode = true, null_padding = false,
                          columns = {cols!r})""", [str(path)])
        rows, parsed, shortest, longest = con.execute("select count(*), count(ts), min(n), max(n) from t").fetchall()[0]
        if parsed != rows or shortest != longest or longest != len(ts_text) or rows != lines:
            return None                     # an unparseable or odd timestamp, a blank line: the pandas path
        # A space only inside each timestamp (none around fields): the same fields pandas reads.
        if raw.count(b" ", body_at) != (rows if " " in fmt else 0):
            return None
        arrays = con.execute("select ts, " + ", ".join(f"coalesce({k}, 'nan'::double) as {k}" for k in
                                                   ("open", "high", "low", "close", "volume")) + " from t").fetchnumpy()
    except duckdb.Error:
        return None
    finally:
        con.close()
    ts = pd.Series(np.asarray(arrays["ts"]).astype("datetime64[us]"))
    out = pd.DataFrame(index=pd.RangeIndex(len(ts)))
    _set_ts(out, _parse_ts(ts, tz, path))
    for k in ("open", "high", "low", "close", "volume"):
        out[k] = np.asarray(arrays[k], dtype=np.float64)
    # The rows as read, built only for the rejected ones (write_bars asks): the file's own fields.
    out.attrs["raw_rows"] = lambda rows: _raw_rows_of(path, names, 1 if has_header else 0, rows)
    return out


def _raw_rows_of(path: Path, names: list, skip: int, rows) -> list[str]:
    """JSON of the given 0-based data rows, as the pandas path records them ({column: field})."""
    lines = path.read_bytes().split(b"\n")
    return [json.dumps(dict(zip(names, lines[skip + int(r)].decode().split(","))), default=str) for r in rows]


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line, bounded (some libraries put whole inputs in their messages)."""
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _map_columns(df: pd.DataFrame, has_header: bool, columns, path: Path) -> pd.DataFrame:
    mapping = _column_mapping(list(df.columns), has_header, columns, path)
    out = pd.DataFrame({name: df[col] for name, col in mapping.items()})
    out["_raw"] = df.to_dict("records") if len(df) <= 2_000_000 else None
    return out


def _column_mapping(names: list, has_header: bool, columns, path: Path) -> dict:
    """field -> the file's column (label) holding it; DataError when a required field has none."""
    if isinstance(columns, dict) or (has_header and columns is None):
        given = columns or {}
        missing = [v for v in given.values() if v not in names]
        if missing:
            raise DataError(f"{path}: --columns maps to columns {missing} that the file lacks; it has {list(map(str, names))}")
        # Fields the mapping leaves out are matched by name, from the columns it does not use.
        lower = {str(c).strip().lower(): c for c in names if c not in given.values()}
        mapping = {}
        for fld, aliases in {**ALIASES, **ID_ALIASES}.items():
            hit = next((lower[n] for n in aliases if n in lower), None)
            if hit is not None:
                mapping[fld] = hit
        mapping.update(given)
    else:
        order = columns or list(DEFAULT_ORDER)
        if len(names) < len(order):
            raise DataError(
                f"{path}: {len(names)} columns, expected {len(order)} ({','.join(order)}); "
                "say which column is which with --columns"
            )
        mapping = {name: names[i] for i, name in enumerate(order)
                   if name in BAR_COLUMNS or name in OPTIONAL_COLUMNS}
    missing = [c for c in BAR_COLUMNS if c not in mapping]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {missing}; the file has {list(map(str, names))}. "
            "Map them with --columns, e.g. --columns ts=Datetime,volume=Vol"
        )
    return mapping


def _read_parquet(path: Path, columns) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{path}: cannot read Parquet ({_first_line(exc)})") from None
    if df.empty:
        raise DataError(f"{path}: the Parquet file has no rows")
    if isinstance(df.index, pd.DatetimeIndex):
        df = df.reset_index()
    return _map_columns(df, True, columns, path)


def _read_dbn(path: Path, symbol: str | None, allow_empty: bool = False) -> tuple[pd.DataFrame, str]:
    import databento as db

    # `import databento` turns on every DeprecationWarning; pandas 3 then warns on each to_df().
    warnings.filterwarnings("ignore", category=pd.errors.Pandas4Warning)
    try:
        store = db.DBNStore.from_bytes(path.read_bytes())
        schema = str(store.schema)
    except Exception as exc:
        raise DataError(f"{path}: not a readable DBN file ({_first_line(exc)})") from None
    if schema != "ohlcv-1m":
        raise DataError(f"{path}: DBN schema is {schema}; nqexp imports ohlcv-1m bars")
    try:
        df = store.to_df()
        _check_dbn_complete(store, len(df), path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable DBN file ({_first_line(exc)}; nothing was imported)") from None
    if df.empty:
        if allow_empty:
            return pd.DataFrame(), "dbn"
        raise DataError(f"{path}: the DBN file holds no records")
    stype_in = str(store.stype_in)
    out = pd.DataFrame({
        "ts": df.index.tz_convert("UTC").tz_localize(None).as_unit("us"),
        "open": df["open"].to_numpy(), "high": df["high"].to_numpy(),
        "low": df["low"].to_numpy(), "close": df["close"].to_numpy(),
        "volume": df["volume"].to_numpy().astype(np.float64),
        "instrument_id": df["instrument_id"].to_numpy().astype(np.int64),
    })
    mapped = df["symbol"].astype(object).where(df["symbol"].notna(), None).to_numpy()
    if symbol:
        out["symbol"] = symbol
    else:
        fallback = store.symbols[0] if len(store.symbols) == 1 else None
        known = pd.notna(mapped)
        if known.all() and len(mapped) and (mapped == mapped[0]).all():
            out["symbol"] = _constant(mapped[0], len(out))       # the usual chunk: one series
        else:
            out["symbol"] = [m if k else (fallback or str(i)) for m, k, i in zip(mapped, known, out["instrument_id"])]
    # With raw symbols the series *is* the contract; for continuous/parent symbols it is not known here.
    out["contract"] = out["symbol"] if stype_in == "raw_symbol" else None
    out["_raw"] = None
    return out, "dbn"


def _check_dbn_complete(store, n_records: int, path: Path) -> None:
    """Refuse a DBN file whose last record is cut off.

    The decoder stops quietly at a partial record, so a truncated download would import all but
    its tail. DBN is 'DBN', a version byte, a u32 metadata length and the metadata, then records
    whose first byte is their length in 4-byte words.
    """
    data = store.reader.read()
    if data[:3] != b"DBN" or len(data) < 8:
        return
    body = memoryview(data)[8 + int.from_bytes(data[4:8], "little"):]
    if not len(body):
        return
    size = body[0] * 4
    if size and n_records * size == len(body):
        return                                  # the usual case: n records of one size
    pos = count = 0
    while pos < len(body):
        step = body[pos] * 4
        if step == 0:
            raise DataError(f"{path}: corrupt DBN file: a record of length 0 after {count} records "
                            "(nothing was imported)")
        if pos + step > len(body):
            raise DataError(f"{path}: truncated DBN file: after {count} whole records the last one has only "
                            f"{len(body) - pos} of its {step} bytes; download it again (nothing was imported)")
        pos += step
        count += 1


def _lean_contract(root: str, yyyymm: str) -> str:
    return f"{root.upper()}{LEAN_MONTHS[int(yyyymm[4:6]) - 1]}{yyyymm[2:4]}"


def _read_lean_zip(path: Path) -> list[pd.DataFrame]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not a valid zip file") from None
    frames = []
    with zf:
        for name in sorted(zf.namelist()):
            m = re.fullmatch(r"(\d{8})_([a-z0-9]+)_minute_trade_(\d{6})\.csv", Path(name).name)
            if not m:
                raise DataError(f"{path}: unexpected member {name!r}; expected YYYYMMDD_<root>_minute_trade_YYYYMM.csv")
            day, root, yyyymm = m.groups()
            text = zf.read(name).decode("utf-8")
            if not text.strip():
                continue
            df = pd.read_csv(io.StringIO(text), header=None, dtype=str, keep_default_na=False,
                             names=["ms", "open", "high", "low", "close", "volume"])
            ms = pd.to_numeric(df["ms"], errors="coerce")
            if ms.isna().any():
                raise DataError(f"{path}!{name}: unparseable millisecond timestamps")
            out = df[["open", "high", "low", "close", "volume"]].copy()
            # The field counts milliseconds since midnight of the member's UTC day: a count outside the
            # day would land on another one, so such a row is rejected with its reason (and kept).
            outside = ~ms.between(0, LEAN_DAY_MS - 1).to_numpy()
            out["ts"] = pd.Timestamp(day) + pd.to_timedelta(ms.where(~outside, 0), unit="ms")
            out[READER_REASON] = np.where(outside, f"Lean millisecond field outside 0..{LEAN_DAY_MS - 1:,} "
                                                   "(milliseconds since midnight of the file's day)", None)
            contract = _lean_contract(root, yyyymm)
            out["symbol"] = contract
            out["contract"] = contract
            out["instrument_id"] = None
            out["_raw"] = df.to_dict("records")
            out["source"] = f"{path}!{name}"
            frames.append(out)
    if not frames:
        raise DataError(f"{path}: the zip holds no minute bars")
    return frames


# A time of day followed by a UTC offset ('Z', '-05:00', '+0100', '-05'): the value is an instant.
_OFFSET = r"\d:\d\d(?::\d\d(?:\.\d+)?)?\s*(?:Z|[+-]\d\d(?::?\d\d)?)$"
_UNIT_NS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


class DataWarning(NqexpWarning):
    """Something about a file the user should know, though it was imported (import_file reports it)."""


def _epoch_to_datetime(numeric: pd.Series) -> pd.Series:
    """Epoch numbers -> naive UTC datetimes, in the unit the file's median magnitude implies.

    A value in another unit (one epoch-seconds row in a milliseconds file) lands far from its
    neighbours: in 1970, or past the datetime range, where it becomes that range's last whole
    minute (in 2262). validate's date window then rejects it rather than it crashing or being guessed.
    """
    values = numeric.to_numpy(np.float64)
    mag = float(np.nanmedian(np.abs(values)))
    unit = "ns" if mag > 1e17 else "us" if mag > 1e14 else "ms" if mag > 1e11 else "s"
    factor = _UNIT_NS[unit]
    ok = np.abs(values) * factor < 9.2e18
    ns = np.full(len(values), np.iinfo(np.int64).max // 60_000_000_000 * 60_000_000_000, dtype=np.int64)
    ns[ok] = values[ok].astype(np.int64) * factor      # integers: no float rounding of the seconds
    return pd.Series(pd.to_datetime(ns, unit="ns").astype("datetime64[us]"), index=numeric.index)


def _parse_ts(values: pd.Series, tz: str | None, path: Path) -> pd.Series:
    """Strings/datetimes -> naive UTC datetime64[us]; NaT marks nonexistent local times.

    Warns (DataWarning) when --tz disagrees with offsets the file carries, and when a fall-back
    hour cannot be told apart by the file's order.
    """
    text = None
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        text = values.astype(str).str.strip()
        numeric = pd.to_numeric(text, errors="coerce")
        if numeric.notna().all():
            return _epoch_to_datetime(numeric)
        try:
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=False)
            mixed = parsed.dtype == object          # pandas 2: mixed offsets come back as objects
        except ValueError:                          # pandas 3: "Mixed timezones detected"
            mixed = True
        if mixed:
            aware = text.str.contains(_OFFSET, regex=True)
            if not aware.all():
                i, j = int(np.flatnonzero(aware.to_numpy())[0]), int(np.flatnonzero(~aware.to_numpy())[0])
                raise DataError(
                    f"{path}: some timestamps carry a UTC offset (data row {i + 1}: {_short(values.iloc[i])}) and "
                    f"others do not (data row {j + 1}: {_short(values.iloc[j])}); use one form (nothing was imported)")
            # Offsets that change (-05:00 / -04:00 across a DST switch) are still instants.
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        bad = parsed.isna() & text.ne("")
        if bad.any() or text.eq("").any():
            i = int(np.flatnonzero((bad | text.eq("")).to_numpy())[0])
            raise DataError(
                f"{path}: unparseable timestamp {_short(values.iloc[i])} on data row {i + 1}; "
                "expected e.g. 2023-11-19 18:00:00 (nothing was imported)"
            )
    if getattr(parsed.dt, "tz", None) is not None:
        utc = parsed.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
        if tz is not None and text is not None:
            _warn_if_tz_conflicts(text, utc, tz, path)
        return utc
    if tz is None:
        raise DataError(
            f"{path}: timestamps have no time zone; say which zone they were written in with "
            "--tz (e.g. --tz America/New_York or --tz UTC)"
        )
    try:
        local = parsed.dt.tz_localize(tz, ambiguous="infer", nonexistent="NaT")
    except Exception:
        # 'infer' needs each repeated hour twice, in order; otherwise take the first (daylight) reading.
        try:
            local = parsed.dt.tz_localize(tz, ambiguous=np.ones(len(parsed), dtype=bool), nonexistent="NaT")
            once = parsed.dt.tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward").isna()
        except Exception as exc:
            raise DataError(f"{path}: cannot place timestamps in zone {_short(tz)}: {_first_line(exc)}") from None
        if once.any():
            # validate() must not take these rows' step back for a clock step: the zone explains it.
            local.attrs[ZONE_REPEAT] = once.to_numpy()
            i = int(np.flatnonzero(once.to_numpy())[0])
            warnings.warn(DataWarning(
                f"{int(once.sum())} timestamp(s) fall in a repeated fall-back hour that the file's order cannot "
                f"resolve (first: data row {i + 1}, {parsed.iloc[i]} {tz}); they were taken as the first, "
                "daylight-time occurrence"), stacklevel=2)
    out = local.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
    if ZONE_REPEAT in local.attrs:
        out.attrs[ZONE_REPEAT] = local.attrs[ZONE_REPEAT]
    return out


def _set_ts(df: pd.DataFrame, ts: pd.Series) -> None:
    """df["ts"] = ts, keeping the fall-back-hour marks _parse_ts attached to it (a column drops attrs)."""
    df["ts"] = ts
    if ZONE_REPEAT in ts.attrs:
        df[ZONE_REPEAT] = ts.attrs[ZONE_REPEAT]


def _constant(value: str | None, n: int) -> pd.Categorical:
    """One value (or None) on every row, as a categorical: 5M Python strings cost seconds to write."""
    if value is None:
        return pd.Categorical.from_codes(np.full(n, -1, np.int8), categories=pd.Index([], dtype=object))
    return pd.Categorical.from_codes(np.zeros(n, np.int8), categories=[value])


def _contract_codes(values: pd.Series) -> pd.Series:
    """Per-row contract codes ('NQM6'); blanks and continuous symbols (NQ.v.0) are unknown (None)."""
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    return text.where(text.ne("") & ~text.str.fullmatch(_CONTINUOUS_SYMBOL), None).astype(object)


def _instrument_ids(values: pd.Series, path: Path) -> pd.Series:
    """Per-row integer instrument ids; blanks are unknown. A value that is not an int64 fails the file."""
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    ids = pd.to_numeric(text.where(text.ne(""), None), errors="coerce")
    bad = (ids.isna() & text.ne("")) | ~(ids.isna() | ((ids == np.floor(ids)) & (ids.abs() < 2**63)))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: instrument_id {str(values.iloc[i])[:40]!r} on data row {i + 1} is not an integer id "
                        "(nothing was imported)")
    return pd.Series(pd.array(ids.to_numpy(), dtype="Int64"), index=values.index)


def _warn_if_tz_conflicts(text: pd.Series, utc: pd.Series, tz: str, path: Path) -> None:
    """The file's offsets win over --tz; say so when the two disagree."""
    try:
        wall = pd.to_datetime(text.str.replace(r"\s*(?:Z|[+-]\d\d(?::?\d\d)?)$", "", regex=True),
                              format="ISO8601", errors="coerce")
        expected = (wall.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
                    .dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]"))
    except Exception as exc:
        raise DataError(f"{path}: --tz {_short(tz)} is not a time zone ({_first_line(exc)})") from None
    differs = (expected.notna() & utc.notna() & (expected != utc)).to_numpy()
    if differs.any():
        i = int(np.flatnonzero(differs)[0])
        warnings.warn(DataWarning(
            f"--tz {tz} ignored: the file's timestamps carry their own UTC offsets, which disagree with it "
            f"(data row {i + 1}: {text.iloc[i]}); the offsets were used"), stacklevel=2)


def read_bars(path: Path, *, fmt: str | None = None, tz: str | None = None, ts_is: str = "start",
              symbol: str | None = None, columns=None) -> tuple[pd.DataFrame, str]:
    """Read a bar file into a typed frame ready for validation. Raises DataError for a whole-file failure."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if ts_is not in ("start", "end"):
        raise DataError(f"--ts-is must be 'start' or 'end', not {ts_is!r}")
    fmt = fmt or detect_format(path)
    if fmt == "dbn":
        df, _ = _read_dbn(path, symbol)
        df["source"] = str(path)
    elif fmt == "lean":
        df = pd.concat(_read_lean_zip(path), ignore_index=True)
        df["ts"] = df["ts"].astype("datetime64[us]")
    elif fmt in ("csv", "parquet"):
        df = _read_csv_fast(path, columns, tz) if fmt == "csv" else None
        if df is None:
            df = _read_text_table(path, columns) if fmt == "csv" else _read_parquet(path, columns)
            _set_ts(df, _parse_ts(df["ts"], tz, path))
        _table_columns(df, symbol or "NQ", str(path), path)
    else:
        raise DataError(f"{path}: unknown format {fmt!r}; use csv, parquet, dbn or lean")
    if ts_is == "end":
        df["ts"] = df["ts"] - pd.Timedelta(minutes=1)
    for col in (*PRICE_COLUMNS, "volume"):
        if df[col].dtype != np.float64:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
    df["row_number"] = (np.arange(1, len(df) + 1) if fmt != "lean" else df.groupby("source").cumcount() + 1)
    return df, fmt


def _table_columns(df: pd.DataFrame, symbol: str, source: str, where) -> None:
    """The series, contract, instrument id and source columns of a CSV, Parquet or DataFrame read, in place."""
    df["symbol"] = _constant(symbol, len(df))
    df["contract"] = _contract_codes(df["contract"]) if "contract" in df else _constant(None, len(df))
    df["instrument_id"] = (_instrument_ids(df["instrument_id"], where) if "instrument_id" in df
                           else pd.arrays.IntegerArray(np.zeros(len(df), np.int64), np.ones(len(df), bool)))
    df["source"] = _constant(source, len(df))


def read_frame(frame: pd.DataFrame, *, symbol: str, tz: str | None = "UTC",
               source: str = "DataFrame") -> pd.DataFrame:
    """A DataFrame of 1-minute bars -> the frame `read_bars` gives for a file with the same columns.

    Columns are matched by name as in a file with a header (ts, open, high, low, close, volume and
    their aliases; optional contract and instrument_id); a DatetimeIndex may hold the timestamps.
    Timestamps are bar starts: tz-aware ones are instants, naive ones are in `tz` (default UTC).
    `source` names the frame in messages and in rejected_bars. DataError when it cannot be bars.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"bars must be a pandas DataFrame of 1-minute bars (ts, open, high, low, close, volume), "
                        f"not {type(frame).__name__}")
    if frame.empty:
        raise DataError(f"{source}: no rows; give 1-minute bars (ts, open, high, low, close, volume)")
    if isinstance(frame.index, pd.DatetimeIndex) and not any(
            str(c).strip().lower() in ALIASES["ts"] for c in frame.columns):
        frame = frame.reset_index()
    frame = frame.reset_index(drop=True)
    mapping = _column_mapping(list(frame.columns), True, None, source)
    df = pd.DataFrame({name: frame[col] for name, col in mapping.items()})
    # A rejected row's fields as read, made only for the rejected rows (ingest.write_bars asks for them).
    df.attrs["raw_rows"] = lambda rows: [json.dumps(r, default=str) for r in frame.iloc[rows].to_dict("records")]
    _set_ts(df, _parse_ts(df["ts"], tz, source))
    _table_columns(df, symbol, source, source)
    for col in (*PRICE_COLUMNS, "volume"):
        if df[col].dtype != np.float64:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
    df["row_number"] = np.arange(1, len(df) + 1)
    refuse_unusable(df, source)
    return df


def read_dbn_chunk(path) -> pd.DataFrame:
    """One downloaded DBN chunk as a frame ready for `import_frames`; empty when the chunk holds no records."""
    path = Path(path).absolute()
    df, _ = _read_dbn(path, None, allow_empty=True)
    if df.empty:
        return df
    df["source"] = _constant(str(path), len(df))
    df["row_number"] = np.arange(1, len(df) + 1)
    refuse_unusable(df, path)
    return df
