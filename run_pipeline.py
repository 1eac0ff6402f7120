"""The whole SpanElectra pipeline in one command: vocabulary -> features -> masking check.

    python run_pipeline.py                       # the bundled WikiText-2 sample, a few minutes on CPU
    python run_pipeline.py --train_input ../shared/data/viwiki/viwiki.train.txt \
        --valid_input ../shared/data/viwiki/viwiki.valid.txt --word_segmenter pyvi --out_dir outputs/vi

Each stage is the same main(config) that its own script runs; outputs go to out_dir/tok,
out_dir/features, ... and the last lines say where everything went.
"""
import json
import logging
import os
import time

import create_vocab_SE
import masking
import process
from argument import feature_args, mask_stats_args, pipeline_args, run_main, save_config, tok_args
from io_utils import make_out_dir

logger = logging.getLogger("span_electra")


def main(config: pipeline_args = None):
    config = config or pipeline_args()
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

    start = time.time()
    meta = process.main(feature_args(
        tokenizer_dir=tok_dir, train_input=config.train_input, valid_input=config.valid_input or None,
        valid_fraction=0.0 if config.valid_input else config.valid_fraction, out_dir=feat_dir,
        max_seq_len=config.max_seq_len, seed=config.seed))
    timings["features"] = time.time() - start

    start = time.time()
    stats = masking.main(mask_stats_args(stats=True, features_dir=feat_dir, num_sequences=2048, seed=config.seed))
    timings["masking_check"] = time.time() - start

    summary = {
        "tokenizer_dir": tok_dir, "features_dir": feat_dir,
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
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_main(main, pipeline_args)
