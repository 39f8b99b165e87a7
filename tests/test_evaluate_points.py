"""`timecycle evaluate points`: PCK of tracked points against hand-computed values."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import assert_one_line_error
from timecycle.cli import main
from timecycle.metrics.points import points_pck, read_ground_truth


def _gt(path: Path, frames: list[dict], names=("a", "b")) -> Path:
    path.write_text(json.dumps({"names": list(names), "frames": frames}))
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# Frame 1: the visible points' box is 30 x 40 (sqrt(area) = 34.64); frame 2: b is invisible,
# one point's box has no area, so only an exact prediction counts; frame 0 is never scored.
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
    pred[2, 0] = [20, 20]  # exact: distance 0 <= 0
    r = points_pck(gt, pred, alpha=0.1)
    assert r.per_point == {"a": 1.0, "b": 0.0} and r.counts == {"a": 2, "b": 1}
    assert r.mean == 0.5 and r.frames == 2 and r.normaliser == "box"
    r = points_pck(gt, pred, alpha=0.2)  # 6.93: b's 3.5 is now inside
    assert r.per_point == {"a": 1.0, "b": 1.0}


def test_missing_predictions_count_as_wrong(tmp_path):
    gt = read_ground_truth(_gt(tmp_path / "gt.json", FRAMES))
    pred = np.zeros((2, 2, 2))  # frame 2 is past the end of the prediction
    pred[1] = [[np.nan, np.nan], [40, 50]]
    r = points_pck(gt, pred, alpha=0.1)
    assert r.per_point == {"a": 0.0, "b": 1.0} and r.counts == {"a": 2, "b": 1}


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
    code, stdout, err = _run(capsys, "evaluate", "points", "--gt", str(tmp_path / "gt.json"), "--pred",
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
    frames = [{"frame": 1, "xy": [[10, 10], [20, 30]], "visible": [True, False]},
              {"frame": 2, "xy": [[12, 10], [0, 0]], "visible": [True, False]}]
    gt = read_ground_truth(_gt(tmp_path / "gt.json", frames))
    r = points_pck(gt, np.full((3, 2, 2), 10.0), alpha=0.1)  # one point: box of no area
    assert r.per_point["a"] == 0.5 and math.isnan(r.per_point["b"]) and r.mean == 0.5


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
    code, _, err = _run(capsys, "evaluate", "points", "--gt", str(tmp_path / "gt.json"), "--pred",
                        str(tmp_path / "tracks.npy"), "--alpha", alpha)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "points_pck.csv").exists()
