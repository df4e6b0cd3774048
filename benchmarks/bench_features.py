"""Benchmark: build features + targets for 15 years of demo data, against a vectorized pandas reference.

    python benchmarks/bench_features.py                  # 15 years (5475 days), 3 repeats, both sets
    python benchmarks/bench_features.py --days 365 --repeats 5 --sets migt24

The first run generates the demo series and its bars into --db (default
/tmp/nqexp_bench_features.duckdb) and reuses them afterwards. Each repeat runs in a fresh
subprocess so its peak RSS is that of one build:
  * sql:    nqexp.features.build(con, set, 'NQ.demo', force=True): read the bars, run every SQL
            file, materialize the filters, compute targets + flags, write the versioned table;
  * pandas: tests/feature_reference.pandas_pipeline on the same bars, already in a DataFrame
            (features + targets + flags, nothing written); the bars fetch is timed separately.
Reported: medians of the repeats (wall and process CPU time; the SQL build also split into
compute and write), ratios sql / pandas, and each worker's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SYMBOL = "NQ.demo"


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6   # Linux: KiB -> GB (approx)


def prepare(db_path: str, days: int, stand_in: bool) -> None:
    from nqexp import db, demo, ingest
    from tests import feature_reference as ref

    con = db.connect(db_path)
    con.execute("set enable_progress_bar = false")
    have = con.execute("select count(*) from bars_1m where symbol = ?", [SYMBOL]).fetchall()[0][0]
    marker = con.execute("select count(*) from raw_bars where symbol = ?", [SYMBOL]).fetchall()[0][0]
    if have and marker:
        print(f"reusing {db_path}: {have:,} 1m bars", flush=True)
        con.close()
        return
    t0 = time.perf_counter()
    data = demo.generate(days=days, seed=0)
    ingest.write_demo(con, data)
    del data
    ref.build_bars(con, SYMBOL, stand_in=stand_in)
    n1 = con.execute("select count(*) from bars_1m where symbol = ?", [SYMBOL]).fetchall()[0][0]
    n5 = con.execute("select count(*) from bars_5m where symbol = ?", [SYMBOL]).fetchall()[0][0]
    print(f"prepared {db_path}: {n1:,} 1m bars, {n5:,} 5m bars in {time.perf_counter() - t0:.1f}s", flush=True)
    con.close()


def worker(db_path: str, set_name: str, kind: str, repeats: int) -> dict:
    import numpy as np

    from nqexp import db, features

    import pyarrow.compute  # noqa: F401  (import costs are paid before the clock starts)
    import scipy.signal  # noqa: F401

    con = db.connect(db_path)
    con.execute("set enable_progress_bar = false")
    fs = features.feature_set(set_name)
    features.recursive_filter(np.ones(3), 0.5)
    times, cpu, extra = [], [], {}
    if kind == "sql":
        compute = []
        for _ in range(repeats):
            c0 = time.process_time()
            rep = features.build(con, set_name, SYMBOL, force=True)
            cpu.append(time.process_time() - c0)
            times.append(rep.seconds)
            compute.append(rep.timings["total"])
            extra = {"rows": rep.rows, "timings": {k: round(v, 3) for k, v in rep.timings.items()},
                     "compute_median": statistics.median(compute)}
    else:
        from tests import feature_reference as ref

        t0 = time.perf_counter()
        df = ref.load_bars(con, fs.bars_table, SYMBOL)
        extra = {"rows": len(df), "fetch_seconds": round(time.perf_counter() - t0, 3)}
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            X, y, fl = ref.pandas_pipeline(df, set_name, fs.horizons)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            assert X.shape == (len(df), len(fs.columns)) and np.isfinite(X[fs.warmup_bars:]).mean() > 0.99
    con.close()
    return {"set": set_name, "kind": kind, "times": times, "median": statistics.median(times),
            "cpu_median": statistics.median(cpu),
            "peak_rss_gb": _peak_rss_gb(), **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="/tmp/nqexp_bench_features.duckdb")
    ap.add_argument("--days", type=int, default=5475)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sets", nargs="+", default=["migt24", "grok24"])
    ap.add_argument("--stand-in-bars", action="store_true",
                    help="build bars with tests/feature_reference.build_test_bars instead of nqexp.bars")
    ap.add_argument("--worker", nargs=2, metavar=("SET", "KIND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.db, args.worker[0], args.worker[1], args.repeats)))
        return
    prepare(args.db, args.days, args.stand_in_bars)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    results = {}
    for set_name in args.sets:
        for kind in ("sql", "pandas"):
            # One fresh process per repeat: each peak RSS is that of a single build.
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, __file__, "--db", args.db, "--repeats", "1",
                                      "--worker", set_name, kind], capture_output=True, text=True, env=env, check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            res = dict(runs[-1])
            res["times"] = [r["times"][0] for r in runs]
            res["median"] = statistics.median(res["times"])
            res["cpu_median"] = statistics.median(r["cpu_median"] for r in runs)
            res["peak_rss_gb"] = max(r["peak_rss_gb"] for r in runs)
            if kind == "sql":
                res["compute_median"] = statistics.median(r["compute_median"] for r in runs)
                res["write_median"] = statistics.median(r["timings"]["write"] for r in runs)
            results[(set_name, kind)] = res
            print(f"{set_name:7s} {kind:6s} rows={res['rows']:>9,} median={res['median']:.3f}s "
                  f"cpu_median={res['cpu_median']:.3f}s "
                  f"runs={[round(t, 3) for t in res['times']]} peak_rss={res['peak_rss_gb']:.2f}GB "
                  + (f"compute_median={res['compute_median']:.3f}s write_median={res['write_median']:.3f}s "
                     f"last={res['timings']}" if kind == "sql" else f"fetch={res['fetch_seconds']}s"),
                  flush=True)
        sql, pd_ = results[(set_name, "sql")], results[(set_name, "pandas")]
        print(f"{set_name:7s} ratio sql/pandas: build (features+targets+write) {sql['median'] / pd_['median']:.2f}x, "
              f"compute only {sql['compute_median'] / pd_['median']:.2f}x, "
              f"cpu {sql['cpu_median'] / pd_['cpu_median']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
