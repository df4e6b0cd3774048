"""Fold-by-fold ablation table: each variant's raw CRPS against a reference trial, per fold and horizon.

The report pools folds; a default is settled by whether a switch helps on val in *every* fold
(docs/experiments.md, benchmarks/README_quality.md). This prints, for each variant of an experiment and each
fold, the % change of the raw (not recalibrated) CRPS against the reference's trial of the same fold and
seed, on val and test, and how many folds val calls better. The reference can be a variant of another
experiment of the same configuration (CPU training is deterministic for a seed), e.g. a second batch of
an ablation compared with the first batch's `full`. Then the paired test differences with their
one-day block-bootstrap CIs (the report's, docs/metrics.md §12: pooled over folds, the forecasts as
scored, recalibrated where the trials were), Benjamini-Hochberg-adjusted over the rows of that table.

    python benchmarks/fold_table.py quality_ablation_more --store /tmp/abl3/runs
    python benchmarks/fold_table.py quality_ablation_inputs --store /tmp/abl2/runs \
        --ref quality_ablation/full --ref-store /tmp/abl/runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nqexp.evaluation import report  # noqa: E402
from nqexp.experiment.track import RunStore  # noqa: E402
from nqexp.metrics import ADJUSTMENTS  # noqa: E402

HORIZONS = ("15m", "30m", "60m", "2h", "4h")


def raw_crps(metrics: dict, split: str, horizon: str) -> float:
    """The raw forecast's CRPS: `crps_model_raw` when the trial was recalibrated, else `crps`."""
    return metrics.get(f"{split}/crps_model_raw_{horizon}", metrics.get(f"{split}/crps_{horizon}", float("nan")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment")
    ap.add_argument("--store", default="runs")
    ap.add_argument("--ref", help="EXPERIMENT/VARIANT of the reference (default: this experiment's first variant)")
    ap.add_argument("--ref-store", help="run store of --ref (default: --store)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    store = RunStore(args.store)
    trials = store.trials_frame(args.experiment)
    trials = trials[(trials["status"] == "finished") & (trials["seed"] == args.seed)]
    ref_exp, ref_var = (args.ref.split("/", 1) if args.ref else (args.experiment, trials["variant"].iloc[0]))
    ref_store = RunStore(args.ref_store or args.store)
    ref = ref_store.trials_frame(ref_exp)
    ref = ref[(ref["variant"] == ref_var) & (ref["seed"] == args.seed) & (ref["status"] == "finished")]
    ref_by_fold = {int(r.fold): ref_store.trial_metrics(ref_exp, r.trial) for r in ref.itertuples()}

    print(f"Raw CRPS, % change against {ref_exp}/{ref_var} (seed {args.seed}), fold by fold; negative = better.")
    cols = [f"val {h}" for h in HORIZONS] + [f"test {h}" for h in HORIZONS]
    print("| variant | fold | " + " | ".join(cols) + " | val mean |")
    print("| --- | ---: | " + " | ".join("---:" for _ in cols) + " | ---: |")
    summary = {}
    for variant in dict.fromkeys(trials["variant"]):
        if (args.experiment, variant) == (ref_exp, ref_var):
            continue
        for r in trials[trials["variant"] == variant].sort_values("fold").itertuples():
            base = ref_by_fold.get(int(r.fold))
            if base is None:
                continue
            m = store.trial_metrics(args.experiment, r.trial)
            cells, val_changes = [], []
            for split in ("val", "test"):
                for h in HORIZONS:
                    change = 100.0 * (raw_crps(m, split, h) / raw_crps(base, split, h) - 1.0)
                    cells.append(f"{change:+.2f}")
                    if split == "val":
                        val_changes.append(change)
            val_mean = sum(val_changes) / len(val_changes)
            truncated = getattr(r, "stopped", None) == report.TRUNCATED
            if not truncated:  # a trial its time guard stopped did not train the budget: no verdict from it
                summary.setdefault(variant, []).append(val_mean)
            note = " (truncated)" if truncated else ""
            print(f"| {variant}{note} | {int(r.fold)} | " + " | ".join(cells) + f" | {val_mean:+.2f} |")
    print()
    for variant, means in summary.items():
        better = sum(v < 0 for v in means)
        print(f"{variant}: val mean CRPS better than the reference in {better} of {len(means)} folds "
              f"({', '.join(f'{v:+.2f}%' for v in means)})")
    paired_table(store, args.experiment, ref_store, ref_exp, ref_var)
    return 0


def paired_table(store, experiment, ref_store, ref_exp, ref_var, n_boot: int = 1000):
    """The report's paired test comparison of every variant against the reference trial of its fold and seed."""
    import dataclasses

    import pandas as pd

    data = report.load(store, experiment)
    ref = report.load(ref_store, ref_exp)
    ref_trials = ref.trials[ref.trials["variant"] == ref_var].assign(variant="__ref__")
    ours = data.trials[~((data.trials["variant"] == ref_var) & (experiment == ref_exp))
                       & (data.trials["stopped"] != report.TRUNCATED)]  # truncated trials did not train the budget
    merged = dataclasses.replace(data, trials=pd.concat([ref_trials, ours], ignore_index=True), reference="__ref__")
    paired = report.paired_differences(merged, "test", n_boot=n_boot)
    if paired.empty:
        return
    paired["p_adj"] = ADJUSTMENTS["bh"](paired["p"].to_numpy(float))
    paired["verdict"] = [report._verdict(m, q, ("better", "worse")) for m, q in zip(paired["mean_diff"], paired["p_adj"])]
    print(f"\nPaired test CRPS against {ref_exp}/{ref_var}, pooled over folds: % of its CRPS [95% CI], verdict after "
          f"Benjamini-Hochberg over these {len(paired)} comparisons (folds with the pooled sign).")
    labels = list(dict.fromkeys(paired["horizon"]))
    print("| variant | " + " | ".join(labels) + " |")
    print("| --- | " + " | ".join("---" for _ in labels) + " |")
    for variant, rows in paired.groupby("variant", sort=False):
        cells = []
        for r in rows.itertuples():
            scale = r.rel_pct / r.mean_diff if r.mean_diff else float("nan")  # % per unit of CRPS difference
            cells.append(f"{r.rel_pct:+.2f}% [{r.ci_lo * scale:+.2f}, {r.ci_hi * scale:+.2f}] {r.verdict} "
                         f"({r.same_sign_folds})")
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
