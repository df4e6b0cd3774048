"""The feature engine: a feature set's SQL files, filters and rolling columns computed over one series.

Feature sets and their family files are catalog.py's; this module computes one set over one series.
At run time it checks that each family select returns exactly `bar_index` + the declared columns.

**Recursive filters.** DuckDB has no EMA, a recursive CTE costs ~24 s per EMA on 5.4M rows and
an Arrow UDF is wrong (it loses state at 2,048-row chunks; docs/stack_notes.md). So the SQL keeps
the definition and Python only runs the recursion: a family declares each filter it needs in
its header,

    -- filter ema_close_12 = ema(close, 12)
    -- filter wilder_dx_14 = wilder(100 * abs(a - b) / (a + b), 14)

where the first argument is any SQL expression over `feature_input` (including filters
declared before it) and the second the span. `ema` has alpha = 2/(n+1), `wilder` alpha = 1/n.
The engine evaluates the input expressions in SQL (one query per dependency level), runs the
exact recursion y_t = y_{t-1} + alpha (x_t - y_{t-1}) with scipy.signal.lfilter, seeded with
the first non-NaN x (pandas `ewm(alpha, adjust=False, ignore_na=True)`; NaN inputs are
skipped and the state carried), and appends the result to `feature_input` as a column the
family SQL reads. One filter of the same name may be declared by several files only with the
same definition.

**Rolling and running columns.** DuckDB's windowed aggregates cost ~0.25 s per million rows
each (segment trees), and their last bits depend on where the series starts (the tree is
aligned to absolute rows), so a chunked build could not equal the whole one. A family
declares sliding-window aggregates the same way as filters,

    -- rolling sum_sq_return_12 = sum(pow(ln(close / prev_close), 2), 12)
    -- running sum_v_rth = sum(volume) by rth_date

`rolling` kinds sum, mean, std_pop, std_samp run over the last n rows (NaN until n inputs
exist or while the window holds a NaN, pandas `rolling(n, min_periods=n)`), each value added
up in a fixed order that depends on its own window only; `running` sum / max run from the
first row (NULLs add nothing), a sum `by KEY` restarting where KEY changes. _input.sql's
counters are running columns. The SQL keeps every definition; lags stay SQL windows.

**Pipeline** (`compute`): `_input.sql` (bars of one symbol, optionally truncated at `until`, with
the event counters that define the target flags) -> filters -> each family file -> targets by
an index shift:
`fwd_ret_h[t] = ln C[t+h] - ln C[t]` and `fwd_flag_h[t]` bits (1 session end, 2 weekend or
holiday, 4 roll) where a counter differs between t and t+h. Series longer than CHUNK_ROWS run in session-date
chunks (`compute_chunks`): each reads its bars with a look-back overlap of the set's warm-up
and at least OVERLAP_SESSIONS sessions, and the recursive filters carry their state across,
so the chunks equal one unchunked run bit for bit while memory stays bounded. The store
(store.py) writes the result as a versioned table.

Features run on the back-adjusted continuous series across sessions and rolls (only the grok24
VWAP resets, at the RTH open). Each set's `warmup_bars` is the largest declared lookback;
windows should skip those bars.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nqexp.data.db import table_exists
from nqexp.data.sqlcheck import strip_comments
from nqexp.errors import DataError, SqlError
from nqexp.features.catalog import (
    FLAG_ROLL,
    FLAG_SESSION,
    FLAG_WEEKEND,
    INPUT_VIEW,
    LONG_BREAK_MINUTES,
    FeatureSet,
    FilterDecl,
    RollingDecl,
    as_set,
    file_label,
)

log = logging.getLogger(__name__)

# Sets with more bars than this are built in session-date chunks (bounded memory; see compute).
CHUNK_ROWS = 1_500_000
OVERLAP_SESSIONS = 3      # look-back sessions before a chunk, at least (the RTH-day VWAP reaches back one)


# ---------------------------------------------------------------------------------------------
# The recursive filter
# ---------------------------------------------------------------------------------------------

def recursive_filter(x: np.ndarray, alpha: float, state: float | None = None) -> np.ndarray:
    """Exact y_t = (1 - alpha) y_{t-1} + alpha x_t, seeded y = x at the first non-NaN x.

    NaN inputs are skipped (the state carries over and the output repeats it); outputs before
    the first non-NaN input are NaN. Equals pandas `Series.ewm(alpha=alpha, adjust=False,
    ignore_na=True).mean()` to round-off. `state` continues a run: the output just before
    x[0] (NaN or None: start afresh); the result is then bit for bit the continued run.
    """
    from scipy.signal import lfilter

    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    carry = state is not None and not np.isnan(state)
    out = np.full(x.shape, state if carry else np.nan)
    if not ok.any():
        return out
    xs = x[ok]
    zi = (1.0 - alpha) * (state if carry else xs[0])
    ys, _ = lfilter([alpha], [1.0, alpha - 1.0], xs, zi=[zi])
    if ok.all():
        return ys
    # Scatter back and carry the state over skipped inputs.
    pos = np.where(ok, np.cumsum(ok) - 1, -1)
    np.maximum.accumulate(pos, out=pos)
    valid = pos >= 0
    out[valid] = ys[pos[valid]]
    return out


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """y[t] = x[t - k], NaN for t < k."""
    out = np.empty_like(x)
    k = min(k, len(x))
    out[:k] = np.nan
    out[k:] = x[:len(x) - k]
    return out


def rolling_sum(x: np.ndarray, n: int) -> np.ndarray:
    """Sum of x[t-n+1..t]; NaN where fewer than n rows precede or the window holds a NaN.

    Each output is added up in one fixed order that depends only on its own window (a
    binary tree over power-of-two blocks, O(N log n)), never on where the series starts: a
    chunked build equals the whole one bit for bit. (DuckDB's windowed aggregates combine
    segment-tree nodes aligned to absolute row positions, so a shifted start changes the
    last bits, and each costs ~0.25 s per million rows.)
    """
    p = np.asarray(x, dtype=np.float64)
    acc, off, width = None, 0, 1
    while True:
        if n & width:
            part = _shift(p, off)                   # sum of x[t-off-width+1 .. t-off]
            acc = part if acc is None else acc + part
            off += width
        width <<= 1
        if width > n:
            return acc
        p = p + _shift(p, width >> 1)               # blocks of `width` rows


def rolling_std(x: np.ndarray, n: int, ddof: int) -> np.ndarray:
    """Two-pass standard deviation of each window of n rows (NaN rules of rolling_sum)."""
    x = np.asarray(x, dtype=np.float64)
    mean = rolling_sum(x, n) / n
    acc = np.zeros_like(x)
    for k in range(n):
        d = _shift(x, k) - mean
        acc += d * d
    return np.sqrt(acc / (n - ddof))


def running_sum(x: np.ndarray, key: np.ndarray | None = None) -> np.ndarray:
    """Running sum in row order (NaN adds nothing), restarting where `key` changes (NaN keys: one run).

    One sequential cumsum per run, so a value depends only on its run's rows (exact in chunks).
    """
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    if key is None:
        return np.cumsum(x)
    same = (key[1:] == key[:-1]) | (np.isnan(key[1:]) & np.isnan(key[:-1]))
    starts = np.concatenate([[0], np.flatnonzero(~same) + 1, [len(x)]])
    out = np.empty_like(x)
    for a, b in zip(starts[:-1], starts[1:]):
        np.cumsum(x[a:b], out=out[a:b])
    return out


def rolling(x: np.ndarray, kind: str, n: int) -> np.ndarray:
    """The declared sliding-window aggregate `kind` over the last n rows (see RollingDecl)."""
    if kind == "running_sum":
        return running_sum(x)                                # SQL sum: NULLs add nothing
    if kind == "running_max":
        return np.fmax.accumulate(x)                         # NaN until the first value, then ignored
    if kind == "sum":
        return rolling_sum(x, n)
    if kind == "mean":
        return rolling_sum(x, n) / n
    return rolling_std(x, n, 0 if kind == "std_pop" else 1)


def _filter_levels(decls) -> list[list]:
    """Group filters and rolling columns by dependency depth: level k reads only base columns and levels < k."""
    level: dict[str, int] = {}
    for decl in decls:
        deps = [n for n in level if re.search(rf"\b{re.escape(n)}\b", getattr(decl, "reads", decl.expr))]
        level[decl.name] = 1 + max((level[d] for d in deps), default=-1)
    out: list[list] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for decl in decls:
        out[level[decl.name]].append(decl)
    return out


# ---------------------------------------------------------------------------------------------
# Compute
# ---------------------------------------------------------------------------------------------

@dataclass
class Computed:
    """One computation of a feature set on one symbol's bars (float64, in ts order)."""

    ts: np.ndarray                 # (N,) datetime64[us]
    X: np.ndarray                  # (N, V) float64
    names: list[str]
    close: np.ndarray              # (N,) adjusted close
    targets: np.ndarray            # (N, H) float64
    target_flags: np.ndarray       # (N, H) uint8
    session_date: np.ndarray       # (N,) datetime64[D]
    minute_of_day_et: np.ndarray   # (N,) int16
    seconds: dict[str, float]


def fetch_columns(con, sql: str, params: dict | None, where: str) -> dict[str, np.ndarray]:
    """Run a query and return its columns as numpy arrays, NULL -> NaN for numeric columns.

    Goes through Arrow (2-4x cheaper than fetchnumpy here), and never through fetchnumpy's
    masked arrays, which np.asarray would silently fill with 0.0 (docs/stack_notes.md).
    """
    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        table = con.sql(sql, params=params).to_arrow_table() if params else con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise SqlError(f"{where} failed: {str(exc).splitlines()[0]}") from None
    out = {}
    for name, col in zip(table.column_names, table.columns):
        if col.null_count and (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            col = pc.fill_null(col.cast(pa.float64()), np.nan)
        out[name] = col.to_numpy()
    return out


def as_float64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _derive(con, fs: FeatureSet, base, carry: dict[str, tuple[np.ndarray, np.ndarray]] | None):
    """Append the set's filters and rolling columns to `base`, level by level (one SQL select each).

    `carry` ({name: (ts, values)} of the previous chunk) continues each recursive filter: rows
    the previous chunk covered take its values, and the recursion goes on from its last one,
    so a chunked build equals the whole one bit for bit. Returns (base, new carry).
    """
    import pyarrow as pa

    n = base.num_rows
    ts = base.column("ts").to_numpy()
    out_carry = {}
    for level in _filter_levels(fs.filters + fs.rolling):
        con.register(INPUT_VIEW, base)
        select = ", ".join(f"({d.expr})::double as {d.name}" for d in level)
        keys = sorted({d.key for d in level if getattr(d, "key", None)})
        select += "".join(f", ({k})::double as _key_{k}" for k in keys)
        cols = fetch_columns(con, f"select bar_index, {select} from {INPUT_VIEW}", None,
                      f"filter inputs {[d.name for d in level]}")
        idx = cols["bar_index"].astype(np.int64)
        in_order = np.array_equal(idx, np.arange(n))   # a plain scan keeps order; never trust it blindly
        for d in level:
            x = as_float64(cols[d.name])
            if not in_order:
                x = x[np.argsort(idx)]
            if isinstance(d, RollingDecl) and d.key:
                key = as_float64(cols[f"_key_{d.key}"])
                y = running_sum(x, key if in_order else key[np.argsort(idx)])
            elif isinstance(d, RollingDecl):
                y = rolling(x, d.kind, d.n)
            elif carry and d.name in carry and len(carry[d.name][0]):
                prev_ts, prev_y = carry[d.name]
                # This chunk's first rows repeat the previous chunk's last ones (ts is unique).
                start = int(np.searchsorted(prev_ts, ts[0]))
                m = min(len(prev_ts) - start, n)
                if m <= 0 or not np.array_equal(prev_ts[start:start + m], ts[:m]):
                    raise DataError("a feature chunk does not overlap the previous one; this is a bug")
                y = np.empty(n)
                y[:m] = prev_y[start:start + m]
                y[m:] = recursive_filter(x[m:], d.alpha, state=y[m - 1])
            else:
                y = recursive_filter(x, d.alpha)
            if isinstance(d, FilterDecl):
                out_carry[d.name] = (ts, y)
            base = base.append_column(d.name, pa.array(y))
    return base, out_carry


def _families(con, fs: FeatureSet, base, seconds: dict[str, float]) -> np.ndarray:
    """Run every family file over `base` (registered as feature_input): X (N, V) float64, column-major."""
    n = base.num_rows
    con.register(INPUT_VIEW, base)
    # Column-major, so each feature column is contiguous; every column is written below.
    X = np.empty((n, len(fs.columns)), order="F")                                # (N, V)
    col_index = {c: j for j, c in enumerate(fs.columns)}
    for f in fs.files:
        t2 = time.perf_counter()
        cols = fetch_columns(con, f.text, None, file_label(f.path))
        got = list(cols)
        if got != ["bar_index", *f.columns]:
            missing = [c for c in ["bar_index", *f.columns] if c not in got]
            extra = [c for c in got if c not in ["bar_index", *f.columns]]
            raise SqlError(f"{file_label(f.path)} returned {got}; its header declares bar_index + "
                           f"{list(f.columns)} (missing {missing}, extra {extra}), in that order")
        idx = cols["bar_index"].astype(np.int64)
        in_order = np.array_equal(idx, np.arange(n))
        if not in_order and not np.array_equal(np.sort(idx), np.arange(n)):
            raise SqlError(f"{file_label(f.path)} must return one row per bar of feature_input")
        for c in f.columns:
            if c in col_index:
                values = as_float64(cols[c])
                if in_order:
                    X[:, col_index[c]] = values
                else:
                    X[idx, col_index[c]] = values
        seconds[f.name] = seconds.get(f.name, 0.0) + time.perf_counter() - t2
    return X


def _targets(fs: FeatureSet, base) -> tuple[np.ndarray, np.ndarray]:
    """Forward log-returns and their flag bits by an index shift: (N, H) float64, (N, H) uint8."""
    n = base.num_rows
    log_close = np.log(as_float64(base.column("close").to_numpy()))
    counters = [(bit, base.column(name).to_numpy())
                for bit, name in ((FLAG_SESSION, "session_no"), (FLAG_WEEKEND, "long_break_no"), (FLAG_ROLL, "roll_no"))]
    H = len(fs.horizons)
    targets = np.full((n, H), np.nan, order="F")                                     # (N, H)
    flags = np.zeros((n, H), dtype=np.uint8, order="F")                              # (N, H)
    for k, h in enumerate(fs.horizons):
        if h < n:
            targets[:-h, k] = log_close[h:] - log_close[:-h]
            for bit, counter in counters:
                flags[:-h, k] |= np.where(counter[h:] != counter[:-h], bit, 0).astype(np.uint8)
    return targets, flags


def _input(con, fs: FeatureSet, symbol: str, since, until):
    """The set's _input.sql over bars with since <= ts <= until (either may be None), in bar_index order."""
    import duckdb
    import pyarrow as pa

    params = {"bars_table": fs.bars_table, "symbol": symbol, "long_break_minutes": LONG_BREAK_MINUTES,
              "until": None if until is None else np.datetime64(until, "us").item()}
    if _takes_since(fs):
        params["since"] = None if since is None else np.datetime64(since, "us").item()
    try:
        base = con.sql(fs.input_file.text, params=params).to_arrow_table()
    except duckdb.Error as exc:
        raise SqlError(f"{file_label(fs.input_file.path)} failed: {str(exc).splitlines()[0]}") from None
    bar_index = base.column("bar_index").to_numpy()
    if not np.array_equal(bar_index, np.arange(base.num_rows)):
        base = base.take(pa.array(np.argsort(bar_index, kind="stable")))   # _input.sql has no ORDER BY
    return base


def _takes_since(fs: FeatureSet) -> bool:
    """Whether the set's _input.sql takes $since (a user folder's own may not: no chunked builds then)."""
    return "$since" in strip_comments(fs.input_file.text)


@dataclass(frozen=True)
class _Chunk:
    since: np.datetime64 | None    # first input bar (look-back overlap included); None: the series start
    until: np.datetime64 | None    # last input bar (forward rows for the targets included); None: the end
    keep_from: np.datetime64 | None  # first bar this chunk outputs
    keep_to: np.datetime64 | None    # first bar it no longer outputs (the next chunk's keep_from)


def _plan_chunks(con, fs: FeatureSet, symbol: str, until, chunk_rows: int) -> list[_Chunk]:
    """Session-date chunks of about chunk_rows bars, each with its look-back and forward overlap.

    The look-back covers the set's warm-up (every window's reach) and at least OVERLAP_SESSIONS
    whole sessions (the RTH-day VWAP reaches back to the previous RTH open); recursive filters
    carry their state across instead. The forward part holds the bars the targets look at.
    """
    rows = con.execute(
        "select session_date, count(*), min(ts) from query_table($t::varchar) where symbol = $s::varchar "
        "and ($u::timestamp is null or ts <= $u::timestamp) group by session_date order by session_date",
        {"t": fs.bars_table, "s": symbol, "u": None if until is None else np.datetime64(until, "us").item()},
    ).fetchall()
    if not rows:
        return [_Chunk(None, until, None, None)]
    counts = np.array([r[1] for r in rows], dtype=np.int64)
    starts = [np.datetime64(r[2], "us") for r in rows]
    cum = np.concatenate([[0], np.cumsum(counts)])                                   # bars before session i
    bounds = [0]
    while cum[-1] - cum[bounds[-1]] > chunk_rows:
        nxt = int(np.searchsorted(cum, cum[bounds[-1]] + chunk_rows, side="right")) - 1
        bounds.append(max(nxt, bounds[-1] + 1))
    bounds.append(len(rows))
    back, ahead = fs.warmup_bars + 1, max(fs.horizons)
    chunks = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = a
        while s > 0 and (a - s < OVERLAP_SESSIONS or cum[a] - cum[s] < back):
            s -= 1
        e = b
        while e < len(rows) and cum[e] - cum[b] < ahead:
            e += 1
        chunks.append(_Chunk(
            since=None if s == 0 else starts[s],
            until=until if e == len(rows) else starts[e] - np.timedelta64(1, "us"),
            keep_from=None if a == 0 else starts[a],
            keep_to=None if b == len(rows) else starts[b],
        ))
    return chunks


def compute_chunks(con, fs: FeatureSet | str, symbol: str, *, until=None, path: str | Path | None = None,
                   chunk_rows: int | None = None):
    """Yield the set's Computed over `symbol`'s bars in session-date chunks, in time order.

    Features are causal and windows reach back at most the set's warm-up (or to the previous
    RTH open), so each chunk reads its bars with a look-back overlap and carries the
    recursive filters' state; concatenated, the chunks equal one unchunked computation bit
    for bit (tests/test_features.py proves it). `chunk_rows` defaults to CHUNK_ROWS; sets
    whose _input.sql takes no $since run in one piece.
    """
    fs = as_set(fs, path)
    if not table_exists(con, fs.bars_table):
        raise DataError(f"table {fs.bars_table} does not exist; build bars first (nqexp.data.bars.build_bars)")
    chunk_rows = CHUNK_ROWS if chunk_rows is None else int(chunk_rows)
    plan = _plan_chunks(con, fs, symbol, until, chunk_rows) if _takes_since(fs) else [_Chunk(None, until, None, None)]
    carry = None
    for chunk in plan:
        part, carry = _compute_one(con, fs, symbol, chunk, carry)
        if part is None:
            raise DataError(f"no rows for symbol {symbol!r} in {fs.bars_table}"
                            + ("" if until is None else f" at or before {until}"))
        yield part


def _compute_one(con, fs: FeatureSet, symbol: str, chunk: _Chunk, carry):
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    base = _input(con, fs, symbol, chunk.since, chunk.until)
    n = base.num_rows
    if n == 0:
        return None, carry
    seconds["input"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        base, carry = _derive(con, fs, base, carry)
        seconds["filters"] = time.perf_counter() - t1
        X = _families(con, fs, base, seconds)
    finally:
        con.unregister(INPUT_VIEW)
    t3 = time.perf_counter()
    targets, flags = _targets(fs, base)
    seconds["targets"] = time.perf_counter() - t3
    ts = base.column("ts").to_numpy().astype("datetime64[us]")
    lo = 0 if chunk.keep_from is None else int(np.searchsorted(ts, chunk.keep_from))
    hi = n if chunk.keep_to is None else int(np.searchsorted(ts, chunk.keep_to))
    keep = slice(lo, hi)
    part = Computed(
        ts=ts[keep], X=X[keep], names=list(fs.columns), close=as_float64(base.column("close").to_numpy())[keep],
        targets=targets[keep], target_flags=flags[keep],
        session_date=base.column("session_date").to_numpy().astype("datetime64[D]")[keep],
        minute_of_day_et=base.column("minute_of_day_et").to_numpy().astype(np.int16)[keep], seconds=seconds,
    )
    del base                                                                          # inputs + filters
    seconds["total"] = time.perf_counter() - t0
    return part, carry


def compute(con, fs: FeatureSet | str, symbol: str, *, until=None, path: str | Path | None = None,
            chunk_rows: int | None = None) -> Computed:
    """Run the set's SQL on `symbol`'s bars (ts <= `until` when given). Nothing is written.

    Long series run in session-date chunks (compute_chunks); the result is the same.
    """
    parts = list(compute_chunks(con, fs, symbol, until=until, path=path, chunk_rows=chunk_rows))
    if len(parts) == 1:
        return parts[0]
    seconds: dict[str, float] = {}
    for p in parts:
        for k, v in p.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
    return Computed(
        ts=np.concatenate([p.ts for p in parts]), X=np.concatenate([p.X for p in parts]),
        names=parts[0].names, close=np.concatenate([p.close for p in parts]),
        targets=np.concatenate([p.targets for p in parts]),
        target_flags=np.concatenate([p.target_flags for p in parts]),
        session_date=np.concatenate([p.session_date for p in parts]),
        minute_of_day_et=np.concatenate([p.minute_of_day_et for p in parts]), seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------
