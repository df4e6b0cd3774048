"""Benchmark: build 5-minute bars (+ session fields) from 15 years of demo 1-minute bars.

Each repeat runs in a fresh subprocess (so peak RSS is that build's own), on an in-memory
DuckDB holding `nqexp.data.demo.generate(days=5479)` (~5.4M rows). Timed: `bars.build_bars` only
(rolls, adjustment, session fields, bars table), not generation or the raw insert. Peak RSS
is the subprocess's ru_maxrss, which includes the generator's and raw table's memory; the
build's own increment is reported separately.

    python benchmarks/bench_bars.py                 # 5m only, median of 3
    python benchmarks/bench_bars.py --freq 1 --freq 5 --repeats 3

Download/ingest throughput against the fake gateway: `--download` (see tests/fake_gateway.py): 15 years
of demo records (5.3M) in 183 chunks of 30 days, bought and ingested into an in-memory database (issue 14
goal: <= 30 s). `--quick` uses one year (13 chunks); `--json OUT` writes the figure as a JSON row list.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_build(days: int, freqs: list[int]) -> dict:
    from nqexp.data import bars, db, demo, ingest

    data = demo.generate(days=days, seed=0)
    con = db.connect(":memory:")
    ingest.write_demo(con, data)
    del data
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    report = bars.build_bars(con, demo.DEMO_SYMBOL, freq_minutes=tuple(freqs))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows_in": report.source_rows, "rows_out": report.rows,
            "rolls": len(report.rolls), "peak_rss_mb": _rss_mb(), "rss_before_build_mb": rss_before}


def one_download(days: int) -> dict:
    """Download `days` of demo data through the real databento client and a local HTTPS fake gateway."""
    import os

    import fake_gateway
    import numpy as np

    from nqexp.data import db, demo, download

    data = demo.generate(days=days, seed=0)
    records = fake_gateway.records_from_bars(data.bars)
    with tempfile.TemporaryDirectory() as tmp, fake_gateway.serve(records, Path(tmp)) as gw:
        os.environ["REQUESTS_CA_BUNDLE"] = str(gw.cert)
        con = db.connect(":memory:")
        start = str(np.datetime_as_string(data.bars["ts"].iloc[0].to_datetime64(), unit="D"))
        end = str((data.bars["ts"].iloc[-1] + __import__("pandas").Timedelta(days=1)).date())
        t0 = time.perf_counter()
        rep = download.download(con, start=start, end=end, key="db-benchmark-key", gateway=gw.url,
                                data_dir=Path(tmp) / "data")
        seconds = time.perf_counter() - t0
        n = con.execute("select count(*) from raw_bars").fetchall()[0][0]
    return {"seconds": seconds, "records": int(len(records)), "rows_in_db": int(n), "chunks": rep.chunks_downloaded,
            "peak_rss_mb": _rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=5479)
    ap.add_argument("--freq", type=int, action="append")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--download", action="store_true", help="benchmark download+ingest instead of bars")
    ap.add_argument("--quick", action="store_true", help="one year of bars: a smoke check of this script")
    ap.add_argument("--json", metavar="OUT", help="write the figure as a JSON list of rows")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    freqs = args.freq or [5]
    if args.quick and not args.child:
        args.days = min(args.days, 366)
    if args.child:
        out = one_download(args.days) if args.download else one_build(args.days, freqs)
        print(json.dumps(out))
        return
    runs = []
    for i in range(args.repeats):
        cmd = [sys.executable, __file__, "--child", "--days", str(args.days)]
        cmd += ["--download"] if args.download else sum((["--freq", str(f)] for f in freqs), [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"run {i + 1}: {runs[-1]}", flush=True)
    print(json.dumps({
        "what": "download+ingest" if args.download else f"build_bars freq={freqs}",
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        "runs": len(runs),
    }))
    if args.json and args.download:
        med = statistics.median(r["seconds"] for r in runs)
        rec, chunks = runs[-1]["records"], runs[-1]["chunks"]
        # The goal is for the full 15 years; a --quick run is held to it pro rata.
        goal = 30.0 * (args.days / 5479)
        Path(args.json).write_text(json.dumps([{
            "figure": f"download + ingest, {rec / 1e6:.2f}M records in {chunks} chunks (fake gateway)",
            "value": round(med, 2), "unit": "s", "reference": f"goal {goal:.1f} s for {args.days} days",
            "ratio": None, "goal": f"<= {goal:.1f} s" + ("" if args.days == 5479 else " (30 s pro rata)"),
            "met": med <= goal,
        }], indent=2))


if __name__ == "__main__":
    main()
