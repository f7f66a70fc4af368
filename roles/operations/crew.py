"""Crew workspaces and cross-rig worktrees: git worktrees of a rig's canonical clone.

Layer: operations, used by :mod:`.crew_submit` and the CLI's ``crew`` and ``worktree``
commands.

A crew workspace is ``<town>/<rig>/crew/<name>`` on its own branch ``crew/<name>``,
started from the rig's default branch. A cross-rig worktree lets that crew member
work in another rig under their home identity: ``<town>/<target>/crew/<home>-<name>``
on branch ``crew/<home>-<name>``, started from the *target* rig's default branch
(upstream hard-codes ``main`` there; we never do).

Every change to a clone's worktree registry runs under :func:`git.repo_lock`, and
each operation either completes or leaves nothing behind. Removal never deletes
work that has not landed (uncommitted files, or commits whose patches are not on
the default branch) unless forced. This module never prints.

Identity. Each worktree records who it belongs to as ``gastown.crew =
<home_rig>/crew/<name>`` in its own per-worktree git config, and a cross-rig worktree
also gets ``user.name = <home_rig>/crew/<name>`` there, so its commits are
attributed to the home identity. Per-worktree config is the only place git keeps a
setting for one worktree and not the others; it needs ``extensions.worktreeConfig``
in the shared clone (honoured by git >= 2.20 even in format-0 repositories; it
changes nothing for worktrees that have no ``config.worktree``). Environment
variables or ``git -c`` would not outlive the command that set them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..adapters import git, landed
from ..adapters.faults import fault_point
from ..adapters.store import Store
from ..adapters.town import Town
from ..core.errors import GitError, NotFound, Refused
from ..core.names import name_problem, validate_name

#: The per-worktree config key naming a workspace's owner: ``<home_rig>/crew/<name>``.
IDENTITY_KEY: Final = "gastown.crew"

_OUTSIDE: Final = "run this inside a crew workspace (<town>/<rig>/crew/<name>)"


@dataclass(frozen=True)
class CrewWorkspace:
    """One folder under ``<rig>/crew/``: a crew workspace or a cross-rig worktree.

    ``state`` is ``clean``, ``N uncommitted``, ``missing`` (a cross-rig worktree not
    created yet) or ``not a worktree`` (a stray folder); ``uncommitted`` is the count,
    or None when there is no worktree to count in. ``home`` is the owner's identity
    ``<home_rig>/crew/<name>``; ``cross_rig`` is true when that rig is not ``rig``.
    """

    rig: str
    name: str
    path: Path
    branch: str | None
    state: str
    uncommitted: int | None
    home: str
    cross_rig: bool


def crew_branch(name: str) -> str:
    """The branch of crew workspace (or cross-rig worktree folder) ``name``."""
    return f"crew/{name}"


def identity(home_rig: str, name: str) -> str:
    return f"{home_rig}/crew/{name}"


# -- crew workspaces -------------------------------------------------------------------


def add_crew(town: Town, store: Store, rig: str, name: str, *,
             setup: bool = False) -> CrewWorkspace:
    """Create crew workspace ``<rig>/crew/<name>`` on a new branch ``crew/<name>``.

    The branch starts at the rig's default branch in its canonical clone. Raises
    :class:`UsageError` for a bad name, :class:`NotFound` for an unknown rig,
    :class:`Refused` when the folder or the branch already exists, :class:`GitError`
    when git fails; on any failure (or interruption) neither folder nor branch is left.
    With ``setup`` the rig's ``[polecats.setup]`` (files, command; no slot or port) runs
    in it; a failed setup raises :class:`~.setup.SetupFailed` and keeps the workspace.
    """
    validate_name("rig", rig)
    validate_name("crew", name)
    branch = validate_name("branch", crew_branch(name))
    default_branch = store.rig(rig).default_branch
    path = town.crew_dir(rig) / name
    _create_worktree(_clone_of(town, rig), path, branch, default_branch,
                     owner=identity(rig, name), set_user_name=False,
                     what=f"crew workspace {rig}/{name}")
    if setup:
        from .setup import workspace_setup

        workspace_setup(town, rig, path, town.logs_dir / "crew" / f"{rig}-{name}-setup.log")
    return _describe(rig, name, path)


def list_crew(town: Town, store: Store, rig: str | None = None) -> list[CrewWorkspace]:
    """Every folder under ``<rig>/crew/`` (of one rig, or of every rig), sorted by rig
    and name, with its branch and how many uncommitted files it holds."""
    if rig is not None:
        validate_name("rig", rig)
        rigs = [store.rig(rig).name]
    else:
        rigs = [r.name for r in store.rigs()]
    found: list[CrewWorkspace] = []
    for rig_name in rigs:
        crew_dir = town.crew_dir(rig_name)
        if not crew_dir.is_dir():
            continue
        for path in sorted(crew_dir.iterdir()):
            if path.is_dir() and not path.name.startswith("."):
                found.append(_describe(rig_name, path.name, path))
    return found


def remove_crew(town: Town, store: Store, rig: str, name: str, *,
                force: bool = False) -> None:
    """Remove crew workspace ``<rig>/crew/<name>`` and its branch ``crew/<name>``.

    Without ``force``, refuses (one line saying which) when the tree has uncommitted
    files or the branch has commits whose patches are not on the default branch
    (rebased-and-landed work counts as landed). With ``force``, removes the worktree
    (verified gone), deletes the branch and prunes. Raises :class:`NotFound` when
    neither the folder nor the branch exists.
    """
    validate_name("rig", rig)
    validate_name("crew", name)
    default_branch = store.rig(rig).default_branch
    _remove_worktree_checked(_clone_of(town, rig), town.crew_dir(rig) / name,
                             crew_branch(name), default_branch, force=force,
                             what=f"crew workspace {rig}/{name}")


# -- cross-rig worktrees ---------------------------------------------------------------


@dataclass(frozen=True)
class CrewIdentity:
    """Who is asking: the crew workspace the command runs in."""

    home_rig: str
    name: str

    def __str__(self) -> str:
        return identity(self.home_rig, self.name)

    @property
    def worktree_name(self) -> str:
        """The folder (and, with ``crew/``, branch) name in another rig."""
        return f"{self.home_rig}-{self.name}"


def crew_identity(town: Town, store: Store, cwd: Path) -> CrewIdentity:
    """The crew workspace containing ``cwd``, walking up to ``<town>/<rig>/crew/<name>``.

    Inside a cross-rig worktree this is its owner's identity, not the folder's name.
    Raises :class:`Refused` (one line) when ``cwd`` is not inside a crew workspace of
    a registered rig.
    """
    root = town.root.resolve()
    try:
        parts = cwd.resolve().relative_to(root).parts
    except ValueError:
        raise Refused(f"{_OUTSIDE}; {cwd} is not inside the town {town.root}") from None
    if len(parts) < 3 or parts[1] != "crew":
        raise Refused(_OUTSIDE)
    rig, name = parts[0], parts[2]
    workspace = town.crew_dir(rig) / name
    if not workspace.is_dir() or not (workspace / ".git").exists():
        raise Refused(f"{_OUTSIDE}; {workspace} is not a git worktree")
    try:
        store.rig(rig)
    except NotFound:
        raise Refused(f"{_OUTSIDE}; {rig!r} is not a rig of this town") from None
    owner = _read_owner(workspace)
    if owner is not None and owner != identity(rig, name):
        home_rig, _, home_name = owner.partition("/crew/")
        if name_problem("rig", home_rig) is None and name_problem("crew", home_name) is None:
            return CrewIdentity(home_rig, home_name)
    validate_name("crew", name)
    return CrewIdentity(rig, name)


def ensure_cross_rig_worktree(town: Town, store: Store, cwd: Path, target_rig: str) -> Path:
    """The path of the caller's worktree in ``target_rig``, creating it if needed.

    Creates ``<town>/<target>/crew/<home>-<name>``, a worktree of the target rig's
    canonical clone on a new branch ``crew/<home>-<name>`` from the target rig's
    default branch, with ``user.name`` set to the home identity. Idempotent: an
    existing one is returned as it is. Refuses the home rig itself, and a folder of
    that name that belongs to someone else. A failed creation leaves nothing behind.
    """
    who = crew_identity(town, store, cwd)
    validate_name("rig", target_rig)
    if target_rig == who.home_rig:
        raise Refused(f"{target_rig!r} is your home rig; your workspace "
                      f"{town.crew_dir(who.home_rig) / who.name} is already there")
    default_branch = store.rig(target_rig).default_branch
    wt_name = validate_name("crew", who.worktree_name)
    branch = validate_name("branch", crew_branch(wt_name))
    path = town.crew_dir(target_rig) / wt_name
    clone = _clone_of(town, target_rig)
    if path.exists() or path.is_symlink():
        with git.repo_lock(clone):
            _adopt_existing(clone, path, branch, who)
        return path
    _create_worktree(clone, path, branch, default_branch, owner=str(who),
                     set_user_name=True, what=f"cross-rig worktree {target_rig}/{wt_name}",
                     adopt=who)
    return path


def list_cross_rig_worktrees(town: Town, store: Store, cwd: Path) -> list[CrewWorkspace]:
    """The caller's worktree in every rig but its home, created or ``missing``."""
    who = crew_identity(town, store, cwd)
    found: list[CrewWorkspace] = []
    for rig in store.rigs():
        if rig.name == who.home_rig:
            continue
        path = town.crew_dir(rig.name) / who.worktree_name
        if path.exists():
            found.append(_describe(rig.name, who.worktree_name, path))
        else:
            found.append(CrewWorkspace(
                rig=rig.name, name=who.worktree_name, path=path,
                branch=crew_branch(who.worktree_name), state="missing", uncommitted=None,
                home=str(who), cross_rig=True))
    return found


def remove_cross_rig_worktree(town: Town, store: Store, cwd: Path, target_rig: str, *,
                              force: bool = False) -> Path:
    """Remove the caller's worktree in ``target_rig`` and its branch; returns its path.

    Without ``force``, refuses (one line naming the count) uncommitted files, and
    commits not landed on the target's default branch. Refuses a folder that belongs
    to another identity even with ``force``.
    """
    who = crew_identity(town, store, cwd)
    validate_name("rig", target_rig)
    if target_rig == who.home_rig:
        raise Refused(f"{target_rig!r} is your home rig; remove crew workspaces with "
                      "'gastown crew remove'")
    default_branch = store.rig(target_rig).default_branch
    wt_name = validate_name("crew", who.worktree_name)
    path = town.crew_dir(target_rig) / wt_name
    owner = _read_owner(path) if (path / ".git").exists() else None
    if owner is not None and owner != str(who):
        raise Refused(f"{path} belongs to {owner}, not to {who}")
    _remove_worktree_checked(_clone_of(town, target_rig), path, crew_branch(wt_name),
                             default_branch, force=force,
                             what=f"cross-rig worktree {target_rig}/{wt_name}")
    return path


# -- shared machinery ------------------------------------------------------------------


def _clone_of(town: Town, rig: str) -> Path:
    """The rig's canonical clone; :class:`NotFound` (not a traceback) when it is gone."""
    clone = town.refinery_clone(rig)
    if not (clone / ".git").exists():
        raise NotFound(f"rig {rig!r} has no canonical clone at {clone}; "
                       "re-add the rig or run 'gastown doctor'")
    return clone


def _create_worktree(clone: Path, path: Path, branch: str, start: str, *, owner: str,
                     set_user_name: bool, what: str,
                     adopt: CrewIdentity | None = None) -> None:
    """Add the worktree under the clone's lock; on any failure remove what was made."""
    with git.repo_lock(clone):
        if path.exists() or path.is_symlink():
            if adopt is not None:  # created by a racing command while we waited
                _adopt_existing(clone, path, branch, adopt)
                return
            raise Refused(f"{what} already exists at {path}")
        if git.branch_exists(clone, branch):
            raise Refused(f"branch {branch} already exists in {clone}; "
                          f"delete it or choose another name")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            git.add_worktree(clone, path, branch, f"refs/heads/{start}")
            fault_point("cli", "crew.after_worktree")
            _set_worktree_config(clone, path, owner, set_user_name=set_user_name)
        except BaseException:
            # We checked under the lock that neither existed, so both are ours to remove.
            try:
                git.remove_worktree(clone, path)
            finally:
                git.delete_branch(clone, branch)
            raise


def _adopt_existing(clone: Path, path: Path, branch: str, who: CrewIdentity) -> None:
    """Accept an existing cross-rig folder if it is ``who``'s; finish a half-made one.

    A process killed between ``worktree add`` and the config writes leaves a worktree
    on the right branch with no owner recorded: that one is completed, not refused.
    """
    if not (path / ".git").exists():
        raise Refused(f"{path} exists but is not a git worktree; move it away first")
    owner = _read_owner(path)
    if owner == str(who):
        return
    if owner is None and git.current_branch(path) == branch:
        _set_worktree_config(clone, path, str(who), set_user_name=True)
        return
    raise Refused(f"{path} exists and belongs to {owner or 'another workspace'}, "
                  f"not to {who}")


def _set_worktree_config(clone: Path, worktree: Path, owner: str, *,
                         set_user_name: bool) -> None:
    """Record ``owner`` (and optionally ``user.name``) in the worktree's own config."""
    try:
        enabled = git.run_git(["config", "--bool", "--get", "extensions.worktreeConfig"],
                              cwd=clone, op="config").strip() == "true"
    except GitError:
        enabled = False  # exit 1: not set
    if not enabled:
        git.run_git(["config", "extensions.worktreeConfig", "true"], cwd=clone,
                    op="config")
    git.run_git(["config", "--worktree", IDENTITY_KEY, owner], cwd=worktree, op="config")
    if set_user_name:
        git.run_git(["config", "--worktree", "user.name", owner], cwd=worktree,
                    op="config")


def _read_owner(worktree: Path) -> str | None:
    try:
        return git.run_git(["config", "--get", IDENTITY_KEY], cwd=worktree,
                           op="config").strip() or None
    except GitError:
        return None


def _describe(rig: str, name: str, path: Path) -> CrewWorkspace:
    """Read one folder's branch, owner and uncommitted-file count."""
    if not (path / ".git").exists():
        # Checked first: ``git status`` here would walk up into any enclosing repository.
        return CrewWorkspace(rig=rig, name=name, path=path, branch=None,
                             state="not a worktree", uncommitted=None,
                             home=identity(rig, name), cross_rig=False)
    owner = _read_owner(path) or identity(rig, name)
    try:
        count: int | None = len(git.dirty_files(path))
        state = _state(count or 0)
    except GitError:
        count, state = None, "not a worktree"
    return CrewWorkspace(rig=rig, name=name, path=path, branch=git.current_branch(path),
                         state=state, uncommitted=count, home=owner,
                         cross_rig=not owner.startswith(f"{rig}/crew/"))


def _state(uncommitted: int) -> str:
    return "clean" if uncommitted == 0 else f"{uncommitted} uncommitted"


def _remove_worktree_checked(clone: Path, path: Path, branch: str, default_branch: str, *,
                             force: bool, what: str) -> None:
    """Check for unlanded work, then remove worktree and branch, all under the lock."""
    with git.repo_lock(clone):
        exists = path.exists() or path.is_symlink()
        has_branch = git.branch_exists(clone, branch)
        if not exists and not has_branch:
            raise NotFound(f"no {what} (no {path}, no branch {branch})")
        if not force:
            facts = landed.gather(clone, default_branch, [branch] if has_branch else [],
                                  worktree=path)
            problems = landed.removal_problems(facts, default_branch)
            if problems:
                raise Refused(f"{what} has {' and '.join(problems)}; commit and land "
                              "the work, or pass --force to discard it")
        git.remove_worktree(clone, path)  # verifies the folder is gone, then prunes
        git.delete_branch(clone, branch)


