"""Span masking (SpanBERT) and token masking (BERT/ELECTRA) of whole batches, vectorised in numpy.

A masking returns, for a batch of token ids [B, L]:
  input_ids       the corrupted input
  labels          the original token where masked, -100 elsewhere
  span_position   position of each masked token inside its span (0-based; 0 where not masked)
  boundary_left   index of the token just before the token's span (start - 1)
  boundary_right  index of the token just after the token's span (end + 1)
The span-boundary heads read the last three at the masked positions only.

    python masking.py --stats --features_dir FEAT [--mask_ratio 0.15 --span_p 0.2 ...]
masks a few thousand real sequences and prints the realised statistics, as JSON on the last line.
"""
import json
import logging

import numpy as np

from argument import MaskingArgs, mask_stats_args, run_main

logger = logging.getLogger("span_electra")

IGNORE_INDEX = -100
REPLACE_MASK, REPLACE_RANDOM, REPLACE_KEEP = 0, 1, 2
BYTE_LEVEL_SPACE = "\u0120"  # 'Ġ': a leading space in byte-level BPE
SENTENCEPIECE_SPACE = "\u2581"  # '▁'


# ---------------------------------------------------------------- what is a word
def word_start_table(tokenizer):
    """Boolean array over the vocabulary: True where a token begins a word (whole-word masking).

    WordPiece: every piece without the '##' prefix. Byte-level BPE: tokens with a leading space,
    plus (with the default regex pre-tokenizer, which splits punctuation off words) tokens that
    begin with punctuation or whitespace. With word segmentation the pre-tokenizer splits on
    whitespace only, so a segmented word such as 'Hà_Nội' stays one word.
    """
    tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)  # transformers -> tokenizers
    spec = json.loads(tokenizer.to_str())
    model, pre = spec["model"], json.dumps(spec.get("pre_tokenizer"))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    table = np.zeros(max(vocab.values()) + 1, dtype=bool)
    prefix = model.get("continuing_subword_prefix")
    splits_punctuation = '"use_regex": true' in pre
    for token, i in vocab.items():
        if prefix:
            table[i] = not token.startswith(prefix)
        elif token.startswith((BYTE_LEVEL_SPACE, SENTENCEPIECE_SPACE)):
            table[i] = True
        elif splits_punctuation:
            first = token[0]
            table[i] = (first.isascii() and not first.isalnum()) or 0x100 <= ord(first) <= 0x120
    for added in spec.get("added_tokens", []):
        table[added["id"]] = True
    return table


def span_length_distribution(p, max_len):
    """SpanBERT's span lengths in words: Geometric(p) truncated to 1..max_len and renormalised
    (mean 3.8 words for p=0.2, max_len=10)."""
    lengths = np.arange(1, max_len + 1)
    weights = p * (1 - p) ** (lengths - 1)
    return weights / weights.sum()


# ---------------------------------------------------------------- the masker
class Masker:
    """Masks batches of token ids according to a MaskingArgs config."""

    def __init__(self, config: MaskingArgs, word_starts, special_ids, mask_id, vocab_size):
        config.validate()
        self.config = config
        self.word_starts = np.asarray(word_starts, dtype=bool)
        self.special_ids = np.asarray(sorted(special_ids))
        self.mask_id = mask_id
        self.random_ids = np.setdiff1d(np.arange(vocab_size), self.special_ids)
        self.length_probs = span_length_distribution(config.span_p, config.max_span_len)
        self.mean_span_words = float((np.arange(1, config.max_span_len + 1) * self.length_probs).sum())

    def __call__(self, ids, rng):
        """Mask a batch [B, L]; returns the dict described at the top of this file (numpy arrays)."""
        ids = np.asarray(ids)
        eligible = ~np.isin(ids, self.special_ids)
        if self.config.masking == "span":
            span_pos, spans = span_positions(ids, eligible, self.word_starts, self.config.mask_ratio,
                                             self.length_probs, rng)
        else:
            span_pos, spans = token_positions(eligible, self.config.mask_ratio, rng)
        masked_input = self.replace(ids, span_pos, spans, rng)
        batch = batch_from_masking(ids, masked_input, span_pos)
        batch["span_word_lengths"] = spans["words"]
        return batch

    def replace(self, ids, span_pos, spans, rng):
        """Choose per span: [MASK] (mask_replace_prob), a random token (random_replace_prob) or kept."""
        u = rng.random(len(spans["row"]))
        choice = np.where(u < self.config.mask_replace_prob, REPLACE_MASK,
                          np.where(u < self.config.mask_replace_prob + self.config.random_replace_prob,
                                   REPLACE_RANDOM, REPLACE_KEEP))
        per_token = _fill_spans(span_pos.shape, spans, choice, fill=REPLACE_KEEP)
        out = ids.copy()
        masked = span_pos > 0
        out[masked & (per_token == REPLACE_MASK)] = self.mask_id
        to_random = masked & (per_token == REPLACE_RANDOM)
        out[to_random] = self.random_ids[rng.integers(0, len(self.random_ids), int(to_random.sum()))]
        return out


def _fill_spans(shape, spans, values, fill):
    """Token array [B, L] holding values[k] on the tokens of span k and `fill` elsewhere."""
    out = np.full(shape, fill, dtype=np.int64)
    if len(values):
        lengths = spans["end"] - spans["start"]
        rows = np.repeat(spans["row"], lengths)
        cols = np.repeat(spans["start"] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        out[rows, cols] = np.repeat(values, lengths)
    return out


# ---------------------------------------------------------------- span masking
def span_positions(ids, eligible, word_starts, mask_ratio, length_probs, rng, oversample=2.5):
    """SpanBERT span masking of a batch, without a loop over sequences or tokens.

    Candidate spans are laid along each row as a renewal process: a gap of at least one word,
    then a span of truncated-geometric length, repeated, dense enough to cover `oversample` times
    the budget. Spans never touch, so every span's boundary tokens stay visible. Candidates are
    then kept, whole, in random order until they reach the budget of mask_ratio x (non-special
    tokens): the realised ratio matches mask_ratio on average and the span lengths keep their
    distribution (trimming the last span, as SpanBERT does, biases them short).
    Returns span_pos [B, L] (1-based position in span, 0 where not masked) and the spans
    (row, start, end token index, words).
    """
    B, L = ids.shape
    span_lengths = np.arange(1, len(length_probs) + 1)
    mean_span_words = float((span_lengths * length_probs).sum())
    overshoot_words = float((span_lengths ** 2 * length_probs).sum()) / (2 * mean_span_words)  # renewal theory
    num_words, start_tok, end_tok, run_end = _words(ids, eligible, word_starts)
    W = start_tok.shape[1]
    if W == 0:
        return np.zeros((B, L), dtype=np.int64), _empty_spans()
    budget = np.where(eligible.any(1), np.maximum(1, np.rint(mask_ratio * eligible.sum(1))), 0).astype(np.int64)

    # Lay candidate spans along the words of each row: gap, span, gap, span, ...
    coverage = min(0.95, oversample * mask_ratio)
    mean_gap = max(1.0, mean_span_words * (1 - coverage) / coverage)
    M = int(np.ceil(max(W, 1) / (mean_gap + mean_span_words) * 1.5)) + 3
    lengths = rng.choice(span_lengths, size=(B, M), p=length_probs)
    gaps = rng.geometric(1.0 / mean_gap, size=(B, M))
    gaps[:, 0] -= 1  # a row may begin with a span
    starts = np.cumsum(gaps + lengths, axis=1) - lengths
    valid = starts < num_words[:, None]
    s = np.minimum(starts, W - 1)
    rows = np.arange(B)[:, None]
    ends = np.minimum(np.minimum(starts + lengths, run_end[rows, s]), num_words[:, None])  # word index, exclusive
    lengths = np.where(valid, ends - s, 0)
    tokens = np.where(valid, end_tok[rows, np.maximum(s + lengths - 1, 0)] - start_tok[rows, s], 0)

    # Keep candidates in random order until the budget is reached. A candidate is kept when the
    # tokens kept before it fall short of the budget less the expected overshoot of the last span;
    # keeping that last span whole (rather than trimming it) keeps span lengths unbiased, and the
    # overshoot correction keeps the realised ratio at mask_ratio on average.
    tokens_per_word = eligible.sum(1) / np.maximum(num_words, 1)
    threshold = budget - overshoot_words * tokens_per_word
    order = np.argsort(np.where(valid, rng.random((B, M)), np.inf), axis=1)
    tokens_sorted = np.take_along_axis(tokens, order, 1)
    before = np.cumsum(tokens_sorted, axis=1) - tokens_sorted
    keep = (before < threshold[:, None]) & np.take_along_axis(valid, order, 1)
    keep_words = np.where(keep, np.take_along_axis(lengths, order, 1), 0)
    unsorted = np.empty_like(keep_words)
    np.put_along_axis(unsorted, order, keep_words, 1)

    r, c = np.nonzero(unsorted > 0)  # row-major: spans in (row, start) order
    n = unsorted[r, c]
    spans = {"row": r, "start": start_tok[r, s[r, c]], "end": end_tok[r, s[r, c] + n - 1], "words": n}
    return _positions_from_spans((B, L), spans), spans


def _words(ids, eligible, word_starts):
    """Word grid of a batch: per row the number of maskable words, each word's first token and
    end token (exclusive), and run_end: the first word index past the run of maskable words
    (a span never crosses a special token)."""
    B, L = ids.shape
    cols = np.arange(L)
    prev_eligible = np.concatenate([np.zeros((B, 1), bool), eligible[:, :-1]], axis=1)
    unit_start = word_starts[np.minimum(ids, len(word_starts) - 1)] | ~eligible | ~prev_eligible
    word_start = unit_start & eligible
    num_words = word_start.sum(1)
    W = int(num_words.max()) if B else 0
    rank = np.cumsum(word_start, axis=1) - 1
    r, c = np.nonzero(word_start)
    # end of a word: the next unit start after its first token
    next_start = np.where(unit_start, cols, L)
    next_start = np.minimum.accumulate(next_start[:, ::-1], axis=1)[:, ::-1]
    next_start = np.concatenate([next_start[:, 1:], np.full((B, 1), L)], axis=1)
    start_tok = np.zeros((B, W), dtype=np.int64)
    end_tok = np.zeros((B, W), dtype=np.int64)
    start_tok[r, rank[r, c]] = c
    end_tok[r, rank[r, c]] = next_start[r, c]
    # runs of adjacent words: a run ends where a word's end is not the next word's start
    run_break = np.ones((B, W), dtype=bool)
    if W > 1:
        run_break[:, :-1] = end_tok[:, :-1] != start_tok[:, 1:]
    run_end = np.where(run_break, np.arange(W) + 1, W)
    run_end = np.minimum.accumulate(run_end[:, ::-1], axis=1)[:, ::-1]
    return num_words, start_tok, end_tok, run_end


def _positions_from_spans(shape, spans):
    lengths = spans["end"] - spans["start"]
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    span_pos = np.zeros(shape, dtype=np.int64)
    span_pos[np.repeat(spans["row"], lengths), np.repeat(spans["start"], lengths) + within] = within + 1
    return span_pos


def _empty_spans():
    empty = np.zeros(0, dtype=np.int64)
    return {"row": empty, "start": empty, "end": empty, "words": empty}


# ---------------------------------------------------------------- token masking (the baseline)
def token_positions(eligible, mask_ratio, rng):
    """BERT/ELECTRA masking: exactly round(mask_ratio x non-special tokens) tokens per row, chosen
    uniformly; each masked token is a span of its own."""
    B, L = eligible.shape
    budget = np.where(eligible.any(1), np.maximum(1, np.rint(mask_ratio * eligible.sum(1))), 0)
    scores = np.where(eligible, rng.random((B, L)), np.inf)
    rank = np.argsort(np.argsort(scores, axis=1), axis=1)
    masked = rank < budget[:, None]
    r, c = np.nonzero(masked)
    spans = {"row": r, "start": c, "end": c + 1, "words": np.ones(len(r), dtype=np.int64)}
    return masked.astype(np.int64), spans


# ---------------------------------------------------------------- from positions to a batch
def batch_from_masking(ids, masked_input, span_pos):
    """Labels and span boundaries from the original ids, the corrupted input and span positions.

    Static masks saved by process.py hold only masked_input and span_pos; this rebuilds the rest,
    so dynamic and static masking produce identical batches.
    """
    B, L = ids.shape
    masked = span_pos > 0
    cols = np.broadcast_to(np.arange(L), (B, L))
    start = np.where(masked, cols - span_pos + 1, 0)
    next_pos = np.concatenate([span_pos[:, 1:], np.zeros((B, 1), span_pos.dtype)], axis=1)
    is_last = masked & (next_pos != span_pos + 1)
    end = np.where(is_last, cols + 1, L)  # exclusive end, written at each span's last token
    end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]
    return {
        "input_ids": masked_input.astype(np.int64),
        "labels": np.where(masked, ids, IGNORE_INDEX).astype(np.int64),
        "span_position": np.where(masked, span_pos - 1, 0).astype(np.int64),
        "boundary_left": np.where(masked, np.maximum(start - 1, 0), 0).astype(np.int64),
        "boundary_right": np.where(masked, np.minimum(end, L - 1), 0).astype(np.int64),
    }


# ---------------------------------------------------------------- statistics
def masking_stats(batches, eligible_counts):
    """Realised mask ratio, span lengths and replacement shares over a list of masked batches."""
    masked = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    changed = sum(int(((b["labels"] != IGNORE_INDEX) & (b["input_ids"] != b["labels"])).sum()) for b in batches)
    spans = np.concatenate([b["span_word_lengths"] for b in batches])
    starts = sum(int(((b["labels"] != IGNORE_INDEX) & (b["span_position"] == 0)).sum()) for b in batches)
    hist = np.bincount(spans, minlength=1)[1:] / max(len(spans), 1)
    return {
        "mask_ratio": masked / max(eligible_counts, 1),
        "mean_span_length_words": float(spans.mean()) if len(spans) else 0.0,
        "mean_span_length_tokens": masked / max(starts, 1),
        "num_spans": int(len(spans)),
        "replaced_fraction": changed / max(masked, 1),
        "span_length_histogram": {str(i + 1): round(float(h), 4) for i, h in enumerate(hist)},
    }


def main(config: mask_stats_args = None):
    """Mask real sequences from a features folder and print what the settings produce."""
    from process import PretrainingFeatures

    config = config or mask_stats_args()
    config.validate()
    features = PretrainingFeatures(config.features_dir)
    data = features.split(config.split)
    masker = features.masker(config)
    rng = np.random.default_rng(config.seed)
    n = min(config.num_sequences, len(data))
    rows = np.sort(rng.choice(len(data), n, replace=False))
    batches, eligible = [], 0
    for i in range(0, n, config.batch_size):
        ids = np.asarray(data[rows[i:i + config.batch_size]], dtype=np.int64)
        eligible += int((~np.isin(ids, masker.special_ids)).sum())
        batches.append(masker(ids, rng))
    stats = {"features_dir": config.features_dir, "split": config.split, "num_sequences": n,
             "masking": config.masking, "target_mask_ratio": config.mask_ratio,
             "expected_span_length_words": round(masker.mean_span_words, 4), **masking_stats(batches, eligible)}
    hist = stats["span_length_histogram"]
    print("span length (words)  share")
    for length, share in hist.items():
        print(f"{length:>19}  {share:.4f}  {'#' * int(round(share * 60))}")
    print(f"mask ratio {stats['mask_ratio']:.4f} (target {config.mask_ratio}), mean span "
          f"{stats['mean_span_length_words']:.2f} words / {stats['mean_span_length_tokens']:.2f} tokens")
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    run_main(main, mask_stats_args)
