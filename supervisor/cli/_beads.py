"""Commands of the bead ledger: ``bead create|list|show``."""

from __future__ import annotations

import argparse

from gastown.supervisor.cli._context import (
    age,
    iso,
    poke_town,
    print_json,
    print_table,
    require_rig,
    store_of,
    town_of,
)


def cmd_create(args: argparse.Namespace) -> int:
    from gastown.roles.errors import UsageError
    from gastown.roles.log import bound, get_logger

    title = args.title.strip()
    if not title:
        raise UsageError("a bead needs a non-empty title")
    town = town_of(args)
    with store_of(town) as store:
        rig = require_rig(store, args.rig) if args.rig is not None else None
        prefix = rig.prefix if rig is not None else town.config.prefix
        bead = store.create_bead(prefix=prefix, rig=args.rig, title=title,
                                 description=args.description, priority=args.priority)
    with bound(bead=bead.id, rig=bead.rig):
        get_logger().info("bead_created", title=bead.title, priority=bead.priority)
    poke_town(town)
    print(bead.id)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from gastown.roles.errors import UsageError
    from gastown.roles.store import BEAD_STATUSES

    statuses = None
    if args.status:
        statuses = [s.strip() for s in args.status.split(",") if s.strip()]
        unknown = [s for s in statuses if s not in BEAD_STATUSES]
        if unknown:
            raise UsageError(f"unknown bead status {unknown[0]!r} (known: "
                             f"{', '.join(BEAD_STATUSES)})")
    town = town_of(args)
    with store_of(town) as store:
        if args.rig is not None:
            require_rig(store, args.rig)
        beads = store.beads(rig=args.rig, statuses=statuses)
    if args.json:
        print_json(beads)
        return 0
    if not beads:
        print("no beads")
        return 0
    print_table(["ID", "P", "STATUS", "RIG", "AGE", "TITLE"],
                [[b.id, b.priority, b.status, b.rig, age(b.created_at), b.title]
                 for b in beads])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    town = town_of(args)
    with store_of(town) as store:
        bead = store.bead(args.id)
    if args.json:
        print_json(bead)
        return 0
    print(f"{bead.id}  {bead.title}")
    print(f"  status:   {bead.status}" + (f" ({bead.reason})" if bead.reason else ""))
    print(f"  rig:      {bead.rig or '-'}")
    print(f"  priority: {bead.priority}")
    print(f"  created:  {iso(bead.created_at)} ({age(bead.created_at)} ago)")
    print(f"  updated:  {iso(bead.updated_at)}")
    if bead.description:
        print("  description:")
        for line in bead.description.splitlines():
            print(f"    {line}")
    return 0
