"""The worktree setup of the warm pool: ``[polecats.setup]`` applied when a pool tree is
prepared (filled, cleaned after a nuke, moved to a new tip), so that a sling taking it
only moves it into place.

Layer: operations (files, processes), used by :mod:`.worktree_pool` (:class:`PoolSetup`
in the mayor's tending pass, :func:`stop_setup` for a crash's leftovers and ``down
--all``) and the spawn (:func:`prepared_for_sling`). The decisions are
:mod:`gastown.roles.core.pool_setup`'s; copying, linking and running the command are
:mod:`.setup`'s.

A tree is set up in its busy folder (``<rig>/pool/.busy-<name>``, under its ``flock``)
after the pool verified it clean, then checked again (no tracked change, HEAD at the tip,
no operation in progress: the setup's ignored and untracked files stay). The command runs
as at sling (``sh -c``, own process group, killed whole at its ``timeout``), its output
appended to ``logs/pool/<rig>-setup.log``, with ``GASTOWN_TOWN``, ``GASTOWN_RIG``,
``GASTOWN_SETUP=1`` and ``GASTOWN_POOL_TREE=<busy folder>`` but no slot and no port
(``{slot}`` and ``{port}`` in ``env`` are empty). ``GASTOWN_POOL_TREE`` is how the
setup's processes are found once its worker died (:func:`stop_setup`).

The record of a prepared tree (:class:`~gastown.roles.core.pool_setup.SetupRecord`) is
the file ``gastown-setup`` in the tree's own git directory (``.git/worktrees/<id>/``):
not in the checkout (no ``git status`` line, nothing the agent sees), moved with the
tree, gone with it. The failure count is ``<rig>/pool/.setup-failed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ..adapters import git
from ..adapters.log import get_logger
from ..adapters.processes import processes_with_env, stop_process
from ..adapters.town import Town
from ..core.pool_setup import (
    SetupFailures,
    SetupRecord,
    after_failure,
    fingerprint,
    parse_failures,
    parse_record,
    render_failures,
    render_record,
    skip_at_sling,
    stale,
    stopped,
)
from .setup import KILL_GRACE, bootstrap_env, place_files, run_command, setup_source

#: The record's file name in a worktree's own git directory.
RECORD_FILE: Final = "gastown-setup"
#: The failure count's file name in the pool folder.
FAILURES_FILE: Final = ".setup-failed"
#: The variable that marks a pool setup's processes with the busy folder it runs in.
TREE_VAR: Final = "GASTOWN_POOL_TREE"

log = get_logger()


def record_of(gitdir: Path | None) -> SetupRecord | None:
    if gitdir is None:
        return None
    try:
        return parse_record((gitdir / RECORD_FILE).read_text(encoding="utf-8"))
    except OSError:
        return None


def prepared_for_sling(town: Town, rig: str, tree: Path, gitdir: Path | None) -> bool:
    """Whether the tree a sling took from the pool already got the rig's current setup,
    at the commit its new branch starts at (then the sling skips copy, link, command)."""
    record = record_of(gitdir)
    if record is None:
        return False
    current = fingerprint(town.rig_config(rig).polecats.setup)
    return skip_at_sling(record, current, git.rev(tree, "HEAD"))


def stop_setup(busy: Path) -> list[int]:
    """Stop the processes of a pool setup that ran in ``busy`` (its worker died: their
    group is not the mayor's to kill any more); returns their pids."""
    pids = processes_with_env({TREE_VAR: str(busy)})
    for pid in pids:
        stop_process(pid, KILL_GRACE)
    if pids:
        log.warning("pool_setup_stopped", tree=str(busy), pids=pids)
    return pids


class PoolSetup:
    """The rig's ``[polecats.setup]`` as one tending pass applies it to pool trees."""

    def __init__(self, town: Town, rig: str) -> None:
        config = town.rig_config(rig)
        self.rig = rig
        self.town = town
        self.setup = config.polecats.setup
        self.fingerprint = fingerprint(self.setup)
        self.source = setup_source(town, rig, self.setup, config)
        self.log_path = town.logs_dir / "pool" / f"{rig}-setup.log"
        self.failures_path = town.pool_dir(rig) / FAILURES_FILE

    def stale(self, gitdir: Path | None) -> bool:
        """Whether a ready tree was prepared otherwise than the current settings say."""
        return stale(record_of(gitdir), self.fingerprint)

    def has_record(self, gitdir: Path | None) -> bool:
        return record_of(gitdir) is not None

    def failures(self) -> SetupFailures | None:
        try:
            return parse_failures(self.failures_path.read_text(encoding="utf-8"))
        except OSError:
            return None

    def stopped(self) -> bool:
        """Whether the pool stopped preparing trees (the same setup failed too often)."""
        return stopped(self.failures(), self.fingerprint)

    def apply(self, busy: Path, gitdir: Path | None, head: str,
              check: Callable[[], list[str]]) -> list[str]:
        """Set up the verified tree ``busy`` (at ``head``) and record it; returns why it
        is not fit for the pool (empty when it is). ``check`` is the pool's check after
        the setup (no tracked change, HEAD, no operation in progress)."""
        if gitdir is None:
            return ["no git directory"]
        (gitdir / RECORD_FILE).unlink(missing_ok=True)
        if self.fingerprint is None:
            return []
        state = self.failures()
        if stopped(state, self.fingerprint):
            return [f"pool setup stopped after {state.count if state else 0} failures"]
        try:
            place_files(self.setup, self.source, busy)
        except OSError as exc:
            return self._failed(busy, f"pool setup could not place its files: {exc}", "")
        if self.setup.command.strip():
            env = {key: value for key, value in os.environ.items()
                   if key not in ("GASTOWN_SLOT", "GASTOWN_PORT")}
            env.update({"GASTOWN_TOWN": str(self.town.root), "GASTOWN_RIG": self.rig,
                        "GASTOWN_SETUP": "1", TREE_VAR: str(busy),
                        **bootstrap_env(self.setup, slot=None, port=None)})
            try:
                result = run_command(self.setup.command, cwd=busy, env=env,
                                     timeout=self.setup.timeout, log_path=self.log_path,
                                     label="pool setup")
            except OSError as exc:
                return self._failed(busy, f"pool setup could not start: {exc}", "")
            if not result.ok:
                return self._failed(busy, result.reason, result.tail)
        problems = check()
        if problems:
            return self._failed(busy, "pool setup left the tree unfit: "
                                + "; ".join(problems), "")
        (gitdir / RECORD_FILE).write_text(
            render_record(SetupRecord(self.fingerprint, head)), encoding="utf-8")
        self.failures_path.unlink(missing_ok=True)
        log.info("pool_setup_done", rig=self.rig, tree=str(busy))
        return []

    def _failed(self, busy: Path, reason: str, tail: str) -> list[str]:
        assert self.fingerprint is not None
        state = after_failure(self.failures(), self.fingerprint, reason)
        self.failures_path.write_text(render_failures(state), encoding="utf-8")
        log.warning("pool_setup_failed", rig=self.rig, tree=str(busy), reason=reason,
                    tail=tail, failures=state.count, output=str(self.log_path))
        if stopped(state, self.fingerprint):
            log.error("pool_setup_given_up", rig=self.rig, failures=state.count,
                      reason=reason, hint="the pool prepares no tree until "
                      "[polecats.setup] changes or down --all; slings run the setup")
        return [reason]
