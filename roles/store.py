"""The town's truth: a SQLite database (WAL) of rigs, beads, polecats and domain events.

Every state change is one transaction, and the domain event describing it is written
in that same transaction (the ``events`` table is an outbox), so a process killed at
any instant leaves either both or neither. The feed (``events.jsonl``) is filled from
this outbox by a single writer. Callers get frozen dataclasses, never rows.

Concurrency: many processes (CLI invocations, roles) open the same file. Writers use
``BEGIN IMMEDIATE`` and a generous busy timeout, so contention waits instead of failing.
"""

from __future__ import annotations

from pathlib import Path

from gastown.roles._store_base import BUSY_TIMEOUT_MS, SchemaTooNew, open_connection
from gastown.roles._store_records import (
    BEAD_STATUSES,
    Bead,
    BeadStatus,
    Event,
    MergeRequest,
    Polecat,
    Rig,
    RoleRecord,
    Sling,
)
from gastown.roles._store_schema import MIGRATIONS
from gastown.roles._store_town import TownLedger
from gastown.roles._store_work import WorkLedger

__all__ = [
    "BEAD_STATUSES",
    "BUSY_TIMEOUT_MS",
    "MIGRATIONS",
    "Bead",
    "BeadStatus",
    "Event",
    "MergeRequest",
    "Polecat",
    "Rig",
    "RoleRecord",
    "SchemaTooNew",
    "Sling",
    "Store",
    "open_store",
]


class Store(WorkLedger, TownLedger):
    """The town's store: every ledger over one connection (see the module docstring)."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(path: Path) -> Store:
    """Open (creating and migrating if needed) the store at ``path``.

    Safe to call from many processes at once: migrations run under an exclusive lock
    and re-check the version inside it, so each runs exactly once.
    """
    return Store(open_connection(path), path)
