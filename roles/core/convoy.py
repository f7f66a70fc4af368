"""Pure: a convoy's state from its beads, and which event a change of it is.

Layer: roles/core. A convoy is a named group of beads (possibly over several rigs) that
people follow as one piece of work ("has feature X landed?"). Its state is a function of
its beads alone, recomputed by the store in the transaction that changes a bead:

- ``landed``: it has beads and every one is ``closed`` (its work merged, or closed by hand);
- ``stuck``: otherwise, when a bead is ``blocked`` (its polecat escalated, or set by hand)
  or its newest merge request was rejected and nobody slung it again yet (the bead is
  ``open`` again), or a bead not closed needs (directly) a bead that is so held up, in
  the convoy or not; the first such bead in the convoy's order is named, with why;
- ``open``: everything else (a convoy with no beads is open: nothing landed).

Progress is ``closed/total``. :func:`change_kind` says which event one stored change is,
so that each change writes exactly one event, and no change (same state, same progress,
same stuck bead) writes none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

ConvoyStateName = Literal["open", "landed", "stuck"]
CONVOY_STATES: Final = ("open", "landed", "stuck")


@dataclass(frozen=True)
class BeadFacts:
    """What a convoy's state needs of one of its beads."""

    id: str
    status: str
    #: The bead's newest merge request was rejected (and the bead is not being worked again).
    rejected: bool = False
    reason: str | None = None
    #: The beads it needs (``bead_needs``), each with its own facts (their needs unused).
    needs: tuple[BeadFacts, ...] = ()


@dataclass(frozen=True)
class ConvoyState:
    """A convoy's state, its progress and, when stuck, the bead it is stuck on and why."""

    state: ConvoyStateName
    closed: int
    total: int
    stuck_bead: str | None = None
    stuck_reason: str | None = None

    @property
    def progress(self) -> str:
        """``4/7 merged``."""
        return f"{self.closed}/{self.total} merged"


def own_why(bead: BeadFacts) -> str | None:
    """Why this bead will not close without a person, or None."""
    if bead.status == "blocked":
        return f"blocked: {bead.reason}" if bead.reason else "blocked"
    if bead.status == "open" and bead.rejected:
        return f"rejected: {bead.reason}" if bead.reason else "rejected"
    return None


def stuck_why(bead: BeadFacts) -> str | None:
    """Why this bead holds its convoy up, or None when it does not: its own reason, else
    the first need (in the given order) that will not close without a person."""
    if bead.status == "closed":
        return None
    why = own_why(bead)
    if why is not None:
        return why
    for need in bead.needs:
        held = own_why(need)
        if held is not None:
            return f"needs {need.id}, {held}"
    return None


def convoy_state(beads: Sequence[BeadFacts]) -> ConvoyState:
    """The convoy's state for its beads (in the convoy's order): see the module docstring."""
    total = len(beads)
    closed = sum(1 for b in beads if b.status == "closed")
    if total and closed == total:
        return ConvoyState("landed", closed, total)
    for bead in beads:
        why = stuck_why(bead)
        if why is not None:
            return ConvoyState("stuck", closed, total, bead.id, why)
    return ConvoyState("open", closed, total)


ChangeKind = Literal["convoy_landed", "convoy_stuck", "convoy_progress"]


def change_kind(old: ConvoyState, new: ConvoyState) -> ChangeKind | None:
    """The one event a stored convoy moving from ``old`` to ``new`` writes, or None.

    Landing is ``convoy_landed``; becoming stuck, or stuck on another bead or for another
    reason, is ``convoy_stuck``; any other change (progress, total, leaving ``stuck`` or
    ``landed``) is ``convoy_progress``. The stuck reason alone changing (same bead) is a
    change too: people are told the new reason once.
    """
    if old == new:
        return None
    if new.state == "landed":
        return "convoy_landed" if old.state != "landed" else "convoy_progress"
    if new.state == "stuck" and (old.state != "stuck" or old.stuck_bead != new.stuck_bead
                                 or old.stuck_reason != new.stuck_reason):
        return "convoy_stuck"
    return "convoy_progress"
