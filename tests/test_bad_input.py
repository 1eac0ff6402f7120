"""Bad input: every user mistake ends in exit code 2 and one 'error: ...' line naming the field or
file (no traceback), and leaves nothing that looks complete behind."""
import json
import logging
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from conftest import (SAMPLE, assert_cli_error, build_features, count_tokens, read_json, run_cli, text_lines,
                      train_vocab)

import argument
import features
import mask_stats
import training_utils
from io_utils import SpanElectraError

SOME_TEXT = (SAMPLE / "valid.tokens").read_bytes()[:30000].rsplit(b"\n", 1)[0] + b"\n"


# ---------------------------------------------------------------- CLI cases, run in parallel once
def _vocab(d, *args):
    return ["create_vocab_SE.py", "--out_dir", d / "out", "--vocab_size", 500, *args]


def _process(d, tok, *args):
    return ["process.py", "--tokenizer_dir", tok, "--out_dir", d / "out", "--valid_input", "", *args]


def case_missing_data_dir(d, tok, feat):
    return _vocab(d, "--data_dir", d / "no_such_corpus"), ["data_dir", "no_such_corpus"], ["out"]


def case_empty_folder(d, tok, feat):
    (d / "corpus").mkdir()
    return _vocab(d, "--data_dir", d / "corpus"), ["data_dir", "no text file"], ["out/tokenizer.json"]


def case_folder_without_text_files(d, tok, feat):
    (d / "corpus").mkdir()
    (d / "corpus" / "notes.json").write_text('{"a": 1}')
    (d / "corpus" / "table.csv").write_text("a,b\n1,2\n")
    return _vocab(d, "--data_dir", d / "corpus"), ["data_dir", "no text file"], ["out/tokenizer.json"]


def case_empty_file(d, tok, feat):
    (d / "empty.txt").write_bytes(b"")
    return _vocab(d, "--data_dir", d / "empty.txt"), ["data_dir", "empty"], ["out/tokenizer.json"]


def case_only_blank_lines(d, tok, feat):
    (d / "blank.txt").write_text("\n \n\t\n\n   \n")
    return _vocab(d, "--data_dir", d / "blank.txt"), ["data_dir", "blank"], ["out/tokenizer.json",
                                                                            "out/se_tokenizer.json"]


def case_only_binary_files(d, tok, feat):
    (d / "corpus").mkdir()
    (d / "corpus" / "a.txt").write_bytes(bytes(range(256)) * 40)
    return _vocab(d, "--data_dir", d / "corpus"), ["data_dir", "binary"], ["out/tokenizer.json"]


def case_bpe_vocab_too_small(d, tok, feat):
    (d / "a.txt").write_bytes(SOME_TEXT)
    return (["create_vocab_SE.py", "--data_dir", d / "a.txt", "--out_dir", d / "out", "--vocab_size", 100],
            ["vocab_size", "100"], ["out"])


def case_unknown_tokenizer_type(d, tok, feat):
    (d / "a.txt").write_bytes(SOME_TEXT)
    return _vocab(d, "--data_dir", d / "a.txt", "--tokenizer_type", "XLNet"), ["tokenizer_type", "XLNet"], ["out"]


def case_max_seq_len_2(d, tok, feat):
    return _process(d, tok, "--train_input", SAMPLE / "valid.tokens", "--max_seq_len", 2), ["max_seq_len"], \
        ["out/meta.json"]


def case_missing_tokenizer_dir(d, tok, feat):
    return _process(d, d / "no_tokenizer", "--train_input", SAMPLE / "valid.tokens"), \
        ["tokenizer_dir", "no_tokenizer"], ["out"]


def case_tokenizer_dir_without_tokenizer(d, tok, feat):
    (d / "tok").mkdir()
    return _process(d, d / "tok", "--train_input", SAMPLE / "valid.tokens"), \
        ["tokenizer_dir", "tokenizer.json"], ["out"]


def case_missing_train_input(d, tok, feat):
    return _process(d, tok, "--train_input", d / "nothing.txt"), ["train_input", "nothing.txt"], ["out"]


def case_missing_valid_input(d, tok, feat):
    args = _process(d, tok, "--train_input", SAMPLE / "valid.tokens")
    args[args.index("--valid_input") + 1] = d / "no_valid.txt"
    return args, ["valid_input", "no_valid.txt"], ["out"]


def case_pipeline_missing_valid_input(d, tok, feat):
    """Found before the vocabulary is built, not after."""
    return (["run_pipeline.py", "--out_dir", d / "out", "--valid_input", d / "no_valid.txt"],
            ["valid_input", "no_valid.txt"], ["out"])


def case_pipeline_zero_learning_rate(d, tok, feat):
    """A training setting is checked before the vocabulary and features are built, too."""
    return (["run_pipeline.py", "--out_dir", d / "out", "--learning_rate", 0], ["learning_rate", "0"], ["out"])


def case_pipeline_no_validation_text(d, tok, feat):
    """Its report is the validation figures: no valid text is refused up front."""
    return (["run_pipeline.py", "--out_dir", d / "out", "--valid_input", "", "--valid_fraction", 0],
            ["valid_fraction", "no validation text", "--valid_input"], ["out"])


def case_pipeline_valid_fraction_holds_out_nothing(d, tok, feat):
    """1% of the sample's 6 documents is none: found once the features are built, before any training
    (was: an IndexError after both models had trained)."""
    return (["run_pipeline.py", "--out_dir", d / "out", "--train_input", SAMPLE / "valid.tokens", "--valid_input", "",
             "--valid_fraction", 0.01, "--vocab_size", 500],
            ["valid_fraction: 0.01 held out none of the 6 documents", "larger --valid_fraction"], ["out/generator"])


def case_pipeline_unclosed_explore_mark(d, tok, feat):
    return (["run_pipeline.py", "--out_dir", d / "out", "--explore_text", "The [[ cat sat ."],
            ["explore_text: a mark opened at character 5", "never closes"], ["out"])


def case_pipeline_explore_text_too_long(d, tok, feat):
    """More words than the models' positions: refused before the vocabulary is built (was: after training)."""
    return (["run_pipeline.py", "--out_dir", d / "out", "--explore_text", "word " * 600],
            ["explore_text: 600 words", "512 positions", "shorter text"], ["out"])


def case_pipeline_explore_text_too_many_tokens(d, tok, feat):
    """Fewer words than positions, but more tokens once the vocabulary is built (rare words cut into pieces):
    refused then, before the features are built and any model trains (was: after both models had trained)."""
    text = "The [[ cat ]] " + " ".join(f"zq{i}xj" for i in range(200))
    return (["run_pipeline.py", "--out_dir", d / "out", "--train_input", SAMPLE / "valid.tokens", "--vocab_size", 500,
             "--explore_text", text],
            ["explore_text: 1494 tokens with [CLS] and [SEP]", "more than the models' 512 positions", "shorter text"],
            ["out/features", "out/generator"])


def case_vocab_out_dir_not_utf8(d, tok, feat):
    """A folder name in another encoding (tokenizers writes only UTF-8 paths)."""
    return (["create_vocab_SE.py", "--data_dir", SAMPLE / "valid.tokens", "--out_dir", d / "caf\udce9"],
            ["out_dir", "caf\\udce9", "not a UTF-8 name"], ["caf\udce9"])


def case_process_out_dir_not_utf8(d, tok, feat):
    return (_process(d, tok, "--train_input", SAMPLE / "valid.tokens")[:-4] + ["--out_dir", d / "f\udce9"],
            ["out_dir", "not a UTF-8 name"], ["f\udce9"])


def case_documents_too_short(d, tok, feat):
    (d / "short.txt").write_text("a few words\n\nand another short document\n")
    return _process(d, tok, "--train_input", d / "short.txt", "--max_seq_len", 128), \
        ["train_input", "128"], ["out/meta.json"]


def case_process_mask_ratio_1_5(d, tok, feat):
    return _process(d, tok, "--train_input", SAMPLE / "valid.tokens", "--mask_ratio", 1.5), \
        ["mask_ratio", "1.5"], ["out"]


def case_stats_mask_ratio_0(d, tok, feat):
    return ["mask_stats.py", "--features_dir", feat, "--mask_ratio", 0], ["mask_ratio", "0"], []


def case_stats_without_features(d, tok, feat):
    return ["mask_stats.py", "--features_dir", d / "nofeat"], ["features_dir", "nofeat"], []


def case_stats_other_tokenizer(d, tok, feat):
    # features built with the BPE tokenizer, checked against a different one
    other = d / "other_tok"
    other.mkdir()
    for p in tok.iterdir():
        (other / p.name).write_bytes(p.read_bytes())
    info = read_json(other / "se_tokenizer.json")
    info["word_segmenter"] = "pyvi"
    (other / "se_tokenizer.json").write_text(json.dumps(info))
    return ["mask_stats.py", "--features_dir", feat, "--tokenizer_dir", other], ["tokenizer_dir"], []


def case_config_unknown_field(d, tok, feat):
    (d / "cfg.json").write_text(json.dumps({"max_seq_len": 64, "no_such_field": 1, "learning_rate": 3}))
    return _process(d, tok, "--train_input", SAMPLE / "valid.tokens", "--config", d / "cfg.json"), \
        ["--config", "no_such_field", "learning_rate"], ["out"]


def case_config_bad_json(d, tok, feat):
    (d / "cfg.json").write_text("{max_seq_len: 64")
    return _process(d, tok, "--config", d / "cfg.json"), ["--config", "JSON"], ["out"]


def case_config_missing_file(d, tok, feat):
    return _process(d, tok, "--config", d / "nope.json"), ["--config", "nope.json"], ["out"]


def case_bad_int_value(d, tok, feat):
    return _process(d, tok, "--max_seq_len", "abc"), ["max_seq_len", "abc"], ["out"]


def case_unknown_argument(d, tok, feat):
    return _process(d, tok, "--no_such_field", 3), ["no_such_field"], ["out"]


def case_more_slots_than_tokens(d, tok, feat):
    return (["mask_stats.py", "--features_dir", feat, "--max_predictions_per_seq", 1000],
            ["max_predictions_per_seq", "1000", "at most 126"], [])


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}
# One case per script runs as a real subprocess (`python script.py ...`); the others go through the same
# entry point, argument.run_main, in this process (a Python start with torch costs 2-5 s of CPU).
SUBPROCESS_CASES = {"missing_data_dir", "max_seq_len_2", "stats_mask_ratio_0", "config_unknown_field"}
ENTRY_POINTS = {"create_vocab_SE.py": ("create_vocab_SE", "tok_args"), "process.py": ("process", "feature_args"),
                "mask_stats.py": ("mask_stats", "mask_stats_args"), "run_pipeline.py": ("run_pipeline", "pipeline_args")}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, bpe_tok, bpe_feat):
    out = {}
    for name, fn in CASES.items():
        d = tmp_path_factory.mktemp(name)
        args, needles, absent = fn(d, bpe_tok, bpe_feat[0])
        out[name] = (d, [str(a) for a in args], needles, absent)
    return out


@pytest.fixture(scope="module")
def cli_results(prepared):
    """Run the subprocess cases once, two at a time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_cli, *prepared[name][1]) for name in SUBPROCESS_CASES}
        return {name: f.result() for name, f in futures.items()}


def _run_in_process(args, capsys):
    """argument.run_main(script.main, its config class, argv), as `python script.py argv` runs it."""
    import importlib
    module_name, cls_name = ENTRY_POINTS[args[0]]
    module = importlib.import_module(module_name)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        argument.run_main(module.main, getattr(argument, cls_name), args[1:])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_error(case, prepared, cli_results, capsys):
    d, args, needles, absent = prepared[case]
    result = cli_results[case] if case in SUBPROCESS_CASES else _run_in_process(args, capsys)
    line = assert_cli_error(result, *needles)
    assert len(line) < 600
    for rel in absent:
        assert not (d / rel).exists(), f"{rel} left behind after: {line}"
    # no temporary folder is left either
    assert not [p.name for p in d.rglob(".*tmp-*")]


# ---------------------------------------------------------------- in-process: recoverable input
def test_binary_file_among_text_files_is_skipped(tmp_path, caplog):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_bytes(SOME_TEXT)
    (corpus / "b.txt").write_bytes(b"\x00\x01\x02PK\x03\x04" + bytes(range(256)) * 20)
    (corpus / "c.tokens").write_bytes(b"\x7fELF\x00\x00" * 100)
    with caplog.at_level(logging.WARNING, logger="span_electra"):
        out = train_vocab(tmp_path / "tok", tokenizer_type="BPE", data_dir=str(corpus), vocab_size=500)
    assert "b.txt" in caplog.text and "c.tokens" in caplog.text and "binary" in caplog.text
    info = read_json(out / "se_tokenizer.json")
    assert info["num_files"] == 1
    assert info["num_bytes"] == len(SOME_TEXT)
    assert (out / "tokenizer.json").is_file() and info["vocab_size"] == 500


def test_empty_lines_are_fine(tmp_path, bpe_tok):
    lines = SOME_TEXT.decode().split("\n")
    text = "\n\n\n".join(lines) + "\n\n\r\n \n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    out = train_vocab(tmp_path / "tok", tokenizer_type="BERT", data_dir=str(tmp_path / "a.txt"), vocab_size=800)
    assert read_json(out / "se_tokenizer.json")["num_lines"] == sum(1 for l in lines if l.strip())
    feat_dir, meta = build_features(bpe_tok, tmp_path / "feat", train_input=str(tmp_path / "a.txt"),
                                    valid_input="", max_seq_len=32, doc_boundary="file")
    total = count_tokens(bpe_tok, text_lines([tmp_path / "a.txt"]))
    assert meta["num_tokens"]["train"] + meta["dropped_tail_tokens"]["train"] == total
    assert meta["num_documents"]["train"] == 1


def _long_line_corpus(tmp_path, max_seq_len):
    words = (SAMPLE / "train.tokens").read_text(encoding="utf-8").split()
    long_line = " ".join(words[:6000])
    assert len(long_line.encode()) > 100 * max_seq_len * 8 * 2  # cut into at least three pieces
    path = tmp_path / "long.txt"
    path.write_text("A short first line .\n" + long_line + "\nand a line after it .\n", encoding="utf-8")
    return path


def _check_long_line(tok_dir, tmp_path, caplog):
    path = _long_line_corpus(tmp_path, 16)
    with caplog.at_level(logging.WARNING, logger="span_electra"):
        _, meta = build_features(tok_dir, tmp_path / "feat", train_input=str(path), valid_input="", max_seq_len=16,
                                 doc_boundary="file")
    assert "line 2" in caplog.text and "longer than" in caplog.text
    assert meta["num_sequences"]["train"] > 500
    total = count_tokens(tok_dir, text_lines([path]))
    assert meta["num_tokens"]["train"] + meta["dropped_tail_tokens"]["train"] == total


def test_long_line_is_processed_in_pieces_wordpiece(bert_tok, tmp_path, caplog):
    _check_long_line(bert_tok, tmp_path, caplog)


def test_long_line_is_processed_in_pieces_bpe(bpe_tok, tmp_path, caplog):
    _check_long_line(bpe_tok, tmp_path, caplog)


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, bpe_tok, caplog):
    text = SOME_TEXT.replace(b" the ", b" th\xe9 ", 3).replace(b" of ", b" \xff\xfeof ", 2)
    assert text.count(b"\xe9") == 3
    (tmp_path / "bad.txt").write_bytes(text)
    with caplog.at_level(logging.WARNING, logger="span_electra"):
        out = train_vocab(tmp_path / "tok", tokenizer_type="BPE", data_dir=str(tmp_path / "bad.txt"), vocab_size=600)
    assert read_json(out / "se_tokenizer.json")["undecodable_bytes"] == 7
    _, meta = build_features(bpe_tok, tmp_path / "feat", train_input=str(tmp_path / "bad.txt"), valid_input="",
                             max_seq_len=32)
    assert meta["undecodable_bytes"] == 7
    assert "7 undecodable byte" in caplog.text
    lines = text.decode("utf-8", errors="replace").split("\n")
    total = count_tokens(bpe_tok, [l for l in lines if l.strip()])
    assert meta["num_tokens"]["train"] + meta["dropped_tail_tokens"]["train"] == total


def test_bert_vocab_smaller_than_alphabet(tmp_path):
    (tmp_path / "a.txt").write_bytes(SOME_TEXT)
    with pytest.raises(SpanElectraError, match="^vocab_size:"):
        train_vocab(tmp_path / "tok", tokenizer_type="BERT", data_dir=str(tmp_path / "a.txt"), vocab_size=40)
    assert not (tmp_path / "tok" / "tokenizer.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_rebuild_keeps_no_half_features(tmp_path, bpe_tok):
    (tmp_path / "short.txt").write_text("too short\n")
    with pytest.raises(SpanElectraError, match="^train_input:"):
        build_features(bpe_tok, tmp_path / "feat", train_input=str(tmp_path / "short.txt"), valid_input="")
    assert not (tmp_path / "feat" / "meta.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(SpanElectraError, match="^features_dir:"):
        features.PretrainingFeatures(str(tmp_path / "feat"))


def test_rebuild_replaces_features(tmp_path, bpe_tok, bert_tok):
    feat = tmp_path / "feat"
    _, first = build_features(bpe_tok, feat, train_input=str(SAMPLE / "valid.tokens"), valid_input="",
                              max_seq_len=64)
    _, second = build_features(bert_tok, feat, train_input=str(SAMPLE / "valid.tokens"), valid_input="",
                               max_seq_len=32)
    feats = features.PretrainingFeatures(str(feat))
    assert feats.meta == second and feats.max_seq_len == 32
    assert feats.split("train").shape == (second["num_sequences"]["train"], 32)
    feats.check_tokenizer(str(bert_tok))
    with pytest.raises(SpanElectraError):
        feats.check_tokenizer(str(bpe_tok))
    assert read_json(feat / "tokenizer" / "se_tokenizer.json")["tokenizer_type"] == "BERT"


# ---------------------------------------------------------------- in-process: datasets
def test_static_masking_without_static_masks(bert_feat):
    args = argument.MLM_trainDataArgs(features_dir=str(bert_feat[0]), static_masking=True)
    with pytest.raises(SpanElectraError, match="^static_masking:"):
        features.MLMDataset(args, batch_size=8)


def test_static_masks_saved_with_other_settings_are_refused(bpe_feat):
    """The saved masks were made with process.py's masking settings: a run asking for others is told,
    rather than trained on the saved ones and recorded as if it had its own."""
    args = argument.MLM_trainDataArgs(features_dir=str(bpe_feat[0]), static_masking=True, mask_ratio=0.3,
                                      masking="token")
    with pytest.raises(SpanElectraError, match=r"^static_masking: .* mask_ratio 0.15 \(this run: 0.3\); "
                                               r"masking 'span' \(this run: 'token'\)"):
        features.MLMDataset(args, 4)
    # the discriminator's defaults (ELECTRA's 85% [MASK], no random tokens) are not process.py's
    with pytest.raises(SpanElectraError, match=r"mask_replace_prob 0.8 \(this run: 0.85\)"):
        features.SEDataset(argument.SE_trainDataArgs(features_dir=str(bpe_feat[0]), static_masking=True), 4)
    same = argument.SE_trainDataArgs(features_dir=str(bpe_feat[0]), static_masking=True, mask_replace_prob=0.8,
                                     random_replace_prob=0.1, max_predictions_per_seq=30)
    assert features.SEDataset(same, 4)[0]["input_ids"].shape == (4, 128)
    # more slots are fine; fewer than the saved masks fill would unmask tokens: refused
    fewer = argument.MLM_trainDataArgs(features_dir=str(bpe_feat[0]), static_masking=True, max_predictions_per_seq=10)
    with pytest.raises(SpanElectraError, match=r"^max_predictions_per_seq: 10 prediction slots are fewer than the 24"):
        features.MLMDataset(fewer, 4)


def test_batch_larger_than_split(bpe_feat):
    n = bpe_feat[1]["num_sequences"]["valid"]
    args = argument.MLM_trainDataArgs(features_dir=str(bpe_feat[0]))
    with pytest.raises(SpanElectraError, match=str(n)):
        features.MLMDataset(args, batch_size=n + 1, split="valid")
    with pytest.raises(SpanElectraError, match=rf"^train_batch_size: {n} gives the {n} sequences of split 'valid' 1 "
                                               r"batch\(es\), fewer than the 2 process\(es\) each need one; use a smaller "
                                               "batch, fewer processes or a larger split"):
        features.MLMDataset(args, batch_size=n, world_size=2, split="valid")
    # evaluation keeps the last part batch: a batch of more than half the rows still gives each of 2 processes one
    assert len(features.MLMDataset(args, batch_size=n // 2 + 1, shuffle=False, world_size=2, split="valid")) == 1
    assert len(features.MLMDataset(args, batch_size=n, shuffle=False, split="valid")) == 1


def test_dataset_on_missing_split_or_folder(tmp_path, bpe_tok):
    _, meta = build_features(bpe_tok, tmp_path / "f", train_input=str(SAMPLE / "valid.tokens"), valid_input="")
    with pytest.raises(SpanElectraError, match="valid"):
        features.MLMDataset(argument.MLM_trainDataArgs(features_dir=str(tmp_path / "f")), batch_size=4, split="valid")
    with pytest.raises(SpanElectraError, match="^features_dir:"):
        features.MLMDataset(argument.MLM_trainDataArgs(features_dir=str(tmp_path / "nope")), batch_size=4)


def test_masking_rejects_bad_mask_ratio_in_process(bpe_feat):
    for value in (1.5, 0.0, -0.1, 1.0):
        with pytest.raises(SpanElectraError, match="^mask_ratio:"):
            features.MLMDataset(argument.MLM_trainDataArgs(features_dir=str(bpe_feat[0]), mask_ratio=value),
                               batch_size=8)


def test_corrupt_tokenizer_json(tmp_path, bpe_tok):
    broken = tmp_path / "tok"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(SpanElectraError, match="^tokenizer_dir:"):
        build_features(broken, tmp_path / "feat", train_input=str(SAMPLE / "valid.tokens"), valid_input="")
    assert not (tmp_path / "feat").exists()


@pytest.mark.parametrize("content", [{"a": torch.zeros(2)}, [1, 2], {"step": "5", "model": {}}])
def test_resume_from_a_file_that_is_no_training_checkpoint(tmp_path, content):
    """A state_dict, a list or a half-shaped dict given as --resume_from, or found as the only
    checkpoint-*.pt under 'latest', stops with one line that names the file (no KeyError)."""
    path = tmp_path / training_utils.CHECKPOINT_PATTERN.format(3)
    torch.save(content, path)
    with pytest.raises(SpanElectraError, match=f"^resume_from: cannot resume from '{path}' "
                                               r"\(not a checkpoint written by this project"):
        training_utils.load_checkpoint(str(path), str(tmp_path))
    with pytest.raises(SpanElectraError, match="^resume_from: no readable checkpoint among .*checkpoint-00000003.pt"
                                               r" \(not a checkpoint written by this project"):
        training_utils.load_checkpoint("latest", str(tmp_path))


def damaged_copy(feat, tmp_path):
    folder = tmp_path / "feat"
    shutil.copytree(feat, folder)
    return folder, read_json(folder / "meta.json")


@pytest.mark.parametrize("edit, reason", [
    ({"splits": "train"}, "splits must list the splits num_sequences counts"),
    ({"max_seq_len": "128"}, "max_seq_len and vocab_size must be integers"),
    ({"dtype": "float32"}, "dtype 'float32' is not uint16 or uint32"),
    ({"num_sequences": {"train": -1, "valid": 3}}, "num_sequences must map each split to a count")])
def test_a_hand_edited_meta_json_is_one_line(edit, reason, bpe_feat, tmp_path):
    folder, meta = damaged_copy(bpe_feat[0], tmp_path)
    (folder / "meta.json").write_text(json.dumps({**meta, **edit}))
    with pytest.raises(SpanElectraError, match=f"^features_dir: '.*meta.json' is damaged \\({reason}\\)"):
        features.PretrainingFeatures(str(folder))


def test_token_ids_past_the_vocabulary_are_one_line(bpe_feat, tmp_path):
    """A damaged train.bin (an id no embedding row has) stops the batch that reads it, naming the file."""
    folder, meta = damaged_copy(bpe_feat[0], tmp_path)
    data = np.memmap(folder / "train.bin", dtype=meta["dtype"], mode="r+")
    data[5] = meta["vocab_size"] + 7
    data.flush()
    dataset = features.MLMDataset(argument.MLM_trainDataArgs(features_dir=str(folder)), batch_size=8, shuffle=False)
    with pytest.raises(SpanElectraError, match=f"train.bin' holds token id {meta['vocab_size'] + 7}, past the "
                                               f"vocabulary of {meta['vocab_size']}"):
        dataset[0]
    dataset[1]  # other batches read on
    with pytest.raises(SpanElectraError, match="train.bin' holds token id"):  # the masking check reads it too
        mask_stats.main(argument.mask_stats_args(features_dir=str(folder), num_sequences=len(data) // 128))


def test_a_features_folder_with_another_tokenizer_is_refused(bpe_feat, bert_tok, tmp_path):
    """features_dir/tokenizer swapped for another vocabulary (its meta.json's tokenizer_hash tells)."""
    folder, _ = damaged_copy(bpe_feat[0], tmp_path)
    shutil.rmtree(folder / "tokenizer")
    shutil.copytree(bert_tok, folder / "tokenizer")
    with pytest.raises(SpanElectraError, match="^features_dir: '.*tokenizer' holds another tokenizer than the one "
                                               "the features were built with"):
        features.PretrainingFeatures(str(folder)).tokenizer


def test_a_data_workers_error_prints_as_its_one_line():
    """torch re-raises a worker's SpanElectraError with the worker's traceback: the error line keeps ours."""
    wrapped = ("Caught SpanElectraError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "features.py", line 254\nio_utils.SpanElectraError: features_dir: bad ids; rebuild\n')
    assert argument.without_worker_traceback(wrapped) == "features_dir: bad ids; rebuild"
    assert argument.without_worker_traceback("split: no such split") == "split: no such split"


def test_a_cut_short_missing_or_other_span_head_file_is_one_line(tmp_path):
    """span_heads.safetensors cut short (a save interrupted, a partial copy), missing where span_electra.json
    says there is a head (explore_SE used an untrained SBO head), or holding another head: one line each."""
    import torch
    from safetensors.torch import save_file
    import modelling_span_electra as mse
    head = torch.nn.Linear(2, 2)
    mse._load_heads({"sbo": None}, str(tmp_path))  # no head: no file needed
    with pytest.raises(SpanElectraError, match=f"^model_dir: '.*{mse.HEAD_FILE}' is missing, and span_electra.json "
                                               "says the model has its sbo head"):
        mse._load_heads({"sbo": head, "span_head": None}, str(tmp_path))
    (tmp_path / mse.HEAD_FILE).write_bytes(b"\x10\x00\x00")
    with pytest.raises(SpanElectraError, match=f"^model_dir: '.*{mse.HEAD_FILE}' is not a readable safetensors file"):
        mse._load_heads({"sbo": head}, str(tmp_path))
    save_file({"sbo.weight": torch.zeros(3, 2), "sbo.bias": torch.zeros(3)}, str(tmp_path / mse.HEAD_FILE))
    with pytest.raises(SpanElectraError, match="^model_dir: .* does not hold the sbo head span_electra.json describes"):
        mse._load_heads({"sbo": head}, str(tmp_path))
    save_file({"sbo.weight": torch.ones(2, 2), "sbo.bias": torch.ones(2)}, str(tmp_path / mse.HEAD_FILE))
    mse._load_heads({"sbo": head}, str(tmp_path))
    assert torch.equal(head.weight, torch.ones(2, 2))


def test_a_generator_whose_config_does_not_match_its_weights_is_one_line(tmp_path, caplog):
    """config.json edited or swapped beside the weights: one line naming a tensor and both shapes, not
    transformers' load report table and its 'look at the above report'."""
    import modelling_span_electra as mse
    gen_config, _ = mse.electra_configs("tiny", 300, 32, num_hidden_layers=1)
    folder = tmp_path / "generator"
    mse.save_generator(mse.SpanElectraGenerator(gen_config, use_sbo=True), str(folder))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 2 * config["intermediate_size"]}))
    with pytest.raises(SpanElectraError, match=r"^generator_dir: config.json in '.*generator' does not describe its "
                                               r"weights \(electra.encoder.layer.0.intermediate.dense.bias: \(\d+,\) in "
                                               r"the weights, \(\d+,\) by config.json; 3 tensors differ\)"):
        mse.load_generator(str(folder))
    assert "LOAD REPORT" not in caplog.text


def test_a_split_the_features_lack_names_the_fix(bpe_feat, tmp_path, capsys):
    """mask_stats.py --split valid on features built without a validation split: the line says what to do."""
    feat = tmp_path / "feat"
    shutil.copytree(bpe_feat[0], feat)
    meta = json.loads((feat / "meta.json").read_text())
    meta["splits"] = ["train"]
    (feat / "meta.json").write_text(json.dumps(meta))
    import mask_stats
    with pytest.raises(SystemExit) as stop:
        argument.run_main(mask_stats.main, argument.mask_stats_args, ["--features_dir", str(feat), "--split", "valid"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1] == (f"error: split: '{feat}' has no 'valid' split (it has train); use --split "
                                                "train, or build the features with --valid_input or --valid_fraction")
