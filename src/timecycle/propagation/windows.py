"""Restricted context windows, computed only inside the window.

A query position may only look at keys within a radius (a disk for CRW, a square for DINO) of
its own position. Rather than computing the full (h*w) x (h*w) affinity and masking it, the
query map is cut into tiles of t x t positions; each tile needs only the keys in its
(t + 2r) x (t + 2r) neighbourhood, gathered with one `unfold`, and a dense matrix product per
tile. The work per query is (t + 2r)^2 keys instead of h*w (for 480p DAVIS with t = 8 and
r = 11: 900 instead of 6,420), and the small per-tile products keep BLAS efficient. A fixed
mask then removes the keys of each tile's window that lie outside a query's own disk or
square, or outside the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class WindowGeometry:
    """Tiling of an (h, w) feature map for keys within `half` cells of each query.

    Attributes:
        h, w: feature map size. tile: query tile side t. half: window half-size r.
        n_ty, n_tx: number of tiles down and across (the map is padded to whole tiles).
        outside: (n_tiles, t*t, (t+2r)^2) bool, True where the key is outside the query's
            window or outside the frame (those affinities are set to -inf).
    """

    h: int
    w: int
    tile: int
    half: int
    n_ty: int
    n_tx: int
    outside: torch.Tensor

    @property
    def win(self) -> int:
        return self.tile + 2 * self.half

    @property
    def n_tiles(self) -> int:
        return self.n_ty * self.n_tx

    def pad(self) -> tuple[int, int, int, int]:
        """F.pad amounts (left, right, top, bottom) that put every tile's window in range."""
        r, t = self.half, self.tile
        return (r, r + self.n_tx * t - self.w, r, r + self.n_ty * t - self.h)


def make_geometry(
    h: int, w: int, radius: int, shape: str, tile: int = 8, device: torch.device | None = None
) -> WindowGeometry:
    """Precompute the tiling and mask for a `shape` ("disk": distance < radius, as CRW's
    MaskedAttention; "square": |dy|, |dx| <= radius, as DINO's restrict_neighborhood)."""
    half = radius - 1 if shape == "disk" else radius
    n_ty, n_tx = -(-h // tile), -(-w // tile)
    win = tile + 2 * half
    # Offset of key (a, b) in the window from query (i, j) in the tile: (a - half - i, b - half - j).
    qi = torch.arange(tile, device=device)
    ka = torch.arange(win, device=device)
    dy = ka[None, :] - half - qi[:, None]  # (t, win)
    dyy = dy[:, None, :, None]  # query row, key row
    dxx = dy[None, :, None, :]  # query col, key col
    if shape == "disk":
        rel = dyy**2 + dxx**2 < radius**2
    elif shape == "square":
        rel = (dyy.abs() <= half) & (dxx.abs() <= half)
    else:
        raise ValueError(f"unknown window shape {shape!r}")
    rel = rel.reshape(tile * tile, win * win)  # query i*t+j, key a*win+b
    # Keys outside the frame: unfold a map of ones exactly as the features will be unfolded.
    geo = WindowGeometry(h, w, tile, half, n_ty, n_tx, outside=rel)
    inside = unfold_windows(torch.ones(1, 1, h, w, device=device), geo)[0, 0] > 0  # (nT, win^2)
    # Query positions outside the frame (tile padding) keep their keys: their rows are dropped.
    outside = ~(rel[None] & inside[:, None, :])
    return WindowGeometry(h, w, tile, half, n_ty, n_tx, outside=outside)


def unfold_windows(x: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """(F, C, h, w) -> (F, C, n_tiles, win*win): each tile's key window (zeros outside)."""
    n, c = x.shape[:2]
    x = F.pad(x, geo.pad())
    cols = F.unfold(x, kernel_size=geo.win, stride=geo.tile)  # (F, C*win*win, n_tiles)
    return cols.view(n, c, geo.win * geo.win, geo.n_tiles).transpose(2, 3)


def tile_queries(q: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """(C, h, w) -> (n_tiles, t*t, C) query tiles (padding rows are zeros)."""
    c = q.shape[0]
    t = geo.tile
    q = F.pad(q, (0, geo.n_tx * t - geo.w, 0, geo.n_ty * t - geo.h))
    q = q.view(c, geo.n_ty, t, geo.n_tx, t).permute(1, 3, 2, 4, 0)
    return q.reshape(geo.n_tiles, t * t, c)


def untile(x: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """(K, n_tiles, t*t) -> (K, h, w), dropping the tile padding."""
    k = x.shape[0]
    t = geo.tile
    x = x.view(k, geo.n_ty, geo.n_tx, t, t).permute(0, 1, 3, 2, 4)
    return x.reshape(k, geo.n_ty * t, geo.n_tx * t)[:, : geo.h, : geo.w]
