"""Where trainSpanElectra.py's loop spends its time, against the GPU's work (issue 9: the logged tokens/s
stays below bench_train.py's step).

    python benchmarks/profile_loop.py --features_dir FEAT                      # joint small, bf16 + compile on CUDA
    python benchmarks/profile_loop.py --features_dir FEAT --model_size tiny --steps 40   # a quick CPU look

Runs the real script (main(config), in a temporary folder of its own removed at the end) and times, on
the host, each phase of its loop over a window of steps after compilation: waiting for the batch,
copying it, the step's forward pass (the model, its loss and metrics: training_utils.TrainStep),
backward, summing metrics, the optimizer step, and the rest (schedule, bar, logging). torch's profiler
over the same window gives the GPU's kernel time and the host calls that wait for the GPU. A step is
host-bound when its host phases add up to its wall time while the GPU idles.
"""
import argparse
import collections
import contextlib
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trainSpanElectra  # noqa: E402
import training_utils as tu  # noqa: E402
from argument import SE_trainingConfig  # noqa: E402

WAITS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize", "cudaMemcpy ", "aten::item",
         "aten::_local_scalar_dense")


class PhaseClock:
    """Host seconds per named phase, counted only inside the window (steps start..start+count)."""

    def __init__(self, start, count):
        self.start, self.end, self.step = start, start + count, 0
        self.seconds, self.window = collections.Counter(), [None, None]

    @property
    def on(self):
        return self.start <= self.step < self.end

    def wrap(self, owner, name, phase):
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                if self.on:
                    self.seconds[phase] += time.perf_counter() - begin
        setattr(owner, name, timed)


def instrument(clock, profiler):
    """Time the loop's phases by wrapping the functions it calls; the optimizer step closes a step."""
    clock.wrap(tu.BatchStream, "__next__", "wait for batch")
    clock.wrap(tu, "to_device", "copy batch")
    clock.wrap(tu.MetricSums, "add", "sum metrics")
    clock.wrap(torch.Tensor, "backward", "backward")
    optimizer_step = tu.optimizer_step

    def step_end(*args, **kwargs):
        begin = time.perf_counter()
        optimizer_step(*args, **kwargs)
        if clock.on:
            clock.seconds["optimizer step"] += time.perf_counter() - begin
        clock.step += 1
        if clock.step == clock.start:
            profiler.start()
            clock.window[0] = time.perf_counter()
        if clock.step == clock.end:
            clock.window[1] = time.perf_counter()
            profiler.stop()
    tu.optimizer_step = step_end
    wrap_ddp = tu.wrap_ddp

    def timed_model(model, runtime):  # the step the loop calls, compiled or not (one process)
        wrapped = wrap_ddp(model, runtime)

        def call(*args, **kwargs):
            begin = time.perf_counter()
            out = wrapped(*args, **kwargs)
            if clock.on:
                clock.seconds["forward+metrics"] += time.perf_counter() - begin
            return out
        return call
    tu.wrap_ddp = timed_model


def report(clock, profiler, cuda):
    steps = clock.end - clock.start
    wall = (clock.window[1] - clock.window[0]) / steps * 1e3
    print(f"window: steps {clock.start}-{clock.end}, {wall:.2f} ms/step wall")
    for phase, seconds in clock.seconds.most_common():
        print(f"  host {phase:16s} {seconds / steps * 1e3:7.3f} ms/step")
    timed = sum(clock.seconds.values()) / steps * 1e3
    print(f"  host, phases above {timed:7.3f} ms/step; the rest of the loop {wall - timed:7.3f} ms/step")
    events = profiler.key_averages()
    if cuda:
        gpu = sum(e.device_time_total for e in events if e.device_type.name == "CUDA") / steps / 1e3
        print(f"GPU kernel time {gpu:.2f} ms/step: the GPU is busy {100 * gpu / wall:.0f}% of the window")
    waits = [e for e in events if any(e.key.startswith(w) for w in WAITS)]
    for e in sorted(waits, key=lambda e: -e.cpu_time_total):
        print(f"  waits on the device: {e.key[:40]:40s} {e.count / steps:6.2f}x/step {e.cpu_time_total / steps / 1e3:7.3f} ms/step")
    top = [e for e in profiler.events() if e.cpu_parent is None and e.name.startswith("aten::")]
    print(f"eager ops the loop starts outside compiled graphs and the optimizer: {len(top) / steps:.1f}/step")
    launches = [e for e in events if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch",
                                               "cudaMemcpyAsync")]
    for e in launches:
        print(f"  {e.key:20s} {e.count / steps:7.1f}/step")
    busiest = sorted((e for e in events if e.device_type.name == "CPU"), key=lambda e: -e.self_cpu_time_total)[:12]
    print("host ops by self time:")
    for e in busiest:
        print(f"  {e.self_cpu_time_total / steps / 1e3:7.3f} ms/step {e.count / steps:7.1f}x  {e.key[:90]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features_dir", required=True)
    parser.add_argument("--model_size", default="small")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--start", type=int, default=300, help="first profiled step (after compilation)")
    parser.add_argument("--steps", type=int, default=100, help="profiled steps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no_compile", action="store_true")
    args = parser.parse_args()
    device = tu.resolve_device(args.device)
    cuda = device.type == "cuda"
    clock = PhaseClock(args.start, args.steps)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    profiler = torch.profiler.profile(activities=activities)
    instrument(clock, profiler)
    # a folder of its own per run: a fixed one was shared by two runs at once, and a stale run there resumed
    out_dir = tempfile.mkdtemp(prefix="profile_loop-")
    config = SE_trainingConfig(
        mode="joint", features_dir=args.features_dir, out_dir=out_dir, model_size=args.model_size,
        train_batch_size=args.batch_size, bf16=cuda, compile=not args.no_compile, device=args.device,
        max_steps=args.start + args.steps + 1, log_every=args.start + args.steps + 1, eval_every=10 ** 9,
        save_every=10 ** 9)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # the bar would interleave
            trainSpanElectra.main(config)                                            # with the report
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)  # only the timings are wanted, not the run's model
    report(clock, profiler, cuda)


if __name__ == "__main__":
    main()
