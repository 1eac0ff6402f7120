"""The machinery around both training loops: devices and DDP, optimizer and schedule, data
position, checkpoints and resume, metrics logging. The loops themselves stay in
trainMLM_SpanElectra.py and trainSpanElectra.py, readable top to bottom."""
import atexit
import collections
import contextlib
import dataclasses
import functools
import gc
import glob
import itertools
import json
import logging
import math
import multiprocessing
import os
import random
import re
import signal
import socket
import sys
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from argument import save_config
from io_utils import (OUTPUT_MARKERS, SpanElectraError, atomic_write_json, atomic_write_text, available_cores,
                      ctrl_c_held_back, first_line, lies_within, list_checkpoints, left_by_ended_process, make_out_dir, pid_alive,
                      process_tag, read_json, remove_paths, storage_reason)
from masking import short_masking_message

logger = logging.getLogger("span_electra")
CHECKPOINT_PATTERN = "checkpoint-{:08d}.pt"
RUN_FILE, LOCK_FILE = "run.json", ".lock"
RUN_OUTPUTS = ("generator", "discriminator", "metrics.jsonl", RUN_FILE)  # what a run leaves in out_dir
# settings a resumed run may change; every other field of the config is fixed for the life of a run
MUTABLE_SETTINGS = {"max_steps", "log_every", "eval_every", "save_every", "eval_batches", "eval_batch_size",
                    "keep_checkpoints", "num_workers", "resume_from", "overwrite_output_dir", "out_dir", "device",
                    "bf16", "fp16", "compile", "features_dir", "tokenizer_dir", "generator_dir", "init_from"}


# ---------------------------------------------------------------- devices and processes
@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    lock: object = None  # rank 0's OutDirLock once a training run has claimed its out_dir

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def setup_runtime(device="auto"):
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group: gloo on CPU,
    nccl on GPU. Only rank 0 writes files and logs."""
    check_numpy_bridge()
    STOP_KEPT_IN_GC.clear()  # a Ctrl-C an earlier run in this process (a notebook's) never reached is not this run's
    gc.unfreeze()  # nor the heap an earlier run froze and, stopped by an error, never handed back (its model with it)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank, world_size)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # torch wants an index here: resolve_device always gives one
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls (10-bit mantissa, as ELECTRA's TPUs)
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if rank != 0:
        logging.getLogger("span_electra").setLevel(logging.WARNING)
    return Runtime(dev, rank, world_size)


def check_numpy_bridge():
    """Refuse at the start, not at the first batch or checkpoint, a torch built against numpy 1 beside numpy 2
    (torch < 2.3 with numpy >= 2), where torch.from_numpy raises 'Numpy is not available'."""
    try:
        torch.from_numpy(np.zeros(1))
    except RuntimeError as e:
        raise SpanElectraError(f"torch {torch.__version__} cannot read numpy {np.__version__}'s arrays ({first_line(e)}); "
                               "install numpy 1 beside it (pip install 'numpy<2') or a torch >= 2.3") from None


def resolve_device(device="auto", local_rank=0, world_size=1):
    """'auto', 'cpu', 'cuda' or 'cuda:N' as a torch.device; CUDA always with its index: the local
    rank's GPU under torchrun, else GPU 0 or N."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not device.startswith("cuda"):
        return torch.device(device)
    if not torch.cuda.is_available():
        raise SpanElectraError(f"device: '{device}' was asked for but no GPU is visible; use --device cpu")
    index = local_rank if world_size > 1 or device == "cuda" else int(device.split(":")[1])
    if index >= torch.cuda.device_count():
        raise SpanElectraError(f"device: GPU {index} was asked for but {torch.cuda.device_count()} GPU(s) are "
                               "visible; use --device cuda (or fewer processes per node)")
    return torch.device("cuda", index)


def teardown_runtime(runtime):
    """Release out_dir and leave the process group together: a rank that tears down while rank 0 is
    still saving can hang gloo's shutdown. A heap frozen for the run is handed back to the collector."""
    gc.unfreeze()
    if runtime.lock is not None:
        runtime.lock.release()
    if runtime.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()
        # gloo's worker threads free a finished collective's work after the caller has gone on, and the barrier's
        # work holds the earlier collectives' tensors, whose release needs the GIL. The group itself goes when
        # DDP's reducer does, as main() returns: ~ProcessGroupGloo then waits, holding the GIL, for the lock that
        # worker holds while it waits for the GIL (a deadlock seen once in ~60 runs, gdb's stacks in RESULTS.md).
        # A moment without the GIL lets the worker finish first.
        time.sleep(0.2)
        torch.distributed.destroy_process_group()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(config):
    """The autocast dtype a training config asks for: torch.bfloat16 (--bf16), torch.float16 (--fp16) or None
    (fp32)."""
    return torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None


def gpu_amp_dtype(runtime):
    """Fine-tuning's autocast dtype: bf16 on a GPU with native bf16, fp16 (with loss scaling) on an older GPU, none
    (fp32) on the CPU."""
    if runtime.device.type != "cuda":
        return None
    return torch.bfloat16 if native_bf16_gpu(runtime) else torch.float16


def autocast(runtime, dtype):
    """Autocast to dtype (torch.bfloat16 or torch.float16) on the run's device; a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=dtype)


def loss_scaler(device, fp16):
    """fp16's dynamic loss scaling (torch's GradScaler, as in nanoGPT and transformers' Trainer): float16
    gradients underflow to zero unscaled. A pass-through when fp16 is off. With fused AdamW it reads nothing back
    to the host: a step whose gradients overflowed is skipped inside the optimizer's kernel."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=fp16)
    if fp16 and device.type != "cuda":  # torch < 2.3: CUDA's GradScaler only
        raise SpanElectraError(f"fp16: torch {torch.__version__} scales losses on CUDA only; train on a GPU, "
                               "leave --fp16 off on the CPU, or install torch >= 2.3")
    return torch.cuda.amp.GradScaler(enabled=fp16)


def loss_scale_row(scaler):
    """fp16's current loss scale for a metrics row ({} where fp16 is off): a scale that keeps falling means
    gradients that keep overflowing, and steps skipped."""
    return {"loss_scale": scaler.get_scale()} if scaler.is_enabled() else {}


def native_bf16_gpu(runtime):
    """A GPU that computes in bf16 natively (compute capability 8.0 and up: A100, L4, H100, ...); older ones (T4,
    V100, P100) emulate it, slower than fp32."""
    return runtime.device.type == "cuda" and torch.cuda.get_device_capability(runtime.device)[0] >= 8


def warn_slow_precision(runtime, config):
    """One line where the asked autocast is slower than fp32 on this device: --bf16 on a GPU that only emulates
    bf16 (Colab's and Kaggle's T4), or --fp16 on a CPU."""
    if config.bf16 and runtime.device.type == "cuda" and not native_bf16_gpu(runtime):
        major, minor = torch.cuda.get_device_capability(runtime.device)
        logger.warning("bf16: %s (compute capability %d.%d) has no native bf16 and emulates it, slower than fp32; "
                       "use --fp16 on this GPU instead (float16 with loss scaling; bf16 is native from capability "
                       "8.0: A100, L4, H100)", torch.cuda.get_device_name(runtime.device), major, minor)
    if config.fp16 and runtime.device.type == "cpu":
        logger.warning("fp16: float16 autocast is for GPUs (T4, V100, P100); most CPUs emulate float16 matmuls, "
                       "slower than fp32, so leave --fp16 off on the CPU (or use --bf16 on one with native bf16)")


def wrap_ddp(model, runtime):
    if not runtime.distributed:
        return model
    ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def no_sync(model, skip):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if skip and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def ranks_in_sync(model, runtime):
    """True when every rank holds the same weights (checked at the end of a DDP run)."""
    if not runtime.distributed:
        return True
    with torch.no_grad():
        total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(total) for _ in range(runtime.world_size)]
        torch.distributed.all_gather(gathered, total)
    return all(torch.equal(g, gathered[0]) for g in gathered)


# ---------------------------------------------------------------- optimization
def build_optimizer(model, learning_rate, weight_decay):
    """AdamW without weight decay on biases and LayerNorm weights (BERT/ELECTRA)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return adamw(groups, model_device(model), lr=learning_rate)


def decays(name, param):
    """Whether AdamW's weight decay applies to a parameter: every weight but biases and LayerNorm weights."""
    return param.ndim >= 2 and "LayerNorm" not in name


def adamw(groups, device, lr=1e-3, betas=(0.9, 0.999), eps=1e-6):
    """AdamW over parameter groups: fused (one pass over the parameters; on CUDA no host syncs) where this torch
    has the kernel for the device, else foreach."""
    fused = device.type == "cuda" or (device.type == "cpu" and fused_adamw_on_cpu())
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **({"fused": True} if fused else {"foreach": True}))


@functools.lru_cache(maxsize=1)
def fused_adamw_on_cpu():
    """Whether this torch has fused AdamW for the CPU (from 2.4): ELECTRA-Small's step of it takes 25-30 ms on 2
    cores, foreach's 92-108 ms."""
    try:
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True)
    except RuntimeError:  # torch < 2.4: fused=True takes CUDA's parameters only
        return False
    return True


def warmup_linear_schedule(optimizer, warmup_steps, total_steps):
    """Linear warmup to the peak learning rate, then linear decay to zero."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_steps(fraction, total_steps):
    """The steps of a warmup over `fraction` of training: rounded, since 0.29 x 100 is 28.999... in floats."""
    return round(fraction * total_steps)


def build_optimization(model, config):
    """AdamW, the warmup-then-linear-decay schedule and the loss scaler (fp16's; a pass-through otherwise) of a
    training config."""
    optimizer = build_optimizer(model, config.learning_rate, config.weight_decay)
    scheduler = warmup_linear_schedule(optimizer, warmup_steps(config.warmup_fraction, config.max_steps), config.max_steps)
    return optimizer, scheduler, loss_scaler(model_device(model), config.fp16)


def optimizer_step(model, optimizer, scheduler, max_grad_norm, scaler=None):
    """Clip, step, advance the schedule and clear the gradients (and stop, at a Ctrl-C the collector's hook kept).
    scaler: fp16's loss_scaler, whose scaled gradients are unscaled before clipping; a step whose gradients
    overflowed leaves the weights as they were and lowers the scale."""
    raise_stop_kept_in_gc()
    if scaler is not None:
        scaler.unscale_(optimizer)  # a no-op where fp16 is off
    if max_grad_norm:  # foreach: the norm stays on the device, no host sync
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm,
                                       foreach=True)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=not getattr(optimizer, GRADS_KEPT, False))


GRADS_KEPT = "span_electra_grads_kept"  # set on an optimizer whose gradients are zeroed in place (keep_gradients)


def keep_gradients(model, optimizer):
    """Gradients allocated once and zeroed in place, for micro-batches accumulated under CUDA graphs: a gradient
    left to the first micro-batch's backward is the graph's own output, in the graphs' memory pool, which the next
    micro-batch's replay reuses (torch then raises 'accessing tensor output of CUDAGraphs that has been overwritten'
    or sums into overwritten memory; pytorch#169545); each backward adds into these instead."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    setattr(optimizer, GRADS_KEPT, True)


# 20x ELECTRA-Small's 5e-4 (Base and Large: 2e-4): from here the tiny generator collapsed to one prediction and
# tiny joint runs' discriminators to chance (benchmarks/RESULTS.md, session 14); AdamW's step is about lr per weight
HIGH_LEARNING_RATE = 1e-2


def warn_high_learning_rate(learning_rate):
    """One line when the peak learning rate is far above pre-training's: such runs diverge or collapse quietly,
    the loss staying finite (clipped gradients), so nothing else would say it."""
    if learning_rate >= HIGH_LEARNING_RATE:
        logger.warning("learning_rate: %g is far above pre-training's usual 2e-4 to 5e-4 (ELECTRA; 3e-3 for the tiny "
                       "preset): from %g the models here collapse or diverge; use e.g. --learning_rate 5e-4",
                       learning_rate, HIGH_LEARNING_RATE)


NAN_HINT = "lower --learning_rate, keep gradient clipping on (--max_grad_norm 1.0), or resume from an earlier checkpoint"
FP16_NAN_HINT = ("float16 overflowed in every batch since the last log, so no step was taken; train with --bf16 "
                 "(GPUs from Ampere: A100, L4, H100) or in fp32, or " + NAN_HINT)


def nan_hint(config):
    """What to do about a non-finite logged loss: in fp16 only a window of overflowed batches reaches it."""
    return FP16_NAN_HINT if config.fp16 else NAN_HINT


def check_finite(loss, step, hint=NAN_HINT):
    """Stop with the step and what to do when the (logged) loss is NaN or infinite."""
    if not math.isfinite(loss):
        raise SpanElectraError(f"loss: non-finite loss ({loss}) by step {step}; {hint}")


def warn_short_masking(row, config, dataset):
    """The first logged row's realised mask ratio against --mask_ratio: said once, as mask_stats.py says it,
    where spans cut at the prediction slots leave the generator far fewer targets than asked for."""
    if "mask_ratio" in row and row["step"] <= config.log_every:
        short = short_masking_message(row["mask_ratio"], config.mask_ratio, dataset.num_slots,
                                      dataset.features.max_seq_len)
        if short:
            logger.warning("mask_ratio: %s", short)


def check_finite_weights(model, step):
    """Stop before a checkpoint would save NaN weights (losses are only read every log_every steps)."""
    finite = torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all()
    if not bool(finite):
        raise SpanElectraError(f"loss: the weights became non-finite by step {step}; {NAN_HINT}")


# ---------------------------------------------------------------- data
def eval_batch_indices(dataset, eval_batches):
    """This rank's share of the split's first eval_batches batches (0: all of them), so that a run is
    evaluated on the same batches whatever its number of processes (at least one batch each)."""
    wanted = max(min(eval_batches or dataset.total_batches, dataset.total_batches), dataset.world_size)
    return range(-(-(wanted - dataset.rank) // dataset.world_size))


def prepare_run(config, dataset_cls):
    """Validate the config, set up devices/processes and seeds, and open the datasets.
    Returns (runtime, train_set, valid_set)."""
    config.validate()
    runtime = setup_runtime(config.device)
    seed_everything(config.seed)
    return (runtime, *make_datasets(config, dataset_cls, runtime))


def make_datasets(config, dataset_cls, runtime):
    """The training split's dataset for this rank, and the valid split's (None when there is none),
    both read and masked as the config's data fields say."""
    train_set = dataset_cls(config, config.train_batch_size, seed=config.seed, rank=runtime.rank,
                            world_size=runtime.world_size)
    if runtime.is_main:
        warn_step_beyond_epoch(config, train_set)
    valid_set = None
    if "valid" in train_set.features.meta["splits"]:
        valid_set = dataset_cls(config, config.eval_batch_size, seed=config.seed, shuffle=False, rank=runtime.rank,
                                world_size=runtime.world_size, split="valid")
    elif runtime.is_main:
        logger.warning("features_dir: '%s' has no valid split, so this run is never evaluated; build the features "
                       "with process.py --valid_input (or --valid_fraction above 0) for validation", config.features_dir)
    return train_set, valid_set


def warn_step_beyond_epoch(config, train_set):
    """One optimizer step's micro-batches outnumbering an epoch's batches: the stream runs into the next epoch, so
    the step reads some sequences twice (masked anew), a larger batch only in name."""
    if config.gradient_accumulation_steps > len(train_set):
        per_step = config.gradient_accumulation_steps * config.train_batch_size * train_set.world_size
        logger.warning("gradient_accumulation_steps: %d x %d sequences (x %d process(es)) = %d per optimizer step, more "
                       "than the %d of the train split, so a step reads some twice; use at most "
                       "--gradient_accumulation_steps %d", config.gradient_accumulation_steps, config.train_batch_size,
                       train_set.world_size, per_step, len(train_set.data), len(train_set))


def is_due(step, every, max_steps):
    return step % every == 0 or step == max_steps


def log_due(step, config):
    """Whether the loop logs a row at step: every log_every steps, at the end, and at every checkpoint too,
    so that a run resumed from a checkpoint logs the rows an uninterrupted run logs."""
    return is_due(step, config.log_every, config.max_steps) or is_due(step, config.save_every, config.max_steps)


# ---------------------------------------------------------------- data position
class BatchStream:
    """Endless batches of an MLMDataset/SEDataset, epoch after epoch, that remembers its position
    (epoch, batch) so a resumed run continues with exactly the next batch. With workers, each batch
    comes through BatchSlots; with pin_memory (a GPU run) the main process copies it into pinned memory,
    which the loop copies to the device without waiting."""

    def __init__(self, dataset, num_workers=0, pin_memory=False, epoch=0, index=0):
        self.dataset, self.num_workers, self.pin_memory = dataset, num_workers, pin_memory
        # the run's count of batches taken: (epoch, index) derive from it; (epoch, len), as older versions saved
        # an epoch's end, is the next epoch's start
        self.taken = epoch * len(dataset) + index
        self.wait_seconds, self.waits = 0.0, 0  # time the loop spent waiting here (logged as data_wait_ms)
        self._iter, self.slots = None, None

    def _start(self):
        """The loader from the stream's position on: in-process, or through workers and their slots."""
        source = EpochBatches(self.dataset)
        if self.num_workers:
            # one stream's workers at a time: a notebook's crashed run keeps its stream in the traceback, and
            # its workers would live on beside each new run's (a stream stopped this way restarts if used)
            close_live_streams()
            if self.slots is None:  # sized by one batch: a dataset's batches all have the same shapes
                self.slots = BatchSlots(PREFETCH * self.num_workers + 2, batch_layout(self.dataset[0])[1])
            source = SlotDataset(source, self.slots)  # the default collate passes its SlotRefs through
        # one endless loader for the whole run: its workers live on across epochs (starting them again
        # at every epoch stalled the loop 40-120 ms on the 2-core CPU while they forked and filled up)
        loader = torch.utils.data.DataLoader(
            source, batch_size=None, sampler=itertools.count(self.taken),
            num_workers=self.num_workers, prefetch_factor=PREFETCH if self.num_workers else None,
            pin_memory=self.pin_memory and not self.num_workers,
            generator=torch.Generator(),  # its own seed source: the global RNG (dropout) is untouched
            worker_init_fn=leave_sigterm_to_the_main_process if self.num_workers else None)
        with ctrl_c_held_back(multiprocessing.get_start_method() if self.num_workers else None):
            self._iter = iter(loader)  # starts the workers (by the default start method, as DataLoader does)
        if self.num_workers:
            LIVE_STREAMS.add(self)
            # (again) the newest exit hook, so it runs first: before multiprocessing's, registered with the workers
            atexit.unregister(close_live_streams)
            atexit.register(close_live_streams)

    def close(self):
        """Stop the DataLoader workers now (the next batch starts them again, where the stream was)."""
        it, self._iter = self._iter, None
        if hasattr(it, "_shutdown_workers"):  # a traceback may still hold the iterator: stop them explicitly
            it._shutdown_workers()

    def __next__(self):
        start = time.perf_counter()
        if self._iter is None:
            self._start()
        batch = next(self._iter)
        self.taken += 1
        if isinstance(batch, SlotRef):
            batch = take_batch(self.slots, batch, self.pin_memory)
        elif isinstance(batch, PackedBatch):
            batch = unpack_batch(batch)
        self.wait_seconds, self.waits = self.wait_seconds + time.perf_counter() - start, self.waits + 1
        return batch

    def take_wait_ms(self):
        """Mean milliseconds the loop waited per batch since the last call (resets): near 0 when the
        workers keep ahead; the step's time otherwise goes to waiting for data."""
        wait, self.wait_seconds, self.waits = 1000 * self.wait_seconds / max(self.waits, 1), 0.0, 0
        return wait

    def state(self):
        epoch, index = divmod(self.taken, len(self.dataset))
        return {"epoch": epoch, "index": index}


# streams whose workers may be running. At exit, multiprocessing stops daemonic workers with SIGTERM, which ours
# ignore (leave_sigterm_to_the_main_process), then joins them: a stream still referenced then (a crash's traceback
# keeps the loop's frame in sys.last_traceback) would hang the exit for good, so its workers are stopped first
LIVE_STREAMS = weakref.WeakSet()


def close_live_streams():
    """Stop the DataLoader workers of every batch stream still open (at exit, or before a new stream's)."""
    for stream in list(LIVE_STREAMS):
        stream.close()


PREFETCH = 4  # batches each DataLoader worker has in flight
PACK_ALIGN = 64  # bytes: every field starts aligned, so its view keeps its dtype's alignment


def leave_sigterm_to_the_main_process(worker_id):
    """A batch worker ignores SIGTERM, which `timeout` and schedulers (SLURM) send to every process of
    a run: the main process stops the run and its workers with one line, where a worker killed first
    would end it in torch's 'DataLoader worker is killed' traceback. (torch's workers ignore Ctrl-C.)"""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def batch_layout(batch):
    """Where each tensor of a batch lies in one byte buffer, as [name, dtype, shape, offset] rows (each
    field PACK_ALIGN-aligned), and the bytes the buffer needs."""
    layout, offset = [], 0
    for name, tensor in batch.items():
        layout.append([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), offset])
        offset += -(-tensor.numel() * tensor.element_size() // PACK_ALIGN) * PACK_ALIGN
    return layout, offset


def write_batch(batch, layout, buffer):
    """Copy a batch's tensors into a uint8 buffer where batch_layout places them."""
    for (_, _, _, offset), tensor in zip(layout, batch.values()):
        raw = tensor.contiguous().view(-1).view(torch.uint8)
        buffer[offset:offset + raw.numel()].copy_(raw)


def read_batch(buffer, layout):
    """The batch of write_batch, as views of the buffer (no copy)."""
    out = {}
    for name, dtype, shape, offset in layout:
        dtype = getattr(torch, dtype)
        out[name] = buffer[offset:offset + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
    return out


class PackedBatch(NamedTuple):
    """A batch's tensors as one byte buffer and where each lies in it (names, dtypes, shapes, offsets)."""
    data: torch.Tensor
    layout: str  # JSON


def pack_batch(batch):
    """One tensor for a dict of tensors: how a worker hands over a batch too big for its slot."""
    layout, nbytes = batch_layout(batch)
    data = torch.zeros(nbytes, dtype=torch.uint8)
    write_batch(batch, layout, data)
    return PackedBatch(data, json.dumps(layout))


def unpack_batch(packed):
    """The dict of tensors of pack_batch, as views of its buffer."""
    return read_batch(packed.data, json.loads(packed.layout))


class SlotRef(NamedTuple):
    """What a worker sends for a batch it wrote into BatchSlots: its index (which names the slot) and layout."""
    index: int
    layout: str  # JSON
    nbytes: int


class BatchSlots:
    """Shared-memory buffers, made once, that the DataLoader workers write batches into, batch i into
    slot i % count; the main process receives a SlotRef of a few bytes. Handing over tensors instead
    costs the main process a file descriptor passed over a socket, a memory map and (in torch's pinning
    thread, competing for the interpreter lock) an unmap and a pinned copy per batch: on the 2-core CPU,
    6-11 ms of the loop per 128 x 128 batch for a plain DataLoader and 2.0-2.4 ms for one packed tensor,
    against 0.8-1.0 ms this way (benchmarks/bench_loader.py, RESULTS.md); the known cause of stalls in
    the GPU's work (pytorch issues 77139, 91353). A DataLoader has at most
    PREFETCH x workers batches in flight, so with more slots than that no slot is rewritten before the
    main process has copied it out; a sequence mark at each end of the slot proves it."""
    HEADER = PACK_ALIGN  # bytes: the slot's two marks (index + 1 when its write began, and when it ended)

    def __init__(self, count, nbytes):
        self.buffers = [torch.zeros(self.HEADER + nbytes, dtype=torch.uint8).share_memory_() for _ in range(count)]

    def write(self, index, batch):
        """In a worker: batch `index` into its slot (a PackedBatch instead when it does not fit)."""
        layout, nbytes = batch_layout(batch)
        slot = self.buffers[index % len(self.buffers)]
        if nbytes > slot.numel() - self.HEADER:
            return pack_batch(batch)
        marks = slot[:16].view(torch.int64)
        marks[0] = index + 1
        write_batch(batch, layout, slot[self.HEADER:])
        marks[1] = index + 1
        return SlotRef(index, json.dumps(layout), nbytes)

    def copy_out(self, ref, out):
        """In the main process: batch ref.index's bytes into the uint8 tensor `out`, checked whole."""
        slot = self.buffers[ref.index % len(self.buffers)].numpy()
        marks = slot[:16].view(np.int64)
        ended = int(marks[1])
        np.copyto(out.numpy()[:ref.nbytes], slot[self.HEADER:self.HEADER + ref.nbytes])  # one thread, no intra-op pool
        if ended != ref.index + 1 or int(marks[0]) != ref.index + 1:
            raise RuntimeError(f"batch slot {ref.index % len(self.buffers)} was rewritten while batch {ref.index} "
                               "was read from it; report this as a bug")


class EpochBatches(torch.utils.data.Dataset):
    """A dataset's batches, epoch after epoch, as one endless sequence: item g is batch g % len(dataset) of
    epoch g // len(dataset), so one DataLoader (and its workers) serves a whole run."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, g):
        epoch, index = divmod(g, len(self.dataset))
        self.dataset.set_epoch(epoch)  # in a worker: its own copy of the dataset
        return self.dataset[index]


class SlotDataset(torch.utils.data.Dataset):
    """A dataset whose items, built in a DataLoader worker, are written into BatchSlots."""

    def __init__(self, dataset, slots):
        self.dataset, self.slots = dataset, slots

    def __getitem__(self, index):
        return self.slots.write(index, self.dataset[index])


def take_batch(slots, ref, pin_memory):
    """Batch ref copied out of its slot into memory of the main process's own (pinned for a GPU run),
    as views of one buffer. Pinned buffers come from torch's caching host allocator, which reuses
    one only once the copy to the GPU that read it has finished: no wait here, no leak."""
    out = torch.empty(ref.nbytes, dtype=torch.uint8, pin_memory=pin_memory)
    slots.copy_out(ref, out)
    return read_batch(out, json.loads(ref.layout))


def to_device(batch, device):
    """Copy a batch to the device without waiting (asynchronous from pinned memory)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ---------------------------------------------------------------- checkpoints
def rng_state(device=None):
    """Every global RNG the run uses, in types torch.load(weights_only=True) accepts: CUDA's of the run's own
    GPU only (a CPU run on a GPU machine leaves CUDA alone; a resume may see fewer GPUs)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device=None):
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if device is None or device.type != "cuda":
        return
    saved = state.get("cuda")
    if isinstance(saved, (list, tuple)):  # an earlier version's checkpoint: one state per GPU it saw
        saved = saved[device.index] if device.index < len(saved) else None
    if saved is not None:
        torch.cuda.set_rng_state(saved, device)


def save_checkpoint(out_dir, step, state, keep=2):
    """Write out_dir/checkpoint-STEP.pt atomically and keep only the newest `keep` checkpoints."""
    path = os.path.join(out_dir, CHECKPOINT_PATTERN.format(step))
    tmp = path + ".tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as RuntimeError
        if os.path.exists(tmp):
            os.remove(tmp)
        reason = storage_reason(e, out_dir)
        raise SpanElectraError(f"out_dir: cannot write a checkpoint to '{out_dir}' ({reason}); free some space "
                               "or choose another --out_dir") from None
    for old in list_checkpoints(out_dir)[:-keep]:
        os.remove(old)
    return path


def drop_checkpoints_after(out_dir, step):
    """A run resumed from an earlier checkpoint than its last (--resume_from checkpoint-20 beside checkpoint-30)
    goes on as itself from there: the later checkpoints hold the steps it replaces, and left in place, 'latest'
    would go back to them, and keep_checkpoints would remove the new run's own before them."""
    later = [path for path in list_checkpoints(out_dir) if (checkpoint_step(path) or 0) > step]
    for path in later:
        os.remove(path)
    if later:
        logger.warning("resumed from step %d: removed the later checkpoint(s) %s, of the steps this run now trains "
                       "again", step, ", ".join(os.path.basename(p) for p in later))


def checkpoint_step(path):
    """The step in a checkpoint's name (checkpoint-00000030.pt -> 30; None for a name training never writes)."""
    digits = os.path.basename(path)[len("checkpoint-"):-len(".pt")]
    return int(digits) if digits.isdigit() else None


def save_training_state(config, step, model, optimizer, scheduler, stream, log, scaler=None):
    """A resumable checkpoint of the whole run: model, optimizer, schedule, fp16's loss scale, RNGs, data
    position, and the run's wall seconds so far (log.run_seconds)."""
    check_finite_weights(model, step)
    state = {"step": step, "run_id": config.run_id, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": rng_state(model_device(model)), "data": stream.state(),
             "run_seconds": log.run_seconds()}
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return save_checkpoint(config.out_dir, step, state, keep=config.keep_checkpoints)


def resume_training_state(config, model, optimizer, scheduler, scaler=None):
    """Load config.resume_from into the run; returns (step, data position, run seconds up to the checkpoint),
    (0, start, 0.0) when fresh; the seconds are None from a checkpoint of a version that did not count them.
    fp16's loss scale resumes where it was; a run that turns --fp16 on at a resume starts at the initial scale."""
    state = load_checkpoint(config.resume_from, config.out_dir, config.run_id)
    if state is None:
        return 0, {"epoch": 0, "index": 0}, 0.0
    built_kernels = kernel_flags(optimizer)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:  # a checkpoint of another model (other sizes or vocabulary)
        saved = state["model"] if isinstance(state.get("model"), dict) else {}
        if "position_delta" in model.state_dict() and saved and "position_delta" not in saved:
            raise SpanElectraError(f"resume_from: '{config.resume_from}' was written by a version whose "
                                   "--gradient_disentangled kept no position delta (the position table is now "
                                   "disentangled too), so it cannot be resumed with this one; finish the run with the "
                                   "version that started it, or start over with --overwrite_output_dir") from None
        lines = str(e).strip().split("\n")  # load_state_dict's first line only says that there are errors
        reason = lines[1].strip() if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        raise SpanElectraError(f"resume_from: '{config.resume_from}' does not fit this model ({reason[:160]}); "
                               "resume with the settings and features it was trained with") from None
    keep_built_kernels(optimizer, built_kernels)
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and scaler.is_enabled() and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], model_device(model))
    return state["step"], state["data"], state.get("run_seconds")


def model_device(model):
    """The device of the model's parameters."""
    return next(model.parameters()).device


def kernel_flags(optimizer):
    """Each param group's AdamW kernel flags (fused, foreach), as build_optimizer chose them for this device."""
    return [{k: group[k] for k in ("fused", "foreach") if k in group} for group in optimizer.param_groups]


def keep_built_kernels(optimizer, built):
    """After load_state_dict, AdamW's kernels are the ones adamw built for this device again: it takes the saved
    groups' flags, so a checkpoint of a CPU run with foreach (a torch before 2.4) resumed on a GPU would step with
    foreach, a GPU one on such a CPU fused; a fused step wants its step counts on the parameters' device, the
    others on the CPU."""
    for group, flags in zip(optimizer.param_groups, built):
        group.update(flags)
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if torch.is_tensor(step):
                optimizer.state[p]["step"] = step.to(p.device if group.get("fused") else "cpu", torch.float32)


def start_run(config, model, loss_and_metrics, optimizer, scheduler, train_set, runtime, script_name, inputs=None,
              scaler=None):
    """Everything between building the model and the first step: the out_dir and its config (rank 0),
    resuming, torch.compile and DDP, the batch stream and the metrics log. loss_and_metrics(model,
    batch, **kwargs) -> (loss, metrics) is the step's forward pass (see TrainStep); inputs: digests of
    the run's other inputs, part of its identity (see run_identity).
    Returns (train step to call in the loop, batch stream, metrics log, first step)."""
    claim_out_dir(config, train_set.features, script_name, runtime, inputs)
    if runtime.is_main:
        save_config(config, config.out_dir, script_name)
        warn_high_learning_rate(config.learning_rate)
        warn_slow_precision(runtime, config)
    step, position, run_seconds = resume_training_state(config, model, optimizer, scheduler, scaler)
    if runtime.is_main and step:
        drop_checkpoints_after(config.out_dir, step)
    if step >= config.max_steps:
        logger.info("the run in %s already reached step %d (max_steps %d): nothing left to train; raise --max_steps "
                    "to train it further", config.out_dir, step, config.max_steps)
    train_step = TrainStep(model, loss_and_metrics)
    if config.compile and replays_cuda_graphs(runtime) and config.gradient_accumulation_steps > 1:
        keep_gradients(model, optimizer)
    if config.compile:
        # every run compiles TrainStep.forward: runs of other recipes in one process (a notebook, the comparison)
        # would fill dynamo's cache of it up to its recompile limit, past which a step runs eagerly; the on-disk
        # caches keep a new run's compile fast, and the earlier runs' CUDA graph pools are freed
        torch._dynamo.reset()
    train_step = wrap_ddp(CompiledStep(train_step, runtime) if config.compile else train_step, runtime)
    stream = BatchStream(train_set, data_workers(config.num_workers, runtime), runtime.device.type == "cuda",
                         **position)
    return train_step, stream, MetricsLog(config.out_dir, runtime, resume_step=step, run_seconds=run_seconds), step


class TrainStep(torch.nn.Module):
    """A model and the function that makes (loss, metrics) of its forward pass, as one module, so that
    torch.compile captures the metrics with the model: on a GPU their ~70 small kernels join the step's
    CUDA graph instead of each being launched from Python after it. DDP wraps it as it would the model."""

    def __init__(self, model, loss_and_metrics):
        super().__init__()
        self.model, self.loss_and_metrics = model, loss_and_metrics

    def forward(self, batch, **kwargs):
        return self.loss_and_metrics(self.model, batch, **kwargs)


# ---------------------------------------------------------------- who owns out_dir
def run_identity(config, features, script_name, inputs=None, processes=1):
    """What must not change while a run is resumed: the script, every setting but MUTABLE_SETTINGS,
    the features' tokenizer, shape and training set (their path may move), the number of processes
    (each reads its own batches), and the digests of other inputs (the two-stage generator's
    weights: retrained in place, it would make a resumed run two runs)."""
    fixed = {k: v for k, v in dataclasses.asdict(config).items() if k not in MUTABLE_SETTINGS}
    fixed.update(script=script_name, tokenizer_hash=features.meta.get("tokenizer_hash"),
                 max_seq_len=features.max_seq_len, vocab_size=features.vocab_size,
                 train_sequences=features.meta.get("num_sequences", {}).get("train"),
                 train_sequences_digest=features.meta.get("content_digest", {}).get("train"), processes=processes,
                 **(inputs or {}))
    return fixed


DIGESTS = {  # identity keys that are digests of inputs -> (the field that gave the input, what it is)
    "tokenizer_hash": ("features_dir", "the features' tokenizer"),
    "train_sequences_digest": ("features_dir", "the features' training sequences (rebuilt from other text?)"),
    "generator_weights": ("generator_dir", "the generator's weights"),
    "init_discriminator_weights": ("init_from", "the discriminator weights"),
    "init_generator_weights": ("init_from", "the generator weights")}


def size_label(config):
    """The model's size for the log: --model_size, or where the model came from with --init_from."""
    return f"as in {config.init_from}" if config.init_from else config.model_size


def parameter_count(model, trainable_only=False):
    """The model's parameter count for the log: '13.5M', or '41.2k' for a tiny model (not '0.0M')."""
    n = sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


# identity keys that runs started by earlier versions did not record: not compared when missing
LATER_KEYS = ("train_sequences", "processes", "train_sequences_digest")


def holds_a_run(out_dir):
    """True when out_dir holds checkpoints, metrics or models: a run.json alone is a start that was
    refused or stopped before its first log line, and holds nothing to protect or resume."""
    return any(os.path.exists(p) for p in run_outputs(out_dir) if os.path.basename(p) != RUN_FILE)


def input_folders(config, identity):
    """{field: folder} of the inputs whose digests identity holds (the two-stage generator_dir, features_dir),
    resolved, recorded beside the run's identity: a digest that changes with the folder is another folder
    named, not the same one rewritten."""
    fields = {DIGESTS[key][0] for key in identity if key in DIGESTS and getattr(config, DIGESTS[key][0], None)}
    return {field: os.path.realpath(getattr(config, field)) for field in sorted(fields)}


def changed_input_message(key, old, new, out_dir, folders=({}, {})):
    """The one-line refusal for an identity key that changed since the run in out_dir started; folders: the
    input folders the run recorded and this command's (input_folders)."""
    if key in DIGESTS:
        field, what = DIGESTS[key]
        then, now = folders[0].get(field), folders[1].get(field)
        if then and now and then != now:
            return (f"{field}: the run in '{out_dir}' was started with --{field} '{then}', and this command names "
                    f"'{now}' ({what}: another digest); resume with --{field} '{then}', or give a new --out_dir "
                    "to start a new run")
        return (f"{field}: {what} changed since the run in '{out_dir}' started (another digest), so resuming would "
                "make it two runs; put back what it started from, or start over with --overwrite_output_dir")
    if key == "train_sequences":
        return (f"features_dir: the run in '{out_dir}' started on features of {old} training sequences, these hold "
                f"{new}: another corpus; resume with the features it started on, or start over with "
                "--overwrite_output_dir")
    if key == "processes":
        return (f"processes: the run in '{out_dir}' was started by {old} process(es), now {new}; each reads its own "
                f"batches, so resume it with as many (torchrun --nproc_per_node {old}), or start over with "
                "--overwrite_output_dir")
    return (f"{key}: the run in '{out_dir}' was started with {old!r}, now {new!r}; resume with the same value, or "
            "start over with --overwrite_output_dir")


def check_not_another_output(out_dir):
    """A run's files never go into a features, tokenizer or model folder (they would mix with it, and a
    model folder would end up holding a run); a run's out_dir keeps its models in generator/, discriminator/."""
    for name, what in OUTPUT_MARKERS.items():
        if name != RUN_FILE and os.path.isfile(os.path.join(out_dir, name)):
            raise SpanElectraError(f"out_dir: '{out_dir}' holds {what} ({name}), not a training run; give the run a "
                                   "folder of its own")


def check_run(config, identity):
    """The run id to continue or start; raises a one-line error when out_dir belongs to another run or
    holds another stage's output. Reads only: nothing is written before every check has passed."""
    check_not_another_output(config.out_dir)
    path = os.path.join(config.out_dir, RUN_FILE)
    saved = None
    if os.path.exists(path) and holds_a_run(config.out_dir):
        saved = read_json(path, "its run can no longer be checked: start over with --overwrite_output_dir", "out_dir",
                          keys=("run_id", "fixed"))
    if config.resume_from:
        if saved is None and checkpoints_run_id(config.out_dir):  # its checkpoints name a run run.json no longer does
            raise SpanElectraError(f"out_dir: '{config.out_dir}' holds checkpoints but no readable {RUN_FILE} (it records "
                                   "the settings a resumed run must keep), so they cannot be resumed as this run; put "
                                   f"{RUN_FILE} back, or start over with --overwrite_output_dir")
        if saved is None:  # a run from before run.json, or nothing yet: its checkpoints are its own
            return uuid.uuid4().hex
        if saved["fixed"].get("script") != identity.get("script"):
            raise SpanElectraError(f"out_dir: '{config.out_dir}' holds a {saved['fixed'].get('script')} run, not a "
                                   f"{identity.get('script')} one; give this run its own --out_dir")
        # settings first: a changed --mode also changes which inputs there are, and the setting is the cause; of
        # the inputs, another tokenizer before another number of rows (features of the same text retokenized)
        for key in sorted(set(identity) | set(saved["fixed"]), key=lambda k: (k in DIGESTS or k == "train_sequences", k)):
            old, new = saved["fixed"].get(key), identity.get(key)
            if key in LATER_KEYS and old is None:  # not recorded (an earlier version's run, or features built
                continue                           # before the key existed): nothing to compare it with
            if old != new:
                recorded = saved.get("folders")  # none in a run of an earlier version
                folders = (recorded if isinstance(recorded, dict) else {}, input_folders(config, identity))
                raise SpanElectraError(changed_input_message(key, old, new, config.out_dir, folders))
        return saved["run_id"]
    if holds_a_run(config.out_dir) and not config.overwrite_output_dir:
        raise SpanElectraError(f"out_dir: '{config.out_dir}' holds another run (checkpoints, metrics or models); use "
                               "--resume_from latest to continue it, or --overwrite_output_dir to start over")
    return uuid.uuid4().hex


def checkpoints_run_id(out_dir):
    """The run id the latest checkpoint in out_dir carries (None: none, a checkpoint from before run ids,
    or one that cannot be read, which resuming itself then reports)."""
    checkpoints = list_checkpoints(out_dir)
    if not checkpoints:
        return None
    try:  # mmap: the tensors are not read
        state = torch.load(checkpoints[-1], map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return state.get("run_id") if isinstance(state, dict) else None


def run_outputs(out_dir):
    """What a run leaves in out_dir: what --overwrite_output_dir deletes; nothing else is touched."""
    return list_checkpoints(out_dir) + [os.path.join(out_dir, n) for n in RUN_OUTPUTS]


def clear_run(config):
    """Delete what an earlier run left in out_dir, unless an input of this run lies among it (a
    two-stage generator_dir kept inside the discriminator's out_dir would go with it)."""
    doomed = [p for p in run_outputs(config.out_dir) if os.path.exists(p)]
    for field in ("generator_dir", "features_dir"):
        given = getattr(config, field, None)
        if given and lies_within(given, doomed):
            raise SpanElectraError(f"{field}: '{given}' lies among the earlier run's outputs in out_dir "
                                   f"'{config.out_dir}', which --overwrite_output_dir deletes; give this run another "
                                   "--out_dir")
    remove_paths(run_outputs(config.out_dir))


def claim_out_dir(config, features, script_name, runtime, inputs=None):
    """Lock out_dir for this run (rank 0), check it may run there, record its identity in run.json
    and set config.run_id (checkpoints carry it). Every rank learns rank 0's verdict, so a refusal
    stops all of them."""
    error, run_id = None, None
    if runtime.is_main:
        try:
            make_out_dir(config.out_dir)
            runtime.lock = OutDirLock(config.out_dir)
            runtime.lock.acquire()
            identity = run_identity(config, features, script_name, inputs, runtime.world_size)
            run_id = check_run(config, identity)
            if not config.resume_from and config.overwrite_output_dir:
                clear_run(config)
            for stale in glob.glob(os.path.join(glob.escape(config.out_dir), "checkpoint-*.pt.tmp")):
                os.remove(stale)  # a checkpoint a killed run did not finish
            atomic_write_json(os.path.join(config.out_dir, RUN_FILE),
                              {"run_id": run_id, "fixed": identity, "folders": input_folders(config, identity)})
        except SpanElectraError as e:
            error = str(e)
            if runtime.lock is not None:  # a refused run leaves out_dir as it found it
                runtime.lock.release()
    if runtime.distributed:
        shared = [error, run_id]
        torch.distributed.broadcast_object_list(shared, src=0)
        error, run_id = shared
    if error:  # rank 0's verdict, the same on every rank
        raise SpanElectraError(error, every_rank=True)
    config.run_id = run_id


class OutDirLock:
    """out_dir/.lock holding host and pid: a second training process into the same out_dir stops with
    one line; a lock left by a process that died is taken over. Released when this process exits."""

    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, LOCK_FILE)

    def acquire(self):
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(3):
            try:
                self._create(me)
            except FileExistsError:
                owner = self.owner()
                if owner == me:
                    return
                if owner and owner.get("host") == me["host"] and pid_alive(owner.get("pid")):
                    raise SpanElectraError(f"out_dir: '{os.path.dirname(self.path)}' is in use by another training "
                                           f"process (pid {owner['pid']}); wait for it to end or choose another "
                                           "--out_dir") from None
                self._take_over(owner)  # left by a process that is gone
                continue
            atexit.register(self.release)
            return
        raise SpanElectraError(f"out_dir: '{os.path.dirname(self.path)}' is being claimed by another training process "
                               "at this moment; wait for it to end or choose another --out_dir")

    def _create(self, me):
        """The lock file, created with its content in one step (FileExistsError when there is one): a lock
        created empty and filled after would look damaged, so stale, to a process starting at that instant,
        and both would run."""
        for kind in (".tmp-", ".stale-"):  # what a process killed right here left
            for stale in glob.glob(glob.escape(self.path) + kind + "*"):
                if left_by_ended_process(stale.rsplit(kind, 1)[1]):
                    with contextlib.suppress(OSError):
                        os.remove(stale)
        tmp = f"{self.path}.tmp-{process_tag()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(me, f)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: create, then fill
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def _take_over(self, stale_owner):
        """Remove a dead process's lock, unless another process took it over first: the lock is moved
        aside, and put back when it turns out to be that process's."""
        aside = f"{self.path}.stale-{process_tag()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            with open(aside, encoding="utf-8") as f:
                moved = json.load(f)
        except (OSError, ValueError):
            moved = None
        if moved != stale_owner:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(aside)

    def owner(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def release(self):
        if self.owner() == {"host": socket.gethostname(), "pid": os.getpid()}:
            os.remove(self.path)


def compile_model(model, runtime, mix_order_reductions=True):
    """torch.compile for the training step: every batch has the same shapes, so it compiles once; on
    one GPU with CUDA graphs (mode 'reduce-overhead', whose options these are), which replay the whole
    step in one launch. mix_order_reductions=False turns off the Inductor fusion (on by default in
    recent torch: 2.13 has it on) that several projects turn off for Triton kernels that fail to build."""
    options = {"triton.cudagraphs": True} if replays_cuda_graphs(runtime) else {}
    if not mix_order_reductions:
        options["triton.mix_order_reduction"] = False
    return torch.compile(model, options=options or None)


def replays_cuda_graphs(runtime):
    """Whether a compiled step replays as CUDA graphs here: one GPU (DDP's hooks would not be captured)."""
    return runtime.device.type == "cuda" and not runtime.distributed


def mix_order_reductions_on(runtime):
    """Whether Inductor will fuse reductions of different orders into one Triton kernel here (a GPU, a torch
    that has the fusion, not turned off by TORCHINDUCTOR_MIX_ORDER_REDUCTION=0)."""
    triton_config = getattr(torch._inductor.config, "triton", None)
    return runtime.device.type == "cuda" and bool(getattr(triton_config, "mix_order_reduction", False))


class CompiledStep(torch.nn.Module):
    """--compile's training step, with fallbacks behind it. Where torch.compile cannot build the step on
    this machine (a compiler bug: Triton 3.6 failed a fused reduction kernel of the two-stage step on
    an H100 with torch 2.11; or no C++ compiler for a CPU build), it is compiled again without Inductor's
    mix-order reductions where those were on, and failing that the run trains on uncompiled, with one
    warning each time, where it would otherwise stop at its first step with a traceback."""

    def __init__(self, step, runtime):
        super().__init__()
        self.step = step
        # in a list: not a second module with the same parameters. Built lazily: each attempt compiles at its first call
        self.attempts = [functools.partial(compile_model, step, runtime)]
        if mix_order_reductions_on(runtime):
            self.attempts.append(functools.partial(compile_model, step, runtime, mix_order_reductions=False))
        self.compiled = [self.attempts.pop(0)()]
        self.built = False  # whether the compiled step has run once (and so was built whole)

    def forward(self, *args, **kwargs):
        while self.compiled:
            try:
                if self.built:
                    return self.compiled[0](*args, **kwargs)
                with backward_built_with_forward():
                    out = self.compiled[0](*args, **kwargs)
                self.built = True
                freeze_heap()
                return out
            except torch._dynamo.exc.BackendCompilerFailed as e:  # raised before any of the step ran
                self.compiled.clear()
                if self.attempts:
                    logger.warning("--compile: torch.compile could not build the training step with Inductor's "
                                   "mix-order reductions (%s); compiling it again without them", compile_failure(e))
                    self.compiled.append(self.attempts.pop(0)())
                else:
                    logger.warning("--compile: torch.compile could not build the training step on this machine (%s); "
                                   "training goes on uncompiled, slower. --compile false skips the attempt; another "
                                   "torch or Triton version may compile it", compile_failure(e))
        return self.step(*args, **kwargs)


def freeze_heap():
    """Collect once, then leave every object now alive (torch, transformers, the compiled step: ~580k on
    the CPU) out of Python's later collections. A full collection scans them all, 200-400 ms on the 2-core
    CPU: a stall of the loop, and of a GPU waiting on it, wherever it falls; now it scans only what the run
    creates from here (teardown_runtime unfreezes them)."""
    gc.collect()
    gc.freeze()


def backward_built_with_forward():
    """Compile the step's backward with its forward, at the step's first call: torch builds it lazily by
    default, at the first backward(), where a kernel Triton cannot build (the failing two-stage kernel was
    a reduction over the discriminator's loss, maybe its backward) would stop the run past CompiledStep's
    fallbacks. A no-op on a torch without the setting."""
    import torch._functorch.config as functorch_config
    if hasattr(functorch_config, "force_non_lazy_backward_lowering"):
        return functorch_config.patch(force_non_lazy_backward_lowering=True)
    return contextlib.nullcontext()


def compile_failure(error):
    """The line of a torch.compile failure that says what broke, and the kernel it broke in, if any."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Set TORCHDYNAMO_VERBOSE", "You can suppress"))]
    errors = [line for line in lines if re.match(r"[\w.]*(Error|Exception)\b", line)]
    reason = (errors or lines or [type(error).__name__])[-1][:200]
    kernel = re.search(r"Name=(\w+)", str(error))
    return f"{reason}, in {kernel.group(1)[:80]}" if kernel else reason


def mark_step_begin(config):
    """Tell CUDA graphs a new step starts (the last step's outputs may be overwritten)."""
    if config.compile:
        cudagraph_step_marker()()


@functools.lru_cache(maxsize=1)
def cudagraph_step_marker():
    """torch's call that marks a CUDA-graph step's start, wherever this torch keeps it."""
    # torch 2.1 has it only as torch._inductor.cudagraph_trees.mark_step_begin; torch.compiler's name came in 2.2
    marker = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
    if marker is None:
        from torch._inductor.cudagraph_trees import mark_step_begin as marker
    return marker


def data_workers(num_workers, runtime):
    """DataLoader workers: num_workers (at most one per available core), or by default (-1) one on a GPU, where
    masking must keep up with the step (a 128 x 128 batch masks in ~1 ms against a ~16 ms H100 step), and none on
    the CPU, where workers would take cores from the step. More workers slowed the compiled H100 step: 1,200 steps
    logged 660-795k tokens/s with one, 560-710k with eight (2026-11-26)."""
    if num_workers < 0:
        return 1 if runtime.device.type == "cuda" else 0
    cores = available_cores()
    if num_workers > cores:  # more only contend for the cores (and torch would warn in several lines)
        if runtime.is_main:
            logger.warning("num_workers: %d is more than the %d CPU core(s) this process may use; starting %d",
                           num_workers, cores, cores)
        return cores
    return num_workers


def checkpoint_problem(error):
    """Why torch.load could not read a checkpoint, in a few words (never torch's advice to unpickle it
    with weights_only=False: a file that fails the safe load is not run as code)."""
    text = first_line(error)[:160]  # zip readers' own messages run long
    if isinstance(error, EOFError) or "central directory" in text or "zip archive" in text:
        return f"empty or cut short: {text}"
    if "Weights only load failed" in text:
        return "not a checkpoint written by this project"
    return text


def load_checkpoint(resume_from, out_dir, run_id=None):
    """The training state to resume from: 'latest' (the newest readable checkpoint of run run_id in
    out_dir; None when there is none yet), or a checkpoint path. Loaded with weights_only=True: no
    pickle code runs."""
    if not resume_from:
        return None
    if resume_from == "latest":
        candidates = list_checkpoints(out_dir)[::-1]
        if not candidates:
            logger.info("resume_from latest: no checkpoint in %s yet, starting from scratch", out_dir)
            return None
    else:
        if not os.path.isfile(resume_from):
            raise SpanElectraError(f"resume_from: '{resume_from}' is not a checkpoint file; use 'latest' or a "
                                   "checkpoint-*.pt path")
        candidates = [resume_from]
    problems = []
    for path in candidates:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or corrupted file: fall back to the one before
            problems.append(checkpoint_problem(e))
        else:
            if is_training_state(state):
                break
            problems.append("not a checkpoint written by this project: it holds no training state")  # a state_dict..
        if resume_from == "latest":
            logger.warning("cannot read checkpoint %s (%s); trying the previous one", path, problems[-1])
    else:
        if resume_from != "latest":
            raise SpanElectraError(f"resume_from: cannot resume from '{resume_from}' ({problems[0]}); pass a "
                                   "checkpoint-*.pt that training wrote, or 'latest'")
        raise SpanElectraError(f"resume_from: no readable checkpoint among {', '.join(candidates)} "
                               f"({problems[0]}); delete them to start from scratch")
    if run_id and state.get("run_id", run_id) != run_id:  # a checkpoint from before run ids is taken as is
        home = os.path.dirname(path) or "."
        raise SpanElectraError(f"resume_from: '{path}' belongs to another run than the one '{out_dir}' holds "
                               f"({RUN_FILE}); resume that run from its own out_dir ('{home}') with "
                               "--resume_from latest")
    logger.info("resuming from %s (step %d)", path, state["step"])
    return state


TRAINING_STATE_KEYS = ("step", "model", "optimizer", "scheduler", "rng", "data")


def is_training_state(state):
    """Whether a loaded .pt is a checkpoint of save_training_state (a dict with the run's whole state)."""
    return (isinstance(state, dict) and all(key in state for key in TRAINING_STATE_KEYS)
            and isinstance(state["step"], int) and isinstance(state["model"], dict))


# ---------------------------------------------------------------- logging
def read_metrics(path):
    """The rows of a metrics.jsonl; a line a crash cut short is left out (and said)."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                if line.strip():
                    logger.warning("%s: a damaged line (a write cut short?) is dropped: %.60s", path, line)
    return rows


class MetricsLog:
    """Appends one JSON object per logged step to out_dir/metrics.jsonl (rank 0 only), and keeps the run's
    clock: run_seconds, the wall seconds since it started, over every resume (the work a stop lost after
    the last checkpoint is not counted: it is done again)."""

    def __init__(self, out_dir, runtime, resume_step=0, run_seconds=0.0):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.enabled = runtime.is_main
        self.seconds_before, self.started = run_seconds, time.perf_counter()
        if self.enabled:
            make_out_dir(out_dir)
            if resume_step == 0 and os.path.exists(self.path):
                os.remove(self.path)
            elif resume_step:
                self._truncate_after(resume_step)

    def _truncate_after(self, step):
        """Drop rows logged after the checkpoint we resume from, so the file reads as one run (and any
        line a crash cut short), and the closing row of a finished run that is now extended."""
        if not os.path.exists(self.path):
            return
        rows = [json.dumps(row) + "\n" for row in self.rows() if row.get("step", 0) <= step
                and row.get("event") != "done"]  # a finished run extended (a higher max_steps) goes on
        atomic_write_text(self.path, "".join(rows))  # killed mid-way, the rows before the checkpoint stay

    def rows(self):
        """The rows logged so far ([] before the first)."""
        return read_metrics(self.path) if os.path.exists(self.path) else []

    def run_seconds(self):
        """Wall seconds of the run so far, over its resumes (None when resumed from a checkpoint that did not
        count them)."""
        if self.seconds_before is None:
            return None
        return self.seconds_before + time.perf_counter() - self.started

    def write_done(self, step, model, runtime):
        """The closing row: how many processes ran, whether they ended with equal weights and the run's
        run_seconds (once: a resumed run that was already finished adds none)."""
        in_sync = ranks_in_sync(model, runtime)  # every rank takes part, whether or not a row is written
        last = self.last_row() if self.enabled else {}
        if last.get("event") == "done" and last.get("step") == step:
            return
        seconds = self.run_seconds()
        self.write({"step": step, "event": "done", "processes": runtime.world_size, "ranks_in_sync": in_sync,
                    **({"run_seconds": seconds} if seconds is not None else {})})

    def last_row(self):
        rows = self.rows()
        return rows[-1] if rows else {}

    def write(self, row):
        """One row, stamped with the time it was written (seconds since the epoch: rates against wall time,
        or against what else ran meanwhile)."""
        if self.enabled:
            row = {**row, "time": round(time.time(), 3)}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}) + "\n")


class Throughput:
    """Tokens per second of training between two logging points (time spent paused() not counted), and what
    set that pace (pace()): time in Python's garbage collector and, on a GPU, how far the host ran ahead."""

    def __init__(self, device=None, new_event=None):
        self.start, self.tokens = time.perf_counter(), 0
        on_gpu = device is not None and torch.device(device).type == "cuda"
        self.queue = GpuQueue(new_event) if on_gpu or new_event else None
        self.gc_start = gc_seconds()

    def add(self, tokens):
        self.tokens += tokens

    def step_begins(self):
        """Call as each optimizer step begins (before its first batch is copied)."""
        if self.queue:
            self.queue.step_begins()

    def step_ends(self):
        """Call once the optimizer step has been launched."""
        if self.queue:
            self.queue.step_ends()

    @contextlib.contextmanager
    def paused(self):
        """Time inside is not training time (evaluation, checkpoints) and leaves the rate alone."""
        if torch.cuda.is_initialized():  # the steps queued ahead finish first, on the training clock
            torch.cuda.synchronize()
        begin, gc_begin = time.perf_counter(), gc_seconds()
        try:
            yield
        finally:
            self.start += time.perf_counter() - begin
            self.gc_start += gc_seconds() - gc_begin

    def rate(self):
        now = time.perf_counter()
        rate = self.tokens / max(now - self.start, 1e-9)
        self.start, self.tokens = now, 0
        return rate

    def pace(self):
        """Since the last call: gc_ms, the milliseconds of training time spent in Python's garbage collector
        (a full collection stalls the loop), and gpu_queued_steps (see GpuQueue) on a GPU."""
        now = gc_seconds()
        row = {"gc_ms": 1000 * (now - self.gc_start)}
        self.gc_start = now
        return {**row, "gpu_queued_steps": self.queue.read()} if self.queue else row


def gc_seconds():
    """Seconds this process has spent in Python's garbage collector since the first call."""
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)
    if sys.unraisablehook is not _stop_signal_in_gc_hook:
        _stop_signal_in_gc_hook.previous = sys.unraisablehook
        sys.unraisablehook = _stop_signal_in_gc_hook
    return GC_CLOCK["seconds"]


GC_CLOCK = {"seconds": 0.0, "began": 0.0}


def _time_gc(phase, info):
    """gc.callbacks hook: add up the time of every collection."""
    if phase == "start":
        GC_CLOCK["began"] = time.perf_counter()
    else:
        GC_CLOCK["seconds"] += time.perf_counter() - GC_CLOCK["began"]


def _stop_signal_in_gc_hook(unraisable):
    """sys.unraisablehook: a Ctrl-C or SIGTERM that comes during a collection is raised in _time_gc (at its first
    bytecode, where no try can catch it), and Python drops what a gc callback raises ("Exception ignored"): the run
    went on. It is kept for raise_stop_kept_in_gc; anything else goes to the hook before this one."""
    if is_time_gc_failure(unraisable) and issubclass(unraisable.exc_type, KeyboardInterrupt):
        STOP_KEPT_IN_GC.append(unraisable.exc_type)
    else:
        _stop_signal_in_gc_hook.previous(unraisable)


def is_time_gc_failure(unraisable):
    """Whether the unraisable came from _time_gc: Python 3.11-3.13 hand the hook the callback itself; newer ones
    may hand it none, naming the callback in the message ('Exception ignored while calling GC callback <...>')."""
    if unraisable.object is _time_gc:
        return True
    message = unraisable.err_msg or ""
    return unraisable.object is None and "GC callback" in message and _time_gc.__name__ in message


STOP_KEPT_IN_GC = []


def raise_stop_kept_in_gc():
    """Raise the Ctrl-C or SIGTERM the collector's hook kept, now that no collection is running (delivering it again
    from the hook itself would only raise it there once more)."""
    if STOP_KEPT_IN_GC:
        kind = STOP_KEPT_IN_GC.pop()
        STOP_KEPT_IN_GC.clear()
        raise kind()


class GpuQueue:
    """How far the host runs ahead of the GPU: as each step begins, how many earlier steps the GPU has not
    finished (a CUDA event recorded at each step's end, queried without waiting). Its mean over a log window
    (gpu_queued_steps) says who sets the pace: at most 1 (the step launched last) when the GPU waits for the
    host (Python, batches, launches); well above 1 when the host runs ahead and the GPU's own speed decides
    (each log's read empties the queue: a window starts at 0). torch's profiler tells the same for a window
    of steps; this tells it for every log row of a long run."""
    CAP = 32  # steps: a host further ahead counts as this many (and keeps no more events)

    def __init__(self, new_event=None):
        self.new_event = new_event or torch.cuda.Event  # no timing: the cheapest kind to record and query
        self.pending = collections.deque()  # end events of the steps launched, oldest first (one stream)
        self.queued, self.steps = 0, 0

    def step_begins(self):
        while self.pending and self.pending[0].query():  # the GPU finishes them in order
            self.pending.popleft()
        self.queued, self.steps = self.queued + len(self.pending), self.steps + 1

    def step_ends(self):
        event = self.new_event()
        event.record()
        self.pending.append(event)
        if len(self.pending) > self.CAP:
            self.pending.popleft()

    def read(self):
        """The mean count since the last read (resets)."""
        mean, self.queued, self.steps = self.queued / max(self.steps, 1), 0, 0
        return mean


# ---------------------------------------------------------------- metrics
# Per-batch metrics are 0-d tensors computed on the device: the training step never waits for the
# GPU. MetricSums adds them up there and reads them back once per log_every.
def generator_metrics(out, batch, baseline_token=None):
    """The generator's per-batch metrics over its prediction slots; with baseline_token, also the
    accuracy of always predicting that token (the most frequent one)."""
    w, targets = out["weights"], out["targets"]
    masked = w.sum()
    real_tokens = batch["input_ids"].numel() - 2 * batch["input_ids"].shape[0]  # [CLS] and [SEP] never masked
    metrics = {"loss": out["loss"].detach(), "mlm_loss": out["mlm_loss"].detach(),
               "mlm_accuracy": (w * (out["logits"].argmax(-1) == targets)).sum() / masked.clamp(min=1),
               "mask_ratio": masked / real_tokens,
               "mean_span_length": masked / (w * (batch["span_position"] == 0)).sum().clamp(min=1)}
    if "sbo_loss" in out:
        metrics["sbo_loss"] = out["sbo_loss"].detach()
        # the span-boundary head reads the states next to each span directly, so it learns from the
        # neighbouring words long before the MLM head's attention finds them (seen on CPU)
        metrics["sbo_accuracy"] = (w * (out["sbo_logits"].argmax(-1) == targets)).sum() / masked.clamp(min=1)
    if baseline_token is not None:
        metrics["mlm_baseline_accuracy"] = (w * (targets == baseline_token)).sum() / masked.clamp(min=1)
    return metrics


def binary_auc(scores, labels):
    """ROC AUC (Mann-Whitney U: the chance a replaced token scores above an original one), a 0-d
    tensor; 0.5 is chance. It shows a discriminator learning long before its probabilities cross 0.5."""
    scores, labels = scores.flatten().float(), labels.flatten().double()
    positives = labels.sum()
    negatives = labels.numel() - positives
    # tied scores share their mean rank (a collapsed discriminator scores every token alike: AUC 0.5, whatever
    # order a sort leaves them in); [left, right) is where a score's equals lie in the sorted scores
    ordered = scores.sort().values
    left, right = (torch.searchsorted(ordered, scores, side=side) for side in ("left", "right"))
    ranks = (left + right + 1).double() / 2
    auc = ((ranks * labels).sum() - positives * (positives + 1) / 2) / (positives * negatives).clamp(min=1)
    return torch.where((positives > 0) & (negatives > 0), auc, torch.full_like(auc, 0.5))


def base_rate_loss(replaced_fraction):
    """Binary cross-entropy of always predicting the replaced fraction: what rtd_loss must beat."""
    q = min(max(replaced_fraction, 1e-9), 1 - 1e-9)
    return -(q * math.log(q) + (1 - q) * math.log(1 - q))


DISC_COUNTS = ("tokens", "replaced", "predicted", "true_positive", "correct")


def discriminator_counts(disc_out, replaced):
    """Sums over the batch's real tokens (turned into rates by finish_metrics) and its losses and AUC."""
    weights = disc_out["token_weights"]
    predicted, actual = (disc_out["logits"] > 0).to(weights.dtype), replaced.to(weights.dtype)
    counts = {"tokens": weights.sum(), "replaced": (actual * weights).sum(), "predicted": (predicted * weights).sum(),
              "true_positive": (predicted * actual * weights).sum(),
              "correct": ((predicted == actual).to(weights.dtype) * weights).sum(),
              "disc_loss": disc_out["loss"].detach(), "rtd_loss": disc_out["rtd_loss"].detach()}
    # padding (weight 0) goes first in the ranking and counts as original: only unpadded batches get an exact AUC
    scores = disc_out["logits"].detach().masked_fill(weights == 0, float("-inf"))
    counts["disc_auc"] = binary_auc(scores, actual * weights)
    if "span_loss" in disc_out:
        counts["span_loss"] = disc_out["span_loss"].detach()
    return counts


LEARNED_AUC = 0.55  # a valid disc_auc this far above chance: the discriminator has learned something
LEARNED_REPLACED = 2000  # a train window's disc_auc counts as learning over this many replaced tokens (noise < 0.01)


def learned_auc(row):
    """A logged row's disc_auc as evidence of learning: a valid row's, or a train window's over at least
    LEARNED_REPLACED replaced tokens (a collapse before the first evaluation is then still noticed); else 0."""
    if "disc_auc" not in row or (row.get("split") != "valid" and row.get("replaced_tokens", 0) < LEARNED_REPLACED):
        return 0.0
    return row["disc_auc"]


def collapse_history(out_dir):
    """What a resumed run's collapse check needs from its metrics.jsonl: the best learned_auc so far (0 for a
    fresh run), the best over the rows before its last valid row (what the next evaluation's check compares
    with: learning seen only after the first of two evaluations at chance does not count, as in collapsed)
    and that last valid row, as a list (empty before the first evaluation)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    rows = read_metrics(path) if os.path.isfile(path) else []
    valid = valid_auc_rows(rows)
    before = rows[:valid[-1]] if valid else rows
    return (max(map(learned_auc, rows), default=0.0), max(map(learned_auc, before), default=0.0),
            [rows[i] for i in valid[-1:]])


def valid_auc_rows(rows):
    """The indices of a metrics.jsonl's valid rows that hold a disc_auc (a discriminator's evaluations)."""
    return [i for i, r in enumerate(rows) if r.get("split") == "valid" and "disc_auc" in r]


def fell_to_chance(best_auc, valid_rows):
    """Collapsed: a discriminator that had learned (a disc_auc of best_auc >= LEARNED_AUC before) and is at
    chance at its last two evaluations. One evaluation at chance can be noise on a small valid set (a tiny
    joint run on the bundled sample dipped to 0.494 and came back to 0.54); one at chance that never
    learned may simply be early in its run."""
    return best_auc >= LEARNED_AUC and len(valid_rows) >= 2 and all(map(at_chance, valid_rows[-2:]))


def collapsed(rows):
    """fell_to_chance at a run's last two valid rows, against the rows logged before them."""
    valid = valid_auc_rows(rows)
    return len(valid) >= 2 and fell_to_chance(max(map(learned_auc, rows[:valid[-2]]), default=0.0),
                                              [rows[i] for i in valid[-2:]])


def at_chance(valid_row):
    """A discriminator whose valid AUC is at chance and whose loss is the base-rate loss predicts the
    replaced share everywhere: its encoder has collapsed (every token one vector), and it does not
    recover (ELECTRA's joint recipe did so once in 5,942 steps on an H100, see benchmarks/RESULTS.md)."""
    return valid_row["disc_auc"] < 0.51 and valid_row["rtd_loss"] >= valid_row["rtd_base_loss"] - 5e-4


def finish_metrics(sums, n):
    """Rates from summed counts; losses and the other metrics as means over the n batches."""
    out = {k: v / n for k, v in sums.items() if k not in DISC_COUNTS}
    if "tokens" in sums:
        tokens = max(sums["tokens"], 1)
        out["disc_accuracy"] = sums["correct"] / tokens
        out["replaced_fraction"] = sums["replaced"] / tokens
        out["replaced_tokens"] = sums["replaced"]
        out["rtd_base_loss"] = base_rate_loss(out["replaced_fraction"])
        out["disc_precision"] = sums["true_positive"] / max(sums["predicted"], 1)
        out["disc_recall"] = sums["true_positive"] / max(sums["replaced"], 1)
    return out


class MetricSums:
    """Per-batch metric tensors summed on the device, as one vector (a few kernel launches per step
    instead of two per metric); read() copies them to the host once.
    skip_nonfinite (fp16): a batch whose metrics overflowed, a step the loss scaler skips, is left out of the
    means and counted as nonfinite_batches, as transformers' Trainer leaves such losses out of its logs; only a
    window where every batch overflowed reads as NaN."""

    def __init__(self, skip_nonfinite=False):
        self.skip_nonfinite = skip_nonfinite
        self.keys, self.total, self.n = None, None, 0

    def add(self, metrics):
        keys = tuple(metrics)
        if self.keys not in (None, keys):
            raise ValueError(f"MetricSums: metrics {keys} after {self.keys}; read() before changing them")
        values = torch.stack([v.detach() for v in metrics.values()]).double()
        if self.skip_nonfinite:  # on the device: the batch's values, or zeros and a count of one overflowed batch
            finite = values.isfinite().all()
            values = torch.cat([torch.where(finite, values, 0.0), (~finite).double().reshape(1)])
        self.keys, self.total, self.n = keys, values if self.total is None else self.total + values, self.n + 1

    def read(self, runtime):
        """Means and rates of everything added since the last read, over every rank's batches; resets."""
        if not self.keys:
            return {}
        total = torch.cat([self.total, self.total.new_tensor([self.n])])
        if runtime.distributed:  # the sums and counts of all ranks: rates over all of their tokens
            torch.distributed.all_reduce(total)
        *values, n = total.tolist()  # the one host sync
        skipped = values.pop() if self.skip_nonfinite else 0
        out = finish_metrics(dict(zip(self.keys, values)), max(n - skipped, 1))
        if self.skip_nonfinite:
            if skipped == n:  # nothing finite to report: the caller's check_finite stops the run
                out = dict.fromkeys(out, math.nan)
            out["nonfinite_batches"] = int(skipped)
        self.keys, self.total, self.n = None, None, 0
        return out
