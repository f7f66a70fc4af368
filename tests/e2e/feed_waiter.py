"""Waiting on a town's domain events instead of polling its state.

:class:`FeedWaiter` runs one ``gastown feed -f --json`` for the test town (the real CLI in
its own process, forked from the test's CLI template like the suite's other commands),
reads its lines in a thread, and lets a test block until an event that matches (kind,
fields, a predicate) has been printed. The supervisor copies an event to
``events.jsonl`` only after the transaction that emitted it committed, so once the event
is seen, ``status``/``bead list``/``mq list`` already show the state it reports.

Waiting never sleeps: it waits on a condition that the reader thread signals per line. A
timeout fails the test with the events seen last (and the feed's stderr if it died).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Any

from tests import cli_template
from tests.conftest import Cli

Event = dict[str, Any]


class FeedWaiter:
    """One ``gastown feed -f --json`` follower for the town ``cli`` points at."""

    def __init__(self, cli: Cli) -> None:
        self._cli = cli
        self._events: list[Event] = []
        self._cond = threading.Condition()
        self._ended = False
        self._proc: cli_template.Running | subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    # -- life -----------------------------------------------------------------------------

    def start(self) -> FeedWaiter:
        # Forked from the test process's CLI template (tests/cli_template.py), as the
        # suite's other commands are: a Python start per follower was ~4 % of its CPU.
        self._proc = cli_template.start(["feed", "-f", "--json"], cwd=self._cli.cwd,
                                        env=dict(self._cli.env))
        self._thread = threading.Thread(target=self._read, name="feed-waiter", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if isinstance(proc, cli_template.Running):
            proc.close()  # its pipes and its connection to the template
        else:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self._proc = None

    def __enter__(self) -> FeedWaiter:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"kind": "<unparsed feed line>", "line": line.rstrip("\n")}
            with self._cond:
                self._events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    # -- reading --------------------------------------------------------------------------

    def mark(self) -> int:
        """How many events were seen so far: pass it as ``after`` to wait for newer ones."""
        with self._cond:
            return len(self._events)

    def seen(self) -> list[Event]:
        with self._cond:
            return list(self._events)

    def wait(self, kind: str | Collection[str], *, timeout: float = 90.0, after: int = 0,
             where: Callable[[Event], bool] | None = None, what: str = "",
             **fields: object) -> Event:
        """The first event (from index ``after``) of ``kind`` whose fields equal ``fields``
        and for which ``where`` holds; waits for it up to ``timeout`` seconds."""
        return self.wait_count(kind, 1, timeout=timeout, after=after, where=where, what=what,
                               **fields)[0]

    def wait_count(self, kind: str | Collection[str], count: int, *, timeout: float = 90.0,
                   after: int = 0, where: Callable[[Event], bool] | None = None,
                   what: str = "", **fields: object) -> list[Event]:
        """The first ``count`` matching events (see :meth:`wait`), once that many were seen."""
        kinds = {kind} if isinstance(kind, str) else set(kind)

        def matches(event: Event) -> bool:
            return (event.get("kind") in kinds
                    and all(event.get(k) == v for k, v in fields.items())
                    and (where is None or where(event)))

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self._events[after:] if matches(e)]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    break
                self._cond.wait(left)
        wanted = what or f"{count} x {sorted(kinds)} {fields or ''}".rstrip()
        raise AssertionError(self._failure(wanted, len(found), timeout))

    def wait_each(self, kind: str | Collection[str], key: str, values: Collection[object], *,
                  timeout: float = 90.0, after: int = 0,
                  where: Callable[[Event], bool] | None = None,
                  what: str = "") -> dict[object, Event]:
        """For each of ``values``, the first event of ``kind`` whose ``key`` field is that
        value (and for which ``where`` holds): ``{value: event}``, once all were seen."""
        kinds = {kind} if isinstance(kind, str) else set(kind)
        wanted = set(values)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                first: dict[object, Event] = {}
                for e in self._events[after:]:
                    if (e.get("kind") in kinds and e.get(key) in wanted
                            and (where is None or where(e))):
                        first.setdefault(e.get(key), e)
                if len(first) == len(wanted):
                    return first
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    break
                self._cond.wait(left)
        missing = sorted(str(v) for v in wanted - set(first))
        raise AssertionError(self._failure(
            what or f"{sorted(kinds)} for each {key}; still missing {missing}", len(first),
            timeout))

    def wait_settled(self, mrs: Collection[str] | int, *, timeout: float = 90.0,
                     after: int = 0) -> list[Event]:
        """The terminal event (merged, rejected, cancelled) of each merge request: of the
        ids in ``mrs``, or of the first ``mrs`` distinct merge requests to end."""
        ends = ("mr_merged", "mr_rejected", "mr_cancelled")
        wanted = mrs if isinstance(mrs, int) else len(mrs)
        ids = None if isinstance(mrs, int) else set(mrs)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                first: dict[str, Event] = {}
                for e in self._events[after:]:
                    mr = str(e.get("mr"))
                    if e.get("kind") in ends and (ids is None or mr in ids):
                        first.setdefault(mr, e)
                if len(first) >= wanted:
                    return list(first.values())[:wanted]
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    break
                self._cond.wait(left)
        raise AssertionError(self._failure(f"{wanted} merge request(s) to end", len(first),
                                           timeout))

    def _failure(self, wanted: str, found: int, timeout: float) -> str:
        last = "\n".join("  " + json.dumps(e)[:400] for e in self.seen()[-25:]) or "  (none)"
        head = (f"the feed ended (exit {self._proc.poll() if self._proc else '?'})"
                if self._ended else f"timed out after {timeout}s")
        err = ""
        if self._ended and self._proc is not None and self._proc.stderr is not None:
            err = "\nfeed stderr:\n" + self._proc.stderr.read()[-2000:]
        return (f"{head} waiting for {wanted} (matched {found}); "
                f"last events seen:\n{last}{err}")
