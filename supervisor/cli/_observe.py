"""Commands that watch the town: ``logs`` (role log files) and ``feed`` (domain events).

Layer: cli, over :mod:`gastown.supervisor.logview` and :mod:`gastown.supervisor.feed`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ._context import store_of, town_of


def cmd_logs(args: argparse.Namespace) -> int:
    from ...roles.core.errors import UsageError
    from ..logview import (
        follow,
        format_line,
        merged,
        role_log_files,
        role_names,
    )

    town = town_of(args)
    if args.role is not None and not any(
            p.exists() or any(p.parent.glob(p.name + ".*"))
            for p in role_log_files(town.logs_dir, args.role)):
        raise UsageError(f"no log for role {args.role!r} in {town.logs_dir} (roles: "
                         f"{', '.join(role_names(town.logs_dir))})")

    def show(line: object) -> None:
        from ..logview import LogLine

        assert isinstance(line, LogLine)
        print(line.raw if args.json else format_line(line), flush=True)

    for line in merged(role_log_files(town.logs_dir, args.role), last=args.n):
        show(line)
    if args.follow:
        try:
            for line in follow(town.logs_dir, args.role):
                show(line)
        except KeyboardInterrupt:
            return 0
    return 0


def cmd_feed(args: argparse.Namespace) -> int:
    from ...roles.core.config import parse_duration
    from ...roles.core.errors import UsageError
    from ..feed import format_event, read_feed

    since = None
    if args.since is not None:
        seconds = parse_duration(args.since)
        if seconds is None:
            raise UsageError(f"--since wants a duration such as 10m or 2h, not {args.since!r}")
        since = time.time() - seconds
    town = town_of(args)
    with store_of(town) as store:
        outbox = [e.as_json() for e in store.events_after(0, limit=1_000_000)]
    last_seq = 0

    def show(event: dict[str, object]) -> None:
        nonlocal last_seq
        seq = event.get("seq")
        if isinstance(seq, int):
            if seq <= last_seq:
                return
            last_seq = seq
        ts = event.get("ts")
        if since is not None and isinstance(ts, int | float) and ts < since:
            return
        print(json.dumps(event) if args.json else format_event(event), flush=True)

    offset = _size(town.events_path)  # before the first read: what is appended later
    for event in read_feed(town.events_path, outbox):
        show(event)
    if args.follow:
        import watchfiles

        # The watch arms after the first read: an event appended in between would wait for
        # the next one, so every quiet second also reads on from the last offset (cheap:
        # only what was appended; events seen twice are dropped by their seq).
        try:
            for _ in watchfiles.watch(town.root, recursive=False, debounce=50, step=20,
                                      watch_filter=lambda _c, p: p.endswith("events.jsonl"),
                                      rust_timeout=1000, yield_on_timeout=True):
                events, offset = _read_on(town.events_path, offset)
                for event in events:
                    show(event)
        except KeyboardInterrupt:
            return 0
    return 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_on(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete event lines appended to ``path`` since ``offset``, and the new offset
    (back to 0 when the file was replaced by a shorter one)."""
    if _size(path) < offset:
        offset = 0
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, offset + end


