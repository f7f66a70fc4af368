"""The bus server: one Unix socket, request/reply routing and topic fan-out between peers.

The supervisor runs :func:`serve_bus` once; the roles and the CLI connect to it.
Its one job is to carry messages; it never decides anything about them. What
it guarantees:

- Only the town's owner gets in: the socket is created 0600 (umask at bind
  time, so there is no window where it is wider), its directory must be ours
  and not writable by others, and every peer's uid is checked with
  ``SO_PEERCRED``. A peer with another uid is closed before a byte is read.
- No peer can stall the bus or another peer. Each connection has a reader
  task and a writer task with a bounded outbox. Publications to a peer whose
  outbox is full are dropped and *counted*; the peer gets
  ``{"op": "dropped", "count": N}`` before the next publication it receives
  (the ZeroMQ lesson: never drop silently). A request to a full peer is
  answered at once with ``"peer busy: NAME"``.
- A malformed, oversized or truncated frame closes that connection only.
- Nothing is held open forever by a sender that stalls: once a frame's first byte
  has arrived, the whole frame must arrive within ``frame_timeout`` (10 s by
  default), and a new connection must say ``hello`` within the same time;
  otherwise that connection is dropped and logged, and the bus lives on. An idle
  connection *between* frames (a ``feed -f`` follower) is never timed out.
- A role's name belongs to the process the supervisor spawned for it: with an
  ``authorize`` callback, every ``hello`` is checked (the claimed name, the peer's
  pid from ``SO_PEERCRED`` and the per-spawn token it presents); a refused claim
  gets an error reply and the connection is closed. Anyone else may connect only
  as an anonymous client (``cli``, ``feed``, ...), and the holder of a role's name
  is never displaced by such a claim.
- Every request gets exactly one reply: the peer's, or the bus's own error
  (``"no such peer"``, ``"peer busy"``, ``"peer gone"``), unless the requester
  itself left or cancelled it.
- On cancellation every connection is closed and the socket file removed
  (only if it is still ours; a successor may already have taken the path).

The socket file's rules live in :mod:`.listener`, each peer's queue in :mod:`.outbox`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

import structlog
import trio

from . import protocol
from .errors import FrameError, ProtocolError
from .frames import MAX_FRAME, FrameDecoder, encode_frame
from .listener import (
    bind_private,
    check_path,
    clear_stale_socket,
    peer_credentials,
    unlink_if_ours,
)
from .outbox import Outbox
from .protocol import BUS_PEER, RequestHandler, RequestId


def _logger(**context: Any) -> Any:
    """A logger from the *current* structlog configuration.

    Not a module-level proxy: with ``cache_logger_on_first_use`` a proxy freezes
    the configuration it first saw, and ``structlog.testing.capture_logs`` (and
    any later reconfiguration) would no longer reach the bus's lines.
    """
    return structlog.get_logger().bind(**context)


#: Bytes read per ``receive_some``.
_CHUNK: Final = 1 << 16

#: Default time a peer has to complete a frame once its first byte arrived (and to
#: say ``hello`` after connecting).
FRAME_TIMEOUT: Final = 10.0

#: ``(claimed name, peer pid, token or None) -> None`` to grant the name, or the reason
#: it is refused. Called for every ``hello``; names it does not protect it grants.
Authorizer = Callable[[str, int, str | None], str | None]


class _ClaimRefused(Exception):
    """A ``hello`` claimed a name its sender may not hold; the connection ends."""


@dataclass(eq=False)
class _Peer:
    """One accepted connection and its bookkeeping."""

    number: int
    stream: trio.SocketStream
    pid: int
    outbox: Outbox
    log: Any
    name: str | None = None
    topics: set[str] = field(default_factory=set)
    #: Requests this peer sent to other peers: its own id -> the bus's id.
    requests_out: dict[RequestId, int] = field(default_factory=dict)
    #: The bus's ids of requests routed to this peer and not yet answered.
    requests_in: set[int] = field(default_factory=set)
    #: Requests this peer sent to the bus itself, being answered by the handler.
    bus_requests: dict[RequestId, trio.CancelScope] = field(default_factory=dict)
    close_reason: str | None = None
    #: Set when the connection must end as soon as what is queued has been written.
    close_after_flush: str | None = None

    @property
    def label(self) -> str:
        return self.name or f"<unnamed connection {self.number}>"

    def close(self, reason: str) -> None:
        """Record why the connection ends (the first reason wins)."""
        if self.close_reason is None:
            self.close_reason = reason


@dataclass(frozen=True)
class _Routed:
    """A request in flight between two peers, under the bus's own id."""

    requester: _Peer
    original_id: RequestId
    target: _Peer


class BusServer:
    """The running bus, as handed to ``nursery.start(serve_bus, ...)``'s caller.

    Only :meth:`publish` and :meth:`peers` are public; everything else runs
    inside :func:`serve_bus`.
    """

    def __init__(self, *, handler: RequestHandler | None,
                 on_publish: Callable[[str, dict[str, Any]], None] | None,
                 max_frame: int, queue_size: int, frame_timeout: float = FRAME_TIMEOUT,
                 authorize: Authorizer | None = None) -> None:
        self._handler = handler
        self._on_publish = on_publish
        self._max_frame = max_frame
        self._queue_size = queue_size
        self._frame_timeout = frame_timeout
        self._authorize = authorize
        self._connections: set[_Peer] = set()
        self._names: dict[str, _Peer] = {}
        self._routed: dict[int, _Routed] = {}
        self._next_connection = 0
        self._next_request = 0

    # -- public ----------------------------------------------------------------------------

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Publish ``data`` on ``topic`` as the bus itself (``from: "bus"``). Never blocks.

        Raises:
            ValueError: ``topic`` is empty or reserved (``"*"``, ``"bus.dropped"``).
            FrameError: the message cannot be encoded within the frame limit.
        """
        if not topic or topic in (protocol.ALL_TOPICS, protocol.DROPPED_TOPIC):
            raise ValueError(f"cannot publish to topic {topic!r}")
        frame = encode_frame(protocol.msg(topic, data, BUS_PEER), self._max_frame)
        self._deliver(topic, data, frame)

    def peers(self) -> list[str]:
        """Names currently held by connected peers, sorted."""
        return sorted(self._names)

    # -- connections -----------------------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        """Run one accepted connection to its end; never raises for the peer's misbehaviour."""
        self._next_connection += 1
        number = self._next_connection
        try:
            pid, uid = peer_credentials(stream.socket)
        except OSError as exc:
            _logger().warning("bus.peer_refused", conn=number,
                              reason=f"no peer credentials: {exc}")
            await trio.aclose_forcefully(stream)
            return
        if uid != os.geteuid():
            _logger().warning("bus.peer_refused", conn=number, pid=pid, uid=uid,
                              reason="peer runs as another user")
            await trio.aclose_forcefully(stream)
            return
        peer_log = _logger(conn=number, pid=pid)
        peer = _Peer(number, stream, pid, Outbox(self._queue_size, peer_log), peer_log)
        self._connections.add(peer)
        peer.log.debug("bus.connected")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_then_cancel, self._read_loop, peer, nursery)
                nursery.start_soon(self._run_then_cancel, self._write_loop, peer, nursery)
        finally:
            peer.close("bus shutting down")
            self._forget(peer)
            await trio.aclose_forcefully(stream)
            # CLI invocations come and go by the hundred; a role's disconnect is news.
            level = peer.log.debug if peer.name in (None, "cli") else peer.log.info
            level("bus.disconnected", name=peer.name, reason=peer.close_reason)

    @staticmethod
    async def _run_then_cancel(loop: Callable[[_Peer, trio.Nursery], Awaitable[str]], peer: _Peer,
                               nursery: trio.Nursery) -> None:
        """Run the reader or the writer; when either ends, the connection ends."""
        peer.close(await loop(peer, nursery))
        nursery.cancel_scope.cancel()

    async def _read_loop(self, peer: _Peer, nursery: trio.Nursery) -> str:
        """Read and handle frames until EOF or misbehaviour; return why it stopped.

        A frame must be complete ``frame_timeout`` after its first byte arrived, and the
        ``hello`` that long after the connection opened; between frames a named peer
        may stay silent as long as it likes.
        """
        decoder = FrameDecoder(self._max_frame)
        deadline: float | None = trio.current_time() + self._frame_timeout
        while True:
            data: bytes | None = None
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                try:
                    data = await peer.stream.receive_some(_CHUNK)
                except trio.BrokenResourceError as exc:
                    return f"read failed: {exc.__cause__ or exc}"
            if data is None:
                what = "an incomplete frame" if decoder.buffered else "no hello"
                peer.log.warning("bus.peer_too_slow", buffered=decoder.buffered,
                                 timeout=self._frame_timeout)
                return f"{what} after {self._frame_timeout:g}s (stalled or slow sender)"
            if not data:
                return "disconnected mid-frame" if decoder.buffered else "closed by peer"
            handled = 0
            try:
                for raw in decoder.feed(data):
                    # A peer that sends requests but never reads the replies is
                    # held back here, by its own backlog, and only it.
                    await peer.outbox.wait_below(2 * self._queue_size)
                    self._handle(peer, protocol.parse_client_message(raw), nursery)
                    handled += 1
            except (FrameError, ProtocolError) as exc:
                return f"{type(exc).__name__}: {exc}"
            except _ClaimRefused as exc:
                reason = f"name refused: {exc}"
                if len(peer.outbox):
                    # The refusal's reply is queued: the writer ends the connection once
                    # it is out (or this bound passes, for a peer that does not read).
                    peer.close_after_flush = reason
                    await trio.sleep(self._frame_timeout)
                return reason
            if not decoder.buffered:
                deadline = None if peer.name is not None else deadline
            elif handled or deadline is None:
                deadline = trio.current_time() + self._frame_timeout

    async def _write_loop(self, peer: _Peer, nursery: trio.Nursery) -> str:
        """Write queued frames until the peer stops accepting them; return why it stopped."""
        while True:
            batch = await peer.outbox.take_batch()
            try:
                await peer.stream.send_all(b"".join(batch))
            except trio.BrokenResourceError as exc:
                return f"write failed: {exc.__cause__ or exc}"
            if peer.close_after_flush is not None and not len(peer.outbox):
                return peer.close_after_flush

    def _forget(self, peer: _Peer) -> None:
        """Drop every trace of a closed connection; fail requests that were waiting on it."""
        self._connections.discard(peer)
        if peer.name is not None and self._names.get(peer.name) is peer:
            del self._names[peer.name]
        for bus_id in sorted(peer.requests_in):
            routed = self._routed.pop(bus_id)
            routed.requester.requests_out.pop(routed.original_id, None)
            if routed.requester is not peer:
                self._reply(routed.requester, protocol.rep_error(
                    routed.original_id, f"peer gone: {peer.label}"))
        for bus_id in peer.requests_out.values():
            routed = self._routed.pop(bus_id)
            routed.target.requests_in.discard(bus_id)
        peer.requests_in.clear()
        peer.requests_out.clear()

    # -- messages --------------------------------------------------------------------------

    def _handle(self, peer: _Peer, message: protocol.ClientMessage,
                nursery: trio.Nursery) -> None:
        """Act on one message from ``peer``. Synchronous, so it cannot block on anyone.

        Raises:
            ProtocolError: the message is not allowed in this state.
            _ClaimRefused: a ``hello`` claimed a name its sender may not hold.
        """
        if message["op"] == "hello":
            if peer.name is not None:
                raise ProtocolError("'hello' sent twice")
            self._check_claim(peer, message)
            self._hello(peer, message["name"])
            if "id" in message:
                self._reply(peer, protocol.rep_result(message["id"], None))
            return
        if peer.name is None:
            raise ProtocolError(f"the first message must be 'hello', not {message['op']!r}")
        if message["op"] == "sub":
            peer.topics.update(message["topics"])
            if "id" in message:
                self._reply(peer, protocol.rep_result(message["id"], None))
        elif message["op"] == "pub":
            self._publish_from(peer.name, message["topic"], message["data"])
        elif message["op"] == "req":
            self._route(peer, message, nursery)
        elif message["op"] == "rep":
            self._resolve(peer, message)
        elif message["op"] == "cancel":
            self._cancel(peer, message["id"])

    def _check_claim(self, peer: _Peer, message: protocol.Hello) -> None:
        """Refuse a ``hello`` whose name its sender may not hold (see ``authorize``).

        Raises:
            _ClaimRefused: refused; the error reply is queued when the hello has an id.
        """
        if self._authorize is None:
            return
        name = message["name"]
        try:
            refusal = self._authorize(name, peer.pid, message.get("token"))
        except Exception:
            peer.log.exception("bus.authorize_failed", claimed=name)
            refusal = "the claim could not be checked"
        if refusal is None:
            return
        peer.log.warning("bus.name_refused", claimed=name, reason=refusal)
        if "id" in message:
            self._reply(peer, protocol.rep_error(message["id"], refusal))
        raise _ClaimRefused(refusal)

    def _hello(self, peer: _Peer, name: str) -> None:
        peer.name = name
        peer.log = peer.log.bind(name=name)
        peer.outbox.log = peer.log
        previous = self._names.get(name)
        if previous is not None and name != "cli":
            # For a role's name (which the authorizer grants only to the role's own
            # process) the older holder is a stale connection of that same role;
            # routing follows the new one.
            peer.log.warning("bus.name_taken_over", previous_conn=previous.number,
                             previous_pid=previous.pid)
        self._names[name] = peer
        (peer.log.debug if name == "cli" else peer.log.info)("bus.hello")

    def _publish_from(self, sender: str, topic: str, data: dict[str, Any]) -> None:
        try:
            frame = encode_frame(protocol.msg(topic, data, sender), self._max_frame)
        except FrameError as exc:
            _logger().warning("bus.publication_refused", topic=topic, sender=sender,
                              reason=str(exc))
            return
        self._deliver(topic, data, frame)

    def _deliver(self, topic: str, data: dict[str, Any], frame: bytes) -> None:
        """Hand a publication to ``on_publish``, then offer it to every subscriber."""
        if self._on_publish is not None:
            try:
                self._on_publish(topic, data)
            except Exception:
                # Losing the events.jsonl line must not take the bus (and every role's
                # connection) down with it; the traceback goes to the log.
                _logger().exception("bus.on_publish_failed", topic=topic)
        for peer in self._connections:
            if peer.name is not None and (topic in peer.topics
                                          or protocol.ALL_TOPICS in peer.topics):
                peer.outbox.offer_publication(frame)

    def _reply(self, peer: _Peer, rep: protocol.Rep) -> None:
        try:
            frame = encode_frame(rep, self._max_frame)
        except FrameError as exc:
            frame = encode_frame(protocol.rep_error(rep["id"], f"reply cannot be sent: {exc}"))
        peer.outbox.push(frame)

    def _route(self, peer: _Peer, request: protocol.Req, nursery: trio.Nursery) -> None:
        """Send ``request`` on to its target, or answer it at once with the reason it cannot be."""
        original_id, to = request["id"], request["to"]
        if original_id in peer.requests_out or original_id in peer.bus_requests:
            self._reply(peer, protocol.rep_error(
                original_id, f"request id {original_id!r} is already in flight"))
            return
        if len(peer.requests_out) + len(peer.bus_requests) >= self._queue_size:
            self._reply(peer, protocol.rep_error(original_id, "too many requests in flight"))
            return
        if to == BUS_PEER:
            self._answer_locally(peer, request, nursery)
            return
        target = self._names.get(to)
        if target is None:
            self._reply(peer, protocol.rep_error(original_id, f"no such peer: {to}"))
            return
        if not target.outbox.has_room:
            peer.log.warning("bus.peer_busy", to=to, method=request["method"])
            self._reply(peer, protocol.rep_error(original_id, f"peer busy: {to}"))
            return
        self._next_request += 1
        bus_id = self._next_request
        assert peer.name is not None
        try:
            frame = encode_frame(protocol.req(bus_id, to, request["method"], request["params"],
                                              sender=peer.name), self._max_frame)
        except FrameError as exc:
            self._reply(peer, protocol.rep_error(original_id, str(exc)))
            return
        self._routed[bus_id] = _Routed(peer, original_id, target)
        peer.requests_out[original_id] = bus_id
        target.requests_in.add(bus_id)
        target.outbox.push(frame)

    def _answer_locally(self, peer: _Peer, request: protocol.Req,
                        nursery: trio.Nursery) -> None:
        if self._handler is None:
            self._reply(peer, protocol.rep_error(request["id"], "the bus answers no requests"))
            return
        scope = trio.CancelScope()
        peer.bus_requests[request["id"]] = scope
        nursery.start_soon(self._run_handler, self._handler, peer, request, scope)

    async def _run_handler(self, handler: RequestHandler, peer: _Peer, request: protocol.Req,
                           scope: trio.CancelScope) -> None:
        """Answer a request addressed to the bus; runs in the requester's connection nursery,
        so the requester leaving cancels it."""
        request_id = request["id"]
        assert peer.name is not None
        rep: protocol.Rep | None = None
        try:
            with scope:
                try:
                    result = await handler(request["method"], request["params"], peer.name)
                except Exception as exc:
                    peer.log.info("bus.request_failed", method=request["method"],
                                  error=str(exc))
                    rep = protocol.rep_error(request_id, str(exc) or type(exc).__name__)
                else:
                    rep = protocol.rep_result(request_id, result)
        finally:
            peer.bus_requests.pop(request_id, None)
        if rep is not None:  # None: the requester cancelled it
            self._reply(peer, rep)

    def _resolve(self, peer: _Peer, rep: protocol.Rep) -> None:
        """Pass a reply back to the requester under the requester's own id."""
        bus_id = rep["id"]
        routed = self._routed.get(bus_id) if isinstance(bus_id, int) else None
        if routed is None or routed.target is not peer or not isinstance(bus_id, int):
            # Late (the requester left or cancelled) or bogus: nobody is waiting.
            peer.log.debug("bus.stray_reply", id=bus_id)
            return
        del self._routed[bus_id]
        peer.requests_in.discard(bus_id)
        routed.requester.requests_out.pop(routed.original_id, None)
        if "error" in rep:
            self._reply(routed.requester, protocol.rep_error(routed.original_id, rep["error"]))
        else:
            self._reply(routed.requester,
                        protocol.rep_result(routed.original_id, rep.get("result")))

    def _cancel(self, peer: _Peer, original_id: RequestId) -> None:
        scope = peer.bus_requests.get(original_id)
        if scope is not None:
            scope.cancel()
            return
        bus_id = peer.requests_out.pop(original_id, None)
        if bus_id is not None:
            routed = self._routed.pop(bus_id)
            routed.target.requests_in.discard(bus_id)


async def serve_bus(path: Path, *, handler: RequestHandler | None = None,
                    on_publish: Callable[[str, dict[str, Any]], None] | None = None,
                    max_frame: int = MAX_FRAME, queue_size: int = 1000,
                    frame_timeout: float = FRAME_TIMEOUT,
                    authorize: Authorizer | None = None,
                    task_status: trio.TaskStatus[BusServer] = trio.TASK_STATUS_IGNORED,
                    ) -> NoReturn:
    """Serve the bus on the Unix socket ``path`` until cancelled.

    Use ``server = await nursery.start(serve_bus, path)``: it returns once the
    socket accepts connections.

    Args:
        handler: answers requests addressed to ``"bus"``, each in its own task;
            its exception becomes an error reply. Without one, such requests
            get the error ``"the bus answers no requests"``.
        on_publish: called synchronously with every publication (from peers and
            from :meth:`BusServer.publish`) before fan-out; the supervisor's single
            writer of ``events.jsonl``. An exception from it is logged, not raised.
        max_frame: the largest frame body accepted or sent.
        queue_size: per peer, the publications queued before drops begin, and
            the requests a peer may have in flight.
        frame_timeout: seconds a peer has to complete a frame once its first byte
            arrived, and to say ``hello`` once connected; a peer that takes longer is
            disconnected (logged as ``bus.peer_too_slow``).
        authorize: checks every ``hello`` (see :data:`Authorizer`); a refused one gets
            an error reply and its connection is closed. Without it every name is
            granted (tests of the bus alone); the supervisor always passes one.

    Raises:
        BusPathError: the path is too long, not a socket, or in an unsafe directory.
        BusAlreadyRunning: a live bus answers at ``path``.

    On cancellation every connection is closed and the socket file is removed
    if it is still the one this call created.
    """
    path = Path(path)
    if queue_size < 1:
        raise ValueError(f"queue_size must be at least 1, got {queue_size}")
    if frame_timeout <= 0:
        raise ValueError(f"frame_timeout must be positive, got {frame_timeout}")
    check_path(path)
    await clear_stale_socket(path)
    sock, identity = bind_private(path)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    server = BusServer(handler=handler, on_publish=on_publish, max_frame=max_frame,
                       queue_size=queue_size, frame_timeout=frame_timeout,
                       authorize=authorize)
    try:
        async with trio.open_nursery() as nursery:
            _logger().info("bus.listening", path=str(path))
            task_status.started(server)
            await trio.serve_listeners(server._serve_connection, [listener],
                                       handler_nursery=nursery)
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(listener)
        unlink_if_ours(path, identity)
        _logger().info("bus.stopped", path=str(path))
    raise AssertionError("serve_listeners returned")  # pragma: no cover
