"""SIGINT/SIGTERM ask the loop to stop after the current step and save a checkpoint.

A second SIGINT stops at once (KeyboardInterrupt), for a user who does not want to wait.
INTERRUPT_EXIT is the exit status of each way a run can stop early (train, tune, retrain use it).
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

# The exit status of a run stopped by a signal (128 + its number, as a shell reports it) or by a stop callback.
INTERRUPT_EXIT = {"SIGINT": 130, "SIGTERM": 143, "stop": 1}


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def handle(self, signum, frame) -> None:
        if self.signal_name == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name


@contextmanager
def stop_on_signals():
    request = StopRequest()
    previous = {sig: signal.signal(sig, request.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
