"""Crash consistency beyond import: real SIGKILLs of the CLI, then the next run.

Each kill point is chosen by polling what the killed process shows from outside (the database
file opened, the file growing under a running transaction, the write-ahead log appearing at
commit, a log line, checkpoint files of a trial), not by sleeping a guessed time. After every
kill the database must open, hold either the old or the new result (never part of one, never a
duplicate row), and the next run must finish the job.

`data bars` and `features build` kills run in the default suite (about a minute together).
Ray runs are longer: a SIGTERM'd run (default), the driver's SIGKILL and resume (slow).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[1]
SYMBOL = "NQ.demo"
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")
EXP = "quickstart-smoke"


def cli_env(db: Path, **extra) -> dict:
    env = {**os.environ, "NQEXP_DB": str(db), "WANDB_MODE": "offline", "WANDB_SILENT": "true", **extra}
    env.pop("WANDB_API_KEY", None)
    return env


def nqexp(*args, db: Path, cwd: Path, timeout=600):
    return subprocess.run([sys.executable, "-m", "nqexp.cli", *args], cwd=cwd, env=cli_env(db),
                          capture_output=True, text=True, timeout=timeout)


class Watched:
    """A CLI process whose progress is observable from outside: stdout/stderr lines (read as they
    come), the database file's size, its write-ahead log, and whether the process has it open."""

    def __init__(self, args, *, db: Path, cwd: Path, new_session: bool = False):
        self.db = db
        self.proc = subprocess.Popen([sys.executable, "-m", "nqexp.cli", *args], cwd=cwd, env=cli_env(db),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=new_session)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for r in self._readers:
            r.start()

    @staticmethod
    def _read(stream, sink):
        for line in stream:
            sink.append(line)

    def size(self, suffix: str = "") -> int:
        try:
            return os.path.getsize(str(self.db) + suffix)
        except OSError:
            return -1

    def has_db_open(self) -> bool:
        fd_dir = f"/proc/{self.proc.pid}/fd"
        try:
            return any(os.readlink(f"{fd_dir}/{fd}") == str(self.db) for fd in os.listdir(fd_dir))
        except OSError:
            return False

    def kill_when(self, ready, what: str, timeout: float = 300, sig=signal.SIGKILL, group: bool = False):
        """Poll `ready(self)` every millisecond; send `sig` the moment it holds. The process must
        still be running then: a kill that came too late would test nothing."""
        deadline = time.monotonic() + timeout
        while not ready(self):
            assert self.proc.poll() is None, f"{what}: the process ended (rc {self.proc.returncode}) before the " \
                                             f"kill point; stderr: {''.join(self.err)[-2000:]}"
            assert time.monotonic() < deadline, f"{what}: kill point not reached in {timeout}s"
            time.sleep(0.001)
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 300) -> int:
        rc = self.proc.wait(timeout=timeout)
        for r in self._readers:
            r.join(timeout=10)
        return rc

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)


# ------------------------------------------------------------------------------------------
# The bar store: template databases built once (raw demo bars; + bars; + features)


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash_templates")
    raw, bars, feats = d / "raw.duckdb", d / "bars.duckdb", d / "feats.duckdb"
    made = nqexp("data", "demo", "--days", "400", db=raw, cwd=d)
    assert made.returncode == 0, made.stderr
    shutil.copy(raw, bars)
    built = nqexp("data", "bars", "--symbol", SYMBOL, db=bars, cwd=d)
    assert built.returncode == 0, built.stderr
    shutil.copy(bars, feats)
    f = nqexp("features", "build", "--set", "migt24", "--symbol", SYMBOL, db=feats, cwd=d)
    assert f.returncode == 0, f.stderr
    return {"raw": raw, "bars": bars, "feats": feats}


def bar_state(db: Path) -> dict:
    """Rows, distinct keys and a content hash of every table `data bars` writes for the series."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for table, key in (("bars_1m", "ts"), ("bars_5m", "ts"), ("rolls", "ts"), ("roll_warnings", "expiry")):
            out[table] = con.execute(
                f"select count(*), count(distinct {key}), coalesce(sum(hash(t)::hugeint), 0) "
                f"from {table} t where symbol = ?", [SYMBOL]).fetchall()[0]
        return out
    finally:
        con.close()


def feature_state(db: Path) -> dict:
    """The series' feature_builds rows, the tables they name (rows, distinct ts, content hash) and
    every features_* table in the database (an orphan would be a half-finished build)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        builds = con.execute("select table_name, n_rows from feature_builds where set_name = 'migt24' and symbol = ?",
                             [SYMBOL]).fetchall()
        tables = sorted(r[0] for r in con.execute(
            "select table_name from information_schema.tables where table_name like 'features_%'").fetchall())
        content = {t: con.execute(f'select count(*), count(distinct ts), sum(hash(f)::hugeint) from "{t}" f'
                                  ).fetchall()[0] for t in tables}
        return {"builds": builds, "tables": tables, "content": content}
    finally:
        con.close()


def test_sigkill_during_data_bars_leaves_old_or_new_bars_and_the_next_run_completes(templates, tmp_path):
    """Five runs of `nqexp data bars` on a database with raw bars only; the first four are killed,
    each on the state the previous kill left: while computing, inside the write transaction, while
    the commit writes the WAL, and after the commit was logged (before the checkpoint)."""
    new = bar_state(templates["bars"])
    empty = {t: (0, 0, 0) for t in new}
    assert new["bars_1m"][0] == new["bars_1m"][1] > 300_000 and new["rolls"][0] == 4
    db = tmp_path / "nq.duckdb"
    shutil.copy(templates["raw"], db)
    base = os.path.getsize(db)
    points = [
        ("computing", lambda w: w.has_db_open()),
        ("inside the transaction", lambda w: w.size() > base),
        ("writing the WAL at commit", lambda w: w.size(".wal") > 0),
        ("committed, before the checkpoint", lambda w: "built bars" in w.stderr),
    ]
    seen = []
    for what, ready in points:
        base = os.path.getsize(db)
        run = Watched(["-v", "data", "bars", "--symbol", SYMBOL], db=db, cwd=tmp_path)
        run.kill_when(ready, what)
        assert run.wait() == -signal.SIGKILL, what
        state = bar_state(db)             # opens: the WAL of a killed writer is replayed or dropped whole
        assert state in (empty, new), (what, state)
        seen.append(state == new)
    # Killed before its commit, a build leaves nothing; killed after it was logged, all of it.
    assert seen[0] is False and seen[-1] is True, seen
    final = nqexp("data", "bars", "--symbol", SYMBOL, db=db, cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert bar_state(db) == new


def test_sigkill_during_features_build_keeps_one_whole_table_and_the_next_build_completes(templates, tmp_path):
    """`nqexp features build` on built bars, killed while computing, as the new table starts to grow
    and when it is mostly written, then run to the end; then a forced rebuild is killed mid-write
    and must leave the previous table in place."""
    ref = feature_state(templates["feats"])
    (table,) = ref["tables"]
    assert ref["builds"] == [(table, ref["content"][table][0])] and ref["content"][table][0] == ref["content"][table][1]
    db = tmp_path / "nq.duckdb"
    shutil.copy(templates["bars"], db)
    start = os.path.getsize(db)
    grown = start + (os.path.getsize(templates["feats"]) - start) * 3 // 4
    points = [
        ("computing", lambda w: w.has_db_open()),
        ("table started", lambda w: w.size() > start),
        ("table mostly written", lambda w: w.size() > grown),
    ]
    for what, ready in points:
        run = Watched(["features", "build", "--set", "migt24", "--symbol", SYMBOL], db=db, cwd=tmp_path)
        run.kill_when(ready, what)
        assert run.wait() == -signal.SIGKILL, what
        state = feature_state(db)
        assert state == {"builds": [], "tables": [], "content": {}}, (what, state)
    final = nqexp("features", "build", "--set", "migt24", "--symbol", SYMBOL, db=db, cwd=tmp_path)
    assert final.returncode == 0 and "first build" in final.stdout, final.stdout + final.stderr
    assert feature_state(db) == ref
    # A forced rebuild killed while it writes the replacement: the committed table stays whole.
    before = os.path.getsize(db)
    run = Watched(["features", "build", "--set", "migt24", "--symbol", SYMBOL, "--force"], db=db, cwd=tmp_path)
    run.kill_when(lambda w: w.size() > before or w.size(".wal") > 0, "forced rebuild writing")
    assert run.wait() == -signal.SIGKILL
    assert feature_state(db) == ref
    again = nqexp("features", "build", "--set", "migt24", "--symbol", SYMBOL, db=db, cwd=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr
