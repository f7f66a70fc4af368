"""The bus server: one Unix socket, request/reply routing and topic fan-out between peers.

Layer: bus (trio, a Unix socket), run by the supervisor.

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

The socket file's rules live in :mod:`.listener`, each peer's queue in :mod:`.outbox`,
the names and the routing in :mod:`.router`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, NoReturn

import trio

from . import protocol
from .errors import FrameError, ProtocolError
from .frames import MAX_FRAME, READ_CHUNK, FrameDecoder
from .listener import (
    bind_private,
    check_path,
    clear_stale_socket,
    peer_credentials,
    unlink_if_ours,
)
from .outbox import Outbox
from .protocol import RequestHandler
from .router import Authorizer, ClaimRefused, Peer, Router, bus_logger

#: Default time a peer has to complete a frame once its first byte arrived (and to
#: say ``hello`` after connecting).
FRAME_TIMEOUT: Final = 10.0


class BusServer:
    """The running bus, as handed to ``nursery.start(serve_bus, ...)``'s caller.

    Only :meth:`publish` and :meth:`peers` are public; everything else runs
    inside :func:`serve_bus`. This class owns the connections (credentials, the
    reader and writer of each, frame deadlines); where a message goes is the
    :class:`~.router.Router`'s business.
    """

    def __init__(self, *, handler: RequestHandler | None,
                 on_publish: Callable[[str, dict[str, Any]], None] | None,
                 max_frame: int, queue_size: int, frame_timeout: float = FRAME_TIMEOUT,
                 authorize: Authorizer | None = None) -> None:
        self._router = Router(handler=handler, on_publish=on_publish, max_frame=max_frame,
                              queue_size=queue_size, authorize=authorize)
        self._max_frame = max_frame
        self._queue_size = queue_size
        self._frame_timeout = frame_timeout
        self._next_connection = 0

    # -- public ----------------------------------------------------------------------------

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Publish ``data`` on ``topic`` as the bus itself; see :meth:`.Router.publish`."""
        self._router.publish(topic, data)

    def peers(self) -> list[str]:
        """Names currently held by connected peers, sorted."""
        return self._router.peers()

    # -- connections -----------------------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        """Run one accepted connection to its end; never raises for the peer's misbehaviour."""
        self._next_connection += 1
        number = self._next_connection
        try:
            pid, uid = peer_credentials(stream.socket)
        except OSError as exc:
            bus_logger().warning("bus.peer_refused", conn=number,
                              reason=f"no peer credentials: {exc}")
            await trio.aclose_forcefully(stream)
            return
        if uid != os.geteuid():
            bus_logger().warning("bus.peer_refused", conn=number, pid=pid, uid=uid,
                              reason="peer runs as another user")
            await trio.aclose_forcefully(stream)
            return
        peer_log = bus_logger(conn=number, pid=pid)
        peer = Peer(number, stream, pid, Outbox(self._queue_size, peer_log), peer_log)
        self._router.connections.add(peer)
        peer.log.debug("bus.connected")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_then_cancel, self._read_loop, peer, nursery)
                nursery.start_soon(self._run_then_cancel, self._write_loop, peer, nursery)
        finally:
            peer.close("bus shutting down")
            self._router.forget(peer)
            await trio.aclose_forcefully(stream)
            # CLI invocations come and go by the hundred; a role's disconnect is news.
            level = peer.log.debug if peer.name in (None, "cli") else peer.log.info
            level("bus.disconnected", name=peer.name, reason=peer.close_reason)

    @staticmethod
    async def _run_then_cancel(loop: Callable[[Peer, trio.Nursery], Awaitable[str]], peer: Peer,
                               nursery: trio.Nursery) -> None:
        """Run the reader or the writer; when either ends, the connection ends."""
        peer.close(await loop(peer, nursery))
        nursery.cancel_scope.cancel()

    async def _read_loop(self, peer: Peer, nursery: trio.Nursery) -> str:
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
                    data = await peer.stream.receive_some(READ_CHUNK)
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
                    self._router.handle(peer, protocol.parse_client_message(raw), nursery)
                    handled += 1
            except (FrameError, ProtocolError) as exc:
                return f"{type(exc).__name__}: {exc}"
            except ClaimRefused as exc:
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

    async def _write_loop(self, peer: Peer, nursery: trio.Nursery) -> str:
        """Write queued frames until the peer stops accepting them; return why it stopped."""
        while True:
            batch = await peer.outbox.take_batch()
            try:
                await peer.stream.send_all(b"".join(batch))
            except trio.BrokenResourceError as exc:
                return f"write failed: {exc.__cause__ or exc}"
            if peer.close_after_flush is not None and not len(peer.outbox):
                return peer.close_after_flush



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
            bus_logger().info("bus.listening", path=str(path))
            task_status.started(server)
            await trio.serve_listeners(server._serve_connection, [listener],
                                       handler_nursery=nursery)
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(listener)
        unlink_if_ours(path, identity)
        bus_logger().info("bus.stopped", path=str(path))
    raise AssertionError("serve_listeners returned")  # pragma: no cover
