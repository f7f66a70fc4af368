"""The store from trio code: each call runs in a worker thread, one at a time.

SQLite calls can block (a busy database waits up to the busy timeout), and a blocked
trio thread stalls every task of the process: so calls go through
``trio.to_thread.run_sync``, serialised by a lock because one connection must not be
used by two threads at once.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ParamSpec, TypeVar

import trio

from .store import Store, open_store

P = ParamSpec("P")
R = TypeVar("R")


class AsyncStore:
    """A :class:`Store` used from trio; ``await astore.call(Store.method, ...)``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = trio.Lock()

    @classmethod
    async def open(cls, path: Path) -> AsyncStore:
        return cls(await trio.to_thread.run_sync(open_store, path))

    async def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` (typically a bound Store method) in a worker thread.

        Shield the caller when the write must happen even under cancellation: a
        cancelled call may or may not have run, but never runs half a transaction.
        """
        async with self._lock:
            return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))

    def close(self) -> None:
        self.store.close()
