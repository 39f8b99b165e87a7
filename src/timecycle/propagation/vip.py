"""Propagate frame 0's part labels through VIP videos; write one palettised PNG per frame.

Predictions are `<out>/<video>/<frame stem>.png`: 8-bit palettised (VOC palette), pixel value =
VIP class id, at the annotation's size; frame 0 holds its annotation. As in CRW (data/vos.py),
only the classes present in frame 0 are propagated: they are renumbered 0..K-1 for the
propagation and mapped back to their ids on output, so a class absent from frame 0 is never
predicted. Each video is written into `.partial-<video>` and renamed when complete;
`propagation.json` is written last, after any earlier evaluation files are removed.
"""

from __future__ import annotations

from pathlib import Path

from timecycle.datasets.vip import VipRoot
from timecycle.propagation.protocols import Protocol
from timecycle.propagation.results import RunStats, propagate_mask_set
from timecycle.propagation.video import FrameEncoder
from timecycle.propagation.windows import DEFAULT_TILE


def propagate_vip(
    root: VipRoot,
    names: list[str],
    out_dir: str | Path,
    frame_encoder: FrameEncoder | None,
    protocol: Protocol,
    provenance: dict,
    batch_size: int = 4,
    tile: int = DEFAULT_TILE,
    progress: bool = True,
) -> RunStats:
    """Propagate every video in `names`; write results and `propagation.json` last.

    Every first annotation is read and checked before any video is propagated.
    """
    videos = [root.video(n) for n in names]
    items = [(v.name, v.frames, v.first_label()) for v in videos]
    return propagate_mask_set(items, out_dir, frame_encoder, protocol, provenance,
                              batch_size, tile, progress, key="videos")


__all__ = ["propagate_vip"]
