"""The witness's nukes of merged polecats: one task per polecat however often it is asked,
and what outlives a session found once per batch (real bus, store, git and agents)."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing
from structlog.testing import capture_logs

from gastown.roles.adapters.processes import processes_with_env
from gastown.roles.witness import Witness
from tests.integration.roles_world import RIG, Site, land, running_world, until
from tests.integration.roles_world import site as site  # the fixture

WITNESS = f"witness:{RIG}"


async def test_a_merged_polecat_is_nuked_by_one_task_however_often_it_is_asked(
        site: Site) -> None:
    """The merged notice, the settle pass and more asks while the nuke waits: one nuke
    runs; no second one reads the nuked row and fails (``nuke_skipped``) after it."""
    async with running_world(site) as world:
        polecat = await world.spawn("add a feature", "echo feature > feature.txt")
        created = await world.wait_event("mr_created", polecat=polecat.name)
        with capture_logs() as logs:
            async with world.role(WITNESS) as witness:
                assert isinstance(witness, Witness)
                async with trio.open_nursery() as asks:
                    # Held as a respawn would hold it: every nuke of it waits meanwhile.
                    async with witness.operations.hold(polecat.name):
                        await land(world, str(created["mr"]))  # the witness asks once
                        for _ in range(3):
                            asks.start_soon(witness._nuke, polecat.name)
                        witness._pass_needed.set()  # and its settle pass once more
                        await trio.testing.wait_all_tasks_blocked(cushion=0.2)
                    await world.wait_event("polecat_nuked", polecat=polecat.name)
                await until(lambda: witness.status()["nuked"] == 1, what="the count")
        assert len(world.seen("polecat_nuked", polecat=polecat.name)) == 1
        skipped = [e for e in logs if e.get("event") == "nuke_skipped"]
        assert skipped == []
        assert not Path(polecat.worktree).exists()


# A script agent that leaves a daemon behind (double fork, setsid: no longer in the
# agent's tree) carrying its identity, then finishes its work as usual.
DAEMON_THEN_WORK = ("python3 -c 'import os, time\n"
                    "if os.fork() == 0:\n"
                    "    os.setsid()\n"
                    "    if os.fork() == 0:\n"
                    "        time.sleep(300)\n"
                    "    os._exit(0)\n"
                    "os.wait()' && echo feature > feature.txt")


async def test_what_outlives_a_nuked_session_is_stopped_by_the_batch_search(
        site: Site) -> None:
    """A daemon the agent left (setsid, orphaned: out of reach of the session stop) is
    found by identity after the nuke and stopped."""
    async with running_world(site) as world:
        polecat = await world.spawn("add a feature", DAEMON_THEN_WORK)
        created = await world.wait_event("mr_created", polecat=polecat.name)
        identity = {"GASTOWN_TOWN": str(site.root), "GASTOWN_POLECAT": polecat.name}
        assert await trio.to_thread.run_sync(processes_with_env, identity)
        # Landed before the witness starts: its start-up reconcile runs at once, and one
        # that raced the landing and the nuke found the daemon first (a process of a
        # polecat with no live row: "orphan_session", stopped), leaving the sweep nothing
        # to stop (seen under load). Landed first, that reconcile sees a merged polecat
        # not nuked yet; the settle pass right after it nukes, the sweep follows, and the
        # next reconcile is 30 s away.
        await land(world, str(created["mr"]))
        with capture_logs() as logs:
            async with world.role(WITNESS) as witness:
                assert isinstance(witness, Witness)
                await world.wait_event("polecat_nuked", polecat=polecat.name)
                await until(lambda: not processes_with_env(identity),
                            what="the daemon to be stopped")
                # The sweep reports once its search returns, which may be after the
                # daemon is gone: leaving the block before would cancel the report.
                try:
                    await until(lambda: any(e.get("event") == "strays_stopped" for e in logs),
                                what="the sweep's report")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; the witness's log: {logs}") from None
        (swept,) = [e for e in logs if e.get("event") == "strays_stopped"]
        assert swept["polecats"] == [polecat.name]
