"""The three standard label-propagation protocols as named presets (SPEC 6).

Every field cites its source. A result records the preset's name and all of its fields, so two
results are comparable only when their protocols are equal.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Protocol:
    name: str
    # Frame sizing: "native" keeps the frame; "square" squashes it to size x size; "short_side"
    # scales the short side to `size` and floors the long side to a multiple of `multiple`.
    frame_resize: Literal["native", "square", "short_side"]
    size: int = 0
    multiple: int = 1
    # Where the frame is resized: "float", the normalised frame (bilinear, no antialiasing), or
    # "uint8", the 8-bit frame by OpenCV's INTER_LINEAR (fixed-point weights, rounded to 8 bits)
    # before it is normalised. Normalisation: (RGB / 255 - ImageNet mean) / `pixel_std`.
    resize_on: Literal["float", "uint8"] = "float"
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # torchvision's ImageNet std
    # Label downsampling to feature resolution: "onehot_bilinear" makes the one-hot at
    # `label_canvas` (0 = the annotation's own size; the mask is first nearest-resized to the
    # canvas) and resizes it bilinearly; "nearest_onehot" nearest-resizes the id map, then one-hot.
    label_down: Literal["onehot_bilinear", "nearest_onehot"] = "onehot_bilinear"
    label_canvas: int = 0
    # Nearest sampling of that mask resize: "floor" (OpenCV/PyTorch) or "exact" (PIL, pixel
    # centres). Labels with fewer than `min_label_pixels` pixels where the one-hot is made are
    # dropped: their channel is all zero, so they are never predicted.
    label_nearest: Literal["floor", "exact"] = "floor"
    min_label_pixels: int = 0
    # Context: frame 0 (ground truth) plus the `n_context` previous frames' predictions. With
    # `pad_context` the missing previous frames of early targets are copies of frame 0.
    n_context: int = 20
    pad_context: bool = True
    # With `self_propagate`, frame 0 is also propagated as a target from the padded context,
    # and its stored result enters the context as the newest previous frame (it evicts the
    # oldest copy), before frame 1 is propagated.
    self_propagate: bool = False
    # Spatial restriction of the keys around each query position, in feature cells.
    restrict: Literal["none", "disk", "square"] = "none"
    radius: int = 0
    restrict_first: bool = False
    # Weights: "joint_topk" keeps the top-k over all context positions jointly and takes a
    # softmax of affinity / temperature over them; "per_frame_topk" takes a softmax of
    # affinity / temperature over each context frame's positions, keeps each frame's top-k raw
    # softmax values and averages the frames.
    weighting: Literal["joint_topk", "per_frame_topk"] = "joint_topk"
    topk: int = 10
    temperature: float = 0.05
    # What is stored as a context label: the soft prediction "raw", or after per-channel
    # min-max normalisation over space ("minmax").
    store: Literal["raw", "minmax"] = "raw"
    # The label that makes the output (and is read as keypoints): the soft "prediction", or
    # the "stored" context label (after its min-max).
    output_label: Literal["prediction", "stored"] = "prediction"
    # Output: bilinear upsampling to the frame ("frame"), to `size` x `size` ("square") or by
    # the stride ("stride"); optional per-channel min-max; argmax; then a nearest resize to the
    # annotation size, with "floor" (OpenCV/PyTorch) or "exact" (PIL) nearest sampling.
    output_up: Literal["frame", "square", "stride"] = "frame"
    output_minmax: bool = False
    output_nearest: Literal["floor", "exact"] = "floor"

    def replace(self, **changes) -> Protocol:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CRW = Protocol(
    # CRW (Jabri et al. 2020) test.py / label propagation, DAVIS at 480p: SPEC 6, column crw.
    name="crw",
    frame_resize="native",
    label_down="onehot_bilinear",
    n_context=20,  # CRW --videoLen 20
    pad_context=True,  # CRW pads the key bank with copies of frame 0
    restrict="disk",  # CRW MaskedAttention: keys with distance < radius
    radius=12,  # CRW --radius 12
    restrict_first=False,  # CRW applies the mask to the short-term keys only
    weighting="joint_topk",
    topk=10,  # CRW --topk 10
    temperature=0.05,  # CRW --temperature 0.05
    store="raw",
    output_up="frame",
    output_nearest="floor",
)

TIMECYCLE = Protocol(
    # TimeCycle (Wang et al. 2019) public test code: test_davis.py, models/dataset/davis_test.py,
    # models/videos/model_test.py, preprocess/convert_davis.py. SPEC 6, column timecycle.
    name="timecycle",
    frame_resize="square",
    size=320,  # --cropSize 320 (run_test.sh); also 400 and 480 in the README table
    label_down="onehot_bilinear",
    label_canvas=320,  # davis_test.py: mask resized with the frame; one-hot there, cv2 to 40x40
    label_nearest="exact",  # scipy.misc.imresize(..., 'nearest') is PIL NEAREST
    # test_davis.py keeps a colour of frame 0 when its count is > 10, and counts a colour from
    # its second pixel: objects of at most 11 pixels at 320x320 are dropped. (It counts black
    # from the first pixel, so drops the background at 10 or fewer; here every label,
    # background included, needs 12.)
    min_label_pixels=12,
    n_context=7,  # videoLen 8: frame 0 + 7 previous
    pad_context=True,  # davis_test.py puts 8 copies of frame 0 before the video
    self_propagate=True,  # ... and frame 0 itself is the first target (test_davis.py)
    restrict="none",
    weighting="per_frame_topk",
    topk=5,  # run_test.sh --topk_vis 5
    temperature=1 / math.sqrt(512),  # model_test.py: affinity / 512**-0.5 (SPEC 3, 6)
    store="minmax",
    output_label="stored",  # test_davis.py upsamples the normalised array it stores
    output_up="square",
    output_nearest="floor",  # convert_davis.py: cv2.resize INTER_NEAREST
)

DINO = Protocol(
    # DINO (Caron et al. 2021) eval_video_segmentation.py: SPEC 6, column dino.
    name="dino",
    frame_resize="short_side",
    size=480,
    multiple=64,  # long side floored to a multiple of 64
    resize_on="uint8",  # read_frame: cv2.resize of the uint8 image, then / 255
    pixel_std=(0.228, 0.224, 0.225),  # color_normalize's std (0.228 for red, not 0.229)
    label_down="nearest_onehot",
    n_context=7,  # --n_last_frames 7
    pad_context=False,  # DINO's queue starts empty and fills up
    restrict="square",
    radius=12,  # --size_mask_neighborhood 12
    restrict_first=True,
    weighting="joint_topk",
    topk=5,  # --topk 5
    temperature=0.1,  # exp(affinity / 0.1), normalised over the top-k
    store="raw",
    output_up="stride",
    output_minmax=True,  # norm_mask before argmax
    output_nearest="exact",  # PIL Image.resize(..., NEAREST)
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (CRW, TIMECYCLE, DINO)}


def get_protocol(name: str) -> Protocol:
    from timecycle.errors import UserError

    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
