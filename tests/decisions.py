"""What the pure decision tests share: a small run, its pods, and one pass of `decide`."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from conftest import TINY_RING
from lipizzaner_core.spec import parse_run
from lipizzaner_operator.observed import PodView
from lipizzaner_operator.reconcile import decide

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def make_run(**spec):
    manifest = copy.deepcopy(TINY_RING)
    manifest["spec"].update(spec)
    return parse_run(manifest)


def pods(phase="Running"):
    return {i: PodView(cell=i, phase=phase, ip=f"10.0.0.{i}") for i in range(4)}


def step(run, status, live, progress=None, now=T0):
    return decide(run, 1, status, live, progress or {}, now)


def condition(status, kind):
    return next(c for c in status.conditions if c.type == kind)
