"""ingest.py: validated, idempotent imports where nothing a user gave is silently dropped."""

from __future__ import annotations

import datetime as dt
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from nqexp.data import ingest, readers, validate
from nqexp.errors import DataError
from tests.dbn_encode import ohlcv_dbn

GOOD_ROWS = [
    "2024-03-04 09:30:00,18000.00,18001.00,17999.00,18000.50,10",
    "2024-03-04 09:31:00,18000.50,18002.00,18000.00,18001.75,12",
    "2024-03-04 09:32:00,18001.75,18003.25,18001.50,18002.00,7",
]


def write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_unique(con):
    dup = con.execute("select count(*) from (select symbol, ts from raw_bars group by all having count(*) > 1)").fetchall()[0][0]
    assert dup == 0, f"{dup} duplicate (symbol, ts) keys in raw_bars"


def table_counts(con):
    assert_unique(con)
    return {t: con.execute(f"select count(*) from {t}").fetchall()[0][0]
            for t in ("raw_bars", "rejected_bars", "imports")}


def test_reimporting_the_same_file_changes_nothing(con, tmp_path):
    path = write(tmp_path, "bars.csv", GOOD_ROWS)
    first = ingest.import_file(con, path, tz="America/New_York")
    before = con.execute("select * from raw_bars order by ts").fetchall()
    second = ingest.import_file(con, path, tz="America/New_York")
    after = con.execute("select * from raw_bars order by ts").fetchall()
    assert (first.new, first.unchanged) == (3, 0)
    assert (second.new, second.unchanged, second.changed) == (0, 3, 0)
    assert second.summary().startswith("0 new, 3 unchanged")
    assert before == after  # including ingested_at: unchanged rows are not rewritten


def test_a_vendor_correction_updates_the_row_and_is_counted_with_replace(con, tmp_path):
    ingest.import_file(con, write(tmp_path, "a.csv", GOOD_ROWS), tz="UTC")
    fixed = GOOD_ROWS[:2] + ["2024-03-04 09:32:00,18001.75,18003.25,18001.50,18003.00,9"]
    report = ingest.import_file(con, write(tmp_path, "a.csv", fixed), tz="UTC", replace=True)
    assert (report.new, report.unchanged, report.changed) == (0, 2, 1)
    assert con.execute("select close, volume from raw_bars where ts = '2024-03-04 09:32:00'").fetchall() == [(18003.0, 9)]


def test_an_import_that_would_change_stored_bars_is_refused_without_replace(con, tmp_path):
    ingest.import_file(con, write(tmp_path, "a.csv", GOOD_ROWS), tz="UTC")
    before = con.execute("select * from raw_bars order by ts").fetchall(), table_counts(con)
    fixed = GOOD_ROWS[:2] + ["2024-03-04 09:32:00,18001.75,18003.25,18001.50,18003.00,9",
                             "2024-03-04 09:33:00,18003,18004,18002,18003,4"]
    with pytest.raises(DataError) as info:
        ingest.import_file(con, write(tmp_path, "b.csv", fixed + ["2024-03-04 09:34:00,0,1,1,1,1"]), tz="UTC")
    assert str(info.value) == (
        f"{tmp_path / 'b.csv'}: this import would change 1 stored bar(s) of NQ (first: 2024-03-04 09:32:00 UTC, "
        "stored close 18002 volume 7, this file's close 18003 volume 9); nothing was written. Import it with "
        "--replace to replace them, or under another --symbol")
    # Nothing at all: no new bar, no reject, no import record.
    assert (con.execute("select * from raw_bars order by ts").fetchall(), table_counts(con)) == before


def test_five_minute_bars_never_silently_replace_one_minute_bars(con, tmp_path):
    minutes = pd.date_range("2024-03-04 09:30", periods=30, freq="min")
    one = [f"{t:%Y-%m-%d %H:%M:%S},100,101,99,100.5,2" for t in minutes]
    ingest.import_file(con, write(tmp_path, "1m.csv", one), tz="UTC")
    five = [f"{t:%Y-%m-%d %H:%M:%S},100,102,98,101,10" for t in minutes[::5]]
    with pytest.raises(DataError, match=r"would change 6 stored bar.*5 minutes apart, coarser than the stored "
                                        r"1-minute bars; nothing was written"):
        ingest.import_file(con, write(tmp_path, "5m.csv", five), tz="UTC")
    assert con.execute("select count(*), sum(volume) from raw_bars").fetchall() == [(30, 60)]
    report = ingest.import_file(con, tmp_path / "5m.csv", tz="UTC", replace=True)
    assert (report.changed, report.unchanged, report.new) == (6, 0, 0)
    again = ingest.import_file(con, tmp_path / "5m.csv", tz="UTC")      # now the same values: nothing to refuse
    assert (again.changed, again.unchanged) == (0, 6)


@pytest.mark.parametrize(
    "row, reason",
    [
        ("2024-03-04 09:33:00,,18003.00,18001.00,18002.00,5", "missing or NaN open"),
        ("2024-03-04 09:33:00,18002.00,NaN,18001.00,18002.00,5", "missing or NaN high"),
        ("2024-03-04 09:33:00,18002.00,18003.00,18001.00,18002.00,", "missing or NaN volume"),
        ("2024-03-04 09:33:00,0,18003.00,18001.00,18002.00,5", "non-positive price"),
        ("2024-03-04 09:33:00,18002.00,18003.00,-1,18002.00,5", "non-positive price"),
        ("2024-03-04 09:33:00,18002.00,18000.00,18001.00,18000.50,5", "high < low"),
        ("2024-03-04 09:33:00,18005.00,18003.00,18001.00,18002.00,5", "open outside [low, high]"),
        ("2024-03-04 09:33:00,18002.00,18003.00,18001.00,18000.00,5", "close outside [low, high]"),
        ("2024-03-04 09:33:00,18002.00,18003.00,18001.00,18002.00,-3", "negative volume"),
        ("2024-03-04 09:31:00,18000.50,18002.00,18000.00,18001.75,12", "duplicate timestamp (row 2 kept)"),
    ],
)
def test_each_bad_row_is_rejected_with_its_reason_and_kept(con, tmp_path, row, reason):
    path = write(tmp_path, "bad.csv", GOOD_ROWS + [row])
    report = ingest.import_file(con, path, tz="UTC")
    assert (report.new, report.rejected) == (3, 1)
    rejects = con.execute("select source, row_number, reason, raw from rejected_bars").fetchall()
    assert len(rejects) == 1
    source, row_number, got_reason, raw = rejects[0]
    assert source == str(path) and row_number == 4 and got_reason == reason
    assert raw is not None and "2024-03-04 09:3" in raw  # the row as read, for the user to inspect


def test_rejects_are_not_duplicated_by_a_second_import(con, tmp_path):
    path = write(tmp_path, "bad.csv", GOOD_ROWS + ["2024-03-04 09:33:00,18002,18000,18001,18000.5,5"])
    ingest.import_file(con, path, tz="UTC")
    ingest.import_file(con, path, tz="UTC")
    assert table_counts(con)["rejected_bars"] == 1


def test_all_rows_high_below_low_are_all_kept_as_rejects(con, tmp_path):
    rows = [f"2024-03-04 10:{m:02d}:00,100.0,99.0,101.0,100.0,5" for m in range(20)]
    report = ingest.import_file(con, write(tmp_path, "inverted.csv", rows), tz="UTC")
    assert (report.new, report.rejected) == (0, 20)
    assert report.reasons == {"high < low": 20}
    assert table_counts(con)["raw_bars"] == 0
    assert table_counts(con)["rejected_bars"] == 20


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"\x00\x01\x02garbage\xff\xfe" * 50, "binary data"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "unknown file format"),
        (b"timestamp,open,high,low,close,volume\n", "header but no data rows"),
        (b"when,o,h,l,c\n2024-03-04 09:30:00,1,2,0.5,1.5\n", "missing required column(s) ['ts', 'volume']"),
        (b"2024-03-04 09:30:00,1,2,0.5,1.5,3\nnot-a-time,1,2,0.5,1.5,3\n", "unparseable timestamp 'not-a-time' on data row 2"),
        (b"2024-03-04 09:30:00,1,2\n", "3 columns, expected 6"),
    ],
)
def test_unreadable_files_fail_whole_with_one_message_and_write_nothing(con, tmp_path, content, message):
    ingest.import_file(con, write(tmp_path, "ok.csv", GOOD_ROWS), tz="UTC")
    before = table_counts(con)
    path = tmp_path / ("hostile.csv" if not content.startswith(b"\x89PNG") else "hostile.bin")
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        ingest.import_file(con, path, tz="UTC")
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert table_counts(con) == before


def test_a_missing_path_is_a_clear_error(con, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        ingest.import_file(con, tmp_path / "nope.csv", tz="UTC")


def test_naive_timestamps_without_tz_are_refused(con, tmp_path):
    with pytest.raises(DataError, match="--tz"):
        ingest.import_file(con, write(tmp_path, "naive.csv", GOOD_ROWS))
    assert table_counts(con)["raw_bars"] == 0


def test_eastern_naive_times_land_on_the_right_utc_instants_across_dst(con, tmp_path):
    # 2024-03-10 02:00 ET does not exist (spring forward); 2024-11-03 01:30 ET happens twice.
    rows = [
        "2024-03-08 16:59:00,1,1,1,1,1",   # EST: UTC-5
        "2024-03-10 01:59:00,1,1,1,1,1",   # still EST
        "2024-03-10 02:30:00,1,1,1,1,1",   # nonexistent local time: rejected, not guessed
        "2024-03-10 03:00:00,1,1,1,1,1",   # EDT: UTC-4
        "2024-11-03 01:30:00,1,1,1,1,1",   # first (EDT) occurrence
        "2024-11-03 01:30:00,1,1,1,1,1",   # second (EST) occurrence, inferred from file order
        "2024-11-03 02:00:00,1,1,1,1,1",   # EST
    ]
    report = ingest.import_file(con, write(tmp_path, "dst.csv", rows), tz="America/New_York")
    got = [r[0] for r in con.execute("select ts from raw_bars order by ts").fetchall()]
    assert got == [
        dt.datetime(2024, 3, 8, 21, 59), dt.datetime(2024, 3, 10, 6, 59), dt.datetime(2024, 3, 10, 7, 0),
        dt.datetime(2024, 11, 3, 5, 30), dt.datetime(2024, 11, 3, 6, 30), dt.datetime(2024, 11, 3, 7, 0),
    ]
    assert report.reasons == {"nonexistent local time (DST gap)": 1}


def test_end_stamped_bars_are_moved_to_their_start(con, tmp_path):
    ingest.import_file(con, write(tmp_path, "end.csv", GOOD_ROWS), tz="UTC", ts_is="end")
    first = con.execute("select min(ts) from raw_bars").fetchall()[0][0]
    assert first == dt.datetime(2024, 3, 4, 9, 29)


def test_header_columns_are_matched_by_name_and_by_mapping(con, tmp_path):
    by_name = write(tmp_path, "named.csv", ["Volume,Close,Low,High,Open,Timestamp"] + [
        ",".join(np.array(r.split(","))[[5, 4, 3, 2, 1, 0]]) for r in GOOD_ROWS])
    assert ingest.import_file(con, by_name, tz="UTC", symbol="A").new == 3
    mapped = write(tmp_path, "mapped.csv", ["when,o,h,l,c,qty"] + GOOD_ROWS)
    report = ingest.import_file(con, mapped, tz="UTC", symbol="B", columns="ts=when,open=o,high=h,low=l,close=c,volume=qty")
    assert report.new == 3
    a = con.execute("select ts, open, high, low, close, volume from raw_bars where symbol='A' order by ts").fetchall()
    b = con.execute("select ts, open, high, low, close, volume from raw_bars where symbol='B' order by ts").fetchall()
    assert a == b


def test_bad_column_spec_is_a_clear_error():
    with pytest.raises(DataError, match="unknown fields"):
        readers.parse_columns("ts=a,price=b")
    with pytest.raises(DataError, match="lacks"):
        readers.parse_columns("ts,open,high")


def test_parquet_with_tz_aware_timestamps_needs_no_tz(con, tmp_path):
    df = pd.DataFrame({
        "timestamp": pd.date_range("2024-03-04 14:30", periods=3, freq="min", tz="UTC"),
        "open": [1.0, 1.0, 1.0], "high": [2.0, 2.0, 2.0], "low": [0.5, 0.5, 0.5],
        "close": [1.5, 1.5, 1.5], "volume": [3, 4, 5],
    })
    path = tmp_path / "bars.parquet"
    df.to_parquet(path)
    report = ingest.import_file(con, path)
    assert (report.format, report.new) == ("parquet", 3)
    assert con.execute("select min(ts) from raw_bars").fetchall()[0][0] == dt.datetime(2024, 3, 4, 14, 30)


@pytest.mark.realdata
def test_firstrate_sample_imports_14714_rows_without_rejects_then_adds_nothing(con, shared_data):
    path = shared_data / "firstrate-nq-2023" / "NQ_1min_sample.csv"
    first = ingest.import_file(con, path, tz="America/New_York")
    second = ingest.import_file(con, path, tz="America/New_York")
    assert (first.new, first.rejected) == (14714, 0)
    assert (second.new, second.unchanged) == (0, 14714)
    lo, hi = con.execute("select min(ts), max(ts) from raw_bars").fetchall()[0]
    # 2023-11-19 18:00 EST is 23:00 UTC; 2023-12-04 16:59 EST is 21:59 UTC.
    assert (lo, hi) == (dt.datetime(2023, 11, 19, 23, 0), dt.datetime(2023, 12, 4, 21, 59))
    prices = np.array(con.execute("select open, high, low, close from raw_bars").fetchall())
    assert np.abs(4 * prices - np.round(4 * prices)).max() < 1e-6  # every price on the 0.25 tick


@pytest.mark.realdata
def test_databento_dbn_fixture_decodes_through_the_user_path(con, shared_data):
    report = ingest.import_file(con, shared_data / "databento-test" / "test_data.ohlcv-1m.dbn.zst")
    assert (report.format, report.new, report.symbols) == ("dbn", 4, ["ESH1"])
    rows = con.execute("select ts, open, close, instrument_id, contract from raw_bars order by ts").fetchall()
    assert rows[0][0] == dt.datetime(2020, 12, 28, 0, 0)
    assert all(r[3] == 5482 and r[4] == "ESH1" for r in rows)
    # Prices come back as floats in index points (not 1e-9 units), on the 0.25 tick.
    assert 3000 < rows[0][1] < 5000
    assert all(abs(4 * r[1] - round(4 * r[1])) < 1e-6 for r in rows)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["test_data.trades.dbn.zst", "test_data.definition.dbn.zst"])
def test_dbn_files_of_other_schemas_are_refused(con, shared_data, name):
    with pytest.raises(DataError, match="nqexp imports ohlcv-1m bars"):
        ingest.import_file(con, shared_data / "databento-test" / name)
    assert table_counts(con)["raw_bars"] == 0


@pytest.mark.realdata
def test_lean_zip_imports_each_contract_as_its_own_series(con, shared_data):
    report = ingest.import_file(con, shared_data / "lean-es" / "minute" / "20131218_trade.zip")
    assert report.rejected == 0
    assert {"ESZ13", "ESH14"} <= set(report.symbols)
    vols = dict(con.execute("select symbol, sum(volume) from raw_bars group by 1").fetchall())
    assert vols["ESH14"] > vols["ESZ13"]  # the day the roll happened: ESH14 already dominates


def test_dbn_written_with_the_databento_encoder_keeps_instrument_ids(con, tmp_path):
    bars = [(pd.Timestamp(f"2025-03-{day} 14:30", tz="UTC").value, iid, price, 100)
            for day, iid, price in ((10, 1001, 20000.25), (11, 1001, 20010.0), (12, 2002, 20330.5))]
    path = tmp_path / "nq.dbn"
    path.write_bytes(ohlcv_dbn(bars, intervals=[(dt.date(2025, 3, 10), dt.date(2025, 3, 12), "1001"),
                                                (dt.date(2025, 3, 12), dt.date(2025, 3, 13), "2002")]))
    report = ingest.import_file(con, path)
    assert report.symbols == ["NQ.v.0"] and report.new == 3
    ids = [r[0] for r in con.execute("select instrument_id from raw_bars order by ts").fetchall()]
    assert ids == [1001, 1001, 2002]
    assert con.execute("select count(*) from raw_bars where contract is null").fetchall()[0][0] == 3


# ------------------------------------------------------------------------------------------
# Hostile files (tests/test_hostile.py runs the whole corpus through the CLI; these pin the values)


def stored(con):
    return con.execute("select ts, open, high, low, close, volume from raw_bars order by ts").fetchall()


@pytest.mark.parametrize("lines", [
    [r + "," for r in GOOD_ROWS],                                          # headerless, trailing comma
    ["ts,open,high,low,close,volume"] + [r + "," for r in GOOD_ROWS],      # header without, rows with
    ["ts,open,high,low,close,volume,"] + [r + "," for r in GOOD_ROWS],     # both
    ["ts,open,high,low,close,volume"] + [r + ",," for r in GOOD_ROWS],     # two
])
def test_trailing_commas_do_not_shift_the_columns(con, tmp_path, lines):
    expected = ingest.import_file(con, write(tmp_path, "plain.csv", GOOD_ROWS), tz="UTC", symbol="A")
    report = ingest.import_file(con, write(tmp_path, "commas.csv", lines), tz="UTC", symbol="B")
    assert (report.new, report.rejected) == (expected.new, 0) == (3, 0)
    a = con.execute("select ts, open, high, low, close, volume from raw_bars where symbol = 'A' order by ts").fetchall()
    b = con.execute("select ts, open, high, low, close, volume from raw_bars where symbol = 'B' order by ts").fetchall()
    assert a == b


@pytest.mark.parametrize("lines, message", [
    (["ts,open,high,low,close,volume"] + [r + ",99" for r in GOOD_ROWS], "extra field '99' beyond the 6 columns"),
    ([r + ",99" for r in GOOD_ROWS], "name every column with --columns"),
    (["ts,open,high,low,close,volume", GOOD_ROWS[0], GOOD_ROWS[1] + ",99"], "line 3 has 7 fields"),
])
def test_an_extra_field_refuses_the_file(con, tmp_path, lines, message):
    with pytest.raises(DataError, match=message):
        ingest.import_file(con, write(tmp_path, "extra.csv", lines), tz="UTC")
    assert table_counts(con) == {"raw_bars": 0, "rejected_bars": 0, "imports": 0}


@pytest.mark.parametrize("value", ["1e30", "9300000000000000000", "9223372036854775807"])
def test_volumes_beyond_int64_are_rejected_not_wrapped(con, tmp_path, value):
    report = ingest.import_file(con, write(tmp_path, "v.csv", GOOD_ROWS + [
        f"2024-03-04 09:33:00,18002,18003,18001,18002,{value}"]), tz="UTC")
    assert report.reasons == {"volume above 1e+12": 1}
    assert con.execute("select min(volume) from raw_bars").fetchall()[0][0] == 7


@pytest.mark.parametrize("row, reason", [
    ("2024-03-04 09:33:00,1e308,1e308,1e308,1e308,5", "price outside 1e-06..1e+09"),
    ("2024-03-04 09:33:00,1e-300,1e-300,1e-300,1e-300,5", "price outside 1e-06..1e+09"),
    ("2024-03-04 09:33:00,18002,1e308,18001,18002,5", "price outside 1e-06..1e+09"),
    ("2024-03-04 09:33:00,18002,180030,18001,180020,5", validate.REASON_PRICE_LEVEL),
    ("1970-01-01 00:00:00,18002,18003,18001,18002,5", "timestamp before 1990"),
    ("1600-01-01 00:00:00,18002,18003,18001,18002,5", "timestamp before 1990"),
    ("2100-01-01 00:00:00,18002,18003,18001,18002,5", validate.REASON_FUTURE),
    ("2024-03-04 09:33:17,18002,18003,18001,18002,5", "timestamp not on a whole minute"),
])
def test_implausible_rows_are_rejected_with_a_reason(con, tmp_path, row, reason):
    report = ingest.import_file(con, write(tmp_path, "x.csv", GOOD_ROWS + [row]), tz="UTC")
    assert (report.new, report.reasons) == (3, {reason: 1})


def test_the_price_check_follows_a_long_history_and_catches_one_wild_bar(con, tmp_path):
    # Ten years of a level growing 12x (1,800 -> 21,600): judged against nearby bars, none is rejected;
    # the one bar printed 10x too high (a missing decimal point) is.
    n = 3000
    ts = pd.date_range("2012-01-02 15:00", periods=n, freq="D")
    level = 1800 * np.exp(np.linspace(0, np.log(12), n))
    rows = [f"{t:%Y-%m-%d %H:%M:%S},{p:.2f},{p + 1:.2f},{p - 1:.2f},{p:.2f},5" for t, p in zip(ts, level)]
    rows[2000] = rows[2000].split(",")[0] + ",{0},{1},{0},{0},5".format(level[2000] * 10, level[2000] * 10 + 1)
    report = ingest.import_file(con, write(tmp_path, "long.csv", rows), tz="UTC")
    assert (report.new, report.reasons) == (n - 1, {validate.REASON_PRICE_LEVEL: 1})
    assert con.execute("select row_number from rejected_bars").fetchall() == [(2001,)]


def test_one_epoch_seconds_row_in_a_milliseconds_file_is_rejected(con, tmp_path):
    t0 = int(pd.Timestamp("2024-03-04 14:30").timestamp())
    rows = [f"{(t0 + 60 * i) * 1000},1,1,1,1,1" for i in range(3)] + [f"{t0 + 180},1,1,1,1,1"]
    report = ingest.import_file(con, write(tmp_path, "ms.csv", rows))
    assert (report.new, report.reasons) == (3, {"timestamp before 1990": 1})
    assert con.execute("select min(ts) from raw_bars").fetchall()[0][0] == dt.datetime(2024, 3, 4, 14, 30)


def test_bars_seconds_apart_refuse_the_file(con, tmp_path):
    rows = [f"2024-03-04 09:30:{s:02d},1,1,1,1,1" for s in range(60)]
    with pytest.raises(DataError, match="not 1-minute bars: 59 of 60 timestamps"):
        ingest.import_file(con, write(tmp_path, "secs.csv", rows), tz="UTC")
    assert table_counts(con)["raw_bars"] == 0


@pytest.mark.parametrize("rows, utc", [
    # Spring forward: -05:00 then -04:00; the instants are consecutive minutes.
    (["2024-03-10T01:58:00-05:00", "2024-03-10T01:59:00-05:00", "2024-03-10T03:00:00-04:00"],
     [dt.datetime(2024, 3, 10, 6, 58), dt.datetime(2024, 3, 10, 6, 59), dt.datetime(2024, 3, 10, 7, 0)]),
    # Fall back: -04:00 then -05:00; the wall clock goes back an hour, the instants do not.
    (["2024-11-03T01:59:00-04:00", "2024-11-03T01:00:00-05:00", "2024-11-03T01:01:00-05:00"],
     [dt.datetime(2024, 11, 3, 5, 59), dt.datetime(2024, 11, 3, 6, 0), dt.datetime(2024, 11, 3, 6, 1)]),
])
def test_offsets_that_change_across_a_dst_switch_are_instants(con, tmp_path, rows, utc):
    report = ingest.import_file(con, write(tmp_path, "off.csv", [f"{r},1,1,1,1,1" for r in rows]))
    assert (report.new, report.warnings) == (3, [])
    assert [r[0] for r in stored(con)] == utc


def test_a_tz_that_disagrees_with_the_offsets_is_ignored_with_a_warning(con, tmp_path):
    rows = [r.replace(",", "Z,", 1) for r in GOOD_ROWS]
    report = ingest.import_file(con, write(tmp_path, "z.csv", rows), tz="America/New_York")
    assert report.new == 3 and len(report.warnings) == 1 and "--tz America/New_York ignored" in report.warnings[0]
    assert stored(con)[0][0] == dt.datetime(2024, 3, 4, 9, 30)          # the offsets won
    agree = ingest.import_file(con, write(tmp_path, "ny.csv", [r.replace(",", "-05:00,", 1) for r in GOOD_ROWS]),
                               tz="America/New_York", symbol="NY")
    assert agree.warnings == []


def test_mixed_naive_and_offset_timestamps_are_refused(con, tmp_path):
    rows = [GOOD_ROWS[0], GOOD_ROWS[1].replace(",", "-05:00,", 1)]
    with pytest.raises(DataError, match="some timestamps carry a UTC offset"):
        ingest.import_file(con, write(tmp_path, "mixed.csv", rows), tz="UTC")


def test_a_fall_back_hour_seen_once_is_taken_as_daylight_time_with_a_warning(con, tmp_path):
    rows = ["2024-11-03 00:59:00,1,1,1,1,1", "2024-11-03 01:30:00,1,1,1,1,1", "2024-11-03 02:00:00,1,1,1,1,1"]
    report = ingest.import_file(con, write(tmp_path, "once.csv", rows), tz="America/New_York")
    assert len(report.warnings) == 1 and "1 timestamp(s)" in report.warnings[0]
    assert stored(con)[1][0] == dt.datetime(2024, 11, 3, 5, 30)          # 01:30 EDT


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null"])
def test_a_device_is_not_a_bar_file(con, tmp_path, target):
    with pytest.raises(DataError, match="not a regular file"):
        ingest.import_file(con, target)
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    with pytest.raises(DataError, match="not a regular file"):
        ingest.import_file(con, link)


def test_a_truncated_dbn_writes_nothing(con, tmp_path):
    t0 = pd.Timestamp("2025-03-10 14:30", tz="UTC").value
    whole = tmp_path / "whole.dbn"
    whole.write_bytes(ohlcv_dbn([(t0 + i * 60_000_000_000, 7, 20_000.0, 5) for i in range(4)], symbol="NQH5",
                                continuous=False))
    cut = tmp_path / "cut.dbn"
    cut.write_bytes(whole.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated DBN file: after 3 whole records"):
        ingest.import_file(con, cut)
    assert table_counts(con) == {"raw_bars": 0, "rejected_bars": 0, "imports": 0}
    assert ingest.import_file(con, whole).new == 4


def test_a_megabyte_of_garbage_dbn_is_refused_in_a_short_message(con, tmp_path):
    path = tmp_path / "junk.dbn.zst"
    path.write_bytes(np.random.default_rng(0).bytes(1_000_000))
    with pytest.raises(DataError) as err:
        ingest.import_file(con, path)
    assert "not a readable DBN" in str(err.value) and len(str(err.value)) < 400


# ------------------------------------------------------------------------------------------
# The DuckDB fast path and the pandas path must agree on every file the fast path takes.


def _import_both(tmp_path, monkeypatch, lines, **kw):
    from nqexp.data import db

    path = write(tmp_path, "both.csv", lines)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", readers.DataWarning)
        fast = readers._read_csv_fast(path, readers.parse_columns(kw.get("columns")), kw.get("tz"))
    out = []
    for careful in (False, True):
        con = db.connect(":memory:")
        with monkeypatch.context() as m:
            if careful:
                m.setattr(readers, "_read_csv_fast", lambda *a: None)
            report = ingest.import_file(con, path, **kw)
        out.append((report.summary(), report.reasons, report.warnings,
                    con.execute("select symbol, ts, open, high, low, close, volume, instrument_id, contract, source "
                                "from raw_bars order by ts").fetchall(),
                    con.execute("select row_number, reason, raw from rejected_bars order by row_number").fetchall()))
        con.close()
    return fast is not None, out[0], out[1]


HEADERED = ["timestamp,open,high,low,close,volume"]


@pytest.mark.parametrize("lines, kw", [
    (GOOD_ROWS, {"tz": "UTC"}),
    (HEADERED + GOOD_ROWS, {"tz": "America/New_York"}),
    ([r.replace(" ", "T", 1) for r in GOOD_ROWS], {"tz": "UTC"}),
    ([r[:16] + r[19:] for r in GOOD_ROWS], {"tz": "UTC"}),                       # no seconds
    (HEADERED + GOOD_ROWS + [                                                   # every row-level reason
        "2024-03-04 09:33:00,,18003.00,18001.00,18002.00,5",
        "2024-03-04 09:34:00,0,18003.00,18001.00,18002.00,5",
        "2024-03-04 09:35:00,18002.00,18000.00,18001.00,18000.50,5",
        "2024-03-04 09:36:00,18005.00,18003.00,18001.00,18002.00,5",
        "2024-03-04 09:37:00,18002.00,18003.00,18001.00,18000.00,5",
        "2024-03-04 09:38:00,18002.00,18003.00,18001.00,18002.00,-3",
        "2024-03-04 09:39:00,18002.00,18003.00,18001.00,18002.00,2.5",
        "2024-03-04 09:40:00,18002,18003,18001,18002,1e30",
        "2024-03-04 09:41:00,1e-300,1e-300,1e-300,1e-300,5",
        "2024-03-04 09:42:00,18002,180030,18001,180020,5",
        "1970-01-01 00:00:00,18002,18003,18001,18002,5",
        "2024-03-04 09:43:17,18002,18003,18001,18002,5",
        "2024-03-04 09:31:00,18000.50,18002.00,18000.00,18001.75,12",
        "2024-03-04 09:35:00,18002.00,18003.00,18001.00,18002.00,5",          # duplicate of a rejected row
    ], {"tz": "UTC"}),
    (["2024-03-10 01:59:00,1,1,1,1,1", "2024-03-10 02:30:00,1,1,1,1,1", "2024-11-03 01:30:00,1,1,1,1,1",
      "2024-11-03 01:30:00,1,1,1,1,1", "2024-11-03 02:00:00,1,1,1,1,1"], {"tz": "America/New_York"}),
    (["2024-11-03 00:59:00,1,1,1,1,1", "2024-11-03 01:30:00,1,1,1,1,1"], {"tz": "America/New_York"}),
    (["when,o,h,l,c,qty,extra"] + [r + ",7" for r in GOOD_ROWS],
     {"tz": "UTC", "columns": "ts=when,open=o,high=h,low=l,close=c,volume=qty"}),
    ([",".join(np.array(r.split(","))[[1, 2, 3, 4, 5, 0]]) for r in GOOD_ROWS],
     {"tz": "UTC", "columns": "open,high,low,close,volume,ts", "symbol": "X"}),
    (GOOD_ROWS, {"tz": "UTC", "ts_is": "end"}),
])
def test_the_fast_path_matches_the_pandas_path(tmp_path, monkeypatch, lines, kw):
    took_fast, fast, careful = _import_both(tmp_path, monkeypatch, lines, **kw)
    assert took_fast
    assert fast[:4] == careful[:4]
    assert [r[:2] for r in fast[4]] == [r[:2] for r in careful[4]]
    assert [json.loads(r[2]) for r in fast[4]] == [json.loads(r[2]) for r in careful[4]]


@pytest.mark.parametrize("lines", [
    [r + "," for r in GOOD_ROWS],                                    # trailing commas
    [GOOD_ROWS[0], "", GOOD_ROWS[1]],                                # a blank line
    [GOOD_ROWS[0], GOOD_ROWS[1].replace(",", ", ")],                 # spaces after commas
    [GOOD_ROWS[0], GOOD_ROWS[1].replace("18000.50", "NaN", 1)],      # a word
    [GOOD_ROWS[0], '"2024-03-04 09:31:00",1,2,0.5,1.5,3'],            # quotes
    [GOOD_ROWS[0], "2024-3-04 09:31:00,1,2,0.5,1.5,3"],              # a timestamp of another width
])
def test_odd_files_take_the_pandas_path(tmp_path, monkeypatch, lines):
    took_fast, fast, careful = _import_both(tmp_path, monkeypatch, lines, tz="UTC")
    assert not took_fast and fast == careful


# ------------------------------------------------------------------------------------------
# Time: the future tolerance, clocks that step back, Lean millisecond counts (docs/data.md §3, §9)


def _minutes(start, n, price=100.0, volume=5):
    return [f"{t:%Y-%m-%d %H:%M:%S},{price},{price + 1},{price - 1},{price},{volume}"
            for t in pd.date_range(start, periods=n, freq="min")]


def test_a_bar_more_than_the_tolerance_after_now_is_rejected_and_one_within_it_is_stored():
    now = pd.Timestamp("2025-06-02 14:00")
    tol = validate.FUTURE_TOLERANCE
    assert tol == pd.Timedelta(minutes=15)
    df = pd.DataFrame({"ts": [now, now + tol, now + tol + pd.Timedelta(minutes=1), now + pd.Timedelta(hours=20)],
                       "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0,
                       "symbol": "X", "source": "f", "row_number": [1, 2, 3, 4]})
    got = validate.validate(df, now=now)
    assert [r if isinstance(r, str) else None for r in got] == [None, None, validate.REASON_FUTURE, validate.REASON_FUTURE]
    assert validate.REASON_FUTURE == "timestamp in the future (starts more than 15 minutes after the import)"


def test_bars_stamped_twenty_hours_ahead_are_rejected_not_stored(con, tmp_path):
    ahead = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min") + pd.Timedelta(hours=20)
    report = ingest.import_file(con, write(tmp_path, "ahead.csv", GOOD_ROWS + _minutes(ahead, 3, price=18002)),
                                tz="UTC")
    assert (report.new, report.reasons) == (3, {validate.REASON_FUTURE: 3})
    assert table_counts(con)["rejected_bars"] == 3


def test_a_clock_that_steps_back_an_hour_mid_file_stores_nothing_after_the_step(con, tmp_path):
    # 09:00-10:59, then the file's clock goes back an hour: 10:00-11:59 hold the bars of 11:00-12:59.
    rows = _minutes("2024-03-04 09:00", 120, price=100) + _minutes("2024-03-04 10:00", 120, price=107)
    report = ingest.import_file(con, write(tmp_path, "step.csv", rows), tz="UTC")
    (reason, n), = report.reasons.items()
    assert (report.new, report.rejected, report.duplicates, n) == (120, 120, 0, 120)
    assert reason.startswith("timestamps go backwards: data row 121 (2024-03-04 10:00:00) is 59 minutes earlier than "
                             "row 120 and replays times already read with other prices")
    assert con.execute("select min(ts), max(ts), max(close) from raw_bars").fetchall() == [
        (dt.datetime(2024, 3, 4, 9), dt.datetime(2024, 3, 4, 10, 59), 100.0)]       # nothing an hour early
    rows_rejected = [r[0] for r in con.execute("select row_number from rejected_bars order by 1").fetchall()]
    assert rows_rejected == list(range(121, 241))


def test_rows_out_of_order_newest_first_files_and_verbatim_overlaps_are_no_clock_step(con, tmp_path):
    rows = _minutes("2024-03-04 09:00", 120)
    swapped = rows[:50] + [rows[51], rows[50]] + rows[52:]
    assert ingest.import_file(con, write(tmp_path, "swap.csv", swapped), tz="UTC", symbol="A").reasons == {}
    newest_first = ingest.import_file(con, write(tmp_path, "desc.csv", rows[::-1]), tz="UTC", symbol="B")
    assert (newest_first.new, newest_first.rejected) == (120, 0)
    # Two overlapping downloads concatenated: the overlap repeats rows verbatim; the rows after it are right.
    overlap = rows + rows[60:] + _minutes("2024-03-04 11:00", 30)
    report = ingest.import_file(con, write(tmp_path, "cat.csv", overlap), tz="UTC", symbol="C")
    assert (report.new, report.reasons) == (150, {"duplicate timestamp": 60})


def test_a_fall_back_hour_the_zone_explains_is_no_clock_step_but_the_same_file_in_utc_is(con, tmp_path):
    # New York wall clock through the November fall-back: 01:00-01:59 twice.
    rows = (_minutes("2024-11-03 00:30", 90, price=100) + _minutes("2024-11-03 01:00", 90, price=101))
    path = write(tmp_path, "fallback.csv", rows)
    local = ingest.import_file(con, path, tz="America/New_York", symbol="NY")
    assert (local.new, local.rejected) == (180, 0)
    wrong = ingest.import_file(con, path, tz="UTC", symbol="U")
    assert wrong.new == 90 and wrong.rejected == 90
    assert next(iter(wrong.reasons)).startswith("timestamps go backwards: data row 91 (2024-11-03 01:00:00) is "
                                                "59 minutes earlier than row 90")


def test_lean_millisecond_counts_outside_the_day_are_rejected_rows(con, tmp_path):
    import zipfile

    day = [(14 * 60 + 30 + i) * 60_000 for i in range(3)]
    body = "".join(f"{ms},18000,18001,17999,18000.5,5\n" for ms in [*day, 86_400_000, -60_000, 90_000_000])
    path = tmp_path / "20240304_trade.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("20240304_nq_minute_trade_202403.csv", body)
    report = ingest.import_file(con, path)
    reason = "Lean millisecond field outside 0..86,399,999 (milliseconds since midnight of the file's day)"
    assert (report.new, report.reasons) == (3, {reason: 3})
    assert con.execute("select min(ts)::date, max(ts)::date from raw_bars").fetchall() == [
        (dt.date(2024, 3, 4), dt.date(2024, 3, 4))]                           # nothing landed on another day
    raws = [json.loads(r[0])["ms"] for r in con.execute("select raw from rejected_bars order by row_number").fetchall()]
    assert raws == ["86400000", "-60000", "90000000"]


# ------------------------------------------------------------------------------------------
# Bar spacing and zero volume (docs/data.md §3)


def _bars_lines(n, step_min, start="2024-03-04 09:30:00", volume=5):
    t0 = pd.Timestamp(start)
    return [f"{(t0 + pd.Timedelta(minutes=step_min * i)):%Y-%m-%d %H:%M:%S},18000,18001,17999,18000.5,{volume}"
            for i in range(n)]


def test_a_five_minute_file_is_refused_with_one_clear_line_and_nothing_is_written(con, tmp_path):
    path = write(tmp_path, "nq_5min.csv", _bars_lines(60, 5))
    before = table_counts(con)
    with pytest.raises(DataError) as info:
        ingest.import_file(con, path, tz="America/New_York")
    assert str(info.value).startswith(f"{path}: these are 5-minute bars")
    assert "nqexp imports 1-minute bars" in str(info.value) and "nothing was imported" in str(info.value)
    assert table_counts(con) == before


def test_one_minute_files_with_missing_minutes_are_still_one_minute(con, tmp_path):
    """Untraded minutes are absent from real files: a 1-minute file with holes keeps spacing 1."""
    lines = [line for i, line in enumerate(_bars_lines(200, 1)) if i % 3 != 1]   # a third of the minutes missing
    report = ingest.import_file(con, write(tmp_path, "holes.csv", lines), tz="America/New_York")
    assert report.new == len(lines)


@pytest.mark.realdata
def test_the_firstrate_five_minute_file_is_refused(con, shared_data):
    with pytest.raises(DataError, match="these are 5-minute bars"):
        ingest.import_file(con, shared_data / "firstrate-nq-2023" / "NQ_5min_sample.csv", tz="America/New_York")


def test_zero_volume_rows_are_rejected_with_their_reason(con, tmp_path):
    lines = _bars_lines(30, 1)
    lines[7] = lines[7].rsplit(",", 1)[0] + ",0"
    report = ingest.import_file(con, write(tmp_path, "zero.csv", lines), tz="America/New_York")
    assert report.new == 29 and report.reasons == {validate.REASON_ZERO_VOLUME: 1}
    row = con.execute("select row_number, reason from rejected_bars").fetchall()
    assert row == [(8, validate.REASON_ZERO_VOLUME)]
