"""Backtest arithmetic and the non-overlap rule, checked against hand-computed cases."""

import numpy as np
import pytest

from nqexp.evaluation import backtest as B

TAUS = np.array([0.1, 0.5, 0.9])
T0 = np.datetime64("2024-03-05T15:00", "ns")  # 10:00 ET, a Tuesday


def _ts(n, step_min=5):
    return T0 + np.arange(n) * np.timedelta64(step_min, "m")


def _q(median, width=0.002):
    """(N, 3) quantiles with the given medians and 80% width."""
    m = np.asarray(median, dtype=float)
    return np.column_stack([m - width / 2, m, m + width / 2])


def test_round_trip_cost_is_two_commissions_plus_slippage():
    c = B.CostModel(point_value=20.0, tick_size=0.25, commission_per_side=2.0, slippage_ticks=1.0)
    assert c.round_trip_cost == 2 * 2.0 + 1 * 0.25 * 20.0 == 9.0


def test_single_long_trade_pnl_by_hand():
    # Entry 10000, realized log-return ln(10010/10000): +10 points = $200 gross on 1 contract,
    # minus $9 round-trip cost = $191.
    y = np.array([np.log(10010 / 10000)])
    r = B.backtest_horizon(_ts(1), [10000.0], y, _q([0.001]), TAUS, 15)
    t = r.trades.iloc[0]
    assert t.side == 1 and t.contracts == 1.0
    assert t.points == pytest.approx(10.0, abs=1e-9)
    assert t.gross == pytest.approx(200.0, abs=1e-7)
    assert t.cost == 9.0
    assert t.net == pytest.approx(191.0, abs=1e-7)


def test_single_short_trade_pays_the_move_and_the_costs():
    y = np.array([np.log(10010 / 10000)])
    costs = B.CostModel(commission_per_side=1.5, slippage_ticks=2.0)  # 3 + 2*0.25*20 = $13
    r = B.backtest_horizon(_ts(1), [10000.0], y, _q([-0.001]), TAUS, 15, costs)
    assert r.trades.iloc[0].side == -1
    assert r.trades.iloc[0].net == pytest.approx(-200.0 - 13.0, abs=1e-7)


def test_size_is_inverse_width_normalized_to_mean_one_contract():
    # Two non-overlapping trades with widths 0.001 and 0.002: raw sizes 1000 and 500,
    # normalized by their mean 750 -> 4/3 and 2/3 contracts; costs scale with contracts.
    q = np.vstack([_q([0.001], 0.001), _q([0.001], 0.002)])
    ts = np.array([T0, T0 + np.timedelta64(15, "m")])
    r = B.backtest_horizon(ts, [10000.0, 10000.0], [0.0, 0.0], q, TAUS, 15)
    np.testing.assert_allclose(r.trades["contracts"], [4 / 3, 2 / 3], rtol=1e-12)
    np.testing.assert_allclose(r.trades["cost"], [12.0, 6.0], rtol=1e-12)
    # With a reference width the size is ref / width, capped at max_contracts.
    r = B.backtest_horizon(ts, [1e4, 1e4], [0.0, 0.0], q, TAUS, 15, ref_width=0.004, max_contracts=3.0)
    np.testing.assert_allclose(r.trades["contracts"], [3.0, 2.0], rtol=1e-12)


def test_trades_never_overlap_and_start_at_or_after_the_previous_exit():
    # Origins every 5 minutes, 15-minute horizon: trades at minutes 0, 15, 30 (not 5 or 10).
    ts = _ts(7)
    r = B.backtest_horizon(ts, np.full(7, 1e4), np.full(7, 1e-4), _q(np.full(7, 1e-3)), TAUS, 15)
    assert list((r.trades["entry_ts"] - T0).dt.total_seconds() / 60) == [0, 15, 30]
    assert (r.trades["entry_ts"].to_numpy()[1:] >= r.trades["exit_ts"].to_numpy()[:-1]).all()


def test_samples_without_signal_or_target_neither_trade_nor_block():
    ts = _ts(7)
    med = np.full(7, 1e-3)
    med[3] = 0.0  # minute 15: flat median -> no trade, so minute 20 opens next
    y = np.full(7, 1e-4)
    y[0] = np.nan  # minute 0: dropped target -> the first trade opens at minute 5
    r = B.backtest_horizon(ts, np.full(7, 1e4), y, _q(med), TAUS, 15)
    assert list((r.trades["entry_ts"] - T0).dt.total_seconds() / 60) == [5, 20]


def test_explicit_exit_times_extend_the_blocked_period():
    # The first trade's 3 bars span the maintenance break: it exits 75 minutes later, not 15.
    ts = _ts(20)
    exit_ts = ts + np.timedelta64(15, "m")
    exit_ts[0] = ts[0] + np.timedelta64(75, "m")
    r = B.backtest_horizon(ts, np.full(20, 1e4), np.full(20, 1e-4), _q(np.full(20, 1e-3)), TAUS, 15,
                           exit_ts=exit_ts)
    assert list((r.trades["entry_ts"] - T0).dt.total_seconds() / 60) == [0, 75, 90]


def test_max_drawdown_and_profit_factor_by_hand():
    pnl = [100.0, -50.0, -80.0, 60.0, -10.0]  # equity 100, 50, -30, 30, 20: peak 100 -> trough -30
    assert B.max_drawdown(pnl) == 130.0
    assert B.profit_factor(pnl) == pytest.approx(160.0 / 140.0)
    assert B.max_drawdown([-10.0, 5.0]) == 10.0  # the peak starts at 0, before any trade
    assert B.profit_factor([5.0, 1.0]) == float("inf")
    assert np.isnan(B.profit_factor([]))


def test_sharpe_is_annualized_by_trades_per_year():
    pnl = np.array([10.0, -5.0, 20.0, 0.0])
    per_trade = pnl.mean() / pnl.std(ddof=1)
    assert B.annualized_sharpe(pnl, 400.0) == pytest.approx(per_trade * 20.0)


def test_backtest_sharpe_uses_the_span_of_the_evaluated_period():
    # 4 trades of a 60m horizon over origins spanning exactly 365.25/100 days: 4 trades in 0.01
    # years = 400 trades per year, so sharpe = per-trade Sharpe x 20.
    span = np.timedelta64(315576, "s")  # 3.6525 days = 0.01 years exactly
    ts = np.array([T0, T0 + np.timedelta64(60, "m"), T0 + np.timedelta64(120, "m"), T0 + span])
    y = np.log(1 + np.array([10.0, -5.0, 20.0, 0.0]) / 1e4)  # points 10, -5, 20, 0 at price 1e4
    costs = B.CostModel(commission_per_side=0.0, slippage_ticks=0.0)
    r = B.backtest_horizon(ts, np.full(4, 1e4), y, _q(np.full(4, 1e-3)), TAUS, 60, costs)
    net = r.trades["net"].to_numpy()
    np.testing.assert_allclose(net, [200.0, -100.0, 400.0, 0.0], atol=1e-7)
    assert r.stats["sharpe"] == pytest.approx(net.mean() / net.std(ddof=1) * 20.0, rel=1e-9)
    assert r.stats["trades"] == 4 and r.stats["hit_rate"] == 0.5


def test_daily_sharpe_counts_session_days_without_trades_as_zero():
    # Origins over three session days, trades on the first day only.
    ts = np.array([T0, T0 + np.timedelta64(1, "D"), T0 + np.timedelta64(2, "D")])
    med = np.array([1e-3, 0.0, 0.0])  # only the first origin trades
    costs = B.CostModel(commission_per_side=0.0, slippage_ticks=0.0)
    r = B.backtest_horizon(ts, np.full(3, 1e4), np.full(3, np.log(1.001)), _q(med), TAUS, 15, costs)
    daily = np.array([r.trades["net"].iloc[0], 0.0, 0.0])
    assert r.stats["sharpe_daily"] == pytest.approx(daily.mean() / daily.std(ddof=1) * np.sqrt(252))


def test_a_perfect_sign_forecast_earns_and_a_costly_coin_flip_loses():
    rng = np.random.default_rng(0)
    n = 4000
    ts = _ts(n)
    y = rng.normal(0, 1e-3, size=n)
    close = 1.8e4 * np.exp(np.cumsum(rng.normal(0, 1e-4, size=n)))
    good = B.backtest_horizon(ts, close, y, _q(np.sign(y) * 1e-4), TAUS, 15)
    assert good.stats["hit_rate"] > 0.95 and good.stats["profit_factor"] > 10 and good.stats["sharpe"] > 5
    coin = B.backtest_horizon(ts, close, y, _q(rng.choice([-1e-4, 1e-4], size=n)), TAUS, 15,
                              B.CostModel(commission_per_side=50.0))
    assert coin.stats["net_pnl"] < 0 and coin.stats["max_dd"] > 0


def test_backtest_metrics_keys_per_horizon():
    rng = np.random.default_rng(1)
    n = 300
    y = rng.normal(0, 1e-3, size=(n, 2))
    q = np.stack([_q(rng.normal(0, 1e-4, size=n)), _q(rng.normal(0, 1e-4, size=n))], axis=1)  # (N, 2, 3)
    res = B.backtest(_ts(n), np.full(n, 1.8e4), y, q, TAUS, [15, 120])
    keys = B.backtest_metrics(res)
    for label in ("15m", "2h"):
        for stat in ("sharpe", "sharpe_daily", "max_dd", "profit_factor", "trades", "net_pnl", "cost"):
            assert f"backtest_{stat}_{label}" in keys
    assert keys["backtest_trades_2h"] < keys["backtest_trades_15m"]


def test_equity_frame_is_each_horizons_cumulative_net_pnl_in_trade_order():
    rng = np.random.default_rng(2)
    n = 200
    y = rng.normal(0, 1e-3, size=(n, 2))
    q = np.stack([_q(rng.normal(0, 1e-4, size=n)), _q(rng.normal(0, 1e-4, size=n))], axis=1)  # (N, 2, 3)
    res = B.backtest(_ts(n), np.full(n, 1.8e4), y, q, TAUS, [15, 60])
    eq = B.equity_frame(res)
    for label, r in res.items():
        part = eq[(eq["horizon"] == label) & (eq["book"] == "signal")]
        assert len(part) == r.stats["trades"]
        assert part["equity"].iloc[-1] == pytest.approx(r.stats["net_pnl"])
        assert part["exit_ts"].is_monotonic_increasing
        bench = eq[(eq["horizon"] == label) & (eq["book"] == "buy_and_hold")]
        assert (bench["side"] == 1).all() and bench["equity"].iloc[-1] == pytest.approx(r.stats["benchmark_net_pnl"])
    assert list(B.equity_frame({}).columns) == list(B.EQUITY_COLUMNS)


def test_score_trial_backtests_the_test_split_by_default(tmp_path):
    """A real (tiny, in-process) train + score_trial: test/backtest_* metrics and the equity Parquet."""
    pytest.importorskip("torch")
    import pandas as pd

    from nqexp.evaluation.baselines import ClimatologyBaseline
    from nqexp.evaluation.evaluate import EvalConfig
    from nqexp.experiment.pipeline import PreparedData, score_trial
    from nqexp.experiment.track import NullTracker
    from nqexp.model.train import train
    from tests.test_train import synthetic_dataset, tiny_model, tiny_train

    ds = {"train": synthetic_dataset(256, 0), "val": synthetic_dataset(96, 1), "test": synthetic_dataset(160, 2)}
    model_cfg = tiny_model()
    clim = ClimatologyBaseline(model_cfg.quantiles).fit(ds["train"].y)
    baselines = {s: {"climatology": np.broadcast_to(clim.q_[None], (len(ds[s]), *clim.q_.shape)).copy()}
                 for s in ("val", "test")}
    rng = np.random.default_rng(3)
    close = {s: 2.0e4 * np.exp(np.cumsum(rng.normal(0, 1e-4, len(ds[s])))) for s in ("val", "test")}
    data = PreparedData(key="k", datasets=ds, horizon_minutes=(15, 30), names=ds["train"].names,
                        baselines=baselines, close=close)
    result = train(model_cfg, tiny_train(max_epochs=1), {"train": ds["train"], "val": ds["val"]}, NullTracker(),
                   tmp_path / "ckpt", seed=0, horizon_minutes=(15, 30))
    assert EvalConfig().backtest
    flat, _, _, _ = score_trial(model_cfg, result.checkpoint, data, tmp_path / "trial", EvalConfig())
    for label in ("15m", "30m"):
        for stat in ("sharpe", "max_dd", "profit_factor", "trades"):
            assert np.isfinite(flat[f"test/backtest_{stat}_{label}"]), (stat, label)
        assert flat[f"test/backtest_trades_{label}"] >= 2
    assert not any(k.startswith("val/backtest") for k in flat)
    eq = pd.read_parquet(tmp_path / "trial" / "backtest_equity.parquet")
    assert set(eq["horizon"]) == {"15m", "30m"}
    last = eq[eq["book"] == "signal"].groupby("horizon")["equity"].last()
    assert last["15m"] == pytest.approx(flat["test/backtest_net_pnl_15m"])
    off, _, _, _ = score_trial(model_cfg, result.checkpoint, data, tmp_path / "off", EvalConfig(backtest=False))
    assert not any("backtest" in k for k in off) and not (tmp_path / "off" / "backtest_equity.parquet").exists()


def test_an_always_long_model_has_no_excess_over_buy_and_hold():
    """In a market that drifts up, a median that is always positive earns the drift: its Sharpe is
    the benchmark's, and the excess is 0, whatever the drift and however its sizes vary."""
    rng = np.random.default_rng(4)
    n = 3000
    ts = _ts(n)
    y = rng.normal(2e-4, 1e-3, size=n)  # a strong upward drift
    close = 1.8e4 * np.exp(np.cumsum(y))
    med = np.full(n, 1e-4)
    width = np.exp(rng.normal(np.log(0.002), 0.5, size=n))            # sizes vary (volatility timing)
    q = np.column_stack([med - width / 2, med, med + width / 2])
    r = B.backtest_horizon(ts, close, y, q, TAUS, 15)
    assert r.stats["long_share"] == 1.0 and r.trades["contracts"].std() > 0.1
    assert r.stats["sharpe"] > 2                               # the drift looks like skill ...
    assert r.stats["benchmark_sharpe"] == pytest.approx(r.stats["sharpe"])
    assert r.stats["excess_sharpe"] == pytest.approx(0.0, abs=1e-9)   # ... and is not


def test_a_sign_forecast_shows_its_excess_over_buy_and_hold():
    rng = np.random.default_rng(5)
    n = 3000
    ts = _ts(n)
    y = rng.normal(2e-4, 1e-3, size=n)
    close = 1.8e4 * np.exp(np.cumsum(y))
    r = B.backtest_horizon(ts, close, y, _q(np.sign(y) * 1e-4), TAUS, 15)
    assert 0.3 < r.stats["long_share"] < 0.8
    assert r.stats["excess_sharpe"] > 5 and r.stats["excess_sharpe"] == pytest.approx(
        r.stats["sharpe"] - r.stats["benchmark_sharpe"])
