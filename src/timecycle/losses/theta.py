"""Distance between two affines by where they send a grid of points (SPEC 4).

The public code's TransformedGridLoss (geotnf/loss.py): warp a 20 x 20 grid of points in
[-1, 1]^2 by the predicted and by the true affine, and average the squared L2 distance between
the warped points.
"""

from __future__ import annotations

import torch

# SPEC 4 / geotnf/loss.py: a 20 x 20 grid of points.
GRID_SIZE = 20


def _grid_points(grid: int, like: torch.Tensor) -> torch.Tensor:
    """(grid * grid, 2) points (x, y) on a regular grid over [-1, 1]^2."""
    axis = torch.linspace(-1, 1, grid, dtype=like.dtype, device=like.device)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=-1)


def warp_points(theta: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply (N, 2, 3) affines to (P, 2) points -> (N, P, 2)."""
    return torch.einsum("nij,pj->npi", theta[..., :2], points) + theta[:, None, :, 2]


def theta_grid_distance(
    theta_pred: torch.Tensor, theta_gt: torch.Tensor, grid: int = GRID_SIZE, reduction: str = "mean"
) -> torch.Tensor:
    """Mean squared distance between a point grid warped by two affines.

    Args:
        theta_pred, theta_gt: (N, 2, 3).
        grid: points per side of the grid.
        reduction: "mean" -> scalar (mean over N), "none" -> (N,).

    Zero iff the affines agree on the grid; symmetric in its two arguments.
    """
    if theta_pred.shape != theta_gt.shape or theta_pred.shape[-2:] != (2, 3):
        raise ValueError(
            f"thetas must both be (N, 2, 3); got {tuple(theta_pred.shape)}, {tuple(theta_gt.shape)}"
        )
    # float32 (or wider) whatever the autocast: the distances are the cycle losses themselves,
    # and autocast would run the einsum in bf16 (3 significant digits).
    dtype = torch.promote_types(theta_pred.dtype, torch.float32)
    with torch.autocast(theta_pred.device.type, enabled=False):
        theta_pred = theta_pred.to(dtype)
        points = _grid_points(grid, theta_pred)
        diff = warp_points(theta_pred, points) - warp_points(theta_gt.to(theta_pred), points)
        per_sample = diff.pow(2).sum(dim=-1).mean(dim=-1)
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
