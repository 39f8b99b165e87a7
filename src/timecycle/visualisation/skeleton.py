"""Draw JHMDB skeletons on frames (for reports and quick looks).

Joints are in pos_img's 1-based pixel convention, as the predictions and the ground truth are;
a NaN joint (not predicted) is skipped with its limbs. Limbs and joint order are JHMDB's (see
`timecycle.datasets.jhmdb.LIMBS`); each limb takes the colour of its child joint, on the hue
wheel that CRW's `vis_pose` also steps through.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from timecycle.datasets.jhmdb import LIMBS, N_JOINTS


def joint_colours(n: int = N_JOINTS) -> np.ndarray:
    """(n, 3) uint8 RGB colours spread over the hue wheel, red first."""
    rgb = [colorsys.hsv_to_rgb(0.85 * i / max(n - 1, 1), 1.0, 1.0) for i in range(n)]
    return (np.array(rgb) * 255 + 0.5).astype(np.uint8)


def draw_skeleton(
    frame: np.ndarray,
    joints: np.ndarray,
    colours: np.ndarray | None = None,
    thickness: int = 2,
    radius: int = 3,
    limbs: tuple[tuple[int, int], ...] = LIMBS,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB frame and (J, 2) joints -> a new (H, W, 3) uint8 image with the
    skeleton drawn (anti-aliased lines, filled joint dots). `frame` is not modified."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.dtype} {frame.shape}")
    joints = np.asarray(joints, np.float64)
    if joints.ndim != 2 or joints.shape[1] != 2:
        raise ValueError(f"joints must be (J, 2), got {joints.shape}")
    colours = joint_colours(len(joints)) if colours is None else np.asarray(colours, np.uint8)
    canvas = np.ascontiguousarray(frame.copy())
    # pos_img is 1-based; cv2 draws at 0-based pixel centres. Sub-pixel precision: 4 bits.
    shift = 4
    pts = np.round((joints - 1.0) * (1 << shift))
    ok = np.isfinite(pts).all(axis=1) & (np.abs(np.nan_to_num(pts)) < 2**28).all(axis=1)
    pts = np.where(ok[:, None], pts, 0).astype(np.int64)
    for child, parent in limbs:
        if child < len(joints) and parent < len(joints) and ok[child] and ok[parent]:
            colour = tuple(int(c) for c in colours[child])
            cv2.line(canvas, tuple(map(int, pts[parent])), tuple(map(int, pts[child])), colour,
                     thickness, cv2.LINE_AA, shift)
    for j in np.flatnonzero(ok):
        colour = tuple(int(c) for c in colours[j])
        cv2.circle(canvas, tuple(map(int, pts[j])), radius << shift, colour, -1, cv2.LINE_AA, shift)
    return canvas


__all__ = ["draw_skeleton", "joint_colours"]
