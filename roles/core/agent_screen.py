"""What an agent CLI's tmux screen shows: ready, busy, a dialog to answer, or not yet known.

Layer: core (pure), used by :mod:`gastown.roles.adapters.tmux_input`.

Pure: :func:`read_screen` takes the text of ``tmux capture-pane -p`` (no escape sequences)
and the agent's kind, and says what is on it. The rules are based on screens captured
from the real CLIs (Claude Code 2.1.197, Codex 0.171.0) in a 200x50 tmux pane; the
captures are the fixtures in ``tests/unit/screens/``. ``roles/tmux_input`` does the I/O.

What each state means:

``ready``
    Idle at its input prompt: a nudge typed now is submitted by Enter. ``input_text`` is
    what sits on the input line ("" when empty; Codex's dimmed placeholder counts as empty).
``busy``
    Working on a turn (``esc to interrupt`` in the status area). Text typed now would be
    queued or steer the turn, so nobody types.
``dialog``
    A first-run dialog we recognise, with the exact keys that *accept* it. Keys are tmux
    key names, each sent once. Digits select a numbered option directly (verified: ``1``
    at Claude's API-key dialog approves the key, ``2`` at the bypass warning accepts it),
    which is safer than moving a cursor: Claude's API-key dialog defaults to "No", so a
    blind Enter would reject the key.
``starting``
    Nothing recognisable yet: a blank pane, Codex's loading splash.
``unknown``
    Text on screen that none of the rules knows. ``problem`` is set when the screen is a
    failure we do recognise (Claude's first-run onboarding cannot reach Anthropic's servers
    offline; Claude is at its prompt but not logged in, so every request would fail).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

ScreenState = Literal["ready", "busy", "dialog", "starting", "unknown"]

#: Kinds with their own rules; every other kind gets only the generic ones.
KNOWN_KINDS: Final = ("claude", "codex")

#: How many of the bottom non-blank lines hold the status area (busy marker, prompt).
_BOTTOM_LINES: Final = 8

#: Both CLIs print this in their status area while a turn runs (Gemini: ``esc to cancel``).
_BUSY_MARKERS: Final = ("esc to interrupt",)
_GENERIC_BUSY_MARKERS: Final = ("esc to interrupt", "esc to cancel")

#: A Claude input box is drawn between two rules made of this character.
_RULE_CHAR: Final = "─"
_RULE_MIN: Final = 20

#: Claude's prompt character (U+276F, followed by an NBSP) and Codex's (U+203A).
_CLAUDE_PROMPT: Final = "\u276f"
_CODEX_PROMPT: Final = "\u203a"
_GENERIC_PROMPTS: Final = (_CLAUDE_PROMPT, _CODEX_PROMPT, ">")

#: Codex shows one of these, dimmed, on an empty input line.
_CODEX_PLACEHOLDERS: Final = ("Ask Codex to do anything", "Ask a follow-up question")

#: Codex's model status line under the input line: ``gpt-5-codex default · /path/to/wt``.
#: It appears only once the session is configured: the splash drawn before the trust
#: dialog has an input line but no such line, so it is not taken for ready.
_CODEX_STATUS: Final = re.compile(r"^\s+\S.* · ")

_NOT_LOGGED_IN: Final = "Not logged in"

#: Claude's status area under its input box: one line idle, two with "Not logged in";
#: room for a few notices more, but not for a screenful of text.
_CLAUDE_STATUS_MAX: Final = 6

#: Terminal escapes: a cursor move along the line, and every other sequence.
_CURSOR_ALONG: Final = re.compile(r"\x1b\[[0-9]*[CG]")
_ESCAPES: Final = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
                             r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC
                             r"|\x1b[P^_][^\x1b]*\x1b\\"  # DCS, PM, APC
                             r"|\x1b[()*+][0-9A-Za-z]"  # charset designation
                             r"|\x1b.")  # any other two-byte escape

#: ``1. Yes, I trust this folder``: an option of a menu, not text on an input line.
_MENU_ITEM: Final = re.compile(r"^\d+\.\s")


@dataclass(frozen=True)
class Dialog:
    """A recognised dialog: a stable ``name`` and the tmux keys that accept it."""

    name: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Screen:
    """What :func:`read_screen` saw."""

    state: ScreenState
    dialog: Dialog | None = None
    input_text: str | None = None
    problem: str | None = None


def normalize(text: str) -> str:
    """NBSP → space (Claude draws its prompt as U+276F + U+00A0), right-stripped lines."""
    return "\n".join(line.rstrip() for line in text.replace("\u00a0", " ").splitlines())


def terminal_text(raw: str) -> str:
    """The readable text of a raw terminal stream (a session log written by ``pipe-pane``).

    Escape sequences are dropped, except that a cursor move along the line (``CSI n G``,
    ``CSI n C``; TUIs draw spaces that way) becomes one space; carriage returns go. Only
    good for finding phrases in what an agent printed last, not for its layout.
    """
    text = _CURSOR_ALONG.sub(" ", raw)
    text = _ESCAPES.sub("", text)
    return text.replace("\r", "")


def tail(text: str, lines: int = 12) -> str:
    """The last ``lines`` non-blank lines of a screen, for reports and logs."""
    kept = [line for line in normalize(text).splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def read_screen(text: str, kind: str) -> Screen:
    """What the screen ``text`` (``capture-pane -p``) of an agent of ``kind`` shows."""
    lines = normalize(text).splitlines()
    if not any(line.strip() for line in lines):
        return Screen("starting")
    if kind == "claude":
        return _claude(lines)
    if kind == "codex":
        return _codex(lines)
    return _generic(lines)


# --- Claude Code ---------------------------------------------------------------------------


def _claude(lines: list[str]) -> Screen:
    box = _claude_input_box(lines)
    if box is not None:
        text, status = box
        state: ScreenState = "busy" if _has_any(status, _BUSY_MARKERS) else "ready"
        problem = None
        if state == "ready" and _has_any(status, (_NOT_LOGGED_IN,)):
            problem = "claude is not logged in: the API key was not approved (Run /login)"
        return Screen(state, input_text=text, problem=problem)
    dialog = _claude_dialog(lines)
    if dialog is not None:
        return Screen("dialog", dialog=dialog)
    screen = "\n".join(lines)
    if "Unable to connect to Anthropic services" in screen:
        return Screen("unknown", problem=(
            "claude's first-run onboarding could not reach Anthropic's servers "
            "(it exits; hasCompletedOnboarding was not set)"))
    return Screen("unknown")


def _claude_input_box(lines: list[str]) -> tuple[str, list[str]] | None:
    """Claude's input box at the bottom (rule, prompt + text, rule): its text and the status
    lines under it, or None.

    The box is the last pair of rules on the screen with a prompt line right under the
    first; below it there is only the status area (where ``esc to interrupt`` shows while
    busy). Prompts already submitted also start with the prompt higher up, but not between
    rules.
    """
    rules = [i for i, line in enumerate(lines) if _is_rule(line)]
    if len(rules) < 2:
        return None
    top, bottom = rules[-2], rules[-1]
    if bottom - top < 2 or not lines[top + 1].startswith(_CLAUDE_PROMPT):
        return None
    status = [line for line in lines[bottom + 1:] if line.strip()]
    if len(status) > _CLAUDE_STATUS_MAX:
        return None
    first = lines[top + 1][len(_CLAUDE_PROMPT):].strip()
    rest = [line.strip() for line in lines[top + 2:bottom]]
    return " ".join(part for part in [first, *rest] if part), status


def _is_rule(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= _RULE_MIN and set(stripped) == {_RULE_CHAR}


def _claude_dialog(lines: list[str]) -> Dialog | None:
    screen = "\n".join(lines)
    if "Quick safety check" in screen and "Yes, I trust this folder" in screen:
        # Default "1. Yes, I trust this folder": Enter accepts.
        return Dialog("claude-trust", ("Enter",))
    if "Detected a custom API key" in screen and "Do you want to use this API key?" in screen:
        # Default "2. No (recommended)": Enter would REJECT the key; its digit approves it.
        digit = _option_digit(lines, "Yes")
        return Dialog("claude-api-key", (digit,)) if digit else None
    if "Bypass Permissions mode" in screen and "Yes, I accept" in screen:
        # Default "1. No, exit": Enter would quit Claude; the digit of "Yes, I accept".
        digit = _option_digit(lines, "Yes, I accept")
        return Dialog("claude-bypass-permissions", (digit,)) if digit else None
    if "Choose the text style" in screen:
        # First-run onboarding (only when hasCompletedOnboarding is unset and the key is
        # approved, else the onboarding's connectivity check runs first): the default
        # theme is fine.
        return Dialog("claude-onboarding-theme", ("Enter",))
    if "Security notes:" in screen and "Press Enter to continue" in screen:
        return Dialog("claude-onboarding-security-notes", ("Enter",))
    return None


def _option_digit(lines: list[str], label: str) -> str | None:
    """The digit of the numbered option whose label is exactly ``label`` (``2. Yes…``)."""
    pattern = re.compile(r"^\s*(?:\u276f\s*)?(\d)\.\s+(.*?)\s*$")
    for line in lines:
        match = pattern.match(line)
        if match and match.group(2) == label:
            return match.group(1)
    return None


# --- Codex ---------------------------------------------------------------------------------


def _codex(lines: list[str]) -> Screen:
    screen = "\n".join(lines)
    if "Trust this folder?" in screen and _has_any(_bottom(lines), ("Trust and continue",)):
        # Default "1. Trust and continue": Enter accepts (Codex then records the trust
        # in config.toml, keyed by the main repository's root).
        return Screen("dialog", dialog=Dialog("codex-trust", ("Enter",)))
    found = _codex_input_line(lines)
    if found is not None:
        text, index = found
        # The "• Working (3s • esc to interrupt)" line sits just above the input line.
        status = [line for line in lines[:index] if line.strip()][-3:]
        status += lines[index + 1:]
        state: ScreenState = "busy" if _has_any(status, _BUSY_MARKERS) else "ready"
        return Screen(state, input_text=text)
    if _has_any(_bottom(lines), _BUSY_MARKERS):
        return Screen("busy")
    if ">_ OpenAI Codex" in screen or (
            len([line for line in lines if line.strip()]) == 1
            and screen.strip().startswith("WARNING: proceeding")):
        # The splash (``loading``, or drawn before the trust dialog) and the harmless
        # warning about PATH aliases under /tmp that precedes it.
        return Screen("starting")
    return Screen("unknown")


def _codex_input_line(lines: list[str]) -> tuple[str, int] | None:
    """Codex's input (prompt line, wrapped lines, a blank, the model status line): its
    text and the prompt line's index, or None."""
    for index in range(len(lines) - 1, -1, -1):
        if not lines[index].startswith(_CODEX_PROMPT):
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip():
            end += 1
        below = [text for text in lines[end:] if text.strip()]
        if not below or not _CODEX_STATUS.match(below[0]):
            return None
        parts = [lines[index][len(_CODEX_PROMPT):].strip()]
        parts += [text.strip() for text in lines[index + 1:end]]
        text = " ".join(part for part in parts if part)
        return ("" if text in _CODEX_PLACEHOLDERS else text), index
    return None


# --- any other agent -----------------------------------------------------------------------


def _generic(lines: list[str]) -> Screen:
    """Only what holds for most TUIs: a busy marker, or a prompt line near the bottom."""
    bottom = _bottom(lines)
    if _has_any(bottom, _GENERIC_BUSY_MARKERS):
        return Screen("busy")
    for line in reversed(bottom):
        stripped = line.strip()
        for prompt in _GENERIC_PROMPTS:
            if stripped == prompt or stripped.startswith(prompt + " "):
                text = stripped[len(prompt):].strip()
                if _MENU_ITEM.match(text):  # a cursor on a numbered choice: a dialog
                    return Screen("unknown")
                return Screen("ready", input_text=text)
    return Screen("unknown")


# --- helpers -------------------------------------------------------------------------------


def _bottom(lines: list[str]) -> list[str]:
    return [line for line in lines if line.strip()][-_BOTTOM_LINES:]


def _has_any(lines: list[str], markers: tuple[str, ...]) -> bool:
    return any(marker in line for line in lines for marker in markers)
