"""A blocking bus client for the CLI: one request, or following publications, without trio.

Layer: bus (a blocking socket), used by the CLI.

The CLI must start fast, so this module imports no trio (and nothing that
does): a plain blocking ``socket``, the shared framing and protocol, and the
shared error classes, so that ``except RemoteError`` means the same thing
here as in trio code. Each call opens its own connection and closes it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from . import protocol
from .errors import (
    BusDisconnected,
    BusTimeout,
    BusUnavailable,
    NameRefused,
    RemoteError,
)
from .frames import MAX_FRAME, READ_CHUNK, FrameDecoder, encode_frame
from .protocol import BusMessage
from .requests import Request, params_of

_HELLO_ID: Final = 0
_REQUEST_ID: Final = 1


def _connect(path: Path, timeout: float | None) -> socket.socket:
    """A connected socket, or :class:`BusUnavailable` with a one-line reason."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except BaseException as exc:
        sock.close()
        if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
            raise BusUnavailable(f"the town is not running (no bus at {path})") from exc
        if isinstance(exc, PermissionError):
            raise BusUnavailable(f"cannot reach the bus at {path}: permission denied") from exc
        if isinstance(exc, OSError):
            raise BusUnavailable(f"cannot reach the bus at {path}: {exc.strerror or exc}") from exc
        raise
    return sock


def _receive(sock: socket.socket, decoder: FrameDecoder,
             deadline: float | None) -> Iterator[protocol.ServerMessage]:
    """Messages from the bus until EOF (:class:`BusDisconnected`) or ``deadline`` (TimeoutError)."""
    while True:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
        try:
            data = sock.recv(READ_CHUNK)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise BusDisconnected(f"the bus connection broke: {exc}") from exc
        if not data:
            raise BusDisconnected("the bus closed the connection (has the town stopped?)")
        for raw in decoder.feed(data):
            yield protocol.parse_server_message(raw)


def _check_hello(message: protocol.ServerMessage, name: str) -> None:
    """Raise :class:`NameRefused` if ``message`` is the bus refusing our ``hello``."""
    if message["op"] == "rep" and message["id"] == _HELLO_ID and "error" in message:
        raise NameRefused(f"the bus refused the name {name!r}: {message['error']}")


def _refuse(sock: socket.socket, request: protocol.Req, name: str) -> None:
    """Answer a request routed to this one-shot client, so its sender is not left waiting."""
    sock.sendall(encode_frame(protocol.rep_error(request["id"], f"{name} serves no requests")))


def request_sync(path: Path, to: str, method: str, params: Mapping[str, Any] | None = None,
                 *, timeout: float = 10.0, name: str = "cli", max_frame: int = MAX_FRAME) -> Any:
    """Ask peer ``to`` (or ``"bus"``) to run ``method``, blocking; return its result.

    ``name`` need not be unique: replies are routed by connection, so parallel
    CLI invocations all called ``"cli"`` do not disturb each other.

    Raises:
        BusUnavailable: no bus at ``path`` (the town is not running).
        RemoteError: the peer or the bus answered with an error.
        BusTimeout: no reply within ``timeout`` seconds.
        BusDisconnected: the bus closed the connection before replying.
        NameRefused: ``name`` is a role's name, which only that role's process may hold.
        FrameError: the request is too large, or the bus sent a malformed frame.
    """
    deadline = time.monotonic() + timeout
    with _connect(path, timeout) as sock:
        try:
            sock.sendall(encode_frame(protocol.hello(name, _HELLO_ID))
                         + encode_frame(protocol.req(_REQUEST_ID, to, method, params)))
            for message in _receive(sock, FrameDecoder(max_frame), deadline):
                _check_hello(message, name)
                if message["op"] == "rep" and message["id"] == _REQUEST_ID:
                    if "error" in message:
                        raise RemoteError(message["error"])
                    return message.get("result")
                if message["op"] == "req":
                    _refuse(sock, message, name)
        except TimeoutError:
            raise BusTimeout(f"no reply from {to} to {method!r} within {timeout:g}s") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise BusDisconnected(f"the bus connection broke: {exc}") from exc
    raise AssertionError("unreachable: _receive only ends by raising")  # pragma: no cover


def call_sync(path: Path, to: str, request: Request, *, timeout: float = 10.0,
              name: str = "cli") -> Any:
    """Send the typed ``request`` to ``to`` (see :mod:`.requests`); as :func:`request_sync`."""
    return request_sync(path, to, request.method, params_of(request), timeout=timeout,
                        name=name)


class MessageFollower:
    """The iterator :func:`iter_messages_sync` returns: publications, as they happen.

    Iterating blocks until the next publication. It ends only by raising
    :class:`BusDisconnected` (the town stopped). :meth:`close` (or leaving a
    ``with`` block) closes the connection.
    """

    def __init__(self, sock: socket.socket, decoder: FrameDecoder, early: list[BusMessage],
                 name: str) -> None:
        self._sock = sock
        self._early = early
        self._name = name
        self._messages = _receive(sock, decoder, None)

    def __iter__(self) -> MessageFollower:
        return self

    def __next__(self) -> BusMessage:
        if self._early:
            return self._early.pop(0)
        for message in self._messages:
            if message["op"] == "msg" or message["op"] == "dropped":
                return protocol.to_bus_message(message)
            if message["op"] == "req":
                _refuse(self._sock, message, self._name)
        raise AssertionError("unreachable: _receive only ends by raising")  # pragma: no cover

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> MessageFollower:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def iter_messages_sync(path: Path, topics: list[str] | tuple[str, ...], *, name: str = "cli",
                       connect_timeout: float = 10.0, max_frame: int = MAX_FRAME,
                       ) -> MessageFollower:
    """Subscribe to ``topics`` (``"*"`` for all), blocking; return an iterator of publications.

    For ``gastown feed -f``. The subscription is live when this returns, so a
    caller can print the history from ``events.jsonl`` first and then follow
    without a gap (it may see an event twice, never miss one). A
    ``bus.dropped`` message (data ``{"count": N}``) reports publications this
    reader was too slow for.

    Raises:
        ValueError: no topics.
        BusUnavailable: no bus at ``path``.
        BusTimeout: the bus did not acknowledge within ``connect_timeout``.
        BusDisconnected: the bus closed the connection (here or while iterating).
        NameRefused: ``name`` is a role's name, which only that role's process may hold.
    """
    if not topics:
        raise ValueError("iter_messages_sync needs at least one topic")
    sock = _connect(path, connect_timeout)
    decoder = FrameDecoder(max_frame)
    early: list[BusMessage] = []
    try:
        sock.sendall(encode_frame(protocol.hello(name, _HELLO_ID))
                     + encode_frame(protocol.sub(list(topics), _REQUEST_ID)))
        deadline = time.monotonic() + connect_timeout
        for message in _receive(sock, decoder, deadline):
            _check_hello(message, name)
            if message["op"] == "rep" and message["id"] == _REQUEST_ID:
                break
            if message["op"] == "msg" or message["op"] == "dropped":
                early.append(protocol.to_bus_message(message))
            elif message["op"] == "req":
                _refuse(sock, message, name)
        sock.settimeout(None)
    except TimeoutError:
        sock.close()
        raise BusTimeout(f"the bus at {path} did not acknowledge the subscription "
                         f"within {connect_timeout:g}s") from None
    except (BrokenPipeError, ConnectionResetError) as exc:
        sock.close()
        raise BusDisconnected(f"the bus connection broke: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    return MessageFollower(sock, decoder, early, name)
