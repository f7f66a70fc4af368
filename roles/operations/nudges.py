"""Telling a running agent something: a person's ``gastown nudge`` or the witness's nudge
after a turn that ended without ``gastown done``.

Layer: operations, used by :mod:`.agent_watch` (the witness) and ``gastown nudge``.

In tmux the text is typed at the agent's input prompt once the agent is idle there (the
screen is read, not slept on: :mod:`gastown.roles.adapters.tmux_input`). In the process backend an
agent runs one turn per process, so a nudge is a new turn: the agent's conversation
resumed with the text as its prompt (``claude -p --resume ID``, ``codex exec resume ID``).
Blocking: roles call it through ``trio.to_thread``.
"""

from __future__ import annotations

from ..adapters.agents import load_presets, resolve_agent
from ..adapters.store import Polecat, Store
from ..adapters.town import Town
from ..core.errors import Refused
from .polecat_sessions import session_alive, session_info, start_agent_session

#: Polecat states whose agent may still be told something.
NUDGEABLE = ("working", "stalled", "done", "escalated", "rejected")


def deliver_nudge(town: Town, store: Store, polecat: Polecat, text: str, *, by: str,
                  timeout: float = 60.0) -> str:
    """Deliver ``text`` to ``polecat``'s agent and record it; returns how ("typed at its
    prompt" or "as a resumed turn"). Refused when it cannot be delivered."""
    text = " ".join(text.split())
    if not text:
        raise Refused("nothing to say: the nudge text is empty")
    where = f"{polecat.rig}/{polecat.name}"
    if polecat.state not in NUDGEABLE:
        raise Refused(f"{where} is {polecat.state}: it has no agent to nudge")
    info = session_info(polecat)
    _, agent = resolve_agent(polecat.agent, town.config, load_presets())
    if info is not None and info.backend == "tmux":
        if not session_alive(polecat):
            raise Refused(f"{where}: its agent session is not running")
        from ..adapters.tmux_input import type_text

        if not type_text(info, agent.kind, text, timeout):
            raise Refused(f"{where}: its agent did not come back to its input prompt "
                          f"within {timeout:g}s (see `gastown attach {where}`)")
        how = "typed at its prompt"
    else:
        if session_alive(polecat):
            raise Refused(f"{where} is in the middle of a turn; nudge it when the turn ends")
        start_agent_session(town, store, polecat, note=text, resume=True)
        how = "as a resumed turn"
    store.note_nudge(polecat.rig, polecat.name, text, by=by)
    return how
