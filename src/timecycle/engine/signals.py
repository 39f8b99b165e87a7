"""Stop requests: SIGTERM and SIGUSR1 finish the current step, save, and exit with 75.

    with stop_on_signals() as stop:            # installs the handlers, restores them after
        outcome = run_training(config, stop=stop)
    if outcome.stopped:
        ...                                    # `timecycle train` exits with EXIT_STOPPED

Schedulers warn a job before they kill it: SLURM sends SIGTERM on preemption and scancel
(`KillWait`, 30 s by default, before SIGKILL) and, with `#SBATCH --signal=USR1@120`, SIGUSR1
two minutes before the time limit; Kubernetes sends SIGTERM (then SIGKILL after the grace
period); torchrun forwards a SIGTERM it receives to its workers and kills them 30 s later.
The handler only records the request; the training loop looks at it after every step, and in
a distributed run all ranks agree on it first (one all-reduce), so every rank stops after the
same step and none is left waiting in a collective. Ctrl-C (SIGINT) still stops at once.

The request is recorded the moment the signal arrives, even while the main thread waits in a
collective or a CUDA synchronisation (where Python runs no handler until the wait ends): the
signal's C-level handler writes to a wakeup socket that a thread reads. So rank 0, evaluating
while the others wait for it, can learn of a request sent to them alone
(engine/distributed.shared_stop) and cut its evaluation short.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator

# sysexits.h EX_TEMPFAIL, "temporary failure; the user is invited to retry": the run stopped
# on request after saving a checkpoint; `timecycle train --out RUN --resume` continues it.
EXIT_STOPPED = 75

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def not_ignored(signals) -> tuple[signal.Signals, ...]:
    """The signals whose disposition is not SIG_IGN. A signal ignored when the command starts
    stays ignored, as the shell means it: `cmd &` in a script ignores SIGINT so that a Ctrl-C
    meant for the terminal's foreground job does not reach background ones (POSIX, the shell's
    asynchronous lists); `nohup` and supervisors ignore others the same way."""
    return tuple(sig for sig in signals if signal.getsignal(sig) is not signal.SIG_IGN)


class StopRequest(threading.Event):
    """A threading.Event set by a stop signal; `signal_name` names the first one received."""

    def __init__(self) -> None:
        super().__init__()
        self.signal_name: str | None = None


@contextlib.contextmanager
def stop_on_signals(signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
                    announce: str | None = "timecycle") -> Iterator[StopRequest]:
    """Handlers that set the yielded StopRequest, for the duration of the block.

    announce: a prefix for the line written to stderr when a signal arrives (None: silent).
    Outside the main thread Python cannot install handlers: the request is then never set.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def record(signum: int) -> None:
        if stop.signal_name is None:
            stop.signal_name = signal.Signals(signum).name
        stop.set()

    def handler(signum: int, frame) -> None:  # runs late if the main thread waits in C
        record(signum)

    def watch(reader: socket.socket) -> None:  # sees each signal as it arrives
        numbers = {int(sig) for sig in signals}
        while data := reader.recv(64):  # b"" once the block closes the writing end
            for signum in filter(numbers.__contains__, data):
                record(signum)
                if announce:
                    name = signal.Signals(signum).name
                    os.write(2, f"{announce}: {name} received: finishing the step, then "
                                "saving\n".encode())

    signals = not_ignored(signals)
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    reader, writer = socket.socketpair()
    writer.setblocking(False)  # set_wakeup_fd requires it: a signal must never block
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, args=(reader,), name="timecycle-signals",
                               daemon=True)
    watcher.start()
    try:
        yield stop
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, old in previous.items():
            signal.signal(sig, old)
        writer.close()
        watcher.join(timeout=5)
        reader.close()
