"""The polecat lifecycle and the name pool: pure rules, exhaustive properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gastown.roles.core.lifecycle import (
    POLECAT_STATES,
    DeleteBranch,
    Done,
    GaveUp,
    Merged,
    MergeStarted,
    Nuke,
    PolecatState,
    Refusal,
    Rejected,
    RemoveWorktree,
    Respawned,
    SessionDied,
    SessionStarted,
    SetBead,
    SettleUsage,
    SpawnFailed,
    StopSession,
    Transition,
    transition,
)
from gastown.roles.core.names import (
    DEFAULT_POLECAT_NAMES,
    RESERVED_POLECAT_NAMES,
    next_polecat_name,
)

#: The effects the effect runner performs (the others are the store's).
WORLD_EFFECT_TYPES = (StopSession, SettleUsage, RemoveWorktree, DeleteBranch)

EVENTS = st.one_of(
    st.just(SessionStarted()), st.just(SpawnFailed("x")), st.just(SessionDied()),
    st.just(Respawned()), st.just(GaveUp("x")),
    st.sampled_from([Done("completed"), Done("escalated"), Done("deferred"),
                     Done("escalated", "tests fail")]),
    st.just(MergeStarted()), st.just(Merged()), st.just(Rejected("conflict")),
    st.builds(Nuke, force=st.booleans(), landed=st.booleans(), reason=st.just("nuked")),
)


@given(st.lists(EVENTS, max_size=30))
@settings(deadline=None)
def test_nuked_only_after_landing_or_force(events: list[object]) -> None:
    """No sequence of events reaches nuked unless work landed, was forced, or never began."""
    state: PolecatState = "spawning"
    justified = False
    for event in events:
        result = transition(state, event)  # type: ignore[arg-type]
        if isinstance(result, Refusal):
            assert result.reason and "\n" not in result.reason
            continue
        if result.state == "nuked":
            justified = (isinstance(event, Merged)
                         or (isinstance(event, Nuke) and (event.force or event.landed))
                         or (isinstance(event, SpawnFailed) and state == "spawning"))
            assert justified, (state, event)
        state = result.state
    assert state in POLECAT_STATES


@given(st.sampled_from(POLECAT_STATES), EVENTS)
def test_every_state_event_pair_has_an_answer(state: PolecatState, event: object) -> None:
    """transition is total: each pair gives a transition to a known state (a nuke with the
    session stopped first) or a refusal the user can read (one non-empty line)."""
    result = transition(state, event)  # type: ignore[arg-type]
    if isinstance(result, Refusal):
        assert result.reason.strip() and "\n" not in result.reason, result
    else:
        assert isinstance(result, Transition), result
        assert result.state in POLECAT_STATES, result
        if result.state == "nuked":
            assert result.effects[:1] == (StopSession(),), result


HISTORIES: dict[str, tuple[list[object], PolecatState, SetBead | None]] = {
    "happy path": ([SessionStarted(), Done("completed"), MergeStarted(), Merged()], "nuked",
                   SetBead("closed", "merged")),
    "spawn rolled back": ([SpawnFailed("worktree add failed")], "nuked",
                          SetBead("open", "worktree add failed")),
    "died, respawned, done": ([SessionStarted(), SessionDied(), Respawned(), Done("completed")],
                              "done", SetBead("in_review")),
    "died until given up": ([SessionStarted(), SessionDied(), GaveUp("2 respawns")],
                            "escalated", SetBead("blocked", "2 respawns")),
    "conflict": ([SessionStarted(), Done("completed"), MergeStarted(), Rejected("conflict")],
                 "rejected", SetBead("open", "conflict")),
    "deferred": ([SessionStarted(), Done("deferred")], "done",
                 SetBead("open", "deferred by polecat")),
    "unmerged nuke refused": ([SessionStarted(), Nuke()], "working", None),
    "done before the spawn finished": ([Done("completed"), SessionStarted()], "done",
                                       SetBead("in_review")),
    "escalated with a reason": (
        [SessionStarted(), Done("escalated", "tests fail")], "escalated",
        SetBead("blocked", "escalated by polecat: tests fail")),
    "escalated, fixed by hand, re-submitted": (
        [SessionStarted(), Done("escalated"), Done("completed")], "done", SetBead("in_review")),
    "conflict resolved by hand, re-submitted": (
        [SessionStarted(), Done("completed"), MergeStarted(), Rejected("conflict"),
         Done("completed")], "done", SetBead("in_review")),
    "kept at spawn recovery": ([GaveUp("interrupted; kept")], "escalated",
                               SetBead("blocked", "interrupted; kept")),
    "forced nuke": ([SessionStarted(), Nuke(force=True)], "nuked", None),
}


@pytest.mark.parametrize("name", HISTORIES)
def test_named_histories(name: str) -> None:
    """The lifecycle paths that matter end where the README says they do."""
    events, final, bead = HISTORIES[name]
    state: PolecatState = "spawning"
    last_bead = None
    for event in events:
        result = transition(state, event)  # type: ignore[arg-type]
        if isinstance(result, Transition):
            state = result.state
            last_bead = next((e for e in result.effects if isinstance(e, SetBead)), last_bead)
    assert state == final
    if bead is not None:
        assert last_bead == bead


@pytest.mark.parametrize("state", ["working", "done", "merging", "escalated", "rejected"])
def test_session_started_late_is_a_no_op(state: PolecatState) -> None:
    """The mayor's last spawn step after the agent's `done` changes nothing, refuses nothing."""
    assert transition(state, SessionStarted()) == Transition(state)


@pytest.mark.parametrize("state", ["spawning", "working", "stalled", "escalated", "rejected"])
def test_done_is_accepted_whenever_work_can_be_submitted(state: PolecatState) -> None:
    """`gastown done` (completed) is never refused by the state machine in these states."""
    assert transition(state, Done("completed")) == Transition("done", (SetBead("in_review"),))


def test_kept_work_only_resubmits_completed() -> None:
    """Escalating an escalated polecat again is refused, with what to do instead."""
    result = transition("escalated", Done("escalated"))
    assert isinstance(result, Refusal) and "gastown done" in result.reason


def test_nuke_stops_the_session_first() -> None:
    """The session is stopped before the worktree goes, so no agent writes into a void."""
    result = transition("done", Merged())
    assert isinstance(result, Transition) and result.effects[0] == StopSession()


@given(st.sets(st.sampled_from([*DEFAULT_POLECAT_NAMES, *map(str, range(55, 80))])))
def test_name_pool_never_hands_out_a_held_name(held: set[str]) -> None:
    """The allocated name is never held, never reserved, and pool names come first."""
    name = next_polecat_name(DEFAULT_POLECAT_NAMES, held)
    assert name not in held and name not in RESERVED_POLECAT_NAMES
    free = [n for n in DEFAULT_POLECAT_NAMES if n not in held]
    assert name == (free[0] if free else name)
    if not free:
        assert name.isdigit() and int(name) > len(DEFAULT_POLECAT_NAMES)


def test_default_pool_is_large_and_valid() -> None:
    """At least 50 distinct short names, each a valid polecat name."""
    from gastown.roles.core.names import name_problem

    assert len(set(DEFAULT_POLECAT_NAMES)) == len(DEFAULT_POLECAT_NAMES) >= 50
    assert all(name_problem("polecat", n) is None and len(n) <= 10 for n in DEFAULT_POLECAT_NAMES)


@given(st.sampled_from(POLECAT_STATES), EVENTS)
def test_world_effects_come_before_row_effects_in_the_safe_order(
        state: PolecatState, event: object) -> None:
    """The effect runner does the world first and the store the rows after, so a crash
    leaves the row as it was; in the world, the session stops first and the branch goes
    after the worktree; a branch is deleted unchecked only by a forced nuke."""
    result = transition(state, event)  # type: ignore[arg-type]
    if isinstance(result, Refusal):
        return
    kinds = ["world" if isinstance(e, WORLD_EFFECT_TYPES) else "row" for e in result.effects]
    assert kinds == sorted(kinds, key=lambda k: k == "row"), result
    world = [type(e) for e in result.effects if isinstance(e, WORLD_EFFECT_TYPES)]
    if world:
        assert world[0] is StopSession and world[-1] is DeleteBranch, result
        assert world.index(RemoveWorktree) < world.index(DeleteBranch)
        assert result.state == "nuked"
    for effect in result.effects:
        if isinstance(effect, DeleteBranch) and effect.unchecked:
            assert isinstance(event, Nuke) and event.force, result
