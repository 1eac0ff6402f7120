"""Every SpanElectra config class, and the one place that turns them into a command line.

Edit the defaults below and run a script, or build a config in a notebook cell and call the
script's main(config). On the command line every field is `--field value`, and `--config
file.json` loads a whole config (command-line fields still win). Each script saves the resolved
config as JSON beside its output.

The design: one config object per run (ELECTRA's configure_pretraining, nanoGPT's flat namespace),
assembled from small classes by inheritance, so every field is declared once and its default
lives in exactly one place. A training script's class is its data class (features folder and
masking), its evaluation class and the training loop's class:
    SE_trainingConfig  = TrainingConfig + SE_validDataArgs + SE_trainDataArgs (+ the recipe's fields)
    MLM_trainingConfig = TrainingConfig + MLM_validDataArgs + MLM_trainDataArgs
Editing SE_trainDataArgs.mask_replace_prob therefore changes what trainSpanElectra.py trains with.
(Several dataclasses parsed side by side, as the transformers examples do, would need the masking
fields twice, for the train and the valid split; here the valid split is masked as the train split.)
The class names are those of SpanElectra's first release (tok_args, MLM_trainDataArgs, ...), which
its users know.
"""
import argparse
import dataclasses
import json
import logging
import math
import numbers
import os
import re
import signal
import sys
import threading
import typing
from dataclasses import dataclass, field
from typing import Optional

from tqdm import tqdm
from transformers import HfArgumentParser

from io_utils import (SpanElectraError, atomic_write_json, find_text_files, list_checkpoints, read_json,
                      setup_logging, write_failure_message)
from tokenization import has_tokenizer, keeping_special_tokens, load_segmenter, no_tokenizer_message

TOKENIZER_TYPES = ("BPE", "BERT")
WORD_SEGMENTERS = ("none", "pyvi")
DOC_BOUNDARIES = ("auto", "blank_line", "title_line", "file")
MASKING_KINDS = ("span", "token")
SPLITS = ("train", "valid")
MODEL_PRESETS = {
    # discriminator, then the generator's differences (ELECTRA: same embeddings, narrower encoder)
    # the tiny generator starts wider than ELECTRA's 0.02 (made for 256+ dimensions): at 64 dimensions
    # 0.02 leaves it at the unigram level longer (valid MLM accuracy 5.7% vs 6.7% at step 300)
    "tiny": (dict(embedding_size=64, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
             dict(hidden_size=64, num_attention_heads=1, intermediate_size=256, initializer_range=0.05)),
    "small": (dict(embedding_size=128, hidden_size=256, num_hidden_layers=12, num_attention_heads=4,
                   intermediate_size=1024),
              dict(hidden_size=64, num_attention_heads=1, intermediate_size=256)),
    "base": (dict(embedding_size=768, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072),
             dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024)),
}
MODEL_SIZES = tuple(MODEL_PRESETS)
TRAIN_MODES = ("two_stage", "joint")


def _help(text, **extra):
    return field(metadata={"help": text, **extra.pop("meta", {})}, **extra)


# ---------------------------------------------------------------- validation helpers
def _fail(name, message):
    raise SpanElectraError(f"{name}: {message}")


def check_range(config, name, low=None, high=None, low_open=False, high_open=False):
    """Fail with a one-line message when config.<name> lies outside [low, high] (or open ends)."""
    value = getattr(config, name)
    if isinstance(value, float) and not math.isfinite(value):
        _fail(name, f"{value} is not a finite number")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        _fail(name, f"{value} is out of range; use a value in {lo or '(-inf'}, {hi or 'inf)'}")


def check_choice(config, name, choices):
    value = getattr(config, name)
    if value not in choices:
        _fail(name, f"'{value}' is not one of {', '.join(map(str, choices))}")


def check_device(config, name="device"):
    """'auto', 'cpu', 'cuda' or 'cuda:N'."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(getattr(config, name))):
        _fail(name, f"'{getattr(config, name)}' is not one of auto, cpu, cuda, cuda:N (N: a GPU index)")


MARK = re.compile(r"\[\[(.+?)\]\]", re.S)  # the explorer's [[ span ]] marks (one may span a line break)


def marks_problem(text):
    """What is wrong with the [[ span ]] marks of an explorer text, and where (characters counted from 1),
    None when each is opened, closed and around some words."""
    opened = None  # where the mark now open starts, as an index
    for m in re.finditer(r"\[\[|\]\]", text):
        if m.group() == "[[":
            if opened is not None:
                return (f"a mark opened at character {opened + 1} ({_excerpt(text, opened, opened + 20)}) is opened "
                        f"again at character {m.start() + 1} before it closes; marks can't nest: close each span "
                        "with ]] before the next [[")
            opened = m.start()
        elif opened is None:
            return (f"a closing ]] at character {m.start() + 1} ({_excerpt(text, m.end() - 20, m.end())}) has no "
                    "opening [[; mark each span as [[ words ]]")
        elif not text[opened + 2:m.start()].strip():
            return f"'[[ ]]' at character {opened + 1} marks no word; put the words to mask inside it, e.g. [[ mat ]]"
        else:
            opened = None
    if opened is not None:
        return (f"a mark opened at character {opened + 1} ({_excerpt(text, opened, opened + 20)}) never closes; "
                "add ]] after the words to mask")
    added = sorted(set(re.findall(r"\[(?:CLS|SEP|PAD)\]", text)))
    if added:  # the model would read them as its own markers mid-sentence
        return (f"{', '.join(added)} in the text: the tokenizer adds [CLS] and [SEP] itself and [PAD] is never read; "
                "remove them (of the special tokens only [MASK] may be typed)")
    return None


def _excerpt(text, start, end):
    """text[start:end] quoted, '...' where it is cut: where a mark problem is, as the user typed it."""
    start, end = max(0, start), min(len(text), end)
    return repr(("..." if start else "") + text[start:end] + ("..." if end < len(text) else ""))


def check_one_precision(config):
    """--bf16 and --fp16 are two kinds of autocast: a run takes one."""
    if config.bf16 and config.fp16:
        _fail("fp16", "--bf16 and --fp16 both ask for autocast; choose one: bf16 on GPUs from Ampere (A100, L4, "
              "H100), fp16 on older ones (T4, V100, P100)")


def check_marks(config, name):
    problem = marks_problem(getattr(config, name))
    if problem:
        _fail(name, problem)


def check_text_fits(config, name, segmenter, positions):
    """A text with more words than the models' positions (less [CLS] and [SEP]) can never fit them: every
    tokenizer here splits at least at whitespace (after segmentation), so each word is a token or more."""
    segment = load_segmenter(segmenter)
    words = MARK.sub(r" \1 ", getattr(config, name))
    count = len((keeping_special_tokens(segment)(words) if segment else words).split()) + 2
    if count > positions:
        _fail(name, f"{count - 2} words, so at least {count} tokens with [CLS] and [SEP], more than the models' "
              f"{positions} positions; give a shorter text (a sentence or two)")


def check_dir(config, name, what, must_contain=None, inner=None):
    """The folder config.<name> must exist (and hold must_contain, if given); where only its subfolder
    `inner` holds it (a training out_dir given for its generator/), the error names that subfolder."""
    path = getattr(config, name)
    if not path or not os.path.isdir(path):
        _fail(name, f"'{path}' is not a folder; {what}")
    if must_contain and not os.path.exists(os.path.join(path, must_contain)):
        nested = inner and os.path.join(path, inner)
        if nested and os.path.exists(os.path.join(nested, must_contain)):
            _fail(name, f"'{path}' has no {must_contain}; did you mean '{nested}'?")
        _fail(name, f"'{path}' has no {must_contain}; {what}")


class Config:
    """Root of every config class: validate() runs each class's checks along the MRO."""

    def validate(self):
        pass


# ---------------------------------------------------------------- vocabulary
@dataclass
class tok_args:
    """create_vocab_SE.py: train a vocabulary on every text file under data_dir."""
    tokenizer_type: str = _help("'BPE' (byte-level BPE) or 'BERT' (WordPiece)", default="BPE",
                                meta={"choices": TOKENIZER_TYPES})
    data_dir: str = _help("text file, folder (searched for .txt/.tokens/.raw, also .gz/.bz2/.xz/.zst) or glob",
                         default="data/sample/train.tokens")
    model_name: str = _help("name recorded with the tokenizer", default="trial")
    min_fre: int = _help("minimum frequency of a merge/word piece to enter the vocabulary", default=2)
    vocab_size: int = _help("size of the vocabulary, special tokens included", default=10000)
    out_dir: str = _help("folder for tokenizer.json, vocab files and tokenizer_config.json", default="outputs/tok")
    lowercase: bool = _help("lowercase text before tokenizing", default=False)
    word_segmenter: str = _help("'pyvi' segments Vietnamese words first (syllables joined by '_')",
                                default="none", meta={"choices": WORD_SEGMENTERS})
    num_workers: int = _help("processes for word segmentation (0: one per CPU core this process may use)", default=0)
    max_text_mb: float = _help("train on about this many MB of the text, lines taken evenly across the whole "
                               "corpus (0: all of it): a vocabulary changes little past a few hundred MB, while "
                               "training time grows with the text (about 3 min a GB on 2 cores)", default=0)

    def validate(self):
        check_choice(self, "tokenizer_type", TOKENIZER_TYPES)
        check_choice(self, "word_segmenter", WORD_SEGMENTERS)
        check_range(self, "min_fre", low=1)
        check_range(self, "vocab_size", low=6, high=MAX_VOCAB_SIZE)
        check_range(self, "num_workers", low=0)
        check_range(self, "max_text_mb", low=0, high=1e9)  # a petabyte
        if not self.out_dir:
            _fail("out_dir", "no folder given")


# ---------------------------------------------------------------- masking and data
@dataclass
class MaskingArgs(Config):
    """How tokens are chosen and replaced (SpanBERT span masking by default)."""
    masking: str = _help("'span' (SpanBERT whole-word spans) or 'token' (BERT/ELECTRA)", default="span",
                         meta={"choices": MASKING_KINDS})
    mask_ratio: float = _help("fraction of the non-special tokens to mask", default=0.15)
    span_p: float = _help("p of the geometric span-length distribution (in words)", default=0.2)
    max_span_len: int = _help("longest span, in words (the distribution is truncated there)", default=10)
    mask_replace_prob: float = _help("share of spans replaced by [MASK]", default=0.8)
    random_replace_prob: float = _help("share of spans replaced by random tokens (the rest is kept)", default=0.1)
    max_predictions_per_seq: int = _help("prediction slots per sequence (ELECTRA's max_predictions_per_seq; the "
                                         "training step's fixed shape). 0: round(mask_ratio x max_seq_len) for token "
                                         "masking, a quarter (at least 5) more for span masking, whose count per row varies "
                                         "(a span that would not fit is cut)", default=0)

    def validate(self):
        super().validate()
        check_choice(self, "masking", MASKING_KINDS)
        check_range(self, "max_predictions_per_seq", low=0)
        check_range(self, "mask_ratio", 0, 1, low_open=True, high_open=True)
        check_range(self, "span_p", 0, 1, low_open=True)
        check_range(self, "max_span_len", low=1)
        check_range(self, "mask_replace_prob", 0, 1)
        check_range(self, "random_replace_prob", 0, 1)
        if self.mask_replace_prob + self.random_replace_prob > 1 + 1e-9:
            _fail("random_replace_prob", f"mask_replace_prob + random_replace_prob = "
                  f"{self.mask_replace_prob + self.random_replace_prob:g} exceeds 1")

    def unused_span_fields(self):
        """The span-length fields given (is_given) with --masking token, which never reads them."""
        return [name for name in ("span_p", "max_span_len") if self.masking == "token" and is_given(self, name)]


MIN_SEQ_LEN = 16
MIN_POSITIONS = 512  # positions of every model trained here (BERT's and ELECTRA's), more for longer features
MAX_VOCAB_SIZE = 2**24  # past that the tokenizers trainer's tables outgrow memory (1e9 aborted the process)


def model_positions(max_seq_len):
    """The positions of a model trained here on features of max_seq_len tokens a row."""
    return max(MIN_POSITIONS, max_seq_len)


@dataclass
class feature_args(MaskingArgs):
    """process.py: tokenize text and pack it into max_seq_len sequences stored as memmaps."""
    tokenizer_dir: str = _help("folder written by create_vocab_SE.py, or a transformers model folder (its "
                               "tokenizer.json or vocab.txt, special tokens at their own ids)", default="outputs/tok")
    train_input: str = _help("training text: a file, a folder or a glob", default="data/sample/train.tokens")
    valid_input: Optional[str] = _help("validation text (file, folder or glob); empty: use valid_fraction",
                                       default="data/sample/valid.tokens")
    valid_fraction: float = _help("share of train documents held out for validation when valid_input is "
                                  "empty", default=0.0)
    out_dir: str = _help("features folder", default="outputs/features")
    max_seq_len: int = _help("tokens per sequence, [CLS] and [SEP] included", default=128)
    doc_boundary: str = _help("what ends a document: 'auto', 'blank_line', 'title_line' (WikiText "
                              "' = Title = ') or 'file'", default="auto", meta={"choices": DOC_BOUNDARIES})
    pack_across_documents: bool = _help("carry each document's tail, shorter than a sequence, into the next "
                                        "document's first sequence after a [SEP] (RoBERTa's FULL-SENTENCES) instead "
                                        "of dropping it (17% of English Wikipedia's tokens at 128)", default=False)
    batch_lines: int = _help("lines tokenized per batch", default=2000)
    num_workers: int = _help("processes for word segmentation (0: one per CPU core this process may use)", default=0)
    save_static_masks: bool = _help("also save one fixed masking of every sequence, for training with "
                                    "--static_masking (exactly repeatable runs)", default=False)
    seed: int = _help("seed for the valid split and static masks", default=42)

    def validate(self):
        super().validate()
        check_dir(self, "tokenizer_dir", "run create_vocab_SE.py first, or point it at its out_dir")
        if not has_tokenizer(self.tokenizer_dir):
            _fail("tokenizer_dir", no_tokenizer_message(self.tokenizer_dir))
        if self.max_seq_len < MIN_SEQ_LEN:  # below it one masked token is well over 15% of a sequence
            _fail("max_seq_len", f"{self.max_seq_len} tokens leave too few to mask a span with context on both sides; "
                  f"use at least {MIN_SEQ_LEN} (typically 128 or 512)")
        check_range(self, "valid_fraction", 0, 1, high_open=True)
        if self.valid_input and self.valid_fraction > 0:
            _fail("valid_fraction", f"{self.valid_fraction} with --valid_input '{self.valid_input}': only one can say "
                  "where the validation split comes from; pass --valid_input '' or --valid_fraction 0")
        check_range(self, "batch_lines", low=1)
        check_range(self, "num_workers", low=0)
        check_choice(self, "doc_boundary", DOC_BOUNDARIES)
        if not self.out_dir:
            _fail("out_dir", "no folder given")


@dataclass
class FeaturesArgs(Config):
    """Which features folder a script reads."""
    features_dir: str = _help("folder written by process.py", default="outputs/features")
    tokenizer_dir: Optional[str] = _help("if given, the features must have been built with this tokenizer",
                                         default=None)

    def validate(self):
        super().validate()
        check_dir(self, "features_dir", "run process.py first, or point it at its out_dir", must_contain="meta.json")


@dataclass
class DataArgs(FeaturesArgs, MaskingArgs):
    """The training data: the features folder and how its sequences are masked on the fly."""
    static_masking: bool = _help("use the fixed masks saved by process.py --save_static_masks instead of a fresh "
                                 "masking each epoch", default=False)


@dataclass
class MLM_trainDataArgs(DataArgs):
    """Generator training data: SpanBERT masking, 80% [MASK] / 10% random / 10% kept."""


@dataclass
class SE_trainDataArgs(DataArgs):
    """Discriminator training data: the generator fills the masks, so ELECTRA's 85% [MASK] / 15% kept."""
    mask_replace_prob: float = _help("share of spans replaced by [MASK] (ELECTRA: 0.85)", default=0.85)
    random_replace_prob: float = _help("share of spans replaced by random tokens", default=0.0)


@dataclass
class ValidDataArgs(Config):
    """Evaluation on the features' valid split (masked as the training data is)."""
    eval_every: int = _help("steps between evaluations", default=200)
    eval_batches: int = _help("evaluation batches (0: the whole valid split)", default=20)
    eval_batch_size: int = _help("sequences per evaluation batch", default=64)

    def validate(self):
        super().validate()
        check_range(self, "eval_every", low=1)
        check_range(self, "eval_batch_size", low=1)
        check_range(self, "eval_batches", low=0)


@dataclass
class MLM_validDataArgs(ValidDataArgs):
    """The generator's evaluation: masked-LM loss and accuracy on the valid split."""


@dataclass
class SE_validDataArgs(ValidDataArgs):
    """The discriminator's evaluation: replaced-token detection (AUC, accuracy) on the valid split."""


@dataclass
class mask_stats_args(FeaturesArgs, MaskingArgs):
    """mask_stats.py: mask real sequences and report what the settings produce."""
    split: str = _help("'train' or 'valid'", default="train", meta={"choices": SPLITS})
    num_sequences: int = _help("how many sequences to mask (at most the split's)", default=4096)
    batch_size: int = _help("sequences masked per batch", default=256)
    seed: int = _help("random seed", default=0)

    def validate(self):
        super().validate()
        check_choice(self, "split", SPLITS)
        check_range(self, "num_sequences", low=1)
        check_range(self, "batch_size", low=1)


# ---------------------------------------------------------------- training
@dataclass
class TrainingConfig(Config):
    """The training loop: model, optimisation, checkpoints, devices. A script's config class adds
    its data and evaluation classes to it (see the module docstring)."""
    out_dir: str = _help("where checkpoints, metrics.jsonl and the model go", default="outputs/generator")
    model_size: str = _help("'tiny' (CPU demo), 'small' (ELECTRA-Small) or 'base' (ELECTRA-Base)", default="tiny",
                            meta={"choices": MODEL_SIZES})
    embedding_size: Optional[int] = _help("override the preset's embedding size", default=None)
    hidden_size: Optional[int] = _help("override the discriminator's hidden size", default=None)
    num_hidden_layers: Optional[int] = _help("override the number of layers (both models)", default=None)
    num_attention_heads: Optional[int] = _help("override the discriminator's attention heads", default=None)
    intermediate_size: Optional[int] = _help("override the discriminator's FFN size", default=None)
    gen_hidden_size: Optional[int] = _help("override the generator's hidden size", default=None)
    gen_num_attention_heads: Optional[int] = _help("override the generator's attention heads", default=None)
    gen_intermediate_size: Optional[int] = _help("override the generator's FFN size", default=None)
    gen_initializer_range: Optional[float] = _help("override the generator's initial weight std (the tiny preset's "
                                                   "64-wide generator: 0.05; otherwise ELECTRA's 0.02)", default=None)
    use_sbo: bool = _help("train the generator's span-boundary objective", default=True)
    init_from: Optional[str] = _help("start from pre-trained weights: a training out_dir, convert_tf_checkpoint.py's "
                                     "out_dir, or transformers ELECTRA folders (generator/ and discriminator/, or "
                                     "one model's folder); its architecture replaces model_size (a contradicting "
                                     "preset given is refused)", default=None)
    max_steps: int = _help("optimizer steps", default=1000)
    train_batch_size: int = _help("sequences per step and process", default=32)
    gradient_accumulation_steps: int = _help("micro-batches per optimizer step", default=1)
    learning_rate: float = _help("peak learning rate", default=5e-4)
    weight_decay: float = _help("AdamW weight decay", default=0.01)
    warmup_fraction: float = _help("share of max_steps spent warming up", default=0.1)
    max_grad_norm: float = _help("gradient clipping (0: off)", default=1.0)
    log_every: int = _help("steps between logged metrics", default=10)
    save_every: int = _help("steps between checkpoints", default=200)
    keep_checkpoints: int = _help("checkpoints kept in out_dir", default=2)
    resume_from: Optional[str] = _help("'latest' or a checkpoint path: continue a stopped run (only a checkpoint "
                                       "of the run that out_dir holds)", default=None)
    overwrite_output_dir: bool = _help("start over in an out_dir that holds another run (its checkpoints, "
                                       "metrics and models are deleted)", default=False)
    seed: int = _help("random seed", default=42)
    device: str = _help("'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'", default="auto")
    bf16: bool = _help("bf16 autocast (GPUs from Ampere: A100, L4, H100; CPUs with fast bf16)", default=False)
    fp16: bool = _help("float16 autocast with dynamic loss scaling, for GPUs without native bf16 (T4, V100, P100)",
                       default=False)
    compile: bool = _help("torch.compile the model", default=False)
    num_workers: int = _help("DataLoader worker processes that mask batches ahead of the step (-1: 1 on a GPU, "
                             "0 on the CPU; at most one per CPU core)", default=-1)

    def validate(self):
        super().validate()
        check_choice(self, "model_size", MODEL_SIZES)
        for name in ("max_steps", "train_batch_size", "gradient_accumulation_steps", "log_every", "save_every",
                     "keep_checkpoints"):
            check_range(self, name, low=1)
        for name in ("max_grad_norm", "weight_decay"):
            check_range(self, name, low=0)
        check_range(self, "num_workers", low=-1)
        check_range(self, "learning_rate", 0, 1, low_open=True)
        check_range(self, "warmup_fraction", 0, 1)
        for name in self.model_overrides():
            if name != "gen_initializer_range":
                check_range(self, name, low=1)
        if self.gen_initializer_range is not None:
            check_range(self, "gen_initializer_range", 0, 1, low_open=True)
            if self.init_from:  # the generator's weights come from the folder: the std would be silently ignored
                _fail("gen_initializer_range", "--init_from starts the generator from trained weights, so an initial "
                      "weight std does nothing; drop --gen_initializer_range, or train from scratch")
        check_device(self)
        check_one_precision(self)
        if not self.out_dir:
            _fail("out_dir", "no folder given")

    def given_model_size(self):
        """model_size when given (see is_given), else None: a preset to check a loaded model against."""
        return self.model_size if is_given(self, "model_size") else None

    def model_overrides(self):
        names = ("embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "gen_hidden_size", "gen_num_attention_heads", "gen_intermediate_size", "gen_initializer_range")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}


@dataclass
class MLM_trainingConfig(TrainingConfig, MLM_validDataArgs, MLM_trainDataArgs):
    """trainMLM_SpanElectra.py: the generator (span-level masked LM). Its fields: the loop's
    (TrainingConfig), the evaluation's (MLM_validDataArgs) and the data's (MLM_trainDataArgs)."""

    def validate(self):
        super().validate()
        for name in ("hidden_size", "num_attention_heads", "intermediate_size"):
            if getattr(self, name) is not None:  # the generator preset's own sizes would silently win
                _fail(name, f"sets the discriminator's size, which this script does not train; set the generator's "
                      f"with --gen_{name}")


@dataclass
class SE_trainingConfig(TrainingConfig, SE_validDataArgs, SE_trainDataArgs):
    """trainSpanElectra.py: the discriminator, two-stage (against a saved generator) or joint. Its
    fields: the loop's (TrainingConfig), the evaluation's (SE_validDataArgs), the data's
    (SE_trainDataArgs) and the discriminator recipe's below."""
    out_dir: str = _help("where checkpoints, metrics.jsonl and the models go", default="outputs/discriminator")
    mode: str = _help("'two_stage' (against --generator_dir) or 'joint' (ELECTRA)", default="two_stage",
                      meta={"choices": TRAIN_MODES})
    generator_dir: Optional[str] = _help("two_stage: OUT/generator of trainMLM_SpanElectra.py",
                                         default="outputs/generator/generator")
    disc_weight: float = _help("weight of the discriminator loss (ELECTRA: 50)", default=50.0)
    use_all_token: bool = _help("replaced-token detection over every token", default=True)
    use_span_head: bool = _help("span-boundary predictive objective", default=True)
    gradient_disentangled: bool = _help("joint: DeBERTaV3 gradient-disentangled embedding sharing", default=False)
    temperature_start: float = _help("generator sampling temperature at the start, falling to 1 (Fast-ELECTRA's "
                                     "curriculum; 1: ELECTRA, no curriculum)", default=1.0)
    temperature_decay: float = _help("share of max_steps over which the temperature falls to 1", default=0.5)

    def validate(self):
        super().validate()
        check_choice(self, "mode", TRAIN_MODES)
        check_range(self, "temperature_start", 0, low_open=True)
        check_range(self, "temperature_decay", 0, 1, low_open=True)
        check_range(self, "disc_weight", 0, low_open=True)
        if not (self.use_all_token or self.use_span_head):
            _fail("use_span_head", "with use_all_token false the discriminator needs the span head")
        if self.mode == "two_stage":
            for name in ("gen_hidden_size", "gen_num_attention_heads", "gen_intermediate_size", "gen_initializer_range"):
                if getattr(self, name) is not None:  # it would be silently ignored
                    _fail(name, "two-stage trains against --generator_dir's saved generator, whose size is its own; "
                          f"drop --{name} (it sizes the generator of --mode joint and of trainMLM_SpanElectra.py)")
            self.generator_dir = self.generator_beside_init_from() or self.generator_dir
            check_dir(self, "generator_dir", "train one with trainMLM_SpanElectra.py (it is OUT/generator) or use "
                      "--mode joint", must_contain="config.json", inner="generator")
            if self.gradient_disentangled:  # it would be silently ignored
                _fail("gradient_disentangled", "shares embeddings between a generator and a discriminator trained "
                      "together: it needs --mode joint (two-stage's generator is frozen)")
        elif self.generator_dir and is_given(self, "generator_dir"):
            _fail("generator_dir", f"'{self.generator_dir}' with --mode joint, which trains its own generator; drop "
                  "--generator_dir, or use --mode two_stage to train against it")

    def generator_beside_init_from(self):
        """Two-stage from a folder holding both models (a converted ELECTRA, a joint run's out_dir) with
        --generator_dir not given (is_given): its generator/, the pair ELECTRA trained together (not whatever
        generator an earlier run left at the default place)."""
        if not self.init_from or is_given(self, "generator_dir"):
            return None
        folder = os.path.normpath(self.init_from)  # OUT, or OUT/discriminator (both name the same pair)
        places = [os.path.join(folder, "generator")] + \
            [os.path.join(os.path.dirname(folder), "generator")] * (os.path.basename(folder) == "discriminator")
        for beside in places:
            if os.path.isfile(os.path.join(beside, "config.json")):
                logging.getLogger("span_electra").info("generator_dir: %s, beside the discriminator of --init_from "
                                                       "(pass --generator_dir to train against another)", beside)
                return beside
        return None


# ---------------------------------------------------------------- the whole pipeline
@dataclass
class pipeline_args:
    """run_pipeline.py: every stage, one after the other, on one corpus."""
    train_input: str = _help("training text: a file, a folder or a glob", default="data/sample/train.tokens")
    valid_input: Optional[str] = _help("validation text (empty: hold out valid_fraction)", default="data/sample/valid.tokens")
    valid_fraction: float = _help("share of documents held out when valid_input is empty", default=0.05)
    out_dir: str = _help("all outputs go under this folder", default="outputs/pipeline")
    tokenizer_type: str = _help("'BPE' or 'BERT'", default="BPE", meta={"choices": TOKENIZER_TYPES})
    vocab_size: int = _help("vocabulary size", default=8000)
    min_fre: int = _help("minimum frequency for the vocabulary", default=2)
    lowercase: bool = _help("lowercase text", default=False)
    word_segmenter: str = _help("'pyvi' for Vietnamese", default="none", meta={"choices": WORD_SEGMENTERS})
    max_seq_len: int = _help("tokens per sequence (64 for the CPU demo: a step costs half of 128's, so the same "
                             "minutes give twice the steps, and the tiny models learn more from steps than from "
                             "longer rows)", default=64)
    model_size: str = _help("'tiny', 'small' or 'base'", default="tiny", meta={"choices": MODEL_SIZES})
    mode: str = _help("'two_stage' (generator, then discriminator) or 'joint'", default="two_stage",
                      meta={"choices": TRAIN_MODES})
    generator_steps: int = _help("generator training steps (two_stage; joint trains both models for "
                                 "discriminator_steps)", default=1600)
    discriminator_steps: int = _help("discriminator (or joint) training steps", default=600)
    train_batch_size: int = _help("sequences per step", default=32)
    learning_rate: float = _help("peak learning rate (1e-2 and above: the tiny generator collapses to one "
                                 "prediction)", default=3e-3)
    explore_text: str = _help("sentence for the explorer lines at the end, spans in [[ ]] (empty: an English one, "
                              "or a Vietnamese one with --word_segmenter pyvi)", default="")
    seed: int = _help("random seed", default=42)

    def validate(self):
        check_choice(self, "model_size", MODEL_SIZES)
        check_choice(self, "mode", TRAIN_MODES)
        if self.mode == "two_stage":  # joint trains its generator within the discriminator's steps
            check_range(self, "generator_steps", low=1)
        check_range(self, "discriminator_steps", low=1)
        check_choice(self, "tokenizer_type", TOKENIZER_TYPES)
        check_choice(self, "word_segmenter", WORD_SEGMENTERS)
        check_range(self, "valid_fraction", 0, 1, high_open=True)
        if not self.valid_input and self.valid_fraction == 0:  # its report is the validation figures
            _fail("valid_fraction", "0 with no --valid_input leaves no validation text, and the pipeline reports "
                  "on it; give --valid_input or a share such as --valid_fraction 0.05")
        # what the later stages would refuse, now rather than after the vocabulary and the features are built
        check_range(self, "vocab_size", low=6, high=MAX_VOCAB_SIZE)
        check_range(self, "min_fre", low=1)
        check_range(self, "max_seq_len", low=MIN_SEQ_LEN)
        check_range(self, "train_batch_size", low=1)
        check_range(self, "learning_rate", 0, 1, low_open=True)
        check_marks(self, "explore_text")
        # now, not after both models have trained (the explorer runs last); its tokens are counted once the
        # vocabulary exists (run_pipeline.check_explore_text_fits)
        check_text_fits(self, "explore_text", self.word_segmenter, model_positions(self.max_seq_len))
        if not self.out_dir:
            _fail("out_dir", "no folder given")
        # the corpus paths now, not after the vocabulary is built
        find_text_files(self.train_input, "train_input")
        if self.valid_input:
            find_text_files(self.valid_input, "valid_input")


# ---------------------------------------------------------------- released ELECTRA checkpoints
@dataclass
class convert_args:
    """convert_tf_checkpoint.py: a google-research/electra TensorFlow checkpoint as transformers folders."""
    checkpoint: str = _help("checkpoint folder (with its `checkpoint` file) or prefix (DIR/model.ckpt-N)",
                            default="models/electra_small")
    vocab_file: Optional[str] = _help("the model's vocab.txt (unset: vocab.txt beside the checkpoint)", default=None)
    out_dir: str = _help("where discriminator/ and generator/ go", default="outputs/converted")
    config_file: Optional[str] = _help("the hparams JSON the model was trained with (model_size, "
                                       "model_hparam_overrides, do_lower_case); sizes not given there are read "
                                       "from the tensor shapes", default=None)
    do_lower_case: Optional[bool] = _help("lowercase text before tokenizing (unset: the hparams' do_lower_case, "
                                          "else true, as ELECTRA's released models)", default=None)

    def validate(self):
        if not self.checkpoint:
            _fail("checkpoint", "no path given; pass a google-research/electra checkpoint folder or prefix")
        if not self.out_dir:
            _fail("out_dir", "no folder given")
        for name in ("vocab_file", "config_file"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                _fail(name, f"'{path}' is not a file")


# ---------------------------------------------------------------- explorer and comparison
ROOT = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")  # the team's corpora beside the checkout


MAX_TOP_K = 100  # fills the explorer prints per masked token


@dataclass
class explore_args:
    """explore_SE.py: generator fills and discriminator scores for a sentence."""
    model_dir: str = _help("training out_dir (or run_pipeline.py's), or a generator/ or discriminator/ folder",
                           default="outputs/pipeline")
    text: str = _help("the sentence; words inside [[ ]] and any typed [MASK] are masked", default="")
    top_k: int = _help("fills shown per masked token", default=5)
    seed: int = _help("seed for random spans when nothing is marked", default=0)

    def validate(self):
        if not self.text.strip():
            _fail("text", "give a sentence, e.g. --text \"The cat sat on the [[ mat ]] .\"")
        check_marks(self, "text")
        check_range(self, "top_k", low=1, high=MAX_TOP_K)  # more is a vocabulary dump, not a report
        if not os.path.isdir(self.model_dir):
            _fail("model_dir", f"'{self.model_dir}' is not a folder; point it at a training out_dir")


EXPLORE_TEXTS = {  # run_pipeline.py's closing sentence by corpus language: two spans in different contexts
    "none": "The [[ game ]] was released in [[ January 2011 ]] in Japan .",
    "pyvi": "Hà Nội là [[ thủ đô ]] của [[ Việt Nam ]] .",
}
# name -> (label, how it pre-trains: the kind of step, the masking and the span heads; None: not pre-trained)
COMPARE_RECIPES = {
    "random": ("random init", None),
    "mlm": ("MLM only (BERT-style)", dict(kind="mlm", masking="token", use_sbo=False)),
    "electra": ("ELECTRA (token masking, RTD)", dict(kind="joint", masking="token", use_sbo=False,
                                                     use_span_head=False)),
    "se_two_stage": ("SpanElectra two-stage", dict(kind="two_stage", masking="span", use_sbo=True,
                                                   use_span_head=True)),
    "se_two_stage_no_heads": ("SpanElectra two-stage, no span heads", dict(kind="two_stage", masking="span",
                                                                          use_sbo=False, use_span_head=False)),
    "se_joint": ("SpanElectra joint", dict(kind="joint", masking="span", use_sbo=True, use_span_head=True)),
    "se_joint_no_heads": ("SpanElectra joint, no span heads", dict(kind="joint", masking="span", use_sbo=False,
                                                                   use_span_head=False)),
}
# per scale: the device it is sized for, model size, the full budget in joint-SpanElectra steps of batch x 128,
# and the fine-tuning set-up.
# The speeds behind the time estimates, measured (benchmarks/RESULTS.md), for the device the run uses:
# pre-training FLOP/s by kind of step, the compiled step's first call, fine-tuning steps/s per process,
# vocabulary + features in bytes of plain text per second (with pyvi segmenting, and without)
CPU_SPEEDS = dict(  # 2 CPU cores: the tiny comparison's 5.8 TFLOPs in 1.6 min (ELECTRA-Small's fp32 step:
    # ~800 tokens/s, the same 60 GFLOP/s); with --compile true (off at tiny scale) the tiny step's first call
    # took ~35 s cold, ~10 s compiled ahead
    flops_per_second={"mlm": 60e9, "joint": 60e9, "two_stage": 60e9}, compile_seconds=35, warm_compile_seconds=10,
    # fine-tuning the tiny model pads each batch to its longest example: its steps take time in proportion
    # (SST-2 15.2 steps/s at a mean width of 67 tokens, MRPC 8.2 at 122, batch 32; 2026-11-28)
    ft_padded_tokens_per_second=32000,
    # a fine-tuning job's loading (model, tokenizer, task) and dev evaluation, and the linear probe's pass
    # (the tiny model on SST-2, finetune_SE.py in one process, 2026-11-27): 1.7 s, ~2,000 examples/s
    ft_job_seconds=2, ft_eval_examples_per_second=2000,
    prep_bytes_per_second=2.1e6,  # enwiki's 185 MB: vocabulary 41 s + features 45 s (2026-11-27)
    segmented_prep_bytes_per_second=4.7e5)  # viwiki-large's 110 MB through pyvi: 108 s + 128 s (2026-11-27)
H100_SPEEDS = dict(  # one H100, bf16 + compile, inside the 5,500-step comparison runs on enwiki (2026-11-26):
    # MLM 6.8 PFLOP in 71 s; the joint steps 45-47 TFLOP/s (median 735-839k tokens/s, below the benchmark's
    # 1.05M; session 6's run took 203 s and 195 s against this estimate's 207 s);
    # first compiled step 32-53 s; 20-23 fine-tuning steps/s per process; features of enwiki in 34 s
    flops_per_second={"mlm": 96e12, "joint": 45e12, "two_stage": 45e12}, compile_seconds=55, ft_steps_per_second=22,
    # a fine-tuning worker's job: ~15 s measured for its process, loading, dev evaluations and probe
    # together (session 6); evaluation assumed at 4,000 examples/s until measured on its own
    ft_job_seconds=14, ft_eval_examples_per_second=4000,
    prep_bytes_per_second=5.4e6,  # enwiki's 185 MB in the 34 s above, on the machine's 16 cores
    # pyvi is CPU work spread over a process per core: assumed 4x the 2-core CPU's until measured (the
    # plain build above ran 2.6x the 2-core CPU's pace there)
    segmented_prep_bytes_per_second=4 * CPU_SPEEDS["segmented_prep_bytes_per_second"],
    # a step compiled ahead (compare_pretraining.warm_compile) loads from torch.compile's caches: 7 s against
    # 79 s cold for the ELECTRA-Small step on the 2-core CPU; assumed 10 s on the H100 until measured there
    warm_compile_seconds=10)
DEVICE_SPEEDS = {"cpu": CPU_SPEEDS, "cuda": H100_SPEEDS}
WIKITEXT2 = (os.path.join(SHARED, "wikitext-2", "wiki.train.tokens"), os.path.join(SHARED, "wikitext-2", "wiki.valid.tokens"))
ENWIKI = (os.path.join(SHARED, "enwiki", "enwiki.train.txt.xz"), os.path.join(SHARED, "enwiki", "enwiki.valid.txt.xz"))
VIWIKI = (os.path.join(SHARED, "viwiki-large", "viwiki-large.train.txt.xz"),
          os.path.join(SHARED, "viwiki-large", "viwiki-large.valid.txt.xz"))
GLUE_TASKS = ",".join(os.path.join(SHARED, "glue", t) for t in ("SST-2", "MRPC"))
COMPARE_SCALES = {
    "tiny": dict(device="cpu", model_size="tiny", budget_steps=300, batch=32, learning_rate=2e-3, vocab_size=8000,
                 ft_epochs=3, ft_max_train=8000, ft_lr=1e-3, corpus=WIKITEXT2, bf16=False, compile=False,
                 fractions="0.5,1", recipes=",".join(COMPARE_RECIPES)),
    # the FLOPs of 90 s of the benchmark's joint step on one H100 (5,500 steps, 90M tokens) per recipe:
    # ELECTRA, SpanElectra joint and MLM against random init
    "gpu": dict(device="cuda", model_size="small", budget_steps=5500, batch=128, learning_rate=5e-4,
                vocab_size=30522, ft_epochs=2, ft_max_train=4000, ft_lr=3e-4, corpus=ENWIKI, bf16=True,
                compile=True, fractions="1", recipes="random,mlm,electra,se_joint"),
    # the same on Vietnamese Wikipedia, words segmented with pyvi, at half the budget; fine-tuned on
    # the Vietnamese task folders given with --tasks (sentence<TAB>label TSV)
    "gpu_vi": dict(device="cuda", model_size="small", budget_steps=2750, batch=128, learning_rate=5e-4,
                   vocab_size=30522, ft_epochs=2, ft_max_train=4000, ft_lr=3e-4, corpus=VIWIKI, word_segmenter="pyvi",
                   bf16=True, compile=True, fractions="1", recipes="random,mlm,electra,se_joint", tasks=""),
    "small": dict(device="cuda", model_size="small", budget_steps=20000, batch=128, learning_rate=5e-4,
                  vocab_size=30522, ft_epochs=3, ft_max_train=0, ft_lr=3e-4, corpus=ENWIKI, bf16=True,
                  compile=True, fractions="0.5,1", recipes=",".join(COMPARE_RECIPES)),
}


@dataclass
class compare_args:
    """benchmarks/compare_pretraining.py: every recipe, equal pre-training FLOPs, the same fine-tuning."""
    scale: str = _help("'tiny' (2 CPU cores, about 80 minutes, WikiText-2), 'gpu' (ELECTRA-Small on English "
                       "Wikipedia, one H100 in about 9 minutes), 'gpu_vi' (the same on Vietnamese Wikipedia, "
                       "pyvi-segmented, half the budget) or 'small' (ELECTRA-Small, 20k-step budget)",
                       default="tiny", meta={"choices": tuple(COMPARE_SCALES)})
    train_input: str = _help("pre-training text (empty: the scale's corpus)", default="")
    valid_input: str = _help("validation text (empty: the scale's corpus)", default="")
    pack_across_documents: bool = _help("features: carry each document's tail into the next document's first "
                                        "sequence (process.py's flag: for corpora of documents shorter than 128 "
                                        "tokens, e.g. one speech or paragraph each)", default=False)
    tasks: Optional[str] = _help("comma-separated GLUE-format task folders (unset: SST-2 and MRPC, none for "
                                 "gpu_vi)", default=None)
    recipes: str = _help(f"comma-separated recipes, of {', '.join(COMPARE_RECIPES)} (empty: the scale's)",
                         default="")
    budget_steps: int = _help("full budget, in FLOPs of this many joint SpanElectra steps (0: the scale's)", default=0)
    budget_scale: float = _help("multiplies every budget (more GPU time: 2, 4, ...)", default=1.0)
    budget_fractions: str = _help("budgets pre-trained, as fractions of the full one (the plot's points; empty: "
                                  "the scale's)", default="")
    gen_fraction: float = _help("two-stage: share of the budget spent on the generator", default=0.3)
    seeds: str = _help("fine-tuning seeds", default="1,2,3")
    ft_workers: int = _help("fine-tuning processes at once (0: 8 on a GPU, 1 on the CPU); on the CPU they and "
                            "the pre-training split its cores", default=0)
    ft_max_train_examples: int = _help("fine-tuning examples per task (-1: the scale's, 0: all)", default=-1)
    out_dir: str = _help("where everything goes", default="outputs/compare")
    results_md: str = _help("markdown file whose section for this scale is rewritten with the table, e.g. "
                            "benchmarks/RESULTS.md (other recipes, budgets, seeds or tasks than the scale's: a "
                            "section '<scale>-custom' of its own; empty: none)", default="")
    seed: int = _help("pre-training seed", default=42)
    pretrain_seeds: str = _help("comma-separated pre-training seeds, e.g. 42,43,44: each recipe pre-trained once per "
                                "seed, the table pooling their fine-tuning runs (empty: --seed alone)", default="")
    device: str = _help("'auto', 'cpu' or 'cuda'", default="auto")
    bf16: Optional[bool] = _help("bf16 autocast in pre-training (unset: the scale's, off with --fp16)", default=None)
    fp16: bool = _help("float16 autocast with loss scaling in pre-training, for GPUs without native bf16 (T4, "
                       "V100)", default=False)
    compile: Optional[bool] = _help("torch.compile the pre-training step (unset: the scale's)", default=None)

    def resolved(self):
        """This config with the scale's defaults filled in where a field was left empty."""
        scale = COMPARE_SCALES[self.scale]
        return dataclasses.replace(
            self, train_input=self.train_input or scale["corpus"][0], valid_input=self.valid_input or scale["corpus"][1],
            recipes=self.recipes or scale["recipes"], budget_fractions=self.budget_fractions or scale["fractions"],
            tasks=self.tasks if self.tasks is not None else scale.get("tasks", GLUE_TASKS),
            bf16=(scale["bf16"] and not self.fp16) if self.bf16 is None else self.bf16,
            compile=scale["compile"] if self.compile is None else self.compile)

    def validate(self):
        check_choice(self, "scale", tuple(COMPARE_SCALES))
        if bool(self.train_input) != bool(self.valid_input):  # else one side is the scale's corpus, the other yours
            given, empty = ("train_input", "valid_input") if self.train_input else ("valid_input", "train_input")
            scale_path = COMPARE_SCALES[self.scale]["corpus"][0 if empty == "train_input" else 1]
            _fail(empty, f"empty, so it would be the scale's corpus ('{scale_path}') while --{given} is your own "
                  f"text; give both --train_input and --valid_input (held-out text of the same corpus, e.g. "
                  "the last few percent of its lines in a file of their own)")
        check_device(self)
        check_one_precision(self)
        check_range(self, "budget_steps", low=0)
        check_range(self, "budget_scale", 0, low_open=True)
        check_range(self, "gen_fraction", 0, 1, low_open=True, high_open=True)
        check_range(self, "ft_workers", low=0)
        check_range(self, "ft_max_train_examples", low=-1)
        self.ft_seed_list()
        self.pretrain_seed_list()
        self.fraction_list()
        folder = os.path.dirname(os.path.abspath(self.results_md)) if self.results_md else ""
        if folder and not os.path.isdir(folder):  # else it fails only after the whole run, in the last write
            _fail("results_md", f"its folder '{folder}' does not exist; create it, or name a file in an existing one")
        if self.results_md and os.path.isdir(self.results_md):
            _fail("results_md", f"'{self.results_md}' is a folder; give a markdown file's path, e.g. "
                  "benchmarks/RESULTS.md")
        names = (self.recipes or COMPARE_SCALES[self.scale]["recipes"]).split(",")
        for name in names:
            if name not in COMPARE_RECIPES:
                _fail("recipes", f"'{name}' is not one of {', '.join(COMPARE_RECIPES)}")
        if len(set(names)) < len(names):
            _fail("recipes", f"'{self.recipes}' names a recipe twice; give each once")

    def fraction_list(self):
        """The budget fractions pre-trained, each in (0, 1]: --budget_fractions, else the scale's."""
        text = self.budget_fractions or COMPARE_SCALES[self.scale]["fractions"]
        try:
            fractions = [float(f) for f in text.split(",")]
        except ValueError:
            _fail("budget_fractions", f"'{text}' is not a comma-separated list of numbers; use e.g. 0.25,0.5,1")
        if not all(0 < f <= 1 for f in fractions) or len(set(fractions)) < len(fractions):
            _fail("budget_fractions", f"'{text}': give distinct fractions of the full budget in (0, 1], e.g. 0.5,1 "
                  "(more compute: --budget_scale)")
        return fractions

    def ft_seed_list(self):
        """The fine-tuning seeds as integers, read as finetune_SE.py reads --seeds."""
        return finetune_args(seeds=self.seeds).seed_list()

    def pretrain_seed_list(self):
        """The pre-training seeds: --pretrain_seeds as distinct integers, else [--seed]."""
        return seed_values(self, "pretrain_seeds") if self.pretrain_seeds.strip() else [self.seed]



# ---------------------------------------------------------------- command line
def config_parser(config_cls):
    """The command line of config_cls: --field for every field, and --config FILE."""
    parser = HfArgumentParser(config_cls, description=(config_cls.__doc__ or "").strip())
    parser.add_argument("--config", default=None, help="JSON file holding a whole config")
    for action in parser._actions:
        if action.option_strings and action.option_strings[0].startswith("--no_"):
            # HfArgumentParser gives --no_X the help of --X, and "(default: False)"; "%(default).0s" prints
            # nothing, and keeps the formatter from adding the misleading default
            action.help = f"the same as --{action.option_strings[0][5:]} false%(default).0s"
        elif action.help:
            action.help = escape_percent(action.help)  # "17% of ..." in a help text would break --help
    return parser


def escape_percent(text):
    """text with each '%' that is not argparse's own '%(name)s' doubled, as argparse's help expects."""
    return re.sub(r"%(?!\()", "%%", text)


def parse_config(config_cls, argv=None):
    """Build config_cls from `--config file.json` (optional) and `--field value` overrides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = config_parser(config_cls)

    def one_line_error(message):  # argparse would print the whole usage block first
        raise SpanElectraError(f"{message}; run with --help for the fields", every_rank=True)

    parser.error = one_line_error
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SpanElectraError("--config: give the path of a JSON config file", every_rank=True)
        parser.set_defaults(**_read_config_file(argv[i + 1], config_cls))
        del argv[i:i + 2]
    check_one_form(parser, argv)
    try:
        config, _ = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as e:  # HfArgumentParser reports leftover arguments this way
        raise SpanElectraError(f"{e}; run with --help for the fields", every_rank=True) from None
    setattr(config, TYPED_FIELDS, typed_fields(config_cls, argv))
    return config


def typed_fields(config_cls, argv):
    """The names of the fields argv gives, whatever their values, as argparse reads them (--no_X, --X=v, an
    abbreviated --X): a parser whose every default is 'absent' keeps only what was typed."""
    probe = config_parser(config_cls)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    typed, _ = probe.parse_known_args(argv)
    return frozenset(vars(typed)) - {"config"}


def check_one_form(parser, argv):
    """A boolean field given both as --X and as --no_X (--save_model true --no_save_model) contradicts
    itself: refused, where argparse would keep the last silently. A field repeated in one form is an
    override appended to a command, as argparse has always taken it: the last one counts."""
    dests = {s: a.dest for a in parser._actions for s in a.option_strings}
    forms = {}
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in dests:
            forms.setdefault(dests[flag], set()).add(flag)
    for dest, flags in forms.items():
        if len(flags) > 1:
            raise SpanElectraError(f"{dest}: given as both {' and '.join(sorted(flags, key=len))}; give one",
                                   every_rank=True)


def _read_config_file(path, config_cls):
    values = read_json(path, "give a JSON config a script saved (e.g. OUT/trainMLM_config.json)", "--config", ours=False)
    saved_class = values.pop("config_class", config_cls.__name__)  # written by save_config
    if saved_class != config_cls.__name__:
        raise SpanElectraError(f"--config: '{path}' holds a {saved_class}, not a {config_cls.__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        hint = "; an ELECTRA hparams JSON goes to --config_file" if "config_file" in fields else ""
        raise SpanElectraError(f"--config: '{path}' has unknown field(s) {', '.join(unknown)} "
                               f"for {config_cls.__name__}{hint}")
    hints = typing.get_type_hints(config_cls)
    return {k: _coerce(v, k, hints[k], f"in '{path}'") for k, v in values.items()}


def checked_config(config, config_cls):
    """A script's main(config) argument: the class's defaults when None. The wrong class, or a field of
    the wrong type (a notebook's max_steps="5"), is a one-line error, as a bad flag is. Called from a
    notebook or another program, it sets up the log as run_main does (unless logging already is)."""
    setup_logging()
    if config is None:
        config = config_cls()
    if type(config).__name__ != config_cls.__name__ or not dataclasses.is_dataclass(config):  # by name: a notebook
        # that reloaded argument.py after editing a default holds the class anew
        raise SpanElectraError(f"config: this script takes a {config_cls.__name__}, not a {type(config).__name__}; "
                               f"build it with argument.{config_cls.__name__}(...)")
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        setattr(config, f.name, _coerce(getattr(config, f.name), f.name, hints[f.name], "given to main()"))
    if hasattr(config, "seed"):  # numpy and torch take seeds in [0, 2**32)
        check_range(config, "seed", low=0, high=MAX_SEED)
    find_bundled_data(config)
    return config


def find_bundled_data(config):
    """A field left at a default under the repo's data/ (the bundled samples) finds it from any working folder:
    `python ~/SpanElectra/process.py --train_input MY_TEXT` run elsewhere read 'data/sample/valid.tokens' there."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, str) and value == f.default and value.startswith("data/") and not os.path.exists(value):
            bundled = os.path.join(ROOT, value)
            if os.path.exists(bundled):
                setattr(config, f.name, bundled)


MAX_SEED = 2**32 - 1


def field_default(config_cls, name):
    """The default a config class declares for one of its fields."""
    return next(f.default for f in dataclasses.fields(config_cls) if f.name == name)


TYPED_FIELDS = "_typed_fields"  # the attribute parse_config records the command line's fields in (not a field)


def is_given(config, name):
    """True when config.<name> was given: typed on the command line (even at its default value), or set to
    other than its default. A config built in code (a notebook's main(config), or --config's file) records no
    typing, so there a field set to its default value can't be told apart from one left alone."""
    return name in getattr(config, TYPED_FIELDS, ()) or getattr(config, name) != field_default(type(config), name)


def seed_values(config, name):
    """A comma-separated seeds field as distinct integers in [0, 2**32) (a seed twice would count twice)."""
    text = getattr(config, name)
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        _fail(name, f"'{text}' is not a comma-separated list of integers; use e.g. 1,2,3")
    if len(set(seeds)) < len(seeds):
        _fail(name, f"'{text}' names a seed twice; give each once")
    if any(not 0 <= s <= MAX_SEED for s in seeds):
        _fail(name, f"'{text}': seeds are integers in [0, {MAX_SEED}]")
    return seeds


def _coerce(value, name, hint, where):
    """A JSON value as the field's type (argparse converts only strings, so check the rest here).
    Types come from the annotations: HfArgumentParser rewrites the dataclass fields' own types."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if args else hint
    if value is None and type(None) in typing.get_args(hint):
        return None
    # numbers as numpy gives them (a notebook's np.int64 from a sweep) count as the Python numbers they are
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if kind is int and not isinstance(value, bool) and (isinstance(value, numbers.Integral) or (
            isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer())):
        return int(value)
    if kind is bool and type(value).__name__ == "bool_":  # numpy's
        return bool(value)
    if kind is str and isinstance(value, os.PathLike):  # a notebook's pathlib.Path
        return os.fspath(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    raise SpanElectraError(f"{name}: {value!r} {where} is not {kinds.get(kind, kind.__name__)}")


# the names the training scripts save their config (OUT/trainMLM_config.json) and run identity under
GENERATOR_RUN, DISCRIMINATOR_RUN = "trainMLM", "trainSpanElectra"


def save_config(config, out_dir, script_name):
    """Write the resolved config beside a script's output, e.g. out_dir/process_config.json."""
    data = {"config_class": type(config).__name__, **dataclasses.asdict(config)}
    atomic_write_json(os.path.join(out_dir, f"{script_name}_config.json"), data)


def saved_config(out_dir, script_name):
    """The config save_config wrote in out_dir, as a dict; {} when there is none or it cannot be read
    (for finding a run's inputs, which may then simply not be found)."""
    try:
        with open(os.path.join(out_dir, f"{script_name}_config.json"), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


# a disk that fills up or turns read-only mid-run: the user's to fix, not a bug to trace
def print_error(message):
    """The one error line, on a line of its own even when a progress bar was mid-line."""
    print_own_line(f"error: {without_worker_traceback(str(message))}")


def without_worker_traceback(message):
    """Our message alone, out of the 'Caught SpanElectraError in DataLoader worker process 0. Original
    Traceback ...' that torch re-raises a data worker's error with."""
    if message.startswith("Caught SpanElectraError in DataLoader worker"):
        return message.rsplit("SpanElectraError: ", 1)[-1].strip()
    return message


def print_own_line(text):
    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()
    # a path's bytes that are not UTF-8 (surrogates) as \udcXX: never a UnicodeEncodeError in place of the line
    print(text.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)


def is_out_of_memory(error):
    """torch.OutOfMemoryError (CUDA), or the CPU allocator's failure (a RuntimeError, or MemoryError)."""
    text = str(error)
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or \
        "out of memory" in text or "can't allocate memory" in text


def out_of_memory_message(config):
    batch = getattr(config, "train_batch_size", None)
    if batch is None:
        return "out of memory; use smaller batches or a machine with more memory"
    accumulation = getattr(config, "gradient_accumulation_steps", None)
    keep = (f" and --gradient_accumulation_steps {2 * accumulation} to keep the effective batch"
            if accumulation else "")
    return (f"train_batch_size: out of memory with {batch} sequences per step; use --train_batch_size "
            f"{max(1, batch // 2)}{keep}")


def run_main(main, config_cls, argv=None):
    """Entry point of every script: parse, run, and turn user errors into one line and exit code 2."""
    setup_logging()
    config = None
    # `timeout`, schedulers and torchrun stop a run with SIGTERM: handled as Ctrl-C (only the main
    # thread may set a handler; a run started from another thread keeps the default)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if in_main_thread else None
    try:
        config = parse_config(config_cls, argv)
        main(config)
    except SpanElectraError as e:
        if not e.every_rank or os.environ.get("RANK", "0") == "0":  # under torchrun, said once (errors a process
            # meets on its own, a file its node lacks, are said by it: rank 0 then names that process)
            print_error(e)
        sys.exit(2)
    except Exception as e:  # out of memory, or a failed write: one line; anything else is a bug to report
        oom = isinstance(e, (RuntimeError, MemoryError)) and is_out_of_memory(e)
        message = (out_of_memory_message(config) if oom else lost_process_message(e, config)
                   or write_failure_message(e, getattr(config, "out_dir", None)))
        if message is None:
            raise
        print_error(message)
        sys.exit(2)
    except KeyboardInterrupt as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank is stopped; one says so
            print_own_line(interrupted_message(config))
        sys.exit(143 if isinstance(e, Terminated) else 130)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


# how gloo and NCCL say a peer went away mid-collective (not this process's own failures: a bad NCCL setting,
# a rendezvous that never completed)
LOST_PEER_WORDS = ("by peer", "Connection closed", "Connection reset", "communicator was aborted",
                   "remote process exited", "Watchdog caught collective operation timeout")


def lost_process_message(error, config):
    """A collective that failed because another process of a torchrun run stopped (killed, out of memory,
    its node lost): one line that sends the user to that process's own output, or None."""
    text = str(error)
    if os.environ.get("WORLD_SIZE", "1") == "1" or not any(k in text for k in LOST_PEER_WORDS):
        return None
    first = text.split(". ")[0].split("] ")[-1].strip()  # gloo's "[.../pair.cc:537] Read error ...: Connection reset by peer"
    return f"another process of this run stopped ({first}); its own output says why; this one stopped" + \
        checkpoint_hint(config)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C: the lock is released and the last checkpoint named."""


def raise_terminated(signum, frame):
    raise Terminated()


def interrupted_message(config):
    """What Ctrl-C leaves: for a training run, the checkpoint it continues from and how."""
    return "interrupted" + checkpoint_hint(config)


def checkpoint_hint(config):
    """For a training run that stopped: the checkpoint it continues from and how ('' for other scripts)."""
    if config is None or not hasattr(config, "resume_from"):
        return ""
    checkpoints = list_checkpoints(config.out_dir)
    if not checkpoints:
        return f" before the first checkpoint (one every --save_every {config.save_every} steps): nothing to resume"
    return (f": {os.path.basename(checkpoints[-1])} in '{config.out_dir}' is the last checkpoint; continue "
            "from it with the same command and --resume_from latest")


# ---------------------------------------------------------------- fine-tuning
@dataclass
class finetune_args:
    """finetune_SE.py: fine-tune a discriminator (or any transformers ELECTRA/BERT folder) on a GLUE-style
    task folder holding train.tsv and dev.tsv (test.tsv optional), with ELECTRA's fine-tuning recipe."""
    TASK_TYPES = ("auto", "single", "pair", "regression")  # no annotation: class constants, not fields
    METRICS = ("auto", "accuracy", "f1", "matthews_corr")

    model_dir: str = _help("exported discriminator (OUT/discriminator) or a transformers ELECTRA/BERT folder, "
                           "with its tokenizer", default="outputs/pipeline/two_stage/discriminator")
    task_dir: str = _help("folder with train.tsv and dev.tsv (test.tsv optional), e.g. glue_data/SST-2",
                          default="data/glue/SST-2")
    out_dir: str = _help("where results.json, test_predictions.tsv and the model go", default="outputs/finetune")
    task_type: str = _help("'auto' (read from the files), 'single' or 'pair' (classification of one sentence or "
                           "a pair), or 'regression' (a score per example)", default="auto",
                           meta={"choices": TASK_TYPES})
    text_columns: str = _help("override the detected text column(s): header names or numbers counted from 1, "
                              "comma-separated", default="")
    label_column: str = _help("override the detected label column: a header name or a number counted from 1",
                              default="")
    metric: str = _help("metric beside accuracy: 'auto' (F1 for pair tasks labelled 0/1, Matthews correlation for "
                        "CoLA), 'accuracy', 'f1' (positive label '1') or 'matthews_corr'", default="auto",
                        meta={"choices": METRICS})
    num_train_epochs: int = _help("passes over train.tsv", default=3)
    learning_rate: float = _help("peak learning rate of the classifier head (ELECTRA-Small: 3e-4)", default=3e-4)
    layerwise_lr_decay: float = _help("each layer further down gets this factor more (ELECTRA-Small: 0.8; 1: off)",
                                      default=0.8)
    weight_decay: float = _help("AdamW weight decay (none on biases and LayerNorm)", default=0.01)
    warmup_ratio: float = _help("share of the steps spent warming up, then linear decay", default=0.1)
    max_grad_norm: float = _help("gradient clipping (0: off)", default=1.0)
    train_batch_size: int = _help("examples per step", default=32)
    eval_batch_size: int = _help("examples per evaluation batch", default=128)
    max_seq_length: int = _help("tokens per example, special tokens included (longer ones are truncated)",
                                default=128)
    max_train_examples: int = _help("use a random subset of this many training examples (0: all)", default=0)
    seed: int = _help("random seed (when seeds is empty)", default=42)
    seeds: str = _help("comma-separated seeds, e.g. 1,2,3: one run each, results.json reports median, min and max",
                       default="")
    subset_seed: int = _help("seed that picks the max_train_examples subset (-1: the first seed), so that seeds "
                             "fine-tuned in separate runs see the same examples", default=-1)
    save_model: bool = _help("save the first seed's fine-tuned model and tokenizer to out_dir/model", default=True)
    pre_segmented: bool = _help("the task's text is already word-segmented as the model's corpus was (e.g. "
                                "Vietnamese with pyvi's Việt_Nam): used as it is, not segmented again", default=False)
    linear_probe: bool = _help("instead of fine-tuning: a linear probe (the encoder frozen, logistic regression on "
                               "its mean-pooled outputs), cheap and sensitive to what pre-training learned",
                               default=False)
    device: str = _help("'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'; on a GPU autocast is bf16 where it is "
                        "native (A100, L4, H100), else fp16 with loss scaling (T4, V100)",
                        default="auto")

    def validate(self):
        check_choice(self, "task_type", self.TASK_TYPES)
        check_choice(self, "metric", self.METRICS)
        check_device(self)
        for name in ("num_train_epochs", "train_batch_size", "eval_batch_size"):
            check_range(self, name, low=1)
        check_range(self, "learning_rate", 0, 1, low_open=True)
        check_range(self, "layerwise_lr_decay", 0, 1, low_open=True)
        check_range(self, "warmup_ratio", 0, 1, high_open=True)
        for name in ("weight_decay", "max_grad_norm", "max_train_examples"):
            check_range(self, name, low=0)
        check_range(self, "max_seq_length", low=5)  # [CLS] a [SEP] b [SEP]
        check_range(self, "subset_seed", low=-1, high=MAX_SEED)
        self.seed_list()
        check_dir(self, "model_dir", "point it at OUT/discriminator of trainSpanElectra.py or a transformers "
                  "ELECTRA/BERT folder", must_contain="config.json")
        check_dir(self, "task_dir", "point it at a task folder holding train.tsv and dev.tsv", must_contain="train.tsv")
        check_dir(self, "task_dir", "it needs a dev.tsv beside train.tsv for evaluation", must_contain="dev.tsv")
        if not self.out_dir:
            _fail("out_dir", "no folder given")

    def seed_list(self):
        """The seeds to run: --seeds as integers, else [--seed]."""
        return seed_values(self, "seeds") if self.seeds.strip() else [self.seed]
