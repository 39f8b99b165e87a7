"""Mask overlays on frames, image grids, and animated output (WebP, GIF, mp4).

Colours come from the PASCAL-VOC palette, the one DAVIS result PNGs carry, so that an overlay
shows an object in the same colour as its mask file does in any image viewer.

Animations are written by PIL (animated WebP or GIF) or, for `.mp4`, by PyAV (H.264, yuv420p,
which every browser plays). The format follows the file's suffix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from timecycle.datasets.io import atomic_path
from timecycle.datasets.palette import VOC_PALETTE

ANIMATION_SUFFIXES = (".webp", ".gif", ".mp4")


def colorize(ids: np.ndarray) -> np.ndarray:
    """(H, W) uint8 ids -> (H, W, 3) uint8 VOC colours (id 0 is black)."""
    return VOC_PALETTE[ids]


def contour(ids: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) bool: pixels whose id differs from a 4-neighbour's, thickened to `width` pixels.

    Both sides of a change are marked (so a 1-pixel object still gets a contour), then the map
    is grown by width-1 4-neighbour steps so that lines stay visible after downscaling.
    """
    edge = np.zeros(ids.shape, dtype=bool)
    dx = ids[:, 1:] != ids[:, :-1]
    dy = ids[1:, :] != ids[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return _grow(edge, width - 1)


def overlay_mask(
    frame: np.ndarray,
    ids: np.ndarray,
    alpha: float = 0.5,
    contour_width: int = 2,
    contour_color: tuple[int, int, int] | None = (255, 255, 255),
) -> np.ndarray:
    """Blend object colours over a frame and draw object contours.

    Args:
        frame: (H, W, 3) uint8 RGB.
        ids: (H, W) uint8 object ids at the frame's size; 0 (background) is left untouched.
        alpha: opacity of the object colour.
        contour_width: contour thickness in pixels (0: none).
        contour_color: one colour for all contours, or None for each object's own colour.
    Returns:
        (H, W, 3) uint8.
    """
    if ids.shape != frame.shape[:2]:
        raise ValueError(f"mask {ids.shape} and frame {frame.shape[:2]} differ in size")
    out = frame.astype(np.float32)
    fg = ids > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colorize(ids)[fg]
    out = out.round().astype(np.uint8)
    if contour_width > 0:
        # Only contours touching an object: the outline of the background is the frame border.
        edge = contour(ids, contour_width) & _grow(fg, contour_width)
        out[edge] = colorize(ids)[edge] if contour_color is None else contour_color
    return out


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """(H, W) bool grown by `steps` 4-neighbour steps (a diamond of that radius); a copy."""
    mask = mask.copy()
    for _ in range(max(steps, 0)):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown
    return mask


def blend(frame: np.ndarray, layer: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 frame and layer -> their alpha blend, uint8."""
    mixed = (1 - alpha) * frame.astype(np.float32) + alpha * layer.astype(np.float32)
    return mixed.round().astype(np.uint8)


def fit_width(image: np.ndarray, max_width: int | None) -> np.ndarray:
    """Downscale (area filter, aspect kept) so the width is at most `max_width`; never upscale."""
    h, w = image.shape[:2]
    if not max_width or w <= max_width:
        return image
    size = (max_width, max(1, round(h * max_width / w)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def fit_pair(frame: np.ndarray, ids: np.ndarray, max_width: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A frame and its (H, W) id mask at one size: the frame resized to the mask's size
    (bilinear), then both scaled to at most `max_width` (the mask by nearest neighbour)."""
    h, w = ids.shape
    if frame.shape[:2] != (h, w):
        frame = np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.BILINEAR))
    frame = fit_width(frame, max_width)
    if frame.shape[:2] != (h, w):
        ids = np.asarray(Image.fromarray(ids).resize(frame.shape[1::-1], Image.Resampling.NEAREST))
    return frame, ids


def grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 4, fill: int = 255) -> np.ndarray:
    """Tile equal-sized (H, W, 3) uint8 images into rows and columns separated by `gap` pixels.

    Returns (R*H + (R-1)*gap, C*W + (C-1)*gap, 3) uint8 for R rows of C images.
    """
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * h + (len(rows) - 1) * gap, n_cols * w + (n_cols - 1) * gap, 3), fill, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            if img.shape[:2] != (h, w):
                raise ValueError(f"grid images differ in size: {img.shape[:2]} vs {(h, w)}")
            y, x = r * (h + gap), c * (w + gap)
            out[y : y + h, x : x + w] = img
    return out


def text_band(lines: Sequence[str], width: int, size: int = 13, pad: int = 4,
              columns: Sequence[int] | None = None) -> np.ndarray:
    """(h, width, 3) uint8 white band with black text: each of `lines` word-wrapped to the
    width, or with `columns` (x offsets) one short label per column on a single line."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if columns is not None:
        rows, xs = [list(lines)], list(columns)
    else:
        rows = []
        for text in lines:
            words, line = text.split(), ""
            for word in words:
                trial = f"{line} {word}".strip()
                if line and measure.textlength(trial, font=font) > width - 2 * pad:
                    rows.append([line])
                    line = word
                else:
                    line = trial
            rows.append([line])
        xs = [pad]
    step = size + 4
    band = Image.new("RGB", (width, pad * 2 + step * len(rows)), "white")
    draw = ImageDraw.Draw(band)
    for r, row in enumerate(rows):
        for x, text in zip(xs, row):
            draw.text((x, pad + r * step), text, fill="black", font=font)
    return np.asarray(band)


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 image atomically; the format follows the suffix."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
    return path


def write_animation(
    path: str | Path, frames: Iterable[np.ndarray], fps: float = 10.0, loop: bool = True
) -> Path:
    """Write (H, W, 3) uint8 frames as an animation; `.webp`, `.gif` (PIL) or `.mp4` (PyAV).

    The file appears only when complete (written to a temporary file, then renamed).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_SUFFIXES:
        raise ValueError(f"animation suffix must be one of {ANIMATION_SUFFIXES}, got {path.name}")
    frames = iter(frames)
    with atomic_path(path) as tmp:
        if suffix == ".mp4":
            _write_mp4(tmp, frames, fps)
        else:
            images = [Image.fromarray(f) for f in frames]
            if not images:
                raise ValueError("no frames to animate")
            options: dict = {"duration": round(1000 / fps), "loop": 0 if loop else 1}
            if suffix == ".webp":
                # Lossy at quality 80: a tenth of the lossless size, no visible loss on overlays.
                options.update(format="WEBP", quality=80, method=4)
            else:
                options.update(format="GIF", optimize=False, disposal=1)
            images[0].save(tmp, save_all=True, append_images=images[1:], **options)
    return path


def _write_mp4(path: Path, frames: Iterable[np.ndarray], fps: float) -> None:
    import av
    from fractions import Fraction

    container = av.open(str(path), mode="w", format="mp4")
    stream = None
    try:
        for frame in frames:
            # yuv420p needs even sides: pad by one row/column of edge pixels when odd.
            h, w = frame.shape[:2]
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            if stream is None:
                codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
                stream.width, stream.height = frame.shape[1], frame.shape[0]
                stream.pix_fmt = "yuv420p"
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        if stream is None:
            raise ValueError("no frames to animate")
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
