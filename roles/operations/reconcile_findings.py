"""The vocabulary of ``gastown doctor``'s checks: a finding, and how it is reported,
repaired or kept.

Layer: roles operations, below :mod:`.reconcile` (the driver) and the check modules
(``reconcile_*``). :class:`Finding` is what a check returns; :func:`repair` runs a fix
only with ``--fix`` and reports its outcome, :func:`kept` reports what is kept because it
holds work that has not landed, and :func:`record` logs each one (a fixed one is also a
``doctor_fixed`` domain event).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..adapters import landed
from ..adapters.log import get_logger
from ..adapters.store import Store
from ..adapters.town import Town
from ..core.errors import GastownError, NotFound
from ..core.events_town import DoctorFixed

#: How long an orphan session's processes get between SIGTERM and SIGKILL.
STOP_GRACE: Final = 2.0


@dataclass(frozen=True)
class Finding:
    """One disagreement between the store and the world, and what ``--fix`` does about it.

    ``action`` says what a fix does (when ``fixed`` is False and the work is safe to
    touch), did (``fixed`` True), or why the thing is kept (``"kept: ..."``).
    """

    rig: str
    kind: str
    subject: str
    detail: str
    action: str | None
    fixed: bool


@dataclass(frozen=True)
class Ctx:
    """One run of the checks: the town, its store, whether to fix, whether it is up."""

    town: Town
    store: Store
    fix: bool
    town_up: bool


@dataclass(frozen=True)
class RigView:
    """What the checks need to know of one rig: its clone, default branch, templates."""

    name: str
    clone: Path
    default_branch: str
    template: str
    polecats_dir: Path

    def branch_of(self, polecat: str) -> str:
        return self.template.replace("{name}", polecat)

    def polecat_of(self, branch: str | None) -> str | None:
        """The polecat name ``branch`` belongs to by the template, or None."""
        head, _, tail = self.template.partition("{name}")
        if branch is None or not (branch.startswith(head) and branch.endswith(tail)):
            return None
        name = branch[len(head):len(branch) - len(tail)]
        return name or None


def record(ctx: Ctx, finding: Finding, *, polecat: str | None = None) -> Finding:
    """Log ``finding``; a fixed one is also a ``doctor_fixed`` domain event (the feed)."""
    log = get_logger(rig=finding.rig, polecat=polecat)
    if finding.fixed:
        ctx.store.emit(DoctorFixed(rig=finding.rig or None, polecat=polecat,
                                   check=finding.kind, subject=finding.subject,
                                   detail=finding.detail, action=finding.action))
        log.info("doctor_fixed", check=finding.kind, subject=finding.subject,
                 action=finding.action)
    else:
        log.warning("doctor_found", check=finding.kind, subject=finding.subject,
                    detail=finding.detail, action=finding.action)
    return finding


def repair(ctx: Ctx, rig: str, kind: str, subject: str, detail: str, *,
           todo: str, done: str, do: Callable[[], str | None],
           polecat: str | None = None) -> Finding:
    """Report, or with ``fix`` run ``do()`` and report the result (its error if it failed)."""
    if not ctx.fix:
        return record(ctx, Finding(rig, kind, subject, detail, todo, False), polecat=polecat)
    try:
        outcome = do()
    except (GastownError, OSError) as exc:
        message = exc.message if isinstance(exc, GastownError) else str(exc)
        return record(ctx, Finding(rig, kind, subject, detail, f"failed to {todo}: "
                                   f"{message}", False), polecat=polecat)
    if isinstance(outcome, str):  # the repair found, under its lock, nothing to do
        return record(ctx, Finding(rig, kind, subject, detail, outcome, True),
                      polecat=polecat)
    return record(ctx, Finding(rig, kind, subject, detail, done, True), polecat=polecat)


def kept(ctx: Ctx, rig: str, kind: str, subject: str, detail: str, why: str, *,
         polecat: str | None = None) -> Finding:
    """Report what is kept, and ``why`` (work that has not landed, or not ours to judge)."""
    return record(ctx, Finding(rig, kind, subject, detail, f"kept: {why}", False),
                  polecat=polecat)


def unlanded(rig: RigView, ref: str | None) -> frozenset[str]:
    """Commits of ``ref`` whose patch is on neither the local nor the remote default."""
    return landed.gather(rig.clone, rig.default_branch, [ref]).unlanded


def real_path(path: Path) -> Path:
    """``path`` resolved, or made absolute when it cannot be resolved."""
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def row_exists(store: Store, rig: str, name: str) -> bool:
    """Whether the store has a polecat ``name`` in ``rig`` (re-checked before a repair)."""
    try:
        store.polecat(rig, name)
    except NotFound:
        return False
    return True
