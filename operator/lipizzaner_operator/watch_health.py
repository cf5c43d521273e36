"""Whether kopf's watch of LipizzanerRuns still hears the API server.

A watch stream can hang without an error (nolar/kopf#585, #957, #996, #1276): the operator
then never sees a new run. kopf keeps a timer for each run its watch has delivered, so the
timers tell what the watch has heard; a thread of its own lists the runs now and then and
compares, and the liveness probe only reads the verdict (it answers at once, even while
the API server does not). The watch counts as in step when it has heard of
every run the API server lists; the probe fails once it has not been in step for longer
than the bound, whether runs are missing or the API server cannot be listed, and the
kubelet restarts the operator.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

log = logging.getLogger(__name__)


class WatchHealth:
    def __init__(self, bound_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.bound_seconds = bound_seconds
        self._clock = clock
        self._heard: set[str] = set()  # the uids of the runs the watch has told of
        self._in_step_at = clock()
        self._missing = 0  # runs listed but never heard of, at the last comparison
        self._lock = threading.Lock()  # timers and probes run in kopf's threads

    def heard(self, uid: str) -> None:
        """The watch has delivered the run `uid` (its timer fired)."""
        with self._lock:
            self._heard.add(uid)
            if not self._missing:
                self._in_step_at = self._clock()

    def compare(self, listed: set[str]) -> None:
        """The API server's own list of run uids, now."""
        with self._lock:
            self._missing = len(listed - self._heard)
            if not self._missing:
                self._heard &= listed  # deletions the watch missed are forgotten
                self._in_step_at = self._clock()

    def problem(self) -> str | None:
        """Why the operator should be restarted, in a line; None while the watch is fine."""
        with self._lock:
            behind = self._clock() - self._in_step_at
            if behind <= self.bound_seconds:
                return None
            if self._missing:
                what = f"has not heard of {self._missing} run(s) that the API server lists"
            else:
                what = "could not be checked against the API server"
            return f"the watch of LipizzanerRuns {what} for {behind:.0f} s"

    def seconds_in_step(self) -> float:
        """How long ago the watch was last known to be in step."""
        with self._lock:
            return self._clock() - self._in_step_at

    def start_checking(self, listed: Callable[[], set[str]]) -> threading.Event:
        """Compare with `listed()` (the API server's run uids) every third of the bound, at
        most every 30 s, in a thread; set the returned event to stop it."""
        stop = threading.Event()
        period = min(self.bound_seconds / 3, 30.0)

        def check() -> None:
            while not stop.wait(period):
                try:
                    self.compare(listed())
                except (ApiException, HTTPError, OSError) as exc:
                    log.warning("could not list the runs to check the watch: %s", exc)

        threading.Thread(target=check, name="watch-check", daemon=True).start()
        return stop
