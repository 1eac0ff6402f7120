"""Compressed corpora (.gz, .bz2, .xz, .zst) stream as plain text files do: the same vocabulary
and the same features, folders searched recursively, damaged files named in one line."""
import builtins
import bz2
import gzip
import lzma
import sys

import numpy as np
import pytest

import io_utils
import argument
import process
from conftest import SAMPLE, assert_one_line_error, build_features, read_json, run_in_process, train_vocab

COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


def compressed_copy(folder, suffix, name="train.tokens"):
    data = (SAMPLE / name).read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{suffix}"
    if suffix == ".zst":
        zstandard = pytest.importorskip("zstandard")
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(COMPRESSORS[suffix](data))
    return path


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
def test_compressed_corpus_gives_the_same_features(suffix, bpe_tok, tmp_path):
    path = compressed_copy(tmp_path / "corpus" / "deeper", suffix)
    plain, plain_meta = build_features(bpe_tok, tmp_path / "plain", valid_input="")
    packed, meta = build_features(bpe_tok, tmp_path / "packed", train_input=str(tmp_path / "corpus"), valid_input="")
    assert meta["splits"] == plain_meta["splits"]
    assert meta["num_tokens"]["train"] == plain_meta["num_tokens"]["train"] > 0
    assert (packed / "train.bin").read_bytes() == (plain / "train.bin").read_bytes()
    assert io_utils.find_text_files(str(path), "train_input") == [str(path)]


def test_vocabulary_from_a_compressed_corpus_equals_the_plain_one(tmp_path):
    compressed_copy(tmp_path / "corpus", ".xz")
    compressed_copy(tmp_path / "corpus", ".gz", "valid.tokens")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.tokens").write_bytes((SAMPLE / "train.tokens").read_bytes())
    (plain / "valid.tokens").write_bytes((SAMPLE / "valid.tokens").read_bytes())
    a = train_vocab(tmp_path / "tok_plain", data_dir=str(plain), vocab_size=1000)
    b = train_vocab(tmp_path / "tok_packed", data_dir=str(tmp_path / "corpus"), vocab_size=1000)
    assert read_json(a / "tokenizer.json")["model"]["vocab"] == read_json(b / "tokenizer.json")["model"]["vocab"]


@pytest.mark.parametrize("suffix,opener", [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)])
def test_compressed_lines_read_as_plain(suffix, opener, tmp_path):
    """.gz, .bz2 and .xz corpora give the lines of the text they hold."""
    path = tmp_path / f"c.txt{suffix}"
    with opener(path, "wb") as f:
        f.write("caf\u00e9 one\n\ntwo\n".encode())
    assert list(io_utils.iter_lines(str(path), io_utils.BadByteCounter())) == ["caf\u00e9 one", "", "two"]


def cut_short(data):
    return data[:len(data) // 2]


def damaged(data):
    """The compressed bytes with a run in the middle overwritten."""
    middle = len(data) // 2
    return data[:middle] + bytes(64) + data[middle + 64:]


def test_a_truncated_compressed_file_is_one_line(bpe_tok, tmp_path, capsys):
    path = compressed_copy(tmp_path / "corpus", ".zst")
    path.write_bytes(cut_short(path.read_bytes()))
    code, err = run_in_process(capsys, process, argument.feature_args, "--tokenizer_dir", bpe_tok, "--train_input",
                               path, "--valid_input", "", "--out_dir", tmp_path / "feat", "--num_workers", "1")
    assert_one_line_error(code, err, str(path), "damaged or truncated")
    assert not (tmp_path / "feat" / "meta.json").exists()


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
@pytest.mark.parametrize("harm", [cut_short, damaged])
def test_a_truncated_or_damaged_compressed_file_stops_its_reading(suffix, harm, tmp_path):
    """Never a traceback, and never a cut-short file read as if it ended there (zstandard's own reader does)."""
    path = compressed_copy(tmp_path / "corpus", suffix, "valid.tokens")
    path.write_bytes(harm(path.read_bytes()))
    with pytest.raises(io_utils.SpanElectraError, match=f"^'{path}' cannot be decompressed .* damaged or truncated"):
        list(io_utils.iter_lines(str(path), io_utils.BadByteCounter()))


def test_zst_without_zstandard_says_how_to_install_it(tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 16)
    real_import = builtins.__import__

    def no_zstandard(name, *args, **kwargs):
        if name == "zstandard":
            raise ImportError("No module named 'zstandard'")
        return real_import(name, *args, **kwargs)
    monkeypatch.delitem(sys.modules, "zstandard", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_zstandard)
    with pytest.raises(io_utils.SpanElectraError, match="pip install zstandard"):
        io_utils.find_text_files(str(path), "train_input")


def test_progress_counts_bytes_on_disk(tmp_path):
    path = compressed_copy(tmp_path, ".gz")

    class Bar:
        n = 0

        def update(self, k):
            self.n += k
    bar = Bar()
    lines = list(io_utils.iter_lines(str(path), io_utils.BadByteCounter(), progress=bar))
    assert bar.n == path.stat().st_size  # the bar's total is the compressed size
    assert lines == (SAMPLE / "train.tokens").read_text(encoding="utf-8").splitlines()
    assert np.isclose(len(lines), len((SAMPLE / "train.tokens").read_bytes().splitlines()))
