"""Device selection, checked on the CPU with a stand-in for torch.cuda that behaves as torch does on
a GPU machine: set_device rejects a device without an index."""
import pytest
import torch

import argument
import training_utils as tu
from io_utils import SpanElectraError


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two visible GPUs; set_device answers like torch: a torch.device needs an index."""
    chosen = []

    def set_device(device):
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        chosen.append(device.index if isinstance(device, torch.device) else int(device))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return chosen


@pytest.mark.parametrize("asked, index", [("auto", 0), ("cuda", 0), ("cuda:1", 1)])
def test_cuda_device_gets_an_index(fake_cuda, asked, index):
    runtime = tu.setup_runtime(asked)
    assert runtime.device == torch.device("cuda", index)
    assert fake_cuda == [index]


def test_torchrun_rank_takes_its_local_gpu(fake_cuda, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # no real process group here
    runtime = tu.setup_runtime("cuda")
    assert runtime.device == torch.device("cuda", 1) and fake_cuda == [1]


def test_missing_gpu_index_is_one_line(fake_cuda):
    with pytest.raises(SpanElectraError, match="GPU 5 was asked for but 2 GPU"):
        tu.setup_runtime("cuda:5")


def test_cuda_without_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SpanElectraError, match="no GPU is visible; use --device cpu"):
        tu.resolve_device("cuda")
    assert tu.resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("cls", [argument.MLM_trainingConfig, argument.SE_trainingConfig, argument.finetune_args])
@pytest.mark.parametrize("value, ok", [("cuda:0", True), ("cuda", True), ("cpu", True), ("gpu", False),
                                       ("cuda:x", False)])
def test_device_field_accepts_cuda_index(cls, value, ok):
    config = argument.parse_config(cls, ["--device", value])
    if ok:
        argument.check_device(config)
    else:
        with pytest.raises(SpanElectraError, match="device: .* is not one of auto, cpu, cuda, cuda:N"):
            argument.check_device(config)


@pytest.mark.parametrize("capability, native", [((7, 5), False), ((7, 0), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_on_a_gpu_that_only_emulates_it_is_said_once_and_fine_tuning_takes_fp16_there(monkeypatch, caplog,
                                                                                             capability, native):
    """A T4 or V100 (compute capability under 8.0) emulates bf16, slower than fp32: --bf16 there is one warning
    naming the GPU and pointing to --fp16, and fine-tuning's automatic autocast on CUDA is bf16 only where it is
    native, fp16 elsewhere (none on the CPU)."""
    from types import SimpleNamespace
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    runtime, cpu = tu.Runtime(torch.device("cuda", 0)), tu.Runtime(torch.device("cpu"))
    caplog.set_level("WARNING", logger=tu.logger.name)
    assert tu.native_bf16_gpu(runtime) is native and not tu.native_bf16_gpu(cpu)
    assert tu.gpu_amp_dtype(runtime) == (torch.bfloat16 if native else torch.float16) and tu.gpu_amp_dtype(cpu) is None
    tu.warn_slow_precision(runtime, SimpleNamespace(bf16=True, fp16=False))
    tu.warn_slow_precision(runtime, SimpleNamespace(bf16=False, fp16=True))  # float16 is native on all of them
    tu.warn_slow_precision(runtime, SimpleNamespace(bf16=False, fp16=False))
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ([] if native else [f"bf16: Tesla T4 (compute capability {capability[0]}.{capability[1]}) has "
                                          "no native bf16 and emulates it, slower than fp32; use --fp16 on this GPU "
                                          "instead (float16 with loss scaling; bf16 is native from capability 8.0: "
                                          "A100, L4, H100)"])

@pytest.mark.parametrize("rank", ["0", "1"])
def test_an_error_every_torchrun_process_meets_is_said_by_rank_0_alone(rank, monkeypatch, capsys):
    """A bad flag, or the out_dir's verdict (rank 0's, sent to all), stops every process alike: one error line, not
    one per process. An error a process may meet on its own (a path its node lacks) is said by that process."""
    monkeypatch.setenv("RANK", rank)

    def stops(error):
        def main(config):
            raise error
        return main
    runs = {"flag": (stops(None), ["--no_such_flag", "1"]),
            "verdict": (stops(SpanElectraError("learning_rate: the run in 'r' was started with 1", every_rank=True)), []),
            "own": (stops(SpanElectraError("features_dir: 'f' is not a folder")), [])}
    for name, (main, flags) in runs.items():
        with pytest.raises(SystemExit) as stop:
            argument.run_main(main, argument.MLM_trainingConfig, flags)
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert stop.value.code == 2
        assert len(errors) == (1 if rank == "0" or name == "own" else 0), (name, errors)


def test_the_out_dirs_verdict_is_marked_as_every_processes(bpe_feat, tmp_path):
    """claim_out_dir sends rank 0's refusal to every rank: each raises it, marked so that one says it."""
    import trainMLM_SpanElectra
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")  # another run's: a fresh run into it is refused
    with pytest.raises(SpanElectraError, match="holds another run") as refused:
        trainMLM_SpanElectra.main(argument.MLM_trainingConfig(features_dir=str(bpe_feat[0]), out_dir=str(run),
                                                              device="cpu"))
    assert refused.value.every_rank
