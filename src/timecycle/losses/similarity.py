"""Similarity terms between the tracked patch and where the tracker put it (SPEC 4).

Two variants:
- paper: feature similarity, the negative Frobenius inner product of the patch's features and
  the features cropped where the tracker localised it.
- code: the "weak inlier count" of models/videos/model_simple.py and geotnf/loss.py
  (WeakInlierCountPool): the affinity mass that lies on the positions theta selects, negated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def feature_similarity_loss(
    query: torch.Tensor, crop: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Negative Frobenius inner product of two unit feature maps, per position: in [-1, 1].

    Args:
        query: (N, C, h, w) patch features, L2-normalised over C.
        crop: (N, C, h, w) features cropped at the tracker's theta, L2-normalised over C.
        reduction: "mean" -> scalar, "none" -> (N,).

    The inner product <query, crop>_F is divided by the h * w positions (a mean cosine
    similarity), so the term is -1 for identical maps whatever the patch size, on the same
    scale as the inlier count it replaces.
    """
    if query.shape != crop.shape:
        raise ValueError(f"query {tuple(query.shape)} and crop {tuple(crop.shape)} differ")
    per_sample = -(query * crop).sum(dim=1).flatten(1).mean(dim=1)
    return _reduce(per_sample, reduction)


def weak_inlier_count(
    affinity: torch.Tensor,
    theta: torch.Tensor,
    search_size: tuple[int, int],
    query_size: tuple[int, int],
    align_corners: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Share of the affinity mass that lies where theta sends each query position: (N,) in [0, 1].

    The public code builds an identity volume (search position c is a one-hot map at c), warps
    it with theta onto the h x w query grid (bilinear, zero padding: a soft one-hot of where
    theta maps each query position) and takes its inner product with the affinity, divided by
    the mask's total. That equals, for every query position q, the affinity column q read as an
    H x W map and bilinearly interpolated at theta(q); divided by the same interpolation of a
    map of ones (the share of q's point inside the frame). This computes it that way, without
    the (N, H*W, h, w) mask. Unlike the public code it adds no 1e-5 per mask element to the
    denominator (which caps the count near 100 / 100.9), so all mass in place counts exactly 1.

    Args:
        affinity: (N, H*W, h*w), columns are distributions over row-major search positions.
        theta: (N, 2, 3) query -> search affine, as the sampler applies it (with any
            translation factor already applied, timecycle.tracker.sampler.scale_translation).
        search_size: (H, W).
        query_size: (h, w).
        align_corners: the sampler's convention.
    """
    n, positions, queries = affinity.shape
    (H, W), (h, w) = search_size, query_size
    if positions != H * W or queries != h * w:
        raise ValueError(
            f"affinity {tuple(affinity.shape)} does not match {search_size} and {query_size}"
        )
    grid = F.affine_grid(theta.to(affinity.dtype), [n, 1, h, w], align_corners=align_corners)
    points = grid.reshape(n * queries, 1, 1, 2)  # one point per (sample, query position)
    maps = affinity.transpose(1, 2).reshape(n * queries, 1, H, W)
    sample = dict(mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    mass = F.grid_sample(maps, points, **sample).reshape(n, queries).sum(dim=1)
    ones = affinity.new_ones(1, 1, H, W)
    inside = F.grid_sample(ones, points.reshape(1, 1, n * queries, 2), **sample)
    inside = inside.reshape(n, queries).sum(dim=1)
    return mass / inside.clamp_min(eps)


def inlier_count_loss(
    affinity: torch.Tensor,
    theta: torch.Tensor,
    search_size: tuple[int, int],
    query_size: tuple[int, int],
    align_corners: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """The negated weak inlier count, in [-1, 0] (SPEC 4, code variant); see `weak_inlier_count`."""
    count = weak_inlier_count(affinity, theta, search_size, query_size, align_corners)
    return _reduce(-count, reduction)
