"""Frame, label and output resizing for each protocol (SPEC 6, rows "frame size", "label
downsampling" and "output").

The public implementations resize with OpenCV or PIL; the PyTorch equivalents used here are:
cv2 INTER_LINEAR = bilinear, align_corners=False, no antialiasing; cv2 INTER_NEAREST = torch
"nearest" (floor of the scaled index); PIL NEAREST = torch "nearest-exact" (pixel centres).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F

from timecycle.propagation.protocols import Protocol


def frame_size(protocol: Protocol, height: int, width: int) -> tuple[int, int]:
    """The (H, W) at which a frame of size (height, width) is encoded under `protocol`."""
    if protocol.frame_resize == "native":
        return height, width
    if protocol.frame_resize == "square":
        return protocol.size, protocol.size
    # DINO read_frame: the short side becomes `size`, the long side keeps the aspect and is
    # floored to a multiple of `multiple`.
    m, s = protocol.multiple, protocol.size
    if height > width:
        return int((s * height / width) // m * m), s
    return s, int((s * width / height) // m * m)


def resize_frames(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, 3, H, W) float -> (T, 3, *size), bilinear like cv2.resize (no antialiasing)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


class LabelWarning(UserWarning):
    """A first-frame label that the protocol cannot carry (too small at its resolution)."""


def one_hot(ids: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(H, W) integer ids -> (K, H, W) float one-hot."""
    return F.one_hot(ids.long(), n_classes).permute(2, 0, 1).float()


def _nearest(x: torch.Tensor, size: tuple[int, int], exact: bool) -> torch.Tensor:
    mode = "nearest-exact" if exact else "nearest"
    return F.interpolate(x, size=size, mode=mode)


def downsample_label(
    ids: torch.Tensor, n_classes: int, feat_size: tuple[int, int], protocol: Protocol,
    what: str = "the first-frame label",
) -> torch.Tensor:
    """First-frame id map (H, W) -> soft label (K, h, w) at feature resolution.

    A label the protocol drops (`min_label_pixels`) is warned about, naming `what`: its masks
    would otherwise come out empty from frame 1 on, with nothing said.
    """
    if protocol.label_down == "nearest_onehot":
        # DINO read_seg: PIL nearest resize of the id map to the feature size, then one-hot.
        small = _nearest(ids[None, None].float(), feat_size, exact=True)[0, 0]
        return one_hot(small, n_classes)
    if protocol.label_canvas:
        # TimeCycle (davis_test.py): the mask is resized with the frame to the square canvas
        # first, by PIL nearest (scipy.misc.imresize 'nearest').
        canvas = (protocol.label_canvas, protocol.label_canvas)
        exact = protocol.label_nearest == "exact"
        ids = _nearest(ids[None, None].float(), canvas, exact=exact)[0, 0]
    onehot = one_hot(ids, n_classes)
    if protocol.min_label_pixels:
        # TimeCycle (test_davis.py) keeps only the colours of frame 0 with enough pixels at the
        # canvas; the pixels of a dropped one are in no channel at all, not even background.
        keep = onehot.flatten(1).sum(dim=1) >= protocol.min_label_pixels
        if not bool(keep.all()):
            dropped = int((~keep).sum())
            warnings.warn(f"{what}: {dropped} of its {n_classes} labels (ids present in it, "
                          f"background included) cover fewer than {protocol.min_label_pixels} "
                          f"pixels at the {protocol.name} protocol's {ids.shape[1]}x{ids.shape[0]} "
                          "canvas: dropped, as TimeCycle's test code drops them, and never "
                          "predicted", LabelWarning, stacklevel=2)
        onehot = onehot * keep[:, None, None]
    return F.interpolate(onehot[None], size=feat_size, mode="bilinear", align_corners=False)[0]


def minmax(label: torch.Tensor, constant: Literal["keep", "zero"] = "keep") -> torch.Tensor:
    """Per-channel min-max normalisation over space of (K, h, w).

    A constant channel would divide by zero. DINO (norm_mask) skips channels whose max is 0 and
    leaves them as they are ("keep"; a positive constant one would be NaN there). TimeCycle's
    test_davis.py divides by zero and turns the channel into NaN, which then wins every argmax
    and spreads through the context; here its min is subtracted and the division skipped
    ("zero"): a lost label stays lost, as the JHMDB script of the same lineage (UVC
    test_jhmdb.py, which skips channels whose sum is 0) does for an empty channel.
    """
    flat = label.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - lo
    ok = span > 0
    scaled = (label - lo) / torch.where(ok, span, torch.ones_like(span))  # constant: all 0
    return scaled if constant == "zero" else torch.where(ok, scaled, label)


def label_to_ids(
    soft: torch.Tensor, protocol: Protocol, frame_hw: tuple[int, int], out_hw: tuple[int, int]
) -> torch.Tensor:
    """Soft label (K, h, w) -> hard id map (out_H, out_W) int64, as the protocol's output row.

    `frame_hw` is the size at which the frame was encoded; `out_hw` the annotation size.
    """
    h, w = soft.shape[-2:]
    if protocol.output_up == "frame":
        up = frame_hw
    elif protocol.output_up == "square":
        up = (protocol.size, protocol.size)
    else:  # "stride": DINO upsamples by the patch size (8 or 16). Its frames are multiples of
        # 64 (read_frame), so each side holds a whole number of cells and the stride is the
        # frame's side over the features' (a ResNet's too: ceil(H / 8) = H / 8 there).
        up = (h * (frame_hw[0] // h), w * (frame_hw[1] // w))
    x = F.interpolate(soft[None], size=up, mode="bilinear", align_corners=False)[0]
    if protocol.output_minmax:
        x = minmax(x)
    ids = x.argmax(dim=0)
    if tuple(up) != tuple(out_hw):
        ids = _nearest(ids[None, None].float(), out_hw, exact=protocol.output_nearest == "exact")
        ids = ids[0, 0].long()
    return ids


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def feature_size(height: int, width: int, stride: int = 8) -> tuple[int, int]:
    """Output size of a stride-8 ResNet (padded convolutions round up)."""
    return ceil_div(height, stride), ceil_div(width, stride)


__all__ = [
    "downsample_label",
    "feature_size",
    "frame_size",
    "label_to_ids",
    "minmax",
    "one_hot",
    "resize_frames",
]
