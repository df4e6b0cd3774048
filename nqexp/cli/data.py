"""`nqexp data ...`: demo data, file imports, Databento downloads, continuous bars, summaries."""

from __future__ import annotations

import os
import time

import click

from nqexp.cli.options import db_label, json_option, open_db, pick_symbol, symbol_option


@click.group()
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
    from nqexp.cli import render
    from nqexp.data import demo, ingest

    console = render.console()
    with console.status(f"Generating {days} days of demo bars (seed {seed})..."):
        data_ = demo.generate(days=days, seed=seed, end=end.date())
        data_.seed = seed
        con = open_db(ctx)
        t0 = time.perf_counter()
        n = ingest.write_demo(con, data_)
        write_s = time.perf_counter() - t0
    con.close()   # everything written is in the file now, so its size is the database's
    first, last = data_.bars["ts"].iloc[0], data_.bars["ts"].iloc[-1]
    contracts, rolls = data_.bars["contract"].nunique(), len(data_.rolls)
    console.print(
        f"[green]Wrote {n:,} demo bars[/] for [bold]{demo.DEMO_SYMBOL}[/] ({first} to {last} UTC, "
        f"{contracts} contract{'s' * (contracts != 1)}, {rolls} roll{'s' * (rolls != 1)}) "
        f"in {data_.seconds:.1f}s + {write_s:.1f}s write -> {db_label(ctx)}"
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
@click.option("--replace", is_flag=True,
              help="Replace stored bars whose values differ (without it such an import is refused, nothing written).")
@click.pass_context
def data_import(ctx, path, fmt, tz, ts_is, symbol, columns, replace):
    """Import 1-minute bars from CSV, Parquet, Databento DBN(.zst) or a Lean minute zip.

    Idempotent: importing the same file again changes nothing. Bad rows are kept in
    rejected_bars with their reason; a file that cannot be read writes nothing. An import that
    would change stored bars (a vendor correction, or 5-minute bars over 1-minute ones) says
    how many and writes nothing unless --replace is given.

    \b
    Example:
      nqexp data export demo.csv --symbol NQ.demo && nqexp --db mine.duckdb data import demo.csv --symbol NQ
      nqexp data import NQ_1min.csv --tz America/New_York     # a vendor file with naive New York times
    """
    from nqexp.cli import render
    from nqexp.data import ingest

    console = render.console()
    con = open_db(ctx)
    with console.status(f"Importing {path}..."):
        report = ingest.import_file(con, path, fmt=fmt, tz=tz, ts_is=ts_is, symbol=symbol, columns=columns,
                                    replace=replace)
    console.print(f"[green]{report.format}[/] {path}: {report.summary()} in {report.seconds:.2f}s")
    for text in report.warnings:
        click.secho(f"Warning: {text}", fg="yellow", err=True)
    if report.rejected:
        console.print(render.import_rejects_table(report.reasons))
        console.print("See them with: nqexp data rejects")


@data.command("export")
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@symbol_option
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@click.pass_context
def data_export(ctx, path, symbol, force):
    """Write one series' raw 1-minute bars to a CSV (.csv, .csv.gz) or Parquet file that `data import` reads back.

    ts is the bar start in UTC with its offset (no --tz needed), then open, high, low, close,
    volume, and instrument_id and contract when the series has them, so its rolls survive the
    round trip.

    \b
    Example:
      nqexp data export demo.csv --symbol NQ.demo
      nqexp --db mine.duckdb data import demo.csv --symbol NQ
    """
    from nqexp.cli import render
    from nqexp.data import ingest

    con = open_db(ctx, read_only=True)
    symbol = pick_symbol(con, symbol)
    rows = ingest.export_bars(con, symbol, path, overwrite=force)
    render.console().print(f"[green]Wrote {rows:,} bars[/] of [bold]{symbol}[/] to {path}")


@data.command("rejects")
@click.option("--limit", type=click.IntRange(0, 1_000_000), default=20, show_default=True,
              help="Most rows to show, newest first.")
@json_option
@click.pass_context
def data_rejects(ctx, limit, as_json):
    """Show rows that imports rejected, with file, row number and reason.

    \b
    Example:
      nqexp data rejects --limit 50
      nqexp data rejects --json
    """
    from nqexp.cli import render
    from nqexp.data import ingest

    rows = ingest.rejected_rows(open_db(ctx), limit)
    if as_json:
        render.echo_json(rows)       # source, row_number, reason, raw (the row as read: JSON or the file's line)
        return
    render.console().print(render.rejected_rows_table(rows, limit))


@data.command("info")
@json_option
@click.pass_context
def data_info(ctx, as_json):
    """Summarise the store: series, rows, date range, contracts, gaps, rejects and imports.

    \b
    Example:
      nqexp data info
      nqexp data info --json
    """
    from nqexp.data import bars, ingest
    from nqexp.data import db as dbmod

    con = open_db(ctx)
    summary = bars.bars_summary(con)
    info = {
        "series": ingest.series_summary(con),
        "rejects": ingest.reject_reasons(con),
        "imports": ingest.latest_imports(con),
        "bars": summary["bars"],
        "rolls": summary["rolls"],
        "flagged": summary["flagged"],
        "demo_rolls": ingest.demo_roll_count(con),
    }
    from nqexp.cli import render

    if as_json:
        path = dbmod.resolve_db_path(ctx.obj["db"])
        size = os.path.getsize(path) if path != ":memory:" and os.path.exists(path) else None
        info["rejects"] = [{"reason": reason, "rows": n} for reason, n in info["rejects"]]
        render.echo_json({"database": path, "size_bytes": size, **info})
        return
    render.print_data_info(render.console(), db_label(ctx), info)


@data.command("download")
@click.option("--start", required=True, help="First day (UTC), e.g. 2010-06-06.")
@click.option("--end", required=True, help="End day (UTC), exclusive, e.g. 2025-12-03.")
@click.option("--dataset", default="GLBX.MDP3", show_default=True)
@click.option("--symbol", default="NQ.v.0", show_default=True, help="NQ.v.0 = front month by volume.")
@click.option("--schema", default="ohlcv-1m", show_default=True)
@click.option("--stype-in", default="continuous", show_default=True)
@click.option("--chunk-days", type=click.IntRange(1, 366), default=30, show_default=True,
              help="Days per request; each chunk is stored on disk and ingested before the next.")
@click.option("--credentials", "credentials", type=click.Path(dir_okay=False), default=None,
              help="File holding the Databento API key (default: $DATABENTO_API_KEY).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where raw DBN chunks are kept (default: next to the database).")
@click.option("--estimate", is_flag=True, help="Print the cost and record count, download nothing.")
@click.pass_context
def data_download(ctx, start, end, dataset, symbol, schema, stype_in, chunk_days, credentials, data_dir, estimate):
    """Download 1-minute bars from Databento in resumable chunks and ingest them.

    The API key comes from $DATABENTO_API_KEY or --credentials and is never printed or stored.
    Chunks already on disk or already ingested are skipped, so an interrupted download resumes
    without buying data twice. 429/5xx responses are retried with backoff.

    \b
    Example:
      nqexp data download --start 2010-06-06 --end 2025-12-03 --estimate
    """
    from nqexp.cli import render
    from nqexp.data import db as dbmod
    from nqexp.data import download

    console = render.console()
    common = dict(dataset=dataset, symbol=symbol, schema=schema, stype_in=stype_in, credentials_path=credentials)
    if estimate:
        with console.status("Asking Databento for the cost..."):
            est = download.estimate(start, end, **common)
        console.print(f"{est['dataset']} {est['symbol']} {est['schema']} {est['start']}..{est['end']}: "
                      f"{est['records']:,} records, ${est['cost_usd']:,.2f}")
        return
    # What can be refused without the network is refused before the progress bar is drawn.
    download.chunk_ranges(start, end, chunk_days)
    download.resolve_api_key(credentials)
    con = open_db(ctx)
    path = dbmod.resolve_db_path(ctx.obj["db"])
    data_dir = data_dir or (os.path.dirname(path) if path != ":memory:" else "nqexp_data")
    with render.chunk_progress(console) as on_chunk:
        report = download.download(con, start, end, chunk_days=chunk_days, data_dir=data_dir,
                                   progress=on_chunk, **common)
    console.print(f"[green]Done:[/] {report.summary()}")


@data.command("bars")
@symbol_option
@click.option("--freq", "freqs", type=click.Choice(["1m", "5m"]), multiple=True,
              help="Bar sizes to build (default: both). 1m bars are always the base of 5m ones.")
@click.option("--rolls", "rolls_file", type=click.Path(dir_okay=False), default=None,
              help="CSV of rolls that supplies or overrides detected ones: ts plus ratio, or ts plus old and new "
                   "prices (ts = first bar of the new contract, UTC unless it has an offset).")
@click.option("--no-roll-detect", is_flag=True,
              help="Do not search a series without contract ids for roll splices in its prices.")
@click.pass_context
def data_bars(ctx, symbol, freqs, rolls_file, no_roll_detect):
    """Build (or rebuild) rolls and back-adjusted 1m/5m bars with session fields.

    Rolls are where instrument_id or the contract code changes (continuous series), the daily
    volume crossover (per-contract series), or, for a continuous series without contract ids,
    the calendar-spread jump found in each quarterly roll window (method price_jump, with its
    z). A window without a clear jump is a warning, never a guess. Prices before each roll are
    ratio back-adjusted.

    \b
    Example:
      nqexp data bars --symbol NQ.demo --freq 5m
      nqexp data bars --symbol NQ --rolls my_rolls.csv
    """
    from nqexp.cli import render
    from nqexp.data import bars

    console = render.console()
    freq_minutes = sorted({int(f[:-1]) for f in freqs}) if freqs else [1, 5]
    con = open_db(ctx)
    symbol = pick_symbol(con, symbol)
    given = bars.read_rolls_file(rolls_file) if rolls_file else None
    with console.status(f"Building bars for {symbol}..."):
        report = bars.build_bars(con, symbol, freq_minutes, given_rolls=given, detect=not no_roll_detect)
    console.print(f"[green]Built[/] {report.summary()}")
    for freq, counts in sorted(report.flagged.items()):
        console.print(f"  {freq}m flags: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if len(report.rolls):
        console.print(render.rolls_table(symbol, report.rolls))
    render.print_roll_warnings(console, report.warnings)


@data.command("rolls")
@symbol_option
@json_option
@click.pass_context
def data_rolls(ctx, symbol, as_json):
    """List the rolls of a series with their method and confidence (z), and the roll warnings.

    Shows what the last `nqexp data bars` used; for a series whose bars are not built yet, the
    rolls are detected now and nothing is written.

    \b
    Example:
      nqexp data rolls --symbol NQ
    """
    from nqexp.cli import render
    from nqexp.data import bars

    con = open_db(ctx)
    symbol = pick_symbol(con, symbol)
    built = bars.is_built(con, symbol)
    if built:
        rolls, warnings = bars.stored_rolls(con, symbol)
    else:
        rolls, warnings = bars.preview_rolls(con, symbol)
    if as_json:
        render.echo_json({"symbol": symbol, "built": built, "rolls": rolls, "warnings": warnings})
        return
    console = render.console()
    if not built:
        console.print(f"{symbol}: bars not built yet; rolls detected now, nothing written "
                      f"(build them with: nqexp data bars --symbol {symbol})")
    console.print(render.rolls_table(symbol, rolls) if len(rolls) else f"{symbol}: no rolls")
    render.print_roll_warnings(console, warnings)
