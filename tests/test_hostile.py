"""Hostile inputs, table-driven: every case is a command a careless user or an attacker could type.

Each case runs `nqexp ...` in-process (click's CliRunner) against its own copy of one small
template database, with fake DATABENTO_API_KEY / WANDB_API_KEY values in the environment, and asserts:

* the exit code;
* stderr: exactly one readable line for a refusal ("Error: ...", bounded, naming the problem), one
  "Warning: ..." line where a warning is expected, and nothing otherwise; never a traceback;
* the database: unchanged (row counts of every table and a digest of raw_bars), or changed by exactly
  the expected rows;
* neither API key appears in anything printed.

Classes: files (CSV, Parquet, DBN, Lean zips, and paths that are not files), CLI options, specs,
databases and secrets; at the end (reliability, round 3) full disks, run stores that move or cannot be
written, time (the future tolerance, clocks that step back), imports that would change stored bars, and
spec ranges. Cases known to fail carry `xfail=` with the reason; they run as strict xfails, so a fix
shows up as XPASS.
"""

from __future__ import annotations

import datetime as dt
import gc
import gzip
import os
import shutil
import threading
import time
import traceback
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import duckdb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from nqexp.cli import cli
from tests.dbn_encode import ohlcv_dbn

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
DATABENTO_KEY = "db-" + "Q7x" * 9 + "zz"                 # key-shaped, never real
WANDB_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"        # 40 hex
ENV = {"DATABENTO_API_KEY": DATABENTO_KEY, "WANDB_API_KEY": WANDB_KEY}

HEADER = "timestamp,open,high,low,close,volume"
GOOD = [
    "2024-03-04 09:30:00,18000.00,18001.00,17999.00,18000.50,10",
    "2024-03-04 09:31:00,18000.50,18002.00,18000.00,18001.75,12",
    "2024-03-04 09:32:00,18001.75,18003.25,18001.50,18002.00,7",
]
NEW3 = {"raw_bars": 3, "imports": 1}                 # a clean import of the three GOOD rows
NEW3_REJ1 = {"raw_bars": 3, "rejected_bars": 1, "imports": 1}


def text(*lines: str, end: str = "\n") -> bytes:
    return (end.join(lines) + end).encode()


# ------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    id: str
    make: Callable[[Path], list]            # builds its files under tmp and returns the argv
    code: int = 0
    err: str | None = None                  # the one stderr line must contain this (an Error: line)
    warn: str | None = None                 # ... or be a Warning: line containing this
    delta: dict = field(default_factory=dict)   # table -> rows added (absent tables: unchanged)
    changes_rows: bool = False              # raw_bars values may change without a count change
    out: str | None = None                  # stdout must contain this ("" : stdout must be empty)
    reject: str | None = None               # a row rejected with this reason (in rejected_bars)
    prep: Callable[[Path, Path], None] | None = None   # (tmp, db) -> None, before the snapshot
    xfail: str | None = None
    slow_ok: bool = False                   # imports torch (the resource checks): allowed ~5 s


def imp(id_, content, *extra, name="bars.csv", code=0, err=None, warn=None, delta=None, out=None, reject=None,
        **kw):
    """`nqexp data import FILE [extra]` for a file with `content` (bytes, or a callable(path) that writes it)."""

    def make(tmp):
        path = tmp / name
        content(path) if callable(content) else path.write_bytes(content)
        return ["data", "import", path, *extra]

    if delta is None:
        delta = NEW3 if code == 0 else {}
    return Case(id_, make, code, err, warn, delta, out=out, reject=reject, **kw)


def cmd(id_, *argv, code=0, err=None, warn=None, delta=None, out=None, **kw):
    """A command whose argv may contain callables(tmp) -> value (files made on the fly)."""

    def make(tmp):
        return [a(tmp) if callable(a) else a for a in argv]

    return Case(id_, make, code, err, warn, delta or {}, out=out, **kw)


def row_case(id_, row, reason, *extra):
    """Three good rows and one bad row: the bad one is rejected with `reason`, the good ones stored."""
    return imp(id_, text(*GOOD, row), "--tz", "UTC", *extra, delta=NEW3_REJ1, reject=reason)


# Row-level rejects: the file imports, the bad row is kept in rejected_bars with its reason.
TOMORROW_PLUS = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)).strftime("%Y-%m-%d %H:%M:00")
ROW_CASES = [
    row_case("row-missing-open", "2024-03-04 09:33:00,,18003,18001,18002,5", "missing or NaN open"),
    row_case("row-nan-high", "2024-03-04 09:33:00,18002,NaN,18001,18002,5", "missing or NaN high"),
    row_case("row-missing-volume", "2024-03-04 09:33:00,18002,18003,18001,18002,", "missing or NaN volume"),
    row_case("row-text-close", "2024-03-04 09:33:00,18002,18003,18001,abc,5", "missing or NaN close"),
    row_case("row-inf-open", "2024-03-04 09:33:00,inf,18003,18001,18002,5", "missing or NaN open"),
    row_case("row-1e309-low", "2024-03-04 09:33:00,18002,18003,1e309,18002,5", "missing or NaN low"),
    row_case("row-short-row", "2024-03-04 09:33:00,18002,18003", "missing or NaN low"),
    row_case("row-zero-price", "2024-03-04 09:33:00,0,18003,18001,18002,5", "non-positive price"),
    row_case("row-negative-low", "2024-03-04 09:33:00,18002,18003,-1,18002,5", "non-positive price"),
    row_case("row-minus-zero", "2024-03-04 09:33:00,18002,18003,18001,-0,5", "non-positive price"),
    row_case("row-high-below-low", "2024-03-04 09:33:00,18002,18000,18001,18000.5,5", "high < low"),
    row_case("row-open-outside", "2024-03-04 09:33:00,18005,18003,18001,18002,5", "open outside [low, high]"),
    row_case("row-close-outside", "2024-03-04 09:33:00,18002,18003,18001,18000,5", "close outside [low, high]"),
    row_case("row-negative-volume", "2024-03-04 09:33:00,18002,18003,18001,18002,-3", "negative volume"),
    row_case("row-fractional-volume", "2024-03-04 09:33:00,18002,18003,18001,18002,2.5", "fractional volume"),
    row_case("row-volume-1e30", "2024-03-04 09:33:00,18002,18003,18001,18002,1e30", "volume above 1e+12"),
    row_case("row-volume-9.3e18", "2024-03-04 09:33:00,18002,18003,18001,18002,9300000000000000000",
             "volume above 1e+12"),
    row_case("row-volume-int64-max", "2024-03-04 09:33:00,18002,18003,18001,18002,9223372036854775807",
             "volume above 1e+12"),
    row_case("row-price-1e308", "2024-03-04 09:33:00,1e308,1e308,1e308,1e308,5", "price outside 1e-06..1e+09"),
    row_case("row-price-1e-300", "2024-03-04 09:33:00,1e-300,1e-300,1e-300,1e-300,5", "price outside 1e-06..1e+09"),
    row_case("row-high-1e308", "2024-03-04 09:33:00,18002,1e308,18001,18002,5", "price outside 1e-06..1e+09"),
    row_case("row-low-1e-300", "2024-03-04 09:33:00,18002,18003,1e-300,18002,5", "price outside 1e-06..1e+09"),
    row_case("row-price-10x", "2024-03-04 09:33:00,18002,180030,18001,180020,5", "price more than 5x"),
    row_case("row-price-tenth", "2024-03-04 09:33:00,1800.2,1800.3,1800.1,1800.2,5", "price more than 5x"),
    row_case("row-date-1970", "1970-01-01 00:00:00,18002,18003,18001,18002,5", "timestamp before 1990"),
    row_case("row-date-1600", "1600-01-01 00:00:00,18002,18003,18001,18002,5", "timestamp before 1990"),
    row_case("row-date-1989", "1989-12-31 23:59:00,18002,18003,18001,18002,5", "timestamp before 1990"),
    row_case("row-date-2100", "2100-01-01 00:00:00,18002,18003,18001,18002,5", "in the future"),
    row_case("row-date-future", f"{TOMORROW_PLUS},18002,18003,18001,18002,5", "in the future"),
    row_case("row-seconds-17", "2024-03-04 09:33:17,18002,18003,18001,18002,5", "not on a whole minute"),
    row_case("row-half-second", "2024-03-04 09:33:00.5,18002,18003,18001,18002,5", "not on a whole minute"),
    row_case("row-one-second-after", "2024-03-04 09:32:01,18002,18003,18001,18002,5", "not on a whole minute"),
    row_case("row-duplicate", GOOD[1], "duplicate timestamp"),
    row_case("row-dst-gap", "2024-03-10 02:30:00,18002,18003,18001,18002,5", "nonexistent local time",
             "--tz", "America/New_York"),
]


def epoch_rows(values):
    return text(*[f"{v},18000,18001,17999,18000.5,5" for v in values])


T0 = int(pd.Timestamp("2024-03-04 14:30").timestamp())
EPOCH_CASES = [
    imp("epoch-seconds", epoch_rows([T0, T0 + 60, T0 + 120])),
    imp("epoch-ms", epoch_rows([T0 * 1000, (T0 + 60) * 1000, (T0 + 120) * 1000])),
    imp("epoch-us", epoch_rows([T0 * 10**6, (T0 + 60) * 10**6, (T0 + 120) * 10**6])),
    imp("epoch-ns", epoch_rows([T0 * 10**9, (T0 + 60) * 10**9, (T0 + 120) * 10**9])),
    imp("epoch-seconds-row-in-ms-file", epoch_rows([T0 * 1000, (T0 + 60) * 1000, (T0 + 120) * 1000, T0 + 180]),
        delta=NEW3_REJ1, reject="timestamp before 1990"),
    imp("epoch-ms-row-in-seconds-file", epoch_rows([T0, T0 + 60, T0 + 120, (T0 + 180) * 1000]),
        delta=NEW3_REJ1, reject="in the future"),
    imp("epoch-1e30-everywhere", epoch_rows(["1e30", "2e30", "3e30"]),
        delta={"rejected_bars": 3, "imports": 1}, reject="in the future"),
]


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


# Files that are fine, in the shapes vendors write them.
FORMAT_CASES = [
    imp("csv-headerless", text(*GOOD), "--tz", "UTC"),
    imp("csv-header", text(HEADER, *GOOD), "--tz", "UTC"),
    imp("csv-trailing-comma-rows", text(HEADER, *[r + "," for r in GOOD]), "--tz", "UTC"),
    imp("csv-trailing-comma-everywhere", text(HEADER + ",", *[r + "," for r in GOOD]), "--tz", "UTC"),
    imp("csv-trailing-comma-headerless", text(*[r + "," for r in GOOD]), "--tz", "UTC"),
    imp("csv-two-trailing-commas", text(HEADER, *[r + ",," for r in GOOD]), "--tz", "UTC"),
    imp("csv-trailing-comma-header-only", text(HEADER + ",", *GOOD), "--tz", "UTC"),
    imp("csv-crlf", text(HEADER, *GOOD, end="\r\n"), "--tz", "UTC"),
    imp("csv-bom", b"\xef\xbb\xbf" + text(HEADER, *GOOD), "--tz", "UTC"),
    imp("csv-gzip", gz(text(HEADER, *GOOD)), "--tz", "UTC", name="bars.csv.gz"),
    imp("csv-leading-blank-lines", b"\n\n" + text(HEADER, *GOOD), "--tz", "UTC"),
    imp("csv-quoted", text('"timestamp","open","high","low","close","volume"',
                           *['"' + '","'.join(r.split(",")) + '"' for r in GOOD]), "--tz", "UTC"),
    imp("csv-spaces-after-commas", text(HEADER, *[r.replace(",", ", ") for r in GOOD]), "--tz", "UTC"),
    imp("csv-uppercase-header", text(HEADER.upper(), *GOOD), "--tz", "UTC"),
    imp("csv-reordered-header", text("Volume,Close,Low,High,Open,Date",
                                     *[",".join(reversed(r.split(","))) for r in GOOD]), "--tz", "UTC"),
    imp("csv-extra-named-column", text(HEADER + ",notes", *[r + ",x" for r in GOOD]), "--tz", "UTC"),
    imp("csv-mapping", text("when,o,h,l,c,qty", *GOOD), "--tz", "UTC",
        "--columns", "ts=when,open=o,high=h,low=l,close=c,volume=qty"),
    imp("csv-order-with-extra-column", text(*[r + ",123" for r in GOOD]), "--tz", "UTC",
        "--columns", "ts,open,high,low,close,volume,oi"),
    imp("csv-ts-is-end", text(*GOOD), "--tz", "UTC", "--ts-is", "end"),
    imp("csv-iso-t-naive-ny", text(*[r.replace(" ", "T", 1) for r in GOOD]), "--tz", "America/New_York"),
    imp("csv-naive-london", text(*GOOD), "--tz", "Europe/London"),
    imp("csv-z-suffix", text(*[r.replace(",", "Z,", 1) for r in GOOD])),
    imp("csv-z-suffix-with-tz-utc", text(*[r.replace(",", "Z,", 1) for r in GOOD]), "--tz", "UTC"),
    imp("csv-offsets-matching-tz", text(*[r.replace(",", "-05:00,", 1) for r in GOOD]), "--tz", "America/New_York"),
    imp("csv-offsets-dst-march", text("2024-03-10T01:58:00-05:00,1,1,1,1,1", "2024-03-10T01:59:00-05:00,1,1,1,1,1",
                                      "2024-03-10T03:00:00-04:00,1,1,1,1,1")),
    imp("csv-offsets-dst-november", text("2024-11-03T01:59:00-04:00,1,1,1,1,1", "2024-11-03T01:00:00-05:00,1,1,1,1,1",
                                         "2024-11-03T01:01:00-05:00,1,1,1,1,1")),
    imp("csv-offsets-dst-march-with-header", text(HEADER, "2024-03-10 01:59:00-05:00,1,1,1,1,1",
                                                  "2024-03-10 03:00:00-04:00,1,1,1,1,1",
                                                  "2024-03-10 03:01:00-04:00,1,1,1,1,1")),
    imp("csv-offsets-compact", text("2024-03-10T01:59:00-0500,1,1,1,1,1", "2024-03-10T03:00:00-0400,1,1,1,1,1",
                                    "2024-03-10T03:01:00-0400,1,1,1,1,1")),
    imp("csv-naive-ny-fallback-in-order", text("2024-11-03 01:59:00,1,1,1,1,1", "2024-11-03 01:00:00,1,1,1,1,1",
                                               "2024-11-03 01:01:00,1,1,1,1,1"), "--tz", "America/New_York"),
    imp("csv-naive-ny-fallback-repeated", text("2024-11-03 01:30:00,1,1,1,1,1", "2024-11-03 01:30:00,1,1,1,1,1",
                                               "2024-11-03 02:00:00,1,1,1,1,1"), "--tz", "America/New_York"),
]

# Imported with a warning: the user learns what was assumed.
WARN_CASES = [
    imp("warn-fallback-hour-once", text("2024-11-03 00:59:00,1,1,1,1,1", "2024-11-03 01:30:00,1,1,1,1,1",
                                        "2024-11-03 02:00:00,1,1,1,1,1"), "--tz", "America/New_York",
        warn="daylight-time occurrence"),
    imp("warn-tz-conflicts-with-z", text(*[r.replace(",", "Z,", 1) for r in GOOD]), "--tz", "America/New_York",
        warn="--tz America/New_York ignored"),
    imp("warn-tz-conflicts-with-offsets", text(*[r.replace(",", "-05:00,", 1) for r in GOOD]),
        "--tz", "America/Chicago", warn="the offsets were used"),
    imp("warn-tz-conflicts-across-dst", text("2024-03-10T01:59:00-05:00,1,1,1,1,1",
                                             "2024-03-10T03:00:00-04:00,1,1,1,1,1",
                                             "2024-03-10T03:01:00-04:00,1,1,1,1,1"), "--tz", "UTC",
        warn="disagree"),
]


def _import_first(content: bytes, name="bars.csv"):
    def prep(tmp, db_path):
        from nqexp.data import db, ingest

        (tmp / name).write_bytes(content)
        con = db.connect(db_path)
        ingest.import_file(con, tmp / name, tz="UTC")
        con.close()

    return prep


REIMPORT_CASES = [
    imp("reimport-same-file", text(*GOOD), "--tz", "UTC", delta={"imports": 1}, out="0 new, 3 unchanged",
        prep=_import_first(text(*GOOD))),
    imp("reimport-vendor-correction", text(*GOOD[:2], "2024-03-04 09:32:00,18001.75,18003.25,18001.50,18003.00,9"),
        "--tz", "UTC", "--replace", delta={"imports": 1}, changes_rows=True, out="1 changed",
        prep=_import_first(text(*GOOD))),
    imp("reimport-rejects-replaced", text(*GOOD, "2024-03-04 09:33:00,0,1,1,1,1"), "--tz", "UTC",
        delta={"imports": 1}, out="1 rejected", prep=_import_first(text(*GOOD, "2024-03-04 09:33:00,0,1,1,1,1"))),
]


def seconds_file(n=120):
    t = pd.date_range("2024-03-04 09:30", periods=n, freq="s")
    return text(*[f"{x:%Y-%m-%d %H:%M:%S},18000,18001,17999,18000.5,1" for x in t])


def fifo(path):
    os.mkfifo(path)


def symlink_to(target):
    return lambda path: path.symlink_to(target)


# Files that cannot be read as bars: one line, nothing written.
REFUSED_FILE_CASES = [
    imp("file-empty", b"", code=1, err="the file is empty"),
    imp("file-whitespace", b"  \n\n \t\n", code=1, err="the file is empty"),
    imp("file-nul-bytes", b"\x00\x01\x02garbage\xff\xfe" * 50, code=1, err="binary data"),
    imp("file-png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, name="x.bin", code=1, err="unknown file format"),
    imp("file-header-only", text(HEADER), code=1, err="header but no data rows"),
    imp("file-missing-columns", text("when,o,h,l,c", "2024-03-04 09:30:00,1,2,0.5,1.5"), code=1,
        err="missing required column(s)"),
    imp("file-only-commas", text(",,,,,", ",,,,,"), code=1, err="missing required column(s)"),
    imp("file-unparseable-ts", text(GOOD[0], "not-a-time,1,2,0.5,1.5,3"), "--tz", "UTC", code=1,
        err="unparseable timestamp 'not-a-time' on data row 2"),
    imp("file-empty-ts", text(GOOD[0], ",1,2,0.5,1.5,3"), "--tz", "UTC", code=1, err="unparseable timestamp"),
    imp("file-three-columns", text("2024-03-04 09:30:00,1,2"), "--tz", "UTC", code=1, err="3 columns, expected 6"),
    imp("file-latin1", "zeit,eröffnung\n".encode("latin-1") + b"\xe9\xe8\n", code=1, err="not UTF-8"),
    imp("file-corrupt-gzip", b"\x1f\x8b\x08\x00" + b"junk" * 100, name="bars.csv.gz", code=1, err="corrupt gzip"),
    imp("file-truncated-gzip", gz(text(HEADER, *GOOD))[:-12], name="bars.csv.gz", code=1, err="corrupt gzip"),
    imp("file-extra-field-header", text(HEADER, *[r + ",99" for r in GOOD]), "--tz", "UTC", code=1,
        err="extra field '99' beyond the 6 columns the header names"),
    imp("file-extra-field-headerless", text(*[r + ",99" for r in GOOD]), "--tz", "UTC", code=1,
        err="name every column with --columns"),
    imp("file-extra-field-one-row", text(HEADER, GOOD[0], GOOD[1] + ",99", GOOD[2]), "--tz", "UTC", code=1,
        err="line 3 has 7 fields where the lines before it have 6"),
    imp("file-naive-without-tz", text(*GOOD), code=1, err="--tz"),
    imp("file-unknown-tz", text(*GOOD), "--tz", "Mars/Olympus_Mons", code=1, err="cannot place timestamps"),
    imp("file-unknown-tz-with-offsets", text(*[r.replace(",", "Z,", 1) for r in GOOD]), "--tz", "Not/AZone",
        code=1, err="not a time zone"),
    imp("file-seconds-bars", seconds_file(), "--tz", "UTC", code=1, err="not 1-minute bars"),
    imp("file-seconds-bars-short", seconds_file(4), "--tz", "UTC", code=1, err="not 1-minute bars"),
    imp("file-mixed-naive-and-offsets", text(GOOD[0], GOOD[1].replace(",", "-05:00,", 1), GOOD[2]), "--tz", "UTC",
        code=1, err="some timestamps carry a UTC offset"),
    imp("file-missing", lambda p: None, code=1, err="no such file"),
    cmd("file-dev-zero", "data", "import", "/dev/zero", "--tz", "UTC", code=1, err="not a regular file"),
    cmd("file-dev-null", "data", "import", "/dev/null", "--tz", "UTC", code=1, err="not a regular file"),
    cmd("file-dev-urandom", "data", "import", "/dev/urandom", code=1, err="not a regular file"),
    imp("file-fifo", fifo, name="pipe.csv", code=1, err="not a regular file"),
    imp("file-symlink-to-dev-zero", symlink_to("/dev/zero"), name="link.csv", code=1, err="not a regular file"),
    imp("file-dangling-symlink", symlink_to("/nonexistent/x.csv"), name="link.csv", code=1, err="no such file"),
    cmd("file-is-directory", "data", "import", lambda tmp: tmp, code=2, err="is a directory"),
    imp("file-megabyte-line", b"a" * 1_000_000 + b"\n", code=1, err="header but no data rows"),
    imp("file-megabyte-field", text(HEADER, "x" * 1_000_000 + ",1,1,1,1,1"), "--tz", "UTC", code=1,
        err="unparseable timestamp"),
    imp("file-format-parquet-on-csv", text(*GOOD), "--format", "parquet", code=1, err="cannot read Parquet"),
    imp("file-format-dbn-on-csv", text(*GOOD), "--format", "dbn", code=1, err="not a readable DBN"),
    imp("file-format-lean-on-csv", text(*GOOD), "--format", "lean", code=1, err="not a valid zip"),
    imp("file-columns-unknown-field", text(*GOOD), "--columns", "ts=a,price=b", code=1, err="unknown fields"),
    imp("file-columns-mixed", text(*GOOD), "--columns", "ts,open=o", code=1, err="mixes"),
    imp("file-columns-lacking", text(*GOOD), "--columns", "ts,open,high", code=1, err="lacks"),
    imp("file-columns-map-missing", text(HEADER, *GOOD), "--tz", "UTC", "--columns", "ts=Datetime", code=1,
        err="--columns maps to columns ['Datetime']"),
]
if hasattr(os, "geteuid") and os.geteuid() != 0:           # root reads every file
    REFUSED_FILE_CASES.append(
        imp("file-unreadable", lambda p: (p.write_bytes(text(*GOOD)), p.chmod(0)), "--tz", "UTC", code=1,
            err="permission denied"))


# Parquet
def parquet(frame_fn):
    return lambda path: frame_fn().to_parquet(path)


def good_frame(**changes):
    df = pd.DataFrame({
        "timestamp": pd.date_range("2024-03-04 14:30", periods=3, freq="min"),
        "open": [18000.0, 18000.5, 18001.75], "high": [18001.0, 18002.0, 18003.25],
        "low": [17999.0, 18000.0, 18001.5], "close": [18000.5, 18001.75, 18002.0], "volume": [10, 12, 7],
    })
    for k, v in changes.items():
        df[k] = v
    return df


def with_extra_row(**row):
    def make():
        df = good_frame()
        extra = {c: df[c].iloc[-1] for c in df.columns} | {"timestamp": pd.Timestamp("2024-03-04 14:33")} | row
        return pd.concat([df, pd.DataFrame([extra])], ignore_index=True)

    return make


PARQUET_CASES = [
    imp("parquet-naive", parquet(good_frame), "--tz", "UTC", name="b.parquet"),
    imp("parquet-tz-aware", parquet(lambda: good_frame(timestamp=pd.date_range("2024-03-04 14:30", periods=3,
                                                                              freq="min", tz="UTC"))),
        name="b.parquet"),
    imp("parquet-datetime-index", parquet(lambda: good_frame().set_index("timestamp")), "--tz", "UTC",
        name="b.parquet"),
    imp("parquet-epoch-ms", parquet(lambda: good_frame(timestamp=[(T0 + 60 * i) * 1000 for i in range(3)])),
        name="b.parquet"),
    imp("parquet-string-offsets-dst", parquet(lambda: good_frame(timestamp=[
        "2024-03-10T01:58:00-05:00", "2024-03-10T01:59:00-05:00", "2024-03-10T03:00:00-04:00"])), name="b.parquet"),
    imp("parquet-volume-1e30", parquet(with_extra_row(volume=1e30)), "--tz", "UTC", name="b.parquet",
        delta=NEW3_REJ1, reject="volume above"),
    imp("parquet-date-1970", parquet(with_extra_row(timestamp=pd.Timestamp("1970-01-01"))), "--tz", "UTC",
        name="b.parquet", delta=NEW3_REJ1, reject="timestamp before 1990"),
    imp("parquet-sub-minute", parquet(with_extra_row(timestamp=pd.Timestamp("2024-03-04 14:33:17"))),
        "--tz", "UTC", name="b.parquet", delta=NEW3_REJ1, reject="not on a whole minute"),
    imp("parquet-price-1e308", parquet(with_extra_row(open=1e308, high=1e308, low=1e308, close=1e308)),
        "--tz", "UTC", name="b.parquet", delta=NEW3_REJ1, reject="price outside"),
    imp("parquet-seconds-bars", parquet(lambda: good_frame(timestamp=pd.date_range("2024-03-04 14:30", periods=3,
                                                                                  freq="s"))),
        "--tz", "UTC", name="b.parquet", code=1, err="not 1-minute bars"),
    imp("parquet-corrupt", b"PAR1" + b"\x00garbage" * 100, name="b.parquet", code=1, err="cannot read Parquet"),
    imp("parquet-truncated", lambda p: (good_frame().to_parquet(p), p.write_bytes(p.read_bytes()[:-20])),
        name="b.parquet", code=1, err="cannot read Parquet"),
    imp("parquet-no-rows", parquet(lambda: good_frame().iloc[:0]), name="b.parquet", code=1, err="has no rows"),
    imp("parquet-missing-volume", parquet(lambda: good_frame().drop(columns="volume")), "--tz", "UTC",
        name="b.parquet", code=1, err="missing required column(s) ['volume']"),
]


# DBN, written with databento's own encoder
def dbn_bytes(records=None, *, compress=False):
    t0 = pd.Timestamp("2025-03-10 14:30", tz="UTC").value
    recs = records or [(t0 + i * 60_000_000_000, 20000.0 + i, 100) for i in range(4)]
    data = ohlcv_dbn([(ts, 1001, p, vol) for ts, p, vol in recs],
                     intervals=[(dt.date(2025, 3, 10), dt.date(2025, 3, 13), "1001")])
    if compress:
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    return data


def dbn_file(**kw):
    cut = kw.pop("cut", None)
    extra = kw.pop("extra", b"")

    def write(path):
        data = dbn_bytes(**kw)
        path.write_bytes((data[:cut] if cut else data) + extra)

    return write


T_DBN = pd.Timestamp("2025-03-10 14:30", tz="UTC").value
MIN_NS = 60_000_000_000
GOOD3_DBN = [(T_DBN + i * MIN_NS, 20000.0 + i, 100) for i in range(3)]
NEW4 = {"raw_bars": 4, "imports": 1}
DBN_CASES = [
    imp("dbn-good", dbn_file(), name="nq.dbn", delta=NEW4),
    imp("dbn-zst-good", dbn_file(compress=True), name="nq.dbn.zst", delta=NEW4),
    imp("dbn-truncated-record", dbn_file(cut=-10), name="nq.dbn", code=1, err="truncated DBN file"),
    imp("dbn-one-byte-extra", dbn_file(extra=b"\x0e"), name="nq.dbn", code=1, err="truncated DBN file"),
    imp("dbn-zero-length-record", dbn_file(extra=b"\x00" * 8), name="nq.dbn", code=1, err="corrupt DBN file"),
    imp("dbn-truncated-metadata", dbn_file(cut=20), name="nq.dbn", code=1, err="not a readable DBN"),
    imp("dbn-magic-only", b"DBN\x03", name="nq.dbn", code=1, err="not a readable DBN"),
    imp("dbn-zst-truncated", dbn_file(compress=True, cut=-8), name="nq.dbn.zst", code=1, err="not a readable DBN"),
    imp("dbn-zst-megabyte-garbage", lambda p: p.write_bytes(np.random.default_rng(0).bytes(1_000_000)),
        name="nq.dbn.zst", code=1, err="not a readable DBN"),
    imp("dbn-zst-magic-then-garbage", b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 40, name="nq.dbn.zst", code=1,
        err="not a readable DBN"),
    imp("dbn-empty", b"", name="nq.dbn", code=1, err="the file is empty"),
    imp("dbn-volume-9.3e18", dbn_file(records=[*GOOD3_DBN, (T_DBN + 3 * MIN_NS, 20003.0, 9_300_000_000_000_000_000)]),
        name="nq.dbn", delta=NEW3_REJ1, reject="volume above"),
    imp("dbn-epoch-zero", dbn_file(records=[*GOOD3_DBN, (0, 20003.0, 5)]), name="nq.dbn", delta=NEW3_REJ1,
        reject="timestamp before 1990"),
    imp("dbn-sub-minute", dbn_file(records=[*GOOD3_DBN, (T_DBN + 3 * MIN_NS + 17_000_000_000, 20003.0, 5)]),
        name="nq.dbn", delta=NEW3_REJ1, reject="not on a whole minute"),
    imp("dbn-price-10x", dbn_file(records=[*GOOD3_DBN, (T_DBN + 3 * MIN_NS, 200030.0, 5)]), name="nq.dbn",
        delta=NEW3_REJ1, reject="price more than 5x"),
    imp("dbn-as-csv", dbn_file(), "--format", "csv", name="nq.dbn", code=1, err="binary data"),
]


# Lean minute zips
def lean_zip(members: dict[str, str]):
    def write(path):
        with zipfile.ZipFile(path, "w") as zf:
            for name, body in members.items():
                zf.writestr(name, body)

    return write


LEAN_MEMBER = "20240304_nq_minute_trade_202403.csv"
LEAN_GOOD = "".join(f"{(14 * 60 + 30 + i) * 60_000},18000,18001,17999,18000.5,5\n" for i in range(3))
LEAN_CASES = [
    imp("lean-good", lean_zip({LEAN_MEMBER: LEAN_GOOD}), name="20240304_trade.zip"),
    imp("lean-sub-minute-row", lean_zip({LEAN_MEMBER: LEAN_GOOD + f"{(14 * 60 + 33) * 60_000 + 17_000},"
                                                                  "18000,18001,17999,18000.5,5\n"}),
        name="20240304_trade.zip", delta=NEW3_REJ1, reject="not on a whole minute"),
    imp("lean-not-a-zip", b"PK\x03\x04" + b"junk" * 50, name="x.zip", code=1, err="not a valid zip"),
    imp("lean-unexpected-member", lean_zip({"../../etc/passwd": "x"}), name="x.zip", code=1, err="unexpected member"),
    imp("lean-empty-member", lean_zip({LEAN_MEMBER: ""}), name="x.zip", code=1, err="holds no minute bars"),
    imp("lean-bad-ms", lean_zip({LEAN_MEMBER: "noon,1,1,1,1,1\n"}), name="x.zip", code=1,
        err="unparseable millisecond timestamps"),
]


# ------------------------------------------------------------------------------------------
# CLI options and databases


def a_file(content: bytes, name="f"):
    def make(tmp):
        (tmp / name).write_bytes(content)
        return tmp / name

    return make


def newer_migration(tmp, db_path):
    con = duckdb.connect(str(db_path))
    con.execute("insert into _migrations (name, sha256) values ('999_from_the_future.sql', 'x')")
    con.close()


def newer_runstore(tmp, db_path):
    """A run store (./runs, the default) with one experiment, migrated by a newer nqexp."""
    from nqexp.experiment.track import RunStore

    store = RunStore(tmp / "runs")
    store.start_experiment("exp", "run", None, "name: exp\n")
    con = duckdb.connect(str(store.path))
    con.execute("insert into _migrations (name, sha256) values ('999_from_the_future.sql', 'x')")
    con.close()


OPTION_CASES = [
    cmd("opt-rejects-limit-negative", "data", "rejects", "--limit", "-1", code=2, err="-1 is not in the range"),
    cmd("opt-rejects-limit-huge", "data", "rejects", "--limit", "99999999999", code=2, err="not in the range"),
    cmd("opt-rejects-limit-text", "data", "rejects", "--limit", "ten", code=2, err="'ten' is not a valid integer"),
    cmd("opt-rejects-limit-zero", "data", "rejects", "--limit", "0"),
    cmd("opt-rejects-limit-five", "data", "rejects", "--limit", "5"),
    cmd("opt-demo-days-zero", "data", "demo", "--days", "0", code=2, err="0 is not in the range"),
    cmd("opt-demo-days-negative", "data", "demo", "--days", "-5", code=2, err="not in the range"),
    cmd("opt-demo-days-huge", "data", "demo", "--days", "10000000", code=2, err="not in the range"),
    cmd("opt-demo-seed-text", "data", "demo", "--seed", "abc", code=2, err="not a valid integer"),
    cmd("opt-demo-end-bad", "data", "demo", "--end", "2024-13-01", code=2, err="does not match the format"),
    cmd("opt-import-no-path", "data", "import", code=2, err="Missing argument 'PATH'"),
    cmd("opt-import-format-bogus", "data", "import", a_file(text(*GOOD)), "--format", "xlsx", code=2,
        err="'xlsx' is not one of"),
    cmd("opt-import-ts-is-bogus", "data", "import", a_file(text(*GOOD)), "--ts-is", "middle", code=2,
        err="'middle' is not one of"),
    cmd("opt-unknown-command", "data", "explode", code=2, err="No such command 'explode'"),
    cmd("opt-unknown-group", "frobnicate", code=2, err="No such command 'frobnicate'"),
    cmd("opt-unknown-option", "--bogus", "data", "info", code=2, err="No such option '--bogus'"),
    cmd("opt-unknown-sub-option", "data", "info", "--bogus", code=2, err="No such option '--bogus'"),
    cmd("opt-bars-freq-bogus", "data", "bars", "--freq", "2m", code=2, err="'2m' is not one of"),
    cmd("opt-bars-unknown-symbol", "data", "bars", "--symbol", "NOPE", code=1, err="no bars for series 'NOPE'"),
    cmd("opt-bars-megabyte-symbol", "data", "bars", "--symbol", "X" * 1_000_000, code=1, err="characters cut]"),
    cmd("opt-import-sql-in-symbol", "data", "import", a_file(text(*GOOD), "b.csv"), "--tz", "UTC", "--symbol",
        "x'); drop table raw_bars; --", delta=NEW3),
    cmd("opt-bars-sql-in-symbol", "data", "bars", "--symbol", "x' or '1'='1", code=1, err="no bars for series"),
    cmd("opt-set-megabyte-value", "run", str(QUICKSTART), "--dry-run", "--set", "name=" + "Z" * 1_000_000, code=2,
        err="must match"),
    cmd("opt-download-end-before-start", "data", "download", "--start", "2024-01-02", "--end", "2024-01-01",
        code=1, err="must be after --start"),
    cmd("opt-download-start-not-a-date", "data", "download", "--start", "notadate", "--end", "2024-01-01",
        code=1, err="not a date: 'notadate'"),
    cmd("opt-download-chunk-days-zero", "data", "download", "--start", "2024-01-01", "--end", "2024-01-02",
        "--chunk-days", "0", code=2, err="not in the range"),
    cmd("opt-download-credentials-missing", "data", "download", "--start", "2024-01-01", "--end", "2024-01-02",
        "--credentials", "/nonexistent/key", code=1, err="cannot read credentials file"),
    cmd("opt-download-credentials-dev-zero", "data", "download", "--start", "2024-01-01", "--end", "2024-01-02",
        "--credentials", "/dev/zero", code=1, err="not a regular file"),
    cmd("opt-download-credentials-empty", "data", "download", "--start", "2024-01-01", "--end", "2024-01-02",
        "--credentials", a_file(b"# nothing here\n\n"), code=1, err="holds no key"),
    cmd("opt-download-credentials-binary", "data", "download", "--start", "2024-01-01", "--end", "2024-01-02",
        "--credentials", a_file(b"\xff\xfe\x00key"), code=1, err="not text"),
    cmd("opt-download-credentials-huge", "data", "download", "--start", "2024-01-01", "--end", "2024-01-02",
        "--credentials", a_file(b"k" * 200_000), code=1, err="larger than 64 KB"),
    cmd("opt-download-credentials-dir", "data", "download", "--start", "2024-01-01", "--end", "2024-01-02",
        "--credentials", lambda tmp: tmp, code=2, err="is a directory"),
    cmd("opt-download-key-file-with-bad-dates", "data", "download", "--start", "2024-02-01", "--end", "2024-01-01",
        "--credentials", a_file(f"DATABENTO_API_KEY={DATABENTO_KEY}\n".encode()), code=1,
        err="must be after --start"),
    cmd("opt-verbose-info", "-vvvvv", "data", "info"),
    cmd("opt-info-json", "data", "info", "--json", out='"database"'),
    cmd("opt-run-spec-and-resume", "run", str(QUICKSTART), "--resume", "x", code=2, err="not both"),
    cmd("opt-run-no-spec", "run", code=2, err="missing SPEC_PATH"),
    cmd("opt-run-resume-unknown", "run", "--resume", "nosuch", code=2, err="no run store entry nosuch"),
    cmd("opt-sweep-num-samples-zero", "sweep", str(ROOT / "experiments" / "sweep.yaml"), "--num-samples", "0",
        code=2, err="not in the range"),
    cmd("opt-runs-ls-no-store", "runs", "ls", code=1, err="no run store"),
    cmd("opt-report-no-store", "report", "nope", code=1, err="no run store"),
    cmd("opt-features-unknown-set", "features", "build", "--set", "nope", "--symbol", "S", code=2,
        err="no feature set 'nope'"),
]

DATABASE_CASES = [
    cmd("db-newer-migration-info", "data", "info", code=1, err="written by a newer nqexp", prep=newer_migration),
    cmd("db-newer-migration-import", "data", "import", a_file(text(*GOOD)), "--tz", "UTC", code=1,
        err="999_from_the_future.sql", prep=newer_migration),
    cmd("db-newer-migration-rejects", "data", "rejects", code=1, err="newer nqexp", prep=newer_migration),
    cmd("runstore-newer-migration-ls", "runs", "ls", code=1, err="written by a newer nqexp", prep=newer_runstore),
    cmd("runstore-newer-migration-show", "runs", "show", "exp/t", code=1, err="999_from_the_future.sql",
        prep=newer_runstore),
    cmd("runstore-newer-migration-compare", "runs", "compare", "exp", code=1, err="newer nqexp", prep=newer_runstore),
    cmd("runstore-newer-migration-report", "report", "exp", code=1, err="newer nqexp", prep=newer_runstore),
    cmd("runstore-newer-migration-run", "run", QUICKSTART, "--smoke", code=1, err="newer nqexp",
        prep=newer_runstore, slow_ok=True),
    cmd("db-is-directory", "--db", lambda tmp: tmp, "data", "info", code=2, err="is a directory"),
    cmd("db-parent-is-file", "--db", lambda tmp: a_file(b"x", "plain")(tmp) / "sub" / "x.duckdb", "data", "info",
        code=1, err="is a file, not a folder"),
    cmd("db-parent-is-file-import", "--db", lambda tmp: a_file(b"x", "plain")(tmp) / "x.duckdb", "data", "import",
        a_file(text(*GOOD), "b.csv"), "--tz", "UTC", code=1, err="is a file, not a folder"),
    cmd("db-garbage-file", "--db", a_file(b"this is not duckdb" * 1000, "junk.duckdb"), "data", "info", code=1,
        err="cannot open database"),
    cmd("db-truncated-file", "--db", lambda tmp: a_file((tmp / "t.duckdb").read_bytes()[:5000], "cut.duckdb")(tmp),
        "data", "info", code=1, err="cannot open database"),
    cmd("db-garbage-for-run", "--db", a_file(b"\x00" * 4096, "zero.duckdb"), "run", str(QUICKSTART), "--smoke",
        "--set", "data.symbol=NQ.v.0", code=1, err="cannot open database", slow_ok=True),
]


# ------------------------------------------------------------------------------------------
# Specs and secrets


def spec_file(body: str | bytes, name="spec.yaml"):
    return a_file(body.encode() if isinstance(body, str) else body, name)


def alias_bomb():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    return "\n".join(["name: bomb", *lines, "description: *i"]) + "\n"


def child_of(parent: str) -> str:
    return f"name: child\nextends: {parent}\n"


def dry(id_, spec, *sets, code=2, err=None, out=None, **kw):
    argv = ["run", spec, "--dry-run"]
    for s in sets:
        argv += ["--set", s]
    return cmd(id_, *argv, code=code, err=err, out=out, **kw)


def fifo_spec(tmp):
    path = tmp / "spec.yaml"
    os.mkfifo(path)

    def unblock():             # a writer that lets a blocked open() return, so the suite never hangs
        time.sleep(1)
        with open(path, "wb"):
            pass

    threading.Thread(target=unblock, daemon=True).start()
    return path


QS = str(QUICKSTART)
SPEC_CASES = [
    dry("spec-missing-file", "/nonexistent/spec.yaml", err="file not found"),
    dry("spec-directory", "/tmp", err="is a directory"),
    dry("spec-dev-urandom", "/dev/urandom", err="larger than 1,000,000 bytes"),
    dry("spec-dev-zero", "/dev/zero", err="larger than 1,000,000 bytes"),
    dry("spec-huge-file", spec_file("name: big\ndescription: " + "x" * 1_100_000 + "\n"), err="larger than"),
    dry("spec-alias-bomb", spec_file(alias_bomb()), err="aliases"),
    dry("spec-self-alias", spec_file("name: &a x\ndescription: *a\n"), code=0),
    dry("spec-empty", spec_file(""), err="the file is empty"),
    dry("spec-comments-only", spec_file("# nothing\n"), err="the file is empty"),
    dry("spec-list", spec_file("- a\n- b\n"), err="the top level must be a mapping"),
    dry("spec-scalar", spec_file("42\n"), err="the top level must be a mapping"),
    dry("spec-bad-yaml", spec_file("name: [unclosed\n"), err="invalid YAML"),
    dry("spec-tab-indent", spec_file("name: x\nmodel:\n\td_model: 8\n"), err="invalid YAML"),
    dry("spec-latin1", spec_file("name: caf\xe9\n".encode("latin-1")), err="not UTF-8"),
    dry("spec-deep-nesting", spec_file("name: deep\ndescription: " + "[" * 5000 + "]" * 5000 + "\n"),
        err="nested too deeply"),
    dry("spec-unknown-top-key", spec_file("name: x\nbogus: 1\n"), err="bogus"),
    dry("spec-unknown-section-key", spec_file("name: x\nmodel:\n  d_modle: 8\n"), err="d_modle"),
    dry("spec-name-traversal", QS, "name=../../etc", err="must match"),
    dry("spec-name-empty", QS, "name=", err="every spec needs a name"),
    dry("spec-set-unknown-key", QS, "nosuch.key=1", err="unknown key 'nosuch'"),
    dry("spec-set-no-equals", QS, "nosuch", err="expected KEY=VALUE"),
    dry("spec-set-lr-inf", QS, "train.lr=.inf", err="not a finite number"),
    dry("spec-set-lr-nan", QS, "train.lr=.nan", err="not a finite number"),
    dry("spec-set-cpus-inf", QS, "resources.cpus_per_trial=.inf", err="not a finite number"),
    dry("spec-set-gpus-negative", QS, "resources.gpus_per_trial=-1", err="gpus_per_trial"),
    dry("spec-set-t-max-1e12", QS, "windows.t_max=1e12", err="windows.t_max"),
    dry("spec-set-seed-beyond-int64", QS, "seeds=[99999999999999999999]", err="64-bit integer"),
    dry("spec-set-time-budget-negative", QS, "train.time_budget_s=-5", err="time_budget_s"),
    # A number where a date goes would be read as Unix time (1704067200 -> 2024-01-01): refused.
    dry("spec-date-unix-seconds", QS, "splits.test_start=1760572800", err="is a number, not a date"),
    dry("spec-date-unix-ms", QS, "splits.test_start=1760572800000", err="is a number, not a date"),
    dry("spec-date-yyyymmdd", QS, "splits.test_start=20251016", err="is a number, not a date"),
    dry("spec-date-zero", QS, "splits.train_start=0", err="splits.train_start: 0 is a number"),
    dry("spec-date-float", QS, "splits.val_end=1.7e+9", err="is a number, not a date"),
    dry("spec-date-in-file", spec_file(f"name: d\nextends: {QS}\nsplits:\n  test_end: 1764720000\n"),
        err="splits.test_end: 1764720000 is a number"),
    dry("spec-date-in-variant", spec_file(f"name: d\nextends: {QS}\nvariants:\n  a: {{splits.test_end: 1764720000}}\n"),
        err="variants.a.splits.test_end: 1764720000 is a number"),
    cmd("spec-date-in-search", "sweep", spec_file(f"name: d\nextends: {QS}\nsearch:\n"
                                                  "  splits.test_end: {choice: [1764720000]}\n"), "--dry-run",
        code=2, err="is a number, not a date"),
    dry("spec-date-iso-still-fine", QS, "splits.test_start=2025-10-16", code=0, out="quickstart"),
    dry("spec-many-variants", spec_file("name: many\nvariants:\n" + "".join(f"  v{i}: {{}}\n" for i in range(1500))),
        err="variants; at most"),
    dry("spec-extends-missing", spec_file(child_of("/nonexistent/base.yaml")), err="file not found"),
    dry("spec-extends-dev-urandom", spec_file(child_of("/dev/urandom")), err="larger than"),
    dry("spec-extends-self", spec_file(child_of("spec.yaml")), err="extends"),
    dry("spec-fifo", fifo_spec, err="not a regular file"),
    # Secrets: refused with one line that does not repeat them.
    dry("secret-description-databento", spec_file(f"name: s\ndescription: {DATABENTO_KEY}\n"),
        err="must not contain secrets"),
    dry("secret-description-env-key-inside", spec_file(f"name: s\ndescription: my key is {WANDB_KEY} ok\n"),
        err="must not contain secrets"),
    dry("secret-tags", spec_file(f"name: s\ntrack:\n  tags: [a, {WANDB_KEY}]\n"), err="must not contain secrets"),
    dry("secret-wandb-project", QS, f"track.wandb_project={DATABENTO_KEY}", err="must not contain secrets"),
    dry("secret-variant-value", spec_file(f"name: s\nvariants:\n  v:\n    track.wandb_project: {WANDB_KEY}\n"),
        err="must not contain secrets"),
    dry("secret-key-named-field", QS, "track.api_key=hunter2", err="must not contain secrets"),
    dry("secret-key-named-yaml", spec_file("name: s\ntrack:\n  token: abc\n"), err="must not contain secrets"),
    dry("secret-env-key-in-set", QS, f"description=prefix-{DATABENTO_KEY}", err="must not contain secrets"),
    dry("secret-in-extends-parent", spec_file(child_of("parent.yaml")), err="must not contain secrets",
        prep=lambda tmp, db: (tmp / "parent.yaml").write_text(f"name: p\ndescription: {DATABENTO_KEY}\n")),
    # Specs that are fine: the dry run and --print-spec print no secret (checked for every case).
    dry("spec-quickstart-dry-run", QS, code=0, out="quickstart"),
    cmd("spec-quickstart-print-spec", "run", QS, "--print-spec", out="name: quickstart"),
    cmd("spec-print-spec-smoke", "run", QS, "--smoke", "--print-spec", out="name: quickstart"),
    cmd("spec-sweep-dry-run", "sweep", str(ROOT / "experiments" / "sweep.yaml"), "--dry-run", out="sweep"),
    dry("spec-dry-run-ignores-resources", QS, "resources.gpus_per_trial=1", code=0, out="quickstart"),
    # Refused before any progress is drawn (stdout stays empty): trials that could never be scheduled,
    # and bars that are not there.
    cmd("run-gpus-not-here", "run", QS, "--smoke", "--set", "resources.gpus_per_trial=1", code=2,
        err="--set resources.gpus_per_trial=0", out="", slow_ok=True),
    cmd("run-cpus-not-here", "run", QS, "--smoke", "--set", "resources.cpus_per_trial=4096", code=2,
        err="resources.cpus_per_trial is 4096", out="", slow_ok=True),
    cmd("run-no-bars", "run", QS, "--smoke", "--set", "data.symbol=NQ.v.0", code=1, err="no bars for data.symbol",
        out="", slow_ok=True),
    cmd("run-tsa-ablation-no-bars", "run", str(ROOT / "experiments" / "tsa_ablation.yaml"),
        "--set", "resources.gpus_per_trial=0", "--set", "resources.cpus_per_trial=1", code=1,
        err="no bars for data.symbol 'NQ.v.0'", out="", slow_ok=True),
    cmd("sweep-gpus-not-here", "sweep", str(ROOT / "experiments" / "sweep.yaml"), code=2,
        err="gpus_per_trial", out="", slow_ok=True),
]

CASES = [*ROW_CASES, *EPOCH_CASES, *FORMAT_CASES, *WARN_CASES, *REIMPORT_CASES, *REFUSED_FILE_CASES,
         *PARQUET_CASES, *DBN_CASES, *LEAN_CASES, *OPTION_CASES, *DATABASE_CASES, *SPEC_CASES]


def _gpu_cases_apply() -> bool:
    try:
        import torch

        return torch.cuda.device_count() == 0
    except ImportError:
        return True


# ------------------------------------------------------------------------------------------
# The runner


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    """One small database (migrated, three BASE bars, one reject) that every case gets a copy of,
    with its snapshot (a case's copy starts identical to it)."""
    from nqexp.data import db, ingest

    folder = tmp_path_factory.mktemp("hostile_template")
    path = folder / "t.duckdb"
    src = folder / "base.csv"
    src.write_bytes(text("2024-01-02 15:00:00,100,101,99,100,1", "2024-01-02 15:01:00,100,101,99,100.5,2",
                         "2024-01-02 15:02:00,100.5,101,100,101,3", "2024-01-02 15:03:00,0,1,1,1,1"))
    con = db.connect(path)
    ingest.import_file(con, src, tz="UTC", symbol="BASE")
    con.close()
    return SimpleNamespace(path=path, snapshot=snapshot(path))


def snapshot(path: Path):
    """Row counts of every table and a digest of raw_bars' values (read without nqexp, without migrating)."""
    if not path.exists():
        return None
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [r[0] for r in con.execute(
            "select table_name from information_schema.tables where table_schema = 'main' order by 1").fetchall()]
        counts = dict(con.execute(" union all ".join(f"select '{t}', count(*) from \"{t}\"" for t in tables))
                      .fetchall())
        digest = con.execute("select coalesce(sum(hash(symbol, ts, open, high, low, close, volume)), 0) "
                             "from raw_bars").fetchall()[0][0] if "raw_bars" in tables else None
        reasons = [r[0] for r in con.execute("select reason from rejected_bars").fetchall()] \
            if "rejected_bars" in tables else []
    finally:
        con.close()
    return counts, digest, reasons


def _params():
    out = []
    for case in CASES:
        marks = []
        if case.xfail:
            marks.append(pytest.mark.xfail(reason=case.xfail, strict=True))
        if case.id.startswith(("run-gpus", "sweep-gpus")) and not _gpu_cases_apply():
            marks.append(pytest.mark.skip(reason="this machine has a GPU"))
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


def test_case_ids_are_unique_and_the_corpus_is_large():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    assert len(CASES) >= 150


@pytest.mark.parametrize("case", _params())
def test_hostile(case: Case, template_db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db_path = tmp_path / "t.duckdb"
    shutil.copy(template_db.path, db_path)
    if case.prep:
        case.prep(tmp_path, db_path)
    argv = [str(a) for a in case.make(tmp_path)]
    before = snapshot(db_path) if case.prep else template_db.snapshot
    t0 = time.perf_counter()
    result = CliRunner().invoke(cli, argv, prog_name="nqexp", env={"NQEXP_DB": str(db_path), **ENV})
    seconds = time.perf_counter() - t0
    # The command's connection lives on in the result's traceback frames; DuckDB refuses a second,
    # differently configured connection to the same file until it is collected.
    result = SimpleNamespace(exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr,
                             escaped=not (result.exception is None or isinstance(result.exception, SystemExit)),
                             trace="".join(traceback.format_exception(*result.exc_info)) if result.exc_info else "")
    try:
        after = snapshot(db_path)
    except duckdb.ConnectionException:
        gc.collect()
        after = snapshot(db_path)

    shown = f"$ nqexp {' '.join(argv)[:300]}\nexit {result.exit_code}\nstdout: {result.stdout[:800]}\n" \
            f"stderr: {result.stderr[:800]}"
    # No traceback: the command ended through click (SystemExit), not an escaping exception.
    assert not result.escaped, \
        f"{shown}\n{result.trace}"
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert result.exit_code == case.code, shown

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if case.err is not None:
        assert len(lines) == 1, shown
        assert lines[0].startswith("Error: ") and case.err in lines[0], shown
        assert len(lines[0]) <= 600, f"{len(lines[0])} characters"
    elif case.warn is not None:
        assert len(lines) == 1 and lines[0].startswith("Warning: ") and case.warn in lines[0], shown
    else:
        assert lines == [], shown
    if case.out == "":
        assert result.stdout.strip() == "", f"{shown}\n(progress or output drawn before the refusal)"
    elif case.out is not None:
        assert case.out in result.stdout, shown

    # Secrets: never printed, whatever happened.
    for key in (DATABENTO_KEY, WANDB_KEY):
        assert key not in result.stdout and key not in result.stderr, f"an API key was printed\n{shown}"

    # The database: unchanged, or changed by exactly the expected rows.
    counts_before, digest_before, reasons_before = before
    counts_after, digest_after, reasons_after = after
    assert set(counts_after) == set(counts_before), "tables appeared or vanished"
    delta = {t: counts_after[t] - counts_before[t] for t in counts_after if counts_after[t] != counts_before[t]}
    assert delta == case.delta, shown
    if not case.delta.get("raw_bars") and not case.changes_rows:
        assert digest_after == digest_before, "raw_bars values changed"
    if case.reject is not None:
        new_reasons = list((Counter(reasons_after) - Counter(reasons_before)).elements())
        assert any(case.reject in r for r in new_reasons), f"{shown}\nnew rejects: {new_reasons}"
    assert seconds < (20 if case.slow_ok else 5), f"{case.id} took {seconds:.1f}s"


# ------------------------------------------------------------------------------------------
# Secrets in what is written, not only in what is printed


def test_redaction_masks_secret_keys_and_env_values_at_any_depth(monkeypatch):
    """One policy (nqexp/secrets.py) for every writer: secret keys masked, env key values masked anywhere."""
    from nqexp import secrets

    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    tree = {"track": {"api_key": "k1", "nested": [{"token": "k2", "ok": f"x{WANDB_KEY}y"}]}, "name": "n"}
    redacted = secrets.redact(tree)
    assert redacted["track"]["api_key"] == secrets.REDACTED
    assert redacted["track"]["nested"][0]["token"] == secrets.REDACTED
    assert redacted["track"]["nested"][0]["ok"] == f"x{secrets.REDACTED}y"
    assert WANDB_KEY not in repr(redacted)
    assert secrets.redact_text(f"401 for {WANDB_KEY} and db-AbCdEfGhIjKlMnOpQrStUv") == "401 for *** and ***"


def test_files_an_experiment_writes_hold_no_api_key(tmp_path, monkeypatch):
    """The resolved spec, every trial's spec.yaml and the run store, written by the real driver
    (data preparation and Ray are replaced by no-ops: nothing is trained), contain neither key."""
    from nqexp.experiment import spec as spec_mod
    from nqexp.experiment import tune

    monkeypatch.chdir(tmp_path)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    spec = spec_mod.load_spec(str(QUICKSTART), overrides=[f"track.store={tmp_path / 'runs'}"], smoke=True)
    monkeypatch.setattr(tune, "prepare_data", lambda rep, db_path, notes=None: tune.PreparedData(
        key="k", datasets={}, horizon_minutes=(), names=[]))
    for name in ("init_ray", "run_trials", "shutdown_ray", "_note_cluster_gpus"):
        monkeypatch.setattr(tune, name, lambda *a, **k: None)
    outcome = tune.run_experiment(spec, spec_path=str(QUICKSTART), db_path=str(tmp_path / "t.duckdb"))
    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert outcome.unfinished and any(p.name == "spec.yaml" for p in written)
    assert any(p.name == "spec.resolved.yaml" for p in written)
    for path in written:
        data = path.read_bytes()
        assert DATABENTO_KEY.encode() not in data and WANDB_KEY.encode() not in data, path


# ------------------------------------------------------------------------------------------
# Reliability, round 3: full disks, stores that move or cannot be written, time, imports that
# would change stored bars, and spec ranges.
#
# In-process cases go through test_hostile itself (one line, exit code, no traceback, the database
# unchanged or changed by exactly the expected rows); `patch` applies after the case's prep (a full
# disk from tests/full_disk.py, say), and the run store under the case's folder must be unchanged
# too unless `store_changes`. Read-only stores need a process that cannot write what its
# permissions forbid, even as root: those cases run `nqexp` in a child process (setpriv drops the
# capabilities that let root ignore permissions).

import dataclasses
import errno
import subprocess
import sys

from tests.full_disk import full_disk
from tests.read_only import read_only, reader_prefix


@dataclass
class Reliab:
    case: Case
    patch: Callable | None = None          # (monkeypatch, tmp) -> None, after the case's prep
    store_changes: bool = False            # the command may write the run store (./runs)


def store_state(root: Path):
    """The run store as a reader sees it: its tables' rows (read without nqexp) and its files."""
    if not root.exists():
        return None
    files = sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*")
                   if p.is_file() and p.name != "store.duckdb")
    dirs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir())
    rows = None
    if (root / "store.duckdb").exists():
        con = duckdb.connect(str(root / "store.duckdb"), read_only=True)
        try:
            tables = [r[0] for r in con.execute("select table_name from information_schema.tables "
                                                "where table_schema = 'main' order by 1").fetchall()]
            rows = {t: sorted(map(repr, con.execute(f'select * exclude (updated_at) from "{t}"' if t == "trials"
                                                    else f'select * from "{t}"').fetchall())) for t in tables}
        finally:
            con.close()
    return files, dirs, rows


def build_store(root: Path) -> None:
    """A small finished experiment 'exp' (variants a and b, one seed): predictions, metrics, epochs, plots."""
    from nqexp.evaluation import evaluate
    from nqexp.experiment.track import RunStore

    rng = np.random.default_rng(0)
    n, taus, horizons = 400, (0.1, 0.5, 0.9), (15, 60)
    ts = np.datetime64("2025-01-06T14:30", "us") + np.arange(n) * np.timedelta64(5, "m")
    y = 1e-3 * rng.standard_normal((n, 2))
    z = np.array([-1.2816, 0.0, 1.2816])
    store = RunStore(root)
    store.start_experiment("exp", "run", None, "name: exp\nvariants: {a: {}, b: {model.init_width: 2.0}}\n")
    for variant, width in (("a", 1e-3), ("b", 2e-3)):
        trial = f"{variant}-s0"
        d = store.trial_dir("exp", trial)
        (d / "plots").mkdir(parents=True)
        (d / "plots" / "test_reliability.png").write_bytes(b"\x89PNG not really " + trial.encode())
        q = np.broadcast_to(width * z, (n, 2, 3)).copy()
        base = {"climatology": np.broadcast_to(1e-3 * z, (n, 2, 3)).copy()}
        evaluate.save_predictions(d / "predictions.parquet",
                                  {"test": evaluate.SplitPredictions(ts=ts, y=y, q=q, baselines=base)}, taus, horizons)
        table = evaluate.evaluate_split_table("test", y, q, taus, horizons, ts, base, n_boot=20)
        store.upsert_trial("exp", trial, variant=variant, seed=0, status="finished", params_json="{}", spec_yaml="",
                           dir=str(d))
        store.write_metrics("exp", trial, {f"test/{k}": v for k, v in evaluate.flatten_metrics(table).items()})
        store.write_epoch("exp", trial, 1, {"train/loss_epoch": 1.0, "val/crps": 2.0})
    store.finish_experiment("exp", "finished", 1.0)


@pytest.fixture(scope="module")
def template_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_store") / "runs"
    build_store(root)
    return root


_TEMPLATE_STORE: list[Path] = []       # set by test_reliability from the fixture, for the preps below


def with_store(moved_from_absolute: bool = False):
    """prep: ./runs is a copy of the template store (made elsewhere and moved here when asked, with the
    absolute trial paths an older nqexp recorded)."""
    def prep(tmp, db_path):
        src = _TEMPLATE_STORE[0]
        if not moved_from_absolute:
            shutil.copytree(src, tmp / "runs")
            return
        shutil.copytree(src, tmp / "was_here")
        con = duckdb.connect(str(tmp / "was_here" / "store.duckdb"))
        con.execute("update trials set dir = ? || '/' || dir", [str(tmp / "was_here")])
        con.close()
        shutil.move(tmp / "was_here", tmp / "runs")

    return prep


def then(*preps):
    def prep(tmp, db_path):
        for p in preps:
            p(tmp, db_path)

    return prep


def imported(lines, symbol=None):
    """prep: these CSV lines imported (UTC) before the case runs."""
    def prep(tmp, db_path):
        from nqexp.data import db, ingest

        (tmp / "first.csv").write_bytes(text(*lines))
        con = db.connect(db_path)
        ingest.import_file(con, tmp / "first.csv", tz="UTC", symbol=symbol)
        con.close()

    return prep


def bars_built(symbol="BASE"):
    def prep(tmp, db_path):
        from nqexp.data import bars, db

        con = db.connect(db_path)
        bars.build_bars(con, symbol, [1, 5])
        con.close()

    return prep


def disk_full_at(when="commit", only=None):
    return lambda monkeypatch, tmp: full_disk(monkeypatch, when=when, only=only)


def no_space_in(module_attr: str):
    """patch: `module:function` raises OSError(ENOSPC), as a write that found the disk full does."""
    import importlib

    module, name = module_attr.split(":")

    def patch(monkeypatch, tmp):
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "runs" / "exp" / "spec.resolved.yaml"))

        monkeypatch.setattr(importlib.import_module(module), name, full)

    return patch


def minutes(start, n, price=18000.0, step=0.25, volume=5):
    return [f"{t:%Y-%m-%d %H:%M:%S},{price + i * step},{price + i * step + 1},{price + i * step - 1},"
            f"{price + i * step},{volume}" for i, t in enumerate(pd.date_range(start, periods=n, freq="min"))]


NOW = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")
ONE_MINUTE = minutes("2024-03-04 09:30", 30, price=18000.0, step=0.0)
FIVE_MINUTE = [f"{t:%Y-%m-%d %H:%M:%S},18000,18002,17998,18001,25"
               for t in pd.date_range("2024-03-04 09:30", periods=6, freq="5min")]
CORRECTED = [*GOOD[:2], "2024-03-04 09:32:00,18001.75,18003.25,18001.50,18003.00,9"]
STEP_BACK = minutes("2024-03-04 09:00", 120) + minutes("2024-03-04 10:00", 120, price=18040.0)
FALL_BACK_NY = minutes("2024-11-03 00:30", 90) + minutes("2024-11-03 01:00", 90, price=18030.0)
LEAN_DAY_END = LEAN_GOOD + "86400000,18000,18001,17999,18000.5,5\n"
LEAN_NEGATIVE = LEAN_GOOD + "-60000,18000,18001,17999,18000.5,5\n"
FULL = "is full"
NOT_WRITABLE = "is not writable"

RELIABILITY = [
    # A full disk during an import, the demo, bars, features or a run: one line, nothing written.
    Reliab(imp("full-disk-import-commit", text(*GOOD), "--tz", "UTC", code=1, err=FULL), disk_full_at("commit")),
    Reliab(imp("full-disk-import-insert", text(*GOOD), "--tz", "UTC", code=1, err=FULL),
           disk_full_at("insert into raw_bars")),
    Reliab(imp("full-disk-import-rejects", text(*GOOD, "2024-03-04 09:33:00,0,1,1,1,1"), "--tz", "UTC", code=1,
               err=FULL), disk_full_at("insert into rejected_bars")),
    Reliab(imp("full-disk-reimport-replace", text(*CORRECTED), "--tz", "UTC", "--replace", code=1, err=FULL,
               prep=imported(GOOD)), disk_full_at("commit")),
    Reliab(cmd("full-disk-demo", "data", "demo", "--days", "3", code=1, err=FULL), disk_full_at("commit")),
    Reliab(cmd("full-disk-bars", "data", "bars", "--symbol", "BASE", code=1, err="building bars for BASE: the disk"),
           disk_full_at("commit")),
    Reliab(cmd("full-disk-features-staging", "features", "build", "--set", "migt24", "--symbol", "BASE", code=1,
               err="building features migt24 for BASE: the disk", prep=bars_built(), slow_ok=True),
           disk_full_at("create table")),
    Reliab(cmd("full-disk-features-commit", "features", "build", "--set", "migt24", "--symbol", "BASE", code=1,
               err="building features migt24 for BASE: the disk", prep=bars_built(), slow_ok=True),
           disk_full_at("commit")),
    Reliab(cmd("full-disk-run-store", "run", QUICKSTART, "--smoke", code=1, err="recording experiment quickstart-smoke",
               prep=with_store(), slow_ok=True), disk_full_at("commit", only="runs")),
    Reliab(cmd("full-disk-run-spec-file", "run", QUICKSTART, "--smoke", code=1, err="the disk is full writing",
               prep=with_store(), slow_ok=True), no_space_in("nqexp.experiment.spec:dump_resolved")),
    # Stores that move: a copied store, and one whose older records hold absolute paths, report from themselves.
    Reliab(cmd("store-copied-report", "report", "exp", out="Report:", prep=with_store(), slow_ok=True),
           store_changes=True),
    Reliab(cmd("store-moved-absolute-paths-report", "report", "exp", out="Report:",
               prep=with_store(moved_from_absolute=True), slow_ok=True), store_changes=True),
    Reliab(cmd("store-moved-runs-show", "runs", "show", "exp/a-s0", "--json", out='"dir": ',
               prep=with_store(moved_from_absolute=True))),
    Reliab(cmd("store-report-out-elsewhere", "report", "exp", "--out", lambda tmp: tmp / "elsewhere" / "r.md",
               out="elsewhere/r.md", prep=with_store(), slow_ok=True)),
    # A file where the store goes: refused before anything runs (stdout stays empty).
    Reliab(cmd("store-track-store-is-file", "run", QUICKSTART, "--smoke", "--set",
               lambda tmp: f"track.store={a_file(b'x', 'plain')(tmp)}", code=2, err="a file, not a folder", out="",
               slow_ok=True)),
    Reliab(cmd("store-track-store-under-file", "run", QUICKSTART, "--smoke", "--set",
               lambda tmp: f"track.store={a_file(b'x', 'plain')(tmp) / 'runs'}", code=2, err="a file, not a folder",
               out="", slow_ok=True)),
    Reliab(cmd("store-runs-ls-store-is-file", "runs", "ls", "--store", a_file(b"x", "plain"), code=2,
               err="is a file")),
    Reliab(cmd("store-report-out-is-folder", "report", "exp", "--out", lambda tmp: tmp, code=2, err="is a directory",
               prep=with_store())),
    Reliab(cmd("store-runs-ls-missing-creates-nothing", "runs", "ls", "--store", lambda tmp: tmp / "no" / "runs",
               code=1, err="no run store")),
    # Time: one future tolerance, clocks that step back, Lean millisecond counts outside the day.
    Reliab(row_case("row-future-20-hours", minutes(NOW + pd.Timedelta(hours=20), 1, price=18002)[0],
                    "timestamp in the future (starts more than 15 minutes after the import)")),
    Reliab(imp("row-future-10-minutes-is-fine", text(*GOOD, minutes(NOW + pd.Timedelta(minutes=10), 1,
                                                                    price=18002)[0]), "--tz", "UTC",
               delta={"raw_bars": 4, "imports": 1})),
    Reliab(imp("clock-steps-back-an-hour", text(*STEP_BACK), "--tz", "UTC",
               delta={"raw_bars": 120, "rejected_bars": 120, "imports": 1},
               reject="timestamps go backwards: data row 121 (2024-03-04 10:00:00) is 59 minutes earlier")),
    Reliab(imp("clock-fall-back-explained-by-tz", text(*FALL_BACK_NY), "--tz", "America/New_York",
               delta={"raw_bars": 180, "imports": 1})),
    Reliab(imp("clock-fall-back-with-wrong-tz", text(*FALL_BACK_NY), "--tz", "UTC",
               delta={"raw_bars": 90, "rejected_bars": 90, "imports": 1}, reject="timestamps go backwards")),
    Reliab(imp("clock-newest-first-is-fine", text(*reversed(GOOD)), "--tz", "UTC")),
    Reliab(imp("lean-ms-end-of-day", lean_zip({LEAN_MEMBER: LEAN_DAY_END}), name="20240304_trade.zip",
               delta=NEW3_REJ1, reject="Lean millisecond field outside 0..86,399,999")),
    Reliab(imp("lean-ms-negative", lean_zip({LEAN_MEMBER: LEAN_NEGATIVE}), name="20240304_trade.zip",
               delta=NEW3_REJ1, reject="Lean millisecond field outside 0..86,399,999")),
    # Imports never silently replace stored bars: how many, and --replace.
    Reliab(imp("reimport-coarser-bars-refused", text(*FIVE_MINUTE), "--tz", "UTC", code=1,
               err="would change 6 stored bar(s) of NQ", prep=imported(ONE_MINUTE))),
    Reliab(imp("reimport-coarser-bars-say-so", text(*FIVE_MINUTE), "--tz", "UTC", code=1,
               err="5 minutes apart, coarser than the stored 1-minute bars", prep=imported(ONE_MINUTE))),
    Reliab(imp("reimport-correction-needs-replace", text(*CORRECTED), "--tz", "UTC", code=1,
               err="Import it with --replace", prep=imported(GOOD))),
    Reliab(imp("reimport-coarser-bars-replace", text(*FIVE_MINUTE), "--tz", "UTC", "--replace", delta={"imports": 1},
               changes_rows=True, out="0 new, 0 unchanged, 6 changed", prep=imported(ONE_MINUTE))),
    Reliab(imp("reimport-other-symbol-is-new", text(*FIVE_MINUTE), "--tz", "UTC", "--symbol", "NQ5",
               delta={"raw_bars": 6, "imports": 1}, prep=imported(ONE_MINUTE))),
    # Spec ranges (tests/test_spec.py crosses every declared bound; these are the ones users hit).
    Reliab(dry("spec-set-steps-per-epoch-zero", QS, "train.steps_per_epoch=0", err="train.steps_per_epoch: 0 is not >= 1")),
    Reliab(dry("spec-set-patience-negative", QS, "train.patience=-1", err="train.patience: -1 is not >= 1")),
    Reliab(dry("spec-set-warmup-negative", QS, "train.warmup_steps=-5", err="train.warmup_steps: -5 is not >= 0")),
    Reliab(dry("spec-set-grad-clip-negative", QS, "train.grad_clip=-1", err="train.grad_clip: -1 is not > 0")),
    Reliab(dry("spec-set-beta1-above-one", QS, "train.beta1=1.5", err="train.beta1: 1.5 is not in [0, 1)")),
    Reliab(dry("spec-set-quantile-above-one", QS, "model.quantiles=[0.1, 0.5, 1.5]",
               err="model.quantiles: item 2: 1.5 is not in (0, 1)")),
    Reliab(dry("spec-set-gate-rate-above-one", QS, "eval.gates.max_crossing_rate=2",
               err="eval.gates.max_crossing_rate: 2 is not in [0, 1]")),
]


def test_reliability_case_ids_are_unique_and_new():
    ids = [r.case.id for r in RELIABILITY]
    assert len(ids) == len(set(ids)) and not set(ids) & {c.id for c in CASES}


@pytest.mark.parametrize("r", [pytest.param(r, id=r.case.id) for r in RELIABILITY])
def test_reliability(r: Reliab, template_db, template_store, tmp_path, monkeypatch):
    _TEMPLATE_STORE[:] = [template_store]
    state = {}

    def prep(tmp, db_path):
        if r.case.prep:
            r.case.prep(tmp, db_path)
        state["store"] = store_state(tmp / "runs")
        if r.patch:
            r.patch(monkeypatch, tmp)

    test_hostile(dataclasses.replace(r.case, prep=prep), template_db, tmp_path, monkeypatch)
    monkeypatch.undo()
    if not r.store_changes:
        assert store_state(tmp_path / "runs") == state["store"], "the run store changed"
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"
    if r.case.id.startswith("store-") and r.case.out == "Report:":
        report = (tmp_path / "runs" / "exp" / "report.md").read_text()
        for link in ("report_figures/learning_curves.png", "trials/a-s0/plots/test_reliability.png"):
            assert f"]({link})" in report and (tmp_path / "runs" / "exp" / link).exists(), link
    if r.case.id == "store-report-out-elsewhere":
        assert (tmp_path / "elsewhere" / "r_figures" / "b_test_reliability.png").exists()


# Read-only stores: a child process that may not write them (as root too).


READ_ONLY_CASES = [
    # (id, argv after --store-less command, exit code, stdout must hold, the one stderr line must hold)
    ("runs-ls", ["runs", "ls", "--store", "{store}", "--json"], 0, '"experiment": "exp"', None),
    ("runs-show", ["runs", "show", "exp/b-s0", "--store", "{store}"], 0, "b-s0", None),
    ("runs-compare", ["runs", "compare", "exp", "--store", "{store}", "--json"], 0, '"variant"', None),
    ("report-out", ["report", "exp", "--store", "{store}", "--out", "{tmp}/reports/exp.md"], 0, "Report:", None),
    ("report-into-store", ["report", "exp", "--store", "{store}"], 1, "",
     "is not writable (Permission denied); reading it still works"),
    ("run-into-store", ["run", str(QUICKSTART), "--smoke", "--set", "track.store={store}"], 1, "", NOT_WRITABLE),
]


@pytest.mark.parametrize("id_, argv, code, out, err", READ_ONLY_CASES, ids=[c[0] for c in READ_ONLY_CASES])
def test_a_read_only_store_serves_reads_and_refuses_writes_in_one_line(id_, argv, code, out, err, template_store,
                                                                        tmp_path):
    prefix = reader_prefix()
    store = tmp_path / "ro" / "runs"
    shutil.copytree(template_store, store)
    argv = [a.format(store=store, tmp=tmp_path) for a in argv]
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "NQEXP_DB": str(tmp_path / "t.duckdb"),
           "COLUMNS": "200"}
    with read_only(store):
        before = store_state(store)
        result = subprocess.run([*prefix, sys.executable, "-m", "nqexp.cli", *argv], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300, check=False)
        after = store_state(store)
    shown = f"$ nqexp {' '.join(argv)}\nexit {result.returncode}\nstdout: {result.stdout[-800:]}\nstderr: {result.stderr[-800:]}"
    assert result.returncode == code, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if err is None:
        assert lines == [], shown
        assert out in result.stdout, shown
    else:
        assert len(lines) == 1 and lines[0].startswith("Error: ") and err in lines[0], shown
        assert result.stdout.strip() == "", shown
    assert after == before, "the read-only store changed"
    for key in (DATABENTO_KEY, WANDB_KEY):
        assert key not in result.stdout + result.stderr
    if id_ == "report-out":
        report = (tmp_path / "reports" / "exp.md").read_text()
        assert "](exp_figures/a_test_reliability.png)" in report and str(store) not in report
