"""Shared fixtures and markers.

Markers (pyproject registers them; --strict-markers is on):
  slow      opt-in with --run-slow (long benchmarks-as-tests, big data)
  gpu       needs CUDA; skips itself without it
  realdata  reads ../shared/data (real vendor fixtures); skips when that folder is absent,
            because a user's clone doesn't have it
  cluster   starts a two-node Ray cluster on this machine (ray start, dashboard on 8265);
            opt-in with --run-cluster, minutes long, needs ray[default]
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.lab import LAB_FILES, make_quickstart_lab

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NQEXP_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Tests never talk to W&B servers or create Ray auth tokens noisily.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")
    parser.addoption("--run-cluster", action="store_true", default=False, help="run tests marked cluster")


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` (pyproject addopts), except that the modules sharing the quickstart lab
    (tests/lab.py) are one unit: one worker, so one smoke run."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LabAwareLoadFile(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "quickstart_lab" if Path(scope).name in LAB_FILES else scope

    return LabAwareLoadFile(config, log)


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: opt in with --run-slow")
    skip_cluster = pytest.mark.skip(reason="cluster: opt in with --run-cluster")
    skip_real = pytest.mark.skip(reason=f"realdata: {SHARED_DATA} is absent")
    has_cuda = None
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "cluster" in item.keywords and not config.getoption("--run-cluster"):
            item.add_marker(skip_cluster)
        if "realdata" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_real)
        if "gpu" in item.keywords:
            if has_cuda is None:
                try:
                    import torch

                    has_cuda = torch.cuda.is_available()
                except ImportError:
                    has_cuda = False
            if not has_cuda:
                item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device"))


@pytest.fixture(scope="session")
def quickstart_lab(tmp_path_factory):
    """(cwd, CompletedProcess, seconds) of `nqexp run quickstart --smoke` in a user's working directory,
    run once per session (tests/lab.py)."""
    return make_quickstart_lab(tmp_path_factory.mktemp("quickstart_lab"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real vendor fixtures). Use with @pytest.mark.realdata."""
    return SHARED_DATA


@pytest.fixture
def con():
    """A fresh in-memory DuckDB with every migration applied (about 10 ms)."""
    from nqexp.data import db

    connection = db.connect(":memory:")
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def demo_year():
    """About 13 months of demo bars (400 days, seed 3: four rolls, a Thanksgiving, both DST
    changes), generated once per session (~4 s) for every module that needs a year.

    Shared: treat it as read-only (copy a frame before changing it).
    """
    from nqexp.data import demo

    return demo.generate(days=400, seed=3)


@pytest.fixture(scope="session")
def demo_small():
    """30 days of demo bars (seed 0), generated once per session."""
    from nqexp.data import demo

    return demo.generate(days=30, seed=0)


@pytest.fixture
def demo_con(con, demo_small):
    """`con` seeded with the 30-day demo series NQ.demo and its ground truth."""
    from nqexp.data import ingest

    ingest.write_demo(con, demo_small)
    return con


def two_baselines(y_train, scale_train, scale_eval, taus) -> dict:
    """Climatology and vol-scaled quantiles (N, H, Q) for an evaluated split, fitted on train only."""
    from nqexp.evaluation.baselines import ClimatologyBaseline, VolScaledBaseline

    return {"climatology": ClimatologyBaseline(tuple(taus)).fit(y_train).quantiles(scale_eval),
            "volscaled": VolScaledBaseline(tuple(taus)).fit(y_train, scale_train).quantiles(scale_eval)}
