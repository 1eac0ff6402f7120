"""Span masking (SpanBERT) and token masking (BERT/ELECTRA) of whole batches, vectorised in numpy.

A masking returns, for a batch of token ids [B, L]:
  input_ids       the corrupted input
  labels          the original token where masked, -100 elsewhere
  span_position   position of each masked token inside its span (0-based; 0 where not masked)
  boundary_left   index of the token just before the token's span (start - 1)
  boundary_right  index of the token just after the token's span (end + 1)
The span-boundary heads read the last three at the masked positions only. No row masks more than
max_prediction_slots tokens, so `prediction_slots` can turn the batch into ELECTRA's fixed-size
prediction slots, the shape the training step works on.
(mask_stats.py masks real sequences with these functions and reports what the settings produce.)
"""
import json
import logging
import math

import numpy as np

from argument import MaskingArgs
from io_utils import SpanElectraError
from tokenization import byte_level_bytes

logger = logging.getLogger("span_electra")

IGNORE_INDEX = -100
BYTE_LEVEL_SPACE = "\u0120"  # 'Ġ': a leading space in byte-level BPE
SENTENCEPIECE_SPACE = "\u2581"  # '▁'


# ---------------------------------------------------------------- what is a word
def word_start_table(tokenizer):
    """Boolean array over the vocabulary: True where a token begins a word (whole-word masking).

    WordPiece: every piece without the '##' prefix. Byte-level BPE: tokens with a leading space,
    plus (with the default regex pre-tokenizer, which splits punctuation off words) tokens that
    begin with punctuation or whitespace. With word segmentation the pre-tokenizer splits on
    whitespace only, so a segmented word such as 'Hà_Nội' stays one word. In both, a token that
    begins with a CJK ideograph, kana or CJK punctuation begins a word (see starts_own_word).
    """
    tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)  # transformers -> tokenizers
    spec = json.loads(tokenizer.to_str())
    model, pre = spec["model"], json.dumps(spec.get("pre_tokenizer"))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    table = np.zeros(max(vocab.values()) + 1, dtype=bool)
    prefix = model.get("continuing_subword_prefix")
    splits_punctuation = '"use_regex": true' in pre
    first_char = _byte_level_first_char if '"ByteLevel"' in pre else _first_char
    for token, i in vocab.items():
        if starts_own_word(first_char(token, prefix)):
            table[i] = True
        elif prefix:
            table[i] = not token.startswith(prefix)
        elif token.startswith((BYTE_LEVEL_SPACE, SENTENCEPIECE_SPACE)):
            table[i] = True
        elif splits_punctuation:
            first = token[0]
            table[i] = (first.isascii() and not first.isalnum()) or 0x100 <= ord(first) <= 0x120
    for added in spec.get("added_tokens", []):
        table[added["id"]] = True
    return table


# Characters that are words by themselves in text written without spaces: BERT's tokenize_chinese_chars
# ranges (CJK ideographs), plus kana and CJK punctuation. Byte-level BPE would otherwise make a whole
# unspaced clause one 'word' (10-20 tokens, masked whole), and WordPiece a run of kana. The fullwidth
# forms start at U+FF00, unassigned, so that a byte-level token holding only the bytes EF BC (the
# first two of the fullwidth comma '，', Chinese's most frequent punctuation) counts as theirs.
OWN_WORD_RANGES = ((0x3000, 0x30FF), (0x31F0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
                   (0xFF00, 0xFF0F), (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF9F), (0x20000, 0x2FA1F))


def starts_own_word(char):
    """True for a character that is a word of its own (OWN_WORD_RANGES); False for '' and the rest."""
    code = ord(char) if char else -1
    return any(low <= code <= high for low, high in OWN_WORD_RANGES)


def _first_char(token, prefix=None):
    """The first character of a token's text (after a WordPiece '##' or SentencePiece '▁')."""
    if prefix and token.startswith(prefix):
        token = token[len(prefix):]
    return token.lstrip(SENTENCEPIECE_SPACE)[:1]


def _byte_level_first_char(token, prefix=None):
    """The first character a byte-level token spells ('' when it starts inside a character). A token
    holding only the first bytes of a character gives the lowest character those bytes can begin."""
    to_byte = byte_level_bytes()
    data = bytes(to_byte.get(c, 0) for c in token[:4])
    if not data or data[0] == 0x20 or 0x80 <= data[0] < 0xC0:  # a leading space is not the character
        return ""
    width = 1 if data[0] < 0x80 else 2 if data[0] < 0xE0 else 3 if data[0] < 0xF0 else 4
    head = data[:width]
    return (head + b"\x80" * (width - len(head))).decode("utf-8", errors="replace")[:1]


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
        self.special_ids = np.asarray(sorted(special_ids))
        self.is_special = np.zeros(max(vocab_size, len(word_starts)), dtype=bool)
        self.word_starts = np.ones(len(self.is_special), dtype=bool)  # ids past the table start words
        self.word_starts[:len(word_starts)] = word_starts
        self.is_special[self.special_ids] = True
        self.mask_id = mask_id
        self.random_ids = np.flatnonzero(~self.is_special[:vocab_size])
        self.span_lengths = SpanLengths(config.span_p, config.max_span_len)

    def __call__(self, ids, rng):
        """Mask a batch [B, L]; returns the dict described at the top of this file (numpy arrays)."""
        ids = np.asarray(ids)
        eligible = ~self.is_special[ids]
        slots = max_prediction_slots(self.config, ids.shape[1])
        if self.config.masking == "span":
            spans = sample_spans(ids, eligible, self.word_starts, self.config.mask_ratio, self.span_lengths, rng,
                               max_tokens=slots)
        else:
            spans = token_spans(eligible, self.config.mask_ratio, rng, max_tokens=slots)
        tokens = expand_spans(spans, ids.shape[1])
        masked_input = self.replace(ids, tokens, len(spans["row"]), rng)
        batch = batch_from_spans(ids, masked_input, spans, tokens)
        batch["span_word_lengths"] = spans["words"]
        return batch

    def replace(self, ids, tokens, num_spans, rng):
        """Choose per span: [MASK] (mask_replace_prob), a random token (random_replace_prob) or kept."""
        u = rng.random(num_spans)[tokens["span"]]
        out = ids.copy()
        flat_out, at = out.reshape(-1), tokens["flat"]
        to_mask = u < self.config.mask_replace_prob
        flat_out[at[to_mask]] = self.mask_id
        to_random = ~to_mask & (u < self.config.mask_replace_prob + self.config.random_replace_prob)
        picks = (rng.random(int(to_random.sum())) * len(self.random_ids)).astype(np.int64)
        flat_out[at[to_random]] = self.random_ids[picks]
        return out


class SpanLengths:
    """Span lengths in words: Geometric(p) truncated to 1..max_len and renormalised (SpanBERT)."""

    def __init__(self, p, max_len):
        self.values = np.arange(1, max_len + 1)
        self.probs = span_length_distribution(p, max_len)
        self.cdf = np.cumsum(self.probs)[:-1]
        self.mean = float((self.values * self.probs).sum())
        # expected overshoot of a budget by the last span added (renewal theory), in words
        self.overshoot = float((self.values ** 2 * self.probs).sum()) / (2 * self.mean)

    def sample(self, rng, size):
        return self.values[np.searchsorted(self.cdf, rng.random(size), side="right")]


# ---------------------------------------------------------------- span masking
def maskable_tokens(seq_len):
    """The tokens of a seq_len-token row that masking may pick: all but [CLS] and [SEP]."""
    return seq_len - 2


def short_masking_message(realised, target, slots, seq_len):
    """What to say when the realised mask ratio falls well short of the target (None when it does not)."""
    if realised >= 0.8 * target:
        return None
    shortfall = f"the realised mask ratio is {realised / target:.0%} of the target"
    if slots >= maskable_tokens(seq_len):  # a slot for every maskable token: the slots are not the cause
        return (f"{shortfall}: span masking leaves a word between spans, so it cannot mask that much of a sequence; "
                "lower --mask_ratio (SpanBERT, ELECTRA: 0.15) or use --masking token")
    return (f"{shortfall}: spans are cut at the {slots} prediction slots per sequence (--max_predictions_per_seq) or "
            "the sequences hold too few words for the spans; raise --max_predictions_per_seq, or lower --max_span_len")


def max_prediction_slots(config, seq_len):
    """Prediction slots per sequence: config.max_predictions_per_seq, or by default ELECTRA's
    round(mask_ratio x seq_len) for token masking and, for span masking, a quarter more (at least 5 more):
    whole spans make the count per row vary (at 128 tokens mean 19, 90th percentile 23), and the few rows
    whose last span would not fit in 24 slots (7%) get it cut, which keeps the realised mask ratio and span
    lengths within 1% of unlimited masking. At 64 tokens a span is a larger share of the row: 15 slots,
    not 13, keep the ratio within 2% (13 lost 2-5% on the English and Vietnamese samples)."""
    maskable = maskable_tokens(seq_len)
    if config.max_predictions_per_seq > maskable:
        raise SpanElectraError(f"max_predictions_per_seq: {config.max_predictions_per_seq} is more than the "
                               f"{maskable} tokens a {seq_len}-token sequence can mask; use at most {maskable} "
                               "(ELECTRA: int((0.15 + 0.005) x 128) = 19 at 128), or 0 for the default")
    if config.max_predictions_per_seq:
        return config.max_predictions_per_seq
    budget = max(1, round(config.mask_ratio * seq_len))
    slots = budget if config.masking == "token" else budget + max(math.ceil(0.25 * budget), 5)
    return min(slots, maskable)  # a very high --mask_ratio: no more slots than maskable tokens


def sample_spans(ids, eligible, word_starts, mask_ratio, span_lengths, rng, max_tokens, oversample=2.5):
    """SpanBERT span masking of a batch, without a loop over sequences or tokens.

    Candidate spans are laid along each row as a renewal process: a gap of at least one word,
    then a span of truncated-geometric length, repeated, dense enough to cover `oversample` times
    the budget. Spans never touch, so every span's boundary tokens stay visible, and never cross a
    special token. Candidates are then kept, whole, in random order until they reach the budget of
    mask_ratio x (non-special tokens): the realised ratio matches mask_ratio on average and span
    lengths keep their distribution (trimming the last span, as SpanBERT does, biases them short).
    No row masks more than max_tokens (the prediction slots): the span that would pass it is cut.
    Returns the spans: row, start and end token index (exclusive) and length in words.
    """
    B, L = ids.shape
    words = _words(ids, eligible, word_starts)
    num_words = words["count"]
    if len(words["start"]) == 0:
        return _empty_spans()

    # Lay candidate spans along the words of each row: gap, span, gap, span, ...
    coverage = min(0.95, oversample * mask_ratio)
    mean_gap = max(1.0, span_lengths.mean * (1 - coverage) / coverage)
    cycle = mean_gap + span_lengths.mean
    # The process starts `warm_up` words before the row (at a random phase) and only its part inside
    # the row is used: every word is then covered alike. Started at the row's first word, the first
    # cycle of every row was mostly gap, so the first ~10 words were masked about half as often, and
    # a discriminator learned that position prior (AUC 0.54 from position alone at 64 tokens).
    warm_up = math.ceil(3 * cycle)
    M = math.ceil((int(num_words.max()) + warm_up) / cycle * 1.5) + 3
    lengths = span_lengths.sample(rng, (B, M))
    gaps = rng.geometric(1.0 / mean_gap, size=(B, M))
    gaps[:, 0] = np.floor(rng.random(B) * cycle)
    starts = np.cumsum(gaps + lengths, axis=1) - lengths - warm_up
    # a span that straddles the row's start keeps its words inside the row (geometric lengths are
    # memoryless, so what is left has the same distribution)
    lengths = lengths + np.minimum(starts, 0)
    starts = np.maximum(starts, 0)
    valid = (lengths > 0) & (starts < num_words[:, None])
    # a short row still gets a candidate: its first span, wherever the process put it
    lone = ~valid.any(1) & (num_words > 0)
    if lone.any():
        starts[lone, 0] = np.floor(rng.random(int(lone.sum())) * num_words[lone])
        lengths[lone, 0] = span_lengths.sample(rng, (int(lone.sum()),))
        valid[lone, 0] = True
    lengths = np.maximum(lengths, 1)
    first = np.minimum(words["offset"][:, None] + starts, len(words["start"]) - 1)  # flat word index
    last = np.minimum(first + lengths, words["run_end"][first]) - 1  # a span stays inside its run of words
    tokens = np.where(valid, words["end"][last] - words["start"][first], 0)

    # Keep candidates in random order while the tokens kept before them fall short of the budget
    # less the expected overshoot of the last kept span.
    num_tokens = eligible.sum(1)
    budget = np.where(num_tokens > 0, np.maximum(1, np.rint(mask_ratio * num_tokens)), 0)
    threshold = budget - span_lengths.overshoot * num_tokens / np.maximum(num_words, 1)
    order = np.argsort(np.where(valid, rng.random((B, M)), 2.0), axis=1)
    rows = np.arange(B)[:, None]
    tokens_sorted = tokens[rows, order]
    keep = (np.cumsum(tokens_sorted, axis=1) - tokens_sorted < threshold[:, None]) & valid[rows, order]
    keep = _fit_slots(keep, tokens_sorted, order, first, last, tokens, words, span_lengths, max_tokens)
    limit = np.minimum(budget, max_tokens)
    # Where nothing is kept (a budget below one span's overshoot, in short rows or at small ratios, or
    # a first span longer than the slots), keep the first candidate, cut to the words that fit the
    # budget (at least one, whole unless it is longer than the slots).
    small = np.flatnonzero(~keep.any(1) & (limit > 0) & valid[np.arange(B), order[:, 0]])
    if len(small):
        c0 = order[small, 0]
        f0 = first[small, c0]
        fit = np.maximum(1, _words_that_fit(words, f0, last[small, c0], limit[small], span_lengths.values[-1]))
        last[small, c0] = f0 + fit - 1
        tokens[small, c0] = words["end"][last[small, c0]] - words["start"][f0]
        # a word too long for the slots (an unspaced Thai clause) is cut to the budget; a shorter one stays
        # whole (an English word in a short row), as whole-word masking asks
        too_long = tokens[small, c0] > max_tokens
        tokens[small[too_long], c0[too_long]] = limit[small[too_long]]
        keep[small, 0] = True
    r, k = np.nonzero(keep)
    c = order[r, k]
    f, l = first[r, c], last[r, c]
    start = words["start"][f] - r * L
    return {"row": r, "start": start, "end": start + tokens[r, c], "words": l - f + 1}


def _words_that_fit(words, first_word, last_word, max_tokens, max_words):
    """How many words of each span (first_word..last_word, flat word indices) fit in max_tokens tokens."""
    j = np.arange(max_words)
    ends = words["end"][np.minimum(first_word[:, None] + j, last_word[:, None])] - words["start"][first_word][:, None]
    return ((ends <= max_tokens[:, None]) & (first_word[:, None] + j <= last_word[:, None])).sum(1)


def _fit_slots(keep, tokens_sorted, order, first, last, tokens, words, span_lengths, max_tokens):
    """No row masks more than max_tokens: the kept span that would pass it is cut to the words that
    fit (as SpanBERT cuts its last span), and any kept after it are dropped. Updates last and tokens
    in place; returns the new keep."""
    kept = tokens_sorted * keep
    before = np.cumsum(kept, axis=1) - kept
    over = keep & (before + tokens_sorted > max_tokens)
    cut = over & (np.cumsum(over, axis=1) == 1)  # the first span of each row that does not fit
    keep = keep & ~over
    r, k = np.nonzero(cut)
    if len(r):
        c = order[r, k]
        f = first[r, c]
        fit = _words_that_fit(words, f, last[r, c], max_tokens - before[r, k], span_lengths.values[-1])
        r, k, c, f, fit = r[fit > 0], k[fit > 0], c[fit > 0], f[fit > 0], fit[fit > 0]
        last[r, c] = f + fit - 1
        tokens[r, c] = words["end"][last[r, c]] - words["start"][f]
        keep[r, k] = True
    return keep


def _words(ids, eligible, word_starts):
    """The maskable words of a batch, flattened row after row: first token and end token (flat
    indices b * L + column), run_end (flat word index past the last word of its run: a span never
    crosses a special token), plus per row the word count and the flat index of its first word."""
    B, L = ids.shape
    special = ~eligible
    unit_start = word_starts[ids] | special
    unit_start[:, 1:] |= special[:, :-1]  # a special token also ends the word before it
    unit_start[:, 0] = True
    unit_last = np.ones_like(unit_start)  # the last token of each unit: the next token starts one
    unit_last[:, :-1] = unit_start[:, 1:]
    start = np.flatnonzero(unit_start & eligible)
    end = np.flatnonzero(unit_last & eligible) + 1  # the same words, in the same order
    offset = np.searchsorted(start, np.arange(B + 1) * L)
    if np.count_nonzero(eligible[:, 1:] & special[:, :-1]) + np.count_nonzero(eligible[:, 0]) == np.count_nonzero(
            np.diff(offset)):
        run_end = np.repeat(offset[1:], np.diff(offset))  # one run of words per row: the usual case
    else:
        run_break = np.append((end[:-1] != start[1:]) | (start[1:] % L == 0), True)
        run_id = np.cumsum(run_break) - run_break
        run_end = np.flatnonzero(run_break)[run_id] + 1
    return {"start": start, "end": end, "run_end": run_end, "count": np.diff(offset), "offset": offset[:-1]}


LONG_WORDS = 4.0  # mean tokens per word above this: a 3.8-word span passes 15 tokens, all of a 64-token row's slots


def long_words_warning(ids, masker):
    """One line when the words of these rows average over LONG_WORDS tokens (text without spaces
    between words, which whole-word spans would mask clause by clause), else None."""
    ids = np.asarray(ids, dtype=np.int64)
    if masker.config.masking != "span" or ids.size == 0:
        return None
    eligible = ~masker.is_special[ids]
    words = int(_words(ids, eligible, masker.word_starts)["count"].sum())
    per_word = eligible.sum() / max(words, 1)
    if per_word <= LONG_WORDS:
        return None
    return (f"masking: words average {per_word:.1f} tokens here, so whole-word spans of {masker.span_lengths.mean:.1f} "
            f"words are {per_word * masker.span_lengths.mean:.0f} tokens, whole clauses (text without spaces between "
            "words: Thai, Lao, Khmer, Burmese); pre-segment the text into space-separated words (e.g. PyThaiNLP's "
            "word_tokenize for Thai) and make the vocabulary again, or use --masking token")


def _empty_spans():
    empty = np.zeros(0, dtype=np.int64)
    return {"row": empty, "start": empty, "end": empty, "words": empty}


# ---------------------------------------------------------------- token masking (the baseline)
def token_spans(eligible, mask_ratio, rng, max_tokens):
    """BERT/ELECTRA masking: exactly round(mask_ratio x non-special tokens) tokens per row (at most
    max_tokens), chosen uniformly; each masked token is a span of its own."""
    B, L = eligible.shape
    budget = np.minimum(np.where(eligible.any(1), np.maximum(1, np.rint(mask_ratio * eligible.sum(1))), 0), max_tokens)
    order = np.argsort(np.where(eligible, rng.random((B, L)), 2.0), axis=1)
    masked = np.empty((B, L), dtype=bool)
    masked[np.arange(B)[:, None], order] = np.arange(L) < budget[:, None]
    r, c = np.nonzero(masked)
    return {"row": r, "start": c, "end": c + 1, "words": np.ones(len(r), dtype=np.int64)}


# ---------------------------------------------------------------- from spans to a batch
def expand_spans(spans, seq_len):
    """Token-level view of spans: flat index (row * seq_len + column), span index, position inside."""
    lengths = spans["end"] - spans["start"]
    span = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(len(span)) - (np.cumsum(lengths) - lengths)[span]
    return {"flat": (spans["row"] * seq_len + spans["start"])[span] + within, "span": span, "within": within}


def batch_from_spans(ids, masked_input, spans, tokens=None):
    """Labels and span boundaries from the original ids, the corrupted input and the spans."""
    B, L = ids.shape
    tokens = expand_spans(spans, L) if tokens is None else tokens
    at, span = tokens["flat"], tokens["span"]
    batch = {"input_ids": np.asarray(masked_input, dtype=np.int64)}
    for name, fill, values in (("labels", IGNORE_INDEX, ids.reshape(-1)[at]),
                               ("span_position", 0, tokens["within"]),
                               ("boundary_left", 0, np.maximum(spans["start"] - 1, 0)[span]),
                               ("boundary_right", 0, np.minimum(spans["end"], L - 1)[span])):
        batch[name] = np.full((B, L), fill, dtype=np.int64)
        batch[name].reshape(-1)[at] = values
    return batch


SLOT_FIELDS = ("span_position", "boundary_left", "boundary_right")


def prediction_slots(batch, num_slots):
    """ELECTRA's fixed-size prediction slots from a [B, L] masked batch: each row's masked positions
    in order, padded to num_slots (position 0, weight 0), with their target ids and span fields.
    Returns input_ids plus [B, num_slots] masked_lm_positions, masked_lm_ids, masked_lm_weights
    (float32: 1 real, 0 padding), span_position, boundary_left and boundary_right. A masked token
    past the slots (only stored static masks can hold one) is restored to its original in input_ids."""
    labels = batch["labels"]
    B = labels.shape[0]
    r, c = np.nonzero(labels != IGNORE_INDEX)
    rank = np.arange(len(r)) - np.searchsorted(r, r)  # index of each masked token within its row
    fits = rank < num_slots
    input_ids = batch["input_ids"]
    if not fits.all():
        input_ids = input_ids.copy()
        input_ids[r[~fits], c[~fits]] = labels[r[~fits], c[~fits]]
    r, c, rank = r[fits], c[fits], rank[fits]
    out = {"input_ids": input_ids, "masked_lm_weights": np.zeros((B, num_slots), dtype=np.float32)}
    out["masked_lm_weights"][r, rank] = 1.0
    for name, source in (("masked_lm_positions", None), ("masked_lm_ids", "labels")) + tuple(
            (f, f) for f in SLOT_FIELDS):
        out[name] = np.zeros((B, num_slots), dtype=np.int64)
        out[name][r, rank] = c if source is None else batch[source][r, c]
    return out


def spans_from_positions(span_pos):
    """Spans back from 1-based positions inside spans (0: not masked), as static masks store them."""
    masked = span_pos > 0
    next_pos = np.zeros_like(span_pos)
    next_pos[:, :-1] = span_pos[:, 1:]
    r, start = np.nonzero(span_pos == 1)
    _, last = np.nonzero(masked & (next_pos != span_pos + 1))
    return {"row": r, "start": start, "end": last + 1, "words": None}


def batch_from_masking(ids, masked_input, span_pos):
    """The batch for stored static masks: the same arrays dynamic masking returns."""
    return batch_from_spans(ids, masked_input, spans_from_positions(span_pos))


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
