"""Reading a few frames of a video file or a frame folder, resized at decode time (SPEC 5).

Two kinds of source are one "video" each: a video file (mp4/avi/mkv/webm, decoded with PyAV)
and a frame folder (a folder of jpg/png images, in natural name order). Both readers return
only the frames asked for, as (T, H, W, 3) uint8 RGB with the short side resized to the
training size, so that a clip costs a handful of decoded frames, never a whole long video:

- video files: threaded decoding, one seek to the keyframe at or before the first wanted frame,
  decoding stops at the last wanted frame, and only wanted frames are converted to RGB (the
  scaling happens inside that conversion, in swscale).
- frame folders: only the wanted images are opened; JPEGs are decoded at a reduced DCT scale
  (PIL draft) when they are much larger than the training size.

Frame indices are positions in the source's native timeline: frame i of a video file is the
frame whose presentation time is i / fps after the stream start.
"""

from __future__ import annotations

import functools
import os
import re
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from timecycle.datasets.io import IMAGE_ERRORS, IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm")  # SPEC 5: a folder of mp4/avi/mkv/webm
# Frames a stream may end before the count its container declares (a count estimated from
# durations is often a frame or two long); ending earlier means the file is cut short.
END_SLACK = 2


class BadVideoWarning(RuntimeWarning):
    """A video (or frame) that could not be read was skipped; the message names the file."""


class DecodeError(Exception):
    """A video or frame that cannot be opened or decoded; the message names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) after resizing so the short side is `short_side` (aspect kept; SPEC 5)."""
    if short_side is None:
        return width, height
    if height <= width:
        return max(1, round(width * short_side / height)), short_side
    return short_side, max(1, round(height * short_side / width))


def _natural_key(name: str) -> list:
    # "frame2.jpg" before "frame10.jpg"; zero-padded names sort the same either way.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_frame_files(folder: str | Path) -> list[str]:
    """Image file names in `folder` (not recursive), in natural order; hidden files ignored."""
    names = [
        n
        for n in os.listdir(folder)
        if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)
    ]
    return sorted(names, key=_natural_key)


@functools.lru_cache(maxsize=4096)
def _cached_frame_files(folder: str) -> tuple[str, ...]:
    # One listing per folder per process: a clip reads 6 frames, listing 300 names each time
    # would cost more than reading them.
    return tuple(list_frame_files(folder))


# ---------------------------------------------------------------------------------------------
# Probing (metadata for the index)


def _pyav(path: str | Path):
    """PyAV, imported when a video file is opened: frame folders need no PyAV (a GPU machine
    may have none); without it, a video file is a DecodeError naming the file."""
    try:
        import av
    except ImportError:
        raise DecodeError(path, "PyAV is not installed: only frame folders can be read "
                                "(pip install av)") from None
    return av


def _stream_rate(stream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def declared_frames(container, stream) -> int:
    """The frame count a PyAV `container`'s video `stream` declares: `stream.frames` where the
    container stores it (mp4, avi), else the stream's own duration x the average rate (mkv,
    webm: its DURATION tag), else the container's duration where the video is its only stream
    (with audio, that is the longest stream's); 0 where none is known."""
    import av

    n = stream.frames or 0
    rate = _stream_rate(stream)
    seconds = _tag_seconds(stream.metadata.get("DURATION"))
    if stream.duration and stream.time_base:
        seconds = stream.duration * stream.time_base
    elif seconds is None and container.duration and len(container.streams) == 1:
        seconds = Fraction(container.duration, av.time_base)
    if n <= 0 and rate and seconds is not None:
        n = round(seconds * rate)
    return int(n)


def _tag_seconds(tag: str | None) -> Fraction | None:
    """Seconds of a matroska DURATION tag, "HH:MM:SS.nnnnnnnnn"; None if absent or malformed."""
    try:
        h, m, sec = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + Fraction(sec)
    except (AttributeError, ValueError):
        return None


def probe_video(path: str | Path) -> dict:
    """Frame count, fps, width, height of a video file, from container metadata.

    The count is `stream.frames` when the container stores it (mp4, avi), else stream or
    container duration * average_rate (mkv, webm), else the number of video packets (demuxed,
    not decoded). The first frame is decoded to prove the stream decodes. Raises DecodeError.
    """
    av = _pyav(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(path, "no video stream")
            stream = container.streams.video[0]
            rate = _stream_rate(stream)
            if rate is None:
                raise DecodeError(path, "no frame rate in the container")
            n = declared_frames(container, stream)
            first = next(container.decode(stream), None)
            if first is None:
                raise DecodeError(path, "no decodable video frame")
            width, height = first.width, first.height
        if n <= 0:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                n = sum(1 for p in container.demux(stream) if p.size)
        declared, n = n, _decodable_length(path, n)
    except DecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, StopIteration, RuntimeError) as err:
        raise DecodeError(path, f"cannot open video ({type(err).__name__}: {err})") from None
    return {"n_frames": int(n), "fps": float(rate), "width": width, "height": height,
            "declared_frames": int(declared)}


def check_whole(path: str | Path, info: dict) -> None:
    """A DecodeError when `probe_video`'s file decodes fewer frames than its header declares
    (beyond END_SLACK): where one video is the whole input (a texture figure, the demo; `track`
    checks as it decodes), its first frames alone would give output that looks complete.
    Training samples within the frames that decode instead."""
    declared = info.get("declared_frames", 0)
    if declared - info["n_frames"] > END_SLACK:
        raise DecodeError(path, f"the video ends after {info['n_frames']} of the {declared} "
                                "frames its header declares: the file is truncated or damaged")


def _decodable_length(path: str | Path, n: int) -> int:
    """The number of frames that really decode, given the metadata's count n.

    Headers lie: a truncated or damaged file can claim hundreds of frames more than it holds
    (../shared/data/videos/mp4/opencvdoc_tree.avi: 444 claimed, 68 decode), and every clip
    drawn past the end would then fail. Seek to the claimed last frame's keyframe and decode
    to the end or to the first damaged packet (cheap: about one group of pictures); if the
    stream stops more than 2 frames early (read_video_frames tolerates 2), the last frame
    decoded gives the true length. Without usable timestamps, frames are counted from the start.
    """
    av = _pyav(path)
    for timed in (True, False):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = _stream_rate(stream)
            time_base = Fraction(stream.time_base) if stream.time_base else None
            start = stream.start_time or 0
            timed = timed and container.format.name not in _UNTIMED_FORMATS \
                and rate is not None and time_base is not None
            if timed and n > 1:
                first_pts = start + (n - 1) / rate / time_base
                container.seek(start + int(first_pts - start), stream=stream, backward=True)
            count, last, usable = 0, -1, True
            try:
                for packet in container.demux(stream):
                    for frame in packet.decode():
                        pos = _frame_pos(frame, start, time_base, rate) if timed else count
                        if pos is None or pos <= last:
                            usable = False
                            break
                        count, last = count + 1, pos
                    if not usable:
                        break
            except (av.FFmpegError, ValueError, RuntimeError):
                pass  # a damaged packet ends the decodable part
        if usable and count:
            return n if n - 1 - last <= 2 else last + 1
    return n  # nothing decoded either way: leave it to the clip reader to report


def probe_frames(folder: str | Path) -> dict:
    """Frame count and size of a frame folder (size read from the first image; fps unknown)."""
    names = list_frame_files(folder)
    if not names:
        raise DecodeError(folder, "no jpg/png images in frame folder")
    first = Path(folder) / names[0]
    try:
        with Image.open(first) as img:
            width, height = img.size
            img.load()  # prove the first frame decodes
    except IMAGE_ERRORS as err:
        raise DecodeError(first, f"cannot read image ({err})") from None
    return {"n_frames": len(names), "fps": None, "width": width, "height": height}


# ---------------------------------------------------------------------------------------------
# Reading frames


def read_folder_frames(
    folder: str | Path, indices: list[int] | np.ndarray, short_side: int | None = 256
) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB: images `indices` (positions in natural order) of a frame folder."""
    folder = str(folder)
    names = _cached_frame_files(folder)
    out = []
    first: tuple[str, tuple[int, int]] | None = None  # a clip's frames share one size
    for i in indices:
        if not 0 <= i < len(names):
            raise DecodeError(folder, f"frame {i} requested, folder has {len(names)} images")
        path = os.path.join(folder, names[i])
        try:
            with Image.open(path) as img:
                if first is None:
                    first = (names[i], img.size)
                elif img.size != first[1]:
                    raise DecodeError(path, f"frame is {img.size[0]}x{img.size[1]}, the "
                                            f"folder's {first[0]} {first[1][0]}x{first[1][1]}")
                size = resized_size(*img.size, short_side)
                # JPEG: decode at 1/2, 1/4 or 1/8 scale (still >= target size) in the DCT domain.
                img.draft("RGB", size)
                arr = np.asarray(img.convert("RGB"))
        except IMAGE_ERRORS as err:
            raise DecodeError(path, f"cannot read image ({err})") from None
        if (arr.shape[1], arr.shape[0]) != size:
            arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
        out.append(arr)
    return np.stack(out)


# AVI stores no presentation times; with packed B-frames (DivX/Xvid) the guessed ones are out of
# order, so frames are counted from the start (no seek) instead.
_UNTIMED_FORMATS = {"avi"}


def _frame_pos(frame, start: int, time_base: Fraction, rate: Fraction) -> int | None:
    if frame.pts is None:
        return None
    return round((frame.pts - start) * time_base * rate)


def read_video_frames(
    path: str | Path,
    indices: list[int] | np.ndarray,
    short_side: int | None = 256,
    threads: int = 2,
) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB: frames `indices` (native frame numbers) of a video file.

    Seeks once to the keyframe at or before min(indices) and decodes up to max(indices). A frame
    missing from the stream (variable rate) is replaced by the next decoded one; a stream that
    ends a little early (metadata count off by a frame or two) repeats its last frame. Raises
    DecodeError for anything else.
    """
    av = _pyav(path)
    want = sorted({int(i) for i in indices})
    if not want or want[0] < 0:
        raise DecodeError(path, f"bad frame indices {list(indices)}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame + slice threads; decoded output is bit-exact
            stream.thread_count = threads
            timed = container.format.name not in _UNTIMED_FORMATS
            got = _decode_wanted(container, stream, want, short_side, timed, want[0] > 0)
            if got is None:  # timestamps not usable: count frames from the start instead
                stream.codec_context.skip_frame = "DEFAULT"
                container.seek(0, stream=stream)
                got = _decode_wanted(container, stream, want, short_side, False, False)
    except DecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as err:
        raise DecodeError(path, f"cannot decode video ({type(err).__name__}: {err})") from None
    frames, (_, last) = got
    missing = [w for w in want if w not in frames]
    if missing:
        # Tolerate a count estimated from durations being a frame or two too long.
        if not frames or missing[0] - last > END_SLACK:
            raise DecodeError(path, f"video ends at frame {last}, frame {missing[-1]} requested")
        for w in missing:
            frames[w] = frames[max(frames)]
    return np.stack([frames[int(i)] for i in indices])


# PyAV >= 18.1.1 scales with a pool of libswscale slice threads (its `threads`, 0 = one per
# core) and keeps the context: a DataLoader worker forked after the parent converted frames
# inherits it without its threads and waits on them forever (seen in CI: workers stuck in
# sws_scale_frame). One thread: the loader's workers are the parallelism, as for OpenCV.
_SWS_THREADS: dict = {"threads": 1}


def frame_to_rgb(frame, **resize) -> np.ndarray:
    """A decoded PyAV frame -> (H, W, 3) uint8 RGB, scaled single-threaded (`resize`: width,
    height, interpolation, as PyAV's reformat takes them)."""
    try:
        return frame.to_ndarray(format="rgb24", **resize, **_SWS_THREADS)
    except TypeError:  # a PyAV without `threads` (before 14) scales in one thread anyway
        if not _SWS_THREADS:
            raise
        _SWS_THREADS.clear()
        return frame.to_ndarray(format="rgb24", **resize)


def _decode_wanted(container, stream, want, short_side, timed, seek):
    """Decode frames `want` (sorted) -> ({index: (H, W, 3) uint8}, (first, last) index output
    by the decoder): the span shows how much was decoded.

    timed: a frame's index comes from its timestamp, else from counting decoded frames from
    the start. seek: jump to the keyframe at or before want[0] first, and let the decoder drop
    non-reference frames before it (skip_frame=NONREF: no later frame depends on them; about a
    third less decoding for h264 with B-frames). Returns None when timestamps turn out
    unusable (missing, out of order, or the seek landed late): the caller restarts counting.
    """
    rate = _stream_rate(stream)
    time_base = Fraction(stream.time_base) if stream.time_base else None
    start = stream.start_time or 0
    timed = timed and rate is not None and time_base is not None
    seek = seek and timed
    if seek:
        first_pts = start + want[0] / rate / time_base
        container.seek(start + int(first_pts - start), stream=stream, backward=True)
    ctx = stream.codec_context
    frames: dict[int, np.ndarray] = {}
    k, count, first, last = 0, 0, None, -1
    for packet in container.demux(stream):
        if seek:  # packets come in decode order; a skipped one must precede want[0] for display
            skip = packet.pts is not None and packet.pts < first_pts
            ctx.skip_frame = "NONREF" if skip else "DEFAULT"
        for frame in packet.decode():
            if timed:
                pos = _frame_pos(frame, start, time_base, rate)
                if pos is None or pos <= last or (seek and count == 0 and pos > want[0]):
                    return None
            else:
                pos = count
            count += 1
            first = pos if first is None else first
            last = pos
            if pos < want[k]:
                continue  # decoded but never converted
            width, height = resized_size(frame.width, frame.height, short_side)
            arr = frame_to_rgb(frame, width=width, height=height, interpolation="AREA")
            while k < len(want) and pos >= want[k]:
                frames[want[k]] = arr
                k += 1
            if k == len(want):
                return frames, (first, last)  # never decode past the last wanted frame
    return frames, (first, last)


def read_frames(
    path: str | Path,
    kind: str,
    indices: list[int] | np.ndarray,
    short_side: int | None = 256,
    threads: int = 2,
) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB from a source of `kind` "video" (file) or "frames" (folder)."""
    if kind == "video":
        return read_video_frames(path, indices, short_side, threads)
    if kind == "frames":
        return read_folder_frames(path, indices, short_side)
    raise ValueError(f"unknown video kind {kind!r}")
