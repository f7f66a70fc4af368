"""A polecat's agent session and the files beside its worktree: start, adopt, stop, read.

Layer: operations. The spawn (:mod:`.polecats`), ``done`` (:mod:`.polecat_done`), the nuke
(:mod:`.nuking`), the witness and the CLI all reach a polecat's session through here.

Each polecat row has an ``incarnation`` (names are reused): its session log is
``logs/sessions/<rig>-<name>-<incarnation>.log``, so ``attach`` and the output tail
kept on escalation show this polecat's output and nobody else's.

Files that must never be committed live beside the worktrees, not in them:
``<rig>/polecats/.<name>.prompt`` (what the agent was told) and
``<rig>/polecats/.<name>.done`` (the completion marker the witness watches).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters.agent_homes import agent_home
from ..adapters.agents import (
    command_for,
    load_presets,
    polecat_env,
    prints_turns,
    render_command,
    render_prompt,
    resolve_agent,
)
from ..adapters.faults import fault_point
from ..adapters.processes import process_environ, processes_with_env, stop_process
from ..adapters.store import Polecat, Store
from ..adapters.town import Town
from ..core.errors import NotFound
from .agent_turns import SESSION_START_MARK
from .setup import bootstrap_env

if TYPE_CHECKING:
    from ..adapters.sessions import SessionInfo


def prompt_path(town: Town, rig: str, name: str) -> Path:
    return town.polecats_dir(rig) / f".{name}.prompt"


def done_marker_path(town: Town, rig: str, name: str) -> Path:
    return town.polecats_dir(rig) / f".{name}.done"


def session_name(rig: str, name: str) -> str:
    return f"gt-{rig}-{name}"


def session_log_path(town: Town, polecat: Polecat) -> Path:
    """Where this incarnation of ``polecat`` writes its session output."""
    life = f"-{polecat.incarnation}" if polecat.incarnation else ""
    return town.logs_dir / "sessions" / f"{polecat.rig}-{polecat.name}{life}.log"


#: How many lines of session output an escalation keeps.
TAIL_LINES = 20


_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


def session_output_tail(town: Town, polecat: Polecat, lines: int = TAIL_LINES) -> str | None:
    """The last ``lines`` lines of the polecat's session output (escapes removed), or None."""
    recorded = (polecat.session or {}).get("log_path")
    path = Path(recorded) if isinstance(recorded, str) else session_log_path(town, polecat)
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return None
    text = _ANSI.sub("", data.decode("utf-8", errors="replace")).replace("\r\n", "\n")
    kept = [line.rstrip() for line in text.replace("\r", "\n").splitlines()
            if not line.startswith(SESSION_START_MARK)]
    while kept and not kept[-1]:
        kept.pop()
    return "\n".join(kept[-lines:]) or None


def session_info(polecat: Polecat) -> SessionInfo | None:
    """The recorded session of ``polecat`` as a ``SessionInfo``, or None."""
    if not polecat.session:
        return None
    from ..adapters.sessions import SessionInfo

    return SessionInfo.from_json(json.dumps(polecat.session))


def session_alive(polecat: Polecat) -> bool:
    from ..adapters.sessions import session_alive as alive

    info = session_info(polecat)
    return bool(info is not None and alive(info))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def start_agent_session(town: Town, store: Store, polecat: Polecat, *,
                        note: str | None = None, respawn: bool = False,
                        process: str | None = None, resume: bool = False) -> SessionInfo:
    """Start ``polecat``'s agent session in its worktree and record it; returns its info.

    With ``resume`` (a respawn, a nudge) an agent that can continue its conversation is
    started that way and told only ``note``; any other starts afresh with the whole
    prompt and the note.
    """
    from ..adapters.agent_homes import last_conversation, prepare
    from ..adapters.sessions import SessionSpec, resolve_backend, start_session

    town_config = town.config
    _, agent = resolve_agent(polecat.agent, town_config, load_presets())
    backend = resolve_backend(town_config.sessions.backend)
    bead = store.bead(polecat.bead) if polecat.bead else None
    worktree = Path(polecat.worktree)
    home = agent_home(town, polecat.rig, polecat.name)
    conversation = last_conversation(agent.kind, home) if resume and note is not None else None
    resuming = conversation is not None
    command = command_for(agent, backend=backend, resume=resuming)
    if resuming and command in (agent.command, agent.print_command):
        resuming = False  # no resume variant: a fresh start, told what happened
    prompt = render_prompt(rig=polecat.rig, polecat=polecat.name,
                           bead=bead.id if bead else "-", title=bead.title if bead else "",
                           description=bead.description if bead else "",
                           worktree=str(worktree), branch=polecat.branch, note=note)
    prompt_file = prompt_path(town, polecat.rig, polecat.name)
    write_atomic(prompt_file, prompt)
    name = session_name(polecat.rig, polecat.name)
    env = polecat_env(base=os.environ, town_root=town.root, rig=polecat.rig,
                      polecat=polecat.name, bead=polecat.bead or "", branch=polecat.branch,
                      worktree=worktree, prompt_file=prompt_file, agent=polecat.agent,
                      session=name, extra=agent.env, incarnation=polecat.incarnation or "")
    env.update(bootstrap_env(town.rig_config(polecat.rig).polecats.setup,
                             slot=polecat.slot, port=polecat.port))
    prepared = prepare(agent.kind, home=home, worktree=worktree, env=env,
                       turn_hooks=not prints_turns(agent, backend))
    env.update(prepared.env)
    argv = render_command(command, prompt=note if resuming and note else prompt,
                          prompt_file=prompt_file, bead=polecat.bead or "",
                          worktree=worktree, conversation=conversation or "")
    argv = [argv[0], *prepared.args, *argv[1:]]
    if backend == "tmux":
        env["TERM"] = "tmux-256color"  # the pane is a terminal whatever started the role
    log_path = session_log_path(town, polecat)
    _mark_session_start(log_path, resumed=resuming)
    spec = SessionSpec(backend=backend, name=name,
                       argv=argv, cwd=worktree, env=env,
                       log_path=log_path,
                       town_root=town.root)
    info = start_session(spec)
    if process is not None:
        fault_point(process, "sling.before_session_recorded")
    store.set_polecat_session(polecat.rig, polecat.name, json.loads(info.to_json()),
                              respawned=respawn)
    return info


def _mark_session_start(log_path: Path, *, resumed: bool) -> None:
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a", encoding="utf-8") as log:
            log.write(f"{SESSION_START_MARK}{' (resumed)' if resumed else ''}\n")
    except OSError:
        pass  # the session's own start reports an unwritable log


def adopt_unrecorded_session(town: Town, store: Store, polecat: Polecat) -> Polecat | None:
    """Record a live session that was started for ``polecat`` but never recorded.

    A mayor killed between starting an agent and saving its session leaves a running
    agent the store knows nothing of. Killing it would throw away a turn of work (and
    what it committed would be submitted unfinished); instead its session leader -- the
    process that leads its own group and carries this polecat's identity, incarnation
    included -- is recorded as the session, so the agent finishes and the witness
    watches it like any other. Returns the updated row, or None when no such process
    lives.
    """
    from ..adapters.processes import process_start_time
    from ..adapters.sessions import (
        SessionInfo,
        resolve_backend,
        sanitize_name,
        tmux_socket_name,
    )

    if not polecat.incarnation:
        return None  # a row from before incarnations: no way to tell lives apart
    match = {"GASTOWN_TOWN": str(town.root), "GASTOWN_RIG": polecat.rig,
             "GASTOWN_POLECAT": polecat.name, "GASTOWN_INCARNATION": polecat.incarnation}
    for pid in sorted(processes_with_env(match)):
        try:
            if os.getpgid(pid) != pid:
                continue
        except ProcessLookupError:
            continue
        start_time = process_start_time(pid)
        if start_time is None:
            continue
        backend = resolve_backend(town.config.sessions.backend)
        info = SessionInfo(
            backend=backend, name=sanitize_name(session_name(polecat.rig, polecat.name)),
            pid=pid, start_time=start_time, log_path=str(session_log_path(town, polecat)),
            tmux_socket=tmux_socket_name(town.root) if backend == "tmux" else None)
        store.set_polecat_session(polecat.rig, polecat.name, json.loads(info.to_json()))
        adopted = store.polecat(polecat.rig, polecat.name)
        return adopted if session_alive(adopted) else None
    return None


def stop_polecat_session(town: Town, polecat: Polecat, grace: float = 5.0, *,
                         strays: bool = True) -> None:
    """Stop the recorded session and, with ``strays``, any process still carrying this
    polecat's identity.

    The recorded session is stopped through its leader's pid and start time (its
    session, group and descendants, deaths awaited on pidfds: no ``environ`` is read).
    Without a record (never saved, or unreadable) the identity search always runs.
    With ``strays=False`` (a nuke: it must cost what git costs) a process that called
    ``setsid`` and is no longer the agent's descendant survives the stop; the witness
    looks for those once per batch of nukes (:func:`stop_ended_strays`).
    """
    from ..adapters.sessions import stop_session

    try:
        info = session_info(polecat)
    except ValueError:  # an unreadable record: the identity search must find the agent
        info = None
    if info is not None:
        stop_session(info, grace=grace)
    if strays or info is None:
        for pid in processes_with_env({"GASTOWN_TOWN": str(town.root),
                                       "GASTOWN_RIG": polecat.rig,
                                       "GASTOWN_POLECAT": polecat.name}):
            stop_process(pid, grace)


def stop_ended_strays(town: Town, store: Store, ended: list[Polecat],
                      grace: float = 2.0) -> list[int]:
    """One search of every ``/proc/*/environ`` for the processes that outlived the
    sessions of the ``ended`` (nuked) polecats; each is stopped. Returns their pids.

    A process matches by rig, name *and* incarnation, and never while the store holds
    that incarnation in a live state, so an agent of a new polecat that reuses the
    name is left alone. Polecats without an incarnation (rows from before them) are
    skipped: their nuke searched by name itself.
    """
    wanted = {(p.rig, p.name, p.incarnation) for p in ended if p.incarnation}
    for key in list(wanted):
        try:
            current = store.polecat(key[0], key[1])
        except NotFound:
            continue
        if current.incarnation == key[2] and current.state != "nuked":
            wanted.discard(key)
    stopped = []
    for pid in processes_with_env({"GASTOWN_TOWN": str(town.root)}) if wanted else []:
        env = process_environ(pid)
        key = (env.get("GASTOWN_RIG", ""), env.get("GASTOWN_POLECAT", ""),
               env.get("GASTOWN_INCARNATION", ""))
        if key in wanted:
            stop_process(pid, grace)
            stopped.append(pid)
    return stopped
