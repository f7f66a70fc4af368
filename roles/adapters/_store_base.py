"""The store's connection, its write transactions, and the outbox of domain events.

Layer: adapters (SQLite), under :mod:`.store`, which is what the rest of the town imports;
the ledgers (``_store_town``, ``_store_polecats``, ``_store_merges``) build on it.

Identity: ``gastown install`` gives a town's store a random id, written in the database
header (SQLite's ``application_id``) and in ``<town>/.runtime/store-id``. Every open
compares the two, so a deleted store is an error (:class:`StoreMissing`), never a
fresh empty ledger, and a file swapped in from elsewhere is refused
(:class:`StoreReplaced`) before anything is written to it. A town that has recorded no
identity (made by an older gastown) adopts the store it has, or gets a new one. A
process that has the store open checks before each write that the path still names
the file it opened (:class:`StoreLost`).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from ..core._event_base import UNSET, Unset
from ..core.errors import (
    GastownError,
    StoreError,
    StoreLost,
    StoreMissing,
    StoreReplaced,
)
from ..core.events import BeadStatusChanged, DomainEvent, to_row
from ._convoy_sync import follow_beads
from ._store_records import Event, event_of
from ._store_schema import MIGRATIONS
from .outbox_wake import send_wake, wake_path

BUSY_TIMEOUT_MS = 30_000

#: Where a town records its store's identity, relative to the folder holding the store.
IDENTITY_FILE = Path(".runtime") / "store-id"

_RECOVER = ("restore it from a backup, or see 'gastown doctor' (with the town down, "
            "'gastown doctor --fix {flag}' {what})")


class SchemaTooNew(GastownError):
    """The database was written by a newer gastown; refuse rather than corrupt it."""


def store_failure(path: Path, exc: sqlite3.Error, verb: str) -> StoreError:
    """One line for a SQLite error: the file, what failed, and SQLite's reason."""
    detail = str(exc) or type(exc).__name__
    if "locked" in detail or "busy" in detail:
        detail += f" (another process held it for more than {BUSY_TIMEOUT_MS // 1000} s)"
    elif "full" not in detail and _disk_nearly_full(path.parent):
        detail += " (the disk is full)"
    return StoreError(f"the store at {path} could not be {verb}: {detail}")


def _disk_nearly_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 256 * 1024


def identity_path(db: Path) -> Path:
    """``<town>/.runtime/store-id`` for the store ``<town>/state.db``."""
    return db.parent / IDENTITY_FILE


def recorded_identity(db: Path) -> int | None:
    """The store identity the town recorded, or None when it has recorded none."""
    path = identity_path(db)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"could not read {path}: {exc}") from None
    if not text.isdigit() or not 0 < int(text) < 2**31:
        raise StoreError(f"{path} is damaged (expected a number, found {text[:20]!r}); "
                         "delete it and gastown records the store's identity again")
    return int(text)


def _record_identity(db: Path, identity: int) -> None:
    path = identity_path(db)
    if not path.parent.is_dir():
        return  # a store outside a town (tests, tools): nothing to record it in
    if recorded_identity(db) == identity:
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{identity}\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreError(f"could not record the store's identity in {path}: "
                         f"{exc.strerror or exc}") from None


_MISSING = "is missing (deleted?); the town's beads, polecats and merge requests were in it"


def missing_error(db: Path) -> StoreMissing:
    return StoreMissing(f"the store at {db} {_MISSING}: "
                        + _RECOVER.format(flag="--new-store", what="starts an empty one"),
                        reason=_MISSING)


def _set_aside_leftovers(db: Path) -> None:
    """Move a deleted store's ``-wal``/``-shm`` aside: SQLite would replay them into a new one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("-wal", "-shm"):
        leftover = db.with_name(db.name + suffix)
        if leftover.exists():
            os.replace(leftover, leftover.with_name(f"{leftover.name}.orphaned-{stamp}"))


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    # A URI so that "open" never silently creates a file that vanished after we looked.
    uri = f"file:{quote(str(path))}?mode={'rwc' if create else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def open_connection(path: Path, *, new_store: bool = False,
                    adopt: bool = False) -> sqlite3.Connection:
    """Open (creating and migrating if needed) the store at ``path``, checking its identity.

    ``new_store`` creates an empty store where a recorded one is missing; ``adopt`` makes
    the file now at ``path`` the town's store whatever its identity. Both are for
    ``gastown doctor --fix`` only. Safe to call from many processes at once: migrations
    run under an exclusive lock and re-check the version inside it, so each runs once.
    """
    recorded = recorded_identity(path)
    exists = path.exists()
    if new_store:
        if exists:
            raise StoreError(f"there is a store at {path}; --new-store only replaces a "
                             "missing one")
        _set_aside_leftovers(path)
    elif recorded is not None and not exists:
        raise missing_error(path)
    try:
        conn = _connect(path, create=not exists)
    except sqlite3.OperationalError as exc:
        if exists and not path.exists():
            raise missing_error(path) from None
        raise store_failure(path, exc, "opened") from None
    try:
        found = _check_identity(conn, path, recorded, adopt=adopt or new_store)
        _prepare(conn, path)
        identity = _settle_identity(conn, recorded if adopt or new_store else None, found)
        _record_identity(path, identity)
    except sqlite3.Error as exc:
        conn.close()
        raise store_failure(path, exc, "opened") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _check_identity(conn: sqlite3.Connection, path: Path, recorded: int | None, *,
                    adopt: bool) -> int:
    """The store's identity; refuses (before writing anything) a file not this town's."""
    try:
        found = int(conn.execute("PRAGMA application_id").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        if adopt or recorded is None or exc.sqlite_errorname != "SQLITE_NOTADB":
            raise
        reason = f"is not this town's store ({exc})"
        raise StoreReplaced(f"the file at {path} {reason}; "
                            + _RECOVER.format(flag="--adopt-store",
                                              what="makes it the town's store"),
                            reason=reason) from None
    if recorded is None or found == recorded or adopt:
        return found
    what = ("has no town identity (an empty or foreign database, replaced?)" if found == 0
            else f"belongs to another town (identity {found}; this town's is {recorded})")
    raise StoreReplaced(f"the store at {path} {what}: "
                        + _RECOVER.format(flag="--adopt-store",
                                          what="makes the file there the town's store"),
                        reason=what)


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    """WAL mode, then every migration not applied yet, exactly once across processes."""
    mode = _enable_wal(conn)
    if mode != "wal":
        raise GastownError(f"{path}: could not switch SQLite to WAL (got {mode})")
    conn.execute("PRAGMA synchronous = NORMAL")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise SchemaTooNew(f"{path} has schema version {version}; this gastown knows "
                           f"{len(MIGRATIONS)}: upgrade gastown")
    if version < len(MIGRATIONS):
        conn.execute("BEGIN EXCLUSIVE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _enable_wal(conn: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode = WAL``, retried while another process holds the file.

    Why: the switch of a new (rollback-journal) database to WAL needs the file to
    itself, and SQLite answers BUSY at once there instead of calling the busy handler
    (measured: 9 of 600 processes failed when six opened a brand-new store together).
    So this waits here, up to the busy timeout, as every other statement does. A store
    already in WAL mode answers at once: the mode is kept in the file."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.002
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY \
                    or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _settle_identity(conn: sqlite3.Connection, wanted: int | None, found: int) -> int:
    """Give the store ``wanted`` (or, when it has none, a new random) identity; returns it.

    Under a write lock and re-read inside it, so racing first opens agree on one id."""
    if found != 0 and (wanted is None or found == wanted):
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = int(conn.execute("PRAGMA application_id").fetchone()[0])
        identity = wanted or current or secrets.randbelow(2**31 - 1) + 1
        if current != identity:
            conn.execute(f"PRAGMA application_id = {identity}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return identity


class StoreBase:
    """One connection to the town's database. Not shared between threads at once."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            conn.close()
            raise missing_error(path) from None
        self._file_id = (st.st_dev, st.st_ino)
        self._lost_reported = False
        #: Whether the open transaction wrote a domain event (then the commit wakes the
        #: supervisor's feed relay: :mod:`.outbox_wake`).
        self._emitted = False

    def close(self) -> None:
        self._conn.close()

    def _check_same_file(self) -> None:
        """Refuse to write once ``path`` no longer names the file this connection opened."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._file_id
        except FileNotFoundError:
            st, same = None, False
        if not same:
            self._lost("deleted" if st is None else "replaced")

    def _lost(self, how: str) -> typing.NoReturn:
        message = (f"the store at {self.path} was {how} while this process had it open; "
                   "nothing more is written to it (see 'gastown doctor')")
        if not self._lost_reported:
            self._lost_reported = True
            from .log import get_logger

            get_logger().error("store_lost", path=str(self.path), how=how, error=message)
        raise StoreLost(message)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on exit, rolled back on error.

        A SQLite failure (disk full, read-only, locked beyond the busy timeout) becomes a
        :class:`StoreError` naming the file; nothing of the transaction is kept.
        """
        self._check_same_file()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise store_failure(self.path, exc, "written") from None
        self._emitted = False
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._rollback()
            raise store_failure(self.path, exc, "written") from None
        except BaseException:
            self._rollback()
            raise
        if self._emitted:
            self._emitted = False
            send_wake(wake_path(self.path))

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled back (e.g. after SQLITE_FULL)

    def _emit(self, conn: sqlite3.Connection, event: DomainEvent) -> None:
        """Record ``event`` in the transaction ``conn`` (the outbox the feed is copied from)."""
        self._emitted = True
        row = to_row(event)
        conn.execute(
            "INSERT INTO events (ts, kind, rig, polecat, bead, data) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), row.kind, row.rig, row.polecat, row.bead,
             json.dumps(row.data, sort_keys=True)))

    def _set_bead(self, conn: sqlite3.Connection, bead_id: str, status: str,
                  reason: str | None, *, polecat: str | None = None,
                  crew: str | Unset = UNSET) -> None:
        old = conn.execute("SELECT status, rig FROM beads WHERE id = ?", (bead_id,)).fetchone()
        if old is None or (old["status"] == "closed" and status != "closed"):
            return  # a closed bead's work landed: nothing reopens it
        if old["status"] == status:
            return
        conn.execute("UPDATE beads SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                     (status, reason, time.time(), bead_id))
        self._emit(conn, BeadStatusChanged(rig=old["rig"], bead=bead_id, polecat=polecat,
                                           old=old["status"], new=status, reason=reason,
                                           crew=crew))
        self._bead_moved(conn, bead_id)

    def _bead_moved(self, conn: sqlite3.Connection, *bead_ids: str) -> None:
        """Every change of a bead's status calls this in its transaction: the convoys
        holding the bead follow, one event per real change (:mod:`._convoy_sync`)."""
        follow_beads(conn, lambda event: self._emit(conn, event), bead_ids)

    def emit(self, event: DomainEvent) -> None:
        """Record a domain event that changes no other table (e.g. a role restart)."""
        with self.transaction() as conn:
            self._emit(conn, event)

    def recent_events(self, kinds: Sequence[str], limit: int = 5) -> list[Event]:
        """The newest ``limit`` events of these kinds, newest first."""
        marks = ", ".join("?" * len(kinds))
        rows = self._conn.execute(f"SELECT * FROM events WHERE kind IN ({marks}) "
                                  "ORDER BY seq DESC LIMIT ?", (*kinds, limit)).fetchall()
        return [event_of(r) for r in rows]

    def last_event_seq(self) -> int:
        row = self._conn.execute("SELECT MAX(seq) AS seq FROM events").fetchone()
        return int(row["seq"] or 0)

    def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        """Domain events with a sequence number above ``seq``, oldest first."""
        rows = self._conn.execute("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                  (seq, limit)).fetchall()
        return [event_of(r) for r in rows]
