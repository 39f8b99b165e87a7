"""Propagate frame 0's part labels through VIP videos; write one palettised PNG per frame.

Predictions are `<out>/<video>/<frame stem>.png`: 8-bit palettised (VOC palette), pixel value =
VIP class id, at the annotation's size; frame 0 holds its annotation. As in CRW (data/vos.py),
only the classes present in frame 0 are propagated: they are renumbered 0..K-1 for the
propagation and mapped back to their ids on output, so a class absent from frame 0 is never
predicted. Each video is written into `.partial-<video>` and renamed when complete;
`propagation.json` is written last, after any earlier evaluation files are removed.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from timecycle.datasets.io import write_json_atomic, write_mask
from timecycle.datasets.vip import VipRoot, VipVideo
from timecycle.metrics.vip import PROVENANCE_FILE, RESULT_FILES
from timecycle.propagation.davis import RunStats, SequenceStats
from timecycle.propagation.protocols import Protocol
from timecycle.propagation.resize import downsample_label, label_to_ids
from timecycle.propagation.video import FrameEncoder, prefetch, propagate_frames, read_frames


def propagate_video(
    video: VipVideo,
    out_dir: Path,
    frame_encoder: FrameEncoder | None,
    protocol: Protocol,
    writer: ThreadPoolExecutor,
    batch_size: int = 4,
    tile: int = 8,
    progress: bool = True,
) -> SequenceStats:
    """Write one PNG per frame of `video` into `out_dir/<video>` (frame 0 = its annotation)."""
    start = time.perf_counter()
    ids0 = video.first_label()
    present = np.unique(ids0)  # sorted class ids of frame 0
    compact = np.zeros(256, np.int64)
    compact[present] = np.arange(len(present))
    out_hw = ids0.shape
    final = out_dir / video.name
    partial = out_dir / f".partial-{video.name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    pending = [writer.submit(write_mask, partial / f"{video.frames[0].stem}.png", ids0)]
    bar = tqdm(total=len(video.frames), desc=video.name, unit="frame", disable=not progress, leave=False)
    bar.update(1)
    if frame_encoder is None:
        for frame in video.frames[1:]:  # the identity baseline: frame 0's label everywhere
            pending.append(writer.submit(write_mask, partial / f"{frame.stem}.png", ids0))
            bar.update(1)
    else:
        device = frame_encoder.device
        ids0_t = torch.from_numpy(compact[ids0]).to(device)
        class_ids = torch.from_numpy(present.astype(np.int64)).to(device)

        def first_label(feat_hw: tuple[int, int]) -> torch.Tensor:
            return downsample_label(ids0_t, len(present), tuple(feat_hw), protocol)

        frames = prefetch(read_frames(video.frames, expect_hw=out_hw))
        outputs = propagate_frames(frames, first_label, frame_encoder, protocol, batch_size, tile)
        for frame, (soft, size) in zip(video.frames[1:], outputs):
            ids = class_ids[label_to_ids(soft, protocol, size, out_hw)]
            pending.append(writer.submit(write_mask, partial / f"{frame.stem}.png",
                                         ids.to(torch.uint8).cpu().numpy()))
            bar.update(1)
    for job in pending:
        job.result()  # re-raises a failed write
    bar.close()
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return SequenceStats(video.name, len(video.frames), time.perf_counter() - start, len(present))


def propagate_vip(
    root: VipRoot,
    names: list[str],
    out_dir: str | Path,
    frame_encoder: FrameEncoder | None,
    protocol: Protocol,
    provenance: dict,
    batch_size: int = 4,
    tile: int = 8,
    progress: bool = True,
) -> RunStats:
    """Propagate every video in `names`; write results and `propagation.json` last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (PROVENANCE_FILE, *RESULT_FILES):
        (out_dir / name).unlink(missing_ok=True)
    videos = [root.video(n) for n in names]
    for video in videos:  # check every first annotation before spending time on any video
        video.first_label()
    stats = RunStats()
    with ThreadPoolExecutor(max_workers=2) as writer:
        for video in tqdm(videos, desc="videos", unit="video", disable=not progress or len(videos) < 2):
            stats.sequences.append(
                propagate_video(video, out_dir, frame_encoder, protocol, writer, batch_size, tile, progress)
            )
    record = dict(provenance)
    record["videos"] = [s.__dict__ for s in stats.sequences]
    record["frames"] = stats.frames
    record["seconds"] = round(stats.seconds, 3)
    record["frames_per_second"] = round(stats.frames / max(stats.seconds, 1e-9), 3)
    write_json_atomic(out_dir / PROVENANCE_FILE, record)
    return stats


__all__ = ["propagate_video", "propagate_vip"]
