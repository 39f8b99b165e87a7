"""Signals during a command: SIGTERM and Ctrl-C remove what it wrote; a second signal while it
tidies up is only acknowledged; a signal ignored at start stays ignored."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import run_cli

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
    code, _, err = run_cli(capture, *["propagate", "davis", "--root", root, "--encoder", "pixel",
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
    code, _, err = run_cli(capsys, *["evaluate", "davis", "--help"])
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
        code, _, err = run_cli(capsys, *["propagate", "davis", "--root", synthetic_davis, "--encoder",
                                     "pixel", "--device", "cpu", "--quiet", "--out", tmp_path / "o"])
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 0 and err == "" and calls and set(calls) == {signal.SIG_IGN}
    assert (tmp_path / "o" / "propagation.json").is_file()
