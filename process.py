"""Build pre-training features: tokenize text and pack it into sequences stored as numpy memmaps.

    python process.py --tokenizer_dir TOK --train_input PATH --valid_input PATH --out_dir FEAT --max_seq_len 128

Input files of any size are streamed line by line (memory does not grow with the corpus) and
tokenized in batches by the fast tokenizer. Consecutive sentences of a document are packed into
sequences of exactly max_seq_len tokens, [CLS] tokens [SEP], as google-research/electra's
pre-training data builder does; only the short tail of each document is dropped. Output:
  FEAT/train.bin, FEAT/valid.bin   token ids, uint16 (uint32 for vocabularies over 65536), [N, max_seq_len]
  FEAT/tokenizer/                  a copy of the tokenizer the features were built with
  FEAT/meta.json                   shapes, token counts, the tokenizer hash (written last)
  FEAT/{split}.masked.bin, FEAT/{split}.span_position.bin   with --static_masking
The Dataset classes at the end serve masked batches to the training scripts.
"""
import logging
import os
import re
import shutil
import tempfile
import time

import numpy as np
from tqdm import tqdm

from argument import DataArgs, feature_args, run_main, save_config
from create_vocab_SE import (CLS_ID, MASK_ID, SEP_ID, SPECIAL_TOKENS, batched, load_tokenizer,
                             segmented_batches)
from io_utils import (BadByteCounter, SpanElectraError, atomic_write_json, find_text_files, iter_lines,
                      make_out_dir, move_files_into)
from masking import Masker, batch_from_masking, max_prediction_slots, prediction_slots, word_start_table

logger = logging.getLogger("span_electra")

META_FILE = "meta.json"
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


def document_lines(files, doc_boundary, bad_bytes, max_line_bytes, progress):
    """Yield (text, starts_document) for every non-blank line of the files, in order."""
    seen_rules = set()
    for path in files:
        rule = detect_doc_boundary(path) if doc_boundary == "auto" else doc_boundary
        if rule not in seen_rules:
            logger.info("documents in '%s' end at: %s", path, rule.replace("_", " "))
            seen_rules.add(rule)
        new_doc = True  # a file always starts a document

        def long_line(line_no, path=path):
            logger.warning("%s line %d is longer than %d bytes: tokenized in pieces", path, line_no, max_line_bytes)

        for line in iter_lines(path, bad_bytes, max_line_bytes, long_line, progress):
            if not line.strip():
                new_doc = new_doc or rule == "blank_line"
                continue
            if rule == "title_line" and WIKITEXT_TITLE.match(line):
                new_doc = True
            yield line, new_doc
            new_doc = False


def _split_pairs(batch):
    texts, starts = zip(*batch)
    return list(texts), np.fromiter(starts, dtype=bool, count=len(starts))


# ---------------------------------------------------------------- packing
class SequenceWriter:
    """Packs the token stream of documents into [CLS] x (max_seq_len - 2) [SEP] rows of a binary file."""

    def __init__(self, path, max_seq_len, dtype):
        self.file = open(path, "wb")
        self.body = max_seq_len - 2
        self.dtype = dtype
        self.pending = np.zeros(0, dtype=dtype)
        self.num_sequences = 0
        self.num_tokens = 0
        self.num_documents = 0
        self.dropped_tokens = 0

    def add(self, tokens, starts_document):
        """Append tokens to the current document (ending the previous one first if asked)."""
        if starts_document:
            self.end_document()
            self.num_documents += 1
        buffer = np.concatenate([self.pending, tokens]) if len(self.pending) else tokens
        full = len(buffer) // self.body
        if full:
            rows = np.empty((full, self.body + 2), dtype=self.dtype)
            rows[:, 0], rows[:, -1] = CLS_ID, SEP_ID
            rows[:, 1:-1] = buffer[:full * self.body].reshape(full, self.body)
            rows.tofile(self.file)
            self.num_sequences += full
            self.num_tokens += full * self.body
        self.pending = buffer[full * self.body:].copy()

    def end_document(self):
        self.dropped_tokens += len(self.pending)
        self.pending = self.pending[:0]

    def close(self):
        self.end_document()
        self.file.close()


def write_split(batches, tokenizer, segmenter, writers, route, num_workers, progress):
    """Tokenize batches of (text, starts_document) and pack them; route(n) picks each new document's
    writer (train or valid)."""
    current = None
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # _fast: tokenizers >= 0.21
    for texts, starts in segmented_batches((_split_pairs(b) for b in batches), segmenter, num_workers):
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


# ---------------------------------------------------------------- main
def main(config: feature_args = None):
    config = config or feature_args()
    config.validate()
    tokenizer, info = load_tokenizer(config.tokenizer_dir)
    vocab_size = info["vocab_size"]
    train_files = find_text_files(config.train_input, "train_input")
    valid_files = find_text_files(config.valid_input, "valid_input") if config.valid_input else []
    if not valid_files and config.valid_fraction == 0:
        logger.warning("no valid_input and valid_fraction 0: the features have no validation split")
    out_dir = os.path.abspath(config.out_dir)
    make_out_dir(os.path.dirname(out_dir), "out_dir")
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    segmenter = info.get("word_segmenter", "none")
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=f".{os.path.basename(out_dir)}.tmp-")
    try:
        meta = _build(config, tokenizer, info, segmenter, train_files, valid_files, dtype, tmp)
        make_out_dir(out_dir)
        if os.path.exists(os.path.join(out_dir, META_FILE)):
            os.remove(os.path.join(out_dir, META_FILE))  # the old features stop looking complete first
        move_files_into(tmp, out_dir, last=(META_FILE,))
    except OSError as e:  # a full disk can surface from numpy without an errno: name the place and the fix
        shutil.rmtree(tmp, ignore_errors=True)
        reason = e.strerror or str(e).strip().splitlines()[0][:120] or type(e).__name__
        raise SpanElectraError(f"out_dir: cannot write the features to '{out_dir}' ({reason}); free some space or "
                               "choose another --out_dir") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("features: %s -> %s", ", ".join(f"{s}: {meta['num_sequences'][s]} sequences, "
                                               f"{meta['num_tokens'][s]} tokens" for s in meta["splits"]), out_dir)
    return meta


def _build(config, tokenizer, info, segmenter, train_files, valid_files, dtype, tmp):
    start = time.time()
    max_line_bytes = LONG_LINE_FACTOR * config.max_seq_len * 8
    writers = {s: SequenceWriter(os.path.join(tmp, f"{s}.bin"), config.max_seq_len, dtype) for s in ("train", "valid")}
    bad_bytes = BadByteCounter()
    split_rng = np.random.default_rng(config.seed)
    total = sum(os.path.getsize(p) for p in train_files + valid_files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="features") as progress:
        inputs = [(train_files, lambda: 1 if split_rng.random() < config.valid_fraction else 0)]
        if valid_files:
            inputs.append((valid_files, lambda: 1))
        for files, route in inputs:
            lines = document_lines(files, config.doc_boundary, bad_bytes, max_line_bytes, progress)
            write_split(batched(lines, config.batch_lines), tokenizer, segmenter,
                        [writers["train"], writers["valid"]], route, config.num_workers, progress)
    for w in writers.values():
        w.close()
    if bad_bytes.count:
        logger.warning("%d undecodable byte(s) were replaced by U+FFFD", bad_bytes.count)
    if writers["train"].num_sequences == 0:
        raise SpanElectraError(
            f"train_input: '{config.train_input}' gave no sequence of {config.max_seq_len} tokens (documents are "
            f"shorter than that); use more text or a smaller max_seq_len")
    splits = [s for s in ("train", "valid") if writers[s].num_sequences]
    for s in ("train", "valid"):
        if s not in splits:
            os.remove(os.path.join(tmp, f"{s}.bin"))
    shutil.copytree(config.tokenizer_dir, os.path.join(tmp, "tokenizer"),
                    ignore=shutil.ignore_patterns(".*"))
    meta = {
        "max_seq_len": config.max_seq_len, "vocab_size": info["vocab_size"], "dtype": np.dtype(dtype).name,
        "tokenizer_hash": info["tokenizer_hash"], "word_segmenter": segmenter,
        "tokenizer_type": info.get("tokenizer_type"),
        "special_token_ids": {t: i for i, t in enumerate(SPECIAL_TOKENS)},
        "splits": splits,
        "num_sequences": {s: writers[s].num_sequences for s in splits},
        "num_tokens": {s: writers[s].num_tokens for s in splits},
        "num_documents": {s: writers[s].num_documents for s in splits},
        "dropped_tail_tokens": {s: writers[s].dropped_tokens for s in splits},
        "undecodable_bytes": bad_bytes.count,
        "inputs": {"train": train_files, "valid": valid_files, "valid_fraction": config.valid_fraction},
        "static_masking": False,
    }
    if config.static_masking:
        _write_static_masks(config, meta, tmp)
        meta["static_masking"] = True
        meta["static_masking_config"] = {k: getattr(config, k) for k in _masking_fields()}
    save_config(config, tmp, "process")
    atomic_write_json(os.path.join(tmp, META_FILE), meta)
    dropped = sum(meta["dropped_tail_tokens"].values())
    kept = sum(meta["num_tokens"].values())
    logger.info("%d documents, %d tokens stored, %d document-tail tokens dropped (%.2f%%), %.1fs",
                sum(meta["num_documents"].values()), kept, dropped, 100 * dropped / max(kept + dropped, 1),
                time.time() - start)
    return meta


def _masking_fields():
    import dataclasses
    from argument import MaskingArgs
    return [f.name for f in dataclasses.fields(MaskingArgs)]


def _write_static_masks(config, meta, folder):
    """One fixed masking of every sequence, saved beside the ids (the seed's static features)."""
    features = PretrainingFeatures(folder, meta=meta)
    masker = features.masker(config)
    rng = np.random.default_rng(config.seed + 1)
    for split in meta["splits"]:
        data = features.split(split)
        with open(os.path.join(folder, f"{split}.masked.bin"), "wb") as fm, \
                open(os.path.join(folder, f"{split}.span_position.bin"), "wb") as fp:
            for i in tqdm(range(0, len(data), 1024), desc=f"static masks {split}"):
                ids = np.asarray(data[i:i + 1024], dtype=np.int64)
                batch = masker(ids, rng)
                batch["input_ids"].astype(data.dtype).tofile(fm)
                span_pos = np.where(batch["labels"] != -100, batch["span_position"] + 1, 0)
                span_pos.astype(np.uint16).tofile(fp)


# ---------------------------------------------------------------- reading features
class PretrainingFeatures:
    """A features folder: its meta.json, memmapped splits and the tokenizer it was built with."""

    def __init__(self, features_dir, meta=None, field="features_dir"):
        self.dir = features_dir
        if meta is None:
            path = os.path.join(features_dir, META_FILE)
            if not os.path.isfile(path):
                raise SpanElectraError(f"{field}: '{features_dir}' has no {META_FILE} (missing or unfinished); "
                                       "run process.py to build the features")
            import json
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        self.meta = meta
        self.max_seq_len = meta["max_seq_len"]
        self.vocab_size = meta["vocab_size"]
        self._tokenizer = None
        self._most_frequent = None
        for split in meta["splits"]:
            self.check_array(split)

    def check_array(self, name, kind=""):
        """Fail with one line when a split's array is missing or not the size meta.json records."""
        path = os.path.join(self.dir, f"{name}{kind}.bin")
        itemsize = 2 if kind == ".span_position" else np.dtype(self.meta["dtype"]).itemsize
        expected = self.meta["num_sequences"][name] * self.max_seq_len * itemsize
        if not os.path.isfile(path):
            raise SpanElectraError(f"features_dir: '{path}' is missing; rebuild the features with process.py")
        if os.path.getsize(path) != expected:
            raise SpanElectraError(f"features_dir: '{path}' holds {os.path.getsize(path)} bytes where {META_FILE} "
                                   f"promises {expected} (truncated or replaced); rebuild the features with process.py")

    def split(self, name, kind=""):
        """The [num_sequences, max_seq_len] memmap of a split ('train' or 'valid')."""
        if name not in self.meta["splits"]:
            raise SpanElectraError(f"split: '{self.dir}' has no '{name}' split (it has {', '.join(self.meta['splits'])})")
        dtype = np.uint16 if kind == ".span_position" else np.dtype(self.meta["dtype"])
        shape = (self.meta["num_sequences"][name], self.max_seq_len)
        if kind:
            self.check_array(name, kind)
        return np.memmap(os.path.join(self.dir, f"{name}{kind}.bin"), dtype=dtype, mode="r", shape=shape)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer, _ = load_tokenizer(os.path.join(self.dir, "tokenizer"), "features_dir")
        return self._tokenizer

    def check_tokenizer(self, tokenizer_dir, field="tokenizer_dir"):
        """Stop when features were built with another tokenizer than tokenizer_dir."""
        _, info = load_tokenizer(tokenizer_dir, field)
        if info["tokenizer_hash"] != self.meta["tokenizer_hash"]:
            raise SpanElectraError(
                f"{field}: '{tokenizer_dir}' holds another tokenizer than the one the features in '{self.dir}' "
                "were built with; rebuild the features with process.py or use the tokenizer in "
                f"{os.path.join(self.dir, 'tokenizer')}")

    def most_frequent_token(self, split="train", max_rows=100_000):
        """The most frequent non-special token of a split (over its first max_rows sequences): a
        masked LM that always predicts it is the baseline a trained generator must beat."""
        if self._most_frequent is None:
            ids = np.asarray(self.split(split)[:max_rows]).ravel()
            counts = np.bincount(ids, minlength=self.vocab_size)
            counts[:len(SPECIAL_TOKENS)] = 0
            self._most_frequent = int(counts.argmax())
        return self._most_frequent

    def masker(self, masking_config):
        return Masker(masking_config, word_start_table(self.tokenizer), special_ids=range(len(SPECIAL_TOKENS)),
                      mask_id=MASK_ID, vocab_size=self.vocab_size)


class MLMDataset:
    """Masked batches of one split for the generator: item i of an epoch is the i-th batch.

    Batches are deterministic given (seed, epoch, index), so a run resumes exactly, any DataLoader
    worker can build any batch, and with world_size > 1 each rank reads its own batches. Masking is
    dynamic (a fresh mask every epoch) unless data_args.static_masking uses process.py's saved masks.
    A batch holds input_ids [B, L] and the fixed-size prediction slots [B, max_predictions_per_seq]
    of masking.prediction_slots, so every training batch has the same shapes. Rows are packed full,
    so there is no attention mask. Use with torch.utils.data.DataLoader(dataset, batch_size=None).
    """

    def __init__(self, data_args: DataArgs, batch_size, seed=0, shuffle=True, rank=0, world_size=1):
        data_args.validate()
        self.features = PretrainingFeatures(data_args.features_dir)
        if data_args.tokenizer_dir:
            self.features.check_tokenizer(data_args.tokenizer_dir)
        self.data = self.features.split(data_args.split)
        self.static = None
        if data_args.static_masking:
            if not self.features.meta.get("static_masking"):
                raise SpanElectraError(f"static_masking: '{data_args.features_dir}' has no static masks; "
                                       "rebuild it with process.py --static_masking")
            self.static = (self.features.split(data_args.split, ".masked"),
                           self.features.split(data_args.split, ".span_position"))
        self.masker = self.features.masker(data_args)
        self.num_slots = max_prediction_slots(data_args, self.features.max_seq_len)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        num_batches = len(self.data) // batch_size if shuffle else -(-len(self.data) // batch_size)
        self.num_batches = num_batches // world_size
        if self.num_batches == 0:
            raise SpanElectraError(f"train_batch_size: {batch_size} x {world_size} process(es) is more than the "
                                   f"{len(self.data)} sequences of split '{data_args.split}'; use a smaller batch")

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_batches

    def rows(self, index):
        """Sequence indices of batch `index` of the current epoch on this rank."""
        g = index * self.world_size + self.rank
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.data))
            return np.sort(order[g * self.batch_size:(g + 1) * self.batch_size])
        return np.arange(g * self.batch_size, min((g + 1) * self.batch_size, len(self.data)))

    def numpy_batch(self, index):
        rows = self.rows(index)
        ids = np.asarray(self.data[rows], dtype=np.int64)
        if self.static is not None:
            batch = batch_from_masking(ids, np.asarray(self.static[0][rows], dtype=np.int64),
                                       np.asarray(self.static[1][rows], dtype=np.int64))
        else:
            rng = np.random.default_rng([self.seed, self.epoch, index * self.world_size + self.rank, 1])
            batch = self.masker(ids, rng)
        return prediction_slots(batch, self.num_slots), ids

    def __getitem__(self, index):
        import torch
        if not 0 <= index < self.num_batches:
            raise IndexError(index)
        batch, _ = self.numpy_batch(index)
        return {k: torch.from_numpy(v) for k, v in batch.items()}


class SEDataset(MLMDataset):
    """Masked batches for the discriminator: the MLM batch plus the original ids, which tell the
    replaced-token-detection labels once the generator has filled the masks."""

    def __getitem__(self, index):
        import torch
        if not 0 <= index < self.num_batches:
            raise IndexError(index)
        batch, ids = self.numpy_batch(index)
        batch["original_ids"] = ids
        return {k: torch.from_numpy(v) for k, v in batch.items()}


if __name__ == "__main__":
    run_main(main, feature_args)
