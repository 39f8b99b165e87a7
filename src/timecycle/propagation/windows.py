"""Restricted context windows, computed only inside the window.

A query position may only look at keys within a radius (a disk for CRW, a square for DINO) of
its own position. Rather than computing the full (h*w) x (h*w) affinity and masking it, the
query map is cut into tiles of t x t positions; a tile needs only the keys in its
(t + 2r) x (t + 2r) neighbourhood, and one dense product per tile computes them. The keys each
query may see (its disk or square) are then gathered with a fixed index table, so the top-k
runs over the allowed keys only.

To make a tile's neighbourhood a contiguous matrix (no copy per target frame), every context
frame is stored once, when it enters the context, as overlapping vertical strips: strip j
holds columns [j t, j t + t + 2r) of the padded map, and the context frames are interleaved
row by row, channels last: (n_tx, Hp, slots, win, C). A tile's keys in all context frames are
then one run of consecutive rows of one strip, so a tile row needs a single batched product.
Keys outside the frame (and empty context slots) carry a large negative bias in an extra
channel (the queries carry a 1 there), so they can never win a top-k place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Affinity given to keys outside the frame: far below any cosine similarity, and still finite
# so that a softmax over selected values never sees -inf - -inf.
OUTSIDE = -1e4

# Query tile side of every command and function that propagates. At DAVIS 480p (60 x 107
# cells) 6 pads to 60 x 108 where 8 pads to 64 x 112, and ran 7-8% faster end to end than 8
# with identical output (car-shadow, blackswan; bench/propagate_profile.py).
DEFAULT_TILE = 6
# The largest tile: a tile's product over its window grows as tile^2 (tile + 2 radius)^2 per
# context frame, ~0.3 GB a strip at 32 (radius 12, 21 frames) and 2.7 GB at 64; larger
# tiles batch more but ran no faster than 6 (bench/propagate_profile.py).
MAX_TILE = 32


@dataclass(frozen=True)
class WindowGeometry:
    """Tiling of an (h, w) feature map for keys near each query.

    Attributes:
        h, w: feature map size. tile: query tile side t. half: window half-size r (the
            largest offset along an axis). n_ty, n_tx: tiles down and across.
        allowed: (t*t, V) long, for query (i, j) of a tile, the indices a*win + b in its
            tile's window of the V keys it may see.
        offsets_a, offsets_b: (t*t, V) the window row a and column b of those keys.
    """

    h: int
    w: int
    tile: int
    half: int
    n_ty: int
    n_tx: int
    allowed: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor

    @property
    def win(self) -> int:
        return self.tile + 2 * self.half

    def pad(self) -> tuple[int, int, int, int]:
        """F.pad amounts (left, right, top, bottom) that put every tile's window in range."""
        r, t = self.half, self.tile
        return (r, r + self.n_tx * t - self.w, r, r + self.n_ty * t - self.h)


def make_geometry(
    h: int, w: int, radius: int, shape: str, tile: int = DEFAULT_TILE,
    device: torch.device | None = None
) -> WindowGeometry:
    """Tiling and allowed-key table for `shape` "disk" (distance < radius, CRW's
    MaskedAttention) or "square" (|dy|, |dx| <= radius, DINO's restrict_neighborhood).

    The tile never changes which keys are read, only how they are batched (DEFAULT_TILE).
    """
    if shape == "disk":
        half = radius - 1 if radius > 0 else 0
        d = torch.arange(-half, half + 1)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        keep = dy**2 + dx**2 < radius**2
    elif shape == "square":
        half = radius
        d = torch.arange(-half, half + 1)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        keep = torch.ones_like(dy, dtype=torch.bool)
    else:
        raise ValueError(f"unknown window shape {shape!r}")
    dy, dx = dy[keep], dx[keep]  # (V,) offsets in row-major order
    win = tile + 2 * half
    i, j = torch.meshgrid(torch.arange(tile), torch.arange(tile), indexing="ij")
    rows = i.reshape(-1, 1) + half + dy[None]  # (t*t, V)
    cols = j.reshape(-1, 1) + half + dx[None]
    allowed = (rows * win + cols).to(device)
    return WindowGeometry(h, w, tile, half, -(-h // tile), -(-w // tile), allowed,
                          rows.to(device), cols.to(device))


def slot_index(geo: WindowGeometry, slots: int) -> torch.Tensor:
    """(t*t, slots*V) indices into a tile's interleaved keys (win, slots, win), flattened:
    row a, slot s, column b -> (a * slots + s) * win + b, slot-major over the V keys."""
    s = torch.arange(slots, device=geo.rows.device)[:, None, None]
    idx = (geo.rows[None] * slots + s) * geo.win + geo.cols[None]  # (slots, t*t, V)
    return idx.permute(1, 0, 2).reshape(geo.tile * geo.tile, -1)


def to_strips(x: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """(C, Hp, Wp) padded map -> (n_tx, Hp, win, C) overlapping column strips, channels last
    (a copy; the caller writes it into its context slot)."""
    c, hp, wp = x.shape
    x = x.permute(1, 2, 0).contiguous()  # (Hp, Wp, C)
    return x.as_strided((geo.n_tx, hp, geo.win, c), (geo.tile * c, wp * c, c, 1))


def pad_with_bias(feat: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """(C, h, w) -> (C + 1, Hp, Wp): zero-padded features plus a bias channel that is 0 inside
    the frame and OUTSIDE in the padding."""
    pad = geo.pad()
    bias = F.pad(feat.new_zeros(1, *feat.shape[1:]), pad, value=OUTSIDE)
    return torch.cat([F.pad(feat, pad), bias])


def tile_queries(q: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """(C, h, w) -> (n_ty, n_tx, t*t, C) query tiles (padding positions are zeros)."""
    c, t = q.shape[0], geo.tile
    q = F.pad(q, (0, geo.n_tx * t - geo.w, 0, geo.n_ty * t - geo.h))
    q = q.view(c, geo.n_ty, t, geo.n_tx, t).permute(1, 3, 2, 4, 0)
    return q.reshape(geo.n_ty, geo.n_tx, t * t, c)


def untile(x: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """(n_ty, n_tx, t*t, K) -> (K, h, w), dropping the tile padding."""
    t, k = geo.tile, x.shape[-1]
    x = x.view(geo.n_ty, geo.n_tx, t, t, k).permute(4, 0, 2, 1, 3)
    return x.reshape(k, geo.n_ty * t, geo.n_tx * t)[:, : geo.h, : geo.w]
