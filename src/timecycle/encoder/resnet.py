"""ResNet encoders cut after layer3 at output stride 8, with the optional TimeCycle head.

SPEC 2: ResNet up to and including layer3 ("res4"); layer4 is dropped. layer3's stride is set
to 1 without dilation, so the output stride is 8 (a 240x240 frame gives 30x30 features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from timecycle.encoder.blocks import ResNetTrunk

# arch -> channels at layer3
ARCHS = {"resnet18": 256, "resnet50": 1024}

# SPEC 2: the head maps layer3's channels to 512 (1024 -> 512 for ResNet-50).
HEAD_DIM = 512


def set_padding_mode(module: nn.Module, mode: str) -> None:
    """Pad every padded convolution of `module` with `mode` ("zeros" or "reflect")."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and sum(m.padding) > 0:
            m.padding_mode = mode


class TimeCycleHead(nn.Module):
    """1x1 convolution without bias, then ReLU (SPEC 2: "afterconv1" of the public code).

    The output is left un-normalised: affinities L2-normalise it over channels, and the
    tracker's differentiable crop samples it before normalising (SPEC 2).
    """

    def __init__(self, in_channels: int, out_channels: int = HEAD_DIM):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, h, w) -> (B, C_out, h, w), non-negative."""
        return F.relu(self.conv(x))


class ResNetEncoder(nn.Module):
    """Dense encoder phi: ImageNet-normalised frames in, stride-8 feature maps out.

    Args:
        arch: "resnet18" or "resnet50".
        head: add the TimeCycle 1x1 head (layer3 channels -> 512).

    forward: (B, 3, H, W) -> (B, C, ceil(H/8), ceil(W/8)); C = 256 (ResNet-18), 1024
    (ResNet-50) or 512 with the head. The features are not normalised.
    """

    def __init__(self, arch: str = "resnet18", head: bool = False):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHS)}")
        channels = ARCHS[arch]
        net = ResNetTrunk(arch)  # random; weights come only from --weights files
        # Output stride 8: layer3's first block strides in its 3x3 conv (on conv1 of a
        # BasicBlock, conv2 of a Bottleneck) and in its downsample branch.
        block = net.layer3[0]
        for conv in (block.conv1, block.conv2, block.downsample[0]):
            conv.stride = (1, 1)
        self.arch = arch
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.head = TimeCycleHead(channels) if head else None
        self.out_channels = HEAD_DIM if head else channels
        self.padding_mode = "zeros"

    def set_padding_mode(self, mode: str) -> None:
        """"zeros" (torchvision) or "reflect": CRW's scratch ResNet pads every padded
        convolution by reflection (videowalk code/resnet.py `modify(padding='reflect')`), so its
        weights reproduce its features only with reflect padding."""
        set_padding_mode(self, mode)
        self.padding_mode = mode

    def drop_head(self) -> None:
        """Remove the TimeCycle head: forward returns layer3's features (what CRW's code
        propagates for a TimeCycle checkpoint; see encoder.weights.HEAD_PROTOCOLS)."""
        self.head = None
        self.out_channels = ARCHS[self.arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(x) if self.head is not None else x
