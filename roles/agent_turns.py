"""Hearing that an agent's turn ended, and what it cost: the shell around
:mod:`gastown.roles.agent_usage` (parsers) and :mod:`gastown.roles.turn_end` (decisions).

Three signals, one record (``store.record_turn`` -> ``agent_turn_ended``):

- Claude Code's ``Stop`` hook runs ``gastown agent-hook claude-stop`` with a JSON object
  on stdin naming the conversation's transcript;
- Codex's ``notify`` program runs ``gastown agent-hook codex-notify PAYLOAD`` (the JSON is
  the last argument); its session file lies in the polecat's ``CODEX_HOME``;
- a print-mode run (process backend) exits, and its turn is read back from the session
  log after the last start mark.

Transcripts and session files hold totals for the conversation; the deltas of each turn
are what was not seen before, remembered per conversation in ``usage-seen.json`` in the
polecat's agent home (hooks of one polecat never run at the same time).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gastown.roles import agent_usage
from gastown.roles.agent_usage import Usage
from gastown.roles.polecats import SESSION_START_MARK, agent_home
from gastown.roles.store import Polecat, Store
from gastown.roles.town import Town

#: Codex's TUI also runs ``notify`` for the hidden thread that names the conversation.
_TITLE_REQUEST = "Generate a concise"


def hook_usage(event: str, payload: Mapping[str, Any], home: Path) -> Usage | None:
    """The conversation's totals so far, from a hook's payload; None: not a turn of ours."""
    if event == "claude-stop":
        transcript = payload.get("transcript_path")
        usage = agent_usage.claude_transcript(Path(transcript)) if isinstance(
            transcript, str) else Usage()
        session = payload.get("session_id")
        return Usage(usage.tokens_in, usage.tokens_out, usage.cost_usd,
                     session if isinstance(session, str) else usage.session_id)
    if event == "codex-notify":
        if payload.get("type") not in (None, "agent-turn-complete"):
            return None
        messages = payload.get("input-messages") or []
        if messages and isinstance(messages[0], str) and \
                messages[0].startswith(_TITLE_REQUEST):
            return None
        thread = payload.get("thread-id")
        thread = thread if isinstance(thread, str) else None
        rollout = agent_usage.find_codex_rollout(home / "codex", thread)
        usage = agent_usage.codex_rollout(rollout) if rollout else Usage()
        return Usage(usage.tokens_in, usage.tokens_out, usage.cost_usd,
                     thread or usage.session_id)
    return None


def record_hook_turn(town: Town, store: Store, rig: str, name: str, event: str,
                     payload: Mapping[str, Any]) -> Polecat | None:
    """A hook said a turn ended: record its deltas. None when it was not a real turn."""
    home = agent_home(town, rig, name)
    totals = hook_usage(event, payload, home)
    if totals is None:
        return None
    return _record(store, rig, name, home, totals)


def print_turn(town: Town, store: Store, polecat: Polecat, kind: str) -> bool:
    """A print-mode session exited: whether it ended its turn (rather than being killed
    mid-turn), recording the turn when it did."""
    log_path = (polecat.session or {}).get("log_path")
    if not isinstance(log_path, str):
        return False
    text = _last_run(Path(log_path))
    if not agent_usage.print_turn_completed(kind, text):
        return False
    if kind == "codex":
        # `codex exec resume` reports the thread's running total: count what is new.
        totals = agent_usage.codex_exec_events(text) or Usage()
        _record(store, polecat.rig, polecat.name,
                agent_home(town, polecat.rig, polecat.name), totals)
        return True
    # `claude -p` reports this run's own usage, even when it continues a conversation.
    usage = (agent_usage.claude_print_result(text) if kind == "claude" else None) or Usage()
    store.record_turn(polecat.rig, polecat.name, tokens_in=usage.tokens_in,
                      tokens_out=usage.tokens_out, cost_usd=usage.cost_usd,
                      agent_session=usage.session_id)
    return True


def _record(store: Store, rig: str, name: str, home: Path, totals: Usage) -> Polecat:
    seen_path = home / "usage-seen.json"
    try:
        seen = json.loads(seen_path.read_text(encoding="utf-8"))
        if not isinstance(seen, dict):
            seen = {}
    except (OSError, ValueError):
        seen = {}
    key = totals.session_id or "-"
    before = seen.get(key) or [0, 0, 0.0]
    polecat = store.record_turn(
        rig, name, tokens_in=totals.tokens_in - int(before[0]),
        tokens_out=totals.tokens_out - int(before[1]),
        cost_usd=totals.cost_usd - float(before[2]), agent_session=totals.session_id)
    seen[key] = [totals.tokens_in, totals.tokens_out, totals.cost_usd]
    try:
        home.mkdir(parents=True, exist_ok=True)
        tmp = seen_path.with_name(f".usage-seen.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(seen), encoding="utf-8")
        os.replace(tmp, seen_path)
    except OSError:
        pass
    return polecat


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
