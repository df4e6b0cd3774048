"""Experiment specs: one YAML file -> a typed, frozen ExperimentSpec, or a SpecError (docs/experiments.md).

    spec = load_spec("experiments/tsa_ablation.yaml", overrides=["train.lr=3e-4"], smoke=False)
    for trial in spec.trials():          # variants x seeds
        ...trial.spec.model, trial.spec.train, trial.tracker_config()

Each section is a frozen dataclass (SECTIONS): the glue ones live here, the stage ones in their modules,
imported on first use so `import nqexp.experiment.spec` pulls in no torch or pandas. pydantic checks the fields
(unknown keys, types, finite floats, bounds declared as `Annotated[float, Field(gt=0)]`), then the
dataclass's `__post_init__` the cross-field rules. `model.horizons`, `model.n_vars` and `model.groups`
are derived from `features.set`. The format (extends, --set, variants, search, sweep, smoke, precedence)
is docs/experiments.md; every error is one line, `<file>: <dotted.path>: <reason>`, naming the file (or
--set) that wrote the value.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import functools
import importlib
import inspect
import io
import itertools
import os
import re
import stat
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, create_model

from nqexp.errors import SpecError, SqlError
from nqexp.secrets import SECRET_ENV_HINT, is_secret_key, looks_like_secret, redact

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SET_KEY_RE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*$")
BASE_VARIANT = "base"
ENSEMBLE_SUFFIX = "-ensemble"  # `<variant>-ensemble`: a run's seed ensemble (docs/experiments.md §16), never a variant's name
SMOKE_SUFFIX = "-smoke"  # a smoke run is its own experiment: it never collides with the full run's store entry
DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "randint": 2, "quniform": 3, "choice": None}  # name -> arg count
# Hostile input stays cheap: specs are small files, and YAML aliases must not expand without end.
MAX_SPEC_BYTES = 1_000_000
MAX_YAML_VALUES = 100_000
MAX_VARIANTS = 1_000


# ---------------------------------------------------------------------------------------------------
# Glue sections (the stage sections live in their stage modules)


@dataclass(frozen=True)
class DataConfig:
    """Which bar series feeds the experiment (the bar size is the feature set's)."""

    symbol: str = "NQ.demo"  # series in raw_bars ('NQ.demo' is generated on demand)
    demo_days: Annotated[int | None, Field(ge=1, le=36_500)] = 730  # NQ.demo missing: generate this many days
    demo_seed: Annotated[int, Field(ge=0)] = 0  # seed of the generated demo series


@dataclass(frozen=True)
class FeaturesConfig:
    """Which SQL feature set (sql/features/<set>.yaml) builds the inputs and fixes the horizons."""

    set: str = "migt24"  # feature set: sql/features/SET.yaml, or in features.path; it fixes inputs and horizons
    path: str | None = None  # a folder of your own feature sets (YAML + SQL); None: the shipped ones

    def __post_init__(self):
        # Absolute, so Ray workers in another working directory read the same folder.
        if self.path is not None:
            object.__setattr__(self, "path", os.path.abspath(os.path.expanduser(self.path)))


@dataclass(frozen=True)
class TrackConfig:
    """Where results go: the local run store (source of truth) and Weights & Biases."""

    wandb_project: str = "nqexp"  # W&B project of every trial
    wandb_entity: str | None = None  # W&B team or user; None: the API key's default
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online with a W&B key or login, else offline; WANDB_MODE wins
    store: str = "runs"  # local run store, relative to the working directory (a shared FS on clusters)
    ray_storage: str | None = None  # Tune experiment state: None = inside the store; or s3://... / gs://...
    tags: tuple[str, ...] = ()  # W&B tags of every trial

    def store_path(self, cwd: str | os.PathLike | None = None) -> Path:
        """Absolute, since Ray trials run in another working directory."""
        return (Path(cwd or os.getcwd()) / os.path.expanduser(self.store)).resolve()


@dataclass(frozen=True)
class ResourcesConfig:
    """Ray Tune resources per trial and failure handling."""

    cpus_per_trial: Annotated[float, Field(gt=0)] = 1.0  # CPUs Ray reserves for each trial
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0.0  # GPUs per trial; fractions share one GPU
    max_concurrent_trials: Annotated[int | None, Field(ge=1)] = None  # trials running at once; None: as many as resources allow
    max_failures: Annotated[int, Field(ge=-1)] = 1  # retries of a failed trial (-1: forever)
    # GiB of one GPU on the nodes trials run on (80 for an A100 80GB); None: the local GPU's when one is
    # visible, else the memory plan is not checked (docs/clusters.md §8).
    gpu_memory_gb: Annotated[float | None, Field(gt=0, le=4096)] = None


@dataclass(frozen=True)
class SweepConfig:
    """`nqexp sweep`: search algorithm and early stopper over `search:`."""

    num_samples: Annotated[int, Field(ge=1, le=100_000)] = 20  # trials sampled from the search space
    max_epochs: Annotated[int | None, Field(ge=1)] = None  # ASHA max_t (None: train.max_epochs)
    grace_period: Annotated[int, Field(ge=1)] = 1  # epochs before ASHA may stop a trial
    reduction_factor: Annotated[int, Field(ge=2)] = 4  # ASHA halving rate
    scheduler: Literal["asha", "median", "none"] = "asha"  # early stopper: ASHA, median stopping, or none
    algorithm: Literal["tpe", "random"] = "tpe"  # tpe: Optuna TPE via ray.tune.search.optuna
    # The objective is fixed, not a key: val CRPS, minimized; gated (collapsed) trials never win.
    metric: ClassVar[str] = "val/crps"
    mode: ClassVar[str] = "min"

    def __post_init__(self):
        if self.max_epochs is not None and self.grace_period > self.max_epochs:
            raise SpecError(f"sweep.grace_period ({self.grace_period}) must be <= sweep.max_epochs ({self.max_epochs})")


# Section -> dataclass, or "module:Class" imported on first use. Order is the YAML order.
SECTIONS: dict[str, type | str] = {
    "data": DataConfig,
    "features": FeaturesConfig,
    "windows": "nqexp.model.windows:WindowConfig",
    "splits": "nqexp.model.windows:SplitConfig",
    "model": "nqexp.model.net:ModelConfig",
    "train": "nqexp.model.train:TrainConfig",
    "eval": "nqexp.evaluation.evaluate:EvalConfig",
    "track": TrackConfig,
    "resources": ResourcesConfig,
}
META_KEYS = ("name", "description", "extends", "seeds", "variants", "search", "sweep", "smoke")
DERIVED_MODEL_KEYS = ("horizons", "n_vars", "groups")  # feature_facts(): the feature set owns them

# Built-in --smoke deltas: tiny sizes, two steps, CPU, one seed. A section class may add its own as
# `SMOKE: ClassVar[dict]`. Keys a class lacks are skipped, so a renamed field never breaks --smoke.
# Data stays as written (its split dates must still find samples); windows keep a small share of samples.
DEFAULT_SMOKE: dict[str, dict[str, Any]] = {
    "windows": {"t_max": 32, "lookback_minutes": 160, "min_valid_bars": 4, "subsample_fraction": 0.02},
    "model": {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_temporal_layers": 1, "n_variable_layers": 1,
              "dropout": 0.0},
    "train": {"max_epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "grad_accum": 1, "warmup_steps": 1,
              "patience": 1, "keep_checkpoints": 1, "eval_batch_size": 64, "time_budget_s": 30.0,
              "compile": False},
    "resources": {"cpus_per_trial": 1.0, "gpus_per_trial": 0.0},
    "track": {"wandb_mode": "offline"},
    "sweep": {"num_samples": 2, "max_epochs": 1, "grace_period": 1},
}


# ---------------------------------------------------------------------------------------------------
# Spec objects


class FrozenDict(dict):
    """A read-only dict (spec mappings are frozen) that still pickles for Ray workers."""

    def _readonly(self, *args, **kwargs):
        raise TypeError("spec mappings are read-only; use ExperimentSpec.apply() to change a spec")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _readonly

    def __reduce__(self):
        return FrozenDict, (dict(self),)

    def __hash__(self):
        return hash(tuple(self.items()))


@dataclass(frozen=True)
class SearchDim:
    """One `search:` dimension in neutral form (tune.py maps it to a Tune sampler). `value_type` is the
    field's base type name; quniform yields multiples of q, as ints when the field is one."""

    path: str
    kind: str  # a DISTRIBUTIONS key
    low: float | int | None = None
    high: float | int | None = None
    q: float | int | None = None
    values: tuple = ()  # choice
    value_type: str = "float"

    def to_dict(self) -> dict[str, list]:
        if self.kind == "choice":
            return {"choice": [_plain(v) for v in self.values]}
        return {self.kind: [self.low, self.high] + ([self.q] if self.kind == "quniform" else [])}


@dataclass(frozen=True)
class ExperimentSpec:
    """A resolved experiment: the sections (its base variant), variants, seeds and search space.
    Frozen: `apply()` returns a changed copy, `trials()` the variants x seeds, `to_dict()` plain types."""

    name: str
    data: DataConfig
    features: FeaturesConfig
    windows: Any  # nqexp.model.windows.WindowConfig
    splits: Any  # nqexp.model.windows.SplitConfig
    model: Any  # nqexp.model.net.ModelConfig
    train: Any  # nqexp.model.train.TrainConfig
    eval: Any  # nqexp.evaluation.evaluate.EvalConfig
    track: TrackConfig
    resources: ResourcesConfig
    description: str = ""
    seeds: tuple[int, ...] = (0,)
    variants: FrozenDict = field(default_factory=lambda: FrozenDict({BASE_VARIANT: FrozenDict()}))
    search: FrozenDict = field(default_factory=FrozenDict)  # dotted key -> SearchDim
    sweep: SweepConfig = field(default_factory=SweepConfig)
    smoke: FrozenDict = field(default_factory=FrozenDict)  # dotted key -> value (the spec's own --smoke deltas)
    source: str = field(default="", compare=False)  # the file it was loaded from
    registry: tuple = field(default=(), compare=False, repr=False)  # (section, class) pairs used

    @property
    def reference_variant(self) -> str:
        return next(iter(self.variants))

    @property
    def seed(self) -> int:
        return self.seeds[0]  # a trial's spec has exactly one

    @property
    def sections(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SECTIONS}

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain YAML/JSON-safe types; `spec_from_dict` reads it back equal."""
        out: dict[str, Any] = {"name": self.name, **({"description": self.description} if self.description else {}),
                               "seeds": list(self.seeds),
                               "variants": {v: _plain(d) for v, d in self.variants.items()},
                               **{s: _plain(c) for s, c in self.sections.items()}}
        if self.search:
            out["search"] = {k: dim.to_dict() for k, dim in self.search.items()}
        out["sweep"] = _plain(self.sweep)
        if self.smoke:
            out["smoke"] = _plain(self.smoke)
        return out

    def search_space(self) -> dict[str, SearchDim]:
        return dict(self.search)

    def apply(self, deltas: Mapping[str, Any], source: str = "params") -> ExperimentSpec:
        """A copy with dotted-key deltas (e.g. Tune's sampled params) converted to the field types and
        applied; SpecError naming `source` when they are invalid."""
        return self._rebuild(deltas, source, ())

    def trials(self) -> list[TrialSpec]:
        """Variants x seeds, variant-major, in spec order, named f"{variant}-s{seed}".

        Each variant is validated once per spec object: the list is built on the first call and kept
        (the spec is frozen, so it cannot go stale); callers get a fresh list of the same TrialSpecs."""
        if "_trials" not in self.__dict__:
            object.__setattr__(self, "_trials", tuple(self._build_trials()))
        return list(self.__dict__["_trials"])

    def _build_trials(self) -> list[TrialSpec]:
        out = []
        for variant, delta in self.variants.items():
            vspec = self._rebuild(delta, self.source or "spec", ("variants", variant))
            # Rolling-origin folds (splits.folds): each is its own trial with its own split dates.
            folds = getattr(vspec.splits, "fold_splits", lambda: [vspec.splits])()
            for seed in self.seeds:
                for k, split in enumerate(folds):
                    tspec = dataclasses.replace(vspec, seeds=(seed,), search=FrozenDict(), splits=split,
                                                variants=FrozenDict({BASE_VARIANT: FrozenDict()}))
                    name = f"{variant}-s{seed}" + (f"-f{k}" if len(folds) > 1 else "")
                    out.append(TrialSpec(self.name, variant, seed, name, tspec,
                                         is_reference=variant == self.reference_variant, fold=k))
        return out

    def _rebuild(self, deltas: Mapping[str, Any], source: str, prefix: tuple) -> ExperimentSpec:
        problems: list = []
        built = _apply_deltas(self.sections, deltas, dict(self.registry) or _registry(None), problems, prefix)
        _raise_if(problems, lambda *_: source)
        return dataclasses.replace(self, **built)


@dataclass(frozen=True)
class TrialSpec:
    """One trial: a variant at a seed, with its own single-trial spec (no variants or search left)."""

    experiment: str
    variant: str
    seed: int
    trial_name: str  # f"{variant}-s{seed}", and f"-f{fold}" with several folds
    spec: ExperimentSpec
    is_reference: bool = False  # the first variant: paired comparisons are against it
    fold: int = 0               # rolling-origin fold (0 = the oldest); spec.splits holds its dates

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "variant": self.variant, "seed": self.seed, "fold": self.fold,
                "trial_name": self.trial_name, "spec": self.spec.to_dict()}

    def tracker_config(self) -> dict[str, Any]:
        """Flat dotted-key config for W&B (`model.d_model`, ...), secrets removed."""
        flat = flatten_dotted(self.spec.to_dict())
        flat.update(experiment=self.experiment, variant=self.variant, seed=self.seed, fold=self.fold,
                    trial_name=self.trial_name)
        return redact(flat)


# ---------------------------------------------------------------------------------------------------
# Public helpers


def load_spec(path: str | os.PathLike, overrides: Iterable[str] = (), smoke: bool = False, *,
              sections: Mapping[str, type | str] | None = None) -> ExperimentSpec:
    """Read a spec file (following `extends:`) or a shipped spec by name ("quickstart"), apply --smoke
    and `--set KEY=VALUE` overrides, validate, and return the frozen spec; SpecError otherwise.
    `sections` replaces SECTIONS entries (a test hook: stand-ins for stages without their modules)."""
    label = _resolve_spec_path(os.fspath(path))
    registry = _registry(sections)
    src: dict[tuple, str] = {}  # dotted path -> who wrote it last (provenance of error lines)
    tree = _read_chain(label, registry, src)
    set_layer = _parse_overrides(overrides, registry)
    tree = _merge(tree, set_layer, "--set", src)
    if smoke:
        tree = _merge(_apply_smoke(tree, registry, src), set_layer, "--set", src)  # --set beats --smoke too
    return _build_spec(tree, registry, src, label)


def spec_from_dict(data: Mapping[str, Any], source: str = "<dict>", *,
                   sections: Mapping[str, type | str] | None = None) -> ExperimentSpec:
    """Validate an already-parsed, resolved spec mapping (e.g. shipped to a Ray worker)."""
    registry = _registry(sections)
    src: dict[tuple, str] = {}
    return _build_spec(_merge({}, _flatten_containers(dict(data), registry), source, src), registry, src, source)


def resolved_dict(spec: ExperimentSpec) -> dict[str, Any]:
    """The resolved spec as plain data, exactly as `dump_resolved` writes it (secrets masked, YAML types):
    two specs are the same experiment when these are equal."""
    return yaml.safe_load(yaml.safe_dump(redact(spec.to_dict()), sort_keys=False, allow_unicode=True))


def dump_resolved(spec: ExperimentSpec, path: str | os.PathLike) -> Path:
    """Write the resolved spec as YAML, atomically; `load_spec` reads it back to an equal spec."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (f"# Resolved spec of experiment '{spec.name}' (extends, --set and --smoke applied).\n"
            f"# Reproduce with: nqexp run {path.name}\n"
            + yaml.safe_dump(resolved_dict(spec), sort_keys=False, allow_unicode=True))
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)     # a full disk leaves neither a torn spec nor its temporary file
    return path


def shipped_specs() -> dict[str, Path]:
    """name -> file of the specs shipped with nqexp (experiments/, in a wheel the package `nqexp.experiments`)."""
    try:  # iterdir: a namespace package's files() is a MultiplexedPath, whose str() is no path
        files = [Path(str(p)) for p in resources.files("nqexp.experiments").iterdir()]
    except (ModuleNotFoundError, OSError):  # a source checkout: the repo's folder
        files = list((Path(__file__).resolve().parents[2] / "experiments").iterdir())
    return {p.stem: p for p in sorted(files) if p.suffix == ".yaml"}


def feature_facts(set_name: str, path: str | None = None) -> dict[str, Any]:
    """What a feature set fixes for the model: `horizons` (bars), `n_vars` and, for a grouped set,
    `groups` (sizes in column order). SpecError for an unknown or broken set."""
    # lazy: keeps `import nqexp.experiment.spec` free of pandas and duckdb
    from nqexp import features

    try:
        known = features.list_sets(path)
    except (SpecError, SqlError) as exc:
        raise SpecError(f"features.path: {exc}") from None
    if set_name not in known:
        close = difflib.get_close_matches(set_name, known, n=1, cutoff=0.6)
        raise SpecError(f"unknown feature set '{set_name}' "
                        f"({f'did you mean {close[0]!r}?' if close else 'known sets: ' + ', '.join(known)})")
    try:
        fs = features.resolve_set(set_name, path)
    except SqlError as exc:
        raise SpecError(f"feature set '{set_name}' is broken: {exc}") from None
    facts: dict[str, Any] = {"horizons": tuple(fs.horizons), "n_vars": len(fs.columns)}
    if fs.groups:
        facts["groups"] = tuple(len(list(g)) for _, g in itertools.groupby(fs.groups))
    return facts


def json_schema() -> dict[str, Any]:
    """JSON Schema of a spec file, for editors. Bases (no `name`) validate too; cross-field rules
    are `load_spec`'s. Every section field carries its description: the comment on the field in its
    dataclass (`field_descriptions`), the text docs/experiments.md §18 lists."""
    described = lambda text: Field(None, description=text)  # noqa: E731
    registry = _registry(None)
    top: dict[str, Any] = {
        "name": (Annotated[str, Field(pattern=NAME_RE.pattern)], None),
        "description": (str, None),
        "extends": (str, described("a base spec file, relative to this one")),
        "seeds": (list[Annotated[int, Field(ge=0)]], None),
        "variants": (dict[str, dict[str, Any] | None], described("name -> {dotted.key: value}")),
        "search": (dict[str, dict[str, Any]], described("dotted.key -> {distribution: args}")),
        "sweep": (SweepConfig, None),
        "smoke": (dict[str, Any], described("dotted.key -> value, applied by --smoke")),
        **{section: (cls, None) for section, cls in registry.items()},
    }
    schema = create_model("ExperimentSpec", __config__=ConfigDict(extra="forbid"), **top).model_json_schema()
    classes = {cls.__name__: cls for _, cls, _ in _section_classes(registry)}
    for name, definition in schema.get("$defs", {}).items():
        if name in classes:
            for key, text in field_descriptions(classes[name]).items():
                definition["properties"][key]["description"] = text
    return schema


def field_descriptions(cls: type) -> dict[str, str]:
    """Init field -> its description: the comment that ends the field's line, else the comment lines right
    above it (docs/contributing.md §3: one field per line with a short comment). Read from the class's source,
    so the comment a reader sees in the code is the text of `nqexp spec schema` and docs/experiments.md §18."""
    return dict(_field_comments(cls))


@functools.cache
def _field_comments(cls: type) -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {}
    for klass in cls.__mro__:      # a field inherited from a base dataclass is commented there
        if dataclasses.is_dataclass(klass):
            found = {**_comments_in_source(klass, set(_fields(cls))), **found}
    return tuple((name, found.get(name, "")) for name in _fields(cls))


def _comments_in_source(cls: type, names: set[str]) -> dict[str, str]:
    """Field -> comment of the fields `names` assigned in `cls`'s own body ({} without source: no descriptions)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    above: list[str] = []         # comment lines since the last statement or blank line
    line: list[tokenize.TokenInfo] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and not line:
            above.append(tok.string.lstrip("#").strip())
        elif tok.type == tokenize.NL and not line:
            above = above if tok.line.strip() else []
        elif tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            # A field is `name: type [= default]` at the class body's indent (4 after dedent).
            if len(line) > 1 and line[0].type == tokenize.NAME and line[1].string == ":" \
                    and line[0].string in names and line[0].start[1] == 4:
                trailing = [t.string.lstrip("#").strip() for t in line if t.type == tokenize.COMMENT]
                found[line[0].string] = " ".join(trailing or above)
            line, above = [], []
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT):
            line.append(tok)
    return found


def _section_classes(registry: Mapping[str, type] | None = None) -> list[tuple[str, type, Any]]:
    """(dotted prefix, dataclass, its default instance) of every spec section and nested section, in YAML
    order: data, ..., resources, sweep, and e.g. eval.gates after eval."""
    out = []

    def visit(prefix: str, cls: type, default):
        out.append((prefix, cls, default))
        for name, tp in _fields(cls).items():
            inner = _dataclass_of(tp)
            if inner is not None:
                visit(f"{prefix}.{name}", inner, getattr(default, name))

    for section, cls in {**(registry or _registry(None)), "sweep": SweepConfig}.items():
        visit(section, cls, cls())
    return out


def field_reference() -> str:
    """docs/experiments.md §18, the field reference: a Markdown table per section, each field with its
    default and its description (`field_descriptions`). `nqexp spec fields` prints it."""
    blocks = []
    for prefix, cls, default in _section_classes():
        rows = ["| key | default | meaning |", "|---|---|---|"]
        for name, text in field_descriptions(cls).items():
            if _dataclass_of(_fields(cls)[name]) is not None:
                shown = f"see `{prefix}.{name}.*`"
            else:
                value = getattr(default, name)   # a date as YAML writes it, unquoted
                shown = f"`{value.isoformat() if isinstance(value, dt.date) else _show(_plain(value))}`"
            if prefix == "model" and name in DERIVED_MODEL_KEYS:
                shown += " (from `features.set`)"
            rows.append(f"| `{prefix}.{name}` | {shown} | {text.replace('|', chr(92) + '|')} |")
        blocks.append(f"`{prefix}` ({cls.__name__})\n\n" + "\n".join(rows))
    return "\n\n".join(blocks) + "\n"


def flatten_dotted(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"d_model": 8}} -> {"model.d_model": 8} (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------------------------------------------
# Reading: files, extends, --set, --smoke, with the writer of every path recorded


class _SpecLoader(yaml.SafeLoader):
    """YAML 1.2 booleans (`off` stays text for a str field; a bool field still reads it), duplicate keys
    refused, impossible dates (2020-13-01) kept as text for the field's check to name."""


_SpecLoader.yaml_implicit_resolvers = {ch: [(tag, rx) for tag, rx in rs if tag != "tag:yaml.org,2002:bool"]
                                       for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))


def _construct_timestamp(loader, node):
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:
        return node.value


def _construct_mapping(loader, node):
    loader.flatten_mapping(node)
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = str(loader.construct_object(key_node, deep=True))
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_SpecLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_SpecLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def _count_values(root, label: str) -> None:
    """Refuse alias bombs ("billion laughs"): size the expanded document without expanding it."""
    sizes: dict[int, int] = {}

    def size(node, active: frozenset) -> int:
        if id(node) in active:
            raise SpecError(f"{label}: invalid YAML: an alias refers to itself")
        if id(node) not in sizes:
            kids = node.value if isinstance(node, yaml.SequenceNode) else \
                [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
            sizes[id(node)] = 1 + sum(size(k, active | {id(node)}) for k in kids)
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise SpecError(f"{label}: the YAML expands to more than {MAX_YAML_VALUES:,} values (through "
                                "aliases); a spec is a small file")
        return sizes[id(node)]

    size(root, frozenset())


def _read_yaml(label: str) -> dict:
    try:
        # A FIFO would block open() until a writer appears; devices are read bounded below.
        if stat.S_ISFIFO(os.stat(label).st_mode) or stat.S_ISSOCK(os.stat(label).st_mode):
            raise SpecError(f"{label}: not a regular file; a spec is a small YAML file")
        with open(label, "rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)  # bounded: /dev/zero or a huge file fails fast
    except FileNotFoundError:
        raise SpecError(f"{label}: file not found") from None
    except OSError as exc:
        raise SpecError(f"{label}: cannot read the spec ({exc.__class__.__name__}: {exc.strerror or exc})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{label}: larger than {MAX_SPEC_BYTES:,} bytes; a spec is a small YAML file")
    try:
        loader = _SpecLoader(raw.decode("utf-8"))
        try:
            node = loader.get_single_node()
            if node is not None:
                _count_values(node, label)
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except UnicodeDecodeError:
        raise SpecError(f"{label}: not UTF-8 text; a spec is a YAML file") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        raise SpecError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise SpecError(f"{label}: invalid YAML: {reason}") from None
    if data is None:
        raise SpecError(f"{label}: the file is empty; a spec is a YAML mapping (name:, model:, ...)")
    if not isinstance(data, dict):
        shown = _describe(type(data)) + (f" ({data[:40]!r})" if isinstance(data, str) else "")
        raise SpecError(f"{label}: the top level must be a mapping of keys (name:, model:, ...), not {shown}")
    return data


def _resolve_spec_path(label: str) -> str:
    """A real path always wins; else a bare name (`quickstart`, `quickstart.yaml`) of a shipped spec."""
    if os.path.exists(label) or os.sep in label or "/" in label:
        return label
    shipped = shipped_specs().get(label.removesuffix(".yaml"))
    return str(shipped) if shipped else label


def _read_chain(label: str, registry, src, chain: tuple[str, ...] = (), labels: tuple[str, ...] = ()) -> dict:
    """The file merged over its `extends:` chain (base first)."""
    real = os.path.realpath(label)
    if real in chain:
        raise SpecError(f"{labels[-1]}: extends: cycle {' -> '.join(labels[chain.index(real):] + (label,))}")
    data = _read_yaml(label)
    _check_values(data, lambda *_: label)
    ext = data.pop("extends", None)
    base: dict = {}
    if ext is not None:
        if not isinstance(ext, str) or not ext:
            raise SpecError(f"{label}: extends: {_show(ext)} is not a file path")
        base_label = os.path.normpath(os.path.join(os.path.dirname(label), os.path.expanduser(ext)))
        if not os.path.exists(base_label):
            raise SpecError(f"{label}: extends: file not found: {base_label}")
        base = _read_chain(base_label, registry, src, chain + (real,), labels + (label,))
    return _merge(base, _flatten_containers(data, registry), label, src)


def _parse_overrides(overrides: Iterable[str], registry) -> dict:
    """`--set a.b=c` strings -> one nested layer; values typed by YAML (then by the field)."""
    layer: dict = {}
    problems = []
    valid = [*META_KEYS, *registry]
    for item in overrides:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not SET_KEY_RE.match(key):
            problems.append(f"--set: {item!r}: expected KEY=VALUE with a dotted KEY, e.g. --set train.lr=3e-4")
        elif parts[0] not in valid:
            problems.append(f"--set: {key}: unknown key '{parts[0]}'{_suggest(parts[0], valid)}")
        elif is_secret_key(parts[-1]):
            problems.append(f"--set: {key}: specs must not contain secrets; {SECRET_ENV_HINT}")
        else:
            try:
                value = yaml.load(text, Loader=_SpecLoader) if text.strip() else None
            except yaml.YAMLError:
                value = text  # not YAML: the text as it is
            head = {"search": 1, "smoke": 1, "variants": 2}.get(parts[0], 0)  # a container's own dotted key follows
            _set_path(layer, parts[:head] + [".".join(parts[head:])] if head and len(parts) > head else parts, value)
    if problems:
        raise SpecError("\n".join(problems))
    return _flatten_containers(layer, registry)


def _flatten_containers(tree: dict, registry) -> dict:
    """search/smoke/variant deltas with dotted keys, whether the YAML nested them or not."""

    def flat(delta, is_search: bool) -> dict:
        if not isinstance(delta, dict):
            return delta
        out: dict = {}

        def walk(parts, value):
            target, _ = _field_type(parts, registry)
            descend = isinstance(value, dict) and value and (target is None or _dataclass_of(target) is not None)
            if descend and not (is_search and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS):
                for k, v in value.items():
                    walk(parts + k.split("."), v)
            else:
                out[".".join(parts)] = value

        for k, v in delta.items():
            walk(k.split("."), v)
        return out

    out = dict(tree)
    for key in ("search", "smoke"):
        if key in out:
            out[key] = flat(out[key], key == "search")
    if isinstance(out.get("variants"), dict):
        out["variants"] = {name: flat(d, False) for name, d in out["variants"].items()}
    return out


def _merge(base: dict, over: dict, label: str, src: dict, path: tuple = ()) -> dict:
    """Deep merge (over wins; a search distribution is replaced whole), recording who set each path."""
    out = dict(base)
    for k, v in over.items():
        p = path + (k,)
        _record(src, p, v, label)
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not (len(p) == 2 and p[0] == "search"):
            out[k] = _merge(out[k], v, label, src, p)
        else:
            out[k] = v
    return out


def _record(src, path, value, label):
    src.pop(path, None)  # re-insert: the dict's order is the order paths were last written
    src[path] = label
    if isinstance(value, dict):
        for k, v in value.items():
            _record(src, path + (k,), v, label)


def _set_path(tree: dict, parts: list[str], value) -> None:
    for p in parts[:-1]:
        if not isinstance(tree.get(p), dict):
            tree[p] = {}
        tree = tree[p]
    tree[parts[-1]] = value


def _nested(deltas: Mapping[str, Any]) -> dict:
    out: dict = {}
    for k, v in deltas.items():
        _set_path(out, k.split("."), v)
    return out


def _apply_smoke(tree: dict, registry, src) -> dict:
    layer: dict = {}
    for section, cls in [*registry.items(), ("sweep", SweepConfig)]:
        delta = {**DEFAULT_SMOKE.get(section, {}), **(getattr(cls, "SMOKE", None) or {})}
        if kept := {k: v for k, v in delta.items() if k in _fields(cls)}:
            layer[section] = kept
    if isinstance(tree.get("name"), str) and not tree["name"].endswith(SMOKE_SUFFIX):
        layer["name"] = tree["name"] + SMOKE_SUFFIX
    if isinstance(tree.get("seeds"), list) and tree["seeds"]:
        layer["seeds"] = tree["seeds"][:1]
    if "tags" in _fields(registry["track"]):
        tags = tree.get("track", {}).get("tags") if isinstance(tree.get("track"), dict) else None
        tags = tags if isinstance(tags, list) else []
        layer.setdefault("track", {})["tags"] = tags if "smoke" in tags else tags + ["smoke"]
    tree = _merge(tree, layer, "--smoke (built-in)", src)
    if isinstance(tree.get("smoke"), dict):
        tree = _merge(tree, _nested(tree["smoke"]), src.get(("smoke",), "smoke"), src)
    return tree


# ---------------------------------------------------------------------------------------------------
# Validation: problems with provenance

_MISSING = object()  # a value that failed its check (its problems are recorded)


# A problem is (path, message). The path names the place and picks the file that wrote it; a cross-field
# message has path () and names its fields itself.


def _raise_if(problems: list[tuple[tuple, str]], label_for) -> None:
    lines = []
    for path, message in problems:
        line = f"{label_for(path, message)}: " + (f"{'.'.join(map(str, path))}: " if path else "") + message
        if line not in lines:
            lines.append(line)
    if lines:
        raise SpecError("\n".join(lines))


_FIELD_REF_RE = re.compile(r"\b([a-z_]+(?:\.[a-z_0-9]+)+)\b")


def _label_for(src: dict, default: str):
    """(path, message) -> the file (or --set) that wrote the path; a cross-field message is blamed on
    whichever field it names was written last (`--set model.n_heads=5` for "d_model ... divisible by n_heads")."""
    order = {p: i for i, p in enumerate(src)}

    def label(path: tuple, message: str = "") -> str:
        if not path:
            named = [p for p in (tuple(m.split(".")) for m in _FIELD_REF_RE.findall(message)) if p in order]
            return src[max(named, key=order.__getitem__)] if named else default
        return next((src[path[:n]] for n in range(len(path), 0, -1) if path[:n] in src), default)

    return label


def _registry(overrides: Mapping[str, type | str] | None) -> dict[str, type]:
    if unknown := set(overrides or ()) - set(SECTIONS):
        raise ValueError(f"sections= can only replace {list(SECTIONS)}, not {sorted(unknown)}")
    registry = {}
    for section, ref in {**SECTIONS, **(overrides or {})}.items():
        if isinstance(ref, str):
            module, _, name = ref.partition(":")
            try:
                ref = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as exc:  # a broken install, not a user mistake: keep the traceback
                raise ImportError(f"spec section '{section}' needs {module}:{name}, which cannot be imported: {exc}") \
                    from exc
        registry[section] = ref
    return registry


def _check_values(tree: Any, label_for) -> None:
    """Refuse anywhere: credential-looking keys and values (never echoed), and ints beyond int64."""
    problems = []

    def walk(node, p, item=""):
        if isinstance(node, dict):
            for k, v in node.items():
                if any(is_secret_key(x) for x in str(k).split(".")) or looks_like_secret(k):
                    problems.append((p + (k,), f"specs must not contain secrets; {SECRET_ENV_HINT}"))
                else:
                    walk(v, p + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, p, f"item {i}: ")
        elif looks_like_secret(node):
            problems.append((p, "specs must not contain secrets (this value looks like an API key); "
                                        + SECRET_ENV_HINT))
        elif isinstance(node, int) and not -(2**63) <= node < 2**63:  # pydantic's ints are unbounded
            problems.append((p, f"{item}{node} is not a 64-bit integer"))

    walk(tree, ())
    _raise_if(problems, label_for)


def _build_spec(tree: dict, registry: dict[str, type], src: dict, default_label: str) -> ExperimentSpec:
    label_for = _label_for(src, default_label)
    _check_values(tree, label_for)
    if "extends" in tree:  # only spec_from_dict gets here with it: files resolve it while reading
        raise SpecError(f"{label_for(('extends',))}: extends: a resolved spec cannot extend another; "
                        "load the file with load_spec")
    tree = {k: v for k, v in tree.items() if v is not None}  # `key:` with nothing is the default
    valid = [*META_KEYS, *registry]
    problems = [((k,), f"unknown key '{k}'{_suggest(k, valid)}") for k in tree if k not in valid]
    name = _convert(str, tree.get("name"), ("name",), problems) if "name" in tree else None
    if name is None:
        problems.append((("name",), "missing: every spec needs a name, e.g. name: tsa_ablation"))
    elif name is not _MISSING and not NAME_RE.match(name):
        problems.append((("name",), f"{_show(name)} must match [a-z0-9][a-z0-9_-]* "
                                            "(lowercase letters, digits, '_' and '-')"))
    description = _convert(str, tree.get("description", ""), ("description",), problems)
    seeds = _convert(tuple[Annotated[int, Field(ge=0)], ...], tree.get("seeds", [0]), ("seeds",), problems)
    if seeds == ():
        problems.append((("seeds",), "[] is empty; give at least one seed, e.g. seeds: [0]"))
    elif seeds is not _MISSING and len(set(seeds)) != len(seeds):
        problems.append((("seeds",), f"{_show(seeds)} repeats a seed"))
    sweep = _convert(SweepConfig, tree.get("sweep", {}), ("sweep",), problems)
    before = len(problems)
    sections = _build_sections(tree, registry, problems)
    sections_ok = len(problems) == before  # else every variant would repeat the sections' problems
    variants = _build_variants(tree.get("variants", {}), registry, sections if sections_ok else None, problems)
    search = _build_search(tree.get("search", {}), registry, problems)
    smoke = _build_deltas(tree.get("smoke", {}), registry, ("smoke",), problems)
    _raise_if(problems, label_for)
    return ExperimentSpec(name=name, description=description, seeds=seeds, variants=variants, search=search,
                          sweep=sweep, smoke=smoke, source=default_label, registry=tuple(registry.items()), **sections)


def _build_sections(tree: dict, registry, problems, cross: tuple | None = None) -> dict[str, Any]:
    """Every section of a nested tree, the model's feature-set facts filled in. A cross-field error
    goes to `cross` (e.g. variants.wide) when given."""
    out: dict[str, Any] = {}
    for section, cls in registry.items():
        raw = {} if tree.get(section) is None else tree[section]
        if section == "model" and isinstance(out.get("features"), FeaturesConfig) and isinstance(raw, dict):
            raw = _derive_model(dict(raw), out["features"], cls, problems, cross)
        out[section] = _convert(cls, raw, (section,), problems, cross=cross)
    return out


def _derive_model(raw: dict, feats: FeaturesConfig, cls: type, problems, cross) -> dict:
    """The model's keys with the feature set's facts filled in; a different stated value is a problem."""
    set_name = feats.set
    try:
        facts = feature_facts(set_name, feats.path)
    except SpecError as exc:
        problems.append((cross or ("features", "set"), str(exc)))
        return raw
    for key, value in facts.items():
        if key not in _fields(cls):
            continue
        if key in raw:
            stated = _convert(_fields(cls)[key], raw[key], ("model", key), problems)
            if stated is not _MISSING and stated != value:
                message = (f"model.{key} ({_show(stated)}) disagrees with feature set '{set_name}' ({_show(value)}); "
                           f"leave model.{key} out, it is derived from features.set")
                problems.append((cross or (), message))
        raw[key] = value
    return raw


def _build_deltas(raw, registry, where: tuple, problems) -> FrozenDict:
    """{dotted.key: value} of section fields, each converted to its field's type."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        problems.append((where, f"{_show(raw)} is not a mapping of dotted.key: value"))
        return FrozenDict()
    out = {}
    for key, value in raw.items():
        tp = _delta_type(key, registry, where + (key,), problems)
        if tp is not _MISSING and (value := _convert(tp, value, where + (key,), problems)) is not _MISSING:
            out[key] = value
    return FrozenDict(out)


def _apply_deltas(sections: dict, deltas, registry, problems, prefix: tuple) -> dict[str, Any]:
    """Built sections with dotted-key deltas applied, rebuilt (cross-field errors at `prefix`); {} on problems."""
    before = len(problems)
    deltas = _build_deltas(deltas, registry, prefix, problems)
    if len(problems) > before:
        return {}
    tree = _plain(sections)
    for key, value in deltas.items():
        _set_path(tree, key.split("."), _plain(value))
    if tree["features"]["set"] != sections["features"].set:  # the derived facts follow the new set
        tree["model"] = {k: v for k, v in tree["model"].items()
                         if k not in DERIVED_MODEL_KEYS or f"model.{k}" in deltas}
    return _build_sections(tree, registry, problems, cross=prefix)


def _build_variants(raw, registry, sections: dict | None, problems) -> FrozenDict:
    if not isinstance(raw, dict):
        problems.append((("variants",), f"{_show(raw)} is not a mapping of variant name -> "
                                                "{dotted.key: value}"))
        return FrozenDict()
    if len(raw) > MAX_VARIANTS:
        problems.append((("variants",), f"{len(raw):,} variants; at most {MAX_VARIANTS:,} "
                                                "(split the study into several specs)"))
        return FrozenDict()
    # The spec as written is a variant too: an implicit `base` first, unless a listed variant already
    # is it (no deltas, e.g. `full: {}`), which then stays where the user put it.
    out = {} if BASE_VARIANT in raw or any(not d for d in raw.values()) else {BASE_VARIANT: FrozenDict()}
    for name, delta in raw.items():
        where = ("variants", name)
        if not NAME_RE.match(name):
            problems.append((where, f"variant name {name!r} must match [a-z0-9][a-z0-9_-]*"))
            continue
        if name.endswith(ENSEMBLE_SUFFIX):
            problems.append((where, (f"variant name {name!r} ends with {ENSEMBLE_SUFFIX!r}, which names the seed "
                                     "ensembles of a run (docs/experiments.md §16); give this variant another name")))
            continue
        before = len(problems)
        out[name] = _build_deltas(delta, registry, where, problems)
        if name == BASE_VARIANT and out[name]:
            problems.append((where, "the base variant is the spec as written and has no deltas; "
                                            "give this variant another name"))
        if len(problems) == before and sections is not None and out[name]:
            _apply_deltas(sections, out[name], registry, problems, where)  # its cross-field errors show at load
    return FrozenDict(out)


_FORMS = ("{loguniform: [low, high]}, {uniform: [low, high]}, {randint: [low, high]}, "
          "{quniform: [low, high, q]} or {choice: [a, b, ...]}")
_SAMPLES = {"loguniform": (float,), "uniform": (float,), "randint": (int,), "quniform": (float, int)}


def _build_search(raw, registry, problems) -> FrozenDict:
    if not isinstance(raw, dict):
        problems.append((("search",), f"{_show(raw)} is not a mapping of dotted.key: distribution"))
        return FrozenDict()
    out = {}
    for key, dist in raw.items():
        path = ("search", key)
        leaf = _delta_type(key, registry, path, problems)
        if leaf is _MISSING:
            continue
        kind, args = next(iter(dist.items())) if isinstance(dist, dict) and len(dist) == 1 else (None, None)
        n, base = DISTRIBUTIONS.get(kind), _base_type(leaf)
        vtype = getattr(base, "__name__", str(base))
        before = len(problems)
        if kind is None:
            problems.append((path, f"{_show(dist)} is not a distribution; use {_FORMS}"))
        elif kind not in DISTRIBUTIONS:
            problems.append((path, f"unknown distribution '{kind}'{_suggest(kind, DISTRIBUTIONS)}"))
        elif not isinstance(args, list) or (len(args) != n if n else not args):
            want = {"quniform": "[low, high, q]", "choice": "a non-empty list of values"}.get(kind, "[low, high]")
            problems.append((path, f"{kind} takes {want}, got {_show(args)}"))
        elif kind == "choice":
            values = tuple(_convert(leaf, v, path, problems, prefix=f"choice[{i}]: ") for i, v in enumerate(args))
            if len(problems) == before:
                out[key] = SearchDim(key, kind, values=values, value_type=vtype)
        elif base not in _SAMPLES[kind]:
            use = "randint, quniform or choice" if base is int else "choice"
            problems.append((path, f"{kind} cannot sample {key}, which takes {_describe(leaf)}; use {use}"))
        else:
            nums = [_convert(leaf, a, path, problems, prefix=f"{kind} {arg}: ")
                    for a, arg in zip(args, ("low", "high", "q"))]
            if len(problems) > before:
                continue
            low, high, q = nums + [None] * (3 - n)
            checks = [(low < high, f"{kind} low ({_show(low)}) must be < high ({_show(high)})"),
                      (kind != "loguniform" or low > 0, f"loguniform low ({_show(low)}) must be > 0"),
                      (kind != "quniform" or q > 0, f"quniform q ({_show(q)}) must be > 0")]
            if bad := next((message for ok, message in checks if not ok), None):
                problems.append((path, bad))
            else:
                out[key] = SearchDim(key, kind, low=low, high=high, q=q, value_type=vtype)
    return FrozenDict(out)


def _field_type(parts: list[str], registry) -> tuple[Any, str | None]:
    """(the field type at a dotted section path, None) or (None, why there is no such field)."""
    if parts[0] not in registry:
        return None, (f"'{parts[0]}' is not a section{_suggest(parts[0], registry)}; "
                      f"deltas change section fields ({', '.join(registry)})")
    tp: Any = registry[parts[0]]
    for i, p in enumerate(parts[1:], start=1):
        cls = _dataclass_of(tp)
        if cls is None:
            return None, f"{'.'.join(parts[:i])} is {_describe(tp)}, it has no key '{p}'"
        if p not in _fields(cls):
            return None, f"unknown key '{p}'{_suggest(p, _fields(cls))}"
        tp = _fields(cls)[p]
    if len(parts) == 1:
        return None, f"'{parts[0]}' is a section; name one of its fields, e.g. {parts[0]}.<field>"
    return tp, None


def _delta_type(key: str, registry, where: tuple, problems):
    tp, why = _field_type(str(key).split("."), registry)
    if why:
        problems.append((where, why))
    return _MISSING if why else tp


def _suggest(key, valid: Iterable, listing: bool = True) -> str:
    valid = [v for v in valid if isinstance(v, str)]
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})" if listing else ""


# ---------------------------------------------------------------------------------------------------
# pydantic, and its errors as the user's lines

# pydantic validates the dataclasses themselves; the config reaches a stdlib dataclass only through a
# container around it, hence the 1-tuple.
_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


@functools.cache
def _adapter(tp) -> TypeAdapter:
    return TypeAdapter(tuple[tp], config=_CONFIG)


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    """Init field name -> annotated type (bounds included) of a dataclass."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _convert(tp, value, path: tuple, problems: list, prefix: str = "", cross: tuple | None = None):
    """`value` as `tp` (dataclasses built), or _MISSING after its problems: one per pydantic error, in
    the order the keys were written, and one per line of a `__post_init__` SpecError (at `cross` if given)."""
    numbers = _number_dates(tp, value, ())
    if numbers:
        problems.extend((path + where, prefix + message) for where, message in numbers)
        return _MISSING
    try:
        return _adapter(tp).validate_python((value,))[0]
    except ValidationError as exc:
        order = list(value) if isinstance(value, dict) else []
        errors = [(err["loc"][1:], err) for err in exc.errors(include_url=False)]
        for loc, err in sorted(errors, key=lambda e: order.index(e[0][0]) if e[0] and e[0][0] in order else len(order)):
            where, message = _error_line(tp, loc, err)
            problems.append((path + where, prefix + message))
    except SpecError as exc:
        for line in str(exc).splitlines() or [""]:
            problems.append((cross or (), prefix + line))
    return _MISSING


def _number_dates(tp, value, where: tuple) -> list[tuple[tuple, str]]:
    """Numbers written for date fields. pydantic reads 1704067200 (or 1704067200000) as Unix time,
    2024-01-01, silently; a date is written as YYYY-MM-DD, so any number there is refused."""
    if _base_type(tp) is dt.date and isinstance(value, (int, float)) and not isinstance(value, bool):
        return [(where, f"{_show(value)} is a number, not a date; write the date as YYYY-MM-DD "
                        "(numbers are not read as Unix time)")]
    cls = _dataclass_of(tp)
    if cls is None or not isinstance(value, dict):
        return []
    return [problem for key, v in value.items() if key in _fields(cls)
            for problem in _number_dates(_fields(cls)[key], v, where + (key,))]


_OPS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _error_line(tp, loc: tuple, err) -> tuple[tuple, str]:
    """A pydantic error at `loc` -> (its path below `tp`, a reason naming the value as the user wrote it)."""
    where, item, kind, value = [], "", err["type"], err.get("input")
    for part in loc:
        cls, base = _dataclass_of(tp), _base_type(tp)
        if cls is not None and part in _fields(cls):
            tp = _fields(cls)[part]
            where.append(part)
        elif cls is not None and kind == "unexpected_keyword_argument":
            return (*where, part), f"unknown key '{part}'{_suggest(part, _fields(cls))}"
        elif isinstance(part, int) and typing.get_origin(base) is tuple:
            tp, item = typing.get_args(base)[0], f"item {part}: "
        # else: a union member's tag ('int', 'none'), not a place
    shown = item + _show(value)
    if kind == "missing":
        return tuple(where), "missing (required, no default)"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = _bounds(tp) or err.get("ctx", {})
        lo, hi = (next((op for op in ops if op in bounds), None) for ops in (("ge", "gt"), ("le", "lt")))
        if lo and hi:
            return tuple(where), (f"{shown} is not in {'[('[lo == 'gt']}{_show(bounds[lo])}, "
                                  f"{_show(bounds[hi])}{'])'[hi == 'lt']}")
        return tuple(where), f"{shown} is not {_OPS[lo or hi]} {_show(bounds[lo or hi])}"
    if kind == "value_error":
        return tuple(where), f"{shown} {err['ctx']['error']}"
    literal = kind == "literal_error" and isinstance(value, str)
    hint = _suggest(value, typing.get_args(_base_type(tp)), listing=False) if literal else ""
    return tuple(where), f"{shown} is not {'a finite number' if kind == 'finite_number' else _describe(tp)}{hint}"


def _bounds(tp) -> dict[str, Any]:
    """ge/gt/le/lt declared on a field type (`Annotated[float, Field(ge=0, lt=1)]`)."""
    metas = tp.__metadata__ if typing.get_origin(tp) is Annotated else ()
    return {op: getattr(c, op) for m in metas for c in getattr(m, "metadata", [m]) for op in _OPS
            if getattr(c, op, None) is not None}


def _base_type(tp):
    """X for Annotated[X, ...] and X | None, else tp."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) == 1:
            return _base_type(arms[0])
    return tp


def _dataclass_of(tp) -> type | None:
    """The dataclass inside `tp` (X, X | None), else None."""
    base = _base_type(tp)
    return base if dataclasses.is_dataclass(base) and isinstance(base, type) else None


def _describe(tp) -> str:
    base = _base_type(tp)
    origin = typing.get_origin(base)
    if origin is Literal:
        return f"one of {_show(list(typing.get_args(base)))}"
    if origin in (typing.Union, types.UnionType):  # e.g. train.compile: a boolean or 'auto'
        return " or ".join(_describe(arm) for arm in typing.get_args(base) if arm is not type(None))
    if _dataclass_of(base) is not None:
        return f"a mapping of {base.__name__} fields"
    if origin in (tuple, list) or base in (tuple, list):
        return "a list"
    if origin in (dict, Mapping) or base is dict:
        return "a mapping"
    return {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string",
            dt.date: "a date (YYYY-MM-DD)"}.get(base, f"a {getattr(base, '__name__', base)}")


def _show(value) -> str:
    """A value as the user wrote it in YAML: 'text', 1.5, true, null, [1, 2]."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _plain(value):
    """Plain YAML/JSON-safe types: dataclass -> dict of init fields, tuple -> list, date -> ISO string."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value) if isinstance(value, Path) else value
