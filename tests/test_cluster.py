"""The cluster path, for real: a two-node Ray cluster on this machine (opt in: --run-cluster).

`ray start --head` with the dashboard (Jobs API) on 127.0.0.1:8265 and one CPU, then a second node
(`ray start --address`, one CPU, its own temp dir as a second machine would have, and a custom
resource). Against it:

1. `nqexp run quickstart --smoke --address http://127.0.0.1:8265`: submitted as a Ray Job, the driver
   runs on the head, trials on both nodes, results in the run store, offline W&B runs;
2. the same with `--address auto` (a driver on this machine joining the cluster);
3. that driver SIGKILLed mid-run, then the same command submitted as a Ray Job finishes only the
   unfinished trials, with no duplicate rows or W&B steps.

Teardown ends every process the test started (they carry a marker in their environment) by pid;
not `ray stop`, which ends every Ray process on the machine, other users' sessions included.
Needs `ray[default]` (dashboard and Jobs API), as in the Docker image.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import pytest

from tests.test_crash import Watched, marked_pids
from tests.wandb_log import history_steps

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")
DASHBOARD = "http://127.0.0.1:8265"
TIMINGS: dict[str, float] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("aiohttp_cors", reason="the dashboard needs ray[default]")
    if _port_taken(8265):
        pytest.skip("port 8265 is in use (another dashboard?)")
    # Short: Ray's socket paths live under the temp dir and must fit in 107 characters.
    root = Path(tempfile.mkdtemp(prefix="nqc", dir="/tmp"))
    mark = f"NQEXP_CLUSTER_TEST={uuid.uuid4().hex[:12]}"
    key, value = mark.split("=")
    port = _free_port()
    env = {**os.environ, key: value, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "NQEXP_DB": str(root / "nq.duckdb"),
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    for name in ("WANDB_API_KEY", "RAY_ADDRESS"):
        env.pop(name, None)
    ray = str(Path(sys.executable).parent / "ray")
    try:
        t0 = time.monotonic()
        head = subprocess.run([ray, "start", "--head", "--dashboard-host", "127.0.0.1", "--port", str(port),
                               "--dashboard-port", "8265", "--num-cpus", "1", "--temp-dir", str(root / "ray0"),
                               "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        TIMINGS["ray start --head"] = time.monotonic() - t0
        t0 = time.monotonic()
        worker = subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                                 "--resources", json.dumps({"node2": 1}), "--temp-dir", str(root / "ray1")],
                                env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
        deadline = time.monotonic() + 60
        while True:
            status = subprocess.run([ray, "status", "--address", f"127.0.0.1:{port}"], env=env,
                                    capture_output=True, text=True, timeout=60).stdout
            if "/2.0 CPU" in status:                  # both nodes' CPUs in the total
                break
            assert time.monotonic() < deadline, status
            time.sleep(1)
        TIMINGS["second node up"] = time.monotonic() - t0
        yield {"root": root, "env": env, "mark": mark, "port": port}
    finally:
        pids = marked_pids(mark)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + 10
            while (pids := marked_pids(mark)) and time.monotonic() < deadline:
                time.sleep(0.5)
        shutil.rmtree(root, ignore_errors=True)
        print("cluster timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in TIMINGS.items()))


def run(cluster, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "nqexp.cli", *args], cwd=cluster["root"], env=cluster["env"],
                          capture_output=True, text=True, timeout=timeout)


def store_checks(store: Path, experiment: str, n_trials: int = 5) -> None:
    """Every trial finished once, epochs/metrics once each, one W&B id per trial and no step twice."""
    con = duckdb.connect(str(store / "store.duckdb"), read_only=True)
    try:
        rows = con.execute("select trial, status, epochs from trials where experiment = ?", [experiment]).fetchall()
        assert len(rows) == n_trials and {r[1] for r in rows} == {"finished"}, rows
        epochs = con.execute("select trial, epoch, key from epochs where experiment = ?", [experiment]).fetchall()
        assert len(epochs) == len(set(epochs))
        for trial, _, n in rows:
            assert {e[1] for e in epochs if e[0] == trial} == set(range(1, n + 1)), trial
        metrics = con.execute("select trial, key from metrics where experiment = ?", [experiment]).fetchall()
        assert len(metrics) == len(set(metrics)) and {m[0] for m in metrics} == {r[0] for r in rows}
    finally:
        con.close()
    runs: dict[str, list[Path]] = {}
    for folder in sorted((store / experiment / "wandb").glob("offline-run-*")):
        runs.setdefault(folder.name.rsplit("-", 1)[1], []).append(folder)
    assert len(runs) == n_trials, sorted(runs)
    for run_id, folders in runs.items():
        steps = [s for f in folders for s in history_steps(next(f.glob("run-*.wandb")))]
        assert steps and steps == sorted(set(steps)), (run_id, steps)


def test_a_run_submitted_to_the_dashboard_runs_as_a_ray_job_on_both_nodes(cluster):
    store = cluster["root"] / "runs"
    t0 = time.monotonic()
    result = run(cluster, "run", QUICKSTART, "--smoke", "--address", DASHBOARD, "--set", f"track.store={store}",
                 "--set", "name=qs-job")
    TIMINGS["Ray Job run"] = time.monotonic() - t0
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "Submitted Ray Job" in out and "SUCCEEDED" in out and "Traceback" not in out
    assert "5 finished, 0 failed, 0 unfinished" in " ".join(out.split())
    store_checks(store, "qs-job")
    assert (store / "qs-job" / "report.md").exists()
    # The second node ran trials: its own temp dir has worker logs.
    assert list((cluster["root"] / "ray1").glob("session_*/logs/worker-*.out"))


def test_a_relative_store_is_refused_before_a_job_is_submitted(cluster):
    result = run(cluster, "run", QUICKSTART, "--smoke", "--address", DASHBOARD)
    assert result.returncode == 2 and "track.store is 'runs', a relative path" in result.stderr
    assert "Submitted" not in result.stdout


def test_address_auto_joins_the_cluster(cluster):
    store = cluster["root"] / "runs"
    t0 = time.monotonic()
    result = run(cluster, "run", QUICKSTART, "--smoke", "--address", "auto", "--set", f"track.store={store}",
                 "--set", "name=qs-auto")
    TIMINGS["--address auto run"] = time.monotonic() - t0
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "Traceback" not in out
    store_checks(store, "qs-auto")


def test_a_killed_driver_on_the_cluster_resumes_as_a_ray_job(cluster):
    store = cluster["root"] / "runs"
    args = ["--smoke", "--set", f"track.store={store}", "--set", "name=qs-kill", "--set", "train.max_epochs=3"]
    trials = store / "qs-kill" / "trials"

    def one_done_one_training(w):
        if ": finished" not in w.stdout:
            return False
        scored = {p.parent.name for p in trials.glob("*/predictions.parquet")}
        return bool({p.parent.parent.name for p in trials.glob("*/checkpoints/latest.pt")} - scored)

    driver = Watched(["run", QUICKSTART, "--address", "auto", *args], db=cluster["root"] / "nq.duckdb",
                     cwd=cluster["root"], new_session=True, env=cluster["env"])
    t0 = time.monotonic()
    driver.kill_when(one_done_one_training, "one trial finished, another training", timeout=900, group=True)
    assert driver.wait(timeout=60) == -signal.SIGKILL
    TIMINGS["driver killed after"] = time.monotonic() - t0
    t0 = time.monotonic()
    result = run(cluster, "run", QUICKSTART, "--address", DASHBOARD, *args)
    TIMINGS["resumed as a Ray Job"] = time.monotonic() - t0
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "Resuming 'qs-kill'" in out and "SUCCEEDED" in out
    store_checks(store, "qs-kill")
    folders = list((store / "qs-kill" / "wandb").glob("offline-run-*"))
    assert len(folders) > 5, "no trial was resumed under its W&B id"
