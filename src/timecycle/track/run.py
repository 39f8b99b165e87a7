"""`track_video`: follow a first-frame mask and/or points through a user's video and write
everything `timecycle track` promises into one folder.

    DIR/masks/%05d.png   palettised object ids per frame (frame 0 included), the video's size
    DIR/tracks.npy       float32 (T, K, 2) points (x, y), NaN = not predicted
    DIR/tracks.csv       frame,id,x,y,score
    DIR/flow.npy         float16 (T, 2, h, w) motion from frame 0 per feature cell (--flow)
    DIR/flow.png         the last frame's flow on the colour wheel (--flow)
    DIR/overlay.mp4      masks and points with trails (overlay.webp without an mp4 encoder)
    DIR/index.html       the page: overlay, flow, command, provenance
    DIR/track.json       the record (command, provenance, sizes, timing), written last

Frames are decoded as they are needed (a background thread reads a few ahead), and only the
protocol's context and the current batch are held, so memory does not grow with the video.
"""

from __future__ import annotations

import collections
import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from timecycle.datasets.io import write_json_atomic, write_mask
from timecycle.datasets.outputs import replace_entry
from timecycle.errors import UserError
from timecycle.propagation.presets import KeypointReadout
from timecycle.propagation.protocols import Protocol
from timecycle.propagation.results import partial_folder
from timecycle.propagation.video import FrameEncoder, prefetch
from timecycle.propagation.windows import DEFAULT_TILE
from timecycle.track.inputs import FrameStream, Points, read_first_mask, read_points
from timecycle.track.outputs import NpyStream, write_tracks
from timecycle.track.propagate import FrameResult, track_frames
from timecycle.visualisation.overlay import fit_width, overlay_mask, write_image
from timecycle.visualisation.points import draw_points
from timecycle.visualisation.stream import AnimationStream
from timecycle.visualisation.track_page import flow_picture, write_track_page

RECORD_FILE = "track.json"
# Everything else a run may have written (the module docstring).
PREVIOUS_OUTPUTS = ("masks", "tracks.npy", "tracks.csv", "flow.npy", "flow.png", "overlay.mp4",
                    "overlay.webp", "index.html")
TRAIL = 8  # frames of trail behind each point in the overlay
OVERLAY_WIDTH = 640  # overlay video width cap, pixels
WRITES_AHEAD = 8  # mask PNGs queued for the writer threads at most


def open_frames(video: str | Path) -> FrameStream:
    """The frame source of `track_video` (tests replace it to watch what is held)."""
    return FrameStream(video)


class _Overlay:
    """Overlay frames (masks, points with trails) pushed into an `AnimationStream`."""

    def __init__(self, stem: Path, fps: float):
        self.stream = AnimationStream(stem, fps)
        self.trail: collections.deque = collections.deque(maxlen=TRAIL)

    def add(self, r: FrameResult) -> None:
        frame = fit_width(r.frame, OVERLAY_WIDTH)
        scale = frame.shape[1] / r.frame.shape[1]
        if r.ids is not None:
            ids = r.ids
            if frame.shape[:2] != ids.shape:
                ids = np.asarray(Image.fromarray(ids).resize(frame.shape[1::-1], Image.Resampling.NEAREST))
            frame = overlay_mask(frame, ids, contour_width=max(1, frame.shape[1] // 320))
        if r.xy is not None:
            frame = draw_points(frame, r.xy, list(self.trail), scale)
            self.trail.append(r.xy)
        self.stream.add(frame)


def track_video(
    video: str | Path,
    out: str | Path,
    frame_encoder: FrameEncoder,
    protocol: Protocol,
    readout: KeypointReadout,
    mask: str | Path | None = None,
    points: str | Path | None = None,
    flow: bool = False,
    record: dict | None = None,
    batch_size: int = 4,
    tile: int = DEFAULT_TILE,
    progress: bool = True,
) -> dict:
    """Track `mask` (a first-frame id PNG) and/or `points` (an `id,x,y` CSV) through `video`
    and write the files of the module docstring into `out`; returns the record written to
    `track.json` (`record`: the caller's entries, e.g. command and provenance).

    The inputs are checked against frame 0 before anything is written. Run it inside
    `datasets.outputs.output_folder` to have a failure remove what was written.
    """
    if mask is None and points is None:
        raise UserError("nothing to track: give --mask, --points or both")
    stream = open_frames(video)
    first = stream.first()
    hw = first.shape[:2]
    ids0 = read_first_mask(mask, hw) if mask is not None else None
    pts: Points | None = read_points(points, hw) if points is not None else None
    del first
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # A previous run's outputs are set aside (put back if this run fails, dropped when it
    # succeeds: none of them is left beside outputs of other options), the record first: a
    # folder without it never looks complete.
    for name in (RECORD_FILE, *PREVIOUS_OUTPUTS):
        replace_entry(out / name)
    start = time.perf_counter()
    record = {**(record or {}), "video": str(Path(video).resolve()), "width": hw[1], "height": hw[0],
              "mask": str(Path(mask).resolve()) if mask else None,
              "points": str(Path(points).resolve()) if points else None,
              "point_ids": list(pts.ids) if pts else [], "readout": readout.to_dict()}
    results = track_frames(prefetch(iter(stream)), frame_encoder, protocol, readout, ids0,
                           None if pts is None else pts.xy, flow, batch_size, tile)
    overlay = _Overlay(out / "overlay", stream.rate() or 10.0)
    flow_file: NpyStream | None = None
    xy, score, last = [], [], None
    bar = tqdm(desc="track", unit="frame", disable=not progress, leave=False)
    try:
        with ThreadPoolExecutor(max_workers=2) as writer, \
                partial_folder(out, "masks") if ids0 is not None else contextlib.nullcontext() as masks:
            pending: collections.deque[Future] = collections.deque()
            for r in results:
                if masks is not None:
                    pending.append(writer.submit(write_mask, masks / f"{r.t:05d}.png", r.ids))
                    while len(pending) > WRITES_AHEAD or (pending and pending[0].done()):
                        pending.popleft().result()  # re-raises a failed write
                if r.xy is not None:
                    xy.append(r.xy)
                    score.append(r.score)
                if r.flow is not None:
                    if flow_file is None:
                        flow_file = NpyStream(out / "flow.npy", r.flow.shape, np.float16)
                    flow_file.add(r.flow)
                    last = (r.frame, r.flow, r.t)
                overlay.add(r)
                bar.update(1)
            while pending:
                pending.popleft().result()
        n_frames = overlay.stream.count
        if n_frames < 2:
            raise UserError("the video needs at least 2 frames to track anything", video)
        outputs: dict[str, str] = {}
        if ids0 is not None:
            outputs["masks/"] = "one palettised PNG of object ids per frame (%05d.png)"
        if pts is not None:
            write_tracks(out, pts.ids, np.stack(xy), np.stack(score))
            outputs["tracks.npy"] = "float32 (T, K, 2) x, y in pixels, NaN = not predicted"
            outputs["tracks.csv"] = "frame,id,x,y,score"
        flow_png = None
        if flow_file is not None:
            flow_file.close()
            frame, f, t = last
            write_image(out / "flow.png", flow_picture(frame, f, f"frame {t}: motion from frame 0"))
            flow_png = "flow.png"
            outputs["flow.npy"] = (f"float16 (T, 2, {f.shape[1]}, {f.shape[2]}) motion in pixels "
                                   "from frame 0 at each feature cell")
            outputs["flow.png"] = "the last frame's flow on the colour wheel"
        overlay_path = overlay.stream.close()
        outputs[overlay_path.name] = "masks and points drawn on the frames"
    except BaseException:
        overlay.stream.abort()
        if flow_file is not None:
            flow_file.abort()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    record.update(frames=n_frames, seconds=round(seconds, 3),
                  frames_per_second=round(n_frames / max(seconds, 1e-9), 3), outputs=outputs)
    write_track_page(out, record, overlay_path.name, flow_png)
    outputs["index.html"] = "this page"
    write_json_atomic(out / RECORD_FILE, record)
    return record


__all__ = ["RECORD_FILE", "open_frames", "track_video"]
