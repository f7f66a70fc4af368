"""The witness's eye on real agent CLIs: their start-up screens and their turns.

Its one job: when an agent (``claude``, ``codex``) starts in tmux, answer the first-run
dialogs its prepared home did not prevent and report a start stuck on an unknown screen;
when an agent's turn ends without ``gastown done``, carry out
:func:`gastown.roles.core.turn_end.after_turn` (nudge, record the MR for it, or escalate).
Layer: operations, used by the witness's role loop, which it calls back through
:class:`WitnessHooks` for what belongs to the loop (the feed, the session watch, the
refinery, escalation).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import trio

from ..adapters import log
from ..adapters.agents import load_presets, prints_turns, resolve_agent
from ..adapters.async_store import AsyncStore
from ..adapters.sessions import SessionInfo
from ..adapters.store import Polecat
from ..adapters.town import Town
from ..core.agent_screen import read_screen
from ..core.config import AgentConfig
from ..core.errors import GastownError
from ..core.turn_end import (
    Escalate,
    IdleMark,
    Nothing,
    Nudge,
    RecordDone,
    TurnFacts,
    after_turn,
    idle_turn,
)
from .nudges import deliver_nudge
from .polecat_done import record_done
from .polecat_sessions import session_alive, session_info

#: How often the witness looks at the screens of real agents in tmux for an idle prompt.
IDLE_CHECK: Final = 15.0

#: How long the witness waits for an agent to come back to its prompt for a nudge.
NUDGE_TIMEOUT: Final = 120.0


@dataclass(frozen=True)
class WitnessHooks:
    """What the witness's loop does for :class:`AgentWatch`."""

    watch: Callable[[Polecat], None]
    wake_refinery: Callable[[str], Awaitable[None]]
    escalate: Callable[[Polecat, str], Awaitable[None]]


class AgentWatch:
    def __init__(self, town: Town, rig: str, store: AsyncStore, hooks: WitnessHooks) -> None:
        self.town = town
        self.rig = rig
        self.store = store
        self.hooks = hooks
        self._log = log.get_logger()
        self._turning: set[str] = set()
        self._again: set[str] = set()
        self._idle: dict[str, IdleMark] = {}

    def agent(self, polecat: Polecat) -> AgentConfig:
        _, agent = resolve_agent(polecat.agent, self.town.config, load_presets())
        return agent

    def prints_turns(self, polecat: Polecat) -> bool:
        backend = (polecat.session or {}).get("backend", "process")
        try:
            return prints_turns(self.agent(polecat), backend)
        except GastownError:
            return False

    async def turn_ended(self, name: str) -> None:
        """The agent ended a turn: if it did not run `gastown done`, nudge it once, then
        decide for it (:mod:`gastown.roles.core.turn_end`)."""
        if name in self._turning:
            # A turn that ends while the last one is still handled (a fast agent answers a
            # nudge before the nudge's own bookkeeping is over) is handled right after it,
            # never dropped: dropping it left the polecat working forever.
            self._again.add(name)
            return
        self._turning.add(name)
        try:
            with log.bound(polecat=name):
                await self._after_turn(name)
                while name in self._again:
                    self._again.discard(name)
                    await self._after_turn(name)
        except GastownError as exc:
            self._log.info("turn_end_skipped", polecat=name, reason=exc.message)
        finally:
            self._turning.discard(name)
            self._again.discard(name)

    async def _after_turn(self, name: str) -> None:
        polecat = await self.store.call(self.store.store.polecat, self.rig, name)
        if polecat.state != "working":
            return
        if self.prints_turns(polecat) and session_alive(polecat):
            return  # a print-mode turn ends with its process: this one still runs

        facts = await trio.to_thread.run_sync(self.turn_facts, polecat)
        decision = after_turn(facts)
        if isinstance(decision, Nothing):
            return
        if isinstance(decision, Nudge):
            self._log.info("nudging_after_turn", commits_ahead=facts.commits_ahead,
                           dirty=facts.dirty)
            try:
                await self.store.call(deliver_nudge, self.town, self.store.store, polecat,
                                      decision.text, by="witness", timeout=NUDGE_TIMEOUT)
            except GastownError as exc:
                # Not typed (its prompt never came back, the keys were refused): as good
                # as a nudge it ignored. Deciding now keeps it from waiting for a turn
                # end that cannot come.
                self._log.warning("nudge_failed", error=exc.message)
                decision = after_turn(replace(facts, nudges=facts.nudges + 1))
            else:
                self.hooks.watch(await self.store.call(self.store.store.polecat, self.rig,
                                                       name))
                return
        if isinstance(decision, RecordDone):
            try:
                result = await self.store.operate(
                    record_done, self.town, self.rig, name, "completed",
                    reason="recorded by the witness: the agent committed its work but did "
                           "not run `gastown done`", done_by="witness")
            except GastownError as exc:
                self._log.warning("witness_done_refused", error=exc.message)
                return
            self._log.info("done_by_witness",
                           mr=result.merge_request.id if result.merge_request else None)
            await self.hooks.wake_refinery(name)
        elif isinstance(decision, Escalate):
            await self.hooks.escalate(polecat, decision.reason)

    async def watch_idle(self) -> None:
        """Every :data:`IDLE_CHECK` seconds, hand the turn ends that never arrived (see
        :meth:`idle_pass`) to :meth:`turn_ended`."""
        async with trio.open_nursery() as nursery:
            while True:
                after = self.town.config.sessions.idle_turn_after
                await trio.sleep(min(IDLE_CHECK, max(0.5, after / 3)))
                try:
                    working = await self.store.call(self.store.store.polecats, self.rig,
                                                    {"working"})
                    for name in await self.idle_pass(working):
                        nursery.start_soon(self.turn_ended, name)
                except GastownError as exc:  # e.g. the rig is being removed
                    self._log.info("idle_check_skipped", reason=exc.message)

    async def idle_pass(self, polecats: list[Polecat]) -> list[str]:
        """The working polecats whose real agent in tmux has sat idle at its prompt long
        enough, with no turn end recorded, to be handled as a turn end
        (:func:`~gastown.roles.core.turn_end.idle_turn`); one screen capture each."""
        due: list[str] = []
        seen: set[str] = set()
        for polecat in polecats:
            kind = self.screen_kind(polecat)
            info = session_info(polecat)
            if kind is None or info is None or info.backend != "tmux" \
                    or polecat.name in self._turning:
                continue
            seen.add(polecat.name)
            idle = await trio.to_thread.run_sync(_idle_at_prompt, info, kind)
            mark, handle = idle_turn(self._idle.get(polecat.name), now=trio.current_time(),
                                     idle=idle, turns=polecat.turns, nudges=polecat.nudges,
                                     after=self.town.config.sessions.idle_turn_after)
            if mark is None:
                self._idle.pop(polecat.name, None)
            else:
                self._idle[polecat.name] = mark
            if handle:
                with log.bound(polecat=polecat.name):
                    self._log.warning("agent_idle_without_turn_end", turns=polecat.turns,
                                      nudges=polecat.nudges)
                due.append(polecat.name)
        for gone in set(self._idle) - seen:
            del self._idle[gone]
        return due

    def turn_facts(self, polecat: Polecat) -> TurnFacts:
        from ..adapters import git

        worktree = Path(polecat.worktree)
        default = self.town.rig_config(self.rig).default_branch
        try:
            dirty = bool(git.dirty_files(worktree))
            ahead = git.commits_ahead(worktree, default, "HEAD")
        except GastownError:
            dirty, ahead = True, 0
        return TurnFacts(working=polecat.state == "working", nudges=polecat.nudges,
                         commits_ahead=ahead, dirty=dirty)

    def screen_kind(self, polecat: Polecat) -> str | None:
        try:
            kind = self.agent(polecat).kind
        except GastownError:
            return None
        return kind if kind in ("claude", "codex") else None

    async def tend_start(self, polecat: Polecat, info: SessionInfo) -> None:
        """A real agent starting in tmux: answer any first-run dialog its prepared home
        did not prevent, and report a start stuck on a screen we do not know (the screen's
        last lines in `polecat list`), never leave it silent."""
        from ..adapters.tmux_input import answer_dialogs

        kind = self.screen_kind(polecat)
        assert kind is not None
        with log.bound(polecat=polecat.name):  # bounded by sessions.start_timeout
            try:
                timeout = self.town.config.sessions.start_timeout
                outcome = await trio.to_thread.run_sync(answer_dialogs, info, kind, timeout,
                                                        abandon_on_cancel=True)
            except GastownError as exc:
                self._log.info("start_not_watched", error=exc.message)
                return
            if outcome.dialogs:
                self._log.info("agent_dialogs_answered", dialogs=list(outcome.dialogs))
            if outcome.kind != "unknown":
                return
            screen = " | ".join(line.strip() for line in outcome.tail.splitlines()
                                if line.strip())[-300:]
            reason = (f"stuck at start: {outcome.problem or 'an unrecognised screen'}"
                      f"; screen: {screen or '(blank)'}")
            self._log.warning("agent_start_stuck", reason=reason, screen=outcome.tail)
            try:
                await self.store.call(self.store.store.note_polecat, self.rig, polecat.name,
                                      reason)
            except GastownError:
                return


def _idle_at_prompt(info: SessionInfo, kind: str) -> bool:
    """The agent's screen shows its prompt, not a turn in progress (False when unreadable)."""
    from ..adapters.tmux_input import capture

    try:
        return read_screen(capture(info), kind).state == "ready"
    except GastownError:
        return False
