"""The witness: watches one rig's polecats and cleans up after them.

Layer: a role loop, at the top of ``roles``; run by :mod:`~gastown.roles.role_process`.

It reacts to events, never to a polling loop:

- a completion marker appearing in ``<rig>/polecats/`` (watchfiles, on that one folder,
  never recursively into checkouts: one inotify watch however large the repository)
  -> the MR is checked and the refinery woken;
- ``mr_merged`` from the refinery -> the polecat is nuked (session, worktree verified
  gone, branch, name) and its bead closed; a polecat with unlanded leftovers is kept;
- ``mr_rejected`` -> nothing to do: the store already marked the polecat ``rejected``
  and the worktree stays for a human or a re-sling;
- an agent process exiting (a pidfd per live session becomes readable) while its
  polecat is still ``working`` -> ``stalled``: respawned in the same worktree with a
  note, up to ``max_respawns`` times with back-off, then ``escalated``;
- a live session silent (no commit, no change, no output) beyond ``stall_timeout`` ->
  a ``polecat_silent`` event and a note in ``polecat list`` (it is not killed).

At start, and on a slow safety timer, it settles what it missed while it was down
(merged polecats still on disk, sessions that died unseen).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Final, TypedDict

import trio

from ..supervisor.bus.client import BusClient
from ..supervisor.bus.protocol import BusMessage
from ..supervisor.bus.requests import Bare, Reply, Request
from .adapters import log
from .adapters.async_store import AsyncStore, OperationLocks
from .adapters.sessions import SessionInfo
from .adapters.store import Polecat
from .core.errors import GastownError
from .core.events import CrewUpdated
from .core.lifecycle import GaveUp, SessionDied
from .operations.agent_turns import print_turn
from .operations.agent_watch import AgentWatch, WitnessHooks
from .operations.merged_nukes import MergedNukes
from .operations.polecat_sessions import (
    session_alive,
    session_info,
    session_output_tail,
    stop_polecat_session,
)
from .operations.polecats import respawn_session
from .role_context import RoleContext

WAKE_TOPICS: Final = ("mr_merged", "mr_rejected", "polecat_working", "polecat_spawning",
                      "polecat_done", "polecat_stalled", "agent_turn_ended")

#: Polecat states whose session the witness keeps watching: a print-mode agent's last
#: turn (the one that ran `gastown done`) is read back when its process exits.
_WATCHED_STATES: Final = ("working", "done", "merging")

#: The safety net: a pass over the rig's polecats for anything an event did not bring.
SAFETY_INTERVAL: Final = 300.0

#: Back-off before respawn number n (seconds): 1, 2, 4, ... capped.
RESPAWN_BASE: Final = 1.0
RESPAWN_MAX: Final = 60.0

#: How many merged polecats are nuked at once (a batch merges several together).
NUKE_CONCURRENCY: Final = 4


class WitnessStatus(TypedDict):
    """The witness's fields in its role's ``status`` answer."""

    watching: list[str]
    nuked: int
    respawned: int


class Witness:
    def __init__(self, ctx: RoleContext) -> None:
        assert ctx.rig is not None
        self.ctx = ctx
        self.rig = ctx.rig
        self.town = ctx.town
        self._store: AsyncStore | None = None
        self._log = log.get_logger()
        self._watched: dict[str, tuple[int, trio.CancelScope]] = {}
        self._silence: dict[str, tuple[str, float]] = {}
        self._nursery: trio.Nursery | None = None
        self._client: BusClient | None = None
        self._pass_needed = trio.Event()
        self._reviving: set[str] = set()
        self._died_again: set[str] = set()  # a death reported while its revive ran
        #: One operation at a time per polecat (a nuke, a respawn); others run alongside.
        self.operations = OperationLocks()
        self._nukes: MergedNukes | None = None
        self._agents: AgentWatch | None = None
        self.nuked = 0
        self.respawned = 0

    @property
    def agents(self) -> AgentWatch:
        assert self._agents is not None
        return self._agents

    @property
    def store(self) -> AsyncStore:
        assert self._store is not None
        return self._store

    def status(self) -> WitnessStatus:
        return {"watching": sorted(self._watched), "nuked": self.nuked,
                "respawned": self.respawned}

    async def handle(self, request: Request, sender: str) -> Reply:
        if request.method == "settle":
            self._pass_needed.set()
            return {"ok": True}
        raise LookupError(request.method)

    async def run(self, client: BusClient) -> None:
        self._store = await AsyncStore.open(self.town.db_path)
        self._agents = AgentWatch(self.town, self.rig, self._store, WitnessHooks(
            watch=self._ensure_watched,
            wake_refinery=self._marker, escalate=self._escalate))
        self._client = client
        self._nukes = MergedNukes(self.town, self.rig, self._store, self.operations,
                                  NUKE_CONCURRENCY)
        try:
            events = await client.subscribe(*WAKE_TOPICS)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._listen, events)
                await nursery.start(self._watch_markers)
                nursery.start_soon(self._watch_silence)
                nursery.start_soon(self.agents.watch_idle)
                nursery.start_soon(self._nukes.sweep)
                next_reconcile = trio.current_time()
                while True:
                    if trio.current_time() >= next_reconcile:
                        await self._reconcile()
                        next_reconcile = trio.current_time() + SAFETY_INTERVAL
                    await self._settle()
                    with trio.move_on_after(max(0.0, next_reconcile - trio.current_time())):
                        await self._pass_needed.wait()
                    self._pass_needed = trio.Event()
        finally:
            self.store.close()

    # -- events ------------------------------------------------------------------------

    async def _listen(self, events: trio.MemoryReceiveChannel[BusMessage]) -> None:
        async for message in events:
            if message.data.get("rig") != self.rig:
                continue
            if message.topic == "mr_merged" and message.data.get("mr_kind") == "crew":
                await self._update_crew(str(message.data.get("polecat")))
            elif message.topic == "mr_merged":
                assert self._nursery is not None
                self._nursery.start_soon(self._nuke, str(message.data.get("polecat")))
            elif message.topic == "agent_turn_ended":
                assert self._nursery is not None
                self._nursery.start_soon(self.agents.turn_ended, str(message.data.get("polecat")))
            else:
                self._pass_needed.set()

    async def _watch_markers(
            self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Completion markers in ``<rig>/polecats/``: one non-recursive watch."""
        import watchfiles

        folder = self.town.polecats_dir(self.rig)
        stop = trio.Event()

        async def stop_on_cancel() -> None:
            # awatch waits in a thread that only a set stop event ends promptly: set it the
            # moment this task is cancelled, or a SIGTERM waits out watchfiles' 5 s timeout.
            try:
                await trio.sleep_forever()
            finally:
                stop.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_cancel)
            task_status.started()
            # watchfiles' thread wakes every `step` ms to check the stop event: 20 ms cost
            # 0.3 % of a core per idle witness (measured); the store event is the fast path
            # for completion anyway, the marker a safety net.
            async for changes in watchfiles.awatch(folder, recursive=False, stop_event=stop,
                                                   debounce=100, step=250):
                for change, path in changes:
                    name = Path(path).name
                    if change != watchfiles.Change.deleted and name.startswith(".") and \
                            name.endswith(".done"):
                        await self._marker(name[1:-len(".done")])

    async def _marker(self, name: str) -> None:
        """``gastown done`` ran in polecat ``name``: its MR is in the store; wake the queue."""
        with log.bound(polecat=name):
            self._log.info("polecat_done_seen")
            try:
                assert self._client is not None
                await self._client.call(f"refinery:{self.rig}", Bare("wake"), timeout=5)
            except Exception as exc:  # the refinery is restarting: it reads the queue then
                self._log.info("refinery_not_woken", error=str(exc))
            self._pass_needed.set()

    # -- the pass ----------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Disk vs store vs git vs sessions, repaired where safe (never unlanded work)."""
        from .operations.reconcile import reconcile

        try:
            findings = await self.store.operate(reconcile, self.town, rig=self.rig, fix=True)
        except GastownError as exc:
            self._log.warning("reconcile_failed", error=exc.message)
            return
        for finding in findings:
            self._log.warning("reconciled", kind=finding.kind, subject=finding.subject,
                              detail=finding.detail, action=finding.action, fixed=finding.fixed)

    async def _settle(self) -> None:
        """Bring every polecat of the rig in line with what happened."""
        polecats = await self.store.call(self.store.store.polecats, self.rig)
        merging = [p for p in polecats if p.state == "merging"]
        merged = await self.store.call(
            self.store.store.merge_requests_of, self.rig, [p.name for p in merging],
            ["merged"], incarnations=[p.incarnation for p in merging]) if merging else []
        for polecat in polecats:
            # By incarnation: a merged MR of an earlier polecat of this name is not its own.
            if polecat.state == "merging" and any(mr.submitted_by(polecat) for mr in merged):
                assert self._nursery is not None
                self._nursery.start_soon(self._nuke, polecat.name)
            elif polecat.state == "working":
                self._ensure_watched(polecat)
            elif polecat.state == "stalled" and polecat.name not in self._reviving:
                assert self._nursery is not None
                self._nursery.start_soon(self._after_death, polecat.name)
        for name in list(self._watched):
            if not any(p.name == name and p.state in _WATCHED_STATES for p in polecats):
                self._watched.pop(name)[1].cancel()

    async def _nuke(self, name: str) -> None:
        """Nuke a merged polecat; several run at once (a batch merges several), at most
        one task per polecat (:class:`~gastown.roles.operations.merged_nukes.MergedNukes`)."""
        assert self._nukes is not None
        with log.bound(polecat=name):
            outcome = await self._nukes.nuke(name)
            self.nuked += outcome == "nuked"
            if outcome is not None and name in self._watched:
                self._watched.pop(name)[1].cancel()

    async def _update_crew(self, name: str) -> None:
        """A crew workspace's MR merged: nothing is nuked; the workspace is brought up to
        date when that loses nothing (see :mod:`gastown.roles.operations.crew_submit`)."""
        from .operations.crew_submit import update_crew_after_merge

        with log.bound(crew=name):
            try:
                detail = await self.store.call(update_crew_after_merge, self.town,
                                               self.store.store, self.rig, name)
                await self.store.call(self.store.store.emit,
                                      CrewUpdated(rig=self.rig, crew=name, detail=detail))
            except GastownError as exc:
                self._log.warning("crew_update_failed", error=exc.message)
                return
            self._log.info("crew_updated", detail=detail)

    # -- sessions ----------------------------------------------------------------------

    def _ensure_watched(self, polecat: Polecat) -> None:
        info = session_info(polecat)
        if info is None:
            return
        if (current := self._watched.get(polecat.name)) is not None:
            if current[0] == info.pid:
                return  # already watched
            current[1].cancel()  # a new session (respawned, restarted): watch that one
        scope = trio.CancelScope()
        self._watched[polecat.name] = (info.pid, scope)
        assert self._nursery is not None
        self._nursery.start_soon(self._watch_session, polecat, info, scope)
        if info.backend == "tmux" and self.agents.screen_kind(polecat) is not None:
            self._nursery.start_soon(self.agents.tend_start, polecat, info)

    async def _watch_session(self, polecat: Polecat, info: SessionInfo,
                             scope: trio.CancelScope) -> None:
        """Wait for the agent process to exit (its pidfd turns readable), then react."""
        with scope:
            try:
                pidfd = os.pidfd_open(info.pid)
            except ProcessLookupError:
                pidfd = None
            try:
                if pidfd is not None and session_alive(polecat):
                    await trio.lowlevel.wait_readable(pidfd)
            finally:
                if pidfd is not None:
                    os.close(pidfd)
            if self._watched.get(polecat.name, (None,))[0] == info.pid:
                del self._watched[polecat.name]
            await self._session_ended(polecat.name, info.pid)

    async def _session_ended(self, name: str, pid: int | None = None) -> None:
        with log.bound(polecat=name):
            try:
                polecat = await self.store.call(self.store.store.polecat, self.rig, name)
            except GastownError:
                return
            ended_turn = False
            info = session_info(polecat)
            if info is not None and info.pid == pid and self.agents.prints_turns(polecat):
                # A print-mode run exits at the end of each turn: read that turn back (its
                # tokens, even for the turn that ran `gastown done`) before anything else.
                kind = self.agents.agent(polecat).kind
                try:
                    ended_turn = await self.store.call(print_turn, self.town,
                                                       self.store.store, polecat, kind)
                except GastownError as exc:
                    self._log.info("turn_not_read", error=exc.message)
            if polecat.state != "working" or session_alive(polecat):
                return  # it ran `gastown done` (or was nuked, or respawned) first
            if ended_turn:
                await self.agents.turn_ended(name)
                return
            self._log.warning("session_died_without_done", respawns=polecat.respawns)
            try:
                await self.store.call(self.store.store.apply_polecat_event, self.rig, name,
                                      SessionDied())
            except GastownError as exc:  # nuked or finished meanwhile
                self._log.info("session_end_ignored", reason=exc.message)
                return
            await self._after_death(name)

    async def _after_death(self, name: str) -> None:
        """A stalled polecat: respawn after a back-off, or escalate past ``max_respawns``.
        A death reported while its revive runs (a respawned agent that exits at once) goes
        round again after it, if still stalled: dropped, the polecat stayed stalled."""
        if name in self._reviving:
            self._died_again.add(name)
            return
        self._reviving.add(name)
        try:
            while True:
                self._died_again.discard(name)
                await self._revive(name)
                if name not in self._died_again:
                    break
                current = await self.store.call(self.store.store.polecat, self.rig, name)
                if current.state != "stalled":
                    break
        except GastownError as exc:
            # The polecat changed under us (nuked, its rig removed, done after all): the
            # store decides, and there is nothing left to revive.
            self._log.info("revive_skipped", polecat=name, reason=exc.message)
        finally:
            self._reviving.discard(name)
            self._died_again.discard(name)

    async def _revive(self, name: str) -> None:
        with log.bound(polecat=name):
            polecat = await self.store.call(self.store.store.polecat, self.rig, name)
            limit = self.town.rig_config(self.rig).polecats.max_respawns
            if polecat.respawns >= limit:
                reason = (f"session died {polecat.respawns + 1} time(s) without "
                          "`gastown done`; worktree kept")
                await self._escalate(polecat, reason)
                return
            delay = min(RESPAWN_MAX, RESPAWN_BASE * 2 ** polecat.respawns)
            await trio.sleep(delay)
            current = await self.store.call(self.store.store.polecat, self.rig, name)
            if current.state != "stalled":
                return
            try:
                async with self.operations.hold(name):
                    await self.store.operate(respawn_session, self.town, self.rig, name)
            except GastownError as exc:
                await self._escalate(current, f"respawn failed: {exc.message}")
                return
            self.respawned += 1
            self._log.info("polecat_respawned", respawns=current.respawns + 1)
            self._ensure_watched(await self.store.call(self.store.store.polecat, self.rig,
                                                       name))

    async def _escalate(self, polecat: Polecat, reason: str) -> None:
        """Give up on a stalled polecat: what is left of its session stopped (tools it
        forked), its last output kept, the worktree kept for a human."""
        await trio.to_thread.run_sync(stop_polecat_session, self.town, polecat, 2.0)
        tail = await trio.to_thread.run_sync(session_output_tail, self.town, polecat)
        await self.store.call(self.store.store.apply_polecat_event, self.rig, polecat.name,
                              GaveUp(reason), output_tail=tail)
        self._log.warning("polecat_escalated", reason=reason)

    # -- silence -----------------------------------------------------------------------

    async def _watch_silence(self) -> None:
        """Every quarter of ``stall_timeout``: note live sessions that went silent."""
        while True:
            try:
                await self._silence_pass()
            except GastownError as exc:  # e.g. the rig is being removed
                self._log.info("silence_check_skipped", reason=exc.message)
                await trio.sleep(60)

    async def _silence_pass(self) -> None:
        """Sleep a quarter of ``stall_timeout``, then note the polecats that stayed silent."""
        timeout = self.town.rig_config(self.rig).polecats.stall_timeout
        await trio.sleep(max(1.0, timeout / 4))
        polecats = await self.store.call(self.store.store.polecats, self.rig,
                                         {"working"})
        now = trio.current_time()
        for polecat in polecats:
            mark = await trio.to_thread.run_sync(_activity_mark, self.town.root, polecat)
            last = self._silence.get(polecat.name)
            if last is None or last[0] != mark:
                self._silence[polecat.name] = (mark, now)
                if polecat.reason and polecat.reason.startswith("silent"):
                    await self.store.call(self.store.store.note_polecat, self.rig,
                                          polecat.name, None)
                continue
            if now - last[1] >= timeout and not (polecat.reason or "").startswith("silent"):
                quiet = int(now - last[1])
                how_long = f"{quiet // 60}m" if quiet >= 120 else f"{quiet}s"
                await self.store.call(self.store.store.note_polecat, self.rig,
                                      polecat.name, f"silent for {how_long}")
                self._log.warning("polecat_silent", polecat=polecat.name, seconds=quiet)


def _activity_mark(town_root: Path, polecat: Polecat) -> str:
    """A digest of what changes when an agent works: HEAD, the tree's status, its output."""
    from .adapters import git

    worktree = Path(polecat.worktree)
    parts = []
    try:
        parts.append(git.head_commit(worktree))
        parts.extend(git.dirty_files(worktree))
    except GastownError:
        parts.append("?")
    info = polecat.session or {}
    log_path = info.get("log_path")
    if log_path:
        try:
            parts.append(str(os.stat(log_path).st_size))
        except OSError:
            pass
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()
