"""SpanElectra models on top of transformers' ELECTRA.

* SpanElectraGenerator: ElectraForMaskedLM whose LM head runs only at the prediction slots (ELECTRA's
  max_predictions_per_seq masked positions per row), plus SpanBERT's span-boundary objective (SBO):
  each masked token is predicted from the two tokens just outside its span and its position inside
  the span, decoded with the tied embeddings.
* SpanElectraDiscriminator: ElectraForPreTraining's replaced-token detection over every token, plus
  a span-boundary predictive head (is this span token replaced?, from the boundaries and position).
* SpanElectraJoint: both at once with shared embeddings (ELECTRA), optionally DeBERTaV3's
  gradient-disentangled sharing; loss = generator loss + disc_weight x discriminator loss.
* SpanElectraTwoStage: a saved generator, frozen, feeds the discriminator.

Every tensor has a fixed shape ([B, L] tokens, [B, P] slots; padding slots weigh 0 in masked-mean
losses) and nothing reads a value back to the host, so torch.compile captures the whole step once.

Saving writes standard transformers folders: out_dir/generator loads with
ElectraForMaskedLM.from_pretrained and out_dir/discriminator with ElectraForPreTraining; the span
heads are stored beside them in their own safetensors files.
"""
import contextlib
import copy
import hashlib
import logging
import math
import os

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining
from transformers.utils import logging as hf_logging

from argument import MODEL_PRESETS, model_positions
from cpu_dropout import use_cpu_dropout
from io_utils import SpanElectraError, atomic_write_json, building_folder, first_line, read_json, sha256_file
from tokenization import copy_tokenizer, has_tokenizer

logger = logging.getLogger("span_electra")

SPAN_REPLACED_PRIOR = 0.9  # share of span tokens a generator's sample replaces (1 - its accuracy)
MAX_SPAN_POSITIONS = 64  # positions inside a span seen by the span heads (longer spans share the last)
HEAD_FILE = "span_heads.safetensors"
HEAD_CONFIG = "span_electra.json"


def electra_configs(model_size, vocab_size, max_seq_len, pad_token_id=0, **overrides):
    """(generator, discriminator) ElectraConfigs for a preset size; overrides change any size field
    ('gen_' prefix for the generator's)."""
    if model_size not in MODEL_PRESETS:
        raise SpanElectraError(f"model_size: '{model_size}' is not one of {', '.join(MODEL_PRESETS)}")
    disc, gen = MODEL_PRESETS[model_size]
    disc = {**disc, **{k: v for k, v in overrides.items() if not k.startswith("gen_") and v is not None}}
    gen = {**disc, **gen, **{k[4:]: v for k, v in overrides.items() if k.startswith("gen_") and v is not None}}
    gen["embedding_size"] = disc["embedding_size"]  # shared embeddings
    common = dict(vocab_size=vocab_size, max_position_embeddings=model_positions(max_seq_len),
                  pad_token_id=pad_token_id)
    for cfg, prefix in ((disc, ""), (gen, "gen_")):
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise SpanElectraError(f"{prefix}num_attention_heads: {cfg['num_attention_heads']} heads do not divide "
                                   f"{prefix}hidden_size {cfg['hidden_size']}; pick sizes where they do (e.g. 64 per "
                                   "head)")
    return ElectraConfig(**common, **gen), ElectraConfig(**common, **disc)


class SpanBoundaryHead(nn.Module):
    """SpanBERT's span-boundary MLP: [h(start-1); h(end+1); p(position)] -> 2 x (Linear, GeLU, LayerNorm)."""

    def __init__(self, hidden_size, out_size, layer_norm_eps=1e-12):
        super().__init__()
        self.position_embeddings = nn.Embedding(MAX_SPAN_POSITIONS, hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(3 * hidden_size, hidden_size), nn.GELU(), nn.LayerNorm(hidden_size, eps=layer_norm_eps),
            nn.Linear(hidden_size, out_size), nn.GELU(), nn.LayerNorm(out_size, eps=layer_norm_eps))

    def forward(self, hidden, left, right, position):
        """hidden [B, L, H]; left/right/position [B, P] of the prediction slots -> [B, P, out_size]."""
        pos = self.position_embeddings(position.clamp(max=MAX_SPAN_POSITIONS - 1))
        return self.mlp(torch.cat([gather_slots(hidden, left), gather_slots(hidden, right), pos], dim=-1))


def gather_slots(hidden, positions):
    """hidden [B, L, H] at positions [B, P] -> [B, P, H] (a gather: static shapes, no host sync)."""
    return torch.take_along_dim(hidden, positions.unsqueeze(-1), dim=1)


def masked_mean(values, weights):
    """Mean of values over the slots whose weight is 1 (padding slots weigh 0)."""
    return (values * weights).sum() / weights.sum().clamp(min=1)


def encode(electra, input_ids, attention_mask=None, inputs_embeds=None):
    """Last hidden states of an ElectraModel. Full packed rows (attention_mask None) go through its
    embeddings and encoder directly: ElectraModel.forward would build an all-ones [B, 1, L, L] mask
    under torch.compile (transformers 5.17), and a mask sends compiled attention to SDPA's math path
    (fp32 scores) instead of the fused flash/cuDNN kernel."""
    if attention_mask is not None:
        return electra(input_ids=None if inputs_embeds is not None else input_ids, inputs_embeds=inputs_embeds,
                       attention_mask=attention_mask).last_hidden_state
    hidden = electra.embeddings(input_ids=None if inputs_embeds is not None else input_ids, inputs_embeds=inputs_embeds)
    if hasattr(electra, "embeddings_project"):
        hidden = electra.embeddings_project(hidden)
    return electra.encoder(hidden)[0]


class SpanElectraGenerator(nn.Module):
    """Span-level masked LM: MLM at the prediction slots only, plus the span-boundary objective."""

    def __init__(self, config: ElectraConfig, use_sbo=True, mlm=None):
        super().__init__()
        self.mlm = use_cpu_dropout(mlm if mlm is not None else ElectraForMaskedLM(config))  # mlm: a loaded one
        config = self.mlm.config
        self.sbo = SpanBoundaryHead(config.hidden_size, config.hidden_size, config.layer_norm_eps) if use_sbo else None

    @property
    def config(self):
        return self.mlm.config

    def decode(self, states):
        """Vocabulary logits through ELECTRA's generator head and the tied embeddings."""
        return self.mlm.generator_lm_head(self.mlm.generator_predictions(states))

    def slot_loss(self, logits, targets, weights):
        return masked_mean(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none"),
                           weights.flatten())

    def sampling_logits(self, input_ids, masked_lm_positions, attention_mask=None, **unused):
        """The MLM head's logits at the prediction slots alone, [B, P, V]: all that sampling replacements needs
        (two-stage's frozen generator: no losses, no span-boundary head over the vocabulary)."""
        hidden = encode(self.mlm.electra, input_ids, attention_mask)
        return self.decode(gather_slots(hidden, masked_lm_positions)).float()

    def forward(self, input_ids, masked_lm_positions, masked_lm_ids, masked_lm_weights, span_position,
                boundary_left, boundary_right, attention_mask=None, inputs_embeds=None, **unused):
        hidden = encode(self.mlm.electra, input_ids, attention_mask, inputs_embeds)
        logits = self.decode(gather_slots(hidden, masked_lm_positions)).float()  # [B, P, V]
        out = {"logits": logits, "targets": masked_lm_ids, "weights": masked_lm_weights}
        out["mlm_loss"] = out["loss"] = self.slot_loss(logits, masked_lm_ids, masked_lm_weights)
        if self.sbo is not None:
            out["sbo_logits"] = self.decode(self.sbo(hidden, boundary_left, boundary_right, span_position)).float()
            out["sbo_loss"] = self.slot_loss(out["sbo_logits"], masked_lm_ids, masked_lm_weights)
            out["loss"] = out["loss"] + out["sbo_loss"]
        return out


@torch.no_grad()
def sample_tokens(logits, rng=None, temperature=1.0):
    """Sample one token per row from softmax(logits / temperature), in fp32, by inverting the CDF:
    one uniform number per row (the Gumbel-max trick needs one per vocabulary entry, and drawing
    them was 30% of a CPU step). temperature may be a 0-d tensor (a changing float would make
    torch.compile recompile)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    cdf = probs.cumsum(dim=-1)
    # (generator=None must not be passed explicitly: torch.compile rejects it with dynamic shapes)
    u = torch.rand(cdf.shape[:-1] + (1,), device=cdf.device, **({"generator": rng} if rng else {}))
    # the first token whose CDF reaches u, found by binary search (counting the entries below u costs a pass over
    # the whole vocabulary and, on a CPU, a copy of it as integers); u is scaled by the CDF's own total, so
    # rounding in the sum never points past the last token
    return torch.searchsorted(cdf, u * cdf[..., -1:]).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def corrupt(batch, gen_out, rng=None, temperature=1.0, vocab_size=None):
    """Discriminator input: the prediction slots filled with generator samples; labels 1 where the
    token now differs from the original (a sample equal to the original counts as original). Samples come
    from the first vocab_size rows only: a converted model's rows past its vocabulary never occur in text,
    and replacements there would tell the discriminator 'replaced' for free."""
    original, positions = batch["original_ids"], batch["masked_lm_positions"]
    sampled = sample_tokens(gen_out["logits"].detach()[..., :vocab_size], rng, temperature)
    # padding slots point at [CLS] (position 0, never masked) and write back its own id
    fill = torch.where(batch["masked_lm_weights"] > 0, sampled, original.gather(1, positions))
    corrupted = original.scatter(1, positions, fill)
    return corrupted, (corrupted != original).long()


def set_prior(classifier, probability):
    """Start a binary classifier at the base rate: bias = log-odds of `probability`, so the first
    steps need not drag every weight towards 'mostly original'. Without it the discriminator's
    encoder collapses to one output vector for every token and never learns (seen at tiny size)."""
    with torch.no_grad():
        classifier.bias.fill_(math.log(probability / (1 - probability)))


class SpanElectraDiscriminator(nn.Module):
    """Replaced-token detection over all tokens plus the span-boundary predictive objective."""

    def __init__(self, config: ElectraConfig, use_all_token=True, use_span_head=True, core=None, mask_ratio=0.15):
        super().__init__()
        if not (use_all_token or use_span_head):
            raise SpanElectraError("use_all_token / use_span_head: the discriminator needs at least one objective")
        self.core = use_cpu_dropout(core if core is not None else ElectraForPreTraining(config))  # core: a loaded one
        self.use_all_token = use_all_token
        if not use_all_token:  # no objective trains the all-token head (its logits are still reported): frozen,
            # so that DDP does not wait for gradients it never gets and AdamW's weight decay leaves it alone
            self.core.discriminator_predictions.requires_grad_(False)
        self.span_head = SpanBoundaryHead(config.hidden_size, config.hidden_size, config.layer_norm_eps) \
            if use_span_head else None
        self.span_classifier = nn.Linear(config.hidden_size, 1) if use_span_head else None
        # about mask_ratio of all tokens are replaced, and most tokens inside a span
        if core is None:
            set_prior(self.core.discriminator_predictions.dense_prediction, mask_ratio)
        if self.span_classifier is not None:  # a fresh head (a saved one is loaded over it)
            set_prior(self.span_classifier, SPAN_REPLACED_PRIOR)

    @property
    def config(self):
        return self.core.config

    def forward(self, input_ids, replaced, masked_lm_positions, masked_lm_weights, span_position, boundary_left,
                boundary_right, attention_mask=None, inputs_embeds=None, **unused):
        hidden = encode(self.core.electra, input_ids, attention_mask, inputs_embeds)
        logits = self.core.discriminator_predictions(hidden).float()  # [B, L]
        token_weights = torch.ones_like(logits) if attention_mask is None else attention_mask.to(logits.dtype)
        out = {"logits": logits, "token_weights": token_weights, "loss": logits.new_zeros(())}
        out["rtd_loss"] = masked_mean(F.binary_cross_entropy_with_logits(logits, replaced.to(logits.dtype),
                                                                         reduction="none"), token_weights)
        if self.use_all_token:
            out["loss"] = out["loss"] + out["rtd_loss"]
        if self.span_head is not None:
            states = self.span_head(hidden, boundary_left, boundary_right, span_position)
            span_logits = self.span_classifier(states).squeeze(-1).float()  # [B, P]
            span_targets = replaced.gather(1, masked_lm_positions).to(span_logits.dtype)
            out["span_loss"] = masked_mean(F.binary_cross_entropy_with_logits(span_logits, span_targets,
                                                                              reduction="none"), masked_lm_weights)
            out["loss"] = out["loss"] + out["span_loss"]
        return out


def discriminator_inputs(batch, corrupted, replaced, inputs_embeds=None):
    """The discriminator's keyword arguments: the corrupted ids plus the batch's slot fields."""
    keep = ("attention_mask", "masked_lm_positions", "masked_lm_weights", "span_position", "boundary_left",
            "boundary_right")
    return {"input_ids": corrupted, "replaced": replaced, "inputs_embeds": inputs_embeds,
            **{k: batch[k] for k in keep if k in batch}}


def note_replaced_embeddings(generator_embeddings, shared):
    """Say so when a pre-trained generator's own embeddings give way to the discriminator's (a pair trained
    apart; a joint run's or a released ELECTRA's pair shares them already)."""
    mine, theirs = generator_embeddings.state_dict(), shared.state_dict()
    pairs = [(mine[k].float(), theirs[k].float()) for k in mine if k in theirs]
    if any(a.shape != b.shape for a, b in pairs):
        how = "of other shapes"
    else:
        differ = max(((a - b).abs().max().item() for a, b in pairs), default=0.0)
        how = f"differing by up to {differ:.4f}" if differ > 0 else None
    if how:
        logger.info("init_from: the generator's own embeddings (%s) give way to the discriminator's: joint "
                    "training shares one table", how)


class SpanElectraJoint(nn.Module):
    """ELECTRA's joint training: generator and discriminator share word and position embeddings.

    With gradient_disentangled (DeBERTaV3), the discriminator reads the shared word and position
    tables without pushing gradients into them and learns a zero-initialised delta on top of each (as
    microsoft/DeBERTa's replaced-token-detection model does for both tables; the small embedding
    LayerNorm and token-type table stay shared as ELECTRA shares them)."""

    def __init__(self, gen_config, disc_config, use_sbo=True, use_all_token=True, use_span_head=True,
                 gradient_disentangled=False, mask_ratio=0.15, generator=None, discriminator=None):
        super().__init__()  # generator, discriminator: pre-trained ones (load_pretrained_*) instead of fresh ones
        self.generator = generator or SpanElectraGenerator(gen_config, use_sbo)
        self.discriminator = discriminator or SpanElectraDiscriminator(disc_config, use_all_token, use_span_head,
                                                                       mask_ratio=mask_ratio)
        shared = self.discriminator.core.electra.embeddings
        if self.generator.config.embedding_size != shared.word_embeddings.embedding_dim:
            raise SpanElectraError(f"init_from: the generator's embeddings ({self.generator.config.embedding_size}) and "
                                   f"the discriminator's ({shared.word_embeddings.embedding_dim}) differ; ELECTRA's "
                                   "joint training shares them, so use a pair trained together")
        if generator is not None and discriminator is not None:
            note_replaced_embeddings(generator.mlm.electra.embeddings, shared)
        self.generator.mlm.electra.embeddings = shared
        self.generator.mlm.generator_lm_head.weight = shared.word_embeddings.weight
        self.embedding_delta = self.position_delta = None
        if gradient_disentangled:
            self.embedding_delta = nn.Parameter(torch.zeros_like(shared.word_embeddings.weight))
            self.position_delta = nn.Parameter(torch.zeros_like(shared.position_embeddings.weight))
        self.sample_vocab_size = None  # the features' vocabulary, where the generator has more rows (corrupt)

    def discriminator_embeddings(self, input_ids):
        """The inputs_embeds the discriminator reads: sg(shared word table) + its delta, plus sg(shared position
        table) + its delta. The embeddings module adds the live position table once more (positions 0..L-1, as for
        any inputs_embeds), so that term is taken out here: its value cancels and so does its gradient, and the
        discriminator's loss reaches neither shared table."""
        shared = self.discriminator.core.electra.embeddings
        words = F.embedding(input_ids, shared.word_embeddings.weight.detach() + self.embedding_delta)
        length = input_ids.shape[1]
        live = shared.position_embeddings.weight[:length]
        return words + (live.detach() + self.position_delta[:length] - live)

    def forward(self, batch, sample_rng=None, temperature=1.0):
        gen_out = self.generator(**batch)
        corrupted, replaced = corrupt(batch, gen_out, sample_rng, temperature, self.sample_vocab_size)
        embeds = self.discriminator_embeddings(corrupted) if self.embedding_delta is not None else None
        disc_out = self.discriminator(**discriminator_inputs(batch, corrupted, replaced, embeds))
        return gen_out, disc_out, replaced


class SpanElectraTwoStage(nn.Module):
    """The two-stage recipe: a saved generator, frozen, fills the masks; only the discriminator trains.
    The generator is no submodule (not in state_dict or parameters()) but moves with .to()."""

    def __init__(self, generator, discriminator):
        super().__init__()
        self.discriminator = discriminator
        self.frozen = [generator.eval().requires_grad_(False)]
        self.sample_vocab_size = None  # the features' vocabulary, where the generator has more rows (corrupt)

    def _apply(self, fn, recurse=True):
        self.frozen[0]._apply(fn, recurse)  # .to(device), .half(), ...: without it the generator stays behind
        return super()._apply(fn, recurse)

    def forward(self, batch, sample_rng=None, temperature=1.0):
        with torch.no_grad():
            gen_out = {"logits": self.frozen[0].sampling_logits(**batch)}
        corrupted, replaced = corrupt(batch, gen_out, sample_rng, temperature, self.sample_vocab_size)
        disc_out = self.discriminator(**discriminator_inputs(batch, corrupted, replaced))
        return None, disc_out, replaced


# ---------------------------------------------------------------- saving and loading
def _save_heads(modules, directory, config):
    state = {f"{name}.{k}": v.detach().cpu().contiguous() for name, m in modules.items() if m is not None
             for k, v in m.state_dict().items()}
    if state:
        save_file(state, os.path.join(directory, HEAD_FILE))
    atomic_write_json(os.path.join(directory, HEAD_CONFIG), config)


def _load_heads(modules, directory):
    """Load the span heads span_electra.json says the model has (modules: name -> head, None where it has
    none) from span_heads.safetensors; a missing file or head is an error, never a head left untrained."""
    modules = {name: m for name, m in modules.items() if m is not None}
    if not modules:
        return
    path = os.path.join(directory, HEAD_FILE)
    if not os.path.isfile(path):
        raise SpanElectraError(f"model_dir: '{path}' is missing, and {HEAD_CONFIG} says the model has its "
                               f"{', '.join(modules)} head; copy the whole model folder, or export it again")
    try:
        state = load_file(path)
    except Exception:  # safetensors' own error types: a cut-short save, another format
        raise SpanElectraError(f"model_dir: '{path}' is not a readable safetensors file (truncated or another "
                               "format); save or export the model again, or point at another folder") from None
    for name, m in modules.items():
        try:
            m.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")})
        except RuntimeError as e:  # missing or reshaped tensors: torch's message runs to many lines
            raise SpanElectraError(f"model_dir: '{path}' does not hold the {name} head {HEAD_CONFIG} describes "
                                   f"({first_line(e)}); save or export the model again") from None


@contextlib.contextmanager
def quiet_transformers(errors_only=True):
    """Hide transformers' progress bars (loading and writing weights) and, with errors_only, its load
    report table: the scripts log one line of their own instead."""
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    if errors_only:
        hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def save_generator(generator, directory, tokenizer_dir=None, trained_seq_len=None):
    """directory loads with ElectraForMaskedLM.from_pretrained; the SBO head sits beside it, with the
    sequence length it was trained on. The folder is built under a temporary name and replaces an
    older one whole."""
    with building_folder(directory) as tmp, quiet_transformers(errors_only=False):
        generator.mlm.save_pretrained(tmp, safe_serialization=True)
        _save_heads({"sbo": generator.sbo}, tmp, {"kind": "generator", "use_sbo": generator.sbo is not None,
                                                  "trained_seq_len": trained_seq_len})
        if tokenizer_dir:
            copy_tokenizer(tokenizer_dir, tmp)


def save_discriminator(discriminator, directory, tokenizer_dir=None, embedding_delta=None, trained_seq_len=None,
                       position_delta=None):
    """directory loads with ElectraForPreTraining.from_pretrained; the span head sits beside it.
    Gradient-disentangled deltas are folded into the saved word (embedding_delta) and position
    (position_delta) embeddings. Published whole, as save_generator."""
    core = discriminator.core
    if embedding_delta is not None or position_delta is not None:
        core = copy.deepcopy(core)
        with torch.no_grad():
            if embedding_delta is not None:
                core.electra.embeddings.word_embeddings.weight += embedding_delta.detach()
            if position_delta is not None:
                core.electra.embeddings.position_embeddings.weight += position_delta.detach()
    with building_folder(directory) as tmp, quiet_transformers(errors_only=False):
        core.save_pretrained(tmp, safe_serialization=True)
        _save_heads({"span_head": discriminator.span_head, "span_classifier": discriminator.span_classifier}, tmp,
                    {"kind": "discriminator", "use_all_token": discriminator.use_all_token,
                     "use_span_head": discriminator.span_head is not None, "trained_seq_len": trained_seq_len})
        if tokenizer_dir:
            copy_tokenizer(tokenizer_dir, tmp)


HEAD_FIX = "save the model again (train it again, or copy the folder back from where it was made)"


def saved_kind(directory):
    """'generator' or 'discriminator' for a folder saved by save_generator/save_discriminator, else None."""
    path = os.path.join(directory, HEAD_CONFIG)
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(directory, "config.json"))):
        return None
    return read_json(path, HEAD_FIX).get("kind")


def read_head_config(directory, kind, field):
    path = os.path.join(directory or "", HEAD_CONFIG)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(directory, "config.json")):
        raise SpanElectraError(f"{field}: '{directory}' is not a saved SpanElectra {kind} (no {HEAD_CONFIG} / "
                               f"config.json); point it at OUT/{kind} of a finished training run")
    config = read_json(path, HEAD_FIX, field)
    if config.get("kind") != kind:
        raise SpanElectraError(f"{field}: '{directory}' holds a {config.get('kind')}, not a {kind}")
    return config


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def weights_problem(directory):
    """What is wrong with a model folder's weight file, in words (None when nothing is seen)."""
    present = [n for n in WEIGHT_FILES if os.path.isfile(os.path.join(directory, n))]
    if not present:
        return f"no weight file ({', '.join(WEIGHT_FILES)})"
    path = os.path.join(directory, present[0])
    if os.path.getsize(path) == 0:
        return f"{present[0]} is empty (0 bytes: its save was interrupted)"
    if present[0] == "model.safetensors":
        try:
            with safe_open(path, framework="pt") as f:
                f.keys()
        except Exception:
            return f"{present[0]} is not a readable safetensors file (truncated or another format)"
    if present[0] == "pytorch_model.bin":
        return "pytorch_model.bin is a pickle that holds more than tensors, which is never loaded (it could run code)"
    return None


# a model folder's tokenizer needs one of these (ours and BERT's, RoBERTa's, SentencePiece models')
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def weights_digest(directory):
    """sha256 of a saved model's weights and span heads: which model a folder holds, whatever its path."""
    names = [n for n in WEIGHT_FILES + (HEAD_FILE,) if os.path.isfile(os.path.join(directory, n))]
    return hashlib.sha256("".join(sha256_file(os.path.join(directory, n)) for n in names).encode()).hexdigest()


def load_tokenizer_of(directory, field="model_dir"):
    """The transformers tokenizer saved in a model folder; none usable is a one-line error."""
    # without vocabulary files transformers quietly builds a tokenizer that knows only [CLS], [SEP], [UNK], ...
    if not any(os.path.exists(os.path.join(directory, name)) for name in VOCABULARY_FILES):
        raise SpanElectraError(f"{field}: '{directory}' holds no tokenizer ({', '.join(VOCABULARY_FILES)}); copy "
                               "tokenizer.json and tokenizer_config.json of the model's tokenizer beside config.json")
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(directory)
    except Exception as e:  # transformers raises many kinds here (OSError, ValueError, TypeError, ...)
        raise SpanElectraError(f"{field}: no usable tokenizer in '{directory}' ({first_line(e)}); copy "
                               "tokenizer.json and tokenizer_config.json of the model's tokenizer beside config.json") from None


def load_weights(cls, directory, field):
    """cls.from_pretrained(directory), with a one-line error naming the weight file's problem (transformers'
    load report table kept out of the log) and one warning for tensors that start random."""
    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(directory, output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as e:
        problem = weights_problem(directory) or first_line(e)[:160]
        raise SpanElectraError(f"{field}: cannot load the model in '{directory}': {problem}; save or export it again, "
                               "or point at another folder") from None
    check_not_reshaped(info, directory, field)
    missing = sorted(info["missing_keys"])
    if missing:
        logger.warning("%s: %d tensors of %s were not in '%s' and start random (e.g. %s)", field, len(missing),
                       cls.__name__, directory, ", ".join(missing[:3]))
    return model


def check_not_reshaped(info, directory, field, counts=lambda key: True):
    """A from_pretrained(..., output_loading_info=True) whose config.json gave tensors (those `counts`
    keeps) other shapes than the weights hold: one line, where transformers would start them random."""
    reshaped = sorted((k, tuple(saved), tuple(made)) for k, saved, made in info.get("mismatched_keys", ()) if counts(k))
    if reshaped:
        key, saved, made = reshaped[0]
        raise SpanElectraError(f"{field}: config.json in '{directory}' does not describe its weights ({key}: {saved} "
                               f"in the weights, {made} by config.json; {len(reshaped)} tensors differ); put back the "
                               "config.json saved with them")


def load_generator(directory, field="generator_dir"):
    config = read_head_config(directory, "generator", field)
    mlm = load_weights(ElectraForMaskedLM, directory, field)
    generator = SpanElectraGenerator(mlm.config, use_sbo=config["use_sbo"], mlm=mlm)
    _load_heads({"sbo": generator.sbo}, directory)
    return generator


# ---------------------------------------------------------------- starting from pre-trained weights
PRETRAINED_CLASSES = {"generator": ElectraForMaskedLM, "discriminator": ElectraForPreTraining}


def find_pretrained(directory, kind):
    """The folder holding a `kind` model ('generator' or 'discriminator') in directory or directory/kind:
    one of ours (a training run's, a converted checkpoint's) or any transformers ELECTRA folder,
    recognised by its config's architectures. None when there is none."""
    for path in (os.path.join(directory, kind), directory):
        if saved_kind(path) == kind:
            return path
        config_path = os.path.join(path, "config.json")
        if saved_kind(path) is None and os.path.isfile(config_path):
            if PRETRAINED_CLASSES[kind].__name__ in (read_json(config_path, HEAD_FIX).get("architectures") or []):
                return path
    return None


def saved_heads(path, kind, flag):
    """Whether a folder saved by this project holds `kind`'s heads with `flag` on (e.g. use_sbo)."""
    return saved_kind(path) == kind and read_head_config(path, kind, "init_from").get(flag)


def load_pretrained_generator(path, use_sbo, field="init_from"):
    """A SpanElectraGenerator from a pre-trained folder, with its SBO head when the folder has one (a
    fresh head otherwise). Returns (generator, what was loaded, in words)."""
    generator = SpanElectraGenerator(None, use_sbo, mlm=load_weights(ElectraForMaskedLM, path, field))
    loaded = "generator"
    if use_sbo and saved_heads(path, "generator", "use_sbo"):
        _load_heads({"sbo": generator.sbo}, path)
        loaded += " and its SBO head"
    elif use_sbo:
        loaded += " (the SBO head starts fresh)"
    return generator, loaded


def load_pretrained_discriminator(path, use_all_token, use_span_head, field="init_from"):
    """A SpanElectraDiscriminator from a pre-trained folder, with its span head when the folder has
    one (a fresh head otherwise). Returns (discriminator, what was loaded, in words)."""
    core = load_weights(ElectraForPreTraining, path, field)
    discriminator = SpanElectraDiscriminator(core.config, use_all_token, use_span_head, core=core)
    loaded = "discriminator"
    if use_span_head and saved_heads(path, "discriminator", "use_span_head"):
        _load_heads({"span_head": discriminator.span_head, "span_classifier": discriminator.span_classifier}, path)
        loaded += " and its span head"
    elif use_span_head:
        loaded += " (the span head starts fresh)"
    return discriminator, loaded


# the size flags (TrainingConfig.model_overrides) that name each model's ElectraConfig fields
SIZE_FLAGS = {"generator": {"embedding_size": "embedding_size", "num_hidden_layers": "num_hidden_layers",
                            "gen_hidden_size": "hidden_size", "gen_num_attention_heads": "num_attention_heads",
                            "gen_intermediate_size": "intermediate_size"},
              "discriminator": {name: name for name in ("embedding_size", "hidden_size", "num_hidden_layers",
                                                        "num_attention_heads", "intermediate_size")}}


def check_sizes_match(sizes, model_config, kind, path):
    """Size flags given beside --init_from must be the loaded model's own: the architecture comes from the
    folder, so another value would be silently ignored."""
    for flag, name in SIZE_FLAGS[kind].items():
        if flag in sizes and sizes[flag] != getattr(model_config, name):
            raise SpanElectraError(f"{flag}: {sizes[flag]}, but the {kind} in '{path}' has {getattr(model_config, name)} "
                                   f"and --init_from takes its architecture; drop --{flag}, or train from scratch")


def check_model_size(model_size, sizes, model_config, kind, path):
    """A --model_size given beside --init_from (None: left at its default) must be the loaded model's: the
    architecture comes from the folder, so another preset would be silently ignored."""
    if model_size is None:
        return
    preset = {**MODEL_PRESETS[model_size][0], **{k: v for k, v in sizes.items() if not k.startswith("gen_")}}
    differ = [f"{name} {getattr(model_config, name)} (the preset's: {preset[name]})" for name in PRESET_SIZES[kind]
              if getattr(model_config, name) != preset[name]]
    if differ:
        raise SpanElectraError(f"model_size: '{model_size}', but the {kind} in '{path}' has {', '.join(differ)} and "
                               "--init_from takes its architecture; drop --model_size, or train from scratch")


# the preset sizes a loaded model is compared with: a generator's width differs between releases (ELECTRA-Small's
# is 256 wide, the small preset's 64), its embeddings and depth do not
PRESET_SIZES = {"generator": ("embedding_size", "num_hidden_layers"),
                "discriminator": ("embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                  "intermediate_size")}


def load_pretrained(init_from, kind, features, heads, use_all_token=True, field="init_from", sizes=None,
                    model_size=None):
    """The pre-trained `kind` ('generator' or 'discriminator') in init_from (see find_pretrained), its
    span heads loaded when the folder has them, checked against the features' vocabulary, positions
    and tokenizer, and against the size flags given (sizes, and model_size: None when not given).
    Returns (model, its folder, what was loaded, in words)."""
    if not os.path.exists(init_from):
        raise SpanElectraError(f"{field}: '{init_from}' does not exist; point it at a pre-trained out_dir or model folder")
    path = find_pretrained(init_from, kind)
    if path is None:
        raise SpanElectraError(f"{field}: '{init_from}' holds no {kind} ({kind}/, or a folder whose config names "
                               f"{PRETRAINED_CLASSES[kind].__name__}); point it at one")
    if kind == "generator":
        model, loaded = load_pretrained_generator(path, heads, field)
    else:
        model, loaded = load_pretrained_discriminator(path, use_all_token, heads, field)
    check_sizes_match(sizes or {}, model.config, kind, path)
    check_model_size(model_size, sizes or {}, model.config, kind, path)
    own_tokenizer = has_tokenizer(path)
    check_fits_features(model.config, features, field, same_tokenizer=own_tokenizer)
    if own_tokenizer:
        features.check_tokenizer(path, field)
    warn_untrained_positions(path, kind, features.max_seq_len, field)
    return model, path, loaded


def trained_seq_len(path, field):
    """The sequence length a model saved by our scripts was trained on; None for other folders (and ours
    saved before the length was recorded)."""
    head_config = os.path.join(path, HEAD_CONFIG)
    return read_json(head_config, HEAD_FIX, field).get("trained_seq_len") if os.path.isfile(head_config) else None


def warn_untrained_positions(path, kind, seq_len, field, use="these features have",
                             fix="train it on these features"):
    """Warn when a saved model was trained on shorter sequences than it is now given (seq_len): its positions
    past that length were never trained. fix may name {trained}, the length it was trained on."""
    trained = trained_seq_len(path, field)
    if trained and seq_len > trained:
        logger.warning("%s: the %s was trained on %d-token sequences, %s %d: its positions past %d were never trained, "
                       "so it starts poorly there; %s", field, kind, trained, use, seq_len, trained,
                       fix.format(trained=trained))


def check_fits_features(config, features, field="init_from", same_tokenizer=False):
    """A pre-trained model must share the features' vocabulary size and hold their sequence length. Built with its
    own tokenizer (same_tokenizer: checked by the caller), its embeddings may have more rows than the vocabulary
    (a released checkpoint's padding rows, or a vocab.txt cut short): those ids simply never occur."""
    if config.vocab_size < features.vocab_size or (config.vocab_size != features.vocab_size and not same_tokenizer):
        raise SpanElectraError(f"{field}: the model's vocabulary has {config.vocab_size} entries, the features' "
                               f"{features.vocab_size}; build the features with its tokenizer (process.py "
                               "--tokenizer_dir MODEL_FOLDER)")
    if features.max_seq_len > config.max_position_embeddings:
        raise SpanElectraError(f"{field}: the model holds {config.max_position_embeddings} positions, fewer than the "
                               f"features' max_seq_len {features.max_seq_len}; rebuild them with a smaller --max_seq_len")


def init_discriminator_from_generator(discriminator, generator):
    """Two-stage start (SpanElectra's recipe): copy the generator's embeddings, and every other weight
    whose name and shape match, into the discriminator. Returns the number of tensors copied."""
    source = generator.mlm.electra.state_dict()
    target = discriminator.core.electra.state_dict()
    copied = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    discriminator.core.electra.load_state_dict(copied, strict=False)
    return len(copied)
