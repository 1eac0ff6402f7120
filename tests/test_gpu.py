"""The GPU paths as users run them: a few steps of each training script in bf16, with and without
--compile, a fine-tuning epoch and the explorer, on CUDA. Skipped where no GPU is visible (the rest
of the suite forces the CPU and cannot see a GPU bug)."""
import json
import os

import pytest
import torch

import argument
import explore_SE
import features
import finetune_SE
import trainMLM_SpanElectra
import trainSpanElectra
import training_utils as tu
from conftest import REPO, notebook_code_cells

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")

FEW_STEPS = dict(model_size="tiny", max_steps=6, log_every=3, eval_every=6, save_every=6, eval_batches=1,
                 train_batch_size=16, device="cuda", bf16=True)


def valid_rows(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if '"valid"' in line]


@pytest.fixture(scope="module")
def gpu_generator(bpe_feat, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gen"
    gen_dir = trainMLM_SpanElectra.main(argument.MLM_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(out),
                                                                    **FEW_STEPS))
    return out, gen_dir


def test_generator_trains_on_cuda_in_bf16(gpu_generator):
    out, gen_dir = gpu_generator
    row = valid_rows(out)[-1]
    assert 0 < row["mlm_loss"] < 20 and 0 <= row["mlm_accuracy"] <= 1
    assert os.path.isfile(os.path.join(gen_dir, "config.json"))


@pytest.mark.parametrize("compile_step", [False, True])
def test_generator_compiled_on_cuda(bpe_feat, tmp_path, compile_step):
    trainMLM_SpanElectra.main(argument.MLM_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path),
                                                          **{**FEW_STEPS, "compile": compile_step}))
    assert valid_rows(tmp_path)[-1]["mlm_loss"] > 0
    with open(os.path.join(tmp_path, "metrics.jsonl"), encoding="utf-8") as f:
        train_rows = [json.loads(line) for line in f if '"tokens_per_sec"' in line]
    # CUDA events at each step's end, queried as the next begins: 0 up to the 3 steps of a log window
    assert len(train_rows) == 2 and all(0 <= r["gpu_queued_steps"] <= 3 for r in train_rows)


@pytest.mark.parametrize("mode, compile_step", [("two_stage", False), ("two_stage", True), ("joint", False),
                                                ("joint", True), ("joint_disentangled", True)])
def test_discriminator_trains_on_cuda(bpe_feat, gpu_generator, tmp_path, mode, compile_step):
    disentangled = mode == "joint_disentangled"  # DeBERTaV3's sharing: word and position deltas in the step
    disc_dir = trainSpanElectra.main(argument.SE_trainingConfig(
        features_dir=str(bpe_feat[0]), out_dir=str(tmp_path), mode="joint" if disentangled else mode,
        generator_dir=gpu_generator[1] if mode == "two_stage" else None, gradient_disentangled=disentangled,
        **{**FEW_STEPS, "compile": compile_step}))
    row = valid_rows(tmp_path)[-1]
    assert 0 <= row["disc_auc"] <= 1 and row["rtd_loss"] > 0
    assert os.path.isfile(os.path.join(disc_dir, "config.json"))


def test_a_compiled_run_saves_mid_run_and_resumes_on_cuda(bpe_feat, tmp_path):
    """A checkpoint between compiled steps replayed as CUDA graphs (compare_pretraining saves one every quarter
    of a run), then the run resumed from it in a new compiled step: it goes on to its new max_steps."""
    settings = dict(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path), mode="joint",
                    **{**FEW_STEPS, "compile": True, "save_every": 3})
    trainSpanElectra.main(argument.SE_trainingConfig(**settings))
    assert [os.path.basename(p) for p in tu.list_checkpoints(str(tmp_path))] == ["checkpoint-00000003.pt",
                                                                                  "checkpoint-00000006.pt"]
    torch._dynamo.reset()
    trainSpanElectra.main(argument.SE_trainingConfig(**{**settings, "max_steps": 9, "eval_every": 9,
                                                        "resume_from": "latest"}))
    rows = valid_rows(tmp_path)
    assert [r["step"] for r in rows] == [6, 9] and 0 <= rows[-1]["disc_auc"] <= 1 and rows[-1]["rtd_loss"] > 0


def test_compiled_micro_batches_accumulate_under_cuda_graphs(bpe_feat, gpu_generator, tmp_path):
    """--gradient_accumulation_steps 2 with --compile on one GPU: each micro-batch's replay reuses the graphs'
    memory, so the gradients live outside it (training_utils.keep_gradients); torch raised 'accessing tensor
    output of CUDAGraphs that has been overwritten' (or summed overwritten memory) when the first micro-batch's
    backward handed them over. The run finishes with the losses of the same run uncompiled, near enough for bf16."""
    losses = {}
    for compile_step in (False, True):
        out = tmp_path / f"c{compile_step}"
        trainSpanElectra.main(argument.SE_trainingConfig(
            features_dir=str(bpe_feat[0]), out_dir=str(out), mode="two_stage", generator_dir=gpu_generator[1],
            gradient_accumulation_steps=2, **{**FEW_STEPS, "log_every": 1, "bf16": False, "compile": compile_step}))
        with open(out / "metrics.jsonl", encoding="utf-8") as f:
            losses[compile_step] = [r["disc_loss"] for r in map(json.loads, f) if "disc_loss" in r and "split" not in r]
    assert len(losses[True]) == 6 and losses[True] == pytest.approx(losses[False], rel=2e-2)


def test_a_checkpoint_from_a_machine_with_more_gpus_resumes(bpe_feat, tmp_path):
    """Checkpoints keep the CUDA random state of the run's own GPU; one of an earlier version kept one per GPU the
    machine had, and resuming it where fewer are visible raised IndexError with a traceback: now its entry for
    this GPU is taken, and past the GPUs it saved none."""
    settings = dict(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path), mode="joint", **FEW_STEPS)
    trainSpanElectra.main(argument.SE_trainingConfig(**settings))
    path = tu.list_checkpoints(str(tmp_path))[-1]
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.is_tensor(state["rng"]["cuda"])
    state["rng"]["cuda"] = [state["rng"]["cuda"]] * (torch.cuda.device_count() + 3)  # as from a bigger machine
    torch.save(state, path)
    trainSpanElectra.main(argument.SE_trainingConfig(**{**settings, "max_steps": 9, "eval_every": 9,
                                                        "resume_from": "latest"}))
    assert [r["step"] for r in valid_rows(tmp_path)] == [6, 9]


@pytest.mark.parametrize("compile_step", [False, True])
def test_fp16_trains_on_cuda_with_a_loss_scale(bpe_feat, tmp_path, compile_step, caplog):
    """--fp16 (a T4's or V100's autocast) on CUDA, joint (the discriminator's loss weighted 50: the first steps
    overflow at the initial scale of 2^16 and are skipped): the logged scale falls and stays finite, the losses
    stay finite, and compiled it still replays as CUDA graphs."""
    from torch._dynamo.utils import counters
    counters["inductor"].clear()
    caplog.set_level("WARNING", logger=tu.logger.name)
    trainSpanElectra.main(argument.SE_trainingConfig(
        features_dir=str(bpe_feat[0]), out_dir=str(tmp_path), mode="joint",
        **{**FEW_STEPS, "bf16": False, "fp16": True, "log_every": 2, "compile": compile_step}))
    with open(os.path.join(tmp_path, "metrics.jsonl"), encoding="utf-8") as f:
        train_rows = [json.loads(line) for line in f if '"loss_scale"' in line]
    assert len(train_rows) == 3 and all(1 <= r["loss_scale"] <= 65536 for r in train_rows)
    assert all(0 < r["disc_loss"] < 1 for r in train_rows)
    assert 0 <= valid_rows(tmp_path)[-1]["disc_auc"] <= 1
    if compile_step:
        assert counters["inductor"]["cudagraph_skips"] == 0
    assert not [r.getMessage() for r in caplog.records if "training goes on uncompiled" in r.getMessage()]


def test_fine_tuning_in_fp16_on_cuda(bpe_feat, gpu_generator, tmp_path, monkeypatch):
    """finetune_SE.py as on a T4 or V100 (fp16 autocast and the loss scaler; faked on this GPU)."""
    monkeypatch.setattr(tu, "gpu_amp_dtype", lambda runtime: torch.float16)
    results = finetune_SE.main(argument.finetune_args(
        model_dir=gpu_generator[1], task_dir=str(REPO / "data" / "glue" / "SST-2"), out_dir=str(tmp_path / "ft"),
        num_train_epochs=1, max_train_examples=256, device="cuda", save_model=False))
    assert 0 <= results["eval_accuracy"] <= 1 and results["eval_loss"] < 10


def test_finetune_epoch_and_explorer_on_cuda(bpe_feat, gpu_generator, tmp_path):
    disc_dir = trainSpanElectra.main(argument.SE_trainingConfig(
        features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "se"), generator_dir=gpu_generator[1], **FEW_STEPS))
    results = finetune_SE.main(argument.finetune_args(
        model_dir=disc_dir, task_dir=str(REPO / "data" / "glue" / "SST-2"), out_dir=str(tmp_path / "ft"),
        num_train_epochs=1, max_train_examples=256, device="cuda"))
    assert 0 <= results["eval_accuracy"] <= 1
    explorer = explore_SE.Explorer(generator_dir=gpu_generator[1], discriminator_dir=disc_dir)
    lines = explore_SE.report(explorer, "The game was released in [[ January ]] in Japan .", top_k=2)
    assert any("P(replaced)" in line for line in lines)


def count_syncs(run):
    """How many synchronizing CUDA calls (.item(), nonzero, blocking copies, ...) run() makes."""
    import warnings
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@pytest.mark.parametrize("compile_step, precision", [(False, "bf16"), (True, "bf16"), (True, "fp16")])
def test_training_steps_never_wait_for_the_gpu(bpe_feat, tmp_path, compile_step, precision):
    """Twice the steps, the same host syncs: only logging, evaluation and saving read values back (in fp16 the
    loss scaler hands its overflow check to fused AdamW's kernel)."""
    def run(steps):
        return count_syncs(lambda: trainSpanElectra.main(argument.SE_trainingConfig(
            features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / f"s{steps}"), mode="joint",
            **{**FEW_STEPS, "max_steps": steps, "log_every": steps, "eval_every": steps, "save_every": steps,
               "compile": compile_step, "bf16": precision == "bf16", "fp16": precision == "fp16"})))
    run(4)  # warm-up: the first run pays for compilation and CUDA initialisation
    assert run(8) == run(16)


@pytest.mark.parametrize("script", ["generator", "joint", "two_stage", "joint_disentangled"])
def test_compiled_steps_replay_as_cuda_graphs(bpe_feat, gpu_generator, tmp_path, script, caplog):
    """--compile on one GPU must run the step as CUDA graphs: Inductor skips them (with a warning) for a
    CPU tensor, a mutated input or a dynamic shape in the step, and the step is then launched kernel by
    kernel from Python, several times slower at ELECTRA-Small sizes. Nor may the step have fallen back to
    running uncompiled (training_utils.CompiledStep: Triton 3.6 failed the two-stage step on an H100; it is
    compiled again without Inductor's mix-order reductions before that)."""
    from torch._dynamo.utils import counters
    counters["inductor"].clear()
    counters["graph_break"].clear()
    caplog.set_level("WARNING", logger=tu.logger.name)
    settings = dict(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path), **{**FEW_STEPS, "compile": True})
    if script == "generator":
        trainMLM_SpanElectra.main(argument.MLM_trainingConfig(**settings))
    elif script == "joint_disentangled":  # the position delta's slice of the live table must not skip them
        trainSpanElectra.main(argument.SE_trainingConfig(mode="joint", gradient_disentangled=True, **settings))
    else:
        trainSpanElectra.main(argument.SE_trainingConfig(
            mode=script, generator_dir=gpu_generator[1] if script == "two_stage" else None, **settings))
    assert counters["inductor"]["cudagraph_skips"] == 0
    # one graph, as on the CPU (test_static_step): a step cut by a graph break would run its first part before
    # a compile failure in the second, and CompiledStep's fallback would then run that part again
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert not [r.getMessage() for r in caplog.records if "training goes on uncompiled" in r.getMessage()]


def test_notebook_cells_run_on_cuda(tmp_path, monkeypatch):
    """SpanElectra.ipynb's code cells (the Colab/Kaggle path), run as a user's kernel would on a GPU
    machine: device 'auto' picks CUDA in every stage. nbclient is not needed: the cells are exec'd in
    one namespace, with the step counts turned down."""
    monkeypatch.chdir(REPO)
    cells = notebook_code_cells()
    knobs = (f"\nOUT = {str(tmp_path / 'nb')!r}\nGENERATOR_STEPS = 20\nDISCRIMINATOR_STEPS = 10\n"
             "FINETUNE_EXAMPLES = 64\nimport matplotlib\nmatplotlib.use('Agg')\n")
    namespace = {}
    allocations = torch.cuda.memory_stats().get("allocation.all.allocated", 0)
    for source in cells:
        exec(compile(source + (knobs if "GENERATOR_STEPS =" in source else ""), "SpanElectra.ipynb", "exec"), namespace)
    # the stages ran on the GPU: thousands of tensors were allocated there
    assert torch.cuda.memory_stats()["allocation.all.allocated"] - allocations > 1000
    assert 0 <= namespace["results"]["eval_accuracy"] <= 1
    assert os.path.isdir(namespace["disc_dir"])


def test_worker_batches_reach_the_gpu_whole_through_pinned_memory(bpe_feat):
    """BatchStream on a GPU run: batches come out of the workers' slots into pinned memory, whose buffers
    torch reuses once their copies are done; 12 batches, copied without waiting, equal the dataset's."""
    dataset = features.SEDataset(argument.SE_trainDataArgs(features_dir=str(bpe_feat[0])), 4, seed=0)
    stream = tu.BatchStream(dataset, num_workers=1, pin_memory=True)
    on_gpu = []
    for _ in range(12):
        batch = next(stream)
        assert all(t.is_pinned() for t in batch.values())
        on_gpu.append(tu.to_device(batch, torch.device("cuda")))
    for i, batch in enumerate(on_gpu):
        for name, tensor in dataset[i].items():
            assert torch.equal(batch[name].cpu(), tensor), (i, name)


def test_the_comparison_runs_on_cuda_with_its_steps_compiled_ahead(tmp_path, caplog):
    """compare_pretraining.py as --scale gpu runs it, at a few steps' budget of the tiny size: bf16,
    --compile, fine-tuning in spawned worker processes on the same GPU, and the second recipe's step
    compiled ahead in one of them while the first pre-trains."""
    import sys
    sys.path.insert(0, str(REPO / "benchmarks"))
    import compare_pretraining as cp
    caplog.set_level("INFO", logger="span_electra")
    rows = cp.main(cp.compare_args(
        train_input=str(REPO / "data/sample/train.tokens"), valid_input=str(REPO / "data/sample/valid.tokens"),
        tasks=str(REPO / "data/glue/SST-2"), recipes="random,mlm,se_joint", budget_steps=20, budget_fractions="1",
        seeds="1,2", ft_max_train_examples=128, out_dir=str(tmp_path), results_md="", ft_workers=2, device="cuda",
        bf16=True, compile=True))
    assert [r["run"] for r in rows] == ["random@0", "mlm@1", "se_joint@1"]
    assert all(0 <= r["metrics"]["SST-2"]["results"]["eval_accuracy"] <= 1 for r in rows)
    assert "se_joint: its step was compiled ahead" in caplog.text and "compiling ahead failed" not in caplog.text
