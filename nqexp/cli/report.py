"""`nqexp report`: the ablation/sweep report of an experiment, from the run store."""

from __future__ import annotations

import click

from nqexp.cli.options import run_store, store_option


@click.command()
@click.argument("experiment")
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", show_default=True)
@click.option("--wandb", "publish", is_flag=True, help="Also publish it as a W&B Report (needs WANDB_API_KEY).")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the report here, figures beside it (default: <store>/EXPERIMENT/report.FORMAT); "
                   "for a read-only store.")
@store_option
def report(experiment, fmt, publish, out, store_dir):
    """Write the ablation/sweep report of an experiment from the local run store.

    Per-variant metrics per horizon (mean ± std over seeds), paired CRPS differences vs the
    reference variant on identical test samples with block-bootstrap CIs, calibration
    figures and gate flags. A read-only store reports elsewhere with --out.

    \b
    Example:
      nqexp report quickstart --format html
      nqexp report quickstart --store /mnt/shared/runs --out ~/reports/quickstart.md
    """
    from nqexp.cli import render
    from nqexp.evaluation import report as report_mod

    store = run_store(store_dir)
    console = render.console()
    with console.status("Building the report..."):
        path = report_mod.build_report(store, experiment, fmt=fmt, out=out)
    console.print(f"Report: {path}")
    if publish:
        import yaml

        spec = yaml.safe_load((store.experiment_dir(experiment) / "spec.resolved.yaml").read_text())
        url = report_mod.publish_wandb_report(store, experiment, project=spec["track"]["wandb_project"],
                                              entity=spec["track"].get("wandb_entity"))
        console.print(f"W&B Report: {url}")
