"""Adding and removing rigs: the clone, the rig's folders, its ``rig.toml`` and its row.

Layer: operations, used by the CLI (``rig add|remove``, ``up``) and by :mod:`.landing`.

A rig appears all at once or not at all. It is assembled in a staging folder under
``.runtime/`` (same filesystem), moved into place with one ``rename``, and only then
registered in the store; any failure before registration removes the moved folder
again. A process killed mid-way leaves at most a staging folder, which is never
mistaken for a rig (``doctor`` removes it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from ..adapters import git
from ..adapters.store import Rig, Store
from ..adapters.town import RIG_FILE, Town, read_rig_config
from ..core.errors import GastownError, NotFound, Refused, UsageError
from ..core.names import derive_prefix, prefix_problem, validate_name

_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


def is_url(repo: str) -> bool:
    """Whether ``repo`` names a remote (``scheme://`` or scp-like ``user@host:path``)."""
    return "://" in repo or bool(_SCP_LIKE.match(repo))


def normalize_repo(repo: str, cwd: Path) -> str:
    """A URL unchanged, or a local path made absolute; refuses a path that does not exist."""
    if is_url(repo):
        return repo
    path = (cwd / Path(repo).expanduser()).resolve()
    if not path.exists():
        raise NotFound(f"{repo}: not a URL and no such directory")
    return str(path)


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_rig_toml(name: str, repo: str, default_branch: str, prefix: str, *,
                    push_to_checkout: bool = False) -> str:
    text = (
        f"# Rig {name}. Keys left out take the shipped defaults (README: configuration).\n"
        f"repo = {_toml_string(repo)}\n"
        f"default_branch = {_toml_string(default_branch)}\n"
        f"prefix = {_toml_string(prefix)}\n"
    )
    if push_to_checkout:
        text += ("# The repository is a working copy with the branch checked out; pushes update\n"
                 "# that checkout when it is clean (receive.denyCurrentBranch = updateInstead).\n"
                 "push_to_checkout = true\n")
    return text


def working_copy_branch(source: str, branch: str | None) -> str | None:
    """The default branch if ``source`` is a local working copy that has it checked out.

    Git refuses pushes to a branch checked out in a non-bare repository (in any of its
    working trees). ``branch`` is the rig's default branch when given; otherwise it will
    be the repository's HEAD, i.e. the branch checked out in the main working tree.
    Returns None for a URL, a bare repository, or a branch that is not checked out.
    """
    if is_url(source):
        return None
    path = Path(source)
    if not git.is_repository(path) or git.is_bare(path) or not git.has_commits(path):
        return None  # not ours to judge: the clone refuses what it cannot use
    wanted = branch or git.current_branch(path)
    if wanted is not None and wanted in git.checked_out_branches(path):
        return wanted
    return None


def _refuse_working_copy(name: str, source: str, branch: str) -> Refused:
    bare = source.rstrip("/") + ".git"
    return Refused(
        f"{source} is a working copy with {branch} checked out, which git refuses pushes "
        f"to; use a bare repository (git clone --bare {source} {bare} && gastown rig add "
        f"{name} {bare}) or pass --push-to-checkout to let gastown update that checkout "
        "when it is clean")


def _staging_dir(town: Town, what: str) -> Path:
    staging = town.runtime_dir / "staging"
    staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    return staging / f"{what}-{secrets.token_hex(4)}"


def add_rig(town: Town, store: Store, name: str, repo: str, *, cwd: Path,
            branch: str | None = None, prefix: str | None = None,
            push_to_checkout: bool = False) -> Rig:
    """Clone ``repo`` as rig ``name`` and register it; returns the registered rig.

    The default branch is ``branch`` when given (it must exist in the repository),
    else the remote's HEAD, else ``main``. Raises :class:`UsageError` for bad names,
    :class:`Refused` for a taken name or prefix, :class:`GitError` when the clone fails;
    in every failure case nothing is left on disk or in the store.

    A local working copy with the default branch checked out is refused (git refuses
    pushes to it) unless ``push_to_checkout``: then the repository is set to
    ``receive.denyCurrentBranch = updateInstead`` and ``rig.toml`` says so.
    """
    validate_name("rig", name)
    if branch is not None:
        validate_name("branch", branch)
    if prefix is not None and prefix_problem(prefix):
        raise UsageError(f"invalid prefix {prefix!r}: {prefix_problem(prefix)}")
    source = normalize_repo(repo, cwd)
    checked_out = working_copy_branch(source, branch)
    if push_to_checkout and checked_out is None:
        raise UsageError(f"--push-to-checkout is for a local working copy with the rig's "
                         f"default branch checked out; {repo} is not one (pushes to it "
                         "work as they are)")
    existing = {r.name: r for r in store.rigs()}
    if name in existing:
        raise Refused(f"rig {name!r} already exists")
    rig_dir = town.rig_dir(name)
    if rig_dir.exists() or rig_dir.is_symlink():
        raise Refused(f"{rig_dir} already exists; choose another rig name")
    taken = {r.prefix for r in existing.values()} | {town.config.prefix}
    if prefix is None:
        prefix = derive_prefix(name, taken)
    elif prefix in taken:
        raise Refused(f"bead prefix {prefix!r} is already used in this town")
    if checked_out is not None and not push_to_checkout:
        raise _refuse_working_copy(name, source, checked_out)

    staging = _staging_dir(town, f"rig-{name}")
    try:
        clone_dir = staging / "refinery" / "rig"
        clone_dir.parent.mkdir(parents=True)
        git.clone(source, clone_dir, branch=branch)
        if not git.has_commits(clone_dir):
            raise Refused(f"{repo} has no commits; a rig needs a default branch to "
                          "branch polecats from")
        default_branch = branch or git.remote_default_branch(clone_dir) or "main"
        if git.current_branch(clone_dir) != default_branch:
            git.switch_to(clone_dir, default_branch)
        if checked_out is None and not push_to_checkout and not is_url(source) \
                and working_copy_branch(source, default_branch) is not None:
            raise _refuse_working_copy(name, source, default_branch)
        (staging / "polecats").mkdir()
        (staging / "crew").mkdir()
        (staging / RIG_FILE).write_text(
            render_rig_toml(name, source, default_branch, prefix,
                            push_to_checkout=push_to_checkout), encoding="utf-8")
        read_rig_config(staging / RIG_FILE)  # what we wrote must load
        if push_to_checkout:
            # What the user asked for: pushes update the checkout when it is clean.
            git.set_config(Path(source), "receive.denyCurrentBranch", "updateInstead")
        try:
            os.rename(staging, rig_dir)
        except OSError:
            raise Refused(f"{rig_dir} appeared while the rig was being cloned; "
                          "choose another rig name") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    rig = Rig(name=name, prefix=prefix, repo=source, default_branch=default_branch,
              created_at=time.time())
    try:
        store.add_rig(rig)
    except BaseException:
        shutil.rmtree(rig_dir, ignore_errors=True)
        raise
    return rig


def remove_rig(town: Town, store: Store, name: str, *, force: bool = False) -> Rig:
    """Unregister rig ``name`` and delete its folder.

    Refuses while the rig has live polecats or crew workspaces, unless ``force``:
    those hold work that may not have landed anywhere yet.
    """
    validate_name("rig", name)
    rig = store.rig(name)
    if not force:
        polecats = store.live_polecats(name)
        if polecats:
            raise Refused(f"rig {name!r} has {len(polecats)} live polecat(s) "
                          f"({', '.join(polecats[:5])}); nuke them first or pass --force")
        crew_dir = town.crew_dir(name)
        crew = sorted(p.name for p in crew_dir.iterdir()) if crew_dir.is_dir() else []
        if crew:
            raise Refused(f"rig {name!r} has crew workspaces ({', '.join(crew[:5])}); "
                          "remove them first or pass --force")
    # Forced: the rig's agents go with it (their worktrees are about to be deleted).
    from .polecat_sessions import stop_polecat_session

    for polecat in store.polecats(name):
        stop_polecat_session(town, polecat, grace=2.0)
    rig_dir = town.rig_dir(name)
    doomed = _staging_dir(town, f"removed-{name}")
    moved = False
    if rig_dir.exists():
        os.rename(rig_dir, doomed)
        moved = True
    try:
        store.remove_rig(name)
    except BaseException:
        if moved:
            os.rename(doomed, rig_dir)
        raise
    shutil.rmtree(doomed, ignore_errors=True)
    return rig


def merge_queue_notes(town: Town, rig: Rig) -> dict[str, Any]:
    """Where the rig's merged work is, when it is not all on the remote, and why the
    queue is stopped: ``{"unpushed": N, "notes": [one line each]}`` for ``status`` and
    ``rig list``. Reads the rig's row and counts the commits in the refinery's clone."""
    notes: list[str] = []
    count = 0
    if rig.push_error is not None and rig.landed_head is not None:
        clone = town.refinery_clone(rig.name)
        try:
            count = len(git.commits_between(clone, rig.remote_head, rig.landed_head))
        except GastownError:
            count = -1
        what = f"{count} merged commit(s)" if count >= 0 else "merged work"
        notes.append(f"{rig.name}: {what} in {clone} not on the remote yet: "
                     f"{rig.push_error}; pushed again after the next merge or "
                     f"`gastown mq resume {rig.name}`")
    if rig.mq_paused is not None:
        notes.append(f"{rig.name}: merge queue paused: {rig.mq_paused}")
    return {"unpushed": max(count, 0), "notes": notes}
