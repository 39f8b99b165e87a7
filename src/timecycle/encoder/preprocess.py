"""Frame preprocessing shared by training and propagation: uint8 RGB -> normalised float."""

from __future__ import annotations

import numpy as np
import torch

# ImageNet statistics, as used by every encoder in this field (SPEC 5).
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])


def to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W, 3) or (T, H, W, 3) uint8 RGB -> (3, H, W) or (T, 3, H, W) float, normalised."""
    x = torch.as_tensor(frames)
    x = x.movedim(-1, -3).float().div_(255)
    shape = (3, 1, 1)
    return (x - IMAGENET_MEAN.view(shape)) / IMAGENET_STD.view(shape)
