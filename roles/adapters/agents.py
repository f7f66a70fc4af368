"""Which command a polecat's agent session runs, what it is told, and its environment.

Layer: adapters (reads the shipped presets file), used by the operations that start and
nudge agents and by ``gastown sling``.

Presets ship in ``config/agents.toml``; a town's ``[agents.NAME]`` tables add or replace
them. Everything here is pure given its inputs, except :func:`load_presets`, which
reads the shipped file.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..core.config import AgentConfig, TownConfig, load_agent_tables
from ..core.errors import UsageError


@dataclass(frozen=True)
class AgentRun:
    """Everything a session backend needs to start one agent."""

    name: str
    argv: list[str]
    env: dict[str, str]
    prompt: str


def load_presets() -> dict[str, AgentConfig]:
    """The shipped agent presets (``config/agents.toml``). Parsed once per process: the file
    is part of the installed package, and the mayor and the witness asked for it at every
    spawn and nuke (~2 ms of CPU each time)."""
    return dict(_shipped_presets())


@functools.cache
def _shipped_presets() -> dict[str, AgentConfig]:
    from ...config import default_text

    return load_agent_tables(default_text("agents.toml"), "<shipped agents.toml>")


def command_for(agent: AgentConfig, *, backend: str, resume: bool) -> tuple[str, ...]:
    """Which of the agent's commands a session runs.

    The process backend has no terminal: it runs ``print_command`` (one turn that exits)
    when the agent has one. ``resume`` continues the previous conversation when the
    agent can (respawn, nudge); otherwise the fresh command runs, told what happened.
    """
    printing = backend == "process" and bool(agent.print_command)
    if printing:
        return (agent.print_resume_command or agent.print_command) if resume \
            else agent.print_command
    return (agent.resume_command or agent.command) if resume else agent.command


def prints_turns(agent: AgentConfig, backend: str) -> bool:
    """Whether a session of ``agent`` runs one turn and exits (its exit ends a turn, it is
    not a death)."""
    return backend == "process" and bool(agent.print_command)


def resolve_agent(name: str | None, town: TownConfig,
                  presets: Mapping[str, AgentConfig]) -> tuple[str, AgentConfig]:
    """The agent to run: ``name``, else the town's ``default_agent``; town tables win."""
    chosen = name or town.default_agent
    if chosen in town.agents:
        return chosen, town.agents[chosen]
    if chosen in presets:
        return chosen, presets[chosen]
    known = ", ".join(sorted({*presets, *town.agents}))
    raise UsageError(f"unknown agent {chosen!r} (known: {known})")


def render_prompt(*, rig: str, polecat: str, bead: str, title: str, description: str,
                  worktree: str, branch: str, note: str | None = None) -> str:
    """What the agent is told: its bead, where to work, and how to finish."""
    lines = [
        f"You are polecat {polecat} of rig {rig}, working on bead {bead}: {title}",
        "",
    ]
    if description.strip():
        lines += [description.strip(), ""]
    if note:
        lines += [f"Note: {note}", ""]
    lines += [
        f"Work only in this worktree ({worktree}), on branch {branch}.",
        "When the work is done, commit it, then run `gastown done`.",
        "If you cannot finish it, run `gastown done --status escalated` and say why in "
        "your last commit or output; to hand it back unfinished, "
        "`gastown done --status deferred`.",
    ]
    return "\n".join(lines) + "\n"


def polecat_env(*, base: Mapping[str, str], town_root: Path, rig: str, polecat: str,
                bead: str, branch: str, worktree: Path, prompt_file: Path, agent: str,
                session: str, extra: Mapping[str, str],
                incarnation: str = "") -> dict[str, str]:
    """The agent's environment (DESIGN.md §4), built on ``base`` (the caller's).

    ``PATH`` starts with the folder of this interpreter, so ``gastown done`` inside the
    session runs this very gastown. ``GIT_CEILING_DIRECTORIES`` stops git from walking
    up into any repository that contains the town (upstream bug: a half-created worktree
    made git commit to the umbrella repository).
    """
    env = {k: v for k, v in base.items() if not k.startswith("GASTOWN_")}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep)
                                               if p and p != bin_dir]])
    env.update({
        "GASTOWN_TOWN": str(town_root),
        "GASTOWN_RIG": rig,
        "GASTOWN_POLECAT": polecat,
        "GASTOWN_BEAD": bead,
        "GASTOWN_BRANCH": branch,
        "GASTOWN_ROLE": "polecat",
        "GASTOWN_WORKTREE": str(worktree),
        "GASTOWN_PROMPT_FILE": str(prompt_file),
        "GASTOWN_AGENT": agent,
        "GASTOWN_SESSION": session,
        # Which life of the (reused) name this is: lets a restarted mayor find a session
        # it started but never recorded, and tell it from an earlier polecat's leftovers.
        "GASTOWN_INCARNATION": incarnation,
        "GIT_CEILING_DIRECTORIES": str(town_root),
        "GIT_AUTHOR_NAME": polecat,
        "GIT_AUTHOR_EMAIL": f"{polecat}@{rig}.gastown.invalid",
    })
    env.setdefault("GIT_COMMITTER_NAME", polecat)
    env.setdefault("GIT_COMMITTER_EMAIL", f"{polecat}@{rig}.gastown.invalid")
    env.update(extra)
    return env


#: The embedded ``script`` agent's file (``{script_agent}`` in a command): the preset runs
#: it with ``python -I -S`` as a file, not a module, to skip site-packages and ``runpy``.
#: It lives at the top (``supervisor``: it is a client of the command line); a path here,
#: not an import. Inside the ``gastown`` package as imported (not resolved through the
#: links of an editable install): the agent finds the package's client code from it.
_SCRIPT_AGENT = str(Path(__file__).parent.parent.parent / "supervisor" / "script_agent.py")


def render_command(command: tuple[str, ...], *, prompt: str, prompt_file: Path, bead: str,
                   worktree: Path, conversation: str = "") -> list[str]:
    """The argv with its placeholders filled in (each argument stays one argument)."""
    values = {"prompt": prompt, "prompt_file": str(prompt_file), "bead": bead,
              "worktree": str(worktree), "python": sys.executable,
              "script_agent": _SCRIPT_AGENT, "conversation": conversation}
    pattern = re.compile(r"\{(" + "|".join(values) + r")\}")
    # One pass per argument: a prompt that itself contains "{bead}" stays as written.
    return [pattern.sub(lambda m: values[m.group(1)], arg) for arg in command]
