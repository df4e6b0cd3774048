"""Model bundles and checkpoints are data, not code, and are checked on load (nqexp/experiment/bundle.py).

One module fixture trains a tiny model on 60 demo days (no Ray, no scoring: a bundle needs a
checkpoint and the train-fitted state, not a good model) and writes its bundle; each test copies
the bundle, breaks one thing, and runs `nqexp predict` (or `nqexp run --resume`) through click.
Every refusal is exit code 1 and exactly one line on stderr that names the file or the mismatch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nqexp.cli import cli
from tests.test_predict import TINY as PREDICT_TINY

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
# The predict tests' tiny trial on 60 demo days, 5 optimizer steps.
TINY = [o for o in PREDICT_TINY if not o.startswith(("data.demo_days", "splits.", "windows.eval_stride"))] + [
    "data.demo_days=60", "splits.folds=1", "splits.train_start=2025-10-20", "splits.train_end=2025-11-15",
    "splits.val_start=2025-11-18", "splits.val_end=2025-11-24", "splits.test_start=2025-11-26",
    "splits.test_end=2025-12-03", "windows.eval_stride=6", "train.steps_per_epoch=5", "resources.cpus_per_trial=1"]
BUNDLE_FILES = {"bundle.json", "model.json", "model.safetensors", "state.json", "state.npz"}


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    from nqexp.experiment.bundle import write_bundle
    from nqexp.experiment.pipeline import prepare_data
    from nqexp.experiment.spec import dump_resolved, load_spec
    from nqexp.experiment.track import NullTracker
    from nqexp.model.train import train

    tmp = tmp_path_factory.mktemp("bundle")
    store = tmp / "runs"
    spec = load_spec(ROOT / "experiments" / "demo_quality.yaml", overrides=[*TINY, f"track.store={store}"])
    tspec = spec.trials()[0]
    db_path = str(tmp / "demo.duckdb")
    data = prepare_data(tspec.spec, db_path)
    ds = data.datasets
    trial_dir = store / spec.name / "trials" / tspec.trial_name
    result = train(tspec.spec.model, tspec.spec.train, {"train": ds["train"], "val": ds["val"]}, NullTracker(),
                   trial_dir / "checkpoints", seed=0, horizon_minutes=data.horizon_minutes, device="cpu")
    write_bundle(trial_dir, tspec.spec, result.checkpoint, data)
    dump_resolved(tspec.spec, trial_dir / "spec.yaml")          # as the Tune driver does
    dump_resolved(spec, store / spec.name / "spec.resolved.yaml")
    return {"spec": spec, "tspec": tspec.spec, "name": f"{spec.name}/{tspec.trial_name}", "db": db_path, "data": data,
            "dir": trial_dir, "store": store, "ckpt": result.checkpoint, "tmp": tmp}


def invoke(trial, *args):
    result = CliRunner().invoke(cli, ["--db", trial["db"], *[str(a) for a in args]], prog_name="nqexp")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def predict(trial, trial_dir, *args):
    return invoke(trial, "predict", trial_dir, "--format", "json", *args)


def refused(res, *needles):
    """Exit code 1, exactly one readable line on stderr (no traceback), naming every needle."""
    assert res.exit_code == 1, (res.exit_code, res.output)
    assert "Traceback" not in res.output and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def copy_trial(trial, tmp_path) -> Path:
    """A copy of the trial folder (its spec.yaml and bundle) to break."""
    out = tmp_path / "trial"
    shutil.copytree(trial["dir"] / "bundle", out / "bundle")
    shutil.copy(trial["dir"] / "spec.yaml", out / "spec.yaml")
    return out


def edit_meta(trial_dir: Path, change) -> None:
    path = trial_dir / "bundle" / "bundle.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def reseal(trial_dir: Path) -> None:
    """Recompute the manifest: what a tool that rewrites bundles consistently would leave."""
    from nqexp.experiment.bundle import manifest

    edit_meta(trial_dir, lambda m: m.update(files=manifest(trial_dir / "bundle")))


class Evil:
    """A pickle that would create `marker` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _same(a, b, where="state"):
    """Two state trees equal exactly (arrays bit for bit); the first difference is named."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
        assert np.asarray(a).dtype == np.asarray(b).dtype, where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}.{i}")
    else:
        assert a == b or (a != a and b != b), (where, a, b)


# ------------------------------------------------------------------------------------------
# The format


def test_a_bundle_is_data_and_restores_exactly(trial):
    from safetensors.torch import load_file

    from nqexp.evaluation import baselines
    from nqexp.experiment.bundle import load_bundle
    from nqexp.model.train import load_checkpoint

    b = trial["dir"] / "bundle"
    assert {p.name for p in b.iterdir()} == BUNDLE_FILES
    for name in ("bundle.json", "model.json", "state.json"):       # JSON, the arrays numeric, the weights tensors
        assert isinstance(json.loads((b / name).read_text()), dict)
    with np.load(b / "state.npz", allow_pickle=False) as z:
        assert all(z[k].dtype.kind in "biuf" for k in z.files)
    bundle = load_bundle(trial["dir"])
    data = trial["data"]
    _same(bundle.scalers.to_state(), data.scalers.to_state(), "scalers")
    _same(baselines.fitted_to_state(bundle.baselines), baselines.fitted_to_state(data.baseline_state), "baselines")
    # The boosters from their text models predict exactly what the fitted ones do.
    lgbm, fitted = bundle.baselines["lgbm"], data.baseline_state["lgbm"]
    X = np.random.default_rng(0).standard_normal((64, fitted.boosters[0][0].num_feature()))
    scale = np.full((64, len(bundle.horizons)), 1e-3)
    np.testing.assert_array_equal(lgbm.quantiles(X, scale), fitted.quantiles(X, scale))
    # The weights are the best checkpoint's, bit for bit; the model has them.
    ckpt = load_checkpoint(trial["ckpt"])["model"]
    weights = load_file(str(b / "model.safetensors"))
    assert set(weights) == set(ckpt) and all(torch.equal(weights[k], ckpt[k]) for k in ckpt)
    assert all(torch.equal(v, ckpt[k]) for k, v in bundle.model.state_dict().items())
    meta = json.loads((b / "bundle.json").read_text())
    assert set(meta["files"]) == BUNDLE_FILES - {"bundle.json"} and meta["bundle_version"] == 2


def test_a_written_bundle_forecasts(trial):
    res = predict(trial, trial["dir"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["source"] for r in rows} == {"model", "climatology", "volscaled", "mcgarch", "lgbm"}


def test_a_new_bundle_replaces_an_old_one_whole(trial, tmp_path):
    from nqexp.experiment.bundle import write_bundle

    old = tmp_path / "t" / "bundle"
    old.mkdir(parents=True)
    (old / "state.pkl").write_bytes(b"an old bundle's pickle")
    (old / "model.pt").write_bytes(b"an old bundle's weights")
    write_bundle(tmp_path / "t", trial["tspec"], trial["ckpt"], trial["data"])
    assert {p.name for p in old.iterdir()} == BUNDLE_FILES
    assert not list(tmp_path.glob("t/.bundle*")), "no temporary folder is left"


# ------------------------------------------------------------------------------------------
# Pickles are refused unread


@pytest.mark.parametrize("name", ["state.pkl", "model.pt"])
def test_a_bundle_holding_a_pickle_is_refused_unread(trial, tmp_path, name):
    t = copy_trial(trial, tmp_path)
    marker = tmp_path / "PWNED"
    torch.save({"model": Evil(marker)}, t / "bundle" / name)     # torch.save pickles it, as old bundles were
    line = refused(predict(trial, t), f"holds {name}", "pickles", f"nqexp run {t / 'spec.yaml'} --set name=NEW_NAME")
    assert "--resume skips finished trials" in line
    assert not marker.exists(), "the pickle was loaded"


def test_the_retrain_hint_is_a_command_that_works(trial):
    """`nqexp run <trial>/spec.yaml --set name=NEW_NAME`, as the refusal says, is a valid one-trial run."""
    from nqexp.experiment.spec import load_spec

    spec = load_spec(trial["dir"] / "spec.yaml", overrides=["name=retrained"])
    assert spec.name == "retrained" and len(spec.trials()) == 1
    assert spec.trials()[0].spec.model == trial["tspec"].model


def test_a_pickled_state_array_is_refused_unread(trial, tmp_path):
    t = copy_trial(trial, tmp_path)
    marker = tmp_path / "PWNED"
    with np.load(t / "bundle" / "state.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["scalers.center"] = np.array([Evil(marker)], dtype=object)
    with open(t / "bundle" / "state.npz", "wb") as f:
        np.savez(f, **arrays)                                    # numpy pickles an object array
    reseal(t)
    refused(predict(trial, t), "state.npz holds pickled Python objects")
    assert not marker.exists(), "the pickle was loaded"


# ------------------------------------------------------------------------------------------
# The manifest


@pytest.mark.parametrize("name", ["model.safetensors", "model.json", "state.json", "state.npz"])
@pytest.mark.parametrize("how", ["truncated", "edited", "missing"])
def test_a_truncated_edited_or_missing_file_fails_the_manifest(trial, tmp_path, name, how):
    t = copy_trial(trial, tmp_path)
    path = t / "bundle" / name
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "edited":
        i = len(data) * 2 // 3
        path.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])   # one bit, the size unchanged
    else:
        path.unlink()
    needle = "is missing" if how == "missing" else "does not match the manifest in bundle.json"
    refused(predict(trial, t), f"{name} {needle}")


def test_an_invalid_bundle_json_is_one_line(trial, tmp_path):
    t = copy_trial(trial, tmp_path)
    path = t / "bundle" / "bundle.json"
    path.write_text(path.read_text()[:300])
    refused(predict(trial, t), "bundle.json is not valid JSON", "truncated or edited")
    path.write_text("[1, 2]")
    refused(predict(trial, t), "bundle.json holds a JSON list")


def test_the_manifest_passes_only_what_parses(trial, tmp_path):
    """A resealed file (a consistent manifest) that is not what its format says is still one line."""
    t = copy_trial(trial, tmp_path)
    (t / "bundle" / "state.json").write_text('{"scalers": {"center": {"$npz": "nope"}}}')
    reseal(t)
    refused(predict(trial, t), "state.npz lacks the array 'nope'")
    t2 = copy_trial(trial, tmp_path / "b")
    (t2 / "bundle" / "model.safetensors").write_bytes(b"not safetensors")
    reseal(t2)
    refused(predict(trial, t2), "model.safetensors cannot be read")


# ------------------------------------------------------------------------------------------
# bundle.json's facts against the files it describes


def _reverse(key):
    return lambda m: m.update({key: m[key][::-1]})


@pytest.mark.parametrize("edit, needles", [
    (_reverse("horizon_minutes"), ["bundle.json: horizon_minutes =", "horizons x freq_minutes"]),
    (_reverse("horizons"), ["bundle.json: horizons =", "the model (model.json)"]),
    (lambda m: m.update(taus=[0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9]), ["bundle.json: taus =", "model (model.json)"]),
    (lambda m: m["windows"].update(t_max=144), ["bundle.json: windows.t_max = 144", "has 288"]),
    (lambda m: m.update(head="point"), ["bundle.json: head = 'point'", "quantile head"]),
    (lambda m: m.update(names=m["names"][:-1]), ["bundle.json: names hold", "n_vars = "]),
    (lambda m: m["names"].__setitem__(0, "renamed"), ["bundle.json: names[0] = 'renamed'", "the scalers (state.json)"]),
    (lambda m: m.update(freq_minutes=1), ["bundle.json: freq_minutes = 1", "the scalers (state.json) has 5"]),
    (lambda m: m.update(baselines=["climatology"]), ["bundle.json: baselines =", "state.json"]),
    (lambda m: m.update(bundle_version=1), ["bundle.json: bundle version 1", "--set name=NEW_NAME"]),
    (lambda m: m.pop("taus"), ["bundle.json: 'taus' is missing"]),
    (lambda m: m["taus"].__setitem__(0, "low"), ["bundle.json: 'taus' must hold int or float values"]),
], ids=["horizon_minutes-reversed", "horizons-reversed", "taus", "t_max", "head", "n_vars", "names", "freq_minutes",
        "baselines", "version", "no-taus", "taus-text"])
def test_an_edited_fact_in_bundle_json_is_refused(trial, tmp_path, edit, needles):
    t = copy_trial(trial, tmp_path)
    edit_meta(t, edit)
    refused(predict(trial, t), *needles)


def test_another_feature_set_with_its_own_hash_is_refused(trial, tmp_path):
    """bundle.json edited to name another set and that set's SQL hash: its columns are not the model's."""
    from nqexp import features

    other = features.resolve_set("grok24")
    t = copy_trial(trial, tmp_path)
    edit_meta(t, lambda m: m.update(feature_set=other.name, sql_hash=other.sql_hash))
    refused(predict(trial, t), "bundle.json: names", "columns of feature set grok24")


@pytest.mark.parametrize("swap", ["config-and-weights", "weights"])
def test_a_point_head_model_in_a_quantile_bundle_is_refused(trial, tmp_path, swap):
    """A point-head network put in a quantile bundle (with a consistent manifest) would print one
    value as all 7 quantiles: refused, whether its config came with it or not."""
    import dataclasses

    from safetensors.torch import save_file

    from nqexp.model.net import build_model

    t = copy_trial(trial, tmp_path)
    point = dataclasses.replace(trial["tspec"].model, head="point")
    save_file(build_model(point).state_dict(), str(t / "bundle" / "model.safetensors"))
    if swap == "config-and-weights":
        info = json.loads((t / "bundle" / "model.json").read_text())
        info["model"]["head"] = "point"
        (t / "bundle" / "model.json").write_text(json.dumps(info))
        needles = ["bundle.json: head = 'quantile'", "point head with 1 output(s) per horizon"]
    else:
        needles = ["model.safetensors: the weights do not fit the model config in model.json", "size mismatch"]
    reseal(t)
    refused(predict(trial, t), *needles)


# ------------------------------------------------------------------------------------------
# Checkpoints on --resume


def _resume(trial, tmp_path, write):
    """`nqexp run --resume` of the fixture's experiment in a copied store whose trial has latest.pt as written."""
    store = tmp_path / "runs"
    exp = trial["spec"].name
    shutil.copytree(trial["store"] / exp, store / exp, ignore=shutil.ignore_patterns("bundle"))
    spec_path = store / exp / "spec.resolved.yaml"
    spec_path.write_text(spec_path.read_text().replace(str(trial["store"]), str(store)))
    latest = store / exp / "trials" / trial["name"].split("/")[1] / "checkpoints" / "latest.pt"
    write(latest)
    return invoke(trial, "run", "--resume", exp, "--set", f"track.store={store}"), latest


def test_a_truncated_checkpoint_on_resume_is_one_line(trial, tmp_path):
    def truncate(latest):
        latest.write_bytes(latest.read_bytes()[:1000])

    res, latest = _resume(trial, tmp_path, truncate)
    refused(res, f"checkpoint {latest} cannot be read (truncated or garbled", "delete the trial's checkpoints")


def test_a_crafted_checkpoint_on_resume_is_refused_unread(trial, tmp_path):
    marker = tmp_path / "PWNED"
    res, latest = _resume(trial, tmp_path, lambda latest: torch.save({"model": Evil(marker)}, latest))
    refused(res, f"checkpoint {latest} holds pickled Python objects", "delete the trial's checkpoints")
    assert not marker.exists(), "the pickle was loaded"


def test_train_refuses_a_garbled_checkpoint_in_one_line(trial, tmp_path):
    """train() itself (a Tune trial, a notebook) raises the same one-line DataError."""
    from nqexp.errors import DataError
    from nqexp.experiment.track import NullTracker
    from nqexp.model.train import train

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "latest.pt").write_bytes(b"\x00" * 64)
    ds = trial["data"].datasets
    with pytest.raises(DataError, match="latest.pt cannot be read") as err:
        train(trial["tspec"].model, trial["tspec"].train, {"train": ds["train"], "val": ds["val"]}, NullTracker(),
              ckpt, seed=0, horizon_minutes=trial["data"].horizon_minutes, device="cpu")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------
# Output paths


def test_predict_never_writes_into_the_runs_files(trial, tmp_path):
    """--out/--plot inside a trial folder (its predictions.parquet, bundle, or another trial's folder)
    are refused before any work (the --at here would fail later), and the files stay as they were."""
    d, store = trial["dir"], trial["store"]
    own = d / "predictions.parquet"
    own.write_bytes(b"the trial's own predictions")
    other = store / trial["spec"].name / "trials" / "other-s1"
    other.mkdir(exist_ok=True)
    late = ["--at", "2031-01-01"]
    for option, path in [("--out", own), ("--out", d / "bundle" / "bundle.json"), ("--plot", d / "plots" / "x.png"),
                         ("--out", other / "x.json")]:
        res = invoke(trial, "predict", trial["name"], "--store", store, option, path, *late)
        refused(res, f"{option} {path} is inside the trial folder", "write elsewhere, or under")
    res = invoke(trial, "predict", d, "--start", "2025-11-26", "--out", own)        # range mode, the folder given
    refused(res, f"--out {own} is inside the trial folder {d}")
    assert own.read_bytes() == b"the trial's own predictions"
    assert (d / "bundle" / "bundle.json").read_text().startswith("{")
    # The trial's predict/ folder (range mode's default) is allowed.
    res = invoke(trial, "predict", trial["name"], "--store", store, "--format", "json",
                 "--out", d / "predict" / "p.json")
    assert res.exit_code == 0, res.output
    assert json.loads((d / "predict" / "p.json").read_text())


def test_an_output_whose_folder_is_a_file_is_one_line(trial, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    refused(predict(trial, trial["dir"], "--plot", blocker / "fan.png", "--at", "2031-01-01"),
            f"--plot {blocker / 'fan.png'}: {blocker} is a file, not a folder")
    refused(predict(trial, trial["dir"], "--out", blocker / "sub" / "x.json"), f"{blocker} is a file, not a folder")
    same = tmp_path / "x.png"
    refused(predict(trial, trial["dir"], "--out", same, "--plot", same), "--out and --plot name the same file")
    res = predict(trial, trial["dir"], "--out", tmp_path / "new" / "deeper" / "x.json")   # missing folders are made
    assert res.exit_code == 0, res.output
