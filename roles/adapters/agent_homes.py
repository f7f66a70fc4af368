"""What a real agent CLI needs before it can start unattended, prepared in the polecat's
own agent home (``<town>/.runtime/agent-homes/<rig>/<name>/``).

Layer: adapters (the file system), used by the operations that start, watch and nuke a
polecat's session (``polecat_sessions``, ``agent_turns``, ``nuking``,
``reconcile_worktrees``).

An interactive Claude Code stops at first-run dialogs that nobody answers in a detached
session (onboarding, "use this API key?", "do you trust this folder?" for every new
worktree, the bypass-permissions warning); Codex asks to trust the folder. Each CLI keeps
the answers in its config directory, so gastown gives every polecat a config directory of
its own with the answers already there (``CLAUDE_CONFIG_DIR``, ``CODEX_HOME``):

- the user's own files (``~/.claude.json``, ``~/.claude/settings.json``,
  ``~/.codex/config.toml``) are read, never written: nothing of theirs is clobbered, and
  there is no race with the user's or other polecats' CLIs rewriting one shared JSON file;
- the user's login is linked, not copied (``.credentials.json``, ``auth.json``), so a
  token the CLI refreshes stays the user's; their settings and Codex config are copied in,
  with gastown's keys laid over them;
- the CLI's transcripts and sessions land in that home, one conversation per polecat: a
  respawn resumes it by id (``--resume ID``, ``resume ID``) and its token counts are read
  from it without guessing which session was whose;
- the home is removed with the polecat (nuke), kept while it lives (respawns, nudges).

The turn-end signals are wired here too: Claude's ``Stop`` hook and Codex's ``notify``
program run ``gastown agent-hook``, and Claude's ``SessionStart`` hook runs
``gastown prime``, so a compacted or resumed conversation gets its instructions back.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import AgentKind
from .town import Town

#: Claude stores the approval of a custom API key by its last 20 characters.
_KEY_SUFFIX = 20


@dataclass(frozen=True)
class Preparation:
    """What the agent's command needs on top of its preset: environment and arguments
    (inserted right after the program name)."""

    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


def gastown_argv() -> list[str]:
    """How an agent's hook runs this very gastown, whatever PATH the agent ends up with."""
    script = Path(sys.executable).parent / "gastown"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "gastown.supervisor"]


def prepare(kind: AgentKind, *, home: Path, worktree: Path, env: Mapping[str, str],
            turn_hooks: bool = True, running_as_root: bool | None = None) -> Preparation:
    """Prepare ``home`` for an agent of ``kind`` that works in ``worktree``.

    ``env`` is the agent's environment (where the user's config dirs and API keys come
    from). ``turn_hooks``: wire the CLI's end-of-turn signal to ``gastown agent-hook``;
    off for print mode, where the process's exit is that signal (two signals for one turn
    would count it twice). Idempotent: a respawn prepares the same home again and keeps
    its sessions.
    """
    root = os.geteuid() == 0 if running_as_root is None else running_as_root
    if kind == "claude":
        return _prepare_claude(home / "claude", worktree, env, root, turn_hooks)
    if kind == "codex":
        return _prepare_codex(home / "codex", worktree, env, turn_hooks)
    return Preparation()


def agent_home(town: Town, rig: str, name: str) -> Path:
    """The polecat's own config home for its agent CLI."""
    return town.runtime_dir / "agent-homes" / rig / name


def remove_home(home: Path) -> None:
    """Drop a polecat's agent home (at nuke); a missing one is fine."""
    shutil.rmtree(home, ignore_errors=True)


# -- Claude Code ---------------------------------------------------------------------------


def claude_state(existing: Mapping[str, Any], *, worktree: Path,
                 api_key: str | None) -> dict[str, Any]:
    """``.claude.json`` with the first-run answers for ``worktree`` laid over ``existing``."""
    state = dict(existing)
    state["hasCompletedOnboarding"] = True
    state["bypassPermissionsModeAccepted"] = True  # the legacy key; settings has the new one
    if api_key:
        responses = dict(state.get("customApiKeyResponses") or {})
        approved = [k for k in responses.get("approved") or [] if isinstance(k, str)]
        suffix = api_key[-_KEY_SUFFIX:]
        if suffix not in approved:
            approved.append(suffix)
        responses["approved"] = approved
        responses["rejected"] = [k for k in responses.get("rejected") or []
                                 if k != suffix]
        state["customApiKeyResponses"] = responses
    projects = dict(state.get("projects") or {})
    entry = dict(projects.get(str(worktree)) or {})
    entry["hasTrustDialogAccepted"] = True
    entry.setdefault("hasCompletedProjectOnboarding", True)
    projects[str(worktree)] = entry
    state["projects"] = projects
    return state


def claude_settings(user: Mapping[str, Any], hook: list[str], *,
                    turn_hooks: bool = True) -> dict[str, Any]:
    """The user's ``settings.json`` with the bypass warning answered and gastown's hooks
    added (theirs are kept: Claude runs every matching hook)."""
    settings = dict(user)
    settings["skipDangerousModePermissionPrompt"] = True
    hooks = {k: list(v) for k, v in dict(settings.get("hooks") or {}).items()
             if isinstance(v, list)}
    command = shlex.join(hook)
    ours = {
        "Stop": {"hooks": [{"type": "command", "command": f"{command} agent-hook claude-stop",
                            "timeout": 30}]},
        "SessionStart": {"matcher": "", "hooks": [
            {"type": "command", "command": f"{command} prime", "timeout": 30}]},
    }
    if not turn_hooks:
        del ours["Stop"]
    for event, group in ours.items():
        groups = [g for g in hooks.get(event, []) if g != group]
        hooks[event] = [*groups, group]
    settings["hooks"] = hooks
    return settings


def _prepare_claude(config_dir: Path, worktree: Path, env: Mapping[str, str],
                    root: bool, turn_hooks: bool) -> Preparation:
    user_dir = Path(env["CLAUDE_CONFIG_DIR"]) if env.get("CLAUDE_CONFIG_DIR") else \
        Path(env.get("HOME") or Path.home()) / ".claude"
    config_dir.mkdir(parents=True, exist_ok=True)
    state_path = config_dir / ".claude.json"
    existing = _read_json(state_path)
    _write_json(state_path, claude_state(existing, worktree=worktree,
                                         api_key=env.get("ANTHROPIC_API_KEY")))
    # Laid over the user's settings afresh at every start, so a hook of ours never lingers
    # from a start in the other mode.
    settings = _read_json(user_dir / "settings.json")
    _write_json(config_dir / "settings.json",
                claude_settings(settings, gastown_argv(), turn_hooks=turn_hooks))
    for name in (".credentials.json", "CLAUDE.md"):
        _link(user_dir / name, config_dir / name)
    out = {"CLAUDE_CONFIG_DIR": str(config_dir)}
    if root:
        # Claude refuses --dangerously-skip-permissions as root unless told it runs in a
        # sandbox; a polecat's worktree is the sandbox it means.
        out["IS_SANDBOX"] = "1"
    return Preparation(env=out)


# -- Codex ---------------------------------------------------------------------------------


def codex_config(user_text: str, *, worktree: Path) -> str:
    """The user's ``config.toml`` with ``worktree`` trusted (a table appended when absent)."""
    try:
        data = tomllib.loads(user_text)
    except tomllib.TOMLDecodeError:
        data, user_text = {}, ""  # Codex would refuse it as well; start clean
    projects = data.get("projects")
    if isinstance(projects, dict) and str(worktree) in projects:
        return user_text
    text = user_text if not user_text or user_text.endswith("\n") else user_text + "\n"
    return f'{text}\n[projects.{json.dumps(str(worktree))}]\ntrust_level = "trusted"\n'


def _prepare_codex(codex_home: Path, worktree: Path, env: Mapping[str, str],
                   turn_hooks: bool) -> Preparation:
    user_home = Path(env["CODEX_HOME"]) if env.get("CODEX_HOME") else \
        Path(env.get("HOME") or Path.home()) / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    try:
        user_text = (user_home / "config.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        user_text = ""
    (codex_home / "config.toml").write_text(codex_config(user_text, worktree=worktree),
                                            encoding="utf-8")
    _link(user_home / "auth.json", codex_home / "auth.json")
    notify = json.dumps([*gastown_argv(), "agent-hook", "codex-notify"])
    # Codex runs commands in a login shell by default, and a login shell's profile resets
    # PATH (Debian's /etc/profile does for root): `gastown done` would not be found.
    notify_args = ("-c", f"notify={notify}") if turn_hooks else ()
    return Preparation(env={"CODEX_HOME": str(codex_home)},
                       args=(*notify_args, "-c", "allow_login_shell=false"))


# -- files ---------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _link(source: Path, target: Path) -> None:
    if not source.exists() or target.is_symlink() or target.exists():
        return
    try:
        target.symlink_to(source)
    except OSError:
        pass


def last_conversation(kind: AgentKind, home: Path) -> str | None:
    """The id of the agent's latest conversation in ``home`` (``{conversation}`` in a
    resume command), or None. One worktree per home, so any transcript is this
    worktree's, and the latest written is the one to continue: Claude's are
    ``projects/<cwd>/<id>.jsonl``, Codex's ``sessions/Y/M/D/rollout-<time>-<id>.jsonl``.
    Resumed by id, not by the CLI's own "latest" lookup: what is resumed is decided here,
    where it can be logged and tested."""
    if kind == "claude":
        transcripts = (home / "claude" / "projects").glob("*/*.jsonl")
    elif kind == "codex":
        transcripts = (home / "codex" / "sessions").rglob("rollout-*.jsonl")
    else:
        return None
    latest: tuple[float, str, Path] | None = None
    for transcript in transcripts:
        name = transcript.stem if kind == "claude" else transcript.stem[-36:]
        try:
            uuid.UUID(name)
            stamp = (transcript.stat().st_mtime, name, transcript)
        except (ValueError, FileNotFoundError):
            continue  # not a conversation's file, or removed meanwhile
        if latest is None or stamp[:2] > latest[:2]:
            latest = stamp
    if latest is None or (kind == "claude" and not _holds_a_prompt(latest[2])):
        return None
    return latest[1]


def _holds_a_prompt(transcript: Path) -> bool:
    """Whether a Claude transcript holds a prompt (a ``user`` entry) to continue from.

    Claude appends its entries out of order under load: a session killed right after its
    first call left the call's line but not the prompt's (its parent, seen in CI); resumed,
    that conversation starts from nothing and the agent has no task. Such a session is
    started afresh instead, with the whole prompt."""
    try:
        lines = transcript.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    for line in lines:
        if '"user"' not in line:
            continue
        try:
            if json.loads(line).get("type") == "user":
                return True
        except ValueError:
            continue  # a line cut short by the kill
    return False
