"""Where the joint training step's time goes: torch.profiler over bench_train.py's step ('ours').

    python benchmarks/profile_step.py --device cuda                 # bf16 + compile (CUDA graphs)
    python benchmarks/profile_step.py --device cuda --no_sbo --slots 19   # ELECTRA's heads only

Prints ms/step (wall), the GPU time of the kernels per step, and the kernels that take the most.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_train as bench  # noqa: E402
import training_utils as tu  # noqa: E402
from modelling_span_electra import SpanElectraJoint, electra_configs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--slots", type=int, default=0, help="prediction slots (0: the masking default)")
    parser.add_argument("--no_sbo", action="store_true", help="without the generator's span-boundary head")
    parser.add_argument("--no_compile", action="store_true")
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument("--attn_dropout", type=float, default=None, help="override attention_probs_dropout_prob")
    parser.add_argument("--attn", default=None, help="attention implementation (sdpa, eager, ...)")
    parser.add_argument("--top", type=int, default=25, help="kernels listed")
    args = parser.parse_args()
    device = tu.resolve_device(args.device)
    compiled, bf16 = not args.no_compile, not args.fp32
    bench.fp32_precision(device, True)
    batches = bench.ours_batches(np.random.default_rng(0), args.batch_size, 128, 4, pin=device.type == "cuda")
    if args.slots:
        batches = [{k: (v[:, :args.slots].contiguous() if v.shape[1] != 128 and k != "original_ids" else v)
                    for k, v in b.items()} for b in batches]
    gen_cfg, disc_cfg = electra_configs("small", bench.VOCAB, 128)
    for cfg in (gen_cfg, disc_cfg):
        if args.attn_dropout is not None:
            cfg.attention_probs_dropout_prob = args.attn_dropout
        if args.attn:
            cfg._attn_implementation = args.attn
    model = SpanElectraJoint(gen_cfg, disc_cfg, use_sbo=not args.no_sbo).to(device)
    train_step = bench.ours_train_step(model, device, compiled)
    optimizer, sums = tu.build_optimizer(model, 5e-4, 0.01), tu.MetricSums()
    scaler, dtype = tu.loss_scaler(device, False), torch.bfloat16 if bf16 else None

    def step(i):
        bench.ours_step(model, train_step, optimizer, scaler, batches[i % len(batches)], device, dtype, compiled, sums)

    start = time.perf_counter()
    for i in range(3):
        step(i)
    print(f"warm-up ({('compile, CUDA graph capture' if device.type == 'cuda' else 'compile') if compiled else 'eager'}): "
          f"{time.perf_counter() - start:.1f} s")
    seconds = bench.time_steps(step, args.steps, device, warmup=0)
    print(f"{seconds * 1e3:.2f} ms/step wall, {args.batch_size * 128 / seconds:,.0f} tokens/s "
          f"(slots {batches[0]['masked_lm_positions'].shape[1]}, sbo {not args.no_sbo}, bf16 {bf16}, compiled {compiled}, "
          f"attention {disc_cfg._attn_implementation} dropout {disc_cfg.attention_probs_dropout_prob})")
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(args.steps):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    # on the CPU, each op's own time: cpu_time_total counts its children again (compiled region > graph > mm)
    attr = "device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    kernels = [e for e in events if getattr(e, attr, 0) > 0 and (device.type != "cuda" or e.device_type.name == "CUDA")]
    total = sum(getattr(e, attr) for e in kernels) / args.steps / 1e3
    print(f"GPU kernel time per step: {total:.2f} ms" if device.type == "cuda" else f"CPU op time per step: {total:.1f} ms")
    for e in sorted(kernels, key=lambda e: -getattr(e, attr))[:args.top]:
        print(f"{getattr(e, attr) / args.steps / 1e3:8.3f} ms  {e.count // args.steps:5d}x  {e.key[:110]}")


if __name__ == "__main__":
    main()
