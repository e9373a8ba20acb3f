"""Graceful stop on SIGTERM / SIGUSR1 (SLURM preemption, time limits) and a first Ctrl-C: finish
the step, save, exit 0. A second Ctrl-C aborts at once (KeyboardInterrupt), as users expect.

A handler only raises a flag; the loop polls it once per optimizer step through a max-all-reduce so
that every rank stops after the same step even when only some ranks got the signal, and an
evaluation reads it at every batch fetch, in the all-reduce that fetch already makes
(agreement.agreed), so a long evaluation is abandoned at the same batch on every rank. The DataLoader
workers ignore these signals while their rank lives (data.consumer.ignore_stop_signals): the rank
still needs them for the step it finishes.
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequest:
    """Remembers the first stop signal received; restores the previous handlers on `close()`."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
                 first_ctrl_c: str = "stopping after this step and saving a checkpoint; press Ctrl-C again to "
                                     "abort without saving") -> None:
        self.signum = 0  # 0 until a stop signal arrives
        self._first_ctrl_c = first_ctrl_c  # what a first Ctrl-C will do, told to the user
        self._interrupted = False  # a first Ctrl-C was pressed
        self._previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be installed from the main thread (e.g. not inside a notebook worker)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            if self._interrupted:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
            self._interrupted = True
            print(f"Ctrl-C: {self._first_ctrl_c}", file=sys.stderr, flush=True)
        if not self.signum:
            self.signum = int(signum)

    @property
    def requested(self) -> bool:
        return self.signum != 0

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum else None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
