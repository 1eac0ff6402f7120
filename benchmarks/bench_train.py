"""Joint training step speed at ELECTRA-Small size: ours against the plain transformers baseline.

    python benchmarks/bench_train.py                      # CPU: batch 32, fp32 (+ bf16 where the CPU has it)
    python benchmarks/bench_train.py --device cuda --half fp16   # GPU in fp16 (a T4's or V100's: the default there)
    python benchmarks/bench_train.py --device cuda         # GPU: batch 128, every variant below
    python benchmarks/bench_train.py --compile             # CPU: also the compiled variants

Both run the same recipe on the same full sequences (batch x seq_len, vocabulary 30,522): mask 15%,
generator MLM loss, sample replacements, discriminator loss x 50, backward, clip, AdamW step.
  baseline:  ElectraForMaskedLM + ElectraForPreTraining as a user writes them: token masking in
             torch, full-vocabulary logits at every position, boolean indexing, multinomial
             sampling, plain AdamW; in fp32 (no TF32), and in bf16 autocast with torch.compile on
             each model (the best a user gets from transformers alone).
  ours:      trainSpanElectra.py's joint step: SpanElectraJoint on batches masked ahead of time (as
             the DataLoader workers do), pinned and copied without waiting, fixed prediction slots,
             metrics computed in the step (compiled with it) and summed on the device, fused AdamW, TF32,
             dropout masks from cpu_dropout on a CPU (torch's with --torch_dropout);
             in fp32, bf16 autocast, and bf16 under torch.compile (CUDA graphs on a GPU), as --bf16
             --compile runs it.
The 16-bit variants are bf16 where the machine multiplies bf16 faster than fp32, else fp16 with a loss scaler
(torch's GradScaler, for both) on a GPU that multiplies fp16 faster (T4, V100), else none; --half picks one.
The fp32 pair alternates its steps (median per step); every other variant warms up, then runs
--steps steps with one synchronisation at the end. The compiled step is also timed on batches masked
by a DataLoader worker and pinned (training_utils.BatchStream, as the training scripts feed it). Prints tokens/s,
the measured matmul peaks, our model-FLOPs utilisation and, as JSON on the last line, the ratios.
"""
import argparse
import functools
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ElectraForMaskedLM, ElectraForPreTraining

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cpu_dropout  # noqa: E402
import training_utils as tu  # noqa: E402
from argument import MaskingArgs, SE_trainingConfig  # noqa: E402
from masking import IGNORE_INDEX, Masker, max_prediction_slots, prediction_slots  # noqa: E402
from modelling_span_electra import SpanElectraJoint, electra_configs  # noqa: E402
from tokenization import MASK_ID, SPECIAL_TOKENS  # noqa: E402
from trainSpanElectra import loss_and_metrics  # noqa: E402

VOCAB, SPECIAL = 30522, range(len(SPECIAL_TOKENS))  # BERT's vocabulary size, as ELECTRA's


def matmul_peak(dtype, n, device, seconds=1.0):
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


def make_ids(rng, batch_size, seq_len):
    ids = rng.integers(5, VOCAB, size=(batch_size, seq_len))
    ids[:, 0], ids[:, -1] = 2, 3
    return ids


def fp32_precision(device, tf32):
    """TF32 matmuls for fp32 on CUDA (ours sets it, as setup_runtime does; the plain baseline does not)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if tf32 else "highest")


# ---------------------------------------------------------------- ours: trainSpanElectra.py's joint step
def ours_train_step(model, device, compile_step):
    """The joint model's step as trainSpanElectra.py builds it: forward, loss (disc_weight 50) and
    metrics in one module, compiled when asked."""
    step = tu.TrainStep(model, functools.partial(loss_and_metrics, config=SE_trainingConfig()))
    return tu.compile_model(step, tu.Runtime(device)) if compile_step else step


def ours_setup(device, compile_step):
    """The joint model, its step and fused AdamW."""
    gen_cfg, disc_cfg = electra_configs("small", VOCAB, 128)
    torch.manual_seed(0)
    model = SpanElectraJoint(gen_cfg, disc_cfg).to(device)
    return model, ours_train_step(model, device, compile_step), tu.build_optimizer(model, 5e-4, 0.01)


MASKING = MaskingArgs(mask_replace_prob=0.85, random_replace_prob=0.0)  # SE_trainDataArgs' masking


@functools.lru_cache(maxsize=1)
def span_masker():
    """SpanBERT masking over a vocabulary where 3 tokens in 4 start a word."""
    return Masker(MASKING, np.random.default_rng(1).random(VOCAB) < 0.75, SPECIAL, MASK_ID, VOCAB)


def masked_batch(rng, batch_size, seq_len):
    """One batch as SEDataset builds it: span-masked random ids in prediction slots, original ids."""
    ids = make_ids(rng, batch_size, seq_len)
    batch = prediction_slots(span_masker()(ids, rng), max_prediction_slots(MASKING, seq_len))
    batch["original_ids"] = ids
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def ours_batches(rng, batch_size, seq_len, count, pin):
    """Masked batches as the DataLoader workers hand them over: prediction slots, pinned memory."""
    out = [masked_batch(rng, batch_size, seq_len) for _ in range(count)]
    return [{k: v.pin_memory() for k, v in batch.items()} for batch in out] if pin else out


class MaskedBatches(torch.utils.data.Dataset):
    """Batches masked on demand, served by index to training_utils.BatchStream's workers as SEDataset's are."""

    def __init__(self, batch_size, seq_len, length=100000):
        self.batch_size, self.seq_len, self.length = batch_size, seq_len, length

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return masked_batch(np.random.default_rng(index), self.batch_size, self.seq_len)


def ours_step(model, train_step, optimizer, scaler, batch, device, dtype, compiled, sums):
    batch = tu.to_device(batch, device)
    if compiled:
        torch.compiler.cudagraph_mark_step_begin()
    with tu.autocast(tu.Runtime(device), dtype):
        loss, metrics = train_step(batch)
    scaler.scale(loss).backward()
    sums.add(metrics)
    tu.optimizer_step(model, optimizer, _NoSchedule(), 1.0, scaler)


class _NoSchedule:
    def step(self):
        pass


def model_flops(model, batch, device):
    """FLOPs of one forward+backward of our model, counted by torch."""
    batch = tu.to_device(batch, device)
    with FlopCounterMode(display=False) as counter:
        gen_out, disc_out, _ = model(batch)
        (gen_out["loss"] + 50 * disc_out["loss"]).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# ---------------------------------------------------------------- the plain transformers baseline
def baseline_setup(device, compile_models):
    gen_cfg, disc_cfg = electra_configs("small", VOCAB, 128)
    torch.manual_seed(0)
    gen, disc = ElectraForMaskedLM(gen_cfg).to(device), ElectraForPreTraining(disc_cfg).to(device)
    gen.electra.embeddings = disc.electra.embeddings  # shared embeddings, as in ELECTRA
    gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight
    params = list({id(p): p for p in list(gen.parameters()) + list(disc.parameters())}.values())
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01, eps=1e-6)
    if compile_models:
        gen, disc = torch.compile(gen), torch.compile(disc)
    return (gen, disc), optimizer


def baseline_step(models, optimizer, scaler, ids, device, dtype):
    gen, disc = models
    ids = ids.to(device)
    special = ids < 5
    masked = torch.bernoulli(torch.full(ids.shape, 0.15, device=device)).bool() & ~special
    labels = ids.masked_fill(~masked, IGNORE_INDEX)
    inputs = ids.masked_fill(masked & torch.bernoulli(torch.full(ids.shape, 0.85, device=device)).bool(), MASK_ID)
    with torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        gen_out = gen(input_ids=inputs, labels=labels)
        with torch.no_grad():
            sampled = torch.multinomial(gen_out.logits[masked].float().softmax(-1), 1).squeeze(-1)
        corrupted = ids.clone()
        corrupted[masked] = sampled
        disc_out = disc(input_ids=corrupted, labels=(corrupted != ids).long())
        loss = gen_out.loss + 50 * disc_out.loss
    scaler.scale(loss).backward()  # fp16's GradScaler, as transformers' docs use it; a pass-through otherwise
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- timing
def time_steps(step, count, device, warmup):
    """Seconds per step over `count` steps after `warmup` steps (one sync at each end)."""
    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(count):
        step(warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / count


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_fp32_pair(device, batches, ids, steps):
    """The eager fp32 baseline and ours, steps alternating (drift on a shared machine hits both
    alike); median seconds per step of each."""
    fp32_precision(device, False)
    models, base_opt = baseline_setup(device, False)
    model, step, optimizer = ours_setup(device, False)
    sums, no_scaling = tu.MetricSums(), tu.loss_scaler(device, False)
    times = {"baseline": [], "ours": []}
    for i in range(steps + 1):
        fp32_precision(device, False)
        t_base = timed(lambda: baseline_step(models, base_opt, no_scaling, ids[i % len(ids)], device, None), device)
        fp32_precision(device, True)
        t_ours = timed(lambda: ours_step(model, step, optimizer, no_scaling, batches[i % len(batches)], device, None,
                                         False, sums), device)
        if i:  # the first round warms up
            times["baseline"].append(t_base)
            times["ours"].append(t_ours)
    return statistics.median(times["baseline"]), statistics.median(times["ours"])


def run_ours(device, batches, steps, dtype, compiled, loader_too=False):
    """Seconds per step of our step on the in-memory batches, autocast to dtype (None: fp32); with loader_too,
    also (same model, no recompile) on batches masked by a DataLoader worker and pinned, as the training scripts
    get them."""
    fp32_precision(device, True)
    model, train_step, optimizer = ours_setup(device, compiled)
    sums, scaler = tu.MetricSums(), tu.loss_scaler(device, dtype == torch.float16)
    t = time_steps(lambda i: ours_step(model, train_step, optimizer, scaler, batches[i % len(batches)], device, dtype,
                                       compiled, sums), steps, device, warmup=3 if compiled else 1)
    row = sums.read(tu.Runtime(device))  # the metrics were summed on the device all along
    assert np.isfinite(row["loss"]), row
    if not loader_too:
        return t
    batch = batches[0]
    stream = tu.BatchStream(MaskedBatches(batch["input_ids"].shape[0], batch["input_ids"].shape[1]), num_workers=1,
                            pin_memory=device.type == "cuda")
    t_loader = time_steps(lambda i: ours_step(model, train_step, optimizer, scaler, next(stream), device, dtype,
                                              compiled, sums), steps, device, warmup=5)  # the worker fills its queue
    return t, t_loader


def run_baseline(device, ids, steps, dtype, compiled):
    fp32_precision(device, False)
    models, optimizer = baseline_setup(device, compiled)
    scaler = tu.loss_scaler(device, dtype == torch.float16)  # torch's GradScaler, as run_fp32_pair's and ours
    return time_steps(lambda i: baseline_step(models, optimizer, scaler, ids[i % len(ids)], device, dtype), steps,
                      device, warmup=3 if compiled else 1)


HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pick_half(choice, device, peak32, peak_bf16):
    """The 16-bit autocast to time ('bf16', 'fp16' or None) and its matmul peak: --half's, else bf16 where it
    multiplies faster than fp32, else fp16 on a GPU where that does (a T4 or V100: bf16 emulated)."""
    if choice == "none":
        return None, None
    if choice == "bf16" or (choice == "auto" and peak_bf16 > peak32):
        return "bf16", peak_bf16
    if choice == "fp16" or device.type == "cuda":
        peak_fp16 = matmul_peak(torch.float16, 8192 if device.type == "cuda" else 256, device)
        print(f"matmul peak fp16 {peak_fp16:.0f} GFLOP/s")
        if choice == "fp16" or peak_fp16 > peak32:
            return "fp16", peak_fp16
    return None, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 30 on CUDA, 3 on CPU)")
    parser.add_argument("--batch_size", type=int, default=None, help="default 128 on CUDA, 32 on CPU")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="CPU: also time the compiled variants (always on CUDA)")
    parser.add_argument("--quick", action="store_true", help="time only ours, compiled (bf16 where it pays), and the "
                        "same fed by a DataLoader worker: the figure trainSpanElectra.py's logged tokens/s is held to")
    parser.add_argument("--half", choices=("auto", "bf16", "fp16", "none"), default="auto",
                        help="the 16-bit autocast timed (auto: bf16 where it is faster than fp32, else fp16 on a GPU "
                        "where that is)")
    parser.add_argument("--torch_dropout", action="store_true", help="CPU: ours with torch's dropout, not cpu_dropout's "
                        "masks: what the rest of our step gains alone")
    args = parser.parse_args()
    if args.torch_dropout:
        cpu_dropout.uses_fast_path = lambda x, p, training: False  # dropout() and the attention then call torch's
    device = tu.resolve_device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (30 if cuda else 3)
    batch_size = args.batch_size or (128 if cuda else 32)
    if steps < 1 or batch_size < 1 or args.seq_len < 8:
        parser.error("--steps and --batch_size must be at least 1, --seq_len at least 8")
    rng = np.random.default_rng(0)
    tokens = batch_size * args.seq_len
    name = torch.cuda.get_device_name(device) if cuda else "cpu"

    peak32 = matmul_peak(torch.float32, 4096 if cuda else 1024, device)
    peak_bf16 = matmul_peak(torch.bfloat16, 8192 if cuda else 256, device)
    print(f"{name}: matmul peak fp32 {peak32:.0f} GFLOP/s, bf16 {peak_bf16:.0f} GFLOP/s; batch {batch_size} x {args.seq_len}")
    half, peak16 = pick_half(args.half, device, peak32, peak_bf16)  # 16-bit autocast only pays where it multiplies fast
    # a 16-bit step's MFU against the faster of its dtype's peak and fp32's: where 16-bit matmuls are emulated
    # (a forced --half on the CPU) autocast's fp32 ops alone would outrun the 16-bit peak, an MFU above 100%
    peak_half = max(peak16, peak32) if half else peak32
    dtype = HALF.get(half)
    compiled = cuda or args.compile or args.quick

    batches = ours_batches(rng, batch_size, args.seq_len, 8, pin=cuda)
    ids = [torch.from_numpy(make_ids(rng, batch_size, args.seq_len)) for _ in range(8)]
    model, _, _ = ours_setup(device, False)
    flops = model_flops(model, batches[0], device)
    del model

    t = {}
    if not args.quick:  # the baselines and our uncompiled steps
        t.update(zip(("baseline", "ours"), run_fp32_pair(device, batches, ids, steps)))
        if half:
            t[f"ours_{half}"] = run_ours(device, batches, steps, dtype, False)
        if half and compiled:
            t[f"baseline_{half}_compiled"] = run_baseline(device, ids, steps, dtype, True)
    if compiled:
        key = f"ours_{half}_compiled" if half else "ours_compiled"
        t[key], t[key + "_loader"] = run_ours(device, batches, steps, dtype, True, True)

    labels = {"baseline": "baseline (transformers, fp32)", f"baseline_{half}_compiled": f"baseline ({half} + compile)",
              "ours": "ours (fp32, TF32 on CUDA)", f"ours_{half}": f"ours ({half})",
              f"ours_{half}_compiled": f"ours ({half} + compile)", "ours_compiled": "ours (fp32 + compile)",
              f"ours_{half}_compiled_loader": "  the same, batches from a worker",
              "ours_compiled_loader": "  the same, batches from a worker"}
    for key, seconds in t.items():
        peak = peak_half if half and half in key else peak32
        mfu = f", MFU {flops / seconds / 1e9 / peak:.1%}" if key.startswith("ours") else ""
        print(f"{labels[key]:<32} {tokens / seconds:>12,.0f} tokens/s ({seconds * 1e3:.1f} ms/step){mfu}")
    if not half:
        print("16-bit autocast skipped: bf16 (and, on a GPU, fp16) matmuls are slower than fp32 on this machine (no "
              "AVX512-BF16/AMX)")

    def ratio(a, b):
        return round(t[b] / t[a], 3) if a in t and b in t else None

    def half_figures(tag):
        """The 16-bit figures under tag's names (None where that autocast was not timed)."""
        compiled_key = f"ours_{tag}_compiled"
        return {f"speedup_{tag}_vs_transformers_baseline": ratio(f"ours_{tag}", "baseline"),
                f"speedup_{tag}_compiled_vs_transformers_baseline": ratio(compiled_key, "baseline"),
                f"speedup_vs_transformers_{tag}_compiled": ratio(compiled_key, f"baseline_{tag}_compiled"),
                f"mfu_{tag}": round(flops / t[compiled_key] / 1e9 / peak_half, 4) if compiled_key in t else None}
    result = {
        "device": name, "batch_size": batch_size, "seq_len": args.seq_len, "gflop_per_step": round(flops / 1e9),
        "matmul_peak_gflops_fp32": round(peak32), "matmul_peak_gflops_bf16": round(peak_bf16),
        **({"matmul_peak_gflops_fp16": round(peak16)} if half == "fp16" else {}),
        **{f"tokens_per_sec_{k}": round(tokens / v) for k, v in t.items()},
        "speedup_vs_transformers_baseline": ratio("ours", "baseline"),
        **half_figures("bf16"), **(half_figures("fp16") if half == "fp16" else {}),
        "loader_vs_in_memory": ratio(f"ours_{half}_compiled_loader", f"ours_{half}_compiled") or ratio(
            "ours_compiled_loader", "ours_compiled"),  # 1.0: the data path costs the step nothing
        "mfu": round(flops / t["ours"] / 1e9 / peak32, 4) if "ours" in t else None,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
