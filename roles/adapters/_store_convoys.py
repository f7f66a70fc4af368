"""The store's ledger of convoys: groups of beads, possibly over several rigs.

Layer: adapters (SQLite), one of the ledgers :class:`~.store.Store` is made of. A
convoy's state follows its beads (:mod:`._convoy_sync`, called wherever a bead's status
changes); here are the changes people make by hand: create, add, remove, and slinging
every open bead of a convoy at once.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.convoy import ConvoyState, convoy_state
from ..core.errors import GastownError, NotFound, Refused
from ..core.events_convoy import ConvoyChanged, ConvoyCreated
from ..core.names import bead_id
from ._convoy_sync import bead_facts, follow_convoy, stored_state
from ._store_polecats import PolecatLedger
from ._store_records import Sling

#: A convoy's id: ``cv-`` and 5 base36 digits, like a bead's.
CONVOY_PREFIX = "cv"


@dataclass(frozen=True)
class ConvoyBead:
    """One bead of a convoy as ``convoy show`` tells it."""

    id: str
    title: str
    rig: str | None
    status: str
    reason: str | None
    mr: str | None
    mr_state: str | None
    merged_commit: str | None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Convoy:
    id: str
    title: str
    rig: str | None
    state: ConvoyState
    beads: tuple[str, ...]
    created_at: float

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "rig": self.rig,
                "state": self.state.state, "closed": self.state.closed,
                "total": self.state.total, "progress": self.state.progress,
                "stuck_bead": self.state.stuck_bead, "stuck_reason": self.state.stuck_reason,
                "beads": list(self.beads), "created_at": self.created_at}


class ConvoyLedger(PolecatLedger):
    """Convoys: create, add and remove beads, list, show, sling their open beads."""

    def create_convoy(self, title: str, beads: Sequence[str], *,
                      rig: str | None = None) -> Convoy:
        """A new convoy of ``beads`` (all known, none named twice); ``rig`` is where its
        beads without a rig are slung. Emits ``convoy_created`` (and ``convoy_landed`` or
        ``convoy_stuck`` when its beads already are)."""
        _no_twice(beads)
        for _ in range(50):
            convoy = bead_id(CONVOY_PREFIX, secrets.randbelow(36**5))
            now = time.time()
            try:
                with self.transaction() as conn:
                    if rig is not None and not conn.execute(
                            "SELECT 1 FROM rigs WHERE name = ?", (rig,)).fetchone():
                        raise NotFound(f"no rig named {rig!r} in this town")
                    conn.execute("INSERT INTO convoys (id, title, rig, created_at, updated_at)"
                                 " VALUES (?, ?, ?, ?, ?)", (convoy, title, rig, now, now))
                    self._insert_beads(conn, convoy, beads)
                    state = convoy_state(bead_facts(conn, convoy))
                    self._emit(conn, ConvoyCreated(convoy=convoy, title=title,
                                                   beads=tuple(beads), rig=rig,
                                                   state=state.state, closed=state.closed,
                                                   total=state.total))
                    follow_convoy(conn, lambda e: self._emit(conn, e), convoy,
                                  quiet_progress=True)
            except sqlite3.IntegrityError as exc:
                if "convoys.id" not in str(exc):
                    raise
                continue
            return self.convoy(convoy)
        raise GastownError("could not find a free convoy id")

    def add_to_convoy(self, convoy: str, beads: Sequence[str]) -> Convoy:
        """Add ``beads`` (known, not in the convoy yet); emits ``convoy_changed``."""
        _no_twice(beads)
        with self.transaction() as conn:
            row = self._convoy_row(conn, convoy)
            for bead in beads:
                if conn.execute("SELECT 1 FROM convoy_beads WHERE convoy = ? AND bead = ?",
                                (convoy, bead)).fetchone():
                    raise Refused(f"bead {bead} is already in convoy {convoy}")
            self._insert_beads(conn, convoy, beads)
            self._changed(conn, row, added=tuple(beads), removed=())
        return self.convoy(convoy)

    def remove_from_convoy(self, convoy: str, beads: Sequence[str]) -> Convoy:
        """Take ``beads`` (each in the convoy) out of it; emits ``convoy_changed``."""
        _no_twice(beads)
        with self.transaction() as conn:
            row = self._convoy_row(conn, convoy)
            for bead in beads:
                if conn.execute("DELETE FROM convoy_beads WHERE convoy = ? AND bead = ?",
                                (convoy, bead)).rowcount == 0:
                    raise NotFound(f"bead {bead!r} is not in convoy {convoy}")
            self._changed(conn, row, added=(), removed=tuple(beads))
        return self.convoy(convoy)

    def convoys(self) -> list[Convoy]:
        rows = self._conn.execute("SELECT * FROM convoys ORDER BY created_at, id").fetchall()
        return [self._convoy_of(r) for r in rows]

    def convoy(self, convoy: str) -> Convoy:
        return self._convoy_of(self._convoy_row(self._conn, convoy))

    def convoy_beads(self, convoy: str) -> list[ConvoyBead]:
        """The convoy's beads in its order, each with its newest merge request."""
        self._convoy_row(self._conn, convoy)
        out = []
        for r in self._conn.execute(
                "SELECT b.* FROM convoy_beads cb JOIN beads b ON b.id = cb.bead "
                "WHERE cb.convoy = ? ORDER BY cb.position, cb.bead", (convoy,)).fetchall():
            mr = self._conn.execute(
                "SELECT id, state, merged_commit FROM merge_requests WHERE bead = ? "
                "ORDER BY created_at DESC, rowid DESC LIMIT 1", (r["id"],)).fetchone()
            merged = self._conn.execute(
                "SELECT merged_commit FROM merge_requests WHERE bead = ? AND state = 'merged' "
                "ORDER BY created_at DESC LIMIT 1", (r["id"],)).fetchone()
            out.append(ConvoyBead(
                id=r["id"], title=r["title"], rig=r["rig"], status=r["status"],
                reason=r["reason"], mr=mr["id"] if mr else None,
                mr_state=mr["state"] if mr else None,
                merged_commit=(merged["merged_commit"] if merged else None)
                or r["closed_commit"]))
        return out

    def queue_convoy_slings(self, convoy: str, rig: str | None = None, *,
                            agent: str | None = None) -> list[Sling]:
        """One queued sling for every ``open`` bead of the convoy that has none queued,
        in the convoy's order, in one transaction (all or none): into ``rig``, else the
        bead's rig, else the convoy's. Blocked, hooked, in-review and closed beads are
        left as they are (a blocked bead is a person's to look at first)."""
        ids: list[int] = []
        with self.transaction() as conn:
            row = self._convoy_row(conn, convoy)
            pending = conn.execute(
                "SELECT b.id, b.rig FROM convoy_beads cb JOIN beads b ON b.id = cb.bead "
                "WHERE cb.convoy = ? AND b.status = 'open' AND NOT EXISTS (SELECT 1 FROM "
                "slings s WHERE s.bead = b.id AND s.state = 'queued') "
                "ORDER BY cb.position, cb.bead", (convoy,)).fetchall()
            for bead in pending:
                target = rig or bead["rig"] or row["rig"]
                if target is None:
                    raise Refused(f"bead {bead['id']} has no rig and convoy {convoy} none "
                                  f"either; use 'gastown sling --convoy {convoy} RIG'")
                if not conn.execute("SELECT 1 FROM rigs WHERE name = ?",
                                    (target,)).fetchone():
                    raise NotFound(f"no rig named {target!r} in this town")
                ids.append(self._queue_one(conn, bead["id"], target, agent=agent,
                                           force=False, note=f"convoy {convoy}"))
        return [self.sling(sling_id) for sling_id in ids]

    # -- inside a transaction -------------------------------------------------------------

    def _convoy_row(self, conn: sqlite3.Connection, convoy: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute("SELECT * FROM convoys WHERE id = ?",
                                               (convoy,)).fetchone()
        if row is None:
            raise NotFound(f"no convoy {convoy!r}")
        return row

    def _convoy_of(self, row: sqlite3.Row) -> Convoy:
        beads = tuple(r["bead"] for r in self._conn.execute(
            "SELECT bead FROM convoy_beads WHERE convoy = ? ORDER BY position, bead",
            (row["id"],)))
        return Convoy(id=row["id"], title=row["title"], rig=row["rig"],
                      state=stored_state(row), beads=beads, created_at=row["created_at"])

    @staticmethod
    def _insert_beads(conn: sqlite3.Connection, convoy: str, beads: Sequence[str]) -> None:
        for bead in beads:
            if not conn.execute("SELECT 1 FROM beads WHERE id = ?", (bead,)).fetchone():
                raise NotFound(f"no bead {bead!r}")
            conn.execute("INSERT INTO convoy_beads (convoy, bead, position) VALUES (?, ?, "
                         "(SELECT COALESCE(MAX(position), 0) + 1 FROM convoy_beads "
                         "WHERE convoy = ?))", (convoy, bead, convoy))

    def _changed(self, conn: sqlite3.Connection, row: sqlite3.Row, *,
                 added: tuple[str, ...], removed: tuple[str, ...]) -> None:
        convoy = str(row["id"])
        state = convoy_state(bead_facts(conn, convoy))
        self._emit(conn, ConvoyChanged(convoy=convoy, title=row["title"], added=added,
                                       removed=removed, state=state.state,
                                       closed=state.closed, total=state.total))
        follow_convoy(conn, lambda e: self._emit(conn, e), convoy, quiet_progress=True)


def _no_twice(beads: Sequence[str]) -> None:
    twice = next((b for b in beads if beads.count(b) > 1), None)
    if twice is not None:
        raise Refused(f"bead {twice} is named twice")
