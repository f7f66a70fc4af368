"""The bus's registry and routing: who holds which name, and where each message goes.

Layer: bus (trio only for the request handler's task and its cancel scope; no sockets:
:mod:`.server` owns the connections and hands each parsed message here). A
:class:`Peer` is one connection's bookkeeping; :class:`Router` grants names (asking the
``authorize`` callback for each ``hello``), fans publications out to subscribers' bounded
outboxes, routes each request to its target under the bus's own id and the reply back
under the requester's, answers requests addressed to ``"bus"`` with the handler, and on
a connection's end fails the requests that waited on it. Every method is synchronous
(except the handler's task), so routing can never block on a peer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from . import protocol
from .errors import FrameError, ProtocolError
from .frames import encode_frame
from .outbox import Outbox
from .protocol import BUS_PEER, RequestHandler, RequestId


def bus_logger(**context: Any) -> Any:
    """A logger from the *current* structlog configuration.

    Not a module-level proxy: with ``cache_logger_on_first_use`` a proxy freezes
    the configuration it first saw, and ``structlog.testing.capture_logs`` (and
    any later reconfiguration) would no longer reach the bus's lines.
    """
    return structlog.get_logger().bind(**context)


#: ``(claimed name, peer pid, token or None) -> None`` to grant the name, or the reason
#: it is refused. Called for every ``hello``; names it does not protect it grants.
Authorizer = Callable[[str, int, str | None], str | None]


class ClaimRefused(Exception):
    """A ``hello`` claimed a name its sender may not hold; the connection ends."""


@dataclass(eq=False)
class Peer:
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
class Routed:
    """A request in flight between two peers, under the bus's own id."""

    requester: Peer
    original_id: RequestId
    target: Peer


class Router:
    """Names, subscriptions and requests in flight of every connected peer."""

    def __init__(self, *, handler: RequestHandler | None,
                 on_publish: Callable[[str, dict[str, Any]], None] | None,
                 max_frame: int, queue_size: int, authorize: Authorizer | None = None) -> None:
        self._handler = handler
        self._on_publish = on_publish
        self._max_frame = max_frame
        self._queue_size = queue_size
        self._authorize = authorize
        #: Every open connection, named or not yet.
        self.connections: set[Peer] = set()
        self._names: dict[str, Peer] = {}
        self._routed: dict[int, Routed] = {}
        self._next_request = 0

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Publish ``data`` on ``topic`` as the bus itself (``from: "bus"``). Never blocks.

        Raises:
            ValueError: ``topic`` is empty or reserved (``"*"``, ``"bus.dropped"``).
            FrameError: the message cannot be encoded within the frame limit.
        """
        if not topic or topic in (protocol.ALL_TOPICS, protocol.DROPPED_TOPIC):
            raise ValueError(f"cannot publish to topic {topic!r}")
        frame = encode_frame(protocol.msg(topic, data, BUS_PEER), self._max_frame)
        self.deliver(topic, data, frame)

    def peers(self) -> list[str]:
        """Names currently held by connected peers, sorted."""
        return sorted(self._names)

    def forget(self, peer: Peer) -> None:
        """Drop every trace of a closed connection; fail requests that were waiting on it."""
        self.connections.discard(peer)
        if peer.name is not None and self._names.get(peer.name) is peer:
            del self._names[peer.name]
        for bus_id in sorted(peer.requests_in):
            routed = self._routed.pop(bus_id)
            routed.requester.requests_out.pop(routed.original_id, None)
            if routed.requester is not peer:
                self.reply(routed.requester, protocol.rep_error(
                    routed.original_id, f"peer gone: {peer.label}"))
        for bus_id in peer.requests_out.values():
            routed = self._routed.pop(bus_id)
            routed.target.requests_in.discard(bus_id)
        peer.requests_in.clear()
        peer.requests_out.clear()

    def handle(self, peer: Peer, message: protocol.ClientMessage,
               nursery: trio.Nursery) -> None:
        """Act on one message from ``peer``. Synchronous, so it cannot block on anyone.

        Raises:
            ProtocolError: the message is not allowed in this state.
            ClaimRefused: a ``hello`` claimed a name its sender may not hold.
        """
        if message["op"] == "hello":
            if peer.name is not None:
                raise ProtocolError("'hello' sent twice")
            self._check_claim(peer, message)
            self._hello(peer, message["name"])
            if "id" in message:
                self.reply(peer, protocol.rep_result(message["id"], None))
            return
        if peer.name is None:
            raise ProtocolError(f"the first message must be 'hello', not {message['op']!r}")
        if message["op"] == "sub":
            peer.topics.update(message["topics"])
            if "id" in message:
                self.reply(peer, protocol.rep_result(message["id"], None))
        elif message["op"] == "pub":
            self._publish_from(peer.name, message["topic"], message["data"])
        elif message["op"] == "req":
            self._route(peer, message, nursery)
        elif message["op"] == "rep":
            self._resolve(peer, message)
        elif message["op"] == "cancel":
            self._cancel(peer, message["id"])

    def _check_claim(self, peer: Peer, message: protocol.Hello) -> None:
        """Refuse a ``hello`` whose name its sender may not hold (see ``authorize``).

        Raises:
            ClaimRefused: refused; the error reply is queued when the hello has an id.
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
            self.reply(peer, protocol.rep_error(message["id"], refusal))
        raise ClaimRefused(refusal)

    def _hello(self, peer: Peer, name: str) -> None:
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
            bus_logger().warning("bus.publication_refused", topic=topic, sender=sender,
                              reason=str(exc))
            return
        self.deliver(topic, data, frame)

    def deliver(self, topic: str, data: dict[str, Any], frame: bytes) -> None:
        """Hand a publication to ``on_publish``, then offer it to every subscriber."""
        if self._on_publish is not None:
            try:
                self._on_publish(topic, data)
            except Exception:
                # Losing the events.jsonl line must not take the bus (and every role's
                # connection) down with it; the traceback goes to the log.
                bus_logger().exception("bus.on_publish_failed", topic=topic)
        for peer in self.connections:
            if peer.name is not None and (topic in peer.topics
                                          or protocol.ALL_TOPICS in peer.topics):
                peer.outbox.offer_publication(frame)

    def reply(self, peer: Peer, rep: protocol.Rep) -> None:
        try:
            frame = encode_frame(rep, self._max_frame)
        except FrameError as exc:
            frame = encode_frame(protocol.rep_error(rep["id"], f"reply cannot be sent: {exc}"))
        peer.outbox.push(frame)

    def _route(self, peer: Peer, request: protocol.Req, nursery: trio.Nursery) -> None:
        """Send ``request`` on to its target, or answer it at once with the reason it cannot be."""
        original_id, to = request["id"], request["to"]
        if original_id in peer.requests_out or original_id in peer.bus_requests:
            self.reply(peer, protocol.rep_error(
                original_id, f"request id {original_id!r} is already in flight"))
            return
        if len(peer.requests_out) + len(peer.bus_requests) >= self._queue_size:
            self.reply(peer, protocol.rep_error(original_id, "too many requests in flight"))
            return
        if to == BUS_PEER:
            self._answer_locally(peer, request, nursery)
            return
        target = self._names.get(to)
        if target is None:
            self.reply(peer, protocol.rep_error(original_id, f"no such peer: {to}"))
            return
        if not target.outbox.has_room:
            peer.log.warning("bus.peer_busy", to=to, method=request["method"])
            self.reply(peer, protocol.rep_error(original_id, f"peer busy: {to}"))
            return
        self._next_request += 1
        bus_id = self._next_request
        assert peer.name is not None
        try:
            frame = encode_frame(protocol.req(bus_id, to, request["method"], request["params"],
                                              sender=peer.name), self._max_frame)
        except FrameError as exc:
            self.reply(peer, protocol.rep_error(original_id, str(exc)))
            return
        self._routed[bus_id] = Routed(peer, original_id, target)
        peer.requests_out[original_id] = bus_id
        target.requests_in.add(bus_id)
        target.outbox.push(frame)

    def _answer_locally(self, peer: Peer, request: protocol.Req,
                        nursery: trio.Nursery) -> None:
        if self._handler is None:
            self.reply(peer, protocol.rep_error(request["id"], "the bus answers no requests"))
            return
        scope = trio.CancelScope()
        peer.bus_requests[request["id"]] = scope
        nursery.start_soon(self._run_handler, self._handler, peer, request, scope)

    async def _run_handler(self, handler: RequestHandler, peer: Peer, request: protocol.Req,
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
            self.reply(peer, rep)

    def _resolve(self, peer: Peer, rep: protocol.Rep) -> None:
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
            self.reply(routed.requester, protocol.rep_error(routed.original_id, rep["error"]))
        else:
            self.reply(routed.requester,
                        protocol.rep_result(routed.original_id, rep.get("result")))

    def _cancel(self, peer: Peer, original_id: RequestId) -> None:
        scope = peer.bus_requests.get(original_id)
        if scope is not None:
            scope.cancel()
            return
        bus_id = peer.requests_out.pop(original_id, None)
        if bus_id is not None:
            routed = self._routed.pop(bus_id)
            routed.target.requests_in.discard(bus_id)
