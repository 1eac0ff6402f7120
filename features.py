"""Pre-training features as the training scripts read them: a features folder written by
process.py (its meta.json, memmapped token arrays and tokenizer) and the datasets that serve masked
batches of it, with the fixed-size prediction slots the training step works on."""
import dataclasses
import mmap
import os

import numpy as np
import torch

from argument import DataArgs, MaskingArgs
from io_utils import SpanElectraError, read_json
from masking import Masker, batch_from_masking, max_prediction_slots, prediction_slots, word_start_table
from tokenization import SPECIAL_TOKENS, load_tokenizer

META_FILE = "meta.json"
ARRAY_KINDS = ("", ".masked", ".span_position")  # a split's token ids, and its static masks (--save_static_masks)


def array_path(folder, split, kind=""):
    """FEAT/{split}{kind}.bin: where process.py writes a split's array of that kind."""
    return os.path.join(folder, f"{split}{kind}.bin")


def random_access(array):
    """Tell the kernel a memmap's rows are read in random order (shuffled batches): no readahead, which reads
    far around each 256-byte row (300 batches of 32 rows of a 2.8 GB split not in the page cache read the
    whole 2.8 GB from disk, 2.6-3.5 s; without readahead 39 MB, 0.8-1.2 s)."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)
    return array


def check_meta(meta, path, field="features_dir"):
    """Stop in one line when a meta.json's values have the wrong types (a bad hand edit), not later."""
    def problem():
        if not all(type(meta[k]) is int for k in ("max_seq_len", "vocab_size")):
            return "max_seq_len and vocab_size must be integers"
        if meta["dtype"] not in ("uint16", "uint32"):
            return f"dtype {meta['dtype']!r} is not uint16 or uint32"
        counts = meta["num_sequences"]
        if not isinstance(counts, dict) or not all(type(n) is int and n >= 0 for n in counts.values()):
            return "num_sequences must map each split to a count"
        if not isinstance(meta["splits"], list) or not all(split in counts for split in meta["splits"]):
            return "splits must list the splits num_sequences counts"
        return None
    reason = problem()
    if reason:
        raise SpanElectraError(f"{field}: '{path}' is damaged ({reason}); rebuild the features with process.py")


class PretrainingFeatures:
    """A features folder: its meta.json, memmapped splits and the tokenizer it was built with."""

    def __init__(self, features_dir, meta=None, field="features_dir"):
        self.dir = features_dir
        if meta is None:
            path = os.path.join(features_dir, META_FILE)
            if not os.path.isfile(path):
                raise SpanElectraError(f"{field}: '{features_dir}' has no {META_FILE} (missing or unfinished); "
                                       "run process.py to build the features")
            meta = read_json(path, "rebuild the features with process.py", field,
                             keys=("max_seq_len", "vocab_size", "splits", "dtype", "num_sequences"))
            check_meta(meta, path, field)
        self.meta = meta
        self.max_seq_len = meta["max_seq_len"]
        self.vocab_size = meta["vocab_size"]
        # {token: id}: ours are 0-4; an existing vocabulary (BERT's) keeps its own
        self.special_ids = meta.get("special_token_ids") or {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        self._tokenizer = None
        self._most_frequent = None
        for split in meta["splits"]:
            self.check_array(split)

    def __getstate__(self):
        # a DataLoader worker needs no tokenizer (the masker has its tables): it loads again where asked
        return {**self.__dict__, "_tokenizer": None}

    def check_array(self, name, kind=""):
        """Fail with one line when a split's array is missing or not the size meta.json records."""
        path = array_path(self.dir, name, kind)
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
            raise SpanElectraError(f"split: '{self.dir}' has no '{name}' split (it has {', '.join(self.meta['splits'])}); "
                                   f"use --split {self.meta['splits'][0]}, or build the features with --valid_input or "
                                   "--valid_fraction")
        dtype = np.uint16 if kind == ".span_position" else np.dtype(self.meta["dtype"])
        shape = (self.meta["num_sequences"][name], self.max_seq_len)
        if kind:
            self.check_array(name, kind)
        return np.memmap(array_path(self.dir, name, kind), dtype=dtype, mode="r", shape=shape)

    def checked_ids(self, rows, split):
        """Rows of a split as int64 ids, a damaged file (an id no embedding row has) a one-line error, never
        an index error in masking or the model; a max over a batch, microseconds."""
        ids = np.asarray(rows, dtype=np.int64)
        if ids.max(initial=0) >= self.vocab_size:
            raise SpanElectraError(f"features_dir: '{array_path(self.dir, split)}' holds token id {ids.max()}, past "
                                   f"the vocabulary of {self.vocab_size} (damaged or replaced); rebuild the features "
                                   "with process.py")
        return ids

    @property
    def tokenizer(self):
        """The tokenizer folder the features keep, checked to be the one they were built with."""
        if self._tokenizer is None:
            folder = os.path.join(self.dir, "tokenizer")
            tokenizer, info = load_tokenizer(folder, "features_dir")
            if info["tokenizer_hash"] != self.meta.get("tokenizer_hash", info["tokenizer_hash"]):
                raise SpanElectraError(f"features_dir: '{folder}' holds another tokenizer than the one the "
                                       f"features were built with ({META_FILE}'s tokenizer_hash); rebuild the "
                                       "features with process.py")
            self._tokenizer = tokenizer
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
            counts[list(self.special_ids.values())] = 0
            self._most_frequent = int(counts.argmax())
        return self._most_frequent

    def masker(self, masking_config):
        return Masker(masking_config, word_start_table(self.tokenizer), special_ids=sorted(self.special_ids.values()),
                      mask_id=self.special_ids["[MASK]"], vocab_size=self.vocab_size)


def check_static_masks(features, data_args):
    """The saved masks are used only where they are what the run asks for: a masking setting other than
    the one they were saved with would otherwise be ignored, and recorded as used."""
    saved = features.meta.get("static_masking_config", {})
    changed = [f"{k} {saved[k]!r} (this run: {getattr(data_args, k)!r})" for k in sorted(saved)
               if k != "max_predictions_per_seq" and hasattr(data_args, k) and getattr(data_args, k) != saved[k]]
    if changed:  # the slots are made when a batch is read, so their number may differ
        raise SpanElectraError(f"static_masking: the masks in '{features.dir}' were saved with {'; '.join(changed)}; "
                               "pass the saved values, or leave static_masking off for fresh masks of these settings")
    # ... but not be fewer than the saved masks fill: the masked tokens past them would be unmasked again
    fields = {f.name for f in dataclasses.fields(MaskingArgs)}
    saved_slots = max_prediction_slots(MaskingArgs(**{k: v for k, v in saved.items() if k in fields}),
                                       features.max_seq_len)
    slots = max_prediction_slots(data_args, features.max_seq_len)
    if slots < saved_slots:
        raise SpanElectraError(f"max_predictions_per_seq: {slots} prediction slots are fewer than the {saved_slots} "
                               f"the static masks in '{features.dir}' were saved with, so masked tokens would be "
                               f"dropped; pass at least {saved_slots} (or 0), or leave static_masking off")


def shuffled_rows(num_rows, rng):
    """rng.permutation(num_rows), shuffled in place in the smallest integer type that holds the row numbers: the
    same order (the shuffle draws the same swaps whatever the type) in half the memory for under 2**31 rows, and
    no int64 copy beside it (10.8M rows: 43 MB where permutation peaked at 174 MB with the last epoch's)."""
    order = np.arange(num_rows, dtype=np.int32 if num_rows < 2**31 else np.int64)
    rng.shuffle(order)
    return order


class MLMDataset:
    """Masked batches of one split for the generator: item i of an epoch is the i-th batch.

    Batches are deterministic given (seed, epoch, index), so a run resumes exactly, any DataLoader
    worker can build any batch, and with world_size > 1 each rank reads its own batches. Masking is
    dynamic (a fresh mask every epoch) unless data_args.static_masking uses process.py's saved masks.
    A batch holds input_ids [B, L] and the fixed-size prediction slots [B, max_predictions_per_seq]
    of masking.prediction_slots, so every training batch has the same shapes. Rows are packed full,
    so there is no attention mask. Use with torch.utils.data.DataLoader(dataset, batch_size=None).
    """

    def __init__(self, data_args: DataArgs, batch_size, seed=0, shuffle=True, rank=0, world_size=1, split="train"):
        data_args.validate()
        self.features = PretrainingFeatures(data_args.features_dir)
        if data_args.tokenizer_dir:
            self.features.check_tokenizer(data_args.tokenizer_dir)
        if data_args.static_masking:
            if not self.features.meta.get("static_masking"):
                raise SpanElectraError(f"static_masking: '{data_args.features_dir}' has no static masks; "
                                       "rebuild it with process.py --save_static_masks")
            check_static_masks(self.features, data_args)
        self.split_name, self.shuffle, self.static_masking = split, shuffle, data_args.static_masking
        self.open_arrays()
        self.masker = self.features.masker(data_args)
        self.num_slots = max_prediction_slots(data_args, self.features.max_seq_len)
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._order = (None, None)  # (epoch, its shuffled row order): made once an epoch, see order()
        # training: whole batches, as many on every rank; evaluation (in order): every row, ranks sharing the batches
        self.total_batches = len(self.data) // batch_size if shuffle else -(-len(self.data) // batch_size)
        self.num_batches = (self.total_batches // world_size if shuffle else
                            len(range(rank, self.total_batches, world_size)))
        if self.total_batches < world_size:
            field = "train_batch_size" if shuffle else "eval_batch_size"
            raise SpanElectraError(f"{field}: {batch_size} gives the {len(self.data)} sequences of split '{split}' "
                                   f"{self.total_batches} batch(es), fewer than the {world_size} process(es) each need "
                                   "one; use a smaller batch" +
                                   (", fewer processes or a larger split" if world_size > 1 else ""))

    def open_arrays(self):
        """Memory-map the split's ids (self.data) and, for --static_masking, its saved masks (self.static);
        shuffled reads go without readahead (see random_access)."""
        def mapped(kind=""):
            array = self.features.split(self.split_name, kind)
            return random_access(array) if self.shuffle else array
        self.data = mapped()
        self.static = (mapped(".masked"), mapped(".span_position")) if self.static_masking else None

    def __getstate__(self):
        """Pickled (for a DataLoader worker started by spawn or forkserver: macOS, Python 3.14's Linux default)
        without the memmapped arrays, which reopen from their files: a pickled np.memmap carries its whole
        content, a corpus's GBs into every worker. The epoch's order is made again where needed."""
        return dict(self.__dict__, data=None, static=None, _order=(None, None))

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.open_arrays()

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_batches

    def global_index(self, index):
        """Batch `index` of this rank among the batches of all ranks (what its rows and masks follow)."""
        return index * self.world_size + self.rank

    def rows(self, index):
        """Sequence indices of batch `index` of the current epoch on this rank."""
        g = self.global_index(index)
        if self.shuffle:
            return np.sort(self.order()[g * self.batch_size:(g + 1) * self.batch_size])
        return np.arange(g * self.batch_size, min((g + 1) * self.batch_size, len(self.data)))

    def order(self):
        """The current epoch's shuffled order of the split's rows, kept for the epoch's other batches (a
        permutation of 10M rows takes 0.4 s, 25 H100 steps, where a batch's masking takes 1 ms)."""
        if self._order[0] != self.epoch:
            self._order = (None, None)  # the last epoch's order goes first: never two of them held at once
            self._order = (self.epoch, shuffled_rows(len(self.data), np.random.default_rng([self.seed, self.epoch])))
        return self._order[1]

    def numpy_batch(self, index):
        rows = self.rows(index)
        ids = self.features.checked_ids(self.data[rows], self.split_name)
        if self.static is not None:
            batch = batch_from_masking(ids, np.asarray(self.static[0][rows], dtype=np.int64),
                                       np.asarray(self.static[1][rows], dtype=np.int64))
        else:
            rng = np.random.default_rng([self.seed, self.epoch, self.global_index(index), 1])
            batch = self.masker(ids, rng)
        return prediction_slots(batch, self.num_slots), ids

    def __getitem__(self, index):
        if not 0 <= index < self.num_batches:
            raise IndexError(index)
        batch, _ = self.numpy_batch(index)
        return {k: torch.from_numpy(v) for k, v in batch.items()}


class SEDataset(MLMDataset):
    """Masked batches for the discriminator: the MLM batch plus the original ids, which tell the
    replaced-token-detection labels once the generator has filled the masks."""

    def numpy_batch(self, index):
        batch, ids = super().numpy_batch(index)
        batch["original_ids"] = ids
        return batch, ids
