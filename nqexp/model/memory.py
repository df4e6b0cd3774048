"""Peak memory of a training step, counted analytically (docs/clusters.md §8).

    est = estimate_memory(model_cfg, batch_size=32, t_max=6900, amp=True, device="cuda")
    est.train_peak, est.eval_peak, est.peak          # bytes

Nothing here runs the model: parameters are counted from the config (`parameter_count`, checked against
`count_parameters(build_model(cfg))` by tests/test_memory.py), and activations from a list of the tensors
each block keeps for backward, read off net.py's forward code:

- A token tensor of the temporal stack holds E = B * N * S * D elements (B micro-batch, N tokens per step,
  S = ceil(t_max / patch_len) steps, D = d_model); an MLP hidden tensor Ef = B * N * S * d_ff.
- The residual stream and LayerNorm run in fp32 even under bf16 autocast (4 bytes); matmul inputs and
  outputs, GELU, sigmoid, tanh run in the autocast dtype (2 bytes under bf16, else 4). A linear keeps its
  input in that dtype, so under bf16 it keeps a bf16 copy of an fp32 input.
- Attention goes through F.scaled_dot_product_attention, whose fused kernels (memory-efficient or cuDNN
  attention on CUDA with the boolean key mask, flash attention on CPU) keep q, k, v, the output and one
  fp32 log-sum-exp per query: O(S), no S x S score matrix. The math kernel stores the B * nh * S^2 scores,
  their softmax and a dropout mask; it runs on CPU when attn_dropout > 0, and on CUDA when the head size is
  not a multiple of 8, and the count follows it there.
- Dropout keeps its mask: one byte (bool) on CUDA; on CPU a noise tensor in the input's dtype.
- Activation checkpointing (model.activation_checkpointing) keeps each block's input only; the backward
  recomputes one block at a time, so the peak holds L block inputs plus one block's full set.
- Under bf16 autocast the bf16 copies of the weights are cached for the step (2 bytes per parameter).
- AdamW keeps two fp32 moments per parameter; gradients are fp32. Both are counted in full during the
  forward and backward (with gradient accumulation the gradients of earlier micro-batches are there).
- Workspace: the transient tensors at the backward peak (gradients in flight through one block's MLP or
  attention), beyond what is saved.
- Scoring val/test (`train.predict`) runs in fp32 without autocast or gradients at train.eval_batch_size:
  its peak is the parameters plus the live tensors of one block's forward.

Not counted: the CUDA context and library workspaces (cuBLAS, cuDNN), and the caching allocator's
fragmentation; `USABLE_FRACTION` leaves room for them. torch.compile usually keeps fewer activations
(it recomputes cheap pointwise ops in backward), so the eager count is the upper one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nqexp.model.volatility import n_vol_inputs

if TYPE_CHECKING:  # only for hints: this module is arithmetic and imports no torch
    from nqexp.model.net import ModelConfig

GiB = 2**30
# Share of a GPU's memory that tensors may plan to use: the rest is the CUDA context (about 0.5 GiB),
# cuBLAS/cuDNN workspaces and the caching allocator's fragmentation (docs/clusters.md §8).
USABLE_FRACTION = 0.9
# The activation estimate is checked against measured peaks within this relative tolerance
# (tests/test_memory.py: CPU peak RSS in a fresh process; on CUDA, torch.cuda.max_memory_allocated).
TOLERANCE = 0.35


# ----------------------------------------------------------------------------- parameters


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _gate(kind: str, D: int) -> int:
    return {"none": 0, "sigmoid": _linear(D, D), "gru": _linear(D, 2 * D) + 2 * _linear(D, D, bias=False)}[kind]


def _attention(D: int) -> int:
    return _linear(D, 3 * D) + _linear(D, D)


def _mlp(D: int, F: int) -> int:
    return _linear(D, F) + _linear(F, D)


def parameter_count(cfg: ModelConfig) -> int:
    """Trainable parameters of build_model(cfg), counted from the config (no model is built)."""
    D, F, V, p, N = cfg.d_model, cfg.d_ff, cfg.n_vars, cfg.patch_len, cfg.n_tokens
    G, H, Q = len(cfg.groups), len(cfg.horizons), cfg.n_outputs
    # Input encoder: embedding, positional encodings (day-of-week table, two Time2Vec), merge.
    if cfg.embedding == "flat":
        n = _linear(p * V, D)
        n_embedded = 1
    elif cfg.arch == "migt_tvdt":
        n, n_embedded = V * p * D + V * D, V
    else:
        n, n_embedded = sum(_linear(p * g, D) for g in cfg.groups), G
    n += 7 * D + (2 * _linear(1, D) if cfg.calendar_encoding else 0)
    if cfg.attention == "temporal" and n_embedded > 1:
        n += _linear(n_embedded * D, D)
    layer_norm = 2 * D

    def temporal_block(gate: str) -> int:
        return 2 * layer_norm + _attention(D) + _gate(gate, D) + _mlp(D, F)

    if cfg.arch == "migt_tvdt":
        n += cfg.n_temporal_layers * temporal_block("none") + layer_norm + D  # blocks, ln_t, pooling query
        n_var = cfg.n_variable_layers if (N > 1 and cfg.variable_attention == "full") else 0
        n += n_var * (_attention(D) + _gate(cfg.gate, D) + 2 * layer_norm + _mlp(D, F))
        n += _linear(N * D, D)  # proj
    else:
        cross = N > 1 and cfg.variable_attention == "full"
        per_block = temporal_block(cfg.gate) + ((layer_norm + _attention(D) + _gate(cfg.gate, D)) if cross else 0)
        n += cfg.n_temporal_layers * per_block + layer_norm  # blocks, ln_f
    if cfg.recent_bars:
        n += _linear(cfg.recent_bars * V, D) + _linear(D, D)
    if cfg.vol_inputs:
        n += _linear(n_vol_inputs(H), D) + _linear(n_vol_inputs(H), H)  # VolCorrection: context, gain
    n += layer_norm  # ln_ctx
    if cfg.horizon_mode == "autoregressive":
        n += D + _linear(Q, D) + H * _linear(D, Q)
    else:
        n += _linear(D, H * Q)
    return n


# ----------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step's peak, by part (docs/clusters.md §8)."""

    n_params: int
    params: int                    # fp32 parameters
    grads: int                     # fp32 gradients
    optimizer: int                 # AdamW exp_avg and exp_avg_sq, fp32
    activations: int               # kept for backward by one micro-batch (bf16 weight copies included)
    activations_checkpointed: int  # the same with activation checkpointing per temporal block
    workspace: int                 # transient tensors at the backward peak
    eval_peak: int                 # scoring val/test at train.eval_batch_size (fp32, no grad)
    checkpointing: bool            # which activation figure train_peak uses
    amp: bool                      # bf16 autocast
    device: str                    # "cuda" or "cpu": which attention kernel and dropout mask are counted

    @property
    def state(self) -> int:
        """Parameters, gradients and optimizer state: what does not scale with the micro-batch."""
        return self.params + self.grads + self.optimizer

    def activation_bytes(self, checkpointing: bool | None = None) -> int:
        on = self.checkpointing if checkpointing is None else checkpointing
        return self.activations_checkpointed if on else self.activations

    def train_peak_with(self, checkpointing: bool) -> int:
        return self.state + self.activation_bytes(checkpointing) + self.workspace

    @property
    def train_peak(self) -> int:
        """Forward and backward of one micro-batch with the optimizer state present."""
        return self.train_peak_with(self.checkpointing)

    @property
    def step_peak(self) -> int:
        """optimizer.step(): activations are gone; foreach AdamW adds one fp32 temporary per parameter."""
        return self.state + self.params

    @property
    def peak(self) -> int:
        return max(self.train_peak, self.step_peak, self.eval_peak)


def estimate_memory(cfg: ModelConfig, *, batch_size: int, t_max: int, amp: bool, device: str = "cuda",
                    checkpointing: bool | None = None, eval_batch_size: int | None = None) -> MemoryEstimate:
    """Peak memory of training `cfg` on micro-batches of `batch_size` windows of `t_max` bars.

    amp: bf16 autocast (train.amp "auto" on a CUDA device with bf16); device: "cuda" or "cpu" (the
    attention kernel and dropout masks differ, see the module docstring); checkpointing: None = the
    config's `activation_checkpointing`; eval_batch_size: None = batch_size.
    """
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', not {device!r}")
    ckpt = cfg.activation_checkpointing if checkpointing is None else checkpointing
    n_params = parameter_count(cfg)
    saved, block = _saved_bytes(cfg, batch_size, t_max, amp=amp, device=device)
    weight_cache = 2 * n_params if amp else 0
    inputs = cfg.n_temporal_layers * 4 * _token_elems(cfg, batch_size, t_max)  # fp32 block inputs
    full = saved["encoder"] + saved["tail"] + cfg.n_temporal_layers * block + weight_cache
    checkpointed = saved["encoder"] + saved["tail"] + inputs + block + weight_cache
    return MemoryEstimate(
        n_params=n_params, params=4 * n_params, grads=4 * n_params, optimizer=8 * n_params,
        activations=full, activations_checkpointed=checkpointed,
        workspace=_workspace(cfg, batch_size, t_max, amp=amp),
        eval_peak=4 * n_params + _eval_live_bytes(cfg, eval_batch_size or batch_size, t_max),
        checkpointing=ckpt, amp=amp, device=device)


def _steps(cfg: ModelConfig, t_max: int) -> int:
    return math.ceil(t_max / cfg.patch_len)  # S: tokens per sequence in the temporal stack


def _token_elems(cfg: ModelConfig, B: int, t_max: int) -> int:
    return B * cfg.n_tokens * _steps(cfg, t_max) * cfg.d_model  # E


def _fused_attention(cfg: ModelConfig, device: str) -> bool:
    if device == "cpu":
        return cfg.attn_dropout == 0  # CPU flash attention takes no dropout
    return (cfg.d_model // cfg.n_heads) % 8 == 0  # CUDA's fused kernels want aligned head sizes


def _saved_bytes(cfg: ModelConfig, B: int, t_max: int, *, amp: bool, device: str) -> tuple[dict[str, int], int]:
    """Bytes kept for backward: ({"encoder", "tail"}, one block of the temporal stack)."""
    S, D, N = _steps(cfg, t_max), cfg.d_model, cfg.n_tokens
    E = _token_elems(cfg, B, t_max)
    Ef = E // D * cfg.d_ff
    res, act = 4, (2 if amp else 4)  # fp32 residual stream and LayerNorm; the autocast dtype
    drop = cfg.dropout > 0

    def mask(dtype_bytes: int) -> int:  # a dropout mask over E elements
        return E * (1 if device == "cuda" else dtype_bytes) if drop else 0

    def attention(seq: int, n_seq: int) -> int:
        """SDPA over n_seq sequences of seq tokens (E elements in all), its output projection and dropout."""
        nbytes = 3 * E * act + E * act + 4 * n_seq * cfg.n_heads * seq  # q, k, v; output; log-sum-exp
        if not _fused_attention(cfg, device):  # math kernel: scores, softmax, dropout mask, scaled q and k
            scores = n_seq * cfg.n_heads * seq * seq
            nbytes += 3 * scores * act + 2 * E * act
        return nbytes + mask(act)

    def gate(kind: str) -> int:
        """Tensors the residual gate adds beyond its inputs (the stream x and the branch output y)."""
        cast = E * act if (amp and kind != "none") else 0  # W x under autocast keeps a bf16 copy of x
        if kind == "none":
            return 0
        if kind == "sigmoid":
            return cast + 2 * E * act  # sigmoid(W x), and y for the product
        return cast + 5 * E * act  # y, z, z * y, h, h - x

    def temporal_block(kind: str) -> int:
        return (E * res + E * act                      # block input (LayerNorm), LayerNorm output (qkv input)
                + attention(S, B * N) + gate(kind)
                + E * res + E * act                    # gated stream (second LayerNorm), its output (fc input)
                + 2 * Ef * act + mask(act))            # fc output (GELU input), GELU output; MLP dropout

    if cfg.arch == "migt_tvdt":
        block = temporal_block("none")
        # ln_t keeps the last block's output; the pooling's two matmuls keep its output (two bf16 copies under AMP).
        tail = E * res + E * act * (2 if amp else 1)
    else:
        block = temporal_block(cfg.gate)
        if N > 1 and cfg.variable_attention == "full":
            # Group attention at each step: the (B*S, N, D) copy of the stream, LayerNorm output, SDPA over N tokens.
            block += E * res + E * act + attention(N, B * S) + gate(cfg.gate)
        tail = 0  # the last valid step is picked by index: only the indices are kept
    # Encoder: its dropout mask (on CPU, an fp32 noise tensor), the merge's input, RevIN's few (B, T, V)
    # tensors, and the sines of the two Time2Vec encodings (B, S, D).
    encoder = mask(res)
    if cfg.attention == "temporal" and N == 1 and cfg.embedding != "flat":
        n_embedded = cfg.n_vars if cfg.arch == "migt_tvdt" else len(cfg.groups)
        encoder += n_embedded * E * act
    encoder += 8 * B * t_max * cfg.n_vars * 4 + (2 * B * S * D * act if cfg.calendar_encoding else 0)
    return {"encoder": encoder, "tail": tail}, block


def _workspace(cfg: ModelConfig, B: int, t_max: int, *, amp: bool) -> int:
    """Transient bytes at the backward peak: the gradient of the stream and of a branch input (fp32), plus
    the larger of the MLP's two hidden gradients and attention's q, k, v gradients (autocast dtype)."""
    E = _token_elems(cfg, B, t_max)
    act = 2 if amp else 4
    return 2 * E * 4 + max(2 * E // cfg.d_model * cfg.d_ff, 3 * E) * act


def _eval_live_bytes(cfg: ModelConfig, B: int, t_max: int) -> int:
    """Live tensors of one block's forward without gradients, in fp32: the stack's input, the block input and
    stream and a branch output, plus the larger of the MLP's hidden pair and attention's q, k, v, output and
    projection (measured on CPU at 9 to 12 token tensors, tests/test_memory.py)."""
    E = _token_elems(cfg, B, t_max)
    return 4 * (4 * E + max(2 * E // cfg.d_model * cfg.d_ff, 5 * E))


# ----------------------------------------------------------------------------- fitting


def usable_bytes(gpu_memory_gib: float, gpus_per_trial: float = 1.0) -> int:
    """What a trial may plan to use of a GPU of `gpu_memory_gib` (a fractional trial gets its share)."""
    return int(gpu_memory_gib * GiB * min(1.0, gpus_per_trial) * USABLE_FRACTION)


@dataclass(frozen=True)
class Fit:
    """A setting whose training peak fits: checkpointing, micro-batch and accumulation, t_max."""

    checkpointing: bool
    batch_size: int
    grad_accum: int
    t_max: int
    peak: int

    def sets(self, cfg: ModelConfig, batch_size: int, t_max: int) -> list[str]:
        """The --set overrides that turn the trial into this fit."""
        out = []
        if self.checkpointing != cfg.activation_checkpointing:
            out.append(f"model.activation_checkpointing={'true' if self.checkpointing else 'false'}")
        if self.batch_size != batch_size:
            out += [f"train.batch_size={self.batch_size}", f"train.grad_accum={self.grad_accum}"]
        if self.t_max != t_max:
            out.append(f"windows.t_max={self.t_max}")
        return out


def fit_memory(cfg: ModelConfig, *, batch_size: int, grad_accum: int, t_max: int, amp: bool, budget: int,
               device: str = "cuda") -> list[Fit]:
    """Settings whose training peak fits `budget`, the effective batch (batch_size x grad_accum) unchanged:
    the largest micro-batch that fits without activation checkpointing, and with it; when neither fits at
    micro-batch 1, the largest t_max that does (checkpointing on, micro-batch 1). [] when nothing fits."""
    effective = batch_size * grad_accum
    micro = [b for b in range(batch_size, 0, -1) if effective % b == 0]

    def peak(ckpt: bool, b: int, t: int) -> int:
        est = estimate_memory(cfg, batch_size=b, t_max=t, amp=amp, device=device, checkpointing=ckpt)
        return max(est.train_peak, est.step_peak)

    fits = []
    for ckpt in (False, True):
        for b in micro:  # largest first; peaks grow with b
            if (p := peak(ckpt, b, t_max)) <= budget:
                fits.append(Fit(ckpt, b, effective // b, t_max, p))
                break
    if fits:
        return fits
    lo, hi = 0, t_max  # the largest t in [1, t_max) that fits at micro-batch 1 with checkpointing
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak(True, 1, mid) <= budget else (lo, mid)
    return [Fit(True, 1, effective, lo, peak(True, 1, lo))] if lo else []


def largest_eval_batch(cfg: ModelConfig, *, t_max: int, budget: int) -> int:
    """The largest eval batch whose scoring peak fits `budget` (0 when even one window does not)."""
    per_window = _eval_live_bytes(cfg, 1, t_max)
    return max(0, (budget - 4 * parameter_count(cfg)) // per_window)
