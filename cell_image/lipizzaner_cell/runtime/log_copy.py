"""A cell's log, kept in the run's output too: `cells/<i>/logs/attempt-<k>.log`.

On Kubernetes a pod's log goes with the pod; this copy lets a failed run be read after
its pods are gone, one file per start of the cell. Object stores cannot append, so the
file is rewritten whole at each checkpoint and when the cell exits (lines after the last
save are lost only if the process is killed outright).
"""

from __future__ import annotations

import logging

from lipizzaner_core.storage import Storage


class OutputLog(logging.Handler):
    def __init__(self, storage: Storage, uri: str, formatter: logging.Formatter | None) -> None:
        super().__init__()
        self.storage, self.uri = storage, uri
        self.lines: list[str] = []
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def save(self) -> None:
        """Write every line so far; a storage error must not end the cell."""
        try:
            self.storage.write_bytes(self.uri, ("\n".join(self.lines) + "\n").encode())
        except Exception as exc:  # storage errors come in many types
            logging.getLogger(__name__).warning("could not keep the log at %s: %s", self.uri, exc)
