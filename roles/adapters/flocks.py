"""``flock`` on a file: try without waiting, or wait a bounded time, event-driven.

Layer: a roles adapter, below :mod:`.town_lock` (the supervisor and start-up locks) and
:mod:`.role_lock` (one process per role), which hold their locks with these.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path


def try_flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def flock_within(fd: int, operation: int, timeout: float) -> bool:
    """Take ``flock(fd, operation)``, waiting at most ``timeout`` seconds; True if taken.

    Event-driven: a blocking ``flock`` in a daemon thread returns the moment the kernel
    releases the conflicting lock. On False the thread owns ``fd`` from then on (it
    closes it when its ``flock`` returns, releasing what it got): the caller must not
    use or close it. On True the caller owns ``fd`` and the lock.
    """
    taken = threading.Event()
    mutex = threading.Lock()
    abandoned = False

    def wait() -> None:
        try:
            fcntl.flock(fd, operation)
        except OSError:
            pass
        with mutex:
            if abandoned:
                os.close(fd)
            else:
                taken.set()

    threading.Thread(target=wait, name="flock-wait", daemon=True).start()
    if taken.wait(max(timeout, 0.0)):
        return True
    with mutex:
        if taken.is_set():
            return True
        abandoned = True
    return False


def wait_lock_free(path: Path, timeout: float) -> bool:
    """Block until nobody holds an exclusive lock on ``path``, at most ``timeout`` s."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    if flock_within(fd, fcntl.LOCK_SH, timeout):
        os.close(fd)
        return True
    return False
