"""Load DINO's ViT checkpoints into a `ViTEncoder` (format "dino").

Two layouts, as DINO's own loader reads them (facebookresearch/dino utils.py
`load_pretrained_weights`, used by eval_video_segmentation.py):

- the released backbones (`dino_deitsmall16_pretrain.pth`, `dino_vitbase8_pretrain.pth`, ...): a
  bare state dict `cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.N.*`, `norm.*`;
- a training checkpoint (`checkpoint.pth`, the `_full_checkpoint.pth` releases): the dict under
  "teacher" (DINO's default --checkpoint_key), keys prefixed `module.` (DDP) and `backbone.`
  (its MultiCropWrapper); the projection head (`head.*`) is not the backbone and is ignored.

DINO loads with strict=False, which would also pass a backbone with missing blocks; here every
key of the encoder must be in the file with its shape, and the patch size and width in the file
must be the encoder's (the error names the ViT the file holds). Files are read with
`read_checkpoint`, so only tensors and plain containers are ever built.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from timecycle.encoder.checkpoint_io import check_finite, fit_problems
from timecycle.encoder.vit import VIT_ARCHS, ViTEncoder
from timecycle.errors import UserError

FORMAT = "dino"
# A key only a ViT backbone has, and the one that gives its width and patch size.
_MARKER = "patch_embed.proj.weight"
CHECKPOINT_KEY = "teacher"  # eval_video_segmentation.py --checkpoint_key default
_WRAPPERS = ("module.", "backbone.")  # DDP, then MultiCropWrapper, stripped in this order


def vit_state(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """(backbone tensors by encoder key, encoder key -> the file's key), or None when `obj` holds
    no ViT backbone."""
    if not isinstance(obj, Mapping):
        return None
    inner = obj.get(CHECKPOINT_KEY)
    for candidate in (inner, obj) if isinstance(inner, Mapping) else (obj,):
        state: dict[str, torch.Tensor] = {}
        source: dict[str, str] = {}
        for key, value in candidate.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                continue
            name = key
            for prefix in _WRAPPERS:
                name = name.removeprefix(prefix)
            state[name], source[name] = value, key
        if isinstance(state.get(_MARKER), torch.Tensor) and "pos_embed" in state:
            return state, source
    return None


def vit_arch_of(state: Mapping[str, torch.Tensor]) -> str | None:
    """The VIT_ARCHS name of a backbone state dict (width and patch size), or None."""
    proj = state.get(_MARKER)
    if not isinstance(proj, torch.Tensor) or proj.dim() != 4:
        return None
    shape = (int(proj.shape[0]), int(proj.shape[-1]))
    return next((name for name, (dim, _, patch) in VIT_ARCHS.items()
                 if (dim, patch) == shape), None)


def load_vit_state(encoder: ViTEncoder, obj: Any, path: Path) -> tuple[int, tuple[str, ...]]:
    """Copy the backbone in checkpoint object `obj` (read from `path`) into `encoder`.

    Returns (tensors copied, the file's keys left unused). A UserError names the file and the
    problem: no ViT backbone, another ViT, missing or unexpected keys, wrong shapes, NaN.
    """
    found = vit_state(obj)
    if found is None:
        raise UserError(f"not a DINO ViT checkpoint (no {_MARKER} with pos_embed, at the top "
                        f"or under '{CHECKPOINT_KEY}'): --encoder {encoder.arch} takes DINO's "
                        "ViT weights", path)
    state, source = found
    held = vit_arch_of(state)
    if held is not None and held != encoder.arch:
        raise UserError(f"the file holds a {held} backbone, not {encoder.arch}: use --encoder "
                        f"{held}", path)
    expected = encoder.state_dict()
    head = [k for k in state if k.startswith("head.")]  # DINO's projection head, not a backbone
    ignored = [source[k] for k in head]
    missing = [k for k in expected if k not in state]
    unexpected = [source[k] for k in state if k not in expected and k not in head]
    wrong = [f"{source[k]} {tuple(state[k].shape)} vs {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = fit_problems(missing, unexpected, wrong)
    if problems:
        raise UserError(f"{FORMAT} checkpoint does not fit the {encoder.arch} encoder: "
                        + "; ".join(problems), path)
    for key in expected:
        check_finite(source[key], state[key], path)
    encoder.load_state_dict({k: state[k] for k in expected}, strict=True)
    return len(expected), tuple(ignored)
