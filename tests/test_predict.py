"""`nqexp predict`: a tiny trial's bundle forecasts new bars exactly as the trial scored its test split.

One module fixture trains a tiny model in-process (no Ray), scores it and writes its bundle; the
tests then run `nqexp predict` through click in the same process, each invocation loading the
bundle afresh (nothing is shared with the fixture but files).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nqexp.cli import cli
from tests.test_quality import TINY as QUALITY_TINY

ROOT = Path(__file__).resolve().parents[1]
# The quality test's tiny demo trial, trained shorter: predict needs a bundle, not a good model.
# Recalibrated (by time of day), so predict is checked to apply the bundle's val-fitted recalibration as the
# trial's test did.
TINY = [o for o in QUALITY_TINY if not o.startswith(("train.time_budget_s", "train.max_epochs", "train.max_eval"))] + [
    "train.time_budget_s=6", "train.max_epochs=1", "train.max_eval_samples=512", "eval.recalibrate=conformal",
    "eval.median_shrink=true", "eval.recalibrate_tod_buckets=4"]


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    from nqexp.experiment.pipeline import prepare_data, score_trial
    from nqexp.experiment.bundle import write_bundle
    from nqexp.experiment.spec import load_spec
    from nqexp.experiment.track import NullTracker
    from nqexp.model.train import train

    tmp = tmp_path_factory.mktemp("predict")
    tspec = load_spec(ROOT / "experiments" / "demo_quality.yaml", overrides=TINY).trials()[0].spec
    db_path = str(tmp / "demo.duckdb")
    data = prepare_data(tspec, db_path)
    ds = data.datasets
    result = train(tspec.model, tspec.train, {"train": ds["train"], "val": ds["val"]}, NullTracker(),
                   tmp / "ckpt", seed=0, horizon_minutes=data.horizon_minutes, device="cpu")
    trial_dir = tmp / "runs" / "tiny" / "trials" / "full-s0"
    flat, _, _, recal = score_trial(tspec.model, result.checkpoint, data, trial_dir, tspec.eval)
    assert not recal.identity
    write_bundle(trial_dir, tspec, result.checkpoint, data, recalibration=recal)
    return {"spec": tspec, "db": db_path, "data": data, "dir": trial_dir, "ckpt": result.checkpoint,
            "metrics": flat, "tmp": tmp, "recal": recal}


def run(trial, *args):
    result = CliRunner().invoke(cli, ["--db", trial["db"], "predict", *[str(a) for a in args]], prog_name="nqexp")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def _rows_to_cube(rows, source):
    taus = sorted({r["tau"] for r in rows})
    hs = sorted({r["horizon_minutes"] for r in rows})
    cube = np.full((len(hs), len(taus)), np.nan)
    for r in rows:
        if r["source"] == source:
            cube[hs.index(r["horizon_minutes"]), taus.index(r["tau"])] = r["log_return"]
    return cube  # (H, Q)


def test_bundle_is_small_and_complete(trial):
    b = trial["dir"] / "bundle"
    meta = json.loads((b / "bundle.json").read_text())
    assert {"climatology", "volscaled", "mcgarch"} <= set(meta["baselines"])
    assert meta["sql_hash"] and meta["feature_set"] == trial["spec"].features.set
    assert len(meta["taus"]) == 7 and len(meta["horizons"]) == len(meta["horizon_minutes"])
    assert sum(p.stat().st_size for p in b.iterdir()) < 20e6


def test_latest_bar_json_and_table(trial):
    res = run(trial, trial["dir"], "--format", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    q = _rows_to_cube(rows, "model")
    assert np.isfinite(q).all() and (np.diff(q, axis=1) >= 0).all()        # finite, non-crossing
    for source in {r["source"] for r in rows}:
        assert (np.diff(_rows_to_cube(rows, source), axis=1) >= -1e-12).all(), source
    r0 = rows[0]
    assert r0["price"] == pytest.approx(r0["last_close"] * np.exp(r0["log_return"]), rel=1e-12)
    table = run(trial, trial["dir"], "--plot", trial["tmp"] / "fan.png")
    assert table.exit_code == 0 and "q95" in table.stdout and "mcgarch" in table.stdout
    assert (trial["tmp"] / "fan.png").stat().st_size > 1000


def test_at_a_test_bar_matches_the_trained_model(trial):
    from nqexp.model.train import load_checkpoint_model, predict

    test = trial["data"].datasets["test"]
    k = len(test) // 2
    at = str(np.datetime_as_string(test.ts[k], unit="s"))
    res = run(trial, trial["dir"], "--at", at, "--format", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["ts"] == at + "Z"
    model, _ = load_checkpoint_model(trial["ckpt"])
    raw = predict(model, test, 512, "cpu", subset=np.array([k])).q  # (1, H, Q)
    assert trial["recal"].n_buckets == 4
    want = trial["recal"].apply(raw, test.scale[k:k + 1], test.ts[k:k + 1])[0]  # (H, Q) as the trial's test was
    np.testing.assert_allclose(_rows_to_cube(rows, "model"), want, rtol=1e-5, atol=1e-7)
    base = trial["data"].baselines["test"]
    for name in ("climatology", "volscaled", "mcgarch"):
        np.testing.assert_allclose(_rows_to_cube(rows, name), base[name][k], rtol=1e-5, atol=1e-8, err_msg=name)


def test_tail_features_equal_the_full_build(trial):
    from nqexp import features
    from nqexp.data import db
    from nqexp.experiment import predict as P
    from nqexp.model import windows

    bundle = P.load_bundle(trial["dir"])
    fs = P.check_feature_set(bundle)
    test = trial["data"].datasets["test"]
    origin = test.ts[len(test) // 3]
    con = db.connect(trial["db"], read_only=True)
    try:
        full = features.load_arrays(con, fs, bundle.meta["symbol"])
        tail = P.read_tail(con, bundle, fs, bundle.meta["symbol"], origin.item(), origin.item())
    finally:
        con.close()
    i_full = int(np.searchsorted(full.ts, origin))
    i_tail = int(np.searchsorted(tail.arrays.ts, origin))
    assert i_tail < i_full / 2                                          # really a tail
    start = int(windows.window_starts(full.ts, bundle.window_cfg, [i_full])[0])
    n = i_full - start + 1
    a = full.X[start:i_full + 1].astype(np.float64)                   # (L, V) the window's bars
    b = tail.arrays.X[i_tail - n + 1:i_tail + 1].astype(np.float64)
    np.testing.assert_array_equal(full.ts[start:i_full + 1], tail.arrays.ts[i_tail - n + 1:i_tail + 1])
    # Both stored as float32: equal up to float32 rounding of values that agree to ~1e-12.
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9)
    # In float64 (compute, not the float32 table), the tail matches the full series to ~1e-9.
    con = db.connect(trial["db"], read_only=True)
    try:
        full64 = features.compute(con, fs, bundle.meta["symbol"], until=origin)
    finally:
        con.close()
    assert full64.ts[-1] == origin
    ref = full64.X[-n:]
    got = _tail64(trial, bundle, fs, origin)[-n:]
    scale = np.maximum(np.abs(ref), 1.0)
    assert np.nanmax(np.abs(got - ref) / scale) < 1e-9
    # sigma-hat from the calendar range equals the trial's.
    k = len(test) // 3
    sig = bundle.scalers.target_scale(tail.calendar, [i_tail + tail.offset])
    np.testing.assert_allclose(sig[0], test.scale[k], rtol=1e-5)


def _tail64(trial, bundle, fs, origin):
    """The float64 features of the tail read_tail computes, ending at origin."""
    import dataclasses

    from nqexp import features
    from nqexp.data import bars, db
    from nqexp.experiment import predict as P

    con = db.connect(trial["db"], read_only=True)
    try:
        n_back = bundle.window_cfg.t_max + P.feature_warmup_bars(fs)
        start = bars.ts_before(con, fs.bars_table, bundle.meta["symbol"], origin.item(), n_back) \
            or bars.ts_span(con, fs.bars_table, bundle.meta["symbol"])[0]
        con.execute(f"create temp table t64 as select * from {fs.bars_table} where symbol = ? and ts between ? and ?",
                    [bundle.meta["symbol"], start, origin.item()])
        return features.compute(con, dataclasses.replace(fs, bars_table="t64"), bundle.meta["symbol"]).X
    finally:
        con.close()


def _one_line_error(res, *needles):
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output and res.stderr.strip().count("\n") == 0, res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr


def test_refusals_are_one_line(trial, tmp_path):
    _one_line_error(run(trial, trial["dir"], "--symbol", "NOPE.x"), "no bars_5m bars for 'NOPE.x'")
    _one_line_error(run(trial, trial["dir"], "--at", "2031-01-01"), "before --at 2031-01-01")
    _one_line_error(run(trial, trial["dir"], "--at", "2020-01-01"), "at or before --at")
    _one_line_error(run(trial, trial["dir"], "--at", f"{_first_bar(trial)}"), "too few bars for a window")
    bare = tmp_path / "bare"
    bare.mkdir()
    _one_line_error(run(trial, bare), "has no model bundle")
    changed = tmp_path / "changed"
    shutil.copytree(trial["dir"] / "bundle", changed / "bundle")
    meta = json.loads((changed / "bundle" / "bundle.json").read_text())
    old = meta["sql_hash"]
    meta["sql_hash"] = "0123456789abcdef" * 4
    (changed / "bundle" / "bundle.json").write_text(json.dumps(meta))
    _one_line_error(run(trial, changed), "changed since training", old[:12], "0123456789ab")


def _first_bar(trial):
    from nqexp.data import db

    con = db.connect(trial["db"], read_only=True)
    try:
        return str(con.execute("select min(ts) from bars_5m where symbol = 'NQ.demo'").fetchall()[0][0])
    finally:
        con.close()


def test_range_mode_scores_like_the_trial(trial):
    from nqexp import metrics
    from nqexp.evaluation import evaluate

    spec = trial["spec"]
    out = trial["tmp"] / "range.parquet"
    res = run(trial, trial["dir"], "--start", spec.splits.test_start, "--end", spec.splits.test_end, "--out", out)
    assert res.exit_code == 0, res.output
    assert "CRPS" in res.stdout
    got = evaluate.load_predictions(out).splits["predict"]
    ref = evaluate.load_predictions(trial["dir"] / "predictions.parquet").splits["test"]
    common, gi, ri = np.intersect1d(got.ts, ref.ts, return_indices=True)
    assert len(common) == len(ref.ts) > 100                          # every test sample was forecast
    np.testing.assert_allclose(got.q[gi], ref.q[ri], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.y[gi], ref.y[ri], rtol=1e-6)
    taus = np.asarray(spec.model.quantiles)
    c_got = metrics.crps_quantile(got.y[gi].ravel(), got.q[gi].reshape(-1, len(taus)), taus).mean()
    c_ref = trial["metrics"]["test/crps"] if "test/crps" in trial["metrics"] else \
        metrics.crps_quantile(ref.y.ravel(), ref.q.reshape(-1, len(taus)), taus).mean()
    assert c_got == pytest.approx(c_ref, rel=1e-3)
    for name in ("climatology", "volscaled", "mcgarch"):
        np.testing.assert_allclose(got.baselines[name][gi], ref.baselines[name][ri], rtol=1e-4, atol=1e-8)


def test_predict_needs_neither_ray_nor_wandb(trial):
    import subprocess
    import sys

    code = ("import sys; from nqexp.cli import cli; "
            f"sys.argv = ['nqexp', '--db', {trial['db']!r}, 'predict', {str(trial['dir'])!r}, '--format', 'csv'];\n"
            "try:\n    cli()\nexcept SystemExit:\n    pass\n"
            "assert 'ray' not in sys.modules and 'wandb' not in sys.modules, 'imported ray or wandb'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("symbol,ts,last_close,horizon")


def test_forecasts_inside_the_train_or_val_period_are_marked_in_sample(trial):
    """A test-period forecast is out of sample; one in val is in-sample: stderr warns once, and every
    JSON row says which."""
    import json

    spec = trial["spec"]
    test = run(trial, trial["dir"], "--at", f"{spec.splits.test_end} 15:00", "--format", "json")
    assert test.exit_code == 0, test.output
    assert "in-sample" not in test.stderr
    assert {r["in_sample"] for r in json.loads(test.stdout)} == {False}
    val = run(trial, trial["dir"], "--at", f"{spec.splits.val_end} 15:00", "--format", "json")
    assert val.exit_code == 0, val.output
    assert val.stderr.count("in-sample") == 1 and f"{spec.splits.train_start}..{spec.splits.val_end}" in val.stderr
    assert {r["in_sample"] for r in json.loads(val.stdout)} == {True}


def test_predict_to_stdout_reads_a_read_only_store(trial, tmp_path):
    """A store this user may only read (a colleague's, a synced copy) still serves forecasts to stdout."""
    import os
    import subprocess
    import sys

    from tests.read_only import read_only, reader_prefix

    prefix = reader_prefix()
    store = tmp_path / "shared" / "runs"
    shutil.copytree(trial["dir"], store / "tiny" / "trials" / "full-s0")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    with read_only(store):
        res = subprocess.run([*prefix, sys.executable, "-m", "nqexp.cli", "--db", trial["db"], "predict", "tiny/full-s0",
                              "--store", str(store), "--format", "json"], capture_output=True, text=True, timeout=300,
                             env=env, cwd=tmp_path, check=False)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    rows = json.loads(res.stdout)
    assert {r["source"] for r in rows} >= {"model", "climatology"}
