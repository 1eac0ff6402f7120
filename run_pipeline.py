"""The whole SpanElectra pipeline in one command: vocabulary -> features -> masking check ->
generator -> discriminator (two-stage, or joint with --mode joint) -> explorer lines.

    python run_pipeline.py                       # the bundled WikiText-2 sample, a few minutes on CPU
    python run_pipeline.py --train_input ../shared/data/viwiki/viwiki.train.txt \
        --valid_input ../shared/data/viwiki/viwiki.valid.txt --word_segmenter pyvi --out_dir outputs/vi

Each stage is the same main(config) that its own script runs; outputs go to out_dir/tok,
out_dir/features, ... and the last lines say where everything went.
"""
import json
import logging
import os
import shutil
import time

import create_vocab_SE
import explore_SE
import mask_stats
import process
import trainMLM_SpanElectra
import trainSpanElectra
from argument import (EXPLORE_TEXTS, MLM_trainingConfig, SE_trainingConfig, checked_config, feature_args,
                      mask_stats_args, model_positions, pipeline_args, run_main, save_config, tok_args)
from io_utils import SpanElectraError, make_out_dir, read_json
from training_utils import LEARNED_AUC, RUN_FILE, holds_a_run, read_metrics

logger = logging.getLogger("span_electra")


def final_valid_metrics(run_dir):
    """The last validation's figures in a run's metrics.jsonl (its time stamp left out)."""
    valid = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if r.get("split") == "valid"]
    return {k: round(v, 4) for k, v in valid[-1].items() if isinstance(v, float) and k != "time"}


def main(config: pipeline_args = None):
    config = checked_config(config, pipeline_args)
    config.validate()
    make_out_dir(config.out_dir)
    save_config(config, config.out_dir, "pipeline")
    tok_dir = os.path.join(config.out_dir, "tok")
    feat_dir = os.path.join(config.out_dir, "features")
    timings = {}

    start = time.time()
    create_vocab_SE.main(tok_args(
        tokenizer_type=config.tokenizer_type, data_dir=config.train_input, vocab_size=config.vocab_size,
        min_fre=config.min_fre, lowercase=config.lowercase, word_segmenter=config.word_segmenter,
        model_name=os.path.basename(os.path.abspath(config.out_dir)), out_dir=tok_dir))
    timings["vocabulary"] = time.time() - start
    text = config.explore_text or EXPLORE_TEXTS[config.word_segmenter]
    check_explore_text_fits(text, tok_dir, config.max_seq_len)

    start = time.time()
    meta = process.main(feature_args(
        tokenizer_dir=tok_dir, train_input=config.train_input, valid_input=config.valid_input or None,
        valid_fraction=0.0 if config.valid_input else config.valid_fraction, out_dir=feat_dir,
        max_seq_len=config.max_seq_len, seed=config.seed))
    timings["features"] = time.time() - start
    if "valid" not in meta["splits"]:  # before any training: the report is the validation figures
        raise SpanElectraError(f"valid_fraction: {config.valid_fraction} held out none of the "
                               f"{meta['num_documents']['train']} documents of '{config.train_input}'; give "
                               "--valid_input, or a larger --valid_fraction")

    start = time.time()
    sample = min(2048, meta["num_sequences"]["train"])  # a smaller corpus whole (more would be warned about)
    stats = mask_stats.main(mask_stats_args(features_dir=feat_dir, num_sequences=sample, seed=config.seed))
    timings["masking_check"] = time.time() - start

    common = dict(features_dir=feat_dir, model_size=config.model_size, train_batch_size=config.train_batch_size,
                  learning_rate=config.learning_rate, seed=config.seed, log_every=25, eval_batches=8,
                  overwrite_output_dir=True)  # a re-run of the pipeline replaces the previous one
    remove_other_mode(config.out_dir, config.mode)
    start = time.time()
    gen_dir = None
    if config.mode == "two_stage":
        gen_out = os.path.join(config.out_dir, "generator")
        gen_dir = trainMLM_SpanElectra.main(MLM_trainingConfig(
            out_dir=gen_out, max_steps=config.generator_steps, eval_every=config.generator_steps,
            save_every=config.generator_steps, **common))
        timings["generator"] = time.time() - start
        start = time.time()
    se_out = os.path.join(config.out_dir, config.mode)
    disc_dir = trainSpanElectra.main(SE_trainingConfig(
        out_dir=se_out, mode=config.mode, generator_dir=gen_dir, max_steps=config.discriminator_steps,
        eval_every=config.discriminator_steps, save_every=config.discriminator_steps, **common))
    timings["discriminator"] = time.time() - start
    finals = {name: final_valid_metrics(run_dir) for name, run_dir in (
        ("generator", gen_dir and os.path.dirname(gen_dir)), ("discriminator", se_out)) if run_dir}
    explorer = explore_SE.Explorer(generator_dir=gen_dir or os.path.join(se_out, "generator"), discriminator_dir=disc_dir)
    explorer_lines = explore_SE.report(explorer, text, top_k=3)

    summary = {
        "tokenizer_dir": tok_dir, "features_dir": feat_dir, "generator_dir": gen_dir or os.path.join(se_out, "generator"),
        "discriminator_dir": disc_dir, "valid_metrics": finals,
        "num_sequences": meta["num_sequences"], "num_tokens": meta["num_tokens"],
        "mask_ratio": round(stats["mask_ratio"], 4),
        "mean_span_length_words": round(stats["mean_span_length_words"], 3),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    print("\nSpanElectra pipeline finished")
    print(f"  vocabulary  -> {tok_dir}")
    shapes = ", ".join(f"{split}: {n} x {meta['max_seq_len']}" for split, n in meta["num_sequences"].items())
    print(f"  features    -> {feat_dir}  ({shapes})")
    print(f"  masking     -> ratio {summary['mask_ratio']}, mean span {summary['mean_span_length_words']} words")
    print(f"  generator   -> {summary['generator_dir']}")
    print(f"  discriminator -> {disc_dir}")
    for line in learning_lines(finals):
        print(line)
    print("\n".join(explorer_lines))
    print(json.dumps(summary))
    return summary


def check_explore_text_fits(text, tok_dir, max_seq_len):
    """The explorer's text, in tokens of the new vocabulary as the explorer will encode it, fits the models'
    positions: checked once the vocabulary exists, before any training (the explorer runs last; a text of
    few words can still make too many tokens, e.g. rare words cut into pieces)."""
    count, positions = explore_SE.TextEncoder(tok_dir).longest_encoding(text), model_positions(max_seq_len)
    if count > positions:
        raise SpanElectraError(f"explore_text: {count} tokens with [CLS] and [SEP] in the vocabulary built in "
                               f"'{tok_dir}', more than the models' {positions} positions; give a shorter text (a "
                               "sentence or two)")


def remove_other_mode(out_dir, mode):
    """A re-run replaces the previous one: the runs an earlier call of the other mode left in out_dir go, so
    that the explorer (and the reader) find this run's models only."""
    for name in ("joint",) if mode == "two_stage" else ("generator", "two_stage"):
        folder = os.path.join(out_dir, name)
        if os.path.isdir(folder) and holds_a_run(folder) and pipeline_run(folder, out_dir):
            logger.info("removing %s: the previous pipeline's %s run", folder, "two-stage" if mode == "joint" else "joint")
            shutil.rmtree(folder)


def pipeline_run(folder, out_dir):
    """True when folder holds a run trained on out_dir's own features, as the pipeline's runs are (not a run of
    the user's that happens to sit there): by the features folder its run.json records (resolved when it
    started, so whatever the working folder now), or, for an out_dir moved since, by the features' digest."""
    features = os.path.join(out_dir, "features")
    try:
        run = read_json(os.path.join(folder, RUN_FILE))
        meta = read_json(os.path.join(features, "meta.json"))
    except SpanElectraError:
        return False
    if (run.get("folders") or {}).get("features_dir") == os.path.realpath(features):
        return True
    digest = (run.get("fixed") or {}).get("train_sequences_digest")
    return digest is not None and digest == (meta.get("content_digest") or {}).get("train")


def learning_lines(finals):
    """Each final valid figure beside what it would be without learning, in words."""
    lines = []
    gen = finals.get("generator") or finals.get("discriminator")  # joint: one run logs both
    if gen and "mlm_baseline_accuracy" in gen:
        acc, base = gen["mlm_accuracy"], gen["mlm_baseline_accuracy"]
        verdict = ("learned more than word frequencies" if acc >= 1.5 * base
                   else "not yet above the frequency baseline; train longer")
        lines.append(f"  generator valid: MLM accuracy {100 * acc:.1f}% (always predicting the most frequent token: "
                     f"{100 * base:.1f}%; {acc / max(base, 1e-9):.1f}x) -> {verdict}")
        if "sbo_accuracy" in gen:
            sbo = gen["sbo_accuracy"]
            lines.append(f"  generator valid: span-boundary head accuracy {100 * sbo:.1f}% ({sbo / max(base, 1e-9):.1f}x "
                         "the same baseline; it predicts each masked token from the two tokens just outside its span)")
    disc = finals.get("discriminator")
    if disc:
        auc = disc["disc_auc"]
        verdict = "tells replaced tokens from originals" if auc >= LEARNED_AUC else "near chance; train longer"
        lines.append(f"  discriminator valid: disc_auc {auc:.3f} (chance: 0.5) -> {verdict}; rtd_loss "
                     f"{disc['rtd_loss']:.4f} (always predicting the replaced share: {disc['rtd_base_loss']:.4f}), "
                     f"precision {disc['disc_precision']:.2f}, recall {disc['disc_recall']:.2f}")
    return lines


if __name__ == "__main__":
    run_main(main, pipeline_args)
