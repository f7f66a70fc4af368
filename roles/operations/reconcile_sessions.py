"""``gastown doctor``'s check of running agents: tmux sessions and tagged processes of
polecats that have no row.

Layer: roles operations, called by :mod:`.reconcile` (the driver). It finds them through
:mod:`..adapters.tmux` (the town's sessions) and :mod:`..adapters.processes` (processes
carrying the town's ``GASTOWN_*`` identity), and stops them through those adapters too:
a session's whole process tree, then the session; a stray process's group.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..adapters import landed
from ..adapters.processes import process_environ, processes_with_env, stop_process
from ..adapters.sessions import sanitize_name, stop_town_session, town_sessions
from .polecat_sessions import session_name
from .reconcile_findings import STOP_GRACE, Ctx, Finding, real_path, repair, row_exists


@dataclass
class _Orphan:
    rig: str
    name: str
    tmux: list[str]
    pids: list[int]


def check_orphan_sessions(ctx: Ctx, rigs: list[str], *, all_rigs: list[str]
                          ) -> list[Finding]:
    """Tmux sessions and tagged processes of polecats that have no row: stopped.

    The town creates a polecat's row before its session and stops the session before
    deleting the row, so a session seen here whose row is then missing is an orphan
    (upstream #700, #736: orphaned agents eat the machine).
    """
    if not rigs:
        return []
    sessions = town_sessions(ctx.town.root)
    tagged = _tagged_processes(ctx.town.root)
    rows = ctx.store.polecats()
    expected = {sanitize_name(session_name(p.rig, p.name)) for p in rows}
    expected |= {str(p.session["name"]) for p in rows if p.session and p.session.get("name")}
    owners = {(p.rig, p.name) for p in rows}
    # Longest rig prefix first: rig "a-b"'s sessions are not rig "a"'s.
    prefixes = sorted(((sanitize_name(f"gt-{r}-"), r) for r in all_rigs),
                      key=lambda item: -len(item[0]))
    orphans: dict[tuple[str, str], _Orphan] = {}
    for session in sessions:
        if session in expected:
            continue
        for prefix, rig in prefixes:
            if session.startswith(prefix) and len(session) > len(prefix):
                name = session[len(prefix):]
                orphans.setdefault((rig, name), _Orphan(rig, name, [], [])).tmux.append(session)
                break
    for pid, (rig, name) in tagged.items():
        if (rig, name) not in owners and rig in all_rigs:
            orphans.setdefault((rig, name), _Orphan(rig, name, [], [])).pids.append(pid)
    findings = []
    for (rig, name), orphan in sorted(orphans.items()):
        if rig not in rigs:
            continue
        parts = []
        if orphan.tmux:
            parts.append(f"tmux session {', '.join(orphan.tmux)}")
        if orphan.pids:
            parts.append(f"{landed.plural(len(orphan.pids), 'process')} "
                         f"(pid {', '.join(map(str, sorted(orphan.pids)))})")
        subject = orphan.tmux[0] if orphan.tmux else session_name(rig, name)
        findings.append(repair(
            ctx, rig, "orphan_session", subject,
            f"{' and '.join(parts)} of polecat {name}, which has no row",
            todo="stop them", done="stopped (SIGTERM, then SIGKILL)",
            do=partial(_stop_orphan, ctx, orphan), polecat=name))
    return findings


def _tagged_processes(town_root: Path) -> dict[int, tuple[str, str]]:
    """pid -> (rig, polecat) of live processes carrying this town's polecat identity."""
    found: dict[int, tuple[str, str]] = {}
    for root in {str(town_root), str(real_path(town_root))}:
        for pid in processes_with_env({"GASTOWN_TOWN": root}):
            env = process_environ(pid)
            rig, name = env.get("GASTOWN_RIG", ""), env.get("GASTOWN_POLECAT", "")
            if rig and name:
                found[pid] = (rig, name)
    return found


def _stop_orphan(ctx: Ctx, orphan: _Orphan) -> str | None:
    if row_exists(ctx.store, orphan.rig, orphan.name):
        return "left alone: a polecat of that name appeared meanwhile"
    for session in orphan.tmux:
        stop_town_session(ctx.town.root, session, grace=STOP_GRACE)
    for pid in orphan.pids:
        stop_process(pid, STOP_GRACE)
    return None
