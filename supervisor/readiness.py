"""What systemd hears from the supervisor: the status line and the watchdog's pings.

Layer: supervisor (reads the store's counts, asks the roles over the bus, sends
datagrams through :mod:`.sd_notify`). ``READY=1`` itself is sent by the supervisor once
every role is ready (see :meth:`~.supervisor.Supervisor.run`); this module keeps
``STATUS=`` current and pings ``WATCHDOG=1`` only while every running role answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import trio

from ..roles.adapters import log
from ..roles.adapters.async_store import AsyncStore
from ..roles.adapters.faults import fault_point
from ..roles.core.errors import GastownError
from .bus.requests import Bare
from .role_runner import RoleRunner
from .sd_notify import notify


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


async def status_line(store: AsyncStore, roles: Iterable[RoleRunner]) -> str:
    """``STATUS=`` for systemd: roles up, polecats working, MRs queued."""
    counts = await store.call(store.store.counts)
    runners = list(roles)
    running = sum(r.state == "running" for r in runners)
    failed = [r.name for r in runners if r.state == "failed"]
    polecats = counts["polecats"]
    working = sum(polecats.get(s, 0) for s in ("spawning", "working", "stalled"))
    mrs = counts["merge_requests"]
    line = (f"{running}/{len(runners)} roles up, {working} polecats working, "
            f"{mrs.get('queued', 0) + mrs.get('running', 0)} MRs queued")
    return line + (f"; FAILED: {', '.join(failed)}" if failed else "")


class StatusReporter:
    """Sends ``STATUS=`` when the line changes."""

    def __init__(self, store: AsyncStore, roles: Mapping[str, RoleRunner]) -> None:
        self.store = store
        self.roles = roles
        self._last = ""

    async def line(self) -> str:
        return await status_line(self.store, self.roles.values())

    async def update(self) -> None:
        line = await self.line()
        if line != self._last:
            self._last = line
            notify(f"STATUS={line}")


async def watchdog(bus: Path, roles: Mapping[str, RoleRunner], interval: float) -> None:
    """``WATCHDOG=1`` every ``interval`` while this loop runs and the roles answer.

    Each tick pings every running role over the bus; one that does not answer within
    half the interval withholds the ping, so systemd's watchdog sees a town that is
    wedged as well as a supervisor that is.
    """
    from .bus.client import open_bus_client

    logger = log.get_logger()
    async with open_bus_client(bus, "supervisor-watchdog") as client:
        while True:
            await trio.sleep(interval)
            fault_point("supervisor", "watchdog.tick")
            silent = []
            for runner in list(roles.values()):
                if runner.state != "running":
                    continue
                with trio.move_on_after(interval / 2):
                    try:
                        await client.call(runner.name, Bare("ping"), timeout=interval / 2)
                        continue
                    except GastownError:
                        pass
                silent.append(runner.name)
            if silent:
                logger.warning("watchdog_withheld", silent=silent)
                continue
            notify("WATCHDOG=1")
