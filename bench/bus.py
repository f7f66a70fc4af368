"""The bus: request round trips and throughput through the supervisor's bus vs a direct socket.

Three processes, as in a town: the bus (``serve_bus``, as the supervisor runs it), a peer
``mayor`` that answers ``echo`` requests, and the bench as the client ``cli``. The
baseline is a direct trio Unix-socket server in its own process answering the same
frames (4-byte length + JSON, the bus's ``frames`` module) with the same reply shape.
Cases, interleaved in shuffled rounds: a request to the peer through the bus (two hops),
a request answered by the bus itself (one hop), a direct request; round trips p50/p90,
and throughput with 32 requests in flight. Publications: one client publishes, another
subscribed to the topic receives; publications/s until the last one arrives (drops counted).
"""

from __future__ import annotations

import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from gastown.supervisor.bus import BusClient, open_bus_client, serve_bus
from gastown.supervisor.bus.frames import FrameDecoder, encode_frame

SEQ = 200  # sequential requests per case per round
CONCURRENT = 32


async def _echo(method: str, params: dict[str, Any], sender: str) -> Any:
    return params


async def serve_bus_main(path: str) -> None:
    await serve_bus(Path(path), handler=_echo)


async def peer_main(path: str) -> None:
    async with open_bus_client(Path(path), "mayor", handler=_echo) as client:
        await client.wait_disconnected()


async def _direct_conn(stream: trio.SocketStream) -> None:
    decoder = FrameDecoder()
    async with stream:
        while data := await stream.receive_some(65536):
            for msg in decoder.feed(data):
                await stream.send_all(encode_frame(
                    {"op": "rep", "id": msg["id"], "result": msg.get("params")}))


async def direct_main(path: str) -> None:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(128)
    await trio.serve_listeners(_direct_conn, [trio.SocketListener(sock)])


class Direct:
    """A client of the direct server: one request in flight per call, replies by id."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.ids = 0
        self.waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.lock = trio.Lock()

    async def read_loop(self) -> None:
        while data := await self.stream.receive_some(65536):
            for msg in self.decoder.feed(data):
                await self.waiting.pop(msg["id"]).send(msg)

    async def request(self, params: dict[str, Any]) -> Any:
        self.ids += 1
        rid = self.ids
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self.waiting[rid] = send
        async with self.lock:
            await self.stream.send_all(encode_frame(
                {"op": "req", "id": rid, "to": "echo", "method": "echo",
                 "params": params}))
        return (await receive.receive())["result"]


async def bench(d: Path, rounds: int) -> dict[str, Any]:
    lat: dict[str, list[float]] = {"bus -> peer": [], "bus itself": [], "direct socket": []}
    tput: dict[str, list[float]] = {k: [] for k in lat}
    async with trio.open_nursery() as nursery, \
            open_bus_client(d / "bus.sock", "cli") as cli, \
            await trio.open_unix_socket(str(d / "direct.sock")) as stream:
        direct = Direct(stream)
        nursery.start_soon(direct.read_loop)
        calls: dict[str, Any] = {"bus -> peer": partial(cli.request, "mayor", "echo"),
                 "bus itself": partial(cli.request, "bus", "echo"),
                 "direct socket": direct.request}
        for _ in range(rounds):
            order = list(calls)
            random.shuffle(order)
            for name in order:
                call = calls[name]
                for i in range(SEQ):
                    start = time.perf_counter()
                    await call({"n": i})
                    lat[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                async with trio.open_nursery() as burst:
                    for w in range(CONCURRENT):
                        async def worker(w: int = w, call: Any = call) -> None:
                            for i in range(SEQ // 4):
                                await call({"n": i, "w": w})
                        burst.start_soon(worker)
                tput[name].append(CONCURRENT * (SEQ // 4) / (time.perf_counter() - start))
        pubs = await _publications(d, cli)
        nursery.cancel_scope.cancel()
    out: dict[str, Any] = {}
    base = statistics.median(lat["direct socket"])
    for name, xs in lat.items():
        xs.sort()
        out[name] = {"p50_us": statistics.median(xs) * 1e6,
                     "p90_us": xs[int(0.9 * (len(xs) - 1))] * 1e6,
                     "ratio_direct": statistics.median(xs) / base,
                     "requests_per_s": statistics.median(tput[name])}
    out["publications"] = pubs
    return out


async def _publications(d: Path, publisher: BusClient, count: int = 20000) -> dict[str, float]:
    async with open_bus_client(d / "bus.sock", "witness:web") as sub:
        channel = await sub.subscribe("bench.topic", max_buffer=count + 10)
        start = time.perf_counter()
        got = dropped = 0
        async with trio.open_nursery() as nursery:
            async def publish() -> None:
                for i in range(count):
                    await publisher.publish("bench.topic", {"n": i})
            nursery.start_soon(publish)
            with trio.move_on_after(60):
                async for msg in channel:
                    if msg.topic == "bench.topic":
                        got += 1
                    else:
                        dropped += int(msg.data.get("count", 0))
                    if got + dropped >= count:
                        break
        return {"published": count, "received": got, "dropped": dropped,
                "per_s": got / (time.perf_counter() - start)}


def main(rounds: int = 5) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="gtbb", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for role, sock in (("bus", "bus.sock"), ("direct", "direct.sock")):
            procs.append(subprocess.Popen([sys.executable, "-m", "bench.bus", role,
                                           str(d / sock)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + 30
            while not (d / sock).exists():  # start-up, not a measurement
                if time.monotonic() > deadline:
                    raise SystemExit(f"the {role} server did not start")
                time.sleep(0.02)
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.bus", "peer",
                                       str(d / "bus.sock")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # the peer says hello
        out = trio.run(bench, d, rounds)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)
    print(f"{'request':16} {'p50 us':>8} {'p90 us':>8} {'x direct':>9} "
          f"{'req/s (32 in flight)':>21}")
    for name in ("bus -> peer", "bus itself", "direct socket"):
        r = out[name]
        print(f"{name:16} {r['p50_us']:8.0f} {r['p90_us']:8.0f} {r['ratio_direct']:9.2f} "
              f"{r['requests_per_s']:21.0f}")
    p = out["publications"]
    print(f"publications: {p['per_s']:.0f}/s delivered to a subscriber ({p['received']:.0f} of "
          f"{p['published']:.0f}, {p['dropped']:.0f} dropped)")
    print(f"({rounds} interleaved rounds of {SEQ} sequential requests and {CONCURRENT}x"
          f"{SEQ // 4} concurrent ones per case)")
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3:
        target = {"bus": serve_bus_main, "peer": peer_main, "direct": direct_main}[sys.argv[1]]
        trio.run(target, sys.argv[2])
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
