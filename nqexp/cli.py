"""The `nqexp` command line: parse arguments, call one library function per command, print.

Heavy libraries (torch, ray, wandb, databento, and even pandas/duckdb) are imported inside
the commands that need them, so `nqexp --help` starts instantly. Library code raises typed
errors (nqexp.errors); this module alone turns them into one readable line and an exit code.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import click

from nqexp.errors import NqexpError


class NqexpGroup(click.Group):
    """Shows user errors as one line (no traceback) with the error's exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NqexpError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.secho("Interrupted.", fg="yellow", err=True)
            ctx.exit(130)


def _console():
    from rich.console import Console

    # Piped output (CI logs, `| less`) would otherwise be squeezed into 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def _open_db(ctx, *, read_only: bool = False):
    from nqexp import db

    return db.connect(ctx.obj["db"], read_only=read_only)


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


# --------------------------------------------------------------------------------------- data


@cli.group()
def data():
    """Bars in the DuckDB store: demo data, file imports, summaries.

    \b
    Example:
      nqexp data import NQ_1min.csv --tz America/New_York
    """


@data.command("demo")
@click.option("--days", type=click.IntRange(1, 40000), default=30, show_default=True,
              help="Calendar days of 1-minute bars, ending at --end.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed; the same seed gives the same bars.")
@click.option("--end", "end", type=click.DateTime(formats=["%Y-%m-%d"]), default="2025-12-03", show_default=True,
              help="Last trading date generated.")
@click.pass_context
def data_demo(ctx, days, seed, end):
    """Generate realistic synthetic NQ 1-minute bars (series NQ.demo) into the database.

    The Globex calendar, 0.25 tick, U-shaped intraday volatility and volume, volatility
    clustering with fat tails, a weak predictable drift, quarterly contracts spliced
    unadjusted, and missing no-trade minutes. The true conditional volatility of every bar
    goes to the demo_truth table. Re-running replaces the demo series.

    \b
    Example:
      nqexp data demo --days 30 --seed 0
    """
    from nqexp import demo, ingest

    console = _console()
    with console.status(f"Generating {days} days of demo bars (seed {seed})..."):
        data_ = demo.generate(days=days, seed=seed, end=end.date())
        data_.seed = seed
        con = _open_db(ctx)
        t0 = time.perf_counter()
        n = ingest.write_demo(con, data_)
        write_s = time.perf_counter() - t0
    first, last = data_.bars["ts"].iloc[0], data_.bars["ts"].iloc[-1]
    console.print(
        f"[green]Wrote {n:,} demo bars[/] for [bold]{demo.DEMO_SYMBOL}[/] ({first} to {last} UTC, "
        f"{data_.bars['contract'].nunique()} contracts, {len(data_.rolls)} rolls) "
        f"in {data_.seconds:.1f}s + {write_s:.1f}s write -> {_db_label(ctx)}"
    )


@data.command("import")
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "dbn", "lean"]), default=None,
              help="File format (default: detected from the file).")
@click.option("--tz", default=None, help="Zone of naive timestamps, e.g. America/New_York or UTC.")
@click.option("--ts-is", type=click.Choice(["start", "end"]), default="start", show_default=True,
              help="Whether the file stamps each bar at its start or its end.")
@click.option("--symbol", default=None,
              help="Series name to store the bars under (default: NQ for CSV/Parquet; the file's symbol for DBN).")
@click.option("--columns", default=None,
              help="Column order for headerless files ('ts,open,high,low,close,volume') or a mapping "
                   "('ts=Datetime,volume=Vol').")
@click.pass_context
def data_import(ctx, path, fmt, tz, ts_is, symbol, columns):
    """Import 1-minute bars from CSV, Parquet, Databento DBN(.zst) or a Lean minute zip.

    Idempotent: importing the same file again changes nothing. Bad rows are kept in
    rejected_bars with their reason; a file that cannot be read writes nothing.

    \b
    Example:
      nqexp data import ../shared/data/firstrate-nq-2023/NQ_1min_sample.csv --tz America/New_York
    """
    from nqexp import ingest

    console = _console()
    con = _open_db(ctx)
    with console.status(f"Importing {path}..."):
        report = ingest.import_file(con, path, fmt=fmt, tz=tz, ts_is=ts_is, symbol=symbol, columns=columns)
    console.print(f"[green]{report.format}[/] {path}: {report.summary()} in {report.seconds:.2f}s")
    if report.rejected:
        from rich.table import Table

        table = Table(title="Rejected rows (kept in table rejected_bars)")
        table.add_column("reason")
        table.add_column("rows", justify="right")
        for reason, count in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
            table.add_row(reason, f"{count:,}")
        console.print(table)
        console.print("See them with: nqexp data rejects")


@data.command("rejects")
@click.option("--limit", type=int, default=20, show_default=True)
@click.pass_context
def data_rejects(ctx, limit):
    """Show rows that imports rejected, with file, row number and reason.

    \b
    Example:
      nqexp data rejects --limit 50
    """
    from rich.table import Table

    con = _open_db(ctx)
    rows = con.execute(
        "select source, row_number, reason, raw from rejected_bars order by rejected_at desc, source, row_number limit ?",
        [limit],
    ).fetchall()
    table = Table(title=f"rejected_bars (latest {limit})")
    for col in ("source", "row", "reason", "row as read"):
        table.add_column(col, overflow="fold")
    for source, row, reason, raw in rows:
        table.add_row(os.path.basename(source), str(row), reason, raw or "")
    _console().print(table)


@data.command("info")
@click.pass_context
def data_info(ctx):
    """Summarise the store: series, rows, date range, contracts, gaps, rejects and imports.

    \b
    Example:
      nqexp data info
    """
    from rich.table import Table

    from nqexp import db as dbmod

    console = _console()
    con = _open_db(ctx)
    console.print(f"Database: {_db_label(ctx)}")
    series = con.execute(
        """
        with b as (
            select symbol, ts, contract, instrument_id,
                date_diff('minute', lag(ts) over (partition by symbol order by ts), ts) as gap_min,
                strftime(timezone('America/New_York', ts::timestamptz), '%H:%M') as et_hm
            from raw_bars
        )
        select symbol, count(*) as n, strftime(min(ts), '%Y-%m-%d %H:%M'), strftime(max(ts), '%Y-%m-%d %H:%M'),
            count(distinct coalesce(contract, instrument_id::varchar)),
            count(*) filter (where gap_min > 1),
            count(*) filter (where gap_min > 15 and et_hm <> '18:00'),
            count(*) filter (where et_hm = '18:00' and gap_min > 15)
        from b group by symbol order by symbol
        """
    ).fetchall()
    table = Table(title="raw_bars (1-minute, UTC, bar start)")
    for col in ("series", "rows", "first", "last", "contracts", "gaps >1m", "gaps >15m in session", "session opens"):
        table.add_column(col, justify="right" if col not in ("series", "first", "last") else "left")
    for sym, n, first, last, contracts, g1, g15, opens in series:
        table.add_row(sym, f"{n:,}", str(first), str(last), str(contracts), f"{g1:,}", f"{g15:,}", f"{opens:,}")
    console.print(table if series else "[yellow]No bars yet.[/] Try: nqexp data demo --days 30")

    rejects = con.execute("select reason, count(*) from rejected_bars group by 1 order by 2 desc").fetchall()
    if rejects:
        rt = Table(title="rejected_bars")
        rt.add_column("reason")
        rt.add_column("rows", justify="right")
        for reason, n in rejects:
            rt.add_row(reason, f"{n:,}")
        console.print(rt)
    else:
        console.print("Rejected rows: 0")
    imports = con.execute(
        "select imported_at, format, source, rows_read, new_rows, unchanged, changed, rejected from imports "
        "order by imported_at desc limit 5"
    ).fetchall()
    if imports:
        it = Table(title="latest imports")
        for col in ("at", "format", "file", "read", "new", "unchanged", "changed", "rejected"):
            it.add_column(col)
        for at, fmt, src, *nums in imports:
            it.add_row(str(at)[:19], fmt, os.path.basename(src), *(f"{x:,}" for x in nums))
        console.print(it)
    if dbmod.table_exists(con, "demo_rolls"):
        n_rolls = con.execute("select count(*) from demo_rolls").fetchall()[0][0]
        if n_rolls:
            console.print(f"Demo ground truth: demo_truth (sigma per bar), demo_rolls ({n_rolls} rolls)")


# --------------------------------------------------------------------------------------- doctor


@cli.command()
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

    from rich.table import Table

    from nqexp import db as dbmod

    console = _console()
    table = Table(title="nqexp doctor", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("python", f"{platform.python_version()} ({sys.executable})")
    for pkg in ("nqexp", "torch", "ray", "wandb", "duckdb", "databento", "pandas", "numpy", "pyarrow"):
        try:
            table.add_row(pkg, md.version(pkg))
        except md.PackageNotFoundError:
            table.add_row(pkg, "[red]not installed[/]")
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            device = f"cuda ({torch.cuda.device_count()} x {name}), bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
        else:
            device = f"cpu ({torch.get_num_threads()} threads); no CUDA device visible"
        table.add_row("torch device", device)
    except ImportError:
        table.add_row("torch device", "[red]torch missing[/]")
    table.add_row("ray mode", f"cluster at {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS")
                  else "local (ray.init sized to this machine)")
    wandb_key = bool(os.environ.get("WANDB_API_KEY")) or _netrc_has("api.wandb.ai")
    wandb_mode = os.environ.get("WANDB_MODE") or ("online" if wandb_key else "offline (no WANDB_API_KEY)")
    table.add_row("wandb mode", wandb_mode)
    table.add_row("databento key", "present" if os.environ.get("DATABENTO_API_KEY") else "not set (DATABENTO_API_KEY)")
    path = dbmod.resolve_db_path(ctx.obj["db"])
    if path != ":memory:" and os.path.exists(path):
        size = os.path.getsize(path) + (os.path.getsize(path + ".wal") if os.path.exists(path + ".wal") else 0)
        table.add_row("database", f"{path} ({size / 1e6:.1f} MB)")
        try:
            con = dbmod.connect(path, read_only=True)
            for (name,) in con.execute(
                "select table_name from information_schema.tables where table_schema='main' order by 1"
            ).fetchall():
                n = con.execute(f'select count(*) from "{name}"').fetchall()[0][0]
                table.add_row(f"  table {name}", f"{n:,} rows")
            con.close()
        except NqexpError as exc:
            table.add_row("  tables", f"[yellow]{exc}[/]")
    else:
        table.add_row("database", f"{path} (not created yet)")
    console.print(table)


def _netrc_has(host: str) -> bool:
    try:
        import netrc

        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _db_label(ctx) -> str:
    from nqexp import db as dbmod

    path = dbmod.resolve_db_path(ctx.obj["db"])
    if path == ":memory:" or not os.path.exists(path):
        return path
    return f"{path} ({os.path.getsize(path) / 1e6:.1f} MB)"


def main():
    cli(prog_name="nqexp")


if __name__ == "__main__":
    main()
