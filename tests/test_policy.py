"""The one rule table both executors apply to a cell that stopped (`policy.py`)."""

from __future__ import annotations

import pytest
from lipizzaner_core.policy import judge

LIMIT = 3


@pytest.mark.parametrize(
    ("stop", "restarts", "given_up", "may_give_up", "action", "reason", "counted"),
    [
        ({"exit_code": 0}, 0, 0, 0, "succeeded", "", True),
        ({"exit_code": 2}, 0, 0, 1, "fail", "BadConfiguration", True),
        ({"exit_code": 2, "disruption": "Evicted"}, 0, 0, 0, "fail", "BadConfiguration", True),
        (
            {"exit_code": 137, "disruption": "PreemptionByScheduler"},
            LIMIT,
            0,
            0,
            "restart",
            "CellDisrupted",
            False,
        ),
        (
            {"exit_code": 0, "disruption": "DeletionByPodGC"},
            0,
            0,
            0,
            "restart",
            "CellDisrupted",
            False,
        ),
        (
            {"exit_code": None, "disruption": "its pod is gone"},
            9,
            0,
            0,
            "restart",
            "CellDisrupted",
            False,
        ),
        ({"exit_code": 1}, LIMIT - 1, 0, 0, "restart", "CellRestarted", True),
        ({"exit_code": None}, 0, 0, 0, "restart", "CellRestarted", True),
        ({"exit_code": 1}, LIMIT, 0, 1, "give-up", "CellGivenUp", True),
        ({"exit_code": 1}, LIMIT, 1, 1, "fail", "CellFailed", True),
        ({"exit_code": 137}, LIMIT, 0, 0, "fail", "CellFailed", True),
    ],
)
def test_the_first_matching_rule_decides(
    stop, restarts, given_up, may_give_up, action, reason, counted
):
    verdict = judge(
        stop["exit_code"],
        restarts,
        LIMIT,
        stop.get("disruption", ""),
        given_up=given_up,
        may_give_up=may_give_up,
    )
    assert (verdict.action, verdict.reason, verdict.counted) == (action, reason, counted)


def test_verdicts_say_what_happened_in_words():
    assert judge(1, 3, 3).message == (
        "failed (exit code 1) after 3 restarts, the limit of "
        "spec.failurePolicy.maxRestartsPerCell (3)"
    )
    assert (
        "given up (1 of spec.failurePolicy.maxFailedCells 2)"
        in judge(1, 3, 3, given_up=0, may_give_up=2).message
    )
    assert judge(None, 0, 3, "Evicted: low on memory").message == (
        "was disrupted (Evicted: low on memory)"
    )
