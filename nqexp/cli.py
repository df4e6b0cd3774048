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
    from nqexp import bars

    summary = bars.bars_summary(con)
    if not summary["bars"].empty:
        console.print(_frame_table(summary["bars"], "continuous bars (bars_1m / bars_5m)"))
    if not summary["rolls"].empty:
        console.print(_frame_table(summary["rolls"], "rolls (ratio back-adjustment: adjusted = raw x adj_factor)"))
    if not summary["flagged"].empty:
        console.print(_frame_table(summary["flagged"].head(20), "flagged 5m bars (latest 20)"))
    if dbmod.table_exists(con, "demo_rolls"):
        n_rolls = con.execute("select count(*) from demo_rolls").fetchall()[0][0]
        if n_rolls:
            console.print(f"Demo ground truth: demo_truth (sigma per bar), demo_rolls ({n_rolls} rolls)")


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
    from nqexp import db as dbmod
    from nqexp import download

    console = _console()
    common = dict(dataset=dataset, symbol=symbol, schema=schema, stype_in=stype_in, credentials_path=credentials)
    if estimate:
        with console.status("Asking Databento for the cost..."):
            est = download.estimate(start, end, **common)
        console.print(f"{est['dataset']} {est['symbol']} {est['schema']} {est['start']}..{est['end']}: "
                      f"{est['records']:,} records, ${est['cost_usd']:,.2f}")
        return
    con = _open_db(ctx)
    path = dbmod.resolve_db_path(ctx.obj["db"])
    data_dir = data_dir or (os.path.dirname(path) if path != ":memory:" else "nqexp_data")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("chunks", total=None)

        def on_chunk(done, total, what):
            progress.update(task, completed=done, total=total, description=what)

        report = download.download(con, start, end, chunk_days=chunk_days, data_dir=data_dir,
                                   progress=on_chunk, **common)
    console.print(f"[green]Done:[/] {report.summary()}")


@data.command("bars")
@click.option("--symbol", default="NQ.demo", show_default=True,
              help="Continuous series in raw_bars (NQ.demo, NQ.v.0, NQ) or a per-contract root (ES).")
@click.option("--freq", "freqs", type=click.Choice(["1m", "5m"]), multiple=True,
              help="Bar sizes to build (default: both). 1m bars are always the base of 5m ones.")
@click.pass_context
def data_bars(ctx, symbol, freqs):
    """Build (or rebuild) rolls and back-adjusted 1m/5m bars with session fields.

    Rolls are detected from instrument_id changes (continuous series) or the daily volume
    crossover (per-contract series); prices before each roll are ratio back-adjusted.

    \b
    Example:
      nqexp data bars --symbol NQ.demo --freq 5m
    """
    from nqexp import bars

    console = _console()
    freq_minutes = sorted({int(f[:-1]) for f in freqs}) if freqs else [1, 5]
    con = _open_db(ctx)
    with console.status(f"Building bars for {symbol}..."):
        report = bars.build_bars(con, symbol, freq_minutes)
    console.print(f"[green]Built[/] {report.summary()}")
    for freq, counts in sorted(report.flagged.items()):
        console.print(f"  {freq}m flags: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if len(report.rolls):
        from rich.table import Table

        table = Table(title=f"rolls of {symbol}")
        for col in ("ts (UTC)", "from", "to", "ratio", "method"):
            table.add_column(col)
        for r in report.rolls.itertuples():
            table.add_row(str(r.ts), str(r.from_contract), str(r.to_contract), f"{r.ratio:.6f}", str(r.method))
        console.print(table)


# --------------------------------------------------------------------------------------- features


@cli.group()
def features():
    """SQL feature sets (sql/features/): build the versioned feature table, check it.

    \b
    Example:
      nqexp features build --set migt24 --symbol NQ.demo
    """


@features.command("list")
def features_list():
    """List the feature sets and their variables.

    \b
    Example:
      nqexp features list
    """
    from rich.table import Table

    from nqexp import features as feat

    table = Table(title="feature sets")
    for col in ("set", "bars", "variables", "horizons (bars)", "files"):
        table.add_column(col, overflow="fold")
    for name in feat.list_sets():
        fs = feat.feature_set(name)
        table.add_row(name, f"{fs.freq_minutes}m", f"{len(fs.columns)}: {', '.join(fs.columns)}",
                      ", ".join(map(str, fs.horizons)), ", ".join(f.path.name for f in fs.files))
    _console().print(table)


@features.command("build")
@click.option("--set", "set_name", default="migt24", show_default=True, help="Feature set name.")
@click.option("--symbol", default="NQ.demo", show_default=True, help="Series whose bars to use.")
@click.option("--force", is_flag=True, help="Rebuild even when the SQL and bars are unchanged.")
@click.pass_context
def features_build(ctx, set_name, symbol, force):
    """Materialize a feature set (plus targets) into its versioned table.

    Rebuilds only when the SQL text or the bars changed.

    \b
    Example:
      nqexp features build --set migt24 --symbol NQ.demo
    """
    from nqexp import features as feat
    from nqexp.bars import ensure_bars

    console = _console()
    con = _open_db(ctx)
    with console.status(f"Building {set_name} on {symbol}..."):
        built = ensure_bars(con, symbol)
        report = feat.build(con, set_name, symbol, force=force)
    if built is not None:
        console.print(f"Built bars first: {built.summary()}")
    console.print(f"[green]{report.summary()}[/]")


@features.command("check")
@click.option("--set", "set_name", default="migt24", show_default=True, help="Feature set name.")
@click.option("--symbol", default="NQ.demo", show_default=True, help="Series whose bars to use.")
@click.option("--cuts", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Random truncation points for the leakage check.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def features_check(ctx, set_name, symbol, cuts, seed):
    """Check a feature set: NaN/inf after warm-up, ranges, correlated pairs, and look-ahead leakage.

    The leakage check recomputes every feature on bars truncated at random cut points and
    requires identical values at and before each cut. Exits 1 if any check fails.

    \b
    Example:
      nqexp features check --set migt24 --symbol NQ.demo
    """
    from nqexp import features as feat
    from nqexp.bars import ensure_bars

    console = _console()
    con = _open_db(ctx)
    with console.status(f"Checking {set_name} on {symbol}..."):
        ensure_bars(con, symbol)
        report = feat.check(con, set_name, symbol, n_cuts=cuts, seed=seed)
    for renderable in feat.render_check(report):
        console.print(renderable)
    leaks = [r for r in report.leakage if not r.ok]
    if leaks:
        raise click.ClickException(f"look-ahead leakage at {len(leaks)} cut point(s); see the table above")
    console.print("[green]No look-ahead leakage at any cut point.[/]")


# --------------------------------------------------------------------------------------- experiments


def _trial_table(spec):
    from rich.table import Table

    table = Table(title=f"{spec.name}: {len(spec.trials())} trials")
    for col in ("trial", "variant", "seed", "changes vs the resolved spec"):
        table.add_column(col, overflow="fold")
    for t in spec.trials():
        delta = spec.variants[t.variant]
        table.add_row(t.trial_name, t.variant + (" (reference)" if t.is_reference else ""), str(t.seed),
                      ", ".join(f"{k}={v}" for k, v in delta.items()) or "-")
    return table


class _Progress:
    """Rich progress bars, one per trial: epoch and latest val CRPS, then test CRPS and gate status."""

    def __init__(self, console, total_epochs: int, trials):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console)
        self.total = total_epochs
        self.console = console
        self.lines = not console.is_terminal     # logs and pipes get one line per trial event instead
        self.tasks = {}
        for name in trials:
            self.tasks[name] = self.progress.add_task(name, total=total_epochs, status="pending", start=False)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def __call__(self, event, name, **info):
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=self.total, status="", start=False)
        task = self.tasks[name]
        if self.lines and event in ("done", "error"):
            crps = info.get("test_crps")
            what = (f"finished, test CRPS {crps:.3e}" if crps is not None else "finished") if event == "done" \
                else f"FAILED ({info.get('error')})"
            self.console.print(f"trial {name}: {what}" + (" [gated]" if info.get("gated") else ""), markup=False)
        if event == "start":
            self.progress.start_task(task)
            self.progress.update(task, status="running")
        elif event == "epoch":
            crps = info.get("val_crps")
            self.progress.update(task, completed=info.get("epoch", 0),
                                 status=f"val CRPS {crps:.3e}" if crps is not None else "")
        elif event == "done":
            crps = info.get("test_crps")
            gate = "[red]GATED[/]" if info.get("gated") else "[green]ok[/]"
            self.progress.update(task, completed=self.total,
                                 status=f"test CRPS {crps:.3e} {gate}" if crps is not None else gate)
        elif event == "retry":
            self.progress.update(task, status="[yellow]failed, retrying[/]")
        elif event == "error":
            self.progress.update(task, status="[red]failed[/]")


def _run_or_sweep(ctx, kind, spec_path, sets, smoke, dry_run, address, print_spec, extra_sets=()):
    from nqexp import spec as spec_mod

    console = _console()
    spec = spec_mod.load_spec(spec_path, overrides=[*sets, *extra_sets], smoke=smoke)
    if print_spec:
        import yaml

        click.echo(yaml.safe_dump(spec_mod.redact(spec.to_dict()), sort_keys=False), nl=False)
        return
    if dry_run:
        if kind == "run":
            console.print(_trial_table(spec))
        else:
            from rich.table import Table

            table = Table(title=f"{spec.name}: sweep of {spec.sweep.num_samples} trials "
                                f"({spec.sweep.algorithm}, {spec.sweep.scheduler}), objective {spec.sweep.metric}")
            for col in ("parameter", "distribution"):
                table.add_column(col)
            for key, dim in spec.search_space().items():
                table.add_row(key, f"{dim.kind} {list(dim.values) if dim.kind == 'choice' else [dim.low, dim.high]}")
            console.print(table)
        return
    from nqexp import tune as tune_mod
    from nqexp.track import wandb_mode

    if address and address.startswith(("ray://", "http://", "https://")):
        tune_mod.submit_job(spec, kind=kind, address=address, printer=console.print)
        return
    mode = wandb_mode(spec.track.wandb_mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    if mode != "disabled":
        os.environ["WANDB_MODE"] = mode
    console.print(f"[bold]{spec.name}[/]: {kind}, W&B {mode}"
                  + (" (no WANDB_API_KEY; sync later with `nqexp sync`)" if mode == "offline" else "")
                  + f", store {spec.track.store_path()}")
    epochs = spec.train.max_epochs if kind == "run" else (spec.sweep.max_epochs or spec.train.max_epochs)
    names = [t.trial_name for t in spec.trials()] if kind == "run" else []
    with _Progress(console, epochs, names) as progress:
        outcome = tune_mod.run_experiment(spec, kind=kind, spec_path=spec_path, db_path=ctx.obj["db"],
                                          address=address, on_event=progress,
                                          on_note=lambda text: progress.progress.console.print(text))
    _print_outcome(console, spec, outcome)


def _print_outcome(console, spec, outcome):
    from nqexp import report as report_mod
    from nqexp.track import RunStore

    store = RunStore(spec.track.store_path())
    if outcome.finished and outcome.kind == "sweep":
        console.print(_sweep_table(store, outcome.experiment))
    elif outcome.finished:
        data = report_mod.load(store, outcome.experiment)
        console.print(_summary_rich(report_mod.summary_table(data), title=f"{outcome.experiment}: test metrics, all horizons"))
        path = report_mod.build_report(store, outcome.experiment)
        if not data.flags.empty:
            gated = data.flags.merge(data.trials[["trial", "variant"]], on="trial")
            console.print(f"[yellow]{gated['trial'].nunique()} trial(s) flagged by sanity gates[/] "
                          f"(see the report): {', '.join(sorted(gated['trial'].unique()))}")
        console.print(f"Report: {path}")
    console.print(f"Wall time {outcome.wall_seconds:.0f}s; {len(outcome.finished)} finished, "
                  f"{len(outcome.failed)} failed, {len(outcome.unfinished)} unfinished.")
    if outcome.unfinished:
        raise click.exceptions.Exit(_interrupted(console, outcome, spec))
    if outcome.failed:
        raise click.ClickException(f"{len(outcome.failed)} trial(s) failed: {', '.join(outcome.failed)}; "
                                   f"see their error files under {store.experiment_dir(outcome.experiment)}/ray")
    strict_flags = spec.eval.strict and _has_flags(store, outcome.experiment)
    if strict_flags:
        raise click.ClickException("eval.strict is on and sanity gates flagged trials (see the report)")


def _sweep_table(store, experiment, top: int = 10):
    """Sweep trials by val CRPS: gated (collapsed) trials rank last whatever their CRPS."""
    import json

    from rich.table import Table

    con = store.connect(read_only=True)
    rows = con.execute(
        """
        select t.trial, t.status, coalesce(t.gated, false), t.params_json, m.value as val_crps, tm.value as test_crps
        from trials t
        left join metrics m on m.experiment = t.experiment and m.trial = t.trial and m.key = 'val/crps'
        left join metrics tm on tm.experiment = t.experiment and tm.trial = t.trial and tm.key = 'test/crps'
        where t.experiment = ?
        order by coalesce(t.gated, false), m.value nulls last
        """, [experiment]).fetchall()
    con.close()
    table = Table(title=f"{experiment}: best {min(top, len(rows))} of {len(rows)} sweep trials by val CRPS (gated last)")
    for col in ("trial", "status", "val CRPS", "test CRPS", "gated", "parameters"):
        table.add_column(col, overflow="fold")
    for trial, status, gated, params, val, test in rows[:top]:
        table.add_row(trial, status, f"{val:.4e}" if val is not None else "-", f"{test:.4e}" if test is not None else "-",
                      "yes" if gated else "no", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                          for k, v in json.loads(params or "{}").items()))
    return table


def _has_flags(store, experiment) -> bool:
    con = store.connect(read_only=True)
    n = con.execute("select count(*) from gate_flags where experiment = ?", [experiment]).fetchall()[0][0]
    con.close()
    return n > 0


def _interrupted(console, outcome, spec) -> int:
    how = (f"nqexp run --resume {outcome.experiment} (or run the same spec again)" if outcome.kind == "run"
           else f"nqexp sweep {spec.source or 'SPEC'} again")
    console.print(f"[yellow]Interrupted:[/] {len(outcome.unfinished)} trial(s) unfinished "
                  f"({', '.join(outcome.unfinished[:6])}{'...' if len(outcome.unfinished) > 6 else ''}). "
                  f"Resume with: {how}")
    return 130


def _summary_rich(frame, title):
    from rich.table import Table

    table = Table(title=title)
    part = frame[frame["horizon"] == "all"] if "horizon" in frame else frame
    cols = [c for c in part.columns if c != "horizon"]
    for col in cols:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for row in part.itertuples(index=False):
        table.add_row(*(str(getattr(row, c)) for c in cols))
    return table


@cli.command()
@click.argument("spec_path", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a spec value (dotted key); repeatable.")
@click.option("--dry-run", is_flag=True, help="Print the trials (variants x seeds) and exit.")
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
    from nqexp.spec import TrackConfig

    for store_root in {TrackConfig().store_path(), *(os.path.abspath(v.split("=", 1)[1]) for v in sets
                                                     if v.startswith("track.store="))}:
        path = os.path.join(store_root, experiment, "spec.resolved.yaml")
        if os.path.exists(path):
            return path
    raise SpecError(f"--resume {experiment}: no run store entry {experiment}/spec.resolved.yaml under "
                    f"{TrackConfig().store_path()}; see `nqexp runs ls`")


@cli.command()
@click.argument("spec_path", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a spec value (dotted key); repeatable.")
@click.option("--num-samples", type=click.IntRange(1, 10000), default=None, help="Trials to sample (sweep.num_samples).")
@click.option("--dry-run", is_flag=True, help="Print the search space and exit.")
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


@cli.group()
def runs():
    """The local run store: experiments, trials and their metrics (works offline).

    \b
    Example:
      nqexp runs compare quickstart
    """


def _store(store_dir):
    from nqexp.spec import TrackConfig
    from nqexp.track import RunStore

    return RunStore(store_dir or TrackConfig().store_path())


_store_option = click.option("--store", "store_dir", default=None, type=click.Path(file_okay=False),
                             help="Run store folder (default: ./runs).")


@runs.command("ls")
@_store_option
def runs_ls(store_dir):
    """List experiments with their status, trial counts and wall time.

    \b
    Example:
      nqexp runs ls
    """
    from rich.table import Table

    store = _store(store_dir)
    con = store.connect(read_only=True)
    rows = con.execute(
        """
        select e.experiment, e.kind, e.status, strftime(e.created_at, '%Y-%m-%d %H:%M'), e.wall_seconds,
            count(t.trial), count(t.trial) filter (where t.status = 'finished'), count(t.trial) filter (where t.gated)
        from experiments e left join trials t using (experiment)
        group by all order by min(e.created_at)
        """
    ).fetchall()
    con.close()
    table = Table(title=f"experiments in {store.root}")
    for col in ("experiment", "kind", "status", "created", "wall s", "trials", "finished", "gated"):
        table.add_column(col)
    for exp, kind, status, created, wall, n, fin, gated in rows:
        table.add_row(exp, kind, status, created, f"{wall:.0f}" if wall else "-", str(n), str(fin), str(gated))
    _console().print(table)


@runs.command("show")
@click.argument("run_name")
@_store_option
def runs_show(run_name, store_dir):
    """Show one trial's metrics per horizon (RUN is EXPERIMENT/TRIAL) and its gate flags.

    \b
    Example:
      nqexp runs show quickstart/full-s0
    """
    from rich.table import Table

    from nqexp.errors import DataError

    if "/" not in run_name:
        raise DataError(f"RUN must be EXPERIMENT/TRIAL, e.g. quickstart/full-s0, not {run_name!r}")
    experiment, trial = run_name.split("/", 1)
    store = _store(store_dir)
    con = store.connect(read_only=True)
    info = con.execute("select variant, seed, status, best_epoch, epochs, train_seconds, stopped, dir "
                       "from trials where experiment = ? and trial = ?", [experiment, trial]).fetchall()
    if not info:
        con.close()
        raise DataError(f"no trial {run_name} in {store.path}; see `nqexp runs ls`")
    metrics = dict(con.execute("select key, value from metrics where experiment = ? and trial = ?",
                               [experiment, trial]).fetchall())
    flags = con.execute("select gate, reason from gate_flags where experiment = ? and trial = ?",
                        [experiment, trial]).fetchall()
    con.close()
    variant, seed, status, best, epochs, secs, stopped, path = info[0]
    console = _console()
    console.print(f"[bold]{run_name}[/]: variant {variant}, seed {seed}, {status}; best epoch {best} of {epochs} "
                  f"({stopped}), {secs or 0:.0f}s training; files in {path}")
    from nqexp.report import horizon_labels

    labels = horizon_labels(k.removeprefix("test/") for k in metrics if k.startswith("test/"))
    shown = ("crps", "crpss_climatology", "crpss_volscaled", "picp50", "picp80", "picp90", "mpiw80",
             "calib_err", "ic", "dir_acc", "crossing_rate")
    for split in ("val", "test"):
        table = Table(title=f"{split} metrics")
        table.add_column("metric")
        for lab in labels:
            table.add_column(lab, justify="right")
        table.add_column("all", justify="right")
        for m in shown:
            vals = [metrics.get(f"{split}/{m}_{lab}") for lab in labels] + [metrics.get(f"{split}/{m}")]
            table.add_row(m, *("-" if v is None else f"{v:.4g}" for v in vals))
        console.print(table)
    for gate, reason in flags:
        console.print(f"[red]gate[/] {gate}: {reason}")


@runs.command("compare")
@click.argument("experiment")
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True)
@_store_option
def runs_compare(experiment, split, store_dir):
    """Compare the variants of an experiment: metrics per horizon, mean ± std over seeds.

    \b
    Example:
      nqexp runs compare quickstart --split test
    """
    from rich.table import Table

    from nqexp import report as report_mod

    data = report_mod.load(_store(store_dir), experiment)
    frame = report_mod.summary_table(data, split=split)
    table = Table(title=f"{experiment}: {split} metrics, mean ± std over seeds")
    for col in frame.columns:
        table.add_column(col, justify="left" if col in ("variant", "horizon") else "right")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    _console().print(table)


@cli.command()
@click.argument("experiment")
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", show_default=True)
@click.option("--wandb", "publish", is_flag=True, help="Also publish it as a W&B Report (needs WANDB_API_KEY).")
@_store_option
def report(experiment, fmt, publish, store_dir):
    """Write the ablation/sweep report of an experiment from the local run store.

    Per-variant metrics per horizon (mean ± std over seeds), paired CRPS differences vs the
    reference variant on identical test samples with block-bootstrap CIs, calibration
    figures and gate flags.

    \b
    Example:
      nqexp report quickstart --format html
    """
    from nqexp import report as report_mod

    store = _store(store_dir)
    console = _console()
    with console.status("Building the report..."):
        path = report_mod.build_report(store, experiment, fmt=fmt)
    console.print(f"Report: {path}")
    if publish:
        import yaml

        spec = yaml.safe_load((store.experiment_dir(experiment) / "spec.resolved.yaml").read_text())
        url = report_mod.publish_wandb_report(store, experiment, project=spec["track"]["wandb_project"],
                                              entity=spec["track"].get("wandb_entity"))
        console.print(f"W&B Report: {url}")


@cli.command()
@_store_option
def sync(store_dir):
    """Upload offline W&B runs from the run store (needs WANDB_API_KEY).

    \b
    Example:
      WANDB_API_KEY=... nqexp sync
    """
    import glob
    import subprocess

    from nqexp.errors import CredentialsError

    if not os.environ.get("WANDB_API_KEY"):
        raise CredentialsError("nqexp sync needs WANDB_API_KEY in the environment to upload offline runs")
    store = _store(store_dir)
    paths = sorted(glob.glob(str(store.root / "*" / "wandb" / "offline-run-*")))
    if not paths:
        _console().print(f"No offline W&B runs under {store.root}.")
        return
    result = subprocess.run([sys.executable, "-m", "wandb", "sync", "--include-offline", *paths])
    if result.returncode:
        raise click.ClickException(f"wandb sync failed with exit code {result.returncode}")
    _console().print(f"Synced {len(paths)} offline run(s).")


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


def _frame_table(frame, title):
    from rich.table import Table

    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col), overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row))
    return table


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
