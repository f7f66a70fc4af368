"""The store's ledger of rigs, beads and roles.

Layer: adapters (SQLite), one of the ledgers :class:`~.store.Store` is made of.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..core._event_base import UNSET
from ..core.errors import GastownError, NotFound, Refused
from ..core.events import (
    BeadCreated,
    BeadStatusChanged,
    BeadUpdated,
    MqPaused,
    MqResumed,
    MrCancelled,
    PolecatEscalated,
    PushCaughtUp,
    PushRefused,
    RigAdded,
    RigRemoved,
    SlingCancelled,
)
from ..core.events_town import RoleChanged
from ..core.names import bead_id
from ._store_needs import NeedsLedger
from ._store_records import (
    Bead,
    BeadStatus,
    MergeRequest,
    Polecat,
    Rig,
    RoleRecord,
    Sling,
    bead_of,
    mr_of,
    polecat_of,
    rig_of,
)

#: A polecat in these states is still being worked on by the town (agent, queue).
LIVE_POLECAT_STATES: Final = ("spawning", "working", "stalled", "done", "merging")
_LIVE_MARKS: Final = ", ".join("?" * len(LIVE_POLECAT_STATES))


@dataclass(frozen=True)
class BeadWork:
    """A bead's polecats (live or kept), merge requests, and queued slings."""

    polecats: list[Polecat]
    merge_requests: list[MergeRequest]
    queued_slings: list[QueuedSling]


@dataclass(frozen=True)
class QueuedSling:
    """A queued sling and its place in the mayor's queue (1 = next)."""

    position: int
    sling: Sling
    #: Why it may not be dispatched yet (its bead's needs), None when it is ready.
    waiting: str | None = None


class TownLedger(NeedsLedger):
    """Rigs, beads (and their needs) and the supervisor's record of its roles."""

    def rigs(self) -> list[Rig]:
        rows = self._conn.execute("SELECT * FROM rigs ORDER BY name").fetchall()
        return [rig_of(r) for r in rows]

    def rig(self, name: str) -> Rig:
        row = self._conn.execute("SELECT * FROM rigs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no rig named {name!r} in this town")
        return rig_of(row)

    def add_rig(self, rig: Rig) -> None:
        """Register ``rig``; refuses a taken name or prefix (nothing is written then)."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM rigs WHERE name = ?", (rig.name,)).fetchone():
                raise Refused(f"rig {rig.name!r} already exists")
            taken = conn.execute("SELECT name FROM rigs WHERE prefix = ?",
                                 (rig.prefix,)).fetchone()
            if taken:
                raise Refused(f"bead prefix {rig.prefix!r} is already used by rig "
                              f"{taken['name']!r}")
            conn.execute(
                "INSERT INTO rigs (name, prefix, repo, default_branch, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (rig.name, rig.prefix, rig.repo, rig.default_branch, rig.created_at))
            self._emit(conn, RigAdded(rig=rig.name, prefix=rig.prefix, repo=rig.repo,
                                      default_branch=rig.default_branch))

    def remove_rig(self, name: str) -> None:
        with self.transaction() as conn:
            if conn.execute("DELETE FROM rigs WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no rig named {name!r} in this town")
            conn.execute("DELETE FROM polecats WHERE rig = ?", (name,))
            self._emit(conn, RigRemoved(rig=name))

    def set_mq_paused(self, name: str, reason: str | None) -> bool:
        """Stop the rig's merge queue for ``reason``, or resume it (None); True if it changed.

        Emits ``mq_paused`` (with the reason) or ``mq_resumed`` once per change.
        """
        with self.transaction() as conn:
            row = conn.execute("SELECT mq_paused FROM rigs WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"no rig named {name!r} in this town")
            if row["mq_paused"] == reason:
                return False
            conn.execute("UPDATE rigs SET mq_paused = ? WHERE name = ?", (reason, name))
            if reason is None:
                self._emit(conn, MqResumed(rig=name, was=row["mq_paused"]))
            else:
                self._emit(conn, MqPaused(rig=name, reason=reason))
            return True

    def record_unpushed(self, name: str, *, landed_head: str, remote_head: str | None,
                        error: str, count: int) -> None:
        """Merged work sits in the refinery's clone (``landed_head``), not on the remote.

        Emits ``push_refused`` when the landed head or the error changed.
        """
        with self.transaction() as conn:
            row = conn.execute("SELECT landed_head, remote_head, push_error FROM rigs "
                               "WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"no rig named {name!r} in this town")
            if (row["landed_head"], row["remote_head"], row["push_error"]) == \
                    (landed_head, remote_head, error):
                return
            conn.execute("UPDATE rigs SET landed_head = ?, remote_head = ?, push_error = ? "
                         "WHERE name = ?", (landed_head, remote_head, error, name))
            self._emit(conn, PushRefused(rig=name, landed_head=landed_head,
                                         remote_head=remote_head, reason=error, count=count))

    def record_pushed(self, name: str, head: str) -> None:
        """The remote's branch has everything that landed (``head``): forget the backlog.

        Emits ``push_caught_up`` when there was a backlog.
        """
        with self.transaction() as conn:
            row = conn.execute("SELECT push_error, landed_head FROM rigs WHERE name = ?",
                               (name,)).fetchone()
            if row is None or (row["push_error"] is None and row["landed_head"] is None):
                return
            conn.execute("UPDATE rigs SET landed_head = NULL, remote_head = NULL, "
                         "push_error = NULL WHERE name = ?", (name,))
            self._emit(conn, PushCaughtUp(rig=name, head=head, was=row["push_error"]))

    def live_polecats(self, rig: str) -> list[str]:
        """Names of the rig's polecats (a nuked polecat's row is deleted with it)."""
        rows = self._conn.execute("SELECT name FROM polecats WHERE rig = ? ORDER BY name",
                                  (rig,)).fetchall()
        return [r["name"] for r in rows]

    def create_bead(self, *, prefix: str, rig: str | None, title: str,
                    description: str = "", priority: int = 2,
                    needs: Sequence[str] = ()) -> Bead:
        """Create an ``open`` bead with a fresh random id; unique across processes.

        ``needs``: beads it needs (closed) before it is dispatched, recorded in the same
        transaction (an unknown one refuses it all: no bead is created).

        The id is drawn at random and inserted under the primary key; a collision
        (one in ~60 million per pair) rolls back and draws again.
        """
        for _ in range(50):
            candidate = bead_id(prefix, secrets.randbelow(36**5))
            now = time.time()
            try:
                with self.transaction() as conn:
                    conn.execute(
                        "INSERT INTO beads (id, rig, title, description, priority, status, "
                        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'open', ?, ?)",
                        (candidate, rig, title, description, priority, now, now))
                    self._emit(conn, BeadCreated(rig=rig, bead=candidate, title=title,
                                                 priority=priority))
                    self._insert_needs(conn, candidate, list(dict.fromkeys(needs)))
            except sqlite3.IntegrityError as exc:
                if "beads.id" not in str(exc):
                    raise
                continue
            return self.bead(candidate)
        raise GastownError(f"could not find a free bead id with prefix {prefix!r}")

    def bead(self, bead_id: str) -> Bead:
        row = self._conn.execute("SELECT * FROM beads WHERE id = ?", (bead_id,)).fetchone()
        if row is None:
            raise NotFound(f"no bead {bead_id!r}")
        return bead_of(row)

    def beads(self, *, rig: str | None = None,
              statuses: Sequence[str] | None = None) -> list[Bead]:
        sql = "SELECT * FROM beads"
        where: list[str] = []
        params: list[object] = []
        if rig is not None:
            where.append("rig = ?")
            params.append(rig)
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, id"
        return [bead_of(r) for r in self._conn.execute(sql, params).fetchall()]

    def set_bead_status(self, bead_id: str, status: BeadStatus, *,
                        reason: str | None = None) -> Bead:
        """Move a bead to ``status`` (recording ``reason``) and emit ``bead_status_changed``."""
        with self.transaction() as conn:
            row = conn.execute("SELECT status, rig FROM beads WHERE id = ?",
                               (bead_id,)).fetchone()
            if row is None:
                raise NotFound(f"no bead {bead_id!r}")
            conn.execute("UPDATE beads SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                         (status, reason, time.time(), bead_id))
            self._emit(conn, BeadStatusChanged(rig=row["rig"], bead=bead_id,
                                               old=row["status"], new=status, reason=reason))
            self._bead_moved(conn, bead_id)
        return self.bead(bead_id)

    def update_bead(self, bead_id: str, *, title: str | None = None,
                    description: str | None = None, priority: int | None = None,
                    status: BeadStatus | None = None) -> Bead:
        """Edit a bead by hand; emits ``bead_updated`` (and ``bead_status_changed``).

        ``status`` may only move a bead between ``open`` and ``blocked``: a hooked or
        in-review bead's status follows its polecat, and a closed one is reopened with
        :meth:`reopen_bead`. A new priority also re-orders the bead's queued MRs.
        """
        with self.transaction() as conn:
            row = self._bead_row(conn, bead_id)
            changes: dict[str, Any] = {}
            for key, value in (("title", title), ("description", description),
                               ("priority", priority)):
                if value is not None and value != row[key]:
                    changes[key] = value
            if status is not None and status != row["status"]:
                if status not in ("open", "blocked"):
                    raise Refused(f"a bead's status can be set to open or blocked, not "
                                  f"{status!r}")
                if row["status"] not in ("open", "blocked"):
                    raise Refused(self._status_is_not_yours(conn, row))
            now = time.time()
            for key, value in changes.items():
                conn.execute(f"UPDATE beads SET {key} = ?, updated_at = ? WHERE id = ?",
                             (value, now, bead_id))
            if "priority" in changes:
                conn.execute("UPDATE merge_requests SET priority = ? WHERE bead = ? AND "
                             "state = 'queued'", (changes["priority"], bead_id))
            if changes:
                self._emit(conn, BeadUpdated(rig=row["rig"], bead=bead_id,
                                             fields=tuple(sorted(changes)),
                                             title=changes.get("title", UNSET),
                                             priority=changes.get("priority", UNSET)))
            if status is not None and status != row["status"]:
                conn.execute("UPDATE beads SET status = ?, reason = ?, updated_at = ? "
                             "WHERE id = ?", (status, "set by hand", now, bead_id))
                self._emit(conn, BeadStatusChanged(rig=row["rig"], bead=bead_id,
                                                   old=row["status"], new=status,
                                                   reason="set by hand"))
                self._bead_moved(conn, bead_id)
        return self.bead(bead_id)

    def close_bead(self, bead_id: str, *, reason: str | None = None,
                   commit: str | None = None, force: bool = False) -> list[Polecat]:
        """Close a bead by hand (``commit``: where its work landed by another route).

        Refuses a bead with a live polecat, a queued or running merge request, or a
        queued sling, unless ``force``: then, in this one transaction, the slings and
        merge requests are cancelled and each live polecat is marked ``escalated`` with
        the reason (its worktree and branch are kept; nothing is deleted). Returns the
        polecats whose agent sessions the caller should stop. A polecat still being
        created is refused even with ``force`` (the mayor is building it).
        """
        reason = reason or "closed by hand"
        with self.transaction() as conn:
            row = self._bead_row(conn, bead_id)
            if row["status"] == "closed":
                raise Refused(f"bead {bead_id} is already closed"
                              + (f" ({row['reason']})" if row["reason"] else ""))
            live = [polecat_of(r) for r in conn.execute(
                f"SELECT * FROM polecats WHERE bead = ? AND state IN ({_LIVE_MARKS}) "
                "ORDER BY rig, name", (bead_id, *LIVE_POLECAT_STATES))]
            mrs = conn.execute("SELECT id, rig, polecat, state FROM merge_requests WHERE "
                               "bead = ? AND state IN ('queued', 'running') ORDER BY "
                               "created_at", (bead_id,)).fetchall()
            slings = conn.execute("SELECT id, rig FROM slings WHERE bead = ? AND "
                                  "state = 'queued' ORDER BY id", (bead_id,)).fetchall()
            if not force and (live or mrs or slings):
                what = ([f"polecat {p.rig}/{p.name} ({p.state})" for p in live]
                        + [f"merge request {m['id']} ({m['state']})" for m in mrs]
                        + [f"queued sling #{s['id']}" for s in slings])
                raise Refused(f"bead {bead_id} has {', '.join(what)}; use --force to cancel "
                              "them (worktrees and branches are kept)")
            spawning = [p for p in live if p.state == "spawning"]
            if spawning:
                raise Refused(f"polecat {spawning[0].rig}/{spawning[0].name} is still being "
                              f"created for {bead_id}; retry in a moment")
            now = time.time()
            note = f"bead {bead_id} closed by hand: {reason}"
            for sling in slings:
                conn.execute("UPDATE slings SET state = 'cancelled', error = ?, updated_at = ? "
                             "WHERE id = ?", (note, now, sling["id"]))
                self._emit(conn, SlingCancelled(rig=sling["rig"], bead=bead_id,
                                                sling=sling["id"], reason=note))
            for mr in mrs:
                conn.execute("UPDATE merge_requests SET state = 'cancelled', reason = ?, "
                             "updated_at = ? WHERE id = ?", (note, now, mr["id"]))
                self._emit(conn, MrCancelled(rig=mr["rig"], polecat=mr["polecat"],
                                             bead=bead_id, mr=mr["id"], reason=note))
            kept = f"{note}; worktree and branch kept"
            for polecat in live:
                conn.execute("UPDATE polecats SET state = 'escalated', reason = ?, "
                             "updated_at = ? WHERE rig = ? AND name = ?",
                             (kept, now, polecat.rig, polecat.name))
                self._emit(conn, PolecatEscalated(rig=polecat.rig, polecat=polecat.name,
                                                  bead=bead_id, old=polecat.state, reason=kept))
            conn.execute("UPDATE beads SET status = 'closed', reason = ?, closed_commit = ?, "
                         "updated_at = ? WHERE id = ?", (reason, commit, now, bead_id))
            self._emit(conn, BeadStatusChanged(rig=row["rig"], bead=bead_id,
                                               old=row["status"], new="closed", reason=reason,
                                               commit=commit, by_hand=True))
            self._bead_moved(conn, bead_id)
        return [p for p in live if p.state in ("working", "stalled")]

    def reopen_bead(self, bead_id: str, *, reason: str | None = None) -> Bead:
        """A closed (or blocked) bead back to ``open``; emits ``bead_status_changed``."""
        reason = reason or "reopened by hand"
        with self.transaction() as conn:
            row = self._bead_row(conn, bead_id)
            if row["status"] not in ("closed", "blocked"):
                raise Refused(f"bead {bead_id} is {row['status']}, not closed or blocked")
            conn.execute("UPDATE beads SET status = 'open', reason = ?, closed_commit = NULL, "
                         "updated_at = ? WHERE id = ?", (reason, time.time(), bead_id))
            self._emit(conn, BeadStatusChanged(rig=row["rig"], bead=bead_id,
                                               old=row["status"], new="open", reason=reason))
            self._bead_moved(conn, bead_id)
        return self.bead(bead_id)

    def bead_work(self, bead_id: str) -> BeadWork:
        """Everything in flight or kept for a bead: polecats, MRs, queued slings."""
        polecats = [polecat_of(r) for r in self._conn.execute(
            "SELECT * FROM polecats WHERE bead = ? ORDER BY created_at", (bead_id,))]
        mrs = [mr_of(r) for r in self._conn.execute(
            "SELECT * FROM merge_requests WHERE bead = ? ORDER BY created_at", (bead_id,))]
        slings = [q for q in self.sling_queue() if q.sling.bead == bead_id]
        return BeadWork(polecats=polecats, merge_requests=mrs, queued_slings=slings)

    def sling_queue(self) -> list[QueuedSling]:
        """The queued slings in the mayor's order (:meth:`dispatch_plan`: the ready ones by
        priority and age, then those waiting for their needs), with their 1-based place."""
        return [QueuedSling(position=i, sling=sling, waiting=waiting)
                for i, (sling, waiting) in enumerate(self.dispatch_plan().queue(), start=1)]

    def _bead_row(self, conn: sqlite3.Connection, bead_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute("SELECT * FROM beads WHERE id = ?",
                                               (bead_id,)).fetchone()
        if row is None:
            raise NotFound(f"no bead {bead_id!r}")
        return row

    def _status_is_not_yours(self, conn: sqlite3.Connection, row: sqlite3.Row) -> str:
        if row["status"] == "closed":
            return f"bead {row['id']} is closed; reopen it with 'gastown bead reopen'"
        holder = conn.execute("SELECT rig, name FROM polecats WHERE bead = ? ORDER BY "
                              "created_at DESC", (row["id"],)).fetchone()
        who = f" by polecat {holder['rig']}/{holder['name']}" if holder else ""
        return (f"bead {row['id']} is {row['status']}{who}; its status follows the work "
                "(close it with --force, or nuke the polecat)")

    def record_role(self, name: str, *, state: str, pid: int | None, started_at: float | None,
                    restarts: int, last_exit: int | None, reason: str | None = None,
                    event: RoleChanged | None = None) -> None:
        """Upsert the role's row; when ``event`` is given, emit it in the same transaction."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO roles (name, state, pid, started_at, restarts, last_exit, reason,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " state = excluded.state, pid = excluded.pid, started_at = excluded.started_at,"
                " restarts = excluded.restarts, last_exit = excluded.last_exit,"
                " reason = excluded.reason, updated_at = excluded.updated_at",
                (name, state, pid, started_at, restarts, last_exit, reason, time.time()))
            if event is not None:
                self._emit(conn, event)

    def roles(self) -> list[RoleRecord]:
        rows = self._conn.execute("SELECT * FROM roles ORDER BY name").fetchall()
        return [RoleRecord(name=r["name"], state=r["state"], pid=r["pid"],
                           started_at=r["started_at"], restarts=r["restarts"],
                           last_exit=r["last_exit"], reason=r["reason"],
                           updated_at=r["updated_at"]) for r in rows]

    def forget_role(self, name: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM roles WHERE name = ?", (name,))

    def counts(self) -> dict[str, dict[str, int]]:
        """Polecats and merge requests by state, for status displays."""
        out: dict[str, dict[str, int]] = {"polecats": {}, "merge_requests": {}}
        for table, key in (("polecats", "polecats"), ("merge_requests", "merge_requests")):
            for row in self._conn.execute(
                    f"SELECT state, COUNT(*) AS n FROM {table} GROUP BY state"):
                out[key][row["state"]] = row["n"]
        return out
