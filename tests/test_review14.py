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


def _started_run(out, digest):
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 5}\n')
    fixed = {"script": "trainSpanElectra", "tokenizer_hash": "t", "train_sequences": 10,
             "train_sequences_digest": digest}
    (out / "run.json").write_text(json.dumps({"run_id": "abc", "fixed": fixed}))
    return SE_trainingConfig(features_dir="f", out_dir=str(out), resume_from="latest"), fixed


def test_a_run_started_on_features_without_a_digest_resumes_on_the_same_text_rebuilt(tmp_path):
    """A run started (by this version) on features process.py built before content_digest recorded
    train_sequences_digest None; the same text rebuilt now has a digest: nothing says the rows differ, and the
    run resumed before this change, so it must not be refused as 'rebuilt from other text'."""
    config, fixed = _started_run(tmp_path / "a", None)
    assert tu.check_run(config, dict(fixed, train_sequences_digest="0123")) == "abc"
    config, fixed = _started_run(tmp_path / "b", "0123")  # a digest on both sides still decides
    assert tu.check_run(config, fixed) == "abc"
    with pytest.raises(SpanElectraError, match="training sequences .rebuilt from other text"):
        tu.check_run(config, dict(fixed, train_sequences_digest="4567"))


def test_only_the_bundled_samples_count_as_the_bundled_sample(caplog):
    """A corpus of one's own kept under data/ (train shards in one folder, held-out text beside them) was
    warned about as 'the bundled sample (valid_input's default)'; the bundled samples themselves still are."""
    data = REPO / "data"
    with caplog.at_level("WARNING", logger="span_electra"):
        process.warn_bundled_valid([str(data / "wiki" / "train" / "part1.txt")], [str(data / "wiki" / "valid.txt")])
        process.warn_bundled_valid(["/corpora/wiki/train.txt"], [str(data / "my_valid.txt")])
    assert "bundled sample" not in caplog.text
    with caplog.at_level("WARNING", logger="span_electra"):
        process.warn_bundled_valid([str(data / "wiki" / "train.txt")], [str(data / "sample" / "valid.tokens")])
        process.warn_bundled_valid([str(data / "sample_vi" / "train.txt")], [str(data / "sample" / "valid.tokens")])
        process.warn_bundled_valid([str(data / "sample" / "train.tokens")], [str(data / "sample" / "valid.tokens")])
    assert caplog.text.count("bundled sample") == 2


def test_the_unk_share_of_a_task_counts_its_text_not_the_special_tokens(caplog):
    """process.py's share excludes [CLS]/[SEP]; finetune's counted them, so a pair task of short sentences with 5.6%
    of its text [UNK] (1 in 18) read as 1 in 21 (4.8%) and went unwarned."""
    import numpy as np
    import finetune_SE

    class Tok:
        unk_token_id, all_special_ids = 1, [0, 1, 2, 3, 4]
    row = [2] + [1] + [9] * 8 + [3] + [9] * 9 + [3]  # [CLS] [UNK] 8 words [SEP] 9 words [SEP], then padding
    encoded = {"input_ids": np.array([row + [0, 0]] * 4), "lengths": np.array([len(row)] * 4)}
    with caplog.at_level("WARNING", logger="span_electra"):
        finetune_SE.warn_unknown_share(encoded, Tok())
    assert "6% of the task's train tokens are [UNK]" in caplog.text
