"""The `nqexp` command line: parse arguments, call the library, print.

One module per command group (data, features, experiments = run/sweep, runs, report, sync,
doctor, spec = spec schema/init, predict); every table and progress bar is in render.py, the only module that imports rich.
Commands never query a store: the stores' owners (track.RunStore, ingest, bars, db) do.

Heavy libraries (torch, ray, wandb, databento, and even pandas/duckdb) are imported inside
the commands that need them, so `nqexp --help` starts instantly. Library code raises typed
errors (nqexp.errors); this package alone turns them into one readable line and an exit code.
"""

from __future__ import annotations

import errno
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


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def environment_error(exc: BaseException) -> str | None:
    """The one line for an error the machine, not nqexp, caused: a full disk, or a file or folder this
    process may not write (a read-only store, say); None for anything else (a bug keeps its traceback).
    The library turns these into typed errors where it writes (imports, bars, features, the run store,
    reports); this catches what is left, so no command ends in a traceback for them."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            where = f" writing {exc.filename}" if exc.filename else ""
            return (f"the disk is full{where} ({exc.strerror or exc}); free some space and run the command again "
                    "(imports, bar and feature builds and run-store records are all-or-nothing)")
        if isinstance(exc, OSError) and exc.errno in _NOT_WRITABLE:
            where = f"{exc.filename}: " if exc.filename else ""
            return (f"{where}{exc.strerror or exc}: this user may not use it so (a read-only folder or file?); "
                    "check its permissions, or point the command at a place this user may write")
        duckdb = sys.modules.get("duckdb")         # loaded by any command that opened a database
        if duckdb is not None and isinstance(exc, duckdb.Error) and (
                "no space left on device" in str(exc).lower() or "could not write all bytes" in str(exc).lower()):
            return (f"the disk is full ({str(exc).splitlines()[0][:200]}); free some space and run the command "
                    "again (imports, bar and feature builds and run-store records are all-or-nothing)")
        exc = exc.__cause__ or exc.__context__
    return None


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
        except Exception as exc:
            text = environment_error(exc)
            if text is None:
                raise
            click.secho(f"Error: {one_line(text)}", fg="red", err=True)
            ctx.exit(1)


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
