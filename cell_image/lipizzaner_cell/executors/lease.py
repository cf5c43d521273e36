"""One writer per output: the lease `lipizzaner run` holds on the run it trains.

`<output>/lease.json` names the holder (host, pid, start) and carries a heartbeat the
holder renews every HEARTBEAT_SECONDS. A second `lipizzaner run` on the same output is
refused while the holder lives: on this host while its pid is alive, elsewhere while its
heartbeat is fresh. A stale lease (its process gone, or silent for STALE_SECONDS) or a
damaged one is taken over, and that is said. It works on any storage, object stores too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lipizzaner_core.storage import DamagedFile, Storage

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0


class LeaseHeld(RuntimeError):
    """Another live `lipizzaner run` trains this output."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's, and alive
        return True
    return True


def holder_state(holder: dict[str, Any], host: str, now: float) -> str:
    """'live' or 'stale': alive by its pid on this host, by its heartbeat elsewhere."""
    if holder.get("host") == host and isinstance(holder.get("pid"), int):
        return "live" if pid_alive(holder["pid"]) else "stale"
    heartbeat = holder.get("heartbeat")
    fresh = isinstance(heartbeat, (int, float)) and now - heartbeat < STALE_SECONDS
    return "live" if fresh else "stale"


def describe(holder: dict[str, Any]) -> str:
    return (
        f"lipizzaner run on host {holder.get('host')}, pid {holder.get('pid')}, "
        f"since {holder.get('started')}"
    )


@dataclass
class Lease:
    storage: Storage
    uri: str
    token: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Hold the lease, or LeaseHeld naming the live holder; keeps it fresh until
        `release`."""
        host, now = socket.gethostname(), time.time()
        try:
            holder = self.storage.read_json(self.uri) if self.storage.exists(self.uri) else None
        except DamagedFile as exc:
            log.warning("%s; taking the lease over", exc)
            holder = None
        if isinstance(holder, dict):
            if holder_state(holder, host, now) == "live":
                raise LeaseHeld(
                    f"{self.uri.rsplit('/', 1)[0]} is being trained by {describe(holder)} "
                    f"({self.uri}); stop that run first"
                )
            log.warning("taking over the stale lease of %s", describe(holder))
        self.token = uuid.uuid4().hex
        self._holder = {
            "host": host,
            "pid": os.getpid(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "token": self.token,
        }
        self.renew()
        self._stop = threading.Event()
        threading.Thread(target=self._beat, name="lease heartbeat", daemon=True).start()

    def renew(self) -> None:
        with self._lock:
            if self.token:
                self.storage.write_json(self.uri, {**self._holder, "heartbeat": time.time()})

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.renew()
            except OSError as exc:  # a storage hiccup: the next beat tries again
                log.warning("could not renew the lease %s: %s", self.uri, exc)

    def release(self) -> None:
        """Give the lease up, if it is still this run's."""
        if not self.token:
            return
        self._stop.set()
        with self._lock:
            self._give_back()

    def _give_back(self) -> None:
        # Gone or damaged: nothing of ours to give back, and nothing to stop for.
        with suppress(OSError, DamagedFile, AttributeError):
            if self.storage.read_json(self.uri).get("token") == self.token:
                self.storage.remove_tree(self.uri)
        self.token = ""
