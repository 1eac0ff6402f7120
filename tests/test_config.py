"""argument.py: --config files, command-line overrides, validation and the saved resolved config."""
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import SAMPLE, read_json, run_cli

import argument
from io_utils import SpanElectraError


def _write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


def test_defaults_without_arguments():
    cfg = argument.parse_config(argument.feature_args, [])
    assert cfg == argument.feature_args()
    assert (cfg.max_seq_len, cfg.mask_ratio, cfg.span_p, cfg.max_span_len) == (128, 0.15, 0.2, 10)
    assert (cfg.mask_replace_prob, cfg.random_replace_prob) == (0.8, 0.1)


def test_config_file_overrides_defaults_and_cli_wins(tmp_path):
    path = _write(tmp_path / "cfg.json", {"max_seq_len": 64, "seed": 7, "save_static_masks": True,
                                          "doc_boundary": "file", "mask_ratio": 0.2})
    cfg = argument.parse_config(argument.feature_args, ["--config", path])
    assert (cfg.max_seq_len, cfg.seed, cfg.save_static_masks, cfg.doc_boundary, cfg.mask_ratio) == \
        (64, 7, True, "file", 0.2)
    assert cfg.batch_lines == 2000  # untouched fields keep their defaults
    cfg = argument.parse_config(argument.feature_args, ["--max_seq_len", "32", "--config", path, "--seed", "9"])
    assert (cfg.max_seq_len, cfg.seed, cfg.save_static_masks, cfg.mask_ratio) == (32, 9, True, 0.2)


def test_config_file_null_and_empty_values(tmp_path):
    path = _write(tmp_path / "cfg.json", {"valid_input": None, "valid_fraction": 0.1})
    cfg = argument.parse_config(argument.feature_args, ["--config", path])
    assert cfg.valid_input is None and cfg.valid_fraction == 0.1
    cfg = argument.parse_config(argument.feature_args, ["--valid_input", ""])
    assert cfg.valid_input == ""


def test_bool_flags_on_the_command_line():
    assert argument.parse_config(argument.tok_args, ["--lowercase"]).lowercase is True
    assert argument.parse_config(argument.tok_args, ["--lowercase", "false"]).lowercase is False
    assert argument.parse_config(argument.feature_args, ["--save_static_masks", "true"]).save_static_masks is True


def test_config_equals_form(tmp_path):
    path = _write(tmp_path / "cfg.json", {"max_seq_len": 64})
    cfg = argument.parse_config(argument.feature_args, [f"--config={path}"])
    assert cfg.max_seq_len == 64


@pytest.mark.parametrize("content, needle", [
    ({"max_seq_len": 64, "no_such_field": 1}, "no_such_field"),
    ({"vocab_size": 100}, "vocab_size"),  # a field of another script's config
    ([1, 2, 3], "JSON object"),
    ("{not json", "not valid JSON"),
    (b'{"seed": "caf\xe9"}', "not UTF-8"),
])
def test_bad_config_files(content, needle, tmp_path):
    path = tmp_path / "cfg.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(SpanElectraError, match="^--config") as info:
        argument.parse_config(argument.feature_args, ["--config", str(path)])
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_config_file_missing_or_without_path(tmp_path):
    with pytest.raises(SpanElectraError, match="^--config: .* cannot be read .No such file"):
        argument.parse_config(argument.feature_args, ["--config", str(tmp_path / "none.json")])
    with pytest.raises(SpanElectraError, match="^--config"):
        argument.parse_config(argument.feature_args, ["--max_seq_len", "64", "--config"])


def test_unknown_command_line_field():
    with pytest.raises(SpanElectraError, match="no_such_field"):
        argument.parse_config(argument.feature_args, ["--no_such_field", "3"])
    with pytest.raises(SpanElectraError, match="max_seq_len"):
        argument.parse_config(argument.feature_args, ["--max_seq_len", "many"])



def test_a_boolean_given_as_both_forms_is_refused_and_a_repeat_overrides():
    """--save_model true --no_save_model contradicts itself; argparse would keep the last silently. The
    same flag twice is an override appended to a command: the last counts."""
    with pytest.raises(SpanElectraError, match=r"^save_model: given as both --save_model and --no_save_model; give one"):
        argument.parse_config(argument.finetune_args, ["--save_model", "true", "--no_save_model"])
    assert argument.parse_config(argument.feature_args, ["--max_seq_len", "64", "--max_seq_len=32"]).max_seq_len == 32
    assert argument.parse_config(argument.finetune_args, ["--no_save_model", "--no_save_model"]).save_model is False


@pytest.mark.parametrize("cls, field, value", [
    (argument.feature_args, "valid_fraction", 1.0),
    (argument.feature_args, "valid_fraction", -0.1),
    (argument.feature_args, "batch_lines", 0),
    (argument.feature_args, "doc_boundary", "chapter"),
    (argument.feature_args, "max_seq_len", 2),
    (argument.feature_args, "max_seq_len", 8),  # one masked token would be 17% of a sequence
    (argument.MLM_trainingConfig, "hidden_size", 256),  # the discriminator's: the generator keeps its preset
    (argument.MLM_trainingConfig, "num_attention_heads", 8),
    (argument.MLM_trainingConfig, "gen_hidden_size", -64),
    (argument.MLM_trainingConfig, "num_hidden_layers", 0),
    (argument.MLM_trainingConfig, "embedding_size", 0),
    (argument.feature_args, "mask_ratio", 1.5),
    (argument.feature_args, "mask_ratio", 0.0),
    (argument.feature_args, "mask_replace_prob", 1.2),
    (argument.feature_args, "span_p", float("inf")),
    (argument.MaskingArgs, "random_replace_prob", 0.25),  # 0.8 + 0.25 > 1
    (argument.MaskingArgs, "max_span_len", 0),
    (argument.mask_stats_args, "num_sequences", 0),
    (argument.tok_args, "vocab_size", 5),
    (argument.tok_args, "vocab_size", 10**9),  # tokenizers' trainer would abort the process
    (argument.tok_args, "max_text_mb", 1e308),  # its bytes overflow an int
])
def test_validation_names_the_field(cls, field, value, bpe_tok, bpe_feat):
    extra = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if "tokenizer_dir" in names and cls is argument.feature_args:
        extra["tokenizer_dir"] = str(bpe_tok)
    if "features_dir" in names:
        extra["features_dir"] = str(bpe_feat[0])
    cfg = cls(**extra, **{field: value})
    with pytest.raises(SpanElectraError, match=f"^{field}:") as info:
        cfg.validate()
    assert "\n" not in str(info.value)
    cls(**extra).validate()  # the defaults are valid


def test_data_args_defaults():
    se = argument.SE_trainDataArgs()
    assert (se.mask_replace_prob, se.random_replace_prob) == (0.85, 0.0)
    assert (argument.MLM_trainDataArgs().mask_replace_prob, argument.MLM_trainDataArgs().random_replace_prob) == \
        (0.8, 0.1)
    # a training config is its data and evaluation classes plus the loop: their defaults are its defaults
    assert issubclass(argument.SE_trainingConfig, (argument.SE_trainDataArgs, argument.SE_validDataArgs))
    assert issubclass(argument.MLM_trainingConfig, (argument.MLM_trainDataArgs, argument.MLM_validDataArgs))
    assert argument.SE_trainingConfig().mask_replace_prob == 0.85 and argument.MLM_trainingConfig().mask_replace_prob == 0.8


def test_every_field_is_declared_once():
    """Each field lives in one class (subclasses change defaults, never redeclare a field elsewhere)."""
    homes = {}
    for cls in (argument.tok_args, argument.feature_args, argument.DataArgs, argument.ValidDataArgs,
                argument.TrainingConfig, argument.mask_stats_args, argument.pipeline_args, argument.finetune_args):
        for klass in cls.__mro__:
            for name in vars(klass).get("__annotations__", {}):
                homes.setdefault(name, set()).add(klass.__name__)
    roots = {"MaskingArgs", "FeaturesArgs", "DataArgs", "ValidDataArgs", "TrainingConfig"}
    shared = {name: sorted(owners) for name, owners in homes.items() if len(owners & roots) > 1}
    assert not shared, shared


def test_save_config_round_trips(tmp_path):
    cfg = argument.feature_args(max_seq_len=77, valid_input=None, save_static_masks=True)
    argument.save_config(cfg, str(tmp_path), "process")
    data = read_json(tmp_path / "process_config.json")
    assert data.pop("config_class") == "feature_args"
    assert argument.feature_args(**data) == cfg


def test_saved_config_is_a_valid_config_file(tmp_path):
    cfg = argument.feature_args(max_seq_len=77, save_static_masks=True)
    argument.save_config(cfg, str(tmp_path), "process")
    again = argument.parse_config(argument.feature_args, ["--config", str(tmp_path / "process_config.json")])
    assert again == cfg


def test_process_cli_config_and_override(bpe_tok, tmp_path):
    out = tmp_path / "feat"
    cfg = _write(tmp_path / "cfg.json", {"max_seq_len": 64, "seed": 7, "tokenizer_dir": str(bpe_tok),
                                         "train_input": str(SAMPLE / "valid.tokens"), "valid_input": None,
                                         "out_dir": str(out / "ignored")})
    result = run_cli("process.py", "--config", cfg, "--max_seq_len", 32, "--out_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    meta = read_json(out / "meta.json")
    assert meta["max_seq_len"] == 32 and meta["splits"] == ["train"]
    saved = read_json(out / "process_config.json")
    assert saved["config_class"] == "feature_args"
    assert (saved["max_seq_len"], saved["seed"], saved["out_dir"], saved["valid_input"]) == (32, 7, str(out), None)
    assert saved["tokenizer_dir"] == str(bpe_tok)
    assert not (out / "ignored").exists()


def test_config_file_value_of_wrong_type_is_a_user_error(bpe_tok, tmp_path, capsys):
    import process
    cfg = _write(tmp_path / "cfg.json", {"max_seq_len": 64.5, "tokenizer_dir": str(bpe_tok),
                                         "train_input": str(SAMPLE / "valid.tokens"), "valid_input": None,
                                         "out_dir": str(tmp_path / "feat")})
    with pytest.raises(SystemExit) as info:
        argument.run_main(process.main, argument.feature_args, ["--config", cfg])
    assert info.value.code == 2
    assert "max_seq_len" in capsys.readouterr().err


def test_config_file_whole_number_float_becomes_int(tmp_path):
    cfg = _write(tmp_path / "cfg.json", {"max_seq_len": 64.0, "mask_ratio": 1})
    config = argument.parse_config(argument.feature_args, ["--config", str(cfg)])
    assert config.max_seq_len == 64 and isinstance(config.max_seq_len, int)
    assert config.mask_ratio == 1.0 and isinstance(config.mask_ratio, float)


def test_the_pipeline_explores_a_sentence_in_the_corpus_language():
    """run_pipeline.py's closing sentence: English by default, Vietnamese where pyvi segments the corpus
    (an English sentence read through a Vietnamese vocabulary shows only letter pieces)."""
    assert set(argument.EXPLORE_TEXTS) == set(argument.WORD_SEGMENTERS)
    assert argument.pipeline_args().explore_text == "" and "Việt Nam" in argument.EXPLORE_TEXTS["pyvi"]


def test_main_checks_the_config_a_notebook_gives_it(tmp_path, capsys):
    """main(config) from a notebook: a field of the wrong type or a config of another script is one line,
    as a bad flag is; a pathlib.Path stands for a path, an int for a float."""
    import pathlib

    import trainSpanElectra
    from io_utils import SpanElectraError
    with pytest.raises(SpanElectraError, match=r"^max_steps: '5' given to main\(\) is not an integer"):
        trainSpanElectra.main(argument.SE_trainingConfig(max_steps="5"))
    with pytest.raises(SpanElectraError, match=r"^config: this script takes a SE_trainingConfig, not a MLM_trainingConfig"):
        trainSpanElectra.main(argument.MLM_trainingConfig())
    config = argument.checked_config(argument.SE_trainingConfig(out_dir=pathlib.Path("x"), learning_rate=1),
                                     argument.SE_trainingConfig)
    assert config.out_dir == "x" and isinstance(config.learning_rate, float)
    assert argument.checked_config(None, argument.tok_args) == argument.tok_args()


def test_help_of_a_no_flag_says_what_it_does():
    parser_help = argument.config_parser(argument.MLM_trainingConfig).format_help()
    no_flag = parser_help[parser_help.index("  --no_use_sbo"):].split("\n  --")[0]
    assert "the same as --use_sbo false" in no_flag and "default" not in no_flag


def test_every_script_prints_its_help():
    """--help of every script's config class formats (a bare '%' in a help text made process.py's a traceback)."""
    import dataclasses
    classes = [c for c in vars(argument).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
               and c.__module__ == "argument" and c.__name__ != "MaskingArgs"]
    assert {"feature_args", "tok_args", "MLM_trainingConfig", "finetune_args", "compare_args"} <= {c.__name__ for c in classes}
    for cls in classes:
        text = argument.config_parser(cls).format_help()
        assert "--config" in text and all(f"--{f.name}" in text for f in dataclasses.fields(cls)), cls.__name__
    assert "(17% of English Wikipedia" in " ".join(argument.config_parser(argument.feature_args).format_help().split())


@pytest.mark.parametrize("root_level", [None, "WARNING"])
def test_main_called_from_a_notebook_logs_its_progress(root_level, tmp_path):
    """main(config) outside run_main (a notebook, python -c) shows the stages' INFO lines, also where
    the root logger is set up already to show warnings only (as in some hosted notebooks)."""
    setup = f"import logging; logging.basicConfig(level=logging.{root_level}); " if root_level else ""
    code = (f"{setup}import create_vocab_SE; from argument import tok_args; create_vocab_SE.main(tok_args("
            f"data_dir={str(SAMPLE / 'valid.tokens')!r}, vocab_size=400, out_dir={str(tmp_path / 'tok')!r}))")
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", code], cwd=argument.ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training a BPE vocabulary of 400" in result.stderr and "vocabulary: 1 files" in result.stderr


@pytest.mark.parametrize("config_cls, fields, needle", [
    (argument.explore_args, {"seed": -5}, "seed: -5 is out of range"),
    (argument.MLM_trainingConfig, {"seed": 2**32}, "seed: 4294967296 is out of range"),
    (argument.finetune_args, {"seeds": "-3,4"}, "seeds: '-3,4': seeds are integers in [0, 4294967295]"),
    (argument.compare_args, {"pretrain_seeds": "42,-1"}, "pretrain_seeds: '42,-1'"),
])
def test_seeds_outside_what_numpy_takes_are_one_line(config_cls, fields, needle):
    """numpy and torch take seeds in [0, 2**32): anything else is refused up front, not a traceback later."""
    with pytest.raises(SpanElectraError) as info:
        config = argument.checked_config(config_cls(**fields), config_cls)
        config.validate()
        for name in ("seed_list", "pretrain_seed_list"):
            if hasattr(config, name):
                getattr(config, name)()
    assert needle in str(info.value)


@pytest.mark.parametrize("fields, ok", [({"mask_ratio": 1.0}, False), ({"mask_ratio": 0.0}, False),
                                        ({"mask_ratio": 0.999}, True), ({"span_p": 1.0}, True),
                                        ({"span_p": 0.0}, False), ({"mask_replace_prob": 0.0}, True),
                                        ({"mask_replace_prob": 1.0, "random_replace_prob": 0.0}, True),
                                        ({"mask_ratio": float("nan")}, False)])
def test_range_checks_respect_open_and_closed_ends(fields, ok):
    """mask_ratio lies in (0, 1), span_p in (0, 1], replacement shares in [0, 1]; NaN is refused."""
    config = argument.MaskingArgs(**fields)
    if ok:
        config.validate()
    else:
        with pytest.raises(SpanElectraError) as e:
            config.validate()
        assert str(e.value).startswith(f"{next(iter(fields))}:")


def test_open_range_message_shows_its_brackets():
    """An out-of-range value's message gives the interval with '(' / ']' for open / closed ends."""
    with pytest.raises(SpanElectraError, match=r"use a value in \(0, 1\]"):
        argument.check_range(SimpleNamespace(p=1.5), "p", 0, 1, low_open=True)
    argument.check_range(SimpleNamespace(p=1), "p", 0, 1, low_open=True)
    argument.check_range(SimpleNamespace(p=0), "p", 0, 1)
    with pytest.raises(SpanElectraError, match=r"\[0, 1\)"):
        argument.check_range(SimpleNamespace(p=1), "p", 0, 1, high_open=True)


@pytest.mark.parametrize("field, value, expected", [("mask_ratio", 1, 1.0), ("max_span_len", 4.0, 4),
                                                    ("max_span_len", 4.5, None), ("max_span_len", True, None),
                                                    ("mask_ratio", True, None), ("masking", 3, None),
                                                    ("max_span_len", np.int64(4), 4), ("mask_ratio", np.float32(0.5), 0.5),
                                                    ("max_span_len", np.float64(4.5), None)])
def test_values_given_to_main_are_coerced_to_the_field_type_or_refused(field, value, expected):
    """main(config): an int for a float field becomes a float, a whole float an int (numpy's numbers alike, as a
    notebook's sweep gives them); 4.5 or True for a number is an error."""
    config = argument.MaskingArgs(**{field: value})
    if expected is None:
        with pytest.raises(SpanElectraError) as e:
            argument.checked_config(config, argument.MaskingArgs)
        assert str(e.value).startswith(f"{field}: {value!r}")
    else:
        out = argument.checked_config(config, argument.MaskingArgs)
        assert getattr(out, field) == expected and type(getattr(out, field)) is type(expected)


def test_seed_lists_refuse_repeats_and_accept_the_largest_seed():
    """--seeds: each seed once, integers in [0, 2**32 - 1], the largest included."""
    assert argument.seed_values(SimpleNamespace(s="0,4294967295"), "s") == [0, 4294967295]
    with pytest.raises(SpanElectraError, match="twice"):
        argument.seed_values(SimpleNamespace(s="1,2,1"), "s")
    with pytest.raises(SpanElectraError, match="seeds are integers"):
        argument.seed_values(SimpleNamespace(s="4294967296"), "s")


def test_the_explorers_top_k_is_a_report_not_a_vocabulary_dump(tmp_path):
    """--top_k 100000 would print every token of the vocabulary per masked word: refused past 100."""
    config = argument.explore_args(model_dir=str(tmp_path), text="The [[ cat ]] sat .", top_k=101)
    with pytest.raises(SpanElectraError, match=r"^top_k: 101 is out of range; use a value in \[1, 100\]"):
        config.validate()
    config.top_k = 100
    config.validate()


def test_flags_the_other_mode_would_ignore_are_refused(bpe_feat, tmp_path):
    """--mode joint trains its own generator: a --generator_dir given with it would be ignored; two-stage's
    generator is frozen: --gradient_disentangled would be ignored. Each is one line; the default
    generator_dir (and None, as run_pipeline.py passes) is no contradiction."""
    generator = tmp_path / "generator"
    generator.mkdir()
    (generator / "config.json").write_text("{}")
    features = str(bpe_feat[0])
    with pytest.raises(SpanElectraError, match=r"^generator_dir: '.*generator' with --mode joint, which trains its own"):
        argument.SE_trainingConfig(features_dir=features, mode="joint", generator_dir=str(generator)).validate()
    with pytest.raises(SpanElectraError, match="^gradient_disentangled: .* it needs --mode joint"):
        argument.SE_trainingConfig(features_dir=features, generator_dir=str(generator), gradient_disentangled=True).validate()
    argument.SE_trainingConfig(features_dir=features, mode="joint").validate()
    argument.SE_trainingConfig(features_dir=features, mode="joint", generator_dir=None).validate()
    # typed on the command line, even at its default value, it was meant: refused too
    typed = argument.parse_config(argument.SE_trainingConfig, ["--features_dir", features, "--mode", "joint",
                                                               "--generator_dir", argument.SE_trainingConfig.generator_dir])
    with pytest.raises(SpanElectraError, match=r"^generator_dir: .* with --mode joint, which trains its own"):
        typed.validate()
    # the generator run's out_dir given for the generator it saved: the error names the folder meant
    with pytest.raises(SpanElectraError, match=f"^generator_dir: '{tmp_path}' has no config.json; did you mean "
                                               f"'{generator}'"):
        argument.SE_trainingConfig(features_dir=features, generator_dir=str(tmp_path)).validate()


def test_typed_cls_sep_or_pad_in_an_explorer_text_is_refused():
    """The tokenizer adds [CLS] and [SEP] itself: typed mid-sentence (or [PAD]) they would be read as its markers
    and masked or scored as words; [MASK] and [UNK] may be typed."""
    with pytest.raises(SpanElectraError, match=r"^text: \[CLS\], \[SEP\] in the text: the tokenizer adds"):
        argument.explore_args(text="[CLS] the [[ cat ]] [SEP]").validate()
    assert argument.marks_problem("The [[ cat ]] sat on the [MASK] [UNK] .") is None
    argument.pipeline_args(mode="joint", generator_steps=0).validate()  # joint has no generator stage to size


def test_an_explorer_text_longer_than_the_models_positions_is_refused_up_front():
    """run_pipeline.py's explorer runs last: a text that cannot fit the models' 512 positions (each word is a token
    or more) is refused by validate(), before the vocabulary is built (was: after both models had trained)."""
    with pytest.raises(SpanElectraError, match=r"^explore_text: 600 words, so at least 602 tokens .* 512 positions"):
        argument.pipeline_args(explore_text="The [[ cat ]] " + "word " * 598).validate()
    argument.pipeline_args(explore_text="The [[ cat ]] " + "word " * 508).validate()  # 510 words + [CLS], [SEP] fit
    # longer features give the models more positions
    argument.pipeline_args(explore_text="word " * 600, max_seq_len=1024).validate()


def test_a_vietnamese_explorer_text_is_counted_in_segmented_words():
    """Vietnamese is counted as segmented: pyvi's Hà_Nội is one word, 8 syllables make 5."""
    pytest.importorskip("pyvi")
    sentence = "Hà Nội là thủ đô của Việt Nam "
    argument.pipeline_args(word_segmenter="pyvi", explore_text=sentence * 80).validate()  # 640 syllables, 400 words
    with pytest.raises(SpanElectraError, match=r"^explore_text: 520 words"):
        argument.pipeline_args(word_segmenter="pyvi", explore_text=sentence * 104).validate()
