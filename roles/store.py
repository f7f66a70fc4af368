"""The town's truth: a SQLite database (WAL) of rigs, beads, polecats and domain events.

Every state change is one transaction, and the domain event describing it is written
in that same transaction (the ``events`` table is an outbox), so a process killed at
any instant leaves either both or neither. The feed (``events.jsonl``) is filled from
this outbox by a single writer. Callers get frozen dataclasses, never rows.

Concurrency: many processes (CLI invocations, roles) open the same file. Writers use
``BEGIN IMMEDIATE`` and a generous busy timeout, so contention waits instead of failing.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args

from gastown.roles.errors import GastownError, NotFound, Refused
from gastown.roles.lifecycle import (
    ACTIVE_STATES,
    MergeStarted,
    PolecatState,
    Rejected,
    SetBead,
    Transition,
    transition,
)
from gastown.roles.lifecycle import Event as PolecatEvent
from gastown.roles.names import bead_id, next_polecat_name

BeadStatus = Literal["open", "hooked", "in_review", "closed", "blocked"]
BEAD_STATUSES: Final[tuple[str, ...]] = get_args(BeadStatus)

BUSY_TIMEOUT_MS: Final = 30_000

#: Schema migrations, applied in order; ``PRAGMA user_version`` is the number applied.
#: Append only: a released migration is never edited.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE rigs (
        name            TEXT PRIMARY KEY,
        prefix          TEXT NOT NULL UNIQUE,
        repo            TEXT NOT NULL,
        default_branch  TEXT NOT NULL,
        created_at      REAL NOT NULL
    );
    CREATE TABLE beads (
        id          TEXT PRIMARY KEY,
        rig         TEXT,
        title       TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        priority    INTEGER NOT NULL DEFAULT 2 CHECK (priority BETWEEN 0 AND 4),
        status      TEXT NOT NULL DEFAULT 'open'
                    CHECK (status IN ('open', 'hooked', 'in_review', 'closed', 'blocked')),
        reason      TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE INDEX beads_by_rig_status ON beads (rig, status);
    CREATE TABLE polecats (
        rig         TEXT NOT NULL,
        name        TEXT NOT NULL,
        bead        TEXT,
        branch      TEXT NOT NULL,
        worktree    TEXT NOT NULL,
        state       TEXT NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (rig, name)
    );
    CREATE TABLE events (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        ts      REAL NOT NULL,
        kind    TEXT NOT NULL,
        rig     TEXT,
        polecat TEXT,
        bead    TEXT,
        data    TEXT NOT NULL DEFAULT '{}'
    );
    """,
    """
    CREATE TABLE roles (
        name        TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        pid         INTEGER,
        started_at  REAL,
        restarts    INTEGER NOT NULL DEFAULT 0,
        last_exit   INTEGER,
        reason      TEXT,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE merge_requests (
        id          TEXT PRIMARY KEY,
        rig         TEXT NOT NULL,
        bead        TEXT NOT NULL,
        polecat     TEXT NOT NULL,
        branch      TEXT NOT NULL,
        state       TEXT NOT NULL,
        priority    INTEGER NOT NULL DEFAULT 2,
        reason      TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE INDEX merge_requests_by_rig_state ON merge_requests (rig, state);
    """,
    """
    ALTER TABLE polecats ADD COLUMN agent TEXT NOT NULL DEFAULT '';
    ALTER TABLE polecats ADD COLUMN session TEXT;
    ALTER TABLE polecats ADD COLUMN respawns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE polecats ADD COLUMN reason TEXT;
    ALTER TABLE polecats ADD COLUMN sling INTEGER;
    ALTER TABLE merge_requests ADD COLUMN head TEXT;
    ALTER TABLE merge_requests ADD COLUMN base TEXT;
    CREATE TABLE slings (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        bead        TEXT NOT NULL,
        rig         TEXT NOT NULL,
        agent       TEXT,
        force       INTEGER NOT NULL DEFAULT 0,
        state       TEXT NOT NULL DEFAULT 'queued',
        polecat     TEXT,
        error       TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE INDEX slings_by_state ON slings (state, id);
    """,
    """
    ALTER TABLE merge_requests ADD COLUMN step TEXT;
    ALTER TABLE merge_requests ADD COLUMN gate TEXT;
    ALTER TABLE merge_requests ADD COLUMN candidate TEXT;
    ALTER TABLE merge_requests ADD COLUMN merged_commit TEXT;
    ALTER TABLE merge_requests ADD COLUMN log_path TEXT;
    ALTER TABLE slings ADD COLUMN note TEXT;
    """,
)


@dataclass(frozen=True)
class Rig:
    name: str
    prefix: str
    repo: str
    default_branch: str
    created_at: float


@dataclass(frozen=True)
class Bead:
    id: str
    rig: str | None
    title: str
    description: str
    priority: int
    status: BeadStatus
    reason: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Polecat:
    rig: str
    name: str
    bead: str | None
    branch: str
    worktree: str
    state: PolecatState
    agent: str
    session: dict[str, Any] | None
    respawns: int
    reason: str | None
    sling: int | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Sling:
    id: int
    bead: str
    rig: str
    agent: str | None
    force: bool
    state: str  # queued, dispatched, failed
    polecat: str | None
    error: str | None
    created_at: float
    updated_at: float
    note: str | None = None


@dataclass(frozen=True)
class MergeRequest:
    id: str
    rig: str
    bead: str
    polecat: str
    branch: str
    state: str
    priority: int
    reason: str | None
    head: str | None
    base: str | None
    created_at: float
    updated_at: float
    step: str | None = None
    gate: str | None = None
    candidate: str | None = None
    merged_commit: str | None = None
    log_path: str | None = None


@dataclass(frozen=True)
class RoleRecord:
    """What the supervisor last recorded about one role process."""

    name: str
    state: str
    pid: int | None
    started_at: float | None
    restarts: int
    last_exit: int | None
    reason: str | None
    updated_at: float


@dataclass(frozen=True)
class Event:
    """A domain event: something in the town changed state (past tense ``kind``)."""

    seq: int
    ts: float
    kind: str
    rig: str | None = None
    polecat: str | None = None
    bead: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "ts": self.ts, "kind": self.kind}
        for key in ("rig", "polecat", "bead"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(self.data)
        return out


class SchemaTooNew(GastownError):
    """The database was written by a newer gastown; refuse rather than corrupt it."""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def open_store(path: Path) -> Store:
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
    return Store(conn, path)


def _bead(row: sqlite3.Row) -> Bead:
    return Bead(id=row["id"], rig=row["rig"], title=row["title"],
                description=row["description"], priority=row["priority"],
                status=cast(BeadStatus, row["status"]), reason=row["reason"],
                created_at=row["created_at"], updated_at=row["updated_at"])


def _rig(row: sqlite3.Row) -> Rig:
    return Rig(name=row["name"], prefix=row["prefix"], repo=row["repo"],
               default_branch=row["default_branch"], created_at=row["created_at"])


def _polecat(row: sqlite3.Row) -> Polecat:
    return Polecat(rig=row["rig"], name=row["name"], bead=row["bead"], branch=row["branch"],
                   worktree=row["worktree"], state=cast(PolecatState, row["state"]),
                   agent=row["agent"],
                   session=json.loads(row["session"]) if row["session"] else None,
                   respawns=row["respawns"], reason=row["reason"], sling=row["sling"],
                   created_at=row["created_at"], updated_at=row["updated_at"])


def _sling(row: sqlite3.Row) -> Sling:
    return Sling(id=row["id"], bead=row["bead"], rig=row["rig"], agent=row["agent"],
                 force=bool(row["force"]), state=row["state"], polecat=row["polecat"],
                 error=row["error"], created_at=row["created_at"],
                 updated_at=row["updated_at"], note=row["note"])


def _mr(row: sqlite3.Row) -> MergeRequest:
    return MergeRequest(id=row["id"], rig=row["rig"], bead=row["bead"], polecat=row["polecat"],
                        branch=row["branch"], state=row["state"], priority=row["priority"],
                        reason=row["reason"], head=row["head"], base=row["base"],
                        created_at=row["created_at"], updated_at=row["updated_at"],
                        step=row["step"], gate=row["gate"], candidate=row["candidate"],
                        merged_commit=row["merged_commit"], log_path=row["log_path"])


def _event(row: sqlite3.Row) -> Event:
    return Event(seq=row["seq"], ts=row["ts"], kind=row["kind"], rig=row["rig"],
                 polecat=row["polecat"], bead=row["bead"], data=json.loads(row["data"]))


class Store:
    """One connection to the town's database. Not shared between threads at once."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    # -- rigs -------------------------------------------------------------------------

    def rigs(self) -> list[Rig]:
        rows = self._conn.execute("SELECT * FROM rigs ORDER BY name").fetchall()
        return [_rig(r) for r in rows]

    def rig(self, name: str) -> Rig:
        row = self._conn.execute("SELECT * FROM rigs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no rig named {name!r} in this town")
        return _rig(row)

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

    # -- beads ------------------------------------------------------------------------

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
        return _bead(row)

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
        return [_bead(r) for r in self._conn.execute(sql, params).fetchall()]

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

    # -- slings and polecats ------------------------------------------------------------

    def queue_sling(self, bead_id: str, rig: str, *, agent: str | None, force: bool,
                    note: str | None = None) -> Sling:
        """Record a request to sling ``bead_id`` to ``rig``; the mayor dispatches it.

        Refuses a closed bead, a bead already hooked or in review (unless ``force``), and
        a bead that already has a queued sling (unless ``force``).
        """
        with self.transaction() as conn:
            bead = conn.execute("SELECT * FROM beads WHERE id = ?", (bead_id,)).fetchone()
            if bead is None:
                raise NotFound(f"no bead {bead_id!r}")
            if not conn.execute("SELECT 1 FROM rigs WHERE name = ?", (rig,)).fetchone():
                raise NotFound(f"no rig named {rig!r} in this town")
            if bead["status"] == "closed":
                raise Refused(f"bead {bead_id} is closed")
            if bead["status"] in ("hooked", "in_review") and not force:
                holder = conn.execute("SELECT rig, name FROM polecats WHERE bead = ?",
                                      (bead_id,)).fetchone()
                who = f" by polecat {holder['rig']}/{holder['name']}" if holder else ""
                raise Refused(f"bead {bead_id} is already {bead['status']}{who}; "
                              "use --force to sling it again")
            queued = conn.execute("SELECT id FROM slings WHERE bead = ? AND state = 'queued'",
                                  (bead_id,)).fetchone()
            if queued and not force:
                raise Refused(f"bead {bead_id} already has a queued sling (#{queued['id']})")
            now = time.time()
            cur = conn.execute(
                "INSERT INTO slings (bead, rig, agent, force, state, note, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                (bead_id, rig, agent, int(force), note, now, now))
            sling_id = cur.lastrowid
            self._emit(conn, "sling_queued", rig=rig, bead=bead_id, sling=sling_id,
                       agent=agent, force=force)
        return self.sling(int(sling_id or 0))

    def sling(self, sling_id: int) -> Sling:
        row = self._conn.execute("SELECT * FROM slings WHERE id = ?", (sling_id,)).fetchone()
        if row is None:
            raise NotFound(f"no sling #{sling_id}")
        return _sling(row)

    def queued_slings(self) -> list[Sling]:
        rows = self._conn.execute("SELECT * FROM slings WHERE state = 'queued' ORDER BY id")
        return [_sling(r) for r in rows.fetchall()]

    def requeue_sling(self, sling_id: int) -> None:
        """Put a dispatched sling back in the queue (its polecat was rolled back)."""
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM slings WHERE id = ?", (sling_id,)).fetchone()
            if row is None:
                return
            conn.execute("UPDATE slings SET state = 'queued', polecat = NULL, updated_at = ? "
                         "WHERE id = ?", (time.time(), sling_id))
            self._emit(conn, "sling_queued", rig=row["rig"], bead=row["bead"], sling=sling_id,
                       requeued=True)

    def cancel_merge_requests(self, rig: str, polecat: str, *, reason: str) -> None:
        """Mark the polecat's unfinished merge requests cancelled (its branch is going away)."""
        with self.transaction() as conn:
            rows = conn.execute("SELECT id FROM merge_requests WHERE rig = ? AND polecat = ? "
                                "AND state IN ('queued', 'running')", (rig, polecat)).fetchall()
            for row in rows:
                conn.execute("UPDATE merge_requests SET state = 'cancelled', reason = ?, "
                             "updated_at = ? WHERE id = ?", (reason, time.time(), row["id"]))
                self._emit(conn, "mr_cancelled", rig=rig, polecat=polecat, mr=row["id"],
                           reason=reason)

    def fail_sling(self, sling_id: int, error: str) -> None:
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM slings WHERE id = ?", (sling_id,)).fetchone()
            conn.execute("UPDATE slings SET state = 'failed', error = ?, updated_at = ? "
                         "WHERE id = ?", (error, time.time(), sling_id))
            if row is not None:
                self._emit(conn, "sling_failed", rig=row["rig"], bead=row["bead"],
                           sling=sling_id, error=error)

    def reserve_polecat(self, sling_id: int, *, pool: Sequence[str], branch_template: str,
                        polecats_dir: str, agent: str, rig_cap: int, town_cap: int,
                        also_held: Set[str] = frozenset()) -> Polecat | None:
        """Turn a queued sling into a ``spawning`` polecat, or None when no slot is free.

        One transaction allocates the name (first free in ``pool``), records the polecat,
        hooks the bead and marks the sling dispatched: two slings can never get the
        same name, and a crash leaves either all of it or none. Raises :class:`Refused`
        when the bead can no longer be slung (closed, or hooked meanwhile without force).
        """
        with self.transaction() as conn:
            sling = conn.execute("SELECT * FROM slings WHERE id = ?", (sling_id,)).fetchone()
            if sling is None or sling["state"] != "queued":
                raise Refused(f"sling #{sling_id} is not queued")
            active = ", ".join(f"'{s}'" for s in ACTIVE_STATES)
            in_rig = conn.execute(f"SELECT COUNT(*) FROM polecats WHERE rig = ? AND state IN "
                                  f"({active})", (sling["rig"],)).fetchone()[0]
            in_town = conn.execute(f"SELECT COUNT(*) FROM polecats WHERE state IN ({active})"
                                   ).fetchone()[0]
            if in_rig >= rig_cap or in_town >= town_cap:
                return None
            bead = conn.execute("SELECT * FROM beads WHERE id = ?", (sling["bead"],)).fetchone()
            if bead is None or bead["status"] == "closed" or (
                    bead["status"] in ("hooked", "in_review") and not sling["force"]):
                status = bead["status"] if bead else "gone"
                raise Refused(f"bead {sling['bead']} is {status}; not slinging it")
            held = {r["name"] for r in conn.execute("SELECT name FROM polecats WHERE rig = ?",
                                                    (sling["rig"],))} | set(also_held)
            name = next_polecat_name(pool, held)
            branch = branch_template.replace("{name}", name)
            worktree = f"{polecats_dir}/{name}"
            now = time.time()
            conn.execute(
                "INSERT INTO polecats (rig, name, bead, branch, worktree, state, agent, sling, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'spawning', ?, ?, ?, ?)",
                (sling["rig"], name, sling["bead"], branch, worktree, agent, sling_id, now,
                 now))
            conn.execute("UPDATE slings SET state = 'dispatched', polecat = ?, updated_at = ? "
                         "WHERE id = ?", (name, now, sling_id))
            conn.execute("UPDATE beads SET status = 'hooked', reason = NULL, updated_at = ? "
                         "WHERE id = ?", (now, sling["bead"]))
            self._emit(conn, "bead_status_changed", rig=sling["rig"], bead=sling["bead"],
                       polecat=name, old=bead["status"], new="hooked", reason=None)
            self._emit(conn, "polecat_spawning", rig=sling["rig"], polecat=name,
                       bead=sling["bead"], branch=branch, agent=agent, sling=sling_id)
        return self.polecat(sling["rig"], name)

    def polecat(self, rig: str, name: str) -> Polecat:
        row = self._conn.execute("SELECT * FROM polecats WHERE rig = ? AND name = ?",
                                 (rig, name)).fetchone()
        if row is None:
            raise NotFound(f"no polecat {rig}/{name}")
        return _polecat(row)

    def polecats(self, rig: str | None = None,
                 states: Set[str] | None = None) -> list[Polecat]:
        sql, params = "SELECT * FROM polecats", []
        if rig is not None:
            sql, params = sql + " WHERE rig = ?", [rig]
        rows = self._conn.execute(sql + " ORDER BY rig, created_at", params).fetchall()
        found = [_polecat(r) for r in rows]
        return [p for p in found if states is None or p.state in states]

    def note_polecat(self, rig: str, name: str, reason: str | None) -> None:
        """Attach a human-readable note to the polecat (shown in ``polecat list``)."""
        with self.transaction() as conn:
            row = conn.execute("SELECT bead, reason FROM polecats WHERE rig = ? AND name = ?",
                               (rig, name)).fetchone()
            if row is None or row["reason"] == reason:
                return
            conn.execute("UPDATE polecats SET reason = ?, updated_at = ? WHERE rig = ? AND "
                         "name = ?", (reason, time.time(), rig, name))
            self._emit(conn, "polecat_noted", rig=rig, polecat=name, bead=row["bead"],
                       reason=reason)

    def set_polecat_session(self, rig: str, name: str, session: Mapping[str, Any] | None,
                            *, respawned: bool = False) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE polecats SET session = ?, respawns = respawns + ?, "
                         "updated_at = ? WHERE rig = ? AND name = ?",
                         (json.dumps(session) if session else None, int(respawned),
                          time.time(), rig, name))

    def apply_polecat_event(self, rig: str, name: str, event: PolecatEvent,
                            **data: Any) -> Transition:
        """Apply a lifecycle event to the polecat's row, its bead, and the feed, atomically.

        The decision is :func:`gastown.roles.lifecycle.transition`'s; a refusal raises
        :class:`Refused` with its reason and changes nothing. Reaching ``nuked`` deletes
        the row, which releases the name. Git and session effects are the caller's, and
        happen before (nuke) or after (spawn) as the lifecycle requires.
        """
        with self.transaction() as conn:
            return self._apply_polecat_event(conn, rig, name, event, **data)

    def _apply_polecat_event(self, conn: sqlite3.Connection, rig: str, name: str,
                             event: PolecatEvent, **data: Any) -> Transition:
        from gastown.roles.lifecycle import Refusal

        row = conn.execute("SELECT * FROM polecats WHERE rig = ? AND name = ?",
                           (rig, name)).fetchone()
        if row is None:
            raise NotFound(f"no polecat {rig}/{name}")
        result = transition(row["state"], event)
        if isinstance(result, Refusal):
            raise Refused(f"polecat {rig}/{name} ({row['state']}): {result.reason}")
        now = time.time()
        reason = next((e.reason for e in result.effects if isinstance(e, SetBead)), None)
        if result.state == "nuked":
            conn.execute("DELETE FROM polecats WHERE rig = ? AND name = ?", (rig, name))
        else:
            conn.execute("UPDATE polecats SET state = ?, reason = ?, updated_at = ? "
                         "WHERE rig = ? AND name = ?", (result.state, reason, now, rig, name))
        for effect in result.effects:
            if isinstance(effect, SetBead) and row["bead"]:
                self._set_bead(conn, row["bead"], effect.status, effect.reason, polecat=name)
        self._emit(conn, f"polecat_{result.state}", rig=rig, polecat=name, bead=row["bead"],
                   old=row["state"], reason=reason, **data)
        return result

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

    def record_done(self, rig: str, name: str, event: PolecatEvent, *, head: str, base: str,
                    with_mr: bool) -> MergeRequest | None:
        """``gastown done``, atomically: the polecat's transition and, for completed work,
        its merge request (``queued``), so the refinery never sees one without the other."""
        mr_id = f"mr-{secrets.token_hex(3)}" if with_mr else None
        with self.transaction() as conn:
            self._apply_polecat_event(conn, rig, name, event, head=head, mr=mr_id)
            if mr_id is not None:
                row = conn.execute(
                    "SELECT p.bead, p.branch, b.priority FROM polecats p LEFT JOIN beads b "
                    "ON b.id = p.bead WHERE p.rig = ? AND p.name = ?", (rig, name)).fetchone()
                now = time.time()
                conn.execute(
                    "INSERT INTO merge_requests (id, rig, bead, polecat, branch, state, "
                    "priority, head, base, created_at, updated_at) VALUES "
                    "(?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                    (mr_id, rig, row["bead"], name, row["branch"], row["priority"] or 2,
                     head, base, now, now))
                self._emit(conn, "mr_created", rig=rig, polecat=name, bead=row["bead"],
                           mr=mr_id, branch=row["branch"], head=head)
        return self.merge_request(mr_id) if mr_id else None

    def merge_request(self, mr_id: str) -> MergeRequest:
        row = self._conn.execute("SELECT * FROM merge_requests WHERE id = ?",
                                 (mr_id,)).fetchone()
        if row is None:
            raise NotFound(f"no merge request {mr_id!r}")
        return _mr(row)

    def merge_requests_in(self, rig: str, states: Sequence[str]) -> list[MergeRequest]:
        """The rig's merge requests in ``states``, in queue order (priority, then age)."""
        marks = ", ".join("?" * len(states))
        rows = self._conn.execute(
            f"SELECT * FROM merge_requests WHERE rig = ? AND state IN ({marks}) "
            "ORDER BY priority, created_at, id", (rig, *states)).fetchall()
        return [_mr(r) for r in rows]

    def start_merge_requests(self, mr_ids: Sequence[str]) -> None:
        """Mark MRs ``running`` (their polecats ``merging``) before the refinery touches git."""
        with self.transaction() as conn:
            for mr_id in mr_ids:
                row = conn.execute("SELECT * FROM merge_requests WHERE id = ?",
                                   (mr_id,)).fetchone()
                if row is None or row["state"] != "queued":
                    continue
                conn.execute("UPDATE merge_requests SET state = 'running', step = 'queued', "
                             "updated_at = ? WHERE id = ?", (time.time(), mr_id))
                self._emit(conn, "mr_started", rig=row["rig"], polecat=row["polecat"],
                           bead=row["bead"], mr=mr_id)
                self._polecat_event_if_present(conn, row["rig"], row["polecat"],
                                               MergeStarted())

    def _polecat_event_if_present(self, conn: sqlite3.Connection, rig: str, name: str,
                                  event: PolecatEvent, **data: Any) -> None:
        """Apply a lifecycle event to a polecat that may be gone or elsewhere in its life."""
        row = conn.execute("SELECT state FROM polecats WHERE rig = ? AND name = ?",
                           (rig, name)).fetchone()
        if row is not None and isinstance(transition(row["state"], event), Transition):
            self._apply_polecat_event(conn, rig, name, event, **data)

    def set_merge_step(self, mr_ids: Sequence[str], step: str, *, gate: str | None = None,
                       candidate: str | None = None, log_path: str | None = None) -> None:
        """Record what the refinery is about to do (crash recovery reads it back)."""
        with self.transaction() as conn:
            for mr_id in mr_ids:
                conn.execute("UPDATE merge_requests SET step = ?, gate = ?, "
                             "candidate = COALESCE(?, candidate), "
                             "log_path = COALESCE(?, log_path), updated_at = ? WHERE id = ?",
                             (step, gate, candidate, log_path, time.time(), mr_id))

    def merge_landed(self, mr_id: str, commit: str) -> None:
        """The MR's change is on the default branch (and the remote): merged, bead closed."""
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM merge_requests WHERE id = ?", (mr_id,)).fetchone()
            if row is None or row["state"] == "merged":
                return
            conn.execute("UPDATE merge_requests SET state = 'merged', step = NULL, gate = NULL, "
                         "merged_commit = ?, reason = NULL, updated_at = ? WHERE id = ?",
                         (commit, time.time(), mr_id))
            self._set_bead(conn, row["bead"], "closed", f"merged in {mr_id}",
                           polecat=row["polecat"])
            self._emit(conn, "mr_merged", rig=row["rig"], polecat=row["polecat"],
                       bead=row["bead"], mr=mr_id, commit=commit, branch=row["branch"])

    def merge_rejected(self, mr_id: str, reason: str, *, tail: str = "") -> None:
        """The MR will not land: rejected with ``reason``; its polecat and bead are told."""
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM merge_requests WHERE id = ?", (mr_id,)).fetchone()
            if row is None or row["state"] in ("merged", "rejected"):
                return
            conn.execute("UPDATE merge_requests SET state = 'rejected', step = NULL, "
                         "gate = NULL, reason = ?, updated_at = ? WHERE id = ?",
                         (reason, time.time(), mr_id))
            self._emit(conn, "mr_rejected", rig=row["rig"], polecat=row["polecat"],
                       bead=row["bead"], mr=mr_id, reason=reason, tail=tail[-2000:])
            self._polecat_event_if_present(conn, row["rig"], row["polecat"], Rejected(reason))
            polecat = conn.execute("SELECT 1 FROM polecats WHERE rig = ? AND name = ?",
                                   (row["rig"], row["polecat"])).fetchone()
            if polecat is None:
                self._set_bead(conn, row["bead"], "open", reason, polecat=row["polecat"])

    def requeue_merge_request(self, mr_id: str, reason: str) -> None:
        """Put a running MR back in the queue (the refinery restarted or the remote moved)."""
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM merge_requests WHERE id = ?", (mr_id,)).fetchone()
            if row is None or row["state"] != "running":
                return
            conn.execute("UPDATE merge_requests SET state = 'queued', step = NULL, gate = NULL,"
                         " candidate = NULL, updated_at = ? WHERE id = ?", (time.time(), mr_id))
            self._emit(conn, "mr_requeued", rig=row["rig"], polecat=row["polecat"],
                       bead=row["bead"], mr=mr_id, reason=reason)

    def merge_requests(self, rig: str | None = None) -> list[MergeRequest]:
        sql, params = "SELECT * FROM merge_requests", []
        if rig is not None:
            sql, params = sql + " WHERE rig = ?", [rig]
        rows = self._conn.execute(sql + " ORDER BY priority, created_at", params).fetchall()
        return [_mr(r) for r in rows]

    # -- roles ------------------------------------------------------------------------

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
        return [_event(r) for r in rows]

    def last_event_seq(self) -> int:
        row = self._conn.execute("SELECT MAX(seq) AS seq FROM events").fetchone()
        return int(row["seq"] or 0)

    # -- events -----------------------------------------------------------------------

    def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        """Domain events with a sequence number above ``seq``, oldest first."""
        rows = self._conn.execute("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                  (seq, limit)).fetchall()
        return [_event(r) for r in rows]
