"""cpu_dropout: dropout masks from 16-bit uniform draws on a CPU, in place of torch's serial Bernoulli sampler."""
import copy
import json

import pytest
import torch
from torch import nn
from transformers import ElectraConfig, ElectraForPreTraining, ElectraModel

import cpu_dropout
import modelling_span_electra as mse

KEEP_01 = 1 - 6554 / 65536  # p = 0.1 rounded to 65536ths


def test_the_mask_keeps_one_minus_p_rounded_to_a_65536th_in_each_of_a_draws_four_lanes():
    """Every 16-bit lane of a 64-bit draw is uniform (a draw bounded to [0, 2^63) would keep every element of
    its top lane), and the scale is the inverse of the rounded keep rate, so each output keeps its expectation."""
    torch.manual_seed(0)
    keep, scale = cpu_dropout.keep_mask((1000, 1000), 0.1)
    assert keep.shape == (1000, 1000) and keep.dtype == torch.bool
    assert scale == pytest.approx(1 / KEEP_01, rel=1e-12)
    lanes = keep.flatten().view(-1, 4).float().mean(0)
    sigma = (KEEP_01 * (1 - KEEP_01) / 250_000) ** 0.5
    assert (lanes - KEEP_01).abs().max() < 5 * sigma, lanes
    assert cpu_dropout.keep_mask((3, 5), 0.5)[0].shape == (3, 5)  # a count that is no multiple of 4
    assert cpu_dropout.keep_mask((0, 7), 0.1)[0].shape == (0, 7)


def test_dropout_zeroes_or_scales_each_element_and_its_gradient_alike():
    torch.manual_seed(1)
    x = torch.randn(64, 128, 32, requires_grad=True)
    y = cpu_dropout.dropout(x, 0.1)
    kept = y != 0
    assert torch.allclose(y[kept], x.detach()[kept] / KEEP_01, rtol=1e-6)
    assert abs(kept.float().mean().item() - KEEP_01) < 0.01
    grad = torch.randn_like(x)
    y.backward(grad)
    assert torch.allclose(x.grad, torch.where(kept, grad / KEEP_01, 0.0), rtol=1e-6)


def test_a_bf16_input_is_scaled_in_float32_then_rounded_once():
    """The mask stays float32: a bf16 scale (1.109 for 1.111) would shrink every kept element by 0.16%."""
    torch.manual_seed(2)
    x = torch.randn(100_000).to(torch.bfloat16)
    y = cpu_dropout.dropout(x, 0.1)
    kept = y != 0
    assert y.dtype == torch.bfloat16
    assert torch.equal(y[kept], (x[kept].float() / KEEP_01).to(torch.bfloat16))


def test_the_same_seed_gives_the_same_mask_and_the_saved_rng_state_the_next_one():
    """The draws come from torch's global generator: manual_seed repeats a run, a checkpoint's RNG state resumes it."""
    x = torch.ones(4096)
    torch.manual_seed(7)
    first = cpu_dropout.dropout(x, 0.1)
    state = torch.get_rng_state()
    second = cpu_dropout.dropout(x, 0.1)
    torch.manual_seed(7)
    assert torch.equal(cpu_dropout.dropout(x, 0.1), first)
    torch.set_rng_state(state)
    assert torch.equal(cpu_dropout.dropout(x, 0.1), second)
    assert not torch.equal(first, second)


def test_evaluation_and_other_devices_and_compiled_graphs_keep_torch_dropout():
    x = torch.randn(10)
    assert torch.equal(cpu_dropout.dropout(x, 0.1, training=False), x)
    assert torch.equal(cpu_dropout.dropout(x, 0.0), x)
    assert torch.equal(cpu_dropout.dropout(x, 1.0), torch.zeros(10))
    assert not cpu_dropout.uses_fast_path(torch.empty(3, device="meta"), 0.1, True)  # CUDA: torch's Philox
    ops = []

    def record(gm, example_inputs):
        ops.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward
    torch._dynamo.reset()
    torch.compile(lambda t: cpu_dropout.dropout(t, 0.1), backend=record)(torch.randn(8))
    assert any("dropout" in op for op in ops) and not any("random_" in op for op in ops), ops


def attention_of(stock):
    """The attention a swapped copy of the stock model runs: ours in place of SDPA. transformers 4.x's ELECTRA runs
    eager attention, which calls the (swapped) nn.Dropout module itself."""
    return cpu_dropout.ATTENTION if stock.config._attn_implementation == "sdpa" else stock.config._attn_implementation


def tiny_config(p):
    return ElectraConfig(vocab_size=50, embedding_size=16, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=p,
                         attention_probs_dropout_prob=p)


def test_an_electra_with_nothing_dropped_computes_what_sdpa_does_with_and_without_padding(monkeypatch):
    """p = 1e-6 rounds to no dropped element and a scale of 1: the swapped model in training mode must then give
    the untouched model's hidden states, padding mask included, through its own attention and masks."""
    torch.manual_seed(3)
    reference = ElectraModel(tiny_config(1e-6)).eval()
    model = cpu_dropout.use_cpu_dropout(copy.deepcopy(reference)).train()
    assert model.config._attn_implementation == attention_of(reference)
    draws, keep_mask = [], cpu_dropout.keep_mask
    monkeypatch.setattr(cpu_dropout, "keep_mask", lambda *args: draws.append(tuple(args[0])) or keep_mask(*args))
    ids = torch.randint(0, 50, (3, 12))
    padded = torch.ones(3, 12, dtype=torch.long)
    padded[1, 7:] = 0
    for attention_mask in (None, padded):
        got = model(ids, attention_mask=attention_mask).last_hidden_state
        want = reference(ids, attention_mask=attention_mask).last_hidden_state
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert len(draws) == 2 * (1 + 2 * 3)  # embeddings, then attention probabilities and two outputs per layer
    assert (3, 2, 12, 12) in draws  # the attention probabilities' mask


def test_span_electra_models_use_it_and_save_plain_transformers_folders(tmp_path):
    torch.manual_seed(4)
    disc = mse.SpanElectraDiscriminator(tiny_config(0.1))
    dropouts = [m for m in disc.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(type(m) is cpu_dropout.Dropout and m.p == 0.1 for m in dropouts)
    stock = ElectraForPreTraining(tiny_config(0.1))
    assert disc.config._attn_implementation == attention_of(stock)
    disc.core.save_pretrained(tmp_path)
    assert cpu_dropout.ATTENTION not in (tmp_path / "config.json").read_text()
    loaded = ElectraForPreTraining.from_pretrained(tmp_path)
    assert loaded.config._attn_implementation == stock.config._attn_implementation
    assert all(type(m) is nn.Dropout for m in loaded.modules() if isinstance(m, nn.Dropout))
    state = disc.core.state_dict()
    assert all(torch.equal(t, state[k]) for k, t in loaded.state_dict().items())
    assert json.loads((tmp_path / "config.json").read_text())["hidden_dropout_prob"] == 0.1
