"""Built-in weights: a checkpoint trained by the project's own documented command, shipped in the
package (`encoder/builtin/<arch>.safetensors`, fp16) with a sidecar `<arch>.json` that gives its
provenance (command, data, steps, git revision, scores) and the file's sha256.

`--weights builtin` selects them wherever `--weights` is taken; loading needs no network and
refuses a file whose sha256 differs from the sidecar's. Maintainers write them with
`export_builtin` (see the README's Training section for the command that made them).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from timecycle.errors import UserError

BUILTIN = "builtin"  # the --weights value
FOLDER = Path(__file__).parent / "builtin"


def is_builtin(path: str | Path | None) -> bool:
    return path is not None and str(path) == BUILTIN


def builtin_info(arch: str = "resnet18", folder: Path | None = None) -> dict:
    """The sidecar of `arch`'s built-in weights; a UserError when this install has none."""
    sidecar = (folder or FOLDER) / f"{arch}.json"
    if not sidecar.is_file():
        raise UserError(f"this installation has no built-in weights for {arch} "
                        "(--weights builtin needs --encoder resnet18)", sidecar)
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"unreadable built-in weights sidecar ({err})", sidecar) from None


def builtin_path(arch: str = "resnet18", folder: Path | None = None) -> tuple[Path, dict]:
    """(the checked weights file, its sidecar); a UserError if the sha256 does not match."""
    from timecycle.encoder.weights import file_sha256

    info = builtin_info(arch, folder)
    path = (folder or FOLDER) / info["file"]
    digest = file_sha256(path)
    if digest != info["sha256"]:
        raise UserError(f"built-in weights fail their sha256 check (expected {info['sha256']}, "
                        f"got {digest}): the file is damaged or was replaced; reinstall", path)
    return path, info


def export_builtin(checkpoint: str | Path, provenance: dict, folder: Path | None = None,
                   arch: str = "resnet18") -> Path:
    """Write `checkpoint`'s encoder as fp16 `<folder>/<arch>.safetensors` and its sidecar.

    provenance: what the sidecar records besides the file, its sha256, padding and size
    (command, data list, steps, git revision, scores).
    """
    from safetensors.torch import save_file

    from timecycle.datasets.io import write_json_atomic
    from timecycle.encoder.resnet import ResNetEncoder
    from timecycle.encoder.weights import checkpoint_has_head, file_sha256, load_weights

    folder = Path(folder or FOLDER)
    folder.mkdir(parents=True, exist_ok=True)
    encoder = ResNetEncoder(arch, head=checkpoint_has_head(checkpoint))
    loaded = load_weights(encoder, checkpoint)
    state = {k: v.half() if v.is_floating_point() else v
             for k, v in encoder.state_dict().items() if not k.endswith("num_batches_tracked")}
    name = f"{arch}.safetensors"
    tmp = folder / f".{name}.tmp"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(folder / name)
    info = {"file": name, "sha256": file_sha256(folder / name), "arch": arch,
            "head": encoder.head is not None, "padding_mode": loaded.padding_mode,
            "dtype": "float16", "bytes": (folder / name).stat().st_size,
            "source_sha256": loaded.sha256, **provenance}
    write_json_atomic(folder / f"{arch}.json", info)
    return folder / name


def load_builtin_state(arch: str = "resnet18") -> dict[str, torch.Tensor]:
    """The built-in tensors (checked), for callers that want them directly."""
    from safetensors.torch import load_file

    path, _ = builtin_path(arch)
    return load_file(str(path), device="cpu")
