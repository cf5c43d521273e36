"""What happens when a cell stops: one pure rule for local processes and for pods.

Both executors (the local launcher and the operator) ask `judge` about every cell that
stopped, and carry out its verdict their own way (restart a process, recreate a pod).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lipizzaner_core.contract import ExitCode

Action = Literal["succeeded", "restart", "fail"]


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str = ""  # for a failure: CellFailed or BadConfiguration (the status reasons)
    message: str = ""  # what happened, to finish "cell 3 (row 0, col 3) ..."


def judge(exit_code: int | None, restarts: int, limit: int, vanished: bool = False) -> Verdict:
    """The verdict on a cell that stopped with `exit_code` (None: none is known), or that
    `vanished` (its pod deleted, its node lost), after `restarts` restarts, under a restart
    `limit`.

    0 is success; 2 is a configuration the cell cannot run, which no restart mends; any
    other ending restarts the cell from its checkpoint until the limit is reached.
    """
    if exit_code == ExitCode.OK and not vanished:
        return Verdict("succeeded")
    if exit_code == ExitCode.BAD_INPUT:
        return Verdict("fail", "BadConfiguration", "rejected its configuration (exit code 2)")
    if vanished:
        what = "lost its pod"
    elif exit_code is None:
        what = "failed (no exit code)"
    else:
        what = f"failed (exit code {exit_code})"
    if restarts >= limit:
        return Verdict(
            "fail",
            "CellFailed",
            f"{what} after {restarts} restarts, the limit of "
            f"spec.failurePolicy.maxRestartsPerCell ({limit})",
        )
    return Verdict("restart", "", what)
