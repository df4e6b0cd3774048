"""Rolls of continuous files: contract ids kept by CSV/Parquet imports, rolls found from price jumps when
a file has no ids, given rolls, and the warnings when a roll window has no clear splice
(nqexp/data/bars.py, sql/bars/rolls_price_jump.sql; docs/rolls_and_sessions.md §1, §6)."""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pandas as pd
import pytest

from nqexp.data import bars, db, demo, ingest, readers
from nqexp.errors import DataError

TICK = 0.25


def _insert(con, frame: pd.DataFrame, symbol: str, *, ids: bool = False) -> None:
    """Demo-like bars into raw_bars as one continuous series; without `ids` as a vendor file without contract ids."""
    f = frame.assign(symbol=symbol, source="test")
    if not ids:
        f = f.assign(instrument_id=pd.array([None] * len(f), dtype="Int64"), contract=None)
    con.register("_f", f)
    con.execute("insert into raw_bars (symbol, ts, open, high, low, close, volume, instrument_id, contract, source) "
                "select symbol, ts, open, high, low, close, volume, instrument_id, contract::varchar, source from _f")
    con.unregister("_f")


def _log_err(got, want) -> np.ndarray:
    return np.abs(np.log(np.asarray(got, float)) - np.log(np.asarray(want, float)))


def _shift(b: pd.DataFrame, mask, factor: float) -> pd.DataFrame:
    """Scale the prices of the masked bars by `factor`, back on the tick grid (rounding keeps high >= open, close >= low)."""
    out = b.copy()
    for col in ("open", "high", "low", "close"):
        out.loc[mask, col] = np.round(out.loc[mask, col] * factor / TICK) * TICK
    return out


@pytest.fixture(scope="module")
def no_ids(demo_year, tmp_path_factory):
    """The 400-day demo (4 rolls) exported to Parquet WITHOUT instrument_id and contract, imported as NQ,
    built; next to it the demo itself (NQ.demo, with ids) built the usual way."""
    path = tmp_path_factory.mktemp("rolls") / "nq_continuous.parquet"
    demo_year.bars.drop(columns=["symbol", "instrument_id", "contract"]).to_parquet(path)
    con = db.connect(":memory:")
    ingest.import_file(con, path, tz="UTC")
    report = bars.build_bars(con, "NQ")
    ingest.write_demo(con, demo_year)
    by_id = bars.build_bars(con, demo.DEMO_SYMBOL)
    yield con, report, by_id
    con.close()


# ------------------------------------------------------------------------------------- price jumps


def test_demo_without_ids_finds_every_roll_at_its_bar_with_its_ratio(no_ids, demo_year):
    con, report, _ = no_ids
    truth = demo_year.rolls
    got = report.rolls
    assert raw_has_no_ids(con, "NQ")
    assert len(got) == len(truth) == 4, got
    assert (got["method"] == "price_jump").all() and report.warnings == []
    # Within one bar: here exactly at the first bar of the new contract.
    ts = pd.DatetimeIndex(got["ts"])
    bar_ts = pd.DatetimeIndex(demo_year.bars["ts"])
    steps = np.abs(bar_ts.get_indexer(ts) - bar_ts.get_indexer(pd.DatetimeIndex(truth["ts"])))
    assert (steps <= 1).all() and (ts == pd.DatetimeIndex(truth["ts"])).all(), (list(ts), list(truth["ts"]))
    err = _log_err(got["ratio"], truth["ratio"])
    assert err.max() < 1e-4, err
    # The confidence is reported: every splice stands far above the threshold.
    assert (got["z"].abs() >= bars.PRICE_JUMP_Z_MIN).all() and got["z"].abs().min() > 15, list(got["z"])
    assert [str(e) for e in got["expiry"]] == ["2024-12-20", "2025-03-21", "2025-06-20", "2025-09-19"]
    stored, notes = bars.stored_rolls(con, "NQ")
    assert list(stored["method"]) == ["price_jump"] * 4 and notes == []
    np.testing.assert_allclose(stored["z"].astype(float), got["z"], rtol=0, atol=1e-12)


def raw_has_no_ids(con, symbol) -> bool:
    return con.execute("select count(*) = count(*) filter (where instrument_id is null and contract is null) "
                       "from raw_bars where symbol = ?", [symbol]).fetchall()[0][0]


def test_detected_rolls_back_adjust_exactly_like_the_contract_ids_do(no_ids):
    # The price-jump roll rows feed the same segments/back-adjustment: the adjusted bars equal the
    # ones built from the demo's instrument_id column, bar for bar.
    con, report, by_id = no_ids
    np.testing.assert_allclose(report.rolls["ratio"], by_id.rolls["ratio"], rtol=0, atol=1e-15)
    a = con.execute("select ts, close, adj_factor, roll_flag from bars_1m where symbol = 'NQ' order by ts").df()
    b = con.execute("select ts, close, adj_factor, roll_flag from bars_1m where symbol = ? order by ts",
                    [demo.DEMO_SYMBOL]).df()
    assert (a["ts"].to_numpy() == b["ts"].to_numpy()).all()
    np.testing.assert_allclose(a["close"], b["close"], rtol=1e-14)
    assert (a["roll_flag"].to_numpy() == b["roll_flag"].to_numpy()).all() and a["roll_flag"].sum() == 4
    r = np.diff(np.log(a["close"].to_numpy()))
    assert np.abs(r[a["roll_flag"].to_numpy()[1:]]).max() < 5e-3   # the ~1% splice jumps are gone


def test_a_large_jump_outside_every_roll_window_is_not_a_roll(demo_year):
    b = demo_year.bars
    # 2025-01-15 is far from every window (Dec 5-20, Mar 6-21): a +1.2% level shift there, the size
    # of a calendar spread, and a 3-day hole in the data before it.
    at = pd.Timestamp("2025-01-15 15:00")
    hole = (b["ts"] >= at - pd.Timedelta(days=3)) & (b["ts"] < at)
    shifted = _shift(b, b["ts"] >= at, 1.012)[~hole]
    con = db.connect(":memory:")
    _insert(con, shifted, "NQ")
    report = bars.build_bars(con, "NQ", freq_minutes=(1,))
    assert list(report.rolls["ts"]) == list(demo_year.rolls["ts"]), report.rolls
    assert report.warnings == []
    jump = con.execute("select outlier_flag, close / lag(close) over (order by ts) as step from bars_1m "
                       "qualify ts = (select min(ts) from bars_1m where ts >= ?)", [at]).fetchall()[0]
    assert jump[1] > 1.008   # the jump is still in the bars: it was not taken for a roll
    con.close()


def test_a_jump_too_large_for_a_calendar_spread_does_not_displace_the_splice(demo_year):
    # A -3% level shift (a crash, not a spread) inside the March 2025 window, mid-session: the splice
    # is still the roll, the crash stays in the prices.
    b = demo_year.bars
    at = pd.Timestamp("2025-03-17 14:31")
    con = db.connect(":memory:")
    _insert(con, _shift(b, b["ts"] >= at, 0.97), "NQ")
    report = bars.build_bars(con, "NQ", freq_minutes=(1,))
    assert list(report.rolls["ts"]) == list(demo_year.rolls["ts"]) and report.warnings == []
    con.close()


def test_two_plausible_splices_in_one_window_are_a_warning_not_a_guess(demo_year):
    b = demo_year.bars
    truth = demo_year.rolls.set_index("ts")["ratio"]
    roll_ts = truth.index[1]                                  # 2025-03-12 22:00, the March 2025 roll
    at = roll_ts - pd.Timedelta(days=2, hours=7)              # mid-session, two days earlier
    con = db.connect(":memory:")
    _insert(con, _shift(b, b["ts"] >= at, 1.009), "NQ")
    report = bars.build_bars(con, "NQ", freq_minutes=(1,))
    assert roll_ts not in set(report.rolls["ts"]) and len(report.rolls) == 3
    (warning,) = report.warnings
    assert "two candidate roll splices" in warning and "2025-03-21 expiry" in warning, warning
    assert "--rolls FILE" in warning
    assert bars.stored_rolls(con, "NQ")[1] == [warning]
    con.close()


def test_a_mid_session_splice_at_0000_utc_is_found_at_its_bar():
    # Databento's continuous symbols switch contracts at 00:00 UTC (19:00 or 20:00 ET, mid-session).
    # Move the demo's switch there: from 00:00 UTC two days before the demo's roll the series already
    # shows the new contract (the old one x R, exact for the demo's constant spread, on the tick grid).
    data = demo.generate(days=100, seed=4)
    (roll,) = data.rolls.itertuples()
    switch = (roll.ts - pd.Timedelta(days=2)).normalize()                  # 00:00 UTC
    b = data.bars
    et = pd.Timestamp(switch).tz_localize("UTC").tz_convert("America/New_York")
    assert et.hour in (19, 20)                                              # mid-session in ET
    moved = _shift(b, (b["ts"] >= switch) & (b["ts"] < roll.ts), roll.ratio)
    con = db.connect(":memory:")
    _insert(con, moved, "NQ")
    report = bars.build_bars(con, "NQ", freq_minutes=(1, 5))
    (got,) = report.rolls.itertuples()
    first_new = b.loc[b["ts"] >= switch, "ts"].iloc[0]
    assert got.ts == first_new and got.method == "price_jump", (got.ts, first_new)
    assert _log_err(got.ratio, roll.ratio) < 1e-4 and abs(got.z) >= bars.PRICE_JUMP_Z_MIN
    assert report.warnings == [] and report.flagged[1]["roll"] == 1
    con.close()


def test_a_low_carry_roll_is_a_warning_that_names_the_window():
    # The demo's carry in 2021 is 0: the June 2021 roll has no splice jump to find.
    data = demo.generate(days=120, seed=1, end=dt.date(2021, 7, 30))
    (roll,) = data.rolls.itertuples()
    assert abs(np.log(roll.ratio)) < 1e-3
    con = db.connect(":memory:")
    _insert(con, data.bars, "NQ")
    report = bars.build_bars(con, "NQ", freq_minutes=(1,))
    assert report.rolls.empty
    window, quarter = report.warnings
    assert "no clear roll splice" in window and "2021-06-18 expiry" in window
    assert "sessions 2021-06-03..2021-06-18" in window
    assert "more than a quarter" in quarter and "no roll" in quarter
    rolls, notes = bars.stored_rolls(con, "NQ")
    assert rolls.empty and notes == [window, quarter]
    # Supplying the roll settles the window: the window warning goes, the roll is used as given.
    given = pd.DataFrame({"ts": [roll.ts], "ratio": [roll.ratio]})
    fixed = bars.build_bars(con, "NQ", freq_minutes=(1,), given_rolls=given)
    assert list(fixed.rolls["method"]) == ["given"] and fixed.rolls["ratio"].iloc[0] == roll.ratio
    assert str(fixed.rolls["expiry"].iloc[0]) == "2021-06-18" and fixed.warnings == []
    con.close()


def test_no_roll_detect_leaves_the_splices_and_warns(demo_year):
    con = db.connect(":memory:")
    _insert(con, demo_year.bars, "NQ")
    report = bars.build_bars(con, "NQ", freq_minutes=(1,), detect=False)
    assert report.rolls.empty
    (warning,) = report.warnings
    assert "roll detection is off" in warning and "400 days" in warning
    con.close()


# ------------------------------------------------------------------------------------- given rolls


def test_given_rolls_file_replaces_the_detected_roll_of_its_window(no_ids, tmp_path):
    con, report, _ = no_ids
    path = tmp_path / "rolls.csv"
    # One roll by ratio, one by old/new prices, in a zone-qualified stamp.
    path.write_text("ts,old,new\n2025-03-12T17:00:00-05:00,20000,20210\n")
    given = bars.read_rolls_file(path)
    assert list(given["ts"]) == [pd.Timestamp("2025-03-12 22:00")] and given["ratio"].iloc[0] == 20210 / 20000
    out = bars.build_bars(con, "NQ", freq_minutes=(1,), given_rolls=given)
    assert list(out.rolls["method"]) == ["price_jump", "given", "price_jump", "price_jump"]
    assert out.rolls["ratio"].iloc[1] == 20210 / 20000 and pd.isna(out.rolls["z"].iloc[1])
    bars.build_bars(con, "NQ")   # restore the module's build


def test_given_rolls_on_a_series_with_ids_set_ratios_of_its_rolls_only(no_ids):
    con, _, by_id = no_ids
    ts = by_id.rolls["ts"].iloc[0]
    out = bars.build_bars(con, demo.DEMO_SYMBOL, freq_minutes=(1,),
                          given_rolls=pd.DataFrame({"ts": [ts], "ratio": [1.01]}))
    assert out.rolls["ratio"].iloc[0] == 1.01 and out.rolls["method"].iloc[0] == "instrument_id+given_ratio"
    with pytest.raises(DataError, match="not a detected roll"):
        bars.build_bars(con, demo.DEMO_SYMBOL, given_rolls=pd.DataFrame({"ts": [ts + pd.Timedelta(hours=1)],
                                                                          "ratio": [1.01]}))
    bars.build_bars(con, demo.DEMO_SYMBOL)


@pytest.mark.parametrize("text,message", [
    ("when,ratio\n2025-01-01,1.01\n", "needs a header with ts and ratio"),
    ("ts,ratio\n2025-01-01,-1\n", "row 1"),
    ("ts,ratio\nsoon,1.01\n", "row 1"),
    ("ts,old\n2025-01-01,1\n", "needs a header"),
    ("ts,ratio\n2025-01-01,1.01\n2025-01-01,1.02\n", "two rolls at"),
])
def test_a_bad_rolls_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "r.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        bars.read_rolls_file(path)


# ------------------------------------------------------------------------------------- ids in files


def test_a_csv_with_per_row_contract_codes_rolls_like_the_demo_with_ids(tmp_path):
    data = demo.generate(days=100, seed=4)
    path = tmp_path / "with_contract.csv"
    data.bars.drop(columns=["symbol", "instrument_id"]).to_csv(path, index=False)
    con = db.connect(":memory:")
    ingest.import_file(con, path, tz="UTC")
    kept = con.execute("select contract from raw_bars order by ts").df()["contract"]
    assert (kept.to_numpy() == data.bars["contract"].to_numpy()).all()
    from_csv = bars.build_bars(con, "NQ", freq_minutes=(1,))
    ingest.write_demo(con, data)
    from_ids = bars.build_bars(con, demo.DEMO_SYMBOL, freq_minutes=(1,))
    assert len(from_csv.rolls) == 1 and (from_csv.rolls["method"] == "instrument_id").all()
    for col in ("ts", "from_contract", "to_contract", "ratio"):
        assert list(from_csv.rolls[col]) == list(from_ids.rolls[col]), col


def test_headerless_and_mapped_columns_carry_the_contract(tmp_path):
    data = demo.generate(days=100, seed=4)
    b = data.bars
    headerless = tmp_path / "nohdr.csv"
    b[["ts", "open", "high", "low", "close", "volume", "contract"]].to_csv(headerless, index=False, header=False)
    mapped = tmp_path / "mapped.csv"
    b.rename(columns={"ts": "Datetime", "contract": "Sym"}).drop(columns=["symbol", "instrument_id"]) \
        .to_csv(mapped, index=False)
    con = db.connect(":memory:")
    ingest.import_file(con, headerless, tz="UTC", symbol="A", columns="ts,open,high,low,close,volume,contract")
    ingest.import_file(con, mapped, tz="UTC", symbol="B", columns="ts=Datetime,contract=Sym")
    for symbol in ("A", "B"):
        report = bars.build_bars(con, symbol, freq_minutes=(1,))
        assert list(report.rolls["ts"]) == list(data.rolls["ts"]) and report.rolls["method"].iloc[0] == "instrument_id"


def test_continuous_symbols_are_not_contracts_and_bad_ids_fail_the_file(tmp_path):
    path = tmp_path / "v0.csv"
    path.write_text("ts_event,instrument_id,open,high,low,close,volume,symbol\n"
                    "2024-03-04T14:30:00Z,1,10,11,9,10,5,NQ.v.0\n"
                    "2024-03-04T14:31:00Z,,10,11,9,10,5,\n")
    con = db.connect(":memory:")
    ingest.import_file(con, path)
    rows = con.execute("select instrument_id, contract from raw_bars order by ts").fetchall()
    assert rows == [(1, None), (None, None)]
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,open,high,low,close,volume,instrument_id\n2024-03-04T14:30:00Z,10,11,9,10,5,1.5\n")
    with pytest.raises(DataError, match="instrument_id '1.5' on data row 1 is not an integer id"):
        ingest.import_file(con, bad)
    with pytest.raises(DataError, match="unknown fields"):
        readers.parse_columns("ts=a,open=b,high=c,low=d,close=e,volume=f,expiry=g")


@pytest.mark.realdata
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_vendor_csv_or_parquet_export_imports_exactly_like_its_dbn(shared_data, tmp_path, kind):
    import databento

    dbn = shared_data / "databento-test" / "test_data.ohlcv-1m.dbn.zst"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = databento.DBNStore.from_bytes(dbn.read_bytes())
        path = tmp_path / f"export.{kind}"
        store.to_csv(path) if kind == "csv" else store.to_parquet(path)
    con = db.connect(":memory:")
    ingest.import_file(con, dbn)                       # series ESH1 (raw symbol), instrument_id 5482
    report = ingest.import_file(con, path, symbol="ESH1")
    assert report.new == 0 and report.unchanged == 4 and report.changed == 0, report.summary()
    rows = con.execute("select distinct instrument_id, contract from raw_bars").fetchall()
    assert rows == [(5482, "ESH1")]


# ------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_firstrate_nq_gives_no_false_roll_and_its_gaps_score_far_below_the_threshold(shared_data):
    con = db.connect(":memory:")
    ingest.import_file(con, shared_data / "firstrate-nq-2023" / "NQ_1min_sample.csv", tz="America/New_York")
    report = bars.build_bars(con, "NQ")
    assert report.rolls.empty
    # Its data ends inside the December 2023 window (the real roll came on 2023-12-07): a warning, no guess.
    (warning,) = report.warnings
    assert "2023-12-15 expiry" in warning and "covers only" in warning
    # Scored as if all two weeks (Thanksgiving, ISM, a Powell speech) were one roll window, the
    # largest open / previous close jump of this real NQ data is far below the splice threshold.
    bars._prepare_source(con, "NQ", "continuous")
    window = pd.DataFrame({"expiry": [dt.date(2023, 12, 31)], "first_session": [dt.date(2023, 11, 1)],
                           "last_session": [dt.date(2023, 12, 31)], "scan_start": [pd.Timestamp("2023-11-01")],
                           "scan_end": [pd.Timestamp("2024-01-01")]})
    con.register("_w", window)
    con.execute("create or replace temp table _roll_windows as select * from _w")
    db.run_sql(con, "bars/rolls_price_jump", top_k=1)
    (z,) = con.execute("select abs(z) from _jump_candidates").fetchall()[0]
    assert z < bars.PRICE_JUMP_Z_MIN / 2, z
    con.close()


@pytest.mark.realdata
def test_lean_es_spliced_without_ids_gives_no_false_roll(shared_data):
    import glob

    con = db.connect(":memory:")
    for f in sorted(glob.glob(str(shared_data / "lean-es" / "minute" / "*.zip"))):
        ingest.import_file(con, f)
    per_contract = bars.build_bars(con, "ES", freq_minutes=(1,))
    # ESH14 -> ESH20 lies across six missing years: it is not measured (ratio 1) and one warning names the gap.
    assert list(per_contract.rolls["method"]) == ["volume_crossover", "volume_crossover+gap_break"]
    assert per_contract.rolls["ratio"].iloc[1] == 1.0
    assert len(per_contract.warnings) == 1 and "ESH14 -> ESH20" in per_contract.warnings[0]
    assert "gap of" in per_contract.warnings[0] and "split into two segments" in per_contract.warnings[0]
    # So ESZ13's closes keep their level: only the real ESZ13 -> ESH14 roll (-0.35%) scales them.
    raw_adj = con.execute("select r.close, b.close from bars_1m b join raw_bars r on r.symbol = b.contract "
                          "and r.ts = b.ts where b.symbol = 'ES' and b.contract = 'ESZ13' limit 1").fetchall()[0]
    assert 0.99 < raw_adj[1] / raw_adj[0] < 1.0
    # The same spliced raw series as one continuous file without contract codes.
    spliced = con.execute("select b.ts, r.open, r.high, r.low, r.close, r.volume from bars_1m b "
                          "join raw_bars r on r.symbol = b.contract and r.ts = b.ts where b.symbol = 'ES'").df()
    _insert(con, spliced, "ESC")
    report = bars.build_bars(con, "ESC", freq_minutes=(1,))
    splice = per_contract.rolls["ts"].iloc[0]               # 2013-12-18 23:00, ESZ13 -> ESH14 (-0.35%)
    assert all(ts == splice for ts in report.rolls["ts"]), report.rolls
    assert report.rolls.empty == any("2013-12-20 expiry" in w for w in report.warnings), report.warnings


# ------------------------------------------------------------------------------------- CLI


def test_cli_bars_uses_the_only_series_and_rolls_lists_method_and_z(tmp_path, demo_year):
    from click.testing import CliRunner

    from nqexp.cli import cli

    def run(*args):
        result = CliRunner().invoke(cli, ["--db", str(tmp_path / "t.duckdb"), *map(str, args)], prog_name="nqexp")
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
        return result

    path = tmp_path / "nq.parquet"
    demo_year.bars.drop(columns=["symbol", "instrument_id", "contract"]).to_parquet(path)
    assert run("data", "import", path, "--tz", "UTC").exit_code == 0
    listed = run("data", "rolls")
    assert listed.exit_code == 0 and "not built yet" in listed.output and listed.output.count("price_jump") == 4
    built = run("data", "bars", "--freq", "1m")
    assert built.exit_code == 0, built.output
    assert "NQ (continuous)" in built.output and "4 rolls (4 price_jump)" in built.output
    listed = run("data", "rolls", "--json")
    import json

    doc = json.loads(listed.output)
    assert doc["symbol"] == "NQ" and doc["built"] and doc["warnings"] == []
    assert [r["method"] for r in doc["rolls"]] == ["price_jump"] * 4 and all(r["z"] > 15 for r in doc["rolls"])
    rolls_file = tmp_path / "r.csv"
    rolls_file.write_text(f"ts,ratio\n{doc['rolls'][0]['ts']},1.01\n")
    given = run("data", "bars", "--freq", "1m", "--rolls", rolls_file)
    assert given.exit_code == 0 and "1 given, 3 price_jump" in given.output, given.output
    off = run("data", "bars", "--freq", "1m", "--no-roll-detect")
    assert off.exit_code == 0 and "0 rolls" in off.output and "roll detection is off" in off.output
    assert run("data", "demo", "--days", "5").exit_code == 0
    refused = run("data", "bars")
    assert refused.exit_code != 0 and "holds 2 series (NQ, NQ.demo); say which with --symbol" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output


def test_series_names_group_per_contract_series_under_their_root(con):
    for symbol in ("ESZ13", "ESH14"):
        con.execute("insert into raw_bars (symbol, ts, open, high, low, close, volume, source) "
                    "values (?, '2013-12-02 15:00', 1, 1, 1, 1, 1, 't')", [symbol])
    assert bars.series_names(con) == ["ES"] and bars.default_symbol(con) == "ES"
    empty = db.connect(":memory:")
    with pytest.raises(DataError, match="no bars in the database"):
        bars.default_symbol(empty)


def test_roll_windows_cover_two_weeks_before_each_quarterly_expiry():
    w = bars.roll_windows(pd.Timestamp("2024-01-02 00:00"), pd.Timestamp("2024-12-10 12:00"))
    assert [str(e) for e in w["expiry"]] == ["2024-03-15", "2024-06-21", "2024-09-20", "2024-12-20"]
    assert (w["last_session"] == w["expiry"]).all()
    assert ((w["expiry"] - w["first_session"]) == dt.timedelta(days=bars.ROLL_WINDOW_DAYS)).all()
    assert list(w["partial"]) == [False, False, False, True]
