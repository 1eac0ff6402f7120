"""The real corpus in ../shared/data (skipped when absent): viwiki valid, segmented with pyvi.

Kept small: a 3000-entry vocabulary trained on viwiki.valid.txt (~350 kB, 100 articles) and features
built from the same file."""
import numpy as np
import pytest

from conftest import (build_features, check_segmented_words_whole, count_tokens, read_json, text_lines,
                      token_strings, train_vocab)

import argument
import features
import masking
import process


@pytest.fixture(scope="module")
def viwiki_valid(shared_data):
    path = shared_data / "viwiki" / "viwiki.valid.txt"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="module")
def viwiki_tok(viwiki_valid, tmp_path_factory):
    pytest.importorskip("pyvi")
    return train_vocab(tmp_path_factory.mktemp("viwiki") / "tok", tokenizer_type="BPE", data_dir=str(viwiki_valid),
                       vocab_size=3000, word_segmenter="pyvi")


@pytest.fixture(scope="module")
def viwiki_feat(viwiki_tok, viwiki_valid, tmp_path_factory):
    return build_features(viwiki_tok, tmp_path_factory.mktemp("viwiki") / "feat", train_input=str(viwiki_valid),
                          valid_input="", max_seq_len=128)


def test_viwiki_vocabulary(viwiki_tok):
    info = read_json(viwiki_tok / "se_tokenizer.json")
    assert info["word_segmenter"] == "pyvi" and info["vocab_size"] == 3000
    tok = process.load_tokenizer(str(viwiki_tok))[0]
    vocab = tok.get_vocab()
    assert sum(1 for t in vocab if "_" in t.strip("_")) > 200
    for word in ("Việt_Nam", "Hà_Nội"):
        ids = tok.encode(word, add_special_tokens=False).ids
        assert len(ids) == 1 and tok.decode(ids).strip() == word, word


def test_viwiki_features(viwiki_feat, viwiki_tok, viwiki_valid):
    from pyvi import ViTokenizer
    feat_dir, meta = viwiki_feat
    assert meta["word_segmenter"] == "pyvi"
    assert meta["splits"] == ["train"]
    # one blank line between articles: the README's 100 documents
    assert meta["num_documents"]["train"] == 100
    assert meta["undecodable_bytes"] == 0
    total = count_tokens(viwiki_tok, text_lines([viwiki_valid]), segment=ViTokenizer.tokenize)
    assert meta["num_tokens"]["train"] + meta["dropped_tail_tokens"]["train"] == total
    rows = np.asarray(features.PretrainingFeatures(str(feat_dir)).split("train"))
    assert (rows[:, 0] == 2).all() and (rows[:, -1] == 3).all() and not (rows == 0).any()


def test_viwiki_segmented_words_masked_whole(viwiki_feat):
    feat_dir, _ = viwiki_feat
    feats = features.PretrainingFeatures(str(feat_dir))
    ids = np.asarray(feats.split("train"), dtype=np.int64)
    masker = feats.masker(argument.MaskingArgs())
    seen = 0
    for seed in range(3):
        batch = masker(ids, np.random.default_rng(seed))
        seen += check_segmented_words_whole(feats, ids, batch, min_words=500)
    # and multi-token segmented words were actually masked, whole
    table = masking.word_start_table(feats.tokenizer)
    tokens = token_strings(feats.tokenizer)
    batch = masker(ids, np.random.default_rng(0))
    masked = batch["labels"] != -100
    continuing = masked & ~table[ids] & np.isin(ids, [i for i, t in enumerate(tokens) if "_" in t])
    continuing[:, 1] = False  # a row's leading fragment has no previous token to join
    assert continuing.sum() > 50
    r, c = np.nonzero(continuing)
    assert masked[r, c - 1].all()
