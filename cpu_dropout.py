"""Dropout for training on a CPU, from 16-bit uniform draws: several times faster than torch's.

On a CPU, torch draws dropout's Bernoulli mask one element at a time (its parallel MKL generator is
used only on Intel CPUs): ~11 ms per million elements, 14-16% of an ELECTRA-Small step on 2 AMD cores.
Here one 64-bit draw of the same generator gives four elements' 16-bit uniforms, compared with
round(p * 65536): ~1 ms per million. An element is kept with probability 1 - p rounded to 1/65536
(0.9 exactly to 6e-6) and scaled by the inverse of that rounded rate, so each output's expectation is
its input, as in torch's dropout. The draws come from torch's global generator, so torch.manual_seed
and a checkpoint's RNG state make a run repeat exactly.

Elsewhere (CUDA, or inside torch.compile, where Inductor generates its own fused random numbers) and
in evaluation, torch's dropout runs unchanged. Models saved from a model using this are plain
transformers folders: only modules and the in-memory config's attention name change.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

try:  # transformers' attention and mask interfaces; before them ELECTRA's attention calls its nn.Dropout
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
except ImportError:
    AttentionInterface = None

# whether torch.compile is tracing the call: torch.compiler's from torch 2.3, dynamo's own before
is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
ATTENTION = "sdpa_cpu_dropout"  # the attention function's name in transformers' AttentionInterface
LEVELS = 1 << 16


def keep_mask(shape, p, device=None):
    """Boolean [shape] mask, True where an element is kept (probability 1 - round(p * 2^16) / 2^16), and
    the scale that keeps the expectation: 2^16 / (2^16 - round(p * 2^16))."""
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None)
    dropped = round(p * LEVELS)
    # each int16 of a full-range int64 draw is uniform over [-2^15, 2^15): the lowest `dropped` values drop
    keep = words.view(torch.int16)[:count].view(shape) >= dropped - LEVELS // 2
    return keep, LEVELS / (LEVELS - dropped)


class _MaskedScale(torch.autograd.Function):
    """x * mask, the mask (0 or the scale) saved for the backward pass. The mask is float32 even for a bf16 x:
    the scale rounded to bf16 (1.109 for 1.111) would bias every kept element."""

    @staticmethod
    def forward(ctx, x, p):
        keep, scale = keep_mask(x.shape, p, x.device)
        mask = keep * scale
        ctx.save_for_backward(mask)
        return (x * mask).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return (grad * mask).to(grad.dtype), None


def uses_fast_path(x, p, training):
    """Whether this call draws its mask here: training, 0 < p < 1, a CPU tensor, not under torch.compile."""
    return training and 0.0 < p < 1.0 and x.device.type == "cpu" and not is_compiling()


def dropout(x, p, training=True):
    """F.dropout, with the mask drawn from 16-bit uniforms on a CPU (see the module's docstring)."""
    if uses_fast_path(x, p, training):
        return _MaskedScale.apply(x, p)
    return F.dropout(x, p, training)


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU training mask comes from `dropout` above; the same p, no state."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


def sdpa_with_cpu_dropout(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' SDPA attention, except where attention dropout runs on a CPU: there SDPA itself falls
    back to its math path with torch's dropout, so the same math runs here with the mask drawn above."""
    causal = kwargs.get("is_causal") or getattr(module, "is_causal", False)
    other_terms = kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
    grouped_heads = key.shape[1] != query.shape[1]  # fewer key/value heads than query heads: SDPA's to handle
    if causal or other_terms or grouped_heads or not uses_fast_path(query, dropout, True):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:  # SDPA's masks: boolean (True: attend) or additive
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min) \
            if attention_mask.dtype == torch.bool else scores + attention_mask
    probs = _MaskedScale.apply(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def register_attention():
    """Registers sdpa_with_cpu_dropout, and SDPA's masks for it, with transformers (a dict update: registering
    again changes nothing); False on a transformers without the attention interface (there ELECTRA's attention
    calls its nn.Dropout)."""
    if AttentionInterface is None:
        return False
    AttentionInterface.register(ATTENTION, sdpa_with_cpu_dropout)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return True


def use_cpu_dropout(model):
    """Swaps model's nn.Dropout modules for Dropout and, where it runs SDPA attention, that attention for
    sdpa_with_cpu_dropout. The weights, the config's fields and what save_pretrained writes stay the same."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout(child.p, child.inplace))
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa" and register_attention():
        config._attn_implementation = ATTENTION
    return model
