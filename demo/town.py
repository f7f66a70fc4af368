"""Driving the demo town through the real ``gastown`` CLI, and following its live feed
until every bead has settled."""

from __future__ import annotations

import json
import queue
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.sample import _git_env


class Town:
    """The demo town, driven through the real ``gastown`` CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = _git_env()
        self.env["GASTOWN_TOWN"] = str(root)
        self.up = False

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gastown.supervisor", *args]

    def run(self, *args: str, shown: str | None = None, check: bool = True) -> str:
        """Run one command, echoing it (as ``shown`` when given) and its output."""
        print(f"\n$ gastown {shown or shlex.join(args)}", flush=True)
        proc = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True,
                              check=False)
        sys.stdout.write(proc.stdout)
        sys.stdout.write(proc.stderr)
        sys.stdout.flush()
        if check and proc.returncode != 0:
            raise DemoFailed(f"'gastown {shown or shlex.join(args)}' failed "
                             f"(exit {proc.returncode})")
        return proc.stdout

    def query(self, *args: str) -> Any:
        """A ``--json`` listing, read quietly (the settle checks run after every event)."""
        proc = subprocess.run(self.argv(*args, "--json"), env=self.env, capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise DemoFailed(f"'gastown {shlex.join(args)} --json' failed: "
                             f"{proc.stderr.strip()}")
        return json.loads(proc.stdout)


class DemoFailed(Exception):
    """The demo cannot go on, or its outcome is not the one expected."""


# -- the live feed -----------------------------------------------------------------------

class Feed:
    """``gastown feed -f --json`` as a subprocess; its events arrive on a queue."""

    def __init__(self, town: Town) -> None:
        self.proc = subprocess.Popen(town.argv("feed", "-f", "--json"), env=town.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue
        self.events.put(None)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def describe(event: dict[str, Any]) -> str:
    """One readable line for an event (the feed's own wording, merge requests shortened)."""
    from gastown.supervisor.feed import format_event

    kind = event.get("kind")
    who = f"{event.get('rig')}/{event.get('polecat')}"
    if kind == "mr_started":
        return f"merge request {event.get('mr')} started: {who} ({event.get('bead')})"
    if kind == "mr_merged":
        return (f"merge request {event.get('mr')} MERGED as {str(event.get('commit'))[:10]}"
                f" ({event.get('bead')})")
    if kind == "mr_rejected":
        reason = str(event.get("reason") or "").splitlines()[0:1]
        return f"merge request {event.get('mr')} REJECTED: {''.join(reason)} " \
               f"({event.get('bead')})"
    return format_event(event).partition("  ")[2]


# -- settling --------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    kind: str  # merged, rejected, escalated
    detail: str  # the merged commit, or the reason
    polecat: str
    branch: str
    worktree: str | None
    log: str | None = None  # the merge queue's log of its gate run

    def __str__(self) -> str:
        if self.kind == "merged":
            return f"merged as {self.detail[:10]}"
        return f"{self.kind}: {self.detail}"


def outcomes(town: Town, beads: list[str]) -> dict[str, Outcome | str]:
    """Each bead's outcome once settled, else a word on where it is."""
    by_bead = {b["id"]: b for b in town.query("bead", "list", "--rig", "calc")}
    mrs: dict[str, dict[str, Any]] = {}
    for mr in sorted(town.query("mq", "list", "calc"), key=lambda m: float(m["created_at"])):
        mrs[mr["bead"]] = mr
    polecats = {p["bead"]: p for p in town.query("polecat", "list", "calc")}
    found: dict[str, Outcome | str] = {}
    for bead_id in beads:
        bead, mr, cat = by_bead[bead_id], mrs.get(bead_id), polecats.get(bead_id)
        if bead["status"] == "blocked" or (cat is not None and cat["state"] == "escalated"):
            found[bead_id] = Outcome("escalated", str(bead.get("reason") or
                                                      (cat or {}).get("reason")),
                                     cat["name"] if cat else "?",
                                     cat["branch"] if cat else "?",
                                     cat["worktree"] if cat else None)
        elif mr is not None and mr["state"] == "merged" and bead["status"] == "closed" \
                and cat is None:
            found[bead_id] = Outcome("merged", str(mr["merged_commit"]), mr["polecat"],
                                     mr["branch"], None)
        elif mr is not None and mr["state"] == "rejected" and bead["status"] == "open" \
                and bead.get("reason"):
            found[bead_id] = Outcome("rejected", str(mr["reason"]).splitlines()[0],
                                     mr["polecat"], mr["branch"],
                                     cat["worktree"] if cat else None, mr.get("log"))
        else:
            where = f"bead {bead['status']}"
            if cat is not None:
                where += f", polecat {cat['name']} {cat['state']}"
            if mr is not None:
                where += f", MR {mr['id']} {mr['state']}" + (
                    f" ({mr['step']})" if mr.get("step") else "")
            found[bead_id] = where
    return found


SETTLE_KINDS = {"mr_merged", "mr_rejected", "polecat_nuked", "polecat_escalated",
                "polecat_rejected", "bead_status_changed"}


def follow_until_settled(town: Town, beads: list[str], since: float,
                         timeout: float) -> dict[str, Outcome]:
    """Print the live feed; after each burst of relevant events, check whether all settled."""
    print("\n$ gastown feed -f --json\n# the events since the first sling, then live, each as "
          "a readable line; after each\n# one the demo reads `gastown bead list/mq list/"
          "polecat list --json` to see what has settled", flush=True)
    feed = Feed(town)
    deadline = time.monotonic() + timeout
    try:
        state = outcomes(town, beads)
        while True:
            if all(isinstance(o, Outcome) for o in state.values()):
                return {b: o for b, o in state.items() if isinstance(o, Outcome)}
            relevant = False
            try:
                event = feed.events.get(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
            except queue.Empty:
                event, relevant = {}, True  # a safety net: look again now and then
            while event is not None:
                if event and float(event.get("ts", 0)) >= since:
                    print(f"  +{float(event['ts']) - since:6.2f}s  {describe(event)}",
                          flush=True)
                    relevant = relevant or event.get("kind") in SETTLE_KINDS
                try:
                    event = feed.events.get_nowait()
                except queue.Empty:
                    break
            if event is None:
                raise DemoFailed("the feed stopped unexpectedly")
            late = time.monotonic() > deadline
            if relevant or late:
                state = outcomes(town, beads)
            if late and not all(isinstance(o, Outcome) for o in state.values()):
                lines = "\n".join(f"  {b}: {o}" for b, o in state.items()
                                  if not isinstance(o, Outcome))
                raise DemoFailed(f"timed out after {timeout:.0f}s; still pending:\n{lines}")
    finally:
        feed.close()


