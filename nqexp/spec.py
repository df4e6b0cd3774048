"""Experiment specs: one YAML file -> a typed, frozen ExperimentSpec, or a SpecError (docs/experiments.md).

    spec = load_spec("experiments/tsa_ablation.yaml", overrides=["train.lr=3e-4"], smoke=False)
    for trial in spec.trials():          # variants x seeds
        ...trial.spec.model, trial.spec.train, trial.tracker_config()

Sections and where their dataclasses live (`SECTIONS`; imported on first use, so `import nqexp.spec`
never imports torch or pandas):

    data      DataConfig       (here)          features  FeaturesConfig  (here)
    windows   WindowConfig     nqexp.windows   splits    SplitConfig     nqexp.windows
    model     ModelConfig      nqexp.model     train     TrainConfig     nqexp.train
    eval      EvalConfig       nqexp.evaluate  track     TrackConfig     (here)
    resources ResourcesConfig  (here)

Validation is pydantic's: each section dataclass gets a generated pydantic model with the same
fields (unknown keys forbidden, floats finite, ints within int64, bounds declared on the field as
`Annotated[float, Field(gt=0)]`). Every pydantic error becomes one line naming the file that set
the value and its dotted path; then the dataclass is built, and its `__post_init__` may raise
SpecError for cross-field rules ("model.d_model (96) must be divisible by model.n_heads (5)").

The feature set (sql/features/<set>.yaml, docs/features.md) owns its facts: `model.horizons`,
`model.n_vars` and, for a grouped set, `model.groups` are derived from `features.set`; a spec that
states another value is an error naming both.

Top-level keys besides the sections:
    name         required, [a-z0-9][a-z0-9_-]*; --smoke runs as `<name>-smoke`
    description  free text
    extends      a base YAML file, relative to this file; bases may extend further (cycles are errors)
    seeds        list of ints, default [0]
    variants     {name: {dotted.key: value}}; a `base` variant with no deltas is always there (add it
                 explicitly to choose its place). The first variant is the reference of paired comparisons.
    search       {dotted.key: {loguniform: [lo, hi]} | {uniform: [lo, hi]} | {randint: [lo, hi]}
                 | {quniform: [lo, hi, q]} | {choice: [v, ...]}}; randint is inclusive of both ends
    sweep        SweepConfig: num_samples, max_epochs, grace_period, reduction_factor, scheduler, algorithm
    smoke        {dotted.key: value} applied by --smoke on top of the built-in tiny settings

Precedence, lowest first: base file < extending file < --smoke deltas < --set overrides < variant deltas.
Error lines look like `<file>: <dotted.path>: <reason>`, one per problem; YAML syntax errors are
`<file>:<line>:<col>: invalid YAML: <problem>`. A spec name that is no file path is looked up among
the specs shipped with nqexp (`shipped_specs()`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import functools
import importlib
import itertools
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic import create_model

from nqexp.errors import SpecError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SET_KEY_RE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*$")
BASE_VARIANT = "base"
DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "randint": 2, "quniform": 3, "choice": None}
SECRET_ENV_HINT = "set WANDB_API_KEY / DATABENTO_API_KEY in the environment instead"
SECRET_ENV_VARS = ("DATABENTO_API_KEY", "WANDB_API_KEY")
_SECRET_RE = re.compile(r"(^|_)(api_?key|apikey|key|token|secret|password|passwd)$", re.IGNORECASE)
# Key shapes: Databento `db-` + alphanumerics, W&B 40 lowercase hex characters.
_SECRET_VALUE_RE = re.compile(r"\bdb-[A-Za-z0-9]{20,}|(?<![0-9A-Za-z])[0-9a-f]{40}(?![0-9A-Za-z])")
REDACTED = "***"
# Hostile input stays cheap: specs are small files, and YAML aliases must not expand without end.
MAX_SPEC_BYTES = 1_000_000
MAX_YAML_VALUES = 100_000
MAX_VARIANTS = 1_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_SEEDS = tuple[Annotated[int, Field(ge=0)], ...]


# --------------------------------------------------------------------------------------------
# Glue sections (the stage sections live in their stage modules)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Which bar series feeds the experiment (the bar size is the feature set's)."""

    symbol: str = "NQ.demo"  # series in raw_bars ('NQ.demo' is generated on demand)
    demo_days: Annotated[int | None, Field(ge=1, le=36_500)] = 730  # NQ.demo missing: generate this many days
    demo_seed: Annotated[int, Field(ge=0)] = 0  # seed of the generated demo series


@dataclass(frozen=True)
class FeaturesConfig:
    """Which SQL feature set (sql/features/<set>.yaml) builds the inputs and fixes the horizons."""

    set: str = "migt24"  # feature set name


@dataclass(frozen=True)
class TrackConfig:
    """Where results go: the local run store (source of truth) and Weights & Biases."""

    wandb_project: str = "nqexp"  # W&B project
    wandb_entity: str | None = None  # W&B entity (None: the API key's default)
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online iff WANDB_API_KEY is set
    store: str = "runs"  # local run store directory, relative to the working directory (shared FS on clusters)
    ray_storage: str | None = None  # Tune experiment state: None = inside the store; or s3://... / gs://... for multi-node
    tags: tuple[str, ...] = ()  # W&B tags of every trial

    def effective_wandb_mode(self, environ: Mapping[str, str] | None = None) -> str:
        """'online' | 'offline' | 'disabled'; 'auto' is online only when WANDB_API_KEY is set."""
        environ = os.environ if environ is None else environ
        if self.wandb_mode != "auto":
            return self.wandb_mode
        return "online" if environ.get("WANDB_API_KEY") else "offline"

    def store_path(self, cwd: str | os.PathLike | None = None) -> Path:
        """The run store as an absolute path (Ray trials run in another working directory)."""
        return (Path(cwd or os.getcwd()) / os.path.expanduser(self.store)).resolve()


@dataclass(frozen=True)
class ResourcesConfig:
    """Ray Tune resources per trial and failure handling."""

    cpus_per_trial: Annotated[float, Field(gt=0)] = 1.0  # CPUs reserved per trial
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0.0  # GPUs per trial; fractions share one GPU
    max_concurrent_trials: Annotated[int | None, Field(ge=1)] = None  # None: as many as resources allow
    max_failures: Annotated[int, Field(ge=-1)] = 1  # retries of a failed trial (-1: forever)


@dataclass(frozen=True)
class SweepConfig:
    """`nqexp sweep`: search algorithm and early stopper over `search:`."""

    num_samples: Annotated[int, Field(ge=1, le=100_000)] = 20  # trials sampled from the search space
    max_epochs: Annotated[int | None, Field(ge=1)] = None  # ASHA max_t (None: train.max_epochs)
    grace_period: Annotated[int, Field(ge=1)] = 1  # epochs before ASHA may stop a trial
    reduction_factor: Annotated[int, Field(ge=2)] = 4  # ASHA halving rate
    scheduler: Literal["asha", "median", "none"] = "asha"  # early stopper
    algorithm: Literal["tpe", "random"] = "tpe"  # tpe: Optuna TPE via ray.tune.search.optuna
    # The objective is fixed (not keys): val CRPS, minimized; gated (collapsed) trials never win.
    metric: ClassVar[str] = "val/crps"
    mode: ClassVar[str] = "min"

    def __post_init__(self):
        if self.max_epochs is not None and self.grace_period > self.max_epochs:
            raise SpecError(
                f"sweep.grace_period ({self.grace_period}) must be <= sweep.max_epochs ({self.max_epochs})"
            )


# Section name -> dataclass, or "module:Class" imported on first use. Order is the YAML order.
SECTIONS: dict[str, type | str] = {
    "data": DataConfig,
    "features": FeaturesConfig,
    "windows": "nqexp.windows:WindowConfig",
    "splits": "nqexp.windows:SplitConfig",
    "model": "nqexp.model:ModelConfig",
    "train": "nqexp.train:TrainConfig",
    "eval": "nqexp.evaluate:EvalConfig",
    "track": TrackConfig,
    "resources": ResourcesConfig,
}
META_KEYS = ("name", "description", "extends", "seeds", "variants", "search", "sweep", "smoke")

# Built-in --smoke deltas: tiny sizes, two steps, CPU, one seed. A section class may instead define
# `SMOKE: ClassVar[dict]` (field -> value); keys whose field does not exist are skipped, so this
# table never breaks when a stage renames a field (it only stops shrinking it).
# Data stays as the spec says (its split dates must still find samples); windows shrink T and keep
# a small share of each split's samples instead.
DEFAULT_SMOKE: dict[str, dict[str, Any]] = {
    "windows": {"t_max": 32, "lookback_minutes": 160, "min_valid_bars": 4, "subsample_fraction": 0.02},
    "model": {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_temporal_layers": 1, "n_variable_layers": 1,
              "dropout": 0.0},
    "train": {"max_epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "grad_accum": 1, "warmup_steps": 1,
              "patience": 1, "keep_checkpoints": 1, "eval_batch_size": 64, "time_budget_s": 30.0},
    "resources": {"cpus_per_trial": 1.0, "gpus_per_trial": 0.0},
    "track": {"wandb_mode": "offline"},
}
DEFAULT_SMOKE_META = {"sweep": {"num_samples": 2, "max_epochs": 1, "grace_period": 1}}
DERIVED_MODEL_KEYS = ("horizons", "n_vars", "groups")  # feature_facts() keys: the feature set owns them
SMOKE_SUFFIX = "-smoke"  # a smoke run is its own experiment: it never collides with the full run's store entry


# --------------------------------------------------------------------------------------------
# Spec objects
# --------------------------------------------------------------------------------------------


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
    """One dimension of `search:` in neutral form; tune.py maps it to a Tune sampler.

    kind: loguniform | uniform (floats in [low, high]), randint (ints low..high, both inclusive),
    quniform (multiples of q in [low, high], int when the field is), choice (one of `values`).
    `value_type` is the field's base type name ("float", "int", "str", "bool", ...).
    """

    path: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    q: float | int | None = None
    values: tuple = ()
    value_type: str = "float"

    def to_dict(self) -> dict[str, list]:
        if self.kind == "choice":
            return {"choice": [_plain(v) for v in self.values]}
        args = [self.low, self.high] + ([self.q] if self.kind == "quniform" else [])
        return {self.kind: args}


@dataclass(frozen=True)
class ExperimentSpec:
    """A resolved experiment: sections (the base variant), variants, seeds, search space.

    Frozen. Use `apply()` for a changed copy, `trials()` for the variants x seeds expansion and
    `to_dict()` for the YAML/JSON-safe resolved form.
    """

    name: str
    data: DataConfig
    features: FeaturesConfig
    windows: Any  # nqexp.windows.WindowConfig
    splits: Any  # nqexp.windows.SplitConfig
    model: Any  # nqexp.model.ModelConfig
    train: Any  # nqexp.train.TrainConfig
    eval: Any  # nqexp.evaluate.EvalConfig
    track: TrackConfig
    resources: ResourcesConfig
    description: str = ""
    seeds: tuple[int, ...] = (0,)
    variants: FrozenDict = field(default_factory=lambda: FrozenDict({BASE_VARIANT: FrozenDict()}))
    search: FrozenDict = field(default_factory=FrozenDict)  # dotted key -> SearchDim
    sweep: SweepConfig = field(default_factory=SweepConfig)
    smoke: FrozenDict = field(default_factory=FrozenDict)  # dotted key -> value (user's --smoke deltas)
    source: str = field(default="", compare=False)  # the file it was loaded from
    registry: tuple = field(default=(), compare=False, repr=False)  # (section, class) pairs used

    @property
    def reference_variant(self) -> str:
        """The variant paired comparisons are made against: the first one."""
        return next(iter(self.variants))

    @property
    def seed(self) -> int:
        """The first seed (a trial's spec has exactly one)."""
        return self.seeds[0]

    @property
    def sections(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SECTIONS}

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain YAML/JSON-safe types; `spec_from_dict` reads it back equal."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["seeds"] = list(self.seeds)
        out["variants"] = {v: {k: _plain(x) for k, x in d.items()} for v, d in self.variants.items()}
        for section in SECTIONS:
            out[section] = _plain(getattr(self, section))
        if self.search:
            out["search"] = {k: dim.to_dict() for k, dim in self.search.items()}
        out["sweep"] = _plain(self.sweep)
        if self.smoke:
            out["smoke"] = {k: _plain(x) for k, x in self.smoke.items()}
        return out

    def search_space(self) -> dict[str, SearchDim]:
        """dotted key -> SearchDim (neutral; tune.py builds the Tune param space from it)."""
        return dict(self.search)

    def apply(self, deltas: Mapping[str, Any], source: str = "params") -> ExperimentSpec:
        """A copy with dotted-key deltas applied to the sections, converted to each field's type
        (e.g. Tune's sampled params). Raises SpecError naming `source` when they are invalid."""
        return self._rebuild([(_split(k), v) for k, v in deltas.items()], source, prefix=())

    def trials(self) -> list[TrialSpec]:
        """Variants x seeds, variant-major, in spec order. Names are f"{variant}-s{seed}"."""
        out = []
        for variant, delta in self.variants.items():
            vspec = self._rebuild([(_split(k), v) for k, v in delta.items()], self.source or "spec",
                                  prefix=("variants", variant))
            for seed in self.seeds:
                tspec = dataclasses.replace(vspec, seeds=(seed,), variants=FrozenDict({BASE_VARIANT: FrozenDict()}),
                                            search=FrozenDict())
                out.append(TrialSpec(self.name, variant, seed, f"{variant}-s{seed}", tspec,
                                     is_reference=variant == self.reference_variant))
        return out

    def _rebuild(self, items, source, prefix) -> ExperimentSpec:
        registry = dict(self.registry) or _registry(None)
        tree = {s: _plain(getattr(self, s)) for s in SECTIONS}
        problems: list[_Problem] = []
        for parts, value in items:
            where = prefix + (".".join(parts),)
            found = _check_delta_path(parts, registry, where, problems)
            if found is not _MISSING:
                value = _coerce(_field_types(found[0])[found[1]], value, where, problems)
                if value is not _MISSING:
                    _set_path(tree, parts, _plain(value))
        if tree["features"]["set"] != self.features.set:  # derived values follow the new set
            stated = {parts[1] for parts, _ in items if parts[0] == "model" and len(parts) > 1}
            tree["model"] = {k: v for k, v in tree["model"].items() if k in stated or k not in DERIVED_MODEL_KEYS}
        built = _build_sections(tree, registry, problems, cross_path=prefix) if not problems else {}
        _raise_if(problems, lambda path, message=None: source)
        return dataclasses.replace(self, **built)


@dataclass(frozen=True)
class TrialSpec:
    """One trial: a variant at a seed, with its own fully resolved single-trial spec."""

    experiment: str
    variant: str
    seed: int
    trial_name: str  # f"{variant}-s{seed}"
    spec: ExperimentSpec  # variant deltas applied, seeds == (seed,), no variants/search left
    is_reference: bool = False  # the first variant: paired comparisons are against it

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "variant": self.variant, "seed": self.seed,
                "trial_name": self.trial_name, "spec": self.spec.to_dict()}

    def tracker_config(self) -> dict[str, Any]:
        """Flat dotted-key config for W&B (`model.d_model`, ...), secrets removed."""
        flat = flatten_dotted(self.spec.to_dict())
        flat.update(experiment=self.experiment, variant=self.variant, seed=self.seed, trial_name=self.trial_name)
        return redact(flat)


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def load_spec(path: str | os.PathLike, overrides: Iterable[str] = (), smoke: bool = False, *,
              sections: Mapping[str, type | str] | None = None) -> ExperimentSpec:
    """Read a spec file (following `extends:`), apply `--smoke` and `--set KEY=VALUE` overrides,
    validate everything and return the frozen spec, or raise SpecError (one line per problem).

    `path` that is no file but the name of a shipped spec ("quickstart") loads that one.
    `sections` replaces entries of SECTIONS (test hook: stand-in dataclasses for stages whose
    modules are not importable in a test), e.g. `sections={"model": TinyModelConfig}`.
    """
    label = _resolve_spec_path(os.fspath(path))
    registry = _registry(sections)
    src: dict[tuple, str] = {}
    tree = _read_chain(label, registry, src)
    set_layer = _parse_overrides(overrides, registry)
    tree = _merge(tree, set_layer, "--set", src)
    if smoke:
        tree = _apply_smoke(tree, registry, src)
        tree = _merge(tree, set_layer, "--set", src)  # --set beats the smoke deltas too
    return _build_spec(tree, registry, src, label)


def spec_from_dict(data: Mapping[str, Any], source: str = "<dict>", *,
                   sections: Mapping[str, type | str] | None = None) -> ExperimentSpec:
    """Validate an already-parsed spec mapping (e.g. a resolved spec shipped to a Ray worker).
    `extends` is not followed here."""
    registry = _registry(sections)
    src: dict[tuple, str] = {}
    tree = _merge({}, _flatten_containers(dict(data), registry), source, src)
    return _build_spec(tree, registry, src, source)


def apply_overrides(spec_dict: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a resolved spec dict with dotted-key values set (e.g. Tune's sampled params).
    Not validated here: `spec_from_dict` on the result checks them."""
    out = _plain(spec_dict)
    for key, value in params.items():
        _set_path(out, _split(key), _plain(value))
    return out


def dump_resolved(spec: ExperimentSpec, path: str | os.PathLike) -> Path:
    """Write the resolved spec as YAML (atomically); `load_spec` reads it back to an equal spec."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Resolved spec of experiment '{spec.name}' (extends, --set and --smoke applied).\n"
              f"# Reproduce with: nqexp run {path.name}\n")
    text = header + yaml.safe_dump(redact(spec.to_dict()), sort_keys=False, allow_unicode=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def shipped_specs() -> dict[str, Path]:
    """name -> file of the experiment specs shipped with nqexp (the repo's experiments/, which a
    wheel carries as the package data `nqexp.experiments`), bases included."""
    try:  # iterdir: a namespace package's files() is a MultiplexedPath, whose str() is no path
        files = [Path(str(p)) for p in resources.files("nqexp.experiments").iterdir()]
    except (ModuleNotFoundError, OSError):  # a source checkout: the repo's folder
        files = list((Path(__file__).resolve().parent.parent / "experiments").iterdir())
    return {p.stem: p for p in sorted(files) if p.suffix == ".yaml"}


def feature_facts(set_name: str) -> dict[str, Any]:
    """What a feature set fixes for the model: `horizons` (bars), `n_vars` and, for a grouped set,
    `groups` (sizes in column order). SpecError for an unknown or broken set."""
    from nqexp import features
    from nqexp.errors import SqlError

    known = features.list_sets()
    if set_name not in known:
        close = difflib.get_close_matches(set_name, known, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"known sets: {', '.join(known)}"
        raise SpecError(f"unknown feature set '{set_name}' ({hint})")
    try:
        fs = features.feature_set(set_name)
    except SqlError as exc:
        raise SpecError(f"feature set '{set_name}' is broken: {exc}") from None
    facts: dict[str, Any] = {"horizons": tuple(fs.horizons), "n_vars": len(fs.columns)}
    if fs.groups:
        facts["groups"] = tuple(len(list(g)) for _, g in itertools.groupby(fs.groups))
    return facts


def json_schema() -> dict[str, Any]:
    """JSON Schema of a spec file (for editors): every section's fields, types and bounds. Files
    that are only bases (no `name`) validate too; cross-field rules are checked by `load_spec`."""
    registry = _registry(None)
    top: dict[str, Any] = {
        "name": (Annotated[str, Field(pattern=NAME_RE.pattern)], None),
        "description": (str, None),
        "extends": (str, Field(None, description="a base spec file, relative to this one")),
        "seeds": (list[Annotated[int, Field(ge=0)]], None),
        "variants": (dict[str, dict[str, Any] | None], Field(None, description="name -> {dotted.key: value}")),
        "search": (dict[str, dict[str, Any]], Field(None, description="dotted.key -> {distribution: args}")),
        "sweep": (_model(SweepConfig), None),
        "smoke": (dict[str, Any], Field(None, description="dotted.key -> value, applied by --smoke")),
    }
    top.update({section: (_model(cls), None) for section, cls in registry.items()})
    model = create_model("ExperimentSpec", __config__=ConfigDict(extra="forbid"), **top)
    return model.model_json_schema()


def is_secret_key(key: str) -> bool:
    """True for names that look like credentials: api_key, token, password, secret, key, *_key..."""
    return bool(_SECRET_RE.search(str(key)))


def looks_like_secret(value: Any) -> bool:
    """True for text holding this environment's API keys or something shaped like a Databento or W&B key."""
    if not isinstance(value, str):
        return False
    keys = [os.environ.get(name, "") for name in SECRET_ENV_VARS]
    return any(len(k) >= 8 and k in value for k in keys) or bool(_SECRET_VALUE_RE.search(value))


def redact(d: Any) -> Any:
    """A copy of a nested dict/list with every secret-looking key's value masked as '***'."""
    if isinstance(d, Mapping):
        return {k: (REDACTED if is_secret_key(k) else redact(v)) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [redact(v) for v in d]
    return d


def flatten_dotted(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"d_model": 8}} -> {"model.d_model": 8} (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten_dotted(v, key + "."))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false: `off` stays text for a string field, and a
    boolean field still reads it), duplicate keys rejected and impossible dates kept as text."""


_SpecLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rs if tag != "tag:yaml.org,2002:bool"]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))


def _construct_timestamp(loader, node):
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:  # looks like a date but is not one (2020-13-01): the field's check names it
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


def _load_yaml(text: str, label: str) -> Any:
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, label)
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expansion(root, label: str) -> None:
    """Refuse alias bombs ("billion laughs"): count the values the document expands to, each alias
    in full, without expanding it (each node is sized once)."""
    sizes: dict[int, int] = {}

    def size(node, active: frozenset) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in active:
            raise SpecError(f"{label}: invalid YAML: an alias refers to itself")
        kids = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        n = 1 + sum(size(k, active | {id(node)}) for k in kids)
        if n > MAX_YAML_VALUES:
            raise SpecError(f"{label}: the YAML expands to more than {MAX_YAML_VALUES:,} values (through "
                            "aliases); a spec is a small file")
        sizes[id(node)] = n
        return n

    size(root, frozenset())


def _read_yaml(label: str) -> dict:
    try:
        with open(label, "rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)  # bounded: /dev/zero or a huge file fails fast
    except FileNotFoundError:
        raise SpecError(f"{label}: file not found") from None
    except OSError as exc:
        raise SpecError(f"{label}: cannot read the spec ({exc.__class__.__name__}: {exc.strerror or exc})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{label}: larger than {MAX_SPEC_BYTES:,} bytes; a spec is a small YAML file")
    try:
        data = _load_yaml(raw.decode("utf-8"), label)
    except UnicodeDecodeError:
        raise SpecError(f"{label}: not UTF-8 text; a spec is a YAML file") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        raise SpecError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise SpecError(f"{label}: invalid YAML: {'nested too deeply' if isinstance(exc, RecursionError) else exc}") \
            from None
    if data is None:
        raise SpecError(f"{label}: the file is empty; a spec is a YAML mapping (name:, model:, ...)")
    if not isinstance(data, dict):
        raise SpecError(f"{label}: the top level must be a mapping of keys (name:, model:, ...), "
                        f"not {_type_name(data)}")
    return data


def _resolve_spec_path(label: str) -> str:
    """A real path always wins; else a bare name (`quickstart`, `quickstart.yaml`) of a shipped spec."""
    if os.path.exists(label) or os.sep in label or "/" in label:
        return label
    shipped = shipped_specs().get(label[:-5] if label.endswith(".yaml") else label)
    return str(shipped) if shipped else label


def _read_chain(label: str, registry, src, chain: tuple[str, ...] = (), labels: tuple[str, ...] = ()) -> dict:
    """The file merged over its `extends:` chain (base first)."""
    real = os.path.realpath(label)
    if real in chain:
        cycle = " -> ".join(labels[chain.index(real):] + (label,))
        raise SpecError(f"{labels[-1]}: extends: cycle {cycle}")
    data = _read_yaml(label)
    _check_secrets(data, lambda path, message=None: label)
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
    valid = list(META_KEYS) + list(registry)
    for item in overrides:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not SET_KEY_RE.match(key):
            problems.append(f"--set: {item!r}: expected KEY=VALUE with a dotted KEY, e.g. --set train.lr=3e-4")
            continue
        try:
            value = yaml.load(text, Loader=_SpecLoader) if text.strip() else None
        except yaml.YAMLError:
            value = text  # not YAML: take the text as it is
        parts = key.split(".")
        if parts[0] not in valid:
            problems.append(f"--set: {key}: unknown key '{parts[0]}'{_suggest(parts[0], valid)}")
            continue
        if is_secret_key(parts[-1]):
            problems.append(f"--set: {key}: specs must not contain secrets; {SECRET_ENV_HINT}")
            continue
        head = {"search": 1, "smoke": 1, "variants": 2}.get(parts[0], 0)  # parts before a container's dotted key
        if head and len(parts) > head:
            parts = parts[:head] + [".".join(parts[head:])]
        _set_path(layer, parts, value)
    if problems:
        raise SpecError("\n".join(problems))
    return _flatten_containers(layer, registry)


def _flatten_containers(tree: dict, registry) -> dict:
    """Write search/smoke/variant deltas with dotted keys, whether the YAML nested them or not."""
    out = dict(tree)
    for key in ("search", "smoke"):
        if isinstance(out.get(key), dict):
            out[key] = _flatten_delta(out[key], registry, key == "search")
    if isinstance(out.get("variants"), dict):
        out["variants"] = {name: (_flatten_delta(d, registry, False) if isinstance(d, dict) else d)
                           for name, d in out["variants"].items()}
    return out


def _flatten_delta(delta: dict, registry, is_search: bool) -> dict:
    out: dict = {}

    def walk(parts, value):
        target = _walk_type(parts, registry)
        descend = isinstance(value, dict) and (target is None or _dataclass_of(target) is not None)
        if is_search and isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS:
            descend = False
        if descend and value:
            for k, v in value.items():
                walk(parts + k.split("."), v)
        else:
            out[".".join(parts)] = value

    for k, v in delta.items():
        walk(k.split("."), v)
    return out


def _merge(base: dict, over: dict, label: str, src: dict, path: tuple = ()) -> dict:
    """Deep merge (over wins); a search distribution is replaced whole. Records who set each path."""
    out = dict(base)
    for k, v in over.items():
        p = path + (k,)
        _record(src, p, v, label)
        whole = len(p) == 2 and p[0] == "search"
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not whole:
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


def _set_path(tree: dict, parts: Sequence[str], value) -> None:
    node = tree
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _split(key: str) -> list[str]:
    return str(key).split(".")


def _apply_smoke(tree: dict, registry, src) -> dict:
    layer: dict = {}
    for section, cls in registry.items():
        delta = {**DEFAULT_SMOKE.get(section, {}), **(getattr(cls, "SMOKE", None) or {})}
        kept = {k: v for k, v in delta.items() if k in _field_types(cls)}
        if kept:
            layer[section] = kept
    layer.update(DEFAULT_SMOKE_META)
    name = tree.get("name")
    if isinstance(name, str) and not name.endswith(SMOKE_SUFFIX):
        layer["name"] = name + SMOKE_SUFFIX
    seeds = tree.get("seeds")
    if isinstance(seeds, list) and seeds:
        layer["seeds"] = seeds[:1]
    if "tags" in _field_types(registry["track"]):
        track = tree.get("track") if isinstance(tree.get("track"), dict) else {}
        tags = list(track.get("tags") or []) if isinstance(track.get("tags"), list) else []
        layer.setdefault("track", {})["tags"] = tags if "smoke" in tags else tags + ["smoke"]
    tree = _merge(tree, layer, "--smoke (built-in)", src)
    user = tree.get("smoke")
    if isinstance(user, dict):
        nested: dict = {}
        for k, v in user.items():
            _set_path(nested, _split(k), v)
        tree = _merge(tree, nested, src.get(("smoke",), "smoke"), src)
    return tree


# --------------------------------------------------------------------------------------------
# Validation: problems with provenance
# --------------------------------------------------------------------------------------------


class _Missing:
    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()


@dataclass
class _Problem:
    path: tuple  # where the problem is; also picks the file that set it (provenance)
    message: str
    show_path: bool = True  # False for cross-field messages, which name their fields themselves


def _raise_if(problems: list[_Problem], label_for) -> None:
    lines = []
    for p in problems:
        where = label_for(p.path, None if p.show_path else p.message)
        dotted = ".".join(str(x) for x in p.path)
        line = f"{where}: {dotted}: {p.message}" if p.show_path and dotted else f"{where}: {p.message}"
        if line not in lines:
            lines.append(line)
    if lines:
        raise SpecError("\n".join(lines))


_FIELD_REF_RE = re.compile(r"\b([a-z_]+(?:\.[a-z_0-9]+)+)\b")


def _label_for(src: dict, default: str):
    """problem path (and message) -> the file (or --set) that wrote it.

    A cross-field message ("model.d_model (96) must be divisible by model.n_heads (5)") is
    attributed to whichever named field was written last, e.g. `--set` for `--set model.n_heads=5`.
    """
    order = {p: i for i, p in enumerate(src)}

    def label(path: tuple, message: str | None = None) -> str:
        if message:
            named = [p for p in (tuple(m.split(".")) for m in _FIELD_REF_RE.findall(message)) if p in order]
            return src[max(named, key=order.__getitem__)] if named else default
        for n in range(len(path), 0, -1):
            if path[:n] in src:
                return src[path[:n]]
        return default

    return label


def _registry(overrides: Mapping[str, type | str] | None) -> dict[str, type]:
    unknown = set(overrides or ()) - set(SECTIONS)
    if unknown:
        raise ValueError(f"sections= can only replace {list(SECTIONS)}, not {sorted(unknown)}")
    merged = {**SECTIONS, **(overrides or {})}
    return {name: _resolve_class(name, ref) for name, ref in merged.items()}


def _resolve_class(section: str, ref: type | str) -> type:
    if not isinstance(ref, str):
        return ref
    module, _, cls = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        # A missing stage module is a broken install, not a user mistake: keep the traceback.
        raise ImportError(f"spec section '{section}' needs {ref}, which cannot be imported: {exc}") from exc


def _check_secrets(tree: Any, label_for) -> None:
    """Refuse credential-looking keys and values anywhere, without echoing them."""
    problems = []

    def walk(node, p):
        if isinstance(node, dict):
            for k, v in node.items():
                if any(is_secret_key(x) for x in str(k).split(".")) or looks_like_secret(k):
                    problems.append(_Problem(p + (k,), f"specs must not contain secrets; {SECRET_ENV_HINT}"))
                else:
                    walk(v, p + (k,))
        elif isinstance(node, list):
            for v in node:
                walk(v, p)
        elif looks_like_secret(node):
            problems.append(_Problem(p, f"specs must not contain secrets (this value looks like an API key); "
                                        f"{SECRET_ENV_HINT}"))

    walk(tree, ())
    _raise_if(problems, label_for)


def _build_spec(tree: dict, registry: dict[str, type], src: dict, default_label: str) -> ExperimentSpec:
    label_for = _label_for(src, default_label)
    _check_secrets(tree, label_for)
    if "extends" in tree:  # only spec_from_dict gets here with it: files resolve it while reading
        raise SpecError(f"{label_for(('extends',))}: extends: a resolved spec cannot extend another; "
                        "load the file with load_spec")
    problems: list[_Problem] = []
    valid = list(META_KEYS) + list(registry)
    for key in tree:
        if key not in valid:
            problems.append(_Problem((key,), f"unknown key '{key}'{_suggest(key, valid)}"))

    name = tree.get("name")
    if name is None:
        problems.append(_Problem(("name",), "missing: every spec needs a name, e.g. name: tsa_ablation"))
    else:
        name = _coerce(str, name, ("name",), problems)
        if isinstance(name, str) and not NAME_RE.match(name):
            problems.append(_Problem(("name",), f"{_show(name)} must match [a-z0-9][a-z0-9_-]* "
                                                "(lowercase letters, digits, '_' and '-')"))
    description = _coerce(str | None, tree.get("description"), ("description",), problems) or ""
    seeds = _coerce(_SEEDS, tree.get("seeds", [0]), ("seeds",), problems)
    if seeds == ():
        problems.append(_Problem(("seeds",), "[] is empty; give at least one seed, e.g. seeds: [0]"))
    elif isinstance(seeds, tuple) and len(set(seeds)) != len(seeds):
        problems.append(_Problem(("seeds",), f"{_show(list(seeds))} repeats a seed"))
    sweep = _build_dataclass(SweepConfig, tree.get("sweep"), ("sweep",), problems)

    before = len(problems)
    sections = _build_sections(tree, registry, problems)
    sections_ok = len(problems) == before  # else every variant would repeat the sections' problems
    variants = _build_variants(tree.get("variants"), registry, tree, problems, sections_ok)
    search = _build_search(tree.get("search"), registry, problems)
    smoke = _build_deltas(tree.get("smoke"), registry, ("smoke",), problems)
    _raise_if(problems, label_for)
    return ExperimentSpec(name=name, description=description, seeds=seeds, variants=variants, search=search,
                          sweep=sweep, smoke=smoke, source=default_label, registry=tuple(registry.items()),
                          **sections)


def _build_sections(tree: dict, registry, problems, cross_path: tuple | None = None) -> dict[str, Any]:
    """All sections from a nested tree, the model's feature-set facts derived. Cross-field errors are
    reported at `cross_path` (e.g. variants.wide) when given, else at the section."""
    out: dict[str, Any] = {}
    for section, cls in registry.items():
        raw = tree.get(section)
        if section == "model" and isinstance(out.get("features"), FeaturesConfig) and isinstance(raw, (dict, type(None))):
            raw = _derive_model(dict(raw or {}), out["features"].set, cls, problems, cross_path)
        out[section] = _build_dataclass(cls, raw, (section,), problems, cross_path)
    return out


def _derive_model(raw: dict, set_name: str, cls: type, problems, cross_path) -> dict:
    """The model's raw keys with the feature set's facts filled in; a different stated value is a problem."""
    try:
        facts = feature_facts(set_name)
    except SpecError as exc:
        problems.append(_Problem(cross_path or ("features", "set"), str(exc)))
        return raw
    for key, value in facts.items():
        if key not in _field_types(cls):
            continue
        if key in raw:
            stated = _coerce(_field_types(cls)[key], raw[key], ("model", key), problems)
            if stated is not _MISSING and stated != value:
                message = (f"model.{key} ({_show(stated)}) disagrees with feature set '{set_name}' ({_show(value)}); "
                           f"leave model.{key} out, it is derived from features.set")
                problems.append(_Problem(cross_path, message) if cross_path else
                                _Problem(("model", key), message, show_path=False))
        raw[key] = value
    return raw


def _build_dataclass(cls: type, raw, path: tuple, problems: list[_Problem], cross_path: tuple | None = None):
    """A mapping -> `cls` (pydantic checks the fields, then the constructor its cross-field rules)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        problems.append(_Problem(path, f"{_show(raw)} is not a mapping of {cls.__name__} fields"))
        return _MISSING
    checked = _validate(cls, raw, path, problems)
    if checked is _MISSING:
        return _MISSING
    try:
        return _unmodel(checked)
    except SpecError as exc:
        for line in str(exc).splitlines() or [""]:  # a multi-problem message: one line each
            problems.append(_Problem(cross_path, line) if cross_path else _Problem(path, line, show_path=False))
    except (ValueError, TypeError) as exc:  # a stage's own check that did not use SpecError
        problems.append(_Problem(path, str(exc)))
    return _MISSING


def _build_deltas(raw, registry, where: tuple, problems) -> FrozenDict:
    """{dotted.key: value} of section fields, each converted to its field's type."""
    if raw is None:
        return FrozenDict()
    if not isinstance(raw, dict):
        problems.append(_Problem(where, f"{_show(raw)} is not a mapping of dotted.key: value"))
        return FrozenDict()
    out = {}
    for key, value in raw.items():
        found = _check_delta_path(_split(key), registry, where + (key,), problems)
        if found is not _MISSING:
            value = _coerce(_field_types(found[0])[found[1]], value, where + (key,), problems)
            if value is not _MISSING:
                out[key] = value
    return FrozenDict(out)


def _build_variants(raw, registry, tree, problems, sections_ok: bool) -> FrozenDict:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        problems.append(_Problem(("variants",), f"{_show(raw)} is not a mapping of variant name -> "
                                                "{dotted.key: value}"))
        return FrozenDict()
    if len(raw) > MAX_VARIANTS:
        problems.append(_Problem(("variants",), f"{len(raw):,} variants; at most {MAX_VARIANTS:,} "
                                                "(split the study into several specs)"))
        return FrozenDict()
    out: dict[str, FrozenDict] = {}
    # The spec as written is a variant too: implicit `base` first, unless a listed variant
    # already is it (empty deltas, e.g. `full: {}`), which then stays where the user put it.
    if BASE_VARIANT not in raw and not any(not d for d in raw.values()):
        out[BASE_VARIANT] = FrozenDict()
    for name, delta in raw.items():
        if not NAME_RE.match(name):
            problems.append(_Problem(("variants", name), f"variant name {name!r} must match [a-z0-9][a-z0-9_-]*"))
            continue
        before = len(problems)
        deltas = _build_deltas(delta, registry, ("variants", name), problems)
        if name == BASE_VARIANT and deltas:
            problems.append(_Problem(("variants", name), "the base variant is the spec as written and has no "
                                                         "deltas; give this variant another name"))
        if len(problems) == before and sections_ok and deltas:
            # Build the variant's sections now, so a cross-field error shows up at load time.
            vtree = {s: (dict(tree[s]) if isinstance(tree.get(s), dict) else {}) for s in registry}
            nested: dict = {}
            for k, v in deltas.items():
                _set_path(nested, _split(k), _plain(v))
            _build_sections(_merge(vtree, nested, "variant", {}), registry, problems, cross_path=("variants", name))
        out[name] = deltas
    return FrozenDict(out)


def _build_search(raw, registry, problems) -> FrozenDict:
    if raw is None:
        return FrozenDict()
    if not isinstance(raw, dict):
        problems.append(_Problem(("search",), f"{_show(raw)} is not a mapping of dotted.key: distribution"))
        return FrozenDict()
    out = {}
    forms = "{loguniform: [low, high]}, {uniform: [low, high]}, {randint: [low, high]}, " \
            "{quniform: [low, high, q]} or {choice: [a, b, ...]}"
    for key, dist in raw.items():
        path = ("search", key)
        found = _check_delta_path(_split(key), registry, path, problems)
        if found is _MISSING:
            continue
        if not isinstance(dist, dict) or len(dist) != 1:
            problems.append(_Problem(path, f"{_show(dist)} is not a distribution; use {forms}"))
            continue
        kind, args = next(iter(dist.items()))
        if kind not in DISTRIBUTIONS:
            problems.append(_Problem(path, f"unknown distribution '{kind}'{_suggest(kind, DISTRIBUTIONS)}"))
            continue
        n = DISTRIBUTIONS[kind]
        if not isinstance(args, list) or (n is not None and len(args) != n) or (n is None and not args):
            want = {"quniform": "[low, high, q]", "choice": "a non-empty list of values"}.get(kind, "[low, high]")
            problems.append(_Problem(path, f"{kind} takes {want}, got {_show(args)}"))
            continue
        leaf = _field_types(found[0])[found[1]]
        base = _base_type(leaf)
        vtype = getattr(base, "__name__", str(base))
        before = len(problems)
        if kind == "choice":
            values = tuple(_coerce(leaf, v, path, problems, prefix=f"choice[{i}]: ") for i, v in enumerate(args))
            if len(problems) == before:
                out[key] = SearchDim(key, kind, values=values, value_type=vtype)
            continue
        allowed = {"loguniform": (float,), "uniform": (float,), "randint": (int,), "quniform": (float, int)}[kind]
        if base not in allowed:
            use = "randint, quniform or choice" if base is int else "choice"
            problems.append(_Problem(path, f"{kind} cannot sample {key}, which takes {_describe(leaf)}; use {use}"))
            continue
        nums = [_coerce(leaf, a, path, problems, prefix=f"{kind} {name}: ") for a, name in zip(args, ("low", "high", "q"))]
        if len(problems) > before:
            continue
        low, high = nums[0], nums[1]
        if not low < high:
            problems.append(_Problem(path, f"{kind} low ({_show(low)}) must be < high ({_show(high)})"))
        elif kind == "loguniform" and low <= 0:
            problems.append(_Problem(path, f"loguniform low ({_show(low)}) must be > 0"))
        elif kind == "quniform" and not nums[2] > 0:
            problems.append(_Problem(path, f"quniform q ({_show(nums[2])}) must be > 0"))
        else:
            out[key] = SearchDim(key, kind, low=low, high=high, q=nums[2] if kind == "quniform" else None,
                                 value_type=vtype)
    return FrozenDict(out)


def _check_delta_path(parts: Sequence[str], registry, where: tuple, problems):
    """Validate a dotted key of a variant/search/smoke/--set delta: (owning dataclass, field) or _MISSING."""
    if parts[0] not in registry:
        problems.append(_Problem(where, f"'{parts[0]}' is not a section{_suggest(parts[0], registry)}; deltas "
                                        f"change section fields ({', '.join(registry)})"))
        return _MISSING
    tp: Any = registry[parts[0]]
    for i, p in enumerate(parts[1:], start=1):
        cls = _dataclass_of(tp)
        if cls is None:
            problems.append(_Problem(where, f"{'.'.join(parts[:i])} is {_describe(tp)}, it has no key '{p}'"))
            return _MISSING
        if p not in _field_types(cls):
            problems.append(_Problem(where, f"unknown key '{p}'{_suggest(p, _field_types(cls))}"))
            return _MISSING
        tp = _field_types(cls)[p]
    if len(parts) == 1:
        problems.append(_Problem(where, f"'{parts[0]}' is a section; name one of its fields, e.g. {parts[0]}.<field>"))
        return _MISSING
    return cls, parts[-1]


def _walk_type(parts: Sequence[str], registry):
    """The type at a dotted path below the sections, or None if the path does not exist."""
    tp: Any = registry.get(parts[0]) if parts else None
    for p in parts[1:]:
        cls = _dataclass_of(tp)
        if cls is None or p not in _field_types(cls):
            return None
        tp = _field_types(cls)[p]
    return tp


def _suggest(key: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"


# --------------------------------------------------------------------------------------------
# pydantic: generated models, conversion, error lines
# --------------------------------------------------------------------------------------------

_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


def _int64(value: int) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("is not a 64-bit integer")
    return value


def _no_number(value):
    if isinstance(value, (int, float)):  # pydantic would read it as a Unix time
        raise ValueError("is not a date (YYYY-MM-DD)")
    return value


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Init field name -> annotated type (bounds included) of a dataclass."""
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except NameError as exc:  # an annotation only importable under TYPE_CHECKING: a bug there
        raise TypeError(f"cannot resolve the field types of {cls.__module__}.{cls.__qualname__}: {exc}") from exc
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


@functools.cache
def _model(cls: type) -> type[BaseModel]:
    """The pydantic model that checks a mapping for dataclass `cls`: same fields, types, bounds, defaults."""
    fields = {}
    for f in dataclasses.fields(cls):
        if f.init:
            default = f.default if f.default is not dataclasses.MISSING else \
                Field(default_factory=f.default_factory) if f.default_factory is not dataclasses.MISSING else ...
            fields[f.name] = (_pyd(_field_types(cls)[f.name]), default)
    model = create_model(cls.__name__, __config__=_CONFIG, __doc__=cls.__doc__, **fields)
    model.__dataclass__ = cls
    return model


def _pyd(tp):
    """A field type as pydantic checks it: nested dataclasses -> their models, ints within int64,
    dates never from numbers."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _model(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return Annotated[(_pyd(args[0]), *tp.__metadata__)]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_pyd(a) for a in args)]
    if origin is tuple:
        return tuple[tuple(a if a is Ellipsis else _pyd(a) for a in args)]
    if tp is int:
        return Annotated[int, AfterValidator(_int64)]
    if tp is dt.date:
        return Annotated[dt.date, BeforeValidator(_no_number)]
    return tp


_ADAPTERS: dict[Any, TypeAdapter] = {}


def _adapter(tp) -> TypeAdapter:
    if tp not in _ADAPTERS:
        target = _pyd(tp)
        is_model = isinstance(target, type) and issubclass(target, BaseModel)
        _ADAPTERS[tp] = TypeAdapter(target) if is_model else TypeAdapter(target, config=_CONFIG)
    return _ADAPTERS[tp]


def _validate(tp, value, path: tuple, problems: list[_Problem], prefix: str = ""):
    """`value` checked by pydantic against `tp` (nested dataclasses still as models), or _MISSING
    after one problem per error, in the order the keys were written."""
    try:
        return _adapter(tp).validate_python(value)
    except ValidationError as exc:
        order = list(value) if isinstance(value, dict) else []
        errors = sorted(exc.errors(include_url=False),
                        key=lambda e: order.index(e["loc"][0]) if e["loc"] and e["loc"][0] in order else len(order))
        for err in errors:
            where, message = _error_line(tp, err)
            problems.append(_Problem(path + where, prefix + message))
        return _MISSING


def _coerce(tp, value, path: tuple, problems: list[_Problem], prefix: str = ""):
    """`value` converted to `tp` (dataclasses built), or _MISSING after appending problems."""
    checked = _validate(tp, value, path, problems, prefix)
    if checked is _MISSING:
        return _MISSING
    try:
        return _unmodel(checked)
    except SpecError as exc:
        problems.append(_Problem(path, prefix + str(exc)))
        return _MISSING


def _unmodel(value):
    """Generated models back to their dataclasses (only the keys given: the dataclass defaults the rest)."""
    if isinstance(value, BaseModel):
        cls = type(value).__dataclass__
        return cls(**{k: _unmodel(getattr(value, k)) for k in value.model_fields_set})
    if isinstance(value, tuple):
        return tuple(_unmodel(v) for v in value)
    return value


_EXPECTED = (("bool", "a boolean (true or false)"), ("int", "an integer"), ("float", "a number"),
             ("finite", "a finite number"), ("string", "a string"), ("datetime", "a date-time (YYYY-MM-DD HH:MM:SS)"),
             ("date", "a date (YYYY-MM-DD)"))
_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _error_line(tp, err) -> tuple[tuple, str]:
    """A pydantic error -> (path below `tp`, message that names the value as the user wrote it)."""
    where: list = []
    item = ""
    for part in err["loc"]:
        cls = _dataclass_of(tp)
        if cls is not None and isinstance(part, str) and part in _field_types(cls):
            tp = _field_types(cls)[part]
            where.append(part)
        elif cls is not None and err["type"] == "extra_forbidden":
            return tuple(where) + (part,), f"unknown key '{part}'{_suggest(part, _field_types(cls))}"
        elif isinstance(part, int):
            item = f"item {part}: "
        # else: a union member's tag ('int', 'none'), not a place
    kind, shown = err["type"], _show(err.get("input"))
    if kind == "missing":
        return tuple(where), "missing (required, no default)"
    if kind == "literal_error":
        allowed = list(typing.get_args(_base_type(tp)))
        close = difflib.get_close_matches(str(err.get("input")), [a for a in allowed if isinstance(a, str)], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close and isinstance(err.get("input"), str) else ""
        return tuple(where), f"{item}{shown} is not one of {_show(allowed)}{hint}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return tuple(where), item + _range_text(shown, _bounds(tp) or err.get("ctx", {}))
    if kind == "value_error":
        return tuple(where), f"{item}{shown} {err['ctx']['error']}"
    what = next((text for prefix, text in _EXPECTED if kind.startswith(prefix)), None) or _describe(tp)
    return tuple(where), f"{item}{shown} is not {what}"


def _range_text(shown: str, bounds: Mapping[str, Any]) -> str:
    lo = next(((op, bounds[op]) for op in ("ge", "gt") if op in bounds), None)
    hi = next(((op, bounds[op]) for op in ("le", "lt") if op in bounds), None)
    if lo and hi:
        return (f"{shown} is not in {'[' if lo[0] == 'ge' else '('}{_show(lo[1])}, "
                f"{_show(hi[1])}{']' if hi[0] == 'le' else ')'}")
    op, bound = lo or hi
    return f"{shown} is not {_BOUND_TEXT[op]} {_show(bound)}"


def _bounds(tp) -> dict[str, Any]:
    """ge/gt/le/lt declared on a field type (`Annotated[float, Field(ge=0, lt=1)]`)."""
    out: dict[str, Any] = {}
    if typing.get_origin(tp) is Annotated:
        for meta in tp.__metadata__:
            for c in getattr(meta, "metadata", [meta]):
                out.update({op: getattr(c, op) for op in _BOUND_TEXT if getattr(c, op, None) is not None})
    return out


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
    if origin in (tuple, list) or base in (tuple, list):
        return "a list"
    if origin in (dict, Mapping) or base is dict or _dataclass_of(base) is not None:
        return "a mapping"
    return {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string",
            dt.date: "a date (YYYY-MM-DD)"}.get(base, f"a {getattr(base, '__name__', base)}")


def _type_name(value) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    return f"a {type(value).__name__}"


def _show(value) -> str:
    """A value as the user wrote it in YAML: 'text', 1.5, true, null, [1, 2]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
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
    if isinstance(value, Path):
        return str(value)
    return value
