"""The merge queue's chains (batches of one, pushed together) and how long they are.

Driven by the simulated gates of :mod:`tests.unit.test_merge_queue`, whose driver checks
at every Land of a chain that each commit it puts on main was gated as it lands.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gastown.roles.core.merge_queue import (
    CHAIN_CAP,
    Finished,
    Land,
    Reject,
    Test,
    chain_limit,
    drop,
    next_action,
    record_done,
    record_test,
    start_plan,
)
from tests.unit.test_merge_queue import DROPS, deterministic, drive, flaky, queues


@given(queues(), st.integers(0, 2))
@settings(deadline=None)
def test_a_chain_lands_exactly_the_good_in_order_one_run_each(
        queue: tuple[list[str], set[str]], retry: int) -> None:
    """Good MRs land in order, bad ones are rejected; a deterministic gate runs once per
    MR, plus the re-runs of each culprit: no bisection."""
    names, bad = queue
    run = drive(start_plan(names, retry_flaky=retry, each=True), deterministic(bad))
    assert run.main == [m for m in names if m not in bad]
    assert [r.mr for r in run.finished.rejected] == [m for m in names if m in bad]
    assert run.finished.gate_runs == len(names) + len(bad) * retry


@given(queues(), st.integers(0, 2))
@settings(deadline=None)
def test_a_chain_gates_every_mr_alone_on_top_of_the_last(
        queue: tuple[list[str], set[str]], retry: int) -> None:
    """Every test is one MR more than a green candidate (or a re-run of a red one): the
    chain never gates two new MRs at once."""
    names, bad = queue
    run = drive(start_plan(names, retry_flaky=retry, each=True), deterministic(bad))
    last_green: list[str] = []
    for line in run.trace:
        if line.startswith(("land", "reject")):
            last_green = []
        elif line.startswith("test"):
            mrs = line.split(": ")[0].split()[1:]
            assert mrs[:-1] == last_green, (mrs, last_green)
            if line.endswith("green"):
                last_green = mrs


@given(queues(), st.integers(0, 2), DROPS)
@settings(deadline=None)
def test_a_drop_at_any_point_of_a_chain_keeps_the_invariants(
        queue: tuple[list[str], set[str]], retry: int, drops: list[tuple[int, int]]) -> None:
    """A conflict (a drop) at any step rejects just that MR, and the rest sorts out."""
    names, bad = queue
    run = drive(start_plan(names, retry_flaky=retry, each=True), deterministic(bad), drops)
    assert run.main == [m for m in names if m not in bad and m not in run.dropped]
    assert {r.mr for r in run.finished.rejected} == bad | set(run.dropped)
    # Between two drops, each MR costs one run (a culprit 1 + retry); a drop of a green
    # MR (which the refinery never does: a conflict is found before its gate) starts over.
    assert run.finished.gate_runs <= len(names) * (1 + retry) * (1 + len(run.dropped))


@given(queues(), st.integers(0, 2), DROPS, st.data())
@settings(deadline=None)
def test_any_gate_answers_finish_a_chain_within_one_run_per_try(
        queue: tuple[list[str], set[str]], retry: int, drops: list[tuple[int, int]],
        data: st.DataObject) -> None:
    """Whatever the gate says, main takes only gated commits and every MR costs at most
    1 + retry_flaky runs (between two drops)."""
    names, _ = queue
    run = drive(start_plan(names, retry_flaky=retry, each=True),
                lambda _: data.draw(st.booleans()), drops)
    assert run.finished.gate_runs <= len(names) * (1 + retry) * (1 + len(run.dropped))


@given(queues(), st.integers(1, 2))
@settings(deadline=None)
def test_a_flaky_gate_with_retry_never_rejects_a_good_mr_of_a_chain(
        queue: tuple[list[str], set[str]], retry: int) -> None:
    names, bad = queue
    run = drive(start_plan(names, retry_flaky=retry, each=True), flaky(bad))
    assert run.main == [m for m in names if m not in bad]
    assert {r.mr for r in run.finished.rejected} == bad


SCENARIOS: dict[str, tuple[str, str, int, list[str]]] = {
    # name: (MRs, bad MRs, retry_flaky, expected trace)
    "all good": ("abc", "", 0, [
        "test a: green", "test a b: green", "test a b c: green", "land a b c"]),
    "first bad": ("abc", "a", 0, [
        "test a: red", "reject a", "test b: green", "test b c: green", "land b c"]),
    "middle bad": ("abcd", "c", 0, [
        "test a: green", "test a b: green", "test a b c: red", "land a b", "reject c",
        "test d: green", "land d"]),
    "middle bad, retried": ("abc", "b", 1, [
        "test a: green", "test a b: red", "test a b: red", "land a", "reject b",
        "test c: green", "land c"]),
    "last bad": ("abc", "c", 0, [
        "test a: green", "test a b: green", "test a b c: red", "land a b", "reject c"]),
    "one": ("a", "", 0, ["test a: green", "land a"]),
    "empty": ("", "", 0, []),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_named_chain(name: str) -> None:
    mrs, bad, retry, expected = SCENARIOS[name]
    run = drive(start_plan(list(mrs), retry_flaky=retry, each=True), deterministic(set(bad)))
    assert run.trace == expected


def test_a_flaky_red_in_a_chain_is_re_run_and_the_chain_goes_on() -> None:
    run = drive(start_plan(["a", "b"], retry_flaky=1, each=True), flaky(set()))
    assert run.trace == ["test a: red", "test a: green", "test a b: red", "test a b: green",
                         "land a b"]


def test_a_conflict_of_the_mr_under_test_keeps_the_green_prefix() -> None:
    """The MR that would be stacked next conflicts: dropped, the next one is tested on the
    same green prefix, no run lost."""
    plan = start_plan(["a", "b", "c"], each=True)
    plan = record_test(plan, True)
    assert next_action(plan) == Test(("a", "b"), "each")
    plan = drop(plan, "b", "conflict")
    assert next_action(plan) == Test(("a", "c"), "each")
    plan = record_test(plan, True)
    assert next_action(plan) == Land(("a", "c"))
    plan = record_done(plan)
    assert next_action(plan) == Finished(("a", "c"), (Reject("b", "conflict"),), 2)


# --------------------------------------------------------------------------- its length

def test_a_chain_waits_for_a_measurement_before_it_grows() -> None:
    assert chain_limit(1.0, None, 30) == 1
    assert chain_limit(0.0, 0.01, 30) == 1  # land_within = 0: each pushed alone
    assert chain_limit(1.0, 0.05, 30) == CHAIN_CAP
    assert chain_limit(1.0, 0.3, 30) == 3
    assert chain_limit(1.0, 2.0, 30) == 1  # slow gates: one at a time
    assert chain_limit(1.0, 0.05, 5) == 5
    assert chain_limit(1.0, 0.05, 0) == 0


@given(st.floats(0, 60), st.none() | st.floats(0, 600), st.integers(0, 100))
def test_a_chain_fits_its_steps_in_land_within(land_within: float, step: float | None,
                                                ready: int) -> None:
    """Never more than are ready or the cap, one at least while one is ready, and a chain
    of more than one only when its steps fit in ``land_within``."""
    size = chain_limit(land_within, step, ready)
    assert 0 <= size <= min(ready, CHAIN_CAP)
    assert (size >= 1) == (ready >= 1)
    if size > 1:
        assert step is not None and size * step <= land_within
