"""Evaluation plots as PNG files (docs/metrics.md §4): each function writes one figure and returns its path.

matplotlib is imported inside the functions, and figures are built with `matplotlib.figure.Figure`
(Agg canvas) rather than pyplot, so no global backend or figure state is touched and the
functions are safe in headless Ray workers. Returns are drawn in basis points (1 bp = 1e-4
log-return). Samples whose target is NaN are left out per horizon, as in evaluate.py.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nqexp import metrics as M
from nqexp.calendar import et_index

BP = 1e4  # log-return -> basis points



def _figure(nrows=1, ncols=1, figsize=(7.0, 4.5)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _horizon_colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.05, 0.85, n)]


def _valid(y_h, q_h):
    return np.isfinite(y_h) & np.isfinite(q_h).all(axis=1)


def _tau_index(taus, tau) -> int:
    hit = np.nonzero(np.isclose(np.asarray(taus), tau))[0]
    if not len(hit):
        raise ValueError(f"quantile level {tau} is not among taus {list(taus)}")
    return int(hit[0])


def reliability_diagram(path: str | os.PathLike, y, q, taus, horizon_minutes: Sequence[int],
                        title: str = "Reliability diagram") -> Path:
    """Empirical coverage mean(y ≤ q_τ) against nominal τ, one line per horizon.

    y: (N, H); q: (N, H, Q). Points on the diagonal are calibrated; below it the quantile is too low.
    """
    y, q, taus = np.asarray(y, float), np.asarray(q, float), np.asarray(taus, float)
    fig, axes = _figure(figsize=(5.5, 5.0))
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="ideal")
    for h, (minutes, color) in enumerate(zip(horizon_minutes, _horizon_colors(len(horizon_minutes)))):
        ok = _valid(y[:, h], q[:, h])
        if ok.any():
            ax.plot(taus, M.coverage(y[ok, h], q[ok, h]), marker="o", color=color,
                    label=f"{M.horizon_label(minutes)} (CE {M.calibration_error(y[ok, h], q[ok, h], taus):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal quantile level τ",
           ylabel="empirical coverage  P(y ≤ q_τ)", title=title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, title="horizon (calib. error)", title_fontsize=8)
    return _save(fig, path)


def pit_histogram(path: str | os.PathLike, y, q, taus, horizon_minutes: Sequence[int],
                  title: str = "PIT histogram", seed: int = 0) -> Path:
    """PIT density per horizon, with bins at the quantile levels (exact for a calibrated forecast,
    see metrics.pit_histogram); the dashed line at 1 is the uniform target. A U shape means
    intervals too narrow, a hump means too wide, a slope means bias."""
    y, q, taus = np.asarray(y, float), np.asarray(q, float), np.asarray(taus, float)
    n_h = len(horizon_minutes)
    ncols = min(n_h, 3)
    nrows = -(-n_h // ncols)
    fig, axes = _figure(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows))
    edges = np.r_[0.0, taus, 1.0]
    for h, minutes in enumerate(horizon_minutes):
        ax = axes[h // ncols, h % ncols]
        ok = _valid(y[:, h], q[:, h])
        _, dens = M.pit_histogram(M.pit_values(y[ok, h], q[ok, h], taus, seed=seed), bins=edges)
        ax.bar(edges[:-1], dens, width=np.diff(edges), align="edge", color="tab:blue",
               edgecolor="white", alpha=0.8, label="model")
        ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="uniform")
        ax.set(xlim=(0, 1), title=f"{M.horizon_label(minutes)}  (n={int(ok.sum())})", xlabel="PIT",
               ylabel="density")
        if h == 0:
            ax.legend(fontsize=8)
    for k in range(n_h, nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)


def coverage_by_time_of_day(path: str | os.PathLike, ts, y, q, taus, horizon_minutes: Sequence[int],
                            lo_tau: float = 0.1, hi_tau: float = 0.9,
                            title: str = "Interval coverage by time of day") -> Path:
    """Coverage of the [q_lo, q_hi] interval (80% by default) per New York hour of the forecast
    origin, one line per horizon, hours in Globex session order (18:00 ET first)."""
    y, q = np.asarray(y, float), np.asarray(q, float)
    lo, hi = _tau_index(taus, lo_tau), _tau_index(taus, hi_tau)
    hour = np.asarray(et_index(ts).hour)
    order = [(18 + k) % 24 for k in range(24)]  # session starts 18:00 ET
    fig, axes = _figure(figsize=(9.0, 4.5))
    ax = axes[0, 0]
    nominal = hi_tau - lo_tau
    ax.axhline(nominal, color="k", linestyle="--", linewidth=1, label=f"nominal {nominal:.0%}")
    for h, (minutes, color) in enumerate(zip(horizon_minutes, _horizon_colors(len(horizon_minutes)))):
        ok = _valid(y[:, h], q[:, h])
        inside = (y[:, h] >= q[:, h, lo]) & (y[:, h] <= q[:, h, hi])
        frame = pd.DataFrame({"hour": hour[ok], "inside": inside[ok]})
        cov = frame.groupby("hour")["inside"].mean().reindex(order)
        ax.plot(np.arange(24), cov.to_numpy(), marker=".", color=color, label=M.horizon_label(minutes))
    ax.set_xticks(np.arange(24), [f"{hr:02d}" for hr in order], fontsize=8)
    ax.set(ylim=(0, 1.02), xlabel="hour of forecast origin (America/New_York, session order)",
           ylabel=f"PICP{round(nominal * 100)}  share of y in [q{lo_tau:g}, q{hi_tau:g}]", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=3, loc="lower right")
    return _save(fig, path)


def fan_chart(path: str | os.PathLike, ts, y, q, taus, horizon_minutes: Sequence[int], horizon: int = 0,
              start=None, days: float = 7.0, title: str | None = None) -> Path:
    """Quantile fan over `days` of forecast origins from `start` (default: the first origin) for
    one horizon index, with the realized forward return drawn on top. Bands join symmetric
    quantile pairs (5–95, 10–90, 25–75); gaps longer than 30 minutes (maintenance break,
    weekend) are left blank instead of being bridged."""
    y, q, taus = np.asarray(y, float), np.asarray(q, float), np.asarray(taus, float)
    t = et_index(ts).tz_localize(None)
    t0 = t[0] if start is None else pd.Timestamp(start)
    sel = np.nonzero((t >= t0) & (t < t0 + pd.Timedelta(days=days)))[0]
    if len(sel) == 0:
        raise ValueError(f"no forecast origin between {t0} and {days} days later")
    tt = t[sel].to_numpy()
    yy = y[sel, horizon] * BP  # (n,)
    qq = q[sel, horizon, :] * BP  # (n, Q)
    # Insert a NaN row after each long gap so lines and bands break there.
    gap = np.nonzero(np.diff(tt) > np.timedelta64(30, "m"))[0] + 1
    tt = np.insert(tt, gap, tt[gap - 1] + np.timedelta64(1, "m"))
    yy = np.insert(yy, gap, np.nan)
    qq = np.insert(qq, gap, np.nan, axis=0)
    fig, axes = _figure(figsize=(11.0, 4.5))
    ax = axes[0, 0]
    n_q = len(taus)
    blues = ["#9ecae1", "#6baed6", "#3182bd", "#08519c"]  # outer band lightest
    for k in range(n_q // 2):
        j = n_q - 1 - k
        ax.fill_between(tt, qq[:, k], qq[:, j], color=blues[min(k, len(blues) - 1)], linewidth=0,
                        label=f"{taus[k]:g}–{taus[j]:g}")
    if np.isclose(taus, 0.5).any():
        ax.plot(tt, qq[:, _tau_index(taus, 0.5)], color="#08306b", linewidth=0.6, label="median")
    # Realized returns as dots (a line through thousands of bars hides the fan); the ones outside
    # the outer band are drawn in red so misses stand out.
    outside = (yy < qq[:, 0]) | (yy > qq[:, -1])
    ax.scatter(tt[~outside], yy[~outside], s=2, color="k", linewidths=0, label="realized", zorder=3)
    ax.scatter(tt[outside], yy[outside], s=4, color="tab:red", linewidths=0, zorder=3,
               label=f"realized outside {taus[0]:g}–{taus[-1]:g}")
    label = M.horizon_label(horizon_minutes[horizon])
    ax.set(xlabel="forecast origin (America/New_York)", ylabel=f"{label} forward log-return (bp)",
           title=title or f"Quantile fan chart, {label} horizon, {days:g} days from {t0:%Y-%m-%d}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=3, loc="upper right", markerscale=3)
    fig.autofmt_xdate()
    return _save(fig, path)


def crps_by_horizon(path: str | os.PathLike, table: pd.DataFrame, split: str,
                    title: str | None = None) -> Path:
    """Grouped bars of CRPS per horizon for the model and each baseline, from the long metrics
    table of evaluate.evaluate_split_table, with the model's skill vs climatology written above."""
    part = table[(table["split"] == split) & (table["metric"] == "crps") & (table["horizon"] != "all")]
    if part.empty:
        raise ValueError(f"no crps rows for split {split!r} in the metrics table")
    wide = part.pivot_table(index="horizon", columns="source", values="value", sort=False)
    labels = list(dict.fromkeys(part["horizon"]))  # horizon order of the table
    wide = wide.reindex(labels)
    sources = ["model"] + sorted(c for c in wide.columns if c != "model")
    colors = {"model": "tab:blue", "climatology": "0.6", "volscaled": "tab:orange"}
    fig, axes = _figure(figsize=(7.5, 4.5))
    ax = axes[0, 0]
    x = np.arange(len(labels))
    width = 0.8 / len(sources)
    for k, source in enumerate(sources):
        if source in wide:
            ax.bar(x + (k - (len(sources) - 1) / 2) * width, wide[source].to_numpy() * BP, width,
                   label=source, color=colors.get(source))
    skill = table[(table["split"] == split) & (table["metric"] == "crpss_climatology")
                  & (table["source"] == "model")].set_index("horizon")["value"]
    if "model" in wide:
        for i, label in enumerate(labels):
            if label in skill.index and np.isfinite(skill[label]):
                top = np.nanmax(wide.loc[label].to_numpy()) * BP
                ax.annotate(f"{skill[label]:+.1%}", (x[i], top), ha="center", va="bottom", fontsize=8,
                            xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, labels)
    ax.set(xlabel="horizon", ylabel="CRPS (bp, lower is better)",
           title=title or f"CRPS by horizon ({split}); labels: model skill vs climatology")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


LEARNING_KEYS = {"train/loss_epoch": "train loss (epoch mean)", "val/crps": "val CRPS"}
ROW_TITLES = {"quantile": "quantile heads", "point": "point head (MSE loss, CRPS of the mean)"}


def learning_curves(path: str | os.PathLike, curves: pd.DataFrame, heads: Mapping[str, str] | None = None) -> Path:
    """Train loss and val CRPS per epoch (LEARNING_KEYS), a line per variant; see `learning_curve_axes`."""
    return _save(learning_curve_axes(curves, heads)[0], path)


def learning_curve_axes(curves: pd.DataFrame, heads: Mapping[str, str] | None = None):
    """(figure, {"quantile" | "point": its row of axes}) of the learning curves.

    curves: variant, key, epoch, value (a variant's mean over its seeds), variants in drawing order.
    heads: variant -> model.head. A point head's loss is an MSE and its CRPS a degenerate forecast's
    (about 0.8 in sigma-hat units, where quantile heads sit near 0.2), so point-head variants get a
    row of panels of their own: on one axis they flatten every quantile variant into one line.
    A variant keeps its colour in both rows.
    """
    from matplotlib import rcParams
    from matplotlib.ticker import MaxNLocator

    heads = dict(heads or {})
    order = list(dict.fromkeys(curves["variant"]))
    colors = dict(zip(order, itertools.cycle(rcParams["axes.prop_cycle"].by_key()["color"])))
    rows = {head: [v for v in order if (heads.get(v, "quantile") == "point") == (head == "point")]
            for head in ("quantile", "point")}
    rows = {head: variants for head, variants in rows.items() if variants}
    fig, axes = _figure(len(rows), len(LEARNING_KEYS), figsize=(10.0, 3.8 * len(rows)))
    for (head, variants), row in zip(rows.items(), axes):
        for ax, (key, title) in zip(row, LEARNING_KEYS.items()):
            for variant in variants:
                series = curves[(curves["variant"] == variant) & (curves["key"] == key)].sort_values("epoch")
                if len(series):
                    ax.plot(series["epoch"], series["value"], marker="o", ms=3, color=colors[variant], label=variant)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{title}, {ROW_TITLES[head]}" if len(rows) > 1 else title, fontsize=10)
        row[-1].legend(fontsize=8)
    return fig, {head: list(row) for head, row in zip(rows, axes)}


def plot_all(out_dir: str | os.PathLike, split: str, ts, y, q, taus, horizon_minutes: Sequence[int],
             table: pd.DataFrame) -> Mapping[str, Path]:
    """Write the five evaluation figures of one split into out_dir as `{split}_{name}.png`."""
    out = Path(out_dir)
    return {
        "reliability": reliability_diagram(out / f"{split}_reliability.png", y, q, taus, horizon_minutes,
                                           title=f"Reliability diagram ({split})"),
        "pit": pit_histogram(out / f"{split}_pit.png", y, q, taus, horizon_minutes,
                             title=f"PIT histogram ({split})"),
        "coverage_tod": coverage_by_time_of_day(out / f"{split}_coverage_by_hour.png", ts, y, q, taus,
                                                horizon_minutes, title=f"80% interval coverage by hour ({split})"),
        "fan": fan_chart(out / f"{split}_fan.png", ts, y, q, taus, horizon_minutes),
        "crps": crps_by_horizon(out / f"{split}_crps_by_horizon.png", table, split),
    }


def price_fan(path: str | os.PathLike, close: float, q, taus, horizon_minutes: Sequence[int], *,
              title: str = "", baselines: Mapping[str, np.ndarray] | None = None) -> Path:
    """Fan chart of one forecast's price paths: last close at 0, then close x exp(q) per horizon.

    q: (H, Q) log-return quantiles; the bands join the symmetric quantile pairs (e.g. 5-95%),
    the line is the median; baselines (name -> (H, Q)) are drawn as dashed medians and 80% bounds.
    """
    taus = np.asarray(taus, dtype=np.float64)
    x = np.concatenate([[0], np.asarray(horizon_minutes, dtype=np.float64)])
    levels = close * np.exp(np.vstack([np.zeros((1, len(taus))), np.asarray(q, dtype=np.float64)]))  # (H+1, Q)
    fig, axes = _figure()
    ax = axes[0, 0]
    n = len(taus)
    for k in range(n // 2):
        ax.fill_between(x, levels[:, k], levels[:, n - 1 - k], color="tab:blue", alpha=0.15 + 0.15 * k, lw=0,
                        label=f"{taus[k]:.0%}-{taus[n - 1 - k]:.0%}")
    med = int(np.argmin(np.abs(taus - 0.5)))
    ax.plot(x, levels[:, med], color="tab:blue", lw=1.5, label="model median")
    for (name, bq), color in zip((baselines or {}).items(), ("tab:gray", "tab:orange", "tab:green", "tab:red")):
        bl = close * np.exp(np.vstack([np.zeros((1, n)), np.asarray(bq, dtype=np.float64)]))
        lo, hi = int(np.argmin(np.abs(taus - 0.1))), int(np.argmin(np.abs(taus - 0.9)))
        ax.plot(x, bl[:, lo], color=color, ls="--", lw=0.8, label=f"{name} {taus[lo]:.0%}/{taus[hi]:.0%}")
        ax.plot(x, bl[:, hi], color=color, ls="--", lw=0.8)
    ax.axhline(close, color="k", lw=0.5)
    ax.set_xlabel("minutes ahead")
    ax.set_ylabel("price")
    ax.set_title(title or "forecast fan")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)
