"""A results folder of any benchmark: stale files removed first, each item written into a
hidden `.partial-<name>` folder and renamed into place when complete (removed if the item
fails), the run's provenance (`propagation.json`) written last. A killed run therefore never
leaves a folder that looks complete, and no evaluation of older predictions survives a new
propagation.

Also the shared runner for mask benchmarks (DAVIS objects, VIP parts): one palettised PNG per
frame at the annotation's size, frame 0 a copy of its annotation.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from timecycle.datasets.io import read_json_object, write_json_atomic, write_mask
from timecycle.datasets.outputs import replace_entry
from timecycle.errors import UserError
from timecycle.propagation.protocols import Protocol
from timecycle.propagation.resize import downsample_label, label_to_ids
from timecycle.propagation.video import (
    FrameEncoder,
    propagate_frames,
    read_frames,
    to_host,
)
from timecycle.propagation.windows import DEFAULT_TILE

PROVENANCE_FILE = "propagation.json"


@dataclass
class SequenceStats:
    name: str
    frames: int
    seconds: float
    n_objects: int  # labels propagated (objects, parts or joints), background excluded


@dataclass
class RunStats:
    sequences: list[SequenceStats] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.sequences)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.sequences)

    @property
    def frames_per_second(self) -> float:
        return self.frames / max(self.seconds, 1e-9)


def start_results(out_dir: str | Path) -> Path:
    """Create `out_dir` and remove its completion marker and every benchmark's score files: a
    folder propagated again holds no scores until it is scored again, whichever benchmark wrote
    the old ones (a DAVIS run into a folder of JHMDB results kept their pck.csv)."""
    # The metric modules read results through this one: imported here, not at its top.
    from timecycle.metrics import davis_eval, jhmdb, vip

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (PROVENANCE_FILE, *davis_eval.RESULT_FILES, *jhmdb.RESULT_FILES,
                 *vip.RESULT_FILES):
        replace_entry(out_dir / name)
    return out_dir


def finish_results(out_dir: Path, provenance: dict, stats: RunStats, key: str = "sequences") -> None:
    """Write `propagation.json`: the provenance plus per-item and overall timing."""
    record = dict(provenance)
    record[key] = [asdict(s) for s in stats.sequences]
    record["frames"] = stats.frames
    record["seconds"] = round(stats.seconds, 3)
    record["frames_per_second"] = round(stats.frames_per_second, 3)
    write_json_atomic(out_dir / PROVENANCE_FILE, record)


def results_folder(results_dir: str | Path, names: Sequence[str], unit: str,
                   suffix: str | None = None) -> Path:
    """The results folder to score, checked: it exists and holds a prediction for every name.

    A name's prediction is the folder `<name>/`, or with `suffix` the file `<name><suffix>`;
    every missing one is listed in one UserError ("3 of 20 sequences have no predictions").
    """
    results = Path(results_dir)
    if not results.is_dir():
        raise UserError("results folder not found", results)
    missing = [n for n in names if not ((results / n).is_dir() if suffix is None
                                        else (results / f"{n}{suffix}").is_file())]
    if missing:
        raise UserError(f"{len(missing)} of {len(names)} {unit} have no predictions in "
                        f"{results}: " + ", ".join(missing))
    return results


def read_provenance(results: Path) -> dict | None:
    return read_json_object(Path(results) / PROVENANCE_FILE, "the run's provenance file")


@contextlib.contextmanager
def partial_folder(out_dir: Path, name: str) -> Iterator[Path]:
    """Yield `.partial-<name>`; on success it replaces `<name>`, on failure it is removed."""
    final = out_dir / name
    partial = final.with_name(f".partial-{final.name}")  # beside it, also for "class/video"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_entry(final)
    partial.rename(final)


@contextlib.contextmanager
def _settled(jobs: list[Future]) -> Iterator[None]:
    """On failure, cancel the writes not yet started and wait for the running ones, so that
    none lands in (and re-creates) a partial folder being removed."""
    try:
        yield
    except BaseException:
        for job in jobs:
            job.cancel()
        wait(jobs)
        raise


def _write_when_copied(path: Path, ids: Callable[[], np.ndarray]) -> None:
    write_mask(path, ids())


def propagate_masks(
    name: str,
    frames: Sequence[Path],
    ids0: np.ndarray,
    out_dir: Path,
    frame_encoder: FrameEncoder | None,
    protocol: Protocol,
    writer: ThreadPoolExecutor,
    batch_size: int = 4,
    tile: int = DEFAULT_TILE,
    progress: bool = True,
) -> SequenceStats:
    """Write one PNG per frame into `out_dir/<name>`; frame 0 is `ids0` (H, W) uint8.

    As CRW (data/vos.py), only the ids present in frame 0 are propagated: they become label
    channels 0..K-1 and are mapped back to their ids on output. With no encoder (the identity
    baseline) every frame gets frame 0's label.
    """
    start = time.perf_counter()
    present = np.unique(ids0)
    out_hw = ids0.shape
    bar = tqdm(total=len(frames), desc=name, unit="frame", disable=not progress, leave=False)
    pending: list[Future] = []
    with partial_folder(out_dir, name) as partial, _settled(pending):
        pending.append(writer.submit(write_mask, partial / f"{frames[0].stem}.png", ids0))
        bar.update(1)
        if frame_encoder is None:
            for frame in frames[1:]:
                pending.append(writer.submit(write_mask, partial / f"{frame.stem}.png", ids0))
                bar.update(1)
        else:
            device = frame_encoder.device
            channel = np.zeros(256, np.int64)
            channel[present] = np.arange(len(present))
            ids0_t = torch.from_numpy(channel[ids0]).to(device)
            id_of = torch.from_numpy(present.astype(np.int64)).to(device)

            def first_label(feat_hw: tuple[int, int]) -> torch.Tensor:
                return downsample_label(ids0_t, len(present), tuple(feat_hw), protocol,
                                        f"{name}: the first-frame mask")

            stream = read_frames(frames, expect_hw=out_hw)
            outputs = propagate_frames(stream, first_label, frame_encoder, protocol, batch_size, tile)
            for frame, (soft, size) in zip(frames[1:], outputs):
                ids = to_host(id_of[label_to_ids(soft, protocol, size, out_hw)].to(torch.uint8))
                pending.append(writer.submit(_write_when_copied, partial / f"{frame.stem}.png",
                                             ids))
                bar.update(1)
        for job in pending:
            job.result()  # re-raises a failed write before the folder is renamed
    bar.close()
    return SequenceStats(name, len(frames), time.perf_counter() - start, int((present > 0).sum()))


def propagate_mask_set(
    items: Sequence[tuple[str, Sequence[Path], np.ndarray]],
    out_dir: str | Path,
    frame_encoder: FrameEncoder | None,
    protocol: Protocol,
    provenance: dict,
    batch_size: int = 4,
    tile: int = DEFAULT_TILE,
    progress: bool = True,
    key: str = "sequences",
) -> RunStats:
    """Propagate (name, frames, first id map) items; the provenance file is written last."""
    out = start_results(out_dir)
    stats = RunStats()
    with ThreadPoolExecutor(max_workers=2) as writer:
        for name, frames, ids0 in tqdm(items, desc=key, unit="seq", disable=not progress or len(items) < 2):
            stats.sequences.append(propagate_masks(name, frames, ids0, out, frame_encoder, protocol,
                                                   writer, batch_size, tile, progress))
    finish_results(out, provenance, stats, key)
    return stats
