"""The VIP layout (Video Instance-level Parsing): frames `Images/<video>/*.jpg`, part labels
`Annotations/Category_ids/<video>/<frame>.png`, validation list `lists/val_videos.txt`.

Category_ids PNGs hold one of 20 class ids per pixel (0 background, then 19 human parts; every
person's parts share the ids) and exist for every 25th frame only. The evaluation ignores
ground-truth values of 20 and above (VIP/ATEN evaluation: `(a >= 0) & (a < n)`); 255 is void.

`write_vip_root` writes a small synthetic set in the same layout for the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timecycle.datasets.io import frame_files, read_mask, write_mask, write_text_atomic
from timecycle.datasets.names import requested_names
from timecycle.errors import UserError

N_CLASSES = 20
# Class names and order of the VIP evaluation (ATEN / VIP test_parsing.py).
CLASSES = (
    "background", "hat", "hair", "sun-glasses", "upper-clothes", "dress", "coat", "socks",
    "pants", "gloves", "scarf", "skirt", "torso-skin", "face", "right-arm", "left-arm",
    "right-leg", "left-leg", "right-shoe", "left-shoe",
)
VOID = 255
ANNOTATION_EVERY = 25  # VIP annotates one frame in 25
DEFAULT_LIST = Path("lists") / "val_videos.txt"


@dataclass(frozen=True)
class VipVideo:
    name: str
    frames: tuple[Path, ...]
    annotation_dir: Path

    def annotation_path(self, frame: Path) -> Path:
        return self.annotation_dir / f"{frame.stem}.png"

    def annotated(self) -> list[tuple[int, Path]]:
        """(frame index, annotation path) of the frames that have an annotation, in order."""
        return [(i, p) for i, p in enumerate(map(self.annotation_path, self.frames)) if p.is_file()]

    def read_annotation(self, path: Path) -> np.ndarray:
        """(H, W) uint8 class ids."""
        return read_mask(path)

    def first_label(self) -> np.ndarray:
        """Frame 0's (H, W) uint8 class ids, void (255) set to background.

        The first frame must be annotated, hold at least one part (an annotation of background
        and void only leaves nothing to propagate) and be of the frame's size; ids 20..254 are
        an error.
        """
        path = self.annotation_path(self.frames[0])
        if not path.is_file():
            raise UserError("the first frame has no annotation to propagate", path)
        ids = self.read_annotation(path).copy()
        ids[ids == VOID] = 0
        bad = np.unique(ids[ids >= N_CLASSES])
        if bad.size:
            raise UserError(
                f"class ids {', '.join(map(str, bad.tolist()))} are outside 0..{N_CLASSES - 1}", path
            )
        if not ids.any():  # as DAVIS words it (datasets/davis.py)
            raise UserError("the first-frame mask is empty (background and void only): there is "
                            "no part to propagate", path)
        from timecycle.datasets.davis import frame_size

        frame_hw = frame_size(self.frames[0])
        if ids.shape != frame_hw:
            raise UserError(
                f"annotation is {ids.shape[1]}x{ids.shape[0]} but the frame is "
                f"{frame_hw[1]}x{frame_hw[0]}",
                path,
            )
        return ids


class VipRoot:
    """A VIP root folder holding `Images/`, `Annotations/Category_ids/` and `lists/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError("VIP root folder not found", self.root)
        self.images = self.root / "Images"
        self.annotations = self.root / "Annotations" / "Category_ids"
        if not self.images.is_dir():
            raise UserError("no Images folder: not a VIP root", self.images)

    @property
    def inputs(self) -> tuple[Path, ...]:
        """The folders the frames and annotations are read from (never an output)."""
        return (self.images, self.root / "Annotations")

    def video_names(self, spec: str | Path | None = None) -> list[str]:
        """Names from a list file, comma-separated names, or `lists/val_videos.txt`.

        Every requested video needs its frames and its annotation folder; the missing ones are
        listed together in one error.
        """
        names = requested_names(spec, self.root / DEFAULT_LIST, _read_list, "videos", "--videos")
        missing = [
            n for n in names if not (self.images / n).is_dir() or not (self.annotations / n).is_dir()
        ]
        if missing:
            raise UserError(
                f"{len(missing)} of {len(names)} requested videos lack frames in {self.images} "
                f"or annotations in {self.annotations}: {', '.join(missing)}"
            )
        return names

    def video(self, name: str) -> VipVideo:
        folder = self.images / name
        frames = frame_files(folder)
        return VipVideo(name, frames, self.annotations / name)


def _read_list(path: Path) -> list[str]:
    # A line is a video name, or a path whose last component is one; extra fields are ignored.
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the video list ({err})", path) from None
    return [Path(ln.split()[0].rstrip("/")).name for ln in lines if ln.strip()]


def write_vip_root(
    root: str | Path,
    videos: int | Mapping[str, Mapping] = 2,
    seed: int = 0,
    n_frames: int = 11,
    height: int = 64,
    width: int = 96,
    every: int = 5,
) -> list[str]:
    """Write a VIP-layout folder of synthetic videos; return their names (`videosNNN`).

    Each video is a `render_sequence` scene whose objects are "parts": object k is given a
    distinct random class id in 1..19, so that ids are not just 1..n. Frames are
    `Images/<video>/%012d.jpg`; frames 0, every, 2 every, ... are annotated in
    `Annotations/Category_ids/<video>/%012d.png`; `lists/val_videos.txt` names the videos.
    A mapping gives names, each with optional overrides of n_parts, n_frames, height, width, seed.
    """
    from timecycle.datasets.synthetic import _sub_seed, _write_jpeg, render_sequence

    root = Path(root)
    if isinstance(videos, int):
        videos = {f"videos{i:03d}": {"n_parts": 2 + i % 3} for i in range(videos)}
    for i, (name, opts) in enumerate(videos.items()):
        sub = int(opts.get("seed", _sub_seed(seed, i)))
        n_parts = int(opts.get("n_parts", 2 + i % 3))
        frames, masks = render_sequence(
            sub, int(opts.get("n_frames", n_frames)), int(opts.get("height", height)),
            int(opts.get("width", width)), n_parts,
        )
        classes = np.zeros(n_parts + 1, np.uint8)
        classes[1:] = np.random.default_rng(sub).choice(np.arange(1, N_CLASSES), n_parts, replace=False)
        for t, (frame, mask) in enumerate(zip(frames, masks)):
            _write_jpeg(root / "Images" / name / f"{t:012d}.jpg", frame)
            if t % every == 0:
                write_mask(root / "Annotations" / "Category_ids" / name / f"{t:012d}.png", classes[mask])
    names = list(videos)
    write_text_atomic(root / DEFAULT_LIST, "".join(f"{n}\n" for n in names))
    return names


__all__ = ["ANNOTATION_EVERY", "CLASSES", "N_CLASSES", "VOID", "VipRoot", "VipVideo", "write_vip_root"]
