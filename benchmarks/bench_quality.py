"""Quality on the demo data against the Bayes-optimal oracle and every baseline (issue 11).

The demo generator (nqexp/data/demo.py) stores its latent state, so the causal Monte Carlo oracle
(`known_answer.mc_oracle`) can simulate each test origin's targets from the true state: its
quantiles are the best any forecaster could issue. This benchmark trains the model on CPU within
the spec's budget, predicts the test split, and prints per horizon:

* CRPS / oracle CRPS of the model and of every baseline (climatology, vol-scaled, MC-GARCH,
  LightGBM), on the sampled origins (>= 1,000 by default, 1,000 paths each);
* the model's IC next to the oracle's IC (Spearman of the median, or the oracle's conditional mean,
  with the outcome) on 5,000 origins;
* calibration error and PICP80 of the model on the whole test split;
* paired CRPS differences, model minus each baseline, on the whole test split, with moving-block
  bootstrap 95% CIs (blocks of one day), and the verdicts against the goals of issue 11.

Usage (from the repo root, venv active; about 17 minutes with the default 15-minute budget):

    python benchmarks/bench_quality.py                                   # experiments/demo_quality.yaml, seed 0
    python benchmarks/bench_quality.py --no-train                        # baselines vs oracle only (~3 min)
    python benchmarks/bench_quality.py --set windows.sigma=ewma --json q.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench_quality")

DEFAULT_SPEC = ROOT / "experiments" / "demo_quality.yaml"
# Issue 11 goals on the demo test split.
GOAL_CRPS_OVER_ORACLE = 1.01       # every horizon
GOAL_IC_SHARE = 0.7                # model IC >= 0.7 x oracle IC at 15m-60m
GOAL_IC_HORIZONS = ("15m", "30m", "60m")
GOAL_BEAT_ALL_HORIZONS = 4         # beats every baseline on >= 4 of 5 horizons ...
GOAL_BEAT_ALL_SIGNIFICANT = 3      # ... with the paired 95% CI excluding 0 on >= 3
GOAL_CALIB_ERR = 0.02
GOAL_PICP80 = (0.78, 0.82)


def crps(y, q, taus) -> np.ndarray:
    from nqexp.metrics import crps_quantile

    return crps_quantile(y, q, taus)


def spearman(a, b) -> float:
    """Spearman correlation; NaN for a constant forecast (climatology's median), without a warning."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def paired(d: np.ndarray, ts, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float, float]:
    """Mean of the per-sample CRPS differences d, its moving-block bootstrap 95% CI (one-day blocks) and
    the bootstrap p-value of mean 0 (the report's, docs/metrics.md §12)."""
    import pandas as pd

    from nqexp.metrics import block_bootstrap_replicates, bootstrap_p_value

    per_day = pd.Series(1, index=pd.DatetimeIndex(ts)).groupby(pd.DatetimeIndex(ts).floor("D")).size().median()
    reps = block_bootstrap_replicates(d, np.mean, block=max(1, int(per_day)), n_boot=n_boot, seed=seed)
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return float(d.mean()), float(lo), float(hi), bootstrap_p_value(reps)


def score(q_model, data, oracle, oracle_ic, taus) -> tuple[list[dict], dict]:
    """Per-horizon rows (model and baselines vs the oracle, ICs, calibration, paired verdicts) and goal verdicts."""
    from nqexp import metrics as M

    test = data.datasets["test"]
    y = test.y.astype(np.float64)
    sources = {"model": q_model, **{k: v.astype(np.float64) for k, v in data.baselines["test"].items()}}
    rows_o = oracle.rows
    rows = []
    for j, minutes in enumerate(data.horizon_minutes):
        label = M.horizon_label(minutes)
        c_or = crps(y[rows_o, j], oracle.q[:, j], taus).mean()
        # ICs on the (larger) IC origins: the oracle's E[y | state] against each source's median.
        rows_i = oracle_ic.rows
        row = {"horizon": label, "n_origins": int(rows_o.size), "n_ic_origins": int(rows_i.size),
               "n_test": int(len(y)), "oracle_crps": float(c_or),
               "ic_oracle": spearman(oracle_ic.mean[:, j], y[rows_i, j])}
        for name, q in sources.items():
            row[f"{name}_over_oracle"] = float(crps(y[rows_o, j], q[rows_o, j], taus).mean() / c_or)
            row[f"ic_{name}"] = spearman(q[rows_i, j, len(taus) // 2], y[rows_i, j])
            row[f"ic_{name}_test"] = spearman(q[:, j, len(taus) // 2], y[:, j])
        # Issue 21 §1: the spread of the model's median against the oracle's conditional mean (on the IC
        # origins, in sigma-hat units): an efficient median has sd <= the oracle's (sd = corr x oracle sd).
        scale_i = test.scale[rows_i, j].astype(np.float64)
        med = sources["model"][rows_i, j, len(taus) // 2] / scale_i
        best = oracle_ic.mean[:, j] / scale_i
        row["median_sd_model"], row["median_sd_oracle"] = float(np.std(med)), float(np.std(best))
        row["median_corr_oracle"] = float(np.corrcoef(med, best)[0, 1]) if np.ptp(med) > 0 else float("nan")
        qm = sources["model"][:, j]
        cov = (y[:, j, None] <= qm).mean(axis=0)  # (Q,)
        row["calib_err"] = float(np.mean(np.abs(cov - np.asarray(taus))))
        lo, hi = taus.index(0.1), taus.index(0.9)
        row["picp80"] = float(((y[:, j] >= qm[:, lo]) & (y[:, j] <= qm[:, hi])).mean())
        c_model = crps(y[:, j], qm, taus)
        for name, q in sources.items():
            if name == "model":
                continue
            c_b = crps(y[:, j], q[:, j], taus)
            mean, lo_ci, hi_ci, p = paired(c_model - c_b, test.ts)
            row[f"vs_{name}"] = {"diff": mean, "ci": [lo_ci, hi_ci], "rel_pct": 100 * mean / float(c_b.mean()),
                                 "p": p}
        rows.append(row)
    names = [k for k in sources if k != "model"]
    # Verdicts after Benjamini-Hochberg over every model-vs-baseline comparison of the table (H x baselines).
    p_adj = iter(M.ADJUSTMENTS["bh"](np.array([r[f"vs_{b}"]["p"] for r in rows for b in names])))
    for r in rows:
        for b in names:
            v = r[f"vs_{b}"]
            v["p_adj"] = float(next(p_adj))
            v["verdict"] = ("no clear difference" if v["p_adj"] >= 0.05 else "better" if v["diff"] < 0 else "worse")
    beat_all = sum(all(r[f"vs_{b}"]["diff"] < 0 for b in names) for r in rows)
    beat_all_sig = sum(all(r[f"vs_{b}"]["verdict"] == "better" for b in names) for r in rows)
    verdicts = {
        "crps_le_1.01_oracle": all(r["model_over_oracle"] <= GOAL_CRPS_OVER_ORACLE for r in rows),
        "ic_ge_0.7_oracle_15_60m": all(r["ic_model"] >= GOAL_IC_SHARE * r["ic_oracle"]
                                       for r in rows if r["horizon"] in GOAL_IC_HORIZONS),
        "beats_every_baseline_4_of_5": beat_all >= GOAL_BEAT_ALL_HORIZONS,
        "ci_excludes_0_on_3": beat_all_sig >= GOAL_BEAT_ALL_SIGNIFICANT,
        "calib_err_le_0.02": all(r["calib_err"] <= GOAL_CALIB_ERR for r in rows),
        "picp80_in_0.78_0.82": all(GOAL_PICP80[0] <= r["picp80"] <= GOAL_PICP80[1] for r in rows),
        "long_median_sd_le_oracle": all(r["median_sd_model"] <= r["median_sd_oracle"]
                                        for r in rows if r["horizon"] in ("2h", "4h")),
        "long_crps_le_best_baseline": all(r["model_over_oracle"] <= min(r[f"{b}_over_oracle"] for b in names)
                                          for r in rows if r["horizon"] in ("2h", "4h")),
    }
    verdicts["beat_all_horizons"], verdicts["beat_all_significant"] = beat_all, beat_all_sig
    verdicts["all"] = all(v for v in verdicts.values() if isinstance(v, bool))
    return rows, verdicts


def forecasts(checkpoint, data, tspec, taus) -> tuple[np.ndarray, np.ndarray]:
    """(raw, recalibrated) test quantiles (n, H, Q) of a checkpoint; recalibrated as the spec's eval
    section says (fitted on val, as a trial does; the same as raw when it says none)."""
    from nqexp.evaluation import recalibrate
    from nqexp.model.train import load_checkpoint_model, predict

    model, _ = load_checkpoint_model(checkpoint)
    val, test = data.datasets["val"], data.datasets["test"]
    q_val = predict(model, val, 512, "cpu").q.astype(np.float64)
    q_test = predict(model, test, 512, "cpu").q.astype(np.float64)
    recal = recalibrate.fit(q_val, val.y, val.scale, taus, method=tspec.eval.recalibrate,
                            median_shrink=tspec.eval.median_shrink)
    log.info("%s: recalibration %s, median kept %s", checkpoint, tspec.eval.recalibrate,
             np.round(recal.shrink, 2).tolist())
    return q_test, recal.apply(q_test, test.scale)


def _cell(v: dict) -> str:
    """'-0.39% [-0.60, -0.18] better': a paired difference in % of the baseline's CRPS, its CI and verdict."""
    per = v["rel_pct"] / v["diff"] if v["diff"] else float("nan")  # % per unit of CRPS difference
    return f"{v['rel_pct']:+.2f}% [{v['ci'][0] * per:+.2f}, {v['ci'][1] * per:+.2f}] {v['verdict']}"


def markdown(rows, verdicts, with_model: bool = True) -> str:
    names = [k[:-len("_over_oracle")] for k in rows[0] if k.endswith("_over_oracle")]
    if not with_model:
        names = [n for n in names if n != "model"]
    head = ("| horizon | " + " | ".join(f"{n} / oracle" for n in names) + " | IC oracle | "
            + " | ".join(f"IC {n}" for n in names) + (" | calib err | PICP80 |" if with_model else " |") + "\n")
    head += "|" + " --- |" * (1 + 2 * len(names) + 1 + (2 if with_model else 0)) + "\n"
    lines = []
    for r in rows:
        cells = [f"{r[f'{n}_over_oracle']:.4f}" for n in names] + [f"{r['ic_oracle']:+.3f}"]
        cells += ["n/a" if np.isnan(r[f"ic_{n}"]) else f"{r[f'ic_{n}']:+.3f}" for n in names]
        if with_model:
            cells += [f"{r['calib_err']:.4f}", f"{r['picp80']:.3f}"]
        lines.append(f"| {r['horizon']} | " + " | ".join(cells) + " |")
    out = head + "\n".join(lines) + "\n"
    if with_model:
        base = [n for n in names if n != "model"]
        out += ("\nPaired CRPS difference, model − baseline, whole test split (% of the baseline's CRPS [95% "
                "block-bootstrap CI]; verdicts after Benjamini-Hochberg over these "
                f"{len(rows) * len(base)} comparisons):\n\n| horizon | " + " | ".join(base) + " |\n|" + " --- |" * (len(base) + 1) + "\n")
        for r in rows:
            out += f"| {r['horizon']} | " + " | ".join(
                _cell(r[f"vs_{b}"]) for b in base) + " |\n"
        checks = ", ".join(f"{k}: {'PASS' if v else 'MISS'}" for k, v in verdicts.items()
                           if isinstance(v, bool) and k != "all")
        out += ("\nThe model's median in sigma-hat units against the oracle's conditional mean (IC origins):\n\n"
                "| horizon | sd model | sd oracle | corr |\n| --- | --- | --- | --- |\n")
        for r in rows:
            out += (f"| {r['horizon']} | {r['median_sd_model']:.3f} | {r['median_sd_oracle']:.3f} | "
                    f"{r['median_corr_oracle']:+.2f} |\n")
        out += (f"\nGoals: {checks} (beats every baseline on {verdicts['beat_all_horizons']}/5 horizons, "
                f"CI excluding 0 on {verdicts['beat_all_significant']})\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(DEFAULT_SPEC))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--origins", type=int, default=1000, help="test origins the oracle simulates")
    ap.add_argument("--paths", type=int, default=1000, help="Monte Carlo paths per origin")
    ap.add_argument("--ic-origins", type=int, default=5000, help="test origins for the ICs (oracle mean vs median)")
    ap.add_argument("--ic-paths", type=int, default=200, help="paths per IC origin (the mean needs few)")
    ap.add_argument("--no-train", action="store_true", help="baselines against the oracle only")
    ap.add_argument("--db", default=None, help="DuckDB file (default: a fresh one in a temp dir)")
    ap.add_argument("--work-dir", default=None, help="checkpoints go here (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write every result to this file")
    ap.add_argument("--checkpoints", nargs="+", default=None, metavar="CKPT",
                    help="score these trained checkpoints (best-*.pt of trials on the spec's last fold, e.g. from "
                         "`nqexp run experiments/quality_ablation.yaml`) instead of training; with two or more, "
                         "also their seed ensemble (the mean of their recalibrated quantiles)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    from nqexp.evaluation.known_answer import mc_oracle
    from nqexp.experiment import spec as spec_mod
    from nqexp.experiment.pipeline import prepare_data
    from nqexp.experiment.track import NullTracker
    from nqexp.model.train import train

    tmp = tempfile.TemporaryDirectory(prefix="bench_quality_")
    db_path = args.db or str(Path(tmp.name) / "demo.duckdb")
    work_dir = Path(args.work_dir or tmp.name)
    # The oracle comparisons are per split: the spec's own dates (its last fold), unless --set says otherwise.
    one_fold = [] if any(o.startswith("splits.folds") for o in args.overrides) else ["splits.folds=1"]
    spec = spec_mod.load_spec(args.spec, overrides=list(args.overrides) + one_fold + [f"seeds=[{args.seeds[0]}]"])
    tspec = spec.trials()[0].spec
    taus = tuple(float(t) for t in tspec.model.quantiles)
    t0 = time.perf_counter()
    data = prepare_data(tspec, db_path)
    for note in data.notes:
        log.info(note)
    prep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    oracle = mc_oracle(db_path, tspec, data.datasets["test"], taus, args.origins, args.paths)
    oracle_ic = mc_oracle(db_path, tspec, data.datasets["test"], taus, args.ic_origins, args.ic_paths, seed=1)
    oracle_s = time.perf_counter() - t0
    log.info("oracle: %d origins x %d paths (quantiles), %d x %d (ICs) in %.0fs", oracle.rows.size, args.paths,
             oracle_ic.rows.size, args.ic_paths, oracle_s)
    results = []
    if args.no_train:
        climatology = data.baselines["test"]["climatology"].astype(np.float64)
        rows, verdicts = score(climatology, data, oracle, oracle_ic, taus)  # the "model" slot is a placeholder here
        print(markdown(rows, verdicts, with_model=False), flush=True)
        results.append({"rows": rows, "prep_seconds": prep_s, "oracle_seconds": oracle_s})
    if args.checkpoints:
        members = []
        for path in args.checkpoints:
            q_raw, q_cal = forecasts(path, data, tspec, taus)
            members.append(q_cal)
            for label, q in (("raw", q_raw), ("recalibrated", q_cal)):
                rows, verdicts = score(q, data, oracle, oracle_ic, taus)
                text = markdown(rows, verdicts)
                print(f"\n## {path} ({label})\n\n{text}", flush=True)
                results.append({"checkpoint": path, "forecast": label, "rows": rows, "verdicts": verdicts,
                                "markdown": text})
        if len(members) > 1:
            rows, verdicts = score(np.mean(members, axis=0), data, oracle, oracle_ic, taus)
            text = markdown(rows, verdicts)
            print(f"\n## ensemble of {len(members)} (mean of the recalibrated quantiles)\n\n{text}", flush=True)
            results.append({"checkpoint": "ensemble", "forecast": "recalibrated", "rows": rows,
                            "verdicts": verdicts, "markdown": text})
        if args.json:
            Path(args.json).write_text(json.dumps({"spec": args.spec, "overrides": args.overrides,
                                                   "results": results}, indent=1, default=str))
        return 0 if all(r["verdicts"]["all"] for r in results) else 1
    for seed in ([] if args.no_train else args.seeds):
        sspec = spec_mod.load_spec(args.spec, overrides=list(args.overrides) + one_fold
                                   + [f"seeds=[{seed}]"]).trials()[0].spec
        cpu0, t1 = time.process_time(), time.perf_counter()
        result = train(sspec.model, sspec.train, {"train": data.datasets["train"], "val": data.datasets["val"]},
                       NullTracker(), work_dir / f"seed{seed}", seed=seed, horizon_minutes=data.horizon_minutes,
                       device="cpu", resume=False,
                       on_epoch=lambda e, m: log.info("seed %d epoch %d: val crps %.6g", seed, e, m["val/crps"]))
        train_wall, train_cpu = time.perf_counter() - t1, time.process_time() - cpu0
        q_raw, q = forecasts(result.checkpoint, data, sspec, taus)  # (n, H, Q) each
        rows, verdicts = score(q, data, oracle, oracle_ic, taus)
        text = markdown(rows, verdicts)
        print(f"\n## seed {seed}: {result.epochs} epochs, {result.steps} steps, best epoch {result.best_epoch}, "
              f"train {train_wall:.0f} s wall / {train_cpu:.0f} s CPU ({torch.get_num_threads()} threads, "
              f"load avg {os.getloadavg()[0]:.1f})\n\n{text}", flush=True)
        results.append({"seed": seed, "rows": rows, "verdicts": verdicts, "markdown": text,
                        "epochs": result.epochs, "steps": result.steps, "best_epoch": result.best_epoch,
                        "history": result.history, "train_wall_seconds": train_wall, "train_cpu_seconds": train_cpu,
                        "prep_seconds": prep_s, "oracle_seconds": oracle_s, "load_avg": os.getloadavg()})
        if args.json:
            Path(args.json).write_text(json.dumps({"created": dt.datetime.now().isoformat(timespec="seconds"),
                                                   "spec": args.spec, "overrides": args.overrides,
                                                   "results": results}, indent=1, default=str))
    if args.json and args.no_train:
        Path(args.json).write_text(json.dumps({"results": results}, indent=1, default=str))
    return 0 if args.no_train or all(r["verdicts"]["all"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
