"""Benchmark the import of a large 1-minute CSV against DuckDB's own read_csv of the same file.

    python benchmarks/bench_ingest.py [--years 15] [--repeats 3] [--quick] [--json OUT]

The file is the demo's 15 years of NQ 1-minute bars (5.28M rows) written as a FirstRate-style CSV
(header `timestamp,open,high,low,close,volume`, naive New York times, imported with
`--tz America/New_York`), built once into --workdir. Each repeat, in this process:

* reference: DuckDB's own `read_csv` of the file into a table of a fresh file database;
* `ingest.import_file` into a fresh file database (validation, rejects, the upsert, sha256 included);
* the same import again into that database (a re-import that changes nothing).

Figures are medians of --repeats runs, and each is compared with the reference median of the same run
(issue 14: <= 3x read_csv for the import, <= 2x for the re-import). `--quick` uses one year of bars.
Also printed, as before: CLI startup against a bare `python -c pass`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    print(f"{name:<48} median {med:8.3f}s  samples {[round(s, 3) for s in samples]}{extra}", flush=True)
    return med


def make_csv(path: Path, days: int) -> int:
    """Demo bars as a FirstRate-style CSV (naive New York times, 2 decimals), written by DuckDB."""
    import duckdb
    import pandas as pd

    from nqexp.data import demo

    bars = demo.generate(days=days, seed=0).bars
    frame = pd.DataFrame({
        "ts": bars["ts"].dt.tz_localize("UTC").dt.tz_convert("America/New_York").dt.tz_localize(None),
        **{k: bars[k].to_numpy() for k in ("open", "high", "low", "close", "volume")},
    })
    con = duckdb.connect()
    con.register("frame", frame)
    tmp = path.with_suffix(".part")
    con.execute(
        "copy (select strftime(ts, '%Y-%m-%d %H:%M:%S') as timestamp, printf('%.2f', open) as open, "
        "printf('%.2f', high) as high, printf('%.2f', low) as low, printf('%.2f', close) as close, "
        f"volume from frame) to '{tmp}' (header, delimiter ',', quote '')")
    con.close()
    tmp.replace(path)
    return len(frame)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=float, default=15.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one year of bars: a smoke check of this script")
    ap.add_argument("--json", metavar="OUT", help="write the figures as a JSON list of rows")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "nqexp_bench_ingest"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))

    from nqexp.data import db, ingest

    years = 1.0 if args.quick else args.years
    days = int(years * 365.25)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    csv = work / f"nq_demo_{days}d.csv"
    if not csv.exists():
        t0 = time.perf_counter()
        make_csv(csv, days)
        print(f"wrote {csv} in {time.perf_counter() - t0:.1f}s", flush=True)
    rows = sum(1 for _ in csv.open("rb")) - 1
    print(f"CSV: {rows:,} rows, {csv.stat().st_size / 1e6:.0f} MB", flush=True)

    ref, first, again = [], [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            con = db.connect(Path(tmp) / "ref.duckdb")
            t0 = time.perf_counter()
            con.execute("create table t as select * from read_csv(?)", [str(csv)])
            ref.append(time.perf_counter() - t0)
            con.close()
            con = db.connect(Path(tmp) / "import.duckdb")
            t0 = time.perf_counter()
            rep = ingest.import_file(con, csv, tz="America/New_York")
            first.append(time.perf_counter() - t0)
            assert (rep.new, rep.rejected) == (rows, 0), rep.summary()
            t0 = time.perf_counter()
            rep = ingest.import_file(con, csv, tz="America/New_York")
            again.append(time.perf_counter() - t0)
            assert (rep.new, rep.unchanged, rep.changed) == (0, rows, 0), rep.summary()
            con.close()
        print(f"run {i + 1}: read_csv {ref[-1]:.2f}s, import {first[-1]:.2f}s, re-import {again[-1]:.2f}s", flush=True)
    r = show("reference: DuckDB read_csv into a table", ref)
    f = show(f"import {rows / 1e6:.2f}M-row 1m CSV, fresh DB", first, ref)
    a = show("re-import that changes nothing", again, ref)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")

    env = {**os.environ}
    base = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True, env=env), 3 if args.quick else 10)
    show("reference: python -c pass", base)
    exe = Path(sys.executable).with_name("nqexp")
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "nqexp.cli", "--help"]
    show("nqexp --help", timed(lambda: subprocess.run(cmd, check=True, capture_output=True, env=env),
                               3 if args.quick else 10), base)

    if args.json:
        out = [
            {"figure": f"import of a {rows / 1e6:.2f}M-row 1m CSV, validation included", "value": round(f, 3),
             "unit": "s", "reference": f"DuckDB read_csv {r:.2f} s", "ratio": round(f / r, 2),
             "goal": "<= 3x DuckDB read_csv", "met": f / r <= 3, "runs": len(first)},
            {"figure": f"re-import that changes nothing, {rows / 1e6:.2f}M rows", "value": round(a, 3), "unit": "s",
             "reference": f"DuckDB read_csv {r:.2f} s", "ratio": round(a / r, 2),
             "goal": "<= 2x DuckDB read_csv", "met": a / r <= 2, "runs": len(again)},
        ]
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
