"""The store's ledger of bead dependencies ("needs") and the mayor's dispatch plan.

Layer: adapters (SQLite), one of the ledgers :class:`~.store.Store` is made of. The rules
(what meets a need, what a cycle is, the dispatch order) are
:mod:`gastown.roles.core.dispatch`'s; this reads and writes the ``bead_needs`` table and
writes each change's domain event (``bead_need_added``, ``bead_need_removed``) in the
same transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ..core.dispatch import (
    Need,
    Plan,
    Queued,
    Waiting,
    cycle_text,
    find_cycle,
    plan,
    waiting_reason,
)
from ..core.errors import NotFound, Refused
from ..core.events_needs import BeadNeedAdded, BeadNeedRemoved
from ._store_base import StoreBase
from ._store_records import Sling, sling_of


@dataclass(frozen=True)
class NeedState:
    """One end of a need as ``bead show`` lists it: the other bead and where it stands."""

    bead: str
    rig: str | None
    title: str
    status: str
    #: Why it will not close without a person (blocked, rejected, escalated), else None.
    blocked: str | None = None


@dataclass(frozen=True)
class BeadNeeds:
    """Both directions of a bead's needs, and why it waits (None: it does not)."""

    needs: list[NeedState]
    needed_by: list[NeedState]
    waiting: str | None


@dataclass(frozen=True)
class SlingPlan:
    """The queued slings as the mayor takes them: the ready ones in dispatch order, then
    the waiting ones with why (:func:`gastown.roles.core.dispatch.plan`)."""

    ready: list[Sling]
    waiting: list[tuple[Sling, Waiting]]

    def queue(self) -> Iterator[tuple[Sling, str | None]]:
        """Every queued sling in its place, with why it waits (None: ready)."""
        yield from ((sling, None) for sling in self.ready)
        yield from ((sling, why.reason) for sling, why in self.waiting)


def unmet_needs(conn: sqlite3.Connection, bead_id: str) -> list[str]:
    """The beads ``bead_id`` needs that are not closed yet (a missing one counts)."""
    rows = conn.execute("SELECT n.need FROM bead_needs n LEFT JOIN beads b ON b.id = n.need "
                        "WHERE n.bead = ? AND (b.status IS NULL OR b.status != 'closed') "
                        "ORDER BY n.need", (bead_id,)).fetchall()
    return [r["need"] for r in rows]


def _blockers(conn: sqlite3.Connection, beads: Iterable[sqlite3.Row]) -> dict[str, str]:
    """Why each of these (needed) beads will not close without a person, if it will not:
    it is ``blocked``, or it is open with a polecat kept rejected or escalated, or its
    last merge request was rejected."""
    found: dict[str, str] = {}
    for bead in beads:
        if bead["status"] not in ("open", "blocked"):
            continue
        polecat = conn.execute("SELECT rig, name, state, reason FROM polecats WHERE bead = ? "
                               "AND state IN ('rejected', 'escalated') ORDER BY updated_at "
                               "DESC", (bead["id"],)).fetchone()
        mr = conn.execute("SELECT id, state, reason FROM merge_requests WHERE bead = ? "
                          "ORDER BY created_at DESC", (bead["id"],)).fetchone()
        if polecat is not None:
            found[bead["id"]] = (f"polecat {polecat['rig']}/{polecat['name']} "
                                 f"{polecat['state']}"
                                 + (f": {polecat['reason']}" if polecat["reason"] else ""))
        elif mr is not None and mr["state"] == "rejected":
            found[bead["id"]] = (f"merge request {mr['id']} rejected"
                                 + (f": {mr['reason']}" if mr["reason"] else ""))
        elif bead["status"] == "blocked":
            found[bead["id"]] = "blocked" + (f": {bead['reason']}" if bead["reason"] else "")
    return found


class NeedsLedger(StoreBase):
    """Bead dependencies: add, remove, read both ways; the dispatch plan that obeys them."""

    def add_need(self, bead_id: str, need_id: str) -> bool:
        """Record that ``bead_id`` needs ``need_id`` (closed) before it is dispatched.

        True if added, False if it was already there (a no-op, no event). Refuses an
        unknown bead, a bead needing itself, and a need that would close a cycle (named).
        """
        with self.transaction() as conn:
            return self._insert_needs(conn, bead_id, [need_id]) == 1

    def _insert_needs(self, conn: sqlite3.Connection, bead_id: str,
                      need_ids: Sequence[str]) -> int:
        """Add each need of ``bead_id`` in the caller's transaction; how many were new."""
        bead = self._need_row(conn, bead_id)
        added = 0
        for need_id in need_ids:
            need = self._need_row(conn, need_id)
            if need_id == bead_id:
                raise Refused(f"bead {bead_id} cannot need itself")
            if conn.execute("SELECT 1 FROM bead_needs WHERE bead = ? AND need = ?",
                            (bead_id, need_id)).fetchone():
                continue
            cycle = find_cycle(self._edges(conn), bead_id, need_id)
            if cycle is not None:
                raise Refused(f"bead {bead_id} cannot need {need_id}: that would be a cycle "
                              f"({cycle_text(cycle)})")
            conn.execute("INSERT INTO bead_needs (bead, need, created_at) VALUES (?, ?, ?)",
                         (bead_id, need_id, time.time()))
            self._emit(conn, BeadNeedAdded(rig=bead["rig"], bead=bead_id, need=need_id,
                                           need_rig=need["rig"]))
            added += 1
        if added:
            self._bead_moved(conn, bead_id)  # a convoy holding it may wait on a stuck need
        return added

    def remove_need(self, bead_id: str, need_id: str) -> None:
        """``bead_id`` no longer needs ``need_id``; refuses a need that is not there."""
        with self.transaction() as conn:
            bead = self._need_row(conn, bead_id)
            need = self._need_row(conn, need_id)
            gone = conn.execute("DELETE FROM bead_needs WHERE bead = ? AND need = ?",
                                (bead_id, need_id)).rowcount
            if not gone:
                raise Refused(f"bead {bead_id} does not need {need_id}")
            self._emit(conn, BeadNeedRemoved(rig=bead["rig"], bead=bead_id, need=need_id,
                                             need_rig=need["rig"]))
            self._bead_moved(conn, bead_id)

    def bead_needs(self, bead_id: str) -> BeadNeeds:
        """What ``bead_id`` needs and what needs it, each with its status; why it waits."""
        conn = self._conn
        self._need_row(conn, bead_id)
        needs = conn.execute("SELECT b.* FROM bead_needs n JOIN beads b ON b.id = n.need "
                             "WHERE n.bead = ? ORDER BY b.id", (bead_id,)).fetchall()
        by = conn.execute("SELECT b.* FROM bead_needs n JOIN beads b ON b.id = n.bead "
                          "WHERE n.need = ? ORDER BY b.id", (bead_id,)).fetchall()
        blockers = _blockers(conn, needs)
        states = [NeedState(bead=r["id"], rig=r["rig"], title=r["title"], status=r["status"],
                            blocked=blockers.get(r["id"])) for r in needs]
        waiting = waiting_reason([Need(bead=n.bead, status=n.status, blocked=n.blocked)
                                  for n in states])
        return BeadNeeds(
            needs=states, waiting=waiting,
            needed_by=[NeedState(bead=r["id"], rig=r["rig"], title=r["title"],
                                 status=r["status"]) for r in by])

    def waiting_beads(self, bead_ids: Sequence[str] | None = None) -> dict[str, str]:
        """Beads (of ``bead_ids``, or all) with a need not closed, and why each waits."""
        return {bead: why for bead, needs in self._needs_of(bead_ids).items()
                if (why := waiting_reason(needs)) is not None}

    def needs_ids(self) -> dict[str, list[str]]:
        """Every bead that needs others, with the ids it needs (sorted)."""
        return {bead: sorted(needs) for bead, needs in self._edges(self._conn).items()}

    def dispatch_plan(self, now: float | None = None) -> SlingPlan:
        """The queued slings in the mayor's order, and those waiting for their needs."""
        conn = self._conn
        rows = conn.execute("SELECT s.*, b.priority AS bead_priority, "
                            "b.created_at AS bead_created FROM slings s LEFT JOIN beads b "
                            "ON b.id = s.bead WHERE s.state = 'queued'").fetchall()
        needs = self._needs_of(sorted({r["bead"] for r in rows}))
        slings = {r["id"]: sling_of(r) for r in rows}
        queue = [Queued(sling=r["id"], bead=r["bead"], rig=r["rig"],
                        queued_at=r["created_at"],
                        priority=r["bead_priority"] if r["bead_priority"] is not None else 2,
                        created_at=r["bead_created"] or 0.0,
                        needs=tuple(needs.get(r["bead"], ()))) for r in rows]
        decided: Plan = plan(queue, time.time() if now is None else now)
        return SlingPlan(ready=[slings[q.sling] for q in decided.ready],
                         waiting=[(slings[w.sling], w) for w in decided.waiting])

    def _needs_of(self, bead_ids: Sequence[str] | None) -> dict[str, list[Need]]:
        """Each bead's needs with their statuses (and blockers), for these beads or all."""
        conn = self._conn
        sql = ("SELECT n.bead AS needer, b.* FROM bead_needs n JOIN beads b "
               "ON b.id = n.need")
        params: list[str] = []
        if bead_ids is not None:
            if not bead_ids:
                return {}
            sql += f" WHERE n.bead IN ({', '.join('?' * len(bead_ids))})"
            params = list(bead_ids)
        rows = conn.execute(sql + " ORDER BY n.bead, n.need", params).fetchall()
        blockers = _blockers(conn, {r["id"]: r for r in rows}.values())
        found: dict[str, list[Need]] = {}
        for r in rows:
            found.setdefault(r["needer"], []).append(
                Need(bead=r["id"], status=r["status"], blocked=blockers.get(r["id"])))
        return found

    @staticmethod
    def _edges(conn: sqlite3.Connection) -> dict[str, list[str]]:
        edges: dict[str, list[str]] = {}
        for row in conn.execute("SELECT bead, need FROM bead_needs"):
            edges.setdefault(row["bead"], []).append(row["need"])
        return edges

    @staticmethod
    def _need_row(conn: sqlite3.Connection, bead_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute("SELECT * FROM beads WHERE id = ?",
                                               (bead_id,)).fetchone()
        if row is None:
            raise NotFound(f"no bead {bead_id!r}")
        return row

