"""Every rich table, progress bar and console of the CLI (the only nqexp module that imports rich),
and the `--json` output.

Renderers take data (lists of dicts, DataFrames, report objects) and return rich renderables
or print them; they never query a store. Command modules import this module inside their
functions, so `nqexp --help` does not pay for rich.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


# Piped output (CI logs, `| grep`) is neither squeezed into 80 columns nor wrapped (a pipe has no width;
# COLUMNS is not trusted there, test runners and CI set it small).
PIPE_WIDTH = 240


def console(file=None, stderr: bool = False) -> Console:
    if file is not None:
        return Console(file=file, highlight=False, width=PIPE_WIDTH)
    piped = not (sys.stderr if stderr else sys.stdout).isatty()
    return Console(highlight=False, stderr=stderr, width=PIPE_WIDTH if piped else None, soft_wrap=piped)


def frame_table(frame, title: str) -> Table:
    """A DataFrame as a table; floats to 6 significant digits."""
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col), overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row))
    return table


def _count_table(title: str, rows) -> Table:
    table = Table(title=title)
    table.add_column("reason")
    table.add_column("rows", justify="right")
    for reason, count in rows:
        table.add_row(reason, f"{count:,}")
    return table


# --------------------------------------------------------------------------------------- data


def import_rejects_table(reasons: dict[str, int]) -> Table:
    """Reasons of one import's rejected rows, most frequent first."""
    return _count_table("Rejected rows (kept in table rejected_bars)", sorted(reasons.items(), key=lambda kv: -kv[1]))


def rejected_rows_table(rows: list[dict], limit: int) -> Table:
    table = Table(title=f"rejected_bars (latest {limit})")
    for col in ("source", "row", "reason", "row as read"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(os.path.basename(r["source"]), str(r["row_number"]), r["reason"], r["raw"] or "")
    return table


def print_data_info(console: Console, database: str, info: dict) -> None:
    """`nqexp data info`: raw series, rejects, latest imports, continuous bars, rolls, flags, demo truth."""
    console.print(f"Database: {database}")
    table = Table(title="raw_bars (1-minute, UTC, bar start)")
    for col in ("series", "rows", "first", "last", "contracts", "gaps >1m", "gaps >15m in session", "session opens"):
        table.add_column(col, justify="right" if col not in ("series", "first", "last") else "left")
    for s in info["series"]:
        table.add_row(s["symbol"], f"{s['rows']:,}", str(s["first"]), str(s["last"]), str(s["contracts"]),
                      f"{s['gaps_1m']:,}", f"{s['gaps_15m_in_session']:,}", f"{s['session_opens']:,}")
    console.print(table if info["series"] else "[yellow]No bars yet.[/] Try: nqexp data demo --days 30")
    if info["rejects"]:
        console.print(_count_table("rejected_bars", info["rejects"]))
    else:
        console.print("Rejected rows: 0")
    if info["imports"]:
        it = Table(title="latest imports")
        for col in ("at", "format", "file", "read", "new", "unchanged", "changed", "rejected"):
            it.add_column(col)
        for r in info["imports"]:
            nums = (r["rows_read"], r["new_rows"], r["unchanged"], r["changed"], r["rejected"])
            it.add_row(str(r["imported_at"])[:19], r["format"], os.path.basename(r["source"]), *(f"{x:,}" for x in nums))
        console.print(it)
    if not info["bars"].empty:
        console.print(frame_table(info["bars"], "continuous bars (bars_1m / bars_5m)"))
    if not info["rolls"].empty:
        console.print(frame_table(info["rolls"], "rolls (ratio back-adjustment: adjusted = raw x adj_factor)"))
    if not info["flagged"].empty:
        console.print(frame_table(info["flagged"].head(20), "flagged 5m bars (latest 20)"))
    if info["demo_rolls"]:
        console.print(f"Demo ground truth: demo_truth (sigma per bar), demo_rolls ({info['demo_rolls']} rolls)")


@contextmanager
def chunk_progress(console: Console):
    """Progress of a chunked download; yields the callback `on_chunk(done, total, what)`."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("chunks", total=None)

        def on_chunk(done, total, what):
            progress.update(task, completed=done, total=total, description=what)

        yield on_chunk


def rolls_table(symbol: str, rolls) -> Table:
    """Rolls (bars.ROLL_COLUMNS): where, between which contracts, the ratio, how found and how sure (z)."""
    table = Table(title=f"rolls of {symbol} (ratio back-adjustment: adjusted = raw x adj_factor)")
    for col in ("ts (UTC)", "from", "to", "ratio", "jump", "method", "z", "window expiry"):
        table.add_column(col, justify="right" if col in ("ratio", "jump", "z") else "left")

    def text(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("<NA>", "NaT", "nan") else str(v)

    for r in rolls.itertuples():
        z = getattr(r, "z", None)
        table.add_row(str(r.ts), text(r.from_contract), text(r.to_contract), f"{r.ratio:.6f}",
                      f"{100 * math.log(r.ratio):+.3f}%", str(r.method), "-" if text(z) == "-" else f"{z:.1f}",
                      text(getattr(r, "expiry", None))[:10])
    return table


def print_roll_warnings(console: Console, warnings) -> None:
    """What the roll detection could not decide, one line each."""
    for message in warnings:
        console.print(f"[yellow]warning:[/] {message}", soft_wrap=True, markup=True, highlight=False)


# --------------------------------------------------------------------------------------- features


def feature_sets_table(sets) -> Table:
    """`sets`: FeatureSet objects (name, freq_minutes, columns, horizons, files)."""
    table = Table(title="feature sets")
    for col in ("set", "bars", "variables", "horizons (bars)", "files"):
        table.add_column(col, overflow="fold")
    for fs in sets:
        table.add_row(fs.name, f"{fs.freq_minutes}m", f"{len(fs.columns)}: {', '.join(fs.columns)}",
                      ", ".join(map(str, fs.horizons)), ", ".join(f.path.name for f in fs.files))
    return table


def feature_check_tables(report) -> list[Table]:
    """The three tables of `nqexp features check`: stats after warm-up, correlated pairs, leakage cuts."""
    stats = Table(title=f"{report.set_name} on {report.symbol}: {report.rows:,} rows, "
                        f"stats after {report.warmup_bars} warm-up bars ({report.table})")
    for col in ("feature", "group", "NaN", "inf", "min", "max", "mean", "std"):
        stats.add_column(col, justify="left" if col in ("feature", "group") else "right")
    for s in report.stats:
        stats.add_row(s.name, s.group or "", str(s.n_nan), str(s.n_inf),
                      *(f"{v:.6g}" for v in (s.min, s.max, s.mean, s.std)),
                      style="red" if s.n_nan or s.n_inf else None)
    corr = Table(title=f"pairs with |corr| > {report.corr_threshold}")
    for col in ("feature a", "feature b", "corr"):
        corr.add_column(col, justify="right" if col == "corr" else "left")
    for a, b, c in report.correlated:
        corr.add_row(a, b, f"{c:+.4f}")
    leak = Table(title="leakage: recompute on bars truncated at the cut; features at bars <= cut must not change")
    for col in ("cut bar", "cut ts (UTC)", "rows", "mismatches", "max |diff|", "worst feature", "ok"):
        leak.add_column(col)
    for r in report.leakage:
        leak.add_row(str(r.cut_index), str(r.cut_ts), f"{r.rows_compared:,}", str(r.n_mismatch),
                     f"{r.max_abs_diff:.3g}", r.worst_feature or "", "yes" if r.ok else "NO",
                     style=None if r.ok else "red")
    return [stats, corr, leak, *point_in_time_tables(report)]


def point_in_time_tables(report) -> list[Table]:
    """The raw truncation check of `nqexp features check`: its cut points, then each column's worst difference."""
    title = ("point in time: raw bars after the cut removed, rolls, adjustment, bars and features rebuilt; "
             "columns at bars <= cut must not change")
    cuts = Table(title=title + (f" ({report.point_in_time_note})" if report.point_in_time_note else ""))
    for col in ("cut bar (UTC)", "raw kept before", "rolls removed", "rows", "changed columns", "ok"):
        cuts.add_column(col, overflow="fold")
    for r in report.point_in_time:
        changed = r.note or ", ".join(r.offending)
        cuts.add_row(str(r.cut_ts), str(r.raw_until), str(r.rolls_removed), f"{r.rows_compared:,}", changed,
                     "yes" if r.ok else "NO", style=None if r.ok else "red")
    columns = Table(title="point in time per column, worst over the cuts "
                          f"(tolerance {report.point_in_time_rtol:g} relative)")
    for col in ("column", "values", "max |diff|", "max rel diff", "mismatches", "ok"):
        columns.add_column(col, justify="left" if col == "column" else "right")
    for c in report.point_in_time_columns():
        columns.add_row(c.name, f"{c.rows:,}", f"{c.max_abs_diff:.3g}", f"{c.max_rel_diff:.3g}", str(c.n_mismatch),
                        "yes" if c.ok else "NO", style=None if c.ok else "red")
    return [cuts, columns]


def point_in_time_failure(report) -> str:
    """The one-line error of a failed raw truncation check: which columns moved, or why nothing compared."""
    bad = report.point_in_time_offending()
    notes = sorted({r.note for r in report.point_in_time if r.note})
    what = f"columns {', '.join(bad)} change at bars before the cut" if bad else "; ".join(notes)
    return (f"point-in-time check failed at {sum(not r.ok for r in report.point_in_time)} raw cut point(s): {what} "
            "when the raw bars after it are removed and everything is rebuilt (a value in back-adjusted price units "
            "moves whenever a later roll is added; docs/features.md §13); see the tables above")


def point_in_time_summary(report) -> str:
    """The closing line of a passed raw truncation check (or why it did not run)."""
    if not report.point_in_time:
        return f"[yellow]Raw truncation check {report.point_in_time_note or 'skipped'}.[/]"
    removed = max(r.rolls_removed for r in report.point_in_time)
    return (f"[green]Point in time: every feature and target unchanged at {len(report.point_in_time)} raw cut "
            f"point(s) (up to {removed} later roll(s) removed), to {report.point_in_time_rtol:g} relative.[/]")


# --------------------------------------------------------------------------------------- experiments


def trials_table(spec) -> Table:
    """`nqexp run --dry-run`: every trial (variant x seed) and what its variant changes."""
    table = Table(title=f"{spec.name}: {len(spec.trials())} trials")
    for col in ("trial", "variant", "seed", "changes vs the resolved spec"):
        table.add_column(col, overflow="fold")
    for t in spec.trials():
        delta = spec.variants[t.variant]
        table.add_row(t.trial_name, t.variant + (" (reference)" if t.is_reference else ""), str(t.seed),
                      ", ".join(f"{k}={v}" for k, v in delta.items()) or "-")
    return table


def memory_table(rows, title: str) -> Table:
    """`--dry-run`: the memory plan, one row per distinct trial shape (docs/clusters.md §8)."""
    def gib(nbytes: int) -> str:
        return f"{nbytes / 2**30:.1f}"

    table = Table(title=title, caption="GiB; state = params + grads + AdamW moments; activations kept for backward per "
                                       "micro-batch (checkpointing off / on), peak; usable = 90% of the GPU")
    for col in ("trials", "device", "micro x accum", "t_max", "state", "activations off / on",
                "train peak", "eval peak (batch)", "usable", "fits"):
        table.add_column(col, overflow="fold", justify="left" if col in ("trials", "device") else "right")
    for row in rows:
        est = row.estimate
        device = f"{'GPU' if row.device == 'cuda' else 'CPU'} {'bf16' if row.amp else 'fp32'}"
        acts = (f"{gib(est.activations)} / {gib(est.activations_checkpointed)}"
                + (" (on)" if est.checkpointing else " (off)"))
        fits = {None: "-", True: "[green]yes[/]", False: "[red]NO[/]"}[row.fits]
        table.add_row(row.label, device, f"{row.batch_size} x {row.grad_accum}", str(row.t_max), gib(est.state),
                      acts, gib(max(est.train_peak, est.step_peak)), f"{gib(est.eval_peak)} ({row.eval_batch_size})",
                      gib(row.budget) if row.budget is not None else "-", fits)
    return table


def memory_notes(rows) -> list[str]:
    """The lines under the memory table: where the GPU size came from, and what fits when a shape does not."""
    notes = sorted({f"usable memory: {row.memory_source}" for row in rows if row.device == "cuda"})
    for row in rows:
        if row.fits is False:
            notes.append(f"[red]{row.label} does not fit[/]; to fit: {'; '.join(row.fixes) or 'nothing found'}")
    return notes


def search_space_table(spec) -> Table:
    """`nqexp sweep --dry-run`: the search space and how it is searched."""
    table = Table(title=f"{spec.name}: sweep of {spec.sweep.num_samples} trials "
                        f"({spec.sweep.algorithm}, {spec.sweep.scheduler}), objective {spec.sweep.metric}")
    for col in ("parameter", "distribution"):
        table.add_column(col)
    for key, dim in spec.search_space().items():
        table.add_row(key, f"{dim.kind} {list(dim.values) if dim.kind == 'choice' else [dim.low, dim.high]}")
    return table


class TrialProgress:
    """Rich progress bars, one per trial: epoch and latest val CRPS, then test CRPS and gate status.

    Called by the driver as `progress(event, trial_name, **info)`.
    """

    def __init__(self, console: Console, total_epochs: int, trials, max_steps: int | None = None):
        self.lines = not console.is_terminal     # logs and pipes get one plain line per trial event instead
        self.progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
                                 disable=self.lines)
        self.total = total_epochs
        self.max_steps = max_steps
        self.console = console
        self.started: dict[str, float] = {}
        self.tasks = {}
        for name in trials:
            self.tasks[name] = self.progress.add_task(name, total=total_epochs, status="pending", start=False)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        # Trials this run never started (finished earlier, or nothing to run) would end as "pending".
        for task in self.progress.tasks:
            if not task.started:
                self.progress.update(task.id, visible=False)
        self.progress.__exit__(*exc)

    def note(self, text: str) -> None:
        """Print above the live bars."""
        self.progress.console.print(text)

    def __call__(self, event, name, **info):
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=self.total, status="", start=False)
        task = self.tasks[name]
        if self.lines and event in ("done", "error"):
            crps = info.get("test_crps")
            what = (f"finished, test CRPS {crps:.3e}" if crps is not None else "finished") if event == "done" \
                else f"FAILED ({info.get('error')})"
            steps = f", {info['steps']} steps" if info.get("steps") is not None else ""
            self.console.print(f"trial {name}: {what}{steps}" + (" [truncated]" if info.get("truncated") else "")
                               + (" [gated]" if info.get("gated") else ""), markup=False)
        if self.lines and event in ("start", "epoch"):
            self.console.print(self._line(event, name, info), markup=False, highlight=False, soft_wrap=True)
        if event == "start":
            self.started.setdefault(name, time.monotonic())
            self.progress.start_task(task)
            self.progress.update(task, status="running")
        elif event == "epoch":
            crps = info.get("val_crps")
            self.progress.update(task, completed=info.get("epoch", 0),
                                 status=f"val CRPS {crps:.3e}" if crps is not None else "")
        elif event == "done":
            crps = info.get("test_crps")
            gate = "[red]GATED[/]" if info.get("gated") else "[green]ok[/]"
            if info.get("truncated"):
                gate += " [yellow]truncated[/]"
            self.progress.update(task, completed=self.total,
                                 status=f"test CRPS {crps:.3e} {gate}" if crps is not None else gate)
        elif event == "retry":
            self.progress.update(task, status="[yellow]failed, retrying[/]")
        elif event == "error":
            self.progress.update(task, status="[red]failed[/]")


    def _line(self, event: str, name: str, info: dict) -> str:
        """trial, epoch, step, val CRPS, elapsed, ETA: one grep-able line per event."""
        if event == "start":
            return f"trial {name}: started"
        elapsed = time.monotonic() - self.started.get(name, time.monotonic())
        epoch, step, crps = info.get("epoch"), info.get("step"), info.get("val_crps")
        # ETA from the step budget when there is one (every trial trains max_steps), else from the epochs.
        if self.max_steps and step:
            eta = elapsed / step * max(self.max_steps - step, 0)
        elif epoch:
            eta = elapsed / epoch * max(self.total - epoch, 0)
        else:
            eta = float("nan")
        parts = [f"trial {name}: epoch {epoch}", f"step {step}" if step is not None else None,
                 f"val CRPS {crps:.4e}" if crps is not None else None, f"elapsed {elapsed:.0f}s",
                 f"ETA {eta:.0f}s" if eta == eta else None]
        return ", ".join(p for p in parts if p)


def sweep_table(experiment: str, rows: list[dict], top: int = 10) -> Table:
    """Sweep trials as ranked by RunStore.sweep_trials (val CRPS, gated last); the best `top`."""
    table = Table(title=f"{experiment}: best {min(top, len(rows))} of {len(rows)} sweep trials by val CRPS (gated last)")
    for col in ("trial", "status", "val CRPS", "test CRPS", "gated", "parameters"):
        table.add_column(col, overflow="fold")
    for r in rows[:top]:
        val, test = r["val_crps"], r["test_crps"]
        table.add_row(r["trial"], r["status"], f"{val:.4e}" if val is not None else "-",
                      f"{test:.4e}" if test is not None else "-", "yes" if r["gated"] else "no",
                      ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items()))
    return table


# The terminal shows the columns a decision needs; the report and --json hold every metric.
TERMINAL_METRICS = ("crps", "crpss_best", "best_baseline", "picp80", "calib_err", "ic", "seeds", "folds")


def _terminal_columns(frame, keys: tuple[str, ...]) -> list[str]:
    return [c for c in (*keys, *TERMINAL_METRICS) if c in frame.columns]


def summary_all_horizons_table(frame, title: str) -> Table:
    """report.summary_table's 'all' horizon rows: one row per variant."""
    table = Table(title=title)
    part = frame[frame["horizon"] == "all"] if "horizon" in frame else frame
    cols = _terminal_columns(part, ("variant",))
    for col in cols:
        table.add_column(col, justify="left" if col == "variant" else "right",
                         no_wrap=col in ("variant", "best_baseline"))
    for row in part.itertuples(index=False):
        table.add_row(*(str(getattr(row, c)) for c in cols))
    return table


# --------------------------------------------------------------------------------------- runs


def experiments_table(root, rows: list[dict]) -> Table:
    table = Table(title=f"experiments in {root}")
    for col in ("experiment", "kind", "status", "created", "wall s", "trials", "finished", "gated"):
        table.add_column(col)
    for r in rows:
        wall = r["wall_seconds"]
        table.add_row(r["experiment"], r["kind"], r["status"], r["created"], f"{wall:.0f}" if wall else "-",
                      str(r["trials"]), str(r["finished"]), str(r["gated"]))
    return table


def found_trials_table(frame, where: str | None, sort: str | None, desc: bool) -> Table:
    """`nqexp runs ls --where/--sort`: api.find_trials' rows, metrics to 4 significant digits."""
    what = [f"where {where}" if where else "", f"by {sort}{' (largest first)' if desc else ''}" if sort else ""]
    table = Table(title=f"{len(frame)} trial(s) " + ", ".join(w for w in what if w))
    fixed = ["experiment", "trial", "variant", "seed", "fold", "status", "gated"]
    metrics = [c for c in frame.columns if c not in fixed]
    for col in ["run", "status", "gated", *metrics]:
        table.add_column(col, justify="right" if col in metrics else "left", no_wrap=col == "run")
    for r in frame.to_dict(orient="records"):
        table.add_row(f"{r['experiment']}/{r['trial']}", str(r["status"]), "yes" if r["gated"] else "no",
                      *("-" if r[m] != r[m] else f"{r[m]:.4g}" for m in metrics))
    return table


SHOWN_METRICS = ("crps", "crpss_climatology", "crpss_volscaled", "picp50", "picp80", "picp90", "mpiw80",
                 "calib_err", "ic", "dir_acc", "crossing_rate")


def print_trial(console: Console, name: str, trial: dict, metrics: dict[str, float], labels: list[str],
                flags: list[tuple[str, str]]) -> None:
    """`nqexp runs show`: the trial's line, val and test metrics per horizon, its gate flags."""
    if trial.get("members"):               # a seed ensemble (docs/experiments.md §16): nothing trained
        import json

        console.print(f"[bold]{name}[/]: variant {trial['variant']}, {trial['status']}; a seed ensemble, the mean of "
                      f"the quantiles of {', '.join(json.loads(trial['members']))} (it trains nothing: its budget is "
                      f"its members'); files in {trial['dir']}")
    else:
        console.print(f"[bold]{name}[/]: variant {trial['variant']}, seed {trial['seed']}, {trial['status']}; "
                      f"{trial.get('steps') if trial.get('steps') is not None else '?'} steps, best at step "
                      f"{trial.get('best_step') if trial.get('best_step') is not None else '?'} (epoch "
                      f"{trial['best_epoch']} of {trial['epochs']}), stopped: {trial['stopped']}"
                      f"{' [yellow](truncated by train.time_budget_s)[/]' if trial['stopped'] == 'time_budget' else ''}, "
                      f"{trial['train_seconds'] or 0:.0f}s training; files in {trial['dir']}")
    for split in ("val", "test"):
        table = Table(title=f"{split} metrics")
        table.add_column("metric")
        for lab in labels:
            table.add_column(lab, justify="right")
        table.add_column("all", justify="right")
        for m in SHOWN_METRICS:
            vals = [metrics.get(f"{split}/{m}_{lab}") for lab in labels] + [metrics.get(f"{split}/{m}")]
            table.add_row(m, *("-" if v is None else f"{v:.4g}" for v in vals))
        console.print(table)
    for gate, reason in flags:
        console.print(f"[red]gate[/] {gate}: {reason}")


def compare_table(experiment: str, split: str, frame) -> Table:
    """report.summary_table's rows (with an `experiment` column when several are compared)."""
    table = Table(title=f"{experiment}: {split} metrics, mean ± std over seeds (every metric: --json or the report)")
    keys = ("experiment", "variant", "horizon")
    cols = _terminal_columns(frame, keys)
    for col in cols:
        table.add_column(col, justify="left" if col in keys else "right",
                         no_wrap=col in (*keys, "best_baseline"))
    for row in frame[cols].itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    return table


# --------------------------------------------------------------------------------------- doctor


def doctor_table(rows: list[tuple[str, str]]) -> Table:
    """(what, value) rows; values may hold rich markup ([red]...[/])."""
    table = Table(title="nqexp doctor", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for what, value in rows:
        table.add_row(what, value)
    return table


# --------------------------------------------------------------------------------------- --json


def _plain(value):
    """JSON-safe: NaN/inf -> null, numpy scalars -> Python, DataFrames -> records."""
    if hasattr(value, "to_dict") and hasattr(value, "columns"):
        return [_plain(r) for r in value.to_dict(orient="records")]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if type(value).__module__ == "numpy":
        import numpy as np

        value = str(value) if isinstance(value, np.datetime64) else value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def echo_json(data) -> None:
    """One JSON document on stdout (timestamps as ISO-like strings)."""
    click.echo(json.dumps(_plain(data), indent=2, default=str))


def print_forecast(console: Console, fc, rows: list[dict]) -> None:
    """`nqexp predict`: per horizon and source, each quantile's price level over its log-return."""
    from nqexp.metrics import quantile_label

    ts = str(fc.ts[-1])[:16].replace("T", " ")
    table = Table(title=f"{fc.symbol}: forecast from the bar of {ts} UTC, last close {fc.close[-1]:,.2f}")
    table.add_column("horizon")
    table.add_column("source")
    for tau in fc.taus:
        table.add_column(quantile_label(tau), justify="right")
    cells: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        cells.setdefault((r["horizon"], r["source"]), []).append(f"{r['price']:,.2f}\n[dim]{r['log_return']:+.2e}[/dim]")
    horizons = list(dict.fromkeys(r["horizon"] for r in rows))
    for h in horizons:
        for (hh, source), values in cells.items():
            if hh == h:
                table.add_row(h if source == "model" else "", f"[bold]{source}[/bold]" if source == "model" else source,
                              *values, end_section=False)
        table.add_section()
    console.print(table)
    console.print("[dim]Each cell: price level (last close x exp(q)) over the log-return quantile q.[/dim]")


def print_predict_range(console: Console, fc, path, table) -> None:
    """`nqexp predict --start/--end`: where the predictions went and their CRPS vs the baselines."""
    console.print(f"{len(fc.ts):,} forecasts of {fc.symbol} ({str(fc.ts[0])[:16]} .. {str(fc.ts[-1])[:16]} UTC): {path}")
    if table is None:
        console.print("No realized targets yet: nothing to score.")
        return
    crps = table[(table["metric"] == "crps")].pivot_table(index="horizon", columns="source", values="value",
                                                         sort=False)
    console.print(frame_table(crps.reset_index(), "CRPS on the forecasts with realized targets (lower is better)"))
