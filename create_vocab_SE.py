"""Train a byte-level BPE ('BPE') or WordPiece ('BERT') vocabulary with `tokenizers`.

    python create_vocab_SE.py --tokenizer_type BPE --data_dir DIR --vocab_size 10000 --min_fre 2 \
        --model_name NAME --out_dir OUT [--word_segmenter pyvi] [--lowercase]

Writes OUT/tokenizer.json with the tokenizer_config.json that makes
`transformers.AutoTokenizer.from_pretrained(OUT)` return a fast tokenizer, the classic vocab files
(vocab.json + merges.txt, or vocab.txt), and se_tokenizer.json: how text must be prepared (word
segmentation) before this tokenizer sees it. process.py and the explorer read that file, so the
corpus, the features and the model can never disagree on segmentation.
"""
import logging
import os
import shutil
import threading
import time
import unicodedata

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from argument import checked_config, save_config, run_main, tok_args
from io_utils import (COMPRESSED_SUFFIXES, BadByteCounter, SpanElectraError, atomic_write_json, find_text_files,
                      iter_lines, make_out_dir, move_files_into, new_build_dir, progress_bar, remove_paths)
from tokenization import (BYTE_ALPHABET, CLS_ID, MASK_ID, SE_TOKENIZER_FILE, SEP_ID, SPECIAL_TOKENS, TOKENIZER_FILES,
                          batched, cls_sep_template, load_segmenter, save_transformers_tokenizer, segmented_batches)

logger = logging.getLogger("span_electra")


# ---------------------------------------------------------------- training a vocabulary
def build_tokenizer(tokenizer_type, lowercase, segmented):
    """An untrained tokenizers.Tokenizer with normalizer, pre-tokenizer and decoder set.

    With word segmentation on, pre-tokenization splits on whitespace only: the default byte-level
    and BERT pre-tokenizers split at '_' and would undo the segmentation.
    """
    if tokenizer_type == "BPE":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.normalizer = normalizers.Sequence([normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else []))
        if segmented:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.Sequence([
            normalizers.NFC(),
            normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                       lowercase=lowercase)])
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit() if segmented else pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def bpe_special_tokens():
    """SPECIAL_TOKENS for a byte-level BPE, whose [MASK] takes the space before it (RoBERTa's <mask>
    does the same): 'in [MASK] 2011' is then 'Ġin [MASK] Ġ2011', the masked word's place as in
    pre-training, not 'Ġin Ġ [MASK]', with a lone-space token the model never saw before a mask."""
    return [AddedToken(t, special=True, normalized=False, lstrip=t == SPECIAL_TOKENS[MASK_ID]) for t in SPECIAL_TOKENS]


def build_trainer(tokenizer_type, vocab_size, min_fre):
    """The tokenizers trainer of a vocabulary type. BPE's starts from all 256 bytes and gives the same vocabulary
    every run; WordPiece's breaks ties in hash order (huggingface/tokenizers#1794), so its ids vary run to run."""
    if tokenizer_type == "BPE":
        return trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_fre, special_tokens=bpe_special_tokens(),
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    return trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_fre, special_tokens=SPECIAL_TOKENS,
                                     continuing_subword_prefix="##", show_progress=False)


def add_post_processor(tok):
    """[CLS] text [SEP] (and [CLS] a [SEP] b [SEP] for pairs) at our vocabularies' ids."""
    tok.post_processor = cls_sep_template(CLS_ID, SEP_ID)


def train_interruptibly(tok, lines, trainer):
    """tok.train_from_iterator in a thread of its own: the library's Rust pass would hold the main
    thread, and with it Ctrl-C, until the whole corpus was read. On Ctrl-C the corpus ends at the next
    line, and the run once the library's pass over what was read ends (nothing is written)."""
    stop, done, failure = threading.Event(), threading.Event(), []

    def until_stopped():
        try:
            for line in lines:
                if stop.is_set():
                    return
                yield line
        finally:  # in the thread that reads: the readers behind `lines` (segmenting workers) end with it
            lines.close()

    def train():
        try:
            tok.train_from_iterator(until_stopped(), trainer=trainer)
        except BaseException as e:  # handed to the main thread as it is
            failure.append(e)
        finally:
            done.set()

    threading.Thread(target=train, name="vocabulary", daemon=True).start()
    try:  # an Event, not Thread.join: a join that Ctrl-C interrupted returns at once afterwards (Python 3.11)
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        stop.set()  # the library's thread cannot be killed: its pass ends on what was read, then this run
        logger.warning("stopping: the tokenizers library first ends its pass over the lines read so far")
        done.wait()
        raise
    if failure:
        raise failure[0]


class ReadCounter:
    """Counts the on-disk bytes iter_lines reports as read (and passes them on to a progress bar)."""

    def __init__(self, bar=None):
        self.n, self.bar = 0, bar

    def update(self, num_bytes):
        self.n += num_bytes
        if self.bar is not None:
            self.bar.update(num_bytes)


def corpus_lines(files, bad_bytes, progress, alphabet, max_bytes=0, kept=None):
    """The non-blank lines of the files; every character passed on is added to `alphabet`. With max_bytes,
    about that many bytes of them (UTF-8: MB as the files measure them, whatever the script), spread evenly
    over the corpus: a line is kept only while the text
    kept lags max_bytes x the share of the files' bytes on disk read before it, which needs no pass to count
    the text first and holds for compressed files too (the share before the line, not after it: else a long
    line would be likelier kept than a short one). A compressed file's position moves a block at a time (128 KiB to
    900 KB of text), so the sample is even over a corpus of many blocks, as one of several GB is.
    kept (a list): [bytes, lines] passed on."""
    total = sum(os.path.getsize(p) for p in files)
    read = ReadCounter(progress)
    kept = kept if kept is not None else [0, 0]
    kept[:] = [0, 0]
    for path in files:
        before = read.n
        for line in iter_lines(path, bad_bytes, progress=read):
            lagging = not max_bytes or kept[0] <= max_bytes * before / total
            before = read.n
            if not line.strip() or not lagging:
                continue
            kept[0] += len(line.encode()) + 1
            kept[1] += 1
            alphabet.update(line)
            yield line


def save_tokenizer_files(tok, config, out_dir, stats):
    """Write tokenizer.json (last), the transformers config and vocab files, and se_tokenizer.json."""
    tmp = new_build_dir(out_dir)
    try:
        save_transformers_tokenizer(tok, tmp)
        atomic_write_json(os.path.join(tmp, SE_TOKENIZER_FILE), {
            "tokenizer_type": config.tokenizer_type, "word_segmenter": config.word_segmenter,
            "lowercase": config.lowercase, "model_name": config.model_name,
            "vocab_size": tok.get_vocab_size(), "special_tokens": SPECIAL_TOKENS, **stats})
        save_config(config, tmp, "create_vocab")
        marker = os.path.join(out_dir, "tokenizer.json")
        if os.path.exists(marker):
            os.remove(marker)  # the old tokenizer stops looking complete before its files are replaced
        # and a tokenizer of the other type leaves no vocabulary file (a BPE's merges.txt beside a WordPiece)
        written = os.listdir(tmp)
        remove_paths([os.path.join(out_dir, name) for name in TOKENIZER_FILES if name not in written])
        move_files_into(tmp, out_dir, last=("tokenizer.json",))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- main
def main(config: tok_args = None):
    config = checked_config(config, tok_args)
    config.validate()
    if config.tokenizer_type == "BPE" and config.vocab_size < BYTE_ALPHABET + len(SPECIAL_TOKENS):
        raise SpanElectraError(
            f"vocab_size: {config.vocab_size} is smaller than the byte-level alphabet ({BYTE_ALPHABET} bytes + "
            f"{len(SPECIAL_TOKENS)} special tokens); use at least {BYTE_ALPHABET + len(SPECIAL_TOKENS)}, "
            "typically 8000-50000")
    files = find_text_files(config.data_dir, "data_dir")
    load_segmenter(config.word_segmenter)  # a missing pyvi is reported before any work
    make_out_dir(config.out_dir)
    total_bytes = sum(os.path.getsize(p) for p in files)
    compressed = " on disk, some compressed" if any(p.endswith(COMPRESSED_SUFFIXES) for p in files) else ""
    logger.info("training a %s vocabulary of %d on %d file(s), %.1f MB%s%s", config.tokenizer_type,
                config.vocab_size, len(files), total_bytes / 1e6, compressed,
                f", segmented with {config.word_segmenter}" if config.word_segmenter != "none" else "")

    start = time.time()
    segmented = config.word_segmenter != "none"
    tok = build_tokenizer(config.tokenizer_type, config.lowercase, segmented)
    trainer = build_trainer(config.tokenizer_type, config.vocab_size, config.min_fre)
    bad_bytes = BadByteCounter()
    num_lines = 0
    alphabet = set()
    sampled = [0, 0]
    max_bytes = int(config.max_text_mb * 1e6)
    with progress_bar(total=total_bytes, unit="B", unit_scale=True, desc="vocab") as progress:
        corpus = corpus_lines(files, bad_bytes, progress, alphabet, max_bytes, sampled)
        batches = segmented_batches(((b, None) for b in batched(corpus, 2000)),
                                    config.word_segmenter, config.num_workers)

        def lines():
            nonlocal num_lines
            try:
                for batch, _ in batches:
                    num_lines += len(batch)
                    yield from batch
            finally:
                batches.close()  # ends the segmenting workers now, not at exit

        train_interruptibly(tok, lines(), trainer)
    if num_lines == 0:
        raise SpanElectraError(f"data_dir: '{config.data_dir}' holds only blank lines; it must hold some text")
    if max_bytes:
        logger.info("trained on %.1f MB of text (%d lines) taken evenly across the corpus (--max_text_mb %g)",
                    sampled[0] / 1e6, sampled[1], config.max_text_mb)
    if bad_bytes.count:
        logger.warning("%d undecodable byte(s) were replaced by U+FFFD", bad_bytes.count)
    alphabet = {c.lower() for c in alphabet} if config.lowercase else alphabet
    alphabet_size = sum(1 for c in alphabet if not c.isspace() and unicodedata.category(c) != "Cc")  # as clean_text
    if config.tokenizer_type == "BERT" and config.vocab_size < alphabet_size + len(SPECIAL_TOKENS):
        raise SpanElectraError(
            f"vocab_size: {config.vocab_size} is smaller than the corpus alphabet ({alphabet_size} characters + "
            f"{len(SPECIAL_TOKENS)} special tokens): characters left out would become [UNK]; use at least "
            f"{alphabet_size + len(SPECIAL_TOKENS)}")
    if tok.get_vocab_size() < config.vocab_size:
        logger.warning("vocab_size: the corpus gave %d entries of the %d asked (no more merges seen --min_fre %d "
                       "times): fine for a small corpus; models are sized by the vocabulary made",
                       tok.get_vocab_size(), config.vocab_size, config.min_fre)
    add_post_processor(tok)

    stats = {"num_files": len(files), "num_bytes": total_bytes, "num_lines": num_lines,
             "undecodable_bytes": bad_bytes.count, "max_text_mb": config.max_text_mb,
             "trained_on_bytes": sampled[0]}
    save_tokenizer_files(tok, config, config.out_dir, stats)
    elapsed = time.time() - start
    multi_word = sum(1 for t in tok.get_vocab() if "_" in t.strip("_"))
    logger.info("vocabulary: %d files, %.1f MB, %d lines, vocab size %d%s, %.1fs -> %s", len(files),
                total_bytes / 1e6, num_lines, tok.get_vocab_size(),
                f" ({multi_word} multi-syllable entries)" if segmented else "", elapsed, config.out_dir)
    return config.out_dir


if __name__ == "__main__":
    run_main(main, tok_args)
