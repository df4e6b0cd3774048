"""Benchmark the README's main command: wall time, peak memory of the whole process tree, and
the orchestration overhead of running the trials on Ray Tune.

    python benchmarks/bench_quickstart.py [--spec experiments/quickstart.yaml] [--smoke | --quick] [--runs 3] [--json OUT]

--quick is --smoke (about a minute on an idle 2-core machine; a check of this script, whose
overhead share means little because a smoke trial trains for well under a second); the full size
is the README quickstart. --runs N (default 3) repeats the whole run; the figures are medians.
--json OUT writes one row: overhead as % of wall, goal <= 15%.

It runs `nqexp run SPEC` in a fresh temporary folder (so the demo data is generated too) and
samples every process of the tree every 0.2 s from /proc (RSS and PSS summed over the driver,
Ray's daemons and the trial workers; `/usr/bin/time -v` would only see the largest process).

Orchestration overhead: with `c` trials running at once, ideal wall time is sum(train)/c, where
train is each trial's own training time from the run store; overhead = wall - sum(train)/c,
reported as a share of wall time. It holds Ray start-up, data preparation, worker start-up,
scoring, plots, W&B and the report. Each output line is stamped with the seconds since start, so
the printed timeline shows where the driver's time goes (data, first trial, last trial, report).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
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


GOAL_PCT = 15.0  # orchestration overhead, % of wall (issue 14)


def one_run(spec: str, smoke: bool) -> dict:
    """One `nqexp run SPEC` in a fresh temporary folder: its timeline, wall time, peak memory and overhead."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "nqexp.cli", "run", spec] + (["--smoke"] if smoke else [])
        env = {**os.environ, "NQEXP_DB": str(Path(tmp) / "nq.duckdb"), "WANDB_SILENT": "true"}
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []

        def read():
            for line in proc.stdout:
                lines.append(f"[{time.perf_counter() - t0:6.1f}s] {line.rstrip()}")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        peak_rss = peak_pss = 0.0
        while proc.poll() is None:
            rss, pss = memory(tree(proc.pid))
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        reader.join(timeout=10)
        # The timeline without the per-flag detail lines (one per gate flag).
        print("\n".join(ln for ln in lines if "] " in ln and not ln.split("] ", 1)[1].startswith("  "))[-6000:])
        import duckdb

        con = duckdb.connect(str(Path(tmp) / "runs" / "store.duckdb"), read_only=True)
        rows = con.execute("select trial, train_seconds, epochs from trials order by trial").fetchall()
        gates = con.execute("select trial, reason from gate_flags order by trial").fetchall()
        con.close()
    cpus = 1.0
    for line in Path(spec).read_text().splitlines():
        if line.strip().startswith("cpus_per_trial:"):
            cpus = float(line.split(":")[1])
    concurrency = max(1, int((os.cpu_count() or 2) // cpus))
    total_train = sum(r[1] or 0 for r in rows)
    ideal = total_train / concurrency
    pct = 100 * (wall - ideal) / wall
    print(f"exit code {proc.returncode}; {len(rows)} trials; wall {wall:.0f}s")
    print(f"peak memory of the process tree: RSS {peak_rss:.0f} MiB, PSS {peak_pss:.0f} MiB")
    print(f"sum of trial training times {total_train:.0f}s over {concurrency} concurrent trials "
          f"= {ideal:.0f}s ideal; orchestration overhead {wall - ideal:.0f}s = {pct:.0f}% of wall")
    for trial, secs, epochs in rows:
        print(f"  {trial:<22} train {secs or 0:6.1f}s  epochs {epochs}")
    print(f"gate flags: {len(gates)} (in the run store; the report lists them)", flush=True)
    return {"wall": wall, "ideal": ideal, "pct": pct, "concurrency": concurrency, "trials": len(rows),
            "returncode": proc.returncode}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default=str(ROOT / "experiments" / "quickstart.yaml"))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--quick", action="store_true", help="the same as --smoke")
    ap.add_argument("--runs", type=int, default=3, help="runs; the figures are their medians (default 3)")
    ap.add_argument("--json", metavar="OUT", help="write the result row (figure, value, reference, goal, met) here")
    args = ap.parse_args(argv)
    smoke = args.smoke or args.quick
    runs = []
    for i in range(args.runs):
        print(f"--- run {i + 1} of {args.runs}", flush=True)
        runs.append(one_run(args.spec, smoke))
    med = lambda key: statistics.median(r[key] for r in runs)
    pct, wall, ideal = med("pct"), med("wall"), med("ideal")
    ok = all(r["returncode"] == 0 for r in runs)
    print(f"median of {len(runs)} runs: wall {wall:.0f}s, sum(train)/concurrency {ideal:.0f}s, overhead {pct:.1f}% "
          f"(runs {[round(r['pct'], 1) for r in runs]})")
    if args.json:
        name = Path(args.spec).stem + (" --smoke" if smoke else "")
        row = {"figure": f"{name} orchestration overhead (wall - sum(train)/concurrency)",
               "value": round(pct, 1), "unit": "% of wall", "runs": len(runs),
               "reference": f"wall {wall:.0f}s, sum(train)/{runs[0]['concurrency']} = {ideal:.0f}s "
                            f"({runs[0]['trials']} trials)",
               "ratio": None, "goal": f"<= {GOAL_PCT:g}% of wall", "met": bool(pct <= GOAL_PCT and ok)}
        Path(args.json).write_text(json.dumps([row], indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
