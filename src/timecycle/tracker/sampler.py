"""Differentiable crops under an affine theta: of feature maps (SPEC 3) and of images (SPEC 5).

Convention: theta (B, 2, 3) maps the crop's normalised coordinates in [-1, 1]^2 to the source's
(`torch.nn.functional.affine_grid`), sampling is bilinear with zero padding.

align_corners: the public code builds its grids with linspace(-1, 1, n) and samples with the
`grid_sample` of PyTorch 0.4, whose behaviour is align_corners=True (geotnf/transformation.py),
both for feature crops and for cutting the patch (models/dataset/vlog_train.py). The default
here is False: then [-1, 1] spans the full extent of the map, so at output stride 8 (a 240
frame tiles exactly into 30 cells of 8 pixels) the same theta cuts the same region out of the
frame and out of its features. The unrotated, centred 1/3-scale theta selects exactly pixels
80..159 of the frame and exactly cells 10..19 of its 30 x 30 features. Whatever the value, the
data side must cut patches with the same one (`cut_patch`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# SPEC 3: the public code scales the translation of its feature crops and of its inlier mask
# by 227 / 210 (inherited from weak alignment, geotnf/transformation.py `offset_factor`) but not
# when it cuts the patch; a faithful-mode switch, off (1.0) by default.
PUBLIC_TRANSLATION_FACTOR = 227 / 210


def scale_translation(theta: torch.Tensor, factor: float) -> torch.Tensor:
    """(B, 2, 3) -> (B, 2, 3) with the translation column multiplied by `factor`."""
    if factor == 1.0:
        return theta
    return torch.cat([theta[..., :2], theta[..., 2:] * factor], dim=-1)


def affine_sample(
    source: torch.Tensor,
    theta: torch.Tensor,
    size: tuple[int, int],
    align_corners: bool = False,
    translation_factor: float = 1.0,
) -> torch.Tensor:
    """Bilinear crop of an (h, w) grid out of `source` under theta.

    Args:
        source: (B, C, H, W) feature map or image.
        theta: (B, 2, 3) crop -> source affine in normalised coordinates.
        size: (h, w) of the crop.
        align_corners: see the module docstring.
        translation_factor: multiplies theta's translation first (227/210 in the public code).

    Returns:
        (B, C, h, w); positions that fall outside the source read zeros.
    """
    theta = scale_translation(theta, translation_factor).to(source.dtype)
    shape = [source.shape[0], source.shape[1], *size]
    grid = F.affine_grid(theta, shape, align_corners=align_corners)
    return F.grid_sample(
        source, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners
    )


def cut_patch(
    frame: torch.Tensor, theta: torch.Tensor, size: int, align_corners: bool = False
) -> torch.Tensor:
    """Cut the (rotated) target patch out of a frame: (B, 3, H, W) -> (B, 3, size, size).

    The same convention as the tracker's feature crops, so that cropping the frame's stride-8
    features under theta_gt gives (up to interpolation) the features of this patch (SPEC 4-5).
    The public code applies no translation factor here, so neither does this function.
    """
    return affine_sample(frame, theta, (size, size), align_corners=align_corners)


class Sampler(nn.Module):
    """Crop un-normalised features under theta, then L2-normalise over channels (SPEC 2-3).

    Args:
        size: (h, w) of the crop in cells (10 x 10 in the paper).
        align_corners: see the module docstring (default False).
        translation_factor: 1.0, or 227/210 to reproduce the public code.

    forward: (B, C, H, W) post-ReLU features, (B, 2, 3) theta -> (B, C, h, w), unit over C.
    """

    def __init__(
        self,
        size: tuple[int, int] = (10, 10),
        align_corners: bool = False,
        translation_factor: float = 1.0,
    ):
        super().__init__()
        self.size = tuple(size)
        self.align_corners, self.translation_factor = align_corners, translation_factor

    def forward(self, features: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        crop = affine_sample(
            features, theta, self.size, self.align_corners, self.translation_factor
        )
        return F.normalize(crop, dim=1)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, align_corners={self.align_corners}, "
            f"translation_factor={self.translation_factor:.4g}"
        )
