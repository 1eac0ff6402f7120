"""Review of the collapse rule, OutDirLock's temporary files, the features digest in a run's identity,
the bundled-valid warning and resuming a gradient-disentangled run started before the position delta."""
import json
import os
import socket

import pytest

from conftest import REPO
import process
import trainSpanElectra
import training_utils as tu
from argument import SE_trainingConfig
from io_utils import SpanElectraError

SMALLER = dict(num_hidden_layers=1, log_every=1, eval_batches=2, train_batch_size=16, eval_batch_size=32, device="cpu")
COLLAPSED = {"disc_auc": 0.5, "rtd_loss": 0.39, "rtd_base_loss": 0.39, "disc_loss": 0.4, "disc_accuracy": 0.87,
             "disc_precision": 0.0, "disc_recall": 0.0}


def test_training_warns_only_where_the_comparison_marks_a_collapse(bpe_feat, tmp_path, monkeypatch, caplog):
    """At chance at step 2 (not learning yet), a train window that learned at step 3, at chance again at step 4:
    one evaluation at chance after the learning, which tu.collapsed does not call a collapse; the run did warn."""
    valid = iter([dict(COLLAPSED) for _ in range(4)])
    monkeypatch.setattr(trainSpanElectra, "evaluate", lambda *args: next(valid))
    real = tu.learned_auc
    monkeypatch.setattr(tu, "learned_auc", lambda row: 0.7 if row.get("split") != "valid" and row["step"] == 3
                        else real(row))
    with caplog.at_level("WARNING", logger="span_electra"):
        trainSpanElectra.main(SE_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "run"),
                                                mode="joint", eval_every=2, max_steps=4, **SMALLER))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert not tu.collapsed([r for r in rows if "event" not in r])
    assert [r.getMessage() for r in caplog.records if "at chance" in r.getMessage()] == []


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
