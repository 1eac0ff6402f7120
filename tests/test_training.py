"""Models and both training scripts at a tiny size on the bundled sample, and the loop's parts: the learning-rate
schedule, weight decay, gradient accumulation, the temperature curriculum and the logged metrics."""
import dataclasses
import json
import os
import shutil
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import (REPO, V, assert_one_line_error, build_features, joint_batch, run_in_process,
                      run_or_show_where_it_hung)

import argument
import features
import modelling_span_electra as mse
import trainMLM_SpanElectra
import trainSpanElectra
import training_utils as tu
from argument import SE_trainingConfig
from io_utils import SpanElectraError

SMALLER = dict(num_hidden_layers=1, log_every=5, eval_every=1000, eval_batches=2, train_batch_size=16,
               eval_batch_size=32, device="cpu")


SMALL = dict(num_hidden_layers=1, log_every=1, eval_every=1000, eval_batches=1, eval_batch_size=4, device="cpu",
             num_workers=0)


def rows(out_dir, split=None):
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        data = [json.loads(line) for line in f]
    return [r for r in data if r.get("split") == split and "event" not in r]


def gen_config(feat, out, **kw):
    return argument.MLM_trainingConfig(features_dir=str(feat), out_dir=str(out), **{**SMALLER, **kw})


def se_config(feat, out, **kw):
    return argument.SE_trainingConfig(features_dir=str(feat), out_dir=str(out), **{**SMALLER, **kw})


@pytest.fixture(scope="session")
def trained_generator(bpe_feat, tmp_path_factory):
    """A tiny generator trained for 240 steps; returns its out_dir."""
    out = tmp_path_factory.mktemp("gen") / "run"
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], out, max_steps=240, learning_rate=3e-3, eval_every=240,
                                         log_every=40, eval_batches=0, train_batch_size=16, num_hidden_layers=2,
                                         seed=1))
    return out


@pytest.fixture(scope="session")
def weak_generator(bpe_feat, tmp_path_factory):
    """A generator after 2 steps: its samples are nearly random, so replacements are detectable in a
    short test (against a unigram-level generator a tiny discriminator needs far more steps)."""
    out = tmp_path_factory.mktemp("gen") / "weak"
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], out, max_steps=2))
    return out / "generator"


def unigram_accuracy(features_dir):
    """Accuracy of always predicting the most frequent non-special token."""
    import features
    ids = np.asarray(features.PretrainingFeatures(str(features_dir)).split("train"), dtype=np.int64)
    counts = np.bincount(ids[:, 1:-1].ravel())
    return counts.max() / counts.sum()


# ---------------------------------------------------------------- generator
def test_generator_learns_and_beats_unigram(trained_generator, bpe_feat):
    train = rows(trained_generator)
    assert train[-1]["mlm_loss"] < train[0]["mlm_loss"] - 0.4
    assert train[-1]["mlm_loss"] < np.log(2000) - 1.0  # well below a uniform guess
    valid = rows(trained_generator, "valid")[-1]
    assert valid["mlm_accuracy"] > unigram_accuracy(bpe_feat[0]) * 1.25, valid  # 5.6% against 3.3%
    for r in train:
        assert abs(r["mask_ratio"] - 0.15) < 0.02 and r["tokens_per_sec"] > 0 and r["lr"] >= 0
        assert {"step", "loss", "mlm_accuracy", "sbo_loss", "mean_span_length"} <= set(r)
    done = [json.loads(line) for line in open(trained_generator / "metrics.jsonl") if "event" in line]
    assert done[-1]["ranks_in_sync"] is True


def test_saved_generator_loads_in_transformers_with_identical_outputs(trained_generator):
    from transformers import AutoTokenizer, ElectraForMaskedLM
    saved = trained_generator / "generator"
    model = ElectraForMaskedLM.from_pretrained(saved).eval()
    ours = mse.load_generator(str(saved)).eval()
    tok = AutoTokenizer.from_pretrained(saved)
    ids = torch.tensor([tok("The game was released in Japan .")["input_ids"]])
    with torch.no_grad():
        np.testing.assert_allclose(model(input_ids=ids).logits.numpy(), ours.mlm(input_ids=ids).logits.numpy(),
                                   rtol=1e-5, atol=1e-5)
    assert (saved / "model.safetensors").exists() and (saved / "span_heads.safetensors").exists()
    assert ours.sbo is not None


def test_generator_logits_only_at_masked_positions(bpe_feat):
    import features
    ds = features.MLMDataset(argument.MLM_trainDataArgs(features_dir=str(bpe_feat[0])), batch_size=4)
    batch = ds[0]
    gen_cfg, _ = mse.electra_configs("tiny", 2000, 128, num_hidden_layers=1)
    out = mse.SpanElectraGenerator(gen_cfg)(**batch)
    slots = batch["masked_lm_positions"].shape[1]
    assert out["logits"].shape == (4, slots, 2000)  # one row per prediction slot, not per token
    assert 0 < batch["masked_lm_weights"].sum() < 4 * slots
    assert torch.isfinite(out["loss"]) and out["sbo_loss"] > 0


# ---------------------------------------------------------------- discriminator
def test_two_stage_discriminator_beats_all_original(weak_generator, bpe_feat, tmp_path):
    out = tmp_path / "se"
    trainSpanElectra.main(se_config(bpe_feat[0], out, mode="two_stage", max_steps=100, learning_rate=2e-3,
                                    train_batch_size=24, generator_dir=str(weak_generator), eval_every=100,
                                    eval_batches=4, log_every=20))
    valid = rows(out, "valid")[-1]
    assert valid["disc_accuracy"] > 1 - valid["replaced_fraction"] + 0.004, valid
    assert valid["disc_precision"] > 0.3 and valid["rtd_loss"] < valid["rtd_base_loss"] - 0.05
    assert valid["disc_auc"] > 0.75 and rows(out)[-1]["disc_auc"] > rows(out)[0]["disc_auc"]
    assert 0.05 < valid["replaced_fraction"] < 0.16
    assert valid["disc_recall"] > 0
    from transformers import ElectraForPreTraining
    disc = ElectraForPreTraining.from_pretrained(out / "discriminator")
    assert disc.config.hidden_size == 128
    assert not (out / "generator").exists()  # two-stage saves only the discriminator


def test_joint_training_shares_embeddings_and_saves_both(bpe_feat, tmp_path):
    out = tmp_path / "joint"
    trainSpanElectra.main(se_config(bpe_feat[0], out, mode="joint", max_steps=20))
    train = rows(out)
    assert {"mlm_loss", "mlm_accuracy", "disc_loss", "disc_accuracy", "disc_precision", "disc_recall",
            "replaced_fraction"} <= set(train[-1])
    assert train[-1]["loss"] == pytest.approx(train[-1]["gen_loss"] + 50 * train[-1]["disc_loss"], rel=1e-4)
    from transformers import ElectraForMaskedLM, ElectraForPreTraining
    gen = ElectraForMaskedLM.from_pretrained(out / "generator")
    disc = ElectraForPreTraining.from_pretrained(out / "discriminator")
    assert torch.equal(gen.electra.embeddings.word_embeddings.weight, disc.electra.embeddings.word_embeddings.weight)
    # the exported discriminator fine-tunes through plain transformers
    from transformers import AutoTokenizer, ElectraForSequenceClassification
    tok = AutoTokenizer.from_pretrained(out / "discriminator")
    clf = ElectraForSequenceClassification.from_pretrained(out / "discriminator", num_labels=2)
    enc = tok(["a gripping , funny film .", "dull and far too long ."], padding=True, return_tensors="pt")
    loss = clf(**enc, labels=torch.tensor([1, 0])).loss
    loss.backward()
    assert torch.isfinite(loss) and clf.electra.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_gradient_disentangled_sharing():
    gen_cfg, disc_cfg = mse.electra_configs("tiny", 300, 32, num_hidden_layers=1)
    model = mse.SpanElectraJoint(gen_cfg, disc_cfg, gradient_disentangled=True)
    gen_out, disc_out, _ = model(joint_batch())
    disc_out["loss"].backward()  # the discriminator's loss alone
    table = model.discriminator.core.electra.embeddings.word_embeddings.weight
    assert table.grad is None or table.grad.abs().sum() == 0  # no gradient into the shared table
    assert model.embedding_delta.grad.abs().sum() > 0


def test_sampling_is_not_argmax_and_equal_samples_count_as_original():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(4000, 1)
    samples = mse.sample_tokens(logits)
    freq = torch.bincount(samples, minlength=3).float() / 4000
    np.testing.assert_allclose(freq.numpy(), torch.softmax(logits[0], 0).numpy(), atol=0.03)
    original = torch.tensor([[2, 7, 8, 3]])
    batch = {"original_ids": original, "masked_lm_positions": torch.tensor([[1, 2, 0]]),
             "masked_lm_weights": torch.tensor([[1.0, 1.0, 0.0]])}
    gen_out = {"logits": torch.tensor([[[0.0] * 7 + [50.0] + [0.0] * 2, [0.0] * 9 + [50.0], [50.0] + [0.0] * 9]])}
    corrupted, replaced = mse.corrupt(batch, gen_out)
    assert corrupted[0, 1] == 7 and replaced[0, 1] == 0  # sampled the original: labelled original
    assert corrupted[0, 2] == 9 and replaced[0, 2] == 1
    assert corrupted[0, 0] == 2 and replaced[0, 0] == 0  # a padding slot leaves [CLS] alone



def test_temperature_curriculum_smooths_samples_then_falls_to_one():
    from types import SimpleNamespace
    curriculum = SimpleNamespace(temperature_start=3.0, temperature_decay=0.5, max_steps=100)
    assert [trainSpanElectra.sampling_temperature(s, curriculum) for s in (0, 25, 50, 99)] == [3.0, 2.0, 1.0, 1.0]
    electra = SimpleNamespace(temperature_start=1.0, temperature_decay=0.5, max_steps=100)
    assert trainSpanElectra.sampling_temperature(0, electra) == 1.0
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(4000, 1)
    freq = torch.bincount(mse.sample_tokens(logits, temperature=3.0), minlength=3).float() / 4000
    np.testing.assert_allclose(freq.numpy(), torch.softmax(logits[0] / 3, 0).numpy(), atol=0.03)


def test_joint_training_follows_the_temperature_curriculum(bpe_feat, tmp_path, monkeypatch):
    """Generator samples are drawn at temperature_start, falling linearly to 1 over temperature_decay of the steps."""
    seen, real = [], mse.sample_tokens

    def spy(logits, rng=None, temperature=1.0):
        if torch.is_tensor(temperature):  # the training step's (evaluation passes a plain 1.0)
            seen.append(round(float(temperature), 6))
        return real(logits, rng, temperature)
    monkeypatch.setattr(mse, "sample_tokens", spy)
    trainSpanElectra.main(argument.SE_trainingConfig(
        features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "se"), mode="joint", max_steps=2, train_batch_size=4,
        temperature_start=3.0, temperature_decay=1.0, **SMALL))
    assert seen == [3.0, 2.0]  # step 0: 3; step 1: 3 + (1 - 3) x 1/2


# ---------------------------------------------------------------- resume, processes, bad input
def test_resumed_run_matches_uninterrupted(bpe_feat, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], full, max_steps=20, save_every=10))
    shutil.copytree(full, part)
    os.remove(part / "checkpoint-00000020.pt")
    shutil.rmtree(part / "generator")
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], part, max_steps=20, save_every=10, resume_from="latest"))
    a, b = rows(full), rows(part)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [5, 10, 15, 20]
    for x, y in zip(a, b):
        for key in ("loss", "mlm_loss", "mlm_accuracy", "lr"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (x["step"], key)


def ctrl_c(*args, **kwargs):
    """A stand-in for a function that the user's Ctrl-C stops."""
    raise KeyboardInterrupt


def test_a_run_resumed_from_an_earlier_checkpoint_continues_only_itself(bpe_feat, tmp_path, monkeypatch, caplog):
    """--resume_from checkpoint-10 beside checkpoints 15 and 20: the steps past 10 are trained again, so 15 and 20
    go. Stopped before its next checkpoint, the run resumed with 'latest' goes on from 10, not from the 20 it
    replaced, and ends as a run never stopped or rewound."""
    full, part = tmp_path / "full", tmp_path / "part"
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], full, max_steps=20, save_every=5, keep_checkpoints=4))
    shutil.copytree(full, part)
    shutil.rmtree(part / "generator")
    with pytest.raises(KeyboardInterrupt), monkeypatch.context() as mp:
        mp.setattr(tu, "save_training_state", ctrl_c)  # stopped as it would save step 15
        trainMLM_SpanElectra.main(gen_config(bpe_feat[0], part, max_steps=20, save_every=5, keep_checkpoints=4,
                                             resume_from=str(part / "checkpoint-00000010.pt")))
    assert [os.path.basename(p) for p in tu.list_checkpoints(str(part))] == ["checkpoint-00000005.pt",
                                                                             "checkpoint-00000010.pt"]
    assert "removed the later checkpoint(s) checkpoint-00000015.pt, checkpoint-00000020.pt" in caplog.text
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], part, max_steps=20, save_every=5, keep_checkpoints=4,
                                         resume_from="latest"))
    a, b = rows(full), rows(part)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [5, 10, 15, 20]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6), x["step"]


def test_the_done_row_is_written_once_the_models_are_saved(bpe_feat, tmp_path, monkeypatch):
    """A run stopped while saving its models has no 'done' row: metrics.jsonl never says finished over a model
    folder that is not there (or is a shorter run's)."""
    runs = ((trainMLM_SpanElectra, "save_generator", gen_config(bpe_feat[0], tmp_path / "gen", max_steps=2)),
            (trainSpanElectra, "save_discriminator", se_config(bpe_feat[0], tmp_path / "se", max_steps=2, mode="joint")))
    for script, saver, config in runs:
        with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
            mp.setattr(script, saver, ctrl_c)
            script.main(dataclasses.replace(config))
        events = [json.loads(line).get("event") for line in open(os.path.join(config.out_dir, "metrics.jsonl"))]
        assert "done" not in events and len(events) >= 2
        script.main(dataclasses.replace(config, resume_from="latest"))
        events = [json.loads(line).get("event") for line in open(os.path.join(config.out_dir, "metrics.jsonl"))]
        assert events[-1] == "done" and events.count("done") == 1


def test_resume_latest_without_checkpoint_starts_fresh_and_bad_checkpoint_falls_back(bpe_feat, tmp_path, caplog):
    import logging
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="span_electra"):
        trainMLM_SpanElectra.main(gen_config(bpe_feat[0], out, max_steps=10, save_every=5, resume_from="latest"))
    assert "no checkpoint" in caplog.text
    for damaged in (b"not a checkpoint", b""):  # random bytes, and an empty file (torch: EOFError, no message)
        (out / "checkpoint-00000010.pt").write_bytes(damaged)
        caplog.clear()
        state = tu.load_checkpoint("latest", str(out))
        assert state["step"] == 5  # the unreadable newest one is skipped
        assert "cannot read checkpoint" in caplog.text and "weights_only=False" not in caplog.text


def test_torchrun_two_processes_keep_equal_weights(bpe_feat, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = run_or_show_where_it_hung(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "trainMLM_SpanElectra.py"), "--features_dir", str(bpe_feat[0]), "--out_dir", str(out),
         "--max_steps", "6", "--log_every", "3", "--eval_every", "6", "--eval_batches", "1",
         "--num_hidden_layers", "1", "--train_batch_size", "8", "--device", "cpu"], timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    done = [json.loads(line) for line in open(out / "metrics.jsonl") if "event" in line][-1]
    assert done["processes"] == 2 and done["ranks_in_sync"] is True
    assert len(rows(out)) == 2  # only rank 0 writes


def test_bad_training_inputs(bpe_feat, bert_feat, trained_generator, tmp_path, capsys):
    not_a_generator = tmp_path / "empty"
    not_a_generator.mkdir()
    (not_a_generator / "config.json").write_text("{}")
    code, err = run_in_process(capsys, trainSpanElectra, argument.SE_trainingConfig, "--features_dir", bpe_feat[0],
                               "--out_dir", tmp_path / "o1", "--generator_dir", not_a_generator, "--max_steps", 1)
    assert_one_line_error(code, err, "generator_dir")
    with pytest.raises(SpanElectraError, match="another tokenizer"):
        trainSpanElectra.main(se_config(bert_feat[0], tmp_path / "o2", generator_dir=str(trained_generator / "generator"),
                                        max_steps=1))
    with pytest.raises(SpanElectraError, match="non-finite"):
        tu.check_finite(float("nan"), 7)
    code, err = run_in_process(capsys, trainMLM_SpanElectra, argument.MLM_trainingConfig, "--features_dir",
                               bpe_feat[0], "--out_dir", "/proc/forbidden", "--max_steps", 1)
    assert_one_line_error(code, err, "out_dir")
    code, err = run_in_process(capsys, trainMLM_SpanElectra, argument.MLM_trainingConfig, "--features_dir",
                               tmp_path / "missing", "--max_steps", 1)
    assert_one_line_error(code, err, "features_dir")


def test_disk_full_mid_run_is_one_line(bpe_feat, tmp_path, monkeypatch, capsys):
    """The out_dir filling up (or turning read-only) after training started: one line, exit 2."""
    import errno
    written = []

    def write_until_full(self, row):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        written.append(row)

    monkeypatch.setattr(tu.MetricsLog, "write", write_until_full)
    with pytest.raises(SystemExit) as exit_info:
        argument.run_main(trainMLM_SpanElectra.main, argument.MLM_trainingConfig, [
            "--features_dir", str(bpe_feat[0]), "--out_dir", str(tmp_path / "gen"), "--max_steps", "4",
            "--log_every", "1", "--num_hidden_layers", "1", "--train_batch_size", "4", "--device", "cpu"])
    err = capsys.readouterr().err  # the progress bar and the log share stderr; the error is its last line
    assert exit_info.value.code == 2 and "Traceback" not in err and len(written) == 1
    metrics_file = tmp_path / "gen" / "metrics.jsonl"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: '{metrics_file}': No space left on device; ") and "MB free there" in last
    assert last.endswith("; free some space or choose another --out_dir")

def test_new_discriminator_starts_at_the_base_rate():
    """The RTD head starts at the expected share of replaced tokens (no first steps spent, and no
    encoder collapse, on learning 'mostly original')."""
    import math
    from modelling_span_electra import SPAN_REPLACED_PRIOR, SpanElectraDiscriminator, electra_configs
    _, disc_cfg = electra_configs("tiny", 500, 64)
    disc = SpanElectraDiscriminator(disc_cfg, mask_ratio=0.2)
    bias = disc.core.discriminator_predictions.dense_prediction.bias
    assert torch.sigmoid(bias).item() == pytest.approx(0.2)
    assert torch.sigmoid(disc.span_classifier.bias).item() == pytest.approx(SPAN_REPLACED_PRIOR)
    assert math.isclose(torch.sigmoid(SpanElectraDiscriminator(disc_cfg).core.discriminator_predictions
                                      .dense_prediction.bias).item(), 0.15, rel_tol=1e-6)


def test_disc_auc_and_base_rate_loss():
    """AUC = share of (replaced, original) pairs ranked right; the base rate is the entropy of the
    replaced fraction."""
    import math
    import training_utils as tu
    scores = torch.tensor([0.9, 0.1, 0.8, 0.3, 0.2])
    labels = torch.tensor([True, False, False, True, False])
    # pairs (pos, neg): 0.9 beats all three, 0.3 beats 0.1 and 0.2 only -> 5 of 6
    assert tu.binary_auc(scores, labels).item() == pytest.approx(5 / 6)
    assert tu.binary_auc(scores, torch.zeros(5, dtype=torch.bool)).item() == 0.5
    # ties count half (Mann-Whitney): a discriminator that scores every token alike is at chance, in any order
    labels = torch.tensor([0, 0, 0, 0, 1, 1], dtype=torch.bool)
    assert tu.binary_auc(torch.tensor([1.0, 0, 1, 0, 1, 0]), labels).item() == pytest.approx(0.5)
    assert tu.binary_auc(torch.full((1000,), 0.25), torch.rand(1000, generator=torch.Generator().manual_seed(0)) < 0.15
                         ).item() == 0.5
    assert tu.binary_auc(torch.tensor([0.1, 0.5, 0.5, 0.9]), torch.tensor([False, True, False, True])).item() == \
        pytest.approx(3.5 / 4)  # 0.9 beats both originals; 0.5 beats 0.1 and ties 0.5
    assert tu.base_rate_loss(0.5) == pytest.approx(math.log(2))
    assert tu.base_rate_loss(0.15) == pytest.approx(-(0.15 * math.log(0.15) + 0.85 * math.log(0.85)))


def test_a_discriminator_at_chance_is_named_once(bpe_feat, tmp_path, monkeypatch, caplog):
    """Valid rows of the H100 ELECTRA run: the dip as the generator reaches word frequencies is not a
    collapse; AUC falling back to chance with the loss at the base rate is, and the run says so once.
    A discriminator that has not learned yet (at chance from its first evaluation) is not warned about."""
    import training_utils as tu
    assert not tu.at_chance({"disc_auc": 0.561, "rtd_loss": 0.4049, "rtd_base_loss": 0.4091})
    assert not tu.at_chance({"disc_auc": 0.514, "rtd_loss": 0.4014, "rtd_base_loss": 0.4038})
    assert tu.at_chance({"disc_auc": 0.501, "rtd_loss": 0.3959, "rtd_base_loss": 0.3959})
    collapsed = {"disc_auc": 0.5, "rtd_loss": 0.39, "rtd_base_loss": 0.39, "disc_loss": 0.4, "disc_accuracy": 0.87,
                 "disc_precision": 0.0, "disc_recall": 0.0}
    def warnings_of(aucs, out, **kw):
        rows = iter([dict(collapsed, disc_auc=auc) for auc in aucs])
        monkeypatch.setattr(trainSpanElectra, "evaluate", lambda *args: next(rows))
        caplog.clear()
        with caplog.at_level("WARNING", logger="span_electra"):
            trainSpanElectra.main(se_config(bpe_feat[0], tmp_path / out, mode="joint", eval_every=2,
                                            **{"max_steps": 8, **kw}))
        return [r.getMessage() for r in caplog.records if "at chance" in r.getMessage()]

    warnings = warnings_of([0.7, 0.5, 0.5, 0.5], "fell")
    assert len(warnings) == 1 and warnings[0].startswith("step 6: the discriminator is at chance (valid disc_auc 0.500, "
                                                         "and 0.500 at the evaluation before, down from 0.700")
    assert warnings_of([0.5, 0.505, 0.5, 0.52], "untrained") == []  # a short or early run: not learning yet
    # one evaluation at chance is not a collapse: a tiny joint run on the sample dipped to 0.494 and came back
    assert warnings_of([0.7, 0.494, 0.54, 0.5], "dipped") == []
    # stopped after learning, resumed at chance: the resumed run remembers the learning in metrics.jsonl
    assert warnings_of([0.7, 0.72], "resumed", max_steps=4, save_every=4) == []
    warnings = warnings_of([0.5, 0.5], "resumed", resume_from="latest", save_every=4)
    assert len(warnings) == 1 and warnings[0].startswith("step 8: the discriminator is at chance") and "0.720" in warnings[0]
    # ... and its last evaluation before the stop: at chance there and at the first one after is two in a row
    assert warnings_of([0.7, 0.5], "resumed2", max_steps=4, save_every=4) == []
    warnings = warnings_of([0.5, 0.6], "resumed2", resume_from="latest", save_every=4)
    assert len(warnings) == 1 and warnings[0].startswith("step 6: the discriminator is at chance")
    # the comparison's table marks the same runs '(collapsed)'
    valid = dict(collapsed, split="valid")
    assert tu.collapsed([dict(valid, disc_auc=a) for a in (0.7, 0.5, 0.5)])
    assert not tu.collapsed([dict(valid, disc_auc=a) for a in (0.5, 0.5, 0.5)])
    assert not tu.collapsed([dict(valid, disc_auc=a) for a in (0.7, 0.6, 0.5)])  # only the last one at chance
    # a train window over enough replaced tokens shows learning too: a collapse before the first evaluation
    train = {"step": 50, "disc_auc": 0.78, "replaced_tokens": tu.LEARNED_REPLACED}
    assert tu.collapsed([train, valid, valid]) and tu.learned_auc(train) == 0.78
    noisy = dict(train, replaced_tokens=tu.LEARNED_REPLACED - 1)  # a few hundred tokens' AUC is noise
    assert not tu.collapsed([noisy, valid, valid]) and tu.learned_auc(noisy) == 0.0
    assert not tu.collapsed([valid, train, valid])  # learning seen only after the first of the two: not counted
    # the run's own rows carry the count; a resumed run reads the learning and its last evaluation back from them
    logged = [r for r in map(json.loads, open(tmp_path / "fell" / "metrics.jsonl"))
              if "disc_auc" in r and "split" not in r]
    assert all(r["replaced_tokens"] > 0 for r in logged)
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "metrics.jsonl").write_text("\n".join(map(json.dumps, [noisy, train, valid, train])) + "\n")
    assert tu.collapse_history(tmp_path / "log") == (0.78, 0.78, [valid])


LOGGED_EVERY_STEP = dict(num_hidden_layers=1, log_every=1, eval_batches=2, train_batch_size=16, eval_batch_size=32,
                         device="cpu")


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
                                                mode="joint", eval_every=2, max_steps=4, **LOGGED_EVERY_STEP))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert not tu.collapsed([r for r in rows if "event" not in r])
    assert [r.getMessage() for r in caplog.records if "at chance" in r.getMessage()] == []


def test_init_from_a_trained_generator_starts_where_it_stopped(trained_generator, bpe_feat, tmp_path):
    """--init_from continues a trained model: its first loss is far below a fresh model's."""
    first = {}
    for name, init in (("fresh", None), ("continued", str(trained_generator))):
        out = tmp_path / name
        trainMLM_SpanElectra.main(gen_config(bpe_feat[0], out, max_steps=1, log_every=1, num_hidden_layers=2,
                                             train_batch_size=32, learning_rate=2e-3, seed=5, init_from=init))
        first[name] = rows(out)[0]["mlm_loss"]
    assert first["continued"] < first["fresh"] - 1.0, first


def test_logged_rows_are_time_stamped_in_order(trained_generator):
    """Every metrics.jsonl row carries the time it was written (seconds since the epoch), in order;
    the pipeline's closing figures leave the stamp out."""
    import run_pipeline
    with open(trained_generator / "metrics.jsonl", encoding="utf-8") as f:
        stamps = [json.loads(line)["time"] for line in f]
    assert len(stamps) >= 7 and stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 3600
    finals = run_pipeline.final_valid_metrics(str(trained_generator))
    assert "time" not in finals and 0 < finals["mlm_accuracy"] < 1


def test_features_without_a_valid_split_say_the_run_is_never_evaluated(bpe_tok, tmp_path, caplog):
    feat, _ = build_features(bpe_tok, tmp_path / "feat", valid_input="", valid_fraction=0.0)
    caplog.set_level("INFO", logger="span_electra")
    trainMLM_SpanElectra.main(gen_config(feat, tmp_path / "gen", max_steps=2, eval_every=1))
    assert "has no valid split, so this run is never evaluated" in caplog.text
    assert rows(tmp_path / "gen", split="valid") == []


def test_a_pipeline_rerun_in_the_other_mode_removes_the_previous_runs(tmp_path, monkeypatch):
    """run_pipeline.py starts over: a joint re-run removes the two-stage runs an earlier call left (the
    explorer would pair their generator with the new discriminator), and leaves folders that hold no run. A run
    is the pipeline's by the features folder its run.json records (resolved: a re-run from another working
    folder, with a relative --out_dir, knows it), or by its features' digest (the out_dir moved since)."""
    import run_pipeline
    out = tmp_path / "p"
    (out / "features").mkdir(parents=True)
    (out / "features" / "meta.json").write_text(json.dumps({"content_digest": {"train": "d1"}}))

    def run_in(name, features, digest="d1"):
        (out / name).mkdir()
        (out / name / "metrics.jsonl").write_text("{}\n")
        (out / name / "run.json").write_text(json.dumps({"run_id": "r", "fixed": {"train_sequences_digest": digest},
                                                         "folders": {"features_dir": os.path.realpath(features)}}))
    run_in("generator", out / "features")
    run_in("two_stage", out / "features")
    (out / "joint").mkdir()
    (out / "joint" / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "p" / "joint")  # another working folder, the out_dir named relative to it
    run_pipeline.remove_other_mode(os.path.join("..", "..", "p"), "joint")
    assert sorted(p.name for p in out.iterdir()) == ["features", "joint"]
    run_pipeline.remove_other_mode(str(out), "two_stage")
    assert (out / "joint" / "notes.txt").read_text() == "mine"  # not a run: kept
    run_in("generator", tmp_path / "elsewhere", digest="d2")  # a user's run on other features: kept
    run_pipeline.remove_other_mode(str(out), "joint")
    assert (out / "generator" / "metrics.jsonl").exists()
    run_in("two_stage", tmp_path / "moved" / "features")  # the out_dir moved since: the same features' digest
    run_pipeline.remove_other_mode(str(out), "joint")
    assert not (out / "two_stage").exists() and (out / "generator").exists()


def test_pipeline_summary_says_each_figure_against_its_baseline():
    """The main job's closing lines: accuracy as a multiple of the frequency baseline (the MLM head's
    and the span-boundary head's), disc_auc against chance, each with its verdict in words."""
    import run_pipeline
    finals = {"generator": {"mlm_accuracy": 0.116, "mlm_baseline_accuracy": 0.042, "sbo_accuracy": 0.105},
              "discriminator": {"disc_auc": 0.567, "rtd_loss": 0.3671, "rtd_base_loss": 0.3738,
                                "disc_precision": 0.0, "disc_recall": 0.0}}
    mlm, sbo, disc = run_pipeline.learning_lines(finals)
    assert "MLM accuracy 11.6% (always predicting the most frequent token: 4.2%; 2.8x)" in mlm
    assert "learned more than word frequencies" in mlm
    assert "span-boundary head accuracy 10.5% (2.5x" in sbo
    assert "disc_auc 0.567 (chance: 0.5) -> tells replaced tokens from originals" in disc
    finals["generator"].update(mlm_accuracy=0.05, sbo_accuracy=0.04)
    finals["discriminator"]["disc_auc"] = 0.52
    mlm, _, disc = run_pipeline.learning_lines(finals)
    assert "not yet above the frequency baseline" in mlm and "near chance" in disc


def test_validation_of_a_joint_run_does_not_depend_on_the_number_of_processes(bpe_feat, monkeypatch):
    """Each valid batch gets the same generator samples whichever rank evaluates it: the per-batch figures
    of two ranks are those of one process, batch for batch."""
    import features as feats
    config = se_config(bpe_feat[0], "unused", mode="joint", eval_batches=4, eval_batch_size=8)
    model, _ = trainSpanElectra.build_model(config, feats.PretrainingFeatures(str(bpe_feat[0])))
    seen = []
    def recording(*args, **kwargs):
        loss, metrics = original(*args, **kwargs)
        seen.append(float(metrics["disc_loss"]))
        return loss, metrics
    original = trainSpanElectra.loss_and_metrics
    monkeypatch.setattr(trainSpanElectra, "loss_and_metrics", recording)
    by_batch = {}
    for world_size in (1, 2):
        for rank in range(world_size):
            dataset = feats.SEDataset(config, 8, seed=config.seed, shuffle=False, rank=rank, world_size=world_size,
                                      split="valid")
            seen.clear()
            trainSpanElectra.evaluate(model, dataset, config, tu.Runtime(torch.device("cpu")))
            for i, loss in enumerate(seen):
                by_batch.setdefault(i * world_size + rank, []).append(loss)
    assert sorted(by_batch) == [0, 1, 2, 3]
    assert all(len(v) == 2 and v[0] == pytest.approx(v[1], abs=1e-6) for v in by_batch.values()), by_batch


def test_tokens_per_sec_leaves_out_evaluation_and_checkpoints(monkeypatch):
    """Throughput counts training time only: what runs inside paused() (evaluation, a checkpoint)
    does not lower the logged tokens/s, wherever in the window it falls."""
    now = [100.0]
    monkeypatch.setattr(tu.time, "perf_counter", lambda: now[0])
    speed = tu.Throughput()
    speed.add(1000)
    now[0] += 1.0  # one second of training
    with speed.paused():
        now[0] += 30.0  # an evaluation
    speed.add(1000)
    now[0] += 1.0
    assert speed.rate() == pytest.approx(1000.0)
    now[0] += 2.0  # the next window starts at the read
    speed.add(4000)
    assert speed.rate() == pytest.approx(2000.0)


class SimulatedGpu:
    """A host and a GPU stream in milliseconds: work launched runs once the GPU is free, and an event
    completes when the GPU reaches it."""

    def __init__(self):
        self.host, self.free = 0.0, 0.0

    def step(self, host_ms, gpu_ms, launched_after=0.0):
        """The host spends host_ms on a step whose gpu_ms of GPU work it launches launched_after ms in."""
        self.free = max(self.free, self.host + launched_after) + gpu_ms
        self.host += host_ms

    def event(self):
        gpu = self

        class Event:
            def record(self):
                self.at = max(gpu.free, gpu.host)

            def query(self):
                return self.at <= gpu.host
        return Event()


@pytest.mark.parametrize("host_ms, gpu_ms, launched_after, expected", [
    (20.0, 16.0, 0.0, 0.0),  # host-bound: the GPU is done before the host begins the next step
    (20.0, 16.0, 10.0, 1.0),  # host-bound: the step's last kernels still run as the next begins
    (5.0, 16.0, 0.0, tu.GpuQueue.CAP)])  # GPU-bound: the host runs ahead until the cap
def test_gpu_queued_steps_tell_a_host_bound_loop_from_a_gpu_bound_one(host_ms, gpu_ms, launched_after, expected):
    """gpu_queued_steps (logged on a GPU): a host slower than the GPU finds at most the step it launched last
    still running as it begins the next; a faster one runs ahead, steps queue up. pace() averages over
    the window and resets."""
    gpu = SimulatedGpu()
    speed = tu.Throughput(new_event=gpu.event)
    windows = []
    for steps in (200, 10):
        for _ in range(steps):
            speed.step_begins()
            gpu.step(host_ms, gpu_ms, launched_after)
            speed.step_ends()
        windows.append(speed.pace()["gpu_queued_steps"])
    assert windows[1] == pytest.approx(expected)
    assert expected / 2 < windows[0] <= expected or windows[0] == expected == 0  # the host's lead built up in the first


def test_gpu_queued_steps_only_on_a_gpu():
    assert set(tu.Throughput(torch.device("cpu")).pace()) == {"gc_ms"}
    assert set(tu.Throughput().pace()) == {"gc_ms"}


def test_gc_ms_counts_the_collector_in_training_time_only():
    """gc_ms: the window's time in Python's garbage collector (a full collection stalls the loop), outside
    paused() (an evaluation's collections are not the training loop's)."""
    import gc
    speed = tu.Throughput()
    gc.disable()  # only the collections below
    try:
        garbage = []
        for _ in range(200_000):  # cycles only the collector frees, so the collection takes a while
            node = {}
            node["self"] = node
            garbage.append(node)
        del garbage, node
    finally:
        gc.enable()
    begin = time.perf_counter()
    gc.collect()
    spent = 1000 * (time.perf_counter() - begin)
    with speed.paused():
        gc.collect()
        gc.collect()
    gc_ms = speed.pace()["gc_ms"]
    assert 0.5 * spent <= gc_ms <= spent * 1.05 + 1
    assert speed.pace()["gc_ms"] < 0.5 * gc_ms  # reset by the read


@pytest.mark.parametrize("stop", [KeyboardInterrupt, argument.Terminated], ids=["ctrl_c", "sigterm"])
def test_a_stop_that_comes_during_a_collection_still_stops_the_run(stop, monkeypatch):
    """A Ctrl-C or SIGTERM handled while the gc_ms hook runs is raised inside it, and Python drops what a gc callback
    raises: the run went on (seen in a test run). The hook keeps it, and the next optimizer step raises it, as the
    same kind of stop."""
    import gc
    import signal

    class StopInside(dict):
        def __getitem__(self, key):  # the signal's handler, run at the hook's first bytecode
            monkeypatch.setattr(tu, "GC_CLOCK", {"seconds": 0.0, "began": 0.0})  # once
            raise stop()

    before = signal.signal(signal.SIGTERM, argument.raise_terminated)  # as run_main handles SIGTERM
    try:
        tu.gc_seconds()  # the hooks are in place
        monkeypatch.setattr(tu, "GC_CLOCK", StopInside(seconds=0.0, began=0.0))
        gc.collect()  # the signal comes, and is dropped by Python
        model = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        with pytest.raises(KeyboardInterrupt) as caught:  # the loop's next optimizer step stops the run
            tu.optimizer_step(model, optimizer, scheduler, 1.0)
        assert type(caught.value) is stop and scheduler.last_epoch == 0  # before the step
        tu.optimizer_step(model, optimizer, scheduler, 1.0)  # once
        monkeypatch.setattr(tu, "GC_CLOCK", StopInside(seconds=0.0, began=0.0))
        gc.collect()
        tu.setup_runtime("cpu")  # a stop the last run in this process never reached is not the next run's
        tu.optimizer_step(model, optimizer, scheduler, 1.0)
    finally:
        signal.signal(signal.SIGTERM, before)


def test_parameter_counts_read_for_tiny_models_too():
    """The log's parameter count: millions for real models, thousands (not '0.0M') for a converted tiny one."""
    import training_utils as tu
    assert tu.parameter_count(torch.nn.Linear(100, 100)) == "10.1k"
    assert tu.parameter_count(torch.nn.Linear(1000, 1000)) == "1.0M"
    frozen = torch.nn.Linear(1000, 1000)
    frozen.bias.requires_grad_(False)
    assert tu.parameter_count(frozen, trainable_only=True) == "1.0M" and tu.parameter_count(frozen) == "1.0M"


# ---------------------------------------------------------------- gradient accumulation and the learning rate
def test_gradient_accumulation_matches_one_large_batch(bpe_feat, tmp_path, monkeypatch):
    """train_batch_size 16 x gradient_accumulation_steps 2 gives the gradients and weights of one batch of 32."""
    data = argument.MLM_trainDataArgs(features_dir=str(bpe_feat[0]), masking="token")
    real_getitem = features.MLMDataset.__getitem__
    big = real_getitem(features.MLMDataset(data, 32), 0)
    halves = [{k: v[i * 16:(i + 1) * 16] for k, v in big.items()} for i in range(2)]
    # token masking of full rows: both halves have as many masked tokens, so their means average to the whole's
    assert halves[0]["masked_lm_weights"].sum() == halves[1]["masked_lm_weights"].sum()

    def fixed_batches(self, index):
        if not self.shuffle:  # evaluation
            return real_getitem(self, index)
        return big if self.batch_size == 32 else halves[index]
    monkeypatch.setattr(features.MLMDataset, "__getitem__", fixed_batches)
    real_configs = trainMLM_SpanElectra.electra_configs
    monkeypatch.setattr(trainMLM_SpanElectra, "electra_configs", lambda *a, **kw: real_configs(
        *a, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw))
    real_step, captured = tu.optimizer_step, []

    def spy(model, optimizer, scheduler, max_grad_norm, scaler=None):
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        real_step(model, optimizer, scheduler, max_grad_norm, scaler)
        captured.append((grads, {n: p.detach().clone() for n, p in model.named_parameters()}))
    monkeypatch.setattr(tu, "optimizer_step", spy)
    for batch_size, accumulation in ((32, 1), (16, 2)):
        trainMLM_SpanElectra.main(argument.MLM_trainingConfig(
            features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / f"b{batch_size}"), masking="token", max_steps=1,
            train_batch_size=batch_size, gradient_accumulation_steps=accumulation, **SMALL))
    (grads_big, weights_big), (grads_acc, weights_acc) = captured
    assert grads_big.keys() == grads_acc.keys() and len(grads_big) > 10
    for name in grads_big:
        torch.testing.assert_close(grads_acc[name], grads_big[name], rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(weights_acc[name], weights_big[name], rtol=0, atol=1e-5, msg=name)


def test_warmup_then_linear_decay_learning_rates():
    """The LR warms up linearly over warmup steps to the peak, then falls linearly to 0 at total steps (BERT)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = tu.warmup_linear_schedule(opt, 4, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([.25, .5, .75, 1, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)
    # a fraction of the steps, rounded: 0.29 x 100 is 28.999... in floats, and warms up over 29 steps
    assert [tu.warmup_steps(f, n) for f, n in ((0.29, 100), (0.29, 1500), (0.1, 1000), (0.05, 30), (0, 10))] == \
        [29, 435, 100, 2, 0]


def test_no_weight_decay_on_one_dimensional_parameters():
    """AdamW decays matrices only: biases and norm weights (ndim < 2, whatever their name) get weight decay 0."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Embedding(5, 4))
    opt = tu.build_optimizer(model, 1e-3, 0.01)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(decay) == len(named)
    assert {n: decay[id(p)] for n, p in named.items()} == {
        "0.weight": 0.01, "0.bias": 0.0, "1.weight": 0.0, "1.bias": 0.0, "2.weight": 0.01}


def test_adamw_is_fused_on_a_cpu_where_torch_has_the_kernel(monkeypatch):
    """On a CPU, AdamW takes torch's fused kernel where it exists (torch 2.4 on) and foreach before; both step the
    same weights to float rounding."""
    def trained(kernel_on_cpu):
        monkeypatch.setattr(tu, "fused_adamw_on_cpu", lambda: kernel_on_cpu)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
        weights = lambda: torch.cat([p.detach().flatten() for p in model.parameters()])  # noqa: E731
        start, opt = weights(), tu.build_optimizer(model, 1e-2, 0.01)
        for _ in range(5):
            model(torch.randn(4, 8)).square().sum().backward()
            opt.step()
            opt.zero_grad()
        assert (weights() - start).abs().max() > 1e-2  # the steps moved the weights
        return tu.kernel_flags(opt)[0], weights()
    (foreach_flags, foreach), (fused_flags, fused) = trained(False), trained(True)
    assert foreach_flags["foreach"] and not foreach_flags.get("fused") and fused_flags["fused"]
    torch.testing.assert_close(fused, foreach, rtol=1e-5, atol=1e-6)
    monkeypatch.undo()
    assert tu.fused_adamw_on_cpu() == (torch.__version__ >= "2.4")


# ---------------------------------------------------------------- metrics
def test_precision_and_recall_of_replaced_token_detection():
    """disc_precision = true positives / predicted replaced, disc_recall = true positives / actually replaced."""
    out = tu.finish_metrics({"tokens": 100.0, "replaced": 10.0, "predicted": 4.0, "true_positive": 2.0,
                             "correct": 90.0, "disc_loss": 0.8}, 2)
    assert out["disc_precision"] == pytest.approx(0.5) and out["disc_recall"] == pytest.approx(0.2)
    assert out["disc_accuracy"] == pytest.approx(0.9) and out["replaced_fraction"] == pytest.approx(0.1)
    assert out["disc_loss"] == pytest.approx(0.4)


def generator_out(weights, targets, predicted):
    """A generator output whose argmax at each slot is `predicted`."""
    logits = F.one_hot(torch.tensor(predicted), V).float()
    return {"weights": torch.tensor(weights), "targets": torch.tensor(targets), "logits": logits,
            "loss": torch.tensor(1.0), "mlm_loss": torch.tensor(1.0)}


def test_mask_ratio_counts_only_tokens_that_can_be_masked():
    """mask_ratio = masked slots / tokens other than each row's [CLS] and [SEP]."""
    slots = [[7, 8, 9, 0], [7, 0, 0, 0]]
    out = generator_out([[1., 1., 1., 0.], [1., 0., 0., 0.]], slots, slots)
    batch = {"input_ids": torch.zeros(2, 10, dtype=torch.long), "span_position": torch.zeros(2, 4, dtype=torch.long)}
    metrics = tu.generator_metrics(out, batch)
    assert metrics["mask_ratio"].item() == pytest.approx(4 / 16)


def test_mlm_accuracy_ignores_padding_slots():
    """mlm_accuracy counts real slots only: padding slots (weight 0, target 0) never count as right answers."""
    out = generator_out([[1., 1., 0., 0.]], [[7, 8, 0, 0]], [[7, 9, 0, 0]])
    batch = {"input_ids": torch.zeros(1, 10, dtype=torch.long), "span_position": torch.zeros(1, 4, dtype=torch.long)}
    metrics = tu.generator_metrics(out, batch, baseline_token=0)
    assert metrics["mlm_accuracy"].item() == pytest.approx(0.5)
    assert metrics["mlm_baseline_accuracy"].item() == 0.0  # the padding slots' target 0 is no hit either


def test_masking_far_short_of_its_ratio_is_said_at_the_first_log(bpe_feat, tmp_path, caplog):
    """Two prediction slots in 128-token rows hold a fraction of the 15% asked for: the first logged row says
    so, with mask_stats.py's advice, once."""
    caplog.set_level("WARNING", logger="span_electra")
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], tmp_path / "short", max_steps=4, log_every=2,
                                         max_predictions_per_seq=2))
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mask_ratio:")]
    assert len(warnings) == 1 and "spans are cut at the 2 prediction slots" in warnings[0]
    assert rows(tmp_path / "short")[0]["mask_ratio"] < 0.8 * 0.15
    caplog.clear()
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], tmp_path / "full", max_steps=2, log_every=2))
    assert not [r for r in caplog.records if r.getMessage().startswith("mask_ratio:")]


def test_a_far_too_high_learning_rate_is_warned_and_a_non_finite_loss_names_it(bpe_feat, tmp_path, capsys, caplog,
                                                                                monkeypatch):
    """--learning_rate 1 diverged without a word (its clipped loss stays finite): one warning line up front. A loss
    that does turn non-finite (weights poisoned after the first step, as a diverged step leaves them) stops the run
    at the next logged row with one error line naming --learning_rate, in both scripts (joint: the generator samples
    from NaN logits first)."""
    with caplog.at_level("WARNING", logger="span_electra"):
        trainMLM_SpanElectra.main(gen_config(bpe_feat[0], tmp_path / "high", max_steps=1, learning_rate=0.5))
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("learning_rate:")] == [
        "learning_rate: 0.5 is far above pre-training's usual 2e-4 to 5e-4 (ELECTRA; 3e-3 for the tiny preset): from "
        "0.01 the models here collapse or diverge; use e.g. --learning_rate 5e-4"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="span_electra"):
        trainMLM_SpanElectra.main(gen_config(bpe_feat[0], tmp_path / "usual", max_steps=1, learning_rate=3e-3))
    assert "learning_rate" not in caplog.text

    def diverged_step(model, *args):  # what a far too large step leaves: non-finite weights
        step(model, *args)
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))

    step = tu.optimizer_step
    monkeypatch.setattr(tu, "optimizer_step", diverged_step)
    for script, config_cls, extra in ((trainMLM_SpanElectra, argument.MLM_trainingConfig, []),
                                      (trainSpanElectra, argument.SE_trainingConfig, ["--mode", "joint"])):
        code, err = run_in_process(capsys, script, config_cls, "--features_dir", bpe_feat[0], "--out_dir",
                                   tmp_path / script.__name__, "--max_steps", 4, "--log_every", 2, "--num_hidden_layers",
                                   1, "--train_batch_size", 8, "--device", "cpu", *extra)
        assert_one_line_error(code, err, "loss: non-finite loss (nan) by step 2", "lower --learning_rate")


def test_more_data_workers_than_cores_are_capped_with_one_warning(bpe_feat, tmp_path, caplog, recwarn):
    """--num_workers 64 on a 2-core machine: torch warned in several lines per DataLoader and the workers only
    contended for the cores; now they are capped at the cores this process may use, said in one line."""
    cores = tu.available_cores()
    runtime = tu.Runtime(torch.device("cpu"))
    with caplog.at_level("WARNING", logger="span_electra"):
        assert tu.data_workers(64, runtime) == cores
        assert (tu.data_workers(cores, runtime), tu.data_workers(-1, runtime)) == (cores, 0)
    assert [r.getMessage() for r in caplog.records] == [
        f"num_workers: 64 is more than the {cores} CPU core(s) this process may use; starting {cores}"]
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], tmp_path / "out", max_steps=1, num_workers=cores + 1))
    assert not [w for w in recwarn if "worker" in str(w.message)], [str(w.message) for w in recwarn]


def test_an_optimizer_step_longer_than_the_train_split_is_warned(bpe_feat, caplog):
    """gradient_accumulation_steps x train_batch_size past the train split's sequences: the batch stream runs into
    the next epoch within one step, so the step reads sequences twice (was silent). The valid split is evaluated
    whole however large --eval_batch_size is (one batch of all its rows): nothing to say there."""
    runtime = tu.Runtime(torch.device("cpu"))
    config = gen_config(bpe_feat[0], "unused", train_batch_size=64, eval_batch_size=10**6)
    train_set, valid_set = tu.make_datasets(config, features.MLMDataset, runtime)
    assert len(valid_set) == 1 and len(valid_set.rows(0)) == len(valid_set.data)
    batches, sequences = len(train_set), len(train_set.data)
    with caplog.at_level("WARNING", logger="span_electra"):
        tu.make_datasets(gen_config(bpe_feat[0], "unused", train_batch_size=64, gradient_accumulation_steps=batches),
                         features.MLMDataset, runtime)
        assert not caplog.records
        tu.make_datasets(gen_config(bpe_feat[0], "unused", train_batch_size=64, gradient_accumulation_steps=batches + 1),
                         features.MLMDataset, runtime)
    assert [r.getMessage() for r in caplog.records] == [
        f"gradient_accumulation_steps: {batches + 1} x 64 sequences (x 1 process(es)) = {64 * (batches + 1)} per "
        f"optimizer step, more than the {sequences} of the train split, so a step reads some twice; use at most "
        f"--gradient_accumulation_steps {batches}"]


def test_a_stop_in_the_gc_hook_is_kept_where_python_names_the_callback_only_in_the_message(monkeypatch):
    """Pythons that report a gc callback's error without the callback object (err_msg 'Exception ignored while
    calling GC callback <function _time_gc ...>', object None) still have the stop kept; other unraisables
    go to the hook before."""
    import types
    passed_on = []
    monkeypatch.setattr(tu._stop_signal_in_gc_hook, "previous", passed_on.append, raising=False)
    monkeypatch.setattr(tu, "STOP_KEPT_IN_GC", [])
    for exc_type, obj, message in (
            (KeyboardInterrupt, None, f"Exception ignored while calling GC callback {tu._time_gc!r}"),
            (KeyboardInterrupt, None, "Exception ignored while calling GC callback <function other>"),
            (ValueError, tu._time_gc, None)):
        tu._stop_signal_in_gc_hook(types.SimpleNamespace(exc_type=exc_type, exc_value=exc_type(), exc_traceback=None,
                                                         err_msg=message, object=obj))
    assert tu.STOP_KEPT_IN_GC == [KeyboardInterrupt] and len(passed_on) == 2


def test_a_new_run_hands_back_the_heap_a_failed_run_left_frozen():
    """The compiled step freezes the heap after its first call and teardown hands it back; a run stopped by an
    error never tears down, so in a notebook its model (and on a GPU its memory) stayed out of every collection.
    The next run's setup unfreezes it."""
    import gc
    gc.freeze()
    try:
        assert gc.get_freeze_count() > 0
        tu.setup_runtime("cpu")
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
