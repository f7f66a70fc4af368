"""Pure: the polecat lifecycle as a state machine, and what each transition must do.

Layer: core (pure), used by the store's polecat and merge ledgers, the one nuke
(:mod:`gastown.roles.operations.nuking`), the spawn, ``done`` and the witness.

A polecat is ``spawning`` while the mayor builds it, ``working`` while its agent runs,
``done`` once ``gastown done`` recorded its merge request, ``merging`` while the
refinery holds it, ``stalled`` when its session died without ``done``, ``escalated``
when it asked for (or needs) a human, ``rejected`` when the merge queue refused its
branch. ``nuked`` is the end: worktree, branch and name gone.

``done`` is accepted whatever the interleaving: a fast agent may report before the mayor
marks it ``working`` (``spawning``), and a ``SessionStarted`` arriving after that is a
no-op. A person who fixed an ``escalated`` or ``rejected`` polecat's work by hand
re-submits it with ``done`` (completed work only): a new merge request.

:func:`transition` is the one decider: it returns the new state and the effects, in
order. Two kinds of effect: *world* effects (:data:`WorldEffect`: stop the session,
settle its token usage, remove the worktree, delete the branch), which the one effect
runner (``operations.nuking.carry_out``) performs, idempotently, before anything is
recorded; and *row* effects (set the bead, cancel open merge requests, release the
name), which the store applies with the new state and the domain event in one
transaction. A crash between two world effects leaves the row as it was, so the next
pass (the witness, ``doctor``) decides again and finishes them. The one invariant this
module exists to protect: no sequence of events reaches ``nuked`` unless the work landed
(``merged``, or a nuke that verified nothing is unmerged) or the user forced it; and a
branch is deleted unchecked only by a forced nuke (:class:`DeleteBranch`).
"""

from __future__ import annotations

from typing import Final, Literal

from .frozen import Frozen

PolecatState = Literal["spawning", "working", "done", "merging", "stalled", "escalated",
                       "rejected", "nuked"]
POLECAT_STATES: Final[tuple[PolecatState, ...]] = (
    "spawning", "working", "done", "merging", "stalled", "escalated", "rejected", "nuked")

#: States whose agent session is (meant to be) running: they count against capacity.
ACTIVE_STATES: Final = frozenset({"spawning", "working", "stalled"})

Outcome = Literal["completed", "escalated", "deferred"]


class SessionStarted(Frozen): ...


class SpawnFailed(Frozen):
    reason: str


class SessionDied(Frozen): ...


class Respawned(Frozen): ...


class GaveUp(Frozen):
    reason: str


class Done(Frozen):
    outcome: Outcome
    #: The agent's own words (``gastown done --reason``), kept on the bead and the polecat.
    reason: str | None = None


class MergeStarted(Frozen): ...


class Merged(Frozen): ...


class Rejected(Frozen):
    reason: str


class Nuke(Frozen):
    """A nuke request; ``landed`` means git verified nothing unmerged and a clean tree.

    ``reason`` is what the polecat's unfinished merge requests are cancelled with.
    """

    force: bool = False
    landed: bool = False
    reason: str = "nuked"


Event = (SessionStarted | SpawnFailed | SessionDied | Respawned | GaveUp | Done | MergeStarted
         | Merged | Rejected | Nuke)


class StopSession(Frozen):
    """Stop the agent's session and every process still carrying the polecat's identity."""


class SettleUsage(Frozen):
    """Read the agent's last token usage before its home goes."""


class RemoveWorktree(Frozen):
    """Remove the worktree (verified gone), the prompt and marker files, the agent home."""


class DeleteBranch(Frozen):
    """Delete the branch; unless ``unchecked`` (a forced nuke), only if every commit on it
    has landed, checked again at that moment: work that arrived meanwhile is kept."""

    unchecked: bool = False


class CancelMergeRequests(Frozen):
    """The polecat's queued and running merge requests end ``cancelled`` with ``reason``."""

    reason: str


class ReleaseName(Frozen):
    """The name is free for the next polecat (the row becomes history)."""


class SetBead(Frozen):
    status: Literal["open", "hooked", "in_review", "closed", "blocked"]
    reason: str | None = None


#: What the effect runner does to the world (git, processes, files), in order.
WorldEffect = StopSession | SettleUsage | RemoveWorktree | DeleteBranch
#: What the store applies with the new state, in the same transaction.
RowEffect = CancelMergeRequests | ReleaseName | SetBead
Effect = WorldEffect | RowEffect


def _nuke_effects(*, unchecked: bool = False, settle: bool = True,
                  cancel: str | None = None) -> tuple[Effect, ...]:
    """A nuke, in the order that keeps work safe: the session stops before the worktree
    goes (no agent writes into a void), the usage is read before the home goes, the branch
    is deleted last of the world effects, the rows change after all of them."""
    return (StopSession(), *((SettleUsage(),) if settle else ()), RemoveWorktree(),
            DeleteBranch(unchecked=unchecked),
            *((CancelMergeRequests(cancel),) if cancel is not None else ()), ReleaseName())


class Transition(Frozen):
    state: PolecatState
    effects: tuple[Effect, ...] = ()


class Refusal(Frozen):
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
            return Transition("nuked", (*_nuke_effects(settle=False), SetBead("open", reason)))
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
            return Transition("nuked", (*_nuke_effects(), SetBead("closed", "merged")))
        case Rejected(reason) if state in ("done", "merging"):
            return Transition("rejected", (SetBead("open", reason),))
        case Nuke(force, landed, reason):
            if state == "spawning" and not force:
                return Refusal("the polecat is still being created; retry, or use --force")
            if not (force or landed):
                return Refusal("its work has not landed")
            effects = _nuke_effects(unchecked=force, cancel=reason)
            if force and not landed:
                return Transition("nuked", (*effects, SetBead("open", "its polecat was nuked")))
            return Transition("nuked", effects)
    return Refusal(f"{type(event).__name__} is not expected while {state}")


def _by_polecat(what: str, reason: str | None) -> str:
    return f"{what} by polecat: {reason}" if reason else f"{what} by polecat"
