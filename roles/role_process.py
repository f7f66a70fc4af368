"""The loop every role process shares: connect to the bus, report ready, serve, stop.

Layer: role loop: the top of ``roles``, above the loops it runs (``mayor``, ``witness``,
``refinery``); only :mod:`gastown.roles.__main__` imports it.

``python -m gastown.roles ROLE --town PATH`` runs one role (``mayor``, ``witness:<rig>``
or ``refinery:<rig>``) until SIGTERM, a ``shutdown`` request, or the supervisor's death
(seen as EOF on the lifeline pipe, so no role outlives a SIGKILLed supervisor). A lost
bus connection is not fatal: the role reconnects with back-off and reports ready again.

What the kernel guarantees, not the event loop's good health:

- one instance per role: before any work the process takes ``.runtime/roles/<role>.lock``
  (an exclusive ``flock``) and holds it until it exits. A second instance waits for
  the first to go (up to ``--lock-timeout``, logging the holder's pid), then gives up
  with exit status 75, which the supervisor reports as a failed start;
- no role outlives its supervisor by more than a few seconds: besides the loop's own
  watcher, a thread blocked on the lifeline kills the role's process group if the
  loop has not finished a clean exit :data:`~gastown.roles.adapters.children.LIFELINE_GRACE`
  seconds after the supervisor died (a role hung in a call, or paused at a fail point);
- a role's name on the bus belongs to this process: it proves it with the per-spawn
  token the supervisor handed it on a pipe, and a claim without it is refused.

What a role *does* (slinging, watching, merging) plugs in as its behaviour; the loop
here owns the process's lifecycle and answers ``ping`` and ``status`` for every role.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ..supervisor.bus.protocol import BUS_PEER
from ..supervisor.bus.requests import Ready, Reply, Request, typed_handler
from .adapters import log
from .adapters.children import LIFELINE_ENV
from .adapters.faults import fault_action, fault_point
from .adapters.town import Town
from .core.errors import GastownError, StoreError, UsageError
from .core.names import validate_name
from .role_context import Behaviour, RoleContext, bus_path

if TYPE_CHECKING:
    from ..supervisor.bus.client import BusClient
    from .adapters.town_lock import RoleLock

ROLE_KINDS = ("mayor", "witness", "refinery")
RECONNECT_MAX_DELAY = 2.0
#: Overrides the default ``--lock-timeout`` (tests use a short one).
LOCK_TIMEOUT_ENV = "GASTOWN_ROLE_LOCK_TIMEOUT"
#: Exit status of a role whose name the bus refused (it is not the supervisor's child).
NAME_REFUSED_EXIT = 78


def parse_role_name(name: str) -> tuple[str, str | None]:
    """``"witness:web"`` -> ``("witness", "web")``; ``"mayor"`` -> ``("mayor", None)``."""
    kind, sep, rig = name.partition(":")
    if kind not in ROLE_KINDS:
        raise UsageError(f"unknown role {name!r} (roles: mayor, witness:<rig>, refinery:<rig>)")
    if kind == "mayor":
        if sep:
            raise UsageError("the mayor belongs to the town, not to a rig")
        return kind, None
    if not rig:
        raise UsageError(f"role {kind!r} needs a rig: {kind}:<rig>")
    validate_name("rig", rig)
    return kind, rig


def behaviour_for(ctx: RoleContext) -> Behaviour:
    if ctx.kind == "mayor":
        from .mayor import Mayor

        return Mayor(ctx)
    if ctx.kind == "refinery":
        from .refinery import Refinery

        return Refinery(ctx)
    from .witness import Witness

    return Witness(ctx)


async def _watch_signals(ctx: RoleContext, cancel: trio.CancelScope) -> None:
    logger = log.get_logger()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if fault_action(ctx.name, "sigterm") == "ignore":
                logger.warning("role_ignoring_sigterm", signal=signal.Signals(signum).name)
                continue
            logger.info("role_stopping", reason=signal.Signals(signum).name)
            cancel.cancel()
            return


async def _watch_lifeline(fd: int, cancel: trio.CancelScope) -> None:
    from .adapters.children import wait_for_lifeline_eof

    await wait_for_lifeline_eof(fd)
    log.get_logger().warning("role_stopping", reason="supervisor gone (lifeline closed)")
    cancel.cancel()


async def _serve_bus(ctx: RoleContext, behaviour: Behaviour,
                     cancel: trio.CancelScope) -> None:
    from ..supervisor.bus.client import open_bus_client
    from ..supervisor.bus.errors import BusDisconnected, BusUnavailable, NameRefused

    logger = log.get_logger()
    delay = 0.05

    async def handle(request: Request, sender: str) -> Reply:
        if request.method == "ping":
            return {"pong": ctx.name, "pid": os.getpid()}
        if request.method == "status":
            return {"name": ctx.name, "pid": os.getpid(), "state": "running",
                    "uptime": time.time() - ctx.started_at, **behaviour.status()}
        if request.method == "shutdown":
            logger.info("role_stopping", reason=f"shutdown requested by {sender}")
            cancel.cancel()
            return {"stopping": ctx.name}
        try:
            return await behaviour.handle(request, sender)
        except LookupError:
            raise GastownError(f"{ctx.name} does not know the request "
                               f"{request.method!r}") from None

    while True:
        try:
            async with open_bus_client(bus_path(ctx.town), ctx.name,
                                       token=ctx.token) as client:
                client.serve(typed_handler(handle, ctx.name))
                await client.call(BUS_PEER, Ready(pid=os.getpid()))
                ctx.connected_at = time.time()
                logger.info("role_ready", pid=os.getpid())
                fault_point(ctx.name, "ready")
                delay = 0.05
                await _run_behaviour(behaviour, client)
        except NameRefused as exc:
            # Not the process the supervisor started for this name (started by hand, or
            # its supervisor is gone): it has no business running.
            logger.error("role_stopping", reason=exc.message)
            ctx.exit_code = NAME_REFUSED_EXIT
            cancel.cancel()
            return
        except (BusUnavailable, BusDisconnected) as exc:
            logger.warning("bus_lost", error=str(exc), retry_in=delay)
        await trio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_DELAY)


async def _run_behaviour(behaviour: Behaviour, client: BusClient) -> None:
    """Run the behaviour's main task; a lost bus comes out as itself, never in a group.

    A behaviour runs its work in nurseries of its own, so a bus call that fails in one of
    their tasks (the supervisor was killed mid-request) reaches here as an exception group
    of :class:`BusDisconnected`. The role reconnects after that like after any other lost
    bus; only a group with something else in it is a crash.
    """
    from ..supervisor.bus.errors import BusDisconnected, BusUnavailable

    try:
        await behaviour.run(client)
    except BaseExceptionGroup as group:
        lost, rest = group.split((BusDisconnected, BusUnavailable))
        if lost is None or rest is not None:
            raise
        leaf: BaseException = lost
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from group


async def run_role(ctx: RoleContext, behaviour: Behaviour | None = None) -> None:
    """Run the role until SIGTERM, a ``shutdown`` request or the supervisor's death."""
    logger = log.get_logger()
    if behaviour is None:
        behaviour = behaviour_for(ctx)
    logger.info("role_starting", pid=os.getpid())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, ctx, nursery.cancel_scope)
        lifeline = os.environ.get(LIFELINE_ENV)
        if lifeline:
            nursery.start_soon(_watch_lifeline, int(lifeline), nursery.cancel_scope)
        nursery.start_soon(_serve_bus, ctx, behaviour, nursery.cancel_scope)
    logger.info("role_stopped", pid=os.getpid())


def _lock_timeout_default() -> float:
    from .adapters.town_lock import ROLE_LOCK_TIMEOUT

    try:
        return float(os.environ.get(LOCK_TIMEOUT_ENV) or ROLE_LOCK_TIMEOUT)
    except ValueError:
        return ROLE_LOCK_TIMEOUT


def _take_role_lock(town: Town, role: str, timeout: float) -> RoleLock | None:
    """Hold the role's instance lock for the process's life; None if another kept it."""
    from .adapters.town_lock import RoleLocked, acquire_role_lock

    logger = log.get_logger()

    def waiting(pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "pid unknown"
        logger.warning("role_waiting_for_lock", holder_pid=pid, timeout=timeout)
        print(f"gastown {role}: another instance ({who}) holds the role's lock; waiting up "
              f"to {timeout:g}s for it to exit", file=sys.stderr, flush=True)

    try:
        return acquire_role_lock(town.runtime_dir, role, timeout=timeout, on_wait=waiting)
    except RoleLocked as exc:
        logger.error("role_lock_timeout", holder_pid=exc.pid, error=exc.message)
        print(f"gastown {role}: {exc.message}", file=sys.stderr, flush=True)
        return None


def main(argv: list[str] | None = None) -> int:
    from .adapters.children import (
        lifeline_fd_from_env,
        read_token,
        start_lifeline_backstop,
    )
    from .adapters.town_lock import ROLE_LOCKED_EXIT

    parser = argparse.ArgumentParser(prog="python -m gastown.roles",
                                     description="Run one gastown role process.")
    parser.add_argument("role", help="mayor, witness:<rig> or refinery:<rig>")
    parser.add_argument("--town", required=True, help="the town's root directory")
    parser.add_argument("--lock-timeout", type=float, default=_lock_timeout_default(),
                        help="seconds to wait for another instance of the role to exit")
    args = parser.parse_args(argv)
    token = read_token(os.environ)  # at once: the pipe must not stay readable
    try:
        kind, rig = parse_role_name(args.role)
        town = Town(Path(args.town).absolute())
        config = town.config
    except GastownError as exc:
        print(f"gastown {args.role}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    log.configure_logging(town.logs_dir, role=args.role, level=config.logging.level,
                          console=False, max_bytes=config.logging.max_bytes,
                          backups=config.logging.backups)
    log.bind(rig=rig)
    lifeline = lifeline_fd_from_env(os.environ)
    if lifeline is not None:
        start_lifeline_backstop(lifeline, args.role)
    lock = _take_role_lock(town, args.role, args.lock_timeout)
    if lock is None:
        return ROLE_LOCKED_EXIT
    fault_point(args.role, "start")
    ctx = RoleContext(name=args.role, kind=kind, rig=rig, town=town, token=token)
    failure: str | None = None
    try:
        trio.run(run_role, ctx)
    except* StoreError as group:
        # The town's store is missing, replaced or unwritable: nothing a restart of this
        # role can mend. One line (the supervisor's restart budget then marks it failed).
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        failure = leaf.message if isinstance(leaf, StoreError) else str(leaf)
    if failure is not None:
        log.get_logger().error("role_store_failed", error=failure)
        print(f"gastown {args.role}: {failure}", file=sys.stderr, flush=True)
        return 1
    return ctx.exit_code
