"""A user's clip for the demo: decoded, its first-frame mask checked, laid out as a DAVIS root."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from timecycle.datasets.io import read_frame, read_mask, write_mask
from timecycle.errors import UserError

SEQUENCE = "clip"  # the user's clip, laid out as a one-sequence DAVIS root


def decode_clip(video: str) -> list:
    """The frames of a user's clip (a video file or a frame folder), as (H, W, 3) uint8."""
    from timecycle.data.video import list_frame_files
    from timecycle.data.video import read_frames as decode

    src = Path(video)
    if src.is_dir():
        frames = [read_frame(src / n) for n in list_frame_files(src)]
    elif src.is_file():
        from timecycle.data.video import DecodeError, check_whole, probe_video

        try:
            info = probe_video(src)
            check_whole(src, info)
            n = info["n_frames"]
            frames = list(decode(src, "video", list(range(n)), short_side=None))
        except DecodeError as err:
            raise UserError(f"cannot decode the video ({err.reason})", src) from None
    else:
        raise UserError("no such video file or frame folder", src)
    if len(frames) < 2:
        raise UserError("the clip needs at least 2 frames", src)
    return frames


def read_clip_mask(mask: str, frames: list) -> np.ndarray:
    """The first-frame ids of a user's clip, checked against its frames."""
    ids = read_mask(mask)
    if ids.shape != frames[0].shape[:2]:
        raise UserError(f"mask is {ids.shape[1]}x{ids.shape[0]}, the clip's frames "
                        f"{frames[0].shape[1]}x{frames[0].shape[0]}", mask)
    return ids


def clip_root(out: Path, frames: list, ids: np.ndarray) -> Path:
    """Lay a user's clip and first-frame ids out as a one-sequence DAVIS root."""
    from PIL import Image

    root = out / "data" / "clip"
    shutil.rmtree(root, ignore_errors=True)
    frames_dir = root / "JPEGImages" / "480p" / SEQUENCE
    frames_dir.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(frames_dir / f"{i:05d}.jpg", quality=95)
    write_mask(root / "Annotations" / "480p" / SEQUENCE / "00000.png", ids)
    return root
