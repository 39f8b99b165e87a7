"""Plain, slow reference implementations of the three propagation protocols (SPEC 6).

Written for clarity, after the public code: the whole affinity to every context frame is
computed, then restricted with a mask, exactly as CRW (additive -1e10), DINO (multiplicative
mask after exp) and TimeCycle (per-frame softmax) do. The fast engine must agree with these.
TimeCycle's context is kept with the indices of its test code (davis_test.py, test_davis.py):
copies of frame 0 before the video, frame 0 itself the first target, every later item's label
overwritten by its normalised prediction, rather than the engine's ring of context slots.
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
    """TimeCycle's per-channel min-max; a constant channel is left at x - min = 0 (the public
    code divides it by zero)."""
    out = x.clone()
    for c in range(x.shape[0]):
        lo, hi = x[c].min(), x[c].max()
        out[c] = x[c] - lo
        if hi - lo > 0:
            out[c] = out[c] / (hi - lo)
    return out


def _predict(
    p: Protocol, ctx: list[tuple[torch.Tensor, torch.Tensor]], q: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Context [(feat (C, N), label (K, N))], frame 0 first, and query q (C, N) -> (K, N)."""
    kk, n = ctx[0][1].shape[0], q.shape[1]
    if p.weighting == "per_frame_topk":
        pred = torch.zeros(kk, n, dtype=q.dtype)
        for kf, kl in ctx:
            a = torch.softmax((kf.T @ q) / p.temperature, dim=0)  # (keys, queries)
            v, i = a.topk(p.topk, dim=0)
            pred += (kl[:, i] * v[None]).sum(1)
        return pred / len(ctx)
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
        return lab @ a
    v, i = (a / p.temperature).topk(p.topk, dim=0)
    wts = torch.softmax(v, dim=0)
    return (lab[:, i] * wts[None]).sum(1)


def reference_propagate(
    p: Protocol, feats: torch.Tensor, label0: torch.Tensor, dtype: torch.dtype = torch.float64
) -> list[torch.Tensor]:
    """feats (T, C, h, w), label0 (K, h, w) -> soft labels (K, h, w) of frames 1..T-1: the
    prediction, or with `output_label="stored"` the stored context label.

    Like the public code, it holds the whole video's features. `dtype` float32 is for the
    benchmark; the tests use float64.
    """
    t_all, c, h, w = feats.shape
    kk = label0.shape[0]
    feats = F.normalize(feats.to(dtype), dim=1).flatten(2)  # (T, C, N)
    label0 = label0.to(dtype).flatten(1)  # (K, N)
    mask = None if p.restrict == "none" else _distance_mask(h, w, p.radius, p.restrict)
    if p.self_propagate:
        return _propagate_items(p, feats, label0, mask, h, w)
    hist: list[tuple[torch.Tensor, torch.Tensor]] = []  # previous frames (feat, stored label)
    if p.pad_context:
        hist = [(feats[0], label0)] * p.n_context
    preds = []
    for t in range(1, t_all):
        q = feats[t]
        ctx = [(feats[0], label0)] + hist[-p.n_context :] if p.n_context else [(feats[0], label0)]
        pred = _predict(p, ctx, q, mask)
        stored = _minmax(pred) if p.store == "minmax" else pred
        preds.append((stored if p.output_label == "stored" else pred).view(kk, h, w).float())
        hist.append((q, stored))
    return preds


def _propagate_items(
    p: Protocol, feats: torch.Tensor, label0: torch.Tensor, mask: torch.Tensor | None,
    h: int, w: int,
) -> list[torch.Tensor]:
    """TimeCycle's indexing (davis_test.py, test_davis.py), literally: the video is n + 1 copies
    of frame 0 followed by all its frames; item i >= n + 1 is predicted from item 0 (ground
    truth) and items i - n .. i - 1, and its stored label overwrites item i's. Item n + 1 is
    frame 0 itself; its result is used as context but not returned."""
    n = p.n_context
    frame_of = [0] * (n + 1) + list(range(feats.shape[0]))
    labels: dict[int, torch.Tensor] = {i: label0 for i in range(n + 1)}
    preds = []
    for i in range(n + 1, len(frame_of)):
        ctx = [(feats[0], label0)] + [(feats[frame_of[j]], labels[j]) for j in range(i - n, i)]
        pred = _predict(p, ctx, feats[frame_of[i]], mask)
        labels[i] = _minmax(pred) if p.store == "minmax" else pred
        if i > n + 1:
            out = labels[i] if p.output_label == "stored" else pred
            preds.append(out.view(-1, h, w).float())
    return preds
