"""Feature sets and their SQL family files: parse, check and resolve them (no data is read here).

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
lookahead and columns. Checked statically here, raising SqlError: the header is complete, column
names carry the family prefix, no `following`, no `lead(`, and every window spec (inline
`over (...)` or a `window` clause) writes its frame out and ends it at `current row`. The
`filter`, `rolling` and `running` header lines are declarations that the engine (engine.py) runs.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from nqexp.data.db import sql_root
from nqexp.data.sqlcheck import (
    balanced,
    check_no_lookahead,
    parse_header,
    require_keys,
    strip_comments,
)
from nqexp.errors import SpecError, SqlError

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


def file_label(path: Path) -> str:
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
    where = file_label(path)
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


def as_set(fs: FeatureSet | str, path: str | Path | None) -> FeatureSet:
    return resolve_set(fs, path) if isinstance(fs, str) else fs


@lru_cache(maxsize=32)
def _load_set(path: Path, _stamp: tuple) -> FeatureSet:
    import yaml

    where = file_label(path)
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
        raise SqlError(f"{file_label(input_path)}: columns lack {lacking}, which the engine reads for targets and flags")
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
