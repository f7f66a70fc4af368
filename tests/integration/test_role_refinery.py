"""The refinery in the test's trio loop: real bus, store, git (a bare remote) and agents.

It merges queued MRs onto the remote's main by fast-forward, rejects one whose rebase
conflicts (its worktree kept), and, cancelled in the middle of a gate, stops with the
gate's process killed; the next refinery puts the interrupted MR back in the queue and
merges it exactly once. The polecats are real (``script`` agents that commit and run
``gastown done``); no mayor or witness runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gastown.roles.refinery import Refinery
from tests.conftest import git
from tests.integration.conftest import Fifo
from tests.integration.roles_world import (
    RIG,
    Site,
    alive,
    make_site,
    remove_site,
    running_world,
    show,
)
from tests.integration.roles_world import site as site  # the fixture

REFINERY = f"refinery:{RIG}"


def remote_main(site: Site) -> str:
    return git("rev-parse", "main", cwd=site.remote).strip()


async def test_the_refinery_merges_a_queued_mr_onto_the_remotes_main(site: Site) -> None:
    before = remote_main(site)
    async with running_world(site) as world, world.role(REFINERY) as refinery:
        assert isinstance(refinery, Refinery)
        polecat = await world.spawn("add a feature", "echo feature > feature.txt")
        created = await world.wait_event("mr_created", polecat=polecat.name)

        merged = await world.wait_event("mr_merged", mr=created["mr"])

        after = remote_main(site)
        assert merged["commit"] == after != before
        # A fast-forward of the remote's main: the old main is the new one's parent.
        assert git("rev-parse", f"{after}^", cwd=site.remote).strip() == before
        assert show(site.remote, "main:feature.txt") == "feature\n"
        assert git("rev-parse", "main", cwd=site.clone).strip() == after
        mr = await world.merge_request(str(created["mr"]))
        assert (mr.state, mr.merged_commit) == ("merged", after)
        bead = await world.store.call(world.store.store.bead, str(polecat.bead))
        assert bead.status == "closed"
        # The refinery's clone is left clean, on main.
        assert git("status", "--porcelain", cwd=site.clone) == ""


async def test_the_refinery_rejects_an_mr_that_conflicts_with_main(site: Site) -> None:
    async with running_world(site) as world:
        # Both branch from the same main and change the same line; queued in this order.
        first = await world.spawn("x is two", "echo 'x = 2' > app.py")
        mr_one = str((await world.wait_event("mr_created", polecat=first.name))["mr"])
        second = await world.spawn("x is three", "echo 'x = 3' > app.py")
        mr_two = str((await world.wait_event("mr_created", polecat=second.name))["mr"])

        async with world.role(REFINERY):
            await world.wait_event("mr_merged", mr=mr_one)
            rejected = await world.wait_event("mr_rejected", mr=mr_two)

        assert str(rejected["reason"]).startswith("conflict: app.py"), rejected
        assert show(site.remote, "main:app.py") == "x = 2\n"
        assert (await world.merge_request(mr_two)).state == "rejected"
        kept = await world.polecat(second.name)
        assert kept.state == "rejected"
        # The rejected work stays where it was: worktree and branch, for a human.
        assert (Path(kept.worktree) / "app.py").read_text() == "x = 3\n"
        assert git("rev-parse", kept.branch, cwd=site.clone).strip() == \
            (await world.merge_request(mr_two)).head
        assert not world.seen("mr_merged", mr=mr_two)
        assert git("status", "--porcelain", cwd=site.clone) == ""


@pytest.fixture
def gated_site(tmp_path: Path) -> Iterator[Site]:
    """A rig whose one gate reports its pid on ``tmp_path/gate.fifo`` (the test makes that
    pipe), then passes at once if ``tmp_path/open`` exists, and otherwise waits (300 s)."""
    built = make_site(tmp_path, rig_toml=(
        '\n[[merge_queue.gates]]\nname = "wait"\n'
        f'command = "echo $$ > {tmp_path}/gate.fifo; test -e {tmp_path}/open || '
        'exec sleep 300"\ntimeout = "10m"\n'))
    yield built
    remove_site(built)


async def test_a_refinery_cancelled_in_a_gate_kills_it_and_the_next_merges_the_mr_once(
        gated_site: Site, tmp_path: Path) -> None:
    site = gated_site
    before = remote_main(site)
    reports = Fifo(tmp_path / "gate.fifo")
    try:
        async with running_world(site) as world:
            polecat = await world.spawn("add a feature", "echo feature > feature.txt")
            mr_id = str((await world.wait_event("mr_created", polecat=polecat.name))["mr"])

            async with world.role(REFINERY):
                gate_pid = int(await reports.receive_line())
                assert alive(gate_pid)
                assert (await world.merge_request(mr_id)).state == "running"
            # Leaving the block cancelled the refinery and checked it left no process.
            assert not alive(gate_pid)
            assert (await world.merge_request(mr_id)).state == "running"
            assert remote_main(site) == before

            (tmp_path / "open").touch()
            async with world.role(REFINERY):
                await world.wait_event("mr_requeued", mr=mr_id)
                merged = await world.wait_event("mr_merged", mr=mr_id)
                await reports.receive_line()  # the gate ran again, and passed

            assert len(world.seen("mr_merged", mr=mr_id)) == 1
            assert remote_main(site) == merged["commit"] != before
            assert show(site.remote, "main:feature.txt") == "feature\n"
    finally:
        await reports.aclose()
