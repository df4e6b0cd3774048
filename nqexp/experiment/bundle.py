"""Model bundles: what `nqexp predict` needs from a trial, stored as data (no pickle) and checked on load.

A trial's bundle (`<trial_dir>/bundle/`, written by `write_bundle` at the end of each trial) is
everything a fresh process needs, without Ray, W&B or the training data (docs/experiments.md §12-§13):

  * `model.safetensors`: the best checkpoint's weights (tensors only: nothing in the file runs on load);
  * `model.json`: the model config and the window config the model was trained with;
  * `state.json` + `state.npz`: what was fitted on train, as JSON values and numeric arrays (read with
    `np.load(allow_pickle=False)`): the `windows.Scalers` (feature standardization, sigma-hat with its
    MC-GARCH) and the baselines' state (climatology, vol-scaled and MC-GARCH quantile tables, the
    LightGBM boosters as LightGBM text models when they are small), and the recalibration fitted on
    val (docs/metrics.md §13; null when the trial has none). The classes write and read their
    own state (`to_state` / `from_state`); a JSON leaf {"$npz": KEY} stands for the array KEY;
  * `bundle.json`: the facts (feature set and its SQL hash, symbol, bar size, horizons, quantile
    levels, head, variable names, window config, the resolved spec, the nqexp version) and the
    manifest: the sha256 and size of each file above.

`load_bundle` reads nothing it has not checked. A bundle holding a pickle (`*.pkl`, `*.pt`, as
bundles before version 2 did) is refused unread. Each file must match the manifest: a truncated or
edited file is refused before it is parsed. The manifest does not cover bundle.json itself; instead
every fact in it that a forecast depends on is checked against the files it describes (model.json,
the weights' shapes, the fitted state) and, in `check_feature_set`, against the feature set as
defined now. So a hand edit that would change a forecast (reversed horizons, other levels, another
t_max) is refused, and one that would not (notes, the informational spec) is not. Every refusal is
one DataError line naming the file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import nqexp
from nqexp import features
from nqexp.errors import DataError, SpecError
from nqexp.evaluation import baselines, recalibrate
from nqexp.model.train import BEST_KEYS, load_checkpoint
from nqexp.model.windows import Scalers, WindowConfig
from nqexp.secrets import redact

BUNDLE_DIR = "bundle"
BUNDLE_VERSION = 2           # 1: model.pt + state.pkl (pickles, refused since)
MAX_LGBM_BYTES = 8_000_000   # the boosters' text models go into the bundle only below this size
META, WEIGHTS, MODEL_JSON = "bundle.json", "model.safetensors", "model.json"
STATE_JSON, STATE_NPZ = "state.json", "state.npz"
ENSEMBLE = "ensemble.json"   # a seed ensemble's whole bundle: its member trials (docs/experiments.md §16)
FILES = (WEIGHTS, MODEL_JSON, STATE_JSON, STATE_NPZ)          # what the manifest in bundle.json covers
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth")           # never loaded from a bundle
_ARRAY = "$npz"                                                # {"$npz": key}: the array `key` of state.npz
FIX = "copy the trial's bundle again, or retrain the trial"
# bundle.json keys load_bundle reads, with their JSON types
_META_TYPES = {"bundle_version": int, "symbol": str, "feature_set": str, "sql_hash": str, "bars_table": str,
               "freq_minutes": int, "horizons": list, "horizon_minutes": list, "taus": list, "head": str,
               "names": list, "windows": dict, "baselines": list, "files": dict}
_META_ITEMS = {"horizons": (int,), "horizon_minutes": (int,), "taus": (int, float), "names": (str,),
               "baselines": (str,)}


@dataclass
class Bundle:
    path: Path
    meta: dict[str, Any]                           # bundle.json
    scalers: Any                                   # windows.Scalers
    baselines: dict[str, Any]                      # name -> fitted state (baselines.fit_and_predict)
    window_cfg: Any                                # windows.WindowConfig the model was trained with
    model_cfg: Any                                 # net.ModelConfig
    model: Any                                     # the network with the bundle's weights, on CPU, eval mode
    recalibration: Any = None                      # recalibrate.Recalibration fitted on val, or None

    @property
    def taus(self) -> tuple[float, ...]:
        return tuple(self.meta["taus"])

    @property
    def horizons(self) -> tuple[int, ...]:
        return tuple(self.meta["horizons"])

    @property
    def fitted_sessions(self) -> tuple[np.datetime64, np.datetime64] | None:
        """(first, last) session date the model and its scalers were fitted or selected on: train
        through val. A forecast there is in-sample. None for a bundle that does not record it."""
        fitted = self.meta.get("fitted_sessions")
        if not (isinstance(fitted, list) and len(fitted) == 2):
            return None
        return np.datetime64(fitted[0], "D"), np.datetime64(fitted[1], "D")

    @property
    def horizon_minutes(self) -> tuple[int, ...]:
        return tuple(self.meta["horizon_minutes"])


# ------------------------------------------------------------------------------------------
# Writing


def write_bundle(trial_dir: Path, trial_spec, checkpoint, data, recalibration=None) -> Path:
    """Write `<trial_dir>/bundle/` from the best checkpoint, the data's train-fitted state and the
    val-fitted `recalibration` (recalibrate.Recalibration; None: none); the previous bundle (of any
    version) is replaced whole."""
    from safetensors.torch import save_file

    if data.scalers is None:
        raise DataError("the prepared data holds no fitted scalers; prepare it with pipeline.prepare_data")
    ckpt = load_checkpoint(checkpoint, "cpu", BEST_KEYS)
    state = baselines.fitted_to_state(data.baseline_state)
    notes = []
    if "lgbm" in state:
        size = sum(len(text) for row in state["lgbm"]["boosters"] for text in row)
        if size > MAX_LGBM_BYTES:
            state.pop("lgbm")
            notes.append(f"lgbm boosters left out ({size / 1e6:.1f} MB > {MAX_LGBM_BYTES / 1e6:.0f} MB)")
    out = Path(trial_dir) / BUNDLE_DIR
    tmp = out.with_name(f".{BUNDLE_DIR}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in ckpt["model"].items()}, str(tmp / WEIGHTS))
    _write_json(tmp / MODEL_JSON, {"model": dict(ckpt["model_cfg"]), "windows": dataclasses.asdict(trial_spec.windows),
                                   "epoch": ckpt.get("epoch"), "val_crps": ckpt.get("val_crps")})
    arrays: dict[str, np.ndarray] = {}
    _write_json(tmp / STATE_JSON, {"scalers": _split_arrays(data.scalers.to_state(), "scalers", arrays),
                                   "baselines": _split_arrays(state, "baselines", arrays),
                                   "recalibration": None if recalibration is None else recalibration.to_state()})
    with open(tmp / STATE_NPZ, "wb") as f:
        np.savez(f, **arrays)
    path = getattr(trial_spec.features, "path", None)
    fs = features.resolve_set(trial_spec.features.set, path)
    meta = {
        "bundle_version": BUNDLE_VERSION,
        "nqexp_version": nqexp.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "symbol": trial_spec.data.symbol,
        "feature_set": fs.name,
        "feature_path": None if path is None else str(path),
        "sql_hash": fs.sql_hash,
        "bars_table": fs.bars_table,
        "freq_minutes": int(fs.freq_minutes),
        "horizons": [int(h) for h in fs.horizons],
        "horizon_minutes": [int(m) for m in data.horizon_minutes],
        "taus": [float(t) for t in trial_spec.model.quantiles],
        "head": trial_spec.model.head,
        "names": list(data.names),
        "windows": dataclasses.asdict(trial_spec.windows),
        "baselines": sorted(state),
        # Train through val (its early stopping chose the checkpoint): forecasts there are in-sample.
        "fitted_sessions": [str(trial_spec.splits.train_start), str(trial_spec.splits.val_end)],
        "notes": notes,
        "spec": redact(trial_spec.to_dict()),  # the one secret policy (nqexp/secrets.py)
        "files": manifest(tmp),
    }
    _write_json(tmp / META, meta)
    # Swap the folders, so no file of an older bundle (a state.pkl) survives next to the new ones.
    old = out.with_name(f".{BUNDLE_DIR}.old-{os.getpid()}")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest of a bundle folder: the sha256 and size of each of FILES."""
    return {name: _digest(Path(folder) / name) for name in FILES}


def _digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"sha256": h.hexdigest(), "bytes": path.stat().st_size}


def _split_arrays(tree, key: str, arrays: dict[str, np.ndarray]):
    """A state tree with every numpy array moved into `arrays` (under its dotted key) and replaced by
    {"$npz": key}: what is left is JSON."""
    if isinstance(tree, np.ndarray):
        assert tree.dtype.kind in "biuf", f"{key}: only numeric arrays go into {STATE_NPZ} (got {tree.dtype})"
        arrays[key] = tree
        return {_ARRAY: key}
    if isinstance(tree, dict):
        return {str(k): _split_arrays(v, f"{key}.{k}", arrays) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_split_arrays(v, f"{key}.{i}", arrays) for i, v in enumerate(tree)]
    assert tree is None or isinstance(tree, (str, bool, int, float)), f"{key}: {type(tree).__name__} is not JSON data"
    return tree


def _join_arrays(tree, arrays: dict[str, np.ndarray], npz: Path):
    if isinstance(tree, dict):
        if set(tree) == {_ARRAY}:
            if tree[_ARRAY] not in arrays:
                raise DataError(f"{npz} lacks the array {tree[_ARRAY]!r} that {STATE_JSON} names; {FIX}")
            return arrays[tree[_ARRAY]]
        return {k: _join_arrays(v, arrays, npz) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join_arrays(v, arrays, npz) for v in tree]
    return tree


# ------------------------------------------------------------------------------------------
# Reading and checking


def load_bundle(trial_dir) -> Bundle:
    """The trial's bundle, every file checked (see the module docstring); DataError otherwise."""
    # lazy: imports torch
    from nqexp.model.net import model_config_from_saved

    trial_dir = Path(trial_dir)
    path = trial_dir / BUNDLE_DIR
    pickled = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES) if path.is_dir() else []
    if pickled:
        raise DataError(f"{path} holds {', '.join(pickled)}: pickles, which can run code when loaded, so nqexp "
                        f"refuses them (a bundle before version {BUNDLE_VERSION}, or a crafted file). It cannot be "
                        f"converted without loading it; {_retrain_hint(trial_dir)}")
    if (path / ENSEMBLE).exists() and not (path / META).exists():
        raise DataError(f"{path} is a seed ensemble's bundle ({ENSEMBLE}): it has no model of its own; "
                        f"load its members' bundles with load_bundles")
    if not (path / META).exists():
        raise DataError(f"trial {trial_dir} has no model bundle ({path}); it was trained before bundles "
                        f"existed or did not finish: rerun it (nqexp run SPEC --resume EXP)")
    meta = _read_json(path / META)
    if meta.get("bundle_version") != BUNDLE_VERSION:
        raise DataError(f"{path / META}: bundle version {meta.get('bundle_version')!r}; nqexp {nqexp.__version__} "
                        f"reads version {BUNDLE_VERSION}: {_retrain_hint(trial_dir)}")
    for key, kind in _META_TYPES.items():
        if not isinstance(meta.get(key), kind):
            raise DataError(f"{path / META}: {key!r} is missing or not a JSON {kind.__name__}; {FIX}")
    for key, kinds in _META_ITEMS.items():
        if not all(isinstance(v, kinds) and not isinstance(v, bool) for v in meta[key]):
            raise DataError(f"{path / META}: {key!r} must hold {' or '.join(k.__name__ for k in kinds)} values; {FIX}")
    _check_manifest(path, meta["files"])

    info = _read_json(path / MODEL_JSON)
    try:
        model_cfg = model_config_from_saved(info["model"])
        window_cfg = WindowConfig(**info["windows"])
    except (KeyError, TypeError, AttributeError, SpecError) as exc:
        raise DataError(f"{path / MODEL_JSON}: not a model and window config ({type(exc).__name__}: {exc}); {FIX}") \
            from None
    arrays = _read_npz(path / STATE_NPZ)
    state = _join_arrays(_read_json(path / STATE_JSON), arrays, path / STATE_NPZ)
    try:
        scalers = Scalers.from_state(state["scalers"])
        fitted = baselines.fitted_from_state(state["baselines"])
        recal = state.get("recalibration")
        recal = None if recal is None else recalibrate.Recalibration.from_state(recal)
    except DataError as exc:
        raise DataError(f"{path / STATE_JSON}: {exc}; {FIX}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise DataError(f"{path / STATE_JSON}: not a fitted state nqexp wrote ({type(exc).__name__}: {exc}); "
                        f"{FIX}") from None
    bundle = Bundle(path=path, meta=meta, scalers=scalers, baselines=fitted, window_cfg=window_cfg,
                    model_cfg=model_cfg, model=_load_model(path / WEIGHTS, model_cfg), recalibration=recal)
    check_facts(bundle)
    return bundle


def _retrain_hint(trial_dir: Path) -> str:
    spec = trial_dir / "spec.yaml"
    run = f"nqexp run {spec} --set name=NEW_NAME" if spec.exists() else "nqexp run SPEC --set name=NEW_NAME"
    return f"retrain the trial with this nqexp to get a bundle it reads: {run} (--resume skips finished trials)"


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} is missing; {FIX}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not valid JSON (not UTF-8 text): it was truncated or edited; {FIX}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): "
                        f"it was truncated or edited; {FIX}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a JSON {type(obj).__name__}, not an object; {FIX}")
    return obj


def _check_manifest(path: Path, files: dict) -> None:
    for name in FILES:
        if name not in files:
            raise DataError(f"{path / META}: the manifest lists no {name}; {FIX}")
        if not (path / name).is_file():
            raise DataError(f"{path / name} is missing (the manifest in {META} lists it); {FIX}")
        want, got = files[name], _digest(path / name)
        if want != got:
            said = want if isinstance(want, dict) else {}
            size = said.get("bytes")
            raise DataError(f"{path / name} does not match the manifest in {META} ({got['bytes']:,} bytes, sha256 "
                            f"{got['sha256'][:12]}; the manifest says {f'{size:,}' if isinstance(size, int) else size} "
                            f"bytes, sha256 {str(said.get('sha256'))[:12]}): it was truncated or edited; {FIX}")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{path} holds pickled Python objects, which nqexp never loads (they can run code); "
                            f"{FIX}") from None
        raise DataError(f"{path} cannot be read ({exc}); {FIX}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} cannot be read ({type(exc).__name__}: {exc}); {FIX}") from None


def _load_model(path: Path, model_cfg):
    """The network of model.json's config with the safetensors weights, every tensor's name and shape checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    # lazy: imports torch
    from nqexp.model.net import build_model

    try:
        weights = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read ({exc}); {FIX}") from None
    model = build_model(model_cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise DataError(f"{path}: the weights do not fit the model config in {MODEL_JSON} "
                        f"({detail[:240]}); {FIX}") from None
    return model.eval()


def _differs(path: Path, what: str, got, want, where: str) -> None:
    """DataError naming `path` when `got` (its fact) is not `want` (what `where` holds); long lists by
    their first difference, so the line stays short."""
    if got == want:
        return
    if isinstance(got, list) and isinstance(want, list) and max(len(got), len(want)) > 8:
        if len(got) == len(want):
            i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
            what, got, want = f"{what}[{i}]", got[i], want[i]
        else:
            what, got, want = f"{what} (count)", len(got), len(want)
    raise DataError(f"{path}: {what} = {got!r}, but {where} has {want!r}; the file was edited or the bundle "
                    f"mixes two trials: {FIX}")


def check_facts(bundle: Bundle) -> None:
    """bundle.json's facts against model.json, the weights and the fitted state (one line per refusal).

    The other files are covered by the manifest, so a disagreement names bundle.json, the file that is not."""
    meta, cfg, s, path = bundle.meta, bundle.model_cfg, bundle.scalers, bundle.path
    bj, model, scalers = path / META, f"the model ({MODEL_JSON})", f"the scalers ({STATE_JSON})"
    if cfg.head != meta["head"]:
        raise DataError(f"{bj}: head = {meta['head']!r} ({len(meta['taus'])} levels), but the model ({MODEL_JSON}, "
                        f"{WEIGHTS}) has a {cfg.head} head with {cfg.n_outputs} output(s) per horizon; {FIX}")
    taus = [float(t) for t in meta["taus"]]
    _differs(bj, "taus", taus, [float(t) for t in cfg.quantiles], model)
    _differs(bj, "horizons", list(meta["horizons"]), list(cfg.horizons), model)
    _differs(bj, "horizons", list(meta["horizons"]), list(s.horizons), scalers)
    _differs(bj, "freq_minutes", meta["freq_minutes"], s.freq_minutes, scalers)
    _differs(bj, "horizon_minutes", list(meta["horizon_minutes"]), [h * s.freq_minutes for h in s.horizons],
             f"horizons x freq_minutes ({list(s.horizons)} x {s.freq_minutes})")
    if len(meta["names"]) != cfg.n_vars:
        raise DataError(f"{bj}: names hold {len(meta['names'])} variables, but the model takes n_vars = {cfg.n_vars} "
                        f"({MODEL_JSON}); {FIX}")
    _differs(bj, "names", list(meta["names"]), list(s.names), scalers)
    trained = dataclasses.asdict(bundle.window_cfg)
    for key in sorted(set(trained) | set(meta["windows"])):
        _differs(bj, f"windows.{key}", meta["windows"].get(key), trained.get(key),
                 f"the windows the model was trained with ({MODEL_JSON})")
    if (s.garch is not None) != (bundle.window_cfg.sigma == "mcgarch"):
        raise DataError(f"{path / STATE_JSON}: the scalers {'hold' if s.garch is not None else 'lack'} an MC-GARCH, "
                        f"but windows.sigma is {bundle.window_cfg.sigma!r} ({MODEL_JSON}); {FIX}")
    _differs(bj, "baselines", sorted(meta["baselines"]), sorted(bundle.baselines), STATE_JSON)
    for name, fitted in bundle.baselines.items():
        table = fitted["quantiles"] if name == "mcgarch" else fitted
        shape = (len(table.boosters), len(table.taus)) if name == "lgbm" else \
            (table.q_ if name == "climatology" else table.z_).shape
        where = f"baseline {name} ({STATE_JSON})"
        _differs(bj, "taus", taus, [float(t) for t in table.taus], where)
        _differs(bj, "horizons x taus", (len(meta["horizons"]), len(taus)), tuple(shape), where)


def check_feature_set(bundle: Bundle):
    """The feature set as defined now; DataError when its SQL changed since training or bundle.json's
    facts about it (columns, horizons, bar size) are not the set's."""

    fs = features.resolve_set(bundle.meta["feature_set"], bundle.meta.get("feature_path"))
    if fs.sql_hash != bundle.meta["sql_hash"]:
        raise DataError(f"feature set {fs.name} changed since training: SQL hash now {fs.sql_hash[:12]}, "
                        f"trained on {bundle.meta['sql_hash'][:12]}; retrain the trial on the current SQL")
    bj, where = bundle.path / META, f"feature set {fs.name} (same SQL hash)"
    _differs(bj, "names", list(bundle.meta["names"]), list(fs.columns), f"the columns of {where}")
    _differs(bj, "horizons", list(bundle.meta["horizons"]), list(fs.horizons), where)
    _differs(bj, "freq_minutes", bundle.meta["freq_minutes"], int(fs.freq_minutes), where)
    _differs(bj, "bars_table", bundle.meta["bars_table"], fs.bars_table, where)
    return fs


# ------------------------------------------------------------------------------------------
# Seed ensembles (docs/experiments.md §16): a bundle that is only the names of its member trials


def write_ensemble(trial_dir: Path, members) -> Path:
    """Write `<trial_dir>/bundle/ensemble.json`: the member trials (folders beside this one) whose bundles
    a forecast averages. No weights, state or copy of a member's file: each member's bundle is loaded and
    checked as it is. An older bundle folder is replaced whole."""
    members = [str(m) for m in members]
    out = Path(trial_dir) / BUNDLE_DIR
    tmp = out.with_name(f".{BUNDLE_DIR}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_json(tmp / ENSEMBLE, {"ensemble_version": 1, "nqexp_version": nqexp.__version__,
                                 "combine": "mean of quantiles", "members": members})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def load_bundles(trial_dir) -> list[Bundle]:
    """The bundles a trial forecasts with: its own (a list of one), or for a seed ensemble every member's,
    each loaded and checked by load_bundle; their forecasts are averaged (predict.mean_forecast). Members
    must agree on everything but the weights: symbol, feature set, horizons, levels and windows."""
    trial_dir = Path(trial_dir)
    path = trial_dir / BUNDLE_DIR / ENSEMBLE
    if not path.exists():
        return [load_bundle(trial_dir)]
    info = _read_json(path)
    members = info.get("members")
    if not (isinstance(members, list) and len(members) >= 2
            and all(isinstance(m, str) and m and Path(m).name == m and m not in (".", "..") for m in members)):
        raise DataError(f"{path}: 'members' must list two or more trial names (folders beside {trial_dir.name}); "
                        f"rerun the experiment to write it again")
    bundles = []
    for name in members:
        member = trial_dir.parent / name
        if not member.is_dir():
            raise DataError(f"{path} names the member trial {name}, but {member} does not exist; "
                            f"an ensemble needs every member's folder beside it")
        bundles.append(load_bundle(member))
    first = bundles[0]
    for b in bundles[1:]:
        for key in ("symbol", "feature_set", "sql_hash", "freq_minutes", "horizons", "horizon_minutes", "taus",
                    "windows"):
            _differs(b.path / META, key, b.meta[key], first.meta[key], f"the first member ({first.path / META})")
    return bundles
