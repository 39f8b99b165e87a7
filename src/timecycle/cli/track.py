"""`timecycle track VIDEO`: follow a first-frame mask and/or points through your own video."""

from __future__ import annotations

import argparse
import shlex
import sys

from timecycle.cli.common import (
    add_encoder_args,
    add_precision_arg,
    check_at_least,
    check_tile,
    counted,
)
from timecycle.datasets.outputs import output_folder
from timecycle.propagation.windows import DEFAULT_TILE, MAX_TILE


def register(sub) -> None:
    from timecycle.track.presets import TRACK_PROTOCOLS

    p = sub.add_parser(
        "track", help="follow a first-frame mask and/or points through your own video",
        description="Propagate a first-frame mask and/or points through a video file "
                    "(mp4/avi/mkv/webm) or a folder of frames, and write masks, tracks, optional "
                    "dense flow, an overlay video and an HTML page into --out.")
    p.add_argument("video", metavar="VIDEO", help="a video file or a folder of jpg/png frames")
    p.add_argument("--mask", help="first-frame object ids: palettised or greyscale PNG at the "
                                  "video's size")
    p.add_argument("--points", help="CSV with header id,x,y: pixels of frame 0, (0, 0) the centre "
                                    "of the top-left pixel")
    p.add_argument("--flow", action="store_true",
                   help="also write flow.npy: per feature cell (stride 8; a ViT's patch), its motion from frame 0")
    p.add_argument("--out", required=True, help="output folder")
    add_encoder_args(p)
    p.add_argument("--protocol", default="crw",
                   help=f"one of {', '.join(TRACK_PROTOCOLS)} (default crw)")
    p.add_argument("--batch-size", type=int, default=4, help="frames encoded at once (default 4)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"query tile of restricted windows (default {DEFAULT_TILE}, at most "
                        f"{MAX_TILE})")
    add_precision_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or notices")
    p.set_defaults(run=run)


def default_weights(args: argparse.Namespace) -> list[str]:
    """Without --weights a ResNet gets the built-in weights when this install has them, else
    stays randomly initialised; returns the notes that say which."""
    from timecycle.encoder.builtin import BUILTIN, builtin_info
    from timecycle.errors import UserError

    if args.weights or args.encoder in ("identity", "pixel"):
        return []
    try:
        builtin_info(args.encoder)
    except UserError:
        return [f"no built-in weights for {args.encoder} in this installation: using a randomly "
                f"initialised {args.encoder} (seed {args.seed}); pass --weights CHECKPOINT for "
                "trained features"]
    args.weights = BUILTIN
    return [f"using the built-in {args.encoder} weights (trained by timecycle on real video; "
            "their provenance: --weights builtin in the README); pass --weights CHECKPOINT for "
            "others"]


def run(args: argparse.Namespace) -> int:
    from timecycle.cli.common import (
        check_out_not_frames,
        load_encoder,
        precision_notes,
        uses_bf16,
    )
    from timecycle.engine.runtime import environment, resolve_device
    from timecycle.errors import UserError
    from timecycle.propagation.video import FrameEncoder
    from timecycle.track import track_video
    from timecycle.track.presets import track_protocol

    if args.mask is None and args.points is None:
        raise UserError("nothing to track: give --mask, --points or both")
    if args.encoder == "identity":
        raise UserError("track needs features: choose --encoder pixel, resnet18 or resnet50")
    check_at_least(args, 1, "--batch-size")
    check_tile(args)
    check_out_not_frames(args.out, args.video)
    with output_folder(args.out):  # checked first; what a failed run added is removed
        protocol, readout = track_protocol(args.protocol)
        notes = default_weights(args)
        for note in notes:
            if not args.quiet:
                print(f"timecycle: note: {note}", file=sys.stderr)
        device = resolve_device(args.device)
        encoder, enc_info = load_encoder(args, protocol.name)
        amp = uses_bf16(args)
        notes += precision_notes(args, device) if amp else []
        record = {"command": shlex.join(["timecycle", *getattr(args, "argv", ["track"])]),
                  "protocol": protocol.to_dict(), "protocol_name": args.protocol, **enc_info,
                  "precision": "bf16" if amp else "fp32", "environment": environment(device),
                  "notes": notes}
        frame_encoder = FrameEncoder(encoder, protocol, device, amp=amp)
        result = track_video(args.video, args.out, frame_encoder,
                             protocol, readout, args.mask, args.points, args.flow, record,
                             args.batch_size, args.tile, progress=not args.quiet)
    print(f"tracked {counted(result['frames'], 'frame')} in {result['seconds']:.1f} s "
          f"({result['frames_per_second']:.2f} frames/s) -> {args.out}/index.html")
    return 0
