"""The domain event feed: ``events.jsonl``, its single writer, and how it reads to people.

Layer: supervisor (a file), used by the relay (the single writer) and by the CLI's ``feed``
and ``status`` (readers).

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

from ..roles.core.event_text import describe_exit as describe_exit
from ..roles.core.event_text import describe_fields

_TAIL_BYTES: Final = 1 << 16


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
    """One readable line: ``YYYY-MM-DD HH:MM:SS  text`` (the text: :mod:`event_text`)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.get("ts", 0)))
    return f"{stamp}  {describe_fields(event)}"
