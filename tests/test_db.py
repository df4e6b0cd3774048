"""db.py: where the database lives, migrations applied once and in order, readable lock errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from nqexp.data import db
from nqexp.errors import DatabaseError


def test_migrations_are_recorded_and_applied_once(tmp_path):
    path = tmp_path / "x.duckdb"
    con = db.connect(path)
    names = [r[0] for r in con.execute("select name from _migrations order by name").fetchall()]
    assert names == [f.name for f in db.migration_files()]
    assert db.apply_migrations(con) == []  # nothing left to apply
    con.close()
    con = db.connect(path)  # reopening applies nothing twice (a second CREATE would fail)
    assert con.execute("select count(*) from _migrations").fetchall()[0][0] == len(names)


def test_connections_run_in_utc_with_explicit_limits(con):
    assert con.execute("select current_setting('TimeZone')").fetchall()[0][0] == "UTC"
    threads = con.execute("select current_setting('threads')").fetchall()[0][0]
    assert int(threads) == db.THREADS


def test_db_path_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("NQEXP_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    assert db.resolve_db_path() == str(tmp_path / "nqexp_data" / "nqexp.duckdb")
    monkeypatch.setenv("NQEXP_DB", str(tmp_path / "env.duckdb"))
    assert db.resolve_db_path() == str(tmp_path / "env.duckdb")
    assert db.resolve_db_path(tmp_path / "flag.duckdb") == str(tmp_path / "flag.duckdb")


def test_sql_files_ship_with_the_package():
    root = db.sql_root()
    assert (root / "schema" / "001_raw_bars.sql").is_file()


def test_a_database_locked_by_another_process_gives_a_readable_error(tmp_path):
    path = tmp_path / "locked.duckdb"
    db.connect(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(path)!r})
            print("ready", flush=True)
            time.sleep(30)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(DatabaseError) as err:
            db.connect(path)
        assert "locked by another process" in str(err.value) and str(path) in str(err.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "junk.duckdb"
    path.write_bytes(b"this is not duckdb" * 1000)
    with pytest.raises(DatabaseError, match="cannot open database"):
        db.connect(path)


@pytest.mark.parametrize("read_only", [False, True])
def test_a_database_from_a_newer_nqexp_is_refused(tmp_path, read_only):
    path = tmp_path / "future.duckdb"
    con = db.connect(path)
    con.execute("insert into _migrations (name, sha256) values ('999_from_the_future.sql', 'x')")
    con.close()
    with pytest.raises(DatabaseError, match="written by a newer nqexp .*999_from_the_future.sql"):
        db.connect(path, read_only=read_only)


def test_a_run_store_is_not_judged_by_the_bar_store_migrations(tmp_path):
    path = tmp_path / "store.duckdb"
    con = db.connect(path, migrate=False)
    assert db.apply_migrations(con, "runstore")
    con.close()
    db.connect(path, read_only=True, migrate=False).close()      # how RunStore reads it: no refusal


def test_a_db_path_under_a_regular_file_is_one_clear_error(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(DatabaseError, match="plain is a file, not a folder"):
        db.connect(tmp_path / "plain" / "sub" / "x.duckdb")


@pytest.mark.parametrize("when", ["commit", "insert into"])
def test_a_write_the_full_disk_refuses_leaves_the_database_as_it_was_and_says_so_in_one_line(tmp_path, monkeypatch,
                                                                                              when):
    from tests.full_disk import full_disk

    path = tmp_path / "t.duckdb"
    con = db.connect(path)
    con.execute("create table t (x int)")
    con.execute("insert into t values (1)")
    con.close()
    stats = full_disk(monkeypatch, when=when)
    con = db.connect(path)
    with pytest.raises(DatabaseError) as info:
        with db.transaction(con, "writing t"):
            con.execute("delete from t")
            con.execute("insert into t values (2), (3)")
    assert (stats.connections, stats.failures) == (1, 1)
    message = str(info.value)
    assert message.startswith(f"writing t: the disk holding {path} is full (") and "\n" not in message
    assert message.endswith("nothing was written and the database is as it was; free some space and run it again")
    # The connection still works and holds what it held; so does the file, reopened.
    assert con.execute("select x from t").fetchall() == [(1,)]
    con.close()
    monkeypatch.undo()
    con = db.connect(path, read_only=True)
    assert con.execute("select x from t").fetchall() == [(1,)]
    con.close()


def test_other_errors_in_a_transaction_roll_it_back_and_keep_their_type(con):
    con.execute("create table t (x int)")
    with pytest.raises(ZeroDivisionError):
        with db.transaction(con, "writing t"):
            con.execute("insert into t values (1)")
            1 / 0
    assert con.execute("select count(*) from t").fetchall() == [(0,)]
