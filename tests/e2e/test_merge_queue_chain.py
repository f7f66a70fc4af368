"""Chains (batches of one pushed together, ``merge_queue.land_within``), end to end.

MRs are queued while the town is down, so the refinery finds them all at once. The
gate records the commit it ran on (and the MRs it was given); the remote's reflog
records every push. So the tests see that each commit put on main was gated exactly as
it sits there, that each MR was gated once, and how many pushes it took.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.conftest import Cli, git
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.test_merge_queue_speculative import queue_mrs
from tests.e2e.test_merge_queue_speculative import remote as remote  # the fixtures
from tests.e2e.test_merge_queue_speculative import town as town
from tests.e2e.test_refinery import main_log, settled
from tests.e2e.town_helpers import clone, configure, gate
from tests.invariants import check_invariants, reflog


@dataclass
class Outcome:
    """What a run of queued MRs left: the MRs by bead, the gate runs, what landed."""

    beads: list[str]
    mrs: dict[str, dict[str, object]]
    #: (the commit gated, the MRs of its candidate) for each gate run, in order.
    runs: list[tuple[str, list[str]]]
    #: The commits on the remote's main since the start, oldest first.
    landed: list[str]
    #: How many times the remote's main moved.
    pushes: int


def run_queue(cli: Cli, town: Path, feed: FeedWaiter, tmp_path: Path, remote: Path, *,
              land_within: str, count: int, bad: int | None = None) -> Outcome:
    """``count`` MRs (the one at index ``bad`` adding ``bad.txt``) queued while the town
    is down, merged with batches of one and ``land_within``, under a gate that logs
    ``HEAD|MRs``, checks it runs on the candidate, and fails on a tree with ``bad.txt``."""
    log = tmp_path / "runs.txt"
    configure(town, f'[merge_queue]\nbatch_size = 1\nland_within = "{land_within}"\n'
                    "[polecats]\nmax = 20\n"
              + gate("test", f'echo "$(git rev-parse HEAD)|$GASTOWN_MRS" >> {log}; '
                             'test "$(git rev-parse HEAD)" = "$GASTOWN_CANDIDATE" && '
                             "test ! -e bad.txt"))
    before = git("rev-parse", "main", cwd=remote).strip()
    moves = len(reflog(remote, "main"))
    cli.ok("up")
    beads = queue_mrs(cli, count, bad=bad)
    cli.ok("up")
    found = {str(m["bead"]): m for m in settled(cli, feed, count, timeout=120)}
    runs = [(commit, mrs.split()) for commit, _, mrs in
            (line.partition("|") for line in log.read_text().splitlines())]
    print(f"gate runs: {runs}")
    landed = git("rev-list", "--first-parent", "--reverse", f"{before}..main",
                 cwd=remote).split()
    check_invariants(town, "web")
    assert git("status", "--porcelain", cwd=clone(town)).strip() == ""
    return Outcome(beads, found, runs, landed, len(reflog(remote, "main")) - moves)


def test_mrs_ready_together_are_gated_each_and_pushed_together(
        cli: Cli, town: Path, feed: FeedWaiter, tmp_path: Path, remote: Path) -> None:
    """8 MRs: the first alone (no step measured yet), then the 7 others as one chain:
    8 gate runs, one per MR, each on one MR more; 2 pushes; every commit on main gated
    as it is there, and each MR recorded as merged at its own commit."""
    out = run_queue(cli, town, feed, tmp_path, remote, land_within="30s", count=8)
    assert {m["state"] for m in out.mrs.values()} == {"merged"}
    assert len(out.landed) == 8
    assert [s.split(" ", 1)[1] for s in main_log(remote)[:8]][::-1] == \
        [f"edit good{i}.txt" for i in range(8)]
    # Each MR gated once, alone on top of the ones before it; each landed commit gated.
    assert [commit for commit, _ in out.runs] == out.landed
    assert [len(mrs) for _, mrs in out.runs] == [1, 1, 2, 3, 4, 5, 6, 7]
    assert out.pushes == 2
    assert [out.mrs[b]["merged_commit"] for b in out.beads] == out.landed
    # Each MR's record names the log of its own gate run.
    assert all(str(out.mrs[b]["log"]).endswith(f"-{out.mrs[b]['id']}.log")
               for b in out.beads)


def test_a_red_mr_in_a_chain_lands_those_before_and_the_rest_goes_on(
        cli: Cli, town: Path, feed: FeedWaiter, tmp_path: Path, remote: Path) -> None:
    """8 MRs, the 5th bad: the first alone, then a chain that lands MRs 2-4 when the 5th
    runs red, rejects it, and lands 6-8 as a new chain. Every MR gated once; 3 pushes."""
    out = run_queue(cli, town, feed, tmp_path, remote, land_within="30s", count=8, bad=4)
    rejected = out.mrs[out.beads[4]]
    assert rejected["state"] == "rejected"
    assert str(rejected["reason"]).startswith("gate test")
    assert all(out.mrs[b]["state"] == "merged" for i, b in enumerate(out.beads) if i != 4)
    assert [s.split(" ", 1)[1] for s in main_log(remote)[:7]][::-1] == \
        [f"edit good{i}.txt" for i in range(8) if i != 4]
    assert [len(mrs) for _, mrs in out.runs] == [1, 1, 2, 3, 4, 1, 2, 3]
    assert set(out.landed) <= {commit for commit, _ in out.runs}
    assert out.pushes == 3


def test_land_within_zero_pushes_every_mr_on_its_own(
        cli: Cli, town: Path, feed: FeedWaiter, tmp_path: Path, remote: Path) -> None:
    out = run_queue(cli, town, feed, tmp_path, remote, land_within="0s", count=4)
    assert {m["state"] for m in out.mrs.values()} == {"merged"}
    assert [len(mrs) for _, mrs in out.runs] == [1, 1, 1, 1]
    assert out.pushes == 4
