"""What happens when a cell stops: one pure rule table for local processes and for pods.

Both executors (the local launcher and the operator) ask `judge` about every cell that
stopped, and carry out its verdict their own way (restart a process, recreate a pod).
The rules, first match wins (like a Job's `podFailurePolicy`):

| how the cell stopped | verdict | counts toward `maxRestartsPerCell` |
| --- | --- | --- |
| exit code 0 | succeeded | - |
| exit code 2 (a configuration it cannot run) | the run fails at once | - |
| disrupted: preempted, evicted, its node lost, its pod gone | restart from its checkpoint | no |
| any other exit code, or none known | restart from its checkpoint | yes |
| ... past `maxRestartsPerCell` restarts | give it up while under `maxFailedCells`; else fail | - |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lipizzaner_core.contract import ExitCode

Action = Literal["succeeded", "restart", "give-up", "fail"]


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str = ""  # a status / Event reason: CellFailed, BadConfiguration, CellDisrupted
    message: str = ""  # what happened, to finish "cell 3 (row 0, col 3) ..."
    counted: bool = True  # a restart that counts toward maxRestartsPerCell


def judge(
    exit_code: int | None,
    restarts: int,
    limit: int,
    disruption: str = "",
    given_up: int = 0,
    may_give_up: int = 0,
    refusal: str = "",
) -> Verdict:
    """The verdict on a cell that stopped with `exit_code` (None: none is known) or was
    `disruption` (why, when it was: preempted, evicted, node lost, pod gone), after
    `restarts` counted restarts under a `limit`, with `given_up` cells already given up of
    the `may_give_up` (maxFailedCells) the run allows; `refusal`: the cell's own reason for
    an exit 2, when it said one.
    """
    if exit_code == ExitCode.OK and not disruption:
        return Verdict("succeeded")
    if exit_code == ExitCode.BAD_INPUT:
        said = f"rejected its configuration (exit code 2){': ' + refusal if refusal else ''}"
        return Verdict("fail", "BadConfiguration", said)
    if disruption:
        return Verdict("restart", "CellDisrupted", f"was disrupted ({disruption})", counted=False)
    what = "failed (no exit code)" if exit_code is None else f"failed (exit code {exit_code})"
    if restarts < limit:
        return Verdict("restart", "CellRestarted", what)
    past = (
        f"{what} after {restarts} restarts, the limit of "
        f"spec.failurePolicy.maxRestartsPerCell ({limit})"
    )
    if given_up < may_give_up:
        return Verdict(
            "give-up",
            "CellGivenUp",
            f"{past}; given up ({given_up + 1} of spec.failurePolicy.maxFailedCells "
            f"{may_give_up}), the others go on without it",
        )
    return Verdict("fail", "CellFailed", past)
