"""A store commit that wrote events wakes the supervisor's relay: real sockets, real SQLite."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import trio

from gastown.roles.adapters.async_store import AsyncStore
from gastown.roles.adapters.outbox_wake import WakeSocket, send_wake, wake_path
from gastown.roles.adapters.store import open_store
from gastown.roles.core.errors import NotFound
from gastown.roles.core.events import BeadCreated
from gastown.supervisor.feed import EventLog
from gastown.supervisor.relay import OutboxRelay


@pytest.fixture
def town_dir() -> Path:
    """A short town-like folder (``state.db`` and ``.runtime/``): sun_path is 108 bytes."""
    root = Path(tempfile.mkdtemp(prefix="gtw", dir="/tmp"))
    (root / ".runtime").mkdir(mode=0o700)
    return root


def test_a_commit_with_events_wakes_and_one_without_does_not(town_dir: Path) -> None:
    wake = WakeSocket(wake_path(town_dir / "state.db"))
    try:
        with open_store(town_dir / "state.db") as store:
            wake.drain()  # whatever opening the store wrote
            store.create_bead(prefix="gt", rig=None, title="one")
            assert wake.drain() == 1
            store.polecats()  # a read: no transaction, no wake
            with pytest.raises(NotFound):
                store.polecat("web", "nobody")
            assert wake.drain() == 0
            with pytest.raises(RuntimeError), store.transaction() as conn:
                store._emit(conn, BeadCreated(rig=None, bead="gt-x", title="x", priority=2))
                raise RuntimeError("rolled back")
            assert wake.drain() == 0  # rolled back: nothing committed, nothing to say
    finally:
        wake.close()
    assert not wake.path.exists()


def test_a_wake_without_a_listener_is_harmless(town_dir: Path) -> None:
    """A town that is down has no listener: the commit still succeeds, quietly."""
    assert send_wake(wake_path(town_dir / "state.db")) is False
    with open_store(town_dir / "state.db") as store:
        store.create_bead(prefix="gt", rig=None, title="while down")
        assert [b.title for b in store.beads()] == ["while down"]


async def test_the_relay_drains_on_a_commit_from_another_thread(town_dir: Path) -> None:
    """The relay copies an event to events.jsonl on the wake alone: no poke, no timer."""
    events = EventLog(town_dir / "events.jsonl")
    async_store = AsyncStore(open_store(town_dir / "state.db"))
    relay = OutboxRelay(async_store, events)
    drained = trio.Event()
    idle = trio.Event()  # the relay's first drain is over: it now waits for a wake

    async def after(_: bool) -> None:
        idle.set()
        if (town_dir / "events.jsonl").exists() and \
                "bead_created" in (town_dir / "events.jsonl").read_text():
            drained.set()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.listen_for_wakes, wake_path(town_dir / "state.db"))
            nursery.start_soon(relay.run, after)
            await idle.wait()

            def commit() -> None:
                with open_store(town_dir / "state.db") as other:
                    other.create_bead(prefix="gt", rig=None, title="from a CLI")

            await trio.to_thread.run_sync(commit)
            with trio.fail_after(10):  # far below the relay's 30 s safety timer
                await drained.wait()
            nursery.cancel_scope.cancel()
    finally:
        events.close()
        async_store.close()
