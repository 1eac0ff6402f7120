"""--fp16: float16 autocast with dynamic loss scaling, for GPUs without native bf16 (Colab's and Kaggle's T4,
V100). The scaler's logic is the same on the CPU, where these tests run it; tests/test_gpu.py runs it on CUDA."""
import json
import os
import shutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import argument
import trainSpanElectra
import training_utils as tu
from conftest import assert_one_line_error, run_in_process
from io_utils import SpanElectraError

CPU = torch.device("cpu")


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 2))


def gradients(model, scaler=None):
    """Gradients of a fixed loss (scaled, as the scripts' scaler.scale(loss), where a scaler is given), their norm
    well above the clipping threshold of 1."""
    model.zero_grad(set_to_none=True)
    x = torch.linspace(-3, 3, 32 * 8).reshape(32, 8)
    loss = model(x).square().sum() * 100
    (loss if scaler is None else scaler.scale(loss)).backward()


def one_step(model, scaler):
    optimizer = tu.adamw([{"params": list(model.parameters()), "weight_decay": 0.0}], CPU, lr=1e-2)
    gradients(model, scaler)
    tu.optimizer_step(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), 1.0, scaler)
    return optimizer


def test_a_scaled_step_clips_and_steps_on_the_true_gradients():
    """The loss scaled by 2^16 (exact in fp32), gradients unscaled before clipping: the same weights as a plain
    step. Clipping the scaled gradients would leave them 65536x smaller than that, and AdamW's eps would show it."""
    plain, scaled = small_model(), small_model()
    one_step(plain, None)
    scaler = tu.loss_scaler(CPU, True)
    one_step(scaled, scaler)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(a, b)
    assert scaler.get_scale() == 65536.0  # no overflow: the scale stays until growth_interval good steps


def test_an_overflowed_step_leaves_weights_and_step_count_and_halves_the_scale():
    model = small_model()
    scaler = tu.loss_scaler(CPU, True)
    optimizer = one_step(model, scaler)
    before = [p.detach().clone() for p in model.parameters()]
    steps_before = [optimizer.state[p]["step"].item() for p in model.parameters()]
    gradients(model, scaler)
    next(model.parameters()).grad[0, 0] = float("inf")  # a float16 overflow, as unscale_ finds it
    tu.optimizer_step(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), 1.0, scaler)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert [optimizer.state[p]["step"].item() for p in model.parameters()] == steps_before == [1.0] * 4
    assert scaler.get_scale() == 32768.0


def test_a_disabled_scaler_is_the_plain_step():
    plain, passed = small_model(), small_model()
    one_step(plain, None)
    one_step(passed, tu.loss_scaler(CPU, False))
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), passed.parameters()))
    assert tu.loss_scale_row(tu.loss_scaler(CPU, False)) == {}


class HostReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value back to the host (.item(), bool(t), nonzero)."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero,
                                   torch.ops.aten.is_nonzero):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_scaled_step_reads_nothing_back_to_the_host():
    """With fused AdamW the scaler hands found_inf to the optimizer's kernel: no .item() per step (the non-fused
    path's GradScaler.step reads it back, a sync on every GPU step)."""
    model = small_model()
    scaler = tu.loss_scaler(CPU, True)
    optimizer = one_step(model, scaler)
    if not optimizer.param_groups[0].get("fused"):
        pytest.skip("this torch (< 2.4) has no fused AdamW for the CPU")
    gradients(model, scaler)
    with HostReads() as spy:
        tu.optimizer_step(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), 1.0, scaler)
    assert spy.reads == []
    foreach = torch.optim.AdamW(model.parameters(), foreach=True)  # what the spy sees where the step reads back
    gradients(model, scaler)
    with HostReads() as spy:
        tu.optimizer_step(model, foreach, torch.optim.lr_scheduler.LambdaLR(foreach, lambda s: 1.0), 1.0, scaler)
    assert spy.reads


def metric_rows(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if "loss" in r and r.get("split") is None]


FP16_RUN = dict(mode="joint", model_size="tiny", num_hidden_layers=1, max_steps=6, log_every=2, save_every=3,
                eval_every=1000, eval_batches=1, train_batch_size=4, device="cpu", num_workers=0, fp16=True)


def test_an_fp16_run_logs_its_scale_and_resumes_exactly(bpe_feat, tmp_path):
    """The loss scale is part of the checkpoint: a run resumed from step 3 logs the losses and the scale of the
    uninterrupted one. The first steps overflow at 2^16 (the discriminator's loss is weighted 50) and are
    skipped, lowering the scale, as on a GPU."""
    full, part = tmp_path / "full", tmp_path / "part"
    trainSpanElectra.main(argument.SE_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(full),
                                                    **FP16_RUN))
    state = torch.load(full / "checkpoint-00000003.pt", weights_only=True)
    assert state["scaler"]["scale"] < 65536.0
    shutil.copytree(full, part)
    os.remove(part / "checkpoint-00000006.pt")
    for model in ("generator", "discriminator"):
        shutil.rmtree(part / model)
    trainSpanElectra.main(argument.SE_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(part),
                                                    resume_from="latest", **FP16_RUN))
    a, b = metric_rows(full), metric_rows(part)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [2, 3, 4, 6]  # a row at each save too
    for x, y in zip(a, b):
        assert x["loss_scale"] == y["loss_scale"] and x["loss"] == pytest.approx(y["loss"], rel=1e-5), x["step"]
    assert all(0 < r["disc_loss"] < 1 for r in a) and a[-1]["loss_scale"] <= a[0]["loss_scale"]


def test_bf16_and_fp16_together_are_one_line_and_exit_2(bpe_feat, tmp_path, capsys):
    code, err = run_in_process(capsys, trainSpanElectra, argument.SE_trainingConfig, "--features_dir", bpe_feat[0],
                               "--out_dir", tmp_path / "x", "--bf16", "true", "--fp16", "true")
    assert_one_line_error(code, err, "fp16: --bf16 and --fp16 both ask for autocast; choose one: bf16 on GPUs from "
                          "Ampere (A100, L4, H100), fp16 on older ones (T4, V100, P100)")
    assert not (tmp_path / "x").exists()


def test_the_comparison_in_fp16_pre_trains_without_its_scales_bf16():
    config = argument.compare_args(scale="gpu", fp16=True)
    assert config.resolved().bf16 is False and config.resolved().fp16
    assert argument.compare_args(scale="gpu").resolved().bf16 is True
    with pytest.raises(SpanElectraError, match="fp16: --bf16 and --fp16 both"):
        argument.compare_args(scale="gpu", fp16=True, bf16=True).validate()


def test_fp16_metric_sums_leave_overflowed_batches_out_and_count_them():
    runtime = tu.Runtime(CPU, 0, 1)
    sums = tu.MetricSums(skip_nonfinite=True)
    for loss in (1.0, float("inf"), 3.0, float("nan")):
        sums.add({"loss": torch.tensor(loss), "mlm_loss": torch.tensor(loss / 2)})
    assert sums.read(runtime) == {"loss": 2.0, "mlm_loss": 1.0, "nonfinite_batches": 2}
    sums.add({"loss": torch.tensor(float("inf"))})
    row = sums.read(runtime)
    assert row["nonfinite_batches"] == 1 and row["loss"] != row["loss"]  # NaN: nothing finite, check_finite stops
    plain = tu.MetricSums()  # bf16 and fp32: an overflow is in the weights already, and the loss shows it
    plain.add({"loss": torch.tensor(1.0)})
    plain.add({"loss": torch.tensor(float("inf"))})
    assert plain.read(runtime) == {"loss": float("inf")}


REAL_LOSS_AND_METRICS = trainSpanElectra.loss_and_metrics


def overflowing(at_calls):
    """trainSpanElectra's loss_and_metrics with the loss and its logged parts infinite at the given calls, as a
    float16 forward pass that overflows gives them."""
    calls = []

    def loss_and_metrics(*args, **kwargs):
        loss, metrics = REAL_LOSS_AND_METRICS(*args, **kwargs)
        calls.append(1)
        if len(calls) in at_calls:
            inf = torch.tensor(float("inf"))
            loss, metrics = loss * inf, {k: v * inf if k.endswith("loss") else v for k, v in metrics.items()}
        return loss, metrics
    return loss_and_metrics


def test_an_fp16_batch_that_overflows_is_skipped_and_the_run_goes_on(bpe_feat, tmp_path, monkeypatch):
    """As transformers' Trainer does in fp16: the step is skipped (the weights stay finite), the logged loss is
    the window's other batches', and the row counts the overflowed one."""
    monkeypatch.setattr(trainSpanElectra, "loss_and_metrics", overflowing({5}))
    trainSpanElectra.main(argument.SE_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(tmp_path / "run"),
                                                    **FP16_RUN))
    rows = metric_rows(tmp_path / "run")
    assert [r["nonfinite_batches"] for r in rows] == [0, 0, 0, 1]  # steps 2, 3 (the save's row), 4, 6 (5 and 6)
    assert all(0 < r["disc_loss"] < 1 for r in rows)
    assert rows[-1]["loss_scale"] == rows[-2]["loss_scale"] / 2  # step 5's inf gradients: skipped, scale halved
    assert (tmp_path / "run" / "discriminator").is_dir()


def test_fp16_overflowing_in_every_batch_of_a_window_stops_with_what_to_do(bpe_feat, tmp_path, monkeypatch):
    monkeypatch.setattr(trainSpanElectra, "loss_and_metrics", overflowing({1, 2}))
    with pytest.raises(SpanElectraError, match=r"loss: non-finite loss \(nan\) by step 2; float16 overflowed in "
                                               r"every batch since the last log.*--bf16"):
        trainSpanElectra.main(argument.SE_trainingConfig(features_dir=str(bpe_feat[0]),
                                                        out_dir=str(tmp_path / "run"), **FP16_RUN))
