"""The store's ledger of slings and polecats: the work in flight and its lifecycle.

Layer: adapters (SQLite). Every polecat change goes through
:meth:`PolecatLedger.apply_polecat_event`, which applies the lifecycle's row effects and
the domain event in one transaction; the nuked rows are kept in ``polecat_history``.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Mapping, Sequence, Set
from typing import Any

from ..core.errors import NotFound, Refused
from ..core.events import (
    POLECAT_MOVES,
    AgentTurnEnded,
    AgentUsageSettled,
    BeadStatusChanged,
    MrCancelled,
    PolecatNoted,
    PolecatNudged,
    PolecatSpawnStarted,
    SlingFailed,
    SlingQueued,
)
from ..core.events_setup import PolecatSetupFailed, PolecatTeardownFailed
from ..core.lifecycle import (
    ACTIVE_STATES,
    SetBead,
    Transition,
    transition,
)
from ..core.lifecycle import Event as PolecatEvent
from ..core.names import next_polecat_name
from ..core.slots import free_slot
from ._store_base import StoreBase
from ._store_needs import unmet_needs
from ._store_records import (
    Polecat,
    Sling,
    polecat_of,
    sling_of,
)

#: How a polecat's life ended, by the event that nuked it (``polecat_history.ended``).
_ENDINGS: dict[str, str] = {"Merged": "merged", "Nuke": "nuked", "SpawnFailed": "rolled back"}



class PolecatLedger(StoreBase):
    """Slings and polecats: the queue, the reservations, the lifecycle's rows, the usage."""


    def queue_sling(self, bead_id: str, rig: str, *, agent: str | None, force: bool,
                    note: str | None = None) -> Sling:
        """Record a request to sling ``bead_id`` to ``rig``; the mayor dispatches it.

        Refuses a closed bead, a bead already hooked or in review (unless ``force``), and
        a bead that already has a queued sling (unless ``force``).
        """
        return self.queue_slings([bead_id], rig, agent=agent, force=force, note=note)[0]

    def queue_slings(self, bead_ids: Sequence[str], rig: str, *, agent: str | None,
                     force: bool, note: str | None = None) -> list[Sling]:
        """Record one sling per bead, in this order, in one transaction: all of them or,
        when one is refused (as :meth:`queue_sling` refuses it, or named twice), none."""
        if len(set(bead_ids)) != len(bead_ids):
            twice = next(b for b in bead_ids if bead_ids.count(b) > 1)
            raise Refused(f"bead {twice} is named twice")
        ids: list[int] = []
        with self.transaction() as conn:
            if not conn.execute("SELECT 1 FROM rigs WHERE name = ?", (rig,)).fetchone():
                raise NotFound(f"no rig named {rig!r} in this town")
            for bead_id in bead_ids:
                ids.append(self._queue_one(conn, bead_id, rig, agent=agent, force=force,
                                           note=note))
        return [self.sling(sling_id) for sling_id in ids]

    def _queue_one(self, conn: sqlite3.Connection, bead_id: str, rig: str, *,
                   agent: str | None, force: bool, note: str | None) -> int:
        bead = conn.execute("SELECT * FROM beads WHERE id = ?", (bead_id,)).fetchone()
        if bead is None:
            raise NotFound(f"no bead {bead_id!r}")
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
        sling_id = int(cur.lastrowid or 0)
        self._emit(conn, SlingQueued(rig=rig, bead=bead_id, sling=sling_id, agent=agent,
                                     force=force))
        return sling_id

    def sling(self, sling_id: int) -> Sling:
        row = self._conn.execute("SELECT * FROM slings WHERE id = ?", (sling_id,)).fetchone()
        if row is None:
            raise NotFound(f"no sling #{sling_id}")
        return sling_of(row)

    def queued_slings(self) -> list[Sling]:
        rows = self._conn.execute("SELECT * FROM slings WHERE state = 'queued' ORDER BY id")
        return [sling_of(r) for r in rows.fetchall()]

    def _requeue_sling(self, conn: sqlite3.Connection, sling_id: int) -> None:
        """Put a dispatched sling back in the queue (its polecat was rolled back)."""
        row = conn.execute("SELECT * FROM slings WHERE id = ?", (sling_id,)).fetchone()
        if row is None:
            return
        conn.execute("UPDATE slings SET state = 'queued', polecat = NULL, updated_at = ? "
                     "WHERE id = ?", (time.time(), sling_id))
        self._emit(conn, SlingQueued(rig=row["rig"], bead=row["bead"], sling=sling_id,
                                     requeued=True))

    def fail_sling(self, sling_id: int, error: str) -> None:
        """Mark the sling ``failed`` (gone from the queue); idempotent: one event."""
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM slings WHERE id = ?", (sling_id,)).fetchone()
            if row is not None and row["state"] == "failed":
                return
            conn.execute("UPDATE slings SET state = 'failed', error = ?, updated_at = ? "
                         "WHERE id = ?", (error, time.time(), sling_id))
            if row is not None:
                self._emit(conn, SlingFailed(rig=row["rig"], bead=row["bead"],
                                             sling=sling_id, error=error))

    def reserve_polecat(self, sling_id: int, *, pool: Sequence[str], branch_template: str,
                        polecats_dir: str, agent: str, rig_cap: int, town_cap: int,
                        also_held: Set[str] = frozenset(),
                        full: list[str] | None = None) -> Polecat | None:
        """Turn a queued sling into a ``spawning`` polecat, or None when no slot is free
        (then ``full``, when given, gets ``"town"`` or ``"rig"``: which cap, as seen in
        this transaction).

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
                if full is not None:
                    full.append("town" if in_town >= town_cap else "rig")
                return None
            bead = conn.execute("SELECT * FROM beads WHERE id = ?", (sling["bead"],)).fetchone()
            if bead is None or bead["status"] == "closed" or (
                    bead["status"] in ("hooked", "in_review") and not sling["force"]):
                status = bead["status"] if bead else "gone"
                raise Refused(f"bead {sling['bead']} is {status}; not slinging it")
            if unmet_needs(conn, sling["bead"]):
                return None  # a need added (or reopened) since the plan: it waits
            rows = conn.execute("SELECT name, slot FROM polecats WHERE rig = ?",
                                (sling["rig"],)).fetchall()
            held = {r["name"] for r in rows} | set(also_held)
            slot = free_slot(r["slot"] for r in rows)  # unique while the row lives
            name = next_polecat_name(pool, held)
            branch = branch_template.replace("{name}", name)
            worktree = f"{polecats_dir}/{name}"
            now = time.time()
            incarnation = secrets.token_hex(4)  # names are reused; this life is not
            conn.execute(
                "INSERT INTO polecats (rig, name, bead, branch, worktree, state, agent, sling, "
                "incarnation, slot, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, 'spawning', ?, ?, ?, ?, ?, ?)",
                (sling["rig"], name, sling["bead"], branch, worktree, agent, sling_id,
                 incarnation, slot, now, now))
            conn.execute("UPDATE slings SET state = 'dispatched', polecat = ?, updated_at = ? "
                         "WHERE id = ?", (name, now, sling_id))
            conn.execute("UPDATE beads SET status = 'hooked', reason = NULL, updated_at = ? "
                         "WHERE id = ?", (now, sling["bead"]))
            self._emit(conn, BeadStatusChanged(rig=sling["rig"], bead=sling["bead"],
                                               polecat=name, old=bead["status"], new="hooked",
                                               reason=None))
            self._bead_moved(conn, sling["bead"])
            self._emit(conn, PolecatSpawnStarted(rig=sling["rig"], polecat=name,
                                                 bead=sling["bead"], branch=branch, agent=agent,
                                                 sling=sling_id, incarnation=incarnation))
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
            self._emit(conn, PolecatNoted(rig=rig, polecat=name, bead=row["bead"],
                                          reason=reason))

    def set_polecat_port(self, rig: str, name: str, port: int | None) -> None:
        """Record the port the spawn found free in the polecat's block."""
        with self.transaction() as conn:
            conn.execute("UPDATE polecats SET port = ?, updated_at = ? WHERE rig = ? AND "
                         "name = ?", (port, time.time(), rig, name))

    def note_setup_failed(self, polecat: Polecat, reason: str, tail: str, *,
                          teardown: bool = False) -> None:
        """``polecat_setup_failed`` (or ``polecat_teardown_failed``): the bootstrap's
        command failed; the rollback (or the nuke) that follows changes the rows."""
        kind = PolecatTeardownFailed if teardown else PolecatSetupFailed
        with self.transaction() as conn:
            self._emit(conn, kind(rig=polecat.rig, polecat=polecat.name, bead=polecat.bead,
                                  reason=reason, tail=tail))

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
            usage: type[AgentTurnEnded | AgentUsageSettled] = \
                AgentTurnEnded if ended_turn else AgentUsageSettled
            self._emit(conn, usage(rig=rig, polecat=name, bead=row["bead"], turn=after.turns,
                                   tokens_in=tokens_in, tokens_out=tokens_out,
                                   cost_usd=cost_usd, agent_session=after.agent_session,
                                   total_tokens_in=after.tokens_in,
                                   total_tokens_out=after.tokens_out,
                                   total_cost_usd=after.cost_usd))
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
                            requeue_sling: bool = False, **data: Any) -> Transition:
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
        and carried by the event. With ``requeue_sling``, a polecat that ends ``nuked``
        puts its sling back in the queue in the same transaction (a rolled-back spawn:
        the user's request still happens, and no crash leaves the sling dispatched to a
        polecat that is gone).
        """
        with self.transaction() as conn:
            return self._apply_polecat_event(conn, rig, name, event, output_tail=output_tail,
                                             incarnation=incarnation,
                                             requeue_sling=requeue_sling, **data)

    def _apply_polecat_event(self, conn: sqlite3.Connection, rig: str, name: str,
                             event: PolecatEvent, *, output_tail: str | None = None,
                             incarnation: str | None = None, requeue_sling: bool = False,
                             **data: Any) -> Transition:
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
            if requeue_sling and row["sling"]:
                self._requeue_sling(conn, row["sling"])
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
        self._emit(conn, POLECAT_MOVES[result.state](rig=rig, polecat=name, bead=row["bead"],
                                                     old=row["state"], reason=reason, **data))
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
            self._emit(conn, PolecatNudged(rig=rig, polecat=name, bead=row["bead"], text=text,
                                           by=by, nudges=nudges))
        return int(nudges)

    def _cancel_merge_requests(self, conn: sqlite3.Connection, rig: str, polecat: str,
                               reason: str) -> None:
        rows = conn.execute("SELECT id FROM merge_requests WHERE rig = ? AND polecat = ? "
                            "AND kind = 'polecat' AND state IN ('queued', 'running')",
                            (rig, polecat)).fetchall()
        for row in rows:
            conn.execute("UPDATE merge_requests SET state = 'cancelled', reason = ?, "
                         "updated_at = ? WHERE id = ?", (reason, time.time(), row["id"]))
            self._emit(conn, MrCancelled(rig=rig, polecat=polecat, bead=None, mr=row["id"],
                                         reason=reason))
