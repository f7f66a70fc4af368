"""A rig's gates run on its default branch, outside the merge queue (``gastown mq check``).

Layer: operations, used by the CLI (``gastown mq check``), over :mod:`.gates`.

So that a user learns that their test suite fails on a clean checkout before the first
merge request is rejected for it. The gates run in a scratch worktree of the refinery's
clone, detached at the default branch's commit: never in the refinery's own checkout,
which the running refinery owns. The worktree is removed afterwards whatever happened
(a gate failing, timing out, or Ctrl-C; after a kill -9, by the next check). The gate
processes do not carry the refinery's gate tag, so a refinery restart never mistakes
them for its own strays.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..adapters import git
from ..adapters.town import Town
from ..core.errors import GastownError, Refused
from .gates import GateResult


@dataclass(frozen=True)
class GateCheck:
    """What ``mq check`` found: the commit tested, each gate's result, the log."""

    rig: str
    branch: str
    commit: str
    log_path: Path
    gates: tuple[str, ...]
    results: tuple[GateResult, ...]

    @property
    def ok(self) -> bool:
        return len(self.results) == len(self.gates) and all(r.ok for r in self.results)


def _sweep_abandoned(clone: Path, folder: Path) -> None:
    """Remove the scratch worktrees of checks that died (their lock is free)."""
    for lock in folder.glob("*.lock"):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a check is running there
            _stop_gates(lock.with_suffix(""))
            with git.repo_lock(clone):
                git.remove_worktree(clone, lock.with_suffix(""))
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _stop_gates(scratch: Path) -> None:
    """Stop the gate processes a killed check left running in ``scratch``."""
    from ..adapters.processes import processes_with_env, terminate_process_group

    groups = set()
    for pid in processes_with_env({"GASTOWN_CHECK": str(scratch)}):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    for pgid in groups:
        terminate_process_group(pgid, 2.0)


def check_log_path(town: Town, rig: str) -> Path:
    """One log per rig, rewritten by each check."""
    return town.logs_dir / "mq" / f"{rig}-check.log"


def check_gates(town: Town, rig: str) -> GateCheck:
    """Run ``rig``'s gates on its default branch in a scratch worktree; see the module."""
    import trio

    from .gates import gates_with_setup, run_gates

    config = town.rig_config(rig)
    branch = config.default_branch
    clone = town.refinery_clone(rig)
    if not clone.is_dir():
        raise Refused(f"rig {rig} has no clone at {clone}")
    commit = git.rev(clone, branch)
    if commit is None:
        raise Refused(f"rig {rig} has no branch {branch} in {clone}")
    log_path = check_log_path(town, rig)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    gates = config.merge_queue.gates
    if not gates:
        return GateCheck(rig, branch, commit, log_path, (), ())
    folder = town.rig_dir(rig) / ".check"
    folder.mkdir(exist_ok=True)
    _sweep_abandoned(clone, folder)
    scratch = folder / secrets.token_hex(4)
    # Held for the whole check: a check killed with -9 leaves a lock nobody holds, and
    # the next check removes what it left (a running check's lock is held).
    held = os.open(scratch.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    env = {k: v for k, v in os.environ.items() if k != "GASTOWN_GATE_OF"}
    env.update({"GASTOWN_RIG": rig, "GASTOWN_MRS": "", "GASTOWN_CANDIDATE": commit,
                "GASTOWN_CHECK": str(scratch)})
    try:
        with git.repo_lock(clone):
            git.run_git(["worktree", "add", "--quiet", "--detach", str(scratch), commit],
                        cwd=clone, op="worktree add", env={"GIT_LFS_SKIP_SMUDGE": "1"})
        gates = gates_with_setup(town, rig, config, scratch, env)  # [merge_queue.setup]
        try:
            results = trio.run(lambda: run_gates(gates, cwd=scratch, log_path=log_path,
                                                 env=env))
        except OSError as exc:
            raise GastownError(f"a gate of rig {rig} could not start: {exc}") from None
    finally:
        try:
            with git.repo_lock(clone):
                git.remove_worktree(clone, scratch)
            scratch.with_suffix(".lock").unlink(missing_ok=True)
        finally:
            os.close(held)
    return GateCheck(rig, branch, commit, log_path, tuple(g.name for g in gates),
                     tuple(results))
