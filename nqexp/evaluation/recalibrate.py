"""Recalibration fitted on val: a median shrunk towards 0, then conformal quantile offsets (docs/metrics.md §13).

Both steps work in the model's normalised space z = q / sigma-hat, per horizon, and are fitted on the
val split of the trial (each fold's own val), never on test:

* **median shrinkage** (`eval.median_shrink`): the forecast distribution is moved towards 0 by a share
  of its median, z' = z - (1 - a_h) * z_median, with a_h in [0, 1] chosen on a grid by val CRPS. A
  median that is mostly fitted noise costs CRPS in proportion to its variance (docs/metrics.md §13);
  when val cannot support it, a_h goes to 0 and the forecast is centred at 0, as the normaliser's is.
* **conformal offsets** (`eval.recalibrate: conformal`): split-conformal quantile regression per level
  (Romano, Patterson & Candes 2019, one-sided per quantile): the offset of level tau at horizon h is
  the empirical tau-quantile of the val residuals y / sigma-hat - z'_tau, with the finite-sample level
  ceil((n + 1) tau) / n. Then the levels are sorted (rearrangement), so they never cross; multiplying
  by sigma-hat > 0 keeps the order in the return scale. With `eval.recalibrate_tod_buckets` B > 1 the
  offsets are fitted per time-of-day bucket (B equal slices of the New York clock, by the origin bar's
  time): a forecast that is too wide overnight and too narrow at the open gets both fixed. A bucket with
  too few val samples keeps the offsets fitted on all of val.

`cross_fit` scores the same procedure honestly on val itself: fitted on each half of val (in time)
and applied to the other, so the val metrics of a recalibrated trial are out of sample too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from nqexp.calendar import et_index
from nqexp.errors import DataError
from nqexp.metrics import crps_quantile

METHODS = ("none", "conformal")
SHRINK_GRID = np.linspace(0.0, 1.0, 21)  # a_h candidates: the median kept at 0%, 5%, ..., 100%
MAX_TOD_BUCKETS = 24


def tod_buckets(ts, n_buckets: int) -> np.ndarray:
    """(n,) bucket of each naive-UTC origin time: B equal slices of the New York day, 0 from midnight."""
    local = et_index(np.asarray(ts, dtype="datetime64[ns]"))
    minute = np.asarray(local.hour * 60 + local.minute, dtype=np.int64)  # (n,) minutes since local midnight
    return minute * n_buckets // 1440


@dataclass(frozen=True)
class Recalibration:
    """What was fitted on val; `apply` maps model quantiles to recalibrated ones."""

    method: Literal["none", "conformal"]
    shrink: np.ndarray   # (H,) share of the median kept (1: unchanged, 0: centred at 0)
    offset: np.ndarray   # (B, H, Q) added to z after shrinking, per time-of-day bucket (zeros without conformal)

    @property
    def identity(self) -> bool:
        return bool(np.all(self.shrink == 1.0) and not np.any(self.offset))

    @property
    def n_buckets(self) -> int:
        return int(self.offset.shape[0])

    def apply(self, q: np.ndarray, scale: np.ndarray, ts=None) -> np.ndarray:
        """(n, H, Q) quantiles, their (n, H) sigma-hat and (n,) origin times (needed with time-of-day
        buckets) -> (n, H, Q) recalibrated, ordered along Q."""
        q = np.asarray(q, dtype=np.float64)
        if self.identity:
            return q
        scale = np.maximum(np.asarray(scale, dtype=np.float64), 1e-12)[..., None]  # (n, H, 1)
        z = q / scale  # (n, H, Q)
        k = z.shape[-1] // 2  # the median level (odd Q, symmetric levels: checked in fit)
        z = z - (1.0 - self.shrink)[None, :, None] * z[..., k:k + 1]
        if self.n_buckets == 1:
            offset = self.offset  # (1, H, Q)
        elif ts is None:
            raise ValueError("this recalibration has time-of-day buckets: apply needs the origin times")
        else:
            offset = self.offset[tod_buckets(ts, self.n_buckets)]  # (n, H, Q)
        z = np.sort(z + offset, axis=-1)  # rearrangement: never crosses
        return z * scale

    def to_state(self) -> dict:
        return {"method": self.method, "shrink": [float(a) for a in self.shrink], "offset": self.offset.tolist()}

    @classmethod
    def from_state(cls, state) -> Recalibration:
        method = state["method"]
        shrink = np.asarray(state["shrink"], dtype=np.float64)
        offset = np.asarray(state["offset"], dtype=np.float64)
        if offset.ndim == 2:
            offset = offset[None]  # (H, Q), written before time-of-day buckets: one bucket
        if (method not in METHODS or shrink.ndim != 1 or offset.ndim != 3 or offset.shape[1:2] != shrink.shape
                or not 1 <= offset.shape[0] <= MAX_TOD_BUCKETS
                or not np.isfinite(offset).all() or not ((shrink >= 0) & (shrink <= 1)).all()):
            raise DataError(f"recalibration state: method {method!r}, shrink {shrink.shape}, offset {offset.shape} "
                            f"is not one nqexp wrote")
        return cls(method=method, shrink=shrink, offset=offset)

    @classmethod
    def none(cls, n_horizons: int, n_levels: int) -> Recalibration:
        return cls("none", np.ones(n_horizons), np.zeros((1, n_horizons, n_levels)))


def _median_index(taus) -> int:
    taus = np.asarray(taus, dtype=np.float64)
    k = len(taus) // 2
    if len(taus) % 2 == 0 or not np.allclose(taus + taus[::-1], 1.0) or abs(taus[k] - 0.5) > 1e-9:
        raise DataError(f"recalibration needs symmetric quantile levels around 0.5, got {list(taus)}")
    return k


def _conformal_offsets(yh: np.ndarray, zh: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """(Q,) split-conformal offsets of one horizon from (m,) outcomes and (m, Q) quantiles, in z units."""
    m = yh.size
    out = np.empty(len(taus))
    for j, tau in enumerate(taus):
        level = min(1.0, math.ceil((m + 1) * tau) / m)  # finite-sample level of split conformal
        out[j] = float(np.quantile(yh - zh[:, j], level, method="higher"))
    return out


def fit(q, y, scale, taus, *, method: str, median_shrink: bool, ts=None, n_buckets: int = 1) -> Recalibration:
    """Fit on one split's (n, H, Q) quantiles, (n, H) outcomes, (n, H) sigma-hat and (n,) origin times
    (needed with n_buckets > 1): the val split."""
    if method not in METHODS:
        raise DataError(f"eval.recalibrate ({method!r}) must be one of {list(METHODS)}")
    if not 1 <= n_buckets <= MAX_TOD_BUCKETS:
        raise DataError(f"eval.recalibrate_tod_buckets ({n_buckets}) must be in 1..{MAX_TOD_BUCKETS}")
    q = np.asarray(q, dtype=np.float64)
    n, H, Q = q.shape
    if method == "none" and not median_shrink:
        return Recalibration.none(H, Q)
    taus = np.asarray(taus, dtype=np.float64)
    k = _median_index(taus)
    scale = np.maximum(np.asarray(scale, dtype=np.float64), 1e-12)
    yz = np.asarray(y, dtype=np.float64) / scale  # (n, H)
    z = q / scale[..., None]  # (n, H, Q)
    B = n_buckets if method == "conformal" else 1
    bucket = tod_buckets(ts, B) if B > 1 else np.zeros(n, dtype=np.int64)  # (n,)
    shrink, offset = np.ones(H), np.zeros((B, H, Q))
    for h in range(H):
        ok = np.isfinite(yz[:, h]) & np.isfinite(z[:, h]).all(axis=1)
        if ok.sum() < 2 * Q:
            continue  # too few val samples to fit anything: this horizon stays as it is
        zh, yh = z[ok, h], yz[ok, h]
        if median_shrink:
            # CRPS in z units (sigma-hat-weighted CRPS): the scale-free criterion the model is trained on.
            scores = [crps_quantile(yh, zh - (1 - a) * zh[:, k:k + 1], taus).mean() for a in SHRINK_GRID]
            shrink[h] = float(SHRINK_GRID[int(np.argmin(scores))])
            zh = zh - (1 - shrink[h]) * zh[:, k:k + 1]
        if method == "conformal":
            pooled = _conformal_offsets(yh, zh, taus)  # (Q,)
            for b in range(B):
                mine = bucket[ok] == b
                # A thin bucket's own offsets would be noise: it keeps the pooled ones.
                offset[b, h] = _conformal_offsets(yh[mine], zh[mine], taus) if mine.sum() >= 10 * Q else pooled
    return Recalibration(method=method, shrink=shrink, offset=offset)


def cross_fit(q, y, scale, ts, taus, *, method: str, median_shrink: bool, n_buckets: int = 1) -> np.ndarray:
    """(n, H, Q) recalibrated quantiles of one split, each half (in time) fitted on the other half."""
    q = np.asarray(q, dtype=np.float64)
    ts = np.asarray(ts)
    order = np.argsort(ts, kind="stable")
    first, second = order[: len(order) // 2], order[len(order) // 2:]
    out = q.copy()
    for fit_rows, apply_rows in ((first, second), (second, first)):
        recal = fit(q[fit_rows], y[fit_rows], scale[fit_rows], taus, method=method, median_shrink=median_shrink,
                    ts=ts[fit_rows], n_buckets=n_buckets)
        out[apply_rows] = recal.apply(q[apply_rows], scale[apply_rows], ts[apply_rows])
    return out
