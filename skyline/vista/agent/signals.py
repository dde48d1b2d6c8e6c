"""The agent's signals: SIGTERM/SIGINT ask for a drain (a second one exits at once), SIGHUP
asks for a reload. The handlers only set flags; the supervision loop acts on them."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from skyline.vista import constants


@dataclass
class Requests:
    """What the signals asked for, read by the supervision loop."""

    stop: bool = False
    reload: bool = False
    signals: int = 0


class SignalHandlers:
    """``force_exit`` runs on the second stop signal, before the process exits with 1."""

    def __init__(self, force_exit: Callable[[], None]) -> None:
        self.requests = Requests()
        self.force_exit = force_exit

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.requests.signals += 1
        if self.requests.signals > 1:
            # Second signal: leave now (the caller kills the workers; their held items are
            # recovered by the next agent or by any worker once their leases expire).
            self.force_exit()
            os._exit(constants.EXIT_FAILURE)
        self.requests.stop = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.requests.reload = True
