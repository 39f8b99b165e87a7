"""Propagate a first-frame label through one video: read, encode, propagate, post-process.

Frames are decoded by background threads, encoded in small batches on the device, and handed
to the `LabelPropagator` one at a time, so the memory held is a batch of frames plus the
context, whatever the length of the video. On a GPU nothing in the loop waits for the device:
frames go up from pinned memory and results come back through `to_host`, so the CPU launches
the next frame's work while the GPU runs this one's.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from timecycle.datasets.io import read_frame
from timecycle.encoder.fold import fold_batchnorm
from timecycle.encoder.pixel import PixelEncoder
from timecycle.encoder.preprocess import IMAGENET_MEAN, IMAGENET_STD
from timecycle.errors import UserError
from timecycle.propagation.propagator import LabelPropagator
from timecycle.propagation.protocols import Protocol
from timecycle.propagation.resize import frame_size, resize_frames
from timecycle.propagation.windows import DEFAULT_TILE

_DONE = object()

# Threads decoding frames (Pillow releases the GIL while it decodes): one JPEG of DAVIS 480p
# took 4.1 ms on the H200 machine's CPU, a third of a frame's end-to-end time on one thread
# (bench/gpu.py's stages). Half the cores, at most 4: the rest run torch and the PNG writers.
READ_THREADS = max(1, min(4, (os.cpu_count() or 1) // 2))


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


def read_frames(paths: Sequence[Path], expect_hw: tuple[int, int] | None = None,
                threads: int = READ_THREADS, depth: int = 8) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 frames in order, decoded by `threads` background threads up to
    `depth` frames ahead; a frame of another size than the first is an error."""
    paths = iter(paths)
    pool = ThreadPoolExecutor(threads)
    ahead: deque = deque()

    def more() -> None:
        path = next(paths, None)
        if path is not None:
            ahead.append((path, pool.submit(read_frame, path)))

    try:
        for _ in range(max(depth, threads)):
            more()
        while ahead:
            path, job = ahead.popleft()
            more()
            frame = job.result()
            if expect_hw is None:
                expect_hw = frame.shape[:2]
            elif frame.shape[:2] != tuple(expect_hw):
                raise UserError(
                    f"frame is {frame.shape[1]}x{frame.shape[0]}, the sequence's first frame "
                    f"{expect_hw[1]}x{expect_hw[0]}",
                    path,
                )
            yield frame
    finally:  # an error, or a consumer that stops early: the frames read ahead are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def to_host(x: torch.Tensor) -> Callable[[], np.ndarray]:
    """Start copying `x` to the host; the function returned waits for the copy and gives the
    array. On CUDA the copy is queued behind the device's work (into pinned memory, with an
    event), so the caller is not held until the GPU has finished this frame: a `.cpu()` there
    made every frame's launches wait for the previous frame's kernels."""
    if not x.is_cuda:
        array = x.numpy()
        return lambda: array
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    # Recorded on the stream of x's own device, where the copy was queued. blocking: the
    # writer threads wait asleep, not spinning a core each beside the decoding threads.
    done = torch.cuda.Event(blocking=True)
    done.record(torch.cuda.current_stream(x.device))

    def wait() -> np.ndarray:
        done.synchronize()
        return host.numpy()

    return wait


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
    amp: the encoder under bf16 autocast (on the CPU too: oneDNN's bf16 convolutions ran the
    ResNet-18 encoder 1.8-2.1x faster at 480p on an AVX512-BF16 CPU; emulated where the CPU
    lacks it); its features are returned as float32 either way.
    """

    def __init__(self, encoder: nn.Module, protocol: Protocol, device: torch.device, amp: bool = False):
        # A folded copy: the caller's encoder (during training, the network being trained) is
        # left as it was.
        self.encoder = fold_batchnorm(encoder).to(device)
        self.protocol = protocol
        self.device = device
        self.amp = amp
        self.mean = IMAGENET_MEAN.to(device).view(1, 3, 1, 1)
        # The pixel baseline reads the colours back (encoder/pixel.py): it gets the
        # normalisation it inverts.
        std = IMAGENET_STD if isinstance(encoder, PixelEncoder) else protocol.pixel_std
        self.std = torch.as_tensor(std, dtype=torch.float32).to(device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        size = frame_size(self.protocol, frames.shape[1], frames.shape[2])
        if self.protocol.resize_on == "uint8" and size != frames.shape[1:3]:
            # On the host, as DINO's read_frame: OpenCV's 8-bit bilinear differs from a float
            # resize by rounding (weights in 1/2048, results to 8 bits).
            import cv2  # here: inference start-up stays without OpenCV's import

            frames = np.stack([cv2.resize(f, size[::-1], interpolation=cv2.INTER_LINEAR)
                               for f in frames])
        x = torch.from_numpy(frames)
        if self.device.type == "cuda":
            # From pageable memory a copy first waits for the stream's work; pinned, it queues.
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255)
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
