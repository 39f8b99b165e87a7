"""The synthetic video generator: determinism, exact masks, occlusion, motion and the writers."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from timecycle.datasets.io import read_frame, read_mask
from timecycle.datasets.synthetic import (
    render_sequence,
    translating_texture_video,
    write_davis_root,
    write_mp4,
    write_training_videos,
)

H, W = 64, 96  # small enough to keep every test well under a second


def test_same_seed_same_arrays_and_different_seed_differs():
    f1, m1 = render_sequence(3, 4, H, W, 2)
    f2, m2 = render_sequence(3, 4, H, W, 2)
    f3, m3 = render_sequence(4, 4, H, W, 2)
    assert np.array_equal(f1, f2) and np.array_equal(m1, m2)
    assert not np.array_equal(f1, f3) and not np.array_equal(m1, m3)


@pytest.mark.parametrize("n_objects", [0, 1, 3])
def test_shapes_dtypes_and_ids(n_objects):
    frames, masks, amodal = render_sequence(1, 5, H, W, n_objects, return_amodal=True)
    assert frames.shape == (5, H, W, 3) and frames.dtype == np.uint8
    assert masks.shape == (5, H, W) and masks.dtype == np.uint8
    assert amodal.shape == (5, n_objects, H, W) and amodal.dtype == bool
    assert set(np.unique(masks[0]).tolist()) == set(range(n_objects + 1))
    for k in range(1, n_objects + 1):
        assert (masks[0] == k).sum() >= 0.01 * H * W  # visible with a real area, not a sliver


@pytest.mark.parametrize("seed", range(6))
def test_every_object_visible_in_frame_zero(seed):
    masks = render_sequence(seed, 1, 96, 160, 3)[1]
    areas = np.bincount(masks[0].ravel(), minlength=4)
    assert len(areas) == 4 and (areas[1:] >= 0.01 * 96 * 160).all()


def test_occlusion_happens_and_follows_a_fixed_depth_order():
    occluded_somewhere = False
    for seed in range(6):
        _, masks, amodal = render_sequence(seed, 16, 96, 160, 3, return_amodal=True)
        covers = np.zeros((4, 4), bool)  # covers[j, k]: object j was drawn over object k
        for k in range(1, 4):
            whole = amodal[:, k - 1]
            assert not (masks == k)[~whole].any()  # the visible mask lies inside the silhouette
            hidden = whole & (masks != k)
            assert (masks[hidden] != 0).all()  # only another object can hide it, not background
            covers[np.unique(masks[hidden]), k] = True
            occluded_somewhere |= hidden.sum(axis=(1, 2)).max() > 50
        assert not (covers & covers.T).any()  # never both j over k and k over j
    assert occluded_somewhere


def test_objects_move_and_frames_change():
    frames, masks = render_sequence(2, 12, 96, 160, 3)
    ys, xs = np.mgrid[0:96, 0:160]
    for k in (1, 2, 3):
        sel = masks == k
        cy = (sel * ys).sum(axis=(1, 2)) / sel.sum(axis=(1, 2))
        cx = (sel * xs).sum(axis=(1, 2)) / sel.sum(axis=(1, 2))
        assert np.hypot(cy - cy[0], cx - cx[0]).max() > 5.0
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 10.0


def test_translating_texture_integer_velocity_is_an_exact_shift():
    vx, vy = 3, -2
    video = translating_texture_video(0, 5, H, W, velocity=(vx, vy))
    assert video.shape == (5, H, W, 3) and video.dtype == np.uint8
    for t in range(4):
        # frame[t + 1][y + vy, x + vx] == frame[t][y, x] on the overlap
        before = video[t][max(0, -vy) : H - max(0, vy), max(0, -vx) : W - max(0, vx)]
        after = video[t + 1][max(0, vy) : H + min(0, vy), max(0, vx) : W + min(0, vx)]
        assert np.abs(after.astype(int) - before).max() <= 1
        assert np.abs(video[t + 1].astype(int) - video[t]).mean() > 5.0  # it does move


def test_translating_texture_half_pixel_velocity_shifts_one_pixel_in_two_frames():
    video = translating_texture_video(1, 3, H, W, velocity=(0.5, 0.0)).astype(int)
    assert np.abs(video[2][:, 1:] - video[0][:, :-1]).max() <= 1
    assert np.abs(video[1][:, 1:] - video[0][:, :-1]).max() > 1  # half a pixel is not a whole one


def test_write_davis_root_layout_and_masks_read_back(tmp_path):
    names = write_davis_root(tmp_path, n_frames=4, height=H, width=W)
    assert names == ["synth00", "synth01", "synth02"]
    assert (tmp_path / "ImageSets/2017/val.txt").read_text().split() == names
    lengths, max_ids = [], []
    for name in names:
        pngs = sorted((tmp_path / "Annotations/480p" / name).glob("*.png"))
        jpgs = sorted((tmp_path / "JPEGImages/480p" / name).glob("*.jpg"))
        expected = [f"{t:05d}" for t in range(len(pngs))]
        assert [p.stem for p in pngs] == [p.stem for p in jpgs] == expected
        assert read_frame(jpgs[0]).shape == (H, W, 3)
        lengths.append(len(pngs))
        max_ids.append(int(read_mask(pngs[0]).max()))
    assert max_ids == [1, 2, 3] and lengths == [4, 5, 6]


def test_write_davis_root_mapping_matches_render_sequence(tmp_path):
    spec = {"cars": {"seed": 5, "n_objects": 2, "n_frames": 3, "height": 48, "width": 80}}
    assert write_davis_root(tmp_path, spec, height=H, width=W) == ["cars"]
    frames, masks = render_sequence(5, 3, 48, 80, 2)
    for t in range(3):
        png = tmp_path / f"Annotations/480p/cars/{t:05d}.png"
        with Image.open(png) as img:
            assert img.mode == "P"
        assert np.array_equal(read_mask(png), masks[t])
        jpg = read_frame(tmp_path / f"JPEGImages/480p/cars/{t:05d}.jpg").astype(int)
        assert np.abs(jpg - frames[t]).mean() < 3.0  # JPEG at quality 95, 4:4:4


def _decode(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_write_mp4_round_trips_through_pyav(tmp_path):
    video = translating_texture_video(2, 8, H, W, velocity=(1.5, 0.5))
    write_mp4(tmp_path / "clip.mp4", video)
    decoded = _decode(tmp_path / "clip.mp4")
    assert len(decoded) == 8 and decoded[0].shape == (H, W, 3)
    assert np.abs(np.stack(decoded).astype(int) - video).mean() < 6.0
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away


def test_write_mp4_refuses_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "odd.mp4", np.zeros((2, 33, 48, 3), np.uint8))
    assert not (tmp_path / "odd.mp4").exists()


@pytest.mark.parametrize("kind", ["scene", "translating"])
def test_write_training_videos_frames_and_mp4(tmp_path, kind):
    size = {"n_frames": 5, "height": H, "width": W}
    names = write_training_videos(tmp_path / "f", 2, seed=0, kind=kind, **size)
    assert names == ["video000", "video001"]
    for name in names:
        assert len(list((tmp_path / "f" / name).glob("*.jpg"))) == 5
    first = read_frame(tmp_path / "f/video000/00000.jpg").astype(int)
    assert np.abs(read_frame(tmp_path / "f/video000/00004.jpg").astype(int) - first).mean() > 1.0
    write_training_videos(tmp_path / "m", 2, seed=0, fmt="mp4", kind=kind, **size)
    decoded = _decode(tmp_path / "m/video001.mp4")
    assert len(decoded) == 5 and decoded[0].shape == (H, W, 3)


def test_write_training_videos_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="fmt"):
        write_training_videos(tmp_path, 1, fmt="avi")
