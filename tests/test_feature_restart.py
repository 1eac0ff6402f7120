"""A features build stopped part-way (Ctrl-C, SIGTERM, a lost machine) goes on from its last restart point when
the same command runs again, and ends with the very features of a build that never stopped."""
import lzma
import os
import shutil

import numpy as np
import pytest

from conftest import SAMPLE, build_features, read_json

import io_utils
import process


def corpus(tmp_path):
    """The sample's training text in two files, the second one xz-compressed, so a restart point can fall in
    either and the reading must skip into a compressed stream."""
    lines = (SAMPLE / "train.tokens").read_text(encoding="utf-8").splitlines(keepends=True)
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.tokens").write_text("".join(lines[:len(lines) // 2]), encoding="utf-8")
    with lzma.open(folder / "b.tokens.xz", "wt", encoding="utf-8") as f:
        f.write("".join(lines[len(lines) // 2:]))
    return str(folder)


def stop_after(monkeypatch, batches):
    """A restart point after every batch, and Ctrl-C as the given batch is packed, before its own point: the
    rows it wrote are past the last restart point."""
    monkeypatch.setattr(process, "RESTART_EVERY_SECONDS", 0)
    written = process.RestartPoints.written
    calls = []

    def counting(self, restart, current):
        calls.append(restart)
        if len(calls) == batches:
            raise KeyboardInterrupt
        written(self, restart, current)
    monkeypatch.setattr(process.RestartPoints, "written", counting)
    return calls


def left_builds(out_dir):
    return sorted(out_dir.parent.glob(f".{out_dir.name}.tmp-*"))


def arrays(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.bin"))}


@pytest.mark.parametrize("setting", ["train_pass", "valid_pass"])
def test_a_stopped_build_goes_on_from_its_restart_point_to_the_same_features(bpe_tok, tmp_path, monkeypatch, caplog,
                                                                             setting):
    """Stopped in the training text (two files, one compressed, some documents drawn for the valid split) or
    in the valid text, a build keeps its folder with a restart point; run again, it says so, reads on from
    there, and its rows, counts and digests are those of an unstopped build."""
    kw = dict(train_input=corpus(tmp_path), batch_lines=40, pack_across_documents=True)
    if setting == "train_pass":
        kw.update(valid_input="", valid_fraction=0.1)
    whole_dir, whole = build_features(bpe_tok, tmp_path / "whole", **kw)
    batches = -(-sum(1 for line in (SAMPLE / "train.tokens").open(encoding="utf-8") if line.strip()) // 40)
    out_dir = tmp_path / "feat"
    calls = stop_after(monkeypatch, batches * 3 // 4 if setting == "train_pass" else batches + 2)
    with pytest.raises(KeyboardInterrupt):
        build_features(bpe_tok, out_dir, **kw)
    assert not out_dir.exists()  # nothing looks complete
    [kept] = left_builds(out_dir)
    point = read_json(kept / process.RESTART_FILE)
    assert point["pass"] == (0 if setting == "train_pass" else 1)
    if setting == "train_pass":
        assert point["file"] == 1  # inside the compressed file
    monkeypatch.undo()
    caplog.set_level("INFO", logger="span_electra")
    _, meta = build_features(bpe_tok, out_dir, **kw)
    assert "continuing the build" in caplog.text and len(calls) > 2
    assert arrays(out_dir) == arrays(whole_dir)
    assert meta == whole
    assert not left_builds(out_dir) and not (out_dir / process.RESTART_FILE).exists()


def test_a_build_stopped_inside_a_long_line_reads_none_of_it_twice(bpe_tok, tmp_path, monkeypatch, caplog):
    """Lines past the long-line limit are tokenized in pieces. A batch that ends in such a piece has no restart
    point of its own (an earlier line's would read its packed pieces again): the build stopped after it goes on
    from the last batch that ended at a line's end, to the features of an unstopped build."""
    words = (SAMPLE / "train.tokens").read_text(encoding="utf-8").split()
    line = " ".join(words[:3000])  # about 1.3 x the limit at max_seq_len 16 (100 x 16 x 8 bytes): two pieces
    assert 100 * 16 * 8 < len(line.encode()) < 2 * 100 * 16 * 8
    corpus = tmp_path / "long.txt"
    corpus.write_text("A short first paragraph .\n\n" + "\n\n".join(f"{i} {line}" for i in range(4)) + "\n",
                      encoding="utf-8")
    kw = dict(train_input=str(corpus), valid_input="", max_seq_len=16, batch_lines=3, doc_boundary="blank_line")
    whole_dir, whole = build_features(bpe_tok, tmp_path / "whole", **kw)
    out_dir = tmp_path / "feat"
    # batches: [short, 0a, 0b] ends a line; [1a, 1b, 2a] ends in a piece; stopped as the third is packed
    calls = stop_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build_features(bpe_tok, out_dir, **kw)
    monkeypatch.undo()
    caplog.set_level("INFO", logger="span_electra")
    _, meta = build_features(bpe_tok, out_dir, **kw)
    assert "continuing the build" in caplog.text
    assert meta == whole and arrays(out_dir) == arrays(whole_dir)
    assert calls[0] is not None and calls[1] is None


def test_a_stopped_build_of_other_settings_is_started_over(bpe_tok, tmp_path, monkeypatch, caplog):
    """The restart point serves only the same inputs and settings: with another max_seq_len, the build starts
    from the beginning and the stopped folder goes."""
    kw = dict(train_input=str(SAMPLE / "train.tokens"), batch_lines=200)
    out_dir = tmp_path / "feat"
    stop_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build_features(bpe_tok, out_dir, **kw)
    assert len(left_builds(out_dir)) == 1
    monkeypatch.undo()
    caplog.set_level("INFO", logger="span_electra")
    _, meta = build_features(bpe_tok, out_dir, max_seq_len=64, **kw)
    _, expected = build_features(bpe_tok, tmp_path / "fresh", max_seq_len=64, **kw)
    assert "continuing the build" not in caplog.text
    assert meta["content_digest"] == expected["content_digest"] and not left_builds(out_dir)


def test_a_stopped_build_whose_rows_were_cut_short_starts_over(bpe_tok, tmp_path, monkeypatch, caplog):
    """A stopped build whose train.bin holds fewer rows than its restart point counts (a file cut short) is
    not continued, which would pad it with zeros: the build starts over, with a warning."""
    kw = dict(train_input=str(SAMPLE / "train.tokens"), batch_lines=200)
    out_dir = tmp_path / "feat"
    stop_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        build_features(bpe_tok, out_dir, **kw)
    [kept] = left_builds(out_dir)
    with open(kept / "train.bin", "r+b") as f:
        f.truncate(128 * 2)  # one row of uint16
    monkeypatch.undo()
    caplog.set_level("INFO", logger="span_electra")
    _, meta = build_features(bpe_tok, out_dir, **kw)
    _, expected = build_features(bpe_tok, tmp_path / "fresh", **kw)
    assert "lacks rows its restart point counts" in caplog.text and "continuing the build" not in caplog.text
    assert meta["content_digest"] == expected["content_digest"] and not left_builds(out_dir)


def test_a_build_stopped_before_its_first_restart_point_leaves_nothing(bpe_tok, tmp_path, monkeypatch):
    """Stopped within its first minute (no restart point yet), a build removes its folder, as before."""
    calls = []

    def stop(self, restart, current):
        calls.append(restart)
        raise KeyboardInterrupt
    monkeypatch.setattr(process.RestartPoints, "written", stop)
    with pytest.raises(KeyboardInterrupt):
        build_features(bpe_tok, tmp_path / "feat", batch_lines=200)
    assert calls and not left_builds(tmp_path / "feat")


def test_a_build_folder_another_running_process_holds_is_not_taken(tmp_path):
    """Only a build of an ended process (or this one's) is taken over; a running build keeps its folder."""
    out_dir = tmp_path / "feat"
    running = tmp_path / ".feat.tmp-1-abc"  # PID 1 (init) runs
    running.mkdir()
    (running / "restart.json").write_text("{}", encoding="utf-8")
    assert io_utils.adopt_stopped_build(str(out_dir), "restart.json", lambda point: True) == (None, None)
    damaged = tmp_path / ".feat.tmp-999999998-dmg"  # an ended build whose restart point is not JSON
    damaged.mkdir()
    (damaged / "restart.json").write_text('{"identity": ', encoding="utf-8")
    assert io_utils.adopt_stopped_build(str(out_dir), "restart.json", lambda point: True) == (None, None)
    shutil.rmtree(damaged)
    ended = tmp_path / ".feat.tmp-999999999-xyz"
    shutil.copytree(running, ended)
    folder, point = io_utils.adopt_stopped_build(str(out_dir), "restart.json", lambda point: True)
    assert point == {} and not ended.exists() and f".feat.tmp-{os.getpid()}-" in folder
    assert running.exists()


@pytest.mark.parametrize("suffix", ["", ".xz"])
def test_reading_starts_again_at_each_point_iter_lines_gives(tmp_path, suffix):
    """From every restart position iter_lines reports (none inside a long line's pieces), reading again
    gives exactly the lines that followed it, in a plain file and a compressed one."""
    text = "".join(f"line {i} " + ("x" * 40 + " ") * (i % 3 == 0) * 3 + "\n" + "\n" * (i % 4 == 0) for i in range(30))
    path = tmp_path / f"t.txt{suffix}"
    with (lzma.open(path, "wt", encoding="utf-8") if suffix else open(path, "w", encoding="utf-8")) as f:
        f.write(text)
    where, points, lines = {}, [], []
    for line in io_utils.iter_lines(str(path), io_utils.BadByteCounter(), max_line_bytes=64, where=where):
        lines.append(line)
        points.append(where["next"])
    assert None in points  # the long lines came in pieces
    for i, point in enumerate(points):
        if point is not None:
            assert list(io_utils.iter_lines(str(path), io_utils.BadByteCounter(), 64, start=point)) == lines[i + 1:]
    assert np.all(np.diff([p[0] for p in points if p]) > 0)
