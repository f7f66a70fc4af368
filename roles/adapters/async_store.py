"""The store from trio code: store calls and whole operations, each in a worker thread.

Layer: adapters (SQLite, threads). SQLite calls can block (a busy database waits up to
the busy timeout), and a blocked trio thread stalls every task of the process: so they
run through ``trio.to_thread.run_sync``. Two kinds of call, two rules:

- :meth:`AsyncStore.call` runs one store method (a read, one transaction) on the role's
  own connection, serialised by a lock because one connection must not be used by two
  threads at once. It is short: a few milliseconds.
- :meth:`AsyncStore.operate` runs a whole operation (a spawn: worktree, session; a nuke:
  a session's grace period, git) on a connection of its own from a small pool, so it
  holds no lock that store reads wait behind, and operations on different polecats run
  side by side. Work that must not overlap for one polecat takes its key in an
  :class:`OperationLocks` (the rows are safe either way: every lifecycle change is a
  compare-and-set in the store).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Concatenate, Final, ParamSpec, TypeVar

import trio

from .store import Store, open_store
from .town import Town

P = ParamSpec("P")
R = TypeVar("R")

#: Idle connections kept for operations; more run at once open more, then close them.
POOL_SIZE: Final = 4


class AsyncStore:
    """A :class:`Store` used from trio; ``await astore.call(Store.method, ...)``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = trio.Lock()
        self._idle: list[Store] = []

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

    async def operate(self, fn: Callable[Concatenate[Town, Store, P], R], town: Town,
                      *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the operation ``fn(town, store, *args, **kwargs)`` in a worker thread, on a
        pooled connection of its own: nothing else of this process waits for it."""
        store = self._idle.pop() if self._idle else None

        def run() -> tuple[Store, R]:
            own = store if store is not None else open_store(self.store.path)
            try:
                return own, fn(town, own, *args, **kwargs)
            except BaseException:
                own.close()  # a failed operation's connection is not reused
                raise

        own, result = await trio.to_thread.run_sync(run)
        if len(self._idle) < POOL_SIZE:
            self._idle.append(own)
        else:
            own.close()
        return result

    def close(self) -> None:
        for store in self._idle:
            store.close()
        self._idle.clear()
        self.store.close()


class OperationLocks:
    """One trio lock per key (a polecat's name), made on demand and dropped when free."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (trio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
