"""Joint training step speed at ELECTRA-Small size, ours against the plain transformers baseline.

    python benchmarks/bench_train.py [--steps 3] [--batch_size 32] [--seq_len 128] [--device cpu] [--compile]

Both run the same recipe on the same full sequences (batch x seq_len, vocabulary 30522): mask 15%,
generator MLM loss, sample replacements, discriminator loss x 50, backward, clip, AdamW step.
  ours:      SpanElectraJoint (span masking in numpy, MLM logits only at masked positions, plus the
             span-boundary heads), fp32, and with bf16 autocast where the hardware has fast bf16;
  baseline:  ElectraForMaskedLM + ElectraForPreTraining as a user would write them: token masking
             in torch, full-vocabulary logits at every position, tied and shared embeddings.
  --compile: ours also runs under torch.compile (as trainSpanElectra.py --compile does); the
             baseline stays eager, as a user would write it.
Prints tokens/s, the measured matmul peak (fp32, bf16), our model-FLOPs utilisation, and the
ratios as one JSON object on the last line.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from argument import MaskingArgs  # noqa: E402
from masking import Masker  # noqa: E402
from modelling_span_electra import SpanElectraJoint, electra_configs  # noqa: E402
from training_utils import build_optimizer  # noqa: E402

VOCAB, MASK_ID, SPECIAL = 30522, 4, range(5)


def matmul_peak(dtype, n, device, seconds=2.0):
    """Sustained GFLOP/s of an n x n matmul."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def make_batch(rng, batch_size, seq_len):
    ids = rng.integers(5, VOCAB, size=(batch_size, seq_len))
    ids[:, 0], ids[:, -1] = 2, 3
    return ids


# ---------------------------------------------------------------- ours
def ours_setup(device):
    gen_cfg, disc_cfg = electra_configs("small", VOCAB, 128)
    torch.manual_seed(0)
    model = SpanElectraJoint(gen_cfg, disc_cfg).to(device)
    word_starts = np.random.default_rng(1).random(VOCAB) < 0.75
    masker = Masker(MaskingArgs(mask_replace_prob=0.85, random_replace_prob=0.0), word_starts, SPECIAL, MASK_ID, VOCAB)
    return model, build_optimizer(model, 5e-4, 0.01), masker


def ours_step(model, optimizer, masker, ids, rng, device, bf16):
    batch = masker(ids, rng)
    batch.pop("span_word_lengths")
    batch["attention_mask"] = np.ones_like(ids)
    batch["original_ids"] = ids
    batch = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        gen_out, disc_out, _ = model(batch)
        loss = gen_out["loss"] + 50 * disc_out["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- the plain transformers baseline
def baseline_setup(device):
    from transformers import ElectraForMaskedLM, ElectraForPreTraining
    gen_cfg, disc_cfg = electra_configs("small", VOCAB, 128)
    torch.manual_seed(0)
    gen, disc = ElectraForMaskedLM(gen_cfg).to(device), ElectraForPreTraining(disc_cfg).to(device)
    gen.electra.embeddings = disc.electra.embeddings  # shared embeddings, as in ELECTRA
    gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight
    params = list({id(p): p for p in list(gen.parameters()) + list(disc.parameters())}.values())
    return (gen, disc), torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01, eps=1e-6)


def baseline_step(models, optimizer, ids, device):
    gen, disc = models
    ids = torch.from_numpy(ids).to(device)
    special = ids < 5
    masked = torch.bernoulli(torch.full(ids.shape, 0.15, device=device)).bool() & ~special
    labels = ids.masked_fill(~masked, -100)
    inputs = ids.masked_fill(masked & torch.bernoulli(torch.full(ids.shape, 0.85, device=device)).bool(), MASK_ID)
    gen_out = gen(input_ids=inputs, labels=labels)
    with torch.no_grad():
        sampled = torch.multinomial(gen_out.logits[masked].float().softmax(-1), 1).squeeze(-1)
    corrupted = ids.clone()
    corrupted[masked] = sampled
    disc_out = disc(input_ids=corrupted, labels=(corrupted != ids).long())
    loss = gen_out.loss + 50 * disc_out.loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def model_flops(model, masker, ids, rng, device):
    """FLOPs of one forward+backward of our model, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode
    batch = masker(ids, rng)
    batch.pop("span_word_lengths")
    batch["attention_mask"] = np.ones_like(ids)
    batch["original_ids"] = ids
    batch = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
    with FlopCounterMode(display=False) as counter:
        gen_out, disc_out, _ = model(batch)
        (gen_out["loss"] + 50 * disc_out["loss"]).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1 or args.seq_len < 8:
        parser.error("--steps and --batch_size must be at least 1, --seq_len at least 8")
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    tokens = args.batch_size * args.seq_len

    peak32 = matmul_peak(torch.float32, 2048 if device.type == "cuda" else 1024, device)
    peak16 = matmul_peak(torch.bfloat16, 2048 if device.type == "cuda" else 256, device)
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")

    ours, opt, masker = ours_setup(device)
    base, base_opt = baseline_setup(device)
    ids = [make_batch(rng, args.batch_size, args.seq_len) for _ in range(args.steps + 1)]
    flops = model_flops(ours, masker, ids[0], rng, device)

    times = {"ours": [], "baseline": []}
    ours_step(ours, opt, masker, ids[0], rng, device, False)  # warm-up
    baseline_step(base, base_opt, ids[0], device)
    for i in range(1, args.steps + 1):  # alternate, so drift hits both alike
        times["ours"].append(timed(lambda: ours_step(ours, opt, masker, ids[i], rng, device, False), device))
        times["baseline"].append(timed(lambda: baseline_step(base, base_opt, ids[i], device), device))
    t_ours, t_base = statistics.median(times["ours"]), statistics.median(times["baseline"])

    t_bf16 = None
    if peak16 > peak32:  # bf16 autocast only pays where the hardware multiplies bf16 fast
        ours_step(ours, opt, masker, ids[0], rng, device, True)
        t_bf16 = statistics.median(timed(lambda: ours_step(ours, opt, masker, ids[i], rng, device, True), device)
                                   for i in range(1, args.steps + 1))

    t_compiled = None
    if args.compile:
        compiled = torch.compile(ours)
        for i in range(2):  # compiles, then recompiles once with dynamic shapes (masked counts vary)
            start = time.perf_counter()
            ours_step(compiled, opt, masker, ids[i], rng, device, False)
            print(f"torch.compile warm-up step {i + 1}: {time.perf_counter() - start:.0f} s")
        t_compiled = statistics.median(timed(lambda: ours_step(compiled, opt, masker, ids[i], rng, device, False), device)
                                       for i in range(1, args.steps + 1))

    print(f"baseline (transformers, fp32): {tokens / t_base:.0f} tokens/s ({t_base:.2f} s/step)")
    print(f"ours (fp32):                   {tokens / t_ours:.0f} tokens/s ({t_ours:.2f} s/step), "
          f"{flops / 1e9:.0f} GFLOP/step, MFU {flops / t_ours / 1e9 / peak32:.1%} of the fp32 peak")
    if t_bf16:
        print(f"ours (bf16 autocast):          {tokens / t_bf16:.0f} tokens/s ({t_bf16:.2f} s/step), "
              f"MFU {flops / t_bf16 / 1e9 / peak16:.1%} of the bf16 peak")
    else:
        print("ours (bf16 autocast):          skipped: bf16 matmuls are slower than fp32 on this machine "
              "(no AVX512-BF16/AMX)")
    if t_compiled:
        print(f"ours (fp32, torch.compile):    {tokens / t_compiled:.0f} tokens/s ({t_compiled:.2f} s/step), "
              f"MFU {flops / t_compiled / 1e9 / peak32:.1%} of the fp32 peak")
    print(json.dumps({
        "device": str(device), "tokens_per_sec_baseline": round(tokens / t_base), "tokens_per_sec_ours": round(tokens / t_ours),
        "tokens_per_sec_ours_bf16": round(tokens / t_bf16) if t_bf16 else None,
        "matmul_peak_gflops_fp32": round(peak32), "matmul_peak_gflops_bf16": round(peak16),
        "speedup_vs_transformers_baseline": round(t_base / t_ours, 3),
        "speedup_bf16_vs_transformers_baseline": round(t_base / t_bf16, 3) if t_bf16 else None,
        "mfu": round(flops / t_ours / 1e9 / peak32, 4),
        **({"tokens_per_sec_ours_compiled": round(tokens / t_compiled),
            "speedup_compiled_vs_transformers_baseline": round(t_base / t_compiled, 3)} if t_compiled else {}),
    }))


if __name__ == "__main__":
    main()
