"""Tests for nqexp/data/bars.py: rolls, ratio back-adjustment, sessions and 1m -> 5m bars."""

from __future__ import annotations

import datetime as dt
import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nqexp import calendar
from nqexp.data import bars, db, demo, ingest
from nqexp.errors import DataError, SqlError


@pytest.fixture(scope="module")
def demo_db(demo_year):
    """~13 months of demo bars (4 rolls), built once for the read-only tests of this module."""
    data = demo_year
    con = db.connect(":memory:")
    ingest.write_demo(con, data)
    report = bars.build_bars(con, demo.DEMO_SYMBOL)
    yield con, data, report
    con.close()


def _frame(con, sql, params=None):
    return con.execute(sql, params or []).df()


def _assert_close(actual, expected, tol, what):
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    diff = np.abs(actual - expected)
    if diff.size and not (diff <= tol).all():
        i = int(np.nanargmax(diff))
        raise AssertionError(f"{what}: max abs diff {diff[i]:.3e} > {tol} at index {i} "
                             f"(actual {actual[i]!r}, expected {expected[i]!r}); {int((diff > tol).sum())} mismatches")


# ------------------------------------------------------------------------------------- rolls


def test_every_demo_roll_is_detected_at_its_true_time(demo_db):
    con, data, report = demo_db
    got = report.rolls
    assert len(data.rolls) == 4
    assert list(got["ts"]) == list(data.rolls["ts"]), (list(got["ts"]), list(data.rolls["ts"]))
    assert list(got["from_contract"]) == list(data.rolls["from_contract"])
    assert list(got["to_contract"]) == list(data.rolls["to_contract"])
    assert (got["method"] == "instrument_id").all()
    stored = _frame(con, "select ts, ratio from rolls where symbol = ? order by ts", [demo.DEMO_SYMBOL])
    _assert_close(stored["ratio"], got["ratio"], 0.0, "stored roll ratios")


def test_splice_ratio_estimate_error_is_tick_rounding_plus_untraded_moves(demo_db):
    # Continuous data shows one contract at a time, so R = open(first new bar) / close(last old
    # bar). Against the generator's exact ratio the error has three parts: the 0.25-tick rounding
    # of those two prints (|.| <= 0.125/open + 0.125/close), the carry drift of the contract over
    # the maintenance hour between them, and the real move of the market in minutes without
    # trades between them (the generator drops zero-volume minutes). Rolls whose
    # two prints are adjacent in the Globex clock (last minute of one session, first minute of
    # the next) carry only rounding and carry drift; the others get a 6-sigma allowance for the untraded minutes.
    con, data, report = demo_db
    est = report.rolls.set_index("ts")["ratio"]
    true = data.rolls.set_index("ts")["ratio"]
    b = data.bars.set_index("ts")
    sigma = data.truth.set_index("ts")["sigma"]
    sessions = calendar.session_table(data.bars["ts"].iloc[0].date() - dt.timedelta(days=2), demo.DEFAULT_END)
    errors, adjacent = [], 0
    for ts in true.index:
        i = b.index.get_loc(ts)
        prev_ts = b.index[i - 1]
        open_new, close_old = b["open"].iloc[i], b["close"].iloc[i - 1]
        new_session = sessions[sessions["open_utc"] <= ts].iloc[-1]
        old_session = sessions[sessions["open_utc"] <= prev_ts].iloc[-1]
        untraded = int((old_session["close_utc"] - prev_ts) / pd.Timedelta(minutes=1)) - 1 \
            + int((ts - new_session["open_utc"]) / pd.Timedelta(minutes=1))
        err = abs(np.log(est[ts]) - np.log(true[ts]))
        # The generator's contracts also drift by their carry (<= 6%/year) over the break between prints.
        carry = 0.06 * ((ts - prev_ts) / pd.Timedelta(days=365.25))
        bound = 0.125 / open_new + 0.125 / close_old + carry + 6 * sigma[ts] * np.sqrt(untraded)
        adjacent += untraded == 0
        errors.append(err)
        assert err <= bound, f"roll {ts}: |ln R error| {err:.2e} > bound {bound:.2e} ({untraded} untraded minutes)"
    assert adjacent >= 1, "no roll with adjacent prints to test the pure rounding bound"
    errors = np.array(errors)
    assert errors.max() > 0  # it really is an estimate, not the truth copied
    assert errors.max() < 1e-4, f"ratio errors {errors}"   # vs the ~1% splice jumps it removes


def test_adjusted_exact_returns_equal_generator_true_returns_to_1e10(demo_db):
    # With the generator's exact ratios, adjusting close_exact must give the true continuous
    # log-returns: within a contract ln(F_t / F_{t-1}); across a roll the new contract's own
    # return ln(F_new,t / (R * F_old,t-1)). Tick rounding is excluded by using close_exact.
    con, data, _ = demo_db
    true_ratios = data.rolls.set_index("ts")["ratio"]
    try:
        bars.build_bars(con, demo.DEMO_SYMBOL, freq_minutes=(1,), ratios=true_ratios)
        df = _frame(con, """
            select b.ts, b.adj_factor, b.roll_flag, t.close_exact
            from bars_1m b join demo_truth t on t.symbol = b.symbol and t.ts = b.ts
            where b.symbol = ? order by b.ts""", [demo.DEMO_SYMBOL])
    finally:
        bars.build_bars(con, demo.DEMO_SYMBOL)  # restore the module fixture's estimated ratios
    adj = np.log(df["close_exact"].to_numpy() * df["adj_factor"].to_numpy())
    got = np.diff(adj)
    exact = np.log(df["close_exact"].to_numpy())
    want = np.diff(exact)
    roll_idx = np.flatnonzero(df["roll_flag"].to_numpy()[1:])
    assert len(roll_idx) == len(true_ratios)
    want[roll_idx] -= np.log(true_ratios.to_numpy())
    _assert_close(got, want, 1e-10, "adjusted exact log-returns vs generator truth")
    # And the factor is exactly 1 after the last roll, the product of all ratios before the first.
    assert df["adj_factor"].iloc[-1] == 1.0
    assert df["adj_factor"].iloc[0] == pytest.approx(np.prod(true_ratios.to_numpy()), rel=1e-14)


def test_adjustment_keeps_within_contract_returns_and_removes_splice_jumps(demo_db):
    con, _, report = demo_db
    df = _frame(con, "select ts, close, raw_close, roll_flag from bars_1m where symbol = ? order by ts",
                [demo.DEMO_SYMBOL])
    adj_r = np.diff(np.log(df["close"].to_numpy()))
    raw_r = np.diff(np.log(df["raw_close"].to_numpy()))
    roll = df["roll_flag"].to_numpy()[1:]
    _assert_close(adj_r[~roll], raw_r[~roll], 1e-10, "within-contract log-returns")
    ratios = report.rolls["ratio"].to_numpy()
    # Across a roll the spurious ln(R) jump is exactly what disappears.
    _assert_close(adj_r[roll], raw_r[roll] - np.log(ratios), 1e-10, "roll-bar log-returns")
    assert np.abs(raw_r[roll]).min() > 5e-3 > np.abs(adj_r[roll]).max()


def test_raw_prices_are_kept_and_bars_can_be_rebuilt_identically(demo_db):
    con, data, _ = demo_db
    before = _frame(con, "select * from bars_5m where symbol = ? order by ts", [demo.DEMO_SYMBOL])
    bars.build_bars(con, demo.DEMO_SYMBOL)
    after = _frame(con, "select * from bars_5m where symbol = ? order by ts", [demo.DEMO_SYMBOL])
    pd.testing.assert_frame_equal(before, after)
    raw = _frame(con, "select close from raw_bars where symbol = ? order by ts", [demo.DEMO_SYMBOL])
    assert np.array_equal(raw["close"].to_numpy(), data.bars["close"].to_numpy())


def test_a_roll_appended_later_readjusts_history():
    data = demo.generate(days=200, seed=5)
    cut = data.rolls["ts"].iloc[-1] - pd.Timedelta(days=3)   # the last roll is not yet in the data
    con = db.connect(":memory:")
    early = demo.DemoData(bars=data.bars[data.bars["ts"] < cut], truth=data.truth[data.truth["ts"] < cut],
                          rolls=data.rolls[data.rolls["ts"] < cut], seconds=0)
    ingest.write_demo(con, early)
    first = bars.build_bars(con, demo.DEMO_SYMBOL)
    old = _frame(con, "select ts, adj_factor, close from bars_1m order by ts")
    rest = data.bars[data.bars["ts"] >= cut].assign(source="demo")
    con.register("_rest", rest)
    con.execute("insert into raw_bars (symbol, ts, open, high, low, close, volume, instrument_id, contract, source) "
                "select symbol, ts, open, high, low, close, volume, instrument_id, contract, source from _rest")
    second = bars.build_bars(con, demo.DEMO_SYMBOL)
    assert len(second.rolls) == len(first.rolls) + 1
    new_ratio = second.rolls["ratio"].iloc[-1]
    new = _frame(con, "select ts, adj_factor, close from bars_1m order by ts").iloc[: len(old)]
    assert (new["ts"].to_numpy() == old["ts"].to_numpy()).all()
    _assert_close(new["adj_factor"] / old["adj_factor"], np.full(len(old), new_ratio), 1e-12,
                  "history re-adjusted by the new roll's ratio")
    # Identical to building everything at once.
    full = db.connect(":memory:")
    ingest.write_demo(full, data)
    bars.build_bars(full, demo.DEMO_SYMBOL)
    pd.testing.assert_frame_equal(_frame(con, "select * exclude (symbol) from bars_5m order by ts"),
                                  _frame(full, "select * exclude (symbol) from bars_5m order by ts"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seg_lengths=st.lists(st.integers(2, 40), min_size=1, max_size=5),
    jumps=st.lists(st.floats(-0.08, 0.08), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_property_adjustment_preserves_within_contract_returns_and_removes_splice_jumps(seg_lengths, jumps, seed):
    rng = np.random.default_rng(seed)
    n = sum(seg_lengths)
    contract_idx = np.repeat(np.arange(len(seg_lengths)), seg_lengths)
    r = rng.normal(0, 1e-3, n)                                    # the true continuous log-returns
    log_p = np.log(5000.0) + np.cumsum(r)
    # Each contract trades at its own offset: splice jumps where the contract changes.
    offsets = np.concatenate([[0.0], np.cumsum(jumps[: len(seg_lengths) - 1])])
    close = np.exp(log_p + offsets[contract_idx])
    open_ = np.exp(log_p - r + offsets[contract_idx])                    # open at the previous close's level
    ts = pd.Timestamp("2024-03-05 15:00") + pd.to_timedelta(np.arange(n), unit="min")
    frame = pd.DataFrame({"symbol": "X.v.0", "ts": ts.astype("datetime64[us]"), "open": open_,
                          "high": np.maximum(open_, close), "low": np.minimum(open_, close), "close": close,
                          "volume": 1, "instrument_id": 100 + contract_idx, "contract": [f"C{i}" for i in contract_idx],
                          "source": "hypothesis"})
    con = db.connect(":memory:")
    con.register("_f", frame)
    con.execute("insert into raw_bars (symbol, ts, open, high, low, close, volume, instrument_id, contract, source) "
                "select symbol, ts, open, high, low, close, volume, instrument_id, contract, source from _f")
    report = bars.build_bars(con, "X.v.0", freq_minutes=(1,))
    out = _frame(con, "select close, raw_close, roll_flag from bars_1m order by ts")
    assert len(report.rolls) == len(seg_lengths) - 1
    adj_r = np.diff(np.log(out["close"].to_numpy()))
    raw_r = np.diff(np.log(close))
    roll = np.diff(contract_idx) != 0
    assert (out["roll_flag"].to_numpy()[1:] == roll).all()
    _assert_close(adj_r[~roll], raw_r[~roll], 1e-10, "within-contract returns")
    # The splice ratio open_new/close_old equals the jump exactly here, so the adjusted return across
    # each roll is the true return r (the splice jump is removed and nothing else).
    _assert_close(adj_r[roll], r[1:][roll], 1e-10, "returns across rolls")
    _assert_close(raw_r[roll] - adj_r[roll], np.diff(offsets[contract_idx])[roll], 1e-10, "removed jumps")
    con.close()


# ------------------------------------------------------------------------------------- 5m bars


def test_5m_bars_are_ordered_aggregates_of_the_1m_bars_stamped_at_start(demo_db):
    con, _, _ = demo_db
    one = _frame(con, "select * from bars_1m where symbol = ? order by ts", [demo.DEMO_SYMBOL])
    five = _frame(con, "select * from bars_5m where symbol = ? order by ts", [demo.DEMO_SYMBOL])
    bucket = one["ts"].dt.floor("5min")
    g = one.groupby(bucket, sort=True)
    want = pd.DataFrame({"open": g["open"].first(), "high": g["high"].max(), "low": g["low"].min(),
                         "close": g["close"].last(), "volume": g["volume"].sum(), "n_bars": g.size(),
                         "raw_close": g["raw_close"].last(), "contract": g["contract"].last()})
    assert (five["ts"].to_numpy() == want.index.to_numpy()).all()
    assert (five["ts"].dt.minute % 5 == 0).all() and (five["ts"].dt.second == 0).all()
    for col in ("open", "high", "low", "close", "raw_close"):
        _assert_close(five[col], want[col], 0.0, f"5m {col}")
    assert (five["volume"].to_numpy() == want["volume"].to_numpy()).all()
    assert (five["n_bars"].to_numpy() == want["n_bars"].to_numpy()).all()
    assert five["ts"].is_monotonic_increasing and one["ts"].is_monotonic_increasing


# ------------------------------------------------------------------------------------- sessions


def _session_con(minutes_et: list[str], day="2024-03-05"):
    """A tiny continuous series with bars at the given ET wall-clock times (day, 'HH:MM' or '+1 HH:MM')."""
    stamps = []
    for m in minutes_et:
        extra = 0
        if m.startswith("+"):
            extra, m = int(m[1]), m[3:]
        stamps.append(pd.Timestamp(f"{day} {m}") + pd.Timedelta(days=extra))
    ts = pd.DatetimeIndex(stamps).tz_localize("America/New_York").tz_convert("UTC").tz_localize(None)
    n = len(ts)
    px = 18000 + np.arange(n) * 0.25
    frame = pd.DataFrame({"symbol": "S", "ts": ts.astype("datetime64[us]"), "open": px, "high": px, "low": px,
                          "close": px, "volume": 1, "instrument_id": 1, "contract": "NQH4", "source": "t"})
    con = db.connect(":memory:")
    con.register("_f", frame)
    con.execute("insert into raw_bars (symbol, ts, open, high, low, close, volume, instrument_id, contract, source) "
                "select symbol, ts, open, high, low, close, volume, instrument_id, contract, source from _f")
    bars.build_bars(con, "S")
    return con


def test_session_date_rth_flag_and_gap_rules():
    times = ["09:29", "09:30", "09:45", "10:01", "15:59", "16:00", "16:59", "18:00", "18:01"]
    con = _session_con(times)
    df = _frame(con, "select ts, session_date, minute_of_day_et, is_rth, minutes_since_prev, is_session_start, "
                     "gap_flag from bars_1m order by ts")
    assert [str(d)[:10] for d in df["session_date"]] == ["2024-03-05"] * 7 + ["2024-03-06"] * 2
    assert df["minute_of_day_et"].tolist() == [569, 570, 585, 601, 959, 960, 1019, 1080, 1081]
    assert df["is_rth"].tolist() == [False, True, True, True, True, False, False, False, False]
    assert df["minutes_since_prev"].isna().iloc[0]
    assert df["minutes_since_prev"].iloc[1:].tolist() == [1, 15, 16, 358, 1, 59, 61, 1]
    # 15 minutes tolerated, 16 flagged; the maintenance break starts a session instead of a gap.
    assert df["gap_flag"].tolist() == [False, False, False, True, True, False, True, False, False]
    assert df["is_session_start"].tolist() == [True] + [False] * 6 + [True, False]
    five = _frame(con, "select ts, session_date, gap_flag, is_session_start, n_bars from bars_5m order by ts")
    assert five["n_bars"].sum() == len(times)
    assert five["is_session_start"].sum() == 2


def test_session_date_across_dst_and_weekend():
    # Sunday 2024-03-10 is the DST change; the Sunday 18:00 ET open belongs to Monday's session.
    con = _session_con(["16:58", "+2 18:00", "+2 18:01"], day="2024-03-08")
    df = _frame(con, "select ts, session_date, minute_of_day_et, is_session_start from bars_1m order by ts")
    assert [str(d)[:10] for d in df["session_date"]] == ["2024-03-08", "2024-03-11", "2024-03-11"]
    assert df["minute_of_day_et"].tolist() == [1018, 1080, 1081]
    assert str(df["ts"].iloc[0]) == "2024-03-08 21:58:00" and str(df["ts"].iloc[1]) == "2024-03-10 22:00:00"
    assert df["is_session_start"].tolist() == [True, True, False]


def _assert_session_fields_match_reference(con, symbol: str) -> dict[str, int]:
    """Recompute the fields bars/_sessions derives, in pandas from the stored ts/close, at 1m and 5m.

    Independent of the SQL: ET via pandas' tz database, the outlier RMS by a rolling window.
    The 5m roll_flag must equal "some 1-minute bar in the bucket starts a new contract".
    Returns the number of flagged bars per (field, freq), so callers can insist on coverage.
    """
    counts = {}
    one = _frame(con, "select ts, roll_flag from bars_1m where symbol = ? order by ts", [symbol])
    for table in ("bars_1m", "bars_5m"):
        df = _frame(con, f"select * from {table} where symbol = ? order by ts", [symbol])
        et = pd.DatetimeIndex(df["ts"]).tz_localize("UTC").tz_convert("America/New_York").tz_localize(None)
        session = pd.Series((et + pd.Timedelta(hours=6)).normalize(), index=df.index)
        minutes = df["ts"].diff().dt.total_seconds() / 60.0
        start = session.ne(session.shift())
        gap = ~start & (minutes > 15)
        r = np.log(df["close"] / df["close"].shift())
        prev_r2 = (r * r).rolling(120, min_periods=1).sum().shift()
        prev_n = r.notna().astype(float).rolling(120, min_periods=1).sum().shift()
        outlier = (prev_n >= 30) & (r.abs() > 5.0 * np.sqrt(prev_r2 / prev_n))
        mod = et.hour * 60 + et.minute
        assert (pd.to_datetime(df["session_date"]).to_numpy() == session.to_numpy()).all(), f"{table} session_date"
        assert (df["minute_of_day_et"].to_numpy() == mod).all(), f"{table} minute_of_day_et"
        assert (df["is_rth"].to_numpy() == ((mod >= 570) & (mod < 960))).all(), f"{table} is_rth"
        np.testing.assert_array_equal(df["minutes_since_prev"].to_numpy(), minutes.to_numpy(), f"{table} minutes")
        assert (df["is_session_start"].to_numpy() == start.to_numpy()).all(), f"{table} is_session_start"
        assert (df["gap_flag"].to_numpy() == gap.to_numpy()).all(), f"{table} gap_flag"
        assert (df["outlier_flag"].to_numpy() == outlier.to_numpy()).all(), f"{table} outlier_flag"
        if table == "bars_5m":
            rolled = one.groupby(one["ts"].dt.floor("5min"))["roll_flag"].any()
            assert (df["roll_flag"].to_numpy() == rolled.to_numpy()).all(), "bars_5m roll_flag"
        freq = table[5:]
        for name in ("is_session_start", "gap_flag", "outlier_flag", "roll_flag"):
            counts[f"{name}_{freq}"] = int(df[name].sum())
    return counts


def test_session_fields_and_flags_equal_a_pandas_reference_at_1m_and_5m(demo_db):
    con, _, _ = demo_db
    counts = _assert_session_fields_match_reference(con, demo.DEMO_SYMBOL)
    for freq in ("1m", "5m"):
        assert counts[f"is_session_start_{freq}"] > 250 and counts[f"roll_flag_{freq}"] == 4
        assert counts[f"outlier_flag_{freq}"] > 0


def test_gap_flags_equal_the_reference_when_bars_are_missing_inside_sessions():
    # The demo has no in-session holes; cut some into RTH: 14 missing minutes leave a 15-minute
    # step (tolerated), 16, 22 and 40 leave 17, 23 and 41 (gaps), 9 leaves 10 (tolerated).
    data = demo.generate(days=10, seed=2)
    b = data.bars
    et = pd.DatetimeIndex(b["ts"]).tz_localize("UTC").tz_convert("America/New_York")
    mod = np.asarray(et.hour * 60 + et.minute)
    days = np.asarray(et.date)
    rth_days = sorted(set(days[(mod >= 570) & (mod < 960)]))
    assert len(rth_days) >= 5
    drop = np.zeros(len(b), bool)
    for k, (day, length) in enumerate(zip(rth_days, (14, 16, 22, 40, 9))):
        lo = 600 + 7 * k
        drop |= (days == day) & (mod >= lo) & (mod < lo + length)
    keep = ~drop
    con = db.connect(":memory:")
    ingest.write_demo(con, demo.DemoData(bars=b[keep].reset_index(drop=True),
                                         truth=data.truth[keep].reset_index(drop=True), rolls=data.rolls, seconds=0))
    bars.build_bars(con, demo.DEMO_SYMBOL)
    counts = _assert_session_fields_match_reference(con, demo.DEMO_SYMBOL)
    assert counts["gap_flag_1m"] == 3 and counts["gap_flag_5m"] >= 2, counts   # 14 and 9 missing: not gaps
    con.close()


# ------------------------------------------------------------------------------------- SQL headers


def _copy_sql(tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "sql"
    shutil.copytree(db.sql_root(), dest)
    return dest


def test_every_bars_sql_file_has_a_complete_header():
    names = bars.check_sql()
    assert {"_sessions", "bars_1m", "bars_5m", "segments", "et_years"} <= set(names)
    for name in names:
        text = (db.sql_root() / "bars" / f"{name}.sql").read_text()
        for key in bars.REQUIRED_HEADER:
            assert f"-- {key}:" in text, f"{name}.sql: no `-- {key}:` line"


@pytest.mark.parametrize("name,old,new,message", [
    ("bars_1m.sql", "-- lookahead: none; each row reads only its own raw bar (the factors themselves come from\n"
                    "--            bars/segments).\n", "", "lookahead"),
    ("_sessions.sql", "-- purpose:", "-- aim:", "purpose"),
    ("_sessions.sql", "window w as (order by ts rows between 120 preceding and 1 preceding)",
     "window w as (order by ts rows between 120 preceding and 1 following)", "following"),
    ("_sessions.sql", "lag(close) over w", "lead(close) over w", "lead"),
    ("bars_5m.sql", "-- grain:", "-- rows:", "grain"),
])
def test_a_bars_file_breaking_its_header_contract_stops_the_build(tmp_path, monkeypatch, demo_con, name, old, new,
                                                                     message):
    sql_dir = _copy_sql(tmp_path)
    path = sql_dir / "bars" / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    monkeypatch.setattr(db, "sql_root", lambda: sql_dir)
    with pytest.raises(SqlError, match=message):
        bars.build_bars(demo_con, demo.DEMO_SYMBOL)
    assert demo_con.execute("select count(*) from bars_1m").fetchall()[0][0] == 0   # nothing written


def test_outlier_flag_marks_an_injected_spike():
    data = demo.generate(days=5, seed=1)
    b = data.bars.copy()
    k = 1000
    b.loc[k, ["open", "high", "low", "close"]] = b.loc[k, "close"] * 1.02   # a 2% one-minute jump
    b.loc[k, "high"] = b.loc[k, ["open", "close", "high"]].max()
    b.loc[k, "low"] = min(b.loc[k, "low"], b.loc[k - 1, "close"])
    con = db.connect(":memory:")
    ingest.write_demo(con, demo.DemoData(bars=b, truth=data.truth, rolls=data.rolls, seconds=0))
    bars.build_bars(con, demo.DEMO_SYMBOL)
    flagged = _frame(con, "select ts from bars_1m where outlier_flag order by ts")["ts"]
    assert b.loc[k, "ts"] in set(flagged), "the 2% spike bar is not flagged"
    assert len(flagged) < 0.01 * len(b)


def test_unknown_series_is_a_clear_data_error():
    con = db.connect(":memory:")
    with pytest.raises(DataError, match="no bars for series 'NQ.v.0'"):
        bars.build_bars(con, "NQ.v.0")
    with pytest.raises(DataError, match="not supported"):
        bars.build_bars(con, "NQ.v.0", freq_minutes=(15,))


def test_ratio_for_a_time_that_is_not_a_roll_is_rejected(demo_db):
    con, data, _ = demo_db
    with pytest.raises(DataError, match="not a detected roll"):
        bars.build_bars(con, demo.DEMO_SYMBOL, ratios={pd.Timestamp("2025-01-02 15:00"): 1.01})


def test_bars_summary_reports_rolls_sessions_and_flags(demo_db):
    con, _, report = demo_db
    s = bars.bars_summary(con)
    row = s["bars"].set_index(["symbol", "freq_minutes"]).loc[(demo.DEMO_SYMBOL, 5)]
    assert row["bars"] == report.rows[5]
    assert row["roll_bars"] == 4 and row["sessions"] > 250
    assert len(s["rolls"]) == 4
    assert s["flagged"][["gap_flag", "outlier_flag", "roll_flag"]].any(axis=1).all()


# ------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_firstrate_1m_aggregates_to_the_vendor_5m_bars_exactly(shared_data):
    base = shared_data / "firstrate-nq-2023"
    con = db.connect(":memory:")
    ingest.import_file(con, base / "NQ_1min_sample.csv", tz="America/New_York")
    report = bars.build_bars(con, "NQ", freq_minutes=(5,))
    assert len(report.rolls) == 0
    got = _frame(con, "select ts, open, high, low, close, volume from bars_5m where symbol = 'NQ' order by ts")
    vendor = pd.read_csv(base / "NQ_5min_sample.csv")
    vendor["ts"] = (pd.to_datetime(vendor["timestamp"]).dt.tz_localize("America/New_York")
                    .dt.tz_convert("UTC").dt.tz_localize(None))
    assert len(vendor) == 2943 and len(got) == 2943, (len(vendor), len(got))
    assert (got["ts"].to_numpy() == vendor["ts"].to_numpy().astype("datetime64[us]")).all()
    for col in ("open", "high", "low", "close"):
        _assert_close(got[col], vendor[col], 0.0, f"5m {col} vs vendor")
    mism = np.flatnonzero(got["volume"].to_numpy() != vendor["volume"].to_numpy())
    assert not len(mism), f"volume differs on {len(mism)} bars, first at {got['ts'].iloc[mism[0]]}"


@pytest.mark.realdata
def test_firstrate_session_fields_and_flags_equal_the_reference(shared_data):
    con = db.connect(":memory:")
    ingest.import_file(con, shared_data / "firstrate-nq-2023" / "NQ_1min_sample.csv", tz="America/New_York")
    bars.build_bars(con, "NQ")
    counts = _assert_session_fields_match_reference(con, "NQ")
    assert counts["is_session_start_1m"] == counts["is_session_start_5m"] > 5
    assert counts["outlier_flag_1m"] > 0 and counts["outlier_flag_5m"] > 0


@pytest.mark.realdata
def test_lean_es_dec_2013_volume_roll_matches_lean_map_and_ratio(shared_data):
    base = shared_data / "lean-es"
    con = db.connect(":memory:")
    for f in sorted(glob.glob(str(base / "minute" / "*.zip"))):
        ingest.import_file(con, f)
    report = bars.build_bars(con, "ES")
    roll = report.rolls[(report.rolls["from_contract"] == "ESZ13") & (report.rolls["to_contract"] == "ESH14")]
    assert len(roll) == 1 and roll["method"].iloc[0] == "volume_crossover"
    roll_ts = roll["ts"].iloc[0]
    session = _frame(con, "select session_date from bars_1m where symbol = 'ES' and ts = ?", [roll_ts])
    our_first_day = pd.Timestamp(session["session_date"].iloc[0]).date()
    # Lean's map file (DataMappingMode 2 = open interest, the closest to a volume roll): ESZ13
    # (es vmklfzih2mtd) is mapped through 2013-12-17, so ESH14 is the front from 2013-12-18.
    rows = [line.split(",") for line in (base / "map_files" / "es.csv").read_text().splitlines()]
    last_z13 = max(dt.datetime.strptime(r[0], "%Y%m%d").date() for r in rows
                   if len(r) == 4 and r[1] == "es vmklfzih2mtd" and r[3] == "2")
    lean_first_day = last_z13 + dt.timedelta(days=1)
    assert lean_first_day == dt.date(2013, 12, 18)
    # We roll at the session AFTER the first one where ESH14 out-traded ESZ13 (12-18: 2.25M vs
    # 283k; the fixture has no data between 12-04 and 12-18), i.e. session 2013-12-19.
    trading_days = np.busday_count(min(lean_first_day, our_first_day), max(lean_first_day, our_first_day))
    assert trading_days <= 1, (our_first_day, lean_first_day)
    # Ratio: Lean's BackwardsRatioScale (mode 2 rows) is 0.9368683946 for data up to 2013-12-17
    # and 0.9403015981 after, so Lean's R = 0.9368683946 / 0.9403015981 = 0.996349 (its Panama
    # spread is -159.50 - -153.00 = -6.50 points at ~1780: the 12-17 settlements, which the
    # fixture lacks). Ours uses the last minute both traded before the roll, 2013-12-18 22:14 UTC:
    # ESH14 1804.00 / ESZ13 1810.25 = 0.996547 (a -6.25 spread at ~1810). Difference 2.0e-4 =
    # 0.25 points of spread plus the price level; we check that explanation numerically.
    factors = [json.loads(line) for line in (base / "factor_files" / "es.csv").read_text().split("\n") if line]
    mode2 = {f["Date"][:10]: f["BackwardsRatioScale"][0] for f in factors if f["DataMappingMode"] == 2}
    lean_ratio = mode2["2013-12-17"] / mode2["2014-03-18"]
    ours = roll["ratio"].iloc[0]
    assert lean_ratio == pytest.approx(0.996349, abs=1e-6)
    assert ours == pytest.approx(1804.00 / 1810.25, rel=1e-12)
    lean_spread = -6.50
    assert abs(ours * 1810.25 - 1810.25 - (-6.25)) < 1e-9
    assert abs((1 - lean_ratio) * 1780.3 + lean_spread) < 0.01   # Lean's ratio is a 6.50 spread at ~1780
    assert abs(ours - lean_ratio) < 3e-4
    # Within each contract the adjusted log-returns equal the raw ones; the roll bar's jump is removed.
    df = _frame(con, "select close, raw_close, roll_flag from bars_1m where symbol = 'ES' order by ts")
    adj_r, raw_r = np.diff(np.log(df["close"])), np.diff(np.log(df["raw_close"]))
    keep = ~df["roll_flag"].to_numpy()[1:]
    _assert_close(adj_r[keep], raw_r[keep], 1e-10, "ES within-contract returns")
