"""The product's main job, end to end: `nqexp run SPEC` on Ray Tune, the run store, W&B offline runs.

One smoke run of experiments/quickstart.yaml (real Ray Tune, real W&B client in offline mode, real
DuckDB; the session's `quickstart_lab`, shared with tests/test_api.py, tests/lab.py) feeds most tests here;
it takes about a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.lab import SECRET, default_db, nqexp
from tests.wandb_log import read_wandb_records

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (ROOT / "experiments").glob("*.yaml") if "name:" in p.read_text())
EXP = "quickstart-smoke"  # --smoke runs under its own experiment name


def dry_run(*args, cwd):
    """`nqexp ARGS` in-process (click's CliRunner): dry runs touch neither Ray nor the database."""
    from click.testing import CliRunner

    from nqexp.cli import cli

    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, list(args), prog_name="nqexp", env={"NQEXP_DB": str(default_db(cwd))})
    finally:
        os.chdir(old)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


@pytest.mark.parametrize("spec", EXPERIMENTS, ids=lambda p: p.name)
def test_every_shipped_spec_passes_dry_run(spec, tmp_path):
    result = dry_run("run", str(spec), "--dry-run", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "trials" in result.stdout
    if "search:" in spec.read_text():
        sweep = dry_run("sweep", str(spec), "--dry-run", cwd=tmp_path)
        assert sweep.exit_code == 0 and "objective" in sweep.stdout, sweep.output


def test_a_spec_error_is_one_readable_line_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: bad\nextends: {ROOT / 'experiments' / 'base.yaml'}\ntrain:\n  lrr: 0.1\n")
    result = dry_run("run", str(bad), "--dry-run", cwd=tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {bad}: train.lrr: unknown key 'lrr' (did you mean 'lr'?)"


@pytest.fixture(scope="module")
def smoke(quickstart_lab):
    return quickstart_lab


def test_quickstart_smoke_runs_every_trial_and_prints_the_ablation_table(smoke):
    cwd, result, seconds = smoke
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Generated" in out and "did not span the split dates" in out   # it said it remade the demo data
    for variant in ("full", "no_tsa", "no_lgu", "no_instance_norm", "point_mse"):
        assert variant in out
    assert "Report:" in out and (cwd / "runs" / EXP / "report.md").exists()
    text = (cwd / "runs" / EXP / "report.md").read_text()
    assert "## Backtest of the test split" in text and "report_figures/learning_curves.png" in text
    assert "report_figures/backtest_equity.png" in text
    # A smoke run has a few hundred train samples: the tree baseline says it was fitted otherwise.
    assert "**Baselines not fitted as specified:** lgbm: " in text and "fitted with min_data_in_leaf=" in text
    assert "Traceback" not in result.stderr
    # Gated smoke trials are explained as expected at that size.
    assert ("flagged by sanity gates" in out) == ("(expected at --smoke size:" in out)


def test_run_store_holds_every_trial_with_metrics_gates_and_files(smoke):
    import duckdb

    cwd, result, _ = smoke
    assert result.returncode == 0, result.stderr[-2000:]
    con = duckdb.connect(str(cwd / "runs" / "store.duckdb"), read_only=True)
    trials = con.execute("select trial, variant, status, dir from trials order by trial").fetchall()
    assert [t[0] for t in trials] == sorted(["full-s0", "no_tsa-s0", "no_lgu-s0", "no_instance_norm-s0", "point_mse-s0"])
    assert all(t[2] == "finished" for t in trials)
    keys = {k for (k,) in con.execute("select distinct key from metrics").fetchall()}
    for key in ("test/crps_15m", "test/picp80_60m", "test/ic_2h", "val/crps", "test/crpss_climatology_4h",
                "test/crpss_volscaled_30m", "test/calib_err", "test/crossing_rate_15m"):
        assert key in keys, key
    # The point head's intervals have zero width: the collapse gate must say so.
    reasons = [r for (r,) in con.execute("select reason from gate_flags where trial = 'point_mse-s0'").fetchall()]
    assert any("picp80" in r for r in reasons), reasons
    # The backtest runs by default: its metrics per horizon, and the equity curves per trial.
    for key in ("test/backtest_sharpe_60m", "test/backtest_max_dd_15m", "test/backtest_trades_4h"):
        assert key in keys, key
    trades = con.execute("select value from metrics where trial = 'full-s0' and key = 'test/backtest_trades_60m'").fetchall()
    assert trades[0][0] > 0
    # Every epoch's train loss, val CRPS and lr reach the local store, one row per (trial, epoch, key).
    epochs = con.execute("select trial, epoch, key, value from epochs where experiment = ?", [EXP]).fetchall()
    assert {t[0] for t in epochs} == {t[0] for t in trials}
    assert {"train/loss_epoch", "val/crps", "val/crps_15m", "train/lr"} <= {e[2] for e in epochs}
    assert len(epochs) == len({e[:3] for e in epochs})
    n_epochs = dict(con.execute("select trial, epochs from trials").fetchall())
    for trial, n in n_epochs.items():
        assert {e[1] for e in epochs if e[0] == trial} == set(range(1, n + 1)), trial
    for trial, _, _, d in trials:
        # Recorded relative to the store's root, so a copied store finds its trials (docs/experiments.md §15).
        assert d == f"{EXP}/trials/{trial}", d
        d = cwd / "runs" / d
        assert (d / "predictions.parquet").exists() and (d / "spec.yaml").exists()
        assert (d / "plots" / "test_reliability.png").stat().st_size > 5000
        assert (d / "backtest_equity.parquet").exists()
    con.close()


def test_every_trial_has_one_offline_wandb_run_with_explicit_increasing_steps(smoke):
    cwd, result, _ = smoke
    runs = sorted((cwd / "runs" / EXP / "wandb").glob("offline-run-*"))
    assert len(runs) == 5
    for run in runs:
        (log,) = run.glob("run-*.wandb")
        records = read_wandb_records(log)
        history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
        steps = [h.step.num for h in history]
        assert steps == sorted(steps) and len(set(steps)) == len(steps), steps
        keys = {item.key or "/".join(item.nested_key) for h in history for item in h.item}
        assert {"train/loss", "val/crps"} <= keys, keys
        run_rec = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert run_rec.run_group == EXP and run_rec.job_type in run_rec.display_name


def test_every_trial_logs_its_bundle_as_an_artifact_that_predicts_as_the_trial(smoke):
    """Offline too: read back from the store's W&B runs, `nqexp predict wandb:...` is the trial's forecast."""
    cwd, result, _ = smoke
    assert result.returncode == 0, result.stderr[-2000:]
    names = []
    for run in sorted((cwd / "runs" / EXP / "wandb").glob("offline-run-*")):
        (log,) = run.glob("run-*.wandb")
        records = read_wandb_records(log)
        # (the predictions sample Table is an artifact too, of type run_table)
        (art,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]
        trial = next(r.run for r in records if r.WhichOneof("record_type") == "run").display_name
        assert art.name == f"{EXP}-{trial}", art.name
        assert {e.path for e in art.manifest.contents} == {p.name for p in (cwd / "runs" / EXP / "trials" / trial / "bundle").iterdir()}
        names.append(art.name)
    assert len(names) == 5
    env = {"XDG_CACHE_HOME": str(cwd / "cache")}
    local = nqexp("predict", f"{EXP}/full-s0", "--format", "json", cwd=cwd, env=env)
    remote = nqexp("predict", f"wandb:nqexp/{EXP}-full-s0:latest", "--format", "json", cwd=cwd, env=env)
    assert local.returncode == 0 and remote.returncode == 0, local.stderr + remote.stderr
    assert json.loads(remote.stdout) == json.loads(local.stdout)


def test_no_secret_reaches_logs_store_specs_or_wandb(smoke):
    cwd, result, _ = smoke
    assert SECRET not in result.stdout + result.stderr
    hits = [p for p in (cwd / "runs").rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert hits == []
    resolved = yaml.safe_load((cwd / "runs" / EXP / "spec.resolved.yaml").read_text())
    assert "databento" not in json.dumps(resolved).lower()


def test_runs_and_report_commands_work_offline_from_the_store(smoke):
    cwd, result, _ = smoke
    assert result.returncode == 0
    ls = nqexp("runs", "ls", cwd=cwd)
    assert ls.returncode == 0 and EXP in ls.stdout and "finished" in ls.stdout
    cmp = nqexp("runs", "compare", EXP, cwd=cwd)
    assert cmp.returncode == 0 and "no_lgu" in cmp.stdout and "point_mse" in cmp.stdout
    show = nqexp("runs", "show", f"{EXP}/full-s0", cwd=cwd)
    assert show.returncode == 0 and "picp80" in show.stdout
    html = nqexp("report", EXP, "--format", "html", cwd=cwd)
    assert html.returncode == 0
    text = (cwd / "runs" / EXP / "report.html").read_text()
    assert "Paired CRPS differences" in text and "data:image/png;base64" in text
    missing = nqexp("runs", "show", f"{EXP}/nope", cwd=cwd)
    assert missing.returncode == 1 and f"no trial {EXP}/nope" in missing.stderr


def test_running_the_same_spec_again_runs_nothing_new(smoke):
    cwd, first, _ = smoke
    assert first.returncode == 0
    again = nqexp("run", str(ROOT / "experiments" / "quickstart.yaml"), "--smoke", cwd=cwd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to run" in again.stdout
    assert "pending" not in again.stdout        # finished trials are not drawn as waiting
    assert len(list((cwd / "runs" / EXP / "wandb").glob("offline-run-*"))) == 5


def test_a_changed_spec_under_the_same_name_is_refused(smoke):
    cwd, first, _ = smoke
    changed = nqexp("run", str(ROOT / "experiments" / "quickstart.yaml"), "--smoke", "--set", "train.lr=0.01", cwd=cwd)
    assert changed.returncode == 2
    assert "already exists" in changed.stderr and "--set name=" in changed.stderr


@pytest.mark.slow
def test_ctrl_c_then_rerun_finishes_only_the_unfinished_trials(tmp_path):
    spec = ROOT / "experiments" / "quickstart.yaml"
    env = {**os.environ, "NQEXP_DB": str(tmp_path / "nq.duckdb"), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "nqexp.cli", "run", str(spec), "--smoke",
                             "--set", "train.max_epochs=3"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = tmp_path / "runs" / "store.duckdb"
    deadline = time.time() + 300
    import duckdb

    while time.time() < deadline:           # wait until at least one trial finished, then Ctrl-C
        time.sleep(2)
        if store.exists():
            try:
                con = duckdb.connect(str(store), read_only=True)
                n = con.execute("select count(*) from trials where status = 'finished'").fetchall()[0][0]
                con.close()
            except duckdb.Error:
                continue
            if n >= 1:
                break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "Resume with" in out
    again = subprocess.run([sys.executable, "-m", "nqexp.cli", "run", str(spec), "--smoke", "--set",
                            "train.max_epochs=3"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "already finished" in again.stdout
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("select count(*) from trials where status = 'finished'").fetchall()[0][0] == 5
    con.close()
    ids = [p.name.rsplit("-", 1)[1] for p in (tmp_path / "runs" / EXP / "wandb").glob("offline-run-*")]
    # A resumed trial reuses its W&B id; no trial gets a second id.
    assert len(set(ids)) == 5


def test_sweep_smoke_samples_with_optuna_and_ranks_gated_trials_last(smoke, tmp_path):
    cwd, first, _ = smoke
    spec = cwd / "demo_sweep.yaml"
    spec.write_text(
        f"name: demo_sweep\nextends: {ROOT / 'experiments' / 'quickstart.yaml'}\nvariants: {{}}\n"
        "search:\n  train.lr: {loguniform: [1.0e-4, 3.0e-3]}\n  model.d_model: {choice: [16, 32]}\n"
    )
    result = nqexp("sweep", str(spec), "--smoke", cwd=cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "sweep trials by val CRPS (gated last)" in result.stdout
    import duckdb

    con = duckdb.connect(str(cwd / "runs" / "store.duckdb"), read_only=True)
    rows = con.execute("select status, params_json from trials where experiment = 'demo_sweep-smoke'").fetchall()
    con.close()
    assert len(rows) == 2 and all(s in ("finished", "stopped") for s, _ in rows)
    for _, params in rows:
        p = json.loads(params)
        assert 1e-4 <= p["train.lr"] <= 3e-3 and p["model.d_model"] in (16, 32)


@pytest.mark.slow
def test_rolling_origin_folds_run_as_trials_and_a_sweep_scores_every_fold(smoke):
    """splits.folds: 2 makes every (variant, seed) two trials with their own split dates, data,
    scalers and baselines; the report pools both folds. A sweep trial trains both folds and is
    judged by their mean val CRPS."""
    cwd, _, _ = smoke
    spec = cwd / "folds.yaml"
    quick = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
    spec.write_text(yaml.safe_dump({
        "name": "folds", "extends": str(ROOT / "experiments" / "base.yaml"), "seeds": [0],
        "data": quick["data"], "windows": quick["windows"], "model": quick["model"],
        "splits": {**quick["splits"], "folds": 2},
        "variants": {"full": {}, "no_tsa": {"model.attention": "temporal"}},
        "search": {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}},
    }))
    result = nqexp("run", str(spec), "--smoke", cwd=cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    import duckdb

    con = duckdb.connect(str(cwd / "runs" / "store.duckdb"), read_only=True)
    rows = con.execute("select trial, fold, status, spec_yaml from trials where experiment = 'folds-smoke' "
                       "order by trial").fetchall()
    con.close()
    assert [(r[0], r[1], r[2]) for r in rows] == [("full-s0-f0", 0, "finished"), ("full-s0-f1", 1, "finished"),
                                                 ("no_tsa-s0-f0", 0, "finished"), ("no_tsa-s0-f1", 1, "finished")]
    tests = [yaml.safe_load(r[3])["splits"]["test_start"] for r in rows[:2]]
    assert tests[0] < tests[1]                                     # fold 0 tests the block before fold 1
    text = (cwd / "runs" / "folds-smoke" / "report.md").read_text()
    assert "## Test CRPS per rolling-origin fold" in text and "| 2 |" in text     # folds column of the tables
    sweep = nqexp("sweep", str(spec), "--smoke", "--set", "name=folds_sweep", cwd=cwd)
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-2000:]
    con = duckdb.connect(str(cwd / "runs" / "store.duckdb"), read_only=True)
    srows = con.execute("select trial, status, experiment from trials where experiment like 'folds_sweep%'").fetchall()
    con.close()
    assert len(srows) == 2
    for name, status, exp in srows:
        trial_dir = cwd / "runs" / exp / "trials" / name
        if status == "finished":                                   # not stopped early by the scheduler
            assert (trial_dir / "fold0" / "predictions.parquet").exists()
            assert (trial_dir / "fold1" / "predictions.parquet").exists()
            assert (trial_dir / "bundle").is_dir()
