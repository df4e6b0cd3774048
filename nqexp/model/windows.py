"""Windows, splits and the loader: FeatureArrays -> model batches (x, mask, temporal, y, scale).

Everything here works on whole arrays: one contiguous float32 array of scaled bars, index
arithmetic for the windows and one vectorized gather per batch. There is no per-sample pandas
and no Python loop per sample.

The flow:

    arrays = features.load_arrays(con, "migt24", "NQ.v.0")      # FeatureArrays (bar level)
    idx = make_splits(arrays, SplitConfig(), WindowConfig())      # {"train","val","test"}: end bars
    scalers = fit_scalers(arrays, idx["train"], WindowConfig())   # fitted on train bars only
    loader = WindowLoader(arrays, idx["train"], scalers, WindowConfig(), batch_size=128, shuffle=True)
    for batch in loader: ...                                      # dict of torch tensors (docs/features.md §11)

`arrays` is anything with the FeatureArrays attributes (docs/features.md §11): ts, X, names, close,
horizons, freq_minutes, targets, target_flags, session_date, minute_of_day_et. The class itself
lives in nqexp/features/; this module only reads those attributes.

Windows. A sample is named by its end index t (the window's last bar). Two kinds:
  * wall-clock (MIGT-TVDT design, `migt24`): bars with ts in (ts_t - lookback_minutes, ts_t], at most t_max
    of them. 24 hours of 5-minute bars gives T_max = 288; real days hold 273-276 bars, a short day
    (Thanksgiving) fewer, and the first bars after a weekend very few.
  * bar-count (Grok-SL design, `grok24`, lookback_minutes=None): the last t_max bars, whatever their
    times. A trading week of 1-minute bars is 5 Globex sessions x 1380 minutes = 6900 bars. Counting
    bars rather than wall time keeps a Monday window a full week (a wall-clock 6900 minutes back from
    Monday morning would reach only Wednesday afternoon and hold ~3 sessions).
Windows are left-aligned: steps 0..L-1 are bars t-L+1..t in time order, steps L..T-1 are zeros and
mask False. A window holds no bar after t.

Documented choices:
  * NaN targets: a sample whose target is NaN for any horizon is dropped (the model never sees
    NaN, and every sample carries all H targets, so metrics need no NaN handling).
  * Non-finite features: make_splits drops any sample whose window holds a non-finite raw feature
    (indicator warm-up at the start of the series, a zero-volume division) or starts inside the
    arrays' `warmup_bars` (when the object has that attribute). As a second guard the
    scaled bars have NaN/Inf replaced by 0, so even an index array from elsewhere can't feed NaN;
    the mask is never changed by this.
  * Feature scaling: robust per-variable standardization, (x - median) / (IQR / 1.349) with the
    median and IQR computed only from train bars, clipped to +-clip (10). The model's RevIN then
    normalizes each window on top; this global step just keeps raw magnitudes (prices ~1e4,
    Amihud ~1e-9) at O(1) so padding zeros and RevIN statistics are well conditioned.
  * Target scale sigma-hat (docs/features.md §10; docs/model.md §5, docs/metrics.md §7): for sample t and horizon h,
        sigma2(t, h) = v_t * sum_{k=1..h} tod[slot(t+k)]
    with tod the train-fitted time-of-day profile (mean squared 1-bar log-return per
    freq-minute slot of the ET day, shrunk toward the overall mean, normalized to mean 1 over train
    bars) and v_t an EWMA (half-life vol_halflife_minutes) of deseasonalized squared returns
    r_s^2 / tod[slot(s)] for s <= t. The future slots are calendar times of the next h bars, known at
    t from the exchange schedule, so this is causal. The EWMA starts at the train mean and a
    single bar's contribution is capped at 100x that mean (a 10-sigma bar). sigma-hat is floored
    at scale_floor x sqrt(train mean x h), so it is always > 0.
  * Splits assign a sample to a split by the Globex session_date of its end bar (inclusive date
    ranges). Between consecutive splits the tail of the earlier split is purged so that the last
    earlier end index a and the first later end index b satisfy b - a >= purge_bars, with
    purge_bars >= max horizon + t_max (+ feature_lookback_bars). Hence a + max_h < first bar of
    every later window: no target of one split overlaps the inputs or targets of the next.
  * stride: samples end on bars with index % stride == 0 (global alignment, so it does not depend
    on split boundaries); val/test use eval_stride (default: the same).
  * subsample_fraction applies to every split (fast iteration), each split with its own stream
    from `seed`, so the same seed gives the same samples.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from nqexp.calendar import et_index, segment_ids
from nqexp.errors import DataError, SpecError
from nqexp.model.volatility import MCGarch, deseasonalised_sq_returns, ewma, log_returns, vol_inputs_raw

log = logging.getLogger(__name__)

FLAG_BREAK, FLAG_WEEKEND, FLAG_ROLL = 1, 2, 4  # target_flags bits (docs/features.md §5)
SPLITS = ("train", "val", "test")
FOLD_SCHEMES = ("expanding", "sliding")
_MAX_FIT_ROWS = 262_144  # percentiles are estimated on at most this many evenly spaced train bars


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowConfig:
    """How samples are cut from the bar arrays. Defaults are the MIGT-TVDT design's `migt24` (24 h of 5-minute bars)."""

    # Ranges are declared on the types: the spec loader checks them and `nqexp spec schema` shows them;
    # __post_init__ repeats them for code that builds the config directly, with the cross-field rules.
    lookback_minutes: Annotated[int | None, Field(ge=1)] = 1440   # wall-clock look-back: bars with ts in (ts_t - lookback, ts_t]; None = last t_max bars
    t_max: Annotated[int, Field(ge=1, le=100_000)] = 288  # padded window length T (1440 / 5; 6900 for a 1-minute trading week)
    stride: Annotated[int, Field(ge=1)] = 1             # train samples end on bars with index % stride == 0 (60 for 1-minute training)
    eval_stride: Annotated[int | None, Field(ge=1)] = None  # stride for val/test samples; None = stride
    min_valid_bars: Annotated[int, Field(ge=1)] = 12    # drop samples whose window holds fewer real bars (first bars after a weekend)
    drop_target_flags: Annotated[int, Field(ge=0, le=7)] = 0  # target_flags bits that drop a sample: 1 break, 2 weekend/holiday, 4 roll; 0 keeps all
    subsample_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0  # keep this share of each split's samples (fast iteration)
    seed: Annotated[int, Field(ge=0)] = 0               # seeds the subsample and the loader's shuffling
    clip: Annotated[float, Field(gt=0)] = 10.0          # standardized features are clipped to +-clip
    vol_halflife_minutes: Annotated[float, Field(gt=0)] = 360.0  # EWMA half-life of the recent-realized-vol part of sigma-hat
    scale_floor: Annotated[float, Field(gt=0)] = 0.1    # sigma-hat floor, as a share of the horizon's train-typical sigma
    sigma: str = "mcgarch"                # the model's normaliser sigma-hat: "mcgarch" (the MC-GARCH forecast) or "ewma" (tod x EWMA)

    def __post_init__(self):
        problems = []
        if self.lookback_minutes is not None and self.lookback_minutes <= 0:
            problems.append(f"windows.lookback_minutes ({self.lookback_minutes}) must be > 0 or None")
        if not 1 <= self.t_max <= 100_000:  # a week of 1-minute bars is 6900; far beyond, no batch fits
            problems.append(f"windows.t_max ({self.t_max}) must be in 1..100000")
        if self.stride < 1:
            problems.append(f"windows.stride ({self.stride}) must be >= 1")
        if self.eval_stride is not None and self.eval_stride < 1:
            problems.append(f"windows.eval_stride ({self.eval_stride}) must be >= 1 or None")
        if not 1 <= self.min_valid_bars <= self.t_max:
            problems.append(f"windows.min_valid_bars ({self.min_valid_bars}) must be in 1..windows.t_max ({self.t_max})")
        if not 0 <= self.drop_target_flags <= 7:
            problems.append(f"windows.drop_target_flags ({self.drop_target_flags}) must be a bitmask in 0..7")
        if not 0 < self.subsample_fraction <= 1:
            problems.append(f"windows.subsample_fraction ({self.subsample_fraction}) must be in (0, 1]")
        if not self.clip > 0:
            problems.append(f"windows.clip ({self.clip}) must be > 0")
        if not self.vol_halflife_minutes > 0:
            problems.append(f"windows.vol_halflife_minutes ({self.vol_halflife_minutes}) must be > 0")
        if not self.scale_floor > 0:
            problems.append(f"windows.scale_floor ({self.scale_floor}) must be > 0 so the scale stays > 0")
        if self.sigma not in ("mcgarch", "ewma"):
            problems.append(f"windows.sigma ({self.sigma!r}) must be 'mcgarch' or 'ewma'")
        if problems:
            raise SpecError("; ".join(problems))

    @classmethod
    def migt24(cls, **overrides) -> WindowConfig:
        """The MIGT-TVDT design: the last 24 hours of 5-minute bars, padded to 288, every bar a sample."""
        return cls(**overrides)

    @classmethod
    def grok24(cls, **overrides) -> WindowConfig:
        """The Grok-SL design: a trading week of 1-minute bars (5 x 1380 = 6900 bars), a sample every 60 bars."""
        return cls(**{"lookback_minutes": None, "t_max": 5 * 1380, "stride": 60, "min_valid_bars": 1380, **overrides})

    def stride_for(self, split: str) -> int:
        return self.stride if split == "train" or self.eval_stride is None else self.eval_stride


def _as_date(value, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise SpecError(f"splits.{name} ({value!r}) must be a date like 2021-12-31")


@dataclass(frozen=True)
class SplitConfig:
    """Split dates (inclusive, by the Globex session date of a sample's end bar). Defaults are the MIGT-TVDT design's."""

    train_start: dt.date = dt.date(2010, 6, 6)    # first train session date
    train_end: dt.date = dt.date(2021, 12, 31)    # last train session date
    val_start: dt.date = dt.date(2022, 1, 1)      # first val session date
    val_end: dt.date = dt.date(2023, 12, 31)      # last val session date
    test_start: dt.date = dt.date(2024, 1, 1)     # first test session date
    test_end: dt.date = dt.date(2025, 12, 3)      # last test session date
    purge_bars: Annotated[int | None, Field(ge=0)] = None  # gap between splits in bars; None = the minimum allowed
    feature_lookback_bars: Annotated[int, Field(ge=0)] = 0  # longest feature look-back in bars, added to the minimum purge
    folds: Annotated[int, Field(ge=1)] = 1                  # rolling-origin folds; the dates above are the last one
    fold_scheme: Literal["expanding", "sliding"] = "expanding"  # expanding: every fold trains from train_start

    def __post_init__(self):
        for f in fields(self):
            if f.name.endswith(("_start", "_end")):
                object.__setattr__(self, f.name, _as_date(getattr(self, f.name), f.name))
        order = ["train_start", "train_end", "val_start", "val_end", "test_start", "test_end"]
        for a, b in zip(order, order[1:]):
            va, vb = getattr(self, a), getattr(self, b)
            # Within a split start <= end; between splits the next one starts strictly later.
            if (vb < va) if a.endswith("_start") else (vb <= va):
                raise SpecError(f"splits.{b} ({vb}) must come after splits.{a} ({va})")
        if self.purge_bars is not None and self.purge_bars < 0:
            raise SpecError(f"splits.purge_bars ({self.purge_bars}) must be >= 0 or None")
        if self.feature_lookback_bars < 0:
            raise SpecError(f"splits.feature_lookback_bars ({self.feature_lookback_bars}) must be >= 0")
        if self.folds < 1:
            raise SpecError(f"splits.folds ({self.folds}) must be >= 1")
        if self.fold_scheme not in FOLD_SCHEMES:
            raise SpecError(f"splits.fold_scheme ({self.fold_scheme!r}) must be one of {list(FOLD_SCHEMES)}")
        if self.folds > 1:
            self.fold_splits()   # every fold must have train days left

    def fold_splits(self) -> list[SplitConfig]:
        """The rolling-origin folds, oldest first, each a one-fold SplitConfig (docs/features.md §8).

        The configured dates are the last fold. Fold k of K moves every date back by (K-1-k) test
        blocks (test_end - test_start + 1 days), so the test blocks tile the end of the data without
        overlap; `expanding` keeps train_start, `sliding` moves it too. Each fold keeps its own purge
        gaps, and everything fitted (scalers, baselines) is refitted on its own train."""
        if self.folds == 1:
            return [self]
        block = (self.test_end - self.test_start).days + 1
        out = []
        for k in range(self.folds):
            shift = dt.timedelta(days=(self.folds - 1 - k) * block)
            dates = {f"{s}_{e}": getattr(self, f"{s}_{e}") - shift for s in SPLITS for e in ("start", "end")}
            if self.fold_scheme == "expanding":
                dates["train_start"] = self.train_start
            if dates["train_start"] > dates["train_end"]:
                raise SpecError(f"splits.folds ({self.folds}): fold {k} has no train days left (its train would end "
                                f"{dates['train_end']}, before splits.train_start {self.train_start}); use fewer folds "
                                f"or a shorter test block")
            out.append(replace(self, **dates, folds=1))
        return out

    def ranges(self) -> dict[str, tuple[dt.date, dt.date]]:
        return {s: (getattr(self, f"{s}_start"), getattr(self, f"{s}_end")) for s in SPLITS}


def min_purge_bars(horizons, window_cfg: WindowConfig, split_cfg: SplitConfig) -> int:
    """The smallest allowed gap between splits: max horizon + window look-back (t_max) + feature look-back."""
    return int(max(horizons)) + window_cfg.t_max + split_cfg.feature_lookback_bars


def resolve_purge(horizons, window_cfg: WindowConfig, split_cfg: SplitConfig) -> int:
    """split_cfg.purge_bars, or the minimum when unset. Raises SpecError naming both when it is too small."""
    need = min_purge_bars(horizons, window_cfg, split_cfg)
    if split_cfg.purge_bars is None:
        return need
    if split_cfg.purge_bars < need:
        raise SpecError(
            f"splits.purge_bars ({split_cfg.purge_bars}) must be at least max horizon + look-back = "
            f"{max(horizons)} + {window_cfg.t_max} + feature_lookback_bars {split_cfg.feature_lookback_bars} "
            f"= {need} bars; raise splits.purge_bars to {need} or leave it unset")
    return int(split_cfg.purge_bars)


# ---------------------------------------------------------------------------------------------
# Window geometry and sample selection
# ---------------------------------------------------------------------------------------------


def _n_bars(arrays) -> int:
    return int(np.shape(arrays.ts)[0])


def window_starts(ts: np.ndarray, window_cfg: WindowConfig, idx: np.ndarray | None = None) -> np.ndarray:
    """(n,) int64 index of the first bar of the window ending at each idx (all bars when idx is None)."""
    ts = np.asarray(ts)
    end = np.arange(ts.shape[0], dtype=np.int64) if idx is None else np.asarray(idx, dtype=np.int64)
    start = np.maximum(end - (window_cfg.t_max - 1), 0)  # never more than t_max bars
    if window_cfg.lookback_minutes is not None:
        cutoff = ts[end] - np.timedelta64(int(window_cfg.lookback_minutes), "m")
        # First bar with ts > ts_t - lookback: the window is (ts_t - lookback, ts_t].
        start = np.maximum(start, np.searchsorted(ts, cutoff, side="right").astype(np.int64))
    return start


def _valid_samples(arrays, window_cfg: WindowConfig) -> tuple[np.ndarray, dict[str, int]]:
    """(N,) bool: the sample ending at each bar is usable, and the count each rule removed."""
    n = _n_bars(arrays)
    X = np.asarray(arrays.X)
    targets = np.asarray(arrays.targets)
    start = window_starts(arrays.ts, window_cfg)  # (N,)
    length = np.arange(n, dtype=np.int64) - start + 1  # (N,)
    enough = length >= window_cfg.min_valid_bars
    # Non-finite raw features anywhere in the window: prefix sums over bad bars.
    bad_bar = ~np.isfinite(X).all(axis=1)  # (N,)
    bad_cum = np.concatenate([[0], np.cumsum(bad_bar, dtype=np.int64)])  # (N+1,)
    finite_x = (bad_cum[np.arange(n) + 1] - bad_cum[start]) == 0
    finite_y = np.isfinite(targets).all(axis=1)
    flags_ok = (np.bitwise_or.reduce(np.asarray(arrays.target_flags), axis=1) & window_cfg.drop_target_flags) == 0
    # FeatureArrays.warmup_bars: leading bars whose (finite) indicators are still warming up. After a
    # hole in the data longer than calendar.SEGMENT_GAP the indicators warm up again, and no window or
    # target may reach across it (docs/rolls_and_sessions.md §8).
    seg = segment_ids(arrays.ts)  # (N,)
    seg_first = np.flatnonzero(np.concatenate([[True], seg[1:] != seg[:-1]]))[seg]  # (N,) first bar of each bar's segment
    warm = start >= seg_first + int(getattr(arrays, "warmup_bars", 0) or 0)
    h_max = int(max(arrays.horizons)) if len(arrays.horizons) else 0
    same_segment = seg[np.minimum(np.arange(n) + h_max, n - 1)] == seg  # targets end inside the segment
    valid = enough & finite_x & finite_y & flags_ok & warm & same_segment
    counts = {"short_window": int((~enough).sum()), "warmup": int((~warm).sum()),
              "nonfinite_features": int((~finite_x).sum()),
              "nan_targets": int((~finite_y).sum()), "flagged_targets": int((~flags_ok).sum()),
              "segment_boundary": int((~same_segment).sum())}
    return valid, counts


def make_splits(arrays, split_cfg: SplitConfig, window_cfg: WindowConfig) -> dict[str, np.ndarray]:
    """{"train", "val", "test"} -> sorted (n,) int64 sample end indices, purged and filtered.

    A sample is kept when its end bar's session_date is inside the split's dates, its index is on
    the split's stride, its window holds >= min_valid_bars bars all with finite features, all its
    targets are finite and none carries a dropped flag. Then the tail of each earlier split is
    purged (see the module docstring) and subsample_fraction is applied.
    """
    n = _n_bars(arrays)
    horizons = tuple(int(h) for h in arrays.horizons)
    purge = resolve_purge(horizons, window_cfg, split_cfg)
    valid, dropped = _valid_samples(arrays, window_cfg)
    session = np.asarray(arrays.session_date).astype("datetime64[D]")
    index = np.arange(n, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for split, (lo, hi) in split_cfg.ranges().items():
        in_dates = (session >= np.datetime64(lo, "D")) & (session <= np.datetime64(hi, "D"))
        on_stride = index % window_cfg.stride_for(split) == 0
        out[split] = index[valid & in_dates & on_stride]
    # Purge the tail of each earlier split against the first sample of the next non-empty split.
    for i, earlier in enumerate(SPLITS[:-1]):
        later = next((s for s in SPLITS[i + 1:] if out[s].size), None)
        if later is not None and out[earlier].size:
            out[earlier] = out[earlier][out[earlier] <= out[later][0] - purge]
    for k, split in enumerate(SPLITS):
        idx = out[split]
        if window_cfg.subsample_fraction < 1 and idx.size:
            keep = max(1, round(window_cfg.subsample_fraction * idx.size))
            split_rng = np.random.default_rng([window_cfg.seed, k])
            idx = np.sort(split_rng.choice(idx, size=keep, replace=False))
        out[split] = idx
    _check_no_overlap(arrays, out, window_cfg, horizons)
    for split in SPLITS:
        if out[split].size == 0:
            log.warning("split %s has no samples (dates %s..%s)", split, *split_cfg.ranges()[split])
    log.info("splits: %s samples (purge %d bars; dropped before splitting: %s)",
             {s: int(v.size) for s, v in out.items()}, purge, dropped)
    return out


def _check_no_overlap(arrays, idx: dict[str, np.ndarray], window_cfg: WindowConfig, horizons) -> None:
    """Internal invariant: the last target bar of a split comes before the first window bar of the next."""
    present = [s for s in SPLITS if idx[s].size]
    for a, b in zip(present, present[1:]):
        last_target = int(idx[a].max()) + max(horizons)
        first_input = int(window_starts(arrays.ts, window_cfg, idx[b]).min())
        assert last_target < first_input, (
            f"purge failed: {a} target reaches bar {last_target}, {b} inputs start at bar {first_input}")


# ---------------------------------------------------------------------------------------------
# Scalers (fitted on train bars only)
# ---------------------------------------------------------------------------------------------


def _slots(arrays) -> np.ndarray:
    """(N,) int64 time-of-day slot: minute of the ET day // freq_minutes."""
    return np.asarray(arrays.minute_of_day_et).astype(np.int64) // int(arrays.freq_minutes)


@dataclass
class Scalers:
    """Everything fitted on train: feature standardization and the target-scale (sigma-hat) model."""

    center: np.ndarray            # (V,) float64 train median per variable
    spread: np.ndarray            # (V,) float64 train IQR / 1.349 per variable (std, then 1, when the IQR is 0)
    clip: float                   # standardized features are clipped to +-clip
    tod_profile: np.ndarray       # (S,) float64 mean squared 1-bar return per ET time-of-day slot, mean 1 over train bars
    var_per_bar: float            # train mean of the deseasonalized squared 1-bar return (EWMA start, floor base)
    halflife_bars: float          # EWMA half-life of recent realized variance, in bars
    scale_floor: np.ndarray       # (H,) float64 lower bound of sigma-hat per horizon (> 0)
    horizons: tuple[int, ...]     # horizons in bars, as in arrays.horizons
    freq_minutes: int             # bar size the scalers were fitted on
    names: list[str] = field(default_factory=list)  # variable names, as in arrays.names
    fit_bars: tuple[int, int] = (0, 0)              # [first, last] bar index the fit read
    garch: Any = None                               # volatility.MCGarch when windows.sigma is "mcgarch"
    vol_center: np.ndarray | None = None            # (K,) train mean of the vol inputs (volatility.vol_inputs_raw)
    vol_spread: np.ndarray | None = None            # (K,) train std of the vol inputs (1 where constant)

    def to_state(self) -> dict:
        """Everything fitted, as JSON values and numpy arrays (no pickle; docs/experiments.md §13)."""
        return {"center": np.asarray(self.center, dtype=np.float64),
                "spread": np.asarray(self.spread, dtype=np.float64), "clip": float(self.clip),
                "tod_profile": np.asarray(self.tod_profile, dtype=np.float64),
                "var_per_bar": float(self.var_per_bar), "halflife_bars": float(self.halflife_bars),
                "scale_floor": np.asarray(self.scale_floor, dtype=np.float64),
                "horizons": [int(h) for h in self.horizons], "freq_minutes": int(self.freq_minutes),
                "names": [str(n) for n in self.names], "fit_bars": [int(b) for b in self.fit_bars],
                "garch": None if self.garch is None else self.garch.to_state(),
                "vol_center": None if self.vol_center is None else np.asarray(self.vol_center, dtype=np.float64),
                "vol_spread": None if self.vol_spread is None else np.asarray(self.vol_spread, dtype=np.float64)}

    @classmethod
    def from_state(cls, state) -> Scalers:
        """The scalers `to_state` described; DataError when the arrays disagree with each other."""
        s = cls(center=np.asarray(state["center"], dtype=np.float64),
                spread=np.asarray(state["spread"], dtype=np.float64),
                clip=float(state["clip"]), tod_profile=np.asarray(state["tod_profile"], dtype=np.float64),
                var_per_bar=float(state["var_per_bar"]), halflife_bars=float(state["halflife_bars"]),
                scale_floor=np.asarray(state["scale_floor"], dtype=np.float64),
                horizons=tuple(int(h) for h in state["horizons"]), freq_minutes=int(state["freq_minutes"]),
                names=[str(n) for n in state["names"]],
                fit_bars=(int(state["fit_bars"][0]), int(state["fit_bars"][1])),
                garch=None if state["garch"] is None else MCGarch.from_state(state["garch"]),
                # Bundles written before the vol inputs have none: their models take no vol inputs.
                vol_center=None if state.get("vol_center") is None else np.asarray(state["vol_center"], np.float64),
                vol_spread=None if state.get("vol_spread") is None else np.asarray(state["vol_spread"], np.float64))
        V, H = len(s.names), len(s.horizons)
        slots = 1440 // s.freq_minutes if s.freq_minutes > 0 else -1
        problems = [f"{name} has shape {arr.shape}, expected ({n},)" for name, arr, n in [
            ("center", s.center, V), ("spread", s.spread, V), ("scale_floor", s.scale_floor, H),
            ("tod_profile", s.tod_profile, slots)] if arr.shape != (n,)]
        if s.garch is not None and s.garch.profile.shape != (slots,):
            problems.append(f"the MC-GARCH profile has shape {s.garch.profile.shape}, expected ({slots},)")
        if not problems and not ((s.spread > 0).all() and (s.scale_floor > 0).all() and (s.tod_profile > 0).all()):
            problems.append("spread, scale_floor and tod_profile must be > 0")
        if s.vol_center is not None and (s.vol_spread is None or s.vol_center.shape != s.vol_spread.shape
                                         or not (s.vol_spread > 0).all()):
            problems.append("vol_center and vol_spread must be arrays of one shape, vol_spread > 0")
        if problems:
            raise DataError(f"scalers state: {'; '.join(problems)} (for {V} variables, {H} horizons, "
                            f"{s.freq_minutes}-minute bars)")
        return s

    def transform_features(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(N, V) raw features -> (N, V) float32 standardized, clipped, non-finite -> 0."""
        X = np.asarray(X)
        if X.shape[1] != self.center.shape[0]:
            raise DataError(f"features have {X.shape[1]} variables, the scalers were fitted on {self.center.shape[0]}")
        out = np.empty(X.shape, dtype=np.float32) if out is None else out
        center = self.center.astype(np.float32)
        inv = (1.0 / self.spread).astype(np.float32)
        chunk = 1 << 16  # bounded float32 temporaries on 5M-row inputs
        for i in range(0, X.shape[0], chunk):
            block = (X[i:i + chunk].astype(np.float32, copy=False) - center) * inv  # (c, V)
            np.clip(block, -self.clip, self.clip, out=block)
            out[i:i + chunk] = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
        return out

    def recent_variance(self, arrays) -> np.ndarray:
        """(N,) float64 EWMA of deseasonalized squared 1-bar returns up to and including each bar (causal)."""
        self._check_arrays(arrays)
        u = deseasonalised_sq_returns(arrays.close, self.tod_profile[_slots(arrays)], self.var_per_bar)  # (N,)
        return ewma(u, self.halflife_bars, self.var_per_bar)

    def target_scale(self, arrays, idx) -> np.ndarray:
        """(n, H) float32 causal sigma-hat for the samples ending at idx; strictly > 0.

        With a fitted MC-GARCH (windows.sigma = "mcgarch") it is that model's horizon forecast, so
        the network starts at the strongest econometric baseline and learns only what is left;
        otherwise the tod x EWMA estimate below (`ewma_scale`).
        """
        if self.garch is None:
            return self.ewma_scale(arrays, idx)
        self._check_arrays(arrays)
        scale = self.garch.sigma(arrays, np.asarray(idx, dtype=np.int64))  # (n, H)
        scale = np.where(np.isfinite(scale), np.maximum(scale, self.scale_floor[None, :]), self.scale_floor[None, :])
        return scale.astype(np.float32)

    def vol_inputs(self, arrays, idx, scale) -> np.ndarray:
        """(n, K) float32 vol inputs of the samples ending at idx (`scale`: their sigma-hat, (n, H)),
        standardised with the train mean and std and clipped to +-clip (docs/model.md §12)."""
        self._check_arrays(arrays)
        if self.vol_center is None:
            raise DataError("these scalers were fitted before the vol inputs existed; refit them")
        raw = vol_inputs_raw(arrays, idx, scale, tod_profile=self.tod_profile, var_per_bar=self.var_per_bar,
                             garch=self.garch)  # (n, K)
        z = (raw - self.vol_center) / self.vol_spread
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def ewma_scale(self, arrays, idx) -> np.ndarray:
        """(n, H) float32 tod x EWMA sigma-hat (the vol-scaled baseline's scale); strictly > 0."""
        self._check_arrays(arrays)
        idx = np.asarray(idx, dtype=np.int64)
        n = _n_bars(arrays)
        v = self.recent_variance(arrays)[idx]  # (n,)
        prof = self.tod_profile[_slots(arrays)]  # (N,) profile of every bar's slot
        cum = np.concatenate([[0.0], np.cumsum(prof)])  # (N+1,)
        scale = np.empty((idx.size, len(self.horizons)), dtype=np.float64)  # (n, H)
        for j, h in enumerate(self.horizons):
            last = np.minimum(idx + h, n - 1)  # (n,)
            # Profile of the next h bars' slots; past the series end each missing bar counts as the mean (1).
            tod_sum = cum[last + 1] - cum[idx + 1] + (idx + h - last)  # (n,)
            scale[:, j] = np.sqrt(v * tod_sum)
        scale = np.maximum(scale, self.scale_floor[None, :])  # (n, H)
        scale = np.where(np.isfinite(scale), scale, self.scale_floor[None, :]).astype(np.float32)
        assert (scale > 0).all(), "target scale must be strictly positive"
        return scale

    def _check_arrays(self, arrays) -> None:
        horizons = tuple(int(h) for h in arrays.horizons)
        if horizons != self.horizons or int(arrays.freq_minutes) != self.freq_minutes:
            raise DataError(f"arrays have horizons {horizons} on {arrays.freq_minutes}-minute bars; the scalers were "
                            f"fitted on {self.horizons} on {self.freq_minutes}-minute bars: refit them")


def fit_scalers(arrays, train_idx, window_cfg: WindowConfig) -> Scalers:
    """Fit feature standardization and the sigma-hat model on the bars the train windows cover.

    Reads only bars first_train_window_start..last_train_end, so nothing from val or test (which
    lie after the purge gap) can change the result.
    """
    train_idx = np.asarray(train_idx, dtype=np.int64)
    if train_idx.size == 0:
        raise DataError("no train samples to fit scalers on: widen splits.train_start..train_end or check the data")
    lo = int(window_starts(arrays.ts, window_cfg, train_idx).min())
    hi = int(train_idx.max())
    rows = slice(lo, hi + 1)

    # Feature standardization from (at most _MAX_FIT_ROWS evenly spaced) train bars.
    X = np.asarray(arrays.X)[rows]  # (M, V)
    step = max(1, math.ceil(X.shape[0] / _MAX_FIT_ROWS))
    Xf = X[::step].astype(np.float64)
    Xf[~np.isfinite(Xf)] = np.nan
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns fall back below
        q25, q50, q75 = np.nanpercentile(Xf, [25, 50, 75], axis=0)  # 3 x (V,)
        std = np.nanstd(Xf, axis=0)  # (V,)
    spread = (q75 - q25) / 1.349  # IQR of a normal is 1.349 sigma
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, np.where(np.isfinite(std) & (std > 0), std, 1.0))
    center = np.where(np.isfinite(q50), q50, 0.0)

    # Time-of-day profile of squared 1-bar returns on the same train bars.
    n_slots = 1440 // int(arrays.freq_minutes)
    r = log_returns(arrays.close)[rows]  # (M,)
    slot = _slots(arrays)[rows]  # (M,)
    ok = np.isfinite(r)
    if ok.sum() < 2:
        raise DataError(f"train bars {lo}..{hi} hold fewer than 2 finite returns: cannot fit the target scale")
    r2 = r[ok] ** 2
    r2 = np.minimum(r2, np.quantile(r2, 0.999))  # winsorize so one crash bar can't own a slot
    s = slot[ok]
    m0 = float(r2.mean())
    total = np.bincount(s, weights=r2, minlength=n_slots)  # (S,)
    count = np.bincount(s, minlength=n_slots)  # (S,)
    k = 10.0  # pseudo-observations of the overall mean: sparse slots shrink toward 1
    if m0 > 0:
        prof = (total + k * m0) / (count + k) / m0  # (S,)
        prof = prof / float(np.mean(prof[s]))  # mean 1 over train bars
        var_per_bar = float(np.mean(r2 / prof[s]))
    else:  # constant prices: a flat profile and a tiny positive variance
        prof = np.ones(n_slots)
        var_per_bar = 0.0
    var_per_bar = max(var_per_bar, 1e-16)
    horizons = tuple(int(h) for h in arrays.horizons)
    floor = window_cfg.scale_floor * np.sqrt(var_per_bar * np.asarray(horizons, dtype=np.float64))  # (H,)
    garch = None
    if window_cfg.sigma == "mcgarch":
        garch = MCGarch().fit(arrays, lo, hi)  # the same train bars, nothing later
    scalers = Scalers(center=center, spread=spread, clip=float(window_cfg.clip), tod_profile=prof,
                      var_per_bar=var_per_bar, garch=garch,
                      halflife_bars=float(window_cfg.vol_halflife_minutes) / int(arrays.freq_minutes),
                      scale_floor=np.maximum(floor, 1e-12), horizons=horizons, freq_minutes=int(arrays.freq_minutes),
                      names=list(arrays.names), fit_bars=(lo, hi))
    # Vol-input standardisation from the train samples (their inputs read only bars <= their end).
    raw = vol_inputs_raw(arrays, train_idx, scalers.target_scale(arrays, train_idx), tod_profile=prof,
                         var_per_bar=var_per_bar, garch=garch)  # (n, K)
    std = raw.std(axis=0)
    scalers.vol_center = raw.mean(axis=0)
    scalers.vol_spread = np.where(std > 1e-9, std, 1.0)
    return scalers


def target_scale(arrays, idx, scalers: Scalers) -> np.ndarray:
    """(n, H) float32 causal sigma-hat (train-fitted tod profile x recent realized vol); the vol-scaled baseline's scale."""
    return scalers.target_scale(arrays, idx)


# ---------------------------------------------------------------------------------------------
# Temporal inputs
# ---------------------------------------------------------------------------------------------


def temporal_features(ts: np.ndarray) -> np.ndarray:
    """(N,) naive-UTC datetime64 -> (N, 4) float32 [minute_of_day, day_of_week (Mon=0), day_of_month, day_of_year] in ET."""
    et = et_index(np.asarray(ts).astype("datetime64[us]"))
    out = np.empty((et.shape[0], 4), dtype=np.float32)
    out[:, 0] = et.hour * 60 + et.minute
    out[:, 1] = et.day_of_week
    out[:, 2] = et.day
    out[:, 3] = et.day_of_year
    return out


# ---------------------------------------------------------------------------------------------
# Dataset (plain numpy, Ray-friendly) and loader (torch batches)
# ---------------------------------------------------------------------------------------------


@dataclass
class WindowDataset:
    """One split's samples as plain numpy: bar-level arrays plus per-sample indices (no windows materialized).

    Memory is O(bars + samples); a batch is gathered on demand. Built once by the driver, it can be
    put into Ray's object store as is (or as `to_numpy()`), and trials rebuild loaders from it
    without DuckDB.
    """

    bars: np.ndarray       # (M+T, V) float32 scaled features of the M bars the windows touch, then T zero rows
    temporal: np.ndarray   # (M+T, 4) float32 temporal inputs of the same bars, then T zero rows
    start: np.ndarray      # (n,) int64 first window bar of each sample, as a row of `bars`
    length: np.ndarray     # (n,) int64 valid steps L of each sample (1..t_max)
    y: np.ndarray          # (n, H) float32 forward log-returns (finite)
    scale: np.ndarray      # (n, H) float32 causal sigma-hat (> 0)
    idx: np.ndarray        # (n,) int64 sample end index into the original arrays
    ts: np.ndarray         # (n,) datetime64[us] ts of each sample's end bar (forecast origin)
    t_max: int             # padded window length T
    names: list[str] = field(default_factory=list)       # variable names (V)
    horizons: tuple[int, ...] = ()                         # horizons in bars (H)
    vol: np.ndarray | None = None                          # (n, K) float32 standardised vol inputs (None: K = 0)

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray))

    def batch(self, rows) -> dict[str, np.ndarray]:
        """Numpy batch for dataset rows: x (B,T,V), mask (B,T), temporal (B,T,4), y (B,H), scale (B,H),
        vol (B,K), idx (B,)."""
        rows = np.asarray(rows, dtype=np.int64)
        B, T, V = rows.shape[0], self.t_max, self.bars.shape[1]
        start, length = self.start[rows], self.length[rows]  # (B,), (B,)
        # One block copy per window: the T consecutive bars from its first bar (a strided view, no
        # per-step index array). A copy per window, not per step, is what makes this faster than a
        # plain (B, T) fancy-index gather: the cost of a gather is per index, not per byte. Steps past
        # the window's end hold later bars or the zero tail; they are overwritten with zeros below,
        # so nothing after bar t survives.
        x = _block_view(self.bars, T)[start].reshape(B, T, V)  # (B, T, V)
        temporal = _block_view(self.temporal, T)[start].reshape(B, T, 4)  # (B, T, 4)
        mask = _prefix_masks(T)[length]  # (B, T) row L of a (T+1, T) table: L leading Trues
        pad = np.flatnonzero(_padding_masks(T)[length])  # (P,) flat step ids b*T + j with j >= L_b
        if pad.size:
            # Zero whole steps through a one-item-per-step view: much faster than a 2-D fancy assign.
            for table in (x.reshape(B * T, V), temporal.reshape(B * T, 4)):
                steps = _as_rows(table)  # (B*T,) one item per step
                steps[pad] = np.zeros((), dtype=steps.dtype)
        return {
            "x": x,  # (B, T, V)
            "mask": mask,  # (B, T)
            "temporal": temporal,  # (B, T, 4)
            "y": self.y[rows],  # (B, H)
            "scale": self.scale[rows],  # (B, H)
            "vol": self.vol[rows] if self.vol is not None else np.zeros((B, 0), np.float32),  # (B, K)
            "idx": self.idx[rows],  # (B,)
        }

    def to_numpy(self) -> dict:
        """A plain dict (numpy arrays and small metadata), e.g. for ray.put."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_numpy(cls, d: dict) -> WindowDataset:
        return cls(**d)

    def subset(self, rows) -> WindowDataset:
        """The same bars with only some samples (e.g. a quick val subset)."""
        rows = np.asarray(rows, dtype=np.int64)
        return replace(self, start=self.start[rows], length=self.length[rows], y=self.y[rows],
                       scale=self.scale[rows], idx=self.idx[rows], ts=self.ts[rows],
                       vol=None if self.vol is None else self.vol[rows])


def _block_view(table: np.ndarray, T: int) -> np.ndarray:
    """(R, W) C-contiguous table -> read-only (R - T + 1, T * W) view whose row s is rows s..s+T-1, flattened."""
    table = np.ascontiguousarray(table)
    R, W = table.shape
    item = table.itemsize
    # np.ndarray(buffer=...) rather than as_strided: the same view in a fifth of the time (once per batch).
    view = np.ndarray((R - T + 1, T * W), dtype=table.dtype, buffer=table, strides=(W * item, item))
    view.flags.writeable = False
    return view


@functools.lru_cache(maxsize=8)
def _prefix_masks(T: int) -> np.ndarray:
    """(T+1, T) read-only bool table whose row L is [True] * L + [False] * (T - L)."""
    table = np.arange(T)[None, :] < np.arange(T + 1)[:, None]  # (T+1, T)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=8)
def _padding_masks(T: int) -> np.ndarray:
    """(T+1, T) read-only bool table whose row L marks the padding steps L..T-1 (not _prefix_masks)."""
    table = ~_prefix_masks(T)  # (T+1, T)
    table.flags.writeable = False
    return table


def _as_rows(a: np.ndarray) -> np.ndarray:
    """(R, W) C-contiguous -> (R,) view with one opaque W-wide item per row (for fast row assignment)."""
    return a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).reshape(-1)


def dataset_arrays(arrays, idx, scalers: Scalers, window_cfg: WindowConfig) -> WindowDataset:
    """Materialize one split for the loader: scaled bars of the covered range, temporal inputs, y, scale."""
    idx = np.asarray(idx, dtype=np.int64)
    n = _n_bars(arrays)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise DataError(f"sample indices must lie in 0..{n - 1}, got {idx.min()}..{idx.max()}")
    if idx.size > 1 and np.any(np.diff(idx) < 0):
        idx = np.sort(idx)
    H = len(scalers.horizons)
    V = np.shape(arrays.X)[1]
    if idx.size == 0:
        T = window_cfg.t_max
        return WindowDataset(bars=np.zeros((T, V), np.float32), temporal=np.zeros((T, 4), np.float32),
                             start=np.zeros(0, np.int64), length=np.zeros(0, np.int64),
                             y=np.zeros((0, H), np.float32), scale=np.ones((0, H), np.float32),
                             idx=idx, ts=np.zeros(0, "datetime64[us]"), t_max=window_cfg.t_max,
                             names=list(arrays.names), horizons=scalers.horizons,
                             vol=None if scalers.vol_center is None else np.zeros((0, scalers.vol_center.size), np.float32))
    y = np.asarray(arrays.targets)[idx].astype(np.float32)  # (n, H)
    bad = ~np.isfinite(y).all(axis=1)
    if bad.any():
        raise DataError(f"{int(bad.sum())} samples have NaN targets (first end index {int(idx[bad][0])}); "
                        f"build the indices with make_splits, which drops them")
    start = window_starts(arrays.ts, window_cfg, idx)  # (n,)
    lo, hi = int(start.min()), int(idx.max())
    M = hi - lo + 1
    T = window_cfg.t_max
    # T zero rows after the last bar, so every window's block copy of T rows stays inside the table.
    bars = np.zeros((M + T, V), dtype=np.float32)  # (M+T, V)
    scalers.transform_features(np.asarray(arrays.X)[lo:hi + 1], out=bars[:M])
    temporal = np.zeros((M + T, 4), dtype=np.float32)  # (M+T, 4)
    temporal[:M] = temporal_features(np.asarray(arrays.ts)[lo:hi + 1])
    scale = scalers.target_scale(arrays, idx)  # (n, H)
    vol = scalers.vol_inputs(arrays, idx, scale) if scalers.vol_center is not None else None  # (n, K)
    return WindowDataset(bars=bars, temporal=temporal, start=start - lo, length=idx - start + 1, y=y,
                         scale=scale, idx=idx, ts=np.asarray(arrays.ts)[idx].astype("datetime64[us]"),
                         t_max=window_cfg.t_max, names=list(arrays.names), horizons=scalers.horizons, vol=vol)


class WindowLoader:
    """Iterates a split in batches of torch tensors: x, mask, temporal, y, scale, idx (docs/features.md §11).

    WindowLoader(arrays, idx, scalers, window_cfg, ...) builds the split's WindowDataset;
    WindowLoader.from_dataset(ds, ...) reuses one (e.g. from Ray's object store). With shuffle, each
    epoch draws a permutation from (seed, epoch), so runs repeat exactly; call set_epoch(e) to resume.

    reuse_buffers: every batch is written into the same preallocated tensors (the yielded ones), so
    a batch is valid only until the next one is drawn; a consumer that trains or predicts on each
    batch before asking for the next (train.py) gets the same values faster: the buffers stay in
    cache and nothing is allocated per batch. Off by default, so `list(loader)` keeps every batch.
    pin_memory (for a CUDA consumer): each batch is copied into page-locked memory from torch's
    caching host allocator (which keeps a block until its copies are done, so a reused source buffer
    is safe), and `.to("cuda", non_blocking=True)` overlaps the copy with compute.
    """

    def __init__(self, arrays, idx, scalers: Scalers, window_cfg: WindowConfig, batch_size: int = 128,
                 shuffle: bool = False, seed: int | None = None, drop_last: bool = False, pin_memory: bool = False,
                 reuse_buffers: bool = False):
        ds = dataset_arrays(arrays, idx, scalers, window_cfg)
        self._setup(ds, batch_size, shuffle, window_cfg.seed if seed is None else seed, drop_last, pin_memory,
                    reuse_buffers)

    @classmethod
    def from_dataset(cls, dataset: WindowDataset, batch_size: int = 128, shuffle: bool = False, seed: int = 0,
                     drop_last: bool = False, pin_memory: bool = False, reuse_buffers: bool = False) -> WindowLoader:
        self = cls.__new__(cls)
        self._setup(dataset, batch_size, shuffle, seed, drop_last, pin_memory, reuse_buffers)
        return self

    def _setup(self, dataset: WindowDataset, batch_size: int, shuffle: bool, seed: int, drop_last: bool,
               pin_memory: bool = False, reuse_buffers: bool = False) -> None:
        if batch_size < 1:
            raise SpecError(f"batch_size ({batch_size}) must be >= 1")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.pin_memory = bool(pin_memory)
        self.reuse_buffers = bool(reuse_buffers)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self) -> np.ndarray:
        """(n,) dataset rows in this epoch's order."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def __iter__(self):
        import torch

        order = self.order()
        fill = _BufferedBatches(self.dataset, self.batch_size) if self.reuse_buffers and len(self) else None
        for b in range(len(self)):
            rows = order[b * self.batch_size:(b + 1) * self.batch_size]
            if fill is not None:
                out = fill(rows)
            else:
                out = {k: torch.from_numpy(v) for k, v in self.dataset.batch(rows).items()}
            if self.pin_memory:
                out = {k: v.pin_memory() for k, v in out.items()}
            yield out
        if self.shuffle:
            self.epoch += 1  # the next pass draws a new permutation


class _BufferedBatches:
    """WindowDataset.batch written into one set of preallocated tensors (WindowLoader(reuse_buffers=True)).

    The same values as WindowDataset.batch (tests/test_windows.py checks it); the block copies go
    through torch.index_select on overlapping strided views, because numpy's fancy indexing cannot
    write into a given array and np.take would first copy the whole overlapping view.
    """

    def __init__(self, ds: WindowDataset, batch_size: int):
        import torch

        B, T, V = batch_size, ds.t_max, ds.bars.shape[1]
        H = ds.y.shape[1]
        self.ds, self.T = ds, T
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Ray hands out read-only arrays; nothing writes to them
            bars, temporal = torch.from_numpy(ds.bars), torch.from_numpy(ds.temporal)
        R = bars.shape[0]
        self.bars = bars.as_strided((R - T + 1, T * V), (V, 1))  # row s: bars s..s+T-1, flattened
        self.temporal = temporal.as_strided((R - T + 1, T * 4), (4, 1))
        self.vol = ds.vol if ds.vol is not None else np.zeros((len(ds), 0), np.float32)  # (n, K)
        shapes = {"x": ((B, T, V), ds.bars.dtype), "mask": ((B, T), np.bool_), "temporal": ((B, T, 4), ds.temporal.dtype),
                  "y": ((B, H), ds.y.dtype), "scale": ((B, H), ds.scale.dtype),
                  "vol": ((B, self.vol.shape[1]), self.vol.dtype), "idx": ((B,), ds.idx.dtype)}
        self.out = {k: torch.from_numpy(np.empty(shape, dtype)) for k, (shape, dtype) in shapes.items()}

    def __call__(self, rows: np.ndarray) -> dict:
        import torch

        ds, T = self.ds, self.T
        B = rows.shape[0]
        out = {k: v[:B] for k, v in self.out.items()}  # leading-dim slices stay contiguous
        host = {k: v.numpy() for k, v in out.items()}  # numpy views of the same memory
        start, length = ds.start[rows], ds.length[rows]  # (B,), (B,)
        s = torch.from_numpy(start)
        torch.index_select(self.bars, 0, s, out=out["x"].view(B, -1))  # (B, T*V) one block per window
        torch.index_select(self.temporal, 0, s, out=out["temporal"].view(B, -1))  # (B, T*4)
        np.take(_prefix_masks(T), length, axis=0, out=host["mask"], mode="clip")  # (B, T)
        pad = np.flatnonzero(_padding_masks(T)[length])  # (P,) flat step ids b*T + j with j >= L_b
        if pad.size:
            for name in ("x", "temporal"):
                steps = _as_rows(host[name].reshape(B * T, -1))  # (B*T,) one item per step
                steps[pad] = np.zeros((), dtype=steps.dtype)
        # mode="clip" writes straight into `out` (mode="raise" buffers); rows are valid indices anyway.
        for name in ("y", "scale", "idx"):
            np.take(getattr(ds, name), rows, axis=0, out=host[name], mode="clip")
        np.take(self.vol, rows, axis=0, out=host["vol"], mode="clip")
        return out
