"""benchmarks/compare_pretraining.py: the pure parts (metric choice, table, RESULTS.md section, FLOPs counting)."""
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import compare_pretraining as cp  # noqa: E402


def result(value, spread=0.01):
    return {"eval_accuracy": value, "eval_accuracy_min": value - spread, "eval_accuracy_max": value + spread}


def test_headline_metric_follows_glue():
    assert cp.headline_metric({"eval_accuracy": 1, "eval_f1": 1}) == "eval_f1"
    assert cp.headline_metric({"eval_accuracy": 1, "eval_matthews_corr": 1}) == "eval_matthews_corr"
    assert cp.headline_metric({"eval_pearson": 1, "eval_spearman": 1}) == "eval_spearman"
    assert cp.headline_metric({"eval_accuracy": 1, "eval_loss": 1}) == "eval_accuracy"


def test_table_and_results_section_are_rewritten_in_place(tmp_path):
    rows = [{"label": "random init", "tflops": 0.0, "seconds": 0.0,
             "metrics": {"SST-2": {"key": "eval_accuracy", "results": result(0.6)}}},
            {"label": "MLM only", "tflops": 5.8, "seconds": 96.0,
             "metrics": {"SST-2": {"key": "eval_accuracy", "results": result(0.66, 0.02)}}}]
    table = cp.markdown_table(rows, ["data/glue/SST-2/"])
    assert table.splitlines()[0] == "| recipe | pre-training TFLOPs | pre-training time | SST-2 accuracy |"
    assert table.splitlines()[3] == "| MLM only | 5.8 | 1.6 min | 0.660 [0.640, 0.680] |"

    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## Other\n\nkept\n", encoding="utf-8")
    config = cp.compare_args(seeds="1,2,3")
    cp.write_results_md(str(md), table, config, None, 5.8e12, 600)
    cp.write_results_md(str(md), table.replace("0.660", "0.700"), config, None, 5.8e12, 600)  # a rerun replaces it
    text = md.read_text(encoding="utf-8")
    assert text.count(cp.MARK_BEGIN) == 1 and "0.700 [0.640, 0.680]" in text and "0.660 [" not in text
    assert text.startswith("# Benchmark results\n\n## Other\n\nkept\n") and "5.8 TFLOPs" in text


def test_flops_are_counted_per_recipe(bpe_feat):
    sizes = dict(model_size="tiny", vocab=bpe_feat[1]["vocab_size"], seq=128)
    mlm = cp.step_flops("generator", cp.RECIPES["se_two_stage"][1], str(bpe_feat[0]), sizes, 4)
    joint = cp.step_flops("joint", cp.RECIPES["se_joint"][1], str(bpe_feat[0]), sizes, 4)
    two_stage = cp.step_flops("two_stage", cp.RECIPES["se_two_stage"][1], str(bpe_feat[0]), sizes, 4)
    # the joint step trains both models; two-stage trains the discriminator and only runs the generator forward
    assert 0 < mlm < two_stage < joint
    # joint adds the generator's backward: 2/3 of its forward + backward
    assert joint == pytest.approx(two_stage + 2 / 3 * mlm, rel=0.1)


def test_unknown_recipe_is_refused():
    from io_utils import SpanElectraError
    with pytest.raises(SpanElectraError, match="recipes: 'bert'"):
        cp.compare_args(recipes="mlm,bert").validate()


def test_cached_runs_are_reused_and_refinetuned_when_the_settings_change(tmp_path, monkeypatch):
    """A rerun pre-trains nothing it has; changed fine-tuning settings re-fine-tune the saved models."""
    calls = {"pretrain": [], "finetune": []}

    def fake_pretrain(recipe, budget, config, paths, scale, out_dir):
        calls["pretrain"].append(out_dir)
        return out_dir + "/discriminator", budget, 1.0

    def fake_finetune(model_dir, task_dir, config, scale, out_dir):
        calls["finetune"].append((model_dir, config.seeds))
        return result(0.7)

    monkeypatch.setattr(cp, "prepare_data", lambda config, scale: {"features": "f", "vocab": 100, "tokenizer": "t"})
    monkeypatch.setattr(cp, "step_flops", lambda *args: 1e9)
    monkeypatch.setattr(cp, "pretrain", fake_pretrain)
    monkeypatch.setattr(cp, "finetune", fake_finetune)
    monkeypatch.setattr(cp, "random_model", lambda paths, scale, out_dir: out_dir + "/discriminator")
    monkeypatch.setattr(cp, "plot", lambda *args: None)

    def run(**kw):
        return cp.main(cp.compare_args(recipes="random,mlm", tasks="glue/SST-2", budget_fractions="1",
                                       out_dir=str(tmp_path), results_md="", **kw))

    assert [r["run"] for r in run()] == ["random@0", "mlm@1"]
    assert len(calls["pretrain"]) == 1 and len(calls["finetune"]) == 2
    run()  # everything cached
    assert len(calls["pretrain"]) == 1 and len(calls["finetune"]) == 2
    rows = run(seeds="4,5")  # new fine-tuning settings: same models, fine-tuned again
    assert len(calls["pretrain"]) == 1 and calls["finetune"][2:] == [
        (str(tmp_path / "runs" / "random@0" / "discriminator"), "4,5"),
        (str(tmp_path / "runs" / "mlm@1" / "discriminator"), "4,5")]
    assert all(r["finetune"]["seeds"] == "4,5" for r in rows)
