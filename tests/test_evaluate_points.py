"""`timecycle evaluate points`: PCK of tracked points against hand-computed values."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import assert_one_line_error, run_cli
from timecycle.metrics.points import points_pck, read_ground_truth


def _gt(path: Path, frames: list[dict], names=("a", "b")) -> Path:
    path.write_text(json.dumps({"names": list(names), "frames": frames}))
    return path


# Frame 1: the visible points' box is 30 x 40 (sqrt(area) = 34.64); frame 2: b is invisible,
# one point's box has no area (a threshold of 0), so the frame is left out; frame 0 is never
# scored.
FRAMES = [
    {"frame": 0, "xy": [[0, 0], [9, 9]], "visible": [True, True]},
    {"frame": 1, "xy": [[10, 10], [40, 50]], "visible": [True, True]},
    {"frame": 2, "xy": [[20, 20], [0, 0]], "visible": [True, False]},
]


def test_box_threshold_by_hand(tmp_path):
    gt = read_ground_truth(_gt(tmp_path / "gt.json", FRAMES))
    pred = np.full((3, 2, 2), np.nan)
    pred[0] = [[100, 100], [100, 100]]  # frame 0: ignored
    pred[1, 0] = [10 + 3.4, 10]  # within 0.1 * 34.64 = 3.464
    pred[1, 1] = [40, 50 + 3.5]  # just outside
    pred[2, 0] = [20, 21]  # frame 2: left out, not a miss against a threshold of 0
    with pytest.warns(UserWarning, match="1 of 2 frames left out"):
        r = points_pck(gt, pred, alpha=0.1)
    assert r.per_point == {"a": 1.0, "b": 0.0} and r.counts == {"a": 1, "b": 1}
    assert r.mean == 0.5 and r.frames == 1 and r.left_out == [2] and r.normaliser == "box"
    with pytest.warns(UserWarning):
        r = points_pck(gt, pred, alpha=0.2)  # 6.93: b's 3.5 is now inside
    assert r.per_point == {"a": 1.0, "b": 1.0}


def test_missing_predictions_count_as_wrong(tmp_path):
    gt = read_ground_truth(_gt(tmp_path / "gt.json", FRAMES))
    pred = np.zeros((3, 2, 2))
    pred[1] = [[np.nan, np.nan], [40, 50]]
    with pytest.warns(UserWarning, match="frame 2"):  # frame 2's box has no area
        r = points_pck(gt, pred, alpha=0.1)
    assert r.per_point == {"a": 0.0, "b": 1.0} and r.counts == {"a": 1, "b": 1}


def test_mask_threshold_and_cli_files(tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    for t, side in ((1, 10), (2, 20)):  # areas 100 and 400: thresholds 0.5 * 10 and 0.5 * 20
        ids = np.zeros((64, 64), np.uint8)
        ids[:side, :side] = 3
        Image.fromarray(ids, mode="L").save(masks / f"{t:05d}.png")
    _gt(tmp_path / "gt.json", FRAMES)
    pred = np.zeros((3, 2, 2), np.float32)
    pred[1] = [[10, 15], [40, 56]]  # 5 (= threshold, right) and 6 (wrong)
    pred[2, 0] = [29, 20]  # 9 < 10: right
    np.save(tmp_path / "tracks.npy", pred)
    code, stdout, err = run_cli(capsys, "evaluate", "points", "--gt", str(tmp_path / "gt.json"), "--pred",
                                str(tmp_path / "tracks.npy"), "--masks", str(masks), "--alpha", "0.5")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "points_pck.csv")))
    assert [(r["point"], float(r["PCK"]), int(r["frames"])) for r in rows] == [
        ("a", 1.0, 2), ("b", 0.0, 1), ("mean", 0.5, 2)]
    record = json.loads((tmp_path / "points_pck.json").read_text())
    assert record["mean"] == 0.5 and record["per_point"] == {"a": 1.0, "b": 0.0}
    assert record["normaliser"] == "mask" and record["alpha"] == 0.5
    assert "PCK@0.5 0.5000" in stdout


def test_a_point_never_visible_is_left_out_of_the_mean(tmp_path):
    frames = [{"frame": 1, "xy": [[10, 10], [20, 30], [20, 30]], "visible": [True, True, False]},
              {"frame": 2, "xy": [[12, 10], [20, 30], [0, 0]], "visible": [True, True, False]}]
    gt = read_ground_truth(_gt(tmp_path / "gt.json", frames, names=("a", "b", "c")))
    pred = np.full((3, 3, 2), 10.0)  # box 10 x 20, threshold 1.41: a right in frame 1 only
    pred[:, 1] = [20, 30]
    r = points_pck(gt, pred, alpha=0.1)
    assert r.per_point["a"] == 0.5 and r.per_point["b"] == 1.0 and math.isnan(r.per_point["c"])
    assert r.mean == 0.75 and r.counts["c"] == 0


@pytest.mark.parametrize("case, needles", [
    ("names", ["gt.json", "expected 2 points"]),
    ("shape", ["tracks.npy", "expected (T, 2, 2)"]),
    ("json", ["gt.json", "not a points ground-truth JSON"]),
    ("alpha", ["--alpha must be a finite number > 0, got -1"]),
    ("alpha inf", ["--alpha must be a finite number > 0, got inf"]),
    # nothing to score: PCK would be nan with exit status 0
    ("frame 0 only", ["gt.json", "no visible point after frame 0"]),
    ("none visible", ["gt.json", "no visible point after frame 0"]),
])
def test_bad_input_is_one_line(case, needles, tmp_path, capsys):
    frames = {"names": [{"frame": 1, "xy": [[1, 1], [2, 2], [3, 3]]}],
              "frame 0 only": FRAMES[:1],
              "none visible": FRAMES[:1] + [{"frame": 1, "xy": [[1, 1], [2, 2]],
                                             "visible": [False, False]}]}.get(case, FRAMES)
    _gt(tmp_path / "gt.json", frames)
    if case == "json":
        (tmp_path / "gt.json").write_text("{not json")
    np.save(tmp_path / "tracks.npy", np.zeros((3, 3 if case == "shape" else 2, 2)))
    alpha = {"alpha": "-1", "alpha inf": "inf"}.get(case, "0.1")
    code, _, err = run_cli(capsys, "evaluate", "points", "--gt", str(tmp_path / "gt.json"), "--pred",
                           str(tmp_path / "tracks.npy"), "--alpha", alpha)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "points_pck.csv").exists()


def _evaluate(capsys, tmp_path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "evaluate", "points", "--gt", str(tmp_path / "gt.json"), "--pred",
                   str(tmp_path / "tracks.npy"), *extra)


SIX = [{"frame": t, "xy": [[10 + t, 10], [40, 50 + t]]} for t in range(6)]


@pytest.mark.parametrize("gt_frames, pred_frames, needles", [
    (SIX, 3, ["prediction has 3 frames, the ground truth", "gt.json) 6"]),
    (SIX[:3] + [{"frame": 99, "xy": [[1, 1], [30, 30]]}], 6,
     ["prediction has 6 frames, the ground truth", "gt.json) 100", "frames up to 99"]),
])
def test_a_prediction_shorter_than_the_ground_truth_is_one_line(gt_frames, pred_frames, needles,
                                                                tmp_path, capsys):
    # before: the missing frames counted as misses, a score with exit status 0
    _gt(tmp_path / "gt.json", gt_frames)
    np.save(tmp_path / "tracks.npy", np.zeros((pred_frames, 2, 2)))
    code, _, err = _evaluate(capsys, tmp_path)
    assert_one_line_error(code, err, "tracks.npy:", *needles)
    assert not (tmp_path / "points_pck.csv").exists()


@pytest.mark.parametrize("visible", [[True, True], None])  # None: "visible" left out (all)
def test_a_visible_point_without_coordinates_is_one_line(visible, tmp_path, capsys):
    frame = {"frame": 2, "xy": [[12, 10], [None, None]]}
    if visible is not None:
        frame["visible"] = visible
    _gt(tmp_path / "gt.json", SIX[:2] + [frame])
    np.save(tmp_path / "tracks.npy", np.zeros((3, 2, 2)))
    code, _, err = _evaluate(capsys, tmp_path)  # before: b silently dropped from frame 2
    assert_one_line_error(code, err, "gt.json:", "point 'b'", "frame 2", '"visible": false')
    # an invisible point needs no position
    frame["visible"] = [True, False]
    _gt(tmp_path / "gt.json", SIX[:2] + [frame])
    assert _evaluate(capsys, tmp_path)[0] == 0


def test_frames_whose_box_has_no_area_are_left_out_with_a_warning(tmp_path, capsys):
    frames = [SIX[0], SIX[1],
              {"frame": 2, "xy": [[10, 10], [40, 10]]},  # one row: no area
              {"frame": 3, "xy": [[13, 10], [0, 0]], "visible": [True, False]}]  # one point
    _gt(tmp_path / "gt.json", frames)
    pred = np.zeros((4, 2, 2))
    pred[1] = [[11, 10], [40, 51]]  # right
    pred[2] = [[10, 10], [40.5, 10]]  # a exact, b off by 0.5: would be scored against 0
    pred[3] = [[13.5, 10], [0, 0]]
    np.save(tmp_path / "tracks.npy", pred)
    with pytest.warns(UserWarning, match=r"2 of 3 frames left out .*frames 2, 3.*no area"):
        r = points_pck(read_ground_truth(tmp_path / "gt.json"), pred)
    assert r.per_point == {"a": 1.0, "b": 1.0} and r.counts == {"a": 1, "b": 1}
    assert r.frames == 1 and r.left_out == [2, 3]
    code, stdout, err = _evaluate(capsys, tmp_path)
    assert code == 0, err
    assert "timecycle: warning:" in err and "gt.json" in err and "2 of 3 frames" in err
    assert "1 frame, 2 left out" in stdout.splitlines()[-2]
    assert json.loads((tmp_path / "points_pck.json").read_text())["frames_left_out"] == [2, 3]
    # every frame without a scale: nothing to score, not a score of 0
    _gt(tmp_path / "gt.json", frames[:1] + frames[2:])
    code, _, err = _evaluate(capsys, tmp_path, "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "gt.json:", "no frame can be scored", "no area")
    assert not (tmp_path / "out").exists()


def _masks(folder: Path, sizes: dict[int, tuple[int, int]], empty=()) -> Path:
    folder.mkdir()
    for t, (h, w) in sizes.items():
        ids = np.zeros((h, w), np.uint8)
        if t not in empty:
            ids[:10, :10] = 1
        Image.fromarray(ids, mode="L").save(folder / f"{t:05d}.png")
    return folder


def test_an_empty_mask_leaves_its_frame_out_with_a_warning(tmp_path, capsys):
    masks = _masks(tmp_path / "masks", {t: (176, 320) for t in range(4)}, empty=(2,))
    _gt(tmp_path / "gt.json", SIX[:4])
    pred = np.array([f["xy"] for f in SIX[:4]], np.float64)
    pred[2] += 0.5  # before: scored against a threshold of 0, a miss
    np.save(tmp_path / "tracks.npy", pred)
    code, stdout, err = _evaluate(capsys, tmp_path, "--masks", str(masks))
    assert code == 0, err
    assert "1 of 3 frames left out" in err and "00002.png" in err and "empty" in err
    assert "PCK@0.1 1.0000 (mean of 2 points, 2 frames" in stdout


def test_masks_of_different_sizes_are_one_line(tmp_path, capsys):
    sizes = {t: (176, 320) for t in range(6)}
    sizes[3] = (50, 50)
    masks = _masks(tmp_path / "masks", sizes)
    _gt(tmp_path / "gt.json", SIX)
    np.save(tmp_path / "tracks.npy", np.zeros((6, 2, 2)))
    code, _, err = _evaluate(capsys, tmp_path, "--masks", str(masks))  # before: scored
    assert_one_line_error(code, err, "00003.png:", "50x50", "320x176")
    assert not (tmp_path / "points_pck.csv").exists()


def test_the_summary_counts_only_scored_points(tmp_path, capsys):
    frames = [{"frame": t, "xy": [[10 + t, 10], [40, 50], [0, 0]], "visible": [True, True, False]}
              for t in range(3)]
    _gt(tmp_path / "gt.json", frames, names=("a", "b", "c"))  # c is never visible
    pred = np.array([f["xy"] for f in frames], np.float64)
    pred[1:, 1] = np.nan  # b never predicted: wrong, but scored
    np.save(tmp_path / "tracks.npy", pred)
    code, stdout, err = _evaluate(capsys, tmp_path)
    assert code == 0, err
    assert "nan" not in stdout.lower()
    assert "c  not scored (never visible after frame 0)" in stdout
    assert "PCK@0.1 0.5000 (mean of 2 points," in stdout
    # nothing predicted at all: an error, not PCK 0 (nor nan)
    np.save(tmp_path / "tracks.npy", np.full((3, 3, 2), np.nan))
    code, _, err = _evaluate(capsys, tmp_path)
    assert_one_line_error(code, err, "tracks.npy:", "no point is predicted")
