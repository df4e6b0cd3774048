"""Features are SQL: every SQL feature equals an independent pandas reference, nothing looks ahead,
targets and their flags are right, and feature tables are versioned and cached."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nqexp import features
from nqexp.data import db, demo, ingest
from nqexp.errors import DataError, SpecError, SqlError
from tests import feature_reference as ref

SYMBOL = "NQ.demo"
RTOL = 1e-9

MIGT24_SPEC = [  # docs/features.md §2, in order
    "open", "high", "low", "close", "log_volume", "log_return", "gk_volatility", "rv_12", "rv_36", "rv_72",
    "amihud_illiq", "rsi_14", "macd", "roc_5", "roc_10", "roc_20", "ema_slope_9", "ema_slope_21", "ema_slope_50",
    "ema_dev_9", "ema_dev_21", "ema_dev_50", "atr_14", "volume_ma_ratio",
]
GROK24_SPEC = [  # docs/features.md §3: (group, name), in order
    ("price", "log_return"), ("price", "hl_range"), ("price", "close_location"), ("price", "open_return"),
    ("volume", "log_volume"), ("volume", "log_volume_diff"), ("volume", "dollar_volume"),
    ("trend", "vwap_deviation"), ("trend", "macd_histogram"), ("trend", "sma_20_dev"), ("trend", "sma_50_dev"),
    ("trend", "sma_200_dev"),
    ("momentum", "rsi_norm"), ("momentum", "cci"), ("momentum", "plus_di"), ("momentum", "minus_di"),
    ("momentum", "adx"), ("momentum", "roc_norm"),
    ("volatility", "atr_norm"), ("volatility", "bb_pct_b"), ("volatility", "bb_bandwidth"),
    ("volatility", "realized_vol"),
    ("flow", "mfi_norm"), ("flow", "time_gap"),
]


def _connect():
    con = db.connect(":memory:")
    con.execute("set enable_progress_bar = false")
    return con


@pytest.fixture(scope="module")
def demo_con():
    """30 days of demo bars spanning the Sep-2025 roll (NQU5 -> NQZ5), 4 weekends and 20+ sessions."""
    con = _connect()
    ingest.write_demo(con, demo.generate(days=30, seed=3, end=dt.date(2025, 9, 24)))
    ref.build_bars(con, SYMBOL)
    yield con
    con.close()


@pytest.fixture(scope="module")
def firstrate_con(shared_data):
    firstrate = shared_data / "firstrate-nq-2023" / "NQ_1min_sample.csv"
    if not firstrate.is_file():
        pytest.skip(f"{firstrate} is absent")
    con = _connect()
    ingest.import_file(con, firstrate, tz="America/New_York")
    ref.build_bars(con, "NQ")
    yield con
    con.close()


def assert_close_to_reference(got: np.ndarray, want: np.ndarray, names, ts, warmup: int, rtol: float = RTOL):
    """Per column after warm-up: same NaN pattern, |got - want| <= rtol * max(|want|, median |want|)."""
    problems = []
    for j, name in enumerate(names):
        a, b = got[warmup:, j], want[warmup:, j]
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        if (nan_a != nan_b).any():
            i = int(np.flatnonzero(nan_a != nan_b)[0])
            problems.append(f"{name}: NaN pattern differs ({int((nan_a != nan_b).sum())} rows), first at "
                            f"{ts[warmup + i]}: sql={a[i]} ref={b[i]}")
            continue
        ok = ~nan_b
        if not ok.any():
            continue
        scale = np.maximum(np.abs(b[ok]), np.median(np.abs(b[ok])))
        rel = np.abs(a[ok] - b[ok]) / np.where(scale > 0, scale, 1.0)
        if rel.max() > rtol:
            i = int(np.flatnonzero(ok)[np.argmax(rel)])
            problems.append(f"{name}: max rel diff {rel.max():.3g} at {ts[warmup + i]}: sql={a[i]!r} ref={b[i]!r}")
    assert not problems, "SQL features differ from the pandas reference:\n" + "\n".join(problems)


def _check_against_reference(con, set_name: str, symbol: str):
    fs = features.feature_set(set_name)
    got = features.compute(con, fs, symbol)
    bars = ref.load_bars(con, fs.bars_table, symbol)
    want = ref.REFERENCES[set_name](bars)[list(fs.columns)].to_numpy(np.float64)
    assert got.X.shape == want.shape == (len(bars), 24)
    np.testing.assert_array_equal(got.ts, bars["ts"].to_numpy("datetime64[us]"))
    assert_close_to_reference(got.X, want, fs.columns, got.ts, fs.warmup_bars)
    # After warm-up nothing is missing on these series (the SQL NULLs only warm-up bars).
    assert not np.isnan(got.X[fs.warmup_bars:]).any(), "NaN after warm-up"


# --------------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------------

def test_feature_sets_have_design_columns_in_design_order():
    assert {"migt24", "grok24"} <= set(features.list_sets())
    migt = features.feature_set("migt24")
    assert migt.freq_minutes == 5 and migt.bars_table == "bars_5m" and migt.horizons == (3, 6, 12, 24, 48)
    assert [c.split("_", 2)[2] for c in migt.columns] == MIGT24_SPEC
    assert migt.groups is None and migt.warmup_bars >= 72
    grok = features.feature_set("grok24")
    assert grok.freq_minutes == 1 and grok.bars_table == "bars_1m" and grok.horizons == (5, 15, 30, 60, 120, 240)
    assert [(g, c.split("_", 2)[2]) for g, c in zip(grok.groups, grok.columns)] == GROK24_SPEC
    assert len(set(grok.groups)) == 6 and grok.warmup_bars >= 200
    for fs in (migt, grok):
        for f in fs.files:
            assert all(c.startswith(f.name + "_") for c in f.columns)
            assert f.header["lookahead"].startswith("none")


def test_recursive_filter_equals_pandas_ewm_adjust_false():
    rng = np.random.default_rng(0)
    x = 15000 + np.cumsum(rng.normal(size=20_000))
    x[[0, 1, 500, 501, 9000]] = np.nan                     # leading and interior gaps
    for alpha in (2 / 13, 2 / 51, 1 / 14):
        got = features.recursive_filter(x, alpha)
        want = pd.Series(x).ewm(alpha=alpha, adjust=False, ignore_na=True).mean().to_numpy()
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        rel = np.abs(got[ok] - want[ok]) / np.abs(want[ok])
        assert rel.max() < 1e-12, f"alpha={alpha}: max rel diff {rel.max():.3g}"
    no_gaps = x[2:500]
    want = pd.Series(no_gaps).ewm(span=12, adjust=False).mean().to_numpy()
    assert np.max(np.abs(features.recursive_filter(no_gaps, 2 / 13) - want) / want) < 1e-12


# --------------------------------------------------------------------------------------------
# SQL == reference
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("set_name", ["migt24", "grok24"])
def test_sql_features_equal_pandas_reference_on_demo(demo_con, set_name):
    _check_against_reference(demo_con, set_name, SYMBOL)


@pytest.mark.realdata
@pytest.mark.parametrize("set_name", ["migt24", "grok24"])
def test_sql_features_equal_pandas_reference_on_firstrate_nq(firstrate_con, set_name):
    _check_against_reference(firstrate_con, set_name, "NQ")


# --------------------------------------------------------------------------------------------
# No look-ahead
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("set_name", ["migt24", "grok24"])
def test_feature_at_t_ignores_bars_after_t(demo_con, set_name):
    """Recomputing on bars[:t] gives, for every feature, the same values at bars <= t."""
    fs = features.feature_set(set_name)
    full = features.compute(demo_con, fs, SYMBOL)
    n = len(full.ts)
    rng = np.random.default_rng(7)
    cuts = [3, fs.warmup_bars + 1, *rng.integers(fs.warmup_bars, n - 1, size=3)]
    results = features.leakage_check(demo_con, fs, SYMBOL, cuts, full=full)
    bad = [r for r in results if not r.ok]
    assert not bad, "features changed when later bars were removed: " + "; ".join(
        f"cut {r.cut_index} ({r.cut_ts}): {r.n_mismatch} values, worst {r.worst_feature} |diff| {r.max_abs_diff:.3g}"
        for r in bad)
    assert all(r.rows_compared == r.cut_index + 1 for r in results)


def test_leakage_check_catches_a_feature_that_peeks(tmp_path, monkeypatch, demo_con):
    """A full-sample normalisation passes every static rule, so the truncation check must catch it."""
    sql_dir = _copy_sql(tmp_path)
    path = sql_dir / "features" / "migt_liq.sql"
    text = path.read_text().replace(
        "abs(ln(close / prev_close)) / (raw_close * volume) as migt_liq_amihud_illiq",
        "abs(ln(close / prev_close)) / (raw_close * (select avg(volume) from feature_input)) as migt_liq_amihud_illiq")
    path.write_text(text)
    monkeypatch.setattr(features.catalog, "sql_root", lambda: sql_dir)
    fs = features.feature_set("migt24")
    results = features.leakage_check(demo_con, fs, SYMBOL, [500])
    assert not results[0].ok and results[0].worst_feature == "migt_liq_amihud_illiq"


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("set_name", ["migt24", "grok24"])
def test_targets_and_flags_equal_reference(demo_con, set_name):
    fs = features.feature_set(set_name)
    got = features.compute(demo_con, fs, SYMBOL)
    bars = ref.load_bars(demo_con, fs.bars_table, SYMBOL)
    y, flags = ref.targets(bars, fs.horizons)
    assert np.array_equal(np.isnan(got.targets), np.isnan(y))
    ok = ~np.isnan(y)
    assert np.max(np.abs(got.targets[ok] - y[ok])) < 1e-12
    mismatch = np.argwhere(got.target_flags != flags)
    assert mismatch.size == 0, f"{len(mismatch)} flags differ, first (bar, horizon) {mismatch[0]}"
    # The NaN tail is exactly the last h bars of each horizon.
    for k, h in enumerate(fs.horizons):
        assert np.isnan(got.targets[-h:, k]).all() and not np.isnan(got.targets[:-h, k]).any()


def test_target_flags_around_a_roll_a_maintenance_break_and_a_weekend(demo_con):
    fs = features.feature_set("migt24")
    got = features.compute(demo_con, fs, SYMBOL)
    bars = ref.load_bars(demo_con, "bars_5m", SYMBOL)
    k, h = 0, fs.horizons[0]                                                       # h = 3 bars (15 minutes)
    roll = np.flatnonzero(bars["roll_flag"].to_numpy())
    assert len(roll) == 1, "the fixture should span exactly one roll"
    r = int(roll[0])
    # Targets starting in [r-h, r-1] end on or after the roll bar: bit 4 set; those from r on: not.
    assert all(got.target_flags[t, k] & features.FLAG_ROLL for t in range(r - h, r))
    assert not any(got.target_flags[t, k] & features.FLAG_ROLL for t in (r - h - 1, r, r + 1))
    # The target across the roll is the adjusted-close return: no spurious calendar-spread jump.
    lc = np.log(bars["close"].to_numpy())
    assert got.targets[r - 1, k] == pytest.approx(lc[r - 1 + h] - lc[r - 1], abs=1e-12)
    assert abs(got.targets[r - 1, k]) < 0.02

    starts = np.flatnonzero(bars["is_session_start"].to_numpy())[1:]
    gaps = bars["minutes_since_prev"].to_numpy()[starts]
    daily = starts[gaps < 240]                                                     # 17:00-18:00 ET break
    weekend = starts[gaps > 24 * 60]
    assert len(daily) > 10 and len(weekend) >= 3
    for s in (daily[0], weekend[0]):
        assert got.target_flags[s - 1, k] & features.FLAG_SESSION                  # last bar before the break
        assert not got.target_flags[s, k] & features.FLAG_SESSION                  # first bar after it
    assert not got.target_flags[daily[0] - 1, k] & features.FLAG_WEEKEND
    assert got.target_flags[weekend[0] - 1, k] & features.FLAG_WEEKEND
    assert got.target_flags[weekend[0] - h, k] & features.FLAG_WEEKEND
    assert not got.target_flags[weekend[0] - h - 1, k] & features.FLAG_WEEKEND


# --------------------------------------------------------------------------------------------
# Build, cache, load, check
# --------------------------------------------------------------------------------------------

def _copy_sql(tmp_path: Path) -> Path:
    dest = tmp_path / "sql"
    shutil.copytree(db.sql_root(), dest)
    return dest


def test_build_is_cached_until_the_sql_or_the_bars_change(tmp_path, monkeypatch):
    con = _connect()
    ingest.write_demo(con, demo.generate(days=6, seed=5))
    ref.build_bars(con, SYMBOL)
    first = features.build(con, "migt24", SYMBOL)
    assert first.rebuilt and first.reason == "first build" and first.rows > 0
    assert features.build(con, "migt24", SYMBOL).rebuilt is False
    assert features.build(con, "migt24", SYMBOL, force=True).reason == "forced"

    con.execute("update bars_5m set close = close + 0.25 where ts = (select max(ts) from bars_5m)")
    again = features.build(con, "migt24", SYMBOL)
    assert again.rebuilt and again.reason == "bars changed" and again.table == first.table

    sql_dir = _copy_sql(tmp_path)
    path = sql_dir / "features" / "migt_bar.sql"
    path.write_text(path.read_text().replace("-- params:    none.", "-- params:    none (edited)."))
    monkeypatch.setattr(features.catalog, "sql_root", lambda: sql_dir)
    edited = features.build(con, "migt24", SYMBOL)
    assert edited.rebuilt and edited.reason == "SQL changed" and edited.table != first.table
    assert db.table_exists(con, edited.table) and not db.table_exists(con, first.table)
    assert con.execute("select count(*) from feature_builds").fetchall()[0][0] == 1
    con.close()


def test_load_arrays_meets_the_windows_contract(demo_con):
    for set_name in ("migt24", "grok24"):
        fs = features.feature_set(set_name)
        fa = features.load_arrays(demo_con, set_name, SYMBOL)
        n, V, H = len(fa.ts), len(fs.columns), len(fs.horizons)
        assert fa.ts.dtype == np.dtype("datetime64[us]") and (np.diff(fa.ts) > np.timedelta64(0)).all()
        assert fa.X.shape == (n, V) and fa.X.dtype == np.float32 and fa.X.flags.c_contiguous
        assert fa.names == list(fs.columns) and fa.horizons == fs.horizons and fa.freq_minutes == fs.freq_minutes
        assert fa.targets.shape == (n, H) and fa.targets.dtype == np.float64
        assert fa.target_flags.shape == (n, H) and fa.target_flags.dtype == np.uint8
        assert fa.close.dtype == np.float64 and fa.session_date.dtype == np.dtype("datetime64[D]")
        assert fa.minute_of_day_et.dtype == np.int16 and fa.minute_of_day_et.max() < 1440
        assert fa.groups == (list(fs.groups) if fs.groups else None)
        assert np.isnan(fa.X[0]).any() and not np.isnan(fa.X[fs.warmup_bars:]).any()
        # Same numbers as a fresh computation, to float32 rounding.
        c = features.compute(demo_con, fs, SYMBOL)
        np.testing.assert_array_equal(fa.X, c.X.astype(np.float32))
        np.testing.assert_array_equal(fa.target_flags, c.target_flags)
        bars = ref.load_bars(demo_con, fs.bars_table, SYMBOL)
        np.testing.assert_array_equal(fa.close, bars["close"].to_numpy())


def test_check_reports_stats_collinear_pairs_and_passes_leakage(demo_con):
    rep = features.check(demo_con, "migt24", SYMBOL, n_cuts=2, seed=1)
    assert [s.name for s in rep.stats] == list(features.feature_set("migt24").columns)
    assert all(s.n_nan == 0 and s.n_inf == 0 for s in rep.stats)
    ret = next(s for s in rep.stats if s.name == "migt_bar_log_return")
    close = ref.load_bars(demo_con, "bars_5m", SYMBOL)["close"].to_numpy()
    want = np.log(close[1:] / close[:-1])[rep.warmup_bars - 1:]
    assert ret.min == pytest.approx(want.min(), rel=1e-12) and ret.max == pytest.approx(want.max(), rel=1e-12)
    assert ret.mean == pytest.approx(want.mean(), rel=1e-9, abs=1e-15)
    pairs = {(a, b) for a, b, _ in rep.correlated}
    # The seed's EMA slope is alpha/(1-alpha) (C - EMA): in units of the close it is the deviation again.
    assert ("migt_trend_ema_slope_9", "migt_trend_ema_dev_9") in pairs
    assert all(abs(c) > 0.95 for _, _, c in rep.correlated)
    assert len(rep.leakage) == 2 and rep.ok
    assert rep.point_in_time and all(r.ok for r in rep.point_in_time) and not rep.point_in_time_note
    from nqexp.cli import render  # the CLI renders the report; features.py returns data

    assert len(render.feature_check_tables(rep)) == 5


# --------------------------------------------------------------------------------------------
# SQL contract violations
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("old,new,message", [
    ("rows between 19 preceding and current row", "rows between 19 preceding and 1 following", "following"),
    ("rows between 19 preceding and current row", "rows between unbounded preceding and unbounded following",
     "following"),
    ("    w20 as (order by ts rows between 19 preceding and current row)", "    w20 as (order by ts)", "frame"),
    ("abs(ln(close / prev_close))", "abs(ln(lead(close) over w20 / close))", "lead"),
    ("abs(ln(close / prev_close))", "abs(ln(lag(close, -1) over w20 / close))", "negative offset"),
    ("-- lookahead: none; windows end at the current row.\n", "", "lookahead"),
    ("migt_liq_volume_ma_ratio\n", "volume_ma_ratio\n", "migt_liq_<name>"),
])
def test_sql_file_breaking_its_contract_raises_sql_error(tmp_path, monkeypatch, old, new, message):
    sql_dir = _copy_sql(tmp_path)
    path = sql_dir / "features" / "migt_liq.sql"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    monkeypatch.setattr(features.catalog, "sql_root", lambda: sql_dir)
    with pytest.raises(SqlError, match=message):
        features.feature_set("migt24")


def test_sql_file_missing_a_declared_column_raises_at_run_time(tmp_path, monkeypatch, demo_con):
    sql_dir = _copy_sql(tmp_path)
    path = sql_dir / "features" / "migt_liq.sql"
    text = path.read_text()
    assert "as migt_liq_volume_ma_ratio," in text
    path.write_text(text.replace(
        "case when bar_index >= 19 then volume / avg(volume) over w20 end as migt_liq_volume_ma_ratio,",
        ""))
    monkeypatch.setattr(features.catalog, "sql_root", lambda: sql_dir)
    with pytest.raises(SqlError, match=r"missing \['migt_liq_volume_ma_ratio'\]"):
        features.compute(demo_con, "migt24", SYMBOL)


def test_unknown_set_and_missing_bars_are_user_errors():
    # A set name is user input (--set, features.set): SpecError, raised before any data is read.
    with pytest.raises(SpecError, match="no feature set 'nope'; known sets: grok24, migt24"):
        features.resolve_set("nope")
    with pytest.raises(SpecError, match="no feature set 'nope'"):
        features.feature_set("nope")
    con = _connect()
    with pytest.raises(DataError, match="no bars for symbol 'XX'"):
        features.build(con, "migt24", "XX")
    con.close()


# --------------------------------------------------------------------------------------------
# Set names and user folders (features.path)
# --------------------------------------------------------------------------------------------

USER_FAMILY = """-- mine_ret: a user family: the bar's log-return and range.
--
-- purpose:   test family in a user folder.
-- grain:     one row per (symbol, ts) of feature_input.
-- inputs:    feature_input (the shipped sql/features/_input.sql).
-- params:    none.
-- lookback:  1 bar (log_return; NULL on the first bar).
-- lookahead: none; no windows.
-- columns:   mine_ret_log_return, mine_ret_range

select
    bar_index,
    ln(close / prev_close) as mine_ret_log_return,
    (high - low) / close as mine_ret_range,
from feature_input
"""

USER_SET = """name: mine
description: a user set
bars: bars_5m
freq_minutes: 5
horizons: [3, 12]
files: [mine_ret]
columns: [mine_ret_log_return, mine_ret_range]
"""


def _user_folder(tmp_path: Path, family: str = USER_FAMILY, set_yaml: str = USER_SET, name: str = "mine") -> Path:
    folder = tmp_path / "my_features"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine_ret.sql").write_text(family)
    (folder / f"{name}.yaml").write_text(set_yaml)
    return folder


def test_a_set_in_a_user_folder_builds_checks_and_loads_with_the_shipped_input(tmp_path, demo_con):
    folder = _user_folder(tmp_path)
    assert features.list_sets(folder) == ["grok24", "migt24", "mine"]
    assert "mine" not in features.list_sets()
    fs = features.resolve_set("mine", path=folder)
    assert fs.input_file.path == db.sql_root() / "features" / "_input.sql"        # reused, not copied
    assert fs.warmup_bars == 1 and fs.horizons == (3, 12)
    report = features.build(demo_con, "mine", SYMBOL, path=folder)
    assert report.rebuilt and report.table.startswith("features_mine_nq_demo_")
    fa = features.load_arrays(demo_con, "mine", SYMBOL, path=folder)
    bars = ref.load_bars(demo_con, "bars_5m", SYMBOL)
    close = bars["close"].to_numpy()
    np.testing.assert_allclose(fa.X[1:, 0], np.log(close[1:] / close[:-1]).astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(fa.targets[:-3, 0], np.log(close[3:]) - np.log(close[:-3]))
    rep = features.check(demo_con, "mine", SYMBOL, n_cuts=2, path=folder)
    assert rep.ok and [s.name for s in rep.stats] == list(fs.columns)
    # Without the folder, the name is unknown.
    with pytest.raises(SpecError, match="no feature set 'mine'"):
        features.resolve_set("mine")


def test_a_user_folder_set_gets_the_same_static_checks(tmp_path):
    peeking = USER_FAMILY.replace("ln(close / prev_close)", "ln(lead(close) over (order by ts) / close)")
    with pytest.raises(SqlError, match="lead"):
        features.resolve_set("mine", path=_user_folder(tmp_path / "a", family=peeking))
    headless = USER_FAMILY.replace("-- lookahead: none; no windows.\n", "")
    with pytest.raises(SqlError, match="lookahead"):
        features.resolve_set("mine", path=_user_folder(tmp_path / "b", family=headless))
    outside = USER_SET.replace("files: [mine_ret]", "files: [../../sql/features/migt_liq]")
    with pytest.raises(SqlError, match="files lists '../../sql/features/migt_liq'"):
        features.resolve_set("mine", path=_user_folder(tmp_path / "c", set_yaml=outside))
    # A user set may not take a shipped set's name (builds are cached by set name).
    clash = USER_SET.replace("name: mine", "name: migt24")
    with pytest.raises(SpecError, match="has the name of a shipped set"):
        features.resolve_set("migt24", path=_user_folder(tmp_path / "d", set_yaml=clash, name="migt24"))
    with pytest.raises(SpecError, match="is not a folder"):
        features.resolve_set("mine", path=tmp_path / "absent")


@pytest.mark.parametrize("name", ["../../x", "../x", "/tmp/x", "a/b", "..", "x.yaml", "Mine", "", "1x"])
def test_a_set_name_cannot_leave_its_folder(tmp_path, name):
    # A valid set really exists two folders up: the name must be refused, not resolved to it.
    (tmp_path / "x.yaml").write_text(USER_SET.replace("name: mine", "name: x"))
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    for path in (None, inner):
        with pytest.raises(SpecError, match=r"^feature set name .* is not a plain name .*; known sets: grok24, migt24$"):
            features.resolve_set(name, path=path)


def test_series_whose_symbols_share_a_slug_get_their_own_feature_tables(tmp_path):
    # 'NQ.demo' and 'nq-demo' slug to the same 'nq_demo': each must still read its own features.
    con = _connect()
    ingest.write_demo(con, demo.generate(days=6, seed=5))
    ref.build_bars(con, SYMBOL)
    con.execute("insert into bars_5m select * replace ('nq-demo' as symbol, close * 1.01 + 3.0 as close) "
                "from bars_5m where symbol = ?", [SYMBOL])
    a = features.build(con, "migt24", SYMBOL)
    b = features.build(con, "migt24", "nq-demo")
    assert a.table != b.table and b.rebuilt and b.reason == "first build"
    again = features.build(con, "migt24", SYMBOL)
    assert not again.rebuilt and again.table == a.table
    for symbol in (SYMBOL, "nq-demo"):
        fa = features.load_arrays(con, "migt24", symbol)
        want = features.compute(con, "migt24", symbol)
        np.testing.assert_array_equal(fa.X, want.X.astype(np.float32))
        np.testing.assert_array_equal(fa.close, ref.load_bars(con, "bars_5m", symbol)["close"].to_numpy())
    # A table that does not record this series (an old build, a name clash) is never served as cached.
    con.execute(f"comment on table \"{a.table}\" is '{{\"symbol\": \"nq-demo\"}}'")
    stolen = features.build(con, "migt24", SYMBOL)
    assert stolen.rebuilt and "was not built for 'NQ.demo'" in stolen.reason
    assert not features.build(con, "migt24", SYMBOL).rebuilt
    con.close()


# --------------------------------------------------------------------------------------------
# Chunked builds (bounded memory) equal the whole build
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("set_name,chunk_rows", [("migt24", 700), ("grok24", 3000)])
def test_chunked_compute_equals_the_whole_series_bit_for_bit(demo_con, set_name, chunk_rows):
    """Session-date chunks with a look-back overlap and carried filter state change no bit."""
    fs = features.feature_set(set_name)
    whole = features.compute(demo_con, fs, SYMBOL, chunk_rows=10**9)
    n_chunks = len(list(features.engine._plan_chunks(demo_con, fs, SYMBOL, None, chunk_rows)))
    assert n_chunks >= 5, "the chunk size should split the fixture several times"
    chunked = features.compute(demo_con, fs, SYMBOL, chunk_rows=chunk_rows)
    for name in ("ts", "X", "close", "targets", "target_flags", "session_date", "minute_of_day_et"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name), err_msg=name)
    # Truncated series chunk the same way (the leakage check's path).
    cut = whole.ts[len(whole.ts) * 2 // 3]
    part = features.compute(demo_con, fs, SYMBOL, until=cut, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(part.X, features.compute(demo_con, fs, SYMBOL, until=cut, chunk_rows=10**9).X)


def test_a_chunked_build_stores_the_same_table(monkeypatch):
    con = _connect()
    ingest.write_demo(con, demo.generate(days=12, seed=5))
    ref.build_bars(con, SYMBOL)
    whole = features.build(con, "migt24", SYMBOL)
    want = con.execute(f'select * from "{whole.table}" order by ts').df()
    monkeypatch.setattr(features.engine, "CHUNK_ROWS", 500)
    chunked = features.build(con, "migt24", SYMBOL, force=True)
    got = con.execute(f'select * from "{chunked.table}" order by ts').df()
    assert chunked.rows == whole.rows == len(got) and chunked.table == whole.table
    pd.testing.assert_frame_equal(got, want)
    # Features are stored as REAL: exactly what load_arrays hands out.
    types = dict(con.execute(f"select column_name, data_type from information_schema.columns "
                             f"where table_name = '{chunked.table}'").fetchall())
    assert all(types[c] == "FLOAT" for c in features.feature_set("migt24").columns)
    assert types["close"] == types["fwd_ret_3"] == "DOUBLE"
    con.close()


def test_rolling_columns_equal_pandas_and_ignore_where_the_series_starts():
    rng = np.random.default_rng(2)
    x = 15000 + np.cumsum(rng.normal(size=5000))
    x[[0, 777]] = np.nan
    for n in (1, 3, 14, 20, 72, 200):
        s = pd.Series(x).rolling(n, min_periods=n)
        # sds against the reference's two-pass sd (pandas' online one loses ~1e-9 at price levels)
        for kind, want in (("sum", s.sum().to_numpy()), ("mean", s.mean().to_numpy()),
                           ("std_pop", ref._rolling_std(x, n, ddof=0)), ("std_samp", ref._rolling_std(x, n, ddof=1))):
            if kind.startswith("std") and n == 1:
                continue
            got = features.rolling(x, kind, n)
            assert np.array_equal(np.isnan(got), np.isnan(want)), (kind, n)
            ok = ~np.isnan(want)
            scale = np.maximum(np.abs(want[ok]), np.median(np.abs(want[ok])))
            assert np.max(np.abs(got[ok] - want[ok]) / scale) < 1e-9, (kind, n)
            # Every value depends on its own window only: a later start changes no bit.
            k = 1234
            np.testing.assert_array_equal(features.rolling(x[k:], kind, n)[n:], got[k + n:])


def test_features_build_only_the_bars_their_set_reads():
    """After `data bars --freq 5m`, a migt24 build builds no 1m bars; a stale frequency is rebuilt alone."""
    from nqexp.data import bars

    con = _connect()
    ingest.write_demo(con, demo.generate(days=6, seed=5))
    bars.build_bars(con, SYMBOL, [5])
    assert bars.ensure_bars(con, SYMBOL, [5]) is None
    assert con.execute("select count(*) from bars_1m").fetchall()[0][0] == 0
    assert features.build(con, "migt24", SYMBOL).rebuilt
    one = bars.ensure_bars(con, SYMBOL, [1])                      # grok24 reads bars_1m: built now, alone
    assert one is not None and set(one.rows) == {1} and one.rows[1] > 0
    assert bars.ensure_bars(con, SYMBOL) is None                  # both frequencies are current
    con.execute("delete from bars_5m where ts = (select max(ts) from bars_5m)")
    again = bars.ensure_bars(con, SYMBOL, [1, 5])
    assert again is not None and set(again.rows) == {5}
    con.close()


def test_a_build_failing_between_chunks_keeps_the_previous_table(monkeypatch):
    con = _connect()
    ingest.write_demo(con, demo.generate(days=12, seed=5))
    ref.build_bars(con, SYMBOL)
    first = features.build(con, "migt24", SYMBOL)
    before = con.execute(f'select * from "{first.table}" order by ts').df()
    monkeypatch.setattr(features.engine, "CHUNK_ROWS", 500)
    real, calls = features.store._output_table, []

    def failing(fs, res):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(fs, res)

    monkeypatch.setattr(features.store, "_output_table", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        features.build(con, "migt24", SYMBOL, force=True)
    pd.testing.assert_frame_equal(con.execute(f'select * from "{first.table}" order by ts').df(), before)
    assert not [t for (t,) in con.execute("select table_name from duckdb_tables()").fetchall() if "__building" in t]
    monkeypatch.setattr(features.store, "_output_table", real)
    assert features.build(con, "migt24", SYMBOL).rebuilt is False
    con.close()
