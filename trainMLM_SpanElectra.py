"""Train the generator: a span-level masked LM (SpanBERT masking + span-boundary objective).

    python trainMLM_SpanElectra.py --features_dir FEAT --out_dir GEN --model_size tiny --max_steps 600
    torchrun --nproc_per_node 2 trainMLM_SpanElectra.py ...      # several processes (DDP)

Saves GEN/generator (loads with transformers.ElectraForMaskedLM.from_pretrained, the tokenizer
beside it), GEN/metrics.jsonl and resumable checkpoints (--resume_from latest).
"""
import logging
import os

import torch
from tqdm import tqdm

import training_utils as tu
from argument import MLM_trainDataArgs, MLM_trainingConfig, MLM_validDataArgs, run_main
from modelling_span_electra import SpanElectraGenerator, electra_configs, save_generator
from process import MLMDataset

logger = logging.getLogger("span_electra")


def generator_metrics(out, batch, baseline_token=None):
    """Per-batch generator metrics (sums are turned into means by the caller); with baseline_token,
    also the accuracy of always predicting that token (the most frequent one)."""
    masked = batch["labels"] != -100
    metrics = {"loss": out["loss"].item(), "mlm_loss": out["mlm_loss"].item(),
               "mlm_accuracy": (out["logits"].argmax(-1) == out["targets"]).float().mean().item(),
               "mask_ratio": (masked.sum() / (batch["attention_mask"].sum() - 2 * len(masked))).item(),
               "mean_span_length": (masked.sum() / (masked & (batch["span_position"] == 0)).sum().clamp(min=1)).item()}
    if "sbo_loss" in out:
        metrics["sbo_loss"] = out["sbo_loss"].item()
    if baseline_token is not None:
        metrics["mlm_baseline_accuracy"] = (out["targets"] == baseline_token).float().mean().item()
    return metrics


@torch.no_grad()
def evaluate(model, dataset, config, runtime):
    model.eval()
    totals, n = {}, 0
    limit = config.eval_batches or len(dataset)
    baseline_token = dataset.features.most_frequent_token()
    for i in range(min(limit, len(dataset))):
        batch = tu.to_device(dataset[i], runtime.device)
        with tu.autocast(runtime, config.bf16):
            out = model(**batch)
        for k, v in generator_metrics(out, batch, baseline_token).items():
            totals[k] = totals.get(k, 0.0) + v
        n += 1
    model.train()
    return tu.all_reduce_mean({k: v / max(n, 1) for k, v in totals.items()}, runtime)


def main(config: MLM_trainingConfig = None):
    config = config or MLM_trainingConfig()
    runtime, train_set, valid_set = tu.prepare_run(config, MLMDataset, MLM_trainDataArgs, MLM_validDataArgs)
    features = train_set.features
    gen_config, _ = electra_configs(config.model_size, features.vocab_size, features.max_seq_len,
                                    **config.model_overrides())
    model = SpanElectraGenerator(gen_config, use_sbo=config.use_sbo).to(runtime.device)
    optimizer, scheduler = tu.build_optimization(model, config)

    train_model, stream, log, step = tu.start_run(config, model, optimizer, scheduler, train_set, runtime, "trainMLM")
    logger.info("generator: %s, %.1fM parameters, %d train sequences of %d tokens, %d process(es)", config.model_size,
                sum(p.numel() for p in model.parameters()) / 1e6, len(train_set.data), features.max_seq_len,
                runtime.world_size)

    model.train()
    speed, totals, n = tu.Throughput(), {}, 0
    bar = tqdm(total=config.max_steps, initial=step, desc="generator", disable=not runtime.is_main)
    while step < config.max_steps:
        for micro in range(config.gradient_accumulation_steps):
            batch = tu.to_device(next(stream), runtime.device)
            with tu.no_sync(train_model, micro < config.gradient_accumulation_steps - 1), tu.autocast(runtime, config.bf16):
                out = train_model(**batch)
            (out["loss"] / config.gradient_accumulation_steps).backward()
            for k, v in generator_metrics(out, batch).items():
                totals[k] = totals.get(k, 0.0) + v
            n += 1
            speed.add(batch["attention_mask"].sum().item() * runtime.world_size)
        tu.optimizer_step(model, optimizer, scheduler, config.max_grad_norm)
        step += 1
        tu.check_finite(totals["loss"] / n, step)
        bar.update(1)

        if step % config.log_every == 0 or step == config.max_steps:
            row = {"step": step, **tu.all_reduce_mean({k: v / n for k, v in totals.items()}, runtime),
                   "lr": scheduler.get_last_lr()[0], "tokens_per_sec": speed.rate()}
            log.write(row)
            bar.set_postfix(mlm_loss=f"{row['mlm_loss']:.3f}", mlm_acc=f"{row['mlm_accuracy']:.3f}")
            totals, n = {}, 0
        if valid_set is not None and tu.is_due(step, config.eval_every, config.max_steps):
            row = {"step": step, "split": "valid", **evaluate(model, valid_set, config, runtime)}
            log.write(row)
            logger.info("step %d valid: mlm_loss %.4f, mlm_accuracy %.4f (always the most frequent token: %.4f)",
                        step, row["mlm_loss"], row["mlm_accuracy"], row["mlm_baseline_accuracy"])
        if runtime.is_main and tu.is_due(step, config.save_every, config.max_steps):
            tu.save_training_state(config, step, model, optimizer, scheduler, stream)
    bar.close()
    log.write_done(step, model, runtime)

    out = os.path.join(config.out_dir, "generator")
    if runtime.is_main:
        save_generator(model, out, os.path.join(features.dir, "tokenizer"))
        logger.info("generator saved to %s", out)
    tu.teardown_runtime(runtime)
    return out


if __name__ == "__main__":
    run_main(main, MLM_trainingConfig)
