"""Speed of the weighted k-NN classifier: 50,000 train x 10,000 test x 384-d features, k = 20.

    python benchmarks/knn_speed.py                      # auto precision (bf16 shortlist on CPU), and fp32
    python benchmarks/knn_speed.py --k 10 20 100 200    # the evaluation's usual list of k
    python benchmarks/knn_speed.py --device cuda

Features are random and L2-normalised, labels uniform over 10 classes. Reports the best wall time
over ``--repeats`` runs of ``knn_evaluate`` (normalisation, neighbour search, votes, accuracy) for
each precision, checks that both precisions give the same accuracies, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dinokit.eval.knn import knn_evaluate  # noqa: E402
from dinokit.runtime import resolve_device  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=50_000)
    p.add_argument("--test", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--k", type=int, nargs="+", default=[20])
    p.add_argument("--precisions", nargs="+", default=["auto", "fp32"], choices=["auto", "fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(args.train, args.dim, generator=g), dim=1).to(device)
    test = torch.nn.functional.normalize(torch.randn(args.test, args.dim, generator=g), dim=1).to(device)
    train_y = torch.randint(0, args.classes, (args.train,), generator=g).to(device)
    test_y = torch.randint(0, args.classes, (args.test,), generator=g).to(device)
    print(f"k-NN: {args.train} train x {args.test} test x {args.dim}-d, k={args.k}, {args.classes} classes, "
          f"{device}, {torch.get_num_threads()} threads")
    timings, results = {}, {}
    for precision in args.precisions:
        best = float("inf")
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            res = knn_evaluate(train, train_y, test, test_y, ks=args.k, precision=precision)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        timings[precision], results[precision] = best, res
        top1 = ", ".join(f"k={k}: {r['top1']:.2f}" for k, r in res.items())
        print(f"  {precision:5s} {best:7.3f} s   top-1 {top1}")
    same = all(r == next(iter(results.values())) for r in results.values())
    print(f"  precisions agree: {same}")
    print(json.dumps({"benchmark": "knn_speed", "train": args.train, "test": args.test, "dim": args.dim,
                      "k": args.k, "device": str(device), "threads": torch.get_num_threads(),
                      "seconds": {p: round(t, 3) for p, t in timings.items()}, "results_agree": same}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
