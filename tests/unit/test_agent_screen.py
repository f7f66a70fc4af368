"""Reading an agent's screen, on real captures of Claude Code 2.1.197 and Codex 0.171.0.

Every file in ``tests/unit/screens/`` is ``tmux capture-pane -p`` of the real CLI in a
200x50 pane (fresh HOME / CODEX_HOME under /tmp, the scripted model server on loopback);
the table below says what each one must read as. Claude draws its prompt as U+276F followed
by an NBSP, kept as captured.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gastown.roles.adapters.tmux_input import sanitize
from gastown.roles.core.agent_screen import (
    Dialog,
    Screen,
    normalize,
    read_screen,
    tail,
    terminal_text,
)
from tests.unit.test_layering import ALLOWED, ROOT, imports_of

SCREENS = Path(__file__).parent / "screens"

NOT_LOGGED_IN = "claude is not logged in: the API key was not approved (Run /login)"
OFFLINE = ("claude's first-run onboarding could not reach Anthropic's servers "
           "(it exits; hasCompletedOnboarding was not set)")
NUDGE_42 = "please finish now NUDGE-TOKEN-42"
LONG = " ".join(f"word{i:03d}" for i in range(60))

#: file -> what read_screen must say (kind = the file name's first word).
EXPECTED: dict[str, Screen] = {
    # Claude, first-run onboarding (fresh HOME): its connectivity check fails offline.
    "claude_onboarding_offline.txt": Screen("unknown", problem=OFFLINE),
    # Claude onboarding when the key is already approved: theme, security notes.
    "claude_onboarding_theme.txt": Screen(
        "dialog", Dialog("claude-onboarding-theme", ("Enter",))),
    "claude_onboarding_security.txt": Screen(
        "dialog", Dialog("claude-onboarding-security-notes", ("Enter",))),
    # Claude's three dialogs, in the order they come.
    "claude_trust.txt": Screen("dialog", Dialog("claude-trust", ("Enter",))),
    "claude_trust_after_onboarding.txt": Screen("dialog", Dialog("claude-trust", ("Enter",))),
    "claude_api_key.txt": Screen("dialog", Dialog("claude-api-key", ("1",))),
    "claude_bypass.txt": Screen("dialog", Dialog("claude-bypass-permissions", ("2",))),
    "claude_bypass_cursor_on_yes.txt": Screen(
        "dialog", Dialog("claude-bypass-permissions", ("2",))),
    # Claude idle, working, with text typed, and idle but useless.
    "claude_ready.txt": Screen("ready", input_text=""),
    "claude_ready_after_turn.txt": Screen("ready", input_text=""),
    "claude_ready_after_nudge.txt": Screen("ready", input_text=""),
    "claude_ready_focus_hint.txt": Screen("ready", input_text=""),
    "claude_busy_tool.txt": Screen("busy", input_text=""),
    "claude_typed.txt": Screen("ready", input_text=NUDGE_42),
    "claude_typed_long.txt": Screen("ready", input_text=LONG),
    "claude_ready_not_logged_in.txt": Screen("ready", input_text="", problem=NOT_LOGGED_IN),
    # Codex: start-up frames, its trust dialog, idle, working, with text typed.
    "codex_warning_only.txt": Screen("starting"),
    "codex_loading.txt": Screen("starting"),
    "codex_loading_2.txt": Screen("starting"),
    "codex_splash_before_trust.txt": Screen("starting"),
    "codex_trust.txt": Screen("dialog", Dialog("codex-trust", ("Enter",))),
    "codex_ready.txt": Screen("ready", input_text=""),
    "codex_ready_after_turn.txt": Screen("ready", input_text=""),
    "codex_busy_tool.txt": Screen("busy", input_text=""),
    "codex_busy_model.txt": Screen("busy", input_text=""),
    "codex_typed.txt": Screen("ready", input_text="please finish now NUDGE-TOKEN-43"),
    "codex_typed_wrapped.txt": Screen(
        "ready", input_text="MIDNUDGE " + " ".join(f"m{i:03d}" for i in range(80))),
    # 1,809 characters typed at once: Codex takes them as a paste, shown as a placeholder
    # (before all of it arrived), and took an Enter sent 0.3 s later into the paste.
    "codex_typed_long.txt": Screen("ready", input_text="[Pasted Content 1024 chars]"),
    "codex_typed_long_after_enter.txt": Screen(
        "ready", input_text="[Pasted Content 1810 chars]"),
    # The same typed in four 512-character pieces: shown in full, and the first Enter,
    # 2 s later, was ignored (the second submitted it).
    "codex_typed_long_enter_ignored.txt": Screen(
        "ready", input_text="CXLONG2 " + " ".join(f"w{i:04d}" for i in range(300))),
}


def screen(name: str) -> str:
    return (SCREENS / name).read_text(encoding="utf-8")


def test_every_capture_has_an_expectation() -> None:
    """No capture sits in the folder untested, and no expectation lacks its capture."""
    assert sorted(p.name for p in SCREENS.glob("*.txt")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_capture_reads_as_expected(name: str) -> None:
    kind = name.split("_")[0]
    assert read_screen(screen(name), kind) == EXPECTED[name]


def test_claude_prompt_is_followed_by_nbsp_and_read_either_way() -> None:
    """The captured idle prompt has U+00A0 after the prompt character; a space reads alike."""
    raw = screen("claude_ready.txt")
    assert "\u276f\u00a0" in raw
    assert "\u00a0" not in normalize(raw)
    assert read_screen(raw.replace("\u00a0", " "), "claude") == Screen("ready", input_text="")


def test_submitted_prompts_above_the_box_are_not_the_input_line() -> None:
    """After a nudge, the nudge stays on screen (prompt + text) above the empty input box."""
    raw = screen("claude_ready_after_nudge.txt")
    assert f"\u276f {NUDGE_42}" in normalize(raw)
    assert read_screen(raw, "claude").input_text == ""


def test_api_key_dialog_is_never_answered_by_enter() -> None:
    """Its default is "No": the accepting key is the digit of "Yes", read from the screen."""
    raw = screen("claude_api_key.txt")
    assert "\u276f 2. No (recommended)" in normalize(raw)
    dialog = read_screen(raw, "claude").dialog
    assert dialog is not None and "Enter" not in dialog.keys
    # Options renumbered: the digit follows the label, not a fixed position.
    swapped = raw.replace("1. Yes", "9. Yes")
    assert read_screen(swapped, "claude").dialog == Dialog("claude-api-key", ("9",))


def test_dialog_without_its_accepting_option_is_not_answered() -> None:
    """A key dialog whose "Yes" option we cannot find is unknown, not guessed at."""
    raw = screen("claude_api_key.txt").replace("1. Yes", "1. Use it")
    assert read_screen(raw, "claude") == Screen("unknown")


def test_codex_dialog_is_not_taken_for_its_input_line() -> None:
    """The trust menu's cursor line (prompt + "1. Trust and continue") is no input line."""
    assert read_screen(screen("codex_trust.txt"), "codex").state == "dialog"


def test_codex_splash_before_trust_is_not_ready() -> None:
    """Drawn ~0.2 s before the trust dialog, with an input line but no model status line."""
    raw = screen("codex_splash_before_trust.txt")
    assert "\u203a Ask Codex to do anything" in raw
    assert read_screen(raw, "codex").state == "starting"


def test_busy_marker_in_the_conversation_does_not_make_claude_busy() -> None:
    """Only the status area counts: an agent printing "esc to interrupt" is still idle."""
    raw = screen("claude_ready_after_turn.txt").replace("● Done.", "● esc to interrupt")
    assert "esc to interrupt" in raw
    assert read_screen(raw, "claude").state == "ready"


@pytest.mark.parametrize("text", ["", "\n\n   \n", "\u00a0\n"])
def test_blank_screen_is_starting(text: str) -> None:
    for kind in ("claude", "codex", "gemini"):
        assert read_screen(text, kind) == Screen("starting")


def test_unrecognised_text_is_unknown() -> None:
    text = "Some new dialog\n\nProceed? [y/N]\n"
    assert read_screen(text, "claude") == Screen("unknown")
    assert read_screen(text, "codex") == Screen("unknown")


def test_generic_rules_for_other_agents() -> None:
    """Other kinds: a busy marker, or a prompt line near the bottom; never a dialog."""
    assert read_screen("* Thinking... (esc to cancel, 6s)\n> \n", "gemini").state == "busy"
    assert read_screen(screen("claude_busy_tool.txt"), "gemini").state == "busy"
    assert read_screen(screen("codex_typed.txt"), "aider") == Screen(
        "ready", input_text="please finish now NUDGE-TOKEN-43")
    # A menu's cursor line is not an input line, and no keys are ever offered.
    for name in ("claude_trust.txt", "claude_api_key.txt", "codex_trust.txt"):
        assert read_screen(screen(name), "gemini") == Screen("unknown")


def test_tail_keeps_the_last_non_blank_lines() -> None:
    lines = tail(screen("claude_api_key.txt"), 3).splitlines()
    assert lines == ["    1. Yes", "  \u276f 2. No (recommended)",
                     "  Enter to confirm · Esc to cancel"]


@pytest.mark.parametrize(("raw", "clean"), [
    ("run `gastown done`", "run `gastown done`"),
    ("line one\nline two\r\nthree\rfour", "line one line two three four"),
    ("tab\there", "tab here"),
    ("bell\a esc\x1b[31m del\x7f c1\x9b", "bell esc[31m del c1"),
    ("  \n padded \t ", "padded"),
    ("\x03\x04", ""),
])
def test_sanitize_drops_control_characters_and_flattens_lines(raw: str, clean: str) -> None:
    """Only an Enter key submits (an LF adds a line in Claude's input): one line goes in."""
    assert sanitize(raw) == clean


def test_agent_screen_is_pure() -> None:
    """The screen reader imports only data modules: its rules are testable on text alone."""
    assert imports_of(ROOT / "roles/core/agent_screen.py") <= ALLOWED


def test_terminal_text_of_a_real_session_log() -> None:
    """Claude's raw output before it exited offline (pipe-pane's log): the words survive
    (it draws spaces as cursor moves), the escapes go, and the failure is recognised."""
    raw = (SCREENS / "claude_onboarding_offline.log").read_text(encoding="utf-8")
    assert "\x1b[" in raw and "Unable to connect" not in raw
    text = terminal_text(raw)
    assert "\x1b" not in text and "\r" not in text
    assert "Welcome to Claude Code v2.1.197" in text
    assert read_screen(text, "claude") == Screen("unknown", problem=OFFLINE)


def test_terminal_text_drops_every_kind_of_escape() -> None:
    raw = "\x1b]0;title\x07a\x1b[1;31mb\x1b[3Gc\x1b[2Cd\x1b(Be\x1b7f\x1bP1$r\x1b\\g\r\n"
    assert terminal_text(raw) == "ab c defg\n"
