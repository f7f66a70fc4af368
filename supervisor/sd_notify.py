"""Tell systemd about the supervisor's state (``Type=notify``): one datagram, stdlib only.

Layer: supervisor (a datagram socket), used by :mod:`.supervisor` and :mod:`.readiness`.

The protocol (``sd_notify(3)``) is newline-separated ``KEY=value`` assignments in one
datagram to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET``; a leading ``@`` means
the abstract namespace. No ``SCM_CREDENTIALS`` are needed: the kernel attaches the
sender's credentials because systemd sets ``SO_PASSCRED`` on its end. We keep our
own ~30 lines rather than a package: ``sdnotify`` swallows every error and the
others are C extensions (see reference/process-supervisors.md). Roles never call
this: ``NOTIFY_SOCKET`` is scrubbed from their environment.
"""

from __future__ import annotations

import os
import socket


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=3 roles up"``) to systemd.

    Returns:
        True when the datagram was sent; False when ``$NOTIFY_SOCKET`` is unset or
        empty (not running under systemd), or when sending failed. Notifications are
        best-effort and idempotent (a missed ``WATCHDOG=1`` is followed by the next),
        so a full or vanished socket never raises and never blocks.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    payload = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(payload, address)
    except OSError:
        return False
    return True
