"""Helpers shared by the command modules: the database and run store of a command, `--store`, `--json`."""

from __future__ import annotations

import json
import math
import os

import click

store_option = click.option("--store", "store_dir", default=None, type=click.Path(file_okay=False),
                            help="Run store folder (default: ./runs).")

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print machine-readable JSON instead of tables.")


def open_db(ctx, *, read_only: bool = False):
    from nqexp import db

    return db.connect(ctx.obj["db"], read_only=read_only)


def db_label(ctx) -> str:
    """The database path, with its size once it exists."""
    from nqexp import db

    path = db.resolve_db_path(ctx.obj["db"])
    if path == ":memory:" or not os.path.exists(path):
        return path
    return f"{path} ({os.path.getsize(path) / 1e6:.1f} MB)"


def run_store(store_dir):
    from nqexp.spec import TrackConfig
    from nqexp.track import RunStore

    return RunStore(store_dir or TrackConfig().store_path())


def _plain(value):
    """JSON-safe: NaN/inf -> null, numpy scalars -> Python, DataFrames -> records."""
    if hasattr(value, "to_dict") and hasattr(value, "columns"):
        return [_plain(r) for r in value.to_dict(orient="records")]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if type(value).__module__ == "numpy":
        import numpy as np

        value = str(value) if isinstance(value, np.datetime64) else value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def echo_json(data) -> None:
    """One JSON document on stdout (timestamps as ISO-like strings)."""
    click.echo(json.dumps(_plain(data), indent=2, default=str))
