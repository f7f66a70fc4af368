"""What an agent's turn cost, read from what its CLI wrote: tokens, dollars, its session id.

Layer: adapters (reads agent CLIs' output files), used by :mod:`..operations.agent_turns`
and the CLI's listings.

Each CLI reports usage its own way (the project's agent-clis reference, sections 1.3, 1.6,
3.4 and 3.8; the fixtures of ``tests/unit/agent_output`` are real output of the pinned CLIs):

- Claude Code in print mode (``claude -p --output-format stream-json --verbose``) ends with
  one ``{"type": "result", ...}`` line carrying ``usage``, ``total_cost_usd`` and
  ``session_id`` for that run; an interactive session's transcript
  (``<config>/projects/<cwd>/<session>.jsonl``) has ``usage`` on each ``assistant`` line.
- Codex ``exec --json`` prints a ``turn.completed`` line at the end of a turn with the
  thread's running total in ``usage``, after a ``thread.started`` line naming the thread;
  its rollout file (``$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<ts>-<thread>.jsonl``) has
  running totals in ``event_msg`` ``token_count`` lines. Codex reports no cost.

Everything here reads text or one file and decides; nothing writes. Lines that are not JSON
(a session log holds other output too, a file may end in a torn line) are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

# How the CLI prints usage; defined with the feed's text, re-exported here.
from ..core.event_text import dollars as dollars
from ..core.event_text import short_count as short_count

Kind = Literal["claude", "codex"]


@dataclass(frozen=True)
class Usage:
    """Tokens and cost of one turn (or of a run, or a session so far).

    ``tokens_in`` counts every input token the model read: for Claude, ``input_tokens`` +
    ``cache_creation_input_tokens`` + ``cache_read_input_tokens`` (the API reports the three
    apart); for Codex, ``input_tokens``, which already includes its cached input.
    ``tokens_out`` is ``output_tokens`` (Codex's reasoning tokens are part of it).
    ``cost_usd`` is what the CLI itself reported, 0.0 where it reports none (Codex,
    Claude's transcripts). ``session_id`` is the CLI's conversation id, for resuming it.
    """

    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    session_id: str | None = None

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.tokens_in + other.tokens_in, self.tokens_out + other.tokens_out,
                     self.cost_usd + other.cost_usd, other.session_id or self.session_id)

    def minus(self, earlier: Usage) -> Usage:
        """What was spent since ``earlier`` (totals of the same session); never negative."""
        return Usage(max(0, self.tokens_in - earlier.tokens_in),
                     max(0, self.tokens_out - earlier.tokens_out),
                     max(0.0, self.cost_usd - earlier.cost_usd), self.session_id)


def json_lines(text: str) -> Iterator[dict[str, Any]]:
    """The JSON objects among ``text``'s lines; anything else (plain output, torn lines,
    JSON that is not an object) is skipped."""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _int(mapping: Mapping[str, Any], key: str) -> int:
    value = mapping.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        and value > 0 else 0.0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


#: The keys of Claude's token counts, input (fresh, cache creation, cache read) then output:
#: a run's or a message's ``usage`` spells them in snake_case, ``modelUsage`` in camelCase.
_USAGE_KEYS: Final = ("input_tokens", "cache_creation_input_tokens",
                      "cache_read_input_tokens", "output_tokens")
_MODEL_USAGE_KEYS: Final = ("inputTokens", "cacheCreationInputTokens", "cacheReadInputTokens",
                            "outputTokens")


def _claude_tokens(usage: Any, keys: tuple[str, ...] = _USAGE_KEYS) -> tuple[int, int]:
    """(tokens in, tokens out) of one of Claude's usage objects; (0, 0) if it is not one."""
    if not isinstance(usage, dict):
        return 0, 0
    *inputs, output = keys
    return sum(_int(usage, key) for key in inputs), _int(usage, output)


def claude_print_result(log_text: str) -> Usage | None:
    """The usage of a ``claude -p`` run from its last ``result`` line (stream-json or json
    output); None when the run wrote none (it was killed, or never started).

    The figures are the run's own (a resumed session's run reports only what it spent).
    Tokens come from ``modelUsage`` (every model the run called, its side requests such as
    the title included, as ``total_cost_usd`` is), else from ``usage`` (the main loop only).
    """
    result = None
    for obj in json_lines(log_text):
        if obj.get("type") == "result":
            result = obj
        elif _claude_run_starts(obj):
            result = None  # a log may hold several runs: only the last one counts
    if result is None:
        return None
    tokens_in, tokens_out = _claude_tokens(result.get("usage"))
    models = result.get("modelUsage")
    if isinstance(models, dict) and models:
        per_model = [_claude_tokens(m, _MODEL_USAGE_KEYS) for m in models.values()]
        tokens_in, tokens_out = sum(t[0] for t in per_model), sum(t[1] for t in per_model)
    return Usage(tokens_in, tokens_out, _float(result.get("total_cost_usd")),
                 _str(result.get("session_id")))


def _claude_run_starts(obj: Mapping[str, Any]) -> bool:
    return obj.get("type") == "system" and obj.get("subtype") == "init"


def _is_prompt(obj: Mapping[str, Any]) -> bool:
    """A transcript line that starts a turn: a user message that is not only tool results."""
    message = obj.get("message")
    if obj.get("type") != "user" or obj.get("isMeta") or obj.get("isSidechain") or \
            not isinstance(message, dict):
        return False
    content = message.get("content")
    if isinstance(content, str):
        return True
    return isinstance(content, list) and any(
        not (isinstance(block, dict) and block.get("type") == "tool_result")
        for block in content)


def claude_transcript(path: Path, *, last_turn: bool = False) -> Usage:
    """The usage of a Claude session from its transcript (``transcript_path`` of its hooks):
    the sum over its API responses, or with ``last_turn`` over those since the last prompt
    (what the turn a Stop hook reports spent). A response with several content blocks is
    written as several ``assistant`` lines sharing one ``message.id``: each id counts once,
    with the last usage seen for it. Side requests (the title) are not in transcripts, nor
    is any cost: ``cost_usd`` is 0.0."""
    per_message: dict[str, tuple[int, int]] = {}
    anonymous: list[tuple[int, int]] = []
    session = None
    for obj in json_lines(_read(path)):
        session = _str(obj.get("sessionId")) or session
        if last_turn and _is_prompt(obj):
            per_message, anonymous = {}, []
        message = obj.get("message")
        if obj.get("type") != "assistant" or not isinstance(message, dict):
            continue
        tokens = _claude_tokens(message.get("usage"))
        message_id = _str(message.get("id"))
        if message_id is None:
            anonymous.append(tokens)
        else:
            per_message[message_id] = tokens
    counted = [*per_message.values(), *anonymous]
    return Usage(sum(t[0] for t in counted), sum(t[1] for t in counted), 0.0, session)


def _codex_tokens(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    return _int(usage, "input_tokens"), _int(usage, "output_tokens")


def codex_exec_events(log_text: str) -> Usage | None:
    """The thread's usage after a ``codex exec --json`` run: its last ``turn.completed``
    line, with the thread id of ``thread.started``; None when no turn completed.

    Codex reports the *thread's running total* there, not the turn's: a resumed thread's
    first turn already counts the earlier runs (observed with 0.171.0: 300 input tokens,
    then 500 after a resume that made two more requests). So the lines are not summed;
    what one turn spent is the difference with the total before it
    (:meth:`Usage.minus`), or :func:`codex_rollout` with ``last_turn``.
    """
    thread = None
    total: tuple[int, int] | None = None
    for obj in json_lines(log_text):
        kind = obj.get("type")
        if kind == "thread.started":  # a log may hold several runs: the last one counts
            thread, total = _str(obj.get("thread_id")) or thread, None
        elif kind == "turn.completed":
            total = _codex_tokens(obj.get("usage"))
    if total is None:
        return None
    return Usage(total[0], total[1], 0.0, thread)


def codex_rollout(path: Path, *, last_turn: bool = False) -> Usage:
    """A Codex thread's usage from its rollout file: the last ``token_count`` event's
    ``total_token_usage`` (zero before the first one), or with ``last_turn`` what the
    thread's last turn (since its last ``task_started``) added to it; the session id of
    its ``session_meta`` line. The file holds every run of the thread (a resume appends)."""
    session = None
    tokens = before_turn = (0, 0)
    for obj in json_lines(_read(path)):
        payload = obj.get("payload")
        if not isinstance(payload, dict):
            continue
        if obj.get("type") == "session_meta":
            session = _str(payload.get("id")) or _str(payload.get("session_id")) or session
        elif obj.get("type") == "event_msg" and payload.get("type") == "task_started":
            before_turn = tokens
        elif obj.get("type") == "event_msg" and payload.get("type") == "token_count":
            info = payload.get("info")
            if isinstance(info, dict) and isinstance(info.get("total_token_usage"), dict):
                tokens = _codex_tokens(info["total_token_usage"])
    if last_turn:
        tokens = (max(0, tokens[0] - before_turn[0]), max(0, tokens[1] - before_turn[1]))
    return Usage(tokens[0], tokens[1], 0.0, session)


def find_codex_rollout(codex_home: Path, thread_id: str | None) -> Path | None:
    """The rollout file of ``thread_id`` under ``codex_home/sessions``, or the newest one
    when ``thread_id`` is None; None when there is none."""
    pattern = f"rollout-*-{thread_id}.jsonl" if thread_id else "rollout-*.jsonl"
    try:
        found = list((codex_home / "sessions").glob(f"*/*/*/{pattern}"))
    except OSError:
        return None
    if not found:
        return None

    def newest_first(path: Path) -> tuple[str, float]:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = 0.0
        return path.name, mtime  # the name starts with the session's start time

    return max(found, key=newest_first)


def print_turn_completed(kind: str, log_text: str) -> bool:
    """Whether a print-mode run ended its turn normally, as opposed to being killed (or
    failing) mid-turn: for Claude, a ``result`` line came after the last run's ``init``;
    for Codex, a ``turn.completed`` after the last ``turn.started``. Other agents: False."""
    if kind == "claude":
        ended = False
        for obj in json_lines(log_text):
            if obj.get("type") == "result":
                ended = True
            elif _claude_run_starts(obj):
                ended = False
        return ended
    if kind == "codex":
        ended = False
        for obj in json_lines(log_text):
            if obj.get("type") == "turn.started":
                ended = False
            elif obj.get("type") == "turn.completed":
                ended = True
        return ended
    return False

