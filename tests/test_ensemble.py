"""Seed ensembles (nqexp/experiment/ensemble.py, docs/experiments.md §16): the mean of a variant's seeds'
quantiles, scored and recorded as its own `<variant>-ensemble` row, and served by `nqexp predict`.

The first tests need no training: members' predictions are written by hand (Gaussian quantiles), and
the run store is filled as the driver fills it. The last ones share one 2-seed smoke run (real Ray
Tune, W&B offline; about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nqexp.errors import DataError, SpecError
from nqexp.evaluation import evaluate, report
from nqexp.experiment import ensemble
from nqexp.experiment.spec import load_spec
from nqexp.experiment.track import RunStore

ROOT = Path(__file__).resolve().parents[1]
QUICK = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())


def quick_spec(**tree) -> dict:
    """The quickstart's sections without its variants (a spec's variants merge with those it extends)."""
    keep = ("data", "splits", "windows", "model", "train", "resources")
    return {"extends": str(ROOT / "experiments" / "base.yaml"), **{k: QUICK[k] for k in keep}, **tree}


TAUS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
HORIZONS = (15, 60)


# ------------------------------------------------------------------------------------------ the mean


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(2, 4), st.integers(1, 5), st.integers(1, 3), st.just(7)),
                  elements=st.floats(-1e-2, 1e-2, allow_nan=False)))
def test_ensemble_quantiles_are_the_members_mean_and_never_cross(raw):
    qs = list(np.sort(raw, axis=-1))                      # each member: ordered quantiles (M x (N, H, Q))
    q = ensemble.mean_quantiles(qs)
    np.testing.assert_allclose(q, np.mean(np.stack(qs), axis=0), rtol=0, atol=0)
    assert (np.diff(q, axis=-1) >= 0).all(), "an ensemble of ordered members crossed"


def _gauss(sigma, mult):
    from scipy.stats import norm

    return (sigma * mult)[..., None] * norm.ppf(np.array(TAUS))[None, None, :]   # (N, H, Q)


def _samples(n=1500, seed=0, start="2025-01-06T14:30"):
    rng = np.random.default_rng(seed)
    ts = np.datetime64(start, "us") + np.arange(n) * np.timedelta64(5, "m")
    sigma = np.exp(rng.normal(0, 0.4, size=(n, 1))) * np.array([[1e-3, 2e-3]])
    y = sigma * rng.standard_normal((n, 2))
    return ts, sigma, y


def _write_member(d: Path, ts, sigma, y, mult, shift=0.0):
    """A member's predictions.parquet with val and test splits (the same samples, for brevity)."""
    q = _gauss(sigma, mult) + shift * sigma[..., None]
    clim = np.broadcast_to(np.quantile(y, TAUS, axis=0).T[None], q.shape).copy()
    base = {"climatology": clim, "volscaled": _gauss(sigma, 1.0)}
    splits = {s: evaluate.SplitPredictions(ts=ts, y=y, q=q, baselines=base) for s in ("val", "test")}
    d.mkdir(parents=True, exist_ok=True)
    evaluate.save_predictions(d / "predictions.parquet", splits, TAUS, HORIZONS)
    table = evaluate.evaluate_split_table("test", y, q, TAUS, HORIZONS, ts, base, n_boot=20)
    return q, {f"test/{k}": v for k, v in evaluate.flatten_metrics(table).items()}


def test_an_ensemble_scores_the_mean_of_its_members_on_their_samples(tmp_path):
    ts, sigma, y = _samples()
    q0, _ = _write_member(tmp_path / "a-s0", ts, sigma, y, 0.7, shift=0.3)
    q1, _ = _write_member(tmp_path / "a-s1", ts, sigma, y, 1.5, shift=-0.3)
    cfg = evaluate.EvalConfig(backtest=False)
    flat, _, _ = ensemble.score_ensemble([tmp_path / "a-s0", tmp_path / "a-s1"], tmp_path / "a-ensemble", cfg)
    saved = evaluate.load_predictions(tmp_path / "a-ensemble" / "predictions.parquet")
    mean = (q0 + q1) / 2
    for split in ("val", "test"):
        np.testing.assert_allclose(saved.splits[split].q, mean, rtol=1e-12)
        np.testing.assert_array_equal(saved.splits[split].ts, ts.astype("datetime64[ns]"))
    # Scored as a trial is: the same metric keys, against the same baselines, on the same samples.
    table = evaluate.evaluate_split_table("test", y, mean, TAUS, HORIZONS, ts,
                                          evaluate.load_predictions(tmp_path / "a-s0" / "predictions.parquet")
                                          .splits["test"].baselines)
    want = {f"test/{k}": v for k, v in evaluate.flatten_metrics(table).items()}
    assert {k: flat[k] for k in want} == pytest.approx(want, nan_ok=True)
    assert "val/crps_15m" in flat and flat["test/crossing_rate"] == 0.0
    # The sharp and the wide member average to a better width than either (CRPS is convex in q).
    assert flat["test/crps"] < min(
        evaluate.flatten_metrics(evaluate.evaluate_split_table("test", y, q, TAUS, HORIZONS, ts))["crps"]
        for q in (q0, q1))
    info = json.loads((tmp_path / "a-ensemble" / "bundle" / "ensemble.json").read_text())
    assert info["members"] == ["a-s0", "a-s1"]


def test_members_with_other_samples_are_refused(tmp_path):
    ts, sigma, y = _samples()
    _write_member(tmp_path / "a-s0", ts, sigma, y, 1.0)
    _write_member(tmp_path / "a-s1", ts + np.timedelta64(5, "m"), sigma, y, 1.0)
    with pytest.raises(DataError, match="samples .* differ"):
        ensemble.average_predictions([tmp_path / "a-s0" / "predictions.parquet",
                                      tmp_path / "a-s1" / "predictions.parquet"])


def test_a_variant_named_like_an_ensemble_is_refused(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(quick_spec(name="s", variants={"full": {}, "full-ensemble": {"model.dropout": 0.1}})))
    with pytest.raises(SpecError, match="variants.full-ensemble: variant name 'full-ensemble' ends with '-ensemble'"):
        load_spec(spec)


# ------------------------------------------------------------------------------------------ store and report


def _record(tmp_path, folds: int = 1):
    """The run store as the driver leaves it: two variants x two seeds (x folds) finished (`full` sharp,
    `wide` too wide; each fold its own test samples), then record_ensembles (no Ray, W&B disabled)."""
    from nqexp.experiment.tune import record_ensembles

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(quick_spec(
        name="ens", seeds=[0, 1], variants={"full": {}, "wide": {"model.dropout": 0.1}},
        splits={**QUICK["splits"], "folds": folds},
        track={"store": str(tmp_path / "runs"), "wandb_mode": "disabled"}, eval={"backtest": False})))
    spec = load_spec(path)
    st_ = RunStore(tmp_path / "runs")
    st_.start_experiment("ens", "run", str(path), yaml.safe_dump(spec.to_dict()))
    samples = {k: _samples(n=1000 + 100 * k, seed=k, start=f"2025-0{k + 1}-06T14:30") for k in range(folds)}
    qs = {}
    for t in spec.trials():
        mult = {"full": 1.0, "wide": 1.8}[t.variant] * (0.9 if t.seed else 1.1)
        d = st_.trial_dir("ens", t.trial_name)
        qs[t.trial_name], metrics = _write_member(d, *samples[t.fold], mult)
        st_.upsert_trial("ens", t.trial_name, variant=t.variant, seed=t.seed, fold=t.fold, status="finished",
                         params_json="{}", spec_yaml="", dir=str(d), steps=200, epochs=2, best_step=150,
                         best_epoch=2, stopped="max_steps")
        st_.write_metrics("ens", t.trial_name, metrics)
    made = record_ensembles(st_, "ens", spec)
    return st_, spec, made, qs


@pytest.fixture
def recorded(tmp_path):
    return _record(tmp_path)


def test_each_variant_gets_an_ensemble_row_in_the_store(recorded):
    st_, spec, made, qs = recorded
    assert made == ["full-ensemble", "wide-ensemble"]
    row = st_.trial("ens", "full-ensemble")
    assert (row["variant"], row["seed"], row["fold"], row["status"], row["stopped"]) == \
        ("full-ensemble", -1, 0, "finished", "ensemble")
    assert json.loads(row["members"]) == ["full-s0", "full-s1"] and row["steps"] is None
    saved = evaluate.load_predictions(Path(row["dir"]) / "predictions.parquet").splits["test"].q
    np.testing.assert_allclose(saved, (qs["full-s0"] + qs["full-s1"]) / 2, rtol=1e-12)
    assert "test/crps_60m" in st_.trial_metrics("ens", "full-ensemble")
    # Recorded once: a second call with no member trained again leaves it as it is.
    from nqexp.experiment.tune import record_ensembles

    assert record_ensembles(st_, "ens", spec) == []
    assert record_ensembles(st_, "ens", spec, redo={"wide-s1"}) == ["wide-ensemble"]


def test_the_report_compares_ensembles_like_variants_and_counts_them(recorded):
    st_, _, _, _ = recorded
    data = report.load(st_, "ens")
    assert report.variant_order(data) == ["full", "full-ensemble", "wide", "wide-ensemble"]
    paired, vs = report.comparisons(data, n_boot=100)
    assert set(paired["variant"]) == {"full-ensemble", "wide", "wide-ensemble"}
    # Paired with each of the reference's seeds: mean_diff = CRPS(ensemble) - mean over the reference's seeds.
    assert (paired.loc[paired["variant"] == "full-ensemble", "seeds"] == 2).all()
    assert set(vs["variant"]) == {"full", "full-ensemble", "wide", "wide-ensemble"}
    assert vs.attrs["adjustment"]["comparisons"] == len(paired) + len(vs)
    pr = evaluate.load_predictions(Path(st_.trial("ens", "full-ensemble")["dir"]) / "predictions.parquet")
    from nqexp.metrics import crps_quantile

    sp = pr.splits["test"]
    refs = [evaluate.load_predictions(Path(st_.trial("ens", f"full-s{s}")["dir"]) / "predictions.parquet")
            .splits["test"] for s in (0, 1)]
    want = np.mean([crps_quantile(sp.y[:, 0], sp.q[:, 0], TAUS) - crps_quantile(sp.y[:, 0], r.q[:, 0], TAUS)
                     for r in refs])
    got = paired[(paired["variant"] == "full-ensemble") & (paired["horizon"] == "15m")]["mean_diff"].item()
    assert got == pytest.approx(want, rel=1e-9)
    summary = report.summary_table(data)
    assert {"full-ensemble", "wide-ensemble"} <= set(summary["variant"])


def test_the_budget_counts_an_ensemble_as_its_members_steps(recorded):
    st_, _, _, _ = recorded
    budget = report.budget_table(report.load(st_, "ens"))
    ens = budget.set_index("trial").loc["full-ensemble"]
    assert (ens["steps"], ens["epochs"], ens["members"], ens["stopped"]) == (400, 4, 2, "ensemble")
    assert list(budget["trial"][:3]) == ["full-s0", "full-s1", "full-ensemble"]
    note = report.budget_note(budget)
    assert note.startswith("Every trial trained for the same 200 optimizer steps.")    # the trained ones
    assert "seed-ensemble rows" in note and "2 times a single trial's budget" in note
    text = report.build_report(st_, "ens", n_boot=50).read_text()
    assert "are seed ensembles: the mean of the variant's seeds' quantiles" in text
    assert "| full-ensemble |" in text


def test_with_folds_each_fold_has_its_ensemble_and_the_report_pools_them(tmp_path):
    st_, _, made, qs = _record(tmp_path, folds=2)
    assert made == ["full-ensemble-f0", "full-ensemble-f1", "wide-ensemble-f0", "wide-ensemble-f1"]
    row = st_.trial("ens", "full-ensemble-f1")
    assert (row["variant"], row["fold"]) == ("full-ensemble", 1)
    assert json.loads(row["members"]) == ["full-s0-f1", "full-s1-f1"]
    saved = evaluate.load_predictions(Path(row["dir"]) / "predictions.parquet").splits["test"].q
    np.testing.assert_allclose(saved, (qs["full-s0-f1"] + qs["full-s1-f1"]) / 2, rtol=1e-12)
    data = report.load(st_, "ens")
    paired, _ = report.comparisons(data, n_boot=50)
    ens = paired[paired["variant"] == "full-ensemble"]
    assert (ens["folds"] == 2).all() and (ens["n"] == 1000 + 1100).all()       # both folds' samples, pooled
    assert list(report.fold_table(data)["variant"]) == ["full", "full-ensemble", "wide", "wide-ensemble"]


# ------------------------------------------------------------------------------------------ a 2-seed smoke run


def nqexp(*args, cwd, timeout=900):
    env = {**os.environ, "NQEXP_DB": str(Path(cwd) / "nq.duckdb"), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": str(ROOT)}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "nqexp.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`nqexp run --smoke` with one variant at two seeds: two trials and their ensemble."""
    cwd = tmp_path_factory.mktemp("ens")
    (cwd / "ens.yaml").write_text(yaml.safe_dump(quick_spec(name="ens", variants={"full": {}})))
    result = nqexp("run", "ens.yaml", "--smoke", "--set", "seeds=[0,1]", cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd, result


def test_a_two_seed_run_records_its_ensemble_in_store_report_and_wandb(smoke):
    cwd, result = smoke
    assert "Seed ensembles" in result.stdout and "full-ensemble" in result.stdout
    exp = "ens-smoke"
    st_ = RunStore(cwd / "runs")
    row = st_.trial(exp, "full-ensemble")
    assert row["status"] == "finished" and json.loads(row["members"]) == ["full-s0", "full-s1"]
    assert "test/crps" in st_.trial_metrics(exp, "full-ensemble")
    assert (Path(row["dir"]) / "plots" / "test_reliability.png").exists()
    assert "test/backtest_trades_60m" in st_.trial_metrics(exp, "full-ensemble")
    text = (cwd / "runs" / exp / "report.md").read_text()
    assert "| full-ensemble |" in text and "are seed ensembles" in text
    ls = nqexp("runs", "ls", exp, cwd=cwd)
    assert ls.returncode == 0 and "ens-smoke/full-ensemble" in ls.stdout
    show = nqexp("runs", "show", f"{exp}/full-ensemble", cwd=cwd)
    assert show.returncode == 0 and "a seed ensemble, the mean of the quantiles of full-s0, full-s1" in show.stdout
    runs = sorted((cwd / "runs" / exp / "wandb").glob("offline-run-*"))
    assert len(runs) == 3                                            # two trials and the ensemble
    # A rerun has nothing to train and keeps the ensemble as it is.
    again = nqexp("run", "ens.yaml", "--smoke", "--set", "seeds=[0,1]", cwd=cwd)
    assert again.returncode == 0 and "nothing to run" in again.stdout and "Seed ensembles" not in again.stdout


@pytest.mark.filterwarnings("ignore:trial ens-smoke/")     # smoke-sized trials are gated; that is not the point here
def test_predict_on_the_ensemble_is_the_mean_of_its_members_predicts(smoke):
    import nqexp as api

    cwd, _ = smoke
    store = cwd / "runs"
    db = str(cwd / "nq.duckdb")
    at = "2025-11-20T15:00"
    frames = {name: api.load_trial(f"ens-smoke/{name}", store).predict(db=db, at=at, baselines=True)
              for name in ("full-s0", "full-s1", "full-ensemble")}
    qcols = [c for c in frames["full-s0"].columns if c[0] == "q" and c[1:].isdigit()]
    members = np.stack([frames[n][qcols].to_numpy() for n in ("full-s0", "full-s1")])
    ens = frames["full-ensemble"][qcols].to_numpy()
    np.testing.assert_allclose(ens, members.mean(axis=0), rtol=1e-6, atol=1e-9)
    assert (np.diff(ens, axis=-1) >= 0).all()
    assert frames["full-ensemble"]["ts"].equals(frames["full-s0"]["ts"])
    base = [c for c in frames["full-s0"].columns if c.startswith("climatology_")]
    np.testing.assert_array_equal(frames["full-ensemble"][base].to_numpy(), frames["full-s0"][base].to_numpy())
    # The CLI serves it too.
    cli = nqexp("predict", "ens-smoke/full-ensemble", "--at", at, "--format", "json", cwd=cwd)
    assert cli.returncode == 0, cli.stderr
    rows = [r for r in json.loads(cli.stdout) if r["source"] == "model"]
    assert len(rows) == ens.size
