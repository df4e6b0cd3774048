"""The nqexp.cli package: every command has help with an example, startup stays light, user errors are
one line, `--json` prints the same data as the tables, and rich stays inside the CLI.

Most tests run the CLI in-process with click's CliRunner (fast); the few that check what only a real
process shows (imports at startup, `python -m nqexp.cli`, exit codes seen by a shell) spawn one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from nqexp.cli import cli
from nqexp.evaluation import report
from nqexp.experiment.track import RunStore

ROOT = Path(__file__).resolve().parents[1]


def all_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [p for p, _ in all_commands(cli)], ids=lambda p: " ".join(p))
def test_every_command_has_help_with_a_real_example(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "nqexp " in result.output.split("Example", 1)[1]


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from nqexp.cli import cli\n"
        "try:\n    cli(['--help'], prog_name='nqexp')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'ray', 'wandb', 'databento', 'pandas', 'duckdb') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_no_library_module_outside_the_cli_imports_rich():
    offenders = [p.name for p in (ROOT / "nqexp").glob("*.py")
                 if any(line.lstrip().startswith(("import rich", "from rich")) for line in p.read_text().splitlines())]
    assert offenders == []


def test_the_cli_holds_no_sql():
    """The CLI prints; the stores' owners (track.RunStore, ingest, bars, db) query."""
    hits = [f"{p.name}:{i}" for p in (ROOT / "nqexp" / "cli").glob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if "execute(" in line or "select " in line.lower()]
    assert hits == []


@pytest.fixture
def invoke(tmp_path, monkeypatch):
    """Run `nqexp ARGS` in-process in tmp_path with its own database; no traceback may escape."""
    monkeypatch.chdir(tmp_path)

    def run(*args, env=None):
        result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="nqexp",
                                    env={"NQEXP_DB": str(tmp_path / "t.duckdb"), **(env or {})})
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
        return result

    return run


def test_demo_then_info_reports_the_series_and_info_json_holds_the_same_data(invoke, tmp_path):
    made = invoke("data", "demo", "--days", "10", "--seed", "1")
    assert made.exit_code == 0, made.output
    assert "demo bars" in made.stdout and "NQ.demo" in made.stdout
    info = invoke("data", "info")
    assert info.exit_code == 0, info.output
    assert "NQ.demo" in info.stdout and "Rejected rows: 0" in info.stdout
    as_json = invoke("data", "info", "--json")
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)
    assert doc["database"] == str(tmp_path / "t.duckdb") and doc["size_bytes"] > 0
    (series,) = doc["series"]
    assert series["symbol"] == "NQ.demo" and f"{series['rows']:,}" in info.stdout
    assert series["first"] in info.stdout and series["last"] in info.stdout
    assert doc["rejects"] == [] and doc["bars"] == []
    assert (f"demo_rolls ({doc['demo_rolls']} rolls)" in info.stdout) == (doc["demo_rolls"] > 0)


def test_user_errors_are_one_line_without_traceback(invoke, tmp_path):
    (tmp_path / "naive.csv").write_text("2024-03-04 09:30:00,1,2,0.5,1.5,3\n")
    for args, message in [(("data", "import", "missing.csv", "--tz", "UTC"), "no such file"),
                          (("data", "import", "naive.csv"), "--tz")]:
        result = invoke(*args)
        assert result.exit_code == 1
        assert message in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr


@pytest.mark.parametrize("name", ["nope", "../../x", "/tmp/x"])
def test_a_bad_feature_set_name_is_refused_before_any_bars_are_built(invoke, tmp_path, name):
    (tmp_path / "x.yaml").write_text("name: x\n")  # a YAML two levels up must stay unreachable
    made = invoke("data", "demo", "--days", "5")
    assert made.exit_code == 0, made.output
    for cmd in ("build", "check"):
        result = invoke("features", cmd, "--set", name, "--symbol", "NQ.demo")
        assert result.exit_code == 2 and "migt24" in result.stderr, result.output
        assert result.stderr.strip().count("\n") == 0, result.stderr
    info = json.loads(invoke("data", "info", "--json").stdout)
    assert info["bars"] == [], "bars were built before the set name was checked"


def test_spec_schema_validates_a_shipped_spec_and_init_copies_them_to_edit(invoke, tmp_path):
    import jsonschema

    schema = json.loads(invoke("spec", "schema").stdout)
    made = invoke("init", "mine")
    assert made.exit_code == 0 and "quickstart.yaml" in made.stdout, made.output
    # As an editor sees it: YAML dates are text in JSON.
    copied = json.loads(json.dumps(yaml.safe_load((tmp_path / "mine" / "quickstart.yaml").read_text()), default=str))
    jsonschema.validate(copied, schema)
    assert invoke("init", "mine").stdout.count("Kept") == 1  # nothing is overwritten without --force
    dry = invoke("run", "mine/quickstart.yaml", "--dry-run")
    assert dry.exit_code == 0, dry.output
    shipped = invoke("run", "quickstart", "--dry-run")  # a shipped name, no file of that name here
    assert shipped.exit_code == 0 and dry.stdout == shipped.stdout, shipped.output


def test_dry_run_prints_the_memory_plan_and_a_run_that_cannot_fit_is_refused_before_it_starts(invoke, tmp_path):
    dry = invoke("run", "grok_sl_1m", "--dry-run", env={"COLUMNS": "250"})
    assert dry.exit_code == 0, dry.output
    assert "grok_sl_1m: memory plan per trial shape" in dry.stdout and "GPU bf16" in dry.stdout
    assert "usable memory: a 80 GiB GPU (resources.gpu_memory_gb)" in dry.stdout
    # The same spec on an A100 40GB: one line, exit code 2, nothing created (not even the run store).
    refused = invoke("run", "grok_sl_1m", "--set", "resources.gpu_memory_gb=40")
    assert refused.exit_code == 2, refused.output
    line = refused.stderr.strip()
    assert line.count("\n") == 0 and "over the 36.0 GiB usable of a 40 GiB GPU" in line, line
    assert "--set train.batch_size=8 --set train.grad_accum=16" in line, line
    assert not (tmp_path / "runs").exists()
    sweep = invoke("sweep", "sweep", "--dry-run", env={"COLUMNS": "250"})
    assert sweep.exit_code == 0 and "largest trial:" in sweep.stdout, sweep.output


def test_import_reports_rejects_and_idempotence_and_rejects_lists_them(invoke, tmp_path):
    csv = tmp_path / "bars.csv"
    csv.write_text("2024-03-04 09:30:00,1,2,0.5,1.5,3\n2024-03-04 09:31:00,1,0.5,2,1.5,3\n")
    first = invoke("data", "import", csv, "--tz", "UTC")
    assert first.exit_code == 0, first.output
    assert "1 new, 0 unchanged" in first.stdout and "high < low" in first.stdout
    second = invoke("data", "import", csv, "--tz", "UTC")
    assert "0 new, 1 unchanged" in second.stdout
    rejects = invoke("data", "rejects")
    assert rejects.exit_code == 0 and "bars.csv" in rejects.stdout and "high < low" in rejects.stdout
    doc = json.loads(invoke("data", "info", "--json").stdout)
    assert doc["rejects"] == [{"reason": "high < low", "rows": 1}]
    assert [i["new_rows"] for i in doc["imports"]] == [0, 1]           # newest first


def test_doctor_reports_key_presence_but_never_the_key(invoke):
    secret = "db-SECRETKEY1234567890abcdef"
    invoke("data", "demo", "--days", "2")
    result = invoke("doctor", env={"DATABENTO_API_KEY": secret, "WANDB_API_KEY": "wandbsecret0123456789"})
    assert result.exit_code == 0, result.output
    assert "present" in result.stdout and "table raw_bars" in result.stdout
    assert secret not in result.output and "wandbsecret0123456789" not in result.output


@pytest.mark.parametrize("args", [("sync",), ("data", "download", "--start", "2024-01-01", "--end", "2024-02-01")])
def test_commands_needing_a_key_fail_clearly_without_one(tmp_path, args):
    """A real process (`python -m nqexp.cli`): the exit code and stderr a shell sees."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "DATABENTO_API_KEY")}
    result = subprocess.run([sys.executable, "-m", "nqexp.cli", *args], capture_output=True, text=True,
                            env={**env, "NQEXP_DB": str(tmp_path / "t.duckdb")}, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "API" in result.stderr.upper()
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_malformed_yaml_spec_is_one_line_with_exit_code_2(invoke, tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: x\ntrain:\n  lr: [1,\n")
    result = invoke("run", spec, "--dry-run")
    assert result.exit_code == 2
    assert f"{spec}:" in result.stderr and "invalid YAML" in result.stderr


def test_an_unreachable_cluster_address_is_one_clear_line(tmp_path):
    spec = ROOT / "experiments" / "quickstart.yaml"

    def submit(*extra):
        return subprocess.run([sys.executable, "-m", "nqexp.cli", "run", str(spec), "--address", "http://127.0.0.1:9",
                               *extra], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                              env={**os.environ, "NQEXP_DB": str(tmp_path / "t.duckdb")})

    result = submit("--set", f"track.store={tmp_path / 'runs'}")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "cannot reach a Ray job server at http://127.0.0.1:9" in result.stderr
    # A relative store would land in the job's temporary working directory on the head: refused first.
    relative = submit()
    assert relative.returncode == 2 and "Traceback" not in relative.stderr
    assert "relative path" in relative.stderr and "--set track.store=" in relative.stderr


# --------------------------------------------------------------------------------------- runs --json


@pytest.fixture
def store(tmp_path):
    """Two variants x one seed with metrics at two horizons; `wide` is gated."""
    st = RunStore(tmp_path / "runs")
    st.start_experiment("abl", "run", None, yaml.safe_dump({"name": "abl", "variants": {"good": {}, "wide": {}}}))
    for variant, crps in (("good", 1.0e-3), ("wide", 2.0e-3)):
        name = f"{variant}-s0"
        st.upsert_trial("abl", name, variant=variant, seed=0, status="finished", params_json="{}", spec_yaml="",
                        dir=str(st.trial_dir("abl", name)), best_epoch=3, epochs=5, train_seconds=12.0,
                        stopped="early", gated=variant == "wide")
        metrics = {f"{split}/{m}{h}": crps * k for split in ("val", "test") for k, h in ((1, "_15m"), (2, "_60m"), (1.5, ""))
                   for m in ("crps", "picp80")}
        metrics["test/ic"] = float("nan")
        st.write_metrics("abl", name, metrics, flags=[("collapse", "picp80 too low")] if variant == "wide" else [])
    st.finish_experiment("abl", "finished", 42.0)
    return st


@pytest.fixture
def seeded_store(tmp_path):
    """Experiments abl and abl2: variants good and wide x seeds 0-2, test and val CRPS at 15m; abl2's are 1.1x."""
    st = RunStore(tmp_path / "seeded")
    for exp, k in (("abl", 1.0), ("abl2", 1.1)):
        st.start_experiment(exp, "run", None, yaml.safe_dump({"name": exp, "variants": {"good": {}, "wide": {}}}))
        for variant, base in (("good", 1.0e-3), ("wide", 2.0e-3)):
            for seed, bump in ((0, 1.0), (1, 1.2), (2, 1.7)):
                name = f"{variant}-s{seed}"
                st.upsert_trial(exp, name, variant=variant, seed=seed, status="finished", params_json="{}",
                                spec_yaml="", dir=str(st.trial_dir(exp, name)), gated=False)
                crps = base * bump * k
                st.write_metrics(exp, name, {"test/crps_15m": crps, "test/crps": crps, "val/crps_15m": crps,
                                             "val/crps": crps})
                st.write_epoch(exp, name, 0, {"val/crps": crps})
                st.trial_dir(exp, name).mkdir(parents=True)
        st.finish_experiment(exp, "finished", 1.0)
    return st


def test_runs_ls_json_lists_experiments_with_trial_counts(invoke, store):
    result = invoke("runs", "ls", "--store", store.root, "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["experiment"], row["status"], row["trials"], row["finished"], row["gated"]) == ("abl", "finished", 2, 2, 1)
    assert row["wall_seconds"] == 42.0
    table = invoke("runs", "ls", "--store", store.root)
    assert "abl" in table.stdout and row["created"] in table.stdout


def test_runs_show_json_holds_the_trial_metrics_and_flags(invoke, store):
    result = invoke("runs", "show", "abl/wide-s0", "--store", store.root, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["variant"], doc["seed"], doc["best_epoch"], doc["params"]) == ("wide", 0, 3, {})
    assert doc["metrics"]["test/crps_60m"] == pytest.approx(4.0e-3)
    assert doc["metrics"]["test/ic"] is None                          # NaN is null, so the output is valid JSON
    assert doc["metrics"] == {k: (None if v != v else v) for k, v in store.trial_metrics("abl", "wide-s0").items()}
    assert doc["flags"] == [{"gate": "collapse", "reason": "picp80 too low"}]
    table = invoke("runs", "show", "abl/wide-s0", "--store", store.root)
    assert "15m" in table.stdout and "60m" in table.stdout and "picp80 too low" in table.stdout
    missing = invoke("runs", "show", "abl/nope", "--store", store.root, "--json")
    assert missing.exit_code == 1 and "no trial abl/nope" in missing.stderr


def test_runs_compare_json_holds_numbers_and_the_table_the_same_numbers_as_text(invoke, store):
    result = invoke("runs", "compare", "abl", "--store", store.root, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    data = report.load(store, "abl")
    expected = report.summary_stats(data).to_dict(orient="records")
    assert rows == [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in expected]
    for r in rows:                                              # numbers, never "mean ± std" text
        assert isinstance(r["n"], int) and (isinstance(r["mean"], float) if r["n"] else r["mean"] is None), r
    assert [r["n"] for r in rows if r["metric"] == "ic"] == [0, 0]   # test/ic is NaN: no values, null mean
    crps = {(r["variant"], r["horizon"]): r["mean"] for r in rows if r["metric"] == "crps"}
    assert crps == pytest.approx({("good", "all"): 1.5e-3, ("good", "15m"): 1e-3, ("good", "60m"): 2e-3,
                                  ("wide", "all"): 3e-3, ("wide", "15m"): 2e-3, ("wide", "60m"): 4e-3})
    table = invoke("runs", "compare", "abl", "--store", store.root)
    text = report.summary_table(data).to_dict(orient="records")
    assert [r["variant"] for r in text if r["horizon"] == "all"] == ["good", "wide"]
    assert all(r["crps"] in table.stdout for r in text)


def test_runs_compare_gives_a_95pct_t_interval_over_seeds(invoke, seeded_store):
    rows = json.loads(invoke("runs", "compare", "abl", "--store", seeded_store.root, "--json").stdout)
    (good,) = [r for r in rows if (r["variant"], r["horizon"], r["metric"]) == ("good", "15m", "crps")]
    values = [1.0e-3, 1.2e-3, 1.7e-3]                          # seeds 0, 1, 2 (the fixture's)
    mean, sd = sum(values) / 3, (sum((v - sum(values) / 3) ** 2 for v in values) / 2) ** 0.5
    half = 4.302652729911275 * sd / 3 ** 0.5                    # t(0.975, 2 df), from a table
    assert (good["n"], good["mean"], good["std"]) == (3, pytest.approx(mean), pytest.approx(sd))
    assert (good["ci_low"], good["ci_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))


def test_runs_compare_two_experiments_side_by_side(invoke, seeded_store):
    result = invoke("runs", "compare", "abl", "abl2", "--store", seeded_store.root, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["experiment"] for r in rows} == {"abl", "abl2"} and next(iter(rows[0])) == "experiment"
    one = json.loads(invoke("runs", "compare", "abl2", "--store", seeded_store.root, "--json").stdout)
    assert [{k: v for k, v in r.items() if k != "experiment"} for r in rows if r["experiment"] == "abl2"] == one
    table = invoke("runs", "compare", "abl", "abl2", "--store", seeded_store.root)
    assert table.exit_code == 0 and "abl vs abl2" in table.stdout and "experiment" in table.stdout
    missing = invoke("runs", "compare", "abl", "nope", "--store", seeded_store.root)
    assert missing.exit_code == 1 and "no experiment 'nope'" in missing.stderr


def test_runs_ls_filters_and_sorts_trials_by_metrics(invoke, seeded_store):
    root = seeded_store.root
    result = invoke("runs", "ls", "--sort", "crps_15m", "--where", "crps_15m < 0.0018 and not val/crps > 1",
                    "--store", root, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    got = [(r["experiment"], r["trial"], r["crps_15m"]) for r in rows]
    assert got == [("abl", "good-s0", pytest.approx(1.0e-3)), ("abl2", "good-s0", pytest.approx(1.1e-3)),
                   ("abl", "good-s1", pytest.approx(1.2e-3)), ("abl2", "good-s1", pytest.approx(1.32e-3)),
                   ("abl", "good-s2", pytest.approx(1.7e-3))]
    assert all(isinstance(r["crps"], float) for r in rows)
    desc = json.loads(invoke("runs", "ls", "abl", "--sort", "crps_15m", "--desc", "--store", root, "--json").stdout)
    assert [r["trial"] for r in desc][:2] == ["wide-s2", "wide-s1"] and {r["experiment"] for r in desc} == {"abl"}
    table = invoke("runs", "ls", "--where", "crps_15m >= 0.0034", "--store", root)
    assert table.exit_code == 0 and "abl/wide-s2" in table.stdout and "good-s0" not in table.stdout
    bad = invoke("runs", "ls", "--where", "crps_15m < ", "--store", root)
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1 and "expected a number" in bad.stderr
    typo = invoke("runs", "ls", "--where", "crsp_15m < 1", "--store", root)
    assert typo.exit_code == 1 and "did you mean crps_15m" in typo.stderr
    code = invoke("runs", "ls", "--where", "__import__('os').system('true') < 1", "--store", root)
    assert code.exit_code == 1 and "cannot read the filter" in code.stderr


def test_runs_rm_asks_then_removes_rows_and_folders(invoke, seeded_store):
    root = seeded_store.root
    trial_dir = seeded_store.trial_dir("abl", "wide-s1")
    (trial_dir / "bundle").mkdir(parents=True)
    (trial_dir / "bundle" / "x.bin").write_bytes(b"0" * 10)
    no = CliRunner().invoke(cli, ["runs", "rm", "abl/wide-s1", "--store", str(root)], input="n\n")
    assert no.exit_code == 1 and "Nothing removed" in no.stderr and trial_dir.exists()
    assert seeded_store.trial("abl", "wide-s1") is not None
    yes = CliRunner().invoke(cli, ["runs", "rm", "abl/wide-s1", "--store", str(root)], input="y\n")
    assert yes.exit_code == 0, yes.output
    assert not trial_dir.exists() and seeded_store.trial("abl", "wide-s1") is None
    assert seeded_store.trial_metrics("abl", "wide-s1") == {} and seeded_store.trial("abl", "wide-s0") is not None
    assert seeded_store.epochs_frame("abl").query("trial == 'wide-s1'").empty
    exp_dir = seeded_store.experiment_dir("abl")
    gone = invoke("runs", "rm", "abl", "--yes", "--store", root)
    assert gone.exit_code == 0 and "Removed experiment abl" in gone.stdout and "not touched" not in gone.stderr
    assert not exp_dir.exists() and seeded_store.experiment_names() == ["abl2"]
    assert seeded_store.trials_frame("abl").empty and seeded_store.metrics_frame("abl").empty
    again = invoke("runs", "rm", "abl", "--yes", "--store", root)
    assert again.exit_code == 1 and "no experiment 'abl'" in again.stderr


def test_runs_rm_refuses_a_read_only_store_in_one_line(seeded_store):
    import shutil
    import stat

    ro = seeded_store.root
    writable = [ro, *ro.rglob("*")]
    prefix = []
    if os.geteuid() == 0:
        # root writes anything: run the CLI as root without the capabilities that override permissions.
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a store read-only for this process")
        prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
    for p in writable:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        result = subprocess.run([*prefix, sys.executable, "-m", "nqexp.cli", "runs", "rm", "abl", "--yes",
                                 "--store", str(ro)], capture_output=True, text=True, cwd=ro.parent,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    finally:
        for p in writable:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == f"Error: the run store {ro} is read-only; nothing removed"
    assert (ro / "abl").exists() and seeded_store.trial("abl", "good-s0") is not None


def test_data_rejects_json_lists_the_rejected_rows(invoke, tmp_path):
    csv = tmp_path / "bars.csv"
    csv.write_text("2024-03-04 09:30:00,1,2,0.5,1.5,3\n2024-03-04 09:31:00,1,0.5,2,1.5,3\n")
    assert invoke("data", "import", csv, "--tz", "UTC").exit_code == 0
    result = invoke("data", "rejects", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["source"], row["row_number"], row["reason"]) == (str(csv), 2, "high < low")
    assert "2024-03-04 09:31:00" in row["raw"]


def test_doctor_json_holds_versions_modes_and_the_database_as_data(invoke):
    secret = "db-SECRETKEY1234567890abcdef"
    invoke("data", "demo", "--days", "2")
    result = invoke("doctor", "--json", env={"DATABENTO_API_KEY": secret, "WANDB_MODE": "disabled"})
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["databento_key"] is True and secret not in result.output
    assert doc["packages"]["duckdb"] and doc["torch"]["device"] in ("cpu", "cuda")
    assert doc["wandb"] == {"mode": "disabled", "mode_from_env": True}
    assert doc["database"]["exists"] and doc["database"]["tables"]["raw_bars"] > 0
    assert isinstance(doc["database"]["size_bytes"], int)


def test_runs_read_from_a_missing_store_is_one_line(invoke, tmp_path):
    result = invoke("runs", "ls", "--store", tmp_path / "nothing", "--json")
    assert result.exit_code == 1 and "no run store at" in result.stderr and result.stdout == ""


def test_piped_runs_print_one_plain_line_per_trial_and_epoch():
    """With stdout not a terminal: no progress bars, and every trial start, epoch and end is one
    grep-able line with step, val CRPS, elapsed and ETA (from the step budget)."""
    import io

    from rich.console import Console

    from nqexp.cli import render

    buf = io.StringIO()
    con = Console(file=buf, force_terminal=False, width=render.PIPE_WIDTH)
    with render.TrialProgress(con, total_epochs=6, trials=["full-s0", "no_tsa-s0"], max_steps=200) as progress:
        progress("start", "full-s0")
        progress("epoch", "full-s0", epoch=1, step=100, val_crps=1.2345e-3)
        progress("done", "full-s0", test_crps=1.15e-3, gated=False, steps=200, truncated=False)
        progress("done", "no_tsa-s0", test_crps=1.16e-3, gated=True, steps=200, truncated=True)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "trial full-s0: started"
    assert lines[1].startswith("trial full-s0: epoch 1, step 100, val CRPS 1.2345e-03, elapsed ")
    assert ", ETA " in lines[1]
    assert lines[2] == "trial full-s0: finished, test CRPS 1.150e-03, 200 steps"
    assert lines[3] == "trial no_tsa-s0: finished, test CRPS 1.160e-03, 200 steps [truncated] [gated]"
    assert len(lines) == 4 and not any("━" in line for line in lines)      # no bars in a pipe


def test_what_the_machine_causes_is_one_line_and_anything_else_keeps_its_traceback():
    import errno

    import duckdb

    from nqexp.cli import environment_error

    full = OSError(errno.ENOSPC, "No space left on device", "/data/runs/exp/predictions.parquet")
    assert environment_error(full).startswith(
        "the disk is full writing /data/runs/exp/predictions.parquet (No space left on device); free some space")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("wrapped by a library") from exc
    except RuntimeError as wrapped:
        assert environment_error(wrapped).startswith("the disk is full")
    denied = PermissionError(errno.EACCES, "Permission denied", "/shared/runs/exp/trials/t/predict")
    assert environment_error(denied).startswith("/shared/runs/exp/trials/t/predict: Permission denied: this user")
    assert environment_error(OSError(errno.EROFS, "Read-only file system", "/mnt/x")).startswith("/mnt/x: Read-only")
    assert environment_error(duckdb.IOException('IO Error: Could not write all bytes to file "x.wal"')) is not None
    for bug in (ValueError("x"), KeyError("k"), FileNotFoundError(errno.ENOENT, "No such file", "/x"),
                duckdb.CatalogException("Table with name nope does not exist")):
        assert environment_error(bug) is None


def test_a_sweep_without_a_search_space_is_refused_at_dry_run_too(tmp_path):
    """`nqexp sweep quickstart --dry-run` printed 'sweep of 20 trials' with an empty table and exited 0,
    while the real sweep refused: both now refuse with the same line."""
    result = subprocess.run([sys.executable, "-m", "nqexp.cli", "sweep", "quickstart", "--dry-run"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().endswith("quickstart: search: is empty; `nqexp sweep` needs a search space")
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_demo_reports_the_database_size_and_counts_in_words(tmp_path):
    """`data demo --days 30` said '(0.0 MB)' for a 5 MB file (the writes were still in the WAL) and
    '1 contracts'."""
    import re

    result = subprocess.run([sys.executable, "-m", "nqexp.cli", "--db", str(tmp_path / "d.duckdb"), "data", "demo",
                             "--days", "30"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    size = float(re.search(r"\(([\d.]+) MB\)", result.stdout).group(1))
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("d.duckdb*")) / 1e6
    assert size > 1.0 and abs(size - on_disk) < 0.15
    assert "1 contract," in result.stdout and "0 rolls" in result.stdout


def test_sync_accepts_a_netrc_login_like_every_other_w_and_b_path(tmp_path):
    """`wandb login` writes ~/.netrc; `nqexp sync` took only WANDB_API_KEY. Now a netrc login is enough."""
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef0123456789abcdef01234567\n")
    netrc.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "DATABENTO_API_KEY")}
    result = subprocess.run([sys.executable, "-m", "nqexp.cli", "sync", "--store", str(tmp_path / "runs")],
                            capture_output=True, text=True, env={**env, "HOME": str(home)}, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "No offline W&B runs" in result.stdout


SERIES_COMMANDS = [("data", "bars"), ("data", "rolls"), ("features", "build"), ("features", "check")]


def test_every_command_reading_one_series_defaults_to_the_only_series_by_one_rule(invoke, tmp_path):
    """One default-symbol rule (options.pick_symbol): the database's only series; none or several is a
    one-line error (several are listed), never a silent NQ.demo."""
    commands = dict(all_commands(cli))
    options = [next(p for p in commands[path].params if p.name == "symbol") for path in SERIES_COMMANDS]
    assert {(o.default, o.help) for o in options} == {(None, options[0].help)}
    assert options[0].help.endswith("Default: the only series in the database.")
    for path in SERIES_COMMANDS:
        empty = invoke(*path)
        assert empty.exit_code == 1 and "no bars in the database" in empty.stderr, (path, empty.output)
    (tmp_path / "nq.csv").write_text("ts,open,high,low,close,volume\n2024-03-04T14:30:00Z,1,2,0.5,1.5,3\n")
    assert invoke("data", "import", "nq.csv").exit_code == 0
    one = invoke("data", "rolls", "--json")
    assert one.exit_code == 0 and json.loads(one.stdout)["symbol"] == "NQ", one.output
    assert invoke("data", "demo", "--days", "5").exit_code == 0
    for path in SERIES_COMMANDS:
        several = invoke(*path)
        assert several.exit_code == 1, (path, several.output)
        assert "2 series (NQ, NQ.demo); say which with --symbol" in several.stderr, (path, several.stderr)
        assert several.stderr.strip().count("\n") == 0, several.stderr
    built = invoke("features", "build", "--symbol", "NQ.demo")
    assert built.exit_code == 0 and "NQ.demo" in built.stdout, built.output


def _readme_data_example() -> list[list[str]]:
    """The README's first `## Data` code block, as argument lists (the leading `nqexp` dropped)."""
    import shlex

    text = (ROOT / "README.md").read_text().split("\n## Data\n", 1)[1]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    commands = [c for c in commands if c]
    assert all(c[0] == "nqexp" for c in commands), commands
    return [c[1:] for c in commands]


def test_the_readme_import_example_runs_on_a_file_the_user_has_and_imports_the_demo_unchanged(invoke, tmp_path):
    """README's import example: export the demo to CSV, import it into a fresh database; every bar (and its
    contract, so the rolls) arrives as it left."""
    import duckdb

    commands = _readme_data_example()
    assert [c[:2] for c in commands][:2] == [["data", "demo"], ["data", "export"]], commands
    assert any("import" in c for c in commands), commands
    for args in commands:
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
    cols = "ts, open, high, low, close, volume, instrument_id, contract"
    with duckdb.connect(str(tmp_path / "t.duckdb"), read_only=True) as con:
        demo = con.execute(f"select {cols} from raw_bars where symbol = 'NQ.demo' order by ts").fetchall()
    with duckdb.connect(str(tmp_path / "mine.duckdb"), read_only=True) as con:
        mine = con.execute(f"select {cols} from raw_bars where symbol = 'NQ' order by ts").fetchall()
        assert con.execute("select count(*) from rejected_bars").fetchall() == [(0,)]
    assert len(demo) > 20_000 and mine == demo
    # Parquet and gzipped CSV read back the same; an existing file is kept unless --force.
    for name in ("demo.parquet", "demo.csv.gz"):
        assert invoke("data", "export", name).exit_code == 0
        again = invoke("--db", f"{name}.duckdb", "data", "import", name, "--symbol", "NQ")
        assert again.exit_code == 0 and "0 rejected" in again.stdout, again.output
    kept = invoke("data", "export", "demo.csv")
    assert kept.exit_code == 1 and "--force" in kept.stderr
    assert invoke("data", "export", "demo.csv", "--force").exit_code == 0
    for bad, reason in (("demo.txt", ".csv, .csv.gz or .parquet"), ("no/such/folder/x.csv", "cannot write the export")):
        refused = invoke("data", "export", bad)
        assert refused.exit_code == 1 and reason in refused.stderr and refused.stderr.count("\n") == 1, refused.output
