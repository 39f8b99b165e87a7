"""JHMDB keypoint propagation: PCK@alpha as the public CRW/UVC evaluation computes it (SPEC 7).

Public reference: CRW code/eval/eval_pck.py (inherited from UVC). For every frame but the first:

- a joint that was not predicted (NaN here; x < 0 there) is left out: neither right nor wrong,
  and it does not enter the frame's box;
- the box is the tight box around the *true* positions of the frame's predicted joints, whose
  far corner is never above or left of (0, 0) in pos_img's convention (the reference starts its
  max at -1 after subtracting 1, so a person wholly above or left of the image still reaches
  it); its size is 0.6 times its diagonal;
- a joint is correct when distance / size <= alpha. A frame with a single predicted joint has
  a box of size 0: its distance / size is inf or 0/0 = nan, and either counts as wrong (it stays
  in the joint's total), exactly as numpy does in the reference;
- each joint's accuracy is pooled over all frames of all videos; PCK is the mean of the 15
  per-joint accuracies. A joint with no scored entry at all (the reference divides by zero
  there) is left out of that mean; when no joint has one (every joint of frame 0 lay outside
  the frame, so none was propagated) PCK is undefined and `evaluate_jhmdb` says so.

Predictions are `<results>/<class>/<video>.npy`: float (T, 15, 2), (x, y) in pos_img's 1-based
pixel convention, NaN for a joint that was not predicted. T may exceed the ground truth's frame
count (the extra frames are ignored, as in the reference), not fall short of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from timecycle.datasets.io import write_json_atomic, write_text_atomic
from timecycle.datasets.jhmdb import JOINT_NAMES, N_JOINTS, JhmdbRoot, read_joints
from timecycle.errors import UserError
from timecycle.metrics.numbers import csv_field, json_number
from timecycle.propagation.results import read_provenance, results_folder

ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5)  # CRW eval_pck.py: rng = [0.1, 0.2, 0.3, 0.4, 0.5]
BOX_SCALE = 0.6  # eval_pck.py: now_boxes[k] = 0.6 * norm([maxx, maxy] - [minx, miny])
# eval_pck.py's box starts from minx = miny = 1e6 and maxx = maxy = -1 on pos_img - 1, so its
# corners are clamped there; in pos_img's convention that is 1e6 + 1 and 0 (ajabri/videowalk
# code/eval/eval_pck.py, commit 047f3f4, lines 77-91; the same in Liusifei/UVC's jhmdb branch).
BOX_LO_START, BOX_HI_START = 1e6 + 1.0, 0.0
RESULT_FILES = ("pck.csv", "pck_per_video.csv", "pck.json")


def normalised_distances(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances of frames 1..T-1 divided by their box size, and which entries count.

    pred, gt: (T, J, 2) with NaN in pred for joints not predicted. Returns dist (T-1, J)
    (inf or nan where the box is empty, see the module doc) and scored (T-1, J) bool.
    """
    pred, gt = np.asarray(pred, np.float64)[1:], np.asarray(gt, np.float64)[1:]
    scored = np.isfinite(pred).all(axis=-1)  # (T-1, J)
    inf = np.where(scored[..., None], gt, np.inf)
    sup = np.where(scored[..., None], gt, -np.inf)
    # The reference's starting values clamp the box: a lone predicted joint left of the image
    # has a box reaching x = 0, not an empty one (BOX_HI_START).
    lo = np.minimum(inf.min(axis=1), BOX_LO_START)  # (T-1, 2)
    hi = np.maximum(sup.max(axis=1), BOX_HI_START)
    any_scored = scored.any(axis=1)
    size = BOX_SCALE * np.linalg.norm(np.where(any_scored[:, None], hi - lo, 0.0), axis=-1)
    d = np.linalg.norm(np.where(scored[..., None], pred - gt, 0.0), axis=-1)  # (T-1, J)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = d / size[:, None]
    return dist, scored


def joint_accuracy(dist: np.ndarray, scored: np.ndarray, alpha: float) -> np.ndarray:
    """(N, J) pooled entries -> (J,) share correct at `alpha`; NaN for a joint never scored."""
    with np.errstate(invalid="ignore"):
        correct = scored & (dist <= alpha)  # nan <= alpha is False: wrong, as in the reference
    total = scored.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, correct.sum(axis=0) / np.maximum(total, 1), np.nan)


def _pck(acc: np.ndarray) -> float:
    return float(np.nanmean(acc)) if np.isfinite(acc).any() else math.nan


@dataclass
class PckResult:
    alphas: tuple[float, ...]
    pck: dict[float, float]  # alpha -> PCK over all videos
    per_joint: dict[float, np.ndarray]  # alpha -> (J,) pooled accuracies
    joint_counts: np.ndarray  # (J,) scored entries per joint
    per_video: dict[str, dict[float, float]] = field(default_factory=dict)
    frames: int = 0  # frames scored (after the first of each video)


def score_videos(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], alphas: Sequence[float] = ALPHAS
) -> PckResult:
    """PCK of {video: (pred (T, J, 2), gt (T', J, 2))}, pred trimmed to gt's T'."""
    dists, scoreds, per_video = [], [], {}
    for name, (pred, gt) in pairs.items():
        dist, scored = normalised_distances(pred[: len(gt)], gt)
        dists.append(dist)
        scoreds.append(scored)
        per_video[name] = {a: _pck(joint_accuracy(dist, scored, a)) for a in alphas}
    n_joints = next(iter(pairs.values()))[1].shape[1] if pairs else N_JOINTS
    dist = np.concatenate(dists) if dists else np.zeros((0, n_joints))
    scored = np.concatenate(scoreds) if scoreds else np.zeros((0, n_joints), bool)
    per_joint = {a: joint_accuracy(dist, scored, a) for a in alphas}
    return PckResult(
        alphas=tuple(alphas),
        pck={a: _pck(per_joint[a]) for a in alphas},
        per_joint=per_joint,
        joint_counts=scored.sum(axis=0),
        per_video=per_video,
        frames=int(dist.shape[0]),
    )


def write_pck_results(out_dir: str | Path, result: PckResult, provenance: Mapping[str, object]) -> list[Path]:
    """pck.csv (`alpha,PCK`, PCK as a fraction), pck_per_video.csv and pck.json, atomically."""
    out_dir = Path(out_dir)
    paths = [out_dir / f for f in RESULT_FILES]
    lines = ["alpha,PCK"] + [f"{a:g},{csv_field(result.pck[a])}" for a in result.alphas]
    header = ["video"] + [f"PCK@{a:g}" for a in result.alphas]
    rows = [",".join(header)] + [
        ",".join([name] + [csv_field(v[a]) for a in result.alphas]) for name, v in result.per_video.items()
    ]
    record = {
        "pck": {f"{a:g}": json_number(result.pck[a]) for a in result.alphas},
        "per_joint": {
            name: {f"{a:g}": json_number(result.per_joint[a][j]) for a in result.alphas}
            for j, name in enumerate(JOINT_NAMES[: len(result.joint_counts)])
        },
        "joint_counts": {n: int(c) for n, c in zip(JOINT_NAMES, result.joint_counts)},
        "per_video": {
            name: {f"{a:g}": json_number(v[a]) for a in result.alphas} for name, v in result.per_video.items()
        },
        "frames_scored": result.frames,
        "definition": "CRW/UVC eval_pck.py: frames after the first; box 0.6 x diagonal of the "
                      "true positions of the predicted joints; mean of per-joint accuracies",
        "provenance": dict(provenance),
    }
    write_text_atomic(paths[0], "\n".join(lines) + "\n")
    write_text_atomic(paths[1], "\n".join(rows) + "\n")
    write_json_atomic(paths[2], record)
    return paths


def read_prediction(path: Path, n_frames: int) -> np.ndarray:
    """A (T, 15, 2) float prediction with T >= n_frames; one-line errors naming the file."""
    if not path.is_file():
        raise UserError("prediction missing", path)
    try:
        pred = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"cannot read the prediction ({err})", path) from None
    if not isinstance(pred, np.ndarray):  # np.load reads an .npz archive whatever its name
        pred.close()
        raise UserError(f"holds an .npz archive, not one (T, {N_JOINTS}, 2) array (.npy)", path)
    if pred.dtype.kind != "f" or pred.ndim != 3 or pred.shape[1:] != (N_JOINTS, 2):
        raise UserError(f"prediction is {pred.dtype} {pred.shape}; expected float (T, {N_JOINTS}, 2)", path)
    if len(pred) < n_frames:
        raise UserError(f"prediction has {len(pred)} frames, the ground truth {n_frames}", path)
    if np.isinf(pred).any():
        raise UserError("prediction holds infinite values (NaN marks a joint not predicted)", path)
    return pred


def _nothing_scored(root: JhmdbRoot, results: Path, names: list[str]) -> UserError:
    """The error for predictions without one joint after frame 0 (all NaN there)."""
    why = ("so PCK is undefined; a joint is only propagated from inside frame 0, so frame 0's "
           "joints probably all lie outside the frame")
    if len(names) == 1:
        return UserError(f"no joint is predicted after frame 0 (all NaN), {why}: see frame 0 of "
                         f"{root.joints_file(names[0])}", results / f"{names[0]}.npy")
    return UserError(f"none of the {len(names)} videos' predictions has a joint after frame 0 "
                     f"(all NaN), {why}", results)


def evaluate_jhmdb(
    root: JhmdbRoot, results_dir: str | Path, names: list[str], alphas: Sequence[float] = ALPHAS
) -> PckResult:
    """Score `<results>/<class>/<video>.npy` for every video in `names`; write the result files.

    Nothing is cached: the predictions are read again and the files rewritten on every call.
    """
    results = results_folder(results_dir, names, "videos", suffix=".npy")
    pairs = {}
    for name in names:
        gt = read_joints(root.joints_file(name))
        pairs[name] = (read_prediction(results / f"{name}.npy", len(gt)), gt)
    result = score_videos(pairs, alphas)
    if not result.joint_counts.any():
        # Nothing to score: the reference's computePCK divides by zero (a ZeroDivisionError), and
        # a nan PCK written with exit status 0 would pass for a result.
        raise _nothing_scored(root, results, names)
    provenance: dict = {"jhmdb_root": str(root.root), "videos": names}
    recorded = read_provenance(results)
    if recorded is not None:
        provenance["propagation"] = recorded
    write_pck_results(results, result, provenance)
    return result


__all__ = [
    "ALPHAS",
    "BOX_SCALE",
    "PckResult",
    "evaluate_jhmdb",
    "joint_accuracy",
    "normalised_distances",
    "score_videos",
    "write_pck_results",
]
