"""The SQLite store: migrations, the outbox of domain events, concurrent writers."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from gastown.roles.adapters.store import (
    IDENTITY_FILE,
    MIGRATIONS,
    Rig,
    SchemaTooNew,
    open_store,
    recorded_identity,
)
from gastown.roles.core.errors import (
    NotFound,
    Refused,
    StoreError,
    StoreLost,
    StoreMissing,
    StoreReplaced,
)


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


def test_racing_first_opens_all_switch_to_wal(tmp_path: Path) -> None:
    """Six connections opening one brand-new store at the same instant all get it, 100
    times over: SQLite answers BUSY at once (no busy handler) to the loser of two
    simultaneous switches to WAL, seen as ``database is locked`` from a first open."""
    failures: list[BaseException] = []

    def open_once(path: Path, start: threading.Barrier) -> None:
        start.wait()
        try:
            with open_store(path) as store:
                store.create_bead(prefix="gt", rig=None, title="raced")
        except BaseException as exc:  # collected, asserted below
            failures.append(exc)

    for round_ in range(100):
        path = tmp_path / f"race-{round_}.db"
        start = threading.Barrier(6)
        threads = [threading.Thread(target=open_once, args=(path, start)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


# -- identity: a town's store is never silently re-created ---------------------------------

@pytest.fixture
def town_dir(tmp_path: Path) -> Path:
    """A folder laid out like a town's (the store beside a ``.runtime``), with one bead."""
    root = tmp_path / "town"
    (root / ".runtime").mkdir(parents=True)
    with open_store(root / "state.db") as store:
        store.create_bead(prefix="gt", rig=None, title="keep me")
    return root


def _app_id(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA application_id").fetchone()[0])
    finally:
        conn.close()


def test_a_town_records_its_store_identity(town_dir: Path) -> None:
    """The id in the database header and the one in .runtime/store-id agree."""
    recorded = recorded_identity(town_dir / "state.db")
    assert recorded is not None and recorded == _app_id(town_dir / "state.db")
    assert (town_dir / IDENTITY_FILE).read_text().strip() == str(recorded)


def test_a_deleted_store_is_missing_not_recreated(town_dir: Path) -> None:
    """Deleting state.db makes every open an error naming the way back; no file appears."""
    db = town_dir / "state.db"
    db.unlink()
    for _ in range(2):
        with pytest.raises(StoreMissing, match=r"is missing .*--new-store"):
            open_store(db)
    assert not db.exists()


@pytest.mark.parametrize("kind", ["another town's", "empty file", "empty database", "garbage"])
def test_a_replaced_store_is_refused_before_anything_is_written(
        town_dir: Path, tmp_path: Path, kind: str) -> None:
    """Another file at the store's path is refused, and left byte for byte as it was."""
    db = town_dir / "state.db"
    db.unlink()
    if kind == "another town's":
        (tmp_path / "other" / ".runtime").mkdir(parents=True)
        open_store(tmp_path / "other" / "state.db").close()
        db.write_bytes((tmp_path / "other" / "state.db").read_bytes())
    elif kind == "empty file":
        db.write_bytes(b"")
    elif kind == "empty database":
        sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    else:
        db.write_bytes(b"not a database at all" * 100)
    before = db.read_bytes()
    with pytest.raises(StoreReplaced, match="--adopt-store"):
        open_store(db)
    assert db.read_bytes() == before
    assert not Path(f"{db}-wal").exists()


def test_recovery_is_explicit(town_dir: Path) -> None:
    """new_store starts an empty store with the town's identity (setting aside the old
    -wal/-shm, which SQLite would replay into it); adopt takes the file as it is."""
    db = town_dir / "state.db"
    recorded = recorded_identity(db)
    Path(f"{db}-wal").write_bytes(b"stale")
    db.unlink()
    with open_store(db, new_store=True) as store:
        assert store.beads() == []
    assert _app_id(db) == recorded
    assert list(town_dir.glob("state.db-wal.orphaned-*"))
    with pytest.raises(StoreError, match="only replaces a missing one"):
        open_store(db, new_store=True)
    db.unlink()
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreReplaced):
        open_store(db)
    open_store(db, adopt=True).close()
    assert _app_id(db) == recorded
    open_store(db).close()


def test_a_town_without_a_recorded_identity_keeps_working(town_dir: Path) -> None:
    """A town made by an older gastown (no store-id) adopts the store it has; one that
    never had a store gets one, as before."""
    db = town_dir / "state.db"
    identity = _app_id(db)
    (town_dir / IDENTITY_FILE).unlink()
    with open_store(db) as store:
        assert [b.title for b in store.beads()] == ["keep me"]
    assert recorded_identity(db) == identity
    (town_dir / IDENTITY_FILE).unlink()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA application_id = 0")
    conn.close()
    open_store(db).close()
    assert recorded_identity(db) == _app_id(db) != 0
    fresh = town_dir.parent / "old-town"
    (fresh / ".runtime").mkdir(parents=True)
    open_store(fresh / "state.db").close()
    assert recorded_identity(fresh / "state.db") == _app_id(fresh / "state.db")


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_an_open_store_stops_writing_once_its_file_is_gone(
        town_dir: Path, tmp_path: Path, how: str) -> None:
    """A process holding the store (a running role) refuses to write once the path no
    longer names the file it opened, and creates nothing there."""
    db = town_dir / "state.db"
    with open_store(db) as store:
        db.unlink()
        if how == "replaced":
            open_store(tmp_path / "elsewhere.db").close()
            db.write_bytes((tmp_path / "elsewhere.db").read_bytes())
        for _ in range(2):
            with pytest.raises(StoreLost, match=f"was {how} while this process had it open"):
                store.create_bead(prefix="gt", rig=None, title="lost")
    assert db.exists() == (how == "replaced")


def test_a_store_locked_beyond_the_busy_timeout_is_one_store_error(tmp_path: Path) -> None:
    """A writer that waits out the busy timeout gets a StoreError naming the file."""
    db = tmp_path / "s.db"
    with open_store(db) as store:
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        store._conn.execute("PRAGMA busy_timeout = 50")
        with pytest.raises(StoreError, match=r"store at .*s\.db could not be written: "
                                             r"database is locked \(another process"):
            store.create_bead(prefix="gt", rig=None, title="blocked")
        other.execute("ROLLBACK")
        other.close()
        store.create_bead(prefix="gt", rig=None, title="fine now")

