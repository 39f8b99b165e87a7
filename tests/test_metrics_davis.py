"""DAVIS J&F: hand-computed values on tiny masks, and independent loop references."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import ndimage

from timecycle.metrics.davis import (
    GLOBAL_COLUMNS,
    ObjectIdError,
    _disk,
    boundary_f,
    boundary_map,
    boundary_tolerance,
    count_objects,
    evaluate_sequence,
    jaccard,
    statistics,
    summarise,
    write_results,
)


def _block(h, w, rows, cols):
    m = np.zeros((h, w), dtype=bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


# ---------------------------------------------------------------- J


def test_jaccard_hand_values():
    gt = np.zeros((4, 4, 4), dtype=bool)
    pred = np.zeros_like(gt)
    # frame 0: gt = rows 0-1 x cols 0-1 (4 px), pred = rows 0-1 x cols 1-2 (4 px);
    # intersection = col 1, rows 0-1 = 2 px; union = 4 + 4 - 2 = 6 -> J = 2/6 = 1/3
    gt[0, 0:2, 0:2] = True
    pred[0, 0:2, 1:3] = True
    # frame 1: identical 3x3 masks -> J = 1
    gt[1, 1:4, 1:4] = pred[1, 1:4, 1:4] = True
    # frame 2: both empty -> union 0 -> J = 1 (official rule)
    # frame 3: gt 2 px, pred empty -> 0 / 2 = 0
    gt[3, 0, 0:2] = True
    np.testing.assert_allclose(jaccard(gt, pred), [1 / 3, 1.0, 1.0, 0.0], rtol=0, atol=1e-15)


def test_jaccard_void_excluded_when_given():
    gt = np.zeros((1, 4, 4), dtype=bool)
    pred = np.zeros_like(gt)
    gt[0, 0, 0:2] = True  # 2 px
    pred[0, 0, 0:4] = True  # 4 px, 2 outside gt
    void = np.zeros_like(gt)
    void[0, 0, 3] = True
    # without void: 2 / 4; with void: the void px leaves the union -> 2 / 3
    assert jaccard(gt, pred)[0] == 0.5
    assert jaccard(gt, pred, void)[0] == pytest.approx(2 / 3, abs=1e-15)


# ---------------------------------------------------------------- boundary map


def _boundary_loop(seg):
    """Straightforward per-pixel statement of the BSDS / _seg2bmap rule."""
    h, w = seg.shape
    b = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            if y < h - 1 and x < w - 1:
                b[y, x] = seg[y, x] != seg[y, x + 1] or seg[y, x] != seg[y + 1, x] or (
                    seg[y, x] != seg[y + 1, x + 1]
                )
            elif y == h - 1 and x < w - 1:  # last row: right neighbour only
                b[y, x] = seg[y, x] != seg[y, x + 1]
            elif x == w - 1 and y < h - 1:  # last column: bottom neighbour only
                b[y, x] = seg[y, x] != seg[y + 1, x]
            # bottom-right corner stays 0
    return b


def test_boundary_map_matches_loop_on_random_masks():
    rng = np.random.default_rng(0)
    segs = rng.random((6, 7, 9)) < 0.4
    got = boundary_map(segs)  # vectorised over the leading axis
    for t in range(segs.shape[0]):
        np.testing.assert_array_equal(got[t], _boundary_loop(segs[t]))


def test_boundary_map_square_is_ring_shifted_to_origin():
    seg = _block(6, 6, (1, 3), (1, 3))
    # the boundary of the 3x3 block at rows/cols 1..3 is the 12-pixel ring of the
    # 4x4 square rows/cols 0..3 (boundary half a pixel towards the origin)
    expected = _block(6, 6, (0, 3), (0, 3)) & ~_block(6, 6, (1, 2), (1, 2))
    np.testing.assert_array_equal(boundary_map(seg), expected)
    # a mask filling the frame has no boundary: the border makes none
    assert not boundary_map(np.ones((5, 7), dtype=bool)).any()


def test_disk_is_skimage_disk():
    # disk(1): plus shape, 5 px; disk(2): x^2 + y^2 <= 4 -> 13 px
    np.testing.assert_array_equal(_disk(1.0), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert _disk(2.0).sum() == 13 and _disk(2.0)[0, 1] == 0 and _disk(2.0)[1, 1] == 1
    assert _disk(8.0).shape == (17, 17)


def test_tolerance():
    assert boundary_tolerance(480, 854) == 8  # ceil(0.008 * 979.63) = ceil(7.84)
    assert boundary_tolerance(100, 100) == 2  # ceil(0.008 * 141.42) = ceil(1.13)
    assert boundary_tolerance(100, 100, 3) == 3  # >= 1: a radius in pixels


# ---------------------------------------------------------------- F


def test_boundary_f_shifted_squares_radius_1_and_2():
    # gt block rows 1-3 x cols 1-3 -> ring G = rows 0-3 x cols 0-3 (12 px).
    # pred block rows 1-3 x cols 3-5 -> ring P = rows 0-3 x cols 2-5 (12 px).
    # radius 1 (plus): P px within reach of G: top (0,2),(0,3) in G, (0,4) next to (0,3);
    # (0,5) no; bottom the same (3 of 4); left column (1,2),(2,2) next to (1,3),(2,3);
    # right column (1,5),(2,5) no -> 8/12. Mirror image for recall -> 8/12. F = 2/3.
    gt = _block(6, 8, (1, 3), (1, 3))[None]
    pred = _block(6, 8, (1, 3), (3, 5))[None]
    assert boundary_f(gt, pred, bound_th=1)[0] == pytest.approx(2 / 3, abs=1e-15)
    # radius 2: every P px has a G px 2 columns away in its row -> P = R = 1, F = 1
    assert boundary_f(gt, pred, bound_th=2)[0] == 1.0


def test_boundary_f_disk_excludes_diagonal_at_radius_1():
    # gt single px (2,2) -> boundary {(1,1),(1,2),(2,1),(2,2)}; pred (3,3) ->
    # {(2,2),(2,3),(3,2),(3,3)}. Radius 1 (plus): (3,3) only touches G diagonally -> P = 3/4;
    # (1,1) likewise -> R = 3/4; F = 3/4 (a square element would give 1).
    gt = np.zeros((1, 6, 6), dtype=bool)
    pred = np.zeros_like(gt)
    gt[0, 2, 2] = pred[0, 3, 3] = True
    assert boundary_f(gt, pred, bound_th=1)[0] == pytest.approx(0.75, abs=1e-15)


def test_boundary_f_default_threshold_on_100x100():
    # 0.008 on 100x100 -> radius 2 (disk: offsets with x^2 + y^2 <= 4).
    # gt block rows 1-3 x cols 1-3 -> ring rows 0-3 x cols 0-3; pred shifted 3 columns:
    # block cols 4-6 -> ring rows 0-3 x cols 3-6. P: top (0,3),(0,4),(0,5) within 2 of
    # (0,3), (0,6) is 3 away; bottom the same; left column (1,3),(2,3) in G; right column
    # (1,6),(2,6) 3 away -> 8/12; R by mirror 8/12 -> F = 2/3.
    gt = _block(100, 100, (1, 3), (1, 3))[None]
    pred = _block(100, 100, (1, 3), (4, 6))[None]
    assert boundary_f(gt, pred)[0] == pytest.approx(2 / 3, abs=1e-15)
    # with radius 1 instead: top (0,3),(0,4); bottom 2; left column 2 -> 6/12 -> F = 1/2
    assert boundary_f(gt, pred, bound_th=1)[0] == pytest.approx(0.5, abs=1e-15)


def test_boundary_f_empty_cases_and_j():
    some = _block(8, 8, (2, 4), (2, 4))
    none = np.zeros((8, 8), dtype=bool)
    gt = np.stack([none, some, none])
    pred = np.stack([none, none, some])
    # both empty: F = 1 (P = R = 1), J = 1; pred empty: P = 1, R = 0 -> F = 0;
    # gt empty: P = 0, R = 1 -> F = 0; J = 0 in both
    np.testing.assert_array_equal(boundary_f(gt, pred), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(jaccard(gt, pred), [1.0, 0.0, 0.0])


def test_boundary_f_image_border_adds_no_match():
    # gt far from the border; pred boundary hugs the top-left corner, 10+ px from gt.
    # Radius 3: no pred px near gt, no gt px near pred -> P = R = 0 -> F = 0. A dilation
    # that treated outside pixels as boundary would match the pred px at the border.
    gt = _block(30, 30, (20, 25), (20, 25))[None]
    pred = _block(30, 30, (0, 2), (0, 2))[None]
    assert boundary_f(gt, pred, bound_th=3)[0] == 0.0


def _boundary_f_reference(gt, pred, radius):
    """Full-frame F with the loop boundary rule and scipy's dilation (no cropping, no cv2)."""
    gb, pb = _boundary_loop(gt), _boundary_loop(pred)
    ng, npx = gb.sum(), pb.sum()
    if npx == 0 and ng == 0:
        return 1.0
    if npx == 0 or ng == 0:
        return 0.0
    disk = _disk(float(radius)).astype(bool)
    p = (pb & ndimage.binary_dilation(gb, disk)).sum() / float(npx)
    r = (gb & ndimage.binary_dilation(pb, disk)).sum() / float(ng)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_boundary_f_matches_full_frame_reference_on_random_blobs():
    rng = np.random.default_rng(1)
    h, w = 24, 31
    gts, preds = [], []
    for _ in range(6):
        # smoothed noise -> blobs that also touch the borders
        g = ndimage.uniform_filter(rng.random((h, w)), 5) > 0.55
        p = ndimage.uniform_filter(rng.random((h, w)), 5) > 0.55
        gts.append(g)
        preds.append(p)
    gts, preds = np.stack(gts), np.stack(preds)
    # the blobs reach the last row and column, where the edge rules apply
    assert gts[:, -1, :].any() and gts[:, :, -1].any() and preds[:, -1, :].any()
    for radius in (1, 2, 4):
        got = boundary_f(gts, preds, bound_th=radius)
        ref = [_boundary_f_reference(gts[t], preds[t], radius) for t in range(len(gts))]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-15)
        assert 0 < got.min() < 1  # the masks give non-trivial values


# ---------------------------------------------------------------- statistics


def test_statistics_length_8_shared_endpoints():
    v = [1.0, 0.9, 0.8, 0.7, 0.6, 0.4, 0.2, 0.0]
    # linspace(1, 8, 5) = [1, 2.75, 4.5, 6.25, 8] -> round(+1e-10) - 1 = [0, 2, 4, 5, 7]
    # bin0 = v[0:3] = 1, .9, .8 (mean .9); bin3 = v[5:8] = .4, .2, 0 (mean .2) -> decay .7
    # (without the shared endpoint: .95 - .3 = .65). mean = 4.6 / 8; recall = 5 / 8.
    m, r, d = statistics(v)
    assert m == pytest.approx(0.575, abs=1e-12)
    assert r == 0.625
    assert d == pytest.approx(0.7, abs=1e-12)


def test_statistics_length_5_and_strict_threshold():
    v = [0.9, 0.7, 0.5, 0.3, 0.1]
    # ids = [0, 1, 2, 3, 4]; bin0 = v[0:2] -> .8; bin3 = v[3:5] -> .2; decay .6
    # recall counts > 0.5 strictly: .9, .7 -> 2/5
    m, r, d = statistics(v)
    assert m == pytest.approx(0.5, abs=1e-12)
    assert r == 0.4
    assert d == pytest.approx(0.6, abs=1e-12)


def test_statistics_length_7_uses_the_rounding_nudge():
    v = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # linspace(1, 7, 5) = [1, 2.5, 4, 5.5, 7]; round(2.5 + 1e-10) = 3 (plain np.round gives 2)
    # -> ids = [0, 2, 3, 5, 6]; bin0 = v[0:3] = 1, 1, 0 -> 2/3; bin3 = v[5:7] -> 0
    assert statistics(v)[2] == pytest.approx(2 / 3, abs=1e-12)


def test_statistics_nan_handling():
    nan = float("nan")
    v = [1.0, nan, 0.0, 1.0, nan, 1.0, 0.0, 1.0]
    # mean ignores nan: 4 / 6; recall counts nan as a miss (nan > 0.5 is False): 4 / 8;
    # bins [0,2,4,5,7]: nanmean(1, nan, 0) = .5, nanmean(1, 0, 1) = 2/3 -> decay -1/6
    m, r, d = statistics(v)
    assert m == pytest.approx(4 / 6, abs=1e-12)
    assert r == 0.5
    assert d == pytest.approx(-1 / 6, abs=1e-12)
    assert math.isnan(statistics([nan, nan])[0])


def test_statistics_long_sequence_no_uint8_wrap():
    v = np.ones(300)
    v[224:] = 0.0
    # ids = round([1, 75.75, 150.5, 225.25, 300]) - 1 = [0, 75, 150, 224, 299];
    # bin0 all ones, bin3 = v[224:300] all zeros -> decay 1 (uint8 ids would wrap 299 to 43)
    assert statistics(v)[2] == 1.0
    assert statistics([0.3])[2] == 0.0  # one frame: all bins are that frame


# ---------------------------------------------------------------- sequences


def test_evaluate_sequence_two_objects():
    gt = np.zeros((2, 6, 6), dtype=np.uint8)
    pred = np.zeros_like(gt)
    gt[:, 0:2, 0:2] = 1  # object 1: 4 px
    gt[:, 4:6, 4:6] = 2  # object 2: 4 px
    pred[0, 0:2, 0:2] = 1  # frame 0: object 1 exact, object 2 missing
    pred[1, 0:2, 0:1] = 1  # frame 1: object 1 half (2 / 4)
    pred[1, 4:6, 4:6] = 2  # object 2 exact
    res = evaluate_sequence(gt, pred, 2)
    assert res["J"].shape == res["F"].shape == (2, 2)
    np.testing.assert_array_equal(res["J"], [[1.0, 0.5], [0.0, 1.0]])
    assert res["F"][0, 0] == 1.0 and res["F"][1, 0] == 0.0 and res["F"][1, 1] == 1.0


def test_evaluate_sequence_void_scored_as_background():
    gt = np.zeros((1, 4, 4), dtype=np.uint8)
    gt[0, 0, 0:2] = 1
    gt[0, 0, 2:4] = 255  # void
    pred = np.zeros_like(gt)
    pred[0, 0, :] = 1  # covers object and void
    # void is not excluded in the semi-supervised task: J = 2 / 4
    assert evaluate_sequence(gt, pred, 1)["J"][0, 0] == 0.5
    assert count_objects(np.array([[0, 2], [255, 1]])) == 2


def test_evaluate_sequence_rejects_unknown_id_and_bad_shapes():
    gt = np.zeros((1, 4, 4), dtype=np.uint8)
    gt[0, 0, 0] = 1
    pred = gt.copy()
    pred[0, 3, 3] = 2
    with pytest.raises(ValueError, match="object id 2"):
        evaluate_sequence(gt, pred, 1)
    with pytest.raises(ObjectIdError):
        evaluate_sequence(gt, np.full_like(gt, 255), 1)
    with pytest.raises(ValueError, match="shapes"):
        evaluate_sequence(gt, pred[:, :3], 1)


# ---------------------------------------------------------------- summary and files


def _per_sequence():
    return {
        "b": {"J": np.array([[1.0, 0.0, 1.0, 1.0, 0.0]]), "F": np.array([[0.5] * 5])},
        "a": {
            "J": np.array([[0.9, 0.7, 0.5, 0.3, 0.1], [1.0, 1.0, 1.0, 1.0, 1.0]]),
            "F": np.array([[0.6, 0.6, 0.6, 0.6, 0.6], [0.0, 0.0, 0.0, 0.0, 0.0]]),
        },
    }


def test_summarise_rows_and_global_means():
    glob, rows = summarise(_per_sequence())
    assert tuple(glob) == GLOBAL_COLUMNS
    assert [r["Sequence"] for r in rows] == ["b_1", "a_1", "a_2"]  # order as given
    # object J means: b_1 .6, a_1 .5, a_2 1 -> J-Mean 2.1/3 = .7; F means .5, .6, 0 -> 1.1/3
    assert glob["J-Mean"] == pytest.approx(0.7, abs=1e-12)
    assert glob["F-Mean"] == pytest.approx(1.1 / 3, abs=1e-12)
    assert glob["J&F-Mean"] == pytest.approx((0.7 + 1.1 / 3) / 2, abs=1e-12)
    # J recall: b_1 3/5, a_1 2/5, a_2 1 -> 2/3; J decay: b_1 (1+0)/2 - (1+0)/2 = 0,
    # a_1 .6, a_2 0 -> .2
    assert glob["J-Recall"] == pytest.approx(2 / 3, abs=1e-12)
    assert glob["J-Decay"] == pytest.approx(0.2, abs=1e-12)
    assert rows[1]["J-Decay"] == pytest.approx(0.6, abs=1e-12)
    assert set(rows[0]) == {"Sequence", *GLOBAL_COLUMNS[1:]}
    with pytest.raises(ValueError):
        summarise({})


def test_write_results_files(tmp_path):
    glob, rows = summarise(_per_sequence())
    rows[2]["F-Decay"] = float("nan")
    out = tmp_path / "res"
    paths = write_results(out, glob, rows, {"git": "abc123", "preset": "crw"})
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths) == [
        "global_results-val.csv", "per-sequence_results-val.csv", "results-val.json",
    ]  # no temporary files left behind

    with open(out / "global_results-val.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall",
                        "F-Decay"]
    assert len(table) == 2 and table[1][1] == "0.700000" and table[1][3] == "0.200000"
    assert all(len(v.split(".")[1]) == 6 for v in table[1])

    text = (out / "per-sequence_results-val.csv").read_text()
    assert text.splitlines() == [
        "Sequence,J-Mean,F-Mean",
        "b_1,0.600000,0.500000",
        "a_1,0.500000,0.600000",
        "a_2,1.000000,0.000000",
    ]

    record = json.loads((out / "results-val.json").read_text())
    assert record["provenance"] == {"git": "abc123", "preset": "crw"}
    assert list(record["global"]) == list(GLOBAL_COLUMNS)
    assert record["global"]["J-Mean"] == pytest.approx(0.7, abs=1e-12)
    assert [r["Sequence"] for r in record["per_object"]] == ["b_1", "a_1", "a_2"]
    assert record["per_object"][2]["F-Decay"] is None  # nan -> null (valid JSON)

    # a second write replaces the files, still without leftovers
    write_results(out, glob, rows[:1], {}, suffix="val")
    assert len(list(out.iterdir())) == 3
    assert len((out / "per-sequence_results-val.csv").read_text().splitlines()) == 2
