"""Follow a first-frame mask and points through a stream of frames, with the propagation
engine of the benchmarks (SPEC 6), and optionally read dense correspondence to frame 0.

The mask's objects (one-hot channels, as `propagate davis` makes them) and the points (one
Gaussian heat map each plus a background channel, as `propagate jhmdb` makes joints) are one
label of Km + 1 + K channels carried by a single `LabelPropagator`: its weights depend on the
features alone and every operation on the label is per channel, so each part comes out exactly
as it would alone, at the cost of one pass.

Point coordinates here are 0-based (track/inputs.py); the heat maps use `keypoints.py`, whose
1-based pos_img convention is the same grid shifted by one pixel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from timecycle.propagation.keypoints import cells_to_joints, keypoint_label, read_keypoints
from timecycle.propagation.presets import KeypointReadout
from timecycle.propagation.propagator import LabelPropagator, query_key_dots
from timecycle.propagation.protocols import Protocol
from timecycle.propagation.resize import downsample_label, label_to_ids
from timecycle.propagation.video import FrameEncoder, to_host
from timecycle.propagation.windows import DEFAULT_TILE

# Queries per soft-argmax product: (FLOW_CHUNK x cells of frame 0) floats at a time.
FLOW_CHUNK = 1024


@dataclass
class FrameResult:
    """One frame's output. ids: (H, W) uint8 object ids; xy: (K, 2) float64 pixel (x, y),
    NaN = not predicted; score: (K,) peak of each point's propagated map; flow: (2, h, w)
    float32 pixel motion from frame 0 to this frame at each feature cell (`soft_argmax_flow`).
    Parts that were not asked for are None."""

    t: int
    frame: np.ndarray
    ids: np.ndarray | None = None
    xy: np.ndarray | None = None
    score: np.ndarray | None = None
    flow: np.ndarray | None = None


class FirstLabel:
    """Frame 0's mask and points as one label at feature resolution, and the way back."""

    def __init__(self, ids0: np.ndarray | None, xy0: np.ndarray | None, image_hw: tuple[int, int],
                 protocol: Protocol, readout: KeypointReadout, device: torch.device):
        self.ids0, self.xy0, self.image_hw = ids0, xy0, tuple(image_hw)
        self.protocol, self.readout, self.device = protocol, readout, device
        self.n_mask = 0
        if ids0 is not None:
            # As CRW data/vos.py: only the ids present in frame 0 become channels 0..Km-1.
            present = np.unique(ids0)
            channel = np.zeros(256, np.int64)
            channel[present] = np.arange(len(present))
            self.channels0 = torch.from_numpy(channel[ids0]).to(device)
            self.id_of = torch.from_numpy(present.astype(np.int64)).to(device)
            self.n_mask = len(present)

    def label(self, feat_hw: tuple[int, int]) -> torch.Tensor:
        """(Km + 1 + K, h, w): mask channels, then background and one heat map per point."""
        parts = []
        if self.ids0 is not None:
            parts.append(downsample_label(self.channels0, self.n_mask, feat_hw, self.protocol,
                                          "the --mask"))
        if self.xy0 is not None:
            joints = torch.as_tensor(self.xy0 + 1.0, dtype=torch.float64, device=self.device)
            parts.append(keypoint_label(joints, self.image_hw, feat_hw, self.readout.sigma))
        return torch.cat([p.float() for p in parts])

    def read(self, soft: torch.Tensor, frame_hw: tuple[int, int]) -> Callable[[], tuple]:
        """A propagated label -> a function giving (ids (H, W) uint8 or None, xy (K, 2) or None,
        score or None); the copies to the host have started (`to_host`)."""
        ids = xy = score = None
        if self.ids0 is not None:
            hard = label_to_ids(soft[: self.n_mask], self.protocol, frame_hw, self.image_hw)
            ids = to_host(self.id_of[hard].to(torch.uint8))
        if self.xy0 is not None:
            maps = soft[self.n_mask:]
            cells = read_keypoints(maps, self.readout.topk).double()
            xy = to_host(cells_to_joints(cells, self.image_hw, tuple(soft.shape[-2:])) - 1.0)
            score = to_host(maps[1:].flatten(1).max(dim=1).values.double())
        return lambda: tuple(None if part is None else part() for part in (ids, xy, score))


def soft_argmax_flow(feat: torch.Tensor, feat0: torch.Tensor, temperature: float, topk: int,
                     image_hw: tuple[int, int]) -> torch.Tensor:
    """Where each feature cell of a frame comes from in frame 0, as motion in pixels.

    feat: (C, h, w) and feat0: (C, h, w) L2-normalised features. For each cell, its `topk`
    largest affinities to the cells of frame 0 are weighted by their softmax (affinity /
    `temperature`), as the protocol weights its context, and the weighted mean of their
    positions is its source (soft-argmax; the top-k keeps a wide spread of weak matches from
    pulling every source towards the middle of the frame). The result is the cell's own
    position minus that source, so content moving right gives positive x. Cells map to pixels
    as keypoints do: x_pixel = x_cell * W / w.
    Returns (2, h, w) float32 (dx, dy) in pixels of the H x W video.
    """
    c, h, w = feat.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=feat.device), torch.arange(w, device=feat.device),
                            indexing="ij")
    cells = torch.stack([xs.flatten(), ys.flatten()], dim=1).float()  # (h*w, 2), row-major
    keys, queries = feat0.flatten(1).T.contiguous(), feat.flatten(1).T.contiguous()  # (h*w, C)
    k = min(topk, h * w)
    source = torch.empty_like(cells)
    for s in range(0, h * w, FLOW_CHUNK):
        vals, idx = query_key_dots(queries[s:s + FLOW_CHUNK], keys).topk(k, dim=1)  # (q, k)
        weights = (vals / temperature).softmax(dim=1)
        source[s:s + FLOW_CHUNK] = (weights[..., None] * cells[idx]).sum(dim=1)
    scale = cells.new_tensor([image_hw[1] / w, image_hw[0] / h])
    return ((cells - source) * scale).T.reshape(2, h, w)


def _batches(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def track_frames(
    frames: Iterable[np.ndarray],
    frame_encoder: FrameEncoder,
    protocol: Protocol,
    readout: KeypointReadout,
    ids0: np.ndarray | None = None,
    xy0: np.ndarray | None = None,
    flow: bool = False,
    batch_size: int = 4,
    tile: int = DEFAULT_TILE,
) -> Iterator[FrameResult]:
    """Yield a `FrameResult` for every frame of `frames` ((H, W, 3) uint8, frame 0 first).

    ids0: (H, W) uint8 frame 0's object ids; xy0: (K, 2) frame 0's points (0-based pixels).
    Frame 0's result is its input (score 1, flow 0). Held at once: one batch of frames, the
    protocol's context and the frame before, whatever the number of frames. Results come one
    frame behind the work: frame t's copies to the host run while frame t + 1 is launched.
    """
    first: FirstLabel | None = None
    propagator: LabelPropagator | None = None
    feat0 = None
    t = 0
    pending: Callable[[], FrameResult] | None = None
    for batch in _batches(frames, batch_size):
        feats, size = frame_encoder(np.stack(batch))
        for frame, feat in zip(batch, feats):
            result = FrameResult(t, frame)
            read = flow_copy = None
            if first is None:
                first = FirstLabel(ids0, xy0, frame.shape[:2], protocol, readout, frame_encoder.device)
                propagator = LabelPropagator(protocol, feat, first.label(tuple(feat.shape[-2:])), tile)
                feat0 = F.normalize(feat.float(), dim=0)
                result.ids = ids0
                if xy0 is not None:
                    result.xy, result.score = np.asarray(xy0, np.float64), np.ones(len(xy0))
            else:
                read = first.read(propagator.step(feat), size)
            if flow and t == 0:  # every cell of frame 0 comes from itself, by definition
                result.flow = np.zeros((2, *feat.shape[-2:]), np.float32)
            elif flow:
                flow_copy = to_host(soft_argmax_flow(F.normalize(feat.float(), dim=0), feat0,
                                                     protocol.temperature, protocol.topk,
                                                     first.image_hw))
            if pending is not None:
                yield pending()
            pending = functools.partial(_complete, result, read, flow_copy)
            t += 1
        del batch, feats
    if pending is not None:
        yield pending()


def _complete(result: FrameResult, read: Callable[[], tuple] | None,
              flow_copy: Callable[[], np.ndarray] | None) -> FrameResult:
    """`result` with the parts whose copies to the host were started filled in."""
    if read is not None:
        result.ids, result.xy, result.score = read()
    if flow_copy is not None:
        result.flow = flow_copy()
    return result


__all__ = ["FirstLabel", "FrameResult", "soft_argmax_flow", "track_frames"]
