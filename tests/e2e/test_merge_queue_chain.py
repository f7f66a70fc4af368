"""Chains (batches of one pushed together, ``merge_queue.land_within``), end to end.

MRs are queued while the town is down, so the refinery finds them all at once. The
gate records the commit it ran on (and the MRs it was given); the remote's reflog
records every push. So the tests see that each commit put on main was gated exactly as
it sits there, that each MR was gated once, and how many pushes it took.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, git, make_remote
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.test_merge_queue_speculative import queue_mrs
from tests.e2e.test_refinery import SLEEPER, main_log, settled
from tests.e2e.town_helpers import clone, configure, gate, script_town, tear_down_town
from tests.invariants import check_invariants, reflog


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remote.git", files={"README.md": "hello\n"})


@pytest.fixture
def town(cli: Cli, remote: Path, tmp_path: Path) -> Iterator[Path]:
    cli.env["GASTOWN_FAULT_STATE"] = str(tmp_path)
    root = script_town(cli, remote, town_toml="max_polecats = 40\n" + SLEEPER)
    yield root
    tear_down_town(cli, root)


def chain_config(land_within: str, log: Path) -> str:
    """Batches of one, the given ``land_within``; a gate that logs ``HEAD|MRs`` and fails
    on a tree holding ``bad.txt``."""
    return (f'[merge_queue]\nbatch_size = 1\nland_within = "{land_within}"\n'
            "[polecats]\nmax = 20\n"
            + gate("test", f'echo "$(git rev-parse HEAD)|$GASTOWN_MRS" >> {log}; '
                           'test "$(git rev-parse HEAD)" = "$GASTOWN_CANDIDATE" && '
                           "test ! -e bad.txt"))


def gate_runs(log: Path) -> list[tuple[str, list[str]]]:
    """(the commit gated, the MRs of its candidate) for each gate run, in order."""
    out = []
    for line in log.read_text().splitlines():
        commit, _, mrs = line.partition("|")
        out.append((commit, mrs.split()))
    return out


def pushes(remote: Path, moves_before: int) -> int:
    """How many times the remote's main moved since its reflog had ``moves_before``."""
    return len(reflog(remote, "main")) - moves_before


def landed_since(remote: Path, before: str) -> list[str]:
    """The commits on the remote's main after ``before``, oldest first."""
    return git("rev-list", "--first-parent", "--reverse", f"{before}..main",
               cwd=remote).split()


def test_mrs_ready_together_are_gated_each_and_pushed_together(
        cli: Cli, town: Path, feed: FeedWaiter, tmp_path: Path, remote: Path) -> None:
    """8 MRs: the first alone (no step measured yet), then the 7 others as one chain:
    8 gate runs, one per MR, each on one MR more; 2 pushes; every commit on main gated
    as it is there, and each MR recorded as merged at its own commit."""
    log = tmp_path / "runs.txt"
    configure(town, chain_config("30s", log))
    before = git("rev-parse", "main", cwd=remote).strip()
    moves = len(reflog(remote, "main"))
    cli.ok("up")
    queue_mrs(cli, 8)
    cli.ok("up")
    found = settled(cli, feed, 8, timeout=120)
    assert {m["state"] for m in found} == {"merged"}
    runs = gate_runs(log)
    print(f"gate runs: {runs}")
    landed = landed_since(remote, before)
    assert len(landed) == 8
    assert [s.split(" ", 1)[1] for s in main_log(remote)[:8]][::-1] == \
        [f"edit good{i}.txt" for i in range(8)]
    # Each MR gated once, alone on top of the ones before it; each landed commit gated.
    assert len(runs) == 8
    assert [commit for commit, _ in runs] == landed
    assert [len(mrs) for _, mrs in runs] == [1, 1, 2, 3, 4, 5, 6, 7]
    assert pushes(remote, moves) == 2
    by_order = sorted(found, key=lambda m: float(str(m["created_at"])))
    assert [m["merged_commit"] for m in by_order] == landed
    check_invariants(town, "web")
    assert git("status", "--porcelain", cwd=clone(town)).strip() == ""


def test_a_red_mr_in_a_chain_lands_those_before_and_the_rest_goes_on(
        cli: Cli, town: Path, feed: FeedWaiter, tmp_path: Path, remote: Path) -> None:
    """8 MRs, the 5th bad: the first alone, then a chain that lands MRs 2-4 when the 5th
    runs red, rejects it, and lands 6-8 as a new chain. Every MR gated once; 3 pushes."""
    log = tmp_path / "runs.txt"
    configure(town, chain_config("30s", log))
    before = git("rev-parse", "main", cwd=remote).strip()
    moves = len(reflog(remote, "main"))
    cli.ok("up")
    beads = queue_mrs(cli, 8, bad=4)
    cli.ok("up")
    found = {m["bead"]: m for m in settled(cli, feed, 8, timeout=120)}
    assert found[beads[4]]["state"] == "rejected"
    assert str(found[beads[4]]["reason"]).startswith("gate test")
    assert all(found[b]["state"] == "merged" for i, b in enumerate(beads) if i != 4)
    runs = gate_runs(log)
    print(f"gate runs: {runs}")
    landed = landed_since(remote, before)
    assert [s.split(" ", 1)[1] for s in main_log(remote)[:7]][::-1] == \
        [f"edit good{i}.txt" for i in range(8) if i != 4]
    assert len(runs) == 8
    assert [len(mrs) for _, mrs in runs] == [1, 1, 2, 3, 4, 1, 2, 3]
    assert set(landed) <= {commit for commit, _ in runs}
    assert pushes(remote, moves) == 3
    check_invariants(town, "web")
    assert git("status", "--porcelain", cwd=clone(town)).strip() == ""


def test_land_within_zero_pushes_every_mr_on_its_own(
        cli: Cli, town: Path, feed: FeedWaiter, tmp_path: Path, remote: Path) -> None:
    log = tmp_path / "runs.txt"
    configure(town, chain_config("0s", log))
    moves = len(reflog(remote, "main"))
    cli.ok("up")
    queue_mrs(cli, 4)
    cli.ok("up")
    found = settled(cli, feed, 4, timeout=120)
    assert {m["state"] for m in found} == {"merged"}
    assert [len(mrs) for _, mrs in gate_runs(log)] == [1, 1, 1, 1]
    assert pushes(remote, moves) == 4
    check_invariants(town, "web")
