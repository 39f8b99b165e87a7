"""JHMDB: reader, heat maps and read-out, propagation on the real video, CLI, skeleton overlay."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch import nn

from timecycle.datasets.jhmdb import LIMBS, N_JOINTS, JhmdbRoot, read_joints, read_video_list
from timecycle.errors import UserError
from timecycle.propagation.keypoints import (
    cells_to_joints,
    draw_heatmaps,
    joints_to_cells,
    keypoint_label,
    propagate_keypoints,
    read_keypoints,
)
from timecycle.propagation.presets import JHMDB_CRW, JHMDB_TIMECYCLE, KEYPOINT_READOUTS
from timecycle.propagation.video import FrameEncoder
from timecycle.visualisation.skeleton import draw_skeleton, joint_colours
from helpers import assert_one_line_error, run_cli

VIDEO = "catch/Goal_Keeping_Tips_catch_f_cm_np1_fr_med_2"


# ---------------------------------------------------------------- heat maps and read-out


def crw_heatmap(u: float, v: float, h: int, w: int, sigma: float = 0.5) -> np.ndarray:
    """A plain loop over CRW's Gaussian window (draw_labelmap_np): corner int(p - 3 sigma),
    end int(p + 3 sigma + 1), ceil(6 sigma + 1) cells, peak at corner + (6 sigma + 1) // 2."""
    out = np.zeros((h, w))
    x0, y0 = int(u - 3 * sigma), int(v - 3 * sigma)
    x1, y1 = int(u + 3 * sigma + 1), int(v + 3 * sigma + 1)
    if x0 >= w or y0 >= h or x1 < 0 or y1 < 0:
        return out
    size = 6 * sigma + 1
    n, c = math.ceil(size), size // 2
    for gy in range(n):
        for gx in range(n):
            x, y = x0 + gx, y0 + gy
            if x < x1 and y < y1 and 0 <= x < w and 0 <= y < h:
                out[y, x] = math.exp(-((gx - c) ** 2 + (gy - c) ** 2) / (2 * sigma**2))
    return out


def test_heatmaps_equal_crw_window_everywhere_including_borders():
    rng = np.random.default_rng(0)
    pts = np.concatenate([
        rng.uniform(-3, 13, (60, 2)),  # in, near and beyond every border
        [[0.0, 0.0], [1.0, 1.0], [1.4, 5.0], [9.6, 6.6], [-1.6, 4.0], [12.4, 3.0], [5.0, 9.99]],
    ])
    maps = draw_heatmaps(torch.tensor(pts), (8, 11), sigma=0.5).numpy()
    for p, m in zip(pts, maps):
        np.testing.assert_allclose(m, crw_heatmap(p[0], p[1], 8, 11), atol=1e-7, err_msg=str(p))
    # sigma 1 (a 7-cell window) follows the same rules.
    maps1 = draw_heatmaps(torch.tensor(pts[:10]), (8, 11), sigma=1.0).numpy()
    for p, m in zip(pts[:10], maps1):
        np.testing.assert_allclose(m, crw_heatmap(p[0], p[1], 8, 11, 1.0), atol=1e-7)


def test_label_has_a_background_channel_where_no_joint_is():
    joints = torch.tensor([[25.0, 13.0], [1e4, 1e4], [float("nan"), 3.0]])  # in, far out, missing
    label = keypoint_label(joints, (240, 320), (40, 40))
    assert label.shape == (4, 40, 40)
    # pos_img (25, 13) -> cell ((25 - 1) / 8, (13 - 1) * 40 / 240) = (3, 2): the peak.
    assert label[1, 2, 3] == 1.0 and label[1].max() == 1.0
    assert label[2].sum() == 0 and label[3].sum() == 0
    assert torch.equal(label[0], (label[1:].sum(0) == 0).float())
    assert label[0].sum() == 40 * 40 - 16  # the window of joint 0 has 4 x 4 cells
    # CRW's truncation towards zero: a joint at cell 1 peaks at cell 2 (int(1 - 1.5) = 0).
    near_edge = keypoint_label(torch.tensor([[9.0, 7.0]]), (240, 320), (40, 40))
    assert near_edge[1, 2, 2] == 1.0 and near_edge[1, 1, 1] < 0.02


def test_pixel_cell_conversions_follow_pos_img_convention():
    joints = torch.tensor([[1.0, 1.0], [9.0, 7.0], [320.0, 240.0]], dtype=torch.float64)
    cells = joints_to_cells(joints, (240, 320), (40, 40))
    np.testing.assert_allclose(cells.numpy(), [[0, 0], [1, 1], [319 / 8, 239 / 6]])
    np.testing.assert_allclose(cells_to_joints(cells, (240, 320), (40, 40)).numpy(), joints.numpy())


def test_read_out_is_the_weighted_mean_of_the_top_k_positions():
    soft = torch.zeros(3, 4, 5)
    soft[1, 1, 2], soft[1, 2, 2], soft[1, 3, 4], soft[1, 0, 0] = 0.6, 0.3, 0.1, 0.05
    soft[0] = 1.0  # the background channel is never read
    cells = read_keypoints(soft, topk=3)
    # top-3 of joint 0: (x, y) = (2, 1), (2, 2), (4, 3) with weights 0.6, 0.3, 0.1.
    np.testing.assert_allclose(cells[0].numpy(), [0.6 * 2 + 0.3 * 2 + 0.1 * 4, 0.6 * 1 + 0.3 * 2 + 0.1 * 3],
                               rtol=1e-6)
    assert torch.isnan(cells[1]).all()  # an empty map: not predicted
    np.testing.assert_allclose(read_keypoints(soft, topk=1)[0].numpy(), [2, 1])


def test_heatmap_round_trip_is_within_a_cell():
    rng = np.random.default_rng(1)
    joints = torch.tensor(rng.uniform(20, 220, (N_JOINTS, 2)))
    for topk in (3, 5):
        back = cells_to_joints(read_keypoints(keypoint_label(joints, (240, 320), (40, 40)), topk).double(),
                               (240, 320), (40, 40))
        err = (back - joints).abs().numpy()
        assert (err[:, 0] <= 8 * 0.75).all() and (err[:, 1] <= 6 * 0.75).all(), err


class CellIdEncoder(nn.Module):
    """An oracle: each 8x8 cell of the test video has a unique colour that encodes its id;
    features are the one-hot of that id, so only the true correspondence has affinity > 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from timecycle.encoder.preprocess import IMAGENET_MEAN, IMAGENET_STD

        rgb = x * IMAGENET_STD.view(1, 3, 1, 1) + IMAGENET_MEAN.view(1, 3, 1, 1)
        cell = nn.functional.avg_pool2d(rgb * 255, 8)
        ids = (cell[:, 0] / 8).round() + 32 * (cell[:, 1] / 8).round()
        return nn.functional.one_hot(ids.long(), 1024).permute(0, 3, 1, 2).float()


def _cell_video(n_frames: int, step: tuple[int, int]) -> np.ndarray:
    """(T, 128, 128, 3): a 16 x 16 window of cells over a larger grid of unique cells; the
    content moves by `step` cells (x, y) per frame."""
    rows, cols = 16 + step[1] * n_frames, 16 + step[0] * n_frames
    ids = np.arange(rows * cols).reshape(rows, cols)
    world = np.stack([ids % 32 * 8, ids // 32 * 8, np.zeros_like(ids)], -1).astype(np.uint8)
    frames = []
    for t in range(n_frames):
        r0, c0 = step[1] * (n_frames - t), step[0] * (n_frames - t)
        frames.append(world[r0:r0 + 16, c0:c0 + 16].repeat(8, 0).repeat(8, 1))
    return np.stack(frames)


@pytest.mark.parametrize("preset", ["crw", "timecycle"])
def test_keypoints_follow_exact_correspondences(preset):
    step = (1, 2)  # cells per frame: 8 px right, 16 px down
    frames = _cell_video(4, step)
    protocol = {"crw": JHMDB_CRW, "timecycle": JHMDB_TIMECYCLE}[preset].replace(size=128)
    rng = np.random.default_rng(2)
    joints0 = rng.uniform(30, 70, (N_JOINTS, 2))  # stay clear of the edge where cells enter
    encoder = FrameEncoder(CellIdEncoder(), protocol, torch.device("cpu"))
    out = list(propagate_keypoints(iter(frames), joints0, encoder, protocol, KEYPOINT_READOUTS[preset]))
    assert len(out) == 3
    shift = 8 * np.array(step, float)
    for t, pred in enumerate(out, start=1):
        err = pred - (joints0 + t * shift)
        assert np.isfinite(pred).all()
        assert np.abs(err).max() <= 6.0, (t, err)  # heat-map quantisation: half a cell + ties
        np.testing.assert_allclose(err.mean(0), (out[0] - joints0 - shift).mean(0), atol=0.6)


# ---------------------------------------------------------------- reader and lists


def _fake_root(tmp_path: Path, names: list[str], n_frames: int = 3) -> Path:
    root = tmp_path / "jhmdb"
    rng = np.random.default_rng(0)
    for name in names:
        (root / "Rename_Images" / name).mkdir(parents=True)
        for t in range(n_frames):
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), np.uint8)).save(
                root / "Rename_Images" / name / f"{t + 1:05d}.png")
        (root / "joint_positions" / name).mkdir(parents=True)
        pos = rng.uniform(5, 20, (2, N_JOINTS, n_frames))
        scipy.io.savemat(root / "joint_positions" / name / "joint_positions.mat", {"pos_img": pos})
    return root


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"this is not a mat file at all, just text" * 4, "cannot read .mat file"),
        ({"pos_world": np.zeros((2, 15, 3))}, "no 'pos_img'"),
        ({"pos_img": np.zeros((2, 14, 3))}, "expected 2 x 15 x T"),
        ({"pos_img": np.zeros((15, 2, 3))}, "expected 2 x 15 x T"),
        ({"pos_img": np.full((2, 15, 3), np.nan)}, "non-finite"),
        ({"pos_img": np.zeros((2, 15, 3))}, "all zeros in every frame"),
        ({"pos_img": np.dstack([np.ones((2, 15, 1)), np.zeros((2, 15, 2))])},
         "all zeros in frame 1 and 1 more"),
        ({"pos_img": np.array(["abc"])}, "not a numeric array"),
    ],
)
def test_bad_joint_files_are_one_line_errors_naming_the_file(tmp_path, content, needle):
    path = tmp_path / "joint_positions.mat"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        scipy.io.savemat(path, content)
    with pytest.raises(UserError) as err:
        read_joints(path)
    assert str(path) in str(err.value) and needle in str(err.value)
    assert "\n" not in str(err.value)


def test_video_lists_in_both_formats(tmp_path):
    root = JhmdbRoot(_fake_root(tmp_path, ["catch/a", "run/b_c", "run/d"]))
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# comment\n"
        "catch/a\n"
        "/other/machine/JHMDB/Rename_Images/run/b_c /other/machine/JHMDB/joint_positions/run/b_c/joint_positions.mat\n"
        "/x/joint_positions/run/d/joint_positions.mat /x/Rename_Images/run/d/\n"
        "\n"
    )
    assert read_video_list(listing) == ["catch/a", "run/b_c", "run/d"]
    assert root.video_names(listing) == ["catch/a", "run/b_c", "run/d"]
    assert root.video_names() == ["catch/a", "run/b_c", "run/d"]  # default: every video
    assert root.video_names("run/d,catch/a") == ["run/d", "catch/a"]
    video = root.video("run/b_c")
    assert [f.name for f in video.frames] == ["00001.png", "00002.png", "00003.png"]
    assert video.joints().shape == (3, N_JOINTS, 2)


def test_missing_videos_are_listed_together(tmp_path):
    root_dir = _fake_root(tmp_path, ["catch/a", "run/b"])
    (root_dir / "joint_positions" / "run" / "b" / "joint_positions.mat").unlink()
    with pytest.raises(UserError) as err:
        JhmdbRoot(root_dir).video_names("catch/a,run/b,catch/zz")
    assert "2 of 3" in str(err.value) and "run/b" in str(err.value) and "catch/zz" in str(err.value)
    with pytest.raises(UserError, match="<class>/<video>"):
        JhmdbRoot(root_dir).video_names("justaname")


# ---------------------------------------------------------------- the real video


def _pck_csv(path: Path) -> dict[str, float]:
    return {r["alpha"]: float(r["PCK"]) for r in csv.DictReader(open(path))}


def straightforward_pck(pred: np.ndarray, gt: np.ndarray, alpha: float) -> float:
    """PCK written out plainly from SPEC 7, loop by loop (no shared code with the package)."""
    right, total = [0] * 15, [0] * 15
    for t in range(1, len(gt)):
        seen = [j for j in range(15) if not np.isnan(pred[t, j]).any()]
        xs, ys = [gt[t, j, 0] for j in seen], [gt[t, j, 1] for j in seen]
        size = 0.6 * math.hypot(max(xs) - min(xs), max(ys) - min(ys))
        for j in seen:
            total[j] += 1
            d = math.hypot(pred[t, j, 0] - gt[t, j, 0], pred[t, j, 1] - gt[t, j, 1])
            right[j] += d <= alpha * size
    return sum(r / n for r, n in zip(right, total) if n) / sum(1 for n in total if n)


@pytest.fixture(scope="module")
def jhmdb_root(shared_data) -> Path:
    root = shared_data / "JHMDB"
    if not (root / "Rename_Images" / VIDEO).is_dir():
        pytest.skip(f"the real JHMDB video is not in {root}")
    return root


def test_identity_on_the_real_video_matches_a_plain_computation(jhmdb_root, tmp_path, capsys):
    out = tmp_path / "identity"
    code, stdout, err = run_cli(capsys, "propagate", "jhmdb", "--root", str(jhmdb_root), "--encoder", "identity",
                                "--out", str(out), "--device", "cpu", "--quiet", "--evaluate")
    assert code == 0, err
    gt = read_joints(jhmdb_root / "joint_positions" / VIDEO / "joint_positions.mat")
    assert gt.shape == (40, N_JOINTS, 2)
    pred = np.load(out / f"{VIDEO}.npy")
    assert pred.shape == (40, N_JOINTS, 2) and pred.dtype == np.float64
    assert (pred == gt[0]).all()  # every frame carries frame 0's joints
    got = _pck_csv(out / "pck.csv")
    assert list(got) == ["0.1", "0.2", "0.3", "0.4", "0.5"]
    for a in (0.1, 0.2, 0.3, 0.4, 0.5):
        assert got[f"{a:g}"] == pytest.approx(straightforward_pck(pred, gt, a), abs=5e-7)
    assert got["0.5"] < 0.2  # the goalkeeper crosses the frame: copying frame 0 fails
    assert "PCK@0.1" in stdout
    prov = json.loads((out / "propagation.json").read_text())
    assert prov["benchmark"] == "jhmdb" and prov["protocol"]["size"] == 320 and prov["readout"]["topk"] == 3


@pytest.mark.slow  # about 7 s alone, 20-40 s on shared cores
def test_random_resnet18_tracks_the_real_video_better_than_identity(jhmdb_root, tmp_path, capsys):
    out = tmp_path / "r18"
    code, _, err = run_cli(capsys, "propagate", "jhmdb", "--root", str(jhmdb_root), "--encoder", "resnet18",
                           "--protocol", "crw", "--out", str(out), "--device", "cpu", "--quiet", "--evaluate")
    assert code == 0, err
    gt = read_joints(jhmdb_root / "joint_positions" / VIDEO / "joint_positions.mat")
    pred = np.load(out / f"{VIDEO}.npy")
    assert (pred[0] == gt[0]).all()
    assert np.isfinite(pred).all()  # every joint starts inside the frame, so all are predicted
    assert (pred[..., 0] > 0).all() and (pred[..., 0] < 322).all() and (pred[..., 1] < 242).all()
    got = _pck_csv(out / "pck.csv")
    identity = straightforward_pck(np.broadcast_to(gt[:1], gt.shape), gt, 0.2)
    assert got["0.2"] > identity + 0.2, (got, identity)
    assert got["0.2"] == pytest.approx(straightforward_pck(pred, gt, 0.2), abs=5e-7)
    prov = json.loads((out / "pck.json").read_text())["provenance"]["propagation"]
    assert prov["encoder"] == "resnet18" and prov["protocol"]["n_context"] == 7


def test_pixel_baseline_with_the_timecycle_preset(jhmdb_root):
    root = JhmdbRoot(jhmdb_root)
    from timecycle.encoder import build_encoder
    from timecycle.propagation.jhmdb import propagate_video

    video = root.video(VIDEO)
    video = dataclasses.replace(video, frames=video.frames[:10])  # TimeCycle's dense weights are slow
    gt = video.joints()[:10]
    encoder = FrameEncoder(build_encoder("pixel"), JHMDB_TIMECYCLE, torch.device("cpu"))
    pred = propagate_video(video, encoder, JHMDB_TIMECYCLE, KEYPOINT_READOUTS["timecycle"], joints=gt)
    assert pred.shape == gt.shape and (pred[0] == gt[0]).all()
    assert straightforward_pck(pred, gt, 0.2) > straightforward_pck(np.broadcast_to(gt[:1], gt.shape), gt, 0.2)


# ---------------------------------------------------------------- CLI errors


def test_cli_errors(tmp_path, capsys):
    root = _fake_root(tmp_path, ["catch/a", "run/b"])
    base = ("propagate", "jhmdb", "--root", str(root), "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet")
    assert_one_line_error(*run_cli(capsys, *base, "--encoder", "identity", "--videos", "catch/a,run/x,run/y")[::2],
                    "2 of 3", "run/x", "run/y")
    assert_one_line_error(*run_cli(capsys, *base, "--protocol", "dino")[::2], "unknown protocol", "crw")
    (root / "joint_positions" / "run" / "b" / "joint_positions.mat").write_bytes(b"garbage" * 30)
    assert_one_line_error(*run_cli(capsys, *base, "--encoder", "pixel")[::2], "run/b/joint_positions.mat")
    assert not (tmp_path / "o" / "catch").exists()  # the .mat files are checked before any work
    code, _, err = run_cli(capsys, "evaluate", "jhmdb", "--root", str(root), "--results", str(tmp_path / "none"),
                           "--videos", "catch/a")
    assert_one_line_error(code, err, "results folder not found")
    frame = root / "Rename_Images" / "catch" / "a" / "00002.png"
    frame.write_bytes(frame.read_bytes()[:100])
    assert_one_line_error(*run_cli(capsys, *base, "--encoder", "pixel", "--videos", "catch/a")[::2], "catch/a/00002.png")
    assert not (tmp_path / "o" / "catch" / "a.npy").exists() and not (tmp_path / "o" / "propagation.json").exists()


def test_results_inside_the_inputs_are_refused(tmp_path, capsys):
    root = _fake_root(tmp_path, ["catch/a"])
    for inside in ("joint_positions", "Rename_Images/catch"):
        assert_one_line_error(*run_cli(capsys, "propagate", "jhmdb", "--root", str(root), "--out",
                                       str(root / inside), "--device", "cpu", "--quiet",
                                       "--encoder", "identity")[::2], "input folder")
    assert not (root / "Rename_Images" / "catch" / "catch").exists()


def test_new_propagation_removes_an_old_evaluation(tmp_path, capsys):
    root = _fake_root(tmp_path, ["catch/a"], n_frames=4)
    out = tmp_path / "o"
    args = ("propagate", "jhmdb", "--root", str(root), "--out", str(out), "--device", "cpu", "--quiet")
    code, stdout, _ = run_cli(capsys, *args, "--encoder", "pixel", "--evaluate")
    assert code == 0 and "propagated 1 video, 4 frames in " in stdout  # "1 videos" before
    assert "(1 video, 3 frames)" in stdout  # scored: the frames after frame 0
    assert (out / "pck.csv").is_file() and (out / "catch" / "a.npy").is_file()
    assert np.load(out / "catch" / "a.npy").shape == (4, N_JOINTS, 2)
    assert run_cli(capsys, *args, "--encoder", "identity")[0] == 0
    assert not (out / "pck.csv").exists() and (out / "propagation.json").is_file()
    assert run_cli(capsys, "evaluate", "jhmdb", "--root", str(root), "--results", str(out))[0] == 0
    assert (out / "pck_per_video.csv").is_file()


def test_evaluate_takes_the_root_and_videos_it_was_propagated_with(tmp_path, capsys):
    root = _fake_root(tmp_path, ["catch/a", "catch/b"], n_frames=4)
    out = tmp_path / "o"
    assert run_cli(capsys, "propagate", "jhmdb", "--root", str(root), "--videos", "catch/b",
                   "--out", str(out), "--device", "cpu", "--quiet", "--encoder", "pixel")[0] == 0
    code, stdout, err = run_cli(capsys, "evaluate", "jhmdb", "--results", str(out))
    assert code == 0 and "(1 video, " in stdout, err
    assert f"records: --root {root.resolve()}, --videos catch/b" in err


def test_a_video_with_nothing_scored_is_named_not_printed_as_nan(tmp_path, capsys):
    root = _fake_root(tmp_path, ["catch/a", "catch/b"], n_frames=4)
    out = tmp_path / "o"
    assert run_cli(capsys, "propagate", "jhmdb", "--root", str(root), "--out", str(out), "--device", "cpu",
                   "--quiet", "--encoder", "identity")[0] == 0
    pred = np.load(out / "catch" / "b.npy")
    pred[1:] = np.nan  # no joint predicted after frame 0: nothing of this video is scored
    np.save(out / "catch" / "b.npy", pred)
    code, stdout, err = run_cli(capsys, "evaluate", "jhmdb", "--results", str(out))
    assert code == 0, err
    rows = {line.split()[0]: line for line in stdout.splitlines() if line.startswith("  ")}
    assert "no joint scored after frame 0" in rows["catch/b"] and "PCK@0.1" in rows["catch/a"]
    assert "nan" not in stdout.lower()


# ---------------------------------------------------------------- skeleton overlay


def test_skeleton_is_drawn_with_limb_colours_and_skips_missing_joints():
    frame = np.zeros((60, 80, 3), np.uint8)
    joints = np.full((N_JOINTS, 2), np.nan)
    joints[0] = (41, 11)  # neck, 1-based: pixel (40, 10)
    joints[1] = (41, 41)  # belly: the neck-belly limb is vertical
    joints[2] = (11, 51)  # face: its limb to the neck is drawn too
    image = draw_skeleton(frame, joints, thickness=3, radius=1)
    assert frame.sum() == 0  # the input is not modified
    colours = joint_colours()
    assert (image[25, 40] == colours[1]).all()  # mid-limb pixel, colour of the child joint
    assert (image[30, 25] == colours[2]).all()  # on the face-neck limb
    assert image[:, 60:].sum() == 0  # nothing on the right: no limb to a missing joint
    only_neck = draw_skeleton(frame, np.where(np.arange(N_JOINTS)[:, None] == 0, joints, np.nan))
    assert only_neck[25, 40].sum() == 0 and only_neck[10, 40].sum() > 0  # a dot, no limbs
    assert len(LIMBS) == N_JOINTS - 1 and {c for c, _ in LIMBS} == set(range(1, N_JOINTS))

