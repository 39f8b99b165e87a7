"""Propagate first-frame masks through DAVIS sequences and write the DAVIS result format.

Each sequence is written into a hidden `.partial-<seq>` folder and renamed into place when its
last frame is written; `propagation.json` (the run's provenance) is written last. A killed run
therefore never leaves a folder that looks complete.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from timecycle.datasets.davis import DavisRoot, DavisSequence
from timecycle.datasets.io import write_json_atomic, write_mask
from timecycle.propagation.protocols import Protocol
from timecycle.propagation.resize import downsample_label, label_to_ids
from timecycle.propagation.video import FrameEncoder, prefetch, propagate_frames, read_frames

PROVENANCE_FILE = "propagation.json"
# Files of an earlier evaluation in the output folder; they describe the old predictions.
STALE = ("global_results-val.csv", "per-sequence_results-val.csv", "results-val.json")


@dataclass
class SequenceStats:
    name: str
    frames: int
    seconds: float
    n_objects: int


@dataclass
class RunStats:
    sequences: list[SequenceStats] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.sequences)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.sequences)


def propagate_sequence(
    seq: DavisSequence,
    out_dir: Path,
    frame_encoder: FrameEncoder | None,
    protocol: Protocol,
    writer: ThreadPoolExecutor,
    batch_size: int = 4,
    tile: int = 8,
    progress: bool = True,
) -> SequenceStats:
    """Write one palettised PNG per frame of `seq` into `out_dir/<seq>` (frame 0 = its mask)."""
    start = time.perf_counter()
    ids0, n_objects = seq.first_label()
    out_hw = ids0.shape
    final = out_dir / seq.name
    partial = out_dir / f".partial-{seq.name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    pending = [writer.submit(write_mask, partial / f"{seq.frames[0].stem}.png", ids0)]

    bar = tqdm(total=len(seq.frames), desc=seq.name, unit="frame", disable=not progress, leave=False)
    bar.update(1)
    if frame_encoder is None:
        # The identity baseline: every frame gets frame 0's label.
        for frame in seq.frames[1:]:
            pending.append(writer.submit(write_mask, partial / f"{frame.stem}.png", ids0))
            bar.update(1)
    else:
        device = frame_encoder.device
        ids0_t = torch.from_numpy(ids0).to(device)

        def first_label(feat_hw: tuple[int, int]) -> torch.Tensor:
            return downsample_label(ids0_t, n_objects + 1, tuple(feat_hw), protocol)

        frames = prefetch(read_frames(seq.frames, expect_hw=out_hw))
        outputs = propagate_frames(frames, first_label, frame_encoder, protocol, batch_size, tile)
        for frame, (soft, size) in zip(seq.frames[1:], outputs):
            ids = label_to_ids(soft, protocol, size, out_hw).to(torch.uint8).cpu().numpy()
            pending.append(writer.submit(write_mask, partial / f"{frame.stem}.png", ids))
            bar.update(1)
    for job in pending:
        job.result()  # re-raises a failed write
    bar.close()
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return SequenceStats(seq.name, len(seq.frames), time.perf_counter() - start, n_objects)


def propagate_davis(
    root: DavisRoot,
    names: list[str],
    out_dir: str | Path,
    frame_encoder: FrameEncoder | None,
    protocol: Protocol,
    provenance: dict,
    batch_size: int = 4,
    tile: int = 8,
    progress: bool = True,
) -> RunStats:
    """Propagate every sequence in `names`; write results and `propagation.json` last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The folder is about to hold new predictions: drop the old completion marker and any
    # evaluation of the old predictions, so nothing stale can be read as current.
    for name in (PROVENANCE_FILE, *STALE):
        (out_dir / name).unlink(missing_ok=True)
    seqs = [root.sequence(n) for n in names]
    for seq in seqs:  # check every first mask before spending time on any sequence
        seq.first_label()
    stats = RunStats()
    with ThreadPoolExecutor(max_workers=2) as writer:
        for seq in tqdm(seqs, desc="sequences", unit="seq", disable=not progress or len(seqs) < 2):
            stats.sequences.append(
                propagate_sequence(seq, out_dir, frame_encoder, protocol, writer, batch_size, tile, progress)
            )
    record = dict(provenance)
    record["sequences"] = [s.__dict__ for s in stats.sequences]
    record["frames"] = stats.frames
    record["seconds"] = round(stats.seconds, 3)
    record["frames_per_second"] = round(stats.frames / max(stats.seconds, 1e-9), 3)
    write_json_atomic(out_dir / PROVENANCE_FILE, record)
    return stats


