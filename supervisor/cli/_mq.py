"""``gastown mq list|show|check``: the merge queue — queued, running (which gate), recent
outcomes, one MR's steps and gate output, and a rig's gates run on its default branch.

Layer: cli, over the store and :mod:`gastown.roles.operations.gate_check`.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from ._context import listed_rig, require_rig, store_of, town_of
from ._output import age, iso, mr_json, print_json, print_json_or_empty, print_table

if TYPE_CHECKING:
    from ...roles.adapters.store import MergeRequest
    from ...roles.adapters.town import Town

RECENT = 20
#: Lines of a rejected MR's failing output that ``mq list`` prints (``mq show``: all kept).
LIST_TAIL = 8


def cmd_mq_list(args: argparse.Namespace) -> int:

    town = town_of(args)
    with store_of(town) as store:
        mrs = store.merge_requests(listed_rig(store, args.rig))
    active = [m for m in mrs if m.state in ("queued", "running")]
    done = sorted((m for m in mrs if m.state not in ("queued", "running")),
                  key=lambda m: m.updated_at, reverse=True)[:RECENT]
    rows = active + done
    if print_json_or_empty(args.json, rows, mr_json, "the merge queue is empty"):
        return 0

    def what(m: object) -> str:
        from ...roles.adapters.store import MergeRequest

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
    for m in rows:
        if m.state == "rejected" and (m.log_path or m.tail):
            print(f"\n{m.id} rejected: {m.reason or '?'}")
            if m.log_path:
                print(f"  gate log: {m.log_path}")
            for line in (m.tail or "").splitlines()[-LIST_TAIL:]:
                print(f"  | {line}")
    return 0


def cmd_mq_show(args: argparse.Namespace) -> int:
    """One merge request: state, steps with timings, gate output tail, log path."""
    town = town_of(args)
    with store_of(town) as store:
        mr = store.merge_request(args.id)
    tail = mr.tail or _log_tail(mr.log_path)
    if args.json:
        print_json({**mr_json(mr), "tail": tail, "timings": _timings(mr)})
        return 0
    print(f"{mr.id}  {mr.state}" + (f": {mr.reason}" if mr.reason else ""))
    print(f"  rig:      {mr.rig}")
    print(f"  bead:     {mr.bead}")
    print(f"  {mr.kind + ':':9} {mr.polecat} ({mr.branch})")
    print(f"  priority: {mr.priority}")
    print(f"  head:     {mr.head or '-'}" + (f" (on {mr.base[:10]})" if mr.base else ""))
    if mr.candidate:
        print(f"  tested:   {mr.candidate}")
    if mr.merged_commit:
        print(f"  merged:   {mr.merged_commit}")
    print(f"  created:  {iso(mr.created_at)} ({age(mr.created_at)} ago)")
    timings = _timings(mr)
    if timings:
        print("  steps:")
        for step in timings:
            took = f"{step['seconds']:.2f}s" if step["seconds"] is not None else "running"
            print(f"    {iso(step['at'])}  {step['step']}"
                  + (f" ({step['gate']})" if step["gate"] else "") + f"  {took}")
    print(f"  gate log: {mr.log_path or '-'}")
    if tail:
        print("  gate output (last lines):")
        for line in tail.splitlines():
            print(f"    | {line}")
    return 0


def _timings(mr: MergeRequest) -> list[dict[str, Any]]:
    """Each recorded step with how long it took (until the next step, or until the MR
    settled; None while it is still the running step)."""
    steps = [dict(s) for s in mr.steps]
    settled = mr.state not in ("queued", "running")
    for i, step in enumerate(steps):
        end = steps[i + 1]["at"] if i + 1 < len(steps) else (
            mr.updated_at if settled else None)
        step["seconds"] = round(max(0.0, end - step["at"]), 3) if end is not None else None
    return steps


def _log_tail(path: str | None, lines: int = 20) -> str | None:
    """The last lines of a gate log (for an MR that was not rejected), if it exists."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:]) or None


def cmd_mq_check(args: argparse.Namespace) -> int:
    """Run the rig's gates on its default branch; exit 0 when all pass, else 1."""
    town = town_of(args)
    with store_of(town) as store:
        rig = require_rig(store, args.rig)
    return run_check(town, rig.name, as_json=args.json)


def run_check(town: Town, rig: str, *, as_json: bool = False) -> int:
    """``mq check`` (and ``rig add --check``): print each gate's result and the log."""
    from ...roles.adapters.log import bound, get_logger
    from ...roles.operations.gate_check import check_gates

    with bound(rig=rig):
        found = check_gates(town, rig)
        get_logger().info("gates_checked", commit=found.commit, ok=found.ok,
                          gates=[f"{r.name}:{'ok' if r.ok else 'failed'}"
                                 for r in found.results])
    if as_json:
        print_json({"rig": rig, "branch": found.branch, "commit": found.commit,
                    "ok": found.ok, "log": str(found.log_path),
                    "gates": [{"name": r.name, "ok": r.ok, "exit_code": r.exit_code,
                               "timed_out": r.timed_out, "duration": round(r.duration, 3),
                               "tail": r.tail} for r in found.results]})
        return 0 if found.ok else 1
    if not found.gates:
        print(f"rig {rig} has no gates to check: add [[merge_queue.gates]] to "
              f"{town.rig_config_path(rig)}, then run 'gastown mq check {rig}'")
        return 0
    print(f"checking rig {rig}: {found.branch} at {found.commit[:10]}")
    width = max(len(name) for name in found.gates)
    for result in found.results:
        if result.ok:
            outcome = f"passed in {result.duration:.2f}s"
        elif result.timed_out:
            outcome = f"FAILED: timed out after {result.duration:.0f}s"
        else:
            outcome = f"FAILED (exit {result.exit_code}) in {result.duration:.2f}s"
        print(f"  {result.name:{width}}  {outcome}")
    for name in found.gates[len(found.results):]:
        print(f"  {name:{width}}  not run (an earlier gate failed)")
    print(f"gate log: {found.log_path}")
    failed = next((r for r in found.results if not r.ok), None)
    if failed is not None:
        print(f"failing output of {failed.name} (last lines):")
        for line in failed.tail.splitlines():
            print(f"  | {line}")
        return 1
    print(f"all gates pass on {found.branch}")
    return 0
