"""`timecycle visualize texture`: the texture / correspondence figure for one video.

    timecycle visualize texture --video clip.mp4 --encoder resnet18 --weights crw.pth --out fig/
    timecycle visualize texture --video frames/ --encoder pixel --step 3 --texture colors --out fig/
"""

from __future__ import annotations

import argparse

from timecycle.cli.common import (
    add_encoder_args,
    check_at_least,
    check_out_not_frames,
    check_positive,
    load_encoder,
)
from timecycle.datasets.outputs import check_output_folder, output_folder
from timecycle.errors import UserError


def _indices(text: str) -> list[int]:
    try:
        indices = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        indices = []
    if not indices:  # "," or "": an empty list would silently fall back to the default 0,5
        raise argparse.ArgumentTypeError(f"expected comma-separated frame numbers, got {text!r}")
    return indices


def register(sub) -> None:
    from timecycle.visualisation.texture import RADIUS, TEMPERATURE, TEXTURES, TOPK

    p = sub.add_parser("visualize", help="figures of what an encoder's features match")
    kinds = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    t = kinds.add_parser("texture", help="carry a texture (or colours) from frame to frame by feature affinity")
    t.add_argument("--video", required=True, help="a video file (mp4/avi/mkv/webm) or a folder of frames")
    add_encoder_args(t)
    which = t.add_mutually_exclusive_group()
    which.add_argument("--frames", type=_indices, help="frame numbers, e.g. 0,5 (default 0,5)")
    which.add_argument("--step", type=int, help="every k-th frame from frame 0")
    t.add_argument("--max-frames", type=int, default=48, help="frames used with --step (default 48)")
    t.add_argument("--texture", choices=TEXTURES, default="checker",
                   help="checker: a texture painted on the first frame, carried along; "
                        "colors: each frame's colours copied into the next listed one (default checker)")
    t.add_argument("--short-side", type=int, default=480,
                   help="larger frames are resized to this short side (default 480, as DAVIS)")
    t.add_argument("--topk", type=int, default=TOPK,
                   help=f"source positions mixed per target position (default {TOPK}, CRW)")
    t.add_argument("--temperature", type=float, default=TEMPERATURE,
                   help=f"softmax temperature (default {TEMPERATURE}, CRW)")
    t.add_argument("--radius", type=float, default=RADIUS,
                   help=f"match only within this many feature cells, 0: anywhere (default {RADIUS:g}, CRW)")
    t.add_argument("--format", choices=("webp", "gif", "mp4"), default="webp",
                   help="animation format (default webp)")
    t.add_argument("--fps", type=float, default=4.0, help="animation frame rate (default 4)")
    t.add_argument("--out", required=True, help="output folder: texture_strip.png and texture.<format>")
    t.set_defaults(run=run_texture)


def run_texture(args: argparse.Namespace) -> int:
    from timecycle.engine.runtime import resolve_device
    from timecycle.propagation.protocols import CRW
    from timecycle.propagation.video import FrameEncoder
    from timecycle.visualisation.texture import encode, read_video, write_texture_figure

    # Before any work: out of range, these fail deep inside (a division by zero) or give a
    # figure of nothing (--topk 0 mixes no source position).
    check_at_least(args, 1, "--topk", "--short-side")
    check_at_least(args, 0, "--radius")
    check_positive(args, "--temperature", "--fps")
    if args.step is not None:
        check_at_least(args, 2, "--max-frames")
    check_output_folder(args.out)  # before the encoder and the video are loaded
    check_out_not_frames(args.out, args.video)
    encoder, _ = load_encoder(args, CRW.name)
    if encoder is None:
        raise UserError("the identity baseline has no features to match; choose another --encoder")
    frames, indices = read_video(args.video, short_side=args.short_side, frames=args.frames,
                                 step=args.step, max_frames=args.max_frames)
    # CRW protocol: frames encoded at their own size, which keeps the strip and features aligned.
    feats = encode(frames, FrameEncoder(encoder, CRW, resolve_device(args.device)))
    with output_folder(args.out) as out:
        paths = write_texture_figure(list(frames), feats, out, args.texture, args.topk,
                                     args.temperature, args.radius or None, args.format,
                                     args.fps, indices=indices)
    print(f"frames {','.join(map(str, indices))}: {paths['strip']} {paths['animation']}")
    return 0
