"""Pure: the polecat lifecycle as a state machine, and what each transition must do.

A polecat is ``spawning`` while the mayor builds it, ``working`` while its agent runs,
``done`` once ``gastown done`` recorded its merge request, ``merging`` while the
refinery holds it, ``stalled`` when its session died without ``done``, ``escalated``
when it asked for (or needs) a human, ``rejected`` when the merge queue refused its
branch. ``nuked`` is the end: worktree, branch and name gone.

``done`` is accepted whatever the interleaving: a fast agent may report before the mayor
marks it ``working`` (``spawning``), and a ``SessionStarted`` arriving after that is a
no-op. A person who fixed an ``escalated`` or ``rejected`` polecat's work by hand
re-submits it with ``done`` (completed work only): a new merge request.

:func:`transition` returns the new state and the effects to carry out, in order; the
caller (an adapter) performs them. The one invariant this module exists to protect:
no sequence of events reaches ``nuked`` unless the work landed (``merged``, or a nuke
that verified nothing is unmerged) or the user forced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

PolecatState = Literal["spawning", "working", "done", "merging", "stalled", "escalated",
                       "rejected", "nuked"]
POLECAT_STATES: Final[tuple[PolecatState, ...]] = (
    "spawning", "working", "done", "merging", "stalled", "escalated", "rejected", "nuked")

#: States whose agent session is (meant to be) running: they count against capacity.
ACTIVE_STATES: Final = frozenset({"spawning", "working", "stalled"})

Outcome = Literal["completed", "escalated", "deferred"]


@dataclass(frozen=True)
class SessionStarted:
    pass


@dataclass(frozen=True)
class SpawnFailed:
    reason: str


@dataclass(frozen=True)
class SessionDied:
    pass


@dataclass(frozen=True)
class Respawned:
    pass


@dataclass(frozen=True)
class GaveUp:
    reason: str


@dataclass(frozen=True)
class Done:
    outcome: Outcome
    #: The agent's own words (``gastown done --reason``), kept on the bead and the polecat.
    reason: str | None = None


@dataclass(frozen=True)
class MergeStarted:
    pass


@dataclass(frozen=True)
class Merged:
    pass


@dataclass(frozen=True)
class Rejected:
    reason: str


@dataclass(frozen=True)
class Nuke:
    """A nuke request; ``landed`` means git verified nothing unmerged and a clean tree."""

    force: bool = False
    landed: bool = False


Event = (SessionStarted | SpawnFailed | SessionDied | Respawned | GaveUp | Done | MergeStarted
         | Merged | Rejected | Nuke)


@dataclass(frozen=True)
class StopSession:
    pass


@dataclass(frozen=True)
class RemoveWorktree:
    pass


@dataclass(frozen=True)
class DeleteBranch:
    pass


@dataclass(frozen=True)
class ReleaseName:
    pass


@dataclass(frozen=True)
class SetBead:
    status: Literal["open", "hooked", "in_review", "closed", "blocked"]
    reason: str | None = None


Effect = StopSession | RemoveWorktree | DeleteBranch | ReleaseName | SetBead

_NUKE_EFFECTS: Final = (StopSession(), RemoveWorktree(), DeleteBranch(), ReleaseName())


@dataclass(frozen=True)
class Transition:
    state: PolecatState
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True)
class Refusal:
    """The event is not allowed in this state; ``reason`` is one line for the user."""

    reason: str


def transition(state: PolecatState, event: Event) -> Transition | Refusal:
    """The state after ``event`` in ``state`` and the effects to perform, or a refusal."""
    if state == "nuked":
        return Refusal("the polecat is already nuked")
    match event:
        case SessionStarted() if state == "spawning":
            return Transition("working")
        case SessionStarted():
            # The agent ran `done` (or more) before its spawn was marked finished.
            return Transition(state)
        case SpawnFailed(reason) if state == "spawning":
            return Transition("nuked", (*_NUKE_EFFECTS, SetBead("open", reason)))
        case SessionDied() if state == "working":
            return Transition("stalled")
        case Respawned() if state == "stalled":
            return Transition("working")
        case GaveUp(reason) if state in ("spawning", "stalled", "working"):
            return Transition("escalated", (SetBead("blocked", reason),))
        case Done(outcome, reason) if state in ("spawning", "working", "stalled"):
            if outcome == "completed":
                return Transition("done", (SetBead("in_review"),))
            if outcome == "escalated":
                return Transition("escalated",
                                  (SetBead("blocked", _by_polecat("escalated", reason)),))
            return Transition("done", (SetBead("open", _by_polecat("deferred", reason)),))
        case Done(outcome) if state in ("escalated", "rejected"):
            if outcome == "completed":  # fixed by hand: a new merge request
                return Transition("done", (SetBead("in_review"),))
            return Refusal(f"it is already {state}; to re-submit work fixed by hand, commit "
                           "it and run 'gastown done' (completed)")
        case MergeStarted() if state in ("done", "rejected"):
            return Transition("merging")
        case Merged() if state in ("done", "merging"):
            return Transition("nuked", (*_NUKE_EFFECTS, SetBead("closed", "merged")))
        case Rejected(reason) if state in ("done", "merging"):
            return Transition("rejected", (SetBead("open", reason),))
        case Nuke(force, landed):
            if state == "spawning" and not force:
                return Refusal("the polecat is still being created; retry, or use --force")
            if not (force or landed):
                return Refusal("its work has not landed")
            if force and not landed:
                return Transition("nuked", (*_NUKE_EFFECTS,
                                            SetBead("open", "its polecat was nuked")))
            return Transition("nuked", _NUKE_EFFECTS)
    return Refusal(f"{type(event).__name__} is not expected while {state}")


def _by_polecat(what: str, reason: str | None) -> str:
    return f"{what} by polecat: {reason}" if reason else f"{what} by polecat"
