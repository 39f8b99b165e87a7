"""Every command that takes --out: a bad output path is one line (exit 2), and a failed command
leaves nothing behind; provenance paths are absolute; messages start on their own line; a full
device is one line. Signals and killed reruns: test_cli_signals.py, test_cli_recovery.py."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timecycle.datasets.io import write_mask
from helpers import assert_one_line_error, run_cli

JHMDB_VIDEO = "catch/Goal_Keeping_Tips_catch_f_cm_np1_fr_med_2"


def _frame_folder(folder: Path, n: int = 4, h: int = 40, w: int = 56) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def _training_run(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    rows = [{"step": s, "loss": 1 / (1 + s), "long": 0.2, "skip": 0.1} for s in range(0, 30, 10)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# Each command that takes --out, with inputs that are valid as far as they matter: the output
# folder is checked before anything else is read or written.
COMMANDS = {
    "propagate davis": lambda t, s: ["propagate", "davis", "--root", s, "--encoder", "identity",
                                     "--quiet"],
    "propagate jhmdb": lambda t, s: ["propagate", "jhmdb", "--root", t / "jhmdb", "--encoder",
                                     "identity", "--quiet"],
    "propagate vip": lambda t, s: ["propagate", "vip", "--root", t / "vip", "--encoder", "identity",
                                   "--quiet"],
    "train": lambda t, s: ["train", "--data", s / "JPEGImages" / "480p", "--preset", "small",
                           "--steps", "1", "--workers", "0", "--device", "cpu", "--quiet"],
    "demo": lambda t, s: ["demo", "--steps", "1", "--device", "cpu"],
    "report": lambda t, s: ["report", _training_run(t / "run")],
    "visualize texture": lambda t, s: ["visualize", "texture", "--video",
                                       _frame_folder(t / "frames"), "--encoder", "pixel",
                                       "--device", "cpu"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_out_naming_a_file_is_one_line(command, synthetic_davis, tmp_path, capsys):
    target = tmp_path / "taken.txt"
    target.write_text("keep me\n")
    argv = COMMANDS[command](tmp_path, synthetic_davis) + ["--out", target]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, str(target), "not a folder")
    assert target.read_text() == "keep me\n"
    code, _, err = run_cli(capsys, *COMMANDS[command](tmp_path, synthetic_davis) + ["--out", target / "sub"])
    assert_one_line_error(code, err, str(target / "sub"), "is a file")


@pytest.mark.parametrize("command", COMMANDS)
def test_out_in_an_unwritable_folder_is_one_line(command, synthetic_davis, tmp_path, capsys,
                                                 monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes through permission bits: stand in a read-only filesystem
        import timecycle.datasets.outputs as outputs

        monkeypatch.setattr(outputs, "_writable", lambda folder: Path(folder) != locked)
    else:
        locked.chmod(0o555)
    try:
        argv = COMMANDS[command](tmp_path, synthetic_davis) + ["--out", locked / "out"]
        code, _, err = run_cli(capsys, *argv)
    finally:
        locked.chmod(0o755)
    assert_one_line_error(code, err, str(locked / "out"), "cannot write")
    assert not list(locked.iterdir())


def test_a_write_error_inside_out_is_one_line(synthetic_davis, tmp_path, capsys, monkeypatch):
    """An OSError on a file inside --out (a disk that fills up, a filesystem remounted read-only)
    names the file, and the half-written output is removed."""
    import timecycle.propagation.results as results

    def full(path, mask):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(results, "write_mask", full)
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "propagate", "davis", "--root", synthetic_davis, "--encoder",
                           "identity", "--out", out, "--quiet")
    assert_one_line_error(code, err, "No space left on device", str(out))
    assert not out.exists()


# --- leftovers -------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize("existing", [False, True])
def test_propagate_davis_failure_leaves_nothing(existing, synthetic_davis, tmp_path, capsys):
    root = Path(shutil.copytree(synthetic_davis, tmp_path / "root"))
    _truncate(root / "JPEGImages/480p/synth01/00004.jpg")
    out = tmp_path / "o"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    # progress bars on: the error must still start on its own line (not on a bar's)
    code, _, err = run_cli(capsys, "propagate", "davis", "--root", root, "--encoder", "pixel",
                           "--device", "cpu", "--out", out)
    assert_one_line_error(code, err, "00004.jpg")
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no .partial-*, no synth00
    else:
        assert not out.exists()


def test_a_failed_rerun_leaves_the_previous_results_whole(synthetic_davis, tmp_path, capsys):
    # A rerun into a results folder replaces each sequence as it finishes. If a later one
    # fails, the earlier ones must not stay replaced: old and new mixed would still evaluate.
    root = Path(shutil.copytree(synthetic_davis, tmp_path / "root"))
    out = tmp_path / "o"
    argv = ["propagate", "davis", "--root", root, "--device", "cpu", "--quiet", "--out", out,
            "--evaluate"]
    assert run_cli(capsys, *argv + ["--encoder", "pixel"])[0] == 0

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
                if p.is_file()}

    first = snapshot()
    assert "propagation.json" in first and "synth00/00003.png" in first
    _truncate(root / "JPEGImages/480p/synth02/00004.jpg")  # the last sequence fails
    code, _, err = run_cli(capsys, *argv + ["--encoder", "pixel", "--protocol", "dino"])
    assert_one_line_error(code, err, "00004.jpg")
    assert snapshot() == first  # synth00 and synth01 put back, scores and provenance too
    shutil.copy(synthetic_davis / "JPEGImages/480p/synth02/00004.jpg",
                root / "JPEGImages/480p/synth02/00004.jpg")
    assert run_cli(capsys, *argv + ["--encoder", "pixel", "--protocol", "dino"])[0] == 0
    assert snapshot() != first and not list(out.glob(".*"))  # replaced, nothing set aside


def test_replaced_entries_come_back_whatever_the_block_did_with_them(tmp_path):
    # The same output replaced twice in one block (a name given twice), and a block inside
    # another (the demo's results folders): a failure still puts back the first original.
    from timecycle.datasets.outputs import output_folder, replace_entry

    out = tmp_path / "o"
    (out / "a").mkdir(parents=True)
    (out / "a" / "x.png").write_text("old")
    (out / "b.csv").write_text("old")
    with pytest.raises(KeyError), output_folder(out):
        for text in ("new", "newer"):
            replace_entry(out / "a")
            (out / "a").mkdir()
            (out / "a" / "x.png").write_text(text)
        with output_folder(out / "inner"):  # succeeds: its replacements stay the outer's
            replace_entry(out / "b.csv")
            (out / "b.csv").write_text("new")
        raise KeyError("a later failure")
    assert {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()} == {
        "a/x.png": "old", "b.csv": "old"}
    assert sorted(p.name for p in out.iterdir()) == ["a", "b.csv"]
    with output_folder(out):  # success: nothing set aside stays
        replace_entry(out / "a")
        replace_entry(out / "a")
    assert sorted(p.name for p in out.iterdir()) == ["b.csv"]


def test_a_failed_track_rerun_leaves_the_previous_run_whole(tmp_path, capsys):
    frames = _frame_folder(tmp_path / "frames", n=6)
    (tmp_path / "p.csv").write_text("id,x,y\na,20,20\n")
    out = tmp_path / "t"
    argv = ["track", frames, "--points", tmp_path / "p.csv", "--encoder", "pixel", "--device",
            "cpu", "--quiet", "--out", out]
    assert run_cli(capsys, *argv)[0] == 0
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert "track.json" in before and "tracks.npy" in before
    _truncate(frames / "00004.png")
    code, _, err = run_cli(capsys, *argv + ["--flow"])
    assert_one_line_error(code, err, "00004.png")
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # track.json, tracks, overlay and page put back; no flow.npy
    first = Image.new("L", (56, 40))
    first.paste(1, (10, 10, 30, 30))
    first.save(tmp_path / "m.png")
    shutil.copy(frames / "00003.png", frames / "00004.png")
    assert run_cli(capsys, *argv[:2] + ["--mask", tmp_path / "m.png"] + argv[4:])[0] == 0
    assert (out / "masks").is_dir() and not (out / "tracks.npy").exists()  # none left over
    assert run_cli(capsys, *argv)[0] == 0
    assert not (out / "masks").exists() and not list(out.glob(".*"))


def test_names_are_taken_once_in_their_plain_form(synthetic_davis, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "propagate", "davis", "--root", synthetic_davis, "--encoder",
                           "identity", "--quiet", "--out", out, "--sequences",
                           "synth00,./synth00/,synth01,synth00")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["propagation.json", "synth00", "synth01"]
    record = json.loads((out / "propagation.json").read_text())
    assert [s["name"] for s in record["sequences"]] == ["synth00", "synth01"]


def test_library_propagation_failure_removes_its_partial_folder(synthetic_davis, tmp_path):
    """Called from Python (no CLI around it), a failed sequence leaves no `.partial-<name>`."""
    import torch

    from timecycle.datasets.davis import DavisRoot
    from timecycle.encoder import build_encoder
    from timecycle.errors import UserError
    from timecycle.propagation.davis import propagate_davis
    from timecycle.propagation.protocols import get_protocol
    from timecycle.propagation.video import FrameEncoder

    root = Path(shutil.copytree(synthetic_davis, tmp_path / "root"))
    _truncate(root / "JPEGImages/480p/synth00/00004.jpg")
    crw = get_protocol("crw")
    encoder = FrameEncoder(build_encoder("pixel"), crw, torch.device("cpu"))
    out = tmp_path / "o"
    with pytest.raises(UserError, match="00004.jpg"):
        propagate_davis(DavisRoot(root), ["synth00"], out, encoder, crw, {}, progress=False)
    assert list(out.iterdir()) == []


def test_propagate_vip_failure_leaves_nothing(tmp_path, capsys):
    from timecycle.datasets.vip import write_vip_root

    root = tmp_path / "vip"
    write_vip_root(root, 2, seed=0, n_frames=8, height=64, width=96, every=3)
    frames = sorted(p for p in (root / "Images").rglob("*") if p.is_file())
    _truncate(frames[-2])  # in the second video, after the first is written
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "propagate", "vip", "--root", root, "--encoder", "pixel",
                           "--device", "cpu", "--out", out)
    assert_one_line_error(code, err, frames[-2].name)
    assert not out.exists()


def test_propagate_jhmdb_failure_leaves_nothing(shared_data, tmp_path, capsys):
    src = shared_data / "JHMDB"
    if not (src / "Rename_Images" / JHMDB_VIDEO).is_dir():
        pytest.skip("the real JHMDB video is not in the shared data")
    root = tmp_path / "jhmdb"
    for part in ("Rename_Images", "joint_positions"):
        shutil.copytree(src / part / JHMDB_VIDEO, root / part / JHMDB_VIDEO)
    bad = sorted((root / "Rename_Images" / JHMDB_VIDEO).iterdir())[5]
    _truncate(bad)
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "propagate", "jhmdb", "--root", root, "--videos", JHMDB_VIDEO,
                           "--encoder", "pixel", "--device", "cpu", "--out", out, "--quiet")
    assert_one_line_error(code, err, bad.name)
    assert not out.exists()


@pytest.mark.parametrize("case", ["empty", "unusable", "existing"])
def test_train_failure_leaves_nothing(case, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    if case != "empty":
        for name in ("a.mp4", "b.mp4"):
            (data / name).write_bytes(b"")  # zero-byte videos: skipped, none usable
    out = tmp_path / "run"
    if case == "existing":
        out.mkdir()
    code, _, err = run_cli(capsys, "train", "--data", data, "--out", out, "--preset", "small",
                           "--steps", "1", "--workers", "0", "--device", "cpu")
    assert_one_line_error(code, err)
    if case == "existing":
        assert list(out.iterdir()) == []  # no video_index.json, config.json, tb/
    else:
        assert not out.exists()


def test_train_warnings_are_one_plain_line(data, tmp_path, capsys):
    mixed = Path(shutil.copytree(data, tmp_path / "data"))
    (mixed / "broken.mp4").write_bytes(b"not a video")
    code, _, err = run_cli(capsys, "train", "--data", mixed, "--out", tmp_path / "run", "--preset",
                           "small", "--steps", "1", "--batch-size", "2", "--workers", "0",
                           "--device", "cpu", "--fps", "native", "--quiet")
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "broken.mp4" in ln]
    assert len(lines) == 1 and lines[0].startswith("timecycle: warning: "), err
    assert "BadVideoWarning" not in err and "warnings.warn" not in err and ".py:" not in err, err


def test_train_interrupted_after_a_checkpoint_keeps_it(data, tmp_path, capsys, monkeypatch):
    """Ctrl-C after a save: the run folder stays, to --resume; before any save: nothing stays."""
    import timecycle.engine.train as engine

    real_write = engine.MetricsLog.write

    def interrupt_at_step_2(self, record):
        real_write(self, record)
        if record["step"] == 2:  # step 1 was saved (--save-every 1), step 2 not yet
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.MetricsLog, "write", interrupt_at_step_2)
    argv = ["train", "--data", data, "--preset", "small", "--steps", "4", "--log-every", "1",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--fps", "native", "--quiet"]
    code, _, err = run_cli(capsys, *argv + ["--out", tmp_path / "run", "--save-every", "1"])
    assert code == 130 and err.strip().splitlines()[-1] == "timecycle: interrupted"
    assert (tmp_path / "run" / "step-000001.pt").is_file()
    code, _, _ = run_cli(capsys, *argv + ["--out", tmp_path / "unsaved", "--save-every", "3"])
    assert code == 130 and not (tmp_path / "unsaved").exists()


@pytest.mark.parametrize("video", ["empty.mp4", "no-frames"])
def test_demo_with_an_unreadable_clip_leaves_nothing(video, tmp_path, capsys):
    src = tmp_path / video
    if video.endswith(".mp4"):
        src.write_bytes(b"")
    else:
        src.mkdir()
    mask = tmp_path / "mask.png"
    write_mask(mask, np.zeros((40, 56), np.uint8))
    out = tmp_path / "demo"
    code, _, err = run_cli(capsys, "demo", "--out", out, "--video", src, "--mask", mask,
                           "--steps", "1", "--device", "cpu")
    assert_one_line_error(code, err, video)
    assert not out.exists()


def test_report_failure_leaves_nothing(tmp_path, capsys):
    run = _training_run(tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    (run / "seq").mkdir()  # neither a training run nor propagation results
    code, _, err = run_cli(capsys, "report", run)
    assert code == 2 and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == ["seq"]


def test_texture_failure_leaves_nothing(tmp_path, capsys):
    frames = _frame_folder(tmp_path / "frames")
    _truncate(frames / "00002.png")
    out = tmp_path / "fig"
    code, _, err = run_cli(capsys, "visualize", "texture", "--video", frames, "--encoder", "pixel",
                           "--device", "cpu", "--frames", "0,2", "--out", out)
    assert_one_line_error(code, err, "00002.png")
    assert not out.exists()


# --- provenance paths --------------------------------------------------------------------------


def test_provenance_paths_are_absolute_and_report_works_from_elsewhere(synthetic_davis, tmp_path,
                                                                       capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(synthetic_davis, tmp_path / "DAVIS")
    monkeypatch.chdir(work)
    code, _, err = run_cli(capsys, "propagate", "davis", "--root", "../DAVIS", "--encoder", "pixel",
                           "--device", "cpu", "--sequences", "synth00", "--out", "res",
                           "--quiet", "--evaluate")
    assert code == 0, err
    prov = json.loads((work / "res" / "propagation.json").read_text())
    assert prov["davis_root"] == str((tmp_path / "DAVIS").resolve())
    monkeypatch.chdir("/")
    code, out, err = run_cli(capsys, "report", work / "res")
    assert code == 0, err
    page = Path(out.strip()).read_text()
    assert "frames not found" not in page  # the masks are drawn over the frames, not black


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_device_is_one_line_naming_the_output_folder(tmp_path, code):
    # write() and close() raise ENOSPC without a filename (seen on a full tmpfs with
    # propagate, track, train, report and evaluate points): a traceback before.
    from timecycle.datasets.outputs import output_folder
    from timecycle.errors import UserError

    out = tmp_path / "o"
    with pytest.raises(UserError) as caught, output_folder(out):
        out.mkdir()
        (out / "a.png").write_text("half")
        raise OSError(code, os.strerror(code))
    assert caught.value.path == out and os.strerror(code) in str(caught.value)
    assert not out.exists()  # and the half-written output is gone


