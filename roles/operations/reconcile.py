"""``gastown doctor``: compare what is on disk, in git and running with the store, and repair.

Per rig it compares the polecat folders (``<rig>/polecats/*``), the store's polecat rows,
``git worktree list`` of the refinery clone, the ``polecat/*`` branches, and the live
sessions (tmux sessions of the town's server, processes tagged with the polecat's
``GASTOWN_*`` environment); town-wide it looks at ``.runtime/staging`` leftovers.
Each check is one function returning :class:`Finding` values; with ``fix`` it also
repairs what it found, records a ``doctor_fixed`` domain event and logs it.

What it must never do: delete work that has not landed. A worktree with uncommitted
changes, a branch or merge request whose commits are not on the default branch (by patch
equivalence, ``git cherry``) is reported and kept ("kept: ..."), never removed. Nor does it
touch what a running town is in the middle of: ``spawning`` polecats belong to the mayor
and ``running`` merge requests to the refinery while the supervisor is up.

Order matters and is fixed: stale git worktree entries are pruned first (so the registry
is true), landed merge requests are settled before stale rows are nuked (a nuke cancels
open merge requests), and branches are looked at after folders and rows (whose repairs
delete branches). Every listing is taken *before* the rows it is compared with, because
the town creates a row before the folder, branch or session it stands for, and removes
them before the row: an object seen first whose row is then missing is really orphaned.

Synchronous and blocking (git, tmux, ``/proc``); trio callers use a worker thread.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

from ..adapters import git, landed
from ..adapters.agent_homes import agent_home, remove_home
from ..adapters.log import get_logger
from ..adapters.processes import processes_with_env, terminate_process_group
from ..adapters.store import Polecat, Store
from ..adapters.town import Town
from ..core.errors import GastownError, NotFound
from ..core.lifecycle import Nuke
from .polecats import (
    done_marker_path,
    names_with_branches,
    prompt_path,
    session_name,
    stop_polecat_session,
)

#: A staging folder younger than this may belong to a ``rig add`` still cloning.
STAGING_GRACE: Final = 300.0

#: How long an orphan session's processes get between SIGTERM and SIGKILL.
STOP_GRACE: Final = 2.0

#: The finding kinds, in the order the checks run.
KINDS: Final = ("missing_clone", "stale_git_worktree", "landed_mr", "orphan_worktree",
                "half_created", "stale_registration", "orphan_branch", "orphan_session",
                "staging_leftover")


@dataclass(frozen=True)
class Finding:
    """One disagreement between the store and the world, and what ``--fix`` does about it.

    ``action`` says what a fix does (when ``fixed`` is False and the work is safe to
    touch), did (``fixed`` True), or why the thing is kept (``"kept: ..."``).
    """

    rig: str
    kind: str
    subject: str
    detail: str
    action: str | None
    fixed: bool


@dataclass(frozen=True)
class _Ctx:
    town: Town
    store: Store
    fix: bool
    town_up: bool


@dataclass(frozen=True)
class _Rig:
    name: str
    clone: Path
    default_branch: str
    template: str
    polecats_dir: Path

    def branch_of(self, polecat: str) -> str:
        return self.template.replace("{name}", polecat)

    def polecat_of(self, branch: str | None) -> str | None:
        """The polecat name ``branch`` belongs to by the template, or None."""
        head, _, tail = self.template.partition("{name}")
        if branch is None or not (branch.startswith(head) and branch.endswith(tail)):
            return None
        name = branch[len(head):len(branch) - len(tail)]
        return name or None


def reconcile(town: Town, store: Store, *, rig: str | None = None, fix: bool = False,
              town_up: bool | None = None) -> list[Finding]:
    """Find (and with ``fix``, repair) orphans and stale registrations; returns the findings.

    ``rig`` limits the checks to one rig (town-wide staging leftovers of other rigs are
    skipped). ``town_up`` says whether a supervisor runs; by default it is asked
    (``read_supervisor``). A repair that fails is reported with ``fixed`` False and the
    error as its action; the other checks still run. Raises :class:`NotFound` for an
    unknown ``rig``. Nothing unlanded is ever deleted, whatever ``fix`` says.
    """
    if town_up is None:
        from ..adapters.town_lock import read_supervisor

        town_up = read_supervisor(town.runtime_dir) is not None
    ctx = _Ctx(town=town, store=store, fix=fix, town_up=town_up)
    rig_names = [store.rig(rig).name] if rig is not None else [r.name for r in store.rigs()]
    findings: list[Finding] = []
    checked: list[str] = []
    for name in rig_names:
        view = _rig_view(ctx, name)
        if isinstance(view, Finding):
            findings.append(view)
            continue
        checked.append(name)
        findings += check_stale_git_worktrees(ctx, view)
        findings += check_landed_mrs(ctx, view)
        findings += check_orphan_folders(ctx, view)
        findings += check_stale_registrations(ctx, view)
        findings += check_orphan_branches(ctx, view)
    findings += check_orphan_sessions(ctx, checked, all_rigs=[r.name for r in store.rigs()])
    findings += check_staging_leftovers(ctx, rig)
    return findings


def _rig_view(ctx: _Ctx, name: str) -> _Rig | Finding:
    clone = ctx.town.refinery_clone(name)
    try:
        config = ctx.town.rig_config(name)
    except GastownError as exc:
        return Finding(name, "missing_clone", str(ctx.town.rig_config_path(name)),
                       f"the rig's configuration cannot be read: {exc.message}", None, False)
    if not (clone / ".git").exists():
        return Finding(name, "missing_clone", str(clone),
                       "the rig is registered but its refinery clone is missing; "
                       "nothing of it can be checked", None, False)
    return _Rig(name=name, clone=clone, default_branch=config.default_branch,
                template=config.polecats.branch_template,
                polecats_dir=ctx.town.polecats_dir(name))


def _record(ctx: _Ctx, finding: Finding, *, polecat: str | None = None) -> Finding:
    """Log ``finding``; a fixed one is also a ``doctor_fixed`` domain event (the feed)."""
    log = get_logger(rig=finding.rig, polecat=polecat)
    if finding.fixed:
        ctx.store.emit("doctor_fixed", rig=finding.rig or None, polecat=polecat,
                       check=finding.kind, subject=finding.subject, detail=finding.detail,
                       action=finding.action)
        log.info("doctor_fixed", check=finding.kind, subject=finding.subject,
                 action=finding.action)
    else:
        log.warning("doctor_found", check=finding.kind, subject=finding.subject,
                    detail=finding.detail, action=finding.action)
    return finding


def _repair(ctx: _Ctx, rig: str, kind: str, subject: str, detail: str, *,
            todo: str, done: str, do: Callable[[], str | None],
            polecat: str | None = None) -> Finding:
    """Report, or with ``fix`` run ``do()`` and report the result (its error if it failed)."""
    if not ctx.fix:
        return _record(ctx, Finding(rig, kind, subject, detail, todo, False), polecat=polecat)
    try:
        outcome = do()
    except (GastownError, OSError) as exc:
        message = exc.message if isinstance(exc, GastownError) else str(exc)
        return _record(ctx, Finding(rig, kind, subject, detail, f"failed to {todo}: "
                                    f"{message}", False), polecat=polecat)
    if isinstance(outcome, str):  # the repair found, under its lock, nothing to do
        return _record(ctx, Finding(rig, kind, subject, detail, outcome, True),
                       polecat=polecat)
    return _record(ctx, Finding(rig, kind, subject, detail, done, True), polecat=polecat)


def _kept(ctx: _Ctx, rig: str, kind: str, subject: str, detail: str, why: str, *,
          polecat: str | None = None) -> Finding:
    return _record(ctx, Finding(rig, kind, subject, detail, f"kept: {why}", False),
                   polecat=polecat)


def _unlanded(rig: _Rig, ref: str | None) -> frozenset[str]:
    """Commits of ``ref`` whose patch is on neither the local nor the remote default."""
    return landed.gather(rig.clone, rig.default_branch, [ref]).unlanded


# -- git worktree registry -------------------------------------------------------------


def check_stale_git_worktrees(ctx: _Ctx, rig: _Rig) -> list[Finding]:
    """``git worktree list`` entries whose folder is gone: ``git worktree prune``.

    Only entries git itself calls prunable: a locked entry (a ``worktree add`` still
    running) is left alone. Pruning drops bookkeeping only; branches are untouched.
    """
    stale = [w for w in git.list_worktrees(rig.clone) if w.prunable and not w.path.exists()]
    if not stale:
        return []

    def prune() -> None:
        with git.repo_lock(rig.clone):
            git.prune_worktrees(rig.clone)

    findings = []
    for index, entry in enumerate(stale):
        detail = (f"git still lists a worktree{f' on {entry.branch}' if entry.branch else ''}"
                  " whose folder is gone")
        if index == 0:
            findings.append(_repair(ctx, rig.name, "stale_git_worktree", str(entry.path),
                                    detail, todo="git worktree prune",
                                    done="pruned (git worktree prune)", do=prune))
        else:  # one prune repairs them all
            findings.append(_record(ctx, Finding(rig.name, "stale_git_worktree",
                                                 str(entry.path), detail,
                                                 findings[0].action, findings[0].fixed)))
    return findings


# -- merge requests --------------------------------------------------------------------


def check_landed_mrs(ctx: _Ctx, rig: _Rig) -> list[Finding]:
    """Open merge requests whose head already landed: recorded as merged.

    ``queued`` ones always; ``running`` ones only while the town is down (otherwise the
    refinery holds them, and settles them itself when it restarts).
    """
    states = ["queued"] if ctx.town_up else ["queued", "running"]
    mrs = ctx.store.merge_requests_in(rig.name, states)
    if not mrs:
        return []
    target = rig.default_branch
    findings = []
    for mr in mrs:
        if not mr.head or landed.gather(rig.clone, target, [mr.head]).landed_on != "local":
            continue

        def land(mr_id: str = mr.id, state: str = mr.state) -> str | None:
            current = ctx.store.merge_request(mr_id)
            if current.state != state:
                return f"left alone: it became {current.state} meanwhile"
            commit = git.rev(rig.clone, target)
            if commit is None:
                raise NotFound(f"{target} does not resolve in {rig.clone}")
            ctx.store.merge_landed(mr_id, commit)
            return None

        findings.append(_repair(
            ctx, rig.name, "landed_mr", mr.id,
            f"{mr.state} merge request of {mr.polecat} ({mr.branch} at {mr.head[:10]}) is "
            f"already on {target}", todo="record it as merged",
            done=f"recorded as merged (on {target})", do=land, polecat=mr.polecat))
    return findings


# -- polecat folders ---------------------------------------------------------------------


def check_orphan_folders(ctx: _Ctx, rig: _Rig) -> list[Finding]:
    """Polecat folders without a row: removed when they hold nothing unlanded.

    A registered worktree with a dirty tree or unlanded commits is kept. A folder that is
    no git worktree at all (empty, or without ``.git``: a half-created spawn) is removed,
    since git run inside it would act on whatever repository lies above (upstream #698).
    A folder with a ``.git`` that is not a worktree of the refinery clone is kept.
    """
    if not rig.polecats_dir.is_dir():
        return []
    entries = sorted(p for p in rig.polecats_dir.iterdir() if not p.name.startswith("."))
    if not entries:
        return []
    registered = {_real(w.path): w for w in git.list_worktrees(rig.clone)}
    rows = {p.name for p in ctx.store.polecats(rig.name)}
    findings = []
    for path in entries:
        if path.name in rows:
            continue
        worktree = registered.get(_real(path))
        if worktree is not None:
            findings.append(_orphan_worktree(ctx, rig, path, worktree))
        elif path.is_symlink() or not path.is_dir():
            findings.append(_kept(ctx, rig.name, "orphan_worktree", str(path),
                                  "not a folder, and no polecat has that name",
                                  "not a polecat folder; remove it by hand",
                                  polecat=path.name))
        elif (path / ".git").exists():
            findings.append(_kept(ctx, rig.name, "orphan_worktree", str(path),
                                  f"has a .git but is not a worktree of {rig.clone}",
                                  "not ours to judge; inspect and remove it by hand",
                                  polecat=path.name))
        else:
            empty = not any(path.iterdir())
            findings.append(_repair(
                ctx, rig.name, "half_created", str(path),
                f"{'empty folder' if empty else 'folder without .git'}, no polecat row "
                "(git run in it would act on the repository above)",
                todo="remove the folder", done="removed the folder",
                do=partial(_remove_orphan_folder, ctx, rig, path), polecat=path.name))
    return findings


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _row_exists(store: Store, rig: str, name: str) -> bool:
    try:
        store.polecat(rig, name)
    except NotFound:
        return False
    return True


def _remove_orphan_folder(ctx: _Ctx, rig: _Rig, path: Path,
                          branch: str | None = None) -> str | None:
    """Remove ``path`` (and ``branch``) under the repository lock, re-checking that it is
    still an orphan: a spawn may have claimed the name since the listing."""
    with git.repo_lock(rig.clone):
        if _row_exists(ctx.store, rig.name, path.name):
            return "left alone: a polecat of that name appeared meanwhile"
        git.remove_worktree(rig.clone, path)
        if branch is not None:
            git.delete_branch(rig.clone, branch)
    for extra in (prompt_path(ctx.town, rig.name, path.name),
                  done_marker_path(ctx.town, rig.name, path.name)):
        extra.unlink(missing_ok=True)
    remove_home(agent_home(ctx.town, rig.name, path.name))
    return None


def _orphan_worktree(ctx: _Ctx, rig: _Rig, path: Path, worktree: git.Worktree) -> Finding:
    on = worktree.branch or f"detached {worktree.head[:10] if worktree.head else 'HEAD'}"
    detail = f"worktree on {on}, no polecat row"
    try:
        facts = landed.gather(rig.clone, rig.default_branch,
                              [worktree.branch or worktree.head], worktree=path)
    except GastownError as exc:
        return _kept(ctx, rig.name, "orphan_worktree", str(path), detail,
                     f"its state cannot be read ({exc.message})", polecat=path.name)
    problems = landed.kept_problems(facts, on)
    if problems:
        return _kept(ctx, rig.name, "orphan_worktree", str(path), detail,
                     f"has {' and '.join(problems)}", polecat=path.name)
    # Only a polecat branch goes with the folder; any other branch is someone else's.
    branch = worktree.branch if rig.polecat_of(worktree.branch) is not None else None
    what = f"worktree and branch {branch}" if branch else "worktree"
    return _repair(ctx, rig.name, "orphan_worktree", str(path), detail,
                   todo=f"remove the {what}", done=f"removed the {what} (nothing unlanded)",
                   do=lambda: _remove_orphan_folder(ctx, rig, path, branch),
                   polecat=path.name)


# -- polecat rows ----------------------------------------------------------------------


def check_stale_registrations(ctx: _Ctx, rig: _Rig) -> list[Finding]:
    """Polecat rows whose folder is gone: nuked (forced) when nothing unlanded remains.

    The work of such a polecat can still live in its branch, or in the head of an open
    merge request: then the row is kept and reported. ``spawning`` rows belong to the
    mayor while the town is up; when it is down they are reported (the mayor rolls them
    back at the next ``up``). A polecat whose merge request the refinery is running is
    left to the refinery while the town is up.
    """
    findings = []
    rows = ctx.store.polecats(rig.name)
    if not rows:
        return []
    open_mrs = ctx.store.merge_requests_in(rig.name, ["queued", "running"])
    for polecat in rows:
        if polecat.state == "spawning":
            if not ctx.town_up:
                findings.append(_kept(ctx, rig.name, "half_created", polecat.name,
                                      "polecat is still 'spawning' while the town is down",
                                      "the mayor rolls it back at the next 'gastown up'",
                                      polecat=polecat.name))
            continue
        if Path(polecat.worktree).exists():
            continue
        mrs = [m for m in open_mrs if m.kind == "polecat" and m.polecat == polecat.name]
        if ctx.town_up and any(m.state == "running" for m in mrs):
            continue
        detail = f"{polecat.state} polecat's worktree {polecat.worktree} is gone"
        try:
            unmerged = _unlanded(rig, polecat.branch)
            mr_unmerged = [m for m in mrs if _unlanded(rig, m.head)]
        except GastownError as exc:
            findings.append(_kept(ctx, rig.name, "stale_registration", polecat.name, detail,
                                  f"its branch cannot be read ({exc.message})",
                                  polecat=polecat.name))
            continue
        if unmerged:
            findings.append(_kept(
                ctx, rig.name, "stale_registration", polecat.name, detail,
                f"branch {polecat.branch} has {landed.plural(len(unmerged), 'unmerged commit')}; "
                f"the work lives there (recreate the worktree with 'git worktree add "
                f"{polecat.worktree} {polecat.branch}', or nuke with --force)",
                polecat=polecat.name))
            continue
        if mr_unmerged:
            findings.append(_kept(
                ctx, rig.name, "stale_registration", polecat.name, detail,
                f"merge request {mr_unmerged[0].id} has not landed yet",
                polecat=polecat.name))
            continue
        findings.append(_repair(
            ctx, rig.name, "stale_registration", polecat.name, detail,
            todo=f"nuke the row (session, branch {polecat.branch}, name)",
            done=f"nuked (branch {polecat.branch} held nothing unlanded; name released)",
            do=partial(_nuke_stale, ctx, rig, polecat), polecat=polecat.name))
    return findings


def _nuke_stale(ctx: _Ctx, rig: _Rig, polecat: Polecat) -> str | None:
    """Nuke a polecat whose folder is gone, re-checking under the repository lock."""
    stop_polecat_session(ctx.town, polecat, grace=STOP_GRACE)
    with git.repo_lock(rig.clone):
        if Path(polecat.worktree).exists():
            return "left alone: its worktree reappeared meanwhile"
        if not _row_exists(ctx.store, rig.name, polecat.name):
            return "already gone (nuked meanwhile)"
        if _unlanded(rig, polecat.branch):
            return "left alone: its branch gained unmerged commits meanwhile"
        git.delete_branch(rig.clone, polecat.branch)
        git.prune_worktrees(rig.clone)
    for extra in (prompt_path(ctx.town, rig.name, polecat.name),
                  done_marker_path(ctx.town, rig.name, polecat.name)):
        extra.unlink(missing_ok=True)
    ctx.store.cancel_merge_requests(rig.name, polecat.name,
                                    reason="doctor: the polecat's worktree was gone")
    try:
        ctx.store.apply_polecat_event(rig.name, polecat.name, Nuke(force=True), doctor=True)
    except NotFound:
        return "already gone (nuked meanwhile)"
    return None


# -- branches ------------------------------------------------------------------------------


def check_orphan_branches(ctx: _Ctx, rig: _Rig) -> list[Finding]:
    """Polecat branches with neither row nor folder: deleted when fully landed, else kept.

    A branch checked out in some registered worktree (outside the polecats folder) is
    that worktree's business and is left alone.
    """
    names = names_with_branches(rig.clone, rig.template)
    if not names:
        return []
    checked_out = {w.branch for w in git.list_worktrees(rig.clone) if w.branch}
    rows = {p.name for p in ctx.store.polecats(rig.name)}
    open_heads = [m.head for m in ctx.store.merge_requests_in(rig.name, ["queued", "running"])
                  if m.head]
    findings = []
    for name in sorted(names):
        branch = rig.branch_of(name)
        if name in rows or (rig.polecats_dir / name).exists() or \
                (rig.polecats_dir / name).is_symlink() or branch in checked_out:
            continue
        detail = "polecat branch with no polecat row and no folder"
        try:
            unmerged = _unlanded(rig, branch)
        except GastownError as exc:
            findings.append(_kept(ctx, rig.name, "orphan_branch", branch, detail,
                                  f"it cannot be read ({exc.message})", polecat=name))
            continue
        if unmerged:
            findings.append(_kept(ctx, rig.name, "orphan_branch", branch, detail,
                                  f"has {landed.plural(len(unmerged), 'unmerged commit')}",
                                  polecat=name))
            continue
        if git.rev(rig.clone, branch) in open_heads:
            continue  # an open merge request's head: the landed-MR check owns it

        def delete(name: str = name, branch: str = branch) -> str | None:
            with git.repo_lock(rig.clone):
                if _row_exists(ctx.store, rig.name, name):
                    return "left alone: a polecat of that name appeared meanwhile"
                if _unlanded(rig, branch):
                    return "left alone: it gained unmerged commits meanwhile"
                git.delete_branch(rig.clone, branch)
            return None

        findings.append(_repair(ctx, rig.name, "orphan_branch", branch, detail,
                                todo="delete the branch",
                                done="deleted (every commit is on "
                                     f"{rig.default_branch})", do=delete, polecat=name))
    return findings


# -- sessions ------------------------------------------------------------------------------


@dataclass
class _Orphan:
    rig: str
    name: str
    tmux: list[str]
    pids: list[int]


def check_orphan_sessions(ctx: _Ctx, rigs: list[str], *, all_rigs: list[str]
                          ) -> list[Finding]:
    """Tmux sessions and tagged processes of polecats that have no row: stopped.

    The town creates a polecat's row before its session and stops the session before
    deleting the row, so a session seen here whose row is then missing is an orphan
    (upstream #700, #736: orphaned agents eat the machine).
    """
    from ..adapters.sessions import sanitize_name, town_sessions

    if not rigs:
        return []
    sessions = town_sessions(ctx.town.root)
    tagged = _tagged_processes(ctx.town.root)
    rows = ctx.store.polecats()
    expected = {sanitize_name(session_name(p.rig, p.name)) for p in rows}
    expected |= {str(p.session["name"]) for p in rows if p.session and p.session.get("name")}
    owners = {(p.rig, p.name) for p in rows}
    # Longest rig prefix first: rig "a-b"'s sessions are not rig "a"'s.
    prefixes = sorted(((sanitize_name(f"gt-{r}-"), r) for r in all_rigs),
                      key=lambda item: -len(item[0]))
    orphans: dict[tuple[str, str], _Orphan] = {}
    for session in sessions:
        if session in expected:
            continue
        for prefix, rig in prefixes:
            if session.startswith(prefix) and len(session) > len(prefix):
                name = session[len(prefix):]
                orphans.setdefault((rig, name), _Orphan(rig, name, [], [])).tmux.append(session)
                break
    for pid, (rig, name) in tagged.items():
        if (rig, name) not in owners and rig in all_rigs:
            orphans.setdefault((rig, name), _Orphan(rig, name, [], [])).pids.append(pid)
    findings = []
    for (rig, name), orphan in sorted(orphans.items()):
        if rig not in rigs:
            continue
        parts = []
        if orphan.tmux:
            parts.append(f"tmux session {', '.join(orphan.tmux)}")
        if orphan.pids:
            parts.append(f"{landed.plural(len(orphan.pids), 'process')} "
                         f"(pid {', '.join(map(str, sorted(orphan.pids)))})")
        subject = orphan.tmux[0] if orphan.tmux else session_name(rig, name)
        findings.append(_repair(
            ctx, rig, "orphan_session", subject,
            f"{' and '.join(parts)} of polecat {name}, which has no row",
            todo="stop them", done="stopped (SIGTERM, then SIGKILL)",
            do=partial(_stop_orphan, ctx, orphan), polecat=name))
    return findings


def _tagged_processes(town_root: Path) -> dict[int, tuple[str, str]]:
    """pid -> (rig, polecat) of live processes carrying this town's polecat identity."""
    found: dict[int, tuple[str, str]] = {}
    for root in {str(town_root), str(_real(town_root))}:
        for pid in processes_with_env({"GASTOWN_TOWN": root}):
            env = _environ(pid)
            rig, name = env.get("GASTOWN_RIG", ""), env.get("GASTOWN_POLECAT", "")
            if rig and name:
                found[pid] = (rig, name)
    return found


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def _stop_orphan(ctx: _Ctx, orphan: _Orphan) -> str | None:
    if _row_exists(ctx.store, orphan.rig, orphan.name):
        return "left alone: a polecat of that name appeared meanwhile"
    for session in orphan.tmux:
        _stop_tmux_session(ctx.town.root, session)
    for pid in orphan.pids:
        _stop_process(pid)
    return None


def _stop_tmux_session(town_root: Path, session: str) -> None:
    """Stop every pane's process tree of ``session``, then the session itself (by id)."""
    from ..adapters.processes import process_start_time
    from ..adapters.sessions import SessionInfo, stop_session, tmux_socket_name

    tmux = shutil.which("tmux")
    if tmux is None:
        return
    socket = tmux_socket_name(town_root)
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tmux, "-L", socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, env=env, timeout=30,
                              check=False)

    panes = run("list-panes", "-s", "-t", f"={session}", "-F", "#{session_id} #{pane_pid}")
    session_ids = set()
    for line in panes.stdout.splitlines():
        session_id, _, pane_pid = line.partition(" ")
        session_ids.add(session_id)
        if not pane_pid.isdigit():
            continue
        start = process_start_time(int(pane_pid))
        if start is not None:
            stop_session(SessionInfo(backend="tmux", name=session, pid=int(pane_pid),
                                     start_time=start, log_path="", tmux_socket=socket),
                         grace=STOP_GRACE)
    for session_id in session_ids:  # ids ($N) are never reused by the server
        run("kill-session", "-t", session_id)


def _stop_process(pid: int) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid == pid:
        terminate_process_group(pgid, STOP_GRACE)
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- staging -------------------------------------------------------------------------------


def check_staging_leftovers(ctx: _Ctx, rig: str | None) -> list[Finding]:
    """Folders an interrupted ``rig add`` / ``rig remove`` left in ``.runtime/staging``.

    Removed, except: one still in use (a process has a file open or its cwd in it) or
    touched within :data:`STAGING_GRACE` is skipped (a ``rig add`` may still be
    cloning); a ``removed-<rig>`` folder of a rig that is still registered but has no
    folder (the remove was killed between the rename and the store) is moved back.
    """
    staging = ctx.town.runtime_dir / "staging"
    if not staging.is_dir():
        return []
    entries = sorted(staging.iterdir())
    if not entries:
        return []
    registered = {r.name for r in ctx.store.rigs()}
    busy = _paths_in_use(entries)
    now = time.time()
    findings = []
    for entry in entries:
        what, owner = _staging_owner(entry.name)
        if rig is not None and owner != rig:
            continue
        if entry in busy or now - _newest_mtime(entry) < STAGING_GRACE:
            continue
        label = owner or "-"
        rig_dir = ctx.town.rig_dir(owner) if owner else None
        if what == "removed" and owner in registered and rig_dir is not None and \
                not rig_dir.exists():
            findings.append(_repair(
                ctx, label, "staging_leftover", str(entry),
                f"an interrupted 'rig remove' moved rig {owner}'s folder here, but the rig "
                "is still registered", todo=f"move it back to {rig_dir}",
                done=f"moved back to {rig_dir}",
                do=partial(os.rename, entry, rig_dir)))
            continue
        detail = {"rig": "left by an interrupted 'rig add'",
                  "removed": "left by an interrupted 'rig remove' (the rig is gone)"
                  }.get(what, "unknown leftover of an interrupted rig command")
        findings.append(_repair(ctx, label, "staging_leftover", str(entry), detail,
                                todo="remove it", done="removed",
                                do=partial(_rmtree, entry)))
    return findings


def _staging_owner(name: str) -> tuple[str, str | None]:
    """(``rig`` | ``removed`` | ``?``, rig name) of ``rig-<name>-<hex>`` staging folders."""
    for what in ("rig", "removed"):
        prefix = f"{what}-"
        if name.startswith(prefix):
            rest, sep, suffix = name[len(prefix):].rpartition("-")
            if sep and rest and len(suffix) == 8:
                return what, rest
    return "?", None


def _newest_mtime(entry: Path) -> float:
    newest = 0.0
    for path in (entry, entry / "refinery", entry / "refinery" / "rig",
                 entry / "refinery" / "rig" / ".git",
                 entry / "refinery" / "rig" / ".git" / "objects" / "pack"):
        try:
            newest = max(newest, path.lstat().st_mtime)
        except OSError:
            continue
    return newest


def _paths_in_use(entries: Iterable[Path]) -> set[Path]:
    """Which of ``entries`` some live process has its cwd or an open file in."""
    roots = {str(e): e for e in entries}
    busy: set[Path] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        links = [f"/proc/{pid}/cwd"]
        try:
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            pass
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            for root, entry in roots.items():
                if target == root or target.startswith(root + "/"):
                    busy.add(entry)
    return busy


def _rmtree(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for folder, _dirs, _files in os.walk(path):
        os.chmod(folder, 0o700)
    shutil.rmtree(path)
