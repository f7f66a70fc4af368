"""The supervisor: one per town, it keeps the role processes alive and hosts the bus.

It spawns ``mayor`` and, for every rig in the store, ``witness:<rig>`` and
``refinery:<rig>``, each a separate OS process with one runner task that owns it
(spawn, await, decide, back off, respawn). When to restart is
:mod:`~gastown.supervisor.restart_policy`'s pure decision; how to start and stop a
process is :mod:`~gastown.roles.adapters.children`'s. Readiness is what the role says over
the bus (``ready``), never a guess from elapsed time.

It is also the single writer of ``events.jsonl``: processes that change the store poke
it (a ``pub`` on topic ``outbox`` or an ``outbox`` request to ``bus``), and it copies the
new outbox rows to the file and publishes each on the bus under its kind. Rigs added or
removed arrive the same way and start or stop that rig's roles alone.

Shutdown (SIGTERM, SIGINT, ``shutdown`` request, or a critical role given up) stops the
roles in reverse start order, each with its own SIGTERM -> grace -> SIGKILL, then closes
the bus. If the supervisor itself is killed, its roles see the lifeline close and exit.
SIGTERM is caught from before the town's lock is taken, so a ``down`` that finds the
supervisor still starting stops it cleanly; whoever waits for readiness is then told
that the start-up was stopped.

Each spawn gets a fresh secret token (on a pipe, see :mod:`.children`); the bus grants
a role's name only to a hello that presents the current token from the role's own pid
(``SO_PEERCRED``), so no other process can take over a role's requests.
"""

from __future__ import annotations

import hmac
import os
import random
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import trio

from ..roles.adapters import log
from ..roles.adapters.async_store import AsyncStore
from ..roles.adapters.children import Lifeline, start_child, stop_child
from ..roles.adapters.faults import fault_point
from ..roles.adapters.store import Store
from ..roles.adapters.town import Town
from ..roles.adapters.town_lock import ROLE_LOCKED_EXIT, role_lock_holder
from ..roles.core.config import RigConfig, TownConfig
from ..roles.core.errors import GastownError, StoreError
from ..roles.role_context import bus_path
from . import __version__
from .feed import EventLog, describe_exit
from .restart_policy import GiveUp, RestartPolicy, RoleHistory, decide_restart
from .sd_notify import notify

#: Roles whose loss the town cannot work around: giving up on one stops the supervisor
#: with a non-zero status, so that systemd (Restart=on-failure) takes over.
CRITICAL_ROLES: Final = frozenset({"mayor"})

#: Signals the supervisor handles: SIGTERM/SIGINT stop the town, SIGHUP reloads it.
SUPERVISOR_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

#: The outbox is drained on every poke; this slow timer only catches a poke lost to a
#: process that died between its commit and its poke.
OUTBOX_SAFETY_INTERVAL: Final = 30.0

ReadyCallback = Callable[[dict[str, Any]], None]

#: Name kinds the bus reserves for the supervisor's role processes.
ROLE_NAME_KINDS: Final = frozenset({"mayor", "witness", "refinery"})


def is_role_name(name: str) -> bool:
    """Whether ``name`` is in the roles' namespace (``mayor``, ``witness:*``, ``refinery:*``)."""
    return name.partition(":")[0] in ROLE_NAME_KINDS


def policy_of(config: TownConfig) -> RestartPolicy:
    sup = config.supervisor
    return RestartPolicy(base_delay=sup.restart_delay, max_delay=sup.restart_max_delay,
                         max_restarts=sup.max_restarts, period=sup.restart_period,
                         stable_after=sup.stable_after)


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None if off.

    ``WATCHDOG_PID``, when set, must name this process (systemd sets it for the main
    process only).
    """
    usec = env.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if env.get("WATCHDOG_PID") not in (None, "", str(pid)):
        return None
    return int(usec) / 2 / 1_000_000


def desired_roles(rigs: list[str]) -> list[str]:
    """The roles a town with these rigs runs, in start order."""
    roles = ["mayor"]
    for rig in sorted(rigs):
        roles += [f"witness:{rig}", f"refinery:{rig}"]
    return roles


@dataclass
class RoleRunner:
    """The supervisor's view of one role; mutated only by its runner task."""

    name: str
    critical: bool
    state: str = "starting"  # starting, running, backoff, stopping, stopped, failed
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0
    last_exit: int | None = None
    reason: str | None = None
    history: RoleHistory = field(default_factory=RoleHistory)
    first_outcome: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    stopping: bool = False
    #: The secret of the current spawn (None between spawns): the role's claim to its name.
    token: str | None = field(default=None, repr=False)

    def as_status(self, now: float) -> dict[str, Any]:
        running = self.state == "running" and self.started_at is not None
        return {
            "name": self.name, "pid": self.pid, "state": self.state,
            "uptime": round(now - self.started_at, 3) if running and self.started_at else None,
            "started_at": self.started_at, "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_exit_text": describe_exit(self.last_exit) if self.restarts or self.state in (
                "failed", "backoff", "stopped") else None,
            "reason": self.reason, "critical": self.critical,
        }


class Supervisor:
    def __init__(self, town: Town, store: AsyncStore, lifeline: Lifeline) -> None:
        self.town = town
        self.config = town.config
        self.store = store
        self.lifeline = lifeline
        self.roles: dict[str, RoleRunner] = {}
        self.started_at = time.time()
        self.exit_code = 0
        self.state = "starting"
        self._nursery: trio.Nursery | None = None
        self._bus: Any = None
        self._outbox_poked = trio.Event()
        self._stop_requested = trio.Event()
        self._stop_reason = ""
        self._reported = False
        self._reconcile_lock = trio.Lock()
        self._last_status = ""
        self._log = log.get_logger()
        self.policy = policy_of(self.config)
        self.rig_configs: dict[str, RigConfig] = {}
        self._reload_lock = trio.Lock()
        from ..roles.adapters.log import JOURNAL_ENV, under_journald

        self._child_env = dict(os.environ)
        if under_journald(os.environ):
            # JOURNAL_STREAM is scrubbed from children (it names *our* stderr); tell the
            # roles explicitly that their lines belong in the journal.
            self._child_env[JOURNAL_ENV] = "1"

    # -- the whole ---------------------------------------------------------------------

    async def run(self, on_ready: ReadyCallback | None = None,
                  signals: AsyncIterator[int] | None = None) -> int:
        """Run until asked to stop; returns the process exit status (non-zero: gave up).

        ``signals`` is a receiver already open (so that signals sent before this runs are
        not lost); without one, one is opened here.
        """
        from .bus.server import serve_bus

        events = EventLog(self.town.events_path)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_signals, signals)
                self._bus = await nursery.start(partial(
                    serve_bus, bus_path(self.town), handler=self._handle,
                    on_publish=self._on_publish, authorize=self._authorize))
                nursery.start_soon(self._drain_outbox, events)
                watchdog = watchdog_interval(os.environ, os.getpid())
                if watchdog is not None:
                    nursery.start_soon(self._watchdog, watchdog)
                await self._emit("supervisor_started", pid=os.getpid(), version=__version__)
                await self._reconcile_roles()
                nursery.start_soon(self._report_ready, on_ready)
                await self._stop_requested.wait()
                await self._stop_all()
                self._report_stopped(on_ready)
                await self._drain_once(events)
                nursery.cancel_scope.cancel()
        finally:
            events.close()
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
            self._nursery.start_soon(partial(self._emit, "supervisor_stopping", reason=reason))

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

    async def reload(self, reason: str) -> dict[str, Any]:
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
                await self._emit("reload_refused", reason=reason, error=exc.message)
                notify("READY=1", f"STATUS={await self._status_line()}")
                return {"ok": False, "error": exc.message}
            old_rigs = {rig: self.rig_configs.get(rig, new_rigs[rig]) for rig in rigs}
            restart = roles_to_restart(self.config, new_town, old_rigs, new_rigs)
            self.config = new_town
            self.rig_configs = new_rigs
            self.policy = policy_of(new_town)
            for name in restart:
                old = self.roles.get(name)
                if old is None:
                    continue
                await self._stop_role(old)
                fresh = RoleRunner(name=name, critical=old.critical, restarts=old.restarts)
                self.roles[name] = fresh
                assert self._nursery is not None
                self._nursery.start_soon(self._run_role, fresh)
            self._log.info("town_reloaded", reason=reason, restarted=restart)
            await self._emit("town_reloaded", reason=reason, restarted=restart)
            notify("READY=1", f"STATUS={await self._status_line()}")
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
            notify("READY=1", f"STATUS={await self._status_line()}", f"MAINPID={os.getpid()}")
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
                    self._nursery.start_soon(self._run_role, runner)

    async def _run_role(self, runner: RoleRunner) -> None:
        """Own one role process for its whole life: spawn, await, decide, back off."""
        argv = [sys.executable, "-m", "gastown.roles", runner.name, "--town", str(self.town.root)]
        stdout_path = self.town.logs_dir / (runner.name.replace(":", "-") + ".out")
        proc: trio.Process | None = None
        with log.bound(role_name=runner.name), runner.scope:
            try:
                while not runner.stopping:
                    runner.state = "starting"
                    runner.history = runner.history.record_start(trio.current_time())
                    runner.token = secrets.token_urlsafe(32)
                    try:
                        proc = await start_child(argv, env=self._child_env, cwd=self.town.root,
                                                 lifeline=self.lifeline,
                                                 stdout_path=stdout_path, token=runner.token)
                    except OSError as exc:
                        runner.history = runner.history.record_exit(self.policy,
                                                                    trio.current_time())
                        code: int | None = None
                        runner.reason = f"could not start: {exc}"
                    else:
                        runner.pid, runner.started_at = proc.pid, time.time()
                        await self._record(runner, "role_started")
                        code = await proc.wait()
                        proc = None
                        runner.history = runner.history.record_exit(self.policy,
                                                                    trio.current_time())
                        if code == ROLE_LOCKED_EXIT:
                            runner.reason = self._lock_refusal(runner.name)
                    runner.last_exit = code
                    runner.pid = None
                    runner.token = None
                    if runner.stopping:
                        break
                    decision = decide_restart(self.policy, runner.history, trio.current_time(),
                                              random.random())
                    if isinstance(decision, GiveUp):
                        last = (runner.reason if code == ROLE_LOCKED_EXIT and runner.reason
                                else describe_exit(code))
                        runner.state, runner.reason = "failed", f"{decision.reason}; last {last}"
                        await self._record(runner, "role_failed")
                        runner.first_outcome.set()
                        if runner.critical:
                            self.request_stop(f"critical role {runner.name} failed",
                                              exit_code=1)
                        return
                    runner.state = "backoff"
                    await self._record(runner, "role_exited")
                    runner.restarts += 1
                    await self._record(runner, "role_restarting", delay=round(decision.delay, 3))
                    await trio.sleep(decision.delay)
            finally:
                with trio.CancelScope(shield=True):
                    if proc is not None:
                        runner.state = "stopping"
                        grace = self.config.supervisor.stop_timeout
                        runner.last_exit = await stop_child(proc, grace)
                        runner.pid = None
                    runner.token = None
                    if runner.state != "failed":
                        runner.state = "stopped"
                        await self._record(runner, "role_stopped")
                    runner.first_outcome.set()
                    runner.done.set()

    def _lock_refusal(self, role: str) -> str:
        holder = role_lock_holder(self.town.runtime_dir, role)
        who = f"pid {holder}" if holder is not None else "a process that has exited since"
        return f"could not start: another instance ({who}) held the role's lock"

    async def _record(self, runner: RoleRunner, event: str, **data: Any) -> None:
        self._log.info(event, role_name=runner.name, pid=runner.pid, restarts=runner.restarts,
                       last_exit=runner.last_exit, reason=runner.reason, **data)
        try:
            await self.store.call(self.store.store.record_role, runner.name,
                                  state=runner.state, pid=runner.pid,
                                  started_at=runner.started_at, restarts=runner.restarts,
                                  last_exit=runner.last_exit, reason=runner.reason,
                                  event=event, **data)
        except StoreError as exc:
            # The store is gone or unwritable (deleted, disk full): supervising the roles
            # (and stopping them) must go on regardless; the log line says why the store
            # missed this change.
            self._log.error("store_unwritable", role_name=runner.name, event_kind=event,
                            error=exc.message)
            return
        self._poke_outbox()

    # -- systemd ---------------------------------------------------------------------------

    async def _status_line(self) -> str:
        """``STATUS=`` for systemd: roles up, polecats working, MRs queued."""
        counts = await self.store.call(self.store.store.counts)
        running = sum(r.state == "running" for r in self.roles.values())
        failed = [r.name for r in self.roles.values() if r.state == "failed"]
        polecats = counts["polecats"]
        working = sum(polecats.get(s, 0) for s in ("spawning", "working", "stalled"))
        mrs = counts["merge_requests"]
        line = (f"{running}/{len(self.roles)} roles up, {working} polecats working, "
                f"{mrs.get('queued', 0) + mrs.get('running', 0)} MRs queued")
        return line + (f"; FAILED: {', '.join(failed)}" if failed else "")

    async def _update_status(self) -> None:
        line = await self._status_line()
        if line != self._last_status:
            self._last_status = line
            notify(f"STATUS={line}")

    async def _watchdog(self, interval: float) -> None:
        """``WATCHDOG=1`` every ``interval`` while this loop runs and the roles answer.

        Each tick pings every running role over the bus; one that does not answer within
        half the interval withholds the ping, so systemd's watchdog sees a town that is
        wedged as well as a supervisor that is.
        """
        from .bus.client import open_bus_client

        async with open_bus_client(bus_path(self.town), "supervisor-watchdog") as client:
            while True:
                await trio.sleep(interval)
                fault_point("supervisor", "watchdog.tick")
                silent = []
                for runner in list(self.roles.values()):
                    if runner.state != "running":
                        continue
                    with trio.move_on_after(interval / 2):
                        try:
                            await client.request(runner.name, "ping", {}, timeout=interval / 2)
                            continue
                        except GastownError:
                            pass
                    silent.append(runner.name)
                if silent:
                    self._log.warning("watchdog_withheld", silent=silent)
                    continue
                notify("WATCHDOG=1")

    # -- bus ---------------------------------------------------------------------------

    def _authorize(self, name: str, pid: int, token: str | None) -> str | None:
        """Grant a role's name only to the process spawned for it (token and pid); any
        other name is an anonymous client's and is granted to anyone."""
        if not is_role_name(name):
            return None
        refusal = (f"the name {name!r} belongs to the role process this town's supervisor "
                   "started; connect under another name")
        runner = self.roles.get(name)
        if runner is None or runner.token is None or token is None:
            return refusal
        if not hmac.compare_digest(token.encode(), runner.token.encode()):
            return refusal
        if runner.pid is not None and pid != runner.pid:
            return f"{refusal} (pid {pid} is not the role's pid {runner.pid})"
        return None

    async def _handle(self, method: str, params: dict[str, Any], sender: str) -> Any:
        if method == "ready":
            runner = self.roles.get(sender)
            if runner is None or params.get("pid") != runner.pid:
                raise GastownError(f"{sender} (pid {params.get('pid')}) is not a role of "
                                   "this supervisor")
            runner.state = "running"
            runner.reason = None
            await self._record(runner, "role_ready")
            runner.first_outcome.set()
            return {"ok": True}
        if method == "status":
            return self.status()
        if method == "ping":
            return {"pong": "bus", "pid": os.getpid()}
        if method == "outbox":
            self._poke_outbox()
            return {"ok": True}
        if method == "reload":
            return await self.reload(f"requested by {sender}")
        if method == "shutdown":
            self.request_stop(f"shutdown requested by {sender}")
            return {"stopping": True, "pid": os.getpid()}
        raise GastownError(f"the supervisor does not know the request {method!r}")

    def _on_publish(self, topic: str, data: dict[str, Any]) -> None:
        if topic == "outbox":
            self._poke_outbox()

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "town": str(self.town.root),
            "supervisor": {"pid": os.getpid(), "state": self.state, "started_at": self.started_at,
                           "uptime": round(now - self.started_at, 3), "version": __version__},
            "roles": [r.as_status(now) for r in self.roles.values()],
        }

    # -- the feed ----------------------------------------------------------------------

    def _poke_outbox(self) -> None:
        self._outbox_poked.set()

    async def _emit(self, kind: str, **data: Any) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self.store.call(self.store.store.emit, kind, **data)
            except StoreError as exc:
                self._log.error("store_unwritable", event_kind=kind, error=exc.message)
                return
        self._poke_outbox()

    async def _drain_outbox(self, events: EventLog) -> None:
        while True:
            await self._drain_once(events)
            with trio.move_on_after(OUTBOX_SAFETY_INTERVAL):
                await self._outbox_poked.wait()
            self._outbox_poked = trio.Event()

    async def _drain_once(self, events: EventLog) -> None:
        """Copy new outbox rows to ``events.jsonl`` and publish each under its kind."""
        rigs_changed = False
        while True:
            batch = await self.store.call(self.store.store.events_after, events.last_seq)
            if not batch:
                break
            payloads = [e.as_json() for e in batch]
            events.append(payloads)
            for event in payloads:
                if self._bus is not None:
                    self._bus.publish(event["kind"], event)
                rigs_changed |= event["kind"] in ("rig_added", "rig_removed")
        if rigs_changed and self._nursery is not None and not self._stop_requested.is_set():
            self._nursery.start_soon(self._reconcile_roles)
        if self.state == "running":
            await self._update_status()


async def run_supervisor(town: Town, on_ready: ReadyCallback | None = None,
                         on_locked: Callable[[], None] | None = None) -> int:
    """Take the town's supervisor lock and supervise until stopped; returns the exit status.

    ``on_locked`` is called once the lock is taken and the pid file written, or the lock
    was refused (``up`` then releases its start-up lock: ``down`` can see the town).

    Raises :class:`~gastown.roles.adapters.town_lock.SupervisorRunning` when another
    supervisor holds the town.
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
                with open_lifeline() as lifeline:
                    return await Supervisor(town, store, lifeline).run(on_ready, signals)
            finally:
                store.close()
        finally:
            lock.release()
