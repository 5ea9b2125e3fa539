"""Training throughput: full DINO steps (augmentation included) in images/s, TFLOP/s and MFU.

    python benchmarks/throughput.py --preset cifar --json
    python benchmarks/throughput.py --preset vits16 --steps 5

MFU is the achieved matrix-product rate divided by a matrix-product peak measured in the same
run on the same machine (a large square matmul in the step's precision: bf16, or fp32 on a CPU
without bf16 units, where bf16 is emulated some 100x slower). FLOPs are counted once with
``torch.utils.flop_counter`` over a whole step (forward of both networks and the student's
backward).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from dinokit.train.config import load_config  # noqa: E402
from dinokit.train.trainer import Trainer  # noqa: E402

PRESETS = {
    # (a) CIFAR preset: ViT-tiny/4, 2 x 32 px + 6 x 16 px, out_dim 65536, batch 64
    "cifar": {"preset": "cifar", "batch_size_per_gpu": 64, "local_crops_number": 6, "out_dim": 65536},
    # (b) the paper's ViT-S/16 recipe: 2 x 224 + 10 x 96, batch 32
    "vits16": {"preset": "vits16", "batch_size_per_gpu": 32, "local_crops_number": 10, "canvas_size": 256},
    # the demo preset as `make demo` trains it
    "demo": {"preset": "demo"},
    # the hour-long k-NN benchmark's recipe (benchmarks/knn_budget.py --preset cifar_resnet)
    "cifar_resnet": {"preset": "cifar_resnet"},
    # its variant for CPUs without AMX: 16 px global crops
    "cifar_resnet16": {"preset": "cifar_resnet16"},
}


PEAK_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def peak_tflops(precision: str = "bf16", n: int = 4096, seconds: float = 3.0, device: str = "cpu") -> float:
    a = torch.randn(n, n, dtype=PEAK_DTYPES[precision], device=device)
    b = torch.randn(n, n, dtype=PEAK_DTYPES[precision], device=device)
    for _ in range(2):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def build_trainer(name: str, data: str, out: str, **extra) -> Trainer:
    values = dict(PRESETS[name])
    preset = values.pop("preset")
    values.update(data_path=data, output_dir=out, cache="yes", report=False, num_workers=2)
    values.update({k: v for k, v in extra.items() if v is not None})  # None: the preset's value
    return Trainer(load_config(values, preset=preset))


def step_flops(trainer: Trainer, images, hw) -> float:
    """FLOPs of one training step, counted on the eager networks: a compiled module first called
    under FlopCounterMode is left uncompiled by dynamo for good, which would time eager steps."""
    values = trainer.sched.at(0, 0, 0.0)
    compiled = trainer.student_ddp, trainer.teacher_fwd
    trainer.student_ddp, trainer.teacher_fwd = (getattr(m, "eager", m) for m in compiled)
    try:
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(images, hw, 0, 0, values)
    finally:
        trainer.student_ddp, trainer.teacher_fwd = compiled
    return float(counter.get_total_flops())


def measure(trainer: Trainer, steps: int, warmup: int) -> tuple[float, float]:
    """(seconds per step, images per step), data fetched from the in-memory cache each step."""
    batches, epoch = trainer.data.epoch(0), 0
    times = []
    for i in range(warmup + steps):
        images_hw = next(batches, None)
        if images_hw is None:  # a large batch on the small bundled folder: start the next epoch
            epoch += 1
            batches = trainer.data.epoch(epoch)
            images_hw = next(batches)
        images, hw = images_hw
        values = trainer.sched.at(i, 0, 0.0)
        t0 = time.perf_counter()
        loss, _ = trainer.train_step(images, hw, i, 0, values)
        loss.item()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], images.shape[0]


def step_parser(doc: str, steps: int) -> argparse.ArgumentParser:
    """The flags that choose what step to run: preset, data, steps, precision, overrides."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cifar")
    ap.add_argument("--data", default=str(REPO / "data" / "cifar10-demo" / "train"))
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the networks (default: as the preset says)")
    ap.add_argument("--set", default="{}", help="JSON object of TrainConfig overrides, e.g. '{\"patch_size\": 8}'")
    return ap


def main() -> None:
    ap = step_parser(__doc__, steps=10)
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(args.preset, args.data, out, precision=args.precision, compile=args.compile,
                                **json.loads(args.set))
        images, hw = next(trainer.data.epoch(0))
        flops = step_flops(trainer, images, hw)
        sec, batch = measure(trainer, args.steps, args.warmup)
    peak = peak_tflops(trainer.precision, device=trainer.device.type)
    tflops = flops / sec / 1e12
    result = {"preset": args.preset, "device": str(trainer.device), "precision": trainer.precision,
              "batch": batch, "step_s": round(sec, 4), "images_per_s": round(batch / sec, 1),
              "gflop_per_image": round(flops / batch / 1e9, 2), "tflops": round(tflops, 3),
              "peak_tflops": round(peak, 3), "mfu": round(tflops / peak, 3), "threads": torch.get_num_threads()}
    print(f"{args.preset}: {result['images_per_s']} images/s, {result['step_s'] * 1000:.0f} ms/step, "
          f"{result['gflop_per_image']} GFLOP/image, {result['tflops']} TFLOP/s of {result['peak_tflops']} "
          f"{trainer.precision} peak = MFU {100 * result['mfu']:.1f}%")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
