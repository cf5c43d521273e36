"""What one pass decides: the pods to create, delete, force-delete or release, the
Events to post (`aggregated`: many of a kind said as one), and the run's new status.
Plain values, filled in by `reconcile.py` and `cells.py`, carried out by the handlers."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from lipizzaner_core.placement import cells_named
from lipizzaner_core.spec import LipizzanerRun
from lipizzaner_core.status import RunStatus

from lipizzaner_operator.names import pod_group


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    cell: int | None = None  # the cell it is about, if one


# More Events than this of one reason in one pass are said as one (a preempted 32x32 grid
# is one Event, not 1,024).
EVENTS_OF_A_KIND = 3


def aggregated(events: list[Event]) -> list[Event]:
    """The pass's Events, those of one reason about more than EVENTS_OF_A_KIND cells
    said once: the cells named in spans, with the first one's message as an example."""
    about: dict[tuple[str, str], list[Event]] = {}
    for event in events:
        if event.cell is not None:
            about.setdefault((event.type, event.reason), []).append(event)
    many = {kind for kind, said in about.items() if len(said) > EVENTS_OF_A_KIND}
    kept = [e for e in events if e.cell is None or (e.type, e.reason) not in many]
    for kind in many:
        said = about[kind]
        cells = cells_named(sorted(e.cell for e in said if e.cell is not None))
        message = f"{len(said)} {cells.split(' ', 1)[0]} ({cells}): {said[0].message}; ..."
        kept.append(replace(said[0], message=message, cell=None))
    return kept


@dataclass
class Decision:
    status: RunStatus
    create: list[int] = field(default_factory=list)
    delete: list[int] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    assemble: bool = False  # every cell succeeded: build the ensemble, then call `succeed`
    search: bool = False  # with `assemble`: then create the ensemble search's Job instead
    searched: bool = False  # the search's Job completed: read its ensemble, then `succeed`
    delete_run: bool = False  # ttlSecondsAfterFinished has passed
    release: list[int] = field(default_factory=list)  # pods to mark not retriable (Kueue)
    force_delete: list[int] = field(default_factory=list)  # pods stuck on a lost node


def by_pods(run: LipizzanerRun, decision: Decision) -> Decision:
    """The cells to create, delete or release, as their pods' first cells, each pod once."""
    for name in ("create", "delete", "release", "force_delete"):
        cells = getattr(decision, name)
        setattr(decision, name, list(dict.fromkeys(pod_group(run, c).start for c in cells)))
    return decision
