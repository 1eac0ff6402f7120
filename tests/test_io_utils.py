"""io_utils.py: reading text (undecodable bytes counted, Windows line ends, long lines cut whole, folders and
globs, text in another encoding skipped) and writing (atomic files, the full-disk message)."""
import gzip
import json
import os

import pytest

import io_utils


def test_undecodable_bytes_are_counted_one_by_one(tmp_path):
    """The undecodable-byte count is of bytes, also where one replacement character stands for a cut sequence."""
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ab\xe2\x82 x\xff\xfe\nok\n")
    bad = io_utils.BadByteCounter()
    assert list(io_utils.iter_lines(str(path), bad)) == ["ab\ufffd x\ufffd\ufffd", "ok"]
    assert bad.count == 4


def test_windows_line_ends_are_not_part_of_the_text(tmp_path):
    """CRLF files give the same lines as LF files: no '\\r' reaches the tokenizer."""
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"one two\r\nthree\r\n")
    assert list(io_utils.iter_lines(str(path), io_utils.BadByteCounter())) == ["one two", "three"]


def test_a_byte_order_mark_is_not_text(tmp_path):
    """Notepad's UTF-8 BOM at a file's start is dropped (it would become tokens of its own); elsewhere it stays."""
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfone two\n\xef\xbb\xbfthree\n")
    assert list(io_utils.iter_lines(str(path), io_utils.BadByteCounter())) == ["one two", "\ufeffthree"]
    assert list(io_utils.iter_lines(str(path), io_utils.BadByteCounter(), start=(11, 1))) == ["\ufeffthree"]


@pytest.mark.parametrize("text", ["word " * 40, "\u00e9\u00e8\u4e2d" * 30])
def test_long_lines_are_cut_without_losing_or_breaking_characters(text, tmp_path):
    """A line over max_line_bytes comes in pieces that join back to it: cut before a space, never inside a
    UTF-8 character (no replacement characters, none counted as undecodable)."""
    path = tmp_path / "long.txt"
    path.write_bytes(text.encode() + b"\nnext\n")
    bad = io_utils.BadByteCounter()
    cut = []
    pieces = list(io_utils.iter_lines(str(path), bad, max_line_bytes=16, on_long_line=cut.append))
    assert pieces[-1] == "next" and "".join(pieces[:-1]) == text and len(pieces) > 3
    assert bad.count == 0 and cut == [1]
    if " " in text:
        assert all(p.startswith(" ") for p in pieces[1:-1])  # the next piece starts with the space, as the word did
        assert all(len(p.encode()) <= 2 * 16 for p in pieces[:-1])  # memory stays bounded


def test_folders_skip_hidden_and_non_text_files_and_globs_recurse(tmp_path):
    """A folder gives its .txt/.tokens/.raw files (also compressed), sorted, without hidden files and folders (a
    notebook's .ipynb_checkpoints copy of a valid file is no training text); '**' recurses."""
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "sub" / ".ipynb_checkpoints").mkdir()
    for name in ("b.txt", ".b.txt.swp.txt", "notes.md", "sub/deep/a.tokens", "sub/c.txt.gz",
                 "sub/.ipynb_checkpoints/valid-checkpoint.txt"):
        data = gzip.compress(b"text\n") if name.endswith(".gz") else b"text\n"
        (tmp_path / name).write_bytes(data)
    found = [os.path.relpath(p, tmp_path) for p in io_utils.find_text_files(str(tmp_path), "data_dir")]
    assert found == ["b.txt", "sub/c.txt.gz", "sub/deep/a.tokens"]
    nested = io_utils.find_text_files(str(tmp_path / "**" / "*.tokens"), "data_dir")
    assert [os.path.relpath(p, tmp_path) for p in nested] == ["sub/deep/a.tokens"]


def test_folders_skip_broken_links_pipes_and_the_stages_own_outputs(tmp_path, caplog):
    """A broken link or a pipe in a corpus folder is skipped with a warning (never a traceback or a hang),
    and so is an out_dir placed inside it: a tokenizer's vocab.txt is no corpus text."""
    (tmp_path / "tok").mkdir()
    for name in ("a.txt", "tok/vocab.txt", "tok/se_tokenizer.json"):
        (tmp_path / name).write_bytes(b"text\n")
    (tmp_path / "broken.txt").symlink_to(tmp_path / "gone.txt")
    os.mkfifo(tmp_path / "pipe.txt")
    assert io_utils.find_text_files(str(tmp_path), "data_dir") == [str(tmp_path / "a.txt")]
    for skipped in ("broken.txt", "pipe.txt", "tok"):
        assert f"skipping {'folder ' if skipped == 'tok' else ''}'{tmp_path / skipped}'" in caplog.text
    with pytest.raises(io_utils.SpanElectraError, match="^data_dir: '.*pipe.txt' is not a regular file"):
        io_utils.find_text_files(str(tmp_path / "pipe.txt"), "data_dir")


def test_a_tokenizer_written_into_the_corpus_folder_itself_is_not_read_as_text(tmp_path, caplog):
    """create_vocab_SE.py --data_dir corpus --out_dir corpus, run twice: the second run does not train on the
    first one's vocab.txt or merges.txt. A corpus folder without a tokenizer keeps a file named vocab.txt."""
    for name in ("corpus.txt", "vocab.txt", "merges.txt", "tokenizer.json"):
        (tmp_path / name).write_bytes(b"text\n")
    assert io_utils.find_text_files(str(tmp_path), "data_dir") == [str(tmp_path / "corpus.txt")]
    assert f"skipping '{tmp_path / 'vocab.txt'}': a tokenizer's vocabulary" in caplog.text
    (tmp_path / "tokenizer.json").unlink()
    assert len(io_utils.find_text_files(str(tmp_path), "data_dir")) == 3


def test_text_in_another_encoding_is_skipped(tmp_path, caplog):
    """A file that is largely not UTF-8 (a third of its bytes undecodable) is skipped with the iconv advice."""
    (tmp_path / "latin.txt").write_bytes(b"\xe9t\xe9 " * 300)
    (tmp_path / "ok.txt").write_bytes("\u00e9t\u00e9 ".encode() * 300)
    assert [os.path.basename(p) for p in io_utils.find_text_files(str(tmp_path), "data_dir")] == ["ok.txt"]
    assert "iconv" in caplog.text


def test_atomic_write_gives_the_usual_permissions_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    """Files written atomically are readable as any file the user writes, and a failed write leaves the old
    file whole and no temporary file behind."""
    path = tmp_path / "meta.json"
    io_utils.atomic_write_json(str(path), {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask
    assert json.loads(path.read_text()) == {"a": 1}

    def fail(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(io_utils.os, "replace", fail)
    with pytest.raises(OSError):
        io_utils.atomic_write_json(str(path), {"a": 2})
    assert os.listdir(tmp_path) == ["meta.json"] and json.loads(path.read_text()) == {"a": 1}


def test_a_full_disk_message_names_the_file_and_the_fix():
    """A full disk is one line naming the file and saying to free space."""
    msg = io_utils.write_failure_message(OSError(28, "No space left on device", "/x/model.safetensors"))
    assert msg.startswith("'/x/model.safetensors': No space left on device") and "free some space" in msg
    msg = io_utils.write_failure_message(RuntimeError("[enforce fail] unexpected pos: No space left on device"), "/o")
    assert msg.startswith("out_dir: cannot write to '/o'") and "free some space" in msg
    assert io_utils.write_failure_message(ValueError("shape mismatch")) is None


@pytest.mark.parametrize("content", ["null", '"none"', "[1]"])
def test_a_json_file_of_another_kind_is_one_line(content, tmp_path, bpe_tok):
    """Valid JSON that is not the object a file holds (a bad edit) names the file, never a TypeError later."""
    import shutil
    import tokenization
    path = tmp_path / "meta.json"
    path.write_text(content)
    with pytest.raises(io_utils.SpanElectraError, match=r"^features_dir: '.*meta.json' is damaged: not a JSON object"):
        io_utils.read_json(str(path), field="features_dir")
    assert io_utils.read_json(str(path), kind=list) == [1] if content == "[1]" else True
    tok = shutil.copytree(bpe_tok, tmp_path / "tok")
    (tok / "se_tokenizer.json").write_text(content)
    with pytest.raises(io_utils.SpanElectraError, match=r"se_tokenizer.json' is damaged: not a JSON object"):
        tokenization.load_tokenizer(str(tok))
