"""Seeded synthetic video with exact ground truth, for the tests and `timecycle demo`.

A scene is a slowly panning multi-scale texture with `n_objects` textured shapes on top. Each
object follows a smooth Lissajous path (so it never leaves the frame), rotates and breathes in
scale, and the objects are drawn in a fixed random depth order, so a visible mask loses exactly
the pixels that nearer objects cover. All work is whole-array numpy/cv2: one `warpAffine` per
object per frame, no per-pixel Python.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from timecycle.datasets.io import atomic_path, write_bytes_atomic, write_mask, write_text_atomic

JPEG_QUALITY = 95  # close to the DAVIS 480p JPEGs; artefacts stay far below the texture contrast
FRAME_NOISE_STD = 2.0  # grey levels: sensor-like noise, so no two frames are bit-identical
TRAINING_FPS = 12  # the paper sampled VLOG at 12 fps (SPEC 5)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int, channels: int) -> np.ndarray:
    """(h, w, channels) float32 in about [0, 1]: uniform noise on `cell`-pixel cells, upsampled
    bicubically."""
    gh, gw = h // cell + 2, w // cell + 2
    small = rng.random((gh, gw, channels), dtype=np.float32)
    big = cv2.resize(small, (gw * cell, gh * cell), interpolation=cv2.INTER_CUBIC)
    return big[:h, :w].reshape(h, w, channels)  # reshape: cv2 drops a single channel axis


def _pattern(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 in about [0, 1]: stripes, a checker or a dot grid at a random angle and
    period, mixed with smooth noise so that no two places of a periodic pattern look alike."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0.0, math.pi)
    u = xx * math.cos(a) + yy * math.sin(a)
    v = -xx * math.sin(a) + yy * math.cos(a)
    period = rng.uniform(5.0, 14.0)
    kind = int(rng.integers(3))
    if kind == 0:
        p = 0.5 + 0.5 * np.sin(2 * math.pi * u / period)
    elif kind == 1:
        p = (np.floor(u / period) + np.floor(v / period)) % 2
    else:
        p = 0.5 + 0.5 * np.sin(2 * math.pi * u / period) * np.sin(2 * math.pi * v / period)
    noise = _smooth_noise(rng, h, w, int(rng.integers(6, 16)), 1)[..., 0]
    return (0.6 * p + 0.4 * noise).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 in [10, 245]: colour noise at coarse, middle and fine scales times a
    faint pattern, so that features find something to match at every stride."""
    cells = (max(8, min(h, w) // 3), 12, 4)
    tex = sum(wt * _smooth_noise(rng, h, w, c, 3) for wt, c in zip((0.45, 0.35, 0.2), cells))
    tex = tex * (0.75 + 0.25 * _pattern(rng, h, w))[..., None]
    lo, hi = float(tex.min()), float(tex.max())
    return ((tex - lo) / max(hi - lo, 1e-6) * 235.0 + 10.0).astype(np.float32)


def _shape(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """(size, size) uint8 in {0, 255}: an ellipse, a polygon or a smooth blob, centred, whose
    farthest point is at most `radius` pixels from the centre."""
    mask = np.zeros((size, size), np.uint8)
    c = size / 2.0
    kind = int(rng.integers(3))
    if kind == 0:
        axes = (round(radius), round(radius * rng.uniform(0.55, 0.9)))
        cv2.ellipse(mask, (round(c), round(c)), axes, 0.0, 0.0, 360.0, 255, -1)
        return mask
    n = int(rng.integers(5, 9)) if kind == 1 else 48
    theta = np.arange(n) * (2 * math.pi / n) + rng.uniform(-0.25, 0.25, n) * (2 * math.pi / n)
    if kind == 1:
        r = radius * rng.uniform(0.7, 1.0, n)
    else:  # two low harmonics make a smooth, non-convex blob; 0.8 + 2 * 0.1 keeps r <= radius
        amp, phase = rng.uniform(0.0, 0.1, 2), rng.uniform(0.0, 2 * math.pi, 2)
        wobble = amp[0] * np.cos(2 * theta + phase[0]) + amp[1] * np.cos(3 * theta + phase[1])
        r = radius * (0.8 + wobble)
    pts = np.stack([c + r * np.cos(theta), c + r * np.sin(theta)], axis=1)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    return mask


def _object_texture(rng: np.random.Generator, size: int, hue: float) -> np.ndarray:
    """(size, size, 3) float32 in [0, 255]: two colours of neighbouring hues mixed by a pattern."""
    bright = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
    dark = colorsys.hsv_to_rgb((hue + 0.08) % 1.0, rng.uniform(0.3, 1.0), rng.uniform(0.2, 0.6))
    c1, c2 = np.array(bright, np.float32), np.array(dark, np.float32)
    p = _pattern(rng, size, size)[..., None]
    return (255.0 * (c1 * (1 - p) + c2 * p)).astype(np.float32)


def render_sequence(
    seed: int, n_frames: int, height: int, width: int, n_objects: int, return_amodal: bool = False
) -> tuple[np.ndarray, ...]:
    """A synthetic clip with exact masks; the same arguments give identical arrays.

    Returns frames (T, H, W, 3) uint8 RGB and masks (T, H, W) uint8 with object ids 1..n_objects
    (0 background); with `return_amodal` also (T, N, H, W) bool: each object's whole silhouette,
    occluded or not (object k is channel k - 1). Every object's centre stays inside the frame, and
    frame 0 places the objects as far apart as 256 random tries allow, so each is visible there.
    """
    if n_frames < 1 or height < 16 or width < 16 or not 0 <= n_objects <= 255:
        raise ValueError(f"need n_frames >= 1, height, width >= 16, 0 <= n_objects <= 255; got "
                         f"{n_frames}, {height}, {width}, {n_objects}")
    rng = np.random.default_rng(seed)
    h, w, n, short = height, width, n_objects, min(height, width)

    # Background: a texture with a margin, panned at under half a pixel per frame at 96 px.
    pad = max(4, short // 8)
    bg = _texture(rng, h + 2 * pad, w + 2 * pad)
    speed, heading = rng.uniform(0.1, 0.5) * short / 100.0, rng.uniform(0, 2 * math.pi)
    pan = speed * np.array([math.cos(heading), math.sin(heading)])

    # Objects: radius, texture on a square canvas, Lissajous path, spin and scale breathing.
    radius = rng.uniform(0.12, 0.22, n) * short
    size = int(math.ceil(2 * radius.max() + 4)) if n else 1
    hue0 = rng.uniform()
    shapes = [_shape(rng, size, r) for r in radius]
    textures = [_object_texture(rng, size, (hue0 + k / max(n, 1)) % 1.0) for k in range(n)]
    centre = np.array([w / 2.0, h / 2.0])
    amp = rng.uniform(0.6, 1.0, (n, 2)) * 0.35 * np.array([w, h])  # centres stay in [0.15, 0.85]
    omega = rng.uniform(0.05, 0.14, (n, 2)) * rng.choice([-1.0, 1.0], (n, 2))  # rad / frame
    spin0, spin = rng.uniform(0, 2 * math.pi, n), rng.uniform(-0.05, 0.05, n)  # rad, rad / frame
    breathe, breathe_phase = rng.uniform(0.05, 0.15, n), rng.uniform(0, 2 * math.pi, n)
    # Frame-0 phases: of 256 tries keep the one whose closest pair is farthest apart relative
    # to their radii, so no object starts hidden behind another.
    tries = rng.uniform(0, 2 * math.pi, (256, n, 2))
    c0 = centre + amp * np.sin(tries)  # (256, N, 2)
    dist = np.linalg.norm(c0[:, :, None] - c0[:, None], axis=-1)  # (256, N, N)
    gap = dist / (radius[:, None] + radius[None] + 1e-6)
    gap[:, np.arange(n), np.arange(n)] = np.inf
    phase = tries[int(np.argmax(gap.reshape(256, -1).min(axis=1)))] if n > 1 else tries[0]
    depth = rng.permutation(n)  # drawing order, far to near, fixed over time

    frames = np.empty((n_frames, h, w, 3), np.uint8)
    masks = np.zeros((n_frames, h, w), np.uint8)
    amodal = np.zeros((n_frames, n, h, w), bool)
    for t in range(n_frames):
        shift = pad + pan * t
        m_bg = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
        frame = cv2.warpAffine(bg, m_bg, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT_101)
        for k in depth:
            cx, cy = centre + amp[k] * np.sin(omega[k] * t + phase[k])
            s = 1.0 + breathe[k] * math.sin(0.1 * t + breathe_phase[k])
            a = spin0[k] + spin[k] * t
            cs, sn, half = s * math.cos(a), s * math.sin(a), size / 2.0
            # Canvas point p goes to c + s R(a) (p - size/2).
            m = np.array([[cs, -sn, cx - (cs - sn) * half], [sn, cs, cy - (sn + cs) * half]])
            inside = cv2.warpAffine(shapes[k], m, (w, h), flags=cv2.INTER_LINEAR) >= 128
            tex = cv2.warpAffine(textures[k], m, (w, h), flags=cv2.INTER_LINEAR)
            frame[inside] = tex[inside]
            masks[t][inside] = k + 1
            amodal[t, k] = inside
        frame += rng.standard_normal(frame.shape, dtype=np.float32) * FRAME_NOISE_STD
        frames[t] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    return (frames, masks, amodal) if return_amodal else (frames, masks)


def translating_texture_video(
    seed: int, n_frames: int, height: int, width: int, velocity: tuple[float, float] = (2.0, 1.0)
) -> np.ndarray:
    """(T, H, W, 3) uint8: a window over one large random texture whose content moves by
    `velocity` = (vx, vy) pixels per frame, i.e. frame[t + 1][y + vy, x + vx] == frame[t][y, x].

    Sub-pixel velocities are resampled bilinearly; integer ones are exact copies (no noise added).
    """
    rng = np.random.default_rng(seed)
    vx, vy = velocity
    span = n_frames - 1
    big_h, big_w = height + math.ceil(abs(vy) * span) + 1, width + math.ceil(abs(vx) * span) + 1
    big = _texture(rng, big_h, big_w)
    x0, y0 = max(0.0, vx * span), max(0.0, vy * span)  # window origin at t = 0; it moves by -v
    out = np.empty((n_frames, height, width, 3), np.uint8)
    for t in range(n_frames):
        m = np.array([[1.0, 0.0, x0 - vx * t], [0.0, 1.0, y0 - vy * t]])
        win = cv2.warpAffine(big, m, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT_101)
        out[t] = np.clip(win + 0.5, 0, 255).astype(np.uint8)
    return out


def _sub_seed(seed: int, index: int) -> int:
    """A per-item seed that differs for every (seed, index) pair, unlike seed * k + index."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    # 4:4:4 keeps full-resolution chroma: the default 4:2:0 doubles the error on these
    # colour textures and blurs object edges against the exact masks.
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], params)
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    write_bytes_atomic(path, buf.tobytes())


def write_davis_root(
    root: str | Path,
    sequences: int | Mapping[str, Mapping] = 3,
    seed: int = 0,
    n_frames: int = 12,
    height: int = 96,
    width: int = 160,
) -> list[str]:
    """Write a DAVIS-2017-layout folder of synthetic sequences; return their names.

    Layout: `JPEGImages/480p/<seq>/%05d.jpg`, `Annotations/480p/<seq>/%05d.png` (palettised ids,
    every frame annotated) and `ImageSets/2017/val.txt`. An int makes that many sequences named
    `synthNN` with 1, 2, 3, 1, ... objects and lengths n_frames, +n_frames//4, +n_frames//2, ...
    A mapping gives names, each with optional overrides of n_objects, n_frames, height, width, seed.
    """
    root = Path(root)
    if isinstance(sequences, int):
        sequences = {
            f"synth{i:02d}": {
                "n_objects": 1 + i % 3,
                "n_frames": n_frames + (i % 3) * max(1, n_frames // 4),
            }
            for i in range(sequences)
        }
    for i, (name, opts) in enumerate(sequences.items()):
        frames, masks = render_sequence(
            int(opts.get("seed", _sub_seed(seed, i))),
            int(opts.get("n_frames", n_frames)),
            int(opts.get("height", height)),
            int(opts.get("width", width)),
            int(opts.get("n_objects", 1 + i % 3)),
        )
        for t, (frame, mask) in enumerate(zip(frames, masks)):
            _write_jpeg(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", frame)
            write_mask(root / "Annotations" / "480p" / name / f"{t:05d}.png", mask)
    names = list(sequences)
    write_text_atomic(root / "ImageSets" / "2017" / "val.txt", "".join(f"{s}\n" for s in names))
    return names


def _video_codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = TRAINING_FPS) -> None:
    """Encode (T, H, W, 3) uint8 RGB as an H.264 (or MPEG-4 part 2) yuv420p mp4, atomically.

    H and W must be even: yuv420p halves both for the chroma planes.
    """
    import av

    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"mp4 (yuv420p) needs even height and width, got {h}x{w}")
    codec = _video_codec()
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}  # crf 18: visually lossless
        else:
            stream.bit_rate = 8 * w * h * fps  # ~8 bits per pixel: near-lossless for MPEG-4 part 2
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the frames the encoder still holds


def write_training_videos(
    root: str | Path,
    n_videos: int = 4,
    seed: int = 0,
    n_frames: int = 24,
    height: int = 96,
    width: int = 160,
    fmt: str = "frames",
    kind: str = "scene",
) -> list[str]:
    """Write unlabeled training clips and return their names (`videoNNN`).

    fmt 'frames' writes `root/<name>/%05d.jpg`, 'mp4' writes `root/<name>.mp4`. kind 'scene'
    renders `render_sequence` scenes with 1-3 objects; 'translating' a texture moving at a random
    velocity of 1-4 pixels per frame (`translating_texture_video`).
    """
    if fmt not in ("frames", "mp4") or kind not in ("scene", "translating"):
        raise ValueError(f"fmt must be 'frames' or 'mp4', kind 'scene' or 'translating'; "
                         f"got {fmt!r}, {kind!r}")
    root = Path(root)
    names = []
    for i in range(n_videos):
        sub = _sub_seed(seed, i)
        if kind == "scene":
            frames = render_sequence(sub, n_frames, height, width, 1 + sub % 3)[0]
        else:
            speed, angle = np.random.default_rng(sub).uniform((1.0, 0.0), (4.0, 2 * math.pi))
            frames = translating_texture_video(sub, n_frames, height, width,
                                               (speed * math.cos(angle), speed * math.sin(angle)))
        name = f"video{i:03d}"
        if fmt == "mp4":
            write_mp4(root / f"{name}.mp4", frames)
        else:
            for t, frame in enumerate(frames):
                _write_jpeg(root / name / f"{t:05d}.jpg", frame)
        names.append(name)
    return names
