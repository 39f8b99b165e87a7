"""Reading frames and masks with one-line errors, and atomic writing of results.

Every reader raises `UserError` naming the file and the problem (missing, truncated, wrong
mode), so the CLI can report it in one line. Every writer goes through a temporary file in the
same folder and `os.replace`, so a killed run never leaves a truncated file that looks complete.
A command's output folder is checked before any work (`check_output_folder`) and tidied when
the command fails (`output_folder`).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
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


def _writable(folder: Path) -> bool:
    # access() also reports a read-only filesystem (EROFS), not only the permission bits.
    return os.access(folder, os.W_OK | os.X_OK)


def check_output_folder(path: str | Path) -> Path:
    """`path` as an output folder that can be made and written, else a UserError naming it.

    Nothing is created: the folder itself, or its nearest existing parent, is checked. A file
    at `path` (or at a parent) and a folder that cannot be written (no permission, read-only
    filesystem) are refused.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError("exists and is not a folder; choose a folder for --out", path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create the folder: {existing} is a file", path)
    if not _writable(existing):
        where = "" if existing == path else f" (in {existing})"
        raise UserError(f"cannot write here{where}: no permission or a read-only filesystem", path)
    return path


def _entries(folder: Path) -> set[str]:
    """Every path under `folder` (files and folders, at any depth)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        found.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return found


def _remove_new(folder: Path, before: set[str]) -> None:
    """Remove every path under `folder` that is not in `before`."""
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in list(dirnames):
            if os.path.join(dirpath, name) not in before:
                shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)
                dirnames.remove(name)
        for name in filenames:
            if os.path.join(dirpath, name) not in before:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))


def _inside(name: object, folder: Path) -> bool:
    if not isinstance(name, (str, os.PathLike)):
        return False
    return Path(os.path.abspath(name)).is_relative_to(os.path.abspath(folder))


# The entries an `output_folder` block has replaced so far, (original, set-aside copy) pairs;
# None outside such a block.
_REPLACED: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar(
    "timecycle_replaced", default=None)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def replace_entry(path: Path) -> None:
    """Make way for a new `path` (a result file or folder a command writes again). Inside an
    `output_folder` block the old one is set aside as `.replaced-<name>` until the block ends:
    dropped if it succeeds, put back if it fails, so a failed rerun leaves the previous
    results whole instead of a mixture of old and new that still evaluates. Elsewhere it is
    deleted."""
    if not path.exists() and not path.is_symlink():
        return
    replaced = _REPLACED.get()
    if replaced is None or any(original == path for original, _ in replaced):
        _delete(path)  # nothing to keep, or this block's own output written twice
        return
    aside = path.with_name(f".replaced-{path.name}")
    if aside.exists() or aside.is_symlink():
        _delete(aside)
    path.rename(aside)
    replaced.append((path, aside))


@contextlib.contextmanager
def output_folder(path: str | Path, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A command's output folder: checked first (`check_output_folder`), tidied if it fails.

    If the block raises (a user error, a bug, Ctrl-C), everything it added under `path` is
    removed again (and `path` itself, with any parents, when the block made it), and what it
    replaced through `replace_entry` is put back, so a failed command leaves what was there
    before; `keep(path)` True keeps the partial output (a run with a checkpoint that
    `--resume` continues). Files changed in place stay as they are now. An OSError on a file
    inside `path` (disk full, read-only) becomes a UserError naming that file.
    """
    path = check_output_folder(path)
    top = path  # the outermost folder the block will create
    while not top.parent.exists():
        top = top.parent
    existed = path.exists()
    before = _entries(path) if existed else set()
    replaced: list[tuple[Path, Path]] = []
    outer = _REPLACED.get()  # a block inside another command's block (the demo's results)
    token = _REPLACED.set(replaced)
    try:
        yield path
    except BaseException as err:
        _REPLACED.reset(token)
        if keep is None or not keep(path):
            for original, aside in reversed(replaced):
                if original.exists() or original.is_symlink():
                    _delete(original)
                aside.rename(original)
            if existed:
                _remove_new(path, before)
            else:
                shutil.rmtree(top, ignore_errors=True)
        else:
            _settle(replaced, outer)
        if isinstance(err, OSError) and _inside(err.filename, path):
            reason = err.strerror or type(err).__name__
            raise UserError(f"cannot write ({reason})", err.filename) from None
        raise
    _REPLACED.reset(token)
    _settle(replaced, outer)


def _settle(replaced: list[tuple[Path, Path]], outer: list[tuple[Path, Path]] | None) -> None:
    """A block's new outputs stay: what they replaced is dropped, or handed to the enclosing
    block, which may still fail and put it back."""
    if outer is not None:
        outer.extend(replaced)
        return
    for _, aside in replaced:
        _delete(aside)
