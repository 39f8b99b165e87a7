"""Files `timecycle track` writes: the track arrays and CSV, and the dense flow array, which is
streamed to disk a frame at a time.

- `tracks.npy`: float32 (T, K, 2) pixel (x, y), NaN where a point is not predicted;
- `tracks.csv`: `frame,id,x,y,score`, one row per frame and point (`nan` when not predicted);
- `flow.npy`: float16 (T, 2, h, w) motion in pixels from frame 0 to each frame at every
  feature cell (stride 8, or a ViT's patch size) (track/propagate.py `soft_argmax_flow`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from timecycle.datasets.io import atomic_path, write_bytes_atomic, write_text_atomic

NPY_HEADER_BYTES = 128  # reserved before the data: the real header is written at the end


def _npy_header(dtype: np.dtype, shape: tuple[int, ...], total: int) -> bytes:
    """An .npy version 1.0 header padded with spaces to exactly `total` bytes."""
    body = f"{{'descr': '{dtype.str}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    prefix = b"\x93NUMPY\x01\x00"
    room = total - len(prefix) - 2
    if len(body) + 1 > room:
        raise ValueError(f"shape {shape} does not fit the reserved .npy header")
    text = (body + " " * (room - len(body) - 1) + "\n").encode("latin1")
    return prefix + room.to_bytes(2, "little") + text


class NpyStream:
    """An .npy file grown along its first axis one (`item_shape`) array at a time, so memory
    does not grow with the number of items. The file appears (atomically) only on `close`."""

    def __init__(self, path: str | Path, item_shape: tuple[int, ...], dtype=np.float16):
        self.path, self.item_shape, self.dtype = Path(path), tuple(item_shape), np.dtype(dtype)
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._file = open(self._tmp, "wb")
        self._file.write(b"\0" * NPY_HEADER_BYTES)
        self.count = 0
        self._open = True

    def add(self, item: np.ndarray) -> None:
        if tuple(item.shape) != self.item_shape:
            raise ValueError(f"item {item.shape} differs from {self.item_shape}")
        self._file.write(np.ascontiguousarray(item, dtype=self.dtype.newbyteorder("<")).tobytes())
        self.count += 1

    def close(self) -> Path:
        self._file.seek(0)
        dtype = self.dtype.newbyteorder("<")
        self._file.write(_npy_header(dtype, (self.count, *self.item_shape), NPY_HEADER_BYTES))
        self._file.close()
        self._open = False
        self._atomic.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        if not self._open:
            return
        self._open = False
        self._file.close()
        err = RuntimeError("aborted")
        try:
            self._atomic.__exit__(type(err), err, None)
        except RuntimeError:
            pass


def write_tracks(out: Path, ids: tuple[str, ...], xy: np.ndarray, score: np.ndarray) -> list[Path]:
    """Write `tracks.npy` ((T, K, 2) float32) and `tracks.csv` from (T, K, 2) and (T, K)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(xy, np.float32))
    write_bytes_atomic(out / "tracks.npy", buf.getvalue())
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\n")
    rows.writerow(["frame", "id", "x", "y", "score"])
    for t in range(len(xy)):
        for k, pid in enumerate(ids):
            x, y = xy[t, k]
            rows.writerow([t, pid, f"{x:.3f}", f"{y:.3f}", f"{score[t, k]:.4f}"])
    write_text_atomic(out / "tracks.csv", text.getvalue())
    return [out / "tracks.npy", out / "tracks.csv"]


__all__ = ["NpyStream", "write_tracks"]
