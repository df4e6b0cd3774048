"""Strong baselines: the multiplicative component GARCH and LightGBM quantile regression.

A distributional model earns its place only against what econometrics already does
(docs/metrics.md §7-§8). Both baselines here are fitted on train bars/samples only, filtered or
predicted causally through val and test without refitting, and produce (n, H, Q) quantiles that
never cross, scored on exactly the samples the model is scored on.

* `MCGarch` (Engle & Sokalska 2012, "Forecasting intraday volatility in the US equity market"):
      r_i = sqrt(h_d * s_slot(i) * q_i) * e_i,   e ~ unit-variance Student-t
  - h_d, the daily component: an EWMA of past sessions' deseasonalised per-bar variance, known at
    the start of session d from sessions < d only (half-life chosen on train by QLIKE);
  - s, the diurnal profile: mean of r^2 / h_d per time-of-day slot on train, mean 1;
  - q, the intraday component: a unit-mean GARCH(1,1)-t on z = r / sqrt(h_d s), fitted with
    `arch` on train and then run forward with the fitted parameters through every later bar.
  The k-bar-ahead variance is the sum over the bars ahead of h_d * s_slot * E[q_{t+k} | t], with
  E[q_{t+k}] = qbar + (alpha + beta)^(k-1) (q_{t+1} - qbar). Future bars' slots come from the
  exchange calendar (the bars that follow in the arrays), as for the model's sigma-hat. Quantiles
  are the train quantiles of y / sigma_mcgarch per horizon, times sigma_mcgarch.
* `LGBMQuantiles`: one LightGBM booster per (horizon, tau) with `objective='quantile'` on the
  feature set's features at the origin bar, the recent 30- and 60-minute returns and log sigma-hat,
  with target y / sigma-hat; early-stopped on val; outputs sorted per row (the rearrangement of
  Chernozhukov, Fernandez-Val and Galichon 2010) so they never cross.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from nqexp.errors import DataError
from nqexp.windows import log_returns

log = logging.getLogger(__name__)

BASELINES = ("climatology", "volscaled", "mcgarch", "lgbm")  # every name eval.baselines accepts
# Raw price levels identify the date (the trend), not the state: trees would split on them and
# learn the calendar. The tree baseline leaves them out; returns and ratios carry the state.
_LEVEL_FEATURES = {"open", "high", "low", "close"}
MIN_GARCH_BARS = 1000  # fewer train returns than this: no intraday GARCH (alpha = beta = 0)


def _session_ids(session_date) -> tuple[np.ndarray, int]:
    """(N,) int session number (0, 1, ... in time order) of each bar, and the number of sessions."""
    d = np.asarray(session_date).astype("datetime64[D]").astype(np.int64)
    new = np.concatenate([[True], d[1:] != d[:-1]])
    ids = np.cumsum(new) - 1
    return ids, int(ids[-1]) + 1 if ids.size else 0


def _ewma_prior(x: np.ndarray, halflife: float, start: float) -> np.ndarray:
    """(D,) EWMA of x over the elements strictly before each position (start before the first)."""
    from scipy.signal import lfilter

    lam = 0.5 ** (1.0 / halflife)
    x = np.where(np.isfinite(x), x, start)
    v, _ = lfilter([1.0 - lam], [1.0, -lam], x, zi=[lam * start])  # v[d] includes x[d]
    return np.concatenate([[start], v[:-1]])


# ------------------------------------------------------------------------------------------
# MC-GARCH


@dataclass
class MCGarch:
    """Multiplicative component GARCH of intraday returns; `fit` on train bars, `sigma` anywhere later."""

    halflife_grid: tuple[float, ...] = (3.0, 5.0, 10.0, 20.0, 40.0)  # sessions; chosen on train by QLIKE
    max_fit_bars: int = 200_000       # the GARCH is fitted on at most the last this-many train bars
    z_clip: float = 20.0              # |z| beyond this moves q no further (data errors, splice bars)
    halflife: float = field(default=0.0, init=False)      # chosen EWMA half-life of the daily component
    level0: float = field(default=0.0, init=False)        # train mean per-bar variance (the EWMA's start)
    profile: np.ndarray | None = field(default=None, init=False, repr=False)  # (S,) diurnal profile, mean 1
    omega: float = field(default=0.0, init=False)
    alpha: float = field(default=0.0, init=False)
    beta: float = field(default=0.0, init=False)
    nu: float = field(default=0.0, init=False)            # Student-t degrees of freedom of e
    fit_bars: tuple[int, int] = field(default=(0, 0), init=False)

    # -- the three components, each causal -------------------------------------------------------
    def _slots(self, arrays) -> np.ndarray:
        return np.asarray(arrays.minute_of_day_et).astype(np.int64) // int(arrays.freq_minutes)

    def _daily(self, r2: np.ndarray, sess: np.ndarray, n_sess: int, deseason: np.ndarray, halflife: float):
        """(N,) daily component h of every bar: EWMA of earlier sessions' mean deseasonalised r^2."""
        u = r2 / deseason
        ok = np.isfinite(u)
        tot = np.bincount(sess[ok], weights=u[ok], minlength=n_sess)
        cnt = np.bincount(sess[ok], minlength=n_sess)
        with np.errstate(invalid="ignore", divide="ignore"):
            level = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)  # (D,) per-bar variance of each session
        return _ewma_prior(level, halflife, self.level0)[sess]  # (N,) known before the session opens

    def fit(self, arrays, lo: int, hi: int) -> MCGarch:
        """Fit on bars lo..hi (inclusive): the train range. Reads nothing after bar hi."""
        from arch import arch_model

        rows = slice(lo, hi + 1)
        r = log_returns(np.asarray(arrays.close)[rows])  # (M,) first is NaN: no bar before lo is read
        r2 = r * r
        slot = self._slots(arrays)[rows]
        sess, n_sess = _session_ids(np.asarray(arrays.session_date)[rows])
        ok = np.isfinite(r2)
        if ok.sum() < 2:
            raise DataError(f"mcgarch: train bars {lo}..{hi} hold {int(ok.sum())} returns; it needs a few hundred")
        cap = np.quantile(r2[ok], 0.9995)
        r2 = np.minimum(r2, cap)  # one crash bar can't own a slot or a day
        self.level0 = float(np.nanmean(r2))
        n_slots = 1440 // int(arrays.freq_minutes)
        prof = np.ones(n_slots)
        best = None
        for halflife in self.halflife_grid:
            # Two passes: the daily level needs the profile and the profile needs the daily level.
            for _ in range(2):
                h = self._daily(r2, sess, n_sess, prof[slot], halflife)
                u = r2 / h
                tot = np.bincount(slot[ok], weights=u[ok], minlength=n_slots)
                cnt = np.bincount(slot[ok], minlength=n_slots)
                k = 10.0  # pseudo-observations of 1: sparse slots shrink to the mean
                prof = (tot + k * np.mean(u[ok])) / (cnt + k)
                prof = prof / float(np.mean(prof[slot[ok]]))
            var = h * prof[slot]
            qlike = float(np.mean(r2[ok] / var[ok] + np.log(var[ok])))
            if best is None or qlike < best[0]:
                best = (qlike, halflife, prof.copy())
        _, self.halflife, self.profile = best
        z = r / np.sqrt(self._daily(r2, sess, n_sess, self.profile[slot], self.halflife) * self.profile[slot])
        z = np.clip(z[np.isfinite(z)][-self.max_fit_bars:], -self.z_clip, self.z_clip)
        self.fit_bars = (lo, hi)
        if z.size < MIN_GARCH_BARS:
            # Too short to identify a GARCH: daily level x diurnal profile only (q = 1), said in the log.
            log.warning("mcgarch: %d train returns (< %d): no intraday GARCH, q = 1", z.size, MIN_GARCH_BARS)
            self.omega, self.alpha, self.beta, self.nu = 1.0, 0.0, 0.0, float("inf")
            return self
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # arch's convergence chatter; the result is checked below
            res = arch_model(z, mean="Zero", vol="GARCH", p=1, q=1, dist="t", rescale=False).fit(disp="off")
        p = res.params
        self.omega, self.alpha, self.beta, self.nu = (float(p["omega"]), float(p["alpha[1]"]),
                                                      float(p["beta[1]"]), float(p["nu"]))
        if not (self.alpha >= 0 and self.beta >= 0 and self.alpha + self.beta < 1 and self.omega > 0):
            raise DataError(f"mcgarch: the GARCH fit on train is not stationary (omega {self.omega:.3g}, "
                            f"alpha {self.alpha:.3g}, beta {self.beta:.3g})")
        log.info("mcgarch: daily half-life %g sessions, GARCH omega %.3g alpha %.3f beta %.3f nu %.1f",
                 self.halflife, self.omega, self.alpha, self.beta, self.nu)
        return self

    def filtered(self, arrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per bar, causally: daily component h (N,), deseasonalised z (N,), one-step q_{t+1|t} (N,)."""
        from scipy.signal import lfilter

        assert self.profile is not None, "fit() first"
        r = log_returns(arrays.close)
        r2 = r * r
        slot = self._slots(arrays)
        sess, n_sess = _session_ids(arrays.session_date)
        seas = self.profile[slot]
        h = self._daily(r2, sess, n_sess, seas, self.halflife)  # (N,)
        z = r / np.sqrt(h * seas)
        z2 = np.minimum(np.where(np.isfinite(z), z * z, 1.0), self.z_clip**2)
        qbar = self.omega / (1.0 - self.alpha - self.beta)
        # q_{t+1} = omega + alpha z_t^2 + beta q_t, started at q_0 = qbar. As a linear filter:
        # y_t = alpha z_t^2 + beta y_{t-1} and q_{t+1} = y_t + c with c = omega / (1 - beta).
        c = self.omega / (1.0 - self.beta)
        y, _ = lfilter([self.alpha], [1.0, -self.beta], z2, zi=[self.beta * (qbar - c)])
        return h, z, y + c  # (N,) q_{t+1|t}

    def sigma(self, arrays, idx) -> np.ndarray:
        """(n, H) causal sd of the h-bar log-return after each origin bar in idx."""
        from scipy.signal import lfilter

        idx = np.asarray(idx, dtype=np.int64)
        n_bars = np.shape(arrays.close)[0]
        h, _, q1 = self.filtered(arrays)
        seas = self.profile[self._slots(arrays)]  # (N,)
        rho = self.alpha + self.beta
        qbar = self.omega / (1.0 - rho)
        cum = np.concatenate([[0.0], np.cumsum(seas)])  # (N+1,)
        # dinf[t] = sum_{k>=1} rho^(k-1) seas[t+k]: a reverse-time filter over the profile of later bars.
        nxt = np.concatenate([seas[1:], [1.0]])
        dinf = lfilter([1.0], [1.0, -rho], nxt[::-1])[::-1]  # (N,)
        out = np.empty((idx.size, len(arrays.horizons)))
        for j, k in enumerate(int(x) for x in arrays.horizons):
            last = np.minimum(idx + k, n_bars - 1)
            beyond = idx + k - last  # bars past the series end count as the mean slot (1)
            plain = cum[last + 1] - cum[idx + 1] + beyond
            tail = np.where(idx + k < n_bars, dinf[np.minimum(idx + k, n_bars - 1)], 0.0)
            disc = dinf[idx] - rho**k * tail
            out[:, j] = h[idx] * (qbar * plain + (q1[idx] - qbar) * disc)
        return np.sqrt(np.maximum(out, 1e-30))


# ------------------------------------------------------------------------------------------
# LightGBM quantile regression


def lgbm_inputs(arrays, idx, scale) -> tuple[np.ndarray, list[str]]:
    """(n, F) inputs at each origin: the set's non-level features, the last 30/60 minutes' returns
    in units of the 1-bar sigma-hat, and log sigma-hat per horizon. Everything is known at the origin."""
    idx = np.asarray(idx, dtype=np.int64)
    names = list(arrays.names)
    keep = [j for j, nm in enumerate(names) if nm not in _LEVEL_FEATURES]
    X = np.asarray(arrays.X)[idx][:, keep].astype(np.float64)  # (n, V')
    logc = np.log(np.asarray(arrays.close, dtype=np.float64))
    per_bar = np.asarray(scale, dtype=np.float64)[:, 0] / np.sqrt(float(arrays.horizons[0]))  # (n,) 1-bar sigma
    extra, extra_names = [], []
    for minutes in (30, 60):
        k = max(1, round(minutes / int(arrays.freq_minutes)))
        past = np.where(idx - k >= 0, logc[np.maximum(idx - k, 0)], np.nan)
        extra.append((logc[idx] - past) / (per_bar * np.sqrt(k)))
        extra_names.append(f"ret_{minutes}m_z")
    extra.append(np.log(np.asarray(scale, dtype=np.float64)))
    extra_names += [f"log_sigma_h{h}" for h in arrays.horizons]
    cols = np.column_stack([X, *extra[:2], extra[2]])
    return cols, [names[j] for j in keep] + extra_names


@dataclass
class LGBMQuantiles:
    """One LightGBM quantile booster per (horizon, tau) on z = y / sigma-hat; rearranged so it never crosses."""

    taus: tuple[float, ...]
    # The quantile objective re-fits every leaf to a percentile of its rows each round, so rows and
    # rounds are the cost: these bounds keep 35 boosters to about a minute on 2 cores.
    max_train_rows: int = 40_000      # evenly spaced train samples
    max_val_rows: int = 10_000
    num_leaves: int = 15
    learning_rate: float = 0.1
    max_rounds: int = 200
    early_stopping: int = 20
    min_data_in_leaf: int = 200
    seed: int = 0
    num_threads: int = 0              # 0: LightGBM's default
    boosters: list = field(default_factory=list, repr=False)  # [H][Q]
    names: list[str] = field(default_factory=list)

    def _params(self, tau: float) -> dict:
        return {"objective": "quantile", "alpha": float(tau), "num_leaves": self.num_leaves,
                "learning_rate": self.learning_rate, "min_data_in_leaf": self.min_data_in_leaf,
                "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
                "seed": self.seed, "deterministic": True, "verbosity": -1, "num_threads": self.num_threads}

    @staticmethod
    def _spaced(n: int, limit: int) -> np.ndarray:
        return np.arange(n) if n <= limit else np.linspace(0, n - 1, limit).round().astype(np.int64)

    def fit(self, X_train, z_train, X_val, z_val) -> LGBMQuantiles:
        """X: (n, F) inputs; z: (n, H) targets y / sigma-hat. Val only decides when to stop."""
        import lightgbm as lgb

        tr = self._spaced(len(X_train), self.max_train_rows)
        va = self._spaced(len(X_val), self.max_val_rows)
        self.boosters = []
        for j in range(np.shape(z_train)[1]):
            dtrain = lgb.Dataset(X_train[tr], z_train[tr, j], free_raw_data=False)
            dval = lgb.Dataset(X_val[va], z_val[va, j], reference=dtrain)
            row = []
            for tau in self.taus:
                row.append(lgb.train(self._params(tau), dtrain, num_boost_round=self.max_rounds, valid_sets=[dval],
                                     callbacks=[lgb.early_stopping(self.early_stopping, verbose=False)]))
            self.boosters.append(row)
        return self

    def quantiles(self, X, scale) -> np.ndarray:
        """(n, H, Q) = sigma-hat * sorted booster outputs."""
        z = np.stack([np.stack([b.predict(X, num_iteration=b.best_iteration) for b in row], axis=1)
                      for row in self.boosters], axis=1)  # (n, H, Q)
        z.sort(axis=2)  # rearrangement: the sorted curve is never a worse quantile estimate, and can't cross
        return np.asarray(scale, dtype=np.float64)[:, :, None] * z


# ------------------------------------------------------------------------------------------
# All baselines of one data configuration


def fit_and_predict(arrays, split_idx: dict, targets: dict, taus, *, model_scale: dict, ewma_scale: dict,
                    names=BASELINES, garch: MCGarch | None = None, lo: int | None = None,
                    lgbm: dict | None = None, fitted: dict | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Fit the named baselines on train and forecast every split: split -> name -> (n, H, Q).

    split_idx: split -> (n,) sample end indices into arrays; targets: split -> (n, H) y;
    model_scale: split -> (n, H) the model's sigma-hat (the tree baseline's target unit);
    ewma_scale: split -> (n, H) the tod x EWMA sigma-hat (the vol-scaled baseline's scale);
    garch: an MCGarch already fitted on the train bars (else one is fitted here); lo: the first bar
    the train windows read (default: the first train end); lgbm: LGBMQuantiles settings;
    fitted: when given, receives each baseline's fitted state (name -> quantile table / models),
    which is what `nqexp predict` needs to issue the same baselines on new bars.
    """
    from nqexp.evaluate import ClimatologyBaseline, VolScaledBaseline

    state = {} if fitted is None else fitted
    taus = tuple(float(t) for t in taus)
    out: dict[str, dict[str, np.ndarray]] = {s: {} for s in split_idx}
    train = np.asarray(split_idx["train"], dtype=np.int64)
    if "climatology" in names:
        clim = state["climatology"] = ClimatologyBaseline(taus).fit(targets["train"])
        for s, idx in split_idx.items():
            out[s]["climatology"] = clim.quantiles(len(idx))
    if "volscaled" in names:
        sq = VolScaledBaseline(taus).fit(targets["train"], ewma_scale["train"])
        state["volscaled"] = sq
        for s in split_idx:
            out[s]["volscaled"] = sq.quantiles(ewma_scale[s])
    if "mcgarch" in names:
        g = garch or MCGarch().fit(arrays, int(train.min()) if lo is None else int(lo), int(train.max()))
        # One causal filter pass over the bars for every split's origins, not one per split.
        sizes = np.cumsum([len(i) for i in split_idx.values()])[:-1]
        sig = dict(zip(split_idx, np.split(g.sigma(arrays, np.concatenate(list(split_idx.values()))), sizes)))
        sq = VolScaledBaseline(taus).fit(targets["train"], sig["train"])  # the same quantile map, GARCH scale
        state["mcgarch"] = {"garch": g, "quantiles": sq}
        for s in split_idx:
            out[s]["mcgarch"] = sq.quantiles(sig[s])
    if "lgbm" in names:
        feats = {s: lgbm_inputs(arrays, idx, model_scale[s])[0] for s, idx in split_idx.items()}
        m = LGBMQuantiles(taus, **(lgbm or {})).fit(feats["train"], targets["train"] / model_scale["train"],
                                                    feats["val"], targets["val"] / model_scale["val"])
        state["lgbm"] = m
        for s in split_idx:
            out[s]["lgbm"] = m.quantiles(feats[s], model_scale[s])
    return out
