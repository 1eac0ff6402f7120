"""Train the generator: a span-level masked LM (SpanBERT masking + span-boundary objective).

    python trainMLM_SpanElectra.py --features_dir FEAT --out_dir GEN --model_size tiny --max_steps 600
    torchrun --nproc_per_node 2 trainMLM_SpanElectra.py ...      # several processes (DDP)

Saves GEN/generator (loads with transformers.ElectraForMaskedLM.from_pretrained, the tokenizer
beside it), GEN/metrics.jsonl and resumable checkpoints (--resume_from latest).
"""
import logging
import os

import torch

import training_utils as tu
from argument import GENERATOR_RUN, MLM_trainingConfig, checked_config, run_main
from modelling_span_electra import SpanElectraGenerator, electra_configs, load_pretrained, save_generator, weights_digest
from features import MLMDataset
from io_utils import progress_bar

logger = logging.getLogger("span_electra")


def loss_and_metrics(model, batch, baseline_token=None):
    """One forward pass: the masked-LM loss and the batch's metrics (device tensors; baseline_token:
    see training_utils.generator_metrics). Compiled with the model (TrainStep)."""
    out = model(**batch)
    return out["loss"], tu.generator_metrics(out, batch, baseline_token)


@torch.no_grad()
def evaluate(model, dataset, config, runtime):
    model.eval()
    sums = tu.MetricSums()
    baseline_token = dataset.features.most_frequent_token()
    for i in tu.eval_batch_indices(dataset, config.eval_batches):
        batch = tu.to_device(dataset[i], runtime.device)
        with tu.autocast(runtime, tu.amp_dtype(config)):
            sums.add(loss_and_metrics(model, batch, baseline_token)[1])
    model.train()
    return sums.read(runtime)


def build_model(config, features):
    """A fresh generator of config.model_size, or the pre-trained one in config.init_from. Returns
    (model, digests of the weights it started from, for the run's identity)."""
    if not config.init_from:
        gen_config, _ = electra_configs(config.model_size, features.vocab_size, features.max_seq_len,
                                        pad_token_id=features.special_ids["[PAD]"], **config.model_overrides())
        return SpanElectraGenerator(gen_config, use_sbo=config.use_sbo), None
    model, path, loaded = load_pretrained(config.init_from, "generator", features, config.use_sbo,
                                          sizes=config.model_overrides(), model_size=config.given_model_size())
    logger.info("init_from: %s from %s (its architecture: hidden %d, %d layers)", loaded, path,
                model.config.hidden_size, model.config.num_hidden_layers)
    return model, {"init_generator_weights": weights_digest(path)}


def main(config: MLM_trainingConfig = None):
    config = checked_config(config, MLM_trainingConfig)
    runtime, train_set, valid_set = tu.prepare_run(config, MLMDataset)
    features = train_set.features
    model, inputs = build_model(config, features)
    model = model.to(runtime.device)
    optimizer, scheduler, scaler = tu.build_optimization(model, config)

    train_step, stream, log, step = tu.start_run(config, model, loss_and_metrics, optimizer, scheduler, train_set,
                                                 runtime, GENERATOR_RUN, inputs, scaler)
    logger.info("generator: %s, %s parameters, %d train sequences of %d tokens, %d process(es)",
                tu.size_label(config), tu.parameter_count(model), len(train_set.data),
                features.max_seq_len, runtime.world_size)

    model.train()
    speed, sums = tu.Throughput(runtime.device), tu.MetricSums(skip_nonfinite=config.fp16)
    precision = tu.amp_dtype(config)  # bf16, fp16 or None (fp32)
    bar = progress_bar(total=config.max_steps, initial=step, desc="generator", disable=not runtime.is_main)
    while step < config.max_steps:
        speed.step_begins()
        for micro in range(config.gradient_accumulation_steps):
            batch = tu.to_device(next(stream), runtime.device)
            tu.mark_step_begin(config)
            with tu.no_sync(train_step, micro < config.gradient_accumulation_steps - 1), tu.autocast(runtime, precision):
                loss, metrics = train_step(batch)
            scaler.scale(loss / config.gradient_accumulation_steps).backward()
            sums.add(metrics)
            speed.add(batch["input_ids"].numel() * runtime.world_size)
        tu.optimizer_step(model, optimizer, scheduler, config.max_grad_norm, scaler)
        speed.step_ends()
        step += 1
        bar.update(1)

        if tu.log_due(step, config):
            row = {"step": step, **sums.read(runtime), "lr": scheduler.get_last_lr()[0], "tokens_per_sec": speed.rate(),
                   "data_wait_ms": stream.take_wait_ms(), **speed.pace(), **tu.loss_scale_row(scaler)}
            tu.check_finite(row["loss"], step, tu.nan_hint(config))
            tu.warn_short_masking(row, config, train_set)
            log.write(row)
            bar.set_postfix(mlm_loss=f"{row['mlm_loss']:.3f}", mlm_acc=f"{row['mlm_accuracy']:.3f}")
        if valid_set is not None and tu.is_due(step, config.eval_every, config.max_steps):
            with speed.paused():
                row = {"step": step, "split": "valid", **evaluate(model, valid_set, config, runtime)}
            log.write(row)
            logger.info("step %d valid: mlm_loss %.4f, mlm_accuracy %.4f%s (always the most frequent token: %.4f)",
                        step, row["mlm_loss"], row["mlm_accuracy"],
                        f", sbo_accuracy {row['sbo_accuracy']:.4f}" if "sbo_accuracy" in row else "",
                        row["mlm_baseline_accuracy"])
        if runtime.is_main and tu.is_due(step, config.save_every, config.max_steps):
            with speed.paused():
                tu.save_training_state(config, step, model, optimizer, scheduler, stream, log, scaler)
    bar.close()

    out = os.path.join(config.out_dir, "generator")
    if runtime.is_main:
        save_generator(model, out, os.path.join(features.dir, "tokenizer"), trained_seq_len=features.max_seq_len)
        logger.info("generator saved to %s", out)
    log.write_done(step, model, runtime)  # after the models are saved: a 'done' row means they are there
    tu.teardown_runtime(runtime)
    return out


if __name__ == "__main__":
    run_main(main, MLM_trainingConfig)
