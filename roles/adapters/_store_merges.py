"""The store's ledger of merge requests: ``done`` records one, the refinery moves it on.

Layer: adapters (SQLite). ``record_done`` writes the polecat's transition and its merge
request in one transaction, so the refinery never sees one without the other.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from ..core.errors import NotFound, Refused
from ..core.events import BeadCreated, MrCreated, MrMerged, MrRejected, MrRequeued, MrStarted
from ..core.lifecycle import Event as PolecatEvent
from ..core.lifecycle import (
    MergeStarted,
    Rejected,
    Transition,
    transition,
)
from ._store_polecats import PolecatLedger
from ._store_records import (
    MergeRequest,
    mr_of,
)


class MergeLedger(PolecatLedger):
    """Merge requests, polecat and crew: queued, running, merged, rejected, cancelled."""

    def record_done(self, rig: str, name: str, event: PolecatEvent, *, head: str, base: str,
                    with_mr: bool, output_tail: str | None = None, done_by: str = "agent",
                    **data: Any) -> MergeRequest | None:
        """``gastown done``, atomically: the polecat's transition and, for completed work,
        its merge request (``queued``), so the refinery never sees one without the other."""
        mr_id = f"mr-{secrets.token_hex(3)}" if with_mr else None
        with self.transaction() as conn:
            self._apply_polecat_event(conn, rig, name, event, output_tail=output_tail,
                                      head=head, mr=mr_id, **data)
            if mr_id is not None:
                row = conn.execute(
                    "SELECT p.bead, p.branch, p.incarnation, b.priority FROM polecats p "
                    "LEFT JOIN beads b ON b.id = p.bead WHERE p.rig = ? AND p.name = ?",
                    (rig, name)).fetchone()
                now = time.time()
                conn.execute(
                    "INSERT INTO merge_requests (id, rig, bead, polecat, branch, state, "
                    "priority, head, base, created_at, updated_at, done_by, incarnation) "
                    "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                    (mr_id, rig, row["bead"], name, row["branch"], row["priority"] or 2,
                     head, base, now, now, done_by, row["incarnation"]))
                self._emit(conn, MrCreated(rig=rig, polecat=name, bead=row["bead"], mr=mr_id,
                                           branch=row["branch"], head=head, done_by=done_by))
        return self.merge_request(mr_id) if mr_id else None

    def cancel_merge_requests(self, rig: str, polecat: str, *, reason: str) -> None:
        """Mark the polecat's unfinished merge requests cancelled (its branch is going away)."""
        with self.transaction() as conn:
            self._cancel_merge_requests(conn, rig, polecat, reason)

    def merge_request(self, mr_id: str) -> MergeRequest:
        row = self._conn.execute("SELECT * FROM merge_requests WHERE id = ?",
                                 (mr_id,)).fetchone()
        if row is None:
            raise NotFound(f"no merge request {mr_id!r}")
        return mr_of(row)

    def merge_requests_in(self, rig: str, states: Sequence[str],
                          limit: int | None = None) -> list[MergeRequest]:
        """The rig's merge requests in ``states``, in queue order (priority, then age, then
        id: :func:`~gastown.roles.core.merge_queue.order_key`'s); the first ``limit``
        only, when given (the refinery's batch needs the head of a long queue, and read
        all of it before every batch)."""
        marks = ", ".join("?" * len(states))
        rows = self._conn.execute(
            f"SELECT * FROM merge_requests WHERE rig = ? AND state IN ({marks}) "
            "ORDER BY priority, created_at, id LIMIT ?",
            (rig, *states, -1 if limit is None else limit)).fetchall()
        return [mr_of(r) for r in rows]

    def merge_requests_of(self, rig: str, polecat: str | Sequence[str],
                          states: Sequence[str], *,
                          incarnations: Sequence[str | None] = ()) -> list[MergeRequest]:
        """The merge requests in ``states`` submitted under the name ``polecat`` (or any
        of several names), oldest first: of any of their incarnations, or only of
        ``incarnations`` (and rows that record none, older or crew ones:
        :meth:`MergeRequest.submitted_by` tells those apart). The witness asks this at
        every nuke and every settle pass: a rig's MRs, and a reused name's, grow with its
        history, and only the rows asked for are read into objects (the rig's merged MRs,
        all of them, cost ~26 % of the witness's CPU at 100 polecats when each pass read
        them; a name's, ~15 % at 200)."""
        names = [polecat] if isinstance(polecat, str) else list(polecat)
        if not names:
            return []
        marks, name_marks = ", ".join("?" * len(states)), ", ".join("?" * len(names))
        # A polecat without an incarnation matches by age: all of its name's rows.
        known = [i for i in incarnations if i is not None]
        if not incarnations or len(known) < len(incarnations):
            known = []
        which = (f" AND (incarnation IS NULL OR incarnation IN ({', '.join('?' * len(known))}))"
                 if known else "")
        rows = self._conn.execute(
            f"SELECT * FROM merge_requests WHERE rig = ? AND polecat IN ({name_marks}) AND "
            f"state IN ({marks}){which} ORDER BY created_at, id",
            (rig, *names, *states, *known)).fetchall()
        return [mr_of(r) for r in rows]

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
                self._emit(conn, MrStarted(rig=row["rig"], polecat=row["polecat"],
                                           bead=row["bead"], mr=mr_id))
                if row["kind"] == "polecat":  # a crew MR names a workspace, not a polecat
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
        """Record what the refinery is about to do (crash recovery reads it back), and
        append it with its start time to the MR's ``steps`` (``mq show`` prints timings)."""
        now = time.time()
        with self.transaction() as conn:
            for mr_id in mr_ids:
                row = conn.execute("SELECT steps FROM merge_requests WHERE id = ?",
                                   (mr_id,)).fetchone()
                steps = json.loads(row["steps"] or "[]") if row is not None else []
                if not steps or (steps[-1].get("step"), steps[-1].get("gate")) != (step, gate):
                    steps.append({"step": step, "gate": gate, "at": now})
                conn.execute("UPDATE merge_requests SET step = ?, gate = ?, "
                             "candidate = COALESCE(?, candidate), "
                             "log_path = COALESCE(?, log_path), steps = ?, updated_at = ? "
                             "WHERE id = ?",
                             (step, gate, candidate, log_path, json.dumps(steps), now, mr_id))

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
            self._emit(conn, MrMerged(rig=row["rig"], polecat=row["polecat"],
                                      bead=row["bead"], mr=mr_id, commit=commit,
                                      branch=row["branch"], mr_kind=row["kind"]))

    def merge_rejected(self, mr_id: str, reason: str, *, tail: str = "") -> None:
        """The MR will not land: rejected with ``reason``; its polecat and bead are told."""
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM merge_requests WHERE id = ?", (mr_id,)).fetchone()
            if row is None or row["state"] in ("merged", "rejected"):
                return
            conn.execute("UPDATE merge_requests SET state = 'rejected', step = NULL, "
                         "gate = NULL, reason = ?, tail = ?, updated_at = ? WHERE id = ?",
                         (reason, tail[-4000:] or None, time.time(), mr_id))
            self._emit(conn, MrRejected(rig=row["rig"], polecat=row["polecat"],
                                        bead=row["bead"], mr=mr_id, reason=reason,
                                        tail=tail[-2000:]))
            polecat = None
            if row["kind"] == "polecat":  # a crew MR names a workspace, not a polecat
                self._polecat_event_if_present(conn, row["rig"], row["polecat"],
                                               Rejected(reason))
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
            self._emit(conn, MrRequeued(rig=row["rig"], polecat=row["polecat"],
                                        bead=row["bead"], mr=mr_id, reason=reason))

    def merge_requests(self, rig: str | None = None) -> list[MergeRequest]:
        sql, params = "SELECT * FROM merge_requests", []
        if rig is not None:
            sql, params = sql + " WHERE rig = ?", [rig]
        rows = self._conn.execute(sql + " ORDER BY priority, created_at", params).fetchall()
        return [mr_of(r) for r in rows]

    def record_crew_merge_request(self, rig: str, crew: str, *, branch: str, head: str,
                                  base: str, bead: str | None, title: str,
                                  prefix: str) -> MergeRequest:
        """A crew workspace's branch submitted to the merge queue, atomically: an MR of
        kind ``crew`` (its ``polecat`` field names the workspace) and its bead
        ``in_review`` (a new bead titled ``title`` unless ``bead`` names one).

        Refuses while the branch already has a queued or running MR, and a bead that is
        closed or whose work is with someone else (hooked, in review).
        """
        from ..core.names import bead_id

        mr_id = f"mr-{secrets.token_hex(3)}"
        with self.transaction() as conn:
            pending = conn.execute(
                "SELECT id FROM merge_requests WHERE rig = ? AND branch = ? AND kind = 'crew' "
                "AND state IN ('queued', 'running')", (rig, branch)).fetchone()
            if pending is not None:
                raise Refused(f"{branch} is already in the merge queue as {pending['id']}")
            now = time.time()
            if bead is None:
                bead = bead_id(prefix, secrets.randbelow(36**5))
                while conn.execute("SELECT 1 FROM beads WHERE id = ?", (bead,)).fetchone():
                    bead = bead_id(prefix, secrets.randbelow(36**5))
                conn.execute("INSERT INTO beads (id, rig, title, description, priority, status, "
                             "created_at, updated_at) VALUES (?, ?, ?, '', 2, 'open', ?, ?)",
                             (bead, rig, title, now, now))
                self._emit(conn, BeadCreated(rig=rig, bead=bead, title=title, priority=2))
            row = conn.execute("SELECT * FROM beads WHERE id = ?", (bead,)).fetchone()
            if row is None:
                raise NotFound(f"no bead {bead!r}")
            if row["status"] in ("closed", "hooked", "in_review"):
                raise Refused(f"bead {bead} is {row['status']}; submit without --bead, or "
                              "with another bead")
            conn.execute(
                "INSERT INTO merge_requests (id, rig, bead, polecat, branch, state, priority, "
                "head, base, kind, created_at, updated_at) VALUES "
                "(?, ?, ?, ?, ?, 'queued', ?, ?, ?, 'crew', ?, ?)",
                (mr_id, rig, bead, crew, branch, row["priority"], head, base, now, now))
            self._set_bead(conn, bead, "in_review", None, crew=crew)
            self._emit(conn, MrCreated(rig=rig, polecat=crew, bead=bead, mr=mr_id,
                                       branch=branch, head=head, mr_kind="crew"))
        return self.merge_request(mr_id)
