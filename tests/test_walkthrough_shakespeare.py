"""A new user's walk-through on a corpus of their own (Tiny Shakespeare's layout: speaker lines, speeches
separated by blank lines, one file): the validation split must come from that corpus, not silently
from the bundled WikiText sample or from the training text itself."""
import sys

import pytest

from conftest import REPO, SAMPLE, build_features

sys.path.insert(0, str(REPO / "benchmarks"))
import compare_pretraining as cp  # noqa: E402

SPEECH = ("First Citizen:\nBefore we proceed any further, hear me speak.\nYou are all resolved rather to die "
          "than to famish?\n\nAll:\nResolved. resolved.\n\n")


def shakespeare_like(tmp_path, speeches=60):
    path = tmp_path / "input.txt"
    path.write_text(SPEECH * speeches, encoding="utf-8")
    return path


def test_own_corpus_with_the_default_valid_input_is_warned_about(bpe_tok, tmp_path, caplog):
    """valid_input defaults to data/sample/valid.tokens: `--train_input MY_CORPUS` alone validated on
    WikiText without a word (the log named the valid file only inside the progress bar's line)."""
    corpus = shakespeare_like(tmp_path)
    with caplog.at_level("WARNING", logger="span_electra"):
        _, meta = build_features(bpe_tok, tmp_path / "f", train_input=str(corpus), max_seq_len=32)
    warned = [r.getMessage() for r in caplog.records if "bundled sample" in r.getMessage()]
    assert len(warned) == 1 and "valid.tokens" in warned[0] and str(corpus) in warned[0]
    assert "--valid_fraction 0.01" in warned[0]
    assert meta["inputs"]["valid"] == [str(SAMPLE / "valid.tokens")]
    assert meta["num_documents"]["train"] == 120  # blank lines end documents: one per speech


def test_the_bundled_sample_with_its_own_valid_or_a_held_out_split_is_not_warned_about(bpe_tok, tmp_path, caplog):
    corpus = shakespeare_like(tmp_path)
    with caplog.at_level("WARNING", logger="span_electra"):
        build_features(bpe_tok, tmp_path / "a", max_seq_len=32)
        _, meta = build_features(bpe_tok, tmp_path / "b", train_input=str(corpus), valid_input="",
                                 valid_fraction=0.2, max_seq_len=32)
    assert "bundled sample" not in caplog.text
    assert meta["num_documents"]["train"] + meta["num_documents"]["valid"] == 120
    assert meta["num_documents"]["valid"] > 0


def test_compare_refuses_a_corpus_of_your_own_validated_on_the_scales_corpus(tmp_path, monkeypatch):
    """--train_input alone left valid_input to the scale's WikiText-2 valid file (where ../shared/data
    exists, silently)."""
    monkeypatch.setattr(cp, "prepare_data", lambda *args: pytest.fail("reached the data stage"))
    corpus = shakespeare_like(tmp_path)
    for given, empty in (("train_input", "valid_input"), ("valid_input", "train_input")):
        with pytest.raises(cp.SpanElectraError, match=rf"^{empty}: empty, so it would be the scale's corpus "
                                                      r"\('.*wiki.*'\) while --" + given):
            cp.main(cp.compare_args(**{given: str(corpus)}, tasks="", out_dir=str(tmp_path / "c")))
    assert not (tmp_path / "c").exists()


def test_compare_refuses_validating_on_the_training_text(tmp_path, monkeypatch):
    """The same file as train and valid: the table's valid MLM accuracy and disc_auc would measure
    memorising it (process.py's warning suggested --valid_fraction, which the comparison has not)."""
    monkeypatch.setattr(cp, "prepare_data", lambda *args: pytest.fail("reached the data stage"))
    corpus = shakespeare_like(tmp_path)
    for valid in (corpus, tmp_path):  # the file itself, or a folder holding it
        with pytest.raises(cp.SpanElectraError, match=r"^valid_input: '.*input.txt' is also in train_input"):
            cp.main(cp.compare_args(train_input=str(corpus), valid_input=str(valid), tasks="",
                                    out_dir=str(tmp_path / "c")))
        assert not (tmp_path / "c").exists()


def test_compare_packs_across_documents_when_asked(tmp_path, monkeypatch):
    """Speeches are shorter than 128 tokens: process.py's warning names --pack_across_documents, which the
    comparison now takes too; it reaches the features, names the data, and a default run's data is unchanged."""
    corpus = shakespeare_like(tmp_path)
    config = cp.compare_args(train_input=str(corpus), valid_input=str(SAMPLE / "valid.tokens"), tasks="",
                             out_dir=str(tmp_path / "c")).resolved()
    scale = cp.SCALES["tiny"]
    assert "pack_across_documents" not in cp.data_identity(config, scale)  # out_dirs built before the flag stay valid
    packed = cp.compare_args(**{**vars(config), "pack_across_documents": True})
    assert cp.data_identity(packed, scale)["pack_across_documents"] is True
    assert cp.section_name(packed) == "tiny-custom"
    class Built(Exception):
        pass

    def built(args):
        raise Built(args)
    monkeypatch.setattr(cp.create_vocab_SE, "main", lambda args: None)
    monkeypatch.setattr(cp.process, "main", built)
    (tmp_path / "c").mkdir()
    with pytest.raises(Built) as features:
        cp.prepare_data(packed, scale)
    assert features.value.args[0].pack_across_documents is True


def test_the_bundled_valid_default_is_found_from_another_folder(bpe_tok, tmp_path, monkeypatch):
    """`python ~/SpanElectra/process.py --train_input MY_TEXT` run outside the checkout read valid_input's
    default, 'data/sample/valid.tokens', relative to that folder and stopped; it now finds the bundled file."""
    import argument
    import process
    corpus = shakespeare_like(tmp_path)
    monkeypatch.chdir(tmp_path)
    meta = process.main(argument.feature_args(tokenizer_dir=str(bpe_tok), train_input=str(corpus), out_dir="feat",
                                              max_seq_len=32))
    assert meta["inputs"]["valid"] == [str(SAMPLE / "valid.tokens")] and meta["num_sequences"]["valid"] > 0
    assert (tmp_path / "feat" / "meta.json").is_file()
