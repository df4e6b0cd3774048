"""Window loader throughput for `migt24` (T=288, batch 128) on one core, against two references.

    python benchmarks/bench_windows.py                      # 1.1M bars x 24 vars, the issue's setting
    python benchmarks/bench_windows.py --bars 200000 --repeats 3

Measures windows/s of
  * nqexp.windows.WindowLoader: shuffled batches of (x, mask, temporal, y, scale, idx) torch tensors;
  * a naive loader: per sample, a pandas time slice of the last 24 h, padding, temporal columns, then
    torch.from_numpy on the stacked batch (what the loader replaces);
  * a plain numpy gather of the same x windows (no mask, temporal, padding or torch): the
    memory-bandwidth reference, both as np.take of (B, T) row indices and as one block copy of
    T consecutive rows per window (the copy the loader itself uses).
All three run in the same process on the same arrays with torch.set_num_threads(1); each number is
the median of --repeats runs, and the ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import time

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
    """Per-sample pandas slicing: the loader nqexp.windows replaces."""
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


def rate(fn, n_windows: int, repeats: int) -> float:
    """Median windows/s over repeats of fn() (which produces n_windows windows)."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(n_windows / (time.perf_counter() - t0))
    return float(np.median(runs))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=1_100_000, help="5-minute bars (1.1M ~ 16 years)")
    ap.add_argument("--vars", type=int, default=24)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=300, help="batches per timed run (repeats+1 runs must fit one epoch)")
    ap.add_argument("--naive-batches", type=int, default=6, help="batches per timed naive run")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import torch

    from nqexp.windows import SplitConfig, WindowConfig, WindowLoader, dataset_arrays, fit_scalers, make_splits

    torch.set_num_threads(1)
    cfg = WindowConfig.migt24()
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
    loader = WindowLoader.from_dataset(ds, batch_size=args.batch, shuffle=True, seed=0)
    n_win = args.batch * args.batches

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
    r_loader = rate(run_loader, n_win, args.repeats)
    r_gather = rate(run_gather, n_win, args.repeats)
    r_block = rate(run_block, n_win, args.repeats)
    r_naive = rate(run_naive, n_naive, max(1, min(args.repeats, 3)))
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
    print(f"WindowLoader        {r_loader:>10,.0f} windows/s (median of {args.repeats})")
    print(f"plain numpy gather  {r_gather:>10,.0f} windows/s  (loader = {r_loader / r_gather:.2f}x of it)")
    print(f"numpy block copy    {r_block:>10,.0f} windows/s  (loader = {r_loader / r_block:.2f}x of it; x only)")
    print(f"naive pandas loader {r_naive:>10,.0f} windows/s  (loader = {r_loader / r_naive:.1f}x of it)")
    print(f"goals: >= 200,000 windows/s: {'met' if r_loader >= 200_000 else 'NOT met'}; "
          f">= 20x naive: {'met' if r_loader >= 20 * r_naive else 'NOT met'}")
    return out


if __name__ == "__main__":
    main()
