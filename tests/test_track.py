"""`timecycle track`: a first-frame mask and points followed through a user's video.

The generated video is a textured square that moves by a known whole-pixel shift per frame over
a textured background, so every frame's true mask, point positions and motion are known.
"""

from __future__ import annotations

import csv
import json
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import assert_one_line_error, run_cli
from timecycle.cli import main
from timecycle.track.inputs import FrameStream

T, H, W = 10, 128, 192  # about 2 s with a random ResNet-18 on one core
SIZE, X0, Y0, SHIFT = 48, 16, 40, (3, -2)  # the square's side, frame-0 corner, (dx, dy) per frame
POINTS = np.array([[X0 + 24.0, Y0 + 24.0], [X0 + 8.0, Y0 + 8.0], [X0 + 39.0, Y0 + 39.0]])


@pytest.fixture(scope="module", autouse=True)
def without_builtin_weights(tmp_path_factory):
    """The accuracy bounds here were set with the random network; the package's built-in
    weights (the default where installed) are checked on their own below."""
    from timecycle.encoder import builtin

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtin, "FOLDER", tmp_path_factory.mktemp("no-builtin"))
        yield


def _blocks(rng: np.random.Generator, h: int, w: int, block: int = 4) -> np.ndarray:
    """(h, w, 3) uint8 random colours on block x block cells."""
    small = rng.integers(0, 256, (h // block + 1, w // block + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, block, 0), block, 1)[:h, :w]


def square_video(n_frames: int = T, h: int = H, w: int = W, shift=SHIFT, size: int = SIZE,
                 corner: tuple[int, int] = (X0, Y0), seed: int = 0):
    """(T, H, W, 3) uint8 frames and (T, H, W) uint8 masks (1 = the square) of a bright
    textured square moving by `shift` pixels per frame over a darker textured background."""
    rng = np.random.default_rng(seed)
    background = _blocks(rng, h, w) // 2
    square = 128 + _blocks(rng, size, size) // 2
    frames = np.repeat(background[None], n_frames, 0)
    masks = np.zeros((n_frames, h, w), np.uint8)
    for t in range(n_frames):
        x, y = corner[0] + shift[0] * t, corner[1] + shift[1] * t
        frames[t, y:y + size, x:x + size] = square
        masks[t, y:y + size, x:x + size] = 1
    return frames, masks


def _write_points(path: Path, xy: np.ndarray, ids=("centre", "top-left", "bottom-right")) -> Path:
    path.write_text("id,x,y\n" + "".join(f"{i},{x},{y}\n" for i, (x, y) in zip(ids, xy)))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A frame folder of `square_video`, its first mask and points (read-only for tests)."""
    root = tmp_path_factory.mktemp("clip")
    frames, masks = square_video()
    (root / "frames").mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(root / "frames" / f"{t:05d}.png")
    Image.fromarray(masks[0], mode="L").save(root / "mask.png")
    _write_points(root / "points.csv", POINTS)
    return root


@pytest.fixture(scope="module")
def tracked(clip, tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("tracked") / "out"
    code = main(["track", str(clip / "frames"), "--mask", str(clip / "mask.png"), "--points",
                 str(clip / "points.csv"), "--flow", "--encoder", "resnet18", "--out", str(out),
                 "--device", "cpu", "--quiet"])
    assert code == 0
    return out


def test_points_land_within_a_cell_of_the_truth(tracked):
    tracks = np.load(tracked / "tracks.npy")
    assert tracks.dtype == np.float32 and tracks.shape == (T, 3, 2)
    assert np.array_equal(tracks[0], POINTS.astype(np.float32))  # frame 0 is the input
    truth = POINTS[None] + np.arange(T)[:, None, None] * np.array(SHIFT)
    err = np.linalg.norm(tracks - truth, axis=-1)
    assert err.max() <= 8.0, err.round(1)  # one stride-8 feature cell
    # They moved: 30 px right and 20 px up by the last frame, far beyond the tolerance.
    assert np.linalg.norm(tracks[-1] - POINTS, axis=-1).min() > 25


def test_tracks_csv_lists_every_frame_and_point(tracked):
    rows = list(csv.DictReader(open(tracked / "tracks.csv")))
    assert list(rows[0]) == ["frame", "id", "x", "y", "score"]
    assert len(rows) == 3 * T and [r["id"] for r in rows[:3]] == ["centre", "top-left", "bottom-right"]
    tracks = np.load(tracked / "tracks.npy")
    last = rows[-1]
    assert int(last["frame"]) == T - 1
    assert float(last["x"]) == pytest.approx(tracks[-1, 2, 0], abs=1e-3)
    assert all(0 < float(r["score"]) <= 1 for r in rows)


def test_masks_follow_the_square(tracked):
    _, masks = square_video()
    files = sorted((tracked / "masks").iterdir())
    assert [f.name for f in files] == [f"{t:05d}.png" for t in range(T)]
    for t, f in enumerate(files):
        img = Image.open(f)
        assert img.mode == "P" and img.size == (W, H)
        got = np.array(img)
        if t == 0:
            assert np.array_equal(got, masks[0])
        iou = ((got == 1) & (masks[t] == 1)).sum() / ((got == 1) | (masks[t] == 1)).sum()
        assert iou > 0.5, (t, iou)
    # The mask moved with the square: its last frame overlaps the first frame's square little.
    last = np.array(Image.open(files[-1])) == 1
    assert (last & (masks[0] == 1)).sum() < 0.5 * last.sum()


def test_flow_recovers_the_shift(tracked):
    flow = np.load(tracked / "flow.npy")
    assert flow.dtype == np.float16 and flow.shape == (T, 2, H // 8, W // 8)
    assert not flow[0].any()  # frame 0 comes from itself
    t = T - 1
    x, y = X0 + SHIFT[0] * t, Y0 + SHIFT[1] * t
    inner = flow[t, :, (y + 8) // 8:(y + SIZE - 8) // 8, (x + 8) // 8:(x + SIZE - 8) // 8]
    dx, dy = np.median(inner[0].astype(np.float32)), np.median(inner[1].astype(np.float32))
    assert dx > 0 and dy < 0  # right and up, as the square moved
    assert abs(dx - SHIFT[0] * t) <= 8 and abs(dy - SHIFT[1] * t) <= 8, (dx, dy)
    assert (tracked / "flow.png").is_file()


def test_the_default_is_the_built_in_weights_where_installed(clip, tmp_path, capsys,
                                                             without_builtin_weights):
    from timecycle.encoder import builtin

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtin, "FOLDER", Path(builtin.__file__).parent / "builtin")  # as shipped
        code, _, err = run_cli(capsys, "track", str(clip / "frames"), "--mask",
                               str(clip / "mask.png"), "--encoder", "resnet18", "--out",
                               str(tmp_path / "out"), "--device", "cpu", "--quiet")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "track.json").read_text())
    assert record["weights"]["builtin"] is True and record["weights"]["padding_mode"] == "reflect"
    assert any("built-in" in n for n in record["notes"])
    assert not any("randomly initialised" in n for n in record["notes"])


def test_page_record_and_overlay(tracked):
    record = json.loads((tracked / "track.json").read_text())
    assert record["frames"] == T and record["width"] == W and record["height"] == H
    assert record["command"].startswith("timecycle track ") and "--flow" in record["command"]
    assert record["encoder"] == "resnet18" and record["protocol"]["name"] == "crw"
    assert record["point_ids"] == ["centre", "top-left", "bottom-right"]
    assert any("randomly initialised" in n for n in record["notes"])  # no built-in weights here
    page = (tracked / "index.html").read_text()
    overlay = [n for n in ("overlay.mp4", "overlay.webp") if (tracked / n).is_file()]
    assert len(overlay) == 1 and f'src="{overlay[0]}"' in page and 'src="flow.png"' in page
    assert "timecycle track " in page and "Provenance" in page
    assert not list(tracked.glob(".*"))  # no temporary or partial files left


def test_bf16_features_track_as_fp32_does(clip, tracked, tmp_path, capsys, one_thread):
    out = tmp_path / "bf16"
    code, _, err = run_cli(capsys, "track", str(clip / "frames"), "--points",
                           str(clip / "points.csv"), "--encoder", "resnet18", "--out", str(out),
                           "--device", "cpu", "--precision", "bf16", "--quiet")
    assert code == 0, err
    assert json.loads((tracked / "track.json").read_text())["precision"] == "fp32"
    assert json.loads((out / "track.json").read_text())["precision"] == "bf16"
    bf16, fp32 = np.load(out / "tracks.npy"), np.load(tracked / "tracks.npy")
    # The same cells, give or take one (8 px), at every frame.
    assert np.abs(bf16 - fp32).max() <= 8.0
    truth = POINTS[None] + np.arange(T)[:, None, None] * np.array(SHIFT)
    assert np.linalg.norm(bf16 - truth, axis=-1).max() <= 8.0
    # pixel has no network: bf16 leaves it fp32, and says so
    for precision in ("fp32", "bf16"):
        code, _, err = run_cli(capsys, "track", str(clip / "frames"), "--points",
                               str(clip / "points.csv"), "--encoder", "pixel", "--out",
                               str(tmp_path / precision), "--device", "cpu", "--precision",
                               precision, "--quiet")
        assert code == 0, err
        record = json.loads((tmp_path / precision / "track.json").read_text())
        assert record["precision"] == "fp32" and not record["notes"]
    assert np.array_equal(np.load(tmp_path / "fp32/tracks.npy"),
                          np.load(tmp_path / "bf16/tracks.npy"))


def test_mp4_input_gives_every_frame(tmp_path, capsys, one_thread):
    from timecycle.datasets.synthetic import write_mp4

    frames, masks = square_video(6, 64, 96, (2, 1), size=24, corner=(8, 8))
    write_mp4(tmp_path / "clip.mp4", frames)
    decoded = list(FrameStream(tmp_path / "clip.mp4"))
    assert len(decoded) == 6 and decoded[0].shape == (64, 96, 3)
    assert np.abs(decoded[3].astype(int) - frames[3]).mean() < 8  # lossy, but the same pictures
    Image.fromarray(masks[0], mode="L").save(tmp_path / "mask.png")
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "track", str(tmp_path / "clip.mp4"), "--mask", str(tmp_path / "mask.png"),
                                "--encoder", "pixel", "--out", str(out), "--quiet")
    assert code == 0, err
    assert len(list((out / "masks").glob("*.png"))) == 6 and "tracked 6 frames" in stdout
    assert not (out / "tracks.npy").exists() and not (out / "flow.npy").exists()


def test_a_truncated_mkv_is_refused_not_shortened(tmp_path, capsys, one_thread):
    # mkv stores no frame count, only a duration: `track` read none and tracked the frames that
    # decoded (12 of 18) with exit 0, where `visualize` refused the same file.
    import av

    frames, masks = square_video(18, 64, 96, (2, 1), size=24, corner=(8, 8))
    whole = tmp_path / "clip.mkv"
    with av.open(str(whole), mode="w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    Image.fromarray(masks[0], mode="L").save(tmp_path / "mask.png")
    argv = ["--mask", str(tmp_path / "mask.png"), "--encoder", "pixel", "--quiet"]
    code, stdout, err = run_cli(capsys, "track", str(whole), *argv, "--out", str(tmp_path / "a"))
    assert code == 0 and "tracked 18 frames" in stdout, err
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    code, _, err = run_cli(capsys, "track", str(cut), *argv, "--out", str(tmp_path / "b"))
    assert_one_line_error(code, err, "cut.mkv", "of the 18 frames its header declares")
    assert not (tmp_path / "b").exists()


class _WatchedStream:
    """A long generated video whose frames are watched: `most` is the largest number of frames
    alive at once while it is read."""

    def __init__(self, n_frames: int, h: int = 48, w: int = 64):
        self.n, self.h, self.w = n_frames, h, w
        self.alive: list[weakref.ref] = []
        self.most = 0
        self.texture = np.random.default_rng(0).integers(0, 256, (h, w + n_frames, 3), dtype=np.uint8)

    def _frame(self, t: int) -> np.ndarray:
        return self.texture[:, t:t + self.w].copy()  # content moving left by 1 px per frame

    def first(self) -> np.ndarray:
        return self._frame(0)

    def rate(self) -> None:
        return None

    def __iter__(self):
        for t in range(self.n):
            frame = self._frame(t)
            self.alive = [r for r in self.alive if r() is not None]
            self.alive.append(weakref.ref(frame))
            self.most = max(self.most, len(self.alive))
            yield frame


def test_frames_held_are_bounded_whatever_the_length(tmp_path, monkeypatch, one_thread):
    import timecycle.track.run as run

    streams = []

    def watched(video):
        streams.append(_WatchedStream(80))
        return streams[-1]

    monkeypatch.setattr(run, "open_frames", watched)
    (tmp_path / "v").mkdir()
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 10:30] = 1
    Image.fromarray(mask, mode="L").save(tmp_path / "mask.png")
    _write_points(tmp_path / "p.csv", np.array([[20.0, 20.0]]), ids=("a",))
    code = main(["track", str(tmp_path / "v"), "--mask", str(tmp_path / "mask.png"), "--points",
                 str(tmp_path / "p.csv"), "--flow", "--encoder", "pixel", "--out",
                 str(tmp_path / "out"), "--quiet"])
    assert code == 0
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 80
    assert np.load(tmp_path / "out" / "flow.npy").shape[0] == 80
    # Read-ahead (8) + a batch (4) + the frame in hand, not the 80 frames of the video.
    assert streams[-1].most <= 16, streams[-1].most


# ------------------------------------------------------------------------------- bad input


def _rgb_mask(path: Path) -> None:
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)


BAD = {
    "mask of the wrong size": (lambda d: Image.fromarray(np.ones((H // 2, W), np.uint8), mode="L").save(d / "m.png"),
                               ["--mask", "{d}/m.png"], ["m.png", "mask is 192x64"]),
    "mask with no object": (lambda d: Image.fromarray(np.zeros((H, W), np.uint8), mode="L").save(d / "m.png"),
                            ["--mask", "{d}/m.png"], ["m.png", "no object"]),
    "RGB mask": (lambda d: _rgb_mask(d / "m.png"), ["--mask", "{d}/m.png"], ["m.png", "mode RGB"]),
    "point outside the frame": (lambda d: _write_points(d / "p.csv", np.array([[10.0, 10.0], [W + 1.0, 5.0]]), ("a", "b")),
                                ["--points", "{d}/p.csv"], ["p.csv", "'b'", "outside"]),
    "CSV without the header": (lambda d: (d / "p.csv").write_text("a,10,10\n"),
                               ["--points", "{d}/p.csv"], ["p.csv", "header id,x,y"]),
    "CSV with only the header": (lambda d: (d / "p.csv").write_text("id,x,y\n"),
                                 ["--points", "{d}/p.csv"], ["p.csv", "no point"]),
    "nothing to track": (lambda d: None, [], ["--mask, --points or both"]),
    "unknown protocol": (lambda d: _write_points(d / "p.csv", POINTS[:1], ("a",)),
                         ["--points", "{d}/p.csv", "--protocol", "nope"], ["unknown protocol 'nope'"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, clip, tmp_path, capsys):
    make, extra, needles = BAD[case]
    make(tmp_path)
    out = tmp_path / "out"
    argv = ["track", str(clip / "frames"), *[a.format(d=tmp_path) for a in extra], "--encoder",
            "pixel", "--out", str(out), "--quiet"]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["empty folder", "not a video", "empty video file", "missing"])
def test_empty_or_unreadable_video(kind, clip, tmp_path, capsys):
    video = tmp_path / "video"
    if kind == "empty folder":
        video.mkdir()
    elif kind == "not a video":
        video = tmp_path / "video.mp4"
        video.write_bytes(b"this is not an mp4 file" * 50)
    elif kind == "empty video file":
        video = tmp_path / "video.mkv"
        video.write_bytes(b"")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "track", str(video), "--mask", str(clip / "mask.png"), "--encoder",
                           "pixel", "--out", str(out), "--quiet")
    assert_one_line_error(code, err, video.name)
    assert not out.exists()


def test_a_frame_broken_mid_video_leaves_an_existing_folder_as_it_was(clip, tmp_path, capsys):
    frames = tmp_path / "frames"
    shutil.copytree(clip / "frames", frames)
    (frames / f"{T - 2:05d}.png").write_bytes(b"truncated")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "track", str(frames), "--mask", str(clip / "mask.png"), "--points",
                           str(clip / "points.csv"), "--flow", "--encoder", "pixel", "--out", str(out),
                           "--quiet")
    assert_one_line_error(code, err, f"{T - 2:05d}.png")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


# ------------------------------------------------------------------------------- pieces


def test_flow_colours_follow_the_wheel():
    from timecycle.visualisation.flow import flow_to_rgb

    flow = np.zeros((2, 1, 4), np.float32)
    flow[:, 0, 1] = (1, 0)  # right
    flow[:, 0, 2] = (-1, 0)  # left
    flow[:, 0, 3] = (np.nan, 0)
    rgb = flow_to_rgb(flow).astype(int)
    assert (rgb[0, 0] == 255).all()  # no motion: white
    assert rgb[0, 1, 0] == 255 and rgb[0, 1, 1] < 60  # right: red
    assert rgb[0, 2, 2] > 200 and rgb[0, 2, 0] < 60  # left: the opposite side, cyan-blue
    assert (rgb[0, 3] == 0).all()  # not a vector: black


def test_npy_stream_round_trips(tmp_path):
    from timecycle.track.outputs import NpyStream

    items = np.random.default_rng(0).standard_normal((5, 2, 3, 4)).astype(np.float16)
    stream = NpyStream(tmp_path / "a.npy", (2, 3, 4))
    for item in items:
        stream.add(item)
    assert not (tmp_path / "a.npy").exists()  # appears only when complete
    stream.close()
    assert np.array_equal(np.load(tmp_path / "a.npy"), items)


# ------------------------------------------------------------------------------- real data


@pytest.mark.slow  # two 12-frame runs of a random ResNet-18 at 320x320
def test_jhmdb_joints_as_points_match_propagate_jhmdb(shared_data, tmp_path, capsys, one_thread):
    import dataclasses

    import torch

    from timecycle.datasets.jhmdb import JhmdbRoot
    from timecycle.encoder import build_encoder
    from timecycle.propagation.jhmdb import propagate_video
    from timecycle.propagation.presets import JHMDB_CRW, KEYPOINT_READOUTS
    from timecycle.propagation.video import FrameEncoder

    name = "catch/Goal_Keeping_Tips_catch_f_cm_np1_fr_med_2"
    if not (shared_data / "JHMDB" / "Rename_Images" / name).is_dir():
        pytest.skip(f"the real JHMDB video {name} is not in {shared_data / 'JHMDB'}")
    video = JhmdbRoot(shared_data / "JHMDB").video(name)
    video = dataclasses.replace(video, frames=video.frames[:12])
    gt = video.joints()[:12]
    encoder = FrameEncoder(build_encoder("resnet18", seed=0), JHMDB_CRW, torch.device("cpu"))
    expected = propagate_video(video, encoder, JHMDB_CRW, KEYPOINT_READOUTS["crw"], joints=gt)

    frames = tmp_path / "frames"
    frames.mkdir()
    for f in video.frames:
        shutil.copy(f, frames / f.name)
    h, w = np.asarray(Image.open(video.frames[0])).shape[:2]
    xy = gt[0] - 1.0  # pos_img is 1-based; track's pixels are 0-based
    inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= w - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= h - 0.5)
    assert inside.sum() >= 10
    _write_points(tmp_path / "joints.csv", xy[inside], [f"j{j}" for j in np.flatnonzero(inside)])
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "track", str(frames), "--points", str(tmp_path / "joints.csv"),
                           "--protocol", "jhmdb-crw", "--encoder", "resnet18", "--out", str(out),
                           "--device", "cpu", "--quiet")
    assert code == 0, err
    got = np.load(out / "tracks.npy")
    assert got.shape == (12, inside.sum(), 2)
    np.testing.assert_allclose(got, (expected[:, inside] - 1.0).astype(np.float32), atol=1e-3)


def test_a_vit_tracks_on_its_patch_grid(clip, tmp_path, capsys, one_thread):
    # DINO's ViT-S/16: the flow has a cell per 16-pixel patch, and points map through it.
    out = tmp_path / "vit"
    code, _, err = run_cli(capsys, "track", str(clip / "frames"), "--mask", str(clip / "mask.png"),
                           "--points", str(clip / "points.csv"), "--flow", "--encoder", "vit-s16",
                           "--out", str(out), "--device", "cpu", "--quiet")
    assert code == 0, err
    assert np.load(out / "flow.npy").shape == (T, 2, H // 16, W // 16)
    tracks = np.load(out / "tracks.npy")
    assert tracks.shape == (T, 3, 2) and np.array_equal(tracks[0], POINTS.astype(np.float32))
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == T and Image.open(masks[-1]).size == (W, H)
