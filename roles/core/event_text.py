"""Pure: how a domain event reads to people, one line in ``gastown feed``.

Layer: roles/core. The sentence of each kind is keyed by its class in
:mod:`.events`, so the feed's text and the stored event come from one definition;
:func:`describe_fields` also reads a flat event from ``events.jsonl`` that is partial
or of a kind this version does not know (a missing field reads ``?``, an unknown kind
its raw fields). A kind without a sentence (``agent_usage_settled``) reads raw too.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any, Final

from ._event_base import COLUMNS
from .events import (
    BY_KIND,
    AgentTurnEnded,
    BeadCreated,
    BeadStatusChanged,
    BeadUpdated,
    CrewUpdated,
    DomainEvent,
    MqPaused,
    MqResumed,
    MqResumeRequested,
    MrCancelled,
    MrCreated,
    MrMerged,
    MrRejected,
    MrRequeued,
    MrStarted,
    PolecatEscalated,
    PolecatFinished,
    PolecatNoted,
    PolecatNudged,
    PolecatNuked,
    PolecatRejected,
    PolecatSpawnStarted,
    PolecatStalled,
    PolecatStartedMerging,
    PolecatStartedWorking,
    PushCaughtUp,
    PushRefused,
    RigAdded,
    RigRemoved,
    Row,
    SlingCancelled,
    SlingFailed,
    SlingQueued,
    to_row,
)
from .events_convoy import ConvoyChanged, ConvoyCreated, ConvoyLanded, ConvoyProgress, ConvoyStuck
from .events_needs import BeadNeedAdded, BeadNeedRemoved
from .events_setup import PolecatSetupFailed, PolecatTeardownFailed
from .events_town import (
    DoctorFixed,
    ReloadRefused,
    RoleExited,
    RoleFailed,
    RoleReady,
    RoleRestartScheduled,
    RoleStarted,
    RoleStopped,
    StoreAdopted,
    StoreCreated,
    SupervisorStarted,
    SupervisorStopRequested,
    TownReloaded,
)

#: How each kind reads (``str.format`` over the flat event and the helper fields below).
TEMPLATES: Final[Mapping[type[DomainEvent], str]] = {
    RigAdded: "rig {rig} added ({repo}, branch {default_branch}, prefix {prefix})",
    RigRemoved: "rig {rig} removed",
    MqPaused: "merge queue of {rig} PAUSED: {reason}",
    MqResumed: "merge queue of {rig} running again",
    MqResumeRequested: "merge queue of {rig}: resume requested",
    PushRefused: ("{rig}: {count} merged commit(s) kept in the refinery's clone, not on the "
                  "remote: {reason}"),
    PushCaughtUp: "{rig}: the remote has every merged commit again (at {short_head})",
    CrewUpdated: "crew {rig}/{crew}: {detail}",
    BeadCreated: "bead {bead} created: {title}",
    BeadStatusChanged: "bead {bead} {old} -> {new}{because}",
    BeadUpdated: "bead {bead} updated ({fields})",
    BeadNeedAdded: "bead {bead} needs {need} now (dispatched only once {need} is closed)",
    BeadNeedRemoved: "bead {bead} no longer needs {need}",
    SlingQueued: "sling #{sling} queued: {bead} -> {rig}",
    SlingFailed: "sling #{sling} of {bead} to {rig} failed: {error}",
    SlingCancelled: "sling #{sling} of {bead} to {rig} cancelled: {reason}",
    PolecatSpawnStarted: "polecat {rig}/{polecat} spawning for {bead} on {branch} ({agent})",
    PolecatStartedWorking: "polecat {rig}/{polecat} working on {bead}",
    PolecatFinished: "polecat {rig}/{polecat} done ({bead})",
    PolecatStartedMerging: "polecat {rig}/{polecat} merging",
    PolecatStalled: "polecat {rig}/{polecat} stalled",
    PolecatEscalated: "polecat {rig}/{polecat} ESCALATED: {reason}",
    PolecatRejected: "polecat {rig}/{polecat} rejected: {reason}",
    PolecatNuked: "polecat {rig}/{polecat} nuked",
    PolecatNoted: "polecat {rig}/{polecat}: {reason}",
    PolecatSetupFailed: "polecat {rig}/{polecat} setup FAILED: {reason}",
    PolecatTeardownFailed: "polecat {rig}/{polecat} teardown failed: {reason}",
    PolecatNudged: "{rig}/{polecat} nudged{by_text}: {first_line}",
    AgentTurnEnded: ("{rig}/{polecat} turn {turn} ended: {short_in} in, {short_out} out"
                     "{cost_text}"),
    MrCreated: "merge request {mr} queued: {branch} ({bead}){done_by_text}",
    MrStarted: "merge request {mr} started ({bead})",
    MrMerged: "merge request {mr} MERGED as {short_commit} ({bead})",
    MrRejected: "merge request {mr} REJECTED: {reason} ({bead})",
    MrRequeued: "merge request {mr} queued again: {reason}",
    MrCancelled: "merge request {mr} cancelled: {reason}",
    DoctorFixed: "doctor fixed {rig}: {detail}",
    StoreCreated: "an empty store was created at {path}",
    StoreAdopted: "{path} was adopted as the town's store",
    RoleStarted: "{role} started (pid {pid})",
    RoleReady: "{role} ready (pid {pid})",
    RoleExited: "{role} exited ({exit}), restarts so far {restarts}",
    RoleRestartScheduled: "{role} restarting in {delay}s",
    RoleFailed: "{role} FAILED: {reason}",
    RoleStopped: "{role} stopped",
    SupervisorStarted: "supervisor started (pid {pid})",
    TownReloaded: "configuration reloaded ({reason}); restarted: {restarted}",
    ReloadRefused: "configuration reload REFUSED ({reason}): {error}",
    SupervisorStopRequested: "supervisor stopping ({reason})",
    ConvoyCreated: "convoy {convoy} created: {title} ({beads}; {closed}/{total} merged)",
    ConvoyChanged: ("convoy {convoy} changed: added {added}; removed {removed} "
                    "({closed}/{total} merged, {state})"),
    ConvoyProgress: "convoy {convoy} ({title}): {closed}/{total} merged, {state}",
    ConvoyLanded: "convoy {convoy} LANDED: {title} ({closed}/{total} merged)",
    ConvoyStuck: "convoy {convoy} STUCK on {bead}: {reason} ({closed}/{total} merged)",
}


def describe(event: DomainEvent) -> str:
    """The event's one line in ``gastown feed`` (without the time stamp)."""
    return describe_fields(flat(to_row(event)))


def flat(row: Row) -> dict[str, object]:
    """The feed's JSON shape of a row: ``kind``, the columns that are set, the data (its
    keys sorted, as the store writes them)."""
    out: dict[str, object] = {"kind": row.kind}
    out.update({key: value for key, value in zip(COLUMNS, (row.rig, row.polecat, row.bead),
                                                 strict=True) if value is not None})
    out.update(sorted(row.data.items()))
    return out


def describe_fields(event: Mapping[str, Any]) -> str:
    """The line of a flat event as the feed reads it (``kind`` and its fields, maybe
    partial or of an unknown kind: a missing field reads ``?``, an unknown kind its raw
    fields)."""
    fields_ = {k: _text(v) for k, v in event.items()}
    if "last_exit" in fields_:
        fields_["exit"] = describe_exit(fields_["last_exit"])
    fields_["because"] = f" ({fields_['reason']})" if fields_.get("reason") else ""
    fields_["short_commit"] = str(fields_.get("commit", ""))[:10]
    fields_["short_head"] = str(fields_.get("head", ""))[:10]
    if event.get("kind") in ("agent_turn_ended", "polecat_nudged", "mr_created"):
        _agent_fields(event, fields_)
    cls = BY_KIND.get(event.get("kind", ""))
    template = TEMPLATES.get(cls) if cls is not None else None
    if template is not None:
        try:
            return template.format_map(_Missing(fields_))
        except (ValueError, IndexError):
            pass
    extra = " ".join(f"{k}={_text(v)}" for k, v in event.items()
                     if k not in ("seq", "ts", "kind"))
    return f"{event.get('kind')} {extra}".rstrip()


def describe_exit(code: int | None) -> str:
    """``0`` -> ``exit 0``, ``-9`` -> ``killed by SIGKILL``, None -> ``did not start``."""
    if code is None:
        return "did not start"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def short_count(n: int) -> str:
    """A token count for a narrow column: ``950``, ``1.2k``, ``12.3k``, ``4.5M``."""
    if n < 1000:
        return str(n)
    if n < 999_950:  # above, it would round to "1000.0k"
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"


def dollars(cost: float) -> str:
    """A cost as people read it: ``$0.0040``, ``$12.35``."""
    return f"${cost:.2f}" if cost >= 1 else f"${cost:.4f}"


def _agent_fields(event: Mapping[str, Any], fields_: dict[str, Any]) -> None:
    """Fields of the agents' events: short token counts, the cost, who nudged or recorded."""
    for key, short in (("tokens_in", "short_in"), ("tokens_out", "short_out")):
        value = event.get(key)
        fields_[short] = short_count(value) if isinstance(value, int) else "?"
    cost = event.get("cost_usd")
    fields_["cost_text"] = f", {dollars(cost)}" if isinstance(cost, int | float) and cost > 0 \
        else ""
    fields_["by_text"] = f" by {event['by']}" if event.get("by") else ""
    fields_["first_line"] = (str(event.get("text") or "").strip().splitlines() or [""])[0]
    fields_["done_by_text"] = " (by witness)" if event.get("done_by") == "witness" else ""


def _text(value: Any) -> Any:
    """Lists read as the CLI prints them: ``a, b`` (``nothing`` when empty)."""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) if value else "nothing"
    return value


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"
