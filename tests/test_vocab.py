"""create_vocab_SE.py and tokenization.py: BPE and WordPiece vocabularies, the files they write, transformers
loading, a tokenizer's identity (hash) and word segmentation."""
import json

import pytest

from conftest import SAMPLE, SAMPLE_VI, SPECIAL_TOKENS, read_json, train_vocab

import argument
import create_vocab_SE
import tokenization
from io_utils import SpanElectraError

SENTENCE = "The game was released in Japan and it was a success"


@pytest.fixture(params=["BPE", "BERT"])
def tok_dir(request, bpe_tok, bert_tok):
    return {"BPE": bpe_tok, "BERT": bert_tok}[request.param]


def _tokenizer(tok_dir):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(tok_dir / "tokenizer.json"))


def test_output_files(bpe_tok, bert_tok):
    common = {"tokenizer.json", "tokenizer_config.json", "se_tokenizer.json", "create_vocab_config.json"}
    bpe_files = {p.name for p in bpe_tok.iterdir()}
    bert_files = {p.name for p in bert_tok.iterdir()}
    assert common | {"vocab.json", "merges.txt"} <= bpe_files
    assert common | {"vocab.txt"} <= bert_files
    assert "vocab.txt" not in bpe_files and "merges.txt" not in bert_files
    # no temporary folder left beside the outputs
    assert not [p for p in bpe_tok.parent.iterdir() if p.name.startswith(".")]


def test_special_tokens_at_ids_0_to_4(tok_dir):
    tok = _tokenizer(tok_dir)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    info = read_json(tok_dir / "se_tokenizer.json")
    assert info["special_tokens"] == SPECIAL_TOKENS


def test_classic_vocab_files_agree(bpe_tok, bert_tok):
    vocab_json = read_json(bpe_tok / "vocab.json")
    assert [vocab_json[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert len(vocab_json) == 2000
    merges = [l for l in (bpe_tok / "merges.txt").read_text(encoding="utf-8").splitlines()
              if l and not l.startswith("#")]
    assert len(merges) > 1000  # 2000 - 256 bytes - 5 specials merges, give or take
    vocab_txt = (bert_tok / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab_txt[:5] == SPECIAL_TOKENS
    assert len(vocab_txt) == 2000
    assert any(t.startswith("##") for t in vocab_txt)


def test_a_vocabulary_rebuilt_as_the_other_type_leaves_no_file_of_the_first(tmp_path):
    """BPE then WordPiece into one out_dir: no merges.txt/vocab.json of the BPE beside the new vocab.txt
    (transformers' loaders would pick the wrong files), and back again."""
    out = tmp_path / "tok"
    small = dict(data_dir=str(SAMPLE / "valid.tokens"), vocab_size=400)
    train_vocab(out, tokenizer_type="BPE", **small)
    assert (out / "merges.txt").is_file() and not (out / "vocab.txt").exists()
    train_vocab(out, tokenizer_type="BERT", **small)
    assert (out / "vocab.txt").is_file() and not (out / "merges.txt").exists() and not (out / "vocab.json").exists()
    train_vocab(out, tokenizer_type="BPE", **small)
    assert (out / "merges.txt").is_file() and not (out / "vocab.txt").exists()


@pytest.mark.parametrize("kind", ["BPE", "BERT"])
def test_vocab_size_is_the_requested_size(kind, bpe_tok, bert_tok):
    tok_dir = {"BPE": bpe_tok, "BERT": bert_tok}[kind]
    assert _tokenizer(tok_dir).get_vocab_size() == 2000
    info = read_json(tok_dir / "se_tokenizer.json")
    assert info["vocab_size"] == 2000
    assert info["tokenizer_type"] == kind
    assert info["word_segmenter"] == "none"
    assert info["num_files"] == 2  # data/sample holds train.tokens and valid.tokens
    assert info["undecodable_bytes"] == 0
    cfg = read_json(tok_dir / "create_vocab_config.json")
    assert cfg["config_class"] == "tok_args" and cfg["vocab_size"] == 2000 and cfg["tokenizer_type"] == kind


def test_autotokenizer_loads_fast_tokenizer(tok_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert tok.is_fast
    assert len(tok) == 2000
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 1, 2, 3, 4)
    ids = tok(SENTENCE)["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3
    assert not set(ids[1:-1]) & {0, 1, 2, 3, 4}
    assert tok.decode(ids, skip_special_tokens=True).strip() == SENTENCE
    assert tok.decode(ids).startswith("[CLS]") and tok.decode(ids).endswith("[SEP]")
    pair = tok("a b", "c d")["input_ids"]
    assert pair[0] == 2 and pair.count(3) == 2 and pair[-1] == 3
    config = read_json(tok_dir / "tokenizer_config.json")
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"



def test_autotokenizer_returns_token_type_ids_of_a_pair(tok_dir):
    """finetune_SE.py trains pair tasks with token type ids: plain transformers must give the same ones."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    pair = tok("a b", "c d")
    first = len(tok("a b")["input_ids"])  # [CLS] a b [SEP]
    assert pair["token_type_ids"] == [0] * first + [1] * (len(pair["input_ids"]) - first)
    assert pair["token_type_ids"][-1] == 1 and len(pair["input_ids"]) > first
    assert tok("a b")["token_type_ids"] == [0] * first


def test_tokenizers_encode_matches_transformers(tok_dir):
    from transformers import AutoTokenizer
    fast = AutoTokenizer.from_pretrained(str(tok_dir))
    raw = _tokenizer(tok_dir)
    assert raw.encode(SENTENCE).ids == fast(SENTENCE)["input_ids"]
    assert raw.encode(SENTENCE, add_special_tokens=False).ids == fast(SENTENCE)["input_ids"][1:-1]


def test_a_typed_mask_encodes_as_a_masked_word(tok_dir):
    """'in [MASK] 2011' (fill-mask, by hand) gives the ids of 'in January 2011' with the word's tokens
    replaced by one [MASK], as pre-training masked them: with byte-level BPE the space before [MASK]
    would otherwise become a lone-space token the model never saw."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    masked = tok("released in [MASK] 2011 .")["input_ids"]
    before = tok("released in")["input_ids"][:-1]  # [CLS] released in
    after = tok("released in 2011 .")["input_ids"][len(before):]  # 2011 . [SEP]
    assert masked == before + [tok.mask_token_id] + after


@pytest.mark.parametrize("kind", ["BPE", "BERT"])
def test_min_fre_shrinks_vocab_on_tiny_data(kind, tmp_path, caplog):
    tiny = tmp_path / "tiny.txt"
    tiny.write_bytes((SAMPLE / "valid.tokens").read_bytes()[:20000].rsplit(b"\n", 1)[0] + b"\n")
    sizes = []
    for min_fre in (1, 2, 5, 20):
        out = train_vocab(tmp_path / f"mf{min_fre}", tokenizer_type=kind, data_dir=str(tiny), vocab_size=5000,
                          min_fre=min_fre)
        sizes.append(read_json(out / "se_tokenizer.json")["vocab_size"])
    assert all(a >= b for a, b in zip(sizes, sizes[1:])), sizes
    assert sizes[0] > sizes[-1] + 500, sizes
    assert sizes[0] < 5000  # 20 kB of text cannot fill the requested size, and the log says so
    assert f"the corpus gave {sizes[-1]} entries of the 5000 asked" in caplog.text


@pytest.mark.parametrize("kind", ["BPE", "BERT"])
def test_lowercase_option(kind, tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_bytes((SAMPLE / "valid.tokens").read_bytes()[:30000].rsplit(b"\n", 1)[0] + b"\n")
    out = train_vocab(tmp_path / "lc", tokenizer_type=kind, data_dir=str(tiny), vocab_size=1500, lowercase=True)
    tok = _tokenizer(out)
    assert tok.encode("The GAME Was Released").ids == tok.encode("the game was released").ids
    assert tok.decode(tok.encode("The GAME Was Released").ids).strip() == "the game was released"
    learned = [t for t in tok.get_vocab() if t not in SPECIAL_TOKENS and len(t.lstrip("\u0120#")) > 1]
    assert learned and not [t for t in learned if any("A" <= c <= "Z" for c in t)]
    assert read_json(out / "se_tokenizer.json")["lowercase"] is True
    # and without the option, case is kept
    cased = train_vocab(tmp_path / "cased", tokenizer_type=kind, data_dir=str(tiny), vocab_size=1500)
    tok = _tokenizer(cased)
    assert tok.encode("The GAME").ids != tok.encode("the game").ids


def test_tokenizer_hash_identifies_tokenizer(bpe_tok, bert_tok, tmp_path):
    import shutil
    h = tokenization.tokenizer_hash(str(bpe_tok))
    assert len(h) == 16
    assert h != tokenization.tokenizer_hash(str(bert_tok))
    copy = tmp_path / "copy"
    shutil.copytree(bpe_tok, copy)
    assert tokenization.tokenizer_hash(str(copy)) == h
    # the segmentation is part of the identity
    info = read_json(copy / "se_tokenizer.json")
    info["word_segmenter"] = "pyvi"
    (copy / "se_tokenizer.json").write_text(json.dumps(info), encoding="utf-8")
    assert tokenization.tokenizer_hash(str(copy)) != h


def test_load_tokenizer_info(bpe_tok):
    tok, info = tokenization.load_tokenizer(str(bpe_tok))
    assert info["vocab_size"] == 2000
    assert info["word_segmenter"] == "none"
    assert info["tokenizer_type"] == "BPE"
    assert info["tokenizer_hash"] == tokenization.tokenizer_hash(str(bpe_tok))



# ---------------------------------------------------------------- transformers' BERT classes
ACCENTED = "The Café HELLO naïve"
ACCENTED_LINES = ["The Café HELLO naïve world", "the cafe hello naive world", "Hello café NAÏVE The world"] * 2


@pytest.fixture(scope="module", params=[False, True], ids=["cased", "lowercase"])
def accented_wordpiece(request, tmp_path_factory):
    """A WordPiece vocabulary built from a few lines with capitals and accents, cased or --lowercase."""
    tmp = tmp_path_factory.mktemp("accented")
    (tmp / "lines.txt").write_text("\n".join(ACCENTED_LINES) + "\n", encoding="utf-8")
    return train_vocab(tmp / "tok", tokenizer_type="BERT", data_dir=str(tmp / "lines.txt"), vocab_size=200,
                       lowercase=request.param), request.param


@pytest.mark.parametrize("cls", ["BertTokenizer", "BertTokenizerFast", "ElectraTokenizerFast", "AutoTokenizer"])
def test_bert_classes_tokenize_as_the_pipeline(accented_wordpiece, cls):
    """BertTokenizer and its aliases rebuild the normalizer from tokenizer_config.json: without
    do_lower_case / strip_accents there they lowercased and stripped accents of a cased vocabulary."""
    import transformers
    folder, lowercase = accented_wordpiece
    tok, _ = tokenization.load_tokenizer(str(folder))
    expected = tok.encode(ACCENTED).tokens
    assert expected[1:3] == (["the", "café"] if lowercase else ["The", "Café"])  # case and accents kept as built
    loaded = getattr(transformers, cls).from_pretrained(str(folder))
    assert loaded.convert_ids_to_tokens(loaded(ACCENTED)["input_ids"]) == expected
    assert loaded(ACCENTED)["input_ids"] == tok.encode(ACCENTED).ids


def test_tokenizer_config_records_the_normalizer(accented_wordpiece, bpe_tok):
    folder, lowercase = accented_wordpiece
    config = read_json(folder / "tokenizer_config.json")
    assert (config["do_lower_case"], config["strip_accents"], config["tokenize_chinese_chars"]) == (lowercase, False, True)
    assert "do_lower_case" not in read_json(bpe_tok / "tokenizer_config.json")  # no BertNormalizer to describe


def test_composed_and_decomposed_accents_tokenize_alike(bpe_tok, bert_tok):
    """Both vocabularies normalise to NFC: 'é' typed as one code point or as e + accent gives the same tokens."""
    from tokenizers import Tokenizer
    for tok_dir in (bpe_tok, bert_tok):
        tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        assert tok.encode("caf\u00e9 na\u00efve").ids == tok.encode("cafe\u0301 nai\u0308ve").ids


def vocab_txt_folder(folder, **config):
    """A transformers folder with a vocab.txt and tokenizer_config.json alone (no tokenizer.json)."""
    folder.mkdir()
    tokens = SPECIAL_TOKENS + ["the", "c", "##af", "##e", "##é", "中", "国"]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", **config}))
    return folder


@pytest.mark.parametrize("config, pieces", [
    ({"do_lower_case": True, "strip_accents": False}, ["the", "c", "##af", "##é", "中", "国"]),
    ({"do_lower_case": True}, ["the", "c", "##af", "##e", "中", "国"]),  # BERT's uncased: accents stripped
    ({"do_lower_case": True, "tokenize_chinese_chars": False}, ["the", "c", "##af", "##e", "[UNK]"])],
    ids=["keep_accents", "uncased", "no_chinese_split"])
def test_vocab_txt_folder_follows_its_tokenizer_config(tmp_path, config, pieces):
    """strip_accents and tokenize_chinese_chars of tokenizer_config.json apply as in transformers."""
    from transformers import AutoTokenizer
    folder = vocab_txt_folder(tmp_path / "bert", **config)
    tok, _ = tokenization.load_tokenizer(str(folder))
    assert tok.encode("The Café 中国").tokens == ["[CLS]"] + pieces + ["[SEP]"]
    assert AutoTokenizer.from_pretrained(str(folder))("The Café 中国")["input_ids"] == tok.encode("The Café 中国").ids



def test_vocab_txt_folder_keeps_typed_special_tokens_whole(tmp_path):
    """'[UNK] [CLS] [MASK]' typed in text are those tokens, as in transformers, not pieces of them."""
    from transformers import AutoTokenizer
    folder = vocab_txt_folder(tmp_path / "bert", do_lower_case=True)
    tok, _ = tokenization.load_tokenizer(str(folder))
    text = "the [UNK] [CLS] [MASK] c"
    assert tok.encode(text).ids == [2, 5, 1, 2, 4, 6, 3]
    assert AutoTokenizer.from_pretrained(str(folder))(text)["input_ids"] == [2, 5, 1, 2, 4, 6, 3]


def test_a_vocab_txt_saved_with_windows_line_endings_reads_alike(tmp_path):
    """CRLF lines are the same tokens (transformers' BertTokenizer reads them so), not '[PAD]\\r'."""
    from transformers import AutoTokenizer
    folder = vocab_txt_folder(tmp_path / "crlf", do_lower_case=True)
    lf_ids = tokenization.load_tokenizer(str(folder))[0].encode("The Café [MASK]").ids
    (folder / "vocab.txt").write_bytes((folder / "vocab.txt").read_bytes().replace(b"\n", b"\r\n"))
    tok, _ = tokenization.load_tokenizer(str(folder))
    assert tok.encode("The Café [MASK]").ids == lf_ids == [2, 5, 6, 7, 8, 4, 3]
    assert AutoTokenizer.from_pretrained(str(folder))("The Café [MASK]")["input_ids"] == lf_ids


def test_vocab_txt_that_is_not_utf8_is_one_line(tmp_path):
    """A Latin-1 vocab.txt stops with the file and the line it fails at, never a UnicodeDecodeError."""
    folder = vocab_txt_folder(tmp_path / "bert", do_lower_case=True)
    (folder / "vocab.txt").write_bytes((folder / "vocab.txt").read_text().encode("latin-1", "replace"))
    with pytest.raises(SpanElectraError, match=r"^tokenizer_dir: '.*vocab.txt' is not UTF-8 text \(line 10\)"):
        tokenization.load_tokenizer(str(folder), "tokenizer_dir")


def test_vocab_txt_hash_follows_the_normalizer_options(tmp_path):
    """Options that change the tokens change the hash; BERT's defaults hash as before they were read."""
    import hashlib
    from io_utils import sha256_file
    default = vocab_txt_folder(tmp_path / "default", do_lower_case=True)
    before = hashlib.sha256(sha256_file(str(default / "vocab.txt")).encode())
    before.update(b"True")
    before.update(b"none")
    assert tokenization.tokenizer_hash(str(default)) == before.hexdigest()[:16]
    keep = tokenization.tokenizer_hash(str(vocab_txt_folder(tmp_path / "keep", strip_accents=False)))
    chinese = tokenization.tokenizer_hash(str(vocab_txt_folder(tmp_path / "zh", tokenize_chinese_chars=False)))
    assert len({before.hexdigest()[:16], keep, chinese}) == 3
    with pytest.raises(tokenization.SpanElectraError, match="^model_dir: .* strip_accents 'no'; use true, false or null"):
        tokenization.load_tokenizer(str(vocab_txt_folder(tmp_path / "bad", strip_accents="no")), "model_dir")


def write_vocab(folder, lowercase=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tokenization.SPECIAL_TOKENS + ["a", "b", "c"]) + "\n", encoding="utf-8")
    if lowercase is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}), encoding="utf-8")
    return folder


def test_wordpiece_pairs_give_the_second_segment_type_id_one(tmp_path):
    """A BERT vocab.txt tokenizer encodes a pair as [CLS] A [SEP] B [SEP] with type ids 0.. then 1.. (BERT)."""
    tok = tokenization.wordpiece_from_vocab(str(write_vocab(tmp_path) / "vocab.txt"), True)
    enc = tok.encode("a b", "c")
    assert enc.tokens == ["[CLS]", "a", "b", "[SEP]", "c", "[SEP]"]
    assert enc.type_ids == [0, 0, 0, 0, 1, 1]


def test_tokenizer_hash_of_a_vocab_txt_folder_follows_its_lowercasing(tmp_path):
    """Two vocab.txt folders that lowercase differently are different tokenizers (features and models must not mix)."""
    lower = tokenization.tokenizer_hash(str(write_vocab(tmp_path / "lower", True)))
    cased = tokenization.tokenizer_hash(str(write_vocab(tmp_path / "cased", False)))
    default = tokenization.tokenizer_hash(str(write_vocab(tmp_path / "default")))
    assert lower != cased
    assert lower == default  # do_lower_case defaults to True, as BERT's
    assert tokenization.tokenizer_hash(str(write_vocab(tmp_path / "lower2", True))) == lower


# ---------------------------------------------------------------- pyvi word segmentation
def test_pyvi_vocab_records_segmenter(vi_tok):
    info = read_json(vi_tok / "se_tokenizer.json")
    assert info["word_segmenter"] == "pyvi"
    assert info["vocab_size"] == 3000
    assert info["tokenizer_type"] == "BPE"
    assert info["num_lines"] == sum(1 for p in SAMPLE_VI.iterdir()
                                    for l in p.read_text(encoding="utf-8").split("\n") if l.strip())


def test_pyvi_vocab_has_multi_syllable_entries(vi_tok):
    tok = _tokenizer(vi_tok)
    vocab = tok.get_vocab()
    assert tok.get_vocab_size() == 3000
    multi = [t for t in vocab if "_" in t.strip("_")]
    assert len(multi) > 100, len(multi)
    decoded = {tok.decode([vocab[t]]).strip() for t in vocab if t.startswith("\u0120") and "_" in t[1:].strip("_")}
    assert "Việt_Nam" in decoded


def test_pyvi_segmented_word_stays_one_token(vi_tok):
    from pyvi import ViTokenizer
    tok = _tokenizer(vi_tok)
    vocab = tok.get_vocab()
    word_id = vocab[tok.encode("Việt_Nam", add_special_tokens=False).tokens[0]]
    assert tok.encode("Việt_Nam", add_special_tokens=False).ids == [word_id]
    assert tok.decode([word_id]).strip() == "Việt_Nam"
    # every whole multi-syllable vocabulary word encodes back to itself, as one token
    entries = [t for t in vocab if t.startswith("\u0120") and "_" in t[1:].strip("_")]
    checked = 0
    for t in entries:
        word = tok.decode([vocab[t]]).strip()
        if "\ufffd" in word:  # ends inside a UTF-8 character: not a whole word
            continue
        checked += 1
        assert tok.encode(word, add_special_tokens=False).ids == [vocab[t]], word
    assert checked > 100
    # the raw text, segmented by pyvi as process.py does, keeps the words whole
    segmented = ViTokenizer.tokenize("Hà Nội là thủ đô của Việt Nam .")
    assert "Việt_Nam" in segmented.split()
    tokens = tok.encode(segmented, add_special_tokens=False).ids
    assert word_id in tokens
    assert tok.decode(tokens).strip() == segmented


def test_segmenting_around_special_tokens_keeps_them_whole_and_space_separated():
    """pyvi-style segmentation joins syllables inside the text but leaves '[MASK]' whole, with spaces around it."""
    import tokenization
    run = tokenization.keeping_special_tokens(lambda text: text.replace(" ", "_"))
    assert run("xin chào [MASK] bạn học") == "xin_chào [MASK] bạn_học"
    assert run("[CLS] một hai [SEP] ba bốn [SEP]") == "[CLS] một_hai [SEP] ba_bốn [SEP]"
    assert run("không có gì") == "không_có_gì"


def test_pyvi_bert_vocab(tmp_path):
    pytest.importorskip("pyvi")
    out = train_vocab(tmp_path / "vibert", tokenizer_type="BERT", data_dir=str(SAMPLE_VI), vocab_size=2500,
                      word_segmenter="pyvi")
    tok = _tokenizer(out)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    vocab = tok.get_vocab()
    whole = [t for t in vocab if not t.startswith("##") and "_" in t.strip("_")]
    assert len(whole) > 50
    assert tok.encode("Việt_Nam", add_special_tokens=False).tokens == ["Việt_Nam"]


def test_missing_pyvi_is_reported(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "pyvi" or name.startswith("pyvi."):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(tokenization.SpanElectraError, match="word_segmenter"):
        tokenization.load_segmenter("pyvi")
    assert tokenization.load_segmenter("none") is None


def test_validate_rejects_bad_fields():
    from io_utils import SpanElectraError
    for field, value in [("tokenizer_type", "XLNet"), ("word_segmenter", "jieba"), ("min_fre", 0),
                         ("vocab_size", 3), ("num_workers", -1), ("out_dir", "")]:
        with pytest.raises(SpanElectraError, match=f"^{field}:"):
            argument.tok_args(**{field: value}).validate()


def test_ctrl_c_stops_the_vocabulary_pass_at_once_and_ends_its_readers():
    """The tokenizers library's pass runs in a thread, so Ctrl-C reaches the main one at once; the
    corpus then ends at the next line and the readers behind it (segmenting workers) are closed."""
    import _thread
    import threading
    import time

    closed, read = [], []

    def corpus():
        try:
            for i in range(10 ** 6):
                read.append(i)
                yield "some words here"
        finally:
            closed.append(True)

    class SlowTokenizer:
        def train_from_iterator(self, lines, trainer):
            for _ in lines:
                time.sleep(0.01)

    threading.Timer(0.3, _thread.interrupt_main).start()
    start = time.time()
    with pytest.raises(KeyboardInterrupt):
        create_vocab_SE.train_interruptibly(SlowTokenizer(), corpus(), trainer=None)
    assert time.time() - start < 5 and closed == [True] and 5 < len(read) < 1000
