"""`nqexp predict EXP/TRIAL`: forecasts for new bars from a trial's model bundle (no Ray; W&B only to fetch an artifact)."""

from __future__ import annotations

from pathlib import Path

import click

from nqexp.cli.options import store_option, store_root, warnings_as_lines


@click.command()
@click.argument("run_name", metavar="EXP/TRIAL|wandb:ENTITY/PROJECT/NAME:VERSION")
@click.option("--symbol", default=None, help="Series to forecast (default: the one the trial trained on).")
@click.option("--at", "at", default=None, help="Forecast the last bar at or before this UTC time (default: the last bar).")
@click.option("--start", default=None, help="Range mode: first session date; writes a predictions Parquet and scores it.")
@click.option("--end", default=None, help="Range mode: last session date (default: --start).")
@click.option("--bars", "bars_file", type=click.Path(dir_okay=False), default=None,
              help="Forecast from this CSV or Parquet file of 1-minute bars instead of the database (built in memory).")
@click.option("--tz", default=None, help="With --bars: zone of naive timestamps, e.g. America/New_York or UTC.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="table, or one row per origin, horizon, source and quantile level (range mode: every origin).")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the output here (range mode: the Parquet; default <trial>/predict/START_END.parquet, for an "
                   "artifact ./predict/NAME/START_END.parquet); "
                   "never inside a trial folder except its predict/.")
@click.option("--plot", "plot", type=click.Path(dir_okay=False), default=None, help="Fan chart PNG of the price paths ahead.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@store_option
@click.pass_context
def predict(ctx, run_name, symbol, at, start, end, bars_file, tz, fmt, out, plot, device, store_dir):
    """Forecast the next horizons from a trained trial: 7 quantiles per horizon as log-returns and
    price levels, with the baselines' quantiles beside them.

    Reads only the tail of the bars the window and its warm-up need. With --start/--end, every
    bar of those session dates is forecast, saved in the trial's predictions schema and scored
    where the targets exist (out-of-sample scoring of newly imported bars). With --bars FILE the
    bars come from a CSV or Parquet file instead of the database. A trial flagged by a sanity
    gate forecasts with a warning naming the gate. A trial's bundle can also come from its W&B
    artifact (wandb:ENTITY/PROJECT/NAME:VERSION; offline: the runs under --store), so no shared
    disk with the cluster is needed.

    \b
    Example:
      nqexp predict quickstart/full-s0
      nqexp predict quickstart/full-s0 --at 2025-12-01T15:30 --plot fan.png
      nqexp predict quickstart/full-s0 --start 2025-12-01 --end 2025-12-03 --format csv
      nqexp predict quickstart/full-s0 --bars recent_bars.csv --tz UTC
      nqexp predict wandb:my-team/nqexp/quickstart-full-s0:latest
    """
    from nqexp.errors import DataError
    from nqexp.experiment import api
    from nqexp.experiment import predict as P

    trial = api.load_trial(run_name, store_root(store_dir))
    trial_dir = trial.dir
    if start is None and end is not None:
        raise DataError("--end needs --start")
    if start is not None and at is not None:
        raise DataError("--at and --start/--end are two modes; give one")
    if tz is not None and bars_file is None:
        raise DataError("--tz applies to the timestamps of --bars FILE; give --bars, or drop --tz")
    # Output paths first: a refusal must not come after minutes of work, nor overwrite the run's files.
    targets = {option: P.check_output_path(value, option, trial_dir=trial_dir, store_root=store_root(store_dir))
               for option, value in (("--out", out), ("--plot", plot)) if value}
    if len(targets) == 2 and targets["--out"] == targets["--plot"]:
        raise DataError(f"--out and --plot name the same file ({out}); give two")
    source = {"bars": bars_file} if bars_file else {"db": ctx.obj["db"]}
    with warnings_as_lines():
        fc = trial.forecast(**source, at=at, start=start, end=end, symbol=symbol, tz=tz, device=device)
    if start is not None:
        folder = trial_dir / P.PREDICT_DIR if trial.source is None else Path(P.PREDICT_DIR) / trial.name
        path = Path(out) if out else folder / f"{start}_{end or start}.parquet"
        path, table = P.save_and_score(fc, path)
        from nqexp.cli import render

        if fmt == "table":
            render.print_predict_range(render.console(), fc, path, table)
        else:
            _write_rows(P.range_rows(fc), fmt, None)
            render.print_predict_range(render.console(stderr=True), fc, path, table)
        if plot:
            _plot(fc, plot)
        return
    rows = P.long_rows(fc)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "table":
        from nqexp.cli import render

        if out:
            with open(out, "w") as f:
                render.print_forecast(render.console(file=f), fc, rows)
        else:
            render.print_forecast(render.console(), fc, rows)
    else:
        _write_rows(rows, fmt, out)
    if plot:
        _plot(fc, plot)


def _write_rows(rows: list[dict], fmt: str, out) -> None:
    """Forecast rows as JSON (a list of objects) or CSV, to `out` or stdout."""
    if fmt == "json":
        import json

        from nqexp.cli.render import _plain

        text = json.dumps(_plain(rows), indent=2)
        Path(out).write_text(text + "\n") if out else click.echo(text)
    else:
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        Path(out).write_text(buf.getvalue()) if out else click.echo(buf.getvalue(), nl=False)


def _plot(fc, path) -> None:
    from nqexp.evaluation import plots

    title = f"{fc.symbol} from {str(fc.ts[-1])[:16]} UTC, last close {fc.close[-1]:,.2f}"
    plots.price_fan(path, float(fc.close[-1]), fc.q[-1], fc.taus, fc.horizon_minutes, title=title,
                    baselines={k: v[-1] for k, v in fc.baselines.items()})
    click.echo(f"Fan chart: {path}", err=True)
