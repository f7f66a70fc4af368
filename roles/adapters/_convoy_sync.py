"""The convoys follow their beads: recompute, compare with the stored state, one event.

Layer: adapters (SQLite). Every place in the store that changes a bead's status (or its
needs) calls :func:`follow_beads` in the same transaction (through
``StoreBase._bead_moved``): the convoys holding the bead, or a bead that needs it, get
their state recomputed (:func:`~..core.convoy.convoy_state`) and compared with what their
row says; only a real change updates the row and writes its one event
(:func:`~..core.convoy.change_kind`). The row and the event commit with the bead
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

#: ``last_mr`` is the state of a bead's newest merge request.
_LAST_MR = """(SELECT m.state FROM merge_requests m WHERE m.bead = b.id
               ORDER BY m.created_at DESC, m.rowid DESC LIMIT 1) AS last_mr"""
#: The convoy's beads in its order.
_FACTS = f"""SELECT b.id, b.status, b.reason, {_LAST_MR}
    FROM convoy_beads cb JOIN beads b ON b.id = cb.bead
    WHERE cb.convoy = ? ORDER BY cb.position, cb.bead"""
#: The beads one bead needs.
_NEEDS = f"""SELECT b.id, b.status, b.reason, {_LAST_MR}
    FROM bead_needs n JOIN beads b ON b.id = n.need WHERE n.bead = ? ORDER BY n.need"""
#: The convoys holding one of the beads (``?`` marks), or a bead that needs one of them.
_HOLDING = """SELECT convoy FROM convoy_beads WHERE bead IN ({marks})
    UNION SELECT cb.convoy FROM convoy_beads cb JOIN bead_needs n ON n.bead = cb.bead
    WHERE n.need IN ({marks}) ORDER BY convoy"""


def _facts(row: sqlite3.Row, needs: tuple[BeadFacts, ...] = ()) -> BeadFacts:
    return BeadFacts(id=row["id"], status=row["status"],
                     rejected=row["last_mr"] == "rejected", reason=row["reason"], needs=needs)


def bead_facts(conn: sqlite3.Connection, convoy: str) -> list[BeadFacts]:
    """What :func:`~..core.convoy.convoy_state` needs of the convoy's beads."""
    return [_facts(r, tuple(_facts(n) for n in conn.execute(_NEEDS, (r["id"],))))
            for r in conn.execute(_FACTS, (convoy,)).fetchall()]


def stored_state(row: sqlite3.Row) -> ConvoyState:
    return ConvoyState(row["state"], row["closed"], row["total"], row["stuck_bead"],
                       row["stuck_reason"])


def follow_beads(conn: sqlite3.Connection, emit: Emit, bead_ids: Iterable[str]) -> None:
    """Bring every convoy holding one of ``bead_ids`` up to date (see the module docstring)."""
    beads = sorted(set(bead_ids))
    if not beads:
        return
    marks = ", ".join("?" * len(beads))
    convoys = [r["convoy"] for r in conn.execute(_HOLDING.format(marks=marks),
                                                  [*beads, *beads])]
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
