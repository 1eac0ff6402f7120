"""modelling_span_electra.py on hand-made tensors: the generator's and discriminator's losses, the shared and
tied embeddings, saving a discriminator, generator sampling and corruption, and the span-boundary head."""
import torch

import modelling_span_electra as mse
from conftest import se_batches


def test_two_stage_samples_from_the_forwards_own_logits(bpe_feat):
    gen_cfg, _ = mse.electra_configs("tiny", bpe_feat[1]["vocab_size"], 128, num_hidden_layers=1)
    generator = mse.SpanElectraGenerator(gen_cfg).eval()
    batch = se_batches(bpe_feat[0], 1, batch_size=4, seed=1)[0]
    with torch.no_grad():
        full, sampling = generator(**batch)["logits"], generator.sampling_logits(**batch)
    assert sampling.dtype == torch.float32 and sampling.shape == full.shape
    assert torch.equal(sampling, full)
