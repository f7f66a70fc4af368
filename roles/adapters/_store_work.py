"""The store's ledger of slings, polecats and merge requests."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Mapping, Sequence, Set
from typing import Any

from ..core.errors import NotFound, Refused
from ..core.lifecycle import (
    ACTIVE_STATES,
    MergeStarted,
    Rejected,
    SetBead,
    Transition,
    transition,
)
from ..core.lifecycle import Event as PolecatEvent
from ..core.names import next_polecat_name
from ._store_base import StoreBase
from ._store_records import (
    MergeRequest,
    Polecat,
    Sling,
    mr_of,
    polecat_of,
    sling_of,
)

#: How a polecat's life ended, by the event that nuked it (``polecat_history.ended``).
_ENDINGS: dict[str, str] = {"Merged": "merged", "Nuke": "nuked", "SpawnFailed": "rolled back"}


class WorkLedger(StoreBase):
    """Slings, polecats and merge requests: the work in flight and its lifecycle."""

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
        return sling_of(row)

    def queued_slings(self) -> list[Sling]:
        rows = self._conn.execute("SELECT * FROM slings WHERE state = 'queued' ORDER BY id")
        return [sling_of(r) for r in rows.fetchall()]

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

    def fail_sling(self, sling_id: int, error: str) -> None:
        """Mark the sling ``failed`` (gone from the queue); idempotent: one event."""
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM slings WHERE id = ?", (sling_id,)).fetchone()
            if row is not None and row["state"] == "failed":
                return
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
            incarnation = secrets.token_hex(4)  # names are reused; this life is not
            conn.execute(
                "INSERT INTO polecats (rig, name, bead, branch, worktree, state, agent, sling, "
                "incarnation, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, 'spawning', ?, ?, ?, ?, ?)",
                (sling["rig"], name, sling["bead"], branch, worktree, agent, sling_id,
                 incarnation, now, now))
            conn.execute("UPDATE slings SET state = 'dispatched', polecat = ?, updated_at = ? "
                         "WHERE id = ?", (name, now, sling_id))
            conn.execute("UPDATE beads SET status = 'hooked', reason = NULL, updated_at = ? "
                         "WHERE id = ?", (now, sling["bead"]))
            self._emit(conn, "bead_status_changed", rig=sling["rig"], bead=sling["bead"],
                       polecat=name, old=bead["status"], new="hooked", reason=None)
            self._emit(conn, "polecat_spawning", rig=sling["rig"], polecat=name,
                       bead=sling["bead"], branch=branch, agent=agent, sling=sling_id,
                       incarnation=incarnation)
        return self.polecat(sling["rig"], name)

    def polecat(self, rig: str, name: str) -> Polecat:
        row = self._conn.execute("SELECT * FROM polecats WHERE rig = ? AND name = ?",
                                 (rig, name)).fetchone()
        if row is None:
            raise NotFound(f"no polecat {rig}/{name}")
        return polecat_of(row)

    def polecats(self, rig: str | None = None,
                 states: Set[str] | None = None) -> list[Polecat]:
        sql, params = "SELECT * FROM polecats", []
        if rig is not None:
            sql, params = sql + " WHERE rig = ?", [rig]
        rows = self._conn.execute(sql + " ORDER BY rig, created_at", params).fetchall()
        found = [polecat_of(r) for r in rows]
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

    def record_turn(self, rig: str, name: str, *, tokens_in: int = 0, tokens_out: int = 0,
                    cost_usd: float = 0.0, agent_session: str | None = None,
                    ended_turn: bool = True) -> Polecat:
        """One turn of the polecat's agent ended, having spent these deltas: in one
        transaction they are added to the polecat's and its bead's totals, the turn is
        counted, ``agent_session`` (the CLI's conversation id) kept when given, and an
        ``agent_turn_ended`` event carries the deltas, the turn number and the totals.
        Negative deltas count as 0. Without ``ended_turn`` (the last accounting before a
        nuke, of a turn cut short) no turn is counted and the event is
        ``agent_usage_settled``."""
        tokens_in, tokens_out = max(0, int(tokens_in)), max(0, int(tokens_out))
        cost_usd = max(0.0, float(cost_usd))
        with self.transaction() as conn:
            row = conn.execute("SELECT bead FROM polecats WHERE rig = ? AND name = ?",
                               (rig, name)).fetchone()
            if row is None:
                raise NotFound(f"no polecat {rig}/{name}")
            conn.execute(
                "UPDATE polecats SET turns = turns + ?, tokens_in = tokens_in + ?, "
                "tokens_out = tokens_out + ?, cost_usd = cost_usd + ?, "
                "agent_session = COALESCE(?, agent_session), updated_at = ? "
                "WHERE rig = ? AND name = ?",
                (int(ended_turn), tokens_in, tokens_out, cost_usd, agent_session,
                 time.time(), rig, name))
            if row["bead"]:
                conn.execute("UPDATE beads SET tokens_in = tokens_in + ?, "
                             "tokens_out = tokens_out + ?, cost_usd = cost_usd + ? "
                             "WHERE id = ?", (tokens_in, tokens_out, cost_usd, row["bead"]))
            after = polecat_of(conn.execute("SELECT * FROM polecats WHERE rig = ? AND name = ?",
                                            (rig, name)).fetchone())
            kind = "agent_turn_ended" if ended_turn else "agent_usage_settled"
            self._emit(conn, kind, rig=rig, polecat=name, bead=row["bead"],
                       turn=after.turns, tokens_in=tokens_in, tokens_out=tokens_out,
                       cost_usd=cost_usd, agent_session=after.agent_session,
                       total_tokens_in=after.tokens_in, total_tokens_out=after.tokens_out,
                       total_cost_usd=after.cost_usd)
        return after

    def usage_totals(self) -> dict[str, float]:
        """The town's agent usage: turns (every ``agent_turn_ended``) and tokens and cost
        (summed over beads, which keep every turn's deltas after their polecats are gone)."""
        turns = self._conn.execute("SELECT COUNT(*) FROM events WHERE kind = "
                                   "'agent_turn_ended'").fetchone()[0]
        row = self._conn.execute("SELECT COALESCE(SUM(tokens_in), 0), "
                                 "COALESCE(SUM(tokens_out), 0), COALESCE(SUM(cost_usd), 0) "
                                 "FROM beads").fetchone()
        return {"turns": int(turns), "tokens_in": int(row[0]), "tokens_out": int(row[1]),
                "cost_usd": float(row[2])}

    def apply_polecat_event(self, rig: str, name: str, event: PolecatEvent, *,
                            output_tail: str | None = None, incarnation: str | None = None,
                            **data: Any) -> Transition:
        """Apply a lifecycle event to the polecat's row, its bead, and the feed, atomically.

        The decision is :func:`gastown.roles.core.lifecycle.transition`'s; this applies its
        row effects and nothing else: the new state, the bead's status
        (:class:`SetBead`), the polecat's open merge requests cancelled
        (:class:`CancelMergeRequests`), the row moved to ``polecat_history`` when the name
        is released (``nuked``), and the domain event. A refusal raises :class:`Refused`
        with its reason and changes nothing, and so does a transition that changes nothing
        (no event either). With ``incarnation`` it is a compare-and-set: a row of another
        life of that name (the name was released and reused meanwhile) is :class:`NotFound`.
        The world effects (session, worktree, branch) are the effect runner's, before.
        ``output_tail`` (the session's last lines, kept on escalation) is stored on the row
        and carried by the event.
        """
        with self.transaction() as conn:
            return self._apply_polecat_event(conn, rig, name, event, output_tail=output_tail,
                                             incarnation=incarnation, **data)

    def _apply_polecat_event(self, conn: sqlite3.Connection, rig: str, name: str,
                             event: PolecatEvent, *, output_tail: str | None = None,
                             incarnation: str | None = None, **data: Any) -> Transition:
        from ..core.lifecycle import CancelMergeRequests, Refusal

        row = conn.execute("SELECT * FROM polecats WHERE rig = ? AND name = ?",
                           (rig, name)).fetchone()
        if row is None or (incarnation is not None and row["incarnation"]
                           and row["incarnation"] != incarnation):
            raise NotFound(f"no polecat {rig}/{name}"
                           + (" (its name was reused)" if row is not None else ""))
        result = transition(row["state"], event)
        if isinstance(result, Refusal):
            raise Refused(f"polecat {rig}/{name} ({row['state']}): {result.reason}")
        if result.state == row["state"] and not result.effects:
            return result  # e.g. SessionStarted after the agent already ran `done`
        now = time.time()
        reason = next((e.reason for e in result.effects if isinstance(e, SetBead)), None)
        for effect in result.effects:
            if isinstance(effect, CancelMergeRequests):
                self._cancel_merge_requests(conn, rig, name, effect.reason)
        if result.state == "nuked":
            self._keep_history(conn, row, ended=_ENDINGS.get(type(event).__name__, "nuked"),
                               reason=reason, now=now)
            conn.execute("DELETE FROM polecats WHERE rig = ? AND name = ?", (rig, name))
        else:
            conn.execute("UPDATE polecats SET state = ?, reason = ?, "
                         "output_tail = COALESCE(?, output_tail), updated_at = ? "
                         "WHERE rig = ? AND name = ?",
                         (result.state, reason, output_tail, now, rig, name))
        if output_tail is not None:
            data["tail"] = output_tail
        for effect in result.effects:
            if isinstance(effect, SetBead) and row["bead"]:
                self._set_bead(conn, row["bead"], effect.status, effect.reason, polecat=name)
        self._emit(conn, f"polecat_{result.state}", rig=rig, polecat=name, bead=row["bead"],
                   old=row["state"], reason=reason, **data)
        return result

    @staticmethod
    def _keep_history(conn: sqlite3.Connection, row: sqlite3.Row, *, ended: str,
                      reason: str | None, now: float) -> None:
        """The nuked polecat's last row, kept: who worked on a bead stays answerable."""
        conn.execute(
            "INSERT INTO polecat_history (rig, name, incarnation, bead, branch, agent, "
            "last_state, ended, reason, created_at, nuked_at, row) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row["rig"], row["name"], row["incarnation"], row["bead"], row["branch"],
             row["agent"], row["state"], ended, reason, row["created_at"], now,
             json.dumps(dict(row))))

    def polecat_history(self, *, rig: str | None = None,
                        bead: str | None = None) -> list[dict[str, Any]]:
        """Nuked polecats, oldest first: their last row and how they ended."""
        rows = self._conn.execute(
            "SELECT * FROM polecat_history WHERE (? IS NULL OR rig = ?) "
            "AND (? IS NULL OR bead = ?) ORDER BY id", (rig, rig, bead, bead)).fetchall()
        return [{key: value for key, value in dict(row).items() if key != "row"}
                for row in rows]

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
                self._emit(conn, "mr_created", rig=rig, polecat=name, bead=row["bead"],
                           mr=mr_id, branch=row["branch"], head=head, done_by=done_by)
        return self.merge_request(mr_id) if mr_id else None

    def note_nudge(self, rig: str, name: str, text: str, *, by: str) -> int:
        """Record a nudge sent to a polecat's agent (``polecat_nudged``); the witness's own
        (``by == "witness"``) count towards its limit. Returns that count."""
        with self.transaction() as conn:
            row = conn.execute("SELECT bead, nudges FROM polecats WHERE rig = ? AND name = ?",
                               (rig, name)).fetchone()
            if row is None:
                raise NotFound(f"no polecat {rig}/{name}")
            nudges = row["nudges"] + (1 if by == "witness" else 0)
            conn.execute("UPDATE polecats SET nudges = ?, updated_at = ? WHERE rig = ? "
                         "AND name = ?", (nudges, time.time(), rig, name))
            self._emit(conn, "polecat_nudged", rig=rig, polecat=name, bead=row["bead"],
                       text=text, by=by, nudges=nudges)
        return int(nudges)

    def cancel_merge_requests(self, rig: str, polecat: str, *, reason: str) -> None:
        """Mark the polecat's unfinished merge requests cancelled (its branch is going away)."""
        with self.transaction() as conn:
            self._cancel_merge_requests(conn, rig, polecat, reason)

    def _cancel_merge_requests(self, conn: sqlite3.Connection, rig: str, polecat: str,
                               reason: str) -> None:
        rows = conn.execute("SELECT id FROM merge_requests WHERE rig = ? AND polecat = ? "
                            "AND kind = 'polecat' AND state IN ('queued', 'running')",
                            (rig, polecat)).fetchall()
        for row in rows:
            conn.execute("UPDATE merge_requests SET state = 'cancelled', reason = ?, "
                         "updated_at = ? WHERE id = ?", (reason, time.time(), row["id"]))
            self._emit(conn, "mr_cancelled", rig=rig, polecat=polecat, mr=row["id"],
                       reason=reason)

    def merge_request(self, mr_id: str) -> MergeRequest:
        row = self._conn.execute("SELECT * FROM merge_requests WHERE id = ?",
                                 (mr_id,)).fetchone()
        if row is None:
            raise NotFound(f"no merge request {mr_id!r}")
        return mr_of(row)

    def merge_requests_in(self, rig: str, states: Sequence[str]) -> list[MergeRequest]:
        """The rig's merge requests in ``states``, in queue order (priority, then age)."""
        marks = ", ".join("?" * len(states))
        rows = self._conn.execute(
            f"SELECT * FROM merge_requests WHERE rig = ? AND state IN ({marks}) "
            "ORDER BY priority, created_at, id", (rig, *states)).fetchall()
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
                self._emit(conn, "mr_started", rig=row["rig"], polecat=row["polecat"],
                           bead=row["bead"], mr=mr_id)
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
            self._emit(conn, "mr_merged", rig=row["rig"], polecat=row["polecat"],
                       bead=row["bead"], mr=mr_id, commit=commit, branch=row["branch"],
                       mr_kind=row["kind"])

    def merge_rejected(self, mr_id: str, reason: str, *, tail: str = "") -> None:
        """The MR will not land: rejected with ``reason``; its polecat and bead are told."""
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM merge_requests WHERE id = ?", (mr_id,)).fetchone()
            if row is None or row["state"] in ("merged", "rejected"):
                return
            conn.execute("UPDATE merge_requests SET state = 'rejected', step = NULL, "
                         "gate = NULL, reason = ?, tail = ?, updated_at = ? WHERE id = ?",
                         (reason, tail[-4000:] or None, time.time(), mr_id))
            self._emit(conn, "mr_rejected", rig=row["rig"], polecat=row["polecat"],
                       bead=row["bead"], mr=mr_id, reason=reason, tail=tail[-2000:])
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
            self._emit(conn, "mr_requeued", rig=row["rig"], polecat=row["polecat"],
                       bead=row["bead"], mr=mr_id, reason=reason)

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
                self._emit(conn, "bead_created", rig=rig, bead=bead, title=title, priority=2)
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
            self._emit(conn, "mr_created", rig=rig, polecat=crew, bead=bead, mr=mr_id,
                       branch=branch, head=head, mr_kind="crew")
        return self.merge_request(mr_id)
