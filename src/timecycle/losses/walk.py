"""The contrastive random walk's loss (SPEC 9; ajabri/videowalk code/model.py `forward`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def walk_cross_entropy(walk: torch.Tensor, eps: float = 1e-20
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, N) row-stochastic walks -> (cross-entropy, accuracy), scalars.

    Row i of a walk is where node i ends up; the target is i itself (model.py xent_targets:
    the identity). Cross-entropy of log(walk + eps), mean over clips and nodes; accuracy is
    the share of rows whose argmax is their own index (detached).
    """
    b, n, _ = walk.shape
    logits = torch.log(walk + eps).flatten(0, 1)
    target = torch.arange(n, device=walk.device).repeat(b)
    xent = F.cross_entropy(logits, target)
    acc = (logits.detach().argmax(dim=-1) == target).float().mean()
    return xent, acc
