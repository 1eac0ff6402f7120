"""explore_SE.py: generator fills and discriminator scores, in English and Vietnamese."""
import os
import re
import unicodedata

import numpy as np
import pytest
import torch

import explore_SE
import argument
from conftest import assert_one_line_error, run_in_process, run_ok_in_process
from io_utils import SpanElectraError
from modelling_span_electra import (SpanElectraDiscriminator, SpanElectraGenerator, electra_configs, save_discriminator,
                                    save_generator)


def save_models(tok_dir, out_dir):
    """A random tiny generator and discriminator saved as a training run saves them (out_dir/generator, /discriminator)."""
    import json
    vocab = json.load(open(tok_dir / "tokenizer.json", encoding="utf-8"))["model"]["vocab"]
    torch.manual_seed(0)
    gen_cfg, disc_cfg = electra_configs("tiny", len(vocab), 128)
    save_generator(SpanElectraGenerator(gen_cfg, use_sbo=True), str(out_dir / "generator"), str(tok_dir))
    save_discriminator(SpanElectraDiscriminator(disc_cfg), str(out_dir / "discriminator"), str(tok_dir))
    return out_dir


@pytest.fixture(scope="module")
def en_models(bpe_tok, tmp_path_factory):
    return save_models(bpe_tok, tmp_path_factory.mktemp("explore") / "en")


@pytest.fixture(scope="module")
def vi_models(vi_tok, tmp_path_factory):
    return save_models(vi_tok, tmp_path_factory.mktemp("explore") / "vi")


def test_fill_covers_exactly_the_marked_words(en_models):
    ex = explore_SE.Explorer(str(en_models))
    rows = ex.fill("The game was released in [[ January 2011 ]] in Japan .", top_k=3)
    originals = "".join(explore_SE.show_token(ex.tokenizer, t) for t, _ in rows)
    assert originals == "January2011"  # the marked words' tokens, nothing else
    for _, fills in rows:
        probs = [p for _, p in fills]
        assert len(fills) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_show_token_reads_byte_level_tokens(en_models):
    ex = explore_SE.Explorer(str(en_models))
    assert explore_SE.show_token(ex.tokenizer, "\u0120the") == "the"  # 'Ġthe': the space dropped
    assert explore_SE.show_token(ex.tokenizer, "\u0120") == "(space)"  # a lone space token, not a bare 'Ġ'
    assert explore_SE.show_token(ex.tokenizer, "[MASK]") == "[MASK]"
    assert explore_SE.show_token(ex.tokenizer, "\u011b") == "<0x1B>"  # byte ESC: its code, never a raw escape
    assert explore_SE.show_token(ex.tokenizer, "a\u0107") == "a<0x07>"  # 'a' + BEL


def test_random_spans_when_nothing_is_marked(en_models):
    ex = explore_SE.Explorer(str(en_models))
    text = "The film was shot in the city over three months in the summer of that year , and released later ."
    rows = ex.fill(text, top_k=2, seed=3)
    n_tokens = len(ex.tokenizer(text)["input_ids"]) - 2
    assert 1 <= len(rows) <= max(2, round(0.3 * n_tokens))
    assert rows == ex.fill(text, top_k=2, seed=3)  # the seed fixes the spans


def test_detect_scores_every_token_and_report_is_readable(en_models):
    ex = explore_SE.Explorer(str(en_models))
    scored = ex.detect("The cat sat on the mat .")
    assert len(scored) == len(ex.tokenizer("The cat sat on the mat .")["input_ids"]) - 2  # [CLS], [SEP] left out
    assert "".join(explore_SE.show_token(ex.tokenizer, t) for t, _ in scored) == "Thecatsatonthemat."
    assert all(0 < p < 1 for _, p in scored)
    lines = explore_SE.report(ex, "The cat sat on the [[ house ]] .", top_k=2)
    assert lines[0].startswith("generator fills for") and lines[1].startswith("  MLM head") and " -> " in lines[2]
    assert lines[3].startswith("  span-boundary head") and " -> " in lines[4]
    assert lines[-2].startswith("discriminator P(replaced) for: The cat sat on the house .")
    assert "\u0120" not in "\n".join(lines)  # byte-level BPE markers are decoded


@pytest.fixture(scope="module")
def explorer(en_models):
    """One Explorer of the English models, shared by the tests that only read its scores and fills."""
    return explore_SE.Explorer(str(en_models))


def test_detect_gives_each_token_its_own_score(explorer):
    """Each token's P(replaced) is the discriminator's sigmoid at that token's position ([CLS], [SEP] left out)."""
    text = "The cat sat on the mat ."
    ids = explorer.tokenizer(text)["input_ids"]
    with torch.no_grad():
        probs = explorer.discriminator(input_ids=torch.tensor([ids])).logits[0].sigmoid()
    scored = explorer.detect(text)
    assert [t for t, _ in scored] == explorer.tokenizer.convert_ids_to_tokens(ids)[1:-1]
    np.testing.assert_allclose([p for _, p in scored], probs[1:-1].numpy(), rtol=1e-6)


def test_fills_are_the_top_k_in_order_and_only_the_marked_tokens(explorer):
    """fill lists, for each marked token only, the generator's k most probable tokens, most probable first."""
    rows = explorer.fill("It was [[ released ]] in Japan .", top_k=4)
    import explore_SE
    assert "".join(explore_SE.show_token(explorer.tokenizer, t) for t, _ in rows) == "released"
    ids, corrupted, masked = explorer._encode_marked("It was [[ released ]] in Japan .", 0)
    with torch.no_grad():
        probs = explorer.generator(input_ids=corrupted[None]).logits[0].softmax(-1)
    for (orig, fills), pos in zip(rows, np.flatnonzero(masked)):
        top = probs[pos].topk(4)
        assert [q for _, q in fills] == pytest.approx(top.values.tolist())
        assert [f for f, _ in fills] == explorer.tokenizer.convert_ids_to_tokens(top.indices.tolist())
    assert masked.sum() == len(rows) and not masked[0] and not masked[-1]
    with pytest.raises(SpanElectraError, match=r"\[\["):
        explorer.fill("It was released ]] in Japan .")


def test_vietnamese_is_segmented_like_the_corpus(vi_models):
    pytest.importorskip("pyvi")
    ex = explore_SE.Explorer(str(vi_models))
    assert ex.segment("Hà Nội là thủ đô của Việt Nam") != "Hà Nội là thủ đô của Việt Nam"
    shown = [explore_SE.show_token(ex.tokenizer, t) for t, _ in ex.detect("Hà Nội là thủ đô của Việt Nam .")]
    assert "".join(shown).replace("_", "") == "HàNộilàthủđôcủaViệtNam."  # readable letters, not bytes
    assert any("_" in s for s in shown)  # multi-syllable words stay words
    rows = ex.fill("Hà Nội là [[ thủ đô ]] của Việt Nam .", top_k=2)
    assert "".join(explore_SE.show_token(ex.tokenizer, t) for t, _ in rows) == "thủ_đô"


def test_cli_prints_both_tables(en_models, capsys):
    out = run_ok_in_process(capsys, explore_SE, argument.explore_args, "--model_dir", en_models, "--text",
                            "It was [[ released ]] in Japan .", "--top_k", 2)
    assert "generator fills for" in out and "discriminator P(replaced)" in out


def test_a_text_longer_than_the_models_positions_is_one_line(en_models, capsys):
    """Past max_position_embeddings the models would fail inside with an index error; the explorer says so."""
    long_text = "It was [[ released ]] in " + "Japan " * 600
    code, err = run_in_process(capsys, explore_SE, argument.explore_args, "--model_dir", en_models, "--text", long_text)
    assert_one_line_error(code, err, "text:", "more than the model's 512 positions", "shorter text")
    with pytest.raises(explore_SE.SpanElectraError, match="^text: "):
        explore_SE.Explorer(en_models).detect("Japan " * 600)


def test_an_unclosed_mark_and_small_probabilities(en_models):
    with pytest.raises(explore_SE.SpanElectraError, match=r"^text: a mark opened at character 3 .* never closes"):
        explore_SE.Explorer(en_models).fill("a [[ b c")
    # a young model's fills are all near 0.001: two decimals would print 0.00 for every one
    assert [explore_SE.probability(p) for p in (0.23, 0.0093, 0.0012, 4e-5)] == ["0.23", "0.009", "0.001", "4e-05"]


@pytest.mark.parametrize("text, problem", [
    ("The [[ cat sat .", "a mark opened at character 5 ('...[[ cat sat .') never closes; add ]] after the words"),
    ("The [[ cat [[ sat ]] on ]] .", "a mark opened at character 5 ('...[[ cat [[ sat ]] on ...') is opened again at "
                                     "character 12 before it closes; marks can't nest"),
    ("The cat ]] sat [[ on ]] .", "a closing ]] at character 9 ('The cat ]]...') has no opening [["),
    ("The [[ cat ]] sat ]] .", "a closing ]] at character 19 ('The [[ cat ]] sat ]]...') has no opening [["),
    ("The [[ cat ]] sat [[  ]] .", "'[[ ]]' at character 19 marks no word"),
])
def test_each_mark_problem_says_what_and_where(text, problem):
    """A nested, unclosed, unopened or empty mark is named with the character (counted from 1) where it is, and
    the text there, as one line naming the field (was: 'a [[ without its ]] (or the reverse)' for all of them)."""
    assert argument.marks_problem(text).startswith(problem)
    with pytest.raises(explore_SE.SpanElectraError) as refused:
        argument.explore_args(text=text).validate()
    assert str(refused.value) == f"text: {argument.marks_problem(text)}"
    assert argument.marks_problem("The [[ cat ]] sat on [[ the\nmat ]] .") is None  # a span may cross a line break
    assert explore_SE.MARK.findall("The [[ cat ]] sat on [[ the\nmat ]] .") == [" cat ", " the\nmat "]


@pytest.mark.parametrize("language, text", [("en", "It was [[ released ]] in Japan ."),
                                            ("vi", "Hà Nội là [[ thủ đô ]] của Việt Nam .")])
def test_the_pipelines_token_count_is_the_explorers(language, text, request):
    """run_pipeline.py counts its explore_text with the tokenizer folder alone (before any model exists), and
    counts what the explorer will read: the marked text for the fills, the plain one for the discriminator,
    Vietnamese segmented as the corpus was."""
    tok = request.getfixturevalue(f"{language}_models") / "generator"
    explorer = explore_SE.Explorer(str(tok.parent))
    ids, _, _ = explorer._encode_marked(text, 0)
    assert explore_SE.TextEncoder(str(tok)).longest_encoding(text) == len(ids)
    assert len(explorer.detect(explore_SE.plain_text(text))) == len(ids) - 2  # [CLS] and [SEP] not scored


def test_the_pipeline_refuses_an_explore_text_of_more_tokens_than_positions(bpe_tok):
    """At the models' positions it fits; a token more is refused with the count and the positions, and longer
    features give the models more positions."""
    import run_pipeline
    fits = "the " * 510
    assert explore_SE.TextEncoder(str(bpe_tok)).longest_encoding(fits) == 512
    run_pipeline.check_explore_text_fits(fits, str(bpe_tok), max_seq_len=64)
    with pytest.raises(SpanElectraError, match=r"^explore_text: 513 tokens with \[CLS\] and \[SEP\] .* more than "
                                               r"the models' 512 positions; give a shorter text"):
        run_pipeline.check_explore_text_fits(fits + "the", str(bpe_tok), max_seq_len=64)
    run_pipeline.check_explore_text_fits(fits + "the", str(bpe_tok), max_seq_len=1024)


def test_frequency_level_fills_are_called_so():
    """The same first guess everywhere is read out as a generator that fills from word frequencies."""
    class Tok:
        def convert_tokens_to_string(self, tokens):
            return "".join(tokens)
    same = [("January", [("the", 0.05), (",", 0.04)]), ("2011", [("the", 0.05), ("of", 0.02)])]
    assert "fills from word frequencies" in explore_SE.fills_note(Tok(), same)[0]
    assert "'the'" in explore_SE.fills_note(Tok(), same)[0]
    varied = [("January", [("March", 0.2)]), ("2011", [("2010", 0.3)])]
    assert explore_SE.fills_note(Tok(), varied) == [] and explore_SE.fills_note(Tok(), same[:1]) == []


def test_boundary_fills_read_the_words_around_each_span(en_models):
    """The span-boundary head gets, for every masked token, the token before its span, the token
    after it and its place in the span; its top fills are what those states decode to."""
    ex = explore_SE.Explorer(str(en_models))
    text = "The [[ game ]] was released in [[ January 2011 ]] in Japan ."
    ids, _, masked = ex._encode_marked(text, 0)
    seen = {}

    def spy(head, args):  # SpanBoundaryHead.forward(hidden, left, right, position)
        _, left, right, position = args
        seen.update(left=left[0].tolist(), right=right[0].tolist(), position=position[0].tolist())
    ex.span_generator.sbo.register_forward_pre_hook(spy)
    rows = ex.fill_from_boundaries(text, top_k=3)
    slots = [i for i, m in enumerate(masked) if m]
    tokens = ex.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    game, january = slots[0], slots[1]
    assert [explore_SE.show_token(ex.tokenizer, t) for t, _ in rows] == \
        [explore_SE.show_token(ex.tokenizer, tokens[t]) for t in slots]
    assert seen["left"] == [game - 1] + [january - 1] * (len(slots) - 1)  # 'The', then 'in'
    assert seen["right"] == [game + 1] + [slots[-1] + 1] * (len(slots) - 1)  # 'was', then the second 'in'
    assert seen["position"] == [0] + list(range(len(slots) - 1))
    assert all(len(fills) == 3 for _, fills in rows)


def test_no_boundary_fills_without_the_head(en_models, tmp_path):
    """A plain transformers generator (a converted ELECTRA, an export) has no span-boundary head:
    the explorer shows the MLM fills alone."""
    from transformers import ElectraForMaskedLM
    ElectraForMaskedLM.from_pretrained(str(en_models / "generator")).save_pretrained(str(tmp_path / "plain"))
    for path in (en_models / "generator").iterdir():  # the tokenizer's files, not the span heads
        if not path.name.startswith(("span_", "model.", "config.")):
            (tmp_path / "plain" / path.name).write_bytes(path.read_bytes())
    ex = explore_SE.Explorer(generator_dir=str(tmp_path / "plain"))
    assert ex.span_generator is None and ex.fill_from_boundaries("It was [[ released ]] .") is None
    lines = explore_SE.report(ex, "It was [[ released ]] .", top_k=2)
    assert " -> " in lines[1] and not any("span-boundary" in line for line in lines)


def test_boundary_note_only_when_the_heads_disagree():
    class Tok:
        def convert_tokens_to_string(self, tokens):
            return " ".join(tokens)
    same = [("x", [("the", 0.1)]), ("y", [("the", 0.1)])]
    varied = [("x", [("the", 0.3)]), ("y", [("first", 0.1)])]
    assert "learned from the context" in explore_SE.boundary_note(Tok(), same, varied)[0]
    assert explore_SE.boundary_note(Tok(), same, same) == []
    assert explore_SE.boundary_note(Tok(), varied, varied) == []


def test_top_k_beyond_the_vocabulary_and_an_empty_mark(en_models, capsys):
    rows = explore_SE.Explorer(en_models).fill("It was [[ released ]] in Japan .", top_k=10 ** 6)
    vocab = len(explore_SE.Explorer(en_models).tokenizer)
    assert len(rows) == 1 and len(rows[0][1]) == vocab  # all of the vocabulary, not an index error
    assert abs(sum(q for _, q in rows[0][1]) - 1) < 1e-3
    for flags, needle in ((["--text", "It was [[ ]] in Japan ."], "marks no word"),
                          (["--text", "It was [[ released ]] .", "--top_k", 0], "top_k:")):
        code, err = run_in_process(capsys, explore_SE, argument.explore_args, "--model_dir", en_models, *flags)
        assert_one_line_error(code, err, needle)


def test_a_two_stage_out_dir_finds_the_generator_it_was_trained_against(en_models, tmp_path, capsys):
    """trainSpanElectra.py's two-stage out_dir holds only discriminator/: its saved config names the
    generator_dir, where the explorer finds the generator; without one it says the marks go unfilled."""
    import json
    import shutil
    run = tmp_path / "se"
    shutil.copytree(en_models / "discriminator", run / "discriminator")
    out = run_ok_in_process(capsys, explore_SE, argument.explore_args, "--model_dir", run, "--text", "a [[ b ]] c")
    assert "no generator beside this model" in out and "discriminator P(replaced)" in out
    (run / "trainSpanElectra_config.json").write_text(json.dumps({"generator_dir": str(en_models / "generator")}))
    explorer = explore_SE.Explorer(str(run))
    assert explorer.gen_dir == str(en_models / "generator") and explorer.disc_dir == str(run / "discriminator")


def masked_tokens(ex, text):
    """(position, token) of each token the explorer masks for a marked text."""
    ids, _, masked = ex._encode_marked(text, 0)
    tokens = ex.tokenizer.convert_ids_to_tokens(ids.tolist())
    return [(int(t), explore_SE.show_token(ex.tokenizer, tokens[t])) for t in masked.nonzero()[0]]


def test_the_marked_occurrence_is_masked_not_an_earlier_one(en_models):
    """A marked word that also occurs earlier, or inside an earlier word, is masked where it is marked."""
    ex = explore_SE.Explorer(str(en_models))
    for text, marked in (("the game was the [[ game ]] .", "game"), ("The cat sat on [[ a ]] mat .", "a"),
                         ("I am what [[ I ]] am .", "I")):
        plain = " ".join(text.replace("[[", "").replace("]]", "").split())
        start = plain.index(" " + marked + " ", plain.index(marked) + 1 if marked != "a" else 0) + 1
        enc = ex.tokenizer(plain, return_offsets_mapping=True)
        wanted = [t for t, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < start + len(marked) and b > start]
        assert [t for t, _ in masked_tokens(ex, text)] == wanted, text


def test_a_mark_touching_a_word_leaves_the_text_as_the_discriminator_reads_it(en_models):
    """'in [[Japan]].' and 're[[leas]]ed': the generator reads the text as written (no space put in beside the
    mark), the tokens the mark touches masked."""
    ex = explore_SE.Explorer(str(en_models))
    for text, shown in (("It came out in [[Japan]].", "Japan"), ('She said "[[hello]]" twice .', "hello"),
                        ("It was re[[leas]]ed in May .", "released"), ("in [[ Japan ]] .", "Japan")):
        ids, _, masked = ex._encode_marked(text, 0)
        assert ids.tolist() == ex.encode_plain(explore_SE.plain_text(text)), text
        assert "".join(token for _, token in masked_tokens(ex, text)) == shown, text


def test_a_model_folder_without_tokenizer_files_is_one_line(en_models, tmp_path, capsys):
    """transformers would build an empty tokenizer there (every word [UNK], at ids that are not the model's)."""
    import shutil
    bare = tmp_path / "bare" / "discriminator"
    bare.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(en_models / "discriminator" / name, bare / name)
    code, err = run_in_process(capsys, explore_SE, argument.explore_args, "--model_dir", str(bare), "--text", "A b .")
    assert_one_line_error(code, err, "model_dir:", str(bare), "holds no tokenizer", "tokenizer.json")


def test_a_typed_mask_is_filled_and_nothing_to_fill_is_said(en_models):
    ex = explore_SE.Explorer(str(en_models))
    rows = ex.fill("The cat sat on the [MASK] .", top_k=2)
    assert [original for original, _ in rows] == ["[MASK]"] and len(rows[0][1]) == 2
    assert len(ex.fill("[MASK] [MASK] [MASK]", top_k=1)) == 3


def test_generator_and_discriminator_come_from_one_run(en_models, bert_tok, tmp_path):
    """A pipeline folder: the discriminator's own run supplies the generator (joint: beside it; two-stage: the
    one it was trained against), not the alphabetically first run; generator and discriminator of different
    tokenizers are a one-line error."""
    import json
    import shutil
    top = tmp_path / "pipeline"
    shutil.copytree(en_models / "generator", top / "generator" / "generator")  # a two-stage run's generator ...
    save_models(bert_tok, top / "joint")  # ... and a joint run of another vocabulary beside it
    ex = explore_SE.Explorer(str(top))
    assert (ex.gen_dir, ex.disc_dir) == (str(top / "joint" / "generator"), str(top / "joint" / "discriminator"))
    shutil.rmtree(top / "joint")
    shutil.copytree(en_models / "discriminator", top / "two_stage" / "discriminator")
    (top / "two_stage" / "trainSpanElectra_config.json").write_text(json.dumps(
        {"generator_dir": "pipeline/generator/generator", "out_dir": "pipeline/two_stage"}))  # relative, as typed
    ex = explore_SE.Explorer(str(top / "two_stage"))  # found from another working folder through out_dir
    assert ex.gen_dir == str(top / "generator" / "generator")
    save_models(bert_tok, tmp_path / "bert")
    with pytest.raises(explore_SE.SpanElectraError, match="^model_dir: the generator .* different tokenizers"):
        explore_SE.Explorer(generator_dir=str(tmp_path / "bert" / "generator"),
                            discriminator_dir=str(top / "two_stage" / "discriminator"))


def test_a_mark_inside_a_segmented_word_masks_that_word_and_says_so(vi_models):
    """Vietnamese: the whole text is segmented as the corpus was, then the marks are placed, so the
    generator and the discriminator read the same words; a mark that cuts a word masks all of it."""
    pytest.importorskip("pyvi")
    ex = explore_SE.Explorer(str(vi_models))
    words, marks = ex._segmented_marks("Năm 1945 , Hồ Chí [[ Minh ]] đọc Tuyên ngôn Độc lập .")
    assert words == ex.segment("Năm 1945 , Hồ Chí Minh đọc Tuyên ngôn Độc lập .")
    assert [words[a:b] for a, b in marks] == ["Hồ_Chí_Minh"] and "part of the word 'Hồ_Chí_Minh'" in ex.notes[0]
    masked = "".join(t for _, t in masked_tokens(ex, "Việt Nam và [[ Nam ]] Phi ."))
    assert "Việt" not in masked and masked.startswith("Nam")  # the marked Nam, not Việt_Nam's
    lines = explore_SE.report(ex, "Hà Nội là [[ thủ đô ]] của Việt Nam .", top_k=1)
    assert not any("part of the word" in line for line in lines)  # a mark on whole words says nothing
    # typed in decomposed Unicode (NFD), the same words are masked
    nfd = unicodedata.normalize("NFD", "Tôi yêu Hà Nội và [[ Việt Nam ]] .")
    words, marks = ex._segmented_marks(nfd)
    assert [words[a:b] for a, b in marks] == ["Việt_Nam"] and not ex.notes


def test_a_folder_given_beside_model_dir_takes_the_other_half_from_it(en_models, monkeypatch):
    """The notebook's Explorer(OUT/gen, discriminator_dir=...) keeps model_dir's generator; a relative
    --model_dir that is the discriminator folder itself finds the generator beside it."""
    ex = explore_SE.Explorer(str(en_models), discriminator_dir=str(en_models / "discriminator"))
    assert ex.gen_dir == str(en_models / "generator")
    monkeypatch.chdir(en_models)
    ex = explore_SE.Explorer("discriminator")
    assert os.path.abspath(ex.gen_dir) == str(en_models / "generator")


def test_characters_split_over_byte_tokens_are_shown_whole(en_models):
    """Byte-level BPE cuts a character it never saw whole (CJK, an emoji) into byte tokens; the
    discriminator's line joins them back into the character instead of showing '\ufffd' per byte."""
    ex = explore_SE.Explorer(str(en_models))
    scored = ex.detect("日本語 🙂 café")
    pieces = explore_SE.readable_pieces(ex.tokenizer, scored)
    assert "".join(text for text, _ in pieces).replace("(space)", "") == "日本語🙂café"  # a lone space token: "(space)"
    assert not any("\ufffd" in text for text, _ in pieces) and len(pieces) < len(scored)
    assert max(p for _, p in pieces) == max(p for _, p in scored)
    first_byte = next(t for t, _ in scored if explore_SE.partial_character(ex.tokenizer, t))
    assert re.fullmatch(r"(<0x[0-9A-F]{2}>)+", explore_SE.show_token(ex.tokenizer, first_byte))  # a fill's bytes


def test_plain_transformers_folders_are_explored(bpe_tok, tmp_path):
    """A pair saved by plain transformers (save_pretrained, tokenizer beside it), as --init_from and finetune_SE.py
    take them: the explorer finds both in their parent folder, and a generator folder alone."""
    import shutil
    from transformers import ElectraForMaskedLM, ElectraForPreTraining
    import json as json_
    vocab = json_.load(open(bpe_tok / "tokenizer.json", encoding="utf-8"))["model"]["vocab"]
    gen_cfg, disc_cfg = electra_configs("tiny", len(vocab), 128)
    for kind, model in (("generator", ElectraForMaskedLM(gen_cfg)), ("discriminator", ElectraForPreTraining(disc_cfg))):
        model.save_pretrained(tmp_path / "pair" / kind)
        for path in bpe_tok.iterdir():
            if path.is_file() and not (tmp_path / "pair" / kind / path.name).exists():
                shutil.copy(path, tmp_path / "pair" / kind / path.name)
    ex = explore_SE.Explorer(str(tmp_path / "pair"))
    assert (ex.gen_dir, ex.disc_dir) == (str(tmp_path / "pair" / "generator"), str(tmp_path / "pair" / "discriminator"))
    assert len(ex.fill("The game was released in [[ January ]] .", top_k=2)) == 1
    assert explore_SE.Explorer(str(tmp_path / "pair" / "generator")).discriminator is None


def test_a_lone_discriminator_is_not_paired_with_a_neighbours_generator(en_models, tmp_path):
    """A discriminator folder on its own (not a run's RUN/discriminator) beside unrelated runs: no generator of
    theirs is taken for it; a run's own discriminator still finds its generator."""
    import shutil
    shutil.copytree(en_models / "discriminator", tmp_path / "outputs" / "mydisc")
    shutil.copytree(en_models, tmp_path / "outputs" / "other_run")
    shutil.copytree(en_models / "generator", tmp_path / "outputs" / "generator" / "generator")
    assert explore_SE.find_models(str(tmp_path / "outputs" / "mydisc")) == (None, str(tmp_path / "outputs" / "mydisc"))
    gen, disc = explore_SE.find_models(str(tmp_path / "outputs" / "other_run"))
    assert (gen, disc) == (str(tmp_path / "outputs" / "other_run" / "generator"),
                           str(tmp_path / "outputs" / "other_run" / "discriminator"))


def test_a_text_longer_than_the_models_training_rows_is_warned_about_once(bpe_tok, tmp_path, caplog):
    """A model trained on 16-token rows never trained its later positions: a longer text is said once per
    report (not per pass of each model), a short one not at all."""
    import json
    vocab = json.load(open(bpe_tok / "tokenizer.json", encoding="utf-8"))["model"]["vocab"]
    gen_cfg, _ = electra_configs("tiny", len(vocab), 128)
    save_generator(SpanElectraGenerator(gen_cfg, use_sbo=True), str(tmp_path / "m" / "generator"), str(bpe_tok),
                   trained_seq_len=16)
    ex = explore_SE.Explorer(str(tmp_path / "m"))
    caplog.set_level("WARNING", logger="span_electra")
    explore_SE.report(ex, "The cat sat on the [[ mat ]] .", top_k=1)
    assert "never trained" not in caplog.text
    explore_SE.report(ex, " ".join(["The cat sat on the mat ."] * 5) + " [[ cat ]]", top_k=1)
    warnings = [r.getMessage() for r in caplog.records if "never trained" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("text: the generator was trained on 16-token sequences")
