"""What a masking config produces on real sequences: the realised mask ratio, span lengths (a
histogram) and replacement shares, as JSON on the last line.

    python mask_stats.py --features_dir FEAT --mask_ratio 0.15 --span_p 0.2 --max_span_len 10
"""
import json

import numpy as np

from argument import checked_config, is_given, mask_stats_args, run_main
from features import PretrainingFeatures
from masking import long_words_warning, masking_stats, max_prediction_slots, short_masking_message


def main(config: mask_stats_args = None):
    """Mask real sequences from a features folder and print what the settings produce."""
    config = checked_config(config, mask_stats_args)
    config.validate()
    features = PretrainingFeatures(config.features_dir)
    if config.tokenizer_dir:
        features.check_tokenizer(config.tokenizer_dir)
    data = features.split(config.split)
    masker = features.masker(config)
    rng = np.random.default_rng(config.seed)
    n = min(config.num_sequences, len(data))
    if n < config.num_sequences and is_given(config, "num_sequences"):
        print(f"warning: num_sequences: {config.num_sequences}, but the {config.split} split holds {n} sequences; "
              f"masking all {n}")
    unused = config.unused_span_fields()
    if unused:  # token masking masks single tokens: span lengths never come into it
        print(f"warning: {', '.join('--' + name for name in unused)}: span settings, which --masking token does not "
              "use; they have no effect (use --masking span)")
    rows = np.sort(rng.choice(len(data), n, replace=False))
    batches, eligible = [], 0
    for i in range(0, n, config.batch_size):
        ids = features.checked_ids(data[rows[i:i + config.batch_size]], config.split)
        eligible += int((~np.isin(ids, masker.special_ids)).sum())
        batches.append(masker(ids, rng))
    stats = {"features_dir": config.features_dir, "split": config.split, "num_sequences": n,
             "masking": config.masking, "target_mask_ratio": config.mask_ratio,
             "expected_span_length_words": round(masker.span_lengths.mean, 4) if config.masking == "span" else 1.0,
             "prediction_slots": max_prediction_slots(config, features.max_seq_len), **masking_stats(batches, eligible)}
    hist = stats["span_length_histogram"]
    print("span length (words)  share")
    for length, share in hist.items():
        print(f"{length:>19}  {share:.4f}  {'#' * int(round(share * 60))}")
    print(f"mask ratio {stats['mask_ratio']:.4f} (target {config.mask_ratio}), mean span "
          f"{stats['mean_span_length_words']:.2f} words / {stats['mean_span_length_tokens']:.2f} tokens")
    short = short_masking_message(stats["mask_ratio"], config.mask_ratio, stats["prediction_slots"],
                                  features.max_seq_len)
    if short:  # the slots cut spans, or words are too few to place them
        print(f"warning: {short}")
    long_words = long_words_warning(data[rows[:1024]], masker)
    if long_words:
        print(f"warning: {long_words}")
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    run_main(main, mask_stats_args)
