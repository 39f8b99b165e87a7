"""Encoders phi: frames in, dense features out (SPEC 2 and the SPEC 6 baselines): ResNets and the
pixel baseline at stride 8, DINO's ViTs at their patch size (8 or 16)."""

from __future__ import annotations

import torch
from torch import nn

from timecycle.encoder.pixel import PixelEncoder
from timecycle.encoder.resnet import ARCHS, ResNetEncoder, TimeCycleHead
from timecycle.encoder.vit import VIT_ARCHS, ViTEncoder

#: `identity` has no features: every frame gets frame 0's label (SPEC 6 baselines).
ENCODERS = ("identity", "pixel", *ARCHS, *VIT_ARCHS)


def build_encoder(name: str, head: bool = False, seed: int = 0) -> nn.Module | None:
    """Build an encoder by name; returns None for `identity`.

    ResNets are randomly initialised from `seed` (torchvision's initialisation) and ViTs as
    DINO initialises them, which is the documented floor baseline; load trained weights with
    `timecycle.encoder.weights`.
    """
    if name == "identity":
        return None
    if name == "pixel":
        return PixelEncoder()
    if name in ARCHS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ResNetEncoder(name, head=head)
    if name in VIT_ARCHS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ViTEncoder(name)
    raise ValueError(f"unknown encoder {name!r}; choose from {', '.join(ENCODERS)}")


__all__ = ["ENCODERS", "PixelEncoder", "ResNetEncoder", "TimeCycleHead", "ViTEncoder",
           "build_encoder"]
