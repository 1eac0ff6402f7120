"""Resuming where a run stopped: the checkpoints kept and the one resumed, the random state, the batch stream's
position (epoch and batch) and the metrics log cut back to the resumed step."""
import copy
import os
from types import SimpleNamespace

import numpy as np
import torch

import training_utils as tu
from conftest import EpochData


def test_keep_checkpoints_keeps_the_newest_and_latest_resumes_the_newest(tmp_path):
    """keep_checkpoints N leaves the N newest checkpoints; resume_from latest takes the newest of them."""
    def state(step):  # what save_training_state writes, emptied
        return {"step": step, "run_id": "r", **{key: {} for key in tu.TRAINING_STATE_KEYS if key != "step"}}
    for step in (5, 10, 100, 1000):
        tu.save_checkpoint(str(tmp_path), step, state(step), keep=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-00000100.pt", "checkpoint-00001000.pt"]
    assert tu.load_checkpoint("latest", str(tmp_path), "r")["step"] == 1000
    tu.save_checkpoint(str(tmp_path), 1001, state(1001), keep=1)
    assert os.listdir(tmp_path) == ["checkpoint-00001001.pt"]


def test_rng_state_round_trips_every_generator():
    """A resumed run draws the same random numbers (python, numpy, torch) as the uninterrupted run."""
    import random
    state = tu.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    tu.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_a_cpu_run_keeps_no_cuda_state_and_reads_an_older_one_without_it():
    """The CUDA random state is the run's own GPU's: a CPU run keeps none (nor touches CUDA on a GPU machine),
    and an earlier version's list of every GPU's state is passed over on the CPU."""
    cpu = torch.device("cpu")
    state = tu.rng_state(cpu)
    assert "cuda" not in state
    first = torch.rand(3)
    tu.set_rng_state({**state, "cuda": [torch.zeros(16, dtype=torch.uint8)] * 2}, cpu)
    assert torch.equal(torch.rand(3), first)


def test_a_resumed_optimizer_keeps_this_devices_kernels():
    """load_state_dict takes the saved groups' flags: a checkpoint written with the other AdamW kernel (foreach,
    by a CPU run on a torch before 2.4; fused, by a GPU run) would step with that one. The built flags come back,
    with the step counts where those kernels want them, and the resumed steps equal the uninterrupted ones."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = tu.build_optimizer(model, 1e-2, 0.01)
    built = tu.kernel_flags(optimizer)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    saved = copy.deepcopy(optimizer.state_dict())  # as read from a file: no tensor shared with optimizer's
    other = {"fused": None, "foreach": True} if built[0].get("fused") else {"fused": True, "foreach": None}
    for group in saved["param_groups"]:  # as a run with the other kernel saved it
        group.update(other)
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    resumed = tu.build_optimizer(twin, 1e-2, 0.01)
    resumed.load_state_dict(saved)
    assert tu.kernel_flags(resumed) == [other, other]
    tu.keep_built_kernels(resumed, built)
    assert tu.kernel_flags(resumed) == built
    assert all(s["step"].device.type == "cpu" and s["step"].dtype == torch.float32 for s in resumed.state.values())
    for m, opt in ((model, optimizer), (twin, resumed)):
        torch.manual_seed(1)
        m(torch.randn(2, 4)).sum().backward()
        opt.step()
    assert torch.equal(model.weight, twin.weight)


def test_batch_stream_moves_to_the_next_epoch_and_resumes_at_its_position():
    """Batches run epoch after epoch (the next epoch's order), and a stream started at a saved position
    continues with exactly the next batch."""
    stream = tu.BatchStream(EpochData())
    assert [next(stream)["x"].item() for _ in range(5)] == [0, 1, 2, 10, 11]
    assert stream.state() == {"epoch": 1, "index": 2}
    resumed = tu.BatchStream(EpochData(), **stream.state())
    assert [next(resumed)["x"].item() for _ in range(3)] == [12, 20, 21]


def test_an_epoch_end_saved_by_older_versions_turns_the_epoch():
    """Older checkpoints saved an epoch's end as (epoch, len): it resumes at the next epoch's first batch and
    the position still turns at every epoch's end (it counted index past len for the rest of the run)."""
    stream = tu.BatchStream(EpochData(), epoch=3, index=3)
    assert stream.state() == {"epoch": 4, "index": 0}
    assert [next(stream)["x"].item() for _ in range(4)] == [40, 41, 42, 50]
    assert stream.state() == {"epoch": 5, "index": 1}


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
