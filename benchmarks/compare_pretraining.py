"""Equal-compute comparison of pre-training recipes, fine-tuned on SST-2 and MRPC.

    python benchmarks/compare_pretraining.py                    # tiny models, 2 CPU cores, about 80 minutes
    python benchmarks/compare_pretraining.py --scale small      # ELECTRA-Small sizes and budget, for a GPU

Every recipe pre-trains on WikiText-2 with the same budget of training FLOPs, counted by torch's
FlopCounterMode on one step of that recipe (forward, backward; the frozen generator's forward is
counted for two-stage): ELECTRA's way of comparing recipes at equal compute. Each pre-trained
encoder, and a randomly initialised one, is then fine-tuned with the same recipe (finetune_SE.py,
several seeds) and the dev metric is reported as median [min, max].

Recipes: random init; MLM only (BERT-style token masking, the discriminator's size); ELECTRA
(token masking, replaced-token detection, joint); SpanElectra two-stage and joint, each with the
span heads (SBO, span-boundary predictive head) on and off. Two budgets (half and full) give the
points of the plot. Writes OUT/compare.json, OUT/compare.md, OUT/compare.png and, with --results_md
(e.g. benchmarks/RESULTS.md), the scale's section of that file between its markers.

With worker processes (--ft_workers, 8 on a GPU), each row is fine-tuned (a job per task and seed)
while the next recipe pre-trains, and with --compile each recipe's step is compiled ahead while the
one before it pre-trains (warm_compile).

A stopped call keeps its finished rows (OUT/compare.json) and the checkpoints of the run it was in (one every
quarter of a run): called again with the same settings, it goes on from there.
"""
import contextlib
import dataclasses
import functools
import glob
import json
import logging
import multiprocessing
import os
import statistics
import shlex
import shutil
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import create_vocab_SE  # noqa: E402
import finetune_SE  # noqa: E402
import process  # noqa: E402
import trainMLM_SpanElectra  # noqa: E402
import trainSpanElectra  # noqa: E402
import training_utils as tu  # noqa: E402
from argument import (COMPARE_RECIPES as RECIPES, COMPARE_SCALES as SCALES, DEVICE_SPEEDS, SHARED,  # noqa: E402
                      MaskingArgs, MLM_trainDataArgs, MLM_trainingConfig, SE_trainDataArgs, SE_trainingConfig,
                      checked_config, compare_args, feature_args, finetune_args, run_main, tok_args)
from io_utils import (SpanElectraError, atomic_write_json, atomic_write_text, available_cores,  # noqa: E402
                      ctrl_c_held_back, find_text_files, ignore_ctrl_c, make_out_dir, read_json, remove_paths)
from modelling_span_electra import (SpanElectraDiscriminator, SpanElectraGenerator, SpanElectraJoint,  # noqa: E402
                                    SpanElectraTwoStage, electra_configs, save_discriminator)
from masking import Masker, max_prediction_slots, prediction_slots  # noqa: E402
from tokenization import CLS_ID, MASK_ID, SEP_ID, SPECIAL_TOKENS  # noqa: E402
from features import PretrainingFeatures  # noqa: E402

logger = logging.getLogger("span_electra")
DATA_FILE = "data.json"  # what out_dir's vocabulary and features were built from


def section_marks(scale):
    """The comments that delimit one scale's section in RESULTS.md (each scale keeps its own)."""
    return f"<!-- compare_pretraining:{scale}:begin -->", f"<!-- compare_pretraining:{scale}:end -->"


def measured_settings(config):
    """What a table measures, as values (an empty or -1 field resolved to the scale's, '1, 2, 3' as 1,2,3):
    the recipes, budgets, seeds, fine-tuning subset, precision, and which corpus and tasks."""
    scale = SCALES[config.scale]
    return {"recipes": tuple(config.recipes.split(",")), "budget_steps": config.budget_steps or scale["budget_steps"],
            "budget_scale": config.budget_scale, "fractions": tuple(config.fraction_list()),
            "gen_fraction": config.gen_fraction, "seeds": tuple(config.ft_seed_list()),
            "ft_max_train": ft_max_train(config, scale),
            "pretrain_seeds": tuple(config.pretrain_seed_list()), "bf16": config.bf16, "compile": config.compile,
            "pack_across_documents": config.pack_across_documents, **fp16_setting(config)}


def fp16_setting(config):
    """{"fp16": True} for a comparison pre-trained in fp16, else {}: tables and rows from before the flag keep
    their identity."""
    return {"fp16": True} if config.fp16 else {}


def data_signature(path, inside=""):
    """A corpus file or task folder as (name, size): a copy keeps both (the GPU run reads copies of
    ../shared/data), a cut-down file keeps only its name; the size is None where the path is not here."""
    path = os.path.normpath(path.strip())
    sized = os.path.join(path, inside) if inside else path
    return os.path.basename(path), os.path.getsize(sized) if os.path.isfile(sized) else None


def same_data(ours, theirs):
    """Signatures alike: the same names, and the same sizes wherever both sides are here to measure."""
    return len(ours) == len(theirs) and all(a[0] == b[0] and None in (a[1], b[1]) or a == b
                                            for a, b in zip(ours, theirs))


def section_name(config):
    """The RESULTS.md section a run writes: its scale's for the scale's settings, '<scale>-custom' for any
    other (a reduced or a longer run, another corpus), so that it never replaces the published table. Tasks
    count where the scale names its own (gpu_vi fine-tunes on whatever Vietnamese tasks are given)."""
    defaults = compare_args(scale=config.scale).resolved()
    corpus = lambda c: [data_signature(c.train_input), data_signature(c.valid_input)]  # noqa: E731
    tasks = lambda c: [data_signature(t, "train.tsv") for t in c.tasks.split(",") if t.strip()]  # noqa: E731
    same = (measured_settings(config) == measured_settings(defaults) and same_data(corpus(config), corpus(defaults))
            and (not defaults.tasks or same_data(tasks(config), tasks(defaults))))
    return config.scale if same else f"{config.scale}-custom"


# ---------------------------------------------------------------- FLOPs of one step of each recipe
def math_attention():
    """SDPA held to its math kernel (torch >= 2.3; older ones have no fused CPU kernel to avoid)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def count_flops(fn):
    """FLOPs of fn by FlopCounterMode, attention through SDPA's math kernel: the counter has no formula for
    the CPU's fused kernel (aten._scaled_dot_product_flash_attention_for_cpu), which SDPA picks where no
    dropout is applied, so an eval-mode forward (two-stage's frozen generator) counted 0 for its attention.
    The math kernel's matmuls give the same FLOPs as the fused kernels the training step runs."""
    with math_attention(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


COUNTED_ROWS = 8  # FLOPs grow linearly with the rows of a batch: count 8 rows, scale to the batch


def step_flops(kind, recipe, sizes, batch_size):
    """Training FLOPs of one optimizer step of a recipe part: 'mlm' or 'generator' (trainMLM),
    'two_stage' (frozen generator forward + discriminator) or 'joint'. Counted on the CPU for
    COUNTED_ROWS rows (a batch of 128 at ELECTRA-Small took ~10 s per recipe) and scaled."""
    rows = min(batch_size, COUNTED_ROWS)
    key = json.dumps([kind, recipe, sizes, rows], sort_keys=True)
    if key not in COUNTED:  # a few seconds each at ELECTRA-Small: the full budget and a recipe share one
        COUNTED[key] = counted_flops(kind, recipe, sizes, rows)
    return batch_size / rows * COUNTED[key]


COUNTED = {}  # counted_flops by what it was asked, for this process


def synthetic_batch(kind, recipe, vocab, seq_len, rows):
    """A batch shaped as the training datasets make it for this recipe part (random ids, every token
    a word start): a step's FLOPs depend on the shapes alone, so counting them needs no features."""
    data_args = (MLM_trainDataArgs if kind in ("mlm", "generator") else SE_trainDataArgs)(masking=recipe["masking"])
    masking = MaskingArgs(**{f.name: getattr(data_args, f.name) for f in dataclasses.fields(MaskingArgs)})
    rng = np.random.default_rng(0)
    ids = rng.integers(len(SPECIAL_TOKENS), vocab, size=(rows, seq_len))
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    masker = Masker(masking, np.ones(vocab, dtype=bool), range(len(SPECIAL_TOKENS)), MASK_ID, vocab)
    batch = prediction_slots(masker(ids, rng), max_prediction_slots(masking, seq_len))
    batch["original_ids"] = ids
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def counted_flops(kind, recipe, sizes, batch_size):
    batch = synthetic_batch(kind, recipe, sizes["vocab"], sizes["seq"], batch_size)
    gen_cfg, disc_cfg = electra_configs(sizes["model_size"], sizes["vocab"], sizes["seq"], **sizes.get("overrides", {}))
    if kind in ("mlm", "generator"):
        model = SpanElectraGenerator(gen_cfg, recipe["use_sbo"])
        return count_flops(lambda: model(**batch)["loss"].backward())
    if kind == "joint":
        model = SpanElectraJoint(gen_cfg, disc_cfg, recipe["use_sbo"], True, recipe["use_span_head"])

        def run():
            gen_out, disc_out, _ = model(batch)
            (gen_out["loss"] + 50 * disc_out["loss"]).backward()
        return count_flops(run)
    model = SpanElectraTwoStage(SpanElectraGenerator(gen_cfg, recipe["use_sbo"]),
                                      SpanElectraDiscriminator(disc_cfg, True, recipe["use_span_head"]))
    return count_flops(lambda: model(batch)[1]["loss"].backward())


# ---------------------------------------------------------------- one pre-training run
def pretrain(recipe, budget, config, paths, scale, out_dir):
    """Pre-train one recipe for `budget` FLOPs; returns (model folder to fine-tune, FLOPs spent, seconds)."""
    sizes = dict(model_size=scale["model_size"], vocab=paths["vocab"], seq=128)
    common = dict(features_dir=paths["features"], model_size=scale["model_size"], train_batch_size=scale["batch"],
                  learning_rate=scale["learning_rate"], seed=config.seed, masking=recipe["masking"],
                  use_sbo=recipe["use_sbo"], log_every=50, eval_batches=scale.get("eval_batches", 4),  # per curve point
                  device=config.device, bf16=config.bf16, fp16=config.fp16, compile=config.compile)
    start, spent = time.time(), 0.0
    if recipe["kind"] == "mlm":  # BERT: a masked LM as large as the discriminator
        _, disc = electra_configs(scale["model_size"], paths["vocab"], 128)
        sizes["overrides"] = dict(gen_hidden_size=disc.hidden_size, gen_num_attention_heads=disc.num_attention_heads,
                                  gen_intermediate_size=disc.intermediate_size,
                                  gen_initializer_range=disc.initializer_range)  # the discriminators' init too
        flops = step_flops("mlm", recipe, sizes, scale["batch"])
        steps = max(1, round(budget / flops))
        model_dir, _ = train_resuming(trainMLM_SpanElectra, MLM_trainingConfig, out_dir=out_dir, max_steps=steps,
                                      eval_every=curve_every(steps), save_every=checkpoint_every(steps),
                                      **sizes["overrides"], **common)
        return model_dir, steps * flops, time.time() - start
    gen_dir, gen_continued = None, True
    if recipe["kind"] == "two_stage":
        gen_flops = step_flops("generator", recipe, sizes, scale["batch"])
        gen_steps = max(1, round(config.gen_fraction * budget / gen_flops))
        gen_dir, gen_continued = train_resuming(
            trainMLM_SpanElectra, MLM_trainingConfig, out_dir=os.path.join(out_dir, "gen"), max_steps=gen_steps,
            eval_every=curve_every(gen_steps), save_every=checkpoint_every(gen_steps), **common)
        spent = gen_steps * gen_flops
    flops = step_flops(recipe["kind"], recipe, sizes, scale["batch"])
    steps = max(1, round((budget - spent) / flops))
    model_dir, _ = train_resuming(  # against a generator trained again, the discriminator starts over too
        trainSpanElectra, SE_trainingConfig, may_continue=gen_continued, out_dir=out_dir, mode=recipe["kind"],
        generator_dir=gen_dir, use_span_head=recipe["use_span_head"], max_steps=steps, eval_every=curve_every(steps),
        save_every=checkpoint_every(steps), **common)
    return model_dir, spent + steps * flops, time.time() - start


RUN_SETTINGS_FILE = "compare_run.json"  # in a run's folder: the settings it was started with


def checkpoint_every(steps, checkpoints=4):
    """Steps between a pre-training run's checkpoints: a stopped comparison loses at most a quarter of a run."""
    return max(1, -(-steps // checkpoints))


def started_with(marker):
    """The settings a run's marker holds (None where there is none, or it is damaged: the run starts over)."""
    try:
        return read_json(marker) if os.path.isfile(marker) else None
    except SpanElectraError:
        return None


def train_resuming(script, config_cls, may_continue=True, **settings):
    """Run a training script in settings['out_dir']. A run a stopped comparison left there, started with the very
    same settings, goes on from its last checkpoint; anything else there is trained again from the start.
    Returns (the script's model folder, whether it continued a stopped run)."""
    out_dir, asked = settings["out_dir"], json.loads(json.dumps(settings))
    marker = os.path.join(out_dir, RUN_SETTINGS_FILE)
    checkpoints = tu.list_checkpoints(out_dir)
    same = may_continue and bool(checkpoints) and started_with(marker) == asked
    if same:
        logger.info("%s: continuing the stopped run from %s", out_dir, os.path.basename(checkpoints[-1]))
    else:
        make_out_dir(out_dir)
        atomic_write_json(marker, asked)
    model_dir = script.main(config_cls(**settings, resume_from="latest" if same else None,
                                       overwrite_output_dir=not same))
    return model_dir, same


# ---------------------------------------------------------------- compiling ahead
WARM_COMPILE_THREADS = 4  # kernel-compiling processes of a warm-up: most cores stay with the running pre-training


def warm_compile(recipe, config, paths, scale, out_dir):
    """One step of a recipe in a scratch folder, in a pool worker beside the pre-training before it:
    torch.compile's on-disk caches (FX graphs, AOTAutograd, kernels) then hold the recipe's step, and
    its real run loads it instead of compiling it (2-core CPU, ELECTRA-Small step: 79 s cold, 7 s from
    the caches). Returns the seconds it took."""
    start, level = time.time(), logger.level
    torch._inductor.config.compile_threads = WARM_COMPILE_THREADS  # not part of the caches' keys
    logger.setLevel(logging.WARNING)  # the scratch run's lines are noise
    try:
        pretrain(recipe, 1.0, config, paths, scale, out_dir)  # a budget of 1 FLOP: one step of each part
    finally:
        logger.setLevel(level)
        shutil.rmtree(out_dir, ignore_errors=True)
        torch._dynamo.reset()  # its compiled step and CUDA graphs: this worker fine-tunes next
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return time.time() - start


def start_warm_compile(pool, name, config, paths, scale):
    """The warm-up of recipe `name` submitted to the pool (None without a pool or compilation)."""
    if pool is None or not config.compile:
        return None
    logger.info("compiling %s's step ahead, beside the pre-training", name)
    return pool.submit(warm_compile, RECIPES[name][1], config, paths, scale, os.path.join(config.out_dir, "warm", name))


def wait_warm_compile(name, future):
    """Wait for a recipe's warm-up; a failed one only costs its run the usual compilation."""
    if future is None:
        return
    try:
        logger.info("%s: its step was compiled ahead in %.0f s", name, future.result())
    except Exception as e:  # noqa: BLE001 - the run itself compiles then, and reports any real error
        logger.warning("%s: compiling ahead failed (%s); its run compiles the step itself", name, e)


def runs_cached(plan, rows, config, scale, full_budget):
    """The cached row of each run in plan that was pre-trained as the run asks now (run -> row)."""
    cached = {}
    for run, _, fraction, seed in plan:
        identity = row_identity(run.split("@")[0], fraction, dataclasses.replace(config, seed=seed), scale, full_budget)
        row = matching_row(rows, run, identity)
        if row is not None:
            cached[run] = row
    return cached


def recipes_to_pretrain(plan, cached):
    """Names of the recipes in plan that still pre-train (no cached row), in order, each once."""
    names = []
    for run, recipe, *_ in plan:
        name = run.split("@")[0]
        if recipe is not None and run not in cached and name not in names:
            names.append(name)
    return names


def curve_every(steps, points=10):
    """Validation interval that gives a pre-training curve of about `points` points."""
    return max(1, -(-steps // points))


def tokens_text(tokens):
    """A token count for the table and the log: 90.1M, 41k, 512."""
    return f"{tokens / 1e6:.1f}M" if tokens >= 1e6 else f"{tokens / 1e3:.0f}k" if tokens >= 1e3 else str(int(tokens))


def training_logs(run_dir):
    """(folder relative to run_dir, rows) of each metrics.jsonl under run_dir (two for a two-stage run)."""
    for root, _, files in os.walk(run_dir):
        if "metrics.jsonl" in files:
            yield os.path.relpath(root, run_dir), tu.read_metrics(os.path.join(root, "metrics.jsonl"))


def pretraining_record(out_dir, batch, seq_len=128):
    """Tokens seen, the median logged tokens/s, data wait per batch and (on a GPU) gpu_queued_steps, the valid
    curves (MLM accuracy, disc_auc by step), whether the discriminator ended at chance and the runs' seconds
    (their closing rows' run_seconds, which a stopped and continued run counts in full), of the runs under out_dir."""
    record, run_seconds = {"tokens": 0, "curves": {}}, []
    for folder, rows in training_logs(out_dir):
        run_seconds.append(next((r.get("run_seconds") for r in rows if r.get("event") == "done"), None))
        train_steps = [r["step"] for r in rows if "step" in r and "split" not in r and "event" not in r]
        record["tokens"] += max(train_steps, default=0) * batch * seq_len
        for key in ("tokens_per_sec", "data_wait_ms", "gpu_queued_steps"):  # medians: the first window compiles
            values = [r[key] for r in rows if key in r and "split" not in r]
            if values:
                record.setdefault(key, {})[folder] = statistics.median_high(values)
        for key in ("mlm_accuracy", "disc_auc"):
            points = [[r["step"], r[key]] for r in rows if r.get("split") == "valid" and key in r]
            if points:
                record["curves"][f"{folder}:{key}"] = points
        if tu.valid_auc_rows(rows):  # the training script's own check
            record["discriminator_at_chance"] = tu.collapsed(rows)
    if run_seconds and None not in run_seconds:
        record["seconds"] = sum(run_seconds)
    return record


def estimate_seconds(wanted, cached, settings, config, device_type, full_budget):
    """Seconds each stage still to run should take on a device type, from its measured speeds (the log
    shows them before anything starts). Returns [(stage, seconds, beside)]: `beside` stages are fine-tuning
    in worker processes on a GPU, beside the pre-training (wall_seconds). On the CPU the workers and the
    pre-training share the cores, so there every stage's time adds, fine-tuning at one process's pace."""
    stages, compiled = [], set()  # compiled: recipes whose steps torch.compile's caches hold by their turn
    speeds, workers = DEVICE_SPEEDS[device_type], ft_workers(config, device_type)
    beside = workers > 1 and device_type != "cpu"
    speed = speeds["flops_per_second"]
    for run, recipe, fraction, *_ in wanted:
        row = cached.get(run)
        if row is None and recipe is not None:
            name, budget = run.split("@")[0], fraction * full_budget
            # the first recipe compiles; with a pool each later one was compiled ahead (warm_compile)
            warm = name in compiled or (compiled and workers > 1)
            compile_seconds = 0 if not config.compile else speeds["warm_compile_seconds" if warm else "compile_seconds"]
            compiled.add(name)
            if recipe["kind"] == "two_stage":
                seconds = (config.gen_fraction * budget / speed["mlm"] + (1 - config.gen_fraction) * budget /
                           speed["two_stage"] + 2 * compile_seconds)
            else:
                seconds = budget / speed["mlm" if recipe["kind"] == "mlm" else "joint"] + compile_seconds
            stages.append((f"pre-train {run}", seconds, False))
        if settings["tasks"] and (row is None or row.get("finetune") != settings):
            stages.append((f"fine-tune {run}", finetune_seconds(settings, speeds, workers if beside else 1), beside))
    return stages


def wall_seconds(stages):
    """The wall time of the stages in order: this process runs the others one after another; the pool
    takes each `beside` stage when this process has submitted it and the pool has finished the one before."""
    now = pool_free = 0.0
    for _, seconds, beside in stages:
        if beside:
            pool_free = max(pool_free, now) + seconds
        else:
            now += seconds
    return max(now, pool_free)


def log_estimates(config, scale, plan, cached, settings, budget):
    """Log every stage's time still to run on the device in use, before anything runs; where that is
    not the device the scale is sized for (--scale gpu on a CPU), the total there too."""
    device = tu.resolve_device(config.device).type
    for target in dict.fromkeys([device, scale["device"]]):
        stages = [] if features_built(config) else [
            ("vocabulary and features", prep_seconds(config, scale, target), False)]
        stages += estimate_seconds(plan, cached, settings, config, target, budget)
        minutes = wall_seconds(stages) / 60
        if target != device:
            logger.info("estimate: on %s, which --scale %s is sized for: %.1f min", DEVICE_NAMES[target],
                        config.scale, minutes)
            continue
        for stage, seconds, beside in stages:
            logger.info("estimate: %-40s %7.0f s%s", stage, seconds, " (in the worker processes, beside the "
                        "pre-training)" if beside else "")
        logger.info("estimate: everything still to run: %.1f min at the speeds measured on %s (benchmarks/"
                    "RESULTS.md)", minutes, DEVICE_NAMES[device])


FT_BATCH = 32  # finetune_SE.py's train_batch_size, which the comparison keeps
CHARS_PER_TOKEN = 3.6  # English in the tiny comparison's BPE 8,000: SST-2 3.5, MRPC 3.7 (special tokens aside)


@functools.lru_cache(maxsize=None)
def padded_width(task_dir, max_train_examples, max_seq_length=128):
    """The mean width of a task's training batches, which finetune_SE.py pads to their longest example rounded
    up to a multiple of 32 tokens, estimated from the characters of train.tsv's texts (SST-2 66.6, MRPC 126;
    with the tiny comparison's tokenizer, 67.2 and 121.6)."""
    task = finetune_SE.load_task(finetune_args(task_dir=task_dir, max_train_examples=max_train_examples))
    texts = task.train.texts
    tokens = np.array([sum(len(t) for t in text) / CHARS_PER_TOKEN + 1 + len(text) for text in texts])
    order = np.random.default_rng(0).permutation(len(tokens))
    longest = [tokens[order[i:i + FT_BATCH]].max() for i in range(0, len(order), FT_BATCH)]
    return float(np.mean(np.minimum(np.ceil(np.array(longest) / 32) * 32, max_seq_length)))


def finetune_seconds(settings, speeds, workers):
    """One row's fine-tuning and linear probes. Per task and seed, the training steps (on a GPU at the host's
    pace, on the CPU in proportion to the task's padded width) and a dev evaluation per epoch; per task, the
    probe's pass over its examples; each job also loads the model and the task. With
    workers, a job per seed and one per probe, `workers` at once (the longest sets each round's pace); in
    one process, a job per task (every seed) and one per probe, one after another."""
    jobs, load, seeds = [], speeds["ft_job_seconds"], len(settings["seeds"].split(","))
    for task in settings["tasks"]:
        train, dev = task_size(task, settings["max_train_examples"]), tsv_rows(os.path.join(task, "dev.tsv"))
        steps_per_second = speeds.get("ft_steps_per_second") or speeds["ft_padded_tokens_per_second"] / (
            FT_BATCH * padded_width(task, settings["max_train_examples"]))
        one_seed = settings["epochs"] * (-(-train // FT_BATCH) / steps_per_second +
                                         dev / speeds["ft_eval_examples_per_second"])
        probe = (train + dev) / speeds["ft_eval_examples_per_second"] + load
        jobs += ([one_seed + load] * seeds if workers > 1 else [seeds * one_seed + load]) + [probe]
    if workers > 1 and jobs:
        return -(-len(jobs) // workers) * max(jobs)
    return sum(jobs)


DEVICE_NAMES = {"cpu": "2 CPU cores", "cuda": "one H100"}  # the machines DEVICE_SPEEDS were measured on
# plain-text bytes per byte of a compressed corpus, roughly (xz: enwiki 3.7, viwiki-large 4.6)
PLAIN_PER_COMPRESSED_BYTE = {".xz": 4.0, ".bz2": 3.5, ".zst": 3.5, ".gz": 3.0}


def plain_bytes(path):
    """Bytes of plain text in a corpus file, folder or glob (what the vocabulary and features read),
    compressed files counted at a typical ratio."""
    if os.path.isdir(path):
        return sum(plain_bytes(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
    if not os.path.isfile(path):
        return sum(plain_bytes(p) for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    return os.path.getsize(path) * PLAIN_PER_COMPRESSED_BYTE.get(os.path.splitext(path)[1], 1.0)


def prep_seconds(config, scale, device_type):
    """The vocabulary and the features on a device type's machine: each reads the corpus once,
    segmenting it first where asked."""
    segmented = scale.get("word_segmenter", "none") != "none"
    speeds = DEVICE_SPEEDS[device_type]
    return plain_bytes(config.train_input) / speeds["segmented_prep_bytes_per_second" if segmented else
                                                    "prep_bytes_per_second"]


def tsv_rows(path):
    """Data rows of a TSV file (its lines less the header); 0 when it is missing."""
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8", errors="replace") as f:
        return max(0, sum(1 for _ in f) - 1)


def task_size(task_dir, max_examples):
    """Training examples fine-tuning uses from a task folder (its train.tsv's rows, capped)."""
    rows = tsv_rows(os.path.join(task_dir, "train.tsv"))
    return min(rows, max_examples) if max_examples else rows


def random_model(paths, scale, out_dir):
    """A randomly initialised discriminator of the same size, saved as the others are."""
    torch.manual_seed(0)
    _, disc_cfg = electra_configs(scale["model_size"], paths["vocab"], 128)
    model_dir = os.path.join(out_dir, "discriminator")
    save_discriminator(SpanElectraDiscriminator(disc_cfg, True, False), model_dir,
                       os.path.join(paths["features"], "tokenizer"))
    return model_dir


# ---------------------------------------------------------------- fine-tuning
def finetune(model_dir, task_dir, config, scale, out_dir, linear_probe=False, seed=None):
    """results.json of finetune_SE.py for one model and task (one seed of config.seeds, default all),
    or of its linear probe. Every seed fine-tunes on the same subset, the first seed's."""
    settings = finetune_settings(config, scale, [task_dir])
    return finetune_SE.main(finetune_args(
        model_dir=model_dir, task_dir=task_dir, out_dir=out_dir, num_train_epochs=settings["epochs"],
        learning_rate=settings["learning_rate"], seeds=config.seeds if seed is None else str(seed),
        subset_seed=config.ft_seed_list()[0], max_train_examples=settings["max_train_examples"],
        device=config.device, save_model=False, linear_probe=linear_probe))


def merged_results(results):
    """One results.json of a task's seeds fine-tuned in separate jobs: their runs joined, median, min
    and max taken again (the linear probe, deterministic, has one job)."""
    if len(results) == 1:
        return results[0]
    per_seed = [run for result in results for run in result["per_seed"]]
    keys = [k for k in per_seed[0] if k.startswith("eval_")]
    return {**results[0], **finetune_SE.summarise(per_seed, keys), "seeds": [run["seed"] for run in per_seed],
            "per_seed": per_seed}


def finetune_settings(config, scale, tasks):
    """What a row's fine-tuning ran with: a cached row is fine-tuned again when these change."""
    return {"tasks": tasks, "epochs": scale["ft_epochs"], "learning_rate": scale["ft_lr"],
            "max_train_examples": ft_max_train(config, scale), "seeds": config.seeds}


def ft_max_train(config, scale):
    """Fine-tuning examples per task: --ft_max_train_examples, or the scale's where it is -1 (0: all)."""
    return scale["ft_max_train"] if config.ft_max_train_examples < 0 else config.ft_max_train_examples


def headline_metric(results):
    """The task's main dev metric: F1 for paraphrase, Matthews for acceptability, Spearman for
    regression, else accuracy (the GLUE convention)."""
    for key in ("eval_f1", "eval_matthews_corr", "eval_spearman", "eval_accuracy"):
        if key in results:
            return key
    raise KeyError("no eval metric in results")


# ---------------------------------------------------------------- data
def data_identity(config, scale):
    """What out_dir's vocabulary and features are built from."""
    identity = {"train_input": os.path.abspath(config.train_input), "valid_input": os.path.abspath(config.valid_input),
                "vocab_size": scale["vocab_size"], "word_segmenter": scale.get("word_segmenter", "none")}
    if config.pack_across_documents:  # named only when set: out_dirs built before the flag keep their identity
        identity["pack_across_documents"] = True
    return identity


def check_data_identity(config, scale):
    """Stop when out_dir's vocabulary and features were built from other text or settings (a run reuses
    them, and every cached row was pre-trained on them); record the identity on first use."""
    path, wanted = os.path.join(config.out_dir, DATA_FILE), data_identity(config, scale)
    if os.path.isfile(path):
        held = read_json(path, "give a new --out_dir, or remove it to start over", "out_dir")
        unset = {"pack_across_documents": False}  # named in the identity only when set (see data_identity)
        keys = list(wanted) + [k for k in held if k not in wanted]  # a flag dropped since is a change too
        changed = [f"{k} {held.get(k, unset.get(k))!r} -> {wanted.get(k, unset.get(k))!r}" for k in keys
                   if held.get(k, unset.get(k)) != wanted.get(k, unset.get(k))]
        if changed:
            raise SpanElectraError(f"out_dir: '{config.out_dir}' holds the vocabulary and features of another corpus "
                                   f"or setting ({'; '.join(changed)}); give a new --out_dir, or remove it to start over")
    else:
        atomic_write_json(path, wanted)


def features_built(config):
    return os.path.isfile(os.path.join(config.out_dir, "features", "meta.json"))


def known_vocab_size(config, scale):
    """The vocabulary size the rows will be counted at: the built features', else the one asked for
    (a small corpus may give fewer entries; the budget is then counted again once they are built)."""
    return PretrainingFeatures(os.path.join(config.out_dir, "features")).vocab_size if features_built(config) \
        else scale["vocab_size"]


def check_inputs(config):
    """A wrong corpus or task path fails now, in one line, rather than after the data is built and the
    first models are trained. The corpus only matters while the features are still to be built."""
    if not features_built(config):
        files = {}
        for name in ("train_input", "valid_input"):
            try:
                files[name] = find_text_files(getattr(config, name), name)
            except SpanElectraError as e:
                raise SpanElectraError(f"{e}{shared_hint(getattr(config, name), '--train_input and --valid_input')}") \
                    from None
        shared = sorted(set(map(os.path.realpath, files["train_input"])) & set(map(os.path.realpath, files["valid_input"])))
        if shared:  # the valid curves (MLM accuracy, disc_auc) in the table would measure memorising it
            raise SpanElectraError(f"valid_input: '{shared[0]}' is also in train_input, so the table's valid figures "
                                   "would measure memorising it; give held-out text of the same corpus with "
                                   "--valid_input (e.g. the last few percent of its lines in a file of their own)")
    for task in filter(None, config.tasks.split(",")):
        for needed in ("train.tsv", "dev.tsv"):
            if not os.path.isfile(os.path.join(task, needed)):
                raise SpanElectraError(f"tasks: '{task}' holds no {needed}; give GLUE-format task folders "
                                       "(train.tsv and dev.tsv), comma-separated, or --tasks '' for none"
                                       f"{shared_hint(task, '--tasks')}")


def shared_hint(path, flags):
    """Where a scale's default data is expected (../shared/data beside the checkout), for a missing path."""
    if os.path.abspath(path).startswith(SHARED + os.sep):
        return f" (the scale's default, from '{SHARED}' beside the checkout; give your own with {flags})"
    return ""


def prepare_data(config, scale):
    """Vocabulary and features for the pre-training corpus (built once, reused by every recipe)."""
    check_data_identity(config, scale)
    tok_dir = os.path.join(config.out_dir, "tok")
    feat_dir = os.path.join(config.out_dir, "features")
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        create_vocab_SE.main(tok_args(data_dir=config.train_input, vocab_size=scale["vocab_size"], out_dir=tok_dir,
                                      word_segmenter=scale.get("word_segmenter", "none")))
    if not os.path.isfile(os.path.join(feat_dir, "meta.json")):
        process.main(feature_args(tokenizer_dir=tok_dir, train_input=config.train_input,
                                  valid_input=config.valid_input, out_dir=feat_dir, max_seq_len=128,
                                  pack_across_documents=config.pack_across_documents))
    features = PretrainingFeatures(feat_dir)
    sequences = features.meta["num_sequences"]["train"]
    if sequences < scale["batch"]:  # found now, not after the first rows were fine-tuned
        remove_paths((tok_dir, feat_dir, os.path.join(config.out_dir, DATA_FILE)))  # the next call builds them anew
        raise SpanElectraError(f"train_input: '{config.train_input}' gave {sequences} training sequences of 128 "
                               f"tokens, fewer than one batch of {scale['batch']} at --scale {config.scale}; give "
                               "more text (a few MB)" + ("" if scale["batch"] <= 32 else ", or use --scale tiny (batch 32)"))
    return {"tokenizer": tok_dir, "features": feat_dir, "vocab": features.vocab_size}


# ---------------------------------------------------------------- report
def summary_cell(results, key):
    return f"{results[key]:.3f} [{results[key + '_min']:.3f}, {results[key + '_max']:.3f}]"


def pooled_rows(rows):
    """One row per recipe and budget: the rows of its pre-training seeds pooled (their fine-tuning
    runs and probes joined, see merged_results; each seed's own row kept in 'seed_rows'); a recipe
    pre-trained with one seed keeps its row as it is."""
    groups = {}
    for row in rows:
        groups.setdefault((row["recipe"], row["fraction"]), []).append(row)
    pooled = []
    for group in groups.values():
        if len(group) == 1:
            pooled.append(group[0])
            continue
        row = {**group[0], "label": f"{group[0]['label']}, {len(group)} pre-training seeds", "seed_rows": group,
               "seconds": sum(r["seconds"] for r in group) / len(group)}
        for kind in ("metrics", "probe"):
            if all(kind in r for r in group):
                row[kind] = {task: {"key": done["key"], "results": merged_results([r[kind][task]["results"] for r in group])}
                             for task, done in group[0][kind].items()}
        pooled.append(row)
    return pooled


def pretraining_cells(row):
    """Tokens seen and the last valid MLM accuracy and disc_auc of a row (blank where it has none; one
    value per pre-training seed, ' / ' between them); a discriminator that collapsed (training_utils.collapsed:
    learned, then at chance at its last two evaluations) is marked, so its fine-tuning figures read as what they are."""
    def last(one, metric):
        values = [points[-1][1] for key, points in sorted(one.get("curves", {}).items()) if key.endswith(":" + metric)]
        return values[-1] if values else None
    seed_rows = row.get("seed_rows", [row])
    accuracy = [last(r, "mlm_accuracy") for r in seed_rows]
    auc = [(last(r, "disc_auc"), r.get("discriminator_at_chance")) for r in seed_rows]
    return [tokens_text(row["tokens"]) if row.get("tokens") else "",
            " / ".join(f"{a:.3f}" for a in accuracy if a is not None),
            " / ".join(f"{a:.3f}" + (" (collapsed)" if collapsed else "") for a, collapsed in auc if a is not None)]


def probe_cell(results, key):
    """A linear probe's dev figure; median [min, max] when pooled over pre-training seeds."""
    return summary_cell(results, key) if len(results.get("per_seed", ())) > 1 else f"{results[key]:.3f}"


def write_table(config, rows, tasks, settings):
    """The table of the rows finished so far (fine-tuned with these settings; each recipe at its full
    budget and at random init) into out_dir/compare.md, after every row: a call that stops early still
    leaves its summary; without tasks, every row, pre-training figures only. Returns (table, pooled rows)."""
    pooled = pooled_rows([r for r in rows if r.get("finetune") == settings or not tasks])
    if not pooled:
        return "", []
    full = [r for r in pooled if r["fraction"] in (0.0, max(r["fraction"] for r in pooled))]
    table = markdown_table(full, tasks)
    atomic_write_text(os.path.join(config.out_dir, "compare.md"), table + "\n")
    return table, pooled


def markdown_table(rows, tasks):
    names = [os.path.basename(t.rstrip("/")) for t in tasks]
    probed = all("probe" in r for r in rows)
    head = ["recipe", "pre-training TFLOPs", "tokens", "pre-training time", "valid MLM accuracy", "valid disc_auc"] + [
        f"{n} {rows[0]['metrics'][n]['key'][5:]}" for n in names] + [f"{n} linear probe" for n in names if probed]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        tokens, accuracy, auc = pretraining_cells(row)
        cells = [row["label"], f"{row['tflops']:.1f}", tokens, f"{row['seconds'] / 60:.1f} min", accuracy, auc]
        cells += [summary_cell(row["metrics"][n]["results"], row["metrics"][n]["key"]) + seed_medians(row, n)
                  for n in names]
        if probed:
            cells += [probe_cell(row["probe"][n]["results"], row["probe"][n]["key"]) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    baseline = majority_cells(rows, names)
    if baseline:  # what a model that learned nothing scores: a cell at it is no learning
        lines.append("| " + " | ".join(["majority class (no learning)", "", "", "", "", ""] + baseline +
                                       [""] * (len(names) if probed else 0)) + " |")
    return "\n".join(lines)


def seed_medians(row, task):
    """For a row pooled over pre-training seeds, each seed's own median after the pooled cell ('; by seed
    0.712 / 0.608'): the pooled median and range mix the spread between pre-trained models with the spread
    between fine-tuning seeds, and two seeds that disagree can pool to a median no run reached."""
    seed_rows = row.get("seed_rows")
    if not seed_rows or not all("metrics" in r for r in seed_rows):
        return ""
    key = row["metrics"][task]["key"]
    return "; by seed " + " / ".join(f"{r['metrics'][task]['results'][key]:.3f}" for r in seed_rows)


def majority_cells(rows, names):
    """Each task's headline figure for always predicting its most frequent training label (from
    finetune_SE.py's results), or None where the results do not hold it (regression, older runs)."""
    cells = []
    for n in names:
        key, found = rows[0]["metrics"][n]["key"], (r["metrics"][n]["results"].get("majority_baseline") for r in rows)
        baseline = next((b for b in found if b and key in b), None)
        cells.append(f"{baseline[key]:.3f}" if baseline else "")
    return cells if any(cells) else None


def plot(rows, tasks, path):
    """Dev score (median, min-max bars) against pre-training compute, one panel per task."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    names = [os.path.basename(t.rstrip("/")) for t in tasks]
    if not names:  # pre-training only (gpu_vi without a Vietnamese task): the table and curves say it all
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for recipe in dict.fromkeys(r["recipe"] for r in rows):
            points = sorted((r["tflops"], r["metrics"][name]["results"], r["metrics"][name]["key"], r["label"])
                            for r in rows if r["recipe"] == recipe)
            key = points[0][2]
            x = [p[0] for p in points]
            y = [p[1][key] for p in points]
            err = [[p[1][key] - p[1][key + "_min"] for p in points], [p[1][key + "_max"] - p[1][key] for p in points]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=points[0][3])
        ax.set_title(f"{name} dev {key[5:]}")
        ax.set_xlabel("pre-training compute (TFLOPs)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def publish_copy(src, dst):
    """Copy src to dst under a temporary name, then rename (no half-written plot in benchmarks/)."""
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    return dst


def command_line(config, path):
    """The command that reproduces this table: --scale and every field set otherwise than the scale's
    defaults (the corpus, the tasks, the recipes, the budget, ...), and --results_md."""
    defaults = compare_args(scale=config.scale).resolved()
    changed = [f"--{f.name} {shlex.quote(str(getattr(config, f.name)))}" for f in dataclasses.fields(compare_args)
               if f.name not in ("scale", "results_md") and getattr(config, f.name) != getattr(defaults, f.name)]
    return " ".join(["python benchmarks/compare_pretraining.py", f"--scale {config.scale}"] + changed
                    + [f"--results_md {os.path.relpath(path)}"])


def write_results_md(path, table, config, png, budget, elapsed):
    """Rewrite this scale's comparison section of RESULTS.md (between its markers), leaving the rest as it is."""
    name = section_name(config)
    begin, end = section_marks(name)
    section = "\n".join([
        begin,
        f"Command: `{command_line(config, path)}` ({elapsed / 60:.0f} min on this machine). Budget: "
        f"{budget / 1e12:.1f} TFLOPs of training per recipe at the full point (torch's FlopCounterMode on one step of each recipe); "
        + (f"fine-tuning seeds {config.seeds}" if config.tasks else "no task fine-tuned (--tasks '')")
        + (f", pre-training seeds {config.pretrain_seeds} (pooled)" if config.pretrain_seeds else "")
        + ("; cells are the dev metric's median [min, max]." if config.tasks else "; cells are the pre-training figures."),
        "", table, "", f"![dev score against pre-training compute]({os.path.relpath(png, os.path.dirname(path))})"
        if png else "(no plot: no task was fine-tuned, or matplotlib is missing)", end])
    text = open(path, encoding="utf-8").read() if os.path.isfile(path) else "# Benchmark results\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n## Equal-compute comparison — `benchmarks/compare_pretraining.py`\n\n" + section + "\n"
    atomic_write_text(path, text)
    if name != config.scale:
        logger.info("%s: the table went to section '%s', not '%s': these settings are not the scale's, and the "
                    "published table stays", path, name, config.scale)


def rates_alone(run_dir, busy):
    """Median logged tokens/s of each training log under run_dir over the windows (log row to log row)
    in which nothing ran beside it: busy holds the [start, end] times of the fine-tuning in worker
    processes. What the step does on its own, beside the median over the whole run."""
    rates = {}
    for folder, rows in training_logs(run_dir):
        timed = [r for r in rows if "tokens_per_sec" in r and "time" in r and "split" not in r]
        alone = [r["tokens_per_sec"] for before, r in zip(timed, timed[1:])  # the first window: compilation
                 if not any(start < r["time"] and end > before["time"] for start, end in busy)]
        if alone:
            rates[folder] = statistics.median_high(alone)
    return rates


def note_rates_alone(config, rows):
    """Each pre-trained row's tokens/s with nothing beside it (logged; kept in compare.json)."""
    busy = [r["ft_window"] for r in rows if "ft_window" in r]
    for row in rows:
        rates = rates_alone(os.path.join(config.out_dir, "runs", row["run"]), busy) if "tokens_per_sec" in row else {}
        if rates:
            row["tokens_per_sec_alone"] = rates
            queued = row.get("gpu_queued_steps")  # at most 1: the GPU waited for the host
            logger.info("%s: median tokens/s %s over the run, %s with nothing beside it%s", row["run"],
                        {k: round(v) for k, v in row["tokens_per_sec"].items()}, {k: round(v) for k, v in rates.items()},
                        f"; GPU steps queued as a step began (median) {queued}" if queued else "")


# ---------------------------------------------------------------- main
def row_identity(name, fraction, config, scale, full_budget):
    """What a row's model was pre-trained with: a cached row is reused only when all of it matches
    (another seed, budget or size in the same out_dir pre-trains again)."""
    recipe = RECIPES[name][1]
    if recipe is None:
        return {"model_size": scale["model_size"]}
    identity = {"model_size": scale["model_size"], "budget_tflops": round(fraction * full_budget / 1e12, 3),
                "batch": scale["batch"], "learning_rate": scale["learning_rate"], "seed": config.seed, "bf16": config.bf16,
                **fp16_setting(config)}
    if recipe["kind"] == "two_stage":
        identity["gen_fraction"] = config.gen_fraction
    if RECIPE_REVISIONS.get(recipe["kind"]):  # pre-trained otherwise since (rows cached before are not reused)
        identity["revision"] = RECIPE_REVISIONS[recipe["kind"]]
    return identity


# a recipe kind whose pre-training changed with no setting to tell (same budget, seed and sizes), so that a row
# compare.json cached before is pre-trained again: mlm 2, the MLM baseline starts at the discriminators' init
# std (68974db); two_stage 2, the frozen generator's forward counts its attention and no longer runs its
# span-boundary head (da8d2bf, 68974db), so a budget buys other step counts. joint: unchanged, no key.
RECIPE_REVISIONS = {"mlm": 2, "two_stage": 2}


def matching_row(rows, run, identity):
    """The row of `run` pre-trained as `identity` asks, or None."""
    return next((r for r in rows if r["run"] == run and r.get("identity") == identity), None)


def cached_row(rows, run, identity):
    """matching_row; a row of the same run pre-trained otherwise is dropped from rows (and said)."""
    row = matching_row(rows, run, identity)
    for other in [r for r in rows if r["run"] == run and r is not row]:
        changed = [f"{k} {other.get('identity', {}).get(k)!r} -> {v!r}" for k, v in identity.items()
                   if other.get("identity", {}).get(k) != v]
        logger.info("%s: cached with other settings (%s): pre-training it again", run, "; ".join(changed))
        rows.remove(other)
    return row


def run_name(name, fraction, seed, first_seed):
    """A row's name: recipe@fraction, with #s<seed> for every pre-training seed but the first."""
    return f"{name}@{fraction:g}" + ("" if seed == first_seed else f"#s{seed}")


def pretrain_row(run, fraction, config, paths, scale, full_budget):
    """Pre-train one run (or build the random model) with config.seed and return its compare.json row."""
    name = run.split("@")[0]
    label, recipe = RECIPES[name]
    out_dir = os.path.join(config.out_dir, "runs", run)
    if recipe is None:
        model_dir, spent, seconds = random_model(paths, scale, out_dir), 0.0, 0.0
    else:
        model_dir, spent, seconds = pretrain(recipe, fraction * full_budget, config, paths, scale, out_dir)
    return {"run": run, "recipe": name, "label": label, "fraction": fraction, "tflops": spent / 1e12,
            "seconds": seconds, "model_dir": os.path.relpath(model_dir, config.out_dir),  # see row_model_dir
            **({"seed": config.seed} if recipe is not None else {}),  # the record's seconds replace this call's:
            **(pretraining_record(out_dir, scale["batch"]) if recipe is not None else {})}  # they count a stop's part


def row_model_dir(config, row):
    """A row's saved model: kept relative to out_dir, so that cached rows hold however out_dir is reached
    (a relative --out_dir from another folder, an absolute one, a moved folder)."""
    return os.path.join(config.out_dir, row["model_dir"])


def start_finetuning(pool, row, tasks, config, scale):
    """Fine-tune (and linearly probe) one row on every task: in the pool of worker processes when there is
    one, a job per seed, so that the next recipe pre-trains meanwhile and the row takes one seed's time;
    else here and now. Returns (row, start time, [(task, probe, future)]) for finish_finetuning."""
    started, jobs = time.time(), []
    for task in tasks:
        for probe in (False, True):
            out_dir = ft_out_dir(config, row, task, probe)
            for seed in ([None] if probe or pool is None else config.ft_seed_list()):
                args = (row_model_dir(config, row), task, config, scale,
                        out_dir if seed is None else f"{out_dir}/seed_{seed}", probe, seed)
                job = pool.submit(finetune, *args) if pool else finished_future(finetune(*args))
                job.add_done_callback(lambda f: setattr(f, "finished", time.time()))
                jobs.append((task, probe, job))
    return row, started, jobs


def finished_future(result):
    """A result computed here, as a done Future: both paths are finished the same way."""
    future = Future()
    future.set_result(result)
    return future


def finetuning_done(started):
    return all(job.done() for _, _, job in started[2])


def finish_finetuning(started, settings):
    """Wait for one row's jobs and put their dev figures in it (metrics: fine-tuning; probe: linear probe)."""
    row, start, jobs = started
    row["metrics"], row["probe"] = {}, {}
    for task, probe in dict.fromkeys((task, probe) for task, probe, _ in jobs):
        result = merged_results([job.result() for t, p, job in jobs if (t, p) == (task, probe)])
        row["probe" if probe else "metrics"][os.path.basename(task.rstrip("/"))] = {
            "key": headline_metric(result), "results": result}
    # the done callbacks may still be running when result() returns
    ended = max((getattr(job, "finished", time.time()) for _, _, job in jobs), default=start)  # no task: no job
    row.update(finetune=settings, ft_seconds=ended - start, ft_window=[start, ended])
    logger.info("%s: %s", row["run"], {t: round(m["results"][m["key"]], 4) for t, m in row["metrics"].items()})


@contextlib.contextmanager
def finetune_pool(config):
    """Worker processes for fine-tuning (None: fine-tune in this process). A small model's fine-tuning step
    waits on the host, so several share one GPU, beside the next recipe's pre-training. Spawned: this
    process holds CUDA; TQDM_DISABLE keeps their bars from interleaving with the pre-training's."""
    workers = ft_workers(config, tu.resolve_device(config.device).type)
    if workers <= 1:
        yield None
        return
    on_cpu = tu.resolve_device(config.device).type == "cpu"
    worker_threads, own_threads = cpu_threads(workers, available_cores(), on_cpu)
    logger.info("fine-tuning in %d worker processes, %d CPU thread(s) each%s", workers, worker_threads,
                f"; the pre-training beside them: {own_threads}" if on_cpu else "")
    os.environ["TQDM_DISABLE"] = "1"  # tqdm reads it when imported: the workers' bars go, this process's stay
    pool = WorkerPool(workers, worker_threads)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(own_threads or threads_before)
    try:
        yield pool
    except BaseException:
        pool.stop_workers()  # Ctrl-C or an error: the jobs still running are not waited for
        raise
    finally:
        pool.shutdown(cancel_futures=True)
        torch.set_num_threads(threads_before)
        os.environ.pop("TQDM_DISABLE", None)


def cpu_threads(workers, cores, on_cpu):
    """(torch threads per worker, threads for this process) so that the processes share the cores instead of
    each taking all of them: on 2 cores, two workers and the pre-training at torch's default of 2 threads
    each fine-tuned at 3.2 steps/s a worker, against 9.6 at one thread each (OpenMP threads spin while
    they wait for a core). On a GPU this process keeps its threads; its work is the GPU's."""
    sharing = workers + (1 if on_cpu else 0)
    per_worker = max(1, cores // sharing)
    return per_worker, max(1, cores - workers * per_worker) if on_cpu else None


class WorkerPool(ProcessPoolExecutor):
    """Spawned workers that leave Ctrl-C to this process, which stops them: each starts with it blocked
    (a worker spends seconds importing torch, where a Ctrl-C ended it in a traceback of its own, two of
    them at 7.5 s into a --scale tiny run) and then ignores it."""

    def __init__(self, workers, threads):
        super().__init__(workers, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker,
                         initargs=(threads,))

    def submit(self, fn, /, *args, **kwargs):
        with ctrl_c_held_back("spawn"):  # workers start on demand, inside submit
            return super().submit(fn, *args, **kwargs)

    def stop_workers(self):
        """Terminate the workers now, whatever they are running."""
        if hasattr(self, "terminate_workers"):  # Python 3.14
            self.terminate_workers()
            return
        for worker in list((self._processes or {}).values()):
            worker.terminate()


def start_worker(threads):
    """A WorkerPool worker's set-up: Ctrl-C ignored, its share of the CPU threads, and tqdm's lock a thread
    lock, not the semaphore tqdm makes by default, which a worker stopped by stop_workers never releases
    (multiprocessing then warns of a leaked semaphore at exit)."""
    ignore_ctrl_c()
    torch.set_num_threads(threads)
    import threading
    from tqdm import tqdm
    tqdm.set_lock(threading.RLock())


def ft_workers(config, device_type):
    """Fine-tuning processes at once: config.ft_workers, or (0) 8 on a GPU and 1 on the CPU."""
    if config.ft_workers:
        return config.ft_workers
    return 8 if device_type == "cuda" else 1


def ft_out_dir(config, row, task, probe):
    return os.path.join(config.out_dir, "runs", row["run"], ("probe_" if probe else "ft_") +
                        os.path.basename(task.rstrip("/")))


def warn_collapsed(rows, seeds):
    """Say which runs' discriminators ended at chance: their fine-tuning measures a collapsed encoder,
    not the recipe; with one pre-training seed, more seeds tell the recipe from the seed."""
    collapsed = [f"{r['run']} (seed {r.get('seed')})" for r in rows if r.get("discriminator_at_chance")]
    if collapsed:
        logger.warning("the discriminator collapsed to chance in %s: its fine-tuning figures are a collapsed "
                       "encoder's%s", ", ".join(collapsed), "; rerun with --pretrain_seeds 42,43,44 to tell the "
                       "recipe from the seed" if seeds == 1 else "")


def full_budget_flops(scale, vocab):
    """The full budget: the FLOPs of budget_steps joint SpanElectra steps at the scale's sizes."""
    sizes = dict(model_size=scale["model_size"], vocab=vocab, seq=128)
    return scale["budget_steps"] * step_flops("joint", RECIPES["se_joint"][1], sizes, scale["batch"])


def main(config: compare_args = None):
    config = checked_config(config, compare_args)
    config.validate()
    config = config.resolved()
    scale = dict(SCALES[config.scale])
    if config.budget_steps:
        scale["budget_steps"] = config.budget_steps
    scale["budget_steps"] = scale["budget_steps"] * config.budget_scale
    check_inputs(config)
    started = time.time()
    tasks = [t for t in config.tasks.split(",") if t]
    rows_path = os.path.join(config.out_dir, "compare.json")
    rows = []  # or the rows of earlier calls: resume after a stop
    if os.path.isfile(rows_path):
        rows = read_json(rows_path, "remove it to pre-train every row again", "out_dir", kind=list)
    fractions = config.fraction_list()
    settings = finetune_settings(config, scale, tasks)
    seeds = config.pretrain_seed_list()
    plan = [(run_name(name, fraction, seed, seeds[0]), RECIPES[name][1], fraction, seed)
            for name in config.recipes.split(",") for fraction in ([0.0] if RECIPES[name][1] is None else fractions)
            for seed in (seeds[:1] if RECIPES[name][1] is None else seeds)]  # random init: one model

    known_budget = full_budget_flops(scale, known_vocab_size(config, scale))
    log_estimates(config, scale, plan, runs_cached(plan, rows, config, scale, known_budget), settings, known_budget)
    if scale["device"] == "cuda" and config.device == "auto" and tu.resolve_device("auto").type == "cpu":
        raise SpanElectraError(f"device: --scale {config.scale} is sized for one GPU and there is none here (the "
                               "estimates above); run it on a GPU, or pass --device cpu to run it on this CPU anyway")

    make_out_dir(config.out_dir)

    paths = prepare_data(config, scale)
    full_budget = full_budget_flops(scale, paths["vocab"])
    logger.info("full budget: %.2f TFLOPs (%d joint SpanElectra steps, %s tokens)", full_budget / 1e12,
                scale["budget_steps"], tokens_text(scale["budget_steps"] * scale["batch"] * 128))
    wanted = [run for run, *_ in plan]
    reused = sum(r["seconds"] + (r.get("ft_seconds", 0.0) if r.get("finetune") == settings else 0.0)
                 for r in rows if r["run"] in wanted)  # what earlier calls did and this one keeps
    to_pretrain = recipes_to_pretrain(plan, runs_cached(plan, rows, config, scale, full_budget))
    with finetune_pool(config) as pool:
        pending = []  # rows being fine-tuned, oldest first
        warming = {}  # recipe -> its warm-up: the next recipe compiles while this one pre-trains
        for run, _, fraction, seed in plan:  # each finished stage is saved at once (a stop loses no finished row)
            name, run_config = run.split("@")[0], dataclasses.replace(config, seed=seed)
            identity = row_identity(name, fraction, run_config, scale, full_budget)
            row = cached_row(rows, run, identity)
            if row is None:
                atomic_write_json(rows_path, rows)  # a stale row of this run goes before its folder is overwritten
                wait_warm_compile(name, warming.pop(name, None))
                following = to_pretrain[to_pretrain.index(name) + 1:] if name in to_pretrain else []
                if following and following[0] not in warming:
                    warming[following[0]] = start_warm_compile(pool, following[0], config, paths, scale)
                row = dict(pretrain_row(run, fraction, run_config, paths, scale, full_budget), identity=identity)
                rows.append(row)
                atomic_write_json(rows_path, rows)
            # a row fine-tuned otherwise keeps its model; a call without tasks keeps the row's results
            if tasks and row.get("finetune") != settings:
                pending.append(start_finetuning(pool, row, tasks, config, scale))
            if not tasks:  # the table of the rows so far, as after each fine-tuning: a stop leaves it
                write_table(config, [r for r in rows if r["run"] in wanted], tasks, settings)
            while pending and (finetuning_done(pending[0]) or run == plan[-1][0]):
                finish_finetuning(pending.pop(0), settings)
                atomic_write_json(rows_path, rows)
                write_table(config, [r for r in rows if r["run"] in wanted], tasks, settings)
    note_rates_alone(config, [r for r in rows if r["run"] in wanted])
    atomic_write_json(rows_path, rows)
    rows = [r for r in rows if r["run"] in wanted]

    warn_collapsed(rows, len(seeds))
    table, pooled = write_table(config, rows, tasks, settings)
    png = plot(pooled, tasks, os.path.join(config.out_dir, "compare.png"))
    if png and config.results_md:
        png = publish_copy(png, os.path.join(os.path.dirname(config.results_md), f"compare_{section_name(config)}.png"))
    print(table)
    if config.results_md:
        write_results_md(config.results_md, table, config, png, full_budget, reused + time.time() - started)
    return rows


if __name__ == "__main__":
    run_main(main, compare_args)
