"""The training step works on fixed shapes without host syncs: prediction slots instead of boolean
indexing, the same losses as indexing the masked tokens, one compilation for a whole run."""
import functools
import importlib
import json
import os
import re
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import argument
import cpu_dropout
import features
import masking
import modelling_span_electra as mse
import training_utils as tu
import trainMLM_SpanElectra
import trainSpanElectra
from conftest import REPO, dense_labels, dense_slots, se_batches


# ---------------------------------------------------------------- slots
def test_prediction_slots_hold_every_masked_token_in_order():
    ids = np.array([[2, 10, 11, 12, 13, 14, 3], [2, 20, 21, 22, 23, 24, 3]])
    labels = np.full_like(ids, -100)
    labels[0, [2, 3]] = ids[0, [2, 3]]
    labels[1, [1, 2, 4, 5]] = ids[1, [1, 2, 4, 5]]
    masked_input = np.where(labels != -100, 4, ids)
    batch = {"input_ids": masked_input, "labels": labels, "span_position": np.zeros_like(ids),
             "boundary_left": np.zeros_like(ids), "boundary_right": np.zeros_like(ids)}
    batch["span_position"][1, [1, 2, 4, 5]] = [0, 1, 0, 1]
    slots = masking.prediction_slots(batch, 3)
    np.testing.assert_array_equal(slots["masked_lm_positions"], [[2, 3, 0], [1, 2, 4]])
    np.testing.assert_array_equal(slots["masked_lm_ids"], [[11, 12, 0], [20, 21, 23]])
    np.testing.assert_array_equal(slots["masked_lm_weights"], [[1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(slots["span_position"], [[0, 0, 0], [0, 1, 0]])
    # the 4th masked token of row 1 does not fit: it is unmasked again, not silently left as [MASK]
    np.testing.assert_array_equal(slots["input_ids"][1], [2, 4, 4, 22, 4, 24, 3])


@pytest.mark.parametrize("kind", ["span", "token"])
def test_masker_never_needs_more_slots_and_keeps_the_ratio(bpe_feat, kind):
    feats = features.PretrainingFeatures(str(bpe_feat[0]))
    config = argument.MaskingArgs(masking=kind)
    slots = masking.max_prediction_slots(config, 128)
    assert slots == (24 if kind == "span" else 19)  # ELECTRA's 19 at 128; 1.25x that for whole spans
    # shorter rows: a span is a larger share of the row, so at least 5 slots over the budget
    assert masking.max_prediction_slots(config, 64) == (15 if kind == "span" else 10)
    assert masking.max_prediction_slots(config, 512) == (97 if kind == "span" else 77)
    ids = np.asarray(feats.split("train")[:512], dtype=np.int64)
    batch = feats.masker(config)(ids, np.random.default_rng(0))
    per_row = (batch["labels"] != -100).sum(1)
    assert per_row.max() <= slots and per_row.min() >= 1
    assert abs(per_row.sum() / (~np.isin(ids, range(5))).sum() - 0.15) < 0.01
    # a tight slot budget is respected too, and still masks every row
    tight = feats.masker(argument.MaskingArgs(masking=kind, max_predictions_per_seq=12))(ids, np.random.default_rng(0))
    per_row = (tight["labels"] != -100).sum(1)
    assert per_row.max() <= 12 and per_row.min() >= 1


# ---------------------------------------------------------------- same losses as indexing the masked tokens
def reference_losses(model, batch, corrupted, replaced):
    """The losses as the step computed them before slots: boolean indexing of the masked tokens."""
    labels = torch.from_numpy(dense_labels(batch))
    rows, cols = torch.nonzero(labels != -100, as_tuple=True)
    span_position, left, right = (torch.from_numpy(dense_slots(batch, k))[rows, cols] for k in ("span_position", "boundary_left",
                                                                       "boundary_right"))

    def boundary_states(head, hidden):
        pos = head.position_embeddings(span_position.clamp(max=mse.MAX_SPAN_POSITIONS - 1))
        return head.mlp(torch.cat([hidden[rows, left], hidden[rows, right], pos], dim=-1))

    gen = model.generator
    hidden = gen.mlm.electra(input_ids=batch["input_ids"]).last_hidden_state
    targets = labels[rows, cols]
    out = {"mlm_loss": F.cross_entropy(gen.decode(hidden[rows, cols]), targets),
           "sbo_loss": F.cross_entropy(gen.decode(boundary_states(gen.sbo, hidden)), targets)}
    disc = model.discriminator
    hidden = disc.core.electra(input_ids=corrupted).last_hidden_state
    logits = disc.core.discriminator_predictions(hidden)
    out["rtd_loss"] = F.binary_cross_entropy_with_logits(logits.flatten(), replaced.flatten().float())
    span_logits = disc.span_classifier(boundary_states(disc.span_head, hidden)).squeeze(-1)
    out["span_loss"] = F.binary_cross_entropy_with_logits(span_logits, replaced[rows, cols].float())
    return out


def test_slot_losses_equal_the_indexed_losses(bpe_feat):
    gen_cfg, disc_cfg = mse.electra_configs("tiny", 2000, 128)
    torch.manual_seed(0)
    model = mse.SpanElectraJoint(gen_cfg, disc_cfg).eval()  # no dropout: both paths see the same network
    for batch in se_batches(bpe_feat[0], 3):
        assert (batch["masked_lm_weights"] == 0).any()  # padding slots are there and must not count
        with torch.no_grad():
            gen_out = model.generator(**batch)
            corrupted, replaced = mse.corrupt(batch, gen_out)
            disc_out = model.discriminator(**mse.discriminator_inputs(batch, corrupted, replaced))
            ref = reference_losses(model, batch, corrupted, replaced)
        assert replaced.sum() > 0 and (replaced.sum(1) <= batch["masked_lm_weights"].sum(1)).all()
        for name, out in (("mlm_loss", gen_out), ("sbo_loss", gen_out), ("rtd_loss", disc_out),
                          ("span_loss", disc_out)):
            assert out[name].item() == pytest.approx(ref[name].item(), abs=1e-5), name


# ---------------------------------------------------------------- one graph, compiled once
def compiled_once(fn):
    """torch.compile with the whole step in one graph (fullgraph: a host sync such as .item() or
    nonzero would break it); call it under no_recompiles(). aot_eager traces exactly as inductor
    does, without building kernels (fast on the CPU)."""
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def no_recompiles():
    """Any recompilation inside fails the test."""
    return torch._dynamo.config.patch(error_on_recompile=True)


@pytest.mark.parametrize("mode", ["joint", "two_stage"])
def test_discriminator_step_is_one_graph_compiled_once(bpe_feat, mode):
    config = argument.SE_trainingConfig(features_dir=str(bpe_feat[0]), mode=mode)
    gen_cfg, disc_cfg = mse.electra_configs("tiny", 2000, 128, num_hidden_layers=1)
    torch.manual_seed(0)
    if mode == "joint":
        model = mse.SpanElectraJoint(gen_cfg, disc_cfg)
    else:
        model = mse.SpanElectraTwoStage(mse.SpanElectraGenerator(gen_cfg), mse.SpanElectraDiscriminator(disc_cfg))
    optimizer = tu.build_optimizer(model, 1e-3, 0.01)

    step = tu.TrainStep(model, functools.partial(trainSpanElectra.loss_and_metrics, config=config))  # as the script
    compiled, sums = compiled_once(step), tu.MetricSums()
    temperature = torch.ones(())
    with no_recompiles():
        for i, batch in enumerate(se_batches(bpe_feat[0], 20, seed=1)):  # 20 different masks
            temperature.fill_(2.0 - i / 20)  # the curriculum changes the value, never the graph
            loss, metrics = compiled(batch, temperature=temperature)
            loss.backward()
            tu.optimizer_step(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), 1.0)
            sums.add(metrics)
    row = sums.read(tu.Runtime(torch.device("cpu")))
    assert np.isfinite(row["disc_loss"]) and 0 < row["disc_auc"] < 1
    assert 0.1 < row["replaced_fraction"] < 0.2 if mode == "joint" else row["replaced_fraction"] > 0


def test_generator_step_is_one_graph_compiled_once(bpe_feat):
    gen_cfg, _ = mse.electra_configs("tiny", 2000, 128, num_hidden_layers=1)
    model = mse.SpanElectraGenerator(gen_cfg)
    ds = features.MLMDataset(argument.MLM_trainDataArgs(features_dir=str(bpe_feat[0])), 8, seed=2)

    step = tu.TrainStep(model, functools.partial(trainMLM_SpanElectra.loss_and_metrics, baseline_token=17))
    compiled, sums = compiled_once(step), tu.MetricSums()
    with no_recompiles():
        for i in range(20):
            loss, metrics = compiled(ds[i])
            loss.backward()
            sums.add(metrics)
    row = sums.read(tu.Runtime(torch.device("cpu")))
    assert 0.12 < row["mask_ratio"] < 0.18 and 3 < row["mean_span_length"] < 8  # tokens (vocabulary of 2,000)
    assert 0 <= row["mlm_baseline_accuracy"] < 0.2


def test_compiled_step_builds_its_backward_at_its_first_call_and_never_recompiles(bpe_feat, monkeypatch):
    """training_utils.CompiledStep: the backward is built inside the first call (so a failure there meets the
    fallbacks), once; the steps after it, called outside that setting, do not recompile."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    built = []

    def compiler(kind):
        def build(gm, example_inputs):
            built.append(kind)
            return make_boxed_func(gm.forward)
        return build
    monkeypatch.setattr(tu, "compile_model", lambda step, runtime: torch.compile(
        step, fullgraph=True, backend=aot_autograd(fw_compiler=compiler("forward"), bw_compiler=compiler("backward"))))
    gen_cfg, _ = mse.electra_configs("tiny", 2000, 128, num_hidden_layers=1)
    model = mse.SpanElectraGenerator(gen_cfg)
    ds = features.MLMDataset(argument.MLM_trainDataArgs(features_dir=str(bpe_feat[0])), 8, seed=2)
    torch._dynamo.reset()
    step = tu.CompiledStep(tu.TrainStep(model, trainMLM_SpanElectra.loss_and_metrics), tu.Runtime(torch.device("cpu")))
    with no_recompiles():
        for i in range(5):
            loss, _ = step(ds[i])
            if i == 0:
                assert built == ["forward", "backward"]  # before any backward() ran
            loss.backward()
    assert built == ["forward", "backward"] and step.built
    # what is alive after the first call (torch, the model, the compiled step) is frozen: a full collection
    # later scans only what the run creates
    import gc
    try:
        assert gc.get_freeze_count() > 100_000
        begin = time.perf_counter()
        gc.collect()
        frozen_ms = time.perf_counter() - begin
    finally:
        gc.unfreeze()
    begin = time.perf_counter()
    gc.collect()
    assert frozen_ms < 0.5 * (time.perf_counter() - begin)


def test_gradient_disentangled_joint_step_is_one_graph_compiled_once(bpe_feat):
    """The position delta (a slice of the live position table taken out and put back detached) must keep the
    joint step one graph that never recompiles, with the loss of the eager step."""
    config = argument.SE_trainingConfig(features_dir=str(bpe_feat[0]), mode="joint", gradient_disentangled=True)
    gen_cfg, disc_cfg = mse.electra_configs("tiny", bpe_feat[1]["vocab_size"], 128, num_hidden_layers=1,
                                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = mse.SpanElectraJoint(gen_cfg, disc_cfg, gradient_disentangled=True)
    with torch.no_grad():
        model.position_delta.normal_(std=0.02)
    step = tu.TrainStep(model, functools.partial(trainSpanElectra.loss_and_metrics, config=config))
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    temperature = torch.ones(())
    with torch._dynamo.config.patch(error_on_recompile=True):
        for batch in se_batches(bpe_feat[0], 4, batch_size=4, seed=1):
            torch.manual_seed(1)
            eager, _ = step(batch, temperature=temperature)
            torch.manual_seed(1)
            loss, _ = compiled(batch, temperature=temperature)
            assert loss.item() == pytest.approx(eager.item(), rel=1e-5)
            model.zero_grad()
            loss.backward()
            shared = model.discriminator.core.electra.embeddings.position_embeddings.weight
            assert model.position_delta.grad[:128].abs().sum() > 0 and shared.grad is not None
    # the discriminator's loss alone reaches the position delta, never the shared table
    model.zero_grad()
    batch = se_batches(bpe_feat[0], 1, batch_size=4, seed=1)[0]
    _, disc_out, _ = model(batch)
    disc_out["loss"].backward()
    assert model.position_delta.grad.abs().sum() > 0
    assert model.discriminator.core.electra.embeddings.position_embeddings.weight.grad.abs().sum() == 0


def attention_masks_seen_by_compile(fn, *args):
    """The attn_mask argument of every scaled_dot_product_attention call in fn's compiled graph."""
    masks = []

    def backend(gm, example_inputs):
        masks.extend(n.kwargs.get("attn_mask", "missing") for n in gm.graph.nodes
                     if n.target is F.scaled_dot_product_attention)
        return gm
    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return masks


@pytest.mark.skipif(not getattr(mse.ElectraForPreTraining, "_supports_sdpa", False),
                    reason="this transformers' ELECTRA has no SDPA attention (4.x): nothing to check")
def test_compiled_pretraining_attention_gets_no_mask():
    """Packed rows carry no mask: a mask (ElectraModel builds an all-ones one under compile in
    transformers 5.17) sends compiled attention to SDPA's math path, 25% of the H100 step."""
    gen_cfg, disc_cfg = mse.electra_configs("tiny", 300, 32)
    ids = torch.randint(5, 300, (2, 32))
    for cfg in (gen_cfg, disc_cfg):
        electra = mse.ElectraForPreTraining(cfg).electra
        masks = attention_masks_seen_by_compile(lambda x: mse.encode(electra, x), ids)
        assert masks == [None] * cfg.num_hidden_layers


def test_encode_without_mask_equals_electra_model():
    """encode's direct embeddings -> encoder path gives ElectraModel's own output, ids or embeddings."""
    gen_cfg, disc_cfg = mse.electra_configs("tiny", 300, 32)
    for cfg in (gen_cfg, disc_cfg):
        electra = mse.ElectraForPreTraining(cfg).electra.eval()
        ids = torch.randint(5, 300, (3, 32))
        embeds = electra.embeddings.word_embeddings(ids)
        torch.testing.assert_close(mse.encode(electra, ids), electra(input_ids=ids).last_hidden_state)
        torch.testing.assert_close(mse.encode(electra, ids, inputs_embeds=embeds),
                                   electra(inputs_embeds=embeds).last_hidden_state)
        mask = torch.ones_like(ids)
        mask[0, 20:] = 0
        torch.testing.assert_close(mse.encode(electra, ids, mask), electra(input_ids=ids, attention_mask=mask).last_hidden_state)


# ---------------------------------------------------------------- batches from the DataLoader workers
def test_packed_batch_round_trips_every_dtype_and_shape():
    batch = {"ids": torch.arange(15).view(3, 5), "weights": torch.tensor([[1.0, 0.5, 0.0]]),
             "flags": torch.tensor([True, False, True]), "half": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
             "empty": torch.zeros(0, 4, dtype=torch.int32)}
    packed = tu.pack_batch(batch)
    assert packed.data.dtype == torch.uint8 and packed.data.dim() == 1  # one buffer for the whole batch
    out = tu.unpack_batch(packed)
    assert list(out) == list(batch)
    for name, tensor in batch.items():
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape
        assert torch.equal(out[name], tensor), name


def test_a_batch_goes_through_its_slot_whole_and_one_too_big_goes_as_a_tensor():
    batch = {"ids": torch.arange(15).view(3, 5), "weights": torch.tensor([[1.0, 0.5, 0.0]]),
             "flags": torch.tensor([True, False, True])}
    slots = tu.BatchSlots(3, tu.batch_layout(batch)[1])
    ref = slots.write(7, batch)
    assert isinstance(ref, tu.SlotRef) and ref.index == 7  # a few bytes cross to the main process, not tensors
    out = torch.empty(ref.nbytes, dtype=torch.uint8)
    slots.copy_out(ref, out)
    batch["ids"] += 100  # the copy is the main process's own
    got = tu.read_batch(out, json.loads(ref.layout))
    assert torch.equal(got["ids"], torch.arange(15).view(3, 5)) and torch.equal(got["weights"], batch["weights"])
    assert got["flags"].dtype == torch.bool and torch.equal(got["flags"], batch["flags"])
    bigger = {"ids": torch.arange(40)}
    packed = slots.write(8, bigger)
    assert isinstance(packed, tu.PackedBatch) and torch.equal(tu.unpack_batch(packed)["ids"], bigger["ids"])


def test_a_slot_rewritten_before_it_was_read_is_caught():
    batch = {"ids": torch.arange(8)}
    slots = tu.BatchSlots(2, tu.batch_layout(batch)[1])
    first = slots.write(0, batch)
    slots.write(2, {"ids": torch.arange(8) * 2})  # batch 2 shares slot 0
    with pytest.raises(RuntimeError, match="slot 0 was rewritten while batch 0"):
        slots.copy_out(first, torch.empty(first.nbytes, dtype=torch.uint8))


def test_workers_hand_over_every_batch_across_epochs_and_slot_reuse(bpe_feat):
    """Two workers, four epochs of 3 batches: the slots (10) are reused many times over, and every batch
    handed out stays what the dataset made, also once later batches have come through its slot. The
    workers live on from epoch to epoch (starting them again stalled every epoch's first batch)."""
    rows = features.PretrainingFeatures(str(bpe_feat[0])).split("train").shape[0]
    dataset = features.SEDataset(argument.SE_trainDataArgs(features_dir=str(bpe_feat[0])), rows // 3, seed=0)
    assert len(dataset) == 3
    in_process, from_workers = tu.BatchStream(dataset, num_workers=0), tu.BatchStream(dataset, num_workers=2)
    expected = [next(in_process) for _ in range(12)]
    got = [next(from_workers)]
    workers = [w.pid for w in from_workers._iter._workers]
    got += [next(from_workers) for _ in range(11)]
    assert from_workers.state() == in_process.state() == {"epoch": 4, "index": 0}
    assert [w.pid for w in from_workers._iter._workers] == workers  # the same workers through every epoch
    for a, b in zip(expected, got):
        for name in a:
            assert torch.equal(a[name], b[name]), name
    assert not torch.equal(got[0]["input_ids"], got[3]["input_ids"])  # epochs differ (reshuffled, remasked)


def test_workers_hand_over_the_same_batches_in_order(bpe_feat):
    dataset = features.SEDataset(argument.SE_trainDataArgs(features_dir=str(bpe_feat[0])), 8, seed=0)
    in_process, from_worker = tu.BatchStream(dataset, num_workers=0), tu.BatchStream(dataset, num_workers=1, index=2)
    for _ in range(2):
        next(in_process)
    for _ in range(3):
        a, b = next(in_process), next(from_worker)
        assert list(a) == list(b)
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    assert from_worker.state() == in_process.state() == {"epoch": 0, "index": 5}
    assert from_worker.take_wait_ms() > 0 and from_worker.take_wait_ms() == 0  # read and reset


def benchmark_script(name, monkeypatch, *argv):
    """A benchmarks/ script's module, with sys.argv set to its command line: run it with .main()."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, argv)])
    return importlib.import_module(name)


def test_profile_loop_accounts_for_the_loop_step(bpe_feat, monkeypatch, capsys):
    """benchmarks/profile_loop.py times every phase of trainSpanElectra.py's step; together they make up the
    step's wall time. It patches the loop's functions: run here, each is put back after the test."""
    profile_loop = benchmark_script("profile_loop", monkeypatch, "--features_dir", bpe_feat[0], "--model_size", "tiny",
                                    "--batch_size", 8, "--start", 3, "--steps", 4, "--no_compile", "--device", "cpu")
    for owner, name in ((tu.BatchStream, "__next__"), (tu, "to_device"), (tu.MetricSums, "add"),
                        (torch.Tensor, "backward"), (tu, "optimizer_step"), (tu, "wrap_ddp")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # restored at teardown, whatever the script set
    folders, mkdtemp = [], tempfile.mkdtemp  # each run trains in a fresh folder (was: /tmp/profile_loop, shared
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: folders.append(mkdtemp(**kw)) or folders[-1])  # by runs)
    profile_loop.main()
    runs = [f for f in folders if os.path.basename(f).startswith("profile_loop-")]  # torch makes its own too
    assert len(runs) == 1 and not os.path.exists(runs[0])  # removed at the end
    out = capsys.readouterr().out
    wall = float(re.search(r"window: steps 3-7, ([\d.]+) ms/step wall", out).group(1))
    phases = {m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"host (\D+?)\s+([\d.]+) ms/step", out)}
    assert {"forward+metrics", "backward", "optimizer step", "sum metrics", "wait for batch"} <= set(phases)
    timed = float(re.search(r"phases above\s+([\d.]+) ms/step", out).group(1))
    assert 0.5 * wall < timed <= wall * 1.01  # on the CPU the host does all the work


def test_profile_step_profiles_the_benchmarks_step(monkeypatch, capsys):
    """benchmarks/profile_step.py drives bench_train.py's step (ours_step): a change to that step's arguments
    must not leave it behind (the scaler's once did)."""
    profile_step = benchmark_script("profile_step", monkeypatch, "--device", "cpu", "--batch_size", 1, "--steps", 1,
                                    "--no_compile", "--fp32", "--top", 3)
    profile_step.main()
    out = capsys.readouterr().out
    assert "warm-up (eager)" in out
    assert float(re.search(r"([\d.]+) ms/step wall, ([\d,]+) tokens/s", out).group(1)) > 0
    assert len(re.findall(r"^\s+[\d.]+ ms\s+\d+x  aten::", out, re.M)) == 3  # the top kernels, by time


TRITON_FAILURE = ("SubprocException: An exception occurred in a subprocess:\n\nName=triton_red_fused_sum_33\n"
                  "Traceback (most recent call last):\n  File \"compiler.py\", line 316\n"
                  "RuntimeError: PassManager::run failed\n")


JOINT_4_STEPS = dict(mode="joint", model_size="tiny", num_hidden_layers=1, max_steps=4, log_every=2, eval_every=4, save_every=4,
                     eval_batches=1, train_batch_size=8, device="cpu")


def joint_losses(feat_dir, out, compile_step):
    """(step, split, disc_loss, mlm_loss) rows of a 4-step joint run. Both runs use torch's dropout: the pass-through
    backends below run the traced graph, and cpu_dropout's CPU masks stay out of torch.compile's graphs."""
    torch._dynamo.reset()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_dropout, "uses_fast_path", lambda x, p, training: False)
        trainSpanElectra.main(argument.SE_trainingConfig(features_dir=feat_dir, out_dir=str(out), compile=compile_step,
                                                         **JOINT_4_STEPS))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl", encoding="utf-8") if '"disc_loss"' in line]
    return [(r["step"], r.get("split"), r["disc_loss"], r["mlm_loss"]) for r in rows]


@pytest.fixture(scope="module")
def uncompiled_losses(bpe_feat, tmp_path_factory):
    """The 4-step joint run's losses without --compile, that each fallback below must reproduce."""
    return joint_losses(str(bpe_feat[0]), tmp_path_factory.mktemp("uncompiled"), False)


def losses_with_and_without_compile(feat_dir, out_root, uncompiled):
    """{False: the uncompiled run's rows, True: the same run's with --compile}."""
    return {False: uncompiled, True: joint_losses(feat_dir, out_root / "compiled", True)}


def test_a_step_torch_compile_cannot_build_trains_on_uncompiled(bpe_feat, uncompiled_losses, tmp_path, monkeypatch, caplog):
    """Where torch.compile fails to build the step (as Triton did on one of the two-stage step's kernels on an
    H100), the run warns once, naming the failure, and trains on uncompiled: the same losses as a run without
    --compile, where it used to stop at its first step with a traceback."""
    def triton_fails(gm, example_inputs):
        raise RuntimeError(TRITON_FAILURE)
    monkeypatch.setattr(tu, "compile_model", lambda step, runtime: torch.compile(step, backend=triton_fails))
    caplog.set_level("WARNING", logger=tu.logger.name)
    losses = losses_with_and_without_compile(str(bpe_feat[0]), tmp_path, uncompiled_losses)
    assert len(losses[True]) == 3 and losses[True] == losses[False]
    warnings = [r.getMessage() for r in caplog.records if "--compile" in r.getMessage()]
    assert len(warnings) == 1
    assert "PassManager::run failed, in triton_red_fused_sum_33" in warnings[0] and "uncompiled" in warnings[0]


def test_a_step_that_fails_with_mix_order_reductions_compiles_without_them(bpe_feat, uncompiled_losses, tmp_path, monkeypatch, caplog):
    """On a GPU whose Triton fails a kernel of Inductor's mix-order reductions, the step is compiled again
    without them (a second torch.compile of the same step in the same process) and trains compiled, with the
    losses of an uncompiled run and one warning; the uncompiled fallback is not reached."""
    built = []

    def compile_model(step, runtime, mix_order_reductions=True):
        def backend(gm, example_inputs):
            if mix_order_reductions:
                raise RuntimeError(TRITON_FAILURE)
            built.append(len(gm.graph.nodes))
            return gm.forward
        return torch.compile(step, backend=backend)
    monkeypatch.setattr(tu, "compile_model", compile_model)
    monkeypatch.setattr(tu, "mix_order_reductions_on", lambda runtime: True)  # a GPU, the fusion on
    caplog.set_level("WARNING", logger=tu.logger.name)
    losses = losses_with_and_without_compile(str(bpe_feat[0]), tmp_path, uncompiled_losses)
    assert len(losses[True]) == 3 and losses[True] == losses[False]
    assert len(built) >= 1 and built[0] > 50  # the second attempt built the whole step's graph
    warnings = [r.getMessage() for r in caplog.records if "--compile" in r.getMessage()]
    assert len(warnings) == 1
    assert "PassManager::run failed, in triton_red_fused_sum_33" in warnings[0]
    assert "compiling it again without them" in warnings[0]


def test_a_backward_that_fails_to_build_is_caught_at_the_step_like_a_forward(bpe_feat, uncompiled_losses, tmp_path, monkeypatch, caplog):
    """torch builds a compiled step's backward lazily, at the first backward() outside the step; the failing
    kernel may well be a backward one (a reduction over the discriminator's loss). CompiledStep has the
    backward built with the forward, so its failure reaches the same fallbacks: compiled again without
    mix-order reductions, with an uncompiled run's losses, and no traceback from backward()."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    built = []

    def compile_model(step, runtime, mix_order_reductions=True):
        def backward_compiler(gm, example_inputs):
            if mix_order_reductions:
                raise RuntimeError(TRITON_FAILURE)
            built.append("backward")
            return make_boxed_func(gm.forward)
        return torch.compile(step, backend=aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm.forward),
                                                        bw_compiler=backward_compiler))
    monkeypatch.setattr(tu, "compile_model", compile_model)
    monkeypatch.setattr(tu, "mix_order_reductions_on", lambda runtime: True)
    caplog.set_level("WARNING", logger=tu.logger.name)
    losses = losses_with_and_without_compile(str(bpe_feat[0]), tmp_path, uncompiled_losses)
    assert len(losses[True]) == 3 and losses[True] == losses[False]
    assert built == ["backward"]  # built once, by the second attempt, and never again (no recompile)
    warnings = [r.getMessage() for r in caplog.records if "--compile" in r.getMessage()]
    assert len(warnings) == 1 and "compiling it again without them" in warnings[0]


def test_the_retry_options_are_inductor_settings():
    """The retry's option names exist in this torch's Inductor: torch.compile checks them as it wraps the
    model (an unknown one raises there), where a GPU would otherwise find out only after a failed attempt."""
    runtime = tu.Runtime(torch.device("cpu"))
    compiled = tu.compile_model(torch.nn.Linear(4, 2), runtime, mix_order_reductions=False)
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert not tu.mix_order_reductions_on(runtime)  # no Triton on a CPU: nothing to retry


# ---------------------------------------------------------------- micro-batches under CUDA graphs
def test_kept_gradients_sum_micro_batches_as_autograd_does():
    """keep_gradients (micro-batches accumulated under CUDA graphs): each backward adds into gradients allocated
    once and zeroed in place, never the graphs' own outputs; two steps of two micro-batches each end at exactly
    the weights of torch's own accumulation into fresh gradients."""
    weights = []
    for kept in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 2)
        optimizer = tu.build_optimizer(model, 1e-2, 0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        if kept:
            tu.keep_gradients(model, optimizer)
        grads = [p.grad for p in model.parameters()]
        for _ in range(2):
            for _ in range(2):
                model(torch.randn(3, 6)).pow(2).sum().backward()
            tu.optimizer_step(model, optimizer, scheduler, 1.0)
        if kept:  # the same tensors throughout, zeroed after each step
            assert all(p.grad is g and not g.any() for p, g in zip(model.parameters(), grads))
        else:
            assert all(p.grad is None for p in model.parameters())
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_only_micro_batches_under_cuda_graphs_keep_their_gradients(bpe_feat, tmp_path, monkeypatch):
    """start_run keeps the gradients where a compiled step replays as CUDA graphs (one GPU; faked here, the step
    left uncompiled) and micro-batches accumulate; a single batch per step, or no --compile, lets backward hand
    its gradients over as before."""
    kept = []
    keep = tu.keep_gradients
    monkeypatch.setattr(tu, "replays_cuda_graphs", lambda runtime: True)
    monkeypatch.setattr(tu, "compile_model", lambda step, runtime, mix_order_reductions=True: step)
    monkeypatch.setattr(tu, "keep_gradients", lambda model, optimizer: kept.append(keep(model, optimizer)))
    for accumulation, compile_step in ((1, True), (2, False), (2, True)):
        trainSpanElectra.main(argument.SE_trainingConfig(
            features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / f"a{accumulation}{compile_step}"),
            compile=compile_step, gradient_accumulation_steps=accumulation, **{**JOINT_4_STEPS, "max_steps": 2}))
        assert len(kept) == (accumulation == 2 and compile_step)
