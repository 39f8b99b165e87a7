"""Plain, slow reference implementations of the three propagation protocols (SPEC 6).

Written for clarity, after the public code: the whole affinity to every context frame is
computed, then restricted with a mask, exactly as CRW (additive -1e10), DINO (multiplicative
mask after exp) and TimeCycle (per-frame softmax) do. The fast engine must agree with these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from timecycle.propagation.protocols import Protocol


def _distance_mask(h: int, w: int, radius: int, shape: str) -> torch.Tensor:
    """(h*w keys, h*w queries) bool: key within the restriction of the query."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten().float(), xs.flatten().float()
    dy = ys[:, None] - ys[None, :]
    dx = xs[:, None] - xs[None, :]
    if shape == "disk":
        return (dy**2 + dx**2) ** 0.5 < radius
    return (dy.abs() <= radius) & (dx.abs() <= radius)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    for c in range(x.shape[0]):
        lo, hi = x[c].min(), x[c].max()
        if hi - lo > 0:
            out[c] = (x[c] - lo) / (hi - lo)
    return out


def reference_propagate(
    p: Protocol, feats: torch.Tensor, label0: torch.Tensor, dtype: torch.dtype = torch.float64
) -> list[torch.Tensor]:
    """feats (T, C, h, w), label0 (K, h, w) -> soft labels (K, h, w) of frames 1..T-1.

    Like the public code, it holds the whole video's features. `dtype` float32 is for the
    benchmark; the tests use float64.
    """
    t_all, c, h, w = feats.shape
    kk = label0.shape[0]
    feats = F.normalize(feats.to(dtype), dim=1).flatten(2)  # (T, C, N)
    label0 = label0.to(dtype).flatten(1)  # (K, N)
    mask = None if p.restrict == "none" else _distance_mask(h, w, p.radius, p.restrict)
    hist: list[tuple[torch.Tensor, torch.Tensor]] = []  # previous frames (feat, stored label)
    if p.pad_context:
        hist = [(feats[0], label0)] * p.n_context
    preds = []
    for t in range(1, t_all):
        q = feats[t]
        ctx = [(feats[0], label0)] + hist[-p.n_context :] if p.n_context else [(feats[0], label0)]
        if p.weighting == "per_frame_topk":
            pred = torch.zeros(kk, h * w, dtype=dtype)
            for kf, kl in ctx:
                a = torch.softmax((kf.T @ q) / p.temperature, dim=0)  # (keys, queries)
                v, i = a.topk(p.topk, dim=0)
                pred += (kl[:, i] * v[None]).sum(1)
            pred /= len(ctx)
        else:
            affs, labs = [], []
            for j, (kf, kl) in enumerate(ctx):
                a = kf.T @ q  # (keys, queries)
                restricted = mask is not None and (j > 0 or p.restrict_first)
                if restricted and p.name == "dino":
                    a = torch.exp(a / p.temperature) * mask
                elif restricted:
                    a = a + torch.where(mask, 0.0, -1e10)
                elif p.name == "dino":
                    a = torch.exp(a / p.temperature)
                affs.append(a)
                labs.append(kl)
            a = torch.cat(affs, 0)
            lab = torch.cat(labs, 1)
            if p.name == "dino":
                # DINO: keep values >= the k-th largest, normalise by their sum.
                tk = a.topk(p.topk, dim=0).values.min(dim=0).values
                a = torch.where(a < tk[None], 0.0, a)
                a = a / a.sum(0, keepdim=True)
                pred = lab @ a
            else:
                v, i = (a / p.temperature).topk(p.topk, dim=0)
                wts = torch.softmax(v, dim=0)
                pred = (lab[:, i] * wts[None]).sum(1)
        pred = pred.view(kk, h, w)
        preds.append(pred.float())
        stored = _minmax(pred) if p.store == "minmax" else pred
        hist.append((q, stored.flatten(1)))
    return preds
