"""modelling_span_electra.py, mostly on hand-made tensors: the generator's and discriminator's losses, the shared
and tied embeddings, saving a discriminator, generator sampling and corruption, and the span-boundary head."""
import math

import pytest
import torch
import torch.nn.functional as F

import modelling_span_electra as mse
from conftest import V, se_batches


def test_two_stage_samples_from_the_forwards_own_logits(bpe_feat):
    gen_cfg, _ = mse.electra_configs("tiny", bpe_feat[1]["vocab_size"], 128, num_hidden_layers=1)
    generator = mse.SpanElectraGenerator(gen_cfg).eval()
    batch = se_batches(bpe_feat[0], 1, batch_size=4, seed=1)[0]
    with torch.no_grad():
        full, sampling = generator(**batch)["logits"], generator.sampling_logits(**batch)
    assert sampling.dtype == torch.float32 and sampling.shape == full.shape
    assert torch.equal(sampling, full)


L = 12  # the sequence length of the hand-made batches


def tiny_configs(**kw):
    """(generator, discriminator) ElectraConfigs of the tiny preset with one layer, dropout off."""
    kw.setdefault("num_hidden_layers", 1)
    return mse.electra_configs("tiny", V, L, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)


def slot_batch():
    """A hand-made [2, L] batch with 4 prediction slots (row 0: 3 real slots, row 1: 2), one span each side."""
    g = torch.Generator().manual_seed(0)
    original = torch.randint(5, V, (2, L), generator=g)
    original[:, 0], original[:, -1] = 2, 3
    positions = torch.tensor([[2, 3, 7, 0], [4, 5, 0, 0]])
    weights = torch.tensor([[1., 1., 1., 0.], [1., 1., 0., 0.]])
    input_ids = original.clone()
    input_ids.scatter_(1, positions, torch.where(weights > 0, 4, original.gather(1, positions)))
    return {"input_ids": input_ids, "original_ids": original, "masked_lm_positions": positions,
            "masked_lm_ids": original.gather(1, positions) * (weights > 0), "masked_lm_weights": weights,
            "span_position": torch.tensor([[0, 1, 0, 0], [0, 1, 0, 0]]),
            "boundary_left": torch.tensor([[1, 1, 6, 0], [3, 3, 0, 0]]),
            "boundary_right": torch.tensor([[4, 4, 8, 0], [6, 6, 0, 0]])}


def test_joint_generator_head_is_tied_to_the_shared_word_embeddings():
    """Joint training decodes the generator with the one shared embedding table (ELECTRA), not a stale copy."""
    gen_cfg, disc_cfg = tiny_configs()
    model = mse.SpanElectraJoint(gen_cfg, disc_cfg)
    shared = model.discriminator.core.electra.embeddings
    assert model.generator.mlm.generator_lm_head.weight is shared.word_embeddings.weight
    assert model.generator.mlm.electra.embeddings is shared


@pytest.mark.parametrize("use_sbo", [True, False])
def test_generator_loss_is_mlm_plus_sbo(use_sbo):
    """The generator's loss is the masked-mean MLM loss plus, with use_sbo, the SBO loss (else MLM alone)."""
    gen_cfg, _ = tiny_configs()
    torch.manual_seed(0)
    gen = mse.SpanElectraGenerator(gen_cfg, use_sbo=use_sbo)
    batch = slot_batch()
    out = gen(**batch)
    w = batch["masked_lm_weights"]
    ce = F.cross_entropy(out["logits"].flatten(0, 1), batch["masked_lm_ids"].flatten(), reduction="none")
    expected_mlm = (ce * w.flatten()).sum() / w.sum()  # padding slots (weight 0) left out
    torch.testing.assert_close(out["mlm_loss"], expected_mlm)
    if use_sbo:
        assert out["sbo_loss"] > 0
        torch.testing.assert_close(out["loss"], out["mlm_loss"] + out["sbo_loss"])
    else:
        assert "sbo_loss" not in out
        torch.testing.assert_close(out["loss"], out["mlm_loss"])


@pytest.mark.parametrize("use_all_token,use_span_head,parts", [(True, True, ("rtd_loss", "span_loss")),
                                                               (False, True, ("span_loss",)),
                                                               (True, False, ("rtd_loss",))])
def test_discriminator_loss_sums_the_chosen_objectives(use_all_token, use_span_head, parts):
    """The discriminator's loss is the sum of the objectives switched on (use_all_token: RTD, use_span_head: span)."""
    _, disc_cfg = tiny_configs()
    torch.manual_seed(0)
    disc = mse.SpanElectraDiscriminator(disc_cfg, use_all_token=use_all_token, use_span_head=use_span_head)
    batch = slot_batch()
    replaced = torch.zeros(2, L, dtype=torch.long)
    replaced[0, [2, 7]] = 1
    out = disc(**mse.discriminator_inputs(batch, batch["input_ids"], replaced))
    assert out["rtd_loss"] > 0 and ("span_loss" in out) == use_span_head
    torch.testing.assert_close(out["loss"], sum(out[p] for p in parts))


@pytest.mark.parametrize("use_sbo,use_all_token,use_span_head,disentangled", [
    (True, True, True, False), (False, False, True, False), (True, True, False, True), (False, True, True, True)])
def test_every_trainable_parameter_gets_a_gradient(use_sbo, use_all_token, use_span_head, disentangled):
    """What DDP (torchrun) needs of every recipe: a parameter left out of the loss is an error at the second step.
    With use_all_token off the all-token head still gives the logged logits but no loss: it is frozen."""
    gen_cfg, disc_cfg = tiny_configs()
    model = mse.SpanElectraJoint(gen_cfg, disc_cfg, use_sbo, use_all_token, use_span_head, disentangled)
    gen_out, disc_out, _ = model(slot_batch(), torch.Generator().manual_seed(0))
    (gen_out["loss"] + 50 * disc_out["loss"]).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    head = model.discriminator.core.discriminator_predictions
    assert all(p.requires_grad == use_all_token for p in head.parameters())


def test_saved_discriminator_folds_in_the_embedding_delta_and_leaves_the_model_alone(tmp_path):
    """A gradient-disentangled discriminator is saved with shared table + delta; the live shared table is untouched."""
    gen_cfg, disc_cfg = tiny_configs()
    model = mse.SpanElectraJoint(gen_cfg, disc_cfg, gradient_disentangled=True)
    with torch.no_grad():
        model.embedding_delta.normal_(0, 0.5)
    shared = model.discriminator.core.electra.embeddings.word_embeddings.weight
    before = shared.detach().clone()
    mse.save_discriminator(model.discriminator, str(tmp_path / "disc"), embedding_delta=model.embedding_delta)
    from transformers import ElectraForPreTraining
    saved = ElectraForPreTraining.from_pretrained(tmp_path / "disc").electra.embeddings.word_embeddings.weight
    torch.testing.assert_close(saved.detach(), before + model.embedding_delta.detach())
    assert torch.equal(shared.detach(), before)  # the joint model trains on from the same shared table
    assert model.generator.mlm.generator_lm_head.weight is shared


def test_two_stage_discriminator_starts_from_the_whole_generator_encoder():
    """init_discriminator_from_generator copies every same-shaped tensor (encoder layers too) and counts them."""
    _, disc_cfg = tiny_configs(num_hidden_layers=2)
    torch.manual_seed(0)
    gen = mse.SpanElectraGenerator(disc_cfg)  # same sizes as the discriminator: everything fits
    disc = mse.SpanElectraDiscriminator(disc_cfg)
    name = "encoder.layer.1.attention.self.query.weight"
    source = gen.mlm.electra.state_dict()
    assert not torch.equal(disc.core.electra.state_dict()[name], source[name])
    copied = mse.init_discriminator_from_generator(disc, gen)
    assert copied == len(source)
    target = disc.core.electra.state_dict()
    for key, value in source.items():
        assert torch.equal(target[key], value), key


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


def test_sampling_picks_the_first_token_whose_cdf_reaches_the_uniform_draw():
    """The binary search returns what counting the CDF entries below u returns, for the same draws; tokens of zero
    probability (a run of them inside the vocabulary, and the last one) are never drawn."""
    torch.manual_seed(0)
    logits = torch.randn(6, 24, 500) * 4
    logits[..., 100:300] = -1e4  # probabilities that underflow to 0: a flat run in the CDF
    logits[..., -1] = -1e4
    sampled = mse.sample_tokens(logits, torch.Generator().manual_seed(7))
    cdf = torch.softmax(logits, -1).cumsum(-1)
    u = torch.rand(6, 24, 1, generator=torch.Generator().manual_seed(7))
    assert torch.equal(sampled, (cdf < u * cdf[..., -1:]).sum(-1))
    assert not ((sampled >= 100) & (sampled < 300)).any() and (sampled < 499).all()
    assert sampled.shape == (6, 24) and sampled.dtype == torch.int64


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
