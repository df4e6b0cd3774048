"""`nqexp runs ...`: the local run store (experiments, trials, metrics), read offline."""

from __future__ import annotations

import click

from nqexp.cli.options import json_option, run_store, store_option


@click.group()
def runs():
    """The local run store: experiments, trials and their metrics (works offline).

    \b
    Example:
      nqexp runs compare quickstart
    """


@runs.command("ls")
@store_option
@json_option
def runs_ls(store_dir, as_json):
    """List experiments with their status, trial counts and wall time.

    \b
    Example:
      nqexp runs ls
      nqexp runs ls --json
    """
    from nqexp.cli import render

    store = run_store(store_dir)
    rows = store.experiments()
    if as_json:
        render.echo_json(rows)
        return
    render.console().print(render.experiments_table(store.root, rows))


@runs.command("show")
@click.argument("run_name")
@store_option
@json_option
def runs_show(run_name, store_dir, as_json):
    """Show one trial's metrics per horizon (RUN is EXPERIMENT/TRIAL) and its gate flags.

    \b
    Example:
      nqexp runs show quickstart/full-s0
      nqexp runs show quickstart/full-s0 --json
    """
    from nqexp.cli import render
    from nqexp.errors import DataError
    from nqexp.evaluation.report import horizon_labels

    if "/" not in run_name:
        raise DataError(f"RUN must be EXPERIMENT/TRIAL, e.g. quickstart/full-s0, not {run_name!r}")
    experiment, trial = run_name.split("/", 1)
    store = run_store(store_dir)
    info = store.trial(experiment, trial)
    if info is None:
        raise DataError(f"no trial {run_name} in {store.path}; see `nqexp runs ls`")
    metrics = store.trial_metrics(experiment, trial)
    flags = store.trial_flags(experiment, trial)
    if as_json:
        import json

        row = {k: v for k, v in info.items() if k not in ("spec_yaml", "params_json")}   # the spec is in `dir`
        row["params"] = json.loads(info["params_json"] or "{}")
        render.echo_json({**row, "metrics": metrics, "flags": [{"gate": g, "reason": r} for g, r in flags]})
        return
    labels = horizon_labels(k.removeprefix("test/") for k in metrics if k.startswith("test/"))
    render.print_trial(render.console(), run_name, info, metrics, labels, flags)


@runs.command("compare")
@click.argument("experiment")
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True)
@store_option
@json_option
def runs_compare(experiment, split, store_dir, as_json):
    """Compare the variants of an experiment: metrics per horizon, mean ± std over seeds.

    \b
    Example:
      nqexp runs compare quickstart --split test
      nqexp runs compare quickstart --json
    """
    from nqexp.cli import render
    from nqexp.evaluation import report as report_mod

    data = report_mod.load(run_store(store_dir), experiment)
    frame = report_mod.summary_table(data, split=split)
    if as_json:
        render.echo_json(frame)
        return
    render.console().print(render.compare_table(experiment, split, frame))
