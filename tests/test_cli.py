"""cli.py: every command has help with an example, startup stays light, user errors are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from nqexp.cli import cli


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


def run(tmp_path, *args, env=None):
    full_env = {**os.environ, "NQEXP_DB": str(tmp_path / "t.duckdb"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "nqexp.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=tmp_path, timeout=120)


def test_demo_then_info_reports_the_series(tmp_path):
    made = run(tmp_path, "data", "demo", "--days", "10", "--seed", "1")
    assert made.returncode == 0, made.stderr
    assert "demo bars" in made.stdout and "NQ.demo" in made.stdout
    info = run(tmp_path, "data", "info")
    assert info.returncode == 0, info.stderr
    assert "NQ.demo" in info.stdout and "Rejected rows: 0" in info.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("data", "import", "missing.csv", "--tz", "UTC"), "no such file"),
        (("data", "import", "naive.csv"), "--tz"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    (tmp_path / "naive.csv").write_text("2024-03-04 09:30:00,1,2,0.5,1.5,3\n")
    result = run(tmp_path, *args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and message in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_import_reports_rejects_and_idempotence(tmp_path):
    csv = tmp_path / "bars.csv"
    csv.write_text("2024-03-04 09:30:00,1,2,0.5,1.5,3\n2024-03-04 09:31:00,1,0.5,2,1.5,3\n")
    first = run(tmp_path, "data", "import", str(csv), "--tz", "UTC")
    assert first.returncode == 0, first.stderr
    assert "1 new, 0 unchanged" in first.stdout and "high < low" in first.stdout
    second = run(tmp_path, "data", "import", str(csv), "--tz", "UTC")
    assert "0 new, 1 unchanged" in second.stdout


def test_doctor_reports_key_presence_but_never_the_key(tmp_path):
    secret = "db-SECRETKEY1234567890abcdef"
    result = run(tmp_path, "doctor", env={"DATABENTO_API_KEY": secret, "WANDB_API_KEY": "wandbsecret0123456789"})
    assert result.returncode == 0, result.stderr
    assert "present" in result.stdout
    assert secret not in result.stdout + result.stderr
    assert "wandbsecret0123456789" not in result.stdout + result.stderr


@pytest.mark.parametrize("args", [("sync",), ("data", "download", "--start", "2024-01-01", "--end", "2024-02-01")])
def test_commands_needing_a_key_fail_clearly_without_one(tmp_path, args):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "DATABENTO_API_KEY")}
    result = subprocess.run([sys.executable, "-m", "nqexp.cli", *args], capture_output=True, text=True,
                            env={**env, "NQEXP_DB": str(tmp_path / "t.duckdb")}, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "API" in result.stderr.upper()
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_malformed_yaml_spec_is_one_line_with_exit_code_2(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: x\ntrain:\n  lr: [1,\n")
    result = run(tmp_path, "run", str(spec), "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{spec}:" in result.stderr and "invalid YAML" in result.stderr


def test_an_unreachable_cluster_address_is_one_clear_line(tmp_path):
    spec = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    result = run(tmp_path, "run", str(spec), "--address", "http://127.0.0.1:9")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "cannot reach a Ray job server at http://127.0.0.1:9" in result.stderr
