"""The domain event feed: ``events.jsonl``, its single writer, and how it reads to people.

The store's ``events`` table is the outbox: every state change writes its event in the
same transaction. The supervisor is the only process that appends to ``events.jsonl``
(:class:`EventLog`), copying outbox rows in sequence order; the ``seq`` of the last line
says where to resume, so a supervisor killed mid-append neither loses nor repeats an
event (a torn last line is cut off on open). Readers (:func:`read_feed`) merge the file
with outbox rows not yet copied, so ``gastown feed`` is complete even while the town is
down. Nothing here imports trio.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

_TAIL_BYTES: Final = 1 << 16

#: How each event kind reads in the feed; unknown kinds print their raw fields.
_TEMPLATES: Final = {
    "rig_added": "rig {rig} added ({repo}, branch {default_branch}, prefix {prefix})",
    "rig_removed": "rig {rig} removed",
    "bead_created": "bead {bead} created: {title}",
    "bead_status_changed": "bead {bead} {old} -> {new}{because}",
    "sling_queued": "sling #{sling} queued: {bead} -> {rig}",
    "sling_failed": "sling #{sling} of {bead} to {rig} failed: {error}",
    "sling_cancelled": "sling #{sling} of {bead} to {rig} cancelled: {reason}",
    "bead_updated": "bead {bead} updated ({fields})",
    "polecat_spawning": "polecat {rig}/{polecat} spawning for {bead} on {branch} ({agent})",
    "polecat_working": "polecat {rig}/{polecat} working on {bead}",
    "polecat_done": "polecat {rig}/{polecat} done ({bead})",
    "polecat_stalled": "polecat {rig}/{polecat} stalled",
    "polecat_escalated": "polecat {rig}/{polecat} ESCALATED: {reason}",
    "polecat_rejected": "polecat {rig}/{polecat} rejected: {reason}",
    "polecat_merging": "polecat {rig}/{polecat} merging",
    "polecat_nuked": "polecat {rig}/{polecat} nuked",
    "mr_created": "merge request {mr} queued: {branch} ({bead}){done_by_text}",
    "mr_cancelled": "merge request {mr} cancelled: {reason}",
    "mr_started": "merge request {mr} started ({bead})",
    "mr_merged": "merge request {mr} MERGED as {short_commit} ({bead})",
    "mr_rejected": "merge request {mr} REJECTED: {reason} ({bead})",
    "mr_requeued": "merge request {mr} queued again: {reason}",
    "polecat_noted": "polecat {rig}/{polecat}: {reason}",
    "agent_turn_ended": "{rig}/{polecat} turn {turn} ended: {short_in} in, {short_out} out"
                        "{cost_text}",
    "polecat_nudged": "{rig}/{polecat} nudged{by_text}: {first_line}",
    "doctor_fixed": "doctor fixed {rig}: {detail}",
    "mq_paused": "merge queue of {rig} PAUSED: {reason}",
    "mq_resumed": "merge queue of {rig} running again",
    "mq_resume_requested": "merge queue of {rig}: resume requested",
    "push_refused": "{rig}: {count} merged commit(s) kept in the refinery's clone, not on "
                    "the remote: {reason}",
    "push_caught_up": "{rig}: the remote has every merged commit again (at {short_head})",
    "crew_updated": "crew {rig}/{crew}: {detail}",
    "store_created": "an empty store was created at {path}",
    "store_adopted": "{path} was adopted as the town's store",
    "role_started": "{role} started (pid {pid})",
    "role_ready": "{role} ready (pid {pid})",
    "role_exited": "{role} exited ({exit}), restarts so far {restarts}",
    "role_restarting": "{role} restarting in {delay}s",
    "role_failed": "{role} FAILED: {reason}",
    "role_stopped": "{role} stopped",
    "supervisor_started": "supervisor started (pid {pid})",
    "town_reloaded": "configuration reloaded ({reason}); restarted: {restarted}",
    "reload_refused": "configuration reload REFUSED ({reason}): {error}",
    "supervisor_stopping": "supervisor stopping ({reason})",
}


def describe_exit(code: int | None) -> str:
    """``0`` -> ``exit 0``, ``-9`` -> ``killed by SIGKILL``, None -> ``did not start``."""
    import signal

    if code is None:
        return "did not start"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


class EventLog:
    """Append-only writer of ``events.jsonl``; exactly one per town (the supervisor)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_seq = _repair_and_last_seq(path)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def append(self, events: Iterable[dict[str, Any]]) -> int:
        """Append events with a ``seq`` above the last written; returns how many."""
        written = 0
        for event in events:
            if event["seq"] <= self.last_seq:
                continue
            self._file.write(json.dumps(event, ensure_ascii=False, sort_keys=False) + "\n")
            self.last_seq = event["seq"]
            written += 1
        self._file.flush()
        return written

    def close(self) -> None:
        self._file.close()


def _repair_and_last_seq(path: Path) -> int:
    """Cut a torn last line (a writer killed mid-line) and return the last complete seq."""
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - _TAIL_BYTES)
        f.seek(start)
        tail = f.read()
        if tail and not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            f.truncate(start + cut + 1 if cut >= 0 else start)
            tail = tail[: cut + 1] if cut >= 0 else b""
    for line in reversed(tail.splitlines()):
        try:
            return int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def read_feed(path: Path, outbox: Iterable[dict[str, Any]] = ()) -> Iterator[dict[str, Any]]:
    """Every event in ``events.jsonl``, then those of ``outbox`` not yet copied there."""
    last = 0
    if path.exists():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                last = max(last, int(event.get("seq", 0)))
                yield event
    for event in outbox:
        if event["seq"] > last:
            yield event


def format_event(event: dict[str, Any]) -> str:
    """One readable line: ``HH:MM:SS  kind  text``."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.get("ts", 0)))
    fields = {k: _text(v) for k, v in event.items()}
    if "last_exit" in fields:
        fields["exit"] = describe_exit(fields["last_exit"])
    fields["because"] = f" ({fields['reason']})" if fields.get("reason") else ""
    fields["short_commit"] = str(fields.get("commit", ""))[:10]
    fields["short_head"] = str(fields.get("head", ""))[:10]
    if event.get("kind") in ("agent_turn_ended", "polecat_nudged", "mr_created"):
        _agent_fields(event, fields)
    template = _TEMPLATES.get(event.get("kind", ""))
    if template is not None:
        try:
            return f"{stamp}  {template.format_map(_Missing(fields))}"
        except (ValueError, IndexError):
            pass
    extra = " ".join(f"{k}={_text(v)}" for k, v in event.items()
                     if k not in ("seq", "ts", "kind"))
    return f"{stamp}  {event.get('kind')} {extra}".rstrip()


def _agent_fields(event: dict[str, Any], fields: dict[str, Any]) -> None:
    """Fields of the agents' events: short token counts, the cost, who nudged or recorded."""
    from ..roles.adapters.agent_usage import dollars, short_count

    for key, short in (("tokens_in", "short_in"), ("tokens_out", "short_out")):
        value = event.get(key)
        fields[short] = short_count(value) if isinstance(value, int) else "?"
    cost = event.get("cost_usd")
    fields["cost_text"] = f", {dollars(cost)}" if isinstance(cost, int | float) and cost > 0 \
        else ""
    fields["by_text"] = f" by {event['by']}" if event.get("by") else ""
    fields["first_line"] = (str(event.get("text") or "").strip().splitlines() or [""])[0]
    fields["done_by_text"] = " (by witness)" if event.get("done_by") == "witness" else ""


def _text(value: Any) -> Any:
    """Lists read as the CLI prints them: ``a, b`` (``nothing`` when empty)."""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) if value else "nothing"
    return value


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"
