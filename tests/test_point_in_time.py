"""Features are point in time under back-adjustment: removing the RAW bars after a bar t and rebuilding
everything (rolls, ratio back-adjustment, bars, features, targets) changes no feature and no target at
bars <= t (docs/features.md §13). A roll added later rescales every earlier back-adjusted price, so a
feature in price units fails this check, which the truncation check on adjusted bars cannot see."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nqexp import features
from nqexp.cli import cli
from nqexp.data import bars, db, demo, ingest

SYMBOL = "NQ.demo"
check_module = sys.modules["nqexp.features.check"]   # `features.check` is the function


def _connect(path=":memory:"):
    con = db.connect(path)
    con.execute("set enable_progress_bar = false")
    return con


@pytest.fixture(scope="module")
def two_rolls_con():
    """About four months of demo bars with the Jun-2025 and Sep-2025 rolls, built by the real bars build."""
    con = _connect()
    ingest.write_demo(con, demo.generate(days=125, seed=3, end=dt.date(2025, 9, 24)))
    report = bars.build_bars(con, SYMBOL)
    assert len(report.rolls) == 2
    yield con
    con.close()


# A user family that keeps a price level in back-adjusted points, the seed's tie-sensitive +DM share,
# and one scale-free column.
PLANTED_FAMILY = """-- plant_level: a user family with look-ahead through back-adjustment.
--
-- purpose:   test family: the close in points, the tie-sensitive +DM share, a log-return.
-- grain:     one row per (symbol, ts) of feature_input.
-- inputs:    feature_input (the shipped sql/features/_input.sql).
-- params:    none.
-- lookback:  42 bars (the Wilder averages).
-- lookahead: none; no windows.
-- columns:   plant_level_close, plant_level_plus_dm_share, plant_level_log_return
-- filter plant_tr_14 = wilder(case when prev_close is not null then greatest(high - low, abs(high - prev_close), abs(low - prev_close)) end, 14)
-- filter plant_plus_dm_14 = wilder(case when high - prev_high > prev_low - low and high - prev_high > 0 then high - prev_high when prev_high is not null then 0.0 end, 14)

select
    bar_index,
    close as plant_level_close,
    plant_plus_dm_14 / plant_tr_14 as plant_level_plus_dm_share,
    ln(close / prev_close) as plant_level_log_return,
from feature_input
"""

PLANTED_SET = """name: plant
description: a user set with price levels
bars: bars_1m
freq_minutes: 1
horizons: [5, 30]
files: [plant_level]
columns: [plant_level_close, plant_level_plus_dm_share, plant_level_log_return]
"""


def _planted_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "planted"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plant_level.sql").write_text(PLANTED_FAMILY)
    (folder / "plant.yaml").write_text(PLANTED_SET)
    return folder


@pytest.mark.parametrize("set_name", ["migt24", "grok24"])
def test_shipped_sets_are_unchanged_when_raw_bars_after_a_cut_and_two_rolls_are_removed(two_rolls_con, set_name):
    fs = features.resolve_set(set_name)
    results = features.point_in_time_check(two_rolls_con, fs, SYMBOL, n_cuts=2, seed=1)
    assert len(results) == 2
    before_roll = results[0]
    assert before_roll.rolls_removed == 2, "the first cut must lie just before a roll and remove both later rolls"
    assert before_roll.rows_compared > 2 * fs.warmup_bars
    targets = [f"fwd_ret_{h}" for h in fs.horizons]
    for r in results:
        assert [c.name for c in r.columns] == [*fs.columns, *targets]
        assert not r.note and r.ok, f"cut {r.cut_ts}: {r.offending} changed: " + "; ".join(
            f"{c.name} max rel {c.max_rel_diff:.3g}" for c in r.columns if not c.ok)
        assert all(c.max_rel_diff <= check_module.POINT_IN_TIME_RTOL for c in r.columns)
        assert all(c.rows > 0 for c in r.columns)


def test_the_check_names_a_price_level_and_a_tie_sensitive_feature_and_targets_still_pass(two_rolls_con, tmp_path):
    folder = _planted_folder(tmp_path)
    results = features.point_in_time_check(two_rolls_con, "plant", SYMBOL, n_cuts=2, seed=1, path=folder)
    before_roll = results[0]
    assert before_roll.rolls_removed == 2 and not before_roll.ok
    assert before_roll.offending == ["plant_level_close", "plant_level_plus_dm_share"]
    by_name = {c.name: c for c in before_roll.columns}
    # Two removed rolls of about +1.05% each: the level moves by about 2.1% at every compared bar.
    close = by_name["plant_level_close"]
    assert close.n_mismatch == close.rows and 0.015 < close.max_rel_diff < 0.03
    assert by_name["plant_level_plus_dm_share"].n_mismatch < by_name["plant_level_plus_dm_share"].rows
    assert by_name["plant_level_log_return"].ok and by_name["fwd_ret_5"].ok and by_name["fwd_ret_30"].ok
    # Cuts after the last roll remove no roll: nothing is rescaled, so everything is the same there.
    assert all(r.ok for r in results[1:] if r.rolls_removed == 0)
    # features.check runs it for a user folder and fails on it.
    report = features.check(two_rolls_con, "plant", SYMBOL, n_cuts=1, path=folder, raw_cuts=2, seed=1)
    assert not report.ok and all(r.ok for r in report.leakage)    # the adjusted-bars truncation check sees nothing
    assert report.point_in_time_offending() == ["plant_level_close", "plant_level_plus_dm_share"]


def test_the_check_only_reads_the_users_database(two_rolls_con):
    def snapshot():
        tables = sorted(r[0] for r in two_rolls_con.execute("select table_name from duckdb_tables()").fetchall())
        counts = {t: two_rolls_con.execute(f'select count(*) from "{t}"').fetchall()[0][0]
                  for t in ("raw_bars", "rolls", "bars_1m", "bars_5m")}
        close = two_rolls_con.execute("select sum(close) from bars_5m").fetchall()[0][0]
        return tables, counts, close

    before = snapshot()
    features.point_in_time_check(two_rolls_con, "migt24", SYMBOL, n_cuts=1)
    assert snapshot() == before


def test_explicit_cuts_and_given_roll_ratios_are_reproduced(tmp_path):
    """A build with given ratios is rebuilt with them; explicit cuts (bar starts) are honoured."""
    con = _connect()
    data = demo.generate(days=30, seed=3, end=dt.date(2025, 9, 24))
    ingest.write_demo(con, data)
    exact = {row.ts: row.ratio for row in data.rolls.itertuples()}
    bars.build_bars(con, SYMBOL, ratios=exact)
    rolls, _ = bars.stored_rolls(con, SYMBOL)
    assert list(rolls["method"]) == ["instrument_id+given_ratio"]
    roll_ts = np.datetime64(rolls["ts"].iloc[0], "us")
    cut = roll_ts - np.timedelta64(5, "m")                         # the last 5-minute bar of the old contract
    (r,) = features.point_in_time_check(con, "migt24", SYMBOL, cuts=[cut])
    assert r.cut_ts == cut and r.raw_until == roll_ts and r.rolls_removed == 1 and r.ok
    given, _ = check_module._build_settings(con, SYMBOL)
    assert given["ratio"].tolist() == [pytest.approx(float(data.rolls["ratio"].iloc[0]), rel=1e-15)]
    con.close()


def test_features_check_cli_runs_the_raw_check_and_fails_naming_the_columns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "t.duckdb"
    con = _connect(str(path))
    ingest.write_demo(con, demo.generate(days=30, seed=3, end=dt.date(2025, 9, 24)))
    con.close()
    folder = _planted_folder(tmp_path)

    def run(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="nqexp", env={"NQEXP_DB": str(path)})
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
        return result

    ok = run("features", "check", "--set", "migt24", "--symbol", SYMBOL, "--cuts", "1", "--raw-cuts", "2")
    assert ok.exit_code == 0, ok.output
    assert "point in time per column" in ok.stdout and "fwd_ret_48" in ok.stdout
    assert "Point in time: every feature and target unchanged at 2 raw cut point(s)" in ok.stdout
    bad = run("features", "check", "--set", "plant", "--path", folder, "--symbol", SYMBOL, "--cuts", "1",
              "--raw-cuts", "1")
    assert bad.exit_code == 1
    assert "point-in-time check failed" in bad.stderr
    assert "plant_level_close, plant_level_plus_dm_share" in bad.stderr, bad.stderr
    assert bad.stderr.strip().count("\n") == 0, bad.stderr
    skipped = run("features", "check", "--set", "migt24", "--symbol", SYMBOL, "--cuts", "1", "--raw-cuts", "0")
    assert skipped.exit_code == 0 and "Raw truncation check skipped" in skipped.stdout
