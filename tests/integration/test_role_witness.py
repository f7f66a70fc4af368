"""The witness in the test's trio loop: real bus, store, git worktrees and agent sessions.

On ``mr_merged`` it nukes the polecat (session, worktree, branch, name; bead closed),
unless the polecat holds work that has not landed: that one is kept, with the reason
noted. A session that dies without ``gastown done`` is respawned in the same worktree.
No refinery runs here: the test lands the MR itself and records it in the store.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from gastown.roles.operations.polecat_sessions import session_alive
from gastown.roles.witness import Witness
from tests.conftest import git
from tests.integration.roles_world import (
    RIG,
    Site,
    alive,
    commit_file,
    land,
    make_site,
    remove_site,
    running_world,
    show,
    until,
)
from tests.integration.roles_world import site as site  # the fixture

WITNESS = f"witness:{RIG}"


def branches(site: Site) -> list[str]:
    return git("branch", "--format=%(refname:short)", cwd=site.clone).split()


async def test_the_witness_nukes_a_polecat_whose_merge_request_merged(site: Site) -> None:
    async with running_world(site) as world:
        polecat = await world.spawn("add a feature", "echo feature > feature.txt")
        created = await world.wait_event("mr_created", polecat=polecat.name)
        assert Path(polecat.worktree).is_dir()
        assert polecat.branch in branches(site)
        sleeper = await world.spawn("a long job", "sleep 300")
        async with world.role(WITNESS) as witness:
            assert isinstance(witness, Witness)
            # Its first pass is over once it watches the working one; from then on only
            # `mr_merged` can make it look at the done one again (no timer within 300 s).
            await until(lambda: sleeper.name in witness.status()["watching"],
                        what="the witness's first pass")
            commit = await land(world, str(created["mr"]))
            nuked = await world.wait_event("polecat_nuked", polecat=polecat.name)
            assert witness.status()["watching"] == [sleeper.name]

        assert nuked["old"] == "merging"
        assert not Path(polecat.worktree).exists()
        assert polecat.worktree not in git("worktree", "list", cwd=site.clone)
        assert polecat.branch not in branches(site)
        assert polecat.name not in await world.store.call(world.store.store.live_polecats,
                                                          RIG)
        bead = await world.store.call(world.store.store.bead, str(polecat.bead))
        assert bead.status == "closed"
        # The work is on the remote's main, where the test put it.
        assert show(site.remote, f"{commit}:feature.txt") == "feature\n"


async def test_the_witness_keeps_a_merged_polecat_with_unlanded_work_and_says_why(
        site: Site) -> None:
    async with running_world(site) as world, world.role(WITNESS) as witness:
        assert isinstance(witness, Witness)
        polecat = await world.spawn("add a feature", "echo feature > feature.txt")
        created = await world.wait_event("mr_created", polecat=polecat.name)
        worktree = Path(polecat.worktree)
        # A commit after `gastown done`: not part of the MR, so it never lands.
        extra = commit_file(worktree, "later.txt", "later\n", "after done")

        await land(world, str(created["mr"]))

        noted = await world.wait_event("polecat_noted", polecat=polecat.name)
        reason = str(noted["reason"])
        assert reason.startswith("merged, but kept"), reason
        assert worktree.is_dir() and (worktree / "later.txt").is_file()
        assert git("rev-parse", polecat.branch, cwd=site.clone).strip() == extra
        kept = await world.polecat(polecat.name)
        assert (kept.state, kept.reason) == ("merging", reason)
        assert not world.seen("polecat_nuked", polecat=polecat.name)
        assert witness.status()["nuked"] == 0


async def test_the_witness_respawns_a_polecat_whose_session_died(site: Site) -> None:
    async with running_world(site) as world:
        # Spawned before the witness starts: its first pass finds the session to watch.
        polecat = await world.spawn("a long job", "sleep 300")
        assert polecat.session is not None
        old_pid = int(polecat.session["pid"])
        old_tree = site.agents()
        assert old_pid in old_tree
        async with world.role(WITNESS):
            os.kill(old_pid, signal.SIGKILL)  # the agent dies without `gastown done`

            stalled = await world.wait_event("polecat_stalled", polecat=polecat.name)
            assert stalled["old"] == "working"
            working = await world.wait_event("polecat_working", polecat=polecat.name,
                                             old="stalled")
            assert working["respawns"] == 1
            respawned = await world.polecat(polecat.name)
            assert (respawned.state, respawned.respawns) == ("working", 1)
            assert respawned.session is not None
            assert int(respawned.session["pid"]) != old_pid
            assert session_alive(respawned)
            assert respawned.worktree == polecat.worktree and Path(polecat.worktree).is_dir()
            assert respawned.incarnation == polecat.incarnation
            # What was left of the dead session (its shell, its sleep) was stopped.
            assert not [pid for pid in old_tree if alive(pid)]


@pytest.fixture
def limited_site(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Site]:
    """A site whose rig allows ``request.param`` respawns (``indirect`` parametrization)."""
    built = make_site(tmp_path, rig_toml=f"\n[polecats]\nmax_respawns = {request.param}\n")
    yield built
    remove_site(built)


@pytest.mark.parametrize("limited_site", [1], indirect=True)
async def test_a_death_reported_while_the_revive_runs_is_not_dropped(
        limited_site: Site) -> None:
    """The respawned agent dies at once and its death is reported before the revive that
    started it has finished (in CI an agent that exits at once died 4 ms after its
    second respawn and was never escalated). That death counts: past ``max_respawns``
    the polecat is escalated, not left stalled."""
    site = limited_site
    async with running_world(site) as world, world.role(WITNESS) as witness:
        assert isinstance(witness, Witness)
        polecat = await world.spawn("a long job", "sleep 300")
        assert polecat.session is not None
        revive = witness._revive

        async def revive_then_die_at_once(name: str) -> None:
            await revive(name)
            respawned = await world.polecat(name)
            if respawned.state == "working" and respawned.session is not None:
                pid = int(respawned.session["pid"])
                os.kill(pid, signal.SIGKILL)
                await until(lambda: not alive(pid), what="the respawned agent gone")
                await witness._session_ended(name, pid)  # what its watcher reports

        witness._revive = revive_then_die_at_once  # type: ignore[method-assign]
        os.kill(int(polecat.session["pid"]), signal.SIGKILL)

        working = await world.wait_event("polecat_working", polecat=polecat.name,
                                         old="stalled")
        assert working["respawns"] == 1
        escalated = await world.wait_event("polecat_escalated", polecat=polecat.name)
        assert "session died 2 time(s)" in str(escalated["reason"])


@pytest.mark.parametrize("limited_site", [0], indirect=True)
async def test_past_max_respawns_the_witness_escalates_and_keeps_the_worktree(
        limited_site: Site) -> None:
    site = limited_site
    async with running_world(site) as world, world.role(WITNESS):
        polecat = await world.spawn("a long job", "echo started; sleep 300")
        assert polecat.session is not None
        os.kill(int(polecat.session["pid"]), signal.SIGKILL)

        escalated = await world.wait_event("polecat_escalated", polecat=polecat.name)
        assert "without `gastown done`" in str(escalated["reason"])
        assert Path(polecat.worktree).is_dir() and polecat.branch in branches(site)
        assert not world.seen("polecat_working", polecat=polecat.name, old="stalled")
        assert not site.agents()  # what was left of the session is stopped
