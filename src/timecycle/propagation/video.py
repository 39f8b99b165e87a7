"""Propagate a first-frame label through one video: read, encode, propagate, post-process.

Frames are read by a background thread, encoded in small batches on the device, and handed to
the `LabelPropagator` one at a time, so the memory held is a batch of frames plus the context,
whatever the length of the video.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from timecycle.datasets.io import read_frame
from timecycle.encoder.preprocess import IMAGENET_MEAN, IMAGENET_STD
from timecycle.errors import UserError
from timecycle.propagation.propagator import LabelPropagator
from timecycle.propagation.protocols import Protocol
from timecycle.propagation.resize import frame_size, resize_frames
from timecycle.propagation.windows import DEFAULT_TILE

_DONE = object()


def prefetch(items: Iterable, depth: int = 8) -> Iterator:
    """Iterate `items` in a background thread, `depth` ahead; exceptions surface in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as err:  # handed to the consumer, which re-raises it
            q.put(("__error__", err))
            return
        q.put(_DONE)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, tuple) and len(item) == 2 and item[0] == "__error__":
                raise item[1]
            yield item
    finally:
        stop.set()


def read_frames(paths: Sequence[Path], expect_hw: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 frames; a frame of another size than the first is an error."""
    for path in paths:
        frame = read_frame(path)
        if expect_hw is None:
            expect_hw = frame.shape[:2]
        elif frame.shape[:2] != tuple(expect_hw):
            raise UserError(
                f"frame is {frame.shape[1]}x{frame.shape[0]}, the sequence's first frame "
                f"{expect_hw[1]}x{expect_hw[0]}",
                path,
            )
        yield frame


def _batches(frames: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for f in frames:
        batch.append(f)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


class FrameEncoder:
    """Uint8 frames -> encoder features on `device`, at the protocol's frame size.

    forward: (B, H, W, 3) uint8 -> (B, C, h, w) float32, and the encoded frame size (H', W').
    """

    def __init__(self, encoder: nn.Module, protocol: Protocol, device: torch.device, amp: bool = False):
        self.encoder = encoder.eval().to(device)
        self.protocol = protocol
        self.device = device
        self.amp = amp and device.type == "cuda"
        self.mean = IMAGENET_MEAN.to(device).view(1, 3, 1, 1)
        self.std = IMAGENET_STD.to(device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        x = torch.from_numpy(frames).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255)
        size = frame_size(self.protocol, x.shape[-2], x.shape[-1])
        x = resize_frames((x - self.mean) / self.std, size)
        # Channels last on every device: tensor cores want it, and oneDNN's CPU convolutions
        # ran the ResNet-18 encoder 21% faster in it at 480p (bench/propagate_profile.py).
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            feats = self.encoder(x)
        return feats.float(), size


def propagate_frames(
    frames: Iterator[np.ndarray],
    first_label: Callable[[tuple[int, int]], torch.Tensor],
    frame_encoder: FrameEncoder,
    protocol: Protocol,
    batch_size: int = 4,
    tile: int = DEFAULT_TILE,
) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
    """Yield (soft label (K, h, w), encoded frame size) for frames 1, 2, ... of `frames`.

    `first_label(feat_hw)` gives frame 0's label (K, h, w) at feature resolution.
    """
    propagator: LabelPropagator | None = None
    for batch in _batches(frames, batch_size):
        feats, size = frame_encoder(batch)
        start = 0
        if propagator is None:
            propagator = LabelPropagator(protocol, feats[0], first_label(feats.shape[-2:]), tile)
            start = 1
        for i in range(start, feats.shape[0]):
            yield propagator.step(feats[i]), size
