"""track.RunStore: its tables come from sql/runstore/ migrations, old stores keep working, and every
read the CLI, driver and reports need is a method (they hold no SQL)."""

from __future__ import annotations

import json
import math

import duckdb
import pytest

from nqexp.data import db
from nqexp.errors import DataError
from nqexp.experiment.track import RunStore


def add_trial(store, exp, name, variant, seed, status="finished", metrics=None, flags=(), params=None):
    store.upsert_trial(exp, name, variant=variant, seed=seed, status=status, params_json=json.dumps(params or {}),
                       spec_yaml="", dir=str(store.trial_dir(exp, name)), gated=bool(flags))
    store.write_metrics(exp, name, metrics or {}, flags=flags)


def test_a_fresh_store_records_every_runstore_migration(tmp_path):
    store = RunStore(tmp_path / "runs")
    store.start_experiment("e", "run", None, "name: e\n")
    con = duckdb.connect(str(store.path), read_only=True)
    names = [r[0] for r in con.execute("select name from _migrations order by name").fetchall()]
    cols = {r[0] for r in con.execute("describe experiments").fetchall()}
    con.close()
    assert names == [f.name for f in db.migration_files("runstore")] and len(names) >= 2
    assert "provenance" in cols
    # The bar store's migrations are a separate set: none of them ran here.
    assert not set(names) & {f.name for f in db.migration_files("schema")}


def test_a_store_made_by_the_old_inline_ddl_keeps_its_rows_and_gains_provenance(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    con = duckdb.connect(str(root / "store.duckdb"))
    # Stores written before migrations existed: the same tables, no _migrations, no provenance.
    con.execute((db.sql_root() / "runstore" / "001_runstore.sql").read_text())
    con.execute("insert into experiments (experiment, kind, spec_yaml, status) values ('old', 'run', 'name: old', 'finished')")
    con.close()
    store = RunStore(root)
    assert store.experiment("old")["provenance"] is None          # read-only, before any migration ran
    store.start_experiment("new", "run", None, "name: new\n", provenance={"git": {"commit": "abc123", "dirty": False}})
    assert [r["experiment"] for r in store.experiments()] == ["old", "new"]
    assert store.experiment("old")["status"] == "finished"
    assert store.experiment("new")["provenance"] == {"git": {"commit": "abc123", "dirty": False}}


def test_provenance_is_scrubbed_and_kept_when_a_resume_gives_none(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-SECRET-0123456789")
    store = RunStore(tmp_path / "runs")
    prov = {"versions": {"torch": "2.13.0"}, "api_key": "x", "note": "key wandb-SECRET-0123456789 leaked"}
    store.start_experiment("e", "run", None, "name: e\n", provenance=prov)
    store.start_experiment("e", "run", None, "name: e\n")            # a resume without provenance
    got = store.experiment("e")["provenance"]
    assert got == {"versions": {"torch": "2.13.0"}, "api_key": "***", "note": "key *** leaked"}
    assert store.experiment("nope") is None


def test_reads_give_trials_metrics_flags_and_status_counts(tmp_path):
    store = RunStore(tmp_path / "runs")
    store.start_experiment("e", "run", None, "name: e\n")
    add_trial(store, "e", "a-s0", "a", 0, metrics={"test/crps": 1.0, "val/crps": 2.0, "test/ic": float("nan")})
    add_trial(store, "e", "b-s0", "b", 0, flags=[("collapse", "picp80 0.01 < 0.5")])
    add_trial(store, "e", "b-s1", "b", 1, status="failed")
    assert store.trial("e", "a-s0")["variant"] == "a" and store.trial("e", "zz") is None
    metrics = store.trial_metrics("e", "a-s0")
    assert metrics["test/crps"] == 1.0 and math.isnan(metrics["test/ic"])
    assert store.trial_flags("e", "b-s0") == [("collapse", "picp80 0.01 < 0.5")]
    assert store.has_flags("e") and not store.has_flags("other")
    assert store.trial_statuses("e") == {"a-s0": "finished", "b-s0": "finished", "b-s1": "failed"}
    assert store.trial_status_counts("e") == {"finished": 2, "failed": 1}
    assert store.finished_trials("e") == {"a-s0", "b-s0"}
    (row,) = store.experiments()
    assert (row["experiment"], row["trials"], row["finished"], row["gated"]) == ("e", 3, 2, 1)
    assert list(store.trials_frame("e")["trial"]) == ["a-s0", "b-s0", "b-s1"]
    assert len(store.metrics_frame("e")) == 3 and list(store.flags_frame("e")["gate"]) == ["collapse"]


def test_sweep_trials_rank_by_val_crps_with_gated_trials_last(tmp_path):
    store = RunStore(tmp_path / "runs")
    store.start_experiment("s", "sweep", None, "name: s\n")
    add_trial(store, "s", "t1", "sweep", 0, metrics={"val/crps": 0.5}, params={"train.lr": 1e-3})
    add_trial(store, "s", "t2", "sweep", 0, metrics={"val/crps": 0.1}, flags=[("collapse", "x")])
    add_trial(store, "s", "t3", "sweep", 0, metrics={"val/crps": 0.3, "test/crps": 0.4})
    add_trial(store, "s", "t4", "sweep", 0, status="failed")
    rows = store.sweep_trials("s")
    assert [r["trial"] for r in rows] == ["t3", "t1", "t4", "t2"]
    assert rows[0]["test_crps"] == 0.4 and rows[1]["params"] == {"train.lr": 1e-3} and rows[3]["gated"]


def test_reading_a_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no run store at"):
        RunStore(tmp_path / "empty").experiments()


def test_epoch_writes_are_idempotent_on_resume_and_read_back_in_order(tmp_path):
    store = RunStore(tmp_path / "runs")
    store.start_experiment("e", "run", None, "name: e\n")
    add_trial(store, "e", "a-s0", "a", 0)
    store.write_epoch("e", "a-s0", 2, {"train/loss_epoch": 0.9, "val/crps": 0.5})
    store.write_epoch("e", "a-s0", 1, {"train/loss_epoch": 1.0, "val/crps": 0.6, "flag": True})
    # A resumed trial replays epoch 2 from its checkpoint: one row per key, the new value.
    store.write_epoch("e", "a-s0", 2, {"train/loss_epoch": 0.8, "val/crps": 0.4, "train/lr": 1e-3})
    frame = store.epochs_frame("e")
    assert len(frame) == 5 and not frame.duplicated(["trial", "epoch", "key"]).any()
    assert list(frame["epoch"]) == [1, 1, 2, 2, 2]
    got = frame.set_index(["epoch", "key"])["value"]
    assert got[(2, "val/crps")] == 0.4 and got[(2, "train/loss_epoch")] == 0.8 and got[(1, "val/crps")] == 0.6
    assert store.epochs_frame("other").empty


def test_a_store_from_before_the_epochs_migration_reads_an_empty_history(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    con = duckdb.connect(str(root / "store.duckdb"))
    con.execute((db.sql_root() / "runstore" / "001_runstore.sql").read_text())
    con.close()
    frame = RunStore(root).epochs_frame("old")                 # read-only: no migration runs
    assert frame.empty and list(frame.columns) == ["trial", "epoch", "key", "value"]


# ------------------------------------------------------------------------------------------
# Stores that move and stores that cannot be written (docs/experiments.md §15)


def test_trial_folders_are_recorded_relative_so_a_copied_store_reads_its_own(tmp_path):
    import shutil

    store = RunStore(tmp_path / "runs")
    store.start_experiment("e", "run", None, "name: e\n")
    add_trial(store, "e", "a-s0", "a", 0)
    con = duckdb.connect(str(store.path), read_only=True)
    assert con.execute("select dir from trials").fetchall() == [("e/trials/a-s0",)]
    con.close()
    shutil.copytree(tmp_path / "runs", tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "runs")
    moved = RunStore(tmp_path / "elsewhere")
    assert moved.trial("e", "a-s0")["dir"] == str(tmp_path / "elsewhere" / "e" / "trials" / "a-s0")
    assert list(moved.trials_frame("e")["dir"]) == [str(tmp_path / "elsewhere" / "e" / "trials" / "a-s0")]


def test_a_store_that_recorded_absolute_trial_folders_is_read_under_its_new_root(tmp_path):
    import shutil

    store = RunStore(tmp_path / "runs")
    store.start_experiment("e", "run", None, "name: e\n")
    add_trial(store, "e", "a-s0", "a", 0)
    add_trial(store, "e", "b-s0", "b", 0)
    con = duckdb.connect(str(store.path))             # as stores written before paths were relative
    con.execute("update trials set dir = ? where trial = 'a-s0'", [str(tmp_path / "runs" / "e" / "trials" / "a-s0")])
    con.execute("update trials set dir = '/data/other/place' where trial = 'b-s0'")   # not the layout: kept
    con.close()
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    moved = RunStore(tmp_path / "moved")
    assert moved.trial("e", "a-s0")["dir"] == str(tmp_path / "moved" / "e" / "trials" / "a-s0")
    assert moved.trial("e", "b-s0")["dir"] == "/data/other/place"


def test_reading_creates_nothing_and_a_file_as_the_store_is_one_line(tmp_path):
    missing = RunStore(tmp_path / "nope" / "runs")
    with pytest.raises(DataError, match="no run store at"):
        missing.experiments()
    assert missing.finished_trials("e") == set() and not (tmp_path / "nope").exists()
    (tmp_path / "plain").write_text("x")
    for root, where in ((tmp_path / "plain", "is a file"), (tmp_path / "plain" / "runs", "is under")):
        with pytest.raises(DataError) as info:
            RunStore(root).start_experiment("e", "run", None, "name: e\n")
        assert str(info.value).startswith(f"run store {root} {where}") and "--set track.store=DIR" in str(info.value)
