"""Hearing that an agent's turn ended, and what it cost: the shell around the
usage parsers (:mod:`..adapters.agent_usage`) and the decisions (:mod:`..core.turn_end`).

Layer: operations, used by the witness's role loop, the nuke (:mod:`.nuking`), the polecat's
session (:mod:`.polecat_sessions`) and ``gastown agent-hook``.

Three signals, one record (``store.record_turn`` -> ``agent_turn_ended``):

- Claude Code's ``Stop`` hook runs ``gastown agent-hook claude-stop`` with a JSON object
  on stdin naming the conversation's transcript;
- Codex's ``notify`` program runs ``gastown agent-hook codex-notify PAYLOAD`` (the JSON is
  the last argument); its session file lies in the polecat's ``CODEX_HOME``;
- a print-mode run (process backend) exits, and its turn is read back from the session
  log after the last start mark.

Transcripts and session files in the polecat's agent home hold totals per conversation;
a turn's deltas are what was not seen before, remembered per conversation in
``usage-seen.json`` there (hooks of one polecat never run at the same time). Before a nuke
removes the home, :func:`settle_usage` counts what the last turn spent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..adapters import agent_usage
from ..adapters.agent_homes import agent_home
from ..adapters.agent_usage import Usage
from ..adapters.agents import load_presets, resolve_agent
from ..adapters.store import Polecat, Store
from ..adapters.town import Town
from ..core.errors import GastownError

#: The line a session log gets before each start of the agent: print-mode output is read
#: back from the last one (the turn that just ended, not an earlier one).
SESSION_START_MARK = "== gastown: agent session started"

#: Codex's TUI also runs ``notify`` for the hidden thread that names the conversation.
_TITLE_REQUEST = "Generate a concise"


def is_turn(event: str, payload: Mapping[str, Any]) -> bool:
    """Whether a hook's payload reports a turn of the polecat's own conversation."""
    if event == "claude-stop":
        return not payload.get("stop_hook_active")  # the first Stop counted that turn
    if event == "codex-notify":
        if payload.get("type") not in (None, "agent-turn-complete"):
            return False
        messages = payload.get("input-messages") or []
        return not (messages and isinstance(messages[0], str)
                    and messages[0].startswith(_TITLE_REQUEST))
    return False


def record_hook_turn(town: Town, store: Store, rig: str, name: str, event: str,
                     payload: Mapping[str, Any]) -> Polecat | None:
    """A hook said a turn ended: record it with what the conversation spent since the
    last record. None when it was not a turn of ours."""
    if not is_turn(event, payload):
        return None
    kind = "claude" if event == "claude-stop" else "codex"
    return record_home_usage(store, rig, name, kind, agent_home(town, rig, name),
                             ended_turn=True)


def print_turn(town: Town, store: Store, polecat: Polecat, kind: str) -> bool:
    """A print-mode session exited: whether it ended its turn (rather than being killed
    mid-turn), recording the turn when it did."""
    log_path = (polecat.session or {}).get("log_path")
    if not isinstance(log_path, str):
        return False
    text = _last_run(Path(log_path))
    if not agent_usage.print_turn_completed(kind, text):
        return False
    home = agent_home(town, polecat.rig, polecat.name)
    result = agent_usage.claude_print_result(text) if kind == "claude" else None
    if result is None:
        record_home_usage(store, polecat.rig, polecat.name, kind, home, ended_turn=True)
        return True
    # `claude -p` reports the run's own usage with its cost (transcripts have no cost):
    # record that, and count the transcripts as seen so that nothing is counted twice.
    store.record_turn(polecat.rig, polecat.name, tokens_in=result.tokens_in,
                      tokens_out=result.tokens_out, cost_usd=result.cost_usd,
                      agent_session=result.session_id)
    _, seen = _unseen(kind, home)
    _save_seen(home, seen)
    return True


def settle_usage(town: Town, store: Store, polecat: Polecat) -> None:
    """The last accounting before a polecat's agent home goes (nuke): what its agent spent
    after the last recorded turn (the turn that ran `gastown done` is often cut short by
    the nuke itself). Best effort: never stands in the nuke's way."""
    try:
        _, agent = resolve_agent(polecat.agent, town.config, load_presets())
        if agent.kind in ("claude", "codex"):
            record_home_usage(store, polecat.rig, polecat.name, agent.kind,
                              agent_home(town, polecat.rig, polecat.name), ended_turn=False)
    except (GastownError, OSError, ValueError):
        pass


def record_home_usage(store: Store, rig: str, name: str, kind: str, home: Path, *,
                      ended_turn: bool) -> Polecat | None:
    """Record what the conversations in ``home`` spent since the last record (as a turn,
    or, without ``ended_turn``, only when there is something new)."""
    delta, seen = _unseen(kind, home)
    if not ended_turn and not (delta.tokens_in or delta.tokens_out or delta.cost_usd):
        return None
    polecat = store.record_turn(rig, name, tokens_in=delta.tokens_in,
                                tokens_out=delta.tokens_out, cost_usd=delta.cost_usd,
                                agent_session=delta.session_id, ended_turn=ended_turn)
    _save_seen(home, seen)
    return polecat


def _sessions(kind: str, home: Path) -> list[Usage]:
    """The totals of every conversation of the agent in ``home``, oldest first."""
    if kind == "claude":
        paths = sorted((home / "claude" / "projects").glob("*/*.jsonl"),
                       key=_mtime)
        return [agent_usage.claude_transcript(p) for p in paths]
    if kind == "codex":
        paths = sorted((home / "codex" / "sessions").rglob("rollout-*.jsonl"), key=_mtime)
        return [agent_usage.codex_rollout(p) for p in paths]
    return []


def _unseen(kind: str, home: Path) -> tuple[Usage, dict[str, list[float]]]:
    """What was spent since the last record, and the new 'seen' totals per session."""
    seen = _load_seen(home)
    tokens_in = tokens_out = 0
    session = None
    for usage in _sessions(kind, home):
        key = usage.session_id or "-"
        before = seen.get(key) or [0, 0, 0.0]
        tokens_in += max(0, usage.tokens_in - int(before[0]))
        tokens_out += max(0, usage.tokens_out - int(before[1]))
        seen[key] = [usage.tokens_in, usage.tokens_out, usage.cost_usd]
        session = usage.session_id or session
    return Usage(tokens_in, tokens_out, 0.0, session), seen


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _load_seen(home: Path) -> dict[str, list[float]]:
    try:
        seen = json.loads((home / "usage-seen.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return seen if isinstance(seen, dict) else {}


def _save_seen(home: Path, seen: Mapping[str, list[float]]) -> None:
    try:
        home.mkdir(parents=True, exist_ok=True)
        tmp = home / f".usage-seen.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(seen), encoding="utf-8")
        os.replace(tmp, home / "usage-seen.json")
    except OSError:
        pass


def _last_run(log_path: Path, limit: int = 4 * 1024 * 1024) -> str:
    """The session log after the last start mark (the run that just ended)."""
    try:
        with log_path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    at = text.rfind(SESSION_START_MARK)
    if at < 0:
        return text
    newline = text.find("\n", at)
    return text[newline + 1:] if newline >= 0 else ""
