"""The `pixel` baseline: a frame's own colours as features (SPEC 6 baselines)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from timecycle.encoder.preprocess import IMAGENET_MEAN, IMAGENET_STD

# sRGB -> linear -> XYZ (D65) matrix, from the sRGB standard (IEC 61966-2-1).
_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE_D65 = torch.tensor([0.950456, 1.0, 1.088754])


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> (B, 3, H, W) CIE Lab (L in [0, 100], a and b about +-128)."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ.to(rgb), linear)
    xyz = xyz / _WHITE_D65.to(rgb).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lightness = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([lightness, a, b], dim=1)


class PixelEncoder(nn.Module):
    """Lab colour averaged over 8x8 cells: (B, 3, H, W) normalised -> (B, 3, ceil(H/8), ceil(W/8)).

    Lab is centred and scaled to about [-1, 1] per channel ((L - 50) / 50, a / 128, b / 128)
    so that the L2 normalisation that every protocol applies compares hue and lightness
    rather than collapsing all colours onto the positive L axis.
    """

    out_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = IMAGENET_MEAN.to(x).view(1, 3, 1, 1)
        std = IMAGENET_STD.to(x).view(1, 3, 1, 1)
        lab = rgb_to_lab((x * std + mean).clamp(0, 1))
        scale = torch.tensor([50.0, 128.0, 128.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        shift = torch.tensor([50.0, 0.0, 0.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        lab = (lab - shift) / scale
        return F.avg_pool2d(lab, kernel_size=8, stride=8, ceil_mode=True)
