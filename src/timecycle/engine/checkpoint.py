"""Training checkpoints: atomic writes, rotation, weights-only loading, RNG state as tensors.

A run folder holds `last.pt` (always the newest) and numbered `step-000100.pt` files, of which
the newest `keep_last` are kept. Each file is written to a temporary file in the same folder,
fsynced, then renamed over its target with os.replace, so a reader (or a crash, or a SIGTERM)
sees either the old file or the new one, never a partial one.

Contents (plain containers and tensors only, so `torch.load(weights_only=True)` reads them)::

    {"format": "timecycle-train", "version": 1,
     "model": TimeCycle.state_dict(),   # encoder under "encoder.": `load_weights` reads it
     "optimizer": Adam.state_dict(), "step": int, "samples": int, "nonfinite": int,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor], "numpy": {...}, "python": {...}},
     "config": TrainConfig.to_dict(), "environment": {...}}
"""

from __future__ import annotations

import io
import json
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from timecycle.datasets.io import atomic_path
from timecycle.errors import UserError

FORMAT = "timecycle-train"
VERSION = 1
LAST = "last.pt"
_NUMBERED = re.compile(r"^step-(\d+)\.pt$")


def numbered_name(step: int) -> str:
    return f"step-{step:06d}.pt"


def rng_state() -> dict:
    """Torch (CPU, CUDA), NumPy and Python generator states as tensors and plain values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def set_rng_state(state: dict) -> None:
    """Inverse of `rng_state`; CUDA states are restored only when the device count matches."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder, fsync, os.replace."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    try:  # make the rename itself durable; not every filesystem lets a folder be fsynced
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, state: dict, step: int, keep_last: int = 3,
                    numbered: bool = True) -> Path:
    """Write `state` as RUN/last.pt (and RUN/step-NNNNNN.pt); keep the newest `keep_last`
    numbered files. Serialised once, written twice. Returns the path of last.pt.

    Only one process of a distributed run (rank 0) should call this.
    """
    run_dir = Path(run_dir)
    state = dict(state)
    for key in ("config", "environment"):
        if key in state:  # plain JSON types only: e.g. torch.__version__ is a str subclass,
            state[key] = json.loads(json.dumps(state[key]))  # which weights_only refuses
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buf)
    data = buf.getvalue()
    if numbered:
        write_atomic(run_dir / numbered_name(step), data)
        prune(run_dir, keep_last)
    write_atomic(run_dir / LAST, data)
    return run_dir / LAST


def numbered_checkpoints(run_dir: str | Path) -> list[Path]:
    """The step-NNNNNN.pt files of a run, oldest first."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NUMBERED.match(p.name))]
    return [p for _, p in sorted(found)]


def prune(run_dir: str | Path, keep_last: int) -> None:
    for old in numbered_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, on the CPU, read with weights_only=True.

    Raises UserError naming the file when it is missing, truncated, corrupt, or not a
    timecycle training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("no such checkpoint", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    # torch reports a damaged zip or pickle with many exception types: all mean a bad file.
    except Exception as err:
        reason = (str(err).strip().split("\n")[0] or type(err).__name__)[:200]
        raise UserError(f"cannot read checkpoint (truncated or corrupt?): {reason}", path) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError("not a timecycle training checkpoint (no format "
                        f"{FORMAT!r}); use it with --weights instead", path)
    if obj.get("version") != VERSION:
        raise UserError(f"checkpoint version {obj.get('version')} is not supported "
                        f"(this timecycle reads version {VERSION})", path)
    missing = [k for k in ("model", "optimizer", "step", "samples", "rng", "config") if k not in obj]
    if missing:
        raise UserError(f"checkpoint lacks {', '.join(missing)}", path)
    return obj
