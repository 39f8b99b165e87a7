"""VIP part propagation: mIoU over the 20 classes as the VIP evaluation computes it (SPEC 7).

Public reference: the VIP / ATEN evaluation script (HCPLab-SYSU/ATEN
`evaluate/test_parsing.py`; its copies UVC `eval_vip.py` and videowalk `code/eval/eval_vip.py`
are behind UVC's, TimeCycle's and CRW's VIP figures; equal to all three side by side, README):
one 20 x 20 confusion matrix `hist[gt, pred]` summed over every evaluated
frame; ground-truth pixels outside 0..19 are ignored; per-class IoU = diag / (row + column -
diag); mIoU = nan-mean over the 20 classes, *background (class 0) included*; a class absent from
both ground truth and prediction (0 / 0) drops out of the mean. Pixel accuracy = diag / total.

Frames: the annotated ones (VIP annotates every 25th frame), frame 0 included, as the public
pipelines do: CRW's code/test.py saves frame 0's given label as its prediction (`pred =
lbls[0]` for t = 0) and UVC's test_mask_vip.py copies frame 0's annotation into the output
("include first frame in testing"); both eval_vip.py then score every PNG they find. Frame 0
thus scores perfectly whatever the method, so a set of videos with no annotated frame after
frame 0 has nothing to score: that is an error here (the public scripts print mIoU 1.0), and the
videos of a larger set that have none are named in a warning (their frame 0 still counts, as
there). A prediction of another size than its annotation is resized to it with nearest sampling
(ATEN's and UVC's PIL resize of a palettised image, which PIL always does with NEAREST; CRW's
resize is NEAREST for any PNG).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from timecycle.datasets.io import read_mask, write_json_atomic, write_text_atomic
from timecycle.datasets.vip import CLASSES, N_CLASSES, VipRoot
from timecycle.errors import UserError
from timecycle.metrics.numbers import csv_field, json_number
from timecycle.propagation.results import read_provenance, results_folder

RESULT_FILES = ("miou.csv", "miou.json")


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, n: int = N_CLASSES) -> np.ndarray:
    """(n, n) int64 counts, rows = ground truth, columns = prediction; gt outside 0..n-1 ignored.

    Predictions must lie in 0..n-1 (checked by the caller).
    """
    gt, pred = np.asarray(gt).ravel().astype(np.int64), np.asarray(pred).ravel().astype(np.int64)
    keep = (gt >= 0) & (gt < n)
    return np.bincount(n * gt[keep] + pred[keep], minlength=n * n).reshape(n, n)


def class_iou(hist: np.ndarray) -> np.ndarray:
    """(n,) IoU per class; NaN where the class is in neither ground truth nor prediction."""
    hist = hist.astype(np.float64)
    inter = np.diag(hist)
    union = hist.sum(axis=0) + hist.sum(axis=1) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


def summarise(hist: np.ndarray) -> dict[str, float]:
    """mIoU (nan-mean of `class_iou`), pixel accuracy and mean class accuracy of a matrix."""
    iou = class_iou(hist)
    hist = hist.astype(np.float64)
    total, gt_pixels = hist.sum(), hist.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(gt_pixels > 0, np.diag(hist) / np.where(gt_pixels > 0, gt_pixels, 1.0), np.nan)
    return {
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan,
        "pixel_accuracy": float(np.trace(hist) / total) if total else math.nan,
        "mean_accuracy": float(np.nanmean(acc)) if np.isfinite(acc).any() else math.nan,
    }


@dataclass
class VipResult:
    hist: np.ndarray  # (20, 20) summed over every evaluated frame
    per_video: dict[str, dict[str, float]] = field(default_factory=dict)
    frames: int = 0
    frame_0_only: list[str] = field(default_factory=list)  # videos annotated on frame 0 alone

    @property
    def iou(self) -> np.ndarray:
        return class_iou(self.hist)

    @property
    def summary(self) -> dict[str, float]:
        return summarise(self.hist)


def write_miou_results(out_dir: str | Path, result: VipResult, provenance: Mapping[str, object]) -> list[Path]:
    """miou.csv (`class,IoU` per class, then `mean`; empty = absent class) and miou.json."""
    out_dir = Path(out_dir)
    paths = [out_dir / f for f in RESULT_FILES]
    iou, summary = result.iou, result.summary
    lines = ["class,IoU"] + [f"{c},{csv_field(v)}" for c, v in zip(CLASSES, iou)]
    lines.append(f"mean,{csv_field(summary['mIoU'])}")
    record = {
        **{k: json_number(v) for k, v in summary.items()},
        "class_iou": {c: json_number(v) for c, v in zip(CLASSES, iou)},
        "per_video": {n: {k: json_number(v) for k, v in s.items()} for n, s in result.per_video.items()},
        "frames_scored": result.frames,
        "no_annotated_frame_after_frame_0": list(result.frame_0_only),
        "confusion_matrix": result.hist.tolist(),
        "definition": "VIP/ATEN test_parsing.py: one confusion matrix over the annotated frames, "
                      "nan-mean of 20 class IoUs, background (0) included",
        "provenance": dict(provenance),
    }
    write_text_atomic(paths[0], "\n".join(lines) + "\n")
    write_json_atomic(paths[1], record)
    return paths


def read_prediction(path: Path, gt_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) class ids at the annotation's size; ids outside 0..19 are an error."""
    if not path.is_file():
        raise UserError("prediction missing for an annotated frame", path)
    pred = read_mask(path)
    if pred.shape != tuple(gt_hw):
        pred = np.asarray(Image.fromarray(pred).resize((gt_hw[1], gt_hw[0]), Image.NEAREST))
    if pred.max(initial=0) >= N_CLASSES:
        raise UserError(f"prediction holds class id {int(pred.max())}; VIP has 0..{N_CLASSES - 1}", path)
    return pred


def frame_0_only(root: VipRoot, annotated: Mapping[str, list[tuple[int, Path]]]) -> list[str]:
    """The videos with no annotated frame after frame 0, given each video's
    `VipVideo.annotated()` (a video with no annotation at all counts among them); a UserError
    when that is all of them: nothing to score.

    Only file names are looked at, so `propagate vip --evaluate` checks this before any work.
    """
    alone = [name for name, frames in annotated.items() if not any(i > 0 for i, _ in frames)]
    if alone and len(alone) == len(annotated):
        # Frame 0's prediction is its given annotation: scored alone it is a perfect mIoU.
        if len(annotated) == 1:
            raise UserError("nothing to score: no annotated frame after frame 0 (frame 0's "
                            "prediction is this annotation)", root.video(alone[0]).annotation_dir)
        raise UserError(f"nothing to score: no annotated frame after frame 0 in any of the "
                        f"{len(annotated)} videos (frame 0's prediction is its annotation)",
                        root.annotations)
    return alone


def evaluate_vip(root: VipRoot, results_dir: str | Path, names: list[str]) -> VipResult:
    """Score `<results>/<video>/<frame>.png` on every annotated frame; write the result files."""
    results = results_folder(results_dir, names, "videos")
    total = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    result = VipResult(total)
    videos = {name: root.video(name) for name in names}
    annotated = {name: video.annotated() for name, video in videos.items()}  # listed once
    for name, video in videos.items():
        if not annotated[name]:
            raise UserError("no annotated frame for this video", video.annotation_dir)
    result.frame_0_only = frame_0_only(root, annotated)
    if result.frame_0_only:
        warnings.warn(f"{len(result.frame_0_only)} of {len(names)} videos have no annotated frame "
                      f"after frame 0, so they add only frame 0, their given annotation (scored "
                      f"as the public scripts score it): {', '.join(result.frame_0_only)}",
                      stacklevel=2)
    for name, video in videos.items():
        hist = np.zeros_like(total)
        for _, gt_path in annotated[name]:
            gt = video.read_annotation(gt_path)
            pred = read_prediction(results / name / gt_path.name, gt.shape)
            hist += confusion_matrix(gt, pred)
        total += hist
        result.frames += len(annotated[name])
        result.per_video[name] = summarise(hist)
    provenance: dict = {"vip_root": str(root.root), "videos": names}
    recorded = read_provenance(results)
    if recorded is not None:
        provenance["propagation"] = recorded
    write_miou_results(results, result, provenance)
    return result


__all__ = [
    "VipResult",
    "class_iou",
    "confusion_matrix",
    "evaluate_vip",
    "frame_0_only",
    "summarise",
    "write_miou_results",
]
