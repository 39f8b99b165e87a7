"""Training clips: K past frames, a target frame and a rotated target patch (SPEC 4, 5).

`ClipDataset[i]` is a pure function of (seed, i): the video, start frame, crop, flip, patch
window, jitter and rotation all come from `numpy.random.default_rng([seed, 0, i, attempt])`
(the video from a per-epoch permutation seeded by (seed, epoch)), so resuming at global sample
index s is continuing the index stream at s, and DataLoader workers need no RNG handling.

Layout of a clip in the (possibly resampled) timeline, relative to a start s (SPEC 5):
past frames s, s+2, s+4, s+6; target s+15; motion frame s+17 (target + 2, used only to pick
the patch). A video too short for that span gets all offsets scaled down proportionally.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from timecycle.data.index import VideoIndex, VideoRecord
from timecycle.data.video import BadVideoWarning, DecodeError, read_frames
from timecycle.encoder.preprocess import to_tensor
from timecycle.errors import UserError


@dataclass
class ClipConfig:
    """How clips are cut (defaults: SPEC 4-5, the TimeCycle paper and its public code)."""

    short_side: int = 256  # SPEC 5: frames resized so the short side is 256, aspect kept
    crop: int = 240  # SPEC 5: one random 240x240 crop shared by all frames
    n_past: int = 4  # SPEC 4: 4 past frames I_{t-k..t-1}
    gap: int = 2  # SPEC 4-5: past frames at a gap of 2 (s, s+2, s+4, s+6)
    target_offset: int = 15  # SPEC 5: target frame at s+15
    motion_offset: int = 2  # SPEC 5: motion = |target - the frame 2 later|
    patch: int = 80  # SPEC 5: 80x80 patch, scale 1/3 of the 240 crop
    max_rotation: float = 45.0  # SPEC 5: rotation uniform in [-45, 45] degrees
    grid: int = 7  # SPEC 5: patch centred on a window of a 7x7 grid
    top_k: int = 10  # SPEC 5: one of the 10 highest-motion windows
    jitter: float = 0.5  # public code: centre jitter uniform +-1/12 of its range = +-half a step
    flip_p: float = 0.5  # SPEC 5: horizontal flip with p=0.5, shared by all frames
    fps: float | None = 12.0  # SPEC 5: the paper sampled VLOG at 12 fps; None = native rate
    folder_fps: float | None = None  # frame folders have no rate: None = use them as they are
    decode_threads: int = 2  # PyAV threads per decode (x DataLoader workers: keep it small)
    max_attempts: int = 10  # draws per sample before giving up on unreadable videos
    epoch_size: int | None = None  # len(dataset); None = one clip per usable video
    # Must equal the tracker's (LossConfig.align_corners): the patch is cut with the sampler's
    # convention, so theta_gt means the same thing to both (tracker/sampler.py).
    align_corners: bool = False

    def __post_init__(self):
        if not 0 < self.patch <= self.crop <= self.short_side:
            raise ValueError(f"need 0 < patch ({self.patch}) <= crop ({self.crop}) "
                             f"<= short_side ({self.short_side})")
        if self.n_past < 1 or self.gap < 1 or self.grid < 1 or self.top_k < 1:
            raise ValueError("n_past, gap, grid and top_k must be >= 1")
        if not (self.n_past - 1) * self.gap < self.target_offset:
            raise ValueError("the target must come after the last past frame")
        if self.motion_offset < 1:
            raise ValueError("motion_offset must be >= 1")

    @property
    def offsets(self) -> np.ndarray:
        """(K+2,) full-length offsets from s: K past frames, the target, the motion frame."""
        past = [k * self.gap for k in range(self.n_past)]
        return np.array(past + [self.target_offset, self.target_offset + self.motion_offset])


def clip_offsets(n: int, config: ClipConfig) -> np.ndarray | None:
    """(K+2,) strictly increasing offsets that fit a video of n frames; None if n < K+2.

    A video shorter than the full span gets every offset scaled by (n-1)/(span-1) (SPEC 5:
    "a proportionally smaller gap"), then nudged apart so no two frames coincide.
    """
    base = config.offsets
    if n > base[-1]:
        return base
    if n < len(base):
        return None
    off = np.floor(base * (n - 1) / base[-1] + 1e-9).astype(np.int64)
    for k in range(1, len(off)):  # keep them distinct ...
        off[k] = max(off[k], off[k - 1] + 1)
    off[-1] = min(off[-1], n - 1)
    for k in range(len(off) - 2, -1, -1):  # ... and inside the video
        off[k] = min(off[k], off[k + 1] - 1)
    return off


def resample_step(source_fps: float | None, target_fps: float | None) -> float:
    """Source frames per resampled frame. 1 when either rate is unknown or the source is
    slower than the target (upsampling would only repeat frames)."""
    if not source_fps or not target_fps or target_fps >= source_fps:
        return 1.0
    return source_fps / target_fps


def resampled_length(n_source: int, step: float) -> int:
    """Number of frames of the resampled timeline (frame j is at source time j * step)."""
    return int(math.floor((n_source - 1) / step + 1e-6)) + 1 if n_source > 0 else 0


def to_source(indices: np.ndarray, step: float) -> np.ndarray:
    """Resampled frame indices -> source frame indices: floor(j * step) (SPEC 5, fps)."""
    return np.floor(np.asarray(indices) * step + 1e-6).astype(np.int64)


def patch_theta(cx: float, cy: float, angle: float, patch: int, crop: int) -> torch.Tensor:
    """(2, 3) affine cutting a `patch`-sized square centred at (cx, cy) px, rotated by `angle`
    radians, out of a `crop`-sized frame; normalised coordinates, align_corners=False:
    [[cos a s, -sin a s, tx], [sin a s, cos a s, ty]], s = patch / crop (SPEC 3)."""
    s = patch / crop
    c, n = math.cos(angle) * s, math.sin(angle) * s
    tx, ty = 2 * cx / crop - 1, 2 * cy / crop - 1  # pixel edges at 0 and crop -> -1 and 1
    return torch.tensor([[c, -n, tx], [n, c, ty]], dtype=torch.float32)


def cut_patch(frame: torch.Tensor, theta: torch.Tensor, patch: int,
              align_corners: bool = False) -> torch.Tensor:
    """(3, H, W) frame, (2, 3) theta -> (3, P, P) bilinear patch (zeros outside the frame)."""
    grid = F.affine_grid(theta[None], (1, frame.shape[0], patch, patch),
                         align_corners=align_corners)
    return F.grid_sample(frame[None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=align_corners)[0]


class ClipDataset(Dataset):
    """Index-deterministic training clips from the videos of an index.

    Sample i is a dict:
      frames      (K+1, 3, crop, crop) float32, ImageNet-normalised: K past frames in time
                  order, then the target frame
      patch       (3, P, P) float32: the rotated target patch = cut_patch(frames[-1], theta_gt)
      theta_gt    (2, 3) float32: the affine that cut the patch (see `patch_theta`)
      video_index int: position of the video in `self.videos`
      index       int: i
      retries     int: unreadable videos replaced before this sample (0 normally)
    """

    def __init__(
        self,
        videos: VideoIndex | Sequence[VideoRecord],
        config: ClipConfig | None = None,
        seed: int = 0,
    ):
        self.config = config or ClipConfig()
        self.seed = int(seed)
        records = videos.videos if isinstance(videos, VideoIndex) else list(videos)
        self.videos: list[VideoRecord] = []
        self._steps: list[float] = []
        self._lengths: list[int] = []
        self.too_short: list[str] = []
        for rec in records:
            step = resample_step(rec.fps or self.config.folder_fps, self.config.fps)
            n = resampled_length(rec.n_frames, step)
            if self.span_offsets(n) is None:
                self.too_short.append(rec.path)
                continue
            self.videos.append(rec)
            self._steps.append(step)
            self._lengths.append(n)
        if self.too_short:
            warnings.warn(f"{len(self.too_short)} videos have fewer than "
                          f"{len(self.config.offsets)} frames and are not used, e.g. "
                          f"{self.too_short[0]}", BadVideoWarning, stacklevel=2)
        if not self.videos:
            root = videos.root if isinstance(videos, VideoIndex) else None
            raise UserError("no usable videos (all unreadable or too short)", root)
        self.n_failed = 0  # decoding failures seen by this process (each worker counts its own)
        self.failed: dict[str, str] = {}  # path -> reason; known-bad videos are not retried
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.config.epoch_size or len(self.videos)

    def span_offsets(self, n: int) -> np.ndarray | None:
        """Frame offsets of a clip in a video of n (resampled) frames; None: too short."""
        return clip_offsets(n, self.config)

    def _video_for(self, i: int) -> int:
        """Video of sample i: position i % n of a permutation seeded by (seed, epoch)."""
        n = len(self.videos)
        epoch = i // n
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, 1, epoch]).permutation(n))
        return int(self._perm[1][i % n])

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            raise IndexError(f"sample index must be >= 0, got {i}")
        for attempt in range(self.config.max_attempts):
            rng = np.random.default_rng([self.seed, 0, i, attempt])
            # A failed draw is replaced by a video drawn from (seed, i, attempt): deterministic,
            # as long as a video that fails once always fails.
            v = self._video_for(i) if attempt == 0 else int(rng.integers(len(self.videos)))
            rec = self.videos[v]
            if rec.path in self.failed:
                continue
            try:
                sample = self._make(v, rng)
            except DecodeError as err:
                self.n_failed += 1
                self.failed[rec.path] = err.reason
                warnings.warn(f"{err.path}: cannot decode clip, drawing another ({err.reason})",
                              BadVideoWarning, stacklevel=2)
                continue
            sample.update(video_index=v, index=i, retries=attempt)
            return sample
        # The data's fault, not a bug: name the videos that keep failing, and why.
        bad = list(self.failed.items())
        named = "; ".join(f"{path}: {reason}" for path, reason in bad[:3])
        raise UserError(f"{self.config.max_attempts} clip draws in a row hit videos that cannot "
                        f"be decoded ({len(bad)} of {len(self.videos)} so far; {named}"
                        f"{'; ...' if len(bad) > 3 else ''})")

    def read_clip(self, v: int, rng: np.random.Generator) -> np.ndarray:
        """(T, H, W, 3) uint8 frames of video v at `span_offsets` from a random start, short
        side `config.short_side`; DecodeError when they do not all decode."""
        cfg, rec = self.config, self.videos[v]
        n = self._lengths[v]
        off = self.span_offsets(n)
        start = int(rng.integers(0, n - off[-1]))
        src = np.minimum(to_source(start + off, self._steps[v]), rec.n_frames - 1)
        clip = read_frames(rec.path, rec.kind, src, cfg.short_side, cfg.decode_threads)
        if clip.shape[0] != len(off):
            raise DecodeError(rec.path, f"decoded {clip.shape[0]} of {len(off)} frames")
        return clip

    def _make(self, v: int, rng: np.random.Generator) -> dict:
        cfg, rec = self.config, self.videos[v]
        clip = self.read_clip(v, rng)
        h, w = clip.shape[1:3]  # (K+2, H, W, 3) uint8, short side = cfg.short_side
        if min(h, w) < cfg.crop:
            raise DecodeError(rec.path, f"frames are {w}x{h}, smaller than the crop {cfg.crop}")
        # One crop and one flip for all frames (SPEC 5), still in uint8.
        y0 = int(rng.integers(0, h - cfg.crop + 1))
        x0 = int(rng.integers(0, w - cfg.crop + 1))
        clip = clip[:, y0 : y0 + cfg.crop, x0 : x0 + cfg.crop]
        if rng.random() < cfg.flip_p:
            clip = clip[:, :, ::-1]
        clip = np.ascontiguousarray(clip)
        cx, cy = self._patch_centre(clip[-2], clip[-1], rng)
        angle = math.radians(rng.uniform(-cfg.max_rotation, cfg.max_rotation))
        theta = patch_theta(cx, cy, angle, cfg.patch, cfg.crop)
        frames = to_tensor(clip[:-1])  # (K+1, 3, crop, crop); the motion frame is dropped
        # The patch is sampled from the normalised target with the very op the tracker uses,
        # so theta_gt is exact by construction (zeros = the ImageNet mean outside the crop,
        # as in the public code, which sampled normalised frames too).
        patch = cut_patch(frames[-1], theta, cfg.patch, cfg.align_corners)
        return {"frames": frames, "patch": patch, "theta_gt": theta}

    def _patch_centre(self, target: np.ndarray, later: np.ndarray,
                      rng: np.random.Generator) -> tuple[float, float]:
        """(cx, cy) in crop pixels: a jittered centre of one of the top-k motion windows.

        target, later: (crop, crop, 3) uint8. Windows are patch-sized squares centred on a
        grid x grid lattice spanning [P/2, crop - P/2] (public code: 7x7 windows of 3 cells of
        a 9x9 grid); motion is the summed |target - later| inside the window (SPEC 5).
        """
        cfg = self.config
        motion = np.abs(target.astype(np.int16) - later.astype(np.int16)).sum(-1)
        integral = np.zeros((cfg.crop + 1, cfg.crop + 1), np.int64)
        integral[1:, 1:] = motion.cumsum(0).cumsum(1)
        lo, hi = cfg.patch / 2, cfg.crop - cfg.patch / 2
        centres = np.linspace(lo, hi, cfg.grid)
        a = np.round(centres - cfg.patch / 2).astype(np.int64)
        b = a + cfg.patch
        # (grid, grid) window sums, rows = y, columns = x, by inclusion-exclusion.
        scores = (integral[b[:, None], b[None, :]] - integral[a[:, None], b[None, :]]
                  - integral[b[:, None], a[None, :]] + integral[a[:, None], a[None, :]])
        # Ties (a static scene) are broken at random, not in raster order.
        order = np.lexsort((rng.random(scores.size), -scores.ravel()))
        gy, gx = divmod(int(order[rng.integers(min(cfg.top_k, scores.size))]), cfg.grid)
        step = (hi - lo) / (cfg.grid - 1) if cfg.grid > 1 else 0.0
        jx, jy = rng.uniform(-1.0, 1.0, size=2) * cfg.jitter * step
        return (float(np.clip(centres[gx] + jx, lo, hi)),
                float(np.clip(centres[gy] + jy, lo, hi)))
