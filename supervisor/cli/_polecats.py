"""Commands about polecats: ``sling``, ``done``, ``polecat list|nuke``, ``attach``.

Layer: cli, over the polecat operations (:mod:`gastown.roles.operations.polecats` and its
neighbours) and the bus.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from ...roles.core.errors import GastownError, UsageError
from ._context import current_dir, listed_rig, store_of, town_of
from ._output import age, print_json, print_json_or_empty, print_table

if TYPE_CHECKING:
    from ...roles.adapters.store import Polecat, Sling
    from ...roles.adapters.town import Town

#: How long ``sling`` waits for the mayor to create the polecat (worktree + session).
SLING_TIMEOUT = 300.0


def _rig_and_name(text: str) -> tuple[str, str]:
    from ...roles.core.names import validate_name

    rig, sep, name = text.partition("/")
    if not sep or not rig or not name:
        raise UsageError(f"expected RIG/NAME, got {text!r}")
    return validate_name("rig", rig), validate_name("polecat", name)


def cmd_sling(args: argparse.Namespace) -> int:
    from ...roles.adapters.agents import load_presets, resolve_agent
    from ...roles.core.names import validate_name

    validate_name("rig", args.rig)
    town = town_of(args)
    if args.agent is not None:
        resolve_agent(args.agent, town.config, load_presets())
    if town.rig_config_path(args.rig).is_file():
        # A broken rig.toml is the user's to mend now, not the mayor's to find at dispatch.
        town.rig_config(args.rig)
    if bool(args.beads) == bool(args.convoy):
        raise UsageError("name the beads to sling, or --convoy C (not both)")
    with store_of(town) as store:
        if args.convoy:
            slings = store.queue_convoy_slings(args.convoy, args.rig, agent=args.agent)
        else:
            slings = store.queue_slings(args.beads, args.rig, agent=args.agent,
                                        force=args.force)
    if args.convoy and not slings:
        print(f"convoy {args.convoy}: nothing to sling (no open bead without a sling)")
        return 0
    return dispatch_slings(town, slings)


def dispatch_slings(town: Town, slings: list[Sling]) -> int:
    """Ask the mayor to dispatch the queued ``slings`` now and say what became of each:
    a polecat (``NAME WORKTREE``), a place in the queue, or a failure (exit 1)."""
    from ...roles.adapters.town_lock import read_supervisor
    from ..bus.errors import BusError
    from ..bus.requests import Sling as SlingRequest
    from ..bus.sync_client import call_sync

    if read_supervisor(town.runtime_dir) is None:
        for sling in slings:
            print(f"queued sling #{sling.id} of {sling.bead} to {sling.rig}: the town is "
                  "down; it runs at 'gastown up'")
        return 0
    failed: list[str] = []
    for sling in slings:  # the first request's pass dispatches them all; the rest ask
        try:
            result: dict[str, Any] = call_sync(town.runtime_dir / "bus.sock", "mayor",
                                               SlingRequest(sling=sling.id),
                                               timeout=SLING_TIMEOUT)
        except BusError as exc:
            print(f"queued sling #{sling.id} of {sling.bead} to {sling.rig}; the mayor did "
                  f"not answer ({exc.message}); it dispatches queued slings when it is back")
            continue
        if result["state"] == "dispatched":
            print(f"{result['polecat']} {result['worktree']}")
        elif result["state"] == "queued":
            print(f"queued sling #{sling.id} of {sling.bead} to {sling.rig} (position "
                  f"{result.get('position', '?')}): "
                  f"{result.get('waiting') or 'waiting for a free polecat slot'}")
        else:
            failed.append(f"sling of {sling.bead} to {sling.rig} failed: "
                          f"{result.get('error', result['state'])}")
    if len(failed) == 1 and len(slings) == 1:
        raise GastownError(failed[0])
    for line in failed:
        print(f"gastown: {line}", file=sys.stderr)
    return 1 if failed else 0


def cmd_done(args: argparse.Namespace) -> int:
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.crew_submit import locate_crew
    from ...roles.operations.polecat_done import locate_polecat, record_done

    town = town_of(args)
    cwd = current_dir()
    crew = None if os.environ.get("GASTOWN_POLECAT") else locate_crew(town, cwd)
    if crew is not None:
        return _crew_done(args, town, *crew)
    if args.bead is not None:
        raise UsageError("--bead is for a crew workspace; a polecat's bead is its hook")
    rig, name = locate_polecat(town, os.environ, cwd)
    with store_of(town) as store, bound(rig=rig, polecat=name):
        result = record_done(town, store, rig, name, args.status, reason=args.reason)
        get_logger().info("polecat_done", outcome=args.status,
                          mr=result.merge_request.id if result.merge_request else None)
    if result.merge_request is not None:
        print(f"done: merge request {result.merge_request.id} queued for "
              f"{result.merge_request.branch}")
    else:
        print(f"done: {rig}/{name} recorded as {args.status}")
    return 0


def cmd_prime(args: argparse.Namespace) -> int:
    """The polecat's context for its agent (a SessionStart hook runs this): exit 0 inside a
    polecat whatever can be read; outside one, one line and exit 1."""
    from ...roles.adapters.town import find_town
    from ...roles.operations import prime
    from ...roles.operations.polecat_done import locate_polecat
    from ._context import search_dir

    town = None
    try:  # not town_of(): a broken town.toml must not keep an agent from its context
        town = find_town(args.town, os.environ, search_dir(args.town))
    except GastownError:
        pass
    where: tuple[str, str] | None = None
    if os.environ.get("GASTOWN_RIG") and os.environ.get("GASTOWN_POLECAT"):
        where = os.environ["GASTOWN_RIG"], os.environ["GASTOWN_POLECAT"]
    elif town is not None:
        try:
            where = locate_polecat(town, os.environ, current_dir())
        except GastownError:
            pass
    if where is None:
        raise GastownError("not in a polecat worktree")
    rig, name = where
    try:
        context = prime.gather(town, rig, name, os.environ) if town is not None else \
            prime.from_env(rig, name, os.environ, note="the town was not found")
    except Exception as exc:  # a hook must never fail the agent
        context = prime.from_env(rig, name, os.environ, note=str(exc))
    if args.json:
        print_json(context.as_json())
    else:
        sys.stdout.write(prime.render(context))
    return 0


def _crew_done(args: argparse.Namespace, town: Any, rig: str, name: str) -> int:
    """``gastown done`` in a crew workspace: its branch into the merge queue."""
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.crew_submit import submit_crew

    if args.status != "completed" or args.reason is not None:
        raise UsageError("--status and --reason are for polecats; in a crew workspace "
                         "'gastown done' submits the branch")
    with store_of(town) as store, bound(rig=rig, crew=name):
        mr = submit_crew(town, store, rig, name, bead=args.bead)
        get_logger().info("crew_submitted", mr=mr.id, bead=mr.bead)
    print(f"done: merge request {mr.id} queued for {mr.branch} (bead {mr.bead}); the "
          "workspace stays and is brought up to date after the merge")
    return 0


def cmd_polecat_list(args: argparse.Namespace) -> int:
    from ...roles.operations.polecat_sessions import session_alive

    town = town_of(args)
    with store_of(town) as store:
        polecats = store.polecats(listed_rig(store, args.rig))
    alive = {(p.rig, p.name): session_alive(p) for p in polecats}

    def as_json_row(p: Polecat) -> dict[str, Any]:
        return {"rig": p.rig, "name": p.name, "bead": p.bead, "branch": p.branch,
                "state": p.state, "session_alive": alive[p.rig, p.name],
                "agent": p.agent, "worktree": p.worktree, "respawns": p.respawns,
                "reason": p.reason, "output_tail": p.output_tail,
                "incarnation": p.incarnation, "created_at": p.created_at,
                "age": round(time.time() - p.created_at, 1), "turns": p.turns,
                "tokens_in": p.tokens_in, "tokens_out": p.tokens_out,
                "cost_usd": p.cost_usd, "nudges": p.nudges, "slot": p.slot,
                "port": p.port}

    if print_json_or_empty(args.json, polecats, as_json_row, "no polecats"):
        return 0
    from ...roles.adapters.agent_usage import short_count

    # The tokens column (in/out) only where some agent reported any; the port column
    # only where a rig gives its polecats ports (``polecats.ports``).
    tokens = any(p.tokens_in or p.tokens_out for p in polecats)
    ports = any(p.port is not None for p in polecats)
    print_table(["RIG", "NAME", "BEAD", "STATE", "SESSION", "AGE"]
                + (["TOKENS"] if tokens else []) + (["PORT"] if ports else []) + ["BRANCH"],
                [[p.rig, p.name, p.bead, p.state + (f" ({p.reason})" if p.reason else ""),
                  "alive" if alive[p.rig, p.name] else "dead", age(p.created_at)]
                 + ([f"{short_count(p.tokens_in)}/{short_count(p.tokens_out)}"]
                    if tokens else [])
                 + ([str(p.port) if p.port is not None else "-"] if ports else [])
                 + [p.branch]
                 for p in polecats])
    for p in polecats:
        if p.state == "escalated" and p.output_tail:
            print(f"\n{p.rig}/{p.name} escalated: {p.reason or '-'}; last output:")
            for line in p.output_tail.splitlines():
                print(f"  | {line}")
    return 0


def cmd_polecat_nuke(args: argparse.Namespace) -> int:
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.nuking import nuke_polecat

    rig, name = _rig_and_name(args.target)
    town = town_of(args)
    with store_of(town) as store, bound(rig=rig, polecat=name):
        polecat = nuke_polecat(town, store, rig, name, force=args.force,
                               reason="nuked by hand" + (" (forced)" if args.force else ""))
        get_logger().info("polecat_nuked", forced=args.force, bead=polecat.bead)
    print(f"nuked {rig}/{name}")
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    from ...roles.operations.polecat_sessions import session_info

    rig, name = _rig_and_name(args.target)
    town = town_of(args)
    with store_of(town) as store:
        polecat = store.polecat(rig, name)
    info = session_info(polecat)
    if info is None:
        raise GastownError(f"polecat {rig}/{name} has no session")
    from ...roles.adapters.sessions import attach_argv, session_alive

    if not session_alive(info):
        raise GastownError(f"the session of {rig}/{name} is not running; its output is in "
                           f"{info.log_path}")
    argv = attach_argv(info)
    if argv is None:
        print(f"{rig}/{name} runs without a terminal (process backend); following its "
              f"output in {info.log_path}", file=sys.stderr)
        argv = ["tail", "-n", "50", "-f", str(info.log_path)]
    sys.stdout.flush()
    os.execvp(argv[0], argv)
