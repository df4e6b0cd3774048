"""nqexp.experiment.pipeline: the stage wiring of a trial without Ray, the specs trials receive, provenance."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"


@pytest.fixture(scope="module")
def quickstart():
    from nqexp.experiment.spec import load_spec

    return load_spec(QUICKSTART)


def test_importing_the_pipeline_does_not_import_ray():
    code = ("import sys, nqexp.experiment.pipeline, nqexp.evaluation.known_answer; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_validated_trial_specs_survive_the_pickling_ray_does(quickstart):
    """tune.with_parameters ships the frozen spec objects through Ray's object store (cloudpickle);
    a worker must get back an equal spec, not a dict to validate again."""
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    for trial in quickstart.trials():
        for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
            back = loads(dumps(trial.spec))
            assert back == trial.spec and back.to_dict() == trial.spec.to_dict()
            assert back.registry == trial.spec.registry
    # A sweep trial applies its sampled keys to the unpickled base spec: that still validates.
    base = pickle.loads(pickle.dumps(quickstart.trials()[0].spec))
    assert base.apply({"train.lr": "0.002"}).train.lr == 0.002


def test_data_key_follows_only_the_data_sections(quickstart):
    from nqexp.experiment.pipeline import data_key

    trials = quickstart.trials()
    keys = {data_key(t.spec) for t in trials}
    assert len(keys) == 1                                  # the variants change only the model
    spec = trials[0].spec
    assert data_key(spec) == data_key(spec.to_dict())
    assert data_key(spec.apply({"model.d_model": 64})) == data_key(spec)
    assert data_key(spec.apply({"windows.stride": spec.windows.stride + 1})) != data_key(spec)


# ------------------------------------------------------------------------------------------ provenance


@pytest.fixture
def bars_con(demo_con):
    from nqexp.data import bars, demo

    bars.build_bars(demo_con, demo.DEMO_SYMBOL)
    return demo_con


def test_provenance_has_code_packages_python_and_the_bars(bars_con, quickstart):
    from nqexp.experiment import pipeline

    prov = pipeline.provenance(quickstart, bars_con)
    assert {"nqexp_version", "git_commit", "git_dirty", "python", "packages", "bars"} <= set(prov)
    assert prov["git_dirty"] in (True, False, None)
    assert prov["python"] == ".".join(map(str, sys.version_info[:3]))
    for name in ("torch", "ray", "wandb", "duckdb", "numpy", "pandas", "databento"):
        assert prov["packages"][name], name                # all installed here (dependencies)
    import duckdb

    assert prov["packages"]["duckdb"] == duckdb.__version__
    json.dumps(prov)                                       # JSON-safe: it goes to provenance.json and W&B
    b = prov["bars"]
    n, first, last = bars_con.execute("select count(*), min(ts)::varchar, max(ts)::varchar from bars_5m "
                                      "where symbol = 'NQ.demo'").fetchall()[0]
    assert (b["symbol"], b["table"], b["rows"], b["first_ts"], b["last_ts"]) == ("NQ.demo", "bars_5m", n, first, last)
    assert n > 1000 and b["fingerprint"] and b["close_sum"]


def test_bars_fingerprint_changes_when_one_bar_changes(bars_con, quickstart):
    from nqexp.experiment import pipeline

    before = pipeline.provenance(quickstart, bars_con)["bars"]
    assert pipeline.provenance(quickstart, bars_con)["bars"] == before          # deterministic
    bars_con.execute("update bars_5m set close = close + 0.25 "
                     "where symbol = 'NQ.demo' and ts = (select min(ts) + interval 2 hour from bars_5m)")
    after = pipeline.provenance(quickstart, bars_con)["bars"]
    assert (after["rows"], after["first_ts"], after["last_ts"]) == (before["rows"], before["first_ts"], before["last_ts"])
    assert after["fingerprint"] != before["fingerprint"] and after["close_sum"] != before["close_sum"]
    # The feature set's bar size picks the table.
    one_minute = pipeline.provenance(quickstart.apply({"features.set": "grok24"}), bars_con)["bars"]
    assert one_minute["table"] == "bars_1m" and one_minute["rows"] > before["rows"]


def test_provenance_never_fails_on_a_missing_database_or_bars(tmp_path, quickstart, con):
    from nqexp.experiment import pipeline

    assert pipeline.provenance(quickstart, tmp_path / "none.duckdb")["bars"] is None
    empty = pipeline.provenance(quickstart, con)["bars"]                           # migrated, no bars
    assert empty["rows"] == 0 and empty["fingerprint"] is None


def test_provenance_reads_a_database_file_by_path(tmp_path, demo_small, quickstart):
    from nqexp.data import bars, db, ingest
    from nqexp.experiment import pipeline

    path = tmp_path / "nq.duckdb"
    con = db.connect(path)
    ingest.write_demo(con, demo_small)
    bars.build_bars(con, "NQ.demo")
    expected = pipeline.provenance(quickstart, con)["bars"]
    con.close()
    assert pipeline.provenance(quickstart, path)["bars"] == expected


@pytest.mark.skipif(shutil.which("git") is None, reason="no git binary")
def test_git_state_is_the_checkouts_own_or_none(tmp_path):
    import nqexp
    from nqexp.experiment.pipeline import _git_state

    assert _git_state(tmp_path) == (None, None)                                     # not a checkout
    repo = tmp_path / "repo"
    (repo / "nqexp").mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.txt").write_text("a\n")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert _git_state(repo) == (head, False)
    (repo / "data.csv").write_text("untracked files (data, runs) do not make it dirty\n")
    assert _git_state(repo) == (head, False)
    (repo / "a.txt").write_text("b\n")
    assert _git_state(repo) == (head, True)
    # A folder inside someone else's repo (e.g. a venv's site-packages) is not a checkout of nqexp.
    assert _git_state(repo / "nqexp") == (None, None)
    # This checkout: the commit git reports, or None when nqexp is installed from a wheel.
    commit, dirty = _git_state(Path(nqexp.__file__).resolve().parent.parent)
    assert (commit is None) == (dirty is None) and dirty in (True, False, None)


def test_folds_are_trials_with_their_own_dates_and_data():
    """splits.folds: K makes K trials per (variant, seed), named -f0..-f{K-1}, each with its fold's split
    dates; trials of one fold share prepared data (one set of scalers and baselines per fold), folds don't."""
    from nqexp.experiment.pipeline import data_key
    from nqexp.experiment.spec import load_spec

    spec = load_spec(QUICKSTART, ["splits.folds=3"])
    trials = spec.trials()
    assert len(trials) == 5 * 2 * 3
    assert [t.trial_name for t in trials[:3]] == ["full-s0-f0", "full-s0-f1", "full-s0-f2"]
    assert [t.fold for t in trials[:3]] == [0, 1, 2] and all(t.spec.splits.folds == 1 for t in trials)
    assert trials[2].spec.splits == spec.splits.fold_splits()[2]
    keys = {(t.fold, data_key(t.spec)) for t in trials}
    assert len({k for _, k in keys}) == 3 and len(keys) == 3          # one prepared dataset per fold
    starts = [t.spec.splits.test_start for t in trials[:3]]
    assert starts == sorted(starts) and len(set(starts)) == 3
