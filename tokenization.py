"""Tokenization pieces every stage shares: the special tokens and their ids, loading a tokenizer
folder written by create_vocab_SE.py (with its identity hash), and word segmentation (Vietnamese
with pyvi) applied to text before the tokenizer sees it."""
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
from multiprocessing import get_context

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from transformers import PreTrainedTokenizerFast

from io_utils import (SpanElectraError, atomic_write_json, available_cores, check_utf8_name, ctrl_c_held_back,
                      first_line, ignore_ctrl_c, read_json, sha256_file)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4 in our vocabularies, in this order
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)  # ours; an existing vocabulary (BERT's: 0, 100-103) keeps its own
UNKNOWN_WARNING = 0.05  # [UNK]s above this share of a text's tokens: the vocabulary does not cover it
SE_TOKENIZER_FILE = "se_tokenizer.json"
TOKENIZER_FIX = "make the vocabulary again with create_vocab_SE.py (or copy the tokenizer folder back)"
# what a tokenizer folder may hold (create_vocab_SE.py's output, transformers' tokenizer files);
# copies take these alone, so a model folder given as the tokenizer never passes its weights on
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "vocab.txt", SE_TOKENIZER_FILE, "create_vocab_config.json")
BYTE_ALPHABET = 256
MODEL_INPUT_NAMES = ["input_ids", "token_type_ids", "attention_mask"]  # what a saved tokenizer returns


@functools.lru_cache(maxsize=1)
def byte_level_bytes():
    """Byte-level BPE's character -> byte map (GPT-2's bytes_to_unicode, inverted)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


# ---------------------------------------------------------------- word segmentation
def load_segmenter(name):
    """Return a function line -> segmented line, or None for 'none'."""
    if name in (None, "", "none"):
        return None
    if name == "pyvi":
        try:
            from pyvi import ViTokenizer
        except ImportError:
            raise SpanElectraError("word_segmenter: 'pyvi' is not installed; run `pip install pyvi`, "
                                   "or use --word_segmenter none") from None
        return ViTokenizer.tokenize
    raise SpanElectraError(f"word_segmenter: unknown segmenter '{name}'; use 'pyvi' or 'none'")


def folder_segmenter(tokenizer_dir, field):
    """(name, line -> line): the word segmenter recorded in a tokenizer or model folder's
    se_tokenizer.json ('none': lines unchanged), what the explorer and fine-tuning apply to text before
    tokenizing; special tokens in the text ([MASK], [SEP]) pass whole. A segmenter missing here is a
    one-line error naming `field`."""
    name = read_tokenizer_info(tokenizer_dir)["word_segmenter"]
    if name not in (None, "", "none", "pyvi"):  # a hand-edited se_tokenizer.json: no install would help
        raise SpanElectraError(f"{field}: '{os.path.join(tokenizer_dir, SE_TOKENIZER_FILE)}' names the word "
                               f"segmenter {name!r}, which SpanElectra does not know (it knows pyvi and none); "
                               "rebuild the vocabulary with create_vocab_SE.py")
    try:
        segment = load_segmenter(name)
    except SpanElectraError:
        raise SpanElectraError(f"{field}: '{tokenizer_dir}' was built on text segmented with {name}, which "
                               f"is not installed here; run `pip install {name}`") from None
    return name, keeping_special_tokens(segment) if segment else (lambda line: line)


SPECIAL_TOKEN_PATTERN = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


def keeping_special_tokens(segment):
    """segment applied to the text between special tokens, which pass unchanged (pyvi cuts '[MASK]'
    into '[ MASK ]', which the tokenizer no longer knows as one token)."""
    def run(line):
        pieces = SPECIAL_TOKEN_PATTERN.split(line)
        if len(pieces) == 1:
            return segment(line)
        return " ".join(p if i % 2 else segment(p.strip()) for i, p in enumerate(pieces) if p.strip())
    return run


def _segment_batch(name, batch):
    lines, extra = batch
    segment = load_segmenter(name)
    return [segment(line) if line.strip() else line for line in lines], extra


def segmented_batches(batches, name, num_workers):
    """Segment (lines, extra) batches in parallel processes, keeping their order ('none': as they are).

    Workers are spawned, not forked, so they never inherit the tokenizer's thread pool. Text of one batch is
    segmented here: each spawned worker spends seconds importing pyvi, which a small corpus never earns back."""
    if name in (None, "", "none"):
        yield from batches
        return
    load_segmenter(name)  # fail early, in this process, if it is missing
    batches = iter(batches)
    ahead = list(itertools.islice(batches, 2))
    workers = num_workers or available_cores()
    if workers == 1 or len(ahead) < 2:
        for batch in itertools.chain(ahead, batches):
            yield _segment_batch(name, batch)
        return
    with ctrl_c_held_back("spawn"):
        # the pool is terminated when the main process stops (a worker that died of Ctrl-C would leave imap waiting)
        pool = get_context("spawn").Pool(workers, initializer=ignore_ctrl_c)
    with pool:
        yield from pool.imap(functools.partial(_segment_batch, name), itertools.chain(ahead, batches), chunksize=1)


def batched(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------- loading
def has_tokenizer(directory):
    """A folder create_vocab_SE.py wrote, or a transformers model folder with tokenizer.json or vocab.txt."""
    return any(os.path.isfile(os.path.join(directory or "", n)) for n in ("tokenizer.json", "vocab.txt"))


def no_tokenizer_message(directory):
    """Why a folder is no tokenizer folder, naming its discriminator/ or generator/ when that is one (the
    out_dir of convert_tf_checkpoint.py or of training, given instead of one of its models)."""
    said = f"'{directory}' has no tokenizer.json or vocab.txt"
    for sub in ("discriminator", "generator"):
        if has_tokenizer(os.path.join(directory or "", sub)):
            return f"{said}; did you mean '{os.path.join(directory, sub)}'?"
    return f"{said}; run create_vocab_SE.py or point it at its out_dir (or at a transformers model folder)"


def load_tokenizer(tokenizer_dir, field="tokenizer_dir"):
    """Load a tokenizer folder: (tokenizers.Tokenizer, info dict) where info holds the segmenter,
    the special-token ids and a hash of the tokenizer that features and models are checked against.
    Besides create_vocab_SE.py's folders this reads transformers model folders (tokenizer.json, or a
    BERT/ELECTRA vocab.txt alone), whose special tokens keep their own ids."""
    path = os.path.join(tokenizer_dir or "", "tokenizer.json")
    check_utf8_name(tokenizer_dir or "", field)
    if not has_tokenizer(tokenizer_dir):
        raise SpanElectraError(f"{field}: {no_tokenizer_message(tokenizer_dir)}")
    info = read_tokenizer_info(tokenizer_dir)
    if os.path.isfile(path):
        try:
            tok = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise SpanElectraError(f"{field}: cannot read '{path}' ({first_line(e)}); "
                                   "rebuild it with create_vocab_SE.py") from None
    else:
        options = vocab_options(tokenizer_dir, field)
        info["lowercase"] = info["lowercase"] if info["lowercase"] is not None else options["lowercase"]
        tok = wordpiece_from_vocab(os.path.join(tokenizer_dir, "vocab.txt"), info["lowercase"], field,
                                   options["strip_accents"], options["chinese_chars"])
    ids = {token: tok.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise SpanElectraError(f"{field}: '{tokenizer_dir}' has no {', '.join(missing)} token; build the vocabulary "
                               "with create_vocab_SE.py, or use a BERT/ELECTRA vocabulary")
    info["special_token_ids"] = ids
    info["vocab_size"] = tok.get_vocab_size()
    info["tokenizer_hash"] = tokenizer_hash(tokenizer_dir)
    return tok, info


def vocab_options(tokenizer_dir, field="tokenizer_dir"):
    """The normalizer options of a BERT-style folder's tokenizer_config.json, with BertTokenizer's
    defaults (do_lower_case True, strip_accents None: follow the lowercasing, tokenize_chinese_chars True)."""
    path = os.path.join(tokenizer_dir, "tokenizer_config.json")
    config = read_json(path, TOKENIZER_FIX) if os.path.isfile(path) else {}
    strip_accents = config.get("strip_accents")
    if strip_accents not in (None, True, False):  # BertNormalizer takes a bool or null alone
        raise SpanElectraError(f"{field}: '{path}' has strip_accents {strip_accents!r}; use true, false or null")
    return {"lowercase": bool(config.get("do_lower_case", True)), "strip_accents": strip_accents,
            "chinese_chars": bool(config.get("tokenize_chinese_chars", True))}


def wordpiece_from_vocab(vocab_file, lowercase, field="vocab_file", strip_accents=None, chinese_chars=True):
    """BERT's WordPiece tokenizer (BertNormalizer, BertPreTokenizer, [CLS] A [SEP]) from a vocab.txt."""
    vocab = {}
    with open(vocab_file, "rb") as f:
        for i, line in enumerate(f):
            try:
                token = line.decode("utf-8").rstrip("\n").removesuffix("\r")  # a vocab.txt saved on Windows too
            except UnicodeDecodeError:
                raise SpanElectraError(f"{field}: '{vocab_file}' is not UTF-8 text (line {i + 1}); pass the "
                                       "vocab.txt the model was released with, or convert it to UTF-8") from None
            if token in vocab:  # its rows would not match the model's embedding rows
                raise SpanElectraError(f"{field}: '{vocab_file}' lists '{token}' twice (lines {vocab[token] + 1} and "
                                       f"{i + 1}); a vocabulary lists each token once")
            vocab[token] = i
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise SpanElectraError(f"{field}: '{vocab_file}' lacks {', '.join(missing)}; pass a BERT/ELECTRA vocab.txt")
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents,
                                                handle_chinese_chars=chinese_chars)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = cls_sep_template(vocab["[CLS]"], vocab["[SEP]"])
    tok.decoder = decoders.WordPiece()
    # typed in text they stay whole (a '[MASK]' to fill), as transformers' BertTokenizer keeps them
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def cls_sep_template(cls_id, sep_id):
    """[CLS] text [SEP] (and [CLS] a [SEP] b [SEP], the second segment type 1) whenever special tokens are added."""
    return processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                         special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])


def save_transformers_tokenizer(tok, directory, model_max_length=512):
    """Write a tokenizers.Tokenizer as a transformers tokenizer folder: tokenizer.json, its
    tokenizer_config.json (special tokens, a class name both transformers 4 and 5 load, a WordPiece's
    normalizer options for BertTokenizer) and the classic vocabulary files (vocab.json + merges.txt
    for BPE, vocab.txt for WordPiece)."""
    names = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")  # SPECIAL_TOKENS' order
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                                   **dict(zip(names, SPECIAL_TOKENS)))
    fast.save_pretrained(directory)
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        tokenizer_config = json.load(f)
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 5 writes 'TokenizersBackend'
    # ELECTRA has token type embeddings and fine-tuning feeds them: a pair's second segment must get 1s here too
    tokenizer_config["model_input_names"] = MODEL_INPUT_NAMES
    # BertTokenizer / ElectraTokenizer(Fast) rebuild the normalizer from these, not from tokenizer.json
    tokenizer_config.update(bert_normalizer_config(tok))
    atomic_write_json(config_path, tokenizer_config)
    tok.save(os.path.join(directory, "tokenizer.json"))
    tok.model.save(directory)


def bert_normalizer_config(tok):
    """The BertTokenizer options (do_lower_case, strip_accents, tokenize_chinese_chars) of tok's
    BertNormalizer, {} when it has none (BPE)."""
    normalizer = json.loads(tok.to_str()).get("normalizer") or {}
    for step in normalizer.get("normalizers") or [normalizer]:  # a Sequence, or one normalizer
        if step.get("type") == "BertNormalizer":
            return {"do_lower_case": step["lowercase"], "strip_accents": step["strip_accents"],
                    "tokenize_chinese_chars": step["handle_chinese_chars"]}
    return {}


def check_tokenizer_fits(tokenizer, vocab_size, folder, field="model_dir"):
    """Stop when a model folder's tokenizer has more tokens than the model has embeddings: its last ids
    would index past them (another model's tokenizer)."""
    if len(tokenizer) > vocab_size:
        raise SpanElectraError(f"{field}: the tokenizer in '{folder}' has {len(tokenizer)} tokens but the model only "
                               f"{vocab_size} embeddings; it is not the model's tokenizer")


def copy_tokenizer(tokenizer_dir, directory):
    """Copy the tokenizer files of tokenizer_dir (TOKENIZER_FILES that exist) into directory."""
    os.makedirs(directory, exist_ok=True)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(tokenizer_dir, name)):
            shutil.copy2(os.path.join(tokenizer_dir, name), os.path.join(directory, name))


def tokenizer_hash(tokenizer_dir):
    """Identity of a tokenizer: its tokenizer.json and the segmentation applied before it."""
    source = os.path.join(tokenizer_dir, "tokenizer.json")
    if not os.path.isfile(source):  # a vocab.txt alone, and the normalizer options applied before it
        source = os.path.join(tokenizer_dir, "vocab.txt")
    h = hashlib.sha256(sha256_file(source).encode())
    if not source.endswith(".json"):
        options = vocab_options(tokenizer_dir)
        h.update(str(options["lowercase"]).encode())
        if (options["strip_accents"], options["chinese_chars"]) != (None, True):  # BERT's defaults: hash as before
            h.update(str((options["strip_accents"], options["chinese_chars"])).encode())
    # no se_tokenizer.json (a transformers folder) is 'none', as written out: the same tokenizer, the same hash
    h.update(str(read_tokenizer_info(tokenizer_dir)["word_segmenter"]).encode())
    return h.hexdigest()[:16]


def read_tokenizer_info(tokenizer_dir):
    """se_tokenizer.json (how text is prepared for this tokenizer), with defaults where absent."""
    info = {"word_segmenter": "none", "tokenizer_type": None, "lowercase": None}
    path = os.path.join(tokenizer_dir, SE_TOKENIZER_FILE)
    if os.path.isfile(path):
        info.update(read_json(path, TOKENIZER_FIX))
    return info
