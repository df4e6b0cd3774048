"""train.py: the loop learns, checkpoints atomically, keeps the best k, and resumes exactly after SIGKILL."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nqexp.experiment.track import NullTracker  # noqa: E402
from nqexp.model.net import ModelConfig, build_model, model_loss  # noqa: E402
from nqexp.model import train as train_mod  # noqa: E402
from nqexp.model.train import (  # noqa: E402
    TrainConfig,
    batches,
    compile_for_training,
    load_checkpoint_model,
    lr_factor,
    train,
)
from nqexp.model.volatility import n_vol_inputs  # noqa: E402
from nqexp.model.windows import WindowDataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def synthetic_dataset(n: int, seed: int, T: int = 16, V: int = 4, H: int = 2) -> WindowDataset:
    """Windows whose target volatility is carried by feature 0: a model that reads it beats a constant."""
    rng = np.random.default_rng(seed)
    M = n + T
    bars = np.zeros((M + 1, V), np.float32)
    bars[:M] = rng.standard_normal((M, V)).astype(np.float32)
    temporal = np.zeros((M + 1, 4), np.float32)
    temporal[:M, 0] = np.arange(M) * 5 % 1440
    temporal[:M, 1] = (np.arange(M) // 288) % 5
    temporal[:M, 2] = 1 + (np.arange(M) // 288) % 28
    temporal[:M, 3] = 1 + (np.arange(M) // 288) % 365
    start = np.arange(n, dtype=np.int64)
    length = np.full(n, T, np.int64)
    last = bars[start + T - 1, 0]                                   # (n,) feature 0 at the last bar
    sigma = np.exp(0.8 * last)[:, None] * np.array([1.0, 1.5])[None, :H]  # (n, H)
    y = (sigma * rng.standard_normal((n, H))).astype(np.float32) * 1e-3
    scale = np.full((n, H), 1e-3, np.float32) * np.array([1.0, 1.5], np.float32)[None, :H]
    ts = np.datetime64("2024-01-01T00:00", "us") + np.arange(n) * np.timedelta64(5, "m")
    vol = rng.standard_normal((n, n_vol_inputs(H))).astype(np.float32)  # (n, K) uninformative here
    return WindowDataset(bars=bars, temporal=temporal, start=start, length=length, y=y, scale=scale,
                         idx=start + T - 1, ts=ts, t_max=T, names=[f"v{i}" for i in range(V)], horizons=(3, 6)[:H],
                         vol=vol)


def tiny_model() -> ModelConfig:
    return ModelConfig(n_vars=4, horizons=(3, 6), d_model=16, n_heads=2, d_ff=32, n_temporal_layers=1,
                       n_variable_layers=1, dropout=0.1)


def tiny_train(**kw) -> TrainConfig:
    base = dict(lr=3e-3, warmup_steps=5, batch_size=32, grad_accum=2, max_epochs=4, patience=10,
                keep_checkpoints=2, restart_epochs=2, num_threads=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data():
    return {"train": synthetic_dataset(256, 0), "val": synthetic_dataset(96, 1)}


def test_training_lowers_val_crps_and_keeps_the_best_k_checkpoints(tmp_path, data):
    result = train(tiny_model(), tiny_train(max_epochs=6), data, NullTracker(), tmp_path, seed=0,
                   horizon_minutes=(15, 30))
    crps = [h["val/crps"] for h in result.history]
    assert len(crps) == 6 and all(math.isfinite(c) for c in crps)
    assert min(crps[1:]) < crps[0], crps
    assert result.best_val_crps <= min(crps) * (1 + 1e-4)
    assert result.history[result.best_epoch - 1]["val/crps"] == result.best_val_crps
    best = sorted(tmp_path.glob("best-epoch*.pt"))
    assert 1 <= len(best) <= 2 and Path(result.checkpoint) in best
    assert not list(tmp_path.glob(".*tmp*")), "atomic writes leave no temporary files"
    assert result.stopped == "max_epochs"


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path, data):
    result = train(tiny_model(), tiny_train(lr=1e-9, lr_min=1e-10, max_epochs=30, patience=2), data,
                   NullTracker(), tmp_path, seed=0, horizon_minutes=(15, 30))
    assert result.stopped == "early_stopping"
    assert result.epochs < 30


def test_metrics_reach_the_tracker_with_increasing_steps(tmp_path, data):
    class Recorder:
        def __init__(self):
            self.rows = []

        def log(self, metrics, step):
            self.rows.append((step, dict(metrics)))

    rec = Recorder()
    train(tiny_model(), tiny_train(max_epochs=2), data, rec, tmp_path, seed=0, horizon_minutes=(15, 30))
    steps = [s for s, _ in rec.rows]
    assert steps == sorted(steps)
    keys = set().union(*(m.keys() for _, m in rec.rows))
    assert {"train/loss", "train/lr", "val/crps", "val/crps_15m", "val/crps_30m"} <= keys


def test_lr_schedule_warms_up_linearly_then_restarts():
    cfg = TrainConfig(lr=1e-3, lr_min=1e-6, warmup_steps=10, restart_epochs=1, restart_mult=2)
    assert lr_factor(0, cfg, 20) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 20) == pytest.approx(1.0)
    assert lr_factor(10, cfg, 20) == pytest.approx(1.0)               # cosine starts at the top
    assert lr_factor(29, cfg, 20) < 0.01                               # end of the first period (20 steps)
    assert lr_factor(30, cfg, 20) == pytest.approx(1.0)                # warm restart
    assert lr_factor(50, cfg, 20) == pytest.approx(0.5 * (1 + 1e-3), rel=1e-3)  # halfway through 40 steps


def test_a_step_budget_ends_the_cosine_at_lr_min():
    cfg = TrainConfig(lr=1e-3, lr_min=1e-6, warmup_steps=10, restart_epochs=30, max_steps=110)
    # Without the budget the first period would last 30 epochs x 20 steps; the budget cuts it at step 110.
    assert lr_factor(10, cfg, 20) == pytest.approx(1.0)
    assert lr_factor(60, cfg, 20) == pytest.approx(0.5 * (1 + 1e-3), rel=1e-3)  # halfway through the 100 steps
    assert lr_factor(109, cfg, 20) < 0.01
    # A budget past the first period: the restart happens, and the budget ends the second period.
    cfg = TrainConfig(lr=1e-3, lr_min=1e-6, warmup_steps=10, restart_epochs=1, restart_mult=2, max_steps=50)
    assert lr_factor(30, cfg, 20) == pytest.approx(1.0)
    assert lr_factor(49, cfg, 20) < 0.01


# torch.compile on CPU generates C++ through inductor, so it needs a C++ compiler (found here: g++).
needs_cxx = pytest.mark.skipif(not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")),
                               reason="torch.compile on CPU needs a C++ compiler (g++) for inductor; none on PATH")
COMPILE_MODEL = ModelConfig(n_vars=4, horizons=(3, 6), d_model=16, n_heads=2, d_ff=32, n_temporal_layers=1,
                            n_variable_layers=1, dropout=0.0)  # dropout 0: compiled code draws other random masks


def test_compile_auto_means_on_for_cuda_and_off_for_cpu():
    model = torch.nn.Linear(2, 2)
    assert compile_for_training(model, "auto", "cpu") is model
    assert compile_for_training(model, False, "cuda") is model
    for setting, device in (("auto", "cuda"), (True, "cpu")):  # torch.compile wraps lazily: nothing compiles here
        wrapped = compile_for_training(model, setting, device)
        assert wrapped is not model and wrapped._orig_mod is model


def _training_step(model, batch, step_model):
    x, mask, temporal, y, scale, vol = batch
    torch.manual_seed(0)
    fc = step_model(x, mask, temporal, scale, y, vol=vol)
    loss = model_loss(fc, y, scale, model.cfg)
    loss.backward()
    return fc.q.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@needs_cxx
@pytest.mark.parametrize("backend, checkpointing", [("inductor", False), ("aot_eager", True)],
                         ids=["inductor", "aot-eager-checkpointed"])
def test_a_compiled_model_matches_the_eager_one_on_a_training_step(backend, checkpointing):
    # inductor is what train.compile runs (C++ kernels on CPU, a cold compile takes 30-100 s here); with
    # activation checkpointing (Grok-SL on a GPU uses both) aot_eager traces the same graphs, forward and
    # backward, without generating code.
    cfg = dataclasses.replace(COMPILE_MODEL, activation_checkpointing=checkpointing)
    batch = next(batches(synthetic_dataset(8, 0), 8, shuffle=False))
    torch.manual_seed(0)
    eager = build_model(cfg).train()
    twin = copy.deepcopy(eager)
    q, loss, grads = _training_step(eager, batch, eager)
    q_c, loss_c, grads_c = _training_step(twin, batch, torch.compile(twin, backend=backend))
    torch.testing.assert_close(q_c, q, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=0)
    for name, g in grads.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-3, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_training_with_compile_saves_plain_state_dicts(tmp_path, monkeypatch):
    # The compiled wrapper names its parameters `_orig_mod.<name>`; checkpoints and bundles must not.
    # The wrapper and its names are the same for every backend, so the quick "eager" backend stands in
    # for inductor here (the test above checks inductor's numbers).
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    data = {"train": synthetic_dataset(16, 0), "val": synthetic_dataset(16, 1)}
    cfg = tiny_train(batch_size=8, grad_accum=1, max_epochs=1, steps_per_epoch=2, compile=True)
    compiled = []
    real = compile_for_training

    def spy(model, setting, device):
        step_model = real(model, setting, device)
        compiled.append(step_model)
        return step_model

    monkeypatch.setattr(train_mod, "compile_for_training", spy)
    result = train(COMPILE_MODEL, cfg, data, NullTracker(), tmp_path, seed=0, horizon_minutes=(15, 30))
    assert list(compiled[0].state_dict())[0].startswith("_orig_mod."), "the step did not run compiled"
    for path in (tmp_path / "latest.pt", Path(result.checkpoint)):
        keys = list(torch.load(path, weights_only=False)["model"])
        assert keys and not [k for k in keys if k.startswith("_orig_mod")], keys[:3]
    model, _ = load_checkpoint_model(result.checkpoint)
    assert set(model.state_dict()) == set(keys)


RUNNER = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
    from test_train import synthetic_dataset, tiny_model, tiny_train
    from nqexp.model.train import train
    kill_at = int(sys.argv[2])
    class KillingTracker:
        def log(self, metrics, step):
            if kill_at and step == kill_at and "train/loss" in metrics:
                os.kill(os.getpid(), signal.SIGKILL)      # a real, uncatchable kill mid-epoch
    data = {{"train": synthetic_dataset(256, 0), "val": synthetic_dataset(64, 1)}}
    r = train(tiny_model(), tiny_train(max_epochs=3, checkpoint_every=2), data, KillingTracker(), sys.argv[1],
              seed=3, horizon_minutes=(15, 30))
    print(json.dumps({{"history": r.history, "best": r.best_val_crps, "steps": r.steps}}))
""")


def test_a_run_killed_mid_epoch_resumes_to_identical_results(tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(tests=str(ROOT / "tests"), root=str(ROOT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def go(run_dir, kill_at):
        return subprocess.run([sys.executable, str(script), str(run_dir), str(kill_at)], capture_output=True,
                              text=True, env=env, timeout=300)

    straight = go(tmp_path / "straight", 0)
    assert straight.returncode == 0, straight.stderr
    # 256 samples / 32 = 8 micro-batches = 4 optimizer steps per epoch; step 7 is mid-epoch 2,
    # one step after the checkpoint at step 6 (checkpoint_every=2).
    killed = go(tmp_path / "killed", 7)
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "killed" / "latest.pt").exists()
    resumed = go(tmp_path / "killed", 0)
    assert resumed.returncode == 0, resumed.stderr
    a, b = json.loads(straight.stdout.splitlines()[-1]), json.loads(resumed.stdout.splitlines()[-1])
    assert a["steps"] == b["steps"] == 12
    assert [h["val/crps"] for h in a["history"]] == [h["val/crps"] for h in b["history"]]
    # Checkpoints are tensors and plain values: they load weights-only (no pickle code runs).
    wa = torch.load(tmp_path / "straight" / "latest.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "killed" / "latest.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------------
# The training budget is optimizer steps


def test_max_steps_is_the_budget_whatever_a_variant_costs_per_step(tmp_path, data):
    """Two variants of different cost per step train for exactly the same number of optimizer steps,
    stopping mid-epoch with a val scoring at that step; the result records steps and the best step."""
    cheap = train(tiny_model(), tiny_train(max_steps=7, max_epochs=50), data, NullTracker(), tmp_path / "a",
                  seed=0, horizon_minutes=(15, 30))
    dear_cfg = dataclasses.replace(tiny_model(), d_model=32, n_temporal_layers=2)
    dear = train(dear_cfg, tiny_train(max_steps=7, max_epochs=50), data, NullTracker(), tmp_path / "b",
                 seed=0, horizon_minutes=(15, 30))
    for r in (cheap, dear):
        assert (r.steps, r.stopped, r.truncated) == (7, "max_steps", False)
        assert r.epochs == 2                      # 4 steps per epoch: the budget ends inside epoch 2 ...
        assert len(r.history) == 2                # ... which is scored at step 7
        assert r.best_step in (4, 7) and r.best_epoch == r.best_step // 4 + (r.best_step % 4 > 0)


def test_the_time_guard_marks_a_trial_truncated(tmp_path, data):
    r = train(tiny_model(), tiny_train(max_steps=10_000, max_epochs=50, time_budget_s=1e-9), data, NullTracker(),
              tmp_path, seed=0, horizon_minutes=(15, 30))
    assert r.stopped == "time_budget" and r.truncated and r.steps < 10_000


def test_same_seed_and_budget_give_the_same_result_twice(tmp_path, data):
    """Equal budgets make a table reproducible: nothing depends on the machine's speed."""
    runs = [train(tiny_model(), tiny_train(max_steps=6, max_epochs=50), data, NullTracker(), tmp_path / str(i),
                  seed=3, horizon_minutes=(15, 30)) for i in range(2)]
    assert runs[0].history == runs[1].history and runs[0].best_val_crps == runs[1].best_val_crps


def _wrong_normaliser_dataset(n: int, seed: int, T: int = 16, V: int = 4) -> WindowDataset:
    """Bars of pure noise; the true sigma moves with vol input 0 (a fast EWMA the slow normaliser misses),
    and at the long horizon the normaliser is also half the true level: only the vol path can fix both."""
    base = synthetic_dataset(n, seed, T=T, V=V)
    rng = np.random.default_rng(100 + seed)
    vol = rng.standard_normal((n, n_vol_inputs(2))).astype(np.float32)  # (n, K)
    true_sigma = base.scale * np.exp(0.5 * vol[:, :1]) * np.array([1.0, 2.0], np.float32)  # (n, H)
    y = (true_sigma * rng.standard_normal((n, 2))).astype(np.float32)
    return dataclasses.replace(base, bars=rng.standard_normal(base.bars.shape).astype(np.float32), y=y, vol=vol)


@pytest.mark.parametrize("vol_inputs", [True, False])
def test_vol_inputs_let_the_model_correct_a_slow_and_biased_normaliser(tmp_path, vol_inputs):
    data = {"train": _wrong_normaliser_dataset(2048, 0), "val": _wrong_normaliser_dataset(512, 1)}
    cfg = dataclasses.replace(tiny_model(), vol_inputs=vol_inputs, recent_bars=0)
    result = train(cfg, tiny_train(max_epochs=8, lr=1e-2, warmup_steps=5, batch_size=64, grad_accum=1),
                   data, NullTracker(), tmp_path, seed=0, horizon_minutes=(15, 30))
    model, _ = load_checkpoint_model(result.checkpoint)
    scored = train_mod.predict(model, data["val"], 256, "cpu")
    val = data["val"]
    true_sigma = val.scale * np.exp(0.5 * val.vol[:, :1]) * np.array([1.0, 2.0], np.float32)  # (n, H)
    width = scored.q[:, :, -2] - scored.q[:, :, 1]  # (n, H) the 0.1..0.9 interval
    ratio = width / (2 * 1.2816 * true_sigma)  # 1 when the width matches the true normal's
    from scipy.stats import spearmanr

    rho = [spearmanr(width[:, h], true_sigma[:, h]).statistic for h in range(2)]
    if vol_inputs:
        # The width follows the true sigma and sits at its level at both horizons, the biased one too.
        assert min(rho) > 0.9, rho
        assert np.all(np.abs(np.median(ratio, axis=0) - 1) < 0.2), np.median(ratio, axis=0)
    else:
        # Without them the bars carry nothing: the width cannot follow sigma (the control of the claim).
        assert max(rho) < 0.5, rho


def test_eval_every_scores_val_mid_epoch_and_can_keep_a_mid_epoch_step(tmp_path, data):
    # 256 samples / 32 per micro-batch / 2 per step = 4 optimizer steps per epoch; score every 2.
    result = train(tiny_model(), tiny_train(max_epochs=3, eval_every=2), data, NullTracker(), tmp_path, seed=0,
                   horizon_minutes=(15, 30))
    steps = [h["step"] for h in result.history]
    assert steps == [2, 4, 6, 8, 10, 12], steps  # the epoch ends (4, 8, 12) are scored once, not twice
    assert result.best_step in steps
    best = [h for h in result.history if h["step"] == result.best_step][0]
    assert best["val/crps"] == result.best_val_crps


def test_ema_weights_are_what_is_scored_and_checkpointed(tmp_path, data):
    result = train(tiny_model(), tiny_train(max_epochs=2, ema_decay=0.9), data, NullTracker(), tmp_path / "ema",
                   seed=0, horizon_minutes=(15, 30))
    model, _ = load_checkpoint_model(result.checkpoint)
    scored = train_mod.predict(model, data["val"], 256, "cpu")
    assert float(np.mean(train_mod.crps_by_horizon(scored, model.cfg.quantiles))) == pytest.approx(
        result.best_val_crps, rel=1e-6)
    latest = torch.load(tmp_path / "ema" / "latest.pt", weights_only=True)
    assert len(latest["state"]["ema"]) == len(list(model.parameters()))
    raw = train(tiny_model(), tiny_train(max_epochs=2), data, NullTracker(), tmp_path / "raw", seed=0,
                horizon_minutes=(15, 30))
    assert raw.best_val_crps != result.best_val_crps  # the same steps, another (averaged) model scored
    again = train(tiny_model(), tiny_train(max_epochs=2, ema_decay=0.9), data, NullTracker(), tmp_path / "again",
                  seed=0, horizon_minutes=(15, 30))
    assert again.best_val_crps == result.best_val_crps
