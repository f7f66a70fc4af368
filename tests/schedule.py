"""Longest tests first, and the waiting lane: which tests the suite's workers take, and
when (a pytest plugin).

``make test`` runs four workers on two cores: three take tests as below, the fourth the
tests that mostly wait (:data:`WAITS`, :class:`WaitingLane`). In file order the long
end-to-end tests (a real agent CLI's demo, a chaos run, a 16-MR bisection: 10-20 s each)
come wherever their file sorts, and the last of them set the suite's wall time while the
other workers sit idle. Started first, they overlap with everything else, and the run
ends on unit tests of a few milliseconds: the classic longest-processing-time-first rule,
with ``--dist load --maxschedchunk 1`` so that a worker takes the next tests only when it
is short of them.

The durations come from an earlier run, kept in ``tests/durations.json`` (``pytest
--record-durations tests/durations.json`` rewrites it; ``make test-durations``). A test
the file does not know gets the median of its module's known tests, else a guess by its
tier. The order changes nothing a test asserts: every test sets up its own town, repo
and processes (no fixture wider than a function shares state, apart from the read-only
agent CLIs).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import pytest
from xdist.scheduler import LoadScheduling  # type: ignore[import-untyped]
from xdist.workermanage import WorkerController  # type: ignore[import-untyped]

DURATIONS = Path(__file__).with_name("durations.json")
# Seconds for a test the durations file does not know yet, by tier (the folder under tests/).
TIER_GUESS = {"chaos": 10.0, "e2e": 2.0, "integration": 0.5, "unit": 0.05}
DEFAULT_GUESS = 0.5
#: Tests that drive a real agent CLI: each keeps about a core busy while it runs.
HEAVY_MARK = "agent_cli"
#: At least this many other tests between two heavy ones (three workers besides the lane:
#: the next heavy test starts about when the first of the two lighter ones ends).
SPREAD_GAP = 2


#: Tests that mostly wait (measured: wall time at least three times their CPU time, over
#: a second): on timers of the product (a stop timeout, a respawn back-off, the lifeline
#: backstop, a dialog's resend), on gates that sleep, on a supervisor paused on purpose.
#: One worker, the waiting lane, takes them one after the other while the others take the
#: rest, so that their waits overlap with work instead of with each other. A name here that
#: no longer matches a test only loses its place in the lane (tests/unit/test_schedule.py
#: checks that each still names one).
WAITS = frozenset({
    "tests/e2e/test_demo.py::test_demo_merges_rejects_and_cleans_up",
    "tests/e2e/test_refinery.py::test_batch_of_16_with_one_bad_bisects_within_budget",
    "tests/e2e/test_refinery.py::test_hanging_gate_is_killed_with_its_children",
    "tests/e2e/test_pool_setup.py::test_the_pool_prepares_trees_with_the_setup_and_a_sling_"
    "does_not_run_it_again",
    "tests/e2e/test_pool_setup.py::test_a_changed_setup_runs_at_sling_in_a_tree_prepared_"
    "with_the_old_one",
    "tests/e2e/test_pool_setup.py::test_in_pool_false_keeps_the_setup_at_sling",
    "tests/e2e/test_role_guarantees.py::test_hung_role_dies_with_its_killed_supervisor",
    "tests/e2e/test_role_guarantees.py::test_down_while_the_supervisor_starts_its_bus",
    "tests/e2e/test_role_guarantees.py::test_role_whose_lock_is_held_fails_to_start",
    "tests/e2e/test_role_guarantees.py::test_second_instance_by_hand_cannot_run_beside_the_role",
    "tests/e2e/test_role_guarantees.py::test_down_names_a_role_running_without_a_supervisor",
    "tests/e2e/test_systemd.py::test_sd_notify_ready_status_watchdog_stopping",
    "tests/e2e/test_witness.py::test_agent_exiting_without_done_is_respawned_then_escalated",
    "tests/e2e/test_witness.py::test_silent_session_is_noted_not_killed",
    "tests/e2e/test_worktree_setup.py::test_down_all_stops_a_running_setup",
    "tests/e2e/test_kept_work.py::test_escalation_stops_what_is_left_of_the_session",
    "tests/e2e/test_polecats.py::test_kill_9_mayor_mid_sling_leaves_nothing_half_made",
    "tests/e2e/test_town_lifecycle.py::test_role_ignoring_sigterm_is_killed_after_its_timeout",
    "tests/e2e/test_cli_recovery.py::test_mq_check_fails_with_the_tail_and_cleans_up_after_a_"
    "failure_or_timeout",
    "tests/integration/test_tmux_input.py::test_a_dialog_that_did_not_get_its_key_gets_it_again",
    "tests/integration/test_tmux_input.py::test_a_dialog_is_answered_once_per_appearance",
    "tests/integration/test_tmux_input.py::test_unknown_screen_gets_no_key",
    "tests/integration/test_tmux_input.py::test_nothing_is_typed_into_a_busy_agent",
    "tests/integration/test_tmux_input.py::test_codex_splash_does_not_end_the_wait",
    "tests/integration/test_tmux_input.py::test_claude_dialogs_get_exactly_their_keys",
    "tests/integration/test_tmux_input.py::test_onboarding_screens_are_answered",
    "tests/integration/test_role_witness.py::test_the_witness_respawns_a_polecat_whose_"
    "session_died",
    "tests/integration/test_role_witness.py::test_a_death_reported_while_the_revive_runs_is_"
    "not_dropped",
    "tests/integration/test_gates.py::test_timed_out_gate_is_killed_with_its_whole_group",
    "tests/integration/test_git_command.py::test_a_read_only_git_killed_by_another_process_"
    "is_run_once_more",
})


def waits(nodeid: str) -> bool:
    """Whether the test (any of its parameters) is one of :data:`WAITS`."""
    return nodeid.partition("[")[0] in WAITS


def pick(pending: list[int], collection: list[str], *, lane: bool, num: int) -> list[int]:
    """The next ``num`` tests (indexes into ``collection``, in ``pending``'s order) for
    the lane (``lane``: tests of :data:`WAITS` first) or for another worker (the others
    first); of the other kind once a worker's own kind is used up."""
    mine = [i for i in pending if waits(collection[i]) == lane]
    return (mine or pending)[:num]


class WaitingLane(LoadScheduling):  # type: ignore[misc]  # (xdist has no type hints)
    """xdist's ``--dist load`` (the next tests to whichever worker is short of them), but
    one worker, the lane, takes the tests of :data:`WAITS` first and the others take the
    rest first; either takes from the other kind once its own is used up."""

    def _send_tests(self, node: WorkerController, num: int) -> None:
        assert self.collection is not None
        lane = self.nodes[0] is node and len(self.nodes) > 1
        chosen = pick(self.pending, self.collection, lane=lane, num=num)
        if chosen:
            taken = set(chosen)
            self.pending[:] = [i for i in self.pending if i not in taken]
            self.node2pending[node].extend(chosen)
            node.send_runtest_some(chosen)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadScheduling | None:
    if config.getvalue("dist") != "load":
        return None
    return WaitingLane(config, log)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record-durations", metavar="PATH", default=None,
                     help="write each test's duration (setup + call + teardown, seconds) "
                          "to PATH as JSON, for the longest-first order")


def _known() -> dict[str, float]:
    try:
        data = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def estimates(nodeids: list[str], known: dict[str, float]) -> dict[str, float]:
    """Each test's expected seconds: recorded, else its module's median, else its tier's."""
    by_module: dict[str, list[float]] = defaultdict(list)
    for nodeid, seconds in known.items():
        by_module[nodeid.split("::", 1)[0]].append(seconds)
    out: dict[str, float] = {}
    for nodeid in nodeids:
        if nodeid in known:
            out[nodeid] = known[nodeid]
            continue
        module = nodeid.split("::", 1)[0]
        if by_module.get(module):
            out[nodeid] = statistics.median(by_module[module])
        else:
            parts = module.split("/")
            tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
            out[nodeid] = TIER_GUESS.get(tier, DEFAULT_GUESS)
    return out


def spread(order: list[str], heavy: set[str], gap: int = SPREAD_GAP) -> list[str]:
    """``order`` with each test of ``heavy`` placed at least ``gap`` places after the
    previous one (it waits while lighter tests go first; the rest keep their order).

    Longest-first puts the real agent CLI tests side by side at the start, and three of
    them at once on two cores starve each CLI (seen: Claude Code's ``--continue`` lost
    its conversation after a kill under that load). Apart, they overlap with lighter
    tests as they did in file order."""
    out: list[str] = []
    waiting: list[str] = []
    since = gap  # places since the last heavy test
    for nodeid in order:
        if since >= gap and waiting:
            out.append(waiting.pop(0))
            since = 0
        if nodeid in heavy:
            if since >= gap and not waiting:
                out.append(nodeid)
                since = 0
            else:
                waiting.append(nodeid)
            continue
        out.append(nodeid)
        since += 1
    return out + waiting


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first, the heavy ones spread apart; ties keep the collection order (sort is
    stable), so every worker of a run computes the same order, as xdist requires."""
    guess = estimates([item.nodeid for item in items], _known())
    items.sort(key=lambda item: -guess[item.nodeid])
    heavy = {item.nodeid for item in items if item.get_closest_marker(HEAVY_MARK)}
    by_id = {item.nodeid: item for item in items}
    items[:] = [by_id[nodeid] for nodeid in spread([item.nodeid for item in items], heavy)]


class _Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] += report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput"):
            return  # an xdist worker: the controller receives every report and writes
        # To 0.1 s: enough to order them, and a new recording changes fewer lines.
        rounded = {k: round(v, 1) for k, v in sorted(self.seconds.items())}
        self.path.write_text(json.dumps(rounded, indent=0) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--record-durations")
    if path:
        config.pluginmanager.register(_Recorder(Path(path)), "gastown-durations-recorder")
