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
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

# sysexits.h EX_TEMPFAIL, "temporary failure; the user is invited to retry": the run stopped
# on request after saving a checkpoint; `timecycle train --out RUN --resume` continues it.
EXIT_STOPPED = 75

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


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

    def handler(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if stop.signal_name is None:
            stop.signal_name = name
        if announce:  # os.write: print() could re-enter a write the handler interrupted
            os.write(2, f"{announce}: {name} received: finishing the step, then saving\n".encode())
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
