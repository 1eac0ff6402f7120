"""Objectives, schedules, metrics and wiring that a mutation pass found unprotected: each test pins the
value a user relies on (losses as documented, the learning-rate schedule, metric formulas, what a
resume refuses, what fine-tuning writes). Tiny tensors wherever possible; the few runs are 1-2 steps."""
import dataclasses
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import argument
import features
import finetune_SE as ft
import masking
import modelling_span_electra as mse
import tokenization
import trainMLM_SpanElectra
import trainSpanElectra
import training_utils as tu
from io_utils import SpanElectraError

V, L = 60, 12  # vocabulary and sequence length of the hand-made batches


def tiny_configs(**kw):
    """(generator, discriminator) ElectraConfigs of the tiny preset with one layer, dropout off."""
    kw.setdefault("num_hidden_layers", 1)
    return mse.electra_configs("tiny", V, L, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)


def slot_batch():
    """A hand-made [2, L] batch with 4 prediction slots (row 0: 3 real slots, row 1: 2), one span each side."""
    g = torch.Generator().manual_seed(0)
    original = torch.randint(5, V, (2, L), generator=g)
    original[:, 0], original[:, -1] = 2, 3
    positions = torch.tensor([[2, 3, 7, 0], [4, 5, 0, 0]])
    weights = torch.tensor([[1., 1., 1., 0.], [1., 1., 0., 0.]])
    input_ids = original.clone()
    input_ids.scatter_(1, positions, torch.where(weights > 0, 4, original.gather(1, positions)))
    return {"input_ids": input_ids, "original_ids": original, "masked_lm_positions": positions,
            "masked_lm_ids": original.gather(1, positions) * (weights > 0), "masked_lm_weights": weights,
            "span_position": torch.tensor([[0, 1, 0, 0], [0, 1, 0, 0]]),
            "boundary_left": torch.tensor([[1, 1, 6, 0], [3, 3, 0, 0]]),
            "boundary_right": torch.tensor([[4, 4, 8, 0], [6, 6, 0, 0]])}


# ---------------------------------------------------------------- model objectives
def test_joint_generator_head_is_tied_to_the_shared_word_embeddings():
    """Joint training decodes the generator with the one shared embedding table (ELECTRA), not a stale copy."""
    gen_cfg, disc_cfg = tiny_configs()
    model = mse.SpanElectraJoint(gen_cfg, disc_cfg)
    shared = model.discriminator.core.electra.embeddings
    assert model.generator.mlm.generator_lm_head.weight is shared.word_embeddings.weight
    assert model.generator.mlm.electra.embeddings is shared


@pytest.mark.parametrize("use_sbo", [True, False])
def test_generator_loss_is_mlm_plus_sbo(use_sbo):
    """The generator's loss is the masked-mean MLM loss plus, with use_sbo, the SBO loss (else MLM alone)."""
    gen_cfg, _ = tiny_configs()
    torch.manual_seed(0)
    gen = mse.SpanElectraGenerator(gen_cfg, use_sbo=use_sbo)
    batch = slot_batch()
    out = gen(**batch)
    w = batch["masked_lm_weights"]
    ce = F.cross_entropy(out["logits"].flatten(0, 1), batch["masked_lm_ids"].flatten(), reduction="none")
    expected_mlm = (ce * w.flatten()).sum() / w.sum()  # padding slots (weight 0) left out
    torch.testing.assert_close(out["mlm_loss"], expected_mlm)
    if use_sbo:
        assert out["sbo_loss"] > 0
        torch.testing.assert_close(out["loss"], out["mlm_loss"] + out["sbo_loss"])
    else:
        assert "sbo_loss" not in out
        torch.testing.assert_close(out["loss"], out["mlm_loss"])


@pytest.mark.parametrize("use_all_token,use_span_head,parts", [(True, True, ("rtd_loss", "span_loss")),
                                                               (False, True, ("span_loss",)),
                                                               (True, False, ("rtd_loss",))])
def test_discriminator_loss_sums_the_chosen_objectives(use_all_token, use_span_head, parts):
    """The discriminator's loss is the sum of the objectives switched on (use_all_token: RTD, use_span_head: span)."""
    _, disc_cfg = tiny_configs()
    torch.manual_seed(0)
    disc = mse.SpanElectraDiscriminator(disc_cfg, use_all_token=use_all_token, use_span_head=use_span_head)
    batch = slot_batch()
    replaced = torch.zeros(2, L, dtype=torch.long)
    replaced[0, [2, 7]] = 1
    out = disc(**mse.discriminator_inputs(batch, batch["input_ids"], replaced))
    assert out["rtd_loss"] > 0 and ("span_loss" in out) == use_span_head
    torch.testing.assert_close(out["loss"], sum(out[p] for p in parts))


def test_saved_discriminator_folds_in_the_embedding_delta_and_leaves_the_model_alone(tmp_path):
    """A gradient-disentangled discriminator is saved with shared table + delta; the live shared table is untouched."""
    gen_cfg, disc_cfg = tiny_configs()
    model = mse.SpanElectraJoint(gen_cfg, disc_cfg, gradient_disentangled=True)
    with torch.no_grad():
        model.embedding_delta.normal_(0, 0.5)
    shared = model.discriminator.core.electra.embeddings.word_embeddings.weight
    before = shared.detach().clone()
    mse.save_discriminator(model.discriminator, str(tmp_path / "disc"), embedding_delta=model.embedding_delta)
    from transformers import ElectraForPreTraining
    saved = ElectraForPreTraining.from_pretrained(tmp_path / "disc").electra.embeddings.word_embeddings.weight
    torch.testing.assert_close(saved.detach(), before + model.embedding_delta.detach())
    assert torch.equal(shared.detach(), before)  # the joint model trains on from the same shared table
    assert model.generator.mlm.generator_lm_head.weight is shared


def test_two_stage_discriminator_starts_from_the_whole_generator_encoder():
    """init_discriminator_from_generator copies every same-shaped tensor (encoder layers too) and counts them."""
    _, disc_cfg = tiny_configs(num_hidden_layers=2)
    torch.manual_seed(0)
    gen = mse.SpanElectraGenerator(disc_cfg)  # same sizes as the discriminator: everything fits
    disc = mse.SpanElectraDiscriminator(disc_cfg)
    name = "encoder.layer.1.attention.self.query.weight"
    source = gen.mlm.electra.state_dict()
    assert not torch.equal(disc.core.electra.state_dict()[name], source[name])
    copied = mse.init_discriminator_from_generator(disc, gen)
    assert copied == len(source)
    target = disc.core.electra.state_dict()
    for key, value in source.items():
        assert torch.equal(target[key], value), key


# ---------------------------------------------------------------- optimisation
def test_warmup_then_linear_decay_learning_rates():
    """The LR warms up linearly over warmup steps to the peak, then falls linearly to 0 at total steps (BERT)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = tu.warmup_linear_schedule(opt, 4, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([.25, .5, .75, 1, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)


def test_no_weight_decay_on_one_dimensional_parameters():
    """AdamW decays matrices only: biases and norm weights (ndim < 2, whatever their name) get weight decay 0."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Embedding(5, 4))
    opt = tu.build_optimizer(model, 1e-3, 0.01)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(decay) == len(named)
    assert {n: decay[id(p)] for n, p in named.items()} == {
        "0.weight": 0.01, "0.bias": 0.0, "1.weight": 0.0, "1.bias": 0.0, "2.weight": 0.01}


# ---------------------------------------------------------------- metrics
def test_precision_and_recall_of_replaced_token_detection():
    """disc_precision = true positives / predicted replaced, disc_recall = true positives / actually replaced."""
    out = tu.finish_metrics({"tokens": 100.0, "replaced": 10.0, "predicted": 4.0, "true_positive": 2.0,
                             "correct": 90.0, "disc_loss": 0.8}, 2)
    assert out["disc_precision"] == pytest.approx(0.5) and out["disc_recall"] == pytest.approx(0.2)
    assert out["disc_accuracy"] == pytest.approx(0.9) and out["replaced_fraction"] == pytest.approx(0.1)
    assert out["disc_loss"] == pytest.approx(0.4)


def generator_out(weights, targets, predicted):
    """A generator output whose argmax at each slot is `predicted`."""
    logits = F.one_hot(torch.tensor(predicted), V).float()
    return {"weights": torch.tensor(weights), "targets": torch.tensor(targets), "logits": logits,
            "loss": torch.tensor(1.0), "mlm_loss": torch.tensor(1.0)}


def test_mask_ratio_counts_only_tokens_that_can_be_masked():
    """mask_ratio = masked slots / tokens other than each row's [CLS] and [SEP]."""
    slots = [[7, 8, 9, 0], [7, 0, 0, 0]]
    out = generator_out([[1., 1., 1., 0.], [1., 0., 0., 0.]], slots, slots)
    batch = {"input_ids": torch.zeros(2, 10, dtype=torch.long), "span_position": torch.zeros(2, 4, dtype=torch.long)}
    metrics = tu.generator_metrics(out, batch)
    assert metrics["mask_ratio"].item() == pytest.approx(4 / 16)


def test_mlm_accuracy_ignores_padding_slots():
    """mlm_accuracy counts real slots only: padding slots (weight 0, target 0) never count as right answers."""
    out = generator_out([[1., 1., 0., 0.]], [[7, 8, 0, 0]], [[7, 9, 0, 0]])
    batch = {"input_ids": torch.zeros(1, 10, dtype=torch.long), "span_position": torch.zeros(1, 4, dtype=torch.long)}
    metrics = tu.generator_metrics(out, batch, baseline_token=0)
    assert metrics["mlm_accuracy"].item() == pytest.approx(0.5)
    assert metrics["mlm_baseline_accuracy"].item() == 0.0  # the padding slots' target 0 is no hit either


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


# ---------------------------------------------------------------- masking
def test_random_replacements_draw_from_every_ordinary_token():
    """Random replacement picks among all non-special ids (the last id included), never a special one."""
    vocab = 12
    masker = masking.Masker(argument.MaskingArgs(masking="token", mask_ratio=0.5, mask_replace_prob=0.0,
                                                 random_replace_prob=1.0), np.ones(vocab, dtype=bool),
                            special_ids=range(5), mask_id=4, vocab_size=vocab)
    np.testing.assert_array_equal(masker.random_ids, np.arange(5, vocab))
    ids = np.full((200, 20), 5)
    ids[:, 0], ids[:, -1] = 2, 3
    batch = masker(ids, np.random.default_rng(0))
    drawn = batch["input_ids"][batch["labels"] != -100]
    assert set(drawn.tolist()) == set(range(5, vocab))


def test_token_masking_masks_at_least_one_token_of_a_short_row():
    """A row whose 15% rounds to 0 tokens still gets exactly one masked token."""
    masker = masking.Masker(argument.MaskingArgs(masking="token"), np.ones(V, dtype=bool), special_ids=range(5),
                            mask_id=4, vocab_size=V)
    ids = np.array([[2, 10, 11, 3, 0, 0], [2, 12, 13, 14, 15, 3]])
    batch = masker(ids, np.random.default_rng(0))
    assert (batch["labels"] != -100).sum(1).tolist() == [1, 1]
    assert not np.isin(batch["labels"][batch["labels"] != -100], range(5)).any()


def test_prediction_slots_cannot_exceed_the_maskable_tokens():
    """max_predictions_per_seq above seq_len - 2 is a one-line error naming the field; seq_len - 2 is accepted."""
    config = argument.MaskingArgs(masking="token", max_predictions_per_seq=127)
    with pytest.raises(SpanElectraError) as e:
        masking.max_prediction_slots(config, 128)
    message = str(e.value)
    assert message.startswith("max_predictions_per_seq:") and "\n" not in message and "126" in message
    assert masking.max_prediction_slots(dataclasses.replace(config, max_predictions_per_seq=126), 128) == 126


# ---------------------------------------------------------------- tokenizers
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


# ---------------------------------------------------------------- resuming
def test_mutable_settings_are_those_that_leave_the_trained_model_unchanged(tmp_path):
    """A resume may change only bookkeeping: a changed mask_ratio, learning_rate or other setting is refused."""
    # Why this set: max_steps only extends the run; log/eval/save/keep settings say how often and how much is
    # written or evaluated; resume_from/overwrite_output_dir/out_dir/features_dir/tokenizer_dir/generator_dir say
    # where files are (what they hold is pinned by digests in the identity); device/bf16/compile/num_workers change
    # speed, not the recipe. Any other field changes what is trained, so a resume that changes it makes two runs.
    assert tu.MUTABLE_SETTINGS == {
        "max_steps", "log_every", "eval_every", "save_every", "eval_batches", "eval_batch_size", "keep_checkpoints",
        "num_workers", "resume_from", "overwrite_output_dir", "out_dir", "device", "bf16", "compile", "features_dir",
        "tokenizer_dir", "generator_dir"}
    feats = SimpleNamespace(meta={"tokenizer_hash": "h", "num_sequences": {"train": 100}}, max_seq_len=128,
                            vocab_size=2000)
    first = argument.MLM_trainingConfig(features_dir="f", out_dir=str(tmp_path))
    (tmp_path / "run.json").write_text(json.dumps(
        {"run_id": "r1", "fixed": tu.run_identity(first, feats, "generator")}), encoding="utf-8")
    (tmp_path / "metrics.jsonl").write_text("", encoding="utf-8")

    def resume(**changes):
        config = dataclasses.replace(first, resume_from="latest", **changes)
        return tu.check_run(config, tu.run_identity(config, feats, "generator"))

    assert resume(max_steps=5000, log_every=1, eval_batches=3) == "r1"
    for field, value in (("mask_ratio", 0.3), ("learning_rate", 1e-3), ("masking", "token"), ("seed", 7)):
        with pytest.raises(SpanElectraError, match=f"^{field}: the run in .* was started with"):
            resume(**{field: value})


# ---------------------------------------------------------------- the training loops
SMALL = dict(num_hidden_layers=1, log_every=1, eval_every=1000, eval_batches=1, eval_batch_size=4, device="cpu",
             num_workers=0)


def test_joint_training_follows_the_temperature_curriculum(bpe_feat, tmp_path, monkeypatch):
    """Generator samples are drawn at temperature_start, falling linearly to 1 over temperature_decay of the steps."""
    seen, real = [], mse.sample_tokens

    def spy(logits, rng=None, temperature=1.0):
        if torch.is_tensor(temperature):  # the training step's (evaluation passes a plain 1.0)
            seen.append(round(float(temperature), 6))
        return real(logits, rng, temperature)
    monkeypatch.setattr(mse, "sample_tokens", spy)
    trainSpanElectra.main(argument.SE_trainingConfig(
        features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "se"), mode="joint", max_steps=2, train_batch_size=4,
        temperature_start=3.0, temperature_decay=1.0, **SMALL))
    assert seen == [3.0, 2.0]  # step 0: 3; step 1: 3 + (1 - 3) x 1/2


def test_gradient_accumulation_matches_one_large_batch(bpe_feat, tmp_path, monkeypatch):
    """train_batch_size 16 x gradient_accumulation_steps 2 gives the gradients and weights of one batch of 32."""
    data = argument.MLM_trainDataArgs(features_dir=str(bpe_feat[0]), masking="token")
    real_getitem = features.MLMDataset.__getitem__
    big = real_getitem(features.MLMDataset(data, 32), 0)
    halves = [{k: v[i * 16:(i + 1) * 16] for k, v in big.items()} for i in range(2)]
    # token masking of full rows: both halves have as many masked tokens, so their means average to the whole's
    assert halves[0]["masked_lm_weights"].sum() == halves[1]["masked_lm_weights"].sum()

    def fixed_batches(self, index):
        if not self.shuffle:  # evaluation
            return real_getitem(self, index)
        return big if self.batch_size == 32 else halves[index]
    monkeypatch.setattr(features.MLMDataset, "__getitem__", fixed_batches)
    real_configs = trainMLM_SpanElectra.electra_configs
    monkeypatch.setattr(trainMLM_SpanElectra, "electra_configs", lambda *a, **kw: real_configs(
        *a, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw))
    real_step, captured = tu.optimizer_step, []

    def spy(model, optimizer, scheduler, max_grad_norm):
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        real_step(model, optimizer, scheduler, max_grad_norm)
        captured.append((grads, {n: p.detach().clone() for n, p in model.named_parameters()}))
    monkeypatch.setattr(tu, "optimizer_step", spy)
    for batch_size, accumulation in ((32, 1), (16, 2)):
        trainMLM_SpanElectra.main(argument.MLM_trainingConfig(
            features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / f"b{batch_size}"), masking="token", max_steps=1,
            train_batch_size=batch_size, gradient_accumulation_steps=accumulation, **SMALL))
    (grads_big, weights_big), (grads_acc, weights_acc) = captured
    assert grads_big.keys() == grads_acc.keys() and len(grads_big) > 10
    for name in grads_big:
        torch.testing.assert_close(grads_acc[name], grads_big[name], rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(weights_acc[name], weights_big[name], rtol=0, atol=1e-5, msg=name)


# ---------------------------------------------------------------- fine-tuning
LABELS = ("neg", "pos")


@pytest.fixture(scope="module")
def pair_run(bpe_tok, tmp_path_factory):
    """One tiny 2-epoch fine-tuning run of a pair task labelled neg/pos, with spies on what finetune_SE passes on."""
    from transformers import ElectraConfig, ElectraForPreTraining
    root = tmp_path_factory.mktemp("ft")
    model_dir = root / "model"
    torch.manual_seed(0)
    ElectraForPreTraining(ElectraConfig(vocab_size=2000, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                        type_vocab_size=2)).save_pretrained(model_dir)
    for path in bpe_tok.iterdir():
        if path.is_file() and not (model_dir / path.name).exists():
            shutil.copy(path, model_dir / path.name)
    rng = np.random.default_rng(0)
    words = "the game was released in japan by a band".split()

    def text(n):
        return " ".join(rng.choice(words, size=n))
    task = root / "task"
    task.mkdir()
    header = ["sentence1\tsentence2\tlabel"]
    (task / "train.tsv").write_text("\n".join(header + [f"{text(4)}\t{text(3)}\t{LABELS[i % 2]}" for i in range(40)])
                                    + "\n", encoding="utf-8")
    (task / "dev.tsv").write_text("\n".join(header + [f"{text(4)}\t{text(3)}\t{LABELS[i % 2]}" for i in range(8)])
                                  + "\n", encoding="utf-8")
    (task / "test.tsv").write_text("\n".join(["index\tsentence1\tsentence2"] + [f"{i}\t{text(4)}\t{text(3)}"
                                                                              for i in range(5)]) + "\n",
                                   encoding="utf-8")
    seen = {"encoded": [], "schedules": [], "grad_norms": []}
    real_encode, real_schedule, real_step = ft.encode, tu.warmup_linear_schedule, tu.optimizer_step

    def encode(tokenizer, examples, max_seq_length, token_types, pad_id, prepare=lambda t: t):
        out = real_encode(tokenizer, examples, max_seq_length, token_types, pad_id, prepare)
        seen["encoded"].append((out, tokenizer.sep_token_id))
        return out

    def schedule(optimizer, warmup_steps, total_steps):
        seen["schedules"].append((warmup_steps, total_steps))
        return real_schedule(optimizer, warmup_steps, total_steps)

    def step(model, optimizer, scheduler, max_grad_norm):
        seen["grad_norms"].append(max_grad_norm)
        return real_step(model, optimizer, scheduler, max_grad_norm)
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft, "encode", encode)
        mp.setattr(tu, "warmup_linear_schedule", schedule)
        mp.setattr(tu, "optimizer_step", step)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            results = ft.main(argument.finetune_args(
                task_dir=str(task), model_dir=str(model_dir), out_dir=str(out), num_train_epochs=2, warmup_ratio=0.5,
                max_grad_norm=0.37, train_batch_size=16, eval_batch_size=16, max_seq_length=32, save_model=False,
                device="cpu"))
        finally:
            torch.set_num_threads(threads)
    return SimpleNamespace(results=results, out=out, **seen)


def test_pair_tasks_get_segment_ids(pair_run):
    """A pair task gives its second sentence token type 1 when the model has token types (ELECTRA, BERT)."""
    assert len(pair_run.encoded) == 3  # train, dev, test
    for encoded, sep in pair_run.encoded:
        assert "token_type_ids" in encoded
        for ids, types, n in zip(encoded["input_ids"], encoded["token_type_ids"], encoded["lengths"]):
            first_sep = int(np.flatnonzero(ids == sep)[0])
            assert not types[:first_sep + 1].any()
            assert types[first_sep + 1:n].all() and n > first_sep + 1


def test_fine_tuning_warms_up_over_warmup_ratio_of_all_steps(pair_run):
    """warmup steps = int(warmup_ratio x total steps), total = epochs x batches per epoch (2 x ceil(40/16) = 6)."""
    assert pair_run.schedules == [(3, 6)]


def test_fine_tuning_clips_gradients_at_max_grad_norm(pair_run):
    """--max_grad_norm is the clipping threshold of every optimizer step."""
    assert pair_run.grad_norms == [0.37] * 6


def test_test_predictions_are_label_names(pair_run):
    """test_predictions.tsv holds train.tsv's label strings (GLUE submission style), not class numbers."""
    lines = (pair_run.out / "test_predictions.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "index\tprediction" and [l.split("\t")[0] for l in lines[1:]] == [str(i) for i in range(5)]
    assert {l.split("\t")[1] for l in lines[1:]} <= set(LABELS)
    assert pair_run.results["labels"] == list(LABELS)


def test_seed_summary_is_the_median_with_min_and_max():
    """results.json's headline over seeds is the median (robust to one bad seed), with min and max beside it."""
    per_seed = [{"eval_accuracy": .1, "eval_loss": 3.0}, {"eval_accuracy": .9, "eval_loss": 1.0},
                {"eval_accuracy": .2, "eval_loss": 2.0}]
    summary = ft.summarise(per_seed, ["eval_accuracy", "eval_loss"])
    assert summary == {"eval_accuracy": pytest.approx(.2), "eval_accuracy_min": .1, "eval_accuracy_max": .9,
                       "eval_loss": pytest.approx(2.0), "eval_loss_min": 1.0, "eval_loss_max": 3.0}
