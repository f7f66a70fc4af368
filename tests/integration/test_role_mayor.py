"""The mayor in the test's trio loop: real bus, store, git worktrees and agent sessions.

It turns queued slings into polecats (worktree, branch, a running session with the
polecat's environment), answers ``sling`` requests with the outcome, keeps slings
beyond the rig's cap queued, and dispatches them when a slot frees (woken by
``polecat_nuked``, never by a timer). Cancelled, it stops and loses no sling.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from gastown.roles.operations.nuking import nuke_polecat
from gastown.roles.operations.polecat_sessions import session_alive
from gastown.supervisor.bus.requests import Sling as SlingRequest
from tests.conftest import git
from tests.integration.roles_world import (
    RIG,
    Site,
    as_mapping,
    environ_of,
    make_fifo,
    make_site,
    release,
    remove_site,
    running_world,
    show,
)
from tests.integration.roles_world import site as site  # the fixture


@pytest.fixture
def capped_site(tmp_path: Path) -> Iterator[Site]:
    """A rig that runs one polecat at a time."""
    built = make_site(tmp_path, rig_toml="\n[polecats]\nmax = 1\n")
    yield built
    remove_site(built)


async def test_a_sling_becomes_a_polecat_with_a_worktree_and_a_running_session(
        site: Site, tmp_path: Path) -> None:
    go = make_fifo(tmp_path / "go")
    async with running_world(site) as world, world.role("mayor"):
        bead = await world.bead("say hello", f"read line < {go}; echo hello > hello.txt")
        sling = await world.queue_sling(bead)

        reply = as_mapping(await world.client.call("mayor", SlingRequest(sling=sling.id)))

        assert reply["state"] == "dispatched", reply
        name = str(reply["polecat"])
        worktree = Path(str(reply["worktree"]))
        assert worktree == site.town.polecats_dir(RIG) / name
        assert reply["branch"] == f"polecat/{name}"
        # A real worktree of the rig's clone, on the polecat's branch, at main.
        assert str(worktree) in git("worktree", "list", "--porcelain", cwd=site.clone)
        assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=worktree).strip() == \
            f"polecat/{name}"
        assert git("rev-parse", "HEAD", cwd=worktree) == git("rev-parse", "main",
                                                             cwd=site.clone)
        polecat = await world.polecat(name)
        assert (polecat.state, polecat.bead) == ("working", bead.id)
        assert session_alive(polecat)
        assert polecat.session is not None
        env = environ_of(int(polecat.session["pid"]))
        assert (env["GASTOWN_POLECAT"], env["GASTOWN_BEAD"], env["GASTOWN_BRANCH"]) == \
            (name, bead.id, f"polecat/{name}")
        assert env["GASTOWN_TOWN"] == str(site.root)
        assert (await world.store.call(world.store.store.bead, bead.id)).status == "hooked"
        assert (await world.store.call(world.store.store.sling, sling.id)).state == \
            "dispatched"
        await world.wait_event("polecat_working", polecat=name, bead=bead.id)

        # The session is the agent's: let it work; it commits and runs `gastown done`.
        await release(go)
        created = await world.wait_event("mr_created", polecat=name)
        assert show(site.clone, f"{created['head']}:hello.txt") == "hello\n"
        assert world.bus.peers().count("mayor") == 1


async def test_beyond_the_cap_a_sling_waits_and_is_dispatched_when_a_polecat_is_nuked(
        capped_site: Site) -> None:
    site = capped_site
    async with running_world(site) as world:
        async with world.role("mayor"):
            one = await world.bead("one", "sleep 300")
            first = as_mapping(await world.client.call(
                "mayor", SlingRequest(sling=(await world.queue_sling(one)).id)))
            assert first["state"] == "dispatched", first
            two = await world.bead("two", "sleep 300")
            queued = await world.queue_sling(two)

            reply = as_mapping(await world.client.call("mayor",
                                                       SlingRequest(sling=queued.id)))

            assert reply == {"state": "queued", "position": 1}
            assert (await world.store.call(world.store.store.sling, queued.id)).state == \
                "queued"
            assert not world.seen("polecat_spawning", bead=two.id)
            assert [p.name for p in await world.store.call(world.store.store.polecats,
                                                           RIG)] == [first["polecat"]]

            # A slot frees: the mayor hears polecat_nuked and dispatches the waiting sling.
            await world.store.operate(nuke_polecat, world.town, RIG, str(first["polecat"]),
                                      force=True)
            working = await world.wait_event("polecat_working", bead=two.id)
            second = await world.polecat(str(working["polecat"]))
            assert (second.state, second.bead) == ("working", two.id)
            assert session_alive(second) and Path(second.worktree).is_dir()
            # The name is free again, so it may be reused: a new incarnation all the same.
            nuked = world.seen("polecat_nuked", polecat=first["polecat"])
            assert nuked and nuked[0]["bead"] == one.id

            # One more beyond the cap, then the mayor is cancelled while it waits.
            three = await world.bead("three", "sleep 300")
            later = await world.queue_sling(three)
            reply = as_mapping(await world.client.call("mayor", SlingRequest(sling=later.id)))
            assert reply["state"] == "queued"

        # No mayor now: the slot frees, the sling stays queued, nothing is lost.
        await world.store.operate(nuke_polecat, world.town, RIG, second.name, force=True)
        await world.wait_event("polecat_nuked", polecat=second.name)
        assert (await world.store.call(world.store.store.sling, later.id)).state == "queued"

        # A new mayor dispatches what was queued while it was away, at start.
        async with world.role("mayor"):
            working = await world.wait_event("polecat_working", bead=three.id)
            assert session_alive(await world.polecat(str(working["polecat"])))


async def test_a_slow_spawn_does_not_hold_up_the_next_one(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawns are reserved in queue order and built side by side: while one polecat's
    spawn hangs after its worktree, the next sling is dispatched and answered."""
    hold = tmp_path / "hold"
    hold.write_text("")
    state = tmp_path / "faults"
    state.mkdir()
    monkeypatch.setenv("GASTOWN_FAULTS", f"mayor@sling.after_worktree=hang-while:{hold}:once")
    monkeypatch.setenv("GASTOWN_FAULT_STATE", str(state))
    async with running_world(site) as world, world.role("mayor"):
        slings = [await world.queue_sling(await world.bead(f"b{i}", "sleep 30"))
                  for i in range(2)]
        replies: dict[int, dict[str, object]] = {}
        first_answer = trio.Event()

        async def ask(sling_id: int) -> None:
            replies[sling_id] = dict(as_mapping(
                await world.client.call("mayor", SlingRequest(sling=sling_id))))
            first_answer.set()

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for sling in slings:
                    nursery.start_soon(ask, sling.id)
                # One spawn hangs (the fail point fires once); the other is answered.
                await first_answer.wait()
                assert len(replies) == 1, replies
                (answered,) = replies.values()
                assert answered["state"] == "dispatched", answered
                hold.unlink()  # the hung spawn goes on
        assert sorted(str(r["state"]) for r in replies.values()) == ["dispatched"] * 2
        assert len({str(r["polecat"]) for r in replies.values()}) == 2


async def test_a_pass_tries_a_full_rig_once_not_once_per_queued_sling(
        capped_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the rig's one slot taken, six queued slings cost one reservation attempt per
    pass (each attempt reads the configuration and the branches), and keep their order."""
    import gastown.roles.mayor as mayor_module

    site = capped_site
    attempts: list[str] = []
    from gastown.roles.operations.polecats import reserve_spawn as real

    def counted(*args: object) -> object:
        attempts.append(str(args[-1]))
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(mayor_module, "reserve_spawn", counted)
    async with running_world(site) as world, world.role("mayor"):
        one = await world.bead("one", "sleep 300")
        first = as_mapping(await world.client.call(
            "mayor", SlingRequest(sling=(await world.queue_sling(one)).id)))
        assert first["state"] == "dispatched", first
        queued = [await world.queue_sling(await world.bead(f"b{i}", "sleep 300"))
                  for i in range(6)]
        attempts.clear()
        reply = as_mapping(await world.client.call(
            "mayor", SlingRequest(sling=queued[-1].id)))
        assert reply == {"state": "queued", "position": 6}
        # One attempt per pass: at most two passes answer the request (one that a wake-up
        # had already begun, which may have made its attempt before the clear, and one
        # more); never one attempt per queued sling.
        assert len(attempts) <= 2, attempts


@pytest.fixture
def town_capped_site(tmp_path: Path) -> Iterator[Site]:
    """A town that runs one polecat at a time, with a second rig ``api``."""
    from gastown.roles.adapters.store import open_store
    from gastown.roles.operations.rigs import add_rig
    from tests.conftest import make_remote

    built = make_site(tmp_path, town_toml="max_polecats = 1\n")
    api = make_remote(tmp_path / "api.git", files={"api.py": "y = 1\n"})
    with open_store(built.town.db_path) as store:
        add_rig(built.town, store, "api", str(api), cwd=tmp_path)
    yield built
    remove_site(built)


async def test_a_slot_freed_during_a_pass_goes_to_the_first_sling_in_order(
        town_capped_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The town is full when the pass tries its first sling (priority 1, rig web); the slot
    frees right after that attempt. A later sling of another rig (priority 2, rig api)
    must not take it in the same pass: the next pass gives it to the first in order.
    (Seen in the convoy acceptance test: a priority-2 bead spawned before a priority-1.)"""
    import gastown.roles.mayor as mayor_module
    from gastown.roles.operations.polecats import reserve_spawn as real

    site = town_capped_site
    freed: list[str] = []
    async with running_world(site) as world, world.role("mayor"):
        holder = await world.bead("holder", "sleep 300")
        first = as_mapping(await world.client.call(
            "mayor", SlingRequest(sling=(await world.queue_sling(holder)).id)))
        assert first["state"] == "dispatched", first
        db = site.town.db_path

        def freeing(*args: object) -> object:
            result = real(*args)  # type: ignore[arg-type]
            if result is None and not freed:  # the holder finishes right after
                import sqlite3
                conn = sqlite3.connect(db, timeout=30)
                with conn:
                    conn.execute("UPDATE polecats SET state = 'done' WHERE bead = ?",
                                 (holder.id,))
                conn.close()
                freed.append("yes")
            return result

        monkeypatch.setattr(mayor_module, "reserve_spawn", freeing)
        urgent = await world.bead("urgent", "sleep 300", priority=1)
        later = await world.store.call(world.store.store.create_bead, prefix="api",
                                       rig="api", title="later", description="sleep 300",
                                       priority=2)
        urgent_sling = await world.queue_sling(urgent)
        later_sling = await world.store.call(world.store.store.queue_sling, later.id, "api",
                                             agent=None, force=False)
        await world.client.call("mayor", SlingRequest(sling=later_sling.id))
        await world.client.call("mayor", SlingRequest(sling=urgent_sling.id))
        assert freed
        polecats = await world.store.call(world.store.store.polecats)
        spawned = [p.bead for p in polecats if p.bead in (urgent.id, later.id)]
        assert spawned == [urgent.id], (spawned, [(p.bead, p.state) for p in polecats])
