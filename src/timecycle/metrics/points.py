"""PCK for any set of tracked points (`timecycle evaluate points`).

Ground truth is a JSON file in the pixel convention of `timecycle track` ((0, 0) the centre of
the top-left pixel):

    {"names": ["nose", ...],
     "frames": [{"frame": t, "xy": [[x, y], ...], "visible": [true, ...]}, ...]}

A prediction is `tracks.npy`: (T, K, 2) with K = len(names), in the same order, NaN where a
point is not predicted. In every listed frame after the first (frame 0 is the given input), each
visible point is correct when its predicted position is within alpha x s of the truth, where s
is sqrt(area) of the object's ground-truth mask in that frame (`masks`: a folder of %05d.png
id maps, object = every non-zero pixel; as animal-keypoint benchmarks normalise) or, without
masks, sqrt(area) of the tight box around that frame's visible true points. A missing
prediction (NaN, or a frame past the end of the prediction) counts as wrong; invisible points
are not scored. Per point: the share of its scored frames that are correct; the mean is over
the points that were scored at least once.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timecycle.datasets.io import read_mask, write_json_atomic, write_text_atomic
from timecycle.errors import UserError
from timecycle.metrics.numbers import csv_field, json_number

RESULT_FILES = ("points_pck.csv", "points_pck.json")


@dataclass
class PointsGroundTruth:
    names: list[str]
    frames: list[int]
    xy: np.ndarray  # (F, K, 2) float64
    visible: np.ndarray  # (F, K) bool


@dataclass
class PointsPck:
    alpha: float
    normaliser: str  # "mask" or "box"
    per_point: dict[str, float]  # NaN: never scored
    counts: dict[str, int]  # scored frames per point
    mean: float
    frames: int  # frames scored


def read_ground_truth(path: str | Path) -> PointsGroundTruth:
    """The ground-truth JSON (module docstring); a malformed one is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path)
    try:
        record = json.loads(path.read_text())
        names = [str(n) for n in record["names"]]
        frames, xy, visible = [], [], []
        for i, f in enumerate(record["frames"]):
            pts = np.asarray(f["xy"], np.float64)
            vis = np.asarray(f.get("visible", [True] * len(names)), bool)
            if pts.shape != (len(names), 2) or vis.shape != (len(names),):
                raise UserError(f"frame entry {i}: expected {len(names)} points (xy [[x, y], ...] "
                                f"and visible), found xy {list(pts.shape)}, visible "
                                f"{list(vis.shape)}", path)
            frames.append(int(f["frame"]))
            xy.append(pts)
            visible.append(vis & np.isfinite(pts).all(axis=1))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"not a points ground-truth JSON ({type(err).__name__}: {err}); expected "
                        '{"names": [...], "frames": [{"frame": t, "xy": [[x, y], ...], '
                        '"visible": [...]}]}', path) from None
    if not names:
        raise UserError("ground truth names no points", path)
    if len(set(frames)) != len(frames) or min(frames, default=0) < 0:
        raise UserError("frame numbers must be distinct and not negative", path)
    if not any(t > 0 and v.any() for t, v in zip(frames, visible)):  # else PCK is 0/0
        raise UserError("no visible point after frame 0 (the given input): nothing to score",
                        path)
    return PointsGroundTruth(names, frames, np.stack(xy) if xy else np.zeros((0, len(names), 2)),
                             np.stack(visible) if visible else np.zeros((0, len(names)), bool))


def read_prediction(path: str | Path, n_points: int) -> np.ndarray:
    """(T, K, 2) float64 predicted tracks; a file of another shape is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path)
    try:
        pred = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"cannot read the predicted tracks ({err})", path) from None
    if not isinstance(pred, np.ndarray):  # np.load reads an .npz archive whatever its name
        pred.close()
        raise UserError("holds an .npz archive, not one (T, K, 2) array (.npy)", path)
    if pred.dtype.kind not in "fiu":  # strings or booleans: not coordinates
        raise UserError(f"predicted tracks are {pred.dtype}, not numbers", path)
    if pred.ndim != 3 or pred.shape[1:] != (n_points, 2):
        raise UserError(f"predicted tracks have shape {list(pred.shape)}; the ground truth names "
                        f"{n_points} points, so expected (T, {n_points}, 2)", path)
    return pred.astype(np.float64)


def _mask_scale(masks: Path, frame: int) -> float:
    path = masks / f"{frame:05d}.png"
    return math.sqrt(float((read_mask(path) > 0).sum()))


def _box_scale(xy: np.ndarray) -> float:
    if len(xy) == 0:
        return 0.0
    span = xy.max(axis=0) - xy.min(axis=0)
    return math.sqrt(float(span[0] * span[1]))


def points_pck(gt: PointsGroundTruth, pred: np.ndarray, alpha: float = 0.1,
               masks: str | Path | None = None) -> PointsPck:
    """PCK@alpha per point and their mean (module docstring)."""
    if not (math.isfinite(alpha) and alpha > 0):  # inf would count every point correct
        raise UserError(f"--alpha must be a finite number > 0, got {alpha}")
    masks_dir = Path(masks) if masks is not None else None
    if masks_dir is not None and not masks_dir.is_dir():
        raise UserError("masks folder not found", masks_dir)
    k = len(gt.names)
    right, total = np.zeros(k), np.zeros(k)
    frames = 0
    for t, xy, vis in zip(gt.frames, gt.xy, gt.visible):
        if t == 0 or not vis.any():
            continue
        scale = _mask_scale(masks_dir, t) if masks_dir is not None else _box_scale(xy[vis])
        guess = pred[t] if t < len(pred) else np.full((k, 2), np.nan)
        dist = np.linalg.norm(guess - xy, axis=1)
        ok = np.isfinite(dist) & (dist <= alpha * scale)
        right += ok & vis
        total += vis
        frames += 1
    per_point = {n: (r / c if c else math.nan) for n, r, c in zip(gt.names, right, total)}
    scored = [v for v in per_point.values() if not math.isnan(v)]
    mean = float(np.mean(scored)) if scored else math.nan
    counts = {n: int(c) for n, c in zip(gt.names, total)}
    return PointsPck(alpha, "mask" if masks_dir is not None else "box", per_point, counts, mean,
                     frames)


def write_points_pck(out_dir: str | Path, result: PointsPck, sources: dict) -> list[Path]:
    """`points_pck.csv` (`point,PCK,frames`, a last row `mean`) and `points_pck.json`."""
    out_dir = Path(out_dir)
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\n")
    rows.writerow(["point", "PCK", "frames"])
    rows.writerows([n, csv_field(v), result.counts[n]] for n, v in result.per_point.items())
    rows.writerow(["mean", csv_field(result.mean), result.frames])
    record = {"alpha": result.alpha, "normaliser": result.normaliser,
              "mean": json_number(result.mean),
              "per_point": {n: json_number(v) for n, v in result.per_point.items()},
              "frames_per_point": result.counts, "frames_scored": result.frames,
              "definition": "frames after the first; visible points; correct within alpha x "
                            "sqrt(area) of the object's mask (normaliser mask) or of the box "
                            "around the frame's visible true points (box); a missing prediction "
                            "is wrong; mean over points",
              **sources}
    paths = [out_dir / f for f in RESULT_FILES]
    write_text_atomic(paths[0], text.getvalue())
    write_json_atomic(paths[1], record)
    return paths


__all__ = ["PointsGroundTruth", "PointsPck", "points_pck", "read_ground_truth", "read_prediction",
           "write_points_pck"]
