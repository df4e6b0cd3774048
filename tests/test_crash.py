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
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from tests.wandb_log import history_steps

ROOT = Path(__file__).resolve().parents[1]
SYMBOL = "NQ.demo"
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")
EXP = "quickstart-smoke"


def cli_env(db: Path, **extra) -> dict:
    env = {**os.environ, "NQEXP_DB": str(db), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONUNBUFFERED": "1", **extra}
    env.pop("WANDB_API_KEY", None)
    return env


def nqexp(*args, db: Path, cwd: Path, timeout=600):
    return subprocess.run([sys.executable, "-m", "nqexp.cli", *args], cwd=cwd, env=cli_env(db),
                          capture_output=True, text=True, timeout=timeout)


class Watched:
    """A CLI process whose progress is observable from outside: stdout/stderr lines (read as they
    come), the database file's size, its write-ahead log, and whether the process has it open."""

    def __init__(self, args, *, db: Path, cwd: Path, new_session: bool = False, env: dict | None = None):
        self.db = db
        self.proc = subprocess.Popen([sys.executable, "-m", "nqexp.cli", *args], cwd=cwd,
                                     env={**env, "NQEXP_DB": str(db)} if env else cli_env(db),
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
        # All or nothing: a kill that lands after the commit (the file grows at the checkpoint) leaves
        # the whole table, never a part of it or a build record without its table.
        assert state in ({"builds": [], "tables": [], "content": {}}, ref), (what, state)
    final = nqexp("features", "build", "--set", "migt24", "--symbol", SYMBOL, db=db, cwd=tmp_path)
    assert final.returncode == 0 and ("first build" in final.stdout or "up to date" in final.stdout), \
        final.stdout + final.stderr
    assert feature_state(db) == ref
    # A forced rebuild killed while it writes the replacement: the committed table stays whole.
    before = os.path.getsize(db)
    run = Watched(["features", "build", "--set", "migt24", "--symbol", SYMBOL, "--force"], db=db, cwd=tmp_path)
    run.kill_when(lambda w: w.size() > before or w.size(".wal") > 0, "forced rebuild writing")
    assert run.wait() == -signal.SIGKILL
    assert feature_state(db) == ref
    again = nqexp("features", "build", "--set", "migt24", "--symbol", SYMBOL, db=db, cwd=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr


# ------------------------------------------------------------------------------------------
# Ray runs: the driver stopped by a signal, or killed


AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def marked_pids(mark: str, but=()) -> list[int]:
    """Processes whose environment carries `mark`: the run's driver and everything it started
    (Ray's GCS, raylet, agents and workers inherit the driver's environment), whatever their
    group; those whose command line starts with one of `but` are left out."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if mark.encode() not in f.read():
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read().decode(errors="replace").startswith(but or ("\0",)):
                    continue
        except OSError:
            continue
        pids.append(int(entry))
    return pids


@pytest.fixture
def ray_run(templates, tmp_path):
    """A folder with a copy of the built database, and a per-test marker in the environment of every
    process the test starts; processes still carrying it at teardown are killed by pid."""
    db = tmp_path / "nq.duckdb"
    shutil.copy(templates["feats"], db)
    mark = f"NQEXP_CRASH_TEST={os.getpid()}-{tmp_path.name}"
    key, value = mark.split("=")
    os.environ[key] = value
    try:
        yield tmp_path, db, mark
    finally:
        del os.environ[key]
        for pid in marked_pids(mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def tune_started(run_dir: Path):
    """Ray is up (its signal handlers installed) and Tune has begun: Tune's folder for this attempt exists."""
    return lambda w: any((run_dir / EXP / "ray").glob("attempt-*"))


NATIVE = ("SIGTERM received", "logging.cc", "*** ", "PC: @", "Traceback", "Failed to connect to GCS")


@pytest.mark.parametrize("sig", [
    signal.SIGTERM,
    pytest.param(signal.SIGINT, marks=pytest.mark.slow),
], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_run_stops_it_cleanly_with_a_resume_hint(ray_run, sig):
    """`kill -TERM -- -PGID` (timeout, a scheduler) or Ctrl-C (SIGINT to the terminal's group) while
    trials train: the run stops within seconds, says how to resume, exits 130, and prints neither
    Ray's native stack nor a Python traceback; no Ray process outlives it."""
    cwd, db, mark = ray_run
    run = Watched(["run", QUICKSTART, "--smoke", "--set", "train.max_epochs=3"], db=db, cwd=cwd, new_session=True)
    t0 = time.monotonic()
    run.kill_when(tune_started(cwd / "runs"), "Tune started", sig=sig, group=True)
    signalled_after = time.monotonic() - t0
    t0 = time.monotonic()
    rc = run.wait(timeout=120)
    stopped_in = time.monotonic() - t0
    assert rc == 130, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Resume with: nqexp run --resume quickstart-smoke" in " ".join(run.stdout.split())
    for text in NATIVE:
        assert text not in run.stderr and text not in run.stdout, (text, run.stderr[-3000:])
    assert stopped_in < 45, stopped_in
    deadline = time.monotonic() + 30
    while marked_pids(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marked_pids(mark) == []
    print(f"signalled after {signalled_after:.0f}s, stopped in {stopped_in:.0f}s")


@pytest.mark.slow
def test_sigkill_of_the_driver_then_the_same_command_finishes_without_duplicates(ray_run):
    """SIGKILL of the whole driver process group (the CLI, its W&B service) while one trial is
    finished and another mid-training; the same command then runs only the unfinished trials,
    each from its checkpoint, and the run store and the W&B runs hold every row and step once."""
    cwd, db, mark = ray_run
    args = ["run", QUICKSTART, "--smoke", "--set", "train.max_epochs=3"]
    trials = cwd / "runs" / EXP / "trials"

    def one_done_one_training(w):
        """A trial recorded as finished (the driver prints its line after the store write) and another
        with a checkpoint but not yet scored."""
        if ": finished" not in w.stdout:
            return False
        scored = {p.parent.name for p in trials.glob("*/predictions.parquet")}
        return bool({p.parent.parent.name for p in trials.glob("*/checkpoints/latest.pt")} - scored)

    t0 = time.monotonic()
    run = Watched(args, db=db, cwd=cwd, new_session=True)
    run.kill_when(one_done_one_training, "one trial scored, another training", timeout=600, group=True)
    assert run.wait(timeout=60) == -signal.SIGKILL
    killed_after = time.monotonic() - t0
    # Ray's GCS and raylet die with their driver (kernel parent-death signal; they are not in its
    # process group), and the workers with the raylet. Ray's two agents notice the raylet's death
    # too, but first try to report it to the dead GCS, which takes them about a minute.
    deadline = time.monotonic() + 30
    while marked_pids(mark, but=AGENTS) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marked_pids(mark, but=AGENTS) == [], "Ray processes outlived their killed driver"

    t1 = time.monotonic()
    again = nqexp(*args, db=db, cwd=cwd)
    resumed_in = time.monotonic() - t1
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Resuming 'quickstart-smoke'" in again.stdout
    for text in NATIVE:
        assert text not in again.stderr, text
    con = duckdb.connect(str(cwd / "runs" / "store.duckdb"), read_only=True)
    try:
        assert con.execute("select count(*), count(distinct experiment) from experiments").fetchall() == [(1, 1)]
        rows = con.execute("select trial, status, epochs from trials where experiment = ?", [EXP]).fetchall()
        assert len(rows) == 5 and {r[1] for r in rows} == {"finished"}, rows
        epochs = con.execute("select trial, epoch, key from epochs where experiment = ?", [EXP]).fetchall()
        assert len(epochs) == len(set(epochs))
        for trial, _, n in rows:
            assert {e[1] for e in epochs if e[0] == trial} == set(range(1, n + 1)), trial
        metrics = con.execute("select trial, key from metrics where experiment = ?", [EXP]).fetchall()
        assert len(metrics) == len(set(metrics)) and {m[0] for m in metrics} == {r[0] for r in rows}
        flags = con.execute("select trial, gate, reason from gate_flags where experiment = ?", [EXP]).fetchall()
        assert len(flags) == len(set(flags))
    finally:
        con.close()
    # W&B: one id per trial; a resumed trial has a second offline folder under the same id, and no
    # step is in both (the second continues after the first's last step).
    runs: dict[str, list[Path]] = {}
    for folder in sorted((cwd / "runs" / EXP / "wandb").glob("offline-run-*")):
        runs.setdefault(folder.name.rsplit("-", 1)[1], []).append(folder)
    assert len(runs) == 5, sorted(runs)
    assert any(len(f) == 2 for f in runs.values()), "no trial was resumed: the kill came too late"
    for run_id, folders in runs.items():
        steps = [s for f in folders for s in history_steps(next(f.glob("run-*.wandb")))]
        assert steps and steps == sorted(set(steps)), (run_id, steps)
    deadline = time.monotonic() + 90
    while marked_pids(mark) and time.monotonic() < deadline:
        time.sleep(1)
    assert marked_pids(mark) == [], "Ray's agents outlived their killed raylet by minutes"
    print(f"driver killed after {killed_after:.0f}s; resumed run {resumed_in:.0f}s")
