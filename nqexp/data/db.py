"""DuckDB store: where the database lives, how to open it, schema migrations and named SQL.

The database path is chosen as: the CLI's `--db`, then `$NQEXP_DB`, then
`./nqexp_data/nqexp.duckdb` inside the current working directory (DEFAULT_DB).

Every connection runs with `TimeZone='UTC'` (so tz-aware inputs are never shifted by the
session zone; docs/stack_notes.md §6.7), an explicit `memory_limit` and `threads` (so one heavy
query cannot take the whole machine), and a temp directory next to the database instead
of `./.tmp`.

Schema changes are numbered files (001_*.sql, 002_*.sql, ...): `sql/schema/` for the bar store,
`sql/runstore/` for the run store (track.RunStore). They are applied once, in order, each in its
own transaction, and recorded in that database's `_migrations`. A merged migration is never
edited; changes go into a new file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import Any

import duckdb

from nqexp.errors import DatabaseError, SqlError
from nqexp.version import __version__

log = logging.getLogger(__name__)

DEFAULT_DB = Path("nqexp_data") / "nqexp.duckdb"
MEMORY_LIMIT = os.environ.get("NQEXP_DUCKDB_MEMORY", "6GB")
THREADS = int(os.environ.get("NQEXP_DUCKDB_THREADS", str(min(os.cpu_count() or 2, 8))))


def sql_root() -> Path:
    """The folder holding `schema/` and `features/`.

    Installed packages carry it as the package data `nqexp.sql` (pyproject maps the
    top-level sql/ folder there); a plain source checkout falls back to ./sql.
    """
    # The package's folders, not str(resources.files()): `nqexp.sql` has no __init__.py, and a
    # namespace package's files() can be a MultiplexedPath, whose str() is no path.
    try:
        spec = importlib.util.find_spec("nqexp.sql")
    except ModuleNotFoundError:
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "schema").is_dir():
            return Path(folder)
    return Path(__file__).resolve().parents[2] / "sql"


def resolve_db_path(db: str | os.PathLike | None = None) -> str:
    """`--db` if given, else $NQEXP_DB, else DEFAULT_DB (relative to the cwd). ':memory:' passes through."""
    chosen = db or os.environ.get("NQEXP_DB") or DEFAULT_DB
    if str(chosen) == ":memory:":
        return ":memory:"
    return str(Path(chosen).expanduser().absolute())


def connect(db: str | os.PathLike | None = None, *, read_only: bool = False, migrate: bool = True):
    """Open the DuckDB database (creating its folder), configure it and apply pending migrations.

    Raises DatabaseError with a readable message when the file is locked by another
    process or is not a DuckDB database.
    """
    path = resolve_db_path(db)
    if path != ":memory:":
        if read_only and not Path(path).exists():
            raise DatabaseError(f"database {path} does not exist; create it with `nqexp data demo` or `nqexp data import`")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # e.g. --db under a path whose parent is a regular file, or a folder we may not write.
            blocker = next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)
            why = f"{blocker} is a file, not a folder" if blocker else (exc.strerror or str(exc))
            raise DatabaseError(f"cannot create the folder for database {path}: {why}; "
                                "point --db / NQEXP_DB at a writable folder") from None
        if Path(path).is_dir():
            raise DatabaseError(f"database {path} is a directory; point --db / NQEXP_DB at a file")
    config = {"memory_limit": MEMORY_LIMIT, "threads": THREADS}
    if path != ":memory:":
        config["temp_directory"] = path + ".tmp"
    try:
        con = duckdb.connect(path, read_only=read_only, config=config)
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            holder = re.search(r"PID (\d+)", text)
            who = f" (held by process {holder.group(1)})" if holder else ""
            raise DatabaseError(
                f"database {path} is locked by another process{who}; wait for it to finish "
                "or point --db / NQEXP_DB at another file"
            ) from None
        raise DatabaseError(f"cannot open database {path}: {text.splitlines()[0]}") from None
    except duckdb.Error as exc:
        raise DatabaseError(f"cannot open database {path}: {str(exc).splitlines()[0]}") from None
    con.execute("set TimeZone = 'UTC'")
    try:
        if migrate and not read_only:
            apply_migrations(con)
        elif migrate and table_exists(con, "_migrations"):
            check_known_migrations(con)     # read-only: nothing to apply, but a newer schema is still refused
    except Exception:
        con.close()
        raise
    return con


def migration_files(folder: str = "schema") -> list[Path]:
    """The numbered migrations of one store: 'schema' (bars) or 'runstore' (experiments and trials)."""
    files = sorted((sql_root() / folder).glob("[0-9][0-9][0-9]_*.sql"))
    numbers = [f.name[:3] for f in files]
    if len(set(numbers)) != len(numbers):
        raise SqlError(f"two {folder} migrations share a number: {[f.name for f in files]}")
    return files


def apply_migrations(con, folder: str = "schema") -> list[str]:
    """Apply every migration of `sql/<folder>/` not yet recorded in `_migrations`, in order.

    Returns the names applied. Each database holds one store, so one `_migrations` table suffices.
    """
    con.execute(
        "create table if not exists _migrations ("
        " name varchar primary key, sha256 varchar not null, applied_at timestamp not null default now())"
    )
    done = {name: sha for name, sha in con.execute("select name, sha256 from _migrations").fetchall()}
    check_known_migrations(con, folder, done)
    applied = []
    for path in migration_files(folder):
        text = path.read_text()
        sha = hashlib.sha256(text.encode()).hexdigest()
        if path.name in done:
            if done[path.name] != sha:
                # Editing a merged migration would silently diverge existing databases.
                log.warning("migration %s changed after it was applied; schema changes belong in a new file", path.name)
            continue
        con.execute("begin transaction")
        try:
            con.execute(text)
            con.execute("insert into _migrations (name, sha256) values (?, ?)", [path.name, sha])
            con.execute("commit")
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):     # a failed commit has already ended the transaction
                con.execute("rollback")
            raise_if_disk_full(exc, f"schema migration {path.name}", con)
            raise SqlError(f"schema migration {path.name} failed: {exc}") from None
        applied.append(path.name)
        log.info("applied migration %s", path.name)
    return applied


def check_known_migrations(con, folder: str = "schema", done=None) -> None:
    """Refuse a database that a newer nqexp migrated: its schema is one this version does not know."""
    if done is None:
        done = dict(con.execute("select name, sha256 from _migrations").fetchall())
    known = {f.name for f in migration_files(folder)}
    unknown = sorted(set(done) - known)
    if unknown:
        raise DatabaseError(
            f"database {_db_file(con)} was written by a newer nqexp (migration {unknown[-1]} is unknown to "
            f"nqexp {__version__}); upgrade nqexp, or point --db / NQEXP_DB at another file")


def _db_file(con) -> str:
    try:
        return con.execute("select path from duckdb_databases() where database_name = current_database()"
                           ).fetchall()[0][0] or ":memory:"
    except duckdb.Error:
        return "(this database)"


def read_sql(name: str) -> str:
    """Text of `sql/<name>.sql` (name may include a subfolder, e.g. 'features/returns')."""
    path = sql_root() / f"{name}.sql"
    if not path.is_file():
        raise SqlError(f"no SQL file {path}")
    return path.read_text()


def run_sql(con, name: str, **params: Any):
    """Run a named SQL file with DuckDB named parameters ($start, $end, ...). Values are never formatted into SQL."""
    text = read_sql(name)
    try:
        return con.execute(text, params) if params else con.execute(text)
    except duckdb.Error as exc:
        raise SqlError(f"sql/{name}.sql failed: {str(exc).splitlines()[0]}") from None


def table_exists(con, name: str) -> bool:
    return bool(
        con.execute(
            "select count(*) from information_schema.tables where table_name = ?", [name]
        ).fetchall()[0][0]
    )


def table_counts(con) -> list[tuple[str, int]]:
    """(table, rows) for every table of the main schema, by name (`nqexp doctor`)."""
    names = [r[0] for r in con.execute(
        "select table_name from information_schema.tables where table_schema = 'main' order by 1").fetchall()]
    # Table names come from the catalog itself, quoted, so formatting them into SQL is safe.
    return [(name, con.execute(f'select count(*) from "{name}"').fetchall()[0][0]) for name in names]


# ------------------------------------------------------------------------------------------
# Transactions that survive a full disk


# What a write that found no room raises: OSError(ENOSPC/EDQUOT) from Python, or DuckDB's IO error.
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "could not write all bytes")


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a write that found the disk full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        # DuckDB's IO error, or a typed error quoting it (run_sql's SqlError)
        if any(t in str(exc).lower() for t in _DISK_FULL_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def raise_if_disk_full(exc: BaseException, what: str, con=None) -> None:
    """Turn a full disk into one DatabaseError line (the caller has undone its writes); else return."""
    if disk_full(exc):
        where = f"the disk holding {_db_file(con)}" if con is not None else "the disk"
        raise DatabaseError(f"{what}: {where} is full ({_first_line(exc)}); nothing was written and the database "
                            "is as it was; free some space and run it again") from None


@contextlib.contextmanager
def transaction(con, what: str):
    """`begin` ... `commit`, rolled back on any error. A failed commit (DuckDB could not write its log:
    a full disk) has already ended the transaction, so the rollback's own "no transaction is active"
    never hides the real error; a full disk becomes one DatabaseError line saying nothing was written."""
    con.execute("begin transaction")
    try:
        yield con
        con.execute("commit")
    except BaseException as exc:
        with contextlib.suppress(duckdb.Error):
            con.execute("rollback")
        raise_if_disk_full(exc, what, con)
        raise


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
