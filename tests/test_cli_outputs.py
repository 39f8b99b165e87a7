"""Every command that takes --out: a bad output path is one line (exit 2), and a failed command
leaves nothing behind; provenance paths are absolute; messages start on their own line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timecycle.cli import main
from timecycle.datasets.io import write_mask
from helpers import assert_one_line_error

JHMDB_VIDEO = "catch/Goal_Keeping_Tips_catch_f_cm_np1_fr_med_2"


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


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
    code, _, err = _run(capsys, argv)
    assert_one_line_error(code, err, str(target), "not a folder")
    assert target.read_text() == "keep me\n"
    code, _, err = _run(capsys, COMMANDS[command](tmp_path, synthetic_davis) + ["--out", target / "sub"])
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
        code, _, err = _run(capsys, argv)
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
    code, _, err = _run(capsys, ["propagate", "davis", "--root", synthetic_davis, "--encoder",
                                 "identity", "--out", out, "--quiet"])
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
    code, _, err = _run(capsys, ["propagate", "davis", "--root", root, "--encoder", "pixel",
                                 "--device", "cpu", "--out", out])
    assert_one_line_error(code, err, "00004.jpg")
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no .partial-*, no synth00
    else:
        assert not out.exists()


@pytest.fixture
def default_signals():
    """SIGINT and SIGTERM at Python's defaults for the test: a suite started in the background
    (`make test &` in a script) inherits SIGINT ignored, which a command rightly keeps."""
    import signal

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL)}
    yield
    for sig, old in previous.items():
        signal.signal(sig, old)


def _sigterm_during_propagation(capture, monkeypatch, root: Path, out: Path) -> tuple[int, str]:
    """`propagate davis` into `out` (holding notes.txt), sent SIGTERM from inside the encoder
    after the first sequence's frames; (exit status, stderr)."""
    import signal

    from timecycle.encoder.pixel import PixelEncoder

    real, calls = PixelEncoder.forward, []

    def forward(self, x):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, x)

    monkeypatch.setattr(PixelEncoder, "forward", forward)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = _run(capture, ["propagate", "davis", "--root", root, "--encoder", "pixel",
                                  "--device", "cpu", "--batch-size", "2", "--quiet", "--out", out])
    assert len(calls) >= 4
    return code, err


def test_sigterm_during_propagation_removes_what_it_wrote(synthetic_davis, tmp_path, capsys,
                                                          monkeypatch, default_signals):
    # `kill` or `timeout` (SIGTERM), not only Ctrl-C: the command stops, removes its partial
    # folders, and exits 143.
    import signal

    out = tmp_path / "o"
    code, err = _sigterm_during_propagation(capsys, monkeypatch, synthetic_davis, out)
    assert code == 143 and err.strip().splitlines()[-1] == "timecycle: terminated (SIGTERM)"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was the command's


def test_a_second_signal_while_tidying_up_is_only_acknowledged(synthetic_davis, tmp_path, capfd,
                                                               monkeypatch, default_signals):
    # SIGTERM, then Ctrl-C while the command removes what it wrote: the second used to raise
    # inside that tidying (a "release unlocked lock" traceback, the folder half tidied).
    import signal

    from timecycle.datasets import outputs

    real_remove = outputs._remove_new

    def remove_new(folder, before):
        os.kill(os.getpid(), signal.SIGINT)
        return real_remove(folder, before)

    monkeypatch.setattr(outputs, "_remove_new", remove_new)
    out = tmp_path / "o"  # capfd: the acknowledgement is an os.write
    code, err = _sigterm_during_propagation(capfd, monkeypatch, synthetic_davis, out)
    assert code == 143 and err.strip().splitlines() == [
        "timecycle: already stopping; one more signal stops at once, without tidying up",
        "timecycle: terminated (SIGTERM)"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_ctrl_c_while_the_command_starts_is_one_line(capsys, monkeypatch, default_signals):
    import signal

    import timecycle.cli as cli

    real = cli.build_parser

    def build_parser():  # the subcommands' imports (torch) take most of the start-up
        os.kill(os.getpid(), signal.SIGINT)
        return real()

    monkeypatch.setattr(cli, "build_parser", build_parser)
    code, _, err = _run(capsys, ["evaluate", "davis", "--help"])
    assert code == 130 and err.strip() == "timecycle: interrupted"


def test_a_signal_ignored_when_the_command_starts_stays_ignored(synthetic_davis, tmp_path,
                                                                capsys, monkeypatch):
    # `timecycle propagate ... &` in a script starts with SIGINT ignored, so that a Ctrl-C meant
    # for the terminal's foreground job does not stop it; the command must not take it back.
    import signal

    from timecycle.encoder.pixel import PixelEncoder

    real, calls = PixelEncoder.forward, []

    def forward(self, x):
        calls.append(signal.getsignal(signal.SIGINT))
        os.kill(os.getpid(), signal.SIGINT)
        return real(self, x)

    monkeypatch.setattr(PixelEncoder, "forward", forward)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code, _, err = _run(capsys, ["propagate", "davis", "--root", synthetic_davis, "--encoder",
                                     "pixel", "--device", "cpu", "--quiet", "--out", tmp_path / "o"])
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 0 and err == "" and calls and set(calls) == {signal.SIG_IGN}
    assert (tmp_path / "o" / "propagation.json").is_file()


def test_a_failed_rerun_leaves_the_previous_results_whole(synthetic_davis, tmp_path, capsys):
    # A rerun into a results folder replaces each sequence as it finishes. If a later one
    # fails, the earlier ones must not stay replaced: old and new mixed would still evaluate.
    root = Path(shutil.copytree(synthetic_davis, tmp_path / "root"))
    out = tmp_path / "o"
    argv = ["propagate", "davis", "--root", root, "--device", "cpu", "--quiet", "--out", out,
            "--evaluate"]
    assert _run(capsys, argv + ["--encoder", "pixel"])[0] == 0

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
                if p.is_file()}

    first = snapshot()
    assert "propagation.json" in first and "synth00/00003.png" in first
    _truncate(root / "JPEGImages/480p/synth02/00004.jpg")  # the last sequence fails
    code, _, err = _run(capsys, argv + ["--encoder", "pixel", "--protocol", "dino"])
    assert_one_line_error(code, err, "00004.jpg")
    assert snapshot() == first  # synth00 and synth01 put back, scores and provenance too
    shutil.copy(synthetic_davis / "JPEGImages/480p/synth02/00004.jpg",
                root / "JPEGImages/480p/synth02/00004.jpg")
    assert _run(capsys, argv + ["--encoder", "pixel", "--protocol", "dino"])[0] == 0
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
    assert _run(capsys, argv)[0] == 0
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert "track.json" in before and "tracks.npy" in before
    _truncate(frames / "00004.png")
    code, _, err = _run(capsys, argv + ["--flow"])
    assert_one_line_error(code, err, "00004.png")
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # track.json, tracks, overlay and page put back; no flow.npy
    first = Image.new("L", (56, 40))
    first.paste(1, (10, 10, 30, 30))
    first.save(tmp_path / "m.png")
    shutil.copy(frames / "00003.png", frames / "00004.png")
    assert _run(capsys, argv[:2] + ["--mask", tmp_path / "m.png"] + argv[4:])[0] == 0
    assert (out / "masks").is_dir() and not (out / "tracks.npy").exists()  # none left over
    assert _run(capsys, argv)[0] == 0
    assert not (out / "masks").exists() and not list(out.glob(".*"))


def test_names_are_taken_once_in_their_plain_form(synthetic_davis, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = _run(capsys, ["propagate", "davis", "--root", synthetic_davis, "--encoder",
                                 "identity", "--quiet", "--out", out, "--sequences",
                                 "synth00,./synth00/,synth01,synth00"])
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
    code, _, err = _run(capsys, ["propagate", "vip", "--root", root, "--encoder", "pixel",
                                 "--device", "cpu", "--out", out])
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
    code, _, err = _run(capsys, ["propagate", "jhmdb", "--root", root, "--videos", JHMDB_VIDEO,
                                 "--encoder", "pixel", "--device", "cpu", "--out", out, "--quiet"])
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
    code, _, err = _run(capsys, ["train", "--data", data, "--out", out, "--preset", "small",
                                 "--steps", "1", "--workers", "0", "--device", "cpu"])
    assert_one_line_error(code, err)
    if case == "existing":
        assert list(out.iterdir()) == []  # no video_index.json, config.json, tb/
    else:
        assert not out.exists()


def test_train_warnings_are_one_plain_line(data, tmp_path, capsys):
    mixed = Path(shutil.copytree(data, tmp_path / "data"))
    (mixed / "broken.mp4").write_bytes(b"not a video")
    code, _, err = _run(capsys, ["train", "--data", mixed, "--out", tmp_path / "run", "--preset",
                                 "small", "--steps", "1", "--batch-size", "2", "--workers", "0",
                                 "--device", "cpu", "--fps", "native", "--quiet"])
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
    code, _, err = _run(capsys, argv + ["--out", tmp_path / "run", "--save-every", "1"])
    assert code == 130 and err.strip().splitlines()[-1] == "timecycle: interrupted"
    assert (tmp_path / "run" / "step-000001.pt").is_file()
    code, _, _ = _run(capsys, argv + ["--out", tmp_path / "unsaved", "--save-every", "3"])
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
    code, _, err = _run(capsys, ["demo", "--out", out, "--video", src, "--mask", mask,
                                 "--steps", "1", "--device", "cpu"])
    assert_one_line_error(code, err, video)
    assert not out.exists()


def test_report_failure_leaves_nothing(tmp_path, capsys):
    run = _training_run(tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    (run / "seq").mkdir()  # neither a training run nor propagation results
    code, _, err = _run(capsys, ["report", run])
    assert code == 2 and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == ["seq"]


def test_texture_failure_leaves_nothing(tmp_path, capsys):
    frames = _frame_folder(tmp_path / "frames")
    _truncate(frames / "00002.png")
    out = tmp_path / "fig"
    code, _, err = _run(capsys, ["visualize", "texture", "--video", frames, "--encoder", "pixel",
                                 "--device", "cpu", "--frames", "0,2", "--out", out])
    assert_one_line_error(code, err, "00002.png")
    assert not out.exists()


# --- provenance paths --------------------------------------------------------------------------


def test_provenance_paths_are_absolute_and_report_works_from_elsewhere(synthetic_davis, tmp_path,
                                                                       capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(synthetic_davis, tmp_path / "DAVIS")
    monkeypatch.chdir(work)
    code, _, err = _run(capsys, ["propagate", "davis", "--root", "../DAVIS", "--encoder", "pixel",
                                 "--device", "cpu", "--sequences", "synth00", "--out", "res",
                                 "--quiet", "--evaluate"])
    assert code == 0, err
    prov = json.loads((work / "res" / "propagation.json").read_text())
    assert prov["davis_root"] == str((tmp_path / "DAVIS").resolve())
    monkeypatch.chdir("/")
    code, out, err = _run(capsys, ["report", work / "res"])
    assert code == 0, err
    page = Path(out.strip()).read_text()
    assert "frames not found" not in page  # the masks are drawn over the frames, not black


_KILLED_RERUN = """
import os, signal, sys
from pathlib import Path
from timecycle.datasets.outputs import output_folder, replace_entry
out = Path(sys.argv[1])
with output_folder(out):
    for name in ("a", "b"):
        replace_entry(out / name)
        (out / name).mkdir()
        (out / name / "x.png").write_text("new")
    replace_entry(out / "c.csv")  # killed before the new c.csv is written
    if sys.argv[2] == "after-commit":
        from timecycle.datasets import outputs
        outputs._REPLACED.get().close()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_rerun(out: Path, when: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _KILLED_RERUN, str(out), when])
    assert proc.returncode == -9


def _contents(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _texts(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_rerun_killed_outright_is_put_back_by_the_next_command(tmp_path):
    # SIGKILL leaves the originals set aside as .replaced-*; the next command on the folder
    # puts them back before it starts (so a failure of its own cannot lose them), as a failed
    # run would have done itself.
    from timecycle.datasets.outputs import output_folder

    out = tmp_path / "o"
    for name in ("a", "b"):
        (out / name).mkdir(parents=True)
        (out / name / "x.png").write_text("old")
    (out / "c.csv").write_text("old")
    before = _texts(out)
    _killed_rerun(out, "before-commit")
    assert ".replaced-a/x.png" in _texts(out)
    with pytest.warns(UserWarning, match="put back 3 previous result"):
        with pytest.raises(KeyError), output_folder(out):
            assert _texts(out) == before
            raise KeyError("the next run fails too")
    assert _texts(out) == before and sorted(p.name for p in out.iterdir()) == ["a", "b", "c.csv"]


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


_KILLED_PROPAGATION = """
import os, signal, sys
from pathlib import Path
from timecycle.datasets.outputs import output_folder, replace_entry
out = Path(sys.argv[1])
with output_folder(out):  # as a rerun of `propagate davis` is when SIGKILL comes
    replace_entry(out / "propagation.json")
    replace_entry(out / "synth00")
    (out / ".partial-synth00").mkdir()
    (out / ".partial-synth00" / "00000.png").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("reader", ["evaluate", "report"])
def test_commands_that_read_results_put_a_killed_rerun_back_first(reader, synthetic_davis,
                                                                   tmp_path, capsys):
    # `evaluate` without --root reads propagation.json and `report` reads the whole folder:
    # before, both found the killed rerun's folder without it and failed.
    import subprocess
    import sys

    out = tmp_path / "res"
    code, _, err = _run(capsys, ["propagate", "davis", "--root", synthetic_davis, "--encoder",
                                 "pixel", "--device", "cpu", "--sequences", "synth00",
                                 "--out", out, "--quiet", "--evaluate"])
    assert code == 0, err
    before = _contents(out)
    assert subprocess.run([sys.executable, "-c", _KILLED_PROPAGATION, str(out)]).returncode == -9
    assert not (out / "propagation.json").exists() and (out / ".partial-synth00").is_dir()
    argv = (["evaluate", "davis", "--results", out, "--quiet"] if reader == "evaluate"
            else ["report", out, "--out", tmp_path / "page"])
    code, _, err = _run(capsys, argv)
    assert code == 0, err
    assert "put back 2 previous result(s)" in err
    assert _contents(out) == before  # `evaluate` wrote its score files again, equal
    assert reader == "evaluate" or (tmp_path / "page" / "index.html").is_file()
    assert not list(out.glob(".*"))  # no journal, no set-aside copy, no unfinished item


def test_readers_recover_their_results_folder_alone(tmp_path, capsys):
    # `evaluate points --pred W/pred.npy` reads W and, by default, writes its scores there: a
    # killed run in W/k2, or one writing W/live now, is another command's business (before:
    # put back, or refused "another run").
    import socket
    import subprocess

    from timecycle.datasets.outputs import JOURNAL

    (tmp_path / "gt.json").write_text(json.dumps({"names": ["a", "b"], "frames": [
        {"frame": 0, "xy": [[5, 5], [9, 9]], "visible": [True, True]},
        {"frame": 1, "xy": [[10, 10], [20, 30]], "visible": [True, True]}]}))
    np.save(tmp_path / "pred.npy", np.array([[[5.0, 5.0], [9, 9]], [[10.0, 10.0], [20, 30]]]))
    (tmp_path / "k2" / "a").mkdir(parents=True)
    (tmp_path / "k2" / "a" / "x.png").write_text("old")
    _killed_rerun(tmp_path / "k2", "before-commit")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "live").mkdir()
        (tmp_path / "live" / JOURNAL).write_text(json.dumps(
            {"pid": live.pid, "host": socket.gethostname(), "replaced": []}))
        code, _, err = _run(capsys, ["evaluate", "points", "--gt", tmp_path / "gt.json",
                                     "--pred", tmp_path / "pred.npy"])
    finally:
        live.kill()
        live.wait()
    assert code == 0 and "warning" not in err, err
    assert (tmp_path / "points_pck.csv").is_file()
    assert (tmp_path / "k2" / JOURNAL).is_file() and (tmp_path / "k2" / ".replaced-a").is_dir()


def test_a_reader_leaves_a_journal_from_another_host_alone(tmp_path):
    # That run may be writing now over a shared filesystem: putting its folder back would
    # wreck it. A writer on this machine still takes such a journal for a killed run's.
    from timecycle.datasets.outputs import JOURNAL, output_folder, recover_interrupted

    (tmp_path / "a").mkdir()
    (tmp_path / ".replaced-a").mkdir()
    (tmp_path / ".partial-b").mkdir()
    (tmp_path / JOURNAL).write_text(json.dumps(
        {"pid": 1, "host": "elsewhere.example", "replaced": [["a", ".replaced-a"]]}))
    with pytest.warns(UserWarning, match="a run on host elsewhere.example is replacing"):
        recover_interrupted(tmp_path, reading=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [JOURNAL, ".partial-b", ".replaced-a", "a"])
    with pytest.warns(UserWarning, match="put back 1 previous"), output_folder(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_run_killed_after_its_commit_keeps_its_new_results(tmp_path):
    from timecycle.datasets.outputs import output_folder, replace_entry

    out = tmp_path / "o"
    (out / "a").mkdir(parents=True)
    (out / "a" / "x.png").write_text("old")
    _killed_rerun(out, "after-commit")
    assert (out / ".replaced-a" / "x.png").read_text() == "old"  # garbage after the commit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to put back
        with output_folder(out):
            assert (out / "a" / "x.png").read_text() == "new"
            replace_entry(out / "a")  # the stale copy goes, this run's original is set aside
    assert not (out / "a").exists() and not list(out.glob(".*"))


def test_a_folder_another_live_run_writes_is_refused(tmp_path):
    import socket
    import subprocess
    import sys

    from timecycle.datasets.outputs import JOURNAL, output_folder
    from timecycle.errors import UserError

    out = tmp_path / "o"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / JOURNAL).write_text(json.dumps(
            {"pid": live.pid, "host": socket.gethostname(), "replaced": []}))
        with pytest.raises(UserError, match=f"another run \\(process {live.pid}\\)"):
            with output_folder(out):
                pass
    finally:
        live.kill()
        live.wait()
    with output_folder(out):  # its writer gone, the journal is an interrupted run's
        pass
    assert not (out / JOURNAL).exists()


def test_a_journal_whose_pid_is_now_another_process_is_an_interrupted_runs(tmp_path):
    # A killed run's pid can be reused by an unrelated process: that one must not be taken for
    # the writer (the folder would be refused until it ended). /proc says when a pid started.
    import socket

    from timecycle.datasets.outputs import JOURNAL, _process_start, output_folder

    if _process_start(os.getpid()) is None:
        pytest.skip("no /proc here: a process's start time is unknown")
    out = tmp_path / "o"
    out.mkdir()
    (out / "res").write_text("new")
    (out / ".replaced-res").write_text("old")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # its own pid, but a start time before it was born: the writer was another process
        (out / JOURNAL).write_text(json.dumps(
            {"pid": live.pid, "host": socket.gethostname(),
             "started": _process_start(live.pid) - 1, "replaced": [["res", ".replaced-res"]]}))
        with pytest.warns(UserWarning, match="put back 1 previous result"):
            with output_folder(out):
                pass
    finally:
        live.kill()
        live.wait()
    assert (out / "res").read_text() == "old" and not (out / JOURNAL).exists()
