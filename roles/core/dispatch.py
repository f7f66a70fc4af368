"""Pure: the mayor's dispatch order, and the rules of bead dependencies ("needs").

Layer: roles/core (decisions without I/O). The store reads the queued slings, their beads
and their beads' needs; :func:`plan` decides which slings may be dispatched, in which
order, and why the others wait; :func:`find_cycle` decides whether a new need would close
a cycle.

The rules:

- A need is *met* when the needed bead is ``closed`` (its work merged, or a person closed
  it). A sling whose bead has an unmet need is not dispatchable; it waits, and says on
  what. A need that cannot close without a person (its bead ``blocked``, its merge request
  rejected, its polecat escalated) makes the sling *blocked*: it still waits, and the
  reason names the need and why.
- Ready slings go by *effective priority*, then FIFO (the time the sling was queued, then
  the bead's creation time, then the sling's id: a total order, so the output is
  deterministic and does not depend on the input's order).
- Anti-starvation: a sling's effective priority is its bead's priority (0 most urgent …
  4) less one level per :data:`AGE_STEP` seconds it has waited in the queue, never below
  0. So a ready sling of priority ``p`` competes as priority 0 after at most
  ``p * AGE_STEP`` seconds (40 minutes for priority 4), and from then on only slings
  queued before it go first: no stream of new urgent work starves it beyond that bound.
  The time counts from the sling's queueing, also while it waited for its needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

#: Seconds of waiting that raise a queued sling's effective priority by one level.
AGE_STEP: Final = 600.0

#: A needed bead's status that meets the need.
MET: Final = "closed"


@dataclass(frozen=True)
class Need:
    """A bead another bead needs: its id, status and, when a person must act before it
    can close (blocked, rejected, escalated), why."""

    bead: str
    status: str
    blocked: str | None = None

    @property
    def met(self) -> bool:
        return self.status == MET


@dataclass(frozen=True)
class Queued:
    """A queued sling as the planner sees it."""

    sling: int
    bead: str
    rig: str
    queued_at: float
    priority: int
    created_at: float
    needs: tuple[Need, ...] = ()


@dataclass(frozen=True)
class Waiting:
    """A queued sling that may not be dispatched yet, and why."""

    sling: int
    bead: str
    rig: str
    #: The unmet needs (ids), in id order.
    needs: tuple[str, ...]
    #: One line: ``waiting for web-abc (in_review), api-def (open)`` or
    #: ``blocked on web-abc: merge request ... rejected: gate test failed``.
    reason: str
    #: A need that will not close without a person.
    blocked: bool


@dataclass(frozen=True)
class Plan:
    """The dispatchable slings in order, then those that wait (in the same order)."""

    ready: tuple[Queued, ...]
    waiting: tuple[Waiting, ...]

    def positions(self) -> dict[int, int]:
        """Each sling's 1-based place in the queue: the ready ones first, in order."""
        order = [q.sling for q in self.ready] + [w.sling for w in self.waiting]
        return {sling: i for i, sling in enumerate(order, start=1)}


def effective_priority(queued: Queued, now: float, age_step: float = AGE_STEP) -> int:
    """The bead's priority less one level per ``age_step`` seconds waited, at least 0."""
    waited = max(0.0, now - queued.queued_at)
    steps = int(waited // age_step) if age_step > 0 else 0
    return max(0, queued.priority - steps)


def order_key(queued: Queued, now: float,
              age_step: float = AGE_STEP) -> tuple[int, float, float, int]:
    """Sort key of a ready sling: effective priority, then queue time, creation, id."""
    return (effective_priority(queued, now, age_step), queued.queued_at, queued.created_at,
            queued.sling)


def unmet(needs: Iterable[Need]) -> list[Need]:
    """The needs not met yet, in id order."""
    return sorted((n for n in needs if not n.met), key=lambda n: n.bead)


def waiting_reason(needs: Iterable[Need]) -> str | None:
    """Why a bead with these needs waits (None when every need is met)."""
    left = unmet(needs)
    if not left:
        return None
    blocked = [n for n in left if n.blocked]
    if blocked:
        return "; ".join(f"blocked on {n.bead}: {n.blocked}" for n in blocked)
    return "waiting for " + ", ".join(f"{n.bead} ({n.status})" for n in left)


def plan(queue: Iterable[Queued], now: float, age_step: float = AGE_STEP) -> Plan:
    """Which queued slings may be dispatched, in which order, and why the others wait."""
    ordered = sorted(queue, key=lambda q: order_key(q, now, age_step))
    ready: list[Queued] = []
    waiting: list[Waiting] = []
    for queued in ordered:
        reason = waiting_reason(queued.needs)
        if reason is None:
            ready.append(queued)
            continue
        left = unmet(queued.needs)
        waiting.append(Waiting(sling=queued.sling, bead=queued.bead, rig=queued.rig,
                               needs=tuple(n.bead for n in left), reason=reason,
                               blocked=any(n.blocked for n in left)))
    return Plan(ready=tuple(ready), waiting=tuple(waiting))


def find_cycle(edges: Mapping[str, Sequence[str]], bead: str, need: str) -> list[str] | None:
    """The cycle that adding ``bead needs need`` would close, or None.

    ``edges`` maps a bead to the beads it needs. The cycle is returned as the path from
    ``bead`` back to itself: ``[bead, need, ..., bead]`` (``[bead, bead]`` for a bead
    needing itself). The search is breadth-first over sorted neighbours, so the named
    cycle is a shortest one, and always the same one.
    """
    if need == bead:
        return [bead, bead]
    parent: dict[str, str] = {}
    frontier = [need]
    seen = {need}
    while frontier:
        nxt: list[str] = []
        for node in frontier:
            for onward in sorted(edges.get(node, ())):
                if onward == bead:
                    path = [node]
                    while path[-1] != need:
                        path.append(parent[path[-1]])
                    return [bead, *reversed(path), bead]
                if onward not in seen:
                    seen.add(onward)
                    parent[onward] = node
                    nxt.append(onward)
        frontier = nxt
    return None


def cycle_text(cycle: Sequence[str]) -> str:
    """``web-a -> web-b -> web-a``."""
    return " -> ".join(cycle)
