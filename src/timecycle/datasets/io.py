"""Reading frames and masks with one-line errors, and atomic writing of results.

Every reader raises `UserError` naming the file and the problem (missing, truncated, wrong
mode), so the CLI can report it in one line. Every writer goes through a temporary file in the
same folder and `os.replace`, so a killed run never leaves a truncated file that looks complete.
A command's output folder as a whole (checked first, tidied when the command fails, put back
after a killed rerun) is datasets/outputs.py's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from timecycle.datasets.palette import VOC_PALETTE
from timecycle.errors import UserError

def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask is process-wide and not thread-safe to toggle

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def frame_files(folder: Path, kind: str = "video") -> tuple[Path, ...]:
    """The image files of a frame folder in name order; a UserError if there are none."""
    if not folder.is_dir():  # a name nothing checked before (--eval-sequences): no traceback
        raise UserError(f"{kind} folder not found", folder)
    frames = tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    if not frames:
        raise UserError(f"{kind} folder holds no frames", folder)
    return frames


# What PIL raises for a file that is not a readable image: damaged or foreign bytes, and a
# header claiming more pixels than PIL's decompression-bomb limit (an Exception of its own).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise UserError("is a folder, not an image file" if path.is_dir() else "no such file", path)
    try:
        img = Image.open(path)
        img.load()  # decode now: a truncated file fails here, not later
    except IMAGE_ERRORS as err:
        raise UserError(f"cannot read image ({err})", path) from None
    return img


def read_json_object(path: Path, what: str = "this JSON file") -> dict | None:
    """The JSON object in `path`, None if there is no such file; a UserError naming the file
    if it cannot be read, is not UTF-8 JSON, or holds something other than an object (every
    JSON file timecycle writes holds an object)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: bad JSON, or bytes that are not UTF-8
        raise UserError(f"cannot read {what}", path) from None
    if not isinstance(record, dict):
        raise UserError(f"{what}: expected a JSON object, found a {type(record).__name__}", path)
    return record


def read_frame(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    return np.asarray(_open(Path(path)).convert("RGB"))


def read_mask(path: str | Path, binary_255: bool = False) -> np.ndarray:
    """(H, W) uint8 object ids from a palettised ('P') or greyscale ('L') PNG.

    DAVIS-2017 masks are palettised with the id as pixel value. With `binary_255` (DAVIS-2016
    format) the mask is 0 background / 255 object and is returned as 0/1. An RGB mask is
    refused: its colours are not ids, and guessing them silently changes the objects.
    """
    path = Path(path)
    img = _open(path)
    if img.mode not in ("P", "L", "1"):
        raise UserError(
            f"mask has mode {img.mode}; expected an 8-bit palettised (P) or greyscale (L) PNG "
            "whose pixel values are object ids",
            path,
        )
    mask = np.array(img.convert("L") if img.mode == "1" else img, dtype=np.uint8)
    if binary_255:
        mask = (mask > 127).astype(np.uint8)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the result the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_UMASK)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: object) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def encode_mask_png(mask: np.ndarray) -> bytes:
    """(H, W) uint8 ids -> bytes of an 8-bit palettised PNG with the VOC palette."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be (H, W) uint8, got {mask.dtype} {mask.shape}")
    img = Image.fromarray(mask, mode="P")
    img.putpalette(VOC_PALETTE.tobytes())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write (H, W) uint8 object ids as a palettised PNG, atomically (DAVIS result format)."""
    path = Path(path)
    data = encode_mask_png(mask)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)  # no fsync per frame: the rename alone keeps a killed run clean
