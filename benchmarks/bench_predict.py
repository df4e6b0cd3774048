"""Benchmark `nqexp predict` on a 15-year demo database (~5.3M 1-minute bars).

    python benchmarks/bench_predict.py [--workdir DIR] [--runs 3]

Builds (once, in --workdir) a 15-year demo database and a tiny trained trial on its last months
(the small config of tests/test_predict.py), then reports the medians of --runs runs of:
  * `python -c "import nqexp"` (reference: interpreter start + package import);
  * `nqexp predict EXP/TRIAL` end to end in a fresh subprocess, imports included (goal <= 2 s);
  * the model forward on the one forecast window (goal <= 20 ms).
The machine may be shared: read the numbers with its load in mind.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _wall(cmd) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="bench_predict_data")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    db_path = work / "demo15y.duckdb"
    trial_dir = work / "runs" / "bench" / "trials" / "full-s0"

    from nqexp.data import db, demo, ingest

    if not db_path.exists():
        t0 = time.perf_counter()
        generated = demo.generate(days=15 * 365, seed=0)
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

        over = [o for o in TINY if not o.startswith("data.demo_days")] + ["data.demo_days=5475"]
        tspec = load_spec(ROOT / "experiments" / "demo_quality.yaml", overrides=over).trials()[0].spec
        data = prepare_data(tspec, str(db_path))
        ds = data.datasets
        res = train(tspec.model, tspec.train, {"train": ds["train"], "val": ds["val"]}, NullTracker(),
                    work / "ckpt", seed=0, horizon_minutes=data.horizon_minutes, device="cpu")
        score_trial(tspec.model, res.checkpoint, data, trial_dir, tspec.eval)
        write_bundle(trial_dir, tspec, res.checkpoint, data)

    cli = [sys.executable, "-m", "nqexp.cli", "--db", str(db_path), "predict", str(trial_dir), "--format", "csv"]
    _wall(cli)  # warm the OS file cache once
    imp = [_wall([sys.executable, "-c", "import nqexp"]) for _ in range(args.runs)]
    e2e = [_wall(cli) for _ in range(args.runs)]

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
    print(f"nqexp predict (subprocess)     median {med(e2e):.3f}s  runs {[round(x, 3) for x in e2e]}  goal <= 2 s")
    print(f"model forward (1 window)       median {1e3 * med(fwd):.1f}ms  goal <= 20 ms")
    print(f"in-process split: read tail {tail.seconds:.3f}s ({len(tail.arrays.ts):,} feature bars, "
          f"{len(tail.calendar.ts):,} sigma bars), {', '.join(f'{k} {v:.3f}s' for k, v in fc.seconds.items())}")


if __name__ == "__main__":
    main()
