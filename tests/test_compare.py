"""benchmarks/compare_pretraining.py: the pure parts (metric choice, table, RESULTS.md section, FLOPs counting),
the loop with its heavy stages stubbed, and once the whole comparison for real at a few steps."""
import contextlib
import dataclasses
import json
import os
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import features
from conftest import REPO
import io_utils
from io_utils import SpanElectraError
from modelling_span_electra import (SpanElectraDiscriminator, SpanElectraGenerator, corrupt, discriminator_inputs,
                                    electra_configs)

sys.path.insert(0, str(REPO / "benchmarks"))
import compare_pretraining as cp  # noqa: E402

SST2 = str(REPO / "data/glue/SST-2")  # a real task folder (fine-tuning itself is stubbed where it is named)


def result(value, spread=0.01):
    return {"eval_accuracy": value, "eval_accuracy_min": value - spread, "eval_accuracy_max": value + spread}


def stub_stages(monkeypatch, pretrain, finetune=None):
    """compare_pretraining.main with its heavy stages replaced: no data built (nor its corpus read), 1 GFLOP
    a step, the given pre-training (and fine-tuning), a random model that is a path, no plot."""
    monkeypatch.setattr(cp, "prepare_data", lambda config, scale: {"features": "f", "vocab": 100, "tokenizer": "t"})
    monkeypatch.setattr(cp, "find_text_files", lambda spec, field: [spec])
    monkeypatch.setattr(cp, "step_flops", lambda *args: 1e9)
    monkeypatch.setattr(cp, "pretrain", pretrain)
    if finetune is not None:
        monkeypatch.setattr(cp, "finetune", finetune)
    monkeypatch.setattr(cp, "random_model", lambda paths, scale, out_dir: out_dir + "/discriminator")
    monkeypatch.setattr(cp, "plot", lambda *args: None)


def test_headline_metric_follows_glue():
    assert cp.headline_metric({"eval_accuracy": 1, "eval_f1": 1}) == "eval_f1"
    assert cp.headline_metric({"eval_accuracy": 1, "eval_matthews_corr": 1}) == "eval_matthews_corr"
    assert cp.headline_metric({"eval_pearson": 1, "eval_spearman": 1}) == "eval_spearman"
    assert cp.headline_metric({"eval_accuracy": 1, "eval_loss": 1}) == "eval_accuracy"


def test_headline_metric_prefers_matthews_over_spearman_and_accuracy():
    """CoLA-like results report Matthews, STS-B-like Spearman, each before accuracy."""
    assert cp.headline_metric({"eval_accuracy": 1, "eval_matthews_corr": 1, "eval_spearman": 1}) == "eval_matthews_corr"
    assert cp.headline_metric({"eval_accuracy": 1, "eval_spearman": 1}) == "eval_spearman"


def test_table_and_results_section_are_rewritten_in_place(tmp_path):
    rows = [{"label": "random init", "tflops": 0.0, "seconds": 0.0,
             "metrics": {"SST-2": {"key": "eval_accuracy", "results": result(0.6)}}},
            {"label": "MLM only", "tflops": 5.8, "seconds": 96.0, "tokens": 1.5e6,
             "curves": {".:mlm_accuracy": [[10, 0.1], [20, 0.25]]},
             "metrics": {"SST-2": {"key": "eval_accuracy", "results": result(0.66, 0.02)}}},
            {"label": "ELECTRA", "tflops": 5.8, "seconds": 120.0, "tokens": 1.2e6, "discriminator_at_chance": True,
             "curves": {".:mlm_accuracy": [[10, 0.19]], ".:disc_auc": [[5, 0.7], [10, 0.501]]},
             "metrics": {"SST-2": {"key": "eval_accuracy", "results": result(0.5)}}}]
    table = cp.markdown_table(rows, ["data/glue/SST-2/"])
    assert table.splitlines()[0] == ("| recipe | pre-training TFLOPs | tokens | pre-training time | valid MLM accuracy | "
                                     "valid disc_auc | SST-2 accuracy |")
    assert table.splitlines()[2] == "| random init | 0.0 |  | 0.0 min |  |  | 0.600 [0.590, 0.610] |"
    assert table.splitlines()[3] == "| MLM only | 5.8 | 1.5M | 1.6 min | 0.250 |  | 0.660 [0.640, 0.680] |"
    # a discriminator that ended at chance is named, so its fine-tuning figures are read as a failed run
    assert table.splitlines()[4] == "| ELECTRA | 5.8 | 1.2M | 2.0 min | 0.190 | 0.501 (collapsed) | 0.500 [0.490, 0.510] |"

    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## Other\n\nkept\n", encoding="utf-8")
    published = cp.compare_args(tasks="elsewhere/SST-2,elsewhere/MRPC").resolved()  # the scale's own settings
    cp.write_results_md(str(md), "| published table |", published, None, 5.8e12, 600)
    assert cp.section_marks("tiny")[0] in md.read_text(encoding="utf-8")
    config = cp.compare_args(seeds="1,2,3", recipes="random,mlm", tasks="data/glue/SST-2").resolved()
    cp.write_results_md(str(md), table, config, None, 5.8e12, 600)
    cp.write_results_md(str(md), table.replace("0.660", "0.700"), config, None, 5.8e12, 600)  # a rerun replaces it
    text = md.read_text(encoding="utf-8")
    # fewer recipes and tasks than the scale's: a section of its own, and the published table stays
    assert text.count(cp.section_marks("tiny-custom")[0]) == 1 and "0.700 [0.640, 0.680]" in text and "0.660 [" not in text
    assert "| published table |" in text and text.count(cp.section_marks("tiny")[0]) == 1
    assert text.startswith("# Benchmark results\n\n## Other\n\nkept\n") and "5.8 TFLOPs" in text
    # the command names whatever differs from the scale's defaults, so the table can be made again
    assert (f"Command: `python benchmarks/compare_pretraining.py --scale tiny --tasks data/glue/SST-2 --recipes "
            f"random,mlm --results_md {os.path.relpath(md)}`") in text
    # another scale's section is its own: the tiny one stays
    cp.write_results_md(str(md), "| gpu table |", cp.compare_args(scale="gpu").resolved(), None, 6.8e15, 500)
    text = md.read_text(encoding="utf-8")
    assert "0.700 [0.640, 0.680]" in text and "| gpu table |" in text and cp.section_marks("gpu")[0] in text
    assert "fine-tuning seeds 1,2,3" in text and "cells are the dev metric's median [min, max]" in text
    # nothing fine-tuned: the header says so, not the seeds and dev cells of a fine-tuning
    cp.write_results_md(str(md), "| pre-training only |", cp.compare_args(tasks="", recipes="mlm").resolved(), None,
                        5.8e12, 600)
    section = md.read_text(encoding="utf-8").split("| pre-training only |")[0].rsplit("Command:", 1)[1]
    assert "no task fine-tuned (--tasks '')" in section and "fine-tuning seeds" not in section
    assert "cells are the pre-training figures" in section


def test_flops_are_counted_per_recipe(bpe_feat, monkeypatch):
    sizes = dict(model_size="tiny", vocab=bpe_feat[1]["vocab_size"], seq=128)
    mlm = cp.step_flops("generator", cp.RECIPES["se_two_stage"][1], sizes, 4)
    joint = cp.step_flops("joint", cp.RECIPES["se_joint"][1], sizes, 4)
    two_stage = cp.step_flops("two_stage", cp.RECIPES["se_two_stage"][1], sizes, 4)
    # the joint step trains both models; two-stage trains the discriminator and only runs the generator forward
    assert 0 < mlm < two_stage < joint
    # joint adds the generator's backward: 2/3 of its forward + backward
    assert joint == pytest.approx(two_stage + 2 / 3 * mlm, rel=0.1)
    # counted on 8 rows and scaled: what counting all 16 rows gives
    assert cp.step_flops("joint", cp.RECIPES["se_joint"][1], sizes, 16) == pytest.approx(
        cp.counted_flops("joint", cp.RECIPES["se_joint"][1], sizes, 16), rel=1e-6)
    # counted once per process: the full budget and the recipe's run ask for the same step
    monkeypatch.setattr(cp, "counted_flops", lambda *args: pytest.fail("counted again"))
    assert cp.step_flops("joint", dict(cp.RECIPES["se_joint"][1]), dict(sizes), 4) == joint


@pytest.mark.parametrize("name", ["mlm", "electra", "se_joint"])
def test_a_synthetic_batch_counts_the_flops_of_a_real_one(name, bpe_feat, monkeypatch):
    """FLOPs depend on shapes alone: the features-free batch the budget is counted on has the shapes,
    and so the FLOPs, of the training datasets' batches (so every estimate is printed before the data
    is built)."""
    recipe = cp.RECIPES[name][1]
    kind = "mlm" if recipe["kind"] == "mlm" else "joint"
    data_cls, dataset_cls = (cp.MLM_trainDataArgs, features.MLMDataset) if kind == "mlm" else (
        cp.SE_trainDataArgs, features.SEDataset)
    real = dataset_cls(data_cls(features_dir=str(bpe_feat[0]), masking=recipe["masking"]), 4, seed=0)[0]
    synthetic = cp.synthetic_batch(kind, recipe, bpe_feat[1]["vocab_size"], 128, 4)
    assert {k: (v.shape, v.dtype) for k, v in real.items()} == {
        k: (v.shape, v.dtype) for k, v in synthetic.items() if k in real}
    sizes = dict(model_size="tiny", vocab=bpe_feat[1]["vocab_size"], seq=128)
    on_synthetic = cp.counted_flops(kind, recipe, sizes, 4)
    monkeypatch.setattr(cp, "synthetic_batch", lambda *args: real)
    assert cp.counted_flops(kind, recipe, sizes, 4) == on_synthetic


def test_unknown_recipe_is_refused():
    from io_utils import SpanElectraError
    with pytest.raises(SpanElectraError, match="recipes: 'bert'"):
        cp.compare_args(recipes="mlm,bert").validate()
    with pytest.raises(SpanElectraError, match="recipes: 'mlm,mlm' names a recipe twice"):
        cp.compare_args(recipes="mlm,mlm").validate()


def test_a_results_md_that_is_a_folder_is_refused_before_any_run(tmp_path):
    from io_utils import SpanElectraError
    with pytest.raises(SpanElectraError, match=f"^results_md: '{tmp_path}' is a folder"):
        cp.compare_args(results_md=str(tmp_path)).validate()


def test_cached_runs_are_reused_and_refinetuned_when_the_settings_change(tmp_path, monkeypatch):
    """A rerun pre-trains nothing it has; changed fine-tuning settings re-fine-tune the saved models."""
    calls = {"pretrain": [], "finetune": []}

    def fake_pretrain(recipe, budget, config, paths, scale, out_dir):
        calls["pretrain"].append(out_dir)
        return out_dir + "/discriminator", budget, 1.0

    def fake_finetune(model_dir, task_dir, config, scale, out_dir, linear_probe=False, seed=None):
        if not linear_probe:
            calls["finetune"].append((model_dir, config.seeds))
        return result(0.7)

    stub_stages(monkeypatch, fake_pretrain, fake_finetune)

    def run(**kw):
        return cp.main(cp.compare_args(recipes="random,mlm", tasks=SST2, budget_fractions="1",
                                       out_dir=str(tmp_path), results_md="", ft_workers=1, **kw))

    assert [r["run"] for r in run()] == ["random@0", "mlm@1"]
    assert len(calls["pretrain"]) == 1 and len(calls["finetune"]) == 2
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert [r["model_dir"] for r in saved] == ["runs/random@0/discriminator", "runs/mlm@1/discriminator"]
    run()  # everything cached
    assert len(calls["pretrain"]) == 1 and len(calls["finetune"]) == 2
    rows = run(seeds="4,5")  # new fine-tuning settings: same models, fine-tuned again
    assert len(calls["pretrain"]) == 1 and calls["finetune"][2:] == [
        (str(tmp_path / "runs" / "random@0" / "discriminator"), "4,5"),
        (str(tmp_path / "runs" / "mlm@1" / "discriminator"), "4,5")]
    assert all(r["finetune"]["seeds"] == "4,5" for r in rows)
    # the same out_dir reached from another folder, relatively: the cached models are found there
    monkeypatch.chdir(tmp_path.parent)
    cp.main(cp.compare_args(recipes="random,mlm", tasks=SST2, budget_fractions="1", out_dir=tmp_path.name,
                            results_md="", ft_workers=1, seeds="6"))
    assert len(calls["pretrain"]) == 1 and calls["finetune"][4:] == [
        (f"{tmp_path.name}/runs/random@0/discriminator", "6"), (f"{tmp_path.name}/runs/mlm@1/discriminator", "6")]
    # another pre-training seed or budget is another model: pre-trained again, never the cached one
    rows = run(seeds="4,5", seed=43)
    assert len(calls["pretrain"]) == 2 and [r["identity"].get("seed") for r in rows] == [None, 43]
    run(seeds="4,5", seed=43, budget_scale=2)
    assert len(calls["pretrain"]) == 3
    run(seeds="4,5", seed=43, budget_scale=2)  # and that one is cached in turn
    assert len(calls["pretrain"]) == 3


def test_features_of_another_corpus_are_not_reused(tmp_path):
    config = cp.compare_args(train_input="a.txt", valid_input="b.txt", out_dir=str(tmp_path)).resolved()
    cp.check_data_identity(config, cp.SCALES["tiny"])
    cp.check_data_identity(config, cp.SCALES["tiny"])  # the same corpus: fine
    other = cp.compare_args(train_input="c.txt", valid_input="b.txt", out_dir=str(tmp_path)).resolved()
    with pytest.raises(cp.SpanElectraError, match=r"out_dir: .* another corpus .*train_input .*a\.txt.* -> .*c\.txt"):
        cp.check_data_identity(other, cp.SCALES["tiny"])
    with pytest.raises(cp.SpanElectraError, match="vocab_size 8000 -> 30522"):
        cp.check_data_identity(config, cp.SCALES["gpu"])


def test_compare_out_dir_built_packed_refuses_an_unpacked_run(tmp_path):
    """data.json recorded pack_across_documents only when set, and only the new run's keys were compared: a run
    without the flag silently reused the packed features and every cached row."""
    scale = {"vocab_size": 8000}
    config = SimpleNamespace(out_dir=str(tmp_path), train_input="t.txt", valid_input="v.txt",
                                   pack_across_documents=True)
    cp.check_data_identity(config, scale)  # records it
    cp.check_data_identity(config, scale)  # the same: fine
    config.pack_across_documents = False
    with pytest.raises(SpanElectraError, match="pack_across_documents True -> False"):
        cp.check_data_identity(config, scale)
    os.remove(tmp_path / cp.DATA_FILE)
    cp.check_data_identity(config, scale)  # built unpacked (no key recorded), run unpacked: fine
    config.pack_across_documents = True
    with pytest.raises(SpanElectraError, match="pack_across_documents False -> True"):
        cp.check_data_identity(config, scale)


def test_pretraining_only_without_tasks(tmp_path, monkeypatch):
    """gpu_vi's default: no task folder given, so the rows are pre-trained and tabled, nothing fine-tuned."""
    stub_stages(monkeypatch, lambda recipe, budget, config, paths, scale, out_dir: (out_dir + "/d", budget, 1.0))
    md = tmp_path / "RESULTS.md"
    rows = cp.main(cp.compare_args(scale="gpu_vi", recipes="random,mlm", tasks="", out_dir=str(tmp_path / "c"),
                                   results_md=str(md), ft_workers=1, device="cpu"))
    assert [r["run"] for r in rows] == ["random@0", "mlm@1"] and not any("metrics" in r for r in rows)
    text = md.read_text(encoding="utf-8")
    assert "| MLM only (BERT-style) | 2.8 |  | 0.0 min |  |  |\n" in text and "no task was fine-tuned" in text


def test_a_call_without_tasks_keeps_the_rows_fine_tuning(tmp_path, monkeypatch, caplog):
    """Pre-training more rows with --tasks '' leaves the fine-tuning results of rows already fine-tuned, so a
    later call with the tasks fine-tunes only the new rows."""
    tuned = []
    def fake_finetune(model_dir, task_dir, config, scale, out_dir, linear_probe=False, seed=None):
        tuned.append(out_dir.split("/runs/")[1].split("/")[0])
        return result(0.7)
    stub_stages(monkeypatch, lambda recipe, budget, config, paths, scale, out_dir: (out_dir + "/d", budget, 1.0),
                fake_finetune)
    def run(recipes, tasks):
        return cp.main(cp.compare_args(recipes=recipes, tasks=tasks, budget_fractions="1", out_dir=str(tmp_path),
                                       results_md="", ft_workers=1, seeds="1"))
    run("random,mlm", SST2)
    assert sorted(set(tuned)) == ["mlm@1", "random@0"]
    tuned.clear()
    caplog.clear()
    with caplog.at_level("INFO", logger="span_electra"):
        rows = run("random,mlm,electra", "")
    assert tuned == [] and "fine-tune" not in caplog.text  # nothing fine-tuned, nor estimated
    assert [r["metrics"]["SST-2"]["results"]["eval_accuracy"] for r in rows[:2]] == [0.7, 0.7]
    assert "metrics" not in rows[2]
    assert "| ELECTRA" in (tmp_path / "compare.md").read_text()  # the table shows the new row's pre-training

    def stop_at_se_joint(recipe, budget, config, paths, scale, out_dir):
        if "se_joint" in out_dir:
            raise KeyboardInterrupt
        return out_dir + "/d", budget, 1.0
    monkeypatch.setattr(cp, "pretrain", stop_at_se_joint)
    (tmp_path / "compare.md").unlink()
    with pytest.raises(KeyboardInterrupt):
        run("random,mlm,electra,se_joint", "")
    assert "| ELECTRA" in (tmp_path / "compare.md").read_text()  # written after each row, not only at the end
    run("random,mlm,electra", SST2)
    assert sorted(set(tuned)) == ["electra@1"]


def test_a_failed_fine_tuning_keeps_the_rows_finished_before_it(tmp_path, monkeypatch):
    """Each row is saved as soon as its fine-tuning ends: a failure in a later row loses nothing before it."""
    def fake_finetune(model_dir, task_dir, config, scale, out_dir, linear_probe=False, seed=None):
        if "mlm" in model_dir:
            raise RuntimeError("fine-tuning failed")
        return result(0.7)
    stub_stages(monkeypatch, lambda recipe, budget, config, paths, scale, out_dir: (out_dir + "/d", budget, 1.0),
                fake_finetune)
    with pytest.raises(RuntimeError):
        cp.main(cp.compare_args(recipes="random,mlm", tasks=SST2, budget_fractions="1", out_dir=str(tmp_path),
                                results_md="", ft_workers=1))
    rows = json.loads((tmp_path / "compare.json").read_text())
    assert [r["run"] for r in rows] == ["random@0", "mlm@1"]  # both pre-trained
    assert rows[0]["metrics"]["SST-2"]["results"]["eval_accuracy"] == 0.7 and "finetune" not in rows[1]
    # and the table of what finished is there: the summary of a call that stopped early
    table = (tmp_path / "compare.md").read_text(encoding="utf-8").splitlines()
    assert len(table) == 3 and table[2].startswith("| random init |") and "0.700" in table[2]


def test_gpu_scale_defaults_budget_scale_and_time_estimates(monkeypatch, tmp_path, caplog):
    """--scale gpu: ELECTRA-Small on English Wikipedia, bf16 + compile, its recipes; --budget_scale
    multiplies the budget; every stage's time is estimated in the log before anything runs."""
    config = cp.compare_args(scale="gpu").resolved()
    assert config.train_input.endswith("enwiki.train.txt.xz") and config.bf16 and config.compile
    assert config.recipes == "random,mlm,electra,se_joint" and config.budget_fractions == "1"
    budgets = []

    def fake_pretrain(recipe, budget, config, paths, scale, out_dir):
        budgets.append(budget)
        return out_dir + "/discriminator", budget, 1.0
    stub_stages(monkeypatch, fake_pretrain, lambda *args, **kwargs: result(0.7))
    caplog.set_level("INFO", logger="span_electra")
    cp.main(cp.compare_args(scale="gpu", recipes="random,electra", tasks=str(REPO / "data/glue/MRPC"), seeds="1",
                            out_dir=str(tmp_path), results_md="", budget_scale=2.0, ft_workers=1, device="cpu"))
    assert budgets == [2 * 5500 * 1e9]
    estimates = [r.getMessage() for r in caplog.records if r.getMessage().startswith("estimate:")]
    # on the CPU it runs on: budget / the 2-core CPU's 60 GFLOP/s, plus the step's compilation
    assert any("pre-train electra@1" in m and m.split()[-2] == f"{11e12 / 60e9 + 35:.0f}" for m in estimates)
    # fine-tuning MRPC's 1,000 bundled examples in one process: 2 epochs of 32 steps at 32,000 padded tokens/s
    # (batches of 32 pairs, 125 tokens wide on average) and of the 408 dev examples at 2,000/s, 2 s of loading;
    # the probe's pass over all 1,408 examples, loaded too
    assert cp.padded_width(str(REPO / "data/glue/MRPC"), 4000) == 125.0
    ft_cpu = 2 * (32 / (32000 / (32 * 125)) + 408 / 2000) + 2 + 1408 / 2000 + 2
    assert any("fine-tune random@0" in m and m.split()[-2] == f"{ft_cpu:.0f}" for m in estimates)
    assert "everything still to run" in estimates[-2] and "2 CPU cores" in estimates[-2]
    # and on the H100 the scale is sized for: the joint step's 45 TFLOP/s, 22 fine-tuning steps/s (and
    # the data, where ../shared/data holds the corpus)
    ft_h100 = 2 * (32 / 22 + 408 / 4000) + 14 + 1408 / 4000 + 14
    h100_seconds = cp.prep_seconds(config, cp.SCALES["gpu"], "cuda") + (11e12 / 45e12 + 55) + 2 * ft_h100
    assert estimates[-1].endswith(f"one H100, which --scale gpu is sized for: {h100_seconds / 60:.1f} min")


def test_prep_estimate_counts_plain_text_and_segmentation(tmp_path):
    """The vocabulary and features estimate reads the corpus's plain-text size (a compressed file at a
    typical ratio) at the device's speed, slower where pyvi segments it first."""
    corpus = tmp_path / "corpus.txt.xz"
    corpus.write_bytes(b"x" * 1000)
    config = cp.compare_args(scale="gpu", train_input=str(corpus)).resolved()
    assert cp.plain_bytes(str(corpus)) == 4000 and cp.plain_bytes(str(tmp_path)) == 4000
    (tmp_path / "more.txt").write_text("y" * 10)
    assert cp.plain_bytes(str(tmp_path / "*.t*")) == 4010 and cp.plain_bytes(str(tmp_path / "none")) == 0
    assert cp.prep_seconds(config, cp.SCALES["gpu"], "cuda") == pytest.approx(4000 / 5.4e6)
    assert cp.prep_seconds(config, cp.SCALES["gpu_vi"], "cpu") == pytest.approx(4000 / 4.7e5)
    assert cp.prep_seconds(config, cp.SCALES["gpu_vi"], "cuda") == pytest.approx(4000 / (4 * 4.7e5))


def test_estimates_overlap_fine_tuning_with_the_next_pre_training(tmp_path):
    """In worker processes, a row's fine-tuning runs beside the next pre-training: only the last one
    adds to the total; the longest job (its slowest task, one seed) sets a row's time."""
    config = cp.compare_args(scale="gpu", tasks=str(REPO / "data/glue/MRPC"), seeds="1,2", ft_workers=8).resolved()
    scale = cp.SCALES["gpu"]
    settings = cp.finetune_settings(config, scale, [config.tasks])
    plan = [("random@0", None, 0.0), ("mlm@1", cp.RECIPES["mlm"][1], 1.0), ("se_joint@1", cp.RECIPES["se_joint"][1], 1.0)]
    stages = cp.estimate_seconds(plan, {}, settings, config, "cuda", 9e15)
    assert [(name, beside) for name, _, beside in stages] == [
        ("fine-tune random@0", True), ("pre-train mlm@1", False), ("fine-tune mlm@1", True),
        ("pre-train se_joint@1", False), ("fine-tune se_joint@1", True)]
    seconds = dict((name, s) for name, s, _ in stages)
    # the pool takes each row when it is pre-trained and the pool is free; the last one ends the run
    ft, mlm, se = seconds["fine-tune mlm@1"], seconds["pre-train mlm@1"], seconds["pre-train se_joint@1"]
    assert cp.wall_seconds(stages) == pytest.approx(max(max(ft, mlm) + ft, mlm + se) + ft)
    # a job per seed (and one per probe): one seed's time, its dev evaluations and loading
    assert seconds["fine-tune mlm@1"] == pytest.approx(2 * (32 / 22 + 408 / 4000) + 14)
    assert seconds["pre-train mlm@1"] == pytest.approx(9e15 / 96e12 + 55)  # the first recipe compiles its step
    assert seconds["pre-train se_joint@1"] == pytest.approx(9e15 / 45e12 + 10)  # compiled ahead: loaded


def test_wall_time_waits_for_a_pool_that_fine_tunes_longer_than_the_next_pre_training():
    """Fine-tuning longer than the next pre-training queues in the pool: the rows' fine-tunings add."""
    stages = [("fine-tune random@0", 200.0, True), ("pre-train mlm@0.5", 10.0, False),
              ("fine-tune mlm@0.5", 200.0, True), ("pre-train mlm@1", 20.0, False), ("fine-tune mlm@1", 200.0, True)]
    assert cp.wall_seconds(stages) == 600.0
    assert cp.wall_seconds([(name, s, False) for name, s, _ in stages]) == 630.0


def test_on_the_cpu_fine_tuning_workers_share_the_cores_so_every_stage_adds(tmp_path):
    """With workers on the CPU, fine-tuning and pre-training share its cores: the estimate adds them, each
    row's fine-tuning at one process's pace (the session 18 run took 48 min against the 3.9 min of an
    estimate that ran fine-tuning beside for free)."""
    config = cp.compare_args(scale="tiny", tasks=str(REPO / "data/glue/MRPC"), seeds="1,2", ft_workers=2).resolved()
    settings = cp.finetune_settings(config, cp.SCALES["tiny"], [config.tasks])
    plan = [("random@0", None, 0.0), ("mlm@1", cp.RECIPES["mlm"][1], 1.0)]
    stages = cp.estimate_seconds(plan, {}, settings, config, "cpu", 6e12)
    assert [beside for *_, beside in stages] == [False, False, False]
    assert stages[0][1] == cp.finetune_seconds(settings, cp.DEVICE_SPEEDS["cpu"], 1)
    assert cp.wall_seconds(stages) == pytest.approx(sum(s for _, s, _ in stages))


def test_the_cpu_fine_tuning_estimate_follows_the_padded_width(tmp_path):
    """On the CPU a fine-tuning step takes time in proportion to its batch's width: the longest example,
    rounded up to 32 tokens, 128 at most; the width is estimated from the text's characters."""
    task = tmp_path / "task"
    task.mkdir()
    for split in ("train", "dev"):
        rows = [f"{'word ' * (4 if i % 2 else 40)}\t{i % 2}" for i in range(64)]  # 21 or 201 characters
        (task / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    # every batch of 32 holds a long example: 200 / 3.6 + 2 = 57.6 tokens, padded to 64
    assert cp.padded_width(str(task), 0) == 64.0
    settings = {"tasks": [str(task)], "seeds": "1", "epochs": 1, "max_train_examples": 0}
    speeds = dict(cp.DEVICE_SPEEDS["cpu"], ft_job_seconds=0, ft_eval_examples_per_second=float("inf"))
    one = cp.finetune_seconds(settings, speeds, 1)  # 2 steps of 32 x 64 padded tokens (the probe: no time here)
    assert one == pytest.approx(2 * 32 * 64 / 32000)


def test_fine_tuning_workers_and_the_pre_training_share_the_cpu_threads():
    """torch's threads per process: the workers and (on the CPU) the pre-training split the cores, at
    least one each; on a GPU the comparison's own process keeps its threads (None)."""
    assert cp.cpu_threads(2, cores=2, on_cpu=True) == (1, 1)
    assert cp.cpu_threads(2, cores=16, on_cpu=True) == (5, 6)
    assert cp.cpu_threads(8, cores=16, on_cpu=False) == (2, None)
    assert cp.cpu_threads(8, cores=4, on_cpu=False) == (1, None)
    assert 1 <= cp.available_cores() <= (os.cpu_count() or 1)


def test_estimate_pre_trains_again_a_row_cached_with_other_settings():
    """A cached row counts as done only when it was pre-trained as the run asks now (the loop's rule):
    one cached at another seed is estimated as pre-trained and fine-tuned again."""
    config = cp.compare_args(scale="gpu", tasks=str(REPO / "data/glue/MRPC"), ft_workers=1).resolved()
    scale = cp.SCALES["gpu"]
    settings = cp.finetune_settings(config, scale, [config.tasks])
    plan = [("mlm@1", cp.RECIPES["mlm"][1], 1.0, 42), ("se_joint@1", cp.RECIPES["se_joint"][1], 1.0, 42)]
    same = cp.row_identity("mlm", 1.0, dataclasses.replace(config, seed=42), scale, 9e15)
    rows = [{"run": "mlm@1", "identity": same, "finetune": settings},
            {"run": "se_joint@1", "identity": dict(same, seed=7), "finetune": settings}]
    cached = cp.runs_cached(plan, rows, config, scale, 9e15)
    assert list(cached) == ["mlm@1"]
    assert cp.recipes_to_pretrain(plan, cached) == ["se_joint"]
    stages = [name for name, *_ in cp.estimate_seconds(plan, cached, settings, config, "cuda", 9e15)]
    assert stages == ["pre-train se_joint@1", "fine-tune se_joint@1"]


class InlinePool:
    """A pool that runs each job when it is submitted (the order of events is then the loop's)."""

    def submit(self, fn, *args):
        return cp.finished_future(fn(*args))


def test_each_recipe_compiles_while_the_one_before_it_pre_trains(tmp_path, monkeypatch):
    """With a pool and --compile, recipe k+1's step is compiled ahead (one scratch step, its folder
    removed) as recipe k starts pre-training; the first recipe and cached ones are not warmed."""
    events = []

    def fake_pretrain(recipe, budget, config, paths, scale, out_dir):
        warm = "/warm/" in out_dir
        events.append(("warm " if warm else "pretrain ") + out_dir.split("/")[-1])
        if warm:
            assert budget == 1.0 and config.compile
            (tmp_path / "warm" / out_dir.split("/")[-1]).mkdir(parents=True)  # what a scratch run leaves
        return out_dir + "/discriminator", budget, 1.0

    @contextlib.contextmanager
    def inline_pool(config):
        yield InlinePool()
    stub_stages(monkeypatch, fake_pretrain, lambda *args, **kwargs: result(0.7))
    monkeypatch.setattr(cp, "finetune_pool", inline_pool)
    monkeypatch.setattr(cp.torch._inductor.config, "compile_threads", cp.torch._inductor.config.compile_threads)

    def run(recipes):
        cp.main(cp.compare_args(recipes=recipes, tasks="", budget_fractions="0.5,1", out_dir=str(tmp_path),
                                results_md="", compile=True))
    io_utils.setup_logging()  # as main does first (run alone, the test saw the level main itself set)
    level = cp.logger.level
    run("random,mlm,electra")
    assert cp.logger.level == level  # a warm-up quietens its process's log only while it runs
    assert events == ["warm electra", "pretrain mlm@0.5", "pretrain mlm@1", "pretrain electra@0.5",
                      "pretrain electra@1"]
    assert not list((tmp_path / "warm").iterdir())  # the scratch runs are gone
    events.clear()
    run("random,mlm,electra,se_joint")  # mlm and electra cached: se_joint is the first to pre-train
    assert events == ["pretrain se_joint@0.5", "pretrain se_joint@1"]


def test_pretraining_record_reads_tokens_and_curves(tmp_path):
    (tmp_path / "gen").mkdir()
    rows = [{"step": 50, "loss": 1.0, "tokens_per_sec": 10.0}, {"step": 100, "loss": 0.9, "tokens_per_sec": 30.0},
            {"step": 150, "loss": 0.9, "tokens_per_sec": 20.0}, {"step": 150, "split": "valid", "mlm_accuracy": 0.1},
            {"event": "done", "step": 150}]
    (tmp_path / "gen" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 30, "loss": 1.0}) + "\n" + json.dumps(
        {"step": 30, "split": "valid", "disc_auc": 0.6, "rtd_loss": 0.39, "rtd_base_loss": 0.39}))
    record = cp.pretraining_record(str(tmp_path), batch=4)
    assert record["tokens"] == (150 + 30) * 4 * 128
    assert record["curves"] == {"gen:mlm_accuracy": [[150, 0.1]], ".:disc_auc": [[30, 0.6]]}
    assert record["tokens_per_sec"] == {"gen": 20.0}
    assert record["discriminator_at_chance"] is False  # AUC 0.6: learning, whatever its loss
    assert "seconds" not in record  # closing rows without run_seconds (a run of an earlier version): the clock's
    rows[-1]["run_seconds"] = 12.5  # the generator's and the discriminator's runs add
    (tmp_path / "gen" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write("\n" + json.dumps({"event": "done", "step": 30, "run_seconds": 30.0}))
    assert cp.pretraining_record(str(tmp_path), batch=4)["seconds"] == 42.5


def test_the_rate_alone_leaves_out_windows_shared_with_fine_tuning(tmp_path):
    """Log windows (row to row) that overlap a fine-tuning job's [start, end] are left out, and the
    first (compilation); a run with nothing beside it keeps every later window."""
    run = tmp_path / "runs" / "se_joint@1"
    run.mkdir(parents=True)
    logged = [(100, 1.0, 50.0), (200, 2.0, 90.0), (300, 3.0, 60.0), (400, 4.0, 100.0), (500, 5.0, 110.0)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "time": t, "tokens_per_sec": v})
                                                 for s, t, v in logged) + "\n" + json.dumps(
        {"step": 500, "split": "valid", "time": 5.5, "disc_auc": 0.6}) + "\n")
    assert cp.rates_alone(str(run), busy=[[2.5, 2.9]]) == {".": 100.0}  # 90, 100, 110: the window of 60 was shared
    assert cp.rates_alone(str(run), busy=[[2.5, 3.2]]) == {".": 110.0}  # 90, 110: and the next one too
    assert cp.rates_alone(str(run), busy=[]) == {".": 100.0}  # 60, 90, 100, 110: the upper middle
    rows = [{"run": "mlm@1", "ft_window": [2.5, 2.9]}, {"run": "se_joint@1", "tokens_per_sec": {".": 90.0}}]
    cp.note_rates_alone(cp.compare_args(out_dir=str(tmp_path)), rows)
    assert rows[1]["tokens_per_sec_alone"] == {".": 100.0} and "tokens_per_sec_alone" not in rows[0]


def test_vietnamese_gpu_scale_segments_its_corpus():
    config = cp.compare_args(scale="gpu_vi").resolved()
    assert config.train_input.endswith("viwiki-large.train.txt.xz") and config.tasks == ""
    assert cp.SCALES["gpu_vi"]["word_segmenter"] == "pyvi"
    assert cp.SCALES["gpu_vi"]["budget_steps"] * 2 == cp.SCALES["gpu"]["budget_steps"]
    assert cp.compare_args(scale="gpu_vi", tasks="vi_task").resolved().tasks == "vi_task"


def task_slice(name, tmp_path, rows):
    """The first rows of each split of a bundled GLUE task (header kept), as a task folder in tmp_path."""
    task = tmp_path / name
    task.mkdir()
    for split in ("train", "dev"):
        lines = (REPO / "data/glue" / name / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[:rows + 1]
        (task / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(task)


def test_parallel_fine_tuning_gives_the_serial_results(bpe_feat, tmp_path):
    """ft_workers > 1 runs the fine-tuning jobs in spawned processes, a job per seed; each row gets the
    same dev figures (every seed's fine-tuning, their median, and the linear probe) as the one-process
    path, which runs the seeds one after another on the same training subset."""
    scale = dict(cp.SCALES["tiny"], ft_epochs=1)  # this test is about the processes
    paths = {"features": str(bpe_feat[0]), "vocab": bpe_feat[1]["vocab_size"]}
    model_dir = cp.random_model(paths, scale, str(tmp_path / "random"))
    task = task_slice("MRPC", tmp_path, 32)
    settings = {}
    figures = []
    threads = torch.get_num_threads()
    # the serial path on a worker's one thread: 2 threads sum in another order on some CPUs (losses 1e-7 apart)
    torch.set_num_threads(1)
    try:
        for workers in (1, 2):
            config = cp.compare_args(out_dir=str(tmp_path / f"w{workers}"), seeds="1,2", ft_max_train_examples=16,
                                     device="cpu", ft_workers=workers).resolved()
            rows = [{"run": f"r{i}@0", "model_dir": model_dir} for i in range(2)]
            threads_before = torch.get_num_threads()
            with cp.finetune_pool(config) as pool:
                assert (pool is None) == (workers == 1)
                if pool is not None:  # the processes share the cores instead of each taking all of them
                    per_worker, own = cp.cpu_threads(workers, cp.available_cores(), on_cpu=True)
                    assert pool.submit(torch.get_num_threads).result() == per_worker
                    assert torch.get_num_threads() == own
                for started in [cp.start_finetuning(pool, row, [task], config, scale) for row in rows]:
                    cp.finish_finetuning(started, settings)
            figures.append([(r["metrics"]["MRPC"]["results"]["eval_f1"], r["probe"]["MRPC"]["results"]["eval_f1"],
                             [(run["seed"], run["eval_f1"], run["train_loss"]) for run in r["metrics"]["MRPC"]["results"]["per_seed"]])
                            for r in rows])
            assert all(r["finetune"] is settings and r["ft_seconds"] > 0 for r in rows)
            assert torch.get_num_threads() == threads_before
    finally:
        torch.set_num_threads(threads)
    assert figures[0] == figures[1] and [seed for seed, _, _ in figures[0][0][2]] == [1, 2]
    assert (tmp_path / "w2" / "runs" / "r1@0" / "probe_MRPC" / "results.json").is_file()
    assert (tmp_path / "w2" / "runs" / "r1@0" / "ft_MRPC" / "seed_2" / "results.json").is_file()


def test_pretraining_seeds_each_pretrain_once_and_the_table_pools_them(tmp_path, monkeypatch):
    """--pretrain_seeds pre-trains each recipe once per seed (random init once); the table pools a
    recipe's seeds: every fine-tuning run of every seed in one median [min, max], one disc_auc and MLM
    accuracy per seed; a rerun with one more seed pre-trains only that one."""
    pretrained = []

    def fake_pretrain(recipe, budget, config, paths, scale, out_dir):
        pretrained.append((out_dir.split("/")[-1], config.seed))
        return out_dir + "/discriminator", budget, 1.0
    score = {"random@0": 0.5, "mlm@1": 0.7, "mlm@1#s43": 0.6, "mlm@1#s44": 0.8}

    def fake_finetune(model_dir, task_dir, config, scale, out_dir, linear_probe=False, seed=None):
        runs = [{"seed": s, "eval_accuracy": score[model_dir.split("/")[-2]] + 0.01 * s} for s in (1, 2)]
        return {**cp.finetune_SE.summarise(runs, ["eval_accuracy"]), "per_seed": runs}
    stub_stages(monkeypatch, fake_pretrain, fake_finetune)
    results_md = tmp_path / "RESULTS.md"

    def run(seeds):
        return cp.main(cp.compare_args(recipes="random,mlm", tasks=SST2, budget_fractions="1", out_dir=str(tmp_path),
                                       results_md=str(results_md), ft_workers=1, pretrain_seeds=seeds))
    rows = run("42,43")
    assert pretrained == [("mlm@1", 42), ("mlm@1#s43", 43)]
    assert [(r["run"], r.get("seed")) for r in rows] == [("random@0", None), ("mlm@1", 42), ("mlm@1#s43", 43)]
    table = results_md.read_text(encoding="utf-8")
    # mlm's four runs: 0.71, 0.72 (seed 42) and 0.61, 0.62 (seed 43)
    assert "| MLM only (BERT-style), 2 pre-training seeds |" in table and "0.665 [0.610, 0.720]" in table
    # the pooled 0.665 is a median no run reached: each pre-trained model's own median stands beside it
    assert "0.665 [0.610, 0.720]; by seed 0.715 / 0.615 |" in table
    assert "0.515 [0.510, 0.520] |" in table  # random init is pre-trained once: nothing to split
    assert "| random init |" in table and "0.515 [0.510, 0.520]" in table
    assert "pre-training seeds 42,43 (pooled)" in table
    run("42,43,44")
    assert pretrained[2:] == [("mlm@1#s44", 44)]
    assert "3 pre-training seeds" in results_md.read_text(encoding="utf-8")


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


def test_pretrain_seeds_must_be_distinct_integers():
    for bad in ("42,x", "42,42"):
        with pytest.raises(cp.SpanElectraError, match="pretrain_seeds"):
            cp.compare_args(pretrain_seeds=bad).validate()
    with pytest.raises(cp.SpanElectraError, match="^seeds: '1,x' is not a comma-separated list"):
        cp.compare_args(seeds="1,x").validate()  # fine-tuning seeds, checked before anything runs
    with pytest.raises(cp.SpanElectraError, match="^seeds: '2, 1,2' names a seed twice"):
        cp.compare_args(seeds="2, 1,2").validate()  # it would count twice in the median
    assert [cp.tokens_text(n) for n in (90_112_000, 40_960, 512)] == ["90.1M", "41k", "512"]
    with pytest.raises(cp.SpanElectraError, match="^device: 'gpu' is not one of auto, cpu, cuda"):
        cp.compare_args(device="gpu").validate()
    for bad in ("0,1", "2", "0.5,abc", "0.5,0.5"):  # each a fraction of the full budget, in (0, 1]
        with pytest.raises(cp.SpanElectraError, match="^budget_fractions: "):
            cp.compare_args(budget_fractions=bad).validate()
    assert cp.compare_args(budget_fractions="0.25, 1").fraction_list() == [0.25, 1.0]
    with pytest.raises(cp.SpanElectraError, match="^results_md: its folder .* does not exist"):
        cp.compare_args(results_md="/no/such/folder/RESULTS.md").validate()  # not after the whole run
    with pytest.raises(cp.SpanElectraError, match="^ft_max_train_examples: "):
        cp.compare_args(ft_max_train_examples=-5).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")
def test_a_gpu_scale_on_a_cpu_prints_its_estimates_then_asks_for_device_cpu(tmp_path, caplog):
    sample = REPO / "data" / "sample"
    caplog.set_level("INFO", logger="span_electra")
    with pytest.raises(cp.SpanElectraError, match="^device: --scale gpu is sized for one GPU .* --device cpu"):
        cp.main(cp.compare_args(scale="gpu", train_input=str(sample / "train.tokens"), tasks="",
                                valid_input=str(sample / "valid.tokens"), out_dir=str(tmp_path / "c")))
    assert "one H100, which --scale gpu is sized for" in caplog.text and not (tmp_path / "c").exists()


def test_a_stale_row_leaves_compare_json_before_its_run_is_trained_again(tmp_path, monkeypatch):
    """A run cached with other settings is pre-trained again over its folder: its old row leaves
    compare.json first, so a stop in between never leaves a row whose model is gone."""
    stub_stages(monkeypatch, lambda recipe, budget, config, paths, scale, out_dir: (out_dir + "/d", budget, 1.0),
                lambda *args, **kwargs: result(0.7))
    args = dict(recipes="mlm", tasks=SST2, budget_fractions="1", out_dir=str(tmp_path), results_md="", ft_workers=1)
    cp.main(cp.compare_args(budget_steps=40, **args))
    assert [r["run"] for r in json.loads((tmp_path / "compare.json").read_text())] == ["mlm@1"]

    def stopped(*args):
        assert json.loads((tmp_path / "compare.json").read_text()) == []  # gone before the retraining starts
        raise KeyboardInterrupt
    monkeypatch.setattr(cp, "pretrain", stopped)
    with pytest.raises(KeyboardInterrupt):
        cp.main(cp.compare_args(budget_steps=44, **args))
    assert json.loads((tmp_path / "compare.json").read_text()) == []


def test_rows_cached_before_the_mlm_and_two_stage_changes_are_pre_trained_again():
    """compare.json rows of the MLM baseline (started at the tiny generator's 0.05) and of two-stage (steps
    from the undercounted FLOPs) matched the identity the current code asks for, so a rerun in the same
    out_dir reused them; a joint row, pre-trained as before, is still reused."""
    config = cp.compare_args(scale="tiny", tasks="").resolved()
    scale = cp.SCALES["tiny"]
    plan = [(f"{name}@1", cp.RECIPES[name][1], 1.0, config.seed) for name in ("mlm", "se_two_stage", "se_joint")]
    now = {run: cp.row_identity(run.split("@")[0], 1.0, config, scale, 6e12) for run, *_ in plan}
    before = [{"run": run, "identity": {k: v for k, v in identity.items() if k != "revision"}}
              for run, identity in now.items()]
    assert list(cp.runs_cached(plan, before, config, scale, 6e12)) == ["se_joint@1"]
    assert now["mlm@1"]["revision"] == now["se_two_stage@1"]["revision"] == 2 and "revision" not in now["se_joint@1"]
    current = [{"run": run, "identity": identity} for run, identity in now.items()]
    assert list(cp.runs_cached(plan, current, config, scale, 6e12)) == [run for run, *_ in plan]


def test_a_cached_row_is_reused_only_with_its_own_seed_gen_fraction_and_precision():
    """A row pre-trained with another seed, (two-stage) another gen_fraction or in fp16 is trained again, not
    reused."""
    scale = {"model_size": "tiny", "batch": 4, "learning_rate": 1e-3}
    config = SimpleNamespace(seed=1, bf16=False, fp16=False, gen_fraction=0.3)
    ident = cp.row_identity("se_two_stage", 1.0, config, scale, 2e12)
    assert ident["gen_fraction"] == 0.3 and ident["seed"] == 1 and ident["budget_tflops"] == 2.0
    rows = [{"run": "se_two_stage@1", "identity": ident}, {"run": "mlm@1", "identity": {}}]
    assert cp.cached_row(list(rows), "se_two_stage@1", ident) is rows[0]
    assert "fp16" not in ident  # rows cached before the flag keep their identity
    for changed in (SimpleNamespace(seed=1, bf16=False, fp16=False, gen_fraction=0.5),
                    SimpleNamespace(seed=2, bf16=False, fp16=False, gen_fraction=0.3),
                    SimpleNamespace(seed=1, bf16=False, fp16=True, gen_fraction=0.3)):
        kept = list(rows)
        assert cp.cached_row(kept, "se_two_stage@1", cp.row_identity("se_two_stage", 1.0, changed, scale, 2e12)) is None
        assert kept == rows[1:]  # the stale row goes, the other run's stays


def test_wrong_paths_fail_before_anything_is_built(tmp_path, monkeypatch):
    """A missing corpus or task folder is a one-line error before out_dir is made, not after the data
    is built; once the features are built, the corpus is not needed again."""
    monkeypatch.setattr(cp, "prepare_data", lambda *args: pytest.fail("a wrong path reached the data stage"))
    sample = REPO / "data" / "sample"
    ok = dict(train_input=str(sample / "train.tokens"), valid_input=str(sample / "valid.tokens"), tasks=SST2,
              results_md="")
    out = tmp_path / "c"
    for bad, message in ((dict(train_input=str(tmp_path / "none.txt")), "^train_input: .*none.txt' does not exist"),
                         (dict(valid_input=str(tmp_path)), "^valid_input: the folder .* holds no text file"),
                         (dict(tasks=f"{SST2},{tmp_path}"), f"^tasks: '{tmp_path}' holds no train.tsv")):
        with pytest.raises(cp.SpanElectraError, match=message):
            cp.main(cp.compare_args(**{**ok, **bad, "out_dir": str(out)}))
        assert not out.exists()
    (out / "features").mkdir(parents=True)
    (out / "features" / "meta.json").write_text("{}")
    cp.check_inputs(cp.compare_args(**{**ok, "train_input": str(tmp_path / "gone.txt"), "out_dir": str(out)}))


def test_a_collapsed_discriminator_is_named_with_what_to_do(caplog):
    rows = [{"run": "electra@1", "seed": 42, "discriminator_at_chance": True},
            {"run": "se_joint@1", "seed": 42, "discriminator_at_chance": False}]
    caplog.set_level("WARNING", logger="span_electra")
    cp.warn_collapsed(rows, seeds=1)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "electra@1 (seed 42)" in message and "se_joint" not in message and "--pretrain_seeds" in message
    caplog.clear()
    cp.warn_collapsed(rows[1:], seeds=1)
    assert not caplog.records


def test_a_corpus_smaller_than_one_batch_stops_at_the_data_stage(bpe_tok, bpe_feat, tmp_path):
    """A corpus that gives fewer sequences than the scale's batch stops once its features are built, naming
    the corpus and what to do (the training's own message names a flag the comparison does not have)."""
    import shutil
    shutil.copytree(bpe_tok, tmp_path / "tok")
    shutil.copytree(bpe_feat[0], tmp_path / "features")
    config = cp.compare_args(scale="gpu_vi", train_input="corpus.txt", valid_input="", out_dir=str(tmp_path)).resolved()
    scale = dict(cp.SCALES["gpu_vi"], batch=bpe_feat[1]["num_sequences"]["train"] + 1)
    with pytest.raises(cp.SpanElectraError, match=r"^train_input: 'corpus.txt' gave \d+ training sequences .* fewer "
                                                  r"than one batch .* give more text"):
        cp.prepare_data(config, scale)
    assert sorted(os.listdir(tmp_path)) == []  # what was built goes: more text in the same file is read anew
    shutil.copytree(bpe_tok, tmp_path / "tok")
    shutil.copytree(bpe_feat[0], tmp_path / "features")
    assert cp.prepare_data(config, dict(cp.SCALES["gpu_vi"], batch=32))["vocab"] == bpe_feat[1]["vocab_size"]


def test_the_whole_comparison_runs_for_real_on_the_bundled_sample(tmp_path, monkeypatch):
    """Nothing stubbed: vocabulary, features, FLOP counting, pre-training each kind of recipe at a few
    steps' budget, fine-tuning and linear probes, the table, the JSON and RESULTS.md's section."""
    monkeypatch.setitem(cp.SCALES["tiny"], "eval_batches", 1)  # a valid point per step here: keep each one short
    monkeypatch.setitem(cp.SCALES["tiny"], "batch", 8)  # the pipeline is under test here, not the learning
    monkeypatch.setitem(cp.SCALES["tiny"], "ft_epochs", 1)
    md = tmp_path / "RESULTS.md"
    sst2 = task_slice("SST-2", tmp_path, 160)  # real sentences; the dev set cut to keep the test short
    rows = cp.main(cp.compare_args(
        train_input=str(REPO / "data/sample/train.tokens"), valid_input=str(REPO / "data/sample/valid.tokens"),
        tasks=sst2, recipes="random,mlm,se_two_stage,se_joint", budget_steps=4, budget_fractions="1", seeds="1",
        ft_max_train_examples=64, out_dir=str(tmp_path / "c"), results_md=str(md), ft_workers=1, device="cpu"))
    assert [r["run"] for r in rows] == ["random@0", "mlm@1", "se_two_stage@1", "se_joint@1"]
    budget = rows[1]["identity"]["budget_tflops"]
    assert budget > 0 and all(r["identity"]["budget_tflops"] == budget for r in rows[1:])
    # each recipe spends the budget to within half a step (a joint step is a quarter of it here)
    assert all(r["tflops"] == pytest.approx(budget, rel=0.13) for r in rows[1:]), [r["tflops"] for r in rows]
    for row in rows:
        for kind in ("metrics", "probe"):
            assert 0 <= row[kind]["SST-2"]["results"]["eval_accuracy"] <= 1
        assert os.path.isfile(tmp_path / "c" / row["model_dir"] / "config.json")
    assert json.loads((tmp_path / "c" / "compare.json").read_text())[-1]["run"] == "se_joint@1"
    assert "| SpanElectra joint |" in md.read_text(encoding="utf-8")
    # below the recipes, what always predicting SST-2's most frequent training label scores on its dev set
    baseline = rows[0]["metrics"]["SST-2"]["results"]["majority_baseline"]["eval_accuracy"]
    last = (tmp_path / "c" / "compare.md").read_text(encoding="utf-8").splitlines()[-1]
    assert last.startswith("| majority class (no learning) |") and f"| {baseline:.3f} |" in last


def test_the_published_section_needs_the_scales_own_settings_and_data(tmp_path, monkeypatch):
    """--results_md replaces the scale's published table only for the scale's settings, read as values (seeds
    '1, 2, 3', the budget named explicitly) and on the same data (a copy counts, a cut-down file does not);
    anything else goes to '<scale>-custom'. The reproduce command quotes what the shell would split."""
    corpus = tmp_path / "shared"
    corpus.mkdir()
    for name in ("wiki.train.tokens", "wiki.valid.tokens"):
        (corpus / name).write_text("some text\n" * 50, encoding="utf-8")
    monkeypatch.setitem(cp.SCALES["tiny"], "corpus", (str(corpus / "wiki.train.tokens"), str(corpus / "wiki.valid.tokens")))
    copy, cut = tmp_path / "copy", tmp_path / "cut"
    shutil.copytree(corpus, copy)
    shutil.copytree(corpus, cut)
    (cut / "wiki.train.tokens").write_text("some text\n" * 5, encoding="utf-8")
    name = lambda **kw: cp.section_name(cp.compare_args(**kw).resolved())  # noqa: E731
    assert name() == "tiny"
    assert name(seeds="1, 2, 3", budget_steps=300, pretrain_seeds="42", ft_max_train_examples=8000) == "tiny"
    assert name(train_input=str(copy / "wiki.train.tokens"), valid_input=str(copy / "wiki.valid.tokens")) == "tiny"
    assert name(train_input=str(cut / "wiki.train.tokens"), valid_input=str(cut / "wiki.valid.tokens")) == "tiny-custom"
    assert name(budget_steps=150) == name(seeds="1") == name(tasks="") == "tiny-custom"
    assert name(scale="gpu_vi", tasks=str(tmp_path / "my_vi_task")) == "gpu_vi"  # its tasks are whatever is given
    assert "--tasks ''" in cp.command_line(cp.compare_args(tasks="").resolved(), str(tmp_path / "R.md"))


VOCAB, SEQ, ROWS = 1000, 128, 2


def test_fused_attention_is_counted():
    """SDPA without dropout takes a fused CPU kernel FlopCounterMode has no formula for (it counted 0)."""
    batch, heads, dim = 2, 2, 32
    q = torch.randn(batch, heads, SEQ, dim)
    expected = 2 * 2 * batch * heads * SEQ * SEQ * dim  # QK^T and PV
    assert cp.count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == expected


@pytest.mark.parametrize("name", ["se_two_stage", "se_two_stage_no_heads"])
def test_two_stage_step_is_discriminator_plus_the_frozen_generators_sampling_forward(name):
    recipe = cp.RECIPES[name][1]
    sizes = dict(model_size="tiny", vocab=VOCAB, seq=SEQ)
    batch = cp.synthetic_batch("two_stage", recipe, VOCAB, SEQ, ROWS)
    gen_cfg, disc_cfg = electra_configs("tiny", VOCAB, SEQ)
    generator = SpanElectraGenerator(gen_cfg, recipe["use_sbo"])
    generator_forward = cp.count_flops(lambda: generator.sampling_logits(**batch))  # all that sampling needs
    if recipe["use_sbo"]:  # the frozen generator's span-boundary head over the vocabulary fed nothing: not run
        slots = batch["masked_lm_positions"].shape[1]
        vocab_projection = 2 * ROWS * slots * gen_cfg.embedding_size * VOCAB
        assert cp.count_flops(lambda: generator(**batch)) > generator_forward + vocab_projection
    with torch.no_grad():
        corrupted, replaced = corrupt(batch, generator(**batch))
    discriminator = SpanElectraDiscriminator(disc_cfg, True, recipe["use_span_head"])
    discriminator_step = cp.count_flops(
        lambda: discriminator(**discriminator_inputs(batch, corrupted, replaced))["loss"].backward())
    # the generator's attention alone: 2 layers x (QK^T + PV) of 64 dimensions
    attention = gen_cfg.num_hidden_layers * 2 * 2 * ROWS * SEQ * SEQ * gen_cfg.hidden_size
    assert generator_forward > attention > 0
    assert cp.counted_flops("two_stage", recipe, sizes, ROWS) == discriminator_step + generator_forward


def test_joint_and_mlm_counts_keep_their_attention():
    """The training-mode steps already counted their attention (dropout sends SDPA to the math path):
    a joint step is still the generator's forward and backward plus the discriminator's."""
    recipe = cp.RECIPES["se_joint"][1]
    sizes = dict(model_size="tiny", vocab=VOCAB, seq=SEQ)
    generator_step = cp.counted_flops("generator", recipe, sizes, ROWS)
    gen_cfg, _ = electra_configs("tiny", VOCAB, SEQ)
    attention_fwd_bwd = 3 * gen_cfg.num_hidden_layers * 2 * 2 * ROWS * SEQ * SEQ * gen_cfg.hidden_size
    generator = SpanElectraGenerator(gen_cfg, True)
    batch = cp.synthetic_batch("generator", recipe, VOCAB, SEQ, ROWS)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):  # the fused kernel, no dropout
        generator.eval()
        fused_forward = cp.count_flops(lambda: generator(**batch))
    generator.train()
    assert generator_step == pytest.approx(3 * fused_forward, rel=0.01)  # forward + backward (2x)
    assert generator_step > attention_fwd_bwd


def test_the_mlm_baseline_starts_as_the_discriminators_do(tmp_path, monkeypatch):
    """The MLM baseline is discriminator-sized and fine-tuned beside the discriminators: it takes their
    initial weight std (0.02), not the tiny generator preset's 0.05 (made for a 64-wide generator)."""
    class Started(Exception):
        pass

    def started(config):
        raise Started(config)
    monkeypatch.setattr(cp.trainMLM_SpanElectra, "main", started)
    scale = cp.SCALES["tiny"]
    config = cp.compare_args(tasks="", out_dir=str(tmp_path), device="cpu").resolved()
    with pytest.raises(Started) as run:
        cp.pretrain(cp.RECIPES["mlm"][1], 1e12, config, {"features": str(tmp_path), "vocab": VOCAB}, scale,
                    str(tmp_path / "mlm"))
    gen_cfg, disc_cfg = electra_configs("tiny", VOCAB, SEQ, **run.value.args[0].model_overrides())
    assert gen_cfg.initializer_range == disc_cfg.initializer_range == 0.02
    assert (gen_cfg.hidden_size, gen_cfg.intermediate_size) == (disc_cfg.hidden_size, disc_cfg.intermediate_size)
    assert electra_configs("tiny", VOCAB, SEQ)[0].initializer_range == 0.05  # the preset's own generator keeps it


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
    config = SimpleNamespace(seed=1, device="cpu", bf16=False, fp16=False, compile=False, gen_fraction=0.3)
    scale = {"model_size": "tiny", "batch": 4, "learning_rate": 1e-3}
    _, used, _ = cp.pretrain(cp.RECIPES[name][1], budget, config, {"features": "f", "vocab": 100}, scale,
                             str(tmp_path / name))
    assert fake_training == steps and used == spent


def saved_weights(model_dir):
    from safetensors.torch import load_file
    return load_file(os.path.join(model_dir, "model.safetensors"))


@pytest.mark.parametrize("name", ["mlm", "se_two_stage"])
def test_a_run_a_stopped_comparison_left_goes_on_from_its_checkpoint(name, bpe_feat, tmp_path, monkeypatch, caplog):
    """A comparison stopped inside a pre-training run (past one of its checkpoints, a quarter of the run
    apart) continues that run when called again: the same valid curve and weights as a run never stopped
    (two-stage: stopped in the discriminator, the generator's finished run is taken as it is). With
    another budget the folder's run is trained again from the start."""
    scale = dict(cp.SCALES["tiny"], batch=4, eval_batches=1)
    config = cp.compare_args(tasks="", out_dir=str(tmp_path), device="cpu", seed=3).resolved()
    paths = {"features": str(bpe_feat[0]), "vocab": bpe_feat[1]["vocab_size"]}
    recipe = cp.RECIPES[name][1]
    monkeypatch.setattr(cp, "step_flops", lambda kind, recipe, sizes, batch: 1.0)
    budget = 8.0  # 8 steps (two-stage: 2 of the generator, then 6), a checkpoint every 2

    def run(folder):
        model_dir, _, _ = cp.pretrain(recipe, budget, config, paths, scale, str(tmp_path / folder))
        curve = [(r["step"], r.get("mlm_accuracy"), r.get("disc_auc")) for r in
                 cp.tu.read_metrics(os.path.join(tmp_path / folder, "metrics.jsonl")) if r.get("split") == "valid"]
        return curve, saved_weights(model_dir)
    whole = run("whole")
    saved = cp.tu.save_checkpoint
    saves = []

    def stop_at_second(out_dir, step, state, keep=2):  # the stopped run's (discriminator's) 2nd checkpoint
        path = saved(out_dir, step, state, keep)
        if out_dir == str(tmp_path / "stopped"):
            saves.append(step)
            if len(saves) == 2:
                raise KeyboardInterrupt
        return path
    monkeypatch.setattr(cp.tu, "save_checkpoint", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        run("stopped")
    caplog.set_level("INFO", logger="span_electra")
    again = run("stopped")
    assert f"{tmp_path / 'stopped'}: continuing the stopped run from checkpoint-{saves[1]:08d}.pt" in caplog.text
    assert saves[2] > saves[1]  # the steps before the checkpoint were not trained again
    assert again[0] == whole[0] and again[0]
    assert all(torch.equal(again[1][k], whole[1][k]) for k in whole[1])
    trainings = []
    monkeypatch.setattr(cp.trainSpanElectra, "main", lambda c: trainings.append(c.resume_from) or c.out_dir)
    monkeypatch.setattr(cp.trainMLM_SpanElectra, "main", lambda c: trainings.append(c.resume_from) or c.out_dir)
    budget *= 2
    cp.pretrain(recipe, budget, config, paths, scale, str(tmp_path / "stopped"))
    assert trainings and set(trainings) == {None}  # another budget: trained again from the start
