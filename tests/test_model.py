"""Claims about nqexp.model.net: shapes, non-crossing, masking, causality, gradients, overfitting, I/O."""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import math

import pytest
import torch

from nqexp.errors import SpecError
from nqexp.model.volatility import n_vol_inputs
from nqexp.model.net import (
    Forecast,
    ModelConfig,
    build_model,
    count_parameters,
    horizon_weights,
    model_config_from_saved,
    model_loss,
    pinball_loss,
)

B, T, V, H = 4, 32, 4, 2
TINY = ModelConfig(
    n_vars=V,
    horizons=(3, 12),
    d_model=16,
    n_heads=2,
    d_ff=32,
    dropout=0.0,
    n_temporal_layers=2,
    n_variable_layers=2,
    groups=(2, 2),
)
SWITCHES = {
    "arch": ["migt_tvdt", "grok_sl"],
    "embedding": ["per_variable", "flat"],
    "attention": ["two_stage", "temporal"],
    "instance_norm": [True, False],
    "gate": ["none", "sigmoid", "gru"],
    "head": ["quantile", "point"],
    "horizon_mode": ["independent", "autoregressive"],
    "variable_attention": ["full", "none"],
}
# Each switch value flipped once from the default, for both architectures (cheaper than the product).
ONE_FLIP = [
    dataclasses.replace(TINY, arch=arch, **{name: value})
    for arch in SWITCHES["arch"]
    for name, values in SWITCHES.items()
    if name != "arch"
    for value in values
] + [dataclasses.replace(TINY, arch=arch, patch_len=4) for arch in SWITCHES["arch"]] + [
    dataclasses.replace(TINY, arch=arch, calendar_encoding=False) for arch in SWITCHES["arch"]] + [
    dataclasses.replace(TINY, arch=arch, recent_bars=4, recent_max_horizon=3) for arch in SWITCHES["arch"]]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models gain nothing from threads, and OpenMP spinning on 2 shared cores costs seconds.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(cfg=TINY, b=B, t=T, lengths=(T, 20, 7, 1), seed=0, x_scale=1.0, scale_level=1e-3):
    """A left-aligned batch like windows.py makes: zeros after each window's length."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([lengths[i % len(lengths)] for i in range(b)])
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    x = torch.randn(b, t, cfg.n_vars, generator=g) * x_scale * mask.unsqueeze(-1)
    minute = (torch.arange(t) * 5 + 570) % 1440
    temporal = torch.stack(
        [
            minute.expand(b, t),
            torch.randint(0, 7, (b, 1), generator=g).expand(b, t),
            torch.randint(1, 32, (b, 1), generator=g).expand(b, t),
            torch.randint(1, 367, (b, 1), generator=g).expand(b, t),
        ],
        dim=-1,
    ).float() * mask.unsqueeze(-1)  # (B, T, 4)
    scale = scale_level * (0.5 + torch.rand(b, len(cfg.horizons), generator=g))  # (B, H), > 0
    y = scale * torch.randn(b, len(cfg.horizons), generator=g)  # (B, H)
    return x, mask, temporal, scale, y


def seeded(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


def describe(a: torch.Tensor, b: torch.Tensor) -> str:
    d = (a - b).abs()
    idx = tuple(int(i) for i in torch.nonzero(d == d.max())[0])
    return f"max abs diff {d.max().item():.3g} at {idx}: {a[idx].item():.6g} vs {b[idx].item():.6g}"


# ----------------------------------------------------------------------------- shapes and order


def test_output_shapes_for_every_switch_combination():
    x, mask, temporal, scale, y = make_batch()
    failures = []
    for i, values in enumerate(itertools.product(*SWITCHES.values())):
        # patch_len (not an ablation switch) alternates with a length that does not divide T.
        cfg = dataclasses.replace(TINY, patch_len=(1, 5)[i % 2], **dict(zip(SWITCHES, values)))
        model = build_model(cfg)
        for training in (True, False):
            model.train(training)
            with torch.no_grad():
                out = model(x, mask, temporal, scale, y)
            expected = (B, H, cfg.n_outputs)
            if not (isinstance(out, Forecast) and out.z.shape == expected and out.q.shape == expected):
                failures.append(f"{dict(zip(SWITCHES, values))}: z {tuple(out.z.shape)}, expected {expected}")
            elif not torch.isfinite(out.z).all():
                failures.append(f"{dict(zip(SWITCHES, values))}: non-finite z")
    assert not failures, f"{len(failures)} combinations failed, e.g. {failures[:3]}"


@pytest.mark.parametrize("arch", ["migt_tvdt", "grok_sl"])
@pytest.mark.parametrize("instance_norm", [True, False])
@pytest.mark.parametrize("x_scale", [1e-6, 1.0, 1e3])
@pytest.mark.parametrize("scale_level", [1e-6, 1e3])
def test_quantiles_strictly_increase_after_denormalization(arch, instance_norm, x_scale, scale_level):
    cfg = dataclasses.replace(TINY, arch=arch, instance_norm=instance_norm, horizon_mode="autoregressive")
    model = seeded(cfg).eval()
    x, mask, temporal, scale, _ = make_batch(cfg, b=16, x_scale=x_scale, scale_level=scale_level)
    with torch.no_grad():
        out = model(x, mask, temporal, scale)
    dq = out.q.diff(dim=-1)  # (B, H, Q-1)
    assert torch.isfinite(out.q).all()
    assert (dq > 0).all(), f"crossing or tie: min gap {dq.min().item():.3g}"
    torch.testing.assert_close(out.q, scale.unsqueeze(-1) * out.z, rtol=0, atol=0)


def test_quantiles_do_not_cross_when_head_outputs_are_extreme():
    model = seeded(TINY).eval()
    x, mask, temporal, scale, _ = make_batch(TINY, b=32, x_scale=1e3)
    k = model.head.monotone.k
    is_gap = torch.ones(len(TINY.quantiles), dtype=torch.bool)
    is_gap[k] = False
    gap_bias = is_gap.repeat(H)  # head.out emits (H * Q): mark every gap pre-activation
    with torch.no_grad():
        # Gap pre-activations at -1e4: softplus underflows to 0 and the floor alone keeps the order.
        model.head.out.bias[gap_bias] = -1e4
        low = model(x, mask, temporal, scale)
        # At +1e3 the gaps are huge but finite.
        model.head.out.bias[gap_bias] = 1e3
        high = model(x, mask, temporal, scale)
        # Weights x 1e5: base and gaps reach 1e4 in z; fp32 spacing there exceeds the floor, so
        # adjacent quantiles may tie, but never cross.
        model.head.out.bias.zero_()
        model.head.out.weight.mul_(1e5)
        wild = model(x, mask, temporal, scale)
    torch.testing.assert_close(low.z.diff(dim=-1), torch.full_like(low.z[..., 1:], TINY.width_floor), rtol=1e-3, atol=0)
    assert (low.q.diff(dim=-1) > 0).all(), "the width floor must keep de-normalized quantiles strictly ordered"
    assert torch.isfinite(high.q).all() and (high.q.diff(dim=-1) > 0).all()
    assert torch.isfinite(wild.q).all() and (wild.q.diff(dim=-1) >= 0).all()


def test_zero_or_negative_scale_collapses_instead_of_reversing():
    model = seeded(TINY).eval()
    x, mask, temporal, scale, _ = make_batch()
    scale[0] = -1.0
    with torch.no_grad():
        out = model(x, mask, temporal, scale)
    assert (out.q.diff(dim=-1) >= 0).all()


def test_initial_quantiles_start_near_standard_normal_widths():
    # y / scale is O(1), so the untrained forecast should be about N(0, 1), not a point (the collapse).
    model = seeded(dataclasses.replace(TINY, quantiles=(0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95))).eval()
    x, mask, temporal, scale, _ = make_batch(b=32)
    with torch.no_grad():
        z = model(x, mask, temporal, scale).z  # (B, H, 7)
    width90 = (z[..., -1] - z[..., 0]).median().item()
    assert 0.8 * 3.29 < width90 < 1.25 * 3.29, f"median 90% width {width90:.3f}, N(0,1) gives 3.29"
    assert z[..., 3].abs().max() < 1.0, "initial medians should sit near 0"


def test_head_and_loss_stay_fp32_under_bf16_autocast():
    model = seeded(TINY)
    x, mask, temporal, scale, y = make_batch()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(x, mask, temporal, scale, y)
        loss = model_loss(out, y, scale, TINY)
    assert out.z.dtype == out.q.dtype == loss.dtype == torch.float32
    assert (out.q.diff(dim=-1) > 0).all()


@pytest.mark.parametrize("gate", ["sigmoid", "gru"])
def test_gated_grok_blocks_train_under_bf16_autocast_with_an_fp32_residual_stream(gate):
    # The GRU gate used torch.lerp(x, h, z), which refuses an fp32 x with a bf16 h: Grok-SL as designed
    # (gate: gru) crashed at its first bf16 step on a GPU. CPU autocast follows the same dtype rules.
    cfg = dataclasses.replace(TINY, arch="grok_sl", gate=gate, horizon_mode="autoregressive", dropout=0.1)
    model = seeded(cfg).train()
    x, mask, temporal, scale, y = make_batch(cfg)
    streams = []
    model.blocks[0].register_forward_hook(lambda m, i, out: streams.append(out.dtype))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(x, mask, temporal, scale, y)
    loss = model_loss(out, y, scale, cfg)
    loss.backward()
    assert streams == [torch.float32] and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ----------------------------------------------------------------------------- activation checkpointing


def _loss_and_grads(cfg, batch, checkpointing):
    model = seeded(dataclasses.replace(cfg, activation_checkpointing=checkpointing)).train()
    x, mask, temporal, scale, y = batch
    torch.manual_seed(123)  # the dropout masks
    loss = model_loss(model(x, mask, temporal, scale, y), y, scale, cfg)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("cfg", [
    dataclasses.replace(TINY, dropout=0.1),
    dataclasses.replace(TINY, arch="grok_sl", gate="gru", horizon_mode="autoregressive", dropout=0.1),
    dataclasses.replace(TINY, arch="grok_sl", patch_len=4, dropout=0.1),
], ids=["migt", "grok-gru-ar", "grok-patched"])
def test_checkpointed_training_gives_the_same_loss_and_gradients_with_dropout(cfg):
    # Non-reentrant checkpointing restores the RNG state before recomputing a block, so dropout draws
    # the same masks in the recomputation and the gradients equal the plain ones.
    batch = make_batch(cfg)
    loss, grads = _loss_and_grads(cfg, batch, checkpointing=False)
    loss_ck, grads_ck = _loss_and_grads(cfg, batch, checkpointing=True)
    torch.testing.assert_close(loss_ck, loss, rtol=1e-6, atol=0)
    for name, g in grads.items():
        torch.testing.assert_close(grads_ck[name], g, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    other_seed = make_batch(cfg, seed=5)
    assert not torch.equal(_loss_and_grads(cfg, other_seed, checkpointing=True)[0], loss)  # the check can fail


def test_checkpointing_keeps_only_block_inputs_in_training_and_changes_nothing_in_eval():
    cfg = dataclasses.replace(TINY, arch="grok_sl", dropout=0.1, n_temporal_layers=3)
    x, mask, temporal, scale, y = make_batch(cfg)

    def kept(model):
        count = [0]

        def pack(t):
            count[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, mask, temporal, scale, y)
        return count[0]

    plain, ckpt = seeded(cfg).train(), seeded(dataclasses.replace(cfg, activation_checkpointing=True)).train()
    assert kept(ckpt) < 0.4 * kept(plain), (kept(ckpt), kept(plain))
    with torch.no_grad():
        torch.testing.assert_close(ckpt.eval()(x, mask, temporal, scale).q, plain.eval()(x, mask, temporal, scale).q,
                                   rtol=0, atol=0)


# ----------------------------------------------------------------------------- masking and causality

MASK_CONFIGS = [
    TINY,
    dataclasses.replace(TINY, arch="grok_sl", gate="gru"),
    dataclasses.replace(TINY, embedding="flat"),
    dataclasses.replace(TINY, attention="temporal", instance_norm=False),
    dataclasses.replace(TINY, arch="grok_sl", horizon_mode="autoregressive", variable_attention="none"),
    dataclasses.replace(TINY, patch_len=4),
    dataclasses.replace(TINY, arch="grok_sl", patch_len=5),
    dataclasses.replace(TINY, embedding="flat", patch_len=3),
]


@pytest.mark.parametrize("cfg", MASK_CONFIGS, ids=lambda c: f"{c.arch}-{c.embedding}-{c.attention}-{c.gate}-p{c.patch_len}")
def test_values_at_padded_positions_do_not_change_outputs(cfg):
    model = seeded(cfg).eval()
    x, mask, temporal, scale, _ = make_batch(cfg)
    noisy_x = torch.where(mask.unsqueeze(-1), x, 1e6 * torch.randn_like(x))
    noisy_t = torch.where(mask.unsqueeze(-1), temporal, torch.randint(-5000, 5000, temporal.shape).float())
    noisy_x[1, -1, 0] = float("nan")  # padding must not even propagate NaN
    with torch.no_grad():
        ref = model(x, mask, temporal, scale).q
        out = model(noisy_x, mask, noisy_t, scale).q
    assert torch.equal(ref, out), describe(ref, out)


@pytest.mark.parametrize("cfg", MASK_CONFIGS, ids=lambda c: f"{c.arch}-{c.embedding}-{c.attention}-{c.gate}-p{c.patch_len}")
def test_nothing_after_the_last_valid_step_matters(cfg):
    # A window padded to T must forecast exactly what its valid prefix alone forecasts.
    model = seeded(cfg).eval()
    x, mask, temporal, scale, _ = make_batch(cfg)
    with torch.no_grad():
        padded = model(x, mask, temporal, scale).z
        for i, length in enumerate(mask.sum(1).tolist()):
            s = slice(i, i + 1)
            alone = model(x[s, :length], mask[s, :length], temporal[s, :length], scale[s]).z
            torch.testing.assert_close(alone, padded[s], rtol=1e-5, atol=1e-5, msg=lambda m: f"window {i}: {m}")


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("cfg", ONE_FLIP, ids=lambda c: f"{c.arch}-{c.embedding}-{c.attention}-{c.instance_norm}-"
                         f"{c.gate}-{c.head}-{c.horizon_mode}-{c.variable_attention}-p{c.patch_len}")
def test_gradients_reach_every_parameter(cfg):
    model = seeded(cfg).train()
    x, mask, temporal, scale, y = make_batch(cfg)
    vol = torch.randn(x.shape[0], n_vol_inputs(len(cfg.horizons)), generator=torch.Generator().manual_seed(1))
    model_loss(model(x, mask, temporal, scale, y, vol=vol), y, scale, cfg).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not (p.grad != 0).any()]
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient reaches {missing}"
    assert not bad, f"non-finite gradients in {bad}"


@pytest.mark.parametrize("arch", ["migt_tvdt", "grok_sl"])
def test_model_overfits_a_tiny_batch(arch):
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, arch=arch, quantiles=(0.1, 0.5, 0.9))
    model = build_model(cfg).train()
    x, mask, temporal, scale, y = make_batch(cfg, b=8, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        loss = model_loss(model(x, mask, temporal, scale, y), y, scale, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < 0.1 * losses[0], f"pinball {losses[0]:.4f} -> {min(losses[-10:]):.4f} after 200 steps"


def test_pinball_loss_matches_hand_computed_values():
    z = torch.tensor([[[-1.0, 0.0, 2.0]]])  # (B=1, H=1, Q=3)
    y = torch.tensor([[0.5]])
    taus = (0.1, 0.5, 0.9)
    # rho: 0.1 * 1.5, 0.5 * 0.5, (0.9 - 1) * (0.5 - 2) = 0.15, 0.25, 0.15
    assert pinball_loss(z, y, taus).item() == pytest.approx((0.15 + 0.25 + 0.15) / 3)


def test_inverse_log_horizon_weights_weigh_each_horizon_by_one_over_log():
    cfg = dataclasses.replace(TINY, horizons=(3, 48), horizon_weighting="inv_log")
    w = horizon_weights(cfg)
    assert w[0] / w[1] == pytest.approx(math.log(49) / math.log(4))
    z = torch.zeros(1, 2, 1)
    y = torch.tensor([[1.0, 2.0]])
    # per-horizon pinball at tau=0.5: 0.5, 1.0
    expected = (w[0] * 0.5 + w[1] * 1.0) / w.sum()
    assert pinball_loss(z, y, (0.5,), w).item() == pytest.approx(expected.item())


def test_point_head_loss_is_mse_in_normalized_space():
    cfg = dataclasses.replace(TINY, head="point")
    z = torch.tensor([[[0.5], [1.0]]])  # (B=1, H=2, Q=1)
    scale = torch.tensor([[2.0, 4.0]])
    y = torch.tensor([[2.0, 0.0]])  # y / scale = 1, 0
    loss = model_loss(Forecast(z, scale.unsqueeze(-1) * z), y, scale, cfg)
    assert loss.item() == pytest.approx(((0.5 - 1.0) ** 2 + 1.0**2) / 2)


# ----------------------------------------------------------------------------- autoregressive heads

AR = dataclasses.replace(TINY, horizon_mode="autoregressive", horizons=(3, 6, 12))


@pytest.mark.parametrize("arch", ["migt_tvdt", "grok_sl"])
def test_autoregressive_training_uses_the_true_previous_target(arch):
    cfg = dataclasses.replace(AR, arch=arch)
    model = seeded(cfg).train()  # dropout is 0 in TINY, so train mode is deterministic
    x, mask, temporal, scale, y = make_batch(cfg)
    y2 = y.clone()
    y2[:, 0] += 3 * scale[:, 0]  # move only the first horizon's target
    with torch.no_grad():
        a = model(x, mask, temporal, scale, y).z
        b = model(x, mask, temporal, scale, y2).z
    assert torch.equal(a[:, 0], b[:, 0]), "the first horizon has no previous target"
    assert not torch.allclose(a[:, 1], b[:, 1]), "horizon 2 must condition on the true horizon-1 target"
    assert torch.equal(a[:, 2], b[:, 2]), "horizon 3 conditions on horizon 2's target, which did not move"


def test_autoregressive_inference_ignores_targets_and_uses_its_own_quantiles():
    model = seeded(AR).eval()
    x, mask, temporal, scale, y = make_batch(AR)
    with torch.no_grad():
        with_y = model(x, mask, temporal, scale, y).z
        without = model(x, mask, temporal, scale).z
        assert torch.equal(with_y, without), "targets must not reach an eval-mode forecast"
        # Rebuild the chain by hand from the head's parts: horizon i sees embed(z_{i-1}).
        head = model.head
        ctx = torch.randn(5, AR.d_model)
        z = head(ctx, None)
        z0 = head.monotone(head.out[0](ctx + head.start))
        z1 = head.monotone(head.out[1](ctx + head.cond(z0)))
        z1_teacher = head.monotone(head.out[1](ctx + head.cond(torch.full_like(z0, 0.7))))
        teacher = head(ctx, torch.full((5, 3), 0.7))
    torch.testing.assert_close(z[:, 0], z0)
    torch.testing.assert_close(z[:, 1], z1)
    torch.testing.assert_close(teacher[:, 1], z1_teacher)


# ----------------------------------------------------------------------------- config and I/O


def test_default_config_parameter_count_is_within_the_documented_range(caplog):
    # docs/model.md §1: "4-7 M". Builds only; no forward at T = 288.
    with caplog.at_level(logging.INFO, logger="nqexp.model.net"):
        n_migt = count_parameters(build_model(ModelConfig()))
        n_grok = count_parameters(build_model(ModelConfig(arch="grok_sl")))
    logging.getLogger(__name__).info("default parameters: migt_tvdt %d, grok_sl %d", n_migt, n_grok)
    assert 4_000_000 <= n_migt <= 7_000_000, f"MIGT-TVDT default has {n_migt:,} parameters"
    assert 4_000_000 <= n_grok <= 7_000_000, f"Grok-SL at the default width has {n_grok:,} parameters"
    assert f"{n_migt:,} parameters" in caplog.text


@pytest.mark.parametrize("cfg", [TINY, dataclasses.replace(AR, arch="grok_sl", gate="gru")], ids=["migt", "grok-ar"])
def test_save_and_load_round_trip_gives_identical_outputs(cfg):
    model = seeded(cfg).eval()
    buf = io.BytesIO()
    torch.save({"config": dataclasses.asdict(cfg), "state": model.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    torch.manual_seed(123)  # a different init, so equality comes from the loaded weights
    clone = build_model(ModelConfig(**saved["config"]))
    clone.load_state_dict(saved["state"])
    clone.eval()
    x, mask, temporal, scale, _ = make_batch(cfg)
    with torch.no_grad():
        a, b = model(x, mask, temporal, scale).q, clone(x, mask, temporal, scale).q
    assert torch.equal(a, b), describe(a, b)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"d_model": 30, "n_heads": 4}, "model.d_model (30) must be divisible by model.n_heads (4)"),
        ({"arch": "grok_sl", "groups": (4, 4)}, "model.groups ([4, 4]) must sum to model.n_vars (24)"),
        ({"gate": "lstm"}, "model.gate ('lstm') must be one of ['none', 'sigmoid', 'gru']"),
        ({"quantiles": (0.5, 0.1)}, "model.quantiles ([0.5, 0.1]) must be strictly increasing"),
    ],
)
def test_invalid_configs_raise_spec_errors_naming_the_fields(overrides, expected):
    with pytest.raises(SpecError) as err:
        ModelConfig(**overrides)
    assert expected in str(err.value)


def test_config_accepts_lists_from_yaml_and_stays_hashable():
    cfg = ModelConfig(horizons=[3, 6], quantiles=[0.1, 0.5, 0.9])
    assert cfg.horizons == (3, 6) and hash(cfg) == hash(ModelConfig(horizons=(3, 6), quantiles=(0.1, 0.5, 0.9)))


def test_without_calendar_encoding_day_of_month_and_year_cannot_matter():
    cfg = dataclasses.replace(TINY, calendar_encoding=False)
    model = seeded(cfg).eval()
    x, mask, temporal, scale = make_batch(cfg)[:4]
    moved = temporal.clone()
    moved[..., 2] = (moved[..., 2] + 10) % 31 + 1
    moved[..., 3] = (moved[..., 3] + 100) % 366 + 1
    with torch.no_grad():
        a, b = model(x, mask, temporal, scale).q, model(x, mask, moved, scale).q
    assert torch.equal(a, b), describe(a, b)
    full = seeded(TINY).eval()
    with torch.no_grad():
        assert not torch.equal(full(x, mask, temporal, scale).q, full(x, mask, moved, scale).q)


# ----------------------------------------------------------------------------- recent-bars reach


@pytest.mark.parametrize("arch", ["migt_tvdt", "grok_sl"])
@pytest.mark.parametrize("horizon_mode", ["independent", "autoregressive"])
def test_recent_path_informs_only_the_horizons_within_its_reach(arch, horizon_mode):
    # TINY's horizons are 3 and 12 bars; a reach of 3 leaves the 12-bar forecast without the path.
    cfg = dataclasses.replace(TINY, arch=arch, horizon_mode=horizon_mode, recent_bars=4, recent_max_horizon=3)
    model = seeded(cfg).eval()
    x, mask, temporal, scale, _ = make_batch(cfg)
    with torch.no_grad():
        before = model(x, mask, temporal, scale).z  # (B, H, Q)
        model.recent.mlp[-1].weight.mul_(50.0).add_(0.1)  # a very different recent-bars path
        after = model(x, mask, temporal, scale).z
    assert not torch.allclose(before[:, 0], after[:, 0]), "the 3-bar horizon must see the recent-bars path"
    assert torch.equal(before[:, 1], after[:, 1]), describe(before[:, 1], after[:, 1])


def test_a_reach_covering_every_horizon_is_the_unlimited_path_bit_for_bit():
    x, mask, temporal, scale, _ = make_batch()
    every = seeded(dataclasses.replace(TINY, recent_bars=4, recent_max_horizon=0)).eval()
    covering = seeded(dataclasses.replace(TINY, recent_bars=4, recent_max_horizon=12)).eval()
    with torch.no_grad():
        a, b = every(x, mask, temporal, scale).q, covering(x, mask, temporal, scale).q
    assert torch.equal(a, b), describe(a, b)


def test_saved_configs_without_newer_fields_rebuild_the_model_that_was_saved():
    saved = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(TINY).items()}
    for newer in ("vol_inputs", "recent_max_horizon"):
        saved.pop(newer)
    cfg = model_config_from_saved(saved)
    assert (cfg.vol_inputs, cfg.recent_max_horizon) == (False, 0)
    assert cfg.horizons == TINY.horizons


def test_a_reach_shorter_than_every_horizon_is_refused():
    with pytest.raises(SpecError, match="recent_max_horizon .2. is shorter than every horizon"):
        ModelConfig(horizons=(3, 6), recent_bars=12, recent_max_horizon=2)
    with pytest.raises(SpecError, match=r"recent_max_horizon \(-1\) must be >= 0"):
        ModelConfig(recent_max_horizon=-1)
