"""The texture (correspondence) figure: a texture carried from frame to frame by feature affinity.

For each position of a target frame, the weights are a softmax over the top-k affinities to the
source frame's positions within a radius (the `crw` propagation rule, SPEC 6), and the target
gets the weighted mix of the source's values, at feature resolution, then bilinearly upsampled
to the frame. Two textures:
- `colors`: frame t's own colours are copied into frame t+k, each listed pair on its own: a
  reconstruction of the later frame from the earlier one.
- `checker`: a checkerboard painted on the first listed frame is carried along the listed
  frames step by step, as labels are propagated: what stays attached to what.

Invariant (tested): through identical frames with distinct features, the texture comes back
unchanged (up to its round trip through feature resolution).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from timecycle.errors import UserError
from timecycle.visualisation.overlay import blend, grid, text_band, write_animation, write_image

TOPK = 10  # CRW --topk 10 (SPEC 6, crw)
TEMPERATURE = 0.05  # CRW --temperature 0.05 (SPEC 6, crw)
RADIUS = 12.0  # CRW --radius 12: keys closer than 12 feature cells (SPEC 6, crw)
TEXTURES = ("checker", "colors")


def warp(
    src_feat: torch.Tensor,
    dst_feat: torch.Tensor,
    values: torch.Tensor,
    topk: int = TOPK,
    temperature: float = TEMPERATURE,
    radius: float | None = RADIUS,
    chunk: int = 4096,
) -> torch.Tensor:
    """Carry `values` from the source frame's positions to the target frame's.

    Args:
        src_feat: (C, h, w) source features; dst_feat: (C, h', w') target features (both are
            L2-normalised over C here).
        values: (D, h, w) what the source holds (colours, a texture).
        radius: only source positions closer than this (in feature cells) to the target
            position are candidates (needs h, w == h', w'); None: the whole frame.
        chunk: target positions per affinity block, which bounds memory at chunk * h * w floats.
    Returns:
        (D, h', w'): for each target position, the softmax(affinity / temperature)-weighted mix
        of the values at its top-k source positions.
    """
    c, h2, w2 = dst_feat.shape
    src = F.normalize(src_feat.reshape(c, -1).float(), dim=0)  # (C, N)
    dst = F.normalize(dst_feat.reshape(c, -1).float(), dim=0)  # (C, M)
    vals = values.reshape(values.shape[0], -1).float()  # (D, N)
    k = min(topk, src.shape[1])
    if radius is not None:
        if radius <= 0:
            raise ValueError(f"radius must be positive (or None for the whole frame), got {radius}")
        if src_feat.shape[-2:] != dst_feat.shape[-2:]:
            raise ValueError("a radius needs source and target features of the same size")
        ys, xs = torch.meshgrid(torch.arange(h2), torch.arange(w2), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()], 1).float()  # (N, 2) as (y, x) cells
    out = []
    for start in range(0, dst.shape[1], chunk):
        aff = dst[:, start : start + chunk].T @ src  # (m, N)
        if radius is not None:
            far = torch.cdist(pos[start : start + chunk], pos) >= radius
            aff = aff.masked_fill(far, float("-inf"))
        top, idx = aff.topk(k, dim=1)  # (m, k)
        weights = torch.softmax(top / temperature, dim=1)
        out.append(torch.einsum("mk,dmk->dm", weights, vals[:, idx]))
    return torch.cat(out, dim=1).reshape(-1, h2, w2)


def checkerboard(height: int, width: int, cell: int = 32) -> np.ndarray:
    """(H, W, 3) uint8 checkerboard whose squares' hue changes across the frame.

    One hue per square (by its position) and alternate squares darkened: the hue tells where a
    square came from, the alternation shows its shape.
    """
    rows, cols = -(-height // cell), -(-width // cell)
    squares = np.zeros((rows, cols, 3), np.float32)
    for r in range(rows):
        for c in range(cols):
            hue = (c / max(cols, 1) * 0.8 + r / max(rows, 1) * 0.2) % 1.0
            squares[r, c] = colorsys.hsv_to_rgb(hue, 0.85, 1.0 if (r + c) % 2 == 0 else 0.35)
    image = np.repeat(np.repeat(squares, cell, axis=0), cell, axis=1)[:height, :width]
    return (image * 255).round().astype(np.uint8)


def _to_features(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) float in [0, 1], area-averaged to the feature grid."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(x, size=size, mode="area")[0]


def _to_frame(x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(3, h, w) float in [0, 1] -> (H, W, 3) uint8, bilinear."""
    up = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    return (up.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def carry_texture(
    frames: Sequence[np.ndarray],
    features: Sequence[torch.Tensor],
    texture: str = "checker",
    topk: int = TOPK,
    temperature: float = TEMPERATURE,
    radius: float | None = RADIUS,
    cell: int = 32,
) -> list[np.ndarray]:
    """The warped texture in every listed frame.

    Args:
        frames: T frames, (H, W, 3) uint8, all the same size.
        features: T feature maps, (C, h, w), of those frames.
    Returns:
        T images (H, W, 3) uint8. Entry 0 is the source texture after its round trip through
        feature resolution (what a perfect correspondence gives back); entry i > 0 is the
        texture warped into frame i.
    """
    if texture not in TEXTURES:
        raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")
    size = frames[0].shape[:2]
    fsize = tuple(features[0].shape[-2:])
    if texture == "checker":
        state = _to_features(checkerboard(*size, cell), fsize)
        out = [_to_frame(state, size)]
        for prev, cur in zip(features[:-1], features[1:]):
            state = warp(prev, cur, state, topk, temperature, radius)
            out.append(_to_frame(state, size))
        return out
    out = [_to_frame(_to_features(frames[0], fsize), size)]
    for i in range(1, len(frames)):
        colours = _to_features(frames[i - 1], fsize)
        out.append(_to_frame(warp(features[i - 1], features[i], colours, topk, temperature, radius), size))
    return out


def texture_panels(
    frames: Sequence[np.ndarray], warped: Sequence[np.ndarray], texture: str, cell: int = 32
) -> list[np.ndarray]:
    """What the figure shows under each frame: the texture over the frame (checker; the painted
    texture itself on the first) or the reconstructed colours alone (colors)."""
    if texture == "colors":
        return list(warped)
    first = blend(frames[0], checkerboard(*frames[0].shape[:2], cell), 0.6)
    return [first] + [blend(f, w, 0.6) for f, w in zip(frames[1:], warped[1:])]


def select_frames(n_frames: int, frames: Sequence[int] | None = None, step: int | None = None,
                  max_frames: int = 48) -> list[int]:
    """Frame indices for the figure: the ones listed (`t,t+k,...`), or 0, k, 2k, ... (`step`),
    at most `max_frames` of them; default: 0 and 5 (or the last frame of a shorter video)."""
    if frames:
        bad = [t for t in frames if not 0 <= t < n_frames]
        if bad:
            raise UserError(f"frames {bad} are outside the video's {n_frames} frames")
        if len(frames) < 2:
            raise UserError("--frames needs at least two frames, e.g. 0,5")
        return list(frames)
    if step is not None:
        if step < 1:
            raise UserError(f"--step must be at least 1, got {step}")
        picked = list(range(0, n_frames, step))[:max_frames]
        if len(picked) < 2:
            raise UserError(f"--step {step} picks frame 0 alone of the video's {n_frames} "
                            "frames: at least two are needed; choose a smaller --step")
    else:
        picked = [0, min(5, n_frames - 1)]
    if len(picked) < 2 or picked[0] == picked[1]:
        raise UserError(f"the video has {n_frames} frame(s): at least two are needed")
    return picked


def read_video(path: str | Path, indices: Sequence[int] | None = None, short_side: int | None = 480,
               **select) -> tuple[np.ndarray, list[int]]:
    """(T, H, W, 3) uint8 frames of a video file or frame folder, and their indices.

    `indices` as given, else `select_frames(n, **select)`; the short side is resized to
    `short_side` when larger (None: native size).
    """
    from timecycle.data.video import (
        DecodeError,
        check_whole,
        probe_frames,
        probe_video,
        read_frames,
    )

    path = Path(path)
    if not path.exists():
        raise UserError("no such video file or frame folder", path)
    kind = "frames" if path.is_dir() else "video"
    try:
        info = (probe_frames if kind == "frames" else probe_video)(path)
        if kind == "video":
            check_whole(path, info)
        try:
            indices = (list(indices) if indices is not None
                       else select_frames(info["n_frames"], **select))
        except UserError as err:
            raise UserError(str(err), path) from None  # which video the frames are counted in
        if short_side is not None:  # downscale only: upscaling adds pixels, not detail
            short_side = min(short_side, info["width"], info["height"])
        return read_frames(path, kind, indices, short_side), indices
    except DecodeError as err:
        raise UserError(err.reason, err.path) from None


def encode(frames: np.ndarray, frame_encoder, batch_size: int = 4) -> list[torch.Tensor]:
    """(T, H, W, 3) uint8 -> T feature maps (C, h, w) on the CPU, through a `FrameEncoder`."""
    feats: list[torch.Tensor] = []
    for start in range(0, len(frames), batch_size):
        batch, _ = frame_encoder(np.ascontiguousarray(frames[start : start + batch_size]))
        feats.extend(batch.float().cpu())
    return feats


def strip_captions(texture: str, indices: Sequence[int]) -> list[str]:
    """What the strip's rows show and what to look for, printed above it."""
    frames = ", ".join(map(str, indices))
    if texture == "colors":
        bottom = (f"Bottom row: each frame rebuilt from the previous listed frame's colours, moved "
                  f"by feature matches (the first: frame {indices[0]} itself at feature "
                  "resolution). Look for: the same picture as above; smears, wrong colours or "
                  "objects left behind mark where the features matched the wrong place.")
    else:
        bottom = (f"Bottom row: a checkerboard painted on frame {indices[0]} (left), carried "
                  "frame to frame by feature matches, over each frame. Look for: squares that "
                  "stay on the same surfaces as they move; squares that blur, stretch, swap or "
                  "stay put on a moving object mark lost correspondence.")
    return [f"Top row: frames {frames} of the video.", bottom]


def write_texture_figure(
    frames: Sequence[np.ndarray],
    features: Sequence[torch.Tensor],
    out_dir: str | Path,
    texture: str = "checker",
    topk: int = TOPK,
    temperature: float = TEMPERATURE,
    radius: float | None = RADIUS,
    fmt: str = "webp",
    fps: float = 4.0,
    max_columns: int = 6,
    gap: int = 4,
    indices: Sequence[int] | None = None,
) -> dict[str, Path]:
    """Write `texture_strip.png` and `texture.<fmt>` into `out_dir`; returns their paths.

    The strip has two rows: the frames above, what each received below (the source texture
    under the first), under captions saying so (`strip_captions`) and each column's frame
    number (`indices`, the frames' numbers in the video; default 0, 1, ...). With more than
    `max_columns` frames, that many are picked evenly, the first and last included. Its images
    take (2H + gap, n W + (n - 1) gap) for n columns, below the captions.
    The animation shows, frame by frame, the frame beside what it received.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    warped = carry_texture(frames, features, texture, topk, temperature, radius)
    panels = texture_panels(frames, warped, texture)
    cols = np.unique(np.linspace(0, len(frames) - 1, min(max_columns, len(frames))).round().astype(int))
    indices = list(range(len(frames))) if indices is None else list(indices)
    strip = grid([[frames[i] for i in cols], [panels[i] for i in cols]], gap=gap)
    w = frames[0].shape[1]
    captions = text_band(strip_captions(texture, [indices[i] for i in cols]), strip.shape[1])
    labels = text_band([f"frame {indices[i]}" for i in cols], strip.shape[1],
                       columns=[k * (w + gap) + 4 for k in range(len(cols))])
    strip = np.concatenate([captions, labels, strip])
    paths = {"strip": write_image(out_dir / "texture_strip.png", strip)}
    pairs = (grid([[f, p]], gap=gap) for f, p in zip(frames, panels))
    paths["animation"] = write_animation(out_dir / f"texture.{fmt}", pairs, fps)
    return paths
