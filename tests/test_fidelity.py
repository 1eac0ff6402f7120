"""Fidelity to the reference code: google-research/electra (configure_pretraining.py, model/optimization.py,
run_pretraining.py) and microsoft/DeBERTa's gradient-disentangled embedding sharing (GDES)."""
import pytest
import torch

import modelling_span_electra as mse
import training_utils as tu
from argument import MaskingArgs
from io_utils import SpanElectraError
from conftest import joint_batch
from masking import max_prediction_slots


def test_gdes_stops_the_discriminator_gradient_at_the_shared_word_and_position_tables():
    """DeBERTaV3's GDES: E_D = sg(E_G) + E_delta for the word and the position table; the discriminator's loss
    reaches neither shared table (the position table used to take 1.2 of gradient mass from it)."""
    gen_cfg, disc_cfg = mse.electra_configs("tiny", 300, 32, num_hidden_layers=1)
    model = mse.SpanElectraJoint(gen_cfg, disc_cfg, gradient_disentangled=True).eval()
    batch = joint_batch()
    _, disc_out, _ = model(batch, torch.Generator().manual_seed(1))
    disc_out["loss"].backward()
    shared = model.discriminator.core.electra.embeddings
    for table in (shared.word_embeddings.weight, shared.position_embeddings.weight):
        assert table.grad is None or table.grad.abs().sum() == 0
    assert model.embedding_delta.grad.abs().sum() > 0
    assert model.position_delta.grad[:32].abs().sum() > 0 and model.position_delta.grad[32:].abs().sum() == 0


def test_gdes_with_zero_deltas_reads_what_plain_sharing_reads():
    """At the start (deltas zero) the disentangled discriminator sees exactly ELECTRA's shared embeddings, and a
    non-zero position delta shifts each position's input by that delta."""
    gen_cfg, disc_cfg = mse.electra_configs("tiny", 300, 32, num_hidden_layers=1)
    model = mse.SpanElectraJoint(gen_cfg, disc_cfg, gradient_disentangled=True).eval()
    shared = model.discriminator.core.electra.embeddings
    ids = joint_batch()["input_ids"]
    with torch.no_grad():
        plain = shared(input_ids=ids)
        torch.testing.assert_close(shared(inputs_embeds=model.discriminator_embeddings(ids)), plain)
        model.position_delta.normal_(0, 0.5)
        shifted = shared(inputs_embeds=model.discriminator_embeddings(ids))
        expected = shared(inputs_embeds=shared.word_embeddings(ids) + model.position_delta[:ids.shape[1]])
    torch.testing.assert_close(shifted, expected)
    assert (shifted - plain).abs().max() > 0.1


def test_saved_gdes_discriminator_folds_in_the_position_delta(tmp_path):
    gen_cfg, disc_cfg = mse.electra_configs("tiny", 300, 32, num_hidden_layers=1)
    model = mse.SpanElectraJoint(gen_cfg, disc_cfg, gradient_disentangled=True)
    with torch.no_grad():
        model.embedding_delta.normal_(0, 0.5)
        model.position_delta.normal_(0, 0.5)
    shared = model.discriminator.core.electra.embeddings
    words, positions = shared.word_embeddings.weight.detach().clone(), shared.position_embeddings.weight.detach().clone()
    mse.save_discriminator(model.discriminator, str(tmp_path / "disc"), embedding_delta=model.embedding_delta,
                           position_delta=model.position_delta)
    from transformers import ElectraForPreTraining
    saved = ElectraForPreTraining.from_pretrained(tmp_path / "disc").electra.embeddings
    torch.testing.assert_close(saved.word_embeddings.weight.detach(), words + model.embedding_delta.detach())
    torch.testing.assert_close(saved.position_embeddings.weight.detach(), positions + model.position_delta.detach())
    assert torch.equal(shared.position_embeddings.weight.detach(), positions)  # the live shared table is untouched


def test_token_masking_slots_are_electras_max_predictions_per_seq():
    """configure_pretraining.py: max_predictions_per_seq = int((mask_prob + 0.005) * max_seq_length) = 19 at 128."""
    assert max_prediction_slots(MaskingArgs(masking="token"), 128) == int((0.15 + 0.005) * 128) == 19
    with pytest.raises(SpanElectraError, match=r"= 19 at 128"):
        max_prediction_slots(MaskingArgs(max_predictions_per_seq=127), 128)


def test_weight_decay_spares_exactly_biases_and_layer_norms():
    """optimization.py: AdamW(eps 1e-6, betas 0.9/0.999), decay 0.01 on every weight but LayerNorm and bias."""
    gen_cfg, disc_cfg = mse.electra_configs("tiny", 300, 32, num_hidden_layers=1)
    model = mse.SpanElectraJoint(gen_cfg, disc_cfg)
    optimizer = tu.build_optimizer(model, 5e-4, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, spared = ([names[id(p)] for p in g["params"]] for g in optimizer.param_groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert optimizer.defaults["eps"] == 1e-6 and optimizer.defaults["betas"] == (0.9, 0.999)
    assert all(n.endswith(".bias") or "LayerNorm" in n or ".mlp.2." in n or ".mlp.5." in n for n in spared)
    assert not any(n.endswith(".bias") or "LayerNorm" in n for n in decay)
    assert "generator.mlm.electra.embeddings.word_embeddings.weight" in decay  # the shared table: ELECTRA decays it