"""Window loader throughput for `migt24` (T=288, batch 128) on one core, against two references.

    python benchmarks/bench_windows.py                      # 1.1M bars x 24 vars, the issue's setting
    python benchmarks/bench_windows.py --quick --json out.json   # 200k bars, a smoke check of the script
    python benchmarks/bench_windows.py --bars 200000 --repeats 3

Measures windows/s of
  * nqexp.model.windows.WindowLoader as train.py uses it: shuffled batches of (x, mask, temporal, y, scale,
    idx) torch tensors written into reused buffers;
  * a plain numpy gather of the same x windows (no mask, temporal, padding or torch): np.take of
    (B, T) row indices, the memory-bound reference the loader's goal is stated against (issue 14);
    and one block copy of T consecutive rows per window (the copy the loader itself uses, x only);
  * a naive loader: per sample, a pandas time slice of the last 24 h, padding, temporal columns, then
    torch.from_numpy on the stacked batch (what the loader replaces).
All run in the same process on the same arrays with torch.set_num_threads(1), interleaved (each
repeat times every contender once), so a busy moment hits all of them. Rates are windows per CPU
second of this one-thread process (time.process_time), so other work on a shared machine does not
count against them; each number is the median of --repeats runs, and the ratios are what to compare
across machines. The target scale uses the EWMA sigma-hat: the MC-GARCH fit (tens of seconds at
1.1M bars) changes no loader work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd


def synthetic_arrays(n_bars: int, n_vars: int, seed: int = 0):
    """FeatureArrays-shaped arrays on a real Globex 5-minute timeline (Sun 18:00 .. Fri 17:00 ET, daily break)."""
    from types import SimpleNamespace

    per_session = 276
    days = pd.bdate_range("2010-06-07", periods=-(-n_bars // per_session))
    opens = days - pd.Timedelta(hours=6)  # 18:00 ET on the previous calendar day
    naive = (opens.to_numpy()[:, None] + pd.to_timedelta(np.arange(0, 1380, 5), unit="min").to_numpy()[None, :])
    et = pd.DatetimeIndex(naive.ravel()[:n_bars]).tz_localize("America/New_York")
    rng = np.random.default_rng(seed)
    close = 5000.0 * np.exp(np.cumsum(1e-3 * rng.standard_normal(n_bars)))
    X = rng.standard_normal((n_bars, n_vars), dtype=np.float32) * 3 + 1
    X[:, 0] = close
    horizons = (3, 6, 12, 24, 48)
    log_c = np.log(close)
    targets = np.full((n_bars, len(horizons)), np.nan)
    for j, h in enumerate(horizons):
        targets[:-h, j] = log_c[h:] - log_c[:-h]
    return SimpleNamespace(
        ts=et.tz_convert("UTC").tz_localize(None).to_numpy().astype("datetime64[us]"),
        X=np.ascontiguousarray(X), names=[f"v{i}" for i in range(n_vars)], close=close, horizons=horizons,
        freq_minutes=5, targets=targets, target_flags=np.zeros(targets.shape, np.uint8),
        session_date=(et + pd.Timedelta(hours=6)).tz_localize(None).normalize().to_numpy().astype("datetime64[D]"),
        minute_of_day_et=(et.hour * 60 + et.minute).to_numpy().astype(np.int16), groups=None)


def naive_batches(df: pd.DataFrame, temporal: pd.DataFrame, y: np.ndarray, scale: np.ndarray, ts: np.ndarray,
                  order: np.ndarray, batch_size: int, t_max: int, n_batches: int):
    """Per-sample pandas slicing: the loader nqexp.model.windows replaces."""
    import torch

    day = pd.Timedelta(hours=24)
    eps = pd.Timedelta(microseconds=1)
    for b in range(n_batches):
        xs, ms, tps = [], [], []
        for i in order[b * batch_size:(b + 1) * batch_size]:
            end = pd.Timestamp(ts[i])
            w = df.loc[end - day + eps:end].to_numpy(np.float32)  # (L, V) bars in (t - 24h, t]
            tw = temporal.loc[end - day + eps:end].to_numpy(np.float32)  # (L, 4)
            L = len(w)
            x = np.zeros((t_max, w.shape[1]), np.float32)
            x[:L] = w
            tp = np.zeros((t_max, 4), np.float32)
            tp[:L] = tw
            xs.append(x)
            tps.append(tp)
            ms.append(np.arange(t_max) < L)
        rows = order[b * batch_size:(b + 1) * batch_size]
        yield {"x": torch.from_numpy(np.stack(xs)), "mask": torch.from_numpy(np.stack(ms)),
               "temporal": torch.from_numpy(np.stack(tps)), "y": torch.from_numpy(y[rows]),
               "scale": torch.from_numpy(scale[rows])}


def rates(fns: dict, n_windows: dict, repeats: int) -> dict[str, float]:
    """Median windows per CPU second of each fn() (which produces n_windows[name] windows), interleaved."""
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            runs[name].append(n_windows[name] / max(time.process_time() - t0, 1e-9))
    return {k: float(np.median(v)) for k, v in runs.items()}


GOAL = 250_000  # windows/s on one core (issue 14)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=None, help="5-minute bars (default 1.1M ~ 16 years; 200k with --quick)")
    ap.add_argument("--vars", type=int, default=24)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=None, help="batches per timed run (default 300; 60 with --quick)")
    ap.add_argument("--naive-batches", type=int, default=None, help="batches per timed naive run (default 4; 1 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per contender (default 7; 3 with --quick)")
    ap.add_argument("--quick", action="store_true", help="small data and few repeats: a smoke check of this script")
    ap.add_argument("--json", metavar="OUT", help="write the result rows (figure, value, reference, goal, met) here")
    args = ap.parse_args(argv)
    quick = args.quick
    args.bars = args.bars or (200_000 if quick else 1_100_000)
    args.batches = args.batches or (60 if quick else 300)
    args.naive_batches = args.naive_batches or (1 if quick else 4)
    args.repeats = args.repeats or (3 if quick else 7)

    import torch

    from nqexp.model.windows import SplitConfig, WindowConfig, WindowLoader, dataset_arrays, fit_scalers, make_splits

    torch.set_num_threads(1)
    cfg = WindowConfig.migt24(sigma="ewma")
    t0 = time.perf_counter()
    arrays = synthetic_arrays(args.bars, args.vars)
    t_gen = time.perf_counter() - t0
    last = pd.Timestamp(arrays.session_date[-1])
    split = SplitConfig(train_start="2010-01-01", train_end=(last - pd.Timedelta(days=60)).date(),
                        val_start=(last - pd.Timedelta(days=59)).date(), val_end=(last - pd.Timedelta(days=30)).date(),
                        test_start=(last - pd.Timedelta(days=29)).date(), test_end=last.date())
    t0 = time.perf_counter()
    idx = make_splits(arrays, split, cfg)
    t_split = time.perf_counter() - t0
    t0 = time.perf_counter()
    scalers = fit_scalers(arrays, idx["train"], cfg)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = dataset_arrays(arrays, idx["train"], scalers, cfg)
    t_ds = time.perf_counter() - t0
    # As train.py uses it: each batch written into the same preallocated tensors.
    loader = WindowLoader.from_dataset(ds, batch_size=args.batch, shuffle=True, seed=0, reuse_buffers=True)
    n_win = args.batch * args.batches
    need = (args.repeats + 1) * args.batches
    if need > len(loader):
        raise SystemExit(f"{need} batches per epoch needed, the train split has {len(loader)}: use more --bars")

    # One long shuffled epoch; each timed run pulls the next `batches` batches from it, so the
    # once-per-epoch permutation is not charged to every run.
    loader_iter = iter(loader)

    def run_loader():
        for _ in range(args.batches):
            next(loader_iter)

    order = np.random.default_rng(1).permutation(len(ds))
    steps = np.arange(cfg.t_max)

    def run_gather():
        for b in range(args.batches):
            rows = order[b * args.batch:(b + 1) * args.batch]
            np.take(ds.bars, ds.start[rows, None] + steps, axis=0)  # (B, T, V), no mask/padding/torch

    blocks = np.lib.stride_tricks.as_strided(ds.bars, shape=(ds.bars.shape[0] - cfg.t_max + 1, cfg.t_max * args.vars),
                                             strides=(ds.bars.strides[0], ds.bars.strides[1]), writeable=False)

    def run_block():
        for b in range(args.batches):
            blocks[ds.start[order[b * args.batch:(b + 1) * args.batch]]]  # (B, T*V) x only, one block per window

    # The naive loader slices a DataFrame of the same scaled bars by time.
    bar_ts = pd.DatetimeIndex(arrays.ts[ds.idx[0] - ds.length[0] + 1:ds.idx[-1] + 1])
    df = pd.DataFrame(ds.bars[:-cfg.t_max], index=bar_ts)
    temporal = pd.DataFrame(ds.temporal[:-cfg.t_max], index=bar_ts)
    n_naive = args.batch * args.naive_batches

    def run_naive():
        for _ in naive_batches(df, temporal, ds.y, ds.scale, ds.ts, order, args.batch, cfg.t_max, args.naive_batches):
            pass

    # Same batches from both loaders: the naive one is a correct reference, not a strawman.
    ref = next(naive_batches(df, temporal, ds.y, ds.scale, ds.ts, order, args.batch, cfg.t_max, 1))
    ours = ds.batch(order[:args.batch])
    for k in ("x", "mask", "temporal", "y", "scale"):
        assert np.array_equal(ref[k].numpy(), ours[k]), f"naive and vectorized loaders disagree on {k}"

    run_loader(), run_gather(), run_block()  # warm caches and the allocator
    r = rates({"loader": run_loader, "gather": run_gather, "block": run_block},
              {"loader": n_win, "gather": n_win, "block": n_win}, args.repeats)
    r_loader, r_gather, r_block = r["loader"], r["gather"], r["block"]
    r_naive = rates({"naive": run_naive}, {"naive": n_naive}, max(1, min(args.repeats, 3)))["naive"]
    out = {"bars": args.bars, "vars": args.vars, "T": cfg.t_max, "batch": args.batch, "train_samples": len(ds),
           "loader_windows_per_s": r_loader, "naive_windows_per_s": r_naive, "numpy_gather_windows_per_s": r_gather,
           "numpy_block_copy_windows_per_s": r_block, "loader_vs_block_copy": r_loader / r_block,
           "loader_vs_naive": r_loader / r_naive, "loader_vs_gather": r_loader / r_gather,
           "setup_s": {"synthetic_arrays": t_gen, "make_splits": t_split, "fit_scalers": t_fit,
                       "dataset_arrays": t_ds}, "dataset_mb": ds.nbytes / 2**20}
    print(f"arrays: {args.bars:,} bars x {args.vars} vars; train samples {len(ds):,}; T={cfg.t_max}, "
          f"batch {args.batch}, torch threads {torch.get_num_threads()}")
    print(f"setup: make_splits {t_split:.2f}s, fit_scalers {t_fit:.2f}s, dataset_arrays {t_ds:.2f}s "
          f"({ds.nbytes / 2**20:.0f} MiB)")
    print(f"WindowLoader        {r_loader:>10,.0f} windows/s (median of {args.repeats}, per CPU second)")
    print(f"plain numpy gather  {r_gather:>10,.0f} windows/s  (loader = {100 * r_loader / r_gather:.0f}% of it)")
    print(f"numpy block copy    {r_block:>10,.0f} windows/s  (loader = {100 * r_loader / r_block:.0f}% of it; x only)")
    print(f"naive pandas loader {r_naive:>10,.0f} windows/s  (loader = {r_loader / r_naive:.1f}x of it)")
    print(f"goal: >= {GOAL:,} windows/s: {'met' if r_loader >= GOAL else 'NOT met'}")
    if args.json:
        row = {"figure": f"window loader, migt24 T={cfg.t_max} V={args.vars} batch {args.batch}, 1 core, "
                         f"{args.bars / 1e6:.2g}M bars",
               "value": round(r_loader), "unit": "windows/s",
               "reference": f"np.take gather {r_gather:,.0f} windows/s (loader {100 * r_loader / r_gather:.0f}% of it)",
               "ratio": r_loader / r_gather, "goal": f">= {GOAL:,} windows/s", "met": bool(r_loader >= GOAL),
               "runs": args.repeats}
        Path(args.json).write_text(json.dumps([row], indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
