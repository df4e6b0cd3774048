"""Benchmark: build features + targets for 15 years of demo data, against a vectorized pandas reference.

    python benchmarks/bench_features.py                  # 15 years (5475 days), 3 repeats, both sets
    python benchmarks/bench_features.py --days 365 --repeats 5 --sets migt24
    python benchmarks/bench_features.py --quick --json OUT.json   # smoke size (90 days), for run_all.py

The first run generates the demo series and its bars into --db (default
/tmp/nqexp_bench_features.duckdb) and reuses them afterwards. Each repeat runs in a fresh
subprocess so its peak RSS is that of one build:
  * sql:    nqexp.features.build(con, set, 'NQ.demo', force=True): read the bars, run every SQL
            file, materialize the filters, compute targets + flags, write the versioned table;
  * pandas: tests/feature_reference.pandas_pipeline on the same bars, already in a DataFrame
            (features + targets + flags, nothing written); the bars fetch is timed separately.
  * first:  on a copy of the database holding only 5m bars (what `nqexp data bars --freq 5m`
            leaves), the `nqexp features build` path: ensure_bars for the set's frequency, then the
            first build; its reference is the bars rebuild that path used to run first (1m + 5m).
The sql worker times the `nqexp features build --force` path in process: ensure_bars (nothing
stale) + build. Reported: medians of the repeats (wall and process CPU time; the SQL build also
split into compute and write), ratios sql / pandas, and each worker's peak RSS. `--json OUT`
writes the rows run_all.py prints (figure, value, unit, reference, ratio, goal, met).
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
    from nqexp.data import db, demo, ingest
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
    import pyarrow.compute  # noqa: F401  (import costs are paid before the clock starts)
    import scipy.signal  # noqa: F401

    from nqexp import features
    from nqexp.data import db

    con = db.connect(db_path)
    con.execute("set enable_progress_bar = false")
    fs = features.feature_set(set_name)
    features.recursive_filter(np.ones(3), 0.5)
    times, cpu, extra = [], [], {}
    if kind == "first":
        return first_build(db_path, set_name)
    if kind == "sql":
        from nqexp.data.bars import ensure_bars

        compute = []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            assert ensure_bars(con, SYMBOL, [fs.freq_minutes]) is None
            rep = features.build(con, set_name, SYMBOL, force=True)
            cpu.append(time.process_time() - c0)
            times.append(time.perf_counter() - t0)
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


def first_build(db_path: str, set_name: str) -> dict:
    """`features build` right after `data bars --freq 5m`, on a copy of the database."""
    import shutil
    import tempfile

    from nqexp import features
    from nqexp.data import bars, db

    fs = features.feature_set(set_name)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(db_path) or ".") as tmp:
        copy = os.path.join(tmp, "first.duckdb")
        shutil.copy(db_path, copy)
        con = db.connect(copy)
        con.execute("set enable_progress_bar = false")
        t0 = time.perf_counter()
        bars.build_bars(con, SYMBOL, [1, 5])        # the reference: what the path rebuilt before
        reference = time.perf_counter() - t0
        con.execute("delete from bars_1m where symbol = ?", [SYMBOL])   # as after `data bars --freq 5m`
        con.execute("delete from feature_builds where symbol = ?", [SYMBOL])
        t0 = time.perf_counter()
        built = bars.ensure_bars(con, SYMBOL, [fs.freq_minutes])
        rep = features.build(con, set_name, SYMBOL)
        seconds = time.perf_counter() - t0
        n1 = con.execute("select count(*) from bars_1m where symbol = ?", [SYMBOL]).fetchall()[0][0]
        con.close()
    return {"set": set_name, "kind": "first", "times": [seconds], "median": seconds, "cpu_median": 0.0,
            "peak_rss_gb": _peak_rss_gb(), "rows": rep.rows, "bars_built": built is not None,
            "bars_1m_after": n1, "reference_seconds": reference, "features_seconds": rep.seconds}


def rows_for(results: dict) -> list[dict]:
    """The run_all.py rows of this benchmark."""
    out = []
    if ("migt24", "sql") in results:
        sql, pd_ = results[("migt24", "sql")], results[("migt24", "pandas")]
        ratio = sql["median"] / pd_["median"]
        out.append({"figure": f"migt24 rebuild, {sql['rows']:,} 5m bars (features build --force path)",
                    "value": round(sql["median"], 3), "unit": "s",
                    "reference": f"pandas {pd_['median']:.2f} s", "ratio": round(ratio, 2),
                    "goal": "<= 5x pandas, <= 2 s", "met": bool(ratio <= 5 and sql["median"] <= 2),
                    "runs": len(sql["times"])})
    if ("migt24", "first") in results:
        first = results[("migt24", "first")]
        out.append({"figure": "first features build after data bars --freq 5m (migt24)",
                    "value": round(first["median"], 3), "unit": "s",
                    "reference": f"bars rebuild it ran before (1m + 5m) {first['reference_seconds']:.2f} s",
                    "ratio": None, "goal": "build only what the set reads (no 1m bars)",
                    "met": bool(not first["bars_built"] and first["bars_1m_after"] == 0)})
    if ("grok24", "sql") in results:
        sql, pd_ = results[("grok24", "sql")], results[("grok24", "pandas")]
        out.append({"figure": f"grok24 build, {sql['rows']:,} 1m bars (peak RSS {sql['peak_rss_gb']:.2f} GB)",
                    "value": round(sql["median"], 3), "unit": "s",
                    "reference": f"pandas {pd_['median']:.2f} s (peak RSS {pd_['peak_rss_gb']:.2f} GB)",
                    "ratio": round(sql["median"] / pd_["median"], 2),
                    "goal": "<= 30 s, <= 4 GB peak RSS",
                    "met": bool(sql["median"] <= 30 and sql["peak_rss_gb"] <= 4)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=None, help="bench database (default /tmp/nqexp_bench_features[_quick].duckdb)")
    ap.add_argument("--days", type=int, default=None, help="demo days (default 5475, --quick 90)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke size: 90 days, 1 repeat")
    ap.add_argument("--json", dest="json_out", default=None, help="write the result rows to this JSON file")
    ap.add_argument("--sets", nargs="+", default=["migt24", "grok24"])
    ap.add_argument("--stand-in-bars", action="store_true",
                    help="build bars with tests/feature_reference.build_test_bars instead of nqexp.data.bars")
    ap.add_argument("--worker", nargs=2, metavar=("SET", "KIND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.db is None:
        args.db = "/tmp/nqexp_bench_features_quick.duckdb" if args.quick else "/tmp/nqexp_bench_features.duckdb"
    if args.days is None:
        args.days = 90 if args.quick else 5475
    if args.quick and not args.worker:
        args.repeats = 1
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
        if set_name == "migt24":
            out = subprocess.run([sys.executable, __file__, "--db", args.db, "--repeats", "1",
                                  "--worker", set_name, "first"], capture_output=True, text=True, env=env, check=True)
            first = json.loads(out.stdout.strip().splitlines()[-1])
            results[(set_name, "first")] = first
            print(f"{set_name:7s} first build after data bars --freq 5m: {first['median']:.3f}s "
                  f"(features {first['features_seconds']:.3f}s, bars built: {first['bars_built']}; "
                  f"the 1m+5m bars rebuild it skipped: {first['reference_seconds']:.3f}s)", flush=True)
        sql, pd_ = results[(set_name, "sql")], results[(set_name, "pandas")]
        print(f"{set_name:7s} ratio sql/pandas: build (features+targets+write) {sql['median'] / pd_['median']:.2f}x, "
              f"compute only {sql['compute_median'] / pd_['median']:.2f}x, "
              f"cpu {sql['cpu_median'] / pd_['cpu_median']:.2f}x", flush=True)
    rows = rows_for(results)
    for row in rows:
        ratio = "" if row["ratio"] is None else f" ({row['ratio']}x)"
        print(f"{row['figure']}: {row['value']} {row['unit']} vs {row['reference']}{ratio}; "
              f"goal {row['goal']}: {'met' if row['met'] else 'MISSED'}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
