"""Tracked points drawn on frames: a dot per point and a short trail of where it was.

Coordinates are pixels with (0, 0) the centre of the top-left pixel (the convention of
`timecycle track`); a NaN point (not predicted) is skipped, and so are the trail segments
that touch it.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from timecycle.visualisation.skeleton import joint_colours

SHIFT = 4  # cv2 sub-pixel bits


def _pixels(xy: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) points -> (K, 2) int cv2 coordinates at `scale`, and (K,) which are finite."""
    xy = (np.asarray(xy, np.float64) + 0.5) * scale - 0.5  # pixel centres stay centres
    ok = np.isfinite(xy).all(axis=1) & (np.abs(np.nan_to_num(xy)) < 2**20).all(axis=1)
    pts = np.round(np.where(ok[:, None], xy, 0) * (1 << SHIFT)).astype(np.int64)
    return pts, ok


def draw_points(frame: np.ndarray, xy: np.ndarray, trail: Sequence[np.ndarray] = (),
                scale: float = 1.0, radius: int = 3, colours: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 frame, (K, 2) points now and their earlier positions `trail` (oldest
    first, each (K, 2)) -> a new image. `scale`: the frame's size over the points' frame."""
    canvas = np.ascontiguousarray(np.array(frame, np.uint8, copy=True))
    k = len(xy)
    colours = joint_colours(k) if colours is None else np.asarray(colours, np.uint8)
    path = [*trail, xy]
    for a, b in zip(path[:-1], path[1:]):
        pa, oka = _pixels(a, scale)
        pb, okb = _pixels(b, scale)
        for j in np.flatnonzero(oka & okb):
            cv2.line(canvas, tuple(map(int, pa[j])), tuple(map(int, pb[j])),
                     tuple(int(c) for c in colours[j]), 1, cv2.LINE_AA, SHIFT)
    pts, ok = _pixels(xy, scale)
    for j in np.flatnonzero(ok):
        centre = tuple(map(int, pts[j]))
        cv2.circle(canvas, centre, (radius + 1) << SHIFT, (0, 0, 0), -1, cv2.LINE_AA, SHIFT)
        cv2.circle(canvas, centre, radius << SHIFT, tuple(int(c) for c in colours[j]), -1,
                   cv2.LINE_AA, SHIFT)
    return canvas


__all__ = ["draw_points"]
