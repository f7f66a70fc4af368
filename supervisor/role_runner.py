"""One role process for its whole life: spawn, await, decide, back off, respawn.

Layer: supervisor (above the roles: it starts ``python -m gastown.roles <name>`` through
:mod:`~gastown.roles.adapters.children` and records each step in the store). Every role
has one :class:`RoleRunner`, mutated only by its runner task (:meth:`Spawner.run`). When
to restart is :mod:`~gastown.supervisor.restart_policy`'s pure decision; how to start
and stop a process is :mod:`~gastown.roles.adapters.children`'s.

Each spawn gets a fresh secret token (on a pipe, see :mod:`.children`); the bus grants
a role's name only to a hello that presents the current token from the role's own pid
(``SO_PEERCRED``, see :func:`authorize_claim`), so no other process can take over a
role's requests.
"""

from __future__ import annotations

import hmac
import os
import random
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio

from ..roles.adapters import log
from ..roles.adapters.async_store import AsyncStore
from ..roles.adapters.children import Lifeline, start_child, stop_child
from ..roles.adapters.town import Town
from ..roles.adapters.town_lock import ROLE_LOCKED_EXIT, role_lock_holder
from ..roles.core.config import TownConfig
from ..roles.core.errors import StoreError
from ..roles.core.events_town import (
    RoleChanged,
    RoleExited,
    RoleFailed,
    RoleRestartScheduled,
    RoleStarted,
    RoleStopped,
)
from .feed import describe_exit
from .restart_policy import GiveUp, RestartPolicy, RoleHistory, decide_restart
from .role_forks import ForkedRole, RoleForks

#: Roles whose loss the town cannot work around: giving up on one stops the supervisor
#: with a non-zero status, so that systemd (Restart=on-failure) takes over.
CRITICAL_ROLES: Final = frozenset({"mayor"})

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
    #: Set once the current spawn's pid is recorded: a forked role can say it is ready
    #: before its spawn has returned here, and its Ready waits for this.
    recorded: trio.Event = field(default_factory=trio.Event)
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


def authorize_claim(roles: Mapping[str, RoleRunner], name: str, pid: int,
                    token: str | None) -> str | None:
    """Grant a role's name only to the process spawned for it (token and pid); any
    other name is an anonymous client's and is granted to anyone."""
    if not is_role_name(name):
        return None
    refusal = (f"the name {name!r} belongs to the role process this town's supervisor "
               "started; connect under another name")
    runner = roles.get(name)
    if runner is None or runner.token is None or token is None:
        return refusal
    if not hmac.compare_digest(token.encode(), runner.token.encode()):
        return refusal
    if runner.pid is not None and pid != runner.pid:
        return f"{refusal} (pid {pid} is not the role's pid {runner.pid})"
    return None


class Spawner:
    """Runs role processes for one town: the runner loop and the store record of each step.

    ``policy`` and ``stop_timeout`` follow the configuration (:meth:`configure` on reload);
    ``poke`` tells the feed relay that the store has new events; ``give_up`` is called
    when a critical role is given up on.
    """

    def __init__(self, town: Town, store: AsyncStore, lifeline: Lifeline, *,
                 poke: Callable[[], None], give_up: Callable[[RoleRunner], None],
                 forks: RoleForks | None = None) -> None:
        self.town = town
        self.forks = forks
        self.store = store
        self.lifeline = lifeline
        self._poke = poke
        self._give_up = give_up
        self._log = log.get_logger()
        self.configure(town.config)
        self.env = dict(os.environ)
        if log.under_journald(os.environ):
            # JOURNAL_STREAM is scrubbed from children (it names *our* stderr); tell the
            # roles explicitly that their lines belong in the journal.
            self.env[log.JOURNAL_ENV] = "1"

    def configure(self, config: TownConfig) -> None:
        self.policy = policy_of(config)
        self.stop_timeout = config.supervisor.stop_timeout

    async def run(self, runner: RoleRunner) -> None:
        """Own one role process for its whole life: spawn, await, decide, back off."""
        argv = [sys.executable, "-m", "gastown.roles", runner.name, "--town", str(self.town.root)]
        stdout_path = self.town.logs_dir / (runner.name.replace(":", "-") + ".out")
        proc: trio.Process | ForkedRole | None = None
        with log.bound(role_name=runner.name), runner.scope:
            try:
                while not runner.stopping:
                    runner.state = "starting"
                    runner.history = runner.history.record_start(trio.current_time())
                    runner.token = secrets.token_urlsafe(32)
                    runner.recorded = trio.Event()
                    try:
                        proc = await self._start(argv, stdout_path, runner.token)
                    except OSError as exc:
                        runner.history = runner.history.record_exit(self.policy,
                                                                    trio.current_time())
                        code: int | None = None
                        runner.reason = f"could not start: {exc}"
                    else:
                        runner.pid, runner.started_at = proc.pid, time.time()
                        await self.record(runner, RoleStarted)
                        runner.recorded.set()
                        forked = isinstance(proc, ForkedRole)
                        code = await proc.wait()
                        proc = None
                        if code is None and forked:
                            runner.reason = ("its exit status is unknown: the fork server "
                                             "that started it went first")
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
                        await self.record(runner, RoleFailed)
                        runner.first_outcome.set()
                        if runner.critical:
                            self._give_up(runner)
                        return
                    runner.state = "backoff"
                    await self.record(runner, RoleExited)
                    runner.restarts += 1
                    await self.record(runner, partial(RoleRestartScheduled,
                                                      delay=round(decision.delay, 3)))
                    await trio.sleep(decision.delay)
            finally:
                with trio.CancelScope(shield=True):
                    if proc is not None:
                        runner.state = "stopping"
                        runner.last_exit = (
                            await proc.stop(self.stop_timeout) if isinstance(proc, ForkedRole)
                            else await stop_child(proc, self.stop_timeout))
                        runner.pid = None
                    runner.token = None
                    if runner.state != "failed":
                        runner.state = "stopped"
                        await self.record(runner, RoleStopped)
                    runner.first_outcome.set()
                    runner.done.set()

    async def _start(self, argv: list[str], stdout_path: Path,
                     token: str | None) -> trio.Process | ForkedRole:
        """Fork the role from the template when there is one; else ``exec`` it."""
        if self.forks is not None:
            forked = await self.forks.spawn(argv[3:], env=self.env, cwd=self.town.root,
                                            lifeline=self.lifeline, stdout_path=stdout_path,
                                            token=token, title=" ".join(argv))
            if forked is not None:
                return forked
        return await start_child(argv, env=self.env, cwd=self.town.root,
                                 lifeline=self.lifeline, stdout_path=stdout_path, token=token)

    def _lock_refusal(self, role: str) -> str:
        holder = role_lock_holder(self.town.runtime_dir, role)
        who = f"pid {holder}" if holder is not None else "a process that has exited since"
        return f"could not start: another instance ({who}) held the role's lock"

    async def record(self, runner: RoleRunner, event: Callable[..., RoleChanged]) -> None:
        """Log the role event ``event`` of ``runner`` (a :data:`RoleChanged` class, or a
        partial of one with its own fields: the back-off's delay) and record the role's new
        state with it in the store."""
        made = event(role=runner.name, state=runner.state, pid=runner.pid,
                     restarts=runner.restarts, last_exit=runner.last_exit, reason=runner.reason)
        extra = {"delay": made.delay} if isinstance(made, RoleRestartScheduled) else {}
        self._log.info(made.kind, role_name=runner.name, pid=runner.pid,
                       restarts=runner.restarts, last_exit=runner.last_exit,
                       reason=runner.reason, **extra)
        try:
            await self.store.call(self.store.store.record_role, runner.name,
                                  state=runner.state, pid=runner.pid,
                                  started_at=runner.started_at, restarts=runner.restarts,
                                  last_exit=runner.last_exit, reason=runner.reason,
                                  event=made)
        except StoreError as exc:
            # The store is gone or unwritable (deleted, disk full): supervising the roles
            # (and stopping them) must go on regardless; the log line says why the store
            # missed this change.
            self._log.error("store_unwritable", role_name=runner.name, event_kind=made.kind,
                            error=exc.message)
            return
        self._poke()
