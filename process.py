"""Build pre-training features: tokenize text and pack it into sequences stored as numpy memmaps.

    python process.py --tokenizer_dir TOK --train_input PATH --valid_input PATH --out_dir FEAT --max_seq_len 128

Input files of any size are streamed line by line (memory does not grow with the corpus) and
tokenized in batches by the fast tokenizer. Consecutive sentences of a document are packed into
sequences of exactly max_seq_len tokens, [CLS] tokens [SEP]: always full, so training needs no
padding and no attention mask (google-research/electra's builder instead pads each document's last
example). The tail of a document shorter than a sequence is dropped, or with
--pack_across_documents continues into the next document's first sequence after a [SEP]
(RoBERTa's FULL-SENTENCES). Output:
  FEAT/train.bin, FEAT/valid.bin   token ids, uint16 (uint32 for vocabularies over 65536), [N, max_seq_len]
  FEAT/tokenizer/                  a copy of the tokenizer the features were built with
  FEAT/meta.json                   shapes, token counts, the tokenizer hash (written last)
  FEAT/{split}.masked.bin, FEAT/{split}.span_position.bin   with --save_static_masks
The build happens in a temporary folder beside FEAT with a restart point saved about once a minute: a
stopped build (Ctrl-C, SIGTERM, a lost machine) goes on from there when the same command runs again.
features.py reads the result (PretrainingFeatures) and serves masked batches of it to the training
scripts (MLMDataset, SEDataset).
"""
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import time

import numpy as np

from argument import ROOT, MaskingArgs, checked_config, feature_args, run_main, save_config
from features import ARRAY_KINDS, META_FILE, PretrainingFeatures, array_path
from masking import IGNORE_INDEX, long_words_warning
from io_utils import (BadByteCounter, SpanElectraError, adopt_stopped_build, atomic_write_json, check_utf8_name,
                      find_text_files, iter_lines, make_out_dir, move_files_into, new_build_dir, progress_bar, storage_reason)
from tokenization import (CLS_ID, SEP_ID, UNKNOWN_WARNING, batched, copy_tokenizer, folder_segmenter,
                          load_tokenizer, segmented_batches)

logger = logging.getLogger("span_electra")

WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")  # ' = Title = ' starts a WikiText article
LONG_LINE_FACTOR = 100  # lines longer than 100 x max_seq_len tokens' worth of bytes are split


# ---------------------------------------------------------------- reading documents
def detect_doc_boundary(path):
    """'title_line' for WikiText-style files (' = Title = ' lines), else 'blank_line' (ELECTRA's rule)."""
    bad = BadByteCounter()
    for i, line in enumerate(iter_lines(path, bad)):
        if WIKITEXT_TITLE.match(line):
            return "title_line"
        if i > 200:
            break
    return "blank_line"


def document_lines(files, doc_boundary, bad_bytes, max_line_bytes, progress, start=None, bytes_before=0):
    """Yield (text, starts_document, restart) for every non-blank line of the files, in order. restart: where
    reading can start again past this line (None inside a long line): (file index, offset, lines read,
    undecodable bytes so far, on-disk bytes read of all inputs); start: a dict of such fields to begin at;
    bytes_before: the on-disk bytes of the inputs before these files."""
    seen_rules = set()
    first = start["file"] if start else 0
    bytes_before += sum(os.path.getsize(p) for p in files[:first])
    for index in range(first, len(files)):
        path = files[index]
        rule = detect_doc_boundary(path) if doc_boundary == "auto" else doc_boundary
        if rule not in seen_rules:
            logger.info("documents in '%s' end at: %s", path, rule.replace("_", " "))
            seen_rules.add(rule)
        at = (start["offset"], start["line_no"]) if start and index == first else None
        new_doc = not (at and at[0])  # a file always starts a document; a restart point is past a line of one

        def long_line(line_no, path=path):
            logger.warning("%s line %d is longer than %d bytes: tokenized in pieces", path, line_no, max_line_bytes)

        where = {}
        for line in iter_lines(path, bad_bytes, max_line_bytes, long_line, progress, at, where):
            if not line.strip():
                new_doc = new_doc or rule == "blank_line"
                continue
            if rule == "title_line" and WIKITEXT_TITLE.match(line):
                new_doc = True
            yield line, new_doc, where["next"] and (index, *where["next"], bad_bytes.count, bytes_before + where["raw"])
            new_doc = False
        bytes_before += os.path.getsize(path)


def _split_pairs(batch):
    """(texts, (starts_document, restart point past the batch's last line)) of a batch. A batch that ends in a
    piece of a long line has none: an earlier line's point would read again the pieces it packed."""
    texts, starts, restarts = zip(*batch)
    return list(texts), (np.fromiter(starts, dtype=bool, count=len(starts)), restarts[-1])


RESTART_FILE = "restart.json"  # in a build's temporary folder: where a stopped build goes on from
RESTART_EVERY_SECONDS = 60
# fields that name where things are, or how the work is split, but not what is built (the files are in the identity)
NOT_IN_THE_OUTPUT = ("tokenizer_dir", "train_input", "valid_input", "out_dir", "batch_lines", "num_workers")
TAIL_WARNING = 0.05  # dropped document tails above this share of the text are worth a warning


# ---------------------------------------------------------------- packing
class SequenceWriter:
    """Packs the token stream of documents into [CLS] x (max_seq_len - 2) [SEP] rows of a binary file.
    A document's tail shorter than a row is dropped, or with across_documents carried into the next
    document's first row after a [SEP] (RoBERTa's FULL-SENTENCES)."""

    COUNTS = ("num_sequences", "num_tokens", "num_documents", "dropped_tokens", "unknown_tokens")

    def __init__(self, path, max_seq_len, dtype, cls_id=CLS_ID, sep_id=SEP_ID, across_documents=False, unk_id=None,
                 state=None):
        self.cls_id, self.sep_id, self.across_documents, self.unk_id = cls_id, sep_id, across_documents, unk_id
        self.body = max_seq_len - 2
        self.dtype = dtype
        self.pending = np.zeros(0, dtype=dtype)
        self.separators = []  # where pending holds a [SEP] put between documents (not counted as text)
        self.num_sequences = 0
        self.num_tokens = 0
        self.num_documents = 0
        self.dropped_tokens = 0
        self.unknown_tokens = 0  # [UNK]s stored: many mean a vocabulary of another language or script
        self.digest = hashlib.blake2b(digest_size=16)  # of the rows written: a resumed run knows its features
        if state is None:
            self.file = open(path, "wb")
        else:
            self.reopen(path, state)

    def state(self):
        """What reopen needs to go on from here (the rows written are flushed to disk first)."""
        self.file.flush()
        os.fsync(self.file.fileno())
        return {**{k: getattr(self, k) for k in self.COUNTS}, "pending": self.pending.tolist(),
                "separators": list(self.separators)}

    def reopen(self, path, state):
        """Continue a file from a state: the rows past it are cut off, the digest taken again over the rest."""
        for key in self.COUNTS:
            setattr(self, key, state[key])
        self.pending, self.separators = np.array(state["pending"], dtype=self.dtype), list(state["separators"])
        self.file = open(path, "r+b")
        self.file.truncate(self.num_sequences * (self.body + 2) * np.dtype(self.dtype).itemsize)
        for block in iter(lambda: self.file.read(1 << 24), b""):
            self.digest.update(block)

    def add(self, tokens, starts_document):
        """Append tokens to the current document (ending the previous one first if asked)."""
        if starts_document:
            self.end_document()
            self.num_documents += 1
        buffer = np.concatenate([self.pending, tokens]) if len(self.pending) else tokens
        full = len(buffer) // self.body
        if full:
            rows = np.empty((full, self.body + 2), dtype=self.dtype)
            rows[:, 0], rows[:, -1] = self.cls_id, self.sep_id
            rows[:, 1:-1] = buffer[:full * self.body].reshape(full, self.body)
            rows.tofile(self.file)
            self.digest.update(rows)
            if self.unk_id is not None:
                self.unknown_tokens += int(np.count_nonzero(rows[:, 1:-1] == self.unk_id))
            self.num_sequences += full
            written = full * self.body
            self.num_tokens += written - sum(p < written for p in self.separators)
            self.separators = [p - written for p in self.separators if p >= written]
        self.pending = buffer[full * self.body:].copy()

    def end_document(self):
        if self.across_documents and len(self.pending):
            self.separators.append(len(self.pending))
            self.pending = np.append(self.pending, np.array(self.sep_id, dtype=self.dtype))
        else:
            self.drop_tail()

    def drop_tail(self):
        """The tokens waiting for a full row are left out (and counted; an inserted [SEP] is not a token of text)."""
        self.dropped_tokens += len(self.pending) - len(self.separators)
        self.pending, self.separators = self.pending[:0], []

    def close(self):
        self.drop_tail()  # the last tail: nothing follows it
        self.file.close()


def write_split(batches, tokenizer, segmenter, writers, route, num_workers, progress, current=None, written=None):
    """Tokenize batches of (text, starts_document, restart) and pack them; route() picks each new document's
    writer (train or valid); current: the writer the first line's document goes to, when it continues one.
    written(restart, current), if given, is called after each batch."""
    current = None if current is None else writers[current]
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # _fast: tokenizers >= 0.21
    for texts, (starts, restart) in segmented_batches((_split_pairs(b) for b in batches), segmenter, num_workers):
        encodings = encode(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        flat = np.fromiter((i for e in encodings for i in e.ids), dtype=writers[0].dtype, count=int(lengths.sum()))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        doc_starts = np.flatnonzero(starts)
        cuts = np.concatenate([[0], doc_starts[doc_starts > 0], [len(texts)]])
        for a, b in zip(cuts[:-1], cuts[1:]):
            if starts[a] or current is None:
                current = writers[route()]
                current.add(flat[offsets[a]:offsets[b]], starts_document=True)
            else:
                current.add(flat[offsets[a]:offsets[b]], starts_document=False)
        progress.set_postfix(seqs=sum(w.num_sequences for w in writers), refresh=False)
        if written is not None:
            written(restart, writers.index(current))


# ---------------------------------------------------------------- main
BUNDLED_SAMPLES = tuple(os.path.join(ROOT, "data", name) for name in ("sample", "sample_vi"))  # the README's demo
# corpora; a corpus of the user's own placed elsewhere under data/ is not one of them


def warn_bundled_valid(train_files, valid_files):
    """valid_input defaults to the bundled WikiText-2 sample, so `--train_input MY_CORPUS` alone validates on
    another corpus: warn when the valid files are bundled samples the training text does not come from."""
    def sample_folder(path):
        real = os.path.realpath(path)
        return next((folder for folder in map(os.path.realpath, BUNDLED_SAMPLES)
                     if real.startswith(folder + os.sep)), None)
    bundled = sorted({sample_folder(f) for f in valid_files} - {None})
    foreign = [f for f in train_files if sample_folder(f) not in bundled]
    if bundled and foreign:
        logger.warning("valid_input: %s is the bundled sample (valid_input's default), not held-out text of "
                       "train_input's %s, so validation measures another corpus; pass your own --valid_input, or "
                       "--valid_input '' with --valid_fraction 0.01 to hold out some of train_input",
                       ", ".join(valid_files[:2]), foreign[0])


def main(config: feature_args = None):
    config = checked_config(config, feature_args)
    config.validate()
    tokenizer, info = load_tokenizer(config.tokenizer_dir)
    # corpus text is text: a '[MASK]' or '[SEP]' written in it is not that token (BERT's create_pretraining_data
    # reads it as '[', 'mask', ']'), so row bodies never hold a special token but [UNK]
    tokenizer.encode_special_tokens = True
    vocab_size = info["vocab_size"]
    train_files = find_text_files(config.train_input, "train_input")
    valid_files = find_text_files(config.valid_input, "valid_input") if config.valid_input else []
    shared = sorted(set(map(os.path.realpath, train_files)) & set(map(os.path.realpath, valid_files)))
    if shared:
        logger.warning("valid_input: %s also in train_input, so validation measures memorising it; give held-out "
                       "text, or --valid_input '' with --valid_fraction 0.01", ", ".join(shared[:3]))
    if not valid_files and config.valid_fraction == 0:
        logger.warning("no valid_input and valid_fraction 0: the features have no validation split")
    warn_bundled_valid(train_files, valid_files)
    out_dir = check_utf8_name(os.path.abspath(config.out_dir), "out_dir")
    make_out_dir(os.path.dirname(out_dir), "out_dir")
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    segmenter = folder_segmenter(config.tokenizer_dir, "tokenizer_dir")[0]  # a missing pyvi: said before any work
    identity = build_identity(config, info, train_files, valid_files)
    tmp, restart = adopt_stopped_build(out_dir, RESTART_FILE, lambda point: point.get("identity") == identity)
    if restart and not rows_on_disk(tmp, restart, config.max_seq_len * np.dtype(dtype).itemsize):
        logger.warning("the stopped build of %s in %s lacks rows its restart point counts (files cut short or "
                       "removed): building from the start", out_dir, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp, restart = None, None
    if restart:
        logger.info("continuing the build of %s that stopped at %.0f of %.0f MB read (%d sequences written), from "
                    "its restart point", out_dir, restart["bytes_read"] / 1e6,
                    sum(map(os.path.getsize, train_files + valid_files)) / 1e6,
                    sum(w["num_sequences"] for w in restart["writers"].values()))
    tmp = tmp or new_build_dir(out_dir)  # and a stopped build of other inputs or settings is removed
    try:
        meta = _build(config, tokenizer, info, segmenter, train_files, valid_files, dtype, tmp, identity, restart)
        make_out_dir(out_dir)
        if os.path.exists(os.path.join(out_dir, META_FILE)):
            os.remove(os.path.join(out_dir, META_FILE))  # the old features stop looking complete first
        remove_earlier_build(out_dir, keep=os.listdir(tmp))
        move_files_into(tmp, out_dir, last=(META_FILE,))
    except OSError as e:  # a full disk can surface from numpy without an errno: name the place and the fix
        shutil.rmtree(tmp, ignore_errors=True)
        raise SpanElectraError(f"out_dir: cannot write the features to '{out_dir}' ({storage_reason(e, out_dir)}); "
                               "free some space or choose another --out_dir") from None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a build past its first restart point is kept to go on from
        if os.path.isfile(os.path.join(tmp, RESTART_FILE)):
            logger.info("the build stopped; run the same command again to continue it from its last restart point "
                        "(kept in %s)", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("features: %s -> %s", ", ".join(f"{s}: {meta['num_sequences'][s]} sequences, "
                                               f"{meta['num_tokens'][s]} tokens" for s in meta["splits"]), out_dir)
    return meta


def rows_on_disk(folder, restart, row_bytes):
    """True when each split file of a stopped build holds at least the rows its restart point counts."""
    return all(os.path.isfile(array_path(folder, split)) and
               os.path.getsize(array_path(folder, split)) >= state["num_sequences"] * row_bytes
               for split, state in restart["writers"].items())


def build_identity(config, info, train_files, valid_files):
    """What a build's output depends on: its settings, the tokenizer, and each input file's path, size and
    modification time. A stopped build's restart point serves only a build with the same identity."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_IN_THE_OUTPUT}
    files = {split: [[os.path.realpath(p), os.path.getsize(p), os.stat(p).st_mtime_ns] for p in paths]
             for split, paths in (("train", train_files), ("valid", valid_files))}
    return {"settings": settings, "tokenizer_hash": info["tokenizer_hash"], "files": files}


def remove_earlier_build(out_dir, keep):
    """The split and mask files an earlier build left in out_dir that this one does not write (a valid split or
    static masks it had): left there, np.memmap readers would take the old corpus's. Other files stay."""
    for split in ("train", "valid"):
        for kind in ARRAY_KINDS:
            path = array_path(out_dir, split, kind)
            if os.path.basename(path) not in keep and os.path.isfile(path):
                os.remove(path)


class RestartPoints:
    """Where a build stands, saved in its folder about once a minute (RESTART_FILE): the input read so far, each
    writer's state and the valid split's random state. A build stopped by Ctrl-C, SIGTERM or a lost machine
    then goes on from there when the same command runs again (build_identity must match)."""

    def __init__(self, folder, identity, writers, split_rng):
        self.path, self.identity, self.writers, self.split_rng = os.path.join(folder, RESTART_FILE), identity, writers, split_rng
        self.last = time.monotonic()
        self.pass_index = 0

    def written(self, restart, current):
        """After a batch is packed: save a restart point past it when it is time to (and it has one)."""
        if restart is None or time.monotonic() - self.last < RESTART_EVERY_SECONDS:
            return
        file, offset, line_no, bad_bytes, bytes_read = restart
        atomic_write_json(self.path, {
            "identity": self.identity, "pass": self.pass_index, "file": file, "offset": offset, "line_no": line_no,
            "bad_bytes": bad_bytes, "bytes_read": bytes_read, "current": current,
            "split_rng": self.split_rng.bit_generator.state,
            "writers": {name: w.state() for name, w in self.writers.items()}})
        self.last = time.monotonic()


def _build(config, tokenizer, info, segmenter, train_files, valid_files, dtype, tmp, identity, restart=None):
    start = time.time()
    max_line_bytes = LONG_LINE_FACTOR * config.max_seq_len * 8
    ids = info["special_token_ids"]
    writers = {s: SequenceWriter(array_path(tmp, s), config.max_seq_len, dtype, ids["[CLS]"], ids["[SEP]"],
                                 config.pack_across_documents, ids["[UNK]"], restart and restart["writers"][s])
               for s in ("train", "valid")}
    bad_bytes = BadByteCounter()
    split_rng = np.random.default_rng(config.seed)
    if restart:
        bad_bytes.count, split_rng.bit_generator.state = restart["bad_bytes"], restart["split_rng"]
    points = RestartPoints(tmp, identity, writers, split_rng)
    total = sum(os.path.getsize(p) for p in train_files + valid_files)
    with progress_bar(total=total, unit="B", unit_scale=True, desc="features",
                      initial=restart["bytes_read"] if restart else 0) as progress:
        inputs = [(train_files, lambda: 1 if split_rng.random() < config.valid_fraction else 0)]
        if valid_files:
            inputs.append((valid_files, lambda: 1))
        for pass_index, (files, route) in enumerate(inputs):
            if restart and pass_index < restart["pass"]:
                continue
            points.pass_index, resuming = pass_index, restart and pass_index == restart["pass"]
            lines = document_lines(files, config.doc_boundary, bad_bytes, max_line_bytes, progress,
                                   start=restart if resuming else None,
                                   bytes_before=sum(os.path.getsize(p) for f, _ in inputs[:pass_index] for p in f))
            write_split(batched(lines, config.batch_lines), tokenizer, segmenter, [writers["train"], writers["valid"]],
                        route, config.num_workers, progress, restart["current"] if resuming else None, points.written)
    for w in writers.values():
        w.close()
    if os.path.exists(points.path):
        os.remove(points.path)  # the text is all packed (what follows takes seconds), and out_dir gets no restart file
    if bad_bytes.count:
        logger.warning("%d undecodable byte(s) were replaced by U+FFFD", bad_bytes.count)
    if writers["train"].num_sequences == 0 and writers["valid"].num_sequences and not valid_files:
        raise SpanElectraError(f"valid_fraction: {config.valid_fraction} held out every document of train_input, "
                               "leaving no training text; use a smaller share, e.g. 0.01")
    if writers["train"].num_sequences == 0:
        raise SpanElectraError(
            f"train_input: '{config.train_input}' gave no sequence of {config.max_seq_len} tokens (documents are "
            f"shorter than that); use more text or a smaller max_seq_len")
    splits = [s for s in ("train", "valid") if writers[s].num_sequences]
    if "valid" not in splits and (valid_files or config.valid_fraction):
        source = ("valid_input: it gave no full sequence" if valid_files else
                  f"the share valid_fraction {config.valid_fraction} held out of "
                  f"{writers['train'].num_documents} documents gave no full sequence")
        logger.warning("the features have no validation split (%s); give more validation text or a larger "
                       "valid_fraction", source)
    for s in ("train", "valid"):
        if s not in splits:
            os.remove(array_path(tmp, s))
    copy_tokenizer(config.tokenizer_dir, os.path.join(tmp, "tokenizer"))
    meta = {
        "max_seq_len": config.max_seq_len, "vocab_size": info["vocab_size"], "dtype": np.dtype(dtype).name,
        "tokenizer_hash": info["tokenizer_hash"], "word_segmenter": segmenter,
        "tokenizer_type": info.get("tokenizer_type"),
        "special_token_ids": info["special_token_ids"],
        "splits": splits,
        "num_sequences": {s: writers[s].num_sequences for s in splits},
        "num_tokens": {s: writers[s].num_tokens for s in splits},
        "num_documents": {s: writers[s].num_documents for s in splits},
        "dropped_tail_tokens": {s: writers[s].dropped_tokens for s in splits},
        "unknown_tokens": {s: writers[s].unknown_tokens for s in splits},
        "content_digest": {s: writers[s].digest.hexdigest() for s in splits},
        "pack_across_documents": config.pack_across_documents,
        "undecodable_bytes": bad_bytes.count,
        "inputs": {"train": train_files, "valid": valid_files, "valid_fraction": config.valid_fraction},
        "static_masking": False,
    }
    features = PretrainingFeatures(tmp, meta=meta)
    masker = features.masker(config)
    _warn_long_words(features, masker)
    if config.save_static_masks:
        _write_static_masks(config, features, masker)
        meta["static_masking"] = True
        meta["static_masking_config"] = {k: getattr(config, k) for k in _masking_fields()}
    save_config(config, tmp, "process")
    atomic_write_json(os.path.join(tmp, META_FILE), meta)
    dropped = sum(meta["dropped_tail_tokens"].values())
    kept = sum(meta["num_tokens"].values())
    logger.info("%d documents, %d tokens stored, %d document-tail tokens dropped (%.2f%%), %.1fs",
                sum(meta["num_documents"].values()), kept, dropped, 100 * dropped / max(kept + dropped, 1),
                time.time() - start)
    for split in splits:  # per split: a valid text in another language hides in the pooled share
        unknown, stored = meta["unknown_tokens"][split], meta["num_tokens"][split]
        if unknown > UNKNOWN_WARNING * max(stored, 1):
            logger.warning("%.0f%% of the stored %s tokens are [UNK]: the vocabulary does not cover this text "
                           "(another language or script, or a tokenizer without its vocabulary); train one on this "
                           "corpus with create_vocab_SE.py", 100 * unknown / stored, split)
    if dropped > TAIL_WARNING * (kept + dropped):
        logger.warning("%.0f%% of the text was document tails shorter than a sequence, and is not in the features; "
                       "--pack_across_documents keeps it (a tail continues into the next document's first sequence, "
                       "after a [SEP])", 100 * dropped / (kept + dropped))
    return meta


def _masking_fields():
    return [f.name for f in dataclasses.fields(MaskingArgs)]


def _warn_long_words(features, masker, rows=1024):
    """Warn when the corpus's words are too long for whole-word span masking (measured on its first rows)."""
    warning = long_words_warning(features.split("train")[:rows], masker)
    if warning:
        logger.warning(warning)


def _write_static_masks(config, features, masker):
    """One fixed masking of every sequence, saved beside the ids (for exactly repeatable runs: --static_masking)."""
    rng = np.random.default_rng(config.seed + 1)
    for split in features.meta["splits"]:
        data = features.split(split)
        with open(array_path(features.dir, split, ".masked"), "wb") as fm, \
                open(array_path(features.dir, split, ".span_position"), "wb") as fp:
            for i in progress_bar(iterable=range(0, len(data), 1024), desc=f"static masks {split}"):
                ids = np.asarray(data[i:i + 1024], dtype=np.int64)
                batch = masker(ids, rng)
                batch["input_ids"].astype(data.dtype).tofile(fm)
                span_pos = np.where(batch["labels"] != IGNORE_INDEX, batch["span_position"] + 1, 0)
                span_pos.astype(np.uint16).tofile(fp)


if __name__ == "__main__":
    run_main(main, feature_args)
