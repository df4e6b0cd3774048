"""Reports: ablation and sweep summaries built from the local run store alone (fully offline).

An ablation report holds:
- per-variant test metrics per horizon, mean ± std over seeds (CRPS, skill vs the best baseline
  and each baseline, PICP80, calibration error, MPIW80, IC) and which baseline is the best;
- paired CRPS differences of every variant against every baseline, with block-bootstrap CIs;
- **paired** differences against the reference variant (the spec's first variant) on identical
  test samples: for every seed both variants scored, the per-sample CRPS difference
  d = CRPS_variant − CRPS_reference is averaged over seeds, and a moving-block bootstrap gives a
  95% CI of mean(d) (blocks of one trading day keep intraday dependence inside a block). A CI
  entirely above 0 means the variant is worse than the reference, beyond sampling noise;
- the backtest of the test split (docs/metrics.md §10): Sharpe, drawdown, profit factor and
  trades per variant and horizon (mean ± std over seeds) and the equity curves (first seed);
- learning curves: train loss and val CRPS per epoch, a line per variant (mean over seeds), from
  the run store's per-epoch history;
- the calibration figures of each variant (reliability, PIT, coverage by time of day);
- every sanity-gate flag.

`build_report` writes `<store>/<experiment>/report.md` (or .html) with figures beside it, or to `out`
(a read-only or moved store reports elsewhere; trial figures outside the report's folder are copied
next to it, so the links never point into another tree).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nqexp.errors import CredentialsError, DataError
from nqexp.evaluation import plots
from nqexp.evaluation.evaluate import load_predictions
from nqexp.metrics import block_bootstrap_ci, crps_quantile, horizon_label

log = logging.getLogger(__name__)

# Backtest statistics shown in the report, as `test/backtest_<stat>_<horizon>` keys (backtest.py).
BACKTEST_METRICS = ("sharpe", "sharpe_daily", "max_dd", "profit_factor", "trades", "net_pnl", "hit_rate")
SUMMARY_METRICS = ("crps", "crpss_best", "crpss_climatology", "crpss_volscaled", "crpss_mcgarch", "crpss_lgbm",
                   "picp80", "calib_err", "mpiw80", "ic")


@dataclass
class ReportData:
    experiment: str
    trials: pd.DataFrame        # experiment, trial, variant, seed, status, gated, dir, ...
    metrics: pd.DataFrame       # trial, key, value
    flags: pd.DataFrame         # trial, gate, reason
    reference: str              # the variant others are compared with
    epochs: pd.DataFrame = None  # trial, epoch, key, value: the per-epoch training history

    def __post_init__(self):
        if self.epochs is None:
            self.epochs = pd.DataFrame(columns=["trial", "epoch", "key", "value"])


def load(store, experiment: str) -> ReportData:
    trials = store.trials_frame(experiment)
    if trials.empty:
        known = store.experiment_names()
        raise DataError(f"no experiment {experiment!r} in {store.path}; known: {known or 'none'}")
    metrics = store.metrics_frame(experiment)
    flags = store.flags_frame(experiment)
    spec_yaml = store.experiment(experiment)["spec_yaml"]
    import yaml

    variants = list((yaml.safe_load(spec_yaml) or {}).get("variants") or {})
    order = [v for v in variants if v in set(trials["variant"])] or sorted(trials["variant"].unique())
    return ReportData(experiment, trials, metrics, flags, reference=order[0], epochs=store.epochs_frame(experiment))


def variant_order(data: ReportData) -> list[str]:
    seen = list(dict.fromkeys(data.trials["variant"]))
    return [data.reference] + [v for v in seen if v != data.reference]


def summary_table(data: ReportData, split: str = "test") -> pd.DataFrame:
    """Rows: variant x horizon; columns: metric -> 'mean ± std' over seeds (and n seeds)."""
    m = data.metrics.merge(data.trials[["trial", "variant", "seed"]], on="trial")
    m = m[m["key"].str.startswith(f"{split}/")]
    m["name"] = m["key"].str[len(split) + 1:]
    rows = []
    for variant in variant_order(data):
        mv = m[m["variant"] == variant]
        labels = horizon_labels(mv["name"])
        for label in ["all", *labels]:
            row = {"variant": variant, "horizon": label}
            for metric in SUMMARY_METRICS:
                key = metric if label == "all" else f"{metric}_{label}"
                vals = mv.loc[mv["name"] == key, "value"].to_numpy(dtype=float)
                row[metric] = _mean_std(vals)
            row["best_baseline"] = _best_baseline(mv, label)
            row["seeds"] = int(mv.loc[mv["name"] == "crps", "trial"].nunique())
            rows.append(row)
    out = pd.DataFrame(rows)
    # Columns of baselines an experiment did not run (eval.baselines) are dropped, not shown as n/a.
    return out[[c for c in out.columns if not (out[c] == "n/a").all()]]


def backtest_table(data: ReportData, split: str = "test") -> pd.DataFrame:
    """Rows: variant x horizon; columns: backtest statistic -> 'mean ± std' over seeds (and n seeds).
    Empty when no trial was backtested (eval.backtest: false)."""
    m = data.metrics.merge(data.trials[["trial", "variant"]], on="trial")
    prefix = f"{split}/backtest_"
    m = m[m["key"].str.startswith(prefix)]
    m = m.assign(name=m["key"].str[len(prefix):])
    labels = sorted({k.removeprefix("trades_") for k in m["name"] if re.fullmatch(r"trades_\d+[mh]", k)},
                    key=_label_minutes)
    rows = []
    for variant in variant_order(data):
        mv = m[m["variant"] == variant]
        for label in labels:
            if not (mv["name"] == f"trades_{label}").any():
                continue
            row = {"variant": variant, "horizon": label}
            for stat in BACKTEST_METRICS:
                row[stat] = _mean_std(mv.loc[mv["name"] == f"{stat}_{label}", "value"].to_numpy(dtype=float))
            row["seeds"] = int(mv.loc[mv["name"] == f"trades_{label}", "trial"].nunique())
            rows.append(row)
    return pd.DataFrame(rows)


def _best_baseline(mv: pd.DataFrame, label: str) -> str:
    """The baseline with the lowest mean CRPS at this horizon ('all': the horizon mean)."""
    suffix = "" if label == "all" else f"_{label}"
    pat = re.compile(rf"crps_([a-z]+){re.escape(suffix)}")
    means = {m.group(1): v for k, v in mv.groupby("name")["value"].mean().items() if (m := pat.fullmatch(k))}
    return min(means, key=means.get) if means else "n/a"


def baseline_differences(data: ReportData, split: str = "test", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per variant, horizon and baseline: the paired CRPS difference model − baseline on identical
    samples (averaged over seeds), with a moving-block bootstrap 95% CI (one-day blocks)."""

    trials = data.trials[data.trials["status"] == "finished"]
    rows = []
    for variant in variant_order(data):
        preds = [load_predictions(p) for p in (Path(d) / "predictions.parquet" for d in
                                               trials.loc[trials["variant"] == variant, "dir"]) if p.exists()]
        preds = [p for p in preds if split in p.splits]
        if not preds or any(p.splits[split].ts.shape != preds[0].splits[split].ts.shape for p in preds):
            continue
        ref = preds[0]
        for name in sorted(ref.splits[split].baselines):
            for h, minutes in enumerate(ref.horizon_minutes):
                d, b = [], []
                for p in preds:
                    sp = p.splits[split]
                    ok = np.isfinite(sp.y[:, h])
                    cm = np.full(sp.y.shape[0], np.nan)
                    cb = np.full(sp.y.shape[0], np.nan)
                    cm[ok] = _crps_any(sp.y[ok, h], sp.q[ok, h], p.taus, crps_quantile)
                    cb[ok] = crps_quantile(sp.y[ok, h], sp.baselines[name][ok, h], p.taus)
                    d.append(cm - cb)
                    b.append(cb)
                d, b = np.nanmean(np.stack(d), axis=0), np.nanmean(np.stack(b), axis=0)  # (N,) over seeds
                ok = np.isfinite(d)
                lo, hi = block_bootstrap_ci(d[ok], np.mean, block=_day_block(ref.splits[split].ts[ok]),
                                            n_boot=n_boot, seed=seed)
                mean = float(d[ok].mean())
                rows.append({"variant": variant, "baseline": name, "horizon": horizon_label(minutes),
                             "seeds": len(preds), "rel_pct": 100 * mean / float(b[ok].mean()),
                             "ci_lo_pct": 100 * lo / float(b[ok].mean()), "ci_hi_pct": 100 * hi / float(b[ok].mean()),
                             "verdict": "model better" if hi < 0 else "model worse" if lo > 0 else "no clear difference"})
    return pd.DataFrame(rows)


def horizon_labels(keys) -> list[str]:
    """Horizon labels ('15m', '2h') present as crps_<label> keys, shortest first."""
    labels = {k.split("_", 1)[1] for k in keys if re.fullmatch(r"crps_\d+[mh]", k)}
    return sorted(labels, key=_label_minutes)


def _label_minutes(label: str) -> int:
    return int(label[:-1]) * (60 if label.endswith("h") else 1)


def _mean_std(vals: np.ndarray) -> str:
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return "n/a"
    if len(vals) == 1:
        return _fmt(vals[0])
    return f"{_fmt(vals.mean())} ± {_fmt(vals.std(ddof=1))}"


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e-2 and x != 0 else f"{x:.4f}"


def paired_differences(data: ReportData, split: str = "test", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per variant and horizon: mean paired CRPS difference vs the reference, its block-bootstrap CI, relative %."""

    trials = data.trials[data.trials["status"] == "finished"]
    by_key = {(r.variant, int(r.seed)): Path(r.dir) / "predictions.parquet" for r in trials.itertuples()}
    rows = []
    for variant in variant_order(data)[1:]:
        diffs, refs, ts_all = [], [], None
        for (v, s), path in by_key.items():
            if v != variant or (data.reference, s) not in by_key:
                continue
            ref_path = by_key[(data.reference, s)]
            if not path.exists() or not ref_path.exists():
                continue
            a, b = load_predictions(path), load_predictions(ref_path)
            pa, pb = a.splits.get(split), b.splits.get(split)
            if pa is None or pb is None or pa.y.shape != pb.y.shape or not np.array_equal(pa.ts, pb.ts):
                log.warning("%s seed %d: test samples differ from the reference's; not paired", variant, s)
                continue
            H = pa.y.shape[1]
            d = np.full(pa.y.shape, np.nan)
            r = np.full(pa.y.shape, np.nan)
            for h in range(H):
                ok = np.isfinite(pa.y[:, h]) & np.isfinite(pa.q[:, h]).all(1) & np.isfinite(pb.q[:, h]).all(1)
                # A point-head variant has one "quantile": score it as a degenerate forecast (CRPS = |y - m|).
                ca = _crps_any(pa.y[ok, h], pa.q[ok, h], a.taus, crps_quantile)
                cb = _crps_any(pb.y[ok, h], pb.q[ok, h], b.taus, crps_quantile)
                d[ok, h], r[ok, h] = ca - cb, cb
            diffs.append(d)
            refs.append(r)
            ts_all, horizons = pa.ts, a.horizon_minutes
        if not diffs:
            continue
        d = np.nanmean(np.stack(diffs), axis=0)          # (N, H), averaged over seeds
        r = np.nanmean(np.stack(refs), axis=0)
        block = _day_block(ts_all)
        for h, minutes in enumerate(horizons):
            ok = np.isfinite(d[:, h])
            lo, hi = block_bootstrap_ci(d[ok, h], np.mean, block=block, n_boot=n_boot, seed=seed)
            mean = float(d[ok, h].mean())
            rows.append({"variant": variant, "horizon": horizon_label(minutes), "seeds": len(diffs),
                         "n": int(ok.sum()), "mean_diff": mean, "ci_lo": lo, "ci_hi": hi,
                         "rel_pct": 100 * mean / float(r[ok, h].mean()),
                         "verdict": "worse" if lo > 0 else "better" if hi < 0 else "no clear difference"})
    return pd.DataFrame(rows)


def _crps_any(y, q, taus, crps_quantile):
    if q.shape[-1] == 1:
        return np.abs(y - q[:, 0])
    return crps_quantile(y, q, taus)


def _day_block(ts) -> int:
    ts = pd.DatetimeIndex(ts)
    if len(ts) < 2:
        return 1
    per_day = pd.Series(1, index=ts).groupby(ts.floor("D")).size().median()
    return max(1, int(per_day))


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return _fmt(v)
    return str(v)


def build_report(store, experiment: str, fmt: str = "md", n_boot: int = 1000, out: str | os.PathLike | None = None
                 ) -> Path:
    """Write the experiment's report and return its path: `out`, or `<store>/<experiment>/report.<fmt>`.
    Figures go to `<its folder>/<its stem>_figures/` (`report_figures/` beside report.md)."""
    if fmt not in ("md", "html"):
        raise DataError(f"--format must be md or html, not {fmt!r}")
    data = load(store, experiment)
    if out is None:
        # Into the store: refuse a read-only one before drawing anything, and say how to report elsewhere.
        store.ensure_writable(hint=f"; write the report elsewhere: nqexp report {experiment} --out DIR/report.{fmt}")
        path = store.experiment_dir(experiment) / f"report.{fmt}"
    else:
        path = Path(out).expanduser().absolute()
        if path.is_dir():
            raise DataError(f"--out {path} is a folder; give the report's file name, e.g. {path / f'report.{fmt}'}")
    try:
        return _write_report(data, path, fmt, n_boot)
    except OSError as exc:
        raise DataError(f"cannot write the report {path}: {exc.strerror or exc} ({exc.filename or path}); "
                        "point --out at a writable folder") from None


def _write_report(data: ReportData, path: Path, fmt: str, n_boot: int) -> Path:
    out_dir = path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    experiment = data.experiment
    summary = summary_table(data)
    paired = paired_differences(data, n_boot=n_boot)
    vs_baselines = baseline_differences(data, n_boot=n_boot)
    backtests = backtest_table(data)
    figures = _figures(data, out_dir / f"{path.stem}_figures")
    counts = data.trials["status"].value_counts().to_dict()
    parts = [
        f"# Experiment `{experiment}`\n",
        f"Trials: {len(data.trials)} ({', '.join(f'{v} {k}' for k, v in counts.items())}). "
        f"Reference variant for paired comparisons: `{data.reference}`.\n",
        "## Test metrics per variant (mean ± std over seeds)\n",
        "CRPS is in log-return units; `crpss_*` is the CRPS skill 1 − CRPS/CRPS_baseline against baselines "
        "fitted on train only (positive = better than the baseline).\n",
        _md_table(summary),
        "## Every variant against every baseline (identical test samples)\n",
        "rel_pct = mean over samples of CRPS(model) − CRPS(baseline), as % of the baseline's CRPS, averaged "
        "over seeds; CI = 95% moving-block bootstrap (one-day blocks). The model's claim is made against "
        "the best baseline (`best_baseline` above).\n",
        _md_table(vs_baselines),
        f"## Paired CRPS differences vs `{data.reference}` (identical test samples)\n",
        "mean_diff = mean over samples of CRPS(variant) − CRPS(reference), averaged over seeds; "
        "CI = 95% moving-block bootstrap (one-day blocks). Positive = the variant is worse.\n",
        _md_table(paired),
        "## Backtest of the test split (secondary)\n",
        "Long/short on the sign of the median, sized by the inverse 80% interval width, non-overlapping "
        "trades, net of costs (docs/metrics.md §10). Sharpe is annualized at the strategy's trade "
        "frequency, sharpe_daily on session-day P&L; max_dd and net_pnl in $ per average contract.\n",
        _md_table(backtests),
        "## Sanity gates\n",
        _md_table(data.flags.merge(data.trials[["trial", "variant"]], on="trial")[["variant", "trial", "gate", "reason"]]
                  if not data.flags.empty else data.flags),
        "## Figures\n",
    ]
    for title, fig in figures:
        parts.append(f"### {title}\n\n![{title}]({Path(os.path.relpath(fig, out_dir)).as_posix()})\n")
    text = "\n".join(parts)
    tmp = path.with_name(f".{path.name}.tmp")       # a full disk leaves the last report whole, not a torn one
    try:
        tmp.write_text(text if fmt == "md" else _to_html(text, out_dir))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _figures(data: ReportData, out: Path) -> list[tuple[str, Path]]:
    """Learning curves and backtest equity curves across variants (drawn here), then the
    reliability and CRPS-by-horizon figures per variant, from the first seed's saved plots."""
    figs = []
    curves = learning_curve_figure(data, out / "learning_curves.png")
    if curves is not None:
        figs.append(("learning curves: train loss and val CRPS per epoch (mean over seeds)", curves))
    equity = equity_figure(data, out / "backtest_equity.png")
    if equity is not None:
        figs.append(("backtest equity curves, test split (first seed)", equity))
    trials = data.trials[data.trials["status"] == "finished"]
    for variant in variant_order(data):
        rows = trials[trials["variant"] == variant].sort_values("seed")
        if rows.empty:
            continue
        plot_dir = Path(rows.iloc[0]["dir"]) / "plots"
        for name in ("test_reliability", "test_pit", "test_coverage_by_hour", "test_crps_by_horizon"):
            p = plot_dir / f"{name}.png"
            if p.exists():
                if not p.is_relative_to(out.parent):     # a report outside the store: a copy beside it
                    out.mkdir(parents=True, exist_ok=True)
                    p = Path(shutil.copyfile(p, out / f"{variant}_{name}.png"))
                figs.append((f"{variant}: {name.removeprefix('test_').replace('_', ' ')} (seed {rows.iloc[0]['seed']})", p))
    return figs


def _first_seed_dirs(data: ReportData) -> dict[str, tuple[int, Path]]:
    """variant -> (seed, trial dir) of its first finished seed, in variant order."""
    trials = data.trials[data.trials["status"] == "finished"]
    out = {}
    for variant in variant_order(data):
        rows = trials[trials["variant"] == variant].sort_values("seed")
        if not rows.empty:
            out[variant] = (int(rows.iloc[0]["seed"]), Path(rows.iloc[0]["dir"]))
    return out


def equity_figure(data: ReportData, path: Path) -> Path | None:
    """Cumulative net P&L of the test backtest against trade exit time, a panel per horizon and a
    line per variant (its first seed's backtest_equity.parquet); None when no trial has one."""

    curves = {}
    for variant, (seed, d) in _first_seed_dirs(data).items():
        p = d / "backtest_equity.parquet"
        if p.exists():
            curves[variant] = pd.read_parquet(p)
    labels = sorted({h for eq in curves.values() for h in eq["horizon"]}, key=_label_minutes)
    if not labels:
        return None
    fig, axes = plots._figure(len(labels), 1, figsize=(8.0, 2.6 * len(labels)))
    for ax, label in zip(axes[:, 0], labels):
        for variant, eq in curves.items():
            part = eq[eq["horizon"] == label]
            if len(part):
                ax.plot(part["exit_ts"], part["equity"], label=variant, lw=1.0)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(f"{label} horizon", fontsize=10)
        ax.set_ylabel("cumulative net P&L ($)")
    axes[0, 0].legend(fontsize=8)
    return plots._save(fig, path)


def learning_curve_figure(data: ReportData, path: Path) -> Path | None:
    """Train loss and val CRPS per epoch, a line per variant (mean over its seeds); None without
    epoch history in the store."""
    from matplotlib.ticker import MaxNLocator

    e = data.epochs
    keys = ("train/loss_epoch", "val/crps")
    if e.empty or not e["key"].isin(keys).any():
        return None
    e = e[e["key"].isin(keys)].merge(data.trials[["trial", "variant"]], on="trial")
    mean = e.groupby(["variant", "key", "epoch"])["value"].mean()
    fig, axes = plots._figure(1, 2, figsize=(10.0, 3.8))
    for ax, key, title in zip(axes[0], keys, ("train loss (epoch mean)", "val CRPS")):
        for variant in variant_order(data):
            if (variant, key) in mean.index.droplevel("epoch"):
                series = mean.loc[(variant, key)]
                ax.plot(series.index, series.to_numpy(), marker="o", ms=3, label=variant)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
    axes[0, 1].legend(fontsize=8)
    return plots._save(fig, path)


def _to_html(markdown_text: str, base: Path) -> str:
    """Markdown -> self-contained HTML: CommonMark plus tables (markdown-it-py, which rich already
    depends on), figures inlined as base64 so the file can be mailed or archived on its own."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable("table")

    def inline_image(match: re.Match) -> str:
        alt, src = match.group(1), match.group(2)
        data = base64.b64encode((base / src).read_bytes()).decode()
        return f"![{alt}](data:image/png;base64,{data})"

    body = md.render(re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", inline_image, markdown_text))
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}" \
            "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:900px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{body}</body></html>"


def wandb_report(data: ReportData, *, project: str, entity: str | None, summary: pd.DataFrame | None = None,
                 paired: pd.DataFrame | None = None):
    """The experiment's W&B Report object (built offline; `publish_wandb_report` saves it online).

    Blocks: the summary and paired tables as Markdown, then panels over this experiment's runs
    (grouped by variant): val CRPS curves, test CRPS and PICP80 per variant, gate flags.
    """
    import wandb_workspaces.reports.v2 as wr

    summary = summary_table(data) if summary is None else summary
    paired = paired_differences(data) if paired is None else paired
    runset = wr.Runset(project=project, entity=entity or "", name=data.experiment,
                       filters=f"Group = '{data.experiment}'", groupby=["job_type"])
    flags = data.flags if not data.flags.empty else pd.DataFrame(columns=["trial", "gate", "reason"])
    return wr.Report(
        project=project, entity=entity or "", title=f"nqexp: {data.experiment}",
        description=f"Ablation report for {data.experiment}; reference variant {data.reference}.",
        blocks=[
            wr.H1(text=f"Experiment {data.experiment}"),
            wr.MarkdownBlock(text="## Test metrics per variant (mean ± std over seeds)\n\n" + _md_table(summary)),
            wr.MarkdownBlock(text=f"## Paired CRPS differences vs {data.reference}\n\n" + _md_table(paired)),
            wr.PanelGrid(runsets=[runset], panels=[
                wr.LinePlot(title="val CRPS", x="Step", y=["val/crps"]),
                wr.BarPlot(title="test CRPS", metrics=["test/crps"]),
                wr.BarPlot(title="test PICP80", metrics=["test/picp80"]),
                wr.BarPlot(title="test CRPS skill vs climatology", metrics=["test/crpss_climatology"]),
            ]),
            wr.MarkdownBlock(text="## Sanity gates\n\n" + _md_table(flags)),
        ],
    )


def publish_wandb_report(store, experiment: str, *, project: str, entity: str | None) -> str:
    """Save the W&B Report online and return its URL. Needs WANDB_API_KEY (the Reports API is online-only)."""
    import os

    if not os.environ.get("WANDB_API_KEY"):
        raise CredentialsError("publishing a W&B Report needs WANDB_API_KEY in the environment "
                               "(the local report does not); the key is never stored in specs")
    report = wandb_report(load(store, experiment), project=project, entity=entity)
    report.save()
    return report.url
