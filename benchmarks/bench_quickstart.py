"""Benchmark the README's main command: wall time, peak memory of the whole process tree, and
the orchestration overhead of running the trials on Ray Tune.

    python benchmarks/bench_quickstart.py [--spec experiments/quickstart.yaml] [--smoke]

It runs `nqexp run SPEC` in a fresh temporary folder (so the demo data is generated too) and
samples every process of the tree every 0.2 s from /proc (RSS and PSS summed over the driver,
Ray's daemons and the trial workers; `/usr/bin/time -v` would only see the largest process).

Orchestration overhead: with `c` trials running at once, ideal wall time is sum(train)/c, where
train is each trial's own training time from the run store; overhead = wall - sum(train)/c,
reported as a share of wall time. It holds Ray start-up, data preparation, worker start-up,
scoring, plots, W&B and the report.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tree(pid: int) -> list[int]:
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def memory(pids) -> tuple[float, float]:
    rss = pss = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, pss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default=str(ROOT / "experiments" / "quickstart.yaml"))
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "nqexp.cli", "run", args.spec] + (["--smoke"] if args.smoke else [])
        env = {**os.environ, "NQEXP_DB": str(Path(tmp) / "nq.duckdb"), "WANDB_SILENT": "true"}
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak_rss = peak_pss = 0.0
        while proc.poll() is None:
            rss, pss = memory(tree(proc.pid))
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        output = proc.stdout.read()
        print(output[-4000:])
        import duckdb

        con = duckdb.connect(str(Path(tmp) / "runs" / "store.duckdb"), read_only=True)
        rows = con.execute("select trial, train_seconds, epochs from trials order by trial").fetchall()
        gates = con.execute("select trial, reason from gate_flags order by trial").fetchall()
        con.close()
        spec_text = Path(args.spec).read_text()
        cpus = 1.0
        for line in spec_text.splitlines():
            if line.strip().startswith("cpus_per_trial:"):
                cpus = float(line.split(":")[1])
        concurrency = max(1, int((os.cpu_count() or 2) // cpus))
        total_train = sum(r[1] or 0 for r in rows)
        ideal = total_train / concurrency
        print(f"exit code {proc.returncode}; {len(rows)} trials; wall {wall:.0f}s")
        print(f"peak memory of the process tree: RSS {peak_rss:.0f} MiB, PSS {peak_pss:.0f} MiB")
        print(f"sum of trial training times {total_train:.0f}s over {concurrency} concurrent trials "
              f"= {ideal:.0f}s ideal; orchestration overhead {wall - ideal:.0f}s = {100 * (wall - ideal) / wall:.0f}% of wall")
        for trial, secs, epochs in rows:
            print(f"  {trial:<22} train {secs or 0:6.1f}s  epochs {epochs}")
        print(f"gate flags: {len(gates)}")
        for trial, reason in gates:
            print(f"  {trial:<22} {reason}")


if __name__ == "__main__":
    main()
