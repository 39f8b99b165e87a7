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


# Most weights per sample for `bilinear_matmul`: the stacked crops of the full preset have
# 3 x 100 x 900 = 270K; 1M bounds its matrix at 4 MB a sample.
MATMUL_WEIGHTS = 1 << 20


def bilinear_matmul(
    source: torch.Tensor, grid: torch.Tensor, align_corners: bool = False
) -> torch.Tensor:
    """`F.grid_sample(source, grid)` (bilinear, zero padding) as one batched matrix product.

    (B, C, H, W) source, (B, h, w, 2) grid of normalised (x, y) -> (B, C, h, w). Each output
    point's weights over the H*W source cells, (1 - f) and f on the two neighbours along each
    axis with f = x - floor(x) as in grid_sample (so the gradients at whole cells are its
    one-sided ones too), form a (B, h*w, H*W) matrix. Why: CUDA's grid_sample gives a thread
    to every output point and loops over the channels, so its backward took ~0.7 ms per call of
    the full preset on an H200 (10 x 10 crops of 512 channels); the product runs on tensor
    cores. In the full preset's training step (H200, bf16) the GPU's kernel time fell from 80.7
    to 76.0 ms and the step from 106 to 102 ms. It costs ~36 more small operators per call,
    which a launch-bound step (the `small` preset on a GPU) pays for. On the CPU grid_sample
    is faster (1.4-1.6x measured, 2 threads), and `bilinear_sample` keeps it there.
    """
    _, _, h_in, w_in = source.shape
    # Both axes in one chain of small ops (the step is launch-bound on a GPU): (B, Q, 2).
    # [W, H] made on the grid's device: new_tensor([W, H]) would copy from the host, and such
    # a copy synchronises a CUDA stream every call.
    size = torch.arange(2, device=grid.device, dtype=grid.dtype) * (h_in - w_in) + w_in
    points = grid.flatten(1, 2)
    x = (points + 1) / 2 * (size - 1) if align_corners else ((points + 1) * size - 1) / 2
    x0 = x.detach().floor()
    f = (x - x0).unsqueeze(-1)  # (B, Q, 2, 1)
    cells = torch.arange(max(h_in, w_in), device=x.device, dtype=x.dtype) - x0.unsqueeze(-1)
    # (B, Q, 2, n) weights along each axis; cells outside the map do not exist: zero padding.
    axis = torch.where(cells == 0, 1 - f, torch.where(cells == 1, f, 0.0))
    matrix = (axis[:, :, 1, :h_in, None] * axis[:, :, 0, None, :w_in]).flatten(2)  # (B, Q, H*W)
    # flatten(2) is a view for contiguous and channels-last sources alike.
    out = torch.bmm(source.flatten(2), matrix.transpose(1, 2).to(source.dtype))  # (B, C, Q)
    return out.unflatten(2, grid.shape[1:3])


def bilinear_sample(
    source: torch.Tensor, grid: torch.Tensor, align_corners: bool = False
) -> torch.Tensor:
    """Bilinear sampling with zero padding: `bilinear_matmul` for feature crops on CUDA,
    grid_sample elsewhere and for images, whose matrix would be huge (an 80 x 80 patch of a
    240 x 240 frame: 6400 x 57600 weights per clip).

    (B, C, H, W), (B, h, w, 2) -> (B, C, h, w).
    """
    weights = grid.shape[1] * grid.shape[2] * source.shape[2] * source.shape[3]
    if source.is_cuda and weights <= MATMUL_WEIGHTS:
        return bilinear_matmul(source, grid, align_corners)
    return F.grid_sample(
        source.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros",
        align_corners=align_corners,
    )


def _grid_dtype(source: torch.Tensor) -> torch.dtype:
    """At least float32 for sampling positions: a bf16 grid (bf16 features under autocast)
    would place a 30-cell map's points to within ~0.06 cells only. grid_sample then reads the
    source in that precision too, as autocast makes it do anyway."""
    return torch.promote_types(source.dtype, torch.float32)


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
    return affine_sample_stack(source, theta.unsqueeze(1), size, align_corners,
                               translation_factor)


def affine_sample_stack(
    source: torch.Tensor,
    theta: torch.Tensor,
    size: tuple[int, int],
    align_corners: bool = False,
    translation_factor: float = 1.0,
) -> torch.Tensor:
    """m crops per map in one sampling call (`bilinear_sample`), stacked along the height.

    (B, C, H, W) source, (B, m, 2, 3) theta -> (B, C, m*h, w): rows j*h .. (j+1)*h - 1 are
    `affine_sample(source, theta[:, j], size)`. The m grids are laid one above the other and
    sampled from the one source, instead of copying the source m times: every output point
    reads only its own grid point, so the values are those of m separate crops.
    """
    b, m = theta.shape[:2]
    theta = scale_translation(theta.flatten(0, 1), translation_factor).to(_grid_dtype(source))
    grid = F.affine_grid(theta, [b * m, source.shape[1], *size], align_corners=align_corners)
    grid = grid.reshape(b, m * size[0], size[1], 2)
    return bilinear_sample(source, grid, align_corners)


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
        return self.stack(features, theta.unsqueeze(1))

    def stack(self, features: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features, (B, m, 2, 3) theta -> (B, C, m*h, w) stacked crops, unit over
        C (`affine_sample_stack`)."""
        crops = affine_sample_stack(
            features, theta, self.size, self.align_corners, self.translation_factor
        )
        return F.normalize(crops, dim=1)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, align_corners={self.align_corners}, "
            f"translation_factor={self.translation_factor:.4g}"
        )
