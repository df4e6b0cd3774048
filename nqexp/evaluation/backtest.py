"""A deliberately simple trading backtest of the quantile forecasts (docs/metrics.md §10, secondary).

Rules, per horizon h:
- Signal: long when the predicted median is > 0, short when < 0, no trade when it is exactly 0.
- Size: proportional to 1 / (q_hi − q_lo), the inverse width of the 80% interval by default, so
  confident forecasts trade more. Sizes are normalized so the mean size over the trades taken
  is 1 contract (or `ref_width / width` when a reference width, e.g. the median train width, is
  given), then capped at `max_contracts`. Contracts are fractional: this is a research
  idealization, not an order generator. The normalization is one constant per run, so Sharpe
  and profit factor do not depend on it (up to the cap); dollar P&L and drawdown read as
  "per average contract".
- Non-overlap: trades are taken greedily in time order; a sample can open a trade only at or
  after the exit time of the previous trade (exit = origin + h minutes unless `exit_ts` says
  otherwise, e.g. when the h bars span the maintenance break). A sample with no signal, no
  target (NaN y), a non-finite forecast or a non-positive width opens nothing and blocks nothing.
- P&L: entry at the origin bar's close P0, exit at P0·exp(y), so points = P0·(exp(y) − 1) and
  gross $ = side · contracts · points · point_value. Costs per contract per round trip are
  2 × commission_per_side + slippage_ticks × tick_size × point_value.

Statistics (all in dollars of net P&L):
- sharpe: mean / std (ddof=1) of per-trade net P&L × sqrt(trades per year), where trades per
  year = n_trades / (span of the evaluated origins in years of 365.25 days). That is the
  annualization for the strategy's actual trade frequency.
- sharpe_daily: the same on net P&L summed per Globex session day (every session day of the
  evaluated origins, 0 on days without trades) × sqrt(252). A cross-check of `sharpe`.
- max_dd: the largest fall of cumulative net P&L from its running peak (the peak starts at 0).
- profit_factor: gross profits / gross losses of net trade P&L (inf with no losing trade).
- long_share: the share of the signal's trades that are long.

Buy-and-hold benchmark, per horizon (docs/metrics.md §10): in a drifting market "long when the
median > 0" is mostly long, and its Sharpe is the drift's, not skill. So every horizon also runs the
**always-long** book on the same samples, under the same non-overlap rule, horizon, sizing rule and
costs: `benchmark_sharpe` is its Sharpe (the same annualization), and `excess_sharpe` = sharpe −
benchmark_sharpe is what the signal's direction adds. Inverse-width sizing times volatility, which
pays in a drifting market whatever the direction; both books have it, so a model that is always
long takes exactly the benchmark's trades and sizes, and its excess is 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nqexp import calendar
from nqexp import metrics as M

YEAR_DAYS = 365.25
SESSIONS_PER_YEAR = 252


@dataclass(frozen=True)
class CostModel:
    """NQ contract economics and trading costs."""

    point_value: float = 20.0  # $ per index point per NQ contract
    tick_size: float = 0.25  # index points per tick ($5 per tick)
    commission_per_side: float = 2.0  # $ per contract per side, exchange and broker fees together
    slippage_ticks: float = 1.0  # ticks lost per round trip; docs/metrics.md §10 asks for at least 1

    @property
    def round_trip_cost(self) -> float:
        """$ per contract for one entry plus one exit."""
        return 2.0 * self.commission_per_side + self.slippage_ticks * self.tick_size * self.point_value


@dataclass
class BacktestResult:
    """One horizon's trades (one row each, in time order) and summary statistics."""

    horizon: str
    trades: pd.DataFrame
    stats: dict[str, float] = field(default_factory=dict)
    benchmark: pd.DataFrame | None = None  # the always-long book's trades, same columns


def select_non_overlapping(entry_ts, exit_ts, eligible) -> np.ndarray:
    """Indices of trades taken greedily in time order without overlap.

    entry_ts, exit_ts: (N,) datetime64, entry_ts sorted ascending; eligible: (N,) bool. A sample
    is taken when eligible and its entry is at or after the previous taken trade's exit.
    """
    entry = np.asarray(entry_ts, dtype="datetime64[ns]").astype(np.int64)
    exit_ = np.asarray(exit_ts, dtype="datetime64[ns]").astype(np.int64)
    if len(entry) > 1 and (np.diff(entry) < 0).any():
        raise ValueError("entry_ts must be sorted ascending")
    taken = []
    busy_until = np.iinfo(np.int64).min
    for i in np.nonzero(np.asarray(eligible, dtype=bool))[0]:
        if entry[i] >= busy_until:
            taken.append(i)
            busy_until = exit_[i]
    return np.asarray(taken, dtype=np.int64)


def max_drawdown(pnl) -> float:
    """Largest drop of cumulative P&L from its running peak, with the peak starting at 0 (>= 0)."""
    equity = np.concatenate([[0.0], np.cumsum(np.asarray(pnl, dtype=np.float64))])
    return float((np.maximum.accumulate(equity) - equity).max())


def profit_factor(pnl) -> float:
    """Sum of winning P&L / |sum of losing P&L|; inf with no loss, NaN with no trade."""
    pnl = np.asarray(pnl, dtype=np.float64)
    if len(pnl) == 0:
        return float("nan")
    gains, losses = pnl[pnl > 0].sum(), -pnl[pnl < 0].sum()
    if losses == 0:
        return float("inf") if gains > 0 else float("nan")
    return float(gains / losses)


def annualized_sharpe(pnl, periods_per_year: float) -> float:
    """mean / std (ddof=1) × sqrt(periods_per_year); NaN with < 2 periods or zero variance."""
    pnl = np.asarray(pnl, dtype=np.float64)
    if len(pnl) < 2 or not np.isfinite(periods_per_year) or periods_per_year <= 0:
        return float("nan")
    sd = pnl.std(ddof=1)
    return float(pnl.mean() / sd * np.sqrt(periods_per_year)) if sd > 0 else float("nan")


def backtest_horizon(
    ts,
    close,
    y_h,
    q_h,
    taus,
    minutes: int,
    costs: CostModel = CostModel(),
    *,
    lo_tau: float = 0.1,
    hi_tau: float = 0.9,
    exit_ts=None,
    ref_width: float | None = None,
    max_contracts: float = 5.0,
) -> BacktestResult:
    """Backtest one horizon.  ts (N,) sorted UTC origins, close (N,) origin prices (points),
    y_h (N,) realized log-returns, q_h (N, Q) quantiles, exit_ts (N,) optional exit times."""
    taus = np.asarray(taus, dtype=np.float64)
    ts = np.asarray(ts, dtype="datetime64[ns]")
    close = np.asarray(close, dtype=np.float64)
    y_h = np.asarray(y_h, dtype=np.float64)
    q_h = np.asarray(q_h, dtype=np.float64)
    med_i, lo_i, hi_i = (int(np.argmin(np.abs(taus - t))) for t in (0.5, lo_tau, hi_tau))
    for t, i in ((0.5, med_i), (lo_tau, lo_i), (hi_tau, hi_i)):
        if not np.isclose(taus[i], t):
            raise ValueError(f"quantile level {t} is not among taus {list(taus)}")
    exit_ts = ts + np.timedelta64(int(minutes), "m") if exit_ts is None else np.asarray(exit_ts, "datetime64[ns]")

    side = np.sign(q_h[:, med_i])  # (N,) +1 long, -1 short, 0 flat
    width = q_h[:, hi_i] - q_h[:, lo_i]  # (N,)
    tradable = np.isfinite(y_h) & np.isfinite(q_h).all(axis=1) & (width > 0) & np.isfinite(close) & (close > 0)
    idx = select_non_overlapping(ts, exit_ts, tradable & (side != 0))

    def sizes(taken):   # contracts proportional to the inverse 80% width, normalised over the trades taken
        raw = 1.0 / width[taken]  # (n,)
        contracts = ref_width * raw if ref_width is not None else (raw / raw.mean() if len(raw) else raw)
        return np.minimum(contracts, max_contracts)

    contracts = sizes(idx)
    trades = _trades(ts, exit_ts, close, y_h, idx, side[idx], contracts, costs)
    net = trades["net"].to_numpy()

    # The always-long benchmark: every tradable sample, long, sized by the same rule, same costs. The
    # sizing's volatility timing is in both books, so the excess is what the direction adds.
    bench_idx = select_non_overlapping(ts, exit_ts, tradable)
    bench = _trades(ts, exit_ts, close, y_h, bench_idx, np.ones(len(bench_idx)), sizes(bench_idx), costs)

    label = M.horizon_label(minutes)
    span_years = (ts.max() - ts.min()) / np.timedelta64(1, "D") / YEAR_DAYS if len(ts) else float("nan")
    days = np.unique(calendar.session_dates(ts)) if len(ts) else np.array([], "datetime64[ns]")
    daily = (pd.Series(net, index=calendar.session_dates(ts[idx])).groupby(level=0).sum()
             .reindex(days, fill_value=0.0)) if len(ts) else pd.Series(dtype=float)
    n = len(idx)

    def per_year(k: int) -> float:
        return k / span_years if span_years and span_years > 0 else float("nan")

    sharpe = annualized_sharpe(net, per_year(n))
    bench_sharpe = annualized_sharpe(bench["net"].to_numpy(), per_year(len(bench_idx)))
    stats = {
        "trades": float(n),
        "net_pnl": float(net.sum()),
        "gross_pnl": float(trades["gross"].sum()),
        "cost": float(trades["cost"].sum()),
        "mean_net": float(net.mean()) if n else float("nan"),
        "hit_rate": float((net > 0).mean()) if n else float("nan"),
        "avg_contracts": float(contracts.mean()) if n else float("nan"),
        "sharpe": sharpe,
        "sharpe_daily": annualized_sharpe(daily.to_numpy(), SESSIONS_PER_YEAR),
        "max_dd": max_drawdown(net),
        "profit_factor": profit_factor(net),
        "long_share": float((trades["side"] > 0).mean()) if n else float("nan"),
        "benchmark_sharpe": bench_sharpe,
        "excess_sharpe": sharpe - bench_sharpe,
        "benchmark_net_pnl": float(bench["net"].sum()),
    }
    return BacktestResult(label, trades, stats, benchmark=bench)


def _trades(ts, exit_ts, close, y_h, idx, side, contracts, costs: CostModel) -> pd.DataFrame:
    """One row per taken trade: entry at the origin close P0, exit at P0 * exp(y), net of costs."""
    entry = close[idx]
    exit_price = entry * np.exp(y_h[idx])
    points = exit_price - entry
    gross = side * contracts * points * costs.point_value
    cost = contracts * costs.round_trip_cost
    return pd.DataFrame({
        "entry_ts": ts[idx], "exit_ts": exit_ts[idx], "side": np.asarray(side).astype(np.int8),
        "contracts": contracts, "entry_price": entry, "exit_price": exit_price, "points": points,
        "gross": gross, "cost": cost, "net": gross - cost,
    })


def backtest(
    ts,
    close,
    y,
    q,
    taus,
    horizon_minutes: Sequence[int],
    costs: CostModel = CostModel(),
    **kw,
) -> dict[str, BacktestResult]:
    """Backtest every horizon.  y (N, H), q (N, H, Q); see backtest_horizon for the rules and kw."""
    y, q = np.asarray(y), np.asarray(q)
    exit_ts = kw.pop("exit_ts", None)  # (N, H) if given
    return {
        M.horizon_label(m): backtest_horizon(ts, close, y[:, h], q[:, h, :], taus, m, costs,
                                             exit_ts=None if exit_ts is None else np.asarray(exit_ts)[:, h], **kw)
        for h, m in enumerate(horizon_minutes)
    }


def backtest_metrics(results: Mapping[str, BacktestResult]) -> dict[str, float]:
    """Flat keys `backtest_{stat}_{label}`, e.g. `backtest_sharpe_60m`, `backtest_max_dd_4h`; prefix
    `split/` yourself (a trial stores `test/backtest_...`)."""
    return {f"backtest_{name}_{label}": value for label, r in results.items() for name, value in r.stats.items()}


EQUITY_COLUMNS = ("horizon", "book", "entry_ts", "exit_ts", "side", "contracts", "net", "equity")
BOOKS = ("signal", "buy_and_hold")


def equity_frame(results: Mapping[str, BacktestResult]) -> pd.DataFrame:
    """Every horizon's trades in time order with the cumulative net P&L after each (`equity`, $), for
    the signal and for the buy-and-hold benchmark (`book`): the curves a trial saves as
    backtest_equity.parquet and the report draws."""
    parts = []
    for label, r in results.items():
        for book, t in zip(BOOKS, (r.trades, r.benchmark)):
            if t is None:
                continue
            parts.append(pd.DataFrame({
                "horizon": label, "book": book, "entry_ts": t["entry_ts"], "exit_ts": t["exit_ts"],
                "side": t["side"], "contracts": t["contracts"], "net": t["net"], "equity": t["net"].cumsum(),
            }))
    if not parts:
        return pd.DataFrame({c: [] for c in EQUITY_COLUMNS})
    return pd.concat(parts, ignore_index=True)[list(EQUITY_COLUMNS)]
