"""Waking the supervisor when the store commits events: one datagram on a Unix socket.

Layer: adapters (a socket). Every transaction that wrote a domain event sends one
datagram to ``<town>/.runtime/wake`` after its commit (:func:`send_wake`, called by the
store itself), and the supervisor's feed relay, bound there (:class:`WakeSocket`), drains
the outbox at once: no caller pokes by hand, and none can forget to. Best effort by
design: the event is already committed, a town that is down has no listener, and a full
queue means the supervisor is already awake; the relay's slow safety timer covers a
datagram lost to a crash between the commit and the send.

The socket lives in the owner-only runtime folder (mode 0700), so only the town's user
can wake it; a datagram carries nothing but the fact that something was committed.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Final

#: The wake socket's name in the town's runtime folder (shorter than the bus's
#: ``bus.sock``, so any town whose bus fits ``sun_path`` fits it too).
WAKE_NAME: Final = "wake"


def wake_path(db_path: Path) -> Path:
    """The wake socket of the town whose store is ``db_path`` (``<town>/state.db``)."""
    return db_path.parent / ".runtime" / WAKE_NAME


def send_wake(path: Path) -> bool:
    """Send one wake datagram to ``path``; whether it was delivered. Never raises."""
    try:
        with socket.socket(socket.AF_UNIX,
                           socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC) as s:
            s.sendto(b"w", str(path))
    except OSError:  # no listener (town down), a full queue (already awake), path too long
        return False
    return True


class WakeSocket:
    """The receiving end, bound by the supervisor: a datagram socket at :func:`wake_path`.

    Only the process holding the town's supervisor lock binds it, so removing a stale
    socket file first is safe.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(str(path))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> int:
        """Read every queued datagram without blocking; how many there were."""
        count = 0
        while True:
            try:
                self.sock.recv(16)
            except BlockingIOError:
                return count
            count += 1

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
