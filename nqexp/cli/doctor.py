"""`nqexp doctor`: what is installed and configured, secrets reported only as present or not."""

from __future__ import annotations

import os
import sys

import click

from nqexp.errors import NqexpError


@click.command()
@click.pass_context
def doctor(ctx):
    """Check the installation: versions, torch device and bf16, Ray and W&B modes, database.

    Secrets are never printed; only whether each key is present.

    \b
    Example:
      nqexp doctor
    """
    import importlib.metadata as md
    import platform

    from nqexp.cli import render
    from nqexp.data import db as dbmod
    from nqexp.experiment.track import wandb_mode

    rows = [("python", f"{platform.python_version()} ({sys.executable})")]
    for pkg in ("nqexp", "torch", "ray", "wandb", "duckdb", "databento", "pandas", "numpy", "pyarrow"):
        try:
            rows.append((pkg, md.version(pkg)))
        except md.PackageNotFoundError:
            rows.append((pkg, "[red]not installed[/]"))
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            device = f"cuda ({torch.cuda.device_count()} x {name}), bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
        else:
            device = f"cpu ({torch.get_num_threads()} threads); no CUDA device visible"
        rows.append(("torch device", device))
    except ImportError:
        rows.append(("torch device", "[red]torch missing[/]"))
    rows.append(("ray mode", f"cluster at {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS")
                 else "local (ray.init sized to this machine)"))
    mode = wandb_mode()
    rows.append(("wandb mode", mode if mode != "offline" or os.environ.get("WANDB_MODE")
                 else "offline (no WANDB_API_KEY or netrc login)"))
    rows.append(("databento key", "present" if os.environ.get("DATABENTO_API_KEY") else "not set (DATABENTO_API_KEY)"))
    path = dbmod.resolve_db_path(ctx.obj["db"])
    if path != ":memory:" and os.path.exists(path):
        size = os.path.getsize(path) + (os.path.getsize(path + ".wal") if os.path.exists(path + ".wal") else 0)
        rows.append(("database", f"{path} ({size / 1e6:.1f} MB)"))
        try:
            con = dbmod.connect(path, read_only=True)
            rows += [(f"  table {name}", f"{n:,} rows") for name, n in dbmod.table_counts(con)]
            con.close()
        except NqexpError as exc:
            rows.append(("  tables", f"[yellow]{exc}[/]"))
    else:
        rows.append(("database", f"{path} (not created yet)"))
    render.console().print(render.doctor_table(rows))
