"""Load trained weights into an encoder from the checkpoints users bring (SPEC 2).

A `ViTEncoder` takes DINO's ViT checkpoints (format "dino", encoder/vit_weights.py). For a
`ResNetEncoder`, five layouts are recognised from their keys (a DataParallel `module.` prefix is dropped first):

- "native": this library's own files. A bare `ResNetEncoder.state_dict()` (`stem.0.weight`,
  `layer1.*`, `head.conv.weight`) or a training checkpoint `{'model': ..., 'step', 'config'}`
  whose model holds the encoder under `encoder.`.
- "torchvision": a torchvision ResNet state dict (`conv1`, `bn1`, `layer1..4`, `fc`).
- "crw": a videowalk checkpoint `{'model', 'optimizer', 'lr_scheduler', 'epoch', 'args'}`
  (ajabri/videowalk code/train.py); the ResNet sits under `encoder.model.` because the CRW
  model wraps it in `From3D` (code/utils/__init__.py); `selfsim_fc.*` is ignored.
- "timecycle-official": `{'state_dict', 'epoch'}` saved from a DataParallel model
  (xiaolonw/TimeCycle train_video_cycle_simple.py): the inflated 3-D ResNet-50 under
  `module.encoderVideo.` with 5-D convolutions of time size 1 (models/videos/inflated_resnet.py)
  and the head `module.afterconv1.weight` (512, 1024, 1, 1, 1) (models/videos/model_simple.py).
- "dino": a DINO training checkpoint of a torchvision ResNet (`checkpoint.pth`, the
  `dino_resnet50_pretrain_full_checkpoint.pth` release; facebookresearch/dino main_dino.py):
  the backbone is taken from "teacher" (the --checkpoint_key default of DINO's evaluation
  scripts), under `module.backbone.` (DDP around the MultiCropWrapper, whose fc is an Identity);
  the projection head `head.*` and the student are ignored. DINO's released ResNet-50 backbone
  (`dino_resnet50_pretrain.pth`) is a torchvision state dict without fc: "torchvision".

layer4 and fc are ignored everywhere: the encoder stops after layer3. Every other key under the
encoder's prefix must match the encoder exactly (names and shapes); BatchNorm
`num_batches_tracked` may be absent (files saved before PyTorch 0.4.1 have none).

Checkpoints are untrusted: files are read by `encoder/checkpoint_io.py` (`weights_only=True`,
or safetensors), which builds tensors and plain containers only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from timecycle.encoder.builtin import BUILTIN, builtin_info, builtin_path, is_builtin
from timecycle.encoder.checkpoint_io import (
    check_finite,
    file_sha256,
    fit_problems,
    read_checkpoint,
)
from timecycle.encoder.resnet import ResNetEncoder
from timecycle.encoder.vit import VIT_ARCHS, ViTEncoder
from timecycle.encoder.vit_weights import CHECKPOINT_KEY as DINO_CHECKPOINT_KEY
from timecycle.encoder.vit_weights import FORMAT as VIT_FORMAT
from timecycle.encoder.vit_weights import load_vit_state, vit_arch_of, vit_state
from timecycle.errors import UserError

FORMATS = ("native", "torchvision", "crw", "timecycle-official", VIT_FORMAT)

# Keys of the encoder's own checkpoints for the TimeCycle head.
_HEAD_KEY = "head.conv.weight"


@dataclass(frozen=True)
class WeightsInfo:
    """What `load_weights` loaded, for provenance (written beside every run)."""

    path: Path
    format: str  # one of FORMATS
    sha256: str  # of the whole file
    tensors: int  # tensors copied into the encoder
    ignored: tuple[str, ...]  # keys of the file that were not used, as spelled in the file
    padding_mode: str = "zeros"  # convolution padding the weights were trained with


@dataclass(frozen=True)
class _Layout:
    format: str
    root: str  # prefix of the encoder's keys (after `module.` is dropped)
    marker: str  # a key under root that only this layout has
    head: str | None = None  # key of the TimeCycle head when it lives outside root


# Most specific first: "torchvision" (root "") would also match a bare state dict of other nets.
_LAYOUTS = (
    _Layout("native", "encoder.", "stem.1.weight"),
    _Layout("native", "", "stem.1.weight"),
    _Layout("crw", "encoder.model.", "bn1.weight"),
    _Layout("timecycle-official", "encoderVideo.", "bn1.weight", head="afterconv1.weight"),
    _Layout("dino", "backbone.", "bn1.weight"),
    _Layout("torchvision", "", "bn1.weight"),
)

# torchvision stem names -> ResNetEncoder.stem = Sequential(conv1, bn1, relu, maxpool).
_STEM = {"conv1.": "stem.0.", "bn1.": "stem.1."}
# Parts of a ResNet the encoder does not have (SPEC 2: cut after layer3).
_DROPPED = ("layer4.", "fc.")
# CRW's scratch model padded with reflection; some of its checkpoints store the block convs as
# Sequential(pad, conv), i.e. `conv1.1.weight` (videowalk code/test.py renames them back).
_CRW_PADDED_CONV = re.compile(r"(conv[12])\.1\.weight$")

# (Bottleneck blocks?, blocks in layer3) -> torchvision architecture, for error hints.
_ARCH_BY_SHAPE = {
    (False, 2): "resnet18",
    (False, 6): "resnet34",
    (True, 6): "resnet50",
    (True, 23): "resnet101",
    (True, 36): "resnet152",
}


def load_weights(encoder: ResNetEncoder, path: str | Path, drop_head: bool = False) -> WeightsInfo:
    """Copy the weights in `path` into `encoder` (in place); see the module docstring for layouts.

    Args:
        encoder: the encoder to fill; its architecture and head must match the file.
        path: a checkpoint in one of FORMATS.
        drop_head: allow a file with the TimeCycle head to load into an encoder without one
            (the head is then ignored), e.g. to evaluate TimeCycle's layer3 features.

    Raises:
        UserError: unreadable or unsafe file, unrecognised layout, or keys / shapes that do not
            fit the encoder (the message names the format and the first offending keys).
    """
    if isinstance(encoder, ViTEncoder):
        return _load_vit(encoder, path)
    if not isinstance(encoder, ResNetEncoder):
        raise TypeError(f"load_weights needs a ResNetEncoder or ViTEncoder, got "
                        f"{type(encoder).__name__}")
    builtin = None
    if is_builtin(path):  # the package's own weights, sha256-checked against their sidecar
        path, builtin = builtin_path(encoder.arch)
    path = Path(path)
    checkpoint = read_checkpoint(path)
    if isinstance(checkpoint, dict) and checkpoint.get("format") == "timecycle-train":
        # A timecycle run's checkpoint: its contents checked as `--resume` checks them, so a
        # corrupt last.pt is refused, not propagated.
        from timecycle.engine.checkpoint import verify_contents

        verify_contents(checkpoint, path)
    state, layout, original = _find_state_dict(checkpoint, path)
    sha256 = file_sha256(path)
    padding_mode = builtin["padding_mode"] if builtin else _padding_mode(checkpoint, layout)

    mapped, source, ignored = _map_keys(state, layout, original)
    _check_fit(encoder, mapped, source, layout, path)  # first: a wrong architecture explains most
    _resolve_head(encoder, mapped, source, ignored, layout, path, drop_head)
    for key, tensor in mapped.items():
        check_finite(source.get(key, key), tensor, path)
        if key.endswith("running_var") and bool((tensor < 0).any()):
            # BatchNorm would take the square root of a negative variance: NaN features, and
            # every propagated mask empty with exit 0
            raise UserError(f"weight {source.get(key, key)!r} holds negative variances (a "
                            "corrupt checkpoint)", path)

    full = encoder.state_dict()
    full.update(mapped)  # keeps the encoder's num_batches_tracked where the file has none
    encoder.load_state_dict(full, strict=True)
    encoder.set_padding_mode(padding_mode)
    return WeightsInfo(
        path=path, format=layout.format, sha256=sha256, tensors=len(mapped),
        ignored=tuple(ignored), padding_mode=padding_mode,
    )


def _load_vit(encoder: ViTEncoder, path: str | Path) -> WeightsInfo:
    """DINO's ViT weights (encoder/vit_weights.py); the built-in weights are a ResNet-18's."""
    if is_builtin(path):
        raise UserError(f"--weights builtin is a resnet18; {encoder.arch} takes DINO's ViT "
                        "checkpoints", BUILTIN)
    path = Path(path)
    checkpoint = read_checkpoint(path)
    if vit_state(checkpoint) is None:
        _refuse_resnet_for_vit(checkpoint, encoder.arch, path)
    tensors, ignored = load_vit_state(encoder, checkpoint, path)
    return WeightsInfo(path=path, format=VIT_FORMAT, sha256=file_sha256(path), tensors=tensors,
                       ignored=ignored)


def _refuse_resnet_for_vit(checkpoint: Any, arch: str, path: Path) -> None:
    """A UserError naming the ResNet a file holds when it was given to a ViT encoder; nothing
    when it holds none (load_vit_state then says what a ViT file looks like)."""
    try:
        state, layout, original = _find_state_dict(checkpoint, path)
    except UserError:
        return
    held = _guess_arch(_map_keys(state, layout, original)[0])
    raise UserError(f"holds a ResNet ({held or 'of an unknown depth'}, {layout.format} layout), "
                    f"not {arch}'s ViT: use --encoder {held or 'resnet18|resnet50'}", path)


def _padding_mode(checkpoint: Any, layout: _Layout) -> str:
    """CRW trains its default "scratch" ResNet with reflect padding (videowalk code/utils
    make_encoder -> resnet.modify(padding='reflect')); its args record model_type. Other
    formats use torchvision's zero padding."""
    if layout.format == "native":  # a training checkpoint records its padding (CRW: reflect)
        config = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
        padding = config.get("padding") if isinstance(config, Mapping) else None
        return padding if padding in ("zeros", "reflect") else "zeros"
    if layout.format != "crw":
        return "zeros"
    args = checkpoint.get("args") if isinstance(checkpoint, Mapping) else None
    model_type = getattr(args, "model_type", "scratch")
    return "reflect" if model_type == "scratch" else "zeros"


def _find_state_dict(
    obj: Any, path: Path
) -> tuple[dict[str, torch.Tensor], _Layout, dict[str, str]]:
    """The tensors of the state dict inside `obj`, its layout, and each key's original spelling.

    Tries obj['state_dict'] (TimeCycle), obj['model'] (CRW, native), obj['teacher'] (DINO) and
    obj itself (bare).
    Returned keys have a leading DataParallel `module.` removed; the third value maps them back.
    """
    if not isinstance(obj, Mapping):
        raise UserError(
            f"holds a {type(obj).__name__}, not a state dict or a checkpoint dictionary", path
        )
    candidates = [obj.get("state_dict"), obj.get("model"), obj.get(DINO_CHECKPOINT_KEY), obj]
    for candidate in candidates:
        if not isinstance(candidate, Mapping):
            continue
        state = {k: v for k, v in candidate.items() if isinstance(k, str)}
        original = {k.removeprefix("module."): k for k in state}
        state = {k.removeprefix("module."): v for k, v in state.items()}
        for layout in _LAYOUTS:
            if isinstance(state.get(layout.root + layout.marker), torch.Tensor):
                return state, layout, original
    vit = vit_state(obj)
    if vit is not None:
        held = vit_arch_of(vit[0])
        raise UserError(f"holds a DINO ViT backbone ({held or 'of an unknown size'}), not a "
                        f"ResNet: use --encoder {held or 'vit-s16|vit-s8|vit-b16|vit-b8'}", path)
    keys = ", ".join(map(str, list(obj)[:8])) or "none"
    raise UserError(
        "not a recognised encoder checkpoint: no ResNet stem found (looked for "
        "stem.* | encoder.stem.* (native), conv1/bn1 (torchvision), encoder.model.* (CRW), "
        f"encoderVideo.* (TimeCycle official), teacher: backbone.* (DINO)); top-level keys: "
        f"{keys}",
        path,
    )


def _map_keys(
    state: dict[str, Any], layout: _Layout, original: dict[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """File keys -> ResNetEncoder keys, with 5-D time-size-1 convolutions squeezed.

    Returns (mapped tensors, encoder key -> file key, ignored file keys).
    """
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    ignored: list[str] = []
    resnet_names = layout.format != "native"
    for key, value in state.items():
        if layout.head is not None and key == layout.head:
            name = _HEAD_KEY
        elif not key.startswith(layout.root) or not isinstance(value, torch.Tensor):
            ignored.append(original[key])  # tracker, selfsim head, localiser, optimiser...
            continue
        else:
            name = key[len(layout.root) :]
            if resnet_names:
                if name.startswith(_DROPPED):
                    ignored.append(original[key])
                    continue
                for old, new in _STEM.items():
                    if name.startswith(old):
                        name = new + name[len(old) :]
                if layout.format == "crw":
                    name = _CRW_PADDED_CONV.sub(r"\1.weight", name)
        if value.dim() == 5 and value.shape[2] == 1:
            value = value.squeeze(2)  # inflated 3-D conv with time size 1 == the 2-D conv
        mapped[name] = value
        source[name] = original[key]
    return mapped, source, ignored


def _resolve_head(
    encoder: ResNetEncoder,
    mapped: dict[str, torch.Tensor],
    source: dict[str, str],
    ignored: list[str],
    layout: _Layout,
    path: Path,
    drop_head: bool,
) -> None:
    """A head in the file and none in the encoder (or the reverse) is refused, by name; with
    `drop_head` the file's head moves from `mapped` to `ignored` instead."""
    file_head = _HEAD_KEY in mapped
    if file_head and encoder.head is None:
        if drop_head:
            ignored.append(source.pop(_HEAD_KEY))
            del mapped[_HEAD_KEY]
            return
        raise UserError(
            f"{layout.format} checkpoint has the TimeCycle head ({source[_HEAD_KEY]}, "
            f"{tuple(mapped[_HEAD_KEY].shape)}) but the encoder was built without one: use "
            "--head yes (head=True), or --head no (drop_head=True) for its layer3 features",
            path,
        )
    if encoder.head is not None and not file_head:
        raise UserError(
            f"{layout.format} checkpoint has no TimeCycle head (afterconv1 / head.conv) but the "
            "encoder was built with one: use --head no (head=False)",
            path,
        )


def _check_fit(
    encoder: ResNetEncoder,
    mapped: dict[str, torch.Tensor],
    source: dict[str, str],
    layout: _Layout,
    path: Path,
) -> None:
    """Strict check: every encoder key present (num_batches_tracked optional), no extra key,
    every shape equal. Raises one UserError listing the first few of each problem.

    A head present on one side only is left to `_resolve_head`, which says so in plain words.
    """
    expected = encoder.state_dict()
    missing = [
        k
        for k in expected
        if k not in mapped and not k.endswith(".num_batches_tracked") and k != _HEAD_KEY
    ]
    unexpected = [source[k] for k in mapped if k not in expected and k != _HEAD_KEY]
    wrong = []
    for k, v in mapped.items():
        if k in expected and v.shape != expected[k].shape:
            name = k if source[k] == k else f"{source[k]} -> {k}"
            wrong.append(f"{name} {tuple(v.shape)} vs {tuple(expected[k].shape)}")
    problems = fit_problems(missing, unexpected, wrong)
    if not problems:
        return
    arch = _guess_arch(mapped)
    hint = f"; the file holds a {arch}" if arch is not None and arch != encoder.arch else ""
    raise UserError(
        f"{layout.format} checkpoint does not fit the {encoder.arch} encoder{hint}: "
        + "; ".join(problems),
        path,
    )


def _guess_arch(mapped: Mapping[str, torch.Tensor]) -> str | None:
    """torchvision architecture from block type and layer3 depth, or None if unknown."""
    bottleneck = "layer1.0.conv3.weight" in mapped
    blocks = {k.split(".")[1] for k in mapped if k.startswith("layer3.")}
    return _ARCH_BY_SHAPE.get((bottleneck, len(blocks)))


def checkpoint_has_head(path: str | Path) -> bool:
    """Whether a checkpoint holds the TimeCycle head, so `--head auto` can build a matching encoder."""
    if is_builtin(path):
        return bool(builtin_info()["head"])
    path = Path(path)
    state, layout, original = _find_state_dict(read_checkpoint(path), path)
    mapped, _, _ = _map_keys(state, layout, original)
    return _HEAD_KEY in mapped


# `--head auto` keeps a checkpoint's TimeCycle head only under these protocols. TimeCycle's
# test code applies it (afterconv1 and a ReLU: models/videos/model_test.py); CRW's code, the crw
# protocol's reference, loads a TimeCycle checkpoint as its encoderVideo alone and propagates
# layer3 (videowalk code/utils load_tc_model: only 'encoderVideo' keys), and DINO's code has no
# head to apply.
HEAD_PROTOCOLS = ("timecycle",)


def load_encoder(name: str, weights: str | Path | None = None, head: str = "auto",
                 seed: int = 0, protocol: str = "timecycle"):
    """(encoder module or None for identity, provenance dict), as every command loads one.

    name: an encoder of `timecycle.encoder.ENCODERS`; weights: a checkpoint path or "builtin";
    head: "auto" (the checkpoint's head where `protocol`, a protocol family name, is one of
    HEAD_PROTOCOLS), "yes" or "no" (a checkpoint's head is then ignored: layer3 features);
    seed: a ResNet's initialisation when no weights are given.
    """
    from timecycle.encoder import build_encoder

    info: dict = {"encoder": name, "seed": seed, "weights": None}
    if name in ("identity", "pixel"):
        if weights:
            raise UserError(f"--weights does not apply to the {name} baseline")
        if head == "yes":  # a baseline has no layers to put a head on: not silently ignored
            raise UserError(f"--head yes does not apply to the {name} baseline")
        return build_encoder(name), info
    if name in VIT_ARCHS and head == "yes":
        raise UserError(f"--head yes does not apply to {name}: the TimeCycle head belongs "
                        "to a ResNet's layer3")
    with_head = name not in VIT_ARCHS and (
        head == "yes" or (head == "auto" and protocol in HEAD_PROTOCOLS and bool(weights)
                          and checkpoint_has_head(weights)))
    encoder = build_encoder(name, head=with_head, seed=seed)
    info["head"] = with_head
    if weights:
        loaded = load_weights(encoder, weights, drop_head=not with_head)
        info["weights"] = {"path": str(loaded.path.resolve()), "sha256": loaded.sha256,
                           "format": loaded.format, "padding_mode": loaded.padding_mode,
                           "builtin": is_builtin(weights)}
    return encoder, info
