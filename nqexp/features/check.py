"""Check a feature set: statistics, collinearity, and two point-in-time checks.

- The **truncation (leakage) check** recomputes the features on the stored, already adjusted
  bars cut after a bar t: a feature at t that reads a later bar changes.
- The **raw truncation check** (`point_in_time_check`) goes one step further back: it removes the
  RAW bars after t and rebuilds everything (rolls, ratio back-adjustment, bars, features, targets)
  in a scratch in-memory database. A roll after t rescales every earlier back-adjusted price, so a
  feature in price units (a level, an EMA difference in points) changes at every earlier bar
  there, which the first check cannot see (docs/features.md §13).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nqexp.data import bars, db
from nqexp.errors import DataError
from nqexp.features.catalog import FeatureSet, as_set
from nqexp.features.engine import Computed, compute
from nqexp.features.store import build

log = logging.getLogger(__name__)


# Check: statistics, collinearity, leakage
# ---------------------------------------------------------------------------------------------

@dataclass
class FeatureStats:
    name: str
    group: str | None
    n: int            # rows after warm-up
    n_nan: int
    n_inf: int
    min: float
    max: float
    mean: float
    std: float


@dataclass
class LeakageResult:
    cut_index: int       # last bar kept
    cut_ts: np.datetime64
    rows_compared: int
    max_abs_diff: float  # over all features at bars <= cut (NaN vs NaN counts as equal)
    n_mismatch: int      # values not equal to within 1e-12 relative (or NaN on one side only)
    worst_feature: str | None
    ok: bool


@dataclass
class ColumnDiff:
    """One column (a feature or a target) at the bars <= a cut: full rebuild vs truncated rebuild."""

    name: str
    rows: int              # values compared
    max_abs_diff: float    # NaN on one side only counts as inf
    max_rel_diff: float    # |diff| / max(|full value|, the column's median |full value|)
    n_mismatch: int        # values whose rel diff exceeds the tolerance (or NaN on one side only)

    @property
    def ok(self) -> bool:
        return self.n_mismatch == 0


@dataclass
class PointInTimeResult:
    """The raw truncation check at one cut: raw bars after the cut bar removed, everything rebuilt."""

    cut_ts: np.datetime64      # start (UTC) of the last bar of the set kept; bars up to it are compared
    raw_until: np.datetime64   # raw 1-minute bars with ts < this are kept (the cut bar's end)
    rolls_removed: int         # rolls of the full rebuild that the truncated rebuild no longer has
    rows_compared: int
    columns: list[ColumnDiff]  # the set's features, then fwd_ret_h
    note: str = ""             # why nothing could be compared, if so

    @property
    def ok(self) -> bool:
        return not self.note and all(c.ok for c in self.columns)

    @property
    def offending(self) -> list[str]:
        return [c.name for c in self.columns if not c.ok]


@dataclass
class CheckReport:
    set_name: str
    symbol: str
    table: str
    rows: int
    warmup_bars: int
    stats: list[FeatureStats]
    correlated: list[tuple[str, str, float]]   # |corr| > threshold, strongest first
    leakage: list[LeakageResult]
    corr_threshold: float = 0.95
    point_in_time: list[PointInTimeResult] = field(default_factory=list)   # the raw truncation check
    point_in_time_note: str = ""               # why it did not run (no raw bars, --raw-cuts 0)
    point_in_time_rtol: float = 1e-9           # its tolerance (POINT_IN_TIME_RTOL)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.leakage) and all(r.ok for r in self.point_in_time)

    def point_in_time_columns(self) -> list[ColumnDiff]:
        """Each column's worst difference over all raw cuts (in the set's order, then the targets)."""
        return merge_columns(self.point_in_time)

    def point_in_time_offending(self) -> list[str]:
        """Columns that changed at some bar <= a cut when the raw bars after it were removed."""
        return [c.name for c in self.point_in_time_columns() if not c.ok]


def _compare(a: np.ndarray, b: np.ndarray, rtol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Per-element mismatch mask and abs diff; NaN==NaN and equal infinities count as equal."""
    both_nan = np.isnan(a) & np.isnan(b)
    same = (a == b) | both_nan
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - b))
        tol = rtol * np.maximum(np.abs(b), 1.0)
        mismatch = ~same & ~(diff <= tol)
    return mismatch, np.where(np.isnan(diff), np.inf, diff)


def leakage_check(con, fs: FeatureSet | str, symbol: str, cuts, full: Computed | None = None,
                  path: str | Path | None = None) -> list[LeakageResult]:
    """Recompute on bars truncated after each cut index; features at bars <= cut must not change."""
    fs = as_set(fs, path)
    full = full or compute(con, fs, symbol)
    results = []
    for cut in cuts:
        cut = int(cut)
        part = compute(con, fs, symbol, until=full.ts[cut])
        a, b = part.X, full.X[: cut + 1]                                            # (cut+1, V)
        if a.shape != b.shape or not np.array_equal(part.ts, full.ts[: cut + 1]):
            results.append(LeakageResult(cut, full.ts[cut], a.shape[0], np.inf, a.size, None, False))
            continue
        mismatch, diff = _compare(a, b)
        per_feature = mismatch.sum(axis=0)
        worst = int(np.argmax(diff.max(axis=0))) if diff.size else 0
        results.append(LeakageResult(
            cut_index=cut, cut_ts=full.ts[cut], rows_compared=a.shape[0],
            max_abs_diff=float(diff.max()) if diff.size else 0.0, n_mismatch=int(per_feature.sum()),
            worst_feature=fs.columns[worst] if diff.size and diff.max() > 0 else None,
            ok=bool(per_feature.sum() == 0),
        ))
    return results


# The raw truncation check
# ---------------------------------------------------------------------------------------------

POINT_IN_TIME_RTOL = 1e-9     # below float32 storage (6e-8 relative), 100x the rebuild round-off (~1e-11)
TAIL_WARMUPS = 4              # the scratch copy starts this many warm-ups (and a session) before the first cut
_RAW_COLUMNS = "symbol, ts, open, high, low, close, volume, instrument_id, contract, source"
REBUILT_TABLES = tuple(f"bars_{f}m" for f in bars.SUPPORTED_FREQS)


def _table_minutes(fs: FeatureSet) -> int:
    """The bar size of the set's bars table (bars_5m -> 5)."""
    return int(fs.bars_table.removeprefix("bars_").removesuffix("m"))


def merge_columns(results: list[PointInTimeResult]) -> list[ColumnDiff]:
    """Per column, the worst difference over several cuts (columns in their first-seen order)."""
    merged: dict[str, ColumnDiff] = {}
    for r in results:
        for c in r.columns:
            m = merged.get(c.name)
            merged[c.name] = c if m is None else ColumnDiff(
                c.name, m.rows + c.rows, max(m.max_abs_diff, c.max_abs_diff), max(m.max_rel_diff, c.max_rel_diff),
                m.n_mismatch + c.n_mismatch)
    return list(merged.values())


def _column_diff(name: str, a: np.ndarray, b: np.ndarray, rtol: float) -> ColumnDiff:
    """`a` (truncated rebuild) against `b` (full rebuild): NaN == NaN; tolerance relative to the column's scale."""
    finite = np.isfinite(b)
    nonzero = np.abs(b[finite & (b != 0)])
    scale = float(np.median(nonzero)) if nonzero.size else 1.0
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - b))
        diff = np.where(np.isnan(diff), np.inf, diff)                   # NaN on one side only
        rel = np.where(same, 0.0, diff / np.fmax(np.abs(b), scale))        # inf where b (or a) is NaN
    return ColumnDiff(name, int(a.size), float(diff.max()) if diff.size else 0.0,
                      float(rel.max()) if rel.size else 0.0, int((rel > rtol).sum()))


def _raw_filter(con, symbol: str) -> tuple[str, list]:
    """The WHERE clause selecting the raw bars a build of `symbol` reads (the series, or its contracts)."""
    if bars.detect_mode(con, symbol) == "continuous":
        return "symbol = ?", [symbol]
    return "regexp_full_match(symbol, ?)", [bars.per_contract_pattern(symbol)]


def has_raw_bars(con, symbol: str) -> bool:
    """Whether raw_bars holds the series `symbol` (or per-contract series of that root)."""
    try:
        bars.detect_mode(con, symbol)
    except DataError:
        return False
    return True


def _build_settings(con, symbol: str) -> tuple[object, bool]:
    """(given rolls as DataFrame(ts, ratio) or None, detect) reproducing how the stored bars were built."""
    rolls, _ = bars.stored_rolls(con, symbol)
    methods = [str(m) for m in rolls["method"]] if len(rolls) else []
    given = rolls[[("given" in m) for m in methods]] if methods else rolls
    given_rolls = None
    if len(given):
        given_rolls = pd.DataFrame({"ts": pd.to_datetime(given["ts"]).astype("datetime64[us]"),
                                    "ratio": given["ratio"].astype(float)}).reset_index(drop=True)
    # Price-jump detection is on by default; a build without any detected splice may have turned it off.
    detect = not methods or any(m.startswith("price_jump") for m in methods)
    return given_rolls, detect


def _default_cuts(con, fs: FeatureSet, symbol: str, n_cuts: int, seed: int) -> list[np.datetime64]:
    """Cut bars (starts, UTC) of the set's stored bars: the last bar before the second-to-last roll
    (so the cut removes two rolls; before the only roll when there is one), then random bars after it."""
    ts = con.execute(f"select ts from {fs.bars_table} where symbol = ? order by ts", [symbol]).fetchnumpy()["ts"]
    ts = np.asarray(ts).astype("datetime64[us]")
    if len(ts) < 2 or n_cuts < 1:
        return []
    rolls, _ = bars.stored_rolls(con, symbol)
    roll_ts = np.sort(np.asarray(rolls["ts"].to_numpy(), dtype="datetime64[us]")) if len(rolls) \
        else np.array([], "datetime64[us]")
    cuts, lo = [], min(fs.warmup_bars, len(ts) - 2)
    freq = np.timedelta64(_table_minutes(fs), "m")
    usable = []
    for r in roll_ts:
        # The bar of the set that holds the roll starts at the roll's bucket; the cut is the bar before it.
        bucket = r - (r - np.datetime64("1970-01-01T00:00", "us")) % freq
        i = int(np.searchsorted(ts, bucket)) - 1
        if i >= lo:
            usable.append(i)
    if usable:
        roll_cut = usable[-2] if len(usable) >= 2 else usable[-1]
        cuts.append(roll_cut)
        lo = roll_cut + 1
    rng = np.random.default_rng(seed)
    pool = np.arange(lo, len(ts) - 1)
    extra = min(n_cuts - len(cuts), len(pool))
    if extra > 0:
        cuts += [int(i) for i in rng.choice(pool, size=extra, replace=False)]
    return sorted(ts[i] for i in sorted(set(cuts)))


def point_in_time_check(con, fs: FeatureSet | str, symbol: str, cuts=None, n_cuts: int = 3, seed: int = 0,
                        path: str | Path | None = None, rtol: float = POINT_IN_TIME_RTOL) -> list[PointInTimeResult]:
    """Truncate the RAW bars after each cut, rebuild everything in a scratch database, compare at bars <= cut.

    For each cut bar t (a bar start of the set's bars, UTC; by default the last bar before the
    second-to-last roll, so the cut removes two rolls, plus random later bars), the raw 1-minute
    bars after t's end are dropped and rolls, the ratio back-adjustment, the set's bars and its
    features and targets are rebuilt in a scratch in-memory DuckDB (the user's database is only
    read). Every feature and every fwd_ret_h must equal the full rebuild's at each bar <= t to
    `rtol` relative to max(|value|, the column's median |value|); NaN must stay NaN. Targets are
    compared where the truncated series still has them (t + h <= the cut).

    Both rebuilds start at a session `TAIL_WARMUPS` warm-ups before the first cut (a long series
    is not copied whole) and use the stored build's given rolls and roll detection. DataError
    when raw_bars holds no bars for `symbol`.
    """
    fs = as_set(fs, path)
    if fs.bars_table not in REBUILT_TABLES:
        raise DataError(f"feature set {fs.name} reads {fs.bars_table}, which a bars build does not write; "
                        f"the raw truncation check rebuilds only {', '.join(REBUILT_TABLES)}")
    where, params = _raw_filter(con, symbol)
    if cuts is None:
        cuts = _default_cuts(con, fs, symbol, n_cuts, seed)
    cuts = sorted(np.datetime64(c, "us") for c in cuts)
    if not cuts:
        return []
    freq = np.timedelta64(_table_minutes(fs), "m")
    # The scratch copy starts at the session of the bar TAIL_WARMUPS warm-ups before the first cut.
    back = TAIL_WARMUPS * max(fs.warmup_bars, 1)
    row = con.execute(
        f"select min(ts) from {fs.bars_table} where symbol = ? and session_date = ("
        f"  select session_date from {fs.bars_table} where symbol = ? and ts <= ? order by ts desc limit 1 offset ?)",
        [symbol, symbol, cuts[0].item(), back]).fetchall()
    start = row[0][0] if row and row[0][0] is not None else None
    raw = con.sql(f"select {_RAW_COLUMNS} from raw_bars where {where} and (? is null or ts >= ?) order by ts",
                  params=[*params, start, start]).to_arrow_table()
    given, detect = _build_settings(con, symbol)
    scratch = db.connect(":memory:")
    try:
        scratch.execute("set enable_progress_bar = false")
        scratch.register("_raw_all", raw)
        scratch.execute("create temp table _raw_tail as select * from _raw_all")
        scratch.unregister("_raw_all")
        del raw

        def rebuild(until):
            scratch.execute("delete from raw_bars")
            scratch.execute(f"insert into raw_bars ({_RAW_COLUMNS}) select {_RAW_COLUMNS} from _raw_tail "
                            "where ? is null or ts < ?", [until, until])
            first, last = scratch.execute("select min(ts), max(ts) from raw_bars").fetchall()[0]
            g = None
            if given is not None and first is not None:
                g = given[(given["ts"] > np.datetime64(first, "us")) & (given["ts"] <= np.datetime64(last, "us"))]
                g = g.reset_index(drop=True) if len(g) else None
            rep = bars.build_bars(scratch, symbol, [_table_minutes(fs)], given_rolls=g, detect=detect)
            return compute(scratch, fs, symbol), np.asarray(rep.rolls["ts"].to_numpy(), dtype="datetime64[us]")

        full, full_rolls = rebuild(None)
        results = []
        for cut in cuts:
            until = cut + freq
            part, _ = rebuild(until.item())
            n = int(np.searchsorted(full.ts, cut, side="right"))
            removed = int((full_rolls >= until).sum())
            if len(part.ts) != n or not np.array_equal(part.ts, full.ts[:n]):
                results.append(PointInTimeResult(cut, until, removed, min(n, len(part.ts)), [],
                                                 note=f"the rebuilt bars differ: {len(part.ts)} bars up to the cut, "
                                                      f"{n} in the full rebuild"))
                continue
            cols = [_column_diff(name, part.X[:, j], full.X[:n, j], rtol) for j, name in enumerate(fs.columns)]
            for k, h in enumerate(fs.horizons):
                m = max(n - h, 0)                      # targets the truncated series still has
                cols.append(_column_diff(f"fwd_ret_{h}", part.targets[:m, k], full.targets[:m, k], rtol))
            results.append(PointInTimeResult(cut, until, removed, n, cols))
        return results
    finally:
        scratch.close()


def check(con, set_name: FeatureSet | str, symbol: str, n_cuts: int = 5, seed: int = 0,
          corr_threshold: float = 0.95, path: str | Path | None = None, raw_cuts: int = 3) -> CheckReport:
    """Stats after warm-up per feature, pairs with |corr| > threshold, the truncation leakage check and
    the raw truncation check (`point_in_time_check` at `raw_cuts` cuts; 0 skips it).

    `path` is the user folder of feature sets (features.path), if any.
    """
    fs = as_set(set_name, path)
    report = build(con, fs, symbol)
    # Recomputed in float64: the table stores the features as REAL, and the truncation
    # check compares to 1e-12.
    full = compute(con, fs, symbol)
    w = min(fs.warmup_bars, len(full.ts))
    X = full.X[w:]                                                                   # (N - warmup, V)
    stats = []
    for j, name in enumerate(fs.columns):
        col = X[:, j]
        finite = col[np.isfinite(col)]
        stats.append(FeatureStats(
            name=name, group=fs.groups[j] if fs.groups else None, n=len(col),
            n_nan=int(np.isnan(col).sum()), n_inf=int(np.isinf(col).sum()),
            min=float(finite.min()) if finite.size else np.nan, max=float(finite.max()) if finite.size else np.nan,
            mean=float(finite.mean()) if finite.size else np.nan, std=float(finite.std()) if finite.size else np.nan,
        ))
    rows = np.isfinite(X).all(axis=1)
    pairs: list[tuple[str, str, float]] = []
    if rows.sum() > 2:
        Z = X[rows]
        sd = Z.std(axis=0)
        live = np.flatnonzero(sd > 0)
        corr = np.corrcoef(Z[:, live], rowvar=False)                                 # (V', V')
        for a in range(len(live)):
            for b in range(a + 1, len(live)):
                if abs(corr[a, b]) > corr_threshold:
                    pairs.append((fs.columns[live[a]], fs.columns[live[b]], float(corr[a, b])))
        pairs.sort(key=lambda p: -abs(p[2]))
    n = len(full.ts)
    rng = np.random.default_rng(seed)
    lo = min(w, n - 1)
    cuts = np.sort(rng.choice(np.arange(lo, n - 1), size=min(n_cuts, max(n - 1 - lo, 0)), replace=False)) \
        if n - 1 > lo else np.array([], dtype=int)
    leakage = leakage_check(con, fs, symbol, cuts, full=full)
    pit, note = [], ""
    if raw_cuts <= 0:
        note = "skipped (no raw cuts asked for)"
    elif not has_raw_bars(con, symbol):
        note = f"skipped: raw_bars holds no bars of {symbol!r} to rebuild from"
    elif fs.bars_table not in REBUILT_TABLES:
        note = f"skipped: {fs.bars_table} is not a table the bars build writes"
    else:
        pit = point_in_time_check(con, fs, symbol, n_cuts=raw_cuts, seed=seed)
        if not pit:
            note = "skipped: too few bars for a cut"
    return CheckReport(fs.name, symbol, report.table, n, fs.warmup_bars, stats, pairs, leakage, corr_threshold,
                       pit, note, POINT_IN_TIME_RTOL)
