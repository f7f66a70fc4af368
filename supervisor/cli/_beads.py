"""Commands of the bead ledger: ``bead create|list|show|update|close|reopen|dep``.

Layer: cli, over the store (:mod:`gastown.roles.adapters.store`).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ._context import listed_rig, require_rig, store_of, town_of
from ._output import age, iso, mr_json, print_json, print_json_or_empty, print_table

if TYPE_CHECKING:
    from ...roles.adapters._store_needs import NeedState
    from ...roles.adapters._store_town import QueuedSling
    from ...roles.adapters.store import Bead, Polecat, Store
    from ...roles.adapters.town import Town


def cmd_create(args: argparse.Namespace) -> int:
    from ...roles.adapters.log import bound, get_logger
    from ...roles.core.errors import UsageError

    title = args.title.strip()
    if not title:
        raise UsageError("a bead needs a non-empty title")
    needs = list(dict.fromkeys(n.strip() for text in args.needs for n in text.split(",")
                               if n.strip()))
    town = town_of(args)
    with store_of(town) as store:
        rig = require_rig(store, args.rig) if args.rig is not None else None
        prefix = rig.prefix if rig is not None else town.config.prefix
        bead = store.create_bead(prefix=prefix, rig=args.rig, title=title,
                                 description=args.description, priority=args.priority,
                                 needs=needs)
    with bound(bead=bead.id, rig=bead.rig):
        get_logger().info("bead_created", title=bead.title, priority=bead.priority)
    print(bead.id)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ...roles.adapters.store import BEAD_STATUSES
    from ...roles.core.errors import UsageError

    statuses = None
    if args.status:
        statuses = [s.strip() for s in args.status.split(",") if s.strip()]
        unknown = [s for s in statuses if s not in (*BEAD_STATUSES, "waiting")]
        if unknown:
            raise UsageError(f"unknown bead status {unknown[0]!r} (known: "
                             f"{', '.join(BEAD_STATUSES)}, waiting)")
    town = town_of(args)
    with store_of(town) as store:
        # ``waiting`` (needs not closed) is derived: read every status, then filter.
        stored = None if statuses is None or "waiting" in statuses else statuses
        beads = store.beads(rig=listed_rig(store, args.rig), statuses=stored)
        waiting = store.waiting_beads()  # only beads with needs: no id list to pass
        needs = store.needs_ids()
    if statuses is not None:
        beads = [b for b in beads if b.status in statuses
                 or ("waiting" in statuses and b.id in waiting)]

    def as_json(bead: Bead) -> dict[str, Any]:
        return {**asdict(bead), "state": _state(bead, waiting.get(bead.id)),
                "waiting": waiting.get(bead.id), "needs": needs.get(bead.id, [])}

    if print_json_or_empty(args.json, beads, as_json, "no beads"):
        return 0
    print_table(["ID", "P", "STATUS", "RIG", "AGE", "TITLE"],
                [[b.id, b.priority, _state(b, waiting.get(b.id)), b.rig, age(b.created_at),
                  b.title + (f"  [{waiting[b.id]}]" if b.id in waiting else "")]
                 for b in beads])
    return 0


def _state(bead: Bead, waiting: str | None) -> str:
    """The status a person reads: an open bead with needs not closed is ``waiting``
    (``blocked`` when one of them will not close without a person)."""
    if waiting is None or bead.status != "open":
        return bead.status
    return "blocked" if waiting.startswith("blocked on") else "waiting"


def cmd_dep_add(args: argparse.Namespace) -> int:
    with store_of(town_of(args)) as store:
        added = store.add_need(args.id, args.need)
        need = store.bead(args.need)
    print(f"{args.id} needs {args.need} ({need.status})" if added
          else f"{args.id} already needs {args.need}")
    return 0


def cmd_dep_remove(args: argparse.Namespace) -> int:
    with store_of(town_of(args)) as store:
        store.remove_need(args.id, args.need)
        waiting = store.waiting_beads([args.id]).get(args.id)
    print(f"{args.id} no longer needs {args.need}"
          + (f"; still {waiting}" if waiting else ""))
    return 0


def cmd_dep_list(args: argparse.Namespace) -> int:
    with store_of(town_of(args)) as store:
        edges = store.needs_ids()
        waiting = store.waiting_beads(sorted(edges))
        rows = [{"bead": bead, "need": need, "need_status": store.bead(need).status,
                 "waiting": waiting.get(bead)}
                for bead, needs in sorted(edges.items()) for need in needs]
    if print_json_or_empty(args.json, rows, lambda row: row, "no needs"):
        return 0
    print_table(["BEAD", "NEEDS", "ITS STATUS", "WAITING"],
                [[r["bead"], r["need"], r["need_status"], r["waiting"] or "-"] for r in rows])
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from ...roles.core.errors import UsageError

    title = args.title.strip() if args.title is not None else None
    if title == "":
        raise UsageError("a bead needs a non-empty title")
    if title is None and args.description is None and args.priority is None and \
            args.status is None:
        raise UsageError("nothing to update: give --title, -d, -p or --status")
    town = town_of(args)
    with store_of(town) as store:
        bead = store.update_bead(args.id, title=title, description=args.description,
                                 priority=args.priority, status=args.status)
    print(f"{bead.id} updated ({bead.status}, priority {bead.priority}): {bead.title}")
    return 0


def cmd_close(args: argparse.Namespace) -> int:
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.polecat_sessions import stop_polecat_session

    town = town_of(args)
    with store_of(town) as store:
        bead = store.bead(args.id)
        commit = _landed_commit(town, store, bead, args.commit) if args.commit else None
        stop = store.close_bead(bead.id, reason=args.reason, commit=commit, force=args.force)
        stopped = {(p.rig, p.name) for p in stop}
        kept = [p for p in store.bead_work(bead.id).polecats
                if (p.rig, p.name) not in stopped]
    log = get_logger()
    with bound(bead=bead.id, rig=bead.rig):
        log.info("bead_closed_by_hand", reason=args.reason, commit=commit, force=args.force,
                 stopped=[f"{p.rig}/{p.name}" for p in stop])
        for polecat in stop:
            # After the store commit: the witness sees `escalated` and respawns nothing.
            try:
                stop_polecat_session(town, polecat)
            except OSError as exc:
                log.warning("session_stop_failed", polecat=polecat.name, error=str(exc))
    print(f"{bead.id} closed" + (f" (landed as {commit[:10]})" if commit else ""))
    for polecat in stop:
        print(f"  stopped polecat {polecat.rig}/{polecat.name}; its work is kept in "
              f"{polecat.worktree} on {polecat.branch}")
    for polecat in kept:
        print(f"  polecat {polecat.rig}/{polecat.name} ({polecat.state}) keeps its work in "
              f"{polecat.worktree} on {polecat.branch}")
    return 0


def _landed_commit(town: Town, store: Store, bead: Bead, commit: str) -> str:
    """The full id of ``commit``, verified to be on the default branch of the bead's rig."""
    import re

    from ...roles.adapters import git
    from ...roles.core.errors import Refused, UsageError

    if not re.fullmatch(r"[0-9a-fA-F]{4,40}", commit):
        raise UsageError(f"--commit wants a commit id (hex), not {commit!r}")
    if bead.rig is None:
        raise Refused(f"bead {bead.id} has no rig: --commit needs the rig whose default "
                      "branch holds the commit")
    branch = store.rig(bead.rig).default_branch
    clone = town.refinery_clone(bead.rig)
    full = git.rev(clone, commit) if clone.is_dir() else None
    if full is None:
        raise Refused(f"commit {commit} is not in rig {bead.rig}'s repository ({clone})")
    if not git.is_ancestor(clone, full, branch):
        raise Refused(f"commit {full[:10]} is not on {branch} of rig {bead.rig} ({clone})")
    return full


def cmd_reopen(args: argparse.Namespace) -> int:
    with store_of(town_of(args)) as store:
        bead = store.reopen_bead(args.id, reason=args.reason)
    print(f"{bead.id} reopened")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with store_of(town_of(args)) as store:
        bead = store.bead(args.id)
        work = store.bead_work(bead.id)
        history = store.polecat_history(bead=bead.id)
        needs = store.bead_needs(bead.id)
    if args.json:
        print_json({**asdict(bead), "state": _state(bead, needs.waiting),
                    "waiting": needs.waiting,
                    "blocked": any(n.blocked for n in needs.needs if n.status != "closed"),
                    "needs": [_need_json(n) for n in needs.needs],
                    "needed_by": [_need_json(n) for n in needs.needed_by],
                    "polecats": [_polecat_json(p) for p in work.polecats],
                    "merge_requests": [mr_json(m) for m in work.merge_requests],
                    "queued_slings": [_sling_json(q) for q in work.queued_slings],
                    "past_polecats": history})
        return 0
    print(f"{bead.id}  {bead.title}")
    print(f"  status:   {bead.status}" + (f" ({bead.reason})" if bead.reason else ""))
    if needs.waiting:
        print(f"  {_state(bead, needs.waiting) if bead.status == 'open' else 'waiting'}:"
              f"  {needs.waiting}")
    if needs.needs:
        print("  needs:    " + ", ".join(_need_text(n) for n in needs.needs))
    if needs.needed_by:
        print("  needed by: " + ", ".join(_need_text(n) for n in needs.needed_by))
    if bead.closed_commit:
        print(f"  landed:   {bead.closed_commit}")
    print(f"  rig:      {bead.rig or '-'}")
    print(f"  priority: {bead.priority}")
    if bead.tokens_in or bead.tokens_out or bead.cost_usd:
        from ...roles.adapters.agent_usage import dollars

        print(f"  tokens:   in {bead.tokens_in}, out {bead.tokens_out}, "
              f"cost {dollars(bead.cost_usd)}")
    print(f"  created:  {iso(bead.created_at)} ({age(bead.created_at)} ago)")
    print(f"  updated:  {iso(bead.updated_at)}")
    if bead.description:
        print("  description:")
        for line in bead.description.splitlines():
            print(f"    {line}")
    for queued in work.queued_slings:
        sling = queued.sling
        print(f"  queued sling #{sling.id} to {sling.rig}: position {queued.position} in "
              f"the queue, waiting {age(sling.created_at)}"
              + (f" ({queued.waiting})" if queued.waiting else ""))
    for polecat in work.polecats:
        print(f"  polecat {polecat.rig}/{polecat.name}: {polecat.state}"
              + (f" ({polecat.reason})" if polecat.reason else ""))
        print(f"    worktree {polecat.worktree} on {polecat.branch}")
        _print_tail("session output", polecat.output_tail)
    for past in history:
        print(f"  past polecat {past['rig']}/{past['name']} ({past['incarnation'] or '-'}): "
              f"{past['ended']} {age(past['nuked_at'])} ago, after {past['last_state']}"
              + (f" ({past['reason']})" if past["reason"] else ""))
    for mr in work.merge_requests:
        print(f"  merge request {mr.id}: {mr.state}" + (f" ({mr.reason})" if mr.reason else "")
              + (f", merged as {mr.merged_commit[:10]}" if mr.merged_commit else ""))
        if mr.log_path:
            print(f"    gate log: {mr.log_path}")
        _print_tail("failing output", mr.tail)
    return 0


def _print_tail(what: str, tail: str | None, lines: int = 20) -> None:
    if not tail:
        return
    print(f"    {what} (last lines):")
    for line in tail.splitlines()[-lines:]:
        print(f"      | {line}")


def _polecat_json(p: Polecat) -> dict[str, Any]:
    return {"rig": p.rig, "name": p.name, "state": p.state, "reason": p.reason,
            "branch": p.branch, "worktree": p.worktree, "agent": p.agent,
            "respawns": p.respawns, "incarnation": p.incarnation,
            "output_tail": p.output_tail, "created_at": p.created_at,
            "updated_at": p.updated_at, "turns": p.turns, "tokens_in": p.tokens_in,
            "tokens_out": p.tokens_out, "cost_usd": p.cost_usd, "nudges": p.nudges}


def _sling_json(q: QueuedSling) -> dict[str, Any]:
    return {"id": q.sling.id, "rig": q.sling.rig, "agent": q.sling.agent,
            "position": q.position, "created_at": q.sling.created_at,
            "waiting": q.waiting}


def _need_text(n: NeedState) -> str:
    return f"{n.bead} ({n.status})" + (f" [{n.blocked}]" if n.blocked else "")


def _need_json(n: NeedState) -> dict[str, Any]:
    return {"id": n.bead, "rig": n.rig, "title": n.title, "status": n.status,
            "blocked": n.blocked}
