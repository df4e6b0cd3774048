"""`nqexp sync`: upload the run store's offline W&B runs."""

from __future__ import annotations

import sys

import click

from nqexp.cli.options import run_store, store_option


@click.command()
@store_option
def sync(store_dir):
    """Upload offline W&B runs from the run store (needs WANDB_API_KEY or a `wandb login`).

    \b
    Example:
      WANDB_API_KEY=... nqexp sync
      wandb login && nqexp sync --store runs
    """
    import glob
    import subprocess

    from nqexp.cli import render
    from nqexp.errors import CredentialsError
    from nqexp.experiment.track import wandb_login_found

    if not wandb_login_found():   # the same rule as the W&B mode: the environment, or wandb login's netrc
        raise CredentialsError("nqexp sync needs a W&B API key to upload offline runs: WANDB_API_KEY in the "
                               "environment, or `wandb login` (~/.netrc)")
    store = run_store(store_dir)
    paths = sorted(glob.glob(str(store.root / "*" / "wandb" / "offline-run-*")))
    if not paths:
        render.console().print(f"No offline W&B runs under {store.root}.")
        return
    result = subprocess.run([sys.executable, "-m", "wandb", "sync", "--include-offline", *paths])
    if result.returncode:
        raise click.ClickException(f"wandb sync failed with exit code {result.returncode}")
    render.console().print(f"Synced {len(paths)} offline run(s).")
