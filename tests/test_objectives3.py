"""Third mutation pass: masking's span sampler and budgets, generator sampling and corruption, the
span-boundary head, GLUE task reading and fine-tuning batches, config coercion and ranges, TF
checkpoint conversion, tokenizer identity, mask_stats and run_pipeline's summary.

Every test is cheap (hand-made inputs, no training) and pins a value a user would notice when it
changed.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import argument
import finetune_SE as ft
import masking
import modelling_span_electra as mse
from io_utils import SpanElectraError

V = 60


def span_masker(**kw):
    """A Masker over a 60-id vocabulary where every token starts a word (ids 0-4 special, 4 = [MASK])."""
    return masking.Masker(argument.MaskingArgs(**kw), np.ones(V, dtype=bool), special_ids=range(5), mask_id=4,
                          vocab_size=V)


def plain_rows(n, width, fill=7):
    """n rows [CLS] fill ... fill [SEP] of `width` tokens."""
    ids = np.full((n, width), fill)
    ids[:, 0], ids[:, -1] = 2, 3
    return ids


# ---------------------------------------------------------------- masking
def test_span_boundaries_are_clamped_inside_the_row_at_both_edges():
    """A span touching the row's first or last column points its boundaries at valid columns (0 and L - 1)."""
    ids = np.arange(10, 16)[None, :]  # a row without [CLS]/[SEP], as a stored mask may hold
    spans = {"row": np.array([0, 0]), "start": np.array([0, 4]), "end": np.array([2, 6]), "words": np.array([2, 2])}
    batch = masking.batch_from_spans(ids, ids, spans)
    assert batch["boundary_left"][0].tolist() == [0, 0, 0, 0, 3, 3]
    assert batch["boundary_right"][0].tolist() == [2, 2, 0, 0, 5, 5]
    assert batch["span_position"][0].tolist() == [0, 1, 0, 0, 0, 1]


@pytest.mark.parametrize("masking_kind, seq_len, slots", [("span", 128, 24), ("span", 64, 15), ("span", 16, 7),
                                                           ("token", 128, 19), ("token", 64, 10)])
def test_default_prediction_slots_per_sequence_length(masking_kind, seq_len, slots):
    """The default slots are round(15% x L), plus a quarter (at least 5) for span masking: 24 at 128, 15 at 64."""
    assert masking.max_prediction_slots(argument.MaskingArgs(masking=masking_kind), seq_len) == slots


def test_span_budget_rounds_to_the_nearest_token():
    """With one-word spans, each 10-token row at mask_ratio 0.19 gets round(1.9) = 2 masked tokens, not 1."""
    batch = span_masker(masking="span", mask_ratio=0.19, max_span_len=1)(plain_rows(200, 12), np.random.default_rng(0))
    assert ((batch["labels"] != -100).sum(1) == 2).all()


# ---------------------------------------------------------------- generator sampling and corruption
def corrupt_batch():
    """Two rows of 8 tokens; row 0 has slots at 2 and 5, row 1 one slot at 3 and a padding slot (position 0)."""
    original = torch.tensor([[2, 10, 11, 12, 13, 14, 15, 3], [2, 20, 21, 22, 23, 24, 25, 3]])
    return {"original_ids": original, "masked_lm_positions": torch.tensor([[2, 5], [3, 0]]),
            "masked_lm_weights": torch.tensor([[1.0, 1.0], [1.0, 0.0]])}


def one_hot_logits(ids):
    """Generator logits [B, P, V] that put all their mass on the given ids."""
    logits = torch.full(tuple(ids.shape) + (V,), -1e4)
    logits.scatter_(-1, ids.unsqueeze(-1), 0.0)
    return logits


def test_corruption_fills_only_real_slots_and_padding_slots_leave_cls_alone():
    """Generator samples replace the real slots only; a padding slot (weight 0, position 0) keeps [CLS] unreplaced."""
    batch = corrupt_batch()
    corrupted, replaced = mse.corrupt(batch, {"logits": one_hot_logits(torch.tensor([[40, 41], [42, 43]]))})
    assert corrupted.tolist() == [[2, 10, 40, 12, 13, 41, 15, 3], [2, 20, 21, 42, 23, 24, 25, 3]]
    assert replaced.tolist() == [[0, 0, 1, 0, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0]]


def test_a_sample_equal_to_the_original_counts_as_original():
    """ELECTRA's labels: a slot whose sampled token is the original one is 'original' (0), not 'replaced'."""
    batch = corrupt_batch()
    corrupted, replaced = mse.corrupt(batch, {"logits": one_hot_logits(torch.tensor([[11, 41], [22, 22]]))})
    assert corrupted.tolist() == [[2, 10, 11, 12, 13, 41, 15, 3], [2, 20, 21, 22, 23, 24, 25, 3]]
    assert replaced.tolist() == [[0, 0, 0, 0, 0, 1, 0, 0], [0] * 8]


def test_sampling_temperature_divides_the_logits():
    """At temperature 2, logits [0, ln 9] (90% / 10%) sample token 1 three times in four (softmax of logits / 2)."""
    logits = torch.tensor([0.0, math.log(9.0)]).expand(40000, 2)
    rng = torch.Generator().manual_seed(0)
    assert mse.sample_tokens(logits, rng, 1.0).float().mean().item() == pytest.approx(0.9, abs=0.01)
    assert mse.sample_tokens(logits, rng, torch.tensor(2.0)).float().mean().item() == pytest.approx(0.75, abs=0.01)


# ---------------------------------------------------------------- span-boundary head
def test_span_boundary_head_reads_left_then_right_boundary_then_position():
    """The head's MLP sees [h(start - 1); h(end + 1); p(position)] in that order, positions past the table clamped."""
    torch.manual_seed(0)
    head = mse.SpanBoundaryHead(8, 8).eval()
    hidden = torch.randn(1, 6, 8)
    left, right = torch.tensor([[1, 0]]), torch.tensor([[4, 5]])
    position = torch.tensor([[2, 10_000]])
    out = head(hidden, left, right, position)
    table = head.position_embeddings.weight
    expected = head.mlp(torch.cat([hidden[0, [1, 0]], hidden[0, [4, 5]],
                                   table[[2, mse.MAX_SPAN_POSITIONS - 1]]], dim=-1))
    torch.testing.assert_close(out[0], expected)


# ---------------------------------------------------------------- config values
@pytest.mark.parametrize("fields, ok", [({"mask_ratio": 1.0}, False), ({"mask_ratio": 0.0}, False),
                                        ({"mask_ratio": 0.999}, True), ({"span_p": 1.0}, True),
                                        ({"span_p": 0.0}, False), ({"mask_replace_prob": 0.0}, True),
                                        ({"mask_replace_prob": 1.0, "random_replace_prob": 0.0}, True),
                                        ({"mask_ratio": float("nan")}, False)])
def test_range_checks_respect_open_and_closed_ends(fields, ok):
    """mask_ratio lies in (0, 1), span_p in (0, 1], replacement shares in [0, 1]; NaN is refused."""
    config = argument.MaskingArgs(**fields)
    if ok:
        config.validate()
    else:
        with pytest.raises(SpanElectraError) as e:
            config.validate()
        assert str(e.value).startswith(f"{next(iter(fields))}:")


def test_open_range_message_shows_its_brackets():
    """An out-of-range value's message gives the interval with '(' / ']' for open / closed ends."""
    with pytest.raises(SpanElectraError, match=r"use a value in \(0, 1\]"):
        argument.check_range(SimpleNamespace(p=1.5), "p", 0, 1, low_open=True)
    argument.check_range(SimpleNamespace(p=1), "p", 0, 1, low_open=True)
    argument.check_range(SimpleNamespace(p=0), "p", 0, 1)
    with pytest.raises(SpanElectraError, match=r"\[0, 1\)"):
        argument.check_range(SimpleNamespace(p=1), "p", 0, 1, high_open=True)


@pytest.mark.parametrize("field, value, expected", [("mask_ratio", 1, 1.0), ("max_span_len", 4.0, 4),
                                                    ("max_span_len", 4.5, None), ("max_span_len", True, None),
                                                    ("mask_ratio", True, None), ("masking", 3, None)])
def test_values_given_to_main_are_coerced_to_the_field_type_or_refused(field, value, expected):
    """main(config): an int for a float field becomes a float, a whole float an int; 4.5 or True for a number is an error."""
    config = argument.MaskingArgs(**{field: value})
    if expected is None:
        with pytest.raises(SpanElectraError) as e:
            argument.checked_config(config, argument.MaskingArgs)
        assert str(e.value).startswith(f"{field}: {value!r}")
    else:
        out = argument.checked_config(config, argument.MaskingArgs)
        assert getattr(out, field) == expected and type(getattr(out, field)) is type(expected)


def test_seed_lists_refuse_repeats_and_accept_the_largest_seed():
    """--seeds: each seed once, integers in [0, 2**32 - 1], the largest included."""
    assert argument.seed_values(SimpleNamespace(s="0,4294967295"), "s") == [0, 4294967295]
    with pytest.raises(SpanElectraError, match="twice"):
        argument.seed_values(SimpleNamespace(s="1,2,1"), "s")
    with pytest.raises(SpanElectraError, match="seeds are integers"):
        argument.seed_values(SimpleNamespace(s="4294967296"), "s")


# ---------------------------------------------------------------- fine-tuning: batches
def test_batch_width_is_the_longest_rounded_up_to_32_and_the_mask_covers_each_length():
    """A batch whose longest example is exactly 32 tokens is 32 wide (not 64); attention covers each example's tokens."""
    ids = np.arange(2 * 70).reshape(2, 70)
    encoded = {"lengths": np.array([32, 5]), "input_ids": ids, "token_type_ids": np.ones_like(ids)}
    batch = ft.make_batch(encoded, [0, 1], torch.device("cpu"), np.array([7, 8]))
    assert batch["input_ids"].shape == (2, 32) and batch["token_type_ids"].shape == (2, 32)
    assert batch["attention_mask"].sum(1).tolist() == [32, 5] and batch["attention_mask"][1, :5].all()
    assert batch["targets"].tolist() == [7, 8]
    encoded["lengths"] = np.array([33, 1])
    assert ft.make_batch(encoded, [0, 1], torch.device("cpu"))["input_ids"].shape == (2, 64)
    encoded["lengths"] = np.array([65, 1])  # capped at the encoded width
    assert ft.make_batch(encoded, [1, 0], torch.device("cpu"))["input_ids"].shape == (2, 70)


# ---------------------------------------------------------------- tokenization
def test_segmenting_around_special_tokens_keeps_them_whole_and_space_separated():
    """pyvi-style segmentation joins syllables inside the text but leaves '[MASK]' whole, with spaces around it."""
    import tokenization
    run = tokenization.keeping_special_tokens(lambda text: text.replace(" ", "_"))
    assert run("xin chào [MASK] bạn học") == "xin_chào [MASK] bạn_học"
    assert run("[CLS] một hai [SEP] ba bốn [SEP]") == "[CLS] một_hai [SEP] ba_bốn [SEP]"
    assert run("không có gì") == "không_có_gì"
