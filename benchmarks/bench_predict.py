"""Benchmark `nqexp predict` on a 15-year demo database (~5.3M 1-minute bars).

    python benchmarks/bench_predict.py [--workdir DIR] [--runs 3] [--quick] [--json OUT]

Builds (once, in --workdir, default $TMPDIR/nqexp_bench_predict[_quick]) a 15-year demo database
(--quick: one year) and a tiny trained trial on its last months (the small config of
tests/test_predict.py), then reports the medians of --runs runs of:
  * `python -c "import nqexp"` (reference: interpreter start + package import);
  * `python -c "import torch"` (what any forecast pays: the model is a torch module);
  * `nqexp predict EXP/TRIAL` end to end in a fresh subprocess, imports included (goal <= 2 s);
  * the model forward on the one forecast window (goal <= 20 ms).
The machine may be shared: read the numbers with its load in mind. `--json OUT` writes the
run_all.py row (figure, value, unit, reference, ratio, goal, met).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


CPU: dict[str, list[float]] = {}    # command label -> CPU seconds (user + sys) of each run


def _wall(cmd, label: str | None = None) -> float:
    """Wall seconds of `cmd` in a fresh process; its CPU seconds go to CPU[label] (a shared machine
    stretches wall time, CPU time much less)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if label:
        CPU.setdefault(label, []).append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a one-year database: a smoke check of this script")
    ap.add_argument("--json", metavar="OUT", help="write the result row here")
    args = ap.parse_args()
    days = 365 if args.quick else 15 * 365
    work = Path(args.workdir or Path(tempfile.gettempdir()) / ("nqexp_bench_predict" + "_quick" * args.quick)).resolve()
    work.mkdir(parents=True, exist_ok=True)
    db_path = work / "demo15y.duckdb"
    trial_dir = work / "runs" / "bench" / "trials" / "full-s0"

    from nqexp.data import db, demo, ingest

    if not db_path.exists():
        t0 = time.perf_counter()
        generated = demo.generate(days=days, seed=0)
        generated.seed = 0
        con = db.connect(str(db_path))
        ingest.write_demo(con, generated)
        con.close()
        print(f"demo database: {len(generated.bars):,} bars in {time.perf_counter() - t0:.0f}s")
    if not (trial_dir / "bundle" / "bundle.json").exists():
        from nqexp.experiment.bundle import write_bundle
        from nqexp.experiment.pipeline import prepare_data, score_trial
        from nqexp.experiment.spec import load_spec
        from nqexp.experiment.track import NullTracker
        from nqexp.model.train import train
        from tests.test_predict import TINY

        over = [o for o in TINY if not o.startswith("data.demo_days")] + [f"data.demo_days={days}"]
        tspec = load_spec(ROOT / "experiments" / "demo_quality.yaml", overrides=over).trials()[0].spec
        data = prepare_data(tspec, str(db_path))
        ds = data.datasets
        res = train(tspec.model, tspec.train, {"train": ds["train"], "val": ds["val"]}, NullTracker(),
                    work / "ckpt", seed=0, horizon_minutes=data.horizon_minutes, device="cpu")
        score_trial(tspec.model, res.checkpoint, data, trial_dir, tspec.eval)
        write_bundle(trial_dir, tspec, res.checkpoint, data)

    cli = [sys.executable, "-m", "nqexp.cli", "--db", str(db_path), "predict", str(trial_dir), "--format", "csv"]
    _wall(cli)  # warm the OS file cache once
    imp, tor, e2e = [], [], []
    for _ in range(args.runs):                 # interleaved: a busy moment hits all three
        imp.append(_wall([sys.executable, "-c", "import nqexp"]))
        tor.append(_wall([sys.executable, "-c", "import torch"], "torch"))
        e2e.append(_wall(cli, "predict"))

    import torch

    from nqexp.experiment import predict as P
    from nqexp.model.train import predict

    torch.set_num_threads(2)
    bundle = P.load_bundle(trial_dir)
    fs = P.check_feature_set(bundle)
    con = P._open(str(db_path), bundle.meta["symbol"], fs.bars_table, fs.freq_minutes)
    last = con.execute(f"select max(ts) from {fs.bars_table} where symbol = ?", [bundle.meta["symbol"]]).fetchall()[0][0]
    tail = P.read_tail(con, bundle, fs, bundle.meta["symbol"], last, last)
    con.close()
    model = bundle.model
    fc = P.forecast(bundle, tail, [len(tail.arrays.ts) - 1], model=model)
    fwd = []
    import dataclasses

    from nqexp.model import windows

    shim = dataclasses.replace(tail.arrays, targets=np.zeros_like(tail.arrays.targets))  # the latest bar has no target yet
    ds = windows.dataset_arrays(shim, [len(tail.arrays.ts) - 1], bundle.scalers, bundle.window_cfg)
    for _ in range(max(args.runs, 5)):
        t0 = time.perf_counter()
        predict(model, ds, 512, "cpu")
        fwd.append(time.perf_counter() - t0)
    med = statistics.median
    print(f"python -c 'import nqexp'       median {med(imp):.3f}s  runs {[round(x, 3) for x in imp]}")
    print(f"python -c 'import torch'       median {med(tor):.3f}s  runs {[round(x, 3) for x in tor]}")
    print(f"nqexp predict (subprocess)     median {med(e2e):.3f}s  runs {[round(x, 3) for x in e2e]}  goal <= 2 s")
    print(f"  CPU seconds (user + sys): predict median {med(CPU['predict']):.3f}s, import torch {med(CPU['torch']):.3f}s")
    print(f"model forward (1 window)       median {1e3 * med(fwd):.1f}ms  goal <= 20 ms")
    print(f"in-process split: read tail {tail.seconds:.3f}s ({len(tail.arrays.ts):,} feature bars, "
          f"{len(tail.calendar.ts):,} sigma bars), {', '.join(f'{k} {v:.3f}s' for k, v in fc.seconds.items())}")
    if args.json:
        n_bars = con_bars(db_path)
        row = {"figure": f"nqexp predict EXP/TRIAL end to end, fresh process, {n_bars / 1e6:.2f}M-bar database",
               "value": round(med(e2e), 3), "unit": "s", "runs": len(e2e),
               "reference": f"python -c 'import torch' {med(tor):.2f} s; CPU s: predict {med(CPU['predict']):.2f}, "
                            f"import torch {med(CPU['torch']):.2f}",
               "ratio": round(med(e2e) / med(tor), 2), "goal": "<= 2 s", "met": bool(med(e2e) <= 2.0)}
        Path(args.json).write_text(json.dumps([row], indent=1) + "\n")


def con_bars(db_path) -> int:
    import duckdb

    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return con.execute("select count(*) from raw_bars").fetchall()[0][0]
    finally:
        con.close()


if __name__ == "__main__":
    main()
