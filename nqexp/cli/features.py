"""`nqexp features ...`: list, build and check the SQL feature sets."""

from __future__ import annotations

import click

from nqexp.cli.options import open_db, pick_symbol, symbol_option


@click.group()
def features():
    """SQL feature sets (sql/features/): build the versioned feature table, check it.

    \b
    Example:
      nqexp features build --set migt24 --symbol NQ.demo
    """


@features.command("list")
@click.option("--path", "set_path", type=click.Path(file_okay=False), default=None,
              help="A folder of your own feature sets (YAML + SQL), checked like the shipped ones.")
def features_list(set_path):
    """List the feature sets and their variables.

    \b
    Example:
      nqexp features list
    """
    from nqexp import features as feat
    from nqexp.cli import render

    sets = [feat.resolve_set(name, set_path) for name in feat.list_sets(set_path)]
    render.console().print(render.feature_sets_table(sets))


@features.command("build")
@click.option("--set", "set_name", default="migt24", show_default=True, help="Feature set name.")
@click.option("--path", "set_path", type=click.Path(file_okay=False), default=None,
              help="A folder of your own feature sets (YAML + SQL), checked like the shipped ones.")
@symbol_option
@click.option("--force", is_flag=True, help="Rebuild even when the SQL and bars are unchanged.")
@click.pass_context
def features_build(ctx, set_name, set_path, symbol, force):
    """Materialize a feature set (plus targets) into its versioned table.

    Rebuilds only when the SQL text or the bars changed.

    \b
    Example:
      nqexp features build --set migt24 --symbol NQ.demo
    """
    from nqexp import features as feat
    from nqexp.cli import render
    from nqexp.data.bars import ensure_bars

    console = render.console()
    fs = feat.resolve_set(set_name, set_path)  # a bad name is refused before any bars are built
    con = open_db(ctx)
    symbol = pick_symbol(con, symbol)
    with console.status(f"Building {set_name} on {symbol}..."):
        built = ensure_bars(con, symbol, [fs.freq_minutes])   # only the bars the set reads
        report = feat.build(con, fs, symbol, force=force)
    if built is not None:
        console.print(f"Built bars first: {built.summary()}")
    console.print(f"[green]{report.summary()}[/]")


@features.command("check")
@click.option("--set", "set_name", default="migt24", show_default=True, help="Feature set name.")
@click.option("--path", "set_path", type=click.Path(file_okay=False), default=None,
              help="A folder of your own feature sets (YAML + SQL), checked like the shipped ones.")
@symbol_option
@click.option("--cuts", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Random truncation points for the leakage check.")
@click.option("--raw-cuts", type=click.IntRange(0, 20), default=3, show_default=True,
              help="Cut points for the raw truncation check (0 skips it): the first just before a roll.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def features_check(ctx, set_name, set_path, symbol, cuts, raw_cuts, seed):
    """Check a feature set: NaN/inf after warm-up, ranges, correlated pairs, and look-ahead leakage.

    The leakage check recomputes every feature on bars truncated at random cut points and
    requires identical values at and before each cut. The raw truncation check removes the
    raw bars after each of --raw-cuts cut points (the first just before a roll, so later rolls
    go too), rebuilds rolls, back-adjustment, bars, features and targets in a scratch in-memory
    database (yours is only read) and requires every column to stay the same at and before the
    cut, to 1e-9 relative: a feature in back-adjusted price units fails it. Exits 1 if any
    check fails.

    \b
    Example:
      nqexp features check --set migt24 --symbol NQ.demo
      nqexp features check --set grok24 --symbol NQ.demo --raw-cuts 5
    """
    from nqexp import features as feat
    from nqexp.cli import render
    from nqexp.data.bars import ensure_bars

    console = render.console()
    fs = feat.resolve_set(set_name, set_path)  # a bad name is refused before any bars are built
    con = open_db(ctx)
    symbol = pick_symbol(con, symbol)
    with console.status(f"Checking {set_name} on {symbol}..."):
        ensure_bars(con, symbol, [fs.freq_minutes])
        report = feat.check(con, fs, symbol, n_cuts=cuts, seed=seed, raw_cuts=raw_cuts)
    for table in render.feature_check_tables(report):
        console.print(table)
    leaks = [r for r in report.leakage if not r.ok]
    raw_bad = [r for r in report.point_in_time if not r.ok]
    problems = []
    if leaks:
        problems.append(f"look-ahead leakage at {len(leaks)} cut point(s); see the table above")
    if raw_bad:
        problems.append(render.point_in_time_failure(report))
    if problems:
        raise click.ClickException("; ".join(problems))
    console.print("[green]No look-ahead leakage at any cut point.[/]")
    console.print(render.point_in_time_summary(report))
