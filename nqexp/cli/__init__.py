"""The `nqexp` command line: parse arguments, call the library, print.

One module per command group (data, features, experiments = run/sweep, runs, report, sync,
doctor, spec = spec schema/init, predict); every table and progress bar is in render.py, the only module that imports rich.
Commands never query a store: the stores' owners (track.RunStore, ingest, bars, db) do.

Heavy libraries (torch, ray, wandb, databento, and even pandas/duckdb) are imported inside
the commands that need them, so `nqexp --help` starts instantly. Library code raises typed
errors (nqexp.errors); this package alone turns them into one readable line and an exit code.
"""

from __future__ import annotations

import logging
import sys

import click

from nqexp.cli import data, doctor, experiments, features, predict, report, runs, spec, sync
from nqexp.errors import NqexpError

MAX_MESSAGE = 500   # characters; a message quoting a whole input (1 MB of bytes) would flood the terminal


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """A message as one bounded line: its lines (several spec problems, say) joined with '; ', and
    past `limit` characters the middle cut, so the start (what) and the end (the next step) remain."""
    text = "; ".join(" ".join(line.split()) for line in str(text).splitlines() if line.strip())
    if len(text) <= limit:
        return text
    head, tail = (limit - 40) * 2 // 3, (limit - 40) // 3
    return f"{text[:head]} ... [{len(text) - head - tail:,} characters cut] ... {text[-tail:]}"


class _OneLineUsageError(click.UsageError):
    """Click's usage errors as one line (click prints Usage/Try/Error on three)."""

    def show(self, file=None):
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.secho(f"Error: {one_line(self.format_message())}{hint}", fg="red", err=True)


def _as_one_line(exc: click.UsageError) -> _OneLineUsageError:
    out = _OneLineUsageError(exc.format_message(), exc.ctx)
    out.exit_code = exc.exit_code
    return out


class NqexpGroup(click.Group):
    """Shows user errors as one bounded line (no traceback) with the error's exit code."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _as_one_line(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NqexpError as exc:
            click.secho(f"Error: {one_line(exc)}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            if isinstance(exc, _OneLineUsageError):
                raise
            raise _as_one_line(exc) from None
        except click.ClickException as exc:
            click.secho(f"Error: {one_line(exc.format_message())}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.secho("Interrupted.", fg="yellow", err=True)
            ctx.exit(130)


@click.group(cls=NqexpGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
              help="DuckDB file (default: $NQEXP_DB, else ./nqexp_data/nqexp.duckdb).")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="nqexp")
@click.pass_context
def cli(ctx, db_path, verbose):
    """nqexp: distributional forecasting of NQ futures, from DuckDB bars to calibrated quantiles.

    \b
    Example (a fresh machine, built-in demo data):
      nqexp data demo --days 30 --seed 0
      nqexp data info
    """
    ctx.ensure_object(dict)
    ctx.obj["db"] = db_path
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# The package's submodules keep their names (nqexp.cli.report is the module); their commands are added here.
for _command in (data.data, features.features, experiments.run, experiments.sweep, runs.runs, report.report,
                 sync.sync, doctor.doctor, spec.spec, spec.init, predict.predict):
    cli.add_command(_command)


def main():
    cli(prog_name="nqexp")
