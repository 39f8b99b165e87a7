"""VIP mIoU: hand-computed values (VIP/ATEN test_parsing.py semantics) and the result files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from timecycle.datasets.io import write_mask
from timecycle.datasets.vip import CLASSES, N_CLASSES, VipRoot
from timecycle.errors import UserError
from timecycle.metrics.vip import class_iou, confusion_matrix, evaluate_vip, summarise

# Frame A: the void pixel (255) is ignored whatever is predicted there.
GT_A = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
PRED_A = np.array([[0, 1, 1], [1, 2, 3]], np.uint8)
# Frame B: all background, predicted as class 4.
GT_B = np.zeros((2, 2), np.uint8)
PRED_B = np.full((2, 2), 4, np.uint8)


def test_confusion_matrix_rows_are_ground_truth_and_void_is_ignored():
    hist = confusion_matrix(GT_A, PRED_A)
    assert hist.shape == (N_CLASSES, N_CLASSES)
    assert hist.sum() == 5  # 6 pixels, one void
    assert hist[0, 0] == 1 and hist[0, 1] == 1 and hist[1, 1] == 2 and hist[2, 2] == 1
    assert hist[:, 3].sum() == 0  # class 3 only predicted on the void pixel


def test_single_frame_iou_by_hand():
    iou = class_iou(confusion_matrix(GT_A, PRED_A))
    # class 0: 1 / (2 + 1 - 1); class 1: 2 / (2 + 3 - 2); class 2: 1 / 1; others: absent.
    np.testing.assert_allclose(iou[:3], [1 / 2, 2 / 3, 1.0])
    assert np.isnan(iou[3:]).all()
    s = summarise(confusion_matrix(GT_A, PRED_A))
    assert s["mIoU"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert s["pixel_accuracy"] == pytest.approx(4 / 5)


def test_one_matrix_over_frames_is_not_the_mean_of_frames():
    hist = confusion_matrix(GT_A, PRED_A) + confusion_matrix(GT_B, PRED_B)
    iou = class_iou(hist)
    # class 0: 1 / (6 + 1 - 1); class 4: predicted 4 times, never right: 0 (present, so counted).
    np.testing.assert_allclose(iou[[0, 1, 2, 4]], [1 / 6, 2 / 3, 1.0, 0.0])
    miou = summarise(hist)["mIoU"]
    assert miou == pytest.approx((1 / 6 + 2 / 3 + 1 + 0) / 4)
    per_frame = np.mean([summarise(confusion_matrix(GT_A, PRED_A))["mIoU"],
                         summarise(confusion_matrix(GT_B, PRED_B))["mIoU"]])
    assert per_frame == pytest.approx(((1 / 2 + 2 / 3 + 1) / 3 + 0.0) / 2)  # 0.361, not 0.458


def _write_video(root, name: str, frames: int, annotations: dict[int, np.ndarray]) -> None:
    from PIL import Image

    (root / "Images" / name).mkdir(parents=True)
    h, w = next(iter(annotations.values())).shape
    for t in range(frames):
        Image.new("RGB", (w, h)).save(root / "Images" / name / f"{t:012d}.jpg")
    for t, ids in annotations.items():
        write_mask(root / "Annotations" / "Category_ids" / name / f"{t:012d}.png", ids)


def test_evaluate_scores_annotated_frames_only(tmp_path):
    root_dir, res = tmp_path / "vip", tmp_path / "res"
    gt0 = np.array([[0, 0, 5], [5, 5, 0]], np.uint8)
    gt2 = np.array([[0, 5, 5], [0, 13, 13]], np.uint8)
    _write_video(root_dir, "videos1", 3, {0: gt0, 2: gt2})
    write_mask(res / "videos1" / "000000000000.png", gt0)
    # Frame 1 is not annotated: its (absurd) prediction is never read.
    write_mask(res / "videos1" / "000000000001.png", np.full((2, 3), 77, np.uint8))
    write_mask(res / "videos1" / "000000000002.png", np.array([[0, 0, 5], [0, 5, 5]], np.uint8))
    result = evaluate_vip(VipRoot(root_dir), res, ["videos1"])
    assert result.frames == 2
    # Summed matrix: class 0: gt 3 + 2 = 5 px, right 3 + 2 = 5 of them, predicted 3 + 3 = 6 ->
    # IoU 5/6; class 5: gt 3 + 2, right 3 + 1, predicted 3 + 3 -> 4/7; class 13: gt 2, right 0,
    # predicted 0 -> 0.
    iou = result.iou
    np.testing.assert_allclose(iou[[0, 5, 13]], [5 / 6, 4 / 7, 0.0])
    rows = list(csv.reader(open(res / "miou.csv")))
    assert rows[0] == ["class", "IoU"] and [r[0] for r in rows[1:-1]] == list(CLASSES)
    assert rows[-1] == ["mean", "%.6f" % ((5 / 6 + 4 / 7 + 0) / 3)]
    assert rows[2] == ["hat", ""]  # absent from both: empty, left out of the mean
    record = json.loads((res / "miou.json").read_text())
    assert record["mIoU"] == pytest.approx((5 / 6 + 4 / 7) / 3)
    assert record["pixel_accuracy"] == pytest.approx(9 / 12)
    assert record["class_iou"]["hat"] is None and record["frames_scored"] == 2


def test_prediction_with_a_class_id_above_19_names_the_file(tmp_path):
    gt = np.zeros((2, 3), np.uint8)
    _write_video(tmp_path / "vip", "v", 2, {0: gt, 1: gt})
    write_mask(tmp_path / "res" / "v" / "000000000000.png", gt)
    write_mask(tmp_path / "res" / "v" / "000000000001.png", np.full((2, 3), 20, np.uint8))
    with pytest.raises(UserError, match="000000000001.png.*class id 20"):
        evaluate_vip(VipRoot(tmp_path / "vip"), tmp_path / "res", ["v"])


def test_prediction_missing_for_an_annotated_frame(tmp_path):
    gt = np.zeros((2, 3), np.uint8)
    _write_video(tmp_path / "vip", "v", 6, {0: gt, 5: gt})
    write_mask(tmp_path / "res" / "v" / "000000000000.png", gt)
    with pytest.raises(UserError, match="000000000005.png"):
        evaluate_vip(VipRoot(tmp_path / "vip"), tmp_path / "res", ["v"])


def test_nothing_annotated_after_frame_0_is_an_error(tmp_path):
    # Frame 0's prediction is the given annotation: alone it scores mIoU 1 and measures nothing.
    gt = np.array([[0, 0, 5], [5, 5, 0]], np.uint8)
    _write_video(tmp_path / "vip", "v", 4, {0: gt})
    _write_video(tmp_path / "vip", "w", 4, {0: gt})
    for name in ("v", "w"):
        for t in range(4):
            write_mask(tmp_path / "res" / name / f"{t:012d}.png", gt)
    root = VipRoot(tmp_path / "vip")
    with pytest.raises(UserError, match=r"Category_ids/v: nothing to score: no annotated frame after frame 0"):
        evaluate_vip(root, tmp_path / "res", ["v"])
    with pytest.raises(UserError, match=r"Category_ids: nothing to score: no annotated frame after frame 0 in any of the 2 videos"):
        evaluate_vip(root, tmp_path / "res", ["v", "w"])
    assert not (tmp_path / "res" / "miou.csv").exists()


def test_a_video_annotated_on_frame_0_only_is_named_and_scored_as_the_reference_does(tmp_path):
    gt = np.array([[0, 0, 5], [5, 5, 0]], np.uint8)
    _write_video(tmp_path / "vip", "v", 4, {0: gt})
    _write_video(tmp_path / "vip", "w", 4, {0: gt, 3: gt})
    for name in ("v", "w"):
        for t in range(4):
            write_mask(tmp_path / "res" / name / f"{t:012d}.png", np.zeros_like(gt) if t else gt)
    with pytest.warns(UserWarning, match=r"1 of 2 videos .*no annotated frame after frame 0.*: v$"):
        result = evaluate_vip(VipRoot(tmp_path / "vip"), tmp_path / "res", ["v", "w"])
    # Every annotated frame is scored, frame 0 included (CRW test.py writes frame 0's given
    # label as its prediction and eval_vip.py scores every PNG it finds): v's frame 0 and w's 0, 3.
    assert result.frames == 3
    # class 0: gt 3 x 3 px, right 3 + 3 + 3, predicted 3 + 3 + 6 -> 9/12; class 5: 6/9.
    np.testing.assert_allclose(result.iou[[0, 5]], [9 / 12, 6 / 9])
    record = json.loads((tmp_path / "res" / "miou.json").read_text())
    assert record["no_annotated_frame_after_frame_0"] == ["v"]
