"""nqexp.model.memory and the memory plan: the analytic count against the built model, against the tensors
autograd keeps, and against the peak memory of real training steps on CPU (docs/clusters.md §8)."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from nqexp.errors import SpecError  # noqa: E402
from nqexp.experiment.memory_plan import check_memory, memory_plan  # noqa: E402
from nqexp.experiment.spec import load_spec  # noqa: E402
from nqexp.model.memory import (  # noqa: E402
    GiB,
    TOLERANCE,
    estimate_memory,
    fit_memory,
    parameter_count,
    usable_bytes,
)
from nqexp.model.net import ModelConfig, build_model, count_parameters, model_loss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20

TINY = ModelConfig(n_vars=4, horizons=(3, 12), d_model=16, n_heads=2, d_ff=32, dropout=0.0, n_temporal_layers=2,
                   n_variable_layers=2, groups=(2, 2))
SWITCHES = {
    "arch": ["migt_tvdt", "grok_sl"], "embedding": ["per_variable", "flat"], "attention": ["two_stage", "temporal"],
    "gate": ["none", "sigmoid", "gru"], "head": ["quantile", "point"],
    "horizon_mode": ["independent", "autoregressive"], "variable_attention": ["full", "none"],
    "calendar_encoding": [True, False], "recent_bars": [0, 3], "patch_len": [1, 4],
}

# Configs measured on CPU: big enough that activations (hundreds of MiB) dwarf allocator noise, small
# enough for a few seconds per step on one core. Grok-SL as designed (GRU gate, autoregressive heads).
GROK = dict(arch="grok_sl", n_vars=12, groups=(2,) * 6, horizons=(3, 6), d_model=64, n_heads=4, d_ff=128,
            n_temporal_layers=2, gate="gru", horizon_mode="autoregressive", dropout=0.1)
MIGT = dict(n_vars=8, horizons=(3, 6), d_model=64, n_heads=4, d_ff=256, n_temporal_layers=2, n_variable_layers=1,
            dropout=0.1)
CASES = {
    "migt-fp32": dict(model=MIGT, batch_size=8, t_max=256, amp=False),
    "grok-fp32-4-layers": dict(model={**GROK, "n_temporal_layers": 4}, batch_size=4, t_max=512, amp=False),
    "grok-fp32-4-layers-checkpointed": dict(model={**GROK, "n_temporal_layers": 4, "activation_checkpointing": True},
                                            batch_size=4, t_max=512, amp=False),
    "grok-bf16-autocast": dict(model=GROK, batch_size=4, t_max=512, amp=True),
    "grok-eval": dict(model=GROK, batch_size=16, t_max=512, amp=False, eval=True),
    "migt-eval": dict(model=MIGT, batch_size=32, t_max=256, amp=False, eval=True),
}


# ----------------------------------------------------------------------------- parameters


def _switch_configs():
    """Every combination of the structural switches, and each other switch flipped alone, for both archs."""
    structural = ("arch", "embedding", "attention", "gate", "horizon_mode", "variable_attention")
    for combo in itertools.product(*(SWITCHES[k] for k in structural)):
        yield dataclasses.replace(TINY, **dict(zip(structural, combo)))
    for arch, (name, values) in itertools.product(SWITCHES["arch"], SWITCHES.items()):
        for value in values[1:] if name != "arch" else []:
            yield dataclasses.replace(TINY, arch=arch, **{name: value})


def test_parameter_count_equals_the_built_models_for_every_switch_combination():
    wrong = []
    for cfg in _switch_configs():
        built, counted = count_parameters(build_model(cfg)), parameter_count(cfg)
        if built != counted:
            wrong.append(f"{cfg}: built {built}, counted {counted}")
    assert not wrong, f"{len(wrong)} combinations differ, first: {wrong[0]}"
    for cfg in (ModelConfig(), ModelConfig(arch="grok_sl", d_model=512, gate="gru", horizon_mode="autoregressive")):
        assert parameter_count(cfg) == count_parameters(build_model(cfg)), cfg.arch


# ----------------------------------------------------------------------------- what autograd keeps


def _saved_bytes(cfg: ModelConfig, B: int, T: int, amp: bool) -> int:
    """Bytes of the distinct storages autograd keeps for backward after one forward and the loss."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    x, mask = torch.randn(B, T, cfg.n_vars), torch.ones(B, T, dtype=torch.bool)
    temporal, scale, y = torch.zeros(B, T, 4), torch.ones(B, len(cfg.horizons)), torch.randn(B, len(cfg.horizons))
    storages: dict[int, int] = {}

    def pack(t):
        storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            fc = model(x, mask, temporal, scale, y)
        model_loss(fc, y, scale, cfg)
    return sum(n for ptr, n in storages.items() if ptr not in params)


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cfg", [
    ModelConfig(**MIGT),
    ModelConfig(**{**MIGT, "gate": "gru", "dropout": 0.0}),
    ModelConfig(**GROK),
    ModelConfig(**{**GROK, "gate": "sigmoid"}),
    ModelConfig(**{**GROK, "gate": "none", "dropout": 0.0}),
    ModelConfig(**{**GROK, "variable_attention": "none"}),
    ModelConfig(**{**MIGT, "attention": "temporal"}),
], ids=["migt", "migt-gru-nodrop", "grok-gru", "grok-sigmoid", "grok-none-nodrop", "grok-nocross", "migt-no-tsa"])
def test_activation_count_matches_the_tensors_autograd_keeps_within_10_percent(cfg, amp):
    B, T = 2, 128
    kept = _saved_bytes(cfg, B, T, amp)
    est = estimate_memory(cfg, batch_size=B, t_max=T, amp=amp, device="cpu")
    counted = est.activations - (2 * est.n_params if amp else 0)  # the bf16 weight copies are parameters' storages
    assert abs(counted - kept) <= 0.10 * kept, f"counted {counted / MiB:.2f} MiB, autograd keeps {kept / MiB:.2f} MiB"


# ----------------------------------------------------------------------------- measured peaks


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _measure(case: dict) -> int:
    """Peak resident memory (bytes) above the baseline of building the model and training one optimizer
    step of two micro-batches (or, with `eval`, one no-grad forward), as train.py does."""
    cfg = ModelConfig(**case["model"])
    B, T, H = case["batch_size"], case["t_max"], len(cfg.horizons)
    g = torch.Generator().manual_seed(0)
    x, mask = torch.randn(B, T, cfg.n_vars, generator=g), torch.ones(B, T, dtype=torch.bool)
    temporal, scale, y = torch.zeros(B, T, 4), torch.ones(B, H), torch.randn(B, H, generator=g)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak (VmHWM) to the current RSS
        f.write("5")
    base = _rss_kib("VmRSS")
    model = build_model(cfg)
    if case.get("eval"):
        with torch.no_grad():
            model.eval()(x, mask, temporal, scale)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case["amp"]):
                fc = model(x, mask, temporal, scale, y)
            (model_loss(fc, y, scale, cfg) / 2).backward()
            del fc
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = (_rss_kib("VmHWM") - base) * 1024
    del model
    gc.collect()
    return peak


def _measure_main() -> None:
    """In a fresh process: warm every code path up first (lazy imports and one-time buffers would otherwise
    count as training memory), then measure each case and print {case: bytes} as JSON."""
    torch.set_num_threads(1)
    for case in CASES.values():
        small = {**case, "batch_size": 1, "t_max": 16}
        _measure(small)
    print(json.dumps({name: _measure(case) for name, case in CASES.items()}))


@pytest.fixture(scope="module")
def measured() -> dict[str, int]:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset and read the peak resident memory")
    # Every tensor of 64 KiB or more gets its own mmap, so freeing it returns it to the system and the
    # resident peak follows live tensors (glibc otherwise keeps freed heap memory).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", "from tests.test_memory import _measure_main; _measure_main()"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_estimate_is_within_tolerance_of_the_measured_cpu_peak(measured, name):
    case = CASES[name]
    est = estimate_memory(ModelConfig(**case["model"]), batch_size=case["batch_size"], t_max=case["t_max"],
                          amp=case["amp"], device="cpu")
    estimate = est.eval_peak if case.get("eval") else max(est.train_peak, est.step_peak)
    got = measured[name]
    print(f"\n{name}: estimate {estimate / MiB:.1f} MiB, measured {got / MiB:.1f} MiB, ratio {estimate / got:.3f}")
    assert abs(estimate - got) <= TOLERANCE * got, (
        f"{name}: estimate {estimate / MiB:.1f} MiB vs measured {got / MiB:.1f} MiB (tolerance {TOLERANCE:.0%})")


def test_activation_checkpointing_cuts_the_measured_peak_about_as_estimated(measured):
    plain, ckpt = measured["grok-fp32-4-layers"], measured["grok-fp32-4-layers-checkpointed"]
    cfg = ModelConfig(**CASES["grok-fp32-4-layers"]["model"])
    est = estimate_memory(cfg, batch_size=4, t_max=512, amp=False, device="cpu")
    saved_measured, saved_estimated = plain - ckpt, est.train_peak_with(False) - est.train_peak_with(True)
    assert ckpt < 0.5 * plain, f"checkpointed {ckpt / MiB:.0f} MiB vs plain {plain / MiB:.0f} MiB"
    assert abs(saved_estimated - saved_measured) <= TOLERANCE * saved_measured, (
        f"checkpointing saves {saved_measured / MiB:.0f} MiB measured, {saved_estimated / MiB:.0f} MiB estimated")


# ----------------------------------------------------------------------------- fitting and the plan


GROK_1M = ModelConfig(arch="grok_sl", n_vars=24, groups=(4, 3, 5, 6, 4, 2), horizons=(5, 15, 30, 60, 120, 240),
                      d_model=512, n_temporal_layers=8, gate="gru", horizon_mode="autoregressive")


def test_fits_keep_the_effective_batch_and_stay_under_the_budget():
    budget = usable_bytes(80)
    fits = fit_memory(GROK_1M, batch_size=32, grad_accum=4, t_max=6900, amp=True, budget=budget)
    assert [(f.checkpointing, f.batch_size, f.grad_accum) for f in fits] == [(False, 4, 32), (True, 16, 8)]
    for fit in fits:
        est = estimate_memory(GROK_1M, batch_size=fit.batch_size, t_max=6900, amp=True, checkpointing=fit.checkpointing)
        assert est.train_peak == fit.peak <= budget
        bigger = estimate_memory(GROK_1M, batch_size=2 * fit.batch_size, t_max=6900, amp=True,
                                 checkpointing=fit.checkpointing)
        assert bigger.train_peak > budget, "a larger micro-batch would also fit"
    # Nothing fits at t_max 6900 in 1 GiB: the largest t_max that does, at micro-batch 1.
    (tiny,) = fit_memory(GROK_1M, batch_size=32, grad_accum=4, t_max=6900, amp=True, budget=GiB)
    assert (tiny.batch_size, tiny.grad_accum) == (1, 128) and 0 < tiny.t_max < 6900 and tiny.peak <= GiB


def test_grok_sl_1m_fits_an_a100_80gb_with_checkpointing_and_the_same_effective_batch():
    spec = load_spec("grok_sl_1m")
    (row,) = check_memory(spec)
    assert spec.model.activation_checkpointing and spec.train.batch_size * spec.train.grad_accum == 32 * 4
    assert row.device == "cuda" and row.amp and row.fits and row.budget == usable_bytes(80)
    assert row.estimate.train_peak_with(False) > row.budget, "it would fit without checkpointing too"


def test_a_trial_that_cannot_fit_is_refused_with_one_line_naming_the_settings_that_do():
    spec = load_spec("grok_sl_1m", overrides=["splits.folds=1", "model.activation_checkpointing=false",
                                             "train.batch_size=32", "train.grad_accum=4", "train.eval_batch_size=512"])
    with pytest.raises(SpecError) as err:
        check_memory(spec)
    assert str(err.value) == (
        "grok_sl_1m: trial base-s0: training needs about 361.4 GiB (micro-batch 32 x 6900 bars, bf16, checkpointing "
        "off) and scoring needs about 364.0 GiB (train.eval_batch_size 512), over the 72.0 GiB usable of a 80 GiB GPU "
        "(resources.gpu_memory_gb); to fit: --set train.batch_size=4 --set train.grad_accum=32 (45.8 GiB); "
        "--set model.activation_checkpointing=true --set train.batch_size=16 --set train.grad_accum=8 (38.3 GiB); "
        "--set train.eval_batch_size=101 (nqexp run SPEC --dry-run shows the plan)")


def test_variants_that_need_the_same_fix_are_refused_in_one_line():
    spec = load_spec("tsa_ablation", overrides=["splits.folds=1", "resources.gpu_memory_gb=40"])
    with pytest.raises(SpecError) as err:
        check_memory(spec)
    (line,) = str(err.value).splitlines()
    assert line.startswith("tsa_ablation: trials full-s0, full-s1, full-s2, no_instance_norm-s0 and 8 more: "), line
    assert "over the 36.0 GiB usable of a 40 GiB GPU" in line and "--set model.activation_checkpointing=true" in line


def test_a_sweep_is_planned_at_the_largest_corner_of_its_search_space():
    spec = load_spec("sweep", overrides=["model.activation_checkpointing=false"])
    base, corner = memory_plan(spec, "sweep")
    assert corner.label.startswith("the search space's largest trial: train.batch_size=256, model.d_model=512, "
                                   "model.n_temporal_layers=6"), corner.label
    assert base.fits and not corner.fits
    with pytest.raises(SpecError, match="to fit: --set model.activation_checkpointing=true .*narrow the search space"):
        check_memory(spec, "sweep")
    check_memory(load_spec("sweep"), "sweep")  # as shipped: checkpointing on


def test_without_a_stated_gpu_size_a_gpu_trial_is_planned_but_not_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = load_spec("grok_sl_1m", overrides=["resources.gpu_memory_gb=null", "train.batch_size=32"])
    (row,) = check_memory(spec)
    assert row.fits is None and row.memory_source == "unknown: no GPU visible here; set resources.gpu_memory_gb"
    (row,) = memory_plan(spec, address="auto")
    assert row.memory_source == "unknown: set resources.gpu_memory_gb for the cluster's GPUs"


def test_a_fractional_gpu_trial_plans_with_its_share():
    spec = load_spec("migt_tvdt_5m", overrides=["resources.gpus_per_trial=0.5"])
    (row,) = memory_plan(spec)
    assert row.budget == usable_bytes(80, 0.5) and not row.fits
    assert row.memory_source == "a 80 GiB GPU (resources.gpu_memory_gb), 0.5 of it per trial"


def _clusters_table() -> list[list[str]]:
    text = (ROOT / "docs" / "clusters.md").read_text()
    section = text[text.index("## 8."):]
    start = section.index("| spec |")
    rows = []
    for line in section[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_memory_figures_in_docs_clusters_md_are_the_plans():
    """docs/clusters.md §8 lists every shipped spec's plan; a model or spec change that moves a figure must
    update the page."""
    rows = _clusters_table()
    documented = {re.sub(r"`", "", r[0]) for r in rows}
    assert documented == {"quickstart", "demo_quality", "migt_tvdt_5m", "tsa_ablation", "sweep", "grok_sl_1m"}
    for spec_name, trials, _device, micro, t_max, state, acts, peak, eval_peak, *_ in rows:
        spec_name = spec_name.strip("`")
        spec = load_spec(spec_name)
        plan = memory_plan(spec, "sweep" if spec.search else "run")
        first = trials.split(",")[0].strip()
        match = [r for r in plan if first in r.label or any(n.rsplit("-s", 1)[0] == first for n in r.names)]
        assert match, f"{spec_name}: no plan row for {first!r}"
        row, est = match[0], match[0].estimate
        got = [f"{row.batch_size} x {row.grad_accum}", str(row.t_max), f"{est.state / GiB:.1f}",
               f"{est.activations / GiB:.1f} / {est.activations_checkpointed / GiB:.1f}",
               f"{max(est.train_peak, est.step_peak) / GiB:.1f}", f"{est.eval_peak / GiB:.1f} ({row.eval_batch_size})"]
        assert [micro, t_max, state, acts, peak, eval_peak] == got, f"{spec_name} {trials}"
