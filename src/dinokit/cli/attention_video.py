"""``dinokit attention-video``: attention of every frame of a video or frame folder, as GIF or MP4."""

from __future__ import annotations

import argparse
from pathlib import Path

from .argtypes import natural_int, positive_float, positive_int
from .attention import add_model_flags, add_threshold_flag, check_threshold, image_size_arg, load_vit
from .extract import add_bool


def register(sub) -> None:
    p = sub.add_parser("attention-video", help="attention maps over the frames of a video, as GIF/MP4",
                       description="Each output frame shows the input frame and its mean attention over "
                                   "heads (or, with --threshold, the masks of all heads) side by side. "
                                   "Video files and .mp4 output need: pip install 'dinokit[video]'.")
    add_model_flags(p)
    p.add_argument("--input", "--input_path", required=True, help="video file, .gif, or folder of frames")
    p.add_argument("--output", "--output_path", required=True,
                   help="out.gif or out.mp4; a folder (the release's --output_path) gets video.<--video_format>")
    p.add_argument("--video_format", default="mp4", choices=["mp4", "avi", "gif"],
                   help="format of the video written into an --output folder")
    add_bool(p, "--video_only", "accepted for the release's command lines: only the video is ever written",
             default=False)
    p.add_argument("--fps", type=positive_float, default=None, help="frame rate (default: the input's, 10 for frames)")
    add_threshold_flag(p)
    p.add_argument("--image_size", "--resize", type=natural_int, nargs="+", default=None,
                   help="resize frames to H W, or one value: shorter side (default: keep)")
    p.add_argument("--max_frames", type=positive_int, default=None, help="stop after this many frames")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..outputs import output_file
    from ..viz.video import VIDEO_SUFFIXES, attention_video, require_imageio

    threshold = check_threshold(args.threshold)
    image_size = image_size_arg(args.image_size)
    if not Path(args.output).suffix:  # a folder, as the release's --output_path
        args.output = str(Path(args.output) / f"video.{args.video_format}")
    suffix = Path(args.output).suffix.lower()
    if suffix not in (".gif",) + VIDEO_SUFFIXES:
        raise ConfigError(f"--output {args.output!r}: use a .gif or .mp4 file name")
    if suffix in VIDEO_SUFFIXES:
        require_imageio()  # a missing optional dependency fails before the model loads
    output_file(args.output)
    model = load_vit(args)
    out = attention_video(model, args.input, args.output, args.fps, threshold, image_size, args.max_frames)
    print(f"wrote {out}")
    return 0
