"""The local message bus: request/reply and pub/sub between the supervisor, roles and CLI.

Layer: bus, the bottom of the town with ``config``: nothing here imports ``roles``,
``config`` or the rest of ``supervisor``.

Layering, bottom to top (imports only flow upward through this list):

- ``errors``: the exception classes (no trio);
- ``frames``: pure framing, 4-byte big-endian length + UTF-8 JSON object;
- ``protocol``: pure message shapes, builders and validation;
- ``requests``: pure, the town's request methods (a ``Literal``) and their typed
  parameters;
- ``sync_client``: a blocking client for the CLI (no trio);
- ``listener`` (the socket file: path checks, stale-socket probe, 0600 bind,
  ``SO_PEERCRED``) and ``outbox`` (one peer's bounded queue with drop counting),
  both trio adapters under ``server``;
- ``router``: the names peers hold and where each message goes (trio only for
  the handler's task);
- ``server`` and ``client``: the trio server (run by the supervisor; its
  connections) and the trio client (used by roles).

Every name here is re-exported lazily: the first access imports its module. Importing
one submodule (``gastown.supervisor.bus.errors``, which every module of the town reaches
through its error classes) must not import the others: the eager re-exports cost each CLI
command ~25 ms of start-up (the protocol's and the blocking client's imports), and the trio
names would pull in trio itself. Type checkers see the names through the
``TYPE_CHECKING`` imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import BusClient, open_bus_client
    from .errors import (
        BusAlreadyRunning,
        BusDisconnected,
        BusError,
        BusPathError,
        BusTimeout,
        BusUnavailable,
        FrameError,
        NameRefused,
        ProtocolError,
        RemoteError,
    )
    from .frames import MAX_FRAME, FrameDecoder, encode_frame
    from .protocol import ALL_TOPICS, BUS_PEER, DROPPED_TOPIC, BusMessage, RequestHandler
    from .server import BusServer, serve_bus
    from .sync_client import MessageFollower, call_sync, iter_messages_sync, request_sync

__all__ = [
    "ALL_TOPICS",
    "BUS_PEER",
    "DROPPED_TOPIC",
    "MAX_FRAME",
    "BusAlreadyRunning",
    "BusClient",
    "BusDisconnected",
    "BusError",
    "BusMessage",
    "BusPathError",
    "BusServer",
    "BusTimeout",
    "BusUnavailable",
    "FrameDecoder",
    "FrameError",
    "MessageFollower",
    "NameRefused",
    "ProtocolError",
    "RemoteError",
    "RequestHandler",
    "call_sync",
    "encode_frame",
    "iter_messages_sync",
    "open_bus_client",
    "request_sync",
    "serve_bus",
]

#: Where each name lives; imported from its module on first access.
_LAZY = {
    **dict.fromkeys(["BusAlreadyRunning", "BusDisconnected", "BusError", "BusPathError",
                     "BusTimeout", "BusUnavailable", "FrameError", "NameRefused",
                     "ProtocolError", "RemoteError"], "errors"),
    **dict.fromkeys(["MAX_FRAME", "FrameDecoder", "encode_frame"], "frames"),
    **dict.fromkeys(["ALL_TOPICS", "BUS_PEER", "DROPPED_TOPIC", "BusMessage",
                     "RequestHandler"], "protocol"),
    **dict.fromkeys(["MessageFollower", "call_sync", "iter_messages_sync", "request_sync"],
                    "sync_client"),
    **dict.fromkeys(["BusClient", "open_bus_client"], "client"),
    **dict.fromkeys(["BusServer", "serve_bus"], "server"),
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
