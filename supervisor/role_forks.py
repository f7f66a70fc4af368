"""The supervisor's side of role forks: roles started from the fork server's template.

Layer: supervisor, the top of the town. :class:`RoleForks` talks to
:mod:`gastown.supervisor.role_template` (inside the fork server that
:mod:`gastown.supervisor.cli_server_runner` keeps running) over a private socket pair;
:class:`ForkedRole` is the handle the role runner awaits and stops, in place of a
``trio.Process``.

A forked role is the template's child, not ours: its death is seen on a pidfd of our
own (which works for any process), its exit status arrives from the template, and its
group is signalled through the template, which alone reaps it and so knows that the
group is still the role's. When the template is gone (killed, restarting), roles it
forked run on; their deaths are still seen on the pidfd, with the status unknown
(``None``), and signals go to the leader alone through the pidfd, which cannot hit a
reused pid. Spawns then fall back to ``exec`` (:func:`start_child`) until a new
template says it is ready: forks only make starts cheaper, never possible.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from ..roles.adapters import log
from ..roles.adapters.children import Lifeline, child_env

#: Set to ``0`` (in the supervisor's environment) to start every role by ``exec``.
ENV_SWITCH: Final = "GASTOWN_ROLE_FORKS"

#: How long a spawn waits for a template that is starting (its imports) before it
#: starts the role by ``exec`` instead.
READY_WAIT: Final = 5.0

#: How long, after a forked role's death, its status may take to arrive.
STATUS_WAIT: Final = 2.0


class ForkedRole:
    """A role process forked by the template: ``pid``, :meth:`wait`, :meth:`stop`."""

    def __init__(self, forks: RoleForks, pid: int, channel: trio.socket.SocketType) -> None:
        self.forks = forks
        self.pid = pid
        self._channel = channel
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # already dead and reaped: its status is on its way
            self._pidfd = None
        self.status: int | None = None
        self.reported = trio.Event()
        self._waited = False

    async def wait(self) -> int | None:
        """Await the role's death; its status, or None when the template could not say."""
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        with trio.move_on_after(STATUS_WAIT):
            await self.reported.wait()
        self._waited = True
        return self.status

    def alive(self) -> bool:
        """Whether the role has not died yet (a pidfd turns readable at death)."""
        if self._pidfd is None:
            return False
        return not select.select([self._pidfd], [], [], 0)[0]

    async def send_signal(self, sig: signal.Signals) -> None:
        """Signal the role's group through the template; its leader alone if it is gone."""
        if not self.alive():
            return
        if self._channel is self.forks.channel and not self.forks.lost:
            await self.forks.send({"op": "signal", "pid": self.pid, "signal": int(sig)})
        elif self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    async def stop(self, grace: float) -> int | None:
        """SIGTERM to the group, up to ``grace`` s, then SIGKILL; the status (shielded)."""
        with trio.CancelScope(shield=True):
            if self._waited:
                return self.status
            log.get_logger().info("child stopping", pid=self.pid, grace=grace)
            await self.send_signal(signal.SIGTERM)
            with trio.move_on_after(max(grace, 0.0)) as scope:
                await self._wait_dead()
            if scope.cancelled_caught:
                log.get_logger().warning("child ignored SIGTERM; killing its group",
                                         pid=self.pid, grace=grace)
                await self.send_signal(signal.SIGKILL)
            status = await self.wait()
        log.get_logger().info("child stopped", pid=self.pid, status=status)
        return status

    async def _wait_dead(self) -> None:
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)


class RoleForks:
    """The supervisor's end of the channel to the current template (if any)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.enabled = env.get(ENV_SWITCH) != "0"
        self.channel: trio.socket.SocketType | None = None
        self.lost = True
        self._ready = trio.Event()
        self._next_id = 0
        self._pending: dict[int, trio.MemorySendChannel[ForkedRole | str]] = {}
        self._roles: dict[int, ForkedRole] = {}
        self._send_lock = trio.Lock()
        #: A template is starting or running: a spawn waits (a while) for it to be ready.
        self.starting = False

    def new_channel(self) -> tuple[socket.socket, socket.socket] | None:
        """A socket pair for a template about to start: (ours, the template's); None
        when forks are switched off."""
        if not self.enabled:
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.set_inheritable(False)
        self.starting = True
        return ours, theirs

    def abandon(self) -> None:
        """The template did not start: spawns ``exec`` at once, without waiting for it."""
        self.starting = False

    async def serve(self, ours: socket.socket) -> None:
        """Read the template's messages until it goes; then forget it (spawns ``exec``)."""
        channel = trio.socket.from_stdlib_socket(ours)
        self.channel, self.lost = channel, False
        buffer = b""
        try:
            while True:
                data = await channel.recv(65536)
                if not data:
                    return
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._dispatch(json.loads(line))
        except OSError:
            return
        finally:
            self.lost = True
            self.starting = False
            if self.channel is channel:
                self.channel = None
                self._ready = trio.Event()
            channel.close()
            for waiting in self._pending.values():
                waiting.close()
            self._pending.clear()
            for role in self._roles.values():
                role.reported.set()  # nobody will say: the status is unknown
            self._roles.clear()

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "ready":
            self._ready.set()
        elif op in ("spawned", "failed"):
            reply = self._pending.pop(int(message["id"]), None)
            outcome: ForkedRole | str = str(message.get("error"))
            if op == "spawned" and self.channel is not None:
                # Registered here, before any later line: its "exited" may be the next one.
                outcome = self._roles[int(message["pid"])] = ForkedRole(
                    self, int(message["pid"]), self.channel)
            if reply is not None:
                reply.send_nowait(outcome)
                reply.close()
        elif op == "exited":
            role = self._roles.pop(int(message["pid"]), None)
            if role is not None:
                role.status = int(message["status"])
                role.reported.set()

    async def send(self, message: dict[str, Any]) -> None:
        channel = self.channel
        if channel is None:
            return
        async with self._send_lock:
            data = memoryview(json.dumps(message).encode() + b"\n")
            try:
                while data:
                    data = data[await channel.send(data):]
            except OSError:
                pass

    async def spawn(self, args: Sequence[str], *, env: Mapping[str, str], cwd: Path,
                    lifeline: Lifeline, stdout_path: Path, token: str | None,
                    title: str) -> ForkedRole | None:
        """Fork ``python -m gastown.roles ARGS`` from the template; None when there is no
        template ready within :data:`READY_WAIT` (the caller starts it by ``exec``)."""
        if not self.enabled or lifeline.closed or not self.starting:
            return None
        with trio.move_on_after(READY_WAIT):
            await self._ready.wait()
        channel = self.channel
        if channel is None or self.lost or not self._ready.is_set():
            return None
        stdout_path.parent.mkdir(parents=True, exist_ok=True)
        self._next_id += 1
        request_id = self._next_id
        send, receive = trio.open_memory_channel[ForkedRole | str](1)
        self._pending[request_id] = send
        await self.send({"op": "spawn", "id": request_id, "args": list(args),
                         "env": child_env(env, lifeline.env()), "cwd": str(cwd),
                         "stdout": str(stdout_path), "token": token, "title": title})
        try:
            with trio.CancelScope(shield=True):  # a started role must reach its runner
                reply = await receive.receive()
        except trio.EndOfChannel:
            return None
        if isinstance(reply, str):
            log.get_logger().warning("role fork failed", error=reply)
            return None
        log.get_logger().info("child started", pid=reply.pid, forked=True,
                              stdout=str(stdout_path))
        return reply
