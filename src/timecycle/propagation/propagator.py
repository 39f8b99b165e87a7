"""The propagation engine: one video at a time, holding only the context (SPEC 6).

`LabelPropagator` is given frame 0's features and label, then each later frame's features in
order, and returns that frame's soft label. It keeps frame 0 and a ring buffer of the last
`n_context` frames' features and stored labels, so memory does not grow with video length.
Restricted protocols read each context frame only inside its window (see `windows.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from timecycle.propagation.protocols import Protocol
from timecycle.propagation.resize import minmax
from timecycle.propagation.windows import WindowGeometry, make_geometry, tile_queries, untile

# Working-set budget for one chunk of query tiles (keys + labels + affinities), in bytes. The
# products stay large enough for BLAS while the transient memory stays far below a frame's
# full affinity.
CHUNK_BYTES = 96 * 2**20


class LabelPropagator:
    """Propagate a label through a video, one frame at a time.

    Args:
        protocol: the preset (SPEC 6).
        feat0: (C, h, w) frame 0's features (normalised here over C).
        label0: (K, h, w) frame 0's label at feature resolution.
        tile: query tile side for restricted windows.
    """

    def __init__(self, protocol: Protocol, feat0: torch.Tensor, label0: torch.Tensor, tile: int = 8):
        self.p = protocol
        c, h, w = feat0.shape
        k = label0.shape[0]
        self.shape = (h, w)
        feat0 = F.normalize(feat0.float(), dim=0)
        label0 = label0.float()
        restricted = protocol.restrict != "none"
        self.geo: WindowGeometry | None = None
        pad = (0, 0, 0, 0)
        if restricted:
            self.geo = make_geometry(h, w, protocol.radius, protocol.restrict, tile, feat0.device)
            pad = self.geo.pad()
        # Slot 0 holds frame 0 when it is read like the other context frames; otherwise frame 0
        # is kept apart, unrestricted (CRW's "long memory").
        self.first_apart = restricted and not protocol.restrict_first
        self.feat0, self.label0 = feat0.flatten(1), label0.flatten(1)  # (C, hw), (K, hw)
        n0 = 0 if self.first_apart else 1
        slots = n0 + protocol.n_context
        hp, wp = h + pad[2] + pad[3], w + pad[0] + pad[1]
        self.pad = pad
        # Channels-last (slots, Hp, Wp, C): a window of a context frame is then a few long
        # contiguous runs, so gathering it for the matrix product is a cheap copy.
        self.feats = feat0.new_zeros(slots, hp, wp, c)
        self.labels = label0.new_zeros(slots, hp, wp, k)
        self.n0 = n0
        self.count = 0  # previous frames stored so far (capped at n_context)
        self.next_slot = 0
        if n0:
            self._write(0, feat0, label0)
        if protocol.pad_context:
            # Before n_context frames exist, the missing previous frames are copies of frame 0.
            for _ in range(protocol.n_context):
                self._push(feat0, label0)

    def _write(self, slot: int, feat: torch.Tensor, label: torch.Tensor) -> None:
        self.feats[slot] = F.pad(feat, self.pad).permute(1, 2, 0)
        self.labels[slot] = F.pad(label, self.pad).permute(1, 2, 0)

    def _push(self, feat: torch.Tensor, label: torch.Tensor) -> None:
        self._write(self.n0 + self.next_slot, feat, label)
        self.next_slot = (self.next_slot + 1) % self.p.n_context
        self.count = min(self.count + 1, self.p.n_context)

    @torch.no_grad()
    def step(self, feat: torch.Tensor) -> torch.Tensor:
        """(C, h, w) features of the next frame -> (K, h, w) soft label (then stored)."""
        feat = F.normalize(feat.float(), dim=0)
        n = self.n0 + self.count
        feats = self.feats[:n].permute(0, 3, 1, 2)  # (F, C, Hp, Wp) views
        labels = self.labels[:n].permute(0, 3, 1, 2)
        if self.p.weighting == "per_frame_topk":
            pred = per_frame_topk(feat, feats, labels, self.p.topk, self.p.temperature)
        elif self.geo is None:
            pred = dense_joint_topk(feat, feats, labels, self.p.topk, self.p.temperature)
        else:
            first = (self.feat0, self.label0) if self.first_apart else None
            pred = windowed_joint_topk(
                feat, feats, labels, self.geo, self.p.topk, self.p.temperature, first
            )
        stored = minmax(pred) if self.p.store == "minmax" else pred
        self._push(feat, stored)
        return pred


def per_frame_topk(
    q: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, k: int, temperature: float
) -> torch.Tensor:
    """TimeCycle weights: per context frame, softmax over its positions, keep the top-k raw
    softmax values; sum over frames and divide by their number.

    q: (C, h, w); feats: (F, C, h, w); labels: (F, K, h, w) -> (K, h, w).
    """
    c, h, w = q.shape
    n, kk = feats.shape[0], labels.shape[1]
    qf = q.reshape(c, h * w)
    keys = feats.reshape(n, c, h * w)
    lab = labels.reshape(n, kk, h * w)
    out = q.new_zeros(kk, h * w)
    step = max(1, CHUNK_BYTES // (4 * n * h * w))
    for s in range(0, h * w, step):
        aff = torch.einsum("fcn,cq->fqn", keys, qf[:, s : s + step]) / temperature  # (F, q, N)
        weights, idx = aff.softmax(dim=-1).topk(k, dim=-1)  # (F, q, k)
        gathered = torch.gather(lab[:, :, None, :].expand(n, kk, idx.shape[1], h * w), 3,
                                idx[:, None].expand(n, kk, *idx.shape[1:]))  # (F, K, q, k)
        out[:, s : s + step] = (gathered * weights[:, None]).sum(dim=(0, 3)) / n
    return out.view(kk, h, w)


def dense_joint_topk(
    q: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, k: int, temperature: float
) -> torch.Tensor:
    """Unrestricted joint top-k over all context positions. Shapes as `per_frame_topk`."""
    c, h, w = q.shape
    n, kk = feats.shape[0], labels.shape[1]
    keys = feats.permute(1, 0, 2, 3).reshape(c, n * h * w)
    lab = labels.permute(1, 0, 2, 3).reshape(kk, n * h * w)
    qf = q.reshape(c, h * w)
    out = q.new_zeros(kk, h * w)
    step = max(1, CHUNK_BYTES // (4 * n * h * w))
    for s in range(0, h * w, step):
        aff = qf[:, s : s + step].T @ keys  # (q, F*N)
        vals, idx = aff.topk(k, dim=-1)
        weights = (vals / temperature).softmax(dim=-1)
        out[:, s : s + step] = (lab[:, idx] * weights[None]).sum(-1)
    return out.view(kk, h, w)


def windowed_joint_topk(
    q: torch.Tensor,
    feats: torch.Tensor,
    labels: torch.Tensor,
    geo: WindowGeometry,
    k: int,
    temperature: float,
    first: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Joint top-k over restricted windows of the context frames, plus an unrestricted frame.

    q: (C, h, w) normalised query; feats: (F, C, Hp, Wp) and labels: (F, K, Hp, Wp) context
    frames padded by `geo.pad()`, best as channels-last views; first: optional
    ((C, h*w), (K, h*w)) frame read without restriction (CRW's frame 0). Returns (K, h, w).
    """
    c = q.shape[0]
    n, kk = feats.shape[0], labels.shape[1]
    t, win = geo.tile, geo.win
    qt = tile_queries(q, geo)  # (nT, t*t, C)

    def windows(x: torch.Tensor) -> torch.Tensor:
        # (F, C, Hp, Wp) -> strided view (F, n_ty, n_tx, win, win, C) of every tile's window.
        s = x.stride()
        shape = (x.shape[0], geo.n_ty, geo.n_tx, win, win, x.shape[1])
        return x.as_strided(shape, (s[0], t * s[2], t * s[3], s[2], s[3], s[1]))

    kwin, lwin = windows(feats), windows(labels)
    hw_first = 0 if first is None else first[0].shape[1]
    per_tile = 4 * (n * (c + kk) * win * win + 2 * t * t * (n * win * win + hw_first))
    tiles_per_chunk = max(1, CHUNK_BYTES // per_tile)
    out = q.new_empty(kk, geo.n_tiles, t * t)
    for ty in range(geo.n_ty):
        for tx0 in range(0, geo.n_tx, tiles_per_chunk):
            tx1 = min(tx0 + tiles_per_chunk, geo.n_tx)
            nc = tx1 - tx0
            ids = slice(ty * geo.n_tx + tx0, ty * geo.n_tx + tx1)
            qc = qt[ids]  # (nc, t*t, C)
            # (F, nc, win, win, C) -> (nc, F*win*win, C): the only copy of the keys.
            keys = kwin[:, ty, tx0:tx1].transpose(0, 1).reshape(nc, n * win * win, c)
            labs = lwin[:, ty, tx0:tx1].transpose(0, 1).reshape(nc, n * win * win, kk)
            aff = torch.bmm(qc, keys.transpose(1, 2)).view(nc, t * t, n, win * win)
            aff.masked_fill_(geo.outside[ids][:, :, None, :], float("-inf"))
            vals, idx = aff.view(nc, t * t, -1).topk(k, dim=-1)  # (nc, t*t, k)
            cand = _gather(labs, idx)  # (nc, t*t, k, K)
            if first is not None:
                f_vals, f_idx = (qc @ first[0]).topk(k, dim=-1)  # (nc, t*t, k)
                f_cand = first[1].T[f_idx]  # (nc, t*t, k, K)
                vals = torch.cat([f_vals, vals], dim=-1)
                cand = torch.cat([f_cand, cand], dim=-2)
                vals, sel = vals.topk(k, dim=-1)
                cand = torch.gather(cand, 2, sel[..., None].expand(nc, t * t, k, kk))
            weights = (vals / temperature).softmax(dim=-1)
            out[:, ids] = (cand * weights[..., None]).sum(2).permute(2, 0, 1)
    return untile(out, geo)


def _gather(labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """labels (nc, N, K), idx (nc, Q, k) -> (nc, Q, k, K)."""
    nc, _, kk = labels.shape
    _, q, k = idx.shape
    flat = torch.gather(labels, 1, idx.reshape(nc, q * k, 1).expand(nc, q * k, kk))
    return flat.view(nc, q, k, kk)
