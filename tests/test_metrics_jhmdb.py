"""JHMDB PCK@alpha: hand-computed values (CRW/UVC eval_pck.py semantics) and the result files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import scipy.io
from PIL import Image

from timecycle.cli import main
from timecycle.datasets.jhmdb import JhmdbRoot, read_joints
from timecycle.errors import UserError
from timecycle.metrics.jhmdb import (
    ALPHAS,
    evaluate_jhmdb,
    joint_accuracy,
    normalised_distances,
    score_videos,
)
from helpers import assert_one_line_error

NAN = math.nan


def _video_a() -> tuple[np.ndarray, np.ndarray]:
    """3 joints, 3 frames. Frame 0's prediction is absurd: it must not be scored.

    Frame 1: joint 2 not predicted, so the box is that of joints 0 and 1 only: (0,0)-(6,0),
    diagonal 6, size 3.6. Joint 0 is 0.5 off (0.139), joint 1 is 1.5 off (0.417).
    Frame 2: box (1,1)-(4,9), diagonal sqrt(73), size 5.126; joint 0 exact, joint 1 3 off
    (0.585), joint 2 0.5 off (0.0975).
    """
    gt = np.array([
        [[0, 0], [0, 0], [0, 0]],
        [[0, 0], [6, 0], [0, 8]],
        [[1, 1], [4, 5], [1, 9]],
    ], float)
    pred = np.array([
        [[1000, 1000], [1000, 1000], [1000, 1000]],
        [[0.3, 0.4], [6, 1.5], [NAN, NAN]],
        [[1, 1], [4, 8], [1.3, 9.4]],
    ], float)
    return pred, gt


def _video_b() -> tuple[np.ndarray, np.ndarray]:
    """Frame 1 has a single predicted joint (2), exactly right: its box has size 0 and 0/0 is
    nan, which the reference counts as wrong."""
    gt = np.array([[[0, 0], [5, 5], [2, 2]], [[0, 0], [5, 5], [2, 2]]], float)
    pred = np.array([[[0, 0], [5, 5], [2, 2]], [[NAN, NAN], [NAN, NAN], [2, 2]]], float)
    return pred, gt


def test_distances_leave_out_unpredicted_joints_and_frame_zero():
    pred, gt = _video_a()
    dist, scored = normalised_distances(pred, gt)
    assert dist.shape == (2, 3)
    assert scored.tolist() == [[True, True, False], [True, True, True]]
    size1 = 0.6 * 6.0  # joint 2 is not in the box
    size2 = 0.6 * math.sqrt(73.0)
    np.testing.assert_allclose(dist[0, :2], [0.5 / size1, 1.5 / size1])
    np.testing.assert_allclose(dist[1], [0.0, 3.0 / size2, 0.5 / size2])


def test_pck_hand_computed_single_video():
    result = score_videos({"a": _video_a()})
    # Per joint at 0.1: joint 0 1/2, joint 1 0/2, joint 2 1/1; at 0.2-0.4: 2/2, 0/2, 1/1;
    # at 0.5: 2/2, 1/2, 1/1.
    expected = {0.1: (0.5 + 0 + 1) / 3, 0.2: 2 / 3, 0.3: 2 / 3, 0.4: 2 / 3, 0.5: (1 + 0.5 + 1) / 3}
    for a, v in expected.items():
        assert result.pck[a] == pytest.approx(v, abs=1e-12), a
    np.testing.assert_allclose(result.per_joint[0.1], [0.5, 0.0, 1.0])
    assert result.joint_counts.tolist() == [2, 2, 1]
    assert result.frames == 2


def test_pck_pools_joints_over_videos_and_counts_empty_boxes_as_wrong():
    result = score_videos({"a": _video_a(), "b": _video_b()})
    # Joint 2 gains video b's entry, which is wrong (0/0): 1/2 at every alpha. Pooling, not
    # averaging the videos: (0.5 + 0 + 0.5) / 3, where the mean of the two videos' PCKs would
    # be (0.5 + 0) / 2.
    np.testing.assert_allclose(result.per_joint[0.1], [0.5, 0.0, 0.5])
    assert result.pck[0.1] == pytest.approx(1 / 3)
    assert result.pck[0.5] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert result.joint_counts.tolist() == [2, 2, 2]
    # Video b alone: joints 0 and 1 never scored (left out of the mean), joint 2 wrong.
    assert result.per_video["b"][0.1] == 0.0
    assert result.per_video["a"][0.1] == pytest.approx(0.5)


def test_threshold_is_inclusive():
    dist = np.array([[0.1, 0.2, 0.30000001]])
    scored = np.ones_like(dist, bool)
    assert joint_accuracy(dist, scored, 0.2).tolist() == [1.0, 1.0, 0.0]
    # A joint never scored is NaN, not 0.
    assert np.isnan(joint_accuracy(dist, ~scored, 0.2)).all()


def test_a_distant_joint_of_a_single_predicted_frame_is_wrong():
    gt = np.zeros((2, 2, 2))
    pred = np.array([[[0, 0], [0, 0]], [[3, 4], [NAN, NAN]]])
    dist, scored = normalised_distances(pred, gt)
    assert np.isinf(dist[0, 0]) and scored[0].tolist() == [True, False]
    assert score_videos({"v": (pred, gt)}).pck[0.5] == 0.0


def _write_root(root, name: str, pos_img: np.ndarray) -> None:
    (root / "Rename_Images" / name).mkdir(parents=True)
    (root / "joint_positions" / name).mkdir(parents=True)
    scipy.io.savemat(root / "joint_positions" / name / "joint_positions.mat", {"pos_img": pos_img})


def test_evaluate_writes_csv_json_and_ignores_extra_frames(tmp_path):
    rng = np.random.default_rng(0)
    gt = rng.uniform(20, 200, (4, 15, 2))
    _write_root(tmp_path / "root", "catch/v1", gt.transpose(2, 1, 0))
    root = JhmdbRoot(tmp_path / "root")
    np.testing.assert_allclose(read_joints(root.joints_file("catch/v1")), gt)
    res = tmp_path / "res"
    (res / "catch").mkdir(parents=True)
    pred = np.concatenate([gt, np.zeros((2, 15, 2))])  # 2 extra frames: ignored
    pred[1:4, :5] += 1.0  # 5 joints about 1.4 px off: right at 0.1 for boxes this big
    pred[2, 7] = NAN
    np.save(res / "catch" / "v1.npy", pred)
    result = evaluate_jhmdb(root, res, ["catch/v1"])
    assert result.pck[0.1] == pytest.approx(1.0)
    assert result.joint_counts[7] == 2 and result.joint_counts[0] == 3
    rows = list(csv.reader(open(res / "pck.csv")))
    assert rows[0] == ["alpha", "PCK"]
    assert [r[0] for r in rows[1:]] == ["0.1", "0.2", "0.3", "0.4", "0.5"]
    assert all(r[1] == "1.000000" for r in rows[1:])
    per_video = list(csv.DictReader(open(res / "pck_per_video.csv")))
    assert per_video[0]["video"] == "catch/v1" and per_video[0]["PCK@0.2"] == "1.000000"
    record = json.loads((res / "pck.json").read_text())
    assert record["pck"]["0.1"] == 1.0 and record["joint_counts"]["belly"] == 3
    assert record["provenance"]["videos"] == ["catch/v1"]
    # A joint far off: the file-level value follows.
    pred[1:4, 0] += 500.0
    np.save(res / "catch" / "v1.npy", pred)
    assert evaluate_jhmdb(root, res, ["catch/v1"]).pck[0.5] == pytest.approx(14 / 15)
    assert ALPHAS == (0.1, 0.2, 0.3, 0.4, 0.5)


@pytest.mark.parametrize(
    "array, needle",
    [
        (np.zeros((4, 15, 3)), "expected float (T, 15, 2)"),
        (np.zeros((4, 15, 2), np.int64), "expected float (T, 15, 2)"),
        (np.zeros((3, 15, 2)), "3 frames, the ground truth 4"),
        (np.full((4, 15, 2), np.inf), "infinite"),
    ],
)
def test_bad_predictions_name_the_file(tmp_path, array, needle):
    _write_root(tmp_path / "root", "catch/v1", np.ones((2, 15, 4)))
    res = tmp_path / "res"
    (res / "catch").mkdir(parents=True)
    np.save(res / "catch" / "v1.npy", array)
    with pytest.raises(UserError, match="v1.npy") as err:
        evaluate_jhmdb(JhmdbRoot(tmp_path / "root"), res, ["catch/v1"])
    assert needle in str(err.value)


def test_missing_predictions_are_listed_together(tmp_path):
    for n in ("a/v1", "a/v2", "b/v3"):
        _write_root(tmp_path / "root", n, np.ones((2, 15, 3)))
    (tmp_path / "res" / "a").mkdir(parents=True)
    np.save(tmp_path / "res" / "a" / "v1.npy", np.ones((3, 15, 2)))
    with pytest.raises(UserError) as err:
        evaluate_jhmdb(JhmdbRoot(tmp_path / "root"), tmp_path / "res", ["a/v1", "a/v2", "b/v3"])
    assert "2 of 3" in str(err.value) and "a/v2" in str(err.value) and "b/v3" in str(err.value)


def test_a_lone_joint_left_of_or_above_the_image_has_a_box_reaching_the_image():
    """eval_pck.py starts its box at maxx = maxy = -1 (on pos_img - 1), so a frame whose
    predicted joints all lie left of the image has a box reaching x = 0 in pos_img's convention,
    not an empty one: a lone joint there can be right (CRW's script gives the same numbers)."""
    gt = np.zeros((3, 2, 2))
    gt[1] = [[-9, 5], [20, 20]]  # joint 0 left of the image: box (-9, 5)-(0, 5), size 5.4
    gt[2] = [[20, 20], [5, -3]]  # joint 1 above it: box (5, -3)-(5, 0), size 1.8
    pred = np.full((3, 2, 2), NAN)
    pred[1, 0] = [-8, 5]
    pred[2, 1] = [5, -2.7]
    dist, scored = normalised_distances(pred, gt)
    np.testing.assert_allclose(dist[scored], [1 / 5.4, 0.3 / 1.8])
    assert score_videos({"v": (pred, gt)}).pck[0.2] == 1.0


def _all_outside(tmp_path, names: list[str]):
    """Videos whose frame-0 joints all lie far outside the frame, propagated by the pixel
    baseline: a heat map wholly off the feature map is empty, so no joint is predicted."""
    gt = np.full((3, 15, 2), 12.0)
    gt[0] = -500.0
    rng = np.random.default_rng(0)
    for name in names:
        _write_root(tmp_path / "root", name, gt.transpose(2, 1, 0))
        for t in range(len(gt)):
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), np.uint8)).save(
                tmp_path / "root" / "Rename_Images" / name / f"{t + 1:05d}.png")
    res = tmp_path / "res"
    assert main(["propagate", "jhmdb", "--root", str(tmp_path / "root"), "--encoder", "pixel",
                 "--out", str(res), "--device", "cpu", "--quiet"]) == 0
    for name in names:
        assert np.isnan(np.load(res / f"{name}.npy")[1:]).all()
    return JhmdbRoot(tmp_path / "root"), res


def test_nothing_scored_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    """CRW's computePCK divides by zero here; a nan PCK with exit status 0 passed for a result."""
    root, res = _all_outside(tmp_path, ["catch/v1"])
    assert np.isnan(score_videos({"v": (np.load(res / "catch/v1.npy"), read_joints(
        root.joints_file("catch/v1")))}).pck[0.1])  # the pure function: undefined is nan
    with pytest.raises(UserError, match="v1.npy") as err:
        evaluate_jhmdb(root, res, ["catch/v1"])
    assert "no joint is predicted after frame 0" in str(err.value)
    assert "catch/v1/joint_positions.mat" in str(err.value)
    code = main(["evaluate", "jhmdb", "--root", str(root.root), "--results", str(res)])
    assert_one_line_error(code, capsys.readouterr().err, "catch/v1.npy", "PCK is undefined")
    assert not (res / "pck.csv").exists() and not (res / "pck.json").exists()
    # --evaluate: the scoring fails after the propagation succeeded; the predictions the
    # message names stay (they are whole), the score files go
    again = tmp_path / "again"
    code = main(["propagate", "jhmdb", "--root", str(root.root), "--encoder", "pixel", "--out",
                 str(again), "--device", "cpu", "--quiet", "--evaluate"])
    assert_one_line_error(code, capsys.readouterr().err, "catch/v1.npy", "PCK is undefined")
    assert (again / "catch/v1.npy").is_file() and (again / "propagation.json").is_file()
    assert not (again / "pck.csv").exists()


def test_nothing_scored_in_any_video_names_the_results_folder(tmp_path):
    root, res = _all_outside(tmp_path, ["catch/v1", "run/v2"])
    with pytest.raises(UserError, match="none of the 2 videos") as err:
        evaluate_jhmdb(root, res, ["catch/v1", "run/v2"])
    assert err.value.path == res


def test_a_video_with_nothing_scored_beside_others_adds_no_entries(tmp_path):
    """As in the reference, such a video adds nothing to the pooled counts; its own row is
    undefined (NaN), the overall PCK is the other videos'."""
    root, res = _all_outside(tmp_path, ["catch/v1"])
    gt = np.random.default_rng(0).uniform(20, 200, (3, 15, 2))
    _write_root(tmp_path / "root", "catch/v2", gt.transpose(2, 1, 0))
    np.save(res / "catch" / "v2.npy", gt)
    result = evaluate_jhmdb(root, res, ["catch/v1", "catch/v2"])
    assert result.pck[0.1] == 1.0 and result.joint_counts.tolist() == [2] * 15
    assert math.isnan(result.per_video["catch/v1"][0.1])
