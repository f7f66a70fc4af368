"""The suite's longest-first order (tests/schedule.py): what a test is expected to take."""

from __future__ import annotations

from tests.schedule import TIER_GUESS, estimates


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
