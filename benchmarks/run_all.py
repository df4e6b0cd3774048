"""Every performance figure of nqexp: first the five goals of the research loop in one table, then the rest.

    python benchmarks/run_all.py            # the full sizes (15 years of demo data; ~60 min on 2 cores)
    python benchmarks/run_all.py --quick    # small sizes, a smoke check of every script (~10 min)
    python benchmarks/run_all.py --only features,windows --json /tmp/perf.json

Each benchmark script runs in its own subprocess (`bench_X.py [--quick] --json OUT`) and writes rows
{figure, value, unit, reference, ratio, goal, met, runs}. Every figure is a median of >= 3 runs (the
quickstart: 3 whole runs), and every goal that is a ratio compares against a reference timed in the
same run, so the table is robust to a busy machine; each row also shows the machine's 1-minute load
average as its benchmark started and ended, since a shared machine moves the absolute ones. The
five goals (GOALS: orchestration overhead, predict, CSV import, loader, migt24 rebuild) come first,
each marked met or MISSED. The GPU rows run only where CUDA is available (`bench_model.py --device
cuda`); on a CPU machine they say so instead of pretending.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> script; each takes --quick and --json OUT.
BENCHES = {
    "features": "bench_features.py",
    "ingest": "bench_ingest.py",
    "download": "bench_bars.py",
    "windows": "bench_windows.py",
    "quickstart": "bench_quickstart.py",
    "predict": "bench_predict.py",
}
EXTRA = {"download": ["--download"]}
# The research loop's five goals (issue 23): (benchmark, start of its row's figure, the goal's name).
GOALS = [
    ("quickstart", "quickstart", "orchestration overhead of the quickstart"),
    ("predict", "nqexp predict", "predict end to end"),
    ("ingest", "import of a", "CSV import"),
    ("windows", "window loader", "window loader"),
    ("features", "migt24 rebuild", "migt24 rebuild"),
]

# Peak dense bf16 tensor throughput (TFLOP/s) of the GPUs this project runs on, for MFU.
BF16_PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "L4": 121.0, "A10": 125.0}


def run_bench(name: str, quick: bool, out_dir: Path) -> tuple[list[dict], float]:
    out = out_dir / f"{name}.json"
    cmd = [sys.executable, str(HERE / BENCHES[name]), *EXTRA.get(name, []), "--json", str(out)]
    if quick:
        cmd.append("--quick")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load = f"{load0:.1f}-{os.getloadavg()[0]:.1f}"
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [{"figure": name, "value": None, "unit": "", "reference": "", "ratio": None, "bench": name,
                 "goal": "", "met": False, "load": load, "error": f"exit {proc.returncode}: {tail[0][:200]}"}], wall
    return [{**row, "bench": name, "load": load} for row in json.loads(out.read_text())], wall


def gpu_rows(out_dir: Path) -> list[dict]:
    """MFU and memory of one bf16 training step at batch 128, or an honest 'not measured'."""
    goals = [("GPU training MFU, default config, bf16, torch.compile", ">= 30% MFU"),
             ("GPU memory at effective batch 128", "<= 25 GB")]
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        return [{"figure": f, "value": None, "unit": "", "reference": "no GPU on this machine: not measured",
                 "ratio": None, "goal": g, "met": None} for f, g in goals]
    sys.path.insert(0, str(HERE))
    import bench_model

    out = out_dir / "model_cuda.json"
    cmd = [sys.executable, str(HERE / "bench_model.py"), "--device", "cuda", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        return [{"figure": f, "value": None, "unit": "", "reference": "", "ratio": None, "goal": g, "met": False,
                 "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]} for f, g in goals]
    res = json.loads(out.read_text())
    flop = bench_model.count_flops(bench_model.DEFAULT, 2, backward=True) / 2   # train FLOP per sample
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in res["device"]), None)
    step = res["train_b128_compiled"]
    achieved = step["samples_per_s"] * flop / 1e12
    mfu = achieved / peak if peak else None
    return [
        {"figure": goals[0][0], "value": None if mfu is None else 100 * mfu, "unit": "% MFU",
         "reference": f"{res['device']}: {step['samples_per_s']:.0f} samples/s x {flop / 1e9:.0f} GFLOP "
                      f"= {achieved:.0f} TFLOP/s of {peak or '?'} peak",
         "ratio": mfu, "goal": goals[0][1], "met": mfu is not None and mfu >= 0.30},
        {"figure": goals[1][0], "value": step["peak_mem_gib"] * 2**30 / 1e9, "unit": "GB",
         "reference": f"eager: {res['train_b128_eager']['peak_mem_gib'] * 2**30 / 1e9:.1f} GB",
         "ratio": None, "goal": goals[1][1], "met": step["peak_mem_gib"] * 2**30 / 1e9 <= 25},
    ]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def goal_rows(rows: list[dict], only) -> tuple[list[dict], list[dict]]:
    """The five goals' rows in GOALS order (a goal whose benchmark did not run: a 'not run' row), and the others."""
    goals, used = [], set()
    for bench, prefix, label in GOALS:
        found = next((r for r in rows if r.get("bench") == bench and
                      (r["figure"].startswith(prefix) or r.get("error"))), None)
        if found is None:
            found = {"figure": bench, "value": None, "unit": "", "reference": "", "ratio": None, "goal": "",
                     "met": None, "error": "not run" if bench not in only else "no such row"}
        else:
            used.add(id(found))
        goals.append({**found, "figure": f"{label}: {found['figure']}"})
    return goals, [r for r in rows if id(r) not in used]


def print_table(rows: list[dict], met_word: str = "NO") -> None:
    head = ["figure", "now (median)", "runs", "reference (same run)", "ratio", "goal", "met", "load"]
    body = []
    for r in rows:
        now = f"{_fmt(r['value'])} {r['unit']}".strip() if r.get("value") is not None else (r.get("error") or "-")
        met = {True: "yes", False: met_word, None: "n/a"}[r.get("met")]
        body.append([r["figure"], now, _fmt(r.get("runs")), r.get("reference", ""), _fmt(r.get("ratio")),
                     r.get("goal", ""), met, r.get("load", "")])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for b in body:
        print(line(b))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: checks every script runs, not the figures")
    ap.add_argument("--only", default=",".join([*BENCHES, "gpu"]),
                    help=f"comma list of {', '.join([*BENCHES, 'gpu'])}")
    ap.add_argument("--json", default=None, help="also write every row to this file")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in BENCHES and s != "gpu"]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {[*BENCHES, 'gpu']}")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="nqexp_bench_") as tmp:
        for name in only:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            if name == "gpu":
                rows += gpu_rows(Path(tmp))
                continue
            got, wall = run_bench(name, args.quick, Path(tmp))
            print(f"  {name}: {wall:.0f} s", file=sys.stderr, flush=True)
            rows += got
    goals, others = goal_rows(rows, only)
    print(f"The five goals{' (--quick sizes: a check of the scripts, not the figures)' * args.quick}; "
          f"load = the 1-minute load average as the benchmark started-ended, on {os.cpu_count()} cores:")
    print_table(goals, met_word="MISSED")
    if others:
        print("\nOther figures:")
        print_table(others)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
