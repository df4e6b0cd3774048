"""Every baseline the model is scored against: climatology, vol-scaled, MC-GARCH and LightGBM quantiles.

A distributional model earns its place only against what econometrics already does
(docs/metrics.md §7-§8). Every baseline here is fitted on train bars/samples only, filtered or
predicted causally through val and test without refitting, and produces (n, H, Q) quantiles that
never cross, scored on exactly the samples the model is scored on.

* `ClimatologyBaseline`: unconditional train quantiles of y per horizon.
* `VolScaledBaseline`: train quantiles of z = y / σ̂, times the evaluated split's σ̂. σ̂ is the
  causal `scale` (N, H) array that windows.py produces (time-of-day profile × recent realized
  vol, known at the window's last bar), the same array the model de-normalizes with.
* `mcgarch`: the multiplicative component GARCH filter (model/volatility.py, where the model's own
  sigma-hat can use it too); its quantiles are the train quantiles of y / sigma_mcgarch per
  horizon, times sigma_mcgarch.
* `LGBMQuantiles`: one LightGBM booster per (horizon, tau) with `objective='quantile'` on the
  feature set's features at the origin bar, the recent 30- and 60-minute returns and log sigma-hat,
  with target y / sigma-hat; early-stopped on val; outputs sorted per row (the rearrangement of
  Chernozhukov, Fernandez-Val and Galichon 2010) so they never cross.

Each fitted baseline goes into a trial's bundle as data, never as a pickle: `to_state()` gives JSON
values and numpy arrays (the boosters as LightGBM's text model) and `from_state()` rebuilds it;
`fitted_to_state` / `fitted_from_state` do that for the name -> state dict `fit_and_predict` fills
(docs/experiments.md §13).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nqexp.errors import DataError
from nqexp.model.volatility import MCGarch

log = logging.getLogger(__name__)

BASELINES = ("climatology", "volscaled", "mcgarch", "lgbm")  # every name eval.baselines accepts
# ------------------------------------------------------------------------------------------
# Climatology and vol-scaled


def _check_targets(y, name: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2:
        raise DataError(f"{name} must be (N, H), got shape {y.shape}; pass one column per horizon")
    empty = [h for h in range(y.shape[1]) if not np.isfinite(y[:, h]).any()]
    if empty:
        raise DataError(f"{name} has no finite target at horizon index {empty}; "
                        "check the train split dates and the target drop rules")
    return y


def _check_scale(scale, name: str, shape=None) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float64)
    if scale.ndim != 2 or (shape is not None and scale.shape != shape):
        raise DataError(f"{name} must be (N, H) like y {shape}, got shape {scale.shape}")
    bad = ~np.isfinite(scale) | (scale <= 0)
    if bad.any():
        i, h = np.argwhere(bad)[0]
        raise DataError(f"{name} must be finite and > 0; {int(bad.sum())} entries are not "
                        f"(first at sample {i}, horizon index {h}: {scale[i, h]!r})")
    return scale


@dataclass
class ClimatologyBaseline:
    """Unconditional train quantiles of y per horizon: the same forecast for every sample."""

    taus: Sequence[float]
    q_: np.ndarray | None = field(default=None, repr=False)  # (H, Q) fitted quantiles

    def fit(self, y_train) -> ClimatologyBaseline:
        """y_train: (N, H) train targets; NaN targets are ignored."""
        y = _check_targets(y_train, "climatology y_train")
        self.q_ = np.nanquantile(y, np.asarray(self.taus), axis=0).T  # (H, Q)
        return self

    def quantiles(self, scale_or_n) -> np.ndarray:
        """(N, H, Q) forecast. Accepts the split's scale (N, H), used only for N, or N itself."""
        assert self.q_ is not None, "fit() first"
        n = int(scale_or_n) if np.ndim(scale_or_n) == 0 else np.shape(scale_or_n)[0]
        return np.broadcast_to(self.q_, (n, *self.q_.shape)).copy()  # (N, H, Q)

    def to_state(self) -> dict:
        assert self.q_ is not None, "fit() first"
        return {"taus": [float(t) for t in self.taus], "q": np.asarray(self.q_, dtype=np.float64)}

    @classmethod
    def from_state(cls, state) -> ClimatologyBaseline:
        return cls(taus=_state_taus(state), q_=_state_table(state, "q", "climatology"))


@dataclass
class VolScaledBaseline:
    """Train quantiles of z = y / σ̂, rescaled by the evaluated split's causal σ̂: q = σ̂ · z_τ."""

    taus: Sequence[float]
    z_: np.ndarray | None = field(default=None, repr=False)  # (H, Q) quantiles of y / scale

    def fit(self, y_train, scale_train) -> VolScaledBaseline:
        """y_train, scale_train: (N, H) train targets and their causal vol estimates (> 0)."""
        y = _check_targets(y_train, "vol-scaled y_train")
        scale = _check_scale(scale_train, "vol-scaled scale_train", y.shape)
        self.z_ = np.nanquantile(y / scale, np.asarray(self.taus), axis=0).T  # (H, Q)
        return self

    def quantiles(self, scale) -> np.ndarray:
        """scale: (N, H) causal vol of the evaluated split -> (N, H, Q)."""
        assert self.z_ is not None, "fit() first"
        scale = _check_scale(scale, "vol-scaled scale", None)
        return scale[:, :, None] * self.z_[None, :, :]  # (N, H, Q)

    def to_state(self) -> dict:
        assert self.z_ is not None, "fit() first"
        return {"taus": [float(t) for t in self.taus], "z": np.asarray(self.z_, dtype=np.float64)}

    @classmethod
    def from_state(cls, state) -> VolScaledBaseline:
        return cls(taus=_state_taus(state), z_=_state_table(state, "z", "vol-scaled"))


def _state_taus(state) -> tuple[float, ...]:
    return tuple(float(t) for t in state["taus"])


def _state_table(state, key: str, name: str) -> np.ndarray:
    """A fitted (H, Q) quantile table, checked against the state's levels."""
    table = np.asarray(state[key], dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != len(state["taus"]) or not np.isfinite(table).all():
        raise DataError(f"{name} state: the quantile table has shape {table.shape} (finite values for "
                        f"{len(state['taus'])} levels expected)")
    return table


# ------------------------------------------------------------------------------------------
# LightGBM quantile regression


def lgbm_inputs(arrays, idx, scale) -> tuple[np.ndarray, list[str]]:
    """(n, F) inputs at each origin: the set's features, the last 30/60 minutes' returns
    in units of the 1-bar sigma-hat, and log sigma-hat per horizon. Everything is known at the origin."""
    idx = np.asarray(idx, dtype=np.int64)
    names = list(arrays.names)
    # Every feature is scale-free and point-in-time (docs/features.md §13), so the trees may read them
    # all: none is a price level that identifies the date.
    X = np.asarray(arrays.X)[idx].astype(np.float64)  # (n, V)
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
    return cols, names + extra_names


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
    note: str = ""                    # what `fit` had to change to fit at all (shown with the metrics)

    # A tree needs two leaves of min_data_in_leaf rows to split at all: with fewer train rows every
    # booster is one constant, which is the MC-GARCH baseline again (the target is y / sigma-hat).
    # Then the leaf size shrinks to a tenth of the rows (at least MIN_LEAF), and `note` says so.
    MIN_LEAF = 5

    def _min_leaf(self, n_rows: int) -> int:
        if n_rows >= 4 * self.min_data_in_leaf:
            return self.min_data_in_leaf
        leaf = max(self.MIN_LEAF, n_rows // 10)
        self.note = (f"lgbm: {n_rows} train samples < {4 * self.min_data_in_leaf} (4 x min_data_in_leaf "
                     f"{self.min_data_in_leaf}), fitted with min_data_in_leaf={leaf}")
        return leaf

    def _params(self, tau: float, min_leaf: int) -> dict:
        return {"objective": "quantile", "alpha": float(tau), "num_leaves": self.num_leaves,
                "learning_rate": self.learning_rate, "min_data_in_leaf": min_leaf,
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
        min_leaf = self._min_leaf(len(tr))
        self.boosters = []
        for j in range(np.shape(z_train)[1]):
            dtrain = lgb.Dataset(X_train[tr], z_train[tr, j], free_raw_data=False)
            dval = lgb.Dataset(X_val[va], z_val[va, j], reference=dtrain)
            row = []
            for tau in self.taus:
                row.append(lgb.train(self._params(tau, min_leaf), dtrain, num_boost_round=self.max_rounds, valid_sets=[dval],
                                     callbacks=[lgb.early_stopping(self.early_stopping, verbose=False)]))
            self.boosters.append(row)
        return self

    def quantiles(self, X, scale) -> np.ndarray:
        """(n, H, Q) = sigma-hat * sorted booster outputs."""
        z = np.stack([np.stack([b.predict(X, num_iteration=b.best_iteration) for b in row], axis=1)
                      for row in self.boosters], axis=1)  # (n, H, Q)
        z.sort(axis=2)  # rearrangement: the sorted curve is never a worse quantile estimate, and can't cross
        return np.asarray(scale, dtype=np.float64)[:, :, None] * z

    def to_state(self) -> dict:
        """Settings and each booster as LightGBM's text model (`model_to_string`, up to its best iteration)."""
        settings = {f: getattr(self, f) for f in ("max_train_rows", "max_val_rows", "num_leaves", "learning_rate",
                                                  "max_rounds", "early_stopping", "min_data_in_leaf", "seed",
                                                  "num_threads")}
        return {"taus": [float(t) for t in self.taus], **settings, "names": [str(n) for n in self.names],
                "boosters": [[b.model_to_string() for b in row] for row in self.boosters],
                "best_iteration": [[int(b.best_iteration) for b in row] for row in self.boosters]}

    @classmethod
    def from_state(cls, state) -> LGBMQuantiles:
        import lightgbm as lgb

        settings = {k: v for k, v in state.items() if k not in ("taus", "names", "boosters", "best_iteration")}
        m = cls(taus=_state_taus(state), names=[str(n) for n in state["names"]], **settings)
        if [len(row) for row in state["boosters"]] != [len(m.taus)] * len(state["boosters"]):
            raise DataError(f"lgbm state: {[len(row) for row in state['boosters']]} boosters per horizon, "
                            f"expected {len(m.taus)} (one per level)")
        try:
            m.boosters = [[lgb.Booster(model_str=text) for text in row] for row in state["boosters"]]
        except lgb.basic.LightGBMError as exc:
            raise DataError(f"lgbm state: a booster's text model does not parse ({str(exc)[:120]})") from None
        for row, its in zip(m.boosters, state["best_iteration"]):
            for b, it in zip(row, its):
                b.best_iteration = int(it)
        return m


# ------------------------------------------------------------------------------------------
# All baselines of one data configuration


def fit_and_predict(arrays, split_idx: dict, targets: dict, taus, *, model_scale: dict, ewma_scale: dict,
                    names=BASELINES, garch: MCGarch | None = None, lo: int | None = None,
                    lgbm: dict | None = None, fitted: dict | None = None,
                    notes: list[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Fit the named baselines on train and forecast every split: split -> name -> (n, H, Q).

    split_idx: split -> (n,) sample end indices into arrays; targets: split -> (n, H) y;
    model_scale: split -> (n, H) the model's sigma-hat (the tree baseline's target unit);
    ewma_scale: split -> (n, H) the tod x EWMA sigma-hat (the vol-scaled baseline's scale);
    garch: an MCGarch already fitted on the train bars (else one is fitted here); lo: the first bar
    the train windows read (default: the first train end); lgbm: LGBMQuantiles settings;
    fitted: when given, receives each baseline's fitted state (name -> quantile table / models),
    which is what `nqexp predict` needs to issue the same baselines on new bars; notes: receives a
    line for every baseline that could not be fitted as specified (never a silent copy of another).
    """

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
        if m.note and notes is not None:
            notes.append(m.note)
        for s in split_idx:
            out[s]["lgbm"] = m.quantiles(feats[s], model_scale[s])
    return out


# ------------------------------------------------------------------------------------------
# Fitted state as data (a trial's bundle)


def fitted_to_state(fitted: dict) -> dict:
    """`fit_and_predict`'s fitted state (name -> baseline) as JSON values and numpy arrays."""
    out = {}
    for name, obj in fitted.items():
        if name == "mcgarch":
            out[name] = {"garch": obj["garch"].to_state(), "quantiles": obj["quantiles"].to_state()}
        elif name in ("climatology", "volscaled", "lgbm"):
            out[name] = obj.to_state()
        else:
            raise AssertionError(f"no state format for baseline {name!r}")
    return out


def fitted_from_state(state: dict) -> dict:
    """The fitted baselines `fitted_to_state` described (name -> baseline, as `fit_and_predict` fills)."""
    classes = {"climatology": ClimatologyBaseline, "volscaled": VolScaledBaseline, "lgbm": LGBMQuantiles}
    out = {}
    for name, part in state.items():
        if name == "mcgarch":
            out[name] = {"garch": MCGarch.from_state(part["garch"]),
                         "quantiles": VolScaledBaseline.from_state(part["quantiles"])}
        elif name in classes:
            out[name] = classes[name].from_state(part)
        else:
            raise DataError(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})")
    return out
