"""Options shared by several commands (`--store`, `--json`, `--symbol`) and where a command finds its database,
its series and its run store."""

from __future__ import annotations

import os
from contextlib import contextmanager

import click

store_option = click.option("--store", "store_dir", default=None, type=click.Path(file_okay=False),
                            help="Run store folder (default: ./runs).")

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print machine-readable JSON instead of tables.")

# Every command that reads one series of the database takes it the same way (`pick_symbol`).
symbol_option = click.option("--symbol", default=None,
                             help="Series in the database (NQ.demo, NQ.v.0, NQ) or a per-contract root (ES). "
                                  "Default: the only series in the database.")


def open_db(ctx, *, read_only: bool = False):
    from nqexp.data import db

    return db.connect(ctx.obj["db"], read_only=read_only)


def pick_symbol(con, symbol: str | None) -> str:
    """--symbol, else the database's only series (bars.default_symbol: a one-line error listing them when
    there are none or several). The one default-symbol rule of data bars/rolls and features build/check."""
    from nqexp.data import bars

    return symbol or bars.default_symbol(con)


def db_label(ctx) -> str:
    """The database path, with its size once it exists."""
    from nqexp.data import db

    path = db.resolve_db_path(ctx.obj["db"])
    if path == ":memory:" or not os.path.exists(path):
        return path
    # With a connection still open, recent writes sit in the write-ahead log: count it too.
    size = sum(os.path.getsize(p) for p in (path, path + ".wal") if os.path.exists(p))
    return f"{path} ({size / 1e6:.1f} MB)"


def store_root(store_dir):
    """The run store's folder (--store, else the default), without creating it."""
    from pathlib import Path

    from nqexp.experiment.spec import TrackConfig

    return Path(store_dir or TrackConfig().store_path())


def run_store(store_dir):
    from nqexp.experiment.spec import TrackConfig
    from nqexp.experiment.track import RunStore

    return RunStore(store_dir or TrackConfig().store_path())


@contextmanager
def warnings_as_lines():
    """Each NqexpWarning the library raises inside the block (a gated trial, rejected rows) as one
    `Warning: ...` line on stderr, printed as the block ends (also when it fails); other warnings pass."""
    import warnings

    from nqexp.errors import NqexpWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NqexpWarning)
        try:
            yield
        finally:
            seen = []
            for w in caught:
                if issubclass(w.category, NqexpWarning):
                    if str(w.message) not in seen:
                        seen.append(str(w.message))
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            for text in seen:
                click.secho(f"Warning: {' '.join(text.split())}", fg="yellow", err=True)
