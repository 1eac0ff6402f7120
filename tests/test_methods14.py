"""The equal-compute comparison's FLOP counting: attention is counted in every part of a step, the
frozen generator's eval-mode forward in two-stage training included."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import compare_pretraining as cp  # noqa: E402
from modelling_span_electra import (SpanElectraDiscriminator, SpanElectraGenerator, corrupt,  # noqa: E402
                                    discriminator_inputs, electra_configs)

VOCAB, SEQ, ROWS = 1000, 128, 2


def test_fused_attention_is_counted():
    """SDPA without dropout takes a fused CPU kernel FlopCounterMode has no formula for (it counted 0)."""
    batch, heads, dim = 2, 2, 32
    q = torch.randn(batch, heads, SEQ, dim)
    expected = 2 * 2 * batch * heads * SEQ * SEQ * dim  # QK^T and PV
    assert cp.count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == expected


@pytest.mark.parametrize("name", ["se_two_stage", "se_two_stage_no_heads"])
def test_two_stage_step_is_discriminator_plus_the_frozen_generators_sampling_forward(name):
    recipe = cp.RECIPES[name][1]
    sizes = dict(model_size="tiny", vocab=VOCAB, seq=SEQ)
    batch = cp.synthetic_batch("two_stage", recipe, VOCAB, SEQ, ROWS)
    gen_cfg, disc_cfg = electra_configs("tiny", VOCAB, SEQ)
    generator = SpanElectraGenerator(gen_cfg, recipe["use_sbo"])
    generator_forward = cp.count_flops(lambda: generator.sampling_logits(**batch))  # all that sampling needs
    if recipe["use_sbo"]:  # the frozen generator's span-boundary head over the vocabulary fed nothing: not run
        slots = batch["masked_lm_positions"].shape[1]
        vocab_projection = 2 * ROWS * slots * gen_cfg.embedding_size * VOCAB
        assert cp.count_flops(lambda: generator(**batch)) > generator_forward + vocab_projection
    with torch.no_grad():
        corrupted, replaced = corrupt(batch, generator(**batch))
    discriminator = SpanElectraDiscriminator(disc_cfg, True, recipe["use_span_head"])
    discriminator_step = cp.count_flops(
        lambda: discriminator(**discriminator_inputs(batch, corrupted, replaced))["loss"].backward())
    # the generator's attention alone: 2 layers x (QK^T + PV) of 64 dimensions
    attention = gen_cfg.num_hidden_layers * 2 * 2 * ROWS * SEQ * SEQ * gen_cfg.hidden_size
    assert generator_forward > attention > 0
    assert cp.counted_flops("two_stage", recipe, sizes, ROWS) == discriminator_step + generator_forward


def test_joint_and_mlm_counts_keep_their_attention():
    """The training-mode steps already counted their attention (dropout sends SDPA to the math path):
    a joint step is still the generator's forward and backward plus the discriminator's."""
    recipe = cp.RECIPES["se_joint"][1]
    sizes = dict(model_size="tiny", vocab=VOCAB, seq=SEQ)
    generator_step = cp.counted_flops("generator", recipe, sizes, ROWS)
    gen_cfg, _ = electra_configs("tiny", VOCAB, SEQ)
    attention_fwd_bwd = 3 * gen_cfg.num_hidden_layers * 2 * 2 * ROWS * SEQ * SEQ * gen_cfg.hidden_size
    generator = SpanElectraGenerator(gen_cfg, True)
    batch = cp.synthetic_batch("generator", recipe, VOCAB, SEQ, ROWS)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):  # the fused kernel, no dropout
        generator.eval()
        fused_forward = cp.count_flops(lambda: generator(**batch))
    generator.train()
    assert generator_step == pytest.approx(3 * fused_forward, rel=0.01)  # forward + backward (2x)
    assert generator_step > attention_fwd_bwd


def test_the_mlm_baseline_starts_as_the_discriminators_do(tmp_path, monkeypatch):
    """The MLM baseline is discriminator-sized and fine-tuned beside the discriminators: it takes their
    initial weight std (0.02), not the tiny generator preset's 0.05 (made for a 64-wide generator)."""
    class Started(Exception):
        pass

    def started(config):
        raise Started(config)
    monkeypatch.setattr(cp.trainMLM_SpanElectra, "main", started)
    scale = cp.SCALES["tiny"]
    config = cp.compare_args(tasks="", out_dir=str(tmp_path), device="cpu").resolved()
    with pytest.raises(Started) as run:
        cp.pretrain(cp.RECIPES["mlm"][1], 1e12, config, {"features": str(tmp_path), "vocab": VOCAB}, scale,
                    str(tmp_path / "mlm"))
    gen_cfg, disc_cfg = electra_configs("tiny", VOCAB, SEQ, **run.value.args[0].model_overrides())
    assert gen_cfg.initializer_range == disc_cfg.initializer_range == 0.02
    assert (gen_cfg.hidden_size, gen_cfg.intermediate_size) == (disc_cfg.hidden_size, disc_cfg.intermediate_size)
    assert electra_configs("tiny", VOCAB, SEQ)[0].initializer_range == 0.05  # the preset's own generator keeps it
