"""Where a training step's time goes: torch.profiler over a few full steps (augmentation included).

    python benchmarks/profile_step.py --preset cifar
    python benchmarks/profile_step.py --preset cifar --set '{"batch_size_per_gpu": 512}' --rows 30
    python benchmarks/profile_step.py --preset cifar --wall --shapes

Prints the operators that take the most time (device time on a GPU, CPU time otherwise) and the
number of operator calls per step, which shows launch-bound work on a GPU.

``--wall`` (CPU) times each operator by the wall clock around its call instead: on the AMX
machines torch.profiler reported element-wise backward operators 4-6x slower than they run
(GELU's backward 13 ms a call in the profile, 3 ms by the clock), which points at the wrong
operators. ``--shapes`` (implies ``--wall``) splits the rows by the operands' shapes, strides
and dtypes.
"""

from __future__ import annotations

import collections
import json
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from throughput import build_trainer, step_parser


class WallClock(TorchDispatchMode):
    """Seconds and calls per ATen operator, measured around each call (CPU: calls are synchronous)."""

    def __init__(self, shapes: bool = False):
        super().__init__()
        self.shapes = shapes
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        key = str(func)
        if self.shapes:
            key += " " + " ".join(f"{tuple(a.shape)}{a.stride()}{str(a.dtype)[6:]}"
                                  for a in args if isinstance(a, torch.Tensor))
        self.seconds[key] += time.perf_counter() - t0
        self.calls[key] += 1
        return out

    def table(self, steps: int, rows: int) -> str:
        total = sum(self.seconds.values())
        lines = [f"{'operator':<70} {'ms/step':>9} {'share':>6} {'calls':>6}"]
        for key, s in sorted(self.seconds.items(), key=lambda kv: -kv[1])[:rows]:
            lines.append(f"{key[:70]:<70} {1000 * s / steps:9.1f} {100 * s / total:5.1f}% "
                         f"{self.calls[key] // steps:6d}")
        lines.append(f"{'all operators':<70} {1000 * total / steps:9.1f}")
        return "\n".join(lines)


def main() -> None:
    ap = step_parser(__doc__, steps=2)
    ap.add_argument("--rows", type=int, default=25, help="operators to list")
    ap.add_argument("--wall", action="store_true", help="time each operator by the wall clock (CPU)")
    ap.add_argument("--shapes", action="store_true", help="--wall with one row per operand shapes")
    args = ap.parse_args()
    args.wall = args.wall or args.shapes
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(args.preset, args.data, out, precision=args.precision, compile=args.compile,
                                **json.loads(args.set))
        cuda = trainer.device.type == "cuda"
        batches = trainer.data.epoch(0)

        def step(i: int) -> None:
            images, hw = next(batches)
            trainer.train_step(images, hw, i, 0, trainer.sched.at(i, 0, 0.0))[0].item()

        for i in range(args.warmup):
            step(i)
        if args.wall and cuda:
            print("--wall times CPU operators; on a GPU the profiler's device times follow")
        if args.wall and not cuda:
            with WallClock(args.shapes) as clock:
                for i in range(args.steps):
                    step(args.warmup + i)
            print(clock.table(args.steps, args.rows))
            return
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            for i in range(args.steps):
                step(args.warmup + i)
            if cuda:
                torch.cuda.synchronize()
    events = prof.key_averages()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))
    launches = sum(e.count for e in events if "LaunchKernel" in e.key)
    print(f"{args.preset}: {sum(e.count for e in events) / args.steps:.0f} profiled operator calls and "
          f"{launches / args.steps:.0f} kernel launches per step, device {trainer.device}, "
          f"precision {trainer.precision}")


if __name__ == "__main__":
    main()
