"""Git, one function per operation, named in the domain's words.

Layer: a roles adapter, the module the rest of the town calls git through. Each
operation runs through :func:`~gastown.roles.adapters.git_command.run_git` (re-exported
here), which makes no decisions beyond retrying lock contention: a failure becomes
:class:`GitError` carrying the operation, repository and stderr tail. Blocking; from
trio, call these through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import GitError
from .files import remove_tree
from .flocks import exclusive_flock
from .git_command import CLONE_TIMEOUT as CLONE_TIMEOUT
from .git_command import NETWORK_TIMEOUT as NETWORK_TIMEOUT
from .git_command import REF_MISMATCH
from .git_command import run_git as run_git
from .git_push import PushOutcome as PushOutcome
from .git_push import push_commit as push_commit
from .git_status import WorktreeStatus as WorktreeStatus
from .git_status import current_branch as current_branch
from .git_status import dirty_files as dirty_files
from .git_status import has_commits as has_commits
from .git_status import is_pristine as is_pristine
from .git_status import worktree_status as worktree_status


def clone(repo: str, dest: Path, *, branch: str | None = None) -> None:
    """Clone ``repo`` (URL or local path) into ``dest``, checking out ``branch`` if given."""
    args = ["clone", "--quiet", "--no-recurse-submodules"]
    if branch is not None:
        args += ["--branch", branch]
    run_git([*args, "--", repo, str(dest)], cwd=None, op="clone", timeout=CLONE_TIMEOUT,
            where=repo)


def remote_default_branch(clone_dir: Path, remote: str = "origin") -> str | None:
    """The branch the remote's HEAD points at (``main`` for ``origin/main``), or None."""
    try:
        ref = run_git(["symbolic-ref", "--quiet", "--short", f"refs/remotes/{remote}/HEAD"],
                      cwd=clone_dir, op="symbolic-ref").strip()
    except GitError:
        return None
    prefix = f"{remote}/"
    return ref[len(prefix):] if ref.startswith(prefix) else ref or None


def switch_to(repo_dir: Path, branch: str) -> None:
    """Check out ``branch`` (creating it from ``origin/<branch>`` when only that exists)."""
    run_git(["switch", "--quiet", branch], cwd=repo_dir, op="switch")


# -- worktrees ------------------------------------------------------------------------
#
# Every operation that touches a repository's worktree registry (add, remove, prune,
# branch create/delete) runs under :func:`repo_lock`, one lock per repository, so that
# concurrent slings, nukes and crew commands never race git's own bookkeeping.


@contextmanager
def repo_lock(repo: Path, *, urgent: bool = False) -> Iterator[None]:
    """Hold the repository's gastown lock (an ``flock`` in its ``.git``) for the block.

    Blocks until the lock is free; the kernel releases it if the holder dies. ``urgent``
    (a nuke, which frees a slot) goes before patient holders that come meanwhile
    (:func:`~.flocks.exclusive_flock`).
    """
    with exclusive_flock(common_git_dir(repo) / "gastown-worktrees.lock", urgent=urgent):
        yield


def common_git_dir(repo: Path) -> Path:
    """The ``.git`` directory shared by ``repo`` and all its worktrees."""
    if (repo / ".git").is_dir():
        return repo / ".git"
    out = run_git(["rev-parse", "--git-common-dir"], cwd=repo, op="rev-parse").strip()
    return (repo / out).resolve()


@dataclass(frozen=True)
class Worktree:
    path: Path
    head: str | None
    branch: str | None
    prunable: bool = False


def list_worktrees(repo: Path) -> list[Worktree]:
    """``git worktree list`` of ``repo``: the main checkout first."""
    out = run_git(["worktree", "list", "--porcelain"], cwd=repo, op="worktree list")
    worktrees: list[Worktree] = []
    fields: dict[str, str] = {}
    for line in [*out.splitlines(), ""]:
        if not line:
            if "worktree" in fields:
                branch = fields.get("branch")
                worktrees.append(Worktree(
                    path=Path(fields["worktree"]), head=fields.get("HEAD"),
                    branch=branch.removeprefix("refs/heads/") if branch else None,
                    prunable="prunable" in fields))
            fields = {}
            continue
        key, _, value = line.partition(" ")
        fields[key] = value
    return worktrees


def add_worktree(repo: Path, path: Path, branch: str, start: str) -> None:
    """Create ``path`` as a worktree of ``repo`` on a new ``branch`` starting at ``start``.

    Callers hold :func:`repo_lock`. On failure git leaves nothing registered, but it may
    leave the directory: the caller's rollback removes both.
    """
    run_git(["worktree", "add", "--quiet", "-b", branch, str(path), start], cwd=repo,
            op="worktree add", env={"GIT_LFS_SKIP_SMUDGE": "1"})


def remove_worktree(repo: Path, path: Path) -> None:
    """Remove the worktree at ``path`` (forced), prune, and verify the folder is gone.

    ``git worktree remove`` can leave untracked or ignored files behind (upstream #618),
    so whatever remains is deleted, and then (or when git could not remove it: not
    registered, half-created) the registry is pruned. Raises
    :class:`GitError` if the folder still exists afterwards. Callers hold :func:`repo_lock`.
    """
    removed = False
    if path.exists():
        try:
            run_git(["worktree", "remove", "--force", "--force", str(path)], cwd=repo,
                    op="worktree remove")
            removed = True  # git dropped its registry entry too
        except GitError:
            pass  # not registered (half-created) or locked: fall through to rm -rf
    if path.exists() or path.is_symlink():
        removed = False
        remove_tree(path)
    if not removed:  # the registry may name a folder that is gone
        run_git(["worktree", "prune"], cwd=repo, op="worktree prune")
    if path.exists():
        raise GitError("worktree remove", str(repo), f"{path} still exists after removal")


def prune_worktrees(repo: Path) -> None:
    run_git(["worktree", "prune"], cwd=repo, op="worktree prune")


def branch_exists(repo: Path, branch: str) -> bool:
    try:
        run_git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], cwd=repo,
                op="rev-parse")
    except GitError:
        return False
    return True


def delete_branch(repo: Path, branch: str) -> None:
    """Delete the local ``branch`` (forced: callers have checked it is merged or forced);
    a branch that is already gone is fine (one git call, not a check and a delete)."""
    try:
        run_git(["branch", "-D", "--", branch], cwd=repo, op="branch -D")
    except GitError as exc:
        if f"branch '{branch}' not found" not in exc.stderr:
            raise


def delete_branch_at(repo: Path, branch: str, tip: str) -> bool:
    """Delete the local ``branch`` if it points at exactly ``tip`` (one ``update-ref -d``,
    a compare-and-delete: the caller verified that ``tip`` landed). False, and nothing
    deleted, when the branch is elsewhere or gone: the caller checks again."""
    try:
        run_git(["update-ref", "-d", f"refs/heads/{branch}", tip], cwd=repo,
                op="update-ref -d")
    except GitError as exc:
        if any(s in exc.stderr for s in REF_MISMATCH):
            return False
        raise
    return True


def commits_ahead(repo: Path, base: str, branch: str) -> int:
    """How many commits ``branch`` has that ``base`` does not (by ancestry)."""
    out = run_git(["rev-list", "--count", f"{base}..{branch}"], cwd=repo, op="rev-list")
    return int(out.strip() or "0")


def unmerged_commits(repo: Path, base: str, branch: str) -> list[str]:
    """Commits of ``branch`` whose change is not on ``base``, by patch equivalence.

    Uses ``git cherry``: after the refinery rebases a polecat's branch, its original
    commits are no longer ancestors of ``base``, but their patches are; those count as
    landed. Returns the ids of the commits that did not land.
    """
    out = run_git(["cherry", base, branch], cwd=repo, op="cherry", read_only=True)
    return [line[2:].strip() for line in out.splitlines() if line.startswith("+ ")]


def head_commit(path: Path, ref: str = "HEAD") -> str:
    return run_git(["rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=path,
                   op="rev-parse").strip()


def local_branches(repo: Path) -> list[str]:
    out = run_git(["for-each-ref", "--format=%(refname:short)", "refs/heads/"], cwd=repo,
                  op="for-each-ref")
    return [line.strip() for line in out.splitlines() if line.strip()]


# -- the refinery's operations ----------------------------------------------------------
#
# The refinery works in its own clone, where the default branch is checked out. Polecat
# branches are checked out in their worktrees, so they are never checked out here: the
# refinery rebases *detached* copies of them (git refuses to check out a branch another
# worktree holds, and must not move the polecat's branch under its agent).


def has_remote(repo: Path, remote: str = "origin") -> bool:
    out = run_git(["remote"], cwd=repo, op="remote")
    return remote in out.split()


def fetch(repo: Path, remote: str = "origin") -> None:
    run_git(["fetch", "--quiet", "--prune", remote], cwd=repo, op="fetch",
            timeout=NETWORK_TIMEOUT)


def rev(repo: Path, ref: str) -> str | None:
    """The commit ``ref`` names, or None when it does not exist."""
    try:
        return run_git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=repo,
                       op="rev-parse").strip() or None
    except GitError:
        return None


def revs(repo: Path, refs: list[str]) -> list[str | None]:
    """The commits ``refs`` name (None for one that names none): one git command when
    all of them name one, else one each (the refinery reads its branch and the remote's
    before every batch)."""
    try:
        out = run_git(["rev-parse", *(f"{ref}^{{commit}}" for ref in refs)], cwd=repo,
                      op="rev-parse").split()
    except GitError:
        out = []
    if len(out) == len(refs) and all(len(c) >= 40 for c in out):
        return list(out)
    return [rev(repo, ref) for ref in refs]


def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    try:
        run_git(["merge-base", "--is-ancestor", ancestor, descendant], cwd=repo,
                op="merge-base")
    except GitError:
        return False
    return True


def clean_checkout(repo: Path, branch: str, *, thorough: bool = False) -> None:
    """Leave ``repo`` on ``branch`` with a pristine tree, whatever a crash left behind.

    Aborts a rebase or merge in progress, checks the branch out with ``--force`` (which
    resets the index and the tracked files, an unmerged index included, and replaces
    untracked files or folders in the way) and removes untracked (also ignored) files:
    two git commands, after each batch of the refinery. ``thorough`` (the refinery's
    start, after whatever a crash left) resets and cleans before the checkout as well.
    """
    git_dir = common_git_dir(repo)
    if (git_dir / "rebase-merge").exists() or (git_dir / "rebase-apply").exists():
        try:
            run_git(["rebase", "--abort"], cwd=repo, op="rebase --abort")
        except GitError:
            for leftover in ("rebase-merge", "rebase-apply"):
                shutil.rmtree(git_dir / leftover, ignore_errors=True)
    if (git_dir / "MERGE_HEAD").exists():
        run_git(["merge", "--abort"], cwd=repo, op="merge --abort")
    if thorough:
        run_git(["reset", "--quiet", "--hard"], cwd=repo, op="reset")
        run_git(["clean", "-ffdxq"], cwd=repo, op="clean")
    run_git(["checkout", "--quiet", "--force", branch], cwd=repo, op="checkout")
    run_git(["clean", "-ffdxq"], cwd=repo, op="clean")


def rebase_detached(repo: Path, commit: str, onto: str, *,
                    pristine: bool = False) -> tuple[str | None, list[str]]:
    """Rebase a detached copy of ``commit`` onto ``onto``.

    Returns ``(new_head, [])`` on success, or ``(None, conflicting_files)`` after aborting
    a conflicted rebase (the checkout is left detached at ``commit``, clean).

    ``git rebase ONTO COMMIT`` detaches at ``onto`` from wherever the checkout is and
    writes only the files the picks change. In a ``pristine`` checkout (no change, nothing
    untracked: the batch's clean) that is all; otherwise ``commit`` is checked out with
    ``--force`` first, as rebase refuses a dirty tree. (Checking ``commit`` out first
    every time rewrote the files of every commit since the polecat branched, twice: 45 ms
    against 1.7 s for a rebase over 3,000 changed files, measured.)
    """
    if not pristine:
        run_git(["checkout", "--quiet", "--force", "--detach", commit], cwd=repo,
                op="checkout")
    try:
        run_git(["rebase", "--quiet", onto, commit], cwd=repo, op="rebase")
    except GitError as exc:
        try:
            out = run_git(["diff", "--name-only", "--diff-filter=U"], cwd=repo, op="diff")
            files = [f for f in out.splitlines() if f.strip()]
        except GitError:
            files = []
        try:
            run_git(["rebase", "--abort"], cwd=repo, op="rebase --abort")
        except GitError:
            pass
        if not files:
            raise exc
        return None, files
    return head_commit(repo), []


def checkout_detached(repo: Path, commit: str) -> None:
    run_git(["checkout", "--quiet", "--force", "--detach", commit], cwd=repo, op="checkout")
    run_git(["clean", "-ffdxq"], cwd=repo, op="clean")


def fast_forward(repo: Path, branch: str, commit: str) -> None:
    """Move ``branch`` (checked out in ``repo``) to ``commit``, by fast-forward only."""
    run_git(["checkout", "--quiet", "--force", branch], cwd=repo, op="checkout")
    run_git(["merge", "--quiet", "--ff-only", commit], cwd=repo, op="merge --ff-only")


def advance_branch(repo: Path, branch: str, commit: str, expected: str) -> None:
    """Point ``branch`` at ``commit`` if it still points at ``expected`` (one
    ``update-ref``, no checkout: the refinery lands a candidate its checkout is already
    on, detached). The caller knows ``commit`` descends from ``expected``; a branch that
    moved meanwhile fails the command instead of being overwritten."""
    run_git(["update-ref", "-m", f"gastown: land {commit[:10]}", f"refs/heads/{branch}",
             commit, expected], cwd=repo, op="update-ref")


def remote_branch_head(repo: Path, branch: str, remote: str = "origin") -> str | None:
    """What ``remote`` says its ``branch`` is, asked over the wire (``ls-remote``)."""
    out = run_git(["ls-remote", remote, f"refs/heads/{branch}"], cwd=repo, op="ls-remote",
                  timeout=NETWORK_TIMEOUT)
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref.strip() == f"refs/heads/{branch}":
            return sha.strip()
    return None


def commits_between(repo: Path, base: str | None, tip: str) -> list[str]:
    """The commits of ``base..tip`` (all of ``tip``'s history without ``base``), newest first."""
    spec = f"{base}..{tip}" if base else tip
    out = run_git(["rev-list", spec], cwd=repo, op="rev-list")
    return [line.strip() for line in out.splitlines() if line.strip()]


def is_bare(repo: Path) -> bool:
    """Whether ``repo`` is a bare repository."""
    out = run_git(["rev-parse", "--is-bare-repository"], cwd=repo, op="rev-parse")
    return out.strip() == "true"


def is_repository(path: Path) -> bool:
    """Whether ``path`` is the top of a git repository (bare or not)."""
    try:
        top = run_git(["rev-parse", "--git-dir"], cwd=path, op="rev-parse").strip()
    except GitError:
        return False
    git_dir = (path / top).resolve()
    return git_dir in (path.resolve(), (path / ".git").resolve())


def checked_out_branches(repo: Path) -> list[str]:
    """Branches checked out in ``repo``'s working trees (none for a bare repository's own)."""
    return [w.branch for w in list_worktrees(repo) if w.branch]


def set_config(repo: Path, key: str, value: str) -> None:
    run_git(["config", key, value], cwd=repo, op="config")


# -- upkeep of the clone every worktree shares -----------------------------------------
#
# Left to itself git runs ``maintenance run --auto`` (and so ``gc --auto``) after a commit,
# fetch, merge or rebase: in a town, after every agent's commit in every worktree and every
# step of the merge queue, all on the one object store the worktrees share (4 of the ~50
# git processes of a polecat's life, and a repack could start under any agent's commit).
# The refinery turns that off for its clone and runs the same check itself, between
# batches, with git's usual thresholds.


def own_maintenance(repo: Path) -> bool:
    """Stop commands in ``repo`` (and its worktrees) from starting maintenance themselves;
    True if the setting was changed."""
    current = run_git(["config", "--get", "--default", "", "maintenance.auto"], cwd=repo,
                      op="config").strip()
    if current == "false":
        return False
    set_config(repo, "maintenance.auto", "false")
    return True


def maintain(repo: Path) -> None:
    """``git maintenance run --auto``: what commands did after their work (gc when loose
    objects or packs pass git's thresholds), done once here."""
    run_git(["maintenance", "run", "--auto", "--quiet"], cwd=repo, op="maintenance")
