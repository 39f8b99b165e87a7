"""Video sources and the video index (SPEC 5): probing, frame access, cache, bad files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from timecycle.data import index as index_mod
from timecycle.data import video as video_mod
from timecycle.data.index import build_index, find_sources, load_index
from timecycle.data.video import (
    BadVideoWarning,
    DecodeError,
    read_folder_frames,
    read_frames,
    read_video_frames,
    resized_size,
)
from timecycle.errors import UserError

LEVEL = 6  # frame i is a uniform grey of level 6*i: 40 frames fit in uint8, neighbours differ


def encode_video(path, n=40, size=(96, 64), fps=24, codec="libx264", options=None):
    """A video whose frame i is uniformly grey at LEVEL * i (content encodes the index)."""
    width, height = size
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 2_000_000  # mpeg4's default rate blurs grey levels between frames
        stream.options = options or {}
        for i in range(n):
            arr = np.full((height, width, 3), LEVEL * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def write_folder(folder, n=12, size=(80, 60), ext="png"):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.full((size[1], size[0], 3), LEVEL * i, np.uint8)
        Image.fromarray(arr).save(folder / f"{i:05d}.{ext}")
    return folder


def frame_levels(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) -> (T,) the grey level of each frame."""
    return frames.reshape(len(frames), -1).mean(1)


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    # Keyframe every 10 frames, B-frames: reading frame 33 needs a seek and a partial GOP.
    encode_video(root / "a.mp4", options={"g": "10", "bf": "2"})
    write_folder(root / "clips" / "b")
    return root


def test_resized_size_keeps_aspect_with_short_side():
    assert resized_size(1280, 720, 256) == (455, 256)
    assert resized_size(480, 854, 256) == (256, 455)
    assert resized_size(96, 64, None) == (96, 64)


def test_find_sources_kinds_and_order(data_dir):
    (data_dir / ".hidden.mp4").write_bytes(b"")
    (data_dir / "notes.txt").write_text("not a video")
    found = find_sources(data_dir)
    names = [(Path(p).relative_to(data_dir.resolve()).as_posix(), k) for p, k in found]
    assert names == [("a.mp4", "video"), ("clips/b", "frames")]


def test_index_records_mp4_and_frame_folder(data_dir, tmp_path):
    cache = tmp_path / "run" / "video_index.json"
    index = build_index(data_dir, cache)
    assert [v.kind for v in index.videos] == ["video", "frames"]
    mp4, folder = index.videos
    assert (mp4.n_frames, mp4.fps, mp4.width, mp4.height) == (40, 24.0, 96, 64)
    assert (folder.n_frames, folder.fps, folder.width, folder.height) == (12, None, 80, 60)
    assert index.n_skipped == 0 and index.n_probed == 2
    saved = json.loads(cache.read_text())
    assert saved["format"] == "timecycle-video-index" and saved["n_videos"] == 2
    assert saved["videos"][0]["path"] == str((data_dir / "a.mp4").resolve())
    assert load_index(cache).videos == index.videos


def test_index_cache_reused_and_invalidated(data_dir, tmp_path, monkeypatch):
    calls = []
    for name in ("probe_video", "probe_frames"):
        real = getattr(video_mod, name)
        monkeypatch.setattr(video_mod, name, lambda p, real=real: calls.append(p) or real(p))
    cache = tmp_path / "video_index.json"
    build_index(data_dir, cache)
    assert len(calls) == 2
    calls.clear()
    again = build_index(data_dir, cache)
    assert calls == [] and again.n_reused == 2 and again.n_probed == 0
    # A changed video and a frame folder with one more image are re-probed; nothing else.
    encode_video(data_dir / "a.mp4", n=30, size=(64, 48))
    os.utime(data_dir / "a.mp4", ns=(1, 10**18))
    write_folder(data_dir / "clips" / "b", n=13)
    third = build_index(data_dir, cache)
    assert sorted(Path(c).name for c in calls) == ["a.mp4", "b"]
    assert [(v.n_frames, v.width) for v in third.videos] == [(30, 64), (13, 80)]


def test_corrupt_and_empty_videos_are_skipped_and_counted(data_dir, tmp_path, monkeypatch):
    (data_dir / "empty.mp4").write_bytes(b"")
    (data_dir / "junk.mkv").write_bytes(np.random.default_rng(0).bytes(5000))
    cache = tmp_path / "video_index.json"
    with pytest.warns(BadVideoWarning) as record:
        index = build_index(data_dir, cache)
    assert [Path(v.path).name for v in index.videos] == ["a.mp4", "b"]
    assert index.n_skipped == 2
    assert sorted(Path(s["path"]).name for s in index.skipped) == ["empty.mp4", "junk.mkv"]
    assert all(s["reason"] for s in index.skipped)
    assert any("empty.mp4" in str(w.message) for w in record)
    assert json.loads(cache.read_text())["n_skipped"] == 2
    # Unchanged broken files are remembered too, not re-opened on the next build.
    monkeypatch.setattr(video_mod, "probe_video", lambda p: pytest.fail(f"re-probed {p}"))
    with pytest.warns(BadVideoWarning):
        assert build_index(data_dir, cache).n_skipped == 2


def test_missing_data_folder_and_empty_folder_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such data folder"):
        build_index(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no videos"):
        build_index(tmp_path / "empty")


def test_unreadable_cache_is_rebuilt(data_dir, tmp_path):
    cache = tmp_path / "video_index.json"
    cache.write_text("{not json")
    with pytest.warns(BadVideoWarning, match="ignoring unreadable"):
        index = build_index(data_dir, cache)
    assert index.n_probed == 2 and json.loads(cache.read_text())["n_videos"] == 2


@pytest.mark.parametrize(
    "name,codec,options",
    [
        ("v.mp4", "libx264", {"g": "10", "bf": "2"}),  # seek + B-frames (NONREF skipping)
        ("v.mkv", "libx264", {"g": "8"}),  # frame count from the duration
        ("v.avi", "mpeg4", {"g": "10", "bf": "2"}),  # AVI: frames counted, no timestamps
    ],
)
def test_decoding_specific_frames_returns_those_frames(tmp_path, name, codec, options):
    path = encode_video(tmp_path / name, codec=codec, options=options)
    assert video_mod.probe_video(path)["n_frames"] == 40
    wanted = [33, 5, 20, 21, 39, 0, 21]
    frames = read_video_frames(path, wanted, short_side=32, threads=2)
    assert frames.shape == (7, 32, 48, 3) and frames.dtype == np.uint8
    # Codec + colour conversion move a grey level by about 2; neighbours are 6 apart.
    np.testing.assert_allclose(frame_levels(frames), LEVEL * np.array(wanted), atol=3)


def test_decoding_seeks_to_a_keyframe_and_stops_at_the_last_wanted(data_dir, monkeypatch):
    spans = []
    real = video_mod._decode_wanted

    def spy(*args):
        got = real(*args)
        spans.append(None if got is None else got[1])
        return got

    monkeypatch.setattr(video_mod, "_decode_wanted", spy)
    frames = read_video_frames(data_dir / "a.mp4", [35, 33], short_side=None)
    np.testing.assert_allclose(frame_levels(frames), [LEVEL * 35, LEVEL * 33], atol=3)
    # Keyframes every 10 frames: decoding starts at the one before frame 33, ends at 35.
    assert len(spans) == 1 and 30 <= spans[0][0] <= 33 and spans[0][1] == 35


def test_decoding_past_the_end_raises_decode_error(tmp_path):
    path = encode_video(tmp_path / "v.mp4", n=20)
    with pytest.raises(DecodeError, match="v.mp4"):
        read_video_frames(path, [5, 30])


def test_frame_folder_reads_only_wanted_images_resized(tmp_path):
    folder = write_folder(tmp_path / "f", n=10, size=(120, 90), ext="jpg")
    frames = read_folder_frames(folder, [7, 0, 3], short_side=30)
    assert frames.shape == (3, 30, 40, 3)
    np.testing.assert_allclose(frame_levels(frames), [42, 0, 18], atol=2)
    with pytest.raises(DecodeError, match="frame 10 requested"):
        read_frames(folder, "frames", [10])


def test_frame_folder_order_is_natural(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    for i in (10, 2, 1):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(folder / f"frame{i}.png")
    assert video_mod.list_frame_files(folder) == ["frame1.png", "frame2.png", "frame10.png"]
    np.testing.assert_allclose(frame_levels(read_folder_frames(folder, [2], None)), [200])


def test_corrupt_image_in_folder_names_the_file(tmp_path):
    folder = write_folder(tmp_path / "f", n=3)
    (folder / "00001.png").write_bytes(b"broken")
    with pytest.raises(DecodeError, match="00001.png"):
        read_folder_frames(folder, [0, 1])


def test_index_workers_do_not_change_the_result(data_dir, tmp_path):
    encode_video(data_dir / "c.mp4", n=25)
    one = build_index(data_dir, workers=1)
    many = build_index(data_dir, workers=4)
    assert one.videos == many.videos and len(one.videos) == 3
    assert index_mod.VideoIndex.from_json(one.to_json()).videos == one.videos


def test_a_video_shorter_than_its_header_gets_its_decodable_length(tmp_path):
    """An AVI cut short keeps the header's frame count (like opencvdoc_tree.avi: 444 claimed,
    68 decode); the index must record what decodes, so clips are drawn within it."""
    path = tmp_path / "cut.avi"
    encode_video(path, n=40, size=(96, 64), fps=24, codec="mpeg4", options={"g": "5"})
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 40  # what the header says
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 7 // 10])  # mid-packet: decoding stops with an error
    decodable = 0
    with av.open(str(path)) as container:
        claimed = container.streams.video[0].frames
        with pytest.raises(av.FFmpegError):
            for _ in container.decode(video=0):
                decodable += 1
    assert claimed == 40 and 5 < decodable < 35
    meta = video_mod.probe_video(path)
    assert abs(meta["n_frames"] - decodable) <= 1
    last = read_frames(str(path), "video", [meta["n_frames"] - 1], None)
    assert last.shape == (1, 64, 96, 3)
    with pytest.raises(DecodeError):  # what the header promised past that does not decode
        read_frames(str(path), "video", [39], None)


def test_an_mkv_with_longer_audio_declares_its_video_length(tmp_path):
    # mkv stores no frame count; the container's duration is the longest stream's, here the
    # audio's 3 s: read as 30 frames, `track` refused the whole 18-frame video as truncated.
    path = tmp_path / "av.mkv"
    with av.open(str(path), mode="w", format="matroska") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 96, 64, "yuv420p"
        audio = container.add_stream("mp2", rate=44100)
        for i in range(18):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), i * 10, np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for k in range(3 * 44100 // 1152):
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16",
                                               layout="mono")
            sound.sample_rate, sound.pts = 44100, k * 1152
            container.mux(audio.encode(sound))
        container.mux(audio.encode())
    with av.open(str(path)) as container:
        assert container.duration / av.time_base > 2.5  # the audio's
        assert video_mod.declared_frames(container, container.streams.video[0]) == 18
    assert video_mod.probe_video(path)["declared_frames"] == 18
