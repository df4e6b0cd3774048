"""`nqexp doctor`: what is installed and configured, secrets reported only as present or not."""

from __future__ import annotations

import os
import sys

import click

from nqexp.cli.options import json_option
from nqexp.errors import NqexpError

PACKAGES = ("nqexp", "torch", "ray", "wandb", "duckdb", "databento", "pandas", "numpy", "pyarrow")


def facts(db_path) -> dict:
    """What doctor reports, as data (the --json document; the table is drawn from it)."""
    import importlib.metadata as md
    import platform

    from nqexp.data import db as dbmod
    from nqexp.experiment.track import wandb_mode

    out: dict = {"python": {"version": platform.python_version(), "executable": sys.executable}, "packages": {}}
    for pkg in PACKAGES:
        try:
            out["packages"][pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out["packages"][pkg] = None
    try:
        import torch

        cuda = torch.cuda.is_available()
        out["torch"] = {"device": "cuda" if cuda else "cpu", "cuda_devices": torch.cuda.device_count() if cuda else 0,
                        "gpu": torch.cuda.get_device_name(0) if cuda else None,
                        "bf16": bool(torch.cuda.is_bf16_supported()) if cuda else None,
                        "threads": torch.get_num_threads()}
    except ImportError:
        out["torch"] = None
    address = os.environ.get("RAY_ADDRESS") or None
    out["ray"] = {"mode": "cluster" if address else "local", "address": address}
    mode = wandb_mode()
    out["wandb"] = {"mode": mode, "mode_from_env": bool(os.environ.get("WANDB_MODE"))}
    out["databento_key"] = bool(os.environ.get("DATABENTO_API_KEY"))
    path = dbmod.resolve_db_path(db_path)
    database = {"path": path, "exists": False, "size_bytes": None, "tables": None, "error": None}
    if path != ":memory:" and os.path.exists(path):
        size = os.path.getsize(path) + (os.path.getsize(path + ".wal") if os.path.exists(path + ".wal") else 0)
        database.update(exists=True, size_bytes=size)
        try:
            con = dbmod.connect(path, read_only=True)
            database["tables"] = {name: int(n) for name, n in dbmod.table_counts(con)}
            con.close()
        except NqexpError as exc:
            database["error"] = str(exc)
    out["database"] = database
    return out


def table_rows(f: dict) -> list[tuple[str, str]]:
    """(what, value) rows of the doctor table, values with rich markup."""
    rows = [("python", f"{f['python']['version']} ({f['python']['executable']})")]
    rows += [(pkg, v if v is not None else "[red]not installed[/]") for pkg, v in f["packages"].items()]
    t = f["torch"]
    if t is None:
        rows.append(("torch device", "[red]torch missing[/]"))
    elif t["device"] == "cuda":
        rows.append(("torch device", f"cuda ({t['cuda_devices']} x {t['gpu']}), bf16 {'yes' if t['bf16'] else 'no'}"))
    else:
        rows.append(("torch device", f"cpu ({t['threads']} threads); no CUDA device visible"))
    rows.append(("ray mode", f"cluster at {f['ray']['address']}" if f["ray"]["address"]
                 else "local (ray.init sized to this machine)"))
    w = f["wandb"]
    rows.append(("wandb mode", w["mode"] if w["mode"] != "offline" or w["mode_from_env"]
                 else "offline (no WANDB_API_KEY or netrc login)"))
    rows.append(("databento key", "present" if f["databento_key"] else "not set (DATABENTO_API_KEY)"))
    d = f["database"]
    if d["exists"]:
        rows.append(("database", f"{d['path']} ({d['size_bytes'] / 1e6:.1f} MB)"))
        if d["error"] is not None:
            rows.append(("  tables", f"[yellow]{d['error']}[/]"))
        else:
            rows += [(f"  table {name}", f"{n:,} rows") for name, n in d["tables"].items()]
    else:
        rows.append(("database", f"{d['path']} (not created yet)"))
    return rows


@click.command()
@json_option
@click.pass_context
def doctor(ctx, as_json):
    """Check the installation: versions, torch device and bf16, Ray and W&B modes, database.

    Secrets are never printed; only whether each key is present.

    \b
    Example:
      nqexp doctor
      nqexp doctor --json
    """
    from nqexp.cli import render

    f = facts(ctx.obj["db"])
    if as_json:
        render.echo_json(f)
        return
    render.console().print(render.doctor_table(table_rows(f)))
