"""A polecat's agent home: the first-run answers, hooks and trust, and the user's own files
left alone (roles/adapters/agent_homes.py). Real files in a temporary folder."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from gastown.roles.adapters.agent_homes import (
    claude_settings,
    claude_state,
    codex_config,
    last_conversation,
    prepare,
)

FIRST = "0b7c4f0e-3c1a-4d7e-9a8f-1e2d3c4b5a69"
SECOND = "5f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
#: A transcript line that holds a prompt (what a resumed conversation continues from).
PROMPT_LINE = json.dumps({"type": "user", "uuid": "a", "parentUuid": None}) + "\n"
KEY = "sk-ant-api03-" + "x" * 30 + "LAST20CHARSOFTHEKEY1"


def test_claude_state_answers_every_first_run_question_and_keeps_the_rest() -> None:
    mine = {"theme": "dark", "customApiKeyResponses": {"approved": ["other"],
                                                       "rejected": [KEY[-20:]]},
            "projects": {"/elsewhere": {"allowedTools": ["Bash"]}}}
    state = claude_state(mine, worktree=Path("/t/web/polecats/toast"), api_key=KEY)
    assert state["hasCompletedOnboarding"] is True
    assert state["theme"] == "dark"
    assert state["customApiKeyResponses"]["approved"] == ["other", KEY[-20:]]
    assert state["customApiKeyResponses"]["rejected"] == []  # Enter once rejected it
    assert state["projects"]["/t/web/polecats/toast"]["hasTrustDialogAccepted"] is True
    assert state["projects"]["/elsewhere"] == {"allowedTools": ["Bash"]}
    assert claude_state(state, worktree=Path("/t/web/polecats/toast"), api_key=KEY) == state
    assert "customApiKeyResponses" not in claude_state({}, worktree=Path("/w"), api_key=None)


def test_claude_settings_add_our_hooks_once_and_keep_the_users() -> None:
    theirs = {"model": "opus", "hooks": {"Stop": [{"hooks": [{"type": "command",
                                                              "command": "say done"}]}]}}
    settings = claude_settings(theirs, ["/v/bin/gastown"])
    assert settings["model"] == "opus" and settings["skipDangerousModePermissionPrompt"]
    stops = [h["command"] for g in settings["hooks"]["Stop"] for h in g["hooks"]]
    assert stops == ["say done", "/v/bin/gastown agent-hook claude-stop"]
    starts = [h["command"] for g in settings["hooks"]["SessionStart"] for h in g["hooks"]]
    assert starts == ["/v/bin/gastown prime"]
    assert claude_settings(settings, ["/v/bin/gastown"]) == settings  # idempotent
    printing = claude_settings(theirs, ["/v/bin/gastown"], turn_hooks=False)
    assert [h["command"] for g in printing["hooks"]["Stop"] for h in g["hooks"]] == \
        ["say done"]


def test_codex_config_trusts_the_worktree_and_keeps_the_users_settings() -> None:
    user = 'model = "o9"\n[model_providers.x]\nbase_url = "http://h/v1"\n'
    text = codex_config(user, worktree=Path("/t/web/polecats/toast"))
    data = tomllib.loads(text)
    assert data["model"] == "o9" and data["model_providers"]["x"]["base_url"] == "http://h/v1"
    assert data["projects"]["/t/web/polecats/toast"]["trust_level"] == "trusted"
    assert codex_config(text, worktree=Path("/t/web/polecats/toast")) == text
    assert tomllib.loads(codex_config("not = [toml", worktree=Path("/w")))["projects"]


def test_prepare_claude_leaves_the_users_files_alone(tmp_path: Path) -> None:
    user_home = tmp_path / "me"
    (user_home / ".claude").mkdir(parents=True)
    (user_home / ".claude.json").write_text('{"theme": "light"}')
    (user_home / ".claude" / "settings.json").write_text('{"model": "mine"}')
    (user_home / ".claude" / ".credentials.json").write_text('{"token": "t"}')
    before = {p: p.read_bytes() for p in user_home.rglob("*") if p.is_file()}
    home = tmp_path / "agent-home"
    env = {"HOME": str(user_home), "ANTHROPIC_API_KEY": KEY}
    as_root = prepare("claude", home=home, worktree=tmp_path / "wt", env=env,
                      running_as_root=True)
    assert as_root.env == {"CLAUDE_CONFIG_DIR": str(home / "claude"), "IS_SANDBOX": "1"}
    assert "IS_SANDBOX" not in prepare("claude", home=home, worktree=tmp_path / "wt",
                                       env=env, running_as_root=False).env
    config = home / "claude"
    assert json.loads((config / ".claude.json").read_text())["hasCompletedOnboarding"]
    assert json.loads((config / "settings.json").read_text())["model"] == "mine"
    assert (config / ".credentials.json").resolve() == \
        (user_home / ".claude" / ".credentials.json").resolve()
    assert {p: p.read_bytes() for p in user_home.rglob("*") if p.is_file()} == before
    assert last_conversation("claude", home) is None
    (config / "projects" / "-wt").mkdir(parents=True)
    (config / "projects" / "-wt" / f"{FIRST}.jsonl").write_text(PROMPT_LINE)
    (config / "projects" / "-wt" / "agent-1a2b.jsonl").write_text("{}\n")  # no session's
    assert last_conversation("claude", home) == FIRST
    # The latest written is the one a respawn resumes (by id: `--resume {conversation}`).
    (config / "projects" / "-wt" / f"{SECOND}.jsonl").write_text(PROMPT_LINE)
    assert last_conversation("claude", home) == SECOND
    os.utime(config / "projects" / "-wt" / f"{FIRST}.jsonl", (2e9, 2e9))
    assert last_conversation("claude", home) == FIRST


def test_a_claude_transcript_without_its_prompt_is_not_resumed(tmp_path: Path) -> None:
    """Claude had written the first call but not the prompt (its parent) when it was
    killed: resumed, that conversation would have no task; it is started afresh."""
    home = tmp_path / "agent-home"
    folder = home / "claude" / "projects" / "-wt"
    folder.mkdir(parents=True)
    call = json.dumps({"type": "assistant", "uuid": "b", "parentUuid": "a"}) + "\n"
    (folder / f"{FIRST}.jsonl").write_text('{"type": "mode"}\n' + call + '{"type": "us')
    assert last_conversation("claude", home) is None
    (folder / f"{FIRST}.jsonl").write_text(PROMPT_LINE + call)
    assert last_conversation("claude", home) == FIRST


def test_codex_conversation_is_named_by_its_rollout(tmp_path: Path) -> None:
    home = tmp_path / "agent-home"
    assert last_conversation("codex", home) is None
    day = home / "codex" / "sessions" / "2026" / "12" / "06"
    day.mkdir(parents=True)
    (day / f"rollout-2026-12-06T18-00-00-{FIRST}.jsonl").write_text("{}\n")
    assert last_conversation("codex", home) == FIRST
    assert last_conversation("generic", home) is None


def test_prepare_codex_wires_notify_only_for_interactive_runs(tmp_path: Path) -> None:
    codex_home = tmp_path / "me" / ".codex"
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text('model = "o9"\n')
    (codex_home / "auth.json").write_text("{}")
    env = {"CODEX_HOME": str(codex_home)}
    home = tmp_path / "agent-home"
    tui = prepare("codex", home=home, worktree=tmp_path / "wt", env=env)
    assert tui.env == {"CODEX_HOME": str(home / "codex")}
    assert "allow_login_shell=false" in tui.args
    notify = [a for a in tui.args if a.startswith("notify=")]
    assert len(notify) == 1 and json.loads(notify[0][len("notify="):])[-2:] == \
        ["agent-hook", "codex-notify"]
    printing = prepare("codex", home=home, worktree=tmp_path / "wt", env=env,
                       turn_hooks=False)
    assert not any(a.startswith("notify=") for a in printing.args)
    assert (home / "codex" / "auth.json").is_symlink()
    assert (codex_home / "config.toml").read_text() == 'model = "o9"\n'
    assert prepare("generic", home=home, worktree=tmp_path / "wt", env=env).env == {}
