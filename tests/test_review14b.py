"""Review of session 14 (second pass): the compiled gradient-disentangled joint step, two-stage's sampling
forward, --gen_initializer_range beside --init_from, and compare.json rows cached before the MLM baseline's
init and two-stage's FLOP count changed."""
import functools
import sys

import pytest
import torch

import argument
import features
import modelling_span_electra as mse
import trainSpanElectra
import training_utils as tu
from conftest import REPO
from io_utils import SpanElectraError

sys.path.insert(0, str(REPO / "benchmarks"))
import compare_pretraining as cp  # noqa: E402


def _batches(feat_dir, n, batch_size=4):
    ds = features.SEDataset(argument.SE_trainDataArgs(features_dir=str(feat_dir)), batch_size, seed=1)
    return [ds[i] for i in range(n)]


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
        for batch in _batches(bpe_feat[0], 4):
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
    batch = _batches(bpe_feat[0], 1)[0]
    _, disc_out, _ = model(batch)
    disc_out["loss"].backward()
    assert model.position_delta.grad.abs().sum() > 0
    assert model.discriminator.core.electra.embeddings.position_embeddings.weight.grad.abs().sum() == 0


def test_two_stage_samples_from_the_forwards_own_logits(bpe_feat):
    gen_cfg, _ = mse.electra_configs("tiny", bpe_feat[1]["vocab_size"], 128, num_hidden_layers=1)
    generator = mse.SpanElectraGenerator(gen_cfg).eval()
    batch = _batches(bpe_feat[0], 1)[0]
    with torch.no_grad():
        full, sampling = generator(**batch)["logits"], generator.sampling_logits(**batch)
    assert sampling.dtype == torch.float32 and sampling.shape == full.shape
    assert torch.equal(sampling, full)


def test_gen_initializer_range_beside_init_from_is_refused(bpe_feat, tmp_path):
    """--init_from starts the generator from its folder's weights: the initial std was silently ignored (its
    sibling size flags are refused), and the run's identity recorded a setting that did nothing."""
    for cls, extra in ((argument.MLM_trainingConfig, {}), (argument.SE_trainingConfig, {"mode": "joint"})):
        config = cls(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "o"), init_from=str(tmp_path),
                     gen_initializer_range=0.02, **extra)
        with pytest.raises(SpanElectraError, match="gen_initializer_range: --init_from"):
            config.validate()
    cls = argument.MLM_trainingConfig  # from scratch it still sets the std
    cls(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "o"), gen_initializer_range=0.02).validate()


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
