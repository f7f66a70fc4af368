"""The bus's errors, importable without trio so that the CLI can catch them cheaply.

Layer: the bottom of the town (``supervisor/bus`` imports nothing from ``roles`` or
the rest of ``supervisor``). That is why :class:`GastownError`, the root of every
error a user can cause, is defined here: the bus's errors derive from it, and
:mod:`gastown.roles.core.errors` re-exports it beside the domain's own errors. A CLI
command that lets one escape prints its one-line message and exits 1. This
module must never import trio, sockets or anything else with side effects:
:mod:`gastown.supervisor.bus.sync_client` and the pure :mod:`frames` and
:mod:`protocol` modules depend on it.
"""

from __future__ import annotations


class GastownError(Exception):
    """Base class: an operation failed for a reason the user can act on (exit 1).

    ``gastown.supervisor.cli.main`` is the only place that catches it: it prints
    ``gastown: <message>`` on one line and exits with :attr:`exit_code`.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BusError(GastownError):
    """Base class of every error the bus raises."""


class FrameError(BusError):
    """A frame is oversized, is not UTF-8 JSON, or is not a JSON object.

    The byte stream it came from cannot be trusted past this point (frame
    boundaries may be lost), so whoever reads it closes that connection.
    Also raised by :func:`~gastown.supervisor.bus.frames.encode_frame` for a
    message that cannot be sent: too large, or not representable as JSON.
    """


class ProtocolError(BusError):
    """A well-formed frame holds a message the protocol does not allow.

    Examples: an unknown ``op``, a missing field, a request before ``hello``.
    Handled like :class:`FrameError`: the offending connection is closed.
    """


class BusPathError(BusError):
    """The socket path cannot be used: too long for ``sun_path``, not a socket, or unsafe.

    Raised by the server before it binds, so nothing was created.
    """


class BusAlreadyRunning(BusError):
    """Another bus is alive at the socket path (a probe connected), so this one refused to start."""


class BusUnavailable(BusError):
    """A client could not reach the bus: the socket is missing, refuses connections, or is denied.

    The message is one line meant for a user, e.g. "the town is not running (no bus at PATH)".
    """


class NameRefused(BusError):
    """The bus refused the name a client claimed in its ``hello``.

    A role's name (``mayor``, ``witness:<rig>``, ``refinery:<rig>``) belongs to the
    process the supervisor spawned for it; anyone else may connect only under another
    name, as an anonymous client. The message carries the bus's reason.
    """


class BusDisconnected(BusError):
    """The connection to the bus dropped (or was closed) while, or before, a client waited on it.

    Roles treat it as "reconnect with back-off"; the CLI reports it as the town having stopped.
    """


class BusTimeout(BusError):
    """A synchronous request got no reply within its timeout.

    The async client raises :class:`trio.TooSlowError` instead, as trio code expects.
    """


class RemoteError(BusError):
    """The peer (or the bus itself) answered a request with an error.

    :attr:`message` is the peer's text: ``str(exc)`` of the handler's exception,
    or the bus's own reason (``"no such peer: mayor"``, ``"peer busy: mayor"``,
    ``"peer gone: mayor"``).
    """
