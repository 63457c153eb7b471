"""Ctrl-C during training: the first SIGINT asks the loop to stop after the current step (the trainer then saves a
checkpoint of that step and raises `RunInterruptedError`, exit code 130); a second one raises `KeyboardInterrupt` at
once (what it interrupts leaves only temporaries, removed at the next start)."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("loraforge.train")


class StopOnCtrlC:
    """`with StopOnCtrlC() as ctrl_c: ... if ctrl_c.requested: ...`. The handler is installed only in the main thread
    (Python delivers signals there; elsewhere Ctrl-C keeps its usual effect) and the previous one is restored on
    exit."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopOnCtrlC":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: finishing this step, then saving a checkpoint and stopping (Ctrl-C again stops at once; "
                    "the steps since the last checkpoint are then lost)")
