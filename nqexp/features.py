"""Features are SQL: run a feature set's `sql/features/*.sql` files into one versioned table.

A **feature set** is a YAML file in `sql/features/` (`migt24.yaml`, `grok24.yaml`) naming its
bars table, its horizons, its SQL family files and its column order (and, for grok24, the
group of each column). Adding a set means adding files; nothing here changes. Sets can also
live in a user folder (the spec's `features.path`, the `path=` argument here): its YAML files
are sets with the same checks, their family files sit beside them, and the folder's own
`_input.sql` is used if it has one, else the shipped one. A set name is a plain identifier, so
it never leaves its folder, and a user set may not take a shipped set's name.

A **family file** (`sql/features/<family>.sql`) is one select over the relation
`feature_input` returning `bar_index` plus the columns its header declares, each named
`<family>_<name>`. Its header (docs/contributing.md) gives purpose, grain, inputs, params, lookback,
lookahead and columns. Contracts checked here, raising SqlError:
  * statically: the header is complete, column names carry the family prefix, no `following`,
    no `lead(`, and every window spec (inline `over (...)` or a `window` clause) writes its
    frame out and ends it at `current row`;
  * at run time: the select returns exactly `bar_index` + the declared columns.

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
so the chunks equal one unchunked run bit for bit while memory stays bounded. `build` writes
the result chunk by chunk (the features as REAL: load_arrays hands out float32 anyway) to
`features_<set>_<symbol slug>_<symbol hash>_<sql hash>` and records it in `feature_builds`
(003_features.sql); it is rebuilt only when the SQL hash or the bars fingerprint changes. The
slug alone would give `NQ.demo` and `nq-demo` one table, so the name carries a hash of the exact
symbol, and the table's comment records the symbol: a cached table is used only for its own
series.

Features run on the back-adjusted continuous series across sessions and rolls (only the grok24
VWAP resets, at the RTH open). Each set's `warmup_bars` is the largest declared lookback;
windows should skip those bars.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from nqexp.db import sql_root, table_exists
from nqexp.errors import DataError, SpecError, SqlError
from nqexp.sqlcheck import balanced, check_no_lookahead, parse_header, require_keys, strip_comments

log = logging.getLogger(__name__)

# Part of every set's hash: bump it when the filter recursion or the table layout changes.
ENGINE_VERSION = "features-engine-2"
FLAG_SESSION, FLAG_WEEKEND, FLAG_ROLL = 1, 2, 4
LONG_BREAK_MINUTES = 240.0   # a gap longer than this is a weekend or holiday (see _input.sql)
INPUT_FILE = "_input"
INPUT_VIEW = "feature_input"
REQUIRED_HEADER = ("purpose", "grain", "inputs", "params", "lookback", "lookahead", "columns")
# The _input.sql columns the engine itself reads (targets, flags, the stored table).
INPUT_ENGINE_COLUMNS = ("ts", "bar_index", "close", "session_date", "minute_of_day_et",
                        "session_no", "long_break_no", "roll_no")
SET_NAME_RULE = "lowercase letters, digits and _, not starting with a digit"
FILTER_KINDS = {"ema": lambda n: 2.0 / (n + 1.0), "wilder": lambda n: 1.0 / n}
ROLLING_KINDS = ("sum", "mean", "std_pop", "std_samp")
RUNNING_KINDS = ("sum", "max")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_FILTER_LINE = re.compile(r"^filter\s+(\w+)\s*=\s*(\w+)\s*\((.*),\s*(\d+)\s*\)\s*$")
_ROLLING_LINE = re.compile(r"^rolling\s+(\w+)\s*=\s*(\w+)\s*\((.*),\s*(\d+)\s*\)\s*$")
_RUNNING_LINE = re.compile(r"^running\s+(\w+)\s*=\s*(\w+)\s*\((.*)\)(?:\s+by\s+(\w+))?\s*$")
# Sets with more bars than this are built in session-date chunks (bounded memory; see compute).
CHUNK_ROWS = 1_500_000
OVERLAP_SESSIONS = 3      # look-back sessions before a chunk, at least (the RTH-day VWAP reaches back one)


# ---------------------------------------------------------------------------------------------
# Definitions: SQL files and feature sets
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FilterDecl:
    """A recursive filter a family file declares: `name = kind(expr, span)`."""

    name: str
    kind: str        # 'ema' (alpha = 2/(n+1)) or 'wilder' (alpha = 1/n)
    expr: str        # SQL expression over feature_input and earlier filters
    span: int
    source: str      # the file that declared it

    @property
    def alpha(self) -> float:
        return FILTER_KINDS[self.kind](self.span)


@dataclass(frozen=True)
class RollingDecl:
    """A sliding-window aggregate a family file declares: `name = kind(expr, n)` over the last n rows."""

    name: str
    kind: str        # 'sum' | 'mean' | 'std_pop' | 'std_samp'; 'running_sum' | 'running_max' (n = 0)
    expr: str        # SQL expression over feature_input and earlier filters / rolling columns
    n: int
    source: str
    key: str | None = None   # running sums restart where this column changes (runs of equal key)

    @property
    def reads(self) -> str:
        return f"{self.expr} {self.key or ''}"


@dataclass(frozen=True)
class SqlFile:
    name: str                      # file stem, e.g. 'migt_vol'
    path: Path
    text: str
    header: dict[str, str]
    columns: tuple[str, ...]       # declared output columns (families: without bar_index)
    filters: tuple[FilterDecl, ...]
    lookback: int                  # bars
    rolling: tuple[RollingDecl, ...] = ()


@dataclass(frozen=True)
class FeatureSet:
    name: str
    description: str
    bars_table: str                # 'bars_5m' | 'bars_1m'
    freq_minutes: int
    horizons: tuple[int, ...]      # bars ahead
    files: tuple[SqlFile, ...]     # family files, in the order they run
    columns: tuple[str, ...]       # V feature columns, in the set's order
    groups: tuple[str, ...] | None # group of each column (grok24), else None
    warmup_bars: int               # max lookback over the files
    filters: tuple[FilterDecl, ...]
    sql_hash: str                  # sha256 over the definition, every SQL text and ENGINE_VERSION
    input_file: SqlFile = field(repr=False, default=None)
    rolling: tuple[RollingDecl, ...] = ()

    @property
    def target_names(self) -> list[str]:
        return [f"fwd_ret_{h}" for h in self.horizons]

    @property
    def flag_names(self) -> list[str]:
        return [f"fwd_flag_{h}" for h in self.horizons]

    def table_name(self, symbol: str) -> str:
        # The slug keeps names readable; the hash of the exact symbol keeps `NQ.demo` and
        # `nq-demo` (one slug) in two tables.
        slug = re.sub(r"[^a-z0-9]+", "_", symbol.lower()).strip("_") or "series"
        tag = hashlib.sha256(symbol.encode()).hexdigest()[:8]
        return f"features_{self.name}_{slug}_{tag}_{self.sql_hash[:10]}"


def _features_dir() -> Path:
    return sql_root() / "features"


def _label(path: Path) -> str:
    """How messages name a definition file: sql/features/x for shipped ones, else the full path."""
    return f"sql/features/{path.name}" if path.parent == _features_dir() else str(path)


def _window_specs(code: str) -> list[str]:
    """Every inline `over (...)` spec and every `name as (...)` inside a `window` clause."""
    specs = [balanced(code, m.end() - 1) for m in re.finditer(r"\bover\s*\(", code, re.I)]
    for m in re.finditer(r"\bwindow\b", code, re.I):
        pos = m.end()
        while True:
            d = re.match(r"\s*(\w+)\s+as\s*\(", code[pos:], re.I)
            if not d:
                break
            open_at = pos + d.end() - 1
            body = balanced(code, open_at)
            specs.append(body)
            pos = open_at + len(body) + 2
            comma = re.match(r"\s*,", code[pos:])
            if not comma:
                break
            pos += comma.end()
    return specs


_FRAME = re.compile(r"\b(rows|range|groups)\s+between\s+.+?\s+and\s+current\s+row\s*$", re.I | re.S)


def parse_sql_file(path: Path, *, family: bool = True) -> SqlFile:
    """Read one SQL file, parse its header and check its static contract (SqlError if broken)."""
    text = path.read_text()
    name = path.stem
    where = _label(path)
    parsed = parse_header(text)
    header = dict(parsed.keys)
    filters: list[FilterDecl] = []
    rolling: list[RollingDecl] = []
    for line in parsed.other:
        m = _FILTER_LINE.match(line)
        r = _ROLLING_LINE.match(line)
        run = _RUNNING_LINE.match(line)
        if run and not r:
            rname, kind, expr = run.group(1), run.group(2).lower(), run.group(3).strip()
            if kind not in RUNNING_KINDS:
                raise SqlError(f"{where}: running {rname} has kind {kind!r}; expected one of {list(RUNNING_KINDS)}")
            if run.group(4) and kind != "sum":
                raise SqlError(f"{where}: running {rname}: only sum restarts `by` a key")
            rolling.append(RollingDecl(rname, f"running_{kind}", expr, 0, name, run.group(4)))
            continue
        if r:
            rname, kind, expr, n = r.group(1), r.group(2).lower(), r.group(3).strip(), int(r.group(4))
            if kind not in ROLLING_KINDS:
                raise SqlError(f"{where}: rolling {rname} has kind {kind!r}; expected one of {list(ROLLING_KINDS)}")
            if n < 1 or (kind == "std_samp" and n < 2):
                raise SqlError(f"{where}: rolling {rname} has length {n}; expected >= {2 if kind == 'std_samp' else 1}")
            rolling.append(RollingDecl(rname, kind, expr, n, name))
            continue
        if not m:
            continue
        fname, kind, expr, span = m.group(1), m.group(2).lower(), m.group(3).strip(), int(m.group(4))
        if kind not in FILTER_KINDS:
            raise SqlError(f"{where}: filter {fname} has kind {kind!r}; expected one of {sorted(FILTER_KINDS)}")
        if span < 1:
            raise SqlError(f"{where}: filter {fname} has span {span}; expected >= 1")
        filters.append(FilterDecl(fname, kind, expr, span, name))
    require_keys(parsed, REQUIRED_HEADER, where, "every feature file")
    columns = tuple(c.strip() for c in header["columns"].split(",") if c.strip())
    lb = re.match(r"\s*(\d+)\s+bars?\b", header["lookback"])
    if family and not lb:
        raise SqlError(f"{where}: lookback {header['lookback']!r} must start with a bar count, e.g. '72 bars'")
    code = strip_comments(text)
    checked = [(where, code)] + [(f"{where}: filter {f.name}", f.expr) for f in filters] \
        + [(f"{where}: rolling {r.name}", r.expr) for r in rolling]
    for label, snippet in checked:
        check_no_lookahead(snippet, label, "a feature")
    for spec in _window_specs(code):
        if not _FRAME.search(spec.strip()):
            raise SqlError(f"{where}: window ({' '.join(spec.split())}) must write its frame out and end it at "
                           "`current row`, e.g. `rows between 19 preceding and current row`")
    if family:
        bad = [c for c in columns if not c.startswith(name + "_") or not _IDENT.match(c)]
        if bad:
            raise SqlError(f"{where}: columns {bad} must be named {name}_<name> (docs/contributing.md)")
    return SqlFile(name, path, text, header, columns, tuple(filters), int(lb.group(1)) if lb else 0, tuple(rolling))


def _set_dirs(path: str | Path | None) -> list[Path]:
    """The folders sets are looked up in: the user folder `path` (if given), then the shipped one."""
    shipped = _features_dir()
    if path is None:
        return [shipped]
    user = Path(path).expanduser()
    if not user.is_dir():
        raise SpecError(f"features.path {str(path)!r} is not a folder; point it at a folder of feature set "
                        f"YAML files and their SQL (relative paths start at {Path.cwd()})")
    user = user.resolve()
    return [shipped] if user == shipped.resolve() else [user, shipped]


def list_sets(path: str | Path | None = None) -> list[str]:
    """Names of the feature sets: sql/features/*.yaml, plus the YAML files in the folder `path`."""
    return sorted({p.stem for d in _set_dirs(path) for p in d.glob("*.yaml") if _IDENT.match(p.stem)})


def resolve_set(name: str, path: str | Path | None = None) -> FeatureSet:
    """Load and validate the feature set `name` (shipped, or in the folder `path`).

    Cheap and touches no data, so callers run it before building bars: a wrong name fails
    first. SpecError when the name is not a plain identifier (`../x`, `/abs`, `a/b` never
    reach the file system), names no set, or a user set shadows a shipped one; SqlError when
    the set breaks its contract.
    """
    dirs = _set_dirs(path)
    if not isinstance(name, str) or not _IDENT.match(name):
        raise SpecError(f"feature set name {name!r} is not a plain name ({SET_NAME_RULE}); "
                        f"known sets: {', '.join(list_sets(path)) or 'none'}")
    found = [d / f"{name}.yaml" for d in dirs if (d / f"{name}.yaml").is_file()]
    if not found:
        raise SpecError(f"no feature set {name!r}; known sets: {', '.join(list_sets(path)) or 'none'} "
                        f"(a set is a YAML file in {' or '.join(str(d) for d in dirs)})")
    if len(found) > 1:
        raise SpecError(f"feature set {name!r} in {dirs[0]} has the name of a shipped set; rename it "
                        "(one name, one definition: builds are cached by set name)")
    # Cache on every definition file's mtime, so an edited SQL file is never served stale.
    stamp = tuple(sorted((str(p), p.stat().st_mtime_ns) for d in {found[0].parent, _features_dir()}
                         for p in d.iterdir() if p.suffix in (".sql", ".yaml")))
    return _load_set(found[0], stamp)


def feature_set(name: str, path: str | Path | None = None) -> FeatureSet:
    """The same as resolve_set (the older name)."""
    return resolve_set(name, path)


def _resolve(fs: FeatureSet | str, path: str | Path | None) -> FeatureSet:
    return resolve_set(fs, path) if isinstance(fs, str) else fs


@lru_cache(maxsize=32)
def _load_set(path: Path, _stamp: tuple) -> FeatureSet:
    import yaml

    where = _label(path)
    spec = yaml.safe_load(path.read_text()) or {}
    known = {"name", "description", "bars", "freq_minutes", "horizons", "files", "columns", "groups"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise SqlError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
    for key in ("bars", "freq_minutes", "horizons", "files"):
        if key not in spec:
            raise SqlError(f"{where}: missing key {key!r}")
    name = spec.get("name", path.stem)
    if name != path.stem or not _IDENT.match(name):
        raise SqlError(f"{where}: name {name!r} must equal the file stem {path.stem!r} and be a lowercase identifier")
    bars_table = str(spec["bars"])
    if not _IDENT.match(bars_table):
        raise SqlError(f"{where}: bars {bars_table!r} is not a table name")
    horizons = tuple(int(h) for h in spec["horizons"])
    if not horizons or min(horizons) < 1:
        raise SqlError(f"{where}: horizons {list(horizons)} must be positive bar counts")
    directory = path.parent
    files = []
    for stem in spec["files"]:
        if not isinstance(stem, str) or not _IDENT.match(stem):
            # A family file sits beside its set: `../x` or `/x` would read SQL from elsewhere.
            raise SqlError(f"{where}: files lists {stem!r}; a family file is named by its stem ({SET_NAME_RULE}) "
                           "and sits beside the set's YAML")
        fpath = directory / f"{stem}.sql"
        if not fpath.is_file():
            raise SqlError(f"{where}: lists {stem!r} but {fpath} does not exist")
        files.append(parse_sql_file(fpath))
    if "groups" in spec and spec["groups"]:
        columns, groups = [], []
        for group, cols in spec["groups"].items():
            columns += list(cols)
            groups += [str(group)] * len(cols)
        if spec.get("columns") and list(spec["columns"]) != columns:
            raise SqlError(f"{where}: `columns` and the concatenated `groups` disagree")
        group_tuple = tuple(groups)
    else:
        columns, group_tuple = list(spec.get("columns") or []), None
    if not columns:
        raise SqlError(f"{where}: no columns; list them under `columns:` (or `groups:`)")
    declared = {c: f.name for f in files for c in f.columns}
    unknown_cols = [c for c in columns if c not in declared]
    if unknown_cols:
        raise SqlError(f"{where}: columns {unknown_cols} are declared by none of the files {list(spec['files'])}")
    if len(set(columns)) != len(columns):
        raise SqlError(f"{where}: a column is listed twice")
    # Filters: one namespace per set; a repeated name must repeat the same definition.
    filters: dict[str, FilterDecl] = {}
    for f in files:
        for decl in f.filters:
            prev = filters.get(decl.name)
            if prev and (prev.kind, prev.expr, prev.span) != (decl.kind, decl.expr, decl.span):
                raise SqlError(f"filter {decl.name} is declared differently in {prev.source}.sql and {decl.source}.sql")
            filters.setdefault(decl.name, decl)
    rolling: dict[str, RollingDecl] = {}
    for f in files:
        for decl in f.rolling:
            prev = rolling.get(decl.name)
            if decl.name in filters or (prev and (prev.kind, prev.expr, prev.n) != (decl.kind, decl.expr, decl.n)):
                raise SqlError(f"rolling {decl.name} of {decl.source}.sql is declared differently elsewhere")
            rolling.setdefault(decl.name, decl)
    # A user folder may bring its own _input.sql; else the set reuses the shipped one.
    input_path = directory / f"{INPUT_FILE}.sql"
    if not input_path.is_file():
        input_path = _features_dir() / f"{INPUT_FILE}.sql"
    input_file = parse_sql_file(input_path, family=False)
    lacking = [c for c in INPUT_ENGINE_COLUMNS if c not in input_file.columns]
    if lacking:
        raise SqlError(f"{_label(input_path)}: columns lack {lacking}, which the engine reads for targets and flags")
    clash = sorted((set(filters) | set(rolling)) & set(input_file.columns))
    if clash:
        raise SqlError(f"filters {clash} shadow columns of {INPUT_FILE}.sql")
    # _input.sql's own running columns (its counters) come first: families may read them.
    rolling = {**{d.name: d for d in input_file.rolling}, **rolling}
    digest = hashlib.sha256(ENGINE_VERSION.encode())
    for part in (path, input_file.path, *(f.path for f in files)):
        digest.update(part.name.encode() + b"\0" + part.read_bytes() + b"\0")
    return FeatureSet(
        name=name,
        description=str(spec.get("description", "")),
        bars_table=bars_table,
        freq_minutes=int(spec["freq_minutes"]),
        horizons=horizons,
        files=tuple(files),
        columns=tuple(columns),
        groups=group_tuple,
        warmup_bars=max(f.lookback for f in files),
        filters=tuple(filters.values()),
        sql_hash=digest.hexdigest(),
        input_file=input_file,
        rolling=tuple(rolling.values()),
    )


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


def _fetch(con, sql: str, params: dict | None, where: str) -> dict[str, np.ndarray]:
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


def _float(a: np.ndarray) -> np.ndarray:
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
        cols = _fetch(con, f"select bar_index, {select} from {INPUT_VIEW}", None,
                      f"filter inputs {[d.name for d in level]}")
        idx = cols["bar_index"].astype(np.int64)
        in_order = np.array_equal(idx, np.arange(n))   # a plain scan keeps order; never trust it blindly
        for d in level:
            x = _float(cols[d.name])
            if not in_order:
                x = x[np.argsort(idx)]
            if isinstance(d, RollingDecl) and d.key:
                key = _float(cols[f"_key_{d.key}"])
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
        cols = _fetch(con, f.text, None, _label(f.path))
        got = list(cols)
        if got != ["bar_index", *f.columns]:
            missing = [c for c in ["bar_index", *f.columns] if c not in got]
            extra = [c for c in got if c not in ["bar_index", *f.columns]]
            raise SqlError(f"{_label(f.path)} returned {got}; its header declares bar_index + "
                           f"{list(f.columns)} (missing {missing}, extra {extra}), in that order")
        idx = cols["bar_index"].astype(np.int64)
        in_order = np.array_equal(idx, np.arange(n))
        if not in_order and not np.array_equal(np.sort(idx), np.arange(n)):
            raise SqlError(f"{_label(f.path)} must return one row per bar of feature_input")
        for c in f.columns:
            if c in col_index:
                values = _float(cols[c])
                if in_order:
                    X[:, col_index[c]] = values
                else:
                    X[idx, col_index[c]] = values
        seconds[f.name] = seconds.get(f.name, 0.0) + time.perf_counter() - t2
    return X


def _targets(fs: FeatureSet, base) -> tuple[np.ndarray, np.ndarray]:
    """Forward log-returns and their flag bits by an index shift: (N, H) float64, (N, H) uint8."""
    n = base.num_rows
    log_close = np.log(_float(base.column("close").to_numpy()))
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
        raise SqlError(f"{_label(fs.input_file.path)} failed: {str(exc).splitlines()[0]}") from None
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
    fs = _resolve(fs, path)
    if not table_exists(con, fs.bars_table):
        raise DataError(f"table {fs.bars_table} does not exist; build bars first (nqexp.bars.build_bars)")
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
        ts=ts[keep], X=X[keep], names=list(fs.columns), close=_float(base.column("close").to_numpy())[keep],
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
# Build (materialize, versioned) and load
# ---------------------------------------------------------------------------------------------

@dataclass
class BuildReport:
    set_name: str
    symbol: str
    table: str
    rows: int
    seconds: float
    rebuilt: bool        # False: the table was up to date (cached)
    reason: str          # why it was (re)built, or 'up to date'
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        what = "built" if self.rebuilt else "cached"
        return f"{self.set_name} on {self.symbol}: {what} {self.table} ({self.rows:,} rows, {self.seconds:.2f}s; {self.reason})"


def bars_fingerprint(con, bars_table: str, symbol: str) -> str:
    """Row count, first/last ts and an order-free hash of every bar field the features read."""
    row = con.execute(
        """
        select
            count(*),
            min(ts)::varchar,
            max(ts)::varchar,
            bit_xor(hash(ts, open, high, low, close, volume, session_date, minute_of_day_et, is_rth,
                         minutes_since_prev, is_session_start, roll_flag)),
        from query_table($bars_table::varchar)
        where symbol = $symbol::varchar
        """,
        {"bars_table": bars_table, "symbol": symbol},
    ).fetchall()[0]
    return f"{row[0]}|{row[1]}|{row[2]}|{row[3]}"


def _current_build(con, set_name: str, symbol: str):
    if not table_exists(con, "feature_builds"):
        raise SqlError("table feature_builds is missing; open the database with nqexp.db.connect() (migration 003)")
    rows = con.execute(
        "select table_name, sql_hash, bars_fingerprint, n_rows from feature_builds where set_name = ? and symbol = ?",
        [set_name, symbol],
    ).fetchall()
    return rows[0] if rows else None


def _table_owner(con, table: str) -> str | None:
    """The symbol a feature table was built for (its comment), or None when it has none."""
    rows = con.execute("select comment from duckdb_tables() where table_name = ? and schema_name = current_schema()",
                       [table]).fetchall()
    try:
        return json.loads(rows[0][0])["symbol"] if rows and rows[0][0] else None
    except (ValueError, KeyError, TypeError):
        return None


def _output_table(fs: FeatureSet, res: Computed):
    """One chunk of the stored table: features as REAL (what load_arrays hands out anyway), the rest exact."""
    import pyarrow as pa

    arrays = {
        "ts": pa.array(res.ts),
        "session_date": pa.array(res.session_date),
        "minute_of_day_et": pa.array(res.minute_of_day_et),
        "close": pa.array(res.close),
    }
    for j, c in enumerate(res.names):
        arrays[c] = pa.array(res.X[:, j].astype(np.float32))
    for k, h in enumerate(fs.horizons):
        arrays[f"fwd_ret_{h}"] = pa.array(np.ascontiguousarray(res.targets[:, k]))
    for k, h in enumerate(fs.horizons):
        arrays[f"fwd_flag_{h}"] = pa.array(np.ascontiguousarray(res.target_flags[:, k]))
    return pa.table(arrays)


def build(con, set_name: FeatureSet | str, symbol: str, force: bool = False,
          path: str | Path | None = None) -> BuildReport:
    """Materialize the set's features and targets for `symbol` unless the table is up to date.

    `path` is the user folder of feature sets (features.path), if any. A cached table counts
    only if its comment names `symbol` exactly, so a table written for another series is
    never served as this one's.
    """
    t0 = time.perf_counter()
    fs = _resolve(set_name, path)
    if not table_exists(con, fs.bars_table):
        raise DataError(f"table {fs.bars_table} does not exist; build bars first (nqexp.bars.build_bars)")
    fingerprint = bars_fingerprint(con, fs.bars_table, symbol)
    if fingerprint.startswith("0|"):
        raise DataError(f"no bars for symbol {symbol!r} in {fs.bars_table}; build them first (nqexp.bars.build_bars)")
    table = fs.table_name(symbol)
    current = _current_build(con, fs.name, symbol)
    exists = table_exists(con, table)
    owner = _table_owner(con, table) if exists else None
    if current and not force and current[0] == table and current[1] == fs.sql_hash \
            and current[2] == fingerprint and exists and owner == symbol:
        return BuildReport(fs.name, symbol, table, int(current[3]), time.perf_counter() - t0, False, "up to date")
    if force:
        reason = "forced"
    elif not current:
        reason = "first build"
    elif current[1] != fs.sql_hash:
        reason = "SQL changed"
    elif current[2] != fingerprint:
        reason = "bars changed"
    elif not exists:
        reason = "table missing"
    else:
        reason = f"table {table} was not built for {symbol!r}"

    stale = [current[0]] if current and current[0] != table else []
    n_rows, timings = 0, {"write": 0.0}
    # Chunk by chunk (compute_chunks), each committed into a staging table: one transaction
    # over all chunks would hold every uncommitted row in memory. The staging table becomes
    # the build only in the last, short transaction, so a failed build changes nothing.
    staging = f"{table}__building"
    con.execute(f'drop table if exists "{staging}"')
    try:
        for res in compute_chunks(con, fs, symbol):
            for k, v in res.seconds.items():
                timings[k] = timings.get(k, 0.0) + v
            t_write = time.perf_counter()
            out = _output_table(fs, res)
            n_rows += out.num_rows
            del res
            con.register("_features_out", out)
            try:
                if n_rows == out.num_rows:
                    con.execute(f'create table "{staging}" as select * from _features_out')
                else:
                    con.execute(f'insert into "{staging}" select * from _features_out')
            finally:
                con.unregister("_features_out")
            del out
            timings["write"] += time.perf_counter() - t_write
    except BaseException:
        con.execute(f'drop table if exists "{staging}"')
        raise
    t_commit = time.perf_counter()
    con.execute("begin transaction")
    try:
        for old in (*stale, table):
            con.execute(f'drop table if exists "{old}"')
        con.execute(f'alter table "{staging}" rename to "{table}"')
        # The table records its own series (COMMENT takes no parameter: quote by doubling).
        owner_json = json.dumps({"set": fs.name, "symbol": symbol}).replace("'", "''")
        con.execute(f"comment on table \"{table}\" is '{owner_json}'")
        con.execute("delete from feature_builds where set_name = ? and symbol = ?", [fs.name, symbol])
        con.execute(
            "insert into feature_builds (set_name, symbol, table_name, sql_hash, bars_fingerprint, bars_table,"
            " n_rows, n_features, warmup_bars, seconds) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [fs.name, symbol, table, fs.sql_hash, fingerprint, fs.bars_table, n_rows, len(fs.columns),
             fs.warmup_bars, time.perf_counter() - t0],
        )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        con.execute(f'drop table if exists "{staging}"')
        raise
    timings["write"] += time.perf_counter() - t_commit
    report = BuildReport(fs.name, symbol, table, n_rows, time.perf_counter() - t0, True, reason, timings)
    log.info("%s", report.summary())
    return report


@dataclass
class FeatureArrays:
    """A feature table as contiguous arrays (the contract windows.py builds on)."""

    ts: np.ndarray                 # (N,) datetime64[us], sorted
    X: np.ndarray                  # (N, V) float32, C-contiguous, NaN in warm-up
    names: list[str]
    close: np.ndarray              # (N,) float64, adjusted
    horizons: tuple[int, ...]      # bars
    freq_minutes: int
    targets: np.ndarray            # (N, H) float64 forward log-returns, NaN where the series ends
    target_flags: np.ndarray       # (N, H) uint8: 1 session end, 2 weekend/holiday, 4 roll
    session_date: np.ndarray       # (N,) datetime64[D]
    minute_of_day_et: np.ndarray   # (N,) int16
    groups: list[str] | None = None  # group per variable (grok24)
    warmup_bars: int = 0           # leading bars whose features are still warming up
    set_name: str = ""
    symbol: str = ""


def load_arrays(con, set_name: FeatureSet | str, symbol: str, path: str | Path | None = None) -> FeatureArrays:
    """Load (building first if needed) the set's feature table for `symbol` as arrays.

    `path` is the user folder of feature sets (features.path), if any.
    """
    fs = _resolve(set_name, path)
    report = build(con, fs, symbol)
    cols = _fetch(con, f'select * from "{report.table}"', None, f"loading {report.table}")
    ts = cols["ts"].astype("datetime64[us]")
    if len(ts) > 1 and not (np.diff(ts) > np.timedelta64(0, "us")).all():
        order = np.argsort(ts, kind="stable")   # insertion order is normally kept; never trust it blindly
        cols = {k: v[order] for k, v in cols.items()}
        ts = ts[order]
    X = np.empty((len(ts), len(fs.columns)), dtype=np.float32)                      # (N, V)
    for j, c in enumerate(fs.columns):
        X[:, j] = cols[c]
    return FeatureArrays(
        ts=ts,
        X=X,
        names=list(fs.columns),
        close=_float(cols["close"]),
        horizons=fs.horizons,
        freq_minutes=fs.freq_minutes,
        targets=np.column_stack([_float(cols[c]) for c in fs.target_names]),     # (N, H)
        target_flags=np.column_stack([cols[c].astype(np.uint8) for c in fs.flag_names]),  # (N, H)
        session_date=cols["session_date"].astype("datetime64[D]"),
        minute_of_day_et=cols["minute_of_day_et"].astype(np.int16),
        groups=list(fs.groups) if fs.groups else None,
        warmup_bars=fs.warmup_bars,
        set_name=fs.name,
        symbol=symbol,
    )


# ---------------------------------------------------------------------------------------------
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

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.leakage)


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
    fs = _resolve(fs, path)
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


def check(con, set_name: FeatureSet | str, symbol: str, n_cuts: int = 5, seed: int = 0,
          corr_threshold: float = 0.95, path: str | Path | None = None) -> CheckReport:
    """Stats after warm-up per feature, pairs with |corr| > threshold, and the truncation leakage check.

    `path` is the user folder of feature sets (features.path), if any.
    """
    fs = _resolve(set_name, path)
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
    return CheckReport(fs.name, symbol, report.table, n, fs.warmup_bars, stats, pairs, leakage, corr_threshold)
