"""Optical-flow pictures on the usual colour wheel (Baker et al., "A Database and Evaluation
Methodology for Optical Flow", IJCV 2011; the Middlebury `flowToColor` code): the hue gives
the direction of motion, the saturation its size relative to the largest shown."""

from __future__ import annotations

import numpy as np

# Middlebury colorwheel: hue segments red-yellow, yellow-green, green-cyan, cyan-blue,
# blue-magenta, magenta-red with 15, 6, 4, 11, 13 and 6 steps.
_SEGMENTS = (15, 6, 4, 11, 13, 6)


def colour_wheel() -> np.ndarray:
    """(55, 3) float RGB in [0, 255]: the Middlebury wheel, red at angle 0."""
    ry, yg, gc, cb, bm, mr = _SEGMENTS
    rows = []
    rows += [(255, 255 * i / ry, 0) for i in range(ry)]
    rows += [(255 - 255 * i / yg, 255, 0) for i in range(yg)]
    rows += [(0, 255, 255 * i / gc) for i in range(gc)]
    rows += [(0, 255 - 255 * i / cb, 255) for i in range(cb)]
    rows += [(255 * i / bm, 0, 255) for i in range(bm)]
    rows += [(255, 0, 255 - 255 * i / mr) for i in range(mr)]
    return np.array(rows, np.float64)


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(2, h, w) flow (dx, dy) -> (h, w, 3) uint8 on the colour wheel.

    The magnitude is divided by `max_magnitude` (default: the largest finite one); no motion is
    white, full motion the wheel's colour; a NaN vector is black.
    """
    u, v = np.asarray(flow[0], np.float64), np.asarray(flow[1], np.float64)
    bad = ~(np.isfinite(u) & np.isfinite(v))
    u, v = np.where(bad, 0, u), np.where(bad, 0, v)
    rad = np.hypot(u, v)
    top = float(rad.max()) if max_magnitude is None else float(max_magnitude)
    rad = rad / top if top > 0 else rad
    wheel = colour_wheel()
    n = len(wheel)
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1], as flowToColor
    fk = (angle + 1) / 2 * (n - 1)
    k0 = np.floor(fk).astype(int)
    k1 = (k0 + 1) % n
    f = (fk - k0)[..., None]
    col = ((1 - f) * wheel[k0] + f * wheel[k1]) / 255.0
    r = np.minimum(rad, 1.0)[..., None]
    col = 1 - r * (1 - col)  # saturation grows with the magnitude
    col[rad > 1] *= 0.75  # beyond the range shown: darker
    col[bad] = 0
    return (255 * col + 0.5).astype(np.uint8)


def wheel_legend(size: int = 96) -> np.ndarray:
    """(size, size, 3) uint8: the wheel itself (motion of the largest magnitude on its rim),
    white outside the disc."""
    r = (np.arange(size) - (size - 1) / 2) / ((size - 1) / 2)
    dx, dy = np.meshgrid(r, r)
    img = flow_to_rgb(np.stack([dx, dy]), max_magnitude=1.0)
    img[np.hypot(dx, dy) > 1] = 255
    return img


__all__ = ["colour_wheel", "flow_to_rgb", "wheel_legend"]
