"""SIGTERM/SIGINT during training: finish the current step, save, exit with the signal's status.

A first signal sets ``StopFlag.signum``; the loop checks it between steps (every rank at the
same steps, so that a torchrun job stops together), saves ``last.pth`` and exits with 143
(SIGTERM) or 130 (SIGINT). A second Ctrl-C aborts at once without saving. Loader workers (forked
processes) ignore the flag: the training process decides.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

__all__ = ["EXIT_STATUS", "StopFlag"]

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopFlag:
    """Installs SIGTERM/SIGINT handlers that ask the training loop to stop after a step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS.get(self.signum or signal.SIGTERM, 143)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a forked loader worker: the training process decides
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without saving
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after the current step "
              "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._pid = os.getpid()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
