"""``gastown mq list``: the merge queue — queued, running (which gate), recent outcomes."""

from __future__ import annotations

import argparse
import time

from gastown.supervisor.cli._context import (
    age,
    print_json,
    print_table,
    require_rig,
    store_of,
    town_of,
)

RECENT = 20


def cmd_mq_list(args: argparse.Namespace) -> int:

    town = town_of(args)
    with store_of(town) as store:
        if args.rig is not None:
            require_rig(store, args.rig)
        mrs = store.merge_requests(args.rig)
    active = [m for m in mrs if m.state in ("queued", "running")]
    done = sorted((m for m in mrs if m.state not in ("queued", "running")),
                  key=lambda m: m.updated_at, reverse=True)[:RECENT]
    rows = active + done
    if args.json:
        print_json([{"id": m.id, "rig": m.rig, "bead": m.bead, "polecat": m.polecat,
                     "branch": m.branch, "state": m.state, "step": m.step, "gate": m.gate,
                     "priority": m.priority, "reason": m.reason, "head": m.head,
                     "merged_commit": m.merged_commit, "log": m.log_path,
                     "created_at": m.created_at, "updated_at": m.updated_at,
                     "age": round(time.time() - m.created_at, 1)} for m in rows])
        return 0
    if not rows:
        print("the merge queue is empty")
        return 0

    def what(m: object) -> str:
        from gastown.roles.store import MergeRequest

        assert isinstance(m, MergeRequest)
        if m.state == "running":
            return f"running: {m.step}" + (f" ({m.gate})" if m.gate else "")
        if m.state == "merged":
            return f"merged as {(m.merged_commit or '')[:10]}"
        if m.reason:
            return f"{m.state}: {m.reason}"
        return m.state

    print_table(["MR", "RIG", "BEAD", "POLECAT", "P", "AGE", "STATE"],
                [[m.id, m.rig, m.bead, m.polecat, m.priority, age(m.created_at), what(m)]
                 for m in rows])
    return 0
