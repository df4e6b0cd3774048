"""The quickstart smoke lab shared by tests/test_tune.py and tests/test_api.py, and the CLI helper both use.

`nqexp run experiments/quickstart.yaml --smoke` takes most of a minute on 2 cores, and both modules read
the same run. conftest.py's `pytest_xdist_make_scheduler` keeps both modules on one xdist worker (one
loadfile unit), so the session fixture `quickstart_lab` runs it once per suite instead of once per module. The lab is a user's working
directory: the default database ./nqexp_data/nqexp.duckdb, the run store ./runs. Tests may rerun specs
in it (reruns are idempotent) but must not delete from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRET = "db-TESTSECRET0123456789abcdefXYZ"  # a Databento key every run sees; it must never be written anywhere
LAB_FILES = ("test_tune.py", "test_api.py")  # the modules that share the lab: one xdist loadfile unit


def default_db(cwd) -> Path:
    """The database a user gets in cwd without NQEXP_DB (nqexp/cli: ./nqexp_data/nqexp.duckdb)."""
    return Path(cwd) / "nqexp_data" / "nqexp.duckdb"


def nqexp(*args, cwd, env=None, timeout=600, **kw):
    """`python -m nqexp.cli ARGS` in cwd: W&B offline with no key, the Databento key set to SECRET."""
    full_env = {**os.environ, "NQEXP_DB": str(default_db(cwd)), "WANDB_MODE": "offline",
                "WANDB_SILENT": "true", "DATABENTO_API_KEY": SECRET, **(env or {})}
    full_env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "nqexp.cli", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def make_quickstart_lab(cwd: Path):
    """(cwd, the run's CompletedProcess, its seconds). A 10-day demo is made first: the run must replace
    it, not silently use it (it misses the split dates)."""
    made = nqexp("data", "demo", "--days", "10", cwd=cwd)
    assert made.returncode == 0, made.stderr
    t0 = time.perf_counter()
    result = nqexp("run", str(ROOT / "experiments" / "quickstart.yaml"), "--smoke", cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd, result, time.perf_counter() - t0
