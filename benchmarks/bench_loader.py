"""What handing a batch from a DataLoader worker to the training loop costs the loop: ours against a plain DataLoader.

    python benchmarks/bench_loader.py                  # CPU
    python benchmarks/bench_loader.py --device cuda    # also pins and copies each batch to the GPU

Both serve the same 128 x 128 SEDataset-shaped batches (8 int64 tensors, 0.36 MB) from one worker,
while the loop spends --step_ms of busy Python per step, as a loop that launches a step's kernels does.
  plain: torch.utils.data.DataLoader(num_workers=1, prefetch_factor=4, pin_memory on CUDA): a worker
         hands over each tensor in shared memory, torch's pinning thread pins it.
  ours:  training_utils.BatchStream: the worker writes the batch into a shared slot made once and
         sends its number; the loop copies it into a pinned buffer of a small ring.
Prints, per batch, the loop's wall time beyond its own step (what the GPU would wait for, were the
step its only work) and the slowest hand-over, and the ratio as JSON on the last line. Then the wait
for each epoch's first batch (--epoch_batches per epoch): a plain DataLoader iterated once per epoch
starts its worker again each time, ours keeps its worker from epoch to epoch.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import training_utils as tu  # noqa: E402


class Batches(torch.utils.data.Dataset):
    """SEDataset-shaped batches, cheap to make: the worker's own time is not what is measured."""

    def __init__(self, batch_size=128, seq_len=128, slots=24, batches=10 ** 6):
        self.shapes = {"input_ids": (batch_size, seq_len), "original_ids": (batch_size, seq_len),
                       **{name: (batch_size, slots) for name in ("positions", "labels", "weights", "span_position",
                                                                 "left", "right")}}
        self.batches = batches

    def __len__(self):
        return self.batches

    def set_epoch(self, epoch):
        pass

    def __getitem__(self, index):
        return {name: torch.full(shape, index, dtype=torch.int64) for name, shape in self.shapes.items()}


def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def loop_overhead(next_batch, device, steps, step_ms):
    """Per batch: the loop's wall milliseconds beyond its step, and each hand-over's milliseconds."""
    for _ in range(20):  # the worker starts and fills its queue
        tu.to_device(next_batch(), device)
        busy(step_ms / 1e3)
    takes, start = [], time.perf_counter()
    for _ in range(steps):
        begin = time.perf_counter()
        batch = tu.to_device(next_batch(), device)
        takes.append((time.perf_counter() - begin) * 1e3)
        busy(step_ms / 1e3)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert int(batch["input_ids"][0, 0]) == int(batch["original_ids"][-1, -1])  # a whole batch arrived
    return (time.perf_counter() - start) / steps * 1e3 - step_ms, takes


def epoch_start_waits(batches, device, epochs, step_ms):
    """Milliseconds the loop waits for each epoch's first batch (after the first epoch): a plain
    DataLoader, iterated once per epoch, against ours."""
    def plain():
        loader = torch.utils.data.DataLoader(Batches(batches=batches), batch_size=None, num_workers=1,
                                             prefetch_factor=4, pin_memory=device.type == "cuda")
        while True:
            yield from loader
    stream = tu.BatchStream(Batches(batches=batches), num_workers=1, pin_memory=device.type == "cuda")
    waits = {}
    for label, next_batch in (("plain", plain().__next__), ("ours", lambda: next(stream))):
        firsts = []
        for i in range(epochs * batches):
            begin = time.perf_counter()
            tu.to_device(next_batch(), device)
            if i % batches == 0 and i:
                firsts.append((time.perf_counter() - begin) * 1e3)
            busy(step_ms / 1e3)
        waits[label] = statistics.median(firsts)
    return waits


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--step_ms", type=float, default=4.0, help="the loop's own busy time per step")
    parser.add_argument("--epoch_batches", type=int, default=40, help="batches per epoch for the epoch-start wait")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    device = tu.resolve_device(args.device)
    cuda = device.type == "cuda"
    plain_iter = iter(torch.utils.data.DataLoader(Batches(), batch_size=None, num_workers=1, prefetch_factor=4,
                                                  pin_memory=cuda))
    plain = loop_overhead(plain_iter.__next__, device, args.steps, args.step_ms)
    del plain_iter
    stream = tu.BatchStream(Batches(), num_workers=1, pin_memory=cuda)
    ours = loop_overhead(lambda: next(stream), device, args.steps, args.step_ms)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"{name}, {os.cpu_count()} cores: one worker, 128 x 128 batches, {args.step_ms} ms step, {args.steps} steps")
    result = {"device": name}
    for label, (overhead, takes) in (("plain", plain), ("ours", ours)):
        p99 = statistics.quantiles(takes, n=100)[98]
        print(f"{label:6s} {overhead:7.3f} ms/batch beyond the step; hand-over median {statistics.median(takes):.3f} ms, "
              f"p99 {p99:.3f} ms, max {max(takes):.2f} ms")
        result.update({f"{label}_ms_per_batch": round(overhead, 3), f"{label}_p99_ms": round(p99, 3)})
    result["plain_vs_ours"] = round(plain[0] / max(ours[0], 1e-3), 2)
    starts = epoch_start_waits(args.epoch_batches, device, args.epochs, args.step_ms)
    print(f"wait for an epoch's first batch ({args.epoch_batches} batches an epoch, median of {args.epochs - 1}): "
          f"plain {starts['plain']:.2f} ms, ours {starts['ours']:.2f} ms")
    result.update({"plain_epoch_start_ms": round(starts["plain"], 2), "ours_epoch_start_ms": round(starts["ours"], 2)})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
