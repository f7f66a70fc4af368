"""Store calls and operations from trio: an operation holds no lock that reads wait behind;
per-polecat operation locks serialise one polecat and let the others run (real SQLite)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from gastown.roles.adapters.async_store import AsyncStore, OperationLocks
from gastown.roles.adapters.store import Store
from gastown.roles.adapters.town import Town, install_town


@pytest.fixture
async def town_store(tmp_path: Path) -> tuple[Town, AsyncStore]:
    town = install_town(tmp_path / "town")[0]
    return town, await AsyncStore.open(town.db_path)


async def test_a_long_operation_does_not_hold_up_store_reads(
        town_store: tuple[Town, AsyncStore]) -> None:
    town, store = town_store
    release = threading.Event()
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def slow_operation(town: Town, own: Store) -> str:
        assert own is not store.store  # a connection of its own
        own.create_bead(prefix="gt", rig=None, title="made by the operation")
        trio.from_thread.run_sync(started.set, trio_token=token)
        release.wait(30)  # a nuke's grace period, a worktree add...
        return "done"

    async with trio.open_nursery() as nursery:
        results: list[str] = []

        async def operate() -> None:
            results.append(await store.operate(slow_operation, town))

        nursery.start_soon(operate)
        await started.wait()
        with trio.fail_after(10):  # on one shared lock this read would wait for release
            beads = await store.call(store.store.beads)
        assert [b.title for b in beads] == ["made by the operation"]
        release.set()
    assert results == ["done"]
    store.close()


async def test_a_failed_operation_does_not_return_its_connection(
        town_store: tuple[Town, AsyncStore]) -> None:
    town, store = town_store
    seen: list[Store] = []

    def failing(town: Town, own: Store) -> None:
        seen.append(own)
        raise RuntimeError("boom")

    def ok(town: Town, own: Store) -> Store:
        return own

    with pytest.raises(RuntimeError):
        await store.operate(failing, town)
    reused = await store.operate(ok, town)
    assert reused is not seen[0]
    assert await store.operate(ok, town) is reused  # an idle connection is reused
    store.close()


async def test_operation_locks_serialise_one_key_and_not_the_others() -> None:
    locks = OperationLocks()
    order: list[str] = []
    toast_inside = trio.Event()
    let_toast_go = trio.Event()

    async def hold(key: str, name: str, wait: trio.Event | None = None) -> None:
        async with locks.hold(key):
            order.append(f"{name} in")
            if wait is not None:
                toast_inside.set()
                await wait.wait()
            order.append(f"{name} out")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "toast", "first", let_toast_go)
        await toast_inside.wait()
        nursery.start_soon(hold, "toast", "second")
        nursery.start_soon(hold, "alpha", "other")
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["first in", "other in", "other out"]  # toast's second waits
        let_toast_go.set()
    assert order[3:] == ["first out", "second in", "second out"]
    assert len(locks) == 0  # no lock is kept for a key nobody holds
