"""PCK for any set of tracked points (`timecycle evaluate points`).

Ground truth is a JSON file in the pixel convention of `timecycle track` ((0, 0) the centre of
the top-left pixel):

    {"names": ["nose", ...],
     "frames": [{"frame": t, "xy": [[x, y], ...], "visible": [true, ...]}, ...]}

A visible point needs a finite position; an invisible one may have none (null). A prediction is
`tracks.npy`: (T, K, 2) with K = len(names), in the same order, NaN where a point is not
predicted; T covers every listed frame (a shorter prediction is an error, not a run of misses;
a longer one is fine, since the ground truth may annotate only some frames). In every listed
frame after the first (frame 0 is the given input), each visible point is correct when its
predicted position is within alpha x s of the truth, where s is sqrt(area) of the object's
ground-truth mask in that frame (`masks`: a folder of %05d.png id maps of one size, object =
every non-zero pixel; as animal-keypoint benchmarks such as BADJA normalise) or, without masks,
sqrt(area) of the tight box around that frame's visible true points (this package's analogue of
the mask's sqrt(area); not JHMDB's 0.6 x box diagonal, and TAP-Vid uses fixed pixel thresholds
with no normaliser). A NaN prediction counts as wrong; invisible points are not scored. Per
point: the share of its scored frames that are correct; the mean is over the points that were
scored at least once.

A frame whose s is 0 (a single visible point, visible points in one row or column, an empty
mask) is left out of the score, with a warning that counts and names those frames, and the
result records them (`left_out`). Its threshold would be 0, so it would measure only whether a
prediction is exact to the last bit: in practice a miss charged to the tracker for what the
annotation lacks. Leaving it out rather than refusing the file keeps valid annotations (one
point visible while the others are occluded) scoreable. When no frame is left to score, or no
point is predicted (all NaN) in any scored frame, there is nothing to score: a UserError.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
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
    path: Path | None = None  # the JSON it was read from, named in errors


@dataclass
class PointsPck:
    alpha: float
    normaliser: str  # "mask" or "box"
    per_point: dict[str, float]  # NaN: never scored
    counts: dict[str, int]  # scored frames per point
    mean: float  # over the points scored at least once
    frames: int  # frames scored
    left_out: list[int]  # frames whose normaliser has zero size (module docstring)


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
            lost = vis & ~np.isfinite(pts).all(axis=1)
            if lost.any():
                j = int(np.argmax(lost))
                raise UserError(f"frame entry {i} (frame {f['frame']}): point {names[j]!r} is "
                                f"visible but its xy is {json.dumps(f['xy'][j])}, not a "
                                'position; give its position, or mark it "visible": false', path)
            frames.append(int(f["frame"]))
            xy.append(pts)
            visible.append(vis)
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
                             np.stack(visible) if visible else np.zeros((0, len(names)), bool),
                             path)


def check_frame_count(gt: PointsGroundTruth, n_frames: int, path: str | Path | None = None) -> None:
    """A UserError (naming the prediction `path` and the ground truth) unless a prediction of
    `n_frames` frames covers every frame the ground truth lists."""
    last = max(gt.frames, default=0)
    if n_frames <= last:
        raise UserError(f"prediction has {n_frames} frames, the ground truth "
                        f"({gt.path or 'given'}) {last + 1}: it lists frames up to {last}", path)


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


def _mask_scales(masks: Path, frames: list[int]) -> dict[int, float]:
    """{frame: sqrt(object area)} from masks/%05d.png; masks of different sizes are a
    UserError naming the odd one (against the most common size)."""
    areas, sizes = {}, {}
    for t in frames:
        ids = read_mask(masks / f"{t:05d}.png")
        areas[t], sizes[t] = float((ids > 0).sum()), ids.shape
    shapes = list(sizes.values())
    common = max(shapes, key=shapes.count, default=None)
    for t, shape in sizes.items():
        if shape != common:
            other = next(u for u, s in sizes.items() if s == common)
            raise UserError(f"mask is {shape[1]}x{shape[0]} (WxH), the other masks "
                            f"{common[1]}x{common[0]} (e.g. {other:05d}.png)",
                            masks / f"{t:05d}.png")
    return {t: math.sqrt(a) for t, a in areas.items()}


def _box_scale(xy: np.ndarray) -> float:
    if len(xy) == 0:
        return 0.0
    span = xy.max(axis=0) - xy.min(axis=0)
    return math.sqrt(float(span[0] * span[1]))


def points_pck(gt: PointsGroundTruth, pred: np.ndarray, alpha: float = 0.1,
               masks: str | Path | None = None, pred_path: str | Path | None = None) -> PointsPck:
    """PCK@alpha per point and their mean (module docstring); `pred_path` names the
    prediction (T, K, 2) in errors."""
    if not (math.isfinite(alpha) and alpha > 0):  # inf would count every point correct
        raise UserError(f"--alpha must be a finite number > 0, got {alpha}")
    masks_dir = Path(masks) if masks is not None else None
    if masks_dir is not None and not masks_dir.is_dir():
        raise UserError("masks folder not found", masks_dir)
    check_frame_count(gt, len(pred), pred_path)
    k = len(gt.names)
    listed = [(t, xy, vis) for t, xy, vis in zip(gt.frames, gt.xy, gt.visible)
              if t > 0 and vis.any()]
    if masks_dir is not None:
        scales = _mask_scales(masks_dir, [t for t, _, _ in listed])
        why = "the ground-truth mask is empty"
    else:
        scales = {t: _box_scale(xy[vis]) for t, xy, vis in listed}
        why = ("the box of the visible points has no area (a single visible point, or points in "
               "one row or column)")
    left_out = [t for t, _, _ in listed if scales[t] == 0]
    where = masks_dir if masks_dir is not None else gt.path
    if len(left_out) == len(listed):
        raise UserError(f"no frame can be scored: in each of the {len(listed)} frames after "
                        f"frame 0 with a visible point, {why}, so the threshold would be 0", where)
    if left_out:
        shown = ", ".join(f"{t:05d}.png" if masks_dir is not None else str(t)
                          for t in left_out[:5]) + (", ..." if len(left_out) > 5 else "")
        shown = shown if masks_dir is not None else f"frame{'s' * (len(left_out) > 1)} {shown}"
        named = f"{where}: " if where is not None else ""
        warnings.warn(f"{named}{len(left_out)} of {len(listed)} frames left out of the score "
                      f"({shown}), where {why}, so the threshold would be 0", stacklevel=2)
    right, total = np.zeros(k), np.zeros(k)
    predicted = False
    for t, xy, vis in listed:
        if scales[t] == 0:
            continue
        dist = np.linalg.norm(pred[t] - xy, axis=1)
        ok = np.isfinite(dist) & (dist <= alpha * scales[t])
        right += ok & vis
        total += vis
        predicted |= bool(np.isfinite(pred[t][vis]).all(axis=1).any())
    frames = len(listed) - len(left_out)
    if not predicted:  # all NaN: a failed or empty prediction, not a PCK of 0
        raise UserError(f"no point is predicted (all NaN) in any of the {frames} frames scored: "
                        "nothing to score", pred_path)
    per_point = {n: (r / c if c else math.nan) for n, r, c in zip(gt.names, right, total)}
    scored = [v for v in per_point.values() if not math.isnan(v)]
    counts = {n: int(c) for n, c in zip(gt.names, total)}
    return PointsPck(alpha, "mask" if masks_dir is not None else "box", per_point, counts,
                     float(np.mean(scored)), frames, left_out)


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
              "frames_left_out": result.left_out,
              "definition": "frames after the first; visible points; correct within alpha x "
                            "sqrt(area) of the object's mask (normaliser mask) or of the box "
                            "around the frame's visible true points (box); frames where that "
                            "is 0 are left out (frames_left_out); a NaN prediction is wrong; "
                            "mean over the points scored",
              **sources}
    paths = [out_dir / f for f in RESULT_FILES]
    write_text_atomic(paths[0], text.getvalue())
    write_json_atomic(paths[1], record)
    return paths


__all__ = ["PointsGroundTruth", "PointsPck", "check_frame_count", "points_pck",
           "read_ground_truth", "read_prediction", "write_points_pck"]
