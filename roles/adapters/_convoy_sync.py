"""The convoys follow their beads: recompute, compare with the stored state, one event.

Layer: adapters (SQLite). Every place in the store that changes a bead's status calls
:func:`follow_beads` in the same transaction (through ``StoreBase._bead_moved``): the
convoys holding the bead get their state recomputed (:func:`~..core.convoy.convoy_state`)
and compared with what their row says; only a real change updates the row and writes its
one event (:func:`~..core.convoy.change_kind`). The row and the event commit with the bead
change or not at all, so a process killed at any instant neither loses nor repeats one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable

from ..core.convoy import BeadFacts, ConvoyState, change_kind, convoy_state
from ..core.events import DomainEvent
from ..core.events_convoy import ConvoyLanded, ConvoyProgress, ConvoyStuck

Emit = Callable[[DomainEvent], None]

#: A bead's facts in its convoy's order; ``last_mr`` is the state of its newest MR.
_FACTS = """
    SELECT b.id, b.status, b.reason,
           (SELECT m.state FROM merge_requests m WHERE m.bead = b.id
            ORDER BY m.created_at DESC, m.rowid DESC LIMIT 1) AS last_mr
    FROM convoy_beads cb JOIN beads b ON b.id = cb.bead
    WHERE cb.convoy = ? ORDER BY cb.position, cb.bead
"""


def bead_facts(conn: sqlite3.Connection, convoy: str) -> list[BeadFacts]:
    return [BeadFacts(id=r["id"], status=r["status"], rejected=r["last_mr"] == "rejected",
                      reason=r["reason"]) for r in conn.execute(_FACTS, (convoy,))]


def stored_state(row: sqlite3.Row) -> ConvoyState:
    return ConvoyState(row["state"], row["closed"], row["total"], row["stuck_bead"],
                       row["stuck_reason"])


def follow_beads(conn: sqlite3.Connection, emit: Emit, bead_ids: Iterable[str]) -> None:
    """Bring every convoy holding one of ``bead_ids`` up to date (see the module docstring)."""
    beads = sorted(set(bead_ids))
    if not beads:
        return
    marks = ", ".join("?" * len(beads))
    convoys = [r["convoy"] for r in conn.execute(
        f"SELECT DISTINCT convoy FROM convoy_beads WHERE bead IN ({marks}) ORDER BY convoy",
        beads)]
    for convoy in convoys:
        follow_convoy(conn, emit, convoy)


def follow_convoy(conn: sqlite3.Connection, emit: Emit, convoy: str, *,
                  quiet_progress: bool = False) -> ConvoyState | None:
    """Recompute one convoy; write its row and its one event if it changed. Returns the
    convoy's state (None for an unknown convoy). ``quiet_progress``: the caller wrote an
    event that says the new progress (``convoy_created``/``convoy_changed``), so only a
    landing or a stuck convoy gets one more."""
    row = conn.execute("SELECT * FROM convoys WHERE id = ?", (convoy,)).fetchone()
    if row is None:
        return None
    old = stored_state(row)
    new = convoy_state(bead_facts(conn, convoy))
    kind = change_kind(old, new)
    if kind is None:
        return new
    conn.execute("UPDATE convoys SET state = ?, closed = ?, total = ?, stuck_bead = ?, "
                 "stuck_reason = ?, updated_at = ? WHERE id = ?",
                 (new.state, new.closed, new.total, new.stuck_bead, new.stuck_reason,
                  time.time(), convoy))
    title = str(row["title"])
    if quiet_progress and kind == "convoy_progress":
        return new
    if kind == "convoy_stuck":
        emit(ConvoyStuck(convoy=convoy, title=title, state=new.state, closed=new.closed,
                         total=new.total, old=old.state, bead=new.stuck_bead or "?",
                         reason=new.stuck_reason or "?"))
    else:
        cls = ConvoyLanded if kind == "convoy_landed" else ConvoyProgress
        emit(cls(convoy=convoy, title=title, state=new.state, closed=new.closed,
                 total=new.total, old=old.state))
    return new
