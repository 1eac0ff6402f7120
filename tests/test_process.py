"""process.py and features.py: documents, packing text into [CLS] ... [SEP] rows, meta.json, splits, static masks
and the Datasets."""
import filecmp
import json
import re
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import (CLS, MASK, PAD, REPO, SAMPLE, SAMPLE_VI, SEP, SLOT_KEYS, build_features, count_tokens,
                      dense_labels, read_json, text_lines)

import argument
import features
import io_utils
import process
import tokenization
import training_utils as tu
from io_utils import SpanElectraError

TRAIN = SAMPLE / "train.tokens"
VALID = SAMPLE / "valid.tokens"
TITLE = re.compile(r"^ = [^=].* = $")


def _data_args(feat_dir, cls=argument.MLM_trainDataArgs, **kw):
    return cls(features_dir=str(feat_dir), **kw)


# ---------------------------------------------------------------- rows and meta.json
def test_rows_are_cls_tokens_sep(bpe_feat, bert_feat):
    for feat_dir, meta in (bpe_feat, bert_feat):
        feats = features.PretrainingFeatures(str(feat_dir))
        for split in ("train", "valid"):
            rows = np.asarray(feats.split(split))
            assert rows.shape == (meta["num_sequences"][split], 128)
            assert rows.dtype == np.uint16
            assert (rows[:, 0] == CLS).all() and (rows[:, -1] == SEP).all()
            assert not (rows == PAD).any()
            body = rows[:, 1:-1]
            assert not np.isin(body, [CLS, SEP, MASK]).any()
            assert body.max() < meta["vocab_size"]


def test_meta_fields(bpe_feat, bpe_tok):
    feat_dir, meta = bpe_feat
    on_disk = read_json(feat_dir / "meta.json")
    assert on_disk == meta
    assert meta["max_seq_len"] == 128
    assert meta["vocab_size"] == 2000
    assert meta["dtype"] == "uint16"
    assert meta["tokenizer_hash"] == tokenization.tokenizer_hash(str(bpe_tok))
    assert meta["word_segmenter"] == "none" and meta["tokenizer_type"] == "BPE"
    assert meta["special_token_ids"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert meta["splits"] == ["train", "valid"]
    assert set(meta["num_sequences"]) == set(meta["num_tokens"]) == {"train", "valid"}
    for split in ("train", "valid"):
        assert meta["num_sequences"][split] > 0
        assert meta["num_tokens"][split] == meta["num_sequences"][split] * (128 - 2)
        size = (feat_dir / f"{split}.bin").stat().st_size
        assert size == meta["num_sequences"][split] * 128 * 2
    # WikiText: one document per ' = Title = ' line
    assert meta["num_documents"]["train"] == sum(1 for l in text_lines([TRAIN]) if TITLE.match(l))
    assert meta["num_documents"]["valid"] == sum(1 for l in text_lines([VALID]) if TITLE.match(l))
    assert meta["undecodable_bytes"] == 0
    assert meta["static_masking"] is True


def test_most_frequent_token_is_the_commonest_ordinary_token(bpe_feat):
    """The MLM baseline token is the argmax over the rows' bodies and never a special token ([CLS], [SEP], ...)."""
    feats = features.PretrainingFeatures(str(bpe_feat[0]))
    ids = np.asarray(feats.split("train"), dtype=np.int64)
    specials = sorted(feats.special_ids.values())
    counts = np.bincount(ids[:, 1:-1].ravel(), minlength=feats.vocab_size)
    counts[specials] = 0
    token = feats.most_frequent_token()
    assert token not in specials
    assert token == int(counts.argmax())
    # rows with much padding: [PAD], then [CLS]/[SEP], outnumber every ordinary token, which still wins
    rows = np.array([[2, 7, 7, 3, 0, 0, 0, 0], [2, 7, 8, 3, 0, 0, 0, 0], [2, 9, 4, 4, 4, 4, 3, 0]])
    stub = SimpleNamespace(vocab_size=20, special_ids=feats.special_ids, _most_frequent=None, split=lambda name: rows)
    assert features.PretrainingFeatures.most_frequent_token(stub) == 7


@pytest.mark.parametrize("tok", ["bpe_tok", "bert_tok"])
def test_special_tokens_written_in_the_corpus_are_text(tok, tmp_path, request):
    """'[MASK]', '[SEP]', '[CLS]' and '[PAD]' in a text (one about NLP) are its characters, as BERT's own data
    builder reads them: no row body holds a special token's id but [UNK]'s."""
    corpus = tmp_path / "nlp.txt"
    corpus.write_text("\n\n".join(f"Line {i}: the [MASK] token, then [SEP] and [CLS] or [PAD] [UNK] here ." * 3
                                  for i in range(30)) + "\n", encoding="utf-8")
    feat_dir, _ = build_features(request.getfixturevalue(tok), tmp_path / "feat", train_input=str(corpus),
                                 valid_input="", max_seq_len=32)
    feats = features.PretrainingFeatures(str(feat_dir))
    rows = np.asarray(feats.split("train"), dtype=np.int64)
    ids = feats.special_ids
    assert len(rows) > 10 and (rows[:, 0] == ids["[CLS]"]).all() and (rows[:, -1] == ids["[SEP]"]).all()
    bodies = set(rows[:, 1:-1].ravel().tolist())
    assert not bodies & {ids[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")}


def hand_made_features(folder, extra_bytes=0):
    folder.mkdir()
    meta = {"max_seq_len": 4, "vocab_size": 10, "splits": ["train"], "dtype": "uint16", "num_sequences": {"train": 3}}
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    (folder / "train.bin").write_bytes(np.arange(12, dtype=np.uint16).tobytes() + b"\0" * extra_bytes)
    return folder


def test_a_features_array_larger_than_meta_says_is_refused(tmp_path):
    """A split array with more bytes than meta.json promises (another build's file) is refused, not half read."""
    ok = features.PretrainingFeatures(str(hand_made_features(tmp_path / "ok")))
    assert np.asarray(ok.split("train")).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    with pytest.raises(SpanElectraError, match="holds 32 bytes where meta.json promises 24"):
        features.PretrainingFeatures(str(hand_made_features(tmp_path / "big", extra_bytes=8)))


def test_meta_without_sequence_counts_is_one_line(tmp_path):
    """A meta.json lacking num_sequences is reported as damaged (one line), not as a KeyError traceback."""
    folder = hand_made_features(tmp_path / "f")
    meta = json.loads((folder / "meta.json").read_text())
    del meta["num_sequences"]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SpanElectraError, match="damaged .no num_sequences"):
        features.PretrainingFeatures(str(folder))


def test_tokens_are_conserved(bpe_feat, bpe_tok, bert_feat, bert_tok):
    for (feat_dir, meta), tok_dir in ((bpe_feat, bpe_tok), (bert_feat, bert_tok)):
        for split, path in (("train", TRAIN), ("valid", VALID)):
            total = count_tokens(tok_dir, text_lines([path]))
            stored, dropped = meta["num_tokens"][split], meta["dropped_tail_tokens"][split]
            assert stored + dropped == total, (split, stored, dropped, total)
            # only short document tails are dropped: less than one row per document
            assert dropped < meta["num_documents"][split] * (meta["max_seq_len"] - 2)


def test_rows_follow_document_token_stream(bpe_feat, bpe_tok, bert_feat, bert_tok):
    from tokenizers import Tokenizer
    for (feat_dir, meta), tok_dir in ((bpe_feat, bpe_tok), (bert_feat, bert_tok)):
        tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        lines = text_lines([TRAIN])
        titles = [i for i, l in enumerate(lines) if TITLE.match(l)]
        assert titles[0] == 0
        first_doc = lines[:titles[1]]
        second_doc = lines[titles[1]:titles[2]]
        stream = np.concatenate([e.ids for e in tok.encode_batch(first_doc, add_special_tokens=False)])
        body = meta["max_seq_len"] - 2
        k = len(stream) // body
        assert k >= 2
        rows = np.asarray(features.PretrainingFeatures(str(feat_dir)).split("train"))
        np.testing.assert_array_equal(rows[:k, 1:-1].ravel(), stream[:k * body])
        # the second document starts a fresh row (the first document's tail is dropped)
        stream2 = np.concatenate([e.ids for e in tok.encode_batch(second_doc, add_special_tokens=False)])
        np.testing.assert_array_equal(rows[k, 1:-1], stream2[:body])


def test_tokenizer_copied_into_features(bpe_feat, bpe_tok):
    feat_dir, meta = bpe_feat
    copy = feat_dir / "tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json", "se_tokenizer.json"):
        assert filecmp.cmp(copy / name, bpe_tok / name, shallow=False), name
    feats = features.PretrainingFeatures(str(feat_dir))
    assert feats.tokenizer.get_vocab_size() == 2000
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(str(copy)).is_fast


def test_process_config_saved(bpe_feat, bpe_tok):
    feat_dir, _ = bpe_feat
    cfg = read_json(feat_dir / "process_config.json")
    assert cfg["config_class"] == "feature_args"
    assert cfg["max_seq_len"] == 128 and cfg["save_static_masks"] is True
    assert cfg["tokenizer_dir"] == str(bpe_tok)
    assert not [p for p in feat_dir.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_check_tokenizer(bpe_feat, bpe_tok, bert_tok):
    feat_dir, _ = bpe_feat
    feats = features.PretrainingFeatures(str(feat_dir))
    feats.check_tokenizer(str(bpe_tok))  # the same tokenizer passes
    feats.check_tokenizer(str(feat_dir / "tokenizer"))  # and so does the copy
    with pytest.raises(SpanElectraError, match="tokenizer_dir"):
        feats.check_tokenizer(str(bert_tok))


def test_check_tokenizer_missing_folder_is_a_user_error(bpe_feat, tmp_path):
    feats = features.PretrainingFeatures(str(bpe_feat[0]))
    with pytest.raises(SpanElectraError, match="tokenizer_dir"):
        feats.check_tokenizer(str(tmp_path / "no_such_tokenizer"))


def test_dataset_checks_tokenizer_when_given(bpe_feat, bpe_tok, bert_tok):
    feat_dir, _ = bpe_feat
    ds = features.MLMDataset(_data_args(feat_dir, tokenizer_dir=str(bpe_tok)), batch_size=8)
    assert len(ds) > 0
    with pytest.raises(SpanElectraError, match="tokenizer_dir"):
        features.MLMDataset(_data_args(feat_dir, tokenizer_dir=str(bert_tok)), batch_size=8)


def test_uint32_for_vocabularies_over_65536(bpe_tok, bpe_feat, tmp_path, monkeypatch):
    """ids are stored as uint16 up to 65536 entries and as uint32 beyond (a vocabulary that large
    cannot be trained on the sample, so load_tokenizer's reported size is raised)."""
    real = process.load_tokenizer

    def big(tokenizer_dir, *a, **k):
        tok, info = real(tokenizer_dir, *a, **k)
        return tok, dict(info, vocab_size=70000)

    monkeypatch.setattr(process, "load_tokenizer", big)
    feat_dir, meta = build_features(bpe_tok, tmp_path / "big", valid_input="")
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70000
    rows = np.asarray(features.PretrainingFeatures(str(feat_dir)).split("train"))
    assert rows.dtype == np.uint32
    assert (feat_dir / "train.bin").stat().st_size == rows.size * 4
    small = np.asarray(features.PretrainingFeatures(str(bpe_feat[0])).split("train"))
    np.testing.assert_array_equal(rows, small)


# ---------------------------------------------------------------- inputs and splits
def test_valid_fraction_split_is_deterministic(bpe_tok, tmp_path):
    a_dir, a = build_features(bpe_tok, tmp_path / "a", valid_input="", valid_fraction=0.2, seed=3)
    b_dir, b = build_features(bpe_tok, tmp_path / "b", valid_input="", valid_fraction=0.2, seed=3, batch_lines=7)
    c_dir, c = build_features(bpe_tok, tmp_path / "c", valid_input="", valid_fraction=0.2, seed=4)
    assert a["splits"] == ["train", "valid"]
    assert a["num_sequences"]["train"] > 0 and a["num_sequences"]["valid"] > 0
    total_docs = sum(1 for l in text_lines([TRAIN]) if TITLE.match(l))
    assert a["num_documents"]["train"] + a["num_documents"]["valid"] == total_docs
    assert 0 < a["num_documents"]["valid"] < total_docs / 2
    # same seed: identical bytes (also with another batch size); another seed: another split
    for split in ("train", "valid"):
        assert (a_dir / f"{split}.bin").read_bytes() == (b_dir / f"{split}.bin").read_bytes()
    assert a["num_sequences"] != c["num_sequences"] or \
        (a_dir / "valid.bin").read_bytes() != (c_dir / "valid.bin").read_bytes()
    # nothing lost: both splits together hold the whole file's tokens
    total = count_tokens(bpe_tok, text_lines([TRAIN]))
    assert sum(a["num_tokens"].values()) + sum(a["dropped_tail_tokens"].values()) == total
    assert a["inputs"]["valid"] == [] and a["inputs"]["valid_fraction"] == 0.2


def test_no_valid_split(bpe_tok, tmp_path, caplog):
    feat_dir, meta = build_features(bpe_tok, tmp_path / "f", valid_input="")
    assert meta["splits"] == ["train"]
    assert not (feat_dir / "valid.bin").exists()
    assert "no validation split" in caplog.text
    with pytest.raises(SpanElectraError, match="split"):
        features.PretrainingFeatures(str(feat_dir)).split("valid")


def test_a_valid_fraction_too_small_or_too_large_says_so(bpe_tok, tmp_path, caplog):
    """A share that holds out no whole sequence warns that there is no validation split; one that holds out
    every document names valid_fraction, not the documents' length."""
    _, meta = build_features(bpe_tok, tmp_path / "small", valid_input="", valid_fraction=1e-9)
    assert meta["splits"] == ["train"]
    assert "no validation split (the share valid_fraction 1e-09 held out of" in caplog.text
    with pytest.raises(SpanElectraError, match="^valid_fraction: 0.999999 held out every document"):
        build_features(bpe_tok, tmp_path / "large", valid_input="", valid_fraction=0.999999)
    assert not (tmp_path / "large").exists()


@pytest.mark.parametrize("spec", ["folder", "glob"])
def test_folder_and_glob_inputs(spec, bpe_tok, bpe_feat, tmp_path):
    train_input = str(SAMPLE) if spec == "folder" else str(SAMPLE / "*.tokens")
    _, meta = build_features(bpe_tok, tmp_path / spec, train_input=train_input, valid_input="")
    assert [p.rsplit("/", 1)[-1] for p in meta["inputs"]["train"]] == ["train.tokens", "valid.tokens"]
    _, ref = bpe_feat
    # each file starts its own documents, so the result is the sum of the two splits built separately
    assert meta["num_sequences"]["train"] == ref["num_sequences"]["train"] + ref["num_sequences"]["valid"]
    assert meta["num_tokens"]["train"] == ref["num_tokens"]["train"] + ref["num_tokens"]["valid"]


def test_doc_boundary_modes(bpe_tok, tmp_path):
    text = tmp_path / "docs.txt"
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    paragraph = lambda n: " ".join(words[i % len(words)] for i in range(n))  # noqa: E731
    text.write_text(f"{paragraph(30)}\n{paragraph(8)}\n\n{paragraph(20)}\n\n{paragraph(25)}\n", encoding="utf-8")
    _, blank = build_features(bpe_tok, tmp_path / "blank", train_input=str(text), valid_input="", max_seq_len=16,
                              doc_boundary="blank_line")
    _, whole = build_features(bpe_tok, tmp_path / "file", train_input=str(text), valid_input="", max_seq_len=16,
                              doc_boundary="file")
    _, auto = build_features(bpe_tok, tmp_path / "auto", train_input=str(text), valid_input="", max_seq_len=16)
    assert blank["num_documents"]["train"] == 3 and auto["num_documents"]["train"] == 3
    assert whole["num_documents"]["train"] == 1
    total = count_tokens(bpe_tok, text_lines([text]))
    for meta in (blank, whole, auto):
        assert meta["num_tokens"]["train"] + meta["dropped_tail_tokens"]["train"] == total
    assert whole["dropped_tail_tokens"]["train"] < 14  # one document: less than one body (14 tokens) left over
    assert blank["dropped_tail_tokens"]["train"] > whole["dropped_tail_tokens"]["train"]  # a tail per document


def lines_of(files, rule):
    return [(text, starts) for text, starts, _ in
            process.document_lines([str(f) for f in files], rule, io_utils.BadByteCounter(), 1 << 20, None)]


def test_wikitext_titles_are_found_past_the_first_lines(tmp_path):
    """A WikiText file whose first title comes after some lines (a slice starting mid-article) still splits at titles."""
    path = tmp_path / "slice.tokens"
    path.write_text("".join(f" line {i} of an article .\n" for i in range(20)) + " = Next Article = \n text .\n",
                    encoding="utf-8")
    assert process.detect_doc_boundary(str(path)) == "title_line"
    plain = tmp_path / "plain.txt"
    plain.write_text("no title here\n\nnor here\n", encoding="utf-8")
    assert process.detect_doc_boundary(str(plain)) == "blank_line"


def test_every_file_starts_a_document_under_title_rules(tmp_path):
    """With titles as boundaries, each file still starts its own document (also one starting with a blank line),
    and a blank line inside an article does not end it."""
    a, b = tmp_path / "a.tokens", tmp_path / "b.tokens"
    a.write_text(" = A = \n first .\n\n second .\n", encoding="utf-8")
    b.write_text(" \n third .\n\n fourth .\n", encoding="utf-8")
    got = [(t.strip(), s) for t, s in lines_of([a, b], "title_line")]
    assert got == [("= A =", True), ("first .", False), ("second .", False), ("third .", True), ("fourth .", False)]
    blank = [(t.strip(), s) for t, s in lines_of([a, b], "blank_line")]
    assert blank == [("= A =", True), ("first .", False), ("second .", True), ("third .", True), ("fourth .", True)]


def test_packing_across_documents_keeps_every_tail_but_the_last(bpe_tok, tmp_path, caplog):
    """--pack_across_documents: a document's tail continues into the next document's first row after a
    [SEP], so the rows hold the documents' tokens in order with one [SEP] at each carried boundary;
    only the last tail is dropped. Without it the tails are dropped, and a large share is warned about."""
    from tokenizers import Tokenizer
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    docs = [" ".join(words[(i + d) % len(words)] for i in range(n)) for d, n in enumerate((30, 20, 25, 9, 40))]
    text = tmp_path / "docs.txt"
    text.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="span_electra"):
        _, dropped = build_features(bpe_tok, tmp_path / "drop", train_input=str(text), valid_input="", max_seq_len=16)
    assert "--pack_across_documents keeps it" in caplog.text
    out, packed = build_features(bpe_tok, tmp_path / "pack", train_input=str(text), valid_input="", max_seq_len=16,
                                 pack_across_documents=True)
    assert packed["pack_across_documents"] and not dropped["pack_across_documents"]
    tok = Tokenizer.from_file(str(bpe_tok / "tokenizer.json"))
    streams = [tok.encode(d, add_special_tokens=False).ids for d in docs]
    expected = []
    for ids in streams:  # a [SEP] wherever a document ends mid-row
        if expected and len(expected) % 14:
            expected.append(SEP)
        expected += ids
    rows = np.fromfile(out / "train.bin", dtype=packed["dtype"]).reshape(-1, 16)
    assert (rows[:, 0] == CLS).all() and (rows[:, -1] == SEP).all()
    body = rows[:, 1:-1].ravel().tolist()
    assert body == expected[:len(body)] and len(expected) - len(body) < 14  # only the last tail left out
    # the counts are of text tokens: the [SEP]s put between documents are neither stored text nor dropped text
    text_tokens = sum(map(len, streams))
    assert packed["num_tokens"]["train"] == len(body) - body.count(SEP)
    assert packed["num_tokens"]["train"] + packed["dropped_tail_tokens"]["train"] == text_tokens
    assert packed["num_tokens"]["train"] > dropped["num_tokens"]["train"]


def written_rows(path, width):
    return np.fromfile(path, dtype=np.uint16).reshape(-1, width).tolist()


def test_sequence_writer_rows_and_counts_without_packing(tmp_path):
    """Each document's tokens fill [CLS] body [SEP] rows; its short tail is dropped and counted, documents counted."""
    w = process.SequenceWriter(tmp_path / "t.bin", 6, np.uint16)  # body of 4
    w.add(np.array([10, 11, 12, 13, 14, 15, 16], dtype=np.uint16), starts_document=True)
    w.add(np.array([17], dtype=np.uint16), starts_document=False)  # the same document goes on
    w.add(np.array([20, 21, 22], dtype=np.uint16), starts_document=True)
    w.close()
    assert written_rows(tmp_path / "t.bin", 6) == [[CLS, 10, 11, 12, 13, SEP], [CLS, 14, 15, 16, 17, SEP]]
    assert (w.num_sequences, w.num_tokens, w.dropped_tokens, w.num_documents) == (2, 8, 3, 2)


def test_packing_across_documents_never_starts_a_row_with_a_separator(tmp_path):
    """A document that ends exactly at a row's end needs no [SEP]: the next row starts with the next document."""
    w = process.SequenceWriter(tmp_path / "t.bin", 6, np.uint16, across_documents=True)
    w.add(np.array([10, 11, 12, 13], dtype=np.uint16), starts_document=True)
    w.add(np.array([20, 21, 22, 23], dtype=np.uint16), starts_document=True)
    w.close()
    assert written_rows(tmp_path / "t.bin", 6) == [[CLS, 10, 11, 12, 13, SEP], [CLS, 20, 21, 22, 23, SEP]]
    assert (w.num_tokens, w.dropped_tokens) == (8, 0)


def test_a_dropped_packed_tail_counts_text_tokens_not_separators(tmp_path):
    """The last tail of packed documents is dropped as its text tokens only: an inserted [SEP] is not text."""
    w = process.SequenceWriter(tmp_path / "t.bin", 7, np.uint16, across_documents=True)  # body of 5
    w.add(np.array([10, 11], dtype=np.uint16), starts_document=True)
    w.add(np.array([20], dtype=np.uint16), starts_document=True)  # pending: 10 11 [SEP] 20
    w.close()
    assert (w.num_sequences, w.num_tokens, w.dropped_tokens, w.num_documents) == (0, 0, 3, 2)


def test_segmented_features_match_segmented_text(vi_feat, vi_tok):
    from pyvi import ViTokenizer
    feat_dir, meta = vi_feat
    assert meta["word_segmenter"] == "pyvi"
    for split, path in (("train", SAMPLE_VI / "train.txt"), ("valid", SAMPLE_VI / "valid.txt")):
        total = count_tokens(vi_tok, text_lines([path]), segment=ViTokenizer.tokenize)
        assert meta["num_tokens"][split] + meta["dropped_tail_tokens"][split] == total
    rows = np.asarray(features.PretrainingFeatures(str(feat_dir)).split("train"))
    tok = features.PretrainingFeatures(str(feat_dir)).tokenizer
    text = tok.decode(rows[:20, 1:-1].ravel().tolist())
    assert text.count("_") > 10  # segmented words made it into the features


def test_segmentation_in_worker_processes_gives_same_features(vi_feat, vi_tok, tmp_path):
    feat_dir, meta = vi_feat
    other_dir, other = build_features(vi_tok, tmp_path / "w2", train_input=str(SAMPLE_VI / "train.txt"),
                                      valid_input=str(SAMPLE_VI / "valid.txt"), max_seq_len=64, num_workers=2,
                                      batch_lines=50)
    assert other["num_sequences"] == meta["num_sequences"]
    assert (other_dir / "train.bin").read_bytes() == (feat_dir / "train.bin").read_bytes()


def test_one_batch_of_text_is_segmented_without_starting_workers(monkeypatch):
    """A corpus of one batch is segmented in this process (spawned workers each import pyvi for seconds); from two
    batches on, the workers take them, in order."""
    pytest.importorskip("pyvi")
    started = []
    real_context = tokenization.get_context
    monkeypatch.setattr(tokenization, "get_context", lambda method: started.append(method) or real_context(method))
    one = list(tokenization.segmented_batches(iter([(["Hà Nội là thủ đô"], 7)]), "pyvi", 2))
    assert one == [(["Hà_Nội là thủ_đô"], 7)] and started == []
    two = list(tokenization.segmented_batches(iter([(["Hà Nội"], 1), (["thủ đô"], 2)]), "pyvi", 2))
    assert two == [(["Hà_Nội"], 1), (["thủ_đô"], 2)] and started == ["spawn"]


# ---------------------------------------------------------------- static masks
def test_static_mask_files(bpe_feat):
    feat_dir, meta = bpe_feat
    feats = features.PretrainingFeatures(str(feat_dir))
    assert meta["static_masking_config"] == {"masking": "span", "mask_ratio": 0.15, "span_p": 0.2,
                                             "max_span_len": 10, "mask_replace_prob": 0.8,
                                             "random_replace_prob": 0.1, "max_predictions_per_seq": 0}
    for split in ("train", "valid"):
        n = meta["num_sequences"][split]
        assert (feat_dir / f"{split}.masked.bin").stat().st_size == n * 128 * 2
        assert (feat_dir / f"{split}.span_position.bin").stat().st_size == n * 128 * 2
        ids = np.asarray(feats.split(split), dtype=np.int64)
        masked = np.asarray(feats.split(split, ".masked"), dtype=np.int64)
        span_pos = np.asarray(feats.split(split, ".span_position"), dtype=np.int64)
        changed = masked != ids
        assert (span_pos[changed] > 0).all()  # every changed token is a masked one
        assert (masked[changed] == MASK).mean() > 0.8
        ratio = (span_pos > 0).sum() / ids[:, 1:-1].size
        assert abs(ratio - 0.15) < 0.02, ratio
        assert (span_pos[:, 0] == 0).all() and (span_pos[:, -1] == 0).all()


def test_static_masks_reproduce_dynamic_masking(bpe_feat):
    from masking import batch_from_masking
    feat_dir, meta = bpe_feat
    feats = features.PretrainingFeatures(str(feat_dir))
    cfg = argument.MaskingArgs(**meta["static_masking_config"])
    ids = np.asarray(feats.split("train")[:1024], dtype=np.int64)
    dynamic = feats.masker(cfg)(ids, np.random.default_rng(read_json(feat_dir / "process_config.json")["seed"] + 1))
    stored = batch_from_masking(ids, np.asarray(feats.split("train", ".masked")[:1024], dtype=np.int64),
                                np.asarray(feats.split("train", ".span_position")[:1024], dtype=np.int64))
    for key, value in stored.items():
        np.testing.assert_array_equal(value, dynamic[key], err_msg=key)


def test_static_dataset_same_masks_every_epoch(bpe_feat):
    feat_dir, _ = bpe_feat
    ds = features.MLMDataset(_data_args(feat_dir, static_masking=True), batch_size=32, shuffle=False, split="valid")
    first = [ds[i] for i in range(len(ds))]
    ds.set_epoch(5)
    for i, batch in enumerate(first):
        again = ds[i]
        for key in batch:
            assert (again[key] == batch[key]).all(), key
    # with shuffling the batches change but each sequence keeps its one mask
    shuffled = features.MLMDataset(_data_args(feat_dir, static_masking=True), batch_size=64, seed=1)
    feats = features.PretrainingFeatures(str(feat_dir))
    stored = np.asarray(feats.split("train", ".masked"))
    for epoch in (0, 1):
        shuffled.set_epoch(epoch)
        rows = shuffled.rows(0)
        np.testing.assert_array_equal(shuffled[0]["input_ids"].numpy(), stored[rows])
    shuffled.set_epoch(0)
    rows0 = shuffled.rows(0)
    shuffled.set_epoch(1)
    assert not np.array_equal(rows0, shuffled.rows(0))


def test_static_masks_refuse_fewer_slots_or_other_masking_than_they_were_saved_with():
    """Static masks saved with 24 slots (span masking at 128) refuse 23 (masked tokens would be unmasked) and another
    mask_ratio, and accept 24, more, or the default 0."""
    import dataclasses
    from argument import MaskingArgs
    saved = SimpleNamespace(meta={"static_masking_config": dataclasses.asdict(MaskingArgs())}, max_seq_len=128, dir="f")
    for slots in (0, 24, 30):
        features.check_static_masks(saved, MaskingArgs(max_predictions_per_seq=slots))
    with pytest.raises(SpanElectraError, match="23 prediction slots are fewer than the 24"):
        features.check_static_masks(saved, MaskingArgs(max_predictions_per_seq=23))
    with pytest.raises(SpanElectraError, match="mask_ratio 0.15 .this run: 0.2"):
        features.check_static_masks(saved, MaskingArgs(mask_ratio=0.2))


# ---------------------------------------------------------------- datasets
def test_dynamic_dataset_is_deterministic(bpe_feat):
    feat_dir, meta = bpe_feat
    args = _data_args(feat_dir)
    a = features.MLMDataset(args, batch_size=16, seed=7)
    b = features.MLMDataset(_data_args(feat_dir), batch_size=16, seed=7)
    assert len(a) == meta["num_sequences"]["train"] // 16
    x, y = a[3], b[3]
    # rows are packed full: no attention mask; fixed-size prediction slots (1.25 x round(0.15 x 128) = 24)
    assert set(x) == {"input_ids"} | SLOT_KEYS
    assert x["input_ids"].shape == (16, 128) and x["input_ids"].dtype == torch.int64
    for key in SLOT_KEYS:
        assert x[key].shape == (16, 24), key
        assert x[key].dtype == (torch.float32 if key == "masked_lm_weights" else torch.int64), key
    for key in x:
        assert torch.equal(x[key], y[key]), key
    # another epoch: other rows and another mask; the same epoch again: the same batch
    a.set_epoch(1)
    assert not torch.equal(a[3]["input_ids"], x["input_ids"])
    a.set_epoch(0)
    assert torch.equal(a[3]["masked_lm_positions"], x["masked_lm_positions"])
    # another seed: another batch
    c = features.MLMDataset(_data_args(feat_dir), batch_size=16, seed=8)
    assert not torch.equal(c[3]["input_ids"], x["input_ids"])
    with pytest.raises(IndexError):
        a[len(a)]


def test_dynamic_dataset_new_mask_each_epoch_same_rows(bpe_feat):
    feat_dir, _ = bpe_feat
    ds = features.MLMDataset(_data_args(feat_dir), batch_size=32, shuffle=False, split="valid")
    e0 = ds[2]
    ds.set_epoch(1)
    e1 = ds[2]
    assert not np.array_equal(dense_labels(e0) != -100, dense_labels(e1) != -100)  # a different mask
    # but the same sequences underneath
    rows = np.asarray(features.PretrainingFeatures(str(feat_dir)).split("valid")[64:96], dtype=np.int64)
    for batch in (e0, e1):
        labels = dense_labels(batch)
        m = labels != -100
        np.testing.assert_array_equal(labels[m], rows[m])
        np.testing.assert_array_equal(batch["input_ids"].numpy()[~m], rows[~m])


def test_the_shuffle_is_made_once_an_epoch(monkeypatch):
    dataset = object.__new__(features.MLMDataset)
    dataset.data, dataset.seed, dataset.shuffle, dataset.batch_size = np.zeros((100, 4)), 7, True, 10
    dataset.rank, dataset.world_size, dataset.epoch, dataset._order = 0, 1, 0, (None, None)
    expected = {e: np.random.default_rng([7, e]).permutation(100) for e in (0, 1)}
    made, rng = [], np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda seed: made.append(seed) or rng(seed))
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for i in range(10):
            np.testing.assert_array_equal(dataset.rows(i), np.sort(expected[epoch][10 * i:10 * i + 10]))
    assert made == [[7, 0], [7, 1]]


def test_labels_and_ratio_of_dataset_batches(bpe_feat):
    feat_dir, _ = bpe_feat
    ds = features.MLMDataset(_data_args(feat_dir), batch_size=128, seed=0)
    masked, total = 0, 0
    for i in range(len(ds)):
        b = ds[i]
        rows = ds.data[ds.rows(i)].astype(np.int64)
        lab = dense_labels(b)
        m = lab != -100
        np.testing.assert_array_equal(lab[m], rows[m])
        masked += m.sum()
        total += (rows[:, 1:-1] > 4).sum()
    assert abs(masked / total - 0.15) < 0.01


def test_se_dataset_adds_original_ids(bpe_feat):
    feat_dir, _ = bpe_feat
    args = argument.SE_trainDataArgs(features_dir=str(feat_dir))
    assert (args.mask_replace_prob, args.random_replace_prob) == (0.85, 0.0)
    ds = features.SEDataset(args, batch_size=16, seed=3)
    batch = ds[1]
    rows = np.asarray(ds.data[ds.rows(1)], dtype=np.int64)
    np.testing.assert_array_equal(batch["original_ids"].numpy(), rows)
    m = dense_labels(batch) != -100
    ids = batch["input_ids"].numpy()
    assert set(np.unique(ids[m][ids[m] != rows[m]])) <= {MASK}  # 85% [MASK] / 15% kept, never random
    mlm = features.MLMDataset(argument.SE_trainDataArgs(features_dir=str(feat_dir)), batch_size=16, seed=3)[1]
    for key in mlm:
        assert (mlm[key] == batch[key]).all(), key


def test_ranks_read_disjoint_rows(bpe_feat):
    feat_dir, meta = bpe_feat
    n = meta["num_sequences"]["train"]
    seen = []
    for rank in (0, 1):
        ds = features.MLMDataset(_data_args(feat_dir), batch_size=32, seed=5, rank=rank, world_size=2)
        assert len(ds) == (n // 32) // 2
        rows = np.concatenate([ds.rows(i) for i in range(len(ds))])
        assert len(np.unique(rows)) == len(rows)
        seen.append(set(rows.tolist()))
        b = ds[0]
        np.testing.assert_array_equal(b["input_ids"].numpy().shape, (32, 128))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 2 * len(seen[0])


def test_valid_dataset_covers_every_row_once(bpe_feat):
    feat_dir, meta = bpe_feat
    n = meta["num_sequences"]["valid"]
    ds = features.MLMDataset(_data_args(feat_dir), batch_size=50, shuffle=False, split="valid")
    assert len(ds) == -(-n // 50)
    rows = np.concatenate([ds.rows(i) for i in range(len(ds))])
    np.testing.assert_array_equal(rows, np.arange(n))
    last = ds[len(ds) - 1]
    assert last["input_ids"].shape == (n - 50 * (len(ds) - 1), 128)


def test_evaluation_reads_the_same_batches_whatever_the_number_of_processes(bpe_feat):
    """Validation is sharded over ranks (each its share of eval_batches, every row of the split when 0), and
    the ranks' batches, masks included, are those of a one-process run: valid figures do not depend on it."""
    feat_dir, meta = bpe_feat
    n = meta["num_sequences"]["valid"]

    def evaluated(world_size, eval_batches):
        batches = {}
        for rank in range(world_size):
            ds = features.MLMDataset(_data_args(feat_dir), batch_size=8, seed=3, shuffle=False, rank=rank,
                                     world_size=world_size, split="valid")
            for i in tu.eval_batch_indices(ds, eval_batches):
                batches[i * world_size + rank] = ds[i]
        return batches
    one = evaluated(1, 5)
    assert sorted(one) == [0, 1, 2, 3, 4]
    for world_size in (2, 3):
        shared = evaluated(world_size, 5)
        assert sorted(shared) == sorted(one)
        for g, batch in one.items():
            assert all(torch.equal(batch[k], shared[g][k]) for k in batch), (world_size, g)
    every = evaluated(3, 0)  # the whole split: every row once, the last batch short
    rows = torch.cat([every[g]["input_ids"] for g in sorted(every)])
    assert len(every) == -(-n // 8) and rows.shape[0] == n
    assert sorted(evaluated(3, 1)) == [0, 1, 2]  # fewer batches than processes: one each


@pytest.mark.parametrize("world_size,eval_batches,per_rank", [(1, 0, [5]), (2, 0, [3, 2]), (3, 4, [2, 1, 1]),
                                                              (2, 3, [2, 1]), (3, 1, [1, 1, 1]), (1, 9, [5])])
def test_eval_batch_indices_share_the_batches_among_ranks(world_size, eval_batches, per_rank):
    """Each rank evaluates its share of the first eval_batches batches (all with 0, at least one per rank)."""
    got = [len(tu.eval_batch_indices(SimpleNamespace(total_batches=5, world_size=world_size, rank=r), eval_batches))
           for r in range(world_size)]
    assert got == per_rank


def test_metric_sums_reduce_counts_over_ranks_before_rates(monkeypatch):
    """Rates come from the sums of every rank (all-reduced with the batch counts), not from averaging
    each rank's rate: a rank that saw few tokens weighs what its tokens weigh."""
    sums = tu.MetricSums()
    sums.add({"loss": torch.tensor(2.0), "tokens": torch.tensor(10.0), "correct": torch.tensor(9.0),
              "replaced": torch.tensor(1.0), "predicted": torch.tensor(1.0), "true_positive": torch.tensor(1.0)})
    other_rank = torch.tensor([4.0, 90.0, 45.0, 9.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(other_rank))
    runtime = SimpleNamespace(distributed=True)
    out = sums.read(runtime)
    assert out["loss"] == pytest.approx(3.0)  # mean over the 2 batches of both ranks
    assert out["disc_accuracy"] == pytest.approx(54 / 100) and out["disc_recall"] == pytest.approx(1 / 10)
    assert sums.read(runtime) == {}  # read resets


def test_dataloader_iterates_batches(bpe_feat):
    from torch.utils.data import DataLoader
    feat_dir, _ = bpe_feat
    ds = features.MLMDataset(_data_args(feat_dir), batch_size=64, split="valid")
    batches = list(DataLoader(ds, batch_size=None))
    assert len(batches) == len(ds) > 0
    assert all(b["input_ids"].shape == (64, 128) for b in batches)


def test_a_valid_file_that_is_also_training_text_is_warned_about(bpe_tok, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="span_electra"):
        build_features(bpe_tok, tmp_path / "f", train_input=str(SAMPLE), valid_input=str(SAMPLE / "valid.tokens"))
    assert "valid.tokens also in train_input" in caplog.text


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
    assert "train_input's " + str(data / "wiki" / "train.txt") in caplog.text  # the warning names the corpus


def test_features_of_a_pyvi_vocabulary_without_pyvi_name_the_tokenizer(vi_tok, tmp_path, monkeypatch):
    """The segmenter comes from the tokenizer folder (process.py has no --word_segmenter): the one line
    says so, before any work."""
    monkeypatch.setitem(sys.modules, "pyvi", None)
    with pytest.raises(SpanElectraError, match=r"^tokenizer_dir: .* segmented with pyvi, .* run `pip install pyvi`$"):
        process.main(argument.feature_args(tokenizer_dir=str(vi_tok), train_input=str(SAMPLE_VI / "train.txt"),
                                           valid_input="", out_dir=str(tmp_path / "f")))
    assert not (tmp_path / "f").exists()


def test_a_segmenter_no_install_gives_is_named_as_such(bpe_tok, tmp_path):
    """se_tokenizer.json edited to name 'jieba': no `pip install jieba` advice (it would not help), a rebuild."""
    tok = tmp_path / "tok"
    shutil.copytree(bpe_tok, tok)
    info = json.loads((tok / "se_tokenizer.json").read_text())
    (tok / "se_tokenizer.json").write_text(json.dumps({**info, "word_segmenter": "jieba"}))
    with pytest.raises(SpanElectraError, match=r"^tokenizer_dir: .*se_tokenizer.json' names the word segmenter "
                                               r"'jieba', which SpanElectra does not know .* create_vocab_SE.py$"):
        tokenization.folder_segmenter(str(tok), "tokenizer_dir")


def test_a_rebuild_into_the_same_folder_leaves_no_file_of_the_earlier_build(bpe_tok, tmp_path):
    """Features rebuilt without a valid split or static masks into a folder that had them: the old split and
    mask files go (np.memmap readers would take the old corpus's), a file of the user's stays."""
    out, _ = build_features(bpe_tok, tmp_path / "f", save_static_masks=True)
    assert (out / "valid.bin").exists() and (out / "train.masked.bin").exists()
    (out / "notes.txt").write_text("mine")
    build_features(bpe_tok, tmp_path / "f", train_input=str(SAMPLE / "valid.tokens"), valid_input="")
    left = sorted(p.name for p in out.iterdir() if p.suffix == ".bin")
    assert left == ["train.bin"] and (out / "notes.txt").read_text() == "mine"


def test_unknown_tokens_are_counted_and_warned_about(bert_tok, tmp_path, caplog):
    """An English WordPiece vocabulary on Vietnamese text stores many [UNK]s: counted in meta.json and warned
    about; on its own language the share stays under the warning."""
    with caplog.at_level("WARNING", logger="span_electra"):
        _, english = build_features(bert_tok, tmp_path / "en", max_seq_len=64)
        assert "[UNK]" not in caplog.text
        _, vietnamese = build_features(bert_tok, tmp_path / "vi", train_input=str(SAMPLE_VI / "train.txt"),
                                       valid_input="", max_seq_len=64)
    unk = bert_tok_id(bert_tok, "[UNK]")
    ids = np.fromfile(tmp_path / "vi" / "train.bin", dtype=np.uint16)
    assert vietnamese["unknown_tokens"]["train"] == int((ids == unk).sum()) > 0.05 * vietnamese["num_tokens"]["train"]
    assert english["unknown_tokens"]["train"] < 0.05 * english["num_tokens"]["train"]
    assert "of the stored train tokens are [UNK]: the vocabulary does not cover this text" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="span_electra"):  # English train, Vietnamese valid: the valid split's own
        build_features(bert_tok, tmp_path / "mixed", valid_input=str(SAMPLE_VI / "valid.txt"), max_seq_len=64)
    assert "of the stored valid tokens are [UNK]" in caplog.text and "stored train tokens" not in caplog.text


def bert_tok_id(tok_dir, token):
    return [line.strip() for line in open(tok_dir / "vocab.txt", encoding="utf-8")].index(token)
