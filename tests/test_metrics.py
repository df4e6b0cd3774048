"""Pins every metric definition of docs/metrics.md to a hand computation or an independent reference."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm, spearmanr

from nqexp import metrics as M

TAUS = np.array([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95])


def _close(actual, expected, tol, what):
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    diff = np.abs(actual - expected)
    worst = int(np.argmax(diff)) if diff.size else 0
    assert diff.size == 0 or diff.max() <= tol, (
        f"{what}: max abs diff {diff.max():.3e} > {tol:.0e} at flat index {worst} "
        f"(got {actual.reshape(-1)[worst]!r}, expected {expected.reshape(-1)[worst]!r})"
    )


def test_horizon_labels_follow_contract():
    assert [M.horizon_label(m) for m in (5, 15, 30, 60, 120, 240)] == [
        "5m", "15m", "30m", "60m", "2h", "4h"]
    with pytest.raises(ValueError):
        M.horizon_label(90)


def test_quantile_labels_are_zero_padded_percent():
    assert [M.quantile_label(t) for t in TAUS] == ["q05", "q10", "q25", "q50", "q75", "q90", "q95"]
    assert M.quantile_label(0.025) == "q02p5"


def test_pinball_matches_hand_computed_values():
    # y=1, q=0 at tau=0.9: under-prediction costs tau*(y-q)=0.9; at tau=0.1: 0.1.
    # y=0, q=2 at tau=0.9: over-prediction costs (1-tau)*(q-y)=0.2; at tau=0.1: 1.8.
    got = M.pinball(np.array([1.0, 0.0]), np.array([[0.0, 0.0], [2.0, 2.0]]), np.array([0.1, 0.9]))
    _close(got, [[0.1, 0.9], [1.8, 0.2]], 1e-15, "pinball")


def test_crps_is_two_over_q_times_summed_pinball_by_hand():
    # One sample, y=0, quantiles (-1, 0, 3) at (0.25, 0.5, 0.75):
    # rho = 0.25*1 (y above q) + 0 + 0.25*3 (y below q) = 1.0, crps = 2/3 * 1.0.
    got = M.crps_quantile(np.array([0.0]), np.array([[-1.0, 0.0, 3.0]]), np.array([0.25, 0.5, 0.75]))
    _close(got, [2.0 / 3.0], 1e-15, "crps")


@pytest.mark.parametrize("crossing", [False, True])
def test_crps_equals_scoringrules_crps_quantile(crossing):
    sr = pytest.importorskip("scoringrules")
    rng = np.random.default_rng(7)
    n = 2000
    y = rng.standard_t(4, size=n) * 0.002
    q = np.sort(rng.normal(0, 0.002, size=(n, len(TAUS))), axis=1)
    if crossing:
        q = rng.normal(0, 0.002, size=(n, len(TAUS)))  # unsorted: most rows cross
        assert M.crossing_rate(q) > 0.5
    # Exact ties y == q exercise the <= branch of both implementations.
    y[:50] = q[:50, 3]
    ours = M.crps_quantile(y, q, TAUS)
    ref = np.asarray(sr.crps_quantile(y, q, TAUS, backend="numpy"))
    _close(ours, ref, 1e-12, "crps vs scoringrules.crps_quantile")


def test_crps_from_many_quantiles_approaches_gaussian_closed_form():
    mu, sigma = 0.3, 1.7
    y = np.array([-2.0, 0.0, 0.3, 1.0, 4.5])
    z = (y - mu) / sigma
    closed = sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))
    errors = []
    for n_q in (9, 99, 999):
        taus = (np.arange(n_q) + 0.5) / n_q  # midpoint rule on (0, 1)
        q = np.broadcast_to(mu + sigma * norm.ppf(taus), (len(y), n_q))
        errors.append(np.abs(M.crps_quantile(y, q, taus) - closed).max())
    assert errors[0] > errors[1] > errors[2], f"no convergence: {errors}"
    assert errors[2] < 1e-3, f"999 quantiles still {errors[2]:.2e} from the closed form"


def test_crps_skill_is_one_minus_ratio():
    assert M.crps_skill(0.75, 1.0) == pytest.approx(0.25)
    assert M.crps_skill(2.0, 1.0) == pytest.approx(-1.0)
    assert np.isnan(M.crps_skill(1.0, 0.0))


def test_coverage_counts_y_at_or_below_each_quantile():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    q = np.tile([1.0, 2.5], (4, 1))  # y<=1: 2 of 4; y<=2.5: 3 of 4
    _close(M.coverage(y, q), [0.5, 0.75], 0, "coverage")
    # |0.5-0.25| and |0.75-0.75| averaged
    assert M.calibration_error(y, q, [0.25, 0.75]) == pytest.approx(0.125)


def test_picp_uses_closed_interval_and_mpiw_is_mean_width():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    lo, hi = np.array([0.0, 1.5, 0.0, 0.0]), np.array([1.0, 2.0, 2.0, 2.9])
    assert M.picp(y, lo, hi) == 0.5  # y=0 on lo edge and y=2 on hi edge count; 1 < 1.5 and 3 > 2.9 miss
    assert M.mpiw(lo, hi) == pytest.approx((1.0 + 0.5 + 2.0 + 2.9) / 4)


def test_calibrated_gaussian_forecast_has_near_nominal_coverage_and_uniform_pit():
    rng = np.random.default_rng(3)
    n = 40000
    sigma = rng.uniform(0.5, 2.0, size=n)  # heteroscedastic, but the forecast knows sigma
    y = rng.normal(0, sigma)
    q = sigma[:, None] * norm.ppf(TAUS)[None, :]
    cov = M.coverage(y, q)
    _close(cov, TAUS, 0.01, "coverage of a calibrated forecast")
    assert M.picp(y, q[:, 1], q[:, 5]) == pytest.approx(0.8, abs=0.01)
    # Edges at the quantile levels: exact in distribution, so density 1 up to sampling noise.
    edges, dens = M.pit_histogram(M.pit_values(y, q, TAUS), bins=np.r_[0.0, TAUS, 1.0])
    assert len(dens) == len(TAUS) + 1
    _close(dens, np.ones(len(dens)), 0.06, "PIT density (tau-aligned bins) of a calibrated forecast")


def test_pit_interpolates_linearly_between_quantiles_and_randomizes_tails():
    taus = np.array([0.1, 0.5, 0.9])
    q = np.tile([-1.0, 0.0, 2.0], (4, 1))
    y = np.array([-0.5, 1.0, -5.0, 9.0])
    pit = M.pit_values(y, q, taus, seed=1)
    assert pit[0] == pytest.approx(0.3)  # halfway from q.1 to q.5
    assert pit[1] == pytest.approx(0.7)  # halfway from q.5 to q.9
    assert 0.0 <= pit[2] < 0.1 and 0.9 < pit[3] <= 1.0
    np.testing.assert_array_equal(pit, M.pit_values(y, q, taus, seed=1))  # seeded -> repeatable


def test_pit_of_collapsed_forecast_piles_up_in_the_tails():
    rng = np.random.default_rng(0)
    y = rng.normal(size=5000)
    q = np.zeros((5000, len(TAUS)))  # every quantile at 0: a point forecast
    _, dens = M.pit_histogram(M.pit_values(y, q, TAUS), bins=10)
    assert dens[0] > 4 and dens[-1] > 4 and dens[3:7].max() == 0


def test_crossing_rate_counts_samples_with_any_inverted_pair_and_ignores_ties():
    q = np.array([[0, 1, 2], [0, 0, 0], [1, 0, 2], [0, 2, 1.9]], dtype=float)
    assert M.crossing_rate(q) == 0.5


def test_spearman_ic_matches_scipy_and_is_nan_for_constant_predictions():
    rng = np.random.default_rng(1)
    pred = rng.normal(size=500)
    y = 0.3 * pred + rng.normal(size=500)
    y[:20] = 0.0  # ties
    assert M.spearman_ic(pred, y) == pytest.approx(spearmanr(pred, y).statistic, abs=1e-12)
    assert np.isnan(M.spearman_ic(np.zeros(500), y))


def test_daily_ic_groups_by_globex_session_and_icir_is_mean_over_std():
    # Two sessions: Sunday 18:00 ET opens Monday's session, so Sunday-evening and Monday-morning
    # bars share one day; Monday 18:00 ET starts Tuesday's.
    ny = pd.date_range("2024-03-03 18:00", periods=40, freq="5min", tz="America/New_York")
    ny2 = pd.date_range("2024-03-04 18:00", periods=40, freq="5min", tz="America/New_York")
    ts = np.concatenate([ny.tz_convert("UTC").tz_localize(None).values,
                         ny2.tz_convert("UTC").tz_localize(None).values])
    rng = np.random.default_rng(2)
    pred = rng.normal(size=80)
    y = np.concatenate([pred[:40], -pred[40:]])  # IC +1 on day 1, -1 on day 2
    s = M.daily_ic(ts, pred, y)
    assert list(s.index) == [pd.Timestamp("2024-03-04"), pd.Timestamp("2024-03-05")]
    _close(s.to_numpy(), [1.0, -1.0], 1e-12, "daily IC")
    assert M.icir(pd.Series([0.1, 0.3])) == pytest.approx(0.2 / np.std([0.1, 0.3], ddof=1))


def test_block_bootstrap_ci_brackets_the_statistic_and_shrinks_with_more_data():
    rng = np.random.default_rng(4)

    def ci(n):
        x = rng.normal(loc=1.0, size=n)
        return M.block_bootstrap_ci(x, np.mean, block=10, n_boot=400, seed=0)

    lo_s, hi_s = ci(200)
    lo_l, hi_l = ci(5000)
    assert lo_s < 1.0 < hi_s and lo_l < 1.0 < hi_l
    assert (hi_l - lo_l) < 0.4 * (hi_s - lo_s)
    # Same seed, same data -> same interval.
    x = rng.normal(size=300)
    assert M.block_bootstrap_ci(x, np.mean, 7, 200, seed=5) == M.block_bootstrap_ci(x, np.mean, 7, 200, seed=5)


def test_block_bootstrap_widens_for_autocorrelated_series():
    # AR(1) with phi=0.9: iid resampling (block=1) understates the variance of the mean.
    rng = np.random.default_rng(6)
    e = rng.normal(size=4000)
    x = np.empty_like(e)
    x[0] = e[0]
    for t in range(1, len(e)):
        x[t] = 0.9 * x[t - 1] + e[t]
    lo1, hi1 = M.block_bootstrap_ci(x, np.mean, block=1, n_boot=300, seed=0)
    lo50, hi50 = M.block_bootstrap_ci(x, np.mean, block=50, n_boot=300, seed=0)
    assert (hi50 - lo50) > 2.5 * (hi1 - lo1)


def test_directional_accuracy_skips_flat_outcomes_and_counts_zero_calls_as_wrong():
    pred = np.array([1.0, -1.0, 1.0, 0.0, 1.0])
    y = np.array([2.0, -3.0, -1.0, 1.0, 0.0])  # last sample is flat -> excluded
    assert M.directional_accuracy(pred, y) == 0.5


def test_tail_accuracy_uses_only_the_largest_moves_each_way():
    y = np.linspace(-1, 1, 101)  # tails: y <= -0.8 and y >= 0.8 (11 samples each)
    pred = -y.copy()  # wrong everywhere ...
    tail = (y <= -0.8 + 1e-12) | (y >= 0.8 - 1e-12)
    pred[tail] = y[tail]  # ... except in the tails
    assert M.tail_accuracy(pred, y, frac=0.1) == 1.0
    assert M.directional_accuracy(pred, y) < 0.3


def test_rmse_and_mae_by_hand():
    assert M.rmse([0.0, 0.0], [3.0, 4.0]) == pytest.approx(np.sqrt(12.5))
    assert M.mae([0.0, 0.0], [3.0, -4.0]) == pytest.approx(3.5)


def test_daily_ic_equals_per_day_spearman_and_skips_constant_or_small_days():
    rng = np.random.default_rng(8)
    n = 3000
    ts = pd.date_range("2024-01-02", periods=n, freq="5min").values
    pred = np.round(rng.normal(size=n), 1)  # many ties
    y = 0.2 * pred + rng.normal(size=n)
    pred[:288] = 0.0  # the first session day is constant -> no IC
    s = M.daily_ic(ts, pred, y, min_obs=10)
    days = M.session_dates(ts)
    expected = {}
    for day in np.unique(days):
        m = days == day
        ic = M.spearman_ic(pred[m], y[m])
        if m.sum() >= 10 and np.isfinite(ic):
            expected[pd.Timestamp(day)] = ic
    assert list(s.index) == list(expected), "days differ"
    _close(s.to_numpy(), list(expected.values()), 1e-12, "vectorized daily IC vs per-day loop")
    assert pd.Timestamp("2024-01-02") not in s.index


@pytest.mark.parametrize("n,block", [(1000, 37), (1000, 1), (999, 1000), (512, 64)])
def test_fast_correlation_bootstrap_equals_generic_bootstrap_of_pearson(n, block):
    rng = np.random.default_rng(n + block)
    a = rng.normal(size=n)
    b = 0.3 * a + rng.normal(size=n)
    fast = M.block_bootstrap_corr_ci(a, b, block=block, n_boot=200, seed=11)
    slow = M.block_bootstrap_ci(np.column_stack([a, b]), lambda x: M.pearson(x[:, 0], x[:, 1]),
                                block=block, n_boot=200, seed=11)
    _close(fast, slow, 1e-12, f"prefix-sum bootstrap vs generic (n={n}, block={block})")


# ------------------------------------------------------------------------------------------
# Many comparisons: bootstrap p-values, Holm and Benjamini–Hochberg


def test_holm_and_bh_match_hand_computed_adjustments():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max.
    np.testing.assert_allclose(M.holm(p), [0.03, 0.06, 0.06, 0.02, np.nan])
    # BH: sorted p * 4 / rank = 0.02, 0.02, 0.04, 0.04 -> running min from the top.
    np.testing.assert_allclose(M.benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02, np.nan])
    assert (M.benjamini_hochberg(p[:4]) <= M.holm(p[:4])).all()        # BH is never stricter than Holm
    assert (M.holm(p[:4]) >= p[:4]).all()


def test_bootstrap_p_value_agrees_with_the_percentile_ci():
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.05, 0.1, 0.3):
        x = rng.normal(shift, 1.0, 400)
        reps = M.block_bootstrap_replicates(x, np.mean, block=5, n_boot=999, seed=1)
        lo, hi = np.quantile(reps, [0.025, 0.975])
        p = M.bootstrap_p_value(reps)
        assert 0 < p <= 1
        assert (p < 0.05) == (lo > 0 or hi < 0) or abs(p - 0.05) < 0.01   # equal up to the +1 correction


def test_bootstrap_blocks_never_cross_a_segment_boundary():
    """Rolling-origin folds: every replicate keeps each fold's rows inside that fold, at its length."""
    seg = np.repeat([0, 1, 2], [50, 80, 30])
    x = np.arange(len(seg), dtype=float)
    seen = []
    M.block_bootstrap_replicates(x, lambda r: seen.append(r.copy()) or 0.0, block=20, n_boot=50, seed=3, segments=seg)
    for r in seen:
        assert len(r) == len(seg)
        np.testing.assert_array_equal(seg[r.astype(int)], seg)       # row i of a replicate comes from row i's fold
