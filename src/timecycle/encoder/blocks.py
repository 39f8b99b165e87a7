"""The ResNet trunk, built here rather than imported from torchvision.

Importing torchvision costs about a second at every start of the command line (its `ops`
package imports torch._dynamo), and inference needs nothing else from it. The modules, their
names and their parameters are torchvision's ResNet-18/50 (He et al. 2016; torchvision's
"v1.5", the stride of a Bottleneck on its 3x3 convolution), so torchvision, CRW and TimeCycle
state dicts load unchanged.

The random initialisation is torchvision's to the bit for the same seed, so the random
network "as built" that every baseline reports stays the same network. That takes the same
draws from the generator: layer4 and the classifier are built too (and dropped by the
encoder), and the convolutions' Kaiming normals are drawn in torchvision's module order (a
block registers its downsample branch after its own layers). tests/test_encoder_weights.py
compares parameters, buffers, the generator's state and the forward pass with torchvision's.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34); the first one strides."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(c_in, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c_in, H, W) -> (B, planes, H/stride, W/stride)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)  # in place, as torchvision
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (which strides), 1x1 expand by 4 (ResNet-50)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(c_in, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c_in, H, W) -> (B, 4 planes, H/stride, W/stride)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


# arch -> (block, blocks per layer); He et al. 2016, Table 1.
DEPTHS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNetTrunk(nn.Module):
    """torchvision's ResNet, randomly initialised as torchvision does it (see the module's note).

    Attributes conv1, bn1, relu, maxpool, layer1..layer4 and fc carry torchvision's names; the
    encoder keeps the stem and layer1..3 and drops the rest.
    """

    def __init__(self, arch: str):
        super().__init__()
        block, depths = DEPTHS[arch]
        self.c_in = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._layer(block, 64, depths[0], 1)
        self.layer2 = self._layer(block, 128, depths[1], 2)
        self.layer3 = self._layer(block, 256, depths[2], 2)
        self.layer4 = self._layer(block, 512, depths[3], 2)
        self.fc = nn.Linear(512 * block.expansion, 1000)  # drawn only to keep the generator in step
        for m in self.modules():  # registration order, as torchvision's ResNet.__init__
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        c_out = planes * block.expansion
        downsample = None
        if stride != 1 or self.c_in != c_out:
            downsample = nn.Sequential(_conv(self.c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))
        layers = [block(self.c_in, planes, stride, downsample)]
        self.c_in = c_out
        layers += [block(c_out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)
