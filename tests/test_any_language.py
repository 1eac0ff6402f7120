"""Languages without spaces between words, and other scripts: what a 'word' is to whole-word masking,
and the warning for text whose words are clause-sized (unspaced Thai)."""
import logging

import numpy as np
import pytest
from tokenizers import Tokenizer, models

import masking
from argument import MaskingArgs
from conftest import build_features, train_vocab
from tokenization import SPECIAL_TOKENS

ZH = ["去年夏天，邻居家的女儿在图书馆里喝了一杯热茶。", "昨天我的朋友在公园附近读了一本很有意思的书。",
      "每个周末，老师在海边拍了不少漂亮的照片。", "晚饭以后，两个学生在火车站讨论了明年的计划。"]
JA = ["夕食の後、祖母は山の上のお寺で日本語を一生懸命勉強しました。", "昨日、田中さんは駅の前でラーメンを食べました。",
      "毎週末、子供たちは公園の近くでコンピューターでゲームをしました。"]
TH = ["เมื่อวานนี้เพื่อนของฉันอ่านหนังสือที่น่าสนใจที่ห้องสมุด", "เช้านี้คุณครูดื่มชาร้อนที่ร้านอาหารเล็กๆในกรุงเทพ",
      "สัปดาห์ที่แล้วนักเรียนสองคนถ่ายรูปสวยๆหลายรูปที่ชายหาด", "ทุกวันเสาร์คุณยายของฉันกินข้าวกับเพื่อนที่บ้าน"]
OTHERS = ["제 친구는 도서관에서 재미있는 책을 읽었습니다.", "أمس، صديقي قرأ كتابًا ممتعًا في المكتبة.",
          "אתמול החבר שלי קרא ספר מעניין בספרייה.", "कल मेरे दोस्त ने पुस्तकालय में एक दिलचस्प किताब पढ़ी।",
          "The cat sat on the mat, reading 3 books."]


def vocab(kind, lines, vocab_size):
    """A tokenizer trained in memory on lines (byte-level BPE or WordPiece, as create_vocab_SE.py builds them)."""
    import create_vocab_SE
    tok = create_vocab_SE.build_tokenizer(kind, lowercase=False, segmented=False)
    tok.train_from_iterator(lines, trainer=create_vocab_SE.build_trainer(kind, vocab_size, 1))
    create_vocab_SE.add_post_processor(tok)
    return tok


def word_count(tok, line):
    """(tokens, words) of a line, words as whole-word masking sees them."""
    ids = np.asarray([tok.encode(line).ids])
    special = np.isin(ids, [tok.token_to_id(t) for t in SPECIAL_TOKENS])
    return int((~special).sum()), int(masking._words(ids, ~special, masking.word_start_table(tok))["count"].sum())


def test_bytes_only_bpe_makes_each_cjk_character_a_word():
    """No merges: every ideograph and kana is 3 byte tokens and one word (it was one word per clause: the
    byte-level pre-tokenizer gives an unspaced clause a single leading space, here a token and word of its
    own). A fullwidth mark's lone lead byte (EF) could begin any of U+F000-FFFF, so it stays in the word before."""
    tok = vocab("BPE", ZH + JA, 256 + len(SPECIAL_TOKENS))
    for line in ZH + JA:
        fullwidth = line.count("，")  # U+FF0C; the ideographic comma 、 (U+3001, lead byte E3) is a word
        assert word_count(tok, line) == (1 + 3 * len(line), 1 + len(line) - fullwidth)


def test_cjk_words_with_merged_tokens_both_kinds():
    """With merges a word is a token or a character, never a clause: about one or two tokens per word."""
    for kind in ("BPE", "BERT"):
        tok = vocab(kind, ZH + JA, 400)
        tokens, words = map(sum, zip(*(word_count(tok, line) for line in ZH + JA)))
        assert words >= 0.5 * sum(map(len, ZH + JA)) and tokens / words < 2, (kind, tokens, words)


def test_wordpiece_kana_continuation_starts_a_word():
    table_of = dict(zip(["##の", "##ing", "の", "ing", "##中", "##한"], [True, False, True, True, True, False]))
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(SPECIAL_TOKENS + list(table_of))}, unk_token="[UNK]"))
    table = masking.word_start_table(tok)
    assert {t: bool(table[tok.token_to_id(t)]) for t in table_of} == table_of


@pytest.mark.parametrize("line", OTHERS)
def test_space_separated_scripts_keep_their_words(line):
    """Korean, Arabic, Hebrew, Hindi and English: a word is what spaces (and punctuation) delimit, as before."""
    words = len(line.replace(",", " ,").replace(".", " .").replace("،", " ،").replace("।", " ।").split())
    tok = vocab("BPE", OTHERS, 256 + len(SPECIAL_TOKENS))  # bytes only: no merge can hide a boundary
    # punctuation outside ASCII (، ।) does not start a word in byte-level BPE: it stays with the word before it
    assert word_count(tok, line)[1] == words - line.count("،") - line.count("।")


def test_partial_character_tokens():
    """A byte-level token holding part of a character: its lead bytes name its script, a continuation byte none."""
    lead, rest = "\u00e4", "\u00b8\u0143"  # '中' (E4 B8 AD) in byte-level characters
    assert masking._byte_level_first_char(lead + rest) == "中"
    assert masking.starts_own_word(masking._byte_level_first_char(lead))
    assert masking._byte_level_first_char(rest) == "" and not masking.starts_own_word("")
    assert not masking.starts_own_word("ไ") and not masking.starts_own_word("한") and not masking.starts_own_word("a")
    to_char = {b: c for c, b in masking.byte_level_bytes().items()}
    comma_head = "".join(to_char[b] for b in "，".encode()[:2])  # EF BC: the fullwidth comma cut after 2 bytes
    assert masking.starts_own_word(masking._byte_level_first_char(comma_head))


def thai_like_masker(row_words=1, length=64):
    """A masker over rows holding row_words words of equal length (an unspaced Thai paragraph is one)."""
    starts = np.zeros(100, dtype=bool)
    starts[:10] = True  # ids 5..9 start words; ids 10.. continue them
    masker = masking.Masker(MaskingArgs(), starts, special_ids=range(5), mask_id=4, vocab_size=100)
    ids = np.full((256, length), 20)
    ids[:, 0], ids[:, -1] = 2, 3
    ids[:, 1:-1:(length - 2) // row_words] = 7
    return masker, ids


def test_a_clause_sized_word_is_cut_to_the_budget():
    masker, ids = thai_like_masker()
    batch = masker(ids, np.random.default_rng(0))
    masked = (batch["labels"] != masking.IGNORE_INDEX).sum(1)
    budget = round(0.15 * 62)
    assert (masked == budget).all()  # it masked the whole 62-token word, past the 15 slots, before
    assert masked.max() <= masking.max_prediction_slots(MaskingArgs(), 64)


def test_long_words_warning():
    masker, ids = thai_like_masker(row_words=2)
    warning = masking.long_words_warning(ids, masker)
    assert "words average 31.0 tokens" in warning and "pre-segment" in warning and "\n" not in warning
    assert masking.long_words_warning(*reversed(thai_like_masker(row_words=31))) is None  # 2 tokens a word
    token_masker = masking.Masker(MaskingArgs(masking="token"), masker.word_starts[:100], range(5), 4, 100)
    assert masking.long_words_warning(ids, token_masker) is None  # token masking has no words


def test_process_warns_on_unspaced_thai_only(tmp_path, caplog):
    """process.py says so for an unspaced Thai corpus, not for a Chinese one (its characters are words)."""
    for name, lines, warned in (("th", TH, True), ("zh", ZH, False)):
        corpus = tmp_path / f"{name}.txt"
        corpus.write_text("\n".join(lines * 20) + "\n", encoding="utf-8")
        tok_dir = train_vocab(tmp_path / f"tok_{name}", data_dir=str(corpus), vocab_size=300, min_fre=1)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="span_electra"):
            build_features(tok_dir, tmp_path / f"feat_{name}", train_input=str(corpus), valid_input="",
                           max_seq_len=32, pack_across_documents=True)
        said = [r.getMessage() for r in caplog.records if "words average" in r.getMessage()]
        assert bool(said) == warned, (name, said)


def test_chinese_masking_figures():
    """SpanBERT's figures on Chinese rows: about 15% of the tokens, spans of about 3.8 words (characters)."""
    tok = vocab("BPE", ZH * 5, 400)
    ids = [i for line in ZH * 200 for i in tok.encode(line).ids[1:-1]][:126 * 64]
    rows = np.hstack([np.full((64, 1), 2), np.asarray(ids).reshape(64, 126), np.full((64, 1), 3)])
    masker = masking.Masker(MaskingArgs(), masking.word_start_table(tok), range(5), 4, tok.get_vocab_size())
    stats = masking.masking_stats([masker(rows, np.random.default_rng(s)) for s in range(8)], 8 * 64 * 126)
    assert 0.13 < stats["mask_ratio"] < 0.17
    assert 3.2 < stats["mean_span_length_words"] < 4.4 and stats["mean_span_length_tokens"] < 8
