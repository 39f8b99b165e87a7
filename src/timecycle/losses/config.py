"""Loss presets and the total training loss (SPEC 4).

Two named presets: `paper` (the CVPR 2019 paper's objective) and `code` (what the public code,
train_video_cycle_simple.py with models/videos/model_simple.py, optimises). Both read the
same per-step terms that `TimeCycle.forward` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

SIMILARITIES = ("feature", "inlier")
QUERIES = ("patch", "crop")
STEP_REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class LossConfig:
    """Weights and switches of the TimeCycle objective.

    total = w_sim * R(similarity) + w_long * R(long) + w_skip * R(skip), where each term has one
    entry per step (cycle length n = 1..K for `long`, past frame t-i, i = 1..K, for `skip` and
    the similarity) and R sums or averages those entries (`step_reduction`).
    """

    # "feature": negative feature similarity (paper Sec. 3.3, SPEC 4); "inlier": negative weak
    # inlier count (public code, SPEC 4).
    similarity: str = "feature"
    # Paper: L = L_sim + lambda (L_long + L_skip), lambda = 0.1 (SPEC 4).
    weight_similarity: float = 1.0
    weight_long: float = 0.1
    weight_skip: float = 0.1
    # Paper: each term is summed over the steps i = 1..k (SPEC 4: "summed over steps").
    step_reduction: str = "sum"
    # Tracker switches that a preset fixes together with its loss (see tracker/sampler.py):
    # False lines feature crops up with patches cut by the same theta (this package's default).
    align_corners: bool = False
    # SPEC 3: 227/210 in the public code, off (1.0) by default.
    translation_factor: float = 1.0
    # SPEC 4 / geotnf/loss.py: theta distance on a 20 x 20 grid.
    theta_grid: int = 20
    # Where the tracked query's features come from. "patch" (paper and public code): the patch
    # cut out of I_t, encoded on its own. "crop": I_t's features sampled under theta_gt, i.e.
    # the patch's features with the frame's context, as every feature has at test time (an
    # option of this package; see tracker/cycle.py for why it trains faster from scratch).
    query: str = "patch"

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.query not in QUERIES:
            raise ValueError(f"query must be one of {QUERIES}, got {self.query!r}")
        if self.step_reduction not in STEP_REDUCTIONS:
            raise ValueError(
                f"step_reduction must be one of {STEP_REDUCTIONS}, got {self.step_reduction!r}"
            )


PRESETS: dict[str, LossConfig] = {
    "paper": LossConfig(),
    "code": LossConfig(
        similarity="inlier",  # model_simple.py loss(): WeakInlierCountPool, negated
        weight_similarity=1.0,  # train_video_cycle_simple.py: inlier term unweighted
        weight_long=0.02,  # train_video_cycle_simple.py: lamda (0.1) * 0.2
        weight_skip=0.1,  # train_video_cycle_simple.py: lamda (0.1)
        step_reduction="mean",  # train_video_cycle_simple.py: sum(...) / len(...), batch means
        align_corners=True,  # PyTorch 0.4 grid_sample, linspace(-1, 1) grids (geotnf/)
        translation_factor=227 / 210,  # model_simple.py: GeometricTnfAffine(offset_factor=227/210)
    ),
}


def preset(name: str, **overrides) -> LossConfig:
    """The named preset (`paper` or `code`), with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown loss preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def total_loss(terms: dict[str, torch.Tensor], config: LossConfig) -> torch.Tensor:
    """Scalar training loss from `TimeCycle.forward`'s terms.

    Args:
        terms: at least "long", "skip" and "sim_feature" or "sim_inlier", each (K,).
        config: weights, similarity variant and step reduction.
    """
    reduce = torch.sum if config.step_reduction == "sum" else torch.mean
    similarity = terms["sim_feature" if config.similarity == "feature" else "sim_inlier"]
    return (
        config.weight_similarity * reduce(similarity)
        + config.weight_long * reduce(terms["long"])
        + config.weight_skip * reduce(terms["skip"])
    )
