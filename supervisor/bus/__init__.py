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

This package's ``__init__`` must stay importable without trio: ``gastown
status`` imports :func:`request_sync` through it and should not pay trio's
import time. The trio names (:func:`serve_bus`, :class:`BusServer`,
:func:`open_bus_client`, :class:`BusClient`) are therefore re-exported
lazily: the first access imports their module. Type checkers see them
through the ``TYPE_CHECKING`` imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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
from .protocol import (
    ALL_TOPICS,
    BUS_PEER,
    DROPPED_TOPIC,
    BusMessage,
    RequestHandler,
)
from .sync_client import MessageFollower, call_sync, iter_messages_sync, request_sync

if TYPE_CHECKING:
    from .client import BusClient, open_bus_client
    from .server import BusServer, serve_bus

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

#: Trio-based names, imported from their module on first access.
_LAZY = {
    "BusClient": "client",
    "open_bus_client": "client",
    "BusServer": "server",
    "serve_bus": "server",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
