"""The restart decision: back-off, jitter, stability reset and the intensity limit."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gastown.supervisor import restart_policy
from gastown.supervisor.restart_policy import (
    GiveUp,
    Restart,
    RestartPolicy,
    RoleHistory,
    decide_restart,
    exits_in_window,
)

POLICY = RestartPolicy(
    base_delay=1.0, max_delay=30.0, max_restarts=5, period=60.0, stable_after=10.0, jitter=0.0
)

# ---------------------------------------------------------------------------
# A history is replayed from a script of events, honcho-style.


@dataclass(frozen=True)
class Start:
    at: float


@dataclass(frozen=True)
class Exit:
    at: float


Event = Start | Exit


def replay(policy: RestartPolicy, events: list[Event]) -> RoleHistory:
    """Fold a script of starts and exits into a history."""
    history = RoleHistory()
    for event in events:
        match event:
            case Start(at):
                history = history.record_start(at)
            case Exit(at):
                history = history.record_exit(policy, at)
    return history


def crash_loop(n: int, *, start: float = 0.0, run: float = 0.5, gap: float = 1.0) -> list[Event]:
    """``n`` runs of ``run`` seconds each, restarted ``gap`` seconds after the exit."""
    events: list[Event] = []
    t = start
    for _ in range(n):
        events += [Start(t), Exit(t + run)]
        t += run + gap
    return events


@dataclass(frozen=True)
class Case:
    events: list[Event]
    now: float
    expected: Restart | GiveUp


HISTORIES: dict[str, Case] = {
    "first crash waits base_delay": Case([Start(0), Exit(1)], 1, Restart(1.0)),
    "second quick crash doubles": Case(crash_loop(2), 2, Restart(2.0)),
    "third quick crash doubles again": Case(crash_loop(3), 3.5, Restart(4.0)),
    "exit after a stable run waits base_delay": Case([Start(0), Exit(100)], 100, Restart(1.0)),
    "stable run resets the streak": Case(
        [*crash_loop(4), Start(10), Exit(25)], 25, Restart(1.0)
    ),
    "quick crashes after a stable run start a new streak": Case(
        [Start(0), Exit(100), Start(101), Exit(101.5), Start(102.5), Exit(103)], 103, Restart(2.0)
    ),
    "spawn failure counts as a quick crash": Case([Exit(0), Exit(1)], 1, Restart(2.0)),
    "five exits in the period are tolerated": Case(
        crash_loop(5, run=5, gap=5), 45, Restart(16.0)
    ),
    "six exits in the period give up": Case(
        crash_loop(6, run=5, gap=5), 55, GiveUp("6 exits in 60s (more than the 5 allowed)")
    ),
    "old exits fall out of the window": Case(
        [*crash_loop(5, run=5, gap=5), Start(200), Exit(215)], 215, Restart(1.0)
    ),
    "long crash loop is capped at max_delay": Case(
        crash_loop(20, run=1, gap=20), 21 * 19 + 1, Restart(30.0)
    ),
}


@pytest.mark.parametrize("name", list(HISTORIES))
def test_named_history(name: str) -> None:
    """Each named history leads to the documented decision."""
    case = HISTORIES[name]
    history = replay(POLICY, case.events)
    assert decide_restart(POLICY, history, case.now, jitter_sample=0.5) == case.expected


# ---------------------------------------------------------------------------
# Properties.

durations = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def policies(draw: st.DrawFn) -> RestartPolicy:
    base = draw(st.floats(min_value=0.0, max_value=100.0))
    return RestartPolicy(
        base_delay=base,
        max_delay=base + draw(st.floats(min_value=0.0, max_value=1000.0)),
        max_restarts=draw(st.integers(min_value=0, max_value=20)),
        period=draw(st.floats(min_value=0.001, max_value=1000.0)),
        stable_after=draw(st.floats(min_value=0.0, max_value=100.0)),
        jitter=draw(st.floats(min_value=0.0, max_value=1.0)),
    )


@st.composite
def scripts(draw: st.DrawFn) -> tuple[list[Event], float]:
    """A plausible life of a role: increasing times, starts and exits alternating."""
    t = 0.0
    events: list[Event] = []
    for _ in range(draw(st.integers(min_value=1, max_value=40))):
        if draw(st.booleans()):  # a run (or, when False, a failed spawn)
            events.append(Start(t))
            t += draw(st.floats(min_value=0.0, max_value=200.0))
        events.append(Exit(t))
        t += draw(st.floats(min_value=0.0, max_value=200.0))
    last = events[-1]
    assert isinstance(last, Exit)
    return events, last.at


samples = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@settings(deadline=None)
@given(policy=policies(), script=scripts(), sample=samples)
def test_delay_is_within_bounds(
    policy: RestartPolicy, script: tuple[list[Event], float], sample: float
) -> None:
    """A restart delay is never negative and never above max_delay."""
    events, now = script
    decision = decide_restart(policy, replay(policy, events), now, sample)
    if isinstance(decision, Restart):
        assert 0.0 <= decision.delay <= policy.max_delay


@settings(deadline=None)
@given(policy=policies(), script=scripts(), sample=samples)
def test_gives_up_exactly_above_the_intensity_limit(
    policy: RestartPolicy, script: tuple[list[Event], float], sample: float
) -> None:
    """GiveUp comes if and only if more than max_restarts exits fall in the period."""
    events, now = script
    in_window = sum(1 for e in events if isinstance(e, Exit) and now - e.at <= policy.period)
    history = replay(policy, events)
    assert exits_in_window(policy, history, now) == in_window
    decision = decide_restart(policy, history, now, sample)
    assert isinstance(decision, GiveUp) == (in_window > policy.max_restarts)
    if isinstance(decision, GiveUp):
        assert decision.reason.startswith(f"{in_window} exits in {policy.period:g}s")


@settings(deadline=None)
@given(
    policy=policies(),
    script=scripts(),
    extra=st.floats(min_value=0.0, max_value=1e4),
    sample=samples,
)
def test_stable_run_resets_the_back_off(
    policy: RestartPolicy, script: tuple[list[Event], float], extra: float, sample: float
) -> None:
    """Whatever came before, an exit after a run of stable_after waits only base_delay."""
    events, now = script
    start = now + 1.0
    end = start + policy.stable_after + extra
    assume(end - start >= policy.stable_after)  # float rounding can shorten the run
    history = replay(policy, [*events, Start(start), Exit(end)])
    decision = decide_restart(policy, history, end, sample)
    if isinstance(decision, Restart):
        factor = 1.0 - policy.jitter + 2.0 * policy.jitter * sample
        assert decision.delay == pytest.approx(min(policy.max_delay, policy.base_delay * factor))


@settings(deadline=None)
@given(
    base=st.floats(min_value=0.001, max_value=10.0),
    jitter=st.floats(min_value=0.0, max_value=0.3),
    n=st.integers(min_value=2, max_value=30),
    sample=samples,
)
def test_quick_crashes_grow_the_delay_until_the_cap(
    base: float, jitter: float, n: int, sample: float
) -> None:
    """Each consecutive quick crash doubles the delay until it reaches max_delay."""
    policy = RestartPolicy(
        base_delay=base,
        max_delay=base * 100,
        max_restarts=1000,
        period=1e9,
        stable_after=10.0,
        jitter=jitter,
    )
    history = RoleHistory()
    delays: list[float] = []
    t = 0.0
    for _ in range(n):
        history = history.record_start(t).record_exit(policy, t + 1.0)
        t += 1.0
        decision = decide_restart(policy, history, t, sample)
        assert isinstance(decision, Restart)
        delays.append(decision.delay)
        t += decision.delay
    for before, after in pairwise(delays):
        if before < policy.max_delay:
            assert after > before
        else:
            assert after == policy.max_delay


@settings(deadline=None)
@given(policy=policies(), script=scripts())
def test_history_keeps_only_the_window(
    policy: RestartPolicy, script: tuple[list[Event], float]
) -> None:
    """record_exit forgets exits that can no longer count, so a history stays small."""
    events, now = script
    history = replay(policy, events)
    assert all(now - t <= policy.period for t in history.exits)
    assert history.started_at is None


def test_jitter_spreads_the_delay_both_ways() -> None:
    """Jitter 0.1 turns a 4 s delay into something within [3.6, 4.4]."""
    policy = RestartPolicy(
        base_delay=1.0, max_delay=30.0, max_restarts=5, period=60.0, stable_after=10.0
    )
    history = replay(policy, crash_loop(3))
    low = decide_restart(policy, history, 3.5, jitter_sample=0.0)
    high = decide_restart(policy, history, 3.5, jitter_sample=0.999999)
    assert isinstance(low, Restart)
    assert isinstance(high, Restart)
    assert low.delay == pytest.approx(3.6)
    assert high.delay == pytest.approx(4.4, rel=1e-5)


def test_jitter_never_exceeds_max_delay() -> None:
    """A jittered delay at the cap is clipped to max_delay, never above it."""
    policy = RestartPolicy(
        base_delay=1.0, max_delay=4.0, max_restarts=50, period=60.0, stable_after=10.0, jitter=1.0
    )
    history = replay(policy, crash_loop(10))
    decision = decide_restart(policy, history, 20.0, jitter_sample=0.99)
    assert decision == Restart(4.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_delay": -1.0}, "base_delay"),
        ({"base_delay": 10.0, "max_delay": 5.0}, "max_delay"),
        ({"max_restarts": -1}, "max_restarts"),
        ({"period": 0.0}, "period"),
        ({"stable_after": -1.0}, "stable_after"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_impossible_policy_is_rejected(kwargs: dict[str, float], message: str) -> None:
    """A policy with an out-of-range value cannot be constructed."""
    values: dict[str, float] = {
        "base_delay": 1.0,
        "max_delay": 30.0,
        "max_restarts": 5,
        "period": 60.0,
        "stable_after": 10.0,
    }
    values.update(kwargs)
    with pytest.raises(ValueError, match=message):
        RestartPolicy(
            base_delay=values["base_delay"],
            max_delay=values["max_delay"],
            max_restarts=int(values["max_restarts"]),
            period=values["period"],
            stable_after=values["stable_after"],
            jitter=values.get("jitter", 0.1),
        )


def test_module_is_pure() -> None:
    """restart_policy imports only standard-library data modules: no clock, randomness or I/O."""
    assert restart_policy.__file__ is not None
    tree = ast.parse(Path(restart_policy.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "dataclasses", "typing", "math"}
