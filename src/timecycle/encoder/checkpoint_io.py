"""Reading checkpoint files users bring: untrusted input, read as weights and nothing else.

PyTorch files are unpickled with `weights_only=True`, which builds only tensors and plain
containers; `argparse.Namespace` is the one extra type allowed, because CRW stores its
command-line arguments in the checkpoint. Anything else is refused in one line, never loaded
with unrestricted unpickling. `.safetensors` files hold tensors only. A file that is neither
(JSON, a NumPy array, an empty file) is named as what it is.

Also here: the wording both loaders (ResNet, weights.py; DINO ViT, vit_weights.py) use when a
file does not fit its encoder or holds non-finite weights, so that the two say it alike.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import torch

from timecycle.errors import UserError, first_sentence

# Extra types a weights-only load may build, beyond torch's defaults (tensors, dicts, lists,
# OrderedDict, Counter, ...). CRW: 'args': argparse.Namespace (videowalk code/train.py).
_SAFE_GLOBALS = [argparse.Namespace]
_SHOW = 3  # keys listed per kind of problem in an error message


def fit_problems(missing: list[str], unexpected: list[str], wrong: list[str]) -> list[str]:
    """One phrase per kind of mismatch between a file and an encoder ("2 missing keys: a, b"),
    naming the first few keys of each; empty when the file fits."""
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("wrong shapes (file vs encoder)", wrong)):
        if items:
            more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:_SHOW])}{more}")
    return problems


def check_finite(name: str, tensor: torch.Tensor, path: Path) -> None:
    """A UserError naming the weight when a floating-point tensor holds NaN or inf."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise UserError(f"weight {name!r} holds NaN or infinite values (a diverged or corrupt "
                        "checkpoint)", path)


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be hundreds of MB)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk_size):
                digest.update(block)
    except OSError as err:
        raise UserError(f"cannot read file ({err.strerror or err})", path) from None
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in a `.pt`/`.pth`/`.pth.tar` or `.safetensors` file, on the CPU.

    Only tensors and plain containers are built (see the module docstring); a file that needs
    anything else, or cannot be read, raises `UserError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file" if not path.exists() else "not a file", path)
    if _is_safetensors(path):
        return _read_safetensors(path)
    _check_torch_file(path)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS), warnings.catch_warnings():
            # A plain pickle.dump file: torch warns on two lines before failing, and the
            # failure is reported below as one.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    # torch.load signals a damaged or foreign file with many types (UnpicklingError, RuntimeError
    # from the zip reader, EOFError, KeyError, ValueError...): all of them are the file's fault.
    except Exception as err:
        raise UserError(_load_failure(err), path) from None


def _check_torch_file(path: Path) -> None:
    """A UserError unless the file starts as torch.save writes: a zip archive (torch >= 1.6),
    a pickle of protocol 2 or more (the legacy format, TimeCycle's 2019 .pth.tar), or a tar
    (torch < 0.4). torch.load's own failure on a JSON or .npy file reads "Unsupported operand
    123", which tells a user nothing."""
    with open(path, "rb") as f:
        head = f.read(262)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" or head[257:262] == b"ustar":
        return
    if not head:
        raise UserError("the file is empty (0 bytes): not a checkpoint", path)
    kind = ("a NumPy .npy file" if head[:6] == b"\x93NUMPY"
            else "text" if head[:64].isascii() else "another format")
    raise UserError(f"not a PyTorch checkpoint or safetensors file (it holds {kind})", path)


def _load_failure(err: Exception) -> str:
    """One line for a failed weights-only load, without torch's advice to unpickle unsafely."""
    text = str(err)
    refused = re.search(r"GLOBAL (\S+)", text)
    if refused:
        return (
            f"refused to load: the file asks to build or call `{refused.group(1)}`, which is not "
            "a tensor or plain container; untrusted checkpoints are only read as weights"
        )
    unsupported = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if unsupported:
        return (
            f"refused to load: the file uses pickle features beyond tensors and plain containers "
            f"({unsupported.group(1).strip()}); untrusted checkpoints are only read as weights"
        )
    return f"cannot read as a PyTorch checkpoint (not one, or truncated): {first_sentence(err)}"


def _is_safetensors(path: Path) -> bool:
    """By suffix, or by the header: 8-byte little-endian JSON length, then '{'."""
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as err:
        raise UserError(f"cannot read file ({err.strerror or err})", path) from None
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return size < path.stat().st_size


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(
            "is a .safetensors file, but the `safetensors` package is not installed "
            "(pip install safetensors), or save the weights with torch.save",
            path,
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError and OSError both mean a bad file
        raise UserError(f"cannot read as safetensors: {err}", path) from None
