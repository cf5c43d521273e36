"""SIGTERM and SIGHUP stop `lipizzaner run` as Ctrl-C does, and say which signal it was.

`timeout`, CI runners, systemd and `docker stop` send SIGTERM; a closed terminal sends
SIGHUP. Each becomes `Stopped` in the main thread, so the launcher's cleanup (every cell
stopped at a checkpoint) runs whatever stopped it, and the command exits 128 + the
signal's number, as a shell reports a process killed by it (130 Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """The command was asked to stop by `signum`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGHUP raise `Stopped`, once; later ones are ignored, so the
    cleanup that the first one started is not cut short."""

    def stop(signum: int, frame: FrameType | None) -> None:
        for handled in HANDLED:
            signal.signal(handled, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {handled: signal.signal(handled, stop) for handled in HANDLED}
    try:
        yield
    except KeyboardInterrupt:
        raise Stopped(signal.SIGINT) from None
    finally:
        for handled, handler in previous.items():
            signal.signal(handled, handler)
