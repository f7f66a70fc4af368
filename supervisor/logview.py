"""Reading the town's logs: role log files merged by time, and following them live.

Layer: supervisor (log files), used by the CLI's ``logs``.

Each process writes JSON lines to its own ``logs/<role>.log`` (rotated to ``.log.1``,
``.log.2`` ...). Readers merge them by timestamp; followers watch the ``logs/`` folder
(watchfiles, non-recursive) and notice a rotation by the file's inode changing, finish
the old file, then read the new one from its start. Nothing here imports trio.
"""

from __future__ import annotations

import heapq
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from ..roles.adapters.log import CONTEXT_KEYS, log_file_name


@dataclass(frozen=True)
class LogLine:
    timestamp: str
    source: str
    record: dict[str, Any]
    raw: str


#: The kinds of process that log; ``--role KIND`` means every one of that kind (all rigs).
ROLE_KINDS: Final = ("mayor", "witness", "refinery", "supervisor", "cli")


def role_log_files(logs_dir: Path, role: str | None) -> list[Path]:
    """The current log files of ``role``: one exact name (``refinery:web``), a kind
    (``refinery``: every rig's), or every process when None."""
    if role is not None and role not in ROLE_KINDS:
        return [logs_dir / log_file_name(role)]
    current = set(logs_dir.glob("*.log"))
    # A file that has just rotated exists only as ``<name>.log.1`` until its next line.
    current |= {p.with_name(p.name.rsplit(".", 1)[0]) for p in logs_dir.glob("*.log.*")
                if p.suffix[1:].isdigit()}
    if role is not None:
        current = {p for p in current if p.stem == role or p.stem.startswith(role + "-")}
    return sorted(current)


def role_names(logs_dir: Path) -> list[str]:
    """What ``--role`` accepts here: the kinds, then each process that has a log."""
    names = []
    for path in role_log_files(logs_dir, None):
        kind, sep, rest = path.stem.partition("-")
        names.append(f"{kind}:{rest}" if sep and kind in ROLE_KINDS else path.stem)
    return [*ROLE_KINDS, *(n for n in names if n not in ROLE_KINDS)]


def _parse(raw: str, source: str) -> LogLine | None:
    raw = raw.rstrip("\n")
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        record = {"event": raw, "level": "raw"}
    if not isinstance(record, dict):
        record = {"event": raw, "level": "raw"}
    return LogLine(str(record.get("timestamp", "")), source, record, raw)


def _read_file(path: Path) -> Iterator[LogLine]:
    """Lines of one role's log, oldest first, rotated files included."""
    rotated = sorted(path.parent.glob(path.name + ".*"),
                     key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
                     reverse=True)
    source = path.name.removesuffix(".log")
    for part in [*rotated, path]:
        try:
            with open(part, encoding="utf-8", errors="replace") as f:
                for raw in f:
                    line = _parse(raw, source)
                    if line is not None:
                        yield line
        except FileNotFoundError:
            continue


def merged(files: Iterable[Path], last: int | None = None) -> list[LogLine]:
    """Every line of ``files`` merged by timestamp; only the last ``last`` when given."""
    lines = list(heapq.merge(*(_read_file(p) for p in files), key=lambda ln: ln.timestamp))
    return lines[-last:] if last is not None and last > 0 else lines


def format_line(line: LogLine) -> str:
    """``2026-11-25 00:16:33 info    witness:web  event  key=value ...``"""
    rec = dict(line.record)
    stamp = rec.pop("timestamp", "")[:19].replace("T", " ")
    level = str(rec.pop("level", ""))
    event = rec.pop("event", "")
    role = rec.pop("role", line.source)
    context = " ".join(f"{k}={rec.pop(k)}" for k in CONTEXT_KEYS[1:] if k in rec)
    rest = " ".join(f"{k}={v}" for k, v in rec.items())
    return "  ".join(p for p in (stamp, f"{level:7}", f"{role:14}", str(event), context, rest)
                     if p).rstrip()


class _Tail:
    """One followed file: reads what was appended, and survives rotation.

    Rotation renames ``x.log`` to ``x.log.1`` (and ``.1`` to ``.2``...), keeping inodes.
    When the current file's inode changes, the old handle is read to its end, then any
    rotated file whose inode was never opened (the file rotated more than once between
    two reads), oldest first, then the new current file from its start.
    """

    def __init__(self, path: Path, *, from_end: bool) -> None:
        self.path = path
        self.file: TextIO | None = None
        self.inode: int | None = None
        self.seen: set[int] = set()
        self._open(from_end=from_end)

    def _open(self, *, from_end: bool) -> None:
        try:
            f = open(self.path, encoding="utf-8", errors="replace")  # noqa: SIM115
        except FileNotFoundError:
            self.file, self.inode = None, None
            return
        self.file, self.inode = f, os.fstat(f.fileno()).st_ino
        self.seen.add(self.inode)
        if from_end:
            f.seek(0, os.SEEK_END)

    def read_new(self) -> list[str]:
        out: list[str] = []
        if self.file is not None:
            out += self.file.readlines()
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        if inode is not None and inode != self.inode:
            # Rotated: the old file is finished (read above); the new one starts at 0.
            if self.file is not None:
                self.file.close()
            out += self._unseen_rotations()
            self._open(from_end=False)
            if self.file is not None:
                out += self.file.readlines()
        return out


    def _unseen_rotations(self) -> list[str]:
        rotated = sorted((p for p in self.path.parent.glob(self.path.name + ".*")
                          if p.suffix[1:].isdigit()), key=lambda p: -int(p.suffix[1:]))
        out: list[str] = []
        existing = set()
        for part in rotated:
            try:
                existing.add(part.stat().st_ino)
            except FileNotFoundError:
                continue
        self.seen &= existing  # forget deleted files: the kernel may reuse their inodes
        for part in rotated:
            try:
                with open(part, encoding="utf-8", errors="replace") as f:
                    inode = os.fstat(f.fileno()).st_ino
                    if inode not in self.seen:
                        self.seen.add(inode)
                        out += f.readlines()
            except FileNotFoundError:
                continue
        return out


def follow(logs_dir: Path, role: str | None, stop: threading.Event | None = None,
           ) -> Iterator[LogLine]:
    """Yield lines appended to the role logs from now on, across rotations, until ``stop``."""
    import watchfiles

    tails = {p: _Tail(p, from_end=True) for p in role_log_files(logs_dir, role)}
    for _changes in watchfiles.watch(logs_dir, recursive=False, stop_event=stop,
                                     rust_timeout=1000, yield_on_timeout=True,
                                     debounce=50, step=20):
        for path in role_log_files(logs_dir, role):
            if path not in tails:
                tails[path] = _Tail(path, from_end=False)
        batch: list[LogLine] = []
        for path, tail in tails.items():
            source = path.name.removesuffix(".log")
            for raw in tail.read_new():
                line = _parse(raw, source)
                if line is not None:
                    batch.append(line)
        yield from sorted(batch, key=lambda ln: ln.timestamp)
