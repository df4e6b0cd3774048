"""Training: `train(model_cfg, train_cfg, data, tracker, run_dir) -> TrainResult`.

Knows nothing of Ray, click or YAML: the CLI and the Tune trainable both call this function
with arrays that windows.py built, and a Tracker (track.py) that receives every metric.

What it does (docs/model.md §6):
- pinball loss over the quantiles in the O(1) space y / scale with horizon weights
  (`model.horizon_weighting`; MSE for the point head), computed in fp32 by `model.model_loss`.
  There is no crossing penalty: the quantile head cannot cross by construction;
- AdamW, linear warmup, then cosine with warm restarts (`lr_factor`, a pure function of the
  optimizer step, so resuming needs only the step); with `max_steps` the period the budget falls in
  ends at the budget, so the rate reaches lr_min at the last step;
- gradient clipping, gradient accumulation, bf16 autocast on CUDA and fp32 on CPU;
- a budget of `max_steps` optimizer steps, the same for every variant and seed of a run, so variants
  are compared at equal training (docs/model.md §6); `time_budget_s` is only a guard, and a trial it
  stops is `truncated`;
- evaluation of val CRPS (original return scale) after every epoch, every `eval_every` optimizer
  steps and at the last step, early stopping on it (`patience` counts evaluations), and the best
  `keep_checkpoints` checkpoints kept on disk; the best step, not only the best epoch end, is kept;
- with `ema_decay` > 0, an exponential moving average of the weights (Polyak averaging) is what
  is scored and checkpointed: it averages away the step-to-step noise of the last updates, which
  is what a long-horizon median mostly fits (docs/model.md §6);
- atomic checkpoints (write to a temporary file, then rename) holding model, optimizer, RNG
  states, epoch, step and early-stopping state, written at every epoch end and every
  `checkpoint_every` optimizer steps. A checkpoint holds only tensors and plain values (dicts,
  lists, tuples, numbers, strings), so it loads with `torch.load(weights_only=True)`, which runs no
  code from the file; `load_checkpoint` refuses anything else with one line (docs/model.md §6).

Exact resume: batches come in an order that depends only on (seed, epoch), and the checkpoint
holds the torch/numpy RNG states and the micro-batch position inside the epoch. A resumed run
skips the micro-batches it already did and continues with identical state, so a run killed with
SIGKILL and resumed ends with the same metrics as one that never stopped (tested with a real kill).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import pickle
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from pydantic import Field

from nqexp.errors import DataError, SpecError
from nqexp.metrics import crps_quantile, horizon_label
from nqexp.model.windows import WindowLoader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (docs/model.md §6). Defaults are the MIGT-TVDT design's; YAML states only what differs."""

    # Ranges are declared on the types (Annotated[..., Field(...)]): the spec loader checks them and
    # `nqexp spec schema` shows them (docs/experiments.md §1); __post_init__ keeps the cross-field rules
    # and a few checks for code that builds the config directly.
    lr: Annotated[float, Field(gt=0)] = 1e-4                    # AdamW peak learning rate
    weight_decay: Annotated[float, Field(ge=0)] = 0.01          # AdamW decoupled weight decay
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9            # AdamW beta1 (torch refuses 1 and above)
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.999          # AdamW beta2
    warmup_steps: Annotated[int, Field(ge=0)] = 1000            # linear warmup in optimizer steps (0: none), then cosine
    restart_epochs: Annotated[int, Field(ge=1)] = 10            # cosine warm-restart period T_0, in epochs
    restart_mult: Annotated[int, Field(ge=1)] = 2               # T_mult: each restart period is this many times longer
    lr_min: Annotated[float, Field(ge=0)] = 1e-6                # cosine floor eta_min (below train.lr)
    grad_clip: Annotated[float, Field(gt=0)] = 1.0              # max global grad norm (0 would zero every gradient)
    batch_size: Annotated[int, Field(ge=1)] = 128               # samples per micro-batch
    grad_accum: Annotated[int, Field(ge=1)] = 2                 # micro-batches per optimizer step
    max_epochs: Annotated[int, Field(ge=1)] = 100               # hard cap on epochs
    max_steps: Annotated[int | None, Field(ge=1)] = None        # the budget in optimizer steps, equal for every variant (None: epochs)
    steps_per_epoch: Annotated[int | None, Field(ge=1)] = None  # cap on optimizer steps per epoch (None: one train pass)
    patience: Annotated[int, Field(ge=1)] = 10                  # early stopping: epochs without a val CRPS improvement
    min_improvement: Annotated[float, Field(ge=0, lt=1)] = 1e-4  # relative val CRPS drop that counts as an improvement
    keep_checkpoints: Annotated[int, Field(ge=1)] = 3           # best-k checkpoints kept on disk
    checkpoint_every: Annotated[int, Field(ge=0)] = 0           # also checkpoint every N optimizer steps (0: epoch ends only)
    amp: str = "auto"                                           # "auto": bf16 autocast on CUDA, fp32 on CPU; "off"
    time_budget_s: Annotated[float | None, Field(gt=0)] = None  # a guard, not a budget: a trial it stops is truncated
    num_threads: Annotated[int | None, Field(ge=1)] = None      # torch intra-op threads (None: leave as the runner set it)
    eval_batch_size: Annotated[int, Field(ge=1)] = 512          # samples per batch when scoring val/test
    max_eval_samples: Annotated[int | None, Field(ge=1)] = None  # val on an evenly spaced subset while training (None: all)
    compile: bool | Literal["auto"] = "auto"  # torch.compile the training step; auto: on CUDA only (docs/model.md §11)
    eval_every: Annotated[int, Field(ge=0)] = 0                 # also score val every N optimizer steps (0: epoch ends only)
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.0        # Polyak average of the weights, scored and kept (0: off)

    def __post_init__(self):
        checks = [
            (self.lr > 0, f"train.lr ({self.lr}) must be > 0"),
            (self.batch_size >= 1, f"train.batch_size ({self.batch_size}) must be >= 1"),
            (self.grad_accum >= 1, f"train.grad_accum ({self.grad_accum}) must be >= 1"),
            (self.max_epochs >= 1, f"train.max_epochs ({self.max_epochs}) must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, f"train.max_steps ({self.max_steps}) must be >= 1 or null"),
            (self.keep_checkpoints >= 1, f"train.keep_checkpoints ({self.keep_checkpoints}) must be >= 1"),
            (self.amp in ("auto", "off"), f"train.amp ({self.amp!r}) must be 'auto' or 'off'"),
            (self.lr_min < self.lr, f"train.lr_min ({self.lr_min}) must be below train.lr ({self.lr})"),
            (self.time_budget_s is None or self.time_budget_s > 0,
             f"train.time_budget_s ({self.time_budget_s}) must be > 0 or null (no budget)"),
        ]
        for ok, message in checks:
            if not ok:
                raise SpecError(message)


def batches(dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, subset=None,
            pin_memory: bool = False):
    """(x, mask, temporal, y, scale, vol) torch batches of a windows.WindowDataset; order depends only on (seed, epoch)."""

    if subset is not None:
        dataset = dataset.subset(subset)
    # Reused buffers: every consumer here is done with a batch before it draws the next one.
    loader = WindowLoader.from_dataset(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed,
                                       pin_memory=pin_memory, reuse_buffers=True)
    loader.set_epoch(epoch)
    for b in loader:
        yield b["x"], b["mask"], b["temporal"], b["y"], b["scale"], b["vol"]


class Tracker(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...


@dataclass
class TrainResult:
    best_epoch: int
    best_val_crps: float
    epochs: int
    steps: int
    stopped: str                            # STOP_REASONS
    train_seconds: float                    # wall time inside the training loop (excl. final scoring)
    checkpoint: str                         # path of the best checkpoint
    history: list[dict[str, float]] = field(default_factory=list)  # metrics of every val scoring, with its step
    best_step: int = -1                     # optimizer step of the best checkpoint

    @property
    def truncated(self) -> bool:
        """Stopped by the wall-clock guard before its step budget: not comparable with its peers."""
        return self.stopped == TRUNCATED


# Why a trial stopped. Only the wall-clock guard truncates: the others end the same on any machine.
TRUNCATED = "time_budget"
STOP_REASONS = ("max_steps", "max_epochs", "early_stopping", "nonfinite", TRUNCATED)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of cfg.lr at optimizer step `step`: linear warmup, then cosine warm restarts."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = step - cfg.warmup_steps
    period = max(1, cfg.restart_epochs * steps_per_epoch)
    start = 0                               # first step (after warmup) of the current period
    while t >= period:                      # SGDR: T_i = T_0 * T_mult^i
        t -= period
        start += period
        period *= max(1, cfg.restart_mult)
    if cfg.max_steps:
        # The budget ends the period it falls in: the rate anneals to lr_min at max_steps instead of
        # stopping near its peak (on the demo, a 30-epoch period against a 7-epoch budget did).
        period = min(period, max(1, cfg.max_steps - cfg.warmup_steps - start))
    floor = cfg.lr_min / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / period))


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """The RNG states as tensors and plain values: numpy's key array becomes a list of ints, so the
    checkpoint loads with weights_only=True (a numpy array would need pickle)."""
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    import torch

    # .cpu(): the checkpoint is loaded with map_location=device, and RNG states must be CPU byte tensors.
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


LATEST_KEYS = ("model", "optimizer", "state", "rng", "model_cfg", "train_cfg")   # what latest.pt holds
BEST_KEYS = ("model", "model_cfg")                                                # ... and best-epochNNNN.pt
# How torch's weights-only unpickler names a Python object it refuses to build (a class, os.system, ...)
_UNSAFE_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)")


def load_checkpoint(path, device="cpu", keys: Sequence[str] = BEST_KEYS) -> dict[str, Any]:
    """A checkpoint train() wrote, loaded with `torch.load(weights_only=True)`: tensors and plain
    values only, so no code in the file runs. DataError (one line, naming the file) when it is
    missing, truncated or garbled, holds pickled objects (a crafted file, or one an nqexp before
    weights-only checkpoints wrote), or lacks one of `keys`."""
    import torch

    path = Path(path)
    fix = "delete the trial's checkpoints to train it from the start"
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist; was the trial trained?")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = " ".join(str(exc).split())
        found = _UNSAFE_GLOBAL.search(text)
        if found is None:
            reason = _UNPICKLER_ERROR.search(text)
            raise DataError(f"checkpoint {path} cannot be read (truncated or garbled: "
                            f"{reason.group(1) if reason else _first_sentence(exc)}); {fix}") from None
        raise DataError(f"checkpoint {path} holds pickled Python objects ({found.group(1)}), which nqexp never "
                        f"loads (loading a pickle can run arbitrary code); an nqexp before weights-only checkpoints "
                        f"wrote it, or it was crafted: {fix}") from None
    except Exception as exc:  # torch reports a torn or garbled file as RuntimeError, EOFError, KeyError, ...
        raise DataError(f"checkpoint {path} cannot be read (truncated or garbled: "
                        f"{type(exc).__name__}: {_first_sentence(exc)}); {fix}") from None
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise DataError(f"checkpoint {path} is not a checkpoint nqexp wrote (it lacks {', '.join(missing)}); {fix}")
    return ckpt


def _first_sentence(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[:limit] + "..."


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class Scored:
    """Model quantiles for one split, in the original return scale."""

    q: np.ndarray   # (n, H, Q)
    y: np.ndarray   # (n, H)
    ts: np.ndarray  # (n,)


def predict(model, data, batch_size: int, device, subset: np.ndarray | None = None) -> Scored:
    """Quantiles for every sample of a split (or `subset` of its indices), in sample order."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        cuda = torch.device(device).type == "cuda"
        for x, mask, temporal, _y, scale, vol in batches(data, batch_size, shuffle=False, subset=subset,
                                                          pin_memory=cuda):
            x, mask, temporal, scale, vol = (t.to(device, non_blocking=cuda) for t in (x, mask, temporal, scale, vol))
            fc = model(x, mask, temporal, scale, vol=vol)
            out.append(fc.q.float().cpu().numpy())              # (b, H, Q)
    idx = np.arange(len(data)) if subset is None else subset
    return Scored(q=np.concatenate(out, axis=0), y=data.y[idx], ts=data.ts[idx])


def crps_by_horizon(scored: Scored, taus) -> np.ndarray:
    """Mean CRPS per horizon over samples with a finite target: (H,)."""

    H = scored.y.shape[1]
    out = np.empty(H)
    for h in range(H):
        ok = np.isfinite(scored.y[:, h])
        out[h] = crps_quantile(scored.y[ok, h], scored.q[ok, h, :], taus).mean()
    return out


def compile_for_training(model, setting: bool | str, device):
    """The module the training step calls: `torch.compile(model)` when `train.compile` is true, or "auto"
    on a CUDA device, else `model` itself (docs/model.md §11). The compiled wrapper shares the parameters,
    so checkpoints and bundles save `model.state_dict()`, without the wrapper's `_orig_mod.` prefixes.
    Scoring (`predict`) stays eager: it runs once per epoch, and eval mode would compile a second graph."""
    import torch

    on = torch.device(device).type == "cuda" if setting == "auto" else bool(setting)
    return torch.compile(model) if on else model


def train(model_cfg, cfg: TrainConfig, data: Mapping, tracker: Tracker, run_dir,
          *, seed: int = 0, horizon_minutes: Sequence[int], device: str | None = None,
          resume: bool = True, on_epoch=None) -> TrainResult:
    """Train on data['train'], early-stop on data['val'] CRPS; checkpoints go to run_dir.

    `data` maps split name -> windows.WindowDataset (plain numpy, as built once by the driver).

    Resumes from run_dir/latest.pt when it exists (and `resume`). `on_epoch(epoch, metrics)` is
    called after each epoch (the Tune trainable reports from there).
    """
    import torch

    # lazy: imports torch
    from nqexp.model.net import build_model, model_loss

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    use_bf16 = cfg.amp == "auto" and cuda and torch.cuda.is_bf16_supported()
    seed_everything(seed)

    model = build_model(model_cfg).to(device)
    step_model = compile_for_training(model, cfg.compile, device)  # checkpoints keep saving `model`
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(cfg.beta1, cfg.beta2))
    train_data, val_data = data["train"], data["val"]
    micro_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    steps_per_epoch = max(1, micro_per_epoch // cfg.grad_accum)
    if cfg.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.steps_per_epoch)
    micro_per_epoch = steps_per_epoch * cfg.grad_accum
    val_subset = None
    if cfg.max_eval_samples and len(val_data) > cfg.max_eval_samples:
        val_subset = np.linspace(0, len(val_data) - 1, cfg.max_eval_samples).round().astype(np.int64)
    taus = tuple(model_cfg.quantiles) if model_cfg.head == "quantile" else (0.5,)
    labels = [horizon_label(m) for m in horizon_minutes]

    state = {"epoch": 0, "micro": 0, "step": 0, "best": math.inf, "best_epoch": -1, "best_step": -1,
             "bad_epochs": 0, "best_ckpts": [], "history": [], "train_seconds": 0.0, "stopped": None}
    latest = run_dir / "latest.pt"
    if resume and latest.exists():
        ckpt = load_checkpoint(latest, device, LATEST_KEYS)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            state = dict(ckpt["state"])
            _set_rng_state(ckpt["rng"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"checkpoint {latest} does not fit this trial ({_first_sentence(exc, 200)}); "
                            f"delete the trial's checkpoints to train it from the start") from None
        log.info("resumed from %s at epoch %d, micro-batch %d, step %d", latest, state["epoch"],
                 state["micro"], state["step"])

    def save_latest():
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                     "rng": _rng_state(), "model_cfg": asdict(model_cfg), "train_cfg": asdict(cfg)}, latest)

    # EMA of the weights (ema_decay > 0): a shadow copy that is scored and checkpointed.
    ema = [p.detach().clone() for p in model.parameters()] if cfg.ema_decay > 0 else None
    if ema is not None and state.get("ema") is not None:
        for e, saved in zip(ema, state["ema"]):
            e.copy_(saved)
    eval_model = copy.deepcopy(model) if ema is not None else model

    def update_ema():
        # Warm start: the average's decay grows with the step, so early weights do not dominate it.
        d = min(cfg.ema_decay, (1 + state["step"]) / (10 + state["step"]))
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1.0 - d)

    def scored_model():
        if ema is None:
            return model
        for target, e in zip(eval_model.parameters(), ema):
            target.data.copy_(e)
        for target, b in zip(eval_model.buffers(), model.buffers()):
            target.data.copy_(b)
        return eval_model

    def evaluate(epoch: int, losses: list[float]) -> dict[str, float]:
        """Score val, early-stopping bookkeeping and best-k checkpoints at the current step."""
        scoring = scored_model()
        scored = predict(scoring, val_data, cfg.eval_batch_size, device, subset=val_subset)
        crps_h = crps_by_horizon(scored, taus)
        val_crps = float(np.mean(crps_h))
        metrics = {"epoch": epoch + 1, "train/loss_epoch": float(np.mean(losses)) if losses else float("nan"),
                   "val/crps": val_crps, **{f"val/crps_{lab}": float(c) for lab, c in zip(labels, crps_h)}}
        tracker.log(metrics, step=state["step"])
        state["history"].append({**metrics, "step": state["step"]})
        state["last_eval_step"] = state["step"]
        if not np.isfinite(val_crps):
            state["stopped"] = "nonfinite"
        elif val_crps < state["best"] * (1 - cfg.min_improvement):
            state["best"], state["best_epoch"], state["bad_epochs"] = val_crps, epoch + 1, 0
            state["best_step"] = state["step"]
            path = run_dir / f"best-epoch{epoch + 1:04d}-step{state['step']:07d}.pt"
            atomic_save({"model": scoring.state_dict(), "model_cfg": asdict(model_cfg), "epoch": epoch + 1,
                         "step": state["step"], "val_crps": val_crps}, path)
            state["best_ckpts"] = sorted(state["best_ckpts"] + [(val_crps, str(path))])
            for _, old in state["best_ckpts"][cfg.keep_checkpoints:]:
                Path(old).unlink(missing_ok=True)
            state["best_ckpts"] = state["best_ckpts"][: cfg.keep_checkpoints]
        else:
            state["bad_epochs"] += 1  # evaluations without an improvement (epochs when eval_every is 0)
            if state["bad_epochs"] >= cfg.patience and state["stopped"] is None:
                state["stopped"] = "early_stopping"
        model.train()
        return metrics

    def save_state():
        if ema is not None:
            state["ema"] = [e.clone() for e in ema]
        save_latest()

    t_start = time.perf_counter() - state["train_seconds"]
    while state["stopped"] is None and state["epoch"] < cfg.max_epochs:
        epoch = state["epoch"]
        model.train()
        losses = []
        # Pinned host batches on CUDA: the host-to-device copy overlaps the previous step's kernels.
        stream = batches(train_data, cfg.batch_size, shuffle=True, seed=seed, epoch=epoch, pin_memory=cuda)
        for micro, (x, mask, temporal, y, scale, vol) in enumerate(stream):
            if micro >= micro_per_epoch:
                break
            if micro < state["micro"]:          # resumed mid-epoch: these were already done
                continue
            x, mask, temporal, y, scale, vol = (t.to(device, non_blocking=cuda)
                                                for t in (x, mask, temporal, y, scale, vol))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                fc = step_model(x, mask, temporal, scale, y, vol=vol)
            loss = model_loss(fc, y, scale, model_cfg)           # fp32 inside
            (loss / cfg.grad_accum).backward()
            losses.append(float(loss.detach()))
            state["micro"] = micro + 1
            if state["micro"] % cfg.grad_accum == 0:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(state["step"], cfg, steps_per_epoch)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                if ema is not None:
                    update_ema()
                tracker.log({"train/loss": float(np.mean(losses[-cfg.grad_accum:])),
                             "train/lr": optimizer.param_groups[0]["lr"],
                             "train/grad_norm": float(grad_norm)}, step=state["step"])
                if cfg.max_steps and state["step"] >= cfg.max_steps:   # the budget: scored right below
                    state["stopped"] = "max_steps"
                    break
                if cfg.eval_every and state["step"] % cfg.eval_every == 0:
                    evaluate(epoch, losses)
                    state["train_seconds"] = time.perf_counter() - t_start
                    save_state()
                    if state["stopped"] is not None:
                        break
                if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                    state["train_seconds"] = time.perf_counter() - t_start
                    save_state()
            if cfg.time_budget_s and time.perf_counter() - t_start > cfg.time_budget_s:
                state["stopped"] = TRUNCATED
                break

        # Epoch end (or the budget's last step): score val, early stopping, best-k checkpoints.
        if state.get("last_eval_step") != state["step"] or not state["history"]:
            metrics = evaluate(epoch, losses)
        else:  # scored at this very step by eval_every
            metrics = {k: v for k, v in state["history"][-1].items() if k != "step"}
        state["epoch"] = epoch + 1
        state["micro"] = 0
        if state["stopped"] is None and state["epoch"] >= cfg.max_epochs:
            state["stopped"] = "max_epochs"
        state["train_seconds"] = time.perf_counter() - t_start
        save_state()
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)

    best_path = state["best_ckpts"][0][1] if state["best_ckpts"] else str(latest)
    return TrainResult(best_epoch=state["best_epoch"], best_val_crps=state["best"], epochs=state["epoch"],
                       steps=state["step"], stopped=state["stopped"] or "max_epochs",
                       train_seconds=state["train_seconds"], checkpoint=best_path, history=state["history"],
                       best_step=int(state.get("best_step", -1)))


def load_checkpoint_model(path, device: str = "cpu"):
    """Rebuild the model stored in a checkpoint (best-*.pt or latest.pt)."""
    # lazy: imports torch
    from nqexp.model.net import build_model, model_config_from_saved

    ckpt = load_checkpoint(path, device, BEST_KEYS)
    try:
        cfg = model_config_from_saved(ckpt["model_cfg"])
        model = build_model(cfg).to(device)
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, ValueError, SpecError) as exc:
        raise DataError(f"checkpoint {path}: its weights do not fit its model config ({_first_sentence(exc, 200)}); "
                        f"delete the trial's checkpoints to train it from the start") from None
    model.eval()
    return model, cfg
