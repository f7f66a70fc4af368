"""The one polling wait of the test suite, for what no event reports.

Tests wait on events where there are some (``tests/e2e/feed_waiter.py`` for a town's domain
events). What remains is watching other processes from outside: a pid dying, a process
group emptying, a file another process writes. :func:`wait_until` re-checks such a
condition until it holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], *, timeout: float = 90.0,
               what: str = "condition", every: float = 0.02) -> T:
    """Re-check ``check`` every ``every`` seconds until it returns a truthy value (which
    is returned); fail the test after ``timeout`` seconds.

    A check that is itself slow (one that runs the CLI costs a Python start) is re-run only
    after a pause as long as it took: a wait keeps at most half a core busy, and the other
    test workers on the machine keep the rest."""
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        value = check()
        if value:
            return value
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(min(max(every, now - started), max(0.0, deadline - now)))
