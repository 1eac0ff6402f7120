"""Look inside a trained SpanElectra: the generator's fills for masked spans and the
discriminator's probability that each token was replaced.

    python explore_SE.py --model_dir OUT --text "The game was released in [[ January 2011 ]] in Japan ."

OUT is a training out_dir (holding generator/ and/or discriminator/) or one of those folders.
Words inside [[ ]] are masked, and any [MASK] typed in the text; with neither, random spans are masked
as in training. Vietnamese text is segmented whole, as the corpus was, and a mark inside a segmented
word masks the whole word. The generator and the discriminator come from one run (the explorer stops
when their tokenizers differ). The discriminator scores the text as given, so corrupt a sentence by
hand to see what it catches.
A generator trained here also shows its span-boundary head's fills (from the two tokens just
outside each span): early in training they follow the context before the MLM head's do.
From a notebook: `ex = Explorer("OUT"); ex.fill(text); ex.fill_from_boundaries(text); ex.detect(text)`.
"""
import logging
import os
import unicodedata

import numpy as np
import torch
from transformers import ElectraForMaskedLM, ElectraForPreTraining

from argument import (DISCRIMINATOR_RUN, MARK, MaskingArgs, checked_config, explore_args, marks_problem, run_main,
                      saved_config)
from masking import IGNORE_INDEX, Masker, batch_from_spans, prediction_slots, word_start_table
from tokenization import (SPECIAL_TOKENS, byte_level_bytes, check_tokenizer_fits, folder_segmenter,
                          read_tokenizer_info, tokenizer_hash)
from io_utils import SpanElectraError
from modelling_span_electra import (find_pretrained, load_generator, load_tokenizer_of, load_weights, saved_heads,
                                   warn_untrained_positions)

logger = logging.getLogger("span_electra")


def _find(model_dir, kind):
    """The `kind` folder in model_dir: itself, model_dir/kind, or one run folder down (run_pipeline.py's
    out_dir holds generator/generator and two_stage/discriminator); ours, or any transformers ELECTRA folder."""
    runs = sorted(os.path.join(model_dir, d, kind) for d in os.listdir(model_dir)
                  if os.path.isdir(os.path.join(model_dir, d, kind)))
    for path in [os.path.join(model_dir, kind), model_dir] + runs:
        if find_pretrained(path, kind) == path:
            return path
    return None


def _two_stage_generator(run_dir):
    """The generator a two-stage discriminator in run_dir was trained against (its generator_dir, from the
    run's saved config), when that folder still holds it; else None. A relative generator_dir is read
    from where the run was started, which the saved out_dir tells, as well as from here."""
    saved = saved_config(run_dir, DISCRIMINATOR_RUN)
    given, out_dir = saved.get("generator_dir") or "", os.path.normpath(saved.get("out_dir") or "")
    if not given:
        return None
    here = os.path.abspath(run_dir)
    started_in = here[:-len(out_dir)] if out_dir != "." and here.endswith(os.sep + out_dir) else None
    for folder in [given] + ([os.path.join(started_in, given)] if started_in and not os.path.isabs(given) else []):
        found = _find(folder, "generator") if os.path.isdir(folder) else None
        if found:
            return found
    return None


def find_models(model_dir):
    """(generator folder, discriminator folder) of one run in model_dir: the discriminator, then the
    generator saved beside it (joint) or the one it was trained against (two-stage), else any generator
    there; either may be None."""
    disc = _find(model_dir, "discriminator")
    if disc is None:
        return _find(model_dir, "generator"), None
    gen = None
    if os.path.basename(os.path.abspath(disc)) == "discriminator":  # a run's: RUN/discriminator (not a lone folder,
        run_dir = os.path.dirname(os.path.abspath(disc))            # whose parent may hold unrelated runs)
        beside = os.path.join(run_dir, "generator")
        gen = beside if find_pretrained(beside, "generator") == beside else _two_stage_generator(run_dir)
    return gen or _find(model_dir, "generator"), disc


def same_tokenizer(gen_dir, disc_dir):
    """Stop when the generator and the discriminator were saved with different tokenizers (another vocabulary
    or segmentation): the discriminator would read ids of another vocabulary. The same tokenizer saved
    otherwise (tokenizer.json in one folder, vocab.txt alone in the other) is the same."""
    if tokenizer_hash(gen_dir) == tokenizer_hash(disc_dir):
        return
    segmenters = {read_tokenizer_info(d)["word_segmenter"] for d in (gen_dir, disc_dir)}
    if len(segmenters) > 1 or load_tokenizer_of(gen_dir).get_vocab() != load_tokenizer_of(disc_dir).get_vocab():
        raise SpanElectraError(f"model_dir: the generator in '{gen_dir}' and the discriminator in '{disc_dir}' were "
                               "trained with different tokenizers; point --model_dir at one run's folder")


def char_positions(plain, segmented):
    """Where each character of plain sits in segmented (None for a space), or None where the segmenter
    did more than join words with '_' and move spaces (pyvi's only changes)."""
    where, j = [], 0
    for c in plain:
        if c.isspace():
            where.append(None)
            continue
        while j < len(segmented) and segmented[j] != c and (segmented[j].isspace() or segmented[j] == "_"):
            j += 1
        if j == len(segmented) or segmented[j] != c:
            return None
        where.append(j)
        j += 1
    return where


def joined_pieces(text, prepare):
    """The marked and unmarked pieces of text, each through prepare, joined as in the text (one space where it
    has whitespace between them, none where a mark touches a word: 're[[leas]]ed' is 'released', as
    plain_text reads it), and the character ranges of the marked ones in the result."""
    out, marks, gap = "", [], False
    for i, piece in enumerate(MARK.split(text)):
        gap = gap or piece[:1].isspace()
        words = " ".join(piece.split())
        words = prepare(words) if words else ""
        if words:
            out += " " if out and gap else ""
            if i % 2 == 1:
                marks.append((len(out), len(out) + len(words)))
            out += words
        gap = (gap and not words) or piece[-1:].isspace()
    return out, marks


def whole_words(text, start, end):
    """The range [start, end) of text widened to whole words (whitespace-delimited)."""
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return start, end


def plain_text(text):
    """The text with its [[ ]] marks taken away (the words kept), its spaces single: what the discriminator reads."""
    return " ".join(MARK.sub(lambda m: m.group(1), text).split())


class TextEncoder:
    """A tokenizer folder's tokenizer and word segmenter: how the explorer turns a text into token ids, for
    the explorer and for run_pipeline.py's check, before training, that its text will fit the models."""

    def __init__(self, tok_dir, field="model_dir"):
        self.tokenizer = load_tokenizer_of(tok_dir, field)
        self.segmenter, self.segment = folder_segmenter(tok_dir, field)
        self.notes = []  # what the last marked text needed said (a mark inside a segmented word)

    def _segmented_marks(self, text):
        """(the text as the model reads it, segmented whole as the corpus was, and the character ranges
        of its marked spans in it). A mark inside a segmented word (pyvi's 'Hồ_Chí_Minh') covers the
        whole word, as training's whole-word masking would, and says so in self.notes."""
        problem = marks_problem(text)
        if problem:
            raise SpanElectraError(f"text: {problem}")
        if self.segmenter == "none":
            return joined_pieces(text, lambda piece: piece)
        # NFC first, as pyvi does, so that the marks' offsets hold in the text it segments
        plain, marks = joined_pieces(text, lambda piece: unicodedata.normalize("NFC", piece))
        segmented = self.segment(plain)
        where = char_positions(plain, segmented)
        if where is None:  # the segmenter changed characters: segment each piece on its own
            return joined_pieces(text, self.segment)
        spans = []
        for start, end in marks:
            first, last = where[start], where[end - 1]
            wide = whole_words(segmented, first, last + 1)
            if wide != (first, last + 1):
                self.notes.append(f"  ('{plain[start:end]}' is part of the word '{segmented[wide[0]:wide[1]]}' as the "
                                  "corpus was segmented: the whole word is masked, as training masks whole words)")
            spans.append(wide)
        return segmented, spans

    def encode_marked(self, text):
        """The tokenizer's encoding (ids and character offsets) of a marked text as the generator reads it, and
        the character ranges of its marked spans."""
        self.notes = []
        words, marks = self._segmented_marks(text)
        # verbose=False: a text past the positions is said in one line (Explorer._check_length, run_pipeline.py)
        return self.tokenizer(words, return_offsets_mapping=True, verbose=False), marks

    def encode_plain(self, text):
        """The token ids of an unmarked text as the discriminator reads it, segmented as the corpus was."""
        return self.tokenizer(self.segment(text), verbose=False)["input_ids"]

    def longest_encoding(self, text):
        """The most tokens ([CLS] and [SEP] included) that a report on the marked text has a model read."""
        return max(len(self.encode_marked(text)[0]["input_ids"]), len(self.encode_plain(plain_text(text))))


class Explorer(TextEncoder):
    """The saved generator and discriminator of a run, loaded through plain transformers."""

    def __init__(self, model_dir=None, generator_dir=None, discriminator_dir=None):
        found = find_models(model_dir) if model_dir else (None, None)  # what is not given comes from model_dir
        self.gen_dir, self.disc_dir = generator_dir or found[0], discriminator_dir or found[1]
        if not (self.gen_dir or self.disc_dir):
            raise SpanElectraError(f"model_dir: '{model_dir}' holds no saved generator or discriminator")
        if self.gen_dir and self.disc_dir:
            same_tokenizer(self.gen_dir, self.disc_dir)
        tok_dir = self.gen_dir or self.disc_dir
        super().__init__(tok_dir)
        self.generator, self.span_generator = None, None  # span_generator: with its span-boundary head
        if self.gen_dir and saved_heads(self.gen_dir, "generator", "use_sbo"):
            self.span_generator = load_generator(self.gen_dir, "model_dir").eval()
            self.generator = self.span_generator.mlm
        elif self.gen_dir:
            self.generator = load_weights(ElectraForMaskedLM, self.gen_dir, "model_dir").eval()
        self.discriminator = load_weights(ElectraForPreTraining, self.disc_dir, "model_dir").eval() \
            if self.disc_dir else None
        models = [m for m in (self.generator, self.discriminator) if m]
        self.max_tokens = min(m.config.max_position_embeddings for m in models)
        check_tokenizer_fits(self.tokenizer, min(m.config.vocab_size for m in models), tok_dir)
        self.longest_warned = 0  # the longest text a pass checked against the trained length

    def _check_length(self, ids):
        """A text longer than the models' positions is a one-line error, not an index error inside them."""
        if len(ids) > self.max_tokens:
            raise SpanElectraError(f"text: {len(ids)} tokens, more than the model's {self.max_tokens} positions; "
                                   "give a shorter text (a sentence or two)")
        if len(ids) > self.longest_warned:  # once per text, not per model pass over it
            self.longest_warned = len(ids)
            warn_untrained_positions(self.gen_dir or self.disc_dir, "generator" if self.gen_dir else "discriminator",
                                     len(ids), "text", "this text has", "give a text of at most {trained} tokens")

    def _encode_marked(self, text, seed):
        """Token ids with the marked (or random) spans, and any [MASK] typed in the text, replaced by [MASK],
        and the original ids."""
        enc, marks = self.encode_marked(text)
        self._check_length(enc["input_ids"])
        ids = np.array(enc["input_ids"])
        typed = ids == self.tokenizer.mask_token_id  # a [MASK] in the text is filled too, as fill-mask does
        masked = np.zeros(len(ids), dtype=bool)
        for start, end in marks:
            for t, (a, b) in enumerate(enc["offset_mapping"]):
                masked[t] |= b > a and a < end and b > start
        if not marks and not typed.any():
            special = [self.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
            masker = Masker(MaskingArgs(mask_replace_prob=1.0, random_replace_prob=0.0),
                            word_start_table(self.tokenizer), special, self.tokenizer.mask_token_id, len(self.tokenizer))
            masked = masker(ids[None], np.random.default_rng(seed))["labels"][0] != IGNORE_INDEX
        masked |= typed
        corrupted = np.where(masked, self.tokenizer.mask_token_id, ids)
        return torch.tensor(ids), torch.tensor(corrupted), masked

    def _top_fills(self, ids, positions, probs, top_k):
        """[(original token, [(fill, probability), ...]), ...]: probs[k] is the distribution at positions[k]."""
        probs = probs[..., :len(self.tokenizer)]  # a converted model's rows past its vocabulary are no token
        top_k = min(top_k, probs.shape[-1])  # --top_k beyond the vocabulary shows all of it
        return [(self.tokenizer.convert_ids_to_tokens(int(ids[t])),
                 [(self.tokenizer.convert_ids_to_tokens(int(i)), float(q)) for q, i in zip(*p.topk(top_k))])
                for t, p in zip(positions, probs)]

    @torch.no_grad()
    def fill(self, text, top_k=5, seed=0):
        """[(original token, [(fill, probability), ...]), ...] for every masked token."""
        if self.generator is None:
            raise SpanElectraError("model_dir: no generator saved there")
        ids, corrupted, masked = self._encode_marked(text, seed)
        positions = np.flatnonzero(masked)
        probs = self.generator(input_ids=corrupted[None]).logits[0].softmax(-1)
        return self._top_fills(ids, positions, probs[positions], top_k)

    @torch.no_grad()
    def fill_from_boundaries(self, text, top_k=5, seed=0):
        """Like fill, from the generator's span-boundary head: each masked token predicted from the
        two tokens just outside its span and its place in the span (SpanBERT's SBO); None without one.
        The span fields come from the same masking code as in training, the logits from its forward."""
        if self.span_generator is None:
            return None
        ids, corrupted, masked = self._encode_marked(text, seed)
        if not masked.any():
            return []
        edges = np.diff(np.concatenate([[0], masked.astype(np.int8), [0]]))  # +1 at a span's start, -1 past its end
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        spans = {"row": np.zeros(len(starts), dtype=np.int64), "start": starts, "end": ends, "words": None}
        batch = batch_from_spans(ids.numpy()[None], corrupted.numpy()[None], spans)
        slots = {k: torch.from_numpy(v) for k, v in prediction_slots(batch, int(masked.sum())).items()}
        probs = self.span_generator(**slots)["sbo_logits"][0].softmax(-1)
        return self._top_fills(ids, slots["masked_lm_positions"][0], probs, top_k)

    @torch.no_grad()
    def detect(self, text):
        """[(token, probability it was replaced), ...] for the text as given."""
        if self.discriminator is None:
            raise SpanElectraError("model_dir: no discriminator saved there")
        ids = self.encode_plain(text)
        self._check_length(ids)
        logits = self.discriminator(input_ids=torch.tensor([ids])).logits[0]
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        return [(t, float(p)) for t, p in zip(tokens, logits.sigmoid())][1:-1]


def probability(p):
    """Two decimals, or one significant digit below 0.01 (a young model's fills are all near 0.001)."""
    return f"{p:.2f}" if p >= 0.01 else f"{p:.1g}"


def show_token(tokenizer, token):
    """A vocabulary token as readable text: byte-level BPE bytes decoded, '##' dropped; a
    Vietnamese word keeps its '_' between syllables."""
    if not token:
        return token
    decoded = tokenizer.convert_tokens_to_string([token])
    text = decoded.strip().replace("##", "")
    if not text and decoded and decoded.isspace():
        return "(space)"  # byte-level BPE's lone 'Ġ' (or a newline token) decodes to blank text
    if partial_character(tokenizer, token):  # its bytes, as '<0xE6><0x97>', not a '\ufffd' per token
        return "".join(f"<0x{byte_level_bytes()[c]:02X}>" for c in token)
    # a control character (ESC, BEL) as its code: printed raw it would act on the terminal
    text = "".join(f"<0x{ord(c):02X}>" if unicodedata.category(c) == "Cc" else c for c in text)
    return text or token


def partial_character(tokenizer, token):
    """True for a byte-level token that holds only part of a character (a CJK character or an emoji
    cut into byte tokens), which decodes to '\ufffd'."""
    return "\ufffd" in tokenizer.convert_tokens_to_string([token]) and all(c in byte_level_bytes() for c in token)


def readable_pieces(tokenizer, scored):
    """[(text, probability)] of detect's tokens, with the byte-level tokens that each hold part of one
    character ('日', an emoji) joined into that character, at the highest probability among them."""
    pieces, tokens = [], []
    for token, p in scored:
        tokens.append((token, p))
        joined = "".join(t for t, _ in tokens)
        if not partial_character(tokenizer, joined) or len(tokens) == 4:  # a UTF-8 character takes at most 4 bytes
            pieces.append((show_token(tokenizer, joined), max(q for _, q in tokens)))
            tokens = []
    if tokens:
        pieces.append((show_token(tokenizer, "".join(t for t, _ in tokens)), max(q for _, q in tokens)))
    return pieces


def fills_note(tokenizer, rows, head="generator"):
    """A newcomer's reading of the fills: the same first guess at every masked position means the
    head predicts word frequencies, not yet the context (an early or small generator does)."""
    firsts = {fills[0][0] for _, fills in rows if fills}
    if len(rows) > 1 and len(firsts) == 1:
        return [f"  (the same first guess, '{show_token(tokenizer, firsts.pop())}', at every masked position: the "
                f"{head} fills from word frequencies, not yet from the context; it needs more training)"]
    return []


def boundary_note(tokenizer, mlm_rows, sbo_rows):
    """Says when the span-boundary head already reads the context and the MLM head does not yet: it
    sees the neighbouring words directly, while attention takes many more steps to find them."""
    sbo_firsts = {fills[0][0] for _, fills in sbo_rows if fills}
    if fills_note(tokenizer, mlm_rows) and len(sbo_firsts) > 1:
        return ["  (the span-boundary head's guesses change with the words around each span: it has learned "
                "from the context, the MLM head not yet)"]
    return []


def fill_lines(tokenizer, rows):
    return [f"  {show_token(tokenizer, original):>16} -> " + "  ".join(f"{show_token(tokenizer, t)} {probability(p)}"
                                                                      for t, p in fills) for original, fills in rows]


def report(explorer, text, top_k=5, seed=0):
    """The explorer's readable tables, as a list of lines."""
    lines = []
    plain = plain_text(text)
    if explorer.generator is not None:
        rows = explorer.fill(text, top_k, seed)
        notes = explorer.notes
        sbo_rows = explorer.fill_from_boundaries(text, top_k, seed)
        head = "generator" if sbo_rows is None else "MLM head"
        lines.append(f"generator fills for: {text}")
        lines += notes
        if sbo_rows is not None:
            lines.append("  MLM head (the whole sentence, through attention):")
        lines += fill_lines(explorer.tokenizer, rows) or ["  (nothing to fill: no word the masking may choose; mark "
                                                          "words with [[ ]] or type [MASK])"]
        lines += fills_note(explorer.tokenizer, rows, head)
        if sbo_rows is not None:
            lines.append("  span-boundary head (the two words just outside the span, and the place in it):")
            lines += fill_lines(explorer.tokenizer, sbo_rows)
            lines += fills_note(explorer.tokenizer, sbo_rows, "span-boundary head")
            lines += boundary_note(explorer.tokenizer, rows, sbo_rows)
    elif MARK.search(text):
        lines.append("no generator beside this model, so the marked spans are not filled; point --model_dir at a "
                     "folder holding generator/ too")
    if explorer.discriminator is not None:
        lines.append(f"discriminator P(replaced) for: {plain}")
        scored = readable_pieces(explorer.tokenizer, explorer.detect(plain))
        lines.append("  " + "  ".join(f"{text}:{probability(p)}" for text, p in scored))
    return lines


def main(config: explore_args = None):
    config = checked_config(config, explore_args)
    config.validate()
    explorer = Explorer(config.model_dir)
    logger.info("generator: %s; discriminator: %s", explorer.gen_dir or "none", explorer.disc_dir or "none")
    lines = report(explorer, config.text, config.top_k, config.seed)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    run_main(main, explore_args)
