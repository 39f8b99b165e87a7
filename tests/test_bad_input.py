"""Bad input from a user, across the commands: one `timecycle: error:` line naming the file and
the problem, exit status 2, no traceback, and nothing left behind that looks complete.

Each case builds its own small damaged input in tmp_path; most fail before any real work.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_one_line_error, run_cli
from timecycle.cli import main
from timecycle.errors import UserError

NOT_UTF8 = b"\xff\xfe\x00\x81 not text\n"


def _propagate(capsys, root: Path, out: Path, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, "propagate", "davis", "--root", root, "--out", out, "--encoder", "pixel",
                   "--device", "cpu", "--quiet", *extra)


# ------------------------------------------------------------------ sequence lists, folders


def test_a_sequence_list_that_is_not_text(synthetic_davis, tmp_path, capsys):
    listing = tmp_path / "val.txt"
    listing.write_bytes(NOT_UTF8)
    out = tmp_path / "o"
    code, _, err = _propagate(capsys, synthetic_davis, out, "--sequences", listing)
    assert_one_line_error(code, err, "val.txt", "cannot read the sequence list")
    assert not out.exists()


def test_an_empty_sequence_list_is_named(synthetic_davis, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(synthetic_davis, root)
    (root / "ImageSets/2017/val.txt").write_text("\n")
    code, _, err = _propagate(capsys, root, tmp_path / "o")  # the default list
    assert_one_line_error(code, err, "val.txt", "names no sequences")
    empty = tmp_path / "mine.txt"
    empty.write_text("")
    code, _, err = _propagate(capsys, synthetic_davis, tmp_path / "o", "--sequences", empty)
    assert_one_line_error(code, err, "mine.txt", "names no sequences")


def test_names_that_leave_the_folders_are_refused(synthetic_davis, tmp_path, capsys):
    # A sequence name is a folder under the root and under --out: "../victim" would read a
    # sibling of JPEGImages/ and write its masks beside --out, not in it.
    root = tmp_path / "root"
    shutil.copytree(synthetic_davis, root)
    seq = sorted((root / "JPEGImages/480p").iterdir())[0].name
    shutil.copytree(root / "JPEGImages/480p" / seq, root / "JPEGImages/victim")
    shutil.copytree(root / "Annotations/480p" / seq, root / "Annotations/victim")
    out = tmp_path / "work" / "o"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{seq}\n../victim\n")
    for spec, named in (("../victim", "o"), (f"{seq},/tmp/x", "o"), (listing, "list.txt")):
        code, _, err = _propagate(capsys, root, out, "--sequences", spec)
        assert_one_line_error(code, err, named if named != "o" else "", "leaves the dataset's")
        assert not out.exists() and not (tmp_path / "work" / "victim").exists()
    from timecycle.datasets.jhmdb import JhmdbRoot

    jhmdb = tmp_path / "jhmdb"
    for folder in ("Rename_Images", "joint_positions"):
        (jhmdb / folder).mkdir(parents=True)
    with pytest.raises(UserError, match="video name '../catch/v' leaves"):
        JhmdbRoot(jhmdb).video_names("../catch/v")


def test_names_are_the_platforms_own():
    # On POSIX "c:x" is a folder's name (no drive letters) and "a\\b" one name with a backslash.
    import os

    from timecycle.datasets.names import checked_names

    if os.name != "posix":
        pytest.skip("POSIX naming rules")
    assert checked_names(["c:x", "a\\b", "./c:x/"], "sequences", None) == ["c:x", "a\\b"]
    for bad in ("", ".", "/abs", "a/../../b", ".."):
        with pytest.raises(UserError, match="leaves the dataset's folders"):
            checked_names([bad], "sequences", None)


def test_a_missing_annotations_folder_is_named(synthetic_davis, tmp_path, capsys):
    code, _, err = _propagate(capsys, synthetic_davis, tmp_path / "o", "--annotations",
                              tmp_path / "no-such-masks")
    assert_one_line_error(code, err, "no-such-masks", "annotation folder not found")


def test_a_missing_sequence_folder_is_a_user_error(synthetic_davis):
    # `train --eval-sequences` names sequences that nothing listed before.
    from timecycle.datasets.davis import DavisRoot
    from timecycle.engine.evaluation import DavisProxy

    with pytest.raises(UserError, match="nope.*not found"):
        DavisRoot(synthetic_davis).sequence("nope")
    with pytest.raises(UserError, match="nope"):
        DavisProxy(synthetic_davis, ["nope"], frames=5, size=64)


def test_a_bad_file_met_during_training_is_named_where_the_user_keeps_it(synthetic_davis,
                                                                        tmp_path):
    # `train --eval-davis` reads the frames through temporary symlinks (gone by the time the
    # message is read); a damaged later annotation is named beside the prediction it was
    # compared with; "no usable videos" says where they were looked for.
    import torch

    from timecycle.datasets.davis import DavisRoot
    from timecycle.datasets.io import read_mask, write_mask
    from timecycle.encoder import build_encoder
    from timecycle.engine.config import make_config
    from timecycle.engine.evaluation import DavisProxy
    from timecycle.engine.setup import build_dataset

    root = Path(shutil.copytree(synthetic_davis, tmp_path / "davis"))
    frame = root / "JPEGImages/480p/synth01/00002.jpg"
    frame.write_bytes(frame.read_bytes()[:200])
    proxy = DavisProxy(root, ["synth01"], frames=3, size=64)
    try:
        with pytest.raises(UserError) as err:
            proxy.score(build_encoder("pixel"), torch.device("cpu"))
    finally:
        proxy.close()
    assert err.value.path == frame.resolve() and str(err.value).startswith(str(frame.resolve()))

    root = Path(shutil.copytree(synthetic_davis, tmp_path / "davis2"))
    mask = root / "Annotations/480p/synth01/00003.png"
    write_mask(mask, read_mask(mask)[:40, :50])
    code = main(["propagate", "davis", "--root", str(root), "--sequences", "synth01",
                 "--encoder", "identity", "--out", str(tmp_path / "o"), "--evaluate", "--quiet"])
    assert code == 2 and (tmp_path / "o" / "synth01").is_dir()  # the predictions are whole
    assert not (tmp_path / "o" / "global_results-val.csv").exists()
    from timecycle.metrics.davis_eval import _read_pair

    write_mask(tmp_path / "pred/synth01/00003.png", np.zeros((64, 96), np.uint8))
    with pytest.raises(UserError, match=f"prediction is 96x64, the annotation {mask} 50x40"):
        _read_pair(DavisRoot(root).sequence("synth01"), mask, tmp_path / "pred")

    with pytest.raises(UserError, match=r"no usable videos .* under --data /videos/a, /b"):
        build_dataset(make_config("small", data=["/videos/a", "/b"]), [])


def test_a_first_mask_with_absent_ids_is_warned_about(synthetic_davis, tmp_path, capsys):
    # DAVIS counts ids 1..max as objects: a stray pixel of id 200 makes 199 phantom objects
    # that score J = F = 1 everywhere. Kept (it is the official rule), but said.
    from timecycle.datasets.io import read_mask, write_mask

    root = Path(shutil.copytree(synthetic_davis, tmp_path / "davis"))
    first = root / "Annotations/480p/synth00/00000.png"
    ids = read_mask(first)
    ids[:2, :2] = 200
    write_mask(first, ids)
    code, _, err = _propagate(capsys, root, tmp_path / "o", "--sequences", "synth00")
    assert code == 0
    lines = [ln for ln in err.splitlines() if "count as 200 objects" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"timecycle: warning: {first}: ids 1..200")
    assert "scores J = F = 1" in lines[0]
    code, _, err = _propagate(capsys, synthetic_davis, tmp_path / "o2", "--sequences", "synth00")
    assert code == 0 and "objects" not in err  # a mask with every id: nothing to say


def test_scores_that_cannot_be_written_leave_no_half_set(synthetic_davis, tmp_path, capsys):
    # A folder where a score file goes: one line naming it, and no global CSV left alone.
    out = tmp_path / "o"
    assert _propagate(capsys, synthetic_davis, out)[0] == 0
    (out / "per-sequence_results-val.csv").mkdir()
    code, _, err = run_cli(capsys, "evaluate", "davis", "--root", synthetic_davis, "--results", out,
                           "--quiet")
    assert_one_line_error(code, err, "per-sequence_results-val.csv", "cannot write")
    assert not (out / "global_results-val.csv").exists()


def test_a_folder_given_as_an_image(tmp_path):
    from timecycle.datasets.io import read_mask

    with pytest.raises(UserError, match="is a folder"):
        read_mask(tmp_path)


def test_an_image_claiming_too_many_pixels_is_named(tmp_path):
    # PIL refuses a header past its decompression-bomb limit with an error of its own, which
    # is neither OSError nor ValueError: every reader must still name the file.
    from PIL import Image

    from timecycle.data.video import DecodeError, probe_frames, read_folder_frames
    from timecycle.datasets.davis import frame_size
    from timecycle.datasets.io import read_mask

    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("1", (20000, 20000)).save(frames / "00000.png")  # 400 Mpixel in ~50 KB
    bomb = frames / "00000.png"
    for read in (read_mask, frame_size):
        with pytest.raises(UserError, match=r"00000\.png: cannot read image \(Image size"):
            read(bomb)
    for read in (lambda: probe_frames(frames), lambda: read_folder_frames(frames, [0])):
        with pytest.raises(DecodeError, match=r"00000\.png.*Image size"):
            read()


def test_training_on_undecodable_frames_ends_in_one_line_without_hanging(tmp_path):
    # Every clip of the only video fails (its frames change size halfway), in a DataLoader
    # worker: the error reaches the command as one line naming the folder, and the process
    # exits: the workers ignore SIGTERM, which multiprocessing's exit handler relies on.
    import subprocess
    import sys

    from PIL import Image

    video = tmp_path / "videos" / "v"
    video.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        size = (64, 48) if i % 2 == 0 else (48, 64)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            video / f"{i:05d}.jpg")
    done = subprocess.run(
        [sys.executable, "-m", "timecycle", "train", "--data", str(tmp_path / "videos"),
         "--out", str(tmp_path / "run"), "--preset", "small", "--short-side", "64", "--crop",
         "64", "--patch", "56", "--fps", "native", "--steps", "2", "--batch-size", "1",
         "--workers", "1", "--threads", "1", "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=180)
    assert_one_line_error(done.returncode, done.stderr, str(video), "cannot be decoded",
                          "frame is 48x64, the folder's 00000.jpg 64x48")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ option values

SIZE_COMMANDS = {
    "propagate davis": ["propagate", "davis", "--root", "{d}/davis"],
    "propagate jhmdb": ["propagate", "jhmdb", "--root", "{d}/jhmdb"],
    "propagate vip": ["propagate", "vip", "--root", "{d}/vip"],
    "track": ["track", "{d}/video.mp4", "--points", "{d}/points.csv"],
}


@pytest.mark.parametrize("flag", [("--tile", "0"), ("--batch-size", "-1")])
@pytest.mark.parametrize("command", list(SIZE_COMMANDS))
def test_sizes_below_one_are_refused_first(command, flag, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.format(d=tmp_path) for a in SIZE_COMMANDS[command]]
    code, _, err = run_cli(capsys, *argv, "--encoder", "pixel", "--out", out, *flag)
    assert_one_line_error(code, err, flag[0], "must be >= 1")
    assert not out.exists()


@pytest.mark.parametrize("command", list(SIZE_COMMANDS))
def test_a_tile_too_large_is_refused_first(command, tmp_path, capsys):
    # A tile as large as the frame asked for a window product of hundreds of GB.
    out = tmp_path / "out"
    argv = [a.format(d=tmp_path) for a in SIZE_COMMANDS[command]]
    code, _, err = run_cli(capsys, *argv, "--encoder", "pixel", "--out", out, "--tile", "300")
    assert_one_line_error(code, err, "--tile must be <= 32, got 300")
    assert not out.exists()


@pytest.mark.parametrize("encoder", ["pixel", "identity"])
def test_a_head_on_a_baseline_is_refused(encoder, synthetic_davis, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "propagate", "davis", "--root", synthetic_davis, "--out", out,
                           "--encoder", encoder, "--head", "yes", "--device", "cpu", "--quiet")
    assert_one_line_error(code, err, "--head yes", encoder)
    assert not out.exists()


@pytest.mark.parametrize("flags", [
    ["--short-side", "0"], ["--fps", "0"], ["--radius", "-1"], ["--topk", "0"],
    ["--temperature", "0"], ["--step", "2", "--max-frames", "1"],
])
def test_texture_options_out_of_range(flags, tmp_path, capsys):
    out = tmp_path / "fig"
    code, _, err = run_cli(capsys, "visualize", "texture", "--video", tmp_path / "clip.mp4",
                           "--encoder", "pixel", "--out", out, *flags)
    assert_one_line_error(code, err, flags[-2])
    assert not out.exists()


def test_texture_frames_list_without_a_number(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # a usage error, not the default frames 0,5
        main(["visualize", "texture", "--video", str(tmp_path), "--frames", ",", "--out",
              str(tmp_path / "fig")])
    assert exit_.value.code == 2
    assert "--frames" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["train", "--steps", "2", "--epochs", "2", "--out", "r"], "not allowed with argument --steps"),
    (["train", "--fps", "abc", "--out", "r"], "--fps"),
    (["propagate", "davis", "--root", "d", "--encoder", "foo"], "invalid choice: 'foo'"),
    (["track", "clip.mp4", "--mask", "m.png"], "required: --out"),
    (["propagate"], "required: BENCHMARK"),
])
def test_usage_errors_are_one_line_too(argv, needle, capsys):
    # argparse printed the whole usage (11-20 lines for train) before its message.
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"timecycle {argv[0]}") and needle in err and "--help" in err


@pytest.mark.parametrize("flags", [["--fps", "0"], ["--fps", "-2"], ["--max-width", "-3"]])
def test_report_options_out_of_range(flags, tmp_path, capsys):
    results = tmp_path / "res"
    results.mkdir()
    code, _, err = run_cli(capsys, "report", results, *flags)
    assert_one_line_error(code, err, flags[0])
    assert not (results / "report").exists()


# ------------------------------------------------------------------ report: damaged files

DAMAGED_RESULTS = {
    "provenance is a list": ("propagation.json", b"[1, 2]", ["propagation.json", "JSON object"]),
    "provenance not UTF-8": ("propagation.json", NOT_UTF8, ["propagation.json", "cannot read"]),
    "scores not UTF-8": ("global_results-val.csv", NOT_UTF8, ["global_results-val.csv"]),
    "score not a number": ("global_results-val.csv", b"J&F-Mean,J-Mean\nabc,0.5\n",
                           ["res:", "not in the layout", "abc"]),
    "nested provenance a list": ("results-val.json", b'{"provenance": [1]}',
                                 ["res:", "not in the layout"]),
}


@pytest.mark.parametrize("case", list(DAMAGED_RESULTS))
def test_report_on_damaged_results_files(case, tmp_path, capsys):
    name, data, needles = DAMAGED_RESULTS[case]
    results = tmp_path / "res"
    results.mkdir()
    (results / name).write_bytes(data)
    code, _, err = run_cli(capsys, "report", results, "--format", "gif")
    assert_one_line_error(code, err, *needles)
    assert not (results / "report").exists()


def test_report_on_a_damaged_jhmdb_prediction(tmp_path, capsys):
    results = tmp_path / "res"
    (results / "catch").mkdir(parents=True)
    (results / "catch" / "video.npy").write_bytes(b"not an npy file")
    code, _, err = run_cli(capsys, "report", results, "--format", "gif")
    assert_one_line_error(code, err, "video.npy", "cannot read the prediction")
    assert not (results / "report").exists()


def _training_run(folder: Path) -> Path:
    folder.mkdir()
    rows = [{"step": s, "loss": 1.0 / s, "long": 0.5, "clips_per_s": 2.0} for s in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_training_report_with_undecodable_metrics(tmp_path, capsys):
    run = _training_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(NOT_UTF8)
    code, _, err = run_cli(capsys, "report", run)
    assert_one_line_error(code, err, "metrics.jsonl", "cannot read the metrics file")
    assert not (run / "report").exists()


def test_training_report_shows_an_undecodable_config_as_text(tmp_path, capsys):
    run = _training_run(tmp_path / "run")
    (run / "config.json").write_bytes(NOT_UTF8)
    code, _, err = run_cli(capsys, "report", run)
    assert code == 0, err
    assert "<h2>Config</h2>" in (run / "report" / "index.html").read_text()


# ------------------------------------------------------------------ predictions read back


def _points_gt(path: Path) -> Path:
    path.write_text(json.dumps({"names": ["a", "b"], "frames": [
        {"frame": 0, "xy": [[1, 2], [3, 4]]}, {"frame": 2, "xy": [[5, 6], [7, 8]]}]}))
    return path


@pytest.mark.parametrize("kind", ["npz archive", "strings"])
def test_points_prediction_that_is_not_an_array_of_numbers(kind, tmp_path, capsys):
    pred = tmp_path / "tracks.npy"
    if kind == "npz archive":
        with open(pred, "wb") as f:
            np.savez(f, tracks=np.zeros((3, 2, 2)))
    else:
        np.save(pred, np.full((3, 2, 2), "x"))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "evaluate", "points", "--gt", _points_gt(tmp_path / "gt.json"),
                           "--pred", pred, "--out", out)
    assert_one_line_error(code, err, "tracks.npy")
    assert not out.exists()


def test_jhmdb_prediction_that_is_an_npz_archive(tmp_path):
    from timecycle.metrics.jhmdb import read_prediction

    pred = tmp_path / "video.npy"
    with open(pred, "wb") as f:
        np.savez(f, joints=np.zeros((3, 15, 2)))
    with pytest.raises(UserError, match="video.npy.*npz archive"):
        read_prediction(pred, 3)


# ------------------------------------------------------------------ track: a cut-short video


def test_track_refuses_a_video_cut_short(tmp_path, capsys):
    """A file cut in the middle of its frames (index first, as a streamed mp4) decodes its first
    frames and then ends quietly: tracking those alone would look like a complete result."""
    import av

    from timecycle.datasets.synthetic import _video_codec
    from timecycle.track.inputs import FrameStream

    rng = np.random.default_rng(0)
    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream(_video_codec(), rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for _ in range(30):  # noise: every frame costs about as many bytes as the others
            rgb = np.repeat(np.repeat(rng.integers(0, 256, (16, 24, 3), np.uint8), 4, 0), 4, 1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    data = whole.read_bytes()
    video = tmp_path / "cut.mp4"
    video.write_bytes(data[: len(data) * 2 // 3])
    assert FrameStream(video).first().shape == (64, 96, 3)  # it opens and starts decoding
    (tmp_path / "points.csv").write_text("id,x,y\na,40,30\n")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "track", video, "--points", tmp_path / "points.csv", "--encoder",
                           "pixel", "--device", "cpu", "--out", out, "--quiet")
    assert_one_line_error(code, err, "cut.mp4", "truncated")
    assert not out.exists()
    # The other commands given one video: a figure or a demo of its first frames alone would
    # look complete too.
    from PIL import Image

    Image.fromarray(np.pad(np.ones((20, 20), np.uint8), 20), "L").save(tmp_path / "m.png")
    for argv in (["visualize", "texture", "--video", video, "--encoder", "pixel"],
                 ["demo", "--video", video, "--mask", tmp_path / "m.png", "--steps", "1"]):
        code, _, err = run_cli(capsys, *argv, "--device", "cpu", "--out", out)
        assert_one_line_error(code, err, "cut.mp4", "of the 30 frames its header declares")
        assert not out.exists()


# ------------------------------------------------------------------ results read back by evaluate


@pytest.mark.parametrize("data, needle", [(NOT_UTF8, "cannot read"), (b"[1, 2]", "JSON object")])
def test_evaluate_davis_on_a_damaged_provenance_file(data, needle, synthetic_davis, tmp_path, capsys):
    out = tmp_path / "res"
    assert _propagate(capsys, synthetic_davis, out, "--encoder", "identity")[0] == 0
    (out / "propagation.json").write_bytes(data)
    code, _, err = run_cli(capsys, "evaluate", "davis", "--root", synthetic_davis, "--results", out,
                           "--quiet")
    assert_one_line_error(code, err, "propagation.json", needle)
    assert not (out / "global_results-val.csv").exists()


# ------------------------------------------------------------------ JHMDB: frames missing


def test_jhmdb_frames_fewer_than_the_annotated_ones(tmp_path, capsys):
    """A frames folder shorter than its .mat would write a prediction that looks complete and
    that the evaluation then refuses: the propagation refuses it first, before any work."""
    import scipy.io
    from PIL import Image

    root = tmp_path / "jhmdb"
    frames = root / "Rename_Images" / "catch" / "a"
    frames.mkdir(parents=True)
    for t in range(3):  # three frames, five annotated
        Image.new("RGB", (32, 24), (40 * t, 90, 20)).save(frames / f"{t + 1:05d}.png")
    mat = root / "joint_positions" / "catch" / "a" / "joint_positions.mat"
    mat.parent.mkdir(parents=True)
    scipy.io.savemat(mat, {"pos_img": np.full((2, 15, 5), 10.0)})
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "propagate", "jhmdb", "--root", root, "--out", out,
                           "--encoder", "pixel", "--device", "cpu", "--quiet")
    assert_one_line_error(code, err, "catch/a", "3 frames", "annotates 5")
    assert not (out / "catch").exists() and not (out / "propagation.json").exists()


# ------------------------------------------------------------------ results among the inputs


def test_vip_results_inside_its_inputs_are_refused(tmp_path, capsys):
    from timecycle.datasets.vip import write_vip_root

    root = tmp_path / "vip"
    write_vip_root(root, 1, seed=0, n_frames=4, height=32, width=48, every=3)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for inside in ("Annotations/Category_ids", "Images"):
        code, _, err = run_cli(capsys, "propagate", "vip", "--root", root, "--out", root / inside,
                               "--encoder", "pixel", "--device", "cpu", "--quiet", "--evaluate")
        assert_one_line_error(code, err, "input folder")
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def _three_frames(tmp_path: Path) -> Path:
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(frames / f"{i:05d}.png")
    return frames


def test_track_results_into_the_frame_folder_are_refused(tmp_path, capsys):
    from PIL import Image

    frames = _three_frames(tmp_path)
    mask = np.zeros((32, 48), np.uint8)
    mask[8:20, 8:20] = 1
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    code, _, err = run_cli(capsys, "track", frames, "--mask", tmp_path / "m.png", "--encoder", "pixel",
                           "--out", frames, "--quiet")
    assert_one_line_error(code, err, "frame folder")
    assert sorted(p.name for p in frames.iterdir()) == ["00000.png", "00001.png", "00002.png"]


def test_texture_results_into_the_frame_folder_are_refused(tmp_path, capsys):
    # texture_strip.png and texture.webp among the frames broke the next run on the folder
    # (a 644x176 "frame"), and a DAVIS sequence gained two frames.
    frames = _three_frames(tmp_path)
    code, _, err = run_cli(capsys, "visualize", "texture", "--video", frames, "--encoder", "pixel",
                           "--device", "cpu", "--out", frames)
    assert_one_line_error(code, err, "frame folder")
    assert sorted(p.name for p in frames.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    code, _, err = run_cli(capsys, "visualize", "texture", "--video", frames, "--encoder", "pixel",
                           "--device", "cpu", "--step", "3", "--out", tmp_path / "fig")
    assert_one_line_error(code, err, str(frames), "--step 3 picks frame 0 alone")
