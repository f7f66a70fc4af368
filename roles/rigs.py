"""Adding and removing rigs: the clone, the rig's folders, its ``rig.toml`` and its row.

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

from gastown.roles import git
from gastown.roles.errors import NotFound, Refused, UsageError
from gastown.roles.names import derive_prefix, prefix_problem, validate_name
from gastown.roles.store import Rig, Store
from gastown.roles.town import RIG_FILE, Town, read_rig_config

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


def render_rig_toml(name: str, repo: str, default_branch: str, prefix: str) -> str:
    return (
        f"# Rig {name}. Keys left out take the shipped defaults (README: configuration).\n"
        f"repo = {_toml_string(repo)}\n"
        f"default_branch = {_toml_string(default_branch)}\n"
        f"prefix = {_toml_string(prefix)}\n"
    )


def _staging_dir(town: Town, what: str) -> Path:
    staging = town.runtime_dir / "staging"
    staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    return staging / f"{what}-{secrets.token_hex(4)}"


def add_rig(town: Town, store: Store, name: str, repo: str, *, cwd: Path,
            branch: str | None = None, prefix: str | None = None) -> Rig:
    """Clone ``repo`` as rig ``name`` and register it; returns the registered rig.

    The default branch is ``branch`` when given (it must exist in the repository),
    else the remote's HEAD, else ``main``. Raises :class:`UsageError` for bad names,
    :class:`Refused` for a taken name or prefix, :class:`GitError` when the clone fails;
    in every failure case nothing is left on disk or in the store.
    """
    validate_name("rig", name)
    if branch is not None:
        validate_name("branch", branch)
    if prefix is not None and prefix_problem(prefix):
        raise UsageError(f"invalid prefix {prefix!r}: {prefix_problem(prefix)}")
    source = normalize_repo(repo, cwd)
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
        (staging / "polecats").mkdir()
        (staging / "crew").mkdir()
        (staging / RIG_FILE).write_text(
            render_rig_toml(name, source, default_branch, prefix), encoding="utf-8")
        read_rig_config(staging / RIG_FILE)  # what we wrote must load
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
    from gastown.roles.polecats import stop_polecat_session

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
