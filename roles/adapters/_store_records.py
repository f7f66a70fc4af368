"""What the store hands out: frozen records, built from rows here and nowhere else.

Layer: adapters (SQLite rows in, records out); every layer above reads these records.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast, get_args

from ..core.lifecycle import PolecatState

BeadStatus = Literal["open", "hooked", "in_review", "closed", "blocked"]
BEAD_STATUSES: Final[tuple[str, ...]] = get_args(BeadStatus)


@dataclass(frozen=True)
class Rig:
    name: str
    prefix: str
    repo: str
    default_branch: str
    created_at: float
    #: Why the merge queue is stopped (None while it runs), e.g. the remote diverged.
    mq_paused: str | None = None
    #: The default branch in the refinery's clone, and where it stands on the remote: work
    #: that landed but is not pushed yet lies between the two.
    landed_head: str | None = None
    remote_head: str | None = None
    push_error: str | None = None


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
    #: The commit a bead closed by hand was landed as (``bead close --commit``).
    closed_commit: str | None = None
    #: What its agents reported spending on it, over every polecat that worked on it.
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0


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
    #: Unique per life of the name (names are reused): keys the session log.
    incarnation: str | None = None
    #: The last lines of the session's output, kept when it escalated.
    output_tail: str | None = None
    #: How many times the witness nudged it since its last `gastown done` chance.
    nudges: int = 0
    #: Turns its agent reported ending (Stop hook, notify, print-mode exit).
    turns: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    #: The agent CLI's own conversation id, for resuming it (claude/codex session id).
    agent_session: str | None = None
    #: Its slot in the rig (``GASTOWN_SLOT``) and port (``GASTOWN_PORT``), while it lives.
    slot: int | None = None
    port: int | None = None


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
    #: ``polecat`` (``polecat`` names the polecat) or ``crew`` (it names the crew workspace).
    kind: str = "polecat"
    step: str | None = None
    gate: str | None = None
    candidate: str | None = None
    merged_commit: str | None = None
    log_path: str | None = None
    #: The failing output tail of a rejection.
    tail: str | None = None
    #: The steps so far: ``[{"step", "gate", "at"}]`` (``mq show`` prints their timings).
    steps: tuple[dict[str, Any], ...] = ()
    #: Who recorded it: ``agent`` (`gastown done`), ``witness`` (work committed, the agent
    #: stopped without `done`), ``human`` (re-submitted by hand).
    done_by: str = "agent"
    #: The incarnation of the polecat that submitted it (names are reused); None for crew.
    incarnation: str | None = None

    def submitted_by(self, polecat: Polecat) -> bool:
        """Whether this MR is ``polecat``'s own, not an earlier polecat's of the same name.

        By incarnation; only rows older than incarnations (both None) fall back to age.
        """
        if self.kind != "polecat" or self.rig != polecat.rig or self.polecat != polecat.name:
            return False
        if self.incarnation is not None or polecat.incarnation is not None:
            return self.incarnation == polecat.incarnation
        return self.created_at >= polecat.created_at


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
    data: Mapping[str, Any] = field(default_factory=dict)
    #: The ``events`` table's own columns: what the event concerns, where it names it.
    rig: str | None = None
    polecat: str | None = None
    bead: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "ts": self.ts, "kind": self.kind}
        for key in ("rig", "polecat", "bead"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(self.data)
        return out


def bead_of(row: sqlite3.Row) -> Bead:
    return Bead(id=row["id"], rig=row["rig"], title=row["title"],
                description=row["description"], priority=row["priority"],
                status=cast(BeadStatus, row["status"]), reason=row["reason"],
                created_at=row["created_at"], updated_at=row["updated_at"],
                closed_commit=row["closed_commit"], tokens_in=row["tokens_in"],
                tokens_out=row["tokens_out"], cost_usd=row["cost_usd"])


def rig_of(row: sqlite3.Row) -> Rig:
    return Rig(name=row["name"], prefix=row["prefix"], repo=row["repo"],
               default_branch=row["default_branch"], created_at=row["created_at"],
               mq_paused=row["mq_paused"], landed_head=row["landed_head"],
               remote_head=row["remote_head"], push_error=row["push_error"])


def polecat_of(row: sqlite3.Row) -> Polecat:
    return Polecat(rig=row["rig"], name=row["name"], bead=row["bead"], branch=row["branch"],
                   worktree=row["worktree"], state=cast(PolecatState, row["state"]),
                   agent=row["agent"],
                   session=json.loads(row["session"]) if row["session"] else None,
                   respawns=row["respawns"], reason=row["reason"], sling=row["sling"],
                   created_at=row["created_at"], updated_at=row["updated_at"],
                   incarnation=row["incarnation"], output_tail=row["output_tail"],
                   nudges=row["nudges"], turns=row["turns"], tokens_in=row["tokens_in"],
                   tokens_out=row["tokens_out"], cost_usd=row["cost_usd"],
                   agent_session=row["agent_session"], slot=row["slot"], port=row["port"])


def sling_of(row: sqlite3.Row) -> Sling:
    return Sling(id=row["id"], bead=row["bead"], rig=row["rig"], agent=row["agent"],
                 force=bool(row["force"]), state=row["state"], polecat=row["polecat"],
                 error=row["error"], created_at=row["created_at"],
                 updated_at=row["updated_at"], note=row["note"])


def mr_of(row: sqlite3.Row) -> MergeRequest:
    return MergeRequest(id=row["id"], rig=row["rig"], bead=row["bead"], polecat=row["polecat"],
                        branch=row["branch"], state=row["state"], priority=row["priority"],
                        reason=row["reason"], head=row["head"], base=row["base"],
                        created_at=row["created_at"], updated_at=row["updated_at"],
                        step=row["step"], gate=row["gate"], candidate=row["candidate"],
                        merged_commit=row["merged_commit"], log_path=row["log_path"],
                        kind=row["kind"], tail=row["tail"],
                        steps=tuple(json.loads(row["steps"] or "[]")),
                        done_by=row["done_by"], incarnation=row["incarnation"])


def event_of(row: sqlite3.Row) -> Event:
    return Event(seq=row["seq"], ts=row["ts"], kind=row["kind"], rig=row["rig"],
                 polecat=row["polecat"], bead=row["bead"], data=json.loads(row["data"]))
