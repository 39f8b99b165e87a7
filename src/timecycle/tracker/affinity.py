"""Affinity between a query patch and a search frame (SPEC 3).

Positions are flattened row-major on both sides (index = y * W + x). The public code flattens
the search frame column-major (it transposes H and W first, "for the inlier counter" in
models/videos/model_simple.py); the order is a convention that the localizer learns and that
the inlier count (timecycle.losses.similarity) follows, so this package uses the natural one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# SPEC 3: dot products of unit features times sqrt(512) (temperature 512 ** -0.5 ~ 0.044, the
# `--T` default of train_video_cycle_simple.py).
AFFINITY_SCALE = math.sqrt(512)


def affinity(
    query: torch.Tensor, search: torch.Tensor, scale: float = AFFINITY_SCALE
) -> torch.Tensor:
    """Softmax affinity of every query position over all search positions.

    Args:
        query: (B, C, h, w) features, L2-normalised over C.
        search: (B, C, H, W) features, L2-normalised over C.
        scale: multiplier of the cosine similarities before the softmax.

    Returns:
        (B, H*W, h*w): column q is a distribution over the H*W search positions (sums to 1);
        a transposed view of a contiguous (B, h*w, H*W).
    """
    if query.shape[:2] != search.shape[:2]:
        raise ValueError(
            f"query {tuple(query.shape)} and search {tuple(search.shape)} differ in B or C"
        )
    # Computed as (B, h*w, H*W) with the softmax over the last, contiguous axis, and returned
    # transposed (a view). A softmax over dim 1 of (B, H*W, h*w) runs CUDA's strided "spatial"
    # kernel: on an H200 it took ~0.7 ms per call of the full preset, a tenth of a training
    # step for eight calls. The view is also the layout the localizer's first convolution
    # wants: read as (B, H*W, h, w) it is channels-last, so no copy is made there either.
    logits = torch.einsum("bcq,bcs->bqs", query.flatten(2), search.flatten(2)) * scale
    return logits.softmax(dim=-1).transpose(1, 2)


class Affinity(nn.Module):
    """Module form of `affinity` with the scale as a field (SPEC 3 default sqrt(512))."""

    def __init__(self, scale: float = AFFINITY_SCALE):
        super().__init__()
        self.scale = scale

    def forward(self, query: torch.Tensor, search: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w), (B, C, H, W), both unit over C -> (B, H*W, h*w), columns sum to 1."""
        return affinity(query, search, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}"
