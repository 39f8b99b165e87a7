"""Encoders phi: frames in, dense stride-8 features out (SPEC 2 and the SPEC 6 baselines)."""

from __future__ import annotations

import torch
from torch import nn

from timecycle.encoder.pixel import PixelEncoder
from timecycle.encoder.resnet import ARCHS, ResNetEncoder, TimeCycleHead

#: `identity` has no features: every frame gets frame 0's label (SPEC 6 baselines).
ENCODERS = ("identity", "pixel", *ARCHS)


def build_encoder(name: str, head: bool = False, seed: int = 0) -> nn.Module | None:
    """Build an encoder by name; returns None for `identity`.

    ResNets are randomly initialised from `seed` (torchvision's initialisation), which is the
    documented floor baseline; load trained weights with `timecycle.encoder.weights`.
    """
    if name == "identity":
        return None
    if name == "pixel":
        return PixelEncoder()
    if name in ARCHS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ResNetEncoder(name, head=head)
    raise ValueError(f"unknown encoder {name!r}; choose from {', '.join(ENCODERS)}")


__all__ = ["ENCODERS", "PixelEncoder", "ResNetEncoder", "TimeCycleHead", "build_encoder"]
