"""Recalibration on and off across folds without retraining (issue 21, docs/metrics.md §13).

Recalibration is fitted on val after training, so its settings need no new training: this rescores each
fold's best checkpoint of one variant of a finished run with `eval.recalibrate` and `eval.median_shrink`
switched (none / shrink / conformal / both / conformal by 4 time-of-day buckets), and prints the % change of CRPS against the raw forecast,
val cross-fitted (each half of val recalibrated by the fit on the other) and test (fitted on all of
val), with the median shares a_h each fold's val chose. A default is changed only if val improves in
every fold.

    python benchmarks/rescore_recal.py quality_ablation --variant no_ema --store /tmp/abl/runs \
        --spec experiments/quality_ablation.yaml --db /tmp/abl/demo.duckdb
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nqexp.experiment.pipeline import prepare_data, score_trial  # noqa: E402
from nqexp.experiment.spec import load_spec  # noqa: E402
from nqexp.experiment.track import RunStore  # noqa: E402

HORIZONS = ("15m", "30m", "60m", "2h", "4h")
# name -> (eval.recalibrate, eval.median_shrink, eval.recalibrate_tod_buckets)
SETTINGS = {"shrink": ("none", True, 1), "conformal": ("conformal", False, 1), "both": ("conformal", True, 1),
            "conformal_tod4": ("conformal", False, 4)}


def best_checkpoint(trial_dir: Path, best_step: int) -> Path:
    found = sorted((trial_dir / "checkpoints").glob(f"best-*-step{best_step:07d}.pt"))
    if not found:
        raise SystemExit(f"{trial_dir}: no best checkpoint at step {best_step}")
    return found[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment")
    ap.add_argument("--variant", required=True)
    ap.add_argument("--store", default="runs")
    ap.add_argument("--spec", required=True, help="the spec file the run was made from")
    ap.add_argument("--db", required=True, help="the DuckDB file the run read")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    store = RunStore(args.store)
    trials = store.trials_frame(args.experiment)
    trials = trials[(trials["variant"] == args.variant) & (trials["seed"] == args.seed)
                    & (trials["status"] == "finished")].sort_values("fold")
    specs = {t.trial_name: t.spec for t in load_spec(args.spec).trials()}
    rows = []
    for r in trials.itertuples():
        tspec = specs[r.trial]
        data = prepare_data(tspec, args.db)
        ckpt = best_checkpoint(Path(r.dir), int(r.best_step))
        scored = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, (method, shrink, buckets) in {"raw": ("none", False, 1), **SETTINGS}.items():
                eval_cfg = dataclasses.replace(tspec.eval, recalibrate=method, median_shrink=shrink,
                                               recalibrate_tod_buckets=buckets)
                flat, _flags, _plots, _recal = score_trial(tspec.model, ckpt, data, Path(tmp) / name, eval_cfg,
                                                           plots=False)
                scored[name] = flat
        for name in SETTINGS:
            cells = []
            for split in ("val", "test"):
                for h in HORIZONS:
                    cells.append(100.0 * (scored[name][f"{split}/crps_{h}"] / scored["raw"][f"{split}/crps_{h}"] - 1))
            shares = [scored[name].get(f"val/recal_shrink_{h}", float("nan")) for h in HORIZONS]
            rows.append((int(r.fold), name, cells, shares))
            print(f"fold {int(r.fold)} {name}: done", file=sys.stderr)

    print(f"{args.experiment}/{args.variant}: % change of CRPS when recalibrated, against the raw forecast "
          f"(val cross-fitted); a_h = the median share kept")
    cols = [f"val {h}" for h in HORIZONS] + [f"test {h}" for h in HORIZONS]
    print("| fold | setting | " + " | ".join(cols) + " | val mean | a_h |")
    print("| ---: | --- | " + " | ".join("---:" for _ in cols) + " | ---: | --- |")
    for fold, name, cells, shares in rows:
        a = " / ".join(f"{s:.2f}" for s in shares) if SETTINGS[name][1] else "-"
        print(f"| {fold} | {name} | " + " | ".join(f"{c:+.2f}" for c in cells)
              + f" | {sum(cells[:5]) / 5:+.2f} | {a} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
