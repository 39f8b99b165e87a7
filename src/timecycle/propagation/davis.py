"""Propagate first-frame masks through DAVIS sequences and write the DAVIS result format:
one folder per sequence, one palettised PNG per frame named like the annotation (SPEC 7)."""

from __future__ import annotations

from pathlib import Path

from timecycle.datasets.davis import DavisRoot
from timecycle.propagation.protocols import Protocol
from timecycle.propagation.results import RunStats, propagate_mask_set
from timecycle.propagation.video import FrameEncoder
from timecycle.propagation.windows import DEFAULT_TILE


def propagate_davis(
    root: DavisRoot,
    names: list[str],
    out_dir: str | Path,
    frame_encoder: FrameEncoder | None,
    protocol: Protocol,
    provenance: dict,
    batch_size: int = 4,
    tile: int = DEFAULT_TILE,
    progress: bool = True,
) -> RunStats:
    """Propagate every sequence in `names` into `out_dir`; `propagation.json` is written last.

    Every first-frame mask is read and checked before any sequence is propagated, and every
    annotation must have its frame (`DavisSequence.annotated`: else a frame is missing, and
    the scoring would fail after the whole run).
    """
    seqs = [root.sequence(n) for n in names]
    for s in seqs:
        s.annotated()
    items = [(s.name, s.frames, s.first_label()[0]) for s in seqs]
    return propagate_mask_set(items, out_dir, frame_encoder, protocol, provenance,
                              batch_size, tile, progress)
