"""Training: train(config, data, tracker) -> TrainResult. Knows nothing of Ray, click or YAML."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (DESIGN §7). Defaults are seed 001's; YAML states only what differs."""

    lr: float = 1e-4                       # AdamW peak learning rate
    weight_decay: float = 0.01             # AdamW decoupled weight decay
    beta1: float = 0.9                     # AdamW beta1
    beta2: float = 0.999                   # AdamW beta2
    warmup_steps: int = 1000               # linear warmup (optimizer steps), then cosine with warm restarts
    restart_epochs: int = 10               # cosine warm-restart period T_0, in epochs
    restart_mult: int = 2                  # T_mult: each restart period is this many times longer
    lr_min: float = 1e-6                   # cosine floor eta_min
    grad_clip: float = 1.0                 # max global grad norm
    batch_size: int = 128                  # samples per micro-batch
    grad_accum: int = 2                    # micro-batches per optimizer step
    max_epochs: int = 100                  # hard cap on epochs
    steps_per_epoch: int | None = None     # cap on optimizer steps per epoch (None: one pass over train)
    patience: int = 10                     # early stopping: epochs without a val CRPS improvement
    keep_checkpoints: int = 3              # best-k checkpoints kept on disk
    horizon_weighting: str = "log"         # "log": w_h ∝ 1/ln(h+1) (seed 000); "uniform"
    crossing_penalty: float = 0.1          # only applied when the head can cross (ours cannot)
    amp: str = "auto"                      # "auto": bf16 autocast on CUDA, fp32 on CPU; "off"
    time_budget_s: float | None = None     # stop after this much training wall time (CPU budgets)
    num_threads: int | None = None         # torch intra-op threads (None: leave as the runner set it)
    eval_batch_size: int = 512             # samples per batch when scoring val/test
