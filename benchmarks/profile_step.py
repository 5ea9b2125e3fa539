"""Where a training step's time goes: torch.profiler over a few full steps (augmentation included).

    python benchmarks/profile_step.py --preset cifar
    python benchmarks/profile_step.py --preset cifar --set '{"batch_size_per_gpu": 512}' --rows 30

Prints the operators that take the most time (device time on a GPU, CPU time otherwise) and the
number of operator calls per step, which shows launch-bound work on a GPU.
"""

from __future__ import annotations

import json
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from throughput import build_trainer, step_parser


def main() -> None:
    ap = step_parser(__doc__, steps=2)
    ap.add_argument("--rows", type=int, default=25, help="operators to list")
    args = ap.parse_args()
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
