"""``gastown doctor``'s checks of what has landed: merge requests already on the default
branch, and polecat branches with neither row nor folder.

Layer: roles operations, called by :mod:`.reconcile` (the driver). A landed merge request
is recorded as merged; an orphan branch is deleted only when every commit of it is on
the default branch (by patch), else kept.
"""

from __future__ import annotations

from ..adapters import git, landed
from ..core.errors import GastownError, NotFound
from .polecats import names_with_branches
from .reconcile_findings import Ctx, Finding, RigView, kept, repair, row_exists, unlanded


def check_landed_mrs(ctx: Ctx, rig: RigView) -> list[Finding]:
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

        findings.append(repair(
            ctx, rig.name, "landed_mr", mr.id,
            f"{mr.state} merge request of {mr.polecat} ({mr.branch} at {mr.head[:10]}) is "
            f"already on {target}", todo="record it as merged",
            done=f"recorded as merged (on {target})", do=land, polecat=mr.polecat))
    return findings


def check_orphan_branches(ctx: Ctx, rig: RigView) -> list[Finding]:
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
            unmerged = unlanded(rig, branch)
        except GastownError as exc:
            findings.append(kept(ctx, rig.name, "orphan_branch", branch, detail,
                                 f"it cannot be read ({exc.message})", polecat=name))
            continue
        if unmerged:
            findings.append(kept(ctx, rig.name, "orphan_branch", branch, detail,
                                 f"has {landed.plural(len(unmerged), 'unmerged commit')}",
                                 polecat=name))
            continue
        if git.rev(rig.clone, branch) in open_heads:
            continue  # an open merge request's head: the landed-MR check owns it

        def delete(name: str = name, branch: str = branch) -> str | None:
            with git.repo_lock(rig.clone):
                if row_exists(ctx.store, rig.name, name):
                    return "left alone: a polecat of that name appeared meanwhile"
                if unlanded(rig, branch):
                    return "left alone: it gained unmerged commits meanwhile"
                git.delete_branch(rig.clone, branch)
            return None

        findings.append(repair(ctx, rig.name, "orphan_branch", branch, detail,
                               todo="delete the branch",
                               done="deleted (every commit is on "
                                     f"{rig.default_branch})", do=delete, polecat=name))
    return findings
