"""Convert a google-research/electra TensorFlow checkpoint into transformers folders, without TensorFlow.

    python convert_tf_checkpoint.py --checkpoint DIR_OR_PREFIX --vocab_file vocab.txt --out_dir OUT \
        [--config_file hparams.json]

Writes OUT/discriminator (loads with ElectraForPreTraining.from_pretrained) and, when the
checkpoint holds one, OUT/generator (ElectraForMaskedLM), as the training scripts write them,
each with a WordPiece tokenizer built from vocab.txt. The tensors are read by tf_checkpoint.py,
which checks each one's CRC32C. Optimizer slots (adam_m, adam_v) and global_step are skipped;
any other tensor that maps nowhere is listed by name.
"""
import logging
import os
import re
import tempfile

import numpy as np
import torch
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

from argument import checked_config, convert_args, run_main, save_config
from io_utils import SpanElectraError, atomic_write_json, make_out_dir, read_json, remove_paths
from modelling_span_electra import SpanElectraDiscriminator, SpanElectraGenerator, save_discriminator, save_generator
from tf_checkpoint import TFCheckpoint
from tokenization import SE_TOKENIZER_FILE, SPECIAL_TOKENS, save_transformers_tokenizer, wordpiece_from_vocab

logger = logging.getLogger("span_electra")
SKIPPED = re.compile(r"(/adam_[mv]$|^global_step$|/Adam(_\d+)?$|^beta[12]_power)")  # optimizer state


# ---------------------------------------------------------------- names
def hf_name(tf_name):
    """(model, transformers parameter name, transpose) for a google-research/electra variable, or None.
    model: 'disc', 'gen' or 'both' (the embeddings ELECTRA shares between the two)."""
    m = re.fullmatch(r"(electra|generator)/(embeddings|embeddings_project|encoder)(/.*)?", tf_name)
    if m:
        scope, part, rest = m.group(1), m.group(2), (m.group(3) or "")[1:]
        model = "gen" if scope == "generator" else ("both" if part == "embeddings" else "disc")
        path = f"electra.{part}" + ("." + rest.replace("/", ".") if rest else "")
        path = re.sub(r"layer_(\d+)", r"layer.\1", path)
        return (model,) + _leaf(path)
    for tf_prefix, model, hf_prefix in (("discriminator_predictions/dense_1/", "disc", "discriminator_predictions.dense_prediction."),
                                        ("discriminator_predictions/dense/", "disc", "discriminator_predictions.dense."),
                                        ("generator_predictions/dense/", "gen", "generator_predictions.dense."),
                                        ("generator_predictions/LayerNorm/", "gen", "generator_predictions.LayerNorm.")):
        if tf_name.startswith(tf_prefix):
            leaf = tf_name[len(tf_prefix):]
            return (model,) + _leaf(hf_prefix + leaf)
    if tf_name == "generator_predictions/output_bias":
        return "gen", "generator_lm_head.bias", False
    return None


def _leaf(path):
    """(name, transpose): TF's leaf names as torch's: kernel -> weight (transposed: TF stores [in, out]),
    gamma/beta -> LayerNorm weight/bias, an embedding table -> weight."""
    if path.endswith(".kernel"):
        return path[:-len("kernel")] + "weight", True
    if path.endswith(".gamma"):
        return path[:-len("gamma")] + "weight", False
    if path.endswith(".beta"):
        return path[:-len("beta")] + "bias", False
    if path.endswith("_embeddings"):
        return path + ".weight", False
    return path, False


# ---------------------------------------------------------------- architecture
def read_hparams(config_file):
    if not config_file:
        return {}
    return read_json(config_file, "pass the hparams JSON the model was trained with (google-research/electra's "
                     "hparams.json), or leave it out", "config_file", ours=False)


MODEL_SIZES = {"small": (256, 12), "base": (768, 12), "large": (1024, 24)}  # get_bert_config's (hidden, layers)


def check_hparams(hparams, sizes):
    """Refuse hparams whose values cannot be this checkpoint's (sizes: the shapes' hidden_size,
    num_hidden_layers, intermediate_size, vocab_size, embedding_size); their head count would be a guess.
    A model_size whose default sizes differ is only said: model_hparam_overrides may have been lost."""
    lowercase = hparams.get("do_lower_case", True)
    if not isinstance(lowercase, bool):
        raise SpanElectraError(f"config_file: do_lower_case {lowercase!r} must be true or false")
    model_size = hparams.get("model_size", "small")
    if model_size not in MODEL_SIZES:
        raise SpanElectraError(f"config_file: model_size {model_size!r} is not one of google-research/electra's "
                               f"{', '.join(MODEL_SIZES)}")
    overrides = hparams.get("model_hparam_overrides") or {}
    if not isinstance(overrides, dict):
        raise SpanElectraError("config_file: model_hparam_overrides must be a JSON object (name: value)")
    given = {**{k: hparams[k] for k in ("vocab_size", "embedding_size") if k in hparams}, **overrides}
    for name, actual in sizes.items():
        if given.get(name) is not None and given[name] != actual:  # null: the default, e.g. embedding_size
            raise SpanElectraError(f"config_file: {name} {given[name]!r} contradicts the checkpoint's {actual}; these "
                                   "hparams are not this model's: pass the hparams JSON it was trained with")
    implied = dict(zip(("hidden_size", "num_hidden_layers"), MODEL_SIZES[model_size]))
    for name, value in implied.items():
        if name not in overrides and value != sizes[name]:
            logger.warning("config_file: model_size %s means %s %d, the checkpoint's is %d; its shapes are used",
                           model_size, name, value, sizes[name])
    return overrides


def encoder_sizes(ckpt, scope):
    """(hidden, layers, intermediate) of the encoder under scope, from the tensor shapes (None: none)."""
    layers = {int(m.group(1)) for n in ckpt.names() if (m := re.match(rf"{scope}/encoder/layer_(\d+)/", n))}
    if not layers:
        return None
    hidden = ckpt.shape(f"{scope}/encoder/layer_0/attention/self/query/kernel")[1]
    intermediate = ckpt.shape(f"{scope}/encoder/layer_0/intermediate/dense/kernel")[1]
    return hidden, max(layers) + 1, intermediate


def beside_checkpoint(ckpt, name):
    """A file of that name in the checkpoint's folder (google-research/electra's model folders keep
    hparams.json there), else None; said when used."""
    path = os.path.join(os.path.dirname(ckpt.prefix), name)
    if os.path.isfile(path):
        logger.info("config_file: using %s, beside the checkpoint", path)
        return path
    return None


def electra_configs(ckpt, hparams):
    """(discriminator ElectraConfig, generator ElectraConfig or None) from the shapes and the hparams."""
    vocab, embedding = ckpt.shape("electra/embeddings/word_embeddings")
    common = dict(vocab_size=vocab, embedding_size=embedding,
                  max_position_embeddings=ckpt.shape("electra/embeddings/position_embeddings")[0],
                  type_vocab_size=ckpt.shape("electra/embeddings/token_type_embeddings")[0])
    hidden, layers, intermediate = encoder_sizes(ckpt, "electra")
    overrides = check_hparams(hparams, dict(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                                            vocab_size=vocab, embedding_size=embedding))
    # google-research/electra's get_bert_config: width / 64 heads (4 for small, 12 base, 16 large) whatever
    # model_size says, unless model_hparam_overrides names them
    heads = overrides.get("num_attention_heads") or max(1, hidden // 64)
    if not isinstance(heads, int) or heads < 1 or hidden % heads:
        raise SpanElectraError(
            f"config_file: num_attention_heads {heads!r} does not divide the checkpoint's hidden size {hidden}; give a "
            f"divisor of {hidden} in model_hparam_overrides" if "num_attention_heads" in overrides else
            f"checkpoint: its hidden size {hidden} takes no head count of width / 64 ({heads}); pass the hparams JSON "
            f"as --config_file with model_hparam_overrides.num_attention_heads")
    disc = ElectraConfig(**common, hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                         num_attention_heads=heads)
    heads_from = ("from the hparams" if "num_attention_heads" in overrides
                  else "its width / 64: pass the hparams JSON as --config_file if it had others")
    gen_sizes = encoder_sizes(ckpt, "generator")
    if gen_sizes is None:
        logger.info("attention heads: %d (discriminator, %s)", heads, heads_from)
        return disc, None
    gen_hidden, gen_layers, gen_intermediate = gen_sizes
    gen_heads = max(1, gen_hidden // 64)  # google-research/electra's get_generator_config
    logger.info("attention heads: %d (discriminator, %s), %d (generator, its width / 64)", heads, heads_from, gen_heads)
    gen = ElectraConfig(**common, hidden_size=gen_hidden, num_hidden_layers=gen_layers,
                        intermediate_size=gen_intermediate, num_attention_heads=gen_heads)
    return disc, gen


# ---------------------------------------------------------------- weights
def load_tensors(ckpt, models):
    """Copy every mappable tensor into models ({'disc': ..., 'gen': ...}). Returns (mapped, skipped,
    unmapped) tensor-name lists and {kind: the model parameters filled}."""
    states = {k: m.state_dict() for k, m in models.items()}
    mapped, skipped, unmapped, filled = [], [], [], {k: set() for k in models}
    for name in ckpt.names():
        if SKIPPED.search(name):
            skipped.append(name)
            continue
        target = hf_name(name)
        owners = () if target is None else ("disc", "gen") if target[0] == "both" else (target[0],)
        kinds = [k for k in owners if k in states and target[1] in states[k]]
        if not kinds:
            unmapped.append(name)
            continue
        value = torch.from_numpy(np.array(ckpt.tensor(name), dtype=np.float32))
        if target[2]:
            value = value.T
        for kind in kinds:
            if states[kind][target[1]].shape != value.shape:
                raise SpanElectraError(f"checkpoint: '{name}' has shape {tuple(value.shape)}, the model expects "
                                       f"{tuple(states[kind][target[1]].shape)} ({target[1]}); pass the hparams "
                                       "the model was trained with as --config_file")
            states[kind][target[1]].copy_(value)
            filled[kind].add(target[1])
        mapped.append(name)
    return mapped, skipped, unmapped, filled


def missing_parameters(model, filled):
    """The model's parameters no checkpoint tensor filled (tied weights count as filled)."""
    tied = {"generator_lm_head.weight"}  # the word embeddings, tied
    return sorted(n for n, _ in model.named_parameters() if n not in filled and n not in tied)


# ---------------------------------------------------------------- tokenizer
def save_wordpiece_tokenizer(tok, vocab_file, lowercase, directory):
    """The WordPiece tokenizer built from a BERT/ELECTRA vocab.txt as a tokenizer folder (its own
    special-token ids)."""
    vocab = tok.get_vocab()
    save_transformers_tokenizer(tok, directory)
    atomic_write_json(os.path.join(directory, SE_TOKENIZER_FILE), {
        "tokenizer_type": "BERT", "word_segmenter": "none", "lowercase": lowercase, "vocab_size": len(vocab),
        "special_tokens": SPECIAL_TOKENS, "special_token_ids": {t: vocab[t] for t in SPECIAL_TOKENS},
        "source": os.path.abspath(vocab_file)})


# ---------------------------------------------------------------- main
def main(config: convert_args = None):
    config = checked_config(config, convert_args)
    config.validate()
    ckpt = TFCheckpoint(config.checkpoint)
    if "electra/embeddings/word_embeddings" not in ckpt.entries or encoder_sizes(ckpt, "electra") is None:
        raise SpanElectraError(f"checkpoint: '{ckpt.prefix}' holds no ELECTRA discriminator (no electra/embeddings and "
                               "electra/encoder tensors); is it a google-research/electra checkpoint?")
    vocab_file = config.vocab_file or os.path.join(os.path.dirname(ckpt.prefix), "vocab.txt")
    if not os.path.isfile(vocab_file):
        raise SpanElectraError(f"vocab_file: '{vocab_file}' does not exist; pass the model's vocab.txt")
    config_file = config.config_file or beside_checkpoint(ckpt, "hparams.json")
    hparams = read_hparams(config_file)
    disc_config, gen_config = electra_configs(ckpt, hparams)  # checks the hparams, do_lower_case too
    lowercase = config.do_lower_case if config.do_lower_case is not None else hparams.get("do_lower_case", True)
    tok = wordpiece_from_vocab(vocab_file, lowercase)
    if tok.get_vocab_size() > disc_config.vocab_size:  # its last ids would index past the embeddings
        raise SpanElectraError(f"vocab_file: '{vocab_file}' has {tok.get_vocab_size()} entries, more than the "
                               f"checkpoint's {disc_config.vocab_size} embedding rows; pass the vocab.txt the model "
                               "was trained with")
    if tok.get_vocab_size() < disc_config.vocab_size:
        logger.warning("vocab_file: %d entries, the checkpoint's embeddings %d rows (the rest are never used)",
                       tok.get_vocab_size(), disc_config.vocab_size)
    models_ = {"disc": ElectraForPreTraining(disc_config)}
    if gen_config is not None:
        models_["gen"] = ElectraForMaskedLM(gen_config)
    mapped, skipped, unmapped, filled = load_tensors(ckpt, models_)
    for kind, model in models_.items():
        missing = missing_parameters(model, filled[kind])
        if missing:
            raise SpanElectraError(f"checkpoint: the {'discriminator' if kind == 'disc' else 'generator'}'s "
                                   f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} found no tensor; "
                                   "is it a google-research/electra checkpoint?")

    make_out_dir(config.out_dir)
    seq_len = hparams.get("max_seq_length")  # pre-training's length: fine-tuning past it is warned about
    if seq_len is not None and (not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1):
        raise SpanElectraError(f"config_file: max_seq_length {seq_len!r} is not a positive whole number; give the "
                               "length the model was pre-trained on (ELECTRA: 128), or leave it out")
    record = os.path.join(config.out_dir, "conversion.json")
    if os.path.isfile(record):  # an earlier conversion's: its generator must not end up beside this discriminator
        remove_paths([record, os.path.join(config.out_dir, "generator")])  # (killed mid-way, or none in this one)
    atomic_write_json(record, {"checkpoint": ckpt.prefix, "complete": False})  # so even one killed mid-way is known
    with tempfile.TemporaryDirectory() as tok_dir:
        save_wordpiece_tokenizer(tok, vocab_file, lowercase, tok_dir)
        disc = SpanElectraDiscriminator(disc_config, use_all_token=True, use_span_head=False, core=models_["disc"])
        save_discriminator(disc, os.path.join(config.out_dir, "discriminator"), tok_dir, trained_seq_len=seq_len)
        if "gen" in models_:
            save_generator(SpanElectraGenerator(gen_config, use_sbo=False, mlm=models_["gen"]),
                           os.path.join(config.out_dir, "generator"), tok_dir, trained_seq_len=seq_len)
    summary = {"checkpoint": ckpt.prefix, "mapped": len(mapped), "skipped": len(skipped), "unmapped": unmapped,
               "discriminator": disc_config.to_diff_dict(), "generator": gen_config.to_diff_dict() if gen_config else None,
               "lowercase": lowercase}
    atomic_write_json(record, {**summary, "complete": True})
    save_config(config, config.out_dir, "convert_tf_checkpoint")
    logger.info("%d tensors mapped, %d optimizer tensors skipped, %d unmapped%s", len(mapped), len(skipped),
                len(unmapped), (": " + ", ".join(unmapped)) if unmapped else "")
    logger.info("discriminator -> %s%s", os.path.join(config.out_dir, "discriminator"),
                f"; generator (no SBO head: ELECTRA has none) -> {os.path.join(config.out_dir, 'generator')}"
                if gen_config else "; the checkpoint holds no generator")
    return summary


if __name__ == "__main__":
    run_main(main, convert_args)
