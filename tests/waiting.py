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
    is returned); fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
