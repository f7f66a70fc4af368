"""``gastown prime``: a polecat's context, for an agent whose conversation was compacted,
resumed or restarted (Claude Code runs it from its ``SessionStart`` hook; its output joins
the agent's context).

Layer: operations, used by the CLI (``gastown prime``).

It reads the store and git only (no bus round trip) and never fails inside a polecat: a
hook that fails would disturb the agent, so what cannot be read is said in a ``notes``
line and the rest is printed anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..adapters import git
from ..adapters.town import Town
from ..core.errors import GastownError

#: At most this many commits are listed (the count is always exact).
MAX_COMMITS = 10
#: At most this many uncommitted files are listed.
MAX_DIRTY = 20


@dataclass(frozen=True)
class PrimeContext:
    """What a polecat's agent needs to pick its work up again."""

    rig: str
    polecat: str
    bead: str | None = None
    title: str | None = None
    description: str | None = None
    worktree: str | None = None
    branch: str | None = None
    default_branch: str | None = None
    state: str | None = None
    reason: str | None = None
    #: Commits on the branch that the default branch does not have (None: unknown).
    commits_ahead: int | None = None
    commits: list[str] = field(default_factory=list)
    #: ``git status --porcelain`` lines of the worktree, the first :data:`MAX_DIRTY` of
    #: ``dirty_count`` (None: unknown).
    dirty: list[str] | None = None
    dirty_count: int | None = None
    #: What could not be read, in a few words each.
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "rules": rules(self)}


def from_env(rig: str, polecat: str, env: Mapping[str, str],
             note: str | None = None) -> PrimeContext:
    """What the agent's environment says (``roles/adapters/agents.py`` ``polecat_env``): enough to
    work on when the store cannot be read (``note`` says why it was not)."""
    return PrimeContext(rig=rig, polecat=polecat, bead=env.get("GASTOWN_BEAD") or None,
                        worktree=env.get("GASTOWN_WORKTREE") or None,
                        branch=env.get("GASTOWN_BRANCH") or None,
                        notes=[note] if note else [])


def gather(town: Town, rig: str, polecat: str, env: Mapping[str, str]) -> PrimeContext:
    """The polecat's context from the store and its worktree; never raises for what it
    cannot read (that goes in ``notes``)."""
    from ..adapters.store import open_store

    known = from_env(rig, polecat, env)
    notes: list[str] = []
    values: dict[str, Any] = {}
    try:
        with open_store(town.db_path) as store:
            record = store.polecat(rig, polecat)
            values.update(worktree=record.worktree, branch=record.branch,
                          state=record.state, reason=record.reason, bead=record.bead)
            if record.bead:
                bead = store.bead(record.bead)
                values.update(title=bead.title, description=bead.description)
            values["default_branch"] = store.rig(rig).default_branch
    except GastownError as exc:
        notes.append(f"the town's records could not be read: {exc.message}")
    except Exception as exc:  # a hook must not fail the agent
        notes.append(f"the town's records could not be read: {exc}")
    context = PrimeContext(**{**asdict(known), **{k: v for k, v in values.items()
                                                  if v is not None}})
    worktree = Path(context.worktree) if context.worktree else None
    if worktree is None or not worktree.is_dir():
        notes.append(f"the worktree {context.worktree or '?'} is not there")
        return _with(context, notes=notes)
    found: dict[str, Any] = {}
    try:
        dirty = git.dirty_files(worktree)
        found.update(dirty=dirty[:MAX_DIRTY], dirty_count=len(dirty))
        if context.default_branch:
            span = f"{context.default_branch}..HEAD"
            found["commits_ahead"] = int(git.run_git(
                ["rev-list", "--count", span], cwd=worktree, op="rev-list").strip() or 0)
            found["commits"] = git.run_git(
                ["log", "--oneline", "--no-decorate", f"-{MAX_COMMITS}", span],
                cwd=worktree, op="log").splitlines()
    except GastownError as exc:
        notes.append(f"git could not read the worktree: {exc.message}")
    except Exception as exc:  # a hook must not fail the agent
        notes.append(f"git could not read the worktree: {exc}")
    return _with(context, notes=notes, **found)


def _with(context: PrimeContext, **changes: Any) -> PrimeContext:
    return PrimeContext(**{**asdict(context), **changes})


def rules(context: PrimeContext) -> list[str]:
    """How a polecat works and finishes."""
    where = f"this worktree ({context.worktree})" if context.worktree else "this worktree"
    on = f", on branch {context.branch}" if context.branch else ""
    return [
        f"Work only in {where}{on}.",
        "When the work is done, commit it, then run `gastown done`.",
        "If you are stuck, run `gastown done --status escalated --reason \"...\"` "
        "(say what is missing).",
        "To hand the bead back unfinished, run `gastown done --status deferred "
        "--reason \"...\"`.",
    ]


def render(context: PrimeContext) -> str:
    """The text the agent reads."""
    lines = [f"# gastown: you are polecat {context.polecat} of rig {context.rig}", ""]
    if context.bead:
        lines.append(f"bead:      {context.bead}" + (f"  {context.title}"
                                                     if context.title else ""))
    if context.state:
        lines.append(f"state:     {context.state}"
                     + (f" ({context.reason})" if context.reason else ""))
    if context.worktree:
        lines.append(f"worktree:  {context.worktree}")
    if context.branch:
        lines.append(f"branch:    {context.branch}")
    if context.description and context.description.strip():
        lines += ["", "Task:"] + [f"  {line}" for line in context.description.strip()
                                  .splitlines()]
    lines += ["", "Rules:"] + [f"- {rule}" for rule in rules(context)]
    lines += ["", "Current state:"]
    if context.commits_ahead is not None:
        lines.append(f"- {context.commits_ahead} commit(s) ahead of {context.default_branch}"
                     + (":" if context.commits else ""))
        lines += [f"    {commit}" for commit in context.commits]
        if context.commits_ahead > len(context.commits):
            lines.append(f"    ... and {context.commits_ahead - len(context.commits)} more")
    if context.dirty is not None:
        count = context.dirty_count if context.dirty_count is not None else len(context.dirty)
        if count:
            lines.append(f"- {count} uncommitted change(s):")
            lines += [f"    {line}" for line in context.dirty]
            if count > len(context.dirty):
                lines.append(f"    ... and {count - len(context.dirty)} more")
        else:
            lines.append("- no uncommitted changes")
    lines += [f"- note: {note}" for note in context.notes]
    return "\n".join(lines) + "\n"
