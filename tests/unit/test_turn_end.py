"""The witness's answer to a turn that ended without `gastown done` (roles/core/turn_end.py)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gastown.roles.core.turn_end import (
    COMMITTED_NUDGE,
    MAX_NUDGES,
    UNFINISHED_NUDGE,
    Escalate,
    IdleMark,
    Nothing,
    Nudge,
    RecordDone,
    TurnFacts,
    after_turn,
    idle_turn,
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


# -- idle_turn: a turn end that never arrived ---------------------------------------------

@given(st.lists(st.tuples(st.floats(0, 30), st.booleans(), st.integers(0, 2),
                          st.integers(0, 2)), max_size=40))
def test_an_idle_spell_becomes_one_turn_end_only_after_the_whole_wait(
        steps: list[tuple[float, bool, int, int]]) -> None:
    """Fed any sequence of observations: a turn end is due only when the prompt was idle,
    with the same turn and nudge counts, on every observation of the last ``after``
    seconds; and each spell yields at most one."""
    after = 45.0
    mark: IdleMark | None = None
    now = 0.0
    spell: list[tuple[float, int, int]] = []  # the observations of the current idle spell
    for gap, idle, turns, nudges in steps:
        now += gap
        mark, due = idle_turn(mark, now=now, idle=idle, turns=turns, nudges=nudges,
                              after=after)
        if not idle or (spell and spell[-1][1:] != (turns, nudges)):
            spell = []
        if idle:
            spell.append((now, turns, nudges))
        expected = len(spell) >= 2 and now - spell[0][0] >= after
        assert due == expected
        if due:
            assert mark is None
            spell = []  # handled: the next turn end needs a new spell


def test_a_recorded_turn_end_or_nudge_starts_a_new_spell() -> None:
    mark, due = idle_turn(None, now=0, idle=True, turns=1, nudges=0, after=45)
    assert mark == IdleMark(0, 1, 0) and not due
    mark, due = idle_turn(mark, now=50, idle=True, turns=2, nudges=0, after=45)
    assert mark == IdleMark(50, 2, 0) and not due  # its hook did report a turn end
    mark, due = idle_turn(mark, now=60, idle=True, turns=2, nudges=1, after=45)
    assert mark == IdleMark(60, 2, 1) and not due  # the witness nudged it meanwhile
    mark, due = idle_turn(mark, now=80, idle=False, turns=2, nudges=1, after=45)
    assert mark is None and not due  # busy again: the spell is over
    mark, due = idle_turn(None, now=100, idle=True, turns=2, nudges=1, after=45)
    mark, due = idle_turn(mark, now=145, idle=True, turns=2, nudges=1, after=45)
    assert due and mark is None
