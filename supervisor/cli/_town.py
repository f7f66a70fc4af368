"""Commands about the town itself: ``install``, ``rig add|list|remove``, ``mq resume``,
``config show``.

Layer: cli, over :mod:`gastown.roles.adapters.town` and
:mod:`gastown.roles.operations.rigs`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._context import current_dir, store_of, town_of
from ._output import age, print_json, print_json_or_empty, print_table, to_jsonable


def cmd_install(args: argparse.Namespace) -> int:
    from ...roles.adapters.log import get_logger
    from ...roles.adapters.town import default_town_path, install_town
    from ._context import _configure_cli_logging

    path = Path(args.path) if args.path else (
        Path(args.town) if args.town else default_town_path(os.environ))
    if not path.expanduser().is_absolute():
        path = current_dir() / path
    town, created = install_town(path)
    _configure_cli_logging(town, verbose=bool(args.verbose))
    get_logger().info("town_installed" if created else "town_checked", town=str(town.root))
    print(f"{'created town' if created else 'town already exists at'} {town.root}")
    return 0


def cmd_rig_add(args: argparse.Namespace) -> int:
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.rigs import add_rig

    town = town_of(args)
    with store_of(town) as store, bound(rig=args.name):
        rig = add_rig(town, store, args.name, args.repo, cwd=current_dir(), branch=args.branch,
                      prefix=args.prefix, push_to_checkout=args.push_to_checkout)
        get_logger().info("rig_added", repo=rig.repo, default_branch=rig.default_branch,
                          prefix=rig.prefix)
    print(f"added rig {rig.name} (branch {rig.default_branch}, bead prefix {rig.prefix}) "
          f"at {town.rig_dir(rig.name)}")
    if args.check:
        from ._mq import run_check

        return run_check(town, rig.name)
    return 0


def cmd_rig_list(args: argparse.Namespace) -> int:
    from ...roles.operations.rigs import merge_queue_notes

    town = town_of(args)
    with store_of(town) as store:
        rigs = store.rigs()
        live = {r.name: len(store.live_polecats(r.name)) for r in rigs}
    notes = {r.name: merge_queue_notes(town, r) for r in rigs}
    if print_json_or_empty(args.json, rigs,
                           lambda r: {**to_jsonable(r), "path": str(town.rig_dir(r.name)),
                                      "polecats": live[r.name], **notes[r.name]},
                           "no rigs yet; add one with 'gastown rig add NAME REPO'"):
        return 0
    print_table(["NAME", "PREFIX", "BRANCH", "POLECATS", "AGE", "REPO"],
                [[r.name, r.prefix, r.default_branch, live[r.name], age(r.created_at), r.repo]
                 for r in rigs])
    for r in rigs:
        for line in notes[r.name]["notes"]:
            print(line)
    return 0


def cmd_mq_resume(args: argparse.Namespace) -> int:
    """Ask the rig's refinery to look again: resume a paused queue, re-push unpushed work."""
    from ...roles.adapters.log import bound, get_logger
    from ...roles.core.events import MqResumeRequested
    from ...roles.core.names import validate_name

    validate_name("rig", args.rig)
    town = town_of(args)
    with store_of(town) as store, bound(rig=args.rig):
        rig = store.rig(args.rig)
        store.emit(MqResumeRequested(rig=rig.name))
        get_logger().info("mq_resume_requested")
    from ...roles.adapters.town_lock import read_supervisor

    state = f"paused: {rig.mq_paused}" if rig.mq_paused else "not paused"
    if read_supervisor(town.runtime_dir) is None:
        print(f"the town is down; refinery:{rig.name} checks the remote when it starts "
              f"('gastown up'). The queue is {state}")
        return 0
    print(f"asked refinery:{rig.name} to check the remote again (the queue was {state}); "
          "'gastown status' shows the outcome")
    return 0


def cmd_rig_remove(args: argparse.Namespace) -> int:
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.rigs import remove_rig

    town = town_of(args)
    with store_of(town) as store, bound(rig=args.name):
        remove_rig(town, store, args.name, force=args.force)
        get_logger().info("rig_removed", force=args.force)
    print(f"removed rig {args.name}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    town = town_of(args)
    if args.rig:
        from ...roles.core.names import validate_name

        validate_name("rig", args.rig)
        config: object = town.rig_config(args.rig)
    else:
        config = town.config
    data = to_jsonable(config)
    if args.json:
        print_json(data)
    else:
        _print_flat(data, "")
    return 0


def _print_flat(data: object, prefix: str) -> None:
    if isinstance(data, dict):
        if not data and prefix:
            print(f"{prefix} = {{}}")
        for key, value in data.items():
            _print_flat(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
        for i, item in enumerate(data):
            _print_flat(item, f"{prefix}[{i}]")
    else:
        import json

        print(f"{prefix} = {json.dumps(data)}")
