"""Starting from released ELECTRA weights: the converted TensorFlow fixture's vocabulary (BERT's
special-token ids: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103) builds features, and
--init_from continues training from the converted models, in both training scripts."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from transformers import ElectraForMaskedLM, ElectraForPreTraining

import argument
import features
import modelling_span_electra as mse
import trainMLM_SpanElectra
import trainSpanElectra
from conftest import ELECTRA_TF as FIXTURE, SAMPLE, assert_one_line_error, build_features, read_json, run_in_process
from io_utils import SpanElectraError

BERT_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
TINY = dict(max_steps=2, log_every=1, eval_batches=1, train_batch_size=8, save_every=2, device="cpu")


@pytest.fixture(scope="module")
def bert_id_features(converted, tmp_path_factory):
    """Features of the bundled sample built with the converted model's own vocabulary."""
    return build_features(converted / "discriminator", tmp_path_factory.mktemp("feat") / "bert_ids", max_seq_len=64)


def test_features_keep_the_vocabularys_own_special_ids(bert_id_features):
    feat_dir, meta = bert_id_features
    assert meta["special_token_ids"] == BERT_IDS
    rows = np.fromfile(feat_dir / "train.bin", dtype=meta["dtype"]).reshape(-1, 64)
    assert (rows[:, 0] == 101).all() and (rows[:, -1] == 102).all()
    inner = rows[:, 1:-1]
    assert not np.isin(inner, [0, 101, 102, 103]).any()  # no special token inside the text
    # 256 rows: [MASK] goes to 80% of spans, not of tokens, so a small batch's token share swings widely
    batch = features.MLMDataset(argument.MLM_trainDataArgs(features_dir=str(feat_dir)), 256, seed=0)[0]
    weights = batch["masked_lm_weights"] > 0
    masked = torch.take_along_dim(batch["input_ids"], batch["masked_lm_positions"], 1)[weights]
    assert abs((masked == 103).float().mean() - 0.8) < 0.08  # [MASK] is 103 here, not our 4
    assert not np.isin(batch["masked_lm_ids"][weights].numpy(), list(BERT_IDS.values())).any()


def test_a_vocab_txt_alone_is_a_tokenizer(converted, tmp_path):
    """A transformers folder with vocab.txt only (no tokenizer.json) builds the same features."""
    folder = tmp_path / "bert_folder"
    folder.mkdir()
    (folder / "vocab.txt").write_text((FIXTURE / "vocab.txt").read_text(encoding="utf-8"), encoding="utf-8")
    a, meta = build_features(folder, tmp_path / "from_vocab", max_seq_len=64, valid_input="")
    b, _ = build_features(converted / "discriminator", tmp_path / "from_json", max_seq_len=64, valid_input="")
    assert meta["special_token_ids"] == BERT_IDS
    assert (a / "train.bin").read_bytes() == (b / "train.bin").read_bytes()


def joint_model_from(init_from, converted, bert_id_features, tmp_path):
    """A joint run's config and model started from init_from, its discriminator checked to hold the
    converted checkpoint's weights and the run's identity to name both pre-trained models."""
    config = argument.SE_trainingConfig(features_dir=str(bert_id_features[0]), out_dir=str(tmp_path / "se"),
                                        mode="joint", init_from=str(init_from), **TINY)
    model, inputs = trainSpanElectra.build_model(config, features.PretrainingFeatures(config.features_dir))
    reference = ElectraForPreTraining.from_pretrained(converted / "discriminator").state_dict()
    for name, value in model.discriminator.core.state_dict().items():
        assert torch.equal(value, reference[name]), name
    assert set(inputs) == {"init_generator_weights", "init_discriminator_weights"}
    return config, model


def test_joint_training_continues_from_the_converted_models(converted, bert_id_features, tmp_path):
    config, model = joint_model_from(converted, converted, bert_id_features, tmp_path)
    gen = ElectraForMaskedLM.from_pretrained(converted / "generator").state_dict()
    assert torch.equal(model.generator.mlm.electra.encoder.layer[0].output.dense.weight,
                       gen["electra.encoder.layer.0.output.dense.weight"])
    trainSpanElectra.main(config)
    rows = [r for r in map(json.loads, (tmp_path / "se" / "metrics.jsonl").read_text().splitlines())
            if "step" in r and "split" not in r and "event" not in r]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert ElectraForPreTraining.from_pretrained(tmp_path / "se" / "discriminator").config.hidden_size == 32
    run = read_json(tmp_path / "se" / "run.json")  # the folder is recorded; its weights' digests are the identity
    assert run["folders"]["init_from"] == os.path.realpath(converted) and "init_from" not in run["fixed"]
    assert {"init_discriminator_weights", "init_generator_weights"} <= run["fixed"].keys()


def test_generator_training_continues_from_the_converted_generator(converted, bert_id_features, tmp_path):
    config = argument.MLM_trainingConfig(features_dir=str(bert_id_features[0]), out_dir=str(tmp_path / "g"),
                                         init_from=str(converted / "generator"), **TINY)
    trainMLM_SpanElectra.main(config)
    saved = ElectraForMaskedLM.from_pretrained(tmp_path / "g" / "generator")
    assert saved.config.hidden_size == 24 and saved.config.vocab_size == 182


def test_init_from_with_features_of_another_vocabulary_is_one_line(converted, bpe_feat, tmp_path, capsys):
    code, err = run_in_process(capsys, trainSpanElectra, argument.SE_trainingConfig, "--mode", "joint", "--init_from",
                               converted, "--features_dir", bpe_feat[0], "--out_dir", tmp_path / "se", "--max_steps",
                               "1", "--device", "cpu")
    assert_one_line_error(code, err, "init_from:", "vocabulary", "--tokenizer_dir")


def test_size_flags_beside_init_from_are_refused(converted, bert_id_features, tmp_path, capsys):
    """The architecture comes from --init_from: a size flag beside it that differs would be silently ignored (the
    model's own sizes, as test_continued_training_starts_far_below_a_fresh_model gives, are accepted)."""
    code, err = run_in_process(capsys, trainMLM_SpanElectra, argument.MLM_trainingConfig, "--init_from", converted,
                               "--features_dir", bert_id_features[0], "--out_dir", tmp_path / "g", "--max_steps", "1",
                               "--num_hidden_layers", "6", "--device", "cpu")
    assert_one_line_error(code, err, "num_hidden_layers: 6, but the generator in", "has 2", "drop --num_hidden_layers")


def test_gen_initializer_range_beside_init_from_is_refused(bpe_feat, tmp_path):
    """--init_from starts the generator from its folder's weights: the initial std was silently ignored (its
    sibling size flags are refused), and the run's identity recorded a setting that did nothing."""
    for cls, extra in ((argument.MLM_trainingConfig, {}), (argument.SE_trainingConfig, {"mode": "joint"})):
        config = cls(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "o"), init_from=str(tmp_path),
                     gen_initializer_range=0.02, **extra)
        with pytest.raises(SpanElectraError, match="gen_initializer_range: --init_from"):
            config.validate()
    cls = argument.MLM_trainingConfig  # from scratch it still sets the std
    cls(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "o"), gen_initializer_range=0.02).validate()


def test_generator_sizes_in_two_stage_are_refused(bert_id_features, tmp_path, capsys):
    """Two-stage trains against a saved generator: a --gen_* size flag would be silently ignored."""
    code, err = run_in_process(capsys, trainSpanElectra, argument.SE_trainingConfig, "--features_dir",
                               bert_id_features[0], "--out_dir", tmp_path / "d", "--gen_hidden_size", "64",
                               "--max_steps", "1", "--device", "cpu")
    assert_one_line_error(code, err, "gen_hidden_size: two-stage trains against --generator_dir's saved generator")


def test_init_from_without_a_model_is_one_line(bert_id_features, tmp_path, capsys):
    code, err = run_in_process(capsys, trainMLM_SpanElectra, argument.MLM_trainingConfig, "--init_from", SAMPLE,
                               "--features_dir", bert_id_features[0], "--out_dir", tmp_path / "g", "--max_steps", "1",
                               "--device", "cpu")
    assert_one_line_error(code, err, "init_from:", "holds no generator")


def test_our_saved_span_heads_load_back(bpe_feat, tmp_path):
    """--init_from one of our runs: the discriminator's span head and the generator's SBO head come back."""
    first = argument.SE_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "a"), mode="joint",
                                       num_hidden_layers=1, **TINY)
    trainSpanElectra.main(first)
    again = argument.SE_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "b"), mode="joint",
                                       init_from=str(tmp_path / "a"), **TINY)
    model, _ = trainSpanElectra.build_model(again, features.PretrainingFeatures(again.features_dir))
    saved_disc = mse.load_pretrained_discriminator(str(tmp_path / "a" / "discriminator"), True, True)[0]
    saved_gen = mse.load_pretrained_generator(str(tmp_path / "a" / "generator"), True)[0]
    for mine, theirs in ((model.discriminator.span_head, saved_disc.span_head),
                         (model.discriminator.span_classifier, saved_disc.span_classifier),
                         (model.generator.sbo, saved_gen.sbo)):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), name


def test_continued_training_starts_far_below_a_fresh_model(converted, bert_id_features, tmp_path):
    """The fixture holds a model trained for 300 steps (tests/fixtures/train_fixture_weights.py): continued
    from its TensorFlow checkpoint, the first step's losses are far below a fresh model's on the same batch."""
    sizes = dict(model_size="tiny", embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, gen_hidden_size=24, gen_num_attention_heads=1, gen_intermediate_size=48)
    first = {}
    for name, init in (("fresh", None), ("continued", str(converted))):
        out = tmp_path / name
        trainSpanElectra.main(argument.SE_trainingConfig(
            features_dir=str(bert_id_features[0]), out_dir=str(out), mode="joint", init_from=init, seed=3,
            use_sbo=False, use_span_head=False, **{**TINY, "max_steps": 1, "train_batch_size": 32}, **sizes))
        first[name] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["continued"]["mlm_loss"] < first["fresh"]["mlm_loss"] - 1.0, first
    assert first["continued"]["rtd_loss"] < first["fresh"]["rtd_loss"], first


def test_plain_transformers_electra_folders_are_recognised(converted, bert_id_features, tmp_path):
    """Folders as transformers writes them (a copy of google/electra-small-discriminator and its
    generator: config.json with its architectures, weights, tokenizer; no files of ours) start a run."""
    plain = tmp_path / "plain"
    for kind, cls in (("discriminator", ElectraForPreTraining), ("generator", ElectraForMaskedLM)):
        cls.from_pretrained(converted / kind).save_pretrained(plain / kind)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            (plain / kind / name).write_bytes((converted / kind / name).read_bytes())
        assert not (plain / kind / "span_electra.json").exists()
    joint_model_from(plain, converted, bert_id_features, tmp_path)


def test_init_from_a_model_trained_on_shorter_rows_warns_and_a_missing_path_is_named(converted, bert_id_features,
                                                                                      tmp_path, caplog, capsys):
    """A discriminator trained on 64-token rows, continued on 128: its positions past 64 were never trained,
    which the run says (as two-stage says of its generator); a path that does not exist says so."""
    trainSpanElectra.main(argument.SE_trainingConfig(features_dir=str(bert_id_features[0]), out_dir=str(tmp_path / "a"),
                                                     mode="joint", model_size="tiny", num_hidden_layers=1, **TINY))
    longer, _ = build_features(converted / "discriminator", tmp_path / "f128", max_seq_len=128)
    again = argument.SE_trainingConfig(features_dir=str(longer), out_dir=str(tmp_path / "b"), mode="joint",
                                       init_from=str(tmp_path / "a"), **TINY)
    with caplog.at_level("WARNING", logger="span_electra"):
        trainSpanElectra.build_model(again, features.PretrainingFeatures(str(longer)))
    assert "init_from: the discriminator was trained on 64-token sequences, these features have 128" in caplog.text
    assert "init_from: the generator was trained on 64-token sequences" in caplog.text
    code, err = run_in_process(capsys, trainMLM_SpanElectra, argument.MLM_trainingConfig, "--init_from",
                               tmp_path / "nowhere", "--features_dir", longer, "--out_dir", tmp_path / "g",
                               "--max_steps", "1", "--device", "cpu")
    assert_one_line_error(code, err, "init_from:", "does not exist")


def test_embeddings_with_more_rows_than_the_vocabulary_train(tmp_path):
    """A checkpoint converted with a vocab.txt shorter than its embeddings (180 of 182 rows): features built
    with its tokenizer train the generator from it, and a fresh two-stage discriminator against it."""
    import convert_tf_checkpoint
    vocab = tmp_path / "vocab180.txt"
    vocab.write_text("".join((FIXTURE / "vocab.txt").read_text(encoding="utf-8").splitlines(True)[:180]), encoding="utf-8")
    conv = tmp_path / "conv"
    convert_tf_checkpoint.main(argument.convert_args(checkpoint=str(FIXTURE), out_dir=str(conv), vocab_file=str(vocab)))
    feat, meta = build_features(conv / "discriminator", tmp_path / "feat", max_seq_len=64, valid_input="")
    assert meta["vocab_size"] == 180
    gen = trainMLM_SpanElectra.main(argument.MLM_trainingConfig(features_dir=str(feat), out_dir=str(tmp_path / "g"),
                                                                init_from=str(conv), **TINY))
    assert ElectraForMaskedLM.from_pretrained(gen).config.vocab_size == 182
    disc = trainSpanElectra.main(argument.SE_trainingConfig(features_dir=str(feat), out_dir=str(tmp_path / "d"),
                                                            mode="two_stage", generator_dir=str(conv / "generator"),
                                                            **TINY))
    assert ElectraForPreTraining.from_pretrained(disc).config.vocab_size == 182
    import explore_SE  # the explorer's fills are tokens of the vocabulary, never the rows past it
    fills = explore_SE.Explorer(str(conv)).fill("the cat sat on the [[ mat ]] .", top_k=500)
    assert fills and all(token is not None and len(row) == 180 for _, row in fills for token, _ in row)
    # the generator samples replacements among the vocabulary's 180 ids only: the rows past it never occur in
    # text, so a replacement there would tell the discriminator 'replaced' for free (and a 180-row one could
    # not read it)
    joint = tmp_path / "j"
    trainSpanElectra.main(argument.SE_trainingConfig(features_dir=str(feat), out_dir=str(joint), mode="joint",
                                                     model_size="tiny", **TINY))
    config = argument.SE_trainingConfig(features_dir=str(feat), out_dir=str(tmp_path / "d2"), mode="two_stage",
                                        generator_dir=str(conv / "generator"), init_from=str(joint), **TINY)
    model, _ = trainSpanElectra.build_model(config, features.PretrainingFeatures(str(feat)))
    assert model.sample_vocab_size == 180 and model.frozen[0].config.vocab_size == 182
    batch = features.SEDataset(argument.SE_trainDataArgs(features_dir=str(feat)), 16, seed=0)[0]
    logits = torch.zeros(*batch["masked_lm_positions"].shape, 182)
    logits[..., 180:] = 50.0  # a generator that would pick the rows past the vocabulary every time
    corrupted, _ = mse.corrupt(batch, {"logits": logits}, torch.Generator().manual_seed(0), 1.0, model.sample_vocab_size)
    assert int(corrupted.max()) < 180
    trainSpanElectra.main(config)


def test_two_stage_from_a_folder_with_both_models_takes_its_generator(converted, bert_id_features, tmp_path,
                                                                      monkeypatch):
    """--mode two_stage --init_from CONVERTED (generator/ and discriminator/) with --generator_dir left at its
    default: the discriminator trains against CONVERTED/generator, the pair's own, not outputs/generator/generator."""
    monkeypatch.chdir(tmp_path)  # the default generator_dir is relative: an earlier run's generator there is not taken
    shutil.copytree(converted / "generator", tmp_path / "outputs" / "generator" / "generator")
    config = argument.SE_trainingConfig(features_dir=str(bert_id_features[0]), out_dir=str(tmp_path / "se"),
                                        mode="two_stage", init_from=str(converted), **TINY)
    trainSpanElectra.main(config)
    assert config.generator_dir == str(converted / "generator")
    saved = read_json(tmp_path / "se" / "trainSpanElectra_config.json")
    assert saved["generator_dir"] == str(converted / "generator")
    # --init_from naming the pair's discriminator folder itself finds the same generator
    config = argument.SE_trainingConfig(features_dir=str(bert_id_features[0]), out_dir=str(tmp_path / "se1"),
                                        mode="two_stage", init_from=str(converted / "discriminator"), **TINY)
    config.validate()
    assert config.generator_dir == str(converted / "generator")
    # a generator_dir given explicitly is kept, and a missing one still refused
    with pytest.raises(argument.SpanElectraError, match="generator_dir"):
        trainSpanElectra.main(argument.SE_trainingConfig(features_dir=str(bert_id_features[0]), mode="two_stage",
                                                         out_dir=str(tmp_path / "se2"), init_from=str(converted),
                                                         generator_dir=str(tmp_path / "nowhere"), **TINY))


def test_a_generator_trained_apart_is_told_its_embeddings_give_way(caplog):
    """Joint training from a pair trained apart uses the discriminator's embeddings for both: said in the log;
    a pair that already shares them (a joint run's, a released ELECTRA's) says nothing."""
    gen_config, disc_config = mse.electra_configs("tiny", 300, 32, num_hidden_layers=1)
    torch.manual_seed(0)
    generator, discriminator = mse.SpanElectraGenerator(gen_config), mse.SpanElectraDiscriminator(disc_config)
    with caplog.at_level("INFO", logger="span_electra"):
        joint = mse.SpanElectraJoint(gen_config, disc_config, generator=generator, discriminator=discriminator)
        assert "give way to the discriminator's" in caplog.text
        caplog.clear()
        mse.SpanElectraJoint(gen_config, disc_config, generator=joint.generator, discriminator=joint.discriminator)
    assert "give way" not in caplog.text
    assert joint.generator.mlm.generator_lm_head.weight is joint.discriminator.core.electra.embeddings.word_embeddings.weight


def test_a_model_size_that_contradicts_the_init_from_model_is_refused(converted, bert_id_features):
    """--init_from takes the folder's architecture: a --model_size whose preset differs would be silently ignored
    (was: --model_size small trained the converted 32-wide model without a word), so it is refused, naming the sizes."""
    feat = str(bert_id_features[0])
    joint = argument.SE_trainingConfig(features_dir=feat, mode="joint", init_from=str(converted), model_size="small",
                                       **TINY)
    with pytest.raises(SpanElectraError, match=r"^model_size: 'small', but the discriminator in '.*discriminator' has "
                                               r"embedding_size 16 \(the preset's: 128\), hidden_size 32 .*drop --model_size"):
        trainSpanElectra.build_model(joint, features.PretrainingFeatures(feat))
    generator = argument.MLM_trainingConfig(features_dir=feat, init_from=str(converted), model_size="base", **TINY)
    with pytest.raises(SpanElectraError, match=r"^model_size: 'base', but the generator in .* num_hidden_layers 2 "
                                               r"\(the preset's: 12\)"):
        trainMLM_SpanElectra.build_model(generator, features.PretrainingFeatures(feat))
    assert joint.given_model_size() == "small" and argument.SE_trainingConfig().given_model_size() is None
    # a preset the loaded model matches is fine: ELECTRA-Small's discriminator, and its generator, 256 wide where the
    # small preset's is 64 (generators' widths differ between releases; their embeddings and depth are compared)
    from transformers import ElectraConfig
    small = ElectraConfig(**argument.MODEL_PRESETS["small"][0])
    mse.check_model_size("small", {}, small, "discriminator", "electra-small")
    mse.check_model_size("small", {}, small, "generator", "electra-small-generator")  # its sizes are the discriminator's
    # size flags beside it are part of what it names
    mse.check_model_size("base", dict(embedding_size=128, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
                         small, "discriminator", "electra-small")


def test_a_typed_default_model_size_that_contradicts_the_init_from_model_is_refused(converted, bert_id_features,
                                                                                    tmp_path, capsys):
    """--model_size tiny typed on the command line is given, though it is the default (was: taken as left alone,
    and the 16-wide converted model trained without a word); left out, or at its default in a notebook's config
    (where a typed default can't be told apart), it is not."""
    feat = str(bert_id_features[0])
    flags = ["--features_dir", feat, "--mode", "joint", "--init_from", str(converted), "--device", "cpu",
             "--out_dir", str(tmp_path / "se")]
    for typed in (["--model_size", "tiny"], ["--model_s=tiny"]):  # as argparse reads it, abbreviated too
        assert argument.parse_config(argument.SE_trainingConfig, flags + typed).given_model_size() == "tiny"
    assert argument.parse_config(argument.SE_trainingConfig, flags).given_model_size() is None
    assert argument.SE_trainingConfig(init_from=str(converted), model_size="tiny").given_model_size() is None
    code, err = run_in_process(capsys, trainSpanElectra, argument.SE_trainingConfig, *flags, "--model_size", "tiny")
    assert_one_line_error(code, err, "model_size: 'tiny', but the discriminator in",
                          "embedding_size 16 (the preset's: 64)", "drop --model_size")
    generator = argument.parse_config(argument.MLM_trainingConfig, ["--features_dir", feat, "--init_from",
                                                                    str(converted), "--model_size", "tiny"])
    with pytest.raises(SpanElectraError, match=r"^model_size: 'tiny', but the generator in"):
        trainMLM_SpanElectra.build_model(generator, features.PretrainingFeatures(feat))
