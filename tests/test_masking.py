"""masking.py: SpanBERT span masking and BERT token masking, on real sequences of the sample and on hand-made rows
(budgets, prediction slots, boundaries, replacements)."""
import dataclasses
import json

import numpy as np
import pytest

from conftest import MASK, V, check_segmented_words_whole, masked_rows, run_ok_in_process
from conftest import token_strings as _token_strings

import argument
import features
import mask_stats
import masking
from argument import MaskingArgs
from io_utils import SpanElectraError

IGNORE = -100
SPECIAL = np.arange(5)


def _mask(feat_dir, n=2000, seed=0, split="train", **cfg):
    feats, ids = masked_rows(feat_dir, split, n)
    masker = feats.masker(argument.MaskingArgs(**cfg))
    return feats, ids, masker(ids, np.random.default_rng(seed))


def _spans(batch):
    """(row, start, end exclusive) of every masked span, read from span_position and boundary_right."""
    masked = batch["labels"] != IGNORE
    r, c = np.nonzero(masked & (batch["span_position"] == 0))
    return r, c, batch["boundary_right"][r, c]


# ---------------------------------------------------------------- the span-length distribution
def test_span_length_distribution():
    probs = masking.span_length_distribution(0.2, 10)
    assert probs.shape == (10,)
    assert probs.sum() == pytest.approx(1.0)
    assert np.all(np.diff(probs) < 0)
    np.testing.assert_allclose(probs[1:] / probs[:-1], 0.8)
    mean = float((np.arange(1, 11) * probs).sum())
    assert mean == pytest.approx(3.797, abs=0.001)
    assert masking.span_length_distribution(0.5, 1).tolist() == [1.0]


def test_every_position_is_masked_alike(bpe_feat):
    """SpanBERT masks every word alike. The candidate spans' renewal process once started at each
    row's first word, so positions 1-5 were masked at a third of the rate and a discriminator
    could score replaced tokens by position alone."""
    feats, ids = masked_rows(bpe_feat[0], "train", 2000)
    masker = feats.masker(argument.MaskingArgs())
    masked = np.concatenate([masker(ids, np.random.default_rng(seed))["labels"] != IGNORE for seed in range(4)])
    rate = masked.mean(0)
    middle = rate[20:100].mean()
    assert abs(middle - 0.15) < 0.015
    assert np.all(np.abs(rate[1:12] - middle) < 0.025), rate[1:12]  # was 0.05-0.09 against 0.15
    assert abs(rate[1:6].mean() - middle) < 0.015


# ---------------------------------------------------------------- ratios and lengths
@pytest.mark.parametrize("which", ["bpe", "bert"])
def test_span_mask_ratio_and_span_lengths(which, bpe_feat, bert_feat):
    feat_dir = {"bpe": bpe_feat, "bert": bert_feat}[which][0]
    feats, ids, batch = _mask(feat_dir)
    assert ids.shape == (2000, 128)
    masked = batch["labels"] != IGNORE
    eligible = ~np.isin(ids, SPECIAL)
    ratio = masked.sum() / eligible.sum()
    assert abs(ratio - 0.15) < 0.01, ratio
    lengths = batch["span_word_lengths"]
    assert len(lengths) == len(_spans(batch)[0]) > 4000
    assert lengths.min() >= 1 and lengths.max() <= 10
    assert abs(lengths.mean() - 3.8) < 0.25, lengths.mean()
    hist = np.bincount(lengths, minlength=11)[1:] / len(lengths)
    expected = masking.span_length_distribution(0.2, 10)
    np.testing.assert_allclose(hist, expected, atol=0.02)
    assert np.all(hist[1:] <= hist[:-1] + 0.01), hist  # decreasing, up to noise
    # every row gets some masking at 128 tokens
    assert masked.any(1).all()


def test_span_masking_other_settings(bpe_feat):
    _, ids, batch = _mask(bpe_feat[0], mask_ratio=0.3, span_p=0.5, max_span_len=4)
    masked = batch["labels"] != IGNORE
    ratio = masked.sum() / (~np.isin(ids, SPECIAL)).sum()
    assert abs(ratio - 0.3) < 0.015, ratio
    lengths = batch["span_word_lengths"]
    assert lengths.max() <= 4
    probs = masking.span_length_distribution(0.5, 4)
    assert abs(lengths.mean() - (np.arange(1, 5) * probs).sum()) < 0.1


@pytest.mark.parametrize("which", ["bpe", "bert"])
def test_token_masking_exact_per_row(which, bpe_feat, bert_feat):
    feat_dir = {"bpe": bpe_feat, "bert": bert_feat}[which][0]
    _, ids, batch = _mask(feat_dir, masking="token")
    masked = batch["labels"] != IGNORE
    eligible = (~np.isin(ids, SPECIAL)).sum(1)
    expected = np.array([max(1, round(0.15 * n)) for n in eligible])
    np.testing.assert_array_equal(masked.sum(1), expected)
    assert (batch["span_position"][masked] == 0).all()
    assert (batch["span_word_lengths"] == 1).all()
    r, c = np.nonzero(masked)
    np.testing.assert_array_equal(batch["boundary_left"][r, c], c - 1)
    np.testing.assert_array_equal(batch["boundary_right"][r, c], c + 1)


def test_span_masking_at_512(bpe_feat_512):
    feat_dir, meta = bpe_feat_512
    assert meta["max_seq_len"] == 512
    feats, ids, batch = _mask(feat_dir, n=400)
    assert batch["input_ids"].shape == (400, 512)
    masked = batch["labels"] != IGNORE
    ratio = masked.sum() / (~np.isin(ids, SPECIAL)).sum()
    assert abs(ratio - 0.15) < 0.01, ratio
    assert abs(batch["span_word_lengths"].mean() - 3.8) < 0.3
    _check_boundaries(ids, batch)
    tok_ratio = (_mask(feat_dir, n=400, masking="token")[2]["labels"] != IGNORE).sum(1)
    assert (tok_ratio == round(0.15 * 510)).all()


def test_short_sequences_and_small_ratios_still_get_masked(bpe_feat):
    feats, ids = masked_rows(bpe_feat[0], n=1000)
    for seq_len, ratio in ((32, 0.15), (16, 0.15), (128, 0.02)):
        short = ids[:, :seq_len].copy()
        short[:, -1] = 3  # [SEP]
        batch = feats.masker(argument.MaskingArgs(mask_ratio=ratio))(short, np.random.default_rng(0))
        masked = batch["labels"] != IGNORE
        # the budget is max(1, round(ratio x tokens)): every row must have a masked token
        assert masked.any(1).all(), (seq_len, ratio, 1 - masked.any(1).mean())


def test_token_masking_masks_at_least_one_token_of_a_short_row():
    """A row whose 15% rounds to 0 tokens still gets exactly one masked token."""
    masker = masking.Masker(argument.MaskingArgs(masking="token"), np.ones(V, dtype=bool), special_ids=range(5),
                            mask_id=4, vocab_size=V)
    ids = np.array([[2, 10, 11, 3, 0, 0], [2, 12, 13, 14, 15, 3]])
    batch = masker(ids, np.random.default_rng(0))
    assert (batch["labels"] != -100).sum(1).tolist() == [1, 1]
    assert not np.isin(batch["labels"][batch["labels"] != -100], range(5)).any()


def span_masker(**kw):
    """A Masker over a 60-id vocabulary where every token starts a word (ids 0-4 special, 4 = [MASK])."""
    return masking.Masker(argument.MaskingArgs(**kw), np.ones(V, dtype=bool), special_ids=range(5), mask_id=4,
                          vocab_size=V)


def plain_rows(n, width, fill=7):
    """n rows [CLS] fill ... fill [SEP] of `width` tokens."""
    ids = np.full((n, width), fill)
    ids[:, 0], ids[:, -1] = 2, 3
    return ids


def test_span_budget_rounds_to_the_nearest_token():
    """With one-word spans, each 10-token row at mask_ratio 0.19 gets round(1.9) = 2 masked tokens, not 1."""
    batch = span_masker(masking="span", mask_ratio=0.19, max_span_len=1)(plain_rows(200, 12), np.random.default_rng(0))
    assert ((batch["labels"] != -100).sum(1) == 2).all()


# ---------------------------------------------------------------- whole words
def test_bpe_word_start_table(bpe_feat):
    feats = features.PretrainingFeatures(str(bpe_feat[0]))
    table = masking.word_start_table(feats.tokenizer)
    tokens = _token_strings(feats.tokenizer)
    assert table.shape == (2000,)
    assert table[:5].all()  # special tokens
    for i, t in enumerate(tokens):
        if t.startswith("\u0120"):
            assert table[i], t
        elif t[0].isascii() and t[0].isalnum():
            assert not table[i], t
        elif t[0] in ",.;:!?()\"'@=-":
            assert table[i], t  # the byte-level regex splits punctuation off words
    # the transformers wrapper gives the same table
    from transformers import AutoTokenizer
    fast = AutoTokenizer.from_pretrained(str(bpe_feat[0] / "tokenizer"))
    np.testing.assert_array_equal(masking.word_start_table(fast), table)


def test_bpe_spans_are_whole_words(bpe_feat):
    feats, ids, batch = _mask(bpe_feat[0])
    tokens = _token_strings(feats.tokenizer)
    starts_word = np.array([t.startswith("\u0120") or not (t[0].isascii() and t[0].isalnum())
                            for t in tokens])
    starts_word[:5] = True
    masked = batch["labels"] != IGNORE
    pos = batch["span_position"]
    prev_special = np.zeros_like(masked)
    prev_special[:, 1:] = np.isin(ids[:, :-1], SPECIAL)
    # a masked token that does not start a word continues a masked span (its previous token is in it)
    r, c = np.nonzero(masked & ~starts_word[ids] & ~prev_special)
    assert len(r) > 1000  # plenty of multi-token words were masked
    assert masked[r, c - 1].all()
    np.testing.assert_array_equal(pos[r, c], pos[r, c - 1] + 1)
    # and no span stops in the middle of a word
    sr, ss, se = _spans(batch)
    assert starts_word[ids[sr, se]].all()
    first_not_start = ~starts_word[ids[sr, ss]]
    assert prev_special[sr[first_not_start], ss[first_not_start]].all()  # only a row's leading fragment


def test_wordpiece_spans_are_whole_words(bert_feat):
    feats, ids, batch = _mask(bert_feat[0])
    tokens = _token_strings(feats.tokenizer)
    # a kana or ideograph piece ('##ヴ', from WikiText's Japanese titles) is a word of its own
    cont = np.array([t.startswith("##") and not masking.starts_own_word(t[2:3]) for t in tokens])
    table = masking.word_start_table(feats.tokenizer)
    np.testing.assert_array_equal(table, ~cont)
    masked = batch["labels"] != IGNORE
    sr, ss, se = _spans(batch)
    # no span starts with a '##' piece, except a row's first token (its word began in the previous row)
    bad = cont[ids[sr, ss]]
    assert (ss[bad] == 1).all(), ss[bad]
    # a '##' piece right after a masked token is masked too
    follows = masked[:, :-1] & cont[ids[:, 1:]]
    assert masked[:, 1:][follows].all()
    assert follows.sum() > 500
    # the token after a span is never a '##' piece
    assert not cont[ids[sr, se]].any()


def test_segmented_words_are_masked_whole(vi_feat):
    """pyvi joins syllables with '_': a segmented word is one byte-level word, masked all or nothing."""
    feats, ids, batch = _mask(vi_feat[0], n=None)
    check_segmented_words_whole(feats, ids, batch)


def test_a_word_that_fits_the_slots_stays_whole_when_the_budget_is_smaller():
    """Short rows at a low ratio (budget 1 token) keep their one span a whole 3-token word, as before the
    Thai cut; only a word longer than the slots is cut to the budget."""
    starts = np.zeros(100, dtype=bool)
    starts[:10] = True  # ids 5..9 start words; ids 10.. continue them
    masker = masking.Masker(MaskingArgs(mask_ratio=0.05), starts, special_ids=range(5), mask_id=4, vocab_size=100)
    ids = np.full((256, 16), 20)
    ids[:, 0], ids[:, -1] = 2, 3
    ids[:, 1:-1:3] = 7  # words of 3 tokens (the last one of 2)
    masked = (masker(ids, np.random.default_rng(0))["labels"] != masking.IGNORE_INDEX)
    assert masking.max_prediction_slots(masker.config, 16) >= 3
    assert set(masked.sum(1)) <= {2, 3} and (masked.sum(1) == 3).mean() > 0.5  # whole words, never 1 token


# ---------------------------------------------------------------- determinism and replacement
def test_same_seed_same_mask_other_seed_other_mask(bpe_feat):
    _, _, a = _mask(bpe_feat[0], n=256, seed=11)
    _, _, b = _mask(bpe_feat[0], n=256, seed=11)
    _, _, c = _mask(bpe_feat[0], n=256, seed=12)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["labels"], c["labels"])
    assert not np.array_equal(a["input_ids"], c["input_ids"])


@pytest.mark.parametrize("kind", ["span", "token"])
def test_special_tokens_never_masked_nor_inserted(kind, bpe_feat):
    _, ids, batch = _mask(bpe_feat[0], masking=kind)
    masked = batch["labels"] != IGNORE
    assert not np.isin(batch["labels"][masked], SPECIAL).any()
    assert not masked[np.isin(ids, SPECIAL)].any()
    np.testing.assert_array_equal(batch["input_ids"][~masked], ids[~masked])
    new = batch["input_ids"][masked]
    assert not np.isin(new, [0, 1, 2, 3]).any()  # only [MASK] among the specials, never a random special
    changed = masked & (batch["input_ids"] != ids)
    random = changed & (batch["input_ids"] != MASK)
    assert random.sum() > 100
    assert batch["input_ids"][random].min() >= 5 and batch["input_ids"][random].max() < 2000
    np.testing.assert_array_equal(batch["labels"][masked], ids[masked])
    assert (batch["labels"][~masked] == IGNORE).all()


def _replacement_shares(ids, batch):
    sr, ss, se = _spans(batch)
    kinds = np.zeros(3)
    for r, s, e in zip(sr, ss, se):
        inp, orig = batch["input_ids"][r, s:e], ids[r, s:e]
        if (inp == MASK).all():
            kinds[0] += 1
        elif (inp == orig).all():
            kinds[2] += 1
        else:
            kinds[1] += 1
            assert (inp != MASK).all()  # a random span is random throughout
    return kinds / kinds.sum(), len(sr)


def test_replacement_shares_80_10_10(bpe_feat):
    _, ids, batch = _mask(bpe_feat[0])
    shares, n = _replacement_shares(ids, batch)
    assert n > 4000
    np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.02)


def test_replacement_shares_85_15_0(bpe_feat):
    _, ids, batch = _mask(bpe_feat[0], mask_replace_prob=0.85, random_replace_prob=0.0)
    shares, _ = _replacement_shares(ids, batch)
    np.testing.assert_allclose(shares, [0.85, 0.0, 0.15], atol=0.02)
    assert shares[1] == 0


def test_random_replacements_draw_from_every_ordinary_token():
    """Random replacement picks among all non-special ids (the last id included), never a special one."""
    vocab = 12
    masker = masking.Masker(argument.MaskingArgs(masking="token", mask_ratio=0.5, mask_replace_prob=0.0,
                                                 random_replace_prob=1.0), np.ones(vocab, dtype=bool),
                            special_ids=range(5), mask_id=4, vocab_size=vocab)
    np.testing.assert_array_equal(masker.random_ids, np.arange(5, vocab))
    ids = np.full((200, 20), 5)
    ids[:, 0], ids[:, -1] = 2, 3
    batch = masker(ids, np.random.default_rng(0))
    drawn = batch["input_ids"][batch["labels"] != -100]
    assert set(drawn.tolist()) == set(range(5, vocab))


# ---------------------------------------------------------------- span boundaries
def _check_boundaries(ids, batch):
    masked = batch["labels"] != IGNORE
    pos, left, right = batch["span_position"], batch["boundary_left"], batch["boundary_right"]
    r, i = np.nonzero(masked)
    assert len(r) > 0
    np.testing.assert_array_equal(left[r, i], i - pos[r, i] - 1)
    assert (left[r, i] >= 0).all() and (right[r, i] < ids.shape[1]).all()
    assert not masked[r, left[r, i]].any()
    assert not masked[r, right[r, i]].any()
    # every token strictly between the boundaries is masked, and positions count 0..len-1
    csum = np.concatenate([np.zeros((len(ids), 1), int), np.cumsum(masked, 1)], axis=1)
    inside = csum[r, right[r, i]] - csum[r, left[r, i] + 1]
    np.testing.assert_array_equal(inside, right[r, i] - left[r, i] - 1)
    assert (pos[r, i] < right[r, i] - left[r, i] - 1).all()
    sr, ss, se = _spans(batch)
    np.testing.assert_array_equal(pos[sr, se - 1], se - ss - 1)
    for key in ("span_position", "boundary_left", "boundary_right"):
        assert (batch[key][~masked] == 0).all(), key


@pytest.mark.parametrize("which", ["bpe", "bert"])
def test_span_boundaries(which, bpe_feat, bert_feat):
    feat_dir = {"bpe": bpe_feat, "bert": bert_feat}[which][0]
    _, ids, batch = _mask(feat_dir)
    _check_boundaries(ids, batch)
    assert (batch["span_position"].max()) >= 9  # long spans occur


def test_span_boundaries_are_clamped_inside_the_row_at_both_edges():
    """A span touching the row's first or last column points its boundaries at valid columns (0 and L - 1)."""
    ids = np.arange(10, 16)[None, :]  # a row without [CLS]/[SEP], as a stored mask may hold
    spans = {"row": np.array([0, 0]), "start": np.array([0, 4]), "end": np.array([2, 6]), "words": np.array([2, 2])}
    batch = masking.batch_from_spans(ids, ids, spans)
    assert batch["boundary_left"][0].tolist() == [0, 0, 0, 0, 3, 3]
    assert batch["boundary_right"][0].tolist() == [2, 2, 0, 0, 5, 5]
    assert batch["span_position"][0].tolist() == [0, 1, 0, 0, 0, 1]


def test_batch_from_masking_reproduces_dynamic_batch(bpe_feat, bert_feat):
    for feat_dir in (bpe_feat[0], bert_feat[0]):
        for kind in ("span", "token"):
            _, ids, batch = _mask(feat_dir, n=500, masking=kind)
            masked = batch["labels"] != IGNORE
            span_pos = np.where(masked, batch["span_position"] + 1, 0)
            rebuilt = masking.batch_from_masking(ids, batch["input_ids"], span_pos)
            assert set(rebuilt) == set(batch) - {"span_word_lengths"}
            for key, value in rebuilt.items():
                np.testing.assert_array_equal(value, batch[key], err_msg=key)


def test_masker_on_rows_with_padding(bpe_feat):
    """A short row padded with [PAD]: padding is never masked and spans stay before [SEP]."""
    feats, ids = masked_rows(bpe_feat[0], n=300)
    padded = ids.copy()
    padded[:, 60] = 3
    padded[:, 61:] = 0
    batch = feats.masker(argument.MaskingArgs())(padded, np.random.default_rng(0))
    masked = batch["labels"] != IGNORE
    assert not masked[:, 60:].any()
    assert (batch["boundary_right"][masked] <= 60).all()
    _check_boundaries(padded, batch)
    ratio = masked.sum() / (~np.isin(padded, SPECIAL)).sum()
    assert abs(ratio - 0.15) < 0.015


def test_masker_validates_config(bpe_feat):
    from io_utils import SpanElectraError
    feats = features.PretrainingFeatures(str(bpe_feat[0]))
    for field, value in [("mask_ratio", 1.5), ("mask_ratio", 0.0), ("mask_ratio", float("nan")), ("span_p", 0.0),
                         ("max_span_len", 0), ("masking", "word"), ("random_replace_prob", 0.3)]:
        with pytest.raises(SpanElectraError, match=f"^{field}:"):
            feats.masker(argument.MaskingArgs(**{field: value}))


def test_prediction_slots_cannot_exceed_the_maskable_tokens():
    """max_predictions_per_seq above seq_len - 2 is a one-line error naming the field; seq_len - 2 is accepted."""
    config = argument.MaskingArgs(masking="token", max_predictions_per_seq=127)
    with pytest.raises(SpanElectraError) as e:
        masking.max_prediction_slots(config, 128)
    message = str(e.value)
    assert message.startswith("max_predictions_per_seq:") and "\n" not in message and "126" in message
    assert masking.max_prediction_slots(dataclasses.replace(config, max_predictions_per_seq=126), 128) == 126
    # nor does the default: --mask_ratio 0.99 with spans asked for 159 slots, more than the 126 tokens
    assert masking.max_prediction_slots(argument.MaskingArgs(mask_ratio=0.99), 128) == 126
    assert masking.max_prediction_slots(argument.MaskingArgs(), 6) == 4  # 1 + 5 spare at 6 tokens


def test_masking_short_of_its_ratio_names_the_cause():
    """Too few slots: raise them. A slot for every maskable token already: the gaps spans keep are the cause."""
    assert masking.short_masking_message(0.14, 0.15, 24, 128) is None
    assert "spans are cut at the 2 prediction slots" in masking.short_masking_message(0.05, 0.15, 2, 128)
    high = masking.short_masking_message(0.76, 0.99, 126, 128)
    assert "cannot mask that much" in high and "lower --mask_ratio" in high and "max_predictions" not in high


@pytest.mark.parametrize("masking_kind, seq_len, slots", [("span", 128, 24), ("span", 64, 15), ("span", 16, 7),
                                                           ("token", 128, 19), ("token", 64, 10)])
def test_default_prediction_slots_per_sequence_length(masking_kind, seq_len, slots):
    """The default slots are round(15% x L), plus a quarter (at least 5) for span masking: 24 at 128, 15 at 64."""
    assert masking.max_prediction_slots(argument.MaskingArgs(masking=masking_kind), seq_len) == slots


# ---------------------------------------------------------------- the statistics command
def test_stats_in_process(bpe_feat, capsys):
    stats = mask_stats.main(argument.mask_stats_args(features_dir=str(bpe_feat[0]), num_sequences=2000))
    assert stats["num_sequences"] == 2000
    assert abs(stats["mask_ratio"] - 0.15) < 0.01
    assert abs(stats["mean_span_length_words"] - 3.8) < 0.25
    assert stats["expected_span_length_words"] == pytest.approx(3.797, abs=0.001)
    assert abs(stats["replaced_fraction"] - 0.9) < 0.03
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == stats and "warning" not in out
    # too few slots for the target: said, not only shown
    few = mask_stats.main(argument.mask_stats_args(features_dir=str(bpe_feat[0]), num_sequences=200,
                                                   max_predictions_per_seq=5))
    assert few["mask_ratio"] < 0.05 and few["prediction_slots"] == 5
    assert "warning: the realised mask ratio is" in capsys.readouterr().out


def test_stats_cli(bpe_feat, capsys):
    out = run_ok_in_process(capsys, mask_stats, argument.mask_stats_args, "--features_dir", bpe_feat[0],
                            "--num_sequences", 2000)
    stats = json.loads(out.strip().splitlines()[-1])
    assert abs(stats["mask_ratio"] - 0.15) < 0.01
    assert abs(stats["mean_span_length_words"] - 3.8) < 0.25
    assert sum(stats["span_length_histogram"].values()) == pytest.approx(1.0, abs=0.01)
    out = run_ok_in_process(capsys, mask_stats, argument.mask_stats_args, "--features_dir", bpe_feat[0],
                            "--masking", "token", "--split", "valid")
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["split"] == "valid" and stats["mean_span_length_words"] == 1.0
    assert abs(stats["mask_ratio"] - 0.15) < 0.002


def test_stats_say_what_they_did_not_do(bpe_feat, capsys):
    """--num_sequences past the split was capped silently, and span settings with --masking token had no effect
    without a word: each is one warning line now (a default num_sequences capped is no mistake: no line)."""
    valid = features.PretrainingFeatures(str(bpe_feat[0])).split("valid")
    stats = mask_stats.main(argument.mask_stats_args(features_dir=str(bpe_feat[0]), split="valid", num_sequences=10**6,
                                                     masking="token", span_p=0.5, max_span_len=3))
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert stats["num_sequences"] == len(valid) and warnings == [
        f"warning: num_sequences: 1000000, but the valid split holds {len(valid)} sequences; masking all {len(valid)}",
        "warning: --span_p, --max_span_len: span settings, which --masking token does not use; they have no effect "
        "(use --masking span)"]
    mask_stats.main(argument.mask_stats_args(features_dir=str(bpe_feat[0]), split="valid", masking="token"))
    mask_stats.main(argument.mask_stats_args(features_dir=str(bpe_feat[0]), split="valid", span_p=0.5, num_sequences=50))
    assert "warning" not in capsys.readouterr().out
    # typed, even at their default values, they were meant: each is said
    out = run_ok_in_process(capsys, mask_stats, argument.mask_stats_args, "--features_dir", bpe_feat[0], "--split",
                            "train", "--masking", "token", "--span_p", argument.mask_stats_args.span_p)
    assert [line for line in out.splitlines() if line.startswith("warning:")] == [
        "warning: --span_p: span settings, which --masking token does not use; they have no effect (use --masking span)"]
