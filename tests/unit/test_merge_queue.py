"""The merge queue's order and batch-then-bisect plan: driven by a simulated gate."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gastown.roles.core.merge_queue import (
    AUTO_BATCH_CAP,
    Action,
    AutoBatch,
    Finished,
    Land,
    Plan,
    Reject,
    Test,
    batch_limit,
    drop,
    max_gate_runs,
    mr_order_key,
    next_action,
    next_batch,
    order_key,
    record_done,
    record_test,
    start_plan,
)

#: A gate: given the candidate (main's MRs, then the stacked ones), does it pass?
Gate = Callable[[tuple[str, ...]], bool]

DROP_REASON = "conflict: could not rebase"


def ids(n: int) -> list[str]:
    return [f"mr{i:02d}" for i in range(n)]


def deterministic(bad: set[str]) -> Gate:
    """A gate that passes a candidate iff it holds no bad MR."""
    return lambda candidate: not bad.intersection(candidate)


def flaky(bad: set[str]) -> Gate:
    """Like :func:`deterministic`, but the first run of every candidate fails."""
    seen: set[tuple[str, ...]] = set()

    def gate(candidate: tuple[str, ...]) -> bool:
        first = candidate not in seen
        seen.add(candidate)
        return not first and not bad.intersection(candidate)

    return gate


@dataclass
class Run:
    finished: Finished
    main: list[str]
    dropped: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)


def drive(plan: Plan, gate: Gate, drops: Sequence[tuple[int, int]] = ()) -> Run:
    """Carry out ``plan`` against ``gate`` like a refinery, checking every step.

    ``drops`` are (step, choice): before that step, drop pending[choice % len(pending)].
    """
    mrs = set(plan.pending)
    main: list[str] = []
    known_red: set[tuple[str, ...]] = set()
    greens: set[tuple[str, ...]] = set()  # candidates tested green
    last_green: tuple[str, ...] | None = None
    previous: Action | None = None
    dropped: list[str] = []
    trace: list[str] = []
    drop_at = dict(drops)
    for step in range(100_000):
        if step in drop_at and plan.pending:
            victim = plan.pending[drop_at[step] % len(plan.pending)]
            plan = drop(plan, victim, DROP_REASON)
            dropped.append(victim)
            trace.append(f"drop {victim}")
        action = next_action(plan)
        assert next_action(plan) == action  # a pure query
        match action:
            case Test(stacked):
                assert stacked and stacked == plan.pending[:len(stacked)]
                candidate = (*main, *stacked)
                passed = gate(candidate)
                trace.append(f"test {' '.join(stacked)}: {'green' if passed else 'red'}")
                last_green = candidate if passed else None
                if passed:
                    greens.add(candidate)
                else:
                    known_red.add(candidate)
                plan = record_test(plan, passed)
            case Land(landing):
                if plan.each:
                    # A chain: every commit it lands was gated as it lands.
                    for count in range(1, len(landing) + 1):
                        assert (*main, *landing[:count]) in greens, "each commit gated"
                else:
                    assert isinstance(previous, Test) and previous.mrs == landing
                    assert last_green == (*main, *landing), "main moves to a green candidate"
                main.extend(landing)
                last_green = None
                greens.clear()  # the base moved
                trace.append(f"land {' '.join(landing)}")
                plan = record_done(plan)
            case Reject(mr, reason):
                assert mr == plan.pending[0]
                assert (*main, mr) in known_red, "a culprit turns a green candidate red"
                assert reason and "\n" not in reason
                trace.append(f"reject {mr}")
                plan = record_done(plan)
            case Finished(landed, rejected, gate_runs):
                assert list(landed) == main
                rejected_ids = [r.mr for r in rejected]
                assert sorted(list(landed) + rejected_ids) == sorted(mrs), "each MR exactly once"
                assert all((r.reason == DROP_REASON) == (r.mr in dropped) for r in rejected)
                assert gate_runs == sum(line.startswith("test ") for line in trace)
                return Run(action, main, dropped, trace)
        previous = action
    raise AssertionError("the plan never finished")


@st.composite
def queues(draw: st.DrawFn, max_size: int = 40) -> tuple[list[str], set[str]]:
    """MR ids in queue order and any subset of them that is bad."""
    names = ids(draw(st.integers(0, max_size)))
    bad = draw(st.sets(st.sampled_from(names))) if names else set()
    return names, bad


DROPS = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 100)), max_size=6)


# --------------------------------------------------------------------------- properties

@given(queues(), st.integers(0, 2))
@settings(deadline=None)
def test_exactly_the_good_land_in_order_within_budget(queue: tuple[list[str], set[str]],
                                                      retry: int) -> None:
    """Good MRs land in queue order, bad ones are rejected, within max_gate_runs."""
    names, bad = queue
    run = drive(start_plan(names, retry_flaky=retry), deterministic(bad))
    assert run.main == [m for m in names if m not in bad]
    assert {r.mr for r in run.finished.rejected} == bad
    assert run.finished.gate_runs <= max_gate_runs(len(names), len(bad), retry)


@pytest.mark.parametrize("position", range(16))
def test_one_bad_in_sixteen_costs_at_most_ten_runs(position: int) -> None:
    """The acceptance: one bad MR among 16 is isolated in at most 2 + 2·log2(16) runs."""
    names = ids(16)
    run = drive(start_plan(names), deterministic({names[position]}))
    assert run.finished.gate_runs <= max_gate_runs(16, 1, 0) == 6 <= 10
    assert [r.mr for r in run.finished.rejected] == [names[position]]


@given(queues(), st.integers(0, 2), DROPS)
@settings(deadline=None)
def test_drop_at_any_point_keeps_the_invariants(queue: tuple[list[str], set[str]], retry: int,
                                                drops: list[tuple[int, int]]) -> None:
    """Dropping any MR at any step rejects just it, and the rest still sorts out right."""
    names, bad = queue
    run = drive(start_plan(names, retry_flaky=retry), deterministic(bad), drops)
    assert run.main == [m for m in names if m not in bad and m not in run.dropped]
    assert {r.mr for r in run.finished.rejected} == bad | set(run.dropped)
    culprits = len(bad - set(run.dropped))
    assert run.finished.gate_runs <= max_gate_runs(len(names), culprits + len(run.dropped),
                                                   retry)


@given(queues(), st.integers(0, 2), DROPS, st.data())
@settings(deadline=None)
def test_any_gate_answers_finish_within_the_worst_budget(queue: tuple[list[str], set[str]],
                                                         retry: int,
                                                         drops: list[tuple[int, int]],
                                                         data: st.DataObject) -> None:
    """Whatever the gate says, main only takes green candidates and the plan finishes."""
    names, _ = queue
    run = drive(start_plan(names, retry_flaky=retry), lambda _: data.draw(st.booleans()), drops)
    assert run.finished.gate_runs <= max_gate_runs(len(names), len(names), retry)


@given(st.integers(1, 40), st.integers(1, 3))
@settings(deadline=None)
def test_flaky_retry_lands_the_batch_without_bisecting(n: int, retry: int) -> None:
    """A batch whose first run failed spuriously lands whole on the re-run."""
    names = ids(n)
    run = drive(start_plan(names, retry_flaky=retry), flaky(set()))
    everything = " ".join(names)
    assert run.trace == [f"test {everything}: red", f"test {everything}: green",
                         f"land {everything}"]


@given(queues(), st.integers(1, 2))
@settings(deadline=None)
def test_flaky_gate_with_retry_never_rejects_a_good_mr(queue: tuple[list[str], set[str]],
                                                       retry: int) -> None:
    """With a retry, a gate that fails every candidate's first run still rejects only bad MRs."""
    names, bad = queue
    run = drive(start_plan(names, retry_flaky=retry), flaky(bad))
    assert run.main == [m for m in names if m not in bad]
    assert {r.mr for r in run.finished.rejected} == bad
    assert run.finished.gate_runs <= max_gate_runs(len(names), len(names), retry)


# --------------------------------------------------------------------------- scenarios

SCENARIOS: dict[str, tuple[str, str, int, list[str]]] = {
    # name: (MRs, bad MRs, retry_flaky, expected trace)
    "all good": ("abcd", "", 0, ["test a b c d: green", "land a b c d"]),
    "first bad": ("abcd", "a", 0, [
        "test a b c d: red", "test a b: red", "test a: red", "reject a",
        "test b c d: green", "land b c d"]),
    "last bad": ("abcd", "d", 0, [
        "test a b c d: red", "test a b: green", "land a b", "test c: green", "land c",
        "reject d"]),
    "two adjacent bad": ("abcd", "bc", 0, [
        "test a b c d: red", "test a b: red", "test a: green", "land a", "reject b",
        "test c d: red", "test c: red", "reject c", "test d: green", "land d"]),
    "all bad": ("abcd", "abcd", 0, [
        "test a b c d: red", "test a b: red", "test a: red", "reject a",
        "test b c d: red", "test b: red", "reject b", "test c d: red", "test c: red",
        "reject c", "test d: red", "reject d"]),
    "batch of one, good": ("a", "", 0, ["test a: green", "land a"]),
    "batch of one, bad": ("a", "a", 0, ["test a: red", "reject a"]),
    "batch of one, bad, retried": ("a", "a", 1, ["test a: red", "test a: red", "reject a"]),
    "culprit confirmed": ("ab", "b", 1, [
        "test a b: red", "test a b: red", "test a: green", "land a", "reject b"]),
    "bisection culprit re-run": ("abc", "a", 1, [
        "test a b c: red", "test a b c: red", "test a: red", "test a: red", "reject a",
        "test b c: green", "land b c"]),
    "empty": ("", "", 0, []),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_named_scenario(name: str) -> None:
    """Each named history of gate results produces exactly the expected actions."""
    mrs, bad, retry, expected = SCENARIOS[name]
    run = drive(start_plan(list(mrs), retry_flaky=retry), deterministic(set(bad)))
    assert run.trace == expected
    assert run.finished.gate_runs <= max_gate_runs(len(mrs), len(bad), retry)


def test_drop_while_building_a_candidate_costs_no_run() -> None:
    """An MR that conflicts while stacking is rejected with the reason, without a gate run."""
    plan = start_plan(["a", "b", "c"])
    assert next_action(plan) == Test(("a", "b", "c"))
    plan = drop(plan, "b", "conflict")
    assert plan.gate_runs == 0
    assert next_action(plan) == Test(("a", "c"))
    plan = record_done(record_test(plan, True))
    assert next_action(plan) == Finished(("a", "c"), (Reject("b", "conflict"),), 1)


def test_protocol_misuse_is_refused() -> None:
    """Reporting out of turn, dropping a non-pending MR or repeating an MR raises ValueError."""
    plan = start_plan(["a"])
    with pytest.raises(ValueError, match="nothing to carry out"):
        record_done(plan)
    green = record_test(plan, True)
    with pytest.raises(ValueError, match="no test is expected"):
        record_test(green, True)
    with pytest.raises(ValueError, match="not pending"):
        drop(record_done(green), "a", "conflict")
    with pytest.raises(ValueError, match="twice"):
        start_plan(["a", "a"])
    with pytest.raises(ValueError):
        start_plan(["a"], retry_flaky=-1)


def test_budget_formula() -> None:
    """max_gate_runs is bad·(1 + 2·retry + ⌈log2 n⌉) + 1, without the +1 when all are bad."""
    assert max_gate_runs(0, 0, 0) == 0
    assert max_gate_runs(1, 0, 0) == 1
    assert max_gate_runs(1, 1, 0) == 1
    assert max_gate_runs(16, 1, 0) == 6
    assert max_gate_runs(16, 1, 1) == 8
    assert max_gate_runs(17, 2, 0) == 2 * 6 + 1
    with pytest.raises(ValueError):
        max_gate_runs(3, 4, 0)


# --------------------------------------------------------------------------- queue order

@dataclass(frozen=True)
class MR:
    id: str
    priority: int
    created_at: float


MR_LISTS = st.lists(
    st.builds(MR, id=st.text("abcdef", min_size=1, max_size=4), priority=st.integers(0, 4),
              created_at=st.floats(0, 1e6)),
    unique_by=lambda mr: mr.id, max_size=30)


@given(MR_LISTS, st.integers(1, 40))
def test_next_batch_takes_the_most_urgent_oldest_first(mrs: list[MR], size: int) -> None:
    """The batch is the first batch_size MRs by priority, then age, then id, in that order."""
    batch = next_batch(mrs, size)
    assert len(batch) == min(size, len(mrs))
    keys = [mr_order_key(mr) for mr in batch]
    assert keys == sorted(keys)
    left_out = [mr for mr in mrs if mr not in batch]
    assert all(mr_order_key(out) > keys[-1] for out in left_out)
    for earlier, later in itertools.pairwise(batch):
        assert (earlier.priority < later.priority
                or (earlier.priority == later.priority and earlier.created_at <= later.created_at))


@given(MR_LISTS, st.integers(1, 40), st.randoms(use_true_random=False))
def test_next_batch_ignores_the_input_order(mrs: list[MR], size: int,
                                            rnd: random.Random) -> None:
    """Shuffling the queue does not change the batch."""
    shuffled = list(mrs)
    rnd.shuffle(shuffled)
    assert next_batch(shuffled, size) == next_batch(mrs, size)


def test_next_batch_with_a_key_and_bad_size() -> None:
    """A custom key orders any items; a batch size below one is refused."""
    items = [("x", 2, 1.0), ("y", 0, 5.0), ("z", 0, 3.0)]
    assert next_batch(items, 2, key=lambda t: order_key(t[1], t[2], t[0])) == [items[2], items[1]]
    with pytest.raises(ValueError):
        next_batch(items, 0, key=lambda t: order_key(t[1], t[2], t[0]))


# --------------------------------------------------------------------------- batch size


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[int, bool]]:
    """Batches as (MRs ready, did every MR of the batch land)."""
    return draw(st.lists(st.tuples(st.integers(0, 60), st.booleans()), max_size=40))


@given(histories(), st.integers(1, 32))
def test_auto_batch_stays_within_the_cap_and_the_ready_count(history: list[tuple[int, bool]],
                                                             cap: int) -> None:
    """However batches went, the next one takes 1..min(cap, ready) MRs, 0 only when none
    is ready; a fixed size is taken as it is, up to the ready count."""
    auto = AutoBatch(cap=cap)
    for ready, landed in history:
        taken = batch_limit("auto", auto, ready)
        assert (taken == 0) == (ready == 0)
        assert taken <= min(cap, ready)
        assert batch_limit(5, auto, ready) == min(5, ready)
        if taken:
            before = auto.size
            auto = auto.after(taken, landed)
            assert 1 <= auto.size <= cap
            assert auto.size == (1 if not landed else
                                 min(cap, 2 * before) if taken == before else before)


def test_auto_batch_grows_on_passing_full_batches_and_drops_to_one_on_a_failure() -> None:
    """1, 2, 4, 8, 16, 16 while full batches pass; 1 after a rejection; a short batch
    (fewer ready than allowed) that passes keeps the size."""
    auto, sizes = AutoBatch(), []
    for _ in range(6):
        sizes.append(batch_limit("auto", auto, 100))
        auto = auto.after(sizes[-1], True)
    assert sizes == [1, 2, 4, 8, 16, 16] and AUTO_BATCH_CAP == 16
    assert auto.after(16, False).size == 1
    assert auto.after(3, True).size == 16
    assert AutoBatch(size=4).after(2, True).size == 4
    with pytest.raises(ValueError):
        batch_limit(0, auto, 3)


@given(queues(max_size=60), st.integers(0, 2), st.integers(1, 16))
@settings(deadline=None)
def test_auto_batches_land_exactly_the_good_in_order(queue: tuple[list[str], set[str]],
                                                     retry: int, cap: int) -> None:
    """The queue worked off in "auto" batches, each bisected as usual: exactly the good MRs
    land, in queue order, the bad ones are rejected, every batch within its bounds."""
    names, bad = queue
    auto, remaining, main, rejected = AutoBatch(cap=cap), list(names), [], set()
    while remaining:
        taken = batch_limit("auto", auto, len(remaining))
        assert 1 <= taken <= min(cap, len(remaining))
        run = drive(start_plan(remaining[:taken], retry_flaky=retry), deterministic(bad))
        assert run.finished.gate_runs <= max_gate_runs(
            taken, len(bad.intersection(remaining[:taken])), retry)
        main += run.main
        rejected |= {r.mr for r in run.finished.rejected}
        auto = auto.after(taken, not run.finished.rejected)
        remaining = remaining[taken:]
    assert main == [m for m in names if m not in bad]
    assert rejected == bad

