"""Commands for crew: ``crew add|list|remove`` and ``worktree RIG|list|remove RIG``.

Layer: cli, over :mod:`gastown.roles.operations.crew`.

Creation prints only the path on stdout, so scripts can ``cd "$(gastown worktree web)"``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ...roles.core.errors import UsageError
from ...roles.core.names import validate_name
from ._context import current_dir, store_of, town_of
from ._output import print_json, print_json_or_empty, print_table

if TYPE_CHECKING:
    from ...roles.operations.crew import CrewWorkspace

_WORKTREE_USAGE = "usage: gastown worktree RIG | worktree list | worktree remove RIG [--force]"


def _json_row(ws: CrewWorkspace) -> dict[str, object]:
    return {"rig": ws.rig, "name": ws.name, "path": str(ws.path), "branch": ws.branch,
            "state": ws.state, "uncommitted": ws.uncommitted, "home": ws.home,
            "cross_rig": ws.cross_rig}


def cmd_crew_add(args: argparse.Namespace) -> int:
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.crew import add_crew

    validate_name("rig", args.rig)
    validate_name("crew", args.name)
    town = town_of(args)
    with store_of(town) as store, bound(rig=args.rig):
        ws = add_crew(town, store, args.rig, args.name, setup=args.setup)
        get_logger().info("crew_added", crew=ws.name, branch=ws.branch, path=str(ws.path))
    print(ws.path)
    return 0


def cmd_crew_list(args: argparse.Namespace) -> int:
    from ...roles.operations.crew import list_crew

    if args.rig is not None:
        validate_name("rig", args.rig)
    town = town_of(args)
    with store_of(town) as store:
        found = list_crew(town, store, args.rig)
    if print_json_or_empty(args.json, found, _json_row,
                           "no crew workspaces; add one with 'gastown crew add NAME --rig R'"):
        return 0
    print_table(["RIG", "NAME", "BRANCH", "STATE", "HOME", "PATH"],
                [[ws.rig, ws.name, ws.branch, ws.state,
                  f"{ws.home} (cross-rig)" if ws.cross_rig else ws.home, ws.path]
                 for ws in found])
    return 0


def cmd_crew_remove(args: argparse.Namespace) -> int:
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.crew import remove_crew

    validate_name("rig", args.rig)
    validate_name("crew", args.name)
    town = town_of(args)
    with store_of(town) as store, bound(rig=args.rig):
        remove_crew(town, store, args.rig, args.name, force=args.force)
        get_logger().info("crew_removed", crew=args.name, force=args.force)
    print(f"removed crew workspace {args.rig}/{args.name}")
    return 0


def cmd_worktree(args: argparse.Namespace) -> int:
    """Dispatch on the words: ``[RIG]``, ``["list"]`` or ``["remove", RIG]``."""
    words: list[str] = list(args.words)
    if words == ["list"]:
        if args.force:
            raise UsageError("--force applies only to 'worktree remove RIG'")
        return _worktree_list(args)
    if len(words) == 2 and words[0] == "remove":
        if args.json:
            raise UsageError("--json applies only to 'worktree list' and 'worktree RIG'")
        return _worktree_remove(args, validate_name("rig", words[1]))
    if len(words) == 1 and words[0] != "remove":
        if args.force:
            raise UsageError("--force applies only to 'worktree remove RIG'")
        return _worktree_ensure(args, validate_name("rig", words[0]))
    raise UsageError(_WORKTREE_USAGE)


def _worktree_ensure(args: argparse.Namespace, rig: str) -> int:
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.crew import crew_branch, crew_identity, ensure_cross_rig_worktree

    town = town_of(args)
    with store_of(town) as store, bound(rig=rig):
        path = ensure_cross_rig_worktree(town, store, current_dir(), rig)
        who = crew_identity(town, store, current_dir())
        get_logger().info("cross_rig_worktree_ready", crew=str(who), path=str(path))
    if args.json:
        print_json({"rig": rig, "name": path.name, "path": str(path),
                    "branch": crew_branch(path.name), "home": str(who)})
    else:
        print(path)
    return 0


def _worktree_list(args: argparse.Namespace) -> int:
    from ...roles.operations.crew import list_cross_rig_worktrees

    town = town_of(args)
    with store_of(town) as store:
        found = list_cross_rig_worktrees(town, store, current_dir())
    if print_json_or_empty(args.json, found, _json_row, "no other rigs in this town"):
        return 0
    print_table(["RIG", "STATE", "PATH"], [[ws.rig, ws.state, ws.path] for ws in found])
    return 0


def _worktree_remove(args: argparse.Namespace, rig: str) -> int:
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.crew import remove_cross_rig_worktree

    town = town_of(args)
    with store_of(town) as store, bound(rig=rig):
        path = remove_cross_rig_worktree(town, store, current_dir(), rig, force=args.force)
        get_logger().info("cross_rig_worktree_removed", path=str(path), force=args.force)
    print(f"removed {path}")
    return 0
