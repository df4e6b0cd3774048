"""Model FLOPs and one-core CPU throughput (and, with --device cuda, GPU throughput and latency).

    python benchmarks/bench_model.py                     # everything on one CPU core (~5 min)
    python benchmarks/bench_model.py --only peak,flops   # a subset
    python benchmarks/bench_model.py --device cuda       # bf16 training with/without torch.compile, batch-1 latency
    python benchmarks/bench_model.py --device cuda --only profile   # top CUDA kernels of one training step

Numbers are medians of repeated timings; the fp32 matmul peak is measured in the same run so the
"% of peak" ratio is robust to a busy machine. Results notes: benchmarks/README_model.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nqexp.model.net import ModelConfig, build_model, count_parameters, model_loss  # noqa: E402

T, V = 288, 24


# FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel; count it the same way.
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_flash_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


DEFAULT = ModelConfig()
SMALL = {  # candidates for the quickstart's CPU config, all at T = 288, V = 24; timed
    "small_d32_p12": ModelConfig(d_model=32, n_heads=2, d_ff=64, n_temporal_layers=2, n_variable_layers=1, patch_len=12),
    "small_d64_p12": ModelConfig(d_model=64, n_heads=2, d_ff=128, n_temporal_layers=2, n_variable_layers=1, patch_len=12),
    "small_d64_p6": ModelConfig(d_model=64, n_heads=2, d_ff=128, n_temporal_layers=2, n_variable_layers=1, patch_len=6),
}
PER_BAR_SMALL = {  # the suggestion without segments: FLOPs only (a step at batch 64 takes ~25 s)
    "small_d32_per_bar": ModelConfig(d_model=32, n_heads=2, d_ff=64, n_temporal_layers=2, n_variable_layers=1),
}


def make_batch(cfg: ModelConfig, b: int, device="cpu", t=T):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(t - 15, t + 1, (b,), generator=g)  # real days hold 273-276 five-minute bars
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    x = torch.randn(b, t, cfg.n_vars, generator=g) * mask.unsqueeze(-1)
    minute = (torch.arange(t) * 5 + 1080) % 1440
    temporal = torch.stack(
        [minute.expand(b, t), torch.full((b, t), 2), torch.full((b, t), 14), torch.full((b, t), 200)], dim=-1
    ).float()
    scale = torch.full((b, len(cfg.horizons)), 1e-3)
    y = scale * torch.randn(b, len(cfg.horizons), generator=g)
    return [t_.to(device) for t_ in (x, mask, temporal, scale, y)]


def median_time(fn, repeats: int, warmup: int = 1, sync=lambda: None, clock=time.process_time) -> float:
    """Median seconds per call. On CPU the default clock is this process's CPU time: with one thread
    it is the time the work ran, unaffected by other jobs on a shared machine (wall time is not)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        sync()
        times.append(clock() - t0)
    return statistics.median(times)


def matmul_peak(n: int = 1024, repeats: int = 15) -> float:
    """fp32 GFLOP/s of a square matmul on the current threads (the best of a few sizes)."""
    best = 0.0
    for size in (512, n, 2 * n):
        a, b = torch.randn(size, size), torch.randn(size, size)
        s = median_time(lambda: torch.mm(a, b), repeats)
        best = max(best, 2 * size**3 / s / 1e9)
    return best


def count_flops(cfg: ModelConfig, b: int, backward: bool) -> int:
    model = build_model(cfg).train(backward)
    x, mask, temporal, scale, y = make_batch(cfg, b)
    with FlopCounterMode(display=False) as fc:
        out = model(x, mask, temporal, scale, y)
        if backward:
            model_loss(out, y, scale, cfg).backward()
    return fc.get_total_flops()


def train_step_fn(model, cfg, batch):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    x, mask, temporal, scale, y = batch

    def step():
        loss = model_loss(model(x, mask, temporal, scale, y), y, scale, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def cpu_throughput(cfg: ModelConfig, b: int, repeats: int) -> dict:
    model = build_model(cfg).train()
    step = train_step_fn(model, cfg, make_batch(cfg, b))
    s_train = median_time(step, repeats)
    s_train_wall = median_time(step, 1, warmup=0, clock=time.perf_counter)
    model.eval()
    one = make_batch(cfg, 1)[:4]
    with torch.inference_mode():
        s_infer = median_time(lambda: model(*one), max(5, repeats))
        s_infer_wall = median_time(lambda: model(*one), max(5, repeats), clock=time.perf_counter)
    return {"batch": b, "train_step_s": s_train, "train_samples_per_s": b / s_train,
            "train_step_wall_s": s_train_wall, "infer_latency_ms": 1e3 * s_infer,
            "infer_latency_wall_ms": 1e3 * s_infer_wall}


def profile_train_step(cfg: ModelConfig, b: int, path: Path) -> str:
    model = build_model(cfg).train()
    step = train_step_fn(model, cfg, make_batch(cfg, b))
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    path.write_text(table)
    return table


def cuda_profile(b: int = 128) -> str:
    """Top CUDA kernels of one eager bf16 training step of the default config."""
    cfg = DEFAULT
    model = build_model(cfg).to("cuda").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x, mask, temporal, scale, y = make_batch(cfg, b, "cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model_loss(model(x, mask, temporal, scale, y), y, scale, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=70)


def cuda_bench(repeats: int) -> dict:
    cfg = DEFAULT
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    sync = torch.cuda.synchronize
    for b in (128,):
        batch = make_batch(cfg, b, dev)
        for compiled in (False, True):
            torch.manual_seed(0)
            torch.cuda.reset_peak_memory_stats()
            model = build_model(cfg).to(dev).train()
            fwd = torch.compile(model) if compiled else model
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            x, mask, temporal, scale, y = batch

            def step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model_loss(fwd(x, mask, temporal, scale, y), y, scale, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()

            t0 = time.perf_counter()
            step()
            sync()
            first = time.perf_counter() - t0
            s = median_time(step, repeats, warmup=2, sync=sync, clock=time.perf_counter)
            key = f"train_b{b}_{'compiled' if compiled else 'eager'}"
            out[key] = {"step_ms": 1e3 * s, "samples_per_s": b / s, "first_step_s": first,
                        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
            print(key, out[key], flush=True)
            del model, fwd, opt
    model = build_model(cfg).to(dev).eval()
    one = make_batch(cfg, 1, dev)[:4]
    for name, fwd in (("eager", model), ("compiled", torch.compile(model))):
        def infer():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                fwd(*one)

        infer()
        out[f"infer_b1_{name}_ms"] = 1e3 * median_time(infer, 50, warmup=5, sync=sync, clock=time.perf_counter)
        print(name, out[f"infer_b1_{name}_ms"], flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="peak,flops,default,small,fallback,profile")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=8, help="default-config CPU batch")
    p.add_argument("--small-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="/tmp/bench_model.json", help="results JSON (the profile goes next to it)")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.device == "cuda":
        if args.only == "profile":
            table = cuda_profile()
            print(table)
            Path(args.out).write_text(table)
            return
        res = cuda_bench(max(args.repeats, 10))
        print(json.dumps(res, indent=2))
        Path(args.out).write_text(json.dumps(res, indent=2))
        return
    torch.set_num_threads(1)
    only = set(args.only.split(","))
    res: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if "peak" in only or "default" in only or "small" in only:
        res["matmul_peak_gflops"] = matmul_peak()
        print("fp32 matmul peak, 1 core:", round(res["matmul_peak_gflops"], 1), "GFLOP/s", flush=True)
    cfgs = {"default": DEFAULT, **SMALL, **PER_BAR_SMALL}
    if "flops" in only or "default" in only or "small" in only:
        for name, cfg in cfgs.items():
            fwd = count_flops(cfg, 1, backward=False)
            train = count_flops(cfg, 2, backward=True) / 2
            res[name] = {"params": count_parameters(build_model(cfg)), "fwd_gflop_per_sample": fwd / 1e9,
                         "train_gflop_per_sample": train / 1e9, "config": dataclasses.asdict(cfg)}
            print(name, {k: v for k, v in res[name].items() if k != "config"}, flush=True)
    runs = [("default", args.batch)] if "default" in only else []
    runs += [(n, args.small_batch) for n in SMALL] if "small" in only else []
    for name, b in runs:
        r = cpu_throughput(cfgs[name], b, args.repeats)
        r["achieved_train_gflops"] = r["train_samples_per_s"] * res[name]["train_gflop_per_sample"]
        r["fraction_of_peak"] = r["achieved_train_gflops"] / res["matmul_peak_gflops"]
        r["infer_gflops"] = res[name]["fwd_gflop_per_sample"] / (r["infer_latency_ms"] / 1e3)
        res[name]["cpu_1core"] = r
        print(name, r, flush=True)
    if "fallback" in only:
        # attn_dropout > 0 sends CPU SDPA to its math kernel (T x T scores per head in memory).
        b = 2
        for p_attn in (0.0, 0.1):
            cfg = dataclasses.replace(DEFAULT, attn_dropout=p_attn)
            step = train_step_fn(build_model(cfg).train(), cfg, make_batch(cfg, b))
            res[f"default_b{b}_attn_dropout_{p_attn}_step_s"] = s = median_time(step, 2)
            print(f"default, batch {b}, attn_dropout {p_attn}: {s:.2f} s per step", flush=True)
    if "profile" in only:
        table = profile_train_step(DEFAULT, args.batch, Path(args.out).with_suffix(".profile.txt"))
        print(table)
    if "peak" in only:
        res["matmul_peak_gflops_end"] = matmul_peak()  # drift check on a shared machine
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
