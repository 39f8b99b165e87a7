"""Training checkpoints: atomic writes, rotation, a content check, weights-only loading, RNG
state as tensors, and the choice of the checkpoint to resume from.

A run folder holds `last.pt` (the newest save) and numbered `step-000100.pt` files, of which
the newest `keep_last` are kept (0: all). Each file is written to a temporary file in the same
folder, fsynced, then renamed over its target with os.replace, so a reader (or a crash, or a
SIGTERM) sees either the old file or the new one, never a partial one. What renaming cannot
rule out (a copy cut short, a full disk on another writer, bit rot) the content check catches:
every file stores the sha256 of its contents, recomputed on load (`content_digest`).

Contents (plain containers and tensors only, so `torch.load(weights_only=True)` reads them)::

    {"format": "timecycle-train", "version": 1,
     "model": TimeCycle.state_dict(),   # encoder under "encoder.": `load_weights` reads it
     "optimizer": Adam.state_dict(), "step": int, "samples": int, "nonfinite": int,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor], "numpy": {...}, "python": {...}},
     "rng_ranks": [rng, ...],           # distributed runs: every process's generators
     "config": TrainConfig.to_dict(), "environment": {...},
     "sha256": hex digest of everything else (files of older versions have none)}
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from timecycle.datasets.io import atomic_path
from timecycle.errors import UserError, first_sentence

FORMAT = "timecycle-train"
VERSION = 1
LAST = "last.pt"
BEST = "best.pt"
_NUMBERED = re.compile(r"^step-(\d+)\.pt$")


def numbered_name(step: int) -> str:
    return f"step-{step:06d}.pt"


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was passed over when choosing the one to resume from."""


def rng_state(device: torch.device | None = None) -> dict:
    """Torch (CPU, CUDA), NumPy and Python generator states as tensors and plain values.

    device: a CUDA device stores that GPU's generator only (a process of a distributed run
    must not touch the other GPUs: reading their state would open a context on each);
    None stores every visible GPU's.
    """
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    if device is not None:
        cuda = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
    else:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Inverse of `rng_state`. With a CUDA `device`, a one-GPU state goes to that device;
    otherwise CUDA states are restored only when the device count matches."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if device is not None and device.type == "cuda" and len(cuda) == 1:
        torch.cuda.set_rng_state(cuda[0], device)
    elif device is not None and device.type != "cuda":
        pass  # a CPU run leaves the GPUs' generators alone
    elif cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
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


def content_digest(obj) -> str:
    """sha256 of a checkpoint's contents, whatever their serialisation: every tensor's dtype,
    shape and bytes (contiguous), every other value's type and repr, dicts in key order."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"dict:{len(obj)}:".encode())
        for key in sorted(obj, key=repr):
            h.update(f"{key!r}=".encode())
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}:{len(obj)}:".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def _to_cpu(obj):
    """The same containers with every tensor on the CPU (copied once, then hashed and saved)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(run_dir: str | Path, state: dict, step: int, keep_last: int = 3,
                    numbered: bool = True, best: bool = False) -> Path:
    """Write `state` as RUN/last.pt (and RUN/step-NNNNNN.pt), with the sha256 of its contents;
    keep the newest `keep_last` numbered files. Serialised once, written twice (the numbered
    file first: a crash between the two leaves it the newest complete file). Returns the path
    of last.pt.

    Only one process of a distributed run (rank 0) should call this.
    """
    run_dir = Path(run_dir)
    state = dict(state)
    for key in ("config", "environment"):
        if key in state:  # plain JSON types only: e.g. torch.__version__ is a str subclass,
            state[key] = json.loads(json.dumps(state[key]))  # which weights_only refuses
    payload = {"format": FORMAT, "version": VERSION, **_to_cpu(state)}
    payload["sha256"] = content_digest(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    if numbered:
        write_atomic(run_dir / numbered_name(step), data)
        prune(run_dir, keep_last)
    if best:  # the best evaluation so far (RUN/best.pt): never pruned, never resumed from
        write_atomic(run_dir / BEST, data)
    write_atomic(run_dir / LAST, data)
    return run_dir / LAST


def numbered_checkpoints(run_dir: str | Path) -> list[Path]:
    """The step-NNNNNN.pt files of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NUMBERED.match(p.name))]
    return [p for _, p in sorted(found)]


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether the run folder holds last.pt or a numbered checkpoint (a run to --resume)."""
    return (Path(run_dir) / LAST).exists() or bool(numbered_checkpoints(run_dir))


def prune(run_dir: str | Path, keep_last: int) -> None:
    for old in numbered_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)


def verify_contents(obj: dict, path: Path) -> None:
    """Pop the sha256 stored at saving from `obj` and check it against the contents: a
    UserError naming `path` when they differ (files of older versions have none)."""
    stored = obj.pop("sha256", None)
    if stored is not None and stored != content_digest(obj):
        raise UserError("content check failed: the sha256 of the contents differs from the "
                        "one stored at saving (corrupt file)", path)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, on the CPU, read with weights_only=True, its contents checked
    against the stored sha256 (which is not part of the returned dict).

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
        raise UserError(f"cannot read checkpoint (truncated or corrupt?): {first_sentence(err)}",
                        path) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError("not a timecycle training checkpoint (no format "
                        f"{FORMAT!r}); use it with --weights instead", path)
    verify_contents(obj, path)
    if obj.get("version") != VERSION:
        raise UserError(f"checkpoint version {obj.get('version')} is not supported "
                        f"(this timecycle reads version {VERSION})", path)
    missing = [k for k in ("model", "optimizer", "step", "samples", "rng", "config") if k not in obj]
    if missing:
        raise UserError(f"checkpoint lacks {', '.join(missing)}", path)
    return obj


def latest_checkpoint(run_dir: str | Path, report: bool = True) -> tuple[Path, dict]:
    """The newest complete checkpoint of a run and its contents: last.pt, unless a numbered
    file holds a later step (a crash between the two writes), or last.pt is damaged.

    Damaged files are passed over, each with a CheckpointWarning when `report`; a UserError
    when no file is usable.
    """
    run_dir = Path(run_dir)
    best: tuple[Path, dict] | None = None
    damaged: list[str] = []
    try:
        best = (run_dir / LAST, load_checkpoint(run_dir / LAST))
    except UserError as err:
        if (run_dir / LAST).exists():
            damaged.append(str(err))
    for path in reversed(numbered_checkpoints(run_dir)):
        if best is not None and int(_NUMBERED.match(path.name).group(1)) <= best[1]["step"]:
            break  # no newer than what we have
        try:
            best = (path, load_checkpoint(path))
            break
        except UserError as err:
            damaged.append(str(err))
    if best is None:
        detail = f": {'; '.join(damaged)}" if damaged else ""
        raise UserError(f"no complete checkpoint to resume from{detail}", run_dir)
    if report:
        for message in damaged:
            warnings.warn(f"{message}; passed over, resuming from {best[0]} (step "
                          f"{best[1]['step']})", CheckpointWarning, stacklevel=2)
    return best
