"""DBN test files written with databento's own encoder (shared by the ingest and hostile-input tests)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd
import pytest


@dataclass
class _Interval:  # the shape databento's Metadata reads a symbol mapping interval from
    start_date: dt.date
    end_date: dt.date
    symbol: str


@dataclass
class _Mapping:
    raw_symbol: str
    intervals: list


def ohlcv_dbn(bars, *, symbol: str = "NQ.v.0", intervals=(), continuous: bool = True,
              start: str = "2025-03-10", end: str = "2025-03-13") -> bytes:
    """Uncompressed DBN bytes: metadata, then one OHLCV-1m record per bar.

    bars: (ts_ns, instrument_id, price, volume) with high/low one point either side; intervals:
    (start_date, end_date, instrument id) of the continuous symbol's mapping to contracts.
    """
    dbn = pytest.importorskip("databento_dbn")
    meta = dbn.Metadata(
        dataset="GLBX.MDP3", start=pd.Timestamp(start, tz="UTC").value, end=pd.Timestamp(end, tz="UTC").value,
        stype_in=dbn.SType.CONTINUOUS if continuous else dbn.SType.RAW_SYMBOL, stype_out=dbn.SType.INSTRUMENT_ID,
        schema=dbn.Schema.OHLCV_1M, symbols=[symbol], partial=[], not_found=[],
        mappings=[_Mapping(symbol, [_Interval(*i) for i in intervals])] if intervals else [],
    )
    px = lambda x: int(round(x * dbn.FIXED_PRICE_SCALE))  # noqa: E731
    body = b"".join(bytes(dbn.OHLCVMsg(dbn.RType.OHLCV_1M, 1, iid, ts, px(p), px(p + 1), px(p - 1), px(p), vol))
                    for ts, iid, p, vol in bars)
    return bytes(meta) + body
