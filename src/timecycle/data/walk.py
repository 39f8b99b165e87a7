"""Clips for the contrastive random walk (SPEC 9): T frames, each cut into a grid of jittered
patches that become the walk's nodes.

Follows videowalk's training pipeline (code/utils/augs.py `get_train_transforms` with
`--frame-transforms crop --frame-aug grid`, code/data/kinetics.py): every frame gets its *own*
RandomResizedCrop to img_size (area 0.8-0.95, aspect 0.7-1.3; MapTransform applies the
transform frame by frame), is cut into patch-sized windows at a stride of half a patch
(`patch_grid`, 7 x 7 = 49 windows at 256 / 64), and each window gets its own
RandomResizedCrop back to the patch size (area 0.7-0.9, aspect 3/4-4/3). Nothing is shared
between frames or patches, so a node carries no cue of where it sits in the frame: the walk
can only close by appearance (a dense grid of cells from one shared crop would let it close
by position; see the README's training notes).

Differences, each for a reason: frames are decoded at short side `short_side` (CRW read
Kinetics as stored, mostly 256 or 340 px short side), and ImageNet mean/std normalise the
patches (CRW used CIFAR's, augs.py IMG_MEAN) so that training sees what propagation feeds the
encoder. Both crops are done at once per clip by one `roi_align` (bilinear, no antialiasing:
the scale changes are at most ~1.6x).

Sample i is a pure function of (seed, i) exactly as for `ClipDataset`, whose video choice,
retries and resume behaviour this class inherits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from timecycle.data.clips import ClipDataset
from timecycle.encoder.preprocess import to_tensor


@dataclass
class WalkConfig:
    """How walk clips are cut (defaults: videowalk's README training command, SPEC 9)."""

    clip_len: int = 4  # README: --clip-len 4 (T frames, T - 2 palindromes of length 2..T-1)
    gap: int = 1  # consecutive frames of the resampled timeline (VideoClips clips)
    fps: float | None = 8.0  # README: --frame-skip 8, used as Kinetics' frame_rate (8 fps)
    short_side: int = 256  # decoded size; the frame crop is taken from this
    img_size: int = 256  # arguments.py --img-size 256: each frame's crop is resized to this
    patch: int = 64  # arguments.py --patch-size 64 64 3
    stride: int = 32  # augs.py patch_grid: stride = patch x 0.5
    frame_scale: tuple[float, float] = (0.8, 0.95)  # augs.py get_frame_transform: crop area
    frame_ratio: tuple[float, float] = (0.7, 1.3)  # ... and aspect ratio
    patch_scale: tuple[float, float] = (0.7, 0.9)  # augs.py patch_grid spatial_jitter area
    patch_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop default
    folder_fps: float | None = None  # frame folders have no rate: None = use them as they are
    decode_threads: int = 2  # PyAV threads per decode (x DataLoader workers: keep it small)
    max_attempts: int = 10  # draws per sample before giving up on unreadable videos
    epoch_size: int | None = None  # len(dataset); None = one clip per usable video

    def __post_init__(self) -> None:
        self.frame_scale, self.frame_ratio = tuple(self.frame_scale), tuple(self.frame_ratio)
        self.patch_scale, self.patch_ratio = tuple(self.patch_scale), tuple(self.patch_ratio)
        if self.clip_len < 3:
            raise ValueError(f"clip_len must be >= 3 (the shortest palindrome spans 3 frames), "
                             f"got {self.clip_len}")
        if self.gap < 1 or self.stride < 1:
            raise ValueError("gap and stride must be >= 1")
        if not 0 < self.patch <= self.img_size:
            raise ValueError(f"need 0 < patch ({self.patch}) <= img_size ({self.img_size})")

    @property
    def offsets(self) -> np.ndarray:
        """(T,) offsets of the frames from the clip's start."""
        return np.arange(self.clip_len) * self.gap

    @property
    def grid(self) -> int:
        """Windows per side: skimage view_as_windows(img, patch, step=stride)."""
        return (self.img_size - self.patch) // self.stride + 1

    @property
    def nodes(self) -> int:
        return self.grid**2


def random_resized_box(rng: np.random.Generator, width: float, height: float,
                       scale: tuple[float, float], ratio: tuple[float, float]
                       ) -> tuple[float, float, float, float]:
    """(x0, y0, w, h) as torchvision's RandomResizedCrop.get_params draws it: up to 10 tries of
    an area share in `scale` and a log-uniform aspect in `ratio`; else the whole image clamped
    to the ratio range, centred."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, int(width) - w + 1))
            y0 = int(rng.integers(0, int(height) - h + 1))
            return float(x0), float(y0), float(w), float(h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (width - w) / 2, (height - h) / 2, float(w), float(h)


def walk_boxes(config: WalkConfig, frame_w: int, frame_h: int,
               rng: np.random.Generator) -> torch.Tensor:
    """(T * N, 5) roi_align boxes [t, x1, y1, x2, y2] in frame pixels: for each frame its own
    crop, then the jittered windows of the grid inside it, in raster order."""
    cfg, s = config, config.img_size
    rows = []
    for t in range(cfg.clip_len):
        fx, fy, fw, fh = random_resized_box(rng, frame_w, frame_h, cfg.frame_scale,
                                            cfg.frame_ratio)
        sx, sy = fw / s, fh / s  # crop pixels per img_size pixel
        for gy in range(cfg.grid):
            for gx in range(cfg.grid):
                px, py, pw, ph = random_resized_box(rng, cfg.patch, cfg.patch, cfg.patch_scale,
                                                    cfg.patch_ratio)
                x1 = fx + (gx * cfg.stride + px) * sx
                y1 = fy + (gy * cfg.stride + py) * sy
                rows.append((t, x1, y1, x1 + pw * sx, y1 + ph * sy))
    return torch.tensor(rows, dtype=torch.float32)


class WalkDataset(ClipDataset):
    """Index-deterministic walk clips from the videos of an index.

    Sample i is a dict:
      patches     (T, N, 3, P, P) float32, ImageNet-normalised: N = grid^2 nodes per frame in
                  raster order of the grid, frames in time order
      video_index, index, retries: as `ClipDataset`
    """

    def __init__(self, videos, config: WalkConfig | None = None, seed: int = 0):
        super().__init__(videos, config or WalkConfig(), seed)

    def span_offsets(self, n: int) -> np.ndarray | None:
        """The T offsets; a video shorter than the span gets the gap shrunk (down to 1)."""
        off = self.config.offsets
        if n > off[-1]:
            return off
        return np.arange(self.config.clip_len) if n >= self.config.clip_len else None

    def _make(self, v: int, rng: np.random.Generator) -> dict:
        from torchvision.ops import roi_align  # here: importing torchvision costs every command ~1 s

        cfg = self.config
        clip = self.read_clip(v, rng)
        h, w = clip.shape[1:3]
        boxes = walk_boxes(cfg, w, h, rng)
        frames = to_tensor(clip)  # (T, 3, H, W)
        # aligned=True: box corners in continuous pixel coordinates (pixel i spans [i, i+1]).
        # sampling_ratio 2: 2 x 2 bilinear samples per output pixel, enough at <= 1.6x.
        patches = roi_align(frames, boxes, (cfg.patch, cfg.patch), spatial_scale=1.0,
                            sampling_ratio=2, aligned=True)
        return {"patches": patches.view(cfg.clip_len, cfg.nodes, 3, cfg.patch, cfg.patch)}
