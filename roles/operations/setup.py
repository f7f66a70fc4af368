"""The worktree bootstrap: copy and link the files a checkout needs, run its setup command,
give a polecat its port, run its teardown before the nuke.

Layer: operations, used by the spawn (:mod:`.polecats`), the nuke (:mod:`.nuking`), the
refinery's gates (:mod:`.gates`) and ``crew add --setup`` (:mod:`.crew`). Synchronous:
trio callers run it in a worker thread.

A setup command runs as ``sh -c`` in a new session (its own process group), its output
appended to the polecat's session log, and is killed whole (SIGTERM, then SIGKILL to the
group) at its timeout; on a failure what it left in its group is killed too. It carries
the polecat's identity (``GASTOWN_TOWN``, ``GASTOWN_RIG``, ``GASTOWN_POLECAT``) but no
``GASTOWN_INCARNATION``: a spawn recovery never takes it for the agent, and every search
for the polecat's strays (a rollback, ``down --all``) stops it. While it runs, a marker
``<rig>/polecats/.<name>.setup`` says so: a spawn recovery that finds it knows the agent
never started, so whatever is in the tree is the setup's and is discarded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ..adapters import git
from ..adapters.children import child_env
from ..adapters.log import get_logger
from ..adapters.processes import processes_with_env, stop_process, terminate_process_group
from ..adapters.store import Polecat, Store
from ..adapters.town import Town
from ..core.config import RigConfig
from ..core.config_setup import SetupConfig
from ..core.errors import GastownError
from ..core.slots import expand, parse_ports, port_block

log = get_logger()

#: Lines of a failed setup's output kept in the bead's reason and the event.
TAIL_LINES = 15
KILL_GRACE = 2.0


class SetupFailed(GastownError):
    """The setup failed or timed out: the message says why in one line (with the output's
    last line); ``tail`` holds the output's last lines, for the bead's reason."""

    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail


@dataclass(frozen=True)
class CommandResult:
    ok: bool
    reason: str
    tail: str

    def summary(self) -> str:
        """The reason and the output's last line, for a one-line error."""
        last = self.tail.splitlines()[-1] if self.tail else ""
        return f"{self.reason}{f': {last}' if last else ''}"


def setup_marker(town: Town, polecat: Polecat) -> Path:
    return town.polecats_dir(polecat.rig) / f".{polecat.name}.setup"


def setup_source(town: Town, rig: str, setup: SetupConfig, config: RigConfig) -> Path:
    """Where ``copy`` and ``link`` are taken from (see :class:`SetupConfig`)."""
    if setup.source:
        source = Path(setup.source).expanduser()
        return source if source.is_absolute() else town.rig_dir(rig) / source
    repo = Path(config.repo).expanduser()
    if repo.is_absolute() and (repo / ".git").exists():
        return repo  # the user's own working copy, with its ignored files
    return town.refinery_clone(rig)


def place_files(setup: SetupConfig, source: Path, tree: Path) -> list[str]:
    """Copy ``setup.copy`` and link ``setup.link`` from ``source`` into ``tree``; a path
    missing in ``source`` is skipped. Returns one line per path placed."""
    done: list[str] = []
    for rel in setup.copy:
        src, dst = source / rel, tree / rel
        if not (src.exists() or src.is_symlink()) or _same(src, dst):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst, follow_symlinks=False)
        done.append(f"copied {rel}")
    for rel in setup.link:
        src, dst = source / rel, tree / rel
        if not src.exists() or _same(src, dst):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.is_file():
            dst.unlink()
        elif dst.exists():
            shutil.rmtree(dst)
        dst.symlink_to(src.resolve())
        done.append(f"linked {rel}")
    return done


def _same(src: Path, dst: Path) -> bool:
    """``dst`` is ``src`` (the tree is the source folder: the refinery's own clone)."""
    return src.resolve() == dst.resolve()


def bootstrap_env(setup: SetupConfig, *, slot: int | None, port: int | None,
                  ) -> dict[str, str]:
    """``GASTOWN_SLOT``, ``GASTOWN_PORT`` (when known) and ``setup.env`` expanded."""
    env = {key: expand(value, port=port, slot=slot) for key, value in setup.env.items()}
    if slot is not None:
        env["GASTOWN_SLOT"] = str(slot)
    if port is not None:
        env["GASTOWN_PORT"] = str(port)
    return env


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (a bind test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(config: RigConfig, slot: int | None) -> int | None:
    """The first free port of ``slot``'s block, None without ``polecats.ports``; raises
    :class:`SetupFailed` when the block has none free."""
    span = parse_ports(config.polecats.ports) if config.polecats.ports else None
    if span is None or slot is None:
        return None
    block = port_block(span, config.polecats.max, slot)
    for port in block:
        if port_free(port):
            return port
    where = f"{block.start}-{block.stop - 1}" if block else "none"
    raise SetupFailed(f"no free port in slot {slot}'s block ({where}) of "
                      f"polecats.ports {config.polecats.ports}")


def run_command(command: str, *, cwd: Path, env: Mapping[str, str], timeout: float,
                log_path: Path, label: str = "setup", marker: Path | None = None,
                ) -> CommandResult:
    """Run ``sh -c command`` in ``cwd`` in its own process group, output appended to
    ``log_path``; killed whole at ``timeout``, and its group's leftovers on a failure.
    With ``marker``, the file holds the leader's pid while it runs."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        out.write(f"== {label}: {command}\n".encode())
        out.flush()
        start = out.tell()
        proc = subprocess.Popen(["sh", "-c", command], cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                env=child_env(env, {}), start_new_session=True)
    if marker is not None:
        marker.write_text(f"{proc.pid}\n", encoding="utf-8")
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        terminate_process_group(proc.pid, KILL_GRACE)
        proc.wait()
        reason = f"{label} timed out after {timeout:g}s; its processes were killed"
    except BaseException:
        terminate_process_group(proc.pid, KILL_GRACE)
        proc.wait()
        raise
    else:
        if code == 0:
            log.info(f"{label} passed", command=command, cwd=str(cwd))
            return CommandResult(True, "", "")
        _kill_group(proc.pid)
        reason = f"{label} failed (exit {code})"
    tail = _tail(log_path, start)
    with log_path.open("a", encoding="utf-8") as out:
        out.write(f"== {reason}\n")
    log.warning(f"{label} failed", command=command, cwd=str(cwd), reason=reason)
    return CommandResult(False, reason, tail)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left in it


def _tail(path: Path, start: int) -> str:
    with path.open("rb") as f:
        f.seek(max(start, f.seek(0, os.SEEK_END) - 8192))
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.rstrip().splitlines()[-TAIL_LINES:])


def _identity(town: Town, polecat: Polecat) -> dict[str, str]:
    return {"GASTOWN_TOWN": str(town.root), "GASTOWN_RIG": polecat.rig,
            "GASTOWN_POLECAT": polecat.name, "GASTOWN_SETUP": "1"}


def polecat_setup(town: Town, store: Store, polecat: Polecat, log_path: Path, *,
                  prepared: bool = False) -> Polecat:
    """Give the new polecat its port, its files and its setup, before its agent starts;
    ``prepared`` (a pool tree set up with the current settings, :mod:`.pool_setup`): only
    its port (``env``, slot and port reach the agent at its session's start).

    Returns the row with its port. Raises :class:`SetupFailed` (reason and output tail;
    ``polecat_setup_failed`` recorded; the tree reset to its branch, the setup's processes
    gone) for the spawn to roll back.
    """
    config = town.rig_config(polecat.rig)
    setup = config.polecats.setup
    port = pick_port(config, polecat.slot)
    if port is not None:
        store.set_polecat_port(polecat.rig, polecat.name, port)
        polecat = replace(polecat, port=port)
    if prepared:
        log.info("setup done when the pool tree was prepared", polecat=polecat.name)
    if not setup.configured or prepared:
        return polecat
    tree = Path(polecat.worktree)
    marker = setup_marker(town, polecat)
    marker.write_text("\n", encoding="utf-8")
    placed = place_files(setup, setup_source(town, polecat.rig, setup, config), tree)
    if placed:
        log.info("setup files placed", polecat=polecat.name, placed=placed)
    if setup.command.strip():
        env = {**os.environ, **_identity(town, polecat),
               **bootstrap_env(setup, slot=polecat.slot, port=polecat.port)}
        result = run_command(setup.command, cwd=tree, env=env, timeout=setup.timeout,
                             log_path=log_path, marker=marker)
        if not result.ok:
            store.note_setup_failed(polecat, result.reason, result.tail)
            discard_setup(town, polecat)
            raise SetupFailed(result.summary(), tail=result.tail)
    marker.unlink(missing_ok=True)
    return polecat


def discard_setup(town: Town, polecat: Polecat) -> bool:
    """Undo an unfinished setup (a failure, or one a crash interrupted): its processes
    stopped, the tree back to its branch's commit (the agent never ran: everything in it
    is the setup's), the marker removed. Returns False when no marker said so."""
    marker = setup_marker(town, polecat)
    if not marker.exists():
        return False
    for pid in processes_with_env(_identity(town, polecat)):
        stop_process(pid, KILL_GRACE)
    tree = Path(polecat.worktree)
    if tree.is_dir():
        try:
            git.run_git(["reset", "--quiet", "--hard"], cwd=tree, op="reset")
            git.run_git(["clean", "-ffdq"], cwd=tree, op="clean")
        except GastownError as exc:
            log.warning("setup leftovers not cleaned", polecat=polecat.name, error=str(exc))
    marker.unlink(missing_ok=True)
    return True


def polecat_teardown(town: Town, store: Store, polecat: Polecat, log_path: Path) -> None:
    """``[polecats.teardown] command`` in the polecat's worktree; never raises: a failure
    is logged and recorded (``polecat_teardown_failed``), the nuke goes on."""
    try:
        config = town.rig_config(polecat.rig)
    except GastownError:
        return
    teardown = config.polecats.teardown
    tree = Path(polecat.worktree)
    if not teardown.command.strip() or not tree.is_dir():
        return
    env = {**os.environ, **_identity(town, polecat),
           **bootstrap_env(config.polecats.setup, slot=polecat.slot, port=polecat.port)}
    try:
        result = run_command(teardown.command, cwd=tree, env=env, timeout=teardown.timeout,
                             log_path=log_path, label="teardown")
    except OSError as exc:
        result = CommandResult(False, f"teardown could not start: {exc}", "")
    if not result.ok:
        try:
            store.note_setup_failed(polecat, result.reason, result.tail, teardown=True)
        except GastownError as exc:
            log.warning("teardown failure not recorded", error=str(exc))


def workspace_setup(town: Town, rig: str, tree: Path, log_path: Path) -> None:
    """``crew add --setup``: the rig's ``[polecats.setup]`` in a crew workspace (no slot,
    no port). Raises :class:`SetupFailed`; the caller keeps the workspace."""
    config = town.rig_config(rig)
    setup = config.polecats.setup
    place_files(setup, setup_source(town, rig, setup, config), tree)
    if setup.command.strip():
        env = {**os.environ, "GASTOWN_TOWN": str(town.root), "GASTOWN_RIG": rig,
               **bootstrap_env(setup, slot=None, port=None)}
        result = run_command(setup.command, cwd=tree, env=env, timeout=setup.timeout,
                             log_path=log_path)
        if not result.ok:
            raise SetupFailed(f"crew workspace {tree} was made, but its {result.summary()} "
                              f"(output in {log_path})")
