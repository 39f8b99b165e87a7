"""The `timecycle` command line: thin parsers over library functions.

    timecycle propagate davis --root R --protocol crw --encoder resnet18 --out DIR
    timecycle evaluate davis --root R --results DIR
    timecycle track VIDEO --mask FIRST.png --points POINTS.csv --out DIR
    timecycle train --data DIR --out RUN --preset small
    timecycle demo

A user's mistake (`UserError`) is reported on one line with exit status 2; anything else is a
bug and keeps its traceback. A message never lands on a progress bar's line: open bars are
closed first. timecycle's own warnings (a skipped video, a passed-over checkpoint) print as one
`timecycle: warning:` line, without Python's file, line number and source line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from timecycle import __version__
from timecycle.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors, like every other error of the command (argparse
    prints the whole usage first: 11-20 lines for `train`). Subcommands inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from timecycle.cli import demo, evaluate, propagate, report, track, train, visualize

    parser = _Parser(
        prog="timecycle",
        description="Learn correspondence from the cycle-consistency of time; propagate labels through video.",
    )
    parser.add_argument("--version", action="version", version=f"timecycle {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (propagate, evaluate, track, train, demo, report, visualize):
        module.register(sub)
    return parser


_PACKAGE = str(Path(__file__).resolve().parents[1])


def _ours(category: type[Warning], filename: str) -> bool:
    from timecycle.data.video import BadVideoWarning

    return issubclass(category, BadVideoWarning) or str(filename).startswith(_PACKAGE)


def _close_progress_bars() -> None:
    """Close every tqdm bar still open (an error skipped its close) and end the line, so that
    what is printed next starts on a fresh line."""
    from tqdm import tqdm

    bars = sorted(getattr(tqdm, "_instances", ()), key=lambda b: -abs(b.pos))  # innermost first
    for bar in bars:
        bar.close()
    if bars:  # nested bars leave the cursor mid-line (after moving it up): start a new one
        sys.stderr.write("\n")
        sys.stderr.flush()


def _one_line_warnings(default):
    """A `warnings.showwarning` that prints timecycle's warnings as one line and passes the
    others to `default`."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if not _ours(category, filename):
            default(message, category, filename, lineno, file, line)
            return
        from tqdm import tqdm

        stream = file or sys.stderr
        with tqdm.external_write_mode(file=stream):  # lifts a bar off its line, redraws it
            print(f"timecycle: warning: {message}", file=stream, flush=True)
    return show


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a scheduler) during a command: raised in the main thread as
    Ctrl-C's KeyboardInterrupt is, so a command removes what it wrote the same way. `train`
    replaces it with its own handler: finish the step, save, exit 75 (engine/signals.py)."""


@contextlib.contextmanager
def _stop_on_interruptions():
    """SIGINT and SIGTERM for the whole command, start-up included: the first raises
    (KeyboardInterrupt, `Terminated`) so the command tidies up; one more while it tidies is
    only acknowledged, since an exception raised inside that tidying (or inside a lock's
    release) would leave a traceback and half-restored results; a third stops at once. A
    signal ignored when the command starts (a script's `cmd &`, nohup) stays ignored."""
    received: list[int] = []

    def handler(signum: int, frame) -> None:
        received.append(signum)
        if len(received) == 1:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        if len(received) == 2:  # os.write: print() could re-enter a write the signal cut
            os.write(2, b"timecycle: already stopping; one more signal stops at once, "
                        b"without tidying up\n")
            return
        os.write(2, b"timecycle: stopped at once, without tidying up\n")
        os._exit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # Python installs handlers from the main thread only
        return
    from timecycle.engine.signals import not_ignored

    previous = {sig: signal.signal(sig, handler)
                for sig in not_ignored((signal.SIGINT, signal.SIGTERM))}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _one_line(err: UserError) -> str:
    """The error's message. One raised in a DataLoader worker reaches the training process
    rebuilt around the worker's traceback ("Caught UserError in DataLoader worker process
    0. Original Traceback ..."), whose last line holds the message."""
    text = str(err)
    if "\n" in text and text.startswith("Caught UserError"):
        last = text.strip().splitlines()[-1]
        return last.split("UserError: ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    with _stop_on_interruptions():  # first: a Ctrl-C while the imports run is one line too
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded beside results
        with warnings.catch_warnings():  # the one-line format only while the command runs
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            return int(args.run(args) or 0)
    except UserError as err:
        _close_progress_bars()
        print(f"timecycle: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Terminated:
        _close_progress_bars()
        print("timecycle: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        _close_progress_bars()
        print("timecycle: interrupted", file=sys.stderr)
        return 130
    except BaseException:
        _close_progress_bars()  # a bug's traceback also starts on its own line
        raise
