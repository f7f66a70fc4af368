"""tmux_input on live tmux sessions: start-up dialogs answered, nudges typed and submitted.

Two tiers. The first replays real captured screens (``tests/unit/screens``) from a tiny
terminal program that logs every key it receives: it pins the protocol exactly (which key
at which dialog, none at a screen we do not know) in a second or two. The second runs the
REAL ``claude`` and ``codex`` (pinned versions, ``agent_clis``) in tmux against the
scripted model server, with fresh homes, as the sessions backend starts agents.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gastown.roles.adapters import tmux_input
from gastown.roles.adapters.sessions import (
    SessionInfo,
    SessionSpec,
    start_session,
    stop_session,
    tmux_socket_name,
)
from gastown.roles.adapters.tmux_input import answer_dialogs, capture, type_text
from tests.conftest import make_repo
from tests.integration.test_sessions import kill_tmux_server
from tests.scripted_model.clis import AgentClis
from tests.scripted_model.server import ModelServer

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

SCREENS = Path(__file__).resolve().parents[1] / "unit" / "screens"
PYTHON = sys.executable

#: Shows each screen file in turn, logging the key that moves it on; holds the last one.
#: An argument "exit:N" after a screen makes it exit with N shortly after showing it.
REPLAY = r"""
import os, sys, time, tty
log, screens = sys.argv[1], sys.argv[2:]
tty.setraw(0)
for index, path in enumerate(screens):
    text = open(path, encoding="utf-8").read().rstrip("\n").replace("\n", "\r\n")
    os.write(1, ("\x1b[2J\x1b[H" + text).encode())
    following = screens[index + 1] if index + 1 < len(screens) else None
    if following is None:
        time.sleep(3600)
    if following.startswith("exit:"):
        time.sleep(0.3)
        sys.exit(int(following[5:]))
    key = os.read(0, 64)
    with open(log, "a") as f:
        f.write(repr(key) + "\n")
"""

API_KEY = "sk-ant-test-0123456789abcdefghijKLMNOP"
NUDGE = "gastown nudge: please run gastown done now (token N-7731)"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true (another process changes state); fail after timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def town_root(tmp_path: Path) -> Iterator[Path]:
    """A town directory with its own tmux server, killed at teardown."""
    root = tmp_path / "town"
    root.mkdir()
    yield root
    kill_tmux_server(root)


class Starter:
    def __init__(self, town_root: Path) -> None:
        self.town_root = town_root
        self.started: list[SessionInfo] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> SessionInfo:
        full_env = {"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8",
                    "TERM": "tmux-256color", **env}
        info = start_session(SessionSpec(
            backend="tmux", name=name, argv=argv, cwd=cwd, env=full_env,
            log_path=self.town_root / "logs" / f"{name}.log", town_root=self.town_root))
        self.started.append(info)
        return info


@pytest.fixture
def starter(town_root: Path) -> Iterator[Starter]:
    helper = Starter(town_root)
    yield helper
    for info in helper.started:
        stop_session(info, grace=2.0)


def replay(starter: Starter, tmp_path: Path, *screens: str) -> tuple[SessionInfo, Path]:
    keys = tmp_path / "keys.log"
    keys.touch()
    args = [s if s.startswith("exit:") else str(SCREENS / s) for s in screens]
    info = starter.start("replay", [PYTHON, "-c", REPLAY, str(keys), *args], {}, tmp_path)
    return info, keys


def keys_received(path: Path) -> list[str]:
    return path.read_text().splitlines()


# --- the protocol, on replayed real screens ---------------------------------------------------


def test_claude_dialogs_get_exactly_their_keys(starter: Starter, tmp_path: Path) -> None:
    """Trust → Enter, API key → "1" (its default is No), bypass → "2", then ready."""
    info, keys = replay(starter, tmp_path, "claude_trust.txt", "claude_api_key.txt",
                        "claude_bypass.txt", "claude_ready.txt")
    outcome = answer_dialogs(info, "claude", timeout=30)
    assert outcome.kind == "ready", outcome
    assert outcome.dialogs == ("claude-trust", "claude-api-key", "claude-bypass-permissions")
    assert keys_received(keys) == [r"b'\r'", "b'1'", "b'2'"]
    assert outcome.problem is None


def test_onboarding_screens_are_answered(starter: Starter, tmp_path: Path) -> None:
    info, keys = replay(starter, tmp_path, "claude_onboarding_theme.txt",
                        "claude_onboarding_security.txt", "claude_trust_after_onboarding.txt",
                        "claude_bypass.txt", "claude_busy_tool.txt")
    outcome = answer_dialogs(info, "claude", timeout=30)
    assert outcome.kind == "busy", outcome
    assert outcome.dialogs == ("claude-onboarding-theme", "claude-onboarding-security-notes",
                               "claude-trust", "claude-bypass-permissions")
    assert keys_received(keys) == [r"b'\r'", r"b'\r'", r"b'\r'", "b'2'"]


def test_unknown_screen_gets_no_key(starter: Starter, tmp_path: Path) -> None:
    """Never a blind Enter: a screen no rule knows is reported with its last lines."""
    odd = tmp_path / "odd.txt"
    odd.write_text("A dialog from a newer version\n\n  1. Do something\n  2. Do the other\n")
    info, keys = replay(starter, tmp_path, str(odd))
    outcome = answer_dialogs(info, "claude", timeout=2)
    assert outcome.kind == "unknown"
    assert "A dialog from a newer version" in outcome.tail
    assert outcome.problem is not None and "not ready after 2s" in outcome.problem
    assert keys_received(keys) == []


def test_a_dialog_is_answered_once_per_appearance(starter: Starter, tmp_path: Path) -> None:
    """A dialog that stays after its keys is left alone: a late key would hit the next one."""
    # The replay shows the trust dialog again after the first Enter (a "new" screen
    # identical to the first): no second Enter, since no other screen came in between.
    info, keys = replay(starter, tmp_path, "claude_trust.txt", "claude_trust.txt")
    outcome = answer_dialogs(info, "claude", timeout=3)
    assert outcome.kind == "unknown"
    assert outcome.dialogs == ("claude-trust",)
    assert outcome.problem is not None and "still at dialog claude-trust" in outcome.problem
    assert keys_received(keys) == [r"b'\r'"]


def test_a_dialog_that_did_not_get_its_key_gets_it_again(starter: Starter,
                                                         tmp_path: Path) -> None:
    """The same dialog, unchanged on screen for ``resend`` seconds after its key (by
    default ``DIALOG_RESEND``; 2 s here): the key was lost (Codex's trust dialog under
    load, drawn before its input was read), so it is sent again, and the start goes on."""
    # The replay takes the first Enter and draws the very same screen again: to the
    # watcher, a dialog that ignored its key.
    info, keys = replay(starter, tmp_path, "codex_trust.txt", "codex_trust.txt",
                        "codex_ready.txt")
    outcome = answer_dialogs(info, "codex", timeout=30, resend=2.0)
    assert outcome.kind == "ready", outcome
    assert outcome.dialogs == ("codex-trust",)
    assert keys_received(keys) == [r"b'\r'", r"b'\r'"]


def test_exit_is_reported_with_the_failure_seen(starter: Starter, tmp_path: Path) -> None:
    """Claude's offline onboarding screen, then the process exits: exited, with the why."""
    info, _keys = replay(starter, tmp_path, "claude_onboarding_offline.txt", "exit:1")
    outcome = answer_dialogs(info, "claude", timeout=30)
    assert outcome.kind in ("exited", "unknown"), outcome
    assert outcome.problem is not None and "onboarding" in outcome.problem
    assert "Unable to connect to Anthropic services" in outcome.tail


def test_codex_splash_does_not_end_the_wait(starter: Starter, tmp_path: Path) -> None:
    info, keys = replay(starter, tmp_path, "codex_splash_before_trust.txt")
    outcome = answer_dialogs(info, "codex", timeout=1.5)
    assert outcome.kind == "unknown" and "screen starting" in (outcome.problem or "")
    assert keys_received(keys) == []


def test_nothing_is_typed_into_a_busy_agent(starter: Starter, tmp_path: Path) -> None:
    info, keys = replay(starter, tmp_path, "claude_busy_tool.txt")
    assert type_text(info, "claude", "hello", timeout=1.5) is False
    assert keys_received(keys) == []


def test_capture_of_a_gone_session_raises(starter: Starter, tmp_path: Path) -> None:
    info, _ = replay(starter, tmp_path, "claude_ready.txt")
    wait_for(lambda: "bypass permissions on" in capture(info), 20, "the replayed screen")
    stop_session(info, grace=1.0)
    with pytest.raises(tmux_input.PaneGoneError):
        capture(info)
    assert answer_dialogs(info, "claude", timeout=5).kind == "exited"
    assert type_text(info, "claude", "hello", timeout=5) is False


# --- the real CLIs ----------------------------------------------------------------------------


def requests_where(server: ModelServer, test: Callable[[dict[str, Any]], bool]
                   ) -> list[dict[str, Any]]:
    return [entry for entry in server.requests() if test(entry)]


def worktree(tmp_path: Path) -> Path:
    """A linked worktree of a fresh repository, as polecats get."""
    repo = make_repo(tmp_path / "repo")
    wt = tmp_path / "wt"
    subprocess.run(["git", "worktree", "add", "-q", "-b", "feat", str(wt)], cwd=repo,
                   check=True, capture_output=True)
    return wt


SCRIPT_PROMPT = ("Scripted task.\nSCRIPT-BEGIN\necho started > started.txt\nSCRIPT-END\n"
                 "NUDGE-BEGIN\necho nudged > nudged.txt\nNUDGE-END\n")


def claude_env(home: Path, server: ModelServer) -> dict[str, str]:
    return {"HOME": str(home), "IS_SANDBOX": "1", "DISABLE_AUTOUPDATER": "1",
            "ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": API_KEY}


@pytest.mark.agent_cli
@pytest.mark.slow
def test_claude_with_no_config_at_all_fails_loudly_offline(
        agent_clis: AgentClis, model_server: ModelServer, starter: Starter,
        tmp_path: Path) -> None:
    """A truly fresh HOME: the onboarding's connectivity check (api.anthropic.com, not the
    base URL) fails and claude exits; nothing can answer that, so it is reported."""
    home = tmp_path / "home-claude"
    home.mkdir()
    info = starter.start("claude-fresh", [str(agent_clis.claude),
                                          "--dangerously-skip-permissions"],
                         claude_env(home, model_server), worktree(tmp_path))
    outcome = answer_dialogs(info, "claude", timeout=60)
    assert outcome.kind in ("exited", "unknown"), outcome
    assert outcome.problem is not None and "onboarding" in outcome.problem, outcome
    assert outcome.dialogs == ()


@pytest.mark.agent_cli
@pytest.mark.slow
def test_claude_dialogs_answered_key_approved_and_nudge_submitted(
        agent_clis: AgentClis, model_server: ModelServer, starter: Starter,
        tmp_path: Path) -> None:
    """Fresh HOME holding only ``hasCompletedOnboarding`` (the one step that needs the
    internet): trust, API-key and bypass dialogs are answered, the key is approved (the
    prompt reaches the model server), and a nudge typed later is submitted."""
    home = tmp_path / "home-claude"
    home.mkdir()
    (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True}))
    wt = worktree(tmp_path)
    info = starter.start("claude-dialogs", [str(agent_clis.claude),
                                            "--dangerously-skip-permissions", SCRIPT_PROMPT],
                         claude_env(home, model_server), wt)
    outcome = answer_dialogs(info, "claude", timeout=120)
    assert outcome.kind in ("ready", "busy"), outcome
    assert outcome.dialogs == ("claude-trust", "claude-api-key", "claude-bypass-permissions")
    config = json.loads((home / ".claude.json").read_text())
    assert config["customApiKeyResponses"]["approved"] == [API_KEY[-20:]]
    # The first prompt runs its script against the model server: the key works.
    wait_for(lambda: (wt / "started.txt").exists(), 120, "the scripted first turn")
    assert requests_where(model_server, lambda e: e.get("kind") == "script")
    # A human left the pane in copy mode; the nudge still goes in once the turn is over.
    subprocess.run(["tmux", "-L", tmux_socket_name(starter.town_root), "-f", "/dev/null",
                    "copy-mode", "-t", f"={info.name}:"], check=True)
    assert type_text(info, "claude", NUDGE + "\nsecond line", timeout=120) is True
    wait_for(lambda: (wt / "nudged.txt").exists(), 120, "the nudge's turn")
    nudges = requests_where(model_server, lambda e: e.get("kind") == "nudge")
    assert nudges and nudges[0]["prompt"].startswith(NUDGE + " second line"), nudges[:1]


@pytest.mark.agent_cli
@pytest.mark.slow
def test_claude_onboarding_screens_answered(
        agent_clis: AgentClis, model_server: ModelServer, starter: Starter,
        tmp_path: Path) -> None:
    """HOME holding only the approved key: onboarding runs without its connectivity check
    (theme, security notes), then trust and bypass; all answered, claude gets to work."""
    home = tmp_path / "home-claude"
    home.mkdir()
    (home / ".claude.json").write_text(json.dumps(
        {"customApiKeyResponses": {"approved": [API_KEY[-20:]], "rejected": []}}))
    wt = worktree(tmp_path)
    info = starter.start("claude-onboarding", [str(agent_clis.claude),
                                               "--dangerously-skip-permissions",
                                               SCRIPT_PROMPT],
                         claude_env(home, model_server), wt)
    outcome = answer_dialogs(info, "claude", timeout=120)
    assert outcome.kind in ("ready", "busy"), outcome
    assert outcome.dialogs == ("claude-onboarding-theme", "claude-onboarding-security-notes",
                               "claude-trust", "claude-bypass-permissions")
    wait_for(lambda: (wt / "started.txt").exists(), 120, "the scripted first turn")


def codex_processes(codex_home: Path) -> list[int]:
    """Pids of live processes whose environment carries this CODEX_HOME."""
    marker = f"CODEX_HOME={codex_home}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry))
    return found


@pytest.mark.agent_cli
@pytest.mark.slow
def test_codex_trust_answered_and_typed_prompt_submitted(
        agent_clis: AgentClis, model_server: ModelServer, starter: Starter,
        town_root: Path, tmp_path: Path) -> None:
    """Fresh CODEX_HOME: the trust dialog is answered, Codex gets ready, typed prompts
    (short, and long) reach the model server; no ``codex`` process outlives the tmux
    server (``--no-daemon``: no app-server daemon)."""
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    wt = worktree(tmp_path)
    base = f"{model_server.url}/v1"
    argv = [str(agent_clis.codex), "--no-daemon", "--dangerously-bypass-approvals-and-sandbox",
            "-c", "model=gpt-5-codex", "-c", "model_provider=fake",
            "-c", "model_providers.fake.name=fake",
            "-c", f'model_providers.fake.base_url="{base}"',
            "-c", "model_providers.fake.wire_api=responses",
            "-c", "model_providers.fake.env_key=FAKE_KEY", SCRIPT_PROMPT]
    info = starter.start("codex", argv, {"HOME": str(tmp_path / "home-codex"),
                                         "CODEX_HOME": str(codex_home),
                                         "FAKE_KEY": "sk-test"}, wt)
    outcome = answer_dialogs(info, "codex", timeout=120)
    assert outcome.kind in ("ready", "busy"), outcome
    assert outcome.dialogs == ("codex-trust",)
    assert 'trust_level = "trusted"' in (codex_home / "config.toml").read_text()
    wait_for(lambda: (wt / "started.txt").exists(), 120, "the scripted first turn")
    assert type_text(info, "codex", NUDGE, timeout=120) is True
    wait_for(lambda: (wt / "nudged.txt").exists(), 120, "the nudge's turn")
    nudges = requests_where(model_server, lambda e: e.get("kind") == "nudge")
    assert nudges and nudges[0]["prompt"].startswith(NUDGE), nudges[:1]
    # 1,800 characters typed at once: Codex ignores the first Enter after such a burst.
    long = "LONG " + " ".join(f"w{i:04d}" for i in range(300))
    assert type_text(info, "codex", long, timeout=120) is True
    wait_for(lambda: bool(requests_where(
        model_server, lambda e: str(e.get("prompt")).startswith(long[:150]))), 60,
        "the long nudge's request")
    assert codex_processes(codex_home), "codex should be running before the kill"
    kill_tmux_server(town_root)
    wait_for(lambda: not codex_processes(codex_home), 30, "codex processes to go")
    assert not (codex_home / "packages" / "app-server-daemon").exists()
