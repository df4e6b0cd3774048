"""`nqexp run` and `nqexp sweep`: an experiment spec on Ray Tune, then its table and report."""

from __future__ import annotations

import os

import click


@click.command()
@click.argument("spec_path", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a spec value (dotted key); repeatable.")
@click.option("--dry-run", is_flag=True, help="Print the trials (variants x seeds) and their memory plan, and exit.")
@click.option("--smoke", is_flag=True, help="Tiny model, windows and epochs on CPU: a one-minute end-to-end check.")
@click.option("--address", default=None, metavar="ray://HOST:10001",
              help="Ray cluster: ray://HOST:10001 or http://HOST:8265 submits the run as a Ray Job; "
                   "'auto' joins the cluster this machine is part of.")
@click.option("--resume", "resume_exp", default=None, metavar="EXPERIMENT",
              help="Finish the unfinished trials of an experiment in the run store.")
@click.option("--print-spec", is_flag=True, help="Print the resolved spec (extends, --smoke, --set applied) and exit.")
@click.pass_context
def run(ctx, spec_path, sets, dry_run, smoke, address, resume_exp, print_spec):
    """Run an experiment: every variant x seed of the spec as a Ray Tune trial.

    Each trial trains the distributional Transformer, scores val/test against baselines fitted
    on train, applies the sanity gates, and lands in the local run store (and W&B). Ends with
    the ablation table and the report path. Ctrl-C stops cleanly; run again to resume.

    \b
    Example:
      nqexp run experiments/quickstart.yaml
      nqexp run experiments/tsa_ablation.yaml --set train.lr=3e-4 --dry-run
    """
    if resume_exp:
        if spec_path:
            raise click.UsageError("give either SPEC_PATH or --resume EXPERIMENT, not both")
        spec_path = _resume_spec_path(resume_exp, sets)
    elif not spec_path:
        raise click.UsageError("missing SPEC_PATH (or --resume EXPERIMENT)")
    _run_or_sweep(ctx, "run", spec_path, sets, smoke, dry_run, address, print_spec)


def _resume_spec_path(experiment, sets):
    from nqexp.errors import SpecError
    from nqexp.experiment.spec import TrackConfig

    for store_root in {TrackConfig().store_path(), *(os.path.abspath(v.split("=", 1)[1]) for v in sets
                                                     if v.startswith("track.store="))}:
        path = os.path.join(store_root, experiment, "spec.resolved.yaml")
        if os.path.exists(path):
            return path
    raise SpecError(f"--resume {experiment}: no run store entry {experiment}/spec.resolved.yaml under "
                    f"{TrackConfig().store_path()}; see `nqexp runs ls`")


@click.command()
@click.argument("spec_path", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a spec value (dotted key); repeatable.")
@click.option("--num-samples", type=click.IntRange(1, 10000), default=None, help="Trials to sample (sweep.num_samples).")
@click.option("--dry-run", is_flag=True, help="Print the search space and its memory plan, and exit.")
@click.option("--smoke", is_flag=True, help="Two tiny trials of one epoch on CPU.")
@click.option("--address", default=None, metavar="ray://HOST:10001",
              help="Ray cluster: ray://HOST:10001 or http://HOST:8265 submits the sweep as a Ray Job.")
@click.pass_context
def sweep(ctx, spec_path, sets, num_samples, dry_run, smoke, address):
    """Search hyperparameters: Optuna TPE over `search:` with ASHA early stopping on val CRPS.

    Collapsed trials (val PICP80 below the gate) are penalised so they never win.

    \b
    Example:
      nqexp sweep experiments/sweep.yaml --num-samples 20
    """
    extra = [f"sweep.num_samples={num_samples}"] if num_samples else []
    _run_or_sweep(ctx, "sweep", spec_path, sets, smoke, dry_run, address, False, extra_sets=extra)


def _run_or_sweep(ctx, kind, spec_path, sets, smoke, dry_run, address, print_spec, extra_sets=()):
    from nqexp.cli import render
    from nqexp.experiment import spec as spec_mod
    from nqexp.secrets import redact

    console = render.console()
    spec = spec_mod.load_spec(spec_path, overrides=[*sets, *extra_sets], smoke=smoke)
    if print_spec:
        import yaml

        click.echo(yaml.safe_dump(redact(spec.to_dict()), sort_keys=False), nl=False)
        return
    from nqexp.experiment import memory_plan

    if kind == "sweep" and not spec.search:   # refused here too, so --dry-run never promises a sweep of nothing
        from nqexp.errors import SpecError

        raise SpecError(f"{spec_path}: search: is empty; `nqexp sweep` needs a search space")
    if dry_run:
        console.print(render.trials_table(spec) if kind == "run" else render.search_space_table(spec))
        rows = memory_plan.memory_plan(spec, kind, address)
        console.print(render.memory_table(rows, f"{spec.name}: memory plan per trial shape"))
        for line in render.memory_notes(rows):
            console.print(line)
        return
    # A trial that cannot fit its GPU is refused before anything starts, even a cluster submission.
    memory_plan.check_memory(spec, kind, address)
    from nqexp.experiment import tune as tune_mod
    from nqexp.experiment.track import wandb_mode

    if address and address.startswith(("ray://", "http://", "https://")):
        tune_mod.submit_job(spec, kind=kind, address=address, printer=console.print)
        return
    # Refusals come before any progress is drawn: a run store that cannot be written, a trial that
    # could never be scheduled (it would wait forever) and bars that are not there. On a cluster
    # run_experiment notes the GPU warning.
    tune_mod.check_store(spec)
    resource_notes = tune_mod.check_resources(spec.resources, address)
    tune_mod.check_data(spec, ctx.obj["db"])
    mode = wandb_mode(spec.track.wandb_mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    if mode != "disabled":
        os.environ["WANDB_MODE"] = mode
    console.print(f"[bold]{spec.name}[/]: {kind}, W&B {mode}"
                  + (" (no WANDB_API_KEY; sync later with `nqexp sync`)" if mode == "offline" else "")
                  + f", store {spec.track.store_path()}")
    epochs = spec.train.max_epochs if kind == "run" else (spec.sweep.max_epochs or spec.train.max_epochs)
    names = [t.trial_name for t in spec.trials()] if kind == "run" else []
    with render.TrialProgress(console, epochs, names, max_steps=spec.train.max_steps) as progress:
        outcome = tune_mod.run_experiment(spec, kind=kind, spec_path=spec_path, db_path=ctx.obj["db"],
                                          address=address, on_event=progress, on_note=progress.note,
                                          resource_notes=resource_notes)
    _print_outcome(console, spec, outcome, smoke=smoke)


def _print_outcome(console, spec, outcome, smoke: bool = False):
    from nqexp.cli import render
    from nqexp.evaluation import report as report_mod
    from nqexp.experiment.track import RunStore

    store = RunStore(spec.track.store_path())
    if outcome.finished and outcome.kind == "sweep":
        console.print(render.sweep_table(outcome.experiment, store.sweep_trials(outcome.experiment)))
    elif outcome.finished:
        data = report_mod.load(store, outcome.experiment)
        console.print(render.summary_all_horizons_table(report_mod.summary_table(data),
                                                        title=f"{outcome.experiment}: test metrics, all horizons"))
        console.print(report_mod.budget_note(report_mod.budget_table(data)), markup=True, highlight=False)
        path = report_mod.build_report(store, outcome.experiment)
        if not data.flags.empty:
            gated = sorted(data.flags["trial"].unique())
            console.print(f"[yellow]{len(gated)} trial(s) flagged by sanity gates[/] "
                          f"(see the report): {', '.join(gated)}")
            if smoke:   # a few optimizer steps cannot beat climatology: the gates are doing their job
                console.print("(expected at --smoke size: the trials trained a few steps on a few hundred samples, "
                              "so the gates flag them; a full run is judged by the same gates)")
        console.print(f"Report: {path}")
    console.print(f"Wall time {outcome.wall_seconds:.0f}s; {len(outcome.finished)} finished, "
                  f"{len(outcome.failed)} failed, {len(outcome.unfinished)} unfinished.")
    if outcome.unfinished:
        raise click.exceptions.Exit(_interrupted(console, outcome, spec))
    if outcome.failed:
        raise click.ClickException(f"{len(outcome.failed)} trial(s) failed: {', '.join(outcome.failed)}; "
                                   f"see their error files under {store.experiment_dir(outcome.experiment)}/ray")
    if spec.eval.strict and store.has_flags(outcome.experiment):
        raise click.ClickException("eval.strict is on and sanity gates flagged trials (see the report)")


def _interrupted(console, outcome, spec) -> int:
    how = (f"nqexp run --resume {outcome.experiment} (or run the same spec again)" if outcome.kind == "run"
           else f"nqexp sweep {spec.source or 'SPEC'} again")
    console.print(f"[yellow]Interrupted:[/] {len(outcome.unfinished)} trial(s) unfinished "
                  f"({', '.join(outcome.unfinished[:6])}{'...' if len(outcome.unfinished) > 6 else ''}). "
                  f"Resume with: {how}")
    return 130
