"""Corpora of many GB: create_vocab_SE.py --max_text_mb trains on an even sample of the text, so a
vocabulary's time stops growing with the corpus, the long builds' progress bars write a log of lines,
an epoch's shuffled order of tens of millions of rows is held once, in int32, and a dataset pickled for a
spawned DataLoader worker reopens its memmaps instead of carrying the split, which shuffled batches read
without readahead (tiny files stand in for big ones)."""
import gzip
import io
import os
import pickle
import tracemalloc

import numpy as np
import pytest

try:  # optional, as in the product (requirements-dev.txt): only the .zst case needs it
    import zstandard
except ImportError:
    zstandard = None

from argument import tok_args
from conftest import SAMPLE, read_json, train_vocab
from create_vocab_SE import corpus_lines
from features import MLMDataset, shuffled_rows
from io_utils import LOG_REFRESH_SECONDS, BadByteCounter, SpanElectraError, progress_bar


NUM_LINES = 40_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40,000 numbered lines of 10-400 characters (a blank line every 50), plain, gzip- and zstd-compressed.
    A compressed file's position moves a block at a time (zstd's 128 KiB of text, Python 3.12's gzip reads
    128 KiB), so an even sample needs a file of many blocks: these are ~25 and ~60."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(NUM_LINES):
        text = f"L{i} " + " ".join(f"w{w}" for w in rng.integers(0, 500, 100))
        lines.append(text[:int(rng.integers(10, 400))])
        if i % 50 == 49:
            lines.append("")
    folder = tmp_path_factory.mktemp("big_corpus")
    plain, packed = folder / "corpus.txt", folder / "corpus.txt.gz"
    plain.write_text("\n".join(lines) + "\n", encoding="utf-8")
    packed.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
    if zstandard is not None:
        (folder / "corpus.txt.zst").write_bytes(zstandard.ZstdCompressor(level=1).compress(plain.read_bytes()))
    return plain, packed, [line for line in lines if line.strip()]


def sample(path, max_bytes):
    kept = [0, 0]
    lines = list(corpus_lines([str(path)], BadByteCounter(), None, set(), max_bytes, kept))
    return lines, kept


def test_no_budget_passes_every_line_on(corpus):
    plain, _, lines = corpus
    kept_lines, kept = sample(plain, 0)
    assert kept_lines == lines
    assert kept == [sum(len(line) + 1 for line in lines), len(lines)]


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
def test_budget_takes_about_that_much_text_evenly_and_unbiased(corpus, suffix):
    if suffix == ".zst" and zstandard is None:
        pytest.skip("zstandard is not installed (pip install -r requirements-dev.txt)")
    plain, _, lines = corpus
    budget = sum(len(line) + 1 for line in lines) // 10
    kept_lines, kept = sample(f"{plain}{suffix}", budget)
    assert abs(kept[0] - budget) < 0.05 * budget
    assert kept[1] == len(kept_lines) and sum(len(line) + 1 for line in kept_lines) == kept[0]
    numbers = np.array([int(line.split()[0][1:]) for line in kept_lines])
    assert np.all(np.diff(numbers) > 0)  # in corpus order, each line at most once
    quarters = np.bincount(numbers * 4 // NUM_LINES, minlength=4) / len(numbers)
    assert quarters.min() > 0.18 and quarters.max() < 0.32  # spread over the whole corpus, not its start
    mean_all = np.mean([len(line) for line in lines])
    assert abs(np.mean([len(line) for line in kept_lines]) - mean_all) < 0.12 * mean_all  # long lines not favoured


def test_the_budget_counts_bytes_as_the_files_measure_them(tmp_path):
    """--max_text_mb of Vietnamese (about 1.3 bytes a character) takes that many MB of UTF-8, not of characters."""
    path = tmp_path / "vi.txt"
    path.write_text("".join(f"Câu {i}: Hà Nội là thủ đô của Việt Nam, thành phố lớn thứ hai.\n" for i in range(20_000)),
                    encoding="utf-8")
    budget = path.stat().st_size // 4
    kept_lines, kept = sample(path, budget)
    assert kept[0] == sum(len(line.encode()) + 1 for line in kept_lines)
    assert abs(kept[0] - budget) < 0.05 * budget
    assert sum(len(line) + 1 for line in kept_lines) < 0.85 * budget  # counted in characters, it took ~25% more


def test_vocabulary_trained_on_a_sample_records_it(tmp_path):
    out = train_vocab(tmp_path / "tok", data_dir=str(SAMPLE / "train.tokens"), vocab_size=600, max_text_mb=0.1)
    info = read_json(out / "se_tokenizer.json")
    assert info["max_text_mb"] == 0.1
    assert 90_000 < info["trained_on_bytes"] < 110_000
    full = sum(1 for line in (SAMPLE / "train.tokens").read_text(encoding="utf-8").splitlines() if line.strip())
    assert 0.05 * full < info["num_lines"] < 0.2 * full


def test_negative_budget_is_refused():
    with pytest.raises(SpanElectraError, match="max_text_mb"):
        tok_args(max_text_mb=-1).validate()


def test_progress_in_a_log_file_is_one_line_per_refresh():
    log = io.StringIO()  # no terminal, as under nohup or a batch system
    bar = progress_bar(stream=log, total=3, desc="features", mininterval=0, miniters=1)
    for _ in range(3):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and all(line.startswith("features:") for line in lines)
    assert [line.split("|")[-1].split()[0] for line in lines][-1] == "3/3"
    assert len(lines) >= 4  # the start, each update, the close
    quiet = progress_bar(stream=io.StringIO(), total=1)
    assert quiet.mininterval == quiet.maxinterval == LOG_REFRESH_SECONDS


def test_progress_in_a_notebook_redraws_its_line():
    """ipykernel's output is no tty, yet redraws a line on '\\r': a notebook's main(config) keeps a live bar."""
    NotebookStream = type("OutStream", (io.StringIO,), {"__module__": "ipykernel.iostream"})
    out = NotebookStream()
    bar = progress_bar(stream=out, total=2, desc="generator", mininterval=0, miniters=1)
    bar.update(2)
    bar.close()
    assert "\r" in out.getvalue() and bar.mininterval == 0 and "2/2" in out.getvalue()
    assert progress_bar(stream=NotebookStream(), total=1).mininterval < LOG_REFRESH_SECONDS


@pytest.mark.parametrize("num_rows", [1, 1000, 54321])
def test_shuffled_rows_are_the_permutation_in_int32(num_rows):
    order = shuffled_rows(num_rows, np.random.default_rng([42, 3]))
    assert order.dtype == np.int32
    assert np.array_equal(order, np.random.default_rng([42, 3]).permutation(num_rows))  # runs keep their rows


def test_epoch_order_memory_is_4_bytes_a_row():
    num_rows = 1_000_000  # a big corpus's split, without its file: only the order is made
    dataset = MLMDataset.__new__(MLMDataset)
    dataset.data = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint16), (num_rows, 1), (0, 0))
    dataset.batch_size, dataset.seed, dataset.shuffle, dataset.rank, dataset.world_size = 2, 1, True, 0, 1
    dataset.epoch, dataset._order = 0, (None, None)
    dataset.order()
    tracemalloc.start()
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        rows = dataset.rows(0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(rows) == 2 and peak < 4 * num_rows * 1.1  # one int32 order at a time: no int64, no two epochs


@pytest.mark.parametrize("static", [False, True])
def test_a_pickled_dataset_reopens_its_memmaps_and_gives_the_same_batches(bpe_feat, static):
    from argument import MLM_trainDataArgs
    dataset = MLMDataset(MLM_trainDataArgs(features_dir=str(bpe_feat[0]), static_masking=static), 4, seed=3)
    dataset.set_epoch(2)
    state = pickle.dumps(dataset)
    assert len(state) < dataset.data.nbytes / 4  # the split's rows are not in it (the masker's tables are)
    copy = pickle.loads(state)
    assert isinstance(copy.data, np.memmap) and copy.data.filename == dataset.data.filename
    assert (copy.static is not None) == static and copy.epoch == 2
    if static:
        assert [a.filename for a in copy.static] == [a.filename for a in dataset.static]
    for index in (0, 7):
        for key, value in dataset[index].items():
            assert np.array_equal(copy[index][key].numpy(), value.numpy()), key


def vm_flags(array):
    """The kernel's VmFlags of the mapping that holds a memmap's rows (Linux's /proc/self/smaps), or None.
    Only that mapping: another object's mapping of the same file may still be alive in this process (one
    an earlier test left to the garbage collector), and has advice of its own."""
    address, path = array.ctypes.data, os.path.realpath(array.filename)
    found = current = None
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                current = start <= address < end and len(fields) >= 6 and fields[-1] == path
            elif fields[0] == "VmFlags:" and current:
                found = fields[1:]
    return found


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux's /proc shows the mapping's advice")
def test_shuffled_batches_read_the_split_without_readahead(bpe_feat):
    from argument import MLM_trainDataArgs
    args = MLM_trainDataArgs(features_dir=str(bpe_feat[0]))
    shuffled = MLMDataset(args, 4, shuffle=True)
    assert "rr" in vm_flags(shuffled.data)
    copy = pickle.loads(pickle.dumps(shuffled))  # a spawned worker's: advised again
    assert "rr" in vm_flags(copy.data)
    assert "rr" not in vm_flags(MLMDataset(args, 4, shuffle=False).data)  # evaluation reads in order: readahead kept
    assert np.array_equal(copy[1]["input_ids"].numpy(), shuffled[1]["input_ids"].numpy())
