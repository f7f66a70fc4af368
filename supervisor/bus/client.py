"""The trio bus client: what roles (and async code in general) use to talk over the bus.

Layer: bus (trio), used by the role loops, the role process and the supervisor's readiness
checks.

A client is a connection with a name. It sends requests and waits for their
replies, publishes, subscribes, and answers requests addressed to its name.
It never blocks its own reader on a slow consumer: subscription channels are
bounded and drop (counted, then reported as a ``bus.dropped`` message), so a
consumer that itself makes a request while its channel is full cannot
deadlock the connection.

When the connection drops, everything waiting on it is released at once:
pending requests raise :class:`BusDisconnected`, subscription channels end,
and every later client call raises :class:`BusDisconnected`. The body of
:func:`open_bus_client` is *not* cancelled: it learns of the loss at its next
client call (or from :meth:`BusClient.wait_disconnected`). A role reconnects
by re-entering :func:`open_bus_client` in a loop with back-off::

    while True:
        try:
            async with open_bus_client(path, "mayor", handler=answer) as bus:
                await run_mayor(bus)
        except (BusUnavailable, BusDisconnected):
            await trio.sleep(backoff.next())
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

from . import protocol
from .errors import (
    BusDisconnected,
    BusUnavailable,
    FrameError,
    NameRefused,
    ProtocolError,
    RemoteError,
)
from .frames import MAX_FRAME, READ_CHUNK, FrameDecoder, encode_frame
from .protocol import BusMessage, RequestHandler
from .requests import Request, params_of

#: Frames queued for the writer before ``publish``/``request`` wait for it.
_OUTGOING_BUFFER: Final = 1000
#: How long the hello, a subscription's acknowledgement and a clean exit's flush may take.
_HANDSHAKE_TIMEOUT: Final = 10.0


@dataclass(eq=False)
class _Waiter:
    """One request (or acknowledged hello/sub) waiting for its reply."""

    done: trio.Event = field(default_factory=trio.Event)
    rep: protocol.Rep | None = None


@dataclass(eq=False)
class _Subscription:
    """One channel handed out by :meth:`BusClient.subscribe`, with its local drop count."""

    topics: frozenset[str]
    channel: trio.MemorySendChannel[BusMessage]
    dropped: int = 0

    def matches(self, topic: str) -> bool:
        return topic in self.topics or protocol.ALL_TOPICS in self.topics

    def offer(self, message: BusMessage | None, dropped_upstream: int = 0) -> bool:
        """Deliver without blocking; return False once the consumer has closed its end.

        Drops, upstream (``dropped_upstream``, from the bus) or here (a full
        channel), accumulate into one ``bus.dropped`` message delivered ahead
        of the next message that fits.
        """
        self.dropped += dropped_upstream
        try:
            if self.dropped:
                self.channel.send_nowait(protocol.to_bus_message(protocol.dropped(self.dropped)))
                self.dropped = 0
            if message is not None:
                self.channel.send_nowait(message)
        except trio.WouldBlock:
            self.dropped += message is not None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True


class BusClient:
    """A named connection to the bus; obtain one from :func:`open_bus_client`.

    Every method raises :class:`BusDisconnected` once the connection is gone.
    """

    def __init__(self, stream: trio.SocketStream, name: str, max_frame: int,
                 handler: RequestHandler | None) -> None:
        self.name = name
        self._stream = stream
        self._max_frame = max_frame
        self._handler = handler
        self._ids = itertools.count(1)
        self._pending: dict[int, _Waiter] = {}
        self._subscriptions: list[_Subscription] = []
        self._outgoing, self._outgoing_rx = trio.open_memory_channel[bytes](_OUTGOING_BUFFER)
        self._io_scope = trio.CancelScope()
        self._writer_done = trio.Event()
        self._disconnected = trio.Event()
        self._reason = ""

    # -- public ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """False once the connection has dropped or been closed; it never comes back."""
        return not self._disconnected.is_set()

    async def wait_disconnected(self) -> None:
        """Return when the connection is gone (for bodies that otherwise never call the client)."""
        await self._disconnected.wait()

    async def request(self, to: str, method: str, params: Mapping[str, Any] | None = None,
                      *, timeout: float = 30.0) -> Any:
        """Ask peer ``to`` (or ``"bus"``) to run ``method``; return its result.

        If the wait ends early (timeout, cancellation) the bus is told to forget
        the request; a late reply is discarded.

        Raises:
            RemoteError: the peer answered with an error, or the bus did
                (``no such peer``, ``peer busy``, ``peer gone``).
            BusDisconnected: the connection dropped before the reply.
            trio.TooSlowError: no reply within ``timeout`` seconds.
            FrameError: the request is too large or not JSON.
        """
        request_id = next(self._ids)
        rep = await self._round_trip(
            request_id, protocol.req(request_id, to, method, params), timeout)
        if "error" in rep:
            raise RemoteError(rep["error"])
        return rep.get("result")

    async def call(self, to: str, request: Request, *, timeout: float = 30.0) -> Any:
        """Send the typed ``request`` to ``to`` (see :mod:`.requests`); as :meth:`request`."""
        return await self.request(to, request.method, params_of(request), timeout=timeout)

    async def publish(self, topic: str, data: Mapping[str, Any]) -> None:
        """Publish ``data`` on ``topic``; returns once queued for sending (no delivery receipt).

        Raises:
            BusDisconnected: the connection is gone.
            FrameError: the message is too large or not JSON.
        """
        await self._send(protocol.pub(topic, data))

    async def subscribe(self, *topics: str, max_buffer: int = 1000,
                        ) -> trio.MemoryReceiveChannel[BusMessage]:
        """Receive publications on ``topics`` (exact names, or ``"*"`` for all).

        Returns once the bus has registered the subscription, so anything
        published afterwards arrives. The channel holds ``max_buffer`` messages;
        beyond that messages are dropped and reported by a ``bus.dropped``
        message (data ``{"count": N}``, sender ``"bus"``), as are drops at the
        bus. The channel ends when the connection does. Closing it only stops
        delivery locally: the bus keeps the subscription for the connection's life.

        Raises:
            ValueError: no topics, or an empty topic name.
            BusDisconnected: the connection is gone.
        """
        if not topics or not all(topics):
            raise ValueError(f"subscribe needs non-empty topic names, got {topics!r}")
        send, receive = trio.open_memory_channel[BusMessage](max_buffer)
        subscription = _Subscription(frozenset(topics), send)
        self._subscriptions.append(subscription)
        request_id = next(self._ids)
        try:
            await self._round_trip(request_id, protocol.sub(list(topics), request_id),
                                   _HANDSHAKE_TIMEOUT)
        except BaseException:
            if subscription in self._subscriptions:  # else _disconnect already dropped it
                self._subscriptions.remove(subscription)
            send.close()
            raise
        return receive

    def serve(self, handler: RequestHandler) -> None:
        """Answer requests addressed to this client's name with ``handler``, replacing any.

        Each request runs in its own task; the result becomes the reply, an
        exception an error reply with ``str(exc)``. Requests that arrive while
        no handler is set get the error ``"NAME serves no requests"``.
        """
        self._handler = handler

    # -- machinery -------------------------------------------------------------------------

    async def _send(self, message: Mapping[str, Any]) -> None:
        frame = encode_frame(message, self._max_frame)
        if not self.connected:
            raise BusDisconnected(self._reason)
        try:
            await self._outgoing.send(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise BusDisconnected(self._reason or "the bus connection is closed") from None

    async def _round_trip(self, request_id: int, message: Mapping[str, Any],
                          timeout: float) -> protocol.Rep:
        waiter = _Waiter()
        self._pending[request_id] = waiter
        try:
            with trio.fail_after(timeout):
                await self._send(message)
                await waiter.done.wait()
        finally:
            if self._pending.pop(request_id, None) is not None and self.connected:
                # We stopped waiting: let the bus forget it. Best effort, never blocks.
                try:
                    self._outgoing.send_nowait(encode_frame(protocol.cancel(request_id)))
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        if waiter.rep is None:
            raise BusDisconnected(self._reason)
        return waiter.rep

    async def _run_io(self) -> None:
        """Run the reader and the writer until the connection ends or the client closes."""
        with self._io_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                self._disconnect(await self._read_loop(nursery))

    async def _read_loop(self, nursery: trio.Nursery) -> str:
        decoder = FrameDecoder(self._max_frame)
        while True:
            try:
                data = await self._stream.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return f"the bus connection broke: {exc.__cause__ or exc}"
            if not data:
                return "the bus closed the connection"
            try:
                for raw in decoder.feed(data):
                    self._dispatch(protocol.parse_server_message(raw), nursery)
            except (FrameError, ProtocolError) as exc:
                return f"bad message from the bus: {exc}"

    async def _write_loop(self) -> None:
        try:
            async for frame in self._outgoing_rx:
                batch = [frame]
                while True:
                    try:
                        batch.append(self._outgoing_rx.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._stream.send_all(b"".join(batch))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._disconnect(f"the bus connection broke: {exc.__cause__ or exc}")
        finally:
            self._writer_done.set()

    def _dispatch(self, message: protocol.ServerMessage, nursery: trio.Nursery) -> None:
        if message["op"] == "msg":
            self._deliver(protocol.to_bus_message(message))
        elif message["op"] == "dropped":
            self._deliver(None, message["count"])
        elif message["op"] == "rep":
            request_id = message["id"]
            waiter = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
            if waiter is not None:  # else a reply we stopped waiting for
                waiter.rep = message
                waiter.done.set()
        elif message["op"] == "req":
            nursery.start_soon(self._answer, message)

    def _deliver(self, message: BusMessage | None, dropped_upstream: int = 0) -> None:
        """Offer a publication (or the bus's drop count) to each matching subscription.

        A drop count goes to every subscription: the bus does not say which
        topics the lost messages had. Subscriptions whose consumer closed are forgotten.
        """
        keep: list[_Subscription] = []
        for subscription in self._subscriptions:
            skip = message is not None and not subscription.matches(message.topic)
            if skip or subscription.offer(message, dropped_upstream):
                keep.append(subscription)
        self._subscriptions = keep

    async def _answer(self, request: protocol.Req) -> None:
        """Run the handler for one incoming request and send its reply."""
        request_id = request["id"]
        if self._handler is None:
            rep = protocol.rep_error(request_id, f"{self.name} serves no requests")
        else:
            try:
                result = await self._handler(request["method"], request["params"],
                                             request.get("from", "?"))
            except Exception as exc:
                rep = protocol.rep_error(request_id, str(exc) or type(exc).__name__)
            else:
                rep = protocol.rep_result(request_id, result)
        try:
            frame = encode_frame(rep, self._max_frame)
        except FrameError as exc:
            frame = encode_frame(protocol.rep_error(request_id, f"reply cannot be sent: {exc}"))
        try:
            await self._outgoing.send(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # disconnected: the requester has been told "peer gone"

    def _disconnect(self, reason: str) -> None:
        """Release everything that waits on the connection. Idempotent; the first reason wins."""
        if self._disconnected.is_set():
            return
        self._reason = reason
        self._disconnected.set()
        for waiter in self._pending.values():
            waiter.done.set()  # rep stays None: BusDisconnected
        self._pending.clear()
        for subscription in self._subscriptions:
            subscription.channel.close()
        self._subscriptions.clear()
        self._outgoing.close()
        self._io_scope.cancel()


async def _connect(path: Path) -> trio.SocketStream:
    try:
        return await trio.open_unix_socket(path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise BusUnavailable(f"the town is not running (no bus at {path})") from exc
    except PermissionError as exc:
        raise BusUnavailable(f"cannot reach the bus at {path}: permission denied") from exc
    except OSError as exc:
        raise BusUnavailable(f"cannot reach the bus at {path}: {exc.strerror or exc}") from exc


@asynccontextmanager
async def open_bus_client(path: Path, name: str, *, handler: RequestHandler | None = None,
                          max_frame: int = MAX_FRAME, token: str | None = None,
                          ) -> AsyncIterator[BusClient]:
    """Connect to the bus at ``path`` as ``name``; yield the client once the bus knows the name.

    ``handler`` is the same as calling :meth:`BusClient.serve` first, without
    the instant in which a request could arrive before it. ``token`` is the per-spawn
    secret that proves a role process is the one the supervisor started (a role's
    name is refused without it).

    On a clean exit, what the body queued (publications, replies) is flushed
    (for up to 10 s) before the connection closes. An exception from the body
    propagates unchanged (not wrapped in an exception group).

    Raises:
        BusUnavailable: the socket is missing, refuses, or the bus did not
            accept the hello (closed the connection or did not answer in 10 s).
        NameRefused: the bus refused ``name`` (a role's name without its token).
    """
    stream = await _connect(Path(path))
    client = BusClient(stream, name, max_frame, handler)
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run_io)
            try:
                try:
                    rep = await client._round_trip(0, protocol.hello(name, 0, token),
                                                   _HANDSHAKE_TIMEOUT)
                except (BusDisconnected, trio.TooSlowError) as exc:
                    raise BusUnavailable(f"the bus at {path} did not accept {name!r}: "
                                         f"{exc or 'no answer'}") from exc
                if "error" in rep:
                    raise NameRefused(f"the bus refused the name {name!r}: {rep['error']}")
                yield client
                # A clean exit: let the writer send what the body queued.
                client._outgoing.close()
                with trio.move_on_after(_HANDSHAKE_TIMEOUT):
                    await client._writer_done.wait()
            except BaseException as exc:
                # Re-raised below, outside the nursery, so that callers can catch
                # BusDisconnected itself rather than an ExceptionGroup around it.
                failure = exc
            finally:
                client._disconnect("closed by this client")
    finally:
        await trio.aclose_forcefully(stream)
    if failure is not None:
        raise failure
