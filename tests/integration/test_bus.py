"""The bus over real Unix sockets: routing, fan-out, misbehaving peers, restarts, other users."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from gastown.supervisor.bus import (
    BusAlreadyRunning,
    BusDisconnected,
    BusMessage,
    BusPathError,
    BusServer,
    BusUnavailable,
    NameRefused,
    RemoteError,
    iter_messages_sync,
    open_bus_client,
    protocol,
    request_sync,
    serve_bus,
)
from gastown.supervisor.bus.frames import HEADER_SIZE, MAX_FRAME, FrameDecoder, encode_frame

# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def bus_dir() -> Iterator[Path]:
    """A short private directory under /tmp: pytest's tmp_path can overflow sun_path."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="gt"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock_path(bus_dir: Path) -> Path:
    return bus_dir / "bus.sock"


class Recorder:
    """The supervisor's side in these tests: answers requests to "bus", records publications."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.server: BusServer | None = None

    async def handle(self, method: str, params: dict[str, Any], sender: str) -> Any:
        if method == "echo":
            return {"params": params, "sender": sender}
        if method == "peers":
            assert self.server is not None
            return self.server.peers()
        if method == "hang":
            await trio.sleep_forever()
        raise ValueError(f"no method {method}")

    def on_publish(self, topic: str, data: dict[str, Any]) -> None:
        self.published.append((topic, data))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def start_bus(nursery: trio.Nursery, path: Path, recorder: Recorder,
                    **options: Any) -> BusServer:
    server: BusServer = await nursery.start(partial(
        serve_bus, path, handler=recorder.handle, on_publish=recorder.on_publish, **options))
    recorder.server = server
    return server


@pytest.fixture
async def bus(nursery: trio.Nursery, sock_path: Path, recorder: Recorder) -> BusServer:
    return await start_bus(nursery, sock_path, recorder)


async def assert_closed_by_bus(stream: trio.SocketStream) -> None:
    """The bus closes ``stream`` without sending a byte (EOF or a reset both count)."""
    with trio.fail_after(10):
        try:
            data = await stream.receive_some(MAX_FRAME)
        except trio.BrokenResourceError:
            data = b""
    assert data == b""


async def open_raw(path: Path, *frames: Mapping[str, Any]) -> trio.SocketStream:
    stream = await trio.open_unix_socket(path)
    await stream.send_all(b"".join(encode_frame(f) for f in frames))
    return stream


async def read_frames(stream: trio.SocketStream, decoder: FrameDecoder,
                      until: Any) -> list[dict[str, Any]]:
    """Read frames until one satisfies ``until``; return them all (that one included)."""
    seen: list[dict[str, Any]] = []
    with trio.fail_after(10):
        while not seen or not until(seen[-1]):
            data = await stream.receive_some(1 << 16)
            assert data, f"EOF after {seen}"
            for message in decoder.feed(data):
                seen.append(message)
                if until(message):
                    return seen
    return seen


# -- request / reply --------------------------------------------------------------------------


async def test_request_reply_between_two_clients(bus: BusServer, sock_path: Path) -> None:
    """A request addressed by name reaches that client's handler and its result comes back."""
    async def mayor(method: str, params: dict[str, Any], sender: str) -> Any:
        return {"method": method, "params": params, "sender": sender}

    with trio.fail_after(10):
        async with open_bus_client(sock_path, "mayor", handler=mayor), \
                open_bus_client(sock_path, "cli") as cli:
            result = await cli.request("mayor", "sling", {"bead": "gt-a1b2c"})
            assert result == {"method": "sling", "params": {"bead": "gt-a1b2c"},
                              "sender": "cli"}
            assert bus.peers() == ["cli", "mayor"]


async def test_request_to_the_bus_and_handler_errors(bus: BusServer, sock_path: Path) -> None:
    """Requests to "bus" run the server's handler; its exception becomes a RemoteError."""
    with trio.fail_after(10):
        async with open_bus_client(sock_path, "witness:web") as client:
            assert await client.request("bus", "echo", {"n": 1}) == {
                "params": {"n": 1}, "sender": "witness:web"}
            with pytest.raises(RemoteError, match="no method nope"):
                await client.request("bus", "nope")


async def test_handler_exception_in_a_client_becomes_an_error_reply(
        bus: BusServer, sock_path: Path) -> None:
    """A client's handler that raises answers with the exception's text."""
    async def refinery(method: str, params: dict[str, Any], sender: str) -> Any:
        raise RuntimeError("gate failed")

    with trio.fail_after(10):
        async with open_bus_client(sock_path, "refinery:web", handler=refinery), \
                open_bus_client(sock_path, "cli") as cli:
            with pytest.raises(RemoteError, match="gate failed"):
                await cli.request("refinery:web", "merge")


async def test_no_such_peer(bus: BusServer, sock_path: Path) -> None:
    """A request to a name nobody holds is answered at once with "no such peer"."""
    with trio.fail_after(10):
        async with open_bus_client(sock_path, "cli") as cli:
            with pytest.raises(RemoteError, match="no such peer: mayor"):
                await cli.request("mayor", "sling")


async def test_peer_gone_while_a_request_is_in_flight(bus: BusServer, sock_path: Path) -> None:
    """When the asked peer disconnects before answering, the requester gets "peer gone"."""
    started = trio.Event()

    async def stuck(method: str, params: dict[str, Any], sender: str) -> Any:
        started.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, open_bus_client(sock_path, "cli") as cli:
            mayor_scope = trio.CancelScope()

            async def run_mayor(task_status: trio.TaskStatus[None]) -> None:
                with mayor_scope:
                    async with open_bus_client(sock_path, "mayor", handler=stuck):
                        task_status.started()  # the bus routes "mayor" here from now on
                        await trio.sleep_forever()

            await nursery.start(run_mayor)
            outcome: list[BaseException] = []

            async def ask() -> None:
                try:
                    await cli.request("mayor", "sling")
                except RemoteError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as asking:
                asking.start_soon(ask)
                await started.wait()
                mayor_scope.cancel()
            assert [str(e) for e in outcome] == ["peer gone: mayor"]


async def test_newer_hello_takes_the_name_over(bus: BusServer, sock_path: Path) -> None:
    """A second connection with a held name gets the requests; the first stays connected."""
    def answering(answer: str) -> Any:
        async def handler(method: str, params: dict[str, Any], sender: str) -> Any:
            return answer
        return handler

    with trio.fail_after(10), capture_logs() as logs:
        async with open_bus_client(sock_path, "mayor", handler=answering("old")) as old, \
                open_bus_client(sock_path, "mayor", handler=answering("new")), \
                open_bus_client(sock_path, "cli") as cli:
            assert await cli.request("mayor", "who") == "new"
            assert await old.request("bus", "echo") == {"params": {}, "sender": "mayor"}
    assert any(e["event"] == "bus.name_taken_over" for e in logs)


async def test_request_timeout_raises_too_slow(bus: BusServer, sock_path: Path) -> None:
    """A request without an answer within its timeout raises trio.TooSlowError."""
    with trio.fail_after(10):
        async with open_bus_client(sock_path, "cli") as cli:
            with pytest.raises(trio.TooSlowError):
                await cli.request("bus", "hang", timeout=0.1)
            assert await cli.request("bus", "echo") == {"params": {}, "sender": "cli"}


# -- pub / sub --------------------------------------------------------------------------------


async def test_pub_sub_exact_topics_and_star(bus: BusServer, sock_path: Path,
                                             recorder: Recorder) -> None:
    """Subscribers get their exact topics or everything with "*"; on_publish sees all."""
    with trio.fail_after(10):
        async with open_bus_client(sock_path, "witness:web") as witness, \
                open_bus_client(sock_path, "feed") as feed, \
                open_bus_client(sock_path, "refinery:web") as refinery:
            merged = await witness.subscribe("merged")
            everything = await feed.subscribe("*")
            await refinery.publish("merge_failed", {"mr": 1})
            await refinery.publish("merged", {"mr": 2})
            await refinery.request("bus", "echo")  # the bus has handled both publications
            bus.publish("rig_added", {"rig": "api"})
            assert await merged.receive() == BusMessage("merged", {"mr": 2}, "refinery:web")
            assert [await everything.receive() for _ in range(3)] == [
                BusMessage("merge_failed", {"mr": 1}, "refinery:web"),
                BusMessage("merged", {"mr": 2}, "refinery:web"),
                BusMessage("rig_added", {"rig": "api"}, "bus"),
            ]
    assert recorder.published == [("merge_failed", {"mr": 1}), ("merged", {"mr": 2}),
                                  ("rig_added", {"rig": "api"})]


async def test_slow_subscriber_blocks_nobody_and_learns_its_losses(
        nursery: trio.Nursery, sock_path: Path, recorder: Recorder) -> None:
    """A subscriber that stops reading costs others nothing and later gets a dropped count."""
    bus = await start_bus(nursery, sock_path, recorder, queue_size=8)
    # Enough to overflow the socket's kernel buffer (the bus's send buffer) and the queue.
    send_buffer = int(Path("/proc/sys/net/core/wmem_default").read_text())
    payload = "x" * 8000
    total = 8 * ((2 * send_buffer // len(payload) + 64) // 8)
    slow = await open_raw(sock_path, protocol.hello("slow"), protocol.sub(["t"], 1))
    decoder = FrameDecoder()
    await read_frames(slow, decoder, lambda m: m["op"] == "rep")  # subscribed; now stop reading
    with trio.fail_after(10):
        async with open_bus_client(sock_path, "good") as good, \
                open_bus_client(sock_path, "pub") as publisher:
            received = await good.subscribe("t")
            for start in range(0, total, 8):
                for seq in range(start, start + 8):
                    await publisher.publish("t", {"seq": seq, "pad": payload})
                for seq in range(start, start + 8):  # the good subscriber keeps up
                    assert (await received.receive()).data["seq"] == seq
            assert await publisher.request("bus", "echo") == {"params": {}, "sender": "pub"}
            with pytest.raises(RemoteError, match="peer busy: slow"):
                await publisher.request("slow", "anything")

            # The slow subscriber reads again: a prefix of the messages, then the count lost.
            frames = await read_frames(slow, decoder, lambda m: m["op"] == "dropped")
            delivered = [m["data"]["seq"] for m in frames[:-1]]
            assert delivered == list(range(len(delivered)))
            assert len(delivered) + frames[-1]["count"] == total
            assert frames[-1]["count"] > 0
            await publisher.publish("t", {"seq": total})
            after = await read_frames(slow, decoder, lambda m: m["op"] == "msg")
            assert [m["data"]["seq"] for m in after] == [total]
            assert (await received.receive()).data["seq"] == total
    assert "slow" in bus.peers()
    await slow.aclose()


async def test_client_side_overflow_reports_drops(bus: BusServer, sock_path: Path) -> None:
    """A subscription channel that fills up drops, then says how many it lost."""
    with trio.fail_after(10):
        async with open_bus_client(sock_path, "sub") as client:
            channel = await client.subscribe("t", max_buffer=2)
            for seq in range(5):
                bus.publish("t", {"seq": seq})
            await client.request("bus", "echo")  # all five have reached the client
            assert [(await channel.receive()).data for _ in range(2)] == [{"seq": 0},
                                                                          {"seq": 1}]
            bus.publish("t", {"seq": 5})
            assert await channel.receive() == BusMessage("bus.dropped", {"count": 3}, "bus")
            assert await channel.receive() == BusMessage("t", {"seq": 5}, "bus")


# -- misbehaving connections ------------------------------------------------------------------


def _frame_header(length: int) -> bytes:
    return length.to_bytes(HEADER_SIZE, "big")


@pytest.mark.parametrize(("bad_bytes", "reason"), [
    (_frame_header(5) + b"hello", "not valid JSON"),
    (_frame_header(MAX_FRAME + 1), "too large"),
    (_frame_header(100) + b'{"op":', "mid-frame"),
    (encode_frame({"op": "pub", "topic": "t", "data": {}}), "first message must be 'hello'"),
], ids=["garbage", "oversized-header", "mid-frame", "no-hello"])
async def test_bad_bytes_close_only_that_connection(bus: BusServer, sock_path: Path,
                                                    bad_bytes: bytes, reason: str) -> None:
    """A malformed, oversized or truncated frame closes its connection; others keep working."""
    with trio.fail_after(10), capture_logs() as logs:
        async with open_bus_client(sock_path, "good") as good:
            bad = await trio.open_unix_socket(sock_path)
            await bad.send_all(bad_bytes)
            if reason == "mid-frame":
                await bad.send_eof()  # the peer stops sending halfway through a frame
            await assert_closed_by_bus(bad)
            await bad.aclose()
            assert await good.request("bus", "echo") == {"params": {}, "sender": "good"}
    reasons = [e.get("reason") or "" for e in logs if e["event"] == "bus.disconnected"]
    assert any(reason in r for r in reasons), reasons


async def test_half_frame_is_dropped_after_the_frame_timeout(
        nursery: trio.Nursery, sock_path: Path, recorder: Recorder) -> None:
    """A peer that sends half a frame and stalls is disconnected; the bus lives on."""
    await start_bus(nursery, sock_path, recorder, frame_timeout=0.5)
    with trio.fail_after(20), capture_logs() as logs:
        async with open_bus_client(sock_path, "good") as good:
            stalled = await open_raw(sock_path, protocol.hello("stalled"))
            await stalled.send_all(_frame_header(100) + b'{"op":')  # ...and nothing more
            await assert_closed_by_bus(stalled)
            await stalled.aclose()
            assert await good.request("bus", "echo") == {"params": {}, "sender": "good"}
    reasons = [e.get("reason") or "" for e in logs if e["event"] == "bus.disconnected"]
    assert any("incomplete frame after 0.5s" in r for r in reasons), reasons
    assert any(e["event"] == "bus.peer_too_slow" for e in logs)


async def test_trickling_sender_is_dropped_and_a_silent_connection_too(
        nursery: trio.Nursery, sock_path: Path, recorder: Recorder) -> None:
    """The bound is per frame, not per chunk: a byte now and then does not keep a frame
    open; a connection that never says hello is dropped as well. An idle named peer
    between frames is left alone."""
    await start_bus(nursery, sock_path, recorder, frame_timeout=0.5)
    with trio.fail_after(20), capture_logs() as logs:
        async with open_bus_client(sock_path, "idle") as idle:
            silent = await trio.open_unix_socket(sock_path)
            trickle = await open_raw(sock_path, protocol.hello("trickle"))
            body = b'{"op":"pub","topic":"t","data":{"pad":"' + b"x" * 200 + b'"}}'
            frame = _frame_header(len(body)) + body
            closed = trio.Event()

            async def drip() -> None:
                for byte in frame:
                    try:
                        await trickle.send_all(bytes([byte]))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if closed.is_set():
                        break
                    await trio.sleep(0.05)  # the slow sender under test, not a wait

            async with trio.open_nursery() as dripping:
                dripping.start_soon(drip)
                await assert_closed_by_bus(trickle)
                closed.set()
            await assert_closed_by_bus(silent)
            await trickle.aclose()
            await silent.aclose()
            assert idle.connected
            assert await idle.request("bus", "echo") == {"params": {}, "sender": "idle"}
    reasons = [e.get("reason") or "" for e in logs if e["event"] == "bus.disconnected"]
    assert any("incomplete frame" in r for r in reasons), reasons
    assert any("no hello after 0.5s" in r for r in reasons), reasons
    assert recorder.published == []


# -- who may hold a role's name ---------------------------------------------------------------


class Claims:
    """The supervisor's side of name claims in these tests: ``mayor`` needs a token."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.checked: list[tuple[str, int, str | None]] = []

    def authorize(self, name: str, pid: int, token: str | None) -> str | None:
        self.checked.append((name, pid, token))
        if name != "mayor" or token == self.token:
            return None
        return "the name 'mayor' belongs to the role process the supervisor started"


async def test_a_role_name_needs_its_token(nursery: trio.Nursery, sock_path: Path,
                                           recorder: Recorder) -> None:
    """A claim of a role's name without the token is refused (error reply, connection
    closed) and does not disturb the holder; the holder can always reclaim it."""
    claims = Claims("s3cret")
    await start_bus(nursery, sock_path, recorder, authorize=claims.authorize)

    async def mayor(method: str, params: dict[str, Any], sender: str) -> Any:
        return "real mayor"

    with trio.fail_after(20), capture_logs() as logs:
        async with open_bus_client(sock_path, "mayor", handler=mayor, token="s3cret"), \
                open_bus_client(sock_path, "cli") as cli:
            with pytest.raises(NameRefused, match="belongs to the role process"):
                async with open_bus_client(sock_path, "mayor", token="guess"):
                    pass  # pragma: no cover
            raw = await open_raw(sock_path, protocol.hello("mayor", 7))
            reply = await read_frames(raw, FrameDecoder(), lambda m: m["op"] == "rep")
            assert reply[-1]["id"] == 7 and "belongs to the role process" in reply[-1]["error"]
            await assert_closed_by_bus(raw)
            await raw.aclose()
            silent_claim = await open_raw(sock_path, protocol.hello("mayor"))  # no id: no reply
            await assert_closed_by_bus(silent_claim)
            await silent_claim.aclose()
            with pytest.raises(NameRefused):
                await trio.to_thread.run_sync(
                    partial(request_sync, sock_path, "bus", "echo", name="mayor"))
            assert await cli.request("mayor", "sling") == "real mayor"
            assert recorder.server is not None and recorder.server.peers() == ["cli", "mayor"]
        # The role's own process (it has the token) reconnects and is reachable again.
        async with open_bus_client(sock_path, "mayor", handler=mayor, token="s3cret"), \
                open_bus_client(sock_path, "cli") as cli:
            assert await cli.request("mayor", "sling") == "real mayor"
    assert {pid for _, pid, _ in claims.checked} == {os.getpid()}  # SO_PEERCRED's pid
    refused = [e for e in logs if e["event"] == "bus.name_refused"]
    assert len(refused) == 4 and all(e["claimed"] == "mayor" for e in refused)
    assert not any(e["event"] == "bus.name_taken_over" for e in logs)


# -- binding, shutdown, restart ---------------------------------------------------------------


async def test_socket_is_private_and_removed_on_shutdown(
        nursery: trio.Nursery, sock_path: Path, recorder: Recorder) -> None:
    """The socket is 0600 while serving; cancelling closes clients, fails waits, unlinks it."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery_inner:
            await start_bus(nursery_inner, sock_path, recorder)
            assert sock_path.stat().st_mode & 0o777 == 0o600
            async with open_bus_client(sock_path, "cli") as cli:
                async with trio.open_nursery() as asking:
                    async def ask() -> None:
                        with pytest.raises(BusDisconnected):
                            await cli.request("bus", "hang")
                    asking.start_soon(ask)
                    # Usually the request is then waiting on the handler; if not, it
                    # meets the closed connection instead: BusDisconnected either way.
                    await trio.testing.wait_all_tasks_blocked()
                    nursery_inner.cancel_scope.cancel()
                await cli.wait_disconnected()
                with pytest.raises(BusDisconnected):
                    await cli.publish("t", {})
    assert not sock_path.exists()


async def test_stale_socket_is_replaced(nursery: trio.Nursery, sock_path: Path,
                                        recorder: Recorder) -> None:
    """A socket file nobody listens on (a crashed supervisor's) is removed and re-bound."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()
    assert sock_path.exists()
    await start_bus(nursery, sock_path, recorder)
    with trio.fail_after(10):
        async with open_bus_client(sock_path, "cli") as cli:
            assert await cli.request("bus", "echo") == {"params": {}, "sender": "cli"}


async def test_live_bus_is_not_replaced(bus: BusServer, sock_path: Path) -> None:
    """A second bus on a live socket refuses to start, and the first keeps serving."""
    with trio.fail_after(10):
        with pytest.raises(BusAlreadyRunning, match="already running"):
            await serve_bus(sock_path)
        async with open_bus_client(sock_path, "cli") as cli:
            assert await cli.request("bus", "echo") == {"params": {}, "sender": "cli"}


async def test_unusable_paths_are_refused(bus_dir: Path) -> None:
    """Too long for sun_path, a non-socket file, or a world-writable directory: a clear error."""
    long_path = bus_dir / ("x" * 120)
    with pytest.raises(BusPathError, match="too long.*" + "x" * 20):
        await serve_bus(long_path)
    regular = bus_dir / "file.sock"
    regular.write_text("not a socket")
    with pytest.raises(BusPathError, match="not a socket"):
        await serve_bus(regular)
    shared = bus_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BusPathError, match="writable by group or others"):
        await serve_bus(shared / "bus.sock")


async def test_client_without_a_bus_is_unavailable(sock_path: Path) -> None:
    """Connecting where no bus runs raises BusUnavailable with a one-line message."""
    with pytest.raises(BusUnavailable, match="the town is not running"):
        async with open_bus_client(sock_path, "cli"):
            pass  # pragma: no cover
    with pytest.raises(BusUnavailable, match="the town is not running"):
        request_sync(sock_path, "bus", "echo")


async def test_client_reconnects_after_server_restart(sock_path: Path,
                                                      recorder: Recorder) -> None:
    """A role that re-enters open_bus_client with back-off finds the restarted bus."""
    connections: list[trio.Event] = [trio.Event(), trio.Event()]
    errors: list[type[BaseException]] = []

    async def mayor(method: str, params: dict[str, Any], sender: str) -> Any:
        return "pong"

    async def run_role() -> None:
        while True:
            try:
                async with open_bus_client(sock_path, "mayor", handler=mayor) as client:
                    connections[len(errors)].set()
                    await client.wait_disconnected()
                    await client.publish("heartbeat", {})  # raises: the bus is gone
            except (BusUnavailable, BusDisconnected) as exc:
                if isinstance(exc, BusDisconnected):
                    errors.append(type(exc))
                await trio.sleep(0.02)  # the role's back-off, not a test synchronisation

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_role)
            first = trio.CancelScope()

            first_stopped = trio.Event()

            async def serve_once(scope: trio.CancelScope, stopped: trio.Event,
                                 task_status: trio.TaskStatus[BusServer]) -> None:
                with scope:
                    await serve_bus(sock_path, handler=recorder.handle, task_status=task_status)
                stopped.set()

            await nursery.start(serve_once, first, first_stopped)
            await connections[0].wait()
            first.cancel()
            await first_stopped.wait()  # the old socket is gone; a new bus may bind
            await nursery.start(serve_once, trio.CancelScope(), trio.Event())
            await connections[1].wait()
            async with open_bus_client(sock_path, "cli") as cli:
                assert await cli.request("mayor", "ping") == "pong"
            nursery.cancel_scope.cancel()
    assert errors == [BusDisconnected]


# -- the blocking client ----------------------------------------------------------------------


async def test_sync_request_from_a_thread(bus: BusServer, sock_path: Path) -> None:
    """request_sync round-trips against the trio server and raises RemoteError for errors."""
    with trio.fail_after(10):
        result = await trio.to_thread.run_sync(
            partial(request_sync, sock_path, "bus", "echo", {"a": [1]}, name="gastown-cli"))
        assert result == {"params": {"a": [1]}, "sender": "gastown-cli"}
        with pytest.raises(RemoteError, match="no such peer: mayor"):
            await trio.to_thread.run_sync(request_sync, sock_path, "mayor", "sling")


async def test_sync_follower_from_a_thread(bus: BusServer, sock_path: Path) -> None:
    """iter_messages_sync is subscribed when it returns and yields what is published."""
    subscribed = trio.Event()

    def follow() -> list[BusMessage]:
        with iter_messages_sync(sock_path, ["merged"], name="feed") as messages:
            trio.from_thread.run_sync(subscribed.set)
            return [next(messages), next(messages)]

    got: list[BusMessage] = []

    async def run_follower() -> None:
        got.extend(await trio.to_thread.run_sync(follow))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_follower)
            await subscribed.wait()
            bus.publish("ignored", {})
            bus.publish("merged", {"mr": 1})
            bus.publish("merged", {"mr": 2})
    assert got == [BusMessage("merged", {"mr": 1}, "bus"), BusMessage("merged", {"mr": 2}, "bus")]


# -- other users ------------------------------------------------------------------------------

INTRUDER = """
import os, socket, sys
path, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
def frame(body):
    return len(body).to_bytes(4, "big") + body
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(path)
try:
    s.sendall(frame(b'{"op":"hello","name":"intruder","id":0}')
              + frame(b'{"op":"req","id":1,"to":"bus","method":"echo","params":{}}'))
    data = s.recv(65536)
except (BrokenPipeError, ConnectionResetError):
    data = b""
print("closed-without-answer" if data == b"" else "answered " + repr(data))
"""


async def test_peer_with_another_uid_is_refused(nursery: trio.Nursery,
                                                recorder: Recorder) -> None:
    """A process running as another user is disconnected before it gets any answer."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the intruding client as the user nobody")
    nobody = pwd.getpwnam("nobody")
    shared = Path(tempfile.mkdtemp(dir="/tmp", prefix="gt"))
    try:
        shared.chmod(0o755)  # traversable by nobody for this test only
        path = shared / "bus.sock"
        await start_bus(nursery, path, recorder)
        # Widen the socket file too, so the kernel lets nobody connect: the check
        # under test is SO_PEERCRED, the layer behind the file mode.
        path.chmod(0o666)
        with trio.fail_after(10), capture_logs() as logs:
            result = await trio.run_process(
                [sys.executable, "-c", INTRUDER, str(path), str(nobody.pw_uid),
                 str(nobody.pw_gid)], capture_stdout=True, capture_stderr=True)
        assert result.stdout.decode().strip() == "closed-without-answer", result.stderr
        assert any(e["event"] == "bus.peer_refused" and e.get("uid") == nobody.pw_uid
                   for e in logs), logs
        assert recorder.server is not None and recorder.server.peers() == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)
