"""Commands that start, stop and inspect the running town: ``up``, ``down``, ``status``.

Layer: cli, over the supervisor (which ``up`` starts) and the bus (which ``down`` and
``status`` ask).

``up`` and ``down`` agree on the town's state through locks, never through timing:
``up`` holds ``.runtime/start.lock`` from before it spawns the supervisor until that
supervisor holds the town's lock (or died), so a ``down`` issued during a start-up
waits for the supervisor to exist and stops it; the ``up`` then reports that the
start-up was stopped (exit 1) instead of a running town.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import time
from typing import Any

from ...roles.adapters.town import Town
from ...roles.core.errors import GastownError, UsageError
from ._context import store_of, town_of
from ._convoys import convoys_status_json, print_convoys_status
from ._output import age, print_json, print_table
from ._supervisor_start import UP_TIMEOUT, run_foreground, start_daemon

#: How long ``down`` waits for role processes to follow a supervisor that is gone: they
#: exit at once, or by their lifeline backstop 5 s later (a role blocked in a call).
ROLES_EXIT_TIMEOUT = 15.0
#: Overrides :data:`ROLES_EXIT_TIMEOUT` (seconds; tests that leave a stray role use a short one).
ROLES_EXIT_TIMEOUT_ENV = "GASTOWN_ROLES_EXIT_TIMEOUT"

#: Events that ``status`` lists as recent failures.
FAILURE_KINDS = ("role_failed", "mr_rejected", "polecat_escalated", "sling_failed",
                 "reload_refused", "polecat_noted")


def _bus(town: Town) -> Any:
    return town.runtime_dir / "bus.sock"


def _check_config(town: Town) -> None:
    """Refuse to start a town whose town.toml or any rig.toml is broken (one line)."""
    town.config  # noqa: B018 - validation
    with store_of(town) as store:
        for rig in store.rigs():
            town.rig_config(rig.name)


def cmd_up(args: argparse.Namespace) -> int:
    from ...roles.adapters.town_lock import hold_start_lock, read_supervisor

    town = town_of(args)
    if args.foreground:
        _check_config(town)
        return run_foreground(town, args.ready_fd, args.start_lock_fd)
    # First of all: from here on a `down` knows that a start-up is under way.
    start_fd = hold_start_lock(town.runtime_dir, timeout=UP_TIMEOUT)
    try:
        _check_config(town)
        running = read_supervisor(town.runtime_dir)
        if running is not None:
            print(f"town already up (supervisor pid {running.pid})")
            return _print_status(town, as_json=False)
        fd, start_fd = start_fd, None
        outcome = start_daemon(town, timeout=args.timeout, start_fd=fd)
    finally:
        if start_fd is not None:
            os.close(start_fd)
    if outcome.get("already"):
        print(f"town already up (supervisor pid {outcome['already']})")
        return _print_status(town, as_json=False)
    code = _print_status(town, as_json=False)
    if not outcome.get("ok"):
        print(f"gastown: {outcome.get('error', 'the supervisor did not start')}", file=sys.stderr)
        return 1
    return code


def cmd_down(args: argparse.Namespace) -> int:
    from ...roles.adapters.town_lock import (
        read_supervisor,
        start_in_progress,
        wait_start_settled,
        wait_supervisor_exit,
    )
    from ...roles.core.config import Seconds
    from ..bus.errors import BusError
    from ..bus.protocol import BUS_PEER
    from ..bus.requests import Bare
    from ..bus.sync_client import call_sync

    town = town_of(args)
    running = read_supervisor(town.runtime_dir)
    if running is None and start_in_progress(town.runtime_dir):
        # `up` is starting a supervisor that does not hold the town yet: stop that one.
        print("the town is starting; waiting for its supervisor, to stop it", flush=True)
        if not wait_start_settled(town.runtime_dir, timeout=UP_TIMEOUT + 30):
            print(f"gastown: the town's start-up did not settle within {UP_TIMEOUT + 30:g}s; "
                  "try again", file=sys.stderr)
            return 1
        running = read_supervisor(town.runtime_dir)
    if running is None:
        print("town is already down")
        if not _roles_gone(town):
            return 1
        return _stop_sessions(town) if args.all else 0
    try:
        call_sync(_bus(town), BUS_PEER, Bare("shutdown"), timeout=10)
    except BusError:
        # The bus does not answer (hung or half-started supervisor): signal it instead.
        os.kill(running.pid, 15)
    try:
        grace = town.config.supervisor.stop_timeout
    except GastownError:
        grace = Seconds(10.0)  # a broken town.toml must not keep a town from stopping
    if not wait_supervisor_exit(town.runtime_dir, timeout=grace * 10 + 30):
        print(f"gastown: the supervisor (pid {running.pid}) is still running after "
              f"{grace * 10 + 30:g}s", file=sys.stderr)
        return 1
    _wait_pid_exit(running.pid, running.start_time, timeout=10)
    print("town stopped")
    if not _roles_gone(town):
        return 1
    return _stop_sessions(town) if args.all else 0


def _roles_gone(town: Town) -> bool:
    """Wait for every role process to have released its lock; say which one has not."""
    from ...roles.adapters.town_lock import wait_roles_exit

    try:
        timeout = float(os.environ.get(ROLES_EXIT_TIMEOUT_ENV) or ROLES_EXIT_TIMEOUT)
    except ValueError:
        timeout = ROLES_EXIT_TIMEOUT
    left = wait_roles_exit(town.runtime_dir, timeout=timeout)
    if left:
        names = ", ".join(f"{role} (pid {pid if pid is not None else 'unknown'})"
                          for role, pid in left.items())
        print(f"gastown: role process still running without this town's supervisor: {names}",
              file=sys.stderr)
    return not left


def _stop_sessions(town: Town) -> int:
    """``down --all``: stop every polecat's agent session; worktrees and work stay; the
    idle trees of the warm pools go."""
    from ...roles.adapters.processes import process_start_time
    from ...roles.adapters.tmux import SessionError, server_pid, town_sessions
    from ...roles.operations.polecat_sessions import session_alive, stop_polecat_session
    from ...roles.operations.worktree_pool import drain

    with store_of(town) as store:
        polecats, rigs = store.polecats(), [rig.name for rig in store.rigs()]
    server = server_pid(town.root)
    stopped = 0
    for polecat in polecats:
        stopped += session_alive(polecat)
        stop_polecat_session(town, polecat)
    with contextlib.suppress(SessionError):  # tmux in trouble: the sessions are stopped
        if server is not None and not town_sessions(town.root):
            # The town's tmux server exits with its last session, a moment after it:
            # gone when this command returns (seen: a check right after `down --all`).
            start = process_start_time(server)
            if start is not None:
                _wait_pid_exit(server, start, timeout=5.0)
    print(f"stopped {stopped} agent session(s); worktrees are kept")
    pooled = sum(drain(town, rig) for rig in rigs)
    if pooled:
        print(f"removed {pooled} idle pooled worktree(s)")
    return 0


def _wait_pid_exit(pid: int, start_time: int, *, timeout: float) -> None:
    """Wait for the process to be gone (it has released its lock and is exiting)."""
    from ...roles.adapters.processes import is_same_process

    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return
    try:
        if is_same_process(pid, start_time):
            select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)


def gather_status(town: Town) -> dict[str, Any]:
    """The town's status as the JSON contract: live from the bus when up, else the store."""
    from ...roles.adapters.town_lock import read_supervisor
    from ..bus.errors import BusError
    from ..bus.protocol import BUS_PEER
    from ..bus.requests import Bare
    from ..bus.sync_client import call_sync

    running = read_supervisor(town.runtime_dir)
    live: dict[str, Any] | None = None
    if running is not None:
        try:
            live = call_sync(_bus(town), BUS_PEER, Bare("status"), timeout=10)
        except BusError:
            live = None
    with store_of(town) as store:
        rigs = store.rigs()
        counts = store.counts()
        recorded = store.roles()
        polecats = store.polecats()
        queue = [m for m in store.merge_requests() if m.state in ("queued", "running")]
        failures = store.recent_events(FAILURE_KINDS, limit=5)
        slings = store.sling_queue()
        usage, convoys = store.usage_totals(), convoys_status_json(store)
    status: dict[str, Any] = {"town": str(town.root), "convoys": convoys}
    if live is not None:
        status["supervisor"] = live["supervisor"]
        status["roles"] = live["roles"]
    else:
        status["supervisor"] = {"pid": running.pid if running else None,
                                "state": "unresponsive" if running else "down"}
        status["roles"] = [{"name": r.name, "pid": None, "state": "down", "uptime": None,
                            "restarts": r.restarts, "last_exit": r.last_exit,
                            "last_state": r.state, "reason": r.reason} for r in recorded]
    from ...roles.operations.rigs import merge_queue_notes

    status["rigs"] = [{"name": r.name, "default_branch": r.default_branch, "prefix": r.prefix,
                       "path": str(town.rig_dir(r.name)), "mq_paused": r.mq_paused,
                       "push_error": r.push_error, **merge_queue_notes(town, r)} for r in rigs]
    status["polecats"] = counts["polecats"]
    status["merge_requests"] = counts["merge_requests"]
    status["polecat_list"] = [{"rig": p.rig, "name": p.name, "state": p.state, "bead": p.bead,
                               "reason": p.reason, "created_at": p.created_at}
                              for p in polecats]
    status["merge_queue"] = [{"id": m.id, "rig": m.rig, "bead": m.bead, "state": m.state,
                              "step": m.step, "gate": m.gate} for m in queue]
    status["queued_slings"] = [{"id": q.sling.id, "position": q.position,
                                "bead": q.sling.bead, "rig": q.sling.rig,
                                "agent": q.sling.agent, "created_at": q.sling.created_at,
                                "waiting": q.waiting}
                               for q in slings]
    status["recent_failures"] = [e.as_json() for e in failures]
    status["usage"] = usage  # what agents reported spending: turns, tokens, cost
    return status


def _print_status(town: Town, *, as_json: bool) -> int:
    from ..feed import describe_exit

    status = gather_status(town)
    if as_json:
        print_json(status)
        return 0
    sup = status["supervisor"]
    print(f"town:       {status['town']}")
    if sup["state"] in ("down", "unresponsive"):
        print(f"supervisor: {sup['state']}" + (f" (pid {sup['pid']})" if sup["pid"] else ""))
    else:
        print(f"supervisor: {sup['state']}, pid {sup['pid']}, up "
              f"{age(time.time() - sup['uptime'])} (gastown {sup.get('version', '?')})")
    if status["roles"]:
        rows = []
        for role in status["roles"]:
            uptime = age(time.time() - role["uptime"]) if role.get("uptime") else "-"
            last = describe_exit(role["last_exit"]) if role.get("last_exit") is not None or \
                role["restarts"] else "-"
            rows.append([role["name"], role["state"], role["pid"], uptime, role["restarts"],
                         last + (f" ({role['reason']})" if role.get("reason") else "")])
        print()
        print_table(["ROLE", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT"], rows)
    print()
    rigs = ", ".join(f"{r['name']} ({r['default_branch']})" for r in status["rigs"]) or "none"
    print(f"rigs:           {rigs}")
    for line in (note for r in status["rigs"] for note in r["notes"]):
        print(f"  {line}")  # merged work not on the remote yet, a paused merge queue
    print(f"polecats:       {_counts(status['polecats'])}")
    print(f"merge requests: {_counts(status['merge_requests'])}")
    print_convoys_status(status["convoys"])
    usage = status["usage"]
    if usage["turns"] or usage["tokens_in"] or usage["tokens_out"]:
        from ...roles.adapters.agent_usage import dollars

        print(f"agents:         {usage['turns']} turns, {usage['tokens_in']} tokens in, "
              f"{usage['tokens_out']} out, {dollars(usage['cost_usd'])}")
    if status["polecat_list"]:
        print()
        print_table(["POLECAT", "STATE", "BEAD", "AGE"],
                    [[f"{p['rig']}/{p['name']}", p["state"] + (f" ({p['reason']})"
                                                              if p["reason"] else ""),
                      p["bead"], age(p["created_at"])] for p in status["polecat_list"]])
    if status["merge_queue"]:
        print()
        print_table(["MR", "RIG", "BEAD", "STATE"],
                    [[m["id"], m["rig"], m["bead"], m["state"] + (
                        f": {m['step']}" + (f" ({m['gate']})" if m["gate"] else "")
                        if m["state"] == "running" else "")] for m in status["merge_queue"]])
    if status["queued_slings"]:
        print()
        print_table(["QUEUED", "SLING", "BEAD", "RIG", "WAITING", "FOR"],
                    [[q["position"], f"#{q['id']}", q["bead"], q["rig"], age(q["created_at"]),
                      q.get("waiting") or "a free slot"]
                     for q in status["queued_slings"]])
    if status["recent_failures"]:
        from ..feed import format_event

        print()
        print("recent failures:")
        for event in status["recent_failures"]:
            print(f"  {format_event(event)}")
    return 0


def _counts(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + ")"


def cmd_status(args: argparse.Namespace) -> int:
    town = town_of(args)
    if args.watch is None:
        return _print_status(town, as_json=args.json)
    if args.json:
        raise UsageError("--watch shows the readable status; use --json without --watch")
    interval = max(0.5, args.watch)
    try:
        while True:
            # Home the cursor and clear below it: the screen is rewritten in place.
            sys.stdout.write("\x1b[H\x1b[J")
            _print_status(town, as_json=False)
            print(f"\n(refreshing every {interval:g}s; Ctrl-C to quit)", flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """Re-read town.toml and the rigs' rig.toml; restart only the roles that changed."""

    from ...roles.adapters.town import find_town
    from ..bus.errors import BusError
    from ..bus.protocol import BUS_PEER
    from ..bus.requests import Bare
    from ..bus.sync_client import call_sync

    # Not town_of(): that loads town.toml, and a broken one is exactly what the supervisor
    # must be the one to refuse (keeping the configuration it runs).
    from ._context import search_dir

    town = find_town(args.town, os.environ, search_dir(args.town))
    try:
        result: dict[str, Any] = call_sync(_bus(town), BUS_PEER, Bare("reload"), timeout=300)
    except BusError as exc:
        raise GastownError(f"the town is not running ({exc.message})") from None
    if not result.get("ok"):
        raise GastownError(f"reload refused, the running configuration stays: "
                           f"{result.get('error')}")
    restarted = result.get("restarted") or []
    print("reloaded; restarted: " + (", ".join(restarted) if restarted else "nothing"))
    return 0
