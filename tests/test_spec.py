"""Experiment specs (nqexp/experiment/spec.py): the exact error texts users see, extends/--set/variants/smoke
semantics, and the resolved round trip.

Most tests register stand-in dataclasses for the torch/numpy stage sections through the documented
`sections=` hook, so this file stays fast and torch-free and does not break when a stage renames a
field. `test_real_registry_*` use the production registry (nqexp.model.net / nqexp.model.windows).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import pytest
import yaml
from pydantic import Field

from nqexp import secrets
from nqexp.errors import SpecError
from nqexp.experiment import spec as S

FIXTURES = Path(__file__).parent / "spec_fixtures"


@dataclass(frozen=True)
class StandInModel:
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 256
    n_temporal_layers: int = 2
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1  # bounds are declared on the type
    gate: Literal["none", "sigmoid", "gru"] = "sigmoid"
    instance_norm: bool = True
    horizons: tuple[int, ...] = (3, 6, 12)  # derived from features.set
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise SpecError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")


@dataclass(frozen=True)
class StandInWindows:
    t_max: int = 288
    subsample_fraction: float = 1.0
    SMOKE: ClassVar[dict] = {"t_max": 16, "not_a_field": 1}  # a class's own smoke delta; unknown keys skipped


@dataclass(frozen=True)
class StandInSplits:
    train_start: dt.date = dt.date(2010, 6, 6)
    val_start: dt.date = dt.date(2022, 1, 1)

    def __post_init__(self):
        if self.val_start <= self.train_start:
            raise SpecError(f"splits.val_start ({self.val_start}) must come after splits.train_start "
                            f"({self.train_start})")


STANDINS = {"model": StandInModel, "windows": StandInWindows, "splits": StandInSplits}


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(path, *overrides, smoke=False):
    return S.load_spec(path, list(overrides), smoke=smoke, sections=STANDINS)


def error_text(path, *overrides, smoke=False) -> str:
    with pytest.raises(SpecError) as info:
        load(path, *overrides, smoke=smoke)
    return str(info.value)


# ------------------------------------------------------------------------------------------
# Error texts


def test_unknown_nested_key_names_file_dotted_path_and_closest_key(tmp_path):
    p = write(tmp_path, "name: exp\ntrain:\n  lrr: 0.001\n")
    assert error_text(p) == f"{p}: train.lrr: unknown key 'lrr' (did you mean 'lr'?)"


def test_unknown_top_level_key_suggests_section(tmp_path):
    p = write(tmp_path, "name: exp\nmodle:\n  d_model: 8\n")
    assert error_text(p) == f"{p}: modle: unknown key 'modle' (did you mean 'model'?)"


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    p = write(tmp_path, "name: exp\nfeatures:\n  zzz: 1\n")
    assert error_text(p) == f"{p}: features.zzz: unknown key 'zzz' (valid keys: set, path)"


def test_wrong_type_names_the_value(tmp_path):
    p = write(tmp_path, "name: exp\ntrain:\n  lr: fast\n  batch_size: 1.5\nmodel:\n  instance_norm: maybe\n")
    assert error_text(p).splitlines() == [
        f"{p}: model.instance_norm: 'maybe' is not a boolean (true or false)",
        f"{p}: train.lr: 'fast' is not a number",
        f"{p}: train.batch_size: 1.5 is not an integer",
    ]


def test_impossible_date_is_a_type_error_not_a_crash(tmp_path):
    p = write(tmp_path, "name: exp\nsplits:\n  val_start: 2022-13-01\n")
    assert error_text(p) == f"{p}: splits.val_start: '2022-13-01' is not a date (YYYY-MM-DD)"
    assert error_text(write(tmp_path, "name: exp\n", "ok.yaml"), "splits.val_start=2022-02-30") == (
        "--set: splits.val_start: '2022-02-30' is not a date (YYYY-MM-DD)")


def test_literal_error_lists_choices_and_suggests(tmp_path):
    p = write(tmp_path, "name: exp\nmodel:\n  gate: sigmod\n")
    assert error_text(p) == (f"{p}: model.gate: 'sigmod' is not one of ['none', 'sigmoid', 'gru'] "
                             "(did you mean 'sigmoid'?)")


def test_range_errors_name_value_and_interval(tmp_path):
    p = write(tmp_path, "name: exp\nmodel:\n  dropout: 1.5\nresources:\n  gpus_per_trial: -0.5\n"
                        "  max_concurrent_trials: 0\n")
    assert error_text(p).splitlines() == [
        f"{p}: model.dropout: 1.5 is not in [0, 1)",
        f"{p}: resources.gpus_per_trial: -0.5 is not >= 0",
        f"{p}: resources.max_concurrent_trials: 0 is not >= 1",
    ]


def test_cross_field_error_names_both_fields_with_file(tmp_path):
    p = write(tmp_path, "name: exp\nmodel:\n  d_model: 96\n  n_heads: 5\n")
    assert error_text(p) == f"{p}: model.d_model (96) must be divisible by model.n_heads (5)"


def test_cross_field_error_is_attributed_to_the_last_writer_of_a_named_field(tmp_path):
    write(tmp_path, "model: {d_model: 96}\n", "base.yaml")
    child = write(tmp_path, "name: c\nextends: base.yaml\nmodel: {n_heads: 5}\n", "child.yaml")
    assert error_text(child) == f"{child}: model.d_model (96) must be divisible by model.n_heads (5)"
    ok = write(tmp_path, "name: c\nextends: base.yaml\nmodel: {gate: gru}\n", "ok.yaml")
    assert error_text(ok, "model.n_heads=5") == "--set: model.d_model (96) must be divisible by model.n_heads (5)"
    # --set touched the section but neither named field: the last writer of a named one is blamed.
    assert error_text(child, "model.gate=gru") == f"{child}: model.d_model (96) must be divisible by model.n_heads (5)"


@dataclass(frozen=True)
class TwoChecks:
    a: int = 1
    b: int = 1

    def __post_init__(self):
        problems = [f"windows.{n} ({getattr(self, n)}) must be >= 1" for n in ("a", "b") if getattr(self, n) < 1]
        if problems:
            raise SpecError("\n".join(problems))


def test_a_multi_line_section_error_gives_one_line_per_problem(tmp_path):
    p = write(tmp_path, "name: exp\nwindows: {a: 0, b: -1}\n")
    with pytest.raises(SpecError) as info:
        S.load_spec(p, sections={**STANDINS, "windows": TwoChecks})
    assert str(info.value).splitlines() == [f"{p}: windows.a (0) must be >= 1", f"{p}: windows.b (-1) must be >= 1"]


def test_glue_section_cross_field_error(tmp_path):
    p = write(tmp_path, "name: exp\nsweep:\n  max_epochs: 3\n  grace_period: 5\n")
    assert error_text(p) == f"{p}: sweep.grace_period (5) must be <= sweep.max_epochs (3)"


def test_every_problem_gets_its_own_line(tmp_path):
    p = write(tmp_path, "name: Bad Name\nseeds: [1, 1]\ntrain: {lr: fast}\nsplits: {val_start: 2001-01-01}\n")
    assert error_text(p).splitlines() == [
        f"{p}: name: 'Bad Name' must match [a-z0-9][a-z0-9_-]* (lowercase letters, digits, '_' and '-')",
        f"{p}: seeds: [1, 1] repeats a seed",
        f"{p}: splits.val_start (2001-01-01) must come after splits.train_start (2010-06-06)",
        f"{p}: train.lr: 'fast' is not a number",
    ]


def test_missing_name_is_an_error(tmp_path):
    p = write(tmp_path, "train: {lr: 0.001}\n")
    assert error_text(p) == f"{p}: name: missing: every spec needs a name, e.g. name: tsa_ablation"


def test_malformed_yaml_reports_line_and_column(tmp_path):
    p = write(tmp_path, "name: exp\ntrain:\n  lr: 0.001\n   batch_size: 8\n")
    assert error_text(p) == f"{p}:4:14: invalid YAML: mapping values are not allowed here"


def test_duplicate_yaml_key_is_an_error_with_its_line(tmp_path):
    p = write(tmp_path, "name: exp\ntrain:\n  lr: 0.001\n  lr: 0.002\n")
    assert error_text(p) == f"{p}:4:3: invalid YAML: duplicate key 'lr'"


def test_top_level_that_is_not_a_mapping_is_an_error(tmp_path):
    p = write(tmp_path, "- name: exp\n")
    assert error_text(p) == f"{p}: the top level must be a mapping of keys (name:, model:, ...), not a list"


def test_missing_file_is_a_spec_error(tmp_path):
    p = tmp_path / "nope.yaml"
    assert error_text(p) == f"{p}: file not found"


def test_section_that_is_not_a_mapping(tmp_path):
    p = write(tmp_path, "name: exp\ntrain: fast\n")
    assert error_text(p) == f"{p}: train: 'fast' is not a mapping of TrainConfig fields"


def test_spec_error_exits_with_code_2():
    assert SpecError.exit_code == 2


def test_importing_spec_pulls_no_heavy_library():
    code = ("import sys, nqexp.experiment.spec; heavy = {'torch', 'ray', 'wandb', 'databento', 'pandas'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ------------------------------------------------------------------------------------------
# extends and --set


def test_extends_precedence_base_then_child_then_set():
    spec = S.load_spec(FIXTURES / "child.yaml", ["train.batch_size=16"], sections=STANDINS)
    assert spec.train.lr == 3e-4  # child (written `3e-4`, which YAML 1.1 reads as a string) beats base 1e-4
    assert spec.train.batch_size == 16  # --set beats base 64
    assert spec.model.d_model == 64 and spec.model.n_heads == 4  # from the base only
    assert spec.seeds == (0, 1)  # inherited
    assert spec.name == "child_exp"


def test_extends_cycle_is_reported_with_the_chain(tmp_path):
    a = write(tmp_path, "name: a\nextends: b.yaml\n", "a.yaml")
    b = write(tmp_path, "extends: a.yaml\n", "b.yaml")
    assert error_text(a) == f"{b}: extends: cycle {a} -> {b} -> {a}"


def test_extends_missing_base_names_the_resolved_path(tmp_path):
    p = write(tmp_path, "name: a\nextends: ../bases/base.yaml\n", "sub/a.yaml")
    assert error_text(p) == f"{p}: extends: file not found: {tmp_path / 'bases' / 'base.yaml'}"


def test_error_in_base_file_names_the_base_file(tmp_path):
    base = write(tmp_path, "train:\n  lrr: 0.1\n", "base.yaml")
    child = write(tmp_path, "name: c\nextends: base.yaml\n", "child.yaml")
    assert error_text(child) == f"{base}: train.lrr: unknown key 'lrr' (did you mean 'lr'?)"


def test_extends_merges_mappings_deeply_and_replaces_lists(tmp_path):
    write(tmp_path, "model: {d_model: 32, n_heads: 2, quantiles: [0.1, 0.5, 0.9]}\ntrack: {tags: [a, b]}\n",
          "base.yaml")
    child = write(tmp_path, "name: c\nextends: base.yaml\nmodel: {n_heads: 4, quantiles: [0.5]}\ntrack: {tags: [c]}\n")
    spec = load(child)
    assert (spec.model.d_model, spec.model.n_heads, spec.model.quantiles) == (32, 4, (0.5,))
    assert spec.track.tags == ("c",)


def test_set_values_take_the_field_type(tmp_path):
    p = write(tmp_path, "name: exp\n")
    spec = load(p, "train.lr=3e-4", "model.gate=none", "train.amp=off", "model.instance_norm=off",
                "train.steps_per_epoch=null", "track.tags=[x, y]", "splits.val_start=2023-01-02", "seeds=[3, 4]")
    assert spec.train.lr == 3e-4 and isinstance(spec.train.lr, float)
    assert spec.model.gate == "none"  # a Literal field takes the word, not YAML's null/None
    assert spec.train.amp == "off"  # a str field takes the word, not YAML 1.1's false
    assert spec.model.instance_norm is False  # a bool field takes YAML's boolean
    assert spec.train.steps_per_epoch is None
    assert spec.track.tags == ("x", "y")
    assert spec.splits.val_start == dt.date(2023, 1, 2)
    assert spec.seeds == (3, 4)


def test_yaml_words_in_files_follow_the_field_type(tmp_path):
    p = write(tmp_path, "name: exp\nmodel:\n  gate: none\ntrain:\n  amp: off\n  lr: 1e-3\n")
    spec = load(p)
    assert (spec.model.gate, spec.train.amp, spec.train.lr) == ("none", "off", 1e-3)


def test_set_errors_are_labelled_set(tmp_path):
    p = write(tmp_path, "name: exp\n")
    assert error_text(p, "train.lrr=1") == "--set: train.lrr: unknown key 'lrr' (did you mean 'lr'?)"
    assert error_text(p, "model.dropout=2") == "--set: model.dropout: 2 is not in [0, 1)"
    assert error_text(p, "model.n_heads=5") == "--set: model.d_model (64) must be divisible by model.n_heads (5)"
    assert error_text(p, "train.lr") == ("--set: 'train.lr': expected KEY=VALUE with a dotted KEY, "
                                         "e.g. --set train.lr=3e-4")


# ------------------------------------------------------------------------------------------
# Variants x seeds


def test_variants_times_seeds_expand_in_order_with_names(tmp_path):
    p = write(tmp_path, "name: abl\nseeds: [0, 1, 2]\nvariants:\n  no_gate: {model.gate: none}\n"
                        "  wide:\n    model: {d_model: 128}\n")
    spec = load(p)
    trials = spec.trials()
    assert len(trials) == 3 * 3
    assert [t.trial_name for t in trials] == [f"{v}-s{s}" for v in ("base", "no_gate", "wide") for s in (0, 1, 2)]
    assert spec.reference_variant == "base" and [t.is_reference for t in trials[:4]] == [True] * 3 + [False]
    by_name = {t.trial_name: t for t in trials}
    assert by_name["no_gate-s1"].spec.model.gate == "none" and by_name["no_gate-s1"].spec.model.d_model == 64
    assert by_name["wide-s2"].spec.model.d_model == 128 and by_name["wide-s2"].spec.model.gate == "sigmoid"
    assert by_name["base-s0"].spec.model == spec.model
    t = by_name["wide-s2"]
    assert (t.experiment, t.variant, t.seed, t.spec.seeds, t.spec.seed) == ("abl", "wide", 2, (2,), 2)
    assert list(t.spec.variants) == ["base"] and not t.spec.search  # a trial's spec is one standalone trial


def test_variant_deltas_beat_set_overrides(tmp_path):
    p = write(tmp_path, "name: abl\nvariants:\n  no_gate: {model.gate: none}\n")
    trials = load(p, "model.gate=gru").trials()
    assert [t.spec.model.gate for t in trials] == ["gru", "none"]


def test_explicit_base_variant_sets_the_reference_order(tmp_path):
    p = write(tmp_path, "name: abl\nvariants:\n  wide: {model.d_model: 128}\n  base:\n")
    spec = load(p)
    assert list(spec.variants) == ["wide", "base"] and spec.reference_variant == "wide"


def test_base_variant_with_deltas_is_an_error(tmp_path):
    p = write(tmp_path, "name: abl\nvariants:\n  base: {model.d_model: 128}\n")
    assert error_text(p) == (f"{p}: variants.base: the base variant is the spec as written and has no deltas; "
                             "give this variant another name")


def test_unknown_variant_key_path_is_reported_in_full(tmp_path):
    p = write(tmp_path, "name: abl\nvariants:\n  no_gate: {model.gatee: none}\n  other: {modle.gate: none}\n"
                        "  typed: {train.lr: fast}\n")
    assert error_text(p).splitlines() == [
        f"{p}: variants.no_gate.model.gatee: unknown key 'gatee' (did you mean 'gate'?)",
        f"{p}: variants.other.modle.gate: 'modle' is not a section (did you mean 'model'?); deltas change "
        "section fields (data, features, windows, splits, model, train, eval, track, resources)",
        f"{p}: variants.typed.train.lr: 'fast' is not a number",
    ]


def test_variant_cross_field_error_names_variant_and_both_fields(tmp_path):
    p = write(tmp_path, "name: abl\nmodel: {d_model: 96, n_heads: 4}\nvariants:\n  heads5: {model.n_heads: 5}\n")
    assert error_text(p) == f"{p}: variants.heads5: model.d_model (96) must be divisible by model.n_heads (5)"


# ------------------------------------------------------------------------------------------
# Smoke


def test_smoke_shrinks_sizes_keeps_one_seed_and_lets_set_win(tmp_path):
    p = write(tmp_path, "name: abl\nseeds: [5, 6]\nmodel: {d_model: 512, n_heads: 8}\n"
                        "train: {max_epochs: 50}\nsmoke: {train.batch_size: 4}\n"
                        "variants:\n  no_gate: {model.gate: none}\n")
    full = load(p)
    smoke = load(p, "train.max_epochs=3", smoke=True)
    assert (smoke.model.d_model, smoke.model.n_heads) == (16, 2)
    assert smoke.model.d_model < full.model.d_model and smoke.model.d_ff < full.model.d_ff
    assert smoke.windows.t_max == 16 < full.windows.t_max  # the class's own SMOKE delta
    assert smoke.train.batch_size == 4  # the spec's smoke: beats the built-in 8
    assert smoke.train.max_epochs == 3  # --set beats smoke
    assert smoke.train.steps_per_epoch == 2 and smoke.resources.gpus_per_trial == 0.0
    assert smoke.seeds == (5,) and "smoke" in smoke.track.tags
    assert [t.trial_name for t in smoke.trials()] == ["base-s5", "no_gate-s5"]


def test_smoke_deltas_are_validated_even_without_smoke(tmp_path):
    p = write(tmp_path, "name: abl\nsmoke: {train.max_epoch: 1}\n")
    assert error_text(p) == f"{p}: smoke.train.max_epoch: unknown key 'max_epoch' (did you mean 'max_epochs'?)"


# ------------------------------------------------------------------------------------------
# Search space


def test_search_space_is_neutral_and_typed(tmp_path):
    p = write(tmp_path, "name: sw\nsearch:\n  train.lr: {loguniform: [1.0e-5, 1.0e-3]}\n"
                        "  model:\n    n_heads: {choice: [2, 4]}\n    dropout: {uniform: [0, 0.3]}\n"
                        "  train.batch_size: {quniform: [16, 128, 16]}\n  model.d_ff: {randint: [64, 256]}\n")
    space = load(p).search_space()
    assert space == {
        "train.lr": S.SearchDim("train.lr", "loguniform", low=1e-5, high=1e-3, value_type="float"),
        "model.n_heads": S.SearchDim("model.n_heads", "choice", values=(2, 4), value_type="int"),
        "model.dropout": S.SearchDim("model.dropout", "uniform", low=0.0, high=0.3, value_type="float"),
        "train.batch_size": S.SearchDim("train.batch_size", "quniform", low=16, high=128, q=16, value_type="int"),
        "model.d_ff": S.SearchDim("model.d_ff", "randint", low=64, high=256, value_type="int"),
    }


def test_search_errors(tmp_path):
    p = write(tmp_path, "name: sw\nsearch:\n  train.lr: {logunifrom: [1.0e-5, 1.0e-3]}\n"
                        "  train.weight_decay: {loguniform: [0, 0.1]}\n  train.batch_size: {uniform: [8, 64]}\n"
                        "  model.gate: {choice: [none, gruu]}\n  train.beta1: {uniform: [0.9]}\n")
    assert error_text(p).splitlines() == [
        f"{p}: search.train.lr: unknown distribution 'logunifrom' (did you mean 'loguniform'?)",
        f"{p}: search.train.weight_decay: loguniform low (0.0) must be > 0",
        f"{p}: search.train.batch_size: uniform cannot sample train.batch_size, which takes an integer; "
        "use randint, quniform or choice",
        f"{p}: search.model.gate: choice[1]: 'gruu' is not one of ['none', 'sigmoid', 'gru'] (did you mean 'gru'?)",
        f"{p}: search.train.beta1: uniform takes [low, high], got [0.9]",
    ]


def test_apply_converts_sampled_values_to_field_types(tmp_path):
    spec = load(write(tmp_path, "name: sw\n"))
    tuned = spec.apply({"model.d_model": 128.0, "train.lr": 0.002})
    assert tuned.model.d_model == 128 and isinstance(tuned.model.d_model, int) and tuned.train.lr == 0.002
    with pytest.raises(SpecError) as info:
        spec.apply({"model.n_heads": 3}, source="tune")
    assert str(info.value) == "tune: model.d_model (64) must be divisible by model.n_heads (3)"


# ------------------------------------------------------------------------------------------
# Resolved spec: round trip, freezing, tracker config


def test_resolved_spec_round_trips_through_yaml(tmp_path):
    spec = S.load_spec(FIXTURES / "child.yaml", ["model.gate=none", "splits.val_start=2022-02-01"], smoke=True,
                       sections=STANDINS)
    out = S.dump_resolved(spec, tmp_path / "run" / "spec.resolved.yaml")
    again = load(out)
    if again != spec:
        a, b = S.flatten_dotted(spec.to_dict()), S.flatten_dotted(again.to_dict())
        diff = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        pytest.fail(f"resolved spec changed on reload: {diff}")
    assert [t.to_dict() for t in again.trials()] == [t.to_dict() for t in spec.trials()]
    assert yaml.safe_load(out.read_text()) == spec.to_dict()  # plain YAML types only


def test_trial_spec_round_trips_on_its_own(tmp_path):
    trial = S.load_spec(FIXTURES / "child.yaml", sections=STANDINS).trials()[-1]
    again = load(S.dump_resolved(trial.spec, tmp_path / "t.yaml"))
    assert again == trial.spec and [t.trial_name for t in again.trials()] == [f"base-s{trial.seed}"]


def test_spec_is_frozen_and_picklable():
    spec = S.load_spec(FIXTURES / "child.yaml", sections=STANDINS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"
    with pytest.raises(TypeError):
        spec.variants["new"] = {}
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_tracker_config_is_flat_dotted_and_has_no_secrets():
    trial = S.load_spec(FIXTURES / "child.yaml", sections=STANDINS).trials()[0]
    cfg = trial.tracker_config()
    assert cfg["model.d_model"] == 64 and cfg["train.lr"] == 3e-4 and cfg["variant"] == "base"
    assert not any(secrets.is_secret_key(k.split(".")[-1]) for k in cfg)


# ------------------------------------------------------------------------------------------
# Secrets


def test_secret_keys_in_a_spec_are_rejected_without_echoing_them(tmp_path):
    p = write(tmp_path, "name: exp\ntrack:\n  wandb_api_key: abc123secret\n")
    text = error_text(p)
    assert text == (f"{p}: track.wandb_api_key: specs must not contain secrets; "
                    "set WANDB_API_KEY / DATABENTO_API_KEY in the environment instead")
    assert "abc123secret" not in text


def test_secret_keys_in_set_overrides_are_rejected(tmp_path):
    p = write(tmp_path, "name: exp\n")
    assert error_text(p, "data.token=xyz") == ("--set: data.token: specs must not contain secrets; "
                                               "set WANDB_API_KEY / DATABENTO_API_KEY in the environment instead")


def test_redact_masks_secret_keys_at_any_depth():
    d = {"a": {"api_key": "k", "databento_api_key": "k", "b": [{"password": "p", "ok": 1}]}, "token": "t",
         "tokens_per_bar": 3, "keep": "x"}
    assert secrets.redact(d) == {"a": {"api_key": "***", "databento_api_key": "***", "b": [{"password": "***", "ok": 1}]},
                           "token": "***", "tokens_per_bar": 3, "keep": "x"}


# ------------------------------------------------------------------------------------------
# Glue sections


def test_track_store_is_absolute(tmp_path):
    track = S.TrackConfig()
    assert track.store_path(tmp_path) == (tmp_path / "runs").resolve()


def test_defaults_follow_design(tmp_path):
    spec = load(write(tmp_path, "name: exp\n"))
    assert (spec.data.symbol, spec.features.set) == ("NQ.demo", "migt24")
    assert spec.eval.gates.min_picp80 == 0.4 and spec.eval.gates.max_abs_ic == 0.1 and spec.eval.strict is False
    assert spec.seeds == (0,) and list(spec.variants) == ["base"]
    assert (spec.sweep.metric, spec.sweep.mode, spec.sweep.scheduler) == ("val/crps", "min", "asha")
    # Keys that did nothing are gone: the bar size is the feature set's, the sweep objective is fixed.
    assert "freq_minutes" not in spec.to_dict()["data"] and not {"metric", "mode"} & set(spec.to_dict()["sweep"])


def test_nested_gate_thresholds_are_validated(tmp_path):
    p = write(tmp_path, "name: exp\neval:\n  gates:\n    min_picp80: 0.3\n    max_ic: 0.2\n")
    assert error_text(p) == f"{p}: eval.gates.max_ic: unknown key 'max_ic' (did you mean 'max_abs_ic'?)"
    spec = load(write(tmp_path, "name: exp\neval:\n  gates: {min_picp80: 0.3}\n", "ok.yaml"))
    assert spec.eval.gates.min_picp80 == 0.3 and spec.eval.gates.max_abs_ic == 0.1


# ------------------------------------------------------------------------------------------
# The production registry (imports nqexp.model.net, hence torch)


def _require_real_stage_modules():
    # Imported inside the tests, not at collection, so the rest of the file never pays for torch.
    for mod in ("nqexp.model.net", "nqexp.model.windows"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} does not exist yet (its helper has not committed it)")
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            pytest.skip(f"{mod} is not importable yet: {exc}")


def test_real_registry_loads_validates_and_smokes(tmp_path):
    _require_real_stage_modules()
    from nqexp.model.net import ModelConfig
    from nqexp.model.train import TrainConfig
    from nqexp.model.windows import SplitConfig, WindowConfig

    spec = S.load_spec(FIXTURES / "child.yaml", ["splits.val_start=2022-02-01"])
    assert isinstance(spec.model, ModelConfig) and isinstance(spec.train, TrainConfig)
    assert isinstance(spec.windows, WindowConfig) and isinstance(spec.splits, SplitConfig)
    assert spec.splits.val_start == dt.date(2022, 2, 1)
    assert [t.spec.model.gate for t in spec.trials()[::2]] == ["sigmoid", "none", "sigmoid"]

    smoke = S.load_spec(FIXTURES / "child.yaml", smoke=True)
    assert smoke.model.d_model < spec.model.d_model and smoke.windows.t_max < spec.windows.t_max
    assert smoke.train.steps_per_epoch == 2
    assert S.load_spec(S.dump_resolved(smoke, tmp_path / "r.yaml")) == smoke

    bad = write(tmp_path, "name: exp\nmodel: {d_model: 96, n_heads: 5}\n")
    with pytest.raises(SpecError) as info:
        S.load_spec(bad)
    assert str(info.value) == f"{bad}: model.d_model (96) must be divisible by model.n_heads (5)"


def test_draft_experiments_load_with_the_real_registry(tmp_path):
    _require_real_stage_modules()
    ablation = S.load_spec(FIXTURES / "draft_tsa_ablation.yaml")
    assert len(ablation.trials()) == len(ablation.variants) * 3 and ablation.reference_variant == "base"
    assert ablation.splits.train_start == dt.date(2023, 12, 5)  # inherited from draft_base.yaml
    sweep = S.load_spec(FIXTURES / "draft_sweep.yaml", smoke=True)
    assert set(sweep.search_space()) == {"train.lr", "train.weight_decay", "model.d_model",
                                         "model.n_temporal_layers", "model.dropout"}
    assert sweep.sweep.num_samples == 2 and len(sweep.trials()) == 1
    for d_model in sweep.search_space()["model.d_model"].values:  # every choice is a valid model
        assert sweep.apply({"model.d_model": d_model}).model.d_model == d_model


def test_window_length_and_time_budget_are_bounded(tmp_path):
    _require_real_stage_modules()
    p = write(tmp_path, "name: exp\nwindows: {t_max: 1.0e+12}\n")
    with pytest.raises(SpecError) as info:
        S.load_spec(p)
    assert str(info.value) == f"{p}: windows.t_max: 1000000000000.0 is not in [1, 100000]"
    with pytest.raises(SpecError) as info:
        S.load_spec(write(tmp_path, "name: exp\n", "ok.yaml"), ["train.time_budget_s=-5"])
    assert str(info.value) == "--set: train.time_budget_s: -5 is not > 0"


# ------------------------------------------------------------------------------------------
# The feature set owns horizons, n_vars and groups


def test_model_facts_come_from_the_feature_set_and_a_different_value_names_both(tmp_path):
    _require_real_stage_modules()
    from nqexp.features import feature_set

    grok = S.load_spec(ROOT / "experiments" / "grok_sl_1m.yaml")
    fs = feature_set("grok24")
    assert grok.model.horizons == fs.horizons and grok.model.n_vars == len(fs.columns)
    assert sum(grok.model.groups) == len(fs.columns) and len(grok.model.groups) == len(set(fs.groups))
    with pytest.raises(SpecError) as info:
        S.load_spec(ROOT / "experiments" / "grok_sl_1m.yaml", ["model.n_vars=7"])
    assert str(info.value) == ("--set: model.n_vars (7) disagrees with feature set 'grok24' (24); "
                               "leave model.n_vars out, it is derived from features.set")
    # A variant that switches the feature set gets that set's horizons.
    p = write(tmp_path, f"name: sets\nextends: {ROOT / 'experiments' / 'base.yaml'}\n"
                        "variants:\n  grok: {features.set: grok24, model.arch: grok_sl}\n")
    base, other = (t.spec for t in S.load_spec(p).trials())
    assert base.model.horizons == feature_set("migt24").horizons and other.model.horizons == fs.horizons
    assert S.spec_from_dict(other.to_dict()) == other


def test_stand_in_model_horizons_are_derived_too(tmp_path):
    p = write(tmp_path, "name: exp\nmodel: {horizons: [3, 6, 12, 24, 48]}\n")  # restating the set's value is fine
    assert load(p).model.horizons == (3, 6, 12, 24, 48)
    assert error_text(p, "model.horizons=[1, 2]") == (
        "--set: model.horizons ([1, 2]) disagrees with feature set 'migt24' ([3, 6, 12, 24, 48]); "
        "leave model.horizons out, it is derived from features.set")


def test_unknown_feature_set_suggests_the_closest(tmp_path):
    p = write(tmp_path, "name: exp\nfeatures: {set: migt42}\n")
    assert error_text(p) == f"{p}: features.set: unknown feature set 'migt42' (did you mean 'migt24'?)"


# ------------------------------------------------------------------------------------------
# JSON Schema and shipped specs

ROOT = Path(__file__).resolve().parents[1]


def _as_json(value):
    """A YAML document as a JSON tool (an editor) sees it: dates are strings."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else value


def test_json_schema_validates_every_shipped_spec_and_rejects_mistakes():
    _require_real_stage_modules()
    import jsonschema

    schema = S.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    shipped = S.shipped_specs()
    assert {"quickstart", "base", "tsa_ablation"} <= set(shipped)
    for name, path in shipped.items():
        doc = _as_json(yaml.safe_load(path.read_text()))
        errors = [e.message for e in validator.iter_errors(doc)]
        assert not errors, f"{name}: {errors}"
    assert not validator.is_valid({"name": "x", "train": {"lrr": 0.1}})  # unknown key
    assert not validator.is_valid({"name": "x", "resources": {"gpus_per_trial": -1}})  # out of its declared bounds
    assert not validator.is_valid({"name": "Bad Name"})


def test_a_shipped_spec_loads_by_name_and_a_real_path_wins(tmp_path, monkeypatch):
    _require_real_stage_modules()
    monkeypatch.chdir(tmp_path)
    spec = S.load_spec("quickstart")
    assert spec.name == "quickstart" and Path(spec.source) == S.shipped_specs()["quickstart"]
    assert spec.data.demo_days == 400 and spec.track.tags == ("demo",)  # its extends: base.yaml resolved too
    write(tmp_path, "name: mine\n", "quickstart.yaml")
    assert load("quickstart.yaml").name == "mine"
    assert error_text("nosuch") == "nosuch: file not found"


def test_smoke_runs_under_its_own_experiment_name(tmp_path):
    p = write(tmp_path, "name: abl\n")
    smoke = load(p, smoke=True)
    assert smoke.name == "abl-smoke" and load(p).name == "abl"
    assert load(S.dump_resolved(smoke, tmp_path / "r.yaml")).name == "abl-smoke"  # reloading keeps it
    assert load(p, "name=mine", smoke=True).name == "mine"  # an explicit --set name wins


# ------------------------------------------------------------------------------------------
# Hostile input (issue 15)


@pytest.mark.parametrize("override, message", [
    ("train.lr=.inf", "--set: train.lr: inf is not a finite number"),
    ("resources.cpus_per_trial=.inf", "--set: resources.cpus_per_trial: inf is not a finite number"),
    ("resources.gpus_per_trial=.nan", "--set: resources.gpus_per_trial: nan is not a finite number"),
    ("windows.t_max=1e12", "--set: windows.t_max: '1e12' is not an integer"),
    (f"seeds=[{2**63}]", f"--set: seeds: item 0: {2**63} is not a 64-bit integer"),
    (f"data.demo_seed={2**64}", f"--set: data.demo_seed: {2**64} is not a 64-bit integer"),
    ("seeds=[0, -1]", "--set: seeds: item 1: -1 is not >= 0"),
])
def test_numbers_must_be_finite_and_in_range(tmp_path, override, message):
    assert error_text(write(tmp_path, "name: exp\n"), override) == message


def test_unknown_set_key_is_not_misreported_as_a_secret(tmp_path):
    text = error_text(write(tmp_path, "name: exp\n"), "nosuch.key=1")
    assert text.startswith("--set: nosuch.key: unknown key 'nosuch' (valid keys: name, ")
    assert "secret" not in text
    assert error_text(write(tmp_path, "name: exp\n"), "modle.d_model=8") == (
        "--set: modle.d_model: unknown key 'modle' (did you mean 'model'?)")


def test_empty_unreadable_and_huge_files_fail_fast_with_a_clear_line(tmp_path):
    empty = write(tmp_path, "# only a comment\n", "empty.yaml")
    assert error_text(empty) == f"{empty}: the file is empty; a spec is a YAML mapping (name:, model:, ...)"
    big = write(tmp_path, "name: exp\ndescription: '" + "x" * S.MAX_SPEC_BYTES + "'\n", "big.yaml")
    assert error_text(big) == f"{big}: larger than 1,000,000 bytes; a spec is a small YAML file"
    if Path("/dev/zero").exists():
        assert error_text("/dev/zero") == "/dev/zero: larger than 1,000,000 bytes; a spec is a small YAML file"
        child = write(tmp_path, "name: exp\nextends: /dev/zero\n", "child.yaml")
        assert error_text(child) == "/dev/zero: larger than 1,000,000 bytes; a spec is a small YAML file"
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\x00")
    assert error_text(binary) == f"{binary}: not UTF-8 text; a spec is a YAML file"


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["name: x", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]  # 9**9 values if expanded
    p = write(tmp_path, "\n".join(lines) + "\n")
    t0 = time.perf_counter()
    assert error_text(p) == f"{p}: the YAML expands to more than 100,000 values (through aliases); a spec is a small file"
    assert time.perf_counter() - t0 < 5
    ok = write(tmp_path, "name: x\nmodel: &m {d_model: 32}\nsmoke:\n  model.d_model: 16\n", "ok.yaml")
    assert load(ok).model.d_model == 32  # ordinary anchors still work


def test_variants_are_capped(tmp_path):
    body = "".join(f"  v{i}: {{model.d_model: 64}}\n" for i in range(S.MAX_VARIANTS + 1))
    p = write(tmp_path, "name: many\nvariants:\n" + body)
    assert error_text(p) == f"{p}: variants: 1,001 variants; at most 1,000 (split the study into several specs)"


SECRET_LINE = ("specs must not contain secrets (this value looks like an API key); "
               "set WANDB_API_KEY / DATABENTO_API_KEY in the environment instead")


@pytest.mark.parametrize("text, where", [
    ("description: 'my key db-AbCdEfGhIjKlMnOpQrStUv123'\n", "description"),
    ("track: {tags: [ok, 0123456789abcdef0123456789abcdef01234567]}\n", "track.tags"),
    ("track: {wandb_project: 'ENV-SECRET-VALUE-42'}\n", "track.wandb_project"),
    ("variants:\n  v1: {track.wandb_entity: 'x ENV-SECRET-VALUE-42'}\n", "variants.v1.track.wandb_entity"),
])
def test_secret_values_are_refused_anywhere_without_echoing_them(tmp_path, monkeypatch, text, where):
    monkeypatch.setenv("WANDB_API_KEY", "ENV-SECRET-VALUE-42")
    p = write(tmp_path, "name: exp\n" + text)
    message = error_text(p)
    assert message == f"{p}: {where}: {SECRET_LINE}"
    assert "db-AbC" not in message and "0123456789abcdef" not in message and "ENV-SECRET" not in message


def test_secret_values_in_set_overrides_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABENTO_API_KEY", "db-FromTheEnvironment0123456789")
    p = write(tmp_path, "name: exp\n")
    assert error_text(p, "description=db-FromTheEnvironment0123456789") == f"--set: description: {SECRET_LINE}"


def test_a_feature_set_in_a_user_folder_drives_the_spec(tmp_path):
    """features.path: a set in the user's folder is found, checked like a shipped one, and fixes the
    model's horizons; the path is stored absolute (Ray workers run elsewhere)."""
    import shutil

    from nqexp.data import db
    from nqexp.experiment.spec import load_spec

    shipped = db.sql_root() / "features"
    mine = tmp_path / "my_sets"
    mine.mkdir()
    text = (shipped / "migt24.yaml").read_text().replace("name: migt24", "name: mine24")
    text = text.replace("horizons: [3, 6, 12, 24, 48]", "horizons: [1, 3, 6]")
    (mine / "mine24.yaml").write_text(text)
    for sql in shipped.glob("migt_*.sql"):
        shutil.copy(sql, mine / sql.name)
    spec = load_spec(ROOT / "experiments" / "quickstart.yaml",
                     overrides=["features.set=mine24", f"features.path={mine}"])
    assert spec.model.horizons == (1, 3, 6) and spec.features.path == str(mine)
    with pytest.raises(SpecError, match="mine24"):
        load_spec(ROOT / "experiments" / "quickstart.yaml", overrides=["features.set=mine24"])


# ------------------------------------------------------------------------------------------
# Validate once, compare as data


def test_trials_are_built_once_per_spec(tmp_path, monkeypatch):
    """Every caller (tune, the CLI, the renderer) asks for spec.trials(); the variants go through
    validation once per spec object, and callers cannot mutate the kept list."""
    spec = load(write(tmp_path, "name: once\nseeds: [0, 1]\nvariants:\n  a: {}\n  b: {model.d_model: 32}\n"))
    calls = []
    real = S.ExperimentSpec._rebuild
    monkeypatch.setattr(S.ExperimentSpec, "_rebuild", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    first = spec.trials()
    first.clear()
    again = spec.trials()
    assert len(calls) == 2                      # one rebuild per variant, on the first call only
    assert [t.trial_name for t in again] == ["a-s0", "a-s1", "b-s0", "b-s1"]
    assert again[2].spec.model.d_model == 32


def test_resolved_dict_is_what_dump_resolved_writes(tmp_path):
    spec = S.load_spec(FIXTURES / "child.yaml", ["model.gate=none"], sections=STANDINS)
    path = S.dump_resolved(spec, tmp_path / "spec.resolved.yaml")
    assert yaml.safe_load(path.read_text()) == S.resolved_dict(spec)
    other = S.load_spec(FIXTURES / "child.yaml", ["model.gate=sigmoid"], sections=STANDINS)
    assert S.resolved_dict(other) != S.resolved_dict(spec)


# Declared ranges: every numeric field has one, the schema shows it, and --set enforces it


_BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _numeric_fields(schema) -> dict[str, dict]:
    """Dotted spec key -> {'type', 'array', bounds} of every integer/number field (list items too)."""
    defs = schema["$defs"]

    def resolve(node):
        return defs[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node

    out = {}

    def walk(node, path):
        for arm in map(resolve, resolve(node).get("anyOf", [resolve(node)])):
            if "properties" in arm:
                for key, sub in arm["properties"].items():
                    walk(sub, path + (key,))
                continue
            array = arm.get("type") == "array" and isinstance(arm.get("items"), dict)
            target = resolve(arm["items"]) if array else arm
            if target.get("type") in ("integer", "number"):
                out[".".join(path)] = {"type": target["type"], "array": array,
                                       **{k: target[k] for k in _BOUND_KEYS if k in target}}

    walk(schema, ())
    return out


def _just_outside(field_: dict) -> list:
    """Values just beyond each declared bound (the integer next to it; a hair past it for numbers)."""
    step = 1 if field_["type"] == "integer" else 1e-6
    values = []
    if "minimum" in field_:
        values.append(field_["minimum"] - step)
    if "exclusiveMinimum" in field_:
        values.append(field_["exclusiveMinimum"])
    if "maximum" in field_:
        values.append(field_["maximum"] + step)
    if "exclusiveMaximum" in field_:
        values.append(field_["exclusiveMaximum"])
    return [[v] if field_["array"] else v for v in values]


def test_every_numeric_spec_field_declares_its_range_in_the_schema():
    _require_real_stage_modules()
    fields_ = _numeric_fields(S.json_schema())
    assert len(fields_) > 50 and {"train.beta1", "train.patience", "model.quantiles", "eval.gates.min_picp80"} <= set(fields_)
    unbounded = sorted(k for k, f in fields_.items() if not set(f) & set(_BOUND_KEYS))
    assert not unbounded, f"numeric spec fields without a declared range: {unbounded}"
    assert _numeric_fields(S.json_schema())["train.beta1"] == {"type": "number", "array": False, "minimum": 0,
                                                               "exclusiveMaximum": 1}


def test_a_value_just_outside_any_declared_range_is_one_line_naming_the_field(tmp_path):
    """Walks the schema: each bound of each numeric field, crossed by a hair via --set, is refused with
    exit 2 and one line `--set: <dotted.key>: ...`; the value on the bound itself is accepted."""
    _require_real_stage_modules()
    from click.testing import CliRunner

    from nqexp.cli import cli

    quickstart = str(ROOT / "experiments" / "quickstart.yaml")
    fields_ = _numeric_fields(S.json_schema())
    checked = []
    for key, field_ in fields_.items():
        for value in _just_outside(field_):
            override = f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            result = CliRunner().invoke(cli, ["run", quickstart, "--dry-run", "--set", override], prog_name="nqexp")
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            shown = f"--set {override}: exit {result.exit_code}, stderr {result.stderr!r}"
            assert result.exit_code == 2 and len(lines) == 1, shown
            assert lines[0].startswith(f"Error: --set: {key}: "), shown
            assert "Traceback" not in result.output, shown
            checked.append(override)
    assert len(checked) >= len(fields_)
    # The shipped defaults sit inside every range (a bound of 0 or 1 is allowed where declared so).
    assert S.load_spec(quickstart, ["train.warmup_steps=0", "train.beta1=0", "model.dropout=0",
                                    "eval.gates.min_picp80=1"]).train.warmup_steps == 0


# Field descriptions: the comment on each field is its `nqexp spec schema` description and docs/experiments.md §18


def _schema_descriptions(schema) -> dict[str, str | None]:
    """Dotted key -> the schema's description of every field of every section (nested sections walked)."""
    defs = schema["$defs"]
    out = {}

    def walk(node, path):
        target = defs[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
        for key, sub in target.get("properties", {}).items():
            if "$ref" in sub:
                walk(sub, path + (key,))
            out[".".join(path + (key,))] = sub.get("description")

    for section in [*S.SECTIONS, "sweep"]:
        walk(schema["properties"][section], (section,))
    return out


def _doc_field_reference() -> str:
    text = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text()
    return text.split("<!-- nqexp spec fields: begin -->\n", 1)[1].split("<!-- nqexp spec fields: end -->", 1)[0]


def test_a_field_description_is_its_trailing_comment_else_the_comment_lines_above():
    @dataclass(frozen=True)
    class Commented:
        # not about `a`: a blank line follows

        a: int = 1  # the trailing comment wins
        # two lines above b,
        # joined
        b: Annotated[float, Field(gt=0)] = 2.0
        c: str = "x"  # 'quoted # text' stays whole
        d: tuple[int, ...] = (
            1, 2)  # a trailing comment on the field's last line
        e: int = 0
        KIND: ClassVar[str] = "k"  # not a field

    assert S.field_descriptions(Commented) == {"a": "the trailing comment wins", "b": "two lines above b, joined",
                                               "c": "'quoted # text' stays whole",
                                               "d": "a trailing comment on the field's last line", "e": ""}


def test_every_spec_field_has_a_description_and_the_schema_carries_it():
    _require_real_stage_modules()
    described = _schema_descriptions(S.json_schema())
    assert len(described) > 90 and described["model.patch_len"].startswith("bars per temporal token")
    assert described["eval.gates"] == "gate thresholds" and "eval.gates.min_picp80" in described
    assert not sorted(k for k, text in described.items() if not text), "fields without a comment in the code"
    for prefix, cls, _ in S._section_classes():
        for name, text in S.field_descriptions(cls).items():
            assert described[f"{prefix}.{name}"] == text


def test_docs_field_reference_says_what_the_schema_says_for_every_key():
    """docs/experiments.md §18 holds `nqexp spec fields`; each key's meaning there is its schema description."""
    _require_real_stage_modules()
    described = _schema_descriptions(S.json_schema())
    doc = {}
    for line in _doc_field_reference().splitlines():
        if line.startswith("| `"):
            key, _default, meaning = [c.strip() for c in line.strip("|").split(" | ")]
            doc[key.strip("`")] = meaning.replace("\\|", "|")
    assert sorted(doc) == sorted(described), "keys missing from or unknown to docs/experiments.md §18"
    differ = {k: (doc[k], described[k]) for k in doc if doc[k] != described[k]}
    assert not differ, f"docs/experiments.md §18 disagrees with the code's field comments: {differ}"
    assert _doc_field_reference() == S.field_reference(), \
        "docs/experiments.md §18 is stale: paste the output of `nqexp spec fields` between its markers"


def test_spec_fields_prints_the_reference():
    from click.testing import CliRunner

    from nqexp.cli import cli

    _require_real_stage_modules()
    result = CliRunner().invoke(cli, ["spec", "fields"])
    assert result.exit_code == 0 and result.output == S.field_reference()


def test_an_inherited_field_keeps_the_comment_of_the_class_that_declares_it():
    @dataclass(frozen=True)
    class Base:
        a: int = 1  # declared in the base

    @dataclass(frozen=True)
    class Child(Base):
        b: int = 2  # declared in the child

    assert S.field_descriptions(Child) == {"a": "declared in the base", "b": "declared in the child"}
