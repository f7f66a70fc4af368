"""One role of the town in the test's own trio loop, on a real bus, store, git and agents.

The role-level integration tests (``test_role_mayor.py``, ``test_role_witness.py``,
``test_role_refinery.py``) build a :class:`Site` (a real town in a short /tmp path with
rig ``web`` cloned from a bare remote; agents run detached, process backend) and run
inside :func:`running_world`, which plays the supervisor's part in-process:

- the bus (:func:`~gastown.supervisor.bus.server.serve_bus`) on the town's own socket,
  so the agents' ``gastown`` commands find it where they always do;
- the feed relay (:class:`~gastown.supervisor.relay.OutboxRelay`) bound to
  ``.runtime/wake``: every store commit that wrote events wakes it, and it publishes
  them on the bus, as the supervisor does;
- a test client (``test``) subscribed to every topic, keeping what it saw, so that a
  test waits for an event (:meth:`World.wait_event`) instead of polling.

:meth:`World.role` then runs one role's behaviour as ``role_process`` builds it
(:func:`~gastown.roles.role_process.behaviour_for` on a
:class:`~gastown.roles.role_context.RoleContext`), connected under the role's name with
the shared loop's answers (``ping``, ``status``), in a nursery of the test; leaving the
block cancels it and checks that it stopped and left no process behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from gastown.roles.adapters.async_store import AsyncStore
from gastown.roles.adapters.outbox_wake import wake_path
from gastown.roles.adapters.processes import processes_with_env
from gastown.roles.adapters.store import Bead, MergeRequest, Polecat, Sling, open_store
from gastown.roles.adapters.town import Town, install_town
from gastown.roles.operations.polecats import spawn_polecat
from gastown.roles.operations.rigs import add_rig
from gastown.roles.role_context import Behaviour, RoleContext, bus_path
from gastown.roles.role_process import behaviour_for, parse_role_name
from gastown.supervisor.bus.client import BusClient, open_bus_client
from gastown.supervisor.bus.requests import Reply, Request, typed_handler
from gastown.supervisor.bus.server import BusServer, serve_bus
from gastown.supervisor.feed import EventLog
from gastown.supervisor.relay import OutboxRelay
from tests.conftest import git, make_remote
from tests.e2e.town_helpers import town_processes

RIG = "web"
#: Generous: a real agent is two Python processes and git; the machine is shared.
EVENT_TIMEOUT = 60.0
#: How long a cancelled role may take to stop (it finishes a git call under way first).
STOP_TIMEOUT = 30.0


# -- the site: a town on disk (sync; a pytest fixture builds and removes it) ------------


@dataclass
class Site:
    """A town with rig ``web`` on a bare remote, not running."""

    town: Town
    remote: Path

    @property
    def root(self) -> Path:
        return self.town.root

    @property
    def clone(self) -> Path:
        return self.town.refinery_clone(RIG)

    def agents(self) -> dict[int, str]:
        """Live agent processes of this town (they carry ``GASTOWN_TOWN``): pid -> argv."""
        found = {}
        for pid in processes_with_env({"GASTOWN_TOWN": str(self.root)}):
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(
                    b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
        return found


def make_site(tmp_path: Path, *, town_toml: str = "", rig_toml: str = "") -> Site:
    """A real town in a short /tmp path (the bus socket's ``sun_path`` is 108 bytes):
    ``script`` agents in detached sessions, rig ``web`` cloned from a bare remote holding
    ``app.py``; ``town_toml`` and ``rig_toml`` are appended to the two files."""
    root = Path(tempfile.mkdtemp(prefix="gtr", dir="/tmp")) / "t"
    install_town(root)
    (root / "town.toml").write_text(
        'default_agent = "script"\n' + town_toml + '[sessions]\nbackend = "process"\n')
    town = Town(root)  # a fresh one: Town caches its config
    remote = make_remote(tmp_path / "web.git", files={"app.py": "x = 1\n"})
    with open_store(town.db_path) as store:
        add_rig(town, store, RIG, str(remote), cwd=tmp_path)
    rig_file = town.rig_config_path(RIG)
    rig_file.write_text(rig_file.read_text() + rig_toml)
    return Site(town=town, remote=remote)


def remove_site(site: Site) -> None:
    """Kill the town's agents, then check the rig's invariants and delete the town."""
    for pid in site.agents():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    from tests.invariants import check_town_invariants

    broken = check_town_invariants(site.root)
    shutil.rmtree(site.root.parent, ignore_errors=True)
    assert not broken, "\n".join(broken)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """The default site: no gates, the shipped caps."""
    built = make_site(tmp_path)
    yield built
    remove_site(built)


# -- the running world: bus, relay, a test client --------------------------------------


@dataclass
class World:
    """A running bus and relay for ``site``, and the test's own bus client and store."""

    site: Site
    bus: BusServer
    client: BusClient
    store: AsyncStore
    nursery: trio.Nursery
    #: Every event the relay published since the world started, in order.
    events: list[dict[str, Any]] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def town(self) -> Town:
        return self.site.town

    # -- events ------------------------------------------------------------------------

    def _record(self, data: dict[str, Any]) -> None:
        self.events.append(data)
        self._changed.set()
        self._changed = trio.Event()

    def seen(self, kind: str, **match: object) -> list[dict[str, Any]]:
        """The events of ``kind`` seen so far whose fields include ``match``."""
        return [e for e in self.events
                if e.get("kind") == kind and all(e.get(k) == v for k, v in match.items())]

    async def wait_event(self, kind: str, *, timeout: float | None = None,
                         **match: object) -> dict[str, Any]:
        """The first event of ``kind`` (seen already, or still to come) matching ``match``;
        fails the test after ``timeout`` (default :data:`EVENT_TIMEOUT`) seconds."""
        timeout = EVENT_TIMEOUT if timeout is None else timeout
        with trio.move_on_after(timeout):
            while True:
                found = self.seen(kind, **match)
                if found:
                    return found[0]
                await self._changed.wait()
        kinds = [f"{e.get('kind')} {e.get('polecat') or ''}".strip() for e in self.events]
        raise AssertionError(f"no {kind} event with {match} within {timeout}s; "
                             f"seen: {kinds}")

    # -- the store, from the test --------------------------------------------------------

    async def bead(self, title: str, description: str, *, priority: int = 2) -> Bead:
        return await self.store.call(self.store.store.create_bead, prefix="web", rig=RIG,
                                     title=title, description=description,
                                     priority=priority)

    async def queue_sling(self, bead: Bead) -> Sling:
        """What ``gastown sling`` records before it asks the mayor."""
        return await self.store.call(self.store.store.queue_sling, bead.id, RIG,
                                     agent=None, force=False)

    async def spawn(self, title: str, description: str) -> Polecat:
        """A polecat made as the mayor makes one (worktree, branch, session), without a
        mayor: for the witness's and the refinery's tests."""
        sling = await self.queue_sling(await self.bead(title, description))
        polecat = await self.store.operate(spawn_polecat, self.town, sling, process="test")
        assert polecat is not None, "no free slot"
        return polecat

    async def polecat(self, name: str) -> Polecat:
        return await self.store.call(self.store.store.polecat, RIG, name)

    async def merge_request(self, mr_id: str) -> MergeRequest:
        return await self.store.call(self.store.store.merge_request, mr_id)

    # -- roles -----------------------------------------------------------------------------

    @asynccontextmanager
    async def role(self, name: str) -> AsyncIterator[Behaviour]:
        """Run role ``name``'s behaviour until the block ends, then cancel it and check
        that it stopped and left no process of its own behind."""
        kind, rig = parse_role_name(name)
        ctx = RoleContext(name=name, kind=kind, rig=rig, town=self.town)
        behaviour = behaviour_for(ctx)
        stopped = trio.Event()
        scope = trio.CancelScope()

        async def handle(request: Request, sender: str) -> Reply:
            # role_process's shared answers, then the behaviour's own.
            if request.method == "ping":
                return {"pong": name, "pid": os.getpid()}
            if request.method == "status":
                return {"name": name, **behaviour.status()}
            return await behaviour.handle(request, sender)

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    async with open_bus_client(bus_path(self.town), name,
                                               handler=typed_handler(handle, name)) as client:
                        task_status.started()
                        await behaviour.run(client)
            finally:
                stopped.set()

        # Children this process had before (a resource tracker another test of this
        # xdist worker started, say) are not the role's.
        before = set(self.leftover_processes())
        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            try:
                yield behaviour
            finally:
                scope.cancel()
                # Cancelled, the role must stop (a worker thread it waits on finishes
                # its one call first): a deadlock here fails the test instead of hanging.
                with trio.fail_after(STOP_TIMEOUT):
                    await stopped.wait()
        leftovers = {pid: argv for pid, argv in self.leftover_processes().items()
                     if pid not in before}
        assert not leftovers, f"{name} left processes behind: {leftovers}"

    def leftover_processes(self) -> dict[int, str]:
        """Children of this test process, and processes naming the town, that are not
        agent sessions (those outlive any role by design)."""
        agents = self.site.agents()
        found = {pid: argv for pid, argv in town_processes(self.site.root).items()
                 if pid not in agents}
        me = str(os.getpid())
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in agents:
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                argv = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                found[int(entry)] = argv.replace(b"\0", b" ").decode(errors="replace")
        return found


@asynccontextmanager
async def running_world(site: Site) -> AsyncIterator[World]:
    """The supervisor's part for ``site``, in this trio loop: bus, relay, a test client."""
    store = await AsyncStore.open(site.town.db_path)
    relay = OutboxRelay(store, EventLog(site.town.events_path))

    async def after_drain(rigs_changed: bool) -> None:
        pass

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.listen_for_wakes, wake_path(site.town.db_path))
            bus = await nursery.start(partial(serve_bus, bus_path(site.town)))
            async with open_bus_client(bus_path(site.town), "test") as client:
                events = await client.subscribe("*")
                relay.bus = bus
                world = World(site=site, bus=bus, client=client, store=store,
                              nursery=nursery)

                async def record() -> None:
                    async for message in events:
                        world._record(dict(message.data))

                nursery.start_soon(record)
                nursery.start_soon(relay.run, after_drain)
                yield world
                nursery.cancel_scope.cancel()
    finally:
        relay.events.close()
        store.close()


def commit_file(worktree: Path, name: str, text: str, message: str) -> str:
    """Commit ``name`` with ``text`` in ``worktree``; returns the new commit."""
    (worktree / name).write_text(text)
    git("add", name, cwd=worktree)
    git("commit", "-q", "-m", message, cwd=worktree)
    return git("rev-parse", "HEAD", cwd=worktree).strip()


def show(repo: Path, rev: str) -> str | None:
    """``git show rev`` in ``repo`` (e.g. ``main:app.py``), or None when it names nothing."""
    import subprocess

    result = subprocess.run(["git", "show", rev], cwd=repo, capture_output=True, text=True,
                            check=False)
    return result.stdout if result.returncode == 0 else None


def as_mapping(value: object) -> Mapping[str, Any]:
    assert isinstance(value, dict), value
    return value


def make_fifo(path: Path) -> Path:
    """A named pipe an agent's script blocks on (``read line < PATH``) until
    :func:`release` writes to it: the test decides when the agent goes on."""
    os.mkfifo(path)
    return path


async def release(fifo: Path) -> None:
    """Let the agent blocked on ``fifo`` go on (waits until it opened the pipe)."""
    await trio.to_thread.run_sync(fifo.write_text, "go\n", abandon_on_cancel=True)


def environ_of(pid: int) -> dict[str, str]:
    """A live process's environment (``/proc/<pid>/environ``)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


async def land(world: World, mr_id: str) -> str:
    """What the refinery does for an MR, done by hand (no refinery runs): its commits put
    on main in the rig's clone and pushed, the MR marked running then merged (so the
    store announces ``mr_merged``). Returns main's new commit."""
    mr = await world.merge_request(mr_id)
    clone = world.site.clone

    def on_main() -> str:
        git("cherry-pick", f"{mr.base}..{mr.head}", cwd=clone)
        git("push", "-q", "origin", "main", cwd=clone)
        return git("rev-parse", "HEAD", cwd=clone).strip()

    commit = await trio.to_thread.run_sync(on_main)
    await world.store.call(world.store.store.start_merge_requests, [mr_id])
    await world.store.call(world.store.store.merge_landed, mr_id, commit)
    return commit


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def until(check: Callable[[], bool], *, what: str,
                timeout: float | None = None) -> None:
    """Wait until ``check()`` (in-process state, cheap) holds; for what no event says."""
    timeout = EVENT_TIMEOUT if timeout is None else timeout
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"not within {timeout}s: {what}")
