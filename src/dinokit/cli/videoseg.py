"""``dinokit videoseg``: DAVIS-2017 video object segmentation by label propagation.

Reads ``--data_path`` in the DAVIS layout (``JPEGImages/480p/<seq>/*.jpg``,
``Annotations/480p/<seq>/00000.png``), writes the propagated masks as palette PNGs to
``--output_dir/<seq>/``, and prints J, F and J&F means when every frame has a ground-truth mask.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from .argtypes import natural_int, positive_int
from .extract import add_backbone_args, add_runtime_args, load_backbone

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("videoseg", help="DAVIS video object segmentation by label propagation (J&F)",
                       description="Propagate the first frame's mask through each video with nearest neighbours "
                                   "of patch features, as in DINO, and score J (IoU) and F (boundary).")
    g = p.add_argument_group("data")
    g.add_argument("--data_path", required=True, help="DAVIS root (JPEGImages/, Annotations/, ImageSets/)")
    g.add_argument("--output_dir", default="davis_output", help="where <seq>/<frame>.png masks are written")
    g.add_argument("--resolution", default="480p", help="DAVIS resolution folder")
    g.add_argument("--video_list", help="file of sequence names (default: ImageSets/2017/val.txt, else all)")
    s = p.add_argument_group("propagation")
    s.add_argument("--n_last_frames", type=natural_int, default=7, help="number of preceding frames used as sources")
    s.add_argument("--size_mask_neighborhood", type=natural_int, default=12,
                   help="sources restricted to this many patches around the target (0: no restriction)")
    s.add_argument("--topk", type=positive_int, default=5, help="labels accumulated from the top k neighbours")
    s.add_argument("--frame_size", type=positive_int, default=480, help="shorter side of the frames fed to the network")
    s.add_argument("--bs", type=positive_int, default=6, help="frames per forward pass (reduce if out of memory)")
    add_backbone_args(p)
    add_runtime_args(p, batch_size=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.videoseg import PropagationConfig, evaluate_davis, list_sequences
    from ..outputs import output_folder

    start = time.perf_counter()
    config = PropagationConfig(args.n_last_frames, args.size_mask_neighborhood, args.topk,
                               frame_size=args.frame_size, batch_size=args.bs)
    sequences = list_sequences(args.data_path, args.resolution, args.video_list)
    output_folder(args.output_dir)
    model = load_backbone(args)

    def report(name: str, row: dict) -> None:
        scores = f"J {row['J']:.1f}, F {row['F']:.1f}" if "J" in row else "no complete ground truth"
        print(f"{name}: {row['frames']} frames, {scores}", flush=True)

    result = evaluate_davis(model, args.data_path, args.output_dir, config, sequences, args.resolution,
                            args.precision, on_sequence=report)
    if "JF_mean" in result:
        print(f"J&F-Mean {result['JF_mean']:.2f}, J-Mean {result['J_mean']:.2f}, F-Mean {result['F_mean']:.2f}")
    print(json.dumps({"command": "videoseg", "output_dir": args.output_dir, "sequences": len(sequences),
                      **{k: round(v, 4) for k, v in result.items() if k != "sequences"},
                      "seconds": round(time.perf_counter() - start, 2)}))
    return 0
