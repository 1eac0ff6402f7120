"""Train the discriminator: replaced-token detection plus the span-boundary predictive objective.

    python trainSpanElectra.py --mode two_stage --generator_dir GEN/generator --features_dir FEAT --out_dir SE
    python trainSpanElectra.py --mode joint --features_dir FEAT --out_dir SE      # ELECTRA's recipe
    torchrun --nproc_per_node 2 trainSpanElectra.py ...                         # several processes (DDP)

two_stage: the saved generator is loaded once and frozen; the discriminator starts from its
embeddings (and every weight whose shape matches), as the original SpanElectra does. joint: both
train together with shared embeddings; loss = generator loss + disc_weight x discriminator loss.
Saves SE/discriminator (loads with transformers.ElectraForPreTraining.from_pretrained), in joint
mode also SE/generator, plus SE/metrics.jsonl and resumable checkpoints.
"""
import logging
import math
import os

import torch
from tqdm import tqdm

import training_utils as tu
from argument import SE_trainDataArgs, SE_trainingConfig, SE_validDataArgs, run_main
from io_utils import SpanElectraError
from modelling_span_electra import (SpanElectraDiscriminator, SpanElectraJoint, corrupt, electra_configs,
                                    init_discriminator_from_generator, load_generator, save_discriminator,
                                    save_generator)
from process import SEDataset
from trainMLM_SpanElectra import generator_metrics

logger = logging.getLogger("span_electra")


def binary_auc(scores, labels):
    """ROC AUC (Mann-Whitney U: the chance a replaced token scores above an original one); 0.5 is
    chance. It shows a discriminator learning long before its probabilities cross 0.5."""
    positives = labels.sum().item()
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return 0.5
    ranks = torch.empty_like(scores, dtype=torch.float64)
    ranks[scores.argsort()] = torch.arange(1, scores.numel() + 1, dtype=torch.float64, device=scores.device)
    return ((ranks[labels].sum().item() - positives * (positives + 1) / 2) / (positives * negatives))


def base_rate_loss(replaced_fraction):
    """Binary cross-entropy of always predicting the replaced fraction: what rtd_loss must beat."""
    q = min(max(replaced_fraction, 1e-9), 1 - 1e-9)
    return -(q * math.log(q) + (1 - q) * math.log(1 - q))


def discriminator_counts(disc_out, replaced):
    """Sums over the batch's non-pad tokens, turned into rates by finish_metrics."""
    active = disc_out["active"]
    predicted = (disc_out["logits"] > 0) & active
    actual = replaced.bool() & active
    counts = {"tokens": active.sum(), "replaced": actual.sum(), "predicted": predicted.sum(),
              "true_positive": (predicted & actual).sum(), "correct": ((predicted == actual) & active).sum()}
    counts = {k: float(v) for k, v in counts.items()}
    counts["disc_loss"] = disc_out["loss"].item()
    counts["rtd_loss"] = disc_out["rtd_loss"].item()
    counts["rtd_base_loss"] = base_rate_loss(counts["replaced"] / max(counts["tokens"], 1))
    counts["disc_auc"] = binary_auc(disc_out["logits"][active].detach().float(), actual[active])
    if "span_loss" in disc_out:
        counts["span_loss"] = disc_out["span_loss"].item()
    return counts


def finish_metrics(sums, n):
    """Rates from summed counts; losses and generator metrics as means over the n batches."""
    count_keys = ("tokens", "replaced", "predicted", "true_positive", "correct")
    out = {k: v / n for k, v in sums.items() if k not in count_keys}
    if "tokens" in sums:
        out["disc_accuracy"] = sums["correct"] / max(sums["tokens"], 1)
        out["replaced_fraction"] = sums["replaced"] / max(sums["tokens"], 1)
        out["disc_precision"] = sums["true_positive"] / max(sums["predicted"], 1)
        out["disc_recall"] = sums["true_positive"] / max(sums["replaced"], 1)
    return out


def add_to(sums, values):
    for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + v


class TwoStage(torch.nn.Module):
    """The frozen generator fills the masks; only the discriminator trains."""

    def __init__(self, generator, discriminator):
        super().__init__()
        self.discriminator = discriminator
        self.frozen = [generator.eval().requires_grad_(False)]  # a list: not a submodule, not in state_dict

    def forward(self, batch, sample_generator=None, temperature=1.0):
        with torch.no_grad():
            gen_out = self.frozen[0](**batch)
        corrupted, replaced = corrupt(batch, gen_out, sample_generator, temperature)
        disc_out = self.discriminator(input_ids=corrupted, replaced=replaced, **{
            k: batch[k] for k in ("attention_mask", "labels", "span_position", "boundary_left", "boundary_right")})
        return None, disc_out, replaced


def sampling_temperature(step, config):
    """Fast-ELECTRA's curriculum: the generator's samples start smoothed (temperature_start, easy to
    spot) and the temperature falls linearly to ELECTRA's 1 over the first temperature_decay of training."""
    decay_steps = config.temperature_decay * config.max_steps
    if config.temperature_start == 1.0 or step >= decay_steps:
        return 1.0
    return config.temperature_start + (1.0 - config.temperature_start) * step / decay_steps


def step_metrics(gen_out, disc_out, replaced, batch, config, baseline_token=None):
    """Loss to optimise and the batch's metrics, for either mode (baseline_token: see generator_metrics)."""
    metrics = discriminator_counts(disc_out, replaced)
    if gen_out is None:
        return disc_out["loss"], metrics
    loss = gen_out["loss"] + config.disc_weight * disc_out["loss"]
    metrics.update(generator_metrics(gen_out, batch, baseline_token))
    metrics["gen_loss"] = metrics.pop("loss")
    metrics["loss"] = loss.item()
    return loss, metrics


def build_model(config, features):
    gen_config, disc_config = electra_configs(config.model_size, features.vocab_size, features.max_seq_len,
                                              **config.model_overrides())
    if config.mode == "joint":
        return SpanElectraJoint(gen_config, disc_config, config.use_sbo, config.use_all_token, config.use_span_head,
                                config.gradient_disentangled, config.mask_ratio)
    generator = load_generator(config.generator_dir)
    features.check_tokenizer(config.generator_dir, "generator_dir")
    if generator.config.vocab_size != features.vocab_size:
        raise SpanElectraError(f"generator_dir: the generator's vocabulary ({generator.config.vocab_size}) does not match "
                               f"the features' ({features.vocab_size}); use features built with its tokenizer")
    if features.max_seq_len > generator.config.max_position_embeddings:
        raise SpanElectraError(f"generator_dir: the generator holds {generator.config.max_position_embeddings} positions, "
                               f"fewer than the features' max_seq_len {features.max_seq_len}; rebuild the features "
                               "with a smaller --max_seq_len")
    discriminator = SpanElectraDiscriminator(disc_config, config.use_all_token, config.use_span_head,
                                             mask_ratio=config.mask_ratio)
    copied = init_discriminator_from_generator(discriminator, generator)
    logger.info("discriminator initialised from the generator: %d tensors copied", copied)
    return TwoStage(generator, discriminator)


@torch.no_grad()
def evaluate(model, dataset, config, runtime):
    model.eval()
    sample_generator = torch.Generator(device=runtime.device).manual_seed(config.seed)
    sums, n = {}, 0
    baseline_token = dataset.features.most_frequent_token()
    for i in range(min(config.eval_batches or len(dataset), len(dataset))):
        batch = tu.to_device(dataset[i], runtime.device)
        with tu.autocast(runtime, config.bf16):
            gen_out, disc_out, replaced = model(batch, sample_generator)
        add_to(sums, step_metrics(gen_out, disc_out, replaced, batch, config, baseline_token)[1])
        n += 1
    model.train()
    return tu.all_reduce_mean(finish_metrics(sums, max(n, 1)), runtime)


def main(config: SE_trainingConfig = None):
    config = config or SE_trainingConfig()
    runtime, train_set, valid_set = tu.prepare_run(config, SEDataset, SE_trainDataArgs, SE_validDataArgs)
    features = train_set.features
    model = build_model(config, features).to(runtime.device)
    optimizer, scheduler = tu.build_optimization(model, config)

    train_model, stream, log, step = tu.start_run(config, model, optimizer, scheduler, train_set, runtime, "trainSpanElectra")
    logger.info("discriminator (%s): %s, %.1fM trainable parameters, %d train sequences, %d process(es)", config.mode,
                config.model_size, sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
                len(train_set.data), runtime.world_size)

    model.train()
    speed, sums, n = tu.Throughput(), {}, 0
    bar = tqdm(total=config.max_steps, initial=step, desc=f"discriminator ({config.mode})", disable=not runtime.is_main)
    while step < config.max_steps:
        for micro in range(config.gradient_accumulation_steps):
            batch = tu.to_device(next(stream), runtime.device)
            with tu.no_sync(train_model, micro < config.gradient_accumulation_steps - 1), tu.autocast(runtime, config.bf16):
                gen_out, disc_out, replaced = train_model(batch, temperature=sampling_temperature(step, config))
                loss, metrics = step_metrics(gen_out, disc_out, replaced, batch, config)
            (loss / config.gradient_accumulation_steps).backward()
            add_to(sums, metrics)
            n += 1
            speed.add(batch["attention_mask"].sum().item() * runtime.world_size)
        tu.optimizer_step(model, optimizer, scheduler, config.max_grad_norm)
        step += 1
        tu.check_finite(sums["loss"] if "loss" in sums else sums["disc_loss"], step)
        bar.update(1)

        if step % config.log_every == 0 or step == config.max_steps:
            row = {"step": step, **tu.all_reduce_mean(finish_metrics(sums, n), runtime),
                   "lr": scheduler.get_last_lr()[0], "tokens_per_sec": speed.rate()}
            row.setdefault("loss", row["disc_loss"])
            log.write(row)
            bar.set_postfix(disc_loss=f"{row['disc_loss']:.3f}", disc_auc=f"{row['disc_auc']:.3f}")
            sums, n = {}, 0
        if valid_set is not None and tu.is_due(step, config.eval_every, config.max_steps):
            row = {"step": step, "split": "valid", **evaluate(model, valid_set, config, runtime)}
            log.write(row)
            logger.info("step %d valid: rtd_loss %.4f (base rate %.4f), disc_auc %.3f, disc_accuracy %.4f, precision "
                        "%.3f, recall %.3f", step, row["rtd_loss"], row["rtd_base_loss"], row["disc_auc"],
                        row["disc_accuracy"], row["disc_precision"], row["disc_recall"])
        if runtime.is_main and tu.is_due(step, config.save_every, config.max_steps):
            tu.save_training_state(config, step, model, optimizer, scheduler, stream)
    bar.close()
    log.write_done(step, model, runtime)

    tokenizer_dir = os.path.join(features.dir, "tokenizer")
    out = os.path.join(config.out_dir, "discriminator")
    if runtime.is_main:
        delta = getattr(model, "embedding_delta", None)
        save_discriminator(model.discriminator, out, tokenizer_dir, embedding_delta=delta)
        if config.mode == "joint":
            save_generator(model.generator, os.path.join(config.out_dir, "generator"), tokenizer_dir)
        logger.info("discriminator saved to %s", out)
    tu.teardown_runtime(runtime)
    return out


if __name__ == "__main__":
    run_main(main, SE_trainingConfig)
