"""Train the discriminator: replaced-token detection plus the span-boundary predictive objective.

    python trainSpanElectra.py --mode two_stage --generator_dir GEN/generator --features_dir FEAT --out_dir SE
    python trainSpanElectra.py --mode joint --features_dir FEAT --out_dir SE      # ELECTRA's recipe
    torchrun --nproc_per_node 2 trainSpanElectra.py ...                         # several processes (DDP)

two_stage: the saved generator is loaded once and frozen; the discriminator starts from its
embeddings (and every weight whose shape matches), as SpanElectra's first release did (a discriminator that starts from the generator's representations). joint: both
train together with shared embeddings; loss = generator loss + disc_weight x discriminator loss.
Saves SE/discriminator (loads with transformers.ElectraForPreTraining.from_pretrained), in joint
mode also SE/generator, plus SE/metrics.jsonl and resumable checkpoints.
"""
import functools
import logging
import os

import torch

import training_utils as tu
from argument import DISCRIMINATOR_RUN, SE_trainingConfig, checked_config, run_main
from io_utils import progress_bar
from modelling_span_electra import (SpanElectraDiscriminator, SpanElectraJoint, SpanElectraTwoStage, check_fits_features,
                                    electra_configs, init_discriminator_from_generator, load_generator,
                                    load_pretrained, save_discriminator, save_generator,
                                    warn_untrained_positions, weights_digest)
from features import SEDataset

logger = logging.getLogger("span_electra")


def sampling_temperature(step, config):
    """Fast-ELECTRA's curriculum: the generator's samples start smoothed (temperature_start, easy to
    spot) and the temperature falls linearly to ELECTRA's 1 over the first temperature_decay of training."""
    decay_steps = config.temperature_decay * config.max_steps
    if config.temperature_start == 1.0 or step >= decay_steps:
        return 1.0
    return config.temperature_start + (1.0 - config.temperature_start) * step / decay_steps


def loss_and_metrics(model, batch, config, sample_rng=None, temperature=1.0, baseline_token=None):
    """One forward pass: the loss to optimise and the batch's metrics (device tensors), for either
    mode (baseline_token: see training_utils.generator_metrics). Compiled with the model (TrainStep)."""
    gen_out, disc_out, replaced = model(batch, sample_rng, temperature=temperature)
    metrics = tu.discriminator_counts(disc_out, replaced)
    if gen_out is None:
        return disc_out["loss"], metrics
    loss = gen_out["loss"] + config.disc_weight * disc_out["loss"]
    metrics.update(tu.generator_metrics(gen_out, batch, baseline_token))
    metrics["gen_loss"] = metrics.pop("loss")
    metrics["loss"] = loss.detach()
    return loss, metrics


def pretrained_parts(config, features):
    """The pre-trained discriminator (and, in joint mode, generator) in config.init_from, checked
    against the features. Returns (generator or None, discriminator, weight digests)."""
    sizes = dict(sizes=config.model_overrides(), model_size=config.given_model_size())  # the size flags given
    discriminator, disc_path, loaded = load_pretrained(config.init_from, "discriminator", features, config.use_span_head,
                                                       config.use_all_token, **sizes)
    parts, digests = [f"{loaded} from {disc_path}"], {"init_discriminator_weights": weights_digest(disc_path)}
    generator = None
    if config.mode == "joint":  # ELECTRA's joint training starts both models from it
        generator, gen_path, loaded = load_pretrained(config.init_from, "generator", features, config.use_sbo, **sizes)
        parts.append(f"{loaded} from {gen_path}")
        digests["init_generator_weights"] = weights_digest(gen_path)
    logger.info("init_from: %s", "; ".join(parts))
    return generator, discriminator, digests


def build_model(config, features):
    """The model of config.mode, fresh or from config.init_from. Returns (model, digests of the
    weights it started from, for the run's identity)."""
    model, inputs = build_recipe(config, features)
    generator = model.generator if config.mode == "joint" else model.frozen[0]
    if generator.config.vocab_size > features.vocab_size:  # a converted model's rows past its vocabulary
        model.sample_vocab_size = features.vocab_size
    return model, inputs


def build_recipe(config, features):
    """build_model's joint or two-stage model, before its sampling is held to the features' vocabulary."""
    gen_config, disc_config = electra_configs(config.model_size, features.vocab_size, features.max_seq_len,
                                              pad_token_id=features.special_ids["[PAD]"], **config.model_overrides())
    pretrained_gen, pretrained_disc, inputs = (None, None, {})
    if config.init_from:
        pretrained_gen, pretrained_disc, inputs = pretrained_parts(config, features)
    if config.mode == "joint":
        return SpanElectraJoint(gen_config, disc_config, config.use_sbo, config.use_all_token, config.use_span_head,
                                config.gradient_disentangled, config.mask_ratio, generator=pretrained_gen,
                                discriminator=pretrained_disc), inputs
    generator = load_generator(config.generator_dir)
    logger.info("two-stage: against the generator in %s", config.generator_dir)
    features.check_tokenizer(config.generator_dir, "generator_dir")
    check_fits_features(generator.config, features, "generator_dir", same_tokenizer=True)
    warn_untrained_positions(config.generator_dir, "generator", features.max_seq_len, "generator_dir")
    disc_config.vocab_size = generator.config.vocab_size  # a converted generator's rows past its vocabulary too
    inputs["generator_weights"] = weights_digest(config.generator_dir)
    if pretrained_disc is not None:
        return SpanElectraTwoStage(generator, pretrained_disc), inputs
    discriminator = SpanElectraDiscriminator(disc_config, config.use_all_token, config.use_span_head,
                                             mask_ratio=config.mask_ratio)
    copied = init_discriminator_from_generator(discriminator, generator)
    if copied:
        logger.info("discriminator initialised from the generator: %d tensors copied", copied)
    else:  # nothing matched by name and shape (other sizes, another vocabulary): a fresh discriminator
        logger.warning("generator_dir: no tensor of the generator fits the discriminator (other sizes or "
                       "vocabulary), so it starts from random weights")
    return SpanElectraTwoStage(generator, discriminator), inputs


@torch.no_grad()
def evaluate(model, dataset, config, runtime):
    model.eval()
    sample_rng = torch.Generator(device=runtime.device)
    sums = tu.MetricSums()
    baseline_token = dataset.features.most_frequent_token()
    for i in tu.eval_batch_indices(dataset, config.eval_batches):
        # the same samples for a batch at every evaluation and whatever the number of processes
        sample_rng.manual_seed(config.seed * 1_000_003 + dataset.global_index(i))
        batch = tu.to_device(dataset[i], runtime.device)
        with tu.autocast(runtime, tu.amp_dtype(config)):
            sums.add(loss_and_metrics(model, batch, config, sample_rng, baseline_token=baseline_token)[1])
    model.train()
    return sums.read(runtime)


def main(config: SE_trainingConfig = None):
    config = checked_config(config, SE_trainingConfig)
    runtime, train_set, valid_set = tu.prepare_run(config, SEDataset)
    features = train_set.features
    model, inputs = build_model(config, features)
    model = model.to(runtime.device)
    optimizer, scheduler, scaler = tu.build_optimization(model, config)

    train_step, stream, log, step = tu.start_run(config, model, functools.partial(loss_and_metrics, config=config),
                                                 optimizer, scheduler, train_set, runtime, DISCRIMINATOR_RUN, inputs,
                                                 scaler)
    logger.info("discriminator (%s): %s, %s trainable parameters, %d train sequences, %d process(es)", config.mode,
                tu.size_label(config), tu.parameter_count(model, trainable_only=True),
                len(train_set.data), runtime.world_size)

    model.train()
    speed, sums = tu.Throughput(runtime.device), tu.MetricSums(skip_nonfinite=config.fp16)
    precision = tu.amp_dtype(config)  # bf16, fp16 or None (fp32)
    temperature = torch.ones((), device=runtime.device)  # a tensor: a changing float would recompile the step
    # best_auc: the best learned_auc so far; learned_before: the best before the last evaluation, what the next
    # one's check compares with (learning seen only after the first of two evaluations at chance does not count)
    best_auc, learned_before, valid_rows = tu.collapse_history(config.out_dir) if step else (0.0, 0.0, [])
    warned_collapse = False
    bar = progress_bar(total=config.max_steps, initial=step, desc=f"discriminator ({config.mode})", disable=not runtime.is_main)
    while step < config.max_steps:
        speed.step_begins()
        temperature.fill_(sampling_temperature(step, config))
        for micro in range(config.gradient_accumulation_steps):
            batch = tu.to_device(next(stream), runtime.device)
            tu.mark_step_begin(config)
            with tu.no_sync(train_step, micro < config.gradient_accumulation_steps - 1), tu.autocast(runtime, precision):
                loss, metrics = train_step(batch, temperature=temperature)
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
            row.setdefault("loss", row["disc_loss"])
            tu.check_finite(row["loss"], step, tu.nan_hint(config))
            tu.warn_short_masking(row, config, train_set)
            log.write(row)
            best_auc = max(best_auc, tu.learned_auc(row))
            bar.set_postfix(disc_loss=f"{row['disc_loss']:.3f}", disc_auc=f"{row['disc_auc']:.3f}")
        if valid_set is not None and tu.is_due(step, config.eval_every, config.max_steps):
            with speed.paused():
                row = {"step": step, "split": "valid", **evaluate(model, valid_set, config, runtime)}
            log.write(row)
            logger.info("step %d valid: rtd_loss %.4f (base rate %.4f), disc_auc %.3f, disc_accuracy %.4f, precision "
                        "%.3f, recall %.3f", step, row["rtd_loss"], row["rtd_base_loss"], row["disc_auc"],
                        row["disc_accuracy"], row["disc_precision"], row["disc_recall"])
            valid_rows = valid_rows[-1:] + [row]
            if tu.fell_to_chance(learned_before, valid_rows) and not warned_collapse:
                warned_collapse = True
                logger.warning("step %d: the discriminator is at chance (valid disc_auc %.3f, and %.3f at the evaluation "
                               "before, down from %.3f earlier in the run; rtd_loss at the base rate): it has collapsed "
                               "and will not recover; train again with a lower --learning_rate, a longer "
                               "--warmup_fraction or another --seed", step, row["disc_auc"], valid_rows[0]["disc_auc"],
                               learned_before)
            learned_before = best_auc
            best_auc = max(best_auc, tu.learned_auc(row))
        if runtime.is_main and tu.is_due(step, config.save_every, config.max_steps):
            with speed.paused():
                tu.save_training_state(config, step, model, optimizer, scheduler, stream, log, scaler)
    bar.close()

    tokenizer_dir = os.path.join(features.dir, "tokenizer")
    out = os.path.join(config.out_dir, "discriminator")
    if runtime.is_main:
        delta = getattr(model, "embedding_delta", None)
        save_discriminator(model.discriminator, out, tokenizer_dir, embedding_delta=delta,
                           trained_seq_len=features.max_seq_len, position_delta=getattr(model, "position_delta", None))
        saved = out
        if config.mode == "joint":
            save_generator(model.generator, os.path.join(config.out_dir, "generator"), tokenizer_dir,
                           trained_seq_len=features.max_seq_len)
            saved += f", the generator to {os.path.join(config.out_dir, 'generator')}"
        logger.info("discriminator saved to %s", saved)
    log.write_done(step, model, runtime)  # after the models are saved: a 'done' row means they are there
    tu.teardown_runtime(runtime)
    return out


if __name__ == "__main__":
    run_main(main, SE_trainingConfig)
