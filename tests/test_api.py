"""The Python API (nqexp/experiment/api.py, docs/api.md): experiments and trials as DataFrames, forecasts
from a DataFrame or a file without a database, and the CLI on the same path.

The session's smoke run of the quickstart (`nqexp run quickstart --smoke`, about a minute; `quickstart_lab`,
shared with tests/test_tune.py, tests/lab.py) in a working directory of its own, with the default database
./nqexp_data/nqexp.duckdb and store ./runs, as a user who follows the README has them; docs/api.md's example
runs there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import nqexp
from nqexp.cli import cli
from nqexp.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
EXP = "quickstart-smoke"
RECENT = "2025-07-01"          # the demo ends 2025-12-03: over 100 sessions, what sigma-hat reads to settle


@pytest.fixture(scope="module")
def lab(quickstart_lab):
    return quickstart_lab[0]


@pytest.fixture
def here(lab, monkeypatch):
    """The lab as the working directory, with no NQEXP_DB: the defaults a user has."""
    monkeypatch.chdir(lab)
    monkeypatch.delenv("NQEXP_DB", raising=False)
    return lab


def raw_bars(lab: Path, since: str = RECENT, contracts: bool = True) -> pd.DataFrame:
    """The demo's raw 1-minute bars since `since`, as a user's DataFrame (naive UTC timestamps)."""
    import duckdb

    cols = "ts, open, high, low, close, volume" + (", contract, instrument_id" if contracts else "")
    with duckdb.connect(str(lab / "nqexp_data" / "nqexp.duckdb"), read_only=True) as con:
        return con.execute(f"select {cols} from raw_bars where symbol = 'NQ.demo' and ts >= ? order by ts",
                           [since]).df()


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="nqexp")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def _model_cube(rows) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The CLI's long rows of the model -> origins, (n, H, Q) log-returns and prices."""
    model = [r for r in rows if r["source"] == "model"]
    ts = list(dict.fromkeys(r["ts"] for r in model))
    hs = sorted({r["horizon_minutes"] for r in model})
    taus = sorted({r["tau"] for r in model})
    q = np.full((len(ts), len(hs), len(taus)), np.nan)
    p = np.full_like(q, np.nan)
    for r in model:
        i, j, k = ts.index(r["ts"]), hs.index(r["horizon_minutes"]), taus.index(r["tau"])
        q[i, j, k], p[i, j, k] = r["log_return"], r["price"]
    return ts, q, p


def _frame_cube(frame: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    qcols = [c for c in frame.columns if re.fullmatch(r"q\d+", c)]
    n_h = frame["horizon_minutes"].nunique()
    ts = [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in frame["ts"].iloc[::n_h]]
    q = frame[qcols].to_numpy().reshape(len(ts), n_h, len(qcols))
    p = frame[[f"price_{c}" for c in qcols]].to_numpy().reshape(q.shape)
    return ts, q, p


def _assert_same_forecast(rows, frame):
    ts_a, q_a, p_a = _model_cube(rows)
    ts_b, q_b, p_b = _frame_cube(frame)
    assert ts_a == ts_b
    diff = np.abs(q_a - q_b)
    assert diff.max() <= 1e-6, f"max |diff| {diff.max():.3g} at {np.unravel_index(diff.argmax(), diff.shape)}"
    np.testing.assert_allclose(p_a, p_b, rtol=1e-6)


# --------------------------------------------------------------------------------------- the package


def test_import_nqexp_stays_light_and_finds_the_api_on_first_use():
    code = ("import sys, nqexp; heavy = {'pandas', 'duckdb', 'torch', 'ray', 'wandb'} & set(sys.modules); "
            "print(sorted(heavy)); f = nqexp.load_trial; print(f.__module__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split("\n")[:2] == ["[]", "nqexp.experiment.api False"], out.stdout + out.stderr
    assert "load_experiment" in dir(nqexp)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nqexp.nope  # noqa: B018 (the attribute access is the test)


# --------------------------------------------------------------------------------------- the doc


def test_the_docs_example_runs_against_a_smoke_run(here, capsys):
    text = (ROOT / "docs" / "api.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, "docs/api.md", "exec"), {"__name__": "__docs__"})  # noqa: S102 (the doc's own code)
    out = capsys.readouterr().out
    for needle in ("crps", "mean_diff", "full-s0", "price_q95", "4h"):
        assert needle in out, out
    messages = [str(w.message) for w in caught if issubclass(w.category, nqexp.errors.NqexpWarning)]
    assert any("sanity gate" in m for m in messages)                      # the doc says it warns
    assert not any("fewer than" in m for m in messages), messages          # and its bars are long enough


# --------------------------------------------------------------------------------------- experiments


def test_experiment_table_is_numbers_and_agrees_with_the_store(here):
    exp = nqexp.load_experiment(EXP)
    table = exp.table()
    assert list(table.columns) == ["variant", "horizon", "metric", "n", "mean", "std", "ci_low", "ci_high",
                                   "best_baseline"]
    for col in ("n", "mean", "std", "ci_low", "ci_high"):
        assert pd.api.types.is_numeric_dtype(table[col]), col
    assert table["variant"].unique().tolist() == exp.variants
    assert exp.variants[0] == exp.reference == "full" and len(exp.variants) == 5
    trial = nqexp.load_trial(f"{EXP}/no_lgu-s0")
    for key, value in trial.metrics.items():
        split, name = key.split("/", 1)
        if split != "test" or np.isnan(value):
            continue
        m = re.fullmatch(r"(.+)_(\d+[mh])", name)
        metric, horizon = (m.group(1), m.group(2)) if m else (name, "all")
        row = table[(table.variant == "no_lgu") & (table.horizon == horizon) & (table.metric == metric)]
        assert len(row) == 1 and row["mean"].iloc[0] == pytest.approx(value), key
    val = exp.table("val")
    assert val.loc[(val.variant == "full") & (val.horizon == "all") & (val.metric == "crps"), "mean"].iloc[0] == \
        pytest.approx(nqexp.load_trial(f"{EXP}/full-s0").metrics["val/crps"])
    with pytest.raises(DataError, match="split must be 'val' or 'test'"):
        exp.table("train")


def test_experiment_trials_and_compare_are_the_reports_numbers(here):
    from nqexp.evaluation import report

    exp = nqexp.load_experiment(EXP, store="runs")
    trials = exp.trials()
    assert trials["trial"].tolist()[0] == "full-s0" and len(trials) == 5
    assert {"variant", "seed", "fold", "status", "steps", "stopped", "gates", "test_crps"} <= set(trials.columns)
    assert (trials["status"] == "finished").all() and pd.api.types.is_numeric_dtype(trials["test_crps"])
    point = trials.set_index("trial").loc["point_mse-s0"]
    assert point["gated"] and "collapse_coverage" in point["gates"]
    paired = exp.compare(n_boot=200)
    want, _ = report.comparisons(report.load(exp.store, EXP), n_boot=200)
    pd.testing.assert_frame_equal(paired.drop(columns="reference"), want)
    assert (paired["reference"] == "full").all() and "full" not in set(paired["variant"])
    other = exp.compare("no_tsa", n_boot=200)
    assert "no_tsa" not in set(other["variant"]) and "full" in set(other["variant"])
    assert other["mean_diff"].dtype == float
    vs = exp.compare("climatology", n_boot=200)
    assert set(vs["baseline"]) == {"climatology"} and set(vs["variant"]) == set(exp.variants)
    with pytest.raises(DataError, match="no variant or baseline 'nope'"):
        exp.compare("nope")
    with pytest.raises(DataError, match="no experiment 'nope'"):
        nqexp.load_experiment("nope")


def test_trial_predictions_history_spec_and_provenance(here):
    trial = nqexp.load_trial(f"{EXP}/full-s0")
    preds = trial.predictions()
    assert {"split", "ts", "horizon", "target", "q05", "q95", "climatology_q05"} <= set(preds.columns)
    assert set(preds["split"]) == {"val", "test"}
    history = trial.history()
    assert "val/crps" in history.columns and history["epoch"].tolist() == sorted(history["epoch"])
    assert trial.spec["name"] == EXP and trial.spec["features"]["set"] == "migt24"
    assert trial.provenance["bars"]["symbol"] == "NQ.demo"
    assert trial.info["variant"] == "full" and trial.gated == bool(trial.flags)


# --------------------------------------------------------------------------------------- forecasts


def test_predict_from_a_dataframe_equals_nqexp_predict_on_the_same_bars(here, tmp_path):
    bars = raw_bars(here)
    with pytest.warns(nqexp.errors.NqexpWarning, match="sanity gate"):
        frame = nqexp.load_trial(f"{EXP}/full-s0").predict(bars)
    assert len(frame) == 5 and frame["ts"].dt.tz is not None and frame["target"].isna().all()
    # The same bars in a database file, imported and built by the CLI, then `nqexp predict`.
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path)
    db = tmp_path / "bars.duckdb"
    assert invoke("--db", db, "data", "import", path, "--symbol", "NQ.demo", "--tz", "UTC").exit_code == 0
    assert invoke("--db", db, "data", "bars", "--symbol", "NQ.demo", "--freq", "5m").exit_code == 0
    res = invoke("--db", db, "predict", f"{EXP}/full-s0", "--format", "json")
    assert res.exit_code == 0, res.output
    _assert_same_forecast(json.loads(res.stdout), frame)
    # A tz-aware frame is the same instants: the same forecast.
    aware = bars.assign(ts=bars["ts"].dt.tz_localize("UTC").dt.tz_convert("America/New_York"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nqexp.errors.NqexpWarning)
        again = nqexp.load_trial(f"{EXP}/full-s0").predict(aware)
    pd.testing.assert_frame_equal(again, frame)


def test_predict_bars_file_takes_the_dataframe_path(here, tmp_path):
    bars = raw_bars(here, contracts=False)
    csv = tmp_path / "recent.csv"
    bars.to_csv(csv, index=False)
    res = invoke("predict", f"{EXP}/full-s0", "--bars", csv, "--tz", "UTC", "--format", "json")
    assert res.exit_code == 0, res.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nqexp.errors.NqexpWarning)
        frame = nqexp.load_trial(f"{EXP}/full-s0").predict(bars)
    _assert_same_forecast(json.loads(res.stdout), frame)
    naive = invoke("predict", f"{EXP}/full-s0", "--bars", csv)
    assert naive.exit_code == 1 and "timestamps have no time zone" in naive.stderr
    assert naive.stderr.count("\n") == 1 and "Traceback" not in naive.output
    no_file = invoke("predict", f"{EXP}/full-s0", "--tz", "UTC")
    assert no_file.exit_code == 1 and "--tz applies to the timestamps of --bars FILE" in no_file.stderr


def test_range_mode_from_a_frame_and_its_json_and_csv(here, tmp_path):
    bars = raw_bars(here)
    day = "2025-12-01"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nqexp.errors.NqexpWarning)
        frame = nqexp.load_trial(f"{EXP}/full-s0").predict(bars, start=day, baselines=True)
    assert frame["ts"].nunique() > 200 and frame["target"].notna().mean() > 0.9
    assert {"mcgarch_q05", "climatology_q95"} <= set(frame.columns)
    out = tmp_path / "range.parquet"
    res = invoke("predict", f"{EXP}/full-s0", "--start", day, "--format", "json", "--out", out)
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)                              # stdout is only the JSON: notes go to stderr
    assert "forecasts of NQ.demo" in res.stderr and out.exists()
    _assert_same_forecast(rows, frame)
    ys = {(r["ts"], r["horizon_minutes"]): r["target"] for r in rows if r["source"] == "model"}
    got = frame.set_index([frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"), "horizon_minutes"])["target"]
    assert all((v is None and got[k] != got[k]) or v == pytest.approx(got[k], rel=1e-6) for k, v in ys.items())
    csv = invoke("predict", f"{EXP}/full-s0", "--start", day, "--format", "csv", "--out", tmp_path / "r2.parquet")
    assert csv.exit_code == 0 and csv.stdout.startswith("symbol,ts,last_close,horizon")
    assert len(csv.stdout.splitlines()) == len(rows) + 1


def test_a_gated_trial_warns_naming_the_gate(here, tmp_path):
    res = invoke("predict", f"{EXP}/point_mse-s0", "--format", "csv")
    assert res.exit_code == 0, res.output
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("Warning:")]
    assert "point_mse-s0 is flagged by the sanity gates collapse_coverage" in line
    assert res.stdout.startswith("symbol,ts,last_close")
    with pytest.warns(nqexp.errors.NqexpWarning, match="collapse_coverage"):
        nqexp.load_trial(f"{EXP}/point_mse-s0").forecast()
    # The same bundle outside any run store has no gate flags to warn about.
    loose = tmp_path / "loose"
    shutil.copytree(here / "runs" / EXP / "trials" / "point_mse-s0", loose)
    with warnings.catch_warnings():
        warnings.simplefilter("error", nqexp.errors.NqexpWarning)
        fc = nqexp.load_trial(loose).forecast()
    assert fc.q.shape[0] == 1


@pytest.mark.filterwarnings("ignore::nqexp.errors.NqexpWarning")     # those pytest.warns does not match
def test_short_or_rejected_bars_warn_and_unusable_ones_are_one_line(here):
    trial = nqexp.load_trial(f"{EXP}/full-s0")
    short = raw_bars(here, since="2025-11-20")
    with pytest.warns(nqexp.errors.NqexpWarning, match="sigma-hat reads to settle"):
        trial.predict(short)
    bad = short.copy()
    bad.loc[5, "high"] = bad.loc[5, "low"] - 1.0
    with pytest.warns(nqexp.errors.NqexpWarning, match="1 of .* rows rejected \\(1 high < low\\)"):
        trial.predict(bad)
    with pytest.raises(DataError, match="missing required column"):
        trial.predict(short.drop(columns="close"))
    with pytest.raises(DataError, match="bars must be a DataFrame of 1-minute bars"):
        trial.predict([1, 2, 3])
    with pytest.raises(DataError, match="give bars .* or db"):
        trial.predict(short, db="x.duckdb")
