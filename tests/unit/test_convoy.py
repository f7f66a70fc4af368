"""The convoy's state from its beads, and which event each change of it is."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from gastown.roles.core.convoy import (
    BeadFacts,
    ConvoyState,
    change_kind,
    convoy_state,
    own_why,
    stuck_why,
)

STATUSES = ("open", "hooked", "in_review", "closed", "blocked", "waiting")


def _one(needs: st.SearchStrategy[tuple[BeadFacts, ...]]) -> st.SearchStrategy[BeadFacts]:
    return st.builds(BeadFacts, id=st.sampled_from("abcdefgh"),
                     status=st.sampled_from(STATUSES), rejected=st.booleans(),
                     reason=st.one_of(st.none(), st.text(max_size=5)), needs=needs)


def _beads() -> st.SearchStrategy[list[BeadFacts]]:
    needs = st.lists(_one(st.just(())), max_size=2).map(tuple)
    return st.lists(_one(needs), max_size=6, unique_by=lambda b: b.id)


def test_every_combination_of_two_beads() -> None:
    """Exhaustive over two beads (status x rejected): landed iff both closed; stuck iff
    not landed and one is blocked or rejected-and-open, naming the first such."""
    for (s1, r1), (s2, r2) in itertools.product(itertools.product(STATUSES, (False, True)),
                                                repeat=2):
        beads = [BeadFacts("a", s1, r1, "why"), BeadFacts("b", s2, r2, None)]
        state = convoy_state(beads)
        closed = [s1, s2].count("closed")
        assert (state.closed, state.total) == (closed, 2)
        holders = [b.id for b in beads if b.status == "blocked"
                   or (b.status == "open" and b.rejected)]
        if closed == 2:
            assert state == ConvoyState("landed", 2, 2)
        elif holders:
            assert state.state == "stuck" and state.stuck_bead == holders[0]
            assert state.stuck_reason is not None
        else:
            assert state == ConvoyState("open", closed, 2)


def test_a_bead_waiting_on_a_held_up_need_holds_the_convoy_up() -> None:
    """Exhaustive over the bead's status and its one need's (status x rejected): stuck on
    the bead, naming the need, iff the bead is not closed and the need is held up."""
    for status, (need_status, rejected) in itertools.product(
            STATUSES, itertools.product(STATUSES, (False, True))):
        need = BeadFacts("n", need_status, rejected, "gate test")
        state = convoy_state([BeadFacts("a", status, needs=(need,))])
        if status == "closed":
            assert state.state == "landed"
        elif own_why(BeadFacts("a", status)) is not None:
            assert state.stuck_reason == "blocked"
        elif own_why(need) is not None:
            assert (state.state, state.stuck_bead) == ("stuck", "a")
            assert state.stuck_reason == f"needs n, {own_why(need)}"
        else:
            assert state.state == "open"


def test_reasons_read_as_people_say_them() -> None:
    assert stuck_why(BeadFacts("a", "blocked", False, "escalated: tests hang")) == \
        "blocked: escalated: tests hang"
    assert stuck_why(BeadFacts("a", "open", True, "gate test failed")) == \
        "rejected: gate test failed"
    assert stuck_why(BeadFacts("a", "open", True, None)) == "rejected"
    assert stuck_why(BeadFacts("a", "hooked", True, None)) is None  # slung again
    assert stuck_why(BeadFacts("a", "closed", True, None)) is None
    assert convoy_state([]) == ConvoyState("open", 0, 0)
    assert ConvoyState("open", 4, 7).progress == "4/7 merged"


@settings(max_examples=500, deadline=None)
@given(_beads())
def test_state_is_a_function_of_the_beads(beads: list[BeadFacts]) -> None:
    state = convoy_state(beads)
    assert state.total == len(beads)
    assert state.closed == sum(b.status == "closed" for b in beads)
    assert (state.state == "landed") == (bool(beads) and state.closed == state.total)
    assert (state.stuck_bead is not None) == (state.state == "stuck")
    if state.state == "stuck":
        first = next(b for b in beads if stuck_why(b) is not None)
        assert state.stuck_bead == first.id and state.stuck_reason == stuck_why(first)
    else:
        assert state.state == "landed" or all(stuck_why(b) is None for b in beads)


@settings(max_examples=500, deadline=None)
@given(_beads(), _beads())
def test_one_event_per_real_change_and_none_without(before: list[BeadFacts],
                                                     after: list[BeadFacts]) -> None:
    old, new = convoy_state(before), convoy_state(after)
    kind = change_kind(old, new)
    assert change_kind(new, new) is None and change_kind(old, old) is None
    if old == new:
        assert kind is None
    elif new.state == "landed" and old.state != "landed":
        assert kind == "convoy_landed"
    elif new.state == "stuck" and (old.stuck_bead, old.stuck_reason) != (
            new.stuck_bead, new.stuck_reason):
        assert kind == "convoy_stuck"
    else:
        assert kind == "convoy_progress"


@settings(max_examples=300, deadline=None)
@given(st.lists(_beads(), min_size=1, max_size=12))
def test_a_history_lands_once_per_landing(history: list[list[BeadFacts]]) -> None:
    """Over any sequence of bead changes, ``convoy_landed`` is written exactly as often
    as the convoy goes from not landed to landed (reopened and landed again: twice)."""
    stored = ConvoyState("open", 0, 0)
    landings = kinds = 0
    for beads in history:
        new = convoy_state(beads)
        kind = change_kind(stored, new)
        landings += stored.state != "landed" and new.state == "landed"
        kinds += kind == "convoy_landed"
        if kind is not None:
            stored = new
        assert stored == new
    assert kinds == landings
