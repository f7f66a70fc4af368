"""The SQLite store: migrations, the outbox of domain events, concurrent writers."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from gastown.roles.errors import NotFound, Refused
from gastown.roles.store import MIGRATIONS, Rig, SchemaTooNew, open_store


def test_open_creates_wal_database_at_latest_schema(tmp_path: Path) -> None:
    """A new store is in WAL mode with every migration applied, and reopening is a no-op."""
    path = tmp_path / "state.db"
    open_store(path).close()
    open_store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database from a newer gastown is not touched."""
    path = tmp_path / "state.db"
    open_store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match="upgrade gastown"):
        open_store(path)


def test_state_changes_and_their_events_are_one_transaction(tmp_path: Path) -> None:
    """Each bead change writes its domain event in the same transaction."""
    with open_store(tmp_path / "s.db") as store:
        bead = store.create_bead(prefix="gt", rig=None, title="Fix login", priority=1)
        store.set_bead_status(bead.id, "hooked")
        kinds = [(e.kind, e.bead) for e in store.events_after(0)]
        assert kinds == [("bead_created", bead.id), ("bead_status_changed", bead.id)]
        last = store.events_after(0)[-1]
        assert last.data["old"] == "open" and last.data["new"] == "hooked"
        assert store.events_after(last.seq) == []


def test_rig_name_and_prefix_are_unique(tmp_path: Path) -> None:
    """A second rig with a taken name or prefix is refused and writes nothing."""
    with open_store(tmp_path / "s.db") as store:
        store.add_rig(Rig("web", "web", "/r", "main", 0.0))
        with pytest.raises(Refused, match="already exists"):
            store.add_rig(Rig("web", "wb", "/r", "main", 0.0))
        with pytest.raises(Refused, match="already used by rig 'web'"):
            store.add_rig(Rig("api", "web", "/r", "main", 0.0))
        assert [r.name for r in store.rigs()] == ["web"]
        assert [e.kind for e in store.events_after(0)] == ["rig_added"]
        with pytest.raises(NotFound):
            store.remove_rig("api")


def _create_beads(path: str, count: int) -> list[str]:
    store = open_store(Path(path))
    try:
        return [store.create_bead(prefix="gt", rig=None, title=f"bead {i}").id
                for i in range(count)]
    finally:
        store.close()


def test_ids_are_unique_under_concurrent_creation(tmp_path: Path) -> None:
    """8 processes creating 25 beads each get 200 distinct ids, all stored."""
    path = tmp_path / "s.db"
    open_store(path).close()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        batches = pool.starmap(_create_beads, [(str(path), 25)] * 8)
    ids = [i for batch in batches for i in batch]
    assert len(ids) == 200 and len(set(ids)) == 200
    with open_store(path) as store:
        assert {b.id for b in store.beads()} == set(ids)


def test_concurrent_first_open_migrates_once(tmp_path: Path) -> None:
    """Many processes opening a brand-new database race safely through the migrations."""
    path = tmp_path / "s.db"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(6) as pool:
        batches = pool.starmap(_create_beads, [(str(path), 3)] * 6)
    assert len({i for b in batches for i in b}) == 18
