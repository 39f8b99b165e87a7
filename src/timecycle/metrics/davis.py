"""DAVIS-2017 semi-supervised J (region) and F (boundary) measures, equal to the official tool.

Reference: github.com/davisvideochallenge/davis2017-evaluation, files `davis2017/metrics.py`
(`db_eval_iou`, `db_eval_boundary`, `f_measure`, `_seg2bmap`), `davis2017/utils.py`
(`db_statistics`), `davis2017/evaluation.py` (`_evaluate_semisupervised`, `evaluate`),
`davis2017/davis.py` and `davis2017/results.py` (how masks are read) and
`evaluation_method.py` (the result tables). Each rule below names the function it follows.
This is an independent numpy implementation; skimage and pandas are not needed.

Axis names: T frames, H x W pixels, N objects. Masks are bool, id maps are integer.
"""

from __future__ import annotations

import csv
import functools
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from timecycle.datasets.io import write_json_atomic, write_text_atomic
from timecycle.errors import UserError
from timecycle.metrics.numbers import csv_field, json_number

# Column names of the official result tables (evaluation_method.py).
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
PER_SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
OBJECT_COLUMNS = ("Sequence", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")

VOID_ID = 255  # davis.py: annotation pixels equal to 255 are set to 0 (background)
BOUND_TH = 0.008  # metrics.py f_measure default: tolerance as a fraction of the image diagonal


class ObjectIdError(UserError, ValueError):
    """A prediction uses an object id the sequence does not have (the official tool exits)."""


def _as_masks(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None):
    gt = np.asarray(gt).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    if gt.shape != pred.shape or gt.ndim < 2:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} must be equal (..., H, W) shapes")
    if void is not None:
        void = np.asarray(void).astype(bool, copy=False)
        if void.shape != gt.shape:
            raise ValueError(f"void {void.shape} must have the shape of gt {gt.shape}")
    return gt, pred, void


def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """Region similarity J per frame, as `db_eval_iou`.

    gt, pred, void: (T, H, W) bool (any (..., H, W) works). Returns (T,) float64:
    |gt & pred| / |gt | pred| over non-void pixels, and 1 where the union is empty
    (`db_eval_iou` sets j = 1 where np.isclose(union, 0)).
    """
    gt, pred, void = _as_masks(gt, pred, void)
    inter_px, union_px = gt & pred, gt | pred
    if void is not None:
        inter_px &= ~void
        union_px &= ~void
    # count_nonzero over the last two axes: integer counts, exactly as the official np.sum
    inter = np.count_nonzero(inter_px, axis=(-2, -1))
    union = np.count_nonzero(union_px, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.asarray(inter / union, dtype=np.float64)
    j[np.isclose(union, 0)] = 1.0
    return j


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """1-pixel boundary map of a mask, as `_seg2bmap` (David Martin's BSDS rule).

    seg: (..., H, W), non-zero = foreground. Returns (..., H, W) bool. A pixel is a boundary
    pixel when it differs from its right, bottom or bottom-right neighbour, so the boundary
    lies half a pixel towards the origin. `_seg2bmap` then overrides the image edges: on the
    last row only the right neighbour is compared, on the last column only the bottom one, and
    the bottom-right corner is never a boundary pixel; so the image border itself never makes a
    boundary (a mask covering the whole frame has none).
    """
    seg = np.asarray(seg).astype(bool, copy=False)
    right = np.zeros_like(seg)
    down = np.zeros_like(seg)
    down_right = np.zeros_like(seg)
    right[..., :, :-1] = seg[..., :, 1:]
    down[..., :-1, :] = seg[..., 1:, :]
    down_right[..., :-1, :-1] = seg[..., 1:, 1:]
    b = (seg ^ right) | (seg ^ down) | (seg ^ down_right)
    b[..., -1, :] = seg[..., -1, :] ^ right[..., -1, :]
    b[..., :, -1] = seg[..., :, -1] ^ down[..., :, -1]
    b[..., -1, -1] = False
    return b


def boundary_tolerance(height: int, width: int, bound_th: float = BOUND_TH) -> float:
    """Tolerance radius in pixels, as `f_measure`: bound_th itself when >= 1, otherwise
    ceil(bound_th * sqrt(H^2 + W^2)) (8 at 854x480)."""
    if bound_th >= 1:
        return bound_th
    return float(np.ceil(bound_th * np.linalg.norm((height, width))))


@functools.lru_cache(maxsize=16)
def _disk(radius: float) -> np.ndarray:
    """skimage.morphology.disk(radius) (the official tool's structuring element), in numpy:
    offsets L = arange(-r, r + 1) on both axes, keep x^2 + y^2 <= r^2. (2r+1, 2r+1) uint8."""
    offsets = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(offsets, offsets)
    return np.ascontiguousarray((x**2 + y**2) <= radius**2, dtype=np.uint8)


def _f_measure(pred_b: np.ndarray, gt_b: np.ndarray, radius: float) -> float:
    """Boundary F of one frame from the two (H, W) bool boundary maps, as `f_measure`."""
    n_fg = int(np.count_nonzero(pred_b))
    n_gt = int(np.count_nonzero(gt_b))
    # f_measure's special cases when a boundary is empty.
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        # Crop to the box holding every boundary pixel of both maps. Only the dilated values
        # at boundary pixels are read, and pixels outside the box hold no boundary, so the
        # counts are the full-frame ones. cv2.dilate's default border (BORDER_CONSTANT with
        # the dilation border value) adds nothing, as in the official call.
        both = pred_b | gt_b
        rows = np.flatnonzero(both.any(axis=1))
        cols = np.flatnonzero(both.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        pred_c, gt_c = pred_b[box], gt_b[box]
        kernel = _disk(radius)
        pred_dil = cv2.dilate(np.ascontiguousarray(pred_c, dtype=np.uint8), kernel) > 0
        gt_dil = cv2.dilate(np.ascontiguousarray(gt_c, dtype=np.uint8), kernel) > 0
        # precision: share of predicted boundary pixels within the tolerance of the true one;
        # recall: the converse (f_measure's fg_match / n_fg and gt_match / n_gt)
        precision = np.count_nonzero(pred_c & gt_dil) / float(n_fg)
        recall = np.count_nonzero(gt_c & pred_dil) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    # same operation order as f_measure, so the float result is bit-identical
    return float(2 * precision * recall / (precision + recall))


def boundary_f(
    gt: np.ndarray,
    pred: np.ndarray,
    void: np.ndarray | None = None,
    bound_th: float = BOUND_TH,
) -> np.ndarray:
    """Boundary F-measure per frame, as `db_eval_boundary` / `f_measure`.

    gt, pred, void: (T, H, W) bool (any (..., H, W) works). Returns (T,) float64.
    Boundaries are `boundary_map`s of the (non-void) masks, matched within a disk of radius
    `boundary_tolerance(H, W, bound_th)`; P = 1, R = 0 when only the prediction has no
    boundary, P = 0, R = 1 in the reverse case, F = 1 when both have none, F = 2PR / (P + R),
    or 0 when P + R = 0.
    """
    gt, pred, void = _as_masks(gt, pred, void)
    if void is not None:
        # f_measure: boundaries of mask * not(void)
        gt, pred = gt & ~void, pred & ~void
    lead, (h, w) = gt.shape[:-2], gt.shape[-2:]
    radius = boundary_tolerance(h, w, bound_th)  # from the full frame size, before any crop
    gt, pred = gt.reshape(-1, h, w), pred.reshape(-1, h, w)
    box = _foreground_box(gt, pred)
    if box is None:  # no foreground in any frame: both boundaries empty, F = 1
        return np.ones(lead, dtype=np.float64)
    gt_b, pred_b = boundary_map(gt[:, box[0], box[1]]), boundary_map(pred[:, box[0], box[1]])
    f = np.array([_f_measure(pred_b[t], gt_b[t], radius) for t in range(gt_b.shape[0])])
    return f.reshape(lead)


def _foreground_box(gt: np.ndarray, pred: np.ndarray) -> tuple[slice, slice] | None:
    """Box over all frames of (T, H, W) masks whose `boundary_map` equals the full frame's
    boundary map inside it and has no boundary pixel outside it (a speed-up only).

    The box is the foreground's bounding box grown by one pixel up and left (boundary pixels
    sit half a pixel towards the origin) and one pixel down and right. If that extra row or
    column lies inside the frame it is background with only background below/right of it, so
    both the full-frame rule and the box's own last-row/last-column rule give no boundary there;
    if the box reaches the frame's last row or column, the rule is the same one.
    """
    any_fg = (gt | pred).any(axis=0)
    rows = np.flatnonzero(any_fg.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(any_fg.any(axis=0))
    h, w = any_fg.shape
    return (
        slice(max(rows[0] - 1, 0), min(rows[-1] + 2, h)),
        slice(max(cols[0] - 1, 0), min(cols[-1] + 2, w)),
    )


def statistics(per_frame: np.ndarray | Sequence[float]) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame values, as `db_statistics`.

    per_frame: (T,). mean = nan-mean; recall = mean of (value > 0.5), where a nan frame counts
    as a miss (nan > 0.5 is False, as in the official code); decay = nan-mean of the first of 4
    bins minus nan-mean of the last, with bin edges ids = round(linspace(1, T, 5) + 1e-10) - 1
    and bins per_frame[ids[i] : ids[i + 1] + 1], so neighbouring bins share an endpoint.
    """
    values = np.asarray(per_frame, dtype=np.float64).reshape(-1)
    with warnings.catch_warnings():
        # all-nan or empty input gives nan, as the official code (which silences the same warning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
        # The official code casts ids to uint8, which wraps around past 255 frames; int64 gives
        # the intended bins there and the same bins below.
        ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
        bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


def count_objects(first_annotation: np.ndarray) -> int:
    """Number of objects of a sequence: the max id of its first annotation, void (255) read as 0
    (davis.py get_all_masks: num_objects = max(masks[0]) after 255 -> 0)."""
    ids = np.asarray(first_annotation)
    return int(np.where(ids == VOID_ID, 0, ids).max(initial=0))


def evaluate_sequence(
    gt_ids: np.ndarray, pred_ids: np.ndarray, n_objects: int
) -> dict[str, np.ndarray]:
    """Per-object, per-frame J and F of one sequence (`_evaluate_semisupervised`).

    gt_ids, pred_ids: (T, H, W) integer id maps of the frames to score; the caller has already
    dropped the first and last annotated frame (evaluation.py: masks[:, 1:-1]). n_objects: the
    ids scored are 1..n_objects (`count_objects` of the first annotation).
    Returns {"J": (N, T) float64, "F": (N, T) float64}, row i for object id i + 1.

    Void: gt pixels equal to 255 become background (davis.py); in the semi-supervised task the
    official tool passes no void mask to the metrics (after the 255 -> 0 step its void mask is
    empty), so void pixels are scored as background here too.
    Raises ObjectIdError (a ValueError) when the prediction holds an id above n_objects: the
    official tool stops there ("an index higher than the number of objects").
    Unlike the official tool, a prediction whose highest id is below n_objects (an object lost
    in every scored frame) is scored with empty masks for the missing objects instead of
    stopping.
    """
    gt_ids = np.asarray(gt_ids)
    pred_ids = np.asarray(pred_ids)
    if gt_ids.ndim != 3 or gt_ids.shape != pred_ids.shape:
        raise ValueError(
            f"gt_ids {gt_ids.shape} and pred_ids {pred_ids.shape} must be equal (T, H, W) shapes"
        )
    n_objects = int(n_objects)
    if n_objects < 0:
        raise ValueError(f"n_objects must be >= 0, got {n_objects}")
    max_pred = int(pred_ids.max(initial=0))
    if max_pred > n_objects:
        raise ObjectIdError(
            f"prediction contains object id {max_pred}, but the sequence has {n_objects} "
            f"object(s) (ids 1..{n_objects} from the first frame's annotation)"
        )
    gt_ids = np.where(gt_ids == VOID_ID, 0, gt_ids)
    n_frames = gt_ids.shape[0]
    j = np.empty((n_objects, n_frames), dtype=np.float64)
    f = np.empty((n_objects, n_frames), dtype=np.float64)
    for obj in range(1, n_objects + 1):
        gt_obj, pred_obj = gt_ids == obj, pred_ids == obj
        j[obj - 1] = jaccard(gt_obj, pred_obj)
        f[obj - 1] = boundary_f(gt_obj, pred_obj)
    return {"J": j, "F": f}


def summarise(
    per_sequence: Mapping[str, Mapping[str, np.ndarray]],
) -> tuple[dict[str, float], list[dict[str, float | str]]]:
    """Global and per-object statistics (evaluation.py `evaluate` + evaluation_method.py).

    per_sequence: {sequence name: `evaluate_sequence` output}, in the order to report.
    Returns (global_row with GLOBAL_COLUMNS, per-object rows with OBJECT_COLUMNS), where
    'Sequence' is f"{seq}_{object id}". Global J/F Mean, Recall and Decay are plain means over
    all objects of all sequences; J&F-Mean = (J-Mean + F-Mean) / 2.
    """
    rows: list[dict[str, float | str]] = []
    for seq, res in per_sequence.items():
        j_all, f_all = np.asarray(res["J"]), np.asarray(res["F"])
        if j_all.ndim != 2 or j_all.shape != f_all.shape:
            raise ValueError(f"{seq}: J {j_all.shape} and F {f_all.shape} must be (N, T)")
        for i in range(j_all.shape[0]):
            jm, jr, jd = statistics(j_all[i])
            fm, fr, fd = statistics(f_all[i])
            rows.append(
                {"Sequence": f"{seq}_{i + 1}", "J-Mean": jm, "J-Recall": jr, "J-Decay": jd,
                 "F-Mean": fm, "F-Recall": fr, "F-Decay": fd}
            )
    if not rows:
        raise ValueError("no objects to summarise")

    def mean(col: str) -> float:
        return float(np.mean([r[col] for r in rows]))

    glob = {c: mean(c) for c in GLOBAL_COLUMNS[1:]}
    glob = {"J&F-Mean": (glob["J-Mean"] + glob["F-Mean"]) / 2.0, **glob}
    return glob, rows



def _csv_text(header: Sequence[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _json_value(value):
    return json_number(value) if isinstance(value, (float, np.floating)) else value


def write_results(
    out_dir: str | Path,
    global_row: Mapping[str, float],
    per_object_rows: list[Mapping[str, float | str]],
    provenance: Mapping[str, object],
    suffix: str = "val",
) -> list[Path]:
    """Write the official tables plus a JSON record, each atomically; returns the three paths.

    out_dir/global_results-{suffix}.csv: GLOBAL_COLUMNS, one row; out_dir/
    per-sequence_results-{suffix}.csv: Sequence, J-Mean, F-Mean per object (official names);
    numbers as '%.6f'. out_dir/results-{suffix}.json: {"global", "per_object", "provenance"},
    full precision, nan as null.
    """
    out_dir = Path(out_dir)
    paths = [
        out_dir / f"global_results-{suffix}.csv",
        out_dir / f"per-sequence_results-{suffix}.csv",
        out_dir / f"results-{suffix}.json",
    ]
    global_text = _csv_text(GLOBAL_COLUMNS, [[csv_field(global_row[c]) for c in GLOBAL_COLUMNS]])
    seq_text = _csv_text(
        PER_SEQUENCE_COLUMNS,
        [[str(r["Sequence"])] + [csv_field(r[c]) for c in PER_SEQUENCE_COLUMNS[1:]]
         for r in per_object_rows],
    )
    record = {
        "global": {c: _json_value(global_row[c]) for c in GLOBAL_COLUMNS},
        "per_object": [{k: _json_value(v) for k, v in r.items()} for r in per_object_rows],
        "provenance": dict(provenance),
    }
    write_text_atomic(paths[0], global_text)
    write_text_atomic(paths[1], seq_text)
    write_json_atomic(paths[2], record)
    return paths
