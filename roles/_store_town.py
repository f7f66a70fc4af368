"""The store's ledger of rigs, beads and roles."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from gastown.roles._store_base import StoreBase
from gastown.roles._store_records import Bead, BeadStatus, Rig, RoleRecord, bead_of, rig_of
from gastown.roles.errors import GastownError, NotFound, Refused
from gastown.roles.names import bead_id


class TownLedger(StoreBase):
    """Rigs, beads and the supervisor's record of its roles."""

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
            self._emit(conn, "rig_added", rig=rig.name, prefix=rig.prefix, repo=rig.repo,
                       default_branch=rig.default_branch)

    def remove_rig(self, name: str) -> None:
        with self.transaction() as conn:
            if conn.execute("DELETE FROM rigs WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no rig named {name!r} in this town")
            conn.execute("DELETE FROM polecats WHERE rig = ?", (name,))
            self._emit(conn, "rig_removed", rig=name)

    def live_polecats(self, rig: str) -> list[str]:
        """Names of the rig's polecats (a nuked polecat's row is deleted with it)."""
        rows = self._conn.execute("SELECT name FROM polecats WHERE rig = ? ORDER BY name",
                                  (rig,)).fetchall()
        return [r["name"] for r in rows]

    def create_bead(self, *, prefix: str, rig: str | None, title: str,
                    description: str = "", priority: int = 2) -> Bead:
        """Create an ``open`` bead with a fresh random id; unique across processes.

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
                    self._emit(conn, "bead_created", rig=rig, bead=candidate, title=title,
                               priority=priority)
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
            self._emit(conn, "bead_status_changed", rig=row["rig"], bead=bead_id,
                       old=row["status"], new=status, reason=reason)
        return self.bead(bead_id)

    def record_role(self, name: str, *, state: str, pid: int | None, started_at: float | None,
                    restarts: int, last_exit: int | None, reason: str | None = None,
                    event: str | None = None, **data: Any) -> None:
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
                rig = name.partition(":")[2] or None
                self._emit(conn, event, rig=rig, role=name, state=state, pid=pid,
                           restarts=restarts, last_exit=last_exit, reason=reason, **data)

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
