"""Pure: the events of the worktree bootstrap: a polecat's setup failed, its teardown failed.

Layer: roles/core. A family of kinds split from :mod:`.events` (which lists every kind in
one union); written by the store when :mod:`gastown.roles.operations.setup` reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._event_base import _PolecatEvent


@dataclass(frozen=True)
class PolecatSetupFailed(_PolecatEvent):
    """``[polecats.setup]`` failed or timed out: the spawn is rolled back."""

    kind = "polecat_setup_failed"
    reason: str
    tail: str


@dataclass(frozen=True)
class PolecatTeardownFailed(_PolecatEvent):
    """``[polecats.teardown]`` failed or timed out: logged, the nuke went on."""

    kind = "polecat_teardown_failed"
    reason: str
    tail: str
