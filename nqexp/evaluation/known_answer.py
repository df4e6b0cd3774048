"""Known answer of the demo data: the true distribution of each sample's target, and oracle forecasts.

The demo generator (nqexp/data/demo.py) records the true conditional sd and drift of every 1-minute
return in `demo_truth`, so a forecast on demo data can be checked against the truth:
`truth_for_datasets` gives the true sigma/drift of every sample's target over each horizon,
`width_spearman` the known-answer statistic (does the 80% interval width rank with the true
sigma?), and `oracle_quantiles` the forecasts that know the truth (a ceiling no causal model can
be expected to beat). tests/test_quality.py and benchmarks/bench_quality.py both use these.

True variance over a horizon. The target of a sample is ln(C[i+h] / C[i]) on the adjusted close of
5-minute bars, and a 5-minute bar's close is the close of its last 1-minute bar. So the target is
the sum of the 1-minute log-returns of the 1-minute bars after the last 1-minute bar of 5m bar i,
up to and including the last 1-minute bar of 5m bar i+h. A minute with no trades is absent from
the bars and from demo_truth, but its return is still in the path: the next bar's return spans it.
Each 1-minute bar therefore carries sigma^2 x (1 + minutes missing just before it in the session)
(its own sigma stands in for the missing minutes'). Minutes missing at the start of a session are
not counted (0.6% of minutes are missing at all on the 730-day demo, nearly all overnight), and the
roll ratio and tick rounding add a negligible error (the benchmark checks std(y / sigma_h) ~ 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nqexp import features
from nqexp.data import bars, db, demo, ingest
from nqexp.data.demo import tod_profiles
from nqexp.errors import DataError
from nqexp.metrics import crps_quantile

NU_GRID = (3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 20.0, 50.0, 200.0)  # Student-t oracle: candidate degrees of freedom


# ------------------------------------------------------------------------------------------
# The true volatility over each sample's horizon


@dataclass
class HorizonTruth:
    """True distribution parameters of each sample's target (n samples, H horizons)."""

    sigma: np.ndarray      # (n, H) true sd of the target: sqrt of the summed 1-minute variances
    drift: np.ndarray      # (n, H) sum of the 1-minute drifts (the generator's mean of the target)
    n_minutes: np.ndarray  # (n, H) 1-minute returns in the target, missing minutes included
    sigma_causal: np.ndarray | None = None  # (n, H) true sigma at the origin carried forward by the tod profile


def load_truth_minutes(con, symbol: str):
    """(ts, var, drift, span, sigma, tod2) per 1-minute bar in time order, each (M,).

    span = 1 + minutes missing just before the bar in its session: the bar's return spans them.
    tod2 = span x the generator's squared time-of-day vol multiplier of the bar's ET minute.
    """

    rows = ingest.demo_truth_minutes(con, symbol)
    ts = np.asarray(rows["ts"]).astype("datetime64[us]")
    sigma = np.asarray(rows["sigma"], dtype=np.float64)
    span = np.asarray(rows["span"], dtype=np.float64)
    tod = tod_profiles(np.asarray(rows["minute_of_day_et"], dtype=np.int64))[0]
    return ts, sigma**2 * span, np.asarray(rows["drift"], dtype=np.float64) * span, span, sigma, tod**2 * span


def horizon_truth(bar_ts, end_idx, horizons, minutes, freq_minutes: int = 5) -> HorizonTruth:
    """True sigma/drift of the target ln(C[i+h] / C[i]) for each sample end index i.

    bar_ts: (N,) start ts of every 5-minute bar of the feature arrays (the index space of
    `end_idx`); minutes: the output of `load_truth_minutes`.
    """
    ts1, var1, drift1, span1, sigma1, tod2 = minutes
    bar_ts = np.asarray(bar_ts).astype("datetime64[us]")
    end_idx = np.asarray(end_idx, dtype=np.int64)
    # Index of the last 1-minute bar inside each 5-minute bar (its close is the 5m close).
    last1 = np.searchsorted(ts1, bar_ts + np.timedelta64(freq_minutes, "m"), side="left") - 1  # (N,)
    cum_var = np.concatenate([[0.0], np.cumsum(var1)])  # (M+1,)
    cum_drift = np.concatenate([[0.0], np.cumsum(drift1)])
    cum_span = np.concatenate([[0.0], np.cumsum(span1)])
    cum_tod2 = np.concatenate([[0.0], np.cumsum(tod2)])
    o = last1[end_idx]  # (n,) the origin's last 1-minute bar: its true sigma is the state known at the origin
    a = o + 1  # (n,) prefix position after it
    # tod2 / span of the origin bar is its own squared tod multiplier.
    state = sigma1[o] ** 2 / (tod2[o] / span1[o])  # (n,) sigma^2 per unit of squared tod multiplier
    H = len(horizons)
    out = {k: np.empty((len(end_idx), H)) for k in ("var", "drift", "n", "causal")}
    for j, h in enumerate(horizons):
        b = last1[end_idx + int(h)] + 1  # (n,)
        out["var"][:, j] = cum_var[b] - cum_var[a]
        out["drift"][:, j] = cum_drift[b] - cum_drift[a]
        out["n"][:, j] = cum_span[b] - cum_span[a]
        out["causal"][:, j] = state * (cum_tod2[b] - cum_tod2[a])
    return HorizonTruth(sigma=np.sqrt(out["var"]), drift=out["drift"], n_minutes=out["n"],
                        sigma_causal=np.sqrt(out["causal"]))


def truth_for_datasets(db_path, trial_spec, datasets) -> dict[str, HorizonTruth]:
    """HorizonTruth for every split of a PreparedData's datasets (reads the DB once)."""

    con = db.connect(db_path)
    try:
        bars.ensure_bars(con, trial_spec.data.symbol, [1])   # the truth is per 1-minute bar; a 5m set skips bars_1m
        arrays = features.load_arrays(con, trial_spec.features.set, trial_spec.data.symbol, path=trial_spec.features.path)
        minutes = load_truth_minutes(con, trial_spec.data.symbol)
    finally:
        con.close()
    if len(minutes[0]) == 0:
        raise DataError(f"no demo_truth rows for {trial_spec.data.symbol}: the known answer needs demo data")
    out = {}
    for split, ds in datasets.items():
        got = np.asarray(arrays.ts)[ds.idx].astype("datetime64[us]")
        if not np.array_equal(got, ds.ts.astype("datetime64[us]")):
            raise RuntimeError(f"{split}: dataset ts do not match the feature arrays at ds.idx")
        out[split] = horizon_truth(arrays.ts, ds.idx, arrays.horizons, minutes, int(arrays.freq_minutes))
    return out


# ------------------------------------------------------------------------------------------
# Oracle forecasts and the known-answer statistic


def oracle_quantiles(sigma, mean, taus, nu: float | np.ndarray | None = None) -> np.ndarray:
    """(n, H, Q) quantiles of N(mean, sigma^2), or of a Student-t(nu) with the same variance.

    sigma, mean: (n, H) (mean may be 0); nu: one value or one per horizon (H,); None = Gaussian.
    """
    from scipy import stats

    taus = np.asarray(taus, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    H = sigma.shape[1]
    if nu is None:
        z = np.broadcast_to(stats.norm.ppf(taus), (H, len(taus)))  # (H, Q)
    else:
        nus = np.broadcast_to(np.asarray(nu, dtype=np.float64), (H,))
        # Unit-variance t: t_nu has variance nu / (nu - 2).
        z = np.stack([stats.t.ppf(taus, v) * np.sqrt((v - 2) / v) for v in nus])  # (H, Q)
    mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), sigma.shape)
    return mean[:, :, None] + sigma[:, :, None] * z[None, :, :]  # (n, H, Q)


def fit_oracle_nu(sigma, mean, y, taus, grid=NU_GRID) -> np.ndarray:
    """Per-horizon nu of a Student-t oracle with the lowest CRPS on (train) samples: (H,)."""

    y = np.asarray(y, dtype=np.float64)
    mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), np.shape(sigma))
    best = np.empty(y.shape[1])
    for j in range(y.shape[1]):
        scores = [crps_quantile(y[:, j], oracle_quantiles(sigma[:, j:j + 1], mean[:, j:j + 1], taus, nu)[:, 0, :],
                                taus).mean() for nu in grid]
        best[j] = grid[int(np.argmin(scores))]
    return best


def width_spearman(q, taus, sigma, lo: float = 0.1, hi: float = 0.9) -> np.ndarray:
    """Spearman(q_hi - q_lo, true sigma) per horizon: (H,). A constant width has no rank
    correlation with anything; it counts as 0 (the check must fail for it), not NaN."""
    from scipy.stats import spearmanr

    taus = list(np.round(np.asarray(taus, dtype=np.float64), 9))
    i_lo, i_hi = taus.index(round(lo, 9)), taus.index(round(hi, 9))
    width = np.asarray(q)[:, :, i_hi] - np.asarray(q)[:, :, i_lo]  # (n, H)
    out = np.empty(width.shape[1])
    for j in range(width.shape[1]):
        w = width[:, j]
        if np.ptp(w) <= 1e-12 * max(float(np.abs(w).max()), 1e-300):
            out[j] = 0.0
        else:
            out[j] = float(spearmanr(w, sigma[:, j]).statistic)
    return out


# ------------------------------------------------------------------------------------------
# The causal Monte Carlo oracle (Bayes-optimal for CRPS up to Monte Carlo error)


@dataclass
class MCOracle:
    """Oracle forecasts at a subset of a split's samples (`rows` index the dataset)."""

    rows: np.ndarray       # (n,) dataset rows of the sampled origins
    q: np.ndarray          # (n, H, Q) empirical quantiles of the simulated targets
    mean: np.ndarray       # (n, H) E[y | true state]: the optimal point forecast (low-noise drift average)
    median: np.ndarray     # (n, H)
    n_paths: int


def mc_oracle(db_path, trial_spec, dataset, taus, n_origins: int = 1000, n_paths: int = 1000,
              seed: int = 0) -> MCOracle:
    """Simulate every sampled origin's targets from the generator's true latent state (demo.oracle_paths).

    Origins are evenly spaced over the dataset's samples. Each target ln(C[i+h] / C[i]) spans the
    generated minutes after the last 1-minute bar of 5m bar i up to the last 1-minute bar of bar i+h.
    """

    con = db.connect(db_path)
    try:
        arrays = features.load_arrays(con, trial_spec.features.set, trial_spec.data.symbol, path=trial_spec.features.path)
        truth = ingest.demo_truth_state(con, trial_spec.data.symbol)
    finally:
        con.close()
    if truth.empty or truth["k"].isna().any():
        raise DataError(f"demo_truth for {trial_spec.data.symbol} has no latent state (made by an older nqexp): "
                        "regenerate the demo with `nqexp data demo`")
    rows = np.unique(np.linspace(0, len(dataset) - 1, min(n_origins, len(dataset))).round().astype(np.int64))
    idx = dataset.idx[rows]  # (n,) origin bars
    t1 = truth["ts"].to_numpy().astype("datetime64[us]")
    bar_end = np.asarray(arrays.ts).astype("datetime64[us]") + np.timedelta64(int(arrays.freq_minutes), "m")
    last1 = np.searchsorted(t1, bar_end, side="left") - 1  # (N,) last 1-minute bar inside each bar
    horizons = np.asarray(arrays.horizons, dtype=np.int64)
    paths, mean = demo.oracle_paths(truth, last1[idx], last1[idx[:, None] + horizons[None, :]], n_paths=n_paths,
                                    seed=seed)  # (n, H, M), (n, H)
    q = np.moveaxis(np.quantile(paths, np.asarray(taus, dtype=np.float64), axis=2), 0, -1)  # (n, H, Q)
    return MCOracle(rows=rows, q=q, mean=mean, median=np.median(paths, axis=2), n_paths=n_paths)
