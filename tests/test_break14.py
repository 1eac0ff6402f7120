"""Regressions found by breaking today's changes from the command line (break session 14)."""
import json
import logging
import os
import sys
import types

import pytest
import torch

import process
import training_utils as tu
from conftest import REPO
from io_utils import SpanElectraError

sys.path.insert(0, str(REPO / "benchmarks"))
import compare_pretraining as cp  # noqa: E402


def _write(path, text="a line of text\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_own_corpus_under_data_is_not_the_bundled_sample(tmp_path, monkeypatch, caplog):
    """A corpus of the user's own placed under data/ (train and valid in sibling folders) was warned about as
    'the bundled sample'; only data/sample and data/sample_vi are."""
    data = tmp_path / "data"
    monkeypatch.setattr(process, "BUNDLED_SAMPLES", (str(data / "sample"), str(data / "sample_vi")))
    sample_valid = _write(data / "sample" / "valid.tokens")
    own_train, own_valid = _write(data / "mycorp" / "train" / "a.txt"), _write(data / "mycorp" / "valid.txt")
    outside_train = _write(tmp_path / "elsewhere" / "train.txt")
    with caplog.at_level(logging.WARNING, logger="span_electra"):
        process.warn_bundled_valid([own_train], [own_valid])
        process.warn_bundled_valid([outside_train], [own_valid])
        assert not [r for r in caplog.records if "bundled sample" in r.getMessage()]
        process.warn_bundled_valid([own_train], [sample_valid])  # the default valid_input: still warned
        process.warn_bundled_valid([_write(data / "sample" / "train.tokens")], [sample_valid])  # the sample itself
    warned = [r.getMessage() for r in caplog.records if "bundled sample" in r.getMessage()]
    assert len(warned) == 1 and own_train in warned[0]


def _resume_config(tmp_path, fixed):
    (tmp_path / "metrics.jsonl").write_text("", encoding="utf-8")
    (tmp_path / tu.RUN_FILE).write_text(json.dumps({"run_id": "abc", "fixed": fixed}), encoding="utf-8")
    return types.SimpleNamespace(out_dir=str(tmp_path), resume_from="latest", overwrite_output_dir=False)


def test_run_started_on_undigested_features_resumes_on_the_same_rows_rebuilt(tmp_path):
    """A run started on features from before content_digest recorded train_sequences_digest null; rebuilding
    the same corpus (now digested) refused the resume as 'rebuilt from other text'."""
    base = {"script": "trainSpanElectra.py", "train_sequences": 10}
    config = _resume_config(tmp_path, {**base, "train_sequences_digest": None})
    assert tu.check_run(config, {**base, "train_sequences_digest": "f" * 32}) == "abc"
    config = _resume_config(tmp_path, {**base, "train_sequences_digest": "e" * 32})  # recorded: still compared
    with pytest.raises(SpanElectraError, match="training sequences"):
        tu.check_run(config, {**base, "train_sequences_digest": "f" * 32})


class _Joint(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.position_delta = torch.nn.Parameter(torch.zeros(3))


def test_resuming_a_disentangled_checkpoint_without_position_delta_says_why(tmp_path, monkeypatch):
    model = _Joint()
    optimizer = torch.optim.AdamW(model.parameters())
    state = {"model": {"w": torch.ones(2)}, "optimizer": optimizer.state_dict(), "step": 5}
    monkeypatch.setattr(tu, "load_checkpoint", lambda *a: state)
    config = types.SimpleNamespace(resume_from="latest", out_dir=str(tmp_path), run_id="abc")
    with pytest.raises(SpanElectraError, match="no position delta.*overwrite_output_dir"):
        tu.resume_training_state(config, model, optimizer, None)
    state["model"] = {"w": torch.ones(5), "position_delta": torch.zeros(3)}  # another mismatch: the reason named
    with pytest.raises(SpanElectraError, match=r"does not fit this model \(size mismatch for w"):
        tu.resume_training_state(config, model, optimizer, None)


def test_compare_out_dir_built_packed_refuses_an_unpacked_run(tmp_path):
    """data.json recorded pack_across_documents only when set, and only the new run's keys were compared: a run
    without the flag silently reused the packed features and every cached row."""
    scale = {"vocab_size": 8000}
    config = types.SimpleNamespace(out_dir=str(tmp_path), train_input="t.txt", valid_input="v.txt",
                                   pack_across_documents=True)
    cp.check_data_identity(config, scale)  # records it
    cp.check_data_identity(config, scale)  # the same: fine
    config.pack_across_documents = False
    with pytest.raises(SpanElectraError, match="pack_across_documents True -> False"):
        cp.check_data_identity(config, scale)
    os.remove(tmp_path / cp.DATA_FILE)
    cp.check_data_identity(config, scale)  # built unpacked (no key recorded), run unpacked: fine
    config.pack_across_documents = True
    with pytest.raises(SpanElectraError, match="pack_across_documents False -> True"):
        cp.check_data_identity(config, scale)
