"""Pure: the town's domain events, one frozen dataclass a kind (past tense).

Layer: roles/core. Every state change the store records is one of these: :func:`to_row`
is what the ``events`` table (and so ``events.jsonl``) stores of it, :func:`from_row`
reads it back, and ``event_text.describe`` is its line in ``gastown feed``: the log and
the feed are rendered from the same definitions. ``kind`` is the wire name
the feed's JSON contract promises (unchanged); ``rig``, ``polecat`` and ``bead`` are
columns of the table, every other field a key of its ``data``. A field left
:data:`UNSET` is not written at all (a key some writers add and others do not), which
is not the same as ``None`` (written as ``null``).

The kinds of the town itself (doctor, store, supervisor, roles) live in
:mod:`.events_town`, the base classes in :mod:`._event_base`; a new family of kinds gets a
module of its own the same way, and joins :data:`DomainEvent` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, get_args

from ._event_base import COLUMNS, UNSET, Unset, _Event, _MrEvent, _PolecatEvent, _RigEvent
from .events_convoy import (
    ConvoyChanged,
    ConvoyCreated,
    ConvoyLanded,
    ConvoyProgress,
    ConvoyStuck,
)
from .events_needs import BeadNeedAdded, BeadNeedRemoved
from .events_setup import PolecatSetupFailed, PolecatTeardownFailed
from .events_town import (
    DoctorFixed,
    ReloadRefused,
    RoleChanged,
    StoreAdopted,
    StoreCreated,
    SupervisorStarted,
    SupervisorStopRequested,
    TownReloaded,
)


# -- rigs, the merge queue, the remote --------------------------------------------------
class RigAdded(_RigEvent, kind="rig_added"):
    prefix: str
    repo: str
    default_branch: str


class RigRemoved(_RigEvent, kind="rig_removed"): ...


class MqPaused(_RigEvent, kind="mq_paused"):
    reason: str


class MqResumed(_RigEvent, kind="mq_resumed"):
    was: str | None


class MqResumeRequested(_RigEvent, kind="mq_resume_requested"): ...


class PushRefused(_RigEvent, kind="push_refused"):
    landed_head: str
    remote_head: str | None
    reason: str
    count: int


class PushCaughtUp(_RigEvent, kind="push_caught_up"):
    head: str
    was: str | None


class CrewUpdated(_RigEvent, kind="crew_updated"):
    crew: str
    detail: str


# -- beads and slings ---------------------------------------------------------------------
class BeadCreated(_Event, kind="bead_created"):
    rig: str | None
    bead: str
    title: str
    priority: int


class BeadStatusChanged(_Event, kind="bead_status_changed"):
    rig: str | None
    bead: str
    old: str
    new: str
    reason: str | None
    polecat: str | None = None
    commit: str | Unset | None = UNSET  # closed by hand: where the work landed
    by_hand: bool | Unset = UNSET
    crew: str | Unset = UNSET  # submitted by a crew workspace


class BeadUpdated(_Event, kind="bead_updated"):
    rig: str | None
    bead: str
    fields: tuple[str, ...]
    title: str | Unset = UNSET
    priority: int | Unset = UNSET


class SlingQueued(_Event, kind="sling_queued"):
    rig: str
    bead: str
    sling: int | None
    agent: str | Unset | None = UNSET
    force: bool | Unset = UNSET
    requeued: bool | Unset = UNSET


class SlingFailed(_Event, kind="sling_failed"):
    rig: str
    bead: str
    sling: int
    error: str


class SlingCancelled(_Event, kind="sling_cancelled"):
    rig: str
    bead: str
    sling: int
    reason: str


# -- polecats and their agents ------------------------------------------------------------
class PolecatSpawnStarted(_PolecatEvent, kind="polecat_spawning"):
    branch: str
    agent: str
    sling: int
    incarnation: str


class PolecatMoved(_PolecatEvent):
    """A lifecycle transition (``polecat_<new state>``); the details its caller recorded."""

    old: str
    reason: str | None
    tail: str | Unset = UNSET  # the session's last output (escalation)
    head: str | Unset = UNSET  # `gastown done`: the branch's head
    mr: str | Unset | None = UNSET  # `gastown done`: its merge request
    resubmitted: str | Unset = UNSET  # `gastown done` of kept work: the state it was in
    respawns: int | Unset = UNSET
    forced: bool | Unset = UNSET  # `polecat nuke [--force]`
    doctor: bool | Unset = UNSET  # doctor's nuke of a stale polecat


class PolecatStartedWorking(PolecatMoved, kind="polecat_working"): ...


class PolecatFinished(PolecatMoved, kind="polecat_done"): ...


class PolecatStartedMerging(PolecatMoved, kind="polecat_merging"): ...


class PolecatStalled(PolecatMoved, kind="polecat_stalled"): ...


class PolecatEscalated(PolecatMoved, kind="polecat_escalated"): ...


class PolecatRejected(PolecatMoved, kind="polecat_rejected"): ...


class PolecatNuked(PolecatMoved, kind="polecat_nuked"): ...


#: A lifecycle transition's event, one class a state it reaches.
PolecatTransitioned = (PolecatStartedWorking | PolecatFinished | PolecatStartedMerging
                       | PolecatStalled | PolecatEscalated | PolecatRejected | PolecatNuked)
#: The event of a transition to each state (``spawning`` is :class:`PolecatSpawnStarted`).
POLECAT_MOVES: Final[Mapping[str, type[PolecatTransitioned]]] = {
    cls.kind.removeprefix("polecat_"): cls for cls in get_args(PolecatTransitioned)}


class PolecatNoted(_PolecatEvent, kind="polecat_noted"):
    reason: str | None


class PolecatNudged(_PolecatEvent, kind="polecat_nudged"):
    text: str
    by: str
    nudges: int


class _Usage(_PolecatEvent):
    """A turn's usage deltas, the turn's number and the polecat's totals after it."""

    turn: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    agent_session: str | None
    total_tokens_in: int
    total_tokens_out: int
    total_cost_usd: float


class AgentTurnEnded(_Usage, kind="agent_turn_ended"): ...


class AgentUsageSettled(_Usage, kind="agent_usage_settled"):
    """The last accounting before a nuke, of a turn cut short (no turn counted)."""


# -- merge requests -----------------------------------------------------------------------
class MrCreated(_MrEvent, kind="mr_created"):
    branch: str
    head: str
    done_by: str | Unset = UNSET  # a polecat's: agent, witness or human
    mr_kind: str | Unset = UNSET  # a crew workspace's: "crew"


class MrStarted(_MrEvent, kind="mr_started"): ...


class MrMerged(_MrEvent, kind="mr_merged"):
    commit: str
    branch: str
    mr_kind: str


class MrRejected(_MrEvent, kind="mr_rejected"):
    reason: str
    tail: str


class MrRequeued(_MrEvent, kind="mr_requeued"):
    reason: str


class MrCancelled(_MrEvent, kind="mr_cancelled"):
    reason: str


DomainEvent = (
    RigAdded | RigRemoved | MqPaused | MqResumed | MqResumeRequested | PushRefused
    | PushCaughtUp | CrewUpdated | BeadCreated | BeadStatusChanged | BeadUpdated | SlingQueued
    | SlingFailed | SlingCancelled | PolecatSpawnStarted | PolecatTransitioned | PolecatNoted
    | PolecatNudged | AgentTurnEnded | AgentUsageSettled | MrCreated | MrStarted | MrMerged
    | MrRejected | MrRequeued | MrCancelled | DoctorFixed | StoreCreated | StoreAdopted
    | RoleChanged | SupervisorStarted | TownReloaded | ReloadRefused
    | ConvoyCreated | ConvoyChanged | ConvoyProgress | ConvoyLanded | ConvoyStuck
    | SupervisorStopRequested | BeadNeedAdded | BeadNeedRemoved
    | PolecatSetupFailed | PolecatTeardownFailed)

#: Every event class by its wire name.
BY_KIND: Final[Mapping[str, type[DomainEvent]]] = {
    cls.kind: cls for cls in get_args(DomainEvent)}


@dataclass(frozen=True)
class Row:
    """What the ``events`` table stores of an event (besides its ``seq`` and ``ts``)."""

    kind: str
    rig: str | None
    polecat: str | None
    bead: str | None
    data: dict[str, object]


def to_row(event: DomainEvent) -> Row:
    """The event as the store writes it: kind, the three columns, the other fields' data."""
    data = {f.name: getattr(event, f.name) for f in fields(event)
            if f.name not in COLUMNS and getattr(event, f.name) is not UNSET}
    return Row(event.kind, getattr(event, "rig", None), getattr(event, "polecat", None),
               getattr(event, "bead", None), data)


def from_row(kind: str, rig: str | None, polecat: str | None, bead: str | None,
             data: Mapping[str, Any]) -> DomainEvent:
    """The event a stored row records; :class:`KeyError` for a kind no class has,
    :class:`TypeError` for data that does not fit the kind's fields."""
    cls = BY_KIND[kind]
    names = {f.name for f in fields(cls)}
    values: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value
                              for key, value in data.items()}
    values.update({key: value for key, value in zip(COLUMNS, (rig, polecat, bead),
                                                    strict=True) if key in names})
    return cls(**values)
