"""BatchStream's DataLoader workers under the "spawn" start method (the default on macOS and Windows; Python
3.14's Linux default, "forkserver", hands a worker its dataset the same way): what a worker receives is
pickled, so the memory-mapped splits must reach it as files to map again, not as copies of the arrays (a pickled
dataset itself: test_big_corpus.py)."""
import multiprocessing
import os
import signal
import sys

import pytest
import torch

import argument
import features
import training_utils as tu
from conftest import env_importing, run_or_show_where_it_hung


@pytest.fixture
def spawn_default():
    """The default start method is "spawn" for the test (DataLoader workers use the default)."""
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    yield
    multiprocessing.set_start_method(before, force=True)


def static_dataset(folder):
    """SE batches (the original ids too) of the static masks, which are saved with the generator's masking settings."""
    return features.SEDataset(argument.MLM_trainDataArgs(features_dir=str(folder), static_masking=True), 8, seed=3)


def test_spawned_workers_yield_the_in_process_batches(bpe_feat, spawn_default):
    """A spawned worker gives the in-process batches, across an epoch's end. A Ctrl-C while it imports torch
    (seconds) ended it in a traceback of its own beside the run's one line: it starts with SIGINT blocked,
    and the main process's mask is as it was."""
    dataset = static_dataset(bpe_feat[0])
    per_epoch = len(dataset)
    in_process = tu.BatchStream(dataset, num_workers=0, index=per_epoch - 2)
    from_workers = tu.BatchStream(dataset, num_workers=1, index=per_epoch - 2)  # across an epoch's end
    for _ in range(5):
        a, b = next(in_process), next(from_workers)
        assert list(a) == list(b)
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    workers = from_workers._iter._workers
    assert [w._popen.method for w in workers] == ["spawn"]
    if os.path.isfile("/proc/self/status"):  # Linux's /proc tells the signal masks
        assert signal.SIGINT in blocked_signals(workers[0].pid)
        assert signal.SIGINT not in blocked_signals(os.getpid())
    from_workers.close()
    assert not any(w.is_alive() for w in workers)
    assert from_workers.state() == in_process.state() == {"epoch": 1, "index": 3}


def blocked_signals(pid, field="SigBlk"):
    """The signal numbers blocked in a process (Linux's /proc/PID/status SigBlk mask; SigIgn: ignored)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        mask = int(next(line for line in f if line.startswith(field + ":")).split()[1], 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def ignored_signals(pid):
    return blocked_signals(pid, "SigIgn")


FRESH_SEGMENTING = """
import multiprocessing, os, signal, sys
import tokenization
from test_start_methods import blocked_signals
batches = tokenization.segmented_batches(iter([(["Hà Nội là thủ đô"], None)] * 4), "pyvi", 2)
assert next(batches)[0] == ["Hà_Nội là thủ_đô"]
print(sorted(signal.SIGINT in blocked_signals(w.pid) for w in multiprocessing.active_children()),
      signal.SIGINT in blocked_signals(os.getpid()))
"""


@pytest.mark.skipif(not os.path.isfile("/proc/self/status"), reason="reads Linux's /proc")
def test_segmenting_workers_start_with_ctrl_c_blocked():
    """The segmenting pool (always spawned) starts its workers with SIGINT blocked too: each spends seconds
    importing pyvi, where a Ctrl-C ended it in a traceback of its own. In a fresh interpreter, as a user's run:
    there multiprocessing starts its resource tracker with the first workers, and unblocks SIGINT after it."""
    pytest.importorskip("pyvi")
    result = run_or_show_where_it_hung([sys.executable, "-c", FRESH_SEGMENTING], 120, env_importing("tests"))
    assert result.returncode == 0, result.stderr[-2000:]
    # both workers start with Ctrl-C blocked; the main process not
    assert result.stdout.split() == ["[True,", "True]", "False"]


FRESH_FINETUNE_POOL = """
import os, signal, sys, time
import compare_pretraining as cp
from test_start_methods import blocked_signals, ignored_signals
pool = cp.WorkerPool(2, threads=1)
jobs = [pool.submit(time.sleep, 60) for _ in range(2)]  # each starts a worker, which imports torch for seconds
pids = list(pool._processes)
print(len(pids), all(signal.SIGINT in blocked_signals(p) for p in pids))
for _ in range(600):  # until their initializer has run
    if all(signal.SIGINT in ignored_signals(p) for p in pids):
        break
    time.sleep(0.1)
print(all(signal.SIGINT in ignored_signals(p) for p in pids))
begin = time.time()
pool.stop_workers()
pool.shutdown(cancel_futures=True)
print(time.time() - begin < 10, all(job.done() for job in jobs))
"""


@pytest.mark.skipif(not os.path.isfile("/proc/self/status"), reason="reads Linux's /proc")
def test_fine_tuning_workers_leave_ctrl_c_to_the_comparison_which_stops_them():
    """compare_pretraining's fine-tuning pool (always spawned) starts each worker with Ctrl-C blocked, as it
    imports torch (a Ctrl-C there printed a traceback per worker), then ignored; on Ctrl-C the comparison
    stops them, running jobs too, at once and without multiprocessing's leaked-semaphore warning (tqdm's lock)."""
    result = run_or_show_where_it_hung([sys.executable, "-c", FRESH_FINETUNE_POOL], 180,
                                       env_importing("benchmarks", "tests"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["2", "True", "True", "True", "True"]
    assert "leaked" not in result.stderr and "Traceback" not in result.stderr
