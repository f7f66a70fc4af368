"""The witness's answer to a turn that ended without `gastown done` (roles/core/turn_end.py)."""

from __future__ import annotations

import itertools

from gastown.roles.core.turn_end import (
    COMMITTED_NUDGE,
    MAX_NUDGES,
    UNFINISHED_NUDGE,
    Escalate,
    Nothing,
    Nudge,
    RecordDone,
    TurnFacts,
    after_turn,
)


def test_every_combination() -> None:
    """Exhaustive over the small input space: the rules of the module docstring."""
    for working, nudges, ahead, dirty in itertools.product(
            (True, False), range(4), (0, 1, 3), (True, False)):
        facts = TurnFacts(working=working, nudges=nudges, commits_ahead=ahead, dirty=dirty)
        decision = after_turn(facts)
        ready = ahead > 0 and not dirty
        if not working:
            assert decision == Nothing()
        elif nudges < MAX_NUDGES:
            assert decision == Nudge(COMMITTED_NUDGE if ready else UNFINISHED_NUDGE)
        elif ready:
            assert decision == RecordDone()
        else:
            assert isinstance(decision, Escalate)
            assert ("uncommitted changes" if dirty else "no commits") in decision.reason
            assert "worktree kept" in decision.reason


def test_never_records_work_that_is_not_committed() -> None:
    for nudges in range(5):
        facts = TurnFacts(working=True, nudges=nudges, commits_ahead=2, dirty=True)
        assert not isinstance(after_turn(facts), RecordDone)


def test_more_nudges_allowed() -> None:
    facts = TurnFacts(working=True, nudges=1, commits_ahead=1, dirty=False)
    assert isinstance(after_turn(facts, max_nudges=2), Nudge)
