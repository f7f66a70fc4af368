"""``gastown nudge`` (people) and ``gastown agent-hook`` (agent CLIs' own hooks).

Layer: cli, over :mod:`gastown.roles.operations.nudges` and
:mod:`gastown.roles.operations.agent_turns`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ._context import current_dir, store_of, town_of
from ._polecats import _rig_and_name


def cmd_nudge(args: argparse.Namespace) -> int:
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.nudges import deliver_nudge

    rig, name = _rig_and_name(args.target)
    town = town_of(args)
    with store_of(town) as store, bound(rig=rig, polecat=name):
        polecat = store.polecat(rig, name)
        how = deliver_nudge(town, store, polecat, args.text, by="human",
                            timeout=args.timeout)
        get_logger().info("polecat_nudged", by="human", how=how)
    print(f"nudged {rig}/{name} ({how})")
    return 0


def cmd_agent_hook(args: argparse.Namespace) -> int:
    """Never fails the agent: whatever goes wrong is logged, and the exit status is 0.

    Claude waits for its Stop hook before it takes the next prompt, so this is quick: it
    records the turn in the store and pokes the town; the witness decides what follows.
    """
    payload = _payload(args)
    try:
        _record(args, payload)
    except Exception as exc:
        print(f"gastown agent-hook: {exc}", file=sys.stderr)
    return 0


def _payload(args: argparse.Namespace) -> dict[str, Any]:
    raw = args.payload
    if raw is None and not sys.stdin.isatty():
        raw = sys.stdin.read()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _record(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.agent_turns import record_hook_turn
    from ...roles.operations.polecat_done import locate_polecat

    if payload.get("stop_hook_active"):
        return  # a turn that a Stop hook itself prolonged: the first Stop counted it
    town = town_of(args)
    rig, name = locate_polecat(town, os.environ, current_dir())
    incarnation = os.environ.get("GASTOWN_INCARNATION")
    with store_of(town) as store, bound(rig=rig, polecat=name):
        polecat = store.polecat(rig, name)
        if incarnation and polecat.incarnation and incarnation != polecat.incarnation:
            return  # an agent of an earlier polecat of this name, still winding down
        after = record_hook_turn(town, store, rig, name, args.event, payload)
        if after is None:
            return
        get_logger().info("agent_turn_ended", turn=after.turns, event=args.event)
