"""Editing a config class's default in argument.py changes the run: for each of the seed's classes,
argument.py is executed anew with one default edited (as a user edits the file), the script's main
runs a tiny job with a config of the edited class, and the saved config and the run's behaviour
show the new value."""
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import argument
import create_vocab_SE
import features
import trainMLM_SpanElectra
import trainSpanElectra
from conftest import SAMPLE
from tokenization import MASK_ID

TINY = dict(model_size="tiny", num_hidden_layers=1, train_batch_size=8, eval_batches=1, log_every=1, save_every=100,
            device="cpu")


def edited_argument(monkeypatch, cls_name, field, value):
    """argument.py with `cls_name`'s default of `field` set to value (a line added where the class
    inherits the field), executed as a fresh module."""
    source = Path(argument.__file__).read_text(encoding="utf-8")
    start = source.index(f"\nclass {cls_name}")
    end = source.index("\n@dataclass", start)
    body = source[start:end]
    declared = re.search(rf"\n    {field}: [^\n]*?= _help\((?:.|\n)*?default=([^,)\n]+)", body)
    if declared:
        body = body[:declared.start(1)] + repr(value) + body[declared.end(1):]
    else:  # after the docstring: `field: type = value`
        doc_end = body.index('"""', body.index('"""') + 3) + 3
        body = body[:doc_end] + f"\n    {field}: {type(value).__name__} = {value!r}" + body[doc_end:]
    module = types.ModuleType("argument_edited")
    module.__file__ = argument.__file__
    monkeypatch.setitem(sys.modules, "argument_edited", module)
    exec(compile(source[:start] + body + source[end:], argument.__file__, "exec"), module.__dict__)
    cls = getattr(module, cls_name)
    assert getattr(cls(), field) == value
    return module


def saved(out, script):
    with open(out / f"{script}_config.json", encoding="utf-8") as f:
        return json.load(f)


def metric_rows(out):
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def mask_share(config, split="train"):
    """Share of [MASK] among the masked tokens, and masked share of all tokens, in one batch."""
    batch = {k: np.asarray(v) for k, v in features.MLMDataset(config, 64, seed=0, split=split)[0].items()}
    weights = batch["masked_lm_weights"] > 0
    masked_inputs = np.take_along_axis(batch["input_ids"], batch["masked_lm_positions"], 1)[weights]
    return float(np.mean(masked_inputs == MASK_ID)), float(weights.sum() / batch["input_ids"].size)


def test_tok_args(monkeypatch, tmp_path):
    mod = edited_argument(monkeypatch, "tok_args", "vocab_size", 700)
    create_vocab_SE.main(mod.tok_args(data_dir=str(SAMPLE), out_dir=str(tmp_path / "tok"), num_workers=1))
    assert saved(tmp_path / "tok", "create_vocab")["vocab_size"] == 700
    with open(tmp_path / "tok" / "tokenizer.json", encoding="utf-8") as f:
        assert len(json.load(f)["model"]["vocab"]) == 700


def test_MLM_trainDataArgs(monkeypatch, bpe_feat, tmp_path):
    mod = edited_argument(monkeypatch, "MLM_trainDataArgs", "mask_ratio", 0.3)
    config = mod.MLM_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "g"), max_steps=1, **TINY)
    trainMLM_SpanElectra.main(config)
    assert saved(tmp_path / "g", "trainMLM")["mask_ratio"] == 0.3
    assert mask_share(config)[1] == pytest.approx(0.3 * 126 / 128, abs=0.03)  # was 0.15


def test_MLM_validDataArgs(monkeypatch, bpe_feat, tmp_path):
    mod = edited_argument(monkeypatch, "MLM_validDataArgs", "eval_every", 1)
    trainMLM_SpanElectra.main(mod.MLM_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "g"),
                                                     max_steps=2, **TINY))
    assert saved(tmp_path / "g", "trainMLM")["eval_every"] == 1
    assert [r["step"] for r in metric_rows(tmp_path / "g") if r.get("split") == "valid"] == [1, 2]  # was [2]


def test_MLM_trainingConfig(monkeypatch, bpe_feat, tmp_path):
    mod = edited_argument(monkeypatch, "MLM_trainingConfig", "max_steps", 3)
    trainMLM_SpanElectra.main(mod.MLM_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "g"),
                                                     **TINY))
    assert saved(tmp_path / "g", "trainMLM")["max_steps"] == 3
    assert max(r.get("step", 0) for r in metric_rows(tmp_path / "g")) == 3  # was 1000


def test_SE_trainDataArgs(monkeypatch, bpe_feat, tmp_path):
    mod = edited_argument(monkeypatch, "SE_trainDataArgs", "mask_replace_prob", 0.5)
    config = mod.SE_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "d"), mode="joint",
                                   max_steps=1, **TINY)
    trainSpanElectra.main(config)
    assert saved(tmp_path / "d", "trainSpanElectra")["mask_replace_prob"] == 0.5
    assert mask_share(config)[0] == pytest.approx(0.5, abs=0.1)  # was 0.85


def test_SE_validDataArgs(monkeypatch, bpe_feat, tmp_path):
    mod = edited_argument(monkeypatch, "SE_validDataArgs", "eval_every", 1)
    trainSpanElectra.main(mod.SE_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "d"),
                                                mode="joint", max_steps=2, **TINY))
    assert [r["step"] for r in metric_rows(tmp_path / "d") if r.get("split") == "valid"] == [1, 2]


def test_SE_trainingConfig(monkeypatch, bpe_feat, tmp_path):
    mod = edited_argument(monkeypatch, "SE_trainingConfig", "mode", "joint")
    trainSpanElectra.main(mod.SE_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "d"),
                                                max_steps=1, **TINY))
    assert saved(tmp_path / "d", "trainSpanElectra")["mode"] == "joint"
    assert (tmp_path / "d" / "generator" / "config.json").exists()  # joint saves both models; two-stage one
