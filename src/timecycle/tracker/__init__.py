"""The differentiable tracker T = (affinity, localizer g, sampler) and the TimeCycle model.

SPEC 3 (tracker) and SPEC 4 (cycles).
"""

from timecycle.tracker.affinity import AFFINITY_SCALE, Affinity, affinity
from timecycle.tracker.cycle import STRIDE, TimeCycle
from timecycle.tracker.localizer import THETA_SCALE, Localizer, params_to_theta
from timecycle.tracker.walk import ContrastiveWalk
from timecycle.tracker.sampler import (
    PUBLIC_TRANSLATION_FACTOR,
    Sampler,
    affine_sample,
    cut_patch,
    scale_translation,
)

__all__ = [
    "AFFINITY_SCALE",
    "PUBLIC_TRANSLATION_FACTOR",
    "STRIDE",
    "THETA_SCALE",
    "Affinity",
    "ContrastiveWalk",
    "Localizer",
    "Sampler",
    "TimeCycle",
    "affine_sample",
    "affinity",
    "cut_patch",
    "params_to_theta",
    "scale_translation",
]
