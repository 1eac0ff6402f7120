"""What a run killed at a bad moment (SIGKILL: no handler runs) leaves behind, and what the next run
does with it. The kills are simulated: a write made to fail mid-way, or the leftovers laid out by hand."""
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import SAMPLE, build_features, train_vocab

import io_utils
import training_utils as tu
from io_utils import SpanElectraError


def dead_pid():
    """The id of a process that has ended."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_killed_builds_leave_no_temporary_folders_behind(bpe_tok, tmp_path):
    """SIGKILL during process.py left .feat.tmp-* (partial train.bin, as big as the features) beside
    out_dir, and every later run added another and kept the old ones; now the next build removes the
    ones whose process is gone, and keeps those of a build still running."""
    out = tmp_path / "feat"
    for stale in (f".feat.tmp-{dead_pid()}-abcd1234", ".feat.tmp-w5v_oeci", f".feat.old-{dead_pid()}"):
        (tmp_path / stale).mkdir()
        (tmp_path / stale / "train.bin").write_bytes(b"\0" * 4096)
    running = tmp_path / f".feat.tmp-{os.getppid()}-zzzz9999"  # a live process's build is not ours to remove
    running.mkdir()
    other = tmp_path / f".featx.tmp-{dead_pid()}-abcd1234"  # another folder's build: not ours either
    other.mkdir()
    build_features(bpe_tok, out, train_input=str(SAMPLE / "valid.tokens"), valid_input="")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["feat", running.name, other.name])


def test_killed_vocabulary_build_is_cleaned_by_the_next(tmp_path):
    out = tmp_path / "tok"
    stale = tmp_path / f".tok.tmp-{dead_pid()}-abcd1234"
    stale.mkdir()
    (stale / "vocab.json").write_text("{")
    train_vocab(out, data_dir=str(SAMPLE / "valid.tokens"), vocab_size=400)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_building_folder_keeps_a_live_build_and_names_its_own_by_pid(tmp_path):
    target = tmp_path / "model"
    live = tmp_path / f".model.tmp-{os.getppid()}-live0000"
    live.mkdir()
    seen = []
    with io_utils.building_folder(str(target)) as tmp:
        seen.append(os.path.basename(tmp))
        (open(os.path.join(tmp, "x"), "w")).write("1")
    assert seen[0].startswith(f".model.tmp-{os.getpid()}-")
    assert (target / "x").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", live.name])


# ---------------------------------------------------------------- two training processes at once
def test_the_lock_file_never_appears_empty(tmp_path, monkeypatch):
    """The lock was created empty and filled after: a second run starting at that instant read it as
    damaged, took it over, and both trained into one out_dir (4 of 60 simultaneous starts, fuzz/lockrace.py).
    Now it appears with its content."""
    import json
    import training_utils as tu
    lock_path = tmp_path / ".lock"
    seen = []
    real_dump = json.dump

    def dump(obj, f, *a, **kw):
        seen.append(lock_path.exists())
        return real_dump(obj, f, *a, **kw)

    monkeypatch.setattr(tu.json, "dump", dump)
    lock = tu.OutDirLock(str(tmp_path))
    lock.acquire()
    assert seen == [False]
    assert json.loads(lock_path.read_text()) == {"host": __import__("socket").gethostname(), "pid": os.getpid()}
    lock.release()
    assert sorted(os.listdir(tmp_path)) == []


def test_a_lock_left_by_a_dead_process_is_taken_over_and_a_live_one_refuses(tmp_path):
    """out_dir/.lock of a process that is gone does not block the next run; one of a running process does."""
    import socket
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path = tmp_path / ".lock"
    lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    lock = tu.OutDirLock(str(tmp_path))
    lock.acquire()
    assert lock.owner() == {"host": socket.gethostname(), "pid": os.getpid()}
    lock.release()
    assert not lock_path.exists()
    lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))
    with pytest.raises(SpanElectraError, match=f"in use by another training process .pid {os.getppid()}"):
        tu.OutDirLock(str(tmp_path)).acquire()
    tu.OutDirLock(str(tmp_path)).release()  # not ours: left in place
    assert lock_path.exists()


def test_taking_over_a_dead_lock_spares_one_another_process_just_took(tmp_path):
    """Two runs found the same dead process's lock: the first removed it and wrote its own, then the
    second removed that one too. Now the second sees the lock it moved aside is not the dead one, and puts it back."""
    import json
    import socket
    import training_utils as tu
    dead = {"host": socket.gethostname(), "pid": dead_pid()}
    live = {"host": socket.gethostname(), "pid": os.getppid()}
    (tmp_path / ".lock").write_text(json.dumps(live))  # the first run's, written after both read `dead`
    lock = tu.OutDirLock(str(tmp_path))
    lock._take_over(dead)
    assert json.loads((tmp_path / ".lock").read_text()) == live
    with pytest.raises(io_utils.SpanElectraError, match=f"in use by another training process .pid {os.getppid()}"):
        lock.acquire()
    assert sorted(os.listdir(tmp_path)) == [".lock"]
    (tmp_path / ".lock").write_text(json.dumps(dead))
    lock._take_over(dead)
    assert sorted(os.listdir(tmp_path)) == []


def test_a_lock_temp_file_of_another_host_is_left_alone_and_a_vanished_one_does_not_crash(tmp_path, monkeypatch):
    """out_dir on a file system two hosts share: a .lock.tmp file another host's starting run just wrote holds a
    pid this host cannot see, so it must not be removed as a leftover; and where it vanished before the link,
    the run still takes the lock (before: FileNotFoundError out of acquire, the lock left behind)."""
    lock = tu.OutDirLock(str(tmp_path))
    other = tmp_path / f".lock.tmp-another-host-{os.getpid()}9"  # the other host's pid is dead here
    other.write_text('{"host": "another-host", "pid": 1}')
    mine = tmp_path / f".lock.stale-{socket.gethostname()}-{os.getpid()}9"  # this host's, its process gone
    mine.write_text("{}")
    real_link = os.link
    def link_after_cleanup(src, dst):  # what the other host's cleanup of our temp file did meanwhile
        os.remove(src)
        return real_link(src, dst)
    monkeypatch.setattr(os, "link", link_after_cleanup)
    lock.acquire()
    assert other.exists()
    assert lock.owner() == {"host": socket.gethostname(), "pid": os.getpid()}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", other.name]
    lock.release()


# ---------------------------------------------------------------- metrics.jsonl on resume
def test_a_resume_killed_while_trimming_metrics_keeps_the_earlier_rows(tmp_path, monkeypatch):
    """Resuming rewrites metrics.jsonl without the rows past the checkpoint. It was rewritten in place:
    killed mid-write, the rows before the checkpoint were lost for good (the next resume kept the
    stump). Now the file is replaced whole: the kill, simulated by a write that fails, leaves it as it was."""
    import json
    import training_utils as tu
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in (5, 10, 15, 20)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 25, "lo'  # and a line a kill cut short
    path.write_text(text)
    runtime = tu.Runtime(device=None)

    def killed(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(io_utils.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        tu.MetricsLog(str(tmp_path), runtime, resume_step=10)
    assert path.read_text() == text and sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]
    monkeypatch.undo()
    tu.MetricsLog(str(tmp_path), runtime, resume_step=10)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:2]


def test_what_a_process_killed_while_locking_left_is_removed(tmp_path):
    import training_utils as tu
    for name in (f".lock.tmp-{dead_pid()}", f".lock.stale-{dead_pid()}"):
        (tmp_path / name).write_text("{}")
    live = tmp_path / f".lock.tmp-{os.getppid()}"
    live.write_text("{}")
    lock = tu.OutDirLock(str(tmp_path))
    lock.acquire()
    lock.release()
    assert sorted(os.listdir(tmp_path)) == [live.name]
