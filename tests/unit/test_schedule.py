"""The suite's longest-first order (tests/schedule.py): what a test is expected to take."""

from __future__ import annotations

import importlib

from tests.schedule import TIER_GUESS, WAITS, estimates, pick, spread


def test_a_recorded_duration_is_used_as_is() -> None:
    known = {"tests/e2e/test_a.py::test_x": 12.5}
    assert estimates(["tests/e2e/test_a.py::test_x"], known) == {
        "tests/e2e/test_a.py::test_x": 12.5}


def test_an_unknown_test_gets_its_modules_median_then_its_tiers_guess() -> None:
    known = {"tests/e2e/test_a.py::test_x": 1.0, "tests/e2e/test_a.py::test_y": 3.0,
             "tests/e2e/test_a.py::test_z": 8.0}
    got = estimates(["tests/e2e/test_a.py::test_new[p]", "tests/unit/test_b.py::test_new",
                     "tests/chaos/test_c.py::test_new", "tests/test_top.py::test_new"], known)
    assert got == {"tests/e2e/test_a.py::test_new[p]": 3.0,
                   "tests/unit/test_b.py::test_new": TIER_GUESS["unit"],
                   "tests/chaos/test_c.py::test_new": TIER_GUESS["chaos"],
                   "tests/test_top.py::test_new": 0.5}


def test_heavy_tests_are_spread_apart_and_none_is_lost() -> None:
    order = ["h1", "h2", "a", "h3", "b", "c", "d", "e"]
    got = spread(order, {"h1", "h2", "h3"}, gap=2)
    assert got == ["h1", "a", "b", "h2", "c", "d", "h3", "e"]
    assert sorted(got) == sorted(order)


def test_heavy_tests_left_at_the_end_still_run() -> None:
    assert spread(["h1", "h2", "h3", "a"], {"h1", "h2", "h3"}, gap=2) == \
        ["h1", "a", "h2", "h3"]


def test_every_waiting_test_named_exists() -> None:
    for name in WAITS:
        path, _, function = name.partition("::")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, function, None)), f"{name}: no such test"


def test_the_lane_takes_the_waiting_tests_and_the_others_the_rest() -> None:
    waiting = "tests/e2e/test_witness.py::test_silent_session_is_noted_not_killed"
    parametrized = ("tests/e2e/test_polecats.py::test_kill_9_mayor_mid_sling_leaves_nothing_"
                    "half_made[tmux-sling.after_reserve]")
    collection = ["tests/unit/test_a.py::test_1", waiting, "tests/unit/test_a.py::test_2",
                  parametrized, "tests/unit/test_a.py::test_3"]
    pending = list(range(len(collection)))
    assert pick(pending, collection, lane=True, num=2) == [1, 3]
    assert pick(pending, collection, lane=False, num=2) == [0, 2]
    # Each takes from the other kind once its own is used up, in the pending order.
    assert pick([0, 2, 4], collection, lane=True, num=2) == [0, 2]
    assert pick([3, 1], collection, lane=False, num=5) == [3, 1]
    assert pick([], collection, lane=False, num=2) == []
