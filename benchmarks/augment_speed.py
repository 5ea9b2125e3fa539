"""Speed of the batched DINO multi-crop augmentation (uint8 canvases in, normalised crops out).

    python benchmarks/augment_speed.py                 # both cases on the CPU
    python benchmarks/augment_speed.py --json          # ... and one JSON object as the last line
    python benchmarks/augment_speed.py --device cuda --case b

Cases: (a) batch 64 of 32 x 32 canvases (CIFAR) -> 2 x 32 px + 6 x 16 px crops;
(b) batch 32 of 256 x 256 canvases (ImageNet-sized) -> 2 x 224 px + 10 x 96 px crops.
Reports the median and best time per batch over ``--reps`` timed batches, and images/s at the
median. ``--tune-malloc`` keeps glibc from returning freed memory to the system after every
batch (``mallopt``): on CPUs the page faults of re-allocating large tensors otherwise cost as much
as the arithmetic.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dinokit.augment import DINOMultiCrop  # noqa: E402

CASES = {
    "a": dict(batch=64, canvas=32, global_size=32, local_size=16, local_crops_number=6),
    "b": dict(batch=32, canvas=256, global_size=224, local_size=96, local_crops_number=10),
}


def tune_malloc() -> bool:
    """Keep freed memory in the process (glibc): no trimming, a generous top pad."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad = -1, -2
    return bool(libc.mallopt(m_trim_threshold, 1 << 30) and libc.mallopt(m_top_pad, 256 << 20))


def bench(case: str, device: torch.device, reps: int, warmup: int, dtype: torch.dtype) -> dict:
    c = CASES[case]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (c["batch"], 3, c["canvas"], c["canvas"]), dtype=torch.uint8, generator=g)
    hw = torch.randint(c["canvas"] * 3 // 4, c["canvas"] + 1, (c["batch"], 2), generator=g, dtype=torch.int32)
    hw[::2] = c["canvas"]
    images, hw = images.to(device), hw.to(device)
    aug = DINOMultiCrop(global_size=c["global_size"], local_size=c["local_size"],
                        local_crops_number=c["local_crops_number"], out_dtype=dtype)
    times = []
    for i in range(warmup + reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = aug(images, hw, g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    del out
    med = statistics.median(times)
    return {"case": case, "batch": c["batch"], "canvas": c["canvas"],
            "crops": f"2x{c['global_size']} + {c['local_crops_number']}x{c['local_size']}",
            "ms_per_batch": round(med * 1e3, 3), "best_ms_per_batch": round(min(times) * 1e3, 3),
            "images_per_s": round(c["batch"] / med, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=["a", "b", "both"], default="both")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--reps", type=int, default=None, help="timed batches (default 200 for a, 10 for b)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="bfloat16 output")
    p.add_argument("--tune-malloc", action="store_true", help="see the module docstring")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = tune_malloc() if args.tune_malloc else False
    device = torch.device(args.device)
    results = []
    for case in (["a", "b"] if args.case == "both" else [args.case]):
        reps = args.reps or (200 if case == "a" else 10)
        r = bench(case, device, reps, args.warmup, torch.bfloat16 if args.bf16 else torch.float32)
        results.append(r)
        print(f"({case}) batch {r['batch']}, canvas {r['canvas']} -> {r['crops']}: {r['ms_per_batch']:.2f} ms "
              f"per batch (best {r['best_ms_per_batch']:.2f}), {r['images_per_s']:.0f} images/s")
    summary = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "malloc_tuned": tuned, "out_dtype": "bfloat16" if args.bf16 else "float32", "results": results}
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
