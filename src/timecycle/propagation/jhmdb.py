"""Propagate frame 0's joints through JHMDB videos and write `<out>/<class>/<video>.npy`.

Each prediction is float64 (T, 15, 2): (x, y) per frame and joint in pos_img's 1-based pixel
convention, NaN for a joint that was not predicted. Frame 0 holds the given ground truth. Every
file is written atomically; `propagation.json` (the run's provenance) is written last, after the
files of an earlier evaluation are removed, so a killed run never looks complete or scored.

The `identity` baseline (no encoder) copies frame 0's joints, exactly, to every frame.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from timecycle.datasets.io import atomic_path
from timecycle.datasets.outputs import replace_entry
from timecycle.datasets.jhmdb import JhmdbRoot, JhmdbVideo
from timecycle.errors import UserError
from timecycle.propagation.results import RunStats, SequenceStats, finish_results, start_results
from timecycle.propagation.keypoints import propagate_keypoints
from timecycle.propagation.presets import KeypointReadout
from timecycle.propagation.protocols import Protocol
from timecycle.propagation.video import FrameEncoder, read_frames
from timecycle.propagation.windows import DEFAULT_TILE


def propagate_video(
    video: JhmdbVideo,
    frame_encoder: FrameEncoder | None,
    protocol: Protocol,
    readout: KeypointReadout,
    batch_size: int = 4,
    tile: int = DEFAULT_TILE,
    joints: np.ndarray | None = None,
) -> np.ndarray:
    """(T, 15, 2) float64 joints for the T frames of `video` (frame 0 = its ground truth)."""
    gt = video.joints() if joints is None else joints
    out = np.empty((len(video.frames), *gt.shape[1:]), np.float64)
    out[:] = gt[0]  # frame 0, and every frame of the identity baseline
    if frame_encoder is not None and len(video.frames) > 1:
        frames = read_frames(video.frames)
        outputs = propagate_keypoints(frames, gt[0], frame_encoder, protocol, readout, batch_size, tile)
        for t, pred in enumerate(outputs, start=1):
            out[t] = pred
    return out


def save_prediction(path: Path, joints: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, joints)


def propagate_jhmdb(
    root: JhmdbRoot,
    names: list[str],
    out_dir: str | Path,
    frame_encoder: FrameEncoder | None,
    protocol: Protocol,
    readout: KeypointReadout,
    provenance: dict,
    batch_size: int = 4,
    tile: int = DEFAULT_TILE,
    progress: bool = True,
) -> RunStats:
    """Propagate every video in `names`; write the predictions, then `propagation.json`."""
    out_dir = start_results(out_dir)
    videos = [root.video(n) for n in names]
    truth = [v.joints() for v in videos]  # every .mat is checked before any work starts
    for video, gt in zip(videos, truth):
        # Fewer frames than annotated ones would write a prediction the evaluation refuses.
        if len(video.frames) < len(gt):
            raise UserError(f"{len(video.frames)} frames, but {video.joints_file.name} "
                            f"annotates {len(gt)}: frames are missing", video.frames[0].parent)
    stats = RunStats()
    for video, gt in tqdm(list(zip(videos, truth)), desc="videos", unit="video", disable=not progress):
        start = time.perf_counter()
        pred = propagate_video(video, frame_encoder, protocol, readout, batch_size, tile, joints=gt)
        replace_entry(out_dir / f"{video.name}.npy")  # put back if a later video fails
        save_prediction(out_dir / f"{video.name}.npy", pred)
        stats.sequences.append(
            SequenceStats(video.name, len(video.frames), time.perf_counter() - start, gt.shape[1])
        )
    finish_results(out_dir, {**provenance, "readout": readout.to_dict()}, stats, key="videos")
    return stats


__all__ = ["propagate_jhmdb", "propagate_video", "save_prediction"]
