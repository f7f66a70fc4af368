"""The store's connection, its write transactions, and the outbox of domain events."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gastown.roles._store_records import Event, event_of
from gastown.roles._store_schema import MIGRATIONS
from gastown.roles.errors import GastownError

BUSY_TIMEOUT_MS = 30_000


class SchemaTooNew(GastownError):
    """The database was written by a newer gastown; refuse rather than corrupt it."""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def open_connection(path: Path) -> sqlite3.Connection:
    """Open (creating and migrating if needed) the store at ``path``.

    Safe to call from many processes at once: migrations run under an exclusive lock
    and re-check the version inside it, so each runs exactly once.
    """
    conn = _connect(path)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
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
    except BaseException:
        conn.close()
        raise
    return conn


class StoreBase:
    """One connection to the town's database. Not shared between threads at once."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on exit, rolled back on error."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _emit(self, conn: sqlite3.Connection, kind: str, *, rig: str | None = None,
              polecat: str | None = None, bead: str | None = None,
              **data: Any) -> None:
        conn.execute(
            "INSERT INTO events (ts, kind, rig, polecat, bead, data) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), kind, rig, polecat, bead, json.dumps(data, sort_keys=True)))

    def _set_bead(self, conn: sqlite3.Connection, bead_id: str, status: str,
                  reason: str | None, **data: Any) -> None:
        old = conn.execute("SELECT status, rig FROM beads WHERE id = ?", (bead_id,)).fetchone()
        if old is None or (old["status"] == "closed" and status != "closed"):
            return  # a closed bead's work landed: nothing reopens it
        if old["status"] == status:
            return
        conn.execute("UPDATE beads SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                     (status, reason, time.time(), bead_id))
        self._emit(conn, "bead_status_changed", rig=old["rig"], bead=bead_id,
                   old=old["status"], new=status, reason=reason, **data)

    def emit(self, kind: str, *, rig: str | None = None, polecat: str | None = None,
             bead: str | None = None, **data: Any) -> None:
        """Record a domain event that changes no other table (e.g. a role restart)."""
        with self.transaction() as conn:
            self._emit(conn, kind, rig=rig, polecat=polecat, bead=bead, **data)

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
