"""What `timecycle track` reads: a user's video as a stream of frames, a first-frame mask, and
points to follow. Every problem is a one-line `UserError` naming the file.

Pixel convention for points (the CSV, `tracks.npy`, `flow.npy`): x to the right, y down, in
pixels of the video's frames, (0, 0) the centre of the top-left pixel, so a W x H frame spans
[-0.5, W - 0.5] x [-0.5, H - 0.5].
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timecycle.data.video import END_SLACK, VIDEO_SUFFIXES, declared_frames, frame_to_rgb
from timecycle.datasets.io import frame_files, read_mask
from timecycle.errors import UserError
from timecycle.propagation.video import read_frames

POINTS_HEADER = ("id", "x", "y")


class FrameStream:
    """The frames of a video file (decoded by PyAV, one at a time) or of a frame folder (jpg or
    png, in name order), as (H, W, 3) uint8 RGB. Nothing is decoded before it is asked for and
    nothing is kept after it is yielded, so a stream holds at most one frame whatever the
    video's length. Every iteration starts again from frame 0."""

    def __init__(self, source: str | Path):
        self.path = Path(source)
        if self.path.is_dir():
            self.frames = frame_files(self.path, "frame")
        elif self.path.is_file():
            if self.path.suffix.lower() not in VIDEO_SUFFIXES:
                raise UserError(f"not a video file ({', '.join(VIDEO_SUFFIXES)}) or a frame "
                                "folder", self.path)
            self.frames = None
        else:
            raise UserError("no such video file or frame folder", self.path)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.frames is not None:
            yield from read_frames(self.frames)  # a frame of another size is a UserError
            return
        yield from _decode(self.path)

    def rate(self) -> float | None:
        """Frames per second of a video file (None for a frame folder or when unknown)."""
        if self.frames is not None:
            return None
        import av

        try:
            with av.open(str(self.path)) as container:
                rate = container.streams.video[0].average_rate if container.streams.video else None
        except (av.FFmpegError, OSError, ValueError):
            return None
        return float(rate) if rate else None

    def first(self) -> np.ndarray:
        """Frame 0; a UserError when the video holds no frame or cannot be read."""
        frames = iter(self)
        try:
            frame = next(frames, None)
        finally:
            frames.close()
        if frame is None:
            raise UserError("the video holds no frames", self.path)
        return frame


def _decode(path: Path) -> Iterator[np.ndarray]:
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise UserError(f"cannot read the video ({err})", path) from None
    try:
        if not container.streams.video:
            raise UserError("the file holds no video stream", path)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = declared_frames(container, stream)  # as probe_video reads it; 0: unknown
        size, count = None, 0
        try:
            for frame in container.decode(stream):
                rgb = frame_to_rgb(frame)
                if size is None:
                    size = rgb.shape
                elif rgb.shape != size:
                    raise UserError(f"frame size changes mid-stream ({size[1]}x{size[0]} to "
                                    f"{rgb.shape[1]}x{rgb.shape[0]})", path)
                count += 1
                yield rgb
        except av.FFmpegError as err:
            raise UserError(f"cannot decode the video ({err})", path) from None
        # With frame threads FFmpeg ends a truncated stream quietly instead of raising: the
        # outputs would cover its first frames only and look complete.
        if declared - count > END_SLACK:
            raise UserError(f"the video ends after {count} of the {declared} frames its header "
                            "declares: the file is truncated or damaged", path)
    finally:
        container.close()


def read_first_mask(path: str | Path, frame_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 object ids of the first frame: the frame's size and at least one object."""
    ids = read_mask(path)
    if ids.shape != tuple(frame_hw):
        raise UserError(f"mask is {ids.shape[1]}x{ids.shape[0]}, the video's frames "
                        f"{frame_hw[1]}x{frame_hw[0]}", path)
    if not ids.any():
        raise UserError("mask holds no object (every pixel is 0, the background)", path)
    return ids


@dataclass(frozen=True)
class Points:
    """Points to follow: their ids (the CSV's order) and (K, 2) float64 (x, y) in frame 0."""

    ids: tuple[str, ...]
    xy: np.ndarray


def read_points(path: str | Path, frame_hw: tuple[int, int]) -> Points:
    """A CSV with header `id,x,y` and one point per row, inside the frame (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"cannot read the points CSV ({err})", path) from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    header = tuple(c.strip().lower() for c in rows[0]) if rows else ()
    if header != POINTS_HEADER:
        raise UserError(f"points CSV must start with the header {','.join(POINTS_HEADER)} "
                        f"(found {','.join(header) or 'nothing'})", path)
    if len(rows) < 2:
        raise UserError("points CSV holds no point", path)
    h, w = frame_hw
    ids, xy = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3:
            raise UserError(f"line {line}: expected 3 values (id,x,y), found {len(row)}", path)
        pid = row[0].strip()
        try:
            x, y = float(row[1]), float(row[2])
        except ValueError:
            raise UserError(f"line {line}: x and y must be numbers, found {row[1]!r}, {row[2]!r}",
                            path) from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise UserError(f"line {line}: point {pid!r} has a non-finite coordinate", path)
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            raise UserError(f"line {line}: point {pid!r} at ({x:g}, {y:g}) is outside the "
                            f"{w}x{h} frame (x in [-0.5, {w - 0.5:g}], y in [-0.5, "
                            f"{h - 0.5:g}])", path)
        if pid in ids:
            raise UserError(f"line {line}: point id {pid!r} appears twice", path)
        ids.append(pid)
        xy.append((x, y))
    return Points(tuple(ids), np.asarray(xy, np.float64))


__all__ = ["FrameStream", "Points", "read_first_mask", "read_points"]
