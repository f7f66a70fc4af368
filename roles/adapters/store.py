"""The town's truth: a SQLite database (WAL) of rigs, beads, polecats and domain events.

Layer: adapters (SQLite): the one door to the database for operations, role loops, the
supervisor and the CLI.

Every state change is one transaction, and the domain event describing it is written
in that same transaction (the ``events`` table is an outbox), so a process killed at
any instant leaves either both or neither. The feed (``events.jsonl``) is filled from
this outbox by a single writer. Callers get frozen dataclasses, never rows.

Identity: a town's store is never silently re-created (see :mod:`._store_base`).

Concurrency: many processes (CLI invocations, roles) open the same file. Writers use
``BEGIN IMMEDIATE`` and a generous busy timeout, so contention waits instead of failing.
"""

from __future__ import annotations

from pathlib import Path

from ._store_base import (
    BUSY_TIMEOUT_MS,
    IDENTITY_FILE,
    SchemaTooNew,
    open_connection,
    recorded_identity,
)
from ._store_convoys import Convoy, ConvoyBead, ConvoyLedger
from ._store_merges import MergeLedger
from ._store_records import (
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
from ._store_schema import MIGRATIONS
from ._store_town import TownLedger

__all__ = [
    "BEAD_STATUSES",
    "BUSY_TIMEOUT_MS",
    "IDENTITY_FILE",
    "MIGRATIONS",
    "Bead",
    "BeadStatus",
    "Convoy",
    "ConvoyBead",
    "Event",
    "MergeRequest",
    "Polecat",
    "Rig",
    "RoleRecord",
    "SchemaTooNew",
    "Sling",
    "Store",
    "open_store",
    "recorded_identity",
]


class Store(MergeLedger, TownLedger, ConvoyLedger):
    """The town's store: every ledger over one connection (see the module docstring)."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(path: Path, *, new_store: bool = False, adopt: bool = False) -> Store:
    """Open (creating and migrating if needed) the store at ``path``.

    A town that recorded its store's identity gets :class:`StoreMissing` when the file
    is gone and :class:`StoreReplaced` when another file stands there, never a fresh
    empty store; ``new_store`` and ``adopt`` are the explicit ways out (``gastown
    doctor --fix --new-store`` / ``--adopt-store``). Safe to call from many processes
    at once: migrations run under an exclusive lock and re-check the version inside it,
    so each runs exactly once.
    """
    return Store(open_connection(path, new_store=new_store, adopt=adopt), path)
