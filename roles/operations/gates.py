"""Running a rig's gates on a merge candidate: ordered shell commands, each with a timeout.

Layer: operations, used by :mod:`.merging` (the refinery) and :mod:`.gate_check`.

The refinery calls :func:`run_gates` on a checkout of the candidate; main may move only
if every gate passed. Each gate is ``sh -c <command>`` started by trio
(``trio.lowlevel.open_process``) as the leader of its own session and process group,
so that a timeout or a cancellation can kill the whole group, grandchildren included
(``make test`` forking a test runner forking a server). Its output goes to one log
file per merge request, in sections, and the tail of the failing section is what the
refinery publishes with ``merge_failed``.

This module must never run a gate through ``sh`` the library or ``subprocess.run`` in a
thread (neither can be cancelled), and never reap with ``waitpid(-1)`` (it steals
trio's exit statuses). It decides nothing about the merge: it reports results.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from ..adapters.children import child_env, stop_child
from ..adapters.log import get_logger
from ..adapters.town import Town
from ..core.config import GateConfig, RigConfig
from .setup import bootstrap_env, place_files, setup_source

log = get_logger()

#: Variables a gate never inherits. A bytecode cache outside the tree
#: (``PYTHONPYCACHEPREFIX``) survives the ``git clean`` between two candidates checked out
#: in the same folder, and Python trusts a cached file whose source has the same size and
#: the same mtime second: a one-character edit (``a + b`` -> ``a - b``) then runs the old
#: code, and a gate passes or fails for the wrong candidate. Without it the cache lives in
#: the tree, where each checkout's clean removes it.
GATE_DROPPED_ENV: Final = ("PYTHONPYCACHEPREFIX",)

#: At most this many lines of a gate's output are kept in :attr:`GateResult.tail`.
TAIL_LINES: Final = 20
#: ... and at most this many bytes of it are read back from the log.
TAIL_BYTES: Final = 4096


@dataclass(frozen=True)
class GateResult:
    """What one gate did.

    ``exit_code`` is the shell's exit status, or minus the signal number when something
    else killed it (``-9`` for the OOM killer); it is None when the gate was killed at
    its timeout (``timed_out``). ``tail`` is the end of the gate's own output (at most
    :data:`TAIL_LINES` lines from the last :data:`TAIL_BYTES` bytes), for messages.
    """

    name: str
    ok: bool
    exit_code: int | None
    timed_out: bool
    duration: float
    tail: str


def gates_with_setup(town: Town, rig: str, config: RigConfig, cwd: Path,
                     env: dict[str, str]) -> tuple[GateConfig, ...]:
    """The rig's gates, ``[merge_queue.setup]`` first: its copies and links placed in
    ``cwd`` now, its ``env`` added to ``env`` (``{port}`` and ``{slot}`` empty: a gate
    has neither), its command the first gate, named ``setup``, with its timeout."""
    setup = config.merge_queue.setup
    gates = config.merge_queue.gates
    if not setup.configured:
        return gates
    place_files(setup, setup_source(town, rig, setup, config), cwd)
    env.update(bootstrap_env(setup, slot=None, port=None))
    if not setup.command.strip():
        return gates
    return (GateConfig(name="setup", command=setup.command, timeout=setup.timeout), *gates)


def gate_env(env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a gate: ``env`` without :data:`GATE_DROPPED_ENV`, and
    scrubbed as for every child (:func:`~gastown.roles.adapters.children.child_env`)."""
    return child_env({k: v for k, v in env.items() if k not in GATE_DROPPED_ENV}, {})


async def run_gates(
    gates: Sequence[GateConfig],
    *,
    cwd: Path,
    log_path: Path,
    env: Mapping[str, str],
    on_gate: Callable[[str], None] | None = None,
    kill_grace: float = 2.0,
) -> list[GateResult]:
    """Run ``gates`` in order in ``cwd``; stop at the first failure; return their results.

    Each gate runs as ``sh -c <command>`` with stdin from ``/dev/null``, ``env`` as its
    whole environment (give it ``PATH``; systemd's notify, watchdog and socket
    variables are scrubbed as for every child), and stdout and stderr appended to
    ``log_path`` (created ``0600`` with its parents; earlier content is kept). Before
    each gate a header line ``== gate <name>: <command>`` is written, after it a
    footer with the outcome. ``on_gate(name)`` is called just before each gate starts.

    The result lists the gates that ran: all of them when all passed, else up to and
    including the first that failed (non-zero exit, killed by a signal, or timed out).

    A gate that outlives its timeout gets SIGTERM on its whole process group, then
    SIGKILL on the group after ``kill_grace`` seconds, and is reported ``timed_out``.
    A gate whose shell exits leaves nothing behind either: whatever it started in the
    background and left in its group is SIGKILLed before the next gate starts.

    Raises:
        OSError: a gate could not be started (``cwd`` missing, ``sh`` not found); that
            is the refinery's problem, not the candidate's, so it is not a failed gate.

    Cancellation: the running gate's group is stopped (SIGTERM, ``kill_grace``,
    SIGKILL) and its shell reaped, shielded, before the cancellation propagates; the
    log gets a ``cancelled`` footer. No gate process outlives the call, except one
    that left its process group on purpose (``setsid``), which only a cgroup could catch.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Read-write so the tail can be read back from the same file the gates wrote.
    out = os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        results: list[GateResult] = []
        for gate in gates:
            if on_gate is not None:
                on_gate(gate.name)
            result = await _run_gate(gate, cwd=cwd, out=out, env=env, kill_grace=kill_grace)
            results.append(result)
            if not result.ok:
                break
        return results
    finally:
        os.close(out)


async def _run_gate(
    gate: GateConfig, *, cwd: Path, out: int, env: Mapping[str, str], kill_grace: float
) -> GateResult:
    """Run one gate to its end, its timeout or a cancellation; see :func:`run_gates`."""
    os.write(out, f"== gate {gate.name}: {gate.command}\n".encode())
    section_start = os.fstat(out).st_size
    started = trio.current_time()
    log.info("gate started", gate=gate.name, command=gate.command, timeout=gate.timeout)
    try:
        proc = await trio.lowlevel.open_process(
            ["sh", "-c", gate.command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=gate_env(env),
            start_new_session=True,
        )
    except OSError as exc:
        _write_footer(out, section_start, gate.name, f"could not start: {exc}")
        log.error("gate could not start", gate=gate.name, error=str(exc))
        raise
    exit_code: int | None = None
    try:
        with trio.move_on_after(gate.timeout) as timeout_scope:
            await _wait_exited_and_sweep(proc)
        if timeout_scope.cancelled_caught:
            await stop_child(proc, kill_grace)
        else:
            exit_code = await proc.wait()  # already exited: returns at once
    except BaseException:
        # Cancelled (or worse): the gate must not outlive us. stop_child is shielded.
        await stop_child(proc, kill_grace)
        duration = trio.current_time() - started
        _write_footer(out, section_start, gate.name, "cancelled; process group killed")
        log.warning("gate cancelled", gate=gate.name, duration=round(duration, 3))
        raise
    duration = trio.current_time() - started
    timed_out = exit_code is None
    ok = exit_code == 0
    tail = _read_tail(out, section_start)
    fields = {"gate": gate.name, "duration": round(duration, 3), "exit_code": exit_code}
    if timed_out:
        outcome = f"timed out after {gate.timeout:g}s; process group killed"
        log.warning("gate timed out", timeout=gate.timeout, **fields)
    elif ok:
        outcome = f"passed (exit 0) in {duration:.2f}s"
        log.info("gate passed", **fields)
    else:
        outcome = f"failed (exit {exit_code}) in {duration:.2f}s"
        log.warning("gate failed", **fields)
    _write_footer(out, section_start, gate.name, outcome)
    return GateResult(
        name=gate.name,
        ok=ok,
        exit_code=exit_code,
        timed_out=timed_out,
        duration=duration,
        tail=tail,
    )


async def _wait_exited_and_sweep(proc: trio.Process) -> None:
    """Wait for the gate's shell to exit, then SIGKILL what it left in its group.

    The shell is awaited through a pidfd of our own, which does not reap it: until it
    is reaped its pid, and so the group id, cannot be reused, so the sweep cannot hit
    a stranger. The caller reaps it afterwards (``proc.wait()`` or ``stop_child``).
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        # Kernel < 5.3: waiting reaps, after which the group id may be reused, so
        # leftovers are not swept on that path (a timeout or cancellation still is).
        await proc.wait()
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        trio.lowlevel.notify_closing(pidfd)
        os.close(pidfd)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # pragma: no cover - the unreaped leader is still in it
        pass


def _write_footer(out: int, section_start: int, name: str, outcome: str) -> None:
    """End the gate's section with its outcome, on a line of its own."""
    end = os.fstat(out).st_size
    separator = "\n" if end > section_start and os.pread(out, 1, end - 1) != b"\n" else ""
    os.write(out, f"{separator}== gate {name}: {outcome}\n".encode())


def _read_tail(out: int, section_start: int) -> str:
    """The last lines of the gate's section, bounded by :data:`TAIL_LINES` and bytes."""
    end = os.fstat(out).st_size
    start = max(section_start, end - TAIL_BYTES)
    data = os.pread(out, end - start, start)
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > section_start and os.pread(out, 1, start - 1) != b"\n" and len(lines) > 1:
        lines = lines[1:]  # the read began mid-line: drop the fragment
    return "\n".join(lines[-TAIL_LINES:])
