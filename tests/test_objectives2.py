"""Second mutation pass: packing and document counts (process.py), feature checks (features.py), file reading
and writing (io_utils.py), vocabulary normalisation (create_vocab_SE.py), checkpoints and resume
(training_utils.py), the equal-compute comparison's budgets and pooling (benchmarks/compare_pretraining.py) and
the explorer's scores (explore_SE.py). Each test pins a value a user relies on; almost all are unit-sized."""
import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import features
import io_utils
import process
import training_utils as tu
from conftest import EpochData
from io_utils import SpanElectraError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import compare_pretraining as cp  # noqa: E402

CLS, SEP = 2, 3


# ---------------------------------------------------------------- process.py: packing
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


# ---------------------------------------------------------------- process.py: documents
def lines_of(files, rule):
    return list(process.document_lines([str(f) for f in files], rule, io_utils.BadByteCounter(), 1 << 20, None))


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


# ---------------------------------------------------------------- features.py
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


# ---------------------------------------------------------------- io_utils.py
def test_undecodable_bytes_are_counted_one_by_one(tmp_path):
    """The undecodable-byte count is of bytes, also where one replacement character stands for a cut sequence."""
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ab\xe2\x82 x\xff\xfe\nok\n")
    bad = io_utils.BadByteCounter()
    assert list(io_utils.iter_lines(str(path), bad)) == ["ab\ufffd x\ufffd\ufffd", "ok"]
    assert bad.count == 4


def test_windows_line_ends_are_not_part_of_the_text(tmp_path):
    """CRLF files give the same lines as LF files: no '\\r' reaches the tokenizer."""
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"one two\r\nthree\r\n")
    assert list(io_utils.iter_lines(str(path), io_utils.BadByteCounter())) == ["one two", "three"]


@pytest.mark.parametrize("text", ["word " * 40, "\u00e9\u00e8\u4e2d" * 30])
def test_long_lines_are_cut_without_losing_or_breaking_characters(text, tmp_path):
    """A line over max_line_bytes comes in pieces that join back to it: cut before a space, never inside a
    UTF-8 character (no replacement characters, none counted as undecodable)."""
    path = tmp_path / "long.txt"
    path.write_bytes(text.encode() + b"\nnext\n")
    bad = io_utils.BadByteCounter()
    cut = []
    pieces = list(io_utils.iter_lines(str(path), bad, max_line_bytes=16, on_long_line=cut.append))
    assert pieces[-1] == "next" and "".join(pieces[:-1]) == text and len(pieces) > 3
    assert bad.count == 0 and cut == [1]
    if " " in text:
        assert all(p.startswith(" ") for p in pieces[1:-1])  # the next piece starts with the space, as the word did
        assert all(len(p.encode()) <= 2 * 16 for p in pieces[:-1])  # memory stays bounded


@pytest.mark.parametrize("suffix,opener", [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)])
def test_compressed_lines_read_as_plain(suffix, opener, tmp_path):
    """.gz, .bz2 and .xz corpora give the lines of the text they hold."""
    path = tmp_path / f"c.txt{suffix}"
    with opener(path, "wb") as f:
        f.write("caf\u00e9 one\n\ntwo\n".encode())
    assert list(io_utils.iter_lines(str(path), io_utils.BadByteCounter())) == ["caf\u00e9 one", "", "two"]


def test_folders_skip_hidden_and_non_text_files_and_globs_recurse(tmp_path):
    """A folder gives its .txt/.tokens/.raw files (also compressed), sorted, without hidden files; '**' recurses."""
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    for name in ("b.txt", ".b.txt.swp.txt", "notes.md", "sub/deep/a.tokens", "sub/c.txt.gz"):
        data = gzip.compress(b"text\n") if name.endswith(".gz") else b"text\n"
        (tmp_path / name).write_bytes(data)
    found = [os.path.relpath(p, tmp_path) for p in io_utils.find_text_files(str(tmp_path), "data_dir")]
    assert found == ["b.txt", "sub/c.txt.gz", "sub/deep/a.tokens"]
    nested = io_utils.find_text_files(str(tmp_path / "**" / "*.tokens"), "data_dir")
    assert [os.path.relpath(p, tmp_path) for p in nested] == ["sub/deep/a.tokens"]


def test_text_in_another_encoding_is_skipped(tmp_path, caplog):
    """A file that is largely not UTF-8 (a third of its bytes undecodable) is skipped with the iconv advice."""
    (tmp_path / "latin.txt").write_bytes(b"\xe9t\xe9 " * 300)
    (tmp_path / "ok.txt").write_bytes("\u00e9t\u00e9 ".encode() * 300)
    assert [os.path.basename(p) for p in io_utils.find_text_files(str(tmp_path), "data_dir")] == ["ok.txt"]
    assert "iconv" in caplog.text


def test_atomic_write_gives_the_usual_permissions_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    """Files written atomically are readable as any file the user writes, and a failed write leaves the old
    file whole and no temporary file behind."""
    path = tmp_path / "meta.json"
    io_utils.atomic_write_json(str(path), {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask
    assert json.loads(path.read_text()) == {"a": 1}

    def fail(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(io_utils.os, "replace", fail)
    with pytest.raises(OSError):
        io_utils.atomic_write_json(str(path), {"a": 2})
    assert os.listdir(tmp_path) == ["meta.json"] and json.loads(path.read_text()) == {"a": 1}


def test_a_full_disk_message_names_the_file_and_the_fix():
    """A full disk is one line naming the file and saying to free space."""
    msg = io_utils.write_failure_message(OSError(28, "No space left on device", "/x/model.safetensors"))
    assert msg.startswith("'/x/model.safetensors': No space left on device") and "free some space" in msg
    msg = io_utils.write_failure_message(RuntimeError("[enforce fail] unexpected pos: No space left on device"), "/o")
    assert msg.startswith("out_dir: cannot write to '/o'") and "free some space" in msg
    assert io_utils.write_failure_message(ValueError("shape mismatch")) is None


# ---------------------------------------------------------------- create_vocab_SE.py
def test_composed_and_decomposed_accents_tokenize_alike(bpe_tok, bert_tok):
    """Both vocabularies normalise to NFC: 'é' typed as one code point or as e + accent gives the same tokens."""
    from tokenizers import Tokenizer
    for tok_dir in (bpe_tok, bert_tok):
        tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        assert tok.encode("caf\u00e9 na\u00efve").ids == tok.encode("cafe\u0301 nai\u0308ve").ids


# ---------------------------------------------------------------- training_utils.py: checkpoints and resume
def test_keep_checkpoints_keeps_the_newest_and_latest_resumes_the_newest(tmp_path):
    """keep_checkpoints N leaves the N newest checkpoints; resume_from latest takes the newest of them."""
    for step in (5, 10, 100, 1000):
        tu.save_checkpoint(str(tmp_path), step, {"step": step, "run_id": "r"}, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-00000100.pt", "checkpoint-00001000.pt"]
    assert tu.load_checkpoint("latest", str(tmp_path), "r")["step"] == 1000
    tu.save_checkpoint(str(tmp_path), 1001, {"step": 1001, "run_id": "r"}, keep=1)
    assert os.listdir(tmp_path) == ["checkpoint-00001001.pt"]


def test_rng_state_round_trips_every_generator():
    """A resumed run draws the same random numbers (python, numpy, torch) as the uninterrupted run."""
    import random
    state = tu.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    tu.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_batch_stream_moves_to_the_next_epoch_and_resumes_at_its_position():
    """Batches run epoch after epoch (the next epoch's order), and a stream started at a saved position
    continues with exactly the next batch."""
    stream = tu.BatchStream(EpochData())
    assert [next(stream)["x"].item() for _ in range(5)] == [0, 1, 2, 10, 11]
    assert stream.state() == {"epoch": 1, "index": 2}
    resumed = tu.BatchStream(EpochData(), **stream.state())
    assert [next(resumed)["x"].item() for _ in range(3)] == [12, 20, 21]


def test_metrics_log_keeps_rows_up_to_the_resumed_step_and_a_fresh_run_starts_empty(tmp_path):
    """Resuming from step 3 keeps the rows up to step 3 (that one included) and drops later rows and 'done';
    a fresh run into the folder starts a new metrics.jsonl."""
    main = SimpleNamespace(is_main=True)
    log = tu.MetricsLog(str(tmp_path), main)
    for step in range(1, 6):
        log.write({"step": step, "loss": 1.0 / step})
    log.write({"step": 5, "event": "done"})
    resumed = tu.MetricsLog(str(tmp_path), main, resume_step=3)
    assert [r["step"] for r in resumed.rows()] == [1, 2, 3] and "event" not in resumed.rows()[-1]
    tu.MetricsLog(str(tmp_path), main)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("world_size,eval_batches,per_rank", [(1, 0, [5]), (2, 0, [3, 2]), (3, 4, [2, 1, 1]),
                                                              (2, 3, [2, 1]), (3, 1, [1, 1, 1]), (1, 9, [5])])
def test_eval_batch_indices_share_the_batches_among_ranks(world_size, eval_batches, per_rank):
    """Each rank evaluates its share of the first eval_batches batches (all with 0, at least one per rank)."""
    got = [len(tu.eval_batch_indices(SimpleNamespace(total_batches=5, world_size=world_size, rank=r), eval_batches))
           for r in range(world_size)]
    assert got == per_rank


def test_a_lock_left_by_a_dead_process_is_taken_over_and_a_live_one_refuses(tmp_path):
    """out_dir/.lock of a process that is gone does not block the next run; one of a running process does."""
    import socket
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path = tmp_path / ".lock"
    lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    lock = tu.OutDirLock(str(tmp_path))
    lock.acquire()
    assert lock.owner() == {"host": socket.gethostname(), "pid": os.getpid()}
    lock.release()
    assert not lock_path.exists()
    lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))
    with pytest.raises(SpanElectraError, match=f"in use by another training process .pid {os.getppid()}"):
        tu.OutDirLock(str(tmp_path)).acquire()
    tu.OutDirLock(str(tmp_path)).release()  # not ours: left in place
    assert lock_path.exists()


# ---------------------------------------------------------------- benchmarks/compare_pretraining.py
FLOPS = {"generator": 10.0, "two_stage": 20.0, "joint": 25.0, "mlm": 40.0}


@pytest.fixture
def fake_training(monkeypatch):
    """step_flops and the two training scripts replaced: records each run's max_steps."""
    calls = []
    monkeypatch.setattr(cp, "step_flops", lambda kind, recipe, sizes, batch: FLOPS[kind])
    monkeypatch.setattr(cp.trainMLM_SpanElectra, "main", lambda c: calls.append(("mlm", c.max_steps)) or c.out_dir)
    monkeypatch.setattr(cp.trainSpanElectra, "main", lambda c: calls.append((c.mode, c.max_steps)) or c.out_dir)
    return calls


@pytest.mark.parametrize("name,budget,steps,spent", [
    ("se_two_stage", 1000.0, [("mlm", 30), ("two_stage", 35)], 1000.0),
    ("se_joint", 1000.0, [("joint", 40)], 1000.0),
    ("mlm", 1000.0, [("mlm", 25)], 1000.0),
    ("se_two_stage", 10.0, [("mlm", 1), ("two_stage", 1)], 30.0)])  # at least one step of each
def test_each_recipe_spends_the_budget_in_its_own_steps(name, budget, steps, spent, fake_training, tmp_path):
    """Equal FLOPs: steps = budget / the recipe's step FLOPs; two-stage gives gen_fraction of it to the generator
    and the rest to the discriminator."""
    config = SimpleNamespace(seed=1, device="cpu", bf16=False, compile=False, gen_fraction=0.3)
    scale = {"model_size": "tiny", "batch": 4, "learning_rate": 1e-3}
    _, used, _ = cp.pretrain(cp.RECIPES[name][1], budget, config, {"features": "f", "vocab": 100}, scale,
                             str(tmp_path / name))
    assert fake_training == steps and used == spent


def seed_row(seed, fraction, accuracies):
    per_seed = [{"seed": s, "eval_accuracy": a} for s, a in enumerate(accuracies)]
    results = {"per_seed": per_seed, **cp.finetune_SE.summarise(per_seed, ["eval_accuracy"])}
    return {"run": f"mlm@{fraction:g}#s{seed}", "recipe": "mlm", "label": "MLM", "fraction": fraction,
            "seconds": 10.0 * seed, "metrics": {"sst2": {"key": "eval_accuracy", "results": results}}}


def test_pooled_seeds_give_median_min_and_max_of_every_fine_tuning_run():
    """Rows of one recipe and budget pooled over pre-training seeds: the cell is the median [min, max] of all
    their fine-tuning runs; other budgets stay apart."""
    rows = [seed_row(1, 1.0, [0.6, 0.7]), seed_row(2, 1.0, [0.8, 0.9]), seed_row(3, 0.5, [0.5, 0.55])]
    pooled = cp.pooled_rows(rows)
    assert [(r["fraction"], len(r.get("seed_rows", [r]))) for r in pooled] == [(1.0, 2), (0.5, 1)]
    results = pooled[0]["metrics"]["sst2"]["results"]
    assert cp.summary_cell(results, "eval_accuracy") == "0.750 [0.600, 0.900]"
    assert len(results["per_seed"]) == 4 and pooled[0]["seconds"] == 15.0
    assert cp.summary_cell(pooled[1]["metrics"]["sst2"]["results"], "eval_accuracy") == "0.525 [0.500, 0.550]"


def test_headline_metric_prefers_matthews_over_spearman_and_accuracy():
    """CoLA-like results report Matthews, STS-B-like Spearman, each before accuracy."""
    assert cp.headline_metric({"eval_accuracy": 1, "eval_matthews_corr": 1, "eval_spearman": 1}) == "eval_matthews_corr"
    assert cp.headline_metric({"eval_accuracy": 1, "eval_spearman": 1}) == "eval_spearman"


def test_a_cached_row_is_reused_only_with_its_own_seed_and_gen_fraction():
    """A row pre-trained with another seed or (two-stage) another gen_fraction is trained again, not reused."""
    scale = {"model_size": "tiny", "batch": 4, "learning_rate": 1e-3}
    config = SimpleNamespace(seed=1, bf16=False, gen_fraction=0.3)
    ident = cp.row_identity("se_two_stage", 1.0, config, scale, 2e12)
    assert ident["gen_fraction"] == 0.3 and ident["seed"] == 1 and ident["budget_tflops"] == 2.0
    rows = [{"run": "se_two_stage@1", "identity": ident}, {"run": "mlm@1", "identity": {}}]
    assert cp.cached_row(list(rows), "se_two_stage@1", ident) is rows[0]
    for changed in (SimpleNamespace(seed=1, bf16=False, gen_fraction=0.5), SimpleNamespace(seed=2, bf16=False,
                                                                                         gen_fraction=0.3)):
        kept = list(rows)
        assert cp.cached_row(kept, "se_two_stage@1", cp.row_identity("se_two_stage", 1.0, changed, scale, 2e12)) is None
        assert kept == rows[1:]  # the stale row goes, the other run's stays


# ---------------------------------------------------------------- explore_SE.py
@pytest.fixture(scope="module")
def explorer(bpe_tok, tmp_path_factory):
    import explore_SE
    from test_explore import save_models
    return explore_SE.Explorer(str(save_models(bpe_tok, tmp_path_factory.mktemp("explore2") / "en")))


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
