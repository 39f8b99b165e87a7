"""Training clips, the resumable sampler and the DataLoader (SPEC 4-5)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from timecycle.data import clips as clips_mod
from timecycle.data.clips import (
    ClipConfig,
    ClipDataset,
    clip_offsets,
    cut_patch,
    patch_theta,
    resample_step,
    resampled_length,
    to_source,
)
from timecycle.data.index import VideoRecord, build_index
from timecycle.data.sampler import ResumableSampler, make_loader
from timecycle.data.video import BadVideoWarning
from timecycle.encoder.preprocess import IMAGENET_MEAN, IMAGENET_STD
from timecycle.errors import UserError

# Small clips keep the tests fast; the geometry is the paper's at 1/5 scale (crop 48, patch 16).
SMALL = dict(short_side=64, crop=48, patch=16, fps=None)


def noise_frames(n, size=(80, 64), seed=0, moving=True):
    """(n, H, W, 3) uint8 textured frames; with `moving`, the texture shifts 1 px per frame."""
    w, h = size
    base = np.random.default_rng(seed).integers(0, 256, (h, w + n, 3), dtype=np.uint8)
    return np.stack([base[:, i : i + w] if moving else base[:, :w] for i in range(n)])


def write_folder(folder, frames):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}.png")
    return folder


def write_mp4(path, frames, fps=24):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "8"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


@pytest.fixture(scope="module")
def data_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_folder(root / "folder", noise_frames(30))
    write_mp4(root / "clip.mp4", noise_frames(40, seed=1))
    return build_index(root)


def test_offsets_full_short_and_too_short():
    cfg = ClipConfig()
    assert clip_offsets(18, cfg).tolist() == [0, 2, 4, 6, 15, 17]  # SPEC 5 layout + motion
    for n in range(6, 18):  # proportionally smaller gap, frames distinct and inside the video
        off = clip_offsets(n, cfg)
        assert len(off) == 6 and off[0] == 0 and off[-1] <= n - 1
        assert np.all(np.diff(off) >= 1)
    assert clip_offsets(12, cfg)[4] == 9  # target at floor(15 * 11/17)
    assert clip_offsets(5, cfg) is None


def test_fps_resampling_picks_expected_source_frames():
    step = resample_step(30.0, 12.0)
    assert step == 2.5
    assert to_source(np.arange(7), step).tolist() == [0, 2, 5, 7, 10, 12, 15]
    assert resampled_length(300, step) == 120 and to_source([119], step)[0] == 297
    assert to_source(np.arange(5), resample_step(30000 / 1001, 12.0)).tolist() == [0, 2, 4, 7, 9]
    assert resample_step(10.0, 12.0) == 1.0  # never upsample (it would repeat frames)
    assert resample_step(None, 12.0) == resample_step(30.0, None) == 1.0


def test_dataset_reads_the_resampled_frames(monkeypatch):
    asked = []

    def fake_read(path, kind, indices, short_side, threads):
        asked.append(np.asarray(indices).tolist())
        return np.zeros((len(indices), 64, 64, 3), np.uint8)

    monkeypatch.setattr(clips_mod, "read_frames", fake_read)
    rec = VideoRecord("v.mp4", "video", 300, 30.0, 64, 64, 0, 0)
    ds = ClipDataset([rec], ClipConfig(**{**SMALL, "fps": 12.0}), seed=3)
    for i in range(5):
        ds[i]
    for got in asked:  # SPEC 5 offsets at 12 fps, mapped to 30 fps source frames
        s = math.ceil(got[0] / 2.5)
        assert got == to_source(s + np.array([0, 2, 4, 6, 15, 17]), 2.5).tolist()
        assert got[-1] <= 299
    assert len({tuple(a) for a in asked}) > 1


def test_sample_shapes_and_dtypes(data_index):
    ds = ClipDataset(data_index, ClipConfig(**SMALL), seed=0)
    assert len(ds) == 2
    for i in range(2):
        s = ds[i]
        assert s["frames"].shape == (5, 3, 48, 48) and s["frames"].dtype == torch.float32
        assert s["patch"].shape == (3, 16, 16) and s["patch"].dtype == torch.float32
        assert s["theta_gt"].shape == (2, 3) and s["theta_gt"].dtype == torch.float32
        assert s["index"] == i and s["retries"] == 0
    assert {ds[i]["video_index"] for i in range(2)} == {0, 1}  # one epoch visits each video


def test_same_seed_and_index_same_sample_other_index_differs(data_index):
    a = ClipDataset(data_index, ClipConfig(**SMALL), seed=7)
    b = ClipDataset(data_index, ClipConfig(**SMALL), seed=7)
    for i in (0, 5, 123):
        x, y = a[i], b[i]
        for key in ("frames", "patch", "theta_gt"):
            assert torch.equal(x[key], y[key])
    assert not torch.equal(a[5]["theta_gt"], a[6]["theta_gt"])
    other_seed = ClipDataset(data_index, ClipConfig(**SMALL), seed=8)
    assert not torch.equal(a[5]["frames"], other_seed[5]["frames"])


def test_patch_is_grid_sample_of_target_under_theta(data_index):
    ds = ClipDataset(data_index, ClipConfig(**SMALL), seed=1)
    for i in range(6):
        s = ds[i]
        theta = s["theta_gt"]
        grid = F.affine_grid(theta[None], (1, 3, 16, 16), align_corners=False)
        expected = F.grid_sample(s["frames"][-1:], grid, align_corners=False)[0]
        torch.testing.assert_close(s["patch"], expected, atol=1e-5, rtol=0)
        # theta = s * rotation(a), |a| <= 45 deg, s = 16/48 (SPEC 3 convention)
        a = math.atan2(theta[1, 0], theta[0, 0])
        assert abs(a) <= math.radians(45) + 1e-6
        torch.testing.assert_close(theta[:, :2] @ theta[:, :2].T, torch.eye(2) / 9, atol=1e-6,
                                   rtol=0)
        assert theta[:, 2].abs().max() <= 1 - 1 / 3 + 1e-6  # centre keeps the window in the crop


def test_theta_convention_on_a_known_frame():
    frame = torch.arange(48.0).repeat(3, 48, 1)  # value = x pixel index
    patch = cut_patch(frame, patch_theta(24.0, 24.0, 0.0, 16, 48), 16)
    torch.testing.assert_close(patch, frame[:, 16:32, 16:32])  # centred 16x16 block, exact
    turned = cut_patch(frame, patch_theta(24.0, 24.0, math.pi / 2, 16, 48), 16)
    torch.testing.assert_close(turned[0, :, 0], torch.arange(31.0, 15.0, -1), atol=1e-4, rtol=0)


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) ImageNet-normalised -> (H, W, 3) uint8 (inverse of to_tensor)."""
    x = frame * IMAGENET_STD.view(3, 1, 1) + IMAGENET_MEAN.view(3, 1, 1)
    return (x * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def windows(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) -> (H-size+1, W-size+1, size, size, 3) every crop of the image."""
    return np.lib.stride_tricks.sliding_window_view(image, (size, size, 3))[:, :, 0]


def test_crop_and_flip_are_shared_by_all_frames(tmp_path):
    image = noise_frames(1, size=(80, 64))[0]  # already short side 64: no resize
    write_folder(tmp_path / "same", [image] * 20)
    ds = ClipDataset(build_index(tmp_path), ClipConfig(**SMALL), seed=0)
    flips = set()
    for i in range(10):
        frames = ds[i]["frames"]
        assert all(torch.equal(frames[k], frames[0]) for k in range(1, 5))
        crop = to_uint8(frames[0])
        hits = [
            (y, x, flip)
            for flip in (False, True)
            for y, x in np.argwhere(
                (windows(image[:, ::-1] if flip else image, 48) == crop).all(axis=(2, 3, 4))
            )
        ]
        assert len(hits) == 1  # the frame is exactly one crop of the (flipped) image
        flips.add(hits[0][2])
    assert flips == {False, True}


def test_patch_centre_follows_motion(tmp_path):
    frames = noise_frames(20, moving=False)
    for i, f in enumerate(frames):  # only the bottom-right corner changes over time
        f[40:, 56:] = (i * 97) % 256
    write_folder(tmp_path / "v", frames)
    cfg = ClipConfig(**{**SMALL, "short_side": 64, "crop": 64, "top_k": 1, "flip_p": 0.0})
    ds = ClipDataset(build_index(tmp_path), cfg, seed=0)
    for i in range(8):
        tx, ty = ds[i]["theta_gt"][:, 2].tolist()
        # Windows fully inside the changing corner are centred at >= 48 px (+-4 jitter) of 64.
        assert tx > 0.25 and ty > 0.25, (tx, ty)


def test_too_short_videos_are_excluded(tmp_path):
    write_folder(tmp_path / "short", noise_frames(4))
    write_folder(tmp_path / "ok", noise_frames(8))
    with pytest.warns(BadVideoWarning, match="fewer than 6 frames"):
        ds = ClipDataset(build_index(tmp_path), ClipConfig(**SMALL))
    assert [Path(v.path).name for v in ds.videos] == ["ok"] and len(ds.too_short) == 1
    assert ds[0]["frames"].shape[0] == 5
    short = [v for v in build_index(tmp_path).videos if Path(v.path).name == "short"]
    with pytest.warns(BadVideoWarning), pytest.raises(UserError, match="no usable videos"):
        ClipDataset(short, ClipConfig(**SMALL))


def test_decoding_failure_draws_a_deterministic_replacement(data_index, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    broken = VideoRecord(str(bad), "video", 40, 24.0, 80, 64, 100, 0)
    records = [broken] + list(data_index.videos)
    ds = ClipDataset(records, ClipConfig(**SMALL), seed=0)
    hit = next(i for i in range(3) if ds._video_for(i) == 0)
    with pytest.warns(BadVideoWarning, match="bad.mp4"):
        sample = ds[hit]
    assert sample["retries"] >= 1 and sample["video_index"] != 0
    assert ds.n_failed == 1 and str(bad) in ds.failed
    again = ds[hit]  # the known-bad video is not reopened, and the replacement is the same
    assert ds.n_failed == 1 and torch.equal(again["frames"], sample["frames"])
    with pytest.warns(BadVideoWarning):
        fresh = ClipDataset(records, ClipConfig(**SMALL), seed=0)[hit]
    assert torch.equal(fresh["theta_gt"], sample["theta_gt"])


def test_resumable_sampler_resume_and_rank_striding():
    s = ResumableSampler(start=5)
    assert list(itertools.islice(s, 3)) == [5, 6, 7]
    ranks = [list(itertools.islice(ResumableSampler(10, r, 3), 3)) for r in range(3)]
    assert ranks[1] == [11, 14, 17]
    assert sorted(sum(ranks, [])) == list(range(10, 19))  # each index read exactly once
    s.set_start(100)
    restored = ResumableSampler()
    restored.load_state_dict(s.state_dict())
    assert next(iter(restored)) == 100
    assert len(ResumableSampler(3, 1, 2, total=10)) == 3  # 4, 6, 8
    with pytest.raises(ValueError):
        ResumableSampler(rank=2, world_size=2)


def _batches(loader, n):
    return [b for _, b in zip(range(n), loader)]


def test_loader_with_workers_matches_no_workers_and_resumes(data_index):
    ds = ClipDataset(data_index, ClipConfig(**SMALL), seed=5)
    plain = _batches(make_loader(ds, 2, workers=0, start_index=4, seed=5), 3)
    loader = make_loader(ds, 2, workers=2, start_index=4, seed=5, pin_memory=False)
    assert loader.persistent_workers
    parallel = _batches(loader, 3)
    for a, b in zip(plain, parallel):
        assert a["index"].tolist() == b["index"].tolist()
        for key in ("frames", "patch", "theta_gt", "video_index"):
            assert torch.equal(a[key], b[key])
    assert plain[0]["index"].tolist() == [4, 5]
    resumed = _batches(make_loader(ds, 2, workers=0, start_index=8, seed=5), 1)[0]
    assert torch.equal(resumed["frames"], plain[2]["frames"])  # global index 8 = batch 2


def test_smoke_real_clips(tmp_path, shared_data):
    index = build_index(shared_data / "videos", tmp_path / "video_index.json")
    assert index.n_skipped == 0
    by_name = {Path(v.path).name: v for v in index.videos}
    assert by_name["sam2_bedroom.mp4"].n_frames == 200
    assert (by_name["sam2_bedroom"].n_frames, by_name["sam2_bedroom"].width) == (200, 960)
    for name in ("mmaction_test.mp4", "davis_train_tennis"):
        sample = ClipDataset([by_name[name]], ClipConfig(), seed=0)[0]  # paper defaults, 12 fps
        assert sample["frames"].shape == (5, 3, 240, 240)
        assert torch.isfinite(sample["frames"]).all() and sample["frames"].std() > 0.1
