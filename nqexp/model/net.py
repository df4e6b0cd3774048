"""Distributional Transformer for multi-horizon quantile forecasts of NQ returns.

Two architectures share one input encoder and one quantile head:

- **MIGT-TVDT** (MIGT-TVDT design, the default): RevIN -> per-variable embedding -> composite positional
  encodings -> temporal attention per variable (masked) -> attention pooling over time ->
  variable attention with gated instance norm (Lite Gate Unit) -> flatten, project -> horizon heads.
- **Grok-SL** (Grok-SL design): RevIN -> feature *groups* projected into tokens -> composite positional
  encodings -> blocks of (temporal attention, group attention, each with a gated residual, FFN) ->
  last valid step, mean over groups -> autoregressive horizon heads with teacher forcing.

Papers followed: RevIN (Kim et al., 2022) for per-window normalization; Time2Vec (Kazemi et al., 2019);
the two-stage time/variable attention of Crossformer (Zhang & Yan, 2023); GTrXL's GRU gate
(Parisotto et al., 2020) for the "GRU-lite" gate; non-crossing quantiles as a base plus cumulative
softplus gaps (as in e.g. Park et al., 2022).

Numerics (why an earlier implementation collapsed, and what this file does instead):
- The model predicts quantiles z in the O(1) space y / scale, where `scale` (B, H) is a causal
  volatility estimate made by windows.py. Quantiles in the original return scale are
  q = scale[..., None] * z. The map z -> scale * z is strictly increasing because scale > 0, so the
  quantile order of z survives de-normalization (scale is clamped at 1e-12, so a broken zero or
  negative scale gives a collapsed forecast that the sanity gates catch, never a reversed one).
- z is a base value (the quantile nearest tau = 0.5) plus cumulative gaps
  gap_j = width_floor + softplus(raw_j + offset_j) > 0 on each side, so quantiles never cross.
  offset_j is chosen so that at initialization the gaps equal `init_width` times the standard-normal
  quantile gaps (y / scale is about N(0, 1)); the output layer starts small, so the first forecast is
  close to N(0, 1) in z, not a point.
- The head and the loss run in fp32 even under autocast.

Deliberate deviations from the design documents (docs/model.md §10):
- All four positional encodings are per step (B, T, D) and broadcast over variables. The MIGT-TVDT design (docs/model.md §9) has
  day-of-week as one vector per window; a 24-hour window spans two days, so per step is more exact.
- Tokens are kept as (B, N, T, D) (N = variables or groups) rather than (B, T, V, D), so temporal
  attention reads (B*N, T, D) without a copy; the broadcast of the encodings is the same.
- Attention-weight dropout defaults to 0 (`attn_dropout`): any dropout inside
  F.scaled_dot_product_attention makes PyTorch's CPU path fall back to its slow math kernel.
  Residual and FFN dropout (`dropout`) are kept.
- MIGT's gate equation is unverified; `gate` chooses none | sigmoid (Lite Gate Unit, MIGT-TVDT design:
  out = x + sigmoid(W x + b) * y) | gru (Grok-SL design: z = sigmoid(W_z x + U_z y),
  h = tanh(W_h x + U_h (z * y)), out = (1 - z) x + z h). The default is sigmoid.
- `patch_len` (an addition; default 1 = the designs' one token per bar, docs/model.md §2) lets a token cover p bars, as
  Crossformer's segments do. Per-bar temporal attention at T = 288, V = 24 costs ~52 GFLOP per sample
  (forward), far too much for a CPU quickstart; p = 12 (one hour) cuts the tokens 12-fold.
- With one token per step (flat embedding, or attention="temporal"), there is no variable axis to
  attend over, so the variable (group) stage is skipped.
- `recent_bars` (an addition, docs/model.md): the last k bars of every variable, RevIN'd but not
  patched, go through a small MLP into the context. Patching folds the last hour into one token;
  short-horizon structure (mean reversion over a few bars, a shock that just raised volatility)
  lives in exactly those bars. Its output layer starts near zero, so at initialization the model is
  about the same as without it. `recent_max_horizon` limits which horizons see it (docs/model.md §13):
  the head runs twice, on the context with and without the path, and each horizon takes its own.
- `vol_inputs` (an addition, docs/model.md §12): RevIN removes every level from the window, so the
  network cannot see that volatility is high or low relative to its normaliser sigma-hat. K causal
  log-variance inputs (EWMA at 30 min .. 1 week, realised variance over 1 h, a session, a week, the
  MC-GARCH components, sigma-hat's own level and the profile ahead; windows.py standardises them on
  train) enter the context, and a linear map of them gives a per-horizon correction c of log
  sigma-hat: z is multiplied by exp(c) > 0, so the order of the quantiles is kept. The map starts at
  zero, so the first forecast is exactly the normaliser's.
"""

from __future__ import annotations

import logging
import math
import typing
from dataclasses import dataclass, fields
from typing import Annotated, Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from nqexp.errors import SpecError
from nqexp.model.volatility import n_vol_inputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    # Ranges are declared on the types (Annotated[..., Field(...)]): the spec loader checks them and `nqexp spec
    # schema` shows them; __post_init__ holds the cross-field rules (and repeats a few ranges for direct callers).
    arch: Literal["migt_tvdt", "grok_sl"] = "migt_tvdt"  # seed-001 two-stage model or seed-000 Grok-SL
    n_vars: Annotated[int, Field(ge=1)] = 24  # V: feature channels per bar
    horizons: tuple[Annotated[int, Field(ge=1)], ...] = (3, 6, 12, 24, 48)  # forecast horizons in bars (H of them)
    # tau levels, strictly increasing
    quantiles: tuple[Annotated[float, Field(gt=0, lt=1)], ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
    d_model: Annotated[int, Field(ge=2)] = 256  # D: token width
    n_heads: Annotated[int, Field(ge=1)] = 8  # attention heads; head size = d_model / n_heads
    d_ff: Annotated[int, Field(ge=1)] = 1024  # hidden width of each feed-forward block
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1  # dropout on residual branches and FFNs
    attn_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0  # on attention weights; > 0 forces SDPA's slow math kernel on CPU
    n_temporal_layers: Annotated[int, Field(ge=1)] = 4  # temporal blocks (MIGT) or full blocks (Grok-SL; its design used 8)
    n_variable_layers: Annotated[int, Field(ge=0)] = 2  # variable-attention blocks after pooling (MIGT only)
    embedding: Literal["per_variable", "flat"] = "per_variable"  # one token per variable (group), or one per step
    attention: Literal["two_stage", "temporal"] = "two_stage"  # time then variable stage, or a vanilla temporal Transformer
    instance_norm: bool = True  # RevIN: normalize each window per variable over its valid steps
    gate: Literal["none", "sigmoid", "gru"] = "sigmoid"  # residual gate of the variable (MIGT) or all (Grok) blocks
    head: Literal["quantile", "point"] = "quantile"  # non-crossing quantiles (pinball) or a mean (MSE), Q = 1
    horizon_mode: Literal["independent", "autoregressive"] = "independent"  # AR: each horizon sees the previous one
    variable_attention: Literal["full", "none"] = "full"  # attention across variables (groups), or none
    patch_len: Annotated[int, Field(ge=1)] = 1  # bars per temporal token (Crossformer segments); 1 = a token per bar (docs/model.md §2)
    groups: tuple[Annotated[int, Field(ge=1)], ...] = (4, 4, 4, 4, 4, 4)  # Grok-SL group sizes in column order; sum = n_vars
    width_floor: Annotated[float, Field(ge=0)] = 1e-3  # smallest gap between adjacent quantiles, in units of scale
    init_width: Annotated[float, Field(gt=0)] = 1.0  # initial quantile spread, as a multiple of the standard-normal gaps
    norm_eps: Annotated[float, Field(gt=0)] = 1e-10  # added to RevIN's variance; tiny, as log-return features have std ~1e-3
    horizon_weighting: Literal["uniform", "inv_log"] = "uniform"  # loss weight per horizon; inv_log: 1/ln(h+1)
    calendar_encoding: bool = True  # Time2Vec of day-of-month/-year; off: on short train spans they can identify the date
    # the last k bars at full resolution (RevIN'd, all V), flattened into the context; 0 = off
    recent_bars: Annotated[int, Field(ge=0, le=1024)] = 12
    # the longest horizon (bars) the recent-bars path informs; longer ones forecast without it; 0 = every horizon
    recent_max_horizon: Annotated[int, Field(ge=0)] = 0
    activation_checkpointing: bool = False  # training: recompute each temporal block in backward (docs/model.md §11)
    vol_inputs: bool = True  # volatility inputs in the context and a learned per-horizon log sigma-hat correction (docs/model.md §12)

    def __post_init__(self):
        # YAML gives lists; keep the config hashable and comparable.
        for name in ("horizons", "quantiles", "groups"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        hints = typing.get_type_hints(ModelConfig)
        for f in fields(self):
            allowed = typing.get_args(hints[f.name])
            if typing.get_origin(hints[f.name]) is Literal and getattr(self, f.name) not in allowed:
                raise SpecError(f"model.{f.name} ({getattr(self, f.name)!r}) must be one of {list(allowed)}")
        if self.d_model % self.n_heads != 0:
            raise SpecError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if self.d_model % 2 != 0:
            raise SpecError(f"model.d_model ({self.d_model}) must be even (the time-of-day encoding uses sin/cos pairs)")
        for name in ("n_vars", "d_model", "n_heads", "d_ff", "n_temporal_layers", "patch_len"):
            if getattr(self, name) < 1:
                raise SpecError(f"model.{name} ({getattr(self, name)}) must be at least 1")
        if not 0 <= self.recent_bars <= 1024:
            raise SpecError(f"model.recent_bars ({self.recent_bars}) must be in 0..1024")
        if self.recent_max_horizon < 0:
            raise SpecError(f"model.recent_max_horizon ({self.recent_max_horizon}) must be >= 0 (0 = every horizon)")
        if self.recent_bars and 0 < self.recent_max_horizon < min(self.horizons, default=1):
            raise SpecError(f"model.recent_max_horizon ({self.recent_max_horizon}) is shorter than every horizon "
                            f"({list(self.horizons)}): the recent-bars path would inform none; set model.recent_bars: 0")
        if self.n_variable_layers < 0:
            raise SpecError(f"model.n_variable_layers ({self.n_variable_layers}) must be >= 0")
        if not self.horizons or any(h < 1 for h in self.horizons) or list(self.horizons) != sorted(set(self.horizons)):
            raise SpecError(f"model.horizons ({list(self.horizons)}) must be positive bar counts, strictly increasing")
        taus = list(self.quantiles)
        if not taus or any(not 0 < t < 1 for t in taus) or taus != sorted(set(taus)):
            raise SpecError(f"model.quantiles ({taus}) must be strictly increasing levels in (0, 1)")
        if self.arch == "grok_sl" and sum(self.groups) != self.n_vars:
            raise SpecError(f"model.groups ({list(self.groups)}) must sum to model.n_vars ({self.n_vars})")
        if any(g < 1 for g in self.groups):
            raise SpecError(f"model.groups ({list(self.groups)}) must hold positive group sizes")
        for name in ("dropout", "attn_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise SpecError(f"model.{name} ({getattr(self, name)}) must be in [0, 1)")
        if self.width_floor < 0 or self.init_width <= 0 or self.norm_eps <= 0:
            raise SpecError(
                f"model.width_floor ({self.width_floor}) must be >= 0, model.init_width ({self.init_width}) "
                f"and model.norm_eps ({self.norm_eps}) must be > 0"
            )

    @property
    def n_outputs(self) -> int:
        """Q: outputs per horizon (the quantiles, or 1 for the point head)."""
        return len(self.quantiles) if self.head == "quantile" else 1

    @property
    def n_tokens(self) -> int:
        """N: tokens per step entering the temporal stack."""
        if self.embedding == "flat" or self.attention == "temporal":
            return 1
        return self.n_vars if self.arch == "migt_tvdt" else len(self.groups)


# A config saved in a checkpoint or bundle lacks the fields added after it was written: each gets the
# value that rebuilds the model that was saved, not today's default.
LEGACY_MODEL_DEFAULTS = {"vol_inputs": False, "recent_max_horizon": 0}


def model_config_from_saved(saved) -> ModelConfig:
    """The ModelConfig of a saved model (a checkpoint's or bundle's dict; JSON lists become tuples)."""
    return ModelConfig(**{**LEGACY_MODEL_DEFAULTS,
                          **{k: tuple(v) if isinstance(v, list) else v for k, v in dict(saved).items()}})


class Forecast(NamedTuple):
    z: torch.Tensor  # (B, H, Q) quantiles of y / scale (the point head: Q = 1, the mean)
    q: torch.Tensor  # (B, H, Q) quantiles of y, q = scale[..., None] * z


# ----------------------------------------------------------------------------- inputs


def revin(x: torch.Tensor, mask: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalize each window per variable over its valid steps; padded steps come out as 0.

    Returns (x_norm, loc, scale) with loc, scale of shape (B, 1, V). Only valid steps enter the
    statistics, so values after the last valid step cannot leak in.
    """
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    count = m.sum(1, keepdim=True).clamp_min(1.0)  # (B, 1, 1)
    loc = (x * m).sum(1, keepdim=True) / count  # (B, 1, V)
    var = (((x - loc) * m) ** 2).sum(1, keepdim=True) / count  # (B, 1, V)
    scale = torch.sqrt(var + eps)  # (B, 1, V)
    return (x - loc) / scale * m, loc, scale


class CompositePositionalEncoding(nn.Module):
    """Per-step time encodings (B, T, D): time-of-day sinusoid + day-of-week embedding
    + Time2Vec(day-of-month) + Time2Vec(day-of-year) (the last two only with `calendar`)."""

    def __init__(self, d_model: int, calendar: bool = True):
        super().__init__()
        # Integer harmonics of the day, so minute 1439 sits next to minute 0.
        harmonics = torch.arange(1, d_model // 2 + 1, dtype=torch.float32)
        self.register_buffer("tod_freq", 2 * math.pi * harmonics / 1440.0, persistent=False)  # (D/2,)
        self.dow = nn.Embedding(7, d_model)
        self.dom = Time2Vec(d_model) if calendar else None
        self.doy = Time2Vec(d_model) if calendar else None

    def forward(self, temporal: torch.Tensor) -> torch.Tensor:
        minute, dow, dom, doy = temporal.unbind(-1)  # 4 x (B, T)
        angle = minute.unsqueeze(-1) * self.tod_freq  # (B, T, D/2)
        tod = torch.cat([angle.sin(), angle.cos()], dim=-1)  # (B, T, D)
        day = self.dow(dow.long().clamp(0, 6))  # (B, T, D)
        if self.dom is None:
            return tod + day  # (B, T, D)
        return tod + day + self.dom(dom / 31.0) + self.doy(doy / 366.0)  # (B, T, D)


class Time2Vec(nn.Module):
    """t2v(tau) = [w0 tau + b0, sin(w_i tau + b_i)]: one linear trend plus D-1 learned periodic terms."""

    def __init__(self, d_model: int):
        super().__init__()
        self.freq = nn.Linear(1, d_model)

    def init_special(self):
        # Inputs are scaled to [0, 1]; start with 0..4 cycles per month (year) and random phases.
        nn.init.uniform_(self.freq.weight, 0.0, 8 * math.pi)
        nn.init.uniform_(self.freq.bias, 0.0, 2 * math.pi)

    def forward(self, tau: torch.Tensor) -> torch.Tensor:
        u = self.freq(tau.unsqueeze(-1))  # (B, T, D)
        return torch.cat([u[..., :1], torch.sin(u[..., 1:])], dim=-1)  # (B, T, D)


class InputEncoder(nn.Module):
    """(x, mask, temporal) -> tokens (B, N, S, D) and their mask (B, S).

    RevIN, embedding, positional encodings, then (attention="temporal") a merge of the N tokens of
    each step. With patch_len p > 1 each token covers p consecutive bars (S = ceil(T / p) segments,
    as Crossformer's segment embedding); a segment is valid when its first bar is, and carries that
    bar's time encodings. With p = 1 (the default), S = T.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, V, p = cfg.d_model, cfg.n_vars, cfg.patch_len
        if cfg.embedding == "flat":
            self.flat = nn.Linear(p * V, D)  # all variables of a step (segment) -> one token
        elif cfg.arch == "migt_tvdt":
            # One linear map R^p -> R^D per variable: token_v = x_v @ w_v + b_v.
            self.var_weight = nn.Parameter(torch.empty(V, p, D))
            self.var_bias = nn.Parameter(torch.zeros(V, 1, D))
        else:
            self.group_proj = nn.ModuleList(nn.Linear(p * g, D) for g in cfg.groups)
        self.pe = CompositePositionalEncoding(D, calendar=cfg.calendar_encoding)
        n_embedded = 1 if cfg.embedding == "flat" else (V if cfg.arch == "migt_tvdt" else len(cfg.groups))
        # attention="temporal": a vanilla Transformer over T, whose step token merges the variable tokens.
        self.merge = nn.Linear(n_embedded * D, D) if cfg.attention == "temporal" and n_embedded > 1 else None
        self.drop = nn.Dropout(cfg.dropout)

    def init_special(self):
        if hasattr(self, "var_weight"):
            # RevIN'd inputs are O(1); keep tokens O(1) too.
            nn.init.normal_(self.var_weight, std=self.cfg.patch_len**-0.5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, temporal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, p = self.cfg, self.cfg.patch_len
        # torch.where, not a product, so even NaN/Inf in padding cannot reach a valid step.
        x = torch.where(mask.unsqueeze(-1), x, 0.0)  # (B, T, V)
        temporal = torch.where(mask.unsqueeze(-1), temporal, 0.0)  # (B, T, 4)
        if cfg.instance_norm:
            x, _, _ = revin(x, mask, cfg.norm_eps)  # (B, T, V)
        if p > 1:
            pad = -x.shape[1] % p
            x = F.pad(x, (0, 0, 0, pad))  # (B, S*p, V)
            mask = F.pad(mask, (0, pad))[:, ::p]  # (B, S): the first bar of each segment
            temporal = F.pad(temporal, (0, 0, 0, pad))[:, ::p]  # (B, S, 4)
        B, S = mask.shape
        if cfg.embedding == "flat":
            tok = self.flat(x.reshape(B, S, -1)).unsqueeze(1)  # (B, 1, S, D)
        elif cfg.arch == "migt_tvdt" and p == 1:
            # Contiguous (B, V, T) first, so the tokens come out (B, V, T, D) in memory and views stay free.
            tok = x.transpose(1, 2).contiguous().unsqueeze(-1) * self.var_weight + self.var_bias  # (B, V, T, D)
        elif cfg.arch == "migt_tvdt":
            xs = x.view(B, S, p, -1).permute(0, 3, 1, 2)  # (B, V, S, p)
            tok = torch.einsum("bvsp,vpd->bvsd", xs, self.var_weight).contiguous() + self.var_bias  # (B, V, S, D)
        else:
            parts = x.view(B, S, p, -1).split(list(cfg.groups), dim=-1)  # G x (B, S, p, g)
            tok = torch.stack([proj(g.reshape(B, S, -1)) for proj, g in zip(self.group_proj, parts)], dim=1)
            # tok: (B, G, S, D)
        # The same step encoding for every variable: (B, S, D) -> (B, 1, S, D), i.e. unsqueeze over V.
        tok = tok + self.pe(temporal).unsqueeze(1)  # (B, N, S, D)
        if self.merge is not None:
            B, N, S, D = tok.shape
            tok = self.merge(tok.permute(0, 2, 1, 3).reshape(B, S, N * D)).unsqueeze(1)  # (B, 1, S, D)
        return self.drop(tok), mask


# ----------------------------------------------------------------------------- blocks


class SelfAttention(nn.Module):
    """Multi-head self-attention over the middle axis of (N, S, D) through F.scaled_dot_product_attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.attn_dropout = cfg.attn_dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        N, S, D = x.shape
        nh, hs = self.n_heads, D // self.n_heads
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (N, S, D)
        q = q.view(N, S, nh, hs).transpose(1, 2)  # (N, nh, S, hs)
        k = k.view(N, S, nh, hs).transpose(1, 2)  # (N, nh, S, hs)
        v = v.view(N, S, nh, hs).transpose(1, 2)  # (N, nh, S, hs)
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)  # (N, nh, S, hs)
        y = y.transpose(1, 2).reshape(N, S, D)  # (N, S, D)
        return self.proj(y)  # (N, S, D)


class ResidualGate(nn.Module):
    """Combine a residual stream x with a branch output y (both (..., D)): none | sigmoid | gru."""

    def __init__(self, kind: str, d_model: int):
        super().__init__()
        self.kind = kind
        if kind == "sigmoid":
            self.w = nn.Linear(d_model, d_model)  # G = sigmoid(W x + b)
        elif kind == "gru":
            self.w = nn.Linear(d_model, 2 * d_model)  # [W_z x + b_z, W_h x]
            self.u_z = nn.Linear(d_model, d_model, bias=False)
            self.u_h = nn.Linear(d_model, d_model, bias=False)

    def init_special(self):
        if self.kind == "gru":
            # GTrXL: a negative update bias starts the block close to the identity map.
            with torch.no_grad():
                self.w.bias.zero_()
                self.w.bias[: self.w.out_features // 2].fill_(-2.0)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x + y
        if self.kind == "sigmoid":
            return x + torch.sigmoid(self.w(x)) * y
        wz, wh = self.w(x).chunk(2, dim=-1)  # 2 x (..., D)
        z = torch.sigmoid(wz + self.u_z(y))
        h = torch.tanh(wh + self.u_h(z * y))
        # (1 - z) x + z h, written out rather than torch.lerp: lerp wants one dtype, and under bf16 autocast
        # h and z are bf16 while the residual stream x stays fp32 (lerp raised there). The increment is
        # computed in h's dtype, as every other residual branch is, and the stream stays fp32; backward
        # keeps one extra tensor (h - x) in that dtype (docs/clusters.md §8).
        return x + z * (h - x.to(h.dtype))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class TemporalBlock(nn.Module):
    """Pre-norm Transformer block over time, (N, T, D) -> (N, T, D), keys masked to valid steps."""

    def __init__(self, cfg: ModelConfig, gate: str):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.gate = ResidualGate(gate, cfg.d_model)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = self.gate(x, self.drop(self.attn(self.ln_1(x), attn_mask)))  # (N, T, D)
        return x + self.mlp(self.ln_2(x))  # (N, T, D)


class VariableBlock(nn.Module):
    """Attention across variables, then the gated instance norm (Lite Gate Unit): (B, V, D) -> (B, V, D).

    "Instance norm" here normalizes each variable token over its D features (LayerNorm), after the gate.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.gate = ResidualGate(cfg.gate, cfg.d_model)
        self.norm_1 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.norm_2 = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_1(self.gate(x, self.drop(self.attn(x))))  # (B, V, D)
        return self.norm_2(x + self.mlp(x))  # (B, V, D)


class AttentionPool(nn.Module):
    """Pool (N, T, D) over valid steps with one learned query -> (N, D)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(d_model))
        self.scale = d_model**-0.5

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        score = (x @ self.query) * self.scale  # (N, T)
        score = score.masked_fill(~key_mask, float("-inf"))
        w = torch.softmax(score, dim=-1)  # (N, T)
        return (w.unsqueeze(1) @ x).squeeze(1)  # (N, D)


class GrokBlock(nn.Module):
    """Seed-000 block on (B, N, T, D): gated temporal attention, gated group attention, FFN."""

    def __init__(self, cfg: ModelConfig, cross: bool):
        super().__init__()
        self.temporal = TemporalBlock(cfg, gate=cfg.gate)  # its FFN is the block's FFN
        self.cross = cross
        if cross:
            self.ln_g = nn.LayerNorm(cfg.d_model)
            self.group_attn = SelfAttention(cfg)
            self.group_gate = ResidualGate(cfg.gate, cfg.d_model)
            self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, N, T, D = x.shape
        x = self.temporal(x.reshape(B * N, T, D), attn_mask)  # (B*N, T, D)
        if not self.cross:
            return x.view(B, N, T, D)
        # Attention across groups within each step; steps never mix here, so padding stays isolated.
        x = x.view(B, N, T, D).transpose(1, 2).reshape(B * T, N, D)  # (B*T, N, D)
        x = self.group_gate(x, self.drop(self.group_attn(self.ln_g(x))))  # (B*T, N, D)
        return x.view(B, T, N, D).transpose(1, 2).contiguous()  # (B, N, T, D)


# ----------------------------------------------------------------------------- head


class MonotoneQuantiles(nn.Module):
    """raw (..., Q) -> z (..., Q), strictly increasing along the last axis.

    raw[k] (k = the level nearest 0.5) is the base; the other Q-1 entries become gaps
    width_floor + softplus(raw + offset), summed outwards from the base on each side.
    """

    def __init__(self, taus: tuple[float, ...], width_floor: float, init_width: float):
        super().__init__()
        taus_t = torch.tensor(taus, dtype=torch.float64)
        self.k = int(torch.argmin((taus_t - 0.5).abs()))
        self.width_floor = width_floor
        gaps = init_width * torch.diff(torch.special.ndtri(taus_t))  # (Q-1,) standard-normal gaps
        target = (gaps - width_floor).clamp_min(1e-6)
        offset = target + torch.log(-torch.expm1(-target))  # softplus^-1, stable
        self.register_buffer("offset", offset.float(), persistent=False)  # (Q-1,)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        k = self.k
        base = raw[..., k : k + 1]  # (..., 1)
        gap_raw = torch.cat([raw[..., :k], raw[..., k + 1 :]], dim=-1)  # (..., Q-1)
        gaps = self.width_floor + F.softplus(gap_raw + self.offset)  # (..., Q-1), gap j sits between tau_j, tau_j+1
        below = base - gaps[..., :k].flip(-1).cumsum(-1).flip(-1)  # (..., k)
        above = base + gaps[..., k:].cumsum(-1)  # (..., Q-1-k)
        return torch.cat([below, base, above], dim=-1)  # (..., Q)


class HorizonHead(nn.Module):
    """Context (B, D) -> z (B, H, Q) in fp32, independent or autoregressive over horizons.

    Autoregressive: horizon i sees ctx + embed(c_{i-1}), where c is a Q-vector: during training
    (teacher forcing) the true y / scale repeated Q times (a point mass's quantiles), at inference (or
    in training without targets) the horizon's own predicted quantiles; c_{-1} is a learned start vector.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, H, Q = cfg.d_model, len(cfg.horizons), cfg.n_outputs
        self.autoregressive = cfg.horizon_mode == "autoregressive"
        self.monotone = (
            MonotoneQuantiles(cfg.quantiles, cfg.width_floor, cfg.init_width) if cfg.head == "quantile" else None
        )
        if self.autoregressive:
            self.start = nn.Parameter(torch.zeros(D))
            self.cond = nn.Linear(Q, D)
            self.out = nn.ModuleList(nn.Linear(D, Q) for _ in range(H))
        else:
            self.out = nn.Linear(D, H * Q)
        self.H, self.Q = H, Q

    def init_special(self):
        # Small outputs: the first forecast is the offsets' N(0, 1)-like spread around 0, not noise.
        layers = self.out if self.autoregressive else [self.out]
        for lin in layers:
            nn.init.normal_(lin.weight, std=0.1 / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def _z(self, raw: torch.Tensor) -> torch.Tensor:
        return self.monotone(raw) if self.monotone is not None else raw

    def forward(self, ctx: torch.Tensor, y_norm: torch.Tensor | None) -> torch.Tensor:
        B = ctx.shape[0]
        if not self.autoregressive:
            return self._z(self.out(ctx).view(B, self.H, self.Q))  # (B, H, Q)
        zs = []
        h = ctx + self.start  # (B, D)
        for i, out in enumerate(self.out):
            z = self._z(out(h))  # (B, Q)
            zs.append(z)
            c = y_norm[:, i : i + 1].expand(B, self.Q) if y_norm is not None else z  # (B, Q)
            h = ctx + self.cond(c)  # (B, D)
        return torch.stack(zs, dim=1)  # (B, H, Q)


class RecentBars(nn.Module):
    """The last k valid bars of each window, flattened: (x, mask) -> a context increment (B, D)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.k, self.instance_norm, self.eps = cfg.recent_bars, cfg.instance_norm, cfg.norm_eps
        self.mlp = nn.Sequential(nn.Linear(cfg.recent_bars * cfg.n_vars, cfg.d_model), nn.GELU(),
                                 nn.Linear(cfg.d_model, cfg.d_model))

    def init_special(self):
        # Nearly a no-op at first (the model begins about where it would without it), but not exactly
        # zero, so gradients reach the first layer from the first step.
        nn.init.normal_(self.mlp[-1].weight, std=0.01 / math.sqrt(self.mlp[-1].in_features))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.where(mask.unsqueeze(-1), x, 0.0)  # (B, T, V)
        if self.instance_norm:
            x, _, _ = revin(x, mask, self.eps)  # (B, T, V)
        B, T, V = x.shape
        length = mask.sum(dim=1)  # (B,) windows are left-aligned: steps 0..L-1 are real
        steps = length.unsqueeze(1) - self.k + torch.arange(self.k, device=x.device)  # (B, k) last k steps
        ok = steps >= 0  # (B, k) a window shorter than k has fewer
        picked = x.gather(1, steps.clamp_min(0).unsqueeze(-1).expand(B, self.k, V))  # (B, k, V)
        picked = torch.where(ok.unsqueeze(-1), picked, 0.0)
        return self.mlp(picked.reshape(B, self.k * V))  # (B, D)


class VolCorrection(nn.Module):
    """Vol inputs (B, K) -> a context increment (B, D) and a log sigma-hat correction c (B, H)."""

    MAX_LOG = 3.0  # |c| <= 3: sigma-hat times e^-3..e^3, far beyond any real normaliser error

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.k = n_vol_inputs(len(cfg.horizons))
        self.ctx = nn.Linear(self.k, cfg.d_model)
        self.gain = nn.Linear(self.k, len(cfg.horizons))  # a bias and a gain per horizon

    def init_special(self):
        nn.init.normal_(self.ctx.weight, std=0.01 / math.sqrt(self.k))
        nn.init.zeros_(self.gain.weight)  # c = 0 at first: the forecast starts at its normaliser
        nn.init.zeros_(self.gain.bias)

    def forward(self, vol: torch.Tensor | None, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if vol is None:  # a caller without vol inputs (a memory probe): the train mean, 0 after standardising
            vol = torch.zeros(batch, self.k, device=device)
        if vol.shape[-1] != self.k:
            raise ValueError(f"the model takes {self.k} vol inputs per sample, the batch has {vol.shape[-1]}; "
                             f"were its scalers fitted before the vol inputs existed?")
        vol = vol.float()  # (B, K)
        return self.ctx(vol), self.gain(vol).clamp(-self.MAX_LOG, self.MAX_LOG)  # (B, D), (B, H)


# ----------------------------------------------------------------------------- models


class _Forecaster(nn.Module):
    """Shared tail: context -> fp32 head -> Forecast, plus weight init.

    Both models are called as model(x, mask, temporal, scale, y=None, vol=None) -> Forecast(z, q) with
    x (B, T, V), mask (B, T) bool (True = real bar, left-aligned), temporal (B, T, 4),
    scale (B, H) > 0, vol (B, K) standardised vol inputs and y (B, H) original-scale targets, read only by autoregressive heads in
    training mode (teacher forcing); in eval mode they condition on their own predictions.
    """

    def _block(self, block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """One block of the temporal stack, checkpointed in training when `activation_checkpointing` is on:
        the forward keeps only the block's input and the backward recomputes the rest (docs/model.md §11).
        Non-reentrant checkpointing restores the RNG state, so dropout draws the same masks again."""
        if self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, attn_mask, use_reentrant=False)
        return block(x, attn_mask)

    def _init_all(self):
        self.apply(_init_linear)
        for m in self.modules():
            if hasattr(m, "init_special"):
                m.init_special()

    def _context_extras(self, x: torch.Tensor, mask: torch.Tensor, vol: torch.Tensor | None):
        """The context increments of every horizon (B, D), of the recent-bars path where it reaches only
        some horizons (B, D) or None, and the log sigma-hat correction (B, H) or None."""
        recent = self.recent(x, mask) if self.recent is not None else None  # (B, D)
        extra, log_corr = 0.0, None
        if self.vol is not None:
            extra, log_corr = self.vol(vol, x.shape[0], x.device)  # (B, D), (B, H)
        if recent is not None and self.recent_everywhere:
            extra, recent = extra + recent, None
        return extra, recent, log_corr

    def _forecast(self, ctx: torch.Tensor, scale: torch.Tensor, y: torch.Tensor | None,
                  log_corr: torch.Tensor | None = None, recent: torch.Tensor | None = None) -> Forecast:
        # The head and de-normalization stay fp32 under autocast: bf16 has ~3 significant digits,
        # too few for quantile gaps of 1e-3 around a base.
        with torch.autocast(device_type=ctx.device.type, enabled=False):
            scale = scale.float().clamp_min(1e-12)  # (B, H), > 0 keeps z -> q strictly increasing
            y_norm = y.float() / scale if (y is not None and self.training) else None  # (B, H)
            z = self.head(self.ln_ctx(ctx.float()), y_norm)  # (B, H, Q)
            if recent is not None:
                # The recent path reaches only the short horizons: at long ones its noise fed the median.
                z_recent = self.head(self.ln_ctx(ctx.float() + recent.float()), y_norm)  # (B, H, Q)
                z = torch.where(self.recent_reach.view(1, -1, 1), z_recent, z)  # (B, H, Q)
            if log_corr is not None:
                z = z * torch.exp(log_corr.float()).unsqueeze(-1)  # (B, H, Q) a positive factor keeps the order
            return Forecast(z=z, q=scale.unsqueeze(-1) * z)

    def _init_recent(self, cfg: ModelConfig):
        self.recent = RecentBars(cfg) if cfg.recent_bars else None
        reach = [cfg.recent_max_horizon == 0 or h <= cfg.recent_max_horizon for h in cfg.horizons]
        self.recent_everywhere = all(reach)  # a Python bool: no device sync per forward
        self.register_buffer("recent_reach", torch.tensor(reach), persistent=False)  # (H,) horizons the path informs


def _init_linear(m: nn.Module):
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _key_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T) -> (B*n, 1, 1, T) boolean key mask for SDPA, built once per forward and shared by all layers."""
    B, T = mask.shape
    return mask.unsqueeze(1).expand(B, n, T).reshape(B * n, 1, 1, T)


class MigtTvdt(_Forecaster):
    """MIGT-TVDT: temporal attention per variable, pooling over time, variable attention, quantile heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, N = cfg.d_model, cfg.n_tokens
        self.encoder = InputEncoder(cfg)
        self.temporal = nn.ModuleList(TemporalBlock(cfg, gate="none") for _ in range(cfg.n_temporal_layers))
        self.ln_t = nn.LayerNorm(D)
        self.pool = AttentionPool(D)
        n_var = cfg.n_variable_layers if (N > 1 and cfg.variable_attention == "full") else 0
        self.variable = nn.ModuleList(VariableBlock(cfg) for _ in range(n_var))
        self.proj = nn.Linear(N * D, D)
        self._init_recent(cfg)
        self.vol = VolCorrection(cfg) if cfg.vol_inputs else None
        self.ln_ctx = nn.LayerNorm(D)
        self.head = HorizonHead(cfg)
        self._init_all()

    def forward(self, x: Tensor, mask: Tensor, temporal: Tensor, scale: Tensor, y: Tensor | None = None,
                vol: Tensor | None = None) -> Forecast:
        extra, recent, log_corr = self._context_extras(x, mask, vol)  # (B, D), (B, D) or None, (B, H) or None
        tok, mask = self.encoder(x, mask, temporal)  # (B, N, T, D), (B, T); T = segments when patch_len > 1
        B, N, T, D = tok.shape
        attn_mask = _key_mask(mask, N)  # (B*N, 1, 1, T)
        h = tok.view(B * N, T, D)  # (B*N, T, D)
        for block in self.temporal:
            h = self._block(block, h, attn_mask)  # (B*N, T, D)
        h = self.pool(self.ln_t(h), attn_mask.view(B * N, T))  # (B*N, D)
        h = h.view(B, N, D)  # (B, N, D)
        for block in self.variable:
            h = block(h)  # (B, N, D)
        ctx = F.gelu(self.proj(h.reshape(B, N * D))) + extra  # (B, D)
        return self._forecast(ctx, scale, y, log_corr, recent)


class GrokSL(_Forecaster):
    """Grok-SL (Grok-SL design): group tokens, gated temporal + group attention blocks, last valid step."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, N = cfg.d_model, cfg.n_tokens
        self.encoder = InputEncoder(cfg)
        cross = N > 1 and cfg.variable_attention == "full"
        self.blocks = nn.ModuleList(GrokBlock(cfg, cross) for _ in range(cfg.n_temporal_layers))
        self.ln_f = nn.LayerNorm(D)
        self._init_recent(cfg)
        self.vol = VolCorrection(cfg) if cfg.vol_inputs else None
        self.ln_ctx = nn.LayerNorm(D)
        self.head = HorizonHead(cfg)
        self._init_all()

    def forward(self, x: Tensor, mask: Tensor, temporal: Tensor, scale: Tensor, y: Tensor | None = None,
                vol: Tensor | None = None) -> Forecast:
        extra, recent, log_corr = self._context_extras(x, mask, vol)  # (B, D), (B, D) or None, (B, H) or None
        tok, mask = self.encoder(x, mask, temporal)  # (B, N, T, D), (B, T); T = segments when patch_len > 1
        B, N, T, D = tok.shape
        attn_mask = _key_mask(mask, N)  # (B*N, 1, 1, T)
        for block in self.blocks:
            tok = self._block(block, tok, attn_mask)  # (B, N, T, D)
        # Last valid step per window (the largest masked-in index; windows are left-aligned).
        steps = torch.arange(T, device=mask.device)
        last = torch.where(mask, steps, 0).amax(dim=1)  # (B,)
        h = tok[torch.arange(B, device=mask.device), :, last]  # (B, N, D)
        ctx = self.ln_f(h).mean(dim=1) + extra  # (B, D)
        return self._forecast(ctx, scale, y, log_corr, recent)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model `cfg.arch` names, initialized; parameters stay on the CPU in fp32 until the caller moves them."""
    model = MigtTvdt(cfg) if cfg.arch == "migt_tvdt" else GrokSL(cfg)
    log.info("built %s with %s parameters", cfg.arch, f"{count_parameters(model):,}")
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- losses


def horizon_weights(cfg: ModelConfig) -> torch.Tensor | None:
    """(H,) loss weights: None for uniform; inv_log gives w_h proportional to 1/ln(h+1), mean 1."""
    if cfg.horizon_weighting == "uniform":
        return None
    w = 1.0 / torch.log(torch.tensor(cfg.horizons, dtype=torch.float32) + 1.0)
    return w / w.mean()


def pinball_loss(
    z: torch.Tensor,
    y_norm: torch.Tensor,
    taus,
    horizon_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean pinball loss in fp32.

    rho_tau(y, q) = max(tau (y - q), (tau - 1)(y - q)) for z (B, H, Q) and y_norm (B, H);
    loss = sum_h w_h mean_{b,tau} rho / sum_h w_h (w_h = 1 without horizon_weights).
    """
    z = z.float()
    taus = torch.as_tensor(taus, dtype=torch.float32, device=z.device)  # (Q,)
    diff = y_norm.float().unsqueeze(-1) - z  # (B, H, Q)
    rho = torch.maximum(taus * diff, (taus - 1.0) * diff)  # (B, H, Q)
    per_h = rho.mean(dim=(0, 2))  # (H,)
    if horizon_weights is None:
        return per_h.mean()
    w = horizon_weights.to(device=z.device, dtype=torch.float32)  # (H,)
    return (per_h * w).sum() / w.sum()


def model_loss(forecast: Forecast, y: torch.Tensor, scale: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Training loss in the normalized space y / scale, in fp32.

    Quantile head: pinball_loss with the config's horizon weights. No crossing penalty: the head cannot
    cross by construction (base + positive gaps), so the 0.1 * crossing term would be identically 0.
    Point head: horizon-weighted MSE of the mean z[..., 0].
    """
    with torch.autocast(device_type=y.device.type, enabled=False):
        y_norm = y.float() / scale.float().clamp_min(1e-12)  # (B, H)
        w = horizon_weights(cfg)
        if cfg.head == "quantile":
            return pinball_loss(forecast.z, y_norm, cfg.quantiles, w)
        per_h = ((forecast.z[..., 0].float() - y_norm) ** 2).mean(dim=0)  # (H,)
        if w is None:
            return per_h.mean()
        w = w.to(per_h.device)
        return (per_h * w).sum() / w.sum()
