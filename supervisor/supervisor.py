"""The supervisor: one per town, it keeps the role processes alive and hosts the bus.

Layer: supervisor (the top: it runs the roles as processes and serves the bus). This
module is the whole, wired together; each part is a module of its own:

- :mod:`.role_runner`: one runner task per role (spawn, await, decide, back off,
  respawn) and who may hold a role's name on the bus;
- :mod:`.relay`: the single writer of ``events.jsonl``, which also publishes every
  store event on the bus;
- :mod:`.readiness`: systemd's ``STATUS=`` line and watchdog pings;
- :mod:`.reload` (pure): which roles a configuration change restarts.

It spawns ``mayor`` and, for every rig in the store, ``witness:<rig>`` and
``refinery:<rig>``. Readiness is what the role says over the bus (``ready``), never a
guess from elapsed time. Rigs added or removed arrive as store events through the relay
and start or stop that rig's roles alone.

Shutdown (SIGTERM, SIGINT, ``shutdown`` request, or a critical role given up) stops the
roles in reverse start order, each with its own SIGTERM -> grace -> SIGKILL, then closes
the bus. If the supervisor itself is killed, its roles see the lifeline close and exit.
SIGTERM is caught from before the town's lock is taken, so a ``down`` that finds the
supervisor still starting stops it cleanly; whoever waits for readiness is then told
that the start-up was stopped.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, Final

import trio

from ..roles.adapters import log
from ..roles.adapters.async_store import AsyncStore
from ..roles.adapters.children import Lifeline
from ..roles.adapters.faults import fault_point
from ..roles.adapters.outbox_wake import wake_path
from ..roles.adapters.store import Store
from ..roles.adapters.town import Town
from ..roles.core.config import RigConfig
from ..roles.core.errors import GastownError
from ..roles.core.events_town import (
    ReloadRefused,
    RoleReady,
    SupervisorStarted,
    SupervisorStopRequested,
    TownReloaded,
)
from ..roles.role_context import bus_path
from . import __version__
from .bus.requests import Ready, Reply, Request, typed_handler
from .cli_server_fork import ForkedServer
from .cli_server_runner import keep_cli_server
from .feed import EventLog
from .readiness import StatusReporter, watchdog, watchdog_interval
from .relay import OutboxRelay
from .role_forks import RoleForks
from .role_runner import (
    CRITICAL_ROLES,
    RoleRunner,
    Spawner,
    authorize_claim,
    desired_roles,
)
from .sd_notify import notify

#: How long a role's Ready waits for its spawn to be recorded (see :meth:`_handle`).
READY_RECORD_WAIT: Final = 10.0

#: Signals the supervisor handles: SIGTERM/SIGINT stop the town, SIGHUP reloads it.
SUPERVISOR_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

ReadyCallback = Callable[[dict[str, Any]], None]


class Supervisor:
    """The town's supervisor: its roles, its bus, its feed relay and its stop."""

    def __init__(self, town: Town, store: AsyncStore, lifeline: Lifeline) -> None:
        self.town = town
        self.config = town.config
        self.store = store
        self.roles: dict[str, RoleRunner] = {}
        self.started_at = time.time()
        self.exit_code = 0
        self.state = "starting"
        self._nursery: trio.Nursery | None = None
        self._relay = OutboxRelay(store, EventLog(town.events_path))
        self._stop_requested = trio.Event()
        self._stop_reason = ""
        self._reported = False
        self._reconcile_lock = trio.Lock()
        self._log = log.get_logger()
        self.spawner = Spawner(town, store, lifeline, poke=self._relay.poke,
                               give_up=self._give_up, forks=RoleForks(os.environ))
        self._status = StatusReporter(store, self.roles)
        self.rig_configs: dict[str, RigConfig] = {}
        self._reload_lock = trio.Lock()
        #: The CLI server ``up`` forked for this supervisor, until it is adopted.
        self.first_cli_server: ForkedServer | None = None

    # -- the whole ---------------------------------------------------------------------

    async def run(self, on_ready: ReadyCallback | None = None,
                  signals: AsyncIterator[int] | None = None) -> int:
        """Run until asked to stop; returns the process exit status (non-zero: gave up).

        ``signals`` is a receiver already open (so that signals sent before this runs are
        not lost); without one, one is opened here.
        """
        from .bus.server import serve_bus

        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_signals, signals)
                await nursery.start(self._relay.listen_for_wakes, wake_path(self.town.db_path))
                self._relay.bus = await nursery.start(partial(
                    serve_bus, bus_path(self.town),
                    handler=typed_handler(self._handle, "the supervisor"),
                    on_publish=self._on_publish, authorize=self._authorize))
                nursery.start_soon(self._relay.run, self._after_drain)
                interval = watchdog_interval(os.environ, os.getpid())
                if interval is not None:
                    nursery.start_soon(watchdog, bus_path(self.town), self.roles, interval)
                await self._relay.emit(SupervisorStarted(pid=os.getpid(), version=__version__))
                # The fork server first: the roles are forked from it once it is ready.
                first, self.first_cli_server = self.first_cli_server, None
                nursery.start_soon(keep_cli_server, self.town, self.spawner.lifeline,
                                   self.spawner.env, self.spawner.forks, first)
                await self._reconcile_roles()
                nursery.start_soon(self._report_ready, on_ready)
                await self._stop_requested.wait()
                await self._stop_all()
                self._report_stopped(on_ready)
                await self._relay.drain_once()
                nursery.cancel_scope.cancel()
        finally:
            self._relay.events.close()
        return self.exit_code

    def _report_stopped(self, on_ready: ReadyCallback | None) -> None:
        """Tell whoever waits for readiness that the start-up was stopped (if it was)."""
        if self._reported:
            return
        self._reported = True
        failed = "".join(f"; {r.name} failed: {r.reason}" for r in self.roles.values()
                         if r.state == "failed")
        if on_ready is not None:
            on_ready({"ok": False, "stopped": True, "pid": os.getpid(),
                      "error": f"the town was stopped during start-up ({self._stop_reason})"
                               + failed})

    def request_stop(self, reason: str, *, exit_code: int = 0) -> None:
        if not self._stop_requested.is_set():
            self._log.info("supervisor_stopping", reason=reason)
            # Roles stop one after another, each allowed its whole grace period.
            budget = (len(self.roles) * self.config.supervisor.stop_timeout + 5) * 1_000_000
            notify("STOPPING=1", f"STATUS=stopping: {reason}",
                   f"EXTEND_TIMEOUT_USEC={int(budget)}")
            self.exit_code = exit_code
            self.state = "stopping"
            self._stop_reason = reason
            self._stop_requested.set()
            assert self._nursery is not None
            self._nursery.start_soon(self._relay.emit, SupervisorStopRequested(reason=reason))

    def _give_up(self, runner: RoleRunner) -> None:
        self.request_stop(f"critical role {runner.name} failed", exit_code=1)

    async def _watch_signals(self, signals: AsyncIterator[int] | None) -> None:
        if signals is None:
            with trio.open_signal_receiver(*SUPERVISOR_SIGNALS) as receiver:
                await self._watch_signals(receiver)
            return
        async for signum in signals:
            if signum == signal.SIGHUP:
                assert self._nursery is not None
                self._nursery.start_soon(self.reload, "SIGHUP")
                continue
            self.request_stop(signal.Signals(signum).name)

    async def reload(self, reason: str) -> Reply:
        """Re-read town.toml and every rig.toml; restart only the roles that changed.

        A configuration with an error is refused: the running one stays, the error is
        returned (and logged, and in the feed).
        """
        from ..roles.adapters.town import read_rig_config, read_town_config
        from .reload import roles_to_restart

        async with self._reload_lock:
            notify("RELOADING=1", f"MONOTONIC_USEC={int(time.monotonic() * 1_000_000)}",
                   "STATUS=reloading configuration")
            try:
                rigs = [r.name for r in await self.store.call(self.store.store.rigs)]
                new_town = await trio.to_thread.run_sync(read_town_config,
                                                         self.town.config_path)
                new_rigs = {rig: await trio.to_thread.run_sync(
                    read_rig_config, self.town.rig_config_path(rig)) for rig in rigs}
            except GastownError as exc:
                self._log.error("reload_refused", reason=reason, error=exc.message)
                await self._relay.emit(ReloadRefused(reason=reason, error=exc.message))
                notify("READY=1", f"STATUS={await self._status.line()}")
                return {"ok": False, "error": exc.message}
            old_rigs = {rig: self.rig_configs.get(rig, new_rigs[rig]) for rig in rigs}
            restart = roles_to_restart(self.config, new_town, old_rigs, new_rigs)
            self.config = new_town
            self.rig_configs = new_rigs
            self.spawner.configure(new_town)
            for name in restart:
                old = self.roles.get(name)
                if old is None:
                    continue
                await self._stop_role(old)
                fresh = RoleRunner(name=name, critical=old.critical, restarts=old.restarts)
                self.roles[name] = fresh
                assert self._nursery is not None
                self._nursery.start_soon(self.spawner.run, fresh)
            self._log.info("town_reloaded", reason=reason, restarted=restart)
            await self._relay.emit(TownReloaded(reason=reason, restarted=tuple(restart)))
            notify("READY=1", f"STATUS={await self._status.line()}")
            return {"ok": True, "restarted": restart}

    async def _stop_all(self) -> None:
        """Stop every role, in reverse start order, each with its own grace period."""
        with trio.CancelScope(shield=True):
            for runner in reversed(list(self.roles.values())):
                await self._stop_role(runner)

    async def _stop_role(self, runner: RoleRunner) -> None:
        runner.stopping = True
        runner.scope.cancel()
        await runner.done.wait()

    async def _report_ready(self, on_ready: ReadyCallback | None) -> None:
        """Tell whoever started us once every role is ready or has been given up on."""
        for runner in list(self.roles.values()):
            await runner.first_outcome.wait()
        if self._stop_requested.is_set() or self._reported:
            return  # run() reports the stop once the roles are down
        self._reported = True
        failed = [r for r in self.roles.values() if r.state == "failed"]
        if self.state == "starting":
            self.state = "running"
        outcome: dict[str, Any] = {"ok": not failed, "pid": os.getpid()}
        if failed:
            outcome["error"] = "; ".join(f"{r.name} failed: {r.reason}" for r in failed)
        self._log.info("supervisor_ready", ok=not failed, roles=len(self.roles))
        if not failed:
            notify("READY=1", f"STATUS={await self._status.line()}", f"MAINPID={os.getpid()}")
        if on_ready is not None:
            on_ready(outcome)

    # -- rigs and roles ----------------------------------------------------------------

    async def _reconcile_roles(self) -> None:
        """Start the roles of new rigs and stop those of removed ones; others are untouched."""
        async with self._reconcile_lock:
            if self._stop_requested.is_set():
                return
            rigs = [r.name for r in await self.store.call(Store.rigs, self.store.store)]
            for rig in rigs:
                if rig not in self.rig_configs:
                    try:
                        self.rig_configs[rig] = await trio.to_thread.run_sync(
                            self.town.rig_config, rig)
                    except GastownError as exc:
                        self._log.warning("rig_config_unreadable", rig=rig, error=exc.message)
            for rig in list(self.rig_configs):
                if rig not in rigs:
                    del self.rig_configs[rig]
            wanted = desired_roles(rigs)
            for name in reversed([n for n in self.roles if n not in wanted]):
                runner = self.roles[name]
                await self._stop_role(runner)
                del self.roles[name]
                await self.store.call(self.store.store.forget_role, name)
            assert self._nursery is not None
            for name in wanted:
                if name not in self.roles:
                    runner = RoleRunner(name=name, critical=name in CRITICAL_ROLES)
                    self.roles[name] = runner
                    self._nursery.start_soon(self.spawner.run, runner)

    async def _after_drain(self, rigs_changed: bool) -> None:
        """After the relay copied new events: follow rigs added or removed, update STATUS=."""
        if rigs_changed and self._nursery is not None and not self._stop_requested.is_set():
            self._nursery.start_soon(self._reconcile_roles)
        if self.state == "running":
            await self._status.update()

    # -- bus ---------------------------------------------------------------------------

    def _authorize(self, name: str, pid: int, token: str | None) -> str | None:
        return authorize_claim(self.roles, name, pid, token)

    async def _handle(self, request: Request, sender: str) -> Reply:
        if isinstance(request, Ready):
            runner = self.roles.get(sender)
            if runner is not None and runner.pid is None:
                # Forked, a role can be ready before its spawn is recorded here: the bus
                # already checked its token, so wait for the pid (a few milliseconds).
                with trio.move_on_after(READY_RECORD_WAIT):
                    await runner.recorded.wait()
            if runner is None or request.pid != runner.pid:
                raise GastownError(f"{sender} (pid {request.pid}) is not a role of "
                                   "this supervisor")
            runner.state = "running"
            runner.reason = None
            await self.spawner.record(runner, RoleReady)
            runner.first_outcome.set()
            return {"ok": True}
        if request.method == "status":
            return self.status()
        if request.method == "ping":
            return {"pong": "bus", "pid": os.getpid()}
        if request.method == "outbox":
            self._relay.poke()
            return {"ok": True}
        if request.method == "reload":
            return await self.reload(f"requested by {sender}")
        if request.method == "shutdown":
            self.request_stop(f"shutdown requested by {sender}")
            return {"stopping": True, "pid": os.getpid()}
        raise GastownError(f"the supervisor does not know the request {request.method!r}")

    def _on_publish(self, topic: str, data: dict[str, Any]) -> None:
        if topic == "outbox":
            self._relay.poke()

    def status(self) -> Reply:
        now = time.time()
        return {
            "town": str(self.town.root),
            "supervisor": {"pid": os.getpid(), "state": self.state, "started_at": self.started_at,
                           "uptime": round(now - self.started_at, 3), "version": __version__},
            "roles": [r.as_status(now) for r in self.roles.values()],
        }


async def run_supervisor(town: Town, on_ready: ReadyCallback | None = None,
                         on_locked: Callable[[], None] | None = None,
                         lifeline: Lifeline | None = None,
                         cli_server: ForkedServer | None = None) -> int:
    """Take the town's supervisor lock and supervise until stopped; returns the exit status.

    ``on_locked`` is called once the lock is taken and the pid file written, or the lock
    was refused (``up`` then releases its start-up lock: ``down`` can see the town).

    Raises :class:`~gastown.roles.adapters.town_lock.SupervisorRunning` when another
    supervisor holds the town.

    ``lifeline`` and ``cli_server``: the lifeline ``up`` opened and the CLI server it forked
    on it before trio started (:mod:`.cli_server_fork`); the server is told to serve once
    the lock is held.
    """
    from ..roles.adapters.children import open_lifeline
    from ..roles.adapters.town_lock import acquire_supervisor_lock

    # Open before the lock: once `down` can see this supervisor, a SIGTERM from it is
    # handled as a clean stop (no default action killing a half-started town).
    with trio.open_signal_receiver(*SUPERVISOR_SIGNALS) as signals:
        try:
            lock = acquire_supervisor_lock(town.runtime_dir)
        finally:
            if on_locked is not None:
                on_locked()
        try:
            fault_point("supervisor", "start.locked")
            store = await AsyncStore.open(town.db_path)
            try:
                with lifeline if lifeline is not None else open_lifeline() as held:
                    supervisor = Supervisor(town, store, held)
                    supervisor.first_cli_server = cli_server
                    return await supervisor.run(on_ready, signals)
            finally:
                store.close()
        finally:
            lock.release()
