"""Pure: what the witness does when an agent's turn ends without ``gastown done``.

Layer: core (pure), carried out by :mod:`gastown.roles.operations.agent_watch`.

Real agent CLIs stop in two ways that are not a crash: an interactive Claude or Codex
finishes its turn and sits at its prompt (the process never exits), and a print-mode run
finishes its one turn and exits. Upstream Gas Town's most common complaint is polecats
that stop like this without landing their work. So a turn that ends while the polecat is
still ``working`` gets, in order:

1. one nudge: the agent is told to run ``gastown done`` (its work is committed and the
   tree clean), or to finish, commit and run it, or to escalate with a reason;
2. if its next turn ends the same way: the witness records the merge request itself
   (``done_by = "witness"``) when the branch has commits and a clean tree — the work is
   there and checked by the gates anyway — and otherwise escalates, worktree kept.

An interactive agent whose turn end never reached the witness (see :func:`idle_turn`) is
handled the same way once it has sat idle at its prompt long enough.
"""

from __future__ import annotations

from typing import Final

from .frozen import Frozen

#: Nudges the witness sends before it decides for the agent.
MAX_NUDGES: Final = 1

COMMITTED_NUDGE: Final = (
    "Your branch has commits and a clean worktree, but you have not run `gastown done`. "
    "If the work is finished, run `gastown done` now. If it is not, finish it, commit, "
    "then run `gastown done`.")

UNFINISHED_NUDGE: Final = (
    "Your turn ended without `gastown done`. Finish the work, commit it, then run "
    "`gastown done`. If you cannot finish it, run "
    "`gastown done --status escalated --reason \"<why>\"`.")


class TurnFacts(Frozen):
    """What the witness knows when a turn ended."""

    working: bool          #: the polecat is still ``working`` (no ``done`` yet)
    nudges: int            #: nudges the witness already sent it
    commits_ahead: int     #: commits on its branch not on the default branch
    dirty: bool            #: uncommitted changes in its worktree


class Nothing(Frozen):
    """It ran ``done`` (or was stopped): the turn end needs nothing."""


class Nudge(Frozen):
    text: str


class RecordDone(Frozen):
    """Record its merge request on its behalf (``done_by = "witness"``)."""


class Escalate(Frozen):
    reason: str


AfterTurn = Nothing | Nudge | RecordDone | Escalate


def after_turn(facts: TurnFacts, *, max_nudges: int = MAX_NUDGES) -> AfterTurn:
    if not facts.working:
        return Nothing()
    ready = facts.commits_ahead > 0 and not facts.dirty
    if facts.nudges < max_nudges:
        return Nudge(COMMITTED_NUDGE if ready else UNFINISHED_NUDGE)
    if ready:
        return RecordDone()
    what = "uncommitted changes" if facts.dirty else "no commits"
    return Escalate(f"the agent ended its turn without `gastown done` after "
                    f"{facts.nudges} nudge(s), with {what}; worktree kept")


# -- a turn end that never arrived ---------------------------------------------------------

class IdleMark(Frozen):
    """Since when an agent's screen has shown an idle prompt, and the polecat's turn and
    nudge counts then: a turn end or a nudge since makes it a new idle spell."""

    since: float
    turns: int
    nudges: int


def idle_turn(mark: IdleMark | None, *, now: float, idle: bool, turns: int, nudges: int,
              after: float) -> tuple[IdleMark | None, bool]:
    """The new mark, and whether the agent's idle spell is now a turn end to handle.

    A turn end normally reaches the witness from the agent's own hook (Claude's Stop hook,
    Codex's notify). When it does not (a nudge typed while the machine was too slow to
    show it, whose Enter was then taken as part of the text; a hook that failed), the
    polecat would sit at its prompt until the 30-minute silence note. An idle prompt seen
    for ``after`` seconds (``sessions.idle_turn_after``) with no turn end and no nudge
    recorded meanwhile is that lost turn end; handling it once resets the mark, so the
    next one needs a new spell.
    """
    if not idle:
        return None, False
    if mark is None or (mark.turns, mark.nudges) != (turns, nudges):
        return IdleMark(now, turns, nudges), False
    if now - mark.since >= after:
        return None, True
    return mark, False
