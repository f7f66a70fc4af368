"""Polecat sandboxes: spawn (worktree + agent session), done, nuke, and crash recovery.

Shared by the mayor (spawns), the CLI (``done``, ``polecat nuke``) and, later, the
witness. Synchronous: trio callers run these in a worker thread.

Crash safety, step by step. A spawn first *reserves* the polecat in the store (one
transaction: name, row in ``spawning``, bead ``hooked``, sling dispatched), then creates
the worktree and branch under the repository lock, then starts the session, then marks
the polecat ``working``. A failure at any step rolls all of it back; a process killed at
any step leaves a ``spawning`` row, which :func:`recover_spawning` rolls back (or
completes, if the session did start) when the mayor starts again. Git and the session
are always undone *before* the store forgets the polecat, so nothing on disk is ever
left without a row pointing at it. A rollback never deletes work: a branch with
commits that have not landed is kept and submitted (or escalated), not removed.

A failure before the polecat is reserved (an unknown agent, a bad rig) fails the sling:
a sling is either queued or failed, never both.

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
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapters import git, landed
from ..adapters.agent_homes import agent_home, remove_home
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
from ..adapters.processes import processes_with_env, terminate_process_group
from ..adapters.store import MergeRequest, Polecat, Sling, Store
from ..adapters.town import Town
from ..core.errors import GastownError, NotFound, Refused, UsageError
from ..core.lifecycle import (
    Done,
    GaveUp,
    Nuke,
    Outcome,
    Refusal,
    SessionStarted,
    SpawnFailed,
)
from ..core.lifecycle import transition as lifecycle_transition
from ..core.names import DEFAULT_POLECAT_NAMES, validate_name
from .agent_turns import SESSION_START_MARK


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


def session_info(polecat: Polecat) -> Any:
    """The recorded session of ``polecat`` as a ``SessionInfo``, or None."""
    if not polecat.session:
        return None
    from ..adapters.sessions import SessionInfo

    return SessionInfo.from_json(json.dumps(polecat.session))


def session_alive(polecat: Polecat) -> bool:
    from ..adapters.sessions import session_alive as alive

    info = session_info(polecat)
    return bool(info is not None and alive(info))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- spawn ---------------------------------------------------------------------------


def spawn_polecat(town: Town, store: Store, sling: Sling, *, process: str = "mayor",
                  ) -> Polecat | None:
    """Dispatch a queued sling: a new polecat with its worktree and a running session.

    Returns None (and changes nothing) when the rig or the town has no free slot.
    Raises on failure after rolling everything back: no folder, no branch, no row,
    the bead ``open`` again with the reason, the sling ``failed``.
    """
    try:
        rig_config = town.rig_config(sling.rig)
        town_config = town.config
        agent_name, _ = resolve_agent(sling.agent, town_config, load_presets())
        polecats_dir = town.polecats_dir(sling.rig)
        # A name is also held while its folder or its branch exists (an orphan, or work a
        # failed nuke left): a rollback may then delete the branch it made, and only that.
        on_disk = {p.name for p in polecats_dir.iterdir() if not p.name.startswith(".")}
        on_disk |= names_with_branches(town.refinery_clone(sling.rig),
                                       rig_config.polecats.branch_template)
        polecat = store.reserve_polecat(
            sling.id, pool=rig_config.polecats.names or DEFAULT_POLECAT_NAMES,
            branch_template=rig_config.polecats.branch_template,
            polecats_dir=str(polecats_dir), agent=agent_name, rig_cap=rig_config.polecats.max,
            town_cap=town_config.max_polecats, also_held=on_disk)
    except Exception as exc:  # nothing was made yet: the sling fails, once, and leaves the queue
        store.fail_sling(sling.id, exc.message if isinstance(exc, GastownError) else
                         f"{type(exc).__name__}: {exc}")
        raise
    if polecat is None:
        return None
    fault_point(process, "sling.after_reserve")
    try:
        clone = town.refinery_clone(sling.rig)
        with git.repo_lock(clone):
            git.add_worktree(clone, Path(polecat.worktree), polecat.branch,
                             rig_config.default_branch)
        fault_point(process, "sling.after_worktree")
        start_agent_session(town, store, polecat, note=sling.note, process=process)
        fault_point(process, "sling.after_session")
        _mark_working(store, polecat)
    except BaseException as exc:
        reason = f"sling failed: {exc}"
        if rollback_spawn(town, store, polecat, reason) is None:
            store.fail_sling(sling.id, str(exc))
        raise
    try:
        return store.polecat(polecat.rig, polecat.name)
    except NotFound:  # its agent was done, merged and nuked before we looked again
        return polecat


def _mark_working(store: Store, polecat: Polecat) -> None:
    """The spawn's last step; a no-op when the agent was faster (``done`` already ran)."""
    try:
        store.apply_polecat_event(polecat.rig, polecat.name, SessionStarted())
    except NotFound:
        pass  # done, merged and nuked already: nothing left to mark


def names_with_branches(clone: Path, template: str) -> set[str]:
    """Polecat names whose branch (per ``template``) exists in ``clone``."""
    head, _, tail = template.partition("{name}")
    found = set()
    for branch in git.local_branches(clone):
        if branch.startswith(head) and branch.endswith(tail) and len(branch) > len(head + tail):
            found.add(branch[len(head):len(branch) - len(tail)])
    return found


def start_agent_session(town: Town, store: Store, polecat: Polecat, *,
                        note: str | None = None, respawn: bool = False,
                        process: str | None = None, resume: bool = False) -> Any:
    """Start ``polecat``'s agent session in its worktree and record it; returns its info.

    With ``resume`` (a respawn, a nudge) an agent that can continue its conversation is
    started that way and told only ``note``; any other starts afresh with the whole
    prompt and the note.
    """
    from ..adapters.agent_homes import has_conversation, prepare
    from ..adapters.sessions import SessionSpec, resolve_backend, start_session

    town_config = town.config
    _, agent = resolve_agent(polecat.agent, town_config, load_presets())
    backend = resolve_backend(town_config.sessions.backend)
    bead = store.bead(polecat.bead) if polecat.bead else None
    worktree = Path(polecat.worktree)
    home = agent_home(town, polecat.rig, polecat.name)
    resuming = resume and note is not None and has_conversation(agent.kind, home)
    command = command_for(agent, backend=backend, resume=resuming)
    if resuming and command in (agent.command, agent.print_command):
        resuming = False  # no resume variant: a fresh start, told what happened
    prompt = render_prompt(rig=polecat.rig, polecat=polecat.name,
                           bead=bead.id if bead else "-", title=bead.title if bead else "",
                           description=bead.description if bead else "",
                           worktree=str(worktree), branch=polecat.branch, note=note)
    prompt_file = prompt_path(town, polecat.rig, polecat.name)
    _write_atomic(prompt_file, prompt)
    name = session_name(polecat.rig, polecat.name)
    env = polecat_env(base=os.environ, town_root=town.root, rig=polecat.rig,
                      polecat=polecat.name, bead=polecat.bead or "", branch=polecat.branch,
                      worktree=worktree, prompt_file=prompt_file, agent=polecat.agent,
                      session=name, extra=agent.env, incarnation=polecat.incarnation or "")
    prepared = prepare(agent.kind, home=home, worktree=worktree, env=env,
                       turn_hooks=not prints_turns(agent, backend))
    env.update(prepared.env)
    argv = render_command(command, prompt=note if resuming and note else prompt,
                          prompt_file=prompt_file, bead=polecat.bead or "",
                          worktree=worktree)
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


def stop_polecat_session(town: Town, polecat: Polecat, grace: float = 5.0) -> None:
    """Stop the recorded session and any process still carrying this polecat's identity."""
    from ..adapters.sessions import stop_session

    info = session_info(polecat)
    if info is not None:
        stop_session(info, grace=grace)
    for pid in processes_with_env({"GASTOWN_TOWN": str(town.root), "GASTOWN_RIG": polecat.rig,
                                   "GASTOWN_POLECAT": polecat.name}):
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            continue
        if pgid == pid:
            terminate_process_group(pgid, grace)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _settle_usage(town: Town, store: Store, polecat: Polecat) -> None:
    from .agent_turns import settle_usage

    settle_usage(town, store, polecat)


def _remove_sandbox(town: Town, polecat: Polecat) -> None:
    clone = town.refinery_clone(polecat.rig)
    with git.repo_lock(clone):
        git.remove_worktree(clone, Path(polecat.worktree))
        git.delete_branch(clone, polecat.branch)
    for path in (prompt_path(town, polecat.rig, polecat.name),
                 done_marker_path(town, polecat.rig, polecat.name)):
        path.unlink(missing_ok=True)
    remove_home(agent_home(town, polecat.rig, polecat.name))


def rollback_spawn(town: Town, store: Store, polecat: Polecat, reason: str) -> str | None:
    """Undo a spawn completely: session, worktree, branch, files, then the row.

    Returns None when it did. Work is never deleted: if the agent already committed
    something that has not landed (or the state of the worktree cannot be read), the
    branch and worktree stay and the polecat is submitted as done with a merge request
    (clean tree, commits ahead) or escalated with the reason; a polecat that is no
    longer ``spawning`` (its agent ran ``done`` meanwhile) is left alone. Then it
    returns what it kept, one line.
    """
    current = _still_spawning(store, polecat)
    if isinstance(current, str):
        return current
    stop_polecat_session(town, current, grace=2.0)
    current = _still_spawning(store, polecat)  # its agent may have run `done` meanwhile
    if isinstance(current, str):
        return current
    try:
        problems = unlanded_work(town, current)
    except GastownError as exc:
        problems = [f"its worktree could not be checked ({exc.message})"]
    if problems:
        return _keep_spawned_work(town, store, current, reason, problems)
    _remove_sandbox(town, current)
    store.apply_polecat_event(current.rig, current.name, SpawnFailed(reason))
    return None


def _still_spawning(store: Store, polecat: Polecat) -> Polecat | str:
    """The polecat's row while this spawn still owns it, else why not (one phrase)."""
    try:
        current = store.polecat(polecat.rig, polecat.name)
    except NotFound:
        return "already gone"
    if current.incarnation != polecat.incarnation:
        return "already gone (its name was reused)"
    if current.state != "spawning":
        return f"already {current.state}"
    return current


def _keep_spawned_work(town: Town, store: Store, polecat: Polecat, reason: str,
                       problems: list[str]) -> str:
    """A spawn that cannot be undone without losing work: submit it, or escalate it."""
    what = "; ".join(problems)
    try:
        result = record_done(town, store, polecat.rig, polecat.name, "completed")
    except GastownError as exc:
        why = f"{reason}; kept, not rolled back: {what}"
        store.apply_polecat_event(polecat.rig, polecat.name, GaveUp(why),
                                  output_tail=session_output_tail(town, polecat))
        return f"escalated, work kept ({what}; not submitted: {exc.message})"
    mr = result.merge_request.id if result.merge_request else "-"
    return f"its committed work was kept and submitted as {mr} ({what})"


def recover_spawning(town: Town, store: Store) -> list[str]:
    """Finish or undo spawns interrupted by a crash; returns what was done, one line each.

    A ``spawning`` polecat whose session is alive only missed its last step: it becomes
    ``working``. Any other is rolled back and its sling queued again, so the user's
    request still happens, unless its agent already committed work: that is kept and
    submitted (see :func:`rollback_spawn`), and the sling stays dispatched.
    """
    done: list[str] = []
    for polecat in store.polecats(states={"spawning"}):
        if session_alive(polecat):
            _mark_working(store, polecat)
            done.append(f"{polecat.rig}/{polecat.name}: session alive, now working")
            continue
        adopted = adopt_unrecorded_session(town, store, polecat)
        if adopted is not None:
            _mark_working(store, adopted)
            done.append(f"{polecat.rig}/{polecat.name}: session alive (pid "
                        f"{adopted.session['pid'] if adopted.session else '?'}) but never "
                        "recorded: adopted, now working")
            continue
        kept = rollback_spawn(town, store, polecat, "interrupted while spawning")
        if kept is not None:
            done.append(f"{polecat.rig}/{polecat.name}: not rolled back: {kept}")
            continue
        if polecat.sling is not None:
            store.requeue_sling(polecat.sling)
        done.append(f"{polecat.rig}/{polecat.name}: half-created, rolled back")
    return done


# -- done ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoneResult:
    polecat: Polecat
    outcome: Outcome
    merge_request: MergeRequest | None


def locate_polecat(town: Town, env: Mapping[str, str], cwd: Path) -> tuple[str, str]:
    """The (rig, name) of the polecat ``gastown done`` runs in: from the environment, else
    from the cwd (``<town>/<rig>/polecats/<name>/...``)."""
    if env.get("GASTOWN_RIG") and env.get("GASTOWN_POLECAT"):
        return env["GASTOWN_RIG"], env["GASTOWN_POLECAT"]
    try:
        parts = cwd.resolve().relative_to(town.root.resolve()).parts
    except ValueError:
        parts = ()
    if len(parts) >= 3 and parts[1] == "polecats" and not parts[2].startswith("."):
        return parts[0], parts[2]
    raise UsageError("not inside a polecat worktree (run 'gastown done' in "
                     "<town>/<rig>/polecats/<name>, or set GASTOWN_RIG and GASTOWN_POLECAT)")


def record_done(town: Town, store: Store, rig: str, name: str, outcome: Outcome,
                reason: str | None = None, *, done_by: str = "agent") -> DoneResult:
    """``gastown done``: check the work, record the outcome (and MR), drop the marker.

    For ``completed`` it refuses a dirty tree and a branch with nothing ahead of the
    default branch, and records nothing then. The marker file is written after the
    store commit, so a witness that sees it always finds the MR. In an ``escalated``
    or ``rejected`` polecat (work a person fixed by hand) ``completed`` re-submits it: a
    new merge request. ``escalated`` keeps ``reason`` and the session's last lines.
    """
    validate_name("rig", rig)
    validate_name("polecat", name)
    polecat = store.polecat(rig, name)
    rig_config = town.rig_config(rig)
    worktree = Path(polecat.worktree)
    if not worktree.is_dir():
        raise NotFound(f"polecat {rig}/{name} has no worktree at {worktree}")
    head = git.head_commit(worktree)
    base = git.head_commit(worktree, rig_config.default_branch)
    kept = polecat.state in ("escalated", "rejected")
    if outcome == "completed":
        dirty = git.dirty_files(worktree)
        if dirty:
            raise Refused(f"the worktree has {len(dirty)} uncommitted change(s) "
                          f"({dirty[0].strip()}{', ...' if len(dirty) > 1 else ''}); "
                          "commit or discard them, then run 'gastown done' again")
        if git.commits_ahead(worktree, rig_config.default_branch, "HEAD") == 0:
            hint = (f"; commit the fix on {polecat.branch} and run 'gastown done' again, or "
                    f"drop it with 'gastown polecat nuke {rig}/{name} --force'") if kept else ""
            raise Refused(f"branch {polecat.branch} has no commits ahead of "
                          f"{rig_config.default_branch}: nothing to merge{hint}")
    tail = session_output_tail(town, polecat) if outcome == "escalated" else None
    extra = {"resubmitted": polecat.state} if kept else {}
    if kept and done_by == "agent":
        done_by = "human"  # work fixed by hand in a kept worktree
    mr = store.record_done(rig, name, Done(outcome, reason), head=head, base=base,
                           with_mr=outcome == "completed", output_tail=tail,
                           done_by=done_by, **extra)
    marker = {"outcome": outcome, "mr": mr.id if mr else None, "head": head}
    _write_atomic(done_marker_path(town, rig, name), json.dumps(marker) + "\n")
    return DoneResult(store.polecat(rig, name), outcome, mr)


# -- nuke ------------------------------------------------------------------------------


def unlanded_work(town: Town, polecat: Polecat) -> list[str]:
    """What a nuke would destroy, one phrase each; empty when everything landed."""
    default = town.rig_config(polecat.rig).default_branch
    facts = landed.gather(town.refinery_clone(polecat.rig), default,
                          [f"refs/heads/{polecat.branch}"], worktree=Path(polecat.worktree))
    return landed.nuke_problems(facts, polecat.branch, default)


def nuke_polecat(town: Town, store: Store, rig: str, name: str, *, force: bool = False,
                 reason: str = "nuked") -> Polecat:
    """Stop the session, remove the worktree (verified gone) and branch, release the name.

    Without ``force`` it refuses while work has not landed (uncommitted changes, or
    commits whose patches are not on the default branch) and says which.
    """
    validate_name("rig", rig)
    validate_name("polecat", name)
    polecat = store.polecat(rig, name)
    try:
        problems = unlanded_work(town, polecat)
    except GastownError as exc:
        if not force:
            raise
        problems = [f"state unknown ({exc.message})"]  # a broken worktree: force wins
    decision = lifecycle_transition(polecat.state, Nuke(force=force, landed=not problems))
    if isinstance(decision, Refusal):
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise Refused(f"not nuking {rig}/{name}: {decision.reason}{detail}; "
                      "use --force to discard it")
    stop_polecat_session(town, polecat)
    _settle_usage(town, store, polecat)
    _remove_sandbox(town, polecat)
    store.cancel_merge_requests(rig, name, reason=reason)
    store.apply_polecat_event(rig, name, Nuke(force=force, landed=not problems),
                              forced=force)
    return polecat


# -- after the merge queue ------------------------------------------------------------


def nuke_merged(town: Town, store: Store, rig: str, name: str) -> str | None:
    """The witness's nuke after ``mr_merged``; returns why it kept the polecat, or None.

    Checks that nothing unlanded remains (uncommitted changes, or commits after the MR
    whose patches are not on the default branch): such a polecat is kept, with the
    reason recorded, for a human to look at. Otherwise session, worktree, branch and
    name go, and the polecat's ``Merged`` transition closes its bead.
    """
    from ..core.lifecycle import Merged

    polecat = store.polecat(rig, name)
    if not any(mr.kind == "polecat" and mr.polecat == name
               and mr.created_at >= polecat.created_at
               for mr in store.merge_requests_in(rig, ["merged"])):
        # Names are reused: a merged MR of an earlier polecat with this name is not ours.
        return "its merge request has not landed"
    problems = unlanded_work(town, polecat)
    if problems:
        reason = f"merged, but kept: {'; '.join(problems)}"
        store.note_polecat(rig, name, reason)
        return reason
    stop_polecat_session(town, polecat)
    _settle_usage(town, store, polecat)
    _remove_sandbox(town, polecat)
    store.apply_polecat_event(rig, name, Merged())
    return None


def respawn_session(town: Town, store: Store, rig: str, name: str) -> Any:
    """Start a stalled polecat's agent again in the same worktree, told what happened."""
    from ..core.lifecycle import Respawned

    polecat = store.polecat(rig, name)
    stop_polecat_session(town, polecat, grace=2.0)  # leftovers of the dead session
    note = ("Your previous session ended without `gastown done`. Your worktree and any "
            "commits you made are still here: check `git status` and `git log`, finish the "
            "work, commit, then run `gastown done`.")
    info = start_agent_session(town, store, polecat, note=note, respawn=True, resume=True)
    store.apply_polecat_event(rig, name, Respawned(), respawns=polecat.respawns + 1)
    return info
