"""Experiment specs: one YAML file -> a typed, frozen ExperimentSpec, or a SpecError (DESIGN §9, STYLE §4).

    spec = load_spec("experiments/tsa_ablation.yaml", overrides=["train.lr=3e-4"], smoke=False)
    for trial in spec.trials():          # variants x seeds
        ...trial.spec.model, trial.spec.train, trial.tracker_config()

Sections and where their dataclasses live (`SECTIONS`; imported lazily, so `import nqexp.spec` stays
cheap and never imports torch):

    data       DataConfig       (here)          features  FeaturesConfig  (here)
    windows    WindowConfig     nqexp.windows   splits    SplitConfig     nqexp.windows
    model      ModelConfig      nqexp.model     train     TrainConfig     nqexp.train
    eval       EvalConfig       (here; gates = nqexp.evaluate.GateThresholds)
    track      TrackConfig      (here)          resources ResourcesConfig (here)

Validation is generic: this module never repeats a stage's field names. It reads the dataclass
fields and type hints, coerces YAML values to them, checks ranges declared as field metadata
(`ge`, `gt`, `le`, `lt`), then calls the constructor, whose `__post_init__` may raise SpecError for
cross-field rules ("model.d_model (96) must be divisible by model.n_heads (5)").

Top-level keys besides the sections:
    name         required, [a-z0-9][a-z0-9_-]*
    description  free text
    extends      a base YAML file, relative to this file; bases may extend further (cycles are errors)
    seeds        list of ints, default [0]
    variants     {name: {dotted.key: value}}; a `base` variant with no deltas is always there (add it
                 explicitly to choose its place). The first variant is the reference of paired comparisons.
    search       {dotted.key: {loguniform: [lo, hi]} | {uniform: [lo, hi]} | {randint: [lo, hi]}
                 | {quniform: [lo, hi, q]} | {choice: [v, ...]}}; randint is inclusive of both ends
    sweep        SweepConfig: num_samples, max_epochs, metric, mode, scheduler, algorithm
    smoke        {dotted.key: value} applied by --smoke on top of the built-in tiny settings

Precedence, lowest first: base file < extending file < --smoke deltas < --set overrides < variant deltas.
The resolved spec (base variant) therefore plus one variant's deltas is exactly one trial, and the
resolved YAML written by `dump_resolved` reproduces every trial on its own.

Error lines look like `<file>: <dotted.path>: <reason>`, one per problem; YAML syntax errors are
`<file>:<line>:<col>: invalid YAML: <problem>`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import importlib
import logging
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from nqexp.errors import SpecError

if TYPE_CHECKING:  # imported lazily at run time (evaluate pulls pandas/scipy, model pulls torch)
    from nqexp.evaluate import GateThresholds

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SET_KEY_RE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*$")
BASE_VARIANT = "base"
DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "randint": 2, "quniform": 3, "choice": None}
SECRET_ENV_HINT = "set WANDB_API_KEY / DATABENTO_API_KEY in the environment instead"
_SECRET_RE = re.compile(r"(^|_)(api_?key|apikey|key|token|secret|password|passwd)$", re.IGNORECASE)
REDACTED = "***"


# --------------------------------------------------------------------------------------------
# Glue sections (the stage sections live in their stage modules)
# --------------------------------------------------------------------------------------------


def _bounded(default, **bounds):
    """A dataclass field with a range check, e.g. `_bounded(1.0, gt=0)`. Bounds: ge, gt, le, lt."""
    return field(default=default, metadata=bounds)


@dataclass(frozen=True)
class DataConfig:
    """Which bar series feeds the experiment."""

    symbol: str = "NQ.demo"  # series in raw_bars ('NQ.demo' is generated on demand)
    freq_minutes: Literal[1, 5] = 5  # bar size of the bars table the features read
    demo_days: int | None = _bounded(730, ge=1)  # NQ.demo missing from the DB: generate this many days
    demo_seed: int = _bounded(0, ge=0)  # seed of the generated demo series


@dataclass(frozen=True)
class FeaturesConfig:
    """Which SQL feature set (sql/features/<set>.yaml) builds the inputs."""

    set: str = "migt24"  # feature set name


def _default_gates():
    from nqexp.evaluate import GateThresholds

    return GateThresholds()


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation after training: sanity gates (DESIGN §8) and the optional backtest."""

    strict: bool = False  # broken gates fail the trial (otherwise they are flagged)
    gates: GateThresholds = field(default_factory=_default_gates)  # gate thresholds (nqexp.evaluate)
    backtest: bool = False  # run the secondary sign-of-median backtest


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

    cpus_per_trial: float = _bounded(1.0, gt=0)  # CPUs reserved per trial
    gpus_per_trial: float = _bounded(0.0, ge=0)  # GPUs per trial; fractions share one GPU
    max_concurrent_trials: int | None = _bounded(None, ge=1)  # None: as many as resources allow
    max_failures: int = _bounded(1, ge=-1)  # retries of a failed trial (-1: forever)


@dataclass(frozen=True)
class SweepConfig:
    """`nqexp sweep`: search algorithm and early stopper over `search:` (objective: val CRPS)."""

    num_samples: int = _bounded(20, ge=1)  # trials sampled from the search space
    max_epochs: int | None = _bounded(None, ge=1)  # ASHA max_t (None: train.max_epochs)
    grace_period: int = _bounded(1, ge=1)  # epochs before ASHA may stop a trial
    reduction_factor: int = _bounded(4, ge=2)  # ASHA halving rate
    metric: str = "val/crps"  # objective; gated (collapsed) trials never win
    mode: Literal["min", "max"] = "min"
    scheduler: Literal["asha", "median", "none"] = "asha"  # early stopper
    algorithm: Literal["tpe", "random"] = "tpe"  # tpe: Optuna TPE via ray.tune.search.optuna

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
    "eval": EvalConfig,
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

    Frozen. Derived values are properties. Use `apply()` for a changed copy, `trials()` for
    the variants x seeds expansion and `to_dict()` for the YAML/JSON-safe resolved form.
    """

    name: str
    data: DataConfig
    features: FeaturesConfig
    windows: Any  # nqexp.windows.WindowConfig
    splits: Any  # nqexp.windows.SplitConfig
    model: Any  # nqexp.model.ModelConfig
    train: Any  # nqexp.train.TrainConfig
    eval: EvalConfig
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
        """A copy with dotted-key deltas applied to the sections, coerced to each field's type
        (e.g. Tune's sampled params). Raises SpecError naming `source` when they are invalid."""
        items = [(_split(k), v) for k, v in deltas.items()]
        return self._rebuild(items, source, prefix=())

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
            leaf = _check_delta_path(parts, registry, prefix + (".".join(parts),), problems)
            if leaf is not _MISSING:
                value = _coerce(value, leaf, prefix + (".".join(parts),), problems)
                _set_path(tree, parts, _plain(value))
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

    `sections` replaces entries of SECTIONS (test hook: stand-in dataclasses for stages whose
    modules are not importable in a test), e.g. `sections={"model": TinyModelConfig}`.
    """
    label = os.fspath(path)
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
    Not validated here: `spec_from_dict` on the result coerces and checks them."""
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


def is_secret_key(key: str) -> bool:
    """True for names that look like credentials: api_key, token, password, secret, key, *_key..."""
    return bool(_SECRET_RE.search(str(key)))


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
# YAML reading
# --------------------------------------------------------------------------------------------


class _Word:
    """A plain YAML scalar that YAML 1.1 turned into bool/null (`off`, `no`, `on`, `null`, `~`).
    The target field decides: a bool/optional field takes the value, a string or Literal field
    that allows the word takes the text (`amp: off` -> "off")."""

    __slots__ = ("value", "text")

    def __init__(self, value, text):
        self.value, self.text = value, text

    def __repr__(self):
        return f"_Word({self.value!r}, {self.text!r})"


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that keeps the text of bool/null words and rejects duplicate keys."""


def _construct_bool(loader, node):
    return _Word(yaml.SafeLoader.construct_yaml_bool(loader, node), node.value)


def _construct_null(loader, node):
    return _Word(None, node.value)


def _construct_timestamp(loader, node):
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:  # looks like a date but is not one (2020-13-01): the field's check names it
        return node.value


def _construct_mapping(loader, node):
    loader.flatten_mapping(node)
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        key = key.text if isinstance(key, _Word) else str(key)
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_SpecLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_SpecLoader.add_constructor("tag:yaml.org,2002:null", _construct_null)
_SpecLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_SpecLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def _read_yaml(label: str) -> dict:
    try:
        text = Path(label).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{label}: file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(f"{label}: cannot read the spec ({exc.__class__.__name__}: {exc})") from None
    try:
        data = yaml.load(text, Loader=_SpecLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        raise SpecError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{label}: invalid YAML: {exc}") from None
    if isinstance(data, _Word) and data.value is None:
        data = {}  # an empty file is an empty mapping
    if not isinstance(data, dict):
        raise SpecError(f"{label}: the top level must be a mapping of keys (name:, model:, ...), "
                        f"not {_type_name(data)}")
    return data


def _read_chain(label: str, registry, src, chain: tuple[str, ...] = (), labels: tuple[str, ...] = ()) -> dict:
    """The file merged over its `extends:` chain (base first)."""
    real = os.path.realpath(label)
    if real in chain:
        cycle = " -> ".join(labels[chain.index(real):] + (label,))
        raise SpecError(f"{labels[-1]}: extends: cycle {cycle}")
    data = _read_yaml(label)
    _check_secrets(data, (), lambda path, message=None: label)
    ext = data.pop("extends", None)
    ext = ext.value if isinstance(ext, _Word) else ext
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
    for item in overrides:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not SET_KEY_RE.match(key):
            problems.append(f"--set: {item!r}: expected KEY=VALUE with a dotted KEY, e.g. --set train.lr=3e-4")
            continue
        try:
            value = yaml.load(text, Loader=_SpecLoader) if text.strip() else _Word(None, text)
        except yaml.YAMLError:
            value = text  # not YAML: take the text as it is
        parts = key.split(".")
        if is_secret_key(parts[-1]):
            problems.append(f"--set: {key}: specs must not contain secrets; {SECRET_ENV_HINT}")
            continue
        head = _container_depth(parts[0])
        if head and len(parts) > head:
            parts = parts[:head] + [".".join(parts[head:])]
        _set_path(layer, parts, value)
    if problems:
        raise SpecError("\n".join(problems))
    return _flatten_containers(layer, registry)


def _container_depth(key: str) -> int:
    """How many path parts come before the dotted key in a container (search.K, smoke.K, variants.V.K)."""
    return {"search": 1, "smoke": 1, "variants": 2}.get(key, 0)


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
        delta = dict(DEFAULT_SMOKE.get(section, {}))
        delta.update(getattr(cls, "SMOKE", None) or {})
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in delta.items() if k in names}
        if kept:
            layer[section] = kept
    layer.update(DEFAULT_SMOKE_META)
    seeds = tree.get("seeds")
    if isinstance(seeds, list) and seeds:
        layer["seeds"] = seeds[:1]
    if "tags" in {f.name for f in dataclasses.fields(registry["track"])}:
        track = tree.get("track") if isinstance(tree.get("track"), dict) else {}
        tags = list(track.get("tags") or []) if isinstance(track.get("tags"), list) else []
        layer.setdefault("track", {})["tags"] = tags if "smoke" in tags else tags + ["smoke"]
    tree = _merge(tree, layer, "--smoke (built-in)", src)
    user = tree.get("smoke")
    if isinstance(user, dict):
        nested: dict = {}
        for k, v in user.items():
            _set_path(nested, _split(k), v)
        user_label = src.get(("smoke",), "smoke")
        tree = _merge(tree, nested, user_label, src)
    return tree


# --------------------------------------------------------------------------------------------
# Validation
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
    if not problems:
        return
    lines = []
    for p in problems:
        where = label_for(p.path, None if p.show_path else p.message)
        dotted = ".".join(str(x) for x in p.path)
        line = f"{where}: {dotted}: {p.message}" if p.show_path and dotted else f"{where}: {p.message}"
        if line not in lines:
            lines.append(line)
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
            named = [tuple(m.split(".")) for m in _FIELD_REF_RE.findall(message)]
            named = [p for p in named if p in order]
            if named:
                return src[max(named, key=order.__getitem__)]
            return default
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


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        localns = {}
        if cls is EvalConfig:
            from nqexp.evaluate import GateThresholds

            localns["GateThresholds"] = GateThresholds
        try:
            _HINTS[cls] = typing.get_type_hints(cls, localns=localns)
        except NameError as exc:  # an annotation only importable under TYPE_CHECKING: a bug there
            raise TypeError(f"cannot resolve the field types of {cls.__module__}.{cls.__qualname__}: {exc}") from exc
    return _HINTS[cls]


def _dataclass_of(tp) -> type | None:
    """The dataclass inside `tp` (X, X | None), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if _is_union(tp):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) == 1:
            return _dataclass_of(arms[0])
    return None


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _walk_type(parts: Sequence[str], registry):
    """The type at a dotted path below the sections, or None if the path does not exist."""
    if not parts or parts[0] not in registry:
        return None
    tp: Any = registry[parts[0]]
    for p in parts[1:]:
        cls = _dataclass_of(tp)
        if cls is None:
            return None
        hints = _hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        if p not in names:
            return None
        tp = hints[p]
    return tp


def _check_delta_path(parts: Sequence[str], registry, where: tuple, problems) -> Any:
    """Validate a dotted key of a variant/search/smoke/--set delta; return the leaf type or _MISSING."""
    if parts[0] not in registry:
        hint = _suggest(parts[0], registry)
        problems.append(_Problem(where, f"'{parts[0]}' is not a section{hint}; deltas change section "
                                        f"fields ({', '.join(registry)})"))
        return _MISSING
    tp: Any = registry[parts[0]]
    for i, p in enumerate(parts[1:], start=1):
        cls = _dataclass_of(tp)
        if cls is None:
            problems.append(_Problem(where, f"{'.'.join(parts[:i])} is {_describe(tp)}, it has no key '{p}'"))
            return _MISSING
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        if p not in names:
            problems.append(_Problem(where, f"unknown key '{p}'{_suggest(p, names)}"))
            return _MISSING
        tp = _hints(cls)[p]
    return tp


def _suggest(key: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid keys: {', '.join(valid)})"


def _check_secrets(tree: Any, path: tuple, label_for) -> None:
    problems = []

    def walk(node, p):
        if isinstance(node, dict):
            for k, v in node.items():
                keys = str(k).split(".")
                if any(is_secret_key(x) for x in keys):
                    problems.append(_Problem(p + (k,), f"specs must not contain secrets; {SECRET_ENV_HINT}"))
                else:
                    walk(v, p + (k,))
        elif isinstance(node, list):
            for v in node:
                walk(v, p)

    walk(tree, path)
    _raise_if(problems, label_for)


def _build_spec(tree: dict, registry: dict[str, type], src: dict, default_label: str) -> ExperimentSpec:
    label_for = _label_for(src, default_label)
    _check_secrets(tree, (), label_for)
    if "extends" in tree:  # only spec_from_dict gets here with it: files resolve it while reading
        raise SpecError(f"{label_for(('extends',))}: extends: a resolved spec cannot extend another; "
                        "load the file with load_spec")
    problems: list[_Problem] = []
    valid = list(META_KEYS) + list(registry)
    for key in tree:
        if key not in valid:
            problems.append(_Problem((key,), f"unknown key '{key}'{_suggest(key, valid)}"))

    name = tree.get("name", _MISSING)
    if name is _MISSING or isinstance(name, _Word) and name.value is None:
        problems.append(_Problem(("name",), "missing: every spec needs a name, e.g. name: tsa_ablation"))
    else:
        name = _coerce(name, str, ("name",), problems)
        if isinstance(name, str) and not NAME_RE.match(name):
            problems.append(_Problem(("name",), f"{_show(name)} must match [a-z0-9][a-z0-9_-]* "
                                                "(lowercase letters, digits, '_' and '-')"))
    description = _coerce(tree.get("description", ""), str | None, ("description",), problems) or ""
    seeds = _coerce(tree.get("seeds", [0]), tuple[int, ...], ("seeds",), problems)
    if isinstance(seeds, tuple):
        if not seeds:
            problems.append(_Problem(("seeds",), "[] is empty; give at least one seed, e.g. seeds: [0]"))
        elif len(set(seeds)) != len(seeds):
            problems.append(_Problem(("seeds",), f"{_show(list(seeds))} repeats a seed"))
        elif min(seeds) < 0:
            problems.append(_Problem(("seeds",), f"{_show(list(seeds))}: seeds must be >= 0"))
    sweep = _build_dataclass(SweepConfig, tree.get("sweep"), ("sweep",), problems)

    sections = _build_sections(tree, registry, problems)
    sections_ok = all(v is not _MISSING for v in sections.values())
    variants = _build_variants(tree.get("variants"), registry, tree, problems, sections_ok)
    search = _build_search(tree.get("search"), registry, problems)
    smoke = _build_deltas(tree.get("smoke"), registry, ("smoke",), problems)
    _raise_if(problems, label_for)

    return ExperimentSpec(name=name, description=description, seeds=seeds, variants=variants, search=search,
                          sweep=sweep, smoke=smoke, source=default_label, registry=tuple(registry.items()),
                          **sections)


def _build_sections(tree: dict, registry, problems, cross_path: tuple | None = None) -> dict[str, Any]:
    """All sections from a nested tree. Cross-field errors are reported at `cross_path` (e.g.
    variants.wide) when given, else at the section without repeating its path."""
    out = {}
    for section, cls in registry.items():
        out[section] = _build_dataclass(cls, tree.get(section), (section,), problems, cross_path)
    return out


def _build_dataclass(cls: type, raw, path: tuple, problems: list[_Problem], cross_path: tuple | None = None):
    """Coerce a mapping into `cls`: unknown keys, types, declared ranges, then the constructor."""
    if raw is None or isinstance(raw, _Word) and raw.value is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(_Problem(path, f"{_show(raw)} is not a mapping of {cls.__name__} fields"))
        return _MISSING
    before = len(problems)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            problems.append(_Problem(path + (key,), f"unknown key '{key}'{_suggest(key, fields)}"))
            continue
        coerced = _coerce(value, hints[key], path + (key,), problems)
        if coerced is not _MISSING:
            # Show the number as written (0, not the coerced 0.0).
            shown = value if isinstance(value, (int, float)) and not isinstance(value, bool) else coerced
            _check_range(coerced, fields[key].metadata, path + (key,), problems, shown)
            kwargs[key] = coerced
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING \
                and name not in raw:
            problems.append(_Problem(path + (name,), "missing (required, no default)"))
    if len(problems) > before:
        return _MISSING
    try:
        return cls(**kwargs)
    except SpecError as exc:
        for line in str(exc).splitlines() or [""]:  # a multi-problem message: one line each
            if cross_path:
                problems.append(_Problem(cross_path, line))
            else:
                problems.append(_Problem(path, line, show_path=False))
    except (ValueError, TypeError) as exc:  # a stage's own check that did not use SpecError
        problems.append(_Problem(path, str(exc)))
    return _MISSING


def _build_deltas(raw, registry, where: tuple, problems) -> FrozenDict:
    """{dotted.key: value} of section fields, each coerced to its field's type."""
    if raw is None or isinstance(raw, _Word) and raw.value is None:
        return FrozenDict()
    if not isinstance(raw, dict):
        problems.append(_Problem(where, f"{_show(raw)} is not a mapping of dotted.key: value"))
        return FrozenDict()
    out = {}
    for key, value in raw.items():
        path = where + (key,)
        leaf = _check_delta_path(_split(key), registry, path, problems)
        if leaf is _MISSING:
            continue
        value = _coerce(value, leaf, path, problems)
        if value is not _MISSING:
            out[key] = value
    return FrozenDict(out)


def _build_variants(raw, registry, tree, problems, sections_ok: bool) -> FrozenDict:
    if raw is None or isinstance(raw, _Word) and raw.value is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(_Problem(("variants",), f"{_show(raw)} is not a mapping of variant name -> "
                                                "{dotted.key: value}"))
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
            vtree = {s: tree.get(s) for s in registry}
            vtree = {s: (dict(v) if isinstance(v, dict) else {}) for s, v in vtree.items()}
            vtree = _merge(vtree, _nest(deltas), "variant", {})
            _build_sections(vtree, registry, problems, cross_path=("variants", name))
        out[name] = deltas
    return FrozenDict(out)


def _nest(deltas: Mapping[str, Any]) -> dict:
    nested: dict = {}
    for k, v in deltas.items():
        _set_path(nested, _split(k), _plain(v))
    return nested


def _build_search(raw, registry, problems) -> FrozenDict:
    if raw is None or isinstance(raw, _Word) and raw.value is None:
        return FrozenDict()
    if not isinstance(raw, dict):
        problems.append(_Problem(("search",), f"{_show(raw)} is not a mapping of dotted.key: distribution"))
        return FrozenDict()
    out = {}
    forms = "{loguniform: [low, high]}, {uniform: [low, high]}, {randint: [low, high]}, " \
            "{quniform: [low, high, q]} or {choice: [a, b, ...]}"
    for key, dist in raw.items():
        path = ("search", key)
        leaf = _check_delta_path(_split(key), registry, path, problems)
        if leaf is _MISSING:
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
        base = _base_type(leaf)
        vtype = getattr(base, "__name__", str(base))
        if kind == "choice":
            before = len(problems)
            values = tuple(_coerce(v, leaf, path, problems, prefix=f"choice[{i}]: ") for i, v in enumerate(args))
            if len(problems) == before:
                out[key] = SearchDim(key, kind, values=values, value_type=vtype)
            continue
        allowed = {"loguniform": (float,), "uniform": (float,), "randint": (int,), "quniform": (float, int)}[kind]
        if base not in allowed:
            use = "randint, quniform or choice" if base is int else "choice"
            problems.append(_Problem(path, f"{kind} cannot sample {key}, which takes {_describe(leaf)}; use {use}"))
            continue
        before = len(problems)
        nums = [_coerce(a, base, path, problems, prefix=f"{kind} {name}: ")
                for a, name in zip(args, ("low", "high", "q"))]
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


def _base_type(tp):
    """X for X | None, else tp."""
    if _is_union(tp):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) == 1:
            return arms[0]
    return tp


# --------------------------------------------------------------------------------------------
# Coercion: YAML value -> field type, with messages that name the value
# --------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class _CoerceError(Exception):
    pass


def _coerce(value, tp, path: tuple, problems: list[_Problem], prefix: str = ""):
    """The value converted to `tp`, or _MISSING after appending a problem."""
    try:
        return _convert(value, tp, path, problems, prefix)
    except _CoerceError as exc:
        problems.append(_Problem(path, prefix + str(exc)))
        return _MISSING


def _convert(value, tp, path, problems, prefix):
    if isinstance(value, _Word):
        try:
            return _convert(value.value, tp, path, problems, prefix)
        except _CoerceError:
            if _accepts_text(tp, value.text):
                return value.text
            raise _CoerceError(f"{value.text!r} is not {_describe(tp)}") from None
    if tp is Any or tp is object:
        return _unword(value)
    if _is_union(tp):
        arms = typing.get_args(tp)
        if value is None:
            if type(None) in arms:
                return None
            raise _CoerceError(f"null is not {_describe(tp)}")
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return _convert(value, arm, path, [], prefix)
            except _CoerceError:
                continue
        raise _CoerceError(f"{_show(value)} is not {_describe(tp)}")
    if value is None and tp is not type(None):
        raise _CoerceError(f"null is not {_describe(tp)}")
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        for a in allowed:
            if type(value) is type(a) and value == a:
                return a
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise _CoerceError(f"{_show(value)} is not one of {_show(list(allowed))}{hint}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _CoerceError(f"{_show(value)} is not a boolean (true or false)")
    if tp is int:
        if isinstance(value, bool):
            raise _CoerceError(f"{_show(value)} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # samplers (quniform) hand back 64.0 for an int field
        raise _CoerceError(f"{_show(value)} is not an integer")
    if tp is float:
        if isinstance(value, bool):
            raise _CoerceError(f"{_show(value)} is not a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
            return float(value)  # YAML 1.1 reads `3e-4` (no dot) as a string
        raise _CoerceError(f"{_show(value)} is not a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        raise _CoerceError(f"{_show(value)} is not a string")
    if tp in (dt.date, dt.datetime):
        if isinstance(value, dt.datetime) and tp is dt.date:
            if value.time() == dt.time(0):
                return value.date()
        elif isinstance(value, tp) and (tp is dt.datetime or not isinstance(value, dt.datetime)):
            return value
        if isinstance(value, dt.date) and tp is dt.datetime:
            return dt.datetime(value.year, value.month, value.day)
        if isinstance(value, str):
            try:
                return tp.fromisoformat(value)
            except ValueError:
                pass
        raise _CoerceError(f"{_show(value)} is not {_describe(tp)}")
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _CoerceError(f"{_show(value)} is not {_describe(tp)}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _CoerceError(f"{_show(value)} is not a list of {len(args)} values")
            elem_types = args
        else:
            elem_types = [args[0] if args else Any] * len(value)
        items = []
        for i, (v, et) in enumerate(zip(value, elem_types)):
            try:
                items.append(_convert(v, et, path, problems, prefix))
            except _CoerceError as exc:
                raise _CoerceError(f"item {i}: {exc}") from None
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise _CoerceError(f"{_show(value)} is not a mapping")
        args = typing.get_args(tp) or (str, Any)
        return {_convert(k, args[0], path, problems, prefix): _convert(v, args[1], path + (k,), problems, prefix)
                for k, v in value.items()}
    cls = _dataclass_of(tp)
    if cls is not None:
        if isinstance(value, cls):
            return value
        before = len(problems)
        built = _build_dataclass(cls, value, path, problems)
        if built is _MISSING:
            if len(problems) == before:
                raise _CoerceError(f"{_show(value)} is not a mapping")
            return _MISSING
        return built
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _CoerceError(f"{_show(value)} is not {_describe(tp)}")


def _accepts_text(tp, text: str) -> bool:
    """Can a bool/null word be taken as its text for this type (`gate: none`, `amp: off`)?"""
    if _is_union(tp):
        return any(_accepts_text(a, text) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return text in typing.get_args(tp)
    return tp is str and text != "" and text.lower() not in ("null", "~")


def _unword(value):
    if isinstance(value, _Word):
        return value.value
    if isinstance(value, dict):
        return {k: _unword(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unword(v) for v in value]
    return value


def _check_range(value, meta: Mapping, path, problems, shown=None) -> None:
    if not meta or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo = ("ge", meta["ge"]) if "ge" in meta else ("gt", meta["gt"]) if "gt" in meta else None
    hi = ("le", meta["le"]) if "le" in meta else ("lt", meta["lt"]) if "lt" in meta else None
    ok = ((lo is None or (value >= lo[1] if lo[0] == "ge" else value > lo[1]))
          and (hi is None or (value <= hi[1] if hi[0] == "le" else value < hi[1])))
    if ok:
        return
    shown = value if shown is None else shown
    if lo and hi:
        interval = f"{'[' if lo[0] == 'ge' else '('}{_show(lo[1])}, {_show(hi[1])}{']' if hi[0] == 'le' else ')'}"
        problems.append(_Problem(path, f"{_show(shown)} is not in {interval}"))
    else:
        op, bound = lo or hi
        sym = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[op]
        problems.append(_Problem(path, f"{_show(shown)} is not {sym} {_show(bound)}"))


def _describe(tp) -> str:
    if tp is Any:
        return "any value"
    if _is_union(tp):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        text = " or ".join(_describe(a) for a in arms)
        return text + " or null" if type(None) in typing.get_args(tp) else text
    origin = typing.get_origin(tp)
    if origin is Literal:
        return f"one of {_show(list(typing.get_args(tp)))}"
    if origin in (tuple, list) or tp in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping"
    if _dataclass_of(tp) is not None:
        return "a mapping"
    return {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string",
            dt.date: "a date (YYYY-MM-DD)", dt.datetime: "a date-time (YYYY-MM-DD HH:MM:SS)"}.get(
        tp, f"a {getattr(tp, '__name__', tp)}")


def _plural(tp) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, _describe(tp))


def _type_name(value) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, _Word):
        return "a scalar"
    return f"a {type(value).__name__}"


def _show(value) -> str:
    """A value as the user wrote it in YAML: 'text', 1.5, true, null, [1, 2]."""
    if isinstance(value, _Word):
        return value.text if value.text else "null"
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
    if isinstance(value, _Word):
        return value.value
    return value
