"""The scripted model protocol, without any HTTP: what to answer to one request.

A conversation's first prompt carries a script::

    SCRIPT-BEGIN
    echo hi > hi.txt
    git add hi.txt && git commit -qm "add hi"
    SCRIPT-END
    NUDGE-BEGIN
    gastown done
    NUDGE-END

Each script line is one shell command, answered as one tool call per response; after the
last line the model says "Done." and ends its turn. Any later prompt (a nudge, a resumed
session) follows the NUDGE section of the first prompt instead ("Nothing to do." when there
is none). The step is the number of tool results after the latest prompt, so the request
alone decides the answer: resume and respawn work whatever process asks.

Two wire formats: Anthropic Messages (Claude Code) and OpenAI Responses (Codex).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

SCRIPT_BEGIN, SCRIPT_END = "SCRIPT-BEGIN", "SCRIPT-END"
NUDGE_BEGIN, NUDGE_END = "NUDGE-BEGIN", "NUDGE-END"

DONE_TEXT = "Done."
NOTHING_TEXT = "Nothing to do."
NO_SCRIPT_TEXT = "No script found."
NO_TOOL_TEXT = "Scripted task"

INPUT_TOKENS = 100
OUTPUT_TOKENS = 20

ANTHROPIC_SHELL_TOOL = "Bash"
RESPONSES_SHELL_TOOL = "exec_command"

# A text block made only of one wrapped tag (<system-reminder>…</system-reminder>,
# <environment_context>…</environment_context>, …) is context the CLI added, not a prompt.
_WRAPPED_TAG = re.compile(r"^<([A-Za-z][\w-]*)[^>]*>.*</\1>$", re.DOTALL)
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
# Codex's contextual user messages that are not wrapped in a tag.
_CONTEXT_PREFIXES = ("# AGENTS.md instructions",)


def section(text: str, begin: str, end: str) -> list[str] | None:
    """The non-blank, stripped lines between the first ``begin`` and the next ``end``.

    None when ``begin`` is absent; an unterminated section runs to the end of the text.
    """
    start = text.find(begin)
    if start < 0:
        return None
    body = text[start + len(begin):]
    stop = body.find(end)
    if stop >= 0:
        body = body[:stop]
    return [line.strip() for line in body.splitlines() if line.strip()]


@dataclass(frozen=True)
class Script:
    """The commands of the first prompt (``commands``) and of any later prompt (``nudge``)."""

    commands: tuple[str, ...]
    nudge: tuple[str, ...]


def parse_script(text: str) -> Script | None:
    """The SCRIPT and NUDGE sections of a prompt; None when it has no SCRIPT-BEGIN."""
    commands = section(text, SCRIPT_BEGIN, SCRIPT_END)
    if commands is None:
        return None
    return Script(tuple(commands), tuple(section(text, NUDGE_BEGIN, NUDGE_END) or ()))


def is_context_text(text: str) -> bool:
    """Whether a text block is context added by the CLI rather than something typed."""
    stripped = _REMINDER.sub("", text).strip()
    if not stripped:
        return True
    return bool(_WRAPPED_TAG.match(stripped)) or stripped.startswith(_CONTEXT_PREFIXES)


@dataclass(frozen=True)
class Turn:
    """One user-side entry of a conversation, reduced to what the protocol needs.

    ``prompt`` is the typed text (None when the entry holds only tool results or CLI
    context), ``full_text`` every text of the entry (to find the script in), and
    ``tool_results`` how many tool results the entry carries.
    """

    prompt: str | None
    full_text: str
    tool_results: int


@dataclass(frozen=True)
class Decision:
    """What to answer: one shell command, or a text that ends the turn."""

    kind: str  # "script" | "nudge" | "no-script" | "no-tool"
    prompt_index: int | None
    step: int
    prompt: str
    command: str | None = None
    text: str | None = None


def decide(turns: Sequence[Turn], *, has_shell_tool: bool) -> Decision:
    """The answer to a conversation given as its user-side turns, in order.

    The script-bearing prompt is the first prompt whose entry mentions SCRIPT-BEGIN; later
    prompts are the ones after it. The step is the number of tool results after the latest
    prompt (tool results in the same entry as a prompt came before it).
    """
    latest: int | None = None
    script_at: int | None = None
    script: Script | None = None
    prompt_count = 0
    for i, turn in enumerate(turns):
        if script_at is None and SCRIPT_BEGIN in turn.full_text:
            script_at, script = i, parse_script(turn.full_text)
            prompt_count = 1
            latest = i
        elif turn.prompt is not None:
            latest = i
            if script_at is not None:
                prompt_count += 1
    prompt = "" if latest is None else (turns[latest].prompt or turns[latest].full_text)
    step = sum(t.tool_results for t in turns[latest + 1:]) if latest is not None else 0
    if not has_shell_tool:
        return Decision("no-tool", None, step, prompt[:200], text=NO_TOOL_TEXT)
    if script is None or script_at is None or latest is None:
        return Decision("no-script", None, step, prompt[:200], text=NO_SCRIPT_TEXT)
    index = prompt_count - 1
    kind, lines = ("script", script.commands) if latest == script_at else ("nudge", script.nudge)
    if step < len(lines):
        return Decision(kind, index, step, prompt[:200], command=lines[step])
    text = DONE_TEXT if lines else NOTHING_TEXT
    return Decision(kind, index, step, prompt[:200], text=text)


# --- Anthropic Messages -------------------------------------------------------------------

def _block_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, Mapping) and block.get("type") == "text":
                texts.append(str(block.get("text", "")))
    return texts


def anthropic_turns(messages: Iterable[Mapping[str, Any]]) -> list[Turn]:
    """The user-side turns of an Anthropic ``messages`` list."""
    turns: list[Turn] = []
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        texts = _block_texts(content)
        results = 0
        if isinstance(content, list):
            results = sum(1 for b in content
                          if isinstance(b, Mapping) and b.get("type") == "tool_result")
        typed = [t for t in texts if not is_context_text(t)]
        turns.append(Turn("\n".join(typed) if typed else None, "\n".join(texts), results))
    return turns


def anthropic_has_shell(body: Mapping[str, Any]) -> bool:
    tools = body.get("tools") or []
    return any(isinstance(t, Mapping) and t.get("name") == ANTHROPIC_SHELL_TOOL for t in tools)


def anthropic_decide(body: Mapping[str, Any]) -> Decision:
    return decide(anthropic_turns(body.get("messages") or []),
                  has_shell_tool=anthropic_has_shell(body))


def _usage() -> dict[str, int]:
    return {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def _anthropic_block(decision: Decision) -> dict[str, Any]:
    if decision.command is not None:
        return {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}",
                "name": ANTHROPIC_SHELL_TOOL,
                "input": {"command": decision.command,
                          "description": f"scripted step {decision.step + 1}"}}
    return {"type": "text", "text": decision.text or ""}


def _stop_reason(decision: Decision) -> str:
    return "tool_use" if decision.command is not None else "end_turn"


def anthropic_message(decision: Decision, model: str) -> dict[str, Any]:
    """A complete (non-streaming) Messages API response."""
    return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": model, "content": [_anthropic_block(decision)],
            "stop_reason": _stop_reason(decision), "stop_sequence": None, "usage": _usage()}


def anthropic_events(decision: Decision, model: str) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of a streamed Messages API response, as (event name, data)."""
    message = anthropic_message(decision, model)
    block = message["content"][0]
    start = dict(message, content=[], stop_reason=None,
                 usage=dict(_usage(), output_tokens=1))
    if block["type"] == "tool_use":
        opening = dict(block, input={})
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
    else:
        opening = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": block["text"]}
    return [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start",
         {"type": "content_block_start", "index": 0, "content_block": opening}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": _stop_reason(decision),
                                     "stop_sequence": None},
                           "usage": {"output_tokens": OUTPUT_TOKENS}}),
        ("message_stop", {"type": "message_stop"}),
    ]


# --- OpenAI Responses ---------------------------------------------------------------------

def _item_texts(item: Mapping[str, Any]) -> list[str]:
    content = item.get("content")
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, Mapping) and "text" in block:
                texts.append(str(block["text"]))
    return texts


def responses_turns(items: Iterable[Mapping[str, Any]]) -> list[Turn]:
    """The user-side turns of a Responses ``input`` list (tool outputs count as turns)."""
    turns: list[Turn] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call_output" or kind == "custom_tool_call_output":
            turns.append(Turn(None, "", 1))
        elif kind == "message" and item.get("role") == "user":
            texts = _item_texts(item)
            typed = [t for t in texts if not is_context_text(t)]
            turns.append(Turn("\n".join(typed) if typed else None, "\n".join(texts), 0))
    return turns


def responses_has_shell(body: Mapping[str, Any]) -> bool:
    tools = body.get("tools") or []
    return any(isinstance(t, Mapping) and t.get("name") == RESPONSES_SHELL_TOOL for t in tools)


# Codex's newer default models get their tools in an ``additional_tools`` input item, behind
# a JavaScript "exec" tool, and are offered no plain ``exec_command``: say so in the answer.
CODE_MODE_TEXT = ('Scripted model: no exec_command tool offered; run codex with '
                  '-c model="gpt-5-codex"')


def responses_decide(body: Mapping[str, Any]) -> Decision:
    items = body.get("input") or []
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    decision = decide(responses_turns(items), has_shell_tool=responses_has_shell(body))
    code_mode = any(isinstance(i, Mapping) and i.get("type") == "additional_tools"
                    for i in items)
    if decision.kind == "no-tool" and code_mode:
        return replace(decision, text=CODE_MODE_TEXT)
    return decision


def responses_events(decision: Decision) -> list[tuple[str, dict[str, Any]]]:
    """The minimal SSE events of a Responses API answer, as (event name, data)."""
    rid = f"resp_{uuid.uuid4().hex[:24]}"
    item: dict[str, Any]
    if decision.command is not None:
        call = uuid.uuid4().hex[:24]
        item = {"type": "function_call", "id": f"fc_{call}", "call_id": f"call_{call}",
                "name": RESPONSES_SHELL_TOOL,
                "arguments": json.dumps({"cmd": decision.command})}
    else:
        item = {"type": "message", "role": "assistant", "id": f"msg_{uuid.uuid4().hex[:24]}",
                "content": [{"type": "output_text", "text": decision.text or ""}]}
    usage = {"input_tokens": INPUT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": OUTPUT_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS}
    return [
        ("response.created", {"type": "response.created", "response": {"id": rid}}),
        ("response.output_item.done",
         {"type": "response.output_item.done", "output_index": 0, "item": item}),
        ("response.completed",
         {"type": "response.completed", "response": {"id": rid, "usage": usage}}),
    ]


def sse(events: Iterable[tuple[str, Mapping[str, Any]]]) -> bytes:
    """Server-sent events: ``event: <name>\\ndata: <json>\\n\\n`` each."""
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                    for name, data in events)
