"""`nqexp runs ...`: the local run store (experiments, trials, metrics), read offline."""

from __future__ import annotations

import click

from nqexp.cli.options import json_option, run_store, store_option, store_root


@click.group()
def runs():
    """The local run store: experiments, trials and their metrics (works offline).

    \b
    Example:
      nqexp runs compare quickstart
    """


@runs.command("ls")
@click.argument("experiment", required=False)
@click.option("--where", "where", default=None,
              help="Only trials whose metrics pass this filter, e.g. 'crps_15m < 0.0012 and ic > 0' "
                   "(metric op number, and/or/not, parentheses; metrics are test/ unless val/ is written).")
@click.option("--sort", "sort", default=None, help="Sort trials by this metric (ascending; trials without it last).")
@click.option("--desc", is_flag=True, help="With --sort: largest first.")
@store_option
@json_option
def runs_ls(experiment, where, sort, desc, store_dir, as_json):
    """List experiments with their status, trial counts and wall time; or trials, with their metrics.

    With EXPERIMENT, --where or --sort, lists trials (of EXPERIMENT, else of every experiment) with
    the metrics the filter and the sort name, and test CRPS.

    \b
    Example:
      nqexp runs ls
      nqexp runs ls --json
      nqexp runs ls --sort crps_15m --where 'crps_15m < 0.0012'
      nqexp runs ls quickstart --sort ic --desc
    """
    from nqexp.cli import render

    if desc and not sort:
        raise click.UsageError("--desc needs --sort METRIC")
    if experiment is None and where is None and sort is None:
        store = run_store(store_dir)
        rows = store.experiments()
        if as_json:
            render.echo_json(rows)
            return
        render.console().print(render.experiments_table(store.root, rows))
        return
    from nqexp.experiment import api

    frame = api.find_trials(where, sort, desc, experiment, store_root(store_dir))
    if as_json:
        render.echo_json(frame)
        return
    render.console().print(render.found_trials_table(frame, where, sort, desc))


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
@click.argument("experiments", nargs=-1, required=True, metavar="EXPERIMENT...")
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True)
@store_option
@json_option
def runs_compare(experiments, split, store_dir, as_json):
    """Compare the variants of an experiment (or of several, side by side): metrics per horizon, mean ± std
    over seeds. --json gives every metric as numbers: n, mean, std and a 95% CI of the mean.

    \b
    Example:
      nqexp runs compare quickstart --split test
      nqexp runs compare quickstart --json
      nqexp runs compare quickstart tsa_ablation
    """
    from nqexp.cli import render
    from nqexp.evaluation import report as report_mod
    from nqexp.experiment import api

    names = list(dict.fromkeys(experiments))
    store = api.open_store(store_root(store_dir))
    exps = [api.load_experiment(name, store) for name in names]
    if as_json:
        render.echo_json(api.compare_experiments(names, store, split) if len(names) > 1 else exps[0].table(split))
        return
    if len(names) == 1:
        render.console().print(render.compare_table(names[0], split, report_mod.summary_table(exps[0].data, split)))
        return
    import pandas as pd

    frame = pd.concat([report_mod.summary_table(e.data, split).assign(experiment=e.name) for e in exps],
                      ignore_index=True)
    frame = frame[["experiment", *[c for c in frame.columns if c != "experiment"]]].fillna("n/a")
    render.console().print(render.compare_table(" vs ".join(names), split, frame))


@runs.command("rm")
@click.argument("run_name", metavar="EXP[/TRIAL]")
@click.option("--yes", "-y", is_flag=True, help="Remove without asking.")
@store_option
def runs_rm(run_name, yes, store_dir):
    """Remove an experiment, or one trial, from the run store: its rows and its folder (offline W&B runs
    included). W&B runs online are never touched; a later `nqexp run --resume` trains a removed trial again.

    \b
    Example:
      nqexp runs rm quickstart-smoke
      nqexp runs rm quickstart/point_mse-s1 --yes
    """
    from nqexp.errors import DataError
    from nqexp.experiment import api

    store = api.open_store(store_root(store_dir))
    experiment, _, trial = run_name.partition("/")
    row = store.experiment(experiment)
    if row is None:
        raise DataError(f"no experiment {experiment!r} in {store.path}; see `nqexp runs ls`")
    if trial:
        if store.trial(experiment, trial) is None:
            raise DataError(f"no trial {run_name} in {store.path}; see `nqexp runs ls {experiment}`")
        folder, what = store.trial_dir(experiment, trial), f"trial {run_name}"
    else:
        n = sum(store.trial_status_counts(experiment).values())
        folder, what = store.experiment_dir(experiment), f"experiment {experiment} ({n} trial(s), {row['status']})"
    store.check_writable()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
    where = f"{folder} ({size / 1e6:.1f} MB)" if folder.is_dir() else "no folder"
    if not yes and not click.confirm(f"Remove {what}: its rows in {store.path} and {where}? "
                                     "W&B runs online are not touched", default=False, err=True):
        click.echo("Nothing removed.", err=True)
        click.get_current_context().exit(1)
    store.remove(experiment, trial or None)
    click.echo(f"Removed {what}: store rows and {where}.")
