"""Localizer g: affinity map -> affine theta of the query inside the search frame (SPEC 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# SPEC 3: the scale of theta is fixed at patch / search = 80 / 240 = 10 / 30.
THETA_SCALE = 1 / 3


def params_to_theta(params: torch.Tensor, scale: float = THETA_SCALE) -> torch.Tensor:
    """(N, 3) (tx, ty, angle) -> (N, 2, 3) theta (SPEC 3).

    theta = [[s cos a, -s sin a, tx], [s sin a, s cos a, ty]]: it maps the query's normalised
    coordinates in [-1, 1]^2 to the search frame's (the `affine_grid` convention), so a query
    of 1/s times fewer cells per side is a rotated window of the search frame centred at
    (tx, ty).
    """
    tx, ty, angle = params.unbind(dim=-1)
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    rows = (torch.stack([cos, -sin, tx], dim=-1), torch.stack([sin, cos, ty], dim=-1))
    return torch.stack(rows, dim=-2)


class Localizer(nn.Module):
    """g: (B, H*W, h*w) affinity -> (B, 2, 3) theta.

    The affinity is read as an (H*W)-channel h x w map (900 channels, 10 x 10 in the paper):
    Conv(H*W -> 128, 4x4, no padding, no bias), LeakyReLU(0.1), Conv(128 -> 64, 4x4, no bias),
    LeakyReLU(0.1), flatten, Linear(64 (h-6) (w-6) -> 3) (1024 -> 3 at 10 x 10), SPEC 3. Any
    query of at least 7 x 7 cells works, so a reduced-resolution preset can use the same g.

    Args:
        search_size: (H, W) of the search feature map (30, 30 for a 240 x 240 frame).
        query_size: (h, w) of the query feature map (10, 10 for an 80 x 80 patch).
        scale: the fixed scale of theta, query / search (SPEC 3: 1/3).
    """

    def __init__(
        self,
        search_size: tuple[int, int] = (30, 30),
        query_size: tuple[int, int] = (10, 10),
        scale: float = THETA_SCALE,
    ):
        super().__init__()
        h, w = query_size
        self.search_size, self.query_size, self.scale = tuple(search_size), (h, w), scale
        if h < 7 or w < 7:
            raise ValueError(f"query_size {query_size} must be at least 7 x 7 (two 4x4 convs)")
        positions = search_size[0] * search_size[1]
        self.conv1 = nn.Conv2d(positions, 128, kernel_size=4, bias=False)
        self.conv2 = nn.Conv2d(128, 64, kernel_size=4, bias=False)
        self.fc = nn.Linear(64 * (h - 6) * (w - 6), 3)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Initialisation of models/videos/model_simple.py: Kaiming (fan_out) convolutions, and a
        # Linear with N(0, 0.01) weights and zero bias. The zero bias and tiny weights make the
        # first thetas about (0, 0, 0): an unrotated window in the middle of the frame. That
        # crop lies inside the frame (no zero padding sampled), is the mean of the data's
        # theta distribution (centres spread around the middle, angles uniform in +-45 deg,
        # SPEC 5), and sits where sin/cos are best conditioned. Weights are not exactly zero
        # so that gradients reach the convolutions and the encoder from the first step.
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def params(self, affinity: torch.Tensor) -> torch.Tensor:
        """(B, H*W, h*w) -> (B, 3) raw (tx, ty, angle)."""
        b, positions, queries = affinity.shape
        h, w = self.query_size
        if positions != self.conv1.in_channels or queries != h * w:
            raise ValueError(
                f"affinity {tuple(affinity.shape)} does not match search {self.search_size} "
                f"and query {self.query_size}"
            )
        x = affinity.reshape(b, positions, h, w)  # query positions are row-major (affinity.py)
        x = F.leaky_relu(self.conv1(x), 0.1)
        x = F.leaky_relu(self.conv2(x), 0.1)
        # The parameters in float32 even under autocast: a bf16 output would place the crop
        # to ~0.4% of the frame (0.1 cells of a 30-cell map near the edge) and quantise every
        # theta distance after it. The layer is 1024 x 3: nothing to save in bf16.
        with torch.autocast(x.device.type, enabled=False):
            return self.fc(x.flatten(1).to(self.fc.weight.dtype))

    def forward(self, affinity: torch.Tensor) -> torch.Tensor:
        """(B, H*W, h*w) affinity -> (B, 2, 3) theta."""
        return params_to_theta(self.params(affinity), self.scale)

    def extra_repr(self) -> str:
        return (
            f"search_size={self.search_size}, query_size={self.query_size}, "
            f"scale={self.scale:.4g}"
        )
