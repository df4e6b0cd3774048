"""Causal volatility of the bar series: log-returns and the multiplicative component GARCH filter.

The model normalises its targets by a causal sigma-hat (windows.py), and one choice of sigma-hat is the
MC-GARCH filter below, which is also a baseline (evaluation/baselines.py). It lives here, under both,
so that the model stage never reaches up into evaluation (docs/metrics.md §7).

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
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from nqexp.errors import DataError

log = logging.getLogger(__name__)

MIN_GARCH_BARS = 1000  # fewer train returns than this: no intraday GARCH (alpha = beta = 0)


def log_returns(close: np.ndarray) -> np.ndarray:
    """(N,) 1-bar log-returns of the adjusted close; NaN on the first bar."""
    close = np.asarray(close, dtype=np.float64)
    r = np.full(close.shape[0], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        r[1:] = np.diff(np.log(close))
    return r


def _session_ids(session_date) -> tuple[np.ndarray, int]:
    """(N,) int session number (0, 1, ... in time order) of each bar, and the number of sessions."""
    d = np.asarray(session_date).astype("datetime64[D]").astype(np.int64)
    new = np.concatenate([[True], d[1:] != d[:-1]])
    ids = np.cumsum(new) - 1
    return ids, int(ids[-1]) + 1 if ids.size else 0


def ewma(x: np.ndarray, halflife: float, start: float) -> np.ndarray:
    """(N,) EWMA of x up to and including each position: v_t = lam v_{t-1} + (1 - lam) x_t, v_{-1} = start,
    lam = 0.5^(1 / halflife); lfilter is the exact recursion in C."""
    from scipy.signal import lfilter

    lam = 0.5 ** (1.0 / halflife)
    v, _ = lfilter([1.0 - lam], [1.0, -lam], x, zi=[lam * start])
    return v


def _ewma_prior(x: np.ndarray, halflife: float, start: float) -> np.ndarray:
    """(D,) EWMA of x over the elements strictly before each position (start before the first)."""
    v = ewma(np.where(np.isfinite(x), x, start), halflife, start)  # v[d] includes x[d]
    return np.concatenate([[start], v[:-1]])


def deseasonalised_sq_returns(close: np.ndarray, profile: np.ndarray, level: float) -> np.ndarray:
    """(N,) r_t^2 / profile_t of the 1-bar log-returns, `level` where it is not finite (the first bar, a
    gap), and at most 100 x level: one bar moves an estimate built on it by at most a 10-sigma shock."""
    r = log_returns(close)
    u = r * r / profile
    return np.where(np.isfinite(u), np.minimum(u, 100.0 * level), level)


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

    # -- state: plain values and arrays, no pickle (docs/experiments.md §13) ---------------------
    def to_state(self) -> dict:
        """The fitted filter as JSON values and numpy arrays; `from_state` rebuilds it exactly."""
        assert self.profile is not None, "fit() first"
        return {"halflife_grid": [float(h) for h in self.halflife_grid], "max_fit_bars": int(self.max_fit_bars),
                "z_clip": float(self.z_clip), "halflife": float(self.halflife), "level0": float(self.level0),
                "profile": np.asarray(self.profile, dtype=np.float64), "omega": float(self.omega),
                "alpha": float(self.alpha), "beta": float(self.beta), "nu": float(self.nu),
                "fit_bars": [int(b) for b in self.fit_bars]}

    @classmethod
    def from_state(cls, state) -> MCGarch:
        """The filter `to_state` described; DataError when the state is not one."""
        g = cls(halflife_grid=tuple(float(h) for h in state["halflife_grid"]), max_fit_bars=int(state["max_fit_bars"]),
                z_clip=float(state["z_clip"]))
        for name in ("halflife", "level0", "omega", "alpha", "beta", "nu"):
            setattr(g, name, float(state[name]))
        g.profile = np.asarray(state["profile"], dtype=np.float64)
        g.fit_bars = (int(state["fit_bars"][0]), int(state["fit_bars"][1]))
        if g.profile.ndim != 1 or not g.profile.size or not np.isfinite(g.profile).all() or (g.profile <= 0).any():
            raise DataError(f"mcgarch state: the diurnal profile must be positive numbers, got shape {g.profile.shape}")
        if not (g.alpha >= 0 and g.beta >= 0 and g.alpha + g.beta < 1 and g.omega > 0 and g.halflife > 0):
            raise DataError(f"mcgarch state: not a stationary fitted filter (omega {g.omega:.3g}, alpha {g.alpha:.3g}, "
                            f"beta {g.beta:.3g}, half-life {g.halflife:g})")
        return g

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
# Volatility inputs of the learned sigma-hat correction (docs/model.md §12)

# The network sees its windows through RevIN, which removes every level, so it cannot tell from its
# bars that volatility is high or low relative to sigma-hat. These inputs say it directly, as logs
# of per-bar deseasonalised variance at several speeds, so a linear map of them can correct log
# sigma-hat (a slow daily component after a volatility shift, a wrong long-horizon profile).
VOL_EWMA_MINUTES = (30.0, 120.0, 1380.0, 6900.0)  # EWMA half-lives: 30 min, 2 h, a session, a week (5 sessions)
VOL_RV_MINUTES = (60, 1380, 6900)                 # realised variance over the last hour, session, week
N_VOL_FIXED = len(VOL_EWMA_MINUTES) + len(VOL_RV_MINUTES) + 2  # + the MC-GARCH daily and intraday components


def n_vol_inputs(n_horizons: int) -> int:
    """K: vol inputs per sample, the fixed ones plus sigma-hat's level and the profile ahead per horizon."""
    return N_VOL_FIXED + 2 * n_horizons


def vol_inputs_raw(arrays, idx, scale, *, tod_profile, var_per_bar: float, garch=None) -> np.ndarray:
    """(n, K) float64 causal log-variance inputs of the samples ending at idx; columns in this order:

    * log EWMA of u = r^2 / tod[slot] (deseasonalised squared 1-bar returns) at VOL_EWMA_MINUTES;
    * log mean of u over the last VOL_RV_MINUTES (realised variance; fewer bars at the series start);
    * log of the MC-GARCH daily component h_d and intraday q_{t+1|t} (0 without an MC-GARCH);
    * per horizon, log sigma-hat^2 / (h x train variance per bar): the normaliser's own level;
    * per horizon, log of the mean profile over the next h bars' slots (calendar times, known at t).
    Every variance is divided by the train mean per bar, so the columns are O(1) logs. Only bars <= t
    enter the first three groups; the profile ahead reads calendar slots, as sigma-hat does.
    """
    idx = np.asarray(idx, dtype=np.int64)
    n_bars = np.shape(arrays.close)[0]
    freq = int(arrays.freq_minutes)
    horizons = [int(h) for h in arrays.horizons]
    slot = np.asarray(arrays.minute_of_day_et).astype(np.int64) // freq  # (N,)
    prof = np.asarray(tod_profile, dtype=np.float64)[slot]  # (N,)
    m = max(float(var_per_bar), 1e-30)
    u = deseasonalised_sq_returns(arrays.close, prof, m) / m  # (N,) in units of the train mean, capped
    cols = []
    for minutes in VOL_EWMA_MINUTES:
        cols.append(ewma(u, max(minutes / freq, 1.0), 1.0)[idx])  # starts at the train mean (1)
    cum = np.concatenate([[0.0], np.cumsum(u)])  # (N+1,)
    for minutes in VOL_RV_MINUTES:
        w = max(1, minutes // freq)
        first = np.maximum(idx + 1 - w, 0)
        cols.append((cum[idx + 1] - cum[first]) / (idx + 1 - first))
    if garch is not None:
        h_d, _, q1 = garch.filtered(arrays)
        cols += [h_d[idx] / m, q1[idx]]
    else:
        cols += [np.ones(idx.size), np.ones(idx.size)]
    scale = np.asarray(scale, dtype=np.float64)  # (n, H)
    pcum = np.concatenate([[0.0], np.cumsum(prof)])
    for j, h in enumerate(horizons):
        cols.append(scale[:, j] ** 2 / (h * m))
    for h in horizons:
        last = np.minimum(idx + h, n_bars - 1)
        cols.append((pcum[last + 1] - pcum[idx + 1] + (idx + h - last)) / h)  # past the end: mean slot (1)
    out = np.log(np.maximum(np.stack(cols, axis=1), 1e-12))  # (n, K)
    return np.where(np.isfinite(out), out, 0.0)
