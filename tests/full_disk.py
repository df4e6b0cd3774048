"""A disk that fills up, at the storage boundary: DuckDB connections whose writes find no room.

There is no small tmpfs or loop device to fill on the test machines, so the failure is simulated
where the disk meets the database. `full_disk(monkeypatch, when=...)` wraps every connection
`nqexp.data.db.connect` opens:

* when="commit": the commit cannot write DuckDB's log. DuckDB then ends the transaction itself
  (its changes are gone) and raises its IO error, as it does on a real full disk: a later
  `rollback` finds no transaction ("cannot rollback - no transaction is active").
* when=<sql prefix>: the first statement starting with it (e.g. "insert into raw_bars") raises
  OSError(ENOSPC), the error a write that found no room raises from Python; the transaction is
  still open and the caller must roll it back.

Everything else passes through to the real connection, so what is on disk afterwards is real.
"""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import duckdb

DUCKDB_DISK_FULL = 'IO Error: Could not write all bytes to file "{path}.wal": wanted=4096 wrote=0 (No space left on device)'


class FullDiskConnection:
    def __init__(self, real, when: str, path: str, stats: SimpleNamespace):
        self._real, self._when, self._path, self._stats = real, when.lower(), path, stats

    def _fails(self, sql) -> bool:
        text = " ".join(str(sql).split()).lower()
        return text == "commit" if self._when == "commit" else text.startswith(self._when)

    def execute(self, sql, *args, **kwargs):
        if self._fails(sql):
            self._stats.failures += 1
            if self._when == "commit":
                self._real.execute("rollback")              # what DuckDB does when its log write fails
                raise duckdb.IOException(DUCKDB_DISK_FULL.format(path=self._path))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)
        self._real.execute(sql, *args, **kwargs)
        return self

    def executemany(self, sql, *args, **kwargs):
        if self._fails(sql):
            self._stats.failures += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)
        self._real.executemany(sql, *args, **kwargs)
        return self

    def __getattr__(self, name):
        return getattr(self._real, name)


def full_disk(monkeypatch, when: str = "commit", only: str | None = None) -> SimpleNamespace:
    """Make every write connection db.connect opens (only those whose path contains `only`, if given) a
    FullDiskConnection; returns their counts (`connections`, `failures`), so a test can check the failure
    was reached. Nothing here holds a connection: a command's connection closes when it is dropped."""
    from nqexp.data import db

    real_connect = db.connect
    stats = SimpleNamespace(connections=0, failures=0)

    def connect(path=None, *args, **kwargs):
        con = real_connect(path, *args, **kwargs)
        resolved = db.resolve_db_path(path)
        if kwargs.get("read_only") or (only is not None and only not in resolved):
            return con
        stats.connections += 1
        return FullDiskConnection(con, when, resolved, stats)

    monkeypatch.setattr(db, "connect", connect)
    return stats
