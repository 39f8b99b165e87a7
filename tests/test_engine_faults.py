"""Preemption and faults: stop signals, SIGKILL then --resume, damaged checkpoints, saves on a
timer.

The signal tests run `python -m timecycle train` in a subprocess at the tiny resolution of
test_engine_train.py (64 crop, 56 patch, batch 2, one thread, deterministic kernels).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from timecycle.cli import main
from timecycle.engine import checkpoint as ckpt
from timecycle.engine.config import make_config
from timecycle.engine.logging import read_metrics
from timecycle.engine.signals import EXIT_STOPPED, stop_on_signals
from timecycle.engine.train import train
from timecycle.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")




TINY = dict(short_side=64, crop=64, patch=56, batch_size=2, workers=0, log_every=1, fps=None,
            save_every=2, deterministic=True, threads=1)


def tiny(data, out, **overrides):
    base = dict(data=[str(data)], out=str(out), steps=6, progress=False, tensorboard=False)
    return make_config("small", **{**base, **TINY, **overrides})


def cli_args(data, out, steps):
    """`timecycle train` flags for the same run as `tiny(data, out, steps=steps)`."""
    return ["train", "--data", str(data), "--out", str(out), "--preset", "small",
            "--short-side", "64", "--crop", "64", "--patch", "56", "--batch-size", "2",
            "--workers", "0", "--log-every", "1", "--fps", "native", "--save-every", "2",
            "--deterministic", "--threads", "1", "--device", "cpu", "--quiet",
            "--steps", str(steps)]


def start(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "timecycle", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, proc, timeout=120.0):
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run: its metrics (one line per step)."""
    run = train(tiny(data, tmp_path_factory.mktemp("reference") / "run"))
    return read_metrics(run)


# Stop signals --------------------------------------------------------------------------------


def test_stop_signals_set_the_request_and_restore_the_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with stop_on_signals(announce=None) as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert stop.is_set() and stop.signal_name == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal keeps the first one's name
        time.sleep(0.01)
        assert stop.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


@pytest.mark.slow
def test_sigterm_saves_and_exits_with_the_stop_status(data, tmp_path):
    out = tmp_path / "run"
    proc = start(cli_args(data, out, steps=50))
    wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size,
             proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED == 75, stderr
    assert "SIGTERM received" in stderr
    assert "stopped by SIGTERM after step" in stderr and "--resume" in stderr
    state = ckpt.load_checkpoint(out / "last.pt")
    assert 1 <= state["step"] < 50
    # The interval up to the stop is logged; the checkpoint is where the log ends.
    assert read_metrics(out)[-1]["step"] == state["step"]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_losses(data, tmp_path, reference):
    out = tmp_path / "run"
    proc = start(cli_args(data, out, steps=6))
    wait_for(lambda: (out / ckpt.numbered_name(2)).is_file(), proc)
    proc.kill()  # SIGKILL: no handler, no save, maybe in the middle of a step or a write
    proc.communicate(timeout=60)
    path, state = ckpt.latest_checkpoint(out)
    assert state["step"] in (2, 4), path  # killed mid-run
    assert main([*cli_args(data, out, steps=6), "--resume"]) == 0
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert [r["loss"] for r in records] == [r["loss"] for r in reference]


# Damaged checkpoints -------------------------------------------------------------------------


def fake_state(step: int) -> dict:
    """A small state with every key a training checkpoint needs."""
    return {"model": {"w": torch.arange(256, dtype=torch.float32) * step},
            "optimizer": {"state": {}, "param_groups": []}, "step": step, "samples": 4 * step,
            "nonfinite": 0, "rng": ckpt.rng_state(), "config": {"crop": 64}}


def test_content_check_catches_a_changed_byte(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, fake_state(3), step=3, numbered=False)
    assert ckpt.load_checkpoint(path)["step"] == 3
    data = bytearray(path.read_bytes())
    at = data.find((torch.arange(256, dtype=torch.float32) * 3).numpy().tobytes())
    assert at > 0
    data[at + 500] ^= 0x01  # one bit of one weight: the zip and the pickle stay readable
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["step"] == 3
    with pytest.raises(UserError, match="last.pt.*content check failed"):
        ckpt.load_checkpoint(path)


def test_damaged_checkpoints_are_passed_over(tmp_path):
    for step in (2, 4):
        ckpt.save_checkpoint(tmp_path, fake_state(step), step=step, keep_last=3)
    assert ckpt.latest_checkpoint(tmp_path)[0] == tmp_path / "last.pt"
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated
    with pytest.warns(ckpt.CheckpointWarning, match="last.pt.*truncated.*step-000004.pt"):
        path, state = ckpt.latest_checkpoint(tmp_path)
    assert (path.name, state["step"]) == ("step-000004.pt", 4)
    (tmp_path / "step-000004.pt").write_bytes(b"")
    with pytest.warns(ckpt.CheckpointWarning):
        assert ckpt.latest_checkpoint(tmp_path)[1]["step"] == 2
    (tmp_path / "step-000002.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match="no complete checkpoint"):
        ckpt.latest_checkpoint(tmp_path)


def test_a_numbered_file_newer_than_last_wins(tmp_path):
    """Killed between writing step-000006.pt and last.pt: the numbered file is the newest."""
    ckpt.save_checkpoint(tmp_path, fake_state(4), step=4)
    older = (tmp_path / "last.pt").read_bytes()
    ckpt.save_checkpoint(tmp_path, fake_state(6), step=6)
    (tmp_path / "last.pt").write_bytes(older)
    path, state = ckpt.latest_checkpoint(tmp_path)
    assert (path.name, state["step"]) == ("step-000006.pt", 6)


@pytest.mark.slow
def test_resume_passes_over_a_truncated_checkpoint(data, tmp_path, reference):
    run = train(tiny(data, tmp_path / "run", steps=4))
    for name in ("last.pt", "step-000004.pt"):
        (run / name).write_bytes((run / name).read_bytes()[:1000])
    with pytest.warns(ckpt.CheckpointWarning, match="resuming from .*step-000002.pt"):
        train(tiny(data, run, steps=4), resume=True)
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["loss"] for r in records] == [r["loss"] for r in reference[:4]]


def test_resume_refuses_other_videos_and_takes_the_same_ones_moved(data, tmp_path):
    # The clip stream is the corpus's: other videos under --data would read other clips than
    # the run's, silently. The same videos in a moved folder are the same stream.
    from pathlib import Path

    run = train(tiny(data, tmp_path / "run", steps=1))
    fewer = Path(shutil.copytree(data, tmp_path / "fewer"))
    shutil.rmtree(sorted(p for p in fewer.iterdir() if p.is_dir())[-1])
    with pytest.raises(UserError, match=r"not the ones this run was trained on \(4 videos then, "
                                        r"3 now"):
        train(tiny(fewer, run, steps=2), resume=True)
    moved = Path(shutil.copytree(data, tmp_path / "moved"))
    train(tiny(moved, run, steps=2), resume=True)
    assert [r["step"] for r in read_metrics(run)] == [1, 2]


def test_resume_without_a_checkpoint_is_a_user_error(data, tmp_path):
    with pytest.raises(UserError, match="no complete checkpoint"):
        train(tiny(data, tmp_path, steps=1), resume=True)


# Saves on a timer ----------------------------------------------------------------------------


def test_save_minutes_refreshes_last_between_numbered_saves(data, tmp_path, monkeypatch):
    saves = []
    real = ckpt.save_checkpoint

    def record(run_dir, state, step, keep_last=3, numbered=True, best=False):
        saves.append((step, numbered))
        return real(run_dir, state, step, keep_last, numbered, best)

    monkeypatch.setattr(ckpt, "save_checkpoint", record)
    train(tiny(data, tmp_path, steps=3, save_every=100, save_minutes=1e-9))
    assert saves == [(1, False), (2, False), (3, True)]
    saves.clear()
    shutil.rmtree(tmp_path)
    train(tiny(data, tmp_path, steps=3, save_every=100, save_minutes=0))
    assert saves == [(3, True)]
