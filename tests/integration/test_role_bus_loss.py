"""A role survives its bus going away in the middle of its own work.

A behaviour runs its work in nurseries of its own (the witness's nukes, the mayor's
spawns), so a bus call that fails in one of those tasks when the supervisor is killed
comes out of the behaviour as an exception group. The role must treat it like any other
lost bus: reconnect when the bus is back, never die with a traceback (the chaos test
caught a witness doing exactly that when its supervisor was killed mid-request).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from gastown.roles.adapters.town import Town
from gastown.roles.role_context import RoleContext
from gastown.roles.role_process import _serve_bus
from gastown.supervisor.bus import BusServer, serve_bus
from gastown.supervisor.bus.client import BusClient
from gastown.supervisor.bus.requests import Bare, Reply, Request


@pytest.fixture
def town() -> Iterator[Town]:
    """A short private directory under /tmp: pytest's tmp_path can overflow sun_path."""
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="gt"))
    (root / ".runtime").mkdir(mode=0o700)
    yield Town(root)
    shutil.rmtree(root, ignore_errors=True)


class CallsInAChildTask:
    """A behaviour whose bus call, made by a task of its own nursery, fails when the bus
    goes: the failure leaves ``run`` wrapped in an exception group."""

    def __init__(self) -> None:
        self.runs = 0
        self.started = [trio.Event(), trio.Event()]

    async def run(self, client: BusClient) -> None:
        self.started[min(self.runs, 1)].set()
        self.runs += 1

        async def call_after_the_bus_is_gone() -> None:
            await client.wait_disconnected()
            await client.call("mayor", Bare("ping"), timeout=5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_after_the_bus_is_gone)
            nursery.start_soon(trio.sleep_forever)

    async def handle(self, request: Request, sender: str) -> Reply:
        raise LookupError(request.method)

    def status(self) -> Mapping[str, object]:
        return {}


async def _supervisor_side(method: str, params: dict[str, Any], sender: str) -> Any:
    return {"ok": True}


async def test_a_bus_lost_inside_the_behaviours_own_tasks_is_reconnected(town: Town) -> None:
    behaviour = CallsInAChildTask()
    ctx = RoleContext(name="witness:web", kind="witness", rig="web", town=town)
    sock = town.runtime_dir / "bus.sock"

    async def serve(scope: trio.CancelScope, stopped: trio.Event,
                    task_status: trio.TaskStatus[BusServer]) -> None:
        with scope:
            await serve_bus(sock, handler=_supervisor_side, task_status=task_status)
        stopped.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            first, first_stopped = trio.CancelScope(), trio.Event()
            await nursery.start(serve, first, first_stopped)
            role = trio.CancelScope()

            async def run_role() -> None:
                with role:
                    await _serve_bus(ctx, behaviour, role)

            nursery.start_soon(run_role)
            await behaviour.started[0].wait()
            first.cancel()  # the supervisor is killed while the role works
            await first_stopped.wait()
            await nursery.start(serve, trio.CancelScope(), trio.Event())
            await behaviour.started[1].wait()  # the role came back, not a traceback
            role.cancel()
            nursery.cancel_scope.cancel()
    assert behaviour.runs == 2
