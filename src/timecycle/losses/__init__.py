"""Losses of TimeCycle training (SPEC 4): theta distance, similarity terms, presets."""

from timecycle.losses.config import PRESETS, LossConfig, preset, total_loss
from timecycle.losses.similarity import (
    feature_similarity_loss,
    inlier_count_loss,
    weak_inlier_count,
)
from timecycle.losses.theta import theta_grid_distance, warp_points

__all__ = [
    "PRESETS",
    "LossConfig",
    "feature_similarity_loss",
    "inlier_count_loss",
    "preset",
    "theta_grid_distance",
    "total_loss",
    "warp_points",
    "weak_inlier_count",
]
