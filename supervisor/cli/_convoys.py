"""Commands about convoys: ``convoy create|add|remove|list|show|sling``, and the lines
``status`` prints for the open ones.

Layer: cli, over the store (:mod:`gastown.roles.adapters.store`) and, for ``sling``, the
bus (through :func:`._polecats.dispatch_slings`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ._context import store_of, town_of
from ._output import age, print_json, print_json_or_empty, print_table

if TYPE_CHECKING:
    from ...roles.adapters.store import Convoy, Store


def cmd_create(args: argparse.Namespace) -> int:
    from ...roles.core.errors import UsageError

    title = args.title.strip()
    if not title:
        raise UsageError("a convoy needs a non-empty title")
    with store_of(town_of(args)) as store:
        convoy = store.create_convoy(title, args.beads, rig=args.rig)
    print(convoy.id)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    with store_of(town_of(args)) as store:
        convoy = store.add_to_convoy(args.convoy, args.beads)
    print(summary(convoy))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with store_of(town_of(args)) as store:
        convoy = store.remove_from_convoy(args.convoy, args.beads)
    print(summary(convoy))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with store_of(town_of(args)) as store:
        convoys = store.convoys()
    if print_json_or_empty(args.json, convoys, lambda c: c.as_json(), "no convoys"):
        return 0
    print_table(["CONVOY", "STATE", "PROGRESS", "AGE", "TITLE"],
                [[c.id, _state_text(c), c.state.progress, age(c.created_at), c.title]
                 for c in convoys])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with store_of(town_of(args)) as store:
        convoy = store.convoy(args.convoy)
        beads = store.convoy_beads(args.convoy)
    if args.json:
        print_json(convoy.as_json() | {"beads": [b.as_json() for b in beads]})
        return 0
    print(f"convoy {convoy.id}: {convoy.title}")
    print(f"state:    {_state_text(convoy)}")
    print(f"progress: {convoy.state.progress}")
    if convoy.rig:
        print(f"rig:      {convoy.rig} (for its beads without one)")
    if beads:
        print()
        print_table(["BEAD", "RIG", "STATUS", "MR", "MERGED", "TITLE"],
                    [[b.id, b.rig or "-", b.status + (f" ({b.reason})" if b.reason and
                                                     b.status != "closed" else ""),
                      f"{b.mr} ({b.mr_state})" if b.mr else "-",
                      (b.merged_commit or "")[:10] or "-", b.title] for b in beads])
    return 0


def cmd_sling(args: argparse.Namespace) -> int:
    from ...roles.adapters.agents import load_presets, resolve_agent
    from ._polecats import dispatch_slings

    town = town_of(args)
    if args.agent is not None:
        resolve_agent(args.agent, town.config, load_presets())
    with store_of(town) as store:
        slings = store.queue_convoy_slings(args.convoy, agent=args.agent)
    if not slings:
        print(f"convoy {args.convoy}: nothing to sling (no open bead without a sling)")
        return 0
    return dispatch_slings(town, slings)


def summary(convoy: Convoy) -> str:
    """``cv-x1y2z Feature X: 4/7 merged, stuck on web-abcde (rejected: gate test)``."""
    return f"{convoy.id} {convoy.title}: {convoy.state.progress}, {_state_text(convoy)}"


def _state_text(convoy: Convoy) -> str:
    if convoy.state.state == "stuck":
        return f"stuck on {convoy.state.stuck_bead} ({convoy.state.stuck_reason})"
    return convoy.state.state


def convoys_status_json(store: Store) -> list[dict[str, Any]]:
    """``status --json``'s ``convoys``: the convoys not landed yet."""
    return [c.as_json() for c in store.convoys() if c.state.state != "landed"]


def print_convoys_status(convoys: list[dict[str, Any]]) -> None:
    """``status``'s lines: one per convoy not landed yet."""
    for c in convoys:
        stuck = f", stuck on {c['stuck_bead']} ({c['stuck_reason']})" if c["stuck_bead"] \
            else ""
        print(f"convoy:         {c['id']} {c['title']}: {c['progress']}{stuck}")
