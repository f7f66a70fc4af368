"""The dispatch order and the rules of needs (roles/core/dispatch.py), with Hypothesis."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gastown.roles.core.dispatch import (
    AGE_STEP,
    Need,
    Queued,
    cycle_text,
    effective_priority,
    find_cycle,
    order_key,
    plan,
    waiting_reason,
)

STATUSES = ("open", "hooked", "in_review", "closed", "blocked")
NOW = 1_000_000.0


@st.composite
def queues(draw: st.DrawFn) -> list[Queued]:
    """Queued slings with distinct ids, random priorities, ages and needs."""
    count = draw(st.integers(0, 12))
    ids = draw(st.lists(st.integers(1, 10_000), min_size=count, max_size=count,
                        unique=True))
    out = []
    for sling in ids:
        needs = draw(st.lists(st.builds(
            Need, bead=st.sampled_from([f"gt-n{i}" for i in range(6)]),
            status=st.sampled_from(STATUSES),
            blocked=st.one_of(st.none(), st.just("merge request gt-x rejected"))),
            max_size=3, unique_by=lambda n: n.bead))
        out.append(Queued(
            sling=sling, bead=f"gt-b{sling}", rig=draw(st.sampled_from(["web", "api"])),
            queued_at=NOW - draw(st.floats(0, 6 * AGE_STEP, allow_nan=False)),
            priority=draw(st.integers(0, 4)),
            created_at=NOW - draw(st.floats(0, 10 * AGE_STEP, allow_nan=False)),
            needs=tuple(needs)))
    return out


@given(queues())
def test_never_dispatches_a_bead_before_all_its_needs_are_closed(queue: list[Queued]) -> None:
    decided = plan(queue, NOW)
    assert all(all(n.status == "closed" for n in q.needs) for q in decided.ready)
    for waiting in decided.waiting:
        queued = next(q for q in queue if q.sling == waiting.sling)
        assert set(waiting.needs) == {n.bead for n in queued.needs if n.status != "closed"}
        assert waiting.needs
    assert {q.sling for q in decided.ready} | {w.sling for w in decided.waiting} == \
        {q.sling for q in queue}


@given(queues())
def test_ready_slings_go_by_effective_priority_then_fifo(queue: list[Queued]) -> None:
    ready = plan(queue, NOW).ready
    for first, second in itertools.pairwise(ready):
        a, b = effective_priority(first, NOW), effective_priority(second, NOW)
        assert a < b or (a == b and first.queued_at <= second.queued_at)


@given(queues())
def test_without_ageing_the_order_is_priority_then_age(queue: list[Queued]) -> None:
    ready = plan(queue, NOW, age_step=float("inf")).ready
    assert [(q.priority, q.queued_at) for q in ready] == sorted(
        (q.priority, q.queued_at) for q in ready)


@given(queues(), st.integers(0, 4))
def test_starvation_bound(queue: list[Queued], priority: int) -> None:
    """A ready sling that waited priority x AGE_STEP goes before every sling queued after
    it, whatever their priority: only the finitely many queued before it can pass it."""
    old = Queued(sling=99_999, bead="gt-old", rig="web",
                 queued_at=NOW - priority * AGE_STEP, priority=priority, created_at=0.0)
    ready = plan([*queue, old], NOW).ready
    assert effective_priority(old, NOW) == 0
    position = ready.index(old)
    assert all(q.queued_at <= old.queued_at for q in ready[:position])


@settings(max_examples=50)
@given(queues(), st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_input_order(queue: list[Queued],
                                                      rnd: random.Random) -> None:
    shuffled = list(queue)
    rnd.shuffle(shuffled)
    assert plan(queue, NOW) == plan(queue, NOW) == plan(shuffled, NOW)


def test_priorities_three_zero_one_queued_in_that_order_go_zero_one_three() -> None:
    queue = [Queued(sling=i, bead=f"gt-{p}", rig="web", queued_at=NOW - 10 + i, priority=p,
                    created_at=NOW - 20) for i, p in enumerate((3, 0, 1), start=1)]
    assert [q.priority for q in plan(queue, NOW).ready] == [0, 1, 3]
    assert plan(queue, NOW).positions() == {2: 1, 3: 2, 1: 3}


def test_effective_priority_rises_one_level_per_age_step() -> None:
    sling = Queued(sling=1, bead="gt-a", rig="web", queued_at=NOW, priority=4, created_at=0)
    assert [effective_priority(sling, NOW + k * AGE_STEP) for k in range(6)] == \
        [4, 3, 2, 1, 0, 0]
    assert effective_priority(sling, NOW - 5) == 4  # a clock step back is no age
    assert order_key(sling, NOW)[0] == 4


def test_waiting_reasons_name_the_needs_and_the_blocker() -> None:
    assert waiting_reason([Need("gt-a", "closed")]) is None
    assert waiting_reason([Need("gt-b", "in_review"), Need("gt-a", "open")]) == \
        "waiting for gt-a (open), gt-b (in_review)"
    assert waiting_reason([Need("gt-b", "open", blocked="merge request x rejected: gate"),
                           Need("gt-a", "hooked")]) == \
        "blocked on gt-b: merge request x rejected: gate"


def test_find_cycle_names_the_cycle() -> None:
    edges = {"web-b": ["web-c"], "web-c": ["api-d"], "api-d": []}
    assert find_cycle(edges, "web-a", "web-b") is None
    assert find_cycle(edges, "api-d", "web-b") == ["api-d", "web-b", "web-c", "api-d"]
    assert cycle_text(find_cycle({"web-b": ["web-a"]}, "web-a", "web-b") or []) == \
        "web-a -> web-b -> web-a"
    assert find_cycle({}, "web-a", "web-a") == ["web-a", "web-a"]


@given(st.dictionaries(st.sampled_from("abcdef"), st.lists(st.sampled_from("abcdef"),
                                                           max_size=3), max_size=6),
       st.sampled_from("abcdef"), st.sampled_from("abcdef"))
def test_find_cycle_agrees_with_reachability(edges: dict[str, list[str]], bead: str,
                                             need: str) -> None:
    """A cycle is found exactly when ``bead`` is reachable from ``need``; the path it names
    follows real edges (plus the new one) and starts and ends at ``bead``."""
    reach, todo = {need}, [need]
    while todo:
        for onward in edges.get(todo.pop(), []):
            if onward not in reach:
                reach.add(onward)
                todo.append(onward)
    cycle = find_cycle(edges, bead, need)
    assert (cycle is not None) == (bead in reach)
    if cycle is not None:
        assert cycle[0] == cycle[-1] == bead and cycle[1] == need
        assert all(b in edges.get(a, []) for a, b in itertools.pairwise(cycle[1:]))
