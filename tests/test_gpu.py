"""CUDA checks: bf16 autocast on the real model, train() on a GPU, and the quickstart smoke on a GPU.

Every test carries the `gpu` marker: tests/conftest.py skips them where torch sees no CUDA device,
and they run wherever it does (an A100/H100 node, or inside the image:
`docker run --gpus all IMAGE pytest -m gpu tests/test_gpu.py`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nqexp.experiment.track import NullTracker  # noqa: E402
from nqexp.model.net import ModelConfig, build_model, model_loss  # noqa: E402
from nqexp.model.train import TrainConfig, load_checkpoint_model, train  # noqa: E402
from tests.test_train import synthetic_dataset  # noqa: E402

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]


def _cuda_batch(ds, n):
    batch = ds.batch(np.arange(n))
    return {k: torch.as_tensor(v).cuda() for k, v in batch.items() if k != "idx"}


def test_bf16_autocast_forward_backward_keeps_fp32_ordered_quantiles_and_finite_grads():
    assert torch.cuda.is_bf16_supported(), f"{torch.cuda.get_device_name(0)} reports no bf16"
    torch.manual_seed(0)
    cfg = ModelConfig(n_vars=4, horizons=(3, 6), d_model=64, n_heads=4, d_ff=128, n_temporal_layers=2,
                      n_variable_layers=1, dropout=0.0)
    model = build_model(cfg).cuda()
    b = _cuda_batch(synthetic_dataset(64, 0, T=32), 64)
    seen = {}
    block_linear = next(m for name, m in model.named_modules() if "temporal" in name and isinstance(m, torch.nn.Linear))

    def record(module, inputs, output):  # returns None, so the output passes through unchanged
        seen.setdefault("dtype", output.dtype)

    block_linear.register_forward_hook(record)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fc = model(b["x"], b["mask"], b["temporal"], b["scale"], b["y"])  # q, z: (B, H, Q)
    loss = model_loss(fc, b["y"], b["scale"], cfg)
    loss.backward()
    assert seen["dtype"] == torch.bfloat16, f"the encoder ran in {seen['dtype']}, so autocast was not active"
    assert fc.q.dtype == torch.float32 and fc.z.dtype == torch.float32, (fc.q.dtype, fc.z.dtype)
    assert fc.q.shape == (64, 2, len(cfg.quantiles))
    gaps = fc.q.diff(dim=-1)  # (B, H, Q-1)
    assert bool((gaps > 0).all()), f"quantiles cross: smallest gap {gaps.min().item():.3e}"
    assert torch.isfinite(loss), loss
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, f"missing or non-finite gradients: {bad[:5]}"


def test_train_on_cuda_with_bf16_lowers_val_crps_and_saves_a_loadable_checkpoint(tmp_path):
    data = {"train": synthetic_dataset(512, 0), "val": synthetic_dataset(128, 1)}
    model_cfg = ModelConfig(n_vars=4, horizons=(3, 6), d_model=32, n_heads=4, d_ff=64, n_temporal_layers=1,
                            n_variable_layers=1, dropout=0.0)
    cfg = TrainConfig(lr=3e-3, warmup_steps=5, batch_size=64, grad_accum=1, max_epochs=4, patience=10,
                      keep_checkpoints=1, restart_epochs=4, amp="auto")
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train(model_cfg, cfg, data, NullTracker(), tmp_path / "run", seed=0, horizon_minutes=(15, 30),
                   device="cuda")
    seconds = time.perf_counter() - t0
    crps = [h["val/crps"] for h in result.history]
    print(f"\ntrain on {torch.cuda.get_device_name(0)}: {result.steps} steps in {seconds:.2f}s, "
          f"{result.steps * cfg.batch_size / seconds:.0f} samples/s, val CRPS {crps[0]:.3e} -> {min(crps):.3e}, "
          f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    assert result.steps == 4 * 8 and all(np.isfinite(crps)), crps
    assert min(crps[1:]) < crps[0], f"val CRPS did not improve on CUDA: {crps}"
    model, _ = load_checkpoint_model(result.checkpoint, device="cuda")
    assert next(model.parameters()).device.type == "cuda"


def test_quickstart_smoke_trials_train_on_the_gpu(tmp_path):
    env = {**os.environ, "NQEXP_DB": str(tmp_path / "nq.duckdb"), "WANDB_MODE": "disabled", "WANDB_SILENT": "true",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "nqexp.cli", "run", str(ROOT / "experiments" / "quickstart.yaml"), "--smoke",
         "--set", "resources.gpus_per_trial=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"\nquickstart --smoke on {torch.cuda.get_device_name(0)}: {wall:.1f}s wall\n{result.stdout[-1500:]}")
    ckpts = sorted((tmp_path / "runs" / "quickstart" / "trials").glob("*/checkpoints/best-*.pt"))
    assert ckpts, "no trial checkpoint written"
    locations = set()
    for path in ckpts:
        # map_location sees where each tensor was saved from: a trial that trained on the GPU saved cuda tensors.
        torch.load(path, weights_only=True, map_location=lambda storage, loc: locations.add(loc) or storage)
    assert locations and all(loc.startswith("cuda") for loc in locations), f"checkpoint tensors came from {locations}"


# The memory plan (docs/clusters.md §8) against what the CUDA caching allocator reports. The configs are
# the shapes tests/test_memory.py measures on CPU, scaled up to a few GiB so the allocator's rounding and
# the cuBLAS workspace are noise.
GPU_MEMORY_CASES = {
    "migt-bf16": (dict(n_vars=24, horizons=(3, 6), d_model=256, n_heads=8, d_ff=1024, n_temporal_layers=4,
                       n_variable_layers=2, dropout=0.1), 32, 288),
    "grok-gru-bf16": (dict(arch="grok_sl", n_vars=24, groups=(4, 3, 5, 6, 4, 2), horizons=(5, 15), d_model=256,
                           n_heads=8, d_ff=512, n_temporal_layers=4, gate="gru", horizon_mode="autoregressive",
                           dropout=0.1), 4, 2048),
    "grok-gru-bf16-checkpointed": (dict(arch="grok_sl", n_vars=24, groups=(4, 3, 5, 6, 4, 2), horizons=(5, 15),
                                        d_model=256, n_heads=8, d_ff=512, n_temporal_layers=4, gate="gru",
                                        horizon_mode="autoregressive", dropout=0.1, activation_checkpointing=True),
                                   4, 2048),
}


@pytest.mark.parametrize("name", list(GPU_MEMORY_CASES))
def test_memory_estimate_is_within_tolerance_of_cuda_max_memory_allocated(name):
    from nqexp.model.memory import TOLERANCE, estimate_memory

    kw, B, T = GPU_MEMORY_CASES[name]
    cfg = ModelConfig(**kw)
    H = len(cfg.horizons)
    x = torch.randn(B, T, cfg.n_vars, device="cuda")
    mask = torch.ones(B, T, dtype=torch.bool, device="cuda")
    temporal, scale = torch.zeros(B, T, 4, device="cuda"), torch.ones(B, H, device="cuda")
    y = torch.randn(B, H, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model = build_model(cfg).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for step in range(2):  # the second step runs with the optimizer state present, as in training
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                fc = model(x, mask, temporal, scale, y)
            (model_loss(fc, y, scale, cfg) / 2).backward()
            del fc
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - base
    est = estimate_memory(cfg, batch_size=B, t_max=T, amp=True, device="cuda")
    estimate = max(est.train_peak, est.step_peak)
    print(f"\n{name} on {torch.cuda.get_device_name(0)}: estimate {estimate / 2**30:.2f} GiB, "
          f"measured {measured / 2**30:.2f} GiB, ratio {estimate / measured:.3f}")
    assert abs(estimate - measured) <= TOLERANCE * measured, (name, estimate / 2**30, measured / 2**30)

    del model, optimizer
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model = build_model(cfg).cuda().eval()
    with torch.no_grad():
        model(x, mask, temporal, scale)  # scoring: fp32, no autocast (train.predict)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - base
    est = estimate_memory(cfg, batch_size=B, t_max=T, amp=True, device="cuda")
    print(f"{name} scoring: estimate {est.eval_peak / 2**30:.2f} GiB, measured {measured / 2**30:.2f} GiB")
    assert abs(est.eval_peak - measured) <= TOLERANCE * measured, (name, est.eval_peak / 2**30, measured / 2**30)
