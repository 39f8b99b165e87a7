"""The PASCAL-VOC colour palette that DAVIS masks use, generated in code (SPEC 7)."""

from __future__ import annotations

import numpy as np


def voc_palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8: colour i spreads the bits of i over R, G and B from the high bit down.

    Index 0 is black, 1 is (128, 0, 0), 2 is (0, 128, 0), ... as in the VOC development kit.
    """
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[i] = (r, g, b)
    return palette


VOC_PALETTE = voc_palette()
