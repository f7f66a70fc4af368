"""Longest tests first: the order the suite's workers take tests in (a pytest plugin).

``make test`` runs three workers on two cores. In file order the long end-to-end tests
(a real agent CLI's demo, a chaos run, a 16-MR bisection: 10-20 s each) come wherever
their file sorts, and the last of them set the suite's wall time while the other workers
sit idle. Started first, they overlap with everything else, and the run ends on unit
tests of a few milliseconds: the classic longest-processing-time-first rule, with
``--dist load --maxschedchunk 1`` so that a worker takes the next test only when it is
free.

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

DURATIONS = Path(__file__).with_name("durations.json")
# Seconds for a test the durations file does not know yet, by tier (the folder under tests/).
TIER_GUESS = {"chaos": 10.0, "e2e": 2.0, "integration": 0.5, "unit": 0.05}
DEFAULT_GUESS = 0.5
#: Tests that drive a real agent CLI: each keeps about a core busy while it runs.
HEAVY_MARK = "agent_cli"
#: At least this many other tests between two heavy ones (three workers: the next heavy
#: test starts about when the first of the two lighter ones ends).
SPREAD_GAP = 2


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
