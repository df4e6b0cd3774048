"""Benchmark the foundation: demo generation, demo write, FirstRate import, DB size, CLI startup.

    python benchmarks/bench_ingest.py [--years 15] [--repeats 3]

Prints medians (and all samples) plus ratios against references measured in the same run:
CLI startup against a bare `python -c pass`, the FirstRate import against pandas.read_csv of
the same file. The machine is shared and noisy, so compare ratios, not absolute seconds.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRSTRATE = ROOT.parent / "shared" / "data" / "firstrate-nq-2023" / "NQ_1min_sample.csv"


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def show(name, samples, ref=None):
    med = statistics.median(samples)
    extra = f"  ({med / statistics.median(ref):.1f}x reference)" if ref else ""
    print(f"{name:<44} median {med:8.3f}s  samples {[round(s, 3) for s in samples]}{extra}")
    return med


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--years", type=float, default=15.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import pandas as pd

    from nqexp import db, demo, ingest

    days = int(args.years * 365.25)
    gen = []
    data = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        data = demo.generate(days=days, seed=0)
        gen.append(time.perf_counter() - t0)
    print(f"demo: {len(data.bars):,} bars, {len(data.rolls)} rolls over {days} days")
    show(f"demo.generate({args.years:g} years)", gen)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.duckdb"
        data.seed = 0

        def write():
            con = db.connect(path)
            ingest.write_demo(con, data)
            con.close()

        show("write demo into a file DB (replace)", timed(write, args.repeats))
        size = path.stat().st_size + (path.with_suffix(".duckdb.wal").stat().st_size
                                      if path.with_suffix(".duckdb.wal").exists() else 0)
        print(f"{'DB size with the demo series':<44} {size / 1e6:8.1f} MB")

        if FIRSTRATE.exists():
            ref = timed(lambda: pd.read_csv(FIRSTRATE), 5)
            show("reference: pandas.read_csv(FirstRate)", ref)

            def imp():
                con = db.connect(":memory:")
                ingest.import_file(con, FIRSTRATE, tz="America/New_York")
                con.close()

            show("import FirstRate 1m (14,714 rows), fresh DB", timed(imp, 5), ref)
        else:
            print("FirstRate sample absent: import not measured")

    env = {**os.environ}
    base = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True, env=env), 10)
    show("reference: python -c pass", base)
    exe = Path(sys.executable).with_name("nqexp")
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "nqexp.cli", "--help"]
    show("nqexp --help", timed(lambda: subprocess.run(cmd, check=True, capture_output=True, env=env), 10), base)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
