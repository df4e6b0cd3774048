"""A trial's bundle as a W&B artifact, offline: logged to a real offline W&B run, read back from the
run store's W&B folder by `nqexp predict wandb:...`, forecasting exactly as the trial folder does
(nqexp/experiment/artifact.py).

The module fixture is test_bundle.py's tiny trial (no Ray, no scoring) plus one offline W&B run under
its experiment folder that logs the bundle through `artifact.log_bundle`, the call the Tune driver
makes (tests/test_tune.py checks that every trial of a real run gets one). The online path needs a
W&B server and is not tested here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_bundle import edit_meta, invoke, refused
from tests.test_bundle import trial as bundle_trial  # noqa: F401  (the module fixture, used by `logged`)
from tests.wandb_log import read_wandb_records

pytest.importorskip("torch")

PROJECT, ENTITY = "nqexp-test", "someone"
SECRET = "db-ARTIFACTSECRET0123456789abcdef"


def open_run(store: Path, experiment: str, run_id: str):
    from nqexp.experiment.track import WandbRun

    return WandbRun(project=PROJECT, entity=ENTITY, group=experiment, job_type="base", name=run_id, run_id=run_id,
                    config={}, directory=store / experiment, mode="offline")


def finish(run) -> None:
    """Finish the run and stop W&B's service: on a busy machine `finish()` can return before the service
    has written the artifact record to the run's log; a process that exits (the Tune driver) stops it too."""
    import wandb

    run.finish()
    wandb.teardown()


@pytest.fixture(scope="module")
def logged(bundle_trial, tmp_path_factory):  # noqa: F811  (the fixture imported above)
    from nqexp.experiment import artifact

    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(cache))              # downloads go to a cache; keep it in tmp
    mp.setenv("WANDB_MODE", "offline")                  # the mode rule picks the local runs
    mp.setenv("DATABENTO_API_KEY", SECRET)
    experiment, name = bundle_trial["name"].split("/")
    run = open_run(bundle_trial["store"], experiment, "artifactrun0")
    flags = [("picp80", f"val picp80 0.41 < 0.5 (a reason quoting {SECRET})")]
    art = artifact.log_bundle(run, bundle_trial["dir"], experiment, name, flags)
    finish(run)
    yield {**bundle_trial, "artifact": art, "experiment": experiment, "trial_name": name, "cache": cache}
    mp.undo()


def forecast_rows(trial, ref, *args):
    res = invoke(trial, "predict", ref, "--format", "json", "--store", trial["store"], *args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), res


def test_artifact_names_use_only_the_characters_wandb_allows():
    from nqexp.experiment.artifact import artifact_name

    assert artifact_name("quickstart", "full-s0") == "quickstart-full-s0"
    assert artifact_name("my exp/1", "a:b+c") == "my-exp-1-a-b-c"
    assert len(artifact_name("x" * 200, "y")) == 128


def test_a_reference_parses_or_is_refused_with_the_accepted_form():
    from nqexp.errors import DataError
    from nqexp.experiment.artifact import ArtifactRef, parse_ref

    assert parse_ref("wandb:ent/proj/exp-t:v3") == ArtifactRef("ent", "proj", "exp-t", "v3")
    assert parse_ref("wandb:proj/exp-t") == ArtifactRef(None, "proj", "exp-t", "latest")
    for bad in ("wandb:exp-t:v0", "wandb:a/b/c/d:v0", "wandb:ent//x:v0", "wandb:a/b:", "wandb:a/b:v0:v1"):
        with pytest.raises(DataError, match="is not a W&B artifact reference; give wandb:ENTITY/PROJECT/NAME:VERSION"):
            parse_ref(bad)


def test_the_offline_run_records_a_model_artifact_of_the_bundle_by_reference(logged):
    assert logged["artifact"] == f"{logged['experiment']}-{logged['trial_name']}"
    (log,) = (logged["store"] / logged["experiment"] / "wandb").glob("offline-run-*artifactrun0/run-*.wandb")
    (rec,) = [r.artifact for r in read_wandb_records(log) if r.WhichOneof("record_type") == "artifact"]
    assert rec.type == "model" and rec.name == logged["artifact"] and rec.project == PROJECT
    bundle = logged["dir"] / "bundle"
    files = {e.path: Path(e.local_path) for e in rec.manifest.contents}
    assert files == {p.name: p for p in bundle.iterdir()}           # every file, in the run store, not staged
    meta = json.loads(rec.metadata)
    bundle_meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["experiment"] == logged["experiment"] and meta["trial"] == logged["trial_name"]
    for key in ("feature_set", "sql_hash", "horizons", "taus", "head", "symbol", "nqexp_version"):
        assert meta[key] == bundle_meta[key], key
    assert meta["gate_flags"][0][0] == "picp80" and SECRET not in rec.metadata     # the one secret policy
    assert SECRET not in log.read_bytes().decode("latin-1")


def test_predict_from_the_offline_artifact_equals_predict_from_the_trial(logged):
    local, _ = forecast_rows(logged, logged["name"])
    ref = f"wandb:{ENTITY}/{PROJECT}/{logged['artifact']}"
    for version in (":latest", ":v0", ""):
        remote, res = forecast_rows(logged, ref + version)
        assert remote == local, version
        # The artifact carries the trial's gate flags: the gate warning comes with its forecasts.
        assert "Warning: trial wandb:" in res.stderr and "picp80" in res.stderr
    # Without an entity (an offline run logged with none matches any).
    remote, _ = forecast_rows(logged, f"wandb:{PROJECT}/{logged['artifact']}:latest")
    assert remote == local


def test_the_api_loads_the_artifact_as_a_trial(logged, monkeypatch):
    import nqexp

    monkeypatch.setenv("WANDB_MODE", "offline")
    trial = nqexp.load_trial(f"wandb:{ENTITY}/{PROJECT}/{logged['artifact']}:latest", logged["store"])
    assert trial.label.startswith("wandb:") and trial.name == logged["trial_name"] and trial.gated
    with pytest.warns(Warning, match="the artifact's gate_flags metadata"):
        a = trial.forecast(db=logged["db"])
    b = nqexp.load_trial(logged["name"], logged["store"]).forecast(db=logged["db"])
    np.testing.assert_array_equal(a.q, b.q)


def test_an_unknown_name_or_version_is_one_line(logged):
    res = invoke(logged, "predict", f"wandb:{ENTITY}/{PROJECT}/nope:latest", "--store", logged["store"])
    refused(res, "no model artifact nope of project nqexp-test in the 1 offline W&B run(s)", logged["artifact"],
            "WANDB_API_KEY")
    res = invoke(logged, "predict", f"wandb:{ENTITY}/{PROJECT}/{logged['artifact']}:v7", "--store", logged["store"])
    refused(res, "has no version 'v7'", "v0..v0 (latest = v0)")
    res = invoke(logged, "predict", f"wandb:{ENTITY}/other/{logged['artifact']}:v0", "--store", logged["store"])
    refused(res, "no model artifact", "of project other")


def test_versions_count_distinct_contents_in_logging_order(logged, tmp_path, monkeypatch):
    """A second content under the same name is v1 and latest; logging a known content again adds no version."""
    from nqexp.experiment import artifact

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    store = tmp_path / "runs"
    shutil.copytree(logged["store"], store, ignore=shutil.ignore_patterns("*.wal", "*.tmp"))
    exp, name = logged["experiment"], logged["trial_name"]
    other = store / exp / "trials" / "other"
    shutil.copytree(store / exp / "trials" / name / "bundle", other / "bundle")
    edit_meta(other, lambda m: m.update(notes=["a second content"]))     # bundle.json differs: a new digest
    for run_id, folder in (("artifactrun1", other), ("artifactrun2", store / exp / "trials" / name)):
        run = open_run(store, exp, run_id)
        # the same name as the first, as a rerun of the trial would log
        run.log_artifact(_artifact(artifact, folder, exp, name))
        finish(run)
    ref = f"wandb:{PROJECT}/{logged['artifact']}"
    first, _ = artifact.fetch_bundle(ref + ":v0", store, mode="offline")
    second, _ = artifact.fetch_bundle(ref + ":v1", store, mode="offline")
    latest, _ = artifact.fetch_bundle(ref + ":latest", store, mode="offline")
    assert latest == second != first
    assert "a second content" in (second / "bundle" / "bundle.json").read_text()
    assert "a second content" not in (first / "bundle" / "bundle.json").read_text()
    with pytest.raises(Exception, match=r"v0\.\.v1 \(latest = v1\)"):
        artifact.fetch_bundle(ref + ":v2", store, mode="offline")


def _artifact(artifact_mod, folder, exp, name):
    import wandb

    art = wandb.Artifact(artifact_mod.artifact_name(exp, name), type="model")
    art.add_dir(str(folder / "bundle"), policy="immutable")
    return art


def test_a_bundle_file_changed_after_logging_is_refused(logged, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))     # nothing cached yet
    store = tmp_path / "runs"
    shutil.copytree(logged["store"], store, ignore=shutil.ignore_patterns("*.wal", "*.tmp"))
    # Move the original away for the test: the copy's records name the original's absolute paths,
    # and a store that moved finds its files relative to the experiment folder.
    exp, name = logged["experiment"], logged["trial_name"]
    original = logged["store"]
    parked = original.with_name(original.name + "-parked")
    original.rename(parked)
    try:
        rows, _ = forecast_rows({**logged, "store": store}, f"wandb:{PROJECT}/{logged['artifact']}:v0")
        assert rows
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
        weights = store / exp / "trials" / name / "bundle" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8])
        res = invoke(logged, "predict", f"wandb:{PROJECT}/{logged['artifact']}:v0", "--store", store)
        refused(res, f"{weights} does not match artifact {logged['artifact']}:v0", "changed after it was logged")
        weights.unlink()
        res = invoke(logged, "predict", f"wandb:{PROJECT}/{logged['artifact']}:v0", "--store", store)
        refused(res, "for its file model.safetensors, which is gone")
    finally:
        parked.rename(original)


def test_a_cached_download_is_checked_like_any_bundle(logged, tmp_path, monkeypatch):
    """The cache is not trusted: a file edited there fails the bundle's manifest (bundle.py)."""
    from nqexp.experiment import artifact

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ref = f"wandb:{PROJECT}/{logged['artifact']}:latest"
    folder, _ = artifact.fetch_bundle(ref, logged["store"], mode="offline")
    state = folder / "bundle" / "state.json"
    state.write_text(state.read_text().replace('"', "'", 1))
    refused(invoke(logged, "predict", ref, "--store", logged["store"]), "state.json does not match the manifest")
